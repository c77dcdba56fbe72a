//! Filestore path <-> object key translation.
//!
//! A Filestore path is a `/`-separated list of segments, relative to the mount root. A leading `/`
//! is accepted and dropped, so `/a/b` and `a/b` name the same node. Every segment must be non-empty,
//! must not be `.` or `..`, and must not hold NUL or other control characters. The object key is the
//! mount prefix followed by the path; it may not exceed [`MAX_KEY_BYTES`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// S3's limit on the length of an object key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a path (or prefix) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path has no segments at all.
    #[error("path is empty")]
    Empty,
    /// Two slashes in a row, or a trailing slash.
    #[error("path has an empty segment at position {index} (double or trailing '/')")]
    EmptySegment {
        /// Zero-based segment index.
        index: usize,
    },
    /// `.` or `..` as a segment.
    #[error("path segment {index} is '{segment}', relative segments are not allowed")]
    DotSegment {
        /// Zero-based segment index.
        index: usize,
        /// The offending segment.
        segment: String,
    },
    /// NUL or another control character.
    #[error("path contains control character U+{code:04X} at byte {byte_offset}")]
    ControlCharacter {
        /// Unicode scalar value of the character.
        code: u32,
        /// Byte offset in the path.
        byte_offset: usize,
    },
    /// The resulting object key is longer than S3 allows.
    #[error("object key would be {len} bytes, S3 allows at most {MAX_KEY_BYTES}")]
    KeyTooLong {
        /// Length of the key in bytes.
        len: usize,
    },
}

/// A validated Filestore path (no leading or trailing slash, no empty / dot segments).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FsPath(String);

impl FsPath {
    /// Validates `raw` as the path of an object.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let trimmed = raw.strip_prefix('/').unwrap_or(raw);
        if trimmed.is_empty() {
            return Err(PathError::Empty);
        }
        check_segments(trimmed)?;
        Ok(FsPath(trimmed.to_owned()))
    }

    /// The path as a string, without a leading slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for FsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FsPath {
    type Error = PathError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        FsPath::parse(&value)
    }
}

impl From<FsPath> for String {
    fn from(p: FsPath) -> String {
        p.0
    }
}

/// A directory-like path used for listing: empty (the mount root) or a valid path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirPath(String);

impl DirPath {
    /// The mount root.
    pub fn root() -> Self {
        DirPath(String::new())
    }

    /// Validates a directory path; `""` and `"/"` mean the root, one trailing `/` is accepted.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let t = raw.strip_prefix('/').unwrap_or(raw);
        let t = t.strip_suffix('/').unwrap_or(t);
        if t.is_empty() {
            return Ok(DirPath::root());
        }
        check_segments(t)?;
        Ok(DirPath(t.to_owned()))
    }

    /// The path without slashes at either end; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_segments(s: &str) -> Result<(), PathError> {
    if let Some((byte_offset, c)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(PathError::ControlCharacter {
            code: c as u32,
            byte_offset,
        });
    }
    for (index, seg) in s.split('/').enumerate() {
        match seg {
            "" => return Err(PathError::EmptySegment { index }),
            "." | ".." => {
                return Err(PathError::DotSegment {
                    index,
                    segment: seg.to_owned(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// A key found in the bucket that does not map back to a Filestore path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmappedKey {
    /// The object key as listed.
    pub key: String,
    /// Why it does not map.
    pub reason: String,
}

/// Translates between Filestore paths and object keys for one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMapper {
    /// Normalised prefix: empty, or ending in exactly one `/`.
    prefix: String,
}

impl KeyMapper {
    /// Builds a mapper from a mount prefix. The prefix follows the same segment rules as a path;
    /// `""` and `"/"` mean the bucket root.
    pub fn new(prefix: &str) -> Result<Self, PathError> {
        let dir = DirPath::parse(prefix)?;
        let prefix = if dir.as_str().is_empty() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        if prefix.len() >= MAX_KEY_BYTES {
            return Err(PathError::KeyTooLong { len: prefix.len() });
        }
        Ok(KeyMapper { prefix })
    }

    /// The normalised prefix (empty or ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object key of a path.
    pub fn key_for(&self, path: &FsPath) -> Result<String, PathError> {
        let key = format!("{}{}", self.prefix, path.as_str());
        if key.len() > MAX_KEY_BYTES {
            return Err(PathError::KeyTooLong { len: key.len() });
        }
        Ok(key)
    }

    /// The key prefix that lists a directory: the mount prefix plus `dir/` (or nothing for the root).
    pub fn list_prefix(&self, dir: &DirPath) -> Result<String, PathError> {
        let key = if dir.as_str().is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, dir.as_str())
        };
        if key.len() > MAX_KEY_BYTES {
            return Err(PathError::KeyTooLong { len: key.len() });
        }
        Ok(key)
    }

    /// Maps a listed object key back to a path.
    pub fn path_for(&self, key: &str) -> Result<FsPath, UnmappedKey> {
        let rest = key.strip_prefix(&self.prefix).ok_or_else(|| UnmappedKey {
            key: key.to_owned(),
            reason: format!("key is outside the mount prefix '{}'", self.prefix),
        })?;
        if rest.starts_with('/') {
            return Err(UnmappedKey {
                key: key.to_owned(),
                reason: "key has an empty segment after the prefix".into(),
            });
        }
        FsPath::parse(rest).map_err(|e| UnmappedKey {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Maps a common prefix (ending in `/`) from a delimited listing back to a directory path.
    pub fn dir_for(&self, common_prefix: &str) -> Result<DirPath, UnmappedKey> {
        let rest = common_prefix
            .strip_prefix(&self.prefix)
            .ok_or_else(|| UnmappedKey {
                key: common_prefix.to_owned(),
                reason: format!("prefix is outside the mount prefix '{}'", self.prefix),
            })?;
        let inner = rest.strip_suffix('/').unwrap_or(rest);
        if inner.is_empty() || inner.starts_with('/') {
            return Err(UnmappedKey {
                key: common_prefix.to_owned(),
                reason: "common prefix has an empty segment".into(),
            });
        }
        DirPath::parse(inner).map_err(|e| UnmappedKey {
            key: common_prefix.to_owned(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "a/b/c.txt",
            "/lead/slash",
            "with space/ünïcödé ✓.bin",
            "a.b/..c/c..",
        ] {
            assert!(FsPath::parse(p).is_ok(), "{p}");
        }
        assert_eq!(FsPath::parse("/x/y").unwrap().as_str(), "x/y");
    }

    #[test]
    fn rejects_bad_paths_with_a_reason() {
        assert_eq!(FsPath::parse(""), Err(PathError::Empty));
        assert_eq!(FsPath::parse("/"), Err(PathError::Empty));
        assert_eq!(
            FsPath::parse("a//b"),
            Err(PathError::EmptySegment { index: 1 })
        );
        assert_eq!(
            FsPath::parse("a/b/"),
            Err(PathError::EmptySegment { index: 2 })
        );
        assert_eq!(
            FsPath::parse("a/../b"),
            Err(PathError::DotSegment {
                index: 1,
                segment: "..".into()
            })
        );
        assert!(matches!(
            FsPath::parse("./a"),
            Err(PathError::DotSegment { index: 0, .. })
        ));
        assert_eq!(
            FsPath::parse("a\0b"),
            Err(PathError::ControlCharacter {
                code: 0,
                byte_offset: 1
            })
        );
        assert!(matches!(
            FsPath::parse("a\nb"),
            Err(PathError::ControlCharacter { code: 10, .. })
        ));
    }

    #[test]
    fn key_length_counts_prefix_and_bytes() {
        let m = KeyMapper::new("pre").unwrap();
        let ok = "é".repeat((MAX_KEY_BYTES - 4) / 2);
        assert!(m.key_for(&FsPath::parse(&ok).unwrap()).is_ok());
        let too_long = format!("{ok}x");
        assert_eq!(
            m.key_for(&FsPath::parse(&too_long).unwrap()),
            Err(PathError::KeyTooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
    }

    #[test]
    fn prefix_is_normalised_and_validated() {
        assert_eq!(KeyMapper::new("").unwrap().prefix(), "");
        assert_eq!(KeyMapper::new("/").unwrap().prefix(), "");
        assert_eq!(KeyMapper::new("a/b").unwrap().prefix(), "a/b/");
        assert_eq!(KeyMapper::new("/a/b/").unwrap().prefix(), "a/b/");
        assert!(KeyMapper::new("a/../b").is_err());
        assert!(KeyMapper::new("a//b").is_err());
    }

    #[test]
    fn listing_keys_that_do_not_map_are_reported() {
        let m = KeyMapper::new("data").unwrap();
        assert_eq!(m.path_for("data/x/y").unwrap().as_str(), "x/y");
        assert!(m.path_for("other/x").is_err());
        assert!(m.path_for("data//x").is_err());
        assert!(m.path_for("data/x/").is_err());
        assert!(m.path_for("data/a/../b").is_err());
        assert_eq!(m.dir_for("data/x/").unwrap().as_str(), "x");
        assert!(m.dir_for("data//").is_err());
    }

    #[test]
    fn list_prefix_of_root_and_dir() {
        let m = KeyMapper::new("p").unwrap();
        assert_eq!(m.list_prefix(&DirPath::root()).unwrap(), "p/");
        assert_eq!(
            m.list_prefix(&DirPath::parse("/d/e/").unwrap()).unwrap(),
            "p/d/e/"
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[^/\\p{Cc}]{1,12}".prop_filter("dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn round_trip(prefix in prop::collection::vec(segment(), 0..3),
                      segs in prop::collection::vec(segment(), 1..6)) {
            let m = KeyMapper::new(&prefix.join("/")).unwrap();
            let p = FsPath::parse(&segs.join("/")).unwrap();
            let key = m.key_for(&p).unwrap();
            prop_assert_eq!(m.path_for(&key).unwrap(), p);
        }

        #[test]
        fn parse_never_accepts_control_or_dot_segments(s in "\\PC{0,20}[\\p{Cc}]\\PC{0,20}") {
            prop_assert!(FsPath::parse(&s).is_err());
        }

        #[test]
        fn accepted_paths_have_clean_segments(s in ".{0,40}") {
            if let Ok(p) = FsPath::parse(&s) {
                for seg in p.as_str().split('/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                    prop_assert!(!seg.chars().any(char::is_control));
                }
            }
        }
    }
}
