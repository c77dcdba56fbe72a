//! Two executor processes on one database and one mount. The owner is a child process (this test
//! binary run again as `owner_process`, or the reference binary); the other executor runs in the
//! test. Exactly one owns the mount at a time; when the owner is SIGKILLed in the middle of a
//! multipart put, a move and several small puts, the other takes over within the documented bound
//! (lease TTL + a third of it), settles every pending row and the invariants I1–I6 hold; an owner
//! paused (SIGSTOP) past its lease cannot write once it runs again. Real Postgres, Redis, s3s-fs.

use crate::common;
use filestore_s3::Location;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::invariants::{self, Expected};
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{Error, ExecutorConfig, PutOptions, S3Executor};
use filestore_s3_actors::commands::LeaseStatus;
use filestore_s3_actors::failpoint::FAILPOINTS_ENV;
use tokio::io::{AsyncBufReadExt, BufReader};

const MIB: u64 = 1024 * 1024;
/// Lease TTL of both executors in these tests.
const TTL: Duration = Duration::from_secs(2);
/// Set when this binary runs as the owner process: `work:<big file>` (start all the work and
/// hold it at the failpoints) or `one-put` (one small put, then linger so that what its
/// committer does afterwards shows in the log).
const CHILD_ENV: &str = "FILESTORE_TEST_OWNER_PROCESS";
const SMALL_PUTS: usize = 4;

fn small_body(i: usize) -> Vec<u8> {
    format!("small put {i} of the owner that dies").into_bytes()
}

fn paused_body() -> Vec<u8> {
    b"written by A, committed by B".to_vec()
}

fn move_body() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 241) as u8).collect()
}

fn big_body() -> Vec<u8> {
    (0..(24 * MIB + 777))
        .map(|i| ((i * 131 + i / 7) % 256) as u8)
        .collect()
}

fn mount_settings(r: &mut filestore_s3::MountRow) {
    r.multipart_threshold = (6 * MIB) as i64;
    r.part_size = (5 * MIB) as i64;
    r.part_concurrency = 1;
}

/// The in-test executor: same schema, its own owner id, the tests' lease TTL.
async fn executor(env: &TestEnv, owner: &str) -> S3Executor {
    let mut config: ExecutorConfig = env.exec.config().clone();
    config.owner_id = owner.into();
    config.supervisor.lease_ttl = TTL;
    S3Executor::start(config).await.unwrap()
}

fn child_env(cmd: &mut tokio::process::Command, env: &TestEnv, owner: &str, failpoints: &str) {
    cmd.envs(env.child_vars())
        .env("FILESTORE_OWNER_ID", owner)
        .env("FILESTORE_LEASE_TTL_MS", TTL.as_millis().to_string())
        .env(FAILPOINTS_ENV, failpoints)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
}

async fn lease_of(exec: &S3Executor) -> LeaseStatus {
    exec.status("m").await.unwrap().lease
}

/// Waits until `exec` owns mount `m` (at most `within`); returns its epoch.
async fn wait_owned(exec: &S3Executor, within: Duration) -> i64 {
    let started = Instant::now();
    loop {
        if let LeaseStatus::Owned { epoch } = lease_of(exec).await {
            return epoch;
        }
        assert!(started.elapsed() < within, "not owned after {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts this test binary again as the owner process `host-a` (`owner_process`) in `mode`, with
/// `failpoints` armed; its stderr lines are collected.
fn spawn_owner(
    env: &TestEnv,
    mode: &str,
    failpoints: &str,
) -> (
    tokio::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "hosts::owner_process",
        "--ignored",
        "--nocapture",
    ])
    .env(CHILD_ENV, mode);
    child_env(&mut cmd, env, "host-a", failpoints);
    let mut child = cmd.spawn().unwrap();
    let log = collect_lines(child.stderr.take().unwrap());
    (child, log)
}

/// Reads the child's stderr lines into a shared log, in the background.
fn collect_lines(
    stderr: tokio::process::ChildStderr,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            l.lock().unwrap().push(line);
        }
        l.lock().unwrap().push(STDERR_CLOSED.into());
    });
    log
}

/// The line `collect_lines` adds once the child's stderr is closed.
const STDERR_CLOSED: &str = "<stderr closed>";

/// Waits until the child's stderr was read to its end (after the child exited), so the log holds
/// every line it wrote.
async fn wait_stderr_closed(log: &std::sync::Mutex<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_lines(log, STDERR_CLOSED) == 0 {
        assert!(Instant::now() < deadline, "the child's stderr stays open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn count_lines(log: &std::sync::Mutex<Vec<String>>, needle: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// The owner process: serves mount `m` and, once it owns it, either (`work:`) starts the small
/// puts, the move and the multipart put concurrently — the failpoints
/// (`before_commit=pause,after_copied=pause`) hold each of them just before its commit, so the
/// parent kills the process with all of them in flight — or (`one-put`) does one put, reports
/// how it ended and stays alive a while. Run by the tests below, not on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the owner process of the two-host tests (started by them)"]
async fn owner_process() {
    let mode = std::env::var(CHILD_ENV).expect("started by a two-host test");
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let exec = S3Executor::start(ExecutorConfig::from_env().unwrap())
        .await
        .unwrap();
    wait_owned(&exec, Duration::from_secs(30)).await;
    eprintln!("CHILD owns m");
    if mode == "one-put" {
        let opts = PutOptions {
            idempotency_key: Some("paused-put".into()),
            ..Default::default()
        };
        let r = exec.put_bytes("m", "paused.txt", paused_body(), opts).await;
        eprintln!("CHILD put ended: {r:?}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        eprintln!("CHILD exits");
        return;
    }
    let big = mode.strip_prefix("work:").expect("work:<file>").to_owned();
    let mut work = Vec::new();
    for i in 0..SMALL_PUTS {
        let exec = exec.clone();
        work.push(tokio::spawn(async move {
            let opts = PutOptions {
                idempotency_key: Some(format!("small-{i}")),
                ..Default::default()
            };
            exec.put_bytes("m", &format!("small/{i}.txt"), small_body(i), opts)
                .await
                .map(|_| ())
        }));
    }
    let e = exec.clone();
    work.push(tokio::spawn(async move {
        let opts = filestore_s3::TransferOptions {
            idempotency_key: Some("the-move".into()),
            ..Default::default()
        };
        e.move_object(
            &Location::new("m", "from/a.bin"),
            &Location::new("m", "to/b.bin"),
            opts,
        )
        .await
        .map(|_| ())
    }));
    let e = exec.clone();
    work.push(tokio::spawn(async move {
        let opts = PutOptions {
            idempotency_key: Some("the-big-one".into()),
            ..Default::default()
        };
        e.put_file("m", "big.bin", std::path::Path::new(&big), opts)
            .await
            .map(|_| ())
    }));
    eprintln!("CHILD started all");
    for w in work {
        // Never reached: the failpoints hold every operation until the parent kills us.
        let r = w.await.unwrap();
        eprintln!("CHILD operation ended: {r:?}");
    }
}

async fn sigkill_of_the_owner_mid_work_is_taken_over(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(mount_settings)
        .build()
        .await;
    env.exec
        .put_bytes("m", "from/a.bin", move_body(), PutOptions::default())
        .await
        .unwrap();
    env.wait_stream(1).await;
    env.exec.shutdown().await; // gives the lease up
    let dir = tempfile::tempdir().unwrap();
    let big_file = dir.path().join("big.bin");
    std::fs::write(&big_file, big_body()).unwrap();

    // Host A: this test binary again, running only `owner_process`.
    let (mut a, log) = spawn_owner(
        &env,
        &format!("work:{}", big_file.display()),
        "before_commit=pause,after_copied=pause",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_lines(&log, "CHILD owns m") == 0 {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Host B, in this process: sees A's lease and refuses the mount's work, naming A.
    let b = executor(&env, "host-b").await;
    let seen_by_b = Instant::now() + Duration::from_secs(10);
    loop {
        match lease_of(&b).await {
            LeaseStatus::HeldBy { owner, .. } => {
                assert_eq!(owner, "host-a");
                break;
            }
            other => assert!(
                Instant::now() < seen_by_b,
                "B should see A's lease: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match b
        .put_bytes("m", "refused.txt", b"no".to_vec(), PutOptions::default())
        .await
    {
        Err(Error::NotOwner { owner, .. }) => assert_eq!(owner, "host-a"),
        other => panic!("B must refuse while A owns the mount: {other:?}"),
    }

    // Kill A once every small put and the move wait at their failpoints and the multipart put
    // has parts recorded (or waits before its commit too).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let parts: i64 = env
            .query("SELECT count(*) FROM {schema}.multipart_parts", &[])
            .await[0]
            .get(0);
        let paused_commits = count_lines(&log, "failpoint before_commit: paused");
        let move_paused = count_lines(&log, "failpoint after_copied: paused") == 1;
        if paused_commits >= SMALL_PUTS
            && move_paused
            && (parts >= 2 || paused_commits > SMALL_PUTS)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never got all its work in flight: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending: i64 = env
        .query(
            "SELECT count(*) FROM {schema}.journal WHERE state = 'pending'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(
        pending as usize,
        SMALL_PUTS + 2,
        "all of A's work is in flight"
    );
    let a_upload: String = env
        .query("SELECT upload_id FROM {schema}.multipart_uploads", &[])
        .await[0]
        .get(0);
    a.start_kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    assert!(!a.wait().await.unwrap().success());

    // B takes over within the documented bound: A's lease runs out at most TTL after its last
    // renewal, and B looks every TTL / 3 (docs/hosts.md); one second of slack for scheduling.
    let b_epoch = wait_owned(&b, TTL + TTL / 3 + Duration::from_secs(1)).await;
    eprintln!("takeover {:?} after the kill", killed_at.elapsed());
    env.wait_no_pending(Duration::from_secs(90)).await;

    // Every row of A was settled by B: committed, under B's lease.
    let rows = env
        .query(
            "SELECT idempotency_key, state, committed_by, committed_epoch, error
             FROM {schema}.journal ORDER BY id",
            &[],
        )
        .await;
    assert_eq!(rows.len(), SMALL_PUTS + 3);
    for r in &rows[1..] {
        let key: String = r.get(0);
        let state: String = r.get(1);
        let error: Option<String> = r.get(4);
        assert_eq!(state, "committed", "{key}: {error:?}");
        assert_eq!(
            r.get::<_, Option<String>>(2).as_deref(),
            Some("host-b"),
            "{key}"
        );
        assert_eq!(r.get::<_, Option<i64>>(3), Some(b_epoch), "{key}");
    }
    // The multipart put was resumed: A's upload completed. Or A was killed while its
    // CompleteMultipartUpload was being applied and the store lost the upload half-applied
    // (s3s-fs forgets the id, then joins and removes the parts, and drops the work when the
    // client's connection closes): then A's upload is marked aborted and the unchanged file
    // was uploaded again under a new id, which completed. Nothing else is acceptable.
    let uploads = env.uploads().await;
    match uploads.as_slice() {
        [(id, state)] => {
            assert_eq!((id, state.as_str()), (&a_upload, "completed"));
            eprintln!("A's upload {id} was resumed and completed");
        }
        [(old, old_state), (new, new_state)] => {
            // Only s3s-fs loses an upload during its Complete (docs/testing.md): on moto A's
            // own upload must be resumed. (An external endpoint may be a standalone s3s-fs.)
            assert_ne!(
                backend,
                Backend::Moto,
                "A's upload {old} was not resumed: {uploads:?}"
            );
            assert_eq!((old, old_state.as_str()), (&a_upload, "aborted"));
            assert_eq!(new_state, "completed");
            // Only a Complete loses an upload here: A had every part recorded.
            let parts: i64 = env
                .query(
                    "SELECT count(*) FROM {schema}.multipart_parts WHERE upload_id = $1",
                    &[old],
                )
                .await[0]
                .get(0);
            let all = (big_body().len() as u64).div_ceil(5 * MIB) as i64;
            assert_eq!(
                parts, all,
                "A's upload was lost before all its parts were sent"
            );
            eprintln!(
                "A's upload {old} was lost by the store during its Complete; {new} completed"
            );
        }
        other => panic!("unexpected uploads: {other:?}"),
    }

    // I1–I6, with I5's reference: the state one clean run of these operations leaves.
    let mut expected: Expected = BTreeMap::new();
    let m = |p: &str| ("m".to_owned(), p.to_owned());
    for i in 0..SMALL_PUTS {
        expected.insert(m(&format!("small/{i}.txt")), sha256_hex(&small_body(i)));
    }
    expected.insert(m("to/b.bin"), sha256_hex(&move_body()));
    expected.insert(m("big.bin"), sha256_hex(&big_body()));
    invariants::check(&env, &expected).await;
    b.shutdown().await;
    env.cleanup().await;
}

/// The owner A is stopped (SIGSTOP) while its put's commit is about to be written, and stays
/// stopped past its lease; B takes the mount over and commits the put from what S3 holds. Resumed
/// (SIGCONT), A cannot write: its commit is refused by the lease fence, its put fails, and the
/// only commit is B's.
pub async fn an_owner_paused_past_its_lease_cannot_write(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.exec.shutdown().await;
    let body = paused_body();

    let (mut a, log) = spawn_owner(&env, "one-put", "before_commit_transaction=sleep:1500");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_lines(&log, "failpoint before_commit_transaction: sleeping") == 0 {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = a.id().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let a_epoch: i64 = env
        .query(
            "SELECT epoch FROM {schema}.mount_leases WHERE mount = 'm' AND owner = 'host-a'",
            &[],
        )
        .await[0]
        .get(0);

    let b = executor(&env, "host-b").await;
    let b_epoch = wait_owned(&b, TTL + TTL / 3 + Duration::from_secs(2)).await;
    assert!(b_epoch > a_epoch);
    env.wait_no_pending(Duration::from_secs(30)).await;

    signal("-CONT");
    let status = tokio::time::timeout(Duration::from_secs(30), a.wait())
        .await
        .expect("A ends after it is resumed")
        .unwrap();
    wait_stderr_closed(&log).await;
    let stderr = log.lock().unwrap().join("\n");
    eprintln!("A after SIGCONT ({status}):\n{stderr}");
    assert!(
        stderr.contains("CHILD put ended: Err("),
        "A's put must not succeed:\n{stderr}"
    );
    assert!(
        stderr.contains("commit refused by the lease fence"),
        "A's commit must be refused by the fence:\n{stderr}"
    );

    // One commit, B's; A wrote nothing after its lease ran out.
    let rows = env
        .query(
            "SELECT state, committed_by, committed_epoch FROM {schema}.journal",
            &[],
        )
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "committed");
    assert_eq!(
        rows[0].get::<_, Option<String>>(1).as_deref(),
        Some("host-b")
    );
    assert_eq!(rows[0].get::<_, Option<i64>>(2), Some(b_epoch));
    let snapshots: i64 = env
        .query("SELECT count(*) FROM {schema}.snapshots", &[])
        .await[0]
        .get(0);
    assert_eq!(snapshots, 1);
    let lease = env
        .query(
            "SELECT owner, epoch FROM {schema}.mount_leases WHERE mount = 'm'",
            &[],
        )
        .await;
    assert_eq!(lease[0].get::<_, String>(0), "host-b");
    assert_eq!(lease[0].get::<_, i64>(1), b_epoch);

    let mut expected: Expected = BTreeMap::new();
    expected.insert(("m".into(), "paused.txt".into()), sha256_hex(&body));
    invariants::check(&env, &expected).await;
    b.shutdown().await;
    env.cleanup().await;
}

/// Fencing reaches S3. The owner A is stopped (SIGSTOP) just before its put's PUT, and stays
/// stopped past its lease; B takes the mount over and writes the same path, and the caller is
/// told it committed. Resumed (SIGCONT), A sends no PUT: its lease is no longer known to be held
/// (the monotonic clock ran on while it was stopped), so its late write, which would have
/// replaced B's acknowledged object, is not sent. (Before, it was: the bucket held A's object
/// and B's node named B's.)
pub async fn a_paused_owner_sends_no_late_s3_write(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.exec.shutdown().await;
    let (mut a, log) = spawn_owner(&env, "one-put", "before_put=sleep:1500");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_lines(&log, "failpoint before_put: sleeping") == 0 {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = a.id().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let mut config: ExecutorConfig = env.exec.config().clone();
    config.owner_id = "host-b".into();
    config.supervisor.lease_ttl = TTL;
    // A's row (its PUT never sent) is failed by B's recovery once the path's object is older
    // than this.
    config.supervisor.consistency_horizon = Duration::from_secs(1);
    config.supervisor.recovery_interval = Duration::from_millis(300);
    let b = S3Executor::start(config).await.unwrap();
    wait_owned(&b, TTL + TTL / 3 + Duration::from_secs(2)).await;
    let mine = b"written by B while A was stopped".to_vec();
    let put = b
        .put_bytes("m", "paused.txt", mine.clone(), PutOptions::default())
        .await
        .unwrap();

    signal("-CONT");
    let status = tokio::time::timeout(Duration::from_secs(30), a.wait())
        .await
        .expect("A ends after it is resumed")
        .unwrap();
    wait_stderr_closed(&log).await;
    let stderr = log.lock().unwrap().join("\n");
    eprintln!("A after SIGCONT ({status}):\n{stderr}");
    assert!(
        stderr.contains("CHILD put ended: Err("),
        "A's put must not succeed:\n{stderr}"
    );
    assert_eq!(
        env.object(&env.key("paused.txt")).await,
        Some(mine.clone()),
        "B's acknowledged object is still there"
    );
    assert!(
        stderr.contains("not sent"),
        "A's PUT must be held back by the lease clock:\n{stderr}"
    );
    env.wait_no_pending(Duration::from_secs(20)).await;
    let node = b.stat("m", "paused.txt").await.unwrap().node.unwrap();
    assert_eq!(node.generation, put.generation);
    let mut expected: Expected = BTreeMap::new();
    expected.insert(("m".into(), "paused.txt".into()), sha256_hex(&mine));
    invariants::check(&env, &expected).await;
    b.shutdown().await;
    env.cleanup().await;
}

/// F3: the owner is killed after a commit and before the notifier published its event (the
/// `before_publish` failpoint aborts the process; the owner process lingers after its put, so
/// its notifier surely gets there). The next owner's notifier publishes the committed event with
/// the event id the commit recorded; nothing is written again.
pub async fn f03_killed_after_the_commit_before_the_publish(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.exec.shutdown().await;
    let (mut a, log) = spawn_owner(&env, "one-put", "before_publish");
    let status = tokio::time::timeout(Duration::from_secs(60), a.wait())
        .await
        .expect("A ends")
        .unwrap();
    wait_stderr_closed(&log).await;
    let stderr = log.lock().unwrap().join("\n");
    assert!(
        !status.success() && stderr.contains("failpoint before_publish: aborting"),
        "A must die at before_publish: {status:?}\n{stderr}"
    );
    let rows = env
        .query(
            "SELECT j.state, o.event_id::text, o.published_at IS NULL FROM {schema}.journal j
             JOIN {schema}.outbox o ON o.journal_id = j.id",
            &[],
        )
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "committed");
    assert!(rows[0].get::<_, bool>(2), "not published before the kill");
    let event_id: String = rows[0].get(1);
    assert!(env.stream().await.is_empty());

    let b = executor(&env, "host-b").await;
    let events = env.wait_stream(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].0, event_id,
        "published with the committed event id"
    );
    assert_eq!(env.count("snapshots").await, 1);
    let mut expected: Expected = BTreeMap::new();
    expected.insert(
        ("m".into(), "paused.txt".into()),
        sha256_hex(&paused_body()),
    );
    invariants::check(&env, &expected).await;
    b.shutdown().await;
    env.cleanup().await;
}

per_backend! {
    #[cfg_attr(
        not(feature = "failpoints"),
        ignore = "needs --features failpoints (scripts/test.sh enables it)"
    )]
    f17_sigkill_of_the_owner_mid_work_is_taken_over => super::sigkill_of_the_owner_mid_work_is_taken_over(B);
    @except_moto
    #[cfg_attr(
        not(feature = "failpoints"),
        ignore = "needs --features failpoints (scripts/test.sh enables it)"
    )]
    an_owner_paused_past_its_lease_cannot_write => super::an_owner_paused_past_its_lease_cannot_write(B);
    #[cfg_attr(
        not(feature = "failpoints"),
        ignore = "needs --features failpoints (scripts/test.sh enables it)"
    )]
    a_paused_owner_sends_no_late_s3_write => super::a_paused_owner_sends_no_late_s3_write(B);
    #[cfg_attr(
        not(feature = "failpoints"),
        ignore = "needs --features failpoints (scripts/test.sh enables it)"
    )]
    f03_killed_after_the_commit_before_the_publish => super::f03_killed_after_the_commit_before_the_publish(B);
}
