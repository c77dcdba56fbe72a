//! Figures for health checks.

use std::collections::HashMap;

use filestore_s3_actors::ports::MetaError;

use super::{pg, PgMetaStore};

impl PgMetaStore {
    /// Unpublished outbox rows per mount (the relay backlog); answers only if Postgres does.
    pub async fn outbox_backlog(&self) -> Result<HashMap<String, i64>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT mount, count(*) FROM outbox WHERE published_at IS NULL GROUP BY mount",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
