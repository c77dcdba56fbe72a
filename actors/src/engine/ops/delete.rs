//! A delete: DELETE, then HEAD until the object is gone (under `verify = response` the store's
//! success is the proof and no HEAD is made). A path without a node is refused before
//! anything is sent to the store (by the pre-check, under the path's lock).

use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{NodeChange, ObjectMeta};

pub(super) fn gone(seen: &Option<ObjectMeta>) -> Result<(), String> {
    match seen {
        None => Ok(()),
        Some(m) => Err(format!("object still present ({} bytes)", m.size)),
    }
}

/// `batched`: the DELETE goes in a multi-object delete with others waiting (`delete_many`).
/// The node's existence was checked by the pre-check, under the path's lock held since.
pub(super) async fn act(c: &OpContext, key: &str, batched: bool) -> Result<Outcome, Error> {
    if batched {
        c.with_retry("DELETE", key, || c.deletes.delete(&c.store, key))
            .await?;
    } else {
        c.with_retry("DELETE", key, || c.store.delete_object(key))
            .await?;
    }
    if !c.spec.verify.trusts_copy_and_delete_answers() {
        c.verify(key, gone).await?;
    }
    Ok(Outcome {
        change: NodeChange::Remove,
        upload_id: None,
    })
}

pub(super) async fn recover(c: &OpContext, path: &str, key: &str) -> Result<Outcome, Error> {
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
    })
}
