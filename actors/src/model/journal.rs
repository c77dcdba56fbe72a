//! The journal's records: requests, their progress, intents, rows and commits.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::digest::Sha256Digest;

use super::*;

/// State of a journal row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalState {
    /// Intent recorded, outcome not yet committed.
    Pending,
    /// Verified and committed.
    Committed,
    /// Ended without effect.
    Failed,
}

impl JournalState {
    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(JournalState::Pending),
            "committed" => Some(JournalState::Committed),
            "failed" => Some(JournalState::Failed),
            _ => None,
        }
    }
}

/// Conditions a write must meet, checked against the node in Postgres under the path's lock (and
/// sent to the store as conditional headers where it supports them). A failed condition is
/// [`crate::Error::PreconditionFailed`] and changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCondition {
    /// Create only: fail if the destination path has a node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_none_match: bool,
    /// Replace only if the destination's node is at this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<i64>,
}

impl WriteCondition {
    /// No condition.
    pub fn is_none(&self) -> bool {
        !self.if_none_match && self.if_generation.is_none()
    }
}

/// The source of a copy or move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Mount of the source.
    pub mount: String,
    /// Filestore path of the source.
    pub path: String,
    /// Object key of the source.
    pub key: String,
}

/// A copy or move request (the destination is on the journal row's mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// Destination path.
    pub path: String,
    /// Destination key.
    pub key: String,
    /// Source.
    pub source: SourceRef,
    /// Conditions on the destination.
    #[serde(default, skip_serializing_if = "WriteCondition::is_none")]
    pub condition: WriteCondition,
}

/// The parameters of a mutating request, stored in `journal.request`. Recovery reads them back.
/// They are what the caller asked for; what the executor learned while running (the source it
/// pinned, how far a move got) is recorded separately as the row's [`OpProgress`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpRequest {
    /// A single-request put.
    Put(PutRequest),
    /// A multipart put from a source that is read once, in order.
    PutMultipart(MultipartRequest),
    /// A delete.
    Delete(DeleteRequest),
    /// A copy.
    Copy(TransferRequest),
    /// A move.
    Move(TransferRequest),
}

/// A single-request put (the journal's JSON of [`OpRequest::Put`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Filestore path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Sha256Digest,
    /// Content-Type sent to the store.
    pub content_type: Option<String>,
    /// Conditions on the path.
    #[serde(default, skip_serializing_if = "WriteCondition::is_none")]
    pub condition: WriteCondition,
    /// User metadata stored with the object.
    #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
    pub metadata: UserMetadata,
}

/// A multipart put (the journal's JSON of [`OpRequest::PutMultipart`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartRequest {
    /// Filestore path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Size in bytes, when known up front.
    pub size: Option<u64>,
    /// Where the bytes come from; a file can be re-read to resume after a crash.
    pub source: UploadSource,
    /// Content-Type sent to the store.
    pub content_type: Option<String>,
    /// Conditions on the path.
    #[serde(default, skip_serializing_if = "WriteCondition::is_none")]
    pub condition: WriteCondition,
    /// User metadata stored with the object.
    #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
    pub metadata: UserMetadata,
}

/// A delete (the journal's JSON of [`OpRequest::Delete`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Filestore path.
    pub path: String,
    /// Object key.
    pub key: String,
}

impl OpRequest {
    /// The operation kind.
    pub fn kind(&self) -> OpKind {
        match self {
            OpRequest::Put(_) | OpRequest::PutMultipart(_) => OpKind::Put,
            OpRequest::Delete(_) => OpKind::Delete,
            OpRequest::Copy(_) => OpKind::Copy,
            OpRequest::Move(_) => OpKind::Move,
        }
    }

    /// The target path.
    pub fn path(&self) -> &str {
        match self {
            OpRequest::Put(r) => &r.path,
            OpRequest::PutMultipart(r) => &r.path,
            OpRequest::Delete(r) => &r.path,
            OpRequest::Copy(t) | OpRequest::Move(t) => &t.path,
        }
    }

    /// The paths the operation holds, as (mount, path), `mount` being the mount whose journal
    /// records it: its own, and its source's for a copy / move.
    pub fn paths(&self, mount: &str) -> Vec<(String, String)> {
        let mut paths = vec![(mount.to_owned(), self.path().to_owned())];
        if let Some(s) = self.source() {
            paths.push((s.mount.clone(), s.path.clone()));
        }
        paths
    }

    /// The target key.
    pub fn key(&self) -> &str {
        match self {
            OpRequest::Put(r) => &r.key,
            OpRequest::PutMultipart(r) => &r.key,
            OpRequest::Delete(r) => &r.key,
            OpRequest::Copy(t) | OpRequest::Move(t) => &t.key,
        }
    }

    /// The conditions on the target path.
    pub fn condition(&self) -> WriteCondition {
        match self {
            OpRequest::Put(r) => r.condition,
            OpRequest::PutMultipart(r) => r.condition,
            OpRequest::Delete(_) => WriteCondition::default(),
            OpRequest::Copy(t) | OpRequest::Move(t) => t.condition,
        }
    }

    /// The source of a copy / move.
    pub fn source(&self) -> Option<&SourceRef> {
        match self {
            OpRequest::Copy(t) | OpRequest::Move(t) => Some(&t.source),
            _ => None,
        }
    }

    /// A stable digest of the parameters: the same request always has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        // serde_json writes struct fields in declaration order, so the encoding is canonical.
        let bytes = serde_json::to_vec(self).expect("OpRequest always serialises");
        hex::encode(Sha256::digest(&bytes))
    }
}

/// The source object as a copy / move pinned it before acting: the copy is made from exactly
/// this version (by ETag) and proven against this SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedSource {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 recorded in the source's node.
    pub sha256: Sha256Digest,
    /// ETag of the source object.
    pub etag: String,
    /// Generation of the source node.
    pub generation: i64,
    /// User metadata of the source node, given to the copy.
    #[serde(default, skip_serializing_if = "UserMetadata::is_empty")]
    pub user_metadata: UserMetadata,
}

/// How far a copy / move / multipart put got, recorded on its journal row (`journal.progress`) after each step so
/// recovery continues from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum OpProgress {
    /// The source was read from `nodes` and pinned; nothing was written yet.
    SourcePinned {
        /// The pinned source.
        source: PinnedSource,
    },
    /// The destination holds a verified copy.
    Copied {
        /// The pinned source.
        source: PinnedSource,
        /// The verified destination.
        dest: NodeMeta,
    },
    /// (Move) the source object was deleted and verified gone; only the commit is left.
    SourceDeleted {
        /// The pinned source.
        source: PinnedSource,
        /// The verified destination.
        dest: NodeMeta,
    },
    /// (Multipart put) every part was accepted: the content's size and SHA-256, recorded before
    /// CompleteMultipartUpload, so that recovery can prove a completed object carrying this
    /// row's marker without reading its source again (a stream cannot be read again, a file may
    /// have changed since).
    Completing {
        /// Bytes uploaded.
        size: u64,
        /// SHA-256 of the whole content.
        sha256: crate::digest::Sha256Digest,
    },
}

impl OpProgress {
    /// The phase name, for logs and failpoints.
    pub fn phase(&self) -> &'static str {
        match self {
            OpProgress::SourcePinned { .. } => "source_pinned",
            OpProgress::Copied { .. } => "copied",
            OpProgress::SourceDeleted { .. } => "source_deleted",
            OpProgress::Completing { .. } => "completing",
        }
    }
}

/// A new journal intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIntent {
    /// Mount name.
    pub mount: String,
    /// Idempotency key (unique per mount).
    pub idempotency_key: String,
    /// The request.
    pub request: OpRequest,
    /// `request.fingerprint()`, computed once per request.
    pub fingerprint: String,
    /// Identifies this call: a begin sent again after the acknowledgement of its transaction was
    /// lost finds the row it wrote (pending, with this token) and goes ahead instead of taking it
    /// for another call's.
    pub token: uuid::Uuid,
    /// Progress recorded with the intent: a copy / move's pinned source (read before the intent
    /// is written), so that pinning costs no write of its own.
    pub progress: Option<OpProgress>,
}

/// A journal row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Row id.
    pub id: i64,
    /// Mount name.
    pub mount: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Fingerprint of the request.
    pub fingerprint: String,
    /// State.
    pub state: JournalState,
    /// Attempts so far.
    pub attempts: i32,
    /// The request.
    pub request: OpRequest,
    /// How far a copy / move got.
    pub progress: Option<OpProgress>,
    /// Result when committed.
    pub result: Option<OpResult>,
    /// Error when failed.
    pub error: Option<String>,
    /// Time since the row last changed (by the database's clock).
    pub idle: std::time::Duration,
}

/// What recording an intent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentOutcome {
    /// A new (or re-armed failed) entry: go ahead.
    Started {
        /// Journal row id.
        journal_id: i64,
    },
    /// A failed move re-armed with the step it kept: it had deleted its source, so it cannot be
    /// made again, only finished (the destination proven again, then committed). The engine
    /// compares the kept pin with this call's before it goes on.
    Resumed {
        /// Journal row id.
        journal_id: i64,
        /// The step the row kept (`source_deleted`).
        progress: Box<OpProgress>,
    },
    /// An entry with this key already exists and was not re-armed.
    Existing(Box<JournalEntry>),
}

/// How a commit changes the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// Create or replace the node.
    Upsert(NodeMeta),
    /// Remove the node.
    Remove,
}

/// Everything one commit transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    /// Journal row to mark committed.
    pub journal_id: i64,
    /// Mount name.
    pub mount: String,
    /// Operation.
    pub op: OpKind,
    /// Path.
    pub path: String,
    /// Object key.
    pub key: String,
    /// Node change.
    pub change: NodeChange,
    /// The source of a copy / move; for a move its node is removed in the same transaction.
    pub source: Option<SourceRef>,
    /// The multipart upload this commit completes (marked `completed` in the same transaction).
    pub upload_id: Option<String>,
    /// The destination node's generation this operation was conditioned on (checked again in
    /// the commit transaction).
    pub condition: WriteCondition,
}

impl CommitRecord {
    /// The mounts whose streams get an event for this commit: the record's own, and the
    /// source's when a move crosses mounts.
    pub fn event_mounts(&self) -> Vec<&str> {
        let mut v = vec![self.mount.as_str()];
        if let (OpKind::Move, Some(s)) = (self.op, &self.source) {
            if s.mount != self.mount {
                v.push(&s.mount);
            }
        }
        v
    }

    /// The caller's result and the change events of this commit (one per mount in
    /// [`CommitRecord::event_mounts`], each with its own id; the first is the result's), at
    /// `generation`. Every [`crate::ports::MetaStore`] builds them here, so they agree.
    pub fn outcome(&self, generation: i64) -> (OpResult, Vec<(String, ChangeEvent)>) {
        let node = match &self.change {
            NodeChange::Upsert(m) => Some(m.clone()),
            NodeChange::Remove => None,
        };
        let time = Utc::now();
        let events: Vec<(String, ChangeEvent)> = self
            .event_mounts()
            .into_iter()
            .map(|stream_mount| {
                let event = ChangeEvent {
                    v: EVENT_VERSION,
                    event_id: Uuid::new_v4(),
                    mount: self.mount.clone(),
                    op: self.op,
                    path: self.path.clone(),
                    source_mount: self.source.as_ref().map(|s| s.mount.clone()),
                    source_path: self.source.as_ref().map(|s| s.path.clone()),
                    key: self.key.clone(),
                    size: node.as_ref().map(|n| n.size),
                    etag: node.as_ref().map(|n| n.etag.clone()),
                    sha256: node.as_ref().map(|n| n.sha256),
                    generation,
                    journal_id: self.journal_id,
                    time,
                };
                (stream_mount.to_owned(), event)
            })
            .collect();
        let result = OpResult {
            journal_id: self.journal_id,
            op: self.op,
            mount: self.mount.clone(),
            path: self.path.clone(),
            key: self.key.clone(),
            source: self.source.clone(),
            node,
            generation,
            event_id: events[0].1.event_id,
        };
        (result, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Journal rows written when the requests were struct variants read back the same, and a
    /// request keeps its fingerprint (a call sent again after an upgrade joins its row).
    #[test]
    fn the_journal_json_of_a_request_is_unchanged() {
        let put = OpRequest::Put(PutRequest {
            path: "a/b.txt".into(),
            key: "p/a/b.txt".into(),
            size: 3,
            sha256: Sha256Digest::of(b"abc"),
            content_type: None,
            condition: WriteCondition::default(),
            metadata: UserMetadata::default(),
        });
        let json = r#"{"op":"put","path":"a/b.txt","key":"p/a/b.txt","size":3,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","content_type":null}"#;
        assert_eq!(serde_json::to_string(&put).unwrap(), json);
        assert_eq!(serde_json::from_str::<OpRequest>(json).unwrap(), put);
        let delete = OpRequest::Delete(DeleteRequest {
            path: "x".into(),
            key: "p/x".into(),
        });
        let json = r#"{"op":"delete","path":"x","key":"p/x"}"#;
        assert_eq!(serde_json::to_string(&delete).unwrap(), json);
        assert_eq!(serde_json::from_str::<OpRequest>(json).unwrap(), delete);
        let multipart = r#"{"op":"putmultipart","path":"big","key":"p/big","size":null,"source":{"kind":"stream"},"content_type":"text/plain","condition":{"if_none_match":true,"if_generation":null}}"#;
        let parsed = serde_json::from_str::<OpRequest>(multipart);
        assert!(
            matches!(&parsed, Ok(OpRequest::PutMultipart(r)) if r.condition.if_none_match && r.path == "big"),
            "{parsed:?}"
        );
    }
}
