//! The step loop, written once and generic over the ports: load, decide, record, chain, deliver.
//!
//! One trigger row runs one step of one execution (SPEC section 3):
//!
//! 1. **Load.** A seq 0 row is a client's: its id must carry its client, the version is picked
//!    (gray, SPEC section 4), client data is read, and the summary is put (`RUNNING`). A later
//!    row is the orchestrator's own: its carried state is sealed ([`Sealer`]); a row whose seal
//!    does not open was not written by us and is never run — no rule, no client data, no token,
//!    no delivery, nothing written.
//! 2. **Decide once.** The step is decided and put as its item in the steps table, with its
//!    pending deliveries (an outbox), on condition that it does not exist. A redelivered record
//!    finds it (before deciding, when the decision has effects: a token, an external rule) and
//!    goes on from what is recorded, so a step is never decided twice.
//! 3. **Chain.** From the recorded step: the next row (sealed) is put, conditionally, or the
//!    summary is finished with the trace.
//! 4. **Deliver.** Pending deliveries go out after that, each attempt claimed on the step item
//!    first, so one attempt is one POST; results are recorded on the item. A failed attempt is
//!    retried by the sweeper on a backoff schedule, up to 8 attempts: a receiver that is down
//!    never holds the chain or the shard.
//!
//! [`sweep`] is the scheduled side: due deliveries, and executions with no progress (ended
//! `FAILED` with a reason naming the rule and the cause).

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::CompiledFlow;
use crate::engine::{
    ExecutionMeta, Next, RunState, Session, StepRecord, gray_key_value, sanitize_explain,
};
use crate::execution::{
    Carried, ExecutionHeader, Quota, SealedRow, TriggerRow, check_execution_id, cut, subset_of,
};
use crate::model::{ActionType, FAILED};
use crate::ports::{
    Deliveries, Delivery, EffectError, Effects, FlowSource, Journal, Sealer, StoreError,
};

/// Status of an execution that has not ended.
pub const RUNNING: &str = "RUNNING";
/// The status of an execution cancelled from outside (SPEC sections 3, 5).
pub const CANCELLED: &str = "CANCELLED";
/// Delivery attempts before a delivery is recorded as failed (SPEC section 1, Actions).
pub const MAX_DELIVERY_ATTEMPTS: u32 = 8;
/// Shards of the sparse `pending` and `running` indexes.
pub const SHARDS: u32 = 16;
/// The attribute that marks the seq 0 row the sync API writes for an execution it ran inline:
/// it keeps the input for `rerun`, and the orchestrator passes over it (the execution has run).
pub const INLINE_MARK: &str = "inline";
pub use crate::execution::OUTPUT_LIMIT_BYTES;
/// What the trace kept in the summary may weigh; past it, the first and last steps and a count.
pub const TRACE_LIMIT_BYTES: usize = 200 * 1024;

/// A record that must be retried (a batch item failure).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

/// Knobs of the loop, read once at cold start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The trigger table, when a record does not name its own.
    pub trigger_table: String,
    /// Lifetime of trigger rows, seconds.
    pub trigger_ttl_secs: i64,
    /// Lifetime of summaries and steps, seconds (SPEC section 7, retention).
    pub retention_secs: i64,
    /// Wait before attempts 2, 3, … of a delivery, milliseconds.
    pub delivery_backoff_ms: Vec<i64>,
    /// How long a claimed delivery attempt is someone's before the sweeper may take it over.
    pub delivery_lease_ms: i64,
    /// An execution with no progress for this long is ended `FAILED` by the sweeper.
    pub stall_secs: i64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            trigger_table: "rulestream-trigger".into(),
            trigger_ttl_secs: 7 * 86_400,
            retention_secs: 90 * 86_400,
            delivery_backoff_ms: vec![5_000, 15_000, 30_000, 60_000, 90_000, 120_000, 150_000],
            delivery_lease_ms: 30_000,
            stall_secs: 900,
        }
    }
}

/// The fields of an execution's summary (SPEC section 3), besides its id and its trace.
pub const SUMMARY_FIELDS: [&str; 12] = [
    "client_id",
    "flow_id",
    "flow_version",
    "status",
    "started_at",
    "finished_at",
    "output",
    "reason",
    "error",
    "tags",
    "route",
    "rerun_of",
];

impl Settings {
    /// When a trigger row written now expires (`expires_at`, Unix seconds).
    pub fn row_expires_at(&self) -> i64 {
        Utc::now().timestamp().saturating_add(self.trigger_ttl_secs)
    }

    /// Wait after failed attempt `attempt` (1-based).
    pub fn backoff_after(&self, attempt: u32) -> i64 {
        let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.delivery_backoff_ms
            .get(i)
            .or(self.delivery_backoff_ms.last())
            .copied()
            .unwrap_or(60_000)
    }
}

/// The loop with the capabilities it needs.
pub struct Chain<F, J, E, D, S> {
    /// Flows, releases and client data.
    pub flows: F,
    /// Summaries, steps and trigger rows.
    pub journal: J,
    /// Rate limiter and external rules.
    pub effects: E,
    /// Webhook deliveries.
    pub deliveries: D,
    /// Seals carried state.
    pub sealer: S,
    /// Knobs.
    pub settings: Settings,
}

/// The most steps one hop runs when its flow fuses pure steps: past it, a trigger row carries the
/// chain on (bounds one invocation's work, whatever the flow).
pub const MAX_FUSED: u32 = 25;

/// Metrics (SPEC section 7) through the `metrics` facade, dimensions `client_id` and `flow_id`.
/// Each function installs the CloudWatch EMF recorder and flushes it after every invocation
/// (`rulestream_aws::metrics`); without a recorder (unit tests, the CLI) these are no-ops.
pub mod emit {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Histogram values recorded since the last flush (of every series together).
    static UNFLUSHED: AtomicUsize = AtomicUsize::new(0);
    /// What writes the recorded metrics out (set by the function's recorder).
    static FLUSH: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();
    /// An EMF line holds at most 100 values of a histogram, and the recorder drops the rest:
    /// past this many unflushed values, they are written out at once (a batch of 100 records,
    /// or a fused hop, records more than 100 steps in one invocation).
    const FLUSH_AT: usize = 90;

    /// Sets what writes the recorded metrics out when they would overflow a line.
    pub fn on_full(flush: impl Fn() + Send + Sync + 'static) {
        let _ = FLUSH.set(Box::new(flush));
    }

    /// The recorded metrics were written out.
    pub fn flushed() {
        UNFLUSHED.store(0, Ordering::Relaxed);
    }

    fn recorded(values: usize) {
        if UNFLUSHED.fetch_add(values, Ordering::Relaxed) + values >= FLUSH_AT
            && let Some(flush) = FLUSH.get()
        {
            flush();
        }
    }

    /// A step was decided (not a redelivery): `Steps`, `StepDuration`, and `HopLatency` when the
    /// row's write time is known (rows the orchestrator wrote).
    pub fn step(client: &str, flow: &str, duration_ms: f64, hop_ms: Option<f64>) {
        let labels = [
            ("client_id", client.to_string()),
            ("flow_id", flow.to_string()),
        ];
        metrics::counter!("Steps", &labels).increment(1);
        metrics::histogram!("StepDuration", &labels).record(duration_ms);
        if let Some(h) = hop_ms {
            metrics::histogram!("HopLatency", &labels).record(h.max(0.0));
        }
        recorded(1 + usize::from(hop_ms.is_some()));
    }

    /// An execution ended (its summary was written once): `Executions` by status and
    /// `ExecutionDuration`.
    pub fn ended(client: &str, flow: &str, status: &str, duration_ms: Option<f64>) {
        let labels = [
            ("client_id", client.to_string()),
            ("flow_id", flow.to_string()),
        ];
        metrics::counter!(
            "Executions",
            "client_id" => client.to_string(),
            "flow_id" => flow.to_string(),
            "status" => status.to_string()
        )
        .increment(1);
        if let Some(d) = duration_ms {
            metrics::histogram!("ExecutionDuration", &labels).record(d.max(0.0));
            recorded(1);
        }
    }

    /// A delivery was given up on: `DeliveryFailures`.
    pub fn delivery_failed(client: &str, flow: &str) {
        let labels = [
            ("client_id", client.to_string()),
            ("flow_id", flow.to_string()),
        ];
        metrics::counter!("DeliveryFailures", &labels).increment(1);
    }

    /// A release guard sent an automatic rollback: `AutomaticRollbacks`.
    pub fn rolled_back(client: &str, flow: &str) {
        let labels = [
            ("client_id", client.to_string()),
            ("flow_id", flow.to_string()),
        ];
        metrics::counter!("AutomaticRollbacks", &labels).increment(1);
    }

    /// Milliseconds from an RFC 3339 time to now.
    pub fn since(rfc3339: &str) -> Option<f64> {
        let t = chrono::DateTime::parse_from_rfc3339(rfc3339).ok()?;
        let ms = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds();
        Some(ms as f64)
    }
}

/// The webhook URL of a notification channel: `channels.<name>` of the client's data (its secret).
fn channel_url(client: Option<&Value>, channel: &str) -> Option<String> {
    client?
        .get("channels")?
        .get(channel)?
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
}

/// Fills `{{path}}` placeholders from `context` (a dotted path; strings as they are, other
/// values as JSON, a missing path as nothing).
pub fn render_template(template: &str, context: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let path = after[..close].trim();
        let mut v = Some(context);
        for part in path.split('.').filter(|p| !p.is_empty()) {
            v = v.and_then(|x| match x {
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                other => other.get(part),
            });
        }
        match v {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The shard (`"0"`…`"15"`) of an execution in the sparse indexes.
pub fn shard_of(execution_id: &str) -> String {
    let h = Sha256::digest(execution_id.as_bytes());
    (u32::from(h[0]) % SHARDS).to_string()
}

pub use crate::engine::redact_url;

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// A step item as the loop reads it back.
#[derive(Debug, Clone, Deserialize)]
struct StepView {
    seq: u64,
    rule: String,
    outcome: String,
    #[serde(default)]
    set: Map<String, Value>,
    /// The sealed values of client data of `set` (see [`StepView::open_client_set`]).
    #[serde(default)]
    client_set: Option<String>,
    /// Keys of `set` that hold client data (their names only).
    #[serde(default)]
    client_keys: Vec<String>,
    #[serde(default)]
    actions: Vec<ActionView>,
    next: Next,
}

#[derive(Debug, Clone, Deserialize)]
struct ActionView {
    #[serde(rename = "type")]
    kind: ActionType,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    queue: Option<String>,
}

impl StepView {
    /// What the sealed values of client data of step `seq` are bound to.
    fn client_set_aad(execution_id: &str, seq: u64) -> Vec<u8> {
        format!("client_set\n{execution_id}\n{seq}").into_bytes()
    }

    /// Puts back the values of client data that the step item keeps sealed.
    async fn open_client_set<S: Sealer>(
        &mut self,
        sealer: &S,
        execution_id: &str,
    ) -> Result<(), StoreError> {
        let Some(sealed) = self.client_set.take() else {
            return Ok(());
        };
        let plain = sealer
            .open(&StepView::client_set_aad(execution_id, self.seq), &sealed)
            .await?;
        let values: Map<String, Value> = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Invalid(format!("sealed client data of a step: {e}")))?;
        for (k, v) in values {
            self.set.insert(k, v);
        }
        Ok(())
    }

    /// The view of a step just decided (no round trip through its JSON document).
    fn of(record: &StepRecord, next: Next) -> StepView {
        StepView {
            seq: record.seq,
            rule: record.rule.to_string(),
            outcome: record.outcome.to_string(),
            set: {
                let mut set = record.set.clone();
                for (k, v) in &record.client_set {
                    set.insert(k.clone(), v.clone());
                }
                set
            },
            client_set: None,
            client_keys: record.client_set.keys().cloned().collect(),
            actions: record
                .actions
                .iter()
                .map(|a| ActionView {
                    kind: a.action.kind,
                    tag: a.action.tag.clone(),
                    queue: a.action.queue.clone(),
                })
                .collect(),
            next,
        }
    }
}

/// The state after a recorded step: what deciding it did to `before`, replayed from the record
/// (the same whether the step was decided now or by an earlier delivery).
fn advance(before: &RunState, step: &StepView, reads_steps: bool) -> RunState {
    let mut s = before.clone();
    for (k, v) in &step.set {
        s.ctx.insert(k.clone(), v.clone());
        s.mark_client(k, step.client_keys.contains(k));
    }
    if reads_steps {
        s.steps
            .insert(step.rule.clone(), Value::String(step.outcome.clone()));
    }
    for a in &step.actions {
        match a.kind {
            ActionType::AddTag => {
                if let Some(t) = &a.tag
                    && !s.tags.contains(t)
                {
                    s.tags.push(t.clone());
                }
            }
            ActionType::RouteTo => s.route.clone_from(&a.queue),
            _ => {}
        }
    }
    s.seq = step.seq + 1;
    if let Next::Rule { rule } = &step.next {
        s.rule = Some(rule.clone());
    }
    s
}

/// Fields of a step item that are bookkeeping, not trace.
const NOT_TRACE: [&str; 12] = [
    "execution_id",
    "webhook_body",
    "client_set",
    "client_keys",
    "client_id",
    "flow_id",
    "flow_version",
    "outbox",
    "pending_shard",
    "pending_due",
    "delivery_attempts",
    "expires_at",
];

/// A step item as a trace line.
pub fn trace_line(step: &Value) -> Value {
    let mut line = step.clone();
    if let Some(o) = line.as_object_mut() {
        for k in NOT_TRACE {
            o.remove(k);
        }
    }
    line
}

/// The trace kept in a summary: every step, or past [`TRACE_LIMIT_BYTES`] the first and last
/// ones; with the total count.
pub fn bounded_trace(steps: &[Value]) -> (Vec<Value>, usize) {
    let lines: Vec<Value> = steps.iter().map(trace_line).collect();
    let size: usize = lines.iter().map(|l| l.to_string().len()).sum();
    if size <= TRACE_LIMIT_BYTES {
        return (lines, steps.len());
    }
    let mut keep = 10usize;
    loop {
        if lines.len() <= 2 * keep && keep > 0 {
            keep -= 1;
            continue;
        }
        let kept: Vec<Value> = lines[..keep]
            .iter()
            .chain(&lines[lines.len() - keep..])
            .cloned()
            .collect();
        let size: usize = kept.iter().map(|l| l.to_string().len()).sum();
        if size <= TRACE_LIMIT_BYTES || keep == 0 {
            return (kept, steps.len());
        }
        keep /= 2;
    }
}

/// Replays recorded steps from the start: the state after the last of them.
fn replay(steps: &[Value], reads_steps: bool) -> RunState {
    let mut state = RunState::default();
    for s in steps {
        if let Ok(view) = StepView::deserialize(s) {
            state = advance(&state, &view, reads_steps);
        }
    }
    state
}

enum Load {
    Ok(Arc<CompiledFlow>),
    Fail(String),
}

impl<F, J, E, D, S> Chain<F, J, E, D, S>
where
    F: FlowSource,
    J: Journal,
    E: Effects,
    D: Deliveries,
    S: Sealer,
{
    /// Runs the step of one trigger row (a stream image as JSON) from `table` (`None`: the
    /// configured trigger table). `Err` only for what a retry may fix.
    pub async fn run_row(&self, table: Option<&str>, image: Value) -> Result<(), Retry> {
        let table = table.unwrap_or(&self.settings.trigger_table).to_string();
        let seq = image.get("seq").and_then(Value::as_u64);
        if seq == Some(0) && image.get("sealed").is_none() {
            self.start_row(&table, image).await
        } else {
            self.continue_row(&table, image).await
        }
    }

    /// The rule a row the orchestrator wrote will run (its seal opened, nothing else done);
    /// `None` for a row that is not sealed or does not open. The sync API's inline mode asks
    /// this to decide where to hand the rest of an execution to the chain.
    pub async fn next_rule(&self, row: &Value) -> Option<String> {
        let sealed: SealedRow = serde_json::from_value(row.clone()).ok()?;
        let plain = self.sealer.open(&sealed.aad(), &sealed.sealed).await.ok()?;
        let carried: Carried = serde_json::from_slice(&plain).ok()?;
        carried.state.rule.map(|r| r.to_string())
    }

    async fn load(&self, client: &str, flow: &str, version: u64) -> Result<Load, Retry> {
        match self.flows.flow_version(client, flow, version).await {
            Ok(f) => Ok(Load::Ok(f)),
            Err(StoreError::Transient(e)) => Err(Retry(e)),
            Err(e) => Ok(Load::Fail(e.to_string())),
        }
    }

    fn summary_doc(&self, h: &ExecutionHeader, status: &str) -> Value {
        let mut doc = json!({
            "execution_id": h.execution_id,
            "client_id": h.client_id,
            "flow_id": h.flow_id,
            "flow_version": h.flow_version,
            "status": status,
            "started_at": h.started_at,
            "expires_at": Utc::now().timestamp() + self.settings.retention_secs,
        });
        if let Some(r) = &h.rerun_of {
            doc["rerun_of"] = json!(r);
        }
        doc
    }

    /// Ends a seq 0 row that cannot start: a FAILED summary, only if the id is unused.
    async fn fail_start(&self, h: ExecutionHeader, reason: String) -> Result<(), Retry> {
        tracing::warn!(execution_id = %h.execution_id, client_id = %h.client_id, reason = %reason, "execution failed at start");
        let mut doc = self.summary_doc(&h, FAILED);
        if h.flow_version == 0
            && let Some(d) = doc.as_object_mut()
        {
            // Refused before a version was picked: it ran none (versions start at 1).
            d.remove("flow_version");
        }
        doc["finished_at"] = json!(rfc3339(Utc::now()));
        doc["reason"] = json!(reason);
        doc["error"] = json!(reason);
        doc["output"] = json!({});
        doc["tags"] = json!([]);
        doc["trace"] = json!([]);
        match self.journal.start(&doc).await {
            Ok(written) => {
                if written {
                    emit::ended(&h.client_id, &h.flow_id, FAILED, Some(0.0));
                }
                Ok(())
            }
            Err(StoreError::Transient(e)) => Err(Retry(e)),
            Err(e) => {
                tracing::error!(execution_id = %h.execution_id, error = %e, "cannot record the failure");
                Ok(())
            }
        }
    }

    async fn start_row(&self, table: &str, image: Value) -> Result<(), Retry> {
        let now = Utc::now();
        let Some(id) = image
            .get("execution_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
        else {
            tracing::error!("trigger row without an execution_id dropped");
            return Ok(());
        };
        // The sync API keeps the input of an execution it ran inline in a seq 0 row marked
        // `inline`, written once the execution has its summary (for `rerun`): not a start. A
        // marked row with no summary is a client's own row, and starts as any other.
        if image.get(INLINE_MARK) == Some(&Value::Bool(true)) {
            match self.journal.summary(&id).await {
                Ok(Some(_)) => {
                    tracing::info!(execution_id = %cut(&id, 200), "seq 0 row kept by the sync API for an execution it ran inline: passed over");
                    return Ok(());
                }
                Ok(None) => {}
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => return Err(Retry(e.to_string())),
            }
        }
        // Until the row's client is checked against its id, a failure is recorded under the
        // client whose prefix the id carries, when it carries one: only that client's writer
        // policy lets such a row in (SPEC section 3).
        let id_owner = id
            .split_once(':')
            .map(|(o, _)| o)
            .filter(|o| crate::execution::is_client_id(o));
        let mut header = ExecutionHeader {
            execution_id: id.clone(),
            client_id: id_owner
                .map_or_else(|| cut(str_of(&image, "client_id"), 63), str::to_string),
            flow_id: cut(str_of(&image, "flow_id"), 128),
            flow_version: 0,
            started_at: rfc3339(now),
            rerun_of: None,
        };
        let row: TriggerRow = match serde_json::from_value(image) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .fail_start(header, format!("malformed trigger row: {e}"))
                    .await;
            }
        };
        header.rerun_of.clone_from(&row.rerun_of);
        if let Err(why) = check_execution_id(&row.client_id, &row.execution_id) {
            // An id under another client's prefix stays that client's (see `id_owner`): it is
            // never listed, read or taken as the client's the row names.
            return self
                .fail_start(header, format!("malformed trigger row: {why}"))
                .await;
        }
        if !row.input.is_object() {
            let why = if row.input.is_null() {
                "malformed trigger row: `input` is required (a map; `{}` for none)"
            } else {
                "malformed trigger row: `input` must be a map"
            };
            return self.fail_start(header, why.into()).await;
        }
        if row.flow_id.is_empty() {
            return self
                .fail_start(header, "malformed trigger row: flow_id is empty".into())
                .await;
        }
        if subset_of(row.rules.as_deref()).is_some_and(|s| s.is_empty()) {
            return self
                .fail_start(
                    header,
                    "malformed trigger row: `rules` names no rule (omit it to run every rule)"
                        .into(),
                )
                .await;
        }
        let cf = match self.flows.client_flow(&row.client_id, &row.flow_id).await {
            Ok(cf) => cf,
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(e) => return self.fail_start(header, e.to_string()).await,
        };
        if !cf.enabled {
            let why = format!(
                "client `{}` flow `{}` is disabled",
                row.client_id, row.flow_id
            );
            return self.fail_start(header, why).await;
        }
        if let Some(q) = cf.quota
            && !self.within_quota(&row.client_id, &id, q).await?
        {
            let why = format!(
                "start quota exceeded: client `{}` may start {} executions per second",
                row.client_id, q.starts_per_second
            );
            return self.fail_start(header, why).await;
        }
        let version = match (row.flow_version, cf.release.candidate) {
            (Some(v), _) => v,
            (None, None) => cf.release.stable,
            (None, Some(_)) => {
                let stable = match self
                    .load(&row.client_id, &row.flow_id, cf.release.stable)
                    .await?
                {
                    Load::Ok(f) => f,
                    Load::Fail(why) => return self.fail_start(header, why).await,
                };
                let key = gray_key_value(&stable, &row.execution_id, &row.input, None, &Map::new());
                cf.release.pick(&row.client_id, &row.flow_id, None, &key)
            }
        };
        header.flow_version = version;
        let flow = match self.load(&row.client_id, &row.flow_id, version).await? {
            Load::Ok(f) => f,
            Load::Fail(why) => return self.fail_start(header, why).await,
        };
        let client = match &cf.data_source {
            None => None,
            Some(src) => match self.flows.client_data(&row.client_id, src).await {
                Ok(v) => Some(v),
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => return self.fail_start(header, format!("client data: {e}")).await,
            },
        };
        let mut doc = self.summary_doc(&header, RUNNING);
        doc["running_shard"] = json!(shard_of(&id));
        let fresh = match self.journal.start(&doc).await {
            Ok(b) => b,
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(e) => {
                return self
                    .fail_start(header, format!("cannot record the start: {e}"))
                    .await;
            }
        };
        let mut flow = flow;
        if !fresh {
            // A redelivered seq 0 record, or an id used before.
            let existing = match self.journal.summary(&id).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(Retry(format!("summary of {id} vanished"))),
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => return Err(Retry(e.to_string())),
            };
            if str_of(&existing, "status") != RUNNING {
                tracing::warn!(execution_id = %id, "seq 0 row of an execution that already ended: ignored");
                return Ok(());
            }
            // Go on with what the first delivery recorded (the release may have moved since).
            header.started_at = str_of(&existing, "started_at").to_string();
            let recorded = existing
                .get("flow_version")
                .and_then(Value::as_u64)
                .unwrap_or(version);
            if recorded != version {
                header.flow_version = recorded;
                flow = match self.load(&row.client_id, &row.flow_id, recorded).await? {
                    Load::Ok(f) => f,
                    Load::Fail(why) => {
                        return self.end_failed(&header, &RunState::default(), why).await;
                    }
                };
            }
        }
        let state = match row.from.as_deref() {
            None => RunState::default(),
            Some(from) => match self
                .rerun_state(&row.client_id, row.rerun_of.as_deref(), from, &flow)
                .await?
            {
                Ok(s) => s,
                Err(why) => return self.end_failed(&header, &RunState::default(), why).await,
            },
        };
        let carried = Carried {
            input: row.input,
            rules: row.rules,
            state,
            started_at: header.started_at.clone(),
            rerun_of: row.rerun_of,
            client,
            pins: flow.master_versions(),
            written_ms: None,
        };
        self.hop(table, header, flow, carried).await
    }

    /// The state a rerun `--from` starts with: the original's context just before the step
    /// `from` (a seq, or a rule id: its first visit), read from the original's steps. `Ok(Err)`
    /// for a rerun that cannot start (and says why); the original must be the same client's.
    async fn rerun_state(
        &self,
        client: &str,
        original: Option<&str>,
        from: &str,
        flow: &CompiledFlow,
    ) -> Result<Result<RunState, String>, Retry> {
        let Some(original) = original else {
            return Ok(Err("malformed trigger row: `from` needs `rerun_of`".into()));
        };
        if !original.starts_with(&format!("{client}:")) {
            return Ok(Err(format!(
                "malformed trigger row: `rerun_of` {original} is not an execution of client `{client}`"
            )));
        }
        let steps = match self.journal.steps(original).await {
            Ok(s) => decided(s),
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(e) => return Ok(Err(format!("rerun from `{from}`: {e}"))),
        };
        let at = match from.parse::<u64>() {
            Ok(seq) => steps
                .iter()
                .position(|s| s.get("seq").and_then(Value::as_u64) == Some(seq)),
            Err(_) => steps.iter().position(|s| str_of(s, "rule") == from),
        };
        let Some(at) = at else {
            return Ok(Err(format!(
                "rerun from `{from}`: {original} has no such step ({} steps recorded)",
                steps.len()
            )));
        };
        let rule = str_of(&steps[at], "rule").to_string();
        if !flow.flow().rules.iter().any(|r| r.id == rule) {
            return Ok(Err(format!(
                "rerun from `{from}`: rule `{rule}` is not in version {} of the flow",
                flow.flow().version
            )));
        }
        // The context the original had there, its client data included (opened from the seals).
        let mut state = RunState::default();
        for item in &steps[..at] {
            let Ok(mut view) = StepView::deserialize(item) else {
                continue;
            };
            match view.open_client_set(&self.sealer, original).await {
                Ok(()) => {}
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => return Ok(Err(format!("rerun from `{from}`: {e}"))),
            }
            state = advance(&state, &view, flow.reads_steps());
        }
        state.seq = 0;
        state.rule = Some(Arc::from(rule));
        Ok(Ok(state))
    }

    /// Whether a start of `client` fits its quota. A redelivered seq 0 row of an execution that
    /// already started is never refused; a limiter that cannot be reached lets starts through
    /// (the quota protects the shards, it must not stop every client when Redis is down).
    async fn within_quota(&self, client: &str, id: &str, q: Quota) -> Result<bool, Retry> {
        let burst = q.starts_per_second.max(1.0);
        match self
            .effects
            .take_token(&Quota::bucket(client), q.starts_per_second, burst)
            .await
        {
            Ok(true) => Ok(true),
            Err(e) => {
                tracing::warn!(client_id = %client, error = %e, "start quota not checked: limiter unavailable");
                Ok(true)
            }
            Ok(false) => match self.journal.summary(id).await {
                Ok(existing) => Ok(existing.is_some()),
                Err(StoreError::Transient(e)) => Err(Retry(e)),
                Err(_) => Ok(false),
            },
        }
    }

    async fn continue_row(&self, table: &str, image: Value) -> Result<(), Retry> {
        let id = str_of(&image, "execution_id").to_string();
        let seq = image.get("seq").and_then(Value::as_u64);
        let row: SealedRow = match serde_json::from_value(image) {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(execution_id = %cut(&id, 200), seq, "trigger row not written by the orchestrator (no seal): ignored, nothing run");
                return Ok(());
            }
        };
        let plain = match self.sealer.open(&row.aad(), &row.sealed).await {
            Ok(p) => p,
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(_) => {
                tracing::warn!(execution_id = %cut(&id, 200), seq, "trigger row whose seal does not open (forged or altered): ignored, nothing run");
                return Ok(());
            }
        };
        let carried: Carried = match serde_json::from_slice::<Carried>(&plain) {
            Ok(c) if c.state.seq == row.seq => c,
            _ => {
                tracing::error!(execution_id = %row.execution_id, seq = row.seq, "sealed state does not match its row: ignored");
                return Ok(());
            }
        };
        let header = ExecutionHeader {
            execution_id: row.execution_id.clone(),
            client_id: row.client_id.clone(),
            flow_id: row.flow_id.clone(),
            flow_version: row.flow_version,
            started_at: carried.started_at.clone(),
            rerun_of: carried.rerun_of.clone(),
        };
        // The master-rule versions of seq 0, whatever the catalog says now.
        let flow = match self
            .flows
            .flow_pinned(
                &row.client_id,
                &row.flow_id,
                row.flow_version,
                &carried.pins,
            )
            .await
        {
            Ok(f) => f,
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(e) => {
                return self
                    .end_failed(&header, &carried.state, e.to_string())
                    .await;
            }
        };
        self.hop(table, header, flow, carried).await
    }

    /// Decides the step of `carried` (unless it is recorded already), records it, chains, and
    /// delivers.
    async fn hop(
        &self,
        table: &str,
        header: ExecutionHeader,
        flow: Arc<CompiledFlow>,
        carried: Carried,
    ) -> Result<(), Retry> {
        self.hop_fused(table, header, flow, carried, 0).await
    }

    /// One step; `fused` counts the steps already run in this hop before it (SPEC 1 Fusing).
    async fn hop_fused(
        &self,
        table: &str,
        header: ExecutionHeader,
        flow: Arc<CompiledFlow>,
        carried: Carried,
        fused: u32,
    ) -> Result<(), Retry> {
        let started = std::time::Instant::now();
        let id = header.execution_id.clone();
        let seq = carried.state.seq;
        if flow.decides_with_effects(carried.state.rule.as_deref()) {
            match self.journal.step(&id, seq).await {
                Ok(Some(step)) => {
                    return self
                        .after_stored(table, &header, &flow, carried, step, (started, fused))
                        .await;
                }
                Ok(None) => {}
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => return Err(Retry(e.to_string())),
            }
        }
        let meta = ExecutionMeta {
            execution_id: id.clone(),
            client_id: header.client_id.clone(),
            flow_id: header.flow_id.clone(),
            flow_version: header.flow_version,
        };
        let now = Utc::now();
        // The decision, and the state after it (what the deliveries' public context shows).
        let (result, after) = {
            let mut session = Session::new(
                &flow,
                meta,
                &carried.input,
                carried.client.as_ref(),
                now,
                subset_of(carried.rules.as_deref()),
                carried.state.clone(),
            );
            let taken = u32::try_from(seq).unwrap_or(u32::MAX);
            let result = session.step(&self.effects, taken).await;
            (result, session.state().clone())
        };
        let Some(record) = result.record else {
            // No rule ran (max_steps exceeded, a rule that does not exist): the end.
            let why = match result.next {
                Next::Done { reason, error, .. } => reason.or(error),
                Next::Rule { .. } => None,
            };
            let why = why.unwrap_or_else(|| "the execution cannot go on".into());
            return self.end_failed(&header, &carried.state, why).await;
        };
        let mut doc = self.step_document(
            &header,
            &record,
            &result.next,
            &after,
            carried.client.as_ref(),
            now,
        )?;
        if !record.client_set.is_empty() {
            let plain = serde_json::to_vec(&record.client_set)
                .map_err(|e| Retry(format!("cannot encode step: {e}")))?;
            match self
                .sealer
                .seal(&StepView::client_set_aad(&id, seq), &plain)
                .await
            {
                Ok(sealed) => {
                    doc["client_set"] = json!(sealed);
                    doc["client_keys"] = json!(record.client_set.keys().collect::<Vec<_>>());
                }
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => {
                    let why = format!("cannot seal the client data of step {seq}: {e}");
                    return self.end_failed(&header, &carried.state, why).await;
                }
            }
        }
        let view = StepView::of(&record, result.next);
        match self.journal.put_step(&doc).await {
            Ok(true) => {
                self.after_step(
                    table,
                    &header,
                    &flow,
                    carried,
                    view,
                    &doc,
                    (started, fused),
                    false,
                )
                .await
            }
            Ok(false) => match self.journal.step(&id, seq).await {
                Ok(Some(stored)) => {
                    self.after_stored(table, &header, &flow, carried, stored, (started, fused))
                        .await
                }
                Ok(None) => Err(Retry(format!(
                    "step {seq} of {id} is neither new nor recorded"
                ))),
                Err(e) => Err(Retry(e.to_string())),
            },
            Err(StoreError::Transient(e)) => Err(Retry(e)),
            Err(e) => {
                let why = format!("cannot record step {seq} (rule `{}`): {e}", record.rule);
                self.end_failed(&header, &carried.state, why).await
            }
        }
    }

    /// The step item: the record (explain cut, URLs redacted), where it goes next, and an outbox
    /// holding each webhook to send with its body (the public context after the step: never
    /// `client`). A signing secret of another client is refused here, recorded on the action.
    fn step_document(
        &self,
        header: &ExecutionHeader,
        record: &StepRecord,
        next: &Next,
        after: &RunState,
        client: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<Value, Retry> {
        let id = &header.execution_id;
        let (status, reason) = match next {
            Next::Done { status, reason, .. } => (status.as_str(), reason.as_deref()),
            Next::Rule { .. } => (RUNNING, None),
        };
        let mut doc =
            serde_json::to_value(record).map_err(|e| Retry(format!("cannot encode step: {e}")))?;
        let mut outbox = Vec::new();
        let mut webhook_body: Option<String> = None;
        let own_secrets = format!("rulestream/{}/", header.client_id);
        if let Some(actions) = doc.get_mut("actions").and_then(Value::as_array_mut) {
            for (i, (a, planned)) in actions.iter_mut().zip(&record.actions).enumerate() {
                if planned.action.kind == ActionType::SendNotification {
                    let context = json!({
                        "execution": {"id": id, "client_id": header.client_id, "flow_id": header.flow_id,
                                      "flow_version": header.flow_version, "seq": record.seq},
                        "rule": record.rule,
                        "outcome": record.outcome,
                        "status": status,
                        "reason": reason,
                        "output": after.shown_ctx(),
                        "tags": after.tags,
                    });
                    let channel = planned.action.channel.clone().unwrap_or_default();
                    let text = render_template(
                        planned.action.template.as_deref().unwrap_or_default(),
                        &context,
                    );
                    // The channel's URL is the client's secret: it goes to the outbox (removed
                    // once sent, never in a trace), never to the action.
                    match channel_url(client, &channel) {
                        Some(url) => {
                            a["delivery"] = json!({"status": "pending", "attempts": 0});
                            outbox.push(json!({
                                "index": i,
                                "key": planned.idempotency_key,
                                "url": url,
                                "channel": channel,
                                "body": json!({"text": text}).to_string(),
                            }));
                        }
                        None => {
                            a["delivery"] = json!({"status": "failed", "attempts": 0,
                                "last": format!("channel `{channel}` is not in the client's secret (`channels.{channel}`)")});
                        }
                    }
                    continue;
                }
                if planned.action.kind != ActionType::CallWebhook {
                    continue;
                }
                let Some(url) = &planned.action.url else {
                    continue;
                };
                a["url"] = json!(redact_url(url));
                if let Some(secret) = &planned.action.secret_id
                    && !secret.starts_with(&own_secrets)
                {
                    a["delivery"] = json!({"status": "failed", "attempts": 0,
                        "last": format!("signing secret `{secret}` is not one of client `{}` ({own_secrets}…)", header.client_id)});
                    continue;
                }
                // Every webhook of the step sends the same context (all but its idempotency
                // key): kept once in the item, so several webhooks cost one copy of `output`.
                if webhook_body.is_none() {
                    webhook_body = Some(
                        json!({
                            "execution": {"id": id, "client_id": header.client_id, "flow_id": header.flow_id,
                                          "flow_version": header.flow_version, "seq": record.seq},
                            "rule": record.rule,
                            "outcome": record.outcome,
                            "status": status,
                            "reason": reason,
                            "output": after.shown_ctx(),
                            "tags": after.tags,
                        })
                        .to_string(),
                    );
                }
                a["delivery"] = json!({"status": "pending", "attempts": 0});
                outbox.push(json!({
                    "index": i,
                    "key": planned.idempotency_key,
                    "url": url,
                    "secret_id": planned.action.secret_id,
                    "timeout_ms": planned.action.timeout_ms,
                }));
            }
        }
        if let Some(explain) = doc.get_mut("explain") {
            sanitize_explain(explain);
        }
        doc["execution_id"] = json!(id);
        doc["client_id"] = json!(header.client_id);
        doc["flow_id"] = json!(header.flow_id);
        doc["flow_version"] = json!(header.flow_version);
        doc["decided_at"] = json!(rfc3339(now));
        doc["next"] = serde_json::to_value(next).unwrap_or(Value::Null);
        doc["expires_at"] = json!(now.timestamp() + self.settings.retention_secs);
        if let Some(body) = webhook_body {
            doc["webhook_body"] = json!(body);
        }
        if !outbox.is_empty() {
            doc["outbox"] = Value::Array(outbox);
            doc["pending_shard"] = json!(shard_of(id));
            doc["pending_due"] = json!(now.timestamp_millis() + self.settings.delivery_lease_ms);
        }
        Ok(doc)
    }

    /// Goes on from a step an earlier delivery recorded.
    async fn after_stored(
        &self,
        table: &str,
        header: &ExecutionHeader,
        flow: &Arc<CompiledFlow>,
        carried: Carried,
        step: Value,
        started: (std::time::Instant, u32),
    ) -> Result<(), Retry> {
        if let Some(stop) = step.get("stop").and_then(Value::as_str) {
            tracing::warn!(execution_id = %header.execution_id, seq = carried.state.seq, status = stop,
                "the execution was ended from outside its chain (stop marker): step not run");
            return Ok(());
        }
        let view = match StepView::deserialize(&step) {
            Ok(mut view) => match view
                .open_client_set(&self.sealer, &header.execution_id)
                .await
            {
                Ok(()) => Ok(view),
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match view {
            Ok(view) => {
                self.after_step(table, header, flow, carried, view, &step, started, true)
                    .await
            }
            Err(e) => {
                let why = format!(
                    "step {} of {} cannot be read: {e}",
                    carried.state.seq, header.execution_id
                );
                self.end_failed(header, &carried.state, why).await
            }
        }
    }

    /// Goes on from a recorded step: the next row or the end, then its deliveries.
    #[allow(clippy::too_many_arguments)]
    async fn after_step(
        &self,
        table: &str,
        header: &ExecutionHeader,
        flow: &Arc<CompiledFlow>,
        carried: Carried,
        view: StepView,
        step: &Value,
        (started, fused): (std::time::Instant, u32),
        redelivered: bool,
    ) -> Result<(), Retry> {
        let state = advance(&carried.state, &view, flow.reads_steps());
        let written_ms = carried.written_ms;
        let mut fuse_into: Option<Carried> = None;
        match &view.next {
            Next::Rule { rule } => {
                let next = Carried {
                    state,
                    written_ms: None,
                    ..carried
                };
                // Fusing (SPEC 1): a pure step followed by a pure rule runs on in this hop,
                // without a trigger row; a hop still ends after MAX_FUSED steps.
                if flow.fuses()
                    && fused + 1 < MAX_FUSED
                    && flow.is_pure(Some(&view.rule))
                    && flow.is_pure(Some(rule))
                {
                    fuse_into = Some(next);
                } else {
                    self.put_next(table, header, next).await?;
                }
            }
            Next::Done {
                status,
                reason,
                error,
            } => {
                let (reason, error) = (reason.clone(), error.clone());
                finish(
                    &self.journal,
                    &self.settings,
                    header,
                    &state,
                    status,
                    reason,
                    error,
                )
                .await?;
            }
        }
        // The step is committed: what `StepDuration` and `HopLatency` measure ends here, before
        // its deliveries (a slow receiver is `DeliveryFailures`' business, not a slow step).
        let handled_ms = crate::execution::millis_since(started);
        if !redelivered {
            let now_ms = Utc::now().timestamp_millis();
            emit::step(
                &header.client_id,
                &header.flow_id,
                handled_ms,
                written_ms.map(|w| (now_ms - w) as f64),
            );
        }
        if !redelivered {
            // Deliveries refused before any attempt (a channel missing from the client's
            // secret, a signing secret of another client) are failures like any other.
            for a in step["actions"].as_array().into_iter().flatten() {
                if a["delivery"]["status"] == "failed" {
                    tracing::warn!(key = %str_of(a, "idempotency_key"), attempt = 0,
                        result = %str_of(&a["delivery"], "last"), "webhook not delivered");
                    emit::delivery_failed(&header.client_id, &header.flow_id);
                }
            }
        }
        deliver_pending(
            &self.journal,
            &self.deliveries,
            &self.settings,
            step,
            Some(IN_STEP_DELIVERY_MS),
        )
        .await;
        let decided_ms = step
            .get("duration")
            .and_then(Value::as_f64)
            .unwrap_or_default();
        tracing::info!(
            execution_id = %header.execution_id,
            client_id = %header.client_id,
            flow_id = %header.flow_id,
            flow_version = header.flow_version,
            seq = view.seq,
            rule = %view.rule,
            outcome = %view.outcome,
            next = %match &view.next { Next::Rule { rule } => format!("goto {rule}"), Next::Done { status, .. } => format!("complete {status}") },
            redelivered,
            // The step's `duration` as its trace shows it (deciding it), and the whole handling
            // of the record (reads, decision, writes) that `StepDuration` measures.
            duration = decided_ms,
            handled_ms,
            "step"
        );
        if let Some(next) = fuse_into {
            return Box::pin(self.hop_fused(
                table,
                header.clone(),
                Arc::clone(flow),
                next,
                fused + 1,
            ))
            .await;
        }
        Ok(())
    }

    async fn put_next(&self, table: &str, h: &ExecutionHeader, next: Carried) -> Result<(), Retry> {
        let next = Carried {
            written_ms: Some(Utc::now().timestamp_millis()),
            ..next
        };
        let plain =
            serde_json::to_vec(&next).map_err(|e| Retry(format!("cannot encode state: {e}")))?;
        let mut row = SealedRow {
            execution_id: h.execution_id.clone(),
            seq: next.state.seq,
            client_id: h.client_id.clone(),
            flow_id: h.flow_id.clone(),
            flow_version: h.flow_version,
            expires_at: Some(self.settings.row_expires_at()),
            sealed: String::new(),
        };
        row.sealed = match self.sealer.seal(&row.aad(), &plain).await {
            Ok(s) => s,
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(e) => {
                return self
                    .end_failed(h, &next.state, format!("cannot seal the state: {e}"))
                    .await;
            }
        };
        let item = serde_json::to_value(&row).map_err(|e| Retry(e.to_string()))?;
        match self.journal.put_row(table, &item).await {
            Ok(true) => Ok(()),
            // The row is there already: this record's earlier handling wrote it (a
            // redelivery), or someone else did. A row the orchestrator did not write is never
            // run (SPEC section 3), so this execution could go no further: it ends now, saying
            // why, rather than waiting for the sweeper's "no progress".
            Ok(false) => {
                if self.sealed_by_us(table, &h.execution_id, row.seq).await? {
                    return Ok(());
                }
                let why = format!(
                    "trigger row {} (before rule `{}`) exists and was not written by rulestream: the chain cannot go on",
                    row.seq,
                    next.state.rule.as_deref().unwrap_or("?")
                );
                self.end_failed(h, &next.state, why).await
            }
            Err(StoreError::Transient(e)) => Err(Retry(e)),
            Err(e) => {
                let why = format!(
                    "cannot write row {} (before rule `{}`): {e}",
                    row.seq,
                    next.state.rule.as_deref().unwrap_or("?")
                );
                self.end_failed(h, &next.state, why).await
            }
        }
    }

    /// Whether trigger row `seq` of `id` in `table` is one the orchestrator sealed for that
    /// execution and seq.
    async fn sealed_by_us(&self, table: &str, id: &str, seq: u64) -> Result<bool, Retry> {
        let existing = match self.journal.row(table, id, seq).await {
            Ok(r) => r,
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            Err(_) => None,
        };
        let Some(row) = existing.and_then(|r| serde_json::from_value::<SealedRow>(r).ok()) else {
            return Ok(false);
        };
        if row.execution_id != id || row.seq != seq {
            return Ok(false);
        }
        match self.sealer.open(&row.aad(), &row.sealed).await {
            Ok(_) => Ok(true),
            // The key could not be read: that says nothing about the row; try again.
            Err(StoreError::Transient(e)) => Err(Retry(e)),
            Err(_) => Ok(false),
        }
    }

    async fn end_failed(
        &self,
        h: &ExecutionHeader,
        state: &RunState,
        why: String,
    ) -> Result<(), Retry> {
        tracing::warn!(execution_id = %h.execution_id, reason = %why, "execution failed");
        finish(
            &self.journal,
            &self.settings,
            h,
            state,
            FAILED,
            Some(why.clone()),
            Some(why),
        )
        .await
    }
}

/// Writes the end of an execution: the final fields and the trace read from the steps table.
/// An output over its bound ends it `FAILED` instead; a summary DynamoDB refuses is replaced by a
/// small `FAILED` one, so an execution always ends.
pub async fn finish<J: Journal>(
    journal: &J,
    settings: &Settings,
    h: &ExecutionHeader,
    state: &RunState,
    status: &str,
    reason: Option<String>,
    error: Option<String>,
) -> Result<(), Retry> {
    let steps = match journal.steps(&h.execution_id).await {
        Ok(s) => decided(s),
        Err(StoreError::Transient(e)) => return Err(Retry(e)),
        Err(_) => Vec::new(),
    };
    let (trace, total) = bounded_trace(&steps);
    let (status, reason, error, output) =
        match crate::execution::output_over_bound(&state.ctx, Some(status)) {
            // Ended FAILED already (the step that outgrew the bound says so, and its values
            // were cut there): no output.
            Some(_) if status == FAILED => (status.to_string(), reason, error, json!({})),
            Some(why) => (FAILED.to_string(), Some(why.clone()), Some(why), json!({})),
            None => (
                status.to_string(),
                reason,
                error,
                Value::Object(state.shown_ctx()),
            ),
        };
    let now = Utc::now();
    let mut doc = json!({
        "execution_id": h.execution_id,
        "client_id": h.client_id,
        "flow_id": h.flow_id,
        "flow_version": h.flow_version,
        "started_at": h.started_at,
        "status": status,
        "finished_at": rfc3339(now),
        "output": output,
        "tags": state.tags,
        "trace": trace,
        "steps_total": total,
        "expires_at": now.timestamp() + settings.retention_secs,
    });
    for (k, v) in [
        ("reason", &reason),
        ("error", &error),
        ("route", &state.route),
        ("rerun_of", &h.rerun_of),
    ] {
        if let Some(v) = v {
            doc[k] = json!(v);
        }
    }
    match journal.finish(&h.execution_id, &doc).await {
        Ok(written) => {
            if written {
                emit::ended(
                    &h.client_id,
                    &h.flow_id,
                    &status,
                    emit::since(&h.started_at),
                );
            }
            Ok(())
        }
        Err(StoreError::Transient(e)) => Err(Retry(e)),
        Err(e) => {
            // Too big for DynamoDB as a whole (its tags, most likely): a small summary keeps
            // why it ended, the first and last steps of its trace and the count, and is counted
            // like any end.
            let cause = format!("cannot record the end ({status}): {e}");
            let why = match &reason {
                Some(r) if status == FAILED => {
                    format!("{}; and {cause}", crate::execution::cut(r, 1000))
                }
                _ => cause,
            };
            tracing::error!(execution_id = %h.execution_id, error = %why, "summary refused; recording a small FAILED one");
            doc["status"] = json!(FAILED);
            doc["reason"] = json!(why);
            doc["error"] = json!(why);
            doc["output"] = json!({});
            doc["tags"] = json!([]);
            let ends: Vec<Value> = match doc["trace"].as_array() {
                Some(t) if t.len() > 2 => vec![t[0].clone(), t[t.len() - 1].clone()],
                Some(t) => t.clone(),
                None => Vec::new(),
            };
            doc["trace"] = Value::Array(ends);
            let written = match journal.finish(&h.execution_id, &doc).await {
                Ok(w) => w,
                // Even the ends of the trace are too big: without them.
                Err(StoreError::Invalid(_)) => {
                    doc["trace"] = json!([]);
                    journal
                        .finish(&h.execution_id, &doc)
                        .await
                        .map_err(|e| Retry(e.to_string()))?
                }
                Err(e) => return Err(Retry(e.to_string())),
            };
            if written {
                emit::ended(&h.client_id, &h.flow_id, FAILED, emit::since(&h.started_at));
            }
            Ok(())
        }
    }
}

/// The body of a webhook of `step`: its idempotency key, then the context every webhook of the
/// step shares (`webhook_body`).
fn webhook_body(step: &Value, key: &str) -> String {
    let mut body = Map::new();
    body.insert("idempotency_key".into(), json!(key));
    if let Some(Value::Object(shared)) = step
        .get("webhook_body")
        .and_then(Value::as_str)
        .and_then(|b| serde_json::from_str(b).ok())
    {
        body.extend(shared);
    }
    Value::Object(body).to_string()
}

/// Sends what is pending in a step's outbox: one claimed attempt, all pending deliveries of the
/// step at once, results recorded on the step. Never fails the caller: what is left pending is
/// due again on the backoff schedule (the sweeper sends it), and after the last attempt it is
/// recorded as failed.
pub async fn deliver_pending<J: Journal, D: Deliveries>(
    journal: &J,
    deliveries: &D,
    settings: &Settings,
    step: &Value,
    wait_at_most_ms: Option<u64>,
) {
    let Some(outbox) = step.get("outbox").and_then(Value::as_array) else {
        return;
    };
    let id = str_of(step, "execution_id").to_string();
    let Some(seq) = step.get("seq").and_then(Value::as_u64) else {
        return;
    };
    let mut actions = step.get("actions").cloned().unwrap_or_else(|| json!([]));
    let pending: Vec<&Value> = outbox
        .iter()
        .filter(|o| {
            let i = o.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
            actions
                .get(i)
                .and_then(|a| a.get("delivery"))
                .map(|d| str_of(d, "status"))
                == Some("pending")
        })
        .collect();
    let done = step
        .get("delivery_attempts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let attempt = u32::try_from(done).unwrap_or(u32::MAX).saturating_add(1);
    let shard = shard_of(&id);
    let now = Utc::now();
    if pending.is_empty() {
        // Nothing left to send: make sure the step leaves the pending index.
        let _ = journal
            .record_delivery(&id, seq, u32::try_from(done).unwrap_or(0), &actions, None)
            .await;
        return;
    }
    if attempt > MAX_DELIVERY_ATTEMPTS {
        // The last attempt was claimed and never recorded (its sender died): give up now, so
        // the step leaves the pending index.
        let done32 = u32::try_from(done).unwrap_or(u32::MAX);
        for o in &pending {
            let i = o.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
            if let Some(a) = actions.get_mut(i) {
                let last = format!(
                    "failed after {MAX_DELIVERY_ATTEMPTS} attempts (the last one was not recorded)"
                );
                a["delivery"]["status"] = json!("failed");
                a["delivery"]["last"] = json!(last);
            }
        }
        let _ = journal
            .record_delivery(&id, seq, done32, &actions, None)
            .await;
        return;
    }
    let lease = now.timestamp_millis() + settings.delivery_lease_ms;
    match journal
        .claim_delivery(&id, seq, attempt, &shard, lease)
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(execution_id = %id, seq, error = %e, "cannot claim a delivery attempt; the sweeper retries it");
            return;
        }
    }
    let sends = pending.iter().map(|o| {
        let d = Delivery {
            idempotency_key: str_of(o, "key").to_string(),
            url: str_of(o, "url").to_string(),
            secret_id: o
                .get("secret_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            timeout_ms: {
                let own = o.get("timeout_ms").and_then(Value::as_u64);
                match wait_at_most_ms {
                    Some(cap) => Some(own.map_or(cap, |t| t.min(cap))),
                    None => own,
                }
            },
            body: match o.get("body").and_then(Value::as_str) {
                Some(b) => b.to_string(),
                None => webhook_body(step, str_of(o, "key")),
            },
        };
        async move { (o, deliveries.deliver(&d).await) }
    });
    let results = futures::future::join_all(sends).await;
    let at = rfc3339(Utc::now());
    let mut still_pending = false;
    for (o, res) in results {
        let i = o.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
        let Some(a) = actions.get_mut(i) else {
            continue;
        };
        let (status, last) = match &res {
            Ok(()) => ("delivered", "delivered".to_string()),
            Err(EffectError::Unavailable(e)) if attempt < MAX_DELIVERY_ATTEMPTS => {
                still_pending = true;
                ("pending", format!("retrying: {e}"))
            }
            Err(EffectError::Unavailable(e)) => (
                "failed",
                format!("failed after {MAX_DELIVERY_ATTEMPTS} attempts: {e}"),
            ),
            Err(e) => ("failed", format!("failed: {e}")),
        };
        // A channel's URL is the client's secret: not even its host is shown (the HTTP
        // client's and the egress policy's errors name it in several forms).
        let last = match o.get("channel").and_then(Value::as_str) {
            Some(ch) => hide_channel_url(&last, str_of(o, "url"), ch),
            None => last,
        };
        if status != "delivered" {
            tracing::warn!(key = %str_of(o, "key"), attempt, result = %last, "webhook not delivered");
        }
        if status == "failed" {
            emit::delivery_failed(str_of(step, "client_id"), str_of(step, "flow_id"));
        }
        let mut history = a
            .get("delivery")
            .and_then(|d| d.get("results"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        history.push(json!({"attempt": attempt, "at": at, "result": last}));
        a["delivery"] =
            json!({"status": status, "attempts": attempt, "last": last, "results": history});
    }
    let due =
        still_pending.then(|| Utc::now().timestamp_millis() + settings.backoff_after(attempt));
    // What was sent must be recorded, or the attempt is sent again after its lease: insist on
    // transient failures (each call already backs off inside the store's own retries).
    for left in (0..RECORD_TRIES).rev() {
        match journal
            .record_delivery(&id, seq, attempt, &actions, due)
            .await
        {
            Ok(_) => return,
            Err(StoreError::Transient(e)) if left > 0 => {
                tracing::info!(execution_id = %id, seq, error = %e, "recording delivery results: trying again");
            }
            Err(e) => {
                tracing::warn!(execution_id = %id, seq, error = %e, "cannot record delivery results; the attempt will be sent again after its lease (the idempotency key lets the receiver drop it)");
                return;
            }
        }
    }
}

/// `text` with every form of a channel's URL (whole, `scheme://host[:port]`, its host in any
/// case) replaced by the channel's name.
fn hide_channel_url(text: &str, url: &str, channel: &str) -> String {
    let name = format!("channel `{channel}`");
    let shown = redact_url(url);
    let authority = shown.split_once("://").map_or("", |(_, h)| h);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => authority,
    }
    .trim_start_matches('[')
    .trim_end_matches(']')
    .to_ascii_lowercase();
    let out = text.replace(url, &name).replace(&shown, &name);
    if host.is_empty() {
        return out;
    }
    // The host in any case (the HTTP client writes it in lower case); ASCII case folding keeps
    // every byte offset of `lower` valid in `out`.
    let lower = out.to_ascii_lowercase();
    let mut rebuilt = String::with_capacity(out.len());
    let mut at = 0;
    while let Some(i) = lower[at..].find(&host) {
        rebuilt.push_str(&out[at..at + i]);
        rebuilt.push_str(&name);
        at += i + host.len();
    }
    rebuilt.push_str(&out[at..]);
    rebuilt
}

/// How long the first attempt of a delivery, made right after its step is recorded, may wait
/// for the receiver. The invocation (and with it the next step of the execution, which follows
/// in the same shard) waits for it; a receiver slower than this gets its next attempts from the
/// sweeper, each with the action's own `timeout_ms` (SPEC 1: a receiver that never answers is
/// recorded as failed without holding the chain).
pub const IN_STEP_DELIVERY_MS: u64 = 1_000;

/// How many times the results of a delivery attempt are written before giving up.
const RECORD_TRIES: usize = 5;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SweepReport {
    /// Steps whose due deliveries were attempted.
    pub deliveries: usize,
    /// Executions ended `FAILED` for lack of progress.
    pub stalled: usize,
    /// Calls that failed (logged).
    pub errors: usize,
}

/// The scheduled side of the loop: sends due deliveries, and ends as `FAILED` every execution
/// with no progress for `settings.stall_secs`. Idempotent and safe to run concurrently: every
/// write is conditional.
pub async fn sweep<J: Journal, D: Deliveries>(
    journal: &J,
    deliveries: &D,
    settings: &Settings,
) -> SweepReport {
    let mut report = SweepReport::default();
    let now = Utc::now();
    for shard in 0..SHARDS {
        let shard = shard.to_string();
        match journal
            .due_deliveries(&shard, now.timestamp_millis(), 100)
            .await
        {
            Ok(steps) => {
                for s in steps {
                    deliver_pending(journal, deliveries, settings, &s, None).await;
                    report.deliveries += 1;
                }
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot list due deliveries");
                report.errors += 1;
            }
        }
    }
    let before = rfc3339(now - chrono::Duration::seconds(settings.stall_secs));
    for shard in 0..SHARDS {
        let shard = shard.to_string();
        let running = match journal.running_before(&shard, &before, 100).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot list running executions");
                report.errors += 1;
                continue;
            }
        };
        for summary in running {
            match end_if_stalled(journal, settings, &summary, now).await {
                Ok(true) => report.stalled += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(execution_id = %str_of(&summary, "execution_id"), error = %e, "cannot end a stalled execution");
                    report.errors += 1;
                }
            }
        }
    }
    report
}

/// A stop marker: the steps item at the seq an execution would take next, written by whoever
/// ends a running execution from outside its chain (the sweeper; a cancel). Its conditional put
/// decides the race with a late step: whichever is written first holds that seq, and a hop that
/// finds a marker there runs nothing. Markers are not steps: traces and replays skip them.
pub fn stop_marker(
    id: &str,
    seq: u64,
    status: &str,
    reason: &str,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Value {
    json!({"execution_id": id, "seq": seq, "stop": status, "reason": reason,
           "decided_at": rfc3339(now), "expires_at": now.timestamp() + settings.retention_secs})
}

/// The header of an execution, from its summary.
fn header_of(summary: &Value) -> ExecutionHeader {
    ExecutionHeader {
        execution_id: str_of(summary, "execution_id").to_string(),
        client_id: str_of(summary, "client_id").to_string(),
        flow_id: str_of(summary, "flow_id").to_string(),
        flow_version: summary
            .get("flow_version")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        started_at: str_of(summary, "started_at").to_string(),
        rerun_of: summary
            .get("rerun_of")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Ends a running execution `FAILED` because the record of its step `seq` reached the stream's
/// on-failure destination: every attempt at that record failed, so the chain cannot go on from
/// it (its step may have been decided, but the row after it was never written). A stop marker
/// claims the seq the execution would take next (`seq`, or the one after the last recorded step
/// if that is later) first, so a step that lands there meanwhile keeps the execution alive.
/// `Ok(true)` when it was ended here. Safe to repeat and to race the chain or another sweep.
pub async fn end_at<J: Journal>(
    journal: &J,
    settings: &Settings,
    id: &str,
    seq: u64,
    why: &str,
) -> Result<bool, StoreError> {
    let Some(summary) = journal.summary(id).await? else {
        // The seq 0 record itself was given up on before the orchestrator recorded the start.
        if seq == 0
            && let Some(row) = pending_row(journal, &settings.trigger_table, id).await?
        {
            tracing::warn!(execution_id = %id, reason = %why, "execution ended: it never started");
            return end_before_start(journal, settings, &row, FAILED, why).await;
        }
        return Ok(false);
    };
    if str_of(&summary, "status") != RUNNING {
        return Ok(false);
    }
    let last = journal.last_step(id).await?;
    let seq = match last
        .as_ref()
        .and_then(|l| l.get("seq").and_then(Value::as_u64))
    {
        // Already stopped (its summary write was lost): finish below.
        Some(l) if last.as_ref().is_some_and(|s| s.get("stop").is_some()) => l,
        Some(l) if l >= seq => l + 1,
        _ => seq,
    };
    let marker = stop_marker(id, seq, FAILED, why, Utc::now(), settings);
    if !journal.put_step(&marker).await? {
        // The step exists: either it ran after all, or a marker is already there.
        let there = journal.step(id, seq).await?;
        if there.as_ref().is_none_or(|s| s.get("stop").is_none()) {
            return Ok(false);
        }
    }
    let steps = decided(journal.steps(id).await?);
    let state = replay(&steps, false);
    tracing::warn!(execution_id = %id, seq, reason = %why, "execution ended: a step will never run");
    finish(
        journal,
        settings,
        &header_of(&summary),
        &state,
        FAILED,
        Some(why.to_string()),
        Some(why.to_string()),
    )
    .await
    .map_err(|Retry(e)| StoreError::Transient(e))?;
    Ok(true)
}

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The execution is now `CANCELLED`: no step runs from `at_seq` on.
    Cancelled {
        /// The seq its stop marker holds.
        at_seq: u64,
    },
    /// It had already ended, with this status.
    AlreadyEnded(String),
    /// There is no such execution.
    NotFound,
}

/// Cancels a running execution (SPEC section 5: it ends `CANCELLED` before its next step): a
/// stop marker claims the seq it would take next — a step that lands there first moves the
/// marker on — then the summary ends `CANCELLED` with the trace so far. Safe to repeat and to
/// race the chain or the sweeper.
pub async fn cancel<J: Journal>(
    journal: &J,
    settings: &Settings,
    id: &str,
    reason: &str,
) -> Result<Cancel, StoreError> {
    for _ in 0..20 {
        let Some(summary) = journal.summary(id).await? else {
            // Started by a trigger row that the orchestrator has not picked up yet: a CANCELLED
            // summary written first makes the orchestrator pass over that row.
            let Some(row) = pending_row(journal, &settings.trigger_table, id).await? else {
                return Ok(Cancel::NotFound);
            };
            if end_before_start(journal, settings, &row, CANCELLED, reason).await? {
                return Ok(Cancel::Cancelled { at_seq: 0 });
            }
            continue;
        };
        let status = str_of(&summary, "status");
        if status != RUNNING {
            return Ok(Cancel::AlreadyEnded(status.to_string()));
        }
        let last = journal.last_step(id).await?;
        let stopped = last
            .as_ref()
            .and_then(|s| s.get("stop"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let seq = last
            .as_ref()
            .and_then(|s| s.get("seq").and_then(Value::as_u64))
            .map_or(0, |n| n + 1);
        // The last step already ended the execution (its summary is being written): it has no
        // next step to cancel. Its end stands, and the cancel says so (a 409, not a CANCELLED
        // that the summary would then contradict).
        let decided_end = last
            .as_ref()
            .filter(|_| stopped.is_none())
            .and_then(|s| s.get("next"))
            .and_then(|n| Next::deserialize(n).ok())
            .and_then(|n| match n {
                Next::Done { status, .. } => Some(status),
                Next::Rule { .. } => None,
            });
        if let Some(status) = decided_end {
            // The orchestrator writes that end's summary (it alone holds what a rerun carried
            // over from the original); if it never does, the sweeper ends the execution.
            return Ok(Cancel::AlreadyEnded(status));
        }
        let (status, why, at_seq) = match stopped {
            // Stopped already (its summary write was lost): finish what that marker says.
            Some(s) => {
                let why = last
                    .as_ref()
                    .map(|l| str_of(l, "reason").to_string())
                    .unwrap_or_default();
                (s, why, seq.saturating_sub(1))
            }
            None => {
                let marker = stop_marker(id, seq, CANCELLED, reason, Utc::now(), settings);
                if !journal.put_step(&marker).await? {
                    // A step took that seq first: look again.
                    continue;
                }
                (CANCELLED.to_string(), reason.to_string(), seq)
            }
        };
        let steps = decided(journal.steps(id).await?);
        let state = replay(&steps, false);
        let error = (status != CANCELLED).then(|| why.clone());
        finish(
            journal,
            settings,
            &header_of(&summary),
            &state,
            &status,
            Some(why),
            error,
        )
        .await
        .map_err(|Retry(e)| StoreError::Transient(e))?;
        return Ok(if status == CANCELLED {
            Cancel::Cancelled { at_seq }
        } else {
            Cancel::AlreadyEnded(status)
        });
    }
    Err(StoreError::Transient(format!(
        "{id} kept moving while it was being cancelled: try again"
    )))
}

/// The seq 0 row that started `id` in `table`, if the orchestrator may still pick it up: a
/// client's unsealed row whose id carries its client (anything else it never runs, or ends with a
/// summary of its own).
pub async fn pending_row<J: Journal>(
    journal: &J,
    table: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    Ok(journal.row(table, id, 0).await?.filter(|r| {
        r.get("sealed").is_none()
            && str_of(r, "execution_id") == id
            && check_execution_id(str_of(r, "client_id"), id).is_ok()
    }))
}

/// An execution's summary; for one that a client has started but the orchestrator has not
/// picked up yet (only its seq 0 row exists), a `RUNNING` one with no step (what `GET` and
/// `status` show right after a start).
pub async fn summary_or_pending<J: Journal>(
    journal: &J,
    table: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    if let Some(summary) = journal.summary(id).await? {
        return Ok(Some(summary));
    }
    Ok(pending_row(journal, table, id)
        .await?
        .map(|row| header_before_start(&row, RUNNING)))
}

/// The summary fields a seq 0 row gives before any step: id, client, flow, status, the pinned
/// version and `rerun_of` if any, an empty trace.
fn header_before_start(row: &Value, status: &str) -> Value {
    let mut doc = json!({
        "execution_id": str_of(row, "execution_id"),
        "client_id": str_of(row, "client_id"),
        "flow_id": str_of(row, "flow_id"),
        "status": status,
        "trace": [],
        "steps_total": 0,
    });
    if let Some(v) = row.get("flow_version").and_then(Value::as_u64) {
        doc["flow_version"] = json!(v);
    }
    if let Some(r) = row.get("rerun_of").and_then(Value::as_str) {
        doc["rerun_of"] = json!(r);
    }
    doc
}

/// Ends an execution whose seq 0 row no step has run yet (`CANCELLED`, or `FAILED` when its
/// record reached the on-failure destination): its final summary, on condition that none
/// exists. `Ok(false)`: the orchestrator wrote its summary first.
async fn end_before_start<J: Journal>(
    journal: &J,
    settings: &Settings,
    row: &Value,
    status: &str,
    reason: &str,
) -> Result<bool, StoreError> {
    let now = rfc3339(Utc::now());
    let mut doc = header_before_start(row, status);
    doc["started_at"] = json!(now);
    doc["finished_at"] = json!(now);
    doc["reason"] = json!(reason);
    if status == FAILED {
        doc["error"] = json!(reason);
    }
    doc["output"] = json!({});
    doc["tags"] = json!([]);
    doc["expires_at"] = json!(Utc::now().timestamp() + settings.retention_secs);
    let written = journal.start(&doc).await?;
    if written {
        emit::ended(
            str_of(row, "client_id"),
            str_of(row, "flow_id"),
            status,
            Some(0.0),
        );
    }
    Ok(written)
}

/// The steps that were decided (stop markers left out).
fn decided(steps: Vec<Value>) -> Vec<Value> {
    steps
        .into_iter()
        .filter(|s| s.get("stop").is_none())
        .collect()
}

async fn end_if_stalled<J: Journal>(
    journal: &J,
    settings: &Settings,
    summary: &Value,
    now: DateTime<Utc>,
) -> Result<bool, Retry> {
    let id = str_of(summary, "execution_id").to_string();
    let last = journal
        .last_step(&id)
        .await
        .map_err(|e| Retry(e.to_string()))?;
    let since = last
        .as_ref()
        .map(|s| str_of(s, "decided_at"))
        .unwrap_or_else(|| str_of(summary, "started_at"));
    let Ok(since_t) = DateTime::parse_from_rfc3339(since) else {
        return Ok(false);
    };
    let idle = (now - since_t.with_timezone(&Utc)).num_seconds();
    if idle < settings.stall_secs {
        return Ok(false);
    }
    let why = match &last {
        Some(s) => {
            let stuck = match s.pointer("/next/rule").and_then(Value::as_str) {
                Some(next) => format!("rule `{next}`, which follows,"),
                None => "the step that follows".to_string(),
            };
            format!(
                "no progress for {idle}s after step {} (rule `{}`, outcome `{}`): {stuck} never ran (its record may have reached the on-failure destination)",
                s.get("seq").and_then(Value::as_u64).unwrap_or(0),
                str_of(s, "rule"),
                str_of(s, "outcome")
            )
        }
        None => {
            format!("no progress for {idle}s: the first step (the flow's start rule) never ran")
        }
    };
    // Claim the next seq with a stop marker first: if a late step took it meanwhile, the execution
    // is not stalled after all; if the marker wins, that late step finds it and runs nothing.
    let next_seq = last
        .as_ref()
        .and_then(|s| s.get("seq").and_then(Value::as_u64))
        .map_or(0, |n| n + 1);
    if last.as_ref().is_none_or(|s| s.get("stop").is_none()) {
        let marker = stop_marker(&id, next_seq, FAILED, &why, now, settings);
        match journal.put_step(&marker).await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => return Err(Retry(e.to_string())),
        }
    }
    let steps = decided(journal.steps(&id).await.map_err(|e| Retry(e.to_string()))?);
    // Outcomes by rule are not part of a summary: no need to rebuild them.
    let state = replay(&steps, false);
    let h = header_of(summary);
    tracing::warn!(execution_id = %id, reason = %why, "stalled execution ended");
    finish(
        journal,
        settings,
        &h,
        &state,
        FAILED,
        Some(why.clone()),
        Some(why),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CLIENT_DATA, EXPLAIN_VALUE_CHARS};

    #[test]
    fn templates_fill_paths_from_the_public_context() {
        let ctx = json!({"execution": {"id": "c:1"}, "status": "DENIED", "output": {"n": 3, "l": [1, 2]},
                         "reason": null});
        assert_eq!(
            render_template(
                "{{execution.id}} is {{ status }}: n={{output.n}} l={{output.l.1}} {{reason}}{{missing.x}}!",
                &ctx
            ),
            "c:1 is DENIED: n=3 l=2 !"
        );
        assert_eq!(render_template("no {{ end", &ctx), "no {{ end");
        let client = json!({"channels": {"ops": "https://hooks.example/x"}});
        assert_eq!(
            channel_url(Some(&client), "ops").as_deref(),
            Some("https://hooks.example/x")
        );
        assert_eq!(channel_url(Some(&client), "sales"), None);
        assert_eq!(channel_url(None, "ops"), None);
    }

    #[test]
    fn urls_show_scheme_host_and_port_only() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/XYZ?x=1"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:8080/a"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(redact_url("nonsense"), "<not a url>");
    }

    #[test]
    fn a_channels_url_never_shows_in_a_delivery_result() {
        let url = "https://Chat.Corp.Example:8443/hook/T0KEN?x=1";
        for text in [
            "retrying: POST https://chat.corp.example:8443: operation timed out",
            "failed: blocked: chat.corp.example:8443 is not in RULESTREAM_EGRESS_ALLOW",
            "failed: blocked: Chat.Corp.Example resolves only to internal addresses",
            "retrying: error sending request for url (https://Chat.Corp.Example:8443/hook/T0KEN?x=1)",
        ] {
            let shown = super::hide_channel_url(text, url, "ops");
            assert!(shown.contains("channel `ops`"), "{shown}");
            assert!(!shown.to_lowercase().contains("corp.example"), "{shown}");
            assert!(!shown.contains("T0KEN"), "{shown}");
        }
    }

    #[test]
    fn explain_values_are_cut_and_client_data_hidden() {
        let mut e = json!({"type": "conditions", "conditions": [
            {"field": "client.limit", "actual": 5, "expected": 3},
            {"field": "input.x", "actual": "y".repeat(300), "expected": [1, 2]},
        ]});
        sanitize_explain(&mut e);
        assert_eq!(e["conditions"][0]["actual"], CLIENT_DATA);
        let cut_len = e["conditions"][1]["actual"]
            .as_str()
            .map(|s| s.chars().count());
        assert_eq!(cut_len, Some(EXPLAIN_VALUE_CHARS));
        assert_eq!(
            e["conditions"][1]["actual"],
            "y".repeat(EXPLAIN_VALUE_CHARS)
        );
    }

    #[test]
    fn traces_past_their_bound_keep_the_ends_and_the_count() {
        let steps: Vec<Value> = (0..500)
            .map(|i| json!({"seq": i, "rule": "r", "blob": "x".repeat(1000)}))
            .collect();
        let (kept, total) = bounded_trace(&steps);
        assert_eq!(total, 500);
        assert!(kept.len() < 500 && kept.len() >= 2);
        assert_eq!(kept[0]["seq"], 0);
        assert_eq!(kept[kept.len() - 1]["seq"], 499);
        let small: Vec<Value> = (0..3).map(|i| json!({"seq": i, "outbox": []})).collect();
        let (kept, _) = bounded_trace(&small);
        assert_eq!(kept.len(), 3);
        assert!(kept[0].get("outbox").is_none());
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        let s = shard_of("acme:1");
        assert_eq!(s, shard_of("acme:1"));
        assert!(s.parse::<u32>().is_ok_and(|n| n < SHARDS));
    }
}
