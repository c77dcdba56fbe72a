//! Postgres adapter: the [`MetaStore`] port on tokio-postgres + deadpool-postgres, and migrations.
//! One file per table group: `migrate`, `mounts`, `journal`, `nodes`, `outbox`, `multipart`,
//! `lease`; `batch` is the one write path (`MetaStore::apply`) and `bulk` its intents and commit
//! transaction; this file holds the pool, the error mapping and the port's dispatch.

/// A statement prepared once per connection (deadpool's statement cache): a query then costs one
/// round trip instead of two (parse + execute). Every SQL text passed here is a constant.
macro_rules! cached {
    ($c:expr, $sql:expr) => {
        $c.prepare_cached($sql).await.map_err(super::pg)?
    };
}

mod batch;
mod bulk;
mod check;
mod feed;
mod fleet;
mod health;
mod journal;
mod lease;
mod listen;
mod migrate;
mod mounts;
mod multipart;
mod nodes;
mod outbox;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use filestore_s3_actors::model::{Fence, JournalEntry, LeaseState, Node, OutboxRow, UploadRecord};
use filestore_s3_actors::mount::MountRow;
use filestore_s3_actors::ports::{BatchResult, MetaError, MetaStore, MetaWrite};
use filestore_s3_actors::Error;

use crate::liveness::OwnerLock;
pub use check::{CheckNode, CheckRow};
pub use fleet::{HostRow, LeaseRow};
pub use lease::LeaseHolder;
pub use listen::{listen_mount_changes, Change};
use migrate::pg_config;
pub use migrate::{connect, migrate, validate_schema};

fn meta_error(e: tokio_postgres::Error) -> Error {
    Error::Metadata(to_meta_error(e))
}

fn to_meta_error(e: tokio_postgres::Error) -> MetaError {
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
        None => {
            // tokio-postgres leaves the cause out of its message ("error performing TLS
            // handshake", "error connecting to server"): add the chain.
            let mut m = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                m.push_str(": ");
                m.push_str(&c.to_string());
                cause = c.source();
            }
            m
        }
    };
    MetaError {
        cause: Some(std::sync::Arc::new(e)),
        retryable,
        fenced: false,
        message,
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> MetaError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => to_meta_error(e),
        other => MetaError {
            cause: None,
            fenced: false,
            retryable: true,
            message: format!("connection pool: {other}"),
        },
    }
}

fn pg(e: tokio_postgres::Error) -> MetaError {
    to_meta_error(e)
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> MetaError {
    MetaError {
        cause: None,
        fenced: false,
        retryable: false,
        message: format!("unreadable {what} in Postgres: {detail}"),
    }
}

/// The metadata store on a deadpool pool. Connections get `search_path` set to the schema.
#[derive(Clone)]
pub struct PgMetaStore {
    pool: Pool,
    /// The lease this view's writes are fenced with (`MetaStore::with_fence`).
    fence: Option<Fence>,
    /// How batches were written, shared by every view of the pool.
    batches: std::sync::Arc<BatchCounts>,
    /// This process's owner lock, taken at the first lease acquisition and held as long as any
    /// view of the pool lives (the supervisors hold theirs), so the leases this process records
    /// can be told from a dead process's ([`crate::liveness`]).
    owner_lock: std::sync::Arc<std::sync::OnceLock<Option<std::sync::Arc<OwnerLock>>>>,
}

/// How many batches were written in each way.
#[derive(Debug, Default)]
pub struct BatchCounts {
    /// In one go: intents and commits in a few statements over arrays.
    pub set_based: std::sync::atomic::AtomicU64,
    /// Written again with a savepoint per write, after a write was refused.
    pub with_savepoints: std::sync::atomic::AtomicU64,
}

impl PgMetaStore {
    /// A store over a new pool of at most `max_size` connections. Connects lazily.
    pub fn new(url: &str, schema: &str, max_size: usize) -> Result<Self, Error> {
        let cfg = pg_config(url, schema)?;
        let tls = crate::tls::pg_connector(&cfg)?;
        let mgr = Manager::from_config(
            cfg,
            tls,
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
        Ok(PgMetaStore {
            pool,
            fence: None,
            batches: Default::default(),
            owner_lock: Default::default(),
        })
    }

    /// How the batches of several writes written through this pool were written (for tests;
    /// operators read `filestore_s3_commit_batches_total`).
    #[cfg(feature = "testing")]
    pub fn batch_counts(&self) -> &BatchCounts {
        &self.batches
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MetaError> {
        self.pool.get().await.map_err(pool_error)
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64, MetaError> {
    i64::try_from(v).map_err(|_| corrupt(what, v))
}

#[async_trait]
impl MetaStore for PgMetaStore {
    fn with_fence(&self, fence: Fence) -> std::sync::Arc<dyn MetaStore> {
        std::sync::Arc::new(PgMetaStore {
            pool: self.pool.clone(),
            fence: Some(fence),
            batches: self.batches.clone(),
            owner_lock: self.owner_lock.clone(),
        })
    }
    async fn acquire_lease(
        &self,
        mount: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseState, MetaError> {
        self.do_acquire_lease(mount, owner, ttl).await
    }
    async fn renew_lease(&self, fence: &Fence, ttl: Duration) -> Result<bool, MetaError> {
        self.do_renew_lease(fence, ttl).await
    }
    async fn release_lease(&self, fence: &Fence) -> Result<(), MetaError> {
        self.do_release_lease(fence).await
    }
    async fn lease_for_writer(&self, mount: &str) -> Result<Option<LeaseState>, MetaError> {
        self.do_lease_for_writer(mount).await
    }
    async fn load_mounts(&self) -> Result<Vec<MountRow>, MetaError> {
        self.do_load_mounts().await
    }
    async fn entry(
        &self,
        mount: &str,
        idempotency_key: &str,
    ) -> Result<Option<JournalEntry>, MetaError> {
        self.do_entry(mount, idempotency_key).await
    }
    async fn pending(&self, mount: &str) -> Result<Vec<JournalEntry>, MetaError> {
        self.do_pending(mount).await
    }
    async fn pending_on(&self, paths: &[(String, String)]) -> Result<Vec<JournalEntry>, MetaError> {
        self.do_pending_on(paths).await
    }
    async fn committed_after(
        &self,
        mount: &str,
        path: &str,
        journal_id: i64,
    ) -> Result<Option<i64>, MetaError> {
        self.do_committed_after(mount, path, journal_id).await
    }
    async fn node(&self, mount: &str, path: &str) -> Result<Option<Node>, MetaError> {
        self.do_node(mount, path).await
    }
    async fn unpublished(
        &self,
        mount: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, MetaError> {
        self.do_unpublished(mount, after, limit).await
    }
    async fn mark_published(&self, ids: &[i64]) -> Result<(), MetaError> {
        self.do_mark_published(ids).await
    }
    async fn upload_of(&self, journal_id: i64) -> Result<Option<UploadRecord>, MetaError> {
        self.do_upload_of(journal_id).await
    }
    async fn mark_upload_aborted(&self, upload_id: &str) -> Result<(), MetaError> {
        self.do_mark_upload_aborted(upload_id).await
    }
    async fn orphaned_uploads(
        &self,
        mount: &str,
        older_than: DateTime<Utc>,
    ) -> Result<Vec<UploadRecord>, MetaError> {
        self.do_orphaned_uploads(mount, older_than).await
    }

    async fn recorded_uploads(&self, mount: &str, key: &str) -> Result<Vec<String>, MetaError> {
        self.do_recorded_uploads(mount, key).await
    }

    async fn apply(&self, writes: &[MetaWrite]) -> BatchResult {
        self.do_apply(writes).await
    }

    async fn prune_outbox(
        &self,
        mount: &str,
        retention: std::time::Duration,
    ) -> Result<u64, MetaError> {
        self.do_prune_outbox(mount, retention).await
    }
    async fn record_conditions(
        &self,
        mount: &str,
        conditions: &filestore_s3_actors::model::StoreConditions,
    ) -> Result<(), MetaError> {
        self.do_record_conditions(mount, conditions).await
    }
    async fn conditions(
        &self,
        mount: &str,
    ) -> Result<Option<filestore_s3_actors::model::StoreConditions>, MetaError> {
        self.do_conditions(mount).await
    }
}
