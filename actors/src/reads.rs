//! Reads: open (GET), stat and list. They need none of a supervisor's state (no lock, no lease,
//! no journal row), only the mount's store layer and Postgres, so the executor runs them straight
//! on its arbiter instead of queueing them in the supervisor's mailbox behind the writes.
//! A passive executor (one that never takes the lease) serves them the same way.

use std::sync::Arc;

use crate::error::Error;
use crate::model::{ListEntry, ListPage, Node, Stat};
use crate::path::{DirPath, FsPath};
use crate::ports::{ByteRange, MetaStore, ObjectBody, StoreErrorKind};
use crate::store::MountStore;
use crate::validate;

/// What an open asks for.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// Path.
    pub path: FsPath,
    /// Byte range.
    pub range: Option<ByteRange>,
    /// Read only if the object still has this ETag.
    pub if_match: Option<String>,
    /// Read the node from Postgres too (`None` in the answer otherwise): a read that checks the
    /// whole object's hash needs it; the ranges of a download that looked it up once do not.
    pub with_node: bool,
}

/// What a list asks for: one page of a directory.
#[derive(Debug, Clone)]
pub struct ListRequest {
    /// Directory to list (root when empty).
    pub dir: DirPath,
    /// `true`: one level, with sub-directories; `false`: everything below.
    pub delimited: bool,
    /// Token from the previous page.
    pub token: Option<String>,
    /// Page size (store default when `None`, S3 caps at 1000).
    pub max_keys: Option<i32>,
}

fn key_of(store: &MountStore, path: &FsPath) -> Result<String, Error> {
    store
        .spec()
        .keys
        .key_for(path)
        .map_err(|e| Error::invalid_path(path.as_str(), e))
}

fn not_found(store: &MountStore, path: &str) -> Error {
    Error::NotFound {
        mount: store.mount().to_owned(),
        path: path.to_owned(),
    }
}

/// Opens an object: the node recorded for it (when asked for) and a streaming body.
pub async fn open(
    store: MountStore,
    meta: Arc<dyn MetaStore>,
    req: OpenRequest,
) -> Result<(Option<Node>, ObjectBody), Error> {
    if let Some(r) = &req.range {
        validate::range(r)?;
    }
    let key = key_of(&store, &req.path)?;
    let path = req.path.as_str();
    let node = if req.with_node {
        meta.node(store.mount(), path).await?
    } else {
        None
    };
    let body = store
        .get(&key, req.range, req.if_match.as_deref())
        .await
        .map_err(|e| match e {
            Error::Storage { source, .. } if source.kind == StoreErrorKind::NotFound => {
                not_found(&store, path)
            }
            e => e,
        })?;
    Ok((node, body))
}

/// What the store holds at a path (HEAD), and what Postgres records for it.
pub async fn stat(
    store: MountStore,
    meta: Arc<dyn MetaStore>,
    path: FsPath,
) -> Result<Stat, Error> {
    let key = key_of(&store, &path)?;
    let path = path.as_str().to_owned();
    let object = store
        .head(&key)
        .await?
        .ok_or_else(|| not_found(&store, &path))?;
    let node = meta.node(store.mount(), &path).await?;
    Ok(Stat { path, object, node })
}

/// One page of a directory listing; keys that do not map to a path are reported, not fatal.
pub async fn list(store: MountStore, req: ListRequest) -> Result<ListPage, Error> {
    validate::list_page(req.token.as_deref(), req.max_keys)?;
    let spec = store.spec().clone();
    let prefix = spec
        .keys
        .list_prefix(&req.dir)
        .map_err(|e| Error::invalid_path(req.dir.as_str(), e))?;
    let delimiter = req.delimited.then_some("/");
    let raw = store
        .list(&prefix, delimiter, req.token.as_deref(), req.max_keys)
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
}
