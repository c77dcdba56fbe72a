//! In-memory port fakes, for unit-testing actor logic only (enable feature `testing`).
//! End-to-end tests use the real adapters against real services.

mod meta;
pub use meta::{AppliedBatch, MemoryMeta};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::digest::Sha256Digest;
use crate::model::{
    ChangeEvent, CommitRecord, Fence, IntentOutcome, JournalEntry, JournalState, LeaseState,
    NewIntent, Node, NodeChange, ObjectMeta, OpKind, OpProgress, OpRequest, OpResult, OutboxEvent,
    OutboxRow, RawListing, UploadProgress, UploadRecord, WriteMarker,
};
use crate::mount::MountRow;
use crate::ports::{
    ByteRange, ChangePublisher, CopyObjectInput, MetaError, MetaOutput, MetaStore, MetaWrite,
    ObjectBody, ObjectStore, PartBody, PartCopyInput, PublishError, PutObjectInput, StoreError,
    StoreErrorKind, UploadedPart,
};
use bytes::Bytes;

/// Key and parts of an open upload.
type OpenUpload = (String, BTreeMap<i32, Vec<u8>>);

/// A bucket in memory. `fail_next_puts` makes the next N puts fail with `fail_kind`.
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Vec<u8>, ObjectMeta)>>,
    /// Puts that will fail before one succeeds.
    pub fail_next_puts: AtomicU32,
    fail_kind: Mutex<Option<StoreErrorKind>>,
    /// Successful puts.
    pub puts: AtomicU32,
    /// Calls of `put_object`, failed ones included.
    pub put_attempts: AtomicU32,
    uploads: Mutex<HashMap<String, OpenUpload>>,
    /// The user metadata each open upload was created with.
    upload_metadata: Mutex<HashMap<String, crate::model::UserMetadata>>,
    /// Parts that will fail before one succeeds.
    pub fail_next_parts: AtomicU32,
    /// The number of keys of each multi-object delete, in the order they came.
    pub delete_batches: Mutex<Vec<usize>>,
    /// Single DELETEs.
    pub single_deletes: AtomicU32,
    /// Refuse multi-object deletes as a store without them does (`NotImplemented`).
    pub refuse_delete_objects: std::sync::atomic::AtomicBool,
    /// Delete requests (single or multi-object) being answered now.
    deletes_out: AtomicU32,
    /// The most delete requests that were being answered at once.
    pub max_deletes_out: AtomicU32,
    /// Answer [`ObjectStore::wants_part_md5`] with no, as a store that echoes checksums does.
    pub part_md5_unwanted: std::sync::atomic::AtomicBool,
    /// Parts sent from a file with their MD5.
    pub file_parts_with_md5: AtomicU32,
    /// Parts sent from a file without their MD5.
    pub file_parts_without_md5: AtomicU32,
}

impl MemoryStore {
    /// Takes `ms` as a delete request does, counted among the requests being answered at once.
    async fn answering_delete(&self, ms: u64) {
        let out = self.deletes_out.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_deletes_out.fetch_max(out, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        self.deletes_out.fetch_sub(1, Ordering::SeqCst);
    }

    /// Makes the next `n` puts fail with `kind`.
    pub fn fail_puts(&self, n: u32, kind: StoreErrorKind) {
        *self.fail_kind.lock().unwrap() = Some(kind);
        self.fail_next_puts.store(n, Ordering::SeqCst);
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.lock().unwrap().len()
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `body` at `key` behind the executor's back: an object carrying `marker`'s journal
    /// id (another operation's late write), or none (someone else's object).
    pub fn write_behind(&self, key: &str, body: &[u8], marker: Option<i64>) {
        let sha = Sha256Digest::of(body);
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: body.len() as u64,
            etag: sha.to_hex()[..32].to_owned(),
            sha256: Some(sha),
            sha256_composite: None,
            marker: marker.map(|journal_id| WriteMarker {
                journal_id,
                sha256: Some(sha),
            }),
            storage_class: "STANDARD".into(),
            last_modified: Some(Utc::now()),
            sse: None,
            kms_key_id: None,
            user_metadata: Default::default(),
        };
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_owned(), (body.to_vec(), meta));
    }

    /// Content of an object.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put_object(&self, input: PutObjectInput) -> Result<ObjectMeta, StoreError> {
        self.put_attempts.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_next_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let kind = self
                .fail_kind
                .lock()
                .unwrap()
                .unwrap_or(StoreErrorKind::Transient);
            return Err(StoreError::new(kind, "injected failure"));
        }
        let sha = Sha256Digest::of(&input.body);
        if sha != input.sha256 {
            return Err(StoreError::new(
                StoreErrorKind::ChecksumMismatch,
                "bad digest",
            ));
        }
        if input.if_none_match && self.objects.lock().unwrap().contains_key(&input.key) {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                "object exists",
            ));
        }
        if let Some(want) = &input.if_match {
            match self.objects.lock().unwrap().get(&input.key) {
                Some((_, m)) if &m.etag == want => {}
                Some(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::PreconditionFailed,
                        "another ETag",
                    ))
                }
                None => return Err(StoreError::new(StoreErrorKind::NotFound, "no such key")),
            }
        }
        let meta = ObjectMeta {
            key: input.key.clone(),
            size: input.body.len() as u64,
            etag: sha.to_hex()[..32].to_owned(),
            sha256: Some(sha),
            sha256_composite: None,
            marker: Some(input.marker.clone()),
            storage_class: "STANDARD".into(),
            last_modified: Some(Utc::now()),
            sse: None,
            kms_key_id: None,
            user_metadata: input.metadata.clone(),
        };
        self.objects
            .lock()
            .unwrap()
            .insert(input.key, (input.body.to_vec(), meta.clone()));
        self.puts.fetch_add(1, Ordering::SeqCst);
        Ok(meta)
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(_, m)| m.clone()))
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        self.single_deletes.fetch_add(1, Ordering::SeqCst);
        self.answering_delete(1).await;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn delete_object_if_match(&self, key: &str, etag: &str) -> Result<(), StoreError> {
        self.single_deletes.fetch_add(1, Ordering::SeqCst);
        self.answering_delete(1).await;
        let mut objects = self.objects.lock().unwrap();
        match objects.get(key) {
            Some((_, m)) if m.etag == etag => {
                objects.remove(key);
                Ok(())
            }
            Some(_) => Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                "another ETag",
            )),
            None => Err(StoreError::new(StoreErrorKind::NotFound, "no such key")),
        }
    }

    async fn delete_objects(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if self.refuse_delete_objects.load(Ordering::SeqCst) {
            return Err(StoreError {
                kind: StoreErrorKind::Config,
                code: Some("NotImplemented".into()),
                message: "multi-object delete is not implemented".into(),
            });
        }
        // Taking a moment, as a request does: deletes sent meanwhile queue for the next batch.
        self.answering_delete(5).await;
        self.delete_batches.lock().unwrap().push(keys.len());
        let mut objects = self.objects.lock().unwrap();
        Ok(keys
            .iter()
            .map(|k| {
                objects.remove(k);
                Ok(())
            })
            .collect())
    }

    async fn list_objects(
        &self,
        prefix: &str,
        _delimiter: Option<&str>,
        _token: Option<&str>,
        _max_keys: Option<i32>,
    ) -> Result<RawListing, StoreError> {
        let objects = self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, (_, m))| m.clone())
            .collect();
        Ok(RawListing {
            objects,
            ..RawListing::default()
        })
    }

    async fn get_object(
        &self,
        key: &str,
        range: Option<ByteRange>,
        _if_match: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        let (data, meta) = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "no such key"))?;
        let (start, end) = match range {
            Some(r) => (
                r.start as usize,
                r.end.map_or(data.len(), |e| e as usize + 1),
            ),
            None => (0, data.len()),
        };
        let slice = Bytes::copy_from_slice(&data[start..end.min(data.len())]);
        Ok(ObjectBody {
            meta,
            content_length: slice.len() as u64,
            stream: Box::pin(futures::stream::iter(vec![Ok(slice)])),
        })
    }

    async fn create_multipart(
        &self,
        key: &str,
        _ct: Option<&str>,
        _marker: &WriteMarker,
        metadata: &crate::model::UserMetadata,
        _part_checksums: bool,
    ) -> Result<String, StoreError> {
        let id = Uuid::new_v4().to_string();
        self.upload_metadata
            .lock()
            .unwrap()
            .insert(id.clone(), metadata.clone());
        self.uploads
            .lock()
            .unwrap()
            .insert(id.clone(), (key.to_owned(), BTreeMap::new()));
        Ok(id)
    }

    fn wants_part_md5(&self) -> bool {
        !self.part_md5_unwanted.load(Ordering::SeqCst)
    }

    async fn upload_part(
        &self,
        _key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
        sha256: Sha256Digest,
    ) -> Result<UploadedPart, StoreError> {
        if let PartBody::File { md5, .. } = &body {
            match md5 {
                Some(_) => &self.file_parts_with_md5,
                None => &self.file_parts_without_md5,
            }
            .fetch_add(1, Ordering::SeqCst);
        }
        let body = body
            .to_bytes()
            .map_err(|e| StoreError::new(StoreErrorKind::Rejected, e.to_string()))?;
        if self
            .fail_next_parts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                "injected part failure",
            ));
        }
        let mut uploads = self.uploads.lock().unwrap();
        let (_, parts) = uploads
            .get_mut(upload_id)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "NoSuchUpload"))?;
        parts.insert(part_number, body.to_vec());
        Ok(UploadedPart {
            part_number,
            etag: Some(hex::encode(&sha256.as_bytes()[..16])),
            size: body.len() as u64,
            sha256: Some(sha256),
        })
    }

    async fn list_parts(
        &self,
        _key: &str,
        upload_id: &str,
    ) -> Result<Vec<UploadedPart>, StoreError> {
        let uploads = self.uploads.lock().unwrap();
        let (_, parts) = uploads
            .get(upload_id)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "NoSuchUpload"))?;
        Ok(parts
            .iter()
            .map(|(n, b)| {
                let sha = Sha256Digest::of(b);
                UploadedPart {
                    part_number: *n,
                    etag: Some(hex::encode(&sha.as_bytes()[..16])),
                    size: b.len() as u64,
                    sha256: Some(sha),
                }
            })
            .collect())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        condition: &crate::ports::KeyCondition,
    ) -> Result<String, StoreError> {
        {
            let objects = self.objects.lock().unwrap();
            let held = objects.get(key).map(|(_, m)| m.etag.clone());
            if condition.if_none_match && held.is_some() {
                return Err(StoreError::new(
                    StoreErrorKind::PreconditionFailed,
                    "object exists",
                ));
            }
            if let Some(want) = &condition.if_match {
                if held.as_ref() != Some(want) {
                    return Err(StoreError::new(
                        StoreErrorKind::PreconditionFailed,
                        "another ETag",
                    ));
                }
            }
        }
        let (_, stored) = self
            .uploads
            .lock()
            .unwrap()
            .remove(upload_id)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "NoSuchUpload"))?;
        let mut data = Vec::new();
        for p in parts {
            data.extend_from_slice(&stored[&p.part_number]);
        }
        let etag = format!(
            "{}-{}",
            &hex::encode(Sha256::digest(&data))[..32],
            parts.len()
        );
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag: etag.clone(),
            sha256: None,
            sha256_composite: None,
            marker: None,
            storage_class: "STANDARD".into(),
            last_modified: Some(Utc::now()),
            sse: None,
            kms_key_id: None,
            user_metadata: self
                .upload_metadata
                .lock()
                .unwrap()
                .remove(upload_id)
                .unwrap_or_default(),
        };
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_owned(), (data, meta));
        Ok(etag)
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.uploads.lock().unwrap().remove(upload_id);
        Ok(())
    }

    async fn copy_object(&self, input: CopyObjectInput) -> Result<ObjectMeta, StoreError> {
        let mut objects = self.objects.lock().unwrap();
        let (body, meta) = objects
            .get(&input.source_key)
            .cloned()
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "NoSuchKey"))?;
        if meta.etag != input.source_etag {
            return Err(StoreError::new(
                StoreErrorKind::PreconditionFailed,
                "source ETag changed",
            ));
        }
        let meta = ObjectMeta {
            key: input.key.clone(),
            marker: Some(input.marker),
            last_modified: Some(Utc::now()),
            user_metadata: input.metadata,
            ..meta
        };
        objects.insert(input.key, (body, meta.clone()));
        Ok(meta)
    }

    async fn upload_part_copy(&self, input: PartCopyInput) -> Result<UploadedPart, StoreError> {
        let body = self
            .objects
            .lock()
            .unwrap()
            .get(&input.source_key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, "NoSuchKey"))?;
        let start = input.range.start as usize;
        let end = input.range.end.map_or(body.len(), |e| e as usize + 1);
        let part = Bytes::copy_from_slice(&body[start..end.min(body.len())]);
        let sha = Sha256Digest::of(&part);
        self.upload_part(
            &input.key,
            &input.upload_id,
            input.part_number,
            PartBody::Bytes(part),
            sha,
        )
        .await
    }
}

impl MemoryStore {
    /// Open multipart uploads.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }
}

/// Records published events.
#[derive(Default)]
pub struct RecordingPublisher {
    /// Every event published, in order.
    pub events: Mutex<Vec<ChangeEvent>>,
    /// The payloads of unreadable outbox rows published, in order.
    pub unreadable: Mutex<Vec<String>>,
    /// Progress messages published.
    pub progress: Mutex<Vec<UploadProgress>>,
}

#[async_trait]
impl ChangePublisher for RecordingPublisher {
    async fn publish(&self, _mount: &str, rows: &[OutboxRow]) -> Result<(), PublishError> {
        for row in rows {
            match row {
                OutboxRow::Event(e) => self.events.lock().unwrap().push(e.event.clone()),
                OutboxRow::Unreadable { payload, .. } => {
                    self.unreadable.lock().unwrap().push(payload.clone())
                }
            }
        }
        Ok(())
    }

    async fn publish_progress(&self, _mount: &str, p: &UploadProgress) -> Result<(), PublishError> {
        self.progress.lock().unwrap().push(p.clone());
        Ok(())
    }
}

/// The three fakes, wired for one mount.
pub struct Fakes {
    /// Object store.
    pub store: Arc<MemoryStore>,
    /// Metadata store.
    pub meta: Arc<MemoryMeta>,
    /// Publisher.
    pub publisher: Arc<RecordingPublisher>,
}

impl Default for Fakes {
    fn default() -> Self {
        Fakes {
            store: Arc::new(MemoryStore::default()),
            meta: Arc::new(MemoryMeta::default()),
            publisher: Arc::new(RecordingPublisher::default()),
        }
    }
}
