//! Actor tests with in-memory port fakes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use filestore_s3_actors::commands::{DeleteObject, GetStatus, PutObject};
use filestore_s3_actors::model::{IntentOutcome, JournalState, NewIntent, OpRequest};
use filestore_s3_actors::mount::{MountRow, MountSpec};
use filestore_s3_actors::path::FsPath;
use filestore_s3_actors::ports::{MetaStore, ObjectStore, PutObjectInput, StoreErrorKind};
use filestore_s3_actors::retry::RetryPolicy;
use filestore_s3_actors::store::MountStore;
use filestore_s3_actors::testing::Fakes;
use filestore_s3_actors::Sha256Digest;
use filestore_s3_actors::{Error, MountSupervisor, SupervisorSettings};

fn settings() -> SupervisorSettings {
    SupervisorSettings {
        retry: RetryPolicy {
            max_attempts: 4,
            max_elapsed: Duration::from_secs(5),
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            retry_budget: 500,
        },
        recovery_interval: Duration::from_secs(60),
        outbox_poll_interval: Duration::from_millis(50),
        max_restart_delay: Duration::from_millis(50),
        orphan_upload_grace: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(3),
        outbox_retention: Duration::from_secs(3600),
        // The in-memory store shows every write at once: a missing object is final.
        consistency_horizon: Duration::ZERO,
    }
}

fn spec() -> Arc<MountSpec> {
    let mut row = MountRow::new("m", "bucket-a", "pre");
    row.verify_window_ms = 200;
    Arc::new(MountSpec::from_row(&row).unwrap())
}

fn start(f: &Fakes) -> Addr<MountSupervisor> {
    let (spec, store, meta, publisher) = (
        spec(),
        f.store.clone() as Arc<dyn ObjectStore>,
        f.meta.clone() as Arc<dyn MetaStore>,
        f.publisher.clone(),
    );
    actix::Supervisor::start(move |_| {
        MountSupervisor::new(
            MountStore::new(spec, store, settings().retry),
            meta,
            publisher,
            settings(),
        )
    })
}

fn put(path: &str, body: &'static [u8], key: Option<&str>) -> PutObject {
    PutObject {
        path: FsPath::parse(path).unwrap(),
        body: Bytes::from_static(body),
        sha256: Sha256Digest::of(body),
        content_type: None,
        metadata: Default::default(),
        idempotency_key: key.map(str::to_owned),
        condition: Default::default(),
    }
}

async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 2 s");
}

#[actix_rt::test]
async fn put_stat_delete_commit_and_publish_in_order() {
    let f = Fakes::default();
    let addr = start(&f);
    let r = addr
        .send(put("a/b.txt", b"hello", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.generation, 1);
    assert_eq!(r.key, "pre/a/b.txt");
    assert_eq!(f.store.get("pre/a/b.txt").unwrap(), b"hello");
    // reads go to the store layer and Postgres directly, beside the supervisor
    let stat = filestore_s3_actors::reads::stat(
        MountStore::new(spec(), f.store.clone(), settings().retry),
        f.meta.clone(),
        FsPath::parse("a/b.txt").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(stat.node.unwrap().meta.sha256, Sha256Digest::of(b"hello"));
    let d = addr
        .send(DeleteObject {
            path: FsPath::parse("a/b.txt").unwrap(),
            idempotency_key: None,
            batched: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.generation, 2);
    assert!(f.store.get("pre/a/b.txt").is_none());
    eventually(|| f.publisher.events.lock().unwrap().len() == 2).await;
    let events = f.publisher.events.lock().unwrap().clone();
    assert_eq!(events[0].event_id, r.event_id);
    assert_eq!(events[1].event_id, d.event_id);
    assert!(f.meta.outbox().iter().all(|(_, published)| *published));
}

#[actix_rt::test]
async fn failing_s3_call_is_an_error_reply_not_a_panic() {
    let f = Fakes::default();
    let addr = start(&f);
    f.store.fail_puts(1, StoreErrorKind::AccessDenied);
    let err = addr
        .send(put("x", b"1", Some("k1")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(f.meta.journal()[0].state, JournalState::Failed);
    // The actor is alive and serves the next call.
    let ok = addr.send(put("x", b"2", Some("k2"))).await.unwrap();
    assert!(ok.is_ok());
}

#[actix_rt::test]
async fn transient_s3_failures_are_retried() {
    let f = Fakes::default();
    let addr = start(&f);
    f.store.fail_puts(2, StoreErrorKind::Throttled);
    addr.send(put("x", b"1", None)).await.unwrap().unwrap();
    assert_eq!(f.store.puts.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.store.put_attempts.load(Ordering::SeqCst),
        3,
        "two retries, then success"
    );
    assert_eq!(addr.send(GetStatus).await.unwrap().retries, 2);
}

#[actix_rt::test]
async fn supervisor_that_stops_is_restarted_and_keeps_serving() {
    let f = Fakes::default();
    // Start-up recovery cannot reach the metadata store: the supervisor stops, actix restarts it.
    f.meta.fail_next_pending.store(1, Ordering::SeqCst);
    let addr = start(&f);
    let r = addr.send(put("after/restart", b"ok", None)).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    let status = addr.send(GetStatus).await.unwrap();
    assert_eq!(status.restarts, 1);
    assert!(status.recovered);
}

#[actix_rt::test]
async fn same_key_twice_at_once_has_one_side_effect() {
    let f = Fakes::default();
    let addr = start(&f);
    let (a, b) = tokio::join!(
        addr.send(put("same", b"data", Some("idem"))),
        addr.send(put("same", b"data", Some("idem")))
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a, b);
    assert_eq!(f.store.puts.load(Ordering::SeqCst), 1);
    // Later repeat returns the recorded result.
    let c = addr
        .send(put("same", b"data", Some("idem")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a, c);
    assert_eq!(f.store.puts.load(Ordering::SeqCst), 1);
    assert_eq!(f.meta.journal().len(), 1);
}

#[actix_rt::test]
async fn same_key_other_parameters_is_rejected() {
    let f = Fakes::default();
    let addr = start(&f);
    addr.send(put("p", b"one", Some("idem")))
        .await
        .unwrap()
        .unwrap();
    let err = addr
        .send(put("p", b"two", Some("idem")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");
    assert_eq!(f.store.get("pre/p").unwrap(), b"one");
}

#[actix_rt::test]
async fn operations_on_one_path_keep_arrival_order() {
    let f = Fakes::default();
    let addr = start(&f);
    let futs: Vec<_> = (0..5u8)
        .map(|i| {
            let body: &'static [u8] = Box::leak(vec![b'0' + i].into_boxed_slice());
            addr.send(put("ordered", body, None))
        })
        .collect();
    let mut gens = Vec::new();
    for fut in futs {
        gens.push(fut.await.unwrap().unwrap().generation);
    }
    assert_eq!(gens, vec![1, 2, 3, 4, 5]);
    assert_eq!(f.store.get("pre/ordered").unwrap(), b"4");
}

#[actix_rt::test]
async fn pending_entry_is_committed_by_recovery_at_start() {
    let f = Fakes::default();
    // A previous run recorded the intent and wrote to S3, then died before committing.
    let body = b"survivor";
    let req = OpRequest::Put(filestore_s3_actors::model::PutRequest {
        path: "crash/x".into(),
        key: "pre/crash/x".into(),
        size: body.len() as u64,
        sha256: Sha256Digest::of(body),
        content_type: None,
        metadata: Default::default(),
        condition: Default::default(),
    });
    let outcome = f
        .meta
        .begin(&NewIntent {
            mount: "m".into(),
            idempotency_key: "k".into(),
            fingerprint: req.fingerprint(),
            token: uuid::Uuid::new_v4(),
            progress: None,
            request: req,
        })
        .await
        .unwrap();
    let IntentOutcome::Started { journal_id } = outcome else {
        panic!("{outcome:?}")
    };
    f.store
        .put_object(PutObjectInput {
            key: "pre/crash/x".into(),
            body: Bytes::from_static(body),
            sha256: Sha256Digest::of(body),
            content_type: None,
            metadata: Default::default(),
            marker: filestore_s3_actors::model::WriteMarker {
                journal_id,
                sha256: Some(Sha256Digest::of(body)),
            },
            if_none_match: false,
            if_match: None,
        })
        .await
        .unwrap();
    // And one whose write never reached S3.
    let lost = OpRequest::Put(filestore_s3_actors::model::PutRequest {
        path: "crash/y".into(),
        key: "pre/crash/y".into(),
        size: 1,
        sha256: Sha256Digest::of(b"y"),
        content_type: None,
        metadata: Default::default(),
        condition: Default::default(),
    });
    f.meta
        .begin(&NewIntent {
            mount: "m".into(),
            idempotency_key: "k2".into(),
            fingerprint: lost.fingerprint(),
            token: uuid::Uuid::new_v4(),
            progress: None,
            request: lost,
        })
        .await
        .unwrap();
    let addr = start(&f);
    let _ = addr.send(GetStatus).await.unwrap();
    eventually(|| {
        f.meta
            .journal()
            .iter()
            .all(|e| e.state != JournalState::Pending)
    })
    .await;
    let j = f.meta.journal();
    assert_eq!(j[0].state, JournalState::Committed);
    assert_eq!(j[1].state, JournalState::Failed);
    eventually(|| f.publisher.events.lock().unwrap().len() == 1).await;
    // Repeating the first call returns the recovered result without a new write.
    let r = addr
        .send(put("crash/x", body, Some("k")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.journal_id, j[0].id);
    assert_eq!(f.store.puts.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn oversized_put_and_bad_key_are_refused_before_any_effect() {
    let f = Fakes::default();
    let mut row = MountRow::new("m", "bucket-a", "");
    row.multipart_threshold = 4;
    let spec = Arc::new(MountSpec::from_row(&row).unwrap());
    let (store, meta, publisher) = (f.store.clone(), f.meta.clone(), f.publisher.clone());
    let addr = actix::Supervisor::start(move |_| {
        MountSupervisor::new(
            MountStore::new(spec, store, settings().retry),
            meta,
            publisher,
            settings(),
        )
    });
    let err = addr
        .send(put("big", b"12345", None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 5,
                limit: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = addr
        .send(put("k", b"1", Some("")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidIdempotencyKey { .. }), "{err}");
    assert!(f.meta.journal().is_empty());
    assert_eq!(f.store.puts.load(Ordering::SeqCst), 0);
}

// --- actix facts the design relies on -------------------------------------------------------

struct Fragile {
    starts: Arc<std::sync::atomic::AtomicU32>,
}
impl Actor for Fragile {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Self::Context) {
        self.starts.fetch_add(1, Ordering::SeqCst);
    }
}
impl Supervised for Fragile {}

#[derive(Message)]
#[rtype(result = "u32")]
enum Cmd {
    Stop,
    Panic,
    Ping,
}
impl Handler<Cmd> for Fragile {
    type Result = u32;
    fn handle(&mut self, msg: Cmd, ctx: &mut Self::Context) -> u32 {
        match msg {
            Cmd::Stop => ctx.stop(),
            Cmd::Panic => panic!("handler panic"),
            Cmd::Ping => {}
        }
        self.starts.load(Ordering::SeqCst)
    }
}

#[actix_rt::test]
async fn actix_fact_stop_restarts_a_supervised_actor() {
    let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s = starts.clone();
    let addr = actix::Supervisor::start(move |_| Fragile { starts: s });
    addr.send(Cmd::Stop).await.unwrap();
    // The mailbox survives the restart; the next message reaches the new instance.
    assert_eq!(addr.send(Cmd::Ping).await.unwrap(), 2);
}

#[actix_rt::test]
async fn actix_fact_panic_is_not_a_restart() {
    // A panic kills the actor's task; senders see the mailbox closed instead of a restart.
    let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s = starts.clone();
    let arbiter = actix::Arbiter::new();
    let addr =
        actix::Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Fragile { starts: s });
    assert!(addr.send(Cmd::Panic).await.is_err());
    assert!(matches!(
        addr.send(Cmd::Ping).await,
        Err(MailboxError::Closed)
    ));
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    arbiter.stop();
}

// --- multipart uploads ------------------------------------------------------------------------

fn large_put(
    path: &str,
    data: Vec<u8>,
    sink: Option<filestore_s3_actors::multipart::ProgressSink>,
) -> filestore_s3_actors::commands::PutLargeObject {
    filestore_s3_actors::commands::PutLargeObject {
        path: FsPath::parse(path).unwrap(),
        source: filestore_s3_actors::model::UploadSource::Stream,
        size: Some(data.len() as u64),
        reader: Some(Box::new(std::io::Cursor::new(data))),
        content_type: None,
        metadata: Default::default(),
        idempotency_key: None,
        progress: sink,
        condition: Default::default(),
    }
}

fn start_with(f: &Fakes, edit: impl FnOnce(&mut MountRow)) -> Addr<MountSupervisor> {
    let mut row = MountRow::new("m", "bucket-a", "pre");
    row.verify_window_ms = 200;
    row.multipart_threshold = 1024;
    row.part_size = 5 * 1024 * 1024;
    row.part_concurrency = 2;
    edit(&mut row);
    let spec = Arc::new(MountSpec::from_row(&row).unwrap());
    let (store, meta, publisher) = (f.store.clone(), f.meta.clone(), f.publisher.clone());
    actix::Supervisor::start(move |_| {
        MountSupervisor::new(
            MountStore::new(spec, store, settings().retry),
            meta,
            publisher,
            settings(),
        )
    })
}

#[actix_rt::test]
async fn multipart_upload_reports_ordered_progress_and_hashes_the_whole_object() {
    let f = Fakes::default();
    let addr = start_with(&f, |_| {});
    let data: Vec<u8> = (0..(12 * 1024 * 1024 + 123))
        .map(|i| (i % 253) as u8)
        .collect();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let sink: filestore_s3_actors::multipart::ProgressSink =
        Arc::new(move |p| s.lock().unwrap().push(p.clone()));
    let r = addr
        .send(large_put("big/blob", data.clone(), Some(sink)))
        .await
        .unwrap()
        .unwrap();
    let node = r.node.unwrap();
    assert_eq!(node.sha256, Sha256Digest::of(&data));
    assert_eq!(node.size, data.len() as u64);
    assert_eq!(f.store.get("pre/big/blob").unwrap(), data);
    let seen = seen.lock().unwrap().clone();
    let done: Vec<u64> = seen.iter().map(|p| p.bytes_done).collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {done:?}"
    );
    let last = seen.last().unwrap();
    assert!(last.finished);
    assert_eq!(last.bytes_done, data.len() as u64);
    assert_eq!(last.parts_done, 3);
    assert_eq!(last.parts_total, Some(3));
    let status = addr.send(GetStatus).await.unwrap();
    assert_eq!(status.upload_bytes_sent, data.len() as u64);
    assert_eq!(status.parts_uploaded, 3);
    assert_eq!(f.store.open_uploads(), 0);
}

/// A multipart put's Complete is conditioned on the node's ETag (the in-memory store honours
/// every condition): over an object another operation of this executor left at the key (a write
/// marker) it completes over that object; over someone else's object it is refused with
/// `PreconditionFailed`, the object kept, the upload aborted, the node unchanged.
#[actix_rt::test]
async fn a_multipart_complete_replaces_only_the_nodes_object_or_a_marked_one() {
    let f = Fakes::default();
    let addr = start_with(&f, |_| {});
    let v = |seed: u32| -> Vec<u8> {
        (0..(6 * 1024 * 1024 + 11))
            .map(|i| ((i as u32 + seed) % 251) as u8)
            .collect()
    };
    addr.send(large_put("big/blob", v(1), None))
        .await
        .unwrap()
        .unwrap();
    f.store
        .write_behind("pre/big/blob", b"another operation's late write", Some(999));
    let r = addr
        .send(large_put("big/blob", v(2), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.node.unwrap().sha256, Sha256Digest::of(&v(2)));
    assert_eq!(f.store.get("pre/big/blob").unwrap(), v(2));
    f.store
        .write_behind("pre/big/blob", b"someone else's object", None);
    let e = addr
        .send(large_put("big/blob", v(3), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, Error::PreconditionFailed { reason, .. } if reason.contains("another writer")),
        "{e:?}"
    );
    assert_eq!(
        f.store.get("pre/big/blob").unwrap(),
        b"someone else's object".to_vec()
    );
    assert_eq!(f.store.open_uploads(), 0);
    let node = f
        .meta
        .node("m", "big/blob")
        .await
        .unwrap()
        .expect("the node is kept");
    assert_eq!(node.meta.sha256, Sha256Digest::of(&v(2)));
}

/// A file's parts carry their MD5 (hashed with their SHA-256) while the store wants it, and not
/// once it says it does not (a store that verifies and echoes the parts' checksums); the object
/// is the file either way.
#[actix_rt::test]
async fn file_parts_leave_out_their_md5_when_the_store_does_not_want_it() {
    let data: Vec<u8> = (0..(12 * 1024 * 1024 + 7))
        .map(|i| (i % 241) as u8)
        .collect();
    let file = std::env::temp_dir().join(format!("fs3-md5-parts-{}", std::process::id()));
    std::fs::write(&file, &data).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let (size, mtime_ns) = filestore_s3_actors::multipart::file_identity(&path)
        .await
        .unwrap();
    for unwanted in [false, true] {
        let f = Fakes::default();
        f.store.part_md5_unwanted.store(unwanted, Ordering::SeqCst);
        let addr = start_with(&f, |_| {});
        let r = addr
            .send(filestore_s3_actors::commands::PutLargeObject {
                source: filestore_s3_actors::model::UploadSource::File {
                    path: path.clone(),
                    size,
                    mtime_ns,
                },
                size: Some(size),
                reader: None,
                ..large_put("from/file", Vec::new(), None)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.node.unwrap().sha256, Sha256Digest::of(&data));
        assert_eq!(f.store.get("pre/from/file").unwrap(), data);
        let with = f.store.file_parts_with_md5.load(Ordering::SeqCst);
        let without = f.store.file_parts_without_md5.load(Ordering::SeqCst);
        assert_eq!((with, without), if unwanted { (0, 3) } else { (3, 0) });
    }
    std::fs::remove_file(&file).unwrap();
}

#[actix_rt::test]
async fn failed_part_aborts_the_upload_by_default() {
    let f = Fakes::default();
    let addr = start_with(&f, |_| {});
    f.store.fail_next_parts.store(100, Ordering::SeqCst);
    let data = vec![1u8; 6 * 1024 * 1024];
    let err = addr
        .send(large_put("fails", data, None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Storage {
                op: filestore_s3_actors::store::S3Op::UploadPart,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(f.store.open_uploads(), 0, "upload aborted");
    assert_eq!(f.meta.journal()[0].state, JournalState::Failed);
    assert!(f.store.get("pre/fails").is_none());
}

#[actix_rt::test]
async fn failed_part_keeps_the_upload_with_the_retain_policy() {
    let f = Fakes::default();
    let addr = start_with(&f, |r| r.multipart_failure_policy = "retain".into());
    f.store.fail_next_parts.store(100, Ordering::SeqCst);
    let data = vec![1u8; 6 * 1024 * 1024];
    addr.send(large_put("kept", data, None))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(f.store.open_uploads(), 1, "upload retained for a resume");
}

#[actix_rt::test]
async fn transient_part_failures_are_retried_and_counted() {
    let f = Fakes::default();
    let addr = start_with(&f, |_| {});
    f.store.fail_next_parts.store(2, Ordering::SeqCst);
    let data = vec![9u8; 11 * 1024 * 1024];
    addr.send(large_put("retried", data.clone(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.store.get("pre/retried").unwrap(), data);
    let status = addr.send(GetStatus).await.unwrap();
    assert_eq!(status.parts_uploaded, 3);
    assert_eq!(
        status.upload_bytes_sent,
        data.len() as u64 + 2 * 5 * 1024 * 1024
    );
}

#[actix_rt::test]
async fn repeating_a_put_resumes_its_retained_upload() {
    let f = Fakes::default();
    let addr = start_with(&f, |r| r.multipart_failure_policy = "retain".into());
    let data: Vec<u8> = (0..(16 * 1024 * 1024 + 9))
        .map(|i| (i % 241) as u8)
        .collect();
    let put = |data: Vec<u8>| {
        let mut m = large_put("resumed", data, None);
        m.idempotency_key = Some("same-key".into());
        m
    };
    // Part 1 and 2 go through, then every attempt fails: the upload stays open.
    f.store.fail_next_parts.store(0, Ordering::SeqCst);
    let first = {
        let store = f.store.clone();
        let sink: filestore_s3_actors::multipart::ProgressSink = Arc::new(move |p| {
            if p.parts_done == 2 {
                store.fail_next_parts.store(1000, Ordering::SeqCst);
            }
        });
        let mut m = put(data.clone());
        m.progress = Some(sink);
        addr.send(m).await.unwrap()
    };
    assert!(first.is_err());
    assert_eq!(f.store.open_uploads(), 1);
    // The caller repeats with the same key once the store is back: the upload resumes.
    f.store.fail_next_parts.store(0, Ordering::SeqCst);
    let r = addr.send(put(data.clone())).await.unwrap().unwrap();
    assert_eq!(r.node.unwrap().sha256, Sha256Digest::of(&data));
    assert_eq!(f.store.get("pre/resumed").unwrap(), data);
    let status = addr.send(GetStatus).await.unwrap();
    assert!(status.parts_resumed >= 2, "{status:?}");
    assert_eq!(f.meta.journal().len(), 1, "one journal row, re-armed");
}

#[actix_rt::test]
async fn orphaned_uploads_are_aborted_after_the_grace_period() {
    let f = Fakes::default();
    let mut row = MountRow::new("m", "bucket-a", "pre");
    row.multipart_threshold = 1024;
    row.part_size = 5 * 1024 * 1024;
    row.multipart_failure_policy = "retain".into();
    let spec = Arc::new(MountSpec::from_row(&row).unwrap());
    let mut s = settings();
    s.recovery_interval = Duration::from_millis(50);
    s.orphan_upload_grace = Duration::ZERO;
    let (store, meta, publisher) = (f.store.clone(), f.meta.clone(), f.publisher.clone());
    let addr = actix::Supervisor::start(move |_| {
        MountSupervisor::new(MountStore::new(spec, store, s.retry), meta, publisher, s)
    });
    f.store.fail_next_parts.store(1000, Ordering::SeqCst);
    addr.send(large_put("orphan", vec![1u8; 6 * 1024 * 1024], None))
        .await
        .unwrap()
        .unwrap_err();
    // The journal row has ended (failed) and nothing will resume the retained upload: the sweep
    // aborts it.
    eventually(|| f.store.open_uploads() == 0).await;
}

/// Sends `n` batched deletes at once (after putting their objects) and returns their replies.
async fn put_then_delete_batched(
    f: &Fakes,
    addr: &Addr<MountSupervisor>,
    n: usize,
) -> Vec<Result<filestore_s3_actors::model::OpResult, Error>> {
    for i in 0..n {
        addr.send(put(&format!("d/{i}"), b"x", None))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(f.store.len(), n);
    let deletes = (0..n).map(|i| {
        addr.send(DeleteObject {
            path: FsPath::parse(&format!("d/{i}")).unwrap(),
            idempotency_key: None,
            batched: true,
        })
    });
    futures::future::join_all(deletes)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[actix_rt::test]
async fn batched_deletes_go_together_and_each_commits_its_own() {
    let f = Fakes::default();
    let addr = start(&f);
    let replies = put_then_delete_batched(&f, &addr, 40).await;
    for r in &replies {
        assert_eq!(r.as_ref().unwrap().generation, 2, "{r:?}");
    }
    assert_eq!(f.store.len(), 0);
    let batches = f.store.delete_batches.lock().unwrap().clone();
    let singles = f.store.single_deletes.load(Ordering::SeqCst) as usize;
    // Every key went to the store once; the first delete goes alone (nothing waits with it),
    // those arriving while it is sent go together.
    assert_eq!(
        batches.iter().sum::<usize>() + singles,
        40,
        "{batches:?} + {singles}"
    );
    assert!(
        batches.iter().any(|&n| n > 1),
        "no multi-object delete: {batches:?}"
    );
    let status = addr.send(GetStatus).await.unwrap();
    assert_eq!(status.delete_batches as usize, batches.len());
    assert_eq!(
        status.deletes_batched as usize,
        batches.iter().sum::<usize>()
    );
    for i in 0..40 {
        assert!(f.meta.node("m", &format!("d/{i}")).await.unwrap().is_none());
    }
}

#[actix_rt::test]
async fn a_store_without_multi_object_delete_gets_single_deletes() {
    let f = Fakes::default();
    f.store.refuse_delete_objects.store(true, Ordering::SeqCst);
    let addr = start(&f);
    let replies = put_then_delete_batched(&f, &addr, 20).await;
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
    assert_eq!(f.store.len(), 0);
    assert!(f.store.delete_batches.lock().unwrap().is_empty());
    assert_eq!(f.store.single_deletes.load(Ordering::SeqCst), 20);
}
