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
/// to its destination then commits, and its caller is told so. Recovery of the copy must not copy
/// again over that acknowledged write: the row was superseded, and is failed without a request
/// to S3. (Before, recovery copied again: the put's object was replaced by the copy.)
pub async fn a_pending_copy_superseded_by_a_later_put_is_not_applied_again(backend: Backend) {
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
            "SELECT state, error FROM {schema}.journal WHERE idempotency_key = 'cp'",
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
    assert_eq!(row[0].get::<_, String>(0), "failed");
    let mut expected = Expected::new();
    expected.insert(("m".into(), "src.txt".into()), sha256_hex(&source));
    expected.insert(("m".into(), "dst.txt".into()), sha256_hex(&newer));
    invariants::check(&env, &expected).await;
    env.cleanup().await;
}

per_backend! {
    a_move_from_a_mount_this_host_does_not_own_is_refused_before_any_effect => super::a_move_from_a_mount_this_host_does_not_own_is_refused_before_any_effect(B);
    @except_moto
    a_pending_copy_superseded_by_a_later_put_is_not_applied_again => super::a_pending_copy_superseded_by_a_later_put_is_not_applied_again(B);
    a_move_whose_source_still_shows_after_its_delete_is_not_failed => super::a_move_whose_source_still_shows_after_its_delete_is_not_failed(B);
    stale_reads_after_an_overwrite_or_a_delete_are_waited_out => super::stale_reads_after_an_overwrite_or_a_delete_are_waited_out(B);
    a_streamed_upload_completed_but_unverified_is_committed_by_recovery => super::a_streamed_upload_completed_but_unverified_is_committed_by_recovery(B);
}
