//! A watcher following a mount's change feed: every committed event from a stored cursor, then
//! live ones; the cursor of the last event handled is kept in a file, so a restarted watcher
//! resumes without a gap.
//!
//!     . .dev/env
//!     cargo run --example watch_mount -- MOUNT [CURSOR_FILE]
//!
//! (with `FILESTORE_DB_SCHEMA` naming the executor's schema, e.g. `filestore_demo` after
//! `scripts/demo.sh`). Stop it with Ctrl-C.

use filestore_s3::{ExecutorConfig, FollowOptions, S3Executor};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let mount = args.next().unwrap_or_else(|| "demo".into());
    let cursor_file = args.next().unwrap_or_else(|| format!(".{mount}.cursor"));
    let cursor: i64 = std::fs::read_to_string(&cursor_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);

    let mut config = ExecutorConfig::from_env()?;
    // A watcher only reads: it must never take the mounts' leases.
    config.passive = true;
    let exec = S3Executor::start(config).await?;
    println!("following mount {mount} after cursor {cursor} (Ctrl-C to stop)");
    let mut feed = Box::pin(exec.follow(&mount, cursor, FollowOptions::default()));
    loop {
        tokio::select! {
            item = feed.next() => {
                let Some(item) = item else { break };
                let e = item?;
                println!(
                    "{:>6}  {:<6} {} gen={} event_id={}",
                    e.cursor, e.event.op.as_str(), e.event.path, e.event.generation, e.event.event_id
                );
                std::fs::write(&cursor_file, e.cursor.to_string())?;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    exec.shutdown().await;
    Ok(())
}
