//! Reads: open (GET), stat and list, answered by futures that need none of the actor's state
//! beyond the mount's store layer and metadata.

use super::*;

impl Handler<OpenObject> for MountSupervisor {
    type Result = ResponseFuture<Result<(Option<Node>, ObjectBody), Error>>;

    fn handle(&mut self, msg: OpenObject, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(Err(e)) = msg.range.as_ref().map(validate::range) {
            return refuse(e);
        }
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let spec = self.spec.clone();
        let store = self.store.clone();
        let meta = self.meta.clone();
        Box::pin(async move {
            let path = msg.path.as_str().to_owned();
            let node = if msg.with_node {
                meta.node(&spec.name, &path).await?
            } else {
                None
            };
            let body = store
                .get(&key, msg.range, msg.if_match.as_deref())
                .await
                .map_err(|e| match e {
                    Error::Storage { source, .. } if source.kind == StoreErrorKind::NotFound => {
                        Error::NotFound {
                            mount: spec.name.clone(),
                            path: path.clone(),
                        }
                    }
                    e => e,
                })?;
            Ok((node, body))
        })
    }
}

impl Handler<StatObject> for MountSupervisor {
    type Result = ResponseFuture<Result<Stat, Error>>;

    fn handle(&mut self, msg: StatObject, _ctx: &mut Self::Context) -> Self::Result {
        let key = match self.key_of(&msg.path) {
            Ok(k) => k,
            Err(e) => return refuse(e),
        };
        let spec = self.spec.clone();
        let store = self.store.clone();
        let meta = self.meta.clone();
        Box::pin(async move {
            let path = msg.path.as_str().to_owned();
            let object = store.head(&key).await?.ok_or_else(|| Error::NotFound {
                mount: spec.name.clone(),
                path: path.clone(),
            })?;
            let node = meta.node(&spec.name, &path).await?;
            Ok(Stat { path, object, node })
        })
    }
}

impl Handler<ListObjects> for MountSupervisor {
    type Result = ResponseFuture<Result<ListPage, Error>>;

    fn handle(&mut self, msg: ListObjects, _ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = validate::list_page(msg.token.as_deref(), msg.max_keys) {
            return refuse(e);
        }
        let spec = self.spec.clone();
        let store = self.store.clone();
        Box::pin(async move {
            let prefix = spec
                .keys
                .list_prefix(&msg.dir)
                .map_err(|e| Error::invalid_path(msg.dir.as_str(), e))?;
            let delimiter = msg.delimited.then_some("/");
            let raw = store
                .list(&prefix, delimiter, msg.token.as_deref(), msg.max_keys)
                .await?;
            let mut page = ListPage {
                next_token: raw.next_token,
                ..ListPage::default()
            };
            for o in raw.objects {
                match spec.keys.path_for(&o.key) {
                    Ok(path) => page.entries.push(ListEntry {
                        path: path.as_str().to_owned(),
                        key: o.key,
                        size: o.size,
                        etag: o.etag,
                        storage_class: o.storage_class,
                        last_modified: o.last_modified,
                    }),
                    Err(u) => page.unmapped.push(u),
                }
            }
            for p in raw.common_prefixes {
                match spec.keys.dir_for(&p) {
                    Ok(d) => page.directories.push(d.as_str().to_owned()),
                    Err(u) => page.unmapped.push(u),
                }
            }
            Ok(page)
        })
    }
}
