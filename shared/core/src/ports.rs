//! Ports: what the engine asks of the outside world, as small capability traits. Adapters live
//! in `rulestream-aws`; dry-runs use [`DryRun`].

use std::future::Future;

use serde_json::Value;

use crate::model::MasterKind;

/// A side effect that could not be performed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EffectError {
    /// The backing service could not be reached or failed; retrying may help.
    #[error("{0} is unavailable")]
    Unavailable(String),
    /// The call was made and refused or answered wrongly; retrying will not help.
    #[error("{0}")]
    Failed(String),
    /// This runner does not perform that effect (e.g. calling a Lambda in a dry run).
    #[error("{0}")]
    Unsupported(String),
}

/// The effects a step may need while deciding.
pub trait Effects: Sync {
    /// Takes one token from the bucket `key` (refilling at `per_second`, holding at most `burst`).
    /// `Ok(false)` when the bucket is empty; `Err` when the limiter cannot be reached (the rule's
    /// `fail_open` then decides).
    fn take_token(
        &self,
        key: &str,
        per_second: f64,
        burst: f64,
    ) -> impl Future<Output = Result<bool, EffectError>> + Send;

    /// Calls a `lambda` (function name or ARN) or `http` (url) master rule with `payload`
    /// (`{input, ctx, client, params, execution}`); returns its answer `{"outcome", "set"}`.
    fn call_rule(
        &self,
        kind: MasterKind,
        target: &str,
        payload: &Value,
        timeout_ms: Option<u64>,
    ) -> impl Future<Output = Result<Value, EffectError>> + Send;
}

/// Effects for a dry run: no side effects. Every token is granted without touching a bucket, and
/// `lambda`/`http` master rules are not called (the rule errors, so its `on_error` shows).
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRun;

impl Effects for DryRun {
    async fn take_token(
        &self,
        _key: &str,
        _per_second: f64,
        _burst: f64,
    ) -> Result<bool, EffectError> {
        Ok(true)
    }

    async fn call_rule(
        &self,
        kind: MasterKind,
        target: &str,
        _payload: &Value,
        _timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        Err(EffectError::Unsupported(format!(
            "a dry run does not call {} `{target}`",
            match kind {
                MasterKind::Lambda => "Lambda function",
                MasterKind::Http => "HTTP endpoint",
                MasterKind::Cel => "CEL rule",
            }
        )))
    }
}
