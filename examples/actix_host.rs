//! Embedding the executor in an actix host: an actor of the host holds the `S3Executor` handle,
//! sends it work, and receives upload progress as actix messages.
//!
//! Needs Postgres, Redis and an S3 endpoint: `scripts/dev-services.sh`, then
//!
//!     . .dev/env
//!     AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=y AWS_REGION=us-east-1 \
//!       cargo run --example actix_host -- "$FILESTORE_TEST_MOTO_ENDPOINT"
//!
//! It registers a mount `example` on bucket `filestore-example` (created if missing), puts a
//! 20 MiB object as a multipart upload with progress, copies it, lists, and stops.

use actix::prelude::*;
use filestore_s3::actors::mount::MountSpec;
use filestore_s3::s3::S3StoreFactory;
use filestore_s3::{
    progress_to_recipient, ExecutorConfig, ListOptions, MountRow, PutOptions, S3Executor,
    TransferOptions, UploadProgressMsg,
};

/// The host's actor: does its storage work through the executor handle.
struct Archiver {
    exec: S3Executor,
}

impl Actor for Archiver {
    type Context = Context<Self>;
}

/// Progress of the executor's uploads arrives as a message.
impl Handler<UploadProgressMsg> for Archiver {
    type Result = ();

    fn handle(&mut self, msg: UploadProgressMsg, _ctx: &mut Self::Context) {
        let p = msg.0;
        println!(
            "progress {}: part {}/{} ({} of {} bytes)",
            p.path,
            p.parts_done,
            p.parts_total.unwrap_or(0),
            p.bytes_done,
            p.bytes_total.unwrap_or(0)
        );
    }
}

/// Archive a blob: put it, then copy it under `archive/`.
#[derive(Message)]
#[rtype(result = "anyhow::Result<String>")]
struct Archive {
    path: String,
    body: Vec<u8>,
}

impl Handler<Archive> for Archiver {
    type Result = ResponseFuture<anyhow::Result<String>>;

    fn handle(&mut self, msg: Archive, ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        let progress = progress_to_recipient(ctx.address().recipient());
        Box::pin(async move {
            let put = exec
                .put_reader(
                    "example",
                    &msg.path,
                    std::io::Cursor::new(msg.body),
                    PutOptions {
                        progress: Some(progress),
                        ..Default::default()
                    },
                )
                .await?;
            let archived = format!("archive/{}", msg.path);
            let copy = exec
                .copy(
                    "example",
                    &msg.path,
                    "example",
                    &archived,
                    TransferOptions::default(),
                )
                .await?;
            Ok(format!(
                "put {} (generation {}), copied to {} (verified {})",
                put.path,
                put.generation,
                copy.path,
                copy.node.map(|n| n.verified.as_str()).unwrap_or("-")
            ))
        })
    }
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:5055".into());
    let mut config = ExecutorConfig::from_env()?;
    config.schema = "filestore_example".into();
    let mut row = MountRow::new("example", "filestore-example", "archive-host");
    row.endpoint = Some(endpoint);
    row.path_style = true;
    row.multipart_threshold = 8 * 1024 * 1024;
    row.part_size = 5 * 1024 * 1024;
    let client = S3StoreFactory::new(config.s3.clone())
        .await
        .client_for(&MountSpec::from_row(&row)?)?;
    if client
        .head_bucket()
        .bucket(&row.bucket)
        .send()
        .await
        .is_err()
    {
        client.create_bucket().bucket(&row.bucket).send().await?;
    }

    // Inside an actix System the executor runs its actors on an arbiter of this System.
    let exec = S3Executor::start(config).await?;
    exec.register_mount(row).await?;
    let archiver = Archiver { exec: exec.clone() }.start();
    let body: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let summary = archiver
        .send(Archive {
            path: "reports/q4.bin".into(),
            body,
        })
        .await??;
    println!("{summary}");
    let page = exec
        .list(
            "example",
            "",
            ListOptions {
                delimited: false,
                ..Default::default()
            },
        )
        .await?;
    for e in page.entries {
        println!("{}\t{}", e.size, e.path);
    }
    exec.shutdown().await;
    System::current().stop();
    Ok(())
}
