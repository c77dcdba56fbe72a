//! A delete: DELETE, then HEAD until the object is gone (under `verify = response` the store's
//! success is the proof and no HEAD is made). A path without a node is refused before
//! anything is sent to the store (by the pre-check, under the path's lock).

use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{DeleteRequest, NodeChange, ObjectMeta, OpProgress};
use crate::store::S3Op;

pub(super) fn gone(seen: &Option<ObjectMeta>) -> Result<(), String> {
    match seen {
        None => Ok(()),
        Some(m) => Err(format!("object still present ({} bytes)", m.size)),
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
pub(in crate::engine) async fn act(
    c: &OpContext,
    key: &str,
    batched: bool,
) -> Result<Outcome, Error> {
    if batched {
        c.store
            .call(S3Op::DeleteObject, key, || {
                c.deletes.delete(c.store.raw(), key)
            })
            .await?;
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

pub(in crate::engine) async fn recover(c: &OpContext, r: &DeleteRequest) -> Result<Outcome, Error> {
    let (path, key) = (r.path.as_str(), r.key.as_str());
    if c.meta.node(&c.spec.name, path).await?.is_none() {
        return Err(Error::NotFound {
            mount: c.spec.name.clone(),
            path: path.to_owned(),
        });
    }
    c.verify(key, gone).await?;
    Ok(Outcome {
        change: NodeChange::Remove,
        upload_id: None,
        source_kept: false,
    })
}
