//! Ports: the small async traits the actors call. The root crate implements them on aws-sdk-s3,
//! tokio-postgres and redis-rs; [`crate::testing`] has in-memory fakes for actor tests.

use std::sync::Arc;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::digest::Sha256Digest;
pub use crate::model::UploadedPart;
use crate::model::{
    CommitRecord, IntentOutcome, JournalEntry, NewIntent, Node, ObjectMeta, OpProgress, OpResult,
    OutboxRow, RawListing, WriteMarker,
};
use crate::model::{Fence, LeaseState, UploadProgress, UploadRecord};
use crate::mount::{MountRow, MountSpec};

pub use crate::store_error::{StoreError, StoreErrorKind};

/// A Postgres failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MetaError {
    /// Whether a retry may succeed (connection lost, serialization failure, ...).
    pub retryable: bool,
    /// The write was refused because the writer no longer holds the mount's lease (fencing).
    pub fenced: bool,
    /// Detail.
    pub message: String,
    /// The driver's error it came from, when there is one (its `source` chain intact).
    #[source]
    pub cause: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// A Redis failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// Whether a retry may succeed (Redis restarting, a failover, a lost connection). Events stay
    /// in the outbox either way; a permanent failure (authentication, permissions, the stream key
    /// holding another type) needs an operator and is retried at the slowest pace.
    pub retryable: bool,
    /// Detail.
    pub message: String,
}

/// A single-request upload.
#[derive(Debug, Clone)]
pub struct PutObjectInput {
    /// Object key.
    pub key: String,
    /// The whole body.
    pub body: Bytes,
    /// SHA-256 of the body; sent as a checksum when the mount's policy says so.
    pub sha256: Sha256Digest,
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata identifying the write.
    pub marker: WriteMarker,
    /// The caller's user metadata (sent beside the marker).
    pub metadata: crate::model::UserMetadata,
    /// Create only (`If-None-Match: *`).
    pub if_none_match: bool,
    /// Overwrite only the object with this ETag (`If-Match`), where the store honours it.
    pub if_match: Option<String>,
}

/// What a write's key must hold for the store to apply it (compare-and-swap against the node):
/// nothing (`If-None-Match: *`), or the object with this ETag (`If-Match`). Sent only where the
/// mount's store was probed to honour it. The default: no condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCondition {
    /// Create only.
    pub if_none_match: bool,
    /// Replace only the object with this ETag.
    pub if_match: Option<String>,
}

impl KeyCondition {
    /// Whether the request carries a condition.
    pub fn is_some(&self) -> bool {
        self.if_none_match || self.if_match.is_some()
    }
}

/// A server-side copy of a whole object (CopyObject, metadata replaced with the destination's).
#[derive(Debug, Clone)]
pub struct CopyObjectInput {
    /// Bucket of the source.
    pub source_bucket: String,
    /// Key of the source.
    pub source_key: String,
    /// Copy only if the source still has this ETag.
    pub source_etag: String,
    /// The pinned source's size (the answer does not carry one; it is reported as the copy's).
    pub size: u64,
    /// Destination key (in this store's bucket).
    pub key: String,
    /// User metadata identifying the write.
    pub marker: WriteMarker,
    /// The caller's user metadata (the source's, carried to the copy).
    pub metadata: crate::model::UserMetadata,
}

/// One part of a multipart copy (UploadPartCopy).
#[derive(Debug, Clone)]
pub struct PartCopyInput {
    /// Bucket of the source.
    pub source_bucket: String,
    /// Key of the source.
    pub source_key: String,
    /// Copy only if the source still has this ETag.
    pub source_etag: String,
    /// Bytes of the source this part copies.
    pub range: ByteRange,
    /// Destination key.
    pub key: String,
    /// Upload id.
    pub upload_id: String,
    /// 1-based part number.
    pub part_number: i32,
}

/// A byte range of an object: `start..=end`, or `start..` when `end` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: Option<u64>,
}

/// A streaming object body.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// An object being read.
pub struct ObjectBody {
    /// Metadata of the object (size is the whole object's).
    pub meta: ObjectMeta,
    /// Length of the returned body (the range's length for ranged reads).
    pub content_length: u64,
    /// The body.
    pub stream: BodyStream,
}

/// The body of one part of a multipart upload.
#[derive(Debug, Clone)]
pub enum PartBody {
    /// Bytes in memory (parts of a stream, of a copy through the executor).
    Bytes(Bytes),
    /// A range of a file, read while it is sent: no part-sized buffer. Hashed before it is sent
    /// (the store checks the SHA-256); `md5` is the range's MD5, for stores that neither verify
    /// nor echo the checksum, whose ETag of a part is its MD5.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Where the part starts.
        offset: u64,
        /// Bytes in the part.
        len: u64,
        /// MD5 of those bytes, when it was computed with the part's SHA-256 (the store asked for
        /// it: [`ObjectStore::wants_part_md5`]); `None` otherwise, and the store reads the range
        /// again to compute it if it does need it after all.
        md5: Option<[u8; 16]>,
    },
}

impl PartBody {
    /// Bytes in the part.
    pub fn len(&self) -> u64 {
        match self {
            PartBody::Bytes(b) => b.len() as u64,
            PartBody::File { len, .. } => *len,
        }
    }

    /// Whether the part is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part's bytes, read from the file if need be (for stores kept in memory, in tests).
    pub fn to_bytes(&self) -> std::io::Result<Bytes> {
        match self {
            PartBody::Bytes(b) => Ok(b.clone()),
            PartBody::File {
                path, offset, len, ..
            } => {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(path)?;
                f.seek(SeekFrom::Start(*offset))?;
                let mut v = Vec::with_capacity(*len as usize);
                f.take(*len).read_to_end(&mut v)?;
                if v.len() as u64 != *len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} bytes of the part read, {len} expected", v.len()),
                    ));
                }
                Ok(Bytes::from(v))
            }
        }
    }
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
    /// DELETE an object only while it has this ETag (`If-Match`): `PreconditionFailed` when it
    /// has another, `NotFound` when there is none (on stores that honour the condition; the
    /// mount's probe says which do). The default is for stores that cannot send it.
    async fn delete_object_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        let _ = (key, etag);
        Err(StoreError::new(
            StoreErrorKind::Config,
            "conditional DELETE (If-Match) is not implemented by this store adapter",
        ))
    }
    /// Deletes up to 1,000 objects in one request (S3 DeleteObjects); one answer per key, in
    /// order (a key already gone is deleted). `Err` when the request as a whole failed. The
    /// default deletes them one by one, for stores without a multi-object delete.
    async fn delete_objects(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.delete_object(key).await);
        }
        Ok(out)
    }
    /// One page of ListObjectsV2.
    async fn list_objects(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> Result<RawListing, StoreError>;
    /// GET an object (or a range), optionally only if its ETag is `if_match`.
    async fn get_object(
        &self,
        key: &str,
        range: Option<ByteRange>,
        if_match: Option<&str>,
    ) -> Result<ObjectBody, StoreError>;
    /// CreateMultipartUpload with the mount's SSE / ACL / storage class and the write marker;
    /// returns the upload id. `part_checksums`: the parts will carry SHA-256 checksums (when the
    /// mount's policy sends them); false for part copies, whose bytes the executor never sees.
    async fn create_multipart(
        &self,
        key: &str,
        content_type: Option<&str>,
        marker: &WriteMarker,
        metadata: &crate::model::UserMetadata,
        part_checksums: bool,
    ) -> Result<String, StoreError>;
    /// Whether the next parts' MD5 will be needed to check the ETags the store answers
    /// [`ObjectStore::upload_part`] with, so a file's part should compute it in the same pass as
    /// its SHA-256. A store that verifies and echoes the parts' checksums says no once it has
    /// shown that it does (the MD5 was the costliest of the part's hashes). The default: yes.
    fn wants_part_md5(&self) -> bool {
        true
    }
    /// UploadPart, with the part's SHA-256 as checksum when the mount's policy says so.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
        sha256: Sha256Digest,
    ) -> Result<UploadedPart, StoreError>;
    /// CopyObject from a bucket the same client can read, with the mount's write options. The
    /// answer as an [`ObjectMeta`]: ETag, Last-Modified, SSE, the SHA-256 the store computed of
    /// the copy when it reports one; size, storage class and metadata are the ones asked for.
    async fn copy_object(&self, input: CopyObjectInput) -> Result<ObjectMeta, StoreError>;
    /// UploadPartCopy.
    async fn upload_part_copy(&self, input: PartCopyInput) -> Result<UploadedPart, StoreError>;
    /// ListParts (all pages).
    async fn list_parts(&self, key: &str, upload_id: &str)
        -> Result<Vec<UploadedPart>, StoreError>;
    /// CompleteMultipartUpload with `parts` sorted by number, under `condition` (412
    /// `PreconditionFailed` when the key does not hold what it names; the upload stays open);
    /// returns the object's ETag.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        condition: &KeyCondition,
    ) -> Result<String, StoreError>;
    /// AbortMultipartUpload (succeeds when the upload is already gone).
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;
    /// The open multipart uploads at exactly `key` (ListMultipartUploads, first 1,000). The
    /// default is for stores that cannot list them: `Config`.
    async fn open_uploads(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let _ = key;
        Err(StoreError::new(
            StoreErrorKind::Config,
            "listing multipart uploads is not implemented by this store adapter",
        ))
    }
}

/// Builds the object store of a mount.
pub trait ObjectStoreFactory: Send + Sync + 'static {
    /// The store for `spec`.
    fn for_mount(&self, spec: &MountSpec) -> Result<Arc<dyn ObjectStore>, StoreError>;
}

/// One write of a mount's committer; [`MetaStore::apply`] applies several in one go.
#[derive(Debug, Clone)]
pub enum MetaWrite {
    /// Records an intent (journal row `pending`), or reports the existing row for the key. A
    /// failed row with the same fingerprint is re-armed to `pending` (attempts + 1) and reported
    /// as started; a row this call wrote before (same token, answer lost) is reported as started.
    Begin(NewIntent),
    /// In one transaction: node upsert / delete with the next generation, a snapshot row, the
    /// journal row marked committed with its result, and the outbox event(s). A move also
    /// removes its source's node (with a snapshot). A commit whose `condition` no longer holds is
    /// refused and writes nothing; one of a row already committed answers its recorded result.
    Commit(CommitRecord),
    /// Marks a pending journal row failed.
    Fail {
        /// Journal row.
        journal_id: i64,
        /// Error text stored in the row.
        error: String,
    },
    /// Records how far a pending copy / move got.
    Progress {
        /// Journal row.
        journal_id: i64,
        /// The step reached.
        progress: OpProgress,
    },
    /// Records a started multipart upload (state `open`) for a journal row, replacing an older
    /// record of the same row.
    Upload(UploadRecord),
    /// Records completed parts (idempotent per part number).
    Parts {
        /// Upload id.
        upload_id: String,
        /// The parts.
        parts: Vec<UploadedPart>,
    },
}

impl MetaWrite {
    /// What the write is, for logs.
    pub fn what(&self) -> &'static str {
        match self {
            MetaWrite::Begin(_) => "recording intent",
            MetaWrite::Commit(_) => "commit",
            MetaWrite::Fail { .. } => "marking failed",
            MetaWrite::Progress { .. } => "recording progress",
            MetaWrite::Upload(_) => "recording upload",
            MetaWrite::Parts { .. } => "recording parts",
        }
    }
}

/// What one [`MetaWrite`] returned.
#[derive(Debug, Clone)]
pub enum MetaOutput {
    /// Of [`MetaWrite::Begin`].
    Begun(IntentOutcome),
    /// Of [`MetaWrite::Commit`].
    Committed(Box<OpResult>),
    /// Of the other writes.
    Done,
}

/// Of [`MetaStore::apply`]: the outcome of each write tried, in order.
pub type BatchResult = Result<Vec<Result<MetaOutput, MetaError>>, MetaError>;

/// Postgres: mounts, journal, nodes, snapshots, outbox, mount leases.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// A view of this store whose writes of journal / nodes / snapshots / outbox / multipart
    /// records succeed only while `fence` still holds the mount's lease (checked inside each write
    /// transaction); a write after the lease was lost fails with `MetaError { fenced: true }`.
    fn with_fence(&self, fence: Fence) -> Arc<dyn MetaStore>;
    /// Takes the mount's lease for `owner` if it is free, expired, or already `owner`'s (each
    /// acquisition starts a new epoch), or reports who holds it.
    async fn acquire_lease(
        &self,
        mount: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseState, MetaError>;
    /// Extends the lease; `false` when `fence` no longer holds it.
    async fn renew_lease(&self, fence: &Fence, ttl: std::time::Duration)
        -> Result<bool, MetaError>;
    /// Gives the lease up (it expires now), if `fence` still holds it.
    async fn release_lease(&self, fence: &Fence) -> Result<(), MetaError>;
    /// Whether this view's writer (its fence's owner) holds `mount`'s lease now: `Owned` with
    /// that lease, or `HeldBy` whoever does (an empty owner when nobody does). An unfenced view
    /// answers `None`: its writes need no lease.
    async fn lease_for_writer(&self, mount: &str) -> Result<Option<LeaseState>, MetaError>;
    /// All `backend_mounts` rows.
    async fn load_mounts(&self) -> Result<Vec<MountRow>, MetaError>;
    /// The journal row of an idempotency key, if any.
    async fn entry(
        &self,
        mount: &str,
        idempotency_key: &str,
    ) -> Result<Option<JournalEntry>, MetaError>;
    /// Pending journal rows of a mount, oldest first.
    async fn pending(&self, mount: &str) -> Result<Vec<JournalEntry>, MetaError>;
    /// Pending journal rows, of any mount, that write one of `paths` ((mount, path)) or copy or
    /// move from one of them, oldest first.
    async fn pending_on(&self, paths: &[(String, String)]) -> Result<Vec<JournalEntry>, MetaError>;
    /// The node at a path.
    async fn node(&self, mount: &str, path: &str) -> Result<Option<Node>, MetaError>;
    /// The first row recorded after `journal_id` that committed a change of `mount`'s `path`
    /// (written there, or moved away from there), if any.
    async fn committed_after(
        &self,
        mount: &str,
        path: &str,
        journal_id: i64,
    ) -> Result<Option<i64>, MetaError>;
    /// Unpublished outbox rows of a mount with an id above `after`, in commit order (a mount's
    /// outbox ids are handed out in the order their transactions commit, so a relay that has
    /// published every row up to an id can ask for the rows after it alone). A row this version
    /// cannot read is returned as [`OutboxRow::Unreadable`], not as an error.
    async fn unpublished(
        &self,
        mount: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, MetaError>;
    /// Marks outbox rows published.
    async fn mark_published(&self, ids: &[i64]) -> Result<(), MetaError>;
    /// The open upload of a journal row, with its recorded parts.
    async fn upload_of(&self, journal_id: i64) -> Result<Option<UploadRecord>, MetaError>;
    /// Marks an upload `aborted` (it no longer exists in the bucket).
    async fn mark_upload_aborted(&self, upload_id: &str) -> Result<(), MetaError>;
    /// Every upload id recorded for `mount`'s `key`, in any state.
    async fn recorded_uploads(&self, mount: &str, key: &str) -> Result<Vec<String>, MetaError>;
    /// Open uploads of a mount whose journal row is no longer pending, last touched before
    /// `older_than`: the executor started them and nothing will finish them.
    async fn orphaned_uploads(
        &self,
        mount: &str,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<UploadRecord>, MetaError>;
    /// Applies `writes` in order (group commit). Each write is atomic on its own: one refused for
    /// good (a broken condition, a row no longer pending) has its error in its slot and changes
    /// nothing, and the others stand. `Ok(outcomes)` with fewer outcomes than writes: the first
    /// ones were applied, the rest were not tried (a retryable failure stopped the batch) and may
    /// be sent again. `Err`: none was applied (a retryable failure of the whole transaction, or
    /// the lease fence). Every write is idempotent, so a batch may be sent again as a whole.
    ///
    /// This is the only way the executor writes the journal, nodes, snapshots, outbox and
    /// multipart records (`mark_upload_aborted` aside).
    async fn apply(&self, writes: &[MetaWrite]) -> BatchResult;
    /// Records what the mount's probe found its store to honour (shown by `mount list`).
    async fn record_conditions(
        &self,
        mount: &str,
        conditions: &crate::model::StoreConditions,
    ) -> Result<(), MetaError>;
    /// What the mount's last probe found, if it ran.
    async fn conditions(
        &self,
        mount: &str,
    ) -> Result<Option<crate::model::StoreConditions>, MetaError>;
    /// Deletes `mount`'s outbox rows published longer than `retention` ago (a change feed can no
    /// longer resume before them); returns how many.
    async fn prune_outbox(
        &self,
        mount: &str,
        retention: std::time::Duration,
    ) -> Result<u64, MetaError>;
}

/// Redis: change notifications.
#[async_trait]
pub trait ChangePublisher: Send + Sync + 'static {
    /// Publishes outbox rows of one mount, in order; an unreadable row's payload as stored.
    async fn publish(&self, mount: &str, rows: &[OutboxRow]) -> Result<(), PublishError>;
    /// Publishes an upload's progress (best effort, throttled by the caller).
    async fn publish_progress(
        &self,
        mount: &str,
        progress: &UploadProgress,
    ) -> Result<(), PublishError>;
}

/// Whether this executor may take a mount's lease now: the fleet's share of mounts per host
/// (see the host crate's `fleet`). A supervisor asks before each look at a lease it does not hold
/// and reports what it holds; without a gate it takes any lease that is free.
pub trait LeaseGate: Send + Sync + 'static {
    /// `Ok` reserves one of this executor's places for `mount` for the supervisor `who` (kept
    /// until `holds(mount, who, false)`); `Err` names the holder as last seen (owner, lease end)
    /// when there is one. `who` tells apart two supervisors of one mount (one retiring, its
    /// successor starting).
    fn may_take(&self, mount: &str, who: u64) -> Result<(), GateRefusal>;
    /// The supervisor `who` of `mount` holds its lease (`true`) or does not (`false`: refused,
    /// lost, released, restarted); a `false` of another supervisor than the one holding the place
    /// changes nothing.
    fn holds(&self, mount: &str, who: u64, held: bool);
}

/// Why a [`LeaseGate`] keeps a supervisor from looking at a free lease.
#[derive(Debug, Clone)]
pub struct GateRefusal {
    /// The holder as last seen, if any: owner id and lease end.
    pub holder: Option<(String, chrono::DateTime<chrono::Utc>)>,
}
