//! The committer's queue on the in-memory metadata store: retries are scheduled, not slept with
//! the mailbox paused; batches are written at once, and writes touching the same thing still
//! apply in the order they were sent.

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
    let request = OpRequest::Delete(filestore_s3_actors::model::DeleteRequest {
        path: format!("p/{n}"),
        key: format!("k/{n}"),
    });
    NewIntent {
        mount: "m".into(),
        idempotency_key: format!("key-{n}"),
        fingerprint: request.fingerprint(),
        request,
        token: uuid::Uuid::new_v4(),
        progress: None,
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
    // Applied once each, each call answered with its own row. (Writes that touch nothing in
    // common may be written by two transactions at once, so their order is not kept; the next
    // test checks the order of writes that do.)
    let journal = f.meta.journal();
    assert_eq!(journal.len(), 5);
    for (n, id) in ids.iter().enumerate() {
        let entry = journal
            .iter()
            .find(|e| e.id == *id)
            .expect("the row answered");
        assert_eq!(entry.idempotency_key, format!("key-{n}"));
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

/// Batches that overlap in time (on the in-memory store, each batch takes 30 ms).
fn overlapping(f: &Fakes) -> Vec<(usize, usize)> {
    let batches = f.meta.batches.lock().unwrap().clone();
    let mut pairs = Vec::new();
    for (i, a) in batches.iter().enumerate() {
        for (j, b) in batches.iter().enumerate().skip(i + 1) {
            if a.started < b.ended && b.started < a.ended {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

#[actix_rt::test]
async fn batches_are_written_at_once_but_never_two_touching_the_same_thing() {
    use filestore_s3_actors::committer::Claim;
    use std::collections::HashSet;
    let f = Fakes::default();
    *f.meta.apply_delay.lock().unwrap() = Duration::from_millis(30);
    let committer = start(&f, RetryPolicy::default());

    // 40 intents with keys of their own, sent together: shared among two transactions at once.
    let calls: Vec<_> = (0..40)
        .map(|n| committer.send(RecordIntent(intent(n))))
        .collect();
    for call in futures::future::join_all(calls).await {
        assert!(matches!(call.unwrap(), Ok(IntentOutcome::Started { .. })));
    }
    assert!(
        !overlapping(&f).is_empty(),
        "no two batches were written at once: {:?}",
        f.meta
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.writes.len())
            .collect::<Vec<_>>()
    );

    // 40 intents on 10 keys (each key sent 4 times, interleaved): a key's writes are never in
    // two batches at once, and the first sent of each key is the one that starts it.
    f.meta.batches.lock().unwrap().clear();
    let keyed = |n: usize| {
        let mut i = intent(100 + n % 10);
        i.token = uuid::Uuid::new_v4();
        i
    };
    let calls: Vec<_> = (0..40)
        .map(|n| committer.send(RecordIntent(keyed(n))))
        .collect();
    let answers = futures::future::join_all(calls).await;
    for (n, answer) in answers.into_iter().enumerate() {
        let outcome = answer.unwrap().unwrap();
        if n < 10 {
            assert!(
                matches!(outcome, IntentOutcome::Started { .. }),
                "{n}: {outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome, IntentOutcome::Existing(_)),
                "{n}: {outcome:?}"
            );
        }
    }
    let batches = f.meta.batches.lock().unwrap().clone();
    let claims =
        |i: usize| -> HashSet<Claim> { batches[i].writes.iter().flat_map(Claim::of).collect() };
    for (i, j) in overlapping(&f) {
        let common: Vec<Claim> = claims(i).intersection(&claims(j)).cloned().collect();
        assert!(
            common.is_empty(),
            "batches {i} and {j} ran at once and share {common:?}"
        );
    }
    assert_eq!(f.meta.journal().len(), 50);
    let status = committer.send(QueryCommitter).await.unwrap();
    assert_eq!((status.queued, status.writing), (0, false));
}
