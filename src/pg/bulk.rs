//! The intents and the commit transaction's writes, set-based: the intents and commits of a run
//! of a batch (no path changed twice in it) written with a few statements over arrays
//! (`unnest`), so a batch costs about the same number of round trips whatever its size, and a
//! single write takes the same path. A commit writes its node(s) with the next generation,
//! snapshot rows, the journal row `committed` with its result and the outbox event(s); one of a
//! row already committed answers the recorded result, one of a failed row or with a broken
//! condition is refused alone (its answer, nothing written); a statement that fails sends the
//! caller back to writing the batch one write at a time (`batch.rs`).

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use filestore_s3_actors::model::{CommitRecord, NewIntent, NodeChange, OpKind, OpResult};
use filestore_s3_actors::ports::{MetaError, MetaOutput, MetaWrite};
use tokio_postgres::types::ToSql;

use super::batch::Answers;
use super::{corrupt, journal, pg, to_i64, PgMetaStore};

/// Writes the intents of `writes` into `out`.
pub(super) async fn begins(
    tx: &Transaction<'_>,
    writes: &[MetaWrite],
    out: &mut Answers,
) -> Result<(), MetaError> {
    let intents: Vec<(usize, &NewIntent)> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            MetaWrite::Begin(intent) => Some((i, intent)),
            _ => None,
        })
        .collect();
    if intents.is_empty() {
        return Ok(());
    }
    let mut mounts = Vec::with_capacity(intents.len());
    let mut ops = Vec::with_capacity(intents.len());
    let mut paths = Vec::with_capacity(intents.len());
    let mut keys = Vec::with_capacity(intents.len());
    let mut fingerprints = Vec::with_capacity(intents.len());
    let mut requests = Vec::with_capacity(intents.len());
    let mut source_mounts = Vec::with_capacity(intents.len());
    let mut source_paths = Vec::with_capacity(intents.len());
    let mut tokens = Vec::with_capacity(intents.len());
    let mut progress = Vec::with_capacity(intents.len());
    for (_, intent) in &intents {
        let source = intent.request.source();
        mounts.push(intent.mount.as_str());
        ops.push(intent.request.kind().as_str());
        paths.push(intent.request.path());
        keys.push(intent.idempotency_key.as_str());
        fingerprints.push(intent.fingerprint.as_str());
        requests.push(serde_json::to_value(&intent.request).map_err(|e| corrupt("request", e))?);
        source_mounts.push(source.map(|s| s.mount.as_str()));
        source_paths.push(source.map(|s| s.path.as_str()));
        tokens.push(intent.token);
        progress.push(journal::progress_json(intent.progress.as_ref())?);
    }
    // A key already in the journal (or twice in this batch) inserts nothing here; that intent is
    // then written on its own below, which finds its own row, re-arms a failed one or reports
    // the existing entry.
    let inserted = tx
        .query(
            &cached!(
                tx,
                "INSERT INTO journal (mount, op, path, idempotency_key, fingerprint, state, request,
                                      source_mount, source_path, intent_token, progress)
                 SELECT m, o, p, k, f, 'pending', r, sm, sp, t, g
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[], $7::text[], $8::text[], $9::uuid[], $10::jsonb[])
                      AS x(m, o, p, k, f, r, sm, sp, t, g)
                 ON CONFLICT (mount, idempotency_key) DO NOTHING
                 RETURNING id, intent_token"
            ),
            &[
                &mounts,
                &ops,
                &paths,
                &keys,
                &fingerprints,
                &requests,
                &source_mounts,
                &source_paths,
                &tokens,
                &progress,
            ],
        )
        .await
        .map_err(pg)?;
    let started: HashMap<uuid::Uuid, i64> = inserted
        .iter()
        .map(|row| (row.get::<_, uuid::Uuid>(1), row.get::<_, i64>(0)))
        .collect();
    for (i, intent) in intents {
        out[i] = Some(Ok(MetaOutput::Begun(match started.get(&intent.token) {
            Some(&journal_id) => filestore_s3_actors::model::IntentOutcome::Started { journal_id },
            None => journal::begin_existing(tx, intent).await?,
        })));
    }
    Ok(())
}

/// A node removed by a commit: a delete, or a move's source.
struct Removal<'a> {
    mount: &'a str,
    path: &'a str,
    key: &'a str,
    journal_id: i64,
    generation: i64,
}

fn refused(message: String) -> MetaError {
    MetaError {
        cause: None,
        fenced: false,
        retryable: false,
        message,
    }
}

impl PgMetaStore {
    /// Writes the commits of `writes` into `out` (fenced by the caller).
    pub(super) async fn bulk_commits(
        &self,
        tx: &Transaction<'_>,
        writes: &[MetaWrite],
        out: &mut Answers,
    ) -> Result<(), MetaError> {
        let commits: Vec<(usize, &CommitRecord)> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                MetaWrite::Commit(r) => Some((i, r)),
                _ => None,
            })
            .collect();
        if commits.is_empty() {
            return Ok(());
        }

        // Reads, sent together: the journal rows (locked), the nodes a condition is about
        // (locked), and the next generation of every path a commit changes.
        let ids: Vec<i64> = commits.iter().map(|(_, r)| r.journal_id).collect();
        let mut changed: Vec<(&str, &str)> = Vec::new();
        for (_, r) in &commits {
            changed.push((&r.mount, &r.path));
            if let (OpKind::Move, Some(src)) = (r.op, &r.source) {
                changed.push((&src.mount, &src.path));
            }
        }
        let (changed_mounts, changed_paths): (Vec<&str>, Vec<&str>) =
            changed.iter().copied().unzip();
        let conditioned: Vec<(&str, &str)> = commits
            .iter()
            .filter(|(_, r)| !r.condition.is_none())
            .map(|(_, r)| (r.mount.as_str(), r.path.as_str()))
            .collect();
        let (cond_mounts, cond_paths): (Vec<&str>, Vec<&str>) = conditioned.iter().copied().unzip();
        let journal_q = cached!(
            tx,
            "SELECT id, state, result, error FROM journal WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        );
        let nodes_q = cached!(
            tx,
            "SELECT n.mount, n.path, n.generation
             FROM nodes n JOIN unnest($1::text[], $2::text[]) AS k(mount, path)
                  ON n.mount = k.mount AND n.path = k.path
             ORDER BY n.mount, n.path
             FOR UPDATE OF n"
        );
        let generations_q = cached!(
            tx,
            "SELECT k.i, coalesce(max(s.generation), 0) + 1
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(mount, path, i)
                  LEFT JOIN snapshots s ON s.mount = k.mount AND s.path = k.path
             GROUP BY k.i"
        );
        let journal_params: [&(dyn ToSql + Sync); 1] = [&ids];
        let node_params: [&(dyn ToSql + Sync); 2] = [&cond_mounts, &cond_paths];
        let generation_params: [&(dyn ToSql + Sync); 2] = [&changed_mounts, &changed_paths];
        let journal_rows = tx.query(&journal_q, &journal_params);
        let node_rows = async {
            if conditioned.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&nodes_q, &node_params).await
            }
        };
        let generation_rows = tx.query(&generations_q, &generation_params);
        let (journal_rows, node_rows, generation_rows) =
            futures::future::try_join3(journal_rows, node_rows, generation_rows)
                .await
                .map_err(pg)?;
        let states: HashMap<i64, &tokio_postgres::Row> =
            journal_rows.iter().map(|row| (row.get(0), row)).collect();
        let current: HashMap<(String, String), i64> = node_rows
            .iter()
            .map(|row| ((row.get(0), row.get(1)), row.get(2)))
            .collect();
        let mut next: Vec<i64> = vec![0; changed.len()];
        for row in &generation_rows {
            let i: i64 = row.get(0);
            next[(i - 1) as usize] = row.get(1);
        }
        let mut generation_of = HashMap::new();
        for ((mount, path), g) in changed.iter().zip(&next) {
            generation_of.insert((*mount, *path), *g);
        }

        // Which commits go ahead.
        let mut go: Vec<(usize, &CommitRecord)> = Vec::with_capacity(commits.len());
        for (i, r) in commits {
            let Some(row) = states.get(&r.journal_id) else {
                out[i] = Some(Err(refused(format!(
                    "journal {} does not exist; nothing was committed",
                    r.journal_id
                ))));
                continue;
            };
            let state: &str = row.get(1);
            match state {
                "committed" => {
                    let v: serde_json::Value = row.get(2);
                    let result: OpResult =
                        serde_json::from_value(v).map_err(|e| corrupt("journal result", e))?;
                    out[i] = Some(Ok(MetaOutput::Committed(Box::new(result))));
                    continue;
                }
                "failed" => {
                    let err: Option<String> = row.get(3);
                    out[i] = Some(Err(refused(format!(
                        "journal {} was already marked failed: {}",
                        r.journal_id,
                        err.unwrap_or_default()
                    ))));
                    continue;
                }
                _ => {}
            }
            if !r.condition.is_none() {
                let now = current.get(&(r.mount.clone(), r.path.clone())).copied();
                let broken = (r.condition.if_none_match && now.is_some())
                    || r.condition.if_generation.is_some_and(|g| now != Some(g));
                if broken {
                    out[i] = Some(Err(refused(format!(
                        "condition on '{}' no longer holds at commit (node generation {now:?})",
                        r.path
                    ))));
                    continue;
                }
            }
            go.push((i, r));
        }
        if go.is_empty() {
            return Ok(());
        }
        // A move removes its source's node in the same transaction; the source mount must be
        // this executor's too. A move whose source mount is not is refused alone (its row stays
        // pending for its recovery), not with the batch it shares.
        if let Some(f) = &self.fence {
            let mut held: HashMap<&str, bool> = HashMap::new();
            let mut kept = Vec::with_capacity(go.len());
            for (i, r) in go {
                if let (OpKind::Move, Some(src)) = (r.op, &r.source) {
                    if src.mount != f.mount {
                        let ok = match held.get(src.mount.as_str()) {
                            Some(ok) => *ok,
                            None => {
                                let ok =
                                    match super::lease::check_fence(tx, &src.mount, &f.owner, None)
                                        .await
                                    {
                                        Ok(()) => true,
                                        Err(e) if e.fenced => false,
                                        Err(e) => return Err(e),
                                    };
                                held.insert(src.mount.as_str(), ok);
                                ok
                            }
                        };
                        if !ok {
                            // Fenced (the caller gets the retryable `LeaseLost`; the row stays
                            // pending for recovery), but refused alone.
                            out[i] = Some(Err(MetaError {
                                fenced: true,
                                ..refused(format!(
                                    "journal {}: this executor does not hold the lease of the move's source mount '{}'; the move was not committed",
                                    r.journal_id, src.mount
                                ))
                            }));
                            continue;
                        }
                    }
                }
                kept.push((i, r));
            }
            go = kept;
            if go.is_empty() {
                return Ok(());
            }
        }

        // The rows to write.
        let mut removals: Vec<Removal<'_>> = Vec::new();
        let mut upserts = Upserts::default();
        let mut marks: (Vec<i64>, Vec<serde_json::Value>) = (Vec::new(), Vec::new());
        let mut outbox = Outbox::default();
        let mut results = Vec::with_capacity(go.len());
        for (i, r) in &go {
            if let (OpKind::Move, Some(src)) = (r.op, &r.source) {
                removals.push(Removal {
                    mount: &src.mount,
                    path: &src.path,
                    key: &src.key,
                    journal_id: r.journal_id,
                    generation: generation_of[&(src.mount.as_str(), src.path.as_str())],
                });
            }
            let generation = generation_of[&(r.mount.as_str(), r.path.as_str())];
            match &r.change {
                NodeChange::Upsert(m) => upserts.push(r, m, generation)?,
                NodeChange::Remove => removals.push(Removal {
                    mount: &r.mount,
                    path: &r.path,
                    key: &r.key,
                    journal_id: r.journal_id,
                    generation,
                }),
            }
            let (result, events) = r.outcome(generation);
            marks.0.push(r.journal_id);
            marks
                .1
                .push(serde_json::to_value(&result).map_err(|e| corrupt("result", e))?);
            for (stream_mount, event) in events {
                outbox.event_ids.push(event.event_id);
                outbox
                    .payloads
                    .push(serde_json::to_value(&event).map_err(|e| corrupt("event", e))?);
                outbox.mounts.push(stream_mount);
                outbox.journal_ids.push(r.journal_id);
            }
            results.push((*i, result));
        }
        let (by, epoch) = match &self.fence {
            Some(f) => (Some(f.owner.as_str()), Some(f.epoch)),
            None => (None, None),
        };

        // Writes, sent together (one round trip).
        let delete_q = cached!(
            tx,
            "DELETE FROM nodes n USING unnest($1::text[], $2::text[]) AS k(mount, path)
             WHERE n.mount = k.mount AND n.path = k.path"
        );
        let tombstone_q = cached!(
            tx,
            "INSERT INTO snapshots (mount, path, generation, deleted, object_key, journal_id)
             SELECT m, p, g, true, k, j
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])
                  AS x(m, p, g, k, j)"
        );
        let upsert_q = cached!(
            tx,
            "INSERT INTO nodes (mount, path, object_key, size, etag, sha256, storage_class,
                                last_modified, generation, journal_id, verified, sse, not_applied,
                                user_metadata)
             SELECT m, p, k, s, e, h, c, lm, g, j, v, sse,
                    ARRAY(SELECT jsonb_array_elements_text(na)), um
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                         $7::text[], $8::timestamptz[], $9::bigint[], $10::bigint[], $11::text[],
                         $12::text[], $13::jsonb[], $14::jsonb[])
                  AS x(m, p, k, s, e, h, c, lm, g, j, v, sse, na, um)
             ON CONFLICT (mount, path) DO UPDATE SET object_key = EXCLUDED.object_key,
                size = EXCLUDED.size, etag = EXCLUDED.etag, sha256 = EXCLUDED.sha256,
                storage_class = EXCLUDED.storage_class, last_modified = EXCLUDED.last_modified,
                generation = EXCLUDED.generation, journal_id = EXCLUDED.journal_id,
                verified = EXCLUDED.verified, sse = EXCLUDED.sse,
                not_applied = EXCLUDED.not_applied, user_metadata = EXCLUDED.user_metadata,
                updated_at = now()"
        );
        let snapshot_q = cached!(
            tx,
            "INSERT INTO snapshots (mount, path, generation, deleted, object_key, size, etag,
                                    sha256, storage_class, last_modified, journal_id, verified,
                                    user_metadata)
             SELECT m, p, g, false, k, s, e, h, c, lm, j, v, um
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::bigint[],
                         $11::text[], $12::jsonb[])
                  AS x(m, p, g, k, s, e, h, c, lm, j, v, um)"
        );
        let mark_q = cached!(
            tx,
            "UPDATE journal SET state = 'committed', result = x.r, error = NULL, updated_at = now(),
                    committed_by = $3, committed_epoch = $4
             FROM unnest($1::bigint[], $2::jsonb[]) AS x(id, r)
             WHERE journal.id = x.id"
        );
        let uploads_q = cached!(
            tx,
            "UPDATE multipart_uploads SET state = 'completed', updated_at = now()
             WHERE journal_id = ANY($1) AND state = 'open'"
        );
        let outbox_q = cached!(
            tx,
            "INSERT INTO outbox (event_id, mount, journal_id, payload)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::jsonb[])"
        );
        let order_q = cached!(tx, super::outbox::ORDER_OUTBOX);
        let notify_q = cached!(
            tx,
            "SELECT pg_notify(current_schema() || '.outbox', m) FROM unnest($1::text[]) AS m"
        );

        let rm_mounts: Vec<&str> = removals.iter().map(|x| x.mount).collect();
        let rm_paths: Vec<&str> = removals.iter().map(|x| x.path).collect();
        let rm_generations: Vec<i64> = removals.iter().map(|x| x.generation).collect();
        let rm_keys: Vec<&str> = removals.iter().map(|x| x.key).collect();
        let rm_journal: Vec<i64> = removals.iter().map(|x| x.journal_id).collect();
        let u = &upserts;
        let upsert_params: [&(dyn ToSql + Sync); 14] = [
            &u.mounts,
            &u.paths,
            &u.keys,
            &u.sizes,
            &u.etags,
            &u.sha256,
            &u.storage_classes,
            &u.last_modified,
            &u.generations,
            &u.journal_ids,
            &u.verified,
            &u.sse,
            &u.not_applied,
            &u.user_metadata,
        ];
        let snapshot_params: [&(dyn ToSql + Sync); 12] = [
            &u.mounts,
            &u.paths,
            &u.generations,
            &u.keys,
            &u.sizes,
            &u.etags,
            &u.sha256,
            &u.storage_classes,
            &u.last_modified,
            &u.journal_ids,
            &u.verified,
            &u.user_metadata,
        ];
        let delete_params: [&(dyn ToSql + Sync); 2] = [&rm_mounts, &rm_paths];
        let tombstone_params: [&(dyn ToSql + Sync); 5] = [
            &rm_mounts,
            &rm_paths,
            &rm_generations,
            &rm_keys,
            &rm_journal,
        ];
        let mark_params: [&(dyn ToSql + Sync); 4] = [&marks.0, &marks.1, &by, &epoch];
        let upload_params: [&(dyn ToSql + Sync); 1] = [&marks.0];
        let outbox_params: [&(dyn ToSql + Sync); 4] = [
            &outbox.event_ids,
            &outbox.mounts,
            &outbox.journal_ids,
            &outbox.payloads,
        ];
        let mut notify_mounts: Vec<&str> = outbox.mounts.iter().map(String::as_str).collect();
        notify_mounts.sort_unstable();
        notify_mounts.dedup();
        let notify_params: [&(dyn ToSql + Sync); 1] = [&notify_mounts];

        let mut statements = Vec::new();
        if !removals.is_empty() {
            statements.push(tx.execute(&delete_q, &delete_params));
            statements.push(tx.execute(&tombstone_q, &tombstone_params));
        }
        if !upserts.mounts.is_empty() {
            statements.push(tx.execute(&upsert_q, &upsert_params));
            statements.push(tx.execute(&snapshot_q, &snapshot_params));
        }
        statements.push(tx.execute(&mark_q, &mark_params));
        statements.push(tx.execute(&uploads_q, &upload_params));
        if !outbox.mounts.is_empty() {
            statements.push(tx.execute(&order_q, &notify_params));
            statements.push(tx.execute(&outbox_q, &outbox_params));
            statements.push(tx.execute(&notify_q, &notify_params));
        }
        futures::future::try_join_all(statements)
            .await
            .map_err(pg)?;
        for (i, result) in results {
            out[i] = Some(Ok(MetaOutput::Committed(Box::new(result))));
        }
        Ok(())
    }
}

/// Columns of the nodes upserted by a batch (and of their snapshots).
#[derive(Default)]
struct Upserts<'a> {
    mounts: Vec<&'a str>,
    paths: Vec<&'a str>,
    keys: Vec<&'a str>,
    sizes: Vec<i64>,
    etags: Vec<&'a str>,
    sha256: Vec<String>,
    storage_classes: Vec<&'a str>,
    last_modified: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    generations: Vec<i64>,
    journal_ids: Vec<i64>,
    verified: Vec<&'static str>,
    sse: Vec<Option<&'a str>>,
    not_applied: Vec<serde_json::Value>,
    user_metadata: Vec<serde_json::Value>,
}

impl<'a> Upserts<'a> {
    fn push(
        &mut self,
        r: &'a CommitRecord,
        m: &'a filestore_s3_actors::model::NodeMeta,
        generation: i64,
    ) -> Result<(), MetaError> {
        self.mounts.push(&r.mount);
        self.paths.push(&r.path);
        self.keys.push(&r.key);
        self.sizes.push(to_i64(m.size, "size")?);
        self.etags.push(&m.etag);
        self.sha256.push(m.sha256.to_hex());
        self.storage_classes.push(&m.storage_class);
        self.last_modified.push(m.last_modified);
        self.generations.push(generation);
        self.journal_ids.push(r.journal_id);
        self.verified.push(m.verified.as_str());
        self.sse.push(m.sse.as_deref());
        self.not_applied.push(serde_json::json!(m.not_applied));
        self.user_metadata
            .push(serde_json::to_value(&m.user_metadata).map_err(|e| corrupt("user metadata", e))?);
        Ok(())
    }
}

/// Outbox rows of a batch.
#[derive(Default)]
struct Outbox {
    event_ids: Vec<uuid::Uuid>,
    mounts: Vec<String>,
    journal_ids: Vec<i64>,
    payloads: Vec<serde_json::Value>,
}
