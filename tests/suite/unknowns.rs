//! Requests whose outcome is unknown, and operations that meet each other (issue 25): a request
//! the store applied whose answer was lost, a verification cut short, recovery meeting a path
//! written since, a call on a host that does not own a mount it would change. Each scenario goes
//! through the fault proxy in front of a real S3 server and ends with the invariant checker.
//! (The first scenarios of the kind, on puts, deletes and moves, are in `faults.rs`.)

use std::time::Duration;

use crate::common;
use crate::faults::{behind_proxy, body, multipart, MIB};
use common::faultproxy::{Fault, Op, Rule};
use common::invariants::{self, Expected};
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{Error, Location, PutOptions, S3Executor, TransferOptions};

fn key(k: &str) -> PutOptions {
    PutOptions {
        idempotency_key: Some(k.into()),
        ..Default::default()
    }
}

/// How many `op` requests on a key ending in `suffix` the proxy has seen.
fn seen_count(proxy: &common::faultproxy::FaultProxy, op: Op, suffix: &str) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| s.op == op && s.key.ends_with(suffix))
        .count()
}

/// Waits (at most 30 s) until the proxy has seen more than `before` `op` requests on a key
/// ending in `suffix`: the request is under way (held by a delay rule, say).
async fn wait_for_request(
    proxy: &common::faultproxy::FaultProxy,
    op: Op,
    suffix: &str,
    before: usize,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen_count(proxy, op, suffix) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no {op:?} of '{suffix}' was sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 25, case 3. A streamed multipart put over an existing path is completed in S3, but the
/// store does not show the object within the mount's verification window (an eventually
/// consistent store: HEAD answers 404). The row stays pending. A stream cannot be read again,
/// yet the object is proven by what the row recorded before Complete (size, SHA-256) and its
/// marker: recovery commits it. (Before, recovery failed the row: the bucket held the new
/// object and the node named the old content.)
pub async fn a_streamed_upload_completed_but_unverified_is_committed_by_recovery(backend: Backend) {
    let mut settings = common::fast_settings();
    // No periodic pass during the test: the row is recovered when the executor starts again.
    settings.recovery_interval = Duration::from_secs(60);
    let (mut env, proxy) = behind_proxy(
        backend,
        31,
        |r| {
            multipart(r);
            r.verify_window_ms = 1000;
        },
        settings,
        |_| {},
    )
    .await;
    // The earlier content is a multipart upload too: s3s-fs keeps the SHA-256 of a single PUT
    // for a multipart upload completed later at the same key (docs/testing.md).
    let old = body(7 * MIB, 3);
    env.exec
        .put_reader("m", "big.bin", std::io::Cursor::new(old), key("old"))
        .await
        .unwrap();
    proxy.add(Rule {
        key_suffix: Some("/big.bin".into()),
        ..Rule::always(Some(Op::HeadObject), Fault::Status(404, "NoSuchKey"))
    });
    let big = body(11 * MIB, 31);
    let e = env
        .exec
        .put_reader("m", "big.bin", std::io::Cursor::new(big.clone()), key("s"))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    let state: String = env.journal_state("s").await;
    assert_eq!(state, "pending", "{e}");
    assert_eq!(
        env.object(&env.key("big.bin")).await,
        Some(big.clone()),
        "the store holds the new object"
    );
    proxy.clear();
    env.exec.shutdown().await;
    env.exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    env.wait_no_pending(Duration::from_secs(20)).await;
    let state: String = env.journal_state("s").await;
    assert_eq!(
        state, "committed",
        "recovery committed the completed upload"
    );
    let node = env.exec.stat("m", "big.bin").await.unwrap().node.unwrap();
    assert_eq!(node.meta.sha256, sha256_hex(&big));
    // Sent again under its key, the stream is hashed and the call gets the put's result.
    let again = env
        .exec
        .put_reader("m", "big.bin", std::io::Cursor::new(big.clone()), key("s"))
        .await
        .unwrap();
    assert_eq!(again.generation, node.generation);
    let mut expected = Expected::new();
    expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A move across mounts on a host that owns the destination mount but not the source mount:
/// its commit would remove the source's node, which only the source's owner may write. It is
/// refused before any side effect with `NotOwner` naming the source's owner. (Before, the host
/// copied, deleted the source object, and could never commit: the source's node named nothing.)
/// A copy from that mount only reads it, and goes ahead.
pub async fn a_move_from_a_mount_this_host_does_not_own_is_refused_before_any_effect(
    backend: Backend,
) {
    let mut env = TestEnv::builder(backend)
        .config(|c| c.leased_mounts = Some(["m".to_string()].into()))
        .build()
        .await;
    let a = env.exec.clone();
    let body = b"the source".to_vec();
    a.put_bytes("m", "src.txt", body.clone(), PutOptions::default())
        .await
        .unwrap();
    env.add_mount("m2", |_| {}).await;
    let mut config = a.config().clone();
    config.owner_id = "executor-b".into();
    config.leased_mounts = Some(["m2".to_string()].into());
    let b = S3Executor::start(config).await.unwrap();
    b.wait_for_lease("m2", Duration::from_secs(10))
        .await
        .unwrap();

    let e = b
        .move_object(
            &Location::new("m", "src.txt"),
            &Location::new("m2", "dst.txt"),
            TransferOptions::default(),
        )
        .await
        .unwrap_err();
    match &e {
        Error::NotOwner { mount, owner, .. } => {
            assert_eq!(mount, "m");
            assert_eq!(owner, &a.config().owner_id);
        }
        other => panic!("expected NotOwner of the source mount, got {other:?}"),
    }
    assert!(e.is_retryable());
    assert_eq!(env.count("journal").await, 1, "no row for the refused move");
    assert_eq!(env.object(&env.key("src.txt")).await, Some(body.clone()));
    let node = b.stat("m", "src.txt").await.unwrap().node.unwrap();
    assert_eq!(node.meta.sha256, sha256_hex(&body));
    assert!(matches!(
        b.stat("m2", "dst.txt").await,
        Err(Error::NotFound { .. })
    ));

    // A copy only reads its source: it goes ahead on the destination's owner.
    let r = b
        .copy(
            &Location::new("m", "src.txt"),
            &Location::new("m2", "dst.txt"),
            TransferOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.node.unwrap().sha256, sha256_hex(&body));
    // The source's owner moves across to a mount it takes no lease of: the destination's
    // supervisor refuses it, as any write there.
    let e = a
        .move_object(
            &Location::new("m", "src.txt"),
            &Location::new("m2", "other.txt"),
            TransferOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let mut expected = Expected::new();
    expected.insert(("m".into(), "src.txt".into()), sha256_hex(&body));
    expected.insert(("m2".into(), "dst.txt".into()), sha256_hex(&body));
    // (While b runs: it publishes m2's events.)
    invariants::check(&env, &expected).await;
    b.shutdown().await;
    env.cleanup().await;
}

/// A store serving an older state for a while after a write (HEAD answers the overwritten
/// version after a put, the deleted object after a delete) longer than the mount's verification
/// window: the row stays pending, and recovery waits it out within the consistency horizon like
/// an object not visible yet, then commits. (Before, recovery failed both rows at once: the
/// node named the old version while the bucket held the new one, then an object that was gone.)
pub async fn stale_reads_after_an_overwrite_or_a_delete_are_waited_out(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.consistency_horizon = Duration::from_secs(20);
    settings.recovery_interval = Duration::from_millis(500);
    let (env, proxy) =
        behind_proxy(backend, 33, |r| r.verify_window_ms = 500, settings, |_| {}).await;
    let v1 = b"version one".to_vec();
    env.exec
        .put_bytes("m", "a.txt", v1.clone(), PutOptions::default())
        .await
        .unwrap();
    proxy.add(Rule::always(
        Some(Op::HeadObject),
        Fault::StaleAfterWrite(Duration::from_secs(3)),
    ));
    let v2 = b"version two, longer".to_vec();
    let e = env
        .exec
        .put_bytes("m", "a.txt", v2.clone(), key("p2"))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("p2").await, "committed", "the overwrite");
    let node = env.exec.stat("m", "a.txt").await.unwrap().node.unwrap();
    assert_eq!(node.meta.sha256, sha256_hex(&v2));

    let e = env
        .exec
        .delete(
            "m",
            "a.txt",
            filestore_s3::DeleteOptions {
                idempotency_key: Some("d".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("d").await, "committed", "the delete");
    assert!(matches!(
        env.exec.stat("m", "a.txt").await,
        Err(Error::NotFound { .. })
    ));
    let stale_heads = proxy
        .seen()
        .iter()
        .filter(|s| {
            s.fault
                .as_deref()
                .is_some_and(|f| f.starts_with("StaleAfterWrite"))
        })
        .count();
    assert!(
        stale_heads >= 2,
        "the store served older states: {stale_heads} HEADs"
    );
    proxy.clear();
    invariants::check(&env, &Expected::new()).await;
    env.cleanup().await;
}

/// Found by the adversarial run (seed 42, six clients per host, checkpoint 25: "I1: node m:a/p4
/// names data/a/p4, which is not in the bucket"). A move deletes its source; the store shows the
/// deleted object for longer than the verification window, so the move ends unverified with its
/// row pending. Recovery deletes the source again and meets the older state again: it must leave
/// the row pending (the store may still show a deleted object within the consistency horizon),
/// not fail it — a failed row leaves the source's node naming an object the store no longer
/// holds. Once the store shows the source gone, the move commits.
pub async fn a_move_whose_source_still_shows_after_its_delete_is_not_failed(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.consistency_horizon = Duration::from_secs(30);
    settings.recovery_interval = Duration::from_millis(300);
    let (env, proxy) =
        behind_proxy(backend, 35, |r| r.verify_window_ms = 500, settings, |_| {}).await;
    let body = b"the source of a move".to_vec();
    env.exec
        .put_bytes("m", "src.txt", body.clone(), PutOptions::default())
        .await
        .unwrap();
    proxy.add(Rule {
        key_suffix: Some("/src.txt".into()),
        ..Rule::always(
            Some(Op::HeadObject),
            Fault::StaleAfterWrite(Duration::from_secs(60)),
        )
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
    assert_eq!(
        env.object(&env.key("src.txt")).await,
        None,
        "the DELETE was applied ({e})"
    );
    // Recovery passes meet the older state: the source deleted again, and still shown.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = proxy.seen();
        let deletes = seen
            .iter()
            .filter(|s| s.op == Op::DeleteObject && s.key.ends_with("/src.txt"))
            .count();
        let stale_after = seen
            .iter()
            .rev()
            .take_while(|s| !(s.op == Op::DeleteObject && s.key.ends_with("/src.txt")))
            .any(|s| s.fault.is_some());
        if deletes >= 3 && stale_after {
            break;
        }
        let now: String = env.journal_state("mv").await;
        assert_eq!(
            now, "pending",
            "recovery settled the move while the store showed the deleted source"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery pass met the stale state"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now: String = env.journal_state("mv").await;
    assert_eq!(
        now, "pending",
        "not failed while the store may show an older state"
    );
    proxy.clear();
    env.wait_no_pending(Duration::from_secs(20)).await;
    let now: String = env.journal_state("mv").await;
    assert_eq!(now, "committed");
    assert!(matches!(
        env.exec.stat("m", "src.txt").await,
        Err(Error::NotFound { .. })
    ));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(&body));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Found by the adversarial run (seed 42: "I1: size of m2:a/p4"). A copy whose CopyObject was
/// applied with its answer lost, then refused until the retries ran out, is left pending; a put
/// to its destination follows. The put must not be undone by the copy's recovery: it settles the
/// pending copy first (a pending row owns its paths) — the copy is committed, being applied —
/// and then commits over it, so the copy's generation comes before the put's and the put's
/// object stays. (Before the rule, the put ran at once and the copy's recovery later failed the
/// superseded row without a request to S3; before that check, it copied again over the put.)
pub async fn a_pending_copy_is_settled_before_a_later_put_on_its_destination(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 2;
    // No periodic pass during the test: the row is recovered when the executor starts again.
    settings.recovery_interval = Duration::from_secs(60);
    let (mut env, proxy) = behind_proxy(backend, 36, |_| {}, settings, |_| {}).await;
    let source = b"the copy's source".to_vec();
    env.exec
        .put_bytes("m", "src.txt", source.clone(), PutOptions::default())
        .await
        .unwrap();
    proxy.add(Rule::once(Op::CopyObject, Fault::DropResponse));
    proxy.add(Rule::always(
        Some(Op::CopyObject),
        Fault::Status(503, "SlowDown"),
    ));
    let e = env
        .exec
        .copy(
            &Location::new("m", "src.txt"),
            &Location::new("m", "dst.txt"),
            TransferOptions {
                idempotency_key: Some("cp".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    proxy.clear();
    let newer = b"written after the copy failed".to_vec();
    let put = env
        .exec
        .put_bytes("m", "dst.txt", newer.clone(), PutOptions::default())
        .await
        .unwrap();
    env.exec.shutdown().await;
    env.exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    env.wait_no_pending(Duration::from_secs(20)).await;
    let row = env
        .query(
            "SELECT state, error, (result->>'generation')::bigint
             FROM {schema}.journal WHERE idempotency_key = 'cp'",
            &[],
        )
        .await;
    eprintln!(
        "{backend:?}: the copy's row ended {:?}: {:?}",
        row[0].get::<_, String>(0),
        row[0].get::<_, Option<String>>(1)
    );
    assert_eq!(
        env.object(&env.key("dst.txt")).await,
        Some(newer.clone()),
        "the acknowledged put's object is still there"
    );
    let node = env.exec.stat("m", "dst.txt").await.unwrap().node.unwrap();
    assert_eq!(node.generation, put.generation);
    assert_eq!(row[0].get::<_, String>(0), "committed");
    let copied = row[0]
        .get::<_, Option<i64>>(2)
        .expect("the copy's generation");
    assert!(
        copied < put.generation as i64,
        "the copy (generation {copied}) was settled before the put ({})",
        put.generation
    );
    let mut expected = Expected::new();
    expected.insert(("m".into(), "src.txt".into()), sha256_hex(&source));
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(&newer));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A pending row owns its paths. A move is killed right after its source's DELETE (its row
/// pending at `source_deleted`); the executor that takes the mount over cannot prove the
/// destination yet (HEAD answers 500), so the row stays pending. A put on the move's source path
/// must not run ahead of it: it is refused with the retryable `PathPending` and writes nothing.
/// Once the store answers, the put sent again first settles the move (committed, removing the
/// source's old node) and then commits its own node. (Before, the put committed at once and the
/// move's recovery later removed the put's node with the move's: an acknowledged write lost, its
/// object left in the bucket with no node.)
pub async fn a_new_write_waits_for_the_pending_move_on_its_path(backend: Backend) {
    let mut settings = common::fast_settings();
    // No periodic pass: the move is recovered at start and by the put, nowhere else.
    settings.recovery_interval = Duration::from_secs(600);
    let (mut env, proxy) = behind_proxy(backend, 37, |_| {}, settings, |_| {}).await;
    let moved = body(150_000, 5);
    crate::crash::transfer_killed_at(&env, &moved, "mv", "mv-k", "after_source_deleted").await;
    assert_eq!(env.journal_state("mv-k").await, "pending");
    proxy.add(Rule {
        key_suffix: Some("/to/b.bin".into()),
        ..Rule::always(Some(Op::HeadObject), Fault::Status(500, "InternalError"))
    });
    env.exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    let newer = body(40_000, 6);
    let first = env
        .exec
        .put_bytes("m", "from/a.bin", newer.clone(), key("p"))
        .await;
    proxy.clear();
    // Without the rule the put was told it committed: whatever recovery does next must keep it.
    if let Err(e) = first {
        assert!(
            matches!(&e, Error::PathPending { journal_id, .. } if *journal_id > 0),
            "{e:?}"
        );
        assert!(e.is_retryable(), "{e:?}");
        assert_eq!(env.journal_state("mv-k").await, "pending");
        assert_eq!(
            env.object(&env.key("from/a.bin")).await,
            None,
            "the refused put wrote nothing"
        );
        let r = env
            .exec
            .put_bytes("m", "from/a.bin", newer.clone(), key("p"))
            .await
            .unwrap();
        assert_eq!(
            env.journal_state("mv-k").await,
            "committed",
            "the put settled the move first"
        );
        assert_eq!(r.node.unwrap().sha256.to_string(), sha256_hex(&newer));
    }
    env.exec.shutdown().await;
    env.exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    env.wait_no_pending(Duration::from_secs(20)).await;
    let node = env.exec.stat("m", "from/a.bin").await.unwrap().node;
    assert_eq!(
        node.map(|n| n.meta.sha256.to_string()),
        Some(sha256_hex(&newer)),
        "the acknowledged put's node at the move's source path"
    );
    let mut expected = Expected::new();
    expected.insert(("m".into(), "from/a.bin".into()), sha256_hex(&newer));
    expected.insert(("m".into(), "to/b.bin".into()), sha256_hex(&moved));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A large copy (UploadPartCopy) fails after two of its three parts were copied (the third
/// refused until the retries ran out): its upload stays open for a resume. The source path is
/// then overwritten with content of the same size, and the copy is sent again under its key. It
/// pins the new version, and the open upload's parts were copied from the old one: the upload
/// records the source version its parts come from, so it is given up and the copy starts over
/// (three parts copied again), and the destination holds exactly the new source. (Before, the
/// resume compared part sizes only: the destination mixed both versions under a node naming the
/// new one's SHA-256.)
pub async fn a_large_copy_sent_again_after_its_source_changed_starts_over(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 2;
    let (env, proxy) = behind_proxy(
        backend,
        38,
        |r| {
            multipart(r);
            r.copy_threshold = (5 * MIB) as i64;
            r.part_concurrency = 1;
        },
        settings,
        |_| {},
    )
    .await;
    let len = 12 * MIB + 17;
    let old = body(len, 1);
    env.exec
        .put_reader("m", "src.bin", std::io::Cursor::new(old), key("old"))
        .await
        .unwrap();
    proxy.add(Rule {
        part: Some(3),
        ..Rule::always(Some(Op::UploadPartCopy), Fault::Status(503, "SlowDown"))
    });
    let (from, to) = (Location::new("m", "src.bin"), Location::new("m", "dst.bin"));
    let copy = || {
        env.exec.copy(
            &from,
            &to,
            TransferOptions {
                idempotency_key: Some("big-copy".into()),
                ..Default::default()
            },
        )
    };
    let e = copy().await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    let open: Vec<_> = env
        .uploads()
        .await
        .into_iter()
        .filter(|(_, state)| state == "open")
        .collect();
    assert_eq!(open.len(), 1, "the copy's upload is left to resume");
    proxy.clear();
    let new = body(len, 2);
    env.exec
        .put_reader(
            "m",
            "src.bin",
            std::io::Cursor::new(new.clone()),
            key("new"),
        )
        .await
        .unwrap();
    let copied_before = proxy.count(Op::UploadPartCopy);
    let r = copy().await.unwrap();
    assert!(
        env.object(&env.key("dst.bin")).await == Some(new.clone()),
        "the destination holds exactly the new source"
    );
    assert_eq!(r.node.unwrap().sha256.to_string(), sha256_hex(&new));
    assert_eq!(
        proxy.count(Op::UploadPartCopy) - copied_before,
        3,
        "every part copied again, from the new version"
    );
    let mut expected = Expected::new();
    expected.insert(("m".into(), "src.bin".into()), sha256_hex(&new));
    expected.insert(("m".into(), "dst.bin".into()), sha256_hex(&new));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// S3 writes are compare-and-swap against the node where the store honours it. The mount's
/// probe finds which conditions its store honours (moto: all three; recorded and shown in the
/// supervisor's status and `mount_store_conditions`). An object written behind the executor's
/// back over a path's object is then neither overwritten by a put (`If-Match` the node's ETag)
/// nor deleted by a delete (`If-Match` on DeleteObject): both are refused with
/// `PreconditionFailed`, nothing written or deleted. On a store that ignores a condition it is
/// not sent, and the write goes ahead as before.
pub async fn writes_are_conditioned_on_the_node_where_the_store_honours_it(backend: Backend) {
    let (env, _proxy) = behind_proxy(backend, 39, |_| {}, common::fast_settings(), |_| {}).await;
    let v1 = b"first".to_vec();
    let v2 = b"second version".to_vec();
    env.exec
        .put_bytes("m", "a.txt", v1.clone(), key("v1"))
        .await
        .unwrap();
    // An overwrite: the first write with a node to condition on runs the probe.
    env.exec
        .put_bytes("m", "a.txt", v2.clone(), key("v2"))
        .await
        .unwrap();
    let found = env
        .exec
        .status("m")
        .await
        .unwrap()
        .conditions
        .expect("probed");
    eprintln!("{backend:?}: the store honours {found:?}");
    assert_eq!(
        env.exec.store_conditions("m").await.unwrap(),
        Some(found),
        "recorded as found"
    );
    if backend == Backend::Moto {
        assert!(
            found.put_if_none_match && found.put_if_match && found.delete_if_match,
            "{found:?}"
        );
    }
    assert!(
        env.keys_in(&env.bucket, "")
            .await
            .iter()
            .all(|k| !k.contains(".filestore-conditions-probe-")),
        "the probe's object is removed"
    );

    let foreign = b"written behind the executor's back".to_vec();
    env.raw_put(&env.key("a.txt"), &foreign).await;
    let put = env
        .exec
        .put_bytes("m", "a.txt", b"third".to_vec(), key("v3"))
        .await;
    if found.put_if_match {
        let e = put.unwrap_err();
        assert!(
            matches!(&e, Error::PreconditionFailed { reason, .. } if reason.contains("another writer")),
            "{e:?}"
        );
        assert_eq!(env.object(&env.key("a.txt")).await, Some(foreign.clone()));
        assert_eq!(env.journal_state("v3").await, "failed");
        let node = env.exec.stat("m", "a.txt").await.unwrap().node.unwrap();
        assert_eq!(node.meta.sha256.to_string(), sha256_hex(&v2));
    } else {
        put.unwrap();
        env.raw_put(&env.key("a.txt"), &foreign).await;
    }
    let delete = env.exec.delete("m", "a.txt", Default::default()).await;
    if found.delete_if_match {
        let e = delete.unwrap_err();
        assert!(
            matches!(&e, Error::PreconditionFailed { reason, .. } if reason.contains("another writer")),
            "{e:?}"
        );
        assert_eq!(env.object(&env.key("a.txt")).await, Some(foreign));
        // Put back what the node names: the delete then goes ahead.
        let node = env.exec.stat("m", "a.txt").await.unwrap().node.unwrap();
        let named = if node.meta.sha256 == sha256_hex(&v2) {
            v2
        } else {
            b"third".to_vec()
        };
        env.raw_put(&env.key("a.txt"), &named).await;
        env.exec
            .delete("m", "a.txt", Default::default())
            .await
            .unwrap();
    } else {
        delete.unwrap();
    }
    assert_eq!(env.object(&env.key("a.txt")).await, None);
    invariants::check(&env, &Expected::new()).await;
    env.cleanup().await;
}

/// An overwrite sent with `If-Match` (the node's ETag) whose answer is lost after the store
/// applied it: the retry is refused (412), the key now holding this put's own object — which the
/// write marker proves, and the put commits (on a store that ignores If-Match the retry simply
/// writes again).
pub async fn an_overwrite_whose_answer_was_lost_is_proven_its_own_after_a_412(backend: Backend) {
    let (env, proxy) = behind_proxy(backend, 40, |_| {}, common::fast_settings(), |_| {}).await;
    env.exec
        .put_bytes("m", "b.txt", b"old".to_vec(), key("old"))
        .await
        .unwrap();
    // The probe first (its requests are not the put's).
    env.exec
        .put_bytes("m", "b.txt", b"older".to_vec(), key("older"))
        .await
        .unwrap();
    let found = env
        .exec
        .status("m")
        .await
        .unwrap()
        .conditions
        .expect("probed");
    proxy.add(Rule {
        key_suffix: Some("/b.txt".into()),
        ..Rule::once(Op::PutObject, Fault::DropResponse)
    });
    let new = b"the new content".to_vec();
    let r = env
        .exec
        .put_bytes("m", "b.txt", new.clone(), key("new"))
        .await
        .unwrap();
    assert_eq!(r.node.unwrap().sha256.to_string(), sha256_hex(&new));
    let refused_retry = proxy
        .seen()
        .iter()
        .any(|s| s.op == Op::PutObject && s.key.ends_with("/b.txt") && s.status == Some(412));
    assert_eq!(
        refused_retry, found.put_if_match,
        "the retry was refused by If-Match exactly where the store honours it"
    );
    let mut expected = Expected::new();
    expected.insert(("m".into(), "b.txt".into()), sha256_hex(&new));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Found by the adversarial run (seed 20261205, "I1: content of m:a/p0"). An overwrite sent
/// with `If-Match` (the node's ETag) is applied and its answer lost; the retry is refused (412),
/// and the HEAD that should show the put's own object shows the node's older version — a store
/// serving an older state, although the refusal proved that version is no longer there. The put
/// is not failed on that read: its row is left pending (the caller told to retry) and recovery
/// commits it once the store shows the object. (Before, the row failed while its object stayed
/// in the bucket under a node naming the older version.)
pub async fn a_refused_retry_that_still_reads_the_older_version_is_left_to_recovery(
    backend: Backend,
) {
    let mut settings = common::fast_settings();
    settings.recovery_interval = Duration::from_millis(500);
    let (env, proxy) = behind_proxy(backend, 41, |_| {}, settings, |_| {}).await;
    let old = b"the older version".to_vec();
    env.exec
        .put_bytes("m", "c.txt", old.clone(), key("old"))
        .await
        .unwrap();
    env.exec
        .put_bytes("m", "c.txt", old.clone(), key("old-again"))
        .await
        .unwrap();
    let found = env
        .exec
        .status("m")
        .await
        .unwrap()
        .conditions
        .expect("probed");
    // A HEAD through the proxy: the state a stale read answers with.
    env.exec.stat("m", "c.txt").await.unwrap();
    proxy.add(Rule {
        key_suffix: Some("/c.txt".into()),
        ..Rule::once(Op::PutObject, Fault::DropResponse)
    });
    proxy.add(Rule {
        key_suffix: Some("/c.txt".into()),
        ..Rule::always(
            Some(Op::HeadObject),
            Fault::StaleAfterWrite(Duration::from_secs(3)),
        )
    });
    let new = b"the new version".to_vec();
    let r = env
        .exec
        .put_bytes("m", "c.txt", new.clone(), key("new"))
        .await;
    eprintln!("{backend:?} ({found:?}): the put answered {r:?}");
    if found.put_if_match {
        let e = r.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
    }
    proxy.clear();
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("new").await, "committed");
    assert_eq!(env.object(&env.key("c.txt")).await, Some(new.clone()));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "c.txt".into()), sha256_hex(&new));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Found by the adversarial run (seed 20261205, six clients: "I1: size of m:a/p3"). A copy's
/// CopyObject is applied with its answer lost, then refused until the retries run out: the row
/// is pending. Its source is deleted, and the store still shows the destination's older version
/// for a while. Recovery cannot prove the copy at the destination and cannot make it again (the
/// source is gone): that is an unknown, and the row stays pending until the store shows the
/// copy, which recovery then commits. (Before, recovery failed the row at once: the destination
/// held the copy under a node naming the older version.)
pub async fn a_pending_copy_whose_source_went_is_not_failed_on_a_stale_read(backend: Backend) {
    let (env, proxy, source) = transfer_landed_unanswered(backend, 42, false).await;
    proxy.clear();
    proxy.add(stale_destination());
    env.exec
        .delete("m", "src.txt", Default::default())
        .await
        .unwrap();
    settled_at_destination(&env, "cp", &source).await;
    env.cleanup().await;
}

/// The move variant of the case above (found by the adversarial run with the pending-row rule
/// reverted, seed 20261205: "I1: size of m2:a/p0"). A move's CopyObject is applied with its
/// answer lost and refused until the retries run out: the row is pending at its pin. Its source
/// object then goes (deleted behind the executor's back here) while the store still shows the
/// destination's older version. Recovery neither fails the move nor copies again: once the
/// destination shows the copy made by this row, the move goes on from `copied` — the source's
/// DELETE (of nothing now) and the commit that removes the source's node.
pub async fn a_pending_move_whose_copy_landed_goes_on_from_its_copy(backend: Backend) {
    let (env, proxy, source) = transfer_landed_unanswered(backend, 43, true).await;
    proxy.clear();
    proxy.add(stale_destination());
    env.s3
        .delete_object()
        .bucket(&env.bucket)
        .key(env.key("src.txt"))
        .send()
        .await
        .unwrap();
    settled_at_destination(&env, "mv", &source).await;
    assert!(matches!(
        env.exec.stat("m", "src.txt").await,
        Err(Error::NotFound { .. })
    ));
    env.cleanup().await;
}

/// `m/src.txt` copied (`move_`: moved) to `m/dst.txt`, which held an older object a HEAD through
/// the proxy has seen, under key `cp` (`mv`): the CopyObject is applied with its answer lost, then
/// refused until the retries run out, so the call fails retryably and its row stays pending.
/// Returns the source's content.
async fn transfer_landed_unanswered(
    backend: Backend,
    seed: u64,
    move_: bool,
) -> (TestEnv, common::faultproxy::FaultProxy, Vec<u8>) {
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 2;
    settings.recovery_interval = Duration::from_millis(300);
    let (env, proxy) = behind_proxy(backend, seed, |_| {}, settings, |_| {}).await;
    let source = b"the transfer's source, 34 bytes..".to_vec();
    env.exec
        .put_bytes("m", "src.txt", source.clone(), key("src"))
        .await
        .unwrap();
    env.exec
        .put_bytes("m", "dst.txt", b"older".to_vec(), key("dst"))
        .await
        .unwrap();
    env.exec.stat("m", "dst.txt").await.unwrap(); // the state a stale read answers with
    proxy.add(Rule::once(Op::CopyObject, Fault::DropResponse));
    proxy.add(Rule::always(
        Some(Op::CopyObject),
        Fault::Status(503, "SlowDown"),
    ));
    proxy.add(stale_destination());
    let (from, to) = (Location::new("m", "src.txt"), Location::new("m", "dst.txt"));
    let opts = |k: &str| TransferOptions {
        idempotency_key: Some(k.into()),
        ..Default::default()
    };
    let e = match move_ {
        true => env.exec.move_object(&from, &to, opts("mv")).await,
        false => env.exec.copy(&from, &to, opts("cp")).await,
    }
    .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    (env, proxy, source)
}

/// HEADs of `dst.txt` answered with the state before its last write, for 3 s after it.
fn stale_destination() -> Rule {
    Rule {
        key_suffix: Some("/dst.txt".into()),
        ..Rule::always(
            Some(Op::HeadObject),
            Fault::StaleAfterWrite(Duration::from_secs(3)),
        )
    }
}

/// Waits until nothing is pending; the row of `key` committed, `dst.txt` holding `source`, and the
/// invariants with that one node.
async fn settled_at_destination(env: &TestEnv, key: &str, source: &[u8]) {
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state(key).await, "committed");
    assert_eq!(env.object(&env.key("dst.txt")).await, Some(source.to_vec()));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(source));
    invariants::check(env, &expected).await;
}

/// A write to a pending copy's source waits for the copy. A copy's CopyObject times out (never
/// answered, never applied): its row is pending, its source pinned. A put on the source path then
/// settles the copy first — which copies the pinned version — and only then writes. (Before, the
/// put went ahead, and the copy's recovery copied again from the source by its pinned ETag; moto
/// ignores `x-amz-copy-source-if-match`, so the destination got the newer version under the
/// pinned one's name and the copy failed its verification with the destination overwritten —
/// found by the adversarial run: "I1: size of m:a/p0".)
pub async fn a_write_to_a_pending_copys_source_waits_for_the_copy(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 1;
    settings.recovery_interval = Duration::from_secs(600);
    let (env, proxy) = behind_proxy(
        backend,
        44,
        |_| {},
        settings,
        |c| {
            c.s3.attempt_timeout = Duration::from_secs(1);
        },
    )
    .await;
    let first = b"the source's first version".to_vec();
    let older = b"the destination's older content".to_vec();
    env.exec
        .put_bytes("m", "src.txt", first.clone(), key("src"))
        .await
        .unwrap();
    env.exec
        .put_bytes("m", "dst.txt", older.clone(), key("dst"))
        .await
        .unwrap();
    proxy.add(Rule::once(Op::CopyObject, Fault::Stall));
    let e = env
        .exec
        .copy(
            &Location::new("m", "src.txt"),
            &Location::new("m", "dst.txt"),
            TransferOptions {
                idempotency_key: Some("cp".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(env.journal_state("cp").await, "pending");
    let second = b"the source's second version, longer".to_vec();
    env.exec
        .put_bytes("m", "src.txt", second.clone(), key("src-2"))
        .await
        .unwrap();
    env.exec.shutdown().await;
    let env = {
        let mut env = env;
        env.exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
        env
    };
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(
        env.journal_state("cp").await,
        "committed",
        "the copy was settled before the put on its source"
    );
    assert_eq!(env.object(&env.key("dst.txt")).await, Some(first.clone()));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "src.txt".into()), sha256_hex(&second));
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(&first));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A move whose source DELETE is applied with its answer lost, then refused until the retries
/// run out: its row is pending at `copied`, its source gone. The store still shows the
/// destination's older version for a while, so recovery cannot prove the copy, nor copy again
/// (no source): the row waits (an unknown), and is committed once the store shows the copy.
/// (Before, recovery failed the move as NotFound: the source's node named an object it had
/// deleted — found by the adversarial run, "I1: node m:a/p3 names data/a/p3, which is not in …".)
pub async fn a_move_past_its_source_delete_waits_out_a_stale_destination(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 2;
    settings.recovery_interval = Duration::from_millis(300);
    let (env, proxy) = behind_proxy(backend, 45, |_| {}, settings, |_| {}).await;
    let source = b"the move's source, 30 bytes ..".to_vec();
    env.exec
        .put_bytes("m", "src.txt", source.clone(), key("src"))
        .await
        .unwrap();
    env.exec
        .put_bytes("m", "dst.txt", b"older".to_vec(), key("dst"))
        .await
        .unwrap();
    env.exec.stat("m", "dst.txt").await.unwrap(); // the state a stale read answers with
    proxy.add(Rule {
        key_suffix: Some("/src.txt".into()),
        ..Rule::once(Op::DeleteObject, Fault::DropResponse)
    });
    proxy.add(Rule {
        key_suffix: Some("/src.txt".into()),
        ..Rule::always(Some(Op::DeleteObject), Fault::Status(503, "SlowDown"))
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
    assert_eq!(
        env.object(&env.key("src.txt")).await,
        None,
        "the DELETE was applied"
    );
    proxy.clear();
    proxy.add(Rule {
        key_suffix: Some("/dst.txt".into()),
        ..Rule::always(
            Some(Op::HeadObject),
            Fault::StaleAfterWrite(Duration::from_secs(3)),
        )
    });
    // The copy's write opened the stale window; it is still open when recovery looks.
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("mv").await, "committed");
    assert_eq!(env.object(&env.key("dst.txt")).await, Some(source.clone()));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(&source));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Issue 25, review: the strict settings policy met after the settings probe passed. The store
/// keeps a path's next version without the mount's storage class (as it reports it). The
/// earlier version is already replaced in the bucket, so deleting the new object would leave
/// the node naming nothing: it is committed as the store holds it, with what was not applied
/// on its node, and the mount's later writes are refused before they touch a key. (Before, the
/// object was deleted and the call failed: the node named a key the bucket no longer held.)
pub async fn a_setting_the_store_dropped_on_an_overwrite_does_not_delete_the_path(
    backend: Backend,
) {
    let (env, proxy) = behind_proxy(
        backend,
        37,
        |r| r.storage_class = Some("STANDARD_IA".into()),
        common::fast_settings(),
        |_| {},
    )
    .await;
    let first = env
        .exec
        .put_bytes("m", "f.txt", b"first".to_vec(), key("first"))
        .await;
    match (&first, backend) {
        (Ok(_), Backend::Moto | Backend::External) => {}
        // s3s-fs refuses STANDARD_IA (InvalidStorageClass, conformance
        // mount_storage_class_and_sse): no version of the path is ever written with it.
        (Err(Error::Storage { .. }), Backend::S3sFs) => {
            assert_eq!(env.count("nodes").await, 0);
            assert!(env.bucket_keys().await.is_empty());
            env.cleanup().await;
            return;
        }
        (Err(e), Backend::External) => {
            println!("the store does not keep STANDARD_IA ({e}): nothing to overwrite");
            env.cleanup().await;
            return;
        }
        (other, _) => panic!("{other:?}"),
    }
    for op in [Op::PutObject, Op::HeadObject] {
        proxy.add(Rule {
            key_suffix: Some("/f.txt".into()),
            ..Rule::always(Some(op), Fault::StripResponseHeader("x-amz-storage-class"))
        });
    }
    let second = env
        .exec
        .put_bytes("m", "f.txt", b"second".to_vec(), key("second"))
        .await
        .unwrap();
    let node = second.node.as_ref().unwrap();
    assert!(
        node.not_applied
            .iter()
            .any(|s| s.starts_with("storage_class")),
        "{node:?}"
    );
    assert_eq!(
        env.object(&env.key("f.txt")).await,
        Some(b"second".to_vec())
    );
    proxy.clear();
    let puts = proxy.count(Op::PutObject);
    let third = env
        .exec
        .put_bytes("m", "g.txt", b"third".to_vec(), key("third"))
        .await
        .unwrap_err();
    assert!(
        matches!(third, Error::SettingsNotApplied { .. }),
        "{third:?}"
    );
    assert_eq!(
        proxy.count(Op::PutObject),
        puts,
        "the later write was refused before it touched a key"
    );
    let mut expected = Expected::new();
    expected.insert(("m".into(), "f.txt".into()), sha256_hex(b"second"));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Issue 25, rule 9 on a move's source: another writer puts an object at the source key while
/// the move's DELETE is on its way (held 1.5 s at the proxy). Where the store honours `If-Match`
/// on DeleteObject, the DELETE names the pinned object, the late write is kept and the move ends
/// as a copy of what it pinned (its source's node kept); where it does not (s3s-fs), the late
/// write is deleted with the source — the window docs/failures.md names.
pub async fn a_move_deletes_only_the_source_object_it_pinned(backend: Backend) {
    move_deletes_only_the_pinned_source(backend, false).await;
}

/// The same across mounts: the move runs on the destination mount's supervisor, and its DELETE
/// of the source is conditioned as the source mount's owner (this host) recorded its store's
/// probe (before, a cross-mount move's DELETE went unconditioned and took the late write along).
pub async fn a_move_across_mounts_deletes_only_the_source_object_it_pinned(backend: Backend) {
    move_deletes_only_the_pinned_source(backend, true).await;
}

async fn move_deletes_only_the_pinned_source(backend: Backend, across: bool) {
    let (mut env, proxy) = behind_proxy(backend, 41, |_| {}, common::fast_settings(), |_| {}).await;
    let (to_mount, to_key) = match across {
        true => {
            let row = env.add_mount("m2", |_| {}).await;
            ("m2", (row.bucket, format!("{}/dst.txt", row.prefix)))
        }
        false => ("m", (env.bucket.clone(), env.key("dst.txt"))),
    };
    let original = b"the source".to_vec();
    if across {
        // An overwrite on the source mount: its probe runs and is recorded.
        env.exec
            .put_bytes("m", "src.txt", b"first".to_vec(), key("src0"))
            .await
            .unwrap();
    }
    env.exec
        .put_bytes("m", "src.txt", original.clone(), key("src"))
        .await
        .unwrap();
    proxy.add(Rule {
        key_suffix: Some("/src.txt".into()),
        times: Some(1),
        ..Rule::always(
            Some(Op::DeleteObject),
            Fault::Delay(Duration::from_millis(1500)),
        )
    });
    let exec = env.exec.clone();
    let mv = tokio::spawn(async move {
        exec.move_object(
            &Location::new("m", "src.txt"),
            &Location::new(to_mount, "dst.txt"),
            TransferOptions::default(),
        )
        .await
    });
    wait_for_request(&proxy, Op::DeleteObject, "/src.txt", 0).await;
    let late = b"a late write at the source key".to_vec();
    env.raw_put(&env.key("src.txt"), &late).await;
    mv.await.unwrap().unwrap();
    assert_eq!(
        env.object_in(&to_key.0, &to_key.1).await,
        Some(original.clone())
    );
    let conditions = env.exec.store_conditions("m").await.unwrap().unwrap();
    let source_node = env
        .exec
        .stat("m", "src.txt")
        .await
        .ok()
        .and_then(|s| s.node);
    match backend {
        Backend::Moto => assert!(conditions.delete_if_match),
        Backend::S3sFs => assert!(!conditions.delete_if_match),
        Backend::External => println!("DELETE If-Match honoured: {}", conditions.delete_if_match),
    }
    if conditions.delete_if_match {
        assert_eq!(
            env.object(&env.key("src.txt")).await,
            Some(late),
            "the late write is kept"
        );
        let node = source_node.expect("the move ended as a copy: its source's node is kept");
        assert_eq!(node.meta.sha256, sha256_hex(&original));
    } else {
        assert_eq!(env.object(&env.key("src.txt")).await, None);
        assert!(source_node.is_none(), "{source_node:?}");
    }
    let rows = env
        .query("SELECT state FROM {schema}.journal WHERE op = 'move'", &[])
        .await;
    assert_eq!(rows[0].get::<_, String>(0), "committed");
    env.cleanup().await;
}

/// A multipart put's CompleteMultipartUpload is compare-and-swap against the node too, where the
/// store honours the condition on Complete (moto: `If-None-Match` only; AWS: both). A create-only
/// multipart put whose key gets an object behind the executor's back while its parts go up is
/// refused at Complete (`PreconditionFailed`), the object kept, the upload aborted, no node. Sent
/// create-only again under a new key to a new path, with Complete's answer lost after the store
/// applied it: the retry is refused (412) by the very object it completed, which its marker
/// proves, and the put commits. On a store that ignores the condition it is not sent: the first
/// put overwrites the foreign object, as before.
pub async fn a_multipart_complete_is_conditioned_on_the_node_where_the_store_honours_it(
    backend: Backend,
) {
    let (env, proxy) = behind_proxy(backend, 42, multipart, common::fast_settings(), |_| {}).await;
    let create = |k: &str| PutOptions {
        idempotency_key: Some(k.into()),
        mode: filestore_s3::PutMode::Create,
        ..Default::default()
    };
    proxy.add(Rule {
        key_suffix: Some("/big.bin".into()),
        times: Some(1),
        ..Rule::always(
            Some(Op::CompleteMultipartUpload),
            Fault::Delay(Duration::from_millis(1500)),
        )
    });
    let exec = env.exec.clone();
    let big = body(7 * MIB, 42);
    let put = tokio::spawn({
        let big = big.clone();
        async move {
            exec.put_reader("m", "big.bin", std::io::Cursor::new(big), create("c1"))
                .await
        }
    });
    wait_for_request(&proxy, Op::CompleteMultipartUpload, "/big.bin", 0).await;
    let foreign = b"written behind the executor's back".to_vec();
    env.raw_put(&env.key("big.bin"), &foreign).await;
    let put = put.await.unwrap();
    let found = env
        .exec
        .status("m")
        .await
        .unwrap()
        .conditions
        .expect("probed");
    eprintln!("{backend:?}: the store honours {found:?}");
    match backend {
        Backend::Moto => assert!(found.complete_if_none_match && !found.complete_if_match),
        Backend::S3sFs | Backend::External => {}
    }
    let mut expected = Expected::new();
    if found.complete_if_none_match {
        let e = put.unwrap_err();
        assert!(
            matches!(&e, Error::PreconditionFailed { reason, .. } if reason.contains("create-only")),
            "{e:?}"
        );
        assert_eq!(env.object(&env.key("big.bin")).await, Some(foreign));
        assert_eq!(env.journal_state("c1").await, "failed");
        assert!(env.exec.stat("m", "big.bin").await.unwrap().node.is_none());
    } else {
        put.unwrap();
        assert_eq!(env.object(&env.key("big.bin")).await, Some(big.clone()));
        expected.insert(("m".into(), "big.bin".into()), sha256_hex(&big));
    }

    proxy.add(Rule {
        key_suffix: Some("/lost.bin".into()),
        times: Some(1),
        ..Rule::always(Some(Op::CompleteMultipartUpload), Fault::DropResponse)
    });
    let lost = body(7 * MIB, 43);
    env.exec
        .put_reader(
            "m",
            "lost.bin",
            std::io::Cursor::new(lost.clone()),
            create("c2"),
        )
        .await
        .unwrap();
    assert_eq!(env.journal_state("c2").await, "committed");
    assert_eq!(env.object(&env.key("lost.bin")).await, Some(lost.clone()));
    expected.insert(("m".into(), "lost.bin".into()), sha256_hex(&lost));

    // An overwrite, `If-Match` the node's ETag where the store honours it on Complete (s3s-fs):
    // an object written behind the executor's back while the parts go up is not replaced.
    if found.complete_if_match {
        proxy.add(Rule {
            key_suffix: Some("/lost.bin".into()),
            times: Some(1),
            ..Rule::always(
                Some(Op::CompleteMultipartUpload),
                Fault::Delay(Duration::from_millis(1500)),
            )
        });
        let before = seen_count(&proxy, Op::CompleteMultipartUpload, "/lost.bin");
        let exec = env.exec.clone();
        let put = tokio::spawn(async move {
            exec.put_reader(
                "m",
                "lost.bin",
                std::io::Cursor::new(body(7 * MIB, 44)),
                key("o1"),
            )
            .await
        });
        wait_for_request(&proxy, Op::CompleteMultipartUpload, "/lost.bin", before).await;
        let foreign = b"another object written behind the executor's back".to_vec();
        env.raw_put(&env.key("lost.bin"), &foreign).await;
        let e = put.await.unwrap().unwrap_err();
        assert!(
            matches!(&e, Error::PreconditionFailed { reason, .. } if reason.contains("another writer")),
            "{e:?}"
        );
        assert_eq!(
            env.object(&env.key("lost.bin")).await,
            Some(foreign.clone())
        );
        assert_eq!(env.journal_state("o1").await, "failed");
        let node = env.exec.stat("m", "lost.bin").await.unwrap().node.unwrap();
        assert_eq!(node.meta.sha256, sha256_hex(&lost));
        // Put back what the node names, so the path is in step for the checker.
        env.raw_put(&env.key("lost.bin"), &lost).await;
    }
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A write whose key cannot be looked at (every HEAD failing, its retries spent) is left pending
/// however long that lasts, past the consistency horizon included: a store that cannot be
/// looked at says nothing about what it holds. Once HEAD answers, recovery commits the write.
/// (Before, a failed HEAD counted as "not shown yet", and past the horizon recovery failed the
/// row while the bucket held its object: the node named the old content.)
pub async fn a_write_whose_key_cannot_be_looked_at_stays_pending_past_the_horizon(
    backend: Backend,
) {
    let mut settings = common::fast_settings();
    settings.consistency_horizon = Duration::from_secs(2);
    settings.recovery_interval = Duration::from_millis(500);
    settings.retry.max_attempts = 2;
    let (env, proxy) =
        behind_proxy(backend, 43, |r| r.verify_window_ms = 500, settings, |_| {}).await;
    env.exec
        .put_bytes("m", "a.txt", b"version one".to_vec(), key("p1"))
        .await
        .unwrap();
    proxy.add(Rule {
        key_suffix: Some("/a.txt".into()),
        ..Rule::always(Some(Op::HeadObject), Fault::Status(500, "InternalError"))
    });
    let v2 = b"version two, longer".to_vec();
    let e = env
        .exec
        .put_bytes("m", "a.txt", v2.clone(), key("p2"))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    // Past the horizon, through several recovery passes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.journal_state("p2").await, "pending");
    assert_eq!(env.object(&env.key("a.txt")).await, Some(v2.clone()));
    proxy.clear();
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("p2").await, "committed");
    let node = env.exec.stat("m", "a.txt").await.unwrap().node.unwrap();
    assert_eq!(node.meta.sha256, sha256_hex(&v2));
    let mut expected = Expected::new();
    expected.insert(("m".into(), "a.txt".into()), sha256_hex(&v2));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A call repeating one that committed (its answer lost) gets that outcome even while another
/// operation's row holds the path pending and cannot be settled yet: here a delete whose DELETE
/// answered 500 until its retries ran out (maybe applied), with the key's HEADs failing too.
/// (Before, the repeated call first had to settle that row, and was answered `PathPending`
/// although its own result was recorded.)
pub async fn a_repeated_call_gets_its_committed_result_while_the_path_is_pending(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.consistency_horizon = Duration::from_secs(2);
    settings.recovery_interval = Duration::from_millis(500);
    settings.retry.max_attempts = 2;
    let (env, proxy) =
        behind_proxy(backend, 45, |r| r.verify_window_ms = 300, settings, |_| {}).await;
    let body = b"the committed put".to_vec();
    let first = env
        .exec
        .put_bytes("m", "a.txt", body.clone(), key("p"))
        .await
        .unwrap();
    for op in [Op::DeleteObject, Op::HeadObject] {
        proxy.add(Rule {
            key_suffix: Some("/a.txt".into()),
            ..Rule::always(Some(op), Fault::Status(500, "InternalError"))
        });
    }
    let e = env
        .exec
        .delete(
            "m",
            "a.txt",
            filestore_s3::DeleteOptions {
                idempotency_key: Some("d".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(env.journal_state("d").await, "pending");
    let again = env
        .exec
        .put_bytes("m", "a.txt", body.clone(), key("p"))
        .await
        .unwrap();
    assert_eq!(again.generation, first.generation);
    assert_eq!(env.journal_state("d").await, "pending");
    // Another call on the path still waits for the pending delete.
    let other = env
        .exec
        .put_bytes("m", "a.txt", b"another put".to_vec(), key("q"))
        .await
        .unwrap_err();
    assert!(matches!(other, Error::PathPending { .. }), "{other:?}");
    proxy.clear();
    // The DELETE never reached the store (the proxy answered for it): the object is still
    // there, and past the horizon recovery fails the delete, the put's node kept.
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("d").await, "failed");
    let mut expected = Expected::new();
    expected.insert(("m".into(), "a.txt".into()), sha256_hex(&body));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// A move killed right after its source's DELETE is finished by recovery, which proves the
/// destination again first. A store that does not show the copy for a while (HEAD answering
/// 404) may be serving an older state: the row waits, within the consistency horizon, and is
/// committed once the copy shows. (Before, recovery failed it at once with `MoveCannotFinish`:
/// the source's node named the object the move had deleted, the copy had no node.)
pub async fn a_move_past_its_source_delete_waits_out_a_copy_not_shown_yet(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.consistency_horizon = Duration::from_secs(20);
    settings.recovery_interval = Duration::from_millis(500);
    let (mut env, proxy) = behind_proxy(backend, 46, |_| {}, settings, |_| {}).await;
    let moved = body(150_000, 46);
    crate::crash::transfer_killed_at(&env, &moved, "mv", "mv-k", "after_source_deleted").await;
    assert_eq!(env.journal_state("mv-k").await, "pending");
    proxy.add(Rule {
        key_suffix: Some("/to/b.bin".into()),
        times: Some(3),
        ..Rule::always(Some(Op::HeadObject), Fault::Status(404, "NoSuchKey"))
    });
    env.exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    env.wait_no_pending(Duration::from_secs(20)).await;
    assert_eq!(env.journal_state("mv-k").await, "committed");
    let heads = seen_count(&proxy, Op::HeadObject, "/to/b.bin");
    assert!(heads >= 3, "{heads} HEADs of the destination");
    proxy.clear();
    let mut expected = Expected::new();
    expected.insert(("m".into(), "to/b.bin".into()), sha256_hex(&moved));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

per_backend! {
    a_move_from_a_mount_this_host_does_not_own_is_refused_before_any_effect => super::a_move_from_a_mount_this_host_does_not_own_is_refused_before_any_effect(B);
    a_new_write_waits_for_the_pending_move_on_its_path => super::a_new_write_waits_for_the_pending_move_on_its_path(B);
    writes_are_conditioned_on_the_node_where_the_store_honours_it => super::writes_are_conditioned_on_the_node_where_the_store_honours_it(B);
    an_overwrite_whose_answer_was_lost_is_proven_its_own_after_a_412 => super::an_overwrite_whose_answer_was_lost_is_proven_its_own_after_a_412(B);
    a_refused_retry_that_still_reads_the_older_version_is_left_to_recovery => super::a_refused_retry_that_still_reads_the_older_version_is_left_to_recovery(B);
    a_pending_copy_whose_source_went_is_not_failed_on_a_stale_read => super::a_pending_copy_whose_source_went_is_not_failed_on_a_stale_read(B);
    a_pending_move_whose_copy_landed_goes_on_from_its_copy => super::a_pending_move_whose_copy_landed_goes_on_from_its_copy(B);
    a_write_to_a_pending_copys_source_waits_for_the_copy => super::a_write_to_a_pending_copys_source_waits_for_the_copy(B);
    a_move_past_its_source_delete_waits_out_a_stale_destination => super::a_move_past_its_source_delete_waits_out_a_stale_destination(B);
    a_large_copy_sent_again_after_its_source_changed_starts_over => super::a_large_copy_sent_again_after_its_source_changed_starts_over(B);
    a_setting_the_store_dropped_on_an_overwrite_does_not_delete_the_path => super::a_setting_the_store_dropped_on_an_overwrite_does_not_delete_the_path(B);
    a_move_deletes_only_the_source_object_it_pinned => super::a_move_deletes_only_the_source_object_it_pinned(B);
    a_move_across_mounts_deletes_only_the_source_object_it_pinned => super::a_move_across_mounts_deletes_only_the_source_object_it_pinned(B);
    a_multipart_complete_is_conditioned_on_the_node_where_the_store_honours_it => super::a_multipart_complete_is_conditioned_on_the_node_where_the_store_honours_it(B);
    a_write_whose_key_cannot_be_looked_at_stays_pending_past_the_horizon => super::a_write_whose_key_cannot_be_looked_at_stays_pending_past_the_horizon(B);
    a_repeated_call_gets_its_committed_result_while_the_path_is_pending => super::a_repeated_call_gets_its_committed_result_while_the_path_is_pending(B);
    a_move_past_its_source_delete_waits_out_a_copy_not_shown_yet => super::a_move_past_its_source_delete_waits_out_a_copy_not_shown_yet(B);
    @except_moto
    a_pending_copy_is_settled_before_a_later_put_on_its_destination => super::a_pending_copy_is_settled_before_a_later_put_on_its_destination(B);
    a_move_whose_source_still_shows_after_its_delete_is_not_failed => super::a_move_whose_source_still_shows_after_its_delete_is_not_failed(B);
    stale_reads_after_an_overwrite_or_a_delete_are_waited_out => super::stale_reads_after_an_overwrite_or_a_delete_are_waited_out(B);
    a_streamed_upload_completed_but_unverified_is_committed_by_recovery => super::a_streamed_upload_completed_but_unverified_is_committed_by_recovery(B);
}
