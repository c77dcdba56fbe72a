//! The multipart upload as a unit of its own: it reads a source in order, keeps at most
//! `concurrency` parts in flight, has every accepted part recorded (through a [`PartRecorder`])
//! before freeing its slot, so a crash loses at most the parts in flight, resumes a recorded
//! upload from the parts the store still has, and completes the upload. It depends only on the
//! object-store port and the recorder; verifying and committing the result is the caller's job.
//! It runs in an [`UploadActor`] driven through an [`UploadHandle`] (`join` / `abort` /
//! `progress`). [`copy`] does the same for UploadPartCopy.

mod parts;
use parts::upload_parts;

mod source;
pub use source::{file_identity, reader_from_stream, SourceReader};
use source::{open_source, read_part};

mod progress;
use progress::Tracker;
pub use progress::{ProgressHub, ProgressSink};

mod actor;
pub mod copy;
mod file_part;

pub use actor::UploadHandle;

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
use crate::ports::{ChangePublisher, KeyCondition, PartBody, StoreErrorKind};
use crate::store::{MountStore, Outcome as RequestOutcome, S3Op};

/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's limit on object size, in bytes (5 TiB).
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Shortest interval between two progress messages on Redis for one upload.
pub const PROGRESS_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

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
    /// Every part was accepted and the upload is about to be completed: the content's size and
    /// SHA-256. Recorded before CompleteMultipartUpload is sent, so that whoever settles the
    /// journal row can prove a completed object without the source.
    async fn completing(
        &self,
        journal_id: i64,
        size: u64,
        sha256: Sha256Digest,
    ) -> Result<(), Error>;
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
    /// What CompleteMultipartUpload is conditioned on.
    pub complete_condition: CompleteCondition,
    /// Receives progress updates.
    pub sink: Option<ProgressSink>,
    /// Record the content's size and SHA-256 before Complete ([`PartRecorder::completing`]): a
    /// multipart put's proof for recovery. (A streamed copy's row keeps its pin instead: its
    /// content is the pinned source's.)
    pub record_content: bool,
    /// The SHA-256 the content must have (a streamed copy's pinned source): an upload whose
    /// bytes hash otherwise is aborted before Complete, so it never replaces the key's object.
    pub expected_sha256: Option<Sha256Digest>,
}

/// What an upload needs from its surroundings.
#[derive(Clone)]
pub struct UploadDeps {
    /// The mount's store layer: every S3 request of the upload.
    pub store: MountStore,
    /// Where parts are recorded.
    pub recorder: Arc<dyn PartRecorder>,
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
        source_etag: None,
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
    if let Some(expected) = job.expected_sha256 {
        if sha256 != expected {
            log::warn!("mount {mount}: upload {upload_id} of '{key}' read content with SHA-256 {}, {} expected; aborting it", sha256.to_hex(), expected.to_hex());
            abort_upload(&deps, &mount, &key, &upload_id).await;
            return Err(Error::ChecksumMismatch {
                mount,
                path: job.path.clone(),
                expected: expected.to_hex(),
                actual: sha256.to_hex(),
            });
        }
    }
    if job.record_content {
        deps.recorder
            .completing(job.journal_id, size, sha256)
            .await?;
    }
    let etag = complete(
        &deps,
        &mount,
        &job.path,
        &key,
        &upload_id,
        &parts,
        job.journal_id,
        size,
        &job.complete_condition,
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
    /// A part copy's source version (pinned ETag), recorded with the upload.
    pub source_etag: Option<&'a str>,
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
            .store
            .call(S3Op::ListParts, key, || {
                deps.store.raw().list_parts(key, &rec.upload_id)
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
        .store
        .call(S3Op::CreateMultipartUpload, key, || {
            deps.store.raw().create_multipart(
                key,
                t.content_type,
                t.marker,
                t.metadata,
                t.part_checksums,
            )
        })
        .await?;
    crate::failpoint::hit("after_create_upload").await;
    deps.recorder
        .upload_started(UploadRecord {
            upload_id: id.clone(),
            journal_id: t.journal_id,
            mount: mount.to_owned(),
            key: key.to_owned(),
            part_size: t.part_size,
            total_size: t.total_size,
            source_etag: t.source_etag.map(str::to_owned),
            parts: Vec::new(),
        })
        .await?;
    Ok((id, BTreeMap::new()))
}

/// The condition a multipart upload's CompleteMultipartUpload is sent under (compare-and-swap
/// against the destination's node, where the mount's store honours it), and what may replace it
/// when the key turns out not to hold what the first one names.
#[derive(Debug, Clone, Default)]
pub struct CompleteCondition {
    /// The first Complete's condition: `If-Match` the node's ETag, `If-None-Match: *` for a
    /// create-only write, or none.
    pub first: KeyCondition,
    /// Whether the store honours `If-None-Match` on Complete: a key found empty after an
    /// `If-Match` refusal (the node's object gone) is then completed create-only.
    pub create_honoured: bool,
}

/// CompleteMultipartUpload. Complete is not idempotent: when a retry (or a run after a crash)
/// fails for good — NoSuchUpload on S3, AccessDenied on stores that forget a completed upload id,
/// 412 when the first attempt's object now fails the condition — the first attempt may have
/// completed the upload with its answer lost. Its outcome is checked before anything else: the
/// object is accepted if it carries this operation's journal id and the expected size; otherwise
/// the error stands (and the bytes are not sent again blindly).
///
/// A condition refused for sure (the key does not hold the node's object): what it holds decides,
/// as for a single PUT — nothing: completed create-only; an object this executor wrote (a write
/// marker) that never became the path's content: completed over that very object; an object
/// without a marker, or a create-only write refused: [`Error::PreconditionFailed`], the upload
/// aborted, nothing written.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn complete(
    deps: &UploadDeps,
    mount: &str,
    path: &str,
    key: &str,
    upload_id: &str,
    parts: &[UploadedPart],
    journal_id: i64,
    size: u64,
    condition: &CompleteCondition,
) -> Result<String, Error> {
    let mut sent = condition.first.clone();
    let mut replaced = false;
    loop {
        let res = deps
            .store
            .call(S3Op::CompleteMultipartUpload, key, || {
                deps.store
                    .raw()
                    .complete_multipart(key, upload_id, parts, &sent)
            })
            .await;
        let (source, outcome) = match res {
            Ok(etag) => return Ok(etag),
            Err(Error::Storage {
                source, outcome, ..
            }) if !source.is_retryable() => (source, outcome),
            Err(e) => return Err(e),
        };
        // A HEAD that fails leaves a Complete that may have been applied an unknown: its own
        // error stands (maybe applied), and recovery looks again (the row's marker on the key's
        // object), however long that takes.
        let seen = match deps
            .store
            .call(S3Op::HeadObject, key, || deps.store.raw().head_object(key))
            .await
        {
            Ok(seen) => seen,
            Err(e) if matches!(outcome, RequestOutcome::MaybeApplied) => {
                log::warn!("mount {mount}: CompleteMultipartUpload of '{key}' failed ({source}) and the HEAD that would show its outcome failed too ({e}); left to recovery");
                return Err(Error::Storage {
                    op: S3Op::CompleteMultipartUpload,
                    key: key.to_owned(),
                    source,
                    outcome,
                });
            }
            Err(e) => return Err(e),
        };
        if let Some(m) = &seen {
            if m.size == size
                && m.marker
                    .as_ref()
                    .is_some_and(|w| w.journal_id == journal_id)
            {
                log::info!(
                    "mount {mount}: upload {upload_id} of '{key}' was already completed (answer lost); the object carries journal {journal_id}"
                );
                return Ok(String::new());
            }
        }
        let condition_refused = sent.is_some()
            && (source.kind == StoreErrorKind::PreconditionFailed
                || (sent.if_match.is_some()
                    && source.kind == StoreErrorKind::NotFound
                    && source.code.as_deref() == Some("NoSuchKey")));
        if condition_refused && outcome == RequestOutcome::NotApplied {
            // Refused for sure: the key does not hold what the condition named. A HEAD that
            // still shows exactly that (the ETag refused, or nothing after a create-only
            // refusal) is a store serving an older state — the key may hold this row's own
            // object, completed by an earlier run: the upload is kept and the row left to
            // recovery, which waits that out.
            let older_state = match &seen {
                None => sent.if_none_match,
                Some(m) => sent.if_match.as_deref() == Some(m.etag.as_str()),
            };
            if older_state {
                log::warn!("mount {mount}: CompleteMultipartUpload of '{key}' refused ({source}) while the store shows what it was conditioned on; left to recovery");
                return Err(Error::Unverified {
                    key: key.to_owned(),
                    reason: "CompleteMultipartUpload was refused by its condition, and the store does not show what it found there yet".into(),
                });
            }
            let instead = match (&sent.if_match, &seen) {
                (Some(_), None) if !replaced => Some(KeyCondition {
                    if_none_match: condition.create_honoured,
                    if_match: None,
                }),
                (Some(_), Some(m)) if !replaced && m.marker.is_some() => Some(KeyCondition {
                    if_none_match: false,
                    if_match: Some(m.etag.clone()),
                }),
                _ => None,
            };
            if let Some(instead) = instead {
                log::info!(
                    "mount {mount}: CompleteMultipartUpload of '{key}' refused ({source}): the key no longer holds the object its node names; completing over what it holds ({instead:?})"
                );
                (sent, replaced) = (instead, true);
                continue;
            }
            let reason = match (&sent.if_match, &seen) {
                (_, None) => "the key changed while the upload was completed".to_string(),
                (Some(etag), Some(_)) => format!(
                    "the key no longer holds the object the write was conditioned on (ETag {etag}) but one this executor did not write: another writer changed it; nothing was written"
                ),
                (None, Some(_)) => {
                    "create-only, but the store already holds an object at the key".to_string()
                }
            };
            log::warn!("mount {mount}: CompleteMultipartUpload of '{key}' refused: {reason}; aborting upload {upload_id}");
            abort_upload(deps, mount, key, upload_id).await;
            return Err(Error::PreconditionFailed {
                mount: mount.to_owned(),
                path: path.to_owned(),
                reason,
            });
        }
        return Err(match seen {
            other if source.kind != StoreErrorKind::NotFound => {
                log::warn!(
                    "mount {mount}: CompleteMultipartUpload of '{key}' failed ({source}) and the object is not this upload's ({})",
                    other.map_or("no object".into(), |m| format!("{} bytes", m.size))
                );
                Error::Storage {
                    op: S3Op::CompleteMultipartUpload,
                    key: key.to_owned(),
                    source,
                    outcome,
                }
            }
            other => Error::Storage {
                op: S3Op::CompleteMultipartUpload,
                key: key.to_owned(),
                outcome,
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
            },
        });
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
        .store
        .abort_upload(key, upload_id)
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
