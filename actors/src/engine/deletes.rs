//! Multi-object deletes. The DELETEs of a mount's batched delete operations (those of
//! `delete_many`) go out at once while fewer than [`MAX_REQUESTS_OUT`] requests are on their way;
//! those that arrive while that many are out wait and go together in the next request, up to
//! 1,000 keys each. Nothing waits for a timer, so a lone delete costs one request as before and
//! many at once cost one request per 1,000, and a store far away (each request a network round
//! trip) still has several requests to work on rather than one. Every operation still verifies
//! its own object gone (HEAD) and commits on its own; a key the store refused gets its own error,
//! which the operation's retry policy handles like the error of a single DELETE.
//!
//! A store that refuses DeleteObjects as such (not implemented, or a request it rejects) is sent
//! single DELETEs from then on — for [`SINGLES_FOR`], or until the mount's store is replaced (its
//! row changed), whichever comes first; then a multi-object delete is tried again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::ports::{ObjectStore, StoreError, StoreErrorKind};
use crate::retry::MountCounters;

/// The most keys S3 takes in one DeleteObjects request.
pub const MAX_KEYS_PER_REQUEST: usize = 1000;

/// Delete requests of one mount on their way at once.
pub const MAX_REQUESTS_OUT: usize = 4;

/// How long a store that refused DeleteObjects is sent single DELETEs before a multi-object
/// delete is tried again (a proxy or a bucket policy changed, the store was upgraded).
pub const SINGLES_FOR: Duration = Duration::from_secs(600);

struct Waiting {
    store: Arc<dyn ObjectStore>,
    key: String,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// Tasks sending the queue's batches, each one request at a time.
    senders: usize,
    /// The store that refused DeleteObjects, and when: it is sent single DELETEs for a while.
    refused: Option<(Weak<dyn ObjectStore>, Instant)>,
}

impl Queue {
    /// Whether `store` gets single DELETEs only: it refused DeleteObjects less than `window` ago.
    fn singles_only(&self, store: &Arc<dyn ObjectStore>, window: Duration) -> bool {
        self.refused.as_ref().is_some_and(|(by, at)| {
            // The weak reference keeps the allocation, so its address is not reused by a new store.
            std::ptr::addr_eq(by.as_ptr(), Arc::as_ptr(store)) && at.elapsed() < window
        })
    }
}

/// One per mount supervisor; cheap to clone.
#[derive(Clone)]
pub(crate) struct DeleteBatcher {
    queue: Arc<Mutex<Queue>>,
    counters: Arc<MountCounters>,
    mount: String,
    singles_for: Duration,
}

impl DeleteBatcher {
    pub fn new(mount: &str, counters: Arc<MountCounters>) -> Self {
        DeleteBatcher {
            queue: Arc::default(),
            counters,
            mount: mount.to_owned(),
            singles_for: SINGLES_FOR,
        }
    }

    /// Deletes `key` from `store`, in a DeleteObjects request with the other keys waiting.
    pub async fn delete(&self, store: &Arc<dyn ObjectStore>, key: &str) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().expect("delete queue lock");
            q.waiting.push_back(Waiting {
                store: store.clone(),
                key: key.to_owned(),
                answer,
            });
            let start = q.senders < MAX_REQUESTS_OUT;
            if start {
                q.senders += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Transient,
                "the multi-object delete carrying this key was dropped (shutting down?)",
            ))
        })
    }

    /// Sends batches until the queue is empty.
    async fn drain(self) {
        loop {
            let (store, batch, single_only) = {
                let mut q = self.queue.lock().expect("delete queue lock");
                let Some(first) = q.waiting.front() else {
                    q.senders -= 1;
                    return;
                };
                let store = first.store.clone();
                let mut batch = Vec::new();
                let mut rest = VecDeque::new();
                // Keys of one store only (a mount's store is replaced when its row changes).
                while let Some(w) = q.waiting.pop_front() {
                    let same = std::ptr::addr_eq(Arc::as_ptr(&w.store), Arc::as_ptr(&store));
                    if same && batch.len() < MAX_KEYS_PER_REQUEST {
                        batch.push(w);
                    } else {
                        rest.push_back(w);
                    }
                }
                q.waiting = rest;
                let single_only = q.singles_only(&store, self.singles_for);
                (store, batch, single_only)
            };
            if batch.len() == 1 || single_only {
                self.one_by_one(&store, batch).await;
                continue;
            }
            let keys: Vec<String> = batch.iter().map(|w| w.key.clone()).collect();
            match store.delete_objects(&keys).await {
                Ok(answers) if answers.len() == batch.len() => {
                    self.counters.delete_batches.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .deletes_batched
                        .fetch_add(keys.len() as u64, Ordering::Relaxed);
                    metrics::histogram!("filestore_s3_delete_batch_keys", "mount" => self.mount.clone())
                        .record(keys.len() as f64);
                    for (w, a) in batch.into_iter().zip(answers) {
                        let _ = w.answer.send(a);
                    }
                }
                Ok(answers) => {
                    let e = StoreError::new(
                        StoreErrorKind::Transient,
                        format!(
                            "the store answered {} of the {} keys of a multi-object delete",
                            answers.len(),
                            batch.len()
                        ),
                    );
                    for w in batch {
                        let _ = w.answer.send(Err(e.clone()));
                    }
                }
                Err(e) if matches!(e.kind, StoreErrorKind::Config | StoreErrorKind::Rejected) => {
                    log::warn!(
                        "mount {}: the store refused a multi-object delete ({e}); deleting one key per request for the next {:?}",
                        self.mount,
                        self.singles_for
                    );
                    self.queue.lock().expect("delete queue lock").refused =
                        Some((Arc::downgrade(&store), Instant::now()));
                    self.one_by_one(&store, batch).await;
                }
                Err(e) => {
                    for w in batch {
                        let _ = w.answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn one_by_one(&self, store: &Arc<dyn ObjectStore>, batch: Vec<Waiting>) {
        let sent = batch.iter().map(|w| store.delete_object(&w.key));
        let answers = futures::future::join_all(sent).await;
        for (w, a) in batch.into_iter().zip(answers) {
            let _ = w.answer.send(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    /// Deletes arriving one after another, each while the earlier ones' requests are still out:
    /// never more than [`MAX_REQUESTS_OUT`] requests at once, and every key sent once.
    #[tokio::test]
    async fn never_more_than_the_bound_out_at_once() {
        let store = Arc::new(MemoryStore::default());
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        let batcher = DeleteBatcher::new("m", Arc::default());
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (b, s) = (batcher.clone(), dyn_store.clone());
            tasks.push(tokio::spawn(
                async move { b.delete(&s, &format!("k{i}")).await },
            ));
            // Lets the delete reach the batcher and a sender start its request.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let batches = store.delete_batches.lock().unwrap().clone();
        let singles = store.single_deletes.load(Ordering::SeqCst) as usize;
        assert_eq!(batches.iter().sum::<usize>() + singles, 40);
        let most = store.max_deletes_out.load(Ordering::SeqCst) as usize;
        assert!(
            (2..=MAX_REQUESTS_OUT).contains(&most),
            "{most} requests out at once ({batches:?} + {singles} single)"
        );
        assert_eq!(batcher.queue.lock().unwrap().senders, 0);
    }

    /// Two deletes sent together, so that they can share a request.
    async fn two_at_once(batcher: &DeleteBatcher, store: &Arc<dyn ObjectStore>, tag: &str) {
        let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
        let (ra, rb) = tokio::join!(batcher.delete(store, &a), batcher.delete(store, &b));
        ra.unwrap();
        rb.unwrap();
    }

    /// A store that refuses DeleteObjects gets single DELETEs — but not forever: a store that
    /// replaces it (the mount's row changed) and the same store once the window has passed are
    /// offered a multi-object delete again.
    #[tokio::test]
    async fn a_refusal_sends_singles_for_a_while_and_for_that_store_only() {
        let refusing = Arc::new(MemoryStore::default());
        refusing.refuse_delete_objects.store(true, Ordering::SeqCst);
        let refusing_dyn: Arc<dyn ObjectStore> = refusing.clone();
        let mut batcher = DeleteBatcher::new("m", Arc::default());

        two_at_once(&batcher, &refusing_dyn, "first").await;
        // The refused request's keys went one by one.
        assert_eq!(refusing.single_deletes.load(Ordering::SeqCst), 2);
        refusing
            .refuse_delete_objects
            .store(false, Ordering::SeqCst);
        two_at_once(&batcher, &refusing_dyn, "second").await;
        assert_eq!(
            refusing.single_deletes.load(Ordering::SeqCst),
            4,
            "singles while refused"
        );
        assert!(refusing.delete_batches.lock().unwrap().is_empty());

        let other = Arc::new(MemoryStore::default());
        let other_dyn: Arc<dyn ObjectStore> = other.clone();
        two_at_once(&batcher, &other_dyn, "third").await;
        assert_eq!(
            *other.delete_batches.lock().unwrap(),
            vec![2],
            "a new store is asked"
        );
        assert_eq!(other.single_deletes.load(Ordering::SeqCst), 0);

        batcher.singles_for = Duration::ZERO;
        two_at_once(&batcher, &refusing_dyn, "fourth").await;
        assert_eq!(
            *refusing.delete_batches.lock().unwrap(),
            vec![2],
            "asked again once the window has passed"
        );
        assert_eq!(refusing.single_deletes.load(Ordering::SeqCst), 4);
    }
}
