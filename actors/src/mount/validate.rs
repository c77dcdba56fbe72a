//! The validation of a mount row: every column checked, and the first bad one named.

use super::*;

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
pub(crate) fn validate_kms_key_id(k: &str) -> Result<(), String> {
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
fn validate_bucket(b: &str) -> Result<(), String> {
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
