//! The store layer: every S3 request of a mount goes through its [`MountStore`], which retries
//! what may succeed later (backoff, the mount's retry budget, throttling), names the request by
//! [`S3Op`] and reports, with a request that failed, what it may have done to the bucket
//! ([`Outcome`], decided in [`crate::store_error`]).
//!
//! A call to another mount's store (the source of a copy or move) goes through that mount's
//! `MountStore`, so it charges that mount's retry budget and counters and waits out that mount's
//! verification window.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::model::{ObjectMeta, RawListing};
use crate::mount::MountSpec;
use crate::ports::{ByteRange, CopyObjectInput, ObjectBody, ObjectStore, PutObjectInput};
use crate::retry::{MountCounters, RetryPolicy};
pub use crate::store_error::{Outcome, S3Op};
use crate::store_error::{StoreError, StoreErrorKind};

/// Finds the running mounts of an executor (for a copy / move whose source is on another mount,
/// and its recovery).
pub trait MountDirectory: Send + Sync + 'static {
    /// The mount's store layer, if this executor serves the mount.
    fn mount(&self, name: &str) -> Option<MountStore>;
}

/// Whether this process may start S3 requests that change the mount's bucket: fencing reaches S3.
/// The mount's supervisor sets it from its lease: held until the lease's expiry as this process
/// measures it (from the moment it sent the request that took or renewed the lease, on the
/// monotonic clock, which runs on while a process is paused) less a safety margin; not held
/// before the lease is taken and after it is lost or given up. A store layer no supervisor
/// fences (a test's) is unfenced.
#[derive(Debug, Default)]
pub struct LeaseClock(std::sync::Mutex<LeaseWindow>);

#[derive(Debug, Default, Clone, Copy)]
enum LeaseWindow {
    #[default]
    Unfenced,
    NotHeld,
    HeldUntil(std::time::Instant),
}

impl LeaseClock {
    /// Mutations may start until `until` (`None`: not at all).
    pub fn hold_until(&self, until: Option<std::time::Instant>) {
        *self.0.lock().expect("lease clock") = match until {
            Some(t) => LeaseWindow::HeldUntil(t),
            None => LeaseWindow::NotHeld,
        };
    }

    /// `None` when a mutation may start now; otherwise why not.
    fn refusal(&self) -> Option<String> {
        match *self.0.lock().expect("lease clock") {
            LeaseWindow::Unfenced => None,
            LeaseWindow::HeldUntil(t) if std::time::Instant::now() < t => None,
            LeaseWindow::HeldUntil(_) => Some(
                "the mount's lease is not known to be held for long enough (not renewed in time)"
                    .into(),
            ),
            LeaseWindow::NotHeld => Some("this executor does not hold the mount's lease".into()),
        }
    }
}

/// One mount's store layer: its spec, its object store, its retry policy and counters. Cheap to
/// clone; every clone charges the same budget and shares the lease clock.
#[derive(Clone)]
pub struct MountStore {
    spec: Arc<MountSpec>,
    store: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
    counters: Arc<MountCounters>,
    lease: Arc<LeaseClock>,
}

impl std::fmt::Debug for MountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountStore")
            .field("mount", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl MountStore {
    /// The store layer of `spec`'s mount over `store`, with counters of its own.
    pub fn new(spec: Arc<MountSpec>, store: Arc<dyn ObjectStore>, retry: RetryPolicy) -> Self {
        MountStore {
            spec,
            store,
            retry,
            counters: Arc::default(),
            lease: Arc::default(),
        }
    }

    /// The clock that says whether this process may change the bucket now (set by the mount's
    /// supervisor from its lease).
    pub fn lease_clock(&self) -> &Arc<LeaseClock> {
        &self.lease
    }

    /// Refuses a request that changes the bucket (a PUT, a Complete, a copy, a DELETE) when this
    /// process is not known to hold the mount's lease for long enough: a paused or cut-off owner
    /// starts no S3 write after its lease may have passed to another host.
    fn fence(&self, op: S3Op, key: &str) -> Result<(), Error> {
        if !op.changes_objects() {
            return Ok(());
        }
        match self.lease.refusal() {
            None => Ok(()),
            Some(why) => Err(Error::LeaseLost(crate::ports::MetaError {
                retryable: false,
                fenced: true,
                message: format!("mount {}: S3 {op} of '{key}' not sent: {why}", self.mount()),
                cause: None,
            })),
        }
    }

    /// The mount.
    pub fn spec(&self) -> &Arc<MountSpec> {
        &self.spec
    }

    /// The mount's name.
    pub fn mount(&self) -> &str {
        &self.spec.name
    }

    /// The object store itself, for a request that must not be retried (a health probe) or that
    /// a batcher sends on the layer's behalf.
    pub fn raw(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The mount's counters.
    pub fn counters(&self) -> &Arc<MountCounters> {
        &self.counters
    }

    /// One request under the retry policy: `attempt` is called once per attempt. Retries are
    /// logged and counted (per mount and in `filestore_s3_retries_total`); the final error
    /// names the request, the key and what the request may have done ([`Outcome`]).
    pub async fn call<T, F, Fut>(&self, op: S3Op, key: &str, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.fence(op, key)?;
        let mount = self.mount();
        let counters = &self.counters;
        // Maybe applied if any attempt may have been (sticky over the attempts).
        let maybe_applied = std::sync::atomic::AtomicBool::new(false);
        // Set when an attempt was not sent because the lease may be gone (checked as each attempt
        // starts, after the backoff's sleep, which a stopped process may have overslept).
        let fenced: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        let once = || {
            let held = self.fence(op, key);
            let call = held.is_ok().then(&mut attempt);
            let (maybe_applied, fenced) = (&maybe_applied, &fenced);
            async move {
                let Some(call) = call else {
                    let e = held.expect_err("not sent only when fenced");
                    let message = e.to_string();
                    *fenced.lock().expect("fence slot") = Some(e);
                    return Err(StoreError::new(StoreErrorKind::Config, message));
                };
                let r = call.await;
                match &r {
                    Ok(_) => counters.call_succeeded(),
                    Err(e) => {
                        if Outcome::of(op, e) == Outcome::MaybeApplied {
                            maybe_applied.store(true, Ordering::Relaxed);
                        }
                    }
                }
                r
            }
        };
        self.retry
            .run_scaled(
                once,
                // Attempts and time are checked first: the budget is spent only on a retry that
                // will happen.
                |e: &StoreError| e.is_retryable() && self.budget_allows(e),
                backoff_scale,
                |e, delay| {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("filestore_s3_retries_total", "mount" => mount.to_owned(), "op" => op.as_str())
                        .increment(1);
                    log::warn!("mount {mount}: S3 {op} of '{key}' failed ({e}); retry in {delay:?}");
                },
            )
            .await
            .map_err(|source| {
                if let Some(e) = fenced.lock().expect("fence slot").take() {
                    return e;
                }
                Error::Storage {
                op,
                key: key.to_owned(),
                source,
                outcome: if maybe_applied.load(Ordering::Relaxed) {
                    Outcome::MaybeApplied
                } else {
                    Outcome::NotApplied
                },
                }
            })
    }

    /// Whether the mount's retry budget pays for retrying `e`; logs and counts a refusal.
    fn budget_allows(&self, e: &StoreError) -> bool {
        if self.counters.may_retry(&self.retry, e) {
            return true;
        }
        let mount = self.mount();
        metrics::counter!("filestore_s3_retries_refused_total", "mount" => mount.to_owned())
            .increment(1);
        log::warn!("mount {mount}: retry budget spent; failing fast ({e})");
        false
    }

    /// PutObject.
    pub async fn put(&self, input: &PutObjectInput) -> Result<ObjectMeta, Error> {
        self.call(S3Op::PutObject, &input.key, || {
            self.store.put_object(input.clone())
        })
        .await
    }

    /// HeadObject; `None` when there is no object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, Error> {
        self.call(S3Op::HeadObject, key, || self.store.head_object(key))
            .await
    }

    /// DeleteObject (an object already gone is deleted).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.call(S3Op::DeleteObject, key, || self.store.delete_object(key))
            .await
    }

    /// DeleteObject only while the key holds `etag` (`If-Match`).
    pub async fn delete_if_match(&self, key: &str, etag: &str) -> Result<(), Error> {
        self.call(S3Op::DeleteObject, key, || {
            self.store.delete_object_if_match(key, etag)
        })
        .await
    }

    /// The open multipart uploads at exactly `key`.
    pub async fn open_uploads(&self, key: &str) -> Result<Vec<String>, Error> {
        self.call(S3Op::ListMultipartUploads, key, || {
            self.store.open_uploads(key)
        })
        .await
    }

    /// AbortMultipartUpload (an upload already gone is aborted).
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), Error> {
        self.call(S3Op::AbortMultipartUpload, key, || {
            self.store.abort_multipart(key, upload_id)
        })
        .await
    }

    /// CopyObject.
    pub async fn copy(&self, input: &CopyObjectInput) -> Result<ObjectMeta, Error> {
        self.call(S3Op::CopyObject, &input.key, || {
            self.counters.copy_requests.fetch_add(1, Ordering::Relaxed);
            self.store.copy_object(input.clone())
        })
        .await
    }

    /// GetObject (a range of it, only if its ETag is `if_match`).
    pub async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
        if_match: Option<&str>,
    ) -> Result<ObjectBody, Error> {
        self.call(S3Op::GetObject, key, || {
            self.store.get_object(key, range, if_match)
        })
        .await
    }

    /// One page of ListObjectsV2.
    pub async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> Result<RawListing, Error> {
        self.call(S3Op::ListObjects, prefix, || {
            self.store.list_objects(prefix, delimiter, token, max_keys)
        })
        .await
    }

    /// HEADs `key` until `accept` holds or this mount's verification window ends; the last
    /// reason it did not hold is [`Error::Unverified`]'s. When the window ends on a HEAD that
    /// failed (its retries spent: a timeout, 5xx), that retryable error is returned instead:
    /// the store could not be looked at, which says nothing about what it holds — a row must not
    /// be failed for it however long the outage lasts (recovery leaves it pending).
    pub async fn verify<T>(
        &self,
        key: &str,
        accept: impl Fn(&Option<ObjectMeta>) -> Result<T, String>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + self.spec.verify_window;
        let mut delay = Duration::from_millis(50);
        loop {
            let reason = match self.head(key).await {
                Ok(meta) => match accept(&meta) {
                    Ok(v) => return Ok(v),
                    Err(reason) => reason,
                },
                Err(e) if e.is_retryable() => {
                    if Instant::now() + delay > deadline {
                        return Err(e);
                    }
                    e.to_string()
                }
                Err(e) => {
                    return Err(Error::Unverified {
                        key: key.to_owned(),
                        reason: e.to_string(),
                    })
                }
            };
            if Instant::now() + delay > deadline {
                return Err(Error::Unverified {
                    key: key.to_owned(),
                    reason,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

/// Delay factor of a failed S3 call: a store that says it is overloaded (`SlowDown`, 429, 503)
/// gets four times the usual backoff.
pub fn backoff_scale(e: &StoreError) -> u32 {
    if e.kind == StoreErrorKind::Throttled {
        4
    } else {
        1
    }
}
