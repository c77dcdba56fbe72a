//! The committer: the only writer of journal / nodes / snapshots / outbox rows for its mount.
//!
//! Writes queue in the order their messages arrived and go to Postgres in batches (group commit):
//! one batch in flight at a time, each write of a batch atomic on its own
//! ([`MetaStore::apply`]). The mailbox is never paused: while a batch runs, or waits to be retried
//! after a retryable failure (connection lost, Postgres restarting), new writes keep queueing
//! behind it and status questions are answered. A retried batch goes first again, so writes apply
//! in the order they were sent, and each write is idempotent, so a batch whose acknowledgement was
//! lost can be sent again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::model::{CommitRecord, IntentOutcome, NewIntent, OpProgress, OpResult, UploadRecord};
use crate::notifier::{NotifierActor, OutboxChanged};
use crate::ports::{MetaError, MetaOutput, MetaStore, MetaWrite, UploadedPart};
use crate::retry::RetryPolicy;
use tokio::sync::oneshot;

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

/// Record one accepted part.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MetaError>")]
pub struct RecordPart {
    /// Upload id.
    pub upload_id: String,
    /// The part.
    pub part: UploadedPart,
}

/// What the committer is doing, answered at once (the mailbox never waits for Postgres).
#[derive(Debug, Message)]
#[rtype(result = "CommitterStatus")]
pub struct QueryCommitter;

/// Answer to [`QueryCommitter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitterStatus {
    /// Writes waiting, the batch in flight or waiting for its retry included.
    pub queued: usize,
    /// A batch is being written.
    pub writing: bool,
    /// Failed attempts of the batch at the head of the queue (0 when the last one succeeded).
    pub failed_attempts: u32,
}

/// Largest number of writes sharing one transaction.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Where the answer to one write goes.
enum Reply {
    Intent(oneshot::Sender<Result<IntentOutcome, MetaError>>),
    Commit(oneshot::Sender<Result<OpResult, MetaError>>, Instant),
    Unit(oneshot::Sender<Result<(), MetaError>>),
}

impl Reply {
    fn send(self, mount: &str, r: Result<MetaOutput, MetaError>) {
        fn mismatch(got: &MetaOutput) -> MetaError {
            MetaError {
                retryable: false,
                fenced: false,
                message: format!("internal: the metadata store answered a write with {got:?}"),
            }
        }
        match self {
            Reply::Intent(tx) => {
                let _ = tx.send(r.and_then(|o| match o {
                    MetaOutput::Begun(x) => Ok(x),
                    o => Err(mismatch(&o)),
                }));
            }
            Reply::Commit(tx, queued_at) => {
                metrics::histogram!("filestore_s3_commit_seconds", "mount" => mount.to_owned())
                    .record(queued_at.elapsed().as_secs_f64());
                let _ = tx.send(r.and_then(|o| match o {
                    MetaOutput::Committed(x) => Ok(*x),
                    o => Err(mismatch(&o)),
                }));
            }
            Reply::Unit(tx) => {
                let _ = tx.send(r.map(|_| ()));
            }
        }
    }
}

struct Job {
    write: MetaWrite,
    reply: Reply,
}

/// Serialises the Postgres writes of one mount (see the module documentation).
pub struct CommitterActor {
    mount: String,
    meta: Arc<dyn MetaStore>,
    notifier: Addr<NotifierActor>,
    retry: RetryPolicy,
    max_batch: usize,
    queue: VecDeque<Job>,
    /// A batch is being written, or waits for its retry: no other starts.
    busy: bool,
    /// Writes of the batch being written (0: none is).
    in_flight: usize,
    failed_attempts: u32,
    failing_since: Option<Instant>,
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
            max_batch: DEFAULT_MAX_BATCH,
            queue: VecDeque::new(),
            busy: false,
            in_flight: 0,
            failed_attempts: 0,
            failing_since: None,
        }
    }

    /// At most `n` (≥ 1) writes per transaction.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    fn enqueue(&mut self, write: MetaWrite, reply: Reply, ctx: &mut Context<Self>) {
        self.queue.push_back(Job { write, reply });
        if !self.busy {
            // Started after the messages already in the mailbox: writes arriving together share
            // a transaction.
            self.busy = true;
            ctx.run_later(Duration::ZERO, |act, ctx| act.write_next(ctx));
        }
    }

    /// Writes the next batch; called with `busy` set.
    fn write_next(&mut self, ctx: &mut Context<Self>) {
        if self.queue.is_empty() {
            self.busy = false;
            return;
        }
        let n = self.queue.len().min(self.max_batch);
        let (writes, replies): (Vec<MetaWrite>, Vec<Reply>) =
            self.queue.drain(..n).map(|j| (j.write, j.reply)).unzip();
        metrics::histogram!("filestore_s3_commit_batch_size", "mount" => self.mount.clone())
            .record(n as f64);
        let meta = self.meta.clone();
        self.in_flight = n;
        let write = async move {
            if writes.iter().any(|w| matches!(w, MetaWrite::Commit(_))) {
                // Lets a test stop the process with a commit about to be written.
                crate::failpoint::hit("before_commit_transaction").await;
            }
            let result = meta.apply(&writes).await;
            (writes, result)
        };
        ctx.spawn(
            write
                .into_actor(self)
                .map(move |(writes, result), act, ctx| act.written(writes, replies, result, ctx)),
        );
    }

    fn written(
        &mut self,
        writes: Vec<MetaWrite>,
        replies: Vec<Reply>,
        result: crate::ports::BatchResult,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight = 0;
        let mut jobs = writes
            .into_iter()
            .zip(replies)
            .map(|(write, reply)| Job { write, reply });
        match result {
            Ok(outcomes) => {
                self.failed_attempts = 0;
                self.failing_since = None;
                let mut committed = false;
                for outcome in outcomes {
                    let Some(job) = jobs.next() else { break };
                    if let Err(e) = &outcome {
                        log::warn!("mount {}: {} failed: {e}", self.mount, job.write.what());
                    }
                    committed |= matches!(outcome, Ok(MetaOutput::Committed(_)));
                    job.reply.send(&self.mount, outcome);
                }
                if committed {
                    self.notifier.do_send(OutboxChanged);
                }
                // Writes the store did not try go first again, at once: the next attempt
                // reports what stopped them.
                self.requeue_front(jobs.collect());
                self.write_next(ctx);
            }
            Err(e) if e.retryable => {
                self.failed_attempts += 1;
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                let delay = self
                    .retry
                    .delays()
                    .nth(self.failed_attempts as usize - 1)
                    .filter(|d| since.elapsed() + *d <= self.retry.max_elapsed);
                match delay {
                    Some(delay) => {
                        log::warn!(
                            "mount {}: writing {} queued change(s) failed ({e}), retrying in {delay:?}",
                            self.mount,
                            jobs.len()
                        );
                        self.requeue_front(jobs.collect());
                        ctx.run_later(delay, |act, ctx| act.write_next(ctx));
                    }
                    None => {
                        log::error!(
                            "mount {}: writing {} queued change(s) failed {} times, giving up on them: {e}",
                            self.mount,
                            jobs.len(),
                            self.failed_attempts
                        );
                        self.failed_attempts = 0;
                        self.failing_since = None;
                        for job in jobs {
                            job.reply.send(&self.mount, Err(e.clone()));
                        }
                        self.write_next(ctx);
                    }
                }
            }
            Err(e) => {
                let jobs: Vec<Job> = jobs.collect();
                if e.fenced {
                    let mut whats: Vec<&str> = jobs.iter().map(|j| j.write.what()).collect();
                    whats.dedup();
                    log::warn!(
                        "mount {}: {} refused by the lease fence: this executor no longer holds the mount's lease ({e})",
                        self.mount,
                        whats.join(", ")
                    );
                } else {
                    log::warn!("mount {}: a batch of writes failed: {e}", self.mount);
                }
                self.failed_attempts = 0;
                self.failing_since = None;
                for job in jobs {
                    job.reply.send(&self.mount, Err(e.clone()));
                }
                self.write_next(ctx);
            }
        }
    }

    fn requeue_front(&mut self, jobs: Vec<Job>) {
        for job in jobs.into_iter().rev() {
            self.queue.push_front(job);
        }
    }
}

impl Actor for CommitterActor {
    type Context = Context<Self>;
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, MetaError>>) -> Result<T, MetaError> {
    rx.await.unwrap_or_else(|_| {
        Err(MetaError {
            fenced: false,
            retryable: true,
            message: "the committer stopped before writing the change".into(),
        })
    })
}

impl Handler<RecordIntent> for CommitterActor {
    type Result = ResponseFuture<Result<IntentOutcome, MetaError>>;

    fn handle(&mut self, msg: RecordIntent, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(MetaWrite::Begin(msg.0), Reply::Intent(tx), ctx);
        Box::pin(answer(rx))
    }
}

impl Handler<CommitOperation> for CommitterActor {
    type Result = ResponseFuture<Result<OpResult, MetaError>>;

    fn handle(&mut self, msg: CommitOperation, ctx: &mut Self::Context) -> Self::Result {
        // The commit is idempotent: a retry after a lost acknowledgement finds the journal row
        // committed and returns its recorded result instead of writing again.
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            MetaWrite::Commit(msg.0),
            Reply::Commit(tx, Instant::now()),
            ctx,
        );
        Box::pin(answer(rx))
    }
}

impl Handler<FailOperation> for CommitterActor {
    type Result = ResponseFuture<Result<(), MetaError>>;

    fn handle(&mut self, msg: FailOperation, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let write = MetaWrite::Fail {
            journal_id: msg.journal_id,
            error: msg.error,
        };
        self.enqueue(write, Reply::Unit(tx), ctx);
        Box::pin(answer(rx))
    }
}

impl Handler<RecordProgress> for CommitterActor {
    type Result = ResponseFuture<Result<(), MetaError>>;

    fn handle(&mut self, msg: RecordProgress, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let write = MetaWrite::Progress {
            journal_id: msg.journal_id,
            progress: msg.progress,
        };
        self.enqueue(write, Reply::Unit(tx), ctx);
        Box::pin(answer(rx))
    }
}

impl Handler<RecordUpload> for CommitterActor {
    type Result = ResponseFuture<Result<(), MetaError>>;

    fn handle(&mut self, msg: RecordUpload, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(MetaWrite::Upload(msg.0), Reply::Unit(tx), ctx);
        Box::pin(answer(rx))
    }
}

impl Handler<RecordPart> for CommitterActor {
    type Result = ResponseFuture<Result<(), MetaError>>;

    fn handle(&mut self, msg: RecordPart, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let write = MetaWrite::Parts {
            upload_id: msg.upload_id,
            parts: vec![msg.part],
        };
        self.enqueue(write, Reply::Unit(tx), ctx);
        Box::pin(answer(rx))
    }
}

impl Handler<QueryCommitter> for CommitterActor {
    type Result = MessageResult<QueryCommitter>;

    fn handle(&mut self, _msg: QueryCommitter, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(CommitterStatus {
            queued: self.queue.len() + self.in_flight,
            writing: self.in_flight > 0,
            failed_attempts: self.failed_attempts,
        })
    }
}
