//! A move: the copy's steps (pin → copy → verify destination), then delete the source and verify
//! it gone (→ `source_deleted`), then ONE commit that writes the destination node and removes the
//! source node (the source mount's `verify = response` takes the DELETE's success as proof
//! instead). The source is never deleted before the destination is verified, and recovery
//! continues from the last recorded step — looking at the destination again first — so an
//! interrupted move ends with one live node.

use super::copy::copy_steps;
use super::delete::gone;
use super::still_holds;
use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{JournalEntry, NodeChange, NodeMeta, OpProgress, TransferRequest};
use crate::ports::StoreErrorKind;
use crate::store::MountStore;
use crate::store::Outcome as RequestOutcome;

pub(in crate::engine) async fn act(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    progress: Option<OpProgress>,
) -> Result<Outcome, Error> {
    // A run that had recorded its copy may have sent its source's DELETE (applied, its answer
    // lost).
    let may_have_deleted = matches!(progress, Some(OpProgress::Copied { .. }));
    steps(c, journal_id, t, source, progress, may_have_deleted).await
}

/// The move's steps from `progress`; `may_have_deleted`: the row had recorded its copy (a
/// progress recovery infers from the destination does not count).
async fn steps(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountStore,
    progress: Option<OpProgress>,
    may_have_deleted: bool,
) -> Result<Outcome, Error> {
    if let Some(OpProgress::SourceDeleted { dest, .. }) = progress {
        // Its commit removes the source's node: the source mount must be this host's.
        super::source_lease_held(c, &t.source.mount).await?;
        return finish(c, journal_id, t, dest, None).await;
    }
    let (pinned, dest, upload_id) = copy_steps(c, journal_id, t, source, progress, true).await?;
    // The source path may have been written since the move pinned it (between a run that ended
    // unverified and its recovery, the path's lock is free): its object is then someone's newer
    // write, not the move's source, and is kept; the move ends as a copy of what it pinned.
    // (Under the paths' locks held since, nothing on this executor writes it before the DELETE.)
    // Across mounts, the source mount's lease may have left this host since the move started:
    // the source is not this host's to delete, and the move ends as a copy too.
    if let Err(e) = super::source_lease_held(c, &t.source.mount).await {
        // Not a copy when an earlier run may have deleted the source: committing one would keep
        // the source's node naming what may be gone. The row waits for the source's owner.
        if !matches!(e, Error::NotOwner { .. }) || may_have_deleted {
            return Err(e);
        }
        log::warn!(
            "mount {}: journal {journal_id}: {e}; the source {}:{} is kept and the move is committed as a copy",
            c.spec.name,
            t.source.mount,
            t.source.path
        );
        return Ok(Outcome {
            change: NodeChange::Upsert(dest),
            upload_id,
            source_kept: true,
        });
    }
    let now = c.meta.node(&t.source.mount, &t.source.path).await?;
    if now.as_ref().map(|n| (n.generation, n.meta.sha256))
        != Some((pinned.generation, pinned.sha256))
    {
        log::warn!(
            "mount {}: journal {journal_id}: the move's source {}:{} was written since it was pinned (generation {} then, {:?} now); the source is kept and the move is committed as a copy",
            c.spec.name,
            t.source.mount,
            t.source.path,
            pinned.generation,
            now.as_ref().map(|n| n.generation)
        );
        return Ok(Outcome {
            change: NodeChange::Upsert(dest),
            upload_id,
            source_kept: true,
        });
    }
    let key = &t.source.key;
    // The source mount's store layer: its retry budget, its verification window. On a store
    // that honours `If-Match` on DeleteObject, only the pinned object is deleted (rule 9): an
    // object written at the key since (a paused owner's late write, a write behind the
    // executor's back) is kept, and the move ends as a copy of what it pinned. A key already
    // empty is an earlier attempt applied with its answer lost. What another mount's store
    // honours is what its owner's probe recorded (this host owns both mounts of a move); not
    // probed yet: unconditioned. (A record older than a change of the mount's store can only
    // name a condition the new store ignores — the DELETE then goes ahead, as unconditioned.)
    let conditioned = if t.source.mount == c.spec.name {
        c.conditions().await.is_ok_and(|k| k.delete_if_match)
    } else {
        c.meta
            .conditions(&t.source.mount)
            .await
            .ok()
            .flatten()
            .is_some_and(|k| k.delete_if_match)
    };
    // Set when the key no longer holds the pinned object because an earlier DELETE of this move
    // may have removed it (a late write landed there since): it is not waited for as gone.
    let mut replaced_after_delete = false;
    if conditioned {
        match source.delete_if_match(key, &pinned.etag).await {
            Err(Error::Storage { source: e, .. }) if e.kind == StoreErrorKind::NotFound => {}
            // A run that had recorded its copy may have deleted the pinned object itself (its
            // answer lost) before another write landed at the key: the pinned object is gone
            // either way, so the move goes on as deleted — its commit removes the source's node,
            // and the other object is left where it is, named by no node, not deleted.
            Err(Error::Storage {
                source: e,
                outcome: RequestOutcome::NotApplied,
                ..
            }) if e.kind == StoreErrorKind::PreconditionFailed && may_have_deleted => {
                log::warn!(
                    "mount {}: journal {journal_id}: the move's source key '{key}' holds another object than the one pinned (ETag {}), which an earlier attempt may have deleted; the move goes on as deleted and the other object is left",
                    c.spec.name,
                    pinned.etag
                );
                replaced_after_delete = true;
            }
            Err(Error::Storage {
                source: e,
                outcome: RequestOutcome::NotApplied,
                ..
            }) if e.kind == StoreErrorKind::PreconditionFailed => {
                log::warn!(
                    "mount {}: journal {journal_id}: the move's source key '{key}' holds another object than the one pinned (ETag {}); it is kept and the move is committed as a copy",
                    c.spec.name,
                    pinned.etag
                );
                return Ok(Outcome {
                    change: NodeChange::Upsert(dest),
                    upload_id,
                    source_kept: true,
                });
            }
            r => r?,
        }
    } else {
        source.delete(key).await?;
    }
    if !replaced_after_delete && !source.spec().verify.trusts_copy_and_delete_answers() {
        source.verify(key, gone).await?;
    }
    c.record_progress(
        journal_id,
        OpProgress::SourceDeleted {
            source: pinned,
            dest: dest.clone(),
        },
    )
    .await?;
    Ok(Outcome {
        change: NodeChange::Upsert(dest),
        upload_id,
        source_kept: false,
    })
}

/// Recovery of a pending move: it goes on from the step its row records — copy (or finish the
/// copy), delete the source, commit — looking at the destination again first
/// ([`copy_steps`]); a move whose source is already deleted only commits, once the destination
/// is proven again ([`finish`]).
pub(in crate::engine) async fn recover(
    c: &OpContext,
    entry: &JournalEntry,
    t: &TransferRequest,
) -> Result<Outcome, Error> {
    // A move past its source's DELETE only commits: it needs neither the source mount's store
    // nor the settings check (either refusing would fail a row whose source is gone).
    if let Some(OpProgress::SourceDeleted { dest, .. }) = &entry.progress {
        super::source_lease_held(c, &t.source.mount).await?;
        return finish(c, entry.id, t, dest.clone(), Some(entry.idle)).await;
    }
    let source = super::source_store(c, &t.source.mount)?;
    c.ensure_settings_honoured().await?;
    // A move whose row shows only its pin may have made its copy (its CopyObject applied, the
    // answer lost): a destination proving to hold it goes on from `copied` — the source is then
    // deleted (if its node is still the pinned one, rule 3) and the move committed — rather than
    // copying again from a source that may be gone. One that cannot be found nor made again is
    // an unknown until the consistency horizon, as for a copy.
    let progress = match &entry.progress {
        Some(OpProgress::SourcePinned { source: pinned }) => {
            match super::copy::proven_at_destination(c, entry.id, t, &source, pinned).await? {
                Some(dest) => Some(OpProgress::Copied {
                    source: pinned.clone(),
                    dest,
                }),
                None => entry.progress.clone(),
            }
        }
        other => other.clone(),
    };
    // Also after `copied`: its source's DELETE may have been applied, and a destination a stale
    // read does not show as the copy cannot be copied again (found by the adversarial run, seed
    // 20261205, six clients: "I1: node m:a/p3 names data/a/p3, which is not in …").
    let pinned_only = matches!(
        progress,
        Some(OpProgress::SourcePinned { .. } | OpProgress::Copied { .. })
    );
    let recorded_copy = matches!(entry.progress, Some(OpProgress::Copied { .. }));
    steps(c, entry.id, t, &source, progress, recorded_copy)
        .await
        .map_err(|e| match pinned_only {
            true => super::copy::copy_not_found_again(t, e),
            false => e,
        })
}

/// The rest of a move whose source is already deleted (recovery, or a failed move sent again
/// under its key): only the commit is left, but time has passed since the destination was
/// verified, so it is proven again first ([`still_holds`]). A destination that no longer holds
/// the copy cannot be committed: the source object is gone too, which needs a person
/// ([`Error::MoveCannotFinish`]) — unless the store may only be serving an older state (nothing
/// at the key, the version the destination's node names, an object this executor wrote): that
/// is waited out, the row left pending, while the row (`idle`: since its last journal write) is
/// younger than the consistency horizon. `None`: a call sending a failed move again (its row just
/// re-armed, so its age says nothing) — not waited out, so a move failed at the horizon is not
/// kept pending by its retries.
async fn finish(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    dest: NodeMeta,
    idle: Option<std::time::Duration>,
) -> Result<Outcome, Error> {
    match still_holds(c, journal_id, &t.key, dest).await? {
        Ok(node) => Ok(Outcome {
            change: NodeChange::Upsert(node),
            upload_id: None,
            source_kept: false,
        }),
        Err(reason) => {
            let older = match c.store.head(&t.key).await? {
                None => true,
                Some(m) => {
                    // Any object this executor wrote: another row's written before the copy,
                    // or this row's own, shown by this second look.
                    m.marker.is_some()
                        || c.meta
                            .node(&c.spec.name, &t.path)
                            .await?
                            .is_some_and(|n| !n.meta.etag.is_empty() && n.meta.etag == m.etag)
                }
            };
            let young = idle.is_some_and(|i| i < c.consistency_horizon);
            if older && young {
                return Err(super::not_settled_yet(c, &t.key, &reason));
            }
            Err(Error::MoveCannotFinish {
                mount: c.spec.name.clone(),
                path: t.path.clone(),
                source_mount: t.source.mount.clone(),
                source_path: t.source.path.clone(),
                reason,
            })
        }
    }
}
