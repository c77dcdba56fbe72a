//! The fleet's rows: each balancing executor's heartbeat in `executor_hosts`, and the lease
//! table as the fleet reads it to balance mounts.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{pg, PgMetaStore};
use crate::liveness::{Liveness, OwnerLock, ProcessIdentity};
use filestore_s3_actors::ports::MetaError;

/// A live host of the fleet, as its heartbeat row says.
#[derive(Debug, Clone)]
pub struct HostRow {
    /// Its executor id (`mount_leases.owner`).
    pub owner: String,
    /// Where it takes forwarded calls, if anywhere.
    pub address: Option<String>,
    /// Its weight in the share of mounts.
    pub weight: u32,
    /// How long it has been live in its current run (the database's clock).
    pub live_for: Duration,
    /// When its row runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// A mount's lease as the fleet reads it.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    /// The mount.
    pub mount: String,
    /// Its holder.
    pub owner: String,
    /// Whether the lease is unexpired (the database's clock).
    pub live: bool,
    /// When it runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl PgMetaStore {
    /// Writes (or renews) this host's heartbeat: live for `ttl` from now.
    pub async fn heartbeat(
        &self,
        owner: &str,
        address: Option<&str>,
        weight: u32,
        ttl: Duration,
    ) -> Result<(), MetaError> {
        let c = self.client().await?;
        let me = self
            .owner_lock
            .get_or_init(OwnerLock::current)
            .as_ref()
            .map(|l| l.identity().to_string());
        let weight = i32::try_from(weight).unwrap_or(i32::MAX);
        c.execute(
            &cached!(
                c,
                "INSERT INTO executor_hosts (owner, address, weight, owner_process, expires_at)
                 VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 millisecond')
                 ON CONFLICT (owner) DO UPDATE SET address = EXCLUDED.address,
                    weight = EXCLUDED.weight, owner_process = EXCLUDED.owner_process,
                    heartbeat_at = now(), expires_at = EXCLUDED.expires_at,
                    -- a row that had run out starts a new run
                    started_at = CASE WHEN executor_hosts.expires_at > now()
                                      THEN executor_hosts.started_at ELSE now() END"
            ),
            &[&owner, &address, &weight, &me, &ttl_ms(ttl)],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    /// Removes this host's heartbeat (it leaves the fleet: the others' shares grow at once).
    pub async fn leave_fleet(&self, owner: &str) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            &cached!(c, "DELETE FROM executor_hosts WHERE owner = $1"),
            &[&owner],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    /// The live hosts, without those whose process is provably dead on this machine; rows that
    /// ran out over an hour ago are removed on the way.
    pub async fn live_hosts(&self) -> Result<Vec<HostRow>, MetaError> {
        let c = self.client().await?;
        c.execute(
            &cached!(
                c,
                "DELETE FROM executor_hosts WHERE expires_at < now() - interval '1 hour'"
            ),
            &[],
        )
        .await
        .map_err(pg)?;
        let rows = c
            .query(
                &cached!(
                    c,
                    "SELECT owner, address, weight, owner_process,
                            (extract(epoch FROM now() - started_at) * 1000)::bigint, expires_at
                     FROM executor_hosts WHERE expires_at > now() ORDER BY owner"
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        let mut live = Vec::with_capacity(rows.len());
        for r in rows {
            let process = r.get::<_, Option<String>>(3);
            let dead = process
                .as_deref()
                .and_then(ProcessIdentity::parse)
                .is_some_and(|p| matches!(p.liveness(), Liveness::Dead(_)));
            if dead {
                // Gone for good: its row goes (only that run's: same owner and process).
                let owner: String = r.get(0);
                c.execute(
                    &cached!(
                        c,
                        "DELETE FROM executor_hosts WHERE owner = $1 AND owner_process = $2"
                    ),
                    &[&owner, &process],
                )
                .await
                .map_err(pg)?;
                log::info!("fleet: host '{owner}' is gone (its process on this machine has exited); its mounts are shared out");
            } else {
                live.push(r);
            }
        }
        Ok(live
            .iter()
            .map(|r| HostRow {
                owner: r.get(0),
                address: r.get(1),
                weight: u32::try_from(r.get::<_, i32>(2)).unwrap_or(1).max(1),
                live_for: Duration::from_millis(u64::try_from(r.get::<_, i64>(4)).unwrap_or(0)),
                expires_at: r.get(5),
            })
            .collect())
    }

    /// Every mount's lease row.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &cached!(
                    c,
                    "SELECT mount, owner, expires_at > now(), expires_at FROM mount_leases"
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| LeaseRow {
                mount: r.get(0),
                owner: r.get(1),
                live: r.get(2),
                expires_at: r.get(3),
            })
            .collect())
    }
}
