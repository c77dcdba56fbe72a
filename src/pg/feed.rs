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
        let horizon_q = cached!(
            c,
            "SELECT pruned_through FROM outbox_horizon WHERE mount = $1"
        );
        let events_q = cached!(
            c,
            "SELECT id, payload, event_id FROM outbox WHERE mount = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        // Sent together (one round trip).
        let (horizon, rows) = futures::future::try_join(
            c.query_opt(&horizon_q, &[&mount]),
            c.query(&events_q, &[&mount, &after, &limit]),
        )
        .await
        .map_err(pg)?;
        let horizon = horizon.map(|r| r.get::<_, i64>(0)).unwrap_or(0);
        Ok((events_of(&rows)?, horizon))
    }
}
