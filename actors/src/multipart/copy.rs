//! A server-side multipart copy: the source is copied range by range with UploadPartCopy, parts
//! concurrently (bounded), each part recorded like an upload part, so an interrupted large copy
//! resumes with the parts already copied.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::stream::{FuturesUnordered, StreamExt};

use super::{complete, open_upload, part_size_for, CompletedUpload, UploadDeps, UploadTarget};
use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::model::{UploadRecord, UploadedPart, WriteMarker};
use crate::ports::{ByteRange, PartCopyInput};
use crate::store::S3Op;

/// A multipart copy of a whole source object.
#[derive(Debug, Clone)]
pub struct PartCopyRequest {
    /// Destination mount.
    pub mount: String,
    /// Destination path (errors).
    pub path: String,
    /// Destination key.
    pub key: String,
    /// What CompleteMultipartUpload is conditioned on.
    pub complete_condition: super::CompleteCondition,
    /// Journal row.
    pub journal_id: i64,
    /// Source bucket.
    pub source_bucket: String,
    /// Source key.
    pub source_key: String,
    /// Copy only while the source has this ETag.
    pub source_etag: String,
    /// Source size.
    pub size: u64,
    /// SHA-256 of the source (written into the destination's marker).
    pub sha256: Sha256Digest,
    /// The destination mount's part size (enlarged to stay within 10,000 parts).
    pub part_size: u64,
    /// Parts in flight.
    pub concurrency: usize,
    /// A recorded copy to resume.
    pub resume: Option<UploadRecord>,
    /// User metadata of the destination (the source's).
    pub metadata: crate::model::UserMetadata,
}

/// Copies every part and completes the upload.
pub async fn copy_parts(req: PartCopyRequest, deps: &UploadDeps) -> Result<CompletedUpload, Error> {
    // Parts copied from another version of the source (the path written between two runs of
    // this copy, which pinned it again) are not mixed with this run's: that upload is given up
    // and the copy starts over. (A record without a source version predates V15: the same.)
    let resume = match req.resume.clone() {
        Some(rec) if rec.source_etag.as_deref() != Some(req.source_etag.as_str()) => {
            log::info!(
                "mount {}: upload {} of '{}' copied its parts from source version {:?}, now {}; starting over",
                req.mount,
                rec.upload_id,
                req.key,
                rec.source_etag,
                req.source_etag
            );
            // Given up for good before a new one starts (one open upload per journal row): an
            // abort that fails fails this run, retryable, with the old upload still recorded.
            deps.store.abort_upload(&req.key, &rec.upload_id).await?;
            deps.recorder.upload_ended(&rec.upload_id).await?;
            None
        }
        r => r,
    };
    let part_size = match &resume {
        Some(r) => r.part_size,
        None => part_size_for(req.part_size, Some(req.size))?,
    };
    let marker = WriteMarker {
        journal_id: req.journal_id,
        sha256: Some(req.sha256),
    };
    let target = UploadTarget {
        mount: &req.mount,
        key: &req.key,
        journal_id: req.journal_id,
        content_type: None,
        metadata: &req.metadata,
        total_size: Some(req.size),
        part_size,
        marker: &marker,
        part_checksums: false,
        source_etag: Some(&req.source_etag),
    };
    let (upload_id, mut done) = open_upload(&target, resume, deps).await?;
    let parts_total = req.size.div_ceil(part_size).max(1) as i32;
    let result = copy_missing(&req, deps, &upload_id, part_size, parts_total, &mut done).await;
    if let Err(e) = result {
        if !e.is_retryable() {
            super::abort_upload(deps, &req.mount, &req.key, &upload_id).await;
        }
        return Err(e);
    }
    let parts: Vec<UploadedPart> = done.into_values().collect();
    let etag = complete(
        deps,
        &req.mount,
        &req.path,
        &req.key,
        &upload_id,
        &parts,
        req.journal_id,
        req.size,
        &req.complete_condition,
    )
    .await?;
    Ok(CompletedUpload {
        upload_id,
        parts,
        size: req.size,
        sha256: req.sha256,
        etag,
    })
}

async fn copy_missing(
    req: &PartCopyRequest,
    deps: &UploadDeps,
    upload_id: &str,
    part_size: u64,
    parts_total: i32,
    done: &mut BTreeMap<i32, UploadedPart>,
) -> Result<(), Error> {
    let mut in_flight = FuturesUnordered::new();
    for n in 1..=parts_total {
        let start = (n as u64 - 1) * part_size;
        let end = (start + part_size).min(req.size).saturating_sub(1);
        if let Some(p) = done.get(&n) {
            if p.size == end + 1 - start {
                deps.store
                    .counters()
                    .parts_resumed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        while in_flight.len() >= req.concurrency.max(1) {
            let part: UploadedPart = in_flight.next().await.expect("non-empty")?;
            done.insert(part.part_number, part);
        }
        let input = PartCopyInput {
            source_bucket: req.source_bucket.clone(),
            source_key: req.source_key.clone(),
            source_etag: req.source_etag.clone(),
            range: ByteRange {
                start,
                end: Some(end),
            },
            key: req.key.clone(),
            upload_id: upload_id.to_owned(),
            part_number: n,
        };
        in_flight.push(async move {
            let part = deps
                .store
                .call(S3Op::UploadPartCopy, &req.key, || {
                    deps.store
                        .counters()
                        .copy_requests
                        .fetch_add(1, Ordering::Relaxed);
                    deps.store.raw().upload_part_copy(input.clone())
                })
                .await?;
            // The upload was created without checksums: the part is completed by ETag, and its
            // content is proven by the destination's size and metadata after Complete.
            let part = UploadedPart {
                sha256: None,
                ..part
            };
            deps.recorder.part_done(upload_id, part.clone()).await?;
            Ok::<UploadedPart, Error>(part)
        });
    }
    while let Some(part) = in_flight.next().await {
        let part = part?;
        done.insert(part.part_number, part);
    }
    Ok(())
}
