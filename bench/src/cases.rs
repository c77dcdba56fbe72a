//! The measured cases, each run in a process of its own (`filestore-s3-bench case --spec ...`):
//! the executor through its public API, and the raw aws-sdk-s3 loops built with the executor's
//! own client settings (`S3StoreFactory::client_for`), without Postgres or Redis.

use filestore_s3::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use filestore_s3::pg::PgMetaStore;
use filestore_s3::s3::{S3Settings, S3StoreFactory};
use filestore_s3::{ExecutorConfig, MountRow, PutOptions, S3Executor, TransferOptions};
use filestore_s3_actors::model::{
    CommitRecord, NewIntent, NodeChange, NodeMeta, OpKind, OpRequest, OutboxRow, UploadProgress,
    Verification,
};
use filestore_s3_actors::mount::MountSpec;
use filestore_s3_actors::ports::{ChangePublisher, MetaStore, PublishError};
use futures::{stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{latencies, Measured, Spec, ACCESS_KEY, BUCKET, MOUNT, SECRET_KEY};

/// A mount on the same bucket that sends no checksum headers.
const MOUNT_NO_CHECKSUM: &str = "b-no-checksum";
/// W4's mount (its own outbox and Redis channel).
const LAG_MOUNT: &str = "b-lag";
/// A mount on the same bucket whose puts are proven by the PUT's answer (`verify = put-response`).
const MOUNT_RESPONSE: &str = "b-response";

pub(crate) fn row(spec: &Spec) -> MountRow {
    let mut r = MountRow::new(MOUNT, BUCKET, "");
    r.endpoint = Some(spec.endpoint.clone());
    r.path_style = true;
    r
}

pub(crate) fn settings() -> S3Settings {
    S3Settings {
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        ..S3Settings::default()
    }
}

/// The SDK client of the bench mount.
pub(crate) async fn client_of(spec: &Spec) -> Result<Client> {
    client(spec).await
}

/// The SDK client the executor would use for the bench mount.
async fn client(spec: &Spec) -> Result<Client> {
    let factory = S3StoreFactory::new(settings()).await;
    let mount = MountSpec::from_row(&row(spec)).map_err(|e| anyhow::anyhow!("{e}"))?;
    factory
        .client_for(&mount)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Bucket, schema (migrated) and mount row.
pub async fn prepare(spec: &Spec) -> Result<()> {
    let c = client(spec).await?;
    c.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .context("CreateBucket")?;
    filestore_s3::pg::migrate(&spec.database_url, &spec.schema)
        .await
        .map_err(|e| anyhow::anyhow!("migrations: {e}"))?;
    let meta = PgMetaStore::new(&spec.database_url, &spec.schema, 2)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    meta.upsert_mount(&row(spec))
        .await
        .map_err(|e| anyhow::anyhow!("mount row: {e}"))?;
    Ok(())
}

pub async fn drop_schema(url: &str, schema: &str) {
    if let Ok((c, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = c
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

async fn executor(spec: &Spec) -> Result<S3Executor> {
    let mut config = ExecutorConfig::default()
        .with_database_url(spec.database_url.clone())
        .with_schema(&spec.schema)
        .with_redis_url(spec.redis_url.clone())
        .with_redis_prefix(&spec.redis_prefix);
    config.s3 = settings();
    config.owner_id = format!("bench-{}", std::process::id());
    let exec = S3Executor::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    exec.register_mount(row(spec))
        .await
        .map_err(|e| anyhow::anyhow!("mount: {e}"))?;
    // The same bucket without checksum headers: how much the store's SHA-256 check costs.
    let mut plain = row(spec);
    plain.name = MOUNT_NO_CHECKSUM.into();
    plain.prefix = "no-checksum".into();
    plain.checksum = "none".into();
    exec.register_mount(plain)
        .await
        .map_err(|e| anyhow::anyhow!("mount: {e}"))?;
    let mut answered = row(spec);
    answered.name = MOUNT_RESPONSE.into();
    answered.prefix = "response".into();
    answered.verify = "response".into();
    exec.register_mount(answered)
        .await
        .map_err(|e| anyhow::anyhow!("mount: {e}"))?;
    Ok(exec)
}

fn small_files(spec: &Spec) -> Result<Vec<(String, Bytes)>> {
    (0..spec.count)
        .map(|i| {
            let name = format!("f{i:05}");
            let body = std::fs::read(spec.small_dir.join(&name))?;
            Ok((name, Bytes::from(body)))
        })
        .collect()
}

fn size_of(path: &std::path::Path) -> Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

pub fn run_case(spec: &Spec) -> Result<Measured> {
    if spec.case.starts_with("committer-") {
        // The committer is an actix actor: it runs on an actix system.
        return actix_rt::System::new().block_on(committer(spec.clone()));
    }
    if spec.case.starts_with("publish-lag-") {
        return actix_rt::System::new().block_on(publish_lag(spec.clone()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match spec.case.as_str() {
            "sdk-put-file" => sdk_put_file(spec).await,
            "exec-put-file" | "exec-put-stream" | "exec-put-file-checksum-none" => {
                exec_put(spec).await
            }
            "sdk-small-put-head" | "sdk-small-put" => sdk_small(spec).await,
            "exec-small-head-verified" | "exec-small-response-verified" => exec_small(spec).await,
            "sdk-copy" | "sdk-delete" => sdk_copy_delete(spec).await,
            "exec-copy"
            | "exec-delete"
            | "exec-copy-response-verified"
            | "exec-delete-response-verified" => exec_copy_delete(spec).await,
            "sdk-delete-many" => sdk_delete_many(spec).await,
            "exec-delete-many" | "exec-delete-many-response-verified" => {
                exec_delete_many(spec).await
            }
            "sdk-get-file" => sdk_get(spec).await,
            "raw-list-w8" => crate::scan::raw_list(spec).await,
            "exec-check-w8" => crate::scan::check(spec).await,
            "exec-get-file" => exec_get(spec).await,
            other => bail!("unknown case {other}"),
        }
    })
}

/// W1 baseline: multipart from the file with the executor's part size and parts in flight, each
/// part read into a buffer and sent; no hashing, no Postgres, no Redis.
async fn sdk_put_file(spec: &Spec) -> Result<Measured> {
    let c = client(spec).await?;
    let size = size_of(&spec.file)?;
    // A key of its own: the executor's cases write `w1/object.bin` through a mount, and an
    // object the executor did not write over a path's node would be refused (rule 9).
    let key = "w1/sdk-object.bin";
    let started = Instant::now();
    let up = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await?;
    let id = up.upload_id().context("upload id")?.to_owned();
    let parts = size.div_ceil(spec.part_size).max(1);
    let done: Vec<CompletedPart> = stream::iter(1..=parts)
        .map(|n| {
            let (c, id, path) = (c.clone(), id.clone(), spec.file.clone());
            let part_size = spec.part_size;
            async move {
                let start = (n - 1) * part_size;
                let len = part_size.min(size - start);
                let mut f = tokio::fs::File::open(&path).await?;
                f.seek(std::io::SeekFrom::Start(start)).await?;
                let mut buf = vec![0u8; len as usize];
                f.read_exact(&mut buf).await?;
                let r = c
                    .upload_part()
                    .bucket(BUCKET)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n as i32)
                    .body(ByteStream::from(buf))
                    .send()
                    .await?;
                Ok::<_, anyhow::Error>(
                    CompletedPart::builder()
                        .part_number(n as i32)
                        .set_e_tag(r.e_tag().map(str::to_owned))
                        .build(),
                )
            }
        })
        .buffered(spec.part_concurrency)
        .try_collect()
        .await?;
    c.complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await?;
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        bytes: size,
        ops: 1,
        ..Default::default()
    })
}

async fn exec_put(spec: &Spec) -> Result<Measured> {
    let exec = executor(spec).await?;
    let size = size_of(&spec.file)?;
    let started = Instant::now();
    let r = if spec.case == "exec-put-file-checksum-none" {
        exec.put_file(
            MOUNT_NO_CHECKSUM,
            "w1/object.bin",
            &spec.file,
            PutOptions::default(),
        )
        .await
    } else if spec.case == "exec-put-file" {
        exec.put_file(MOUNT, "w1/object.bin", &spec.file, PutOptions::default())
            .await
    } else {
        let f = tokio::fs::File::open(&spec.file).await?;
        exec.put_reader(MOUNT, "w1/object.bin", f, PutOptions::default())
            .await
    };
    let seconds = started.elapsed().as_secs_f64();
    r.map_err(|e| anyhow::anyhow!("put: {e}"))?;
    exec.shutdown().await;
    Ok(Measured {
        seconds,
        bytes: size,
        ops: 1,
        ..Default::default()
    })
}

async fn timed_many<F, Fut>(n: usize, in_flight: usize, f: F) -> Result<Measured>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let lat: Vec<f64> = stream::iter(0..n)
        .map(|i| {
            let fut = f(i);
            async move {
                let t = Instant::now();
                fut.await?;
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let (p50, p99) = latencies(lat);
    Ok(Measured {
        seconds,
        bytes: 0,
        ops: n as u64,
        p50_ms: p50,
        p99_ms: p99,
    })
}

/// W2 baselines: PUT then HEAD (the executor's HEAD verification), or PUT alone.
async fn sdk_small(spec: &Spec) -> Result<Measured> {
    let c = client(spec).await?;
    let files = Arc::new(small_files(spec)?);
    let head = spec.case == "sdk-small-put-head";
    let prefix = if head { "w2/sdk-ph" } else { "w2/sdk-p" };
    timed_many(files.len(), spec.in_flight, |i| {
        let (c, files) = (c.clone(), files.clone());
        async move {
            let (name, body) = &files[i];
            let key = format!("{prefix}/{name}");
            c.put_object()
                .bucket(BUCKET)
                .key(&key)
                .body(ByteStream::from(body.clone()))
                .send()
                .await?;
            if head {
                c.head_object().bucket(BUCKET).key(&key).send().await?;
            }
            Ok(())
        }
    })
    .await
}

async fn exec_small(spec: &Spec) -> Result<Measured> {
    let exec = executor(spec).await?;
    let files = Arc::new(small_files(spec)?);
    let mount = match spec.case.as_str() {
        "exec-small-response-verified" => MOUNT_RESPONSE,
        _ => MOUNT,
    };
    let m = timed_many(files.len(), spec.in_flight, |i| {
        let (exec, files) = (exec.clone(), files.clone());
        async move {
            let (name, body) = &files[i];
            exec.put_bytes(
                mount,
                &format!("w2/exec/{name}"),
                body.to_vec(),
                PutOptions::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("put {name}: {e}"))?;
            Ok(())
        }
    })
    .await?;
    exec.shutdown().await;
    Ok(m)
}

/// Puts `files` under `prefix/` with the raw client, untimed (a W5 case's setup).
async fn sdk_put_all(
    c: &aws_sdk_s3::Client,
    files: &[(String, Bytes)],
    prefix: &str,
    in_flight: usize,
) -> Result<()> {
    stream::iter(files)
        .map(|(name, body)| {
            let c = c.clone();
            async move {
                c.put_object()
                    .bucket(BUCKET)
                    .key(format!("{prefix}/{name}"))
                    .body(ByteStream::from(body.clone()))
                    .send()
                    .await?;
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Puts `files` under `prefix/` of `mount` through the executor, untimed (a W5 case's setup).
async fn exec_put_all(
    exec: &S3Executor,
    mount: &str,
    files: &[(String, Bytes)],
    prefix: &str,
    in_flight: usize,
) -> Result<()> {
    stream::iter(files)
        .map(|(name, body)| {
            let exec = exec.clone();
            async move {
                exec.put_bytes(
                    mount,
                    &format!("{prefix}/{name}"),
                    body.clone(),
                    PutOptions::default(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// W5 baselines: CopyObject of the W2 objects (uploaded first, untimed), then DeleteObject of
/// the copies.
async fn sdk_copy_delete(spec: &Spec) -> Result<Measured> {
    let c = client(spec).await?;
    let files = Arc::new(small_files(spec)?);
    if spec.case == "sdk-copy" {
        sdk_put_all(&c, &files, "w5/sdk-src", spec.in_flight).await?;
        return timed_many(files.len(), spec.in_flight, |i| {
            let (c, files) = (c.clone(), files.clone());
            async move {
                let name = &files[i].0;
                c.copy_object()
                    .bucket(BUCKET)
                    .key(format!("w5/sdk-dst/{name}"))
                    .copy_source(format!("{BUCKET}/w5/sdk-src/{name}"))
                    .send()
                    .await?;
                Ok(())
            }
        })
        .await;
    }
    timed_many(files.len(), spec.in_flight, |i| {
        let (c, files) = (c.clone(), files.clone());
        async move {
            let name = &files[i].0;
            c.delete_object()
                .bucket(BUCKET)
                .key(format!("w5/sdk-dst/{name}"))
                .send()
                .await?;
            Ok(())
        }
    })
    .await
}

/// The W5 cases ending in `-response-verified` run on the mount with `verify = response`.
fn w5_mount(spec: &Spec) -> &'static str {
    match spec.case.ends_with("-response-verified") {
        true => MOUNT_RESPONSE,
        false => MOUNT,
    }
}

async fn exec_copy_delete(spec: &Spec) -> Result<Measured> {
    let exec = executor(spec).await?;
    let files = Arc::new(small_files(spec)?);
    let mount = w5_mount(spec);
    let m = if spec.case.starts_with("exec-copy") {
        exec_put_all(&exec, mount, &files, "w5/src", spec.in_flight).await?;
        timed_many(files.len(), spec.in_flight, |i| {
            let (exec, files) = (exec.clone(), files.clone());
            async move {
                let name = &files[i].0;
                exec.copy(
                    &Location::new(mount, format!("w5/src/{name}")),
                    &Location::new(mount, format!("w5/dst/{name}")),
                    TransferOptions::default(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("copy {name}: {e}"))?;
                Ok(())
            }
        })
        .await?
    } else {
        timed_many(files.len(), spec.in_flight, |i| {
            let (exec, files) = (exec.clone(), files.clone());
            async move {
                let name = &files[i].0;
                exec.delete(mount, &format!("w5/dst/{name}"), Default::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("delete {name}: {e}"))?;
                Ok(())
            }
        })
        .await?
    };
    exec.shutdown().await;
    Ok(m)
}

/// One timed call that does all `n` operations (no per-operation latency).
async fn timed_once<Fut>(n: usize, call: Fut) -> Result<Measured>
where
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    call.await?;
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        bytes: 0,
        ops: n as u64,
        p50_ms: None,
        p99_ms: None,
    })
}

/// W5 baseline of `delete_many`: the objects put untimed, then deleted with DeleteObjects
/// requests of 1,000 keys (no Postgres, no verification).
async fn sdk_delete_many(spec: &Spec) -> Result<Measured> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let c = client(spec).await?;
    let files = small_files(spec)?;
    sdk_put_all(&c, &files, "w5/sdk-many", spec.in_flight).await?;
    let keys: Vec<String> = files
        .iter()
        .map(|(name, _)| format!("w5/sdk-many/{name}"))
        .collect();
    timed_once(keys.len(), async {
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()?;
            let out = c
                .delete_objects()
                .bucket(BUCKET)
                .delete(delete)
                .send()
                .await?;
            anyhow::ensure!(out.errors().is_empty(), "DeleteObjects: {:?}", out.errors());
        }
        Ok(())
    })
    .await
}

/// W5: `delete_many` of `count` paths (put untimed through the executor), `in_flight` at once.
async fn exec_delete_many(spec: &Spec) -> Result<Measured> {
    let exec = executor(spec).await?;
    let files = small_files(spec)?;
    let mount = w5_mount(spec);
    exec_put_all(&exec, mount, &files, "w5/many", spec.in_flight).await?;
    let paths: Vec<String> = files
        .iter()
        .map(|(name, _)| format!("w5/many/{name}"))
        .collect();
    let opts = filestore_s3::DeleteManyOptions {
        idempotency_key: None,
        in_flight: spec.in_flight,
    };
    let m = timed_once(paths.len(), async {
        let results = exec
            .delete_many(mount, &paths, opts)
            .await
            .map_err(|e| anyhow::anyhow!("delete_many: {e}"))?;
        for (p, r) in paths.iter().zip(results) {
            r.map_err(|e| anyhow::anyhow!("delete {p}: {e}"))?;
        }
        Ok(())
    })
    .await?;
    let status = exec.status(mount).await?;
    eprintln!(
        "{}: {} DeleteObjects requests carried {} of {} deletes",
        spec.case,
        status.delete_batches,
        status.deletes_batched,
        paths.len()
    );
    exec.shutdown().await;
    Ok(m)
}

/// W7 baseline: one GET streamed to a file, hashed with SHA-256 on the way (as the executor
/// checks the whole object). The object is the one `exec-get-file` reads, uploaded untimed.
async fn sdk_get(spec: &Spec) -> Result<Measured> {
    ensure_w7_object(spec).await?;
    let c = client(spec).await?;
    let started = Instant::now();
    let r = c
        .get_object()
        .bucket(BUCKET)
        .key("w7/object.bin")
        .send()
        .await?;
    let mut body = r.body;
    let mut out = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::create(&spec.out_file).await?,
    );
    let mut h = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = body.try_next().await? {
        h.update(&chunk);
        out.write_all(&chunk).await?;
        bytes += chunk.len() as u64;
    }
    out.flush().await?;
    let _ = hex::encode(h.finalize());
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        bytes,
        ops: 1,
        ..Default::default()
    })
}

/// The W7 object, put through the executor (so it has a node with its SHA-256) if not there yet.
async fn ensure_w7_object(spec: &Spec) -> Result<()> {
    let exec = executor(spec).await?;
    if exec.stat(MOUNT, "w7/object.bin").await.is_err() {
        exec.put_file(MOUNT, "w7/object.bin", &spec.file, PutOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    exec.shutdown().await;
    Ok(())
}

async fn exec_get(spec: &Spec) -> Result<Measured> {
    ensure_w7_object(spec).await?;
    let exec = executor(spec).await?;
    let started = Instant::now();
    let r = exec
        .get_to_file(MOUNT, "w7/object.bin", &spec.out_file, false)
        .await
        .map_err(|e| anyhow::anyhow!("get: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if r.sha256_verified.is_none() {
        bail!("the download was not verified");
    }
    exec.shutdown().await;
    Ok(Measured {
        seconds,
        bytes: r.bytes_written,
        ops: 1,
        ..Default::default()
    })
}

/// Events go nowhere: W3 measures Postgres alone.
struct NoRedis;

#[async_trait::async_trait]
impl ChangePublisher for NoRedis {
    async fn publish(&self, _mount: &str, _rows: &[OutboxRow]) -> Result<(), PublishError> {
        Ok(())
    }
    async fn publish_progress(
        &self,
        _mount: &str,
        _progress: &UploadProgress,
    ) -> Result<(), PublishError> {
        Ok(())
    }
}

/// W4: operations (intent and commit of a put, as in W3) started at a steady `rate` per second
/// through one mount's committer, with the notifier relaying to the real Redis; a subscriber of
/// the mount's channel takes each event's arrival time. The lag of an event is its arrival minus
/// its `time` (set inside the commit transaction, before COMMIT), so it covers the commit's
/// end, the notifier's wake-up, its outbox read, XADD and PUBLISH. The value is the achieved
/// rate; p50 / p99 are the lag.
async fn publish_lag(spec: Spec) -> Result<Measured> {
    use actix::Actor;
    use filestore_s3::redis::{RedisKeys, RedisPublisher};
    use filestore_s3_actors::committer::CommitterActor;
    use filestore_s3_actors::notifier::NotifierActor;
    use futures::StreamExt as _;
    // A mount of its own: W3's rows (and pgbench's, whose payloads are not events) stay on the
    // bench mount's outbox, out of this notifier's way.
    let meta_pg = PgMetaStore::new(&spec.database_url, &spec.schema, 4)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lag_row = row(&spec);
    lag_row.name = LAG_MOUNT.into();
    lag_row.prefix = "lag".into();
    meta_pg
        .upsert_mount(&lag_row)
        .await
        .map_err(|e| anyhow::anyhow!("mount row: {e}"))?;
    let keys = RedisKeys::new(&spec.redis_prefix);
    let client = redis::Client::open(spec.redis_url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(keys.channel(LAG_MOUNT)).await?;
    let expected = spec.ops;
    let listener = tokio::spawn(async move {
        let mut lags = Vec::with_capacity(expected);
        let mut undecodable: Option<String> = None;
        let mut messages = pubsub.on_message();
        while lags.len() < expected {
            let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_secs(30), messages.next()).await
            else {
                break;
            };
            let arrived = chrono::Utc::now();
            let payload: String = msg.get_payload().unwrap_or_default();
            match filestore_s3_actors::model::ChangeEvent::decode(payload.as_bytes()) {
                Ok(event) => {
                    let lag =
                        (arrived - event.time).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    lags.push(lag);
                }
                Err(e) => {
                    undecodable.get_or_insert(format!("{e}: {payload}"));
                }
            }
        }
        (lags, undecodable)
    });
    let meta: Arc<dyn MetaStore> = Arc::new(meta_pg);
    let publisher =
        RedisPublisher::new(&spec.redis_url, keys, 100_000).map_err(|e| anyhow::anyhow!("{e}"))?;
    let notifier = NotifierActor::new(LAG_MOUNT.into(), meta.clone(), Arc::new(publisher)).start();
    let committer = CommitterActor::new(
        LAG_MOUNT.into(),
        meta,
        notifier,
        filestore_s3_actors::retry::RetryPolicy::default(),
    )
    .start();
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1) as f64);
    let started = tokio::time::Instant::now();
    let mut running = Vec::with_capacity(spec.ops);
    for i in 0..spec.ops {
        tokio::time::sleep_until(started + interval * i as u32).await;
        running.push(tokio::spawn(one_put_commit(
            committer.clone(),
            LAG_MOUNT,
            format!("w4/{}/r{}/{i}", spec.case, spec.round),
        )));
    }
    for r in running {
        r.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (lags, undecodable) = listener.await?;
    if lags.len() < spec.ops {
        bail!(
            "{} of {} events arrived (undecodable: {undecodable:?})",
            lags.len(),
            spec.ops
        );
    }
    let (p50, p99) = latencies(lags);
    Ok(Measured {
        seconds,
        bytes: 0,
        ops: spec.ops as u64,
        p50_ms: p50,
        p99_ms: p99,
    })
}

/// One put's intent, then its commit (node, snapshot, journal, outbox), through `committer`.
async fn one_put_commit(
    committer: actix::Addr<filestore_s3_actors::committer::CommitterActor>,
    mount: &'static str,
    path: String,
) -> Result<()> {
    use filestore_s3_actors::committer::{CommitOperation, RecordIntent};
    use filestore_s3_actors::model::IntentOutcome;
    let body = path.as_bytes();
    let sha256 = filestore_s3::Sha256Digest::of(body);
    let request = OpRequest::Put(filestore_s3_actors::model::PutRequest {
        path: path.clone(),
        key: path.clone(),
        size: body.len() as u64,
        sha256,
        content_type: None,
        metadata: Default::default(),
        condition: Default::default(),
    });
    let intent = NewIntent {
        mount: mount.into(),
        idempotency_key: path.clone(),
        fingerprint: request.fingerprint(),
        request,
        token: uuid::Uuid::new_v4(),
        progress: None,
    };
    let IntentOutcome::Started { journal_id } = committer
        .send(RecordIntent(intent))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?
    else {
        bail!("{path}: not started");
    };
    let record = CommitRecord {
        journal_id,
        mount: mount.into(),
        op: OpKind::Put,
        path: path.clone(),
        key: path.clone(),
        change: NodeChange::Upsert(NodeMeta {
            size: body.len() as u64,
            etag: "0123456789abcdef".into(),
            sha256,
            storage_class: "STANDARD".into(),
            last_modified: None,
            verified: Verification::Sha256VerifiedByStore,
            sse: None,
            not_applied: Vec::new(),
            user_metadata: Default::default(),
        }),
        source: None,
        upload_id: None,
        condition: Default::default(),
    };
    committer
        .send(CommitOperation(record))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// W3: `ops` operations (intent, then commit of a put: node, snapshot, journal, outbox) through
/// one mount's committer from `callers` concurrent callers; `batch` writes per transaction at
/// most (1: one transaction per write, as before group commit).
async fn committer(spec: Spec) -> Result<Measured> {
    use actix::Actor;
    use filestore_s3_actors::committer::CommitterActor;
    use filestore_s3_actors::notifier::NotifierActor;
    let meta: Arc<dyn MetaStore> = Arc::new(
        PgMetaStore::new(&spec.database_url, &spec.schema, 4)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let notifier = NotifierActor::new(MOUNT.into(), meta.clone(), Arc::new(NoRedis)).start();
    let committer = CommitterActor::new(
        MOUNT.into(),
        meta,
        notifier,
        filestore_s3_actors::retry::RetryPolicy::default(),
    )
    .with_max_batch(spec.batch)
    // One transaction per write is also one at a time: the committer before group commit.
    .with_max_in_flight(if spec.batch == 1 {
        1
    } else {
        filestore_s3_actors::committer::DEFAULT_MAX_IN_FLIGHT
    })
    .start();
    let (case, round) = (spec.case.clone(), spec.round);
    let one =
        move |i: usize| one_put_commit(committer.clone(), MOUNT, format!("w3/{case}/r{round}/{i}"));
    let m = timed_many(spec.ops, spec.callers, one).await?;
    // Let the notifier drain before the system stops (not timed).
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(m)
}
