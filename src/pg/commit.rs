//! The commit transaction: node(s), snapshots, journal row, outbox event(s) — all or nothing.

use deadpool_postgres::Transaction;
use filestore_s3_actors::model::{CommitRecord, NodeChange, NodeMeta, OpKind, OpResult};
use filestore_s3_actors::ports::MetaError;
use tokio_postgres::types::ToSql;

/// The parameters of one statement.
type Params<'a, const N: usize> = [&'a (dyn ToSql + Sync); N];

use super::{corrupt, pg, to_i64, PgMetaStore};

/// The next generation of a path: one past the last snapshot (deletions included), so a path
/// that is deleted and written again never reuses a generation.
async fn next_generation(tx: &Transaction<'_>, mount: &str, path: &str) -> Result<i64, MetaError> {
    Ok(tx
        .query_one(
            &cached!(tx, "SELECT coalesce(max(generation), 0) + 1 FROM snapshots WHERE mount = $1 AND path = $2"),
            &[&mount, &path],
        )
        .await
        .map_err(pg)?
        .get(0))
}

async fn upsert_node(
    tx: &Transaction<'_>,
    r: &CommitRecord,
    m: &NodeMeta,
    generation: i64,
) -> Result<(), MetaError> {
    let size = to_i64(m.size, "size")?;
    let sha = m.sha256.to_hex();
    let verified = m.verified.as_str();
    let user_metadata = serde_json::to_value(&m.user_metadata).map_err(|e| MetaError {
        retryable: false,
        fenced: false,
        message: format!("user metadata: {e}"),
    })?;
    let node = cached!(
        tx,
        "INSERT INTO nodes (mount, path, object_key, size, etag, sha256, storage_class,
                            last_modified, generation, journal_id, verified, sse, not_applied,
                            user_metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (mount, path) DO UPDATE SET object_key = EXCLUDED.object_key,
            size = EXCLUDED.size, etag = EXCLUDED.etag, sha256 = EXCLUDED.sha256,
            storage_class = EXCLUDED.storage_class, last_modified = EXCLUDED.last_modified,
            generation = EXCLUDED.generation, journal_id = EXCLUDED.journal_id,
            verified = EXCLUDED.verified, sse = EXCLUDED.sse, not_applied = EXCLUDED.not_applied,
            user_metadata = EXCLUDED.user_metadata, updated_at = now()"
    );
    let snapshot = cached!(
        tx,
        "INSERT INTO snapshots (mount, path, generation, deleted, object_key, size, etag,
                                sha256, storage_class, last_modified, journal_id, verified,
                                user_metadata)
         VALUES ($1, $2, $3, false, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    );
    // Independent: sent together (pipelined), one round trip.
    let node_params: [&(dyn ToSql + Sync); 14] = [
        &r.mount,
        &r.path,
        &r.key,
        &size,
        &m.etag,
        &sha,
        &m.storage_class,
        &m.last_modified,
        &generation,
        &r.journal_id,
        &verified,
        &m.sse,
        &m.not_applied,
        &user_metadata,
    ];
    let snapshot_params: [&(dyn ToSql + Sync); 12] = [
        &r.mount,
        &r.path,
        &generation,
        &r.key,
        &size,
        &m.etag,
        &sha,
        &m.storage_class,
        &m.last_modified,
        &r.journal_id,
        &verified,
        &user_metadata,
    ];
    let upsert = tx.execute(&node, &node_params);
    let record = tx.execute(&snapshot, &snapshot_params);
    futures::future::try_join(upsert, record)
        .await
        .map_err(pg)?;
    Ok(())
}

async fn remove_node(
    tx: &Transaction<'_>,
    journal_id: i64,
    mount: &str,
    path: &str,
    key: &str,
) -> Result<i64, MetaError> {
    let generation = next_generation(tx, mount, path).await?;
    tx.execute(
        &cached!(tx, "DELETE FROM nodes WHERE mount = $1 AND path = $2"),
        &[&mount, &path],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        &cached!(
            tx,
            "INSERT INTO snapshots (mount, path, generation, deleted, object_key, journal_id)
         VALUES ($1, $2, $3, true, $4, $5)"
        ),
        &[&mount, &path, &generation, &key, &journal_id],
    )
    .await
    .map_err(pg)?;
    Ok(generation)
}

impl PgMetaStore {
    pub(super) async fn do_commit(&self, r: &CommitRecord) -> Result<OpResult, MetaError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        self.fenced(&tx).await?;
        let result = self.commit_in(&tx, r).await?;
        tx.commit().await.map_err(pg)?;
        Ok(result)
    }

    /// The commit's writes inside `tx` (fenced by the caller).
    pub(super) async fn commit_in(
        &self,
        tx: &Transaction<'_>,
        r: &CommitRecord,
    ) -> Result<OpResult, MetaError> {
        let row = tx
            .query_one(
                &cached!(
                    tx,
                    "SELECT state, result, error FROM journal WHERE id = $1 FOR UPDATE"
                ),
                &[&r.journal_id],
            )
            .await
            .map_err(pg)?;
        let state: String = row.get(0);
        match state.as_str() {
            "committed" => {
                // A retry after a lost acknowledgement: the first commit stands.
                let v: serde_json::Value = row.get(1);
                return serde_json::from_value(v).map_err(|e| corrupt("journal result", e));
            }
            "failed" => {
                let err: Option<String> = row.get(2);
                return Err(MetaError {
                    fenced: false,
                    retryable: false,
                    message: format!(
                        "journal {} was already marked failed: {}",
                        r.journal_id,
                        err.unwrap_or_default()
                    ),
                });
            }
            _ => {}
        }
        if !r.condition.is_none() {
            // Checked before acting too; checked again here so that no commit lands on a node
            // that changed in between (FOR UPDATE holds the row until the commit).
            let current: Option<i64> = tx
                .query_opt(
                    &cached!(
                        tx,
                        "SELECT generation FROM nodes WHERE mount = $1 AND path = $2 FOR UPDATE"
                    ),
                    &[&r.mount, &r.path],
                )
                .await
                .map_err(pg)?
                .map(|row| row.get(0));
            let broken = (r.condition.if_none_match && current.is_some())
                || r.condition
                    .if_generation
                    .is_some_and(|g| current != Some(g));
            if broken {
                return Err(MetaError {
                    fenced: false,
                    retryable: false,
                    message: format!(
                        "condition on '{}' no longer holds at commit (node generation {current:?})",
                        r.path
                    ),
                });
            }
        }
        // A move removes its source's node in the same transaction; the source mount must be
        // this executor's too.
        if let (OpKind::Move, Some(src), Some(f)) = (r.op, &r.source, &self.fence) {
            if src.mount != f.mount {
                super::lease::check_fence(tx, &src.mount, &f.owner, None).await?;
            }
        }
        if let (OpKind::Move, Some(src)) = (r.op, &r.source) {
            remove_node(tx, r.journal_id, &src.mount, &src.path, &src.key).await?;
        }
        let generation = match &r.change {
            NodeChange::Upsert(m) => {
                let generation = next_generation(tx, &r.mount, &r.path).await?;
                upsert_node(tx, r, m, generation).await?;
                generation
            }
            NodeChange::Remove => remove_node(tx, r.journal_id, &r.mount, &r.path, &r.key).await?,
        };
        let (result, events) = r.outcome(generation);
        let result_json = serde_json::to_value(&result).map_err(|e| corrupt("result", e))?;
        // The lease this commit was checked against (none for an unfenced view: tools, tests).
        let (by, epoch) = match &self.fence {
            Some(f) => (Some(f.owner.as_str()), Some(f.epoch)),
            None => (None, None),
        };
        // The rest are independent of each other: sent together, one round trip (tokio-postgres
        // pipelines the requests of futures polled at once).
        let mark = cached!(
            tx,
            "UPDATE journal SET state = 'committed', result = $2, error = NULL, updated_at = now(),
                committed_by = $3, committed_epoch = $4
             WHERE id = $1"
        );
        // Every open upload of this operation is done with: the one it completed, and any a
        // recovered copy no longer names.
        let uploads = cached!(
            tx,
            "UPDATE multipart_uploads SET state = 'completed', updated_at = now()
             WHERE journal_id = $1 AND state = 'open'"
        );
        let outbox = cached!(
            tx,
            "INSERT INTO outbox (event_id, mount, journal_id, payload) VALUES ($1, $2, $3, $4)"
        );
        // Delivered at commit: wakes the notifier of the mount's owner, in whatever process (a
        // move across mounts writes an event for a mount another committer serves).
        let notify = cached!(tx, "SELECT pg_notify(current_schema() || '.outbox', $1)");
        let payloads = events
            .iter()
            .map(|(_, event)| serde_json::to_value(event).map_err(|e| corrupt("event", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mark_params: [&(dyn ToSql + Sync); 4] = [&r.journal_id, &result_json, &by, &epoch];
        let upload_params: [&(dyn ToSql + Sync); 1] = [&r.journal_id];
        let event_params: Vec<(Params<'_, 4>, Params<'_, 1>)> = events
            .iter()
            .zip(&payloads)
            .map(|((stream_mount, event), payload)| {
                let outbox: [&(dyn ToSql + Sync); 4] =
                    [&event.event_id, stream_mount, &r.journal_id, payload];
                let notify: [&(dyn ToSql + Sync); 1] = [stream_mount];
                (outbox, notify)
            })
            .collect();
        let order = cached!(tx, super::outbox::ORDER_OUTBOX);
        let mut stream_mounts: Vec<&str> = events.iter().map(|(m, _)| m.as_str()).collect();
        stream_mounts.sort_unstable();
        stream_mounts.dedup();
        let order_params: [&(dyn ToSql + Sync); 1] = [&stream_mounts];
        let mut writes = vec![
            tx.execute(&mark, &mark_params),
            tx.execute(&uploads, &upload_params),
        ];
        if !stream_mounts.is_empty() {
            writes.push(tx.execute(&order, &order_params));
        }
        for (o, n) in &event_params {
            writes.push(tx.execute(&outbox, o));
            writes.push(tx.execute(&notify, n));
        }
        futures::future::try_join_all(writes).await.map_err(pg)?;
        Ok(result)
    }
}
