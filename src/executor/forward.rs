//! Forwarding: a mutating call for a mount another live host of the fleet owns is sent to that
//! host's operations API and its answer returned, errors included (`docs/hosts.md`).

use std::time::Instant;

use filestore_s3_actors::Error;

use super::S3Executor;
use crate::api::client::ServeClient;

/// Hops value of a handle that never forwards.
pub(super) const NO_FORWARDING: u8 = u8::MAX;

impl S3Executor {
    /// This handle, for a call that was forwarded `hops` times already: it forwards again only
    /// while fewer than the fleet's `max_hops`, else runs the call here (refused with the
    /// retryable `NotOwner` where this executor does not own the mount).
    pub fn with_hops(&self, hops: u8) -> S3Executor {
        S3Executor {
            inner: self.inner.clone(),
            hops,
        }
    }

    /// This handle, never forwarding: calls run here or are refused with `NotOwner`.
    pub fn local(&self) -> S3Executor {
        self.with_hops(NO_FORWARDING)
    }

    /// Where calls for `mount` go, as this host last saw the fleet: the owner's id and the
    /// address of its operations API, when another live host of the fleet holds the mount's
    /// lease and takes forwarded calls; `None` when this executor owns it, nobody does, or the
    /// executor is not in a fleet.
    pub fn owner_of(&self, mount: &str) -> Option<(String, String)> {
        self.inner.fleet.as_ref()?.owner_of(mount)
    }

    /// The client to forward a call on `mount` to, when it goes elsewhere: not while this
    /// executor holds the lease (or is taking it); to the holder the last heartbeat saw; else to
    /// the holder the lease table names now (the heartbeat's view is up to a quarter of a lease
    /// duration old), when that is another live host of the fleet.
    pub(super) async fn forward_target(&self, mount: &str) -> Option<ServeClient> {
        let fleet = self.inner.fleet.as_ref()?;
        let s = fleet.settings();
        if self.hops >= s.max_hops || fleet.held_here(mount) {
            return None;
        }
        let (owner, address) = match fleet.owner_of(mount) {
            Some(found) => found,
            None => {
                let holder = self.lease_holder(mount).await.ok().flatten()?;
                if holder.expires_at <= chrono::Utc::now() {
                    return None;
                }
                let address = fleet.address_of(&holder.owner)?;
                (holder.owner, address)
            }
        };
        let client = fleet.client_for(&address)?;
        Some(
            client
                .with_hops(self.hops.saturating_add(1))
                .for_owner(owner),
        )
    }

    /// Runs a forwarded call, counting it and its latency.
    pub(super) async fn forwarded<T>(
        &self,
        op: &'static str,
        mount: &str,
        client: &ServeClient,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let r = call.await;
        let moved = match &r {
            Err(Error::NotOwner { mount: m, .. }) => m == mount,
            Err(Error::Forwarded { kind, .. }) => kind == "misdirected",
            _ => false,
        };
        if let (true, Some(f)) = (moved, &self.inner.fleet) {
            // The next call asks the lease table instead of the view that sent this one astray.
            f.forget_lease(mount);
        }
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) if e.is_retryable() => "retryable",
            Err(_) => "error",
        };
        log::debug!(
            "forwarded {op} to {} ({outcome}, {:.3} s)",
            client.base(),
            started.elapsed().as_secs_f64()
        );
        metrics::counter!("filestore_s3_forwarded_calls_total", "op" => op, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("filestore_s3_forward_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        if let Some(f) = &self.inner.fleet {
            f.forwarded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl S3Executor {
    /// A forwarded call that can be sent again (its body can be made again): sent again with
    /// the same key while it was not delivered or its answer was lost, twice at most, so that a
    /// lost answer costs no caller a second operation (the owner answers the repeat with the
    /// recorded outcome).
    pub(super) async fn forwarded_again<T, Fut>(
        &self,
        op: &'static str,
        mount: &str,
        client: &ServeClient,
        mut call: impl FnMut() -> Fut,
    ) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut again = 0u32;
        loop {
            let r = self.forwarded(op, mount, client, call()).await;
            let unknown = matches!(&r, Err(Error::Forwarded { kind, .. })
                if kind == "answer_lost" || kind == "not_delivered");
            if !unknown || again >= 2 {
                return r;
            }
            again += 1;
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(again))).await;
        }
    }
}

/// The key a forwarded call carries: the caller's, or a new one, so that the owner records it
/// and a call whose answer was lost is not run twice when sent again with it.
pub(super) fn forwarded_key(given: Option<String>) -> Option<String> {
    given.or_else(|| Some(format!("fwd-{}", uuid::Uuid::new_v4().simple())))
}
