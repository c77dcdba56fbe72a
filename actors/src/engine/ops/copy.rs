//! A copy, within a mount or across mounts. Steps, each recorded on the journal row so recovery
//! continues from the last one reached:
//! 1. pin the source: read its node (size, SHA-256, ETag, generation) → `source_pinned`;
//! 2. copy: server-side when one client reaches both buckets (same endpoint / region /
//!    addressing) — CopyObject up to the destination's `copy_threshold`, UploadPartCopy above it
//!    (resumable, parts recorded) — otherwise streamed through the executor with bounded memory;
//!    every request is conditioned on the pinned ETag, so a source changed behind the executor's
//!    back is never copied;
//! 3. verify the destination by size and SHA-256 (never by ETag equality with the source: copies
//!    of multipart objects get new ETags) → `copied`. Under `verify = response` a CopyObject
//!    whose answer carries the SHA-256 the store computed of the copy, equal to the pinned one,
//!    needs no HEAD.

use bytes::BytesMut;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{check_condition, prove_content, proven_by_answer, still_holds};
use crate::digest::Sha256Digest;
use crate::engine::context::node_for;
use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{
    JournalEntry, NodeChange, NodeMeta, ObjectMeta, OpKind, OpProgress, PinnedSource, SourceRef,
    TransferRequest, UploadSource, Verification, WriteCondition, WriteMarker,
};
use crate::mount::MountSpec;
use crate::multipart::copy::{copy_parts, PartCopyRequest};
use crate::multipart::{reader_from_stream, UploadHandle, UploadRequest};
use crate::path::FsPath;
use crate::ports::{CopyObjectInput, PutObjectInput, StoreErrorKind};
use crate::store::{MountStore, S3Op};
use crate::store_error::Outcome as RequestOutcome;

/// Builds the request of a copy / move into `dest` (validation: both keys valid, not onto
/// itself).
pub(crate) fn validate_transfer(
    op: OpKind,
    dest: &MountSpec,
    source: &MountSpec,
    source_path: &FsPath,
    path: &FsPath,
    condition: WriteCondition,
) -> Result<TransferRequest, Error> {
    let key = dest
        .keys
        .key_for(path)
        .map_err(|e| Error::invalid_path(path.as_str(), e))?;
    let source_key = source
        .keys
        .key_for(source_path)
        .map_err(|e| Error::invalid_path(source_path.as_str(), e))?;
    if dest.bucket == source.bucket && key == source_key && dest.endpoint == source.endpoint {
        return Err(Error::InvalidRequest {
            field: "path",
            reason: format!(
                "a {} of '{}' onto itself (mount '{}', key '{key}') would change nothing",
                op.as_str(),
                path,
                dest.name
            ),
        });
    }
    Ok(TransferRequest {
        path: path.as_str().to_owned(),
        key,
        source: SourceRef {
            mount: source.name.clone(),
            path: source_path.as_str().to_owned(),
            key: source_key,
        },
        condition,
    })
}

/// Before the intent: the destination's conditions, and the source pinned from its node (the
/// intent records the pin). A move's precheck is the same.
pub(in crate::engine) async fn precheck(
    c: &OpContext,
    t: &TransferRequest,
) -> Result<Option<OpProgress>, Error> {
    check_condition(c, &t.path, &t.condition).await?;
    Ok(Some(OpProgress::SourcePinned {
        source: pin_source(c, t).await?,
    }))
}

/// Recovery of a pending copy: a copy whose row shows only its pin may have been made by one
/// request ([`recover_pinned`]); otherwise it goes on from the step its row records.
pub(in crate::engine) async fn recover(
    c: &OpContext,
    entry: &JournalEntry,
    t: &TransferRequest,
) -> Result<Outcome, Error> {
    let source = super::source_store(c, &t.source.mount)?;
    let pinned_only = matches!(&entry.progress, Some(OpProgress::SourcePinned { .. }));
    if let Some(OpProgress::SourcePinned { source: pinned }) = &entry.progress {
        if let Some(done) = recover_pinned(c, entry.id, t, &source, pinned).await? {
            return Ok(done);
        }
    }
    c.ensure_settings_honoured().await?;
    // The copy may have been made (the row is pending because its CopyObject may have been
    // applied), yet the destination did not show it (a store serving an older state) and it
    // cannot be made again (found by the adversarial run, seed 20261205, six clients: "I1: size
    // of m:a/p3").
    act(c, entry.id, t, &source, entry.progress.clone())
        .await
        .map_err(|e| match pinned_only {
            true => copy_not_found_again(t, e),
            false => e,
        })
}

pub(in crate::engine) async fn act(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    progress: Option<OpProgress>,
) -> Result<Outcome, Error> {
    let (_, dest, upload_id) = copy_steps(c, journal_id, t, source, progress, false).await?;
    Ok(Outcome {
        change: NodeChange::Upsert(dest),
        upload_id,
        source_kept: false,
    })
}

/// Recovery of a copy whose row shows only its pin: a single-request copy records no step after
/// it, so the copy may have happened. A destination that proves to hold the pinned content (the
/// store's SHA-256, or this row's write marker with it) is committed without copying again —
/// the source may have changed since, and a copy conditioned on the pinned ETag would then fail
/// although the copy was made. Anything else (`None`): copy as usual.
async fn recover_pinned(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    pinned: &PinnedSource,
) -> Result<Option<Outcome>, Error> {
    Ok(proven_at_destination(c, journal_id, t, source, pinned)
        .await?
        .map(|node| Outcome {
            change: NodeChange::Upsert(node),
            upload_id: None,
            source_kept: false,
        }))
}

/// The destination's node when it proves to hold a single-request copy of the pinned content
/// made by this row (the store's SHA-256, or this row's write marker with it); `None` otherwise
/// (or for a copy made in parts, whose steps are recorded).
pub(super) async fn proven_at_destination(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    pinned: &PinnedSource,
) -> Result<Option<NodeMeta>, Error> {
    if !single_request(c, source, pinned.size) {
        return Ok(None);
    }
    let seen = c.store.head(&t.key).await?;
    let Ok(verified) = prove_content(&seen, pinned.size, pinned.sha256, journal_id, true) else {
        return Ok(None);
    };
    let seen = seen.expect("proven objects exist");
    Ok(Some(node_for(c, &seen, pinned.sha256, verified).await?))
}

/// A recovery that could not find its copy at the destination and cannot make it again (the
/// source went or changed since it was pinned), while the copy may have been made: an unknown,
/// not a failure — recovery looks again until the consistency horizon.
///
/// Only a refusal naming the source: a destination that refused the copy's Complete (rule 9:
/// someone else's object at the key) is a definite refusal of the copy itself, not an unknown.
pub(super) fn copy_not_found_again(t: &TransferRequest, e: Error) -> Error {
    match e {
        Error::NotFound {
            ref mount,
            ref path,
        }
        | Error::PreconditionFailed {
            ref mount,
            ref path,
            ..
        } if *mount == t.source.mount && *path == t.source.path => Error::Unverified {
            key: t.key.clone(),
            reason: format!(
                "the copy may have been applied, the destination does not show it, and it cannot be made again ({e})"
            ),
        },
        e => e,
    }
}

/// Whether a copy of `size` bytes from `source` is one request (CopyObject, or one PUT of the
/// bytes read) rather than a multipart upload.
fn single_request(c: &OpContext, source: &MountStore, size: u64) -> bool {
    match c.spec.can_copy_server_side_from(source.spec()) {
        true => size <= c.spec.copy_threshold,
        false => size <= c.spec.multipart_threshold,
    }
}

/// Steps 1–3; shared with move. Returns the pinned source, the verified destination and the
/// multipart upload (part copy, large streamed copy) the commit completes. `copied` is recorded
/// for a move (its next step deletes the source, after which the copy cannot be made again) and
/// for a multipart copy (its upload is completed in the store before the commit); a
/// single-request copy is committed straight after, and its recovery proves the destination
/// instead ([`recover_pinned`]).
pub(super) async fn copy_steps(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    progress: Option<OpProgress>,
    is_move: bool,
) -> Result<(PinnedSource, NodeMeta, Option<String>), Error> {
    let pinned = match progress {
        // The copy was verified before the step was recorded, but the destination may have been
        // written since (the executor down for a while, a writer outside it): a move must not
        // delete its source on the strength of an old look. Not the copy any more: copy again
        // from the same pin (the source is still there).
        Some(OpProgress::Copied { source, dest }) => {
            match still_holds(c, journal_id, &t.key, dest).await? {
                Ok(node) => return Ok((source, node, None)),
                Err(reason) => {
                    log::warn!(
                        "mount {}: journal {journal_id}: '{}' no longer holds the copy ({reason}); copying again",
                        c.spec.name,
                        t.path
                    );
                    source
                }
            }
        }
        Some(OpProgress::SourceDeleted { source, dest }) => return Ok((source, dest, None)),
        Some(OpProgress::SourcePinned { source }) => source,
        // A row written before pins went with the intent. (`Completing` is a multipart put's
        // step, never recorded for a copy.)
        None | Some(OpProgress::Completing { .. }) => {
            check_condition(c, &t.path, &t.condition).await?;
            let pinned = pin_source(c, t).await?;
            c.record_progress(
                journal_id,
                OpProgress::SourcePinned {
                    source: pinned.clone(),
                },
            )
            .await?;
            pinned
        }
    };
    let (dest, upload_id) = if c.spec.can_copy_server_side_from(source.spec()) {
        server_side(c, journal_id, t, source, &pinned).await?
    } else {
        streamed(c, journal_id, t, source, &pinned).await?
    };
    if is_move || upload_id.is_some() {
        c.record_progress(
            journal_id,
            OpProgress::Copied {
                source: pinned.clone(),
                dest: dest.clone(),
            },
        )
        .await?;
    }
    Ok((pinned, dest, upload_id))
}

/// The source's node as the copy pins it: `NotFound` without one.
pub(super) async fn pin_source(c: &OpContext, t: &TransferRequest) -> Result<PinnedSource, Error> {
    let node = c
        .meta
        .node(&t.source.mount, &t.source.path)
        .await?
        .ok_or_else(|| Error::NotFound {
            mount: t.source.mount.clone(),
            path: t.source.path.clone(),
        })?;
    Ok(PinnedSource {
        size: node.meta.size,
        sha256: node.meta.sha256,
        etag: node.meta.etag,
        generation: node.generation,
        user_metadata: node.meta.user_metadata,
    })
}

/// A copy refused because its source changed or went: a definite refusal — unless an earlier
/// attempt of the same request may have been applied (its answer lost, the retry then meeting a
/// source changed since): that stays the `MaybeApplied` storage error, so the row is left to
/// recovery, which looks for the copy at the destination.
fn source_changed(t: &TransferRequest, e: Error) -> Error {
    if matches!(
        e,
        Error::Storage {
            outcome: crate::store_error::Outcome::MaybeApplied,
            ..
        }
    ) {
        return e;
    }
    match e {
        Error::Storage { source, .. } if source.kind == StoreErrorKind::PreconditionFailed => {
            Error::PreconditionFailed {
                mount: t.source.mount.clone(),
                path: t.source.path.clone(),
                reason: "the source object changed in the store since its node was recorded".into(),
            }
        }
        Error::Storage { source, .. }
            if source.kind == StoreErrorKind::NotFound
                && source.code.as_deref() != Some("NoSuchUpload") =>
        {
            Error::NotFound {
                mount: t.source.mount.clone(),
                path: t.source.path.clone(),
            }
        }
        e => e,
    }
}

async fn server_side(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    pinned: &PinnedSource,
) -> Result<(NodeMeta, Option<String>), Error> {
    if pinned.size <= c.spec.copy_threshold {
        let input = CopyObjectInput {
            source_bucket: source.spec().bucket.clone(),
            source_key: t.source.key.clone(),
            source_etag: pinned.etag.clone(),
            size: pinned.size,
            key: t.key.clone(),
            marker: WriteMarker {
                journal_id,
                sha256: Some(pinned.sha256),
            },
            metadata: pinned.user_metadata.clone(),
        };
        let answered = c
            .store
            .copy(&input)
            .await
            .map_err(|e| source_changed(t, e))?;
        let node = if c.spec.verify.trusts_copy_and_delete_answers()
            && proven_by_answer(c, &answered, pinned.sha256)
        {
            node_for(
                c,
                &answered,
                pinned.sha256,
                Verification::Sha256InCopyResponse,
            )
            .await?
        } else {
            verify_copy(c, journal_id, &t.key, pinned).await?
        };
        return Ok((node, None));
    }
    let req = PartCopyRequest {
        mount: c.spec.name.clone(),
        path: t.path.clone(),
        key: t.key.clone(),
        complete_condition: super::complete_condition(c, &t.path, t.condition.if_none_match)
            .await?,
        journal_id,
        source_bucket: source.spec().bucket.clone(),
        source_key: t.source.key.clone(),
        source_etag: pinned.etag.clone(),
        size: pinned.size,
        sha256: pinned.sha256,
        part_size: c.spec.part_size,
        concurrency: c.spec.part_concurrency as usize,
        resume: c.meta.upload_of(journal_id).await?,
        metadata: pinned.user_metadata.clone(),
    };
    let done = copy_parts(req, &c.upload_deps())
        .await
        .map_err(|e| source_changed(t, e))?;
    let node = super::multipart_put::verify_upload(c, &t.key, journal_id, &done).await?;
    Ok((node, Some(done.upload_id)))
}

/// HEADs the destination until it proves to be this copy of the pinned source.
async fn verify_copy(
    c: &OpContext,
    journal_id: i64,
    key: &str,
    pinned: &PinnedSource,
) -> Result<NodeMeta, Error> {
    let (seen, verified) = c
        .verify(key, |seen: &Option<ObjectMeta>| {
            prove_content(seen, pinned.size, pinned.sha256, journal_id, false)
                .map(|v| (seen.clone().expect("proven objects exist"), v))
        })
        .await?;
    node_for(c, &seen, pinned.sha256, verified).await
}

/// Copies through the executor: GET the pinned source (If-Match its ETag), hash it while it
/// passes, and PUT it (or upload it in parts above the destination's multipart threshold). The
/// bytes read must hash to the pinned SHA-256, or nothing is committed.
async fn streamed(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    pinned: &PinnedSource,
) -> Result<(NodeMeta, Option<String>), Error> {
    let body = source
        .get(&t.source.key, None, Some(&pinned.etag))
        .await
        .map_err(|e| source_changed(t, e))?;
    let mismatch = |actual: Sha256Digest| Error::ChecksumMismatch {
        mount: t.source.mount.clone(),
        path: t.source.path.clone(),
        expected: pinned.sha256.to_hex(),
        actual: actual.to_hex(),
    };
    if pinned.size <= c.spec.multipart_threshold {
        let mut buf = BytesMut::with_capacity(pinned.size as usize);
        let mut hasher = Sha256::new();
        let mut stream = body.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| Error::Storage {
                op: S3Op::GetObject,
                key: t.source.key.clone(),
                source,
                outcome: RequestOutcome::NotApplied,
            })?;
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        let read = Sha256Digest::finish(hasher);
        if read != pinned.sha256 || buf.len() as u64 != pinned.size {
            return Err(mismatch(read));
        }
        let input = PutObjectInput {
            key: t.key.clone(),
            body: buf.freeze(),
            sha256: read,
            content_type: None,
            marker: WriteMarker {
                journal_id,
                sha256: Some(read),
            },
            metadata: pinned.user_metadata.clone(),
            if_none_match: t.condition.if_none_match,
            if_match: None,
        };
        c.store.put(&input).await?;
        let node = verify_copy(c, journal_id, &t.key, pinned).await?;
        return Ok((node, None));
    }
    let job = UploadRequest {
        mount: c.spec.name.clone(),
        path: t.path.clone(),
        key: t.key.clone(),
        journal_id,
        size: Some(pinned.size),
        source: UploadSource::Stream,
        reader: Some(reader_from_stream(body.stream)),
        content_type: None,
        metadata: pinned.user_metadata.clone(),
        resume: c.meta.upload_of(journal_id).await?,
        part_size: c.spec.part_size,
        concurrency: c.spec.part_concurrency as usize,
        retain_on_failure: false,
        complete_condition: super::complete_condition(c, &t.path, t.condition.if_none_match)
            .await?,
        sink: None,
        record_content: false,
        // Checked before Complete: an object of other content never replaces the destination's
        // (deleting it afterwards would leave the destination's node naming nothing).
        expected_sha256: Some(pinned.sha256),
    };
    let done = match UploadHandle::start(job, c.upload_deps()).join().await {
        // Named by the source, whose bytes were not the pinned ones.
        Err(Error::ChecksumMismatch { actual, .. }) => {
            return Err(Error::ChecksumMismatch {
                mount: t.source.mount.clone(),
                path: t.source.path.clone(),
                expected: pinned.sha256.to_hex(),
                actual,
            })
        }
        r => r?,
    };
    let mut node = super::multipart_put::verify_upload(c, &t.key, journal_id, &done).await?;
    if node.verified == Verification::SizeOnly {
        // The bytes that went up are the bytes read, and they hash to the source's SHA-256.
        node.verified = Verification::Sha256VerifiedByExecutor;
    }
    Ok((node, Some(done.upload_id)))
}
