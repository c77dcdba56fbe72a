//! The idempotency key of a mutating command, remembered until its outcome is known.
//!
//! A command given no `--idempotency-key` gets a fresh one, written to a small file named after
//! the call (database, schema, command and its arguments; for a put also the file's absolute path,
//! size and modification time) before the call is sent. The file is removed once the outcome is
//! known: committed, or failed for good. A command that was killed, interrupted, or ended with a
//! retryable error leaves it behind, so the same command sent again reuses the key: it joins the
//! operation recovery is finishing (a multipart upload resumes under its upload id) or gets the
//! recorded outcome, instead of starting a second operation behind the first.
//!
//! A remembered key is reused for [`KEY_LIFETIME`] at most: a command sent again much later is a
//! new call (the path may have been written since), not the continuation of the old one.
//!
//! The files live in `--state-dir` (`FILESTORE_STATE_DIR`), by default
//! `$XDG_STATE_HOME/filestore-s3` or `~/.local/state/filestore-s3`, under `calls/`.

use std::path::{Path, PathBuf};

use filestore_s3::Error;
use sha2::{Digest, Sha256};

/// How long a remembered key is reused after the call that made it up.
pub const KEY_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// The key a command sends, and the file that remembers it while its outcome is unknown.
pub struct CallKey {
    pub key: String,
    file: Option<PathBuf>,
}

/// The default state directory.
pub fn default_state_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty());
    if let Some(x) = xdg {
        return Some(PathBuf::from(x).join("filestore-s3"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/filestore-s3"))
}

impl CallKey {
    /// The key for a call: `given` when the user named one; else the remembered key of the same
    /// call left unfinished earlier; else a new one, remembered. `call` names everything that
    /// makes two calls the same.
    pub fn for_call(state_dir: Option<&Path>, given: Option<String>, call: &[&str]) -> CallKey {
        if let Some(key) = given {
            return CallKey { key, file: None };
        }
        let fresh = || format!("cli-{}", uuid::Uuid::new_v4().simple());
        let Some(dir) = state_dir else {
            return CallKey {
                key: fresh(),
                file: None,
            };
        };
        let mut h = Sha256::new();
        for part in call {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let file = dir.join("calls").join(hex::encode(h.finalize()));
        let recent = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < KEY_LIFETIME);
        if let Some(key) = recent
            .then(|| std::fs::read_to_string(&file).ok())
            .flatten()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .filter(|k| filestore_s3_actors::validate::idempotency_key(k).is_ok())
        {
            eprintln!(
                "continuing the same {} left unfinished earlier (idempotency key {key})",
                call.get(2).copied().unwrap_or("call")
            );
            return CallKey {
                key,
                file: Some(file),
            };
        }
        let key = fresh();
        match remember(&file, &key, call) {
            Ok(()) => CallKey {
                key,
                file: Some(file),
            },
            Err(e) => {
                log::warn!(
                    "cannot remember the idempotency key in {} ({e}); a killed command sent again will start anew",
                    file.display()
                );
                CallKey { key, file: None }
            }
        }
    }

    /// Forgets the key once the outcome is known: committed, or failed for good. A retryable
    /// failure keeps it for the next try.
    pub fn settle<T>(&self, outcome: &Result<T, Error>) {
        let known = match outcome {
            Ok(_) => true,
            Err(e) => !e.is_retryable(),
        };
        if let (true, Some(file)) = (known, &self.file) {
            if let Err(e) = std::fs::remove_file(file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {} ({e})", file.display());
                }
            }
        }
    }
}

/// Writes the key (first line) and what the call was (for a reader) atomically.
fn remember(file: &Path, key: &str, call: &[&str]) -> std::io::Result<()> {
    let dir = file.parent().expect("a file in calls/");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut text = format!("{key}\n");
    for part in call.iter().skip(2) {
        text.push_str(part);
        text.push('\n');
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_kept_until_the_outcome_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let call = ["db", "schema", "put", "m", "a.txt"];
        let first = CallKey::for_call(Some(dir.path()), None, &call);
        let again = CallKey::for_call(Some(dir.path()), None, &call);
        assert_eq!(first.key, again.key, "an unsettled call reuses its key");
        let other = CallKey::for_call(Some(dir.path()), None, &["db", "schema", "put", "m", "b"]);
        assert_ne!(first.key, other.key);
        first.settle::<()>(&Err(Error::Shutdown));
        assert_eq!(
            CallKey::for_call(Some(dir.path()), None, &call).key,
            first.key,
            "a retryable failure keeps the key"
        );
        first.settle(&Ok(()));
        assert_ne!(
            CallKey::for_call(Some(dir.path()), None, &call).key,
            first.key,
            "a known outcome forgets it"
        );
        let given = CallKey::for_call(Some(dir.path()), Some("mine".into()), &call);
        assert_eq!(given.key, "mine");
        assert!(given.file.is_none());
    }
}
