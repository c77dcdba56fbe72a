//! The committer's queue on the in-memory metadata store: retries are scheduled, not slept with
//! the mailbox paused, and writes still apply in the order they were sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use filestore_s3_actors::committer::{CommitterActor, QueryCommitter, RecordIntent};
use filestore_s3_actors::model::{IntentOutcome, NewIntent, OpRequest};
use filestore_s3_actors::notifier::NotifierActor;
use filestore_s3_actors::ports::MetaStore;
use filestore_s3_actors::retry::RetryPolicy;
use filestore_s3_actors::testing::Fakes;

fn intent(n: usize) -> NewIntent {
    let request = OpRequest::Delete {
        path: format!("p/{n}"),
        key: format!("k/{n}"),
    };
    NewIntent {
        mount: "m".into(),
        idempotency_key: format!("key-{n}"),
        fingerprint: request.fingerprint(),
        request,
        token: uuid::Uuid::new_v4(),
    }
}

fn start(f: &Fakes, retry: RetryPolicy) -> Addr<CommitterActor> {
    let meta: Arc<dyn MetaStore> = f.meta.clone();
    let notifier = NotifierActor::new("m".into(), meta.clone(), f.publisher.clone()).start();
    CommitterActor::new("m".into(), meta, notifier, retry).start()
}

#[actix_rt::test]
async fn a_retry_waits_without_pausing_the_mailbox_and_keeps_the_order() {
    let f = Fakes::default();
    let retry = RetryPolicy {
        max_attempts: 10,
        max_elapsed: Duration::from_secs(20),
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(300),
        retry_budget: 500,
    };
    // Three attempts fail as if Postgres were restarting.
    f.meta.fail_next_writes.store(3, Ordering::SeqCst);
    let committer = start(&f, retry);
    let calls: Vec<_> = (0..5)
        .map(|n| {
            let c = committer.clone();
            tokio::spawn(async move { c.send(RecordIntent(intent(n))).await })
        })
        .collect();
    // While the first write waits for its retry, the committer answers at once and holds all
    // five writes.
    let mut seen_waiting = false;
    for _ in 0..100 {
        let started = std::time::Instant::now();
        let status = committer.send(QueryCommitter).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "the committer's mailbox was paused for {:?}",
            started.elapsed()
        );
        assert!(status.queued <= 5, "{status:?}");
        if status.failed_attempts > 0 && !status.writing && status.queued == 5 {
            seen_waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_waiting, "never saw the committer waiting for a retry");
    let mut ids = Vec::new();
    for call in calls {
        match call.await.unwrap().unwrap().unwrap() {
            IntentOutcome::Started { journal_id } => ids.push(journal_id),
            other => panic!("{other:?}"),
        }
    }
    // Applied once each, in the order they were sent.
    let journal = f.meta.journal();
    assert_eq!(journal.len(), 5);
    for (n, entry) in journal.iter().enumerate() {
        assert_eq!(entry.idempotency_key, format!("key-{n}"));
        assert_eq!(ids[n], entry.id);
    }
    assert_eq!(f.meta.fail_next_writes.load(Ordering::SeqCst), 0);
    let status = committer.send(QueryCommitter).await.unwrap();
    assert_eq!((status.queued, status.failed_attempts), (0, 0));
}

#[actix_rt::test]
async fn writes_failing_past_the_retry_limit_get_a_retryable_error_and_later_ones_run() {
    let f = Fakes::default();
    let retry = RetryPolicy {
        max_attempts: 3,
        max_elapsed: Duration::from_secs(20),
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(20),
        retry_budget: 500,
    };
    f.meta.fail_next_writes.store(3, Ordering::SeqCst);
    let committer = start(&f, retry);
    let err = committer
        .send(RecordIntent(intent(0)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(f.meta.journal().is_empty());
    // Postgres is back: the next write goes through, and the same call again too (its first
    // attempt wrote nothing).
    assert!(matches!(
        committer.send(RecordIntent(intent(1))).await.unwrap(),
        Ok(IntentOutcome::Started { .. })
    ));
    assert!(matches!(
        committer.send(RecordIntent(intent(0))).await.unwrap(),
        Ok(IntentOutcome::Started { .. })
    ));
    assert_eq!(f.meta.journal().len(), 2);
}

#[actix_rt::test]
async fn an_intent_sent_again_after_a_lost_acknowledgement_goes_ahead() {
    let f = Fakes::default();
    let i = intent(7);
    let first = f.meta.begin(&i).await.unwrap();
    // The same call again (its acknowledgement was lost): its own row, started.
    assert_eq!(f.meta.begin(&i).await.unwrap(), first);
    // Another call with the same key: the existing row, not started.
    let other = NewIntent {
        token: uuid::Uuid::new_v4(),
        ..i.clone()
    };
    assert!(matches!(
        f.meta.begin(&other).await.unwrap(),
        IntentOutcome::Existing(_)
    ));
}
