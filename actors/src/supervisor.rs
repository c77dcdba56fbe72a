//! The mount supervisor: one per mount, restarted by actix when it stops.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::commands::{
    DeleteObject, GetStatus, LeaseStatus, ListObjects, LookAtLease, OpenObject, PutLargeObject,
    PutObject, RelayOutbox, RetireMount, StatObject, SupervisorStatus, TransferObject,
};
use crate::committer::CommitterActor;
use crate::digest::Sha256Digest;
use crate::engine::{recover_entry, run_operation, validate_transfer, OpContext, Payload};
use crate::error::Error;
use crate::locks::{PathKey, PathLocks};
use crate::model::{
    Fence, JournalEntry, LeaseState, ListEntry, ListPage, Node, OpKind, OpRequest, OpResult, Stat,
};
use crate::mount::MountSpec;
use crate::multipart::ProgressHub;
use crate::notifier::{NotifierActor, OutboxChanged};
use crate::path::FsPath;
use crate::ports::{
    ChangePublisher, MetaError, MetaStore, MountDirectory, ObjectBody, ObjectStore, StoreErrorKind,
};
use crate::retry::{store_call, MountCounters, RetryPolicy};
use crate::validate;
use chrono::{DateTime, Utc};

pub use crate::validate::MAX_IDEMPOTENCY_KEY_BYTES;

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
    /// How long a mount's lease lasts unless renewed (it is renewed every third of it). A dead
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

struct Running {
    fingerprint: String,
    waiters: Vec<oneshot::Sender<Reply>>,
    /// The operation's upload progress, for every caller that joins it (recovery included).
    progress: ProgressHub,
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
    store: Arc<dyn ObjectStore>,
    meta: Arc<dyn MetaStore>,
    publisher: Arc<dyn ChangePublisher>,
    settings: SupervisorSettings,
    restarts: u32,
    counters: Arc<MountCounters>,
    /// Per-path ordering, shared by every supervisor of the executor.
    locks: PathLocks,
    /// The executor's other mounts (sources of copies / moves being recovered).
    mounts: Option<Arc<dyn MountDirectory>>,
    /// The settings probe's finding (see `OpContext::ensure_settings_honoured`).
    probe: Arc<tokio::sync::OnceCell<Vec<String>>>,
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
        spec: Arc<MountSpec>,
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn MetaStore>,
        publisher: Arc<dyn ChangePublisher>,
        settings: SupervisorSettings,
    ) -> Self {
        let counters = Arc::new(MountCounters::default());
        MountSupervisor {
            deletes: crate::engine::DeleteBatcher::new(&spec.name, counters.clone()),
            spec,
            store,
            meta,
            publisher,
            settings,
            restarts: 0,
            counters,
            locks: PathLocks::default(),
            mounts: None,
            probe: Arc::new(tokio::sync::OnceCell::new()),
            owner: Uuid::new_v4().to_string(),
            fence: None,
            held_by: None,
            lease_error: None,
            lease_timer: None,
            acquiring: false,
            drain_waiters: Vec::new(),
            releasing: false,
            passive: false,
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
            retry: self.settings.retry,
            counters: self.counters.clone(),
            mounts: self.mounts.clone(),
            probe: self.probe.clone(),
            consistency_horizon: self.settings.consistency_horizon,
            deletes: self.deletes.clone(),
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

    /// Tries to take the mount's lease; `at_start` makes the mailbox wait for the answer, so no
    /// call is refused just because the supervisor is starting.
    fn acquire_lease(&mut self, ctx: &mut Context<Self>, at_start: bool) {
        if self.acquiring {
            return;
        }
        self.acquiring = true;
        let meta = self.meta.clone();
        let (mount, owner, ttl) = (
            self.spec.name.clone(),
            self.owner.clone(),
            self.settings.lease_ttl,
        );
        let fut = async move { meta.acquire_lease(&mount, &owner, ttl).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                act.acquiring = false;
                if act.retired {
                    // Retired while asking: a lease taken meanwhile is given back at once, so the
                    // mount's next owner does not wait for it to expire.
                    if let Ok(LeaseState::Owned(fence)) = res {
                        let meta = act.meta.clone();
                        ctx.spawn(
                            async move {
                                if let Err(e) = meta.release_lease(&fence).await {
                                    log::warn!("mount {}: lease not released ({e}); it expires", fence.mount);
                                }
                            }
                            .into_actor(act),
                        );
                    }
                    return;
                }
                match res {
                    Ok(LeaseState::Owned(fence)) => {
                        act.held_by = None;
                        act.lease_error = None;
                        act.become_owner(fence, ctx);
                    }
                    Ok(LeaseState::HeldBy { owner, expires_at }) => {
                        if act.held_by.as_ref().map(|h| &h.0) != Some(&owner) {
                            log::info!(
                                "mount {}: owned by executor '{owner}' (lease until {expires_at}); waiting to take over",
                                act.spec.name
                            );
                        }
                        act.held_by = Some((owner, expires_at));
                        act.lease_error = None;
                        act.retry_lease_later(ctx);
                    }
                    Err(e) => {
                        log::warn!("mount {}: cannot look at the lease ({e})", act.spec.name);
                        act.lease_error = Some(e);
                        act.retry_lease_later(ctx);
                    }
                }
            });
        if at_start {
            ctx.wait(fut);
        } else {
            ctx.spawn(fut);
        }
    }

    fn retry_lease_later(&mut self, ctx: &mut Context<Self>) {
        let every = self.settings.lease_ttl / 3;
        self.lease_timer = Some(ctx.run_later(every, |act, ctx| {
            act.lease_timer = None;
            act.acquire_lease(ctx, false);
        }));
    }

    /// Holds the lease now: starts the committer (its writes fenced by the lease) and the
    /// notifier, recovers pending rows, and renews the lease every third of its duration. A lost
    /// lease stops the supervisor (actix restarts it, and it waits for the lease again).
    fn become_owner(&mut self, fence: Fence, ctx: &mut Context<Self>) {
        log::info!(
            "mount {}: lease taken by '{}' (epoch {})",
            self.spec.name,
            fence.owner,
            fence.epoch
        );
        let fenced = self.meta.with_fence(fence.clone());
        self.fence = Some(fence);
        let notifier = NotifierActor::new(
            self.spec.name.clone(),
            self.meta.clone(),
            self.publisher.clone(),
        )
        .start();
        let committer = CommitterActor::new(
            self.spec.name.clone(),
            fenced,
            notifier.clone(),
            self.settings.retry,
        )
        .start();
        self.notifier = Some(notifier);
        self.committer = Some(committer);
        self.schedule_recovery(ctx, true);
        self.recovery_timer = Some(ctx.run_interval(
            self.settings.recovery_interval,
            |act, ctx| {
                act.schedule_recovery(ctx, false);
                act.sweep_orphaned_uploads(ctx);
                act.prune_outbox(ctx);
            },
        ));
        self.poll_timer = Some(
            ctx.run_interval(self.settings.outbox_poll_interval, |act, _| {
                if let Some(n) = &act.notifier {
                    n.do_send(OutboxChanged);
                }
            }),
        );
        self.lease_timer =
            Some(ctx.run_interval(self.settings.lease_ttl / 3, |act, ctx| act.renew_lease(ctx)));
    }

    fn renew_lease(&mut self, ctx: &mut Context<Self>) {
        let Some(fence) = self.fence.clone() else {
            return;
        };
        let meta = self.meta.clone();
        let ttl = self.settings.lease_ttl;
        ctx.spawn(
            async move { meta.renew_lease(&fence, ttl).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(true) => {}
                    Ok(false) if act.retired => {}
                    Ok(false) => {
                        log::error!(
                            "mount {}: lease lost (expired or taken over); stopping this supervisor's work",
                            act.spec.name
                        );
                        // A restart drops every operation of this run; their writes would be
                        // refused by the fence anyway. The restarted supervisor waits for the lease.
                        ctx.stop();
                    }
                    Err(e) => log::warn!(
                        "mount {}: lease renewal failed ({e}); retrying",
                        act.spec.name
                    ),
                }),
        );
    }

    /// Gives the lease up (so another executor, or this executor's next supervisor of the mount,
    /// can take it at once) — only once the supervisor is retired and its last operation ended,
    /// so that operations running at retirement still commit.
    fn release_if_retired_and_idle(&mut self, ctx: &mut Context<Self>) {
        // A release under way answers every waiter, including those of a later RetireMount,
        // when it has been written — never before.
        if !self.retired || !self.running.is_empty() || self.releasing {
            return;
        }
        if let Some(h) = self.lease_timer.take() {
            ctx.cancel_future(h);
        }
        let release = self.release_when_idle();
        self.releasing = true;
        ctx.spawn(
            async move {
                if let Some(r) = release {
                    r.await;
                }
            }
            .into_actor(self)
            .map(|(), act, _| {
                act.releasing = false;
                for w in std::mem::take(&mut act.drain_waiters) {
                    let _ = w.send(());
                }
            }),
        );
    }

    fn release_when_idle(&mut self) -> Option<impl std::future::Future<Output = ()> + 'static> {
        if !self.retired || !self.running.is_empty() {
            return None;
        }
        let fence = self.fence.take()?;
        let meta = self.meta.clone();
        Some(async move {
            if let Err(e) = meta.release_lease(&fence).await {
                log::warn!(
                    "mount {}: lease not released ({e}); it expires",
                    fence.mount
                );
            }
        })
    }

    /// The paths an operation holds: its own, and its source's for a copy / move.
    fn lock_keys(&self, request: &OpRequest) -> Vec<PathKey> {
        let mut keys = vec![(self.spec.name.clone(), request.path().to_owned())];
        if let Some(s) = request.source() {
            keys.push((s.mount.clone(), s.path.clone()));
        }
        keys
    }

    fn key_of(&self, path: &FsPath) -> Result<String, Error> {
        self.spec
            .keys
            .key_for(path)
            .map_err(|e| Error::invalid_path(path.as_str(), e))
    }

    fn submit(
        &mut self,
        idempotency_key: Option<String>,
        request: OpRequest,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Reply> {
        if self.retired {
            return refuse(Error::Shutdown);
        }
        if let Err(e) = self.ownership() {
            return refuse(e);
        }
        let key = match idempotency_key {
            Some(k) => match crate::validate::idempotency_key(&k) {
                Ok(()) => k,
                Err(e) => return refuse(e),
            },
            None => Uuid::new_v4().to_string(),
        };
        // Computed once per request: for joining a running call here, and for the journal.
        let fingerprint = request.fingerprint();
        let mut payload = payload;
        // The caller's progress sink follows the operation, whichever run carries it.
        let caller_sink = match &mut payload {
            Payload::Upload { sink, .. } => sink.take(),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        if let Some(run) = self.running.get_mut(&key) {
            // Same key while the first call runs: join it, or refuse if the parameters differ.
            if run.fingerprint != fingerprint {
                return refuse(Error::IdempotencyConflict {
                    mount: self.spec.name.clone(),
                    key,
                });
            }
            run.waiters.push(tx);
            if let Some(sink) = caller_sink {
                run.progress.subscribe(sink);
            }
        } else {
            let progress = ProgressHub::default();
            if let Some(sink) = caller_sink {
                progress.subscribe(sink);
            }
            if let Payload::Upload { sink, .. } = &mut payload {
                *sink = Some(progress.sink());
            }
            self.running.insert(
                key.clone(),
                Running {
                    fingerprint: fingerprint.clone(),
                    waiters: vec![tx],
                    progress,
                },
            );
            // The place in the paths' queues is taken now, in arrival order.
            let locked = self.locks.acquire_all(self.lock_keys(&request));
            match self.op_context() {
                None => self.finish(&key, Err(Error::Shutdown)),
                Some(c) => {
                    let k = key.clone();
                    let fut = async move {
                        let _guards = locked.await;
                        run_operation(c, k, request, fingerprint, payload).await
                    };
                    ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                        act.finish(&key, res);
                        act.release_if_retired_and_idle(ctx);
                    }));
                }
            }
        }
        Box::pin(async move { rx.await.unwrap_or(Err(Error::Shutdown)) })
    }

    fn finish(&mut self, key: &str, res: Reply) {
        if let Some(run) = self.running.remove(key) {
            for w in run.waiters {
                let _ = w.send(res.clone());
            }
        }
    }

    /// Looks for pending journal rows and queues their recovery on their paths. At start-up the
    /// mailbox waits for the scan, so no new operation overtakes a pending one on the same path.
    fn schedule_recovery(&mut self, ctx: &mut Context<Self>, at_start: bool) {
        let meta = self.meta.clone();
        let mount = self.spec.name.clone();
        let delay = if at_start && self.restarts > 0 {
            (Duration::from_millis(200) * self.restarts).min(self.settings.max_restart_delay)
        } else {
            Duration::ZERO
        };
        let scan = async move {
            tokio::time::sleep(delay).await;
            meta.pending(&mount).await
        }
        .into_actor(self)
        .map(move |res, act, ctx| match res {
            Ok(entries) => {
                if at_start {
                    act.recovered = true;
                    if !entries.is_empty() {
                        log::info!(
                            "mount {}: recovering {} pending operations",
                            act.spec.name,
                            entries.len()
                        );
                    }
                }
                for entry in entries {
                    act.queue_recovery(entry, ctx);
                }
            }
            Err(e) if at_start => {
                log::error!(
                    "mount {}: start-up recovery failed ({e}); restarting",
                    act.spec.name
                );
                ctx.stop();
            }
            Err(e) => log::warn!("mount {}: recovery scan failed: {e}", act.spec.name),
        });
        if at_start {
            ctx.wait(scan);
        } else {
            ctx.spawn(scan);
        }
    }

    fn queue_recovery(&mut self, entry: JournalEntry, ctx: &mut Context<Self>) {
        if self.running.contains_key(&entry.idempotency_key) || !self.recovering.insert(entry.id) {
            return;
        }
        // Registered like a call, so a caller repeating it with the same key joins the recovery.
        let key = entry.idempotency_key.clone();
        let progress = ProgressHub::default();
        let sink = progress.sink();
        self.running.insert(
            key.clone(),
            Running {
                fingerprint: entry.fingerprint.clone(),
                waiters: Vec::new(),
                progress,
            },
        );
        let locked = self.locks.acquire_all(self.lock_keys(&entry.request));
        let id = entry.id;
        let Some(c) = self.op_context() else {
            self.recovering.remove(&id);
            self.finish(&key, Err(Error::Shutdown));
            return;
        };
        let fut = async move {
            let _guards = locked.await;
            recover_entry(c, entry, Some(sink)).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = &res {
                log::warn!(
                    "mount {}: recovery of journal {id} ended with: {e}",
                    act.spec.name
                );
            }
            act.recovering.remove(&id);
            act.finish(&key, res);
            act.release_if_retired_and_idle(ctx);
        }));
    }

    /// Deletes the mount's outbox rows published longer ago than the retention.
    fn prune_outbox(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.op_context() else { return };
        let retention = self.settings.outbox_retention;
        let prune = async move { c.meta.prune_outbox(&c.spec.name, retention).await };
        ctx.spawn(prune.into_actor(self).map(|res, act, _| match res {
            Ok(0) => {}
            Ok(n) => log::info!(
                "mount {}: pruned {n} outbox rows published over {:?} ago",
                act.spec.name,
                act.settings.outbox_retention
            ),
            Err(e) => log::warn!("mount {}: outbox pruning failed: {e}", act.spec.name),
        }));
    }

    /// Aborts open uploads this executor started whose journal row has ended, once idle for the
    /// grace period.
    fn sweep_orphaned_uploads(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.op_context() else { return };
        let grace = chrono::Duration::from_std(self.settings.orphan_upload_grace)
            .unwrap_or(chrono::Duration::MAX);
        let sweep = async move {
            let cutoff = chrono::Utc::now() - grace;
            let orphans = c.meta.orphaned_uploads(&c.spec.name, cutoff).await?;
            let mut aborted = 0;
            for u in orphans {
                match c.store.abort_multipart(&u.key, &u.upload_id).await {
                    Ok(()) => {
                        c.meta.mark_upload_aborted(&u.upload_id).await?;
                        aborted += 1;
                    }
                    Err(e) => log::warn!(
                        "mount {}: could not abort orphaned upload {}: {e}",
                        c.spec.name,
                        u.upload_id
                    ),
                }
            }
            Ok::<usize, Error>(aborted)
        };
        ctx.spawn(sweep.into_actor(self).map(|res, act, _| match res {
            Ok(0) => {}
            Ok(n) => log::info!(
                "mount {}: aborted {n} orphaned multipart uploads",
                act.spec.name
            ),
            Err(e) => log::warn!("mount {}: orphan sweep failed: {e}", act.spec.name),
        }));
    }
}

/// A reply that is an error, decided before anything started.
fn refuse<T: 'static>(e: Error) -> ResponseFuture<Result<T, Error>> {
    Box::pin(async move { Err(e) })
}

impl Actor for MountSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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

impl Handler<PutObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: PutObject, ctx: &mut Self::Context) -> Self::Result {
        if let Some(Err(e)) = msg.content_type.as_deref().map(validate::content_type) {
            return refuse(e);
        }
        if let Err(e) = validate::user_metadata(&msg.metadata) {
            return refuse(e);
        }
        let size = msg.body.len() as u64;
        if size > self.spec.multipart_threshold {
            return refuse(Error::TooLarge {
                size,
                limit: self.spec.multipart_threshold,
                what: "a single-request put (the mount's multipart_threshold)",
            });
        }
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let request = OpRequest::Put {
            path: msg.path.as_str().to_owned(),
            key,
            size,
            sha256: msg.sha256,
            content_type: msg.content_type,
            condition: msg.condition,
            metadata: msg.metadata,
        };
        self.submit(msg.idempotency_key, request, Payload::Bytes(msg.body), ctx)
    }
}

impl Handler<PutLargeObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: PutLargeObject, ctx: &mut Self::Context) -> Self::Result {
        if let Some(Err(e)) = msg.content_type.as_deref().map(validate::content_type) {
            return refuse(e);
        }
        if let Err(e) = validate::user_metadata(&msg.metadata) {
            return refuse(e);
        }
        if let Some(Err(e)) = msg.size.map(validate::object_size) {
            return refuse(e);
        }
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        if let Err(e) = crate::multipart::part_size_for(self.spec.part_size, msg.size) {
            return refuse(e);
        }
        let request = OpRequest::PutMultipart {
            path: msg.path.as_str().to_owned(),
            key,
            size: msg.size,
            source: msg.source,
            content_type: msg.content_type,
            condition: msg.condition,
            metadata: msg.metadata,
        };
        let payload = Payload::Upload {
            reader: msg.reader,
            sink: msg.progress,
        };
        self.submit(msg.idempotency_key, request, payload, ctx)
    }
}

impl Handler<OpenObject> for MountSupervisor {
    type Result = ResponseFuture<Result<(Option<Node>, ObjectBody), Error>>;

    fn handle(&mut self, msg: OpenObject, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(Err(e)) = msg.range.as_ref().map(validate::range) {
            return refuse(e);
        }
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let spec = self.spec.clone();
        let store = self.store.clone();
        let meta = self.meta.clone();
        let (retry, counters) = (self.settings.retry, self.counters.clone());
        Box::pin(async move {
            let path = msg.path.as_str().to_owned();
            let node = if msg.with_node {
                meta.node(&spec.name, &path).await?
            } else {
                None
            };
            let body = store_call(&spec.name, &retry, &counters, "GET", &key, || {
                store.get_object(&key, msg.range, msg.if_match.as_deref())
            })
            .await
            .map_err(|e| match e {
                Error::Storage { source, .. } if source.kind == StoreErrorKind::NotFound => {
                    Error::NotFound {
                        mount: spec.name.clone(),
                        path: path.clone(),
                    }
                }
                e => e,
            })?;
            Ok((node, body))
        })
    }
}

impl Handler<DeleteObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: DeleteObject, ctx: &mut Self::Context) -> Self::Result {
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let request = OpRequest::Delete {
            path: msg.path.as_str().to_owned(),
            key,
        };
        let payload = if msg.batched {
            Payload::BatchedDelete
        } else {
            Payload::None
        };
        self.submit(msg.idempotency_key, request, payload, ctx)
    }
}

impl Handler<StatObject> for MountSupervisor {
    type Result = ResponseFuture<Result<Stat, Error>>;

    fn handle(&mut self, msg: StatObject, _ctx: &mut Self::Context) -> Self::Result {
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let spec = self.spec.clone();
        let store = self.store.clone();
        let meta = self.meta.clone();
        let (retry, counters) = (self.settings.retry, self.counters.clone());
        Box::pin(async move {
            let path = msg.path.as_str().to_owned();
            let object = store_call(&spec.name, &retry, &counters, "HEAD", &key, || {
                store.head_object(&key)
            })
            .await?
            .ok_or_else(|| Error::NotFound {
                mount: spec.name.clone(),
                path: path.clone(),
            })?;
            let node = meta.node(&spec.name, &path).await?;
            Ok(Stat { path, object, node })
        })
    }
}

impl Handler<ListObjects> for MountSupervisor {
    type Result = ResponseFuture<Result<ListPage, Error>>;

    fn handle(&mut self, msg: ListObjects, _ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = validate::list_page(msg.token.as_deref(), msg.max_keys) {
            return refuse(e);
        }
        let spec = self.spec.clone();
        let store = self.store.clone();
        let (retry, counters) = (self.settings.retry, self.counters.clone());
        Box::pin(async move {
            let prefix = spec
                .keys
                .list_prefix(&msg.dir)
                .map_err(|e| Error::invalid_path(msg.dir.as_str(), e))?;
            let delimiter = msg.delimited.then_some("/");
            let raw = store_call(&spec.name, &retry, &counters, "LIST", &prefix, || {
                store.list_objects(&prefix, delimiter, msg.token.as_deref(), msg.max_keys)
            })
            .await?;
            let mut page = ListPage {
                next_token: raw.next_token,
                ..ListPage::default()
            };
            for o in raw.objects {
                match spec.keys.path_for(&o.key) {
                    Ok(path) => page.entries.push(ListEntry {
                        path: path.as_str().to_owned(),
                        key: o.key,
                        size: o.size,
                        etag: o.etag,
                        storage_class: o.storage_class,
                        last_modified: o.last_modified,
                    }),
                    Err(u) => page.unmapped.push(u),
                }
            }
            for p in raw.common_prefixes {
                match spec.keys.dir_for(&p) {
                    Ok(d) => page.directories.push(d.as_str().to_owned()),
                    Err(u) => page.unmapped.push(u),
                }
            }
            Ok(page)
        })
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
            upload_bytes_sent: self.counters.bytes_sent.load(Ordering::Relaxed),
            parts_uploaded: self.counters.parts_uploaded.load(Ordering::Relaxed),
            parts_resumed: self.counters.parts_resumed.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            copy_requests: self.counters.copy_requests.load(Ordering::Relaxed),
            delete_batches: self.counters.delete_batches.load(Ordering::Relaxed),
            deletes_batched: self.counters.deletes_batched.load(Ordering::Relaxed),
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

/// SHA-256 of a buffer, for callers building a [`PutObject`].
pub fn sha256_of(data: &[u8]) -> Sha256Digest {
    Sha256Digest::of(data)
}

impl Handler<RelayOutbox> for MountSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: RelayOutbox, _ctx: &mut Self::Context) {
        if let Some(n) = &self.notifier {
            n.do_send(OutboxChanged);
        }
    }
}

impl Handler<LookAtLease> for MountSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: LookAtLease, ctx: &mut Self::Context) {
        if self.fence.is_some() || self.passive || self.retired || self.acquiring {
            return;
        }
        if let Some(h) = self.lease_timer.take() {
            ctx.cancel_future(h);
        }
        self.acquire_lease(ctx, false);
    }
}

impl Handler<TransferObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: TransferObject, ctx: &mut Self::Context) -> Self::Result {
        if !matches!(msg.op, OpKind::Copy | OpKind::Move) {
            return refuse(Error::InvalidRequest {
                field: "op",
                reason: format!("'{}' is not a copy or a move", msg.op.as_str()),
            });
        }
        if !msg.source_mount.spec.enabled {
            return refuse(Error::MountDisabled {
                mount: msg.source_mount.spec.name.clone(),
            });
        }
        let t = match validate_transfer(
            msg.op,
            &self.spec,
            &msg.source_mount.spec,
            &msg.source_path,
            &msg.path,
            msg.condition,
        ) {
            Ok(t) => t,
            Err(e) => return refuse(e),
        };
        let request = match msg.op {
            OpKind::Move => OpRequest::Move(t),
            _ => OpRequest::Copy(t),
        };
        self.submit(
            msg.idempotency_key,
            request,
            Payload::Transfer(msg.source_mount),
            ctx,
        )
    }
}
