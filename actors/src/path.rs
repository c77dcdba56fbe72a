//! Filestore path <-> object key translation.
//!
//! A Filestore path is a `/`-separated list of segments, relative to the mount root. A leading `/`
//! is accepted and dropped, so `/a/b` and `a/b` name the same node. The object key is the mount
//! prefix followed by the path; it may not exceed [`MAX_KEY_BYTES`]. A path is refused when:
//!
//! - a segment is empty (`a//b`, a trailing `/`) or is `.` / `..`;
//! - a segment *decodes* to `.` / `..`, or hides a separator or control character, once
//!   percent-decoding is applied (up to three times: `%2e%2e`, `%252e%252e`, `a%2fb`, `%5c`,
//!   `%00`) — the key itself would be harmless in S3, but any consumer that decodes keys (a web
//!   front end, a sync tool) would see a traversal;
//! - it holds a backslash (a separator on Windows and to many tools);
//! - it holds NUL or another control character (Unicode category Cc), or an invisible format
//!   character that changes how a name reads without being seen (bidirectional overrides and
//!   isolates, zero-width space / joiners, the byte-order mark, soft hyphen, tag characters);
//! - it is not in Unicode normalisation form C: `é` as one code point and as `e` + combining
//!   accent would be two keys that look the same; the error carries the NFC form to send instead.
//!
//! Look-alike characters from other scripts (Cyrillic `а` for Latin `a`, a no-break space) are
//! accepted and stored byte for byte: they are legitimate in names, and which scripts a tenant may
//! mix is the caller's naming policy, not the storage layer's.

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
    /// A backslash, which Windows and many tools read as a separator.
    #[error("path contains a backslash at byte {byte_offset}; use '/' to separate segments")]
    Backslash {
        /// Byte offset in the path.
        byte_offset: usize,
    },
    /// A segment that percent-decodes to `.` / `..` or to something holding `/`, `\` or a control
    /// character.
    #[error("path segment {index} '{segment}' decodes to '{decoded}', a relative segment or separator once percent-decoded")]
    EncodedTraversal {
        /// Zero-based segment index.
        index: usize,
        /// The segment as given.
        segment: String,
        /// What it decodes to (control characters escaped).
        decoded: String,
    },
    /// An invisible formatting character (bidi override, zero-width space, BOM, ...).
    #[error("path contains the invisible format character U+{code:04X} at byte {byte_offset}")]
    InvisibleCharacter {
        /// Unicode scalar value of the character.
        code: u32,
        /// Byte offset in the path.
        byte_offset: usize,
    },
    /// The path is not in Unicode normalisation form C.
    #[error("path is not in Unicode normalisation form C; send it as '{nfc}'")]
    NotNormalized {
        /// The NFC form of the path.
        nfc: String,
    },
    /// Bytes that are not UTF-8, at a boundary that takes bytes.
    #[error("path is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
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

    /// Validates a path given as bytes (a field of a binary protocol); the tests hold non-UTF-8
    /// input against it.
    #[cfg(any(test, feature = "testing"))]
    pub fn from_bytes(raw: &[u8]) -> Result<Self, PathError> {
        match std::str::from_utf8(raw) {
            Ok(s) => FsPath::parse(s),
            Err(e) => Err(PathError::InvalidUtf8 {
                valid_up_to: e.valid_up_to(),
            }),
        }
    }

    /// The path as a string, without a leading slash.
    pub fn as_str(&self) -> &str {
        &self.0
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

/// Invisible format characters that change how a name reads (or hide characters) without being
/// seen: soft hyphen, Arabic letter mark, Mongolian vowel separator, zero-width space / non-joiner /
/// joiner, LRM / RLM, bidi embeddings / overrides / isolates, word joiner and invisible operators,
/// BOM / zero-width no-break space, interlinear annotation, tag characters.
fn is_invisible_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0xE0000..=0xE007F)
}

/// `seg` percent-decoded until it stops changing (at most three rounds), if it changes at all.
fn percent_decoded(seg: &str) -> Option<String> {
    if !seg.contains('%') {
        return None;
    }
    let mut cur = seg.to_owned();
    for _ in 0..3 {
        let next = percent_encoding::percent_decode_str(&cur)
            .decode_utf8_lossy()
            .into_owned();
        if next == cur {
            break;
        }
        cur = next;
    }
    (cur != seg).then_some(cur)
}

fn check_segments(s: &str) -> Result<(), PathError> {
    for (byte_offset, c) in s.char_indices() {
        if c.is_control() {
            return Err(PathError::ControlCharacter {
                code: c as u32,
                byte_offset,
            });
        }
        if c == '\\' {
            return Err(PathError::Backslash { byte_offset });
        }
        if is_invisible_format(c) {
            return Err(PathError::InvisibleCharacter {
                code: c as u32,
                byte_offset,
            });
        }
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
        if let Some(decoded) = percent_decoded(seg) {
            if decoded == "."
                || decoded == ".."
                || decoded.contains(['/', '\\'])
                || decoded.chars().any(char::is_control)
            {
                return Err(PathError::EncodedTraversal {
                    index,
                    segment: seg.to_owned(),
                    decoded: decoded.escape_debug().to_string(),
                });
            }
        }
    }
    if !unicode_normalization::is_nfc(s) {
        use unicode_normalization::UnicodeNormalization;
        return Err(PathError::NotNormalized {
            nfc: s.nfc().collect(),
        });
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
        // `inner` must not end in '/' either: `d//` is not the directory `d` (found by the
        // property run: listing `d` would show other keys than those under `d//`).
        if inner.is_empty() || inner.starts_with('/') || inner.ends_with('/') {
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
    fn rejects_disguised_traversal_and_invisible_characters() {
        assert_eq!(
            FsPath::parse("a\\..\\b"),
            Err(PathError::Backslash { byte_offset: 1 })
        );
        for (raw, index, decoded) in [
            ("a/%2e%2e/b", 1, ".."),
            ("%2E", 0, "."),
            (".%2e/x", 0, ".."),
            ("a/%252e%252e", 1, ".."),
            ("a%2fb", 0, "a/b"),
            ("x/a%5Cb", 1, "a\\\\b"),
            ("a%00b", 0, "a\\0b"),
        ] {
            match FsPath::parse(raw) {
                Err(PathError::EncodedTraversal {
                    index: i,
                    decoded: d,
                    ..
                }) => {
                    assert_eq!((i, d.as_str()), (index, decoded), "{raw}")
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
        // A percent sign that decodes to something harmless is an ordinary character.
        assert!(FsPath::parse("100%25 done/%41.txt").is_ok());
        for c in [
            '\u{202E}',
            '\u{200B}',
            '\u{FEFF}',
            '\u{2066}',
            '\u{00AD}',
            '\u{E0041}',
        ] {
            let raw = format!("ab{c}cd");
            assert_eq!(
                FsPath::parse(&raw),
                Err(PathError::InvisibleCharacter {
                    code: c as u32,
                    byte_offset: 2
                }),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn only_nfc_is_accepted_and_look_alikes_are_kept() {
        let decomposed = "cafe\u{0301}.txt";
        assert_eq!(
            FsPath::parse(decomposed),
            Err(PathError::NotNormalized {
                nfc: "caf\u{e9}.txt".into()
            })
        );
        assert!(FsPath::parse("caf\u{e9}.txt").is_ok());
        // Cyrillic 'а' (U+0430) and Latin 'a' are two different, accepted names.
        let cyr = FsPath::parse("\u{0430}pp.bin").unwrap();
        let lat = FsPath::parse("app.bin").unwrap();
        assert_ne!(cyr, lat);
        assert_eq!(
            FsPath::from_bytes(b"ok/\xffbad"),
            Err(PathError::InvalidUtf8 { valid_up_to: 3 })
        );
        assert_eq!(FsPath::from_bytes(b"ok/fine").unwrap().as_str(), "ok/fine");
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
        assert!(
            m.dir_for("data/x//").is_err(),
            "regression: d// is not the directory d"
        );
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
        "[^/\\p{Cc}]{1,12}".prop_filter("segments the rules refuse", |s| FsPath::parse(s).is_ok())
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
