//! Which AWS errors a retry cannot fix. A record whose step hits one of these ends its execution
//! `FAILED` with the cause instead of being retried until the stream gives up on it.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Error codes that no retry fixes, whichever service answered: a request the service refuses
/// as malformed or too large, a caller that is not allowed, a thing that does not exist.
const PERMANENT: [&str; 12] = [
    "ValidationException",
    "AccessDeniedException",
    "AccessDenied",
    "UnauthorizedOperation",
    "ResourceNotFoundException",
    "NoSuchKey",
    "NoSuchBucket",
    "InvalidParameterException",
    "InvalidRequestException",
    "DecryptionFailure",
    "ItemCollectionSizeLimitExceededException",
    "MalformedPolicyDocument",
];

/// Whether an error with this code is permanent (see [`PERMANENT`]). A transaction cancelled
/// for a `ValidationError` reason is permanent too (its message names the reason).
pub fn is_permanent(code: Option<&str>, message: Option<&str>) -> bool {
    match code {
        Some("TransactionCanceledException") => {
            message.is_some_and(|m| m.contains("ValidationError"))
        }
        Some(c) => PERMANENT.contains(&c),
        None => false,
    }
}

/// One readable line for a failed AWS call, whichever service: the service's code and message
/// when it answered; when it could not be reached, the root cause (such as `Connection refused
/// (os error 111)`) instead of the SDK's nested debug text.
pub fn sdk_error_text<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(se) => match (se.err().code(), se.err().message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => DisplayErrorContext(e).to_string(),
        },
        SdkError::DispatchFailure(d) => {
            let what = if d.is_timeout() {
                "timed out"
            } else if d.is_io() {
                "cannot connect"
            } else {
                "the request was not sent"
            };
            match d.as_connector_error() {
                Some(c) => format!("{what}: {}", root_cause(c)),
                None => format!("{what}: {}", DisplayErrorContext(e)),
            }
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        _ => DisplayErrorContext(e).to_string(),
    }
}

/// The innermost error of a chain.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::is_permanent;

    #[test]
    fn refusals_are_permanent_and_throttles_are_not() {
        for c in [
            "ValidationException",
            "AccessDeniedException",
            "AccessDenied",
            "NoSuchKey",
        ] {
            assert!(is_permanent(Some(c), None), "{c}");
        }
        for c in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "SlowDown",
            "InternalServerError",
            "ServiceUnavailable",
        ] {
            assert!(!is_permanent(Some(c), None), "{c}");
        }
        assert!(!is_permanent(None, None));
        assert!(is_permanent(
            Some("TransactionCanceledException"),
            Some(
                "Transaction cancelled, please refer cancellation reasons for specific reasons [ValidationError]"
            )
        ));
        assert!(!is_permanent(
            Some("TransactionCanceledException"),
            Some("Transaction cancelled [ConditionalCheckFailed, None]")
        ));
    }
}
