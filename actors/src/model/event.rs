//! Change events: the outbox's payload, published to Redis.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::digest::Sha256Digest;

use super::*;

/// A change event, as stored in `outbox.payload` and published to Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Payload version, [`EVENT_VERSION`].
    pub v: u32,
    /// Stable id; a redelivery carries the same id.
    pub event_id: Uuid,
    /// Mount name.
    pub mount: String,
    /// Operation.
    pub op: OpKind,
    /// Filestore path.
    pub path: String,
    /// Source mount for copy / move.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_mount: Option<String>,
    /// Source path for copy / move.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_path: Option<String>,
    /// Object key.
    pub key: String,
    /// Size (absent for deletes).
    pub size: Option<u64>,
    /// ETag (absent for deletes).
    pub etag: Option<String>,
    /// SHA-256 (absent for deletes).
    pub sha256: Option<Sha256Digest>,
    /// Generation after the change.
    pub generation: i64,
    /// Journal row id.
    pub journal_id: i64,
    /// Commit time.
    pub time: DateTime<Utc>,
}

/// Largest event payload a watcher accepts, in bytes (a real one is well under 4 KiB: two paths and
/// a key of at most 1 KiB each, plus fixed fields).
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// Why an event payload was refused by [`ChangeEvent::decode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Longer than [`MAX_EVENT_BYTES`].
    #[error("event payload is {len} bytes, at most {MAX_EVENT_BYTES}")]
    TooLarge {
        /// Payload length.
        len: usize,
    },
    /// Not UTF-8 JSON of the event's shape.
    #[error("event payload is not a change event: {0}")]
    Malformed(String),
    /// A version this code does not know.
    #[error("event version {v} is not supported (this build reads version {EVENT_VERSION})")]
    Version {
        /// The payload's `v`.
        v: u32,
    },
    /// A field out of its domain.
    #[error("event field '{field}' {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ChangeEvent {
    /// The payload as stored in the outbox and published (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a change event always serialises")
    }

    /// Parses and checks a payload read from Redis or the outbox, for watchers: the JSON shape,
    /// the version, and every field a consumer might act on (mount name, paths, key, generation,
    /// journal id). A watcher must not trust a stream other processes can write to.
    pub fn decode(payload: &[u8]) -> Result<ChangeEvent, EventError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { len: payload.len() });
        }
        let e: ChangeEvent =
            serde_json::from_slice(payload).map_err(|e| EventError::Malformed(e.to_string()))?;
        if e.v != EVENT_VERSION {
            return Err(EventError::Version { v: e.v });
        }
        let field = |field: &'static str, reason: String| EventError::Field { field, reason };
        let mount_ok = |m: &str| {
            (1..=128).contains(&m.len())
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !mount_ok(&e.mount) {
            return Err(field("mount", "is not a mount name".into()));
        }
        crate::path::FsPath::parse(&e.path).map_err(|r| field("path", r.to_string()))?;
        match (&e.source_mount, &e.source_path) {
            (None, None) => {}
            (Some(m), Some(p)) if matches!(e.op, OpKind::Copy | OpKind::Move) => {
                if !mount_ok(m) {
                    return Err(field("source_mount", "is not a mount name".into()));
                }
                crate::path::FsPath::parse(p).map_err(|r| field("source_path", r.to_string()))?;
            }
            _ => {
                return Err(field(
                    "source_path",
                    "source_mount and source_path come together, on copy and move only".into(),
                ))
            }
        }
        if e.key.is_empty() || e.key.len() > crate::path::MAX_KEY_BYTES {
            return Err(field("key", format!("is {} bytes", e.key.len())));
        }
        if e.generation < 0 || e.journal_id <= 0 {
            return Err(field(
                "generation",
                format!(
                    "generation {} / journal_id {} out of range",
                    e.generation, e.journal_id
                ),
            ));
        }
        Ok(e)
    }
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Outbox id (commit order within the database).
    pub id: i64,
    /// The event.
    pub event: ChangeEvent,
}

/// One outbox row as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxRow {
    /// An event this version of the executor reads.
    Event(OutboxEvent),
    /// A row whose payload this version cannot read as an event — written by a newer version
    /// (an operation kind it does not know) or edited by hand. The relay publishes it as stored
    /// instead of stopping at it: every event after it still reaches Redis.
    Unreadable {
        /// Outbox id.
        id: i64,
        /// The row's `event_id` column.
        event_id: uuid::Uuid,
        /// The payload as stored (JSON).
        payload: String,
        /// Why it could not be read.
        reason: String,
    },
}

impl OutboxRow {
    /// The row's outbox id.
    pub fn id(&self) -> i64 {
        match self {
            OutboxRow::Event(e) => e.id,
            OutboxRow::Unreadable { id, .. } => *id,
        }
    }
}
