//! The upload actor: one per large object. It owns the multipart state (upload id, parts done,
//! progress), reads the source in order, keeps at most `part_concurrency` parts in flight, records
//! every accepted part in Postgres before freeing its slot (so a crash loses at most the parts in
//! flight), and completes and verifies the upload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::messages::{RecordPart, RecordUpload};
use crate::model::{NodeMeta, ObjectMeta, UploadProgress, UploadRecord, UploadSource};
use crate::mount::{MAX_PART_SIZE_BYTES, MIN_PART_SIZE_BYTES};
use crate::operation::OpContext;
use crate::ports::{ChangePublisher, StoreErrorKind, UploadedPart};

/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's limit on object size, in bytes (5 TiB).
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Shortest interval between two progress messages on Redis for one upload.
pub const PROGRESS_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// Receives progress updates; called on the executor's thread, so it must be quick.
pub type ProgressSink = Arc<dyn Fn(&UploadProgress) + Send + Sync>;

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

/// Counters of one mount's uploads (kept across supervisor restarts).
#[derive(Debug, Default)]
pub struct UploadCounters {
    /// Bytes sent in UploadPart requests, retries included.
    pub bytes_sent: AtomicU64,
    /// Parts accepted by the store.
    pub parts_uploaded: AtomicU64,
    /// Parts skipped because a previous run had uploaded them.
    pub parts_resumed: AtomicU64,
    /// Retried S3 / Postgres calls.
    pub retries: AtomicU64,
}

/// What a finished upload gives the operation.
#[derive(Debug, Clone)]
pub(crate) struct UploadOutcome {
    pub node: NodeMeta,
    pub upload_id: String,
}

/// Everything an upload needs.
pub(crate) struct UploadJob {
    pub c: OpContext,
    pub journal_id: i64,
    pub path: String,
    pub key: String,
    pub size: Option<u64>,
    pub source: UploadSource,
    pub reader: Option<SourceReader>,
    pub content_type: Option<String>,
    pub resume: Option<UploadRecord>,
    pub sink: Option<ProgressSink>,
    pub publisher: Arc<dyn ChangePublisher>,
    pub counters: Arc<UploadCounters>,
}

/// Ask an upload actor for its progress.
#[derive(Debug, Message)]
#[rtype(result = "UploadProgress")]
pub struct GetUploadProgress;

/// The actor for one multipart upload. It stops when the upload ends.
pub struct UploadActor {
    job: Option<UploadJob>,
    done: Option<oneshot::Sender<Result<UploadOutcome, Error>>>,
    progress: Arc<Mutex<UploadProgress>>,
}

impl UploadActor {
    pub(crate) fn new(job: UploadJob, done: oneshot::Sender<Result<UploadOutcome, Error>>) -> Self {
        let progress = UploadProgress {
            mount: job.c.spec.name.clone(),
            path: job.path.clone(),
            upload_id: String::new(),
            bytes_done: 0,
            bytes_total: job.size,
            parts_done: 0,
            parts_total: None,
            bytes_sent: 0,
            bytes_per_second: 0.0,
            eta_seconds: None,
            finished: false,
        };
        UploadActor {
            job: Some(job),
            done: Some(done),
            progress: Arc::new(Mutex::new(progress)),
        }
    }
}

impl Actor for UploadActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(job) = self.job.take() else { return };
        let mount = job.c.spec.name.clone();
        metrics::gauge!("filestore_s3_uploads_in_flight", "mount" => mount.clone()).increment(1.0);
        let progress = self.progress.clone();
        ctx.spawn(
            run_upload(job, progress)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    metrics::gauge!("filestore_s3_uploads_in_flight", "mount" => mount)
                        .decrement(1.0);
                    if let Some(done) = act.done.take() {
                        let _ = done.send(res);
                    }
                    ctx.stop();
                }),
        );
    }
}

impl Handler<GetUploadProgress> for UploadActor {
    type Result = MessageResult<GetUploadProgress>;

    fn handle(&mut self, _msg: GetUploadProgress, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.progress.lock().expect("progress lock").clone())
    }
}

/// Progress bookkeeping shared by the part futures of one upload.
struct Tracker {
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

async fn open_source(job: &mut UploadJob) -> Result<SourceReader, Error> {
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

async fn run_upload(
    mut job: UploadJob,
    state: Arc<Mutex<UploadProgress>>,
) -> Result<UploadOutcome, Error> {
    let c = job.c.clone();
    let key = job.key.clone();
    let mut reader = open_source(&mut job).await?;
    let part_size = match &job.resume {
        Some(r) => r.part_size,
        None => part_size_for(c.spec.part_size, job.size)?,
    };
    let parts_total = job.size.map(|t| t.div_ceil(part_size).max(1) as u32);

    // Resume the recorded upload when the store still has it; otherwise start a new one.
    let mut resumed: Option<(String, BTreeMap<i32, UploadedPart>)> = None;
    if let Some(rec) = job.resume.take() {
        match c
            .with_retry("ListParts", &key, || {
                c.store.list_parts(&key, &rec.upload_id)
            })
            .await
        {
            Ok(listed) => {
                let done = reconcile(&rec.parts, &listed);
                let adopted: Vec<UploadedPart> = done
                    .values()
                    .filter(|p| !rec.parts.iter().any(|r| r.part_number == p.part_number))
                    .cloned()
                    .collect();
                if !adopted.is_empty() {
                    record_parts(&c, &rec.upload_id, adopted).await?;
                }
                log::info!(
                    "mount {}: resuming upload {} of '{key}' with {} of its parts done",
                    c.spec.name,
                    rec.upload_id,
                    done.len()
                );
                resumed = Some((rec.upload_id, done));
            }
            Err(Error::Storage { source, .. }) if source.kind == StoreErrorKind::NotFound => {
                log::warn!(
                    "mount {}: upload {} of '{key}' is gone from the store; starting a new one",
                    c.spec.name,
                    rec.upload_id
                );
                let _ = c.meta.mark_upload_aborted(&rec.upload_id).await;
            }
            Err(Error::Storage { source, .. }) if !source.is_retryable() => {
                // Some stores cannot list parts (moto's ListParts answer does not parse, s3s-fs
                // omits ETags): resume from what Postgres recorded; Complete is the final check.
                log::warn!(
                    "mount {}: ListParts of upload {} failed ({source}); resuming from the {} parts recorded in Postgres",
                    c.spec.name,
                    rec.upload_id,
                    rec.parts.len()
                );
                let done = rec
                    .parts
                    .iter()
                    .map(|p| (p.part_number, p.clone()))
                    .collect();
                resumed = Some((rec.upload_id, done));
            }
            Err(e) => return Err(e),
        }
    }
    let (upload_id, done) = match resumed {
        Some(r) => r,
        None => {
            let ct = job.content_type.clone();
            let id = c
                .with_retry("CreateMultipartUpload", &key, || {
                    c.store.create_multipart(&key, ct.as_deref())
                })
                .await?;
            let record = UploadRecord {
                upload_id: id.clone(),
                journal_id: job.journal_id,
                mount: c.spec.name.clone(),
                key: key.clone(),
                part_size,
                total_size: job.size,
                parts: Vec::new(),
            };
            c.committer
                .send(RecordUpload(record))
                .await
                .map_err(|_| Error::Shutdown)??;
            (id, BTreeMap::new())
        }
    };

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
        publisher: job.publisher.clone(),
    });

    let result = upload_parts(&c, &job, &mut reader, &upload_id, part_size, done, &tracker).await;
    let (parts, size, sha256) = match result {
        Ok(v) => v,
        Err(e) => {
            if c.spec.retain_failed_uploads && e.is_retryable() {
                log::warn!(
                    "mount {}: upload {upload_id} of '{key}' failed ({e}); retained for a resume",
                    c.spec.name
                );
            } else {
                abort(&c, &key, &upload_id).await;
            }
            return Err(e);
        }
    };
    if let Some(expected) = job.size {
        if size != expected {
            abort(&c, &key, &upload_id).await;
            return Err(Error::SourceChanged {
                source_path: source_name(&job.source),
                reason: format!("read {size} bytes, expected {expected}"),
            });
        }
    }

    let etag = c
        .with_retry("CompleteMultipartUpload", &key, || {
            c.store.complete_multipart(&key, &upload_id, &parts)
        })
        .await?;
    // Verify what the store now holds: size, and the ETag Complete answered (a multipart ETag is
    // not an MD5 of the object; it is compared, never recomputed).
    let node = c
        .verify(&key, |seen: &Option<ObjectMeta>| match seen {
            None => Err("object not visible yet".to_string()),
            Some(m) if m.size != size => Err(format!("size is {} bytes, expected {size}", m.size)),
            Some(m) if !etag.is_empty() && !m.etag.is_empty() && m.etag != etag => {
                Err(format!("ETag is {}, Complete answered {etag}", m.etag))
            }
            Some(m) => Ok(NodeMeta {
                size: m.size,
                etag: m.etag.clone(),
                sha256: sha256.clone(),
                storage_class: m.storage_class.clone(),
                last_modified: m.last_modified,
            }),
        })
        .await?;
    tracker.update(|p| p.finished = true);
    Ok(UploadOutcome { node, upload_id })
}

fn source_name(s: &UploadSource) -> String {
    match s {
        UploadSource::File { path, .. } => path.clone(),
        UploadSource::Stream => "<stream>".into(),
    }
}

async fn abort(c: &OpContext, key: &str, upload_id: &str) {
    match c
        .with_retry("AbortMultipartUpload", key, || c.store.abort_multipart(key, upload_id))
        .await
    {
        Ok(()) => {
            if let Err(e) = c.meta.mark_upload_aborted(upload_id).await {
                log::warn!("mount {}: upload {upload_id} aborted but not marked: {e}", c.spec.name);
            }
        }
        Err(e) => log::error!(
            "mount {}: could not abort upload {upload_id} of '{key}': {e}; the orphan sweep retries",
            c.spec.name
        ),
    }
}

async fn record_parts(
    c: &OpContext,
    upload_id: &str,
    parts: Vec<UploadedPart>,
) -> Result<(), Error> {
    for part in parts {
        c.committer
            .send(RecordPart {
                upload_id: upload_id.to_owned(),
                part,
            })
            .await
            .map_err(|_| Error::Shutdown)??;
    }
    Ok(())
}

/// Reads and uploads every part; returns the parts, the size and the SHA-256 of the whole object.
async fn upload_parts(
    c: &OpContext,
    job: &UploadJob,
    reader: &mut SourceReader,
    upload_id: &str,
    part_size: u64,
    mut done: BTreeMap<i32, UploadedPart>,
    tracker: &Arc<Tracker>,
) -> Result<(Vec<UploadedPart>, u64, String), Error> {
    let concurrency = c.spec.part_concurrency as usize;
    let what = source_name(&job.source);
    let mut hasher = Sha256::new();
    let mut in_flight = FuturesUnordered::new();
    let mut size = 0u64;
    let mut part_number = 0i32;
    loop {
        // Wait for a free slot before reading: memory stays at part size × parts in flight.
        while in_flight.len() >= concurrency {
            let part: UploadedPart = in_flight.next().await.expect("non-empty")?;
            done.insert(part.part_number, part);
        }
        let buf = read_part(reader, part_size, &what).await?;
        if buf.is_empty() && part_number > 0 {
            break;
        }
        part_number += 1;
        if part_number as u64 > MAX_PARTS {
            return Err(Error::TooLarge {
                size: size + buf.len() as u64,
                limit: MAX_PARTS * part_size,
                what: "an upload of unknown size at this part size",
            });
        }
        let last = (buf.len() as u64) < part_size;
        size += buf.len() as u64;
        hasher.update(&buf);
        let part_sha: [u8; 32] = Sha256::digest(&buf).into();
        if let Some(prev) = done.get(&part_number) {
            let same = prev.size == buf.len() as u64
                && prev
                    .sha256
                    .as_deref()
                    .is_none_or(|s| s == hex::encode(part_sha));
            if !same {
                return Err(Error::SourceChanged {
                    source_path: what.clone(),
                    reason: format!("part {part_number} differs from the part uploaded before"),
                });
            }
            job.counters.parts_resumed.fetch_add(1, Ordering::Relaxed);
            let n = prev.size;
            tracker.update(|p| {
                p.bytes_done += n;
                p.parts_done += 1;
            });
        } else {
            in_flight.push(upload_one(
                c.clone(),
                job.key.clone(),
                upload_id.to_owned(),
                part_number,
                buf,
                part_sha,
                tracker.clone(),
                job.counters.clone(),
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
        hex::encode(hasher.finalize()),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn upload_one(
    c: OpContext,
    key: String,
    upload_id: String,
    part_number: i32,
    body: Bytes,
    sha256: [u8; 32],
    tracker: Arc<Tracker>,
    counters: Arc<UploadCounters>,
) -> Result<UploadedPart, Error> {
    let n = body.len() as u64;
    let mount = c.spec.name.clone();
    let started = Instant::now();
    let part = c
        .retry
        .run(
            || {
                counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
                tracker.update(|p| p.bytes_sent += n);
                c.store
                    .upload_part(&key, &upload_id, part_number, body.clone(), sha256)
            },
            |e| e.is_retryable(),
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
    c.committer
        .send(RecordPart {
            upload_id: upload_id.clone(),
            part: part.clone(),
        })
        .await
        .map_err(|_| Error::Shutdown)??;
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
            sha256: sha.map(Into::into),
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
