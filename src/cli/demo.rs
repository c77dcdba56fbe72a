//! `filestore-s3 demo`: a walk through every operation against a mount, for a new user.

use super::*;
use filestore_s3::Location;

pub(crate) async fn demo(config: ExecutorConfig, args: DemoArgs) -> anyhow::Result<()> {
    println!(
        "== filestore-s3 demo: schema '{}', S3 at {}",
        config.schema, args.endpoint
    );
    let applied = filestore_s3::pg::migrate(&config.database_url, &config.schema).await?;
    println!("migrations applied now: {applied:?} (empty when already up to date)");

    let mut row = MountRow::new("demo", &args.bucket, "demo-prefix");
    row.endpoint = Some(args.endpoint.clone());
    row.path_style = true;
    let spec = MountSpec::from_row(&row)?;
    let factory = S3StoreFactory::new(config.s3.clone()).await;
    let client = factory.client_for(&spec)?;
    if client
        .head_bucket()
        .bucket(&args.bucket)
        .send()
        .await
        .is_err()
    {
        client
            .create_bucket()
            .bucket(&args.bucket)
            .send()
            .await
            .with_context(|| format!("creating bucket {} at {}", args.bucket, args.endpoint))?;
        println!("created bucket {}", args.bucket);
    }

    let exec = S3Executor::start(config.clone()).await?;
    println!("registered mount: {:?}", exec.register_mount(row).await?);
    let run = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
    let files: [(&str, &[u8]); 3] = [
        ("reports/2026/summary.txt", b"quarterly numbers\n"),
        ("reports/empty.bin", b""),
        ("photos/café menu ✓.txt", b"espresso 2.50\n"),
    ];
    for (path, body) in files {
        let r = exec
            .put_bytes(
                "demo",
                path,
                body.to_vec(),
                PutOptions {
                    idempotency_key: Some(format!("demo-{run}-{path}")),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            )
            .await?;
        let n = r.node.as_ref().expect("put has a node");
        println!(
            "put   {path:<28} {:>3} bytes  generation {}  sha256 {}…",
            n.size,
            r.generation,
            &n.sha256.to_hex()[..16]
        );
    }
    let again = exec
        .put_bytes(
            "demo",
            files[0].0,
            files[0].1.to_vec(),
            PutOptions {
                idempotency_key: Some(format!("demo-{run}-{}", files[0].0)),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "put   (same idempotency key again) -> journal {} generation {} (recorded result, no new write)",
        again.journal_id, again.generation
    );
    let st = exec.stat("demo", files[0].0).await?;
    println!(
        "stat  {}: {} bytes, etag {}, storage class {}",
        st.path, st.object.size, st.object.etag, st.object.storage_class
    );
    let page = exec
        .list(
            "demo",
            "",
            ListOptions {
                delimited: true,
                ..Default::default()
            },
        )
        .await?;
    println!(
        "list  / -> directories {:?}, files {:?}",
        page.directories,
        page.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    let page = exec.list("demo", "reports", ListOptions::default()).await?;
    println!(
        "list  reports/ (recursive) -> {:?}",
        page.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    let d = exec
        .delete(
            "demo",
            files[1].0,
            DeleteOptions {
                idempotency_key: Some(format!("demo-{run}-rm")),
            },
        )
        .await?;
    println!("rm    {} -> generation {}", files[1].0, d.generation);

    let c = exec
        .copy(
            &Location::new("demo", files[0].0),
            &Location::new("demo", "archive/2026/summary.txt"),
            TransferOptions {
                idempotency_key: Some(format!("demo-{run}-cp")),
                ..Default::default()
            },
        )
        .await?;
    let cn = c.node.as_ref().expect("copy has a node");
    println!(
        "cp    {} -> {}  generation {}  verified {}",
        files[0].0,
        c.path,
        c.generation,
        cn.verified.as_str()
    );
    let m = exec
        .move_object(
            &Location::new("demo", files[2].0),
            &Location::new("demo", "photos/menus/café menu ✓.txt"),
            TransferOptions {
                idempotency_key: Some(format!("demo-{run}-mv")),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "mv    {} -> {}  generation {}  (one commit: the source node is gone)",
        files[2].0, m.path, m.generation
    );
    let refused = exec
        .copy(
            &Location::new("demo", files[0].0),
            &Location::new("demo", "archive/2026/summary.txt"),
            TransferOptions {
                mode: filestore_s3::PutMode::Create,
                ..Default::default()
            },
        )
        .await;
    println!(
        "cp    --if-none-match onto an existing path -> {}",
        match refused {
            Ok(_) => "accepted (unexpected)".to_string(),
            Err(e) => format!("refused: {e}"),
        }
    );

    // Give the notifier a moment to relay the last commit, then show what landed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    exec.shutdown().await;

    let pg = filestore_s3::pg::connect(&config.database_url).await?;
    println!("\n-- {}.nodes (mount 'demo')", config.schema);
    for r in pg
        .query(
            &format!(
                "SELECT path, object_key, size, generation, left(sha256, 16) FROM {}.nodes
                 WHERE mount = 'demo' ORDER BY path",
                config.schema
            ),
            &[],
        )
        .await?
    {
        let (p, k, s, g, h): (String, String, i64, i64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("{p:<28} key={k:<40} size={s:<3} gen={g} sha256={h}…");
    }
    let unpublished: i64 = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.outbox WHERE published_at IS NULL",
                config.schema
            ),
            &[],
        )
        .await?
        .get(0);

    let client = filestore_s3::tls::redis_client(&config.redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let stream = filestore_s3::redis::RedisKeys::new(&config.redis_prefix).stream("demo");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(8)
        .query_async(&mut conn)
        .await?;
    println!("\n-- Redis stream {stream} (latest 8 of this and earlier runs)");
    for e in entries.ids.iter().rev() {
        let payload: String = e.get("payload").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&payload)?;
        println!(
            "{}  {} {} gen={} source={} event_id={}",
            e.id, v["op"], v["path"], v["generation"], v["source_path"], v["event_id"]
        );
    }
    if unpublished > 0 {
        bail!("{unpublished} outbox events are still unpublished");
    }
    println!("\nall outbox events published; demo done");
    Ok(())
}
