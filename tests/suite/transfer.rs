//! Copy and move, end to end: within a mount, across mounts (two buckets, different prefixes),
//! through UploadPartCopy, streamed between mounts that do not share an endpoint; conditions and
//! refusals; one execution for concurrent duplicates. Real Postgres, Redis and S3 servers; the same
//! suite for every server.

use crate::common;
use filestore_s3::Location;

use common::faultproxy::FaultProxy;
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{Error, OpResult, PutMode, PutOptions, TransferOptions};

const MIB: usize = 1024 * 1024;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

fn key_opts(k: &str) -> TransferOptions {
    TransferOptions {
        idempotency_key: Some(k.into()),
        ..Default::default()
    }
}

async fn put(env: &TestEnv, mount: &str, path: &str, body: &[u8]) -> OpResult {
    env.exec
        .put_bytes(mount, path, body.to_vec(), PutOptions::default())
        .await
        .unwrap()
}

/// The node of `mount`/`path`: (object key, size, sha256, generation, verified).
async fn node(
    env: &TestEnv,
    mount: &str,
    path: &str,
) -> Option<(String, i64, String, i64, String)> {
    env.query(
        "SELECT object_key, size, sha256, generation, verified FROM {schema}.nodes WHERE mount = $1 AND path = $2",
        &[&mount, &path],
    )
    .await
    .first()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

/// (generation, deleted) of every snapshot of `mount`/`path`, oldest first.
async fn snapshots(env: &TestEnv, mount: &str, path: &str) -> Vec<(i64, bool)> {
    env.query(
        "SELECT generation, deleted FROM {schema}.snapshots WHERE mount = $1 AND path = $2 ORDER BY generation",
        &[&mount, &path],
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Asserts the journal row of a transfer: committed, its op and its source.
async fn assert_journal(env: &TestEnv, r: &OpResult, op: &str, source_mount: &str, source: &str) {
    let rows = env
        .query(
            "SELECT state, op, source_mount, source_path, mount FROM {schema}.journal WHERE id = $1",
            &[&r.journal_id],
        )
        .await;
    assert_eq!(rows[0].get::<_, String>(0), "committed");
    assert_eq!(rows[0].get::<_, String>(1), op);
    assert_eq!(
        rows[0].get::<_, Option<String>>(2).as_deref(),
        Some(source_mount)
    );
    assert_eq!(rows[0].get::<_, Option<String>>(3).as_deref(), Some(source));
    assert_eq!(rows[0].get::<_, String>(4), r.mount);
}

/// Asserts the last event of `mount`'s stream is this transfer's.
async fn assert_event(env: &TestEnv, stream_mount: &str, n: usize, r: &OpResult, source: &str) {
    let events = env.wait_stream_of(stream_mount, n).await;
    let (_, e) = events
        .iter()
        .rev()
        .find(|(_, e)| e["journal_id"] == r.journal_id)
        .unwrap_or_else(|| panic!("no event of journal {} in {events:?}", r.journal_id));
    assert_eq!(e["op"], r.op.as_str());
    assert_eq!(e["path"], r.path.as_str());
    assert_eq!(e["source_path"], source);
    assert_eq!(e["generation"], r.generation);
    assert_eq!(
        e["sha256"],
        r.node.as_ref().unwrap().sha256.to_hex().as_str()
    );
    if stream_mount == r.mount {
        assert_eq!(e["event_id"], r.event_id.to_string().as_str());
    }
}

pub async fn copy_and_move_within_a_mount(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let body = data(300_000, 1);
    put(&env, "m", "src/a.bin", &body).await;

    let c = env
        .exec
        .copy(
            &Location::new("m", "src/a.bin"),
            &Location::new("m", "dst/copy.bin"),
            key_opts("cp-1"),
        )
        .await
        .unwrap();
    assert_eq!(env.object(&env.key("dst/copy.bin")).await.unwrap(), body);
    assert_eq!(env.object(&env.key("src/a.bin")).await.unwrap(), body);
    let n = node(&env, "m", "dst/copy.bin").await.unwrap();
    assert_eq!(
        (n.0.as_str(), n.1, n.2.as_str(), n.3),
        (
            env.key("dst/copy.bin").as_str(),
            body.len() as i64,
            sha256_hex(&body).as_str(),
            1
        )
    );
    assert_ne!(n.4, "size-only", "a copy is proven by more than its size");
    assert!(node(&env, "m", "src/a.bin").await.is_some());
    assert_eq!(snapshots(&env, "m", "dst/copy.bin").await, vec![(1, false)]);
    assert_journal(&env, &c, "copy", "m", "src/a.bin").await;
    assert_event(&env, "m", 2, &c, "src/a.bin").await;

    let m = env
        .exec
        .move_object(
            &Location::new("m", "src/a.bin"),
            &Location::new("m", "moved/b.bin"),
            key_opts("mv-1"),
        )
        .await
        .unwrap();
    assert_eq!(env.object(&env.key("moved/b.bin")).await.unwrap(), body);
    assert!(
        env.object(&env.key("src/a.bin")).await.is_none(),
        "source still in S3"
    );
    assert!(
        node(&env, "m", "src/a.bin").await.is_none(),
        "source node survived"
    );
    assert_eq!(
        node(&env, "m", "moved/b.bin").await.unwrap().2,
        sha256_hex(&body)
    );
    // The source's history ends with a deletion, in the same commit (one journal row).
    assert_eq!(
        snapshots(&env, "m", "src/a.bin").await,
        vec![(1, false), (2, true)]
    );
    let by_journal = env
        .query(
            "SELECT mount, path, deleted FROM {schema}.snapshots WHERE journal_id = $1 ORDER BY path",
            &[&m.journal_id],
        )
        .await;
    assert_eq!(by_journal.len(), 2);
    assert_journal(&env, &m, "move", "m", "src/a.bin").await;
    assert_event(&env, "m", 3, &m, "src/a.bin").await;
    assert_eq!(env.count("journal").await, 3);
    assert_eq!(env.count("outbox").await, 3);
    let progress = env
        .query(
            "SELECT progress->>'phase' FROM {schema}.journal WHERE id = $1",
            &[&m.journal_id],
        )
        .await;
    assert_eq!(
        progress[0].get::<_, Option<String>>(0).as_deref(),
        Some("source_deleted")
    );

    // The same calls again with their keys: the recorded results, nothing new.
    let again = env
        .exec
        .move_object(
            &Location::new("m", "src/a.bin"),
            &Location::new("m", "moved/b.bin"),
            key_opts("mv-1"),
        )
        .await
        .unwrap();
    assert_eq!(again, m);
    assert_eq!(env.count("journal").await, 3);
    env.cleanup().await;
}

pub async fn copy_and_move_across_mounts(backend: Backend) {
    let mut env = TestEnv::new(backend).await;
    let other = env.add_mount("m2", |_| {}).await;
    let body = data(70_000, 2);
    put(&env, "m", "a.txt", &body).await;
    put(&env, "m", "b.txt", &body[..1000]).await;

    let c = env
        .exec
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("m2", "in/a.txt"),
            key_opts("x-cp"),
        )
        .await
        .unwrap();
    let dest_key = format!("{}/in/a.txt", other.prefix);
    assert_eq!(c.key, dest_key);
    assert_eq!(env.object_in(&other.bucket, &dest_key).await.unwrap(), body);
    assert_eq!(
        node(&env, "m2", "in/a.txt").await.unwrap().2,
        sha256_hex(&body)
    );
    assert!(node(&env, "m", "a.txt").await.is_some());
    assert_journal(&env, &c, "copy", "m", "a.txt").await;
    assert_event(&env, "m2", 1, &c, "a.txt").await;

    let m = env
        .exec
        .move_object(
            &Location::new("m", "b.txt"),
            &Location::new("m2", "in/b.txt"),
            key_opts("x-mv"),
        )
        .await
        .unwrap();
    assert_eq!(
        env.object_in(&other.bucket, &format!("{}/in/b.txt", other.prefix))
            .await
            .unwrap(),
        &body[..1000]
    );
    assert!(env.object(&env.key("b.txt")).await.is_none());
    assert!(node(&env, "m", "b.txt").await.is_none());
    assert!(node(&env, "m2", "in/b.txt").await.is_some());
    assert_eq!(
        snapshots(&env, "m", "b.txt").await,
        vec![(1, false), (2, true)]
    );
    // The destination mount's journal owns the move; both mounts' streams carry it.
    assert_journal(&env, &m, "move", "m", "b.txt").await;
    assert_eq!(m.mount, "m2");
    assert_event(&env, "m2", 2, &m, "b.txt").await;
    assert_event(&env, "m", 3, &m, "b.txt").await;
    let rows = env
        .query(
            "SELECT mount FROM {schema}.outbox WHERE journal_id = $1 ORDER BY mount",
            &[&m.journal_id],
        )
        .await;
    let mounts: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(mounts, ["m", "m2"]);
    env.cleanup().await;
}

/// Above the destination's copy threshold the copy goes part by part (UploadPartCopy).
pub async fn large_copy_uses_upload_part_copy(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(|r| {
            r.copy_threshold = (5 * MIB) as i64;
            r.part_size = (5 * MIB) as i64;
        })
        .build()
        .await;
    let body = data(12 * MIB + 17, 3);
    put(&env, "m", "big/src.bin", &body).await;
    let before = env.exec.status("m").await.unwrap().copy_requests;
    let c = env
        .exec
        .copy(
            &Location::new("m", "big/src.bin"),
            &Location::new("m", "big/copy.bin"),
            key_opts("big"),
        )
        .await
        .unwrap();
    let status = env.exec.status("m").await.unwrap();
    assert_eq!(
        status.copy_requests - before,
        3,
        "three UploadPartCopy requests"
    );
    assert_eq!(env.object(&env.key("big/copy.bin")).await.unwrap(), body);
    assert_eq!(c.node.as_ref().unwrap().sha256, sha256_hex(&body));
    let uploads = env
        .query(
            "SELECT state FROM {schema}.multipart_uploads WHERE journal_id = $1",
            &[&c.journal_id],
        )
        .await;
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].get::<_, String>(0), "completed");
    let parts = env
        .query(
            "SELECT count(*) FROM {schema}.multipart_parts p JOIN {schema}.multipart_uploads u USING (upload_id) WHERE u.journal_id = $1",
            &[&c.journal_id],
        )
        .await;
    assert_eq!(
        parts[0].get::<_, i64>(0),
        3,
        "parts recorded like upload parts"
    );
    env.cleanup().await;
}

/// Between mounts that do not share an endpoint the bytes go through the executor: small
/// objects in one PUT, larger ones as a multipart upload; no CopyObject is sent.
pub async fn streamed_copy_between_endpoints(backend: Backend) {
    let proxy = FaultProxy::start(&common::endpoint_of(backend), 0).await;
    let mut env = TestEnv::new(backend).await;
    let other = env
        .add_mount("far", |r| {
            r.endpoint = Some(proxy.endpoint.clone());
            r.multipart_threshold = (6 * MIB) as i64;
            r.part_size = (5 * MIB) as i64;
        })
        .await;
    let small = data(4000, 4);
    let big = data(11 * MIB + 3, 5);
    put(&env, "m", "s.bin", &small).await;
    put(&env, "m", "l.bin", &big).await;
    let c = env
        .exec
        .copy(
            &Location::new("m", "s.bin"),
            &Location::new("far", "s.bin"),
            key_opts("s"),
        )
        .await
        .unwrap();
    let m = env
        .exec
        .move_object(
            &Location::new("m", "l.bin"),
            &Location::new("far", "l.bin"),
            key_opts("l"),
        )
        .await
        .unwrap();
    assert_eq!(env.exec.status("far").await.unwrap().copy_requests, 0);
    assert_eq!(env.object_in(&other.bucket, &c.key).await.unwrap(), small);
    assert_eq!(env.object_in(&other.bucket, &m.key).await.unwrap(), big);
    assert!(env.object(&env.key("l.bin")).await.is_none());
    assert_eq!(m.node.as_ref().unwrap().sha256, sha256_hex(&big));
    let uploads = env
        .query(
            "SELECT state FROM {schema}.multipart_uploads WHERE journal_id = $1",
            &[&m.journal_id],
        )
        .await;
    assert_eq!(
        uploads[0].get::<_, String>(0),
        "completed",
        "the large one went up in parts"
    );
    assert_event(&env, "far", 2, &m, "l.bin").await;
    env.cleanup().await;
}

/// Everything in the bucket(s), tables and stream, to compare before and after a refusal.
async fn world(env: &TestEnv) -> (Vec<String>, Vec<i64>, usize) {
    let mut counts = Vec::new();
    for t in [
        "journal",
        "nodes",
        "snapshots",
        "outbox",
        "multipart_uploads",
    ] {
        counts.push(env.count(t).await);
    }
    (env.bucket_keys().await, counts, env.stream().await.len())
}

pub async fn conditions_and_refusals_change_nothing(backend: Backend) {
    let mut env = TestEnv::new(backend).await;
    env.add_mount("off", |r| r.enabled = false).await;
    let a = put(&env, "m", "a.txt", b"first").await;
    put(&env, "m", "b.txt", b"second").await;
    env.wait_stream(2).await;
    let before = world(&env).await;

    let precondition = |r: Result<OpResult, Error>| match r {
        Err(Error::PreconditionFailed { .. }) => {}
        other => panic!("expected PreconditionFailed, got {other:?}"),
    };
    // Create-only onto an existing path: put, copy, move.
    precondition(
        env.exec
            .put_bytes(
                "m",
                "a.txt",
                b"other".to_vec(),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await,
    );
    let create_only = TransferOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    precondition(
        env.exec
            .copy(
                &Location::new("m", "b.txt"),
                &Location::new("m", "a.txt"),
                create_only.clone(),
            )
            .await,
    );
    precondition(
        env.exec
            .move_object(
                &Location::new("m", "b.txt"),
                &Location::new("m", "a.txt"),
                create_only,
            )
            .await,
    );
    // Replace with a stale generation.
    let stale = a.generation + 1;
    precondition(
        env.exec
            .put_bytes(
                "m",
                "a.txt",
                b"other".to_vec(),
                PutOptions {
                    mode: PutMode::IfGeneration(stale),
                    ..Default::default()
                },
            )
            .await,
    );
    precondition(
        env.exec
            .copy(
                &Location::new("m", "b.txt"),
                &Location::new("m", "a.txt"),
                TransferOptions {
                    mode: PutMode::IfGeneration(stale),
                    ..Default::default()
                },
            )
            .await,
    );
    // Onto itself, to an invalid path, into a disabled mount, from a missing path.
    let err = env
        .exec
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("m", "a.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidRequest { field: "path", .. }),
        "{err}"
    );
    let err = env
        .exec
        .move_object(
            &Location::new("m", "a.txt"),
            &Location::new("m", "/a.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    let err = env
        .exec
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("m", "x/../a.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err}");
    let err = env
        .exec
        .move_object(
            &Location::new("m", "a.txt"),
            &Location::new("off", "a.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MountDisabled { .. }), "{err}");
    let err = env
        .exec
        .copy(
            &Location::new("off", "a.txt"),
            &Location::new("m", "c.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MountDisabled { .. }), "{err}");
    let err = env
        .exec
        .copy(
            &Location::new("m", "ghost.txt"),
            &Location::new("m", "c.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = env
        .exec
        .move_object(
            &Location::new("m", "ghost.txt"),
            &Location::new("m", "c.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = env
        .exec
        .copy(
            &Location::new("nope", "a.txt"),
            &Location::new("m", "c.txt"),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownMount { .. }), "{err}");

    assert_eq!(world(&env).await, before);
    assert_eq!(env.object(&env.key("a.txt")).await.unwrap(), b"first");

    // The conditions that do hold let the write through.
    let ok = env
        .exec
        .copy(
            &Location::new("m", "b.txt"),
            &Location::new("m", "a.txt"),
            TransferOptions {
                mode: PutMode::IfGeneration(a.generation),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.generation, a.generation + 1);
    let ok = env
        .exec
        .put_bytes(
            "m",
            "new.txt",
            b"n".to_vec(),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.generation, 1);
    env.cleanup().await;
}

/// Two calls with one key at once: one copy in the store (CopyObject requests counted at a proxy
/// in front of the server), the same result for both.
pub async fn concurrent_duplicates_execute_once(backend: Backend) {
    let proxy = FaultProxy::start(&common::endpoint_of(backend), 0).await;
    let env = TestEnv::builder(backend)
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    put(&env, "m", "a.bin", &data(50_000, 6)).await;
    put(&env, "m", "b.bin", &data(50_000, 7)).await;
    let (from, to) = (Location::new("m", "a.bin"), Location::new("m", "c.bin"));
    let (c1, c2) = tokio::join!(
        env.exec.copy(&from, &to, key_opts("dup-cp")),
        env.exec.copy(&from, &to, key_opts("dup-cp")),
    );
    assert_eq!(c1.unwrap(), c2.unwrap());
    let (from, to) = (Location::new("m", "b.bin"), Location::new("m", "d.bin"));
    let (m1, m2) = tokio::join!(
        env.exec.move_object(&from, &to, key_opts("dup-mv")),
        env.exec.move_object(&from, &to, key_opts("dup-mv")),
    );
    assert_eq!(m1.unwrap(), m2.unwrap());
    assert_eq!(
        proxy.copy_requests(),
        2,
        "one CopyObject per key, seen by the proxy"
    );
    assert_eq!(env.exec.status("m").await.unwrap().copy_requests, 2);
    assert_eq!(env.count("journal").await, 4);
    assert_eq!(env.count("outbox").await, 4);
    env.cleanup().await;
}

/// The state of a move's journal row: (state, phase, error).
async fn move_row(env: &TestEnv, key: &str) -> (String, Option<String>, Option<String>) {
    let row = env
        .query(
            "SELECT state, progress->>'phase', error FROM {schema}.journal WHERE idempotency_key = $1",
            &[&key],
        )
        .await;
    (row[0].get(0), row[0].get(1), row[0].get(2))
}

/// A move whose commit is refused after it deleted its source (a trigger on `nodes` stands in
/// for any refusal) stays pending at `source_deleted`, and recovery finishes it — after proving
/// its destination again:
/// - destination intact: committed, with no second copy;
/// - destination overwritten behind the executor's back: not committed; the row fails with a
///   typed error naming both paths, and so does the call sent again under its key. With the
///   copy put back, the call sent again finishes the move;
/// - the source path written again before the failed move is sent again: it starts over and
///   moves the new content.
pub async fn a_move_past_its_source_delete_is_proven_again_before_its_commit(backend: Backend) {
    let settings = filestore_s3_actors::SupervisorSettings {
        recovery_interval: std::time::Duration::from_millis(500),
        ..common::fast_settings()
    };
    let env = TestEnv::builder(backend).settings(settings).build().await;
    let body = data(70_000, 3);
    for p in ["src/a.bin", "src/c.bin", "src/e.bin"] {
        put(&env, "m", p, &body).await;
    }
    env.batch(
        "CREATE FUNCTION {schema}.refuse_moved() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.path LIKE 'moved/%' THEN RAISE EXCEPTION 'refused by the test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_moved BEFORE INSERT OR UPDATE ON {schema}.nodes
             FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_moved();",
    )
    .await;
    for (from, to, key) in [
        ("src/a.bin", "moved/b.bin", "mv-1"),
        ("src/c.bin", "moved/d.bin", "mv-2"),
        ("src/e.bin", "moved/f.bin", "mv-3"),
    ] {
        let e = env
            .exec
            .move_object(
                &Location::new("m", from),
                &Location::new("m", to),
                key_opts(key),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused by the test"), "{e}");
        let (state, phase, _) = move_row(&env, key).await;
        assert_eq!(
            (state.as_str(), phase.as_deref()),
            ("pending", Some("source_deleted"))
        );
        assert_eq!(env.object(&env.key(from)).await, None, "{from} deleted");
        assert_eq!(env.object(&env.key(to)).await.unwrap(), body);
        assert!(
            node(&env, "m", from).await.is_some(),
            "{from} still recorded"
        );
    }
    let copies = env.exec.status("m").await.unwrap().copy_requests;

    // Two destinations overwritten while their commits are refused: recovery does not commit
    // them, it fails them.
    for to in ["moved/d.bin", "moved/f.bin"] {
        env.raw_put(&env.key(to), b"written behind the executor's back")
            .await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for key in ["mv-2", "mv-3"] {
        loop {
            let (state, phase, error) = move_row(&env, key).await;
            if state == "failed" {
                assert_eq!(phase.as_deref(), Some("source_deleted"));
                assert!(
                    error
                        .as_deref()
                        .unwrap_or_default()
                        .contains("no longer holds the copy"),
                    "{error:?}"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{key} still {state}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // The refusal lifted: recovery commits the intact one.
    env.batch("DROP TRIGGER refuse_moved ON {schema}.nodes")
        .await;
    env.wait_no_pending(std::time::Duration::from_secs(30))
        .await;
    let n = node(&env, "m", "moved/b.bin").await.unwrap();
    assert_eq!(
        (n.1, n.2.as_str()),
        (body.len() as i64, sha256_hex(&body).as_str())
    );
    assert!(node(&env, "m", "src/a.bin").await.is_none());
    assert_eq!(
        snapshots(&env, "m", "src/a.bin").await,
        vec![(1, false), (2, true)]
    );
    let m1 = env
        .exec
        .move_object(
            &Location::new("m", "src/a.bin"),
            &Location::new("m", "moved/b.bin"),
            key_opts("mv-1"),
        )
        .await
        .unwrap();
    assert_journal(&env, &m1, "move", "m", "src/a.bin").await;

    // The failed one sent again: still not committable, a typed error.
    let e = env
        .exec
        .move_object(
            &Location::new("m", "src/c.bin"),
            &Location::new("m", "moved/d.bin"),
            key_opts("mv-2"),
        )
        .await
        .unwrap_err();
    match &e {
        Error::MoveCannotFinish {
            path, source_path, ..
        } => assert_eq!(
            (path.as_str(), source_path.as_str()),
            ("moved/d.bin", "src/c.bin")
        ),
        other => panic!("expected MoveCannotFinish, got {other:?}"),
    }
    assert!(node(&env, "m", "moved/d.bin").await.is_none());
    assert!(node(&env, "m", "src/c.bin").await.is_some());
    // The copy put back (as the executor wrote it): sent again, the move is finished.
    let mv2 = env
        .query(
            "SELECT id FROM {schema}.journal WHERE idempotency_key = 'mv-2'",
            &[],
        )
        .await[0]
        .get::<_, i64>(0);
    env.raw_put_marked(&env.key("moved/d.bin"), &body, mv2)
        .await;
    let m2 = env
        .exec
        .move_object(
            &Location::new("m", "src/c.bin"),
            &Location::new("m", "moved/d.bin"),
            key_opts("mv-2"),
        )
        .await
        .unwrap();
    assert_eq!(m2.journal_id, mv2);
    assert_eq!(
        node(&env, "m", "moved/d.bin").await.unwrap().2,
        sha256_hex(&body)
    );
    assert!(node(&env, "m", "src/c.bin").await.is_none());
    assert_eq!(env.exec.status("m").await.unwrap().copy_requests, copies);

    // The source path written again since: the move starts over and moves the new content.
    let newer = data(9_000, 7);
    put(&env, "m", "src/e.bin", &newer).await;
    let m3 = env
        .exec
        .move_object(
            &Location::new("m", "src/e.bin"),
            &Location::new("m", "moved/f.bin"),
            key_opts("mv-3"),
        )
        .await
        .unwrap();
    assert_eq!(env.object(&env.key("moved/f.bin")).await.unwrap(), newer);
    assert_eq!(env.object(&env.key("src/e.bin")).await, None);
    assert_eq!(
        node(&env, "m", "moved/f.bin").await.unwrap().2,
        sha256_hex(&newer)
    );
    assert!(node(&env, "m", "src/e.bin").await.is_none());
    assert_journal(&env, &m3, "move", "m", "src/e.bin").await;
    env.cleanup().await;
}

per_backend! {
    copy_and_move_within_a_mount => super::copy_and_move_within_a_mount(B);
    copy_and_move_across_mounts => super::copy_and_move_across_mounts(B);
    large_copy_uses_upload_part_copy => super::large_copy_uses_upload_part_copy(B);
    streamed_copy_between_endpoints => super::streamed_copy_between_endpoints(B);
    conditions_and_refusals_change_nothing => super::conditions_and_refusals_change_nothing(B);
    concurrent_duplicates_execute_once => super::concurrent_duplicates_execute_once(B);
    a_move_past_its_source_delete_is_proven_again_before_its_commit => super::a_move_past_its_source_delete_is_proven_again_before_its_commit(B);
}
