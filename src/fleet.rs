//! The fleet: mounts balanced across the live executors of one database.
//!
//! Each balancing executor writes a heartbeat row (`executor_hosts`) every quarter of its lease
//! duration, with the address other hosts forward calls to. From the live hosts and the lease
//! table it computes its **share** of the enabled mounts, `ceil(mounts × weight / Σ weights)`,
//! and its supervisors take a free lease only while it holds fewer than that (the [`LeaseGate`]
//! they ask). The lease rows stay the only truth of who owns a mount: the fleet only decides who
//! *tries*, so no mount is ever owned twice whatever hosts believe.
//!
//! - **A host joins**: the others count it once it has been live for the settle period
//!   (`FILESTORE_FLEET_SETTLE_MS`); a host above its share then hands one mount over (the usual
//!   graceful retirement: running work ends, the lease is released, the host below its share
//!   takes it and recovers it), and the next only once every mount is leased again and a lease
//!   duration has passed.
//! - **A host dies**: its heartbeat and leases run out (at once when its process is provably dead
//!   on this machine); the survivors' shares grow and they take its mounts.
//! - **Nobody takes a mount** (a host counted live that does not take its share): a mount free
//!   for a whole lease duration may be taken by any host, whatever its share.
//!
//! Hysteresis: a host is counted for the others' hand-overs only after the settle period, hand-
//! overs go one at a time, and only from a host strictly above its share to a settled host below
//! its own; a host that comes and goes faster than the settle period moves no mount.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use filestore_s3_actors::ports::{GateRefusal, LeaseGate, MetaError};
use serde::Serialize;

use crate::config::FleetSettings;
use crate::pg::{HostRow, LeaseRow, PgMetaStore};

/// One executor's view of the fleet and its gate.
pub struct Fleet {
    owner: String,
    settings: FleetSettings,
    lease_ttl: Duration,
    gate: Mutex<Gate>,
    view: RwLock<View>,
    /// Mounts this host handed over to balance the fleet.
    pub(crate) handovers: AtomicU64,
    /// Calls this host forwarded to a mount's owner.
    pub(crate) forwarded: AtomicU64,
}

#[derive(Default)]
struct Gate {
    /// The second tick has run: until then no lease is looked at (the share is not known, and
    /// hosts started together see each other before any takes a mount).
    ready: bool,
    /// Ticks so far.
    ticks: u32,
    share: usize,
    /// Mounts whose lease this executor holds or is asking for.
    held: HashSet<String>,
    /// Mounts free for a whole lease duration: anyone may take them.
    overdue: HashSet<String>,
}

#[derive(Default, Clone)]
struct View {
    hosts: Vec<HostRow>,
    leases: HashMap<String, LeaseRow>,
    share: usize,
    keep: usize,
    /// When each mount without a live lease was first seen so.
    free_since: HashMap<String, Instant>,
    last_handover: Option<Instant>,
}

/// What one host sees of the fleet (`/healthz`, `S3Executor::fleet`).
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// This executor's id.
    pub owner: String,
    /// Where it takes forwarded calls.
    pub address: Option<String>,
    /// Live hosts with their addresses and how many mounts each holds.
    pub hosts: Vec<FleetHost>,
    /// This host's share: it takes free leases while it holds fewer.
    pub share: usize,
    /// The share counted over settled hosts only: it hands mounts over while it holds more.
    pub keep: usize,
    /// Mounts whose lease this host holds.
    pub owned: usize,
    /// Mounts this host handed over to balance the fleet since it started.
    pub handovers: u64,
    /// Calls this host forwarded to a mount's owner since it started.
    pub forwarded: u64,
}

/// A live host as another sees it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetHost {
    /// Its executor id.
    pub owner: String,
    /// Where it takes forwarded calls.
    pub address: Option<String>,
    /// Mounts whose unexpired lease it holds.
    pub mounts: usize,
    /// Seconds it has been live in its current run.
    pub live_for_seconds: f64,
}

/// `ceil(mounts × weight / total)`.
fn share_of(mounts: usize, weight: u32, total: u64) -> usize {
    if total == 0 {
        return mounts;
    }
    let n = mounts as u64 * u64::from(weight);
    usize::try_from(n.div_ceil(total)).unwrap_or(mounts)
}

/// A per-host order of mounts, so hosts asking at once prefer different free mounts.
fn preference(mount: &str, owner: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (mount, owner).hash(&mut h);
    h.finish()
}

/// What a tick decided.
pub(crate) struct TickOutcome {
    /// Mounts whose supervisors should look at their lease now.
    pub look: Vec<String>,
    /// A mount to hand over to balance the fleet.
    pub hand_over: Option<String>,
}

impl Fleet {
    /// The fleet of an executor with id `owner`.
    pub fn new(owner: String, settings: FleetSettings, lease_ttl: Duration) -> Self {
        Fleet {
            owner,
            settings,
            lease_ttl,
            gate: Mutex::default(),
            view: RwLock::default(),
            handovers: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// Where calls for `mount` go: the live holder of its lease and that host's address, when
    /// it is another live host of the fleet that takes forwarded calls.
    pub fn owner_of(&self, mount: &str) -> Option<(String, String)> {
        let view = self.view.read().expect("fleet view lock");
        let lease = view.leases.get(mount).filter(|l| l.live)?;
        if lease.owner == self.owner {
            return None;
        }
        let host = view.hosts.iter().find(|h| h.owner == lease.owner)?;
        Some((lease.owner.clone(), host.address.clone()?))
    }

    /// Whether this executor holds `mount`'s lease or is asking for it (its gate's place).
    pub fn held_here(&self, mount: &str) -> bool {
        self.gate
            .lock()
            .expect("fleet gate lock")
            .held
            .contains(mount)
    }

    /// The operations API of the live host `owner`, as the last heartbeat saw it.
    pub fn address_of(&self, owner: &str) -> Option<String> {
        if owner == self.owner {
            return None;
        }
        let view = self.view.read().expect("fleet view lock");
        view.hosts
            .iter()
            .find(|h| h.owner == owner)
            .and_then(|h| h.address.clone())
    }

    /// Forgets what it saw of `mount`'s lease (a forwarded call found it moved).
    pub fn forget_lease(&self, mount: &str) {
        self.view
            .write()
            .expect("fleet view lock")
            .leases
            .remove(mount);
    }

    /// One round: heartbeat, read the live hosts and the leases, recompute the share, and decide
    /// which supervisors look at their lease and whether a mount is handed over. `mounts` are the
    /// mounts this executor may lease.
    pub(crate) async fn tick(
        &self,
        meta: &PgMetaStore,
        mounts: &[String],
    ) -> Result<TickOutcome, MetaError> {
        let s = &self.settings;
        meta.heartbeat(&self.owner, s.address.as_deref(), s.weight, self.lease_ttl)
            .await?;
        let hosts = meta.live_hosts().await?;
        let leases: HashMap<String, LeaseRow> = meta
            .leases()
            .await?
            .into_iter()
            .filter(|l| mounts.contains(&l.mount))
            .map(|l| (l.mount.clone(), l))
            .collect();
        let total: u64 = hosts
            .iter()
            .map(|h| u64::from(h.weight))
            .sum::<u64>()
            .max(1);
        let settled: u64 = hosts
            .iter()
            .filter(|h| h.owner == self.owner || h.live_for >= s.settle)
            .map(|h| u64::from(h.weight))
            .sum::<u64>()
            .max(1);
        let share = share_of(mounts.len(), s.weight, total);
        let keep = share_of(mounts.len(), s.weight, settled);
        let mut owned: HashMap<&str, usize> = HashMap::new();
        for l in leases.values().filter(|l| l.live) {
            *owned.entry(l.owner.as_str()).or_default() += 1;
        }
        let is_live_host = |o: &str| hosts.iter().any(|h| h.owner == o);
        // Free: no live lease, or held by an executor that is not a live host (gone, or not
        // balancing: a look is harmless, the lease decides).
        let unleased: Vec<&String> = mounts
            .iter()
            .filter(|m| !leases.get(*m).is_some_and(|l| l.live))
            .collect();
        let mut free: Vec<&String> = mounts
            .iter()
            .filter(|m| match leases.get(*m) {
                Some(l) if l.live => !is_live_host(&l.owner) && l.owner != self.owner,
                _ => true,
            })
            .collect();
        free.sort_by_key(|m| preference(m, &self.owner));
        let now = Instant::now();
        let mut view = self.view.write().expect("fleet view lock");
        view.free_since.retain(|m, _| unleased.contains(&m));
        for m in &unleased {
            view.free_since.entry((*m).clone()).or_insert(now);
        }
        let overdue: HashSet<String> = view
            .free_since
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= self.lease_ttl)
            .map(|(m, _)| m.clone())
            .collect();
        let look = {
            let mut gate = self.gate.lock().expect("fleet gate lock");
            gate.ticks = gate.ticks.saturating_add(1);
            gate.ready = gate.ticks >= 2;
            if !gate.ready {
                return Ok(TickOutcome {
                    look: Vec::new(),
                    hand_over: None,
                });
            }
            gate.share = share;
            gate.overdue = overdue.clone();
            let room = share.saturating_sub(gate.held.len());
            let mut look: Vec<String> = free
                .iter()
                .filter(|m| !gate.held.contains(**m))
                .take(room)
                .map(|m| (*m).clone())
                .collect();
            for m in overdue {
                if !look.contains(&m) {
                    look.push(m);
                }
            }
            look
        };
        // Hand one mount over when above the share counted over settled hosts, every mount is
        // leased (the last one handed over was taken), a settled host is below its own share,
        // and the last hand-over is a tick old.
        let mine = owned.get(self.owner.as_str()).copied().unwrap_or(0);
        let someone_below = hosts.iter().any(|h| {
            h.owner != self.owner
                && h.live_for >= s.settle
                && owned.get(h.owner.as_str()).copied().unwrap_or(0)
                    < share_of(mounts.len(), h.weight, settled)
        });
        let paced = view
            .last_handover
            .is_none_or(|t| now.duration_since(t) >= self.lease_ttl / 4);
        let hand_over = (mine > keep && unleased.is_empty() && someone_below && paced)
            .then(|| {
                leases
                    .values()
                    .filter(|l| l.live && l.owner == self.owner)
                    .map(|l| l.mount.clone())
                    .max_by_key(|m| preference(m, &self.owner))
            })
            .flatten();
        if hand_over.is_some() {
            view.last_handover = Some(now);
            self.handovers.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("filestore_s3_fleet_handovers_total").increment(1);
        }
        metrics::gauge!("filestore_s3_fleet_live_hosts").set(hosts.len() as f64);
        metrics::gauge!("filestore_s3_fleet_share").set(share as f64);
        metrics::gauge!("filestore_s3_fleet_mounts_owned").set(mine as f64);
        view.hosts = hosts;
        view.leases = leases;
        view.share = share;
        view.keep = keep;
        Ok(TickOutcome { look, hand_over })
    }

    /// What this host sees of the fleet.
    pub fn status(&self) -> FleetStatus {
        let view = self.view.read().expect("fleet view lock").clone();
        let count = |o: &str| {
            view.leases
                .values()
                .filter(|l| l.live && l.owner == o)
                .count()
        };
        FleetStatus {
            owner: self.owner.clone(),
            address: self.settings.address.clone(),
            hosts: view
                .hosts
                .iter()
                .map(|h| FleetHost {
                    owner: h.owner.clone(),
                    address: h.address.clone(),
                    mounts: count(&h.owner),
                    live_for_seconds: h.live_for.as_secs_f64(),
                })
                .collect(),
            share: view.share,
            keep: view.keep,
            owned: count(&self.owner),
            handovers: self.handovers.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
        }
    }

    fn holder(&self, mount: &str) -> Option<(String, DateTime<Utc>)> {
        let view = self.view.read().expect("fleet view lock");
        view.leases
            .get(mount)
            .filter(|l| l.live && l.owner != self.owner)
            .map(|l| (l.owner.clone(), l.expires_at))
    }
}

impl LeaseGate for Fleet {
    fn may_take(&self, mount: &str) -> Result<(), GateRefusal> {
        {
            let mut gate = self.gate.lock().expect("fleet gate lock");
            if gate.ready
                && (gate.held.contains(mount)
                    || gate.held.len() < gate.share
                    || gate.overdue.contains(mount))
            {
                gate.held.insert(mount.to_owned());
                return Ok(());
            }
        }
        Err(GateRefusal {
            holder: self.holder(mount),
        })
    }

    fn holds(&self, mount: &str, held: bool) {
        let mut gate = self.gate.lock().expect("fleet gate lock");
        if held {
            gate.held.insert(mount.to_owned());
        } else {
            gate.held.remove(mount);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_up_and_follow_weights() {
        assert_eq!(share_of(12, 1, 3), 4);
        assert_eq!(share_of(12, 1, 2), 6);
        assert_eq!(share_of(10, 1, 3), 4);
        assert_eq!(share_of(12, 2, 4), 6);
        assert_eq!(share_of(0, 1, 3), 0);
        assert_eq!(share_of(5, 1, 0), 5);
    }

    #[test]
    fn the_gate_takes_up_to_the_share_then_only_overdue_mounts() {
        let f = Fleet::new(
            "me".into(),
            FleetSettings::default(),
            Duration::from_secs(2),
        );
        assert!(
            f.may_take("a").is_err(),
            "no share known before the first tick"
        );
        {
            let mut g = f.gate.lock().unwrap();
            g.ready = true;
            g.share = 2;
            g.overdue.insert("late".into());
        }
        assert!(f.may_take("a").is_ok());
        assert!(f.may_take("a").is_ok(), "asking again for a reserved mount");
        assert!(f.may_take("b").is_ok());
        assert!(f.may_take("c").is_err(), "the share is full");
        assert!(
            f.may_take("late").is_ok(),
            "free for a whole lease duration"
        );
        f.holds("a", false);
        f.holds("late", false);
        assert!(f.may_take("c").is_ok(), "a place was given back");
    }
}
