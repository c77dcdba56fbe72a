//! A delete: DELETE, then HEAD until the object is gone. A path without a node is refused before
//! anything is sent to the store.

use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{NodeChange, ObjectMeta};

pub(super) fn gone(seen: &Option<ObjectMeta>) -> Result<(), String> {
    match seen {
        None => Ok(()),
        Some(m) => Err(format!("object still present ({} bytes)", m.size)),
    }
}

pub(super) async fn act(c: &OpContext, path: &str, key: &str) -> Result<Outcome, Error> {
    if c.meta.node(&c.spec.name, path).await?.is_none() {
        return Err(Error::NotFound {
            mount: c.spec.name.clone(),
            path: path.to_owned(),
        });
    }
    c.with_retry("DELETE", key, || c.store.delete_object(key))
        .await?;
    c.verify(key, gone).await?;
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
