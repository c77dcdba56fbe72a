//! Figures for health checks.

use std::collections::HashMap;

use filestore_s3_actors::ports::MetaError;

use super::{pg, PgMetaStore};

/// One mount's figures for a health check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MountFigures {
    /// Unpublished outbox rows (the relay backlog).
    pub outbox_backlog: i64,
    /// Journal rows in `pending`: operations running, or left for recovery.
    pub journal_pending: i64,
    /// Seconds since the least recently changed pending row last changed (0 without one).
    pub oldest_pending_seconds: f64,
}

impl PgMetaStore {
    /// Per mount: the outbox backlog and the pending journal rows; answers only if Postgres does.
    /// Both read partial indexes (`outbox_unpublished`, `journal_pending`), so a scrape costs
    /// what the backlog and the pending rows hold, not the tables' history.
    pub async fn mount_figures(&self) -> Result<HashMap<String, MountFigures>, MetaError> {
        let c = self.client().await?;
        let (backlog, pending) = futures::try_join!(
            c.query(
                "SELECT mount, count(*) FROM outbox WHERE published_at IS NULL GROUP BY mount",
                &[],
            ),
            c.query(
                "SELECT mount, count(*),
                        extract(epoch FROM now() - min(updated_at))::float8
                 FROM journal WHERE state = 'pending' GROUP BY mount",
                &[],
            ),
        )
        .map_err(pg)?;
        let mut out: HashMap<String, MountFigures> = HashMap::new();
        for r in &backlog {
            out.entry(r.get(0)).or_default().outbox_backlog = r.get(1);
        }
        for r in &pending {
            let f = out.entry(r.get(0)).or_default();
            f.journal_pending = r.get(1);
            f.oldest_pending_seconds = r.get::<_, f64>(2).max(0.0);
        }
        Ok(out)
    }
}
