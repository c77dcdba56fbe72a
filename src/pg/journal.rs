//! The journal: intents, failures, pending rows for recovery, progress of copies / moves.

use deadpool_postgres::Transaction;
use filestore_s3_actors::model::{
    IntentOutcome, JournalEntry, JournalState, NewIntent, OpProgress, OpRequest, OpResult,
};
use filestore_s3_actors::ports::MetaError;
use tokio_postgres::Row;

use super::{corrupt, pg, PgMetaStore};

const JOURNAL_COLUMNS: &str =
    "id, mount, idempotency_key, fingerprint, state, attempts, request, progress, result, error,
     (EXTRACT(EPOCH FROM (now() - updated_at)) * 1000)::bigint AS idle_ms";

fn journal_from_row(row: &Row) -> Result<JournalEntry, MetaError> {
    let state: String = row.get("state");
    let request: serde_json::Value = row.get("request");
    let result: Option<serde_json::Value> = row.get("result");
    let progress: Option<serde_json::Value> = row.get("progress");
    Ok(JournalEntry {
        id: row.get("id"),
        mount: row.get("mount"),
        idempotency_key: row.get("idempotency_key"),
        fingerprint: row.get("fingerprint"),
        state: JournalState::parse(&state).ok_or_else(|| corrupt("journal state", &state))?,
        attempts: row.get("attempts"),
        request: serde_json::from_value::<OpRequest>(request)
            .map_err(|e| corrupt("journal request", e))?,
        progress: progress
            .map(serde_json::from_value::<OpProgress>)
            .transpose()
            .map_err(|e| corrupt("journal progress", e))?,
        result: result
            .map(serde_json::from_value::<OpResult>)
            .transpose()
            .map_err(|e| corrupt("journal result", e))?,
        error: row.get("error"),
        idle: std::time::Duration::from_millis(row.get::<_, i64>("idle_ms").max(0) as u64),
    })
}

impl PgMetaStore {
    pub(super) async fn do_committed_after(
        &self,
        mount: &str,
        path: &str,
        journal_id: i64,
    ) -> Result<Option<i64>, MetaError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &cached!(
                    c,
                    "SELECT id FROM journal
                     WHERE id > $3 AND state = 'committed'
                       AND ((mount = $1 AND path = $2)
                            OR (op = 'move' AND source_mount = $1 AND source_path = $2))
                     ORDER BY id LIMIT 1"
                ),
                &[&mount, &path, &journal_id],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn do_pending(&self, mount: &str) -> Result<Vec<JournalEntry>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE mount = $1 AND state = 'pending' ORDER BY id"
                ),
                &[&mount],
            )
            .await
            .map_err(pg)?;
        // One unreadable row must not keep the others from being recovered.
        Ok(rows
            .iter()
            .filter_map(|r| match journal_from_row(r) {
                Ok(e) => Some(e),
                Err(e) => {
                    let id: i64 = r.get("id");
                    log::error!("mount {mount}: pending journal row {id} cannot be recovered: {e}");
                    None
                }
            })
            .collect())
    }

    pub(super) async fn do_pending_on(
        &self,
        paths: &[(String, String)],
    ) -> Result<Vec<JournalEntry>, MetaError> {
        let (mounts, paths): (Vec<&str>, Vec<&str>) =
            paths.iter().map(|(m, p)| (m.as_str(), p.as_str())).unzip();
        let c = self.client().await?;
        // Few rows are pending at a time: the partial index `journal_pending` holds only those.
        let q = format!(
            "SELECT {JOURNAL_COLUMNS} FROM journal
             WHERE state = 'pending'
               AND ((mount, path) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                    OR (op IN ('copy', 'move') AND (source_mount, source_path)
                        IN (SELECT * FROM unnest($1::text[], $2::text[]))))
             ORDER BY id"
        );
        let rows = c
            .query(&cached!(c, &q), &[&mounts, &paths])
            .await
            .map_err(pg)?;
        rows.iter().map(journal_from_row).collect()
    }

    pub(super) async fn do_entry(
        &self,
        mount: &str,
        idempotency_key: &str,
    ) -> Result<Option<JournalEntry>, MetaError> {
        let c = self.client().await?;
        let q = format!(
            "SELECT {JOURNAL_COLUMNS} FROM journal WHERE mount = $1 AND idempotency_key = $2"
        );
        c.query_opt(&cached!(c, &q), &[&mount, &idempotency_key])
            .await
            .map_err(pg)?
            .map(|r| journal_from_row(&r))
            .transpose()
    }
}

/// An intent whose key is already in the journal (its INSERT, in `bulk::begins`, inserted
/// nothing): this call's own row (an earlier attempt's answer lost), a failed row with the same
/// fingerprint re-armed, or the existing row reported.
pub(super) async fn begin_existing(
    c: &Transaction<'_>,
    intent: &NewIntent,
) -> Result<IntentOutcome, MetaError> {
    let fingerprint = &intent.fingerprint;
    let progress = progress_json(intent.progress.as_ref())?;
    // This call's own row, written by an earlier attempt whose acknowledgement was lost.
    let own = c
        .query_opt(
            &cached!(
                c,
                "SELECT id, op, progress FROM journal
             WHERE mount = $1 AND idempotency_key = $2 AND intent_token = $3 AND state = 'pending'"
            ),
            &[&intent.mount, &intent.idempotency_key, &intent.token],
        )
        .await
        .map_err(pg)?;
    if let Some(row) = own {
        return started(&row);
    }
    // A failed attempt with the same parameters may run again under the same key.
    let rearmed = c
        .query_opt(
            // A move that failed after it deleted its source keeps that step: the source is gone,
            // so the move can only be finished. One that failed after its copy keeps that step
            // too: its source's DELETE may have been applied (the engine goes on from the copy
            // while the source's node is the pinned one). Everything else starts over from this
            // call's pin (the source may have changed since; an earlier step would be stale).
            "UPDATE journal SET state = 'pending', attempts = attempts + 1, error = NULL,
                    progress = CASE WHEN op = 'move' AND progress->>'phase' IN ('source_deleted', 'copied')
                                    THEN progress ELSE $5 END,
                    updated_at = now(), intent_token = $4
             WHERE mount = $1 AND idempotency_key = $2 AND fingerprint = $3 AND state = 'failed'
             RETURNING id, op, progress",
            &[
                &intent.mount,
                &intent.idempotency_key,
                fingerprint,
                &intent.token,
                &progress,
            ],
        )
        .await
        .map_err(pg)?;
    if let Some(row) = rearmed {
        return started(&row);
    }
    let row = c
        .query_one(
            &format!(
                "SELECT {JOURNAL_COLUMNS} FROM journal WHERE mount = $1 AND idempotency_key = $2"
            ),
            &[&intent.mount, &intent.idempotency_key],
        )
        .await
        .map_err(pg)?;
    let entry = journal_from_row(&row)?;
    Ok(IntentOutcome::Existing(Box::new(entry)))
}

/// What an intent that (re)starts the row `(id, op, progress)` reports: `Resumed` for a move
/// past its source's delete, `Started` for the rest.
fn started(row: &tokio_postgres::Row) -> Result<IntentOutcome, MetaError> {
    let journal_id = row.get(0);
    let op: &str = row.get(1);
    let progress: Option<serde_json::Value> = row.get(2);
    match progress
        .filter(|p| op == "move" && (p["phase"] == "source_deleted" || p["phase"] == "copied"))
    {
        Some(kept) => Ok(IntentOutcome::Resumed {
            journal_id,
            progress: Box::new(
                serde_json::from_value(kept).map_err(|e| corrupt("journal progress", e))?,
            ),
        }),
        None => Ok(IntentOutcome::Started { journal_id }),
    }
}

/// Marks a pending journal row failed inside `c`.
pub(super) async fn fail_in(
    c: &Transaction<'_>,
    journal_id: i64,
    error: &str,
) -> Result<(), MetaError> {
    c.execute(
        &cached!(
            c,
            "UPDATE journal SET state = 'failed', error = $2, updated_at = now()
         WHERE id = $1 AND state = 'pending'"
        ),
        &[&journal_id, &error],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// A step as stored in `journal.progress`.
pub(super) fn progress_json(
    progress: Option<&OpProgress>,
) -> Result<Option<serde_json::Value>, MetaError> {
    progress
        .map(|p| serde_json::to_value(p).map_err(|e| corrupt("progress", e)))
        .transpose()
}

/// Records how far a pending copy / move got, inside `c`.
pub(super) async fn progress_in(
    c: &Transaction<'_>,
    journal_id: i64,
    progress: &OpProgress,
) -> Result<(), MetaError> {
    let v = progress_json(Some(progress))?;
    let n = c
        .execute(
            // The same progress recorded again (a recovery pass resuming an upload records
            // `completing` anew) keeps the row's age: the consistency horizon runs from the
            // first record of a step, so a pass that keeps meeting an older state ends.
            &cached!(c, "UPDATE journal SET progress = $2,
                             updated_at = CASE WHEN progress IS NOT DISTINCT FROM $2 THEN updated_at ELSE now() END
                         WHERE id = $1 AND state = 'pending'"),
            &[&journal_id, &v],
        )
        .await
        .map_err(pg)?;
    if n == 0 {
        return Err(MetaError {
            cause: None,
            fenced: false,
            retryable: false,
            message: format!(
                "journal {journal_id} is no longer pending; its progress was not recorded"
            ),
        });
    }
    Ok(())
}
