//! Domain records shared by the actors and the adapters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::digest::Sha256Digest;

mod event;
mod journal;

pub use event::*;
pub use journal::*;

/// User metadata of an object (`x-amz-meta-<name>: <value>`), by name; see
/// [`crate::validate::user_metadata`] for the rules.
pub type UserMetadata = std::collections::BTreeMap<String, String>;

/// Version of the change-event payload.
pub const EVENT_VERSION: u32 = 1;

/// A mutating operation kind, as stored in `journal.op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Create or replace an object.
    Put,
    /// Remove an object.
    Delete,
    /// Copy an object to another path (same or another mount).
    Copy,
    /// Move an object: copy, then remove the source, in one commit.
    Move,
}

impl OpKind {
    /// The name stored in Postgres and sent in events.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Copy => "copy",
            OpKind::Move => "move",
        }
    }
}

/// What the store reports for an object (HEAD or PUT response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// SHA-256 of the whole object, when the store reports one (HEAD with checksum mode).
    pub sha256: Option<Sha256Digest>,
    /// A composite checksum of a multipart object (`<base64>-<parts>`), when the store reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_composite: Option<String>,
    /// What the executor wrote into the object's user metadata ([`WriteMarker`]), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<WriteMarker>,
    /// Storage class (`STANDARD` when the store omits it).
    pub storage_class: String,
    /// Last-Modified as reported.
    pub last_modified: Option<DateTime<Utc>>,
    /// Server-side encryption as reported (`AES256`, `aws:kms`).
    pub sse: Option<String>,
    /// KMS key id as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The caller's user metadata as reported (the executor's marker names left out).
    #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
    pub user_metadata: UserMetadata,
}

/// User metadata the executor writes on every object it creates, so that verification and
/// recovery can tell *this* operation's object from an earlier one of the same size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMarker {
    /// Journal row of the operation that wrote the object.
    pub journal_id: i64,
    /// SHA-256 of the whole content, when it was known before the write.
    pub sha256: Option<Sha256Digest>,
}

impl WriteMarker {
    /// User-metadata name (without `x-amz-meta-`) of the journal id.
    pub const JOURNAL_ID: &'static str = "filestore-journal-id";
    /// User-metadata name (without `x-amz-meta-`) of the SHA-256.
    pub const SHA256: &'static str = "filestore-sha256";

    /// The metadata pairs to send.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![(Self::JOURNAL_ID, self.journal_id.to_string())];
        if let Some(s) = &self.sha256 {
            v.push((Self::SHA256, s.to_hex()));
        }
        v
    }

    /// Reads a marker back from user metadata (names compared case-insensitively); `None` when
    /// the object carries none or an unreadable one.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let mut journal_id = None;
        let mut sha256 = None;
        for (k, v) in pairs {
            if k.eq_ignore_ascii_case(Self::JOURNAL_ID) {
                journal_id = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case(Self::SHA256) {
                sha256 = Sha256Digest::from_hex(v.trim()).ok();
            }
        }
        Some(WriteMarker {
            journal_id: journal_id?,
            sha256,
        })
    }
}

/// How the content of a committed object was proven, recorded in `nodes.verified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Verification {
    /// The store reported a whole-object SHA-256 equal to the executor's.
    Sha256VerifiedByStore,
    /// The store reported a composite (per-part) SHA-256 equal to the one the executor computed
    /// from the parts it sent.
    CompositeVerifiedByStore,
    /// The executor read the bytes itself (a streamed copy) and hashed them.
    Sha256VerifiedByExecutor,
    /// The store reports no checksum; the object carries this operation's journal id and SHA-256
    /// in its user metadata and has the expected size.
    Sha256FromMetadata,
    /// Only the size could be checked (the store keeps neither checksums nor user metadata).
    #[default]
    SizeOnly,
    /// The PUT's answer echoed the SHA-256 the executor sent, which the store checked the body
    /// against before accepting it (mounts with `verify = put-response` or `response`; no HEAD
    /// was sent).
    Sha256InPutResponse,
    /// The CopyObject's answer carried the SHA-256 the store computed of the copy, equal to the
    /// pinned source's (mounts with `verify = response`; no HEAD was sent).
    Sha256InCopyResponse,
}

impl Verification {
    /// The name stored in `nodes.verified`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Sha256VerifiedByStore => "sha256-verified-by-store",
            Verification::CompositeVerifiedByStore => "composite-verified-by-store",
            Verification::Sha256VerifiedByExecutor => "sha256-verified-by-executor",
            Verification::Sha256FromMetadata => "sha256-from-metadata",
            Verification::SizeOnly => "size-only",
            Verification::Sha256InPutResponse => "sha256-in-put-response",
            Verification::Sha256InCopyResponse => "sha256-in-copy-response",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Verification::Sha256VerifiedByStore,
            Verification::CompositeVerifiedByStore,
            Verification::Sha256VerifiedByExecutor,
            Verification::Sha256FromMetadata,
            Verification::SizeOnly,
            Verification::Sha256InPutResponse,
            Verification::Sha256InCopyResponse,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// The metadata recorded in `nodes` for a live object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// SHA-256 of the content (computed by the executor).
    pub sha256: Sha256Digest,
    /// Storage class.
    pub storage_class: String,
    /// Last-Modified as reported by the store.
    pub last_modified: Option<DateTime<Utc>>,
    /// How the content was proven.
    #[serde(default)]
    pub verified: Verification,
    /// Server-side encryption the store reported (`AES256`, `aws:kms`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    /// Settings of the mount the store did not apply, under the lenient policy (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
    /// The caller's user metadata, as the store reported it at verification.
    #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
    pub user_metadata: UserMetadata,
}

/// A `nodes` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Mount name.
    pub mount: String,
    /// Filestore path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Recorded metadata.
    pub meta: NodeMeta,
    /// Generation: 1 for the first version of a path, +1 for every committed change.
    pub generation: i64,
}

/// The outcome of a committed operation, returned to callers and stored in `journal.result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Journal row id.
    pub journal_id: i64,
    /// Operation.
    pub op: OpKind,
    /// Mount name.
    pub mount: String,
    /// Filestore path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Source of a copy / move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// The node after the operation (`None` after a delete).
    pub node: Option<NodeMeta>,
    /// Generation of the path after the operation.
    pub generation: i64,
    /// Id of the change event.
    pub event_id: Uuid,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Filestore path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// Storage class.
    pub storage_class: String,
    /// Last-Modified.
    pub last_modified: Option<DateTime<Utc>>,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ListPage {
    /// Objects.
    pub entries: Vec<ListEntry>,
    /// Sub-directories (delimited listing only), without trailing slash.
    pub directories: Vec<String>,
    /// Keys under the prefix that do not map to a Filestore path.
    pub unmapped: Vec<crate::path::UnmappedKey>,
    /// Pass to the next call to get the next page.
    pub next_token: Option<String>,
}

/// Raw listing from the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawListing {
    /// Objects.
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes.
    pub common_prefixes: Vec<String>,
    /// Continuation token.
    pub next_token: Option<String>,
}

/// Result of `stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Filestore path.
    pub path: String,
    /// What the store holds now.
    pub object: ObjectMeta,
    /// What Postgres records (`None` if the object is not tracked).
    pub node: Option<Node>,
}

/// Where the bytes of a multipart put come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum UploadSource {
    /// A local file, identified by path, size and modification time; it may be re-read to resume
    /// as long as size and modification time are unchanged.
    File {
        /// Absolute path.
        path: String,
        /// Size when the put started.
        size: u64,
        /// Modification time (nanoseconds since the Unix epoch) when the put started.
        mtime_ns: i64,
    },
    /// A stream read once; an upload from it cannot resume after the process dies.
    Stream,
}

/// A multipart upload as recorded in `multipart_uploads` / `multipart_parts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// Upload id.
    pub upload_id: String,
    /// Journal row.
    pub journal_id: i64,
    /// Mount name.
    pub mount: String,
    /// Object key.
    pub key: String,
    /// Part size used.
    pub part_size: u64,
    /// Total size, when known.
    pub total_size: Option<u64>,
    /// A server-side copy's source version (its pinned ETag), which its parts are copied from.
    pub source_etag: Option<String>,
    /// Parts recorded so far.
    pub parts: Vec<UploadedPart>,
}

/// Which conditional requests a mount's store honours, as its probe found (a store that ignores
/// a condition must not be trusted with it): the executor conditions its writes only on those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConditions {
    /// PutObject with `If-None-Match: *` is refused (412) when the key exists.
    pub put_if_none_match: bool,
    /// PutObject with `If-Match: <etag>` is refused when the key holds another ETag.
    pub put_if_match: bool,
    /// DeleteObject with `If-Match: <etag>` is refused when the key holds another ETag.
    pub delete_if_match: bool,
    /// CompleteMultipartUpload with `If-None-Match: *` is refused when the key exists.
    #[serde(default)]
    pub complete_if_none_match: bool,
    /// CompleteMultipartUpload with `If-Match: <etag>` is refused when the key holds another
    /// ETag.
    #[serde(default)]
    pub complete_if_match: bool,
    /// When the probe ran.
    pub probed_at: DateTime<Utc>,
}

/// Progress of one upload, sent to the caller's sink and to Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadProgress {
    /// Mount name.
    pub mount: String,
    /// Filestore path.
    pub path: String,
    /// Upload id.
    pub upload_id: String,
    /// Bytes done (accepted by the store and recorded), resumed parts included.
    pub bytes_done: u64,
    /// Total bytes, when known.
    pub bytes_total: Option<u64>,
    /// Parts done.
    pub parts_done: u32,
    /// Total parts, when known.
    pub parts_total: Option<u32>,
    /// Bytes sent to the store by this run (retries and re-sent parts included).
    pub bytes_sent: u64,
    /// Upload rate of this run, bytes per second.
    pub bytes_per_second: f64,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Last event of the upload (all parts done).
    pub finished: bool,
}

/// A part the store has accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    /// 1-based part number.
    pub part_number: i32,
    /// ETag without quotes (`None` when a listing omits it, as s3s-fs does).
    pub etag: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the part, when known.
    pub sha256: Option<Sha256Digest>,
}

/// A mount's lease as held by one executor: the fencing token of its writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Mount name.
    pub mount: String,
    /// Owner id of the executor (host, process, instance).
    pub owner: String,
    /// Epoch of this acquisition; every acquisition increments it.
    pub epoch: i64,
}

/// What trying to take a mount's lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is ours.
    Owned(Fence),
    /// Another executor holds it until `expires_at`.
    HeldBy {
        /// Its owner id.
        owner: String,
        /// When the lease runs out unless renewed.
        expires_at: DateTime<Utc>,
    },
}
