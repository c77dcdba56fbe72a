//! Reading a mount's committed events back from the outbox (the change feed's source of truth).

use filestore_s3_actors::model::OutboxEvent;
use filestore_s3_actors::ports::MetaError;

use super::{corrupt, pg, PgMetaStore};

impl PgMetaStore {
    /// Outbox rows of `mount` with an id above `after`, in id order (a mount's commit order),
    /// published or not.
    pub async fn events_after(
        &self,
        mount: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, payload FROM outbox WHERE mount = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&mount, &after, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                let payload: serde_json::Value = r.get(1);
                Ok(OutboxEvent {
                    id: r.get(0),
                    event: serde_json::from_value(payload)
                        .map_err(|e| corrupt("outbox payload", e))?,
                })
            })
            .collect()
    }
}
