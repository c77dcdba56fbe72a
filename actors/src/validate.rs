//! Checks of the request values that are not paths (see [`crate::path`] for those): idempotency
//! keys, content types, byte ranges, listing tokens and page sizes, feed cursors. Each check
//! returns a typed error naming the field, before anything reaches S3, Postgres or Redis.

use crate::error::Error;
use crate::ports::ByteRange;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Longest Content-Type, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;
/// Longest listing continuation token accepted back from a caller, in bytes.
pub const MAX_LIST_TOKEN_BYTES: usize = 1024;
/// Largest page S3 returns.
pub const MAX_LIST_KEYS: i32 = 1000;
/// S3's limit on an object's user metadata: names and values together, in bytes.
pub const MAX_METADATA_BYTES: usize = 2048;
/// What the executor's own marker may take of that (names, a 19-digit journal id, a SHA-256).
pub const MARKER_METADATA_BYTES: usize = 20 + 19 + 16 + 64;
/// Longest user-metadata name.
pub const MAX_METADATA_NAME_BYTES: usize = 128;
/// Names the executor keeps for itself.
pub const RESERVED_METADATA_PREFIX: &str = "filestore-";

/// Largest object S3 stores (5 TiB).
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidRequest {
        field,
        reason: reason.into(),
    }
}

/// An idempotency key: 1-255 bytes, no control characters.
pub fn idempotency_key(k: &str) -> Result<(), Error> {
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(Error::InvalidIdempotencyKey {
            reason: format!(
                "must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} bytes, got {}",
                k.len()
            ),
        });
    }
    if k.chars().any(char::is_control) {
        return Err(Error::InvalidIdempotencyKey {
            reason: "must not contain control characters".into(),
        });
    }
    Ok(())
}

/// `tchar` of RFC 9110: the characters of a token.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_tchar)
}

/// A Content-Type: `type/subtype` with optional `; name=value` parameters (RFC 9110 media type;
/// values are tokens or quoted strings of printable ASCII), at most 256 bytes. It becomes an HTTP
/// header, so anything else (line breaks, non-ASCII) is refused rather than sent.
pub fn content_type(ct: &str) -> Result<(), Error> {
    let field = "content_type";
    if ct.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes, at most {MAX_CONTENT_TYPE_BYTES}", ct.len()),
        ));
    }
    if let Some(c) = ct
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(invalid(
            field,
            format!("holds U+{:04X}; only printable ASCII is allowed", c as u32),
        ));
    }
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    match media.split_once('/') {
        Some((t, s)) if is_token(t) && is_token(s) => {}
        _ => {
            return Err(invalid(
                field,
                format!("'{media}' is not a media type like 'text/plain'"),
            ))
        }
    }
    for p in parts {
        let p = p.trim();
        let ok = match p.split_once('=') {
            Some((name, value)) => {
                is_token(name)
                    && (is_token(value)
                        || (value.len() >= 2
                            && value.starts_with('"')
                            && value.ends_with('"')
                            && !value[1..value.len() - 1].contains('"')))
            }
            None => false,
        };
        if !ok {
            return Err(invalid(
                field,
                format!("parameter '{p}' is not 'name=value'"),
            ));
        }
    }
    Ok(())
}

/// User metadata (`x-amz-meta-<name>: <value>`): names of 1-128 lowercase letters, digits, `-`,
/// `_`, `.` (S3 lowercases names, so `A` and `a` would collide), starting with a letter or digit,
/// not under the executor's `filestore-` prefix; values of printable ASCII and spaces (they travel
/// as HTTP header values), without leading or trailing spaces (HTTP drops them); names and values
/// together at most 2 KiB minus what the executor's marker takes (S3's limit covers both).
pub fn user_metadata(m: &crate::model::UserMetadata) -> Result<(), Error> {
    let field = "metadata";
    let mut total = 0;
    for (name, value) in m {
        let name_ok = (1..=MAX_METADATA_NAME_BYTES).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !name_ok {
            return Err(invalid(
                field,
                format!(
                    "name '{}' must be 1-{MAX_METADATA_NAME_BYTES} of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
                    name.escape_debug()
                ),
            ));
        }
        if name.starts_with(RESERVED_METADATA_PREFIX) {
            return Err(invalid(
                field,
                format!("name '{name}' is under '{RESERVED_METADATA_PREFIX}', which the executor keeps for its write marker"),
            ));
        }
        if !value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
            || value.starts_with(' ')
            || value.ends_with(' ')
        {
            return Err(invalid(
                field,
                format!("value of '{name}' must be printable ASCII without leading or trailing spaces (encode other text, e.g. percent-encoding)"),
            ));
        }
        total += name.len() + value.len();
    }
    let limit = MAX_METADATA_BYTES - MARKER_METADATA_BYTES;
    if total > limit {
        return Err(invalid(
            field,
            format!("names and values take {total} bytes; at most {limit} (S3's {MAX_METADATA_BYTES} less the executor's marker)"),
        ));
    }
    Ok(())
}

/// A byte range: `end`, when given, not before `start`.
pub fn range(r: &ByteRange) -> Result<(), Error> {
    match r.end {
        Some(end) if end < r.start => Err(invalid(
            "range",
            format!("ends at byte {end}, before its start {}", r.start),
        )),
        _ => Ok(()),
    }
}

/// The size of an object to upload: at most S3's 5 TiB.
pub fn object_size(size: u64) -> Result<(), Error> {
    if size > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge {
            size,
            limit: MAX_OBJECT_BYTES,
            what: "an S3 object",
        });
    }
    Ok(())
}

/// A listing page: the token as the previous page returned it (1-1024 bytes of printable ASCII:
/// S3 tokens are opaque base64-like strings), a page size of 1-1000.
pub fn list_page(token: Option<&str>, max_keys: Option<i32>) -> Result<(), Error> {
    if let Some(t) = token {
        if t.is_empty() || t.len() > MAX_LIST_TOKEN_BYTES {
            return Err(invalid(
                "token",
                format!("is {} bytes; pass the next_token of the previous page as it was (1-{MAX_LIST_TOKEN_BYTES} bytes)", t.len()),
            ));
        }
        if !t.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "token",
                "holds characters no listing returns (only printable ASCII); pass next_token as it was",
            ));
        }
    }
    if let Some(n) = max_keys {
        if !(1..=MAX_LIST_KEYS).contains(&n) {
            return Err(invalid(
                "max_keys",
                format!("{n} is out of range 1..={MAX_LIST_KEYS}"),
            ));
        }
    }
    Ok(())
}

/// A feed cursor: 0 (from the start) or the `cursor` of an event.
pub fn feed_cursor(after: i64) -> Result<(), Error> {
    if after < 0 {
        return Err(invalid(
            "after",
            format!("{after} is negative; use 0 or the cursor of the last event handled"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for ok in [
            "text/plain",
            "application/octet-stream",
            "text/plain; charset=utf-8",
            "multipart/form-data; boundary=\"a b\"",
            "application/vnd.api+json",
        ] {
            assert!(content_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "text",
            "text/",
            "/plain",
            "text/plain\r\nX-Injected: 1",
            "text/plain; charset",
            "text/pl ain",
            "tëxt/plain",
            "text/plain; a=\"x\"y\"",
        ] {
            assert!(
                matches!(
                    content_type(bad),
                    Err(Error::InvalidRequest {
                        field: "content_type",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(content_type(&format!("text/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn user_metadata_rules() {
        let m = |pairs: &[(&str, &str)]| -> crate::model::UserMetadata {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(user_metadata(&m(&[("owner", "team-a"), ("build.id", "42 x")])).is_ok());
        for bad in [
            m(&[("Owner", "a")]),
            m(&[("", "a")]),
            m(&[("-x", "a")]),
            m(&[("a b", "a")]),
            m(&[("filestore-journal-id", "1")]),
            m(&[("x", "caf\u{e9}")]),
            m(&[("x", "a\r\nb")]),
            m(&[("x", " padded")]),
            m(&[("x", &"v".repeat(2000))]),
        ] {
            assert!(
                matches!(
                    user_metadata(&bad),
                    Err(Error::InvalidRequest {
                        field: "metadata",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pages_ranges_cursors() {
        assert!(list_page(Some("abc=="), Some(1000)).is_ok());
        assert!(list_page(None, Some(0)).is_err());
        assert!(list_page(None, Some(1001)).is_err());
        assert!(list_page(Some(""), None).is_err());
        assert!(list_page(Some("a\nb"), None).is_err());
        assert!(range(&ByteRange {
            start: 5,
            end: Some(4)
        })
        .is_err());
        assert!(range(&ByteRange {
            start: 5,
            end: Some(5)
        })
        .is_ok());
        assert!(feed_cursor(-1).is_err());
        assert!(object_size(MAX_OBJECT_BYTES + 1).is_err());
    }
}
