//! The engine's [`Effects`] on real services: token buckets in Redis.

use std::sync::Arc;

use rulestream_core::model::MasterKind;
use rulestream_core::ports::{EffectError, Effects};
use serde_json::Value;

use crate::limiter::RedisLimiter;

/// Effects of a live execution.
pub struct AwsEffects {
    limiter: Arc<RedisLimiter>,
}

impl AwsEffects {
    /// Effects backed by `limiter`.
    pub fn new(limiter: Arc<RedisLimiter>) -> AwsEffects {
        AwsEffects { limiter }
    }
}

impl Effects for AwsEffects {
    async fn take_token(
        &self,
        key: &str,
        per_second: f64,
        burst: f64,
    ) -> Result<bool, EffectError> {
        self.limiter
            .take(key, per_second, burst)
            .await
            .map_err(|e| {
                tracing::warn!(bucket = key, error = %e, "rate limiter unavailable");
                EffectError::Unavailable("rate limiter".into())
            })
    }

    async fn call_rule(
        &self,
        kind: MasterKind,
        target: &str,
        _payload: &Value,
        _timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        // Not wired yet (see the issue notes): the rule errors, so its `on_error` decides.
        Err(EffectError::Unsupported(format!(
            "the orchestrator does not call master rules of kind {kind:?} yet ({} `{target}`)",
            kind.target_name()
        )))
    }
}
