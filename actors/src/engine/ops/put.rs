//! A single-request put: PUT with the SHA-256 as checksum and the write marker in the object's
//! metadata, then HEAD until the object proves to be this put's.

use super::{check_condition, prove_content, proven_by_answer};
use crate::engine::context::node_for;
use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{
    JournalEntry, NodeChange, NodeMeta, OpProgress, PutRequest, Verification, WriteMarker,
};
use crate::ports::{PutObjectInput, StoreErrorKind};
use crate::store::Outcome as RequestOutcome;

/// Before the intent: the put's conditions on the path.
pub(in crate::engine) async fn precheck(
    c: &OpContext,
    r: &PutRequest,
) -> Result<Option<OpProgress>, Error> {
    check_condition(c, &r.path, &r.condition).await?;
    Ok(None)
}

pub(in crate::engine) async fn act(
    c: &OpContext,
    journal_id: i64,
    request: &PutRequest,
    body: bytes::Bytes,
) -> Result<Outcome, Error> {
    let PutRequest {
        path,
        key,
        sha256,
        content_type,
        condition,
        metadata,
        ..
    } = request;
    // The conditions were checked by `precheck`, under the path's lock held since (and the
    // commit checks them again in its transaction).
    let mut input = PutObjectInput {
        key: key.clone(),
        body,
        sha256: *sha256,
        content_type: content_type.clone(),
        marker: WriteMarker {
            journal_id,
            sha256: Some(*sha256),
        },
        metadata: metadata.clone(),
        if_none_match: condition.if_none_match,
        if_match: if condition.if_none_match {
            None
        } else {
            super::node_etag_if_honoured(c, path, |k| k.put_if_match).await?
        },
    };
    crate::failpoint::hit("before_put").await;
    let mut answer = c.store.put(&input).await;
    if let (
        Some(etag),
        Err(Error::Storage {
            source, outcome, ..
        }),
    ) = (&input.if_match, &answer)
    {
        // Refused for sure: the key does not hold the object the node names. What it holds
        // decides (`replaceable`): the PUT is sent once more, conditioned on that.
        if *outcome == RequestOutcome::NotApplied
            && matches!(
                source.kind,
                StoreErrorKind::PreconditionFailed | StoreErrorKind::NotFound
            )
        {
            let Some((create, seen)) = super::replaceable(c, key).await? else {
                return Err(Error::PreconditionFailed {
                    mount: c.spec.name.clone(),
                    path: path.clone(),
                    reason: format!(
                        "the key no longer holds the object the path's node names (ETag {etag}) but one this executor did not write: another writer changed it; nothing was written"
                    ),
                });
            };
            (input.if_none_match, input.if_match) = (create, seen);
            answer = c.store.put(&input).await;
        }
    }
    let answered = match answer {
        Ok(answered) => answered,
        // Refused by its condition — `If-Match`: the key holds another object than the write
        // was conditioned on (or none); `If-None-Match`: it holds one — unless an earlier attempt
        // of this very PUT wrote it (its answer lost), which is then this put's.
        Err(Error::Storage {
            source, outcome, ..
        }) if source.kind == StoreErrorKind::PreconditionFailed
            || (input.if_match.is_some() && source.kind == StoreErrorKind::NotFound) =>
        {
            let reason = match input.if_match.as_deref() {
                Some(etag) => format!(
                    "the key no longer holds the object the write was conditioned on (ETag {etag}): another writer changed it; nothing was written"
                ),
                None => "create-only, but the store already holds an object at the key".into(),
            };
            let refused = Error::PreconditionFailed {
                mount: c.spec.name.clone(),
                path: path.clone(),
                reason,
            };
            if outcome != RequestOutcome::MaybeApplied {
                return Err(refused);
            }
            return own_object_after_lost_answer(
                c,
                journal_id,
                request,
                input.if_match.as_deref(),
                refused,
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    // Under `verify = put-response` / `response` the PUT's answer is the proof when the store
    // echoed the SHA-256 the executor sent (so it checked the body against it).
    let node = match c.spec.verify.trusts_put_answer() && proven_by_answer(c, &answered, *sha256) {
        true => node_for(c, &answered, *sha256, Verification::Sha256InPutResponse).await?,
        false => verified_node(c, journal_id, request, false).await?,
    };
    Ok(Outcome {
        change: NodeChange::Upsert(node),
        upload_id: None,
        source_kept: false,
    })
}

/// A create-only PUT refused after an attempt whose answer was lost: the object at the key is
/// this put's if it proves to be (its journal id and SHA-256 in its metadata, or the store's
/// checksum) — then the put took effect and is committed; an object that is someone else's is the
/// refusal; none seen (a store that does not show it yet) leaves the row to recovery.
///
/// `replaced`: the ETag the write was conditioned on (`If-Match`), which the refusal proves the
/// key no longer holds. A HEAD that still shows it (or shows nothing, after an `If-None-Match`
/// refusal) is a store serving an older state, not someone else's write: the row is left to
/// recovery, which waits that out (found by the adversarial run, seed 20261205: the put was
/// failed while its object had landed — "I1: content of m:a/p0").
async fn own_object_after_lost_answer(
    c: &OpContext,
    journal_id: i64,
    request: &PutRequest,
    replaced: Option<&str>,
    refused: Error,
) -> Result<Outcome, Error> {
    // A HEAD that fails leaves the row to recovery too: the PUT may have landed.
    let seen = match c.store.head(&request.key).await {
        Ok(seen) => seen,
        Err(e) => {
            return Err(Error::Unverified {
                key: request.key.clone(),
                reason: format!(
                    "a PUT whose answer was lost was refused by its condition on retry, and the key could not be looked at: {e}"
                ),
            })
        }
    };
    let older_state = match &seen {
        None => true,
        Some(m) => replaced == Some(m.etag.as_str()),
    };
    if older_state {
        return Err(Error::Unverified {
            key: request.key.clone(),
            reason: "a PUT whose answer was lost was refused by its condition on retry, and the \
                     store does not show what it found there yet"
                .into(),
        });
    }
    match prove_content(&seen, request.size, request.sha256, journal_id, true) {
        Ok(verified) => {
            log::info!(
                "mount {}: the create-only PUT of '{}' was applied by an attempt whose answer was lost; committing it",
                c.spec.name,
                request.key
            );
            let node = node_for(c, seen.as_ref().expect("seen"), request.sha256, verified).await?;
            Ok(Outcome {
                change: NodeChange::Upsert(node),
                upload_id: None,
                source_kept: false,
            })
        }
        Err(_) => Err(refused),
    }
}

/// HEADs the key until it proves to hold this put's content, then applies the mount's settings
/// policy. A strict refusal removes the object this put wrote.
async fn verified_node(
    c: &OpContext,
    journal_id: i64,
    request: &PutRequest,
    require_proof: bool,
) -> Result<NodeMeta, Error> {
    let PutRequest {
        key, size, sha256, ..
    } = request;
    let (seen, verified) = c
        .verify(key, |seen| {
            prove_content(seen, *size, *sha256, journal_id, require_proof)
                .map(|v| (seen.clone().expect("proven objects exist"), v))
        })
        .await?;
    node_for(c, &seen, *sha256, verified).await
}

/// A pending put is committed only if the object proves to be this put's (store checksum, or the
/// journal id and SHA-256 in its metadata); a same-size object written by someone else is not.
///
/// A store may serve an older state for a while (eventual consistency): no object yet, or the
/// version the path's node names (the one this put overwrites). While the row is younger than
/// the consistency horizon, recovery leaves it pending and looks again at its next pass, so a
/// write the store accepted is not failed (and left behind untracked) too early. An object that
/// is neither this put's nor the node's is someone else's write: the put fails at once.
pub(in crate::engine) async fn recover(
    c: &OpContext,
    entry: &JournalEntry,
    request: &PutRequest,
) -> Result<Outcome, Error> {
    match verified_node(c, entry.id, request, true).await {
        Ok(node) => Ok(Outcome {
            change: NodeChange::Upsert(node),
            upload_id: None,
            source_kept: false,
        }),
        Err(Error::Unverified { key, reason }) if entry.idle < c.consistency_horizon => {
            let seen = c.store.head(&key).await?;
            // An older state: nothing, the node's object, or an object another row of this
            // executor wrote (a write conditioned on it, rule 9, may have replaced it). An
            // object without a write marker is someone else's write, and one with this row's
            // marker that does not prove (a wrong size) is this write gone wrong: both fail it.
            let older = match &seen {
                None => true,
                Some(m) if m.marker.as_ref().is_some_and(|k| k.journal_id != entry.id) => true,
                Some(m) => c
                    .meta
                    .node(&c.spec.name, &request.path)
                    .await?
                    .is_some_and(|n| !n.meta.etag.is_empty() && n.meta.etag == m.etag),
            };
            if older {
                Err(super::not_settled_yet(c, &key, &reason))
            } else {
                Err(Error::Unverified { key, reason })
            }
        }
        Err(e) => Err(e),
    }
}
