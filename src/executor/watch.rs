//! Live mounts: a change of `backend_mounts` takes effect without a restart. The watcher LISTENs
//! for the trigger's notifications and reloads the mounts at each one, and also every
//! `mount_reload_interval` in case a notification was missed (the listener reconnects with
//! backoff when its connection drops, and reloads once after reconnecting).

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;

use super::Inner;
use crate::pg;

const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(30);

async fn reload(inner: &Weak<Inner>) -> bool {
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    if let Err(e) = inner.registry.reload(&inner.config, &inner.services).await {
        log::warn!("reloading mounts failed: {e}");
    }
    true
}

/// Runs until `stop` turns true or the executor is gone. Spawned on the executor's arbiter.
pub(super) async fn watch_mounts(
    inner: Weak<Inner>,
    url: String,
    schema: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        let (client, mut changes) = match pg::listen_mount_changes(&url, &schema).await {
            Ok(v) => {
                backoff = Duration::from_millis(500);
                v
            }
            Err(e) => {
                log::warn!("cannot listen for mount changes ({e}); retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
                continue;
            }
        };
        // A change may have been missed while not listening.
        if !reload(&inner).await {
            return;
        }
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(()) => {
                        while changes.try_recv().is_ok() {}
                        if !reload(&inner).await {
                            return;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep(every) => {
                    if !reload(&inner).await {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
        }
        drop(client);
    }
}
