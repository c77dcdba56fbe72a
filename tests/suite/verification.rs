//! Verification that proves the content, end to end on every S3 server: the write marker in the
//! object's metadata, recovery that tells this operation's object from an earlier one of the
//! same size, the mount's settings checked against what the store applied (strict / lenient),
//! and the idempotency rule for puts from a stream. Real Postgres, Redis and S3 servers.

use crate::common;
use crate::common::MetaWrites as _;
use filestore_s3::Location;

use std::time::Duration;

use common::faultproxy::{Fault, Op, Rule};
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::pg::PgMetaStore;
use filestore_s3::{Error, PutOptions, S3Executor, Sha256Digest};
use filestore_s3_actors::model::{IntentOutcome, NewIntent, OpRequest};

/// Every object the executor writes carries the journal id and SHA-256 of the operation in its
/// user metadata; the node records how the content was proven, and matches the store's HEAD.
pub async fn objects_carry_the_write_marker(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let body = b"marked content".to_vec();
    let r = env
        .exec
        .put_bytes("m", "marked.txt", body.clone(), PutOptions::default())
        .await
        .unwrap();
    let head = env
        .s3
        .head_object()
        .bucket(&env.bucket)
        .key(env.key("marked.txt"))
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let meta = head.metadata().cloned().unwrap_or_default();
    assert_eq!(
        meta.get("filestore-journal-id").map(String::as_str),
        Some(r.journal_id.to_string().as_str()),
        "{meta:?}"
    );
    assert_eq!(
        meta.get("filestore-sha256").map(String::as_str),
        Some(sha256_hex(&body).as_str())
    );
    let node = r.node.as_ref().unwrap();
    assert_eq!(node.etag, head.e_tag().unwrap().trim_matches('"'));
    let lm = head.last_modified().unwrap();
    assert_eq!(node.last_modified.unwrap().timestamp(), lm.secs());
    let rows = env
        .query(
            "SELECT verified, last_modified IS NOT NULL FROM {schema}.nodes WHERE path = 'marked.txt'",
            &[],
        )
        .await;
    let verified: String = rows[0].get(0);
    // A store that keeps SHA-256 checksums proves the content itself; otherwise the metadata does.
    let expected = if head.checksum_sha256().is_some() {
        "sha256-verified-by-store"
    } else {
        "sha256-from-metadata"
    };
    assert_eq!(verified, expected);
    assert_eq!(node.verified.as_str(), expected);
    assert!(rows[0].get::<_, bool>(1));
    env.cleanup().await;
}

/// A put of new content was interrupted before its PUT reached the store, while the path holds an
/// older object of the SAME size: recovery must not commit the new SHA-256 for the old bytes.
/// When the new object did land (it carries the row's journal id), recovery commits it.
pub async fn recovery_tells_a_same_size_object_apart(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let old = b"AAAAAAAAAAAAAAAA".to_vec();
    let new = b"BBBBBBBBBBBBBBBB".to_vec();
    let first = env
        .exec
        .put_bytes("m", "same.txt", old.clone(), PutOptions::default())
        .await
        .unwrap();
    env.wait_stream(1).await;
    env.exec.shutdown().await;

    let meta = PgMetaStore::new(&common::database_url(), &env.schema, 2).unwrap();
    let intent = |k: &str, path: &str| {
        let req = OpRequest::Put(filestore_s3_actors::model::PutRequest {
            path: path.into(),
            key: env.key(path),
            size: new.len() as u64,
            sha256: Sha256Digest::of(&new),
            content_type: None,
            metadata: Default::default(),
            condition: Default::default(),
        });
        NewIntent {
            mount: "m".into(),
            idempotency_key: k.into(),
            fingerprint: req.fingerprint(),
            token: uuid::Uuid::new_v4(),
            progress: None,
            request: req,
        }
    };
    // Row 1: interrupted before its PUT; the old object is still there.
    meta.begin(&intent("k-lost", "same.txt")).await.unwrap();
    // Row 2: its PUT landed (as the executor writes it) and then the process died.
    let IntentOutcome::Started { journal_id } =
        meta.begin(&intent("k-landed", "other.txt")).await.unwrap()
    else {
        panic!("intent not started")
    };
    env.raw_put(&env.key("other.txt"), &old).await; // an unrelated same-size object first...
    env.raw_put_marked(&env.key("other.txt"), &new, journal_id)
        .await; // ...then this row's

    // Row 1's path shows the version its node names: a store may serve that for a while after
    // an overwrite, so recovery waits the consistency horizon out before it fails the row
    // (shortened here; the recovery pass comes round within it).
    let mut config = env.exec.config().clone();
    config.supervisor.consistency_horizon = Duration::from_secs(1);
    config.supervisor.recovery_interval = Duration::from_millis(300);
    let exec = S3Executor::start(config).await.unwrap();
    env.wait_no_pending(Duration::from_secs(15)).await;
    let states: Vec<(String, String)> = env
        .query(
            "SELECT idempotency_key, state FROM {schema}.journal ORDER BY id",
            &[],
        )
        .await
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    assert_eq!(states[1], ("k-lost".to_string(), "failed".to_string()));
    assert_eq!(states[2], ("k-landed".to_string(), "committed".to_string()));
    let rows = env
        .query(
            "SELECT path, sha256, generation FROM {schema}.nodes ORDER BY path",
            &[],
        )
        .await;
    let nodes: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("other.txt".to_string(), sha256_hex(&new), 1),
            ("same.txt".to_string(), sha256_hex(&old), first.generation),
        ]
    );
    assert_eq!(env.object(&env.key("same.txt")).await.unwrap(), old);
    exec.shutdown().await;
    env.cleanup().await;
}

/// SSE on a store that may ignore it. s3s-fs ignores SSE headers: the strict policy (default)
/// refuses the write and leaves nothing behind; the lenient one commits and records what was not
/// applied. moto applies (echoes) SSE, KMS key and ACL: both policies commit, nothing missing.
pub async fn settings_the_store_ignores(backend: Backend) {
    let mut env = TestEnv::builder(backend)
        .mount(|r| r.sse_mode = "aes256".into())
        .build()
        .await;
    let strict = env
        .exec
        .put_bytes(
            "m",
            "secret.txt",
            b"classified".to_vec(),
            PutOptions::default(),
        )
        .await;
    env.add_mount("lenient", |r| {
        r.sse_mode = "aes256".into();
        r.settings_policy = "lenient".into();
    })
    .await;
    let lenient = env
        .exec
        .put_bytes(
            "lenient",
            "secret.txt",
            b"classified".to_vec(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let lenient_node = lenient.node.as_ref().unwrap();
    // Which of the two the store did: a known server is held to what it does; any other store
    // may do either, and the test says which.
    let ignored = strict.is_err();
    match backend {
        Backend::S3sFs => assert!(ignored, "s3s-fs ignores SSE: {strict:?}"),
        Backend::Moto => assert!(!ignored, "moto applies SSE: {strict:?}"),
        Backend::External => println!(
            "the store {} SSE AES256",
            if ignored {
                "ignored (strict refusal)"
            } else {
                "applied"
            }
        ),
    }
    match ignored {
        true => {
            match strict {
                Err(Error::SettingsNotApplied { ref settings, .. }) => {
                    assert!(settings[0].starts_with("sse_mode"), "{settings:?}")
                }
                other => panic!("expected SettingsNotApplied, got {other:?}"),
            }
            assert!(
                env.bucket_keys().await.is_empty(),
                "{:?}",
                env.bucket_keys().await
            );
            let rows = env
                .query("SELECT count(*) FROM {schema}.nodes WHERE mount = 'm'", &[])
                .await;
            assert_eq!(rows[0].get::<_, i64>(0), 0);
            let j = env
                .query(
                    "SELECT state, error FROM {schema}.journal WHERE mount = 'm'",
                    &[],
                )
                .await;
            assert_eq!(j[0].get::<_, String>(0), "failed");
            assert!(j[0].get::<_, String>(1).contains("sse_mode"));
            assert_eq!(lenient_node.not_applied.len(), 1, "{lenient_node:?}");
            assert!(lenient_node.not_applied[0].starts_with("sse_mode"));
            let rows = env
                .query(
                    "SELECT not_applied, sse FROM {schema}.nodes WHERE mount = 'lenient'",
                    &[],
                )
                .await;
            assert_eq!(rows[0].get::<_, Vec<String>>(0), lenient_node.not_applied);
            assert_eq!(rows[0].get::<_, Option<String>>(1), None);
        }
        false => {
            let r = strict.unwrap();
            assert_eq!(r.node.as_ref().unwrap().sse.as_deref(), Some("AES256"));
            assert!(lenient_node.not_applied.is_empty());
            if backend != Backend::Moto {
                env.cleanup().await;
                return;
            }
            // KMS key and canned ACL, as moto records them.
            env.add_mount("kms", |r| {
                r.sse_mode = "aws:kms".into();
                r.kms_key_id = Some("filestore-test-key".into());
                r.canned_acl = Some("public-read".into());
            })
            .await;
            let k = env
                .exec
                .put_bytes("kms", "k.txt", b"kms".to_vec(), PutOptions::default())
                .await
                .unwrap();
            let bucket = env.extra.last().unwrap().1.clone();
            let head = env
                .s3
                .head_object()
                .bucket(&bucket)
                .key(&k.key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.server_side_encryption().map(|s| s.as_str()),
                Some("aws:kms")
            );
            assert!(head
                .ssekms_key_id()
                .is_some_and(|id| id.ends_with("filestore-test-key")));
            let acl = env
                .s3
                .get_object_acl()
                .bucket(&bucket)
                .key(&k.key)
                .send()
                .await
                .unwrap();
            let public = acl.grants().iter().any(|g| {
                g.grantee()
                    .and_then(|u| u.uri())
                    .is_some_and(|u| u.ends_with("/AllUsers"))
                    && g.permission().map(|p| p.as_str()) == Some("READ")
            });
            assert!(public, "{:?}", acl.grants());
        }
    }
    env.cleanup().await;
}

/// A put from a stream repeated with its idempotency key: the same content gets the recorded
/// result without an upload; other content under the same key is an IdempotencyConflict.
pub async fn stream_put_key_reused_with_other_content(backend: Backend) {
    const MIB: usize = 1024 * 1024;
    let env = TestEnv::builder(backend)
        .mount(|r| {
            r.multipart_threshold = (6 * MIB) as i64;
            r.part_size = (5 * MIB) as i64;
        })
        .build()
        .await;
    let body: Vec<u8> = (0..7 * MIB).map(|i| (i % 253) as u8).collect();
    let opts = || PutOptions {
        idempotency_key: Some("stream-1".into()),
        ..Default::default()
    };
    let first = env
        .exec
        .put_reader("m", "s.bin", std::io::Cursor::new(body.clone()), opts())
        .await
        .unwrap();
    let sent = env.exec.status("m").await.unwrap().upload_bytes_sent;
    let again = env
        .exec
        .put_reader("m", "s.bin", std::io::Cursor::new(body.clone()), opts())
        .await
        .unwrap();
    assert_eq!(again, first);
    let mut other = body.clone();
    other[5 * MIB + 1] ^= 1;
    let err = env
        .exec
        .put_reader("m", "s.bin", std::io::Cursor::new(other), opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");
    assert_eq!(env.exec.status("m").await.unwrap().upload_bytes_sent, sent);
    assert_eq!(env.count("journal").await, 1);
    assert_eq!(env.object(&env.key("s.bin")).await.unwrap(), body);
    env.cleanup().await;
}

/// `verify = put-response`: a put whose PUT answer echoes the SHA-256 sent is committed without a
/// HEAD and recorded as `sha256-in-put-response`; an answer without the echo (moto's, or one the
/// proxy removed it from) is proven by HEAD as on other mounts.
/// (Needs the counting proxy in front of the server, so not part of the external suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_response_verification_s3s_fs() {
    put_response_verification(Backend::S3sFs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_response_verification_moto() {
    put_response_verification(Backend::Moto).await
}

async fn put_response_verification(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend)
        .mount(|r| r.verify = "put-response".into())
        .behind_proxy(11)
        .await;
    let verified = |path: &'static str| {
        let env = &env;
        async move {
            let rows = env
                .query(
                    "SELECT n.verified, s.verified FROM {schema}.nodes n
                     JOIN {schema}.snapshots s USING (mount, path, generation)
                     WHERE n.path = $1",
                    &[&path],
                )
                .await;
            let node: String = rows[0].get(0);
            let snapshot: Option<String> = rows[0].get(1);
            assert_eq!(Some(&node), snapshot.as_ref(), "node and snapshot agree");
            node
        }
    };
    let body = b"proven by the answer to the PUT".to_vec();
    let r = env
        .exec
        .put_bytes("m", "answer.txt", body.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(proxy.count(Op::PutObject), 1);
    // s3s-fs checks the SHA-256 it is sent and echoes it; moto 5.2 does neither (its answer has
    // no checksum), so there the answer proves nothing and HEAD is made as under `head`.
    if matches!(backend, Backend::S3sFs) {
        assert_eq!(proxy.count(Op::HeadObject), 0, "{:?}", proxy.seen());
        assert_eq!(verified("answer.txt").await, "sha256-in-put-response");
    } else {
        assert!(proxy.count(Op::HeadObject) >= 1, "{:?}", proxy.seen());
        assert_ne!(verified("answer.txt").await, "sha256-in-put-response");
    }
    let node = r.node.expect("a put has a node");
    assert_eq!(node.sha256.to_hex(), sha256_hex(&body));
    assert_eq!(node.size, body.len() as u64);
    assert_eq!(env.object(&env.key("answer.txt")).await.unwrap(), body);

    proxy.add(Rule::always(
        Some(Op::PutObject),
        Fault::StripResponseHeader("x-amz-checksum-sha256"),
    ));
    env.exec
        .put_bytes("m", "head.txt", b"no echo".to_vec(), PutOptions::default())
        .await
        .unwrap();
    assert!(proxy.count(Op::HeadObject) >= 1, "{:?}", proxy.seen());
    let v = verified("head.txt").await;
    assert!(
        ["sha256-verified-by-store", "sha256-from-metadata"].contains(&v.as_str()),
        "{v}"
    );
    env.cleanup().await;
}

/// `verify = response`: a copy whose CopyObject answer carries the SHA-256 the store computed of
/// the copy is committed without a HEAD (`sha256-in-copy-response`; moto_server answers with it,
/// s3s-fs 0.14 does not, so there the copy is proven by HEAD); deletes, one by one, in
/// `delete_many` and of a move's source, are proven by the store's success with no HEAD on either
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_verification_s3s_fs() {
    response_verification(Backend::S3sFs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_verification_moto() {
    response_verification(Backend::Moto).await
}

async fn response_verification(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend)
        .mount(|r| r.verify = "response".into())
        .behind_proxy(12)
        .await;
    let verified = |path: &'static str| {
        let env = &env;
        async move {
            let rows = env
                .query(
                    "SELECT verified FROM {schema}.nodes WHERE path = $1",
                    &[&path],
                )
                .await;
            rows[0].get::<_, String>(0)
        }
    };
    let body = b"copied and proven by the answer".to_vec();
    for p in ["src.txt", "other.txt", "third.txt"] {
        env.exec
            .put_bytes("m", p, body.clone(), PutOptions::default())
            .await
            .unwrap();
    }

    let heads = proxy.count(Op::HeadObject);
    let r = env
        .exec
        .copy(
            &Location::new("m", "src.txt"),
            &Location::new("m", "dst.txt"),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(proxy.count(Op::CopyObject), 1);
    let node = r.node.expect("a copy has a node");
    assert_eq!(node.sha256.to_hex(), sha256_hex(&body));
    assert_eq!(node.size, body.len() as u64);
    assert_eq!(env.object(&env.key("dst.txt")).await.unwrap(), body);
    if matches!(backend, Backend::Moto) {
        assert_eq!(proxy.count(Op::HeadObject), heads, "{:?}", proxy.seen());
        assert_eq!(verified("dst.txt").await, "sha256-in-copy-response");
    } else {
        assert!(proxy.count(Op::HeadObject) > heads, "{:?}", proxy.seen());
        let v = verified("dst.txt").await;
        assert!(
            ["sha256-verified-by-store", "sha256-from-metadata"].contains(&v.as_str()),
            "{v}"
        );
    }

    let heads = proxy.count(Op::HeadObject);
    env.exec
        .delete("m", "dst.txt", Default::default())
        .await
        .unwrap();
    assert_eq!(proxy.count(Op::DeleteObject), 1);
    assert_eq!(proxy.count(Op::HeadObject), heads, "{:?}", proxy.seen());
    assert!(env.object(&env.key("dst.txt")).await.is_none());
    assert_eq!(env.count("nodes").await, 3);

    let results = env
        .exec
        .delete_many("m", &["other.txt", "third.txt"], Default::default())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(proxy.count(Op::HeadObject), heads, "{:?}", proxy.seen());
    for p in ["other.txt", "third.txt"] {
        assert!(env.object(&env.key(p)).await.is_none(), "{p}");
    }
    assert_eq!(env.count("nodes").await, 1);

    // A move: its copy proven as above, the DELETE of its source by the store's success — no
    // HEAD of the source key on either server.
    let heads = proxy.count(Op::HeadObject);
    let before = proxy.seen().len();
    env.exec
        .move_object(
            &Location::new("m", "src.txt"),
            &Location::new("m", "moved.txt"),
            Default::default(),
        )
        .await
        .unwrap();
    let source_key = env.key("src.txt");
    let heads_of_source = proxy.seen()[before..]
        .iter()
        .filter(|s| s.op == Op::HeadObject && s.key.ends_with(&source_key))
        .count();
    assert_eq!(heads_of_source, 0, "{:?}", proxy.seen());
    if matches!(backend, Backend::Moto) {
        assert_eq!(proxy.count(Op::HeadObject), heads, "{:?}", proxy.seen());
        assert_eq!(verified("moved.txt").await, "sha256-in-copy-response");
    }
    assert!(env.object(&source_key).await.is_none());
    assert_eq!(env.object(&env.key("moved.txt")).await.unwrap(), body);
    assert_eq!(env.count("nodes").await, 1);
    env.cleanup().await;
}

/// A copy refused by the store (CopyObject answered 403, not retried) fails its journal row; the
/// same call sent again under its idempotency key re-arms that row with a new pin (the source was
/// replaced in between, through the executor) and copies the source as it is now: one row, two
/// attempts, the destination holding the new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_sent_again_under_its_key_s3s_fs() {
    failed_copy_sent_again_under_its_key(Backend::S3sFs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copy_sent_again_under_its_key_moto() {
    failed_copy_sent_again_under_its_key(Backend::Moto).await
}

async fn failed_copy_sent_again_under_its_key(backend: Backend) {
    let (proxy, env) = TestEnv::builder(backend).behind_proxy(13).await;
    env.exec
        .put_bytes("m", "a.txt", b"first".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let opts = || filestore_s3::TransferOptions {
        idempotency_key: Some("copy-a".into()),
        ..Default::default()
    };
    proxy.add(Rule::always(
        Some(Op::CopyObject),
        Fault::Status(403, "AccessDenied"),
    ));
    let e = env
        .exec
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("m", "b.txt"),
            opts(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Storage { .. }), "{e}");
    let rows = env
        .query(
            "SELECT state, attempts, progress->>'phase' FROM {schema}.journal WHERE op = 'copy'",
            &[],
        )
        .await;
    assert_eq!(rows[0].get::<_, String>(0), "failed");
    assert_eq!(
        rows[0].get::<_, Option<String>>(2).as_deref(),
        Some("source_pinned")
    );

    proxy.clear();
    let second = b"second, longer content".to_vec();
    env.exec
        .put_bytes("m", "a.txt", second.clone(), PutOptions::default())
        .await
        .unwrap();
    let r = env
        .exec
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("m", "b.txt"),
            opts(),
        )
        .await
        .unwrap();
    let node = r.node.expect("a copy has a node");
    assert_eq!(node.sha256.to_hex(), sha256_hex(&second));
    assert_eq!(env.object(&env.key("b.txt")).await.unwrap(), second);
    let rows = env
        .query(
            "SELECT state, attempts, progress->'source'->>'size' FROM {schema}.journal
             WHERE op = 'copy'",
            &[],
        )
        .await;
    assert_eq!(rows.len(), 1, "one journal row, re-armed");
    assert_eq!(rows[0].get::<_, String>(0), "committed");
    assert_eq!(rows[0].get::<_, i32>(1), 2);
    assert_eq!(
        rows[0].get::<_, Option<String>>(2),
        Some(second.len().to_string()),
        "the row carries the new pin"
    );
    env.cleanup().await;
}

per_backend! {
    objects_carry_the_write_marker => super::objects_carry_the_write_marker(B);
    recovery_tells_a_same_size_object_apart => super::recovery_tells_a_same_size_object_apart(B);
    settings_the_store_ignores => super::settings_the_store_ignores(B);
    stream_put_key_reused_with_other_content => super::stream_put_key_reused_with_other_content(B);
}
