//! Embedding the executor in an actix host: an actor of the host drives the executor purely by
//! messages (`filestore_s3::messages`: put, copy, move, delete, list) and receives upload progress
//! and the mount's change events as actix messages.
//!
//! Needs Postgres, Redis and an S3 endpoint: `scripts/dev-services.sh`, then
//!
//!     . .dev/env
//!     AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=y AWS_REGION=us-east-1 \
//!       cargo run --example actix_host -- "$FILESTORE_TEST_MOTO_ENDPOINT"
//!
//! It registers a mount `example` on bucket `filestore-example` (created if missing), puts a
//! 20 MiB object as a multipart upload with progress, copies, moves and deletes it, lists, prints
//! the mount's events, and stops.

use actix::prelude::*;
use bytes::Bytes;
use filestore_s3::messages::{
    ChangeEventMsg, Copy, Delete, ExecutorActor, List, Location, Move, Put, PutFile, StatPath,
    Subscribe, SubscriptionEnded,
};
use filestore_s3::s3::S3StoreFactory;
use filestore_s3::MountSpec;
use filestore_s3::{
    progress_to_recipient, ExecutorConfig, ListOptions, MountRow, PutOptions, S3Executor,
    UploadProgressMsg,
};

/// The host's actor: does its storage work by sending the executor's actor messages.
struct Archiver {
    exec: Addr<ExecutorActor>,
}

impl Actor for Archiver {
    type Context = Context<Self>;
}

/// Progress of the executor's uploads arrives as a message.
impl Handler<UploadProgressMsg> for Archiver {
    type Result = ();

    fn handle(&mut self, msg: UploadProgressMsg, _ctx: &mut Self::Context) {
        let p = msg.0;
        // A stream's size (and so its number of parts) is unknown until it ends.
        let or_unknown = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
        println!(
            "progress {}: part {}/{} ({} of {} bytes)",
            p.path,
            p.parts_done,
            or_unknown(p.parts_total.map(u64::from)),
            p.bytes_done,
            or_unknown(p.bytes_total)
        );
    }
}

/// The mount's change events arrive as messages too.
impl Handler<ChangeEventMsg> for Archiver {
    type Result = ();

    fn handle(&mut self, msg: ChangeEventMsg, _ctx: &mut Self::Context) {
        let e = msg.0.event;
        println!(
            "event #{}: {} {} (generation {})",
            msg.0.cursor,
            e.op.as_str(),
            e.path,
            e.generation
        );
    }
}

/// A feed that ended (an unknown mount, a cursor the outbox no longer keeps) is reported.
impl Handler<SubscriptionEnded> for Archiver {
    type Result = ();

    fn handle(&mut self, msg: SubscriptionEnded, _ctx: &mut Self::Context) {
        eprintln!("the feed of {} ended: {}", msg.mount, msg.error);
    }
}

/// Archive a blob: put it (from a file: resumable), record a manifest beside it, copy it under `archive/`, move the original under `done/`, delete
/// the moved one, and list what is left.
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
            let file = std::env::temp_dir().join(format!("actix-host-{}", std::process::id()));
            tokio::fs::write(&file, &msg.body).await?;
            let put = exec
                .send(PutFile {
                    mount: "example".into(),
                    path: msg.path.clone(),
                    file: file.clone(),
                    opts: PutOptions {
                        progress: Some(progress),
                        ..Default::default()
                    },
                })
                .await??;
            let _ = tokio::fs::remove_file(&file).await;
            let manifest = format!("{} {} bytes\n", msg.path, msg.body.len());
            exec.send(Put {
                mount: "example".into(),
                path: format!("{}.manifest", msg.path),
                body: Bytes::from(manifest),
                opts: PutOptions::default(),
            })
            .await??;
            let archived = format!("archive/{}", msg.path);
            let copy = exec
                .send(Copy {
                    from: Location::new("example", &msg.path),
                    to: Location::new("example", &archived),
                    opts: Default::default(),
                })
                .await??;
            let stat = exec
                .send(StatPath {
                    at: Location::new("example", &archived),
                })
                .await??;
            println!(
                "{archived}: {} bytes in the store, node generation {:?}",
                stat.object.size,
                stat.node.map(|n| n.generation)
            );
            let done = format!("done/{}", msg.path);
            exec.send(Move {
                from: Location::new("example", &msg.path),
                to: Location::new("example", &done),
                opts: Default::default(),
            })
            .await??;
            exec.send(Delete {
                at: Location::new("example", &done),
                opts: Default::default(),
            })
            .await??;
            let page = exec
                .send(List {
                    mount: "example".into(),
                    dir: "".into(),
                    opts: ListOptions::default(),
                })
                .await??;
            let left: Vec<String> = page.entries.into_iter().map(|e| e.path).collect();
            Ok(format!(
                "put {} (generation {}), copied to {} (verified {}), moved to {done} and deleted; the mount holds {left:?}",
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

    // Inside an actix System the executor runs its actors on an arbiter of this System; the
    // host's actors reach it through its actor's address.
    let exec = S3Executor::start(config).await?;
    exec.register_mount(row).await?;
    let executor = exec.actor();
    let archiver = Archiver {
        exec: executor.clone(),
    }
    .start();
    executor
        .send(Subscribe {
            mount: "example".into(),
            after: 0,
            to: archiver.clone().recipient(),
            ended: Some(archiver.clone().recipient()),
        })
        .await?;
    let body: Vec<u8> = (0..20 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let summary = archiver
        .send(Archive {
            path: "reports/q4.bin".into(),
            body,
        })
        .await??;
    println!("{summary}");
    // Let the last events arrive before stopping.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    exec.shutdown().await;
    System::current().stop();
    Ok(())
}
