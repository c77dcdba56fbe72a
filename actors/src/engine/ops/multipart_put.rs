//! A multipart put: the multipart unit uploads (resuming a recorded upload of this journal row),
//! then HEAD proves the object: size, the ETag Complete answered, the composite checksum of the
//! parts where the store reports one, and this operation's journal id in the metadata.

use crate::digest::Sha256Digest;
use crate::engine::context::node_for;
use crate::engine::{OpContext, Outcome};
use crate::error::Error;
use crate::model::{
    JournalEntry, MultipartRequest, NodeChange, NodeMeta, ObjectMeta, OpProgress, UploadSource,
    UploadedPart, Verification,
};
use crate::multipart::{
    file_identity, CompletedUpload, ProgressSink, SourceReader, UploadHandle, UploadRequest,
};
use crate::ports::StoreErrorKind;

/// Before the intent: the put's conditions on the path.
pub(in crate::engine) async fn precheck(
    c: &OpContext,
    r: &MultipartRequest,
) -> Result<Option<OpProgress>, Error> {
    super::check_condition(c, &r.path, &r.condition).await?;
    Ok(None)
}

/// Uploads (or resumes the recorded upload of this row), completes and verifies. `reader`: the
/// stream being put, or `None` to read the request's file.
pub(in crate::engine) async fn act(
    c: &OpContext,
    journal_id: i64,
    request: &MultipartRequest,
    reader: Option<SourceReader>,
    sink: Option<ProgressSink>,
) -> Result<Outcome, Error> {
    let MultipartRequest {
        path,
        key,
        size,
        source,
        content_type,
        condition,
        metadata,
    } = request;
    // The conditions were checked by `precheck` (a new call) or `recover`, under the path's lock
    // held since (and the commit checks them again in its transaction).
    // A recorded upload of this journal row (a retained one, or one a crash interrupted) is
    // resumed rather than started again.
    let resume = c.meta.upload_of(journal_id).await?;
    let job = UploadRequest {
        mount: c.spec.name.clone(),
        path: path.clone(),
        key: key.clone(),
        journal_id,
        size: *size,
        source: source.clone(),
        reader,
        content_type: content_type.clone(),
        metadata: metadata.clone(),
        resume,
        part_size: c.spec.part_size,
        concurrency: c.spec.part_concurrency as usize,
        retain_on_failure: c.spec.retain_failed_uploads,
        complete_condition: super::complete_condition(c, path, condition.if_none_match).await?,
        sink,
        record_content: true,
        expected_sha256: None,
    };
    let done = UploadHandle::start(job, c.upload_deps()).join().await?;
    crate::failpoint::hit("after_complete").await;
    let node = verify_upload(c, key, journal_id, &done).await?;
    Ok(Outcome {
        change: NodeChange::Upsert(node),
        upload_id: Some(done.upload_id),
        source_kept: false,
    })
}

/// Proves a completed upload: size, Complete's ETag, the composite checksum if the store reports
/// one, and the journal id in the metadata if the store keeps metadata.
pub(super) async fn verify_upload(
    c: &OpContext,
    key: &str,
    journal_id: i64,
    done: &CompletedUpload,
) -> Result<NodeMeta, Error> {
    let composite = done.composite_sha256();
    let size = done.size;
    let etag = done.etag.clone();
    let (seen, verified) = c
        .verify(key, |seen: &Option<ObjectMeta>| {
            let m = seen.as_ref().ok_or("object not visible yet")?;
            if m.size != size {
                return Err(format!("size is {} bytes, expected {size}", m.size));
            }
            if !etag.is_empty() && !m.etag.is_empty() && m.etag != etag {
                return Err(format!("ETag is {}, Complete answered {etag}", m.etag));
            }
            if let Some(w) = &m.marker {
                if w.journal_id != journal_id {
                    return Err(format!(
                        "the object was written by journal {}, not {journal_id}",
                        w.journal_id
                    ));
                }
            }
            let verified = match (&m.sha256_composite, composite) {
                (Some(reported), Some((mine, n))) => {
                    if composite_matches(reported, mine, n) {
                        Verification::CompositeVerifiedByStore
                    } else {
                        return Err(format!(
                            "composite checksum is {reported}, expected {mine}-{n} (hex)"
                        ));
                    }
                }
                _ => match m.sha256 {
                    Some(s) if s == done.sha256 => Verification::Sha256VerifiedByStore,
                    // moto reports the composite checksum without its `-<parts>` suffix.
                    Some(s) if composite.is_some_and(|(c, _)| c == s) => {
                        Verification::CompositeVerifiedByStore
                    }
                    Some(s) => return Err(format!("SHA-256 is {s}, expected {}", done.sha256)),
                    None => Verification::SizeOnly,
                },
            };
            Ok((m.clone(), verified))
        })
        .await?;
    node_for(c, &seen, done.sha256, verified).await
}

/// `reported` is `<base64 of the digest of the part digests>-<parts>`; `mine` is that digest.
fn composite_matches(reported: &str, mine: Sha256Digest, parts: usize) -> bool {
    let Some((b64, n)) = reported.rsplit_once('-') else {
        return false;
    };
    n.parse::<usize>().ok() == Some(parts) && base64_decode(b64).as_deref() == Some(mine.as_bytes())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Settles a pending multipart put. A completed object carrying this row's marker is committed
/// before anything else is decided (its content proven by the size and SHA-256 recorded before
/// Complete, or by the unchanged file hashed again). Otherwise the upload of an unchanged file is
/// resumed; a stream cannot be read again, nor a changed file, so their upload is ended — after
/// the object was looked for within the verification window when Complete may have been sent.
pub(in crate::engine) async fn recover(
    c: &OpContext,
    entry: &JournalEntry,
    request: &MultipartRequest,
    progress: Option<ProgressSink>,
) -> Result<Outcome, Error> {
    if let Some(outcome) = completed_earlier(c, entry, request).await? {
        return Ok(outcome);
    }
    let completing = matches!(entry.progress, Some(OpProgress::Completing { .. }));
    let source = &request.source;
    let resumable = match source {
        UploadSource::File {
            path,
            size,
            mtime_ns,
        } => match file_identity(path).await {
            Ok((s, m)) if s == *size && m == *mtime_ns => Ok(()),
            Ok((s, m)) => Err(format!(
                "size {s} / mtime {m} ns now, {size} / {mtime_ns} ns at the start"
            )),
            Err(e) => Err(e),
        }
        .map_err(|reason| Error::SourceChanged {
            source_path: path.clone(),
            reason,
        }),
        UploadSource::Stream => Err(Error::SourceChanged {
            source_path: "<stream>".into(),
            reason: "a stream cannot be re-read after the process that read it died".into(),
        }),
    };
    match resumable {
        Ok(()) => {
            super::check_condition(c, &request.path, &request.condition).await?;
            match act(c, entry.id, request, None, progress.clone()).await {
                // The upload id is gone while the object does not show yet: the earlier owner's
                // CompleteMultipartUpload may still be applying (a store keeps working on a
                // request whose client died; s3s-fs forgets the upload id before it writes the
                // object, and answers AccessDenied for a forgotten id). Before this counts as a
                // failure, the object is looked for again within the verification window.
                Err(e @ Error::Storage { .. }) if upload_gone(&e) => {
                    if let Some(outcome) = appears_within_window(c, entry, request).await? {
                        return Ok(outcome);
                    }
                    // The store lost the upload and no object appeared: a Complete cut off
                    // half-applied when its client died (s3s-fs forgets the id, then consumes
                    // the parts as it joins them, and drops the work with the connection). The
                    // parts are gone; the file is unchanged, so it is uploaded again under a new
                    // upload id, and proven like any other.
                    if let Some(rec) = c.meta.upload_of(entry.id).await? {
                        log::warn!(
                            "mount {}: journal {}: upload {} is gone from the store ({e}) and no \
                             object appeared within {:?}; uploading the unchanged file again",
                            c.spec.name,
                            entry.id,
                            rec.upload_id,
                            c.spec.verify_window
                        );
                        c.meta.mark_upload_aborted(&rec.upload_id).await?;
                    }
                    act(c, entry.id, request, None, progress).await
                }
                r => r,
            }
        }
        Err(e) => {
            // Complete may have been sent (its answer lost, or the object not visible yet on an
            // eventually consistent store): the object is looked for within the window before
            // the upload is ended.
            if completing {
                if let Some(outcome) = appears_within_window(c, entry, request).await? {
                    return Ok(outcome);
                }
                // The store may still serve an older state: looked at again at the next pass
                // until the row is older than the consistency horizon.
                if entry.idle < c.consistency_horizon {
                    return Err(super::not_settled_yet(
                        c,
                        &request.key,
                        "no object with this row's marker yet",
                    ));
                }
            }
            if let Some(rec) = c.meta.upload_of(entry.id).await? {
                log::warn!(
                    "mount {}: journal {}: upload {} cannot be resumed ({e}); aborting it",
                    c.spec.name,
                    entry.id,
                    rec.upload_id
                );
                let _ = c.store.abort_upload(&rec.key, &rec.upload_id).await;
                c.meta.mark_upload_aborted(&rec.upload_id).await?;
            }
            Err(e)
        }
    }
}

/// [`completed_earlier`], looked for until the mount's verification window ends.
async fn appears_within_window(
    c: &OpContext,
    entry: &JournalEntry,
    request: &MultipartRequest,
) -> Result<Option<Outcome>, Error> {
    let deadline = std::time::Instant::now() + c.spec.verify_window;
    loop {
        if let Some(outcome) = completed_earlier(c, entry, request).await? {
            return Ok(Some(outcome));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A resumed upload failing because the store no longer knows its id (`NoSuchUpload`, or
/// AccessDenied from stores that forget completed upload ids).
fn upload_gone(e: &Error) -> bool {
    matches!(e, Error::Storage { source, .. }
        if matches!(source.kind, StoreErrorKind::NotFound | StoreErrorKind::AccessDenied))
}

/// A crash (or a lost answer, or a verification cut short) after CompleteMultipartUpload: the
/// object exists, carries this journal row's id and has the upload's size. Its content is the
/// one recorded before Complete (`OpProgress::Completing`), or, for a row without that record,
/// the file hashed again (read locally, not sent); the object is verified and committed instead
/// of uploaded again.
async fn completed_earlier(
    c: &OpContext,
    entry: &JournalEntry,
    request: &MultipartRequest,
) -> Result<Option<Outcome>, Error> {
    let recorded = match &entry.progress {
        Some(OpProgress::Completing { size, sha256 }) => Some((*size, *sha256)),
        _ => None,
    };
    let size = match (&recorded, &request.source) {
        (Some((size, _)), _) => *size,
        // A row recorded without the step: the file, if unchanged, is its proof.
        (
            None,
            UploadSource::File {
                path,
                size,
                mtime_ns,
            },
        ) => match file_identity(path).await {
            Ok((s, m)) if s == *size && m == *mtime_ns => *size,
            _ => return Ok(None),
        },
        (None, UploadSource::Stream) => return Ok(None),
    };
    let key = &request.key;
    let seen = c.store.head(key).await?;
    let ours = seen.as_ref().is_some_and(|m| {
        m.size == size && m.marker.as_ref().is_some_and(|w| w.journal_id == entry.id)
    });
    if !ours {
        return Ok(None);
    }
    let record = c.meta.upload_of(entry.id).await?;
    let (sha256, parts) = match (recorded, &request.source) {
        // The parts as recorded (with the checksums they were sent with) prove a composite
        // checksum the store may report.
        (Some((_, sha256)), _) => (sha256, record.as_ref().map(|r| r.parts.clone())),
        (None, UploadSource::File { path, .. }) => {
            // The file is read again (locally) for its SHA-256 and, cut at the upload's part
            // size, for each part's: the composite checksum the store may report is then
            // checked, whatever parts the record holds (a part recorded from a listing has no
            // checksum).
            let (sha256, part_digests) = hash_file(path, record.as_ref().map(|r| r.part_size))
                .await
                .map_err(|message| Error::Source {
                    io: None,
                    what: path.clone(),
                    message,
                })?;
            let parts = record.as_ref().map(|r| {
                if part_digests.is_empty() {
                    return r.parts.clone();
                }
                part_digests
                    .into_iter()
                    .enumerate()
                    .map(|(i, (len, digest))| {
                        let number = i as i32 + 1;
                        UploadedPart {
                            part_number: number,
                            etag: r
                                .parts
                                .iter()
                                .find(|p| p.part_number == number)
                                .and_then(|p| p.etag.clone()),
                            size: len,
                            sha256: Some(digest),
                        }
                    })
                    .collect()
            });
            (sha256, parts)
        }
        (None, UploadSource::Stream) => return Ok(None),
    };
    let done = CompletedUpload {
        upload_id: record
            .as_ref()
            .map(|r| r.upload_id.clone())
            .unwrap_or_default(),
        parts: parts.unwrap_or_default(),
        size,
        sha256,
        etag: String::new(),
    };
    log::info!(
        "mount {}: journal {}: the upload was completed by an earlier run; verifying it without sending it again",
        c.spec.name,
        entry.id
    );
    let node = verify_upload(c, key, entry.id, &done).await?;
    Ok(Some(Outcome {
        change: NodeChange::Upsert(node),
        upload_id: None,
        source_kept: false,
    }))
}

/// SHA-256 of the file and, with a part size, of each part: (length, digest) per part.
async fn hash_file(
    path: &str,
    part_size: Option<u64>,
) -> Result<(Sha256Digest, Vec<(u64, Sha256Digest)>), String> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut whole = Sha256::new();
    let mut part = Sha256::new();
    let (mut in_part, mut parts) = (0u64, Vec::new());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            if in_part > 0 && part_size.is_some() {
                parts.push((in_part, Sha256Digest::finish(part)));
            }
            return Ok((Sha256Digest::finish(whole), parts));
        }
        whole.update(&buf[..n]);
        let Some(ps) = part_size.filter(|p| *p > 0) else {
            continue;
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let take = ((ps - in_part) as usize).min(chunk.len());
            part.update(&chunk[..take]);
            in_part += take as u64;
            chunk = &chunk[take..];
            if in_part == ps {
                parts.push((in_part, Sha256Digest::finish(std::mem::take(&mut part))));
                in_part = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_checksum_is_compared_in_base64() {
        let d = Sha256Digest::of(b"parts");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(d.as_bytes());
        assert!(composite_matches(&format!("{b64}-3"), d, 3));
        assert!(!composite_matches(&format!("{b64}-4"), d, 3));
        assert!(!composite_matches("AAAA-3", d, 3));
    }
}
