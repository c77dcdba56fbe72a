//! The public mailbox commands of a mount supervisor (what a host sends). Messages internal to
//! the executor live with the actor that handles them (the committer's in `committer`, the
//! notifier's in `notifier`). Commands are imperative (`PutObject`); the reply type is in `rtype`.

use actix::Message;
use bytes::Bytes;

use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::model::{OpKind, OpResult, UploadSource, WriteCondition};
use crate::multipart::{ProgressSink, SourceReader};
use crate::path::FsPath;
use crate::store::MountStore;

/// Put an object whose body is already in memory (at most the mount's multipart threshold).
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct PutObject {
    /// Target path.
    pub path: FsPath,
    /// Content.
    pub body: Bytes,
    /// SHA-256 of `body`, computed while the caller's source was read.
    pub sha256: Sha256Digest,
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata stored with the object.
    pub metadata: crate::model::UserMetadata,
    /// Idempotency key; a random one is used when `None`.
    pub idempotency_key: Option<String>,
    /// Conditions on the path.
    pub condition: WriteCondition,
}

/// Put an object through a multipart upload, reading the source in order.
#[derive(Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct PutLargeObject {
    /// Target path.
    pub path: FsPath,
    /// Where the bytes come from (a file can be re-read to resume after a crash).
    pub source: UploadSource,
    /// The reader of a [`UploadSource::Stream`] (files are opened by the upload).
    pub reader: Option<SourceReader>,
    /// Total size, when known.
    pub size: Option<u64>,
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata stored with the object.
    pub metadata: crate::model::UserMetadata,
    /// Idempotency key; a random one is used when `None`.
    pub idempotency_key: Option<String>,
    /// Receives progress updates.
    pub progress: Option<ProgressSink>,
    /// Conditions on the path.
    pub condition: WriteCondition,
}

impl std::fmt::Debug for PutLargeObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutLargeObject")
            .field("path", &self.path)
            .field("source", &self.source)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Delete the object at a path.
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct DeleteObject {
    /// Target path.
    pub path: FsPath,
    /// Idempotency key; a random one is used when `None`.
    pub idempotency_key: Option<String>,
    /// Send the DELETE in a multi-object delete (DeleteObjects) together with the mount's other
    /// batched deletes waiting at that moment (`S3Executor::delete_many` sets it).
    pub batched: bool,
}

/// Ask a supervisor how it is doing.
#[derive(Debug, Message)]
#[rtype(result = "SupervisorStatus")]
pub struct GetStatus;

/// A supervisor's state, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorStatus {
    /// Which conditional requests the store honours, once this supervisor's probe ran.
    pub conditions: Option<crate::model::StoreConditions>,
    /// Mount name.
    pub mount: String,
    /// How often the supervisor has been restarted.
    pub restarts: u32,
    /// Whether start-up recovery has finished.
    pub recovered: bool,
    /// Operations running or queued.
    pub operations: usize,
    /// Bytes sent in UploadPart requests since the executor started (retries included).
    pub upload_bytes_sent: u64,
    /// Parts accepted by the store since the executor started.
    pub parts_uploaded: u64,
    /// Parts skipped because an earlier run had uploaded them.
    pub parts_resumed: u64,
    /// S3 and Postgres calls retried since the executor started.
    pub retries: u64,
    /// CopyObject / UploadPartCopy requests sent since the executor started (retries included).
    pub copy_requests: u64,
    /// DeleteObjects requests sent since the executor started.
    pub delete_batches: u64,
    /// Keys sent in those DeleteObjects requests.
    pub deletes_batched: u64,
    /// The mount's lease as this supervisor sees it.
    pub lease: LeaseStatus,
}

/// Who owns a mount, as one supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// This executor holds the lease at this epoch.
    Owned {
        /// The lease's epoch (fencing token).
        epoch: i64,
    },
    /// Another executor holds it.
    HeldBy {
        /// Its owner id.
        owner: String,
        /// Until when, unless renewed.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// Not known yet (starting, or Postgres unreachable).
    Unknown,
}

/// Stop serving a mount for good (its row changed or was removed, or the executor shuts down):
/// new calls get `Error::Shutdown`, running ones finish.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RetireMount;

/// Copy or move an object to a path of this supervisor's mount, from this mount or another.
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct TransferObject {
    /// [`OpKind::Copy`] or [`OpKind::Move`].
    pub op: OpKind,
    /// The source's mount (this one, or another the executor serves).
    pub source_mount: MountStore,
    /// Source path.
    pub source_path: FsPath,
    /// Destination path (on this mount).
    pub path: FsPath,
    /// Conditions on the destination.
    pub condition: WriteCondition,
    /// Idempotency key; a random one is used when `None`.
    pub idempotency_key: Option<String>,
}

/// Look at the mount's lease now rather than at the next periodic look (a caller waiting to run
/// a mutating call on a mount another executor holds). A signal: `do_send`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LookAtLease;

/// Relay the mount's outbox now (a commit elsewhere wrote events for it). A signal: `do_send`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RelayOutbox;
