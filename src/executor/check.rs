//! `S3Executor::check`: an operator's read-only audit of one mount — its nodes against its
//! bucket (a merge of both in key order, a page at a time: memory does not grow with the mount),
//! its journal, and its feed (docs/operations.md). Nothing is written to S3, Postgres or Redis.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use filestore_s3_actors::model::ObjectMeta;
use filestore_s3_actors::Error;
use serde::Serialize;

use super::runtime::on_arbiter;
use super::S3Executor;
use crate::pg::CheckNode;

/// The version of the report's JSON shape.
pub const CHECK_REPORT_VERSION: u32 = 1;

/// What to check and how much to show.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Examples kept per kind of finding.
    pub examples: usize,
    /// A pending journal row unchanged for longer is reported (`pending_stale`).
    pub pending_older_than: Duration,
    /// An event not relayed to Redis for longer is reported (`event_unpublished`).
    pub unpublished_older_than: Duration,
    /// Failed rows that changed within this are looked at (`failed_with_object`).
    pub failed_since: Duration,
    /// Objects without a node HEADed at most (to read their write marker); past it they are
    /// counted as `object_without_node` unread.
    pub heads: usize,
    /// Keys per page of the bucket and of the nodes.
    pub page: i32,
    /// HEAD each object whose listing entry has no ETag (a store such as s3s-fs lists none) to
    /// compare it; without, such objects are compared by size only (`etags_unlisted` counts
    /// them).
    pub head_unlisted_etags: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            examples: 20,
            pending_older_than: Duration::from_secs(300),
            unpublished_older_than: Duration::from_secs(300),
            failed_since: Duration::from_secs(7 * 24 * 3600),
            heads: 1000,
            page: 1000,
            head_unlisted_etags: false,
        }
    }
}

/// One kind of finding: how many, and the first examples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Finding {
    /// How many were found.
    pub count: u64,
    /// The first ones, each a small JSON object naming what was found.
    pub examples: Vec<serde_json::Value>,
}

/// The report of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// [`CHECK_REPORT_VERSION`].
    pub version: u32,
    /// The mount.
    pub mount: String,
    /// Its bucket and key prefix.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
    /// When the check started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long it took.
    pub seconds: f64,
    /// Nodes read.
    pub nodes: u64,
    /// Objects listed under the prefix.
    pub objects: u64,
    /// Objects whose ETag the listing left out (a store such as s3s-fs): HEADed for it with
    /// `head_unlisted_etags`, else compared by size only.
    pub etags_unlisted: u64,
    /// Findings by kind (only kinds found); `clean` when there is none.
    pub findings: BTreeMap<&'static str, Finding>,
    /// `true` when nothing was found.
    pub clean: bool,
    /// The mount's lease as recorded: owner, epoch, until.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<serde_json::Value>,
    /// What the mount's store was probed to honour, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<filestore_s3_actors::model::StoreConditions>,
}

impl CheckReport {
    fn add(&mut self, kind: &'static str, examples: usize, example: serde_json::Value) {
        let f = self.findings.entry(kind).or_default();
        f.count += 1;
        if f.examples.len() < examples {
            f.examples.push(example);
        }
    }

    fn add_count(&mut self, kind: &'static str, count: u64, examples: Vec<serde_json::Value>) {
        if count == 0 {
            return;
        }
        let f = self.findings.entry(kind).or_default();
        f.count += count;
        f.examples.extend(examples);
    }
}

/// Pages of the bucket under the mount's prefix, one object at a time.
struct Objects {
    store: filestore_s3_actors::store::MountStore,
    prefix: String,
    page: std::vec::IntoIter<ObjectMeta>,
    token: Option<String>,
    done: bool,
    size: i32,
}

impl Objects {
    async fn next(&mut self) -> Result<Option<ObjectMeta>, Error> {
        loop {
            if let Some(o) = self.page.next() {
                return Ok(Some(o));
            }
            if self.done {
                return Ok(None);
            }
            let l = self
                .store
                .list(&self.prefix, None, self.token.as_deref(), Some(self.size))
                .await?;
            self.token = l.next_token;
            self.done = self.token.is_none();
            self.page = l.objects.into_iter();
        }
    }
}

/// Pages of the mount's nodes in key order, one node at a time.
struct Nodes {
    meta: std::sync::Arc<crate::pg::PgMetaStore>,
    mount: String,
    page: std::vec::IntoIter<CheckNode>,
    after: String,
    done: bool,
    size: i64,
}

impl Nodes {
    async fn next(&mut self) -> Result<Option<CheckNode>, Error> {
        loop {
            if let Some(n) = self.page.next() {
                self.after.clone_from(&n.key);
                return Ok(Some(n));
            }
            if self.done {
                return Ok(None);
            }
            let page = self
                .meta
                .nodes_after(&self.mount, &self.after, self.size)
                .await
                .map_err(Error::Metadata)?;
            self.done = (page.len() as i64) < self.size;
            self.page = page.into_iter();
        }
    }
}

impl S3Executor {
    /// Checks `mount` without changing anything: each node against the object at its key (in
    /// the bucket, size, ETag, storage class), each object under the prefix against a node (an
    /// object without one is HEADed for the executor's write marker: whose journal row wrote it),
    /// keys that map to no path, pending rows older than a threshold, failed rows whose object
    /// is in the bucket, committed rows without an event, events not relayed. Fails only when
    /// the check cannot run (the mount, Postgres or the bucket cannot be read).
    pub async fn check(&self, mount: &str, opts: CheckOptions) -> Result<CheckReport, Error> {
        let (_, spec, store) = self.mount(mount)?;
        let meta = self.inner.services.meta.clone();
        let mount = mount.to_owned();
        let lease = self.lease_holder(&mount).await?;
        let capabilities = self.store_conditions(&mount).await?;
        let work = async move {
            let started = Instant::now();
            let n = opts.examples;
            let mut report = CheckReport {
                version: CHECK_REPORT_VERSION,
                mount: mount.clone(),
                bucket: spec.bucket.clone(),
                prefix: spec.keys.prefix().to_owned(),
                started_at: chrono::Utc::now(),
                seconds: 0.0,
                nodes: 0,
                objects: 0,
                etags_unlisted: 0,
                findings: BTreeMap::new(),
                clean: true,
                lease: lease.map(|h| {
                    serde_json::json!({
                        "owner": h.owner, "epoch": h.epoch, "until": h.expires_at,
                    })
                }),
                capabilities,
            };
            let mut objects = Objects {
                store: store.clone(),
                prefix: spec.keys.prefix().to_owned(),
                page: Vec::new().into_iter(),
                token: None,
                done: false,
                size: opts.page.clamp(1, 1000),
            };
            let mut nodes = Nodes {
                meta: meta.clone(),
                mount: mount.clone(),
                page: Vec::new().into_iter(),
                after: String::new(),
                done: false,
                size: i64::from(opts.page.clamp(1, 10_000)),
            };
            let mut o = objects.next().await?;
            let mut nd = nodes.next().await?;
            let mut heads = 0usize;
            loop {
                let order = match (&o, &nd) {
                    (None, None) => break,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(a), Some(b)) => a.key.as_bytes().cmp(b.key.as_bytes()),
                };
                match order {
                    std::cmp::Ordering::Less => {
                        // An object without a node.
                        let obj = o.take().expect("an object");
                        report.objects += 1;
                        match spec.keys.path_for(&obj.key) {
                            Err(u) => report.add(
                                "unmapped_key",
                                n,
                                serde_json::json!({"key": u.key, "reason": u.reason}),
                            ),
                            Ok(path) if heads < opts.heads => {
                                heads += 1;
                                let marker = store.head(&obj.key).await?.and_then(|m| m.marker);
                                match marker {
                                    Some(m) => {
                                        let state = meta
                                            .journal_state(m.journal_id)
                                            .await
                                            .map_err(Error::Metadata)?;
                                        report.add(
                                            "object_without_node_marked",
                                            n,
                                            serde_json::json!({
                                                "key": obj.key, "path": path.as_str(),
                                                "size": obj.size, "journal_id": m.journal_id,
                                                "journal_state": state,
                                            }),
                                        );
                                    }
                                    None => report.add(
                                        "object_without_node",
                                        n,
                                        serde_json::json!({
                                            "key": obj.key, "path": path.as_str(), "size": obj.size,
                                        }),
                                    ),
                                }
                            }
                            Ok(path) => report.add(
                                "object_without_node",
                                n,
                                serde_json::json!({
                                    "key": obj.key, "path": path.as_str(), "size": obj.size,
                                    "marker": "not read (--heads reached)",
                                }),
                            ),
                        }
                        o = objects.next().await?;
                    }
                    std::cmp::Ordering::Greater => {
                        let node = nd.take().expect("a node");
                        report.nodes += 1;
                        report.add(
                            "node_without_object",
                            n,
                            serde_json::json!({"path": node.path, "key": node.key}),
                        );
                        nd = nodes.next().await?;
                    }
                    std::cmp::Ordering::Equal => {
                        let (mut obj, node) =
                            (o.take().expect("an object"), nd.take().expect("a node"));
                        if obj.etag.is_empty() {
                            // A store that lists no ETags (s3s-fs): its HEAD says, if asked.
                            report.etags_unlisted += 1;
                            if opts.head_unlisted_etags {
                                if let Some(m) = store.head(&obj.key).await? {
                                    obj.etag = m.etag;
                                }
                            }
                        }
                        report.objects += 1;
                        report.nodes += 1;
                        if obj.size != node.size {
                            report.add(
                                "size_mismatch",
                                n,
                                serde_json::json!({
                                    "path": node.path, "node": node.size, "object": obj.size,
                                }),
                            );
                        } else if !obj.etag.is_empty()
                            && obj.etag.trim_matches('"') != node.etag.trim_matches('"')
                        {
                            report.add(
                                "etag_mismatch",
                                n,
                                serde_json::json!({
                                    "path": node.path, "node": node.etag, "object": obj.etag,
                                }),
                            );
                        }
                        if !obj.storage_class.eq_ignore_ascii_case(&node.storage_class) {
                            report.add(
                                "storage_class_mismatch",
                                n,
                                serde_json::json!({
                                    "path": node.path, "node": node.storage_class,
                                    "object": obj.storage_class,
                                }),
                            );
                        }
                        o = objects.next().await?;
                        nd = nodes.next().await?;
                    }
                }
            }
            let limit = i64::try_from(n).unwrap_or(i64::MAX);
            let rows = |v: Vec<crate::pg::CheckRow>| -> Vec<serde_json::Value> {
                v.into_iter()
                    .map(|r| {
                        serde_json::json!({
                            "journal_id": r.id, "op": r.op, "path": r.path,
                            "age_seconds": r.age_seconds.round(),
                        })
                    })
                    .collect()
            };
            let (c, ex) = meta
                .stale_pending(&mount, opts.pending_older_than, limit)
                .await
                .map_err(Error::Metadata)?;
            report.add_count("pending_stale", c, rows(ex));
            let (c, ex) = meta
                .committed_without_event(&mount, limit)
                .await
                .map_err(Error::Metadata)?;
            report.add_count("committed_without_event", c, rows(ex));
            let (c, ex) = meta
                .unpublished_events(&mount, opts.unpublished_older_than, limit)
                .await
                .map_err(Error::Metadata)?;
            report.add_count("event_unpublished", c, rows(ex));
            // A failed write whose object is at its key, carrying its marker: the store applied
            // what the journal says failed.
            for r in meta
                .recent_failed_writes(&mount, opts.failed_since, 1000)
                .await
                .map_err(Error::Metadata)?
            {
                let Ok(path) = filestore_s3_actors::path::FsPath::parse(&r.path) else {
                    continue;
                };
                let Ok(key) = spec.keys.key_for(&path) else {
                    continue;
                };
                let marked = store
                    .head(&key)
                    .await?
                    .and_then(|m| m.marker)
                    .is_some_and(|m| m.journal_id == r.id);
                if marked {
                    report.add(
                        "failed_with_object",
                        n,
                        serde_json::json!({"journal_id": r.id, "op": r.op, "path": r.path, "key": key}),
                    );
                }
            }
            report.clean = report.findings.is_empty();
            report.seconds = started.elapsed().as_secs_f64();
            Ok::<_, Error>(report)
        };
        on_arbiter(&self.inner.arbiter, work).await?
    }
}

/// The last scheduled check of a mount, as `/healthz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckSummary {
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long it took.
    pub seconds: f64,
    /// Nothing found.
    pub clean: bool,
    /// Findings by kind: how many.
    pub findings: BTreeMap<&'static str, u64>,
    /// Why the check could not run, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every kind of finding, for gauges that go back to 0.
const KINDS: &[&str] = &[
    "node_without_object",
    "object_without_node",
    "object_without_node_marked",
    "size_mismatch",
    "etag_mismatch",
    "storage_class_mismatch",
    "unmapped_key",
    "pending_stale",
    "failed_with_object",
    "committed_without_event",
    "event_unpublished",
];

/// Checks the mounts this executor owns every `every`, keeping each one's last summary for
/// `/healthz` and its findings as gauges (`filestore_s3_check_findings{mount,kind}`).
pub(super) async fn run_checks(
    inner: std::sync::Weak<super::Inner>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use filestore_s3_actors::commands::{GetStatus, LeaseStatus};
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let Some(me) = inner.upgrade() else { return };
        let exec = S3Executor {
            inner: me.clone(),
            hops: super::forward::NO_FORWARDING,
        };
        for (mount, addr) in me.registry.leasable(&me.config) {
            let owned = addr
                .send(GetStatus)
                .await
                .is_ok_and(|s| matches!(s.lease, LeaseStatus::Owned { .. }));
            if !owned {
                continue;
            }
            let started_at = chrono::Utc::now();
            let summary = match exec.check(&mount, CheckOptions::default()).await {
                Ok(r) => {
                    for kind in KINDS {
                        let n = r.findings.get(kind).map_or(0, |f| f.count);
                        metrics::gauge!("filestore_s3_check_findings", "mount" => mount.clone(), "kind" => *kind)
                            .set(n as f64);
                    }
                    metrics::gauge!("filestore_s3_check_clean", "mount" => mount.clone())
                        .set(if r.clean { 1.0 } else { 0.0 });
                    metrics::gauge!("filestore_s3_check_seconds", "mount" => mount.clone())
                        .set(r.seconds);
                    if !r.clean {
                        log::warn!(
                            "check of mount {mount}: drift found: {}",
                            r.findings
                                .iter()
                                .map(|(k, f)| format!("{k} {}", f.count))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    CheckSummary {
                        started_at: r.started_at,
                        seconds: r.seconds,
                        clean: r.clean,
                        findings: r.findings.iter().map(|(k, f)| (*k, f.count)).collect(),
                        error: None,
                    }
                }
                Err(e) => CheckSummary {
                    started_at,
                    seconds: 0.0,
                    clean: false,
                    findings: BTreeMap::new(),
                    error: Some(e.to_string()),
                },
            };
            me.checks
                .lock()
                .expect("checks lock")
                .insert(mount, summary);
        }
    }
}
