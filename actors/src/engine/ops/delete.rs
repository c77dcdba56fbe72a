//! A delete: DELETE, then HEAD until the object is gone (under `verify = response` the store's
//! success is the proof and no HEAD is made). A path without a node is refused before
//! anything is sent to the store (by the pre-check, under the path's lock).

use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{DeleteRequest, JournalEntry, NodeChange, ObjectMeta, OpProgress};
use crate::ports::StoreErrorKind;
use crate::store::{Outcome as RequestOutcome, S3Op};

pub(super) fn gone(seen: &Option<ObjectMeta>) -> Result<(), String> {
    match seen {
        None => Ok(()),
        Some(m) => Err(format!("object still present ({} bytes)", m.size)),
    }
}

/// DeleteObject `If-Match`; a key already empty is what a delete wants.
async fn delete_if_match(c: &OpContext, key: &str, etag: &str) -> Result<(), Error> {
    match c.store.delete_if_match(key, etag).await {
        Err(Error::Storage { source, .. }) if source.kind == StoreErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Before the intent: the path has a node (a delete of nothing is refused, and sends nothing).
pub(in crate::engine) async fn precheck(
    c: &OpContext,
    r: &DeleteRequest,
) -> Result<Option<OpProgress>, Error> {
    if c.meta.node(&c.spec.name, &r.path).await?.is_none() {
        return Err(Error::NotFound {
            mount: c.spec.name.clone(),
            path: r.path.clone(),
        });
    }
    Ok(None)
}

/// `batched`: the DELETE goes in a multi-object delete with others waiting (`delete_many`).
/// The node's existence was checked by the pre-check, under the path's lock held since.
/// A single DELETE is sent only while the key holds the object the node names, on a store that
/// honours `If-Match` on DeleteObject: another writer's object at the key is not deleted (the
/// delete is refused, `PreconditionFailed`), and a key already empty is what the delete wants.
/// (The DELETEs of `delete_many` go unconditioned in DeleteObjects.)
pub(in crate::engine) async fn act(
    c: &OpContext,
    r: &DeleteRequest,
    batched: bool,
) -> Result<Outcome, Error> {
    let key = r.key.as_str();
    if batched {
        c.store
            .call(S3Op::DeleteObject, key, || {
                c.deletes.delete(c.store.raw(), key)
            })
            .await?;
    } else if let Some(etag) =
        super::node_etag_if_honoured(c, &r.path, |k| k.delete_if_match).await?
    {
        let mut sent = delete_if_match(c, key, &etag).await;
        if let Err(Error::Storage {
            source,
            outcome: RequestOutcome::NotApplied,
            ..
        }) = &sent
        {
            if source.kind == StoreErrorKind::PreconditionFailed {
                // The key holds another object than the node names: one this executor wrote
                // is deleted (that very one); someone else's is not.
                sent = match super::replaceable(c, key).await? {
                    Some((_, Some(seen))) => delete_if_match(c, key, &seen).await,
                    // The refusal proved an object there: a HEAD showing none is an older
                    // state; recovery settles the row once the store shows the key.
                    Some((_, None)) => {
                        return Err(Error::Unverified {
                            key: key.to_owned(),
                            reason: "the DELETE was refused by its condition, and the store does not show what it found there yet".into(),
                        })
                    }
                    None => {
                        return Err(Error::PreconditionFailed {
                            mount: c.spec.name.clone(),
                            path: r.path.clone(),
                            reason: format!(
                                "the key holds another object than the path's node names (ETag {etag}), one this executor did not write: another writer changed it; nothing was deleted"
                            ),
                        })
                    }
                };
            }
        }
        sent?;
    } else {
        c.store.delete(key).await?;
    }
    if !c.spec.verify.trusts_copy_and_delete_answers() {
        c.verify(key, gone).await?;
    }
    Ok(Outcome {
        change: NodeChange::Remove,
        upload_id: None,
        source_kept: false,
    })
}

/// A pending delete is committed once the object is gone. An object still shown may be a store
/// serving an older state after the DELETE was applied: while the row is younger than the
/// consistency horizon it stays pending and is looked at again at the next pass (the node names
/// that object meanwhile, as before the delete); after that the delete fails (the object is
/// there, the node names it).
pub(in crate::engine) async fn recover(
    c: &OpContext,
    entry: &JournalEntry,
    r: &DeleteRequest,
) -> Result<Outcome, Error> {
    let (path, key) = (r.path.as_str(), r.key.as_str());
    if c.meta.node(&c.spec.name, path).await?.is_none() {
        return Err(Error::NotFound {
            mount: c.spec.name.clone(),
            path: path.to_owned(),
        });
    }
    match c.verify(key, gone).await {
        Err(Error::Unverified { key, reason }) if entry.idle < c.consistency_horizon => {
            return Err(super::not_settled_yet(c, &key, &reason));
        }
        r => r?,
    }
    Ok(Outcome {
        change: NodeChange::Remove,
        upload_id: None,
        source_kept: false,
    })
}
