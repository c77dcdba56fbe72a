//! The multipart requests of [`S3Store`]: CreateMultipartUpload, UploadPart (from memory or
//! from a file range hashed while it is read), ListParts, CompleteMultipartUpload and
//! UploadPartCopy. The `ObjectStore` implementation forwards to them.

use super::*;

impl S3Store {
    pub(super) async fn create_multipart_upload(
        &self,
        key: &str,
        content_type: Option<&str>,
        marker: &WriteMarker,
        metadata: &UserMetadata,
        part_checksums: bool,
    ) -> Result<String, StoreError> {
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_owned))
            .set_metadata(Some(object_metadata(marker, metadata)))
            .set_checksum_algorithm(
                (part_checksums && self.checksum == ChecksumPolicy::Sha256)
                    .then_some(ChecksumAlgorithm::Sha256),
            );
        let out = with_write_options!(req, self)
            .send()
            .await
            .map_err(|e| self.classify_write(e, part_checksums))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Transient,
                "CreateMultipartUpload returned no upload id",
            )
        })
    }

    pub(super) async fn upload_one_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
        sha256: Sha256Digest,
    ) -> Result<UploadedPart, StoreError> {
        let size = body.len();
        let stream = match &body {
            PartBody::Bytes(b) => ByteStream::from(b.clone()),
            // Read while sent (and read again from the start if the SDK retries the request).
            PartBody::File {
                path, offset, len, ..
            } => ByteStream::read_from()
                .path(path)
                .offset(*offset)
                .length(Length::Exact(*len))
                .buffer_size(FILE_PART_READ_BUFFER)
                .build()
                .await
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Rejected,
                        format!(
                            "part {part_number} cannot be read from {}: {e}",
                            path.display()
                        ),
                    )
                })?,
        };
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(size as i64)
            .set_checksum_sha256(
                (self.checksum == ChecksumPolicy::Sha256).then(|| Self::b64(&sha256)),
            )
            .body(stream)
            .send()
            .await
            .map_err(|e| self.classify_write(e, true))?;
        let echoed = self.checksum == ChecksumPolicy::Sha256
            && sha256_of_header(out.checksum_sha256()) == Some(sha256);
        self.parts_echoed.store(echoed, Ordering::Relaxed);
        let md5 = async {
            match &body {
                PartBody::Bytes(b) => md5_hex_of(b).await,
                PartBody::File { md5: Some(md5), .. } => hex::encode(md5),
                // Left out because the store had echoed the parts before, and this answer did
                // not: the range is read again.
                PartBody::File { md5: None, .. } => {
                    let body = body.clone();
                    match tokio::task::spawn_blocking(move || body.to_bytes().map(|b| md5_hex(&b)))
                        .await
                    {
                        Ok(Ok(hex)) => hex,
                        Ok(Err(e)) => format!("unknown (the part could not be read again: {e})"),
                        Err(e) => format!("unknown ({e})"),
                    }
                }
            }
        };
        self.check_md5_etag(&unquote(out.e_tag()), size, echoed, md5)
            .await?;
        Ok(UploadedPart {
            part_number,
            etag: Some(unquote(out.e_tag())),
            size,
            sha256: Some(sha256),
        })
    }

    pub(super) async fn list_all_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(classify)?;
            for p in out.parts() {
                parts.push(UploadedPart {
                    part_number: p.part_number().unwrap_or(0),
                    etag: p
                        .e_tag()
                        .map(|e| unquote(Some(e)))
                        .filter(|e| !e.is_empty()),
                    size: p.size().unwrap_or(0).max(0) as u64,
                    sha256: sha256_of_header(p.checksum_sha256()),
                });
            }
            marker = out.next_part_number_marker().map(str::to_owned);
            if out.is_truncated() != Some(true) || marker.is_none() {
                break;
            }
        }
        Ok(parts)
    }

    pub(super) async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        condition: &KeyCondition,
    ) -> Result<String, StoreError> {
        let mut sorted: Vec<&UploadedPart> = parts.iter().collect();
        sorted.sort_by_key(|p| p.part_number);
        let with_checksums = self.checksum == ChecksumPolicy::Sha256;
        let carried = with_checksums && parts.iter().any(|p| p.sha256.is_some());
        let completed = sorted
            .iter()
            .map(|p| {
                let sha = p.sha256.filter(|_| with_checksums).map(|d| Self::b64(&d));
                CompletedPart::builder()
                    .part_number(p.part_number)
                    .set_e_tag(p.etag.as_ref().map(|e| format!("\"{e}\"")))
                    .set_checksum_sha256(sha)
                    .build()
            })
            .collect();
        // The SDK turns a 200 answer whose body is an <Error> into an error, so a success here is
        // a real success.
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_if_none_match(condition.if_none_match.then(|| "*".to_owned()))
            .set_if_match(condition.if_match.as_ref().map(|e| format!("\"{e}\"")))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.classify_write(e, carried))?;
        Ok(unquote(out.e_tag()))
    }

    pub(super) async fn copy_one_part(
        &self,
        input: PartCopyInput,
    ) -> Result<UploadedPart, StoreError> {
        let range = format!(
            "bytes={}-{}",
            input.range.start,
            input.range.end.unwrap_or(u64::MAX)
        );
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(&input.key)
            .upload_id(&input.upload_id)
            .part_number(input.part_number)
            .copy_source(Self::copy_source(&input.source_bucket, &input.source_key))
            .copy_source_if_match(format!("\"{}\"", input.source_etag))
            .copy_source_range(range)
            .send()
            .await
            .map_err(classify)?;
        let result = out.copy_part_result();
        let size = input.range.end.map_or(0, |e| e + 1 - input.range.start);
        Ok(UploadedPart {
            part_number: input.part_number,
            etag: result
                .and_then(|r| r.e_tag())
                .map(|e| unquote(Some(e)))
                .filter(|e| !e.is_empty()),
            size,
            sha256: sha256_of_header(result.and_then(|r| r.checksum_sha256())),
        })
    }
}
