//! The read-only queries of `filestore-s3 check` (docs/operations.md): a mount's nodes a page at
//! a time in the byte order of their keys, and the journal's and the outbox's rows that tell of
//! drift. Nothing here writes.

use std::time::Duration;

use super::{pg, PgMetaStore};
use filestore_s3_actors::ports::MetaError;

/// A node as the check compares it with the bucket.
#[derive(Debug, Clone)]
pub struct CheckNode {
    /// Object key.
    pub key: String,
    /// Filestore path.
    pub path: String,
    /// Size recorded.
    pub size: u64,
    /// ETag recorded.
    pub etag: String,
    /// Storage class recorded.
    pub storage_class: String,
}

/// A journal row the check reports.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// Journal id.
    pub id: i64,
    /// Operation.
    pub op: String,
    /// Path.
    pub path: String,
    /// Seconds since it last changed.
    pub age_seconds: f64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn row(r: &tokio_postgres::Row) -> CheckRow {
    CheckRow {
        id: r.get(0),
        op: r.get(1),
        path: r.get(2),
        age_seconds: r.get(3),
    }
}

impl PgMetaStore {
    /// Up to `limit` nodes of `mount` whose key comes after `after` (byte order).
    pub async fn nodes_after(
        &self,
        mount: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<CheckNode>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &cached!(
                    c,
                    "SELECT object_key, path, size, etag, storage_class FROM nodes
                     WHERE mount = $1 AND object_key COLLATE \"C\" > $2
                     ORDER BY object_key COLLATE \"C\" LIMIT $3"
                ),
                &[&mount, &after, &limit],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| CheckNode {
                key: r.get(0),
                path: r.get(1),
                size: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                etag: r.get(3),
                storage_class: r.get(4),
            })
            .collect())
    }

    /// Pending rows of `mount` unchanged for longer than `older_than`: how many, and the first
    /// `limit`.
    pub async fn stale_pending(
        &self,
        mount: &str,
        older_than: Duration,
        limit: i64,
    ) -> Result<(u64, Vec<CheckRow>), MetaError> {
        self.rows_and_count(
            "SELECT id, op, path, extract(epoch FROM now() - updated_at)::float8 FROM journal
             WHERE mount = $1 AND state = 'pending'
               AND updated_at < now() - $2::bigint * interval '1 millisecond'
             ORDER BY id LIMIT $3",
            "SELECT count(*) FROM journal WHERE mount = $1 AND state = 'pending'
               AND updated_at < now() - $2::bigint * interval '1 millisecond'",
            mount,
            older_than,
            limit,
        )
        .await
    }

    /// Committed rows of `mount` with no event on its feed, among those younger than the oldest
    /// event still kept (older ones may have been pruned by the outbox retention).
    pub async fn committed_without_event(
        &self,
        mount: &str,
        limit: i64,
    ) -> Result<(u64, Vec<CheckRow>), MetaError> {
        // Rows younger than the oldest event kept (none kept after a prune: none to look at).
        const WHERE: &str = "FROM journal j
             WHERE j.mount = $1 AND j.state = 'committed' AND $2::bigint >= 0
               AND j.updated_at >= coalesce(
                   (SELECT min(created_at) FROM outbox WHERE mount = $1),
                   CASE WHEN EXISTS (SELECT 1 FROM outbox_horizon WHERE mount = $1)
                        THEN 'infinity'::timestamptz ELSE '-infinity'::timestamptz END)
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.journal_id = j.id AND o.mount = $1)";
        self.rows_and_count(
            &format!(
                "SELECT j.id, j.op, j.path, extract(epoch FROM now() - j.updated_at)::float8
                 {WHERE} ORDER BY j.id LIMIT $3"
            ),
            &format!("SELECT count(*) {WHERE}"),
            mount,
            Duration::ZERO,
            limit,
        )
        .await
    }

    /// Events of `mount` not relayed to Redis for longer than `older_than` (the row's journal id,
    /// op and path, and its age).
    pub async fn unpublished_events(
        &self,
        mount: &str,
        older_than: Duration,
        limit: i64,
    ) -> Result<(u64, Vec<CheckRow>), MetaError> {
        self.rows_and_count(
            "SELECT o.journal_id, coalesce(o.payload->>'op', ''), coalesce(o.payload->>'path', ''),
                    extract(epoch FROM now() - o.created_at)::float8
             FROM outbox o WHERE o.mount = $1 AND o.published_at IS NULL
               AND o.created_at < now() - $2::bigint * interval '1 millisecond'
             ORDER BY o.id LIMIT $3",
            "SELECT count(*) FROM outbox WHERE mount = $1 AND published_at IS NULL
               AND created_at < now() - $2::bigint * interval '1 millisecond'",
            mount,
            older_than,
            limit,
        )
        .await
    }

    /// Failed rows of `mount` that changed within `since` and wrote an object (put, copy, move):
    /// the check looks whether the object at their path carries their marker.
    pub async fn recent_failed_writes(
        &self,
        mount: &str,
        since: Duration,
        limit: i64,
    ) -> Result<Vec<CheckRow>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &cached!(
                    c,
                    "SELECT id, op, path, extract(epoch FROM now() - updated_at)::float8
                     FROM journal WHERE mount = $1 AND state = 'failed' AND op <> 'delete'
                       AND updated_at >= now() - $2::bigint * interval '1 millisecond'
                     ORDER BY id DESC LIMIT $3"
                ),
                &[&mount, &ms(since), &limit],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(row).collect())
    }

    /// The state of journal row `id` (`None` when there is none).
    pub async fn journal_state(&self, id: i64) -> Result<Option<String>, MetaError> {
        let c = self.client().await?;
        let r = c
            .query_opt(
                &cached!(c, "SELECT state FROM journal WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg)?;
        Ok(r.map(|r| r.get(0)))
    }

    async fn rows_and_count(
        &self,
        rows_sql: &str,
        count_sql: &str,
        mount: &str,
        d: Duration,
        limit: i64,
    ) -> Result<(u64, Vec<CheckRow>), MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(rows_sql, &[&mount, &ms(d), &limit])
            .await
            .map_err(pg)?;
        let n: i64 = c
            .query_one(count_sql, &[&mount, &ms(d)])
            .await
            .map_err(pg)?
            .get(0);
        Ok((
            u64::try_from(n).unwrap_or(0),
            rows.iter().map(row).collect(),
        ))
    }
}
