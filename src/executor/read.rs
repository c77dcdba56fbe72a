//! The reading calls of the handle: streaming get, resumable download to a file.

use std::path::Path;

use filestore_s3_actors::commands::OpenObject;
use filestore_s3_actors::path::FsPath;
use filestore_s3_actors::ports::ByteRange;
use filestore_s3_actors::Error;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{invalid_path, GetOptions, GetResult, S3Executor};

/// How often one read may ask again for the rest of a body that broke off.
const MAX_BODY_RESUMES: u32 = 5;

impl S3Executor {
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
        let (addr, _, _) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        let whole = range.is_none() || already > 0;
        let (node, mut body) = addr
            .send(OpenObject {
                path: fs_path.clone(),
                range,
                if_match,
            })
            .await
            .map_err(|_| Error::Shutdown)??;
        let first = range.map_or(0, |r| r.start);
        let mut written = 0u64;
        let mut resumed = 0u32;
        while let Some(chunk) = body.stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The body broke off (connection reset, a stalled stream cut by the SDK's
                // stalled-stream protection): the rest is asked for again, from the same object
                // version (If-Match on its ETag), and the hash continues over it.
                Err(source) if source.is_retryable() && resumed < MAX_BODY_RESUMES => {
                    resumed += 1;
                    log::warn!(
                        "mount {mount}: GET of '{path}' broke off after {written} bytes ({source}); asking for the rest (resume {resumed} of at most {MAX_BODY_RESUMES})"
                    );
                    let rest = ByteRange {
                        start: first + written,
                        end: range.and_then(|r| r.end),
                    };
                    let (_, more) = addr
                        .send(OpenObject {
                            path: fs_path.clone(),
                            range: Some(rest),
                            if_match: Some(body.meta.etag.clone()),
                        })
                        .await
                        .map_err(|_| Error::Shutdown)??;
                    body.stream = more.stream;
                    continue;
                }
                Err(source) => {
                    return Err(Error::Storage {
                        op: "GET",
                        key: body.meta.key.clone(),
                        source,
                    })
                }
            };
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
                        expected: node.meta.sha256.to_hex(),
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
}
