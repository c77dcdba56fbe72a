//! One module per operation, each owning its steps: `precheck` (before the intent), `act` (act
//! and verify) and `recover` (a pending row of an earlier run); the engine dispatches to them.
//! This module holds the checks several operations share.

pub(super) mod copy;
pub(super) mod delete;
pub(super) mod multipart_put;
pub(super) mod mv;
pub(super) mod put;

use super::OpContext;
use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::model::{LeaseState, NodeMeta, ObjectMeta, Verification, WriteCondition};
use crate::mount::{ChecksumPolicy, SettingsPolicy};
use crate::ports::{StoreError, StoreErrorKind};
use crate::store::{MountStore, S3Op};

pub(crate) use copy::validate_transfer;

/// Whether a write's answer proves the object it wrote, once the mount's verify policy trusts
/// answers of its kind: the store reports the SHA-256 it computed (or checked) of the content
/// and it is `sha256`, and the answer carries every setting the strict policy checks (it reports
/// SSE and the KMS key, not the storage class: a strict mount that asks for a storage class
/// other than STANDARD is proven by HEAD).
fn proven_by_answer(c: &OpContext, answered: &ObjectMeta, sha256: Sha256Digest) -> bool {
    c.spec.checksum == ChecksumPolicy::Sha256
        && answered.sha256 == Some(sha256)
        && !answered.etag.is_empty()
        && (c.spec.settings_policy == SettingsPolicy::Lenient
            || c.spec
                .storage_class
                .as_deref()
                .is_none_or(|s| s == "STANDARD"))
}

/// The source mount of a copy / move being recovered: this one, or another this executor serves.
fn source_store(c: &OpContext, mount: &str) -> Result<MountStore, Error> {
    if mount == c.spec.name {
        return Ok(c.store.clone());
    }
    c.mounts
        .as_ref()
        .and_then(|d| d.mount(mount))
        .ok_or_else(|| Error::UnknownMount {
            mount: mount.to_owned(),
        })
}

/// A move removes its source's node in the same commit as it writes the destination's, which
/// only the source mount's owner may do (the commit is fenced by both leases). Across mounts, a
/// move on a host that does not hold the source mount's lease is refused before any side effect
/// (it would delete the source and never commit); the error names the owner to send it to.
pub(in crate::engine) async fn source_lease_held(c: &OpContext, mount: &str) -> Result<(), Error> {
    if mount == c.spec.name {
        return Ok(());
    }
    match c.meta.lease_for_writer(mount).await? {
        None | Some(LeaseState::Owned(_)) => Ok(()),
        Some(LeaseState::HeldBy { owner, expires_at }) => Err(Error::NotOwner {
            mount: mount.to_owned(),
            owner,
            until: expires_at,
        }),
    }
}

/// What recovery answers for a row it cannot settle yet because the store may still serve an
/// older state (no object yet, the overwritten version, the deleted object): a retryable error
/// that leaves the row pending for the next pass, until the row is older than the mount's
/// consistency horizon.
pub(in crate::engine) fn not_settled_yet(c: &OpContext, key: &str, reason: &str) -> Error {
    Error::Storage {
        op: S3Op::HeadObject,
        key: key.to_owned(),
        outcome: crate::store_error::Outcome::NotApplied,
        source: StoreError::new(
            StoreErrorKind::Transient,
            format!(
                "the store may still serve an older state ({reason}); recovery looks again until the row is {:?} old",
                c.consistency_horizon
            ),
        ),
    }
}

/// Checks a write's conditions against the destination's node (under the path's lock).
/// The ETag of the object the path's node names, when the mount's store honours the condition
/// `honoured` picks (probed once, [`OpContext::conditions`]): the write is then sent only while
/// the key still holds that object (compare-and-swap against the node). `None` without a node or
/// on a store that ignores the condition.
async fn node_etag_if_honoured(
    c: &OpContext,
    path: &str,
    honoured: impl Fn(&crate::model::StoreConditions) -> bool,
) -> Result<Option<String>, Error> {
    let Some(node) = c.meta.node(&c.spec.name, path).await? else {
        return Ok(None);
    };
    match c.conditions().await {
        Ok(k) => Ok(honoured(&k).then_some(node.meta.etag)),
        // Looked for again at the next write; this one goes unconditioned, as on a store that
        // honours nothing.
        Err(e) => {
            log::warn!(
                "mount {}: the conditions probe failed ({e}); '{path}' is written without a condition",
                c.spec.name
            );
            Ok(None)
        }
    }
}

/// What a multipart write's CompleteMultipartUpload at `path` is conditioned on, where the mount's
/// store honours it: create-only (`create_only`, the caller's condition) as `If-None-Match: *`;
/// otherwise `If-Match` the ETag of the object the path's node names (none without a node: no
/// probe runs for such a write). A failed conditions probe leaves the Complete unconditioned
/// (tried again at the next write).
async fn complete_condition(
    c: &OpContext,
    path: &str,
    create_only: bool,
) -> Result<crate::multipart::CompleteCondition, Error> {
    let first = match create_only {
        true => match c.conditions().await {
            Ok(k) => crate::ports::KeyCondition {
                if_none_match: k.complete_if_none_match,
                if_match: None,
            },
            Err(e) => {
                log::warn!(
                    "mount {}: the conditions probe failed ({e}); '{path}' is completed without a condition",
                    c.spec.name
                );
                Default::default()
            }
        },
        false => crate::ports::KeyCondition {
            if_none_match: false,
            if_match: node_etag_if_honoured(c, path, |k| k.complete_if_match).await?,
        },
    };
    // Only a write conditioned at all may be refused, and the probe ran for it.
    let create_honoured =
        first.is_some() && c.conditions().await.is_ok_and(|k| k.complete_if_none_match);
    Ok(crate::multipart::CompleteCondition {
        first,
        create_honoured,
    })
}

/// The key does not hold the object its node names (a conditional write was refused): what a
/// write may be conditioned on instead, as (create-only, `If-Match` ETag). Nothing at the key
/// (the node's object is gone, e.g. by a move that failed after deleting its source): write it
/// anew, create-only. An object this executor wrote (it carries a write marker: an operation's
/// that did not end as the node, or a paused owner's late write — never acknowledged as the
/// path's content): replace that very object. An object without a marker was written by someone
/// else: `None`, the write is refused.
async fn replaceable(c: &OpContext, key: &str) -> Result<Option<(bool, Option<String>)>, Error> {
    Ok(match c.store.head(key).await? {
        // Create-only where the store honours it (it was probed before any condition was sent).
        None => Some((
            c.conditions().await.is_ok_and(|k| k.put_if_none_match),
            None,
        )),
        Some(m) if m.marker.is_some() => Some((false, Some(m.etag))),
        Some(_) => None,
    })
}

async fn check_condition(c: &OpContext, path: &str, cond: &WriteCondition) -> Result<(), Error> {
    if cond.is_none() {
        return Ok(());
    }
    let node = c.meta.node(&c.spec.name, path).await?;
    let fail = |reason: String| Error::PreconditionFailed {
        mount: c.spec.name.clone(),
        path: path.to_owned(),
        reason,
    };
    if cond.if_none_match {
        if let Some(n) = &node {
            return Err(fail(format!(
                "create-only, but the path exists (generation {})",
                n.generation
            )));
        }
    }
    if let Some(want) = cond.if_generation {
        let have = node.as_ref().map(|n| n.generation);
        if have != Some(want) {
            return Err(fail(format!(
                "expected generation {want}, found {}",
                have.map_or("no node".to_string(), |g| g.to_string())
            )));
        }
    }
    Ok(())
}

/// How far a HEAD result proves that this operation (journal `journal_id`) wrote `sha256` of
/// `size` bytes. `require_proof`: refuse a size-only match (recovery, where nothing else shows
/// that the write happened).
fn prove_content(
    seen: &Option<ObjectMeta>,
    size: u64,
    sha256: Sha256Digest,
    journal_id: i64,
    require_proof: bool,
) -> Result<Verification, String> {
    let Some(m) = seen else {
        return Err("object not visible yet".into());
    };
    if m.size != size {
        return Err(format!("size is {} bytes, expected {size}", m.size));
    }
    if let Some(store_sha) = m.sha256 {
        return if store_sha == sha256 {
            Ok(Verification::Sha256VerifiedByStore)
        } else {
            Err(format!("SHA-256 is {store_sha}, expected {sha256}"))
        };
    }
    match &m.marker {
        Some(w) if w.journal_id != journal_id => Err(format!(
            "the object was written by journal {}, not {journal_id}",
            w.journal_id
        )),
        Some(w) if w.sha256.is_some_and(|s| s != sha256) => Err(format!(
            "the object's metadata names SHA-256 {}, expected {sha256}",
            w.sha256.map(|s| s.to_hex()).unwrap_or_default()
        )),
        Some(w) if w.sha256.is_some() => Ok(Verification::Sha256FromMetadata),
        _ if require_proof => Err(
            "the store reports neither a checksum nor this operation's metadata; cannot prove the content"
                .into(),
        ),
        _ => Ok(Verification::SizeOnly),
    }
}

/// Whether `key` still holds `dest`, the destination this copy / move (journal `journal_id`)
/// verified before a step it recorded — looked at again when the operation continues from that
/// step (recovery, a failed move sent again), since anything may have written the key in between:
/// the same size and ETag as then, or this row's SHA-256 proven by the store's checksum or the
/// write marker. `Ok(node)`: the node to commit (ETag and Last-Modified as the store reports them
/// now); `Err`: what the key holds instead.
async fn still_holds(
    c: &OpContext,
    journal_id: i64,
    key: &str,
    dest: NodeMeta,
) -> Result<Result<NodeMeta, String>, Error> {
    let seen = c.store.head(key).await?;
    let proof = match &seen {
        Some(m) if m.size == dest.size && m.etag == dest.etag => Ok(dest.verified),
        _ => prove_content(&seen, dest.size, dest.sha256, journal_id, true),
    };
    Ok(match (seen, proof) {
        (Some(seen), Ok(verified)) => Ok(NodeMeta {
            etag: seen.etag,
            last_modified: seen.last_modified,
            verified,
            ..dest
        }),
        (None, _) => Err("the object is gone".into()),
        (_, Err(reason)) => Err(reason),
    })
}
