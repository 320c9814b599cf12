//! The step engine: a flow version compiled once ([`CompiledFlow`]), and a [`Session`] that runs
//! one rule at a time against an execution's state, giving its outcome, transition, `set` values,
//! actions and explain record. [`run`] loops over it for dry-runs and inline executions; the
//! orchestrator calls [`Session::step`] once per trigger row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cel::Value as CelValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::catalog::Catalog;
use crate::conditions::{self, CompiledCondition, ConditionResult};
use crate::expr::{self, Expr, PathTrie};
use crate::gray;
use crate::model::{ActionType, FAILED, Flow, MasterKind, Rule, Transition};
use crate::ports::Effects;

/// Outcome of a rule outside its gray share or outside the execution's `rules` subset.
pub const SKIPPED: &str = "skipped";
/// Outcome of a rule whose token bucket is empty.
pub const LIMITED: &str = "limited";
/// Outcome recorded when evaluating a rule failed.
pub const ERROR: &str = "error";

/// How a compiled rule decides.
#[derive(Debug)]
enum Decide {
    When(Expr),
    Conditions(Vec<Vec<CompiledCondition>>),
    Master {
        rule_id: String,
        version: u64,
        kind: MasterKind,
        /// `cel` master rules.
        expr: Option<Expr>,
        /// `lambda` function or `http` url.
        target: String,
        timeout_ms: Option<u64>,
        params: Value,
        params_cel: CelValue,
    },
}

/// Where a transition leads, resolved at compile time.
#[derive(Debug, Clone)]
enum Target {
    Next,
    Goto(usize),
    Complete(String),
}

#[derive(Debug)]
struct CompiledTransition {
    source: Transition,
    target: Target,
    set: Vec<(String, Expr)>,
    /// The transition in flow syntax, as trace lines show it.
    desc: Arc<Value>,
}

#[derive(Debug)]
struct CompiledRule {
    decide: Decide,
    on: HashMap<String, CompiledTransition>,
    default: Option<CompiledTransition>,
    on_error: Option<CompiledTransition>,
    gray_salt: String,
}

/// A flow version ready to run: CEL compiled, regexes built, `goto` targets and master rules
/// resolved, and the paths its rules read known.
#[derive(Debug)]
pub struct CompiledFlow {
    flow: Flow,
    rules: Vec<CompiledRule>,
    index: HashMap<String, usize>,
    start: usize,
    tries: HashMap<&'static str, PathTrie>,
    gray_key: Option<Vec<String>>,
    /// Whether any rule reads `steps` (otherwise outcomes are not kept in the state).
    reads_steps: bool,
}

/// A problem found while compiling, with the JSON path it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileIssue {
    /// JSON path, e.g. `$.rules[1].when`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl CompiledFlow {
    /// Compiles a structurally valid flow against `catalog`. Every problem found is returned, each
    /// with its path; the semantic checks of [`crate::validate`] run on top of this.
    pub fn compile(flow: &Flow, catalog: &Catalog) -> Result<CompiledFlow, Vec<CompileIssue>> {
        let mut issues = Vec::new();
        let mut index = HashMap::new();
        for (i, r) in flow.rules.iter().enumerate() {
            index.entry(r.id.clone()).or_insert(i);
        }
        let mut tries: HashMap<&'static str, PathTrie> = HashMap::new();
        let mut rules = Vec::with_capacity(flow.rules.len());
        for (i, rule) in flow.rules.iter().enumerate() {
            let base = format!("$.rules[{i}]");
            match compile_rule(flow, rule, &base, catalog, &index, &mut tries, &mut issues) {
                Some(r) => rules.push(r),
                None => continue,
            }
        }
        let start = match &flow.start {
            Some(s) => match index.get(s) {
                Some(i) => *i,
                None => {
                    issues.push(issue("$.start", format!("start rule `{s}` does not exist")));
                    0
                }
            },
            None => 0,
        };
        if flow.rules.is_empty() {
            issues.push(issue("$.rules", "a flow needs at least one rule".into()));
        }
        let gray_key = flow.gray_key.as_ref().and_then(|k| {
            let path = conditions::split_path(k);
            // Only `input` is known when the version is picked at seq 0.
            if path.len() < 2 || path[0] != "input" {
                issues.push(issue(
                    "$.gray_key",
                    format!("`{k}` must be a path under input, e.g. input.user.id"),
                ));
                None
            } else {
                add_path(&mut tries, &path);
                Some(path)
            }
        });
        if !issues.is_empty() {
            return Err(issues);
        }
        let reads_steps = tries.get("steps").is_some_and(|t| !t.is_empty())
            || flow.rules.iter().any(|r| {
                r.conditions
                    .iter()
                    .flatten()
                    .flatten()
                    .any(|c| c.field == "steps" || c.field.starts_with("steps."))
            });
        Ok(CompiledFlow {
            flow: flow.clone(),
            rules,
            index,
            start,
            tries,
            gray_key,
            reads_steps,
        })
    }

    /// The flow as written.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Id of the rule an execution starts with.
    pub fn start_rule(&self) -> &str {
        &self.flow.rules[self.start].id
    }

    /// Whether outcomes are kept in the state (some rule reads `steps`).
    pub fn reads_steps(&self) -> bool {
        self.reads_steps
    }

    /// Whether deciding the rule about to run (`None`: the start rule) has side effects: a token
    /// taken from a bucket, or a `lambda`/`http` master rule called. Such a step is looked up
    /// before it is decided, so a redelivered record never decides it again.
    pub fn decides_with_effects(&self, rule: Option<&str>) -> bool {
        let idx = match rule {
            None => self.start,
            Some(id) => match self.index.get(id) {
                Some(i) => *i,
                None => return false,
            },
        };
        let external = matches!(
            self.rules.get(idx).map(|r| &r.decide),
            Some(Decide::Master { kind, .. }) if *kind != MasterKind::Cel
        );
        external
            || self
                .flow
                .rules
                .get(idx)
                .is_some_and(|r| r.rate_limit.is_some())
    }

    /// The catalog version each `use` rule resolved to (its `use_version`, or the latest): what
    /// an execution pins at its seq 0 (SPEC section 2).
    pub fn master_versions(&self) -> std::collections::BTreeMap<String, u64> {
        self.rules
            .iter()
            .filter_map(|c| match &c.decide {
                Decide::Master {
                    rule_id, version, ..
                } => Some((rule_id.clone(), *version)),
                _ => None,
            })
            .collect()
    }

    /// The flow with `pins` written in as `use_version`, for compiling it again against a catalog
    /// that has moved on since an execution started.
    pub fn pinned_flow(&self, pins: &std::collections::BTreeMap<String, u64>) -> Flow {
        let mut f = self.flow.clone();
        for r in &mut f.rules {
            if r.use_version.is_none()
                && let Some(id) = &r.use_rule
                && let Some(v) = pins.get(id)
            {
                r.use_version = Some(*v);
            }
        }
        f
    }

    /// Whether `pins` are what this compile resolved (nothing to recompile).
    pub fn agrees_with(&self, pins: &std::collections::BTreeMap<String, u64>) -> bool {
        let mine = self.master_versions();
        pins.iter().all(|(k, v)| mine.get(k).is_none_or(|m| m == v))
    }

    /// Whether the flow fuses pure steps into one hop (`"fuse": true`).
    pub fn fuses(&self) -> bool {
        self.flow.fuse
    }

    /// Whether `rule` (default: the start rule) has no side effect: no rate limit, no
    /// `lambda`/`http` master rule, and no delivering action on any of its transitions. Such a
    /// rule may run in the hop of the step before it when the flow fuses.
    pub fn is_pure(&self, rule: Option<&str>) -> bool {
        let idx = match rule {
            None => self.start,
            Some(id) => match self.index.get(id) {
                Some(i) => *i,
                None => return false,
            },
        };
        let Some(r) = self.flow.rules.get(idx) else {
            return false;
        };
        let delivers = |t: &crate::model::Transition| {
            t.actions.iter().any(|a| {
                matches!(
                    a.kind,
                    ActionType::CallWebhook | ActionType::SendNotification
                )
            })
        };
        !self.decides_with_effects(rule)
            && !r
                .on
                .values()
                .chain(r.default.as_ref())
                .chain(r.on_error.as_ref())
                .any(delivers)
    }

    fn trie(&self, root: &str) -> Option<&PathTrie> {
        self.tries.get(root).filter(|t| !t.is_empty())
    }
}

fn issue(path: &str, message: String) -> CompileIssue {
    CompileIssue {
        path: path.to_string(),
        message,
    }
}

fn add_path(tries: &mut HashMap<&'static str, PathTrie>, path: &[String]) {
    if let Some(root) = expr::ROOTS.iter().find(|r| **r == path[0]) {
        tries.entry(root).or_default().insert(&path[1..]);
    }
}

fn compile_expr(
    src: &str,
    path: &str,
    tries: &mut HashMap<&'static str, PathTrie>,
    issues: &mut Vec<CompileIssue>,
) -> Option<Expr> {
    match Expr::compile(src) {
        Ok(e) => {
            for p in e.paths() {
                add_path(tries, p);
            }
            Some(e)
        }
        Err(errs) => {
            for e in errs {
                issues.push(issue(path, e.to_string()));
            }
            None
        }
    }
}

fn compile_rule(
    flow: &Flow,
    rule: &Rule,
    base: &str,
    catalog: &Catalog,
    index: &HashMap<String, usize>,
    tries: &mut HashMap<&'static str, PathTrie>,
    issues: &mut Vec<CompileIssue>,
) -> Option<CompiledRule> {
    let before = issues.len();
    let decide = match (&rule.when, &rule.conditions, &rule.use_rule) {
        (Some(w), None, None) => {
            compile_expr(w, &format!("{base}.when"), tries, issues).map(Decide::When)
        }
        (None, Some(groups), None) => {
            let mut out = Vec::with_capacity(groups.len());
            if groups.is_empty() || groups.iter().any(Vec::is_empty) {
                issues.push(issue(
                    &format!("{base}.conditions"),
                    "conditions need at least one group, each with at least one condition".into(),
                ));
            }
            for (gi, group) in groups.iter().enumerate() {
                let mut g = Vec::with_capacity(group.len());
                for (ci, c) in group.iter().enumerate() {
                    let cpath = format!("{base}.conditions[{gi}][{ci}]");
                    let fpath = conditions::split_path(&c.field);
                    if fpath.is_empty()
                        || !expr::ROOTS.contains(&fpath[0].as_str())
                        || fpath[0] == "now"
                    {
                        issues.push(issue(
                            &format!("{cpath}.field"),
                            format!(
                                "`{}` must start with input, ctx, client, params, steps or execution",
                                c.field
                            ),
                        ));
                    }
                    if let Err(m) = crate::validate::check_op_value(c) {
                        issues.push(issue(&format!("{cpath}.value"), m));
                    }
                    match CompiledCondition::compile(c) {
                        Ok(cc) => g.push(cc),
                        Err(m) => issues.push(issue(&format!("{cpath}.value"), m)),
                    }
                }
                out.push(g);
            }
            Some(Decide::Conditions(out))
        }
        (None, None, Some(id)) => compile_master(rule, id, base, catalog, tries, issues),
        (None, None, None) => {
            issues.push(issue(
                base,
                format!(
                    "rule `{}` needs one of `when`, `conditions` or `use`",
                    rule.id
                ),
            ));
            None
        }
        _ => {
            issues.push(issue(
                base,
                format!(
                    "rule `{}` must decide by exactly one of `when`, `conditions` or `use`",
                    rule.id
                ),
            ));
            None
        }
    };
    if rule.use_rule.is_none() && rule.params.is_some() {
        issues.push(issue(
            &format!("{base}.params"),
            "`params` is only for `use` rules".into(),
        ));
    }
    if rule.use_rule.is_none() && rule.use_version.is_some() {
        issues.push(issue(
            &format!("{base}.use_version"),
            "`use_version` is only for `use` rules".into(),
        ));
    }
    let mut on = HashMap::new();
    for (outcome, t) in &rule.on {
        let p = format!("{base}.on{}", crate::validate::key_path(outcome));
        if let Some(ct) = compile_transition(flow, t, &p, index, tries, issues) {
            on.insert(outcome.clone(), ct);
        }
    }
    let default = rule.default.as_ref().and_then(|t| {
        compile_transition(flow, t, &format!("{base}.default"), index, tries, issues)
    });
    let on_error = rule.on_error.as_ref().and_then(|t| {
        compile_transition(flow, t, &format!("{base}.on_error"), index, tries, issues)
    });
    if rule.use_rule.is_none() {
        // `params` belongs to the master rule a `use` rule runs; anywhere else it is unbound.
        let reads = |e: &Expr| e.paths().iter().any(|p| p[0] == "params");
        let mut reads_params: Vec<String> = Vec::new();
        if let Some(Decide::When(e)) = &decide
            && reads(e)
        {
            reads_params.push(format!("{base}.when"));
        }
        for (gi, group) in rule.conditions.iter().flatten().enumerate() {
            for (ci, c) in group.iter().enumerate() {
                if c.field == "params" || c.field.starts_with("params.") {
                    reads_params.push(format!("{base}.conditions[{gi}][{ci}].field"));
                }
            }
        }
        // The transitions' `set` expressions, as compiled above.
        let compiled = rule
            .on
            .keys()
            .filter_map(|k| {
                on.get(k)
                    .map(|t| (format!("{base}.on{}", crate::validate::key_path(k)), t))
            })
            .chain(default.iter().map(|t| (format!("{base}.default"), t)))
            .chain(on_error.iter().map(|t| (format!("{base}.on_error"), t)));
        for (tpath, t) in compiled {
            for (k, e) in &t.set {
                if reads(e) {
                    reads_params.push(format!("{tpath}.set{}", crate::validate::key_path(k)));
                }
            }
        }
        for p in reads_params {
            issues.push(issue(
                &p,
                "`params` is only available in a rule that `use`s a master rule".into(),
            ));
        }
    }
    if issues.len() > before {
        return None;
    }
    Some(CompiledRule {
        decide: decide?,
        on,
        default,
        on_error,
        gray_salt: gray::rule_salt(&flow.flow_id, &rule.id),
    })
}

fn compile_master(
    rule: &Rule,
    id: &str,
    base: &str,
    catalog: &Catalog,
    tries: &mut HashMap<&'static str, PathTrie>,
    issues: &mut Vec<CompileIssue>,
) -> Option<Decide> {
    let Some(master) = catalog.get(id, rule.use_version) else {
        let what = match rule.use_version {
            Some(v) => format!("master rule `{id}` version {v} is not in the catalog"),
            None => format!("master rule `{id}` is not in the catalog"),
        };
        issues.push(issue(&format!("{base}.use"), what));
        return None;
    };
    // Declared params with their defaults, overridden by the flow's.
    let mut params = master.params.clone();
    if let Some(given) = &rule.params {
        for (k, v) in given {
            if !master.params.contains_key(k) {
                issues.push(issue(
                    &format!("{base}.params.{k}"),
                    format!(
                        "`{k}` is not a parameter of `{id}` (it takes: {})",
                        master.params.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            params.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in &params {
        if v.is_null() {
            issues.push(issue(
                &format!("{base}.params"),
                format!("master rule `{id}` needs parameter `{k}`"),
            ));
        }
    }
    let params = Value::Object(params);
    let (expr, target) = match master.kind {
        MasterKind::Cel => {
            let src = master.expression.as_deref().unwrap_or_default();
            let e = match Expr::compile(src) {
                Ok(e) => e,
                Err(errs) => {
                    for e in errs {
                        issues.push(issue(
                            &format!("{base}.use"),
                            format!("master rule `{id}` v{}: {e}", master.version),
                        ));
                    }
                    return None;
                }
            };
            for p in e.paths() {
                // `params` of a master rule are bound per rule, not read from the execution.
                if p[0] != "params" {
                    add_path(tries, p);
                }
            }
            (Some(e), String::new())
        }
        MasterKind::Lambda => (None, master.function.clone().unwrap_or_default()),
        MasterKind::Http => (None, master.url.clone().unwrap_or_default()),
    };
    if master.kind != MasterKind::Cel {
        // The payload carries input, ctx and client whole.
        for root in ["input", "ctx", "client"] {
            add_path(tries, &[root.to_string()]);
        }
    }
    Some(Decide::Master {
        rule_id: id.to_string(),
        version: master.version,
        kind: master.kind,
        expr,
        target,
        timeout_ms: master.timeout_ms,
        params_cel: expr::json_to_cel(&params),
        params,
    })
}

fn compile_transition(
    flow: &Flow,
    t: &Transition,
    path: &str,
    index: &HashMap<String, usize>,
    tries: &mut HashMap<&'static str, PathTrie>,
    issues: &mut Vec<CompileIssue>,
) -> Option<CompiledTransition> {
    let before = issues.len();
    let kinds = usize::from(t.next.is_some())
        + usize::from(t.goto.is_some())
        + usize::from(t.complete.is_some());
    let target = match (t.next, &t.goto, &t.complete) {
        _ if kinds != 1 => {
            issues.push(issue(
                path,
                "a transition needs exactly one of `next`, `goto` or `complete`".into(),
            ));
            Target::Next
        }
        (Some(true), _, _) => Target::Next,
        (Some(false), _, _) => {
            issues.push(issue(
                &format!("{path}.next"),
                "`next` can only be `true`".into(),
            ));
            Target::Next
        }
        (_, Some(g), _) => match index.get(g) {
            Some(i) => Target::Goto(*i),
            None => {
                issues.push(issue(
                    &format!("{path}.goto"),
                    format!("goto `{g}`: no rule has that id"),
                ));
                Target::Next
            }
        },
        (_, _, Some(status)) => {
            if !flow.terminal_statuses.iter().any(|s| s == status) {
                issues.push(issue(
                    &format!("{path}.complete"),
                    format!(
                        "status `{status}` is not in terminal_statuses [{}]",
                        flow.terminal_statuses.join(", ")
                    ),
                ));
            }
            Target::Complete(status.clone())
        }
        _ => Target::Next,
    };
    let mut set = Vec::with_capacity(t.set.len());
    for (k, src) in &t.set {
        let p = format!("{path}.set{}", crate::validate::key_path(k));
        if let Some(e) = compile_expr(src, &p, tries, issues) {
            set.push((k.clone(), e));
        }
    }
    for (ai, a) in t.actions.iter().enumerate() {
        if let Err(m) = crate::validate::check_action(a, &flow.client_id) {
            issues.push(issue(&format!("{path}.actions[{ai}]"), m));
        }
    }
    (issues.len() == before).then(|| CompiledTransition {
        desc: Arc::new(describe(t)),
        source: t.clone(),
        target,
        set,
    })
}

/// Who and what an execution is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionMeta {
    /// The execution id.
    pub execution_id: String,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The flow version picked at seq 0.
    pub flow_version: u64,
}

/// What an execution carries from one step to the next (in chain mode, inside the trigger row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Sequence number of the step about to run (0 for the first).
    pub seq: u64,
    /// Rule to run next (`None`: the flow's start rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Values written by `set` and `set_field`.
    #[serde(default)]
    pub ctx: Map<String, Value>,
    /// Outcome of each rule run so far, by id.
    #[serde(default)]
    pub steps: Map<String, Value>,
    /// Tags added so far.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Route set by `route_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// Why a rule got its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Explain {
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
        conditions: Vec<ConditionResult>,
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

impl PlannedAction {
    /// Whether the caller must deliver it (the engine applies the others itself).
    pub fn is_delivery(&self) -> bool {
        matches!(
            self.action.kind,
            ActionType::CallWebhook | ActionType::SendNotification
        )
    }
}

/// One step's record: the trace line of an execution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Sequence number of the step.
    pub seq: u64,
    /// The rule that ran.
    pub rule: String,
    /// Its outcome.
    pub outcome: String,
    /// The transition taken, in flow syntax (`{"goto": "review"}`), without `set`/`actions`.
    pub transition: Arc<Value>,
    /// Why.
    pub explain: Explain,
    /// Values written into `ctx` by this step.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub set: Map<String, Value>,
    /// Actions of this step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<PlannedAction>,
    /// Time spent in the engine, microseconds.
    pub duration_us: u64,
    /// What a dry run did differently here (a rate limit treated as granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where an execution goes after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Next {
    /// Run this rule at `seq + 1`.
    Rule {
        /// Rule id.
        rule: String,
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
pub struct StepResult {
    /// The trace line (`None` when no rule ran: `max_steps` was exceeded or the rule is unknown).
    pub record: Option<StepRecord>,
    /// What comes next.
    pub next: Next,
}

/// The value that picks an execution's gray buckets: the flow's `gray_key` path (under `input`,
/// `client` or `ctx`), as a string; the execution id when the flow has none or it is missing.
pub fn gray_key_value(
    flow: &CompiledFlow,
    execution_id: &str,
    input: &Value,
    client: Option<&Value>,
    ctx: &Map<String, Value>,
) -> String {
    let Some(path) = &flow.gray_key else {
        return execution_id.to_string();
    };
    let v = match path[0].as_str() {
        "input" => conditions::walk(input, &path[1..]),
        "client" => client.and_then(|c| conditions::walk(c, &path[1..])),
        "ctx" => ctx
            .get(&path[1])
            .and_then(|v| conditions::walk(v, &path[2..])),
        _ => None,
    };
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => execution_id.to_string(),
        Some(other) => other.to_string(),
    }
}

/// An execution in progress: the CEL context built once from its input, reused across rules.
pub struct Session<'f> {
    flow: &'f CompiledFlow,
    meta: ExecutionMeta,
    input: &'f Value,
    client: Option<&'f Value>,
    subset: Option<Vec<String>>,
    state: RunState,
    cel: cel::Context<'f, 'f>,
    ctx_dirty: bool,
    gray_key: std::cell::OnceCell<String>,
}

impl<'f> Session<'f> {
    /// Starts or resumes an execution at `state`.
    pub fn new(
        flow: &'f CompiledFlow,
        meta: ExecutionMeta,
        input: &'f Value,
        client: Option<&'f Value>,
        now: DateTime<Utc>,
        subset: Option<Vec<String>>,
        state: RunState,
    ) -> Session<'f> {
        let mut cel = cel::Context::with_env(Arc::clone(expr::env()));
        if let Some(t) = flow.trie("input") {
            cel.add_variable_as_val("input", expr::json_to_val(input, Some(t)));
        }
        if let Some(t) = flow.trie("client") {
            match client {
                Some(c) => cel.add_variable_as_val("client", expr::json_to_val(c, Some(t))),
                None => cel.add_variable_from_value("client", CelValue::Null),
            }
        }
        if flow.trie("now").is_some() || flow.tries.contains_key("now") {
            cel.add_variable_from_value("now", CelValue::Timestamp(now.fixed_offset()));
        }
        Session {
            flow,
            meta,
            input,
            client,
            subset,
            state,
            cel,
            ctx_dirty: true,
            gray_key: std::cell::OnceCell::new(),
        }
    }

    /// The state after the steps run so far.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The value that picks gray buckets for this execution (worked out on first use).
    pub fn gray_key(&self) -> &str {
        self.gray_key.get_or_init(|| {
            gray_key_value(
                self.flow,
                &self.meta.execution_id,
                self.input,
                self.client,
                &self.state.ctx,
            )
        })
    }

    fn lookup(&self, path: &[String]) -> Option<Value> {
        let (root, rest) = path.split_first()?;
        match root.as_str() {
            "input" => conditions::walk(self.input, rest).cloned(),
            "client" => self.client.and_then(|c| conditions::walk(c, rest)).cloned(),
            "ctx" => walk_map(&self.state.ctx, rest),
            "steps" => walk_map(&self.state.steps, rest),
            "execution" => conditions::walk(&self.execution_json(), rest).cloned(),
            _ => None,
        }
    }

    fn execution_json(&self) -> Value {
        json!({
            "id": self.meta.execution_id,
            "client_id": self.meta.client_id,
            "flow_id": self.meta.flow_id,
            "flow_version": self.meta.flow_version,
            "seq": self.state.seq,
        })
    }

    fn refresh_cel(&mut self) {
        if self.ctx_dirty {
            if let Some(t) = self.flow.trie("ctx") {
                let v = expr::json_to_cel_pruned(&Value::Object(self.state.ctx.clone()), t);
                self.cel.add_variable_from_value("ctx", v);
            }
            self.ctx_dirty = false;
        }
        if self.flow.trie("steps").is_some() {
            let v = expr::json_to_cel(&Value::Object(self.state.steps.clone()));
            self.cel.add_variable_from_value("steps", v);
        }
        if self.flow.trie("execution").is_some() {
            let v = expr::json_to_cel(&self.execution_json());
            self.cel.add_variable_from_value("execution", v);
        }
    }

    /// Runs the current rule and moves the state on. `steps_taken` is how many steps the
    /// execution has already run (for `max_steps`).
    pub async fn step<E: Effects>(&mut self, fx: &E, steps_taken: u32) -> StepResult {
        let flow = self.flow;
        let idx = match &self.state.rule {
            None => flow.start,
            Some(id) => match flow.index.get(id) {
                Some(i) => *i,
                None => {
                    return StepResult {
                        record: None,
                        next: failed(
                            format!(
                                "rule `{id}` does not exist in version {}",
                                flow.flow.version
                            ),
                            None,
                        ),
                    };
                }
            },
        };
        let rule = &flow.flow.rules[idx];
        if let Some(subset) = &self.subset
            && let Some(unknown) = subset.iter().find(|r| !flow.index.contains_key(*r))
        {
            return StepResult {
                record: None,
                next: failed(
                    format!(
                        "the rules subset names `{unknown}`, which is not a rule of {}/{} v{}",
                        flow.flow.client_id, flow.flow.flow_id, flow.flow.version
                    ),
                    None,
                ),
            };
        }
        if steps_taken >= flow.flow.max_steps() {
            return StepResult {
                record: None,
                next: failed(
                    format!(
                        "max_steps ({}) exceeded before rule `{}`",
                        flow.flow.max_steps(),
                        rule.id
                    ),
                    Some("max_steps exceeded".into()),
                ),
            };
        }
        let started = Instant::now();
        let compiled = &flow.rules[idx];
        let (outcome, explain, master_set) = self.decide(rule, compiled, fx).await;
        let note = (fx.dry_run() && rule.rate_limit.is_some() && outcome != SKIPPED).then(|| {
            "dry run: the rate limit was not applied (treated as granted, no token taken)"
                .to_string()
        });
        let gated = outcome == SKIPPED || outcome == LIMITED;
        let errored = matches!(explain, Explain::Error { .. });
        let transition = if errored {
            compiled.on_error.as_ref()
        } else if gated {
            compiled.on.get(&outcome)
        } else {
            compiled.on.get(&outcome).or(compiled.default.as_ref())
        };
        let seq = self.state.seq;
        if flow.reads_steps {
            self.state
                .steps
                .insert(rule.id.clone(), Value::String(outcome.clone()));
        }
        let mut set = Map::new();
        for (k, v) in master_set {
            self.state.ctx.insert(k.clone(), v.clone());
            set.insert(k, v);
            self.ctx_dirty = true;
        }
        if errored && transition.is_none() {
            let Explain::Error { message } = &explain else {
                unreachable!("errored implies an error explain")
            };
            let error = format!("rule `{}`: {message}", rule.id);
            let mut record = self.record(
                seq,
                rule,
                &outcome,
                Arc::new(json!({})),
                explain.clone(),
                set,
                vec![],
                started,
            );
            record.note = note;
            self.state.seq += 1;
            return StepResult {
                record: Some(record),
                next: failed(error.clone(), Some(error)),
            };
        }
        let mut actions = Vec::new();
        let (desc, target) = match transition {
            Some(t) => {
                if let Err(e) = self.apply_set(t, &mut set) {
                    let error = format!("rule `{}`: {e}", rule.id);
                    let mut record = self.record(
                        seq,
                        rule,
                        &outcome,
                        Arc::clone(&t.desc),
                        explain,
                        set,
                        vec![],
                        started,
                    );
                    record.note = note;
                    self.state.seq += 1;
                    return StepResult {
                        record: Some(record),
                        next: failed(error.clone(), Some(error)),
                    };
                }
                for (ai, a) in t.source.actions.iter().enumerate() {
                    self.apply_action(a, &mut set);
                    actions.push(PlannedAction {
                        idempotency_key: format!("{}:{seq}:{ai}", self.meta.execution_id),
                        rule: rule.id.clone(),
                        action: a.clone(),
                        delivery: None,
                    });
                }
                (Arc::clone(&t.desc), t.target.clone())
            }
            None => (implicit_next(), Target::Next),
        };
        let next = match target {
            Target::Next => match flow.flow.rules.get(idx + 1) {
                Some(r) => Next::Rule { rule: r.id.clone() },
                None => Next::Done {
                    status: flow.flow.default_status().to_string(),
                    reason: transition.and_then(|t| t.source.reason.clone()),
                    error: None,
                },
            },
            Target::Goto(i) => Next::Rule {
                rule: flow.flow.rules[i].id.clone(),
            },
            Target::Complete(status) => Next::Done {
                status,
                reason: transition.and_then(|t| t.source.reason.clone()),
                error: None,
            },
        };
        let mut record = self.record(seq, rule, &outcome, desc, explain, set, actions, started);
        record.note = note;
        self.state.seq += 1;
        if let Next::Rule { rule } = &next {
            self.state.rule = Some(rule.clone());
        }
        StepResult {
            record: Some(record),
            next,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        seq: u64,
        rule: &Rule,
        outcome: &str,
        transition: Arc<Value>,
        explain: Explain,
        set: Map<String, Value>,
        actions: Vec<PlannedAction>,
        started: Instant,
    ) -> StepRecord {
        StepRecord {
            seq,
            rule: rule.id.clone(),
            outcome: outcome.to_string(),
            transition,
            explain,
            set,
            actions,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            note: None,
        }
    }

    /// Works out the rule's outcome: gates first (subset, gray, rate limit), then the decision.
    async fn decide<E: Effects>(
        &mut self,
        rule: &Rule,
        compiled: &CompiledRule,
        fx: &E,
    ) -> (String, Explain, Map<String, Value>) {
        let none = Map::new();
        if let Some(subset) = &self.subset
            && !subset.iter().any(|r| r == &rule.id)
        {
            return (
                SKIPPED.into(),
                Explain::Skipped {
                    reason: "not in the execution's rules subset".into(),
                },
                none,
            );
        }
        if let Some(g) = &rule.gray {
            let key = self.gray_key().to_string();
            let b = gray::bucket(&self.meta.client_id, &compiled.gray_salt, &key);
            if !gray::in_gray(&self.meta.client_id, &compiled.gray_salt, &key, g.percent) {
                return (
                    SKIPPED.into(),
                    Explain::Skipped {
                        reason: format!("gray bucket {b:.2} is outside {}%", g.percent),
                    },
                    none,
                );
            }
        }
        if let Some(rl) = &rule.rate_limit {
            let key = format!("{}/{}/{}", self.meta.client_id, self.meta.flow_id, rule.id);
            match fx.take_token(&key, rl.per_second, rl.burst()).await {
                Ok(true) => {}
                Ok(false) => {
                    return (
                        LIMITED.into(),
                        Explain::Limited {
                            reason: format!("token bucket `{key}` is empty"),
                        },
                        none,
                    );
                }
                // Fail open: the rule runs as if a token had been taken.
                Err(_) if rl.fail_open => {}
                Err(e) => {
                    return (
                        LIMITED.into(),
                        Explain::Limited {
                            reason: format!("rate limiter unavailable ({e}); rule fails closed"),
                        },
                        none,
                    );
                }
            }
        }
        self.refresh_cel();
        match &compiled.decide {
            Decide::When(e) => match e.eval(&self.cel).and_then(|v| outcome_of(&v)) {
                Ok((outcome, result)) => (
                    outcome,
                    Explain::Expression {
                        expression: e.source_arc(),
                        result,
                    },
                    none,
                ),
                Err(m) => (
                    ERROR.into(),
                    Explain::Error {
                        message: format!("`when` failed: {m}"),
                    },
                    none,
                ),
            },
            Decide::Conditions(groups) => {
                let (matched, results) = conditions::evaluate(groups, |p| self.lookup(p));
                (
                    matched.to_string(),
                    Explain::Conditions {
                        matched,
                        conditions: results,
                    },
                    none,
                )
            }
            Decide::Master {
                rule_id,
                version,
                kind,
                expr,
                target,
                timeout_ms,
                params,
                params_cel,
            } => {
                // Bound for this rule's expression and its transition's `set`.
                self.cel
                    .add_variable_from_value("params", params_cel.clone());
                let answer = match (kind, expr) {
                    (MasterKind::Cel, Some(e)) => e
                        .eval(&self.cel)
                        .and_then(|v| outcome_of(&v))
                        .map(|(o, r)| (o, r, Map::new())),
                    _ => {
                        let payload = json!({
                            "input": self.input,
                            "ctx": self.state.ctx,
                            "client": self.client.cloned().unwrap_or(Value::Null),
                            "params": params,
                            "execution": self.execution_json(),
                        });
                        match fx
                            .call_rule(&rule.id, *kind, target, &payload, *timeout_ms)
                            .await
                        {
                            Ok(v) => external_outcome(&v),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                match answer {
                    Ok((outcome, result, set)) => (
                        outcome,
                        Explain::Master {
                            rule_id: rule_id.clone(),
                            version: *version,
                            kind: *kind,
                            result,
                        },
                        set,
                    ),
                    Err(m) => (
                        ERROR.into(),
                        Explain::Error {
                            message: format!("master rule `{rule_id}` v{version}: {m}"),
                        },
                        none,
                    ),
                }
            }
        }
    }

    fn apply_set(
        &mut self,
        t: &CompiledTransition,
        set: &mut Map<String, Value>,
    ) -> Result<(), String> {
        for (k, e) in &t.set {
            self.refresh_cel();
            let v = e
                .eval(&self.cel)
                .map_err(|m| format!("set `{k}` failed: {m}"))
                .and_then(|v| expr::cel_to_json(&v).map_err(|m| format!("set `{k}`: {m}")))?;
            self.state.ctx.insert(k.clone(), v.clone());
            set.insert(k.clone(), v);
            self.ctx_dirty = true;
        }
        Ok(())
    }

    fn apply_action(&mut self, a: &crate::model::Action, set: &mut Map<String, Value>) {
        match a.kind {
            ActionType::AddTag => {
                if let Some(tag) = &a.tag
                    && !self.state.tags.contains(tag)
                {
                    self.state.tags.push(tag.clone());
                }
            }
            ActionType::RouteTo => self.state.route.clone_from(&a.queue),
            ActionType::SetField => {
                if let (Some(f), Some(v)) = (&a.field, &a.value) {
                    self.state.ctx.insert(f.clone(), v.clone());
                    set.insert(f.clone(), v.clone());
                    self.ctx_dirty = true;
                }
            }
            ActionType::CallWebhook | ActionType::SendNotification => {}
        }
    }
}

fn walk_map(m: &Map<String, Value>, rest: &[String]) -> Option<Value> {
    let (head, tail) = rest.split_first()?;
    conditions::walk(m.get(head)?, tail).cloned()
}

fn failed(reason: String, error: Option<String>) -> Next {
    Next::Done {
        status: FAILED.to_string(),
        error: error.or_else(|| Some(reason.clone())),
        reason: Some(reason),
    }
}

/// `{"next": true}`, shared by every step that falls through.
fn implicit_next() -> Arc<Value> {
    static NEXT: std::sync::OnceLock<Arc<Value>> = std::sync::OnceLock::new();
    Arc::clone(NEXT.get_or_init(|| Arc::new(json!({"next": true}))))
}

fn describe(t: &Transition) -> Value {
    let mut m = Map::new();
    if let Some(n) = t.next {
        m.insert("next".into(), Value::Bool(n));
    }
    if let Some(g) = &t.goto {
        m.insert("goto".into(), Value::String(g.clone()));
    }
    if let Some(c) = &t.complete {
        m.insert("complete".into(), Value::String(c.clone()));
    }
    if let Some(r) = &t.reason {
        m.insert("reason".into(), Value::String(r.clone()));
    }
    Value::Object(m)
}

/// A `when`/`cel` result as an outcome: a bool gives `"true"`/`"false"`, a string is the label.
fn outcome_of(v: &CelValue) -> Result<(String, Value), String> {
    match v {
        CelValue::Bool(b) => Ok((b.to_string(), Value::Bool(*b))),
        CelValue::String(s) if !s.is_empty() => Ok((
            s.as_str().to_string(),
            Value::String(s.as_str().to_string()),
        )),
        CelValue::String(_) => {
            Err("gave an empty string; expected a bool or a non-empty label".into())
        }
        other => Err(format!(
            "gave a {} value; expected a bool or a string label",
            expr::type_name(other)
        )),
    }
}

/// A `lambda`/`http` answer `{"outcome": ..., "set": {...}}`.
fn external_outcome(v: &Value) -> Result<(String, Value, Map<String, Value>), String> {
    let outcome = match v.get("outcome") {
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("answer has no `outcome` (a bool or a non-empty string)".into()),
    };
    let set = match v.get("set") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("answer's `set` is not an object".into()),
    };
    Ok((
        outcome,
        v.get("outcome").cloned().unwrap_or(Value::Null),
        set,
    ))
}

/// A whole run, as dry-run and inline mode report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Final status.
    pub status: String,
    /// Why, when known.
    pub reason: Option<String>,
    /// For `FAILED`: the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rule ids in the order they ran.
    pub path: Vec<String>,
    /// Every step.
    pub steps: Vec<StepRecord>,
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

impl RunReport {
    /// The dry-run answer of SPEC section 6 (and of the API's `POST /v1/dry-run`):
    /// `{status, reason, path, steps: [{rule, outcome, transition, explain, set, note?}], ctx,
    /// tags, actions}` (+ `error`, `route`), explains cut and client data hidden as in a trace.
    pub fn spec_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut explain = serde_json::to_value(&s.explain).unwrap_or(Value::Null);
                crate::chain::sanitize_explain(&mut explain);
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
            "actions": self.actions,
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

/// Runs an execution from its start rule to the end (dry-run and inline mode).
pub async fn run<E: Effects>(
    flow: &CompiledFlow,
    meta: ExecutionMeta,
    input: &Value,
    client: Option<&Value>,
    now: DateTime<Utc>,
    subset: Option<Vec<String>>,
    fx: &E,
) -> RunReport {
    let mut session = Session::new(flow, meta, input, client, now, subset, RunState::default());
    let mut steps = Vec::new();
    let mut taken = 0u32;
    loop {
        let r = session.step(fx, taken).await;
        taken += 1;
        if let Some(rec) = r.record {
            steps.push(rec);
        }
        if let Next::Done {
            status,
            reason,
            error,
        } = r.next
        {
            let state = session.state;
            return RunReport {
                status,
                reason,
                error,
                path: steps.iter().map(|s| s.rule.clone()).collect(),
                actions: steps
                    .iter()
                    .flat_map(|s| s.actions.iter().cloned())
                    .collect(),
                steps,
                ctx: state.ctx,
                tags: state.tags,
                route: state.route,
            };
        }
    }
}
