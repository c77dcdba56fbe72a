//! The outbox the notifier relays to Redis.

use filestore_s3_actors::model::{ChangeEvent, OutboxEvent, OutboxRow};
use filestore_s3_actors::ports::MetaError;
use serde::Deserialize as _;

use super::{corrupt, pg, PgMetaStore};

/// Taken by a transaction just before it writes outbox rows, for each mount it writes to (the
/// mounts sorted, so two transactions never wait for each other in a circle), and held until it
/// ends: a mount's outbox ids are handed out in the order their transactions commit, even when a
/// committer writes batches at once or another mount's committer writes a move's event here. The
/// change feed reads by id (`events_after`); without this a reader could pass an id whose
/// transaction commits later and never see that event.
pub(super) const ORDER_OUTBOX: &str = "SELECT pg_advisory_xact_lock(hashtextextended(
        current_schema() || '.outbox ' || m, 0)) FROM unnest($1::text[]) AS m";

/// `(id, payload, event_id)` rows as events; a row this version cannot read fails the whole read (the
/// change feed's typed events).
pub(super) fn events_of(rows: &[tokio_postgres::Row]) -> Result<Vec<OutboxEvent>, MetaError> {
    rows_of(rows)
        .into_iter()
        .map(|row| match row {
            OutboxRow::Event(e) => Ok(e),
            OutboxRow::Unreadable { id, reason, .. } => {
                Err(corrupt("outbox payload", format!("row {id}: {reason}")))
            }
        })
        .collect()
}

/// `(id, payload, event_id)` rows as the relay reads them: a payload this version cannot read as an event
/// is kept as it is stored, so the relay passes it on instead of stopping at it.
pub(super) fn rows_of(rows: &[tokio_postgres::Row]) -> Vec<OutboxRow> {
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let payload: serde_json::Value = r.get(1);
            // Read from the borrowed value: the payload is copied only for a row that fails.
            match ChangeEvent::deserialize(&payload) {
                Ok(event) => OutboxRow::Event(OutboxEvent { id, event }),
                Err(e) => OutboxRow::Unreadable {
                    id,
                    event_id: r.get(2),
                    payload: payload.to_string(),
                    reason: e.to_string(),
                },
            }
        })
        .collect()
}

impl PgMetaStore {
    pub(super) async fn do_unpublished(
        &self,
        mount: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, MetaError> {
        // From `after` on: the index entries of rows published (and not yet vacuumed) below it
        // are not walked again on every relay.
        let c = self.client().await?;
        let rows = c
            .query(
                &cached!(
                    c,
                    "SELECT id, payload, event_id FROM outbox
                     WHERE mount = $1 AND published_at IS NULL AND id > $2
                     ORDER BY id LIMIT $3"
                ),
                &[&mount, &after, &limit],
            )
            .await
            .map_err(pg)?;
        Ok(rows_of(&rows))
    }

    pub(super) async fn do_mark_published(&self, ids: &[i64]) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            &cached!(
                c,
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL"
            ),
            &[&ids],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    /// Deletes `mount`'s outbox rows published more than `retention` ago and moves the mount's
    /// feed horizon (`outbox_horizon.pruned_through`) up to the highest id deleted, in one fenced
    /// transaction. Returns how many rows went.
    pub(super) async fn do_prune_outbox(
        &self,
        mount: &str,
        retention: std::time::Duration,
    ) -> Result<u64, MetaError> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        self.fenced(&tx).await?;
        let row = tx
            .query_one(
                "WITH gone AS (
                    DELETE FROM outbox
                    WHERE mount = $1 AND published_at IS NOT NULL
                      AND published_at < now() - $2 * interval '1 millisecond'
                    RETURNING id),
                 horizon AS (
                    INSERT INTO outbox_horizon (mount, pruned_through)
                    SELECT $1, max(id) FROM gone HAVING max(id) IS NOT NULL
                    ON CONFLICT (mount) DO UPDATE
                        SET pruned_through = GREATEST(outbox_horizon.pruned_through,
                                                      EXCLUDED.pruned_through),
                            pruned_at = now())
                 SELECT count(*) FROM gone",
                &[&mount, &(retention_ms as f64)],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}
