//! Crash recovery of multipart uploads: a child process running the reference binary is killed
//! with SIGKILL in the middle of a large upload; a new executor resumes the same upload.
//! Real Postgres, Redis and S3 servers.

mod common;

use std::time::Duration;

use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{PutOptions, S3Executor, UploadProgress};
use tokio::io::{AsyncBufReadExt, BufReader};

const MIB: u64 = 1024 * 1024;
const PART: u64 = 5 * MIB;
const CONCURRENCY: u64 = 2;

struct Killed {
    upload_id: String,
    bytes_done: u64,
    parts_done: u32,
}

/// Runs `filestore-s3 put` on `file` and SIGKILLs it once `kill_after` parts are done.
async fn put_and_kill(env: &TestEnv, file: &std::path::Path, kill_after: u32) -> Killed {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["put", "m", "crash/big.bin"])
        .arg(file)
        .args(["--idempotency-key", "crash-1", "--progress-json"])
        .env("FILESTORE_DATABASE_URL", common::database_url())
        .env("FILESTORE_DB_SCHEMA", &env.schema)
        .env("FILESTORE_REDIS_URL", common::redis_url())
        .env("FILESTORE_REDIS_PREFIX", &env.redis_prefix)
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("reference binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last: Option<UploadProgress> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        let Ok(p) = serde_json::from_str::<UploadProgress>(&line) else {
            continue;
        };
        let done = p.parts_done;
        last = Some(p);
        if done >= kill_after {
            child.start_kill().unwrap(); // SIGKILL
            break;
        }
    }
    let status = child.wait().await.unwrap();
    assert!(
        !status.success(),
        "the child finished before it could be killed"
    );
    let last = last.expect("the child reported progress");
    Killed {
        upload_id: last.upload_id,
        bytes_done: last.bytes_done,
        parts_done: last.parts_done,
    }
}

async fn wait_journal_settled(env: &TestEnv) -> (String, Option<String>) {
    for _ in 0..600 {
        let rows = env
            .query("SELECT state, error FROM {schema}.journal", &[])
            .await;
        let state: String = rows[0].get(0);
        if state != "pending" {
            return (state, rows[0].get(1));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("journal row still pending after 60 s");
}

fn write_source(dir: &std::path::Path, size: u64) -> (std::path::PathBuf, Vec<u8>) {
    let body: Vec<u8> = (0..size).map(|i| ((i * 131 + i / 7) % 256) as u8).collect();
    let file = dir.join("big.bin");
    std::fs::write(&file, &body).unwrap();
    (file, body)
}

fn crash_mount(r: &mut filestore_s3::MountRow) {
    r.multipart_threshold = (6 * MIB) as i64;
    r.part_size = PART as i64;
    r.part_concurrency = CONCURRENCY as i32;
}

pub async fn killed_upload_resumes_the_same_upload(backend: Backend) {
    let env = TestEnv::with_mount(backend, crash_mount).await;
    env.exec.shutdown().await; // the child is the only executor on this schema until it dies
    let dir = tempfile::tempdir().unwrap();
    let size = 30 * PART + 4321;
    let (file, body) = write_source(dir.path(), size);

    let killed = put_and_kill(&env, &file, 8).await;
    let pending = env.query("SELECT state FROM {schema}.journal", &[]).await;
    assert_eq!(pending[0].get::<_, String>(0), "pending");
    let recorded = env
        .query(
            "SELECT count(*) FROM {schema}.multipart_parts WHERE upload_id = $1",
            &[&killed.upload_id],
        )
        .await[0]
        .get::<_, i64>(0);
    assert!(
        recorded as u32 >= killed.parts_done,
        "{recorded} parts recorded, {} reported",
        killed.parts_done
    );

    // A new executor: its supervisor finds the pending row and resumes from the recorded parts.
    let exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    let (state, error) = wait_journal_settled(&env).await;
    assert_eq!(state, "committed", "{error:?}");
    let status = exec.status("m").await.unwrap();
    assert!(
        status.parts_resumed as u32 >= killed.parts_done,
        "{status:?}"
    );
    let resent_bound = size - killed.bytes_done + PART * CONCURRENCY;
    eprintln!(
        "{backend:?}: killed after {} parts ({} of {size} bytes done); after the restart {} parts resumed, \
         {} bytes sent (bound {resent_bound}: the rest + part size x parts in flight)",
        killed.parts_done, killed.bytes_done, status.parts_resumed, status.upload_bytes_sent
    );
    assert!(
        status.upload_bytes_sent <= resent_bound,
        "sent {} bytes after the restart; at most {resent_bound} allowed ({} were done before the kill)",
        status.upload_bytes_sent,
        killed.bytes_done
    );

    // The same upload id, completed; the object is right; one node, one snapshot, one event.
    let uploads = env
        .query(
            "SELECT upload_id, state FROM {schema}.multipart_uploads",
            &[],
        )
        .await;
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].get::<_, String>(0), killed.upload_id);
    assert_eq!(uploads[0].get::<_, String>(1), "completed");
    let mut w = common::HashingWriter::new();
    exec.get("m", "crash/big.bin", &mut w, Default::default())
        .await
        .unwrap();
    assert_eq!(w.len, size);
    assert_eq!(w.hex(), sha256_hex(&body));
    assert_eq!(env.count("nodes").await, 1);
    assert_eq!(env.count("snapshots").await, 1);
    assert_eq!(env.count("outbox").await, 1);
    env.wait_stream(1).await;

    // The caller repeating the put with its key gets the recorded result; nothing is sent.
    let before = exec.status("m").await.unwrap().upload_bytes_sent;
    let r = exec
        .put_file(
            "m",
            "crash/big.bin",
            &file,
            PutOptions {
                idempotency_key: Some("crash-1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.node.unwrap().sha256, sha256_hex(&body));
    assert_eq!(exec.status("m").await.unwrap().upload_bytes_sent, before);
    exec.shutdown().await;
    env.cleanup().await;
}

pub async fn changed_source_ends_the_upload(backend: Backend) {
    let env = TestEnv::with_mount(backend, crash_mount).await;
    env.exec.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = write_source(dir.path(), 20 * PART);
    let killed = put_and_kill(&env, &file, 4).await;
    // The source changes while no executor runs.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
        .unwrap();
    let exec = S3Executor::start(env.exec.config().clone()).await.unwrap();
    let (state, error) = wait_journal_settled(&env).await;
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert!(error.contains("changed or cannot be re-read"), "{error}");
    let uploads = env
        .query(
            "SELECT upload_id, state FROM {schema}.multipart_uploads",
            &[],
        )
        .await;
    assert_eq!(uploads[0].get::<_, String>(0), killed.upload_id);
    assert_eq!(uploads[0].get::<_, String>(1), "aborted");
    assert_eq!(env.count("nodes").await, 0);
    assert!(env.object(&env.key("crash/big.bin")).await.is_none());
    exec.shutdown().await;
    env.cleanup().await;
}

macro_rules! crash_suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_upload_resumes_the_same_upload() {
                super::killed_upload_resumes_the_same_upload($backend).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn changed_source_ends_the_upload() {
                super::changed_source_ends_the_upload($backend).await
            }
        }
    };
}

crash_suite!(s3s_fs, Backend::S3sFs);
crash_suite!(moto, Backend::Moto);
