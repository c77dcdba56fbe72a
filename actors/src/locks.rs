//! Per-path ordering: operations on one path run one at a time in arrival order; operations on
//! different paths run concurrently. A copy or move holds two paths (possibly on two mounts) and
//! takes them in one global order, (mount, path), so two transfers in opposite directions cannot
//! wait on each other. One [`PathLocks`] is shared by every supervisor of an executor.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// A mount and a Filestore path.
pub type PathKey = (String, String);

type Waiters = VecDeque<oneshot::Sender<()>>;

/// FIFO locks on (mount, path), shared by every supervisor of one executor.
#[derive(Clone, Default)]
pub struct PathLocks {
    // A key is present while it is held; its queue holds the waiters in arrival order.
    held: Arc<Mutex<HashMap<PathKey, Waiters>>>,
}

impl std::fmt::Debug for PathLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.held.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("PathLocks").field("held", &n).finish()
    }
}

/// Holds one path until dropped.
#[derive(Debug)]
pub struct PathGuard {
    locks: PathLocks,
    key: Option<PathKey>,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.locks.release(key);
        }
    }
}

/// Waits for one path. Dropping it before it resolved gives up its place (or its lock, when the
/// lock was handed over at that very moment).
pub struct PathWait {
    locks: PathLocks,
    key: Option<PathKey>,
    rx: Option<oneshot::Receiver<()>>,
}

impl Future for PathWait {
    type Output = PathGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PathGuard> {
        if let Some(rx) = self.rx.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Err cannot happen (senders are only dropped after a failed send or by us), but
                // either way the lock is ours now.
                Poll::Ready(_) => {
                    self.rx = None;
                }
            }
        }
        Poll::Ready(PathGuard {
            locks: self.locks.clone(),
            key: self.key.take(),
        })
    }
}

impl Drop for PathWait {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            // Resolved: the guard holds the path.
            return;
        };
        match self.rx.take() {
            // The path was free when the place was taken: it is ours to pass on.
            None => self.locks.release(key),
            Some(mut rx) => {
                rx.close();
                if rx.try_recv().is_ok() {
                    // The lock was handed to us as we gave up: pass it on.
                    self.locks.release(key);
                }
            }
        }
    }
}

impl PathLocks {
    /// Takes a place in the path's queue now (so arrival order is kept) and resolves when the
    /// path is free.
    pub fn acquire(&self, mount: &str, path: &str) -> PathWait {
        let key = (mount.to_owned(), path.to_owned());
        let mut held = self.held.lock().expect("path locks");
        self.enqueue(&mut held, key)
    }

    fn enqueue(&self, held: &mut HashMap<PathKey, Waiters>, key: PathKey) -> PathWait {
        let rx = match held.get_mut(&key) {
            None => {
                held.insert(key.clone(), VecDeque::new());
                None
            }
            Some(q) => {
                let (tx, rx) = oneshot::channel();
                q.push_back(tx);
                Some(rx)
            }
        };
        PathWait {
            locks: self.clone(),
            key: Some(key),
            rx,
        }
    }

    /// Takes the path now if nothing holds or waits for it, without waiting (so it may be taken
    /// out of the global order: it never waits while holding other paths).
    pub fn try_acquire(&self, mount: &str, path: &str) -> Option<PathGuard> {
        let key = (mount.to_owned(), path.to_owned());
        let mut held = self.held.lock().expect("path locks");
        if held.contains_key(&key) {
            return None;
        }
        held.insert(key.clone(), VecDeque::new());
        Some(PathGuard {
            locks: self.clone(),
            key: Some(key),
        })
    }

    /// Takes every path of `keys`, its places in all their queues taken now, at once (so an
    /// operation on any of its paths that arrives later runs after it), then waits for them in
    /// (mount, path) order. No two callers can wait on each other: every queue is in arrival
    /// order, so whoever holds a path another waits for arrived first and is ahead in each queue
    /// they share.
    pub fn acquire_all(&self, mut keys: Vec<PathKey>) -> impl Future<Output = Vec<PathGuard>> {
        keys.sort();
        keys.dedup();
        assert!(!keys.is_empty(), "at least one path");
        let waits: Vec<PathWait> = {
            let mut held = self.held.lock().expect("path locks");
            keys.into_iter()
                .map(|k| self.enqueue(&mut held, k))
                .collect()
        };
        async move {
            let mut guards = Vec::with_capacity(waits.len());
            for w in waits {
                guards.push(w.await);
            }
            guards
        }
    }

    #[cfg(test)]
    /// Whether anything holds or waits for the path.
    pub fn is_busy(&self, mount: &str, path: &str) -> bool {
        self.held
            .lock()
            .expect("path locks")
            .contains_key(&(mount.to_owned(), path.to_owned()))
    }

    fn release(&self, key: PathKey) {
        let mut held = self.held.lock().expect("path locks");
        let Some(queue) = held.get_mut(&key) else {
            return;
        };
        while let Some(next) = queue.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        held.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_at_a_time_in_arrival_order() {
        let locks = PathLocks::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = locks.acquire("m", "a").await;
        let mut tasks = Vec::new();
        for i in 0..3 {
            let wait = locks.acquire("m", "a");
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _g = wait.await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
        }
        // Another path is independent.
        let _b = locks.acquire("m", "b").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(order.lock().unwrap().is_empty());
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert!(!locks.is_busy("m", "a"));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_the_lock_on() {
        let locks = PathLocks::default();
        let g = locks.acquire("m", "a").await;
        let quitter = locks.acquire("m", "a");
        let next = locks.acquire("m", "a");
        drop(quitter);
        drop(g);
        let _n = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the lock reached the next waiter");
    }

    #[tokio::test]
    async fn every_path_of_a_transfer_keeps_its_place_from_arrival() {
        let locks = PathLocks::default();
        let x = ("m".to_string(), "x".to_string());
        let y = ("m".to_string(), "y".to_string());
        let holder = locks.acquire("m", "x").await;
        // A transfer on x and y arrives while x is held; then a put on y.
        let transfer = locks.acquire_all(vec![x, y]);
        let put = locks.acquire("m", "y");
        let order = Arc::new(Mutex::new(Vec::new()));
        let (o1, o2) = (order.clone(), order.clone());
        let t = tokio::spawn(async move {
            let _g = transfer.await;
            o1.lock().unwrap().push("transfer");
        });
        let p = tokio::spawn(async move {
            let _g = put.await;
            o2.lock().unwrap().push("put");
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "the put waits behind the transfer"
        );
        drop(holder);
        t.await.unwrap();
        p.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["transfer", "put"]);
    }

    #[tokio::test]
    async fn a_place_given_up_before_it_was_waited_for_passes_the_path_on() {
        let locks = PathLocks::default();
        let places = locks.acquire_all(vec![("m".into(), "a".into()), ("m".into(), "b".into())]);
        drop(places);
        assert!(!locks.is_busy("m", "a") && !locks.is_busy("m", "b"));
    }

    #[tokio::test]
    async fn try_acquire_takes_only_a_free_path() {
        let locks = PathLocks::default();
        let g = locks.try_acquire("m", "a").expect("free");
        assert!(locks.try_acquire("m", "a").is_none(), "held");
        let waiting = locks.acquire("m", "a");
        drop(g);
        let g = waiting.await;
        assert!(
            locks.try_acquire("m", "a").is_none(),
            "passed on to the waiter"
        );
        drop(g);
        assert!(locks.try_acquire("m", "a").is_some());
    }

    #[tokio::test]
    async fn opposite_transfers_do_not_deadlock() {
        let locks = PathLocks::default();
        let k1 = ("m1".to_string(), "x".to_string());
        let k2 = ("m2".to_string(), "y".to_string());
        let a = locks.acquire_all(vec![k1.clone(), k2.clone()]);
        let b = locks.acquire_all(vec![k2, k1]);
        let ta = tokio::spawn(async move {
            let _g = a.await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        });
        let tb = tokio::spawn(async move {
            let _g = b.await;
        });
        tokio::time::timeout(Duration::from_secs(2), async {
            ta.await.unwrap();
            tb.await.unwrap();
        })
        .await
        .expect("no deadlock");
    }
}
