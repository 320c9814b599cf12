//! The engine's [`Effects`] on real services: token buckets in Redis, `http` master rules over
//! HTTP.

use std::sync::Arc;

use rulestream_core::model::MasterKind;
use rulestream_core::ports::{EffectError, Effects};
use serde_json::Value;

use crate::limiter::RedisLimiter;
use crate::webhooks::Http;

/// Effects of a live execution.
pub struct AwsEffects {
    limiter: Arc<RedisLimiter>,
    http: Arc<Http>,
}

impl AwsEffects {
    /// Effects backed by `limiter` and `http`.
    pub fn new(limiter: Arc<RedisLimiter>, http: Arc<Http>) -> AwsEffects {
        AwsEffects { limiter, http }
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
        _rule: &str,
        kind: MasterKind,
        target: &str,
        payload: &Value,
        timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        if kind == MasterKind::Http {
            let bytes =
                serde_json::to_vec(payload).map_err(|e| EffectError::Failed(e.to_string()))?;
            return self.http.post(target, bytes, &[], timeout_ms).await;
        }
        // `lambda` rules are not wired yet (see the issue notes): the rule errors, so its
        // `on_error` decides.
        Err(EffectError::Unsupported(format!(
            "the orchestrator does not call master rules of kind {kind:?} yet ({} `{target}`)",
            kind.target_name()
        )))
    }
}
