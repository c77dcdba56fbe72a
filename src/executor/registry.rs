//! The mount registry: which mounts run, in which state, and their supervisors. Also the
//! [`MountDirectory`] the supervisors use to find each other's buckets (copies and moves across
//! mounts), held weakly so the registry and its supervisors do not keep each other alive.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use actix::Addr;
use filestore_s3_actors::commands::RetireMount;
use filestore_s3_actors::locks::PathLocks;
use filestore_s3_actors::mount::{MountConfigError, MountSpec};
use filestore_s3_actors::ports::{MetaStore, ObjectStoreFactory};
use filestore_s3_actors::store::{MountDirectory, MountStore};
use filestore_s3_actors::{Error, MountSupervisor};

use super::runtime::Services;
use crate::config::ExecutorConfig;

/// What the executor knows about a mount.
#[derive(Debug, Clone)]
pub enum MountState {
    /// Served by a supervisor.
    Ready,
    /// `enabled = false`.
    Disabled,
    /// The row is invalid; the error names the field.
    Invalid(MountConfigError),
}

#[derive(Clone)]
pub(super) enum Slot {
    Ready {
        addr: Addr<MountSupervisor>,
        spec: Arc<MountSpec>,
        store: MountStore,
    },
    Disabled,
    Invalid(MountConfigError),
}

/// A served mount: its supervisor, spec and store.
pub(super) type ServedMount = (Addr<MountSupervisor>, Arc<MountSpec>, MountStore);

/// The running mounts of one executor.
pub(super) struct Registry {
    mounts: RwLock<HashMap<String, Slot>>,
    /// Reloads run one at a time (the watcher's and `register_mount`'s).
    reloading: tokio::sync::Mutex<()>,
    /// Set by `drain` (shutdown): no reload starts a supervisor after it.
    closed: std::sync::atomic::AtomicBool,
    /// Hand-overs in progress: mount → the spec its next supervisor gets (the latest row).
    handovers: std::sync::Mutex<HashMap<String, MountSpec>>,
    /// Per-path ordering shared by every supervisor.
    locks: PathLocks,
    /// The fleet's gate, when the executor balances mounts with other hosts.
    pub(super) gate: std::sync::OnceLock<Arc<dyn filestore_s3_actors::ports::LeaseGate>>,
    this: Weak<Registry>,
}

struct Directory(Weak<Registry>);

impl MountDirectory for Directory {
    fn mount(&self, name: &str) -> Option<MountStore> {
        let registry = self.0.upgrade()?;
        let mounts = registry.mounts.read().expect("mount table lock");
        match mounts.get(name)? {
            Slot::Ready { store, .. } => Some(store.clone()),
            _ => None,
        }
    }
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new_cyclic(|this| Registry {
            mounts: RwLock::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
            handovers: std::sync::Mutex::new(HashMap::new()),
            locks: PathLocks::default(),
            gate: std::sync::OnceLock::new(),
            this: this.clone(),
        })
    }

    /// Applies the current `backend_mounts` rows: starts supervisors for new or changed enabled
    /// mounts and retires those of removed, disabled, invalid or changed ones. Runs on the
    /// executor's arbiter.
    ///
    /// A changed mount is handed over: its old supervisor is retired (refusing new calls with the
    /// retryable `Error::Shutdown`) and the new one starts only once the old one has finished its
    /// running operations and given up the lease, so no operation of the mount ever has two
    /// owners, in this process or across hosts.
    pub async fn reload(
        &self,
        config: &ExecutorConfig,
        services: &Arc<Services>,
    ) -> Result<(), Error> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let rows = services.meta.load_mounts().await?;
        // Calls keep seeing the current table while the new one is built (reloads are serialized,
        // and so are hand-overs and `drain`, so no other writer changes it meanwhile).
        let mut old = self.mounts.read().expect("mount table lock").clone();
        let mut new = HashMap::new();
        for row in rows {
            // A pending hand-over goes on only if this reload asks for one again (below).
            let pending = self
                .handovers
                .lock()
                .expect("hand-over table lock")
                .remove(&row.name)
                .is_some();
            let slot = match MountSpec::from_row(&row) {
                Err(e) => {
                    log::error!("{e}; the mount is not served");
                    Slot::Invalid(e)
                }
                Ok(spec) if !spec.enabled => Slot::Disabled,
                Ok(spec) => match old.remove(&row.name) {
                    Some(Slot::Ready {
                        addr,
                        spec: running,
                        store,
                    }) if *running == spec => Slot::Ready {
                        addr,
                        spec: running,
                        store,
                    },
                    Some(Slot::Ready {
                        addr,
                        spec: running,
                        store,
                    }) => {
                        // One hand-over per mount at a time; a later change only updates the
                        // spec it ends with.
                        let name = spec.name.clone();
                        self.handovers
                            .lock()
                            .expect("hand-over table lock")
                            .insert(name.clone(), spec);
                        if !pending {
                            self.hand_over(addr.clone(), name, config, services);
                        }
                        Slot::Ready {
                            addr,
                            spec: running,
                            store,
                        }
                    }
                    _ => self.start_supervisor(config, services, spec)?,
                },
            };
            new.insert(row.name.clone(), slot);
        }
        for slot in old.into_values() {
            if let Slot::Ready { addr, .. } = slot {
                addr.do_send(RetireMount);
            }
        }
        *self.mounts.write().expect("mount table lock") = new;
        Ok(())
    }

    /// Retires `old` and, once it has drained and released the lease, starts a supervisor for
    /// `spec` in its slot (unless a later reload replaced the slot meanwhile).
    fn hand_over(
        &self,
        old: Addr<MountSupervisor>,
        name: String,
        config: &ExecutorConfig,
        services: &Arc<Services>,
    ) {
        let (this, config, services) = (self.this.clone(), config.clone(), services.clone());
        log::info!("mount {name}: handing over once running operations end");
        actix::spawn(async move {
            let _ = old.send(RetireMount).await;
            let Some(registry) = this.upgrade() else {
                return;
            };
            let _one_at_a_time = registry.reloading.lock().await;
            let spec = registry
                .handovers
                .lock()
                .expect("hand-over table lock")
                .remove(&name);
            let current = matches!(
                registry.mounts.read().expect("mount table lock").get(&name),
                Some(Slot::Ready { addr, .. }) if *addr == old
            ) && !registry.closed.load(std::sync::atomic::Ordering::SeqCst);
            // A later reload disabled or removed the mount, or the executor shut down.
            let (Some(spec), true) = (spec, current) else {
                return;
            };
            let slot = match registry.start_supervisor(&config, &services, spec) {
                Ok(slot) => slot,
                Err(e) => {
                    log::error!("mount {name}: cannot start its new supervisor: {e}");
                    Slot::Invalid(filestore_s3_actors::mount::MountConfigError {
                        mount: name.clone(),
                        field: "endpoint",
                        reason: e.to_string(),
                    })
                }
            };
            registry
                .mounts
                .write()
                .expect("mount table lock")
                .insert(name, slot);
        });
    }

    fn start_supervisor(
        &self,
        config: &ExecutorConfig,
        services: &Services,
        spec: MountSpec,
    ) -> Result<Slot, Error> {
        let spec = Arc::new(spec);
        let store = services
            .factory
            .for_mount(&spec)
            .map_err(|e| Error::Config(format!("mount '{}': {e}", spec.name)))?;
        let store = MountStore::new(spec.clone(), store, config.supervisor.retry);
        let meta: Arc<dyn MetaStore> = services.meta.clone();
        let publisher = services.publisher.clone();
        let settings = config.supervisor;
        let st = store.clone();
        let locks = self.locks.clone();
        let owner = config.owner_id.clone();
        let passive = config.passive
            || config
                .leased_mounts
                .as_ref()
                .is_some_and(|only| !only.contains(&spec.name));
        let directory: Arc<dyn MountDirectory> = Arc::new(Directory(self.this.clone()));
        let gate = self.gate.get().cloned();
        let addr = actix::Supervisor::start(move |_| {
            let s = MountSupervisor::new(st, meta, publisher, settings)
                .with_owner(owner)
                .with_passive(passive)
                .with_path_locks(locks)
                .with_mount_directory(directory);
            match gate {
                Some(g) => s.with_lease_gate(g),
                None => s,
            }
        });
        Ok(Slot::Ready { addr, spec, store })
    }

    /// The served mounts this executor may lease, with their supervisors.
    pub fn leasable(&self, config: &ExecutorConfig) -> Vec<(String, Addr<MountSupervisor>)> {
        if config.passive {
            return Vec::new();
        }
        self.mounts
            .read()
            .expect("mount table lock")
            .iter()
            .filter(|(name, _)| {
                config
                    .leased_mounts
                    .as_ref()
                    .is_none_or(|only| only.contains(*name))
            })
            .filter_map(|(name, slot)| match slot {
                Slot::Ready { addr, .. } => Some((name.clone(), addr.clone())),
                _ => None,
            })
            .collect()
    }

    /// Hands `name` over to balance the fleet: its supervisor retires (running operations end,
    /// the lease is released) and a new one for the same row starts, which takes the lease again
    /// only when the fleet's gate lets it.
    /// `false` when it was not started (shutting down, not served here, a hand-over under way).
    pub async fn rebalance(
        &self,
        name: &str,
        config: &ExecutorConfig,
        services: &Arc<Services>,
    ) -> bool {
        let _one_at_a_time = self.reloading.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let Some(Slot::Ready { addr, spec, .. }) = self
            .mounts
            .read()
            .expect("mount table lock")
            .get(name)
            .cloned()
        else {
            return false;
        };
        let mut handovers = self.handovers.lock().expect("hand-over table lock");
        if handovers.contains_key(name) {
            return false;
        }
        handovers.insert(name.to_owned(), (*spec).clone());
        drop(handovers);
        log::info!("mount {name}: handing over to balance the fleet once running operations end");
        self.hand_over(addr, name.to_owned(), config, services);
        true
    }

    /// The mounts being handed over (a changed mount's hand-over, or the fleet's).
    pub fn handing_over(&self) -> std::collections::HashSet<String> {
        self.handovers
            .lock()
            .expect("hand-over table lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Every known mount and its state.
    pub fn states(&self) -> HashMap<String, MountState> {
        self.mounts
            .read()
            .expect("mount table lock")
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Slot::Ready { .. } => MountState::Ready,
                    Slot::Disabled => MountState::Disabled,
                    Slot::Invalid(e) => MountState::Invalid(e.clone()),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// A served mount's supervisor, spec and store; a typed error for any other state.
    pub fn get(&self, name: &str) -> Result<ServedMount, Error> {
        match self.mounts.read().expect("mount table lock").get(name) {
            Some(Slot::Ready { addr, spec, store }) => {
                Ok((addr.clone(), spec.clone(), store.clone()))
            }
            Some(Slot::Disabled) => Err(Error::MountDisabled {
                mount: name.to_owned(),
            }),
            Some(Slot::Invalid(e)) => Err(Error::InvalidMount(e.clone())),
            None => Err(Error::UnknownMount {
                mount: name.to_owned(),
            }),
        }
    }

    /// Wakes the notifier of `mount`, if this executor serves it (owners only relay).
    pub fn poke_notifier(&self, mount: &str) {
        if let Some(Slot::Ready { addr, .. }) =
            self.mounts.read().expect("mount table lock").get(mount)
        {
            addr.do_send(filestore_s3_actors::commands::RelayOutbox);
        }
    }

    /// Removes every mount, returning the supervisors to retire; no reload runs after it.
    pub async fn drain(&self) -> Vec<Addr<MountSupervisor>> {
        let _one_at_a_time = self.reloading.lock().await;
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.mounts
            .write()
            .expect("mount table lock")
            .drain()
            .filter_map(|(_, v)| match v {
                Slot::Ready { addr, .. } => Some(addr),
                _ => None,
            })
            .collect()
    }
}
