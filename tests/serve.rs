//! The reference host's `/healthz` and `/metrics`, over real HTTP: figures move while operations
//! run; `filestore-s3 serve` answers them, exits cleanly on SIGTERM and gives its leases up.
//! Real Postgres, Redis, S3 (s3s-fs).

mod common;

use std::time::Duration;

use common::{Backend, TestEnv};
use filestore_s3::PutOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// `GET path` with HTTP/1.1 and `Connection: close`; (status, body).
async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample of `name` whose labels contain `labels`, or 0.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_move_with_operations() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let env = TestEnv::new(Backend::S3sFs).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(filestore_s3::http::serve_http(
        env.exec.clone(),
        listener,
        prometheus,
        stopped,
    ));

    let (status, body) = get(&addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["postgres"]["ok"], true);
    assert_eq!(h["redis"]["ok"], true);
    assert_eq!(h["mounts"]["m"]["state"], "ready");
    assert_eq!(h["mounts"]["m"]["lease"], "owned");
    assert_eq!(h["mounts"]["m"]["s3"]["ok"], true);

    let (_, before) = get(&addr, "/metrics").await;
    let puts_before = sample(
        &before,
        "filestore_s3_operations_total",
        &["op=\"put\"", "outcome=\"committed\""],
    );
    for i in 0..5 {
        env.exec
            .put_bytes(
                "m",
                &format!("m/{i}"),
                vec![b'x'; 100],
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let (status, after) = get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    let puts_after = sample(
        &after,
        "filestore_s3_operations_total",
        &["op=\"put\"", "outcome=\"committed\""],
    );
    assert_eq!(puts_after - puts_before, 5.0, "{after}");
    assert!(after.contains("filestore_s3_operation_seconds"), "{after}");
    assert!(after.contains("filestore_s3_commit_seconds"), "{after}");
    assert_eq!(
        sample(&after, "filestore_s3_mount_owned", &["mount=\"m\""]),
        1.0
    );
    assert_eq!(sample(&after, "filestore_s3_postgres_up", &[]), 1.0);
    let (status, _) = get(&addr, "/nope").await;
    assert_eq!(status, 404);

    stop.send(true).unwrap();
    http.await.unwrap();
    env.cleanup().await;
}

/// `filestore-s3 serve` as a process: answers /healthz, and on SIGTERM drains, gives its lease up
/// and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_and_stops_cleanly_on_sigterm() {
    let env = TestEnv::new(Backend::S3sFs).await;
    env.exec.shutdown().await; // the child owns the mount
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FILESTORE_DATABASE_URL", common::database_url())
        .env("FILESTORE_DB_SCHEMA", &env.schema)
        .env("FILESTORE_REDIS_URL", common::redis_url())
        .env("FILESTORE_REDIS_PREFIX", &env.redis_prefix)
        .env("FILESTORE_OWNER_ID", "serve-child")
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("listening on http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&addr, "/healthz").await;
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status == 200 && h["mounts"]["m"]["lease"] == "owned" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().unwrap() as i32;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("exits within the drain deadline")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rows = env
        .query(
            "SELECT owner, expires_at <= now() FROM {schema}.mount_leases WHERE mount = 'm'",
            &[],
        )
        .await;
    assert_eq!(rows[0].get::<_, String>(0), "serve-child");
    assert!(rows[0].get::<_, bool>(1), "the lease was given up");
    env.cleanup().await;
}
