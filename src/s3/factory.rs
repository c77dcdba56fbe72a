//! Building a mount's S3 client: the executor's settings, the mount's endpoint, region,
//! addressing and credential source (static keys, a profile, an assumed role), and the clients
//! shared by mounts that can share them.

use super::*;

/// Timeouts and credentials shared by every mount's client.
#[derive(Clone)]
pub struct S3Settings {
    /// Static credentials; `None` uses the AWS default chain (environment, profile, IMDS, ...).
    pub credentials: Option<(String, String)>,
    /// STS endpoint for mounts that assume a role (`None`: the SDK's, which honours
    /// `AWS_ENDPOINT_URL_STS`); set for STS-compatible services such as moto.
    pub sts_endpoint: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one attempt (request and response body).
    pub attempt_timeout: Duration,
    /// A streamed body (a download, an upload) that moves no byte for this long is cut
    /// (the SDK's stalled-stream protection); a download then asks for the rest again.
    pub stall_grace: Duration,
    /// Accept a plain-http endpoint that is not loopback when it comes from the environment
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`) rather than from a mount row
    /// (`FILESTORE_S3_ALLOW_INSECURE_HTTP`); a mount row has its own `allow_insecure_http`.
    pub allow_insecure_http: bool,
}

impl std::fmt::Debug for S3Settings {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(ak, _)| (ak, "<redacted>")),
            )
            .field("sts_endpoint", &self.sts_endpoint)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("stall_grace", &self.stall_grace)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            credentials: None,
            sts_endpoint: None,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
            stall_grace: Duration::from_secs(10),
            allow_insecure_http: false,
        }
    }
}

/// Builds one aws-sdk-s3 client per mount from a shared base configuration.
pub struct S3StoreFactory {
    base: aws_config::SdkConfig,
    settings: S3Settings,
}

impl S3StoreFactory {
    /// Loads the base AWS configuration (credentials chain unless static ones are given).
    pub async fn new(settings: S3Settings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some((ak, sk)) = &settings.credentials {
            loader = loader.credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                ak.clone(),
                sk.clone(),
                None,
                None,
                "filestore-s3",
            )));
        }
        let base = loader.load().await;
        S3StoreFactory { base, settings }
    }

    /// The credentials provider of a mount whose credentials do not come from the default
    /// chain. Providers resolve lazily: a profile that is missing or a role that cannot be
    /// assumed shows as a `Credentials` error of the mount's first request (and in its health),
    /// never at start-up, so one mount's credentials cannot keep the others from starting.
    fn credentials_for(
        &self,
        spec: &MountSpec,
    ) -> Result<Option<SharedCredentialsProvider>, StoreError> {
        Ok(match &spec.credentials {
            CredentialSource::Default => None,
            CredentialSource::Profile { name } => Some(SharedCredentialsProvider::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(name)
                    .build(),
            )),
            CredentialSource::AssumeRole {
                role_arn,
                external_id,
                session_name,
            } => {
                // STS is called with the executor's own credentials (the base chain), in the
                // mount's region.
                let mut sts = self
                    .base
                    .clone()
                    .into_builder()
                    .region(Region::new(spec.region.clone()));
                if let Some(ep) = &self.settings.sts_endpoint {
                    sts = sts.endpoint_url(ep);
                }
                let mut builder = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                    .session_name(session_name)
                    .configure(&sts.build());
                if let Some(id) = external_id {
                    builder = builder.external_id(id);
                }
                // With a configuration given, `build` only assembles the STS client: it never
                // waits, so it is finished on the first poll.
                let provider = builder.build().now_or_never().ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Credentials,
                        format!(
                            "mount '{}': the AssumeRole provider could not be built",
                            spec.name
                        ),
                    )
                })?;
                Some(SharedCredentialsProvider::new(provider))
            }
        })
    }

    /// The client a mount uses: its region, endpoint, addressing and credentials; SDK retries off
    /// (the executor retries with its own policy and counts it); the SDK's default CRC32 checksum
    /// off (the executor sends SHA-256 itself, or nothing, per the mount's checksum policy).
    /// Temporary credentials (an assumed role) are cached by the client's identity cache and
    /// fetched again before they expire.
    pub fn client_for(&self, spec: &MountSpec) -> Result<Client, StoreError> {
        let mut b = aws_sdk_s3::config::Builder::from(&self.base)
            .region(Region::new(spec.region.clone()))
            .force_path_style(spec.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.settings.connect_timeout)
                    .operation_attempt_timeout(self.settings.attempt_timeout)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(self.settings.stall_grace)
                    .build(),
            );
        match &spec.endpoint {
            Some(ep) => b = b.endpoint_url(ep),
            None => {
                // An endpoint from the environment is held to the same transport rule as one
                // from a mount row.
                let from_env = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))
                    .or_else(|| self.base.endpoint_url().map(str::to_owned));
                if let Some(ep) = from_env {
                    validate_endpoint(&ep, self.settings.allow_insecure_http).map_err(|r| {
                        StoreError::new(
                            StoreErrorKind::Config,
                            format!("mount '{}': the endpoint from the environment {r} (FILESTORE_S3_ALLOW_INSECURE_HTTP for the executor)", spec.name),
                        )
                    })?;
                }
            }
        }
        if let Some(provider) = self.credentials_for(spec)? {
            b = b.credentials_provider(provider);
        }
        Ok(Client::from_conf(b.build()))
    }
}

impl ObjectStoreFactory for S3StoreFactory {
    fn for_mount(&self, spec: &MountSpec) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(Arc::new(S3Store {
            client: self.client_for(spec)?,
            bucket: spec.bucket.clone(),
            sse: spec.sse.clone(),
            acl: spec.canned_acl.clone(),
            storage_class: spec.storage_class.clone(),
            checksum: spec.checksum,
            parts_echoed: AtomicBool::new(false),
        }))
    }
}
