//! The outbox the notifier relays to Redis.

use filestore_s3_actors::model::OutboxEvent;
use filestore_s3_actors::ports::MetaError;

use super::{corrupt, pg, PgMetaStore};

/// `(id, payload)` rows as events.
pub(super) fn events_of(rows: &[tokio_postgres::Row]) -> Result<Vec<OutboxEvent>, MetaError> {
    rows.iter()
        .map(|r| {
            let payload: serde_json::Value = r.get(1);
            Ok(OutboxEvent {
                id: r.get(0),
                event: serde_json::from_value(payload).map_err(|e| corrupt("outbox payload", e))?,
            })
        })
        .collect()
}

impl PgMetaStore {
    pub(super) async fn do_unpublished(
        &self,
        mount: &str,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, payload FROM outbox WHERE mount = $1 AND published_at IS NULL
                 ORDER BY id LIMIT $2",
                &[&mount, &limit],
            )
            .await
            .map_err(pg)?;
        events_of(&rows)
    }

    pub(super) async fn do_mark_published(&self, ids: &[i64]) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
            &[&ids],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }
}
