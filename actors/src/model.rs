//! Domain records shared by the actors and the adapters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

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
}

impl OpKind {
    /// The name stored in Postgres and sent in events.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Delete => "delete",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(OpKind::Put),
            "delete" => Some(OpKind::Delete),
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
    /// SHA-256 as lowercase hex, when the store reports one.
    pub sha256: Option<String>,
    /// Storage class (`STANDARD` when the store omits it).
    pub storage_class: String,
    /// Last-Modified as reported.
    pub last_modified: Option<DateTime<Utc>>,
    /// Server-side encryption as reported (`AES256`, `aws:kms`).
    pub sse: Option<String>,
}

/// The metadata recorded in `nodes` for a live object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    /// SHA-256 of the content, lowercase hex (computed by the executor).
    pub sha256: String,
    /// Storage class.
    pub storage_class: String,
    /// Last-Modified as reported by the store.
    pub last_modified: Option<DateTime<Utc>>,
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
    pub sha256: Option<String>,
    /// Generation after the change.
    pub generation: i64,
    /// Journal row id.
    pub journal_id: i64,
    /// Commit time.
    pub time: DateTime<Utc>,
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Outbox id (commit order within the database).
    pub id: i64,
    /// The event.
    pub event: ChangeEvent,
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

/// The parameters of a mutating request, stored in `journal.request`. Recovery reads them back.
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
        /// SHA-256 of the content, hex.
        sha256: String,
        /// Content-Type sent to the store.
        content_type: Option<String>,
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
    },
    /// A delete.
    Delete {
        /// Filestore path.
        path: String,
        /// Object key.
        key: String,
    },
}

impl OpRequest {
    /// The operation kind.
    pub fn kind(&self) -> OpKind {
        match self {
            OpRequest::Put { .. } | OpRequest::PutMultipart { .. } => OpKind::Put,
            OpRequest::Delete { .. } => OpKind::Delete,
        }
    }

    /// The target path.
    pub fn path(&self) -> &str {
        match self {
            OpRequest::Put { path, .. }
            | OpRequest::PutMultipart { path, .. }
            | OpRequest::Delete { path, .. } => path,
        }
    }

    /// The target key.
    pub fn key(&self) -> &str {
        match self {
            OpRequest::Put { key, .. }
            | OpRequest::PutMultipart { key, .. }
            | OpRequest::Delete { key, .. } => key,
        }
    }

    /// A stable digest of the parameters: the same request always has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        // serde_json writes struct fields in declaration order, so the encoding is canonical.
        let bytes = serde_json::to_vec(self).expect("OpRequest always serialises");
        hex::encode(Sha256::digest(&bytes))
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
    /// Result when committed.
    pub result: Option<OpResult>,
    /// Error when failed.
    pub error: Option<String>,
}

/// What recording an intent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentOutcome {
    /// A new (or re-armed failed) entry: go ahead.
    Started {
        /// Journal row id.
        journal_id: i64,
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
    /// The multipart upload this commit completes (marked `completed` in the same transaction).
    pub upload_id: Option<String>,
}

impl CommitRecord {
    /// The caller's result and the change event of this commit, at `generation`, with a new
    /// event id. Every [`crate::ports::MetaStore`] builds them here, so they agree.
    pub fn outcome(&self, generation: i64) -> (OpResult, ChangeEvent) {
        let node = match &self.change {
            NodeChange::Upsert(m) => Some(m.clone()),
            NodeChange::Remove => None,
        };
        let event_id = Uuid::new_v4();
        let event = ChangeEvent {
            v: EVENT_VERSION,
            event_id,
            mount: self.mount.clone(),
            op: self.op,
            path: self.path.clone(),
            source_path: None,
            key: self.key.clone(),
            size: node.as_ref().map(|n| n.size),
            etag: node.as_ref().map(|n| n.etag.clone()),
            sha256: node.as_ref().map(|n| n.sha256.clone()),
            generation,
            journal_id: self.journal_id,
            time: Utc::now(),
        };
        let result = OpResult {
            journal_id: self.journal_id,
            op: self.op,
            mount: self.mount.clone(),
            path: self.path.clone(),
            key: self.key.clone(),
            node,
            generation,
            event_id,
        };
        (result, event)
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
    pub parts: Vec<crate::ports::UploadedPart>,
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
