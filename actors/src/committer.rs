//! The committer: the only writer of journal / nodes / snapshots / outbox rows for its mount.

use std::sync::Arc;

use actix::prelude::*;

use crate::messages::{CommitOperation, FailOperation, OutboxChanged, RecordIntent};
use crate::model::{IntentOutcome, OpResult};
use crate::notifier::NotifierActor;
use crate::ports::{MetaError, MetaStore};
use crate::retry::RetryPolicy;

/// Serialises the Postgres writes of one mount. Handlers use `AtomicResponse`, so the mailbox waits
/// while a write is in flight: writes apply in the order they were sent.
pub struct CommitterActor {
    mount: String,
    meta: Arc<dyn MetaStore>,
    notifier: Addr<NotifierActor>,
    retry: RetryPolicy,
}

impl CommitterActor {
    /// A committer for `mount` that pokes `notifier` after every commit.
    pub fn new(
        mount: String,
        meta: Arc<dyn MetaStore>,
        notifier: Addr<NotifierActor>,
        retry: RetryPolicy,
    ) -> Self {
        CommitterActor {
            mount,
            meta,
            notifier,
            retry,
        }
    }
}

impl Actor for CommitterActor {
    type Context = Context<Self>;
}

fn log_retry<'a>(
    mount: &'a str,
    what: &'static str,
) -> impl FnMut(&MetaError, std::time::Duration) + 'a {
    move |e, d| log::warn!("mount {mount}: {what} failed ({e}), retrying in {d:?}")
}

impl Handler<RecordIntent> for CommitterActor {
    type Result = AtomicResponse<Self, Result<IntentOutcome, MetaError>>;

    fn handle(&mut self, msg: RecordIntent, _ctx: &mut Self::Context) -> Self::Result {
        let meta = self.meta.clone();
        let retry = self.retry;
        let mount = self.mount.clone();
        AtomicResponse::new(Box::pin(
            async move {
                retry
                    .run(
                        || meta.begin(&msg.0),
                        |e| e.retryable,
                        log_retry(&mount, "recording intent"),
                    )
                    .await
            }
            .into_actor(self),
        ))
    }
}

impl Handler<CommitOperation> for CommitterActor {
    type Result = AtomicResponse<Self, Result<OpResult, MetaError>>;

    fn handle(&mut self, msg: CommitOperation, _ctx: &mut Self::Context) -> Self::Result {
        let meta = self.meta.clone();
        let retry = self.retry;
        let mount = self.mount.clone();
        AtomicResponse::new(Box::pin(
            async move {
                // The commit is idempotent: a retry after a lost acknowledgement finds the journal row
                // committed and returns its recorded result instead of writing again.
                retry
                    .run(
                        || meta.commit(&msg.0),
                        |e| e.retryable,
                        log_retry(&mount, "commit"),
                    )
                    .await
            }
            .into_actor(self)
            .map(|res, act, _ctx| {
                if res.is_ok() {
                    act.notifier.do_send(OutboxChanged);
                }
                res
            }),
        ))
    }
}

impl Handler<FailOperation> for CommitterActor {
    type Result = AtomicResponse<Self, Result<(), MetaError>>;

    fn handle(&mut self, msg: FailOperation, _ctx: &mut Self::Context) -> Self::Result {
        let meta = self.meta.clone();
        let retry = self.retry;
        let mount = self.mount.clone();
        AtomicResponse::new(Box::pin(
            async move {
                retry
                    .run(
                        || meta.fail(msg.journal_id, &msg.error),
                        |e| e.retryable,
                        log_retry(&mount, "marking failed"),
                    )
                    .await
            }
            .into_actor(self),
        ))
    }
}
