//! The actor that runs one multipart upload, and the handle its owner drives it through.

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{run_upload, CompletedUpload, UploadDeps, UploadRequest};
use crate::error::Error;
use crate::model::UploadProgress;

/// Stop an upload without aborting it: its running future is dropped, the upload stays open and
/// recorded, so the journal row's owner can resume it. Sent when the handle is dropped before the
/// upload ended (the operation that owned it was dropped, e.g. by a supervisor restart).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopUpload;

type Done = oneshot::Sender<Result<CompletedUpload, Error>>;

/// The actor for one multipart upload (its parts, their retries and records). It stops when the
/// upload ends, or when its handle is dropped first. Its progress reaches the callers through the
/// operation's `ProgressHub`.
pub struct UploadActor {
    job: Option<(UploadRequest, UploadDeps)>,
    done: Option<Done>,
    progress: Arc<Mutex<UploadProgress>>,
    running: Option<SpawnHandle>,
}

/// Drives one upload: wait for it. Dropping the handle before the upload ended stops the upload
/// (resumable, not aborted): no upload outlives its owner.
pub struct UploadHandle {
    addr: Addr<UploadActor>,
    done: Option<oneshot::Receiver<Result<CompletedUpload, Error>>>,
}

impl Drop for UploadHandle {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.addr.do_send(StopUpload);
        }
    }
}

impl UploadHandle {
    /// Starts the upload in a new actor on the current arbiter.
    pub fn start(job: UploadRequest, deps: UploadDeps) -> Self {
        let (tx, rx) = oneshot::channel();
        let progress = UploadProgress {
            mount: job.mount.clone(),
            path: job.path.clone(),
            upload_id: String::new(),
            bytes_done: 0,
            bytes_total: job.size,
            parts_done: 0,
            parts_total: None,
            bytes_sent: 0,
            bytes_per_second: 0.0,
            eta_seconds: None,
            finished: false,
        };
        let addr = UploadActor {
            job: Some((job, deps)),
            done: Some(tx),
            progress: Arc::new(Mutex::new(progress)),
            running: None,
        }
        .start();
        UploadHandle {
            addr,
            done: Some(rx),
        }
    }

    /// Waits for the upload to end.
    pub async fn join(mut self) -> Result<CompletedUpload, Error> {
        let Some(done) = self.done.as_mut() else {
            return Err(Error::Shutdown);
        };
        let res = done.await;
        self.done = None;
        res.map_err(|_| Error::Shutdown)?
    }
}

impl Actor for UploadActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some((job, deps)) = self.job.take() else {
            return;
        };
        let mount = job.mount.clone();
        metrics::gauge!("filestore_s3_uploads_in_flight", "mount" => mount.clone()).increment(1.0);
        let progress = self.progress.clone();
        self.running = Some(
            ctx.spawn(run_upload(job, deps, progress).into_actor(self).map(
                move |res, act, ctx| {
                    metrics::gauge!("filestore_s3_uploads_in_flight", "mount" => mount)
                        .decrement(1.0);
                    act.running = None;
                    if let Some(done) = act.done.take() {
                        let _ = done.send(res);
                    }
                    ctx.stop();
                },
            )),
        );
    }
}

impl Handler<StopUpload> for UploadActor {
    type Result = ();

    fn handle(&mut self, _msg: StopUpload, ctx: &mut Self::Context) {
        if let Some(h) = self.running.take() {
            ctx.cancel_future(h);
            metrics::gauge!("filestore_s3_uploads_in_flight", "mount" => self.progress.lock().expect("progress lock").mount.clone())
                .decrement(1.0);
            log::info!(
                "upload {} stopped with its operation; left open for a resume",
                self.progress.lock().expect("progress lock").upload_id
            );
        }
        ctx.stop();
    }
}
