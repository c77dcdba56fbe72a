//! The parts of an upload: read in order, at most `concurrency` in flight, each sent (with its
//! retries) and recorded before its slot is freed.

use super::*;

/// Reads and uploads every part; returns the parts, the size and the SHA-256 of the whole object.
pub(crate) async fn upload_parts(
    deps: &UploadDeps,
    job: &UploadRequest,
    reader: &mut SourceReader,
    upload_id: &str,
    part_size: u64,
    mut done: BTreeMap<i32, UploadedPart>,
    tracker: &Arc<Tracker>,
) -> Result<(Vec<UploadedPart>, u64, Sha256Digest), Error> {
    let concurrency = job.concurrency.max(1);
    let what = source_name(&job.source);
    let file = match &job.source {
        UploadSource::File { path, .. } => Some(std::path::PathBuf::from(path)),
        UploadSource::Stream => None,
    };
    let mut hasher = Some(Sha256::new());
    let mut buffers = file_part::HashBuffers::new();
    let mut in_flight = FuturesUnordered::new();
    let mut size = 0u64;
    let mut part_number = 0i32;
    loop {
        // Wait for a free slot before reading: memory stays at part size × parts in flight.
        while in_flight.len() >= concurrency {
            let part: UploadedPart = in_flight.next().await.expect("non-empty")?;
            done.insert(part.part_number, part);
        }
        // The next part is read and hashed while the parts in flight keep uploading: they are
        // polled meanwhile, and the hashing runs on a blocking thread, not on the actor's. A
        // file's part is hashed from the file and later sent from it (no part-sized buffer); a
        // stream's is read into a buffer.
        let offset = size;
        let (buf, h, part_sha) = {
            let next = async {
                let mut h = hasher
                    .take()
                    .expect("the hasher is put back after each part");
                let joined = |e: tokio::task::JoinError| Error::Source {
                    io: None,
                    what: what.clone(),
                    message: format!("hashing a part: {e}"),
                };
                if let Some(path) = &file {
                    let p = path.clone();
                    let mut pool = std::mem::take(&mut buffers);
                    // Asked before each part: once a part's answer showed that the store
                    // verifies and echoes the checksums, the MD5 is left out.
                    let want_md5 = deps.store.raw().wants_part_md5();
                    let (h, pool, hashed) = tokio::task::spawn_blocking(move || {
                        let r = file_part::hash_range(
                            &p, offset, part_size, &mut h, &mut pool, want_md5,
                        );
                        (h, pool, r)
                    })
                    .await
                    .map_err(joined)?;
                    buffers = pool;
                    let r = hashed.map_err(|e| Error::io(what.clone(), e))?;
                    let body = PartBody::File {
                        path: path.clone(),
                        offset,
                        len: r.len,
                        md5: r.md5,
                    };
                    return Ok::<_, Error>((body, h, r.sha256));
                }
                let buf = read_part(reader, part_size, &what).await?;
                // The whole object's SHA-256 and the part's over the same buffer, on two threads.
                let (buf, h, part_sha) = tokio::task::spawn_blocking(move || {
                    let part_sha = std::thread::scope(|s| {
                        let part = s.spawn(|| Sha256Digest::of(&buf));
                        h.update(&buf);
                        part.join()
                    });
                    (buf, h, part_sha)
                })
                .await
                .map_err(joined)?;
                let part_sha = part_sha.map_err(|_| Error::Source {
                    io: None,
                    what: what.clone(),
                    message: "hashing a part: the hashing thread panicked".into(),
                })?;
                Ok::<_, Error>((PartBody::Bytes(buf), h, part_sha))
            };
            tokio::pin!(next);
            loop {
                tokio::select! {
                    read = &mut next => break read?,
                    Some(part) = in_flight.next(), if !in_flight.is_empty() => {
                        let part: UploadedPart = part?;
                        done.insert(part.part_number, part);
                    }
                }
            }
        };
        hasher = Some(h);
        if buf.is_empty() && part_number > 0 {
            break;
        }
        part_number += 1;
        if part_number as u64 > MAX_PARTS {
            return Err(Error::TooLarge {
                size: size + buf.len(),
                limit: MAX_PARTS * part_size,
                what: "an upload of unknown size at this part size",
            });
        }
        let last = buf.len() < part_size;
        size += buf.len();
        if let Some(prev) = done.get(&part_number) {
            let same = prev.size == buf.len() && prev.sha256.is_none_or(|s| s == part_sha);
            if !same {
                return Err(Error::SourceChanged {
                    source_path: what.clone(),
                    reason: format!("part {part_number} differs from the part uploaded before"),
                });
            }
            // Counted as done when the upload started.
            deps.store
                .counters()
                .parts_resumed
                .fetch_add(1, Ordering::Relaxed);
        } else {
            in_flight.push(upload_one(
                deps.clone(),
                job.mount.clone(),
                job.key.clone(),
                upload_id.to_owned(),
                part_number,
                buf,
                part_sha,
                tracker.clone(),
            ));
        }
        if last {
            break;
        }
    }
    while let Some(part) = in_flight.next().await {
        let part = part?;
        done.insert(part.part_number, part);
    }
    Ok((
        done.into_values().collect(),
        size,
        Sha256Digest::finish(hasher.expect("the hasher is put back after each part")),
    ))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn upload_one(
    deps: UploadDeps,
    mount: String,
    key: String,
    upload_id: String,
    part_number: i32,
    body: PartBody,
    sha256: Sha256Digest,
    tracker: Arc<Tracker>,
) -> Result<UploadedPart, Error> {
    let n = body.len();
    let started = Instant::now();
    let counters = deps.store.counters().clone();
    // A retry logs the key; the part's number is in the error of the last attempt.
    let part = deps
        .store
        .call(S3Op::UploadPart, &key, || {
            counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
            tracker.update(|p| p.bytes_sent += n);
            deps.store
                .raw()
                .upload_part(&key, &upload_id, part_number, body.clone(), sha256)
        })
        .await?;
    metrics::histogram!("filestore_s3_part_upload_seconds", "mount" => mount.clone())
        .record(started.elapsed().as_secs_f64());
    // The slot is freed only once the part is recorded: a crash loses at most the parts in flight.
    deps.recorder.part_done(&upload_id, part.clone()).await?;
    counters.parts_uploaded.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("filestore_s3_upload_bytes_total", "mount" => mount.clone()).increment(n);
    metrics::counter!("filestore_s3_upload_parts_total", "mount" => mount).increment(1);
    tracker.update(|p| {
        p.bytes_done += n;
        p.parts_done += 1;
    });
    Ok(part)
}
