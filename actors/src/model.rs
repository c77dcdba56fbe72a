//! Domain records shared by the actors and the adapters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::digest::Sha256Digest;

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

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(OpKind::Put),
            "delete" => Some(OpKind::Delete),
            "copy" => Some(OpKind::Copy),
            "move" => Some(OpKind::Move),
            _ => None,
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

/// A change event, as stored in `outbox.payload` and published to Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Payload version, [`EVENT_VERSION`].
    pub v: u32,
    /// Stable id; a redelivery carries the same id.
    pub event_id: Uuid,
    /// Mount name.
    pub mount: String,
    /// Operation.
    pub op: OpKind,
    /// Filestore path.
    pub path: String,
    /// Source mount for copy / move.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_mount: Option<String>,
    /// Source path for copy / move.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_path: Option<String>,
    /// Object key.
    pub key: String,
    /// Size (absent for deletes).
    pub size: Option<u64>,
    /// ETag (absent for deletes).
    pub etag: Option<String>,
    /// SHA-256 (absent for deletes).
    pub sha256: Option<Sha256Digest>,
    /// Generation after the change.
    pub generation: i64,
    /// Journal row id.
    pub journal_id: i64,
    /// Commit time.
    pub time: DateTime<Utc>,
}

/// Largest event payload a watcher accepts, in bytes (a real one is well under 4 KiB: two paths and
/// a key of at most 1 KiB each, plus fixed fields).
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// Why an event payload was refused by [`ChangeEvent::decode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Longer than [`MAX_EVENT_BYTES`].
    #[error("event payload is {len} bytes, at most {MAX_EVENT_BYTES}")]
    TooLarge {
        /// Payload length.
        len: usize,
    },
    /// Not UTF-8 JSON of the event's shape.
    #[error("event payload is not a change event: {0}")]
    Malformed(String),
    /// A version this code does not know.
    #[error("event version {v} is not supported (this build reads version {EVENT_VERSION})")]
    Version {
        /// The payload's `v`.
        v: u32,
    },
    /// A field out of its domain.
    #[error("event field '{field}' {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ChangeEvent {
    /// The payload as stored in the outbox and published (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a change event always serialises")
    }

    /// Parses and checks a payload read from Redis or the outbox, for watchers: the JSON shape,
    /// the version, and every field a consumer might act on (mount name, paths, key, generation,
    /// journal id). A watcher must not trust a stream other processes can write to.
    pub fn decode(payload: &[u8]) -> Result<ChangeEvent, EventError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { len: payload.len() });
        }
        let e: ChangeEvent =
            serde_json::from_slice(payload).map_err(|e| EventError::Malformed(e.to_string()))?;
        if e.v != EVENT_VERSION {
            return Err(EventError::Version { v: e.v });
        }
        let field = |field: &'static str, reason: String| EventError::Field { field, reason };
        let mount_ok = |m: &str| {
            (1..=128).contains(&m.len())
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !mount_ok(&e.mount) {
            return Err(field("mount", "is not a mount name".into()));
        }
        crate::path::FsPath::parse(&e.path).map_err(|r| field("path", r.to_string()))?;
        match (&e.source_mount, &e.source_path) {
            (None, None) => {}
            (Some(m), Some(p)) if matches!(e.op, OpKind::Copy | OpKind::Move) => {
                if !mount_ok(m) {
                    return Err(field("source_mount", "is not a mount name".into()));
                }
                crate::path::FsPath::parse(p).map_err(|r| field("source_path", r.to_string()))?;
            }
            _ => {
                return Err(field(
                    "source_path",
                    "source_mount and source_path come together, on copy and move only".into(),
                ))
            }
        }
        if e.key.is_empty() || e.key.len() > crate::path::MAX_KEY_BYTES {
            return Err(field("key", format!("is {} bytes", e.key.len())));
        }
        if e.generation < 0 || e.journal_id <= 0 {
            return Err(field(
                "generation",
                format!(
                    "generation {} / journal_id {} out of range",
                    e.generation, e.journal_id
                ),
            ));
        }
        Ok(e)
    }
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Outbox id (commit order within the database).
    pub id: i64,
    /// The event.
    pub event: ChangeEvent,
}

/// One outbox row as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxRow {
    /// An event this version of the executor reads.
    Event(OutboxEvent),
    /// A row whose payload this version cannot read as an event — written by a newer version
    /// (an operation kind it does not know) or edited by hand. The relay publishes it as stored
    /// instead of stopping at it: every event after it still reaches Redis.
    Unreadable {
        /// Outbox id.
        id: i64,
        /// The row's `event_id` column.
        event_id: uuid::Uuid,
        /// The payload as stored (JSON).
        payload: String,
        /// Why it could not be read.
        reason: String,
    },
}

impl OutboxRow {
    /// The row's outbox id.
    pub fn id(&self) -> i64 {
        match self {
            OutboxRow::Event(e) => e.id,
            OutboxRow::Unreadable { id, .. } => *id,
        }
    }
}

/// State of a journal row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalState {
    /// Intent recorded, outcome not yet committed.
    Pending,
    /// Verified and committed.
    Committed,
    /// Ended without effect.
    Failed,
}

impl JournalState {
    /// The name stored in Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalState::Pending => "pending",
            JournalState::Committed => "committed",
            JournalState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(JournalState::Pending),
            "committed" => Some(JournalState::Committed),
            "failed" => Some(JournalState::Failed),
            _ => None,
        }
    }
}

/// Conditions a write must meet, checked against the node in Postgres under the path's lock (and
/// sent to the store as conditional headers where it supports them). A failed condition is
/// [`crate::Error::PreconditionFailed`] and changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCondition {
    /// Create only: fail if the destination path has a node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_none_match: bool,
    /// Replace only if the destination's node is at this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<i64>,
}

impl WriteCondition {
    /// No condition.
    pub fn is_none(&self) -> bool {
        !self.if_none_match && self.if_generation.is_none()
    }
}

/// The source of a copy or move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Mount of the source.
    pub mount: String,
    /// Filestore path of the source.
    pub path: String,
    /// Object key of the source.
    pub key: String,
}

/// A copy or move request (the destination is on the journal row's mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// Destination path.
    pub path: String,
    /// Destination key.
    pub key: String,
    /// Source.
    pub source: SourceRef,
    /// Conditions on the destination.
    #[serde(default, skip_serializing_if = "WriteCondition::is_none")]
    pub condition: WriteCondition,
}

/// The parameters of a mutating request, stored in `journal.request`. Recovery reads them back.
/// They are what the caller asked for; what the executor learned while running (the source it
/// pinned, how far a move got) is recorded separately as the row's [`OpProgress`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpRequest {
    /// A single-request put.
    Put {
        /// Filestore path.
        path: String,
        /// Object key.
        key: String,
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the content.
        sha256: Sha256Digest,
        /// Content-Type sent to the store.
        content_type: Option<String>,
        /// Conditions on the path.
        #[serde(default, skip_serializing_if = "WriteCondition::is_none")]
        condition: WriteCondition,
        /// User metadata stored with the object.
        #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
        metadata: UserMetadata,
    },
    /// A multipart put from a source that is read once, in order.
    PutMultipart {
        /// Filestore path.
        path: String,
        /// Object key.
        key: String,
        /// Size in bytes, when known up front.
        size: Option<u64>,
        /// Where the bytes come from; a file can be re-read to resume after a crash.
        source: UploadSource,
        /// Content-Type sent to the store.
        content_type: Option<String>,
        /// Conditions on the path.
        #[serde(default, skip_serializing_if = "WriteCondition::is_none")]
        condition: WriteCondition,
        /// User metadata stored with the object.
        #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
        metadata: UserMetadata,
    },
    /// A delete.
    Delete {
        /// Filestore path.
        path: String,
        /// Object key.
        key: String,
    },
    /// A copy.
    Copy(TransferRequest),
    /// A move.
    Move(TransferRequest),
}

impl OpRequest {
    /// The operation kind.
    pub fn kind(&self) -> OpKind {
        match self {
            OpRequest::Put { .. } | OpRequest::PutMultipart { .. } => OpKind::Put,
            OpRequest::Delete { .. } => OpKind::Delete,
            OpRequest::Copy(_) => OpKind::Copy,
            OpRequest::Move(_) => OpKind::Move,
        }
    }

    /// The target path.
    pub fn path(&self) -> &str {
        match self {
            OpRequest::Put { path, .. }
            | OpRequest::PutMultipart { path, .. }
            | OpRequest::Delete { path, .. } => path,
            OpRequest::Copy(t) | OpRequest::Move(t) => &t.path,
        }
    }

    /// The target key.
    pub fn key(&self) -> &str {
        match self {
            OpRequest::Put { key, .. }
            | OpRequest::PutMultipart { key, .. }
            | OpRequest::Delete { key, .. } => key,
            OpRequest::Copy(t) | OpRequest::Move(t) => &t.key,
        }
    }

    /// The source of a copy / move.
    pub fn source(&self) -> Option<&SourceRef> {
        match self {
            OpRequest::Copy(t) | OpRequest::Move(t) => Some(&t.source),
            _ => None,
        }
    }

    /// A stable digest of the parameters: the same request always has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        // serde_json writes struct fields in declaration order, so the encoding is canonical.
        let bytes = serde_json::to_vec(self).expect("OpRequest always serialises");
        hex::encode(Sha256::digest(&bytes))
    }
}

/// The source object as a copy / move pinned it before acting: the copy is made from exactly
/// this version (by ETag) and proven against this SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedSource {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 recorded in the source's node.
    pub sha256: Sha256Digest,
    /// ETag of the source object.
    pub etag: String,
    /// Generation of the source node.
    pub generation: i64,
    /// User metadata of the source node, given to the copy.
    #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
    pub user_metadata: UserMetadata,
}

/// How far a copy / move got, recorded on its journal row (`journal.progress`) after each step so
/// recovery continues from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum OpProgress {
    /// The source was read from `nodes` and pinned; nothing was written yet.
    SourcePinned {
        /// The pinned source.
        source: PinnedSource,
    },
    /// The destination holds a verified copy.
    Copied {
        /// The pinned source.
        source: PinnedSource,
        /// The verified destination.
        dest: NodeMeta,
    },
    /// (Move) the source object was deleted and verified gone; only the commit is left.
    SourceDeleted {
        /// The pinned source.
        source: PinnedSource,
        /// The verified destination.
        dest: NodeMeta,
    },
}

impl OpProgress {
    /// The phase name, for logs and failpoints.
    pub fn phase(&self) -> &'static str {
        match self {
            OpProgress::SourcePinned { .. } => "source_pinned",
            OpProgress::Copied { .. } => "copied",
            OpProgress::SourceDeleted { .. } => "source_deleted",
        }
    }
}

/// A new journal intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIntent {
    /// Mount name.
    pub mount: String,
    /// Idempotency key (unique per mount).
    pub idempotency_key: String,
    /// The request.
    pub request: OpRequest,
    /// `request.fingerprint()`, computed once per request.
    pub fingerprint: String,
    /// Identifies this call: a begin sent again after the acknowledgement of its transaction was
    /// lost finds the row it wrote (pending, with this token) and goes ahead instead of taking it
    /// for another call's.
    pub token: uuid::Uuid,
    /// Progress recorded with the intent: a copy / move's pinned source (read before the intent
    /// is written), so that pinning costs no write of its own.
    pub progress: Option<OpProgress>,
}

/// A journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Row id.
    pub id: i64,
    /// Mount name.
    pub mount: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Fingerprint of the request.
    pub fingerprint: String,
    /// State.
    pub state: JournalState,
    /// Attempts so far.
    pub attempts: i32,
    /// The request.
    pub request: OpRequest,
    /// How far a copy / move got.
    pub progress: Option<OpProgress>,
    /// Result when committed.
    pub result: Option<OpResult>,
    /// Error when failed.
    pub error: Option<String>,
    /// Time since the row last changed (by the database's clock).
    pub idle: std::time::Duration,
}

/// What recording an intent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentOutcome {
    /// A new (or re-armed failed) entry: go ahead.
    Started {
        /// Journal row id.
        journal_id: i64,
    },
    /// A failed move re-armed with the step it kept: it had deleted its source, so it cannot be
    /// made again, only finished (the destination proven again, then committed). The engine
    /// compares the kept pin with this call's before it goes on.
    Resumed {
        /// Journal row id.
        journal_id: i64,
        /// The step the row kept (`source_deleted`).
        progress: Box<OpProgress>,
    },
    /// An entry with this key already exists and was not re-armed.
    Existing(Box<JournalEntry>),
}

/// How a commit changes the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// Create or replace the node.
    Upsert(NodeMeta),
    /// Remove the node.
    Remove,
}

/// Everything one commit transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    /// Journal row to mark committed.
    pub journal_id: i64,
    /// Mount name.
    pub mount: String,
    /// Operation.
    pub op: OpKind,
    /// Path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Node change.
    pub change: NodeChange,
    /// The source of a copy / move; for a move its node is removed in the same transaction.
    pub source: Option<SourceRef>,
    /// The multipart upload this commit completes (marked `completed` in the same transaction).
    pub upload_id: Option<String>,
    /// The destination node's generation this operation was conditioned on (checked again in
    /// the commit transaction).
    pub condition: WriteCondition,
}

impl CommitRecord {
    /// The mounts whose streams get an event for this commit: the record's own, and the
    /// source's when a move crosses mounts.
    pub fn event_mounts(&self) -> Vec<&str> {
        let mut v = vec![self.mount.as_str()];
        if let (OpKind::Move, Some(s)) = (self.op, &self.source) {
            if s.mount != self.mount {
                v.push(&s.mount);
            }
        }
        v
    }

    /// The caller's result and the change events of this commit (one per mount in
    /// [`CommitRecord::event_mounts`], each with its own id; the first is the result's), at
    /// `generation`. Every [`crate::ports::MetaStore`] builds them here, so they agree.
    pub fn outcome(&self, generation: i64) -> (OpResult, Vec<(String, ChangeEvent)>) {
        let node = match &self.change {
            NodeChange::Upsert(m) => Some(m.clone()),
            NodeChange::Remove => None,
        };
        let time = Utc::now();
        let events: Vec<(String, ChangeEvent)> = self
            .event_mounts()
            .into_iter()
            .map(|stream_mount| {
                let event = ChangeEvent {
                    v: EVENT_VERSION,
                    event_id: Uuid::new_v4(),
                    mount: self.mount.clone(),
                    op: self.op,
                    path: self.path.clone(),
                    source_mount: self.source.as_ref().map(|s| s.mount.clone()),
                    source_path: self.source.as_ref().map(|s| s.path.clone()),
                    key: self.key.clone(),
                    size: node.as_ref().map(|n| n.size),
                    etag: node.as_ref().map(|n| n.etag.clone()),
                    sha256: node.as_ref().map(|n| n.sha256),
                    generation,
                    journal_id: self.journal_id,
                    time,
                };
                (stream_mount.to_owned(), event)
            })
            .collect();
        let result = OpResult {
            journal_id: self.journal_id,
            op: self.op,
            mount: self.mount.clone(),
            path: self.path.clone(),
            key: self.key.clone(),
            source: self.source.clone(),
            node,
            generation,
            event_id: events[0].1.event_id,
        };
        (result, events)
    }
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
    /// Parts recorded so far.
    pub parts: Vec<UploadedPart>,
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
