//! Mutating calls: validation of each command, joining a call with the same idempotency key to
//! the running one, and ordering (the paths' places in their queues taken on arrival), then the
//! operation's run through the engine.

use super::*;

impl MountSupervisor {
    /// The paths an operation holds: its own, and its source's for a copy / move.
    pub(super) fn lock_keys(&self, request: &OpRequest) -> Vec<PathKey> {
        request.paths(&self.spec.name)
    }

    pub(super) fn key_of(&self, path: &FsPath) -> Result<String, Error> {
        self.spec
            .keys
            .key_for(path)
            .map_err(|e| Error::invalid_path(path.as_str(), e))
    }

    pub(super) fn submit(
        &mut self,
        idempotency_key: Option<String>,
        operation: Operation,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Reply> {
        self.submit_in_place(idempotency_key, operation, None, ctx)
    }

    /// `submit`, for a call that already holds its place in its paths' queues (`place`), or takes
    /// it now.
    fn submit_in_place(
        &mut self,
        idempotency_key: Option<String>,
        operation: Operation,
        place: Option<Place>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Reply> {
        if self.retired {
            return refuse(Error::Shutdown);
        }
        if let Err(e) = self.ownership() {
            return refuse(e);
        }
        let key = match idempotency_key {
            Some(k) => match crate::validate::idempotency_key(&k) {
                Ok(()) => k,
                Err(e) => return refuse(e),
            },
            None => Uuid::new_v4().to_string(),
        };
        // Computed once per request: for joining a running call here, and for the journal.
        let request = operation.request();
        let fingerprint = request.fingerprint();
        let mut operation = operation;
        // The caller's progress sink follows the operation, whichever run carries it.
        let caller_sink = operation.progress_sink().and_then(Option::take);
        let (tx, rx) = oneshot::channel();
        if let Some(run) = self.running.get_mut(&key) {
            // Same key while the first call runs: join it, or refuse if the parameters differ.
            if run.fingerprint != fingerprint {
                return refuse(Error::IdempotencyConflict {
                    mount: self.spec.name.clone(),
                    key,
                });
            }
            if let Some(sink) = &caller_sink {
                run.progress.subscribe(sink.clone());
            }
            if run.recovery {
                if let Some(slot) = operation.progress_sink() {
                    *slot = caller_sink;
                }
                // Its place in the paths' queues is taken now, in arrival order, behind the
                // recovery: a later call on the path does not overtake it.
                let place: Place = Box::pin(self.locks.acquire_all(self.lock_keys(&request)));
                if let Some(run) = self.running.get_mut(&key) {
                    run.followers.push((operation, place, tx));
                }
            } else {
                run.waiters.push(tx);
            }
        } else {
            let progress = ProgressHub::default();
            if let Some(sink) = caller_sink {
                progress.subscribe(sink);
            }
            if let Some(sink) = operation.progress_sink() {
                *sink = Some(progress.sink());
            }
            self.running.insert(
                key.clone(),
                Running {
                    fingerprint: fingerprint.clone(),
                    waiters: vec![tx],
                    progress,
                    followers: Vec::new(),
                    recovery: false,
                },
            );
            // The place in the paths' queues is taken now, in arrival order (or was, on arrival).
            let locked: Place = match place {
                Some(place) => place,
                None => Box::pin(self.locks.acquire_all(self.lock_keys(&request))),
            };
            match self.op_context() {
                None => self.finish(&key, Err(Error::Shutdown), ctx),
                Some(c) => {
                    let k = key.clone();
                    let fut = async move {
                        let _guards = locked.await;
                        run_operation(c, k, operation, request, fingerprint).await
                    };
                    ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                        act.finish(&key, res, ctx);
                        act.release_if_retired_and_idle(ctx);
                    }));
                }
            }
        }
        Box::pin(async move { rx.await.unwrap_or(Err(Error::Shutdown)) })
    }

    pub(super) fn finish(&mut self, key: &str, res: Reply, ctx: &mut Context<Self>) {
        let Some(run) = self.running.remove(key) else {
            return;
        };
        for w in run.waiters {
            let _ = w.send(res.clone());
        }
        for (operation, place, tx) in run.followers {
            if res.is_ok() {
                // The recovery committed the operation this call repeats: its result (dropping
                // its place passes the paths on).
                let _ = tx.send(res.clone());
                continue;
            }
            let reply = self.submit_in_place(Some(key.to_owned()), operation, Some(place), ctx);
            ctx.spawn(
                async move {
                    let _ = tx.send(reply.await);
                }
                .into_actor(self),
            );
        }
    }
}

impl Handler<PutObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: PutObject, ctx: &mut Self::Context) -> Self::Result {
        if let Some(Err(e)) = msg.content_type.as_deref().map(validate::content_type) {
            return refuse(e);
        }
        if let Err(e) = validate::user_metadata(&msg.metadata) {
            return refuse(e);
        }
        let size = msg.body.len() as u64;
        if size > self.spec.multipart_threshold {
            return refuse(Error::TooLarge {
                size,
                limit: self.spec.multipart_threshold,
                what: "a single-request put (the mount's multipart_threshold)",
            });
        }
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let request = PutRequest {
            path: msg.path.as_str().to_owned(),
            key,
            size,
            sha256: msg.sha256,
            content_type: msg.content_type,
            condition: msg.condition,
            metadata: msg.metadata,
        };
        let body = msg.body;
        self.submit(msg.idempotency_key, Operation::Put { request, body }, ctx)
    }
}

impl Handler<PutLargeObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: PutLargeObject, ctx: &mut Self::Context) -> Self::Result {
        if let Some(Err(e)) = msg.content_type.as_deref().map(validate::content_type) {
            return refuse(e);
        }
        if let Err(e) = validate::user_metadata(&msg.metadata) {
            return refuse(e);
        }
        if let Some(Err(e)) = msg.size.map(validate::object_size) {
            return refuse(e);
        }
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        if let Err(e) = crate::multipart::part_size_for(self.spec.part_size, msg.size) {
            return refuse(e);
        }
        let request = MultipartRequest {
            path: msg.path.as_str().to_owned(),
            key,
            size: msg.size,
            source: msg.source,
            content_type: msg.content_type,
            condition: msg.condition,
            metadata: msg.metadata,
        };
        let op = Operation::Multipart {
            request,
            reader: msg.reader,
            sink: msg.progress,
        };
        self.submit(msg.idempotency_key, op, ctx)
    }
}

impl Handler<DeleteObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: DeleteObject, ctx: &mut Self::Context) -> Self::Result {
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let request = DeleteRequest {
            path: msg.path.as_str().to_owned(),
            key,
        };
        let op = Operation::Delete {
            request,
            batched: msg.batched,
        };
        self.submit(msg.idempotency_key, op, ctx)
    }
}

impl Handler<TransferObject> for MountSupervisor {
    type Result = ResponseFuture<Reply>;

    fn handle(&mut self, msg: TransferObject, ctx: &mut Self::Context) -> Self::Result {
        if !matches!(msg.op, OpKind::Copy | OpKind::Move) {
            return refuse(Error::InvalidRequest {
                field: "op",
                reason: format!("'{}' is not a copy or a move", msg.op.as_str()),
            });
        }
        if !msg.source_mount.spec().enabled {
            return refuse(Error::MountDisabled {
                mount: msg.source_mount.spec().name.clone(),
            });
        }
        let t = match validate_transfer(
            msg.op,
            &self.spec,
            msg.source_mount.spec(),
            &msg.source_path,
            &msg.path,
            msg.condition,
        ) {
            Ok(t) => t,
            Err(e) => return refuse(e),
        };
        let source = msg.source_mount;
        let op = match msg.op {
            OpKind::Move => Operation::Move { request: t, source },
            _ => Operation::Copy { request: t, source },
        };
        self.submit(msg.idempotency_key, op, ctx)
    }
}
