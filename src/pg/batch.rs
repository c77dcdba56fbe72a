//! The one write path to Postgres: a committer's batch in one transaction, fenced once, every
//! write atomic on its own. Intents and commits are written set-based (`bulk.rs`: a few statements
//! over arrays, whatever the batch's size); journal failures, progress and multipart records one
//! statement each. A batch, a single write included, goes through the same code.

use std::collections::HashSet;

use deadpool_postgres::Transaction;
use filestore_s3_actors::committer::Claim;
use filestore_s3_actors::ports::{BatchResult, MetaError, MetaOutput, MetaWrite};

use super::{journal, multipart, pg, PgMetaStore};

/// The answer to each write of a batch, by position; `None` until written.
pub(super) type Answers = [Option<Result<MetaOutput, MetaError>>];

impl PgMetaStore {
    /// One transaction. A refusal the reads find (a failed row, a broken condition, a key used
    /// with other parameters) is that write's answer; any other write refused for good rolls the
    /// transaction back and the batch is written again with a savepoint per write, so the
    /// refusal stays that write's alone. A retryable failure (or the fence) fails the whole batch,
    /// which the committer sends again (every write is idempotent).
    pub(super) async fn do_apply(&self, writes: &[MetaWrite]) -> BatchResult {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        self.fenced(&tx).await?;
        let mut out: Vec<_> = (0..writes.len()).map(|_| None).collect();
        let refusal = match self.write_runs(&tx, writes, &mut out).await {
            Ok(()) => {
                tx.commit().await.map_err(pg)?;
                self.counted(&self.batches.set_based, "set-based");
                return answers(out);
            }
            Err(e) if e.retryable || e.fenced => return Err(e),
            Err(e) => e,
        };
        tx.rollback().await.map_err(pg)?;
        if writes.len() == 1 {
            return Ok(vec![Err(refusal)]);
        }
        log::debug!("a write of the batch was refused ({refusal}); written again one by one");
        self.apply_with_savepoints(&mut c, writes).await
    }

    /// Writes the batch as runs of writes with no [`Claim`] in common, in order: within a run
    /// the order does not matter (nothing one write changes is another's), so each run's
    /// other writes go first, then all its intents, then all its commits, set-based.
    ///
    /// An intent claims its key, not its journal row (it does not know the row yet), so an
    /// intent for a key whose row a commit, failure or progress of the same run touches could
    /// see that row before or after it. The engine rules that out: an intent and the row's other
    /// writes come from calls on the same paths, and a call holds its paths' locks from before
    /// its intent until its commit or failure is answered.
    async fn write_runs(
        &self,
        tx: &Transaction<'_>,
        writes: &[MetaWrite],
        out: &mut Answers,
    ) -> Result<(), MetaError> {
        let mut start = 0;
        while start < writes.len() {
            let mut claimed = HashSet::new();
            let mut end = start;
            while let Some(w) = writes.get(end) {
                let claims = Claim::of(w);
                if claims.iter().any(|c| claimed.contains(c)) {
                    break;
                }
                claimed.extend(claims);
                end += 1;
            }
            let (run, answers) = (&writes[start..end], &mut out[start..end]);
            for (i, write) in run.iter().enumerate() {
                if let Some(done) = other_write(tx, write).await? {
                    answers[i] = Some(Ok(done));
                }
            }
            super::bulk::begins(tx, run, answers).await?;
            self.bulk_commits(tx, run, answers).await?;
            start = end;
        }
        Ok(())
    }

    /// Writes the batch with a savepoint around each write, so a write refused is rolled back
    /// alone.
    async fn apply_with_savepoints(
        &self,
        c: &mut deadpool_postgres::Object,
        writes: &[MetaWrite],
    ) -> BatchResult {
        let mut tx = c.transaction().await.map_err(pg)?;
        self.fenced(&tx).await?;
        let mut out = Vec::with_capacity(writes.len());
        for write in writes {
            let sp = tx.savepoint("write").await.map_err(pg)?;
            let mut answer = [None];
            match self
                .write_runs(&sp, std::slice::from_ref(write), &mut answer)
                .await
            {
                Ok(()) => {
                    sp.commit().await.map_err(pg)?;
                    let [answer] = answer;
                    out.push(answer.unwrap_or_else(|| Err(no_answer())));
                }
                Err(e) if e.retryable || e.fenced => return Err(e),
                Err(e) => {
                    sp.rollback().await.map_err(pg)?;
                    out.push(Err(e));
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        self.counted(&self.batches.with_savepoints, "savepoints");
        Ok(out)
    }

    fn counted(&self, counter: &std::sync::atomic::AtomicU64, mode: &'static str) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("filestore_s3_commit_batches_total", "mode" => mode).increment(1);
    }
}

/// A write that is neither an intent nor a commit: one statement. `None` for an intent or a
/// commit (written set-based).
async fn other_write(
    tx: &Transaction<'_>,
    write: &MetaWrite,
) -> Result<Option<MetaOutput>, MetaError> {
    match write {
        MetaWrite::Fail { journal_id, error } => journal::fail_in(tx, *journal_id, error).await?,
        MetaWrite::Progress {
            journal_id,
            progress,
        } => journal::progress_in(tx, *journal_id, progress).await?,
        MetaWrite::Upload(u) => multipart::upload_in(tx, u).await?,
        MetaWrite::Parts { upload_id, parts } => {
            if !parts.is_empty() {
                multipart::parts_in(tx, upload_id, parts).await?
            }
        }
        MetaWrite::Begin(_) | MetaWrite::Commit(_) => return Ok(None),
    }
    Ok(Some(MetaOutput::Done))
}

fn answers(out: Vec<Option<Result<MetaOutput, MetaError>>>) -> BatchResult {
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(no_answer())))
        .collect())
}

fn no_answer() -> MetaError {
    MetaError {
        cause: None,
        retryable: false,
        fenced: false,
        message: "internal: a write of the batch got no answer".into(),
    }
}
