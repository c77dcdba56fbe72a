//! The change feed: follow a mount's committed events from a cursor — catch-up, then live — in
//! commit order, at least once, each event always with the same `event_id`.
//!
//! The outbox in Postgres is the source of truth (so a trimmed Redis stream loses nothing); Redis
//! Pub/Sub only wakes the feed up early, and it polls as a fallback (so Redis being down delays
//! the live phase by at most the poll interval). The cursor is the outbox id: store the `cursor`
//! of the last event handled and pass it to `follow` after a restart to resume without a gap.
//! Published events are kept for the outbox retention (`FILESTORE_OUTBOX_RETENTION_SECS`, 7 days
//! by default); a cursor older than that ends the feed with `Error::FeedExpired`.

use std::collections::VecDeque;
use std::time::Duration;

use filestore_s3_actors::model::ChangeEvent;
use filestore_s3_actors::Error;
use futures::{Stream, StreamExt};

use super::runtime::on_arbiter;
use super::S3Executor;
use crate::redis::RedisKeys;

/// Events fetched per round trip.
const FEED_BATCH: i64 = 500;

/// One event of a feed, with the cursor to resume after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// Resume after this event with `follow(mount, cursor, …)`.
    pub cursor: i64,
    /// The event, exactly as published on Redis.
    pub event: ChangeEvent,
}

/// Options of a feed.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Longest wait for new events when no Redis wake-up arrives.
    pub poll_interval: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll_interval: Duration::from_secs(1),
        }
    }
}

struct FeedState {
    exec: S3Executor,
    mount: String,
    cursor: i64,
    buffer: VecDeque<FeedEvent>,
    wake: Option<futures::stream::BoxStream<'static, ()>>,
    opts: FollowOptions,
}

impl S3Executor {
    /// Follows mount `mount`'s events committed after `after` (0: from the first one): first
    /// every stored event, then new ones as they are committed. The stream ends only with an
    /// error (e.g. an unknown mount, a negative cursor); drop it to stop following.
    pub fn follow(
        &self,
        mount: &str,
        after: i64,
        opts: FollowOptions,
    ) -> impl Stream<Item = Result<FeedEvent, Error>> + Send + 'static {
        let refused = filestore_s3_actors::validate::feed_cursor(after).err();
        let state = FeedState {
            exec: self.clone(),
            mount: mount.to_owned(),
            cursor: after,
            buffer: VecDeque::new(),
            wake: None,
            opts,
        };
        futures::stream::unfold((refused, Some(state)), |(refused, state)| async move {
            if let Some(e) = refused {
                return Some((Err(e), (None, None)));
            }
            let mut st = state?;
            loop {
                if let Some(e) = st.buffer.pop_front() {
                    st.cursor = e.cursor;
                    return Some((Ok(e), (None, Some(st))));
                }
                match st.fetch().await {
                    Ok(true) => continue,
                    Ok(false) => st.wait().await,
                    Err(e) => return Some((Err(e), (None, None))),
                }
            }
        })
    }
}

impl FeedState {
    /// Reads the next batch after the cursor; `false` when there is nothing new.
    async fn fetch(&mut self) -> Result<bool, Error> {
        let inner = self.exec.inner.clone();
        if !inner.registry.states().contains_key(&self.mount) {
            return Err(Error::UnknownMount {
                mount: self.mount.clone(),
            });
        }
        let (mount, after) = (self.mount.clone(), self.cursor);
        let (rows, pruned_through) = on_arbiter(&inner.arbiter.clone(), async move {
            inner
                .services
                .meta
                .events_after(&mount, after, FEED_BATCH)
                .await
        })
        .await??;
        // Events up to the horizon were pruned (outbox retention): following from before it
        // would skip them silently.
        if after < pruned_through {
            return Err(Error::FeedExpired {
                mount: self.mount.clone(),
                cursor: after,
                pruned_through,
            });
        }
        let found = !rows.is_empty();
        self.buffer.extend(rows.into_iter().map(|r| FeedEvent {
            cursor: r.id,
            event: r.event,
        }));
        Ok(found)
    }

    /// Waits for a Redis wake-up on the mount's channel or the poll interval, whichever first.
    async fn wait(&mut self) {
        if self.wake.is_none() {
            let config = self.exec.config();
            let channel = RedisKeys::new(&config.redis_prefix).channel(&self.mount);
            self.wake = subscribe(config.redis_url.clone(), channel).await;
        }
        let poll = tokio::time::sleep(self.opts.poll_interval);
        match self.wake.as_mut() {
            Some(w) => {
                tokio::select! {
                    got = w.next() => if got.is_none() { self.wake = None },
                    _ = poll => {}
                }
            }
            None => poll.await,
        }
    }
}

/// A stream that yields on every message of `channel`; `None` when Redis cannot be reached.
async fn subscribe(
    url: String,
    channel: String,
) -> Option<futures::stream::BoxStream<'static, ()>> {
    {
        let client = crate::tls::redis_client(&url).ok()?;
        let connect = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub());
        let mut pubsub = match connect.await {
            Ok(Ok(p)) => p,
            _ => {
                log::debug!("change feed on {channel}: Redis unavailable; polling");
                return None;
            }
        };
        pubsub.subscribe(&channel).await.ok()?;
        Some(pubsub.into_on_message().map(|_| ()).boxed())
    }
}
