//! The operations API's shapes shared by the server (`serve`) and the client (the CLI, and
//! forwarding between hosts): errors as JSON with a kind, a message and whether a retry may
//! succeed, and the headers that carry a call's options.

use chrono::{DateTime, Utc};
use filestore_s3_actors::Error;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

/// The header carrying a call's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How many times a call was forwarded already.
pub const FORWARDED: &str = "x-filestore-forwarded";
/// A put's condition on the node's generation (`PutMode::IfGeneration`).
pub const IF_GENERATION: &str = "x-filestore-if-generation";
/// The prefix of a put's user metadata headers (`x-filestore-meta-NAME: value`).
pub const META_PREFIX: &str = "x-filestore-meta-";
/// The executor that answered (the owner, after forwarding).
pub const ANSWERED_BY: &str = "x-filestore-answered-by";
/// The executor a forwarded call is meant for: any other that receives it (an address that now
/// belongs to another process, an advertised address that leads back to the sender) refuses it
/// with the retryable `misdirected` instead of running or forwarding it.
pub const FORWARD_TO: &str = "x-filestore-forward-to";

/// An error as the API sends it: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of error (the `Error` variant in snake case, or `unauthorized`, `bad_request`).
    pub kind: String,
    /// The error's message.
    pub message: String,
    /// Whether the same call (same idempotency key) may succeed later.
    pub retryable: bool,
    /// The mount, where the error names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The path, where the error names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `not_owner`: the lease holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `not_owner`: its lease's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// `precondition_failed`: what was expected and found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: WireError,
}

impl WireError {
    /// An error of the API itself (not of the executor).
    pub fn api(kind: &str, message: impl Into<String>) -> Self {
        WireError {
            kind: kind.into(),
            message: message.into(),
            retryable: false,
            mount: None,
            path: None,
            owner: None,
            until: None,
            reason: None,
        }
    }
}

/// An executor error as sent, with its HTTP status.
pub fn to_wire(e: &Error) -> (StatusCode, WireError) {
    let mut w = WireError::api("", e.to_string());
    w.retryable = e.is_retryable();
    let (status, kind) = match e {
        Error::InvalidPath { path, .. } => {
            w.path = Some(path.clone());
            (StatusCode::BAD_REQUEST, "invalid_path")
        }
        Error::UnknownMount { mount } => {
            w.mount = Some(mount.clone());
            (StatusCode::NOT_FOUND, "unknown_mount")
        }
        Error::MountDisabled { mount } => {
            w.mount = Some(mount.clone());
            (StatusCode::CONFLICT, "mount_disabled")
        }
        Error::InvalidMount(_) => (StatusCode::CONFLICT, "invalid_mount"),
        Error::NotFound { mount, path } => {
            w.mount = Some(mount.clone());
            w.path = Some(path.clone());
            (StatusCode::NOT_FOUND, "not_found")
        }
        Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Error::InvalidIdempotencyKey { .. } => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
        Error::IdempotencyConflict { mount, .. } => {
            w.mount = Some(mount.clone());
            (StatusCode::CONFLICT, "idempotency_conflict")
        }
        Error::InProgress { mount, .. } => {
            w.mount = Some(mount.clone());
            (StatusCode::SERVICE_UNAVAILABLE, "in_progress")
        }
        Error::PathPending { mount, path, .. } => {
            w.mount = Some(mount.clone());
            w.path = Some(path.clone());
            (StatusCode::SERVICE_UNAVAILABLE, "path_pending")
        }
        Error::Storage { .. } if w.retryable => (StatusCode::SERVICE_UNAVAILABLE, "storage"),
        Error::Storage { .. } => (StatusCode::BAD_GATEWAY, "storage"),
        Error::Unverified { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unverified"),
        Error::Metadata(_) if w.retryable => (StatusCode::SERVICE_UNAVAILABLE, "metadata"),
        Error::Metadata(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metadata"),
        Error::NotOwner {
            mount,
            owner,
            until,
        } => {
            w.mount = Some(mount.clone());
            w.owner = Some(owner.clone());
            w.until = Some(*until);
            (StatusCode::SERVICE_UNAVAILABLE, "not_owner")
        }
        Error::LeaseLost(_) => (StatusCode::SERVICE_UNAVAILABLE, "lease_lost"),
        Error::FeedExpired { mount, .. } => {
            w.mount = Some(mount.clone());
            (StatusCode::GONE, "feed_expired")
        }
        Error::Source { .. } => (StatusCode::BAD_REQUEST, "source"),
        Error::SourceChanged { .. } => (StatusCode::CONFLICT, "source_changed"),
        Error::ChecksumMismatch { mount, path, .. } => {
            w.mount = Some(mount.clone());
            w.path = Some(path.clone());
            (StatusCode::BAD_GATEWAY, "checksum_mismatch")
        }
        Error::Failed { .. } => (StatusCode::CONFLICT, "failed"),
        Error::PreconditionFailed {
            mount,
            path,
            reason,
        } => {
            w.mount = Some(mount.clone());
            w.path = Some(path.clone());
            w.reason = Some(reason.clone());
            (StatusCode::PRECONDITION_FAILED, "precondition_failed")
        }
        Error::MoveCannotFinish { mount, path, .. } => {
            w.mount = Some(mount.clone());
            w.path = Some(path.clone());
            (StatusCode::CONFLICT, "move_cannot_finish")
        }
        Error::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        Error::SettingsNotApplied { mount, .. } => {
            w.mount = Some(mount.clone());
            (StatusCode::CONFLICT, "settings_not_applied")
        }
        Error::Forwarded {
            kind, retryable, ..
        } => {
            // The owner's error passes through unchanged.
            w.kind = kind.clone();
            w.message = e.to_string();
            let status = if *retryable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            return (status, w);
        }
        Error::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "config"),
        Error::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "shutdown"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "other"),
    };
    w.kind = kind.into();
    (status, w)
}

/// An error received from `host`: the typed error where the wire carries all it needs, else
/// [`Error::Forwarded`] with the kind, the message and the owner's judgement of a retry.
pub fn from_wire(host: &str, w: WireError) -> Error {
    let mount = w.mount.clone().unwrap_or_default();
    let path = w.path.clone().unwrap_or_default();
    match w.kind.as_str() {
        "not_owner" => Error::NotOwner {
            mount,
            owner: w.owner.unwrap_or_default(),
            until: w.until.unwrap_or_else(Utc::now),
        },
        "not_found" => Error::NotFound { mount, path },
        "unknown_mount" => Error::UnknownMount { mount },
        "mount_disabled" => Error::MountDisabled { mount },
        "precondition_failed" => Error::PreconditionFailed {
            mount,
            path,
            reason: w.reason.unwrap_or(w.message),
        },
        "shutdown" => Error::Shutdown,
        _ => Error::Forwarded {
            host: host.to_owned(),
            kind: w.kind,
            message: w.message,
            retryable: w.retryable,
        },
    }
}

/// Percent-encodes a path for a URL, keeping its `/`.
pub fn encode_path(path: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(path, KEEP).to_string()
}

/// Percent-encodes one URL component (a mount name, a query value).
pub fn encode_component(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_survive_the_wire() {
        let until = Utc::now();
        let e = Error::NotOwner {
            mount: "m".into(),
            owner: "host-b".into(),
            until,
        };
        let (status, w) = to_wire(&e);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let json = serde_json::to_string(&ErrorBody { error: w }).unwrap();
        let back: ErrorBody = serde_json::from_str(&json).unwrap();
        match from_wire("http://b", back.error) {
            Error::NotOwner {
                mount,
                owner,
                until: u,
            } => {
                assert_eq!((mount.as_str(), owner.as_str(), u), ("m", "host-b", until));
            }
            other => panic!("{other:?}"),
        }
        let (status, w) = to_wire(&Error::IdempotencyConflict {
            mount: "m".into(),
            key: "k".into(),
        });
        assert_eq!(status, StatusCode::CONFLICT);
        let e = from_wire("http://b", w);
        assert!(
            matches!(&e, Error::Forwarded { kind, retryable: false, .. } if kind == "idempotency_conflict"),
            "{e:?}"
        );
        assert_eq!(encode_path("a b/c%d"), "a%20b/c%25d");
    }
}
