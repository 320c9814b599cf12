//! Running an execution one rule at a time: a [`Session`] holds the CEL context built once from
//! the execution's input and applies each step to its state; [`run`] loops it to the end.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use cel::Value as CelValue;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::compile::{CompiledFlow, CompiledRule, CompiledTransition, Decide, Target};
use super::trace::{Explain, Next, PlannedAction, RunReport, StepRecord, StepResult};
use crate::conditions;
use crate::execution::{CLIENT_DATA, ExecutionMeta, RunState};
use crate::expr::{self, Expr};
use crate::fast::{self, Fv, Roots};
use crate::gray;
use crate::model::{self, ActionType, ERROR, FAILED, LIMITED, MasterKind, Rule, SKIPPED, Way};
use crate::ports::Effects;

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
    now: DateTime<Utc>,
    /// The `cel` context, built on the first evaluation that needs it (none when every
    /// expression of the run is evaluated directly).
    cel: Option<cel::Context<'f, 'f>>,
    ctx_dirty: bool,
    /// Whether expressions of the direct subset are evaluated directly (see [`crate::fast`]).
    direct: bool,
    gray_key: std::cell::OnceCell<String>,
    /// The parameters of the last master rule run (`params` of its expression and its
    /// transition's `set`), and whether the `cel` context has them yet.
    params: Option<(&'f Value, &'f CelValue)>,
    params_bound: bool,
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
        Session {
            flow,
            meta,
            input,
            client,
            subset,
            state,
            now,
            cel: None,
            ctx_dirty: true,
            direct: true,
            gray_key: std::cell::OnceCell::new(),
            params: None,
            params_bound: true,
        }
    }

    /// With `false`, every expression is evaluated by `cel`, none directly: what the differential
    /// tests compare the direct evaluator with.
    pub fn with_direct_evaluation(mut self, on: bool) -> Session<'f> {
        self.direct = on;
        self
    }

    /// The `cel` context, built on first use from the input, client data and `now`.
    fn cel_mut(&mut self) -> &mut cel::Context<'f, 'f> {
        let (flow, input, client, now) = (self.flow, self.input, self.client, self.now);
        if self.cel.is_none() {
            self.ctx_dirty = true;
        }
        self.cel.get_or_insert_with(|| {
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
            cel
        })
    }

    /// What a direct evaluation reads.
    fn roots(&self) -> Roots<'_> {
        Roots {
            input: self.input,
            ctx: &self.state.ctx,
            client: self.client,
            steps: &self.state.steps,
            params: self.params.map(|(p, _)| p),
            now: Some(self.now.fixed_offset()),
        }
    }

    /// `e`'s value through the direct evaluator, when it has one for `e` and this input.
    fn direct<T>(&self, e: &Expr, then: impl FnOnce(Fv<'_>) -> Option<T>) -> Option<T> {
        if !self.direct {
            return None;
        }
        e.eval_direct(&self.roots()).and_then(then)
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

    /// The value at `path` (a condition's field): lent when it is in the input or the client data (which outlive the
    /// session, so a trace line can keep it), copied from the state (which the next step
    /// changes).
    fn lookup(&self, path: &[String]) -> Option<Cow<'f, Value>> {
        let (root, rest) = path.split_first()?;
        match root.as_str() {
            "input" => conditions::walk(self.input, rest).map(Cow::Borrowed),
            "client" => self
                .client
                .and_then(|c| conditions::walk(c, rest))
                .map(Cow::Borrowed),
            "ctx" => walk_map(&self.state.ctx, rest).cloned().map(Cow::Owned),
            "steps" => walk_map(&self.state.steps, rest).cloned().map(Cow::Owned),
            "execution" => conditions::walk(&self.execution_json(), rest)
                .cloned()
                .map(Cow::Owned),
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

    /// The `cel` context, up to date with the state.
    fn cel(&mut self) -> &cel::Context<'f, 'f> {
        self.cel_mut();
        if self.ctx_dirty {
            if let Some(t) = self.flow.trie("ctx") {
                let v = expr::json_to_cel_pruned(&Value::Object(self.state.ctx.clone()), t);
                self.cel_mut().add_variable_from_value("ctx", v);
            }
            self.ctx_dirty = false;
        }
        if !self.params_bound {
            if let Some((_, p)) = self.params {
                self.cel_mut().add_variable_from_value("params", p.clone());
            }
            self.params_bound = true;
        }
        if self.flow.trie("steps").is_some() {
            let v = expr::json_to_cel(&Value::Object(self.state.steps.clone()));
            self.cel_mut().add_variable_from_value("steps", v);
        }
        if self.flow.trie("execution").is_some() {
            let v = expr::json_to_cel(&self.execution_json());
            self.cel_mut().add_variable_from_value("execution", v);
        }
        self.cel_mut()
    }

    /// Runs the current rule and moves the state on. `steps_taken` is how many steps the
    /// execution has already run (for `max_steps`).
    pub async fn step<E: Effects>(&mut self, fx: &E, steps_taken: u32) -> StepResult<'f> {
        let flow = self.flow;
        let idx = match &self.state.rule {
            None => flow.start,
            Some(id) => match flow.index.get(&**id) {
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
        let (mut outcome, mut explain, master_set) = self.decide(rule, compiled, fx).await;
        // A decision on client data shows only what the flow itself names (`true`/`false` or a
        // label in `on`); any other value it gave is client data (SPEC section 1, Trace).
        let decided_on_client = match &compiled.decide {
            Decide::When(e) | Decide::Master { expr: Some(e), .. } => {
                e.reads_client(&self.state.client_keys)
            }
            // A `lambda`/`http` rule's answer is shown as it answers (docs/security.md: such a
            // rule is sent the client data and must not answer with it).
            Decide::Master { expr: None, .. } | Decide::Conditions(_) => false,
        };
        // A condition on a key of `ctx` that holds client data shows it as client data (one on
        // `client` itself is hidden wherever a trace is shown, see `sanitize_explain`).
        if let Explain::Conditions { conditions, .. } = &mut explain
            && !self.state.client_keys.is_empty()
        {
            for c in conditions {
                let mut parts = c.field.split(['.', '[']);
                if parts.next() == Some("ctx")
                    && parts
                        .next()
                        .is_some_and(|k| self.state.client_keys.iter().any(|ck| ck == k))
                {
                    c.actual = Cow::Owned(Value::String(CLIENT_DATA.into()));
                }
            }
        }
        if decided_on_client && let Explain::Error { message } = &mut explain {
            *message = hide_error_values(message);
        }
        if decided_on_client
            && let Explain::Expression { result, .. } | Explain::Master { result, .. } =
                &mut explain
            && !(matches!(&*outcome, "true" | "false") || compiled.on.contains_key(&*outcome))
        {
            outcome = Arc::from(CLIENT_DATA);
            *result = Value::String(CLIENT_DATA.into());
        }
        let note = (fx.dry_run() && rule.rate_limit.is_some() && &*outcome != SKIPPED).then(|| {
            "dry run: the rate limit was not applied (treated as granted, no token taken)"
                .to_string()
        });
        let reached = match explain {
            Explain::Error { .. } => model::Reached::Errored,
            Explain::Skipped { .. } | Explain::Limited { .. } => model::Reached::Gated,
            _ => model::Reached::Decided,
        };
        let way = model::way(
            compiled.on.get(&*outcome),
            compiled.default.as_ref(),
            compiled.on_error.as_ref(),
            reached,
        );
        let mut transition = match way {
            Way::Take(t) => Some(t),
            Way::NextRule | Way::Fail => None,
        };
        let seq = self.state.seq;
        if flow.reads_steps {
            self.state
                .steps
                .insert(rule.id.clone(), Value::String(outcome.to_string()));
        }
        let mut set = Map::new();
        for (k, v) in master_set {
            self.state.ctx.insert(k.clone(), v.clone());
            // An external rule's answer: shown as it answers (see `decided_on_client`).
            self.state.mark_client(&k, false);
            set.insert(k, v);
            self.ctx_dirty = true;
        }
        if matches!(way, Way::Fail) {
            let Explain::Error { message } = &explain else {
                unreachable!("errored implies an error explain")
            };
            let error = format!("rule `{}`: {message}", rule.id);
            let record = self.record(
                seq,
                &compiled.id,
                outcome,
                Arc::new(json!({})),
                explain.clone(),
                set,
                vec![],
                started,
            );
            return self.ends_failed(record, note, error);
        }
        // A `set` that fails is an evaluation error of the rule (SPEC section 1): its `on_error`
        // decides, as for a decision that fails (what the failed `set` wrote is undone first);
        // without one, or when `on_error`'s own `set` fails, the execution ends FAILED.
        let mut set_failed = None;
        if let Some(t) = transition
            && let Err(e) = self.apply_set(t, &mut set)
        {
            match compiled
                .on_error
                .as_ref()
                .filter(|oe| !std::ptr::eq(*oe, t))
            {
                Some(on_error) => {
                    outcome = shared(ERROR);
                    explain = Explain::Error { message: e };
                    if flow.reads_steps {
                        self.state
                            .steps
                            .insert(rule.id.clone(), Value::String(ERROR.to_string()));
                    }
                    transition = Some(on_error);
                    if let Err(e) = self.apply_set(on_error, &mut set) {
                        set_failed = Some(e);
                    }
                }
                None => set_failed = Some(e),
            }
        }
        if let (Some(e), Some(t)) = (set_failed, transition) {
            let error = format!("rule `{}`: {e}", rule.id);
            let record = self.record(
                seq,
                &compiled.id,
                outcome,
                Arc::clone(&t.desc),
                explain,
                set,
                vec![],
                started,
            );
            return self.ends_failed(record, note, error);
        }
        let mut actions = Vec::new();
        let (desc, target) = match transition {
            Some(t) => {
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
        // A `set` that takes `ctx` over the output bound ends the execution here, before any
        // item outgrows DynamoDB's 400 KB (SPEC section 3); the step keeps its values cut.
        let over_bound = if set.is_empty() {
            None
        } else {
            crate::execution::output_over_bound(&self.state.ctx, None)
        };
        let actions = match over_bound {
            Some(_) => {
                for v in set.values_mut() {
                    *v = super::trace::shown_value(v);
                }
                // Nothing is delivered for a step that ends the execution this way (a
                // delivery's body would carry the whole output).
                Vec::new()
            }
            None => actions,
        };
        let mut record = self.record(
            seq,
            &compiled.id,
            outcome,
            desc,
            explain,
            set,
            actions,
            started,
        );
        if let Some(why) = over_bound {
            return self.ends_failed(record, note, format!("rule `{}`: {why}", rule.id));
        }
        let next = match target {
            Target::Next => match flow.rules.get(idx + 1) {
                Some(r) => Next::Rule {
                    rule: Arc::clone(&r.id),
                },
                None => Next::Done {
                    status: flow.flow.default_status().to_string(),
                    reason: transition.and_then(|t| t.source.reason.clone()),
                    error: None,
                },
            },
            Target::Goto(i) => Next::Rule {
                rule: Arc::clone(&flow.rules[i].id),
            },
            Target::Complete(status) => Next::Done {
                status,
                reason: transition.and_then(|t| t.source.reason.clone()),
                error: None,
            },
        };
        record.note = note;
        self.state.seq += 1;
        if let Next::Rule { rule } = &next {
            self.state.rule = Some(Arc::clone(rule));
        }
        StepResult {
            record: Some(record),
            next,
        }
    }

    /// The step `record` (with its dry-run `note`) ends the execution `FAILED` with `error`.
    fn ends_failed(
        &mut self,
        mut record: StepRecord<'f>,
        note: Option<String>,
        error: String,
    ) -> StepResult<'f> {
        record.note = note;
        self.state.seq += 1;
        StepResult {
            record: Some(record),
            next: failed(error.clone(), Some(error)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        seq: u64,
        rule: &Arc<str>,
        outcome: Arc<str>,
        transition: Arc<Value>,
        explain: Explain<'f>,
        set: Map<String, Value>,
        actions: Vec<PlannedAction>,
        started: Instant,
    ) -> StepRecord<'f> {
        // Values of client data are kept aside; the record shows them as `<client data>`.
        let mut set = set;
        let mut client_set = Map::new();
        for k in &self.state.client_keys {
            if let Some(v) = set.get_mut(k) {
                client_set.insert(
                    k.clone(),
                    std::mem::replace(v, Value::String(CLIENT_DATA.into())),
                );
            }
        }
        StepRecord {
            seq,
            rule: Arc::clone(rule),
            outcome,
            transition,
            explain,
            set,
            client_set,
            actions,
            duration_ms: crate::execution::millis_since(started),
            note: None,
        }
    }

    /// Works out the rule's outcome: gates first (subset, gray, rate limit), then the decision.
    async fn decide<E: Effects>(
        &mut self,
        rule: &Rule,
        compiled: &'f CompiledRule,
        fx: &E,
    ) -> (Arc<str>, Explain<'f>, Map<String, Value>) {
        let none = Map::new();
        if let Some(subset) = &self.subset
            && !subset.iter().any(|r| r == &rule.id)
        {
            return (
                shared(SKIPPED),
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
                    shared(SKIPPED),
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
                        shared(LIMITED),
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
                        shared(LIMITED),
                        Explain::Limited {
                            reason: format!("rate limiter unavailable ({e}); rule fails closed"),
                        },
                        none,
                    );
                }
            }
        }
        match &compiled.decide {
            Decide::When(e) => match self
                .direct(e, direct_outcome)
                .map_or_else(|| e.eval(self.cel()).and_then(|v| outcome_of(&v)), Ok)
            {
                Ok((outcome, result)) => (
                    outcome,
                    Explain::Expression {
                        expression: e.source_arc(),
                        result,
                    },
                    none,
                ),
                Err(m) => (
                    shared(ERROR),
                    Explain::Error {
                        message: format!("`when` failed: {m}"),
                    },
                    none,
                ),
            },
            Decide::Conditions(groups) => {
                let (matched, results) = conditions::evaluate(groups, |p| self.lookup(p));
                (
                    shared(if matched { "true" } else { "false" }),
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
                self.params = Some((params, params_cel));
                self.params_bound = false;
                let answer = match (kind, expr) {
                    (MasterKind::Cel, Some(e)) => self
                        .direct(e, direct_outcome)
                        .map_or_else(|| e.eval(self.cel()).and_then(|v| outcome_of(&v)), Ok)
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
                        shared(ERROR),
                        Explain::Error {
                            message: format!("master rule `{rule_id}` v{version}: {m}"),
                        },
                        none,
                    ),
                }
            }
        }
    }

    /// Evaluates a transition's `set` in order, each value written into `ctx` before the next
    /// is evaluated. On an error, what this `set` wrote is undone (`ctx` and `set` as before).
    fn apply_set(
        &mut self,
        t: &CompiledTransition,
        set: &mut Map<String, Value>,
    ) -> Result<(), String> {
        let mut undo: Vec<(&String, Option<Value>, Option<Value>)> = Vec::new();
        let client_keys_were = self.state.client_keys.clone();
        for (k, e) in &t.set {
            let from_client = e.reads_client(&self.state.client_keys);
            let v = match self.direct(e, fast::to_json) {
                Some(v) => Ok(v),
                None => e
                    .eval(self.cel())
                    .map_err(|m| {
                        if from_client {
                            expr::hide_values(&m)
                        } else {
                            m
                        }
                    })
                    .map_err(|m| format!("set `{k}` failed: {m}"))
                    .and_then(|v| expr::cel_to_json(&v).map_err(|m| format!("set `{k}`: {m}"))),
            };
            let v = match v {
                Ok(v) => v,
                Err(m) => {
                    for (k, ctx_was, set_was) in undo.into_iter().rev() {
                        restore(&mut self.state.ctx, k, ctx_was);
                        restore(set, k, set_was);
                    }
                    self.state.client_keys = client_keys_were;
                    self.ctx_dirty = true;
                    return Err(m);
                }
            };
            let ctx_was = self.state.ctx.insert(k.clone(), v.clone());
            self.state.mark_client(k, from_client);
            let set_was = set.insert(k.clone(), v);
            if t.set.len() > 1 {
                undo.push((k, ctx_was, set_was));
            }
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
                    self.state.mark_client(f, false);
                    set.insert(f.clone(), v.clone());
                    self.ctx_dirty = true;
                }
            }
            ActionType::CallWebhook | ActionType::SendNotification => {}
        }
    }
}

fn walk_map<'m>(m: &'m Map<String, Value>, rest: &[String]) -> Option<&'m Value> {
    let (head, tail) = rest.split_first()?;
    conditions::walk(m.get(head)?, tail)
}

fn failed(reason: String, error: Option<String>) -> Next {
    Next::Done {
        status: FAILED.to_string(),
        error: error.or_else(|| Some(reason.clone())),
        reason: Some(reason),
    }
}

/// An error message of a decision on client data, with its values hidden (the prefix that names
/// what failed, e.g. "`when` failed: ", is kept).
fn hide_error_values(message: &str) -> String {
    match message.split_once(": ") {
        Some((what, rest)) => format!("{what}: {}", expr::hide_values(rest)),
        None => expr::hide_values(message),
    }
}

/// Puts back a map entry as it was before an insert: the old value, or no entry.
fn restore(map: &mut Map<String, Value>, key: &str, was: Option<Value>) {
    match was {
        Some(v) => {
            map.insert(key.to_string(), v);
        }
        None => {
            map.shift_remove(key);
        }
    }
}

/// `{"next": true}`, shared by every step that falls through.
fn implicit_next() -> Arc<Value> {
    static NEXT: std::sync::OnceLock<Arc<Value>> = std::sync::OnceLock::new();
    Arc::clone(NEXT.get_or_init(|| Arc::new(json!({"next": true}))))
}

/// A direct `when` result as an outcome (as [`outcome_of`] gives it); `None` for anything that
/// is not a bool or a non-empty string, so `cel` words the error.
fn direct_outcome(v: Fv<'_>) -> Option<(Arc<str>, Value)> {
    match v {
        Fv::Bool(b) => Some((shared(if b { "true" } else { "false" }), Value::Bool(b))),
        Fv::Str(s) if !s.is_empty() => Some((shared(s), Value::String(s.to_string()))),
        _ => None,
    }
}

/// An outcome as a shared string: the common ones (`true`, `false`, `skipped`, `limited`,
/// `error`) are made once per process, so most steps allocate nothing for theirs.
fn shared(s: &str) -> Arc<str> {
    static COMMON: std::sync::OnceLock<[Arc<str>; 5]> = std::sync::OnceLock::new();
    COMMON
        .get_or_init(|| ["true", "false", SKIPPED, LIMITED, ERROR].map(Arc::from))
        .iter()
        .find(|c| &***c == s)
        .map_or_else(|| Arc::from(s), Arc::clone)
}

/// A `when`/`cel` result as an outcome: a bool gives `"true"`/`"false"`, a string is the label.
fn outcome_of(v: &CelValue) -> Result<(Arc<str>, Value), String> {
    match v {
        CelValue::Bool(b) => Ok((shared(&b.to_string()), Value::Bool(*b))),
        CelValue::String(s) if !s.is_empty() => {
            Ok((shared(s.as_str()), Value::String(s.as_str().to_string())))
        }
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
/// An outcome, its value as the trace shows it, and the `set` values that came with it.
type Answer = (Arc<str>, Value, Map<String, Value>);

fn external_outcome(v: &Value) -> Result<Answer, String> {
    let outcome = match v.get("outcome") {
        Some(Value::Bool(b)) => shared(&b.to_string()),
        Some(Value::String(s)) if !s.is_empty() => shared(s),
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

/// Runs an execution from its start rule to the end (dry-run and inline mode).
pub async fn run<'a, E: Effects>(
    flow: &'a CompiledFlow,
    meta: ExecutionMeta,
    input: &'a Value,
    client: Option<&'a Value>,
    now: DateTime<Utc>,
    subset: Option<Vec<String>>,
    fx: &E,
) -> RunReport<'a> {
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
            let mut state = session.state;
            // The same bound on the output as when the execution ends in the chain.
            let (status, reason, error) =
                match crate::execution::output_over_bound(&state.ctx, Some(&status)) {
                    Some(why) => {
                        state.ctx = Map::new();
                        if status == FAILED {
                            (status, reason, error)
                        } else {
                            (FAILED.to_string(), Some(why.clone()), Some(why))
                        }
                    }
                    None => (status, reason, error),
                };
            return RunReport {
                status,
                reason,
                error,
                path: steps.iter().map(|s| Arc::clone(&s.rule)).collect(),
                actions: steps
                    .iter()
                    .flat_map(|s| s.actions.iter().cloned())
                    .collect(),
                steps,
                ctx: state.shown_ctx(),
                tags: state.tags,
                route: state.route,
            };
        }
    }
}
