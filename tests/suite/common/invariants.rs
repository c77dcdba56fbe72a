//! The invariants of FAULTS.md (I1–I6), checked against what Postgres, Redis and the buckets
//! hold once a scenario has settled. One checker for every crash, takeover and fault scenario.

use std::collections::{BTreeMap, BTreeSet};

use super::{sha256_hex, TestEnv};

/// What one clean run of the scenario's operations leaves: (mount, path) → SHA-256 of the content.
pub type Expected = BTreeMap<(String, String), String>;

/// A mount's bucket and key prefix, from `backend_mounts`.
async fn mounts(env: &TestEnv) -> BTreeMap<String, (String, String)> {
    env.query(
        "SELECT name, bucket, prefix FROM {schema}.backend_mounts",
        &[],
    )
    .await
    .iter()
    .map(|r| {
        let prefix: String = r.get(2);
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        (r.get(0), (r.get(1), prefix))
    })
    .collect()
}

/// Checks I1–I6 and panics naming the first one that does not hold. `expected` is I5's reference
/// state. Call it after recovery ran (no operation running).
pub async fn check(env: &TestEnv, expected: &Expected) {
    let mounts = mounts(env).await;

    // I3: nothing pending; every committed entry has a result and its node (if any) was verified.
    let pending = env
        .query(
            "SELECT id, mount, op, path FROM {schema}.journal WHERE state = 'pending'",
            &[],
        )
        .await;
    assert!(
        pending.is_empty(),
        "I3: {} journal entries still pending: {:?}",
        pending.len(),
        pending
            .iter()
            .map(|r| (
                r.get::<_, i64>(0),
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            ))
            .collect::<Vec<_>>()
    );
    // A commit writes the verified object's snapshot in the same transaction: a committed write
    // without one was committed without its verified metadata.
    let unverified = env
        .query(
            "SELECT j.id FROM {schema}.journal j
             WHERE j.state = 'committed' AND j.op <> 'delete'
               AND NOT EXISTS (SELECT 1 FROM {schema}.snapshots s
                               WHERE s.journal_id = j.id AND NOT s.deleted AND s.sha256 IS NOT NULL)",
            &[],
        )
        .await;
    assert!(
        unverified.is_empty(),
        "I3: committed writes without a verified snapshot: {:?}",
        unverified
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<Vec<_>>()
    );

    // I4: one journal row per idempotency key (a unique constraint, checked anyway), one node per
    // path, one snapshot per (journal, mount, path).
    for (what, sql) in [
        (
            "journal rows per idempotency key",
            "SELECT count(*) FROM (SELECT 1 FROM {schema}.journal GROUP BY mount, idempotency_key HAVING count(*) > 1) d",
        ),
        (
            "nodes per path",
            "SELECT count(*) FROM (SELECT 1 FROM {schema}.nodes GROUP BY mount, path HAVING count(*) > 1) d",
        ),
        (
            "snapshots per journal entry and path",
            "SELECT count(*) FROM (SELECT 1 FROM {schema}.snapshots GROUP BY journal_id, mount, path HAVING count(*) > 1) d",
        ),
    ] {
        let dup: i64 = env.query(sql, &[]).await[0].get(0);
        assert_eq!(dup, 0, "I4: duplicate {what}");
    }

    // I1 and I5: the nodes are exactly the expected ones, and each names an object of that size
    // and content in its mount's bucket; no other object lies under a mount's prefix.
    let nodes = env
        .query(
            "SELECT mount, path, object_key, size, sha256 FROM {schema}.nodes ORDER BY mount, path",
            &[],
        )
        .await;
    let mut found = Expected::new();
    let mut keys_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &nodes {
        let (mount, path, key): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let (size, sha256): (i64, String) = (r.get(3), r.get(4));
        let (bucket, _) = &mounts[&mount];
        let body = env.object_in(bucket, &key).await.unwrap_or_else(|| {
            panic!("I1: node {mount}:{path} names {key}, which is not in {bucket}")
        });
        assert_eq!(body.len() as i64, size, "I1: size of {mount}:{path}");
        assert_eq!(sha256_hex(&body), sha256, "I1: content of {mount}:{path}");
        found.insert((mount.clone(), path), sha256);
        keys_of.entry(mount).or_default().insert(key);
    }
    assert_eq!(&found, expected, "I5: the nodes differ from a clean run's");
    for (mount, (bucket, prefix)) in &mounts {
        let in_bucket: BTreeSet<String> = env.keys_in(bucket, prefix).await.into_iter().collect();
        let tracked = keys_of.remove(mount).unwrap_or_default();
        // Mounts may share a bucket: count only keys under this mount's prefix that no other
        // mount's prefix claims more precisely.
        let stray: Vec<_> = in_bucket
            .iter()
            .filter(|k| !tracked.contains(*k))
            .filter(|k| {
                !mounts.values().any(|(b, p)| {
                    b == bucket && p.len() > prefix.len() && k.starts_with(p.as_str())
                })
            })
            .collect();
        assert!(
            stray.is_empty(),
            "I5: objects in {bucket} under '{prefix}' that no node names: {stray:?}"
        );
    }

    // I3 with the verification level: a node proven by the store's answer alone only on a mount
    // whose `verify` setting trusts that answer.
    let overtrusted = env
        .query(
            "SELECT n.mount, n.path, n.verified, m.verify FROM {schema}.nodes n
             JOIN {schema}.backend_mounts m ON m.name = n.mount
             WHERE (n.verified = 'sha256-in-put-response' AND m.verify = 'head')
                OR (n.verified = 'sha256-in-copy-response' AND m.verify <> 'response')",
            &[],
        )
        .await;
    assert!(
        overtrusted.is_empty(),
        "I3: nodes proven by an answer their mount's verify setting does not trust: {:?}",
        overtrusted
            .iter()
            .map(|r| (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            ))
            .collect::<Vec<_>>()
    );

    // I2: every committed entry has its outbox event(s) — one per mount it changed, never two —
    // and every event reached its mount's Redis stream with the outbox's event id.
    let missing = env
        .query(
            "SELECT j.id FROM {schema}.journal j
             WHERE j.state = 'committed'
               AND NOT EXISTS (SELECT 1 FROM {schema}.outbox o WHERE o.journal_id = j.id)",
            &[],
        )
        .await;
    assert!(
        missing.is_empty(),
        "I2: committed journal entries without an outbox event: {:?}",
        missing
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<Vec<_>>()
    );
    let dup: i64 = env
        .query(
            "SELECT count(*) FROM (SELECT 1 FROM {schema}.outbox GROUP BY journal_id, mount HAVING count(*) > 1) d",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(dup, 0, "I2: two outbox events for one entry and mount");
    env.wait_outbox_drained().await;
    let events = env
        .query(
            "SELECT mount, event_id::text, journal_id FROM {schema}.outbox ORDER BY id",
            &[],
        )
        .await;
    let mut streams: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for mount in mounts.keys() {
        let entries = env.stream_of(mount).await;
        streams.insert(
            mount.clone(),
            entries
                .into_iter()
                .map(|(id, payload)| (id, payload["journal_id"].as_i64().unwrap_or(-1)))
                .collect(),
        );
    }
    for r in &events {
        let (mount, event_id, journal_id): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(
            streams[&mount].get(&event_id),
            Some(&journal_id),
            "I2: event {event_id} of journal entry {journal_id} is not on {mount}'s stream"
        );
    }
    // And the other way: every event on a stream is an outbox row's of a committed entry (the
    // outbox's rows pruned by retention excepted: the entry is still committed).
    let outbox: BTreeMap<(String, String), i64> = events
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let committed: BTreeSet<i64> = env
        .query(
            "SELECT id FROM {schema}.journal WHERE state = 'committed'",
            &[],
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pruned: BTreeSet<String> = env
        .query("SELECT mount FROM {schema}.outbox_horizon", &[])
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (mount, stream) in &streams {
        for (event_id, journal_id) in stream {
            match outbox.get(&(mount.clone(), event_id.clone())) {
                Some(j) => assert_eq!(
                    j, journal_id,
                    "I2: event {event_id} on {mount}'s stream names journal entry {journal_id}, its outbox row {j}"
                ),
                None => assert!(
                    pruned.contains(mount),
                    "I2: event {event_id} (journal entry {journal_id}) on {mount}'s stream has no outbox row"
                ),
            }
            assert!(
                committed.contains(journal_id),
                "I2: event {event_id} on {mount}'s stream belongs to journal entry {journal_id}, which is not committed"
            );
        }
    }

    // I6: no multipart upload open in a bucket unless the journal still points to it (a failed
    // entry whose upload was retained for a resume).
    let retained: BTreeSet<String> = env
        .query(
            "SELECT u.upload_id FROM {schema}.multipart_uploads u
             JOIN {schema}.journal j ON j.id = u.journal_id
             WHERE u.state = 'open' AND j.state <> 'committed'",
            &[],
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    let buckets: BTreeSet<(String, String)> = mounts.values().cloned().collect();
    for (bucket, prefix) in buckets {
        let listing = env
            .s3
            .list_multipart_uploads()
            .bucket(&bucket)
            .prefix(&prefix)
            .send()
            .await;
        match listing {
            Ok(open) => {
                for u in open.uploads() {
                    let id = u.upload_id().unwrap_or_default();
                    assert!(
                        retained.contains(id),
                        "I6: upload {id} of {:?} is open in {bucket} but no unfinished operation holds it",
                        u.key()
                    );
                }
            }
            // s3s-fs lists no uploads: its upload records on disk are read instead. They do not
            // name a bucket, so the uploads this test's executor recorded are looked for there.
            Err(e)
                if e.as_service_error().and_then(|s| s.meta().code()) == Some("NotImplemented") =>
            {
                let Some(on_disk) =
                    super::s3s_fs_open_uploads().filter(|_| env.backend == super::Backend::S3sFs)
                else {
                    eprintln!(
                        "I6 not checked on {bucket}: the server does not list multipart uploads"
                    );
                    continue;
                };
                let recorded: BTreeSet<String> = env
                    .query(
                        "SELECT u.upload_id FROM {schema}.multipart_uploads u
                         JOIN {schema}.backend_mounts m ON m.name = u.mount
                         WHERE m.bucket = $1",
                        &[&bucket],
                    )
                    .await
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for id in recorded.intersection(&on_disk) {
                    assert!(
                        retained.contains(id),
                        "I6: upload {id} is open in s3s-fs (its record is on disk) but no unfinished operation holds it"
                    );
                }
            }
            Err(e) => panic!("ListMultipartUploads {bucket}: {e:?}"),
        }
    }
}
