//! Mailbox messages. Commands are imperative (`PutObject`); the reply type is in `rtype`.

use actix::Message;
use bytes::Bytes;

use crate::error::Error;
use crate::model::{CommitRecord, IntentOutcome, ListPage, NewIntent, OpResult, Stat};
use crate::path::{DirPath, FsPath};
use crate::ports::MetaError;

/// Put an object whose body is already in memory (at most the mount's multipart threshold).
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct PutObject {
    /// Target path.
    pub path: FsPath,
    /// Content.
    pub body: Bytes,
    /// SHA-256 of `body`, computed while the caller's source was read.
    pub sha256: [u8; 32],
    /// Content-Type.
    pub content_type: Option<String>,
    /// Idempotency key; a random one is used when `None`.
    pub idempotency_key: Option<String>,
}

/// Delete the object at a path.
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct DeleteObject {
    /// Target path.
    pub path: FsPath,
    /// Idempotency key; a random one is used when `None`.
    pub idempotency_key: Option<String>,
}

/// Stat a path: what the store holds and what Postgres records.
#[derive(Debug, Message)]
#[rtype(result = "Result<Stat, Error>")]
pub struct StatObject {
    /// Target path.
    pub path: FsPath,
}

/// List a directory, one page at a time.
#[derive(Debug, Message)]
#[rtype(result = "Result<ListPage, Error>")]
pub struct ListObjects {
    /// Directory to list (root when empty).
    pub dir: DirPath,
    /// `true`: one level, with sub-directories; `false`: everything below.
    pub delimited: bool,
    /// Token from the previous page.
    pub token: Option<String>,
    /// Page size (store default when `None`, S3 caps at 1000).
    pub max_keys: Option<i32>,
}

/// Ask a supervisor how it is doing.
#[derive(Debug, Message)]
#[rtype(result = "SupervisorStatus")]
pub struct GetStatus;

/// A supervisor's state, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorStatus {
    /// Mount name.
    pub mount: String,
    /// How often the supervisor has been restarted.
    pub restarts: u32,
    /// Whether start-up recovery has finished.
    pub recovered: bool,
    /// Operations running or queued.
    pub operations: usize,
}

/// Record an intent (committer).
#[derive(Debug, Message)]
#[rtype(result = "Result<IntentOutcome, MetaError>")]
pub struct RecordIntent(pub NewIntent);

/// Commit a verified operation (committer).
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, MetaError>")]
pub struct CommitOperation(pub CommitRecord);

/// Mark an operation failed (committer).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetaError>")]
pub struct FailOperation {
    /// Journal row.
    pub journal_id: i64,
    /// Error text stored in the row.
    pub error: String,
}

/// Something was committed: relay the outbox (notifier). A signal, so `do_send` is fine.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OutboxChanged;

/// Stop serving a mount for good (its row changed or was removed, or the executor shuts down):
/// new calls get `Error::Shutdown`, running ones finish.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RetireMount;
