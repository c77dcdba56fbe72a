//! Parts of a file source are hashed from the file and then sent from the file (the store's
//! client reads the range while it sends it), so no part-sized buffer exists: memory for a file
//! upload does not grow with part size × parts in flight. The file is read twice per part — the
//! second time from the page cache on any machine with memory to spare.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc;

use md5::Digest as _;
use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;

/// Size of each buffer a hashing pass reads through.
const HASH_BUFFER: usize = 512 << 10;

/// Buffers circulating between the reading thread and the second hashing thread.
const HASH_BUFFERS: usize = 3;

/// The buffers of an upload's hashing passes, kept from one part to the next (allocating them
/// per part left freed megabytes in each blocking thread's malloc arena).
pub(super) type HashBuffers = Vec<Vec<u8>>;

/// What hashing one part of a file found.
pub(super) struct HashedRange {
    /// Bytes in the part (less than asked at the end of the file; 0 past it).
    pub len: u64,
    /// SHA-256 of the part.
    pub sha256: Sha256Digest,
    /// MD5 of the part, when asked for: for stores that neither verify nor echo the part's
    /// checksum, whose ETag of a part is its MD5.
    pub md5: Option<[u8; 16]>,
}

/// Reads up to `max` bytes of `path` from `offset`, feeding them to `whole` (the whole object's
/// SHA-256, in order) and hashing the part (its SHA-256, and its MD5 if `want_md5`). Blocking:
/// run it on a blocking thread.
///
/// The file is read once, by the calling thread, which also computes the whole object's SHA-256.
/// A second thread hashes the same buffers: the MD5 when it is wanted — the slowest of the three,
/// so the part's SHA-256 then stays on the reading thread — and otherwise the part's SHA-256. The
/// pass is bound by the slower of the two threads instead of by the sum of the hashes (all three
/// on one thread were what limited a file upload's rate on loopback: docs/benchmarks.md).
pub(super) fn hash_range(
    path: &Path,
    offset: u64,
    max: u64,
    whole: &mut Sha256,
    pool: &mut HashBuffers,
    want_md5: bool,
) -> std::io::Result<HashedRange> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut f = f.take(max);
    // The part's SHA-256 on the reading thread only while the second thread computes the MD5.
    let mut part_here = want_md5.then(Sha256::new);
    let mut len = 0u64;
    let (filled_tx, filled_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(HASH_BUFFERS);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(HASH_BUFFERS);
    std::thread::scope(|s| {
        let second = s.spawn(move || {
            let mut md5 = want_md5.then(md5::Md5::new);
            let mut part = (!want_md5).then(Sha256::new);
            for (buf, n) in filled_rx {
                if let Some(m) = md5.as_mut() {
                    m.update(&buf[..n]);
                }
                if let Some(p) = part.as_mut() {
                    p.update(&buf[..n]);
                }
                // The reader may have stopped (an error): nothing waits for the buffer then.
                let _ = free_tx.send(buf);
            }
            (
                md5.map(|m| <[u8; 16]>::from(m.finalize())),
                part.map(Sha256Digest::finish),
            )
        });
        let mut unused = HASH_BUFFERS;
        let read = loop {
            let mut buf = if unused > 0 {
                unused -= 1;
                pool.pop().unwrap_or_else(|| vec![0u8; HASH_BUFFER])
            } else {
                match free_rx.recv() {
                    Ok(buf) => buf,
                    // The second thread is gone: its join below reports why.
                    Err(_) => break Ok(()),
                }
            };
            let n = match read_some(&mut f, &mut buf) {
                Ok(0) => {
                    pool.push(buf);
                    break Ok(());
                }
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            whole.update(&buf[..n]);
            if let Some(p) = part_here.as_mut() {
                p.update(&buf[..n]);
            }
            len += n as u64;
            if filled_tx.send((buf, n)).is_err() {
                break Ok(());
            }
        };
        drop(filled_tx);
        let (md5, part_there) = second
            .join()
            .map_err(|_| std::io::Error::other("the second hashing thread panicked"))?;
        pool.extend(free_rx.try_iter());
        read?;
        let sha256 = part_here
            .map(Sha256Digest::finish)
            .or(part_there)
            .expect("one of the two threads hashes the part");
        Ok(HashedRange { len, sha256, md5 })
    })
}

/// One `read`, retried when a signal interrupted it.
fn read_some(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hash_like_the_bytes_they_hold() {
        let path = std::env::temp_dir().join(format!("fs3-hash-range-{}", std::process::id()));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // With the MD5 (the part's SHA-256 on the reading thread) and without it (the part's
        // SHA-256 on the second thread): the same parts and digests, and the MD5 only if asked.
        for want_md5 in [true, false] {
            let mut whole = Sha256::new();
            let mut pool = HashBuffers::new();
            let mut at = 0u64;
            let mut lens = Vec::new();
            loop {
                let r = hash_range(&path, at, 1_200_000, &mut whole, &mut pool, want_md5).unwrap();
                if r.len == 0 {
                    break;
                }
                let bytes = &data[at as usize..(at + r.len) as usize];
                assert_eq!(r.sha256, Sha256Digest::of(bytes));
                assert_eq!(
                    r.md5,
                    want_md5.then(|| <[u8; 16]>::from(md5::Md5::digest(bytes)))
                );
                lens.push(r.len);
                at += r.len;
            }
            assert_eq!(lens, [1_200_000, 1_200_000, 600_000]);
            assert_eq!(
                pool.len(),
                HASH_BUFFERS,
                "every buffer is kept for the next part"
            );
            assert_eq!(Sha256Digest::finish(whole), Sha256Digest::of(&data));
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_read_error_is_returned_not_waited_on() {
        // A directory opens and seeks but every read fails (EISDIR): the pass ends with that
        // error, the second thread stopped, instead of waiting for a buffer that never comes back.
        let dir = std::env::temp_dir();
        let mut pool = HashBuffers::new();
        for want_md5 in [true, false] {
            let err = hash_range(&dir, 0, 1 << 20, &mut Sha256::new(), &mut pool, want_md5)
                .err()
                .expect("reading a directory fails");
            assert_eq!(err.raw_os_error(), Some(21), "{err}");
        }
    }
}
