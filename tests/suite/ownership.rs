//! One owner per mount across executors on one database: the Postgres lease, takeover, and the
//! fencing of a former owner's writes. Real Postgres, Redis and S3 (s3s-fs: ownership is decided
//! in Postgres, whatever the store).

use crate::common;

use std::time::{Duration, Instant};

use common::{Backend, TestEnv};
use filestore_s3::{Error, ExecutorConfig, PutOptions, S3Executor};
use filestore_s3_actors::commands::LeaseStatus;

/// A second executor on the same schema, with its own owner id.
async fn second_executor(env: &TestEnv, owner: &str) -> S3Executor {
    let mut config: ExecutorConfig = env.exec.config().clone();
    config.owner_id = owner.into();
    S3Executor::start(config).await.unwrap()
}

/// Waits until `exec` owns mount `m`; returns how long it took.
async fn wait_owned(exec: &S3Executor, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let lease = exec.status("m").await.unwrap().lease;
        if matches!(lease, LeaseStatus::Owned { .. }) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not owned after {within:?}: {lease:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn epoch(lease: &LeaseStatus) -> i64 {
    match lease {
        LeaseStatus::Owned { epoch } => *epoch,
        other => panic!("not owned: {other:?}"),
    }
}

pub async fn one_owner_and_takeover_when_the_owner_retires(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let a = &env.exec;
    let first_epoch = epoch(&a.status("m").await.unwrap().lease);
    let b = second_executor(&env, "executor-b").await;

    match b.status("m").await.unwrap().lease {
        LeaseStatus::HeldBy { owner, .. } => assert_eq!(owner, a.config().owner_id),
        other => panic!("b should see a's lease: {other:?}"),
    }
    let err = b
        .put_bytes("m", "from-b.txt", b"b".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    match &err {
        Error::NotOwner { mount, owner, .. } => {
            assert_eq!(mount, "m");
            assert_eq!(owner, &a.config().owner_id);
        }
        other => panic!("expected NotOwner, got {other}"),
    }
    assert!(err.is_retryable());
    assert_eq!(
        env.count("journal").await,
        0,
        "a refused call leaves no row"
    );
    a.put_bytes("m", "from-a.txt", b"a".to_vec(), PutOptions::default())
        .await
        .unwrap();

    // The owner retires (releases its lease): b takes over at its next look, well within the
    // lease duration, with a new epoch.
    a.shutdown().await;
    let took = wait_owned(&b, Duration::from_secs(10)).await;
    let ttl = b.config().supervisor.lease_ttl;
    assert!(took <= ttl, "takeover after a release took {took:?}");
    assert!(epoch(&b.status("m").await.unwrap().lease) > first_epoch);
    b.put_bytes("m", "from-b.txt", b"b".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let owners = env
        .query(
            "SELECT owner FROM {schema}.mount_leases WHERE mount = 'm'",
            &[],
        )
        .await;
    assert_eq!(owners[0].get::<_, String>(0), "executor-b");
    b.shutdown().await;
    env.cleanup().await;
}

/// An owner that stalls past its lease (as a paused or partitioned host would) loses the mount
/// to another executor; the writes it then attempts are refused by the fence, even though it has
/// not noticed yet, and it ends up waiting for the lease like any non-owner.
pub async fn a_former_owner_cannot_write(backend: Backend) {
    let mut settings = common::fast_settings();
    // The stalled owner would renew only every 20 s: it does not notice the takeover in time.
    settings.lease_ttl = Duration::from_secs(60);
    let env = TestEnv::builder(backend).settings(settings).build().await;
    let a = &env.exec;
    a.put_bytes("m", "before.txt", b"1".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let mut config: ExecutorConfig = env.exec.config().clone();
    config.owner_id = "executor-b".into();
    config.supervisor.lease_ttl = Duration::from_secs(3);
    let b = S3Executor::start(config).await.unwrap();
    assert!(matches!(
        b.status("m").await.unwrap().lease,
        LeaseStatus::HeldBy { .. }
    ));

    // a stalls past its lease: the lease runs out, b takes it.
    env.query(
        "UPDATE {schema}.mount_leases SET expires_at = now() - interval '1 second'",
        &[],
    )
    .await;
    wait_owned(&b, Duration::from_secs(10)).await;
    assert!(matches!(
        a.status("m").await.unwrap().lease,
        LeaseStatus::Owned { .. }
    ));

    // a still believes it owns the mount; its write is refused inside the intent transaction.
    let err = a
        .put_bytes("m", "stale.txt", b"2".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost(_)), "{err}");
    let rows = env
        .query(
            "SELECT count(*) FROM {schema}.journal WHERE path = 'stale.txt'",
            &[],
        )
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 0, "a fenced write left a row");
    assert!(env.object(&env.key("stale.txt")).await.is_none());

    // b serves the mount.
    b.put_bytes("m", "after.txt", b"3".to_vec(), PutOptions::default())
        .await
        .unwrap();
    b.shutdown().await;
    env.cleanup().await;
}

/// The supervisor loses its lease in the middle of a multipart upload from a file (as after a
/// stall) and restarts: the restarted supervisor takes the lease again and resumes the same
/// upload, and the first run's upload stops — one upload running, not two: every part is sent
/// once, but for the parts in flight at the restart (counted at a proxy in front of the server).
/// Two mechanisms stop the first run: its upload actor is stopped when the operation owning its
/// handle is dropped, and its next part record is refused by the fence; this test checks the
/// outcome (it also passes with either one alone).
pub async fn a_restarted_supervisor_leaves_one_upload_running(backend: Backend) {
    const MIB: u64 = 1024 * 1024;
    const PART: u64 = 5 * MIB;
    const PARTS: u64 = 16;
    let proxy = common::faultproxy::FaultProxy::start(&common::endpoint_of(backend), 0).await;
    let mut settings = common::fast_settings();
    settings.max_restart_delay = Duration::from_millis(50);
    let env = TestEnv::builder(backend)
        .mount(|r| {
            r.multipart_threshold = (6 * MIB) as i64;
            r.part_size = PART as i64;
            r.part_concurrency = 2;
        })
        .settings(settings)
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    let body: Vec<u8> = (0..PARTS * PART).map(|i| (i % 241) as u8).collect();
    std::fs::write(&file, &body).unwrap();

    let exec = env.exec.clone();
    let f = file.clone();
    let put = tokio::spawn(async move {
        exec.put_file(
            "m",
            "big.bin",
            &f,
            PutOptions {
                idempotency_key: Some("big-1".into()),
                ..Default::default()
            },
        )
        .await
    });
    // Once a few parts are recorded, the lease runs out under the supervisor.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = env
            .query("SELECT count(*) FROM {schema}.multipart_parts", &[])
            .await[0]
            .get(0);
        if n >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the upload did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.query(
        "UPDATE {schema}.mount_leases SET expires_at = now() - interval '1 second'",
        &[],
    )
    .await;
    // The caller of the interrupted run is told to retry; the restarted supervisor's recovery
    // finishes the upload meanwhile.
    let first = put.await.unwrap();
    assert!(
        matches!(
            first,
            Err(Error::Shutdown) | Err(Error::LeaseLost(_)) | Ok(_)
        ),
        "{first:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = env
            .query("SELECT state, error FROM {schema}.journal", &[])
            .await;
        let state: String = rows[0].get(0);
        if state != "pending" {
            assert_eq!(
                state,
                "committed",
                "{:?}",
                rows[0].get::<_, Option<String>>(1)
            );
            break;
        }
        assert!(Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = env.exec.status("m").await.unwrap();
    assert!(status.restarts >= 1, "{status:?}");
    let uploads = env
        .query("SELECT count(*) FROM {schema}.multipart_uploads", &[])
        .await;
    assert_eq!(
        uploads[0].get::<_, i64>(0),
        1,
        "the same upload was resumed"
    );
    // Each part went up once, but for the parts in flight when the first run stopped (at most
    // part_concurrency of them, sent again by the resumed run).
    let sent: Vec<usize> = (1..=PARTS as u32).map(|n| proxy.part_requests(n)).collect();
    assert!(sent.iter().all(|&n| (1..=2).contains(&n)), "{sent:?}");
    let again: usize = sent.iter().map(|n| n - 1).sum();
    assert!(again <= 2, "{again} parts sent twice: {sent:?}");
    let mut w = common::HashingWriter::new();
    env.exec
        .get("m", "big.bin", &mut w, Default::default())
        .await
        .unwrap();
    assert_eq!(w.hex(), common::sha256_hex(&body));
    env.cleanup().await;
}

/// A mount row changed (or disabled) while an upload runs: the running upload finishes and
/// commits under the old supervisor; only then does the new one take the lease (a higher epoch)
/// and serve the new settings; a disabled mount refuses new calls at once.
pub async fn a_changed_mount_is_handed_over_after_its_running_work(backend: Backend) {
    const MIB: u64 = 1024 * 1024;
    let env = TestEnv::builder(backend)
        .mount(|r| {
            r.multipart_threshold = (6 * MIB) as i64;
            r.part_size = (5 * MIB) as i64;
            r.part_concurrency = 1;
        })
        .build()
        .await;
    let before = epoch(&env.exec.status("m").await.unwrap().lease);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    let body: Vec<u8> = (0..12 * 5 * MIB).map(|i| (i % 239) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let exec = env.exec.clone();
    let f = file.clone();
    let put = tokio::spawn(async move {
        exec.put_file("m", "big.bin", &f, PutOptions::default())
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while env
        .query("SELECT count(*) FROM {schema}.multipart_parts", &[])
        .await[0]
        .get::<_, i64>(0)
        < 2
    {
        assert!(Instant::now() < deadline, "the upload did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Change the mount while the upload runs.
    let mut changed = env.row.clone();
    changed.verify_window_ms += 1;
    env.exec.register_mount(changed.clone()).await.unwrap();
    let r = put
        .await
        .unwrap()
        .expect("the running upload finished under the old supervisor");
    assert_eq!(r.node.unwrap().sha256, common::sha256_hex(&body));

    // The new supervisor took over after the upload ended, with a new epoch.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env.exec.status("m").await {
            Ok(s) if matches!(s.lease, LeaseStatus::Owned { epoch } if epoch > before) => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no handover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.exec
        .put_bytes(
            "m",
            "after.txt",
            b"new settings".to_vec(),
            PutOptions::default(),
        )
        .await
        .unwrap();

    // Disabled: refused at once.
    changed.enabled = false;
    env.exec.register_mount(changed).await.unwrap();
    let err = env
        .exec
        .put_bytes("m", "refused.txt", b"x".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MountDisabled { .. }), "{err}");
    env.cleanup().await;
}

/// Live mounts: rows written straight into `backend_mounts` while the executor runs take effect
/// without a restart (LISTEN/NOTIFY): a new mount becomes usable, a changed storage class applies
/// to the next put, a disabled mount refuses new calls. moto, which records storage classes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_rows_take_effect_while_running() {
    let env = TestEnv::new(Backend::Moto).await;
    let bucket = format!("{}-live", env.bucket);
    env.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let endpoint = env.row.endpoint.clone().unwrap();
    env.query(
        "INSERT INTO {schema}.backend_mounts (name, bucket, prefix, endpoint, path_style, verify_window_ms)
         VALUES ('live', $1, 'l', $2, true, 5000)",
        &[&bucket, &endpoint],
    )
    .await;
    let usable = |deadline: Instant| {
        let exec = env.exec.clone();
        async move {
            loop {
                match exec
                    .put_bytes("live", "x.txt", b"x".to_vec(), PutOptions::default())
                    .await
                {
                    Ok(r) => return r,
                    Err(e) => assert!(Instant::now() < deadline, "not usable: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let r = usable(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(r.node.unwrap().storage_class, "STANDARD");

    env.query(
        "UPDATE {schema}.backend_mounts SET storage_class = 'STANDARD_IA' WHERE name = 'live'",
        &[],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = usable(deadline).await;
        if r.node.unwrap().storage_class == "STANDARD_IA" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new storage class was not applied"
        );
    }

    // An operation in flight when the mount is disabled: a streamed put past the multipart
    // threshold whose source is held open by the test.
    env.query(
        "UPDATE {schema}.backend_mounts SET multipart_threshold = 6291456, part_size = 5242880
         WHERE name = 'live'",
        &[],
    )
    .await;
    // The change is handed over once a single-request put just above the new threshold is
    // refused (the old supervisor's threshold takes it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env
            .exec
            .put_bytes(
                "live",
                "threshold.bin",
                vec![1; 6291457],
                PutOptions::default(),
            )
            .await
        {
            Err(Error::TooLarge { limit: 6291456, .. }) => break,
            other => assert!(
                Instant::now() < deadline,
                "the new threshold was not applied: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut source, reader) = tokio::io::duplex(1 << 20);
    let exec = env.exec.clone();
    let in_flight = tokio::spawn(async move {
        exec.put_reader("live", "slow.bin", reader, PutOptions::default())
            .await
    });
    use tokio::io::AsyncWriteExt;
    let first: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 239) as u8).collect();
    source.write_all(&first).await.unwrap();
    // The put is running in the supervisor (parts are being recorded) before the row changes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.count("multipart_uploads").await == 0 {
        assert!(Instant::now() < deadline, "the streamed put did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    env.query(
        "UPDATE {schema}.backend_mounts SET enabled = false WHERE name = 'live'",
        &[],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env
            .exec
            .put_bytes("live", "y.txt", b"y".to_vec(), PutOptions::default())
            .await
        {
            Err(e @ Error::MountDisabled { .. }) => {
                assert!(e.to_string().contains("'live' is disabled"), "{e}");
                break;
            }
            other => assert!(Instant::now() < deadline, "still served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The operation in flight still finishes and commits.
    source.write_all(&[7u8; 3 * 1024 * 1024]).await.unwrap();
    drop(source);
    let r = tokio::time::timeout(Duration::from_secs(60), in_flight)
        .await
        .expect("the in-flight put ends")
        .unwrap()
        .expect("the in-flight put commits after the mount was disabled");
    assert_eq!(r.node.unwrap().size, 10 * 1024 * 1024);
    // Clean the extra bucket (the env removes its own).
    for key in env.keys_in(&bucket, "l").await {
        env.s3
            .delete_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    env.s3.delete_bucket().bucket(&bucket).send().await.unwrap();
    env.cleanup().await;
}

/// A passive executor (a watcher's) never takes a lease, refuses writes, and still reads and
/// follows the mount while another executor owns it — and keeps not owning it when that owner
/// goes away.
pub async fn a_passive_executor_only_reads(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let r = env
        .exec
        .put_bytes("m", "a.txt", b"a".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let mut config: ExecutorConfig = env.exec.config().clone();
    config.owner_id = "watcher".into();
    config.passive = true;
    let w = S3Executor::start(config).await.unwrap();
    let err = w
        .put_bytes("m", "b.txt", b"b".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert_eq!(w.stat("m", "a.txt").await.unwrap().object.size, 1);
    let mut feed = Box::pin(w.follow("m", 0, Default::default()));
    let e = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut feed))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.event.event_id, r.event_id);
    env.exec.shutdown().await;
    // The owner gave the lease up; the watcher, looking again, still does not take it. (It
    // looks at the lease every third of its duration: two seconds cover several looks.)
    let watched = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watched {
        assert_eq!(w.status("m").await.unwrap().lease, LeaseStatus::Unknown);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owners = env
        .query("SELECT owner FROM {schema}.mount_leases", &[])
        .await;
    assert_ne!(owners[0].get::<_, String>(0), "watcher");
    w.shutdown().await;
    env.cleanup().await;
}

/// An executor shut down right after one of its mounts changed (a hand-over in progress) leaves
/// no lease behind: the next owner takes the mount at once, not after the lease runs out.
pub async fn shutdown_during_a_hand_over_leaves_no_lease(backend: Backend) {
    for round in 0..5 {
        let env = TestEnv::new(backend).await;
        let mut row = env.row.clone();
        row.storage_class = Some(
            if round % 2 == 0 {
                "STANDARD_IA"
            } else {
                "GLACIER_IR"
            }
            .into(),
        );
        env.exec.register_mount(row).await.unwrap();
        env.exec.shutdown().await;
        let held = env
            .query(
                "SELECT owner FROM {schema}.mount_leases WHERE expires_at > now()",
                &[],
            )
            .await;
        assert!(
            held.is_empty(),
            "round {round}: lease still held by {:?}",
            held.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        );
        env.cleanup().await;
    }
}

per_backend! {
    @except_moto
    one_owner_and_takeover_when_the_owner_retires => super::one_owner_and_takeover_when_the_owner_retires(B);
    a_former_owner_cannot_write => super::a_former_owner_cannot_write(B);
    a_restarted_supervisor_leaves_one_upload_running => super::a_restarted_supervisor_leaves_one_upload_running(B);
    a_changed_mount_is_handed_over_after_its_running_work => super::a_changed_mount_is_handed_over_after_its_running_work(B);
    a_passive_executor_only_reads => super::a_passive_executor_only_reads(B);
    shutdown_during_a_hand_over_leaves_no_lease => super::shutdown_during_a_hand_over_leaves_no_lease(B);
}
