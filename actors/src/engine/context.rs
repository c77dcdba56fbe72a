//! What every operation step needs: the mount, its ports, the committer; and the steps shared by
//! all operations (journal writes, retried store calls, the verification loop, the check of the
//! mount's settings against what the store applied).

use std::sync::Arc;

use actix::Addr;
use async_trait::async_trait;

use crate::committer::{
    CommitOperation, CommitterActor, FailOperation, RecordIntent, RecordPart, RecordProgress,
    RecordUpload,
};
use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::model::WriteMarker;
use crate::model::{
    CommitRecord, IntentOutcome, NewIntent, NodeMeta, ObjectMeta, OpProgress, OpResult,
    StoreConditions, UploadRecord, UploadedPart, Verification,
};
use crate::mount::{MountSpec, SettingsPolicy, Sse};
use crate::multipart::{PartRecorder, UploadDeps};
use crate::ports::{ChangePublisher, KeyCondition, MetaStore, PutObjectInput, StoreError};
use crate::store::{MountDirectory, MountStore, S3Op};
use crate::store_error::Outcome;

/// What an operation future needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct OpContext {
    pub spec: Arc<MountSpec>,
    /// The mount's store layer: every S3 request of the operation on this mount.
    pub store: MountStore,
    pub meta: Arc<dyn MetaStore>,
    pub publisher: Arc<dyn ChangePublisher>,
    pub committer: Addr<CommitterActor>,
    pub mounts: Option<Arc<dyn MountDirectory>>,
    /// What the settings probe found (the mount's settings the store ignored), once it ran.
    pub probe: Arc<tokio::sync::OnceCell<Vec<String>>>,
    /// Settings a write showed the store ignoring after the probe passed ([`node_for`]): the
    /// mount's new writes are refused for them (strict policy) until the supervisor starts again.
    pub settings_learned: Arc<std::sync::Mutex<Vec<String>>>,
    /// Which conditional requests the store honours, once the conditions probe ran.
    pub conditions: Arc<tokio::sync::OnceCell<StoreConditions>>,
    /// How long recovery waits for a pending write's object to show before failing the row.
    pub consistency_horizon: std::time::Duration,
    /// The mount's multi-object deletes.
    pub deletes: super::DeleteBatcher,
    /// The executor's path locks (an operation settling a pending row on its path takes that
    /// row's other paths, if free).
    pub locks: crate::locks::PathLocks,
}

fn mailbox_closed(_: actix::MailboxError) -> Error {
    Error::Shutdown
}

impl OpContext {
    pub async fn record_intent(&self, intent: NewIntent) -> Result<IntentOutcome, Error> {
        Ok(self
            .committer
            .send(RecordIntent(intent))
            .await
            .map_err(mailbox_closed)??)
    }

    pub async fn commit(&self, record: CommitRecord) -> Result<OpResult, Error> {
        Ok(self
            .committer
            .send(CommitOperation(record))
            .await
            .map_err(mailbox_closed)??)
    }

    pub async fn fail(&self, journal_id: i64, error: &Error) -> Result<(), Error> {
        let msg = FailOperation {
            journal_id,
            error: error.to_string(),
        };
        Ok(self.committer.send(msg).await.map_err(mailbox_closed)??)
    }

    pub async fn record_progress(
        &self,
        journal_id: i64,
        progress: OpProgress,
    ) -> Result<(), Error> {
        let phase = progress.phase();
        self.committer
            .send(RecordProgress {
                journal_id,
                progress,
            })
            .await
            .map_err(mailbox_closed)??;
        crate::failpoint::hit(&format!("after_{phase}")).await;
        Ok(())
    }

    /// HEADs `key` until `accept` holds or the mount's verification window ends.
    pub async fn verify<T>(
        &self,
        key: &str,
        accept: impl Fn(&Option<ObjectMeta>) -> Result<T, String>,
    ) -> Result<T, Error> {
        self.store.verify(key, accept).await
    }

    /// Before the first write of a mount with SSE or a storage class: writes a small probe
    /// object with the mount's settings, reads back what the store applied, deletes it. Under the
    /// strict policy a store that ignores a setting refuses every write of the mount before it
    /// touches a real key (so an overwrite never replaces an object with one that lacks the
    /// setting); under the lenient one the writes go ahead and each node records what was not
    /// applied. The result is kept for the supervisor's life; a failed probe is tried again.
    pub async fn ensure_settings_honoured(&self) -> Result<(), Error> {
        if matches!(self.spec.sse, Sse::None) && self.spec.storage_class.is_none() {
            return Ok(());
        }
        let missing = self.probe.get_or_try_init(|| self.probe_settings()).await?;
        if missing.is_empty() || self.spec.settings_policy == SettingsPolicy::Lenient {
            return Ok(());
        }
        Err(Error::SettingsNotApplied {
            mount: self.spec.name.clone(),
            key: format!("{}{PROBE_KEY_PREFIX}*", self.spec.keys.prefix()),
            settings: missing.clone(),
        })
    }

    /// A new operation that writes an object (not recovery, which finishes what was started):
    /// refused under the strict policy once a write showed the store ignoring a setting.
    pub fn refuse_learned_settings(&self) -> Result<(), Error> {
        let learned = self
            .settings_learned
            .lock()
            .expect("learned settings")
            .clone();
        if learned.is_empty() || self.spec.settings_policy == SettingsPolicy::Lenient {
            return Ok(());
        }
        Err(Error::SettingsNotApplied {
            mount: self.spec.name.clone(),
            key: format!("{}*", self.spec.keys.prefix()),
            settings: learned,
        })
    }

    /// Settings a write showed the store ignoring (see [`Self::refuse_learned_settings`]).
    fn learn_ignored(&self, settings: &[String]) {
        let mut known = self.settings_learned.lock().expect("learned settings");
        for s in settings {
            if !known.contains(s) {
                known.push(s.clone());
            }
        }
    }

    async fn probe_settings(&self) -> Result<Vec<String>, Error> {
        let key = self.probe_key(PROBE_KEY_PREFIX);
        self.store
            .put(&probe_object(
                &key,
                b"filestore-s3 settings probe",
                false,
                None,
            ))
            .await?;
        let seen = self
            .verify(&key, |seen| {
                seen.clone()
                    .ok_or_else(|| "probe object not visible yet".to_string())
            })
            .await;
        if let Err(e) = self.store.delete(&key).await {
            log::warn!(
                "mount {}: settings probe '{key}' not removed: {e}",
                self.spec.name
            );
        }
        // A probe that did not show up is a transient store problem, not an unverified write of
        // the operation (which would leave its journal row pending for recovery).
        let seen = seen.map_err(|e| match e {
            Error::Unverified { key, reason } => Error::Storage {
                op: S3Op::HeadObject,
                key,
                outcome: Outcome::NotApplied,
                source: StoreError::new(
                    crate::ports::StoreErrorKind::Transient,
                    format!("settings probe not visible: {reason}"),
                ),
            },
            e => e,
        })?;
        let missing = settings_not_applied(&self.spec, &seen);
        if !missing.is_empty() {
            log::warn!(
                "mount {}: the store does not apply {} ({:?} policy)",
                self.spec.name,
                missing.join(", "),
                self.spec.settings_policy
            );
        }
        Ok(missing)
    }

    /// A probe's object: `prefix` (after the mount's own) and a fresh id.
    fn probe_key(&self, prefix: &str) -> String {
        format!(
            "{}{prefix}{}",
            self.spec.keys.prefix(),
            uuid::Uuid::new_v4()
        )
    }

    /// Which conditional requests the mount's store honours: probed once per supervisor, at the
    /// first write that would send a condition, on an object of its own under the mount's
    /// prefix (`.filestore-conditions-probe-<uuid>`, removed after), and recorded in
    /// `mount_store_conditions`. A store that ignores a condition is not sent it.
    pub async fn conditions(&self) -> Result<StoreConditions, Error> {
        self.conditions
            .get_or_try_init(|| self.probe_conditions())
            .await
            .copied()
    }

    async fn probe_conditions(&self) -> Result<StoreConditions, Error> {
        let key = self.probe_key(CONDITIONS_PROBE_PREFIX);
        let input = |if_none_match: bool, if_match: Option<String>| {
            probe_object(
                &key,
                b"filestore-s3 conditions probe",
                if_none_match,
                if_match,
            )
        };
        // An ETag no object has.
        let other = "0".repeat(32);
        let probed = async {
            self.store.put(&input(false, None)).await?;
            let put_if_none_match = refused(self.store.put(&input(true, None)).await)?;
            let put_if_match = refused(self.store.put(&input(false, Some(other.clone()))).await)?;
            // The key holds the probe's object: both Completes' conditions cannot hold (one that
            // is ignored replaces the object, which stays for the DELETE's probe).
            let complete_if_none_match = refused(
                self.probe_complete(
                    &key,
                    &KeyCondition {
                        if_none_match: true,
                        if_match: None,
                    },
                )
                .await,
            )?;
            let complete_if_match = refused(
                self.probe_complete(
                    &key,
                    &KeyCondition {
                        if_none_match: false,
                        if_match: Some(other.clone()),
                    },
                )
                .await,
            )?;
            let delete_if_match = refused(self.store.delete_if_match(&key, &other).await)?;
            Ok::<_, Error>(StoreConditions {
                put_if_none_match,
                put_if_match,
                delete_if_match,
                complete_if_none_match,
                complete_if_match,
                // At the precision Postgres keeps.
                probed_at: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
            })
        }
        .await;
        if let Err(e) = self.store.delete(&key).await {
            log::warn!(
                "mount {}: conditions probe '{key}' not removed: {e}",
                self.spec.name
            );
        }
        let found = probed?;
        log::info!(
            "mount {}: the store honours: PutObject If-None-Match {}, PutObject If-Match {}, DeleteObject If-Match {}, CompleteMultipartUpload If-None-Match {}, CompleteMultipartUpload If-Match {}",
            self.spec.name,
            found.put_if_none_match,
            found.put_if_match,
            found.delete_if_match,
            found.complete_if_none_match,
            found.complete_if_match
        );
        if let Err(e) = self.meta.record_conditions(&self.spec.name, &found).await {
            log::warn!(
                "mount {}: what the conditions probe found was not recorded: {e}",
                self.spec.name
            );
        }
        Ok(found)
    }

    /// One multipart upload of a single small part at the probe's `key`, completed under
    /// `condition`; the upload is aborted after (which succeeds when it was completed).
    async fn probe_complete(&self, key: &str, condition: &KeyCondition) -> Result<String, Error> {
        const BODY: &[u8] = b"filestore-s3 conditions probe (multipart)";
        let marker = WriteMarker {
            journal_id: 0,
            sha256: None,
        };
        let no_metadata = Default::default();
        let upload_id = self
            .store
            .call(S3Op::CreateMultipartUpload, key, || {
                self.store
                    .raw()
                    .create_multipart(key, None, &marker, &no_metadata, false)
            })
            .await?;
        let completed = async {
            let part = self
                .store
                .call(S3Op::UploadPart, key, || {
                    self.store.raw().upload_part(
                        key,
                        &upload_id,
                        1,
                        crate::ports::PartBody::Bytes(bytes::Bytes::from_static(BODY)),
                        Sha256Digest::of(BODY),
                    )
                })
                .await?;
            self.store
                .call(S3Op::CompleteMultipartUpload, key, || {
                    self.store.raw().complete_multipart(
                        key,
                        &upload_id,
                        std::slice::from_ref(&part),
                        condition,
                    )
                })
                .await
        }
        .await;
        if let Err(e) = self.store.abort_upload(key, &upload_id).await {
            log::warn!(
                "mount {}: the conditions probe's upload {upload_id} of '{key}' was not aborted: {e}",
                self.spec.name
            );
        }
        completed
    }

    /// The multipart unit's dependencies, recording through this mount's committer.
    pub fn upload_deps(&self) -> UploadDeps {
        UploadDeps {
            store: self.store.clone(),
            recorder: Arc::new(CommitterRecorder {
                committer: self.committer.clone(),
                meta: self.meta.clone(),
            }),
            publisher: self.publisher.clone(),
        }
    }
}

/// A probe's PUT of `body` at `key`, marked as no journal row's (id 0).
fn probe_object(
    key: &str,
    body: &'static [u8],
    if_none_match: bool,
    if_match: Option<String>,
) -> PutObjectInput {
    let sha256 = Sha256Digest::of(body);
    PutObjectInput {
        key: key.to_owned(),
        body: bytes::Bytes::from_static(body),
        sha256,
        content_type: None,
        marker: WriteMarker {
            journal_id: 0,
            sha256: Some(sha256),
        },
        metadata: Default::default(),
        if_none_match,
        if_match,
    }
}

/// Name (after the mount prefix) of the conditions probe's objects.
pub(crate) const CONDITIONS_PROBE_PREFIX: &str = ".filestore-conditions-probe-";

/// Whether a probe request with a condition that cannot hold was refused for it (412): the
/// condition is honoured. Accepted, or refused as a request the store does not do (a 4xx other
/// than 412, `NotImplemented`): not honoured. A store that could not answer: the probe fails.
fn refused<T>(answer: Result<T, Error>) -> Result<bool, Error> {
    match answer {
        Ok(_) => Ok(false),
        Err(Error::Storage { source, .. })
            if source.kind == crate::ports::StoreErrorKind::PreconditionFailed =>
        {
            Ok(true)
        }
        Err(Error::Storage { source, .. }) if !source.is_retryable() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Name (after the mount prefix) of the settings probe's objects.
pub(crate) const PROBE_KEY_PREFIX: &str = ".filestore-settings-probe-";

/// The mount's settings the store did not apply to `seen` (as `name: wanted, store reported`).
pub(crate) fn settings_not_applied(spec: &MountSpec, seen: &ObjectMeta) -> Vec<String> {
    let mut missing = Vec::new();
    let sse = seen.sse.as_deref().unwrap_or("none");
    match &spec.sse {
        Sse::None => {}
        Sse::Aes256 => {
            if !sse.eq_ignore_ascii_case("AES256") {
                missing.push(format!("sse_mode: wanted AES256, store reported {sse}"));
            }
        }
        Sse::Kms { key_id } => {
            if !sse.eq_ignore_ascii_case("aws:kms") {
                missing.push(format!("sse_mode: wanted aws:kms, store reported {sse}"));
            } else if let Some(want) = key_id {
                let got = seen.kms_key_id.as_deref().unwrap_or("none");
                // AWS reports the key's ARN; a mount may name the key by id or alias.
                if !(got == want || got.ends_with(&format!("/{want}"))) {
                    missing.push(format!("kms_key_id: wanted {want}, store reported {got}"));
                }
            }
        }
    }
    if let Some(sc) = &spec.storage_class {
        if !sc.eq_ignore_ascii_case(&seen.storage_class) {
            missing.push(format!(
                "storage_class: wanted {sc}, store reported {}",
                seen.storage_class
            ));
        }
    }
    missing
}

/// Applies the mount's settings policy to what the store reported: strict refuses (the caller
/// removes the object), lenient returns the list to record.
pub(crate) fn enforce_settings(c: &OpContext, seen: &ObjectMeta) -> Result<Vec<String>, Error> {
    let missing = settings_not_applied(&c.spec, seen);
    if missing.is_empty() {
        return Ok(missing);
    }
    metrics::counter!("filestore_s3_settings_not_applied_total", "mount" => c.spec.name.clone())
        .increment(1);
    match c.spec.settings_policy {
        SettingsPolicy::Strict => Err(Error::SettingsNotApplied {
            mount: c.spec.name.clone(),
            key: seen.key.clone(),
            settings: missing,
        }),
        SettingsPolicy::Lenient => {
            log::warn!(
                "mount {}: the store ignored {} for '{}'; committed as the store applied it (lenient policy)",
                c.spec.name,
                missing.join(", "),
                seen.key
            );
            Ok(missing)
        }
    }
}

/// The node for a verified object: applies the mount's settings policy and records how the
/// content was proven.
///
/// A strict refusal at this point (the settings probe passed, yet the store kept this object
/// without a setting) is learnt: the mount's later writes are refused before they touch a key.
/// The object itself is removed only where no node names its key (a new path; removed on its
/// own ETag where the store honours that). Over an existing path the earlier version is
/// already replaced in the bucket, and deleting the new one would leave the node naming
/// nothing: the object is committed as the store holds it, with what was not applied recorded
/// on the node (as under the lenient policy), and an error is logged.
pub(crate) async fn node_for(
    c: &OpContext,
    seen: &ObjectMeta,
    sha256: Sha256Digest,
    verified: Verification,
) -> Result<NodeMeta, Error> {
    let not_applied = match enforce_settings(c, seen) {
        Ok(n) => n,
        Err(e) => {
            let Error::SettingsNotApplied { settings, .. } = &e else {
                return Err(e);
            };
            c.learn_ignored(settings);
            let key = &seen.key;
            // A key that maps to no path is taken as named: nothing is deleted when unsure.
            let named = match c.spec.keys.path_for(key) {
                Ok(path) => c.meta.node(&c.spec.name, path.as_str()).await?.is_some(),
                Err(_) => true,
            };
            if !named {
                let removed = match c.conditions().await.is_ok_and(|k| k.delete_if_match) {
                    true => c.store.delete_if_match(key, &seen.etag).await,
                    false => c.store.delete(key).await,
                };
                if let Err(d) = removed {
                    log::warn!("mount {}: '{key}' refused by the strict settings policy and not removed: {d}", c.spec.name);
                }
                return Err(e);
            }
            log::error!(
                "mount {}: the store kept '{key}' without {} although the settings probe found them applied; \
                 the earlier version is already replaced, so the object is committed as the store holds it \
                 (recorded on its node) and the mount's later writes are refused (strict policy)",
                c.spec.name,
                settings.join(", ")
            );
            settings.clone()
        }
    };
    Ok(NodeMeta {
        size: seen.size,
        etag: seen.etag.clone(),
        sha256,
        storage_class: seen.storage_class.clone(),
        last_modified: seen.last_modified,
        verified,
        sse: seen.sse.clone(),
        not_applied,
        user_metadata: seen.user_metadata.clone(),
    })
}

/// Records multipart state through the committer (parts finishing together share a transaction).
struct CommitterRecorder {
    committer: Addr<CommitterActor>,
    meta: Arc<dyn MetaStore>,
}

#[async_trait]
impl PartRecorder for CommitterRecorder {
    async fn upload_started(&self, record: UploadRecord) -> Result<(), Error> {
        Ok(self
            .committer
            .send(RecordUpload(record))
            .await
            .map_err(mailbox_closed)??)
    }

    async fn part_done(&self, upload_id: &str, part: UploadedPart) -> Result<(), Error> {
        Ok(self
            .committer
            .send(RecordPart {
                upload_id: upload_id.to_owned(),
                part,
            })
            .await
            .map_err(mailbox_closed)??)
    }

    async fn upload_ended(&self, upload_id: &str) -> Result<(), Error> {
        Ok(self.meta.mark_upload_aborted(upload_id).await?)
    }

    async fn completing(
        &self,
        journal_id: i64,
        size: u64,
        sha256: Sha256Digest,
    ) -> Result<(), Error> {
        self.committer
            .send(RecordProgress {
                journal_id,
                progress: OpProgress::Completing { size, sha256 },
            })
            .await
            .map_err(mailbox_closed)??;
        crate::failpoint::hit("after_completing").await;
        Ok(())
    }
}
