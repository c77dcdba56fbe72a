//! `MemoryMeta`: Postgres in memory, with the same rules as the real adapter (a test runs the
//! same batches through both and compares).

use super::*;

#[derive(Default)]
struct MetaState {
    conditions: HashMap<String, crate::model::StoreConditions>,
    mounts: Vec<MountRow>,
    journal: Vec<JournalEntry>,
    nodes: HashMap<(String, String), Node>,
    generations: HashMap<(String, String), i64>,
    outbox: Vec<(OutboxEvent, bool)>,
    uploads: Vec<(UploadRecord, &'static str)>,
    /// mount → (owner, epoch, expires)
    leases: HashMap<String, (String, i64, std::time::Instant)>,
    /// journal id → the token of the call that wrote (or re-armed) it
    tokens: HashMap<i64, uuid::Uuid>,
}

/// Postgres in memory, with the same idempotency, commit and lease rules as the real adapter.
#[derive(Default, Clone)]
pub struct MemoryMeta {
    state: Arc<Mutex<MetaState>>,
    /// Calls to `pending` that will fail before one succeeds.
    pub fail_next_pending: Arc<AtomicU32>,
    /// Intents and commits that will fail (retryably, as a lost connection) before one succeeds.
    pub fail_next_writes: Arc<AtomicU32>,
    /// How long each batch (`apply`) takes before its writes are applied.
    pub apply_delay: Arc<Mutex<std::time::Duration>>,
    /// Every batch applied, with when it started and ended.
    pub batches: Arc<Mutex<Vec<AppliedBatch>>>,
    fence: Option<Fence>,
}

/// One call of [`MetaStore::apply`] on a [`MemoryMeta`].
#[derive(Debug, Clone)]
pub struct AppliedBatch {
    /// When the call started.
    pub started: std::time::Instant,
    /// When it returned.
    pub ended: std::time::Instant,
    /// Its writes.
    pub writes: Vec<crate::ports::MetaWrite>,
}

impl MemoryMeta {
    /// The journal rows.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.state.lock().unwrap().journal.clone()
    }

    /// Outbox events, with their published flag.
    pub fn outbox(&self) -> Vec<(OutboxEvent, bool)> {
        self.state.lock().unwrap().outbox.clone()
    }

    /// Adds a mount row.
    pub fn add_mount(&self, row: MountRow) {
        self.state.lock().unwrap().mounts.push(row);
    }

    /// Ends a mount's lease now (as if its owner had stopped renewing it long ago).
    pub fn expire_lease(&self, mount: &str) {
        if let Some(l) = self.state.lock().unwrap().leases.get_mut(mount) {
            l.2 = std::time::Instant::now();
        }
    }

    fn injected_write_failure(&self) -> Result<(), MetaError> {
        match self
            .fail_next_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(MetaError {
                cause: None,
                fenced: false,
                retryable: true,
                message: "injected: connection lost".into(),
            }),
            Err(_) => Ok(()),
        }
    }

    fn fenced(&self, s: &MetaState) -> Result<(), MetaError> {
        let Some(f) = &self.fence else { return Ok(()) };
        match s.leases.get(&f.mount) {
            Some((o, e, exp))
                if *o == f.owner && *e == f.epoch && *exp > std::time::Instant::now() =>
            {
                Ok(())
            }
            _ => Err(MetaError {
                cause: None,
                fenced: true,
                retryable: false,
                message: format!("'{}' no longer holds the lease of '{}'", f.owner, f.mount),
            }),
        }
    }
}

fn meta_err(msg: &str) -> MetaError {
    MetaError {
        cause: None,
        fenced: false,
        retryable: false,
        message: msg.into(),
    }
}

#[async_trait]
impl MetaStore for MemoryMeta {
    async fn apply(&self, writes: &[crate::ports::MetaWrite]) -> crate::ports::BatchResult {
        let started = std::time::Instant::now();
        let delay = *self.apply_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let out = self.apply_in_order(writes).await;
        self.batches.lock().unwrap().push(AppliedBatch {
            started,
            ended: std::time::Instant::now(),
            writes: writes.to_vec(),
        });
        out
    }
    fn with_fence(&self, fence: Fence) -> Arc<dyn MetaStore> {
        Arc::new(MemoryMeta {
            fence: Some(fence),
            ..self.clone()
        })
    }

    async fn acquire_lease(
        &self,
        mount: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseState, MetaError> {
        let mut s = self.state.lock().unwrap();
        let now = std::time::Instant::now();
        let expires = now + ttl;
        let epoch = match s.leases.get(mount) {
            Some((o, e, exp)) if *exp > now && o != owner => {
                let left = (*exp - now).as_millis() as i64;
                return Ok(LeaseState::HeldBy {
                    owner: o.clone(),
                    expires_at: Utc::now() + chrono::Duration::milliseconds(left),
                });
            }
            Some((_, e, _)) => e + 1,
            None => 1,
        };
        s.leases
            .insert(mount.to_owned(), (owner.to_owned(), epoch, expires));
        Ok(LeaseState::Owned(Fence {
            mount: mount.to_owned(),
            owner: owner.to_owned(),
            epoch,
        }))
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        ttl: std::time::Duration,
    ) -> Result<bool, MetaError> {
        let mut s = self.state.lock().unwrap();
        let now = std::time::Instant::now();
        match s.leases.get_mut(&fence.mount) {
            Some((o, e, exp)) if *o == fence.owner && *e == fence.epoch && *exp > now => {
                *exp = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, fence: &Fence) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        if let Some((o, e, exp)) = s.leases.get_mut(&fence.mount) {
            if *o == fence.owner && *e == fence.epoch {
                *exp = std::time::Instant::now();
            }
        }
        Ok(())
    }

    async fn lease_for_writer(&self, mount: &str) -> Result<Option<LeaseState>, MetaError> {
        let Some(f) = &self.fence else {
            return Ok(None);
        };
        let s = self.state.lock().unwrap();
        let now = std::time::Instant::now();
        Ok(Some(match s.leases.get(mount) {
            Some((o, e, exp)) if *exp > now && *o == f.owner => LeaseState::Owned(Fence {
                mount: mount.to_owned(),
                owner: o.clone(),
                epoch: *e,
            }),
            Some((o, _, exp)) if *exp > now => LeaseState::HeldBy {
                owner: o.clone(),
                expires_at: Utc::now()
                    + chrono::Duration::milliseconds((*exp - now).as_millis() as i64),
            },
            _ => LeaseState::HeldBy {
                owner: String::new(),
                expires_at: Utc::now(),
            },
        }))
    }

    async fn committed_after(
        &self,
        mount: &str,
        path: &str,
        journal_id: i64,
    ) -> Result<Option<i64>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.journal
            .iter()
            .filter(|j| j.id > journal_id && j.state == JournalState::Committed)
            .find(|j| {
                (j.mount == mount && j.request.path() == path)
                    || matches!(&j.request, OpRequest::Move(t)
                        if t.source.mount == mount && t.source.path == path)
            })
            .map(|j| j.id))
    }

    async fn load_mounts(&self) -> Result<Vec<MountRow>, MetaError> {
        Ok(self.state.lock().unwrap().mounts.clone())
    }

    async fn entry(
        &self,
        mount: &str,
        idempotency_key: &str,
    ) -> Result<Option<JournalEntry>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.journal
            .iter()
            .find(|e| e.mount == mount && e.idempotency_key == idempotency_key)
            .cloned())
    }

    async fn pending(&self, mount: &str) -> Result<Vec<JournalEntry>, MetaError> {
        if self
            .fail_next_pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(MetaError {
                cause: None,
                fenced: false,
                retryable: true,
                message: "injected: connection refused".into(),
            });
        }
        let s = self.state.lock().unwrap();
        Ok(s.journal
            .iter()
            .filter(|e| e.mount == mount && e.state == JournalState::Pending)
            .cloned()
            .collect())
    }

    async fn pending_on(&self, paths: &[(String, String)]) -> Result<Vec<JournalEntry>, MetaError> {
        let s = self.state.lock().unwrap();
        let on = |m: &str, p: &str| paths.iter().any(|(pm, pp)| pm == m && pp == p);
        Ok(s.journal
            .iter()
            .filter(|e| e.state == JournalState::Pending)
            .filter(|e| {
                on(&e.mount, e.request.path())
                    || matches!(&e.request, OpRequest::Copy(t) | OpRequest::Move(t)
                        if on(&t.source.mount, &t.source.path))
            })
            .cloned()
            .collect())
    }

    async fn node(&self, mount: &str, path: &str) -> Result<Option<Node>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.nodes.get(&(mount.into(), path.into())).cloned())
    }

    async fn unpublished(
        &self,
        mount: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.outbox
            .iter()
            .filter(|(e, published)| !published && e.event.mount == mount && e.id > after)
            .take(limit as usize)
            .map(|(e, _)| OutboxRow::Event(e.clone()))
            .collect())
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        for (e, published) in s.outbox.iter_mut() {
            if ids.contains(&e.id) {
                *published = true;
            }
        }
        Ok(())
    }

    async fn upload_of(&self, journal_id: i64) -> Result<Option<UploadRecord>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.uploads
            .iter()
            .find(|(u, st)| u.journal_id == journal_id && *st == "open")
            .map(|(u, _)| u.clone()))
    }

    async fn mark_upload_aborted(&self, upload_id: &str) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        for (u, st) in s.uploads.iter_mut() {
            if u.upload_id == upload_id {
                *st = "aborted";
            }
        }
        Ok(())
    }

    async fn recorded_uploads(&self, mount: &str, key: &str) -> Result<Vec<String>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.uploads
            .iter()
            .filter(|(u, _)| u.mount == mount && u.key == key)
            .map(|(u, _)| u.upload_id.clone())
            .collect())
    }

    async fn orphaned_uploads(
        &self,
        mount: &str,
        _older_than: chrono::DateTime<Utc>,
    ) -> Result<Vec<UploadRecord>, MetaError> {
        let s = self.state.lock().unwrap();
        Ok(s.uploads
            .iter()
            .filter(|(u, st)| {
                *st == "open"
                    && u.mount == mount
                    && s.journal
                        .iter()
                        .any(|j| j.id == u.journal_id && j.state != JournalState::Pending)
            })
            .map(|(u, _)| u.clone())
            .collect())
    }

    async fn record_conditions(
        &self,
        mount: &str,
        conditions: &crate::model::StoreConditions,
    ) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        s.conditions.insert(mount.to_owned(), *conditions);
        Ok(())
    }

    async fn conditions(
        &self,
        mount: &str,
    ) -> Result<Option<crate::model::StoreConditions>, MetaError> {
        Ok(self.state.lock().unwrap().conditions.get(mount).copied())
    }

    async fn prune_outbox(
        &self,
        mount: &str,
        _retention: std::time::Duration,
    ) -> Result<u64, MetaError> {
        // No timestamps here: every published event of the mount counts as old enough.
        let mut s = self.state.lock().unwrap();
        let before = s.outbox.len();
        s.outbox
            .retain(|(e, published)| !*published || e.event.mount != mount);
        Ok((before - s.outbox.len()) as u64)
    }
}

/// The writes of [`MetaStore::apply`], one at a time, with the same rules as the Postgres
/// adapter's (a test runs the same batches through both and compares).
impl MemoryMeta {
    /// Applies `writes` in order; a retryable failure (or the fence) stops the batch: the writes
    /// before it stand, the rest are not tried.
    async fn apply_in_order(&self, writes: &[MetaWrite]) -> crate::ports::BatchResult {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let r = match w {
                MetaWrite::Begin(i) => self.begin(i).await.map(MetaOutput::Begun),
                MetaWrite::Commit(c) => self
                    .commit(c)
                    .await
                    .map(|r| MetaOutput::Committed(Box::new(r))),
                MetaWrite::Fail { journal_id, error } => self
                    .fail(*journal_id, error)
                    .await
                    .map(|_| MetaOutput::Done),
                MetaWrite::Progress {
                    journal_id,
                    progress,
                } => self
                    .record_progress(*journal_id, progress)
                    .await
                    .map(|_| MetaOutput::Done),
                MetaWrite::Upload(u) => self.record_upload(u).await.map(|_| MetaOutput::Done),
                MetaWrite::Parts { upload_id, parts } => self
                    .record_parts(upload_id, parts)
                    .await
                    .map(|_| MetaOutput::Done),
            };
            match r {
                Err(e) if e.retryable || e.fenced => {
                    if out.is_empty() {
                        return Err(e);
                    }
                    return Ok(out);
                }
                r => out.push(r),
            }
        }
        Ok(out)
    }

    /// [`MetaWrite::Begin`] alone.
    pub async fn begin(&self, intent: &NewIntent) -> Result<IntentOutcome, MetaError> {
        self.injected_write_failure()?;
        let mut s = self.state.lock().unwrap();
        self.fenced(&s)?;
        let fp = intent.fingerprint.clone();
        let s = &mut *s;
        if let Some(e) = s
            .journal
            .iter_mut()
            .find(|e| e.mount == intent.mount && e.idempotency_key == intent.idempotency_key)
        {
            let id = e.id;
            if e.state == JournalState::Pending && s.tokens.get(&id) == Some(&intent.token) {
                return Ok(IntentOutcome::Started { journal_id: id });
            }
            if e.state == JournalState::Failed && e.fingerprint == fp {
                e.state = JournalState::Pending;
                e.attempts += 1;
                e.error = None;
                // As the Postgres store: a move that deleted its source, or had copied, keeps
                // that step, the rest start over.
                s.tokens.insert(id, intent.token);
                if let (
                    OpRequest::Move(_),
                    Some(kept @ (OpProgress::SourceDeleted { .. } | OpProgress::Copied { .. })),
                ) = (&e.request, &e.progress)
                {
                    return Ok(IntentOutcome::Resumed {
                        journal_id: id,
                        progress: Box::new(kept.clone()),
                    });
                }
                e.progress = intent.progress.clone();
                return Ok(IntentOutcome::Started { journal_id: id });
            }
            return Ok(IntentOutcome::Existing(Box::new(e.clone())));
        }
        let id = s.journal.len() as i64 + 1;
        s.tokens.insert(id, intent.token);
        s.journal.push(JournalEntry {
            id,
            mount: intent.mount.clone(),
            idempotency_key: intent.idempotency_key.clone(),
            fingerprint: fp,
            state: JournalState::Pending,
            attempts: 1,
            request: intent.request.clone(),
            progress: intent.progress.clone(),
            result: None,
            error: None,
            idle: std::time::Duration::ZERO,
        });
        Ok(IntentOutcome::Started { journal_id: id })
    }

    async fn commit(&self, r: &CommitRecord) -> Result<OpResult, MetaError> {
        self.injected_write_failure()?;
        let mut s = self.state.lock().unwrap();
        self.fenced(&s)?;
        let idx = (r.journal_id - 1) as usize;
        let entry = s.journal.get(idx).ok_or_else(|| {
            meta_err(&format!(
                "journal {} does not exist; nothing was committed",
                r.journal_id
            ))
        })?;
        match entry.state {
            JournalState::Committed => return Ok(entry.result.clone().unwrap()),
            JournalState::Failed => {
                return Err(meta_err(&format!(
                    "journal {} was already marked failed: {}",
                    r.journal_id,
                    entry.error.clone().unwrap_or_default()
                )))
            }
            JournalState::Pending => {}
        }
        let k = (r.mount.clone(), r.path.clone());
        let current = s.nodes.get(&k).map(|n| n.generation);
        if r.condition.if_none_match && current.is_some()
            || r.condition
                .if_generation
                .is_some_and(|g| current != Some(g))
        {
            return Err(meta_err(&format!(
                "condition on '{}' no longer holds at commit (node generation {current:?})",
                r.path
            )));
        }
        if let (OpKind::Move, Some(src), Some(f)) = (r.op, &r.source, &self.fence) {
            // As the Postgres store: the move's source mount must be the writer's too; refused
            // alone, fenced.
            let held = s
                .leases
                .get(&src.mount)
                .is_some_and(|(o, _, exp)| *o == f.owner && *exp > std::time::Instant::now());
            if src.mount != f.mount && !held {
                return Err(MetaError {
                    fenced: true,
                    ..meta_err(&format!(
                        "journal {}: this executor does not hold the lease of the move's source mount '{}'",
                        r.journal_id, src.mount
                    ))
                });
            }
        }
        if let (OpKind::Move, Some(src)) = (r.op, &r.source) {
            let sk = (src.mount.clone(), src.path.clone());
            let g = s.generations.get(&sk).copied().unwrap_or(0) + 1;
            s.generations.insert(sk.clone(), g);
            s.nodes.remove(&sk);
        }
        let generation = s.generations.get(&k).copied().unwrap_or(0) + 1;
        s.generations.insert(k.clone(), generation);
        match &r.change {
            NodeChange::Upsert(m) => {
                s.nodes.insert(
                    k.clone(),
                    Node {
                        mount: r.mount.clone(),
                        path: r.path.clone(),
                        key: r.key.clone(),
                        meta: m.clone(),
                        generation,
                    },
                );
            }
            NodeChange::Remove => {
                s.nodes.remove(&k);
            }
        }
        let (result, events) = r.outcome(generation);
        for (_, event) in events {
            let id = s.outbox.len() as i64 + 1;
            s.outbox.push((OutboxEvent { id, event }, false));
        }
        // As Postgres: every open upload of the row is completed with the commit.
        for (u, st) in s.uploads.iter_mut() {
            if u.journal_id == r.journal_id && *st == "open" {
                *st = "completed";
            }
        }
        let e = &mut s.journal[idx];
        e.state = JournalState::Committed;
        e.result = Some(result.clone());
        Ok(result)
    }

    async fn fail(&self, journal_id: i64, error: &str) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        self.fenced(&s)?;
        if let Some(e) = s.journal.get_mut((journal_id - 1) as usize) {
            if e.state == JournalState::Pending {
                e.state = JournalState::Failed;
                e.error = Some(error.into());
            }
        }
        Ok(())
    }

    async fn record_progress(
        &self,
        journal_id: i64,
        progress: &OpProgress,
    ) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        self.fenced(&s)?;
        match s.journal.get_mut((journal_id - 1) as usize) {
            Some(e) if e.state == JournalState::Pending => {
                e.progress = Some(progress.clone());
                Ok(())
            }
            _ => Err(meta_err(&format!(
                "journal {journal_id} is no longer pending; its progress was not recorded"
            ))),
        }
    }

    async fn record_upload(&self, record: &UploadRecord) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        s.uploads.retain(|(u, _)| u.journal_id != record.journal_id);
        s.uploads.push((record.clone(), "open"));
        Ok(())
    }

    async fn record_parts(&self, upload_id: &str, parts: &[UploadedPart]) -> Result<(), MetaError> {
        let mut s = self.state.lock().unwrap();
        if let Some((u, _)) = s.uploads.iter_mut().find(|(u, _)| u.upload_id == upload_id) {
            for p in parts {
                u.parts.retain(|x| x.part_number != p.part_number);
                u.parts.push(p.clone());
            }
            u.parts.sort_by_key(|p| p.part_number);
        }
        Ok(())
    }
}
