//! Large objects end to end: multipart uploads (resumable, with progress) and downloads, against
//! both S3 servers. Real Postgres, Redis and S3 servers.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{sha256_hex, Backend, GeneratedReader, HashingWriter, TestEnv};
use filestore_s3::{ByteRange, Error, GetOptions, PutOptions, UploadProgress};
use filestore_s3_actors::mount::MountRow;
use filestore_s3_actors::multipart::ProgressSink;

const MIB: u64 = 1024 * 1024;
const PART: u64 = 5 * MIB;
const THRESHOLD: u64 = 6 * MIB;

fn multipart_mount(r: &mut MountRow) {
    r.multipart_threshold = THRESHOLD as i64;
    r.part_size = PART as i64;
    r.part_concurrency = 3;
}

fn data(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + seed as u64) % 251) as u8)
        .collect()
}

fn collecting_sink() -> (ProgressSink, Arc<Mutex<Vec<UploadProgress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        Arc::new(move |p: &UploadProgress| s.lock().unwrap().push(p.clone())),
        seen,
    )
}

async fn read_back(env: &TestEnv, path: &str) -> (String, u64) {
    let mut w = HashingWriter::new();
    let r = env
        .exec
        .get(&env.mount, path, &mut w, GetOptions::default())
        .await
        .unwrap();
    let len = w.len;
    let hex = w.hex();
    assert_eq!(
        r.sha256_verified.as_deref(),
        Some(hex.as_str()),
        "get verified the recorded SHA-256"
    );
    (hex, len)
}

pub async fn sizes_around_the_threshold(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(multipart_mount)
        .build()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("below.bin", THRESHOLD - 1, false),
        ("at.bin", THRESHOLD, false),
        ("above.bin", THRESHOLD + 1, true),
        ("four-parts.bin", 3 * PART + 12345, true),
    ];
    for (i, (name, size, multipart)) in cases.iter().enumerate() {
        let body = data(*size, i as u8);
        let file = dir.path().join(name);
        std::fs::write(&file, &body).unwrap();
        let path = format!("sizes/{name}");
        let (sink, seen) = collecting_sink();
        let r = env
            .exec
            .put_file(
                &env.mount,
                &path,
                &file,
                PutOptions {
                    progress: Some(sink),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        let node = r.node.as_ref().unwrap();
        assert_eq!(node.size, *size);
        assert_eq!(node.sha256, sha256_hex(&body));
        assert_eq!(read_back(&env, &path).await, (sha256_hex(&body), *size));
        let rows = env
            .query(
                "SELECT n.sha256, n.generation, j.state, u.state,
                        (SELECT count(*) FROM {schema}.multipart_parts p WHERE p.upload_id = u.upload_id)
                 FROM {schema}.nodes n JOIN {schema}.journal j ON j.id = n.journal_id
                 LEFT JOIN {schema}.multipart_uploads u ON u.journal_id = j.id
                 WHERE n.path = $1",
                &[&path],
            )
            .await;
        assert_eq!(rows[0].get::<_, String>(0), sha256_hex(&body));
        assert_eq!(rows[0].get::<_, i64>(1), 1);
        assert_eq!(rows[0].get::<_, String>(2), "committed");
        if *multipart {
            assert_eq!(
                rows[0].get::<_, Option<String>>(3).as_deref(),
                Some("completed")
            );
            assert_eq!(
                rows[0].get::<_, Option<i64>>(4),
                Some(size.div_ceil(PART) as i64)
            );
            let last = seen
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("progress reported");
            assert!(last.finished);
            assert_eq!(last.bytes_done, *size);
        } else {
            assert_eq!(
                rows[0].get::<_, Option<String>>(3),
                None,
                "{name} went through a single PUT"
            );
        }
        let snaps = env
            .query(
                "SELECT size, sha256, deleted FROM {schema}.snapshots WHERE path = $1",
                &[&path],
            )
            .await;
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].get::<_, Option<i64>>(0), Some(*size as i64));
        assert_eq!(
            snaps[0].get::<_, Option<String>>(1),
            Some(sha256_hex(&body))
        );
        assert!(!snaps[0].get::<_, bool>(2));
        let events = env.wait_stream(i + 1).await;
        assert_eq!(events[i].1["sha256"], sha256_hex(&body).as_str());
        assert_eq!(events[i].1["size"], *size);
    }
    env.cleanup().await;
}

pub async fn parts_in_postgres_match_list_parts_while_uploading(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(multipart_mount)
        .build()
        .await;
    let size = 8 * PART;
    let (pause_tx, pause_rx) = std::sync::mpsc::channel::<usize>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let resume_rx = Mutex::new(resume_rx);
    let paused = std::sync::atomic::AtomicBool::new(false);
    // Holds the executor's thread once, in the middle of the upload, while the test compares.
    let sink: ProgressSink = Arc::new(move |p: &UploadProgress| {
        if p.parts_done == 4 && !paused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            pause_tx.send(p.parts_done as usize).unwrap();
            resume_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(30))
                .unwrap();
        }
    });
    let exec = env.exec.clone();
    let mount = env.mount.clone();
    let upload = tokio::spawn(async move {
        exec.put_reader(
            &mount,
            "watched.bin",
            GeneratedReader::new(7, size),
            PutOptions {
                progress: Some(sink),
                ..Default::default()
            },
        )
        .await
    });
    let done_at_pause = tokio::task::spawn_blocking(move || {
        pause_rx.recv_timeout(Duration::from_secs(60)).unwrap()
    })
    .await
    .unwrap();
    let recorded = env
        .query(
            "SELECT u.upload_id, p.part_number, p.size, p.etag FROM {schema}.multipart_uploads u
             JOIN {schema}.multipart_parts p ON p.upload_id = u.upload_id ORDER BY p.part_number",
            &[],
        )
        .await;
    assert!(
        recorded.len() >= done_at_pause,
        "{} recorded, {done_at_pause} reported done",
        recorded.len()
    );
    let upload_id: String = recorded[0].get(0);
    let listed = list_parts(&env, &env.key("watched.bin"), &upload_id).await;
    for row in &recorded {
        let n: i32 = row.get(1);
        let (_, size, etag) = listed
            .iter()
            .find(|(number, _, _)| *number == n)
            .unwrap_or_else(|| panic!("part {n} recorded in Postgres but not listed by the store"));
        assert_eq!(*size, row.get::<_, i64>(2));
        if let Some(etag) = etag {
            assert_eq!(etag, &row.get::<_, String>(3));
        }
    }
    resume_tx.send(()).unwrap();
    let r = upload.await.unwrap().unwrap();
    let (expected, _) = common::hash_reader(GeneratedReader::new(7, size)).await;
    assert_eq!(r.node.unwrap().sha256, expected);
    env.cleanup().await;
}

/// ListParts straight from the store: (part number, size, ETag). moto 5.2.5 answers with a root
/// element the SDK refuses (`ListPartsResponse`), so its raw answer is read instead.
async fn list_parts(env: &TestEnv, key: &str, upload_id: &str) -> Vec<(i32, i64, Option<String>)> {
    match env
        .s3
        .list_parts()
        .bucket(&env.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(out) => out
            .parts()
            .iter()
            .map(|p| {
                (
                    p.part_number().unwrap(),
                    p.size().unwrap(),
                    p.e_tag()
                        .map(|e| e.trim_matches('"').to_owned())
                        .filter(|e| !e.is_empty()),
                )
            })
            .collect(),
        Err(aws_sdk_s3::error::SdkError::ServiceError(se)) => {
            let body = std::str::from_utf8(se.raw().body().bytes().unwrap())
                .unwrap()
                .to_owned();
            assert!(
                body.contains("<ListPartsResponse"),
                "unexpected ListParts answer: {body}"
            );
            let field = |part: &str, name: &str| -> Option<String> {
                let open = format!("<{name}>");
                let start = part.find(&open)? + open.len();
                let end = part[start..].find(&format!("</{name}>"))? + start;
                Some(part[start..end].to_owned())
            };
            body.split("<Part>")
                .skip(1)
                .map(|part| {
                    (
                        field(part, "PartNumber").unwrap().parse().unwrap(),
                        field(part, "Size").unwrap().parse().unwrap(),
                        field(part, "ETag").map(|e| {
                            e.replace("&#34;", "")
                                .replace("&quot;", "")
                                .trim_matches('"')
                                .to_owned()
                        }),
                    )
                })
                .collect()
        }
        Err(e) => panic!("ListParts: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
    }
}

pub async fn one_gibibyte_generated_on_the_fly(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(|r| {
            r.multipart_threshold = (16 * MIB) as i64;
            r.part_size = (16 * MIB) as i64;
            r.part_concurrency = 4;
        })
        .build()
        .await;
    let size = 1024 * MIB;
    let (sink, seen) = collecting_sink();
    let r = env
        .exec
        .put_reader(
            &env.mount,
            "huge/one-gib.bin",
            GeneratedReader::new(42, size),
            PutOptions {
                progress: Some(sink),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (expected, _) = common::hash_reader(GeneratedReader::new(42, size)).await;
    let node = r.node.as_ref().unwrap();
    assert_eq!(node.size, size);
    assert_eq!(node.sha256, expected);
    assert_eq!(read_back(&env, "huge/one-gib.bin").await, (expected, size));
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.parts_done, 64);
    let status = env.exec.status(&env.mount).await.unwrap();
    assert_eq!(status.parts_uploaded, 64);
    env.cleanup().await;
}

pub async fn progress_is_ordered_and_counters_match(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(multipart_mount)
        .build()
        .await;
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{}:{}:progress", env.redis_prefix, env.mount))
        .await
        .unwrap();
    let size = 4 * PART + 1;
    let (sink, seen) = collecting_sink();
    env.exec
        .put_reader(
            &env.mount,
            "progress.bin",
            GeneratedReader::new(3, size),
            PutOptions {
                progress: Some(sink),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let done: Vec<u64> = seen.iter().map(|p| p.bytes_done).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    let parts: Vec<u32> = seen.iter().map(|p| p.parts_done).collect();
    assert!(parts.windows(2).all(|w| w[0] <= w[1]), "{parts:?}");
    let last = seen.last().unwrap();
    assert!(last.finished);
    assert_eq!((last.bytes_done, last.parts_done), (size, 5));
    assert_eq!(
        last.bytes_sent, size,
        "no retries, so every byte was sent once"
    );
    let status = env.exec.status(&env.mount).await.unwrap();
    assert_eq!(status.upload_bytes_sent, size);
    assert_eq!(status.parts_uploaded, 5);
    // The Redis progress channel got (throttled) updates, the last one final.
    use futures::StreamExt;
    let mut stream = pubsub.on_message();
    let mut last_redis: Option<UploadProgress> = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await
    {
        let p: UploadProgress =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if let Some(prev) = &last_redis {
            assert!(prev.bytes_done <= p.bytes_done);
        }
        let finished = p.finished;
        last_redis = Some(p);
        if finished {
            break;
        }
    }
    let last_redis = last_redis.expect("progress on Redis");
    assert!(last_redis.finished);
    assert_eq!(last_redis.bytes_done, size);
    drop(stream);
    env.cleanup().await;
}

pub async fn downloads_full_ranged_resumed_and_corrupt(backend: Backend) {
    let env = TestEnv::builder(backend)
        .mount(multipart_mount)
        .build()
        .await;
    let body = data(2 * PART + 777, 9);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();
    env.exec
        .put_file(&env.mount, "dl/object.bin", &src, PutOptions::default())
        .await
        .unwrap();

    // Full.
    let mut full = Vec::new();
    let r = env
        .exec
        .get(
            &env.mount,
            "dl/object.bin",
            &mut full,
            GetOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(full, body);
    assert_eq!(
        r.sha256_verified.as_deref(),
        Some(sha256_hex(&body).as_str())
    );

    // Ranged: bytes 1000..=2999 and the tail from 5 MiB.
    let mut part = Vec::new();
    let r = env
        .exec
        .get(
            &env.mount,
            "dl/object.bin",
            &mut part,
            GetOptions {
                range: Some(ByteRange {
                    start: 1000,
                    end: Some(2999),
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(part, &body[1000..3000]);
    assert_eq!(r.object_size, body.len() as u64);
    assert_eq!(r.sha256_verified, None);
    let mut tail = Vec::new();
    env.exec
        .get(
            &env.mount,
            "dl/object.bin",
            &mut tail,
            GetOptions {
                range: Some(ByteRange {
                    start: PART,
                    end: None,
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, &body[PART as usize..]);

    // Resumed: a file holding the first 3 MiB gets the rest.
    let dst = dir.path().join("partial.bin");
    std::fs::write(&dst, &body[..3 * MIB as usize]).unwrap();
    let r = env
        .exec
        .get_to_file(&env.mount, "dl/object.bin", &dst, true)
        .await
        .unwrap();
    assert_eq!(r.bytes_written, body.len() as u64 - 3 * MIB);
    assert_eq!(std::fs::read(&dst).unwrap(), body);
    assert_eq!(
        r.sha256_verified.as_deref(),
        Some(sha256_hex(&body).as_str())
    );
    // A partial file whose start is not the object's fails the check.
    std::fs::write(&dst, vec![0u8; MIB as usize]).unwrap();
    let err = env
        .exec
        .get_to_file(&env.mount, "dl/object.bin", &dst, true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");

    // Changed behind the executor's back: same size, other bytes.
    let mut evil = body.clone();
    evil[12345] ^= 0xff;
    env.raw_put(&env.key("dl/object.bin"), &evil).await;
    let mut out = Vec::new();
    let err = env
        .exec
        .get(&env.mount, "dl/object.bin", &mut out, GetOptions::default())
        .await
        .unwrap_err();
    match &err {
        Error::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &sha256_hex(&body));
            assert_eq!(actual, &sha256_hex(&evil));
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    assert!(err.to_string().contains("behind the executor's back"));
    let missing = env
        .exec
        .get(
            &env.mount,
            "dl/none.bin",
            &mut Vec::new(),
            GetOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
    env.cleanup().await;
}

/// The store goes away for a while in the middle of an upload: parts in flight fail and are
/// retried, the upload finishes without starting over.
pub async fn survives_a_transient_outage_mid_upload(backend: Backend) {
    let proxy = common::faultproxy::FaultProxy::start(&common::endpoint_of(backend), 0).await;
    let mut settings = common::fast_settings();
    settings.retry.max_attempts = 30;
    settings.retry.max_delay = Duration::from_millis(500);
    settings.retry.max_elapsed = Duration::from_secs(60);
    let env = TestEnv::builder(backend)
        .mount(multipart_mount)
        .settings(settings)
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    let size = 12 * PART;
    let outage_started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = outage_started.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = Mutex::new(Some(tx));
    let sink: ProgressSink = Arc::new(move |p: &UploadProgress| {
        if p.parts_done >= 3 && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    let exec = env.exec.clone();
    let mount = env.mount.clone();
    let upload = tokio::spawn(async move {
        exec.put_reader(
            &mount,
            "outage.bin",
            GeneratedReader::new(11, size),
            PutOptions {
                progress: Some(sink),
                ..Default::default()
            },
        )
        .await
    });
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    // Parts recorded now were accepted by the store before the outage.
    let before: Vec<i32> = env
        .query("SELECT part_number FROM {schema}.multipart_parts", &[])
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(before.len() >= 3, "{before:?}");
    proxy.down();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.up();
    let r = upload.await.unwrap().expect("upload survives the outage");
    let (expected, _) = common::hash_reader(GeneratedReader::new(11, size)).await;
    assert_eq!(r.node.unwrap().sha256, expected);
    let status = env.exec.status(&env.mount).await.unwrap();
    assert_eq!(status.parts_uploaded, 12, "each part accepted once");
    assert!(status.retries > 0, "the outage was felt: {status:?}");
    // Parts accepted before the outage were not sent again: the proxy saw exactly one UploadPart
    // request for each of them. Every part number has exactly one record.
    for n in &before {
        assert_eq!(
            proxy.part_requests(*n as u32),
            1,
            "part {n} was re-sent: {:?}",
            proxy.requests()
        );
    }
    let resent: usize = (1..=12).map(|n| proxy.part_requests(n)).sum::<usize>() - 12;
    eprintln!(
        "{backend:?}: {} parts done before the outage, {resent} UploadPart requests re-sent",
        before.len()
    );
    let parts = env
        .query(
            "SELECT count(DISTINCT part_number), count(*) FROM {schema}.multipart_parts",
            &[],
        )
        .await;
    assert_eq!(
        (parts[0].get::<_, i64>(0), parts[0].get::<_, i64>(1)),
        (12, 12)
    );
    let uploads = env
        .query("SELECT count(*) FROM {schema}.multipart_uploads", &[])
        .await;
    assert_eq!(uploads[0].get::<_, i64>(0), 1, "one upload, not restarted");
    env.cleanup().await;
}

/// `get_to_file` of an object of at least two ranges fetches it as ranged GETs of the mount's
/// `download_range_size`, pinned to one ETag and written at their offsets, and checks the whole file against the
/// SHA-256 in `nodes`; an object changed behind the executor's back fails that check. (Needs the
/// counting proxy, so it is not part of the external suite.)
async fn parallel_download_to_a_file(backend: Backend) {
    use common::faultproxy::{FaultProxy, Op};
    let proxy = FaultProxy::start(&common::endpoint_of(backend), 12).await;
    let env = TestEnv::builder(backend)
        .mount(|r| {
            multipart_mount(r);
            r.download_range_size = PART as i64;
        })
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    let body = data(3 * PART + 4321, 13);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();
    env.exec
        .put_file(&env.mount, "par/object.bin", &src, PutOptions::default())
        .await
        .unwrap();
    proxy.clear();
    let dst = dir.path().join("dst.bin");
    std::fs::write(
        &dst,
        b"an older, longer file that the download replaces entirely",
    )
    .unwrap();
    let r = env
        .exec
        .get_to_file(&env.mount, "par/object.bin", &dst, false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), body);
    assert_eq!(r.bytes_written, body.len() as u64);
    assert_eq!(r.object_size, body.len() as u64);
    assert_eq!(
        r.sha256_verified.as_deref(),
        Some(sha256_hex(&body).as_str())
    );
    assert_eq!(proxy.count(Op::GetObject), 4, "{:?}", proxy.seen());

    // Changed behind the executor's back: same size, other bytes in the third range.
    let mut evil = body.clone();
    evil[2 * PART as usize + 99] ^= 0xff;
    env.raw_put(&env.key("par/object.bin"), &evil).await;
    let err = env
        .exec
        .get_to_file(&env.mount, "par/object.bin", &dst, false)
        .await
        .unwrap_err();
    match &err {
        Error::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &sha256_hex(&body));
            assert_eq!(actual, &sha256_hex(&evil));
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_download_to_a_file_s3s_fs() {
    parallel_download_to_a_file(Backend::S3sFs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_download_to_a_file_moto() {
    parallel_download_to_a_file(Backend::Moto).await
}

per_backend! {
    sizes_around_the_threshold => super::sizes_around_the_threshold(B);
    parts_in_postgres_match_list_parts_while_uploading => super::parts_in_postgres_match_list_parts_while_uploading(B);
    one_gibibyte_generated_on_the_fly => super::one_gibibyte_generated_on_the_fly(B);
    progress_is_ordered_and_counters_match => super::progress_is_ordered_and_counters_match(B);
    downloads_full_ranged_resumed_and_corrupt => super::downloads_full_ranged_resumed_and_corrupt(B);
    survives_a_transient_outage_mid_upload => super::survives_a_transient_outage_mid_upload(B);
}
