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
            kind.target_name()
        )))
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// A service was unreachable, throttled or failed: the record is retried.
    #[error("transient: {0}")]
    Transient(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists but cannot be used (e.g. a flow version that fails validation).
    #[error("{0}")]
    Invalid(String),
}

/// Where flows, releases and client data come from (clients table, S3, STS + Secrets Manager).
pub trait FlowSource: Sync {
    /// The clients-table row of `(client_id, flow_id)`.
    fn client_flow(
        &self,
        client_id: &str,
        flow_id: &str,
    ) -> impl Future<Output = Result<crate::execution::ClientFlow, StoreError>> + Send;

    /// A compiled flow version (immutable, so cacheable forever). `Invalid` when it fails
    /// validation, with the reasons.
    fn flow_version(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
    ) -> impl Future<Output = Result<std::sync::Arc<crate::CompiledFlow>, StoreError>> + Send;

    /// The client's data, read in the client's own environment.
    fn client_data(
        &self,
        source: &crate::execution::DataSource,
    ) -> impl Future<Output = Result<Value, StoreError>> + Send;
}

/// Where executions are recorded and chained (executions and trigger tables).
pub trait ExecutionStore: Sync {
    /// Persists one step atomically: appends the trace line and either puts the next trigger row
    /// or finalises the execution, on condition that the execution is at `commit.seq` (seq 0: that
    /// it does not exist yet). `Ok(false)` when that condition fails: the step was already
    /// recorded by an earlier delivery, and nothing changed.
    fn commit(
        &self,
        trigger_table: &str,
        commit: &crate::execution::StepCommit,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// One `call_webhook` delivery of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `<execution_id>:<seq>:<action index>`, sent as the `Idempotency-Key` header: a retried
    /// step sends the same key, so the receiver can drop the repeat.
    pub idempotency_key: String,
    /// Where to POST.
    pub url: String,
    /// Secrets Manager id of the HMAC-SHA256 key that signs the body.
    pub secret_id: Option<String>,
    /// Request timeout.
    pub timeout_ms: Option<u64>,
    /// The JSON body.
    pub body: Value,
}

/// Delivers a step's webhooks.
pub trait Deliveries: Sync {
    /// POSTs `delivery` (signed when it has a secret). `Err` when the receiver could not be
    /// reached or did not answer 2xx: the step is retried with the same idempotency key.
    fn deliver(&self, delivery: &Delivery) -> impl Future<Output = Result<(), EffectError>> + Send;
}

impl<T: Deliveries + Send + Sync> Deliveries for std::sync::Arc<T> {
    fn deliver(&self, delivery: &Delivery) -> impl Future<Output = Result<(), EffectError>> + Send {
        (**self).deliver(delivery)
    }
}

/// Remembers which steps were recorded, so a redelivered stream record is recognised before it
/// runs its side effects again (rate-limit tokens, `http` rules, webhooks). A cache, not the
/// source of truth: the conditional write still decides, and when the ledger cannot answer the
/// step simply runs.
pub trait StepLedger: Sync {
    /// Whether step `seq` of `execution_id` is known to be recorded.
    fn recorded(&self, execution_id: &str, seq: u64) -> impl Future<Output = bool> + Send;

    /// Notes that step `seq` of `execution_id` is recorded.
    fn remember(&self, execution_id: &str, seq: u64) -> impl Future<Output = ()> + Send;
}

impl<T: StepLedger + Send + Sync> StepLedger for std::sync::Arc<T> {
    fn recorded(&self, execution_id: &str, seq: u64) -> impl Future<Output = bool> + Send {
        (**self).recorded(execution_id, seq)
    }

    fn remember(&self, execution_id: &str, seq: u64) -> impl Future<Output = ()> + Send {
        (**self).remember(execution_id, seq)
    }
}
