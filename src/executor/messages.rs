//! The executor's actix face: an actor a host's actors send typed messages to, one per operation,
//! answered with typed results, and a subscription that delivers a mount's change events to a
//! host actor's `Recipient`. It runs every call through the same [`S3Executor`] methods the async
//! handle offers.

use std::path::PathBuf;

use actix::prelude::*;
use bytes::Bytes;
use futures::StreamExt;

use filestore_s3_actors::model::{ListPage, OpResult, Stat};
use filestore_s3_actors::Error;

pub use super::Location;
use super::{
    DeleteOptions, FeedEvent, FollowOptions, ListOptions, PutOptions, S3Executor, TransferOptions,
};

/// Puts an object from memory ([`S3Executor::put_bytes`]).
#[derive(Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct Put {
    /// Mount name.
    pub mount: String,
    /// Filestore path.
    pub path: String,
    /// The content.
    pub body: Bytes,
    /// Options (conditions, idempotency key, progress, metadata).
    pub opts: PutOptions,
}

/// Puts an object from a file ([`S3Executor::put_file`]): resumable above the mount's multipart
/// threshold.
#[derive(Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct PutFile {
    /// Mount name.
    pub mount: String,
    /// Filestore path.
    pub path: String,
    /// The file.
    pub file: PathBuf,
    /// Options.
    pub opts: PutOptions,
}

/// Deletes the object at a path ([`S3Executor::delete`]).
#[derive(Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct Delete {
    /// Where.
    pub at: Location,
    /// Options.
    pub opts: DeleteOptions,
}

/// Copies an object ([`S3Executor::copy`]); the fields are named, so source and destination
/// cannot be swapped by position.
#[derive(Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct Copy {
    /// The source.
    pub from: Location,
    /// The destination.
    pub to: Location,
    /// Options.
    pub opts: TransferOptions,
}

/// Moves an object ([`S3Executor::move_object`]).
#[derive(Message)]
#[rtype(result = "Result<OpResult, Error>")]
pub struct Move {
    /// The source.
    pub from: Location,
    /// The destination.
    pub to: Location,
    /// Options.
    pub opts: TransferOptions,
}

/// What the store holds at a path and what Postgres records ([`S3Executor::stat`]).
#[derive(Message)]
#[rtype(result = "Result<Stat, Error>")]
pub struct StatPath {
    /// Where.
    pub at: Location,
}

/// One page of a directory listing ([`S3Executor::list`]).
#[derive(Message)]
#[rtype(result = "Result<ListPage, Error>")]
pub struct List {
    /// Mount name.
    pub mount: String,
    /// Directory (`""` or `"/"`: the mount's root).
    pub dir: String,
    /// Options (page size, continuation token, recursion).
    pub opts: ListOptions,
}

/// A mount's change event, as a subscription delivers it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ChangeEventMsg(pub FeedEvent);

/// Why a subscription ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SubscriptionEnded {
    /// The mount.
    pub mount: String,
    /// The error that ended the feed (an unknown mount, a cursor before what the outbox keeps).
    pub error: Error,
}

/// Delivers mount `mount`'s events committed after `after` (0: from the first) to `to`, in
/// commit order ([`S3Executor::follow`]), until the recipient's actor stops; an error that ends
/// the feed goes to `ended` when given. Answers once the subscription runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Mount name.
    pub mount: String,
    /// The cursor to resume after.
    pub after: i64,
    /// Where the events go.
    pub to: Recipient<ChangeEventMsg>,
    /// Where the end of the feed is reported.
    pub ended: Option<Recipient<SubscriptionEnded>>,
}

/// The executor as an actor. [`S3Executor::actor`] starts one on the executor's arbiter; it stops
/// when its last address is dropped.
pub struct ExecutorActor {
    exec: S3Executor,
}

impl Actor for ExecutorActor {
    type Context = Context<Self>;
}

impl S3Executor {
    /// An actor taking the executor's messages ([`Put`], [`PutFile`], [`Delete`], [`Copy`],
    /// [`Move`], [`StatPath`], [`List`], [`Subscribe`]), for hosts whose actors talk by mailbox.
    /// Each call starts one, on the executor's arbiter.
    pub fn actor(&self) -> Addr<ExecutorActor> {
        let exec = self.clone();
        ExecutorActor::start_in_arbiter(&self.inner.arbiter, move |_| ExecutorActor { exec })
    }
}

type Reply<T> = ResponseFuture<Result<T, Error>>;

impl Handler<Put> for ExecutorActor {
    type Result = Reply<OpResult>;

    fn handle(&mut self, msg: Put, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move {
            exec.put_bytes(&msg.mount, &msg.path, msg.body, msg.opts)
                .await
        })
    }
}

impl Handler<PutFile> for ExecutorActor {
    type Result = Reply<OpResult>;

    fn handle(&mut self, msg: PutFile, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move {
            exec.put_file(&msg.mount, &msg.path, &msg.file, msg.opts)
                .await
        })
    }
}

impl Handler<Delete> for ExecutorActor {
    type Result = Reply<OpResult>;

    fn handle(&mut self, msg: Delete, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move { exec.delete(&msg.at.mount, &msg.at.path, msg.opts).await })
    }
}

impl Handler<Copy> for ExecutorActor {
    type Result = Reply<OpResult>;

    fn handle(&mut self, msg: Copy, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move {
            let (from, to) = (msg.from, msg.to);
            exec.copy(&from, &to, msg.opts).await
        })
    }
}

impl Handler<Move> for ExecutorActor {
    type Result = Reply<OpResult>;

    fn handle(&mut self, msg: Move, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move {
            let (from, to) = (msg.from, msg.to);
            exec.move_object(&from, &to, msg.opts).await
        })
    }
}

impl Handler<StatPath> for ExecutorActor {
    type Result = Reply<Stat>;

    fn handle(&mut self, msg: StatPath, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move { exec.stat(&msg.at.mount, &msg.at.path).await })
    }
}

impl Handler<List> for ExecutorActor {
    type Result = Reply<ListPage>;

    fn handle(&mut self, msg: List, _ctx: &mut Self::Context) -> Self::Result {
        let exec = self.exec.clone();
        Box::pin(async move { exec.list(&msg.mount, &msg.dir, msg.opts).await })
    }
}

impl Handler<Subscribe> for ExecutorActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) {
        let mut feed = Box::pin(
            self.exec
                .follow(&msg.mount, msg.after, FollowOptions::default()),
        );
        let (to, ended, mount) = (msg.to, msg.ended, msg.mount);
        // The relay runs in this actor's context: it ends with its recipient, with an error that
        // ends the feed, or when the host drops the executor actor's last address.
        let relay = async move {
            while let Some(item) = feed.next().await {
                match item {
                    Ok(event) => {
                        if to.try_send(ChangeEventMsg(event.clone())).is_err() {
                            // Full: wait for room; closed: the subscriber is gone.
                            if to.send(ChangeEventMsg(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        if let Some(ended) = ended {
                            ended.do_send(SubscriptionEnded { mount, error });
                        }
                        return;
                    }
                }
            }
        };
        ctx.spawn(relay.into_actor(self));
    }
}
