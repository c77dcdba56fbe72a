//! Ports: the small async traits the actors call. The root crate implements them on aws-sdk-s3,
//! tokio-postgres and redis-rs; [`crate::testing`] has in-memory fakes for actor tests.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::{
    CommitRecord, IntentOutcome, JournalEntry, NewIntent, Node, ObjectMeta, OpResult, OutboxEvent,
    RawListing,
};
use crate::mount::{MountRow, MountSpec};

/// Classes of object-store failure. Retryability is decided here, once, from the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// 404 / NoSuchKey.
    NotFound,
    /// 412: a conditional request did not hold.
    PreconditionFailed,
    /// 503 SlowDown and friends: back off and retry.
    Throttled,
    /// 5xx, connection reset, truncated response: retry.
    Transient,
    /// No response within the attempt timeout: retry.
    Timeout,
    /// The server computed another checksum than we sent (corruption on the wire): retry.
    ChecksumMismatch,
    /// Credentials or permissions: fix the configuration.
    AccessDenied,
    /// Bucket missing, endpoint unreachable by name, or a request the store rejects
    /// (unknown storage class, checksum header not supported): fix the mount.
    Config,
    /// Any other 4xx.
    Rejected,
}

/// An object-store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct StoreError {
    /// Class.
    pub kind: StoreErrorKind,
    /// The store's error code, when it sent one.
    pub code: Option<String>,
    /// Human-readable detail.
    pub message: String,
}

impl StoreError {
    /// Builds an error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            code: None,
            message: message.into(),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Throttled
                | StoreErrorKind::Transient
                | StoreErrorKind::Timeout
                | StoreErrorKind::ChecksumMismatch
        )
    }
}

/// A Postgres failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MetaError {
    /// Whether a retry may succeed (connection lost, serialization failure, ...).
    pub retryable: bool,
    /// Detail.
    pub message: String,
}

/// A Redis failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// A single-request upload.
#[derive(Debug, Clone)]
pub struct PutObjectInput {
    /// Object key.
    pub key: String,
    /// The whole body.
    pub body: Bytes,
    /// SHA-256 of the body (raw bytes); sent as a checksum when the mount's policy says so.
    pub sha256: [u8; 32],
    /// Content-Type.
    pub content_type: Option<String>,
}

/// Object storage for one mount (bucket, prefix, SSE, ACL and storage class are the store's).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// PUT an object in one request.
    async fn put_object(&self, input: PutObjectInput) -> Result<ObjectMeta, StoreError>;
    /// HEAD an object; `Ok(None)` when it does not exist.
    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// DELETE an object (succeeds when it is already gone).
    async fn delete_object(&self, key: &str) -> Result<(), StoreError>;
    /// One page of ListObjectsV2.
    async fn list_objects(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> Result<RawListing, StoreError>;
}

/// Builds the object store of a mount.
pub trait ObjectStoreFactory: Send + Sync + 'static {
    /// The store for `spec`.
    fn for_mount(&self, spec: &MountSpec) -> Result<Arc<dyn ObjectStore>, StoreError>;
}

/// Postgres: mounts, journal, nodes, snapshots, outbox.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// All `backend_mounts` rows.
    async fn load_mounts(&self) -> Result<Vec<MountRow>, MetaError>;
    /// Records an intent (journal row `pending`), or reports the existing row for the key. A failed
    /// row with the same fingerprint is re-armed to `pending` (attempts + 1) and reported as started.
    async fn begin(&self, intent: &NewIntent) -> Result<IntentOutcome, MetaError>;
    /// In one transaction: node upsert/delete with the next generation, a snapshot row, the journal
    /// row marked committed with its result, and the outbox event.
    async fn commit(&self, record: &CommitRecord) -> Result<OpResult, MetaError>;
    /// Marks a pending journal row failed.
    async fn fail(&self, journal_id: i64, error: &str) -> Result<(), MetaError>;
    /// Pending journal rows of a mount, oldest first.
    async fn pending(&self, mount: &str) -> Result<Vec<JournalEntry>, MetaError>;
    /// The node at a path.
    async fn node(&self, mount: &str, path: &str) -> Result<Option<Node>, MetaError>;
    /// Unpublished outbox rows of a mount in commit order.
    async fn unpublished(&self, mount: &str, limit: i64) -> Result<Vec<OutboxEvent>, MetaError>;
    /// Marks outbox rows published.
    async fn mark_published(&self, ids: &[i64]) -> Result<(), MetaError>;
}

/// Redis: change notifications.
#[async_trait]
pub trait ChangePublisher: Send + Sync + 'static {
    /// Publishes events of one mount, in order.
    async fn publish(&self, mount: &str, events: &[OutboxEvent]) -> Result<(), PublishError>;
}
