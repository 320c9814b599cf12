//! The engine's [`Effects`] on real services: token buckets in Redis, `http` master rules over
//! HTTP, `lambda` master rules through the Lambda Invoke API.

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
    lambda: aws_sdk_lambda::Client,
}

/// A master rule's `timeout_ms` when the catalog gives none (SPEC section 2).
pub const DEFAULT_RULE_TIMEOUT_MS: u64 = 3_000;
/// The longest a master rule may take.
pub const MAX_RULE_TIMEOUT_MS: u64 = 10_000;

impl AwsEffects {
    /// Effects backed by `limiter`, `http` and the Lambda client of `sdk` (its endpoint from
    /// `AWS_ENDPOINT_URL_LAMBDA` locally).
    pub fn new(
        limiter: Arc<RedisLimiter>,
        http: Arc<Http>,
        sdk: &aws_config::SdkConfig,
    ) -> AwsEffects {
        AwsEffects {
            limiter,
            http,
            lambda: aws_sdk_lambda::Client::new(sdk),
        }
    }

    /// Invokes a `lambda` master rule: the function's answer as JSON, or why there is none (a
    /// timeout, a function error, an answer that is not JSON). The payload and the function's
    /// error message are never part of the error: they may hold client data.
    async fn invoke(
        &self,
        function: &str,
        payload: &Value,
        timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        let ms = timeout_ms.unwrap_or(DEFAULT_RULE_TIMEOUT_MS);
        let bytes = serde_json::to_vec(payload).map_err(|e| EffectError::Failed(e.to_string()))?;
        let call = self
            .lambda
            .invoke()
            .function_name(function)
            .payload(aws_sdk_lambda::primitives::Blob::new(bytes))
            .send();
        let out = tokio::time::timeout(std::time::Duration::from_millis(ms), call)
            .await
            .map_err(|_| {
                EffectError::Failed(format!("lambda `{function}` did not answer within {ms} ms"))
            })?
            .map_err(|e| {
                use aws_sdk_lambda::error::ProvideErrorMetadata;
                let status = e.raw_response().map(|r| r.status().as_u16());
                EffectError::Failed(match e.as_service_error().and_then(|se| se.code()) {
                    // The service refused the call (no such function, not allowed...).
                    Some(code) => format!("lambda `{function}` cannot be invoked ({code})"),
                    // An answer without an error code: the function failed (an emulator answers
                    // a function error this way), or nothing answered at all.
                    None => match status {
                        Some(s) => format!("lambda `{function}` failed (HTTP {s})"),
                        None => format!("lambda `{function}` cannot be reached"),
                    },
                })
            })?;
        let body = out
            .payload()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default();
        if let Some(kind) = out.function_error() {
            let error_type = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("errorType")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "unknown".into());
            return Err(EffectError::Failed(format!(
                "lambda `{function}` failed ({kind}: {})",
                cut(&error_type, 120)
            )));
        }
        serde_json::from_slice(&body).map_err(|_| {
            EffectError::Failed(format!(
                "lambda `{function}` answered {} bytes that are not JSON",
                body.len()
            ))
        })
    }
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
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
        // Both kinds wait the catalog's `timeout_ms`, by default 3 s (SPEC section 2).
        let timeout_ms = Some(
            timeout_ms
                .unwrap_or(DEFAULT_RULE_TIMEOUT_MS)
                .min(MAX_RULE_TIMEOUT_MS),
        );
        if kind == MasterKind::Http {
            let bytes =
                serde_json::to_vec(payload).map_err(|e| EffectError::Failed(e.to_string()))?;
            return self.http.post(target, bytes, &[], timeout_ms).await;
        }
        if kind == MasterKind::Lambda {
            return self.invoke(target, payload, timeout_ms).await;
        }
        Err(EffectError::Unsupported(format!(
            "master rules of kind {kind:?} are not called ({} `{target}`)",
            kind.target_name()
        )))
    }
}
