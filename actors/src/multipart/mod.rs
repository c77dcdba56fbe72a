//! The multipart upload as a unit of its own: it reads a source in order, keeps at most
//! `concurrency` parts in flight, has every accepted part recorded (through a [`PartRecorder`])
//! before freeing its slot, so a crash loses at most the parts in flight, resumes a recorded
//! upload from the parts the store still has, and completes the upload. It depends only on the
//! object-store port and the recorder; verifying and committing the result is the caller's job.
//! It runs in an [`UploadActor`] driven through an [`UploadHandle`] (`join` / `abort` /
//! `progress`). [`copy`] does the same for UploadPartCopy.

mod actor;
pub mod copy;
mod file_part;

pub use actor::{AbortUpload, GetUploadProgress, StopUpload, UploadActor, UploadHandle};

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::model::{UploadProgress, UploadRecord, UploadSource, UploadedPart, WriteMarker};
use crate::mount::{MAX_PART_SIZE_BYTES, MIN_PART_SIZE_BYTES};
use crate::ports::{ChangePublisher, ObjectStore, PartBody, StoreErrorKind};
use crate::retry::{store_call, MountCounters, RetryPolicy};

/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's limit on object size, in bytes (5 TiB).
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Shortest interval between two progress messages on Redis for one upload.
pub const PROGRESS_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// Receives progress updates; called on the executor's thread, so it must be quick.
pub type ProgressSink = Arc<dyn Fn(&UploadProgress) + Send + Sync>;

/// One operation's progress, fanned out to every caller following it: the caller that started
/// it, and callers that joined later with the same idempotency key (a put sent again joins the
/// upload recovery resumed). A late subscriber is told the latest progress at once.
#[derive(Clone, Default)]
pub struct ProgressHub(Arc<Mutex<HubState>>);

#[derive(Default)]
struct HubState {
    latest: Option<UploadProgress>,
    sinks: Vec<ProgressSink>,
}

impl ProgressHub {
    /// Adds a follower; it gets the latest progress now, if there was any.
    pub fn subscribe(&self, sink: ProgressSink) {
        // A sink that panicked must not take the supervisor down with it.
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &s.latest {
            sink(p);
        }
        s.sinks.push(sink);
    }

    /// The sink the operation reports to.
    pub fn sink(&self) -> ProgressSink {
        let hub = self.clone();
        Arc::new(move |p: &UploadProgress| {
            let mut s = hub.0.lock().unwrap_or_else(|e| e.into_inner());
            // Parts finish out of order; a late subscriber starts from the furthest point seen.
            if s.latest.as_ref().is_none_or(|l| {
                (l.bytes_done, l.bytes_sent, l.finished) <= (p.bytes_done, p.bytes_sent, p.finished)
            }) {
                s.latest = Some(p.clone());
            }
            for sink in &s.sinks {
                sink(p);
            }
        })
    }
}

/// A readable source for an upload.
pub type SourceReader = Box<dyn AsyncRead + Send + Unpin>;

/// The part size for an object: the mount's, enlarged (to a whole MiB) so the object needs at most
/// [`MAX_PARTS`] parts.
pub fn part_size_for(mount_part_size: u64, total: Option<u64>) -> Result<u64, Error> {
    let Some(total) = total else {
        return Ok(mount_part_size);
    };
    if total > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge {
            size: total,
            limit: MAX_OBJECT_BYTES,
            what: "an S3 object",
        });
    }
    const MIB: u64 = 1024 * 1024;
    let needed = total.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    Ok(mount_part_size
        .max(needed)
        .clamp(MIN_PART_SIZE_BYTES, MAX_PART_SIZE_BYTES))
}

/// Where a multipart upload records what it did. The engine records through the mount's
/// committer (Postgres); tests can record in memory.
#[async_trait]
pub trait PartRecorder: Send + Sync + 'static {
    /// A new upload was created in the store.
    async fn upload_started(&self, record: UploadRecord) -> Result<(), Error>;
    /// The store accepted a part. The upload waits for this before it frees the part's slot.
    async fn part_done(&self, upload_id: &str, part: UploadedPart) -> Result<(), Error>;
    /// The upload no longer exists in the store (aborted, or found gone).
    async fn upload_ended(&self, upload_id: &str) -> Result<(), Error>;
}

/// What to upload, and how.
pub struct UploadRequest {
    /// Mount name (logs, metrics, progress).
    pub mount: String,
    /// Filestore path (progress).
    pub path: String,
    /// Object key.
    pub key: String,
    /// Journal row the upload belongs to.
    pub journal_id: i64,
    /// Total size, when known.
    pub size: Option<u64>,
    /// Where the bytes come from.
    pub source: UploadSource,
    /// The reader of a [`UploadSource::Stream`] (files are opened by the upload).
    pub reader: Option<SourceReader>,
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata stored with the object.
    pub metadata: crate::model::UserMetadata,
    /// A recorded upload to resume.
    pub resume: Option<UploadRecord>,
    /// The mount's part size (enlarged for huge objects, see [`part_size_for`]).
    pub part_size: u64,
    /// Parts in flight.
    pub concurrency: usize,
    /// Keep the upload open for a resume when a part fails for good.
    pub retain_on_failure: bool,
    /// Receives progress updates.
    pub sink: Option<ProgressSink>,
}

/// What an upload needs from its surroundings.
#[derive(Clone)]
pub struct UploadDeps {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Where parts are recorded.
    pub recorder: Arc<dyn PartRecorder>,
    /// Retry policy of every S3 call.
    pub retry: RetryPolicy,
    /// The mount's counters.
    pub counters: Arc<MountCounters>,
    /// Progress also goes to Redis.
    pub publisher: Arc<dyn ChangePublisher>,
}

/// A completed multipart upload, not yet verified.
#[derive(Debug, Clone)]
pub struct CompletedUpload {
    /// Upload id.
    pub upload_id: String,
    /// The parts, by number.
    pub parts: Vec<UploadedPart>,
    /// Bytes read from the source.
    pub size: u64,
    /// SHA-256 of everything read.
    pub sha256: Sha256Digest,
    /// ETag CompleteMultipartUpload answered (empty when the answer was lost and the object was
    /// found by its marker instead).
    pub etag: String,
}

impl CompletedUpload {
    /// The composite checksum S3 reports for this upload (`base64(sha256(part digests))-N`),
    /// as hex of the inner digest plus the part count; `None` if a part's digest is unknown.
    pub fn composite_sha256(&self) -> Option<(Sha256Digest, usize)> {
        let mut h = Sha256::new();
        for p in &self.parts {
            h.update(p.sha256?.as_bytes());
        }
        Some((Sha256Digest::finish(h), self.parts.len()))
    }
}

/// Progress bookkeeping shared by the part futures of one upload.
pub(crate) struct Tracker {
    state: Arc<Mutex<UploadProgress>>,
    started: Instant,
    last_publish: Mutex<Option<Instant>>,
    sink: Option<ProgressSink>,
    publisher: Arc<dyn ChangePublisher>,
}

impl Tracker {
    fn update(&self, f: impl FnOnce(&mut UploadProgress)) {
        let snapshot = {
            let mut p = self.state.lock().expect("progress lock");
            f(&mut p);
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            p.bytes_per_second = p.bytes_sent as f64 / secs;
            p.eta_seconds = p.bytes_total.and_then(|t| {
                (p.bytes_per_second > 0.0)
                    .then(|| t.saturating_sub(p.bytes_done) as f64 / p.bytes_per_second)
            });
            p.clone()
        };
        if let Some(sink) = &self.sink {
            sink(&snapshot);
        }
        let due = {
            let mut last = self.last_publish.lock().expect("publish lock");
            let due =
                snapshot.finished || last.is_none_or(|t| t.elapsed() >= PROGRESS_PUBLISH_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let publisher = self.publisher.clone();
            actix::spawn(async move {
                if let Err(e) = publisher.publish_progress(&snapshot.mount, &snapshot).await {
                    log::debug!("progress not published: {e}");
                }
            });
        }
    }
}

/// Reads up to `n` bytes (fewer only at the end of the source).
async fn read_part(reader: &mut SourceReader, n: u64, what: &str) -> Result<Bytes, Error> {
    let mut buf = BytesMut::with_capacity(n as usize);
    while (buf.len() as u64) < n {
        let want = (n - buf.len() as u64) as usize;
        let before = buf.len();
        let got = (&mut *reader)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::Source {
                what: what.to_owned(),
                message: e.to_string(),
            })?;
        if got == 0 || buf.len() == before {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn open_source(job: &mut UploadRequest) -> Result<SourceReader, Error> {
    match &job.source {
        UploadSource::File {
            path,
            size,
            mtime_ns,
        } => {
            let (now_size, now_mtime) =
                file_identity(path).await.map_err(|message| Error::Source {
                    what: path.clone(),
                    message,
                })?;
            if now_size != *size || now_mtime != *mtime_ns {
                return Err(Error::SourceChanged {
                    source_path: path.clone(),
                    reason: format!(
                        "size {now_size} / mtime {now_mtime} ns now, {size} / {mtime_ns} ns when the put started"
                    ),
                });
            }
            let f = tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::Source {
                    what: path.clone(),
                    message: e.to_string(),
                })?;
            Ok(Box::new(f))
        }
        UploadSource::Stream => job.reader.take().ok_or_else(|| Error::SourceChanged {
            source_path: "<stream>".into(),
            reason: "a stream can be read only once; the upload cannot be resumed from it".into(),
        }),
    }
}

/// An object body (a stream of chunks) as a [`SourceReader`], for uploads whose bytes come from
/// another object (a streamed copy).
pub fn reader_from_stream(stream: crate::ports::BodyStream) -> SourceReader {
    Box::new(StreamReader {
        stream,
        chunk: Bytes::new(),
    })
}

struct StreamReader {
    stream: crate::ports::BodyStream,
    chunk: Bytes,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                let part = self.chunk.split_to(n);
                buf.put_slice(&part);
                return Poll::Ready(Ok(()));
            }
            match self.stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(b))) => self.chunk = b,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::other(e.to_string())))
                }
            }
        }
    }
}

/// Size and modification time (ns since the epoch) of a file.
pub async fn file_identity(path: &str) -> Result<(u64, i64), String> {
    let md = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let mtime = md
        .modified()
        .map_err(|e| e.to_string())?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Ok((md.len(), mtime))
}

/// Parts a previous run left: those recorded in Postgres that the store still lists, plus listed
/// parts Postgres missed (a crash between UploadPart and the record) when the listing carries the
/// ETag and checksum needed to trust and complete them.
fn reconcile(recorded: &[UploadedPart], listed: &[UploadedPart]) -> BTreeMap<i32, UploadedPart> {
    let listed: BTreeMap<i32, &UploadedPart> = listed.iter().map(|p| (p.part_number, p)).collect();
    let mut done = BTreeMap::new();
    for p in recorded {
        if let Some(l) = listed.get(&p.part_number) {
            let same_etag = match (&l.etag, &p.etag) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if l.size == p.size && same_etag {
                done.insert(p.part_number, p.clone());
            }
        }
    }
    for (n, l) in listed {
        if !done.contains_key(&n) && l.etag.is_some() && l.sha256.is_some() {
            done.insert(n, l.clone());
        }
    }
    done
}

impl UploadDeps {
    async fn call<T, F, Fut>(
        &self,
        mount: &str,
        what: &'static str,
        key: &str,
        op: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::ports::StoreError>>,
    {
        store_call(mount, &self.retry, &self.counters, what, key, op).await
    }
}

/// Runs one upload to completion (CompleteMultipartUpload answered, or the object was found
/// carrying this upload's marker after a lost answer). Used by [`UploadActor`].
pub(crate) async fn run_upload(
    mut job: UploadRequest,
    deps: UploadDeps,
    state: Arc<Mutex<UploadProgress>>,
) -> Result<CompletedUpload, Error> {
    let key = job.key.clone();
    let mount = job.mount.clone();
    let mut reader = open_source(&mut job).await?;
    let part_size = match &job.resume {
        Some(r) => r.part_size,
        None => part_size_for(job.part_size, job.size)?,
    };
    let parts_total = job.size.map(|t| t.div_ceil(part_size).max(1) as u32);
    let marker = WriteMarker {
        journal_id: job.journal_id,
        sha256: None,
    };
    let target = UploadTarget {
        mount: &mount,
        key: &key,
        journal_id: job.journal_id,
        content_type: job.content_type.as_deref(),
        metadata: &job.metadata,
        total_size: job.size,
        part_size,
        marker: &marker,
        part_checksums: true,
    };
    let (upload_id, done) = open_upload(&target, job.resume.take(), &deps).await?;

    {
        let mut p = state.lock().expect("progress lock");
        p.upload_id = upload_id.clone();
        p.parts_total = parts_total;
    }
    let tracker = Arc::new(Tracker {
        state,
        started: Instant::now(),
        last_publish: Mutex::new(None),
        sink: job.sink.clone(),
        publisher: deps.publisher.clone(),
    });
    // Where the upload stands: parts an earlier run recorded count as done from the start (each
    // is still checked against the source as the upload reaches it).
    let (resumed_bytes, resumed_parts) = done
        .values()
        .fold((0, 0), |(bytes, n), p| (bytes + p.size, n + 1));
    tracker.update(|p| {
        p.bytes_done = resumed_bytes;
        p.parts_done = resumed_parts;
    });

    let result = upload_parts(
        &deps,
        &job,
        &mut reader,
        &upload_id,
        part_size,
        done,
        &tracker,
    )
    .await;
    let (parts, size, sha256) = match result {
        Ok(v) => v,
        Err(e @ (Error::LeaseLost(_) | Error::Shutdown)) => {
            // The journal row lives on: its owner (another executor, or this one's restarted
            // supervisor) resumes this very upload, so it must not be aborted here.
            log::warn!(
                "mount {mount}: upload {upload_id} of '{key}' stopped ({e}); left for its owner to resume"
            );
            return Err(e);
        }
        Err(e) => {
            if job.retain_on_failure && e.is_retryable() {
                log::warn!(
                    "mount {mount}: upload {upload_id} of '{key}' failed ({e}); retained for a resume"
                );
            } else {
                log::warn!(
                    "mount {mount}: upload {upload_id} of '{key}' failed ({e}); aborting it"
                );
                abort_upload(&deps, &mount, &key, &upload_id).await;
            }
            return Err(e);
        }
    };
    if let Some(expected) = job.size {
        if size != expected {
            log::warn!("mount {mount}: upload {upload_id} of '{key}' read {size} bytes, {expected} expected; aborting it");
            abort_upload(&deps, &mount, &key, &upload_id).await;
            return Err(Error::SourceChanged {
                source_path: source_name(&job.source),
                reason: format!("read {size} bytes, expected {expected}"),
            });
        }
    }
    let etag = complete(
        &deps,
        &mount,
        &key,
        &upload_id,
        &parts,
        job.journal_id,
        size,
    )
    .await?;
    tracker.update(|p| p.finished = true);
    Ok(CompletedUpload {
        upload_id,
        parts,
        size,
        sha256,
        etag,
    })
}

/// Where a multipart upload goes.
pub(crate) struct UploadTarget<'a> {
    pub mount: &'a str,
    pub key: &'a str,
    pub journal_id: i64,
    pub content_type: Option<&'a str>,
    pub metadata: &'a crate::model::UserMetadata,
    pub total_size: Option<u64>,
    pub part_size: u64,
    pub marker: &'a WriteMarker,
    /// Whether parts carry SHA-256 checksums (false for part copies).
    pub part_checksums: bool,
}

/// Resumes the recorded upload when the store still has it; otherwise starts a new one.
pub(crate) async fn open_upload(
    t: &UploadTarget<'_>,
    resume: Option<UploadRecord>,
    deps: &UploadDeps,
) -> Result<(String, BTreeMap<i32, UploadedPart>), Error> {
    let (mount, key) = (t.mount, t.key);
    if let Some(rec) = resume {
        match deps
            .call(mount, "ListParts", key, || {
                deps.store.list_parts(key, &rec.upload_id)
            })
            .await
        {
            Ok(listed) => {
                let done = reconcile(&rec.parts, &listed);
                for p in done.values() {
                    if !rec.parts.iter().any(|r| r.part_number == p.part_number) {
                        deps.recorder.part_done(&rec.upload_id, p.clone()).await?;
                    }
                }
                log::info!(
                    "mount {mount}: resuming upload {} of '{key}' with {} of its parts done",
                    rec.upload_id,
                    done.len()
                );
                return Ok((rec.upload_id, done));
            }
            Err(Error::Storage { source, .. }) if source.kind == StoreErrorKind::NotFound => {
                log::warn!(
                    "mount {mount}: upload {} of '{key}' is gone from the store; starting a new one",
                    rec.upload_id
                );
                let _ = deps.recorder.upload_ended(&rec.upload_id).await;
            }
            Err(Error::Storage { source, .. }) if !source.is_retryable() => {
                // Some stores cannot list parts (moto's ListParts answer does not parse, s3s-fs
                // omits ETags): resume from what Postgres recorded; Complete is the final check.
                log::warn!(
                    "mount {mount}: ListParts of upload {} failed ({source}); resuming from the {} parts recorded in Postgres",
                    rec.upload_id,
                    rec.parts.len()
                );
                let done = rec
                    .parts
                    .iter()
                    .map(|p| (p.part_number, p.clone()))
                    .collect();
                return Ok((rec.upload_id, done));
            }
            Err(e) => return Err(e),
        }
    }
    let id = deps
        .call(mount, "CreateMultipartUpload", key, || {
            deps.store
                .create_multipart(key, t.content_type, t.marker, t.metadata, t.part_checksums)
        })
        .await?;
    deps.recorder
        .upload_started(UploadRecord {
            upload_id: id.clone(),
            journal_id: t.journal_id,
            mount: mount.to_owned(),
            key: key.to_owned(),
            part_size: t.part_size,
            total_size: t.total_size,
            parts: Vec::new(),
        })
        .await?;
    Ok((id, BTreeMap::new()))
}

/// CompleteMultipartUpload. Complete is not idempotent: when a retry (or a run after a crash)
/// fails for good — NoSuchUpload on S3, AccessDenied on stores that forget a completed upload id —
/// the first attempt may have completed the upload with its answer lost. Its outcome is checked
/// before anything else: the object is accepted if it carries this operation's journal id and the
/// expected size; otherwise the error stands (and the bytes are not sent again blindly).
pub(crate) async fn complete(
    deps: &UploadDeps,
    mount: &str,
    key: &str,
    upload_id: &str,
    parts: &[UploadedPart],
    journal_id: i64,
    size: u64,
) -> Result<String, Error> {
    let res = deps
        .call(mount, "CompleteMultipartUpload", key, || {
            deps.store.complete_multipart(key, upload_id, parts)
        })
        .await;
    match res {
        Ok(etag) => Ok(etag),
        Err(Error::Storage { source, .. }) if !source.is_retryable() => {
            let seen = deps
                .call(mount, "HEAD", key, || deps.store.head_object(key))
                .await?;
            match seen {
                Some(m)
                    if m.size == size
                        && m.marker
                            .as_ref()
                            .is_some_and(|w| w.journal_id == journal_id) =>
                {
                    log::info!(
                        "mount {mount}: upload {upload_id} of '{key}' was already completed (answer lost); the object carries journal {journal_id}"
                    );
                    Ok(String::new())
                }
                other if source.kind != StoreErrorKind::NotFound => {
                    log::warn!(
                        "mount {mount}: CompleteMultipartUpload of '{key}' failed ({source}) and the object is not this upload's ({})",
                        other.map_or("no object".into(), |m| format!("{} bytes", m.size))
                    );
                    Err(Error::Storage {
                        op: "CompleteMultipartUpload",
                        key: key.to_owned(),
                        source,
                    })
                }
                other => Err(Error::Storage {
                    op: "CompleteMultipartUpload",
                    key: key.to_owned(),
                    source: crate::ports::StoreError::new(
                        StoreErrorKind::NotFound,
                        format!(
                            "upload {upload_id} is gone and the object is not this upload's ({})",
                            match other {
                                None => "no object".to_string(),
                                Some(m) => format!(
                                    "{} bytes, written by journal {:?}",
                                    m.size,
                                    m.marker.map(|w| w.journal_id)
                                ),
                            }
                        ),
                    ),
                }),
            }
        }
        Err(e) => Err(e),
    }
}

fn source_name(s: &UploadSource) -> String {
    match s {
        UploadSource::File { path, .. } => path.clone(),
        UploadSource::Stream => "<stream>".into(),
    }
}

/// Aborts an upload in the store and records that it ended; a failure is logged (the orphan
/// sweep retries it).
pub async fn abort_upload(deps: &UploadDeps, mount: &str, key: &str, upload_id: &str) {
    match deps
        .call(mount, "AbortMultipartUpload", key, || deps.store.abort_multipart(key, upload_id))
        .await
    {
        Ok(()) => {
            log::info!("mount {mount}: upload {upload_id} of '{key}' aborted");
            if let Err(e) = deps.recorder.upload_ended(upload_id).await {
                log::warn!("mount {mount}: upload {upload_id} aborted but not marked: {e}");
            }
        }
        Err(e) => log::error!(
            "mount {mount}: could not abort upload {upload_id} of '{key}': {e}; the orphan sweep retries"
        ),
    }
}

/// Reads and uploads every part; returns the parts, the size and the SHA-256 of the whole object.
async fn upload_parts(
    deps: &UploadDeps,
    job: &UploadRequest,
    reader: &mut SourceReader,
    upload_id: &str,
    part_size: u64,
    mut done: BTreeMap<i32, UploadedPart>,
    tracker: &Arc<Tracker>,
) -> Result<(Vec<UploadedPart>, u64, Sha256Digest), Error> {
    let concurrency = job.concurrency.max(1);
    let what = source_name(&job.source);
    let file = match &job.source {
        UploadSource::File { path, .. } => Some(std::path::PathBuf::from(path)),
        UploadSource::Stream => None,
    };
    let mut hasher = Some(Sha256::new());
    let mut buffers = file_part::HashBuffers::new();
    let mut in_flight = FuturesUnordered::new();
    let mut size = 0u64;
    let mut part_number = 0i32;
    loop {
        // Wait for a free slot before reading: memory stays at part size × parts in flight.
        while in_flight.len() >= concurrency {
            let part: UploadedPart = in_flight.next().await.expect("non-empty")?;
            done.insert(part.part_number, part);
        }
        // The next part is read and hashed while the parts in flight keep uploading: they are
        // polled meanwhile, and the hashing runs on a blocking thread, not on the actor's. A
        // file's part is hashed from the file and later sent from it (no part-sized buffer); a
        // stream's is read into a buffer.
        let offset = size;
        let (buf, h, part_sha) = {
            let next = async {
                let mut h = hasher
                    .take()
                    .expect("the hasher is put back after each part");
                let joined = |e: tokio::task::JoinError| Error::Source {
                    what: what.clone(),
                    message: format!("hashing a part: {e}"),
                };
                if let Some(path) = &file {
                    let p = path.clone();
                    let mut pool = std::mem::take(&mut buffers);
                    // Asked before each part: once a part's answer showed that the store
                    // verifies and echoes the checksums, the MD5 is left out.
                    let want_md5 = deps.store.wants_part_md5();
                    let (h, pool, hashed) = tokio::task::spawn_blocking(move || {
                        let r = file_part::hash_range(
                            &p, offset, part_size, &mut h, &mut pool, want_md5,
                        );
                        (h, pool, r)
                    })
                    .await
                    .map_err(joined)?;
                    buffers = pool;
                    let r = hashed.map_err(|e| Error::Source {
                        what: what.clone(),
                        message: e.to_string(),
                    })?;
                    let body = PartBody::File {
                        path: path.clone(),
                        offset,
                        len: r.len,
                        md5: r.md5,
                    };
                    return Ok::<_, Error>((body, h, r.sha256));
                }
                let buf = read_part(reader, part_size, &what).await?;
                // The whole object's SHA-256 and the part's over the same buffer, on two threads.
                let (buf, h, part_sha) = tokio::task::spawn_blocking(move || {
                    let part_sha = std::thread::scope(|s| {
                        let part = s.spawn(|| Sha256Digest::of(&buf));
                        h.update(&buf);
                        part.join()
                    });
                    (buf, h, part_sha)
                })
                .await
                .map_err(joined)?;
                let part_sha = part_sha.map_err(|_| Error::Source {
                    what: what.clone(),
                    message: "hashing a part: the hashing thread panicked".into(),
                })?;
                Ok::<_, Error>((PartBody::Bytes(buf), h, part_sha))
            };
            tokio::pin!(next);
            loop {
                tokio::select! {
                    read = &mut next => break read?,
                    Some(part) = in_flight.next(), if !in_flight.is_empty() => {
                        let part: UploadedPart = part?;
                        done.insert(part.part_number, part);
                    }
                }
            }
        };
        hasher = Some(h);
        if buf.is_empty() && part_number > 0 {
            break;
        }
        part_number += 1;
        if part_number as u64 > MAX_PARTS {
            return Err(Error::TooLarge {
                size: size + buf.len(),
                limit: MAX_PARTS * part_size,
                what: "an upload of unknown size at this part size",
            });
        }
        let last = buf.len() < part_size;
        size += buf.len();
        if let Some(prev) = done.get(&part_number) {
            let same = prev.size == buf.len() && prev.sha256.is_none_or(|s| s == part_sha);
            if !same {
                return Err(Error::SourceChanged {
                    source_path: what.clone(),
                    reason: format!("part {part_number} differs from the part uploaded before"),
                });
            }
            // Counted as done when the upload started.
            deps.counters.parts_resumed.fetch_add(1, Ordering::Relaxed);
        } else {
            in_flight.push(upload_one(
                deps.clone(),
                job.mount.clone(),
                job.key.clone(),
                upload_id.to_owned(),
                part_number,
                buf,
                part_sha,
                tracker.clone(),
            ));
        }
        if last {
            break;
        }
    }
    while let Some(part) = in_flight.next().await {
        let part = part?;
        done.insert(part.part_number, part);
    }
    Ok((
        done.into_values().collect(),
        size,
        Sha256Digest::finish(hasher.expect("the hasher is put back after each part")),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn upload_one(
    deps: UploadDeps,
    mount: String,
    key: String,
    upload_id: String,
    part_number: i32,
    body: PartBody,
    sha256: Sha256Digest,
    tracker: Arc<Tracker>,
) -> Result<UploadedPart, Error> {
    let n = body.len();
    let started = Instant::now();
    let counters = deps.counters.clone();
    let part = deps
        .retry
        .run_scaled(
            || {
                counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
                tracker.update(|p| p.bytes_sent += n);
                let call =
                    deps.store
                        .upload_part(&key, &upload_id, part_number, body.clone(), sha256);
                let counters = counters.clone();
                async move {
                    let r = call.await;
                    if r.is_ok() {
                        counters.call_succeeded();
                    }
                    r
                }
            },
            |e| e.is_retryable() && crate::retry::budget_allows(&mount, &deps.retry, &counters, e),
            crate::retry::backoff_scale,
            |e, d| {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("filestore_s3_retries_total", "mount" => mount.clone(), "op" => "UploadPart").increment(1);
                log::warn!("mount {mount}: part {part_number} of '{key}' failed ({e}); retry in {d:?}");
            },
        )
        .await
        .map_err(|source| Error::Storage {
            op: "UploadPart",
            key: key.clone(),
            source,
        })?;
    metrics::histogram!("filestore_s3_part_upload_seconds", "mount" => mount.clone())
        .record(started.elapsed().as_secs_f64());
    // The slot is freed only once the part is recorded: a crash loses at most the parts in flight.
    deps.recorder.part_done(&upload_id, part.clone()).await?;
    counters.parts_uploaded.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("filestore_s3_upload_bytes_total", "mount" => mount.clone()).increment(n);
    metrics::counter!("filestore_s3_upload_parts_total", "mount" => mount).increment(1);
    tracker.update(|p| {
        p.bytes_done += n;
        p.parts_done += 1;
    });
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn part_size_grows_to_stay_within_10000_parts() {
        assert_eq!(part_size_for(16 * MIB, Some(100 * MIB)).unwrap(), 16 * MIB);
        assert_eq!(part_size_for(16 * MIB, None).unwrap(), 16 * MIB);
        let total = 1024 * 1024 * MIB; // 1 TiB
        let p = part_size_for(16 * MIB, Some(total)).unwrap();
        assert!(total.div_ceil(p) <= MAX_PARTS, "{p}");
        assert_eq!(p % MIB, 0);
        let max = part_size_for(5 * MIB, Some(MAX_OBJECT_BYTES)).unwrap();
        assert!(MAX_OBJECT_BYTES.div_ceil(max) <= MAX_PARTS);
        assert!(part_size_for(5 * MIB, Some(MAX_OBJECT_BYTES + 1)).is_err());
    }

    fn part(n: i32, etag: Option<&str>, sha: Option<&str>) -> UploadedPart {
        UploadedPart {
            part_number: n,
            etag: etag.map(Into::into),
            size: 10,
            sha256: sha.map(|s| Sha256Digest::of(s.as_bytes())),
        }
    }

    #[test]
    fn reconcile_trusts_recorded_parts_the_store_still_has() {
        let recorded = vec![
            part(1, Some("a"), Some("s1")),
            part(2, Some("b"), Some("s2")),
        ];
        // s3s-fs lists parts without ETags.
        let listed = vec![part(1, None, None), part(3, None, None)];
        let done = reconcile(&recorded, &listed);
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![1]);
        // A listing with ETag and checksum lets a part Postgres missed be adopted.
        let listed = vec![
            part(1, Some("a"), None),
            part(2, Some("b"), None),
            part(3, Some("c"), Some("s3")),
        ];
        let done = reconcile(&recorded, &listed);
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        // An ETag that changed means another part was uploaded under that number.
        let listed = vec![part(1, Some("zz"), None)];
        assert!(reconcile(&recorded, &listed).is_empty());
    }
}
