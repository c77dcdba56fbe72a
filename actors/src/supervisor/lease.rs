//! The lease keeper: taking the mount's lease (and a provably dead local owner's), renewing it,
//! giving it up once a retired supervisor's running work ended; `LookAtLease` looks at once.

use super::*;

impl MountSupervisor {
    /// Tries to take the mount's lease; `at_start` makes the mailbox wait for the answer, so no
    /// call is refused just because the supervisor is starting.
    pub(super) fn acquire_lease(&mut self, ctx: &mut Context<Self>, at_start: bool) {
        if self.acquiring {
            return;
        }
        if let Some(gate) = &self.gate {
            if let Err(refusal) = gate.may_take(&self.spec.name, self.instance) {
                // Not this host's to take now (its share of the fleet's mounts is full): the
                // holder as the fleet last saw it, or none yet while the fleet assigns it.
                let ttl = self.settings.lease_ttl;
                self.held_by = Some(refusal.holder.unwrap_or_else(|| {
                    (
                        "(none: the fleet is assigning this mount to a host below its share)"
                            .to_owned(),
                        chrono::Utc::now() + chrono::TimeDelta::from_std(ttl).unwrap_or_default(),
                    )
                }));
                self.lease_error = None;
                self.retry_lease_later(ctx);
                return;
            }
        }
        self.acquiring = true;
        let meta = self.meta.clone();
        let (mount, owner, ttl) = (
            self.spec.name.clone(),
            self.owner.clone(),
            self.settings.lease_ttl,
        );
        let asked = std::time::Instant::now();
        let fut = async move { meta.acquire_lease(&mount, &owner, ttl).await }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.acquiring = false;
                if !matches!(res, Ok(LeaseState::Owned(_))) {
                    act.gate_holds(false);
                }
                if act.retired {
                    act.gate_holds(false);
                    // Retired while asking: a lease taken meanwhile is given back at once, so the
                    // mount's next owner does not wait for it to expire.
                    if let Ok(LeaseState::Owned(fence)) = res {
                        let meta = act.meta.clone();
                        ctx.spawn(
                            async move {
                                if let Err(e) = meta.release_lease(&fence).await {
                                    log::warn!("mount {}: lease not released ({e}); it expires", fence.mount);
                                }
                            }
                            .into_actor(act),
                        );
                    }
                    return;
                }
                match res {
                    Ok(LeaseState::Owned(fence)) => {
                        act.held_by = None;
                        act.lease_error = None;
                        act.lease_held_since(asked);
                        act.become_owner(fence, ctx);
                    }
                    Ok(LeaseState::HeldBy { owner, expires_at }) => {
                        if act.held_by.as_ref().map(|h| &h.0) != Some(&owner) {
                            log::info!(
                                "mount {}: owned by executor '{owner}' (lease until {expires_at}); waiting to take over",
                                act.spec.name
                            );
                        }
                        act.held_by = Some((owner, expires_at));
                        act.lease_error = None;
                        act.retry_lease_later(ctx);
                    }
                    Err(e) => {
                        log::warn!("mount {}: cannot look at the lease ({e})", act.spec.name);
                        act.lease_error = Some(e);
                        act.retry_lease_later(ctx);
                    }
                }
            });
        if at_start {
            ctx.wait(fut);
        } else {
            ctx.spawn(fut);
        }
    }

    /// The lease was taken or renewed by a request sent at `asked`: S3 mutations may start until
    /// its expiry as measured from then, less a quarter of its duration (the renewal interval),
    /// so that a request started in time has that long before another host can take the mount.
    /// Renewals go every quarter: one that fails or answers late leaves the next one time to
    /// hold the clock again before it runs out.
    pub(super) fn lease_held_since(&mut self, asked: std::time::Instant) {
        let ttl = self.settings.lease_ttl;
        self.store
            .lease_clock()
            .hold_until(Some(asked + ttl - ttl / 4));
    }

    pub(super) fn retry_lease_later(&mut self, ctx: &mut Context<Self>) {
        let every = self.settings.lease_ttl / 3;
        self.lease_timer = Some(ctx.run_later(every, |act, ctx| {
            act.lease_timer = None;
            act.acquire_lease(ctx, false);
        }));
    }

    /// Holds the lease now: starts the committer (its writes fenced by the lease) and the
    /// notifier, recovers pending rows, and renews the lease every third of its duration. A lost
    /// lease stops the supervisor (actix restarts it, and it waits for the lease again).
    pub(super) fn become_owner(&mut self, fence: Fence, ctx: &mut Context<Self>) {
        log::info!(
            "mount {}: lease taken by '{}' (epoch {})",
            self.spec.name,
            fence.owner,
            fence.epoch
        );
        let fenced = self.meta.with_fence(fence.clone());
        self.fence = Some(fence);
        self.gate_holds(true);
        let notifier = NotifierActor::new(
            self.spec.name.clone(),
            self.meta.clone(),
            self.publisher.clone(),
        )
        .start();
        let committer = CommitterActor::new(
            self.spec.name.clone(),
            fenced,
            notifier.clone(),
            self.settings.retry,
        )
        .start();
        self.notifier = Some(notifier);
        self.committer = Some(committer);
        self.schedule_recovery(ctx, true);
        self.recovery_timer = Some(ctx.run_interval(
            self.settings.recovery_interval,
            |act, ctx| {
                act.schedule_recovery(ctx, false);
                act.sweep_orphaned_uploads(ctx);
                act.prune_outbox(ctx);
            },
        ));
        self.poll_timer = Some(
            ctx.run_interval(self.settings.outbox_poll_interval, |act, _| {
                if let Some(n) = &act.notifier {
                    n.do_send(OutboxChanged);
                }
            }),
        );
        self.lease_timer =
            Some(ctx.run_interval(self.settings.lease_ttl / 4, |act, ctx| act.renew_lease(ctx)));
    }

    pub(super) fn renew_lease(&mut self, ctx: &mut Context<Self>) {
        let Some(fence) = self.fence.clone() else {
            return;
        };
        let meta = self.meta.clone();
        let ttl = self.settings.lease_ttl;
        let asked = std::time::Instant::now();
        ctx.spawn(
            async move { meta.renew_lease(&fence, ttl).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    // (An answer that comes after the lease was given up holds nothing.)
                    Ok(true) if act.fence.is_some() && !act.retired => {
                        act.lease_held_since(asked);
                        // The place in the fleet's share stays this supervisor's.
                        act.gate_holds(true);
                    }
                    Ok(true) => {}
                    Ok(false) if act.retired => {
                        act.store.lease_clock().hold_until(None);
                        act.gate_holds(false);
                    }
                    Ok(false) => {
                        act.store.lease_clock().hold_until(None);
                        act.gate_holds(false);
                        log::error!(
                            "mount {}: lease lost (expired or taken over); stopping this supervisor's work",
                            act.spec.name
                        );
                        // A restart drops every operation of this run; their writes would be
                        // refused by the fence anyway. The restarted supervisor waits for the lease.
                        ctx.stop();
                    }
                    Err(e) => log::warn!(
                        "mount {}: lease renewal failed ({e}); retrying",
                        act.spec.name
                    ),
                }),
        );
    }

    /// Gives the lease up (so another executor, or this executor's next supervisor of the mount,
    /// can take it at once) — only once the supervisor is retired and its last operation ended,
    /// so that operations running at retirement still commit.
    pub(super) fn release_if_retired_and_idle(&mut self, ctx: &mut Context<Self>) {
        // A release under way answers every waiter, including those of a later RetireMount,
        // when it has been written — never before.
        if !self.retired || !self.running.is_empty() || self.releasing {
            return;
        }
        if let Some(h) = self.lease_timer.take() {
            ctx.cancel_future(h);
        }
        let release = self.release_when_idle();
        self.releasing = true;
        ctx.spawn(
            async move {
                if let Some(r) = release {
                    r.await;
                }
            }
            .into_actor(self)
            .map(|(), act, _| {
                act.releasing = false;
                for w in std::mem::take(&mut act.drain_waiters) {
                    let _ = w.send(());
                }
            }),
        );
    }

    pub(super) fn release_when_idle(
        &mut self,
    ) -> Option<impl std::future::Future<Output = ()> + 'static> {
        if !self.retired || !self.running.is_empty() {
            return None;
        }
        let fence = self.fence.take()?;
        self.store.lease_clock().hold_until(None);
        self.gate_holds(false);
        let meta = self.meta.clone();
        Some(async move {
            if let Err(e) = meta.release_lease(&fence).await {
                log::warn!(
                    "mount {}: lease not released ({e}); it expires",
                    fence.mount
                );
            }
        })
    }
}

impl Handler<LookAtLease> for MountSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: LookAtLease, ctx: &mut Self::Context) {
        if self.fence.is_some() || self.passive || self.retired || self.acquiring {
            return;
        }
        if let Some(h) = self.lease_timer.take() {
            ctx.cancel_future(h);
        }
        self.acquire_lease(ctx, false);
    }
}
