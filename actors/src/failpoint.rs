//! Fault points for crash and takeover tests. With the `failpoints` feature, `hit(name).await`
//! acts when `name` is armed in `FILESTORE_FAILPOINTS` (comma-separated `name[=action]`); without
//! the feature it compiles to nothing.
//!
//! Actions: `abort` (the default) ends the process at once, no destructor running, like SIGKILL;
//! `abort@<n>` does so the n-th time the point is reached;
//! `pause` parks the operation for good (the rest of the process — lease renewal, other
//! operations — goes on), so a test can kill the process while the operation is at that point;
//! `sleep:<ms>` parks it for that long, then it goes on. Each action prints one line
//! `failpoint <name>: <action>` to stderr when it fires.
//!
//! Names: `after_<phase>` once a copy / move recorded that phase (`after_source_pinned`: its
//! intent, which carries the pin, is written; `after_copied`: moves and multipart copies only;
//! `after_source_deleted`); `before_commit` once an operation is verified and
//! about to commit; `before_commit_transaction` in the committer, just before the commit's
//! fenced transaction; `after_create_upload` once CreateMultipartUpload answered, before the
//! upload is recorded; `before_put` just before a single-request put's PUT; `after_complete`
//! once CompleteMultipartUpload answered; `before_publish`
//! in the notifier, with committed events about to go to Redis.

/// Environment variable that lists the armed failpoints.
pub const FAILPOINTS_ENV: &str = "FILESTORE_FAILPOINTS";

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// End the process at once.
    Abort,
    /// End the process at once on the n-th time the point is reached (1 = the first).
    AbortAt(u32),
    /// Park the operation for good.
    Pause,
    /// Park the operation this many milliseconds.
    Sleep(u64),
}

/// Parses `FILESTORE_FAILPOINTS`: `name[=abort|pause|sleep:<ms>]`, comma-separated. An entry
/// that cannot be parsed is reported and ignored.
pub fn parse(spec: &str) -> Vec<(String, Action)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|entry| {
            let (name, action) = entry.split_once('=').unwrap_or((entry, "abort"));
            let action = match action {
                "abort" => Action::Abort,
                "pause" => Action::Pause,
                other => match (
                    other.strip_prefix("sleep:").map(str::parse),
                    other.strip_prefix("abort@").map(str::parse::<u32>),
                ) {
                    (Some(Ok(ms)), _) => Action::Sleep(ms),
                    (_, Some(Ok(n))) if n > 0 => Action::AbortAt(n),
                    _ => {
                        eprintln!(
                            "{FAILPOINTS_ENV}: '{entry}' ignored (abort, abort@<n>, pause or sleep:<ms>)"
                        );
                        return None;
                    }
                },
            };
            Some((name.to_owned(), action))
        })
        .collect()
}

/// Acts if `name` is armed (feature `failpoints` only).
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| parse(&std::env::var(FAILPOINTS_ENV).unwrap_or_default()));
    let Some((_, action)) = armed.iter().find(|(n, _)| n == name) else {
        return;
    };
    static HITS: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());
    let hit_number = {
        let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
        match hits.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                hits.push((name.to_owned(), 1));
                1
            }
        }
    };
    match action {
        Action::AbortAt(n) if hit_number == *n => {
            eprintln!("failpoint {name}: aborting the process (hit {n})");
            std::process::abort();
        }
        Action::AbortAt(_) => {}
        Action::Abort => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort();
        }
        Action::Pause => {
            eprintln!("failpoint {name}: paused");
            std::future::pending::<()>().await;
        }
        Action::Sleep(ms) => {
            eprintln!("failpoint {name}: sleeping {ms} ms");
            tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
        }
    }
}

/// Acts if `name` is armed (feature `failpoints` only).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions() {
        assert_eq!(
            parse("after_copied, before_commit=pause,after_complete=sleep:250,x=boom,y=abort@0,before_publish=abort@3,,"),
            vec![
                ("after_copied".to_owned(), Action::Abort),
                ("before_commit".to_owned(), Action::Pause),
                ("after_complete".to_owned(), Action::Sleep(250)),
                ("before_publish".to_owned(), Action::AbortAt(3)),
            ]
        );
    }
}
