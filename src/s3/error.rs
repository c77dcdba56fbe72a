//! S3 error classification: one table from error code / HTTP status to a [`StoreErrorKind`], which
//! decides retryability.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;
use filestore_s3_actors::ports::{StoreError, StoreErrorKind};

/// Kind for an S3 error code, when the code alone decides.
pub(crate) fn kind_for_code(code: &str) -> Option<StoreErrorKind> {
    use StoreErrorKind::*;
    Some(match code {
        "NoSuchKey" | "NotFound" | "NoSuchUpload" => NotFound,
        "PreconditionFailed" => PreconditionFailed,
        // Rate limiting: back off, then retry.
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "RequestThrottled" => Throttled,
        // Server-side trouble that a later attempt may not see.
        "InternalError" | "ServiceUnavailable" | "RequestTimeout" | "OperationAborted" => Transient,
        // The body we sent does not match the checksum we sent: corrupted on the way, resend it.
        "BadDigest"
        | "InvalidDigest"
        | "XAmzContentSHA256Mismatch"
        | "XAmzContentChecksumMismatch" => ChecksumMismatch,
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "InvalidToken"
        | "AllAccessDisabled" => AccessDenied,
        // The mount asks for something this bucket or store does not do.
        "NoSuchBucket"
        | "InvalidBucketName"
        | "InvalidStorageClass"
        | "NotImplemented"
        | "KMS.NotFoundException"
        | "KMS.DisabledException"
        | "InvalidEncryptionAlgorithmError"
        | "AccessControlListNotSupported"
        | "PermanentRedirect"
        | "AuthorizationHeaderMalformed" => Config,
        _ => return None,
    })
}

fn kind_for_status(status: u16) -> StoreErrorKind {
    use StoreErrorKind::*;
    match status {
        404 => NotFound,
        412 => PreconditionFailed,
        403 => AccessDenied,
        429 | 503 => Throttled,
        500..=599 => Transient,
        _ => Rejected,
    }
}

/// A request carrying SHA-256 checksum headers that the store refused with a code stores use for
/// a header they do not accept: a configuration error of the mount (its `checksum` setting), not a
/// refusal of this one request. Other errors are returned as they are.
pub(crate) fn checksum_refusal(mut e: StoreError) -> StoreError {
    let header_refused = matches!(
        e.code.as_deref(),
        Some("InvalidRequest" | "InvalidArgument" | "NotImplemented" | "UnsupportedHeader")
    ) && matches!(e.kind, StoreErrorKind::Rejected | StoreErrorKind::Config);
    if header_refused {
        e.kind = StoreErrorKind::Config;
        e.message = format!(
            "{}; the request carried SHA-256 checksum headers (the mount's checksum = sha256): a store that does not accept them needs the mount's `checksum` set to `none`",
            e.message
        );
    }
    e
}

/// Whether `err` (or an error it wraps) is a credentials provider's failure.
fn credentials_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<CredentialsError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Classifies any aws-sdk-s3 operation error.
pub fn classify<E>(err: SdkError<E, Response>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut message = DisplayErrorContext(&err).to_string();
    if credentials_failed(&err) {
        // The request was never signed, so never sent: the mount's credential source failed.
        return StoreError {
            kind: StoreErrorKind::Credentials,
            code: None,
            message: format!("the mount's credentials could not be obtained: {message}"),
        };
    }
    let (kind, code) = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().map(str::to_owned);
            let status = se.raw().status().as_u16();
            let kind = code
                .as_deref()
                .and_then(kind_for_code)
                .unwrap_or_else(|| kind_for_status(status));
            // The store's own words; the full context (raw response included) only when it
            // sent no error code, e.g. an answer the SDK could not parse.
            if let Some(c) = &code {
                message = format!(
                    "HTTP {status} {c}: {}",
                    se.err().message().unwrap_or("(no message)")
                );
            }
            (kind, code)
        }
        SdkError::TimeoutError(_) => (StoreErrorKind::Timeout, None),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                StoreErrorKind::Timeout
            } else if d.is_user() {
                StoreErrorKind::Config
            } else {
                StoreErrorKind::Transient
            };
            (kind, None)
        }
        SdkError::ResponseError(_) => (StoreErrorKind::Transient, None),
        SdkError::ConstructionFailure(_) => (StoreErrorKind::Config, None),
        _ => (StoreErrorKind::Transient, None),
    };
    StoreError {
        kind,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_refusal_of_a_request_with_checksums_is_the_mounts_configuration() {
        let refused = StoreError {
            kind: StoreErrorKind::Rejected,
            code: Some("InvalidRequest".into()),
            message: "HTTP 400 InvalidRequest: x".into(),
        };
        let e = checksum_refusal(refused);
        assert_eq!(e.kind, StoreErrorKind::Config);
        assert!(
            e.message.contains("`checksum` set to `none`"),
            "{}",
            e.message
        );
        let too_large = StoreError {
            kind: StoreErrorKind::Rejected,
            code: Some("EntityTooLarge".into()),
            message: "HTTP 400 EntityTooLarge".into(),
        };
        assert_eq!(checksum_refusal(too_large).kind, StoreErrorKind::Rejected);
        let throttled = StoreError::new(StoreErrorKind::Throttled, "503");
        assert_eq!(checksum_refusal(throttled).kind, StoreErrorKind::Throttled);
    }

    #[test]
    fn codes_decide_before_status() {
        assert_eq!(kind_for_code("SlowDown"), Some(StoreErrorKind::Throttled));
        assert_eq!(kind_for_code("NoSuchBucket"), Some(StoreErrorKind::Config));
        assert_eq!(
            kind_for_code("NotImplemented"),
            Some(StoreErrorKind::Config)
        );
        assert_eq!(
            kind_for_code("BadDigest"),
            Some(StoreErrorKind::ChecksumMismatch)
        );
        assert_eq!(kind_for_code("Whatever"), None);
        assert_eq!(kind_for_status(503), StoreErrorKind::Throttled);
        assert_eq!(kind_for_status(502), StoreErrorKind::Transient);
        assert_eq!(kind_for_status(400), StoreErrorKind::Rejected);
    }
}
