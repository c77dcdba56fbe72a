//! The mutating calls of the handle: put (bytes, file, reader), delete, copy, move.

use std::path::Path;

use bytes::Bytes;
use filestore_s3_actors::commands::{DeleteObject, PutLargeObject, PutObject, TransferObject};
use filestore_s3_actors::model::{OpKind, OpResult, UploadSource};
use filestore_s3_actors::multipart::{file_identity, SourceReader};
use filestore_s3_actors::path::FsPath;
use filestore_s3_actors::{Error, Sha256Digest};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::forward::forwarded_key;
use super::{
    invalid_path, DeleteManyOptions, DeleteOptions, Location, PutOptions, S3Executor,
    TransferOptions,
};

impl S3Executor {
    /// Puts an object from memory.
    pub async fn put_bytes(
        &self,
        mount: &str,
        path: &str,
        body: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        opts.check()?;
        let (addr, _, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        let body: Bytes = body.into();
        if let Some(owner) = self.forward_target(mount).await {
            let mut opts = opts;
            opts.idempotency_key = forwarded_key(opts.idempotency_key);
            let size = body.len() as u64;
            return self
                .forwarded_again("put", mount, &owner, || {
                    let reader = std::io::Cursor::new(body.clone());
                    owner.put(mount, path, reader, Some(size), opts.clone())
                })
                .await;
        }
        send_put(&addr, fs_path, body, opts).await
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
        opts.check()?;
        let (addr, spec, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        let source_err = |e: String| Error::Source {
            io: None,
            what: file.as_ref().display().to_string(),
            message: e,
        };
        let abs = std::path::absolute(file.as_ref()).map_err(|e| source_err(e.to_string()))?;
        let abs_str = abs
            .to_str()
            .ok_or_else(|| source_err("path is not UTF-8".into()))?
            .to_owned();
        let (size, mtime_ns) = file_identity(&abs_str).await.map_err(source_err)?;
        if let Some(owner) = self.forward_target(mount).await {
            // Streamed to the owner: its upload resumes only as long as this call runs.
            let mut opts = opts;
            opts.idempotency_key = forwarded_key(opts.idempotency_key);
            return self
                .forwarded_again("put", mount, &owner, || {
                    let (abs, opts, owner) = (abs.clone(), opts.clone(), owner.clone());
                    async move {
                        let f = tokio::fs::File::open(&abs)
                            .await
                            .map_err(|e| Error::io(abs.display().to_string(), e))?;
                        owner.put(mount, path, f, Some(size), opts).await
                    }
                })
                .await;
        }
        if size <= spec.multipart_threshold {
            let f = tokio::fs::File::open(&abs)
                .await
                .map_err(|e| source_err(e.to_string()))?;
            return put_read(&addr, &spec, fs_path, f, opts).await;
        }
        addr.send(PutLargeObject {
            path: fs_path,
            source: UploadSource::File {
                path: abs_str,
                size,
                mtime_ns,
            },
            reader: None,
            size: Some(size),
            condition: opts.condition(),
            content_type: opts.content_type,
            metadata: opts.metadata,
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
        reader: R,
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        opts.check()?;
        let (addr, spec, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        // A path that maps to no key is refused before the stream is read.
        spec.keys
            .key_for(&fs_path)
            .map_err(|e| invalid_path(path, e))?;
        if let Some(owner) = self.forward_target(mount).await {
            let mut opts = opts;
            opts.idempotency_key = forwarded_key(opts.idempotency_key);
            // A stream cannot be sent twice: a lost answer is the caller's to settle, with the
            // key the error names.
            let key = opts.idempotency_key.clone().unwrap_or_default();
            return self
                .forwarded(
                    "put",
                    mount,
                    &owner,
                    owner.put(mount, path, reader, None, opts),
                )
                .await
                .map_err(|e| match e {
                    Error::Forwarded {
                        host,
                        kind,
                        message,
                        retryable,
                    } if kind == "answer_lost" => Error::Forwarded {
                        host,
                        kind,
                        message: format!("{message} (idempotency key {key})"),
                        retryable,
                    },
                    other => other,
                });
        }
        put_read(&addr, &spec, fs_path, reader, opts).await
    }

    /// Deletes the object at a path.
    pub async fn delete(
        &self,
        mount: &str,
        path: &str,
        opts: DeleteOptions,
    ) -> Result<OpResult, Error> {
        let (addr, _, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        if let Some(owner) = self.forward_target(mount).await {
            let key = forwarded_key(opts.idempotency_key);
            return self
                .forwarded_again("delete", mount, &owner, || {
                    owner.delete(mount, path, key.as_deref())
                })
                .await;
        }
        addr.send(DeleteObject {
            path: fs_path,
            idempotency_key: opts.idempotency_key,
            batched: false,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// Deletes many paths of one mount: one delete operation per path (its own journal row,
    /// verification, commit and event, as with [`delete`](Self::delete)), `opts.in_flight` at a
    /// time, their DELETEs sent together in DeleteObjects requests. Answers each path in the
    /// order given. The call as a whole is refused, before anything is deleted, for an unknown
    /// mount, a path that is not valid, a path given twice or bad options.
    pub async fn delete_many<P: AsRef<str>>(
        &self,
        mount: &str,
        paths: &[P],
        opts: DeleteManyOptions,
    ) -> Result<Vec<Result<OpResult, Error>>, Error> {
        use futures::StreamExt as _;
        const MAX_KEY_PREFIX: usize = 222;
        if !(1..=1000).contains(&opts.in_flight) {
            return Err(Error::InvalidRequest {
                field: "in_flight",
                reason: format!("must be 1-1000, got {}", opts.in_flight),
            });
        }
        if let Some(k) = &opts.idempotency_key {
            filestore_s3_actors::validate::idempotency_key(k)?;
            if k.len() > MAX_KEY_PREFIX {
                return Err(Error::InvalidIdempotencyKey {
                    reason: format!(
                        "a delete_many key must be 1-{MAX_KEY_PREFIX} bytes (a suffix per path is added), got {}",
                        k.len()
                    ),
                });
            }
        }
        let (addr, _, _) = self.mount(mount)?;
        let mut seen = std::collections::HashSet::with_capacity(paths.len());
        let mut parsed = Vec::with_capacity(paths.len());
        for p in paths {
            let p = p.as_ref();
            let path = FsPath::parse(p).map_err(|e| invalid_path(p, e))?;
            if !seen.insert(path.as_str().to_owned()) {
                return Err(Error::InvalidRequest {
                    field: "paths",
                    reason: format!("'{}' is given more than once", p.escape_debug()),
                });
            }
            parsed.push(path);
        }
        if let Some(owner) = self.forward_target(mount).await {
            let mut opts = opts;
            opts.idempotency_key = forwarded_key(opts.idempotency_key);
            let paths: Vec<String> = paths.iter().map(|p| p.as_ref().to_owned()).collect();
            return self
                .forwarded_again("delete_many", mount, &owner, || {
                    owner.delete_many(mount, &paths, &opts)
                })
                .await;
        }
        let calls = parsed.into_iter().map(|path| {
            let idempotency_key = opts.idempotency_key.as_ref().map(|k| {
                let digest = Sha256Digest::of(path.as_str().as_bytes()).to_hex();
                format!("{k}/{}", &digest[..32])
            });
            let addr = addr.clone();
            async move {
                addr.send(DeleteObject {
                    path,
                    idempotency_key,
                    batched: true,
                })
                .await
                .map_err(|_| Error::Shutdown)?
            }
        });
        Ok(futures::stream::iter(calls)
            .buffered(opts.in_flight)
            .collect()
            .await)
    }

    /// Copies `from` to `to` (on the same mount or another), as `std::fs::copy(from, to)`.
    /// Server-side when one client reaches both buckets, else streamed through the executor; the
    /// destination mount's SSE / KMS key / ACL / storage class apply; the copy is verified by size
    /// and SHA-256 before it is committed. The idempotency key belongs to the destination mount.
    pub async fn copy(
        &self,
        from: &Location,
        to: &Location,
        opts: TransferOptions,
    ) -> Result<OpResult, Error> {
        self.transfer(OpKind::Copy, from, to, opts).await
    }

    /// Moves `from` to `to`: copy, verify the destination, delete the source, verify it gone,
    /// then ONE commit that writes the destination node and removes the source node (one journal
    /// row on the destination mount, a `move` event on each mount's stream). An interrupted move
    /// is finished by recovery.
    pub async fn move_object(
        &self,
        from: &Location,
        to: &Location,
        opts: TransferOptions,
    ) -> Result<OpResult, Error> {
        self.transfer(OpKind::Move, from, to, opts).await
    }

    async fn transfer(
        &self,
        op: OpKind,
        from: &Location,
        to: &Location,
        opts: TransferOptions,
    ) -> Result<OpResult, Error> {
        let (source, source_path, mount, path) = (&*from.mount, &*from.path, &*to.mount, &*to.path);
        let (addr, _, _) = self.mount(mount)?;
        let (_, _, source_store) = self.mount(source)?;
        let source_path = FsPath::parse(source_path).map_err(|e| invalid_path(source_path, e))?;
        let path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        // The destination mount's owner runs a copy or a move (a move across mounts needs the
        // source mount's lease too: refused with NotOwner where one host does not hold both).
        if let Some(owner) = self.forward_target(mount).await {
            let key = forwarded_key(opts.idempotency_key);
            let verb = if op == OpKind::Move { "move" } else { "copy" };
            return self
                .forwarded_again(verb, mount, &owner, || {
                    owner.transfer(op, from, to, key.clone(), opts.mode)
                })
                .await;
        }
        addr.send(TransferObject {
            op,
            source_mount: source_store,
            source_path,
            path,
            condition: opts.condition(),
            idempotency_key: opts.idempotency_key,
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }
}

/// A single-request put: the body hashed here, off the supervisor's thread, then the command.
async fn send_put(
    addr: &actix::Addr<filestore_s3_actors::MountSupervisor>,
    path: FsPath,
    body: Bytes,
    opts: PutOptions,
) -> Result<OpResult, Error> {
    let sha256 = Sha256Digest::of(&body);
    addr.send(PutObject {
        path,
        body,
        sha256,
        condition: opts.condition(),
        content_type: opts.content_type,
        metadata: opts.metadata,
        idempotency_key: opts.idempotency_key,
    })
    .await
    .map_err(|_| Error::Shutdown)?
}

/// A put from a reader: up to the mount's multipart threshold the body is buffered and sent in
/// one request; a longer stream becomes a multipart upload.
async fn put_read<R: AsyncRead + Unpin + Send + 'static>(
    addr: &actix::Addr<filestore_s3_actors::MountSupervisor>,
    spec: &filestore_s3_actors::mount::MountSpec,
    path: FsPath,
    mut reader: R,
    opts: PutOptions,
) -> Result<OpResult, Error> {
    let limit = spec.multipart_threshold;
    let mut buf = Vec::new();
    // Read one byte past the threshold to learn which way to go.
    (&mut reader)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| Error::io(format!("the body of '{}'", path.as_str()), e))?;
    if buf.len() as u64 <= limit {
        return send_put(addr, path, Bytes::from(buf), opts).await;
    }
    let head = std::io::Cursor::new(buf);
    let reader: SourceReader = Box::new(head.chain(reader));
    addr.send(PutLargeObject {
        path,
        source: UploadSource::Stream,
        reader: Some(reader),
        size: None,
        condition: opts.condition(),
        content_type: opts.content_type,
        metadata: opts.metadata,
        idempotency_key: opts.idempotency_key,
        progress: opts.progress,
    })
    .await
    .map_err(|_| Error::Shutdown)?
}
