//! Mount leases: acquisition, renewal, release, and the fencing check every write makes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use filestore_s3_actors::model::{Fence, LeaseState};
use filestore_s3_actors::ports::MetaError;

use super::{pg, PgMetaStore};
use crate::liveness::{Liveness, OwnerLock, ProcessIdentity};

/// The holder of a mount's lease as recorded, and what this machine can tell of its process.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    /// The holder's executor id.
    pub owner: String,
    /// Its lease's epoch.
    pub epoch: i64,
    /// Until when it holds the lease unless renewed (the database's clock).
    pub expires_at: DateTime<Utc>,
    /// The process that took the lease, when it recorded one.
    pub process: Option<ProcessIdentity>,
    /// Whether that process is provably gone.
    pub liveness: Liveness,
}

impl LeaseHolder {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        let process = row
            .get::<_, Option<String>>(3)
            .as_deref()
            .and_then(ProcessIdentity::parse);
        let liveness = match &process {
            Some(p) => p.liveness(),
            None => Liveness::MaybeAlive("the holder recorded no process identity".into()),
        };
        LeaseHolder {
            owner: row.get(0),
            expires_at: row.get(1),
            epoch: row.get(2),
            process,
            liveness,
        }
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Fails with `fenced` unless `owner` holds `mount`'s lease at `epoch` (any epoch when `None`)
/// and it has not expired. `FOR SHARE` keeps a takeover from slipping in before the surrounding
/// transaction commits. Times are the database's, so hosts' clocks do not matter.
pub(super) async fn check_fence<C: GenericClient>(
    c: &C,
    mount: &str,
    owner: &str,
    epoch: Option<i64>,
) -> Result<(), MetaError> {
    let held = c
        .query_opt(
            &cached!(
                c,
                "SELECT 1 FROM mount_leases
             WHERE mount = $1 AND owner = $2 AND ($3::bigint IS NULL OR epoch = $3)
               AND expires_at > now()
             FOR SHARE"
            ),
            &[&mount, &owner, &epoch],
        )
        .await
        .map_err(pg)?;
    if held.is_none() {
        return Err(MetaError {
            cause: None,
            retryable: false,
            fenced: true,
            message: format!(
                "executor '{owner}' no longer holds the lease of mount '{mount}'{}",
                epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default()
            ),
        });
    }
    Ok(())
}

impl PgMetaStore {
    /// The fencing check of this view's writes (none for an unfenced view).
    pub(super) async fn fenced<C: GenericClient>(&self, c: &C) -> Result<(), MetaError> {
        match &self.fence {
            Some(f) => check_fence(c, &f.mount, &f.owner, Some(f.epoch)).await,
            None => Ok(()),
        }
    }

    pub(super) async fn do_acquire_lease(
        &self,
        mount: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseState, MetaError> {
        let c = self.client().await?;
        let me = self
            .owner_lock
            .get_or_init(OwnerLock::current)
            .as_ref()
            .map(|l| l.identity().to_string());
        let taken = c
            .query_opt(
                &cached!(
                    c,
                    "INSERT INTO mount_leases (mount, owner, epoch, expires_at, owner_process)
                 VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond', $4)
                 ON CONFLICT (mount) DO UPDATE SET owner = EXCLUDED.owner,
                    epoch = mount_leases.epoch + 1, expires_at = EXCLUDED.expires_at,
                    acquired_at = now(), renewed_at = now(),
                    owner_process = EXCLUDED.owner_process
                 WHERE mount_leases.expires_at <= now() OR mount_leases.owner = EXCLUDED.owner
                 RETURNING epoch"
                ),
                &[&mount, &owner, &ttl_ms(ttl), &me],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = taken {
            return Ok(LeaseState::Owned(Fence {
                mount: mount.to_owned(),
                owner: owner.to_owned(),
                epoch: row.get(0),
            }));
        }
        let row = c
            .query_one(
                &cached!(
                    c,
                    "SELECT owner, expires_at, epoch, owner_process FROM mount_leases WHERE mount = $1"
                ),
                &[&mount],
            )
            .await
            .map_err(pg)?;
        let holder = LeaseHolder::from_row(&row);
        if let Liveness::Dead(why) = &holder.liveness {
            // Compare-and-swap on what was judged: the same holder, epoch and process, so a lease
            // taken by anyone else meanwhile is left alone (a dead process renews nothing).
            let broken = c
                .query_opt(
                    &cached!(
                        c,
                        "UPDATE mount_leases SET owner = $2, epoch = epoch + 1,
                        expires_at = now() + $3::bigint * interval '1 millisecond',
                        acquired_at = now(), renewed_at = now(), owner_process = $4
                     WHERE mount = $1 AND owner = $5 AND epoch = $6
                       AND owner_process IS NOT DISTINCT FROM $7
                     RETURNING epoch"
                    ),
                    &[
                        &mount,
                        &owner,
                        &ttl_ms(ttl),
                        &me,
                        &holder.owner,
                        &holder.epoch,
                        &holder.process.as_ref().map(|p| p.to_string()),
                    ],
                )
                .await
                .map_err(pg)?;
            if let Some(row) = broken {
                let epoch: i64 = row.get(0);
                // The dead process's lock file stays (swept after a day): other judges of the
                // same process — its other leases, its fleet heartbeat — must keep finding it
                // dead, where a removed file would make it "maybe alive" again.
                log::warn!(
                    "mount {mount}: broke the lease of executor '{}' (epoch {}, until {}): {why}; \
                     taken by '{owner}' at epoch {epoch}",
                    holder.owner,
                    holder.epoch,
                    holder.expires_at
                );
                return Ok(LeaseState::Owned(Fence {
                    mount: mount.to_owned(),
                    owner: owner.to_owned(),
                    epoch,
                }));
            }
        }
        Ok(LeaseState::HeldBy {
            owner: holder.owner,
            expires_at: holder.expires_at,
        })
    }

    /// Who holds `mount`'s lease now, if anyone ever did.
    pub async fn lease_holder(&self, mount: &str) -> Result<Option<LeaseHolder>, MetaError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &cached!(
                    c,
                    "SELECT owner, expires_at, epoch, owner_process FROM mount_leases WHERE mount = $1"
                ),
                &[&mount],
            )
            .await
            .map_err(pg)?;
        Ok(row.as_ref().map(LeaseHolder::from_row))
    }

    pub(super) async fn do_renew_lease(
        &self,
        fence: &Fence,
        ttl: Duration,
    ) -> Result<bool, MetaError> {
        let c = self.client().await?;
        let n = c
            .execute(
                &cached!(c, "UPDATE mount_leases SET expires_at = now() + $4::bigint * interval '1 millisecond',
                        renewed_at = now()
                 WHERE mount = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()"),
                &[&fence.mount, &fence.owner, &fence.epoch, &ttl_ms(ttl)],
            )
            .await
            .map_err(pg)?;
        Ok(n == 1)
    }

    pub(super) async fn do_release_lease(&self, fence: &Fence) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            &cached!(
                c,
                "UPDATE mount_leases SET expires_at = now()
             WHERE mount = $1 AND owner = $2 AND epoch = $3"
            ),
            &[&fence.mount, &fence.owner, &fence.epoch],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    pub(super) async fn do_lease_for_writer(
        &self,
        mount: &str,
    ) -> Result<Option<LeaseState>, MetaError> {
        let Some(f) = &self.fence else {
            return Ok(None);
        };
        let c = self.client().await?;
        let row = c
            .query_opt(
                &cached!(
                    c,
                    "SELECT owner, expires_at, epoch, expires_at > now() FROM mount_leases
                     WHERE mount = $1"
                ),
                &[&mount],
            )
            .await
            .map_err(pg)?;
        Ok(Some(match row {
            Some(r) if r.get::<_, bool>(3) && r.get::<_, String>(0) == f.owner => {
                LeaseState::Owned(Fence {
                    mount: mount.to_owned(),
                    owner: f.owner.clone(),
                    epoch: r.get(2),
                })
            }
            Some(r) if r.get::<_, bool>(3) => LeaseState::HeldBy {
                owner: r.get(0),
                expires_at: r.get(1),
            },
            _ => LeaseState::HeldBy {
                owner: String::new(),
                expires_at: Utc::now(),
            },
        }))
    }
}
