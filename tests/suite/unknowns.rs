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
use common::{sha256_hex, Backend};
use filestore_s3::{PutOptions, S3Executor};

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
    let state: String = env
        .query(
            "SELECT state FROM {schema}.journal WHERE idempotency_key = 's'",
            &[],
        )
        .await[0]
        .get(0);
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
    let state: String = env
        .query(
            "SELECT state FROM {schema}.journal WHERE idempotency_key = 's'",
            &[],
        )
        .await[0]
        .get(0);
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

per_backend! {
    @except_moto
    a_streamed_upload_completed_but_unverified_is_committed_by_recovery => super::a_streamed_upload_completed_but_unverified_is_committed_by_recovery(B);
}
