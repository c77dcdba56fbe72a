//! The wire faults of FAULTS.md, through the fault-injecting proxy (`tests/common/faultproxy.rs`)
//! in front of a real S3 server (s3s-fs), with real Postgres and Redis; every scenario ends with
//! the shared invariant checker (I1–I6). Named after their scenarios: `f05_…` (a Postgres cluster
//! of the test's own, restarted) to `f12_…`, `f16_…`.
//! F13 and F14 (the same idempotency key twice at once / with other parameters) count the S3
//! requests through the proxy on s3s-fs and moto.
//! The crash scenarios F1, F2, F15 are in `crash.rs`, F3 and F17 in `hosts.rs`, F4 in `feed.rs`,
//! the randomised run in `random.rs`.

use crate::common;
use filestore_s3::Location;

use std::time::{Duration, Instant};

use common::faultproxy::{Fault, FaultProxy, Op, Rule};
use common::invariants::{self, Expected};
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{Error, PutOptions, TransferOptions};
use filestore_s3_actors::ports::StoreErrorKind;

pub(crate) const MIB: usize = 1024 * 1024;

pub(crate) fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(crate) fn multipart(r: &mut filestore_s3::MountRow) {
    r.multipart_threshold = (6 * MIB) as i64;
    r.part_size = (5 * MIB) as i64;
    r.part_concurrency = 2;
}

/// An env whose mount `m` reaches `backend`'s store through a fault proxy (seeded).
pub(crate) async fn behind_proxy(
    backend: Backend,
    seed: u64,
    edit: impl FnOnce(&mut filestore_s3::MountRow),
    settings: filestore_s3_actors::SupervisorSettings,
    config: impl FnOnce(&mut filestore_s3::ExecutorConfig),
) -> (TestEnv, FaultProxy) {
    let (proxy, env) = TestEnv::builder(backend)
        .mount(edit)
        .settings(settings)
        .config(config)
        .behind_proxy(seed)
        .await;
    (env, proxy)
}

/// Puts `len` bytes of `body(len, seed)` from a file at `m/big.bin` (idempotency key `big`) and
/// returns them.
async fn put_big_file(env: &TestEnv, len: usize, seed: u8) -> Vec<u8> {
    let big = body(len, seed);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    env.exec
        .put_file("m", "big.bin", &file, key("big"))
        .await
        .unwrap();
    big
}

fn key(k: &str) -> PutOptions {
    PutOptions {
        idempotency_key: Some(k.into()),
        ..Default::default()
    }
}

/// F5: Postgres restarted (`pg_ctl stop -m immediate`, then start, on a cluster of the test's own)
/// while puts commit one after another, and stopped while a put is between its S3 write and its
/// commit: the proxy holds that put's PUT for 1.5 s, Postgres is stopped, and the PUT is
/// answered while nothing answers on Postgres' port, so that put's commit is in flight across
/// the outage. Transactions cut off are rolled back and retried with the same journal ids: every
/// put succeeds, exactly once, and no S3 write is made twice.
pub async fn f05_postgres_restarted_mid_commit(backend: Backend) {
    let cluster = common::pgcluster::PgCluster::start();
    let proxy = FaultProxy::start(&common::endpoint_of(backend), 5).await;
    let mut settings = common::fast_settings();
    // Long enough to ride out the restart (about a second here).
    settings.retry.max_attempts = 40;
    settings.retry.max_delay = Duration::from_millis(500);
    settings.retry.max_elapsed = Duration::from_secs(30);
    settings.lease_ttl = Duration::from_secs(15);
    let env = TestEnv::builder(backend)
        .database(cluster.url())
        .settings(settings)
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    let n = 40;
    let exec = env.exec.clone();
    let work = tokio::spawn(async move {
        let mut results = Vec::new();
        for i in 0..n {
            let r = exec
                .put_bytes(
                    "m",
                    &format!("pg/{i}"),
                    body(500 + i, i as u8),
                    key(&format!("pg{i}")),
                )
                .await;
            results.push(r);
        }
        results
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.count("snapshots").await < 10 {
        assert!(Instant::now() < deadline, "puts do not commit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next PUT is held at the proxy: its put recorded its intent, and waits for S3.
    proxy.add(Rule::once(
        Op::PutObject,
        Fault::Delay(Duration::from_millis(1500)),
    ));
    let held = loop {
        let puts: Vec<_> = proxy
            .seen()
            .into_iter()
            .enumerate()
            .filter(|(_, s)| s.op == Op::PutObject && s.fault.is_some())
            .collect();
        if let Some((i, _)) = puts.first() {
            break *i;
        }
        assert!(Instant::now() < deadline, "no PUT held");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let restart = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_immediate();
        cluster
    })
    .await
    .unwrap();
    assert_eq!(
        proxy.seen()[held].status,
        None,
        "the held PUT was answered before Postgres stopped"
    );
    // The PUT is answered while Postgres is down: that put's commit cannot be written now.
    while proxy.seen()[held].status.is_none() {
        assert!(Instant::now() < deadline, "the held PUT is not answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    eprintln!(
        "F5: Postgres down for {:?}, across the commit of the put whose PUT it held",
        restart.elapsed()
    );
    env.reconnect_pg().await;
    let results = tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("the puts end")
        .unwrap();
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "put {i}: {r:?}");
    }
    assert_eq!(proxy.count(Op::PutObject), n, "no S3 write made twice");
    let committed: i64 = env
        .query(
            "SELECT count(*) FROM {schema}.journal WHERE state = 'committed'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(committed as usize, n);
    let mut expected = Expected::new();
    for i in 0..n {
        expected.insert(
            ("m".into(), format!("pg/{i}")),
            sha256_hex(&body(500 + i, i as u8)),
        );
    }
    invariants::check(&env, &expected).await;
    env.cleanup().await;
    drop(cluster);
}

/// F6: 10 % of S3 requests answer 503 SlowDown. Every operation succeeds; the retries show in the
/// mount's counters, one per injected fault.
pub async fn f06_ten_percent_slowdown_every_operation_succeeds(backend: Backend) {
    let (env, proxy) = behind_proxy(backend, 6, multipart, common::fast_settings(), |_| {}).await;
    proxy.add(Rule {
        probability: 0.10,
        ..Rule::always(None, Fault::Status(503, "SlowDown"))
    });
    let mut expected = Expected::new();
    for i in 0..20 {
        let b = body(1000 + i, i as u8);
        env.exec
            .put_bytes("m", &format!("s/{i}"), b.clone(), key(&format!("s{i}")))
            .await
            .unwrap();
        expected.insert(("m".into(), format!("s/{i}")), sha256_hex(&b));
    }
    let big = put_big_file(&env, 16 * MIB + 5, 9).await;
    env.exec
        .copy(
            &Location::new("m", "s/1"),
            &Location::new("m", "copy/1"),
            TransferOptions::default(),
        )
        .await
        .unwrap();
    env.exec
        .move_object(
            &Location::new("m", "s/2"),
            &Location::new("m", "moved/2"),
            TransferOptions::default(),
        )
        .await
        .unwrap();
    env.exec
        .delete("m", "s/3", Default::default())
        .await
        .unwrap();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    expected.insert(
        ("m".into(), "copy/1".into()),
        expected[&("m".to_owned(), "s/1".to_owned())].clone(),
    );
    let moved = expected
        .remove(&("m".to_owned(), "s/2".to_owned()))
        .unwrap();
    expected.insert(("m".into(), "moved/2".into()), moved);
    expected.remove(&("m".to_owned(), "s/3".to_owned()));

    let injected = proxy.seen().iter().filter(|s| s.fault.is_some()).count();
    let retries = env.exec.status("m").await.unwrap().retries;
    eprintln!(
        "F6: {} requests, {injected} answered SlowDown, {retries} retries",
        proxy.seen().len()
    );
    assert!(injected > 0, "the seed injected no fault");
    assert_eq!(retries as usize, injected, "one retry per injected 503");
    proxy.clear();
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F7: S3 answers only 503 for a while. Operations fail with a retryable error once the retry
/// budget is spent, and the store sees a bounded number of requests (no retry storm); when it
/// answers again, work resumes.
pub async fn f07_only_503_fails_fast_within_the_retry_budget(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.retry.retry_budget = 50; // ten retries (5 tokens each)
    settings.retry.max_attempts = 6;
    // A 503 may follow a write the store applied: each failed put's row is left to recovery, which
    // fails it once the object has not shown for the consistency horizon.
    settings.consistency_horizon = Duration::from_secs(1);
    settings.recovery_interval = Duration::from_millis(500);
    let (env, proxy) = behind_proxy(backend, 7, |_| {}, settings, |_| {}).await;
    proxy.add(Rule::always(None, Fault::Status(503, "SlowDown")));
    let ops = 20;
    for i in 0..ops {
        let started = Instant::now();
        let err = env
            .exec
            .put_bytes("m", &format!("o/{i}"), b"x".to_vec(), key(&format!("o{i}")))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            started.elapsed() <= settings.retry.max_elapsed + Duration::from_secs(2),
            "failed after {:?}",
            started.elapsed()
        );
    }
    // Without a budget: up to 20 × 6 attempts. With it: one attempt each plus ten retries.
    // (PUTs only: the recovery passes meanwhile HEAD the pending rows' keys.)
    let sent = proxy.count(Op::PutObject);
    eprintln!("F7: {sent} PUT requests for {ops} failing puts");
    assert!(sent <= ops + 10, "{sent} requests: a retry storm");
    assert!(sent >= ops, "every put was tried once");

    // The store answers again: work resumes at once (first attempts never need the budget).
    proxy.clear();
    let b = b"after the outage".to_vec();
    env.exec
        .put_bytes("m", "back.txt", b.clone(), key("back"))
        .await
        .unwrap();
    // The failed puts left nothing behind: recovery found no object for any of them and failed
    // their rows; no node, no pending row.
    env.wait_no_pending(Duration::from_secs(20)).await;
    let failed: i64 = env
        .query(
            "SELECT count(*) FROM {schema}.journal WHERE state = 'failed'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(
        failed, ops as i64,
        "every failed put's row failed, none committed"
    );
    let mut expected = Expected::new();
    expected.insert(("m".into(), "back.txt".into()), sha256_hex(&b));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F8: CompleteMultipartUpload answers 200 with an `<Error>` body. It is retried; one object, one
/// commit, one upload.
pub async fn f08_complete_answering_200_with_an_error_is_retried(backend: Backend) {
    let (env, proxy) = behind_proxy(backend, 8, multipart, common::fast_settings(), |_| {}).await;
    proxy.add(Rule::once(Op::CompleteMultipartUpload, Fault::OkWithError));
    let big = body(12 * MIB + 1, 8);
    let r = env
        .exec
        .put_reader("m", "big.bin", std::io::Cursor::new(big.clone()), key("k"))
        .await
        .unwrap();
    assert_eq!(r.node.unwrap().sha256, sha256_hex(&big));
    assert_eq!(proxy.count(Op::CompleteMultipartUpload), 2);
    assert_eq!(proxy.count(Op::CreateMultipartUpload), 1);
    assert_eq!(proxy.count(Op::UploadPart), 3);
    let mut expected = Expected::new();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// The answer to CompleteMultipartUpload is lost after the server applied it: the retry finds the
/// upload gone, the object is proven to be this operation's (its marker), and it is committed
/// once, with no second upload.
pub async fn f08b_lost_complete_answer_commits_once(backend: Backend) {
    let (env, proxy) = behind_proxy(backend, 81, multipart, common::fast_settings(), |_| {}).await;
    proxy.add(Rule::once(Op::CompleteMultipartUpload, Fault::DropResponse));
    let big = body(11 * MIB, 3);
    let r = env
        .exec
        .put_reader("m", "big.bin", std::io::Cursor::new(big.clone()), key("k"))
        .await
        .unwrap();
    assert_eq!(r.node.unwrap().sha256, sha256_hex(&big));
    assert_eq!(
        proxy.count(Op::CreateMultipartUpload),
        1,
        "no second upload"
    );
    assert_eq!(proxy.count(Op::UploadPart), 3, "no part sent twice");
    assert!(proxy.count(Op::CompleteMultipartUpload) >= 2);
    assert_eq!(env.count("snapshots").await, 1, "one commit");
    let mut expected = Expected::new();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F9: the connection is reset in the middle of a part: only that part is sent again.
pub async fn f09_reset_mid_part_resends_only_that_part(backend: Backend) {
    let (env, proxy) = behind_proxy(backend, 9, multipart, common::fast_settings(), |_| {}).await;
    proxy.add(Rule {
        part: Some(2),
        ..Rule::once(Op::UploadPart, Fault::ResetAfter(MIB))
    });
    let big = body(16 * MIB + 77, 4);
    env.exec
        .put_reader("m", "big.bin", std::io::Cursor::new(big.clone()), key("k"))
        .await
        .unwrap();
    assert_eq!(proxy.part_requests(2), 2, "part 2 sent again");
    for n in [1, 3, 4] {
        assert_eq!(proxy.part_requests(n), 1, "part {n} sent once");
    }
    let mut expected = Expected::new();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F10: a request stalls (no byte comes back): the attempt timeout fires, the call is retried and
/// succeeds; no actor hangs.
pub async fn f10_stalled_request_times_out_and_is_retried(backend: Backend) {
    let (env, proxy) = behind_proxy(
        backend,
        10,
        |_| {},
        common::fast_settings(),
        |c| {
            c.s3.attempt_timeout = Duration::from_secs(2);
        },
    )
    .await;
    proxy.add(Rule::once(Op::PutObject, Fault::Stall));
    let b = b"after a stall".to_vec();
    let started = Instant::now();
    env.exec
        .put_bytes("m", "stalled.txt", b.clone(), key("k"))
        .await
        .unwrap();
    eprintln!(
        "F10: put done {:?} after the stall began",
        started.elapsed()
    );
    assert_eq!(proxy.count(Op::PutObject), 2);
    assert_eq!(env.exec.status("m").await.unwrap().retries, 1);
    // The supervisor still answers.
    env.exec
        .put_bytes("m", "next.txt", b"next".to_vec(), key("k2"))
        .await
        .unwrap();
    let mut expected = Expected::new();
    expected.insert(("m".into(), "stalled.txt".into()), sha256_hex(&b));
    expected.insert(("m".into(), "next.txt".into()), sha256_hex(b"next"));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F10, downloads: the body of a GET stalls part-way (headers and 256 KiB sent, then nothing on
/// an open connection). The SDK's stalled-stream protection cuts it after the grace period, the
/// read asks for the rest from the same object version, and the whole-object SHA-256 still holds.
pub async fn f10_stalled_download_is_cut_and_resumed(backend: Backend) {
    let (env, proxy) = behind_proxy(
        backend,
        101,
        |_| {},
        common::fast_settings(),
        |c| {
            c.s3.stall_grace = Duration::from_secs(1);
        },
    )
    .await;
    let b = body(3 * MIB + 11, 7);
    env.exec
        .put_bytes("m", "stalls.bin", b.clone(), key("k"))
        .await
        .unwrap();
    proxy.add(Rule::once(Op::GetObject, Fault::StallBodyAfter(256 * 1024)));
    let started = Instant::now();
    let mut out = Vec::new();
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        env.exec
            .get("m", "stalls.bin", &mut out, Default::default()),
    )
    .await
    .expect("the stalled download hung")
    .unwrap();
    eprintln!(
        "F10 (download): done {:?} after the GET began",
        started.elapsed()
    );
    assert_eq!(out, b, "the whole object, once");
    assert_eq!(
        got.sha256_verified.as_deref(),
        Some(sha256_hex(&b).as_str())
    );
    assert_eq!(proxy.count(Op::GetObject), 2, "one resumed GET");
    assert_eq!(proxy.faulted(Op::GetObject), 1);
    let mut expected = Expected::new();
    expected.insert(("m".into(), "stalls.bin".into()), sha256_hex(&b));
    proxy.clear();
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F11: eventual consistency — reads of a written key answer 404 for 2 s. Verification waits
/// inside its window (5 s) and commits; with a 0.5 s window the entry is left pending and
/// recovery commits it once the object shows — never committed unverified.
pub async fn f11_eventual_consistency_waits_or_leaves_it_to_recovery(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.recovery_interval = Duration::from_millis(500);
    let (mut env, proxy) = behind_proxy(backend, 11, |_| {}, settings, |_| {}).await;
    proxy.add(Rule::always(
        None,
        Fault::NotFoundAfterWrite(Duration::from_secs(2)),
    ));
    let b = b"visible after two seconds".to_vec();
    let started = Instant::now();
    env.exec
        .put_bytes("m", "ec.txt", b.clone(), key("k"))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "verification waited"
    );
    assert!(proxy.faulted(Op::HeadObject) + proxy.faulted(Op::GetObject) > 0);

    let ep = proxy.endpoint.clone();
    env.add_mount("short", |r| {
        r.endpoint = Some(ep);
        r.verify_window_ms = 500;
    })
    .await;
    let err = env
        .exec
        .put_bytes("short", "ec.txt", b.clone(), key("k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unverified { .. }), "{err:?}");
    let state: String = env
        .query(
            "SELECT state FROM {schema}.journal WHERE mount = 'short'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(state, "pending", "not committed unverified");
    env.wait_no_pending(Duration::from_secs(20)).await;
    let state: String = env
        .query(
            "SELECT state FROM {schema}.journal WHERE mount = 'short'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(state, "committed", "recovery committed it once visible");
    let mut expected = Expected::new();
    expected.insert(("m".into(), "ec.txt".into()), sha256_hex(&b));
    expected.insert(("short".into(), "ec.txt".into()), sha256_hex(&b));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F12: a byte flipped in an upload body (a put and a part) is rejected — by the store, which
/// verifies the SHA-256 the executor sends (s3s-fs), or by the executor, which finds the ETag the
/// store answers is not the MD5 of what it sent (moto verifies no checksum) — never committed, and
/// sent again.
async fn f12_flipped_byte_is_rejected_and_resent(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend)
        .mount(multipart)
        .behind_proxy(12)
        .await;
    proxy.add(Rule::once(Op::PutObject, Fault::FlipByte));
    proxy.add(Rule {
        part: Some(1),
        ..Rule::once(Op::UploadPart, Fault::FlipByte)
    });
    let small = body(4000, 1);
    env.exec
        .put_bytes("m", "small.bin", small.clone(), key("s"))
        .await
        .unwrap();
    let big = body(11 * MIB, 2);
    env.exec
        .put_reader("m", "big.bin", std::io::Cursor::new(big.clone()), key("b"))
        .await
        .unwrap();
    assert_eq!(proxy.count(Op::PutObject), 2);
    assert_eq!(proxy.part_requests(1), 2);
    assert!(env.exec.status("m").await.unwrap().retries >= 2);
    let mut expected = Expected::new();
    expected.insert(("m".into(), "small.bin".into()), sha256_hex(&small));
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A file's parts leave out their MD5 once the store has echoed a part's SHA-256 (so it verifies
/// them); a later part whose answer does not echo it is still checked against the ETag the store
/// answers, with the MD5 read again from the file — once, and right. On s3s-fs, which echoes no
/// part checksum and answers a part's MD5 as its ETag: the proxy echoes part 1's checksum, as AWS
/// S3 does, and part 2's answer comes as s3s-fs sends it. One part at a time, so that part 2 is
/// hashed after part 1's answer came.
pub async fn a_part_answered_without_its_checksum_is_checked_by_its_md5_read_again(
    backend: Backend,
) {
    let (env, proxy) = behind_proxy(
        backend,
        17,
        |r| {
            multipart(r);
            r.part_concurrency = 1;
        },
        common::fast_settings(),
        |_| {},
    )
    .await;
    proxy.add(Rule {
        part: Some(1),
        ..Rule::always(
            Some(Op::UploadPart),
            Fault::EchoRequestHeader("x-amz-checksum-sha256"),
        )
    });
    let big = put_big_file(&env, 13 * MIB + 11, 4).await;
    assert_eq!(
        (1..=3).map(|n| proxy.part_requests(n)).collect::<Vec<_>>(),
        [1, 1, 1],
        "no part sent again: part 2's MD5 matched its ETag"
    );
    assert_eq!(env.exec.status("m").await.unwrap().retries, 0);
    let mut expected = Expected::new();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F16: the store rejects checksum headers. With the mount's default (`checksum = sha256`) a put
/// fails with a configuration error of the mount (`StoreErrorKind::Config`, not retryable) that
/// names the setting to change, its row failed and nothing committed; with `checksum = none` the
/// same store works.
pub async fn f16_store_rejecting_checksum_headers(backend: Backend) {
    let (mut env, proxy) = behind_proxy(backend, 16, |_| {}, common::fast_settings(), |_| {}).await;
    proxy.add(Rule::always(None, Fault::RejectChecksumHeaders));
    let err = env
        .exec
        .put_bytes("m", "a.txt", b"a".to_vec(), key("a"))
        .await
        .unwrap_err();
    // A configuration error of the mount, saying which setting to change.
    match &err {
        Error::Storage { source, .. } => {
            assert_eq!(source.kind, StoreErrorKind::Config, "{err}");
            assert!(err.to_string().contains("InvalidRequest"), "{err}");
            assert!(
                err.to_string().contains("`checksum` set to `none`"),
                "{err}"
            );
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert_eq!(env.count("nodes").await, 0, "nothing committed");
    assert_eq!(env.journal_state("a").await, "failed");
    assert!(!err.is_retryable());
    let ep = proxy.endpoint.clone();
    env.add_mount("plain", |r| {
        r.endpoint = Some(ep);
        r.checksum = "none".into();
    })
    .await;
    let b = b"no checksum headers".to_vec();
    env.exec
        .put_bytes("plain", "a.txt", b.clone(), key("a"))
        .await
        .unwrap();
    let mut expected = Expected::new();
    expected.insert(("plain".into(), "a.txt".into()), sha256_hex(&b));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F13: the same idempotency key sent twice at once, for a put, a multipart put from a file, a
/// copy and a delete: one S3 side effect each (counted by the proxy), both callers get the same
/// result, and the invariants hold.
async fn f13_same_key_twice_at_once(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend)
        .mount(multipart)
        .behind_proxy(13)
        .await;
    let small = body(3000, 1);
    let (a, b) = tokio::join!(
        env.exec
            .put_bytes("m", "once.txt", small.clone(), key("put-1")),
        env.exec
            .put_bytes("m", "once.txt", small.clone(), key("put-1"))
    );
    assert_eq!(a.unwrap(), b.unwrap(), "both callers get the same result");
    assert_eq!(proxy.count(Op::PutObject), 1, "one PutObject");

    let big = body(12 * MIB + 3, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let (a, b) = tokio::join!(
        env.exec.put_file("m", "big.bin", &file, key("big-1")),
        env.exec.put_file("m", "big.bin", &file, key("big-1"))
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(proxy.count(Op::CreateMultipartUpload), 1, "one upload");
    assert_eq!(proxy.count(Op::UploadPart), 3, "each part sent once");

    let copy = || TransferOptions {
        idempotency_key: Some("copy-1".into()),
        ..Default::default()
    };
    let (from, to) = (
        Location::new("m", "once.txt"),
        Location::new("m", "copied.txt"),
    );
    let (a, b) = tokio::join!(
        env.exec.copy(&from, &to, copy()),
        env.exec.copy(&from, &to, copy())
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(proxy.count(Op::CopyObject), 1, "one CopyObject");

    let del = || filestore_s3::DeleteOptions {
        idempotency_key: Some("del-1".into()),
    };
    let (a, b) = tokio::join!(
        env.exec.delete("m", "once.txt", del()),
        env.exec.delete("m", "once.txt", del())
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(proxy.count(Op::DeleteObject), 1, "one DeleteObject");

    assert_eq!(env.count("journal").await, 4, "one journal row per key");
    let mut expected = Expected::new();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    expected.insert(("m".into(), "copied.txt".into()), sha256_hex(&small));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// F14: the same idempotency key with other parameters (other content, other path, other
/// operation) is refused with `IdempotencyConflict` and makes no S3 request that changes
/// anything; the first call's state stands.
async fn f14_same_key_other_parameters(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend)
        .mount(multipart)
        .behind_proxy(14)
        .await;
    let v1 = body(2000, 3);
    env.exec
        .put_bytes("m", "doc.txt", v1.clone(), key("k-1"))
        .await
        .unwrap();
    let writes = |p: &FaultProxy| {
        p.seen()
            .iter()
            .filter(|s| {
                matches!(
                    s.op,
                    Op::PutObject
                        | Op::CopyObject
                        | Op::DeleteObject
                        | Op::CreateMultipartUpload
                        | Op::UploadPart
                )
            })
            .count()
    };
    let before = writes(&proxy);
    let refusals = [
        env.exec
            .put_bytes("m", "doc.txt", body(2000, 4), key("k-1"))
            .await,
        env.exec
            .put_bytes("m", "other.txt", v1.clone(), key("k-1"))
            .await,
        env.exec
            .put_reader(
                "m",
                "doc.txt",
                std::io::Cursor::new(body(50, 5)),
                key("k-1"),
            )
            .await,
    ];
    for r in refusals {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");
    }
    let err = env
        .exec
        .delete(
            "m",
            "doc.txt",
            filestore_s3::DeleteOptions {
                idempotency_key: Some("k-1".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");
    let err = env
        .exec
        .copy(
            &Location::new("m", "doc.txt"),
            &Location::new("m", "copy.txt"),
            TransferOptions {
                idempotency_key: Some("k-1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");
    assert_eq!(writes(&proxy), before, "no write reached S3");
    assert_eq!(env.count("journal").await, 1);
    assert_eq!(env.count("snapshots").await, 1);
    let mut expected = Expected::new();
    expected.insert(("m".into(), "doc.txt".into()), sha256_hex(&v1));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// The store layer says what a failed request may have done to the bucket: a PUT the store
/// refused (403) applied nothing; a DELETE whose every answer was lost after the store applied
/// it may have been applied (and was); a DELETE whose first answer was lost and whose retries
/// were refused (400) may still have been applied by that first attempt (and was).
pub async fn a_failed_request_says_what_it_may_have_done(backend: Backend) {
    use filestore_s3_actors::store::{Outcome, S3Op};
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 3;
    let (env, proxy) = behind_proxy(backend, 24, |_| {}, settings, |_| {}).await;
    for p in ["a.txt", "b.txt"] {
        env.exec
            .put_bytes("m", p, b"x".to_vec(), PutOptions::default())
            .await
            .unwrap();
    }

    proxy.add(Rule::always(
        Some(Op::PutObject),
        Fault::Status(403, "AccessDenied"),
    ));
    let e = env
        .exec
        .put_bytes("m", "c.txt", b"c".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Storage {
                op: S3Op::PutObject,
                outcome: Outcome::NotApplied,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(env.object(&env.key("c.txt")).await, None);

    proxy.clear();
    proxy.add(Rule::always(Some(Op::DeleteObject), Fault::DropResponse));
    let e = env
        .exec
        .delete("m", "a.txt", Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Storage {
                op: S3Op::DeleteObject,
                outcome: Outcome::MaybeApplied,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(env.object(&env.key("a.txt")).await, None, "applied");

    proxy.clear();
    proxy.add(Rule::once(Op::DeleteObject, Fault::DropResponse));
    proxy.add(Rule::always(
        Some(Op::DeleteObject),
        Fault::Status(400, "InvalidArgument"),
    ));
    let e = env
        .exec
        .delete("m", "b.txt", Default::default())
        .await
        .unwrap_err();
    match &e {
        Error::Storage {
            op: S3Op::DeleteObject,
            source,
            outcome,
            ..
        } => {
            // The last attempt was refused; the first may have been applied.
            assert_eq!(source.kind, StoreErrorKind::Rejected, "{e}");
            assert_eq!(*outcome, Outcome::MaybeApplied, "{e}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(env.object(&env.key("b.txt")).await, None, "applied");
    proxy.clear();
    env.cleanup().await;
}

/// A call sent again while the executor's own recovery settles the same key: the earlier process
/// stopped after the intent, its PUT never answered (stalled, then cut off by the shutdown), so
/// the row is pending and the bucket holds nothing. The new executor's recovery finds no object and
/// fails the row ("send it again"); the caller that followed the recovery must not inherit that
/// failure for its own call, which runs under the same key once the recovery is done and commits.
pub async fn a_call_following_a_recovery_that_fails_runs_itself(backend: Backend) {
    let mut settings = common::fast_settings();
    // A row this old whose object is absent is failed by recovery (a late PUT is no longer waited
    // for).
    settings.consistency_horizon = Duration::from_millis(300);
    let (env, proxy) =
        behind_proxy(backend, 25, |r| r.verify_window_ms = 3000, settings, |_| {}).await;
    proxy.add(Rule::always(Some(Op::PutObject), Fault::Stall));
    let body = b"sent again while recovery runs".to_vec();
    let first = tokio::spawn({
        let (exec, body) = (env.exec.clone(), body.clone());
        async move { exec.put_bytes("m", "again.txt", body, key("again")).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.count(Op::PutObject) == 0 {
        assert!(Instant::now() < deadline, "the PUT never reached the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !env.exec.shutdown_within(Duration::from_millis(200)).await,
        "the stalled put was cut off, not drained"
    );
    let cut = first.await.unwrap();
    assert!(cut.is_err(), "cut off by the shutdown: {cut:?}");
    let state: String = env.query("SELECT state FROM {schema}.journal", &[]).await[0].get(0);
    assert_eq!(state, "pending");
    assert_eq!(env.object(&env.key("again.txt")).await, None);

    proxy.clear();
    tokio::time::sleep(Duration::from_millis(400)).await; // past the horizon
    let exec = filestore_s3::S3Executor::start(env.exec.config().clone())
        .await
        .unwrap();
    exec.wait_for_lease("m", Duration::from_secs(10))
        .await
        .unwrap();
    // The recovery runs for its 3 s window; the call arrives inside it. A client retries what it
    // is told it may retry; `Failed` is not one of those.
    let started = Instant::now();
    let result = loop {
        match exec
            .put_bytes("m", "again.txt", body.clone(), key("again"))
            .await
        {
            Err(e) if e.is_retryable() && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => break other,
        }
    };
    let r = result.expect("the call sent again commits");
    assert_eq!(env.object(&env.key("again.txt")).await, Some(body.clone()));
    let rows = env
        .query("SELECT state, attempts FROM {schema}.journal", &[])
        .await;
    assert_eq!(rows.len(), 1, "one row for the key");
    let (state, attempts): (String, i32) = (rows[0].get(0), rows[0].get(1));
    assert_eq!(state, "committed");
    assert_eq!(
        r.journal_id,
        env.query("SELECT id FROM {schema}.journal", &[]).await[0].get::<_, i64>(0)
    );
    eprintln!(
        "{backend:?}: committed after {:?}, attempts {attempts}",
        started.elapsed()
    );
    exec.shutdown().await;
    let mut expected = Expected::new();
    expected.insert(("m".into(), "again.txt".into()), sha256_hex(&body));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Answers lost after the store applied the request, then the retries run out: not a failure but
/// an unknown, settled by recovery from what S3 holds. A DELETE applied (answer dropped) and then
/// answered 503 until the retries ran out: the call fails, but its row stays pending and recovery
/// commits the delete (before, the row failed and the node named an object that was gone). A
/// create-only put whose answer was lost: the retry is refused by the store's If-None-Match,
/// because of the put's own object; the executor proves the object is its own and commits (a store
/// that ignores If-None-Match overwrites with the same content; the test says which happened).
pub async fn an_applied_request_whose_answer_was_lost_is_settled(backend: Backend) {
    use filestore_s3_actors::store::Outcome;
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 3;
    settings.recovery_interval = Duration::from_millis(500);
    let (env, proxy) = behind_proxy(backend, 26, |_| {}, settings, |_| {}).await;
    env.exec
        .put_bytes("m", "gone.txt", b"x".to_vec(), PutOptions::default())
        .await
        .unwrap();

    proxy.add(Rule::once(Op::DeleteObject, Fault::DropResponse));
    proxy.add(Rule::always(
        Some(Op::DeleteObject),
        Fault::Status(503, "SlowDown"),
    ));
    let e = env
        .exec
        .delete(
            "m",
            "gone.txt",
            filestore_s3::DeleteOptions {
                idempotency_key: Some("del".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Storage {
                outcome: Outcome::MaybeApplied,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(env.object(&env.key("gone.txt")).await, None, "applied");
    proxy.clear();
    env.wait_no_pending(Duration::from_secs(20)).await;
    let rows = env
        .query(
            "SELECT state FROM {schema}.journal WHERE idempotency_key = 'del'",
            &[],
        )
        .await;
    assert_eq!(
        rows[0].get::<_, String>(0),
        "committed",
        "recovery committed the delete"
    );
    assert!(
        matches!(
            env.exec.stat("m", "gone.txt").await,
            Err(Error::NotFound { .. })
        ),
        "no node, no object"
    );
    // Sent again under its key, the call gets the delete's result.
    let again = env
        .exec
        .delete(
            "m",
            "gone.txt",
            filestore_s3::DeleteOptions {
                idempotency_key: Some("del".into()),
            },
        )
        .await;
    assert!(again.is_ok(), "{again:?}");

    proxy.add(Rule::once(Op::PutObject, Fault::DropResponse));
    let seen_before = proxy.seen().len();
    let body = b"created once".to_vec();
    let r = env
        .exec
        .put_bytes(
            "m",
            "created.txt",
            body.clone(),
            PutOptions {
                idempotency_key: Some("create".into()),
                mode: filestore_s3::PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .expect("a create-only put whose answer was lost commits");
    let answers: Vec<Option<u16>> = proxy.seen()[seen_before..]
        .iter()
        .filter(|s| s.op == Op::PutObject)
        .map(|s| s.status)
        .collect();
    assert_eq!(answers.len(), 2, "the PUT and its retry: {answers:?}");
    eprintln!(
        "{backend:?}: create-only put after a lost answer committed generation {}; the store answered the PUTs {answers:?} ({})",
        r.generation,
        if answers[1] == Some(412) {
            "the retry refused by If-None-Match: the object proven the put's own"
        } else {
            "If-None-Match not enforced on the retry"
        }
    );
    assert_eq!(
        env.object(&env.key("created.txt")).await,
        Some(body.clone())
    );
    proxy.clear();
    let mut expected = Expected::new();
    expected.insert(("m".into(), "created.txt".into()), sha256_hex(&body));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A move that ended unverified (its check that the source is gone answered 500 until the
/// verification window closed) leaves its row pending. The caller then writes the source path
/// anew and is told it committed. Recovery must not finish the old move by deleting that new
/// object: the source was written since the move pinned it, so it is kept and the move is
/// committed as a copy of what it pinned (before, recovery deleted the new object: an
/// acknowledged write lost).
pub async fn a_move_recovered_after_its_source_was_written_keeps_the_new_source(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 2;
    // No periodic pass during the test (60 s): the row is recovered when the executor restarts.
    settings.recovery_interval = Duration::from_secs(60);
    let (mut env, proxy) =
        behind_proxy(backend, 27, |r| r.verify_window_ms = 1000, settings, |_| {}).await;
    let old = b"the move's source".to_vec();
    env.exec
        .put_bytes("m", "src.txt", old.clone(), PutOptions::default())
        .await
        .unwrap();
    // Only HEADs of the source fail: the copy is made and verified, the source deleted, and its
    // absence cannot be checked.
    proxy.add(Rule {
        key_suffix: Some("/src.txt".into()),
        ..Rule::always(Some(Op::HeadObject), Fault::Status(500, "InternalError"))
    });
    let e = env
        .exec
        .move_object(
            &Location::new("m", "src.txt"),
            &Location::new("m", "dst.txt"),
            TransferOptions {
                idempotency_key: Some("mv".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    let state: String = env.journal_state("mv").await;
    assert_eq!(state, "pending", "{e}");
    // The store answers again. The caller writes the source path anew (its node still names the
    // old object, which the move deleted: the new put overwrites the path).
    proxy.clear();
    let new = b"written after the move failed".to_vec();
    let put = env
        .exec
        .put_bytes("m", "src.txt", new.clone(), PutOptions::default())
        .await;
    let put = match put {
        Ok(r) => r,
        Err(e) => panic!("the new put: {e:?}"),
    };
    // The next owner (the executor started again) recovers the pending move.
    env.exec.shutdown().await;
    env.exec = filestore_s3::S3Executor::start(env.exec.config().clone())
        .await
        .unwrap();
    env.wait_no_pending(Duration::from_secs(20)).await;
    let rows = env
        .query(
            "SELECT state, result->>'op' FROM {schema}.journal WHERE idempotency_key = 'mv'",
            &[],
        )
        .await;
    eprintln!(
        "{backend:?}: the move's row ended {:?}, result op {:?}",
        rows[0].get::<_, String>(0),
        rows[0].get::<_, Option<String>>(1)
    );
    assert_eq!(
        env.object(&env.key("src.txt")).await,
        Some(new.clone()),
        "the acknowledged put's object is still there"
    );
    let src = env.exec.stat("m", "src.txt").await.unwrap();
    assert_eq!(src.node.unwrap().generation, put.generation, "its node too");
    assert_eq!(env.object(&env.key("dst.txt")).await, Some(old.clone()));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "src.txt".into()), sha256_hex(&new));
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(&old));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

per_backend! {
    f12_flipped_byte_is_rejected_and_resent => super::f12_flipped_byte_is_rejected_and_resent(B);
    f13_same_key_twice_at_once => super::f13_same_key_twice_at_once(B);
    f14_same_key_other_parameters => super::f14_same_key_other_parameters(B);
    @except_moto
    f05_postgres_restarted_mid_commit => super::f05_postgres_restarted_mid_commit(B);
    f06_ten_percent_slowdown_every_operation_succeeds => super::f06_ten_percent_slowdown_every_operation_succeeds(B);
    f07_only_503_fails_fast_within_the_retry_budget => super::f07_only_503_fails_fast_within_the_retry_budget(B);
    f08_complete_answering_200_with_an_error_is_retried => super::f08_complete_answering_200_with_an_error_is_retried(B);
    f08b_lost_complete_answer_commits_once => super::f08b_lost_complete_answer_commits_once(B);
    f09_reset_mid_part_resends_only_that_part => super::f09_reset_mid_part_resends_only_that_part(B);
    f10_stalled_request_times_out_and_is_retried => super::f10_stalled_request_times_out_and_is_retried(B);
    f10_stalled_download_is_cut_and_resumed => super::f10_stalled_download_is_cut_and_resumed(B);
    f11_eventual_consistency_waits_or_leaves_it_to_recovery => super::f11_eventual_consistency_waits_or_leaves_it_to_recovery(B);
    a_part_answered_without_its_checksum_is_checked_by_its_md5_read_again => super::a_part_answered_without_its_checksum_is_checked_by_its_md5_read_again(B);
    f16_store_rejecting_checksum_headers => super::f16_store_rejecting_checksum_headers(B);
    a_failed_request_says_what_it_may_have_done => super::a_failed_request_says_what_it_may_have_done(B);
    a_call_following_a_recovery_that_fails_runs_itself => super::a_call_following_a_recovery_that_fails_runs_itself(B);
    an_applied_request_whose_answer_was_lost_is_settled => super::an_applied_request_whose_answer_was_lost_is_settled(B);
    a_move_recovered_after_its_source_was_written_keeps_the_new_source => super::a_move_recovered_after_its_source_was_written_keeps_the_new_source(B);
}
