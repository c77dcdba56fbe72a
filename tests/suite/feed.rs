//! The change feed: a watcher started after 300 committed operations receives all of them from
//! cursor 0 in commit order, then live ones; a trimmed Redis stream loses nothing (the feed reads
//! the outbox); a watcher resuming from a cursor continues without a gap. Real Postgres, Redis,
//! S3 (s3s-fs).

use crate::common;
use filestore_s3::Location;

use std::time::Duration;

use common::ownredis::OwnRedis;
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

pub async fn catch_up_then_live_in_commit_order(backend: Backend) {
    let env = TestEnv::new(backend).await;
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
pub async fn events_written_elsewhere_are_relayed_at_once(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.outbox_poll_interval = Duration::from_secs(60);
    let mut env = TestEnv::builder(backend).settings(settings).build().await;
    env.add_mount("m2", |_| {}).await;
    env.exec
        .put_bytes("m", "a.txt", b"a".to_vec(), PutOptions::default())
        .await
        .unwrap();
    env.wait_stream(1).await;
    let started = std::time::Instant::now();
    let m = env
        .exec
        .move_object(
            &Location::new("m", "a.txt"),
            &Location::new("m2", "b.txt"),
            Default::default(),
        )
        .await
        .unwrap();
    // wait_stream_of gives up after 15 s, well before the 60 s poll.
    let events = env.wait_stream_of("m", 2).await;
    assert_eq!(events[1].1["journal_id"], m.journal_id);
    assert_eq!(events[1].1["op"], "move");
    assert!(started.elapsed() < Duration::from_secs(15));
    env.cleanup().await;
}

/// Redis crashes and restarts while a watcher follows the mount and operations commit: the
/// watcher receives every event, in commit order, with no gap; the events committed while Redis
/// was down reach the new Redis stream once it is back.
pub async fn redis_restart_mid_stream_loses_nothing(backend: Backend) {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let env = TestEnv::builder(backend)
        .config(|c| c.redis_url = url)
        .build()
        .await;
    let opts = FollowOptions {
        poll_interval: Duration::from_millis(200),
    };
    let mut feed = Box::pin(env.exec.follow("m", 0, opts));
    let mut committed = Vec::new();
    let mut seen = Vec::new();
    let put = |i: usize| {
        let exec = env.exec.clone();
        async move {
            exec.put_bytes(
                "m",
                &format!("r/{}.txt", i % 7),
                format!("r{i}").into_bytes(),
                PutOptions::default(),
            )
            .await
            .unwrap()
        }
    };
    for i in 0..40 {
        committed.push(put(i).await);
    }
    for _ in 0..20 {
        seen.push(next(&mut feed).await);
    }
    redis.kill();
    // Commits go on while Redis is down (the outbox keeps the events).
    for i in 40..80 {
        committed.push(put(i).await);
    }
    for _ in 20..60 {
        seen.push(next(&mut feed).await);
    }
    redis.up();
    for i in 80..100 {
        committed.push(put(i).await);
    }
    for _ in 60..100 {
        seen.push(next(&mut feed).await);
    }
    let got: Vec<_> = seen.iter().map(|e| e.event.event_id).collect();
    let want: Vec<_> = committed.iter().map(|r| r.event_id).collect();
    assert_eq!(got, want, "every event once, in commit order");
    assert!(seen.windows(2).all(|w| w[0].cursor < w[1].cursor));

    // The notifier relays the backlog to the restarted Redis: every event committed from the
    // outage on is on the new stream, in order (the ones published before the crash died with it).
    // Relaying is at least once: an event committed before the crash that the notifier had not
    // yet marked published when Redis went (it may not even have sent it) is sent again, so the
    // new stream may start a few events earlier — but always at a committed event, with none
    // missing and none out of order from there on.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = env.stream_key();
    let last = committed.last().unwrap().event_id.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let on_stream: Vec<String> = loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .ids
            .iter()
            .map(|e| e.get::<String>("event_id").unwrap())
            .collect();
        if ids.last() == Some(&last) || std::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let committed_ids: Vec<String> = committed.iter().map(|r| r.event_id.to_string()).collect();
    let from = committed_ids
        .iter()
        .position(|id| on_stream.first() == Some(id))
        .expect("the new stream starts at a committed event");
    assert!(
        from <= 40,
        "the new stream lacks events committed while Redis was down (starts at #{from})"
    );
    assert_eq!(on_stream, committed_ids[from..]);
    env.cleanup().await;
}

/// Published outbox rows older than the retention are pruned by the mount's owner; a watcher
/// asking to resume before the pruned events gets `FeedExpired` naming the horizon, and following
/// from the horizon continues with the events still kept and the live ones.
pub async fn outbox_retention_prunes_and_the_feed_says_so(backend: Backend) {
    let mut settings = common::fast_settings();
    settings.recovery_interval = Duration::from_millis(200);
    // Long enough for the feed below to read the next event before it is pruned in turn.
    settings.outbox_retention = Duration::from_secs(1);
    let env = TestEnv::builder(backend).settings(settings).build().await;
    let mut last = None;
    for i in 0..5 {
        last = Some(
            env.exec
                .put_bytes("m", &format!("p/{i}"), b"x".to_vec(), PutOptions::default())
                .await
                .unwrap(),
        );
    }
    env.wait_stream(5).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while env.count("outbox").await > 0 {
        assert!(std::time::Instant::now() < deadline, "outbox not pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let horizon: i64 = env
        .query(
            "SELECT pruned_through FROM {schema}.outbox_horizon WHERE mount = 'm'",
            &[],
        )
        .await[0]
        .get(0);
    assert!(horizon > 0);

    let mut old = Box::pin(env.exec.follow("m", 0, FollowOptions::default()));
    let err = tokio::time::timeout(Duration::from_secs(5), old.next())
        .await
        .unwrap()
        .unwrap();
    match err {
        Err(filestore_s3::Error::FeedExpired {
            mount,
            cursor,
            pruned_through,
        }) => {
            assert_eq!((mount.as_str(), cursor, pruned_through), ("m", 0, horizon));
        }
        other => panic!("expected FeedExpired, got {other:?}"),
    }
    // From the horizon on, nothing is missing: the next event is the next commit.
    let mut feed = Box::pin(env.exec.follow(
        "m",
        horizon,
        FollowOptions {
            poll_interval: Duration::from_millis(100),
        },
    ));
    let r = env
        .exec
        .put_bytes("m", "p/new", b"y".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let e = next(&mut feed).await;
    assert_eq!(e.event.event_id, r.event_id);
    assert_ne!(e.event.event_id, last.unwrap().event_id);
    env.cleanup().await;
}

/// F4: Redis stopped for a while, then started again (with its data, as a persistent Redis
/// would be). Operations keep committing meanwhile; once Redis is back the backlog drains in
/// commit order, every event once with its outbox event id; the invariants hold.
pub async fn f04_redis_down_for_a_while_commits_go_on(backend: Backend) {
    let mut redis = OwnRedis::start_with(true);
    let url = redis.url();
    let env = TestEnv::builder(backend)
        .config(|c| c.redis_url = url)
        .build()
        .await;
    let mut expected = common::invariants::Expected::new();
    let mut committed = Vec::new();
    for i in 0..30 {
        if i == 10 {
            env.wait_outbox_drained().await;
            redis.stop();
        }
        let body = format!("f4 {i}").into_bytes();
        let r = env
            .exec
            .put_bytes("m", &format!("f4/{i}"), body.clone(), PutOptions::default())
            .await
            .unwrap();
        committed.push(r.event_id.to_string());
        expected.insert(("m".into(), format!("f4/{i}")), common::sha256_hex(&body));
    }
    let backlog: i64 = env
        .query(
            "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(backlog, 20, "the outage's commits wait in the outbox");
    redis.up();
    let events = env.wait_stream(30).await;
    let ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, committed, "every event once, in commit order");
    common::invariants::check(&env, &expected).await;
    env.cleanup().await;
}

/// Transactions writing one mount's outbox at once (a committer writes batches at once; another
/// mount's committer writes a move's event here) commit in the order of their outbox ids, so a
/// feed reader that moves its cursor to the last id it read never passes an event committed
/// later: 4 writers, each committing batches of 16 puts, while a reader follows by id.
pub async fn a_feed_reader_misses_nothing_written_by_transactions_at_once(backend: Backend) {
    use filestore_s3::pg::PgMetaStore;
    use filestore_s3_actors::model::{
        CommitRecord, IntentOutcome, NewIntent, NodeChange, NodeMeta, OpKind, OpRequest,
        Verification,
    };
    use filestore_s3_actors::ports::{MetaOutput, MetaStore, MetaWrite};
    use std::sync::Arc;

    const WRITERS: usize = 4;
    const ROUNDS: usize = 10;
    const BATCH: usize = 16;
    let env = TestEnv::new(backend).await;
    let meta = Arc::new(PgMetaStore::new(&common::database_url(), &env.schema, 8).unwrap());
    let intent = |path: &str| {
        let request = OpRequest::Put(filestore_s3_actors::model::PutRequest {
            path: path.into(),
            key: format!("k/{path}"),
            size: 1,
            sha256: filestore_s3::Sha256Digest::of(path.as_bytes()),
            content_type: None,
            metadata: Default::default(),
            condition: Default::default(),
        });
        NewIntent {
            mount: "m".into(),
            idempotency_key: path.into(),
            fingerprint: request.fingerprint(),
            request,
            token: uuid::Uuid::new_v4(),
            progress: None,
        }
    };
    let commit = |journal_id: i64, path: &str| CommitRecord {
        journal_id,
        mount: "m".into(),
        op: OpKind::Put,
        path: path.into(),
        key: format!("k/{path}"),
        change: NodeChange::Upsert(NodeMeta {
            size: 1,
            etag: "e".into(),
            sha256: filestore_s3::Sha256Digest::of(path.as_bytes()),
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
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let meta = meta.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut seen: Vec<i64> = Vec::new();
            let mut cursor = 0;
            loop {
                let done = !writing.load(std::sync::atomic::Ordering::SeqCst);
                let (events, _) = meta.events_after("m", cursor, 1000).await.unwrap();
                if let Some(last) = events.last() {
                    cursor = last.id;
                }
                seen.extend(events.iter().map(|e| e.id));
                if done && events.is_empty() {
                    return seen;
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let meta = meta.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let paths: Vec<String> =
                        (0..BATCH).map(|i| format!("w{w}/r{round}/{i}")).collect();
                    let begins: Vec<MetaWrite> =
                        paths.iter().map(|p| MetaWrite::Begin(intent(p))).collect();
                    let ids: Vec<i64> = meta
                        .apply(&begins)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|o| match o {
                            Ok(MetaOutput::Begun(IntentOutcome::Started { journal_id })) => {
                                journal_id
                            }
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    let commits: Vec<MetaWrite> = ids
                        .iter()
                        .zip(&paths)
                        .map(|(id, p)| MetaWrite::Commit(commit(*id, p)))
                        .collect();
                    for o in meta.apply(&commits).await.unwrap() {
                        assert!(matches!(o, Ok(MetaOutput::Committed(_))), "{o:?}");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let rows = env
        .query(
            "SELECT id FROM {schema}.outbox WHERE mount = 'm' ORDER BY id",
            &[],
        )
        .await;
    let all: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(all.len(), WRITERS * ROUNDS * BATCH);
    let missed: Vec<&i64> = all.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missed.is_empty(),
        "the reader passed {} of {} events committed after a higher id: {missed:?}",
        missed.len(),
        all.len()
    );
    assert_eq!(seen, all, "each event once, in id order");
}

/// An outbox row this version cannot read as an event — here one with an operation kind it does
/// not know, as a newer version might write during a rolling upgrade — does not stop the relay:
/// it reaches Redis as stored, under its row's `event_id`, and the events committed after it
/// follow. The typed change feed cannot hand it out: it names the row, and a reader resuming
/// after that row's cursor goes on.
pub async fn an_unreadable_outbox_row_is_relayed_as_stored_and_the_rest_follow(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let rows = env
        .query(
            "INSERT INTO {schema}.journal
                 (mount, op, path, idempotency_key, fingerprint, state, request, result)
             VALUES ($1, 'put', '/future.txt', 'from-a-newer-version', repeat('a', 64),
                     'committed', '{}', '{}')
             RETURNING id",
            &[&env.mount],
        )
        .await;
    let journal_id: i64 = rows[0].get(0);
    let event_id = uuid::Uuid::new_v4();
    let payload = serde_json::json!({
        "event_id": event_id.to_string(),
        "op": "rename",
        "mount": env.mount,
        "path": "/future.txt",
        "journal_id": journal_id,
    });
    let rows = env
        .query(
            "INSERT INTO {schema}.outbox (event_id, mount, journal_id, payload)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&event_id, &env.mount, &journal_id, &payload],
        )
        .await;
    let unreadable_id: i64 = rows[0].get(0);
    let put = env
        .exec
        .put_bytes("m", "after.txt", b"a".to_vec(), PutOptions::default())
        .await
        .unwrap();

    let stream = env.wait_stream(2).await;
    assert_eq!(stream.len(), 2, "{stream:?}");
    assert_eq!(stream[0].0, event_id.to_string());
    assert_eq!(stream[0].1, payload, "published as stored");
    assert_eq!(stream[1].1["op"], "put");
    assert_eq!(stream[1].1["journal_id"], put.journal_id);
    env.wait_outbox_drained().await;

    let mut feed = Box::pin(env.exec.follow("m", 0, FollowOptions::default()));
    let err = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("an answer within 10 s")
        .expect("the feed answers")
        .expect_err("the typed feed cannot hand out the row");
    assert!(
        err.to_string().contains(&format!("row {unreadable_id}")),
        "the error names the row: {err}"
    );
    let mut feed = Box::pin(
        env.exec
            .follow("m", unreadable_id, FollowOptions::default()),
    );
    let e = next(&mut feed).await;
    assert_eq!(e.event.journal_id, put.journal_id);
    env.cleanup().await;
}

per_backend! {
    @except_moto
    catch_up_then_live_in_commit_order => super::catch_up_then_live_in_commit_order(B);
    events_written_elsewhere_are_relayed_at_once => super::events_written_elsewhere_are_relayed_at_once(B);
    redis_restart_mid_stream_loses_nothing => super::redis_restart_mid_stream_loses_nothing(B);
    outbox_retention_prunes_and_the_feed_says_so => super::outbox_retention_prunes_and_the_feed_says_so(B);
    f04_redis_down_for_a_while_commits_go_on => super::f04_redis_down_for_a_while_commits_go_on(B);
    a_feed_reader_misses_nothing_written_by_transactions_at_once => super::a_feed_reader_misses_nothing_written_by_transactions_at_once(B);
    an_unreadable_outbox_row_is_relayed_as_stored_and_the_rest_follow => super::an_unreadable_outbox_row_is_relayed_as_stored_and_the_rest_follow(B);
}
