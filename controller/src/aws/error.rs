//! The one place where an SDK error becomes a [`CallError`]: what kind of failure it is
//! (and so whether a later retry may help), with the service's own code and message.
//!
//! The SDK has already retried throttling, timeouts and 5xx (standard retry mode) by the
//! time an error reaches us; the kind decides what the reconciler does next.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::ErrorKind as RetryKind;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ports::{CallError, ErrorKind};

/// Codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "SlowDown",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
];

/// Codes of failures on the service's side that a later call may not meet.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "InternalServiceError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
];

/// Codes of missing objects, buckets and identities.
const NOT_FOUND: &[&str] = &["NoSuchKey", "NoSuchBucket", "NotFound", "NotFoundException"];

/// Codes of refused credentials or permissions.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
    "AccountSuspendedException",
    "SendingPausedException",
];

/// Codes of requests the service refused as they were written.
const INVALID: &[&str] = &[
    "ValidationError",
    "ValidationException",
    "InvalidRequest",
    "InvalidArgument",
    "InvalidInput",
    "MalformedXML",
    "BadRequestException",
    "MessageRejected",
    "InsufficientCapabilitiesException",
    "MailFromDomainNotVerifiedException",
];

/// What CloudFormation says, as a `ValidationError`, of a stack in the middle of another
/// operation: later, the same call may succeed.
const BUSY: &[&str] = &[
    "_IN_PROGRESS state and can not be updated",
    "_IN_PROGRESS state and cannot be updated",
    "is in UPDATE_IN_PROGRESS state",
    "is in CREATE_IN_PROGRESS state",
    "is in DELETE_IN_PROGRESS state",
    "is in UPDATE_ROLLBACK_IN_PROGRESS state",
    "is in UPDATE_COMPLETE_CLEANUP_IN_PROGRESS state",
];

/// What CloudFormation says, as a `ValidationError`, of permissions it was refused (its
/// service role, or the caller's).
const UNAUTHORIZED: &[&str] = &[
    "is not authorized to perform",
    "not authorized to perform",
    "is invalid or cannot be assumed",
    "AccessDenied",
];

/// The kind of a failure the service answered, from its code, its message and the HTTP
/// status. Codes are decided before statuses: a `SlowDown` is a 503 but means throttling.
pub fn kind_of(code: Option<&str>, message: &str, status: Option<u16>) -> ErrorKind {
    if let Some(code) = code {
        if THROTTLING.contains(&code) {
            return ErrorKind::Throttled;
        }
        if TRANSIENT.contains(&code) {
            return ErrorKind::Transient;
        }
        if code == "AlreadyExistsException" || code == "AlreadyExists" {
            return ErrorKind::AlreadyExists;
        }
        // EC2 spells a missing thing `InvalidInstanceID.NotFound`, `InvalidVpcID.NotFound`, …
        if NOT_FOUND.contains(&code) || code.ends_with(".NotFound") {
            return ErrorKind::NotFound;
        }
        // CloudFormation answers a missing stack with a plain ValidationError.
        if code == "ValidationError" && message.contains("does not exist") {
            return ErrorKind::NotFound;
        }
        // ... and a stack busy with another operation, and refused permissions, too.
        if code == "ValidationError" {
            if BUSY.iter().any(|m| message.contains(m)) {
                return ErrorKind::Transient;
            }
            if UNAUTHORIZED.iter().any(|m| message.contains(m)) {
                return ErrorKind::Denied;
            }
        }
        if DENIED.contains(&code) {
            return ErrorKind::Denied;
        }
        if INVALID.contains(&code) || code.starts_with("InvalidParameter") {
            return ErrorKind::Invalid;
        }
    }
    match status {
        Some(429) => ErrorKind::Throttled,
        Some(500..=599) => ErrorKind::Transient,
        Some(404) => ErrorKind::NotFound,
        Some(401 | 403) => ErrorKind::Denied,
        Some(400 | 413 | 414 | 422) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

/// Classifies a failed SDK call of `service`'s `operation`.
pub fn classify<E>(
    service: &'static str,
    operation: &'static str,
    err: &SdkError<E, HttpResponse>,
) -> CallError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let described = || DisplayErrorContext(err).to_string();
    let (kind, code, message) = match err {
        SdkError::ServiceError(service_err) => {
            let code = service_err.err().code().map(str::to_owned);
            let message = service_err
                .err()
                .message()
                .map(str::to_owned)
                .unwrap_or_else(described);
            let status = service_err.raw().status().as_u16();
            let kind = kind_of(code.as_deref(), &message, Some(status));
            // Without a code (S3's HEAD, for instance), the status line is all we have.
            let code = code.or_else(|| Some(status.to_string()));
            (kind, code, message)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Transient, None, described()),
        SdkError::DispatchFailure(failure) => {
            let kind = if caused_by_credentials(err) {
                ErrorKind::Denied
            } else if failure.is_user() {
                ErrorKind::Other
            } else {
                match failure.as_other() {
                    Some(RetryKind::ThrottlingError) => ErrorKind::Throttled,
                    Some(RetryKind::ClientError) => ErrorKind::Other,
                    _ => ErrorKind::Transient,
                }
            };
            (kind, None, described())
        }
        // The answer could not be read (cut off, garbled): asking again may work.
        SdkError::ResponseError(_) => (ErrorKind::Transient, None, described()),
        // The request could not be built: our input, not the service; retrying cannot help.
        SdkError::ConstructionFailure(_) => (ErrorKind::Other, None, described()),
        _ => (ErrorKind::Other, None, described()),
    };
    CallError {
        service,
        operation,
        kind,
        code,
        message,
    }
}

/// A failure found on our side of a call that the service answered: a body that could not
/// be read, a field the answer should have had, a request we could not build.
pub fn local(
    service: &'static str,
    operation: &'static str,
    kind: ErrorKind,
    message: impl Into<String>,
) -> CallError {
    CallError {
        service,
        operation,
        kind,
        code: None,
        message: message.into(),
    }
}

/// Whether the credential chain failed (no credentials, expired, refused by STS): the call
/// never reached the service.
fn caused_by_credentials(err: &(dyn StdError + 'static)) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.is::<CredentialsError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksError;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::operation::head_object::HeadObjectError;
    use aws_sdk_s3::types::error::NoSuchKey;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("a valid status"), SdkBody::empty())
    }

    fn s3_error(
        status: u16,
        code: Option<&str>,
        message: &str,
    ) -> SdkError<GetObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message(message);
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(GetObjectError::generic(meta.build()), response(status))
    }

    fn cfn_error(code: &str, message: &str) -> SdkError<DescribeStacksError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(DescribeStacksError::generic(meta), response(400))
    }

    fn s3_kind(status: u16, code: &str) -> ErrorKind {
        classify("s3", "GetObject", &s3_error(status, Some(code), "m")).kind
    }

    #[test]
    fn throttling_codes_are_throttled_whatever_the_status() {
        for (status, code) in [
            (400, "Throttling"),
            (400, "ThrottlingException"),
            (503, "SlowDown"),
            (503, "RequestLimitExceeded"),
            (429, "TooManyRequestsException"),
        ] {
            assert_eq!(s3_kind(status, code), ErrorKind::Throttled, "{code}");
        }
        assert_eq!(
            classify("s3", "GetObject", &s3_error(429, None, "")).kind,
            ErrorKind::Throttled
        );
    }

    #[test]
    fn server_errors_are_transient() {
        assert_eq!(s3_kind(500, "InternalError"), ErrorKind::Transient);
        assert_eq!(s3_kind(503, "ServiceUnavailable"), ErrorKind::Transient);
        assert_eq!(s3_kind(502, "SomethingNew"), ErrorKind::Transient);
    }

    #[test]
    fn missing_keys_buckets_and_stacks_are_not_found() {
        let modeled = SdkError::service_error(
            GetObjectError::NoSuchKey(
                NoSuchKey::builder()
                    .message("The specified key does not exist.")
                    .meta(
                        ErrorMetadata::builder()
                            .code("NoSuchKey")
                            .message("The specified key does not exist.")
                            .build(),
                    )
                    .build(),
            ),
            response(404),
        );
        let e = classify("s3", "GetObject", &modeled);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.code.as_deref(), Some("NoSuchKey"));
        assert_eq!(e.message, "The specified key does not exist.");

        assert_eq!(s3_kind(404, "NoSuchBucket"), ErrorKind::NotFound);
        assert_eq!(
            classify(
                "ec2",
                "DescribeInstances",
                &s3_error(400, Some("InvalidInstanceID.NotFound"), "m")
            )
            .kind,
            ErrorKind::NotFound
        );

        let head = SdkError::service_error(
            HeadObjectError::generic(ErrorMetadata::builder().build()),
            response(404),
        );
        let e = classify("s3", "HeadObject", &head);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.code.as_deref(),
            Some("404"),
            "the status stands in for a code"
        );

        let stack = cfn_error("ValidationError", "Stack with id fd-alice-x does not exist");
        let e = classify("cloudformation", "DescribeStacks", &stack);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.code.as_deref(), Some("ValidationError"));
        assert_eq!(e.message, "Stack with id fd-alice-x does not exist");
    }

    #[test]
    fn an_existing_stack_is_already_exists() {
        let e = classify(
            "cloudformation",
            "CreateStack",
            &cfn_error(
                "AlreadyExistsException",
                "Stack [fd-alice-x] already exists",
            ),
        );
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        assert!(!e.retryable());
    }

    #[test]
    fn refused_input_is_invalid() {
        for code in [
            "ValidationError",
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "MessageRejected",
        ] {
            assert_eq!(
                classify(
                    "cloudformation",
                    "CreateStack",
                    &cfn_error(code, "Parameter X is bad")
                )
                .kind,
                ErrorKind::Invalid,
                "{code}"
            );
        }
        assert_eq!(s3_kind(400, "SomethingNew"), ErrorKind::Invalid);
    }

    #[test]
    fn a_busy_stack_or_a_refused_role_is_never_the_users_mistake() {
        let kind = |m: &str| {
            classify(
                "cloudformation",
                "UpdateStack",
                &cfn_error("ValidationError", m),
            )
            .kind
        };
        assert_eq!(
            kind(
                "Stack:arn:aws:cloudformation:eu-west-1:1:stack/fd-alice-x/1 is in UPDATE_IN_PROGRESS state and can not be updated."
            ),
            ErrorKind::Transient
        );
        assert_eq!(
            kind("Role arn:aws:iam::1:role/fd-stacks is invalid or cannot be assumed"),
            ErrorKind::Denied
        );
        assert_eq!(
            kind(
                "User: arn:aws:sts::1:assumed-role/flightdeck/x is not authorized to perform: iam:PassRole on resource: fd-stacks"
            ),
            ErrorKind::Denied
        );
        assert_eq!(
            kind("Parameter 'ComputeMaxNodes' must be a number."),
            ErrorKind::Invalid
        );
    }

    #[test]
    fn refused_credentials_are_denied() {
        for (status, code) in [
            (403, "AccessDenied"),
            (403, "UnauthorizedOperation"),
            (400, "ExpiredToken"),
            (403, "InvalidClientTokenId"),
            (403, "SomethingNew"),
        ] {
            assert_eq!(s3_kind(status, code), ErrorKind::Denied, "{code}");
        }
    }

    #[test]
    fn anything_else_is_other() {
        assert_eq!(s3_kind(409, "BucketNotEmpty"), ErrorKind::Other);
        assert_eq!(s3_kind(412, "PreconditionFailed"), ErrorKind::Other);
    }

    #[test]
    fn timeouts_and_connection_failures_are_transient() {
        let timeout: SdkError<GetObjectError, HttpResponse> =
            SdkError::timeout_error(format!("no answer within {:?}", Duration::from_secs(3)));
        let e = classify("s3", "GetObject", &timeout);
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.retryable());

        let refused: SdkError<GetObjectError, HttpResponse> = SdkError::dispatch_failure(
            ConnectorError::io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()),
        );
        assert_eq!(
            classify("s3", "GetObject", &refused).kind,
            ErrorKind::Transient
        );

        let unread: SdkError<GetObjectError, HttpResponse> =
            SdkError::response_error("truncated body", response(200));
        assert_eq!(
            classify("s3", "GetObject", &unread).kind,
            ErrorKind::Transient
        );
    }

    #[test]
    fn missing_credentials_are_denied_not_retried() {
        let err: SdkError<GetObjectError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(CredentialsError::not_loaded("no providers in chain")),
                None,
            ));
        let e = classify("s3", "GetObject", &err);
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(!e.retryable());
    }

    #[test]
    fn a_request_that_cannot_be_built_is_not_retried() {
        let err: SdkError<GetObjectError, HttpResponse> =
            SdkError::construction_failure("bucket must be set");
        let e = classify("s3", "GetObject", &err);
        assert_eq!(e.kind, ErrorKind::Other);
        assert!(!e.retryable());
        assert!(e.message.contains("bucket must be set"), "{}", e.message);
    }
}
