//! The flow file and master-rule catalog as citizen developers write them (SPEC sections 1 and 2).
//!
//! These types are the single source of truth for the JSON format: serde reads them with unknown
//! fields rejected, and [`flow_schema`] derives the published JSON Schema
//! (`client-configs/schema/flow.schema.json`) from them, so the two cannot drift apart.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Status used when a flow falls off its last rule and `default_status` is not set.
pub const DEFAULT_STATUS: &str = "COMPLETED";
/// Status of an execution that ended on an error or on `max_steps`.
pub const FAILED: &str = "FAILED";
/// Step budget when a flow does not set `max_steps`.
pub const DEFAULT_MAX_STEPS: u32 = 100;

/// One client flow: an ordered list of rules and how their outcomes chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rulestream flow")]
pub struct Flow {
    /// Optional pointer to this schema, for editors.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The client that owns the flow, e.g. `acme-bank`.
    pub client_id: String,
    /// The flow's id within the client, e.g. `trade-preclear`.
    pub flow_id: String,
    /// Monotonic version number; each upload is an immutable version.
    #[schemars(range(min = 1))]
    pub version: u64,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Statuses a `complete` transition may end with.
    #[serde(default)]
    pub terminal_statuses: Vec<String>,
    /// Status when the flow falls off its last rule (default `COMPLETED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_status: Option<String>,
    /// Id of the first rule (default: the first rule in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Most steps one execution may take before it ends `FAILED` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Path (e.g. `input.employee.id`) whose value picks the gray bucket of an execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gray_key: Option<String>,
    /// Run consecutive rules without side effects (no `rate_limit`, no `lambda`/`http` master
    /// rule, no delivering action) in the same hop: each is still its own step and seq, and a
    /// trigger row is written only where a hop starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fuse: bool,
    /// The rules, in file order (`next` means the following one).
    pub rules: Vec<Rule>,
}

impl Flow {
    /// The status used when the flow falls off its last rule.
    pub fn default_status(&self) -> &str {
        self.default_status.as_deref().unwrap_or(DEFAULT_STATUS)
    }

    /// The step budget of one execution.
    pub fn max_steps(&self) -> u32 {
        self.max_steps.unwrap_or(DEFAULT_MAX_STEPS)
    }

    /// Whether `status` ends an execution of this flow.
    pub fn is_terminal(&self, status: &str) -> bool {
        status == self.default_status() || self.terminal_statuses.iter().any(|s| s == status)
    }
}

/// One rule: how it decides (exactly one of `when`, `conditions`, `use`) and where each outcome goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id within the flow.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A CEL expression giving a bool (outcome `true`/`false`) or a string (the outcome label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Groups of conditions: AND inside a group, OR between groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Vec<Condition>>>,
    /// A master rule from the catalog.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_rule: Option<String>,
    /// Pins the catalog version of `use` (default: the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_version: Option<u64>,
    /// Parameters for the master rule of `use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Map<String, Value>>,
    /// Runs the rule only for this share of gray keys; others get outcome `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gray: Option<Gray>,
    /// A token bucket; when it is empty the outcome is `limited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Outcome -> transition.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub on: IndexMap<String, Transition>,
    /// Transition for any evaluated outcome not in `on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Transition>,
    /// Transition when evaluating the rule fails (otherwise the execution ends `FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<Transition>,
}

/// Outcome of a rule passed over: outside its gray share, or outside the execution's `rules`
/// subset.
pub const SKIPPED: &str = "skipped";
/// Outcome of a rule whose token bucket is empty.
pub const LIMITED: &str = "limited";
/// Outcome recorded when evaluating a rule failed.
pub const ERROR: &str = "error";

/// How a rule is left once its outcome is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Way<'a, T> {
    /// One of the rule's transitions (`on.<outcome>`, `default` or `on_error`).
    Take(&'a T),
    /// No transition applies: on to the next rule in order, or off the end of the flow.
    NextRule,
    /// An evaluation error with no `on_error`: the execution ends `FAILED`.
    Fail,
}

/// How a rule's outcome came about, which decides the transitions it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The rule decided it (`true`/`false`, or a label, whatever its text: a `when` that gives
    /// `"skipped"` is a label like any other).
    Decided,
    /// A gate passed the rule over (`skipped`: gray share or rules subset) or its token bucket
    /// was empty (`limited`).
    Gated,
    /// Evaluating it failed.
    Errored,
}

/// The way the engine leaves a rule (generic over the transition type, so the engine picks its
/// compiled transitions by the same rule). An error takes `on_error`; a rule passed over
/// (`skipped`) or limited takes only its own `on` entry; any outcome the rule decided takes
/// `on.<outcome>`, then `default`; with none of them, the next rule.
pub fn way<'a, T>(
    on_outcome: Option<&'a T>,
    default: Option<&'a T>,
    on_error: Option<&'a T>,
    reached: Reached,
) -> Way<'a, T> {
    let t = match reached {
        Reached::Errored => return on_error.map_or(Way::Fail, Way::Take),
        Reached::Gated => on_outcome,
        Reached::Decided => on_outcome.or(default),
    };
    t.map_or(Way::NextRule, Way::Take)
}

/// Why a rule may be left a given way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Because {
    /// Some outcome of its decision.
    Outcome,
    /// An evaluation error.
    Error,
    /// Its gray share passed it over.
    Gray,
    /// Its token bucket was empty.
    Limited,
    /// An execution's `rules` subset left it out: possible for every rule, but only for
    /// executions started with a subset.
    Subset,
}

impl Rule {
    /// Every way this rule can be left, whatever happens when it runs, each with why: the list
    /// that validation walks, built on [`way`] so it never disagrees with the engine.
    pub fn ways(&self) -> Vec<(Way<'_, Transition>, Because)> {
        let mut out: Vec<(Way<'_, Transition>, Because)> = Vec::new();
        let decided = |o: &str| {
            way(
                self.on.get(o),
                self.default.as_ref(),
                None,
                Reached::Decided,
            )
        };
        for o in self.on.keys() {
            if o != SKIPPED && o != LIMITED {
                out.push((decided(o), Because::Outcome));
            }
        }
        // An outcome `on` does not list (any label but `true`/`false` when both are listed).
        let bool_covered = self.on.contains_key("true") && self.on.contains_key("false");
        if !bool_covered {
            out.push((
                way(None, self.default.as_ref(), None, Reached::Decided),
                Because::Outcome,
            ));
        }
        out.push((
            way(None, None, self.on_error.as_ref(), Reached::Errored),
            Because::Error,
        ));
        let gated = |o: &str| way(self.on.get(o), self.default.as_ref(), None, Reached::Gated);
        if self.gray.is_some() {
            out.push((gated(SKIPPED), Because::Gray));
        }
        if self.rate_limit.is_some() {
            out.push((gated(LIMITED), Because::Limited));
        }
        out.push((gated(SKIPPED), Because::Subset));
        out
    }
}

/// One `{field, op, value}` test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Path of the value to test, e.g. `input.trade.amount` (roots as in CEL).
    pub field: String,
    /// The comparison.
    pub op: Op,
    /// What to compare with (for `is_null`: `true` or `false`). `null` is a value here
    /// (`{"op": "eq", "value": null}`), distinct from leaving `value` out.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
}

/// Reads a field that is present (even as `null`) as `Some`; a missing one stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Condition operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (numbers compare by value: `1 == 1.0`).
    Eq,
    /// Not equal.
    Neq,
    /// Greater than (numbers, or strings in lexical order).
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// The field is one of the values of the list `value`.
    In,
    /// The field is none of the values of the list `value`.
    NotIn,
    /// Substring of a string field, or member of a list field.
    Contains,
    /// The string field starts with `value`.
    StartsWith,
    /// The regex `value` finds a match in the string field.
    Matches,
    /// The field is missing or null (`value: true`) or present (`value: false`).
    IsNull,
}

impl Op {
    /// The name used in flow files.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Contains => "contains",
            Op::StartsWith => "starts_with",
            Op::Matches => "matches",
            Op::IsNull => "is_null",
        }
    }
}

/// Gray gate of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gray {
    /// Share of gray keys (0–100) for which the rule runs.
    pub percent: f64,
}

/// Token bucket of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size (default: `per_second`, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
    /// When the limiter cannot be reached: `true` runs the rule anyway, `false` makes it `limited`.
    #[serde(default)]
    pub fail_open: bool,
}

impl RateLimit {
    /// The bucket capacity.
    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.per_second.max(1.0))
    }
}

/// Where an outcome goes: exactly one of `next`, `goto`, `complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// `true`: go on to the following rule in file order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<bool>,
    /// Go to the rule with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goto: Option<String>,
    /// End the execution with this status (one of `terminal_statuses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<String>,
    /// Why, for people; kept as the execution's reason when it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `ctx` key -> CEL expression, evaluated in order and written into `ctx`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub set: IndexMap<String, String>,
    /// Side effects, delivered once per step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// The kinds of action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    /// POST the step to `url` (signed with HMAC-SHA256 when `secret_id` is set).
    CallWebhook,
    /// Send `template` on `channel`.
    SendNotification,
    /// Add `tag` to the execution's tags.
    AddTag,
    /// Set the execution's route to `queue`.
    RouteTo,
    /// Write the literal `value` into `ctx.<field>`.
    SetField,
}

impl ActionType {
    /// The name used in flow files.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::CallWebhook => "call_webhook",
            ActionType::SendNotification => "send_notification",
            ActionType::AddTag => "add_tag",
            ActionType::RouteTo => "route_to",
            ActionType::SetField => "set_field",
        }
    }

    /// Fields this kind requires, then fields it may have (besides `type`).
    pub fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            ActionType::CallWebhook => (&["url"], &["secret_id", "timeout_ms"]),
            ActionType::SendNotification => (&["channel", "template"], &[]),
            ActionType::AddTag => (&["tag"], &[]),
            ActionType::RouteTo => (&["queue"], &[]),
            ActionType::SetField => (&["field", "value"], &[]),
        }
    }
}

/// One action of a transition. Which fields apply depends on `type` (see [`ActionType::fields`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The kind of action.
    #[serde(rename = "type")]
    pub kind: ActionType,
    /// `call_webhook`: where to POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `call_webhook`: Secrets Manager id of the HMAC key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// `call_webhook`: request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `send_notification`: channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `send_notification`: template name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `add_tag`: the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `route_to`: the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// `set_field`: the `ctx` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `set_field`: the literal value (`null` is a value here, distinct from leaving it out).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
}

impl Action {
    /// Names of the optional fields that are set on this action.
    pub fn present_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let pairs: [(&'static str, bool); 9] = [
            ("url", self.url.is_some()),
            ("secret_id", self.secret_id.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("channel", self.channel.is_some()),
            ("template", self.template.is_some()),
            ("tag", self.tag.is_some()),
            ("queue", self.queue.is_some()),
            ("field", self.field.is_some()),
            ("value", self.value.is_some()),
        ];
        for (name, present) in pairs {
            if present {
                out.push(name);
            }
        }
        out
    }
}

/// Kinds of master rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MasterKind {
    /// A CEL `expression` that may read `params`.
    Cel,
    /// A Lambda `function` (name or ARN) answering `{"outcome", "set"}`.
    Lambda,
    /// An HTTP endpoint `url` answering `{"outcome", "set"}`.
    Http,
}

impl MasterKind {
    /// What a master rule of this kind calls, for messages: "Lambda function", "HTTP endpoint".
    pub fn target_name(self) -> &'static str {
        match self {
            MasterKind::Cel => "CEL rule",
            MasterKind::Lambda => "Lambda function",
            MasterKind::Http => "HTTP endpoint",
        }
    }
}

/// A reusable rule in the catalog (SPEC section 2). Attributes it does not know are ignored,
/// in catalog source files as in the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MasterRule {
    /// Catalog id, used by a flow rule's `use`.
    pub rule_id: String,
    /// Version; a flow may pin it with `use_version`.
    #[schemars(range(min = 1))]
    pub version: u64,
    /// How the rule runs.
    pub kind: MasterKind,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Declared parameters: name -> default value (`null`: the flow must supply it), or a list
    /// of names (each one the flow must supply). A rule that declares none (absent, `{}` or
    /// `[]`) takes whatever `params` a flow gives it, but a flow must give a `cel` rule every
    /// `params.<name>` its expression reads; one that declares some refuses others (most likely
    /// typos).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "declared_params"
    )]
    #[schemars(with = "Option<ParamsDecl>")]
    pub params: Option<serde_json::Map<String, Value>>,
    /// `cel`: the expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// `lambda`: function name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// `http`: endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `lambda`/`http`: how long to wait for the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// How a catalog rule declares its parameters (see [`MasterRule::params`]).
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
enum ParamsDecl {
    /// Name -> default value (`null`: the flow must supply it).
    Defaults(serde_json::Map<String, Value>),
    /// Names the flow must supply.
    Names(Vec<String>),
}

fn declared_params<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Map<String, Value>>, D::Error> {
    Ok(match Option::<ParamsDecl>::deserialize(d)? {
        // `{}` and `[]` declare nothing, as an absent `params` does (rules stored before the
        // list form existed carry `{}`).
        None => None,
        Some(ParamsDecl::Defaults(m)) if m.is_empty() => None,
        Some(ParamsDecl::Names(n)) if n.is_empty() => None,
        Some(ParamsDecl::Defaults(m)) => Some(m),
        Some(ParamsDecl::Names(names)) => {
            Some(names.into_iter().map(|n| (n, Value::Null)).collect())
        }
    })
}

/// The JSON Schema of a flow file, derived from [`Flow`].
pub fn flow_schema() -> Value {
    schema_for::<Flow>("urn:rulestream:schema:flow")
}

/// The JSON Schema of a catalog rule, derived from [`MasterRule`].
pub fn master_rule_schema() -> Value {
    schema_for::<MasterRule>("urn:rulestream:schema:master-rule")
}

fn schema_for<T: JsonSchema>(id: &str) -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    strip_null(&mut schema);
    if let Value::Object(map) = &mut schema {
        map.insert("$id".into(), Value::String(id.into()));
    }
    schema
}

/// Optional fields are omitted rather than written as `null`: drop `null` from the schema so
/// editors do not suggest it and validation messages stay simple.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            let collapse = if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
                (any.len() == 1).then(|| any.remove(0))
            } else {
                None
            };
            if let Some(Value::Object(inner)) = collapse {
                map.remove("anyOf");
                for (k, val) in inner {
                    map.entry(k).or_insert(val);
                }
            }
            for val in map.values_mut() {
                strip_null(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}
