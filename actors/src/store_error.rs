//! What a failed S3 request means, decided in one place: its class ([`StoreErrorKind`], which the
//! S3 adapter's one table maps every error code and status to), whether a retry may succeed
//! ([`StoreError::is_retryable`]), and what the request may have done to the bucket
//! ([`Outcome::of`]): nothing (the store refused it, or it never left the process) or possibly
//! everything (a timeout, a reset, a 5xx, an answer lost after the store applied it).

/// Classes of object-store failure. Retryability is decided here, once, from the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// 404 / NoSuchKey.
    NotFound,
    /// 412: a conditional request did not hold.
    PreconditionFailed,
    /// 503 SlowDown and friends: back off and retry.
    Throttled,
    /// 5xx, connection reset, truncated response: retry.
    Transient,
    /// No response within the attempt timeout: retry.
    Timeout,
    /// The server computed another checksum than we sent (corruption on the wire): retry.
    ChecksumMismatch,
    /// Credentials or permissions: fix the configuration.
    AccessDenied,
    /// The mount's credentials could not be obtained (profile missing, role not assumable, STS
    /// unreachable): nothing was sent to the bucket; fix the mount's credential source.
    Credentials,
    /// Bucket missing, endpoint unreachable by name, or a request the store rejects
    /// (unknown storage class, checksum header not supported): fix the mount.
    Config,
    /// Any other 4xx.
    Rejected,
}

/// An object-store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct StoreError {
    /// Class.
    pub kind: StoreErrorKind,
    /// The store's error code, when it sent one.
    pub code: Option<String>,
    /// Human-readable detail.
    pub message: String,
}

impl StoreError {
    /// Builds an error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            code: None,
            message: message.into(),
        }
    }

    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Throttled
                | StoreErrorKind::Transient
                | StoreErrorKind::Timeout
                | StoreErrorKind::ChecksumMismatch
        )
    }
}

/// An S3 request the executor makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3Op {
    /// PutObject.
    PutObject,
    /// HeadObject.
    HeadObject,
    /// GetObject.
    GetObject,
    /// DeleteObject.
    DeleteObject,
    /// DeleteObjects (multi-object delete).
    DeleteObjects,
    /// ListObjectsV2.
    ListObjects,
    /// CopyObject.
    CopyObject,
    /// CreateMultipartUpload.
    CreateMultipartUpload,
    /// UploadPart.
    UploadPart,
    /// UploadPartCopy.
    UploadPartCopy,
    /// ListParts.
    ListParts,
    /// CompleteMultipartUpload.
    CompleteMultipartUpload,
    /// AbortMultipartUpload.
    AbortMultipartUpload,
    /// ListMultipartUploads.
    ListMultipartUploads,
}

impl S3Op {
    /// Whether the request can change what a key holds (an upload's parts and its abort do not,
    /// until Complete).
    pub fn changes_objects(self) -> bool {
        matches!(
            self,
            S3Op::PutObject
                | S3Op::DeleteObject
                | S3Op::DeleteObjects
                | S3Op::CopyObject
                | S3Op::CompleteMultipartUpload
        )
    }

    /// The name in logs, metrics (`op` label) and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            S3Op::PutObject => "PUT",
            S3Op::HeadObject => "HEAD",
            S3Op::GetObject => "GET",
            S3Op::DeleteObject => "DELETE",
            S3Op::DeleteObjects => "DeleteObjects",
            S3Op::ListObjects => "LIST",
            S3Op::CopyObject => "CopyObject",
            S3Op::CreateMultipartUpload => "CreateMultipartUpload",
            S3Op::UploadPart => "UploadPart",
            S3Op::UploadPartCopy => "UploadPartCopy",
            S3Op::ListParts => "ListParts",
            S3Op::CompleteMultipartUpload => "CompleteMultipartUpload",
            S3Op::AbortMultipartUpload => "AbortMultipartUpload",
            S3Op::ListMultipartUploads => "ListMultipartUploads",
        }
    }

    /// Whether the request changes the bucket (an object or an upload).
    pub fn mutates(self) -> bool {
        !matches!(
            self,
            S3Op::HeadObject
                | S3Op::GetObject
                | S3Op::ListObjects
                | S3Op::ListParts
                | S3Op::ListMultipartUploads
        )
    }

    /// The IAM permission the request needs, with the KMS permissions it needs under SSE-KMS.
    pub fn permission(self) -> &'static str {
        match self {
            S3Op::PutObject => {
                "s3:PutObject (and kms:GenerateDataKey on the mount's KMS key under SSE-KMS)"
            }
            S3Op::CreateMultipartUpload | S3Op::UploadPart | S3Op::CompleteMultipartUpload => {
                "s3:PutObject (and kms:GenerateDataKey plus kms:Decrypt on the mount's KMS key under SSE-KMS)"
            }
            S3Op::GetObject | S3Op::HeadObject => {
                "s3:GetObject (and kms:Decrypt for an SSE-KMS object; without s3:ListBucket a missing key also answers AccessDenied)"
            }
            S3Op::ListObjects => "s3:ListBucket on the bucket",
            S3Op::DeleteObject | S3Op::DeleteObjects => "s3:DeleteObject",
            S3Op::CopyObject | S3Op::UploadPartCopy => {
                "s3:GetObject on the source and s3:PutObject on the destination (and kms:Decrypt on the source's key, kms:GenerateDataKey on the destination's, under SSE-KMS)"
            }
            S3Op::ListParts => "s3:ListMultipartUploadParts",
            S3Op::AbortMultipartUpload => "s3:AbortMultipartUpload",
            S3Op::ListMultipartUploads => "s3:ListBucketMultipartUploads on the bucket",
        }
    }
}

impl std::fmt::Display for S3Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed request may have done to the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: a read, a request the store refused (4xx, a broken condition, a bad checksum),
    /// or one that never left the process (no credentials, a request that could not be built).
    NotApplied,
    /// Possibly everything: no answer in time, a reset connection, a 5xx or a throttling answer
    /// (an intermediary may answer so after the store applied the request), an answer that could
    /// not be read. What the bucket holds settles it, not the error.
    MaybeApplied,
}

impl Outcome {
    /// The outcome of one failed attempt of `op`.
    pub fn of(op: S3Op, e: &StoreError) -> Outcome {
        if !op.mutates() {
            return Outcome::NotApplied;
        }
        match e.kind {
            StoreErrorKind::Throttled | StoreErrorKind::Transient | StoreErrorKind::Timeout => {
                Outcome::MaybeApplied
            }
            StoreErrorKind::NotFound
            | StoreErrorKind::PreconditionFailed
            | StoreErrorKind::ChecksumMismatch
            | StoreErrorKind::AccessDenied
            | StoreErrorKind::Credentials
            | StoreErrorKind::Config
            | StoreErrorKind::Rejected => Outcome::NotApplied,
        }
    }

    /// The outcome of a request tried several times: maybe applied if any attempt may have been
    /// (an attempt refused with 412 after an earlier one timed out may have met that one's write).
    pub fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::MaybeApplied || other == Outcome::MaybeApplied {
            Outcome::MaybeApplied
        } else {
            Outcome::NotApplied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: StoreErrorKind) -> StoreError {
        StoreError::new(kind, "x")
    }

    #[test]
    fn a_refusal_applied_nothing_and_a_lost_answer_may_have_applied_everything() {
        use StoreErrorKind::*;
        for kind in [
            PreconditionFailed,
            AccessDenied,
            Credentials,
            Config,
            Rejected,
            ChecksumMismatch,
            NotFound,
        ] {
            assert_eq!(
                Outcome::of(S3Op::PutObject, &err(kind)),
                Outcome::NotApplied,
                "{kind:?}"
            );
        }
        for kind in [Timeout, Transient, Throttled] {
            assert_eq!(
                Outcome::of(S3Op::DeleteObject, &err(kind)),
                Outcome::MaybeApplied,
                "{kind:?}"
            );
            assert_eq!(
                Outcome::of(S3Op::HeadObject, &err(kind)),
                Outcome::NotApplied,
                "{kind:?}"
            );
        }
        assert_eq!(
            Outcome::MaybeApplied.and(Outcome::NotApplied),
            Outcome::MaybeApplied
        );
        assert_eq!(
            Outcome::NotApplied.and(Outcome::NotApplied),
            Outcome::NotApplied
        );
    }
}
