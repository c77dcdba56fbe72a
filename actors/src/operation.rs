//! The operation protocol: intent → act → verify → commit. Runs as a future spawned by the
//! supervisor, one at a time per path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use bytes::Bytes;

use crate::committer::CommitterActor;
use crate::error::Error;
use crate::messages::{CommitOperation, FailOperation, RecordIntent};
use crate::model::UploadSource;
use crate::model::{
    CommitRecord, IntentOutcome, JournalEntry, JournalState, NewIntent, NodeChange, NodeMeta,
    ObjectMeta, OpRequest, OpResult,
};
use crate::mount::MountSpec;
use crate::ports::{ChangePublisher, MetaStore, ObjectStore, PutObjectInput, StoreError};
use crate::retry::RetryPolicy;
use crate::upload::{ProgressSink, SourceReader, UploadActor, UploadCounters, UploadJob};
use actix::Actor;
use tokio::sync::oneshot;

/// What an operation future needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct OpContext {
    pub spec: Arc<MountSpec>,
    pub store: Arc<dyn ObjectStore>,
    pub meta: Arc<dyn MetaStore>,
    pub publisher: Arc<dyn ChangePublisher>,
    pub committer: Addr<CommitterActor>,
    pub retry: RetryPolicy,
    pub counters: Arc<UploadCounters>,
}

/// What a mutating operation carries besides its request.
pub(crate) enum Payload {
    None,
    Bytes(Bytes),
    Upload {
        reader: Option<SourceReader>,
        sink: Option<ProgressSink>,
    },
}

fn mailbox_closed(_: actix::MailboxError) -> Error {
    Error::Shutdown
}

impl OpContext {
    async fn record_intent(&self, intent: NewIntent) -> Result<IntentOutcome, Error> {
        Ok(self
            .committer
            .send(RecordIntent(intent))
            .await
            .map_err(mailbox_closed)??)
    }

    async fn commit(&self, record: CommitRecord) -> Result<OpResult, Error> {
        Ok(self
            .committer
            .send(CommitOperation(record))
            .await
            .map_err(mailbox_closed)??)
    }

    async fn fail(&self, journal_id: i64, error: &Error) -> Result<(), Error> {
        let msg = FailOperation {
            journal_id,
            error: error.to_string(),
        };
        Ok(self.committer.send(msg).await.map_err(mailbox_closed)??)
    }

    pub(crate) async fn with_retry<T, F, Fut>(
        &self,
        what: &'static str,
        key: &str,
        op: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        store_call(&self.spec.name, &self.retry, &self.counters, what, key, op).await
    }

    /// HEADs `key` until `accept` holds or the mount's verification window ends.
    pub(crate) async fn verify<T>(
        &self,
        key: &str,
        accept: impl Fn(&Option<ObjectMeta>) -> Result<T, String>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + self.spec.verify_window;
        let mut delay = Duration::from_millis(50);
        loop {
            let seen = self
                .with_retry("HEAD", key, || self.store.head_object(key))
                .await;
            let reason = match seen {
                Ok(meta) => match accept(&meta) {
                    Ok(v) => return Ok(v),
                    Err(reason) => reason,
                },
                Err(e) if e.is_retryable() => e.to_string(),
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

/// One S3 call under the retry policy: retries are logged and counted (per mount and in the
/// `filestore_s3_retries_total` metric), and the final error names the operation and key.
pub(crate) async fn store_call<T, F, Fut>(
    mount: &str,
    retry: &RetryPolicy,
    counters: &UploadCounters,
    what: &'static str,
    key: &str,
    op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    retry
        .run(op, StoreError::is_retryable, |e, d| {
            counters.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("filestore_s3_retries_total", "mount" => mount.to_owned(), "op" => what)
                .increment(1);
            log::warn!("mount {mount}: S3 {what} of '{key}' failed ({e}); retry in {d:?}")
        })
        .await
        .map_err(|source| Error::Storage {
            op: what,
            key: key.to_owned(),
            source,
        })
}

/// Accepts a HEAD result for a put of `size` bytes with SHA-256 `sha256` (hex).
fn put_landed(
    size: u64,
    sha256: &str,
) -> impl Fn(&Option<ObjectMeta>) -> Result<NodeMeta, String> + '_ {
    move |seen| match seen {
        None => Err("object not visible yet".into()),
        Some(m) if m.size != size => Err(format!("size is {} bytes, expected {size}", m.size)),
        Some(m) if m.sha256.as_deref().is_some_and(|s| s != sha256) => Err(format!(
            "SHA-256 is {}, expected {sha256}",
            m.sha256.as_deref().unwrap_or_default()
        )),
        Some(m) => Ok(NodeMeta {
            size: m.size,
            etag: m.etag.clone(),
            sha256: sha256.to_owned(),
            storage_class: m.storage_class.clone(),
            last_modified: m.last_modified,
        }),
    }
}

fn gone(seen: &Option<ObjectMeta>) -> Result<(), String> {
    match seen {
        None => Ok(()),
        Some(m) => Err(format!("object still present ({} bytes)", m.size)),
    }
}

/// Maps an existing journal row for the same key to what the caller gets.
fn replay(mount: &str, fingerprint: &str, entry: JournalEntry) -> Result<OpResult, Error> {
    if entry.fingerprint != fingerprint {
        return Err(Error::IdempotencyConflict {
            mount: mount.to_owned(),
            key: entry.idempotency_key,
        });
    }
    match (entry.state, entry.result) {
        (JournalState::Committed, Some(result)) => Ok(result),
        (JournalState::Pending, _) => Err(Error::InProgress {
            mount: mount.to_owned(),
            key: entry.idempotency_key,
        }),
        (_, _) => Err(Error::Failed {
            journal_id: entry.id,
            message: entry.error.unwrap_or_else(|| "unknown".into()),
        }),
    }
}

/// Runs one mutating operation through the whole protocol.
pub(crate) async fn run_operation(
    c: OpContext,
    idempotency_key: String,
    request: OpRequest,
    payload: Payload,
) -> Result<OpResult, Error> {
    let mount = c.spec.name.clone();
    let fingerprint = request.fingerprint();
    let intent = NewIntent {
        mount: mount.clone(),
        idempotency_key,
        request: request.clone(),
    };
    let journal_id = match c.record_intent(intent).await? {
        IntentOutcome::Started { journal_id } => journal_id,
        IntentOutcome::Existing(entry) => return replay(&mount, &fingerprint, *entry),
    };
    let outcome = act_and_verify(&c, journal_id, &request, payload).await;
    match outcome {
        Ok((change, upload_id)) => {
            c.commit(CommitRecord {
                journal_id,
                mount,
                op: request.kind(),
                path: request.path().to_owned(),
                key: request.key().to_owned(),
                change,
                upload_id,
            })
            .await
        }
        // Unverified: S3 may hold the new state; the row stays pending for recovery to settle.
        Err(e @ Error::Unverified { .. }) => Err(e),
        Err(e) => {
            if let Err(fail_err) = c.fail(journal_id, &e).await {
                log::error!(
                    "mount {}: could not mark journal {journal_id} failed: {fail_err}",
                    c.spec.name
                );
            }
            Err(e)
        }
    }
}

async fn act_and_verify(
    c: &OpContext,
    journal_id: i64,
    request: &OpRequest,
    payload: Payload,
) -> Result<(NodeChange, Option<String>), Error> {
    match request {
        OpRequest::Put {
            key,
            size,
            sha256,
            content_type,
            ..
        } => {
            let Payload::Bytes(body) = payload else {
                return Err(Error::Config("put without a body".into()));
            };
            let mut digest = [0u8; 32];
            hex::decode_to_slice(sha256, &mut digest)
                .map_err(|e| Error::Config(format!("bad sha256 in request: {e}")))?;
            let input = PutObjectInput {
                key: key.clone(),
                body,
                sha256: digest,
                content_type: content_type.clone(),
            };
            c.with_retry("PUT", key, || c.store.put_object(input.clone()))
                .await?;
            let node = c.verify(key, put_landed(*size, sha256)).await?;
            Ok((NodeChange::Upsert(node), None))
        }
        OpRequest::PutMultipart {
            path,
            key,
            size,
            source,
            content_type,
        } => {
            let (reader, sink) = match payload {
                Payload::Upload { reader, sink } => (reader, sink),
                _ => (None, None),
            };
            // A recorded upload of this journal row (a retained one, or one a crash interrupted)
            // is resumed rather than started again.
            let resume = c.meta.upload_of(journal_id).await?;
            let (tx, rx) = oneshot::channel();
            let job = UploadJob {
                c: c.clone(),
                journal_id,
                path: path.clone(),
                key: key.clone(),
                size: *size,
                source: source.clone(),
                reader,
                content_type: content_type.clone(),
                resume,
                sink,
                publisher: c.publisher.clone(),
                counters: c.counters.clone(),
            };
            UploadActor::new(job, tx).start();
            let outcome = rx.await.map_err(|_| Error::Shutdown)??;
            Ok((NodeChange::Upsert(outcome.node), Some(outcome.upload_id)))
        }
        OpRequest::Delete { path, key } => {
            if c.meta.node(&c.spec.name, path).await?.is_none() {
                return Err(Error::NotFound {
                    mount: c.spec.name.clone(),
                    path: path.clone(),
                });
            }
            c.with_retry("DELETE", key, || c.store.delete_object(key))
                .await?;
            c.verify(key, gone).await?;
            Ok((NodeChange::Remove, None))
        }
    }
}

/// Settles a pending journal row left by an earlier run, by looking at S3: commit what verifiably
/// happened, resume a multipart upload whose file source is unchanged, fail the rest.
pub(crate) async fn recover_entry(c: OpContext, entry: JournalEntry) -> Result<OpResult, Error> {
    let mount = c.spec.name.clone();
    let key = entry.request.key().to_owned();
    let verdict = match &entry.request {
        OpRequest::Put { size, sha256, .. } => c
            .verify(&key, put_landed(*size, sha256))
            .await
            .map(|n| (NodeChange::Upsert(n), None)),
        OpRequest::PutMultipart { source, .. } => {
            let resumable = match source {
                UploadSource::File {
                    path,
                    size,
                    mtime_ns,
                } => match crate::upload::file_identity(path).await {
                    Ok((s, m)) if s == *size && m == *mtime_ns => Ok(()),
                    Ok((s, m)) => Err(format!(
                        "size {s} / mtime {m} ns now, {size} / {mtime_ns} ns at the start"
                    )),
                    Err(e) => Err(e),
                }
                .map_err(|reason| Error::SourceChanged {
                    source_path: path.clone(),
                    reason,
                }),
                UploadSource::Stream => Err(Error::SourceChanged {
                    source_path: "<stream>".into(),
                    reason: "a stream cannot be re-read after the process that read it died".into(),
                }),
            };
            match resumable {
                Ok(()) => {
                    act_and_verify(
                        &c,
                        entry.id,
                        &entry.request,
                        Payload::Upload {
                            reader: None,
                            sink: None,
                        },
                    )
                    .await
                }
                Err(e) => {
                    if let Some(rec) = c.meta.upload_of(entry.id).await? {
                        let _ = c.store.abort_multipart(&rec.key, &rec.upload_id).await;
                        c.meta.mark_upload_aborted(&rec.upload_id).await?;
                    }
                    Err(e)
                }
            }
        }
        OpRequest::Delete { path, .. } => {
            let tracked = c.meta.node(&mount, path).await?.is_some();
            if tracked {
                c.verify(&key, gone)
                    .await
                    .map(|_| (NodeChange::Remove, None))
            } else {
                Err(Error::NotFound {
                    mount: mount.clone(),
                    path: path.clone(),
                })
            }
        }
    };
    match verdict {
        Ok((change, upload_id)) => {
            let r = c
                .commit(CommitRecord {
                    journal_id: entry.id,
                    mount: mount.clone(),
                    op: entry.request.kind(),
                    path: entry.request.path().to_owned(),
                    key,
                    change,
                    upload_id,
                })
                .await?;
            log::info!(
                "mount {mount}: recovery committed journal {} (generation {})",
                entry.id,
                r.generation
            );
            Ok(r)
        }
        Err(Error::Unverified { reason, .. }) => {
            let e = Error::Failed {
                journal_id: entry.id,
                message: format!(
                    "interrupted before the operation took effect in S3 ({reason}); send it again"
                ),
            };
            c.fail(entry.id, &e).await?;
            log::info!("mount {mount}: recovery failed journal {}: {e}", entry.id);
            Err(e)
        }
        Err(e)
            if e.is_retryable()
                && matches!(
                    e,
                    Error::Storage { .. } | Error::Metadata(_) | Error::Shutdown
                ) =>
        {
            // The store or database is unavailable: leave the row pending for the next pass.
            Err(e)
        }
        Err(e) => {
            c.fail(entry.id, &e).await?;
            Err(e)
        }
    }
}
