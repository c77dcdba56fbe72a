//! W8: `check` of a mount of N objects and N nodes generated directly (files in the s3s-fs
//! store, rows in Postgres — not through the executor), against a raw ListObjectsV2 scan of the
//! same keys; each in a process of its own, so its peak RSS is its own.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use filestore_s3::{CheckOptions, ExecutorConfig, S3Executor};

use crate::{Measured, Spec, BUCKET};

pub const MOUNT: &str = "w8";

fn key(i: usize) -> String {
    format!("w8/d{:04}/f{i:07}", i / 1000)
}

fn body(i: usize) -> String {
    format!("object {i}\n")
}

/// Writes `n` objects into the s3s-fs store under `root` and their nodes into Postgres, and the
/// mount row.
pub async fn prepare(spec: &Spec, root: &std::path::Path, n: usize) -> Result<()> {
    for i in 0..n {
        let path = root.join(BUCKET).join(key(i));
        if i % 1000 == 0 {
            std::fs::create_dir_all(path.parent().expect("a directory"))?;
        }
        std::fs::write(&path, body(i))?;
    }
    let (c, conn) = tokio_postgres::connect(&spec.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let s = &spec.schema;
    let meta = filestore_s3::pg::PgMetaStore::new(&spec.database_url, s, 2)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut row = crate::cases::row(spec);
    row.name = MOUNT.into();
    row.prefix = MOUNT.into();
    meta.upsert_mount(&row)
        .await
        .map_err(|e| anyhow::anyhow!("mount row: {e}"))?;
    let id: i64 = c
        .query_one(
            &format!(
                "INSERT INTO {s}.journal (mount, op, path, idempotency_key, fingerprint, state, request, result)
                 VALUES ('{MOUNT}', 'put', 'seed', 'w8-seed', repeat('0', 64), 'committed', '{{}}', '{{}}')
                 RETURNING id"
            ),
            &[],
        )
        .await?
        .get(0);
    // Its event, relayed: the seed row is a committed write like any other.
    c.execute(
        &format!(
            "INSERT INTO {s}.outbox (event_id, mount, journal_id, payload, published_at)
             VALUES (gen_random_uuid(), '{MOUNT}', $1, '{{}}', now())"
        ),
        &[&id],
    )
    .await
    .context("outbox")?;
    let n = i64::try_from(n)?;
    c.execute(
        &format!(
            "INSERT INTO {s}.nodes (mount, path, object_key, size, etag, sha256, storage_class, generation, journal_id)
             SELECT '{MOUNT}', 'd' || lpad((i / 1000)::text, 4, '0') || '/f' || lpad(i::text, 7, '0'),
                    'w8/d' || lpad((i / 1000)::text, 4, '0') || '/f' || lpad(i::text, 7, '0'),
                    length('object ' || i || E'\\n'), 'not-listed', repeat('0', 64), 'STANDARD', 1, $1
             FROM generate_series(0, $2::bigint - 1) AS i"
        ),
        &[&id, &n],
    )
    .await
    .context("nodes")?;
    c.execute(&format!("ANALYZE {s}.nodes"), &[]).await?;
    Ok(())
}

/// The baseline: ListObjectsV2 over the mount's prefix, every page, counting keys.
pub async fn raw_list(spec: &Spec) -> Result<Measured> {
    let c = crate::cases::client_of(spec).await?;
    let started = Instant::now();
    let mut token = None;
    let mut keys = 0u64;
    loop {
        let out = c
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(format!("{MOUNT}/"))
            .set_continuation_token(token)
            .send()
            .await
            .context("ListObjectsV2")?;
        keys += out.contents().len() as u64;
        token = out.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        ops: keys,
        ..Default::default()
    })
}

/// `S3Executor::check` of the mount (a passive executor: no lease, no recovery).
pub async fn check(spec: &Spec) -> Result<Measured> {
    let mut config = ExecutorConfig::default()
        .with_database_url(spec.database_url.clone())
        .with_schema(&spec.schema)
        .with_redis_url(spec.redis_url.clone())
        .with_redis_prefix(&spec.redis_prefix);
    config.s3 = crate::cases::settings();
    config.passive = true;
    config.watch_mounts = false;
    config.pool_size = 2;
    let exec = S3Executor::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    let started = Instant::now();
    let r = exec
        .check(MOUNT, CheckOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("check: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    exec.shutdown().await;
    if !r.clean || r.objects != r.nodes {
        bail!(
            "the generated mount is not clean: {} objects, {} nodes, {:?}",
            r.objects,
            r.nodes,
            r.findings.keys().collect::<Vec<_>>()
        );
    }
    Ok(Measured {
        seconds,
        ops: r.objects,
        ..Default::default()
    })
}
