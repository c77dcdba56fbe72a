//! The change feed: a watcher started after 300 committed operations receives all of them from
//! cursor 0 in commit order, then live ones; a trimmed Redis stream loses nothing (the feed reads
//! the outbox); a watcher resuming from a cursor continues without a gap. Real Postgres, Redis,
//! S3 (s3s-fs).

mod common;

use std::time::Duration;

use common::{Backend, TestEnv};
use filestore_s3::{FeedEvent, FollowOptions, PutOptions};
use futures::StreamExt;

async fn next(
    feed: &mut (impl futures::Stream<Item = Result<FeedEvent, filestore_s3::Error>> + Unpin),
) -> FeedEvent {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("an event within 10 s")
        .expect("the feed goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_then_live_in_commit_order() {
    let env = TestEnv::new(Backend::S3sFs).await;
    let mut committed = Vec::new();
    for i in 0..300 {
        let r = env
            .exec
            .put_bytes(
                "m",
                &format!("f/{}.txt", i % 40),
                format!("v{i}").into_bytes(),
                PutOptions::default(),
            )
            .await
            .unwrap();
        committed.push(r);
    }
    // Trim the Redis stream far below what was committed: the feed does not depend on it.
    env.wait_outbox_drained().await;
    let mut conn = env.redis.clone();
    let _: i64 = redis::cmd("XTRIM")
        .arg(env.stream_key())
        .arg("MAXLEN")
        .arg(50)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(env.stream().await.len(), 50);

    let opts = FollowOptions {
        poll_interval: Duration::from_millis(200),
    };
    let mut feed = Box::pin(env.exec.follow("m", 0, opts.clone()));
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen.push(next(&mut feed).await);
    }
    // All 300, in commit order (cursors increasing), with the ids the callers got.
    assert!(seen.windows(2).all(|w| w[0].cursor < w[1].cursor));
    let got: Vec<_> = seen
        .iter()
        .map(|e| (e.event.journal_id, e.event.event_id))
        .collect();
    let want: Vec<_> = committed
        .iter()
        .map(|r| (r.journal_id, r.event_id))
        .collect();
    assert_eq!(got, want);

    // Live: new commits arrive while following.
    for i in 0..3 {
        let r = env
            .exec
            .put_bytes(
                "m",
                &format!("live/{i}.txt"),
                b"live".to_vec(),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let e = next(&mut feed).await;
        assert_eq!(e.event.event_id, r.event_id);
        assert_eq!(e.event.path, format!("live/{i}.txt"));
    }

    // A watcher that stored the cursor of event 150 resumes right after it.
    let mut resumed = Box::pin(env.exec.follow("m", seen[149].cursor, opts));
    let e = next(&mut resumed).await;
    assert_eq!(e.event.event_id, committed[150].event_id);

    // An unknown mount ends the feed with an error.
    let mut bad = Box::pin(env.exec.follow("nope", 0, FollowOptions::default()));
    let err = tokio::time::timeout(Duration::from_secs(5), bad.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(err, Err(filestore_s3::Error::UnknownMount { .. })),
        "{err:?}"
    );
    env.cleanup().await;
}

/// A move across mounts writes an event for the source mount from the destination's committer;
/// the commit's NOTIFY wakes the source mount's notifier, so the event reaches the source mount's
/// stream at once, not at its next poll (set here to a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_elsewhere_are_relayed_at_once() {
    let mut settings = common::fast_settings();
    settings.outbox_poll_interval = Duration::from_secs(60);
    let mut env = TestEnv::build(Backend::S3sFs, |_| {}, settings, None).await;
    env.add_mount("m2", |_| {}).await;
    env.exec
        .put_bytes("m", "a.txt", b"a".to_vec(), PutOptions::default())
        .await
        .unwrap();
    env.wait_stream(1).await;
    let started = std::time::Instant::now();
    let m = env
        .exec
        .move_object("m", "a.txt", "m2", "b.txt", Default::default())
        .await
        .unwrap();
    // wait_stream_of gives up after 15 s, well before the 60 s poll.
    let events = env.wait_stream_of("m", 2).await;
    assert_eq!(events[1].1["journal_id"], m.journal_id);
    assert_eq!(events[1].1["op"], "move");
    assert!(started.elapsed() < Duration::from_secs(15));
    env.cleanup().await;
}
