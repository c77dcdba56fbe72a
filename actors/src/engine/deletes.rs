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
//! single DELETEs from then on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::ports::{ObjectStore, StoreError, StoreErrorKind};
use crate::retry::MountCounters;

/// The most keys S3 takes in one DeleteObjects request.
pub const MAX_KEYS_PER_REQUEST: usize = 1000;

/// Delete requests of one mount on their way at once.
pub const MAX_REQUESTS_OUT: usize = 4;

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
    /// The store refused DeleteObjects: single DELETEs only.
    single_only: bool,
}

/// One per mount supervisor; cheap to clone.
#[derive(Clone)]
pub(crate) struct DeleteBatcher {
    queue: Arc<Mutex<Queue>>,
    counters: Arc<MountCounters>,
    mount: String,
}

impl DeleteBatcher {
    pub fn new(mount: &str, counters: Arc<MountCounters>) -> Self {
        DeleteBatcher {
            queue: Arc::default(),
            counters,
            mount: mount.to_owned(),
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
                (store, batch, q.single_only)
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
                        "mount {}: the store refused a multi-object delete ({e}); deleting one key per request from now on",
                        self.mount
                    );
                    self.queue.lock().expect("delete queue lock").single_only = true;
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
}
