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
    /// (`{input, ctx, client, params, execution}`) for the flow's rule `rule`; returns its answer
    /// `{"outcome", "set"}`.
    fn call_rule(
        &self,
        rule: &str,
        kind: MasterKind,
        target: &str,
        payload: &Value,
        timeout_ms: Option<u64>,
    ) -> impl Future<Output = Result<Value, EffectError>> + Send;

    /// Whether these are a dry run's effects (no token is taken: a rate-limited rule says so).
    fn dry_run(&self) -> bool {
        false
    }
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
        rule: &str,
        kind: MasterKind,
        target: &str,
        _payload: &Value,
        _timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        // A URL shows as scheme://host[:port] only: its path or query may hold a key.
        let shown = match kind {
            MasterKind::Http => crate::engine::redact_url(target),
            _ => target.to_string(),
        };
        Err(EffectError::Unsupported(format!(
            "a dry run does not call {} `{shown}` (give rule `{rule}` an answer in the mocks)",
            kind.target_name()
        )))
    }

    fn dry_run(&self) -> bool {
        true
    }
}

/// A dry run whose `lambda`/`http` rules answer from `mocks`: `{"<rule id>": {"outcome", "set"}}`
/// keyed by the flow's rule id. A rule without an answer evaluates as an error, as in [`DryRun`].
#[derive(Debug, Clone, Default)]
pub struct Mocked {
    /// Answers by rule id.
    pub mocks: serde_json::Map<String, Value>,
}

impl Mocked {
    /// Answers for `flow`'s rules from `mocks` keyed by the flow's rule id or, for a rule that
    /// uses a master rule and has no answer of its own, by that master rule's `rule_id` (the
    /// SPEC's "rule id" reads either way; the flow's own id wins).
    pub fn for_flow(mut mocks: serde_json::Map<String, Value>, flow: &crate::model::Flow) -> Self {
        for r in &flow.rules {
            if mocks.contains_key(&r.id) {
                continue;
            }
            if let Some(answer) = r.use_rule.as_deref().and_then(|m| mocks.get(m)) {
                let answer = answer.clone();
                mocks.insert(r.id.clone(), answer);
            }
        }
        Self { mocks }
    }
}

impl Effects for Mocked {
    async fn take_token(
        &self,
        key: &str,
        per_second: f64,
        burst: f64,
    ) -> Result<bool, EffectError> {
        DryRun.take_token(key, per_second, burst).await
    }

    async fn call_rule(
        &self,
        rule: &str,
        kind: MasterKind,
        target: &str,
        payload: &Value,
        timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        match self.mocks.get(rule) {
            Some(answer) => Ok(answer.clone()),
            None => {
                DryRun
                    .call_rule(rule, kind, target, payload, timeout_ms)
                    .await
            }
        }
    }

    fn dry_run(&self) -> bool {
        true
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

    /// [`FlowSource::flow_version`] compiled with the master-rule versions an execution pinned
    /// at its seq 0 (`pins`: rule id -> version). By default the current compile (a source
    /// whose catalog never changes).
    fn flow_pinned(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
        pins: &std::collections::BTreeMap<String, u64>,
    ) -> impl Future<Output = Result<std::sync::Arc<crate::CompiledFlow>, StoreError>> + Send {
        let _ = pins;
        self.flow_version(client_id, flow_id, version)
    }

    /// The client's data, read in the client's own environment (the role is assumed with
    /// `ExternalId` = `client_id`).
    fn client_data(
        &self,
        client_id: &str,
        source: &crate::execution::DataSource,
    ) -> impl Future<Output = Result<Value, StoreError>> + Send;
}

/// Where executions are recorded and chained: the executions summary, the steps table and the
/// trigger table (SPEC section 3). Items travel as JSON documents; the adapter maps them.
///
/// Every write that could race with a redelivered record is conditional, and reports `Ok(false)`
/// when its condition failed (the thing was already written): the caller then reads what is there
/// instead of deciding again.
pub trait Journal: Sync {
    /// Puts the summary of a new execution, on condition that none exists.
    fn start(&self, summary: &Value) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The summary (consistent read).
    fn summary(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Ends an execution: sets the final fields of `finish` (status, finished_at, output, reason,
    /// error, tags, route, trace…), removes `running_shard`, on condition that it is `RUNNING`
    /// (or does not exist yet, which creates it). `Ok(false)`: it had already ended.
    fn finish(
        &self,
        execution_id: &str,
        finish: &Value,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Puts a step item, on condition that the step does not exist.
    fn put_step(&self, step: &Value) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A step item (consistent read).
    fn step(
        &self,
        execution_id: &str,
        seq: u64,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Every step item of an execution, in seq order (consistent read).
    fn steps(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Vec<Value>, StoreError>> + Send;

    /// The step item with the highest seq, if any.
    fn last_step(
        &self,
        execution_id: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Puts a trigger row into `table`, on condition that it does not exist.
    fn put_row(
        &self,
        table: &str,
        row: &Value,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The trigger row `seq` of an execution in `table` (consistent read). Seq 0: an execution
    /// a client has started but the orchestrator has not picked up yet has this row and no
    /// summary.
    fn row(
        &self,
        table: &str,
        execution_id: &str,
        seq: u64,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Claims delivery attempt `attempt` (1-based) of a step: on condition that the step's
    /// `delivery_attempts` is `attempt - 1` (absent counts as 0) and, for a later attempt, that
    /// something is still pending (`pending_due` present and past), sets it to `attempt` and
    /// moves `pending_due` to `lease_until_ms`, so a crashed sender's work is picked up after the
    /// lease. `Ok(false)`: someone else claimed it, or its deliveries are already recorded.
    fn claim_delivery(
        &self,
        execution_id: &str,
        seq: u64,
        attempt: u32,
        shard: &str,
        lease_until_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the results of delivery attempt `attempt`: the step's `actions` list as it now
    /// reads, and `pending_due` (`None`: nothing is pending any more, the step leaves the
    /// pending index and its outbox is dropped). Conditional on `delivery_attempts = attempt`.
    fn record_delivery(
        &self,
        execution_id: &str,
        seq: u64,
        attempt: u32,
        actions: &Value,
        pending_due_ms: Option<i64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Steps with a delivery due at or before `now_ms` in `shard`, oldest first, at most `limit`.
    fn due_deliveries(
        &self,
        shard: &str,
        now_ms: i64,
        limit: i32,
    ) -> impl Future<Output = Result<Vec<Value>, StoreError>> + Send;

    /// Summaries of executions still `RUNNING` in `shard` that started before `before`
    /// (RFC 3339), oldest first, at most `limit`.
    fn running_before(
        &self,
        shard: &str,
        before: &str,
        limit: i32,
    ) -> impl Future<Output = Result<Vec<Value>, StoreError>> + Send;
}

/// Seals what one hop carries to the next (authenticated encryption under the orchestrator's own
/// key), so a trigger row nobody but the orchestrator could have written is recognised.
pub trait Sealer: Sync {
    /// Encrypts and authenticates `plain`, binding `aad`; returns printable text.
    fn seal(
        &self,
        aad: &[u8],
        plain: &[u8],
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Opens what [`Sealer::seal`] produced with the same `aad`. `Err(Invalid)`: it was not
    /// sealed by us (forged or altered); `Err(Transient)`: the key could not be loaded.
    fn open(
        &self,
        aad: &[u8],
        sealed: &str,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
}

/// One `call_webhook` delivery of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `<execution_id>:<seq>:<action index>`, sent as the `Idempotency-Key` header: a retried
    /// delivery sends the same key, so the receiver can drop the repeat.
    pub idempotency_key: String,
    /// Where to POST.
    pub url: String,
    /// Secrets Manager id of the HMAC-SHA256 key that signs the body.
    pub secret_id: Option<String>,
    /// Request timeout.
    pub timeout_ms: Option<u64>,
    /// The JSON body, as sent.
    pub body: String,
}

/// Delivers a step's webhooks.
pub trait Deliveries: Sync {
    /// POSTs `delivery` (signed when it has a secret). `Err(Unavailable)` when the receiver could
    /// not be reached or answered 5xx/429 (a later attempt may succeed); `Err(Failed)` when it
    /// never will (4xx, a redirect, a blocked address, a missing signing key).
    fn deliver(&self, delivery: &Delivery) -> impl Future<Output = Result<(), EffectError>> + Send;
}

impl<T: Deliveries + Send + Sync> Deliveries for std::sync::Arc<T> {
    fn deliver(&self, delivery: &Delivery) -> impl Future<Output = Result<(), EffectError>> + Send {
        (**self).deliver(delivery)
    }
}
