//! Mount leases: acquisition, renewal, release, and the fencing check every write makes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use filestore_s3_actors::model::{Fence, LeaseState};
use filestore_s3_actors::ports::MetaError;

use super::{pg, PgMetaStore};

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
        let taken = c
            .query_opt(
                &cached!(
                    c,
                    "INSERT INTO mount_leases (mount, owner, epoch, expires_at)
                 VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (mount) DO UPDATE SET owner = EXCLUDED.owner,
                    epoch = mount_leases.epoch + 1, expires_at = EXCLUDED.expires_at,
                    acquired_at = now(), renewed_at = now()
                 WHERE mount_leases.expires_at <= now() OR mount_leases.owner = EXCLUDED.owner
                 RETURNING epoch"
                ),
                &[&mount, &owner, &ttl_ms(ttl)],
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
                    "SELECT owner, expires_at FROM mount_leases WHERE mount = $1"
                ),
                &[&mount],
            )
            .await
            .map_err(pg)?;
        Ok(LeaseState::HeldBy {
            owner: row.get(0),
            expires_at: row.get::<_, DateTime<Utc>>(1),
        })
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
}
