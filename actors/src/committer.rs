//! The committer: the only writer of journal / nodes / snapshots / outbox rows for its mount.
//!
//! Writes queue in the order their messages arrived and go to Postgres in batches (group commit),
//! each write of a batch atomic on its own ([`MetaStore::apply`]). Up to `max_in_flight` batches
//! are written at once, on their own connections, so Postgres works on one batch while the next
//! is sent; two writes that touch the same thing (idempotency key, journal row, path, upload —
//! see [`Claim`]) are never in two batches at once, so writes to one thing apply in the order
//! they were sent. The mailbox is never paused: while batches run, or wait to be retried after a
//! retryable failure (connection lost, Postgres restarting), new writes keep queueing behind them
//! and status questions are answered. A retried batch goes back to its place in the queue, and
//! each write is idempotent, so a batch whose acknowledgement was lost can be sent again.

use std::collections::{HashSet, VecDeque};
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

/// What the committer is doing, answered at once (the mailbox never waits for Postgres). For
/// actor tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Message)]
#[rtype(result = "CommitterStatus")]
pub struct QueryCommitter;

/// Answer to [`QueryCommitter`].
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitterStatus {
    /// Writes waiting, the batches in flight or waiting for their retry included.
    pub queued: usize,
    /// A batch (or more) is being written.
    pub writing: bool,
    /// Failed attempts of the batch at the head of the queue (0 when the last one succeeded).
    pub failed_attempts: u32,
}

/// Largest number of writes sharing one transaction.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Batches written at once by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// A queue is split among free slots only into batches of at least this many writes.
const MIN_SHARED_BATCH: usize = 16;

/// Something a write changes or depends on. Writes with a claim in common are never written by
/// two transactions at once: the later waits until the earlier's batch is answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// An intent's idempotency key on its mount.
    Intent(String, String),
    /// A journal row.
    Journal(i64),
    /// A path of a mount (its node, its snapshots' generations).
    Path(String, String),
    /// A multipart upload.
    Upload(String),
}

impl Claim {
    /// What `write` claims.
    pub fn of(write: &MetaWrite) -> Vec<Claim> {
        match write {
            MetaWrite::Begin(i) => vec![Claim::Intent(i.mount.clone(), i.idempotency_key.clone())],
            MetaWrite::Commit(r) => {
                let mut c = vec![
                    Claim::Journal(r.journal_id),
                    Claim::Path(r.mount.clone(), r.path.clone()),
                ];
                if let Some(src) = &r.source {
                    // A move removes its source; a copy reads it.
                    c.push(Claim::Path(src.mount.clone(), src.path.clone()));
                }
                c
            }
            MetaWrite::Fail { journal_id, .. } | MetaWrite::Progress { journal_id, .. } => {
                vec![Claim::Journal(*journal_id)]
            }
            MetaWrite::Upload(u) => vec![
                Claim::Journal(u.journal_id),
                Claim::Upload(u.upload_id.clone()),
            ],
            MetaWrite::Parts { upload_id, .. } => vec![Claim::Upload(upload_id.clone())],
        }
    }
}

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
                cause: None,
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
    /// Arrival order.
    seq: u64,
    write: MetaWrite,
    reply: Reply,
    claims: Vec<Claim>,
}

/// A job's arrival, reply and claims while its write is in a batch.
type Waiting = (u64, Reply, Vec<Claim>);

/// A batch being written.
struct Flight {
    id: u64,
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    writes: usize,
    claims: HashSet<Claim>,
}

/// Serialises the Postgres writes of one mount (see the module documentation).
pub struct CommitterActor {
    mount: String,
    meta: Arc<dyn MetaStore>,
    notifier: Addr<NotifierActor>,
    retry: RetryPolicy,
    max_batch: usize,
    max_in_flight: usize,
    queue: VecDeque<Job>,
    next_seq: u64,
    /// Batches being written.
    flights: Vec<Flight>,
    /// A batch waits for its retry: no other starts.
    waiting_retry: bool,
    /// A look at the queue is scheduled.
    scheduled: bool,
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
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue: VecDeque::new(),
            next_seq: 0,
            flights: Vec::new(),
            waiting_retry: false,
            scheduled: false,
            failed_attempts: 0,
            failing_since: None,
        }
    }

    /// At most `n` (≥ 1) writes per transaction.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// At most `n` (≥ 1) batches written at once (1: one after another).
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    fn enqueue(&mut self, write: MetaWrite, reply: Reply, ctx: &mut Context<Self>) {
        let claims = Claim::of(&write);
        self.queue.push_back(Job {
            seq: self.next_seq,
            write,
            reply,
            claims,
        });
        self.next_seq += 1;
        if !self.scheduled && !self.waiting_retry && self.flights.len() < self.max_in_flight {
            // Started after the messages already in the mailbox: writes arriving together share
            // a transaction.
            self.scheduled = true;
            ctx.run_later(Duration::ZERO, |act, ctx| {
                act.scheduled = false;
                act.write_next(ctx);
            });
        }
    }

    /// Starts batches while there is room: each the longest run of writes at the head of the
    /// queue (at most `max_batch`) claiming nothing a batch in flight claims.
    fn write_next(&mut self, ctx: &mut Context<Self>) {
        while !self.waiting_retry && self.flights.len() < self.max_in_flight {
            // A long queue is shared among the free slots: writes that arrived together are
            // written by several transactions at once rather than one after another. A short one
            // stays one batch (a transaction's fixed costs — BEGIN, COMMIT's WAL flush — would
            // outweigh the overlap).
            let free = self.max_in_flight - self.flights.len();
            let share = self
                .queue
                .len()
                .div_ceil(free)
                .max(self.queue.len().min(MIN_SHARED_BATCH))
                .clamp(1, self.max_batch);
            let mut claims: HashSet<Claim> = HashSet::new();
            let mut n = 0;
            for job in self.queue.iter().take(share) {
                let held = job
                    .claims
                    .iter()
                    .any(|c| self.flights.iter().any(|f| f.claims.contains(c)));
                if held {
                    break;
                }
                claims.extend(job.claims.iter().cloned());
                n += 1;
            }
            if n == 0 {
                return;
            }
            self.start_batch(n, claims, ctx);
        }
    }

    fn start_batch(&mut self, n: usize, claims: HashSet<Claim>, ctx: &mut Context<Self>) {
        let jobs: Vec<Job> = self.queue.drain(..n).collect();
        let id = jobs[0].seq;
        let (writes, rest): (Vec<MetaWrite>, Vec<Waiting>) = jobs
            .into_iter()
            .map(|j| (j.write, (j.seq, j.reply, j.claims)))
            .unzip();
        metrics::histogram!("filestore_s3_commit_batch_size", "mount" => self.mount.clone())
            .record(n as f64);
        self.flights.push(Flight {
            id,
            writes: n,
            claims,
        });
        let meta = self.meta.clone();
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
                .map(move |(writes, result), act, ctx| {
                    act.flights.retain(|f| f.id != id);
                    let jobs = writes
                        .into_iter()
                        .zip(rest)
                        .map(|(write, (seq, reply, claims))| Job {
                            seq,
                            write,
                            reply,
                            claims,
                        })
                        .collect();
                    act.written(jobs, result, ctx)
                }),
        );
    }

    fn written(
        &mut self,
        jobs: Vec<Job>,
        result: crate::ports::BatchResult,
        ctx: &mut Context<Self>,
    ) {
        let mut jobs = jobs.into_iter();
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
                        self.waiting_retry = true;
                        ctx.run_later(delay, |act, ctx| {
                            act.waiting_retry = false;
                            act.write_next(ctx);
                        });
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

    /// Puts writes back at their places in the queue (by arrival).
    fn requeue_front(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        self.queue.extend(jobs);
        self.queue.make_contiguous().sort_by_key(|j| j.seq);
    }
}

impl Actor for CommitterActor {
    type Context = Context<Self>;
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, MetaError>>) -> Result<T, MetaError> {
    rx.await.unwrap_or_else(|_| {
        Err(MetaError {
            cause: None,
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

#[cfg(any(test, feature = "testing"))]
impl Handler<QueryCommitter> for CommitterActor {
    type Result = MessageResult<QueryCommitter>;

    fn handle(&mut self, _msg: QueryCommitter, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(CommitterStatus {
            queued: self.queue.len() + self.flights.iter().map(|f| f.writes).sum::<usize>(),
            writing: !self.flights.is_empty(),
            failed_attempts: self.failed_attempts,
        })
    }
}
