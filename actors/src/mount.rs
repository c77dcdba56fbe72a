//! Mount configuration: the raw `backend_mounts` row and its validated form.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::path::KeyMapper;

/// Smallest multipart part S3 accepts (except the last part), in bytes.
pub const MIN_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024;
/// Largest multipart part S3 accepts, in bytes.
pub const MAX_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Largest object a single PUT may create, in bytes.
pub const MAX_SINGLE_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Largest multipart threshold a mount may set: single PUTs are buffered in memory to hash them
/// before sending, so the threshold bounds the memory one put may hold.
pub const MAX_MULTIPART_THRESHOLD_BYTES: u64 = 512 * 1024 * 1024;
/// Default multipart threshold, in bytes.
pub const DEFAULT_MULTIPART_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;
/// Default multipart part size, in bytes.
pub const DEFAULT_PART_SIZE_BYTES: u64 = 16 * 1024 * 1024;
/// Default number of parts in flight per upload.
pub const DEFAULT_PART_CONCURRENCY: u32 = 4;
/// Default largest range of a download (`get_to_file`): 64 MiB. Its memory does not grow with
/// it (a range is written to the file as it arrives); on loopback 64 MiB × 5 downloaded 1 GiB at
/// 383 MB/s against 275–280 with 16 MiB × 4 (docs/benchmarks.md). s5cmd's defaults are
/// 50 MiB × 5.
pub const DEFAULT_DOWNLOAD_RANGE_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest and largest download range a mount may set.
pub const DOWNLOAD_RANGE_BYTES: std::ops::RangeInclusive<u64> = (1024 * 1024)..=MAX_PART_SIZE_BYTES;
/// Default ranges in flight per download.
pub const DEFAULT_DOWNLOAD_CONCURRENCY: u32 = 5;
/// Default verification window, in milliseconds.
pub const DEFAULT_VERIFY_WINDOW_MS: u64 = 10_000;
/// Largest object one CopyObject may copy (S3's limit), and the default copy threshold: larger
/// objects are copied part by part with UploadPartCopy.
pub const MAX_COPY_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A `backend_mounts` row as stored, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRow {
    /// Unique mount name.
    pub name: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Custom endpoint URL (S3-compatible stores); `None` for AWS.
    pub endpoint: Option<String>,
    /// Use path-style addressing.
    pub path_style: bool,
    /// `none`, `aes256` or `aws:kms`.
    pub sse_mode: String,
    /// KMS key id for `aws:kms`.
    pub kms_key_id: Option<String>,
    /// Canned ACL, e.g. `private`.
    pub canned_acl: Option<String>,
    /// Storage class, e.g. `STANDARD`.
    pub storage_class: Option<String>,
    /// Objects larger than this go through multipart upload.
    pub multipart_threshold: i64,
    /// Multipart part size.
    pub part_size: i64,
    /// Parts in flight per upload.
    pub part_concurrency: i32,
    /// Largest range of a download to a file.
    pub download_range_size: i64,
    /// Ranges in flight per download to a file.
    pub download_concurrency: i32,
    /// How long verification may wait for the store to show a write, in milliseconds.
    pub verify_window_ms: i64,
    /// `sha256` or `none`.
    pub checksum: String,
    /// Disabled mounts refuse every operation.
    pub enabled: bool,
    /// `abort` or `retain`: what happens to a multipart upload whose part failed for good.
    pub multipart_failure_policy: String,
    /// Objects larger than this are copied with UploadPartCopy instead of one CopyObject.
    pub copy_threshold: i64,
    /// `strict` or `lenient`: what happens when the store ignores the mount's SSE / KMS key /
    /// storage class.
    pub settings_policy: String,
    /// `default`, `profile` or `assume_role`: where the mount's credentials come from.
    pub credentials_source: String,
    /// Profile name of the shared AWS config / credentials files (`profile` only).
    pub credentials_profile: Option<String>,
    /// Role to assume with STS (`assume_role` only).
    pub role_arn: Option<String>,
    /// External id the role's trust policy asks for (`assume_role` only, optional).
    pub role_external_id: Option<String>,
    /// Session name of the assumed role (`assume_role` only; default `filestore-s3-<mount>`).
    pub role_session_name: Option<String>,
    /// Accept a plain `http://` endpoint that is not loopback (credentials-signed requests and
    /// object data then cross the network unencrypted). Off by default.
    pub allow_insecure_http: bool,
    /// `head`, `put-response` or `response`: how a single-request write is proven
    /// ([`VerifyPolicy`]).
    pub verify: String,
}

impl MountRow {
    /// A row with the defaults for everything but name, bucket and prefix.
    pub fn new(name: &str, bucket: &str, prefix: &str) -> Self {
        MountRow {
            name: name.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            sse_mode: "none".into(),
            kms_key_id: None,
            canned_acl: None,
            storage_class: None,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD_BYTES as i64,
            part_size: DEFAULT_PART_SIZE_BYTES as i64,
            part_concurrency: DEFAULT_PART_CONCURRENCY as i32,
            download_range_size: DEFAULT_DOWNLOAD_RANGE_BYTES as i64,
            download_concurrency: DEFAULT_DOWNLOAD_CONCURRENCY as i32,
            verify_window_ms: DEFAULT_VERIFY_WINDOW_MS as i64,
            checksum: "sha256".into(),
            enabled: true,
            multipart_failure_policy: "abort".into(),
            copy_threshold: MAX_COPY_OBJECT_BYTES as i64,
            settings_policy: "strict".into(),
            credentials_source: "default".into(),
            credentials_profile: None,
            role_arn: None,
            role_external_id: None,
            role_session_name: None,
            allow_insecure_http: false,
            verify: "head".into(),
        }
    }
}

/// A mount row that cannot be used, naming the mount and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mount '{mount}': field '{field}' {reason}")]
pub struct MountConfigError {
    /// Mount name.
    pub mount: String,
    /// Column name in `backend_mounts`.
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub reason: String,
}

/// Server-side encryption requested for every write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sse {
    /// No SSE header is sent (the bucket default applies).
    None,
    /// SSE-S3 (`AES256`).
    Aes256,
    /// SSE-KMS, optionally with a specific key.
    Kms {
        /// Key id or ARN; `None` uses the account's default key.
        key_id: Option<String>,
    },
}

/// What happens when the store accepts a write but does not apply the mount's SSE, KMS key or
/// storage class (as some S3-compatible stores silently do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingsPolicy {
    /// The operation fails with `Error::SettingsNotApplied`, the object is removed, nothing is
    /// committed.
    Strict,
    /// The operation commits what the store really applied and says so in the result, the node
    /// (`not_applied`) and the `filestore_s3_settings_not_applied_total` metric.
    Lenient,
}

/// Where a mount's credentials come from. None of them puts a secret in the mount table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialSource {
    /// The executor's credential chain (static keys given to it, environment, shared files,
    /// web identity, container / instance metadata).
    Default,
    /// A named profile of the shared AWS config / credentials files.
    Profile {
        /// Profile name.
        name: String,
    },
    /// A role assumed with STS AssumeRole, authorised by the executor's credential chain; the
    /// temporary credentials are cached and refreshed before they expire.
    AssumeRole {
        /// The role's ARN.
        role_arn: String,
        /// External id, when the role's trust policy requires one.
        external_id: Option<String>,
        /// Session name (shows in CloudTrail).
        session_name: String,
    },
}

impl CredentialSource {
    /// Short form for logs, health reports and errors (no secret is ever part of it).
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Default => "default chain".into(),
            CredentialSource::Profile { name } => format!("profile '{name}'"),
            CredentialSource::AssumeRole { role_arn, .. } => format!("role '{role_arn}'"),
        }
    }
}

/// How uploads are protected on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChecksumPolicy {
    /// Send `x-amz-checksum-sha256`; the server verifies it and stores it.
    Sha256,
    /// Send no checksum header, for stores that reject them; verification checks the size only.
    None,
}

/// Canned ACLs S3 accepts on PUT.
pub const CANNED_ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// Storage classes S3 accepts on PUT.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
];

/// A validated mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Unique mount name.
    pub name: String,
    /// Bucket name.
    pub bucket: String,
    /// Path ↔ key translation.
    pub keys: KeyMapper,
    /// AWS region.
    pub region: String,
    /// Custom endpoint URL.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub path_style: bool,
    /// SSE for writes.
    pub sse: Sse,
    /// Canned ACL for writes.
    pub canned_acl: Option<String>,
    /// Storage class for writes.
    pub storage_class: Option<String>,
    /// Multipart threshold in bytes.
    pub multipart_threshold: u64,
    /// Part size in bytes.
    pub part_size: u64,
    /// Parts in flight.
    pub part_concurrency: u32,
    /// Largest range of a download to a file, in bytes.
    pub download_range_size: u64,
    /// Ranges in flight per download to a file.
    pub download_concurrency: u32,
    /// Verification window.
    pub verify_window: Duration,
    /// Upload checksum policy.
    pub checksum: ChecksumPolicy,
    /// Whether operations are accepted.
    pub enabled: bool,
    /// Keep a failed multipart upload open for a resume (`true`) or abort it (`false`).
    pub retain_failed_uploads: bool,
    /// Objects larger than this are copied part by part (UploadPartCopy).
    pub copy_threshold: u64,
    /// What to do when the store ignores SSE / KMS key / storage class.
    pub settings_policy: SettingsPolicy,
    /// Where the mount's credentials come from.
    pub credentials: CredentialSource,
    /// How a single-request write (put, copy, delete) is proven.
    pub verify: VerifyPolicy,
}

/// How a single-request write is proven before it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPolicy {
    /// A HEAD after the write must show the object with the write's checksum or write marker
    /// (or, after a delete, no object).
    #[default]
    Head,
    /// For strongly consistent stores: the PUT's answer is the proof when it echoes the SHA-256
    /// the executor sent (the store checked the body against it before accepting it); a PUT
    /// answered without it, or on a mount that sends no checksum, is proven by HEAD as usual.
    /// Copies and deletes are proven by HEAD.
    PutResponse,
    /// `PutResponse`, and for copies and deletes as well: a CopyObject is proven by its answer
    /// when the answer carries the SHA-256 the store computed of the copy and it equals the
    /// pinned source's (otherwise HEAD); a DeleteObject (or a key's entry in a DeleteObjects
    /// answer) is proven by the store's success: on a strongly consistent store the key is gone
    /// once the answer says so. Recovery still looks with HEAD.
    Response,
}

impl VerifyPolicy {
    /// Whether a PUT's answer may prove it.
    pub fn trusts_put_answer(self) -> bool {
        matches!(self, VerifyPolicy::PutResponse | VerifyPolicy::Response)
    }

    /// Whether copies and deletes may be proven by the store's answer.
    pub fn trusts_copy_and_delete_answers(self) -> bool {
        self == VerifyPolicy::Response
    }
}

impl MountSpec {
    /// Whether a server-side copy from `source` into this mount is possible: both mounts are
    /// reached through the same endpoint, region and addressing (the executor's credentials are
    /// shared by all mounts), so one client can read the source and write the destination.
    pub fn can_copy_server_side_from(&self, source: &MountSpec) -> bool {
        self.endpoint == source.endpoint
            && self.region == source.region
            && self.path_style == source.path_style
            && self.credentials == source.credentials
    }
}

impl MountSpec {
    /// Validates a row; the error names the mount and the first bad field.
    pub fn from_row(row: &MountRow) -> Result<Self, MountConfigError> {
        let err = |field: &'static str, reason: String| MountConfigError {
            mount: row.name.clone(),
            field,
            reason,
        };
        if row.name.is_empty()
            || row.name.len() > 128
            || !row
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                "name",
                "must be 1-128 characters of ASCII letters, digits, '-', '_' or '.'".into(),
            ));
        }
        validate_bucket(&row.bucket).map_err(|r| err("bucket", r))?;
        let keys = KeyMapper::new(&row.prefix).map_err(|e| err("prefix", e.to_string()))?;
        if row.region.is_empty()
            || !row
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(err(
                "region",
                format!("'{}' is not a region name like 'us-east-1'", row.region),
            ));
        }
        if row.region.len() > 32 {
            return Err(err("region", "is longer than 32 characters".into()));
        }
        if let Some(ep) = &row.endpoint {
            validate_endpoint(ep, row.allow_insecure_http).map_err(|r| err("endpoint", r))?;
        }
        let sse = match row.sse_mode.as_str() {
            "none" => {
                if row.kms_key_id.is_some() {
                    return Err(err(
                        "kms_key_id",
                        "is set but sse_mode is 'none'; set sse_mode to 'aws:kms'".into(),
                    ));
                }
                Sse::None
            }
            "aes256" => Sse::Aes256,
            "aws:kms" => {
                let key_id = row.kms_key_id.clone().filter(|k| !k.is_empty());
                if let Some(k) = &key_id {
                    validate_kms_key_id(k).map_err(|r| err("kms_key_id", r))?;
                }
                Sse::Kms { key_id }
            }
            other => {
                return Err(err(
                    "sse_mode",
                    format!("'{other}' is unknown; use 'none', 'aes256' or 'aws:kms'"),
                ))
            }
        };
        if let Some(acl) = &row.canned_acl {
            if !CANNED_ACLS.contains(&acl.as_str()) {
                return Err(err(
                    "canned_acl",
                    format!("'{acl}' is unknown; use one of {}", CANNED_ACLS.join(", ")),
                ));
            }
        }
        if let Some(sc) = &row.storage_class {
            if !STORAGE_CLASSES.contains(&sc.as_str()) {
                return Err(err(
                    "storage_class",
                    format!(
                        "'{sc}' is unknown; use one of {}",
                        STORAGE_CLASSES.join(", ")
                    ),
                ));
            }
        }
        let threshold = u64::try_from(row.multipart_threshold).unwrap_or(0);
        if !(1..=MAX_MULTIPART_THRESHOLD_BYTES).contains(&threshold) {
            return Err(err(
                "multipart_threshold",
                format!(
                    "{} is out of range 1..={MAX_MULTIPART_THRESHOLD_BYTES} bytes",
                    row.multipart_threshold
                ),
            ));
        }
        let part_size = u64::try_from(row.part_size).unwrap_or(0);
        if !(MIN_PART_SIZE_BYTES..=MAX_PART_SIZE_BYTES).contains(&part_size) {
            return Err(err(
                "part_size",
                format!(
                    "{} is out of S3's range {MIN_PART_SIZE_BYTES}..={MAX_PART_SIZE_BYTES} bytes",
                    row.part_size
                ),
            ));
        }
        let part_concurrency = u32::try_from(row.part_concurrency).unwrap_or(0);
        if !(1..=64).contains(&part_concurrency) {
            return Err(err(
                "part_concurrency",
                format!("{} is out of range 1..=64", row.part_concurrency),
            ));
        }
        let download_range_size = u64::try_from(row.download_range_size).unwrap_or(0);
        if !DOWNLOAD_RANGE_BYTES.contains(&download_range_size) {
            return Err(err(
                "download_range_size",
                format!(
                    "{} is out of range {}..={} bytes",
                    row.download_range_size,
                    DOWNLOAD_RANGE_BYTES.start(),
                    DOWNLOAD_RANGE_BYTES.end()
                ),
            ));
        }
        let download_concurrency = u32::try_from(row.download_concurrency).unwrap_or(0);
        if !(1..=64).contains(&download_concurrency) {
            return Err(err(
                "download_concurrency",
                format!("{} is out of range 1..=64", row.download_concurrency),
            ));
        }
        let verify_ms = u64::try_from(row.verify_window_ms).unwrap_or(u64::MAX);
        if verify_ms > 3_600_000 {
            return Err(err(
                "verify_window_ms",
                format!("{} is out of range 0..=3600000", row.verify_window_ms),
            ));
        }
        let checksum = match row.checksum.as_str() {
            "sha256" => ChecksumPolicy::Sha256,
            "none" => ChecksumPolicy::None,
            other => {
                return Err(err(
                    "checksum",
                    format!("'{other}' is unknown; use 'sha256' or 'none'"),
                ))
            }
        };
        let retain_failed_uploads = match row.multipart_failure_policy.as_str() {
            "abort" => false,
            "retain" => true,
            other => {
                return Err(err(
                    "multipart_failure_policy",
                    format!("'{other}' is unknown; use 'abort' or 'retain'"),
                ))
            }
        };
        let copy_threshold = u64::try_from(row.copy_threshold).unwrap_or(0);
        if !(MIN_PART_SIZE_BYTES..=MAX_COPY_OBJECT_BYTES).contains(&copy_threshold) {
            return Err(err(
                "copy_threshold",
                format!(
                    "{} is out of range {MIN_PART_SIZE_BYTES}..={MAX_COPY_OBJECT_BYTES} bytes (CopyObject copies at most 5 GiB)",
                    row.copy_threshold
                ),
            ));
        }
        let settings_policy = match row.settings_policy.as_str() {
            "strict" => SettingsPolicy::Strict,
            "lenient" => SettingsPolicy::Lenient,
            other => {
                return Err(err(
                    "settings_policy",
                    format!("'{other}' is unknown; use 'strict' or 'lenient'"),
                ))
            }
        };
        let verify = match row.verify.as_str() {
            "head" => VerifyPolicy::Head,
            "put-response" => VerifyPolicy::PutResponse,
            "response" => VerifyPolicy::Response,
            other => {
                return Err(err(
                    "verify",
                    format!("'{other}' is unknown; use 'head', 'put-response' or 'response'"),
                ))
            }
        };
        let credentials = credential_source(row).map_err(|(f, r)| err(f, r))?;
        Ok(MountSpec {
            name: row.name.clone(),
            bucket: row.bucket.clone(),
            keys,
            region: row.region.clone(),
            endpoint: row.endpoint.clone(),
            path_style: row.path_style,
            sse,
            canned_acl: row.canned_acl.clone(),
            storage_class: row.storage_class.clone(),
            multipart_threshold: threshold,
            part_size,
            part_concurrency,
            download_range_size,
            download_concurrency,
            verify_window: Duration::from_millis(verify_ms),
            checksum,
            enabled: row.enabled,
            retain_failed_uploads,
            copy_threshold,
            settings_policy,
            credentials,
            verify,
        })
    }
}

/// Validates the credential columns of `row`; the error names the column.
fn credential_source(row: &MountRow) -> Result<CredentialSource, (&'static str, String)> {
    let unexpected = |field: &'static str, value: &Option<String>| match value {
        Some(_) => Err((
            field,
            format!(
                "is set but credentials_source is '{}'",
                row.credentials_source
            ),
        )),
        None => Ok(()),
    };
    let chars_ok = |s: &str, extra: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    match row.credentials_source.as_str() {
        "default" => {
            unexpected("credentials_profile", &row.credentials_profile)?;
            unexpected("role_arn", &row.role_arn)?;
            unexpected("role_external_id", &row.role_external_id)?;
            unexpected("role_session_name", &row.role_session_name)?;
            Ok(CredentialSource::Default)
        }
        "profile" => {
            unexpected("role_arn", &row.role_arn)?;
            unexpected("role_external_id", &row.role_external_id)?;
            unexpected("role_session_name", &row.role_session_name)?;
            let name = row.credentials_profile.clone().unwrap_or_default();
            if name.is_empty() || name.len() > 64 || !chars_ok(&name, "-_.") {
                return Err((
                    "credentials_profile",
                    format!("'{name}' must be 1-64 ASCII letters, digits, '-', '_' or '.'"),
                ));
            }
            Ok(CredentialSource::Profile { name })
        }
        "assume_role" => {
            unexpected("credentials_profile", &row.credentials_profile)?;
            let arn = row.role_arn.clone().unwrap_or_default();
            // arn:<partition>:iam::<account>:role/<path/name>
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            let well_formed = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "iam"
                && parts[3].is_empty()
                && parts[4].len() == 12
                && parts[4].chars().all(|c| c.is_ascii_digit())
                && parts[5].len() > "role/".len()
                && parts[5].starts_with("role/")
                && arn.len() <= 2048
                && chars_ok(parts[5], "/+=,.@_-");
            if !well_formed {
                return Err((
                    "role_arn",
                    format!("'{arn}' is not a role ARN like 'arn:aws:iam::123456789012:role/name'"),
                ));
            }
            if let Some(id) = &row.role_external_id {
                if !(2..=1224).contains(&id.len()) || !chars_ok(id, "+=,.@:/_-") {
                    return Err((
                        "role_external_id",
                        "must be 2-1224 characters of letters, digits and +=,.@:/_-".into(),
                    ));
                }
            }
            let session_name = match &row.role_session_name {
                Some(n) => n.clone(),
                None => format!("filestore-s3-{}", row.name)
                    .chars()
                    .take(64)
                    .collect(),
            };
            if !(2..=64).contains(&session_name.len()) || !chars_ok(&session_name, "+=,.@_-") {
                return Err((
                    "role_session_name",
                    format!(
                        "'{session_name}' must be 2-64 characters of letters, digits and +=,.@_-"
                    ),
                ));
            }
            Ok(CredentialSource::AssumeRole {
                role_arn: arn,
                external_id: row.role_external_id.clone(),
                session_name,
            })
        }
        other => Err((
            "credentials_source",
            format!("'{other}' is unknown; use 'default', 'profile' or 'assume_role'"),
        )),
    }
}

/// Checks an S3 endpoint URL: `http` or `https`, a host, no user name or password (credentials
/// never go in a URL), no query or fragment. A plain `http` endpoint must be a loopback address
/// (`localhost`, `127.0.0.0/8`, `::1`) unless `allow_insecure_http` is set.
pub fn validate_endpoint(ep: &str, allow_insecure_http: bool) -> Result<(), String> {
    let shown = ep.escape_debug().to_string();
    let url = url::Url::parse(ep).map_err(|e| format!("'{shown}' is not a URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the URL holds what may be a secret.
        return Err(
            "holds a user name or password; credentials never go in the endpoint URL (use the mount's credentials_source)".into(),
        );
    }
    let host = match url.host() {
        Some(h) => h,
        None => return Err(format!("'{shown}' has no host")),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{shown}' must not have a query or fragment"));
    }
    let loopback = match &host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure_http => Ok(()),
        "http" => Err(format!(
            "'{shown}' is plain http to a host that is not loopback; use https, or set allow_insecure_http on the mount to accept it"
        )),
        other => Err(format!(
            "'{shown}' has scheme '{other}'; only http and https are accepted"
        )),
    }
}

/// Checks the form of a KMS key id: a key id, a multi-Region key id (`mrk-...`), an alias
/// (`alias/...`) or an ARN of either; at most 2048 characters of the characters those use.
pub fn validate_kms_key_id(k: &str) -> Result<(), String> {
    if k.len() > 2048
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":/_-".contains(c))
    {
        return Err(
            "must be a KMS key id, alias/NAME or an ARN (letters, digits, ':', '/', '_', '-', at most 2048)".into(),
        );
    }
    let arn = k.starts_with("arn:aws") && k.split(':').nth(2) == Some("kms");
    if !(arn || k.starts_with("alias/") || !k.contains([':', '/'])) {
        return Err(format!(
            "'{k}' is neither a key id, alias/NAME nor a KMS ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
        ));
    }
    Ok(())
}

/// Checks a bucket name against S3's general-purpose bucket naming rules.
pub fn validate_bucket(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err(format!("'{b}' must be 3-63 characters long"));
    }
    if !b
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
    {
        return Err(format!(
            "'{b}' may hold only lowercase letters, digits, '.' and '-'"
        ));
    }
    let first_last_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_last_ok(b.chars().next()) || !first_last_ok(b.chars().last()) {
        return Err(format!("'{b}' must begin and end with a letter or digit"));
    }
    if b.contains("..") {
        return Err(format!("'{b}' must not contain '..'"));
    }
    if b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err(format!("'{b}' must not look like an IP address"));
    }
    if b.starts_with("xn--") || b.starts_with("sthree-") || b.ends_with("-s3alias") {
        return Err(format!("'{b}' uses a prefix or suffix S3 reserves"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> MountRow {
        MountRow::new("m1", "my-bucket", "data/x")
    }

    #[test]
    fn default_row_is_valid() {
        let spec = MountSpec::from_row(&row()).unwrap();
        assert_eq!(spec.keys.prefix(), "data/x/");
        assert_eq!(spec.checksum, ChecksumPolicy::Sha256);
        assert_eq!(spec.sse, Sse::None);
        assert_eq!(spec.credentials, CredentialSource::Default);
    }

    #[test]
    fn credential_sources() {
        let mut r = row();
        r.credentials_source = "profile".into();
        r.credentials_profile = Some("prod-archive".into());
        assert_eq!(
            MountSpec::from_row(&r).unwrap().credentials,
            CredentialSource::Profile {
                name: "prod-archive".into()
            }
        );
        let mut r = row();
        r.credentials_source = "assume_role".into();
        r.role_arn = Some("arn:aws:iam::123456789012:role/team/archive-writer".into());
        r.role_external_id = Some("ext-42".into());
        let spec = MountSpec::from_row(&r).unwrap();
        assert_eq!(
            spec.credentials,
            CredentialSource::AssumeRole {
                role_arn: "arn:aws:iam::123456789012:role/team/archive-writer".into(),
                external_id: Some("ext-42".into()),
                session_name: "filestore-s3-m1".into(),
            }
        );
        // Another credential source means another account: no server-side copy between them.
        let default = MountSpec::from_row(&row()).unwrap();
        assert!(default.can_copy_server_side_from(&default));
        assert!(!default.can_copy_server_side_from(&spec));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Edit = Box<dyn Fn(&mut MountRow)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("bucket", Box::new(|r| r.bucket = "Bad_Bucket".into())),
            ("bucket", Box::new(|r| r.bucket = "ab".into())),
            ("bucket", Box::new(|r| r.bucket = "192.168.1.1".into())),
            ("prefix", Box::new(|r| r.prefix = "a/../b".into())),
            (
                "canned_acl",
                Box::new(|r| r.canned_acl = Some("everyone".into())),
            ),
            (
                "storage_class",
                Box::new(|r| r.storage_class = Some("COLD".into())),
            ),
            ("sse_mode", Box::new(|r| r.sse_mode = "kms".into())),
            ("kms_key_id", Box::new(|r| r.kms_key_id = Some("k".into()))),
            ("part_size", Box::new(|r| r.part_size = 1024)),
            (
                "multipart_threshold",
                Box::new(|r| r.multipart_threshold = 0),
            ),
            ("part_concurrency", Box::new(|r| r.part_concurrency = 0)),
            (
                "download_range_size",
                Box::new(|r| r.download_range_size = 1024),
            ),
            (
                "download_concurrency",
                Box::new(|r| r.download_concurrency = 65),
            ),
            (
                "credentials_source",
                Box::new(|r| r.credentials_source = "keys".into()),
            ),
            (
                "credentials_profile",
                Box::new(|r| r.credentials_source = "profile".into()),
            ),
            (
                "credentials_profile",
                Box::new(|r| r.credentials_profile = Some("p".into())),
            ),
            (
                "role_arn",
                Box::new(|r| {
                    r.credentials_source = "assume_role".into();
                    r.role_arn = Some("arn:aws:s3:::bucket".into());
                }),
            ),
            (
                "role_external_id",
                Box::new(|r| {
                    r.credentials_source = "assume_role".into();
                    r.role_arn = Some("arn:aws:iam::123456789012:role/r".into());
                    r.role_external_id = Some("x".into());
                }),
            ),
            (
                "role_session_name",
                Box::new(|r| {
                    r.credentials_source = "assume_role".into();
                    r.role_arn = Some("arn:aws:iam::123456789012:role/r".into());
                    r.role_session_name = Some("has space".into());
                }),
            ),
            ("verify_window_ms", Box::new(|r| r.verify_window_ms = -1)),
            ("checksum", Box::new(|r| r.checksum = "crc32".into())),
            (
                "multipart_failure_policy",
                Box::new(|r| r.multipart_failure_policy = "keep".into()),
            ),
            (
                "endpoint",
                Box::new(|r| r.endpoint = Some("localhost:9000".into())),
            ),
            (
                "endpoint",
                Box::new(|r| r.endpoint = Some("file:///etc/passwd".into())),
            ),
            (
                "endpoint",
                Box::new(|r| r.endpoint = Some("https://AKIA:secret@s3.example.com".into())),
            ),
            (
                "endpoint",
                Box::new(|r| r.endpoint = Some("http://s3.internal.example:9000".into())),
            ),
            (
                "endpoint",
                Box::new(|r| r.endpoint = Some("https://s3.example.com/?x=1".into())),
            ),
            (
                "kms_key_id",
                Box::new(|r| {
                    r.sse_mode = "aws:kms".into();
                    r.kms_key_id = Some("arn:aws:s3:::not-a-key".into());
                }),
            ),
            (
                "kms_key_id",
                Box::new(|r| {
                    r.sse_mode = "aws:kms".into();
                    r.kms_key_id = Some("key id with spaces".into());
                }),
            ),
            ("region", Box::new(|r| r.region = "US East".into())),
            ("name", Box::new(|r| r.name = "has space".into())),
        ];
        for (field, mutate) in cases {
            let mut r = row();
            mutate(&mut r);
            let e = MountSpec::from_row(&r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(&r.name), "{e}");
        }
    }

    #[test]
    fn endpoints_loopback_http_and_the_insecure_opt_in() {
        for ok in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000/",
            "https://s3.eu-west-1.amazonaws.com",
            "https://minio.example.com:9000/s3",
        ] {
            assert!(validate_endpoint(ok, false).is_ok(), "{ok}");
        }
        assert!(validate_endpoint("http://10.0.0.5:9000", false).is_err());
        assert!(validate_endpoint("http://10.0.0.5:9000", true).is_ok());
        let e = validate_endpoint("https://user:hunter2@s3.example.com", true).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let mut r = row();
        r.endpoint = Some("http://minio.lan:9000".into());
        assert!(MountSpec::from_row(&r).is_err());
        r.allow_insecure_http = true;
        assert!(MountSpec::from_row(&r).is_ok());
        for k in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/app-data",
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:123456789012:alias/app-data",
        ] {
            assert!(validate_kms_key_id(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn kms_with_key() {
        let mut r = row();
        r.sse_mode = "aws:kms".into();
        r.kms_key_id = Some("alias/x".into());
        assert_eq!(
            MountSpec::from_row(&r).unwrap().sse,
            Sse::Kms {
                key_id: Some("alias/x".into())
            }
        );
    }
}
