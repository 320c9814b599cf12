//! What a step leaves behind: its record (the trace line), its actions, where the execution goes
//! next, a whole run's report, and what a trace may show (values cut, client data hidden).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::conditions::ConditionResult;
use crate::model::MasterKind;

/// An explain value longer than this is cut (SPEC section 1, Trace).
pub const EXPLAIN_VALUE_CHARS: usize = 256;
pub use crate::execution::CLIENT_DATA;

/// Why a rule got its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Explain<'v> {
    /// A `when` expression and its value.
    Expression {
        /// The CEL text.
        expression: Arc<str>,
        /// What it gave.
        result: Value,
    },
    /// JSON conditions, each with its result.
    Conditions {
        /// Whether some group held.
        matched: bool,
        /// Every condition.
        conditions: Vec<ConditionResult<'v>>,
    },
    /// A master rule and what it answered.
    Master {
        /// Catalog id.
        rule_id: String,
        /// Catalog version.
        version: u64,
        /// How it ran.
        kind: MasterKind,
        /// What it gave.
        result: Value,
    },
    /// Why the rule did not run.
    Skipped {
        /// Explanation.
        reason: String,
    },
    /// The token bucket was empty (or the limiter down and the rule fails closed).
    Limited {
        /// Explanation.
        reason: String,
    },
    /// Evaluation failed.
    Error {
        /// Explanation.
        message: String,
    },
}

/// An action of a step: applied to the state (`add_tag`, `route_to`, `set_field`) or to be
/// delivered by the caller (`call_webhook`, `send_notification`) exactly once, by its key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedAction {
    /// `<execution_id>:<seq>:<action index>`.
    pub idempotency_key: String,
    /// The rule whose transition carries it.
    pub rule: String,
    /// The action as written.
    #[serde(flatten)]
    pub action: crate::model::Action,
    /// For deliveries, what happened: `delivered`, or why not (set by the orchestrator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
}

/// One step's record: the trace line of an execution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord<'v> {
    /// Sequence number of the step.
    pub seq: u64,
    /// The rule that ran.
    pub rule: Arc<str>,
    /// Its outcome.
    pub outcome: Arc<str>,
    /// The transition taken, in flow syntax (`{"goto": "review"}`), without `set`/`actions`.
    pub transition: Arc<Value>,
    /// Why.
    pub explain: Explain<'v>,
    /// Values written into `ctx` by this step, as a trace shows them: a value of client data
    /// as `"<client data>"`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub set: Map<String, Value>,
    /// The values of client data this step wrote into `ctx` (never serialized: the chain keeps
    /// them sealed in the step item).
    #[serde(skip)]
    pub client_set: Map<String, Value>,
    /// Actions of this step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<PlannedAction>,
    /// Time spent deciding the step, in milliseconds (microsecond precision): `duration` in the
    /// trace and the step item (SPEC section 1).
    #[serde(rename = "duration")]
    pub duration_ms: f64,
    /// What a dry run did differently here (a rate limit treated as granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl StepRecord<'_> {
    /// The record with every lent value copied.
    pub fn into_owned(self) -> StepRecord<'static> {
        StepRecord {
            seq: self.seq,
            rule: self.rule,
            outcome: self.outcome,
            transition: self.transition,
            explain: self.explain.into_owned(),
            set: self.set,
            client_set: self.client_set,
            actions: self.actions,
            duration_ms: self.duration_ms,
            note: self.note,
        }
    }
}

impl Explain<'_> {
    /// The explain with every lent value copied.
    pub fn into_owned(self) -> Explain<'static> {
        match self {
            Explain::Expression { expression, result } => {
                Explain::Expression { expression, result }
            }
            Explain::Conditions {
                matched,
                conditions,
            } => Explain::Conditions {
                matched,
                conditions: conditions
                    .into_iter()
                    .map(ConditionResult::into_owned)
                    .collect(),
            },
            Explain::Master {
                rule_id,
                version,
                kind,
                result,
            } => Explain::Master {
                rule_id,
                version,
                kind,
                result,
            },
            Explain::Skipped { reason } => Explain::Skipped { reason },
            Explain::Limited { reason } => Explain::Limited { reason },
            Explain::Error { message } => Explain::Error { message },
        }
    }
}

/// Where an execution goes after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Next {
    /// Run this rule at `seq + 1`.
    Rule {
        /// Rule id (shared with the compiled flow).
        rule: Arc<str>,
    },
    /// The execution ended.
    Done {
        /// A terminal status, the default status, or `FAILED`.
        status: String,
        /// Why, for people.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// For `FAILED`: the error.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// The result of [`Session::step`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult<'v> {
    /// The trace line (`None` when no rule ran: `max_steps` was exceeded or the rule is unknown).
    pub record: Option<StepRecord<'v>>,
    /// What comes next.
    pub next: Next,
}

/// A whole run, as dry-run and inline mode report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport<'v> {
    /// Final status.
    pub status: String,
    /// Why, when known.
    pub reason: Option<String>,
    /// For `FAILED`: the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rule ids in the order they ran.
    pub path: Vec<Arc<str>>,
    /// Every step.
    pub steps: Vec<StepRecord<'v>>,
    /// Final `ctx`.
    pub ctx: Map<String, Value>,
    /// Tags added.
    pub tags: Vec<String>,
    /// Route set by `route_to`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Every action of every step, in order.
    pub actions: Vec<PlannedAction>,
}

impl RunReport<'_> {
    /// The report with every lent value copied, to keep beyond the input it was run on.
    pub fn into_owned(self) -> RunReport<'static> {
        RunReport {
            status: self.status,
            reason: self.reason,
            error: self.error,
            path: self.path,
            steps: self.steps.into_iter().map(StepRecord::into_owned).collect(),
            ctx: self.ctx,
            tags: self.tags,
            route: self.route,
            actions: self.actions,
        }
    }

    /// The dry-run answer of SPEC section 6 (and of the API's `POST /v1/dry-run`):
    /// `{status, reason, path, steps: [{rule, outcome, transition, explain, set, note?}], ctx,
    /// tags, actions}` (+ `error`, `route`), explains cut and client data hidden as in a trace.
    pub fn spec_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut explain = serde_json::to_value(&s.explain).unwrap_or(Value::Null);
                sanitize_explain(&mut explain);
                let mut step = json!({
                    "rule": s.rule,
                    "outcome": s.outcome,
                    "transition": s.transition,
                    "explain": explain,
                    "set": s.set,
                });
                if let Some(note) = &s.note {
                    step["note"] = json!(note);
                }
                step
            })
            .collect();
        let mut doc = json!({
            "status": self.status,
            "reason": self.reason,
            "path": self.path,
            "steps": steps,
            "ctx": self.ctx,
            "tags": self.tags,
            "actions": self.actions.iter().map(|a| {
                let mut a = serde_json::to_value(a).unwrap_or(Value::Null);
                if let Some(url) = a.get_mut("url")
                    && let Some(shown) = url.as_str().map(redact_url)
                {
                    *url = Value::String(shown);
                }
                a
            }).collect::<Vec<Value>>(),
        });
        if let Some(route) = &self.route {
            doc["route"] = json!(route);
        }
        if let Some(e) = &self.error {
            doc["error"] = json!(e);
        }
        doc
    }
}

pub use crate::checks::redact_url;

/// Whether a condition's field reads client data (`client`, `client.x`, `client[...]`): its
/// actual value is never shown (SPEC section 1, Trace).
pub fn reads_client(field: &str) -> bool {
    field == "client" || field.starts_with("client.") || field.starts_with("client[")
}

/// Cuts long values and hides client data in a step's explain (SPEC section 1, Trace).
pub fn sanitize_explain(explain: &mut Value) {
    let Some(conds) = explain.get_mut("conditions").and_then(Value::as_array_mut) else {
        return;
    };
    for c in conds {
        let from_client = reads_client(c.get("field").and_then(Value::as_str).unwrap_or_default());
        if let Some(actual) = c.get_mut("actual") {
            if from_client {
                *actual = Value::String(CLIENT_DATA.into());
            } else {
                cut_value(actual);
            }
        }
        if let Some(v) = c.get_mut("expected") {
            cut_value(v);
        }
    }
}

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A value as a trace shows it: cut to 256 characters (see below).
pub fn shown_value(v: &Value) -> Value {
    let mut v = v.clone();
    cut_value(&mut v);
    v
}

/// A value over 256 characters becomes its first 256 (SPEC section 1, Trace: "cut to 256
/// characters"); a list or an object counts the characters of its JSON text, and is shown as
/// the first 256 of that text once cut.
fn cut_value(v: &mut Value) {
    match v {
        Value::String(s) if s.chars().count() > EXPLAIN_VALUE_CHARS => {
            *s = first_chars(s, EXPLAIN_VALUE_CHARS);
        }
        Value::Array(_) | Value::Object(_) => {
            let text = v.to_string();
            if text.chars().count() > EXPLAIN_VALUE_CHARS {
                *v = Value::String(first_chars(&text, EXPLAIN_VALUE_CHARS));
            }
        }
        _ => {}
    }
}
