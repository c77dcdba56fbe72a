//! The mount supervisor: one per mount, restarted by actix when it stops. Its jobs, one file
//! each: `lease` (the lease keeper), `ops` (mutating calls: validation, joining, ordering),
//! `housekeeping` (recovery scheduling, outbox pruning, orphan sweep); this file holds the actor
//! itself: its state, start, restart and retirement, and its status. Reads need no supervisor:
//! they are served by [`crate::reads`].

mod housekeeping;
mod lease;
mod ops;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::commands::{
    DeleteObject, GetStatus, LeaseStatus, LookAtLease, PutLargeObject, PutObject, RelayOutbox,
    RetireMount, SupervisorStatus, TransferObject,
};
use crate::committer::CommitterActor;
use crate::engine::{recover_entry, run_operation, validate_transfer, OpContext, Operation};
use crate::error::Error;
use crate::locks::{PathKey, PathLocks};
use crate::model::{
    DeleteRequest, Fence, JournalEntry, LeaseState, MultipartRequest, OpKind, OpRequest, OpResult,
    PutRequest,
};
use crate::mount::MountSpec;
use crate::multipart::ProgressHub;
use crate::notifier::{NotifierActor, OutboxChanged};
use crate::path::FsPath;
use crate::ports::{ChangePublisher, MetaError, MetaStore};
use crate::retry::RetryPolicy;
use crate::store::{MountDirectory, MountStore};
use crate::validate;
use chrono::{DateTime, Utc};

/// Tunables shared by every supervisor of an executor.
#[derive(Debug, Clone, Copy)]
pub struct SupervisorSettings {
    /// Retry policy for S3 and Postgres calls.
    pub retry: RetryPolicy,
    /// How often pending journal rows are re-examined.
    pub recovery_interval: Duration,
    /// How often the notifier polls the outbox besides being poked.
    pub outbox_poll_interval: Duration,
    /// Longest wait before start-up recovery after a restart.
    pub max_restart_delay: Duration,
    /// A multipart upload this executor started and no longer tracks (its journal row ended) is
    /// aborted once it has been idle this long. Uploads the executor did not start are never touched.
    pub orphan_upload_grace: Duration,
    /// How long a mount's lease lasts unless renewed (it is renewed every quarter of it). A dead
    /// owner's mounts are taken over within `lease_ttl` plus a third of it.
    pub lease_ttl: Duration,
    /// Published outbox rows older than this are pruned by the mount's owner (at each recovery
    /// pass); a change feed can resume from any event younger than it.
    pub outbox_retention: Duration,
    /// How long recovery keeps waiting for the object of a pending write that does not show
    /// (yet) — eventual consistency — before it fails the row. Counted from the row's last change.
    pub consistency_horizon: Duration,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            retry: RetryPolicy::default(),
            recovery_interval: Duration::from_secs(30),
            outbox_poll_interval: Duration::from_secs(5),
            max_restart_delay: Duration::from_secs(5),
            orphan_upload_grace: Duration::from_secs(24 * 3600),
            lease_ttl: Duration::from_secs(15),
            outbox_retention: Duration::from_secs(7 * 24 * 3600),
            consistency_horizon: Duration::from_secs(60),
        }
    }
}

type Reply = Result<OpResult, Error>;

/// A call's place in its paths' queues, taken on arrival (the paths' guards once it is its turn).
type Place = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<crate::locks::PathGuard>>>>;

struct Running {
    fingerprint: String,
    waiters: Vec<oneshot::Sender<Reply>>,
    /// The operation's upload progress, for every caller that joins it (recovery included).
    progress: ProgressHub,
    /// For a recovery: the calls that arrived with its key while it ran, each with its operation.
    /// A recovery that commits answers them; one that does not (the row failed before the
    /// operation took effect, or stays pending) runs each call itself afterwards, under the same
    /// key: a re-armed row runs again, a pending one answers `InProgress`. (A caller told "send it
    /// again" by a recovery it never asked for would otherwise get that failure for its own call.)
    /// Each keeps the place in its paths' queues it took on arrival.
    followers: Vec<(Operation, Place, oneshot::Sender<Reply>)>,
    /// Whether this run is a recovery (its callers follow it) or a call (its callers join it).
    recovery: bool,
}

/// Owns one mount: orders operations per path, runs them concurrently across paths, owns the
/// committer and notifier, and recovers pending journal rows at start and periodically.
///
/// Started with `actix::Supervisor::start`; when it stops (for instance because start-up recovery
/// could not reach Postgres) actix restarts it, [`Supervised::restarting`] drops all per-run state,
/// and recovery runs again. Callers waiting on a dropped operation get [`Error::Shutdown`], which is
/// retryable with the same idempotency key.
pub struct MountSupervisor {
    spec: Arc<MountSpec>,
    /// The mount's store layer (its counters live there, kept across restarts).
    store: MountStore,
    meta: Arc<dyn MetaStore>,
    publisher: Arc<dyn ChangePublisher>,
    settings: SupervisorSettings,
    restarts: u32,
    /// Per-path ordering, shared by every supervisor of the executor.
    locks: PathLocks,
    /// The executor's other mounts (sources of copies / moves being recovered).
    mounts: Option<Arc<dyn MountDirectory>>,
    /// The settings probe's finding (see `OpContext::ensure_settings_honoured`).
    probe: Arc<tokio::sync::OnceCell<Vec<String>>>,
    /// Settings a write showed the store ignoring (see `OpContext::settings_learned`).
    settings_learned: Arc<std::sync::Mutex<Vec<String>>>,
    /// The conditions probe's finding (see `OpContext::conditions`).
    conditions: Arc<tokio::sync::OnceCell<crate::model::StoreConditions>>,
    /// Multi-object deletes of this mount's batched delete operations.
    deletes: crate::engine::DeleteBatcher,
    /// This executor's id in `mount_leases`.
    owner: String,
    // Lease state, per run.
    /// The lease, while this supervisor owns the mount.
    fence: Option<Fence>,
    /// Who owns the mount, while another executor does.
    held_by: Option<(String, DateTime<Utc>)>,
    /// Why the lease could not be looked at (Postgres unreachable), while that lasts.
    lease_error: Option<MetaError>,
    lease_timer: Option<SpawnHandle>,
    /// A look at the lease is under way (one at a time: two could each take it).
    acquiring: bool,
    /// Callers of `RetireMount` waiting for the running operations to end and the lease to go.
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// A lease release is being written; the drain waiters are answered once it is.
    releasing: bool,
    /// Never takes the lease: reads only (a watcher's or a dashboard's executor).
    passive: bool,
    /// The fleet's share of mounts per host: asked before each look at a lease not held.
    gate: Option<Arc<dyn crate::ports::LeaseGate>>,
    /// This supervisor among others of the same mount, for the gate.
    instance: u64,
    // Everything below is per run and reset by `restarting`.
    committer: Option<Addr<CommitterActor>>,
    notifier: Option<Addr<NotifierActor>>,
    recovered: bool,
    /// Operations in flight by idempotency key, with the callers waiting for them.
    running: HashMap<String, Running>,
    /// Journal rows being recovered.
    recovering: HashSet<i64>,
    recovery_timer: Option<SpawnHandle>,
    poll_timer: Option<SpawnHandle>,
    /// Set by [`RetireMount`]: refuse new work, let running work finish, stop with the last address.
    retired: bool,
}

impl MountSupervisor {
    /// A supervisor for a validated, enabled mount.
    pub fn new(
        store: MountStore,
        meta: Arc<dyn MetaStore>,
        publisher: Arc<dyn ChangePublisher>,
        settings: SupervisorSettings,
    ) -> Self {
        let spec = store.spec().clone();
        MountSupervisor {
            deletes: crate::engine::DeleteBatcher::new(&spec.name, store.counters().clone()),
            spec,
            store,
            meta,
            publisher,
            settings,
            restarts: 0,
            locks: PathLocks::default(),
            mounts: None,
            probe: Arc::new(tokio::sync::OnceCell::new()),
            settings_learned: Arc::default(),
            conditions: Arc::new(tokio::sync::OnceCell::new()),
            owner: Uuid::new_v4().to_string(),
            fence: None,
            held_by: None,
            lease_error: None,
            lease_timer: None,
            acquiring: false,
            drain_waiters: Vec::new(),
            releasing: false,
            passive: false,
            gate: None,
            instance: Uuid::new_v4().as_u64_pair().0,
            committer: None,
            notifier: None,
            recovered: false,
            running: HashMap::new(),
            recovering: HashSet::new(),
            recovery_timer: None,
            poll_timer: None,
            retired: false,
        }
    }

    /// Shares per-path ordering with the executor's other supervisors (copies and moves hold
    /// paths on two mounts).
    pub fn with_path_locks(mut self, locks: PathLocks) -> Self {
        self.locks = locks;
        self
    }

    /// The owner id this supervisor takes the mount's lease under (the executor's; a random one
    /// by default).
    pub fn with_owner(mut self, owner: String) -> Self {
        self.owner = owner;
        self
    }

    /// A passive supervisor never takes the mount's lease: it serves reads (stat, list, get) and
    /// refuses every mutating call; it never runs recovery. For executors that only watch.
    pub fn with_passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }

    /// Takes the lease only when `gate` allows it (a fleet's share of mounts per host), and
    /// tells the gate what it holds.
    pub fn with_lease_gate(mut self, gate: Arc<dyn crate::ports::LeaseGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Tells the gate, if any, whether this supervisor holds the mount's lease.
    pub(super) fn gate_holds(&self, held: bool) {
        if let Some(g) = &self.gate {
            g.holds(&self.spec.name, self.instance, held);
        }
    }

    /// Lets recovery find the source mount of a copy / move that crosses mounts.
    pub fn with_mount_directory(mut self, mounts: Arc<dyn MountDirectory>) -> Self {
        self.mounts = Some(mounts);
        self
    }

    fn op_context(&self) -> Option<OpContext> {
        let fence = self.fence.clone()?;
        Some(OpContext {
            spec: self.spec.clone(),
            store: self.store.clone(),
            meta: self.meta.with_fence(fence),
            publisher: self.publisher.clone(),
            committer: self.committer.clone()?,
            mounts: self.mounts.clone(),
            probe: self.probe.clone(),
            settings_learned: self.settings_learned.clone(),
            conditions: self.conditions.clone(),
            consistency_horizon: self.settings.consistency_horizon,
            deletes: self.deletes.clone(),
            locks: self.locks.clone(),
        })
    }

    /// Whether this supervisor may run operations: it holds the lease, or the error that says why
    /// not (another executor owns the mount, or the lease could not be looked at).
    fn ownership(&self) -> Result<(), Error> {
        if self.fence.is_some() {
            return Ok(());
        }
        if self.passive {
            return Err(Error::Config(format!(
                "mount '{}': this executor takes no lease of it (ExecutorConfig::passive or leased_mounts) and serves no writes",
                self.spec.name
            )));
        }
        if let Some((owner, until)) = &self.held_by {
            return Err(Error::NotOwner {
                mount: self.spec.name.clone(),
                owner: owner.clone(),
                until: *until,
            });
        }
        Err(match &self.lease_error {
            Some(e) => Error::Metadata(e.clone()),
            None => Error::Shutdown,
        })
    }
}

/// A reply that is an error, decided before anything started.
fn refuse<T: 'static>(e: Error) -> ResponseFuture<Result<T, Error>> {
    Box::pin(async move { Err(e) })
}

impl Actor for MountSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // No S3 write until the lease is taken.
        self.store.lease_clock().hold_until(None);
        log::info!(
            "mount {}: supervisor started (restarts: {})",
            self.spec.name,
            self.restarts
        );
        if !self.passive {
            self.acquire_lease(ctx, true);
        }
    }
}

impl Supervised for MountSupervisor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarts += 1;
        self.store.lease_clock().hold_until(None);
        self.gate_holds(false);
        // Dropping the addresses stops the old committer and notifier once their mailboxes drain.
        self.committer = None;
        self.notifier = None;
        self.recovered = false;
        self.fence = None;
        self.held_by = None;
        self.lease_error = None;
        self.lease_timer = None;
        self.acquiring = false;
        self.running.clear();
        self.recovering.clear();
        self.recovery_timer = None;
        self.poll_timer = None;
        // A release cut off by the restart is not answered by it; the next retirement releases.
        self.releasing = false;
    }
}

impl Handler<RetireMount> for MountSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    /// Answers once the running operations have ended and the lease is given up, so a caller
    /// awaiting the retirement can hand the mount over without two owners at any time.
    fn handle(&mut self, _msg: RetireMount, ctx: &mut Self::Context) -> Self::Result {
        // An actor with timers never idles, so dropping its addresses alone would not stop it; and
        // `ctx.stop()` while an address lives means a restart. Going idle lets it stop for good
        // once running operations end and the last address is dropped.
        self.retired = true;
        for h in [self.recovery_timer.take(), self.poll_timer.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(h);
        }
        // The lease is still renewed while operations finish; it goes with the last of them,
        // and the reply waits for that.
        self.committer = None;
        self.notifier = None;
        log::info!(
            "mount {}: retired ({} operations still running)",
            self.spec.name,
            self.running.len()
        );
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.release_if_retired_and_idle(ctx);
        Box::pin(
            async move {
                let _ = rx.await;
            }
            .into_actor(self),
        )
    }
}

impl Handler<GetStatus> for MountSupervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(SupervisorStatus {
            mount: self.spec.name.clone(),
            restarts: self.restarts,
            recovered: self.recovered,
            operations: self.running.len(),
            upload_bytes_sent: self.store.counters().bytes_sent.load(Ordering::Relaxed),
            parts_uploaded: self.store.counters().parts_uploaded.load(Ordering::Relaxed),
            parts_resumed: self.store.counters().parts_resumed.load(Ordering::Relaxed),
            retries: self.store.counters().retries.load(Ordering::Relaxed),
            copy_requests: self.store.counters().copy_requests.load(Ordering::Relaxed),
            delete_batches: self.store.counters().delete_batches.load(Ordering::Relaxed),
            deletes_batched: self
                .store
                .counters()
                .deletes_batched
                .load(Ordering::Relaxed),
            conditions: self.conditions.get().copied(),
            lease: match (&self.fence, &self.held_by) {
                (Some(f), _) => LeaseStatus::Owned { epoch: f.epoch },
                (None, Some((owner, until))) => LeaseStatus::HeldBy {
                    owner: owner.clone(),
                    until: *until,
                },
                (None, None) => LeaseStatus::Unknown,
            },
        })
    }
}
