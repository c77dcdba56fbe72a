//! The public error type of the executor.

use crate::mount::MountConfigError;
use crate::path::PathError;
use crate::ports::MetaError;
use crate::store_error::{Outcome, S3Op, StoreError};

/// Every error an executor call can return. Each variant says what was wrong; [`Error::is_retryable`]
/// says whether the same call may succeed later.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path is not a valid Filestore path.
    #[error("invalid path '{path}': {source}")]
    InvalidPath {
        /// The path as given (control characters escaped).
        path: String,
        /// What is wrong.
        source: PathError,
    },
    /// No mount of that name exists.
    #[error("unknown mount '{mount}'")]
    UnknownMount {
        /// Mount name.
        mount: String,
    },
    /// The mount exists but is disabled.
    #[error("mount '{mount}' is disabled (backend_mounts.enabled = false)")]
    MountDisabled {
        /// Mount name.
        mount: String,
    },
    /// The mount row is invalid.
    #[error("{0}")]
    InvalidMount(#[from] MountConfigError),
    /// Nothing at that path.
    #[error("mount '{mount}': no object at '{path}'")]
    NotFound {
        /// Mount name.
        mount: String,
        /// Path.
        path: String,
    },
    /// The object is larger than this operation allows.
    #[error("object of {size} bytes exceeds the {limit}-byte limit for {what}")]
    TooLarge {
        /// Size of the object (or a lower bound).
        size: u64,
        /// The limit.
        limit: u64,
        /// What the limit applies to.
        what: &'static str,
    },
    /// The idempotency key is malformed.
    #[error("invalid idempotency key: {reason}")]
    InvalidIdempotencyKey {
        /// What is wrong.
        reason: String,
    },
    /// The idempotency key was used before with other parameters.
    #[error("mount '{mount}': idempotency key '{key}' was already used for a different request; use a new key")]
    IdempotencyConflict {
        /// Mount name.
        mount: String,
        /// The key.
        key: String,
    },
    /// An operation with this key is pending from an earlier run and awaits recovery.
    #[error(
        "mount '{mount}': operation with idempotency key '{key}' is still pending; retry later"
    )]
    InProgress {
        /// Mount name.
        mount: String,
        /// The key.
        key: String,
    },
    /// A path of the operation is touched by a journal row still pending (an earlier operation
    /// whose outcome S3 has not shown yet), which could not be settled now: nothing was sent.
    /// Running now could be undone when that row is settled; retry once it is (recovery looks
    /// at pending rows every `recovery_interval`).
    #[error("mount '{mount}': path '{path}' has a pending operation (journal {journal_id} of mount '{row_mount}') that could not be settled yet ({reason}); nothing was done, retry later")]
    PathPending {
        /// Mount of the path.
        mount: String,
        /// The path.
        path: String,
        /// Mount whose journal holds the pending row.
        row_mount: String,
        /// The pending row.
        journal_id: i64,
        /// Why it is not settled.
        reason: String,
    },
    /// The object store failed. When the store denied access, the message names the IAM
    /// permission the request needs ([`S3Op::permission`]).
    #[error("S3 {op} of '{key}' failed: {source}{}", denied_hint(*op, source))]
    Storage {
        /// The request.
        op: S3Op,
        /// Object key.
        key: String,
        /// The store's error (of the last attempt).
        source: StoreError,
        /// What the request may have done to the bucket, over all its attempts.
        outcome: Outcome,
    },
    /// The store did not show the expected state within the verification window; the journal
    /// entry stays pending and recovery finishes it.
    #[error("verification of '{key}' failed: {reason}")]
    Unverified {
        /// Object key.
        key: String,
        /// What was seen.
        reason: String,
    },
    /// Postgres failed.
    #[error("metadata store: {0}")]
    Metadata(#[source] MetaError),
    /// Another executor owns the mount (holds its lease); send the call there, or retry once it
    /// is taken over.
    #[error("mount '{mount}' is owned by executor '{owner}' (lease until {until}); send the call to that host, or retry after a takeover")]
    NotOwner {
        /// Mount name.
        mount: String,
        /// Owner id of the executor holding the lease.
        owner: String,
        /// When its lease runs out unless renewed.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// This executor lost the mount's lease while the call ran; its write was refused (fencing)
    /// and the owner's recovery settles the operation.
    #[error("this executor lost the lease of the mount while the call ran; the write was refused ({0}); retry the call")]
    LeaseLost(#[source] MetaError),
    /// A change feed was asked to resume below the mount's feed horizon: the events up to
    /// `pruned_through` were deleted by the outbox retention. Resynchronise (list the mount),
    /// then follow from `pruned_through`.
    #[error("mount '{mount}': events up to cursor {pruned_through} were pruned by the outbox retention; cannot resume from cursor {cursor} without a gap (resynchronise, then follow from {pruned_through})")]
    FeedExpired {
        /// Mount name.
        mount: String,
        /// The cursor asked for.
        cursor: i64,
        /// Highest pruned cursor.
        pruned_through: i64,
    },
    /// Reading the caller's source failed.
    #[error("reading {what}: {message}")]
    Source {
        /// What was being read.
        what: String,
        /// What went wrong.
        message: String,
        /// The I/O error, when there was one (its `source` chain intact).
        #[source]
        io: Option<std::sync::Arc<std::io::Error>>,
    },
    /// The source of a multipart put changed (or cannot be re-read) since the upload started.
    #[error("source {source_path} changed or cannot be re-read: {reason}; the upload was ended, send the put again")]
    SourceChanged {
        /// The source (file path, or `<stream>`).
        source_path: String,
        /// What differs.
        reason: String,
    },
    /// Downloaded bytes do not match the SHA-256 recorded in `nodes`.
    #[error("mount '{mount}': '{path}' read back with SHA-256 {actual}, but {expected} is recorded; the object changed behind the executor's back or is corrupt")]
    ChecksumMismatch {
        /// Mount name.
        mount: String,
        /// Path.
        path: String,
        /// Recorded SHA-256.
        expected: String,
        /// SHA-256 of the bytes read.
        actual: String,
    },
    /// The operation was recorded as failed earlier.
    #[error("operation failed: {message}")]
    Failed {
        /// Journal id.
        journal_id: i64,
        /// Recorded error.
        message: String,
    },
    /// A condition of the request (create-only, expected generation) does not hold; nothing was
    /// changed.
    #[error("mount '{mount}': condition on '{path}' failed: {reason}")]
    PreconditionFailed {
        /// Mount name.
        mount: String,
        /// Path.
        path: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A move had deleted its source after copying it, but the destination no longer holds
    /// that copy (it was overwritten or deleted behind the executor's back since): the move
    /// cannot be finished, and nothing was committed. The object must be restored from wherever
    /// else it is kept; `nodes` still names the source.
    #[error("mount '{mount}': the move of '{source_mount}':'{source_path}' to '{path}' deleted its source, but the destination no longer holds the copy ({reason}); nothing was committed")]
    MoveCannotFinish {
        /// Destination mount.
        mount: String,
        /// Destination path.
        path: String,
        /// Source mount.
        source_mount: String,
        /// Source path.
        source_path: String,
        /// What the destination holds instead.
        reason: String,
    },
    /// The request is malformed in a way no path or key check covers (a copy onto itself, ...).
    #[error("invalid request: {field} {reason}")]
    InvalidRequest {
        /// The parameter at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store accepted a write but did not apply settings the mount requires (SSE, KMS key,
    /// storage class), under the strict policy; the object was removed again and nothing was
    /// committed.
    #[error("mount '{mount}': the store ignored {} for '{key}'; nothing was committed (set the mount's settings_policy to 'lenient' to accept such stores)", settings.join(", "))]
    SettingsNotApplied {
        /// Mount name.
        mount: String,
        /// Object key.
        key: String,
        /// The settings, as `name: wanted, store reported`.
        settings: Vec<String>,
    },
    /// A call forwarded to the mount's owner (another host of the fleet) failed there with an
    /// error that has no typed form here, or could not be delivered. `kind` is the wire name
    /// of the owner's error (`docs/serve.md`); `retryable` is the owner's judgement, or, for a
    /// call that could not be delivered, whether it may be sent again.
    #[error("{message} (forwarded to {host})")]
    Forwarded {
        /// The owner's operations API.
        host: String,
        /// The error's wire name.
        kind: String,
        /// Its message.
        message: String,
        /// Whether the same call may succeed later.
        retryable: bool,
    },
    /// Configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The executor is shutting down or the mount's actor was restarted while the call waited.
    #[error("executor is shut down or the mount was restarted; retry the call")]
    Shutdown,
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Self {
        if e.fenced {
            Error::LeaseLost(e)
        } else {
            Error::Metadata(e)
        }
    }
}

impl Error {
    /// Whether retrying the same call (with the same idempotency key) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage { source, .. } => source.is_retryable(),
            Error::Metadata(e) => e.retryable,
            Error::Forwarded { retryable, .. } => *retryable,
            Error::InProgress { .. }
            | Error::PathPending { .. }
            | Error::Unverified { .. }
            | Error::Shutdown
            | Error::NotOwner { .. }
            | Error::LeaseLost(_) => true,
            _ => false,
        }
    }

    /// Reading (or writing) the caller's `what` failed with `e`.
    pub fn io(what: impl Into<String>, e: std::io::Error) -> Self {
        Error::Source {
            what: what.into(),
            message: e.to_string(),
            io: Some(std::sync::Arc::new(e)),
        }
    }

    pub(crate) fn invalid_path(path: &str, source: PathError) -> Self {
        Error::InvalidPath {
            path: path.escape_debug().to_string(),
            source,
        }
    }
}

fn denied_hint(op: S3Op, source: &StoreError) -> String {
    if source.kind == crate::ports::StoreErrorKind::AccessDenied {
        format!(
            "; access denied: the mount's credentials need {}",
            op.permission()
        )
    } else {
        String::new()
    }
}
