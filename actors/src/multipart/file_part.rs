//! Parts of a file source are hashed from the file and then sent from the file (the store's
//! client reads the range while it sends it), so no part-sized buffer exists: memory for a file
//! upload does not grow with part size × parts in flight. The file is read twice per part — the
//! second time from the page cache on any machine with memory to spare.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use md5::Digest as _;
use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;

/// Size of the one buffer a hashing pass reads through.
const HASH_BUFFER: usize = 1 << 20;

/// What hashing one part of a file found.
pub(super) struct HashedRange {
    /// Bytes in the part (less than asked at the end of the file; 0 past it).
    pub len: u64,
    /// SHA-256 of the part.
    pub sha256: Sha256Digest,
    /// MD5 of the part, for stores that neither verify nor echo the part's checksum: their ETag
    /// of a part is its MD5.
    pub md5: [u8; 16],
}

/// Reads up to `max` bytes of `path` from `offset`, feeding them to `whole` (the whole object's
/// SHA-256, in order) and hashing the part. Blocking: run it on a blocking thread.
pub(super) fn hash_range(
    path: &Path,
    offset: u64,
    max: u64,
    whole: &mut Sha256,
) -> std::io::Result<HashedRange> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut f = f.take(max);
    let mut part = Sha256::new();
    let mut md5 = md5::Md5::new();
    let mut buf = vec![0u8; HASH_BUFFER.min(max.max(1) as usize)];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        part.update(&buf[..n]);
        md5.update(&buf[..n]);
        len += n as u64;
    }
    Ok(HashedRange {
        len,
        sha256: Sha256Digest::finish(part),
        md5: md5.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hash_like_the_bytes_they_hold() {
        let path = std::env::temp_dir().join(format!("fs3-hash-range-{}", std::process::id()));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut whole = Sha256::new();
        let mut at = 0u64;
        let mut lens = Vec::new();
        loop {
            let r = hash_range(&path, at, 1_200_000, &mut whole).unwrap();
            if r.len == 0 {
                break;
            }
            let bytes = &data[at as usize..(at + r.len) as usize];
            assert_eq!(r.sha256, Sha256Digest::of(bytes));
            assert_eq!(r.md5, <[u8; 16]>::from(md5::Md5::digest(bytes)));
            lens.push(r.len);
            at += r.len;
        }
        assert_eq!(lens, [1_200_000, 1_200_000, 600_000]);
        assert_eq!(Sha256Digest::finish(whole), Sha256Digest::of(&data));
        std::fs::remove_file(&path).unwrap();
    }
}
