//! Housekeeping: recovery of pending journal rows (at start and every `recovery_interval`),
//! outbox pruning, the orphaned-upload sweep and the outbox relay's poke.

use super::*;

impl MountSupervisor {
    /// Looks for pending journal rows and queues their recovery on their paths. At start-up the
    /// mailbox waits for the scan, so no new operation overtakes a pending one on the same path.
    pub(super) fn schedule_recovery(&mut self, ctx: &mut Context<Self>, at_start: bool) {
        let meta = self.meta.clone();
        let mount = self.spec.name.clone();
        let delay = if at_start && self.restarts > 0 {
            (Duration::from_millis(200) * self.restarts).min(self.settings.max_restart_delay)
        } else {
            Duration::ZERO
        };
        let scan = async move {
            tokio::time::sleep(delay).await;
            meta.pending(&mount).await
        }
        .into_actor(self)
        .map(move |res, act, ctx| match res {
            Ok(entries) => {
                if at_start {
                    act.recovered = true;
                    if !entries.is_empty() {
                        log::info!(
                            "mount {}: recovering {} pending operations",
                            act.spec.name,
                            entries.len()
                        );
                    }
                }
                for entry in entries {
                    act.queue_recovery(entry, ctx);
                }
            }
            Err(e) if at_start => {
                log::error!(
                    "mount {}: start-up recovery failed ({e}); restarting",
                    act.spec.name
                );
                ctx.stop();
            }
            Err(e) => log::warn!("mount {}: recovery scan failed: {e}", act.spec.name),
        });
        if at_start {
            ctx.wait(scan);
        } else {
            ctx.spawn(scan);
        }
    }

    pub(super) fn queue_recovery(&mut self, entry: JournalEntry, ctx: &mut Context<Self>) {
        if self.running.contains_key(&entry.idempotency_key) || !self.recovering.insert(entry.id) {
            return;
        }
        // Registered like a call, so a caller repeating it with the same key follows the recovery
        // (`Running::followers`).
        let key = entry.idempotency_key.clone();
        let progress = ProgressHub::default();
        let sink = progress.sink();
        self.running.insert(
            key.clone(),
            Running {
                fingerprint: entry.fingerprint.clone(),
                waiters: Vec::new(),
                progress,
                followers: Vec::new(),
                recovery: true,
            },
        );
        let locked = self.locks.acquire_all(self.lock_keys(&entry.request));
        let id = entry.id;
        let Some(c) = self.op_context() else {
            self.recovering.remove(&id);
            self.finish(&key, Err(Error::Shutdown), ctx);
            return;
        };
        let fut = async move {
            let _guards = locked.await;
            recover_entry(c, entry, Some(sink)).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = &res {
                log::warn!(
                    "mount {}: recovery of journal {id} ended with: {e}",
                    act.spec.name
                );
            }
            act.recovering.remove(&id);
            act.finish(&key, res, ctx);
            act.release_if_retired_and_idle(ctx);
        }));
    }

    /// Deletes the mount's outbox rows published longer ago than the retention.
    pub(super) fn prune_outbox(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.op_context() else { return };
        let retention = self.settings.outbox_retention;
        let prune = async move { c.meta.prune_outbox(&c.spec.name, retention).await };
        ctx.spawn(prune.into_actor(self).map(|res, act, _| match res {
            Ok(0) => {}
            Ok(n) => log::info!(
                "mount {}: pruned {n} outbox rows published over {:?} ago",
                act.spec.name,
                act.settings.outbox_retention
            ),
            Err(e) => log::warn!("mount {}: outbox pruning failed: {e}", act.spec.name),
        }));
    }

    /// Aborts open uploads this executor started whose journal row has ended, once idle for the
    /// grace period.
    pub(super) fn sweep_orphaned_uploads(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.op_context() else { return };
        let grace = chrono::Duration::from_std(self.settings.orphan_upload_grace)
            .unwrap_or(chrono::Duration::MAX);
        let sweep = async move {
            let cutoff = chrono::Utc::now() - grace;
            let orphans = c.meta.orphaned_uploads(&c.spec.name, cutoff).await?;
            let mut aborted = 0;
            for u in orphans {
                match c.store.abort_upload(&u.key, &u.upload_id).await {
                    Ok(()) => {
                        c.meta.mark_upload_aborted(&u.upload_id).await?;
                        aborted += 1;
                    }
                    Err(e) => log::warn!(
                        "mount {}: could not abort orphaned upload {}: {e}",
                        c.spec.name,
                        u.upload_id
                    ),
                }
            }
            Ok::<usize, Error>(aborted)
        };
        ctx.spawn(sweep.into_actor(self).map(|res, act, _| match res {
            Ok(0) => {}
            Ok(n) => log::info!(
                "mount {}: aborted {n} orphaned multipart uploads",
                act.spec.name
            ),
            Err(e) => log::warn!("mount {}: orphan sweep failed: {e}", act.spec.name),
        }));
    }
}

impl Handler<RelayOutbox> for MountSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: RelayOutbox, _ctx: &mut Self::Context) {
        if let Some(n) = &self.notifier {
            n.do_send(OutboxChanged);
        }
    }
}
