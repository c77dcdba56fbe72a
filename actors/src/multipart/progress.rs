//! Progress of an upload: the tracker its parts update, and the hub that fans it out to every
//! caller following the operation (a late one is given the furthest point reached).

use super::*;

/// Receives progress updates; called on the executor's thread, so it must be quick.
pub type ProgressSink = Arc<dyn Fn(&UploadProgress) + Send + Sync>;

/// One operation's progress, fanned out to every caller following it: the caller that started
/// it, and callers that joined later with the same idempotency key (a put sent again joins the
/// upload recovery resumed). A late subscriber is told the latest progress at once.
#[derive(Clone, Default)]
pub struct ProgressHub(Arc<Mutex<HubState>>);

#[derive(Default)]
pub(crate) struct HubState {
    latest: Option<UploadProgress>,
    sinks: Vec<ProgressSink>,
}

impl ProgressHub {
    /// Adds a follower; it gets the latest progress now, if there was any.
    pub fn subscribe(&self, sink: ProgressSink) {
        // A sink that panicked must not take the supervisor down with it.
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &s.latest {
            sink(p);
        }
        s.sinks.push(sink);
    }

    /// The sink the operation reports to.
    pub fn sink(&self) -> ProgressSink {
        let hub = self.clone();
        Arc::new(move |p: &UploadProgress| {
            let mut s = hub.0.lock().unwrap_or_else(|e| e.into_inner());
            // Parts finish out of order; a late subscriber starts from the furthest point seen.
            if s.latest.as_ref().is_none_or(|l| {
                (l.bytes_done, l.bytes_sent, l.finished) <= (p.bytes_done, p.bytes_sent, p.finished)
            }) {
                s.latest = Some(p.clone());
            }
            for sink in &s.sinks {
                sink(p);
            }
        })
    }
}

/// Progress bookkeeping shared by the part futures of one upload.
pub(crate) struct Tracker {
    pub(crate) state: Arc<Mutex<UploadProgress>>,
    pub(crate) started: Instant,
    pub(crate) last_publish: Mutex<Option<Instant>>,
    pub(crate) sink: Option<ProgressSink>,
    pub(crate) publisher: Arc<dyn ChangePublisher>,
}

impl Tracker {
    pub(crate) fn update(&self, f: impl FnOnce(&mut UploadProgress)) {
        let snapshot = {
            let mut p = self.state.lock().expect("progress lock");
            f(&mut p);
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            p.bytes_per_second = p.bytes_sent as f64 / secs;
            p.eta_seconds = p.bytes_total.and_then(|t| {
                (p.bytes_per_second > 0.0)
                    .then(|| t.saturating_sub(p.bytes_done) as f64 / p.bytes_per_second)
            });
            p.clone()
        };
        if let Some(sink) = &self.sink {
            sink(&snapshot);
        }
        let due = {
            let mut last = self.last_publish.lock().expect("publish lock");
            let due =
                snapshot.finished || last.is_none_or(|t| t.elapsed() >= PROGRESS_PUBLISH_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let publisher = self.publisher.clone();
            actix::spawn(async move {
                if let Err(e) = publisher.publish_progress(&snapshot.mount, &snapshot).await {
                    log::debug!("progress not published: {e}");
                }
            });
        }
    }
}
