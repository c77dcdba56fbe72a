//! The `S3Executor` handle: starts one supervisor per enabled mount and routes calls to it.
//!
//! - `runtime`: the actix System / Arbiter and the service clients;
//! - `registry`: the mount table, supervisors, the directory they find each other through;
//! - `write` / `read`: the calls that change / read objects; `options`: their options.

mod check;
mod feed;
mod forward;
mod health;
pub mod messages;
mod read;
mod registry;
mod runtime;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use filestore_s3_actors::commands::{
    GetStatus, LeaseStatus, LookAtLease, RetireMount, SupervisorStatus,
};
use filestore_s3_actors::model::{ListPage, Stat};
use filestore_s3_actors::mount::{MountRow, MountSpec};
use filestore_s3_actors::path::{DirPath, FsPath};
use filestore_s3_actors::reads;
use filestore_s3_actors::Error;

pub use crate::options::{
    progress_to_recipient, DeleteManyOptions, DeleteOptions, GetOptions, GetResult, ListOptions,
    Location, PutMode, PutOptions, TransferOptions, UploadProgressMsg,
};
pub use check::{CheckOptions, CheckReport, CheckSummary, Finding, CHECK_REPORT_VERSION};
pub use feed::{FeedEvent, FollowOptions};
pub use health::{Health, MountHealth, Reach};
pub use registry::MountState;

use crate::config::ExecutorConfig;
use crate::pg::LeaseHolder;
use registry::Registry;
use runtime::{arbiter_for_executor, on_arbiter, Services};

struct Inner {
    config: ExecutorConfig,
    arbiter: ArbiterHandle,
    /// The System this executor started because the caller had none; stopped on shutdown.
    own_system: Option<actix::System>,
    services: Arc<Services>,
    registry: Arc<Registry>,
    /// Stops the mount watcher and the fleet's heartbeat.
    stop_watch: tokio::sync::watch::Sender<bool>,
    /// The fleet, when this executor balances mounts with other hosts.
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The last scheduled check of each mount (`check_interval`).
    checks: std::sync::Mutex<HashMap<String, check::CheckSummary>>,
}

/// Handle to a running executor. `Send + Sync + Clone`; usable from an actix System or plain tokio.
///
/// ```no_run
/// # async fn demo() -> Result<(), filestore_s3::Error> {
/// use filestore_s3::{ExecutorConfig, PutOptions, S3Executor};
/// let exec = S3Executor::start(ExecutorConfig::from_env()?).await?;
/// let r = exec.put_bytes("artifacts", "builds/1/app.tar", b"...".to_vec(), PutOptions::default()).await?;
/// println!("generation {} etag {}", r.generation, r.node.unwrap().etag);
/// let page = exec.list("artifacts", "builds", Default::default()).await?;
/// exec.delete("artifacts", "builds/1/app.tar", Default::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct S3Executor {
    inner: Arc<Inner>,
    /// How many times the call this handle serves was forwarded already (`with_hops`).
    hops: u8,
}

impl S3Executor {
    /// Starts the executor: migrations (unless disabled), connections, and a supervisor per enabled
    /// mount. Invalid mount rows are logged and refused per call; the other mounts run.
    pub async fn start(config: ExecutorConfig) -> Result<Self, Error> {
        config.validate()?;
        let (arbiter, own_system) = arbiter_for_executor()?;
        let services = match on_arbiter(&arbiter, runtime::connect(config.clone())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) | Err(e) => {
                if let Some(sys) = own_system {
                    sys.stop();
                }
                return Err(e);
            }
        };
        let (stop_watch, stop_rx) = tokio::sync::watch::channel(false);
        // Only an executor that takes leases of every mount it serves balances them with others
        // (a passive or one-shot executor would count as a host that takes none).
        let balances = !config.passive && config.leased_mounts.is_none();
        if config.fleet.is_some() && !balances {
            log::info!(
                "not joining the fleet: this executor is passive or leases only some mounts"
            );
        }
        let fleet = config.fleet.clone().filter(|_| balances).map(|f| {
            Arc::new(crate::fleet::Fleet::new(
                config.owner_id.clone(),
                f,
                config.supervisor.lease_ttl,
            ))
        });
        let registry = Registry::new();
        if let Some(f) = &fleet {
            let gate: Arc<dyn filestore_s3_actors::ports::LeaseGate> = f.clone();
            let _ = registry.gate.set(gate);
        }
        let exec = S3Executor {
            inner: Arc::new(Inner {
                config,
                arbiter,
                own_system,
                services: Arc::new(services),
                registry,
                stop_watch,
                fleet,
                checks: std::sync::Mutex::default(),
            }),
            hops: 0,
        };
        if let Some(f) = exec.inner.fleet.clone() {
            // The first heartbeat says at once when the fleet cannot work (no V18, no rights).
            let services = exec.inner.services.clone();
            let first = on_arbiter(&exec.inner.arbiter, async move {
                f.heartbeat(&services.meta).await
            })
            .await;
            if let Err(e) = first.and_then(|r| r.map_err(Error::Metadata)) {
                exec.shutdown().await;
                return Err(Error::Config(format!(
                    "joining the fleet (executor_hosts, migration V18): {e}"
                )));
            }
        }
        if let Err(e) = exec.reload_mounts().await {
            exec.shutdown().await;
            return Err(e);
        }
        if exec.inner.fleet.is_some() {
            exec.inner
                .arbiter
                .spawn(run_fleet(Arc::downgrade(&exec.inner), stop_rx.clone()));
        }
        if let Some(every) = exec.inner.config.check_interval {
            exec.inner.arbiter.spawn(check::run_checks(
                Arc::downgrade(&exec.inner),
                every,
                stop_rx.clone(),
            ));
        }
        if exec.inner.config.watch_mounts {
            let c = &exec.inner.config;
            let watcher = watch::watch_mounts(
                Arc::downgrade(&exec.inner),
                c.database_url.clone(),
                c.schema.clone(),
                c.mount_reload_interval,
                stop_rx,
            );
            exec.inner.arbiter.spawn(watcher);
        }
        Ok(exec)
    }

    /// The configuration the executor runs with.
    pub fn config(&self) -> &ExecutorConfig {
        &self.inner.config
    }

    /// Inserts or replaces a `backend_mounts` row, then reloads the mounts. An invalid row is
    /// refused before it is written.
    pub async fn register_mount(&self, row: MountRow) -> Result<MountState, Error> {
        MountSpec::from_row(&row)?;
        let services = self.inner.services.clone();
        let name = row.name.clone();
        on_arbiter(&self.inner.arbiter, async move {
            services.meta.upsert_mount(&row).await
        })
        .await??;
        self.reload_mounts().await?;
        Ok(self
            .mount_states()
            .remove(&name)
            .unwrap_or(MountState::Disabled))
    }

    /// Re-reads `backend_mounts`: starts supervisors for new or changed enabled mounts and retires
    /// those of removed, disabled, invalid or changed ones.
    pub async fn reload_mounts(&self) -> Result<(), Error> {
        let inner = self.inner.clone();
        on_arbiter(&self.inner.arbiter, async move {
            inner.registry.reload(&inner.config, &inner.services).await
        })
        .await?
    }

    /// Every known mount and its state.
    pub fn mount_states(&self) -> HashMap<String, MountState> {
        self.inner.registry.states()
    }

    fn mount(&self, name: &str) -> Result<registry::ServedMount, Error> {
        self.inner.registry.get(name)
    }

    /// Supervisor status of a mount.
    pub async fn status(&self, mount: &str) -> Result<SupervisorStatus, Error> {
        let (addr, _, _) = self.mount(mount)?;
        addr.send(GetStatus).await.map_err(|_| Error::Shutdown)
    }

    /// Who holds a mount's lease as recorded in Postgres (whoever it is: this executor, another,
    /// or an owner that is gone), and whether its process is provably dead.
    pub async fn lease_holder(&self, mount: &str) -> Result<Option<LeaseHolder>, Error> {
        let services = self.inner.services.clone();
        let mount = mount.to_owned();
        on_arbiter(&self.inner.arbiter, async move {
            services.meta.lease_holder(&mount).await
        })
        .await?
        .map_err(Error::Metadata)
    }

    /// Waits up to `wait` until this executor holds `mount`'s lease, asking its supervisor to look
    /// at the lease every `poll` meanwhile (a released lease is taken at once, an expired one as
    /// soon as it expires, a provably dead local owner's at the first look). Fails with the
    /// retryable [`Error::NotOwner`] naming the holder when the wait runs out (at once when `wait`
    /// is zero), and with the mount's own error when it is not served here.
    pub async fn wait_for_lease(&self, mount: &str, wait: Duration) -> Result<(), Error> {
        const POLL: Duration = Duration::from_millis(200);
        let c = &self.inner.config;
        if c.passive
            || c.leased_mounts
                .as_ref()
                .is_some_and(|only| !only.contains(mount))
        {
            return Err(Error::Config(format!(
                "mount '{mount}': this executor takes no lease of it (ExecutorConfig::passive or leased_mounts)"
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (addr, _, _) = self.mount(mount)?;
            let status = addr.send(GetStatus).await.map_err(|_| Error::Shutdown)?;
            let refusal = match status.lease {
                LeaseStatus::Owned { .. } => return Ok(()),
                LeaseStatus::HeldBy { owner, until } => Error::NotOwner {
                    mount: mount.to_owned(),
                    owner,
                    until,
                },
                LeaseStatus::Unknown => Error::Shutdown,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(refusal);
            }
            addr.do_send(LookAtLease);
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
    }

    /// What the store holds at a path, and what Postgres records for it.
    pub async fn stat(&self, mount: &str, path: &str) -> Result<Stat, Error> {
        let (_, _, store) = self.mount(mount)?;
        let path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        let meta = self.reads_meta();
        on_arbiter(&self.inner.arbiter, reads::stat(store, meta, path)).await?
    }

    /// One page of a directory listing. Keys that do not map to a Filestore path are reported in
    /// `unmapped` rather than failing the listing.
    pub async fn list(&self, mount: &str, dir: &str, opts: ListOptions) -> Result<ListPage, Error> {
        let (_, _, store) = self.mount(mount)?;
        let dir = DirPath::parse(dir).map_err(|e| invalid_path(dir, e))?;
        let req = reads::ListRequest {
            dir,
            delimited: opts.delimited,
            token: opts.token,
            max_keys: opts.max_keys,
        };
        on_arbiter(&self.inner.arbiter, reads::list(store, req)).await?
    }

    /// Postgres as reads see it: no fence (a read changes nothing).
    /// What the mount's store was last probed to honour of conditional requests (recorded by its
    /// owner in `mount_store_conditions`), if a probe ran.
    pub async fn store_conditions(
        &self,
        mount: &str,
    ) -> Result<Option<filestore_s3_actors::model::StoreConditions>, Error> {
        use filestore_s3_actors::ports::MetaStore as _;
        Ok(self.inner.services.meta.conditions(mount).await?)
    }

    fn reads_meta(&self) -> std::sync::Arc<dyn filestore_s3_actors::ports::MetaStore> {
        self.inner.services.meta.clone()
    }

    /// Retires every mount — new calls are refused, running operations may finish for up to
    /// `config.shutdown_deadline` ([`crate::config::SHUTDOWN_DRAIN_DEADLINE`] by default), then the leases are
    /// released — and, if the executor started
    /// its own actix System, stops it. Operations cut off by the deadline stay pending and are
    /// resumed by the mount's next owner.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.inner.config.shutdown_deadline)
            .await;
    }

    /// [`shutdown`](Self::shutdown) with another deadline for running operations (a command
    /// interrupted by its user stops sooner than a host). `true` when every mount drained in time
    /// and gave its lease back.
    pub async fn shutdown_within(&self, deadline: Duration) -> bool {
        let _ = self.inner.stop_watch.send(true);
        if let Some(fleet) = self.inner.fleet.clone() {
            // Leaving first lets the other hosts' shares grow, so they take this host's mounts
            // as soon as each is released below. (After any tick under way: its heartbeat must
            // not land after the leave.)
            let services = self.inner.services.clone();
            let owner = self.inner.config.owner_id.clone();
            let left = on_arbiter(&self.inner.arbiter, async move {
                let _no_tick = fleet.tick_lock.lock().await;
                services.meta.leave_fleet(&owner).await
            });
            match tokio::time::timeout(Duration::from_secs(5), left).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    log::warn!("leaving the fleet: {e}; this host's heartbeat runs out instead")
                }
                _ => log::warn!(
                    "leaving the fleet took too long; this host's heartbeat runs out instead"
                ),
            }
        }
        let retiring: Vec<_> = self
            .inner
            .registry
            .drain()
            .await
            .into_iter()
            .map(|addr| async move { addr.send(RetireMount).await })
            .collect();
        let drained = tokio::time::timeout(deadline, futures::future::join_all(retiring))
            .await
            .is_ok();
        if !drained {
            log::warn!(
                "shutdown: operations still running after {deadline:?} are left to the mounts' next owner (they stay pending; multipart uploads stay resumable)"
            );
        }
        if let Some(sys) = &self.inner.own_system {
            sys.stop();
        }
        drained
    }
}

/// The fleet's heartbeat and balancing, every quarter of the lease duration until shutdown.
async fn run_fleet(inner: std::sync::Weak<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Quick rounds while mounts are being taken, a few at most in a row: a lease held by an
    // executor outside the fleet stays "free" to look at for good.
    const QUICK: Duration = Duration::from_millis(250);
    let mut quick_rounds = 0u32;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let Some(fleet) = me.fleet.clone() else {
            return;
        };
        let every = me.config.supervisor.lease_ttl / 4;
        let leasable = me.registry.leasable(&me.config);
        let names: Vec<String> = leasable.iter().map(|(n, _)| n.clone()).collect();
        let mut next = every;
        {
            let _one_tick = fleet.tick_lock.lock().await;
            if *stop.borrow() {
                return;
            }
            let handing = me.registry.handing_over();
            match fleet.tick(&me.services.meta, &names, &handing).await {
                Ok(out) => {
                    if out.look.is_empty() {
                        quick_rounds = 0;
                    } else if quick_rounds < 8 {
                        // A look that lost a race to another host leaves a place to fill.
                        quick_rounds += 1;
                        next = every.min(QUICK);
                    }
                    for m in &out.look {
                        if let Some((_, addr)) = leasable.iter().find(|(n, _)| n == m) {
                            addr.do_send(LookAtLease);
                        }
                    }
                    // The first candidate with no operation running: a hand-over waits for
                    // running operations, refusing the mount's new calls meanwhile.
                    for m in &out.hand_over {
                        let Some((_, addr)) = leasable.iter().find(|(n, _)| n == m) else {
                            continue;
                        };
                        let idle = addr
                            .send(GetStatus)
                            .await
                            .is_ok_and(|st| st.operations == 0);
                        if !idle {
                            continue;
                        }
                        if me.registry.rebalance(m, &me.config, &me.services).await {
                            fleet.handed_over(m);
                            next = every.min(QUICK);
                        }
                        break;
                    }
                }
                Err(e) => log::warn!("fleet: heartbeat or balancing failed ({e}); retrying"),
            }
        }
        drop(me);
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = stop.changed() => return,
        }
    }
}

fn invalid_path(path: &str, e: filestore_s3_actors::path::PathError) -> Error {
    Error::InvalidPath {
        path: path.escape_debug().to_string(),
        source: e,
    }
}
