//! A move: the copy's steps (pin → copy → verify destination), then delete the source and verify
//! it gone (→ `source_deleted`), then ONE commit that writes the destination node and removes the
//! source node (the source mount's `verify = response` takes the DELETE's success as proof
//! instead). The source is never deleted before the destination is verified, and recovery
//! continues from the last recorded step, so an interrupted move ends with one live node.

use super::copy::copy_steps;
use super::delete::gone;
use crate::engine::context::verify_in;
use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{NodeChange, OpProgress, TransferRequest};
use crate::ports::MountAccess;

pub(super) async fn act(
    c: &OpContext,
    journal_id: i64,
    t: &TransferRequest,
    source: &MountAccess,
    progress: Option<OpProgress>,
) -> Result<Outcome, Error> {
    let source_deleted = matches!(progress, Some(OpProgress::SourceDeleted { .. }));
    let (pinned, dest, upload_id) = copy_steps(c, journal_id, t, source, progress, true).await?;
    if !source_deleted {
        let key = &t.source.key;
        crate::retry::store_call(
            &source.spec.name,
            &c.retry,
            &c.counters,
            "DELETE",
            key,
            || source.store.delete_object(key),
        )
        .await?;
        if !source.spec.verify.trusts_copy_and_delete_answers() {
            verify_in(c, &source.store, key, gone).await?;
        }
        c.record_progress(
            journal_id,
            OpProgress::SourceDeleted {
                source: pinned,
                dest: dest.clone(),
            },
        )
        .await?;
    }
    Ok(Outcome {
        change: NodeChange::Upsert(dest),
        upload_id,
    })
}
