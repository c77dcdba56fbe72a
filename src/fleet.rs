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
//!   (`FILESTORE_FLEET_SETTLE_MS`); a host above its share (or two mounts above a settled host
//!   below its own) then hands one mount over (the usual graceful retirement: running work ends,
//!   the lease is released, the host below its share takes it and recovers it; the giver does not
//!   take it back for two lease durations), and the next only once that one is taken and a
//!   heartbeat has passed.
//! - **A host dies**: its heartbeat and leases run out (at once when its process is provably dead
//!   on this machine); the survivors' shares grow and they take its mounts.
//! - **Nobody takes a mount** (a host counted live that does not take its share): a mount free
//!   for a whole lease duration may be taken by any host, whatever its share.
//!
//! Hysteresis: a host is counted for the others' hand-overs only after the settle period, hand-
//! overs go one at a time, and only from a host above its share (or two mounts above the taker)
//! to a settled host below its own; a host that comes and goes faster than the settle period
//! moves no mount.

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
    /// When this host last handed a mount over.
    last_handover: Mutex<Option<Instant>>,
    /// One client per owner's address (an https client's trust store is read once).
    clients: Mutex<HashMap<String, crate::api::client::ServeClient>>,
    /// Held by a tick and by leaving the fleet: a heartbeat never lands after the leave.
    pub(crate) tick_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Gate {
    /// The second tick has run: until then no lease is looked at (the share is not known, and
    /// hosts started together see each other before any takes a mount).
    ready: bool,
    /// Ticks so far.
    ticks: u32,
    share: usize,
    /// Mounts whose lease this executor holds or is asking for: the supervisor holding the
    /// place, and since when.
    held: HashMap<String, (u64, Instant)>,
    /// Mounts free for a whole lease duration: anyone may take them.
    overdue: HashSet<String>,
    /// Mounts this host handed over, and when: not taken back for two lease durations.
    handed: HashMap<String, Instant>,
}

#[derive(Default, Clone)]
struct View {
    hosts: Vec<HostRow>,
    leases: HashMap<String, LeaseRow>,
    share: usize,
    keep: usize,
    /// When each mount without a live lease was first seen so.
    free_since: HashMap<String, Instant>,
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

/// Whether a host holding `mine` mounts hands one over: a settled host has room in its share
/// (holding `taker` mounts, the fewest of those), and this host is above its share counted over
/// settled hosts (`keep`) or two mounts above that host.
fn should_hand_over(mine: usize, keep: usize, taker: Option<usize>) -> bool {
    taker.is_some_and(|t| mine > keep || mine >= t + 2)
}

/// What a tick decided.
pub(crate) struct TickOutcome {
    /// Mounts whose supervisors should look at their lease now.
    pub look: Vec<String>,
    /// Mounts this host could hand over to balance the fleet, best first (the loop takes the
    /// first with no operation running).
    pub hand_over: Vec<String>,
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
            tick_lock: tokio::sync::Mutex::new(()),
            last_handover: Mutex::new(None),
            clients: Mutex::default(),
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
            .contains_key(mount)
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

    /// The client of the operations API at `address` (made once; an address it cannot use is
    /// logged each time it is asked for).
    pub(crate) fn client_for(&self, address: &str) -> Option<crate::api::client::ServeClient> {
        let mut clients = self.clients.lock().expect("fleet lock");
        if let Some(c) = clients.get(address) {
            return Some(c.clone());
        }
        match crate::api::client::ServeClient::new(address, self.settings.token.clone()) {
            Ok(c) => {
                let c = c.with_timeout(self.settings.forward_timeout);
                clients.insert(address.to_owned(), c.clone());
                Some(c)
            }
            Err(e) => {
                log::warn!("fleet: cannot forward to {address}: {e}; the call runs here");
                None
            }
        }
    }

    /// Forgets what it saw of `mount`'s lease (a forwarded call found it moved).
    pub fn forget_lease(&self, mount: &str) {
        self.view
            .write()
            .expect("fleet view lock")
            .leases
            .remove(mount);
    }

    /// A mount was handed over (its supervisor retired): counted, paced, and not taken back.
    pub(crate) fn handed_over(&self, mount: &str) {
        let now = Instant::now();
        *self.last_handover.lock().expect("fleet lock") = Some(now);
        self.gate
            .lock()
            .expect("fleet gate lock")
            .handed
            .insert(mount.to_owned(), now);
        self.handovers.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("filestore_s3_fleet_handovers_total").increment(1);
    }

    /// Writes this host's heartbeat.
    pub(crate) async fn heartbeat(&self, meta: &PgMetaStore) -> Result<(), MetaError> {
        let s = &self.settings;
        meta.heartbeat(&self.owner, s.address.as_deref(), s.weight, self.lease_ttl)
            .await
    }

    /// One round: heartbeat, read the live hosts and the leases, recompute the share, and decide
    /// which supervisors look at their lease and whether a mount is handed over. `mounts` are the
    /// mounts this executor may lease; `handing_over`: the mounts of this host being handed over
    /// (their running operations ending).
    pub(crate) async fn tick(
        &self,
        meta: &PgMetaStore,
        mounts: &[String],
        handing_over: &HashSet<String>,
    ) -> Result<TickOutcome, MetaError> {
        let s = &self.settings;
        self.heartbeat(meta).await?;
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
                    hand_over: Vec::new(),
                });
            }
            gate.share = share;
            gate.overdue = overdue.clone();
            // The places follow the lease table: a place is kept while this host holds the
            // lease there, or while it is being asked for (a lease duration at most).
            let ttl = self.lease_ttl;
            gate.held.retain(|m, (_, since)| {
                leases
                    .get(m)
                    .is_some_and(|l| l.live && l.owner == self.owner)
                    || now.duration_since(*since) < ttl
            });
            // A mount being handed over is not taken back until two lease durations after its
            // hand-over ended (its running operations can take long).
            for m in handing_over {
                if let Some(at) = gate.handed.get_mut(m) {
                    *at = now;
                }
            }
            gate.handed
                .retain(|_, at| now.duration_since(*at) < 2 * ttl);
            let room = share.saturating_sub(gate.held.len());
            let mut look: Vec<String> = free
                .iter()
                .filter(|m| !gate.held.contains_key(**m) && !gate.handed.contains_key(**m))
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
        // Hand one mount over when every mount is leased, no hand-over of this host is under
        // way, the last one is a heartbeat old, and a settled host has room in its share: when
        // this host is above its share counted over settled hosts, or two mounts above that
        // host (ceil shares would otherwise leave a newcomer empty for good).
        let mine = owned.get(self.owner.as_str()).copied().unwrap_or(0);
        let taker_holds = hosts
            .iter()
            .filter(|h| {
                h.owner != self.owner
                    && h.live_for >= s.settle
                    && owned.get(h.owner.as_str()).copied().unwrap_or(0)
                        < share_of(mounts.len(), h.weight, total)
            })
            .map(|h| owned.get(h.owner.as_str()).copied().unwrap_or(0))
            .min();
        let paced = self
            .last_handover
            .lock()
            .expect("fleet lock")
            .is_none_or(|t| now.duration_since(t) >= self.lease_ttl / 4);
        let above = should_hand_over(mine, keep, taker_holds);
        let hand_over = if above && unleased.is_empty() && handing_over.is_empty() && paced {
            let mut mine: Vec<String> = leases
                .values()
                .filter(|l| l.live && l.owner == self.owner)
                .map(|l| l.mount.clone())
                .collect();
            mine.sort_by_key(|m| std::cmp::Reverse(preference(m, &self.owner)));
            mine
        } else {
            Vec::new()
        };
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
    fn may_take(&self, mount: &str, who: u64) -> Result<(), GateRefusal> {
        {
            let mut gate = self.gate.lock().expect("fleet gate lock");
            let mine = gate.held.get(mount).map(|(w, _)| *w);
            let overdue = gate.overdue.contains(mount);
            let allowed = gate.ready
                && match mine {
                    // Its own place, asked again.
                    Some(w) if w == who => true,
                    // Another supervisor of the mount (retiring) still holds the place.
                    Some(_) => false,
                    None => {
                        overdue
                            || (gate.held.len() < gate.share && !gate.handed.contains_key(mount))
                    }
                };
            if allowed {
                gate.held.insert(mount.to_owned(), (who, Instant::now()));
                return Ok(());
            }
        }
        Err(GateRefusal {
            holder: self.holder(mount),
        })
    }

    fn holds(&self, mount: &str, who: u64, held: bool) {
        let mut gate = self.gate.lock().expect("fleet gate lock");
        match (held, gate.held.get(mount).map(|(w, _)| *w)) {
            (true, _) => {
                gate.held.insert(mount.to_owned(), (who, Instant::now()));
            }
            (false, Some(w)) if w == who => {
                gate.held.remove(mount);
            }
            (false, _) => {}
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

    /// Hosts (all settled, weight 1) hand over by the rule until none does: the counts end within
    /// one of each other and none above its share, from any start.
    #[test]
    fn hand_overs_converge_to_an_even_spread_and_stop() {
        for (mounts, start) in [
            (12, vec![12, 0, 0]),
            (12, vec![6, 6, 0]),
            (12, vec![3, 3, 3, 3, 0]),
            (4, vec![2, 2, 0]),
            (10, vec![4, 4, 2]),
            (12, vec![4, 4, 4]),
            (7, vec![7, 0]),
        ] {
            let mut held = start.clone();
            let n = held.len() as u64;
            let share = share_of(mounts, 1, n);
            let mut moves = 0;
            loop {
                let giver = (0..held.len()).find(|&i| {
                    let taker = (0..held.len())
                        .filter(|&j| j != i && held[j] < share)
                        .map(|j| held[j])
                        .min();
                    should_hand_over(held[i], share, taker)
                });
                let Some(i) = giver else { break };
                let j = (0..held.len())
                    .filter(|&j| j != i && held[j] < share)
                    .min_by_key(|&j| held[j])
                    .unwrap();
                held[i] -= 1;
                held[j] += 1;
                moves += 1;
                assert!(moves <= mounts, "{start:?}: no end ({held:?})");
            }
            let (lo, hi) = (*held.iter().min().unwrap(), *held.iter().max().unwrap());
            assert!(hi - lo <= 1 && hi <= share, "{start:?} ended at {held:?}");
            assert_eq!(held.iter().sum::<usize>(), mounts);
        }
    }

    #[test]
    fn the_gate_takes_up_to_the_share_then_only_overdue_mounts() {
        let f = Fleet::new(
            "me".into(),
            FleetSettings::default(),
            Duration::from_secs(2),
        );
        assert!(
            f.may_take("a", 1).is_err(),
            "no share known before the first tick"
        );
        {
            let mut g = f.gate.lock().unwrap();
            g.ready = true;
            g.share = 2;
            g.overdue.insert("late".into());
            g.handed.insert("given".into(), Instant::now());
        }
        assert!(f.may_take("a", 1).is_ok());
        assert!(
            f.may_take("a", 1).is_ok(),
            "asking again for a reserved mount"
        );
        assert!(
            f.may_take("a", 2).is_err(),
            "another supervisor of the mount while the first holds its place"
        );
        f.holds("a", 2, false);
        assert!(
            f.held_here("a"),
            "a false from another supervisor changes nothing"
        );
        assert!(f.may_take("b", 3).is_ok());
        assert!(f.may_take("c", 4).is_err(), "the share is full");
        assert!(
            f.may_take("late", 5).is_ok(),
            "free for a whole lease duration"
        );
        f.holds("a", 1, false);
        f.holds("late", 5, false);
        assert!(
            f.may_take("given", 6).is_err(),
            "handed over: not taken back"
        );
        assert!(f.may_take("c", 4).is_ok(), "a place was given back");
    }
}
