//! Options and results of the executor's calls.

use std::sync::Arc;

use filestore_s3_actors::model::{UploadProgress, WriteCondition};
use filestore_s3_actors::multipart::ProgressSink;
use filestore_s3_actors::ports::ByteRange;

/// Options of a put.
#[derive(Clone, Default)]
pub struct PutOptions {
    /// Idempotency key: a repeated call with the same key and content returns the recorded result.
    pub idempotency_key: Option<String>,
    /// Content-Type stored with the object.
    pub content_type: Option<String>,
    /// User metadata stored with the object (`x-amz-meta-<name>`), recorded in `nodes` and
    /// carried by copies and moves; rules in [`filestore_s3_actors::validate::user_metadata`].
    pub metadata: filestore_s3_actors::model::UserMetadata,
    /// Receives progress of a multipart upload (called on the executor's thread; keep it quick).
    /// [`progress_to_recipient`] adapts an actix `Recipient`.
    pub progress: Option<ProgressSink>,
    /// What the put may replace at its path.
    pub mode: PutMode,
}

/// What a write may replace at its path: a put's, or a copy's or move's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Whatever the path holds, or nothing (the default).
    #[default]
    Overwrite,
    /// Create only: `Error::PreconditionFailed` if the path exists (also sent to the store as
    /// `If-None-Match: *`).
    Create,
    /// Replace only the node at this generation: `Error::PreconditionFailed` otherwise (a path
    /// without a node included).
    IfGeneration(i64),
}

impl PutMode {
    pub(crate) fn condition(self) -> WriteCondition {
        match self {
            PutMode::Overwrite => WriteCondition::default(),
            PutMode::Create => WriteCondition {
                if_none_match: true,
                if_generation: None,
            },
            PutMode::IfGeneration(g) => WriteCondition {
                if_none_match: false,
                if_generation: Some(g),
            },
        }
    }
}

impl PutOptions {
    /// Checks the options before any byte is read (the supervisor checks them again).
    pub(crate) fn check(&self) -> Result<(), filestore_s3_actors::Error> {
        use filestore_s3_actors::validate;
        if let Some(ct) = &self.content_type {
            validate::content_type(ct)?;
        }
        if let Some(k) = &self.idempotency_key {
            validate::idempotency_key(k)?;
        }
        validate::user_metadata(&self.metadata)?;
        Ok(())
    }

    pub(crate) fn condition(&self) -> WriteCondition {
        self.mode.condition()
    }
}

impl std::fmt::Debug for PutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutOptions")
            .field("idempotency_key", &self.idempotency_key)
            .field("content_type", &self.content_type)
            .field("metadata", &self.metadata)
            .field("progress", &self.progress.is_some())
            .field("mode", &self.mode)
            .finish()
    }
}

/// A progress sink that forwards every update to an actix actor.
pub fn progress_to_recipient(r: actix::Recipient<UploadProgressMsg>) -> ProgressSink {
    Arc::new(move |p| r.do_send(UploadProgressMsg(p.clone())))
}

/// [`UploadProgress`] as an actix message, for [`progress_to_recipient`].
#[derive(Debug, Clone, actix::Message)]
#[rtype(result = "()")]
pub struct UploadProgressMsg(pub UploadProgress);

/// Options of a read.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Read only this range; the SHA-256 is checked only for whole-object reads.
    pub range: Option<ByteRange>,
}

/// What a read returned.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// Bytes written by this call.
    pub bytes_written: u64,
    /// Size of the whole object.
    pub object_size: u64,
    /// ETag of the object read.
    pub etag: String,
    /// SHA-256 of the whole object, when the whole object was read and checked against `nodes`.
    pub sha256_verified: Option<String>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// Options of [`S3Executor::delete_many`](crate::S3Executor::delete_many).
#[derive(Debug, Clone)]
pub struct DeleteManyOptions {
    /// Idempotency key of the whole call (at most 222 bytes): the delete of each path gets the
    /// key `<key>/<first 32 hex digits of the path's SHA-256>`, so sending the same call again
    /// answers each path with its recorded outcome. Random keys when `None`.
    pub idempotency_key: Option<String>,
    /// Deletes running at once (1-1,000). Their DELETEs go to the store in DeleteObjects
    /// requests of up to 1,000 keys.
    pub in_flight: usize,
}

impl Default for DeleteManyOptions {
    fn default() -> Self {
        DeleteManyOptions {
            idempotency_key: None,
            in_flight: 64,
        }
    }
}

/// Options of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// One level with sub-directories (`true`) or everything below (`false`).
    pub delimited: bool,
    /// Continuation token from the previous page.
    pub token: Option<String>,
    /// Page size.
    pub max_keys: Option<i32>,
}

/// Options of a copy or move.
#[derive(Debug, Clone, Default)]
pub struct TransferOptions {
    /// Idempotency key (on the destination mount).
    pub idempotency_key: Option<String>,
    /// What the copy or move may replace at its destination.
    pub mode: PutMode,
}

impl TransferOptions {
    pub(crate) fn condition(&self) -> WriteCondition {
        self.mode.condition()
    }
}

/// A path on a mount: where a copy or a move reads (`from`) or writes (`to`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// Mount name.
    pub mount: String,
    /// Filestore path on the mount.
    pub path: String,
}

impl Location {
    /// `path` on `mount`.
    pub fn new(mount: impl Into<String>, path: impl Into<String>) -> Self {
        Location {
            mount: mount.into(),
            path: path.into(),
        }
    }
}
