//! Reading a mount's committed events back from the outbox (the change feed's source of truth).

use filestore_s3_actors::model::OutboxEvent;
use filestore_s3_actors::ports::MetaError;

use super::outbox::events_of;
use super::{pg, PgMetaStore};

impl PgMetaStore {
    /// Outbox rows of `mount` with an id above `after`, in id order (a mount's commit order),
    /// published or not; and the mount's feed horizon: the highest id pruned by the outbox
    /// retention (0 if none), below which a feed cannot resume.
    pub async fn events_after(
        &self,
        mount: &str,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<OutboxEvent>, i64), MetaError> {
        let c = self.client().await?;
        let horizon = c
            .query_opt(
                "SELECT pruned_through FROM outbox_horizon WHERE mount = $1",
                &[&mount],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        let rows = c
            .query(
                "SELECT id, payload FROM outbox WHERE mount = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&mount, &after, &limit],
            )
            .await
            .map_err(pg)?;
        Ok((events_of(&rows)?, horizon))
    }
}
