//! The reference host's `/healthz` and `/metrics`, over real HTTP: figures move while operations
//! run; `filestore-s3 serve` answers them, exits cleanly on SIGTERM and gives its leases up.
//! Real Postgres, Redis, S3 (s3s-fs).

use crate::common;

use std::time::Duration;

use common::{Backend, TestEnv};
use filestore_s3::PutOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// `GET path` with HTTP/1.1 and `Connection: close`; (status, body).
pub(crate) async fn get(addr: &str, path: &str) -> (u16, String) {
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
pub(crate) fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
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
    // Recovery every half second: the stuck put below is settled soon after its cause is gone.
    let settings = filestore_s3_actors::SupervisorSettings {
        recovery_interval: Duration::from_millis(500),
        ..common::fast_settings()
    };
    let env = TestEnv::builder(Backend::S3sFs)
        .settings(settings)
        .build()
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(filestore_s3::http::serve_http(
        env.exec.clone(),
        listener,
        prometheus,
        filestore_s3::http::ServeOptions::default(),
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
    assert!(after.contains("filestore_s3_commit_batch_size"), "{after}");
    // Every relayed event records its commit → publish lag.
    env.wait_outbox_drained().await;
    let (_, relayed) = get(&addr, "/metrics").await;
    assert!(
        sample(
            &relayed,
            "filestore_s3_publish_lag_seconds_count",
            &["mount=\"m\""]
        ) >= 5.0,
        "{relayed}"
    );
    assert_eq!(
        sample(&after, "filestore_s3_mount_owned", &["mount=\"m\""]),
        1.0
    );
    assert_eq!(sample(&after, "filestore_s3_postgres_up", &[]), 1.0);
    assert_eq!(
        sample(&after, "filestore_s3_journal_pending", &["mount=\"m\""]),
        0.0
    );
    let (status, _) = get(&addr, "/nope").await;
    assert_eq!(status, 404);

    // A put whose commit Postgres refuses (a trigger stands in for any refusal) stays pending for
    // recovery: the pending figures show it, with its age, until recovery commits it.
    env.batch(
        "CREATE FUNCTION {schema}.refuse_stuck() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.path = 'stuck' THEN RAISE EXCEPTION 'refused by the test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_stuck BEFORE INSERT OR UPDATE ON {schema}.nodes
             FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_stuck();",
    )
    .await;
    env.exec
        .put_bytes("m", "stuck", vec![b'y'; 100], PutOptions::default())
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, stuck) = get(&addr, "/metrics").await;
    assert_eq!(
        sample(&stuck, "filestore_s3_journal_pending", &["mount=\"m\""]),
        1.0,
        "{stuck}"
    );
    let age = sample(
        &stuck,
        "filestore_s3_journal_oldest_pending_seconds",
        &["mount=\"m\""],
    );
    assert!((1.0..60.0).contains(&age), "{age}");
    let (_, body) = get(&addr, "/healthz").await;
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["mounts"]["m"]["journal_pending"], 1, "{body}");
    env.batch("DROP TRIGGER refuse_stuck ON {schema}.nodes")
        .await;
    env.wait_no_pending(Duration::from_secs(20)).await;
    let (_, settled) = get(&addr, "/metrics").await;
    assert_eq!(
        sample(&settled, "filestore_s3_journal_pending", &["mount=\"m\""]),
        0.0,
        "{settled}"
    );

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
    let served = spawn_serve(&env, "serve-child", &[]).await;
    served
        .wait_health(Duration::from_secs(10), |h| {
            h["mounts"]["m"]["lease"] == "owned"
        })
        .await;
    let (status, _) = get(&served.addr, "/healthz").await;
    assert_eq!(status, 200);
    let status = served.terminate(Duration::from_secs(40)).await;
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

/// A `filestore-s3 serve` child on this env's schema: the process and its HTTP address.
struct Served {
    child: tokio::process::Child,
    addr: String,
}

async fn spawn_serve(env: &TestEnv, owner: &str, extra: &[(&str, &str)]) -> Served {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .envs(env.child_vars())
        .env("FILESTORE_OWNER_ID", owner)
        .env("FILESTORE_LEASE_TTL_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
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
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served { child, addr }
}

impl Served {
    /// `/healthz` as JSON.
    async fn health(&self) -> serde_json::Value {
        let (_, body) = get(&self.addr, "/healthz").await;
        serde_json::from_str(&body).unwrap()
    }

    /// Waits (at most `within`) until `/healthz` satisfies `ok`.
    async fn wait_health(&self, within: Duration, ok: impl Fn(&serde_json::Value) -> bool) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let h = self.health().await;
            if ok(&h) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{h}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then the exit status (within `within`).
    async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exits within the deadline")
            .unwrap()
    }
}

/// Rows inserted, disabled and removed in `backend_mounts` while `serve` runs take effect
/// without a restart (LISTEN/NOTIFY): a new mount is served and owned within seconds; a disabled
/// one is reported disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_mount_rows() {
    let mut env = TestEnv::new(Backend::S3sFs).await;
    env.exec.shutdown().await;
    let served = spawn_serve(&env, "serve-live", &[]).await;
    served
        .wait_health(Duration::from_secs(10), |h| {
            h["mounts"]["m"]["lease"] == "owned"
        })
        .await;
    assert!(served.health().await["mounts"].get("late").is_none());

    // Insert a mount row with plain SQL, as an operator or a management tool would.
    let bucket = format!("{}-late", env.bucket);
    env.s3.create_bucket().bucket(&bucket).send().await.unwrap();
    env.extra
        .push(("late".into(), bucket.clone(), "late".into(), true));
    env.query(
        "INSERT INTO {schema}.backend_mounts (name, bucket, prefix, region, endpoint, path_style)
         SELECT 'late', $1, 'late', region, endpoint, path_style
         FROM {schema}.backend_mounts WHERE name = 'm'",
        &[&bucket],
    )
    .await;
    let inserted = std::time::Instant::now();
    served
        .wait_health(Duration::from_secs(5), |h| {
            h["mounts"]["late"]["state"] == "ready" && h["mounts"]["late"]["lease"] == "owned"
        })
        .await;
    eprintln!(
        "new mount owned by serve {:?} after the insert",
        inserted.elapsed()
    );

    env.query(
        "UPDATE {schema}.backend_mounts SET enabled = false WHERE name = 'late'",
        &[],
    )
    .await;
    served
        .wait_health(Duration::from_secs(5), |h| {
            h["mounts"]["late"]["state"] == "disabled"
        })
        .await;
    assert!(served.terminate(Duration::from_secs(40)).await.success());
    env.cleanup().await;
}

/// Parts recorded so far, all uploads.
async fn parts(env: &TestEnv) -> i64 {
    env.query("SELECT count(*) FROM {schema}.multipart_parts", &[])
        .await[0]
        .get(0)
}

/// SIGTERM while `serve` is uploading (it resumed a put whose process was killed): it exits
/// cleanly within its shutdown deadline, the upload left open and resumable; the next `serve`
/// resumes the same upload and commits it.
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh enables it)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_leaves_it_resumable() {
    const MIB: u64 = 1024 * 1024;
    let env = TestEnv::builder(Backend::S3sFs)
        .mount(|r| {
            r.multipart_threshold = (6 * MIB) as i64;
            r.part_size = (5 * MIB) as i64;
            r.part_concurrency = 1;
        })
        .build()
        .await;
    env.exec.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    let body: Vec<u8> = (0..(40 * 5 * MIB + 99))
        .map(|i| ((i * 7 + i / 13) % 256) as u8)
        .collect();
    std::fs::write(&file, &body).unwrap();

    // A put that starts the upload and is killed after two parts: the row stays pending.
    let mut put = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["put", "m", "big.bin"])
        .arg(&file)
        .args(["--idempotency-key", "big"])
        .envs(env.child_vars())
        .env("FILESTORE_LEASE_TTL_MS", "2000")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while parts(&env).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the put never uploaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    put.start_kill().unwrap();
    put.wait().await.unwrap();
    let killed_at = parts(&env).await;
    let upload: String = env
        .query("SELECT upload_id FROM {schema}.multipart_uploads", &[])
        .await[0]
        .get(0);

    // serve takes the mount over and resumes the upload; SIGTERM it while the upload runs.
    let served = spawn_serve(
        &env,
        "serve-1",
        &[("FILESTORE_SHUTDOWN_DEADLINE_MS", "500")],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while parts(&env).await <= killed_at {
        assert!(std::time::Instant::now() < deadline, "serve never resumed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = std::time::Instant::now();
    let status = served.terminate(Duration::from_secs(10)).await;
    eprintln!("serve exited {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status:?}");
    let rows = env.query("SELECT state FROM {schema}.journal", &[]).await;
    assert_eq!(rows[0].get::<_, String>(0), "pending", "cut off, not ended");
    let state: String = env
        .query("SELECT state FROM {schema}.multipart_uploads", &[])
        .await[0]
        .get(0);
    assert_eq!(state, "open", "left resumable, not aborted");
    let done_at_term = parts(&env).await;
    assert!(done_at_term < 40, "the upload was still running at SIGTERM");

    // The next serve resumes the same upload and commits it.
    let served = spawn_serve(&env, "serve-2", &[]).await;
    env.wait_no_pending(Duration::from_secs(120)).await;
    assert_eq!(
        env.only_upload().await,
        (upload.clone(), "completed".to_owned())
    );
    let j = env
        .query("SELECT state, committed_by FROM {schema}.journal", &[])
        .await;
    assert_eq!(j[0].get::<_, String>(0), "committed");
    assert_eq!(j[0].get::<_, Option<String>>(1).as_deref(), Some("serve-2"));
    let mut expected = common::invariants::Expected::new();
    expected.insert(("m".into(), "big.bin".into()), common::sha256_hex(&body));
    common::invariants::check(&env, &expected).await;
    assert!(served.terminate(Duration::from_secs(40)).await.success());
    env.cleanup().await;
}

/// The operations API (`/v1/...`) over real HTTP through its client: every call, the answers'
/// shapes, typed errors back, the token required, the feed as JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_api_runs_every_call_behind_its_token() {
    use filestore_s3::api::client::ServeClient;
    use filestore_s3::{DeleteManyOptions, Error, ListOptions, Location, OpKind, PutMode};
    let env = TestEnv::new(Backend::S3sFs).await;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(filestore_s3::http::serve_http(
        env.exec.clone(),
        listener,
        prometheus,
        filestore_s3::http::ServeOptions {
            token: Some("s3cret".into()),
            tls: None,
        },
        stopped,
    ));
    let url = format!("http://{addr}");
    let api = ServeClient::new(&url, Some("s3cret".into())).unwrap();

    // No token, a wrong one: refused, nothing done.
    for token in [None, Some("wrong".to_owned())] {
        let e = ServeClient::new(&url, token)
            .unwrap()
            .put(
                "m",
                "denied.txt",
                std::io::Cursor::new(b"x".to_vec()),
                Some(1),
                PutOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Forwarded { kind, retryable: false, .. } if kind == "unauthorized"),
            "{e:?}"
        );
    }
    assert!(matches!(
        api.stat("m", "denied.txt").await,
        Err(Error::NotFound { .. })
    ));

    // Put (streamed, with metadata and a content type), stat, list, get.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let opts = PutOptions {
        idempotency_key: Some("api-put-1".into()),
        content_type: Some("application/x-test".into()),
        metadata: [("colour".to_owned(), "blue".to_owned())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let put = api
        .put(
            "m",
            "dir/a b.bin",
            std::io::Cursor::new(body.clone()),
            Some(body.len() as u64),
            opts.clone(),
        )
        .await
        .unwrap();
    let node = put.node.clone().unwrap();
    assert_eq!(node.sha256.to_hex(), common::sha256_hex(&body));
    // Sent again with its key: the recorded result.
    let again = api
        .put(
            "m",
            "dir/a b.bin",
            std::io::Cursor::new(body.clone()),
            Some(body.len() as u64),
            opts,
        )
        .await
        .unwrap();
    assert_eq!(again, put);
    let stat = api.stat("m", "dir/a b.bin").await.unwrap();
    assert_eq!(
        stat.node.as_ref().map(|n| n.meta.size),
        Some(body.len() as u64)
    );
    let page = api
        .list(
            "m",
            "dir",
            &ListOptions {
                delimited: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1, "{page:?}");
    let mut got = Vec::new();
    assert_eq!(
        api.get("m", "dir/a b.bin", &mut got).await.unwrap(),
        body.len() as u64
    );
    assert_eq!(got, body);
    let mut none = Vec::new();
    assert!(matches!(
        api.get("m", "dir/missing", &mut none).await,
        Err(Error::NotFound { .. })
    ));
    // A create-only put over an existing path: the typed precondition error.
    let e = api
        .put(
            "m",
            "dir/a b.bin",
            std::io::Cursor::new(b"other".to_vec()),
            Some(5),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");

    // Copy, move, delete, delete_many.
    let from = Location::new("m", "dir/a b.bin");
    api.transfer(
        OpKind::Copy,
        &from,
        &Location::new("m", "copy.bin"),
        Some("api-cp".into()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    api.transfer(
        OpKind::Move,
        &Location::new("m", "copy.bin"),
        &Location::new("m", "moved.bin"),
        Some("api-mv".into()),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert!(matches!(
        api.stat("m", "copy.bin").await,
        Err(Error::NotFound { .. })
    ));
    api.delete("m", "moved.bin", Some("api-rm")).await.unwrap();
    let items = api
        .delete_many(
            "m",
            &["dir/a b.bin".to_owned(), "never.bin".to_owned()],
            &DeleteManyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok(), "{items:?}");
    assert!(
        matches!(&items[1], Err(Error::NotFound { path, .. }) if path == "never.bin"),
        "one answer per path, typed: {items:?}"
    );

    // The feed: every committed change as a JSON line, in commit order.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "GET /v1/mounts/m/events?after=0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer s3cret\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut ops = Vec::new();
    while ops.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the feed keeps coming")
            .unwrap()
            .unwrap();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(op) = v["event"]["op"].as_str() {
                ops.push(op.to_owned());
            }
        }
    }
    assert_eq!(ops, ["put", "copy", "move", "delete", "delete"], "{ops:?}");

    let _ = stop.send(true);
    let _ = http.await;
    env.cleanup().await;
}

/// `serve` over TLS: a client trusting the CA puts and gets through it, one that does not is
/// refused at the handshake (nothing done), and plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_api_over_tls() {
    use filestore_s3::api::client::ServeClient;
    use filestore_s3::Error;
    let env = TestEnv::new(Backend::S3sFs).await;
    let (ca, cert, key) = crate::tls::certificates();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("serve.crt"),
        dir.path().join("serve.key"),
    );
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let tls = filestore_s3::tls::serve_tls_config(&cert_file, &key_file).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(filestore_s3::http::serve_http(
        env.exec.clone(),
        listener,
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        filestore_s3::http::ServeOptions {
            token: Some("t".into()),
            tls: Some(tls),
        },
        stopped,
    ));
    let url = format!("https://localhost:{port}");
    let api = ServeClient::with_ca(&url, Some("t".into()), Some(&ca_file)).unwrap();
    api.put(
        "m",
        "tls.txt",
        std::io::Cursor::new(b"over tls".to_vec()),
        Some(8),
        PutOptions::default(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    api.get("m", "tls.txt", &mut got).await.unwrap();
    assert_eq!(got, b"over tls");
    // Not trusting the CA: refused at the handshake, before any request.
    let e = ServeClient::new(&url, Some("t".into()))
        .unwrap()
        .stat("m", "tls.txt")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Forwarded { kind, retryable: true, .. } if kind == "not_delivered"),
        "{e:?}"
    );
    // Plain HTTP to the TLS port: no answer.
    let plain = ServeClient::new(&format!("http://127.0.0.1:{port}"), Some("t".into()))
        .unwrap()
        .with_timeout(Duration::from_secs(3))
        .stat("m", "tls.txt")
        .await;
    assert!(plain.is_err(), "{plain:?}");
    let _ = stop.send(true);
    let _ = http.await;
    env.cleanup().await;
}
