//! S3 adapter: the [`ObjectStore`] port on aws-sdk-s3.

mod factory;
pub use factory::{S3Settings, S3StoreFactory};

mod error;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete, EncodingType,
    MetadataDirective, ObjectCannedAcl, ObjectIdentifier, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use filestore_s3_actors::model::{ObjectMeta, RawListing, UserMetadata, WriteMarker};
use filestore_s3_actors::mount::{
    validate_endpoint, ChecksumPolicy, CredentialSource, MountSpec, Sse,
};
use filestore_s3_actors::ports::{
    ByteRange, CopyObjectInput, KeyCondition, ObjectBody, ObjectStore, ObjectStoreFactory,
    PartBody, PartCopyInput, PutObjectInput, StoreError, StoreErrorKind, UploadedPart,
};
use filestore_s3_actors::Sha256Digest;
use futures::FutureExt as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub use error::classify;

/// Read buffer of a part sent from a file: large enough to keep the connection busy, small
/// enough that parts in flight cost little memory.
const FILE_PART_READ_BUFFER: usize = 256 * 1024;

/// Bodies up to this size are hashed on the async worker; larger ones on a blocking thread (the
/// MD5 of a 16 MiB part takes about 20 ms, which would hold up every actor of the arbiter).
const INLINE_HASH_BYTES: usize = 256 * 1024;

/// The hex MD5 of `body`, off the async worker when it is large.
async fn md5_hex_of(body: &bytes::Bytes) -> String {
    if body.len() <= INLINE_HASH_BYTES {
        return md5_hex(body);
    }
    let b = body.clone();
    match tokio::task::spawn_blocking(move || md5_hex(&b)).await {
        Ok(hex) => hex,
        // The blocking pool is shutting down: hash here rather than fail the check.
        Err(_) => md5_hex(body),
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(bytes))
}

/// One mount's bucket.
pub struct S3Store {
    client: Client,
    bucket: String,
    sse: Sse,
    acl: Option<String>,
    storage_class: Option<String>,
    checksum: ChecksumPolicy,
    /// Whether the last UploadPart answer echoed the SHA-256 sent with the part: the store
    /// verifies the parts' checksums, so their MD5 is not needed ([`ObjectStore::wants_part_md5`]).
    parts_echoed: AtomicBool,
}

/// Applies the mount's write options (SSE, KMS key, canned ACL, storage class) to a PutObject,
/// CreateMultipartUpload or CopyObject request: the builders are distinct types with the same
/// setters.
macro_rules! with_write_options {
    ($req:expr, $store:expr) => {{
        let (sse, kms_key) = $store.sse_headers();
        $req.set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .set_acl($store.acl.as_deref().map(ObjectCannedAcl::from))
            .set_storage_class($store.storage_class.as_deref().map(StorageClass::from))
    }};
}

// After the macro: the multipart requests use it.
mod multipart;
impl S3Store {
    /// `classify` for a write; `checksums`: the request carried checksum headers (which it does
    /// only when the mount sends them).
    pub(crate) fn classify_write<E>(
        &self,
        err: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
        checksums: bool,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let e = classify(err);
        if checksums && self.checksum == ChecksumPolicy::Sha256 {
            error::checksum_refusal(e)
        } else {
            e
        }
    }

    /// A store that does not verify `x-amz-checksum-sha256` (moto) still answers, for an object or
    /// part written without SSE-KMS, an ETag that is the MD5 of the bytes it kept. When the ETag
    /// has that form and is not the MD5 of what was sent, the body was corrupted on the way:
    /// `ChecksumMismatch`, so the write is sent again instead of being verified by its own marker.
    /// Skipped when the store answered with the SHA-256 the executor sent (`echoed_sha256`): it
    /// verified the body itself, and hashing it again would only cost CPU.
    /// `md5` gives the hex MD5 of the `len` bytes sent; awaited only when the check applies.
    async fn check_md5_etag(
        &self,
        etag: &str,
        len: u64,
        echoed_sha256: bool,
        md5: impl std::future::Future<Output = String>,
    ) -> Result<(), StoreError> {
        if echoed_sha256 {
            return Ok(());
        }
        let plain = etag.len() == 32 && etag.chars().all(|c| c.is_ascii_hexdigit());
        if !plain || matches!(self.sse, Sse::Kms { .. }) {
            return Ok(());
        }
        let md5 = md5.await;
        if md5.eq_ignore_ascii_case(etag) {
            return Ok(());
        }
        Err(StoreError::new(
            StoreErrorKind::ChecksumMismatch,
            format!(
                "the store's ETag {etag} is not the MD5 {md5} of the {len} bytes sent: the body was corrupted on the way"
            ),
        ))
    }

    fn sse_headers(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.sse {
            Sse::None => (None, None),
            Sse::Aes256 => (Some(ServerSideEncryption::Aes256), None),
            Sse::Kms { key_id } => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        }
    }

    fn b64(sha256: &Sha256Digest) -> String {
        base64::engine::general_purpose::STANDARD.encode(sha256.as_bytes())
    }

    /// `x-amz-copy-source`: bucket and key, percent-encoded (the key may hold any UTF-8).
    fn copy_source(bucket: &str, key: &str) -> String {
        format!("{bucket}/{}", utf8_percent_encode(key, COPY_SOURCE_KEY))
    }
}

/// Everything but unreserved characters and `/` is escaped in a copy source's key.
const COPY_SOURCE_KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The caller's user metadata and the write marker, as S3 user metadata (`x-amz-meta-*`). The
/// caller's names were checked to stay clear of the marker's `filestore-` names.
fn object_metadata(marker: &WriteMarker, user: &UserMetadata) -> HashMap<String, String> {
    user.iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(
            marker
                .to_pairs()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        )
        .collect()
}

fn marker_of(metadata: Option<&HashMap<String, String>>) -> Option<WriteMarker> {
    WriteMarker::from_pairs(metadata?.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// The caller's part of an object's user metadata: every name but the marker's (names
/// lowercased, as S3 stores them).
fn user_metadata_of(metadata: Option<&HashMap<String, String>>) -> UserMetadata {
    metadata
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| !k.starts_with(filestore_s3_actors::validate::RESERVED_METADATA_PREFIX))
        .collect()
}

/// Deleting or aborting what is already gone reached its goal; some stores answer 404 for it.
fn already_gone(e: StoreError) -> Result<(), StoreError> {
    if e.kind == StoreErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// S3 omits the storage class of STANDARD objects.
fn storage_class_name(sc: Option<&str>) -> String {
    sc.unwrap_or("STANDARD").to_owned()
}

fn sse_name(sse: Option<&ServerSideEncryption>) -> Option<String> {
    sse.map(|s| s.as_str().to_owned())
}

fn to_chrono(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

/// Decodes a base64 SHA-256 checksum header; composite (`...-N`) checksums give `None`.
fn sha256_of_header(b64: Option<&str>) -> Option<Sha256Digest> {
    let b64 = b64?;
    if b64.contains('-') {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Sha256Digest::from_slice(&raw)
}

/// A composite (`<base64>-<parts>`) checksum header, as reported.
fn composite_of_header(b64: Option<&str>) -> Option<String> {
    b64.filter(|v| v.contains('-')).map(str::to_owned)
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_object(&self, input: PutObjectInput) -> Result<ObjectMeta, StoreError> {
        let size = input.body.len() as u64;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&input.key)
            .content_length(size as i64)
            .body(ByteStream::from(input.body.clone()))
            .set_content_type(input.content_type.clone())
            .set_metadata(Some(object_metadata(&input.marker, &input.metadata)));
        if input.if_none_match {
            req = req.if_none_match("*");
        }
        if let Some(etag) = &input.if_match {
            req = req.if_match(format!("\"{etag}\""));
        }
        if self.checksum == ChecksumPolicy::Sha256 {
            req = req.checksum_sha256(Self::b64(&input.sha256));
        }
        let out = with_write_options!(req, self)
            .send()
            .await
            .map_err(|e| self.classify_write(e, true))?;
        let echoed = self.checksum == ChecksumPolicy::Sha256
            && sha256_of_header(out.checksum_sha256()) == Some(input.sha256);
        self.check_md5_etag(&unquote(out.e_tag()), size, echoed, md5_hex_of(&input.body))
            .await?;
        Ok(ObjectMeta {
            key: input.key,
            size,
            etag: unquote(out.e_tag()),
            sha256: sha256_of_header(out.checksum_sha256()),
            sha256_composite: None,
            marker: Some(input.marker),
            storage_class: storage_class_name(self.storage_class.as_deref()),
            last_modified: None,
            sse: sse_name(out.server_side_encryption()),
            kms_key_id: out.ssekms_key_id().map(str::to_owned),
            user_metadata: input.metadata,
        })
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let res = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            // A mount with `checksum = none` is for stores that reject checksum headers: it does
            // not ask for stored checksums either.
            .set_checksum_mode(
                (self.checksum == ChecksumPolicy::Sha256).then_some(ChecksumMode::Enabled),
            )
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: unquote(out.e_tag()),
                sha256: sha256_of_header(out.checksum_sha256()),
                sha256_composite: composite_of_header(out.checksum_sha256()),
                marker: marker_of(out.metadata()),
                storage_class: storage_class_name(out.storage_class().map(|s| s.as_str())),
                last_modified: to_chrono(out.last_modified()),
                sse: sse_name(out.server_side_encryption()),
                kms_key_id: out.ssekms_key_id().map(str::to_owned),
                user_metadata: user_metadata_of(out.metadata()),
            })),
            Err(e) => {
                let e = classify(e);
                if e.kind == StoreErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
            .or_else(already_gone)
    }

    async fn delete_object_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(format!("\"{etag}\""))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn delete_objects(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let refused = |e: aws_sdk_s3::error::BuildError| {
            StoreError::new(
                StoreErrorKind::Rejected,
                format!("a multi-object delete could not be built: {e}"),
            )
        };
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build().map_err(refused))
            .collect::<Result<Vec<_>, _>>()?;
        // Quiet: the answer lists only the keys that were not deleted.
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(refused)?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(classify)?;
        let mut failed: HashMap<&str, StoreError> = HashMap::new();
        for e in out.errors() {
            let code = e.code().unwrap_or_default();
            let kind = error::kind_for_code(code).unwrap_or(StoreErrorKind::Rejected);
            failed.insert(
                e.key().unwrap_or_default(),
                StoreError {
                    kind,
                    code: (!code.is_empty()).then(|| code.to_owned()),
                    message: format!(
                        "DeleteObjects refused this key: {code}: {}",
                        e.message().unwrap_or("(no message)")
                    ),
                },
            );
        }
        Ok(keys
            .iter()
            .map(|k| match failed.remove(k.as_str()) {
                Some(e) => already_gone(e),
                None => Ok(()),
            })
            .collect())
    }

    async fn list_objects(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<i32>,
    ) -> Result<RawListing, StoreError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_continuation_token(token.map(str::to_owned))
            .set_max_keys(max_keys)
            // Keys may hold characters XML 1.0 cannot carry (control characters); with URL
            // encoding the listing stays parseable and such keys are reported, not fatal.
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(classify)?;
        // Stores that ignore the parameter do not echo it and send raw keys.
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let decode = |k: &str| -> String {
            if encoded {
                percent_encoding::percent_decode_str(k)
                    .decode_utf8_lossy()
                    .into_owned()
            } else {
                k.to_owned()
            }
        };
        let objects = out
            .contents()
            .iter()
            .map(|o| ObjectMeta {
                key: decode(o.key().unwrap_or_default()),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: unquote(o.e_tag()),
                sha256: None,
                sha256_composite: None,
                marker: None,
                storage_class: storage_class_name(o.storage_class().map(|s| s.as_str())),
                last_modified: to_chrono(o.last_modified()),
                sse: None,
                kms_key_id: None,
                user_metadata: UserMetadata::new(),
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(decode))
            .collect();
        let next_token = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(RawListing {
            objects,
            common_prefixes,
            next_token,
        })
    }

    async fn get_object(
        &self,
        key: &str,
        range: Option<ByteRange>,
        if_match: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        let range = range.map(|r| match r.end {
            Some(end) => format!("bytes={}-{end}", r.start),
            None => format!("bytes={}-", r.start),
        });
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range.clone())
            .set_if_match(if_match.map(|e| format!("\"{e}\"")))
            .send()
            .await
            .map_err(classify)?;
        let content_length = out.content_length().unwrap_or(0).max(0) as u64;
        // Content-Range: bytes a-b/total gives the whole size of a ranged read.
        let size = out
            .content_range()
            .and_then(|cr| cr.rsplit('/').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(content_length);
        let meta = ObjectMeta {
            key: key.to_owned(),
            size,
            etag: unquote(out.e_tag()),
            sha256: None,
            sha256_composite: None,
            marker: marker_of(out.metadata()),
            storage_class: storage_class_name(out.storage_class().map(|s| s.as_str())),
            last_modified: to_chrono(out.last_modified()),
            sse: sse_name(out.server_side_encryption()),
            kms_key_id: out.ssekms_key_id().map(str::to_owned),
            user_metadata: user_metadata_of(out.metadata()),
        };
        let mut body = out.body;
        let stream = futures::stream::poll_fn(move |cx| {
            std::pin::Pin::new(&mut body).poll_next(cx).map(|o| {
                o.map(|r| r.map_err(|e| StoreError::new(StoreErrorKind::Transient, e.to_string())))
            })
        });
        Ok(ObjectBody {
            meta,
            content_length,
            stream: Box::pin(stream),
        })
    }

    async fn create_multipart(
        &self,
        key: &str,
        content_type: Option<&str>,
        marker: &WriteMarker,
        metadata: &UserMetadata,
        part_checksums: bool,
    ) -> Result<String, StoreError> {
        self.create_multipart_upload(key, content_type, marker, metadata, part_checksums)
            .await
    }

    /// Not under SSE-KMS (a part's ETag is then no MD5), nor while the store echoes the parts'
    /// checksums (it verified them).
    fn wants_part_md5(&self) -> bool {
        !matches!(self.sse, Sse::Kms { .. }) && !self.parts_echoed.load(Ordering::Relaxed)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
        sha256: Sha256Digest,
    ) -> Result<UploadedPart, StoreError> {
        self.upload_one_part(key, upload_id, part_number, body, sha256)
            .await
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        self.list_all_parts(key, upload_id).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        condition: &KeyCondition,
    ) -> Result<String, StoreError> {
        self.complete_upload(key, upload_id, parts, condition).await
    }

    async fn copy_object(&self, input: CopyObjectInput) -> Result<ObjectMeta, StoreError> {
        // Metadata is replaced (the marker names this copy's journal row); the destination mount's
        // SSE / ACL / storage class apply; with SHA-256 checksums the store computes one for the
        // copy, which verification compares with the source's.
        let req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&input.key)
            .copy_source(Self::copy_source(&input.source_bucket, &input.source_key))
            .copy_source_if_match(format!("\"{}\"", input.source_etag))
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(object_metadata(&input.marker, &input.metadata)))
            .set_checksum_algorithm(
                (self.checksum == ChecksumPolicy::Sha256).then_some(ChecksumAlgorithm::Sha256),
            );
        let out = with_write_options!(req, self)
            .send()
            .await
            .map_err(|e| self.classify_write(e, true))?;
        let result = out.copy_object_result();
        Ok(ObjectMeta {
            key: input.key,
            size: input.size,
            etag: unquote(result.and_then(|r| r.e_tag())),
            sha256: sha256_of_header(result.and_then(|r| r.checksum_sha256())),
            sha256_composite: None,
            marker: Some(input.marker),
            storage_class: storage_class_name(self.storage_class.as_deref()),
            last_modified: to_chrono(result.and_then(|r| r.last_modified())),
            sse: sse_name(out.server_side_encryption()),
            kms_key_id: out.ssekms_key_id().map(str::to_owned),
            user_metadata: input.metadata,
        })
    }

    async fn upload_part_copy(&self, input: PartCopyInput) -> Result<UploadedPart, StoreError> {
        self.copy_one_part(input).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
            .or_else(already_gone)
    }

    async fn open_uploads(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .uploads()
            .iter()
            .filter(|u| u.key() == Some(key))
            .filter_map(|u| u.upload_id().map(str::to_owned))
            .collect())
    }
}
