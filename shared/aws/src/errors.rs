//! Which AWS errors a retry cannot fix. A record whose step hits one of these ends its execution
//! `FAILED` with the cause instead of being retried until the stream gives up on it.

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
