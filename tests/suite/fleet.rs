//! A fleet of three `filestore-s3 serve` processes (the reference binary) on one database and
//! twelve mounts: ownership settles at 4 / 4 / 4; one host SIGKILLed, its mounts go to the other
//! two and their pending rows are settled; started again, it gets its share back by graceful
//! hand-over. Throughout, a client sends puts to every host for every mount: each call succeeds
//! or fails with a retryable error (sent again with its key until it succeeds), and at the end
//! every acknowledged write is there and I1–I6 hold. A put sent to a host that does not own the
//! mount is forwarded to the owner and runs once (S3 requests counted at a proxy); the CLI's put
//! goes through `serve` when FILESTORE_SERVE_URL is set. Real Postgres, Redis, S3 servers.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faultproxy::Op;
use common::invariants::{self, Expected};
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::api::client::ServeClient;
use filestore_s3::PutOptions;

/// Lease duration of the hosts (their heartbeat too) and their settle period.
const TTL_MS: u64 = 2000;
const SETTLE_MS: u64 = 2000;
const TOKEN: &str = "fleet-test-token";
const MOUNTS: usize = 12;

struct Host {
    name: String,
    url: String,
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_host(env: &TestEnv, name: &str, port: u16, dir: &std::path::Path) -> Host {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .envs(env.child_vars())
        .env("FILESTORE_OWNER_ID", name)
        .env("FILESTORE_LEASE_TTL_MS", TTL_MS.to_string())
        .env("FILESTORE_FLEET_SETTLE_MS", SETTLE_MS.to_string())
        .env("FILESTORE_SERVE_TOKEN", TOKEN)
        .env("FILESTORE_SHUTDOWN_DEADLINE_MS", "5000")
        .env("RUST_LOG", "warn,filestore_s3::fleet=info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Host {
        name: name.into(),
        url: format!("http://127.0.0.1:{port}"),
        child,
        log,
    }
}

/// Live leases per owner.
async fn ownership(env: &TestEnv) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for r in env
        .query(
            "SELECT owner FROM {schema}.mount_leases WHERE expires_at > now()",
            &[],
        )
        .await
    {
        *by.entry(r.get::<_, String>(0)).or_insert(0) += 1;
    }
    by
}

/// Waits until the live leases are held exactly as `want` (owner → mounts); the time it took.
async fn settle_at(
    env: &TestEnv,
    want: &[(&str, usize)],
    within: Duration,
    hosts: &[&Host],
) -> Duration {
    let want: BTreeMap<String, usize> = want.iter().map(|(o, n)| (o.to_string(), *n)).collect();
    let started = Instant::now();
    loop {
        let now = ownership(env).await;
        if now == want {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let logs: Vec<String> = hosts
                .iter()
                .map(|h| {
                    let text = std::fs::read_to_string(&h.log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    format!(
                        "--- {}:\n{}",
                        h.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!(
                "ownership {now:?}, wanted {want:?} within {within:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mount_name(i: usize) -> String {
    if i == 0 {
        "m".into()
    } else {
        format!("m{i:02}")
    }
}

/// One client call: a small put of a path of its own, through `host`.
#[derive(Clone)]
struct Call {
    host: usize,
    mount: String,
    path: String,
    key: String,
    body: Vec<u8>,
}

async fn send(urls: &[String], c: &Call) -> Result<(), filestore_s3::Error> {
    let client = ServeClient::new(&urls[c.host], Some(TOKEN.into()))
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let opts = PutOptions {
        idempotency_key: Some(c.key.clone()),
        ..Default::default()
    };
    let n = c.body.len() as u64;
    client
        .put(
            &c.mount,
            &c.path,
            std::io::Cursor::new(c.body.clone()),
            Some(n),
            opts,
        )
        .await
        .map(|_| ())
}

pub async fn three_hosts_balance_twelve_mounts(backend: Backend) {
    let (proxy, mut env) = TestEnv::builder(backend).behind_proxy(2612).await;
    for i in 1..MOUNTS {
        env.add_mount(&mount_name(i), |_| {}).await;
    }
    // The hosts are the children; the test's own executor gives its leases back.
    env.exec.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut a = start_host(&env, "host-a", ports[0], dir.path()).await;
    let mut b = start_host(&env, "host-b", ports[1], dir.path()).await;
    let c = start_host(&env, "host-c", ports[2], dir.path()).await;
    let urls: Vec<String> = [&a, &b, &c].iter().map(|h| h.url.clone()).collect();
    let t0 = Instant::now();

    // 1. Ownership settles at 4 / 4 / 4.
    let took = settle_at(
        &env,
        &[("host-a", 4), ("host-b", 4), ("host-c", 4)],
        Duration::from_secs(60),
        &[&a, &b, &c],
    )
    .await;
    eprintln!("cold start: 4 / 4 / 4 after {took:?}");

    // The client: puts to every host for every mount, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Call>>> = Arc::default();
    let retry: Arc<Mutex<Vec<Call>>> = Arc::default();
    let kinds: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let client = {
        let (stop, acked, retry, urls, kinds) = (
            stop.clone(),
            acked.clone(),
            retry.clone(),
            urls.clone(),
            kinds.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // One call per host at a time, about ten a second: enough to cross every
                // hand-over and the kill, few enough for the check at the end.
                let batch: Vec<Call> = (0..3)
                    .map(|k| {
                        let n = i + k;
                        Call {
                            host: n % 3,
                            mount: mount_name((n / 3) % MOUNTS),
                            path: format!("fleet/{n}.txt"),
                            key: format!("fleet-{n}"),
                            body: format!("put {n} through host {}", n % 3).into_bytes(),
                        }
                    })
                    .collect();
                i += batch.len();
                let results = futures::future::join_all(batch.iter().map(|c| send(&urls, c))).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
                for (c, r) in batch.into_iter().zip(results) {
                    match r {
                        Ok(()) => acked.lock().unwrap().push(c),
                        Err(e) => {
                            assert!(e.is_retryable(), "{}: a non-retryable error: {e}", c.path);
                            *kinds.lock().unwrap().entry(kind_of(&e)).or_default() += 1;
                            retry.lock().unwrap().push(c);
                        }
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. SIGKILL host-c: its four mounts go to the other two, 6 / 6.
    let mut c = c;
    c.child.start_kill().unwrap();
    let _ = c.child.wait().await;
    let took = settle_at(
        &env,
        &[("host-a", 6), ("host-b", 6)],
        Duration::from_millis(TTL_MS + 1000),
        &[&a, &b],
    )
    .await;
    eprintln!("SIGKILL of host-c: 6 / 6 after {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. Started again (a new run, a new id): it gets its share back by hand-over.
    let c2 = start_host(&env, "host-c2", ports[2], dir.path()).await;
    let took = settle_at(
        &env,
        &[("host-a", 4), ("host-b", 4), ("host-c2", 4)],
        Duration::from_secs(60),
        &[&a, &b, &c2],
    )
    .await;
    eprintln!("host-c started again: 4 / 4 / 4 after {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    client.await.unwrap();

    // Calls that failed (retryably) are sent again with their key until they succeed.
    let failed: Vec<Call> = std::mem::take(&mut *retry.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &failed {
        loop {
            match send(&urls, c).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.is_retryable(), "{}: {e}", c.path);
                    assert!(Instant::now() < deadline, "{}: still failing: {e}", c.path);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        acked.lock().unwrap().push(c.clone());
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "client: {} puts acknowledged ({} of them after a retryable failure: {:?}); {:?} so far",
        acked.len(),
        failed.len(),
        kinds.lock().unwrap(),
        t0.elapsed()
    );
    assert!(
        acked.len() >= 36,
        "the client made progress: {}",
        acked.len()
    );
    // Which host committed what: every mount's commits came from its owners of the time.
    let hosts_committing: Vec<String> = env
        .query(
            "SELECT DISTINCT committed_by FROM {schema}.journal WHERE state = 'committed'",
            &[],
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!("committed by {hosts_committing:?}");

    // 4. A put sent to a host that does not own the mount is forwarded and runs once.
    let leases = env
        .query(
            "SELECT mount, owner FROM {schema}.mount_leases WHERE expires_at > now()",
            &[],
        )
        .await;
    let (mount, owner): (String, String) = leases
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .find(|(_, o): &(String, String)| o == "host-a")
        .expect("host-a owns mounts");
    let before = proxy
        .seen()
        .iter()
        .filter(|s| s.op == Op::PutObject && s.key.ends_with("/forwarded.bin"))
        .count();
    let call = Call {
        host: 1, // host-b
        mount: mount.clone(),
        path: "forwarded.bin".into(),
        key: "forwarded-once".into(),
        body: b"sent to host-b, run by host-a".to_vec(),
    };
    send(&urls, &call).await.unwrap();
    // The same call again (say its answer was lost): the recorded result, nothing sent.
    send(&urls, &call).await.unwrap();
    let puts = proxy
        .seen()
        .iter()
        .filter(|s| s.op == Op::PutObject && s.key.ends_with("/forwarded.bin"))
        .count()
        - before;
    assert_eq!(puts, 1, "one PutObject for a call forwarded twice");
    let by: String = env
        .query(
            "SELECT committed_by FROM {schema}.journal WHERE idempotency_key = 'forwarded-once'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(by, owner, "run by the mount's owner");
    // What the hosts say: host-b counted its forwarded calls; host-a sees the fleet at 4 / 4 / 4.
    let b_addr = urls[1].trim_start_matches("http://");
    let (status, metrics) = crate::serve::get(b_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        crate::serve::sample(
            &metrics,
            "filestore_s3_forwarded_calls_total",
            &["op=\"put\"", "outcome=\"ok\""]
        ) >= 1.0,
        "{metrics}"
    );
    let (_, health) = crate::serve::get(urls[0].trim_start_matches("http://"), "/healthz").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let fleet = &health["fleet"];
    assert_eq!(fleet["owner"], "host-a", "{health}");
    assert_eq!(fleet["owned"], 4, "{health}");
    assert_eq!(fleet["share"], 4, "{health}");
    assert_eq!(fleet["hosts"].as_array().map(Vec::len), Some(3), "{health}");
    assert!(fleet["handovers"].as_u64().is_some(), "{health}");

    // 5. The CLI's put goes through serve (to host-b, forwarded where needed), with progress.
    let file = dir.path().join("cli.bin");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["put", &mount, "cli/through-serve.bin"])
        .arg(&file)
        .arg("--progress-json")
        .envs(env.child_vars())
        .env("FILESTORE_SERVE_URL", &urls[1])
        .env("FILESTORE_SERVE_TOKEN", TOKEN)
        // Not used through serve: a database it cannot reach proves it.
        .env(
            "FILESTORE_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.contains("\"bytes_done\"")),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.contains("\"result\"")), "{stdout}");

    // Every acknowledged write is there, and I1–I6 hold.
    let mut expected: Expected = acked
        .iter()
        .map(|c| ((c.mount.clone(), c.path.clone()), sha256_hex(&c.body)))
        .collect();
    expected.insert(
        (mount.clone(), "forwarded.bin".into()),
        sha256_hex(&call.body),
    );
    expected.insert(
        (mount.clone(), "cli/through-serve.bin".into()),
        sha256_hex(&body),
    );
    // The hosts stop (SIGTERM: leases released, heartbeats removed) before the check.
    for h in [&mut a, &mut b] {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &h.child.id().unwrap().to_string()])
            .status();
    }
    let mut c2 = c2;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &c2.child.id().unwrap().to_string()])
        .status();
    for h in [&mut a, &mut b, &mut c2] {
        let _ = tokio::time::timeout(Duration::from_secs(20), h.child.wait()).await;
    }
    let hosts_left: i64 = env
        .query(
            "SELECT count(*) FROM {schema}.executor_hosts WHERE expires_at > now()",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(hosts_left, 0, "stopped hosts leave the fleet");
    let nodes: HashMap<(String, String), String> = env
        .query("SELECT mount, path, sha256 FROM {schema}.nodes", &[])
        .await
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get::<_, String>(2)))
        .collect();
    for ((m, p), sha) in &expected {
        assert_eq!(
            nodes.get(&(m.clone(), p.clone())),
            Some(sha),
            "acknowledged write {m}:{p}"
        );
    }
    eprintln!("hosts stopped; {:?} so far", t0.elapsed());
    invariants::check(&env, &expected).await;
    eprintln!("checked; {:?} in all", t0.elapsed());
    env.cleanup().await;
}

/// What kind of retryable error a call met.
fn kind_of(e: &filestore_s3::Error) -> String {
    match e {
        filestore_s3::Error::Forwarded { kind, .. } => kind.clone(),
        other => format!("{other:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("?")
            .to_owned(),
    }
}

per_backend! {
    @except_moto
    three_hosts_balance_twelve_mounts => super::three_hosts_balance_twelve_mounts(B);
}
