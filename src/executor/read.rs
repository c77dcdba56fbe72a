//! The reading calls of the handle: streaming get, resumable download to a file.

use std::path::Path;

use filestore_s3_actors::model::Stat;
use filestore_s3_actors::path::FsPath;
use filestore_s3_actors::ports::ByteRange;
use filestore_s3_actors::reads::{self, OpenRequest};
use filestore_s3_actors::store::{Outcome, S3Op};
use filestore_s3_actors::Error;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::runtime::on_arbiter;
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
        let io_err = |e: std::io::Error| Error::io(file.display().to_string(), e);
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
        // A large object is fetched as parallel ranged GETs, each written at its offset.
        let (_, spec, _) = self.mount(mount)?;
        let st = match (&if_match, have) {
            (None, 0) => Some(self.stat(mount, path).await?),
            _ => None,
        };
        if let Some(st) = st {
            let in_flight = spec.download_concurrency.max(1);
            let range = range_size(st.object.size, spec.download_range_size, in_flight);
            if st.object.size >= 2 * range {
                return self
                    .get_ranges(mount, path, file, st, range, in_flight as usize)
                    .await;
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

    /// Downloads a whole object into `file` as ranged GETs of `part` bytes, `in_flight` at a
    /// time, all pinned to the ETag `stat` saw (If-Match), each written at its offset. The file is
    /// hashed in order as the ranges before each one are complete (read back from the page cache
    /// on a blocking thread, overlapping the downloads), and the whole is checked against the
    /// SHA-256 recorded in `nodes`. Memory: a write buffer per range in flight.
    async fn get_ranges(
        &self,
        mount: &str,
        path: &str,
        file: &Path,
        st: Stat,
        part: u64,
        in_flight: usize,
    ) -> Result<GetResult, Error> {
        use std::io::{Read, Seek, SeekFrom};
        let io_err = |e: std::io::Error| Error::io(file.display().to_string(), e);
        let size = st.object.size;
        let etag = st.object.etag.clone();
        let out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(file)
            .await
            .map_err(io_err)?;
        out.set_len(size).await.map_err(io_err)?;
        drop(out);
        // Hashes the file in order, as far as the ranges done so far reach.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let hash_path = file.to_path_buf();
        let follower = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
            let mut f = std::fs::File::open(&hash_path)?;
            let mut hasher = Sha256::new();
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            while next < size {
                let Ok((start, end)) = done_rx.recv() else {
                    break; // a range failed: the download is abandoned
                };
                pending.insert(start, end);
                while let Some(end) = pending.remove(&next) {
                    f.seek(SeekFrom::Start(next))?;
                    let mut left = end - next;
                    while left > 0 {
                        let want = (left as usize).min(buf.len());
                        let n = f.read(&mut buf[..want])?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        hasher.update(&buf[..n]);
                        left -= n as u64;
                    }
                    next = end;
                }
            }
            Ok((hasher, next))
        });
        let ranges: Vec<(u64, u64)> = (0..size)
            .step_by(part as usize)
            .map(|start| (start, (start + part).min(size)))
            .collect();
        let fetched = futures::stream::iter(ranges)
            .map(|(start, end)| {
                let (etag, done_tx) = (etag.clone(), done_tx.clone());
                async move {
                    let mut f = tokio::fs::OpenOptions::new()
                        .write(true)
                        .open(file)
                        .await
                        .map_err(io_err)?;
                    f.seek(SeekFrom::Start(start)).await.map_err(io_err)?;
                    let mut w = tokio::io::BufWriter::with_capacity(1 << 20, f);
                    let range = ByteRange {
                        start,
                        end: Some(end - 1),
                    };
                    let r = self
                        .get_inner(
                            mount,
                            path,
                            &mut w,
                            Some(range),
                            Some(etag),
                            Sha256::new(),
                            0,
                        )
                        .await?;
                    if r.bytes_written != end - start {
                        return Err(Error::Source {
                            io: None,
                            what: format!("'{path}'"),
                            message: format!(
                                "range {start}-{} gave {} bytes, {} expected",
                                end - 1,
                                r.bytes_written,
                                end - start
                            ),
                        });
                    }
                    let _ = done_tx.send((start, end));
                    Ok::<_, Error>(())
                }
            })
            .buffer_unordered(in_flight)
            .try_collect::<Vec<()>>()
            .await;
        drop(done_tx);
        let hashed = follower.await.map_err(|e| Error::Source {
            io: None,
            what: file.display().to_string(),
            message: format!("hashing the download: {e}"),
        });
        fetched?;
        let (hasher, hashed_to) = hashed?.map_err(io_err)?;
        debug_assert_eq!(hashed_to, size);
        let verified = checked_against_node(mount, path, st.node, hasher)?;
        Ok(GetResult {
            bytes_written: size,
            object_size: size,
            etag,
            sha256_verified: verified,
        })
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
        let (_, _, store) = self.mount(mount)?;
        let fs_path = FsPath::parse(path).map_err(|e| invalid_path(path, e))?;
        let whole = range.is_none() || already > 0;
        let open = |req: OpenRequest| {
            on_arbiter(
                &self.inner.arbiter,
                reads::open(store.clone(), self.reads_meta(), req),
            )
        };
        let (node, mut body) = open(OpenRequest {
            path: fs_path.clone(),
            range,
            if_match,
            with_node: whole,
        })
        .await??;
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
                    let (_, more) = open(OpenRequest {
                        path: fs_path.clone(),
                        range: Some(rest),
                        if_match: Some(body.meta.etag.clone()),
                        with_node: false,
                    })
                    .await??;
                    body.stream = more.stream;
                    continue;
                }
                Err(source) => {
                    return Err(Error::Storage {
                        op: S3Op::GetObject,
                        key: body.meta.key.clone(),
                        source,
                        outcome: Outcome::NotApplied,
                    })
                }
            };
            if whole {
                hasher.update(&chunk);
            }
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("the destination of '{path}'"), e))?;
            written += chunk.len() as u64;
        }
        writer
            .flush()
            .await
            .map_err(|e| Error::io(format!("the destination of '{path}'"), e))?;
        let mut verified = None;
        if whole {
            verified = checked_against_node(mount, path, node, hasher)?;
        }
        Ok(GetResult {
            bytes_written: written,
            object_size: body.meta.size,
            etag: body.meta.etag,
            sha256_verified: verified,
        })
    }
}

/// The smallest range a download is split into: below it a request costs more than the
/// parallelism gains (AWS suggests 8–16 MiB ranges).
const MIN_DOWNLOAD_RANGE_BYTES: u64 = 8 * 1024 * 1024;

/// The range size of a download of `size` bytes: the object split over the `in_flight` ranges,
/// but no smaller than [`MIN_DOWNLOAD_RANGE_BYTES`] (or the mount's `max`, if that is smaller)
/// and no larger than `max`. An object under two ranges is one GET.
fn range_size(size: u64, max: u64, in_flight: u32) -> u64 {
    let max = max.max(1);
    size.div_ceil(u64::from(in_flight.max(1)))
        .max(MIN_DOWNLOAD_RANGE_BYTES.min(max))
        .min(max)
}

/// The whole object's SHA-256 checked against the one recorded in `nodes`: `Some(hex)` when it
/// matches, `None` for an object Postgres does not track, `Error::ChecksumMismatch` otherwise.
fn checked_against_node(
    mount: &str,
    path: &str,
    node: Option<filestore_s3_actors::model::Node>,
    hasher: Sha256,
) -> Result<Option<String>, Error> {
    let actual = hex::encode(hasher.finalize());
    let Some(node) = node else {
        return Ok(None);
    };
    if node.meta.sha256.to_hex() != actual {
        return Err(Error::ChecksumMismatch {
            mount: mount.to_owned(),
            path: path.to_owned(),
            expected: node.meta.sha256.to_hex(),
            actual,
        });
    }
    Ok(Some(actual))
}

#[cfg(test)]
mod tests {
    use super::range_size;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_download_is_split_over_its_ranges_within_the_bounds() {
        // Large: the mount's largest range.
        assert_eq!(range_size(2048 * MIB, 64 * MIB, 5), 64 * MIB);
        // Mid-size: split over the ranges in flight.
        assert_eq!(range_size(100 * MIB, 64 * MIB, 5), 20 * MIB);
        // Small: never below 8 MiB, so 12 MiB is one GET (under two ranges).
        assert_eq!(range_size(12 * MIB, 64 * MIB, 5), 8 * MIB);
        // A mount whose largest range is below 8 MiB keeps it.
        assert_eq!(range_size(15 * MIB + 4321, 5 * MIB, 5), 5 * MIB);
        // Degenerate settings do not divide by zero.
        assert_eq!(range_size(10, 0, 0), 1);
    }
}
