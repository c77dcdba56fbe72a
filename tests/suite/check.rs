//! `filestore-s3 check` and `S3Executor::check`: a clean mount is reported clean; each kind of
//! drift, planted with SQL and a raw S3 client while no executor runs the mount, is reported
//! once, naming the right path; the check sends no request that changes the bucket (counted at
//! the proxy) and changes no row. The CLI exits 0 / 1 / 2. Real Postgres, S3 servers.

use crate::common;

use common::faultproxy::Op;
use common::{Backend, TestEnv};
use filestore_s3::{CheckOptions, ExecutorConfig, PutOptions, S3Executor};

/// Rows of the tables the check reads, to compare before and after it.
async fn tables(env: &TestEnv) -> Vec<String> {
    let mut all = Vec::new();
    for sql in [
        "SELECT id || state || coalesce(error, '') || updated_at::text FROM {schema}.journal ORDER BY id",
        "SELECT path || etag || storage_class || updated_at::text FROM {schema}.nodes ORDER BY path",
        "SELECT id || coalesce(published_at::text, '-') FROM {schema}.outbox ORDER BY id",
        "SELECT mount || owner || epoch || expires_at::text FROM {schema}.mount_leases",
    ] {
        for r in env.query(sql, &[]).await {
            all.push(r.get::<_, String>(0));
        }
    }
    all
}

fn mutating(proxy: &common::faultproxy::FaultProxy) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| {
            !matches!(
                s.op,
                Op::HeadObject | Op::GetObject | Op::ListObjects | Op::ListParts | Op::Bucket
            )
        })
        .count()
}

pub async fn each_kind_of_drift_is_reported_once(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend).behind_proxy(2712).await;
    for p in [
        "a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt", "g.txt", "h.txt", "ok.txt",
    ] {
        env.exec
            .put_bytes(
                "m",
                p,
                format!("content of {p}").into_bytes(),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    // Everything relayed, nothing pending: then the owner goes, and a passive executor checks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left: i64 = env
            .query(
                "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL",
                &[],
            )
            .await[0]
            .get(0);
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "events not relayed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    env.exec.shutdown().await;
    let mut config: ExecutorConfig = env.exec.config().clone();
    config.passive = true;
    config.watch_mounts = false;
    config.owner_id = "checker".into();
    let checker = S3Executor::start(config).await.unwrap();

    let clean = checker.check("m", CheckOptions::default()).await.unwrap();
    assert!(clean.clean, "{clean:?}");
    assert_eq!((clean.nodes, clean.objects), (9, 9));

    // Plant one of each kind.
    let s3 = &env.s3;
    let bucket = env.bucket.as_str();
    let put_raw = |key: String, body: &'static [u8]| async move {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(body.to_vec().into())
            .send()
            .await
            .unwrap();
    };
    s3.delete_object()
        .bucket(&env.bucket)
        .key(env.key("a.txt"))
        .send()
        .await
        .unwrap();
    put_raw(env.key("b.txt"), b"longer than the content of b.txt").await;
    put_raw(env.key("c.txt"), b"CONTENT OF c.txt").await;
    put_raw(
        env.key("raw/behind.txt"),
        b"written behind the executor's back",
    )
    .await;
    env.batch(
        "DELETE FROM {schema}.nodes WHERE mount = 'm' AND path = 'd.txt';
         UPDATE {schema}.nodes SET storage_class = 'GLACIER' WHERE mount = 'm' AND path = 'h.txt';",
    )
    .await;
    let id =
        |p: &str| format!("(SELECT id FROM {{schema}}.journal WHERE mount = 'm' AND path = '{p}')");
    env.batch(&format!(
        "UPDATE {{schema}}.journal SET state = 'pending', result = NULL, updated_at = now() - interval '1 hour' WHERE id = {e};
         DELETE FROM {{schema}}.outbox WHERE journal_id = {f};
         UPDATE {{schema}}.outbox SET published_at = NULL, created_at = now() - interval '1 hour' WHERE journal_id = {g};
         UPDATE {{schema}}.journal SET state = 'failed', result = NULL, error = 'planted' WHERE id = {ok};",
        e = id("e.txt"),
        f = id("f.txt"),
        g = id("g.txt"),
        ok = id("ok.txt"),
    ))
    .await;
    // A key that maps to no path: only where the store keeps it as sent (s3s-fs folds '//').
    let unmapped = backend == Backend::Moto;
    if unmapped {
        put_raw(format!("{}/bad//name", env.row.prefix), b"x").await;
    }

    let before = (tables(&env).await, mutating(&proxy));
    let opts = CheckOptions {
        head_unlisted_etags: true,
        ..Default::default()
    };
    let r = checker.check("m", opts).await.unwrap();
    assert_eq!(
        (tables(&env).await, mutating(&proxy)),
        before,
        "the check changed a row or sent a request that changes the bucket"
    );
    let found = |kind: &str| -> Vec<String> {
        r.findings
            .get(kind)
            .map(|f| {
                assert_eq!(f.count as usize, f.examples.len(), "{kind}: {f:?}");
                f.examples
                    .iter()
                    .map(|e| {
                        e["path"]
                            .as_str()
                            .or(e["key"].as_str())
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(found("node_without_object"), ["a.txt"], "{r:#?}");
    assert_eq!(found("size_mismatch"), ["b.txt"], "{r:#?}");
    assert_eq!(found("etag_mismatch"), ["c.txt"], "{r:#?}");
    assert_eq!(found("object_without_node"), ["raw/behind.txt"], "{r:#?}");
    assert_eq!(found("object_without_node_marked"), ["d.txt"], "{r:#?}");
    let marked = &r.findings["object_without_node_marked"].examples[0];
    assert_eq!(marked["journal_state"], "committed", "{marked}");
    assert_eq!(found("storage_class_mismatch"), ["h.txt"], "{r:#?}");
    assert_eq!(found("pending_stale"), ["e.txt"], "{r:#?}");
    assert_eq!(found("committed_without_event"), ["f.txt"], "{r:#?}");
    assert_eq!(found("event_unpublished"), ["g.txt"], "{r:#?}");
    assert_eq!(found("failed_with_object"), ["ok.txt"], "{r:#?}");
    let expected_kinds = if unmapped { 11 } else { 10 };
    if unmapped {
        assert_eq!(found("unmapped_key").len(), 1, "{r:#?}");
    }
    assert_eq!(r.findings.len(), expected_kinds, "no other finding: {r:#?}");
    assert!(!r.clean);
    assert_eq!(r.version, filestore_s3::CHECK_REPORT_VERSION);

    // The reference binary: exit 1 with the report as JSON; 2 when the check cannot run.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["check", "m", "--json"])
        .envs(env.child_vars())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["findings"]["size_mismatch"]["count"], 1);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["check", "nope"])
        .envs(env.child_vars())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    checker.shutdown().await;
    env.cleanup().await;
}

/// With a check interval, the owner checks its mounts on its own: the last summary in
/// `/healthz`'s data, drift found in the bucket after a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_checks_its_mounts_on_a_schedule() {
    let env = TestEnv::builder(Backend::S3sFs)
        .config(|c| c.check_interval = Some(std::time::Duration::from_millis(300)))
        .build()
        .await;
    env.exec
        .put_bytes("m", "kept.txt", b"kept".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let summary = |h: &filestore_s3::Health| h.mounts["m"].last_check.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if summary(&env.exec.health_with(false).await).is_some_and(|s| s.clean) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no clean check");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    env.s3
        .put_object()
        .bucket(&env.bucket)
        .key(env.key("stray.txt"))
        .body(b"stray".to_vec().into())
        .send()
        .await
        .unwrap();
    loop {
        let s = summary(&env.exec.health_with(false).await);
        if let Some(s) = s.filter(|s| !s.clean) {
            assert_eq!(s.findings.get("object_without_node"), Some(&1), "{s:?}");
            assert_eq!(s.findings.len(), 1, "{s:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stray object was not found"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    env.cleanup().await;
}

per_backend! {
    each_kind_of_drift_is_reported_once => super::each_kind_of_drift_is_reported_once(B);
}
