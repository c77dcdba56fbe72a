//! The committer: the only writer of journal / nodes / snapshots / outbox rows for its mount.

use std::sync::Arc;

use actix::prelude::*;

use crate::model::{CommitRecord, IntentOutcome, NewIntent, OpProgress, OpResult, UploadRecord};
use crate::notifier::{NotifierActor, OutboxChanged};
use crate::ports::{MetaError, MetaStore, UploadedPart};
use crate::retry::RetryPolicy;
use tokio::sync::oneshot;

type PartReply = oneshot::Sender<Result<(), MetaError>>;

/// Record an intent.
#[derive(Debug, Message)]
#[rtype(result = "Result<IntentOutcome, MetaError>")]
pub struct RecordIntent(pub NewIntent);

/// Commit a verified operation.
#[derive(Debug, Message)]
#[rtype(result = "Result<OpResult, MetaError>")]
pub struct CommitOperation(pub CommitRecord);

/// Mark an operation failed.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetaError>")]
pub struct FailOperation {
    /// Journal row.
    pub journal_id: i64,
    /// Error text stored in the row.
    pub error: String,
}

/// Record how far a copy / move got.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetaError>")]
pub struct RecordProgress {
    /// Journal row.
    pub journal_id: i64,
    /// The step reached.
    pub progress: OpProgress,
}

/// Record a started multipart upload.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetaError>")]
pub struct RecordUpload(pub UploadRecord);

/// Record one accepted part (parts arriving together share one transaction).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetaError>")]
pub struct RecordPart {
    /// Upload id.
    pub upload_id: String,
    /// The part.
    pub part: UploadedPart,
}

/// Serialises the Postgres writes of one mount. Handlers use `AtomicResponse`, so the mailbox waits
/// while a write is in flight: writes apply in the order they were sent.
pub struct CommitterActor {
    mount: String,
    meta: Arc<dyn MetaStore>,
    notifier: Addr<NotifierActor>,
    retry: RetryPolicy,
    /// Parts waiting for the next group commit.
    pending_parts: Vec<(String, UploadedPart, PartReply)>,
    flush_scheduled: bool,
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
            pending_parts: Vec::new(),
            flush_scheduled: false,
        }
    }

    /// One write, retried by the policy, with the mailbox paused until it ends.
    fn atomic_write<T, F, Fut>(
        &mut self,
        what: &'static str,
        op: F,
    ) -> ResponseActFuture<Self, Result<T, MetaError>>
    where
        T: 'static,
        F: Fn(Arc<dyn MetaStore>) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<T, MetaError>>,
    {
        let meta = self.meta.clone();
        let retry = self.retry;
        let mount = self.mount.clone();
        Box::pin(
            async move {
                if what == "commit" {
                    // Lets a test stop the process with a commit about to be written.
                    crate::failpoint::hit("before_commit_transaction").await;
                }
                let result = retry
                    .run(
                        || op(meta.clone()),
                        |e| e.retryable,
                        log_retry(&mount, what),
                    )
                    .await;
                if let Err(e) = &result {
                    if e.fenced {
                        log::warn!(
                            "mount {mount}: {what} refused by the lease fence: this executor no longer holds the mount's lease ({e})"
                        );
                    }
                }
                result
            }
            .into_actor(self),
        )
    }

    /// Writes every part recorded since the last flush in one go; the mailbox waits meanwhile, so
    /// the writes stay ordered with the other handlers'.
    fn flush_parts(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        let batch = std::mem::take(&mut self.pending_parts);
        if batch.is_empty() {
            return;
        }
        let mut by_upload: Vec<(String, Vec<UploadedPart>)> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for (upload_id, part, reply) in batch {
            replies.push(reply);
            match by_upload.iter_mut().find(|(u, _)| *u == upload_id) {
                Some((_, parts)) => parts.push(part),
                None => by_upload.push((upload_id, vec![part])),
            }
        }
        let meta = self.meta.clone();
        let retry = self.retry;
        let mount = self.mount.clone();
        let write = async move {
            for (upload_id, parts) in &by_upload {
                retry
                    .run(
                        || meta.record_parts(upload_id, parts),
                        |e| e.retryable,
                        log_retry(&mount, "recording parts"),
                    )
                    .await?;
            }
            Ok::<(), MetaError>(())
        };
        ctx.wait(write.into_actor(self).map(move |res, _act, _ctx| {
            for reply in replies {
                let _ = reply.send(res.clone());
            }
        }));
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
        let intent = Arc::new(msg.0);
        AtomicResponse::new(self.atomic_write("recording intent", move |meta| {
            let intent = intent.clone();
            async move { meta.begin(&intent).await }
        }))
    }
}

impl Handler<CommitOperation> for CommitterActor {
    type Result = AtomicResponse<Self, Result<OpResult, MetaError>>;

    fn handle(&mut self, msg: CommitOperation, _ctx: &mut Self::Context) -> Self::Result {
        let record = Arc::new(msg.0);
        // The commit is idempotent: a retry after a lost acknowledgement finds the journal row
        // committed and returns its recorded result instead of writing again.
        let started = std::time::Instant::now();
        let mount = self.mount.clone();
        let write = self.atomic_write("commit", move |meta| {
            let record = record.clone();
            async move { meta.commit(&record).await }
        });
        let write = Box::pin(write.map(move |res, _act: &mut Self, _ctx| {
            metrics::histogram!("filestore_s3_commit_seconds", "mount" => mount)
                .record(started.elapsed().as_secs_f64());
            res
        }));
        AtomicResponse::new(Box::pin(write.map(|res, act: &mut Self, _ctx| {
            if res.is_ok() {
                act.notifier.do_send(OutboxChanged);
            }
            res
        })))
    }
}

impl Handler<FailOperation> for CommitterActor {
    type Result = AtomicResponse<Self, Result<(), MetaError>>;

    fn handle(&mut self, msg: FailOperation, _ctx: &mut Self::Context) -> Self::Result {
        let msg = Arc::new(msg);
        AtomicResponse::new(self.atomic_write("marking failed", move |meta| {
            let msg = msg.clone();
            async move { meta.fail(msg.journal_id, &msg.error).await }
        }))
    }
}

impl Handler<RecordProgress> for CommitterActor {
    type Result = AtomicResponse<Self, Result<(), MetaError>>;

    fn handle(&mut self, msg: RecordProgress, _ctx: &mut Self::Context) -> Self::Result {
        let msg = Arc::new(msg);
        AtomicResponse::new(self.atomic_write("recording progress", move |meta| {
            let msg = msg.clone();
            async move { meta.record_progress(msg.journal_id, &msg.progress).await }
        }))
    }
}

impl Handler<RecordUpload> for CommitterActor {
    type Result = AtomicResponse<Self, Result<(), MetaError>>;

    fn handle(&mut self, msg: RecordUpload, _ctx: &mut Self::Context) -> Self::Result {
        let record = Arc::new(msg.0);
        AtomicResponse::new(self.atomic_write("recording upload", move |meta| {
            let record = record.clone();
            async move { meta.record_upload(&record).await }
        }))
    }
}

impl Handler<RecordPart> for CommitterActor {
    type Result = ResponseFuture<Result<(), MetaError>>;

    fn handle(&mut self, msg: RecordPart, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.pending_parts.push((msg.upload_id, msg.part, tx));
        if !self.flush_scheduled {
            // Runs after the messages already in the mailbox: parts finishing together share a
            // transaction (group commit).
            self.flush_scheduled = true;
            ctx.run_later(std::time::Duration::ZERO, |act, ctx| act.flush_parts(ctx));
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(MetaError {
                    fenced: false,
                    retryable: true,
                    message: "committer stopped before recording the part".into(),
                })
            })
        })
    }
}
