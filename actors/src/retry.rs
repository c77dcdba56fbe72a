//! Retry with exponential backoff and jitter, bounded by attempts *and* elapsed time, and the
//! per-mount counters and retry budget. S3 requests use it through [`crate::store::MountStore`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::ports::StoreError;

/// Counters of one mount (kept across supervisor restarts).
#[derive(Debug, Default)]
pub struct MountCounters {
    /// Bytes sent in UploadPart requests, retries included.
    pub bytes_sent: AtomicU64,
    /// Parts accepted by the store.
    pub parts_uploaded: AtomicU64,
    /// Parts skipped because a previous run had uploaded them.
    pub parts_resumed: AtomicU64,
    /// Retried S3 / Postgres calls.
    pub retries: AtomicU64,
    /// CopyObject and UploadPartCopy requests sent (retries included).
    pub copy_requests: AtomicU64,
    /// DeleteObjects requests sent (multi-object deletes of `delete_many`).
    pub delete_batches: AtomicU64,
    /// Keys sent in DeleteObjects requests.
    pub deletes_batched: AtomicU64,
    /// Retry tokens spent and not yet earned back (see [`MountCounters::may_retry`]).
    pub retry_tokens_spent: AtomicU64,
    /// Failures returned without a retry because the retry budget was spent.
    pub retries_refused: AtomicU64,
}

/// Tokens a retry of a failed call costs.
pub const RETRY_COST: u64 = 5;
/// Tokens a retry after a timeout costs (a timeout says more about the store's state).
pub const TIMEOUT_RETRY_COST: u64 = 10;

impl MountCounters {
    /// The mount's retry budget, a token bucket as in the AWS SDKs' standard retry mode: a retry
    /// takes [`RETRY_COST`] tokens ([`TIMEOUT_RETRY_COST`] after a timeout) out of
    /// `policy.retry_budget`, and every call that succeeds puts one back. With the bucket empty a
    /// failure is returned at once — still retryable for the caller — so a store that is down or
    /// throttling gets a bounded number of requests from this mount, not a storm.
    pub fn may_retry(&self, policy: &RetryPolicy, e: &StoreError) -> bool {
        let cost = if e.kind == crate::ports::StoreErrorKind::Timeout {
            TIMEOUT_RETRY_COST
        } else {
            RETRY_COST
        };
        let took = self
            .retry_tokens_spent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
                (spent + cost <= policy.retry_budget).then_some(spent + cost)
            })
            .is_ok();
        if !took {
            self.retries_refused.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    /// A call succeeded: one token back into the budget.
    pub fn call_succeeded(&self) {
        let _ =
            self.retry_tokens_spent
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
                    spent.checked_sub(1)
                });
    }
}

/// How often and how long to retry a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// No new attempt starts after this much time since the first.
    pub max_elapsed: Duration,
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Capacity of each mount's retry budget, in tokens (a retry costs 5, after a timeout 10;
    /// a success earns 1 back). 500, as in the AWS SDKs: 100 retries in a row, then fail fast.
    pub retry_budget: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(30),
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            retry_budget: 500,
        }
    }
}

impl RetryPolicy {
    /// Delays between attempts, with full jitter.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
    }

    #[cfg(test)]
    /// Runs `op` until it succeeds, fails with a non-retryable error, or the budget is spent.
    /// `on_retry` sees every error that is retried (for metrics and logs).
    pub async fn run<T, E, F, Fut>(
        &self,
        op: F,
        retryable: impl Fn(&E) -> bool,
        on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_scaled(op, retryable, |_| 1, on_retry).await
    }

    /// As [`RetryPolicy::run`], with each delay multiplied by `scale(error)` (capped at
    /// `max_delay`): throttling answers back off from a larger base than other failures.
    pub async fn run_scaled<T, E, F, Fut>(
        &self,
        mut op: F,
        retryable: impl Fn(&E) -> bool,
        scale: impl Fn(&E) -> u32,
        mut on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let start = Instant::now();
        let mut delays = self.delays();
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // Attempts and time first: `retryable` may spend from a budget.
                    let Some(delay) = delays.next() else {
                        return Err(e);
                    };
                    let delay = delay.saturating_mul(scale(&e).max(1)).min(self.max_delay);
                    if start.elapsed() + delay > self.max_elapsed || !retryable(&e) {
                        return Err(e);
                    }
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed: Duration::from_secs(5),
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            retry_budget: 500,
        }
    }

    #[tokio::test]
    async fn retries_retryable_until_success() {
        let calls = Cell::new(0);
        let retries = Cell::new(0);
        let r: Result<u32, &str> = fast(5)
            .run(
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 3 {
                            Err("busy")
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_| true,
                |_, _| retries.set(retries.get() + 1),
            )
            .await;
        assert_eq!(r, Ok(3));
        assert_eq!(retries.get(), 2);
    }

    #[tokio::test]
    async fn stops_at_attempt_budget() {
        let calls = Cell::new(0);
        let r: Result<(), &str> = fast(4)
            .run(
                || {
                    calls.set(calls.get() + 1);
                    async { Err("busy") }
                },
                |_| true,
                |_, _| {},
            )
            .await;
        assert_eq!(r, Err("busy"));
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let calls = Cell::new(0);
        let r: Result<(), &str> = fast(4)
            .run(
                || {
                    calls.set(calls.get() + 1);
                    async { Err("denied") }
                },
                |e| *e != "denied",
                |_, _| {},
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn stops_at_elapsed_budget() {
        let policy = RetryPolicy {
            max_attempts: 1000,
            max_elapsed: Duration::from_millis(50),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
            retry_budget: 500,
        };
        let calls = Cell::new(0);
        let _: Result<(), &str> = policy
            .run(
                || {
                    calls.set(calls.get() + 1);
                    async { Err("busy") }
                },
                |_| true,
                |_, _| {},
            )
            .await;
        assert!(calls.get() < 10, "{} attempts", calls.get());
    }
}
