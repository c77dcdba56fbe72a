//! The `S3Executor` handle: starts one supervisor per enabled mount and routes calls to it.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};

use actix::{Addr, ArbiterHandle};
use bytes::Bytes;
use filestore_s3_actors::messages::{
    DeleteObject, GetStatus, ListObjects, OpenObject, PutLargeObject, PutObject, RetireMount,
    StatObject, SupervisorStatus,
};
use filestore_s3_actors::model::{ListPage, OpResult, Stat, UploadProgress, UploadSource};
use filestore_s3_actors::mount::{MountConfigError, MountRow, MountSpec};
use filestore_s3_actors::path::{DirPath, FsPath};
use filestore_s3_actors::ports::ByteRange;
use filestore_s3_actors::ports::{MetaStore, ObjectStoreFactory};
use filestore_s3_actors::upload::{file_identity, ProgressSink, SourceReader};
use filestore_s3_actors::{Error, MountSupervisor};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ExecutorConfig;
use crate::pg::{self, PgMetaStore};
use crate::redis::{RedisKeys, RedisPublisher};
use crate::s3::S3StoreFactory;

/// Options of a put.
#[derive(Clone, Default)]
pub struct PutOptions {
    /// Idempotency key: a repeated call with the same key and content returns the recorded result.
    pub idempotency_key: Option<String>,
    /// Content-Type stored with the object.
    pub content_type: Option<String>,
    /// Receives progress of a multipart upload (called on the executor's thread; keep it quick).
    /// [`progress_to_recipient`] adapts an actix `Recipient`.
    pub progress: Option<ProgressSink>,
}

impl std::fmt::Debug for PutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutOptions")
            .field("idempotency_key", &self.idempotency_key)
            .field("content_type", &self.content_type)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A progress sink that forwards every update to an actix actor.
pub fn progress_to_recipient(r: actix::Recipient<UploadProgressMsg>) -> ProgressSink {
    Arc::new(move |p| r.do_send(UploadProgressMsg(p.clone())))
}

/// [`UploadProgress`] as an actix message, for [`progress_to_recipient`].
#[derive(Debug, Clone, actix::Message)]
#[rtype(result = "()")]
pub struct UploadProgressMsg(pub UploadProgress);

/// Options of a read.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Read only this range; the SHA-256 is checked only for whole-object reads.
    pub range: Option<ByteRange>,
}

/// What a read returned.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// Bytes written by this call.
    pub bytes_written: u64,
    /// Size of the whole object.
    pub object_size: u64,
    /// ETag of the object read.
    pub etag: String,
    /// SHA-256 of the whole object, when the whole object was read and checked against `nodes`.
    pub sha256_verified: Option<String>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// Options of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// One level with sub-directories (`true`) or everything below (`false`).
    pub delimited: bool,
    /// Continuation token from the previous page.
    pub token: Option<String>,
    /// Page size.
    pub max_keys: Option<i32>,
}

/// What the executor knows about a mount.
#[derive(Debug, Clone)]
pub enum MountState {
    /// Served by a supervisor.
    Ready,
    /// `enabled = false`.
    Disabled,
    /// The row is invalid; the error names the field.
    Invalid(MountConfigError),
}

#[derive(Clone)]
enum Slot {
    Ready {
        addr: Addr<MountSupervisor>,
        spec: Arc<MountSpec>,
    },
    Disabled,
    Invalid(MountConfigError),
}

struct Services {
    meta: Arc<PgMetaStore>,
    factory: Arc<S3StoreFactory>,
    publisher: Arc<RedisPublisher>,
}

struct Inner {
    config: ExecutorConfig,
    arbiter: ArbiterHandle,
    /// The System this executor started because the caller had none; stopped on shutdown.
    own_system: Option<actix::System>,
    services: Services,
    mounts: RwLock<HashMap<String, Slot>>,
}

/// Handle to a running executor. `Send + Sync + Clone`; usable from an actix System or plain tokio.
///
/// ```no_run
/// # async fn demo() -> Result<(), filestore_s3::Error> {
/// use filestore_s3::{ExecutorConfig, PutOptions, S3Executor};
/// let exec = S3Executor::start(ExecutorConfig::from_env()?).await?;
/// let r = exec.put_bytes("artifacts", "builds/1/app.tar", b"...".to_vec(), PutOptions::default()).await?;
/// println!("generation {} etag {}", r.generation, r.node.unwrap().etag);
/// let page = exec.list("artifacts", "builds", Default::default()).await?;
/// exec.delete("artifacts", "builds/1/app.tar", Default::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct S3Executor {
    inner: Arc<Inner>,
}

/// Runs `fut` on `arbiter` and waits for its output.
async fn on_arbiter<T: Send + 'static>(
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
fn arbiter_for_executor() -> Result<(ArbiterHandle, Option<actix::System>), Error> {
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

impl S3Executor {
    /// Starts the executor: migrations (unless disabled), connections, and a supervisor per enabled
    /// mount. Invalid mount rows are logged and refused per call; the other mounts run.
    pub async fn start(config: ExecutorConfig) -> Result<Self, Error> {
        config.validate()?;
        let (arbiter, own_system) = arbiter_for_executor()?;
        let cfg = config.clone();
        // Clients are created on the arbiter that will use them: their background tasks
        // (connection drivers) are bound to the runtime that spawns them.
        let services = on_arbiter(&arbiter, async move {
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
            Ok::<_, Error>(Services {
                meta,
                factory,
                publisher,
            })
        })
        .await;
        let services = match services {
            Ok(Ok(s)) => s,
            Ok(Err(e)) | Err(e) => {
                if let Some(sys) = own_system {
                    sys.stop();
                }
                return Err(e);
            }
        };
        let exec = S3Executor {
            inner: Arc::new(Inner {
                config,
                arbiter,
                own_system,
                services,
                mounts: RwLock::new(HashMap::new()),
            }),
        };
        if let Err(e) = exec.reload_mounts().await {
            exec.shutdown().await;
            return Err(e);
        }
        Ok(exec)
    }

    /// The configuration the executor runs with.
    pub fn config(&self) -> &ExecutorConfig {
        &self.inner.config
    }

    /// Inserts or replaces a `backend_mounts` row, then reloads the mounts. An invalid row is
    /// refused before it is written.
    pub async fn register_mount(&self, row: MountRow) -> Result<MountState, Error> {
        MountSpec::from_row(&row)?;
        let meta = self.inner.services.meta.clone();
        let name = row.name.clone();
        on_arbiter(
            &self.inner.arbiter,
            async move { meta.upsert_mount(&row).await },
        )
        .await??;
        self.reload_mounts().await?;
        Ok(self
            .mount_states()
            .remove(&name)
            .unwrap_or(MountState::Disabled))
    }

    /// Re-reads `backend_mounts`: starts supervisors for new or changed enabled mounts and retires
    /// those of removed, disabled, invalid or changed ones.
    pub async fn reload_mounts(&self) -> Result<(), Error> {
        let inner = self.inner.clone();
        on_arbiter(&self.inner.arbiter.clone(), async move {
            let rows = inner.services.meta.load_mounts().await?;
            let mut old = std::mem::take(&mut *inner.mounts.write().expect("mount table lock"));
            let mut new = HashMap::new();
            for row in rows {
                let slot = match MountSpec::from_row(&row) {
                    Err(e) => {
                        log::error!("{e}; the mount is not served");
                        Slot::Invalid(e)
                    }
                    Ok(spec) if !spec.enabled => Slot::Disabled,
                    Ok(spec) => match old.remove(&row.name) {
                        Some(Slot::Ready {
                            addr,
                            spec: running,
                        }) if *running == spec => Slot::Ready {
                            addr,
                            spec: running,
                        },
                        previous => {
                            if let Some(Slot::Ready { addr, .. }) = previous {
                                addr.do_send(RetireMount);
                            }
                            inner.start_supervisor(spec)?
                        }
                    },
                };
                new.insert(row.name.clone(), slot);
            }
            for slot in old.into_values() {
                if let Slot::Ready { addr, .. } = slot {
                    addr.do_send(RetireMount);
                }
            }
            *inner.mounts.write().expect("mount table lock") = new;
            Ok::<_, Error>(())
        })
        .await?
    }

    /// Every known mount and its state.
    pub fn mount_states(&self) -> HashMap<String, MountState> {
        self.inner
            .mounts
            .read()
            .expect("mount table lock")
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Slot::Ready { .. } => MountState::Ready,
                    Slot::Disabled => MountState::Disabled,
                    Slot::Invalid(e) => MountState::Invalid(e.clone()),
                };
                (k.clone(), s)
            })
            .collect()
    }

    fn mount(&self, name: &str) -> Result<(Addr<MountSupervisor>, Arc<MountSpec>), Error> {
        match self
            .inner
            .mounts
            .read()
            .expect("mount table lock")
            .get(name)
        {
            Some(Slot::Ready { addr, spec }) => Ok((addr.clone(), spec.clone())),
            Some(Slot::Disabled) => Err(Error::MountDisabled {
                mount: name.to_owned(),
            }),
            Some(Slot::Invalid(e)) => Err(Error::InvalidMount(e.clone())),
            None => Err(Error::UnknownMount {
                mount: name.to_owned(),
            }),
        }
    }

    /// Supervisor status of a mount.
    pub async fn status(&self, mount: &str) -> Result<SupervisorStatus, Error> {
        let (addr, _) = self.mount(mount)?;
        addr.send(GetStatus).await.map_err(|_| Error::Shutdown)
    }

    /// Puts an object from memory.
    pub async fn put_bytes(
        &self,
        mount: &str,
        path: &str,
        body: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        let body = body.into();
        let sha256: [u8; 32] = Sha256::digest(&body).into();
        self.put_prepared(mount, path, body, sha256, opts).await
    }

    /// Puts an object from a file: in one request up to the mount's multipart threshold, as a
    /// resumable multipart upload above it (the file's size and modification time identify it; a
    /// restarted executor resumes the upload as long as they are unchanged).
    pub async fn put_file(
        &self,
        mount: &str,
        path: &str,
        file: impl AsRef<Path>,
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        let (_, spec) = self.mount(mount)?;
        let source_err = |e: String| Error::Source {
            what: file.as_ref().display().to_string(),
            message: e,
        };
        let abs = std::path::absolute(file.as_ref()).map_err(|e| source_err(e.to_string()))?;
        let abs_str = abs
            .to_str()
            .ok_or_else(|| source_err("path is not UTF-8".into()))?
            .to_owned();
        let (size, mtime_ns) = file_identity(&abs_str).await.map_err(source_err)?;
        if size <= spec.multipart_threshold {
            let f = tokio::fs::File::open(&abs)
                .await
                .map_err(|e| source_err(e.to_string()))?;
            return self.put_reader(mount, path, f, opts).await;
        }
        let (addr, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        addr.send(PutLargeObject {
            path: fs_path,
            source: UploadSource::File {
                path: abs_str,
                size,
                mtime_ns,
            },
            reader: None,
            size: Some(size),
            content_type: opts.content_type,
            idempotency_key: opts.idempotency_key,
            progress: opts.progress,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// Puts an object from an async reader, hashing it while it is read. Up to the mount's
    /// multipart threshold the body is buffered and sent in one request; a longer stream becomes a
    /// multipart upload (which cannot resume after a crash: the stream cannot be read again).
    pub async fn put_reader<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        mount: &str,
        path: &str,
        mut reader: R,
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        let (addr, spec) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        spec.keys
            .key_for(&fs_path)
            .map_err(|e| invalid_path(path, e))?;
        let limit = spec.multipart_threshold;
        let mut buf = Vec::new();
        // Read one byte past the threshold to learn which way to go.
        (&mut reader)
            .take(limit + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::Source {
                what: format!("the body of '{path}'"),
                message: e.to_string(),
            })?;
        if buf.len() as u64 <= limit {
            let body = Bytes::from(buf);
            let sha256: [u8; 32] = Sha256::digest(&body).into();
            return self.put_prepared(mount, path, body, sha256, opts).await;
        }
        let head = std::io::Cursor::new(buf);
        let reader: SourceReader = Box::new(head.chain(reader));
        addr.send(PutLargeObject {
            path: fs_path,
            source: UploadSource::Stream,
            reader: Some(reader),
            size: None,
            content_type: opts.content_type,
            idempotency_key: opts.idempotency_key,
            progress: opts.progress,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// Streams an object (or a range of it) into `writer`. A whole-object read is checked against
    /// the SHA-256 recorded in `nodes`; a mismatch is `Error::ChecksumMismatch` (the bytes were
    /// written: the caller discards them).
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        mount: &str,
        path: &str,
        writer: &mut W,
        opts: GetOptions,
    ) -> Result<GetResult, Error> {
        self.get_inner(mount, path, writer, opts.range, None, Sha256::new(), 0)
            .await
    }

    /// Downloads an object into a file. With `resume`, an existing shorter file is taken as the
    /// start of the object: only the rest is fetched (from the same object version, by ETag), and
    /// the whole file is checked against the recorded SHA-256.
    pub async fn get_to_file(
        &self,
        mount: &str,
        path: &str,
        file: impl AsRef<Path>,
        resume: bool,
    ) -> Result<GetResult, Error> {
        let file = file.as_ref();
        let io_err = |e: std::io::Error| Error::Source {
            what: file.display().to_string(),
            message: e.to_string(),
        };
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        let mut if_match = None;
        if resume {
            if let Ok(mut f) = tokio::fs::File::open(file).await {
                // Hash what is already there; it is the object's first bytes.
                let mut chunk = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut chunk).await.map_err(io_err)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&chunk[..n]);
                    have += n as u64;
                }
                let st = self.stat(mount, path).await?;
                if have >= st.object.size {
                    have = 0;
                    hasher = Sha256::new();
                } else {
                    if_match = Some(st.object.etag.clone());
                }
            }
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(have > 0)
            .truncate(have == 0)
            .open(file)
            .await
            .map_err(io_err)?;
        let range = (have > 0).then_some(ByteRange {
            start: have,
            end: None,
        });
        let r = self
            .get_inner(mount, path, &mut out, range, if_match, hasher, have)
            .await?;
        out.flush().await.map_err(io_err)?;
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    async fn get_inner<W: AsyncWrite + Unpin>(
        &self,
        mount: &str,
        path: &str,
        writer: &mut W,
        range: Option<ByteRange>,
        if_match: Option<String>,
        mut hasher: Sha256,
        already: u64,
    ) -> Result<GetResult, Error> {
        let (addr, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        let whole = range.is_none() || already > 0;
        let (node, mut body) = addr
            .send(OpenObject {
                path: fs_path,
                range,
                if_match,
            })
            .await
            .map_err(|_| Error::Shutdown)??;
        let mut written = 0u64;
        while let Some(chunk) = body.stream.next().await {
            let chunk = chunk.map_err(|source| Error::Storage {
                op: "GET",
                key: body.meta.key.clone(),
                source,
            })?;
            if whole {
                hasher.update(&chunk);
            }
            writer.write_all(&chunk).await.map_err(|e| Error::Source {
                what: format!("the destination of '{path}'"),
                message: e.to_string(),
            })?;
            written += chunk.len() as u64;
        }
        writer.flush().await.map_err(|e| Error::Source {
            what: format!("the destination of '{path}'"),
            message: e.to_string(),
        })?;
        let mut verified = None;
        if whole {
            let actual = hex::encode(hasher.finalize());
            if let Some(node) = node {
                if node.meta.sha256 != actual {
                    return Err(Error::ChecksumMismatch {
                        mount: mount.to_owned(),
                        path: path.to_owned(),
                        expected: node.meta.sha256,
                        actual,
                    });
                }
                verified = Some(actual);
            }
        }
        Ok(GetResult {
            bytes_written: written,
            object_size: body.meta.size,
            etag: body.meta.etag,
            sha256_verified: verified,
        })
    }

    async fn put_prepared(
        &self,
        mount: &str,
        path: &str,
        body: Bytes,
        sha256: [u8; 32],
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        let (addr, _) = self.mount(mount)?;
        let path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        addr.send(PutObject {
            path,
            body,
            sha256,
            content_type: opts.content_type,
            idempotency_key: opts.idempotency_key,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// Deletes the object at a path.
    pub async fn delete(
        &self,
        mount: &str,
        path: &str,
        opts: DeleteOptions,
    ) -> Result<OpResult, Error> {
        let (addr, _) = self.mount(mount)?;
        let path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        addr.send(DeleteObject {
            path,
            idempotency_key: opts.idempotency_key,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// What the store holds at a path, and what Postgres records for it.
    pub async fn stat(&self, mount: &str, path: &str) -> Result<Stat, Error> {
        let (addr, _) = self.mount(mount)?;
        let path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        addr.send(StatObject { path })
            .await
            .map_err(|_| Error::Shutdown)?
    }

    /// One page of a directory listing. Keys that do not map to a Filestore path are reported in
    /// `unmapped` rather than failing the listing.
    pub async fn list(&self, mount: &str, dir: &str, opts: ListOptions) -> Result<ListPage, Error> {
        let (addr, _) = self.mount(mount)?;
        let dir = DirPath::parse(dir).map_err(|e| invalid_path(dir, e))?;
        addr.send(ListObjects {
            dir,
            delimited: opts.delimited,
            token: opts.token,
            max_keys: opts.max_keys,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// Retires every mount and, if the executor started its own actix System, stops it.
    pub async fn shutdown(&self) {
        let slots: Vec<Slot> = self
            .inner
            .mounts
            .write()
            .expect("mount table lock")
            .drain()
            .map(|(_, v)| v)
            .collect();
        for slot in slots {
            if let Slot::Ready { addr, .. } = slot {
                let _ = addr.send(RetireMount).await;
            }
        }
        if let Some(sys) = &self.inner.own_system {
            sys.stop();
        }
    }
}

impl Inner {
    fn start_supervisor(&self, spec: MountSpec) -> Result<Slot, Error> {
        let spec = Arc::new(spec);
        let store = self
            .services
            .factory
            .for_mount(&spec)
            .map_err(|e| Error::Config(format!("mount '{}': {e}", spec.name)))?;
        let meta: Arc<dyn MetaStore> = self.services.meta.clone();
        let publisher = self.services.publisher.clone();
        let settings = self.config.supervisor;
        let s = spec.clone();
        let addr = actix::Supervisor::start(move |_| {
            MountSupervisor::new(s, store, meta, publisher, settings)
        });
        Ok(Slot::Ready { addr, spec })
    }
}

fn invalid_path(path: &str, e: filestore_s3_actors::path::PathError) -> Error {
    Error::InvalidPath {
        path: path.escape_debug().to_string(),
        source: e,
    }
}
