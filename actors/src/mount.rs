//! Mount configuration: the raw `backend_mounts` row and its validated form.

mod validate;
pub use validate::validate_endpoint;
#[cfg(test)]
use validate::validate_kms_key_id;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::path::KeyMapper;

/// Smallest multipart part S3 accepts (except the last part), in bytes.
pub const MIN_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024;
/// Largest multipart part S3 accepts, in bytes.
pub const MAX_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024 * 1024;
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
