//! Hostile input at every entry point (issue 10): paths and keys, idempotency keys, content types,
//! sizes, byte ranges, listing tokens and page sizes, feed cursors, event payloads a watcher
//! reads, and mount rows. Each input must be refused with its typed error naming what was wrong,
//! and must leave everything as it was: no request reaches S3 (counted by a proxy in front of
//! s3s-fs), no row of the executor's tables changes, nothing is added to Redis.

use crate::common;
use filestore_s3::Location;

use common::faultproxy::{FaultProxy, Op};
use common::{Backend, TestEnv};
use filestore_s3::{
    DeleteOptions, Error, FollowOptions, GetOptions, ListOptions, MountRow, PutOptions,
    TransferOptions,
};
use filestore_s3_actors::model::{ChangeEvent, EventError};
use filestore_s3_actors::path::{FsPath, PathError};
use filestore_s3_actors::ports::ByteRange;
use futures::StreamExt;

const MIB: usize = 1024 * 1024;

type PathCheck = fn(&PathError) -> bool;
type EventCheck = fn(&EventError) -> bool;

/// What the executor could have changed.
#[derive(Debug, PartialEq)]
struct World {
    /// Requests that reached S3 (bucket-level housekeeping such as the orphan sweep aside).
    s3_requests: usize,
    keys: Vec<String>,
    /// Row counts, and a digest of every `backend_mounts` row.
    tables: Vec<(String, String)>,
    /// Entries of the mount's stream, and keys under the Redis prefix.
    stream_len: usize,
    redis_keys: usize,
}

async fn world(env: &TestEnv, proxy: &FaultProxy) -> World {
    let s3_requests = proxy.seen().iter().filter(|s| s.op != Op::Bucket).count();
    let mut tables = Vec::new();
    for t in [
        "journal",
        "nodes",
        "snapshots",
        "outbox",
        "multipart_uploads",
        "multipart_parts",
    ] {
        tables.push((t.to_owned(), env.count(t).await.to_string()));
    }
    let mounts: String = env
        .pg
        .lock()
        .await
        .query_one(
            &format!(
                "SELECT coalesce(md5(string_agg(b::text, '|' ORDER BY name)), '') FROM {}.backend_mounts b",
                env.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tables.push(("backend_mounts".into(), mounts));
    let stream_len: usize = env
        .redis_query(redis::cmd("XLEN").arg(env.stream_key()))
        .await;
    let redis_keys: Vec<String> = env
        .redis_query(redis::cmd("KEYS").arg(format!("{}:*", env.redis_prefix)))
        .await;
    World {
        s3_requests,
        keys: env.bucket_keys().await,
        tables,
        stream_len,
        redis_keys: redis_keys.len(),
    }
}

fn ct(content_type: &str) -> PutOptions {
    PutOptions {
        content_type: Some(content_type.into()),
        ..Default::default()
    }
}

fn idem(key: &str) -> PutOptions {
    PutOptions {
        idempotency_key: Some(key.into()),
        ..Default::default()
    }
}

fn page(token: Option<&str>, max_keys: Option<i32>) -> ListOptions {
    ListOptions {
        delimited: true,
        token: token.map(str::to_owned),
        max_keys,
    }
}

fn event_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::json!({
        "v": 1,
        "event_id": "0b7f3c1e-6a55-4c1c-9d0e-8f3a2b1c0d9e",
        "mount": "m",
        "op": "put",
        "path": "a/b.txt",
        "key": "data/a/b.txt",
        "size": 3,
        "etag": "\"x\"",
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "generation": 1,
        "journal_id": 7,
        "time": "2026-11-24T12:00:00Z"
    });
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn bad_row(edit: impl FnOnce(&mut MountRow)) -> MountRow {
    let mut r = MountRow::new("hostile", "hostile-bucket", "data");
    r.endpoint = Some("http://127.0.0.1:9".into());
    edit(&mut r);
    r
}

/// Asserts `call` fails with an error matching the pattern and that nothing changed.
macro_rules! refused {
    ($env:expr, $proxy:expr, $count:expr, $label:expr, $call:expr, $pat:pat $(if $guard:expr)?) => {{
        let before = world(&$env, &$proxy).await;
        match $call.await {
            Err(e) => assert!(
                matches!(&e, $pat $(if $guard)?),
                "{}: refused with the wrong error: {e:?}",
                $label
            ),
            Ok(_) => panic!("{}: was accepted", $label),
        }
        let after = world(&$env, &$proxy).await;
        assert_eq!(before, after, "{}: something changed", $label);
        $count += 1;
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_with_typed_errors_and_change_nothing() {
    let proxy = FaultProxy::start(&common::endpoint_of(Backend::S3sFs), 10).await;
    let env = TestEnv::builder(Backend::S3sFs)
        .mount(|r| r.multipart_threshold = MIB as i64)
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    let ex = &env.exec;
    ex.put_bytes("m", "existing.txt", b"kept".to_vec(), PutOptions::default())
        .await
        .unwrap();
    env.wait_outbox_drained().await;
    env.wait_stream(1).await;
    let mut n = 0usize;

    // --- Paths, through put / get / stat / list / delete / copy / move ---
    let bad_paths: Vec<(String, PathCheck)> = vec![
        ("".into(), |e| matches!(e, PathError::Empty)),
        ("/".into(), |e| matches!(e, PathError::Empty)),
        ("a//b".into(), |e| {
            matches!(e, PathError::EmptySegment { index: 1 })
        }),
        ("a/b/".into(), |e| {
            matches!(e, PathError::EmptySegment { index: 2 })
        }),
        ("../etc/passwd".into(), |e| {
            matches!(e, PathError::DotSegment { index: 0, .. })
        }),
        ("a/./b".into(), |e| {
            matches!(e, PathError::DotSegment { index: 1, .. })
        }),
        ("a/%2e%2e/b".into(), |e| {
            matches!(e, PathError::EncodedTraversal { index: 1, .. })
        }),
        ("%2E%2E".into(), |e| {
            matches!(e, PathError::EncodedTraversal { index: 0, .. })
        }),
        ("a/%252e%252e/x".into(), |e| {
            matches!(e, PathError::EncodedTraversal { index: 1, .. })
        }),
        ("a%2fb".into(), |e| {
            matches!(e, PathError::EncodedTraversal { .. })
        }),
        ("a%5c..%5cb".into(), |e| {
            matches!(e, PathError::EncodedTraversal { .. })
        }),
        ("x/%00".into(), |e| {
            matches!(e, PathError::EncodedTraversal { .. })
        }),
        ("a\\b".into(), |e| {
            matches!(e, PathError::Backslash { byte_offset: 1 })
        }),
        ("..\\windows".into(), |e| {
            matches!(e, PathError::Backslash { .. })
        }),
        ("a\0b".into(), |e| {
            matches!(e, PathError::ControlCharacter { code: 0, .. })
        }),
        ("a\nb".into(), |e| {
            matches!(e, PathError::ControlCharacter { code: 10, .. })
        }),
        ("a\u{7f}b".into(), |e| {
            matches!(e, PathError::ControlCharacter { code: 0x7f, .. })
        }),
        ("invoice\u{202E}fdp.exe".into(), |e| {
            matches!(e, PathError::InvisibleCharacter { code: 0x202E, .. })
        }),
        ("pay\u{200B}roll".into(), |e| {
            matches!(e, PathError::InvisibleCharacter { code: 0x200B, .. })
        }),
        ("\u{FEFF}bom.txt".into(), |e| {
            matches!(e, PathError::InvisibleCharacter { code: 0xFEFF, .. })
        }),
        ("cafe\u{301}.txt".into(), |e| {
            matches!(e, PathError::NotNormalized { .. })
        }),
        ("x".repeat(1100), |e| {
            matches!(e, PathError::KeyTooLong { .. })
        }),
        ("\u{e9}".repeat(600), |e| {
            matches!(e, PathError::KeyTooLong { .. })
        }),
    ];
    for (p, want) in &bad_paths {
        refused!(
            env,
            proxy,
            n,
            format!("put {p:?}"),
            ex.put_bytes("m", p, b"x".to_vec(), PutOptions::default()),
            Error::InvalidPath { source, .. } if want(source)
        );
    }
    let invalid_path = |e: &Error| matches!(e, Error::InvalidPath { .. });
    refused!(env, proxy, n, "get ../x", {
        let mut sink = Vec::new();
        async move { ex.get("m", "../x", &mut sink, GetOptions::default()).await }
    }, e if invalid_path(e));
    refused!(env, proxy, n, "stat a//b", ex.stat("m", "a//b"), e if invalid_path(e));
    refused!(env, proxy, n, "list a/../b", ex.list("m", "a/../b", page(None, None)), e if invalid_path(e));
    refused!(env, proxy, n, "delete %2e%2e",
        ex.delete("m", "%2e%2e", DeleteOptions::default()), e if invalid_path(e));
    refused!(env, proxy, n, "copy to a\\b",
        ex.copy(&Location::new("m", "existing.txt"), &Location::new("m", "a\\b"), TransferOptions::default()), e if invalid_path(e));
    refused!(env, proxy, n, "move from NUL",
        ex.move_object(&Location::new("m", "x\0"), &Location::new("m", "y"), TransferOptions::default()), e if invalid_path(e));
    refused!(env, proxy, n, "put_reader a/../b",
        ex.put_reader("m", "a/../b", std::io::Cursor::new(vec![1u8; 10]), PutOptions::default()),
        e if invalid_path(e));
    refused!(
        env,
        proxy,
        n,
        "bytes that are not UTF-8",
        async { FsPath::from_bytes(b"dir/\xff\xfe.bin") },
        PathError::InvalidUtf8 { valid_up_to: 4 }
    );
    refused!(
        env,
        proxy,
        n,
        "unknown mount ../m",
        ex.put_bytes("../m", "a", b"x".to_vec(), PutOptions::default()),
        Error::UnknownMount { .. }
    );
    refused!(
        env,
        proxy,
        n,
        "copy onto itself",
        ex.copy(
            &Location::new("m", "existing.txt"),
            &Location::new("m", "existing.txt"),
            TransferOptions::default()
        ),
        Error::InvalidRequest { .. }
    );

    // --- Idempotency keys ---
    let bad_key = |e: &Error| matches!(e, Error::InvalidIdempotencyKey { .. });
    for (label, k) in [
        ("empty key", String::new()),
        ("256-byte key", "k".repeat(256)),
        ("key with CR LF", "key\r\nX-Injected: 1".into()),
    ] {
        refused!(env, proxy, n, label, ex.put_bytes("m", "k.txt", b"x".to_vec(), idem(&k)), e if bad_key(e));
    }
    refused!(env, proxy, n, "delete key with NUL",
        ex.delete("m", "existing.txt", DeleteOptions { idempotency_key: Some("a\0b".into()) }),
        e if bad_key(e));
    refused!(env, proxy, n, "copy key too long",
        ex.copy(&Location::new("m", "existing.txt"), &Location::new("m", "c.txt"), TransferOptions {
            idempotency_key: Some("x".repeat(300)),
            ..Default::default()
        }),
        e if bad_key(e));

    // --- Content types ---
    let bad_ct = |e: &Error| {
        matches!(
            e,
            Error::InvalidRequest {
                field: "content_type",
                ..
            }
        )
    };
    for (label, c) in [
        (
            "header injection",
            "text/plain\r\nx-amz-acl: public-read-write".to_string(),
        ),
        ("empty content type", String::new()),
        ("not a media type", "not a type".into()),
        ("non-ASCII content type", "t\u{eb}xt/plain".into()),
        ("300-byte content type", format!("text/{}", "a".repeat(300))),
        ("bare parameter", "text/plain; charset".into()),
    ] {
        refused!(env, proxy, n, label, ex.put_bytes("m", "c.txt", b"x".to_vec(), ct(&c)), e if bad_ct(e));
    }
    refused!(env, proxy, n, "stream with a bad content type",
        ex.put_reader("m", "s.bin", std::io::Cursor::new(vec![0u8; 2 * MIB]), ct("x\u{0}/y")),
        e if bad_ct(e));

    // --- User metadata ---
    let bad_meta = |e: &Error| {
        matches!(
            e,
            Error::InvalidRequest {
                field: "metadata",
                ..
            }
        )
    };
    for (label, name, value) in [
        (
            "upper-case metadata name",
            "Owner".to_string(),
            "a".to_string(),
        ),
        ("empty metadata name", String::new(), "a".into()),
        ("metadata name with a space", "a b".into(), "a".into()),
        (
            "metadata name under filestore-",
            "filestore-journal-id".into(),
            "1".into(),
        ),
        (
            "metadata value with CR LF",
            "x".into(),
            "a\r\nx-amz-acl: public-read".into(),
        ),
        ("non-ASCII metadata value", "x".into(), "caf\u{e9}".into()),
        ("metadata over 2 KiB", "x".into(), "v".repeat(2100)),
    ] {
        let opts = PutOptions {
            metadata: [(name, value)].into_iter().collect(),
            ..Default::default()
        };
        refused!(env, proxy, n, label, ex.put_bytes("m", "meta.txt", b"x".to_vec(), opts), e if bad_meta(e));
    }

    // --- Sizes and ranges ---
    refused!(
        env,
        proxy,
        n,
        "single put over the threshold",
        ex.put_bytes("m", "big.bin", vec![0u8; MIB + 1], PutOptions::default()),
        Error::TooLarge { .. }
    );
    refused!(
        env,
        proxy,
        n,
        "range ending before its start",
        {
            let mut sink = Vec::new();
            async move {
                ex.get(
                    "m",
                    "existing.txt",
                    &mut sink,
                    GetOptions {
                        range: Some(ByteRange {
                            start: 10,
                            end: Some(5),
                        }),
                    },
                )
                .await
            }
        },
        Error::InvalidRequest { field: "range", .. }
    );

    // --- Listing tokens and page sizes ---
    for (label, token, max_keys, field) in [
        ("empty token", Some(String::new()), None, "token"),
        (
            "token with a line break",
            Some("abc\ndef".to_string()),
            None,
            "token",
        ),
        ("2000-byte token", Some("t".repeat(2000)), None, "token"),
        (
            "non-ASCII token",
            Some("t\u{f6}ken".to_string()),
            None,
            "token",
        ),
        ("max_keys 0", None, Some(0), "max_keys"),
        ("max_keys -5", None, Some(-5), "max_keys"),
        ("max_keys 5000", None, Some(5000), "max_keys"),
    ] {
        refused!(env, proxy, n, label,
            ex.list("m", "", page(token.as_deref(), max_keys)),
            Error::InvalidRequest { field: f, .. } if *f == field);
    }

    // --- Feed cursor and the payloads a watcher reads ---
    refused!(
        env,
        proxy,
        n,
        "negative feed cursor",
        async {
            Box::pin(ex.follow("m", -1, FollowOptions::default()))
                .next()
                .await
                .unwrap()
        },
        Error::InvalidRequest { field: "after", .. }
    );
    let payloads: Vec<(&str, Vec<u8>, EventCheck)> = vec![
        ("not JSON", b"{\"v\":1,".to_vec(), |e| {
            matches!(e, EventError::Malformed(_))
        }),
        ("not UTF-8", b"\xff\xfe{}".to_vec(), |e| {
            matches!(e, EventError::Malformed(_))
        }),
        ("unknown version", event_json(|v| v["v"] = 99.into()), |e| {
            matches!(e, EventError::Version { v: 99 })
        }),
        (
            "event id not a UUID",
            event_json(|v| v["event_id"] = "1-0".into()),
            |e| matches!(e, EventError::Malformed(_)),
        ),
        (
            "traversal in the path",
            event_json(|v| v["path"] = "../../etc".into()),
            |e| matches!(e, EventError::Field { field: "path", .. }),
        ),
        (
            "mount name with a slash",
            event_json(|v| v["mount"] = "a/b".into()),
            |e| matches!(e, EventError::Field { field: "mount", .. }),
        ),
        (
            "source path on a put",
            event_json(|v| {
                v["source_mount"] = "m".into();
                v["source_path"] = "x".into();
            }),
            |e| {
                matches!(
                    e,
                    EventError::Field {
                        field: "source_path",
                        ..
                    }
                )
            },
        ),
        (
            "bad SHA-256",
            event_json(|v| v["sha256"] = "zz".into()),
            |e| matches!(e, EventError::Malformed(_)),
        ),
        (
            "64 KiB payload",
            event_json(|v| v["etag"] = "e".repeat(64 * 1024).into()),
            |e| matches!(e, EventError::TooLarge { .. }),
        ),
    ];
    for (label, payload, want) in &payloads {
        refused!(env, proxy, n, *label, async { ChangeEvent::decode(payload) }, e if want(e));
    }
    assert!(
        ChangeEvent::decode(&event_json(|_| {})).is_ok(),
        "the well-formed payload decodes"
    );

    // --- Mount rows ---
    type Edit = fn(&mut MountRow);
    let rows: Vec<(&'static str, Edit)> = vec![
        ("name", |r| r.name = "has space".into()),
        ("name", |r| r.name = "../etc".into()),
        ("bucket", |r| r.bucket = "Bad_Bucket".into()),
        ("bucket", |r| r.bucket = "192.168.0.1".into()),
        ("bucket", |r| r.bucket = "xn--punycode".into()),
        ("prefix", |r| r.prefix = "a/../b".into()),
        ("prefix", |r| r.prefix = "a\\b".into()),
        ("region", |r| r.region = "us-east-1\nHost: evil".into()),
        ("endpoint", |r| {
            r.endpoint = Some("file:///etc/passwd".into())
        }),
        ("endpoint", |r| {
            r.endpoint = Some("https://AKIA:secret@s3.example.com".into())
        }),
        ("endpoint", |r| {
            r.endpoint = Some("http://10.1.2.3:9000".into())
        }),
        ("endpoint", |r| {
            r.endpoint = Some("https://s3.example.com/?x-id=1".into())
        }),
        ("canned_acl", |r| {
            r.canned_acl = Some("everyone-write".into())
        }),
        ("storage_class", |r| r.storage_class = Some("COLD".into())),
        ("sse_mode", |r| r.sse_mode = "kms".into()),
        ("kms_key_id", |r| {
            r.sse_mode = "aws:kms".into();
            r.kms_key_id = Some("arn:aws:s3:::not-a-key".into());
        }),
        ("kms_key_id", |r| r.kms_key_id = Some("alias/x".into())),
        ("part_size", |r| r.part_size = 1024),
        ("part_size", |r| r.part_size = 6 * 1024 * 1024 * 1024),
        ("multipart_threshold", |r| r.multipart_threshold = -1),
        ("part_concurrency", |r| r.part_concurrency = 1000),
        ("verify_window_ms", |r| r.verify_window_ms = -1),
        ("copy_threshold", |r| r.copy_threshold = 1),
        ("download_range_size", |r| r.download_range_size = 0),
        ("download_concurrency", |r| r.download_concurrency = -3),
        ("checksum", |r| r.checksum = "md5".into()),
        ("credentials_profile", |r| {
            r.credentials_profile = Some("prod".into())
        }),
        ("role_arn", |r| {
            r.credentials_source = "assume_role".into();
            r.role_arn = Some("arn:aws:s3:::bucket".into());
        }),
    ];
    for (field, edit) in rows {
        refused!(env, proxy, n, format!("mount row {field}"),
            ex.register_mount(bad_row(edit)),
            Error::InvalidMount(e) if e.field == field);
    }

    assert!(n >= 60, "only {n} hostile inputs");
    println!("{n} hostile inputs refused, nothing changed");
    // The mount still works after all of it, and the snapshot sees a change when there is one.
    let before = world(&env, &proxy).await;
    ex.put_bytes("m", "after.txt", b"ok".to_vec(), PutOptions::default())
        .await
        .unwrap();
    env.wait_stream(2).await;
    let after = world(&env, &proxy).await;
    assert!(
        after.s3_requests > before.s3_requests,
        "{before:?} {after:?}"
    );
    assert_ne!(before.keys, after.keys);
    assert_ne!(before.tables, after.tables);
    assert_eq!(after.stream_len, before.stream_len + 1);
    env.cleanup().await;
}
