//! Postgres adapter: the [`MetaStore`] port on tokio-postgres + deadpool-postgres, and migrations.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use filestore_s3_actors::model::UploadRecord;
use filestore_s3_actors::model::{
    CommitRecord, IntentOutcome, JournalEntry, JournalState, NewIntent, Node, NodeChange, NodeMeta,
    OpRequest, OpResult, OutboxEvent,
};
use filestore_s3_actors::mount::MountRow;
use filestore_s3_actors::ports::{MetaError, MetaStore, UploadedPart};
use filestore_s3_actors::Error;
use tokio_postgres::{NoTls, Row};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Longest accepted schema name (Postgres identifiers are at most 63 bytes).
const MAX_SCHEMA_NAME_BYTES: usize = 63;

/// Checks that `schema` is a plain lowercase identifier, safe to splice into SQL.
pub fn validate_schema(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_NAME_BYTES
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "schema '{schema}' must match [a-z_][a-z0-9_]* and be at most {MAX_SCHEMA_NAME_BYTES} bytes"
        )))
    }
}

fn pg_config(url: &str, schema: &str) -> Result<tokio_postgres::Config, Error> {
    validate_schema(schema)?;
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Config(format!("database URL is invalid: {e}")))?;
    cfg.options(format!("-c search_path={schema}"));
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.application_name("filestore-s3");
    Ok(cfg)
}

/// Creates `schema` if needed and applies the embedded migrations to it. Applying twice is a no-op.
/// Returns the versions applied by this call.
pub async fn migrate(url: &str, schema: &str) -> Result<Vec<i32>, Error> {
    let cfg = pg_config(url, schema)?;
    let (mut client, conn) = cfg.connect(NoTls).await.map_err(meta_error)?;
    let conn_task = tokio::spawn(conn);
    let result = async {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(meta_error)?;
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| Error::Config(format!("migrations into schema '{schema}' failed: {e}")))?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| m.version())
            .collect())
    }
    .await;
    drop(client);
    let _ = conn_task.await;
    result
}

fn meta_error(e: tokio_postgres::Error) -> Error {
    Error::Metadata(to_meta_error(&e))
}

fn to_meta_error(e: &tokio_postgres::Error) -> MetaError {
    use tokio_postgres::error::SqlState;
    let retryable = match e.code() {
        // No SQLSTATE: I/O, closed connection, timeout.
        None => true,
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
    };
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    MetaError { retryable, message }
}

fn pool_error(e: deadpool_postgres::PoolError) -> MetaError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => to_meta_error(&e),
        other => MetaError {
            retryable: true,
            message: format!("connection pool: {other}"),
        },
    }
}

fn pg(e: tokio_postgres::Error) -> MetaError {
    to_meta_error(&e)
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> MetaError {
    MetaError {
        retryable: false,
        message: format!("unreadable {what} in Postgres: {detail}"),
    }
}

/// The metadata store on a deadpool pool. Connections get `search_path` set to the schema.
#[derive(Clone)]
pub struct PgMetaStore {
    pool: Pool,
}

impl PgMetaStore {
    /// A store over a new pool of at most `max_size` connections. Connects lazily.
    pub fn new(url: &str, schema: &str, max_size: usize) -> Result<Self, Error> {
        let cfg = pg_config(url, schema)?;
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(max_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Config(format!("connection pool: {e}")))?;
        Ok(PgMetaStore { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MetaError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Inserts or replaces a `backend_mounts` row.
    pub async fn upsert_mount(&self, r: &MountRow) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO backend_mounts (name, bucket, prefix, region, endpoint, path_style, sse_mode,
                kms_key_id, canned_acl, storage_class, multipart_threshold, part_size, part_concurrency,
                verify_window_ms, checksum, enabled, multipart_failure_policy)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)
             ON CONFLICT (name) DO UPDATE SET bucket = EXCLUDED.bucket, prefix = EXCLUDED.prefix,
                region = EXCLUDED.region, endpoint = EXCLUDED.endpoint, path_style = EXCLUDED.path_style,
                sse_mode = EXCLUDED.sse_mode, kms_key_id = EXCLUDED.kms_key_id,
                canned_acl = EXCLUDED.canned_acl, storage_class = EXCLUDED.storage_class,
                multipart_threshold = EXCLUDED.multipart_threshold, part_size = EXCLUDED.part_size,
                part_concurrency = EXCLUDED.part_concurrency, verify_window_ms = EXCLUDED.verify_window_ms,
                checksum = EXCLUDED.checksum, enabled = EXCLUDED.enabled,
                multipart_failure_policy = EXCLUDED.multipart_failure_policy, updated_at = now()",
            &[
                &r.name,
                &r.bucket,
                &r.prefix,
                &r.region,
                &r.endpoint,
                &r.path_style,
                &r.sse_mode,
                &r.kms_key_id,
                &r.canned_acl,
                &r.storage_class,
                &r.multipart_threshold,
                &r.part_size,
                &r.part_concurrency,
                &r.verify_window_ms,
                &r.checksum,
                &r.enabled,
                &r.multipart_failure_policy,
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }
}

const JOURNAL_COLUMNS: &str =
    "id, mount, idempotency_key, fingerprint, state, attempts, request, result, error";

fn journal_from_row(row: &Row) -> Result<JournalEntry, MetaError> {
    let state: String = row.get("state");
    let request: serde_json::Value = row.get("request");
    let result: Option<serde_json::Value> = row.get("result");
    Ok(JournalEntry {
        id: row.get("id"),
        mount: row.get("mount"),
        idempotency_key: row.get("idempotency_key"),
        fingerprint: row.get("fingerprint"),
        state: JournalState::parse(&state).ok_or_else(|| corrupt("journal state", &state))?,
        attempts: row.get("attempts"),
        request: serde_json::from_value::<OpRequest>(request)
            .map_err(|e| corrupt("journal request", e))?,
        result: result
            .map(serde_json::from_value::<OpResult>)
            .transpose()
            .map_err(|e| corrupt("journal result", e))?,
        error: row.get("error"),
    })
}

fn to_i64(v: u64, what: &str) -> Result<i64, MetaError> {
    i64::try_from(v).map_err(|_| corrupt(what, v))
}

#[async_trait]
impl MetaStore for PgMetaStore {
    async fn load_mounts(&self) -> Result<Vec<MountRow>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT name, bucket, prefix, region, endpoint, path_style, sse_mode, kms_key_id,
                        canned_acl, storage_class, multipart_threshold, part_size, part_concurrency,
                        verify_window_ms, checksum, enabled, multipart_failure_policy
                 FROM backend_mounts ORDER BY name",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| MountRow {
                name: r.get("name"),
                bucket: r.get("bucket"),
                prefix: r.get("prefix"),
                region: r.get("region"),
                endpoint: r.get("endpoint"),
                path_style: r.get("path_style"),
                sse_mode: r.get("sse_mode"),
                kms_key_id: r.get("kms_key_id"),
                canned_acl: r.get("canned_acl"),
                storage_class: r.get("storage_class"),
                multipart_threshold: r.get("multipart_threshold"),
                part_size: r.get("part_size"),
                part_concurrency: r.get("part_concurrency"),
                verify_window_ms: r.get("verify_window_ms"),
                checksum: r.get("checksum"),
                enabled: r.get("enabled"),
                multipart_failure_policy: r.get("multipart_failure_policy"),
            })
            .collect())
    }

    async fn begin(&self, intent: &NewIntent) -> Result<IntentOutcome, MetaError> {
        let c = self.client().await?;
        let fingerprint = intent.request.fingerprint();
        let request = serde_json::to_value(&intent.request).map_err(|e| corrupt("request", e))?;
        let inserted = c
            .query_opt(
                "INSERT INTO journal (mount, op, path, idempotency_key, fingerprint, state, request)
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6)
                 ON CONFLICT (mount, idempotency_key) DO NOTHING
                 RETURNING id",
                &[
                    &intent.mount,
                    &intent.request.kind().as_str(),
                    &intent.request.path(),
                    &intent.idempotency_key,
                    &fingerprint,
                    &request,
                ],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = inserted {
            return Ok(IntentOutcome::Started {
                journal_id: row.get(0),
            });
        }
        // A failed attempt with the same parameters may run again under the same key.
        let rearmed = c
            .query_opt(
                "UPDATE journal SET state = 'pending', attempts = attempts + 1, error = NULL,
                        updated_at = now()
                 WHERE mount = $1 AND idempotency_key = $2 AND fingerprint = $3 AND state = 'failed'
                 RETURNING id",
                &[&intent.mount, &intent.idempotency_key, &fingerprint],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = rearmed {
            return Ok(IntentOutcome::Started {
                journal_id: row.get(0),
            });
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
        Ok(IntentOutcome::Existing(Box::new(journal_from_row(&row)?)))
    }

    async fn commit(&self, r: &CommitRecord) -> Result<OpResult, MetaError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let row = tx
            .query_one(
                "SELECT state, result, error FROM journal WHERE id = $1 FOR UPDATE",
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
        let generation: i64 = tx
            .query_one(
                "SELECT coalesce(max(generation), 0) + 1 FROM snapshots WHERE mount = $1 AND path = $2",
                &[&r.mount, &r.path],
            )
            .await
            .map_err(pg)?
            .get(0);
        match &r.change {
            NodeChange::Upsert(m) => {
                let size = to_i64(m.size, "size")?;
                tx.execute(
                    "INSERT INTO nodes (mount, path, object_key, size, etag, sha256, storage_class,
                                        last_modified, generation, journal_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (mount, path) DO UPDATE SET object_key = EXCLUDED.object_key,
                        size = EXCLUDED.size, etag = EXCLUDED.etag, sha256 = EXCLUDED.sha256,
                        storage_class = EXCLUDED.storage_class, last_modified = EXCLUDED.last_modified,
                        generation = EXCLUDED.generation, journal_id = EXCLUDED.journal_id,
                        updated_at = now()",
                    &[
                        &r.mount,
                        &r.path,
                        &r.key,
                        &size,
                        &m.etag,
                        &m.sha256,
                        &m.storage_class,
                        &m.last_modified,
                        &generation,
                        &r.journal_id,
                    ],
                )
                .await
                .map_err(pg)?;
                tx.execute(
                    "INSERT INTO snapshots (mount, path, generation, deleted, object_key, size, etag,
                                            sha256, storage_class, last_modified, journal_id)
                     VALUES ($1, $2, $3, false, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &r.mount,
                        &r.path,
                        &generation,
                        &r.key,
                        &size,
                        &m.etag,
                        &m.sha256,
                        &m.storage_class,
                        &m.last_modified,
                        &r.journal_id,
                    ],
                )
                .await
                .map_err(pg)?;
            }
            NodeChange::Remove => {
                tx.execute(
                    "DELETE FROM nodes WHERE mount = $1 AND path = $2",
                    &[&r.mount, &r.path],
                )
                .await
                .map_err(pg)?;
                tx.execute(
                    "INSERT INTO snapshots (mount, path, generation, deleted, object_key, journal_id)
                     VALUES ($1, $2, $3, true, $4, $5)",
                    &[&r.mount, &r.path, &generation, &r.key, &r.journal_id],
                )
                .await
                .map_err(pg)?;
            }
        }
        let (result, event) = r.outcome(generation);
        let event_id = result.event_id;
        let result_json = serde_json::to_value(&result).map_err(|e| corrupt("result", e))?;
        let event_json = serde_json::to_value(&event).map_err(|e| corrupt("event", e))?;
        tx.execute(
            "UPDATE journal SET state = 'committed', result = $2, error = NULL, updated_at = now()
             WHERE id = $1",
            &[&r.journal_id, &result_json],
        )
        .await
        .map_err(pg)?;
        if let Some(upload_id) = &r.upload_id {
            tx.execute(
                "UPDATE multipart_uploads SET state = 'completed', updated_at = now() WHERE upload_id = $1",
                &[upload_id],
            )
            .await
            .map_err(pg)?;
        }
        tx.execute(
            "INSERT INTO outbox (event_id, mount, journal_id, payload) VALUES ($1, $2, $3, $4)",
            &[&event_id, &r.mount, &r.journal_id, &event_json],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(result)
    }

    async fn fail(&self, journal_id: i64, error: &str) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE journal SET state = 'failed', error = $2, updated_at = now()
             WHERE id = $1 AND state = 'pending'",
            &[&journal_id, &error],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn pending(&self, mount: &str) -> Result<Vec<JournalEntry>, MetaError> {
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

    async fn node(&self, mount: &str, path: &str) -> Result<Option<Node>, MetaError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT object_key, size, etag, sha256, storage_class, last_modified, generation
                 FROM nodes WHERE mount = $1 AND path = $2",
                &[&mount, &path],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| {
            let size: i64 = r.get("size");
            Node {
                mount: mount.to_owned(),
                path: path.to_owned(),
                key: r.get("object_key"),
                meta: NodeMeta {
                    size: size as u64,
                    etag: r.get("etag"),
                    sha256: r.get("sha256"),
                    storage_class: r.get("storage_class"),
                    last_modified: r.get::<_, Option<DateTime<Utc>>>("last_modified"),
                },
                generation: r.get("generation"),
            }
        }))
    }

    async fn unpublished(&self, mount: &str, limit: i64) -> Result<Vec<OutboxEvent>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, payload FROM outbox WHERE mount = $1 AND published_at IS NULL
                 ORDER BY id LIMIT $2",
                &[&mount, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                let payload: serde_json::Value = r.get(1);
                Ok(OutboxEvent {
                    id: r.get(0),
                    event: serde_json::from_value(payload)
                        .map_err(|e| corrupt("outbox payload", e))?,
                })
            })
            .collect()
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
            &[&ids],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn record_upload(&self, u: &UploadRecord) -> Result<(), MetaError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute(
            "DELETE FROM multipart_uploads WHERE journal_id = $1",
            &[&u.journal_id],
        )
        .await
        .map_err(pg)?;
        let part_size = to_i64(u.part_size, "part size")?;
        let total = u.total_size.map(|t| to_i64(t, "total size")).transpose()?;
        tx.execute(
            "INSERT INTO multipart_uploads (upload_id, journal_id, mount, object_key, part_size,
                                            total_size, state)
             VALUES ($1, $2, $3, $4, $5, $6, 'open')",
            &[
                &u.upload_id,
                &u.journal_id,
                &u.mount,
                &u.key,
                &part_size,
                &total,
            ],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn record_parts(&self, upload_id: &str, parts: &[UploadedPart]) -> Result<(), MetaError> {
        if parts.is_empty() {
            return Ok(());
        }
        let numbers: Vec<i32> = parts.iter().map(|p| p.part_number).collect();
        let etags: Vec<String> = parts
            .iter()
            .map(|p| p.etag.clone().unwrap_or_default())
            .collect();
        let sizes: Vec<i64> = parts.iter().map(|p| p.size as i64).collect();
        let shas: Vec<Option<String>> = parts.iter().map(|p| p.sha256.clone()).collect();
        let c = self.client().await?;
        c.execute(
            "WITH p AS (SELECT * FROM unnest($2::int[], $3::text[], $4::bigint[], $5::text[])
                         AS t(part_number, etag, size, sha256))
             INSERT INTO multipart_parts (upload_id, part_number, etag, size, checksum_sha256)
             SELECT $1, part_number, etag, size, sha256 FROM p
             ON CONFLICT (upload_id, part_number) DO UPDATE SET etag = EXCLUDED.etag,
                size = EXCLUDED.size, checksum_sha256 = EXCLUDED.checksum_sha256",
            &[&upload_id, &numbers, &etags, &sizes, &shas],
        )
        .await
        .map_err(pg)?;
        c.execute(
            "UPDATE multipart_uploads SET updated_at = now() WHERE upload_id = $1",
            &[&upload_id],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn upload_of(&self, journal_id: i64) -> Result<Option<UploadRecord>, MetaError> {
        let c = self.client().await?;
        let Some(row) = c
            .query_opt(
                "SELECT upload_id, journal_id, mount, object_key, part_size, total_size
                 FROM multipart_uploads WHERE journal_id = $1 AND state = 'open'",
                &[&journal_id],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let mut record = upload_from_row(&row);
        let parts = c
            .query(
                "SELECT part_number, etag, size, checksum_sha256 FROM multipart_parts
                 WHERE upload_id = $1 ORDER BY part_number",
                &[&record.upload_id],
            )
            .await
            .map_err(pg)?;
        record.parts = parts
            .iter()
            .map(|p| UploadedPart {
                part_number: p.get(0),
                etag: Some(p.get::<_, String>(1)).filter(|e| !e.is_empty()),
                size: p.get::<_, i64>(2) as u64,
                sha256: p.get(3),
            })
            .collect();
        Ok(Some(record))
    }

    async fn mark_upload_aborted(&self, upload_id: &str) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE multipart_uploads SET state = 'aborted', updated_at = now() WHERE upload_id = $1",
            &[&upload_id],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn orphaned_uploads(
        &self,
        mount: &str,
        older_than: DateTime<Utc>,
    ) -> Result<Vec<UploadRecord>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT u.upload_id, u.journal_id, u.mount, u.object_key, u.part_size, u.total_size
                 FROM multipart_uploads u JOIN journal j ON j.id = u.journal_id
                 WHERE u.mount = $1 AND u.state = 'open' AND j.state <> 'pending'
                   AND u.updated_at < $2
                 ORDER BY u.updated_at",
                &[&mount, &older_than],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(upload_from_row).collect())
    }
}

fn upload_from_row(row: &Row) -> UploadRecord {
    UploadRecord {
        upload_id: row.get(0),
        journal_id: row.get(1),
        mount: row.get(2),
        key: row.get(3),
        part_size: row.get::<_, i64>(4) as u64,
        total_size: row.get::<_, Option<i64>>(5).map(|t| t as u64),
        parts: Vec::new(),
    }
}
