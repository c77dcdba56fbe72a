//! The `metrics` counters an upload exports match what it sent. Its own test binary, because the
//! metrics recorder is process-wide.

use std::sync::Arc;

use filestore_s3_actors::commands::{GetStatus, PutLargeObject};
use filestore_s3_actors::model::UploadSource;
use filestore_s3_actors::mount::{MountRow, MountSpec};
use filestore_s3_actors::path::FsPath;
use filestore_s3_actors::store::MountStore;
use filestore_s3_actors::testing::Fakes;
use filestore_s3_actors::{MountSupervisor, SupervisorSettings};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::sync::atomic::Ordering;

#[actix_rt::test]
async fn exported_counters_match_the_bytes_sent() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder in this process");

    let f = Fakes::default();
    let mut row = MountRow::new("metered", "bucket-a", "");
    row.multipart_threshold = 1024;
    row.part_size = 5 * 1024 * 1024;
    let spec = Arc::new(MountSpec::from_row(&row).unwrap());
    let (store, meta, publisher) = (f.store.clone(), f.meta.clone(), f.publisher.clone());
    let mut settings = SupervisorSettings::default();
    settings.retry.min_delay = std::time::Duration::from_millis(1);
    let addr = actix::Supervisor::start(move |_| {
        MountSupervisor::new(
            MountStore::new(spec, store, settings.retry),
            meta,
            publisher,
            settings,
        )
    });
    // One retried part, so retries and bytes sent differ from the object size.
    f.store.fail_next_parts.store(1, Ordering::SeqCst);
    let size: u64 = 12 * 1024 * 1024 + 5;
    addr.send(PutLargeObject {
        path: FsPath::parse("m/x.bin").unwrap(),
        source: UploadSource::Stream,
        reader: Some(Box::new(std::io::Cursor::new(vec![3u8; size as usize]))),
        size: Some(size),
        content_type: None,
        metadata: Default::default(),
        idempotency_key: None,
        progress: None,
        condition: Default::default(),
    })
    .await
    .unwrap()
    .unwrap();
    let status = addr.send(GetStatus).await.unwrap();

    let mut counters = std::collections::HashMap::new();
    let mut in_flight = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        match value {
            DebugValue::Counter(v) => *counters.entry(name).or_insert(0) += v,
            DebugValue::Gauge(g) if name == "filestore_s3_uploads_in_flight" => {
                in_flight = Some(g.into_inner())
            }
            _ => {}
        }
    }
    assert_eq!(
        counters["filestore_s3_upload_bytes_total"], size,
        "accepted bytes"
    );
    assert_eq!(counters["filestore_s3_upload_parts_total"], 3);
    assert_eq!(counters["filestore_s3_retries_total"], 1);
    assert_eq!(status.parts_uploaded, 3);
    assert_eq!(status.retries, 1);
    assert_eq!(in_flight, Some(0.0), "the in-flight gauge returns to zero");
}
