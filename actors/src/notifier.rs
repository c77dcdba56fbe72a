//! The notifier: relays the outbox to Redis in commit order, at least once.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::model::OutboxRow;
use crate::ports::{ChangePublisher, MetaStore};

/// Something was committed: relay the outbox. A signal, so `do_send` is fine.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OutboxChanged;

/// Rows fetched per round trip.
pub const OUTBOX_BATCH: i64 = 100;
/// Longest wait between two attempts while Redis (or Postgres) is failing.
pub const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(10);

/// Relays one mount's outbox. A failed relay is retried with backoff; commits never wait for it.
pub struct NotifierActor {
    mount: String,
    meta: Arc<dyn MetaStore>,
    publisher: Arc<dyn ChangePublisher>,
    relaying: bool,
    again: bool,
    failures: u32,
    retry_timer: Option<SpawnHandle>,
    /// Every outbox row of the mount up to this id has been published (by this actor or before
    /// it started: it starts from 0 and reads what is still unpublished).
    published_through: i64,
}

impl NotifierActor {
    /// A notifier for one mount. It relays at start (events a previous run committed but did not
    /// relay) and whenever it receives [`OutboxChanged`].
    pub fn new(
        mount: String,
        meta: Arc<dyn MetaStore>,
        publisher: Arc<dyn ChangePublisher>,
    ) -> Self {
        NotifierActor {
            mount,
            meta,
            publisher,
            relaying: false,
            again: false,
            failures: 0,
            retry_timer: None,
            published_through: 0,
        }
    }

    fn relay(&mut self, ctx: &mut Context<Self>) {
        if self.relaying {
            self.again = true;
            return;
        }
        if let Some(h) = self.retry_timer.take() {
            ctx.cancel_future(h);
        }
        self.relaying = true;
        self.again = false;
        let meta = self.meta.clone();
        let publisher = self.publisher.clone();
        let mount = self.mount.clone();
        let mut through = self.published_through;
        let work = async move {
            let mut relayed = 0usize;
            let res = loop {
                let batch = match meta.unpublished(&mount, through, OUTBOX_BATCH).await {
                    Ok(b) => b,
                    Err(e) => break Err((format!("reading outbox: {e}"), e.retryable)),
                };
                if batch.is_empty() {
                    break Ok::<usize, (String, bool)>(relayed);
                }
                crate::failpoint::hit("before_publish").await;
                if let Err(e) = publisher.publish(&mount, &batch).await {
                    break Err((format!("publishing to Redis: {e}"), e.retryable));
                }
                // Commit → publish lag (clock of the committing host: a skew shows up here).
                let now = chrono::Utc::now();
                for row in &batch {
                    match row {
                        OutboxRow::Event(e) => {
                            let lag = (now - e.event.time).to_std().unwrap_or_default();
                            metrics::histogram!("filestore_s3_publish_lag_seconds", "mount" => mount.clone())
                                .record(lag.as_secs_f64());
                        }
                        OutboxRow::Unreadable { id, reason, .. } => {
                            metrics::counter!("filestore_s3_outbox_unreadable_total", "mount" => mount.clone())
                                .increment(1);
                            log::error!(
                                "mount {mount}: outbox row {id} is not an event this version reads ({reason}); published as stored"
                            );
                        }
                    }
                }
                let ids: Vec<i64> = batch.iter().map(OutboxRow::id).collect();
                if let Err(e) = meta.mark_published(&ids).await {
                    break Err((format!("marking outbox published: {e}"), e.retryable));
                }
                relayed += ids.len();
                through = through.max(ids.iter().copied().max().unwrap_or(through));
            };
            (through, res)
        };
        ctx.spawn(work.into_actor(self).map(|(through, res), act, ctx| {
            act.relaying = false;
            act.published_through = through;
            match res {
                Ok(n) => {
                    if n > 0 {
                        log::debug!("mount {}: relayed {n} events", act.mount);
                    }
                    act.failures = 0;
                    if act.again {
                        act.relay(ctx);
                    }
                }
                Err((e, retryable)) => {
                    act.failures += 1;
                    let delay = if retryable {
                        Duration::from_millis(200)
                            .saturating_mul(1 << act.failures.min(6))
                            .min(MAX_RELAY_BACKOFF)
                    } else {
                        // Needs an operator (credentials, ACL, a key of another type): tried
                        // again at the slowest pace, so it heals once the cause is fixed.
                        MAX_RELAY_BACKOFF
                    };
                    if retryable {
                        log::warn!(
                            "mount {}: {e}; events stay in the outbox, retrying in {delay:?}",
                            act.mount
                        );
                    } else {
                        log::error!(
                            "mount {}: {e} (not a transient failure: check the Redis configuration); events stay in the outbox, retrying in {delay:?}",
                            act.mount
                        );
                    }
                    act.retry_timer = Some(ctx.run_later(delay, |act, ctx| {
                        act.retry_timer = None;
                        act.relay(ctx);
                    }));
                }
            }
        }));
    }
}

impl Actor for NotifierActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // No interval timer here: an actor with one never idles, so it would outlive its owner.
        // The supervisor pokes the notifier every poll interval instead.
        self.relay(ctx);
    }
}

impl Handler<OutboxChanged> for NotifierActor {
    type Result = ();

    fn handle(&mut self, _msg: OutboxChanged, ctx: &mut Self::Context) {
        if self.retry_timer.is_none() {
            self.relay(ctx);
        }
    }
}
