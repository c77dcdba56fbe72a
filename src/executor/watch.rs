//! Live mounts: a change of `backend_mounts` takes effect without a restart. The watcher LISTENs
//! for the trigger's notifications and reloads the mounts at each one, and also every
//! `mount_reload_interval` in case a notification was missed (the listener reconnects with
//! backoff when its connection drops, and reloads once after reconnecting). It also hears the
//! commits' `<schema>.outbox` notifications and wakes the notifier of the mount named, so events
//! written by another process (or another mount's committer) are relayed at once.

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
                    Some(first) => {
                        // Handle everything queued: one reload, one poke per mount.
                        let mut reload_now = false;
                        let mut pokes = std::collections::BTreeSet::new();
                        let mut next = Some(first);
                        while let Some(c) = next {
                            match c {
                                pg::Change::Mounts => reload_now = true,
                                pg::Change::Outbox(m) => {
                                    pokes.insert(m);
                                }
                            }
                            next = changes.try_recv().ok();
                        }
                        let Some(strong) = inner.upgrade() else { return };
                        for m in pokes {
                            strong.registry.poke_notifier(&m);
                        }
                        drop(strong);
                        if reload_now && !reload(&inner).await {
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
