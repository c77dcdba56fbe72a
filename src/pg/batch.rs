//! Group commit: a committer's queued writes in one transaction, each atomic on its own.

use deadpool_postgres::Transaction;
use filestore_s3_actors::ports::{BatchResult, MetaError, MetaOutput, MetaWrite};

use super::{journal, multipart, pg, PgMetaStore};

impl PgMetaStore {
    /// One transaction, fenced once. A write refused for good is rolled back alone (the batch is
    /// written again with a savepoint per write) and reports its error; a retryable failure (or
    /// the fence) ends the transaction and fails the whole batch, which the committer sends again
    /// (every write is idempotent).
    pub(super) async fn do_apply(&self, writes: &[MetaWrite]) -> BatchResult {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        self.fenced(&tx).await?;
        if let [write] = writes {
            // Alone in its transaction: no savepoint needed.
            return match self.write_in(&tx, write).await {
                Ok(o) => {
                    tx.commit().await.map_err(pg)?;
                    Ok(vec![Ok(o)])
                }
                Err(e) if e.retryable || e.fenced => Err(e),
                Err(e) => Ok(vec![Err(e)]),
            };
        }
        if super::bulk::eligible(writes) {
            // Set-based: the batch's other writes one by one (in order, before the intents and
            // commits that may follow them), then all intents, then all commits, each with a few
            // statements over arrays. A refusal the reads find (a failed row, a broken
            // condition) is that write's answer; a statement that fails is written again below.
            let mut out: super::bulk::Answers = (0..writes.len()).map(|_| None).collect();
            let mut refused = false;
            for (i, write) in writes.iter().enumerate() {
                if matches!(write, MetaWrite::Begin(_) | MetaWrite::Commit(_)) {
                    continue;
                }
                match self.write_in(&tx, write).await {
                    Ok(o) => out[i] = Some(Ok(o)),
                    Err(e) if e.retryable || e.fenced => return Err(e),
                    Err(_) => {
                        refused = true;
                        break;
                    }
                }
            }
            if !refused {
                let set = async {
                    super::bulk::begins(&tx, writes, &mut out).await?;
                    self.bulk_commits(&tx, writes, &mut out).await
                };
                match set.await {
                    Ok(()) => {
                        tx.commit().await.map_err(pg)?;
                        self.counted(&self.batches.set_based, "set-based");
                        return out
                            .into_iter()
                            .map(|o| {
                                o.ok_or_else(|| MetaError {
                                    retryable: false,
                                    fenced: false,
                                    message: "internal: a write of the batch got no answer".into(),
                                })
                            })
                            .collect::<Result<Vec<_>, _>>();
                    }
                    Err(e) if e.retryable || e.fenced => return Err(e),
                    Err(e) => log::debug!("set-based batch refused ({e}); written one by one"),
                }
            }
            tx.rollback().await.map_err(pg)?;
            return self.apply_with_savepoints(&mut c, writes).await;
        }
        // Writes are rarely refused, so first without savepoints (two round trips less per
        // write); if one is refused, the transaction is rolled back and the batch written again
        // with a savepoint around each write, so the refusal stays that write's alone.
        let mut out = Vec::with_capacity(writes.len());
        let mut refused = false;
        for write in writes {
            match self.write_in(&tx, write).await {
                Ok(o) => out.push(Ok(o)),
                Err(e) if e.retryable || e.fenced => return Err(e),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        if !refused {
            tx.commit().await.map_err(pg)?;
            self.counted(&self.batches.one_by_one, "one-by-one");
            return Ok(out);
        }
        tx.rollback().await.map_err(pg)?;
        self.apply_with_savepoints(&mut c, writes).await
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
            match self.write_in(&sp, write).await {
                Ok(o) => {
                    sp.commit().await.map_err(pg)?;
                    out.push(Ok(o));
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

    async fn write_in(
        &self,
        tx: &Transaction<'_>,
        write: &MetaWrite,
    ) -> Result<MetaOutput, MetaError> {
        Ok(match write {
            MetaWrite::Begin(intent) => MetaOutput::Begun(journal::begin_in(tx, intent).await?),
            MetaWrite::Commit(record) => {
                MetaOutput::Committed(Box::new(self.commit_in(tx, record).await?))
            }
            MetaWrite::Fail { journal_id, error } => {
                journal::fail_in(tx, *journal_id, error).await?;
                MetaOutput::Done
            }
            MetaWrite::Progress {
                journal_id,
                progress,
            } => {
                journal::progress_in(tx, *journal_id, progress).await?;
                MetaOutput::Done
            }
            MetaWrite::Upload(u) => {
                multipart::upload_in(tx, u).await?;
                MetaOutput::Done
            }
            MetaWrite::Parts { upload_id, parts } => {
                if !parts.is_empty() {
                    multipart::parts_in(tx, upload_id, parts).await?;
                }
                MetaOutput::Done
            }
        })
    }
}
