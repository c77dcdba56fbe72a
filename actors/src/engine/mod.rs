//! The operation engine: runs the protocol (docs/architecture.md) once for every mutating operation —
//! validate (in the supervisor's handler) → intent → act → verify → commit → notify (the committer
//! pokes the notifier) — and settles a pending row left by an earlier run (recovery). Each
//! operation supplies its own act / verify / recover steps in [`ops`].

mod context;
mod deletes;
mod ops;

use bytes::Bytes;

pub(crate) use context::OpContext;
pub(crate) use deletes::DeleteBatcher;
pub(crate) use ops::validate_transfer;

use crate::error::Error;
use crate::model::{
    CommitRecord, DeleteRequest, IntentOutcome, JournalEntry, JournalState, MultipartRequest,
    NewIntent, NodeChange, OpKind, OpProgress, OpRequest, OpResult, PutRequest, TransferRequest,
};
use crate::multipart::{ProgressSink, SourceReader};
use crate::store::{MountStore, S3Op};

/// A mutating operation as the engine runs it: the request its journal row records, with what
/// the operation carries at run time. Each operation's steps (precheck, act and verify, recover)
/// live in its module of `ops`; the engine runs the protocol over them once.
pub(crate) enum Operation {
    /// A single-request put of bytes in memory.
    Put { request: PutRequest, body: Bytes },
    /// A multipart put from a file (read by the upload) or a stream.
    Multipart {
        request: MultipartRequest,
        reader: Option<SourceReader>,
        sink: Option<ProgressSink>,
    },
    /// A delete; `batched`: its DELETE goes in a multi-object delete (`delete_many`).
    Delete {
        request: DeleteRequest,
        batched: bool,
    },
    /// A copy, with its source mount's store layer.
    Copy {
        request: TransferRequest,
        source: MountStore,
    },
    /// A move, with its source mount's store layer.
    Move {
        request: TransferRequest,
        source: MountStore,
    },
}

impl Operation {
    /// The request the journal records (and the fingerprint is computed from).
    pub fn request(&self) -> OpRequest {
        match self {
            Operation::Put { request, .. } => OpRequest::Put(request.clone()),
            Operation::Multipart { request, .. } => OpRequest::PutMultipart(request.clone()),
            Operation::Delete { request, .. } => OpRequest::Delete(request.clone()),
            Operation::Copy { request, .. } => OpRequest::Copy(request.clone()),
            Operation::Move { request, .. } => OpRequest::Move(request.clone()),
        }
    }

    /// The checks made before an intent is recorded: the write's conditions, and that what a
    /// delete, copy or move acts on has a node. For a copy / move, the source pinned from that
    /// node, which the intent records (so pinning costs no write of its own).
    async fn precheck(&self, c: &OpContext) -> Result<Option<OpProgress>, Error> {
        match self {
            Operation::Put { request, .. } => ops::put::precheck(c, request).await,
            Operation::Multipart { request, .. } => ops::multipart_put::precheck(c, request).await,
            Operation::Delete { request, .. } => ops::delete::precheck(c, request).await,
            Operation::Copy { request, .. } => ops::copy::precheck(c, request).await,
            Operation::Move { request, .. } => {
                // After the pin: a move repeated after it committed (its source gone) gets its
                // recorded result, whoever holds the source mount now.
                let pin = ops::copy::precheck(c, request).await?;
                ops::source_lease_held(c, &request.source.mount).await?;
                Ok(pin)
            }
        }
    }

    /// Act and verify. `progress` is where an earlier run of this journal row got to (a
    /// re-armed row).
    async fn act(
        self,
        c: &OpContext,
        journal_id: i64,
        progress: Option<OpProgress>,
    ) -> Result<Outcome, Error> {
        if !matches!(self, Operation::Delete { .. }) {
            c.ensure_settings_honoured().await?;
        }
        match self {
            Operation::Put { request, body } => ops::put::act(c, journal_id, &request, body).await,
            Operation::Multipart {
                request,
                reader,
                sink,
            } => ops::multipart_put::act(c, journal_id, &request, reader, sink).await,
            Operation::Delete { request, batched } => ops::delete::act(c, &request, batched).await,
            Operation::Copy { request, source } => {
                ops::copy::act(c, journal_id, &request, &source, progress).await
            }
            Operation::Move { request, source } => {
                ops::mv::act(c, journal_id, &request, &source, progress).await
            }
        }
    }

    /// Where the operation reports its progress, for an operation that has any.
    pub fn progress_sink(&mut self) -> Option<&mut Option<ProgressSink>> {
        match self {
            Operation::Multipart { sink, .. } => Some(sink),
            _ => None,
        }
    }
}

/// What an operation's act + verify steps produced: the node change to commit.
pub(crate) struct Outcome {
    pub change: NodeChange,
    /// The multipart upload the commit completes.
    pub upload_id: Option<String>,
    /// A move whose source path was written after the move pinned it: the source is not
    /// deleted (it holds someone's newer write), and the move is committed as a copy.
    pub source_kept: bool,
}

/// Maps an existing journal row for the same key to what the caller gets.
fn replay(mount: &str, fingerprint: &str, entry: JournalEntry) -> Result<OpResult, Error> {
    if entry.fingerprint != fingerprint {
        return Err(Error::IdempotencyConflict {
            mount: mount.to_owned(),
            key: entry.idempotency_key,
        });
    }
    match (entry.state, entry.result) {
        (JournalState::Committed, Some(result)) => Ok(result),
        (JournalState::Pending, _) => Err(Error::InProgress {
            mount: mount.to_owned(),
            key: entry.idempotency_key,
        }),
        (_, _) => Err(Error::Failed {
            journal_id: entry.id,
            message: entry.error.unwrap_or_else(|| "unknown".into()),
        }),
    }
}

fn commit_record(c: &OpContext, journal_id: i64, request: &OpRequest, o: Outcome) -> CommitRecord {
    CommitRecord {
        journal_id,
        mount: c.spec.name.clone(),
        op: match (request.kind(), o.source_kept) {
            (OpKind::Move, true) => OpKind::Copy,
            (kind, _) => kind,
        },
        path: request.path().to_owned(),
        key: request.key().to_owned(),
        change: o.change,
        source: request.source().cloned(),
        upload_id: o.upload_id,
        condition: request.condition(),
    }
}

/// Runs one mutating operation through the whole protocol (the caller holds the paths' locks),
/// and accounts for it: one log line (mount, op, path, journal id, duration, outcome), the
/// `filestore_s3_operations_total{mount,op,outcome}` counter and the
/// `filestore_s3_operation_seconds{mount,op}` histogram.
/// `request` is `operation.request()`, built once by the caller (it also keys the paths' locks).
pub(crate) async fn run_operation(
    c: OpContext,
    idempotency_key: String,
    operation: Operation,
    request: OpRequest,
    fingerprint: String,
) -> Result<OpResult, Error> {
    let started = std::time::Instant::now();
    let (mount, op, path) = (
        c.spec.name.clone(),
        request.kind().as_str(),
        request.path().to_owned(),
    );
    let res = run_protocol(c, idempotency_key, request, operation, fingerprint).await;
    let secs = started.elapsed().as_secs_f64();
    let outcome = match &res {
        Ok(_) => "committed",
        Err(e) if e.is_retryable() => "retryable_error",
        Err(_) => "error",
    };
    metrics::counter!("filestore_s3_operations_total", "mount" => mount.clone(), "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("filestore_s3_operation_seconds", "mount" => mount.clone(), "op" => op)
        .record(secs);
    match &res {
        Ok(r) => log::info!(
            "operation mount={mount} op={op} path={path:?} journal={} generation={} duration_ms={:.1} outcome={outcome}",
            r.journal_id,
            r.generation,
            secs * 1e3
        ),
        Err(e) => log::info!(
            "operation mount={mount} op={op} path={path:?} duration_ms={:.1} outcome={outcome} error={e}",
            secs * 1e3
        ),
    }
    res
}

async fn run_protocol(
    c: OpContext,
    idempotency_key: String,
    request: OpRequest,
    operation: Operation,
    fingerprint: String,
) -> Result<OpResult, Error> {
    let mount = c.spec.name.clone();
    let key = idempotency_key.clone();
    let mut intent = NewIntent {
        mount: mount.clone(),
        idempotency_key,
        request: request.clone(),
        fingerprint: fingerprint.clone(),
        token: uuid::Uuid::new_v4(),
        progress: None,
    };
    // A write after one the store kept without a mount setting (strict policy): refused before
    // anything is recorded or sent.
    // A call repeating an earlier one (its answer lost) still gets that one's outcome, and a
    // move past its source's DELETE can still be finished.
    if !matches!(request, OpRequest::Delete(_)) {
        if let Err(e) = c.refuse_learned_settings() {
            let repeat = match c.meta.entry(&c.spec.name, &key).await? {
                Some(entry) => {
                    entry.state != JournalState::Failed
                        || matches!(entry.progress, Some(OpProgress::SourceDeleted { .. }))
                }
                None => false,
            };
            if !repeat {
                return Err(e);
            }
        }
    }
    // A pending row owns its paths: it is settled before anything else runs on them. A call
    // repeating one that committed (its answer lost) gets that outcome even while another row
    // holds its paths (looked up only then: no extra read on the common path).
    if let Err(e) = settle_pending_on(&c, &request, &key).await {
        match c.meta.entry(&mount, &key).await {
            Ok(Some(entry)) if entry.state == JournalState::Committed => {
                let result = replay(&mount, &fingerprint, entry)?;
                return same_stream_content(&c, &key, result, operation).await;
            }
            _ => return Err(e),
        }
    }
    // Conditions and the existence of what the operation needs are checked before the intent is
    // recorded (under the paths' locks), so a refused call leaves no trace; a call repeating an
    // earlier one gets that one's outcome instead.
    match operation.precheck(&c).await {
        Ok(pin) => intent.progress = pin,
        Err(e) => {
            if !matches!(e, Error::PreconditionFailed { .. } | Error::NotFound { .. }) {
                return Err(e);
            }
            return match c.meta.entry(&mount, &intent.idempotency_key).await? {
                Some(entry) if entry.state != JournalState::Failed => {
                    replay(&mount, &fingerprint, entry)
                }
                Some(entry) if entry.fingerprint != fingerprint => {
                    replay(&mount, &fingerprint, entry)
                }
                _ => Err(e),
            };
        }
    }
    let pin = intent.progress.clone();
    let (journal_id, kept) = match c.record_intent(intent).await? {
        IntentOutcome::Started { journal_id } => (journal_id, None),
        IntentOutcome::Resumed {
            journal_id,
            progress,
        } => (journal_id, Some(*progress)),
        IntentOutcome::Existing(entry) => {
            let result = replay(&mount, &fingerprint, *entry)?;
            return same_stream_content(&c, &key, result, operation).await;
        }
    };
    if pin.is_some() {
        crate::failpoint::hit("after_source_pinned").await;
    }
    let acted = async {
        let progress = match kept {
            Some(kept) => resume_from(&c, journal_id, kept, pin).await?,
            None => pin,
        };
        operation.act(&c, journal_id, progress).await
    };
    match acted.await {
        Ok(outcome) => {
            crate::failpoint::hit("before_commit").await;
            c.commit(commit_record(&c, journal_id, &request, outcome))
                .await
        }
        // Unverified: S3 may hold the new state; the row stays pending for recovery to settle.
        // So does a HEAD that failed (its retries spent): the store could not be looked at.
        Err(e @ Error::Unverified { .. }) => Err(e),
        // (A HEAD of one of the operation's own keys: not the settings probe's object, say,
        // whose not showing means nothing of the row was sent.)
        Err(
            e @ Error::Storage {
                op: S3Op::HeadObject,
                ..
            },
        ) if e.is_retryable()
            && matches!(&e, Error::Storage { key, .. } if operation_key(&request, key)) =>
        {
            log::warn!(
                "mount {}: journal {journal_id}: {e}; the store could not be looked at, so the row is left to recovery",
                c.spec.name
            );
            Err(e)
        }
        // A request the store may have applied (its answer lost, a timeout or a 5xx after the
        // body was sent) is not a failure but an unknown: the row stays pending and recovery
        // settles it from what S3 holds (a put is committed if its object proves to be this
        // put's, a delete if the object is gone, a multipart put if its completed object carries
        // the row's marker, a copy / move from the step its row records; otherwise the row
        // fails).
        Err(e) if settled_by_recovery(&e) => {
            log::warn!(
                "mount {}: journal {journal_id}: {e}; the request may have been applied, so the row is left to recovery",
                c.spec.name
            );
            Err(e)
        }
        // The executor is stopping, or lost the mount's lease (or a move's source mount's): the
        // row stays pending; the owner's recovery continues it (this executor could not mark it
        // failed anyway).
        Err(e @ (Error::Shutdown | Error::LeaseLost(_) | Error::NotOwner { .. })) => Err(e),
        // Postgres failed for the moment, perhaps after an S3 write landed (a move's source
        // DELETE, then recording it): the row stays pending and recovery settles it from what
        // S3 holds.
        Err(e @ Error::Metadata(_)) if e.is_retryable() => {
            log::warn!(
                "mount {}: journal {journal_id}: {e}; left to recovery",
                c.spec.name
            );
            Err(e)
        }
        Err(e) => {
            if let Err(fail_err) = c.fail(journal_id, &e).await {
                log::error!(
                    "mount {}: could not mark journal {journal_id} failed: {fail_err}",
                    c.spec.name
                );
            }
            Err(e)
        }
    }
}

/// A pending row owns its paths. Before an operation runs (holding its paths' locks), every
/// pending journal row that writes one of its paths, or moves away from one, is settled now by
/// its recovery: otherwise that row's recovery, later, could undo this operation's write (a move
/// whose source DELETE was applied commits by removing the source's node — a node this operation
/// may have written meanwhile; a put whose object a stale read still shows would be committed
/// over a later one). A row that cannot be settled now (the store does not show its outcome yet,
/// its other path is busy, it belongs to another mount's journal) refuses the operation with the
/// retryable [`Error::PathPending`] before anything is recorded or sent.
async fn settle_pending_on(c: &OpContext, request: &OpRequest, own_key: &str) -> Result<(), Error> {
    let held = request.paths(&c.spec.name);
    let rows = c.meta.pending_on(&held).await?;
    for entry in rows {
        if entry.mount == c.spec.name && entry.idempotency_key == own_key {
            // This call's own row: the intent resumes it.
            continue;
        }
        let (path_mount, path) = held
            .iter()
            .find(|(m, p)| {
                (*m == entry.mount && p == entry.request.path())
                    || entry
                        .request
                        .source()
                        .is_some_and(|s| s.mount == *m && s.path == *p)
            })
            .cloned()
            .unwrap_or_else(|| held[0].clone());
        let (row_mount, journal_id) = (entry.mount.clone(), entry.id);
        let busy = |reason: String| Error::PathPending {
            mount: path_mount.clone(),
            path: path.clone(),
            row_mount: row_mount.clone(),
            journal_id,
            reason,
        };
        if entry.mount != c.spec.name {
            // Another mount's copy or move from this path, settled by that mount's owner. Its
            // recovery may copy from the source again, trusting the store to refuse a changed
            // source (`x-amz-copy-source-if-match` on the pinned ETag) — which moto ignores: a
            // write here meanwhile would be copied under the pinned version's name. And a move
            // that deleted its source commits by removing the source's node, whatever it names.
            return Err(busy(format!(
                "a {} from this path; its recovery runs on mount '{}', by that mount's owner",
                entry.request.kind().as_str(),
                entry.mount
            )));
        }
        // The row's other paths (a copy's or move's second one), taken only if free now: waiting
        // for them while holding this operation's paths could deadlock.
        let mut guards = Vec::new();
        for (m, p) in entry.request.paths(&entry.mount) {
            if held.contains(&(m.clone(), p.clone())) {
                continue;
            }
            match c.locks.try_acquire(&m, &p) {
                Some(g) => guards.push(g),
                None => return Err(busy(format!("its path '{m}:{p}' is in use"))),
            }
        }
        let (id, row_key) = (entry.id, entry.idempotency_key.clone());
        log::info!(
            "mount {}: journal {id} is pending on '{path}'; settling it before the new operation",
            c.spec.name
        );
        let settled = Box::pin(recover_entry(c.clone(), entry, None)).await;
        drop(guards);
        match c.meta.entry(&c.spec.name, &row_key).await? {
            Some(e) if e.id == id && e.state == JournalState::Pending => {
                let reason = match settled {
                    Err(e) => e.to_string(),
                    Ok(_) => "still pending".into(),
                };
                return Err(busy(reason));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `key` is one the operation writes or deletes: its destination, or a transfer's source.
fn operation_key(request: &OpRequest, key: &str) -> bool {
    request.key() == key
        || matches!(request, OpRequest::Copy(t) | OpRequest::Move(t) if t.source.key == key)
}

/// Whether a failed operation is left pending for recovery rather than marked failed: one whose
/// S3 request that changes a key may have been applied (a put's PUT, a multipart put's Complete,
/// a copy's CopyObject, a move's DELETE of its source, ...). Recovery settles it from what S3
/// holds, from the step its row records. (A part that may have been uploaded changes no key.)
fn settled_by_recovery(e: &Error) -> bool {
    matches!(
        e,
        Error::Storage {
            op,
            outcome: crate::store::Outcome::MaybeApplied,
            ..
        } if op.changes_objects()
    )
}

/// Where a re-armed move that had deleted its source goes on from. If its source's node is still
/// the one it pinned (same generation), the move's copy is the content that node names: finish it
/// (the destination is proven again before the commit). If the source path was written since,
/// the kept step is about an object that is no longer the source: start over from this call's
/// pin, recorded first so that recovery does not finish the old move.
async fn resume_from(
    c: &OpContext,
    journal_id: i64,
    kept: OpProgress,
    pin: Option<OpProgress>,
) -> Result<Option<OpProgress>, Error> {
    // A run that had copied: its source's DELETE may have been applied (its answer lost). While
    // the source's node is still the one it pinned, go on from the copy — the destination is
    // proven again, then the source deleted (of nothing, if it went) and the move committed —
    // rather than copy again from a source that may be gone.
    if let (OpProgress::Copied { source: old, .. }, Some(OpProgress::SourcePinned { source })) =
        (&kept, &pin)
    {
        if old.generation == source.generation && old.sha256 == source.sha256 {
            return Ok(Some(kept));
        }
        // Starting over from this call's pin, recorded first: recovery must not go on from the
        // old copy.
        c.record_progress(
            journal_id,
            OpProgress::SourcePinned {
                source: source.clone(),
            },
        )
        .await?;
        return Ok(pin);
    }
    let (OpProgress::SourceDeleted { source: old, .. }, Some(OpProgress::SourcePinned { source })) =
        (&kept, &pin)
    else {
        return Ok(pin);
    };
    if old.generation == source.generation && old.sha256 == source.sha256 {
        log::info!(
            "mount {}: journal {journal_id} had deleted its source; finishing it",
            c.spec.name
        );
        return Ok(Some(kept));
    }
    log::info!(
        "mount {}: journal {journal_id} had deleted its source at generation {}, which is now {}; starting over",
        c.spec.name,
        old.generation,
        source.generation
    );
    c.record_progress(
        journal_id,
        OpProgress::SourcePinned {
            source: source.clone(),
        },
    )
    .await?;
    Ok(pin)
}

/// The fingerprint of a put from a stream cannot include the content's hash (it is known only
/// once the stream was read), so a repeated key with the same fingerprint is not yet proof of the
/// same request. The rule: the stream is read again (hashed, not uploaded) and must hash to the
/// recorded SHA-256; different content under the same key is an `IdempotencyConflict`.
async fn same_stream_content(
    c: &OpContext,
    idempotency_key: &str,
    result: OpResult,
    operation: Operation,
) -> Result<OpResult, Error> {
    let Operation::Multipart {
        reader: Some(mut reader),
        ..
    } = operation
    else {
        return Ok(result);
    };
    let Some(recorded) = result.node.as_ref().map(|n| n.sha256) else {
        return Ok(result);
    };
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| Error::io("<stream>", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if crate::digest::Sha256Digest::finish(h) != recorded {
        return Err(Error::IdempotencyConflict {
            mount: c.spec.name.clone(),
            key: idempotency_key.to_owned(),
        });
    }
    Ok(result)
}

/// Aborts the open multipart uploads at `key` that no record names: uploads an earlier run
/// created and died before recording (between CreateMultipartUpload's answer and its record),
/// which nothing else would ever abort. Called by the recovery of a row that may have created
/// one, under the path's lock: the pending row owns its path (rule 8), so no other operation of
/// this mount has an upload in the making at that key. Best effort: a store that cannot list
/// uploads (s3s-fs) leaves them to a bucket lifecycle rule.
async fn abort_unrecorded_uploads(c: &OpContext, key: &str) {
    let open = match c.store.open_uploads(key).await {
        Ok(open) if !open.is_empty() => open,
        Ok(_) => return,
        Err(e) => {
            log::debug!(
                "mount {}: open uploads at '{key}' not listed ({e})",
                c.spec.name
            );
            return;
        }
    };
    let recorded = match c.meta.recorded_uploads(&c.spec.name, key).await {
        Ok(r) => r,
        Err(e) => {
            log::warn!(
                "mount {}: recorded uploads of '{key}' not read ({e})",
                c.spec.name
            );
            return;
        }
    };
    for id in open.iter().filter(|id| !recorded.contains(id)) {
        match c.store.abort_upload(key, id).await {
            Ok(()) => log::info!(
                "mount {}: aborted upload {id} of '{key}', created by a run that died before recording it",
                c.spec.name
            ),
            Err(e) => log::warn!(
                "mount {}: could not abort unrecorded upload {id} of '{key}': {e}",
                c.spec.name
            ),
        }
    }
}

/// Settles a pending journal row left by an earlier run, by looking at S3: commit what verifiably
/// happened, continue what can be continued (a multipart upload from an unchanged file, a copy or
/// move from the step it reached), fail the rest. The caller holds the paths' locks.
pub(crate) async fn recover_entry(
    c: OpContext,
    entry: JournalEntry,
    progress: Option<ProgressSink>,
) -> Result<OpResult, Error> {
    let mount = c.spec.name.clone();
    // The row as it is now, under the paths' locks: the pass read it earlier, and meanwhile a
    // call may have settled it or moved it on a step. A row no longer pending answers its
    // recorded outcome; recovery acts only on fresh state.
    let entry = match c.meta.entry(&mount, &entry.idempotency_key).await? {
        Some(fresh) if fresh.id == entry.id => fresh,
        _ => entry,
    };
    if entry.state != JournalState::Pending {
        let fingerprint = entry.fingerprint.clone();
        return replay(&mount, &fingerprint, entry);
    }
    // A row a later operation on its destination path superseded (it ran while this row was
    // pending, and its caller was told it committed) sends nothing to S3 again: copying or
    // uploading now would replace that acknowledged write. Not a row sent again after it failed
    // (re-armed, `attempts` > 1): it keeps its first id, and a row committed before the re-arm
    // came before it — its own request, perhaps applied, is settled from what S3 holds.
    if matches!(
        entry.request,
        OpRequest::PutMultipart(_) | OpRequest::Copy(_) | OpRequest::Move(_)
    ) && !matches!(entry.progress, Some(OpProgress::SourceDeleted { .. }))
        // A move past its copy may have deleted its source: it is finished, not failed.
        && !matches!(
            (&entry.request, &entry.progress),
            (OpRequest::Move(_), Some(OpProgress::Copied { .. }))
        )
        && entry.attempts == 1
    {
        if let Some(later) = c
            .meta
            .committed_after(&mount, entry.request.path(), entry.id)
            .await?
        {
            let e = Error::Failed {
                journal_id: entry.id,
                message: format!(
                    "superseded: journal {later} committed a later change of '{}' while this operation was pending; it is not applied again",
                    entry.request.path()
                ),
            };
            if let Some(rec) = c.meta.upload_of(entry.id).await? {
                let _ = c.store.abort_upload(&rec.key, &rec.upload_id).await;
                c.meta.mark_upload_aborted(&rec.upload_id).await?;
            }
            c.fail(entry.id, &e).await?;
            log::warn!("mount {mount}: recovery: journal {}: {e}", entry.id);
            return Err(e);
        }
    }
    if matches!(
        entry.request,
        OpRequest::PutMultipart(_) | OpRequest::Copy(_) | OpRequest::Move(_)
    ) {
        abort_unrecorded_uploads(&c, entry.request.key()).await;
    }
    let recovered = match &entry.request {
        OpRequest::Put(r) => ops::put::recover(&c, &entry, r).await,
        OpRequest::PutMultipart(r) => ops::multipart_put::recover(&c, &entry, r, progress).await,
        OpRequest::Delete(r) => ops::delete::recover(&c, &entry, r).await,
        OpRequest::Copy(t) => ops::copy::recover(&c, &entry, t).await,
        OpRequest::Move(t) => ops::mv::recover(&c, &entry, t).await,
    };
    match recovered {
        Ok(outcome) => {
            crate::failpoint::hit("before_commit").await;
            let r = c
                .commit(commit_record(&c, entry.id, &entry.request, outcome))
                .await?;
            log::info!(
                "mount {mount}: recovery committed journal {} (generation {})",
                entry.id,
                r.generation
            );
            Ok(r)
        }
        // The store may still serve an older state (the object not shown yet, or still shown
        // after a DELETE — a move's source, say, whose DELETE was applied): while the row is
        // younger than the consistency horizon it stays pending for the next pass. Failing it
        // now would leave a node naming what the store no longer holds.
        // (A put and a delete decide this in their own recovery: an object neither theirs nor
        // the one their node names is someone else's write, and fails them at once.)
        Err(Error::Unverified { key, reason })
            if entry.idle < c.consistency_horizon
                && !matches!(entry.request, OpRequest::Put(_) | OpRequest::Delete(_)) =>
        {
            Err(ops::not_settled_yet(&c, &key, &reason))
        }
        // A request recovery sent again may have been applied (its answer lost, then refused
        // on a retry): still an unknown, left for the next pass.
        Err(e) if settled_by_recovery(&e) => Err(e),
        Err(Error::Unverified { reason, .. }) => {
            let e = Error::Failed {
                journal_id: entry.id,
                message: format!(
                    "interrupted before the operation took effect in S3 ({reason}); send it again"
                ),
            };
            c.fail(entry.id, &e).await?;
            log::info!("mount {mount}: recovery failed journal {}: {e}", entry.id);
            Err(e)
        }
        Err(e)
            if e.is_retryable()
                && matches!(
                    e,
                    Error::Storage { .. }
                        | Error::Metadata(_)
                        | Error::Shutdown
                        | Error::LeaseLost(_)
                        | Error::NotOwner { .. }
                ) =>
        {
            // The store or database is unavailable (or a move's source mount is not this
            // host's now): leave the row pending for the next pass.
            Err(e)
        }
        Err(e) => {
            c.fail(entry.id, &e).await?;
            Err(e)
        }
    }
}
