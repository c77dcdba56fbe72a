//! Bootstrap: the actix System / Arbiter the executor's actors run on (the host's, or one of its
//! own on a dedicated thread), and the service clients, created on that arbiter.

use std::future::Future;
use std::sync::Arc;

use actix::ArbiterHandle;
use filestore_s3_actors::Error;

use crate::config::ExecutorConfig;
use crate::pg::{self, PgMetaStore};
use crate::redis::{RedisKeys, RedisPublisher};
use crate::s3::S3StoreFactory;

/// The executor's connections.
pub(super) struct Services {
    pub meta: Arc<PgMetaStore>,
    pub factory: Arc<S3StoreFactory>,
    pub publisher: Arc<RedisPublisher>,
}

/// Runs `fut` on `arbiter` and waits for its output.
pub(super) async fn on_arbiter<T: Send + 'static>(
    arbiter: &ArbiterHandle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !arbiter.spawn(async move {
        let _ = tx.send(fut.await);
    }) {
        return Err(Error::Shutdown);
    }
    rx.await.map_err(|_| Error::Shutdown)
}

/// An arbiter for the executor's actors: a new one in the caller's actix System, or a System of
/// its own on a dedicated thread when the caller has none (plain tokio, or no runtime at all).
pub(super) fn arbiter_for_executor() -> Result<(ArbiterHandle, Option<actix::System>), Error> {
    if actix::System::try_current().is_some() {
        return Ok((actix::Arbiter::new().handle(), None));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("filestore-s3".into())
        .spawn(move || {
            let runner = actix::System::new();
            let _ = tx.send((actix::System::current(), actix::Arbiter::current()));
            if let Err(e) = runner.run() {
                log::error!("filestore-s3 actor system ended with an error: {e}");
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the executor thread: {e}")))?;
    let (system, arbiter) = rx
        .recv()
        .map_err(|_| Error::Config("executor thread died while starting".into()))?;
    Ok((arbiter, Some(system)))
}

/// Applies the migrations (unless disabled) and creates the clients. Run it on the arbiter
/// that will use them: their background tasks (connection drivers) are bound to the runtime that
/// spawns them.
pub(super) async fn connect(cfg: ExecutorConfig) -> Result<Services, Error> {
    if cfg.migrate_on_start {
        pg::migrate(&cfg.database_url, &cfg.schema).await?;
    }
    let meta = Arc::new(PgMetaStore::new(
        &cfg.database_url,
        &cfg.schema,
        cfg.pool_size,
    )?);
    let factory = Arc::new(S3StoreFactory::new(cfg.s3.clone()).await);
    let publisher = Arc::new(RedisPublisher::new(
        &cfg.redis_url,
        RedisKeys::new(&cfg.redis_prefix),
        cfg.stream_maxlen,
    )?);
    Ok(Services {
        meta,
        factory,
        publisher,
    })
}
