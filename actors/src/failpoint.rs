//! Kill points for crash tests. With the `failpoints` feature, `hit(name)` aborts the process
//! (no destructor runs, like SIGKILL) when `name` is listed in `FILESTORE_FAILPOINTS`
//! (comma-separated). Without the feature it compiles to nothing.
//!
//! Names: `after_<phase>` once a copy / move recorded that phase (`after_source_pinned`,
//! `after_copied`, `after_source_deleted`); `before_commit` once an operation is verified and
//! about to commit; `after_complete` once CompleteMultipartUpload answered.

/// Environment variable that lists the armed failpoints.
pub const FAILPOINTS_ENV: &str = "FILESTORE_FAILPOINTS";

/// Aborts the process if `name` is armed (feature `failpoints` only).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if armed.iter().any(|a| a == name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// Aborts the process if `name` is armed (feature `failpoints` only).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
