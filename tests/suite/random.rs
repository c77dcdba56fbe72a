//! The randomised fault run (on moto): a seeded sequence of operations (puts, multipart puts from files,
//! copies, moves, deletes over a few colliding paths) executed by a chain of executor processes
//! behind the fault-injecting proxy (random 503 / 500, resets mid-part, flipped bytes, Complete
//! answering 200-with-error or losing its answer), each process killed at a random failpoint (the
//! next one resumes: recovery, then the operations from the first one not known done, re-sent with
//! their idempotency keys). At the end one more executor recovers, and the invariant checker
//! compares everything with the state one clean run of the sequence leaves.
//!
//! It prints its seed; `FILESTORE_TEST_SEED=<seed>` replays a run (the faults and kill points
//! follow the seed; timing may still differ). Defaults: seed 20261124, 200 operations, 20 kills.
//! A long run: `FILESTORE_TEST_SEED=$RANDOM FILESTORE_TEST_RANDOM_OPS=2000
//! FILESTORE_TEST_RANDOM_KILLS=200 cargo test --features filestore-s3/failpoints --test random`.

use crate::common;
use filestore_s3::Location;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::faultproxy::{Fault, FaultProxy, Op, Rule};
use common::invariants::{self, Expected};
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{DeleteOptions, Error, ExecutorConfig, PutOptions, S3Executor, TransferOptions};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

const MIB: usize = 1024 * 1024;
const CHILD_ENV: &str = "FILESTORE_TEST_RANDOM_CHILD";

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Step {
    Put { path: String, seed: u8, len: usize },
    PutFile { path: String, file: String },
    Copy { from: String, to: String },
    Move { from: String, to: String },
    Delete { path: String },
}

fn small(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The operations and the state one clean run of them leaves.
fn generate(
    rng: &mut rand::rngs::StdRng,
    n: usize,
    dir: &std::path::Path,
) -> (Vec<Step>, Expected) {
    let paths: Vec<String> = (0..8).map(|i| format!("r/p{i}")).collect();
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut steps = Vec::with_capacity(n);
    for i in 0..n {
        let roll = rng.random_range(0..100);
        let any = |rng: &mut rand::rngs::StdRng| paths[rng.random_range(0..paths.len())].clone();
        let existing: Vec<String> = model.keys().cloned().collect();
        let step = if existing.is_empty() || roll < 35 {
            let (path, seed, len) = (any(rng), rng.random::<u8>(), rng.random_range(1..3000));
            model.insert(path.clone(), sha256_hex(&small(seed, len)));
            Step::Put { path, seed, len }
        } else if roll < 45 {
            let path = any(rng);
            let len = rng.random_range(5 * MIB + 1..8 * MIB);
            let body = small(rng.random::<u8>(), len);
            let file = dir.join(format!("src-{i}"));
            std::fs::write(&file, &body).unwrap();
            model.insert(path.clone(), sha256_hex(&body));
            Step::PutFile {
                path,
                file: file.display().to_string(),
            }
        } else {
            let from = existing[rng.random_range(0..existing.len())].clone();
            let to = loop {
                let p = any(rng);
                if p != from {
                    break p;
                }
            };
            let content = model[&from].clone();
            if roll < 65 {
                model.insert(to.clone(), content);
                Step::Copy { from, to }
            } else if roll < 85 {
                model.remove(&from);
                model.insert(to.clone(), content);
                Step::Move { from, to }
            } else {
                model.remove(&from);
                Step::Delete { path: from }
            }
        };
        steps.push(step);
    }
    let expected = model
        .into_iter()
        .map(|(p, h)| (("m".to_owned(), p), h))
        .collect();
    (steps, expected)
}

async fn run_step(exec: &S3Executor, i: usize, step: &Step) -> Result<(), Error> {
    let key = Some(format!("op-{i}"));
    match step {
        Step::Put { path, seed, len } => exec
            .put_bytes(
                "m",
                path,
                small(*seed, *len),
                PutOptions {
                    idempotency_key: key,
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        Step::PutFile { path, file } => exec
            .put_file(
                "m",
                path,
                file,
                PutOptions {
                    idempotency_key: key,
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        Step::Copy { from, to } => exec
            .copy(
                &Location::new("m", from),
                &Location::new("m", to),
                TransferOptions {
                    idempotency_key: key,
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        Step::Move { from, to } => exec
            .move_object(
                &Location::new("m", from),
                &Location::new("m", to),
                TransferOptions {
                    idempotency_key: key,
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        Step::Delete { path } => exec
            .delete(
                "m",
                path,
                DeleteOptions {
                    idempotency_key: key,
                },
            )
            .await
            .map(drop),
    }
}

/// One executor process of the chain: runs the script from `start`, each step until it has a
/// definitive answer (retryable errors — the store's, `InProgress` while recovery settles an
/// earlier attempt, `NotOwner` until the lease is taken over — are retried), printing `DONE i`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a process of randomised_faults_and_kills (started by it)"]
async fn random_child() {
    let spec = std::env::var(CHILD_ENV).expect("started by randomised_faults_and_kills");
    let (script, start) = spec.split_once('@').unwrap();
    let steps: Vec<Step> = serde_json::from_str(&std::fs::read_to_string(script).unwrap()).unwrap();
    let start: usize = start.parse().unwrap();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let exec = S3Executor::start(ExecutorConfig::from_env().unwrap())
        .await
        .unwrap();
    for (i, step) in steps.iter().enumerate().skip(start) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match run_step(&exec, i, step).await {
                Ok(()) => {
                    // One write: a kill cannot cut the line (eprintln! may write it in pieces).
                    use std::io::Write as _;
                    let _ = std::io::stderr().write_all(format!("DONE {i}\n").as_bytes());
                    break;
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    eprintln!("ERR {i} {step:?}: {e}");
                    std::process::exit(3);
                }
            }
        }
    }
    exec.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh enables it)"
)]
async fn randomised_faults_and_kills() {
    // moto, not s3s-fs: s3s-fs 0.14.1 keeps a deleted object's stored SHA-256 and reports it for
    // a multipart upload completed later at the same key (docs/filestore.md), which a run that
    // reuses paths runs into; moto also lists multipart uploads, so I6 is checked.
    randomised(Backend::Moto).await
}

mod external {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs FILESTORE_TEST_S3_* (docs/testing.md); run with --ignored"]
    async fn randomised_faults_and_kills() {
        randomised(Backend::External).await
    }
}

async fn randomised(backend: Backend) {
    let seed = env_num("FILESTORE_TEST_SEED", 20261124);
    let n = env_num("FILESTORE_TEST_RANDOM_OPS", 200) as usize;
    let kills_wanted = env_num("FILESTORE_TEST_RANDOM_KILLS", 20) as usize;
    eprintln!("randomised run: seed {seed}, {n} operations, {kills_wanted} kills (replay with FILESTORE_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (steps, expected) = generate(&mut rng, n, dir.path());
    let script = dir.path().join("script.json");
    std::fs::write(&script, serde_json::to_string(&steps).unwrap()).unwrap();

    let proxy = FaultProxy::start(&common::endpoint_of(backend), seed).await;
    let p = |probability: f64, op: Option<Op>, fault: Fault| Rule {
        probability,
        ..Rule::always(op, fault)
    };
    proxy.add(p(0.03, None, Fault::Status(503, "SlowDown")));
    proxy.add(p(0.02, None, Fault::Status(500, "InternalError")));
    proxy.add(p(0.03, Some(Op::UploadPart), Fault::ResetAfter(64 * 1024)));
    proxy.add(p(0.03, Some(Op::PutObject), Fault::FlipByte));
    proxy.add(p(
        0.10,
        Some(Op::CompleteMultipartUpload),
        Fault::OkWithError,
    ));
    proxy.add(p(
        0.05,
        Some(Op::CompleteMultipartUpload),
        Fault::DropResponse,
    ));

    let env = TestEnv::builder(backend)
        .mount(|r| {
            r.multipart_threshold = (5 * MIB) as i64;
            r.part_size = (5 * MIB) as i64;
            r.part_concurrency = 2;
            r.verify_window_ms = 2000;
        })
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    env.exec.shutdown().await;

    let points = [
        "before_commit",
        "before_commit_transaction",
        "before_publish",
        "after_copied",
        "after_source_deleted",
        "after_complete",
    ];
    let spacing = (n / (kills_wanted + 5)).max(1) as u32;
    let (mut next, mut kills, mut process) = (0usize, 0usize, 0usize);
    while next < n {
        process += 1;
        assert!(process < kills_wanted + 50, "no progress: at step {next}");
        let failpoint = if kills < kills_wanted {
            // Mostly points every operation reaches; now and then one of a copy / move / upload.
            let i = if rng.random_bool(0.7) {
                rng.random_range(0..3)
            } else {
                rng.random_range(3..points.len())
            };
            let nth = if i < 3 {
                rng.random_range(1..=spacing)
            } else {
                rng.random_range(1..=2)
            };
            format!("{}=abort@{nth}", points[i])
        } else {
            String::new()
        };
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "random::random_child",
                "--ignored",
                "--nocapture",
            ])
            .envs(env.child_vars())
            .env(CHILD_ENV, format!("{}@{next}", script.display()))
            .env("FILESTORE_OWNER_ID", format!("random-{process}"))
            .env("FILESTORE_LEASE_TTL_MS", "1000")
            .env("FILESTORE_CONSISTENCY_HORIZON_MS", "0")
            .env(filestore_s3_actors::failpoint::FAILPOINTS_ENV, &failpoint)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "filestore_s3_actors=info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut aborted_at = None;
        let mut log: Vec<String> = Vec::new();
        let read = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.strip_prefix("DONE ") {
                    // A line cut by the kill reports nothing: that step is sent again.
                    if let Ok(i) = i.parse::<usize>() {
                        next = i + 1;
                    }
                } else if line.starts_with("ERR ") {
                    let tail = log[log.len().saturating_sub(60)..].join("\n");
                    panic!("seed {seed}, process {process} ({failpoint}): {line}\n{tail}");
                } else if line.starts_with("failpoint ") {
                    aborted_at = Some(line.clone());
                }
                log.push(line);
            }
        };
        tokio::time::timeout(Duration::from_secs(300), read)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: process {process} hung at step {next}"));
        let status = child.wait().await.unwrap();
        match aborted_at {
            Some(_) => {
                assert!(!status.success());
                kills += 1;
            }
            None => assert!(
                status.success(),
                "seed {seed}: process {process} ended with {status:?} at step {next}"
            ),
        }
    }
    assert!(
        kills >= kills_wanted,
        "seed {seed}: only {kills} of {kills_wanted} kills happened"
    );

    // One more executor settles whatever the last kill left, on a healthy store.
    proxy.clear();
    let exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        exec.status("m").await.unwrap().lease,
        filestore_s3_actors::commands::LeaseStatus::Owned { .. }
    ) {
        assert!(Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.wait_no_pending(Duration::from_secs(60)).await;
    let faults = proxy.seen().iter().filter(|s| s.fault.is_some()).count();
    eprintln!(
        "seed {seed}: {n} operations, {process} processes, {kills} killed at failpoints, {faults} wire faults of {} requests",
        proxy.seen().len()
    );
    invariants::check(&env, &expected).await;
    exec.shutdown().await;
    env.cleanup().await;
}
