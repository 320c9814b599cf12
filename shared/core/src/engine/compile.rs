//! Compiling a flow version once: CEL compiled, regexes built, `goto` targets and master rules
//! resolved, and the paths its rules read known.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Value as CelValue;
use serde_json::{Map, Value};

use crate::catalog::Catalog;
use crate::conditions::{self, CompiledCondition};
use crate::expr::{self, Expr, PathTrie};
use crate::gray;
use crate::model::{ActionType, Flow, MasterKind, Rule, Transition};

/// A map keyed by rule ids or outcomes, hashed with FNV-1a: these keys are short and come from
/// the flow, and a step looks one up on every rule, where SipHash costs more than the rest of
/// the lookup.
pub(super) type Names<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

/// FNV-1a, 64 bits.
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// How a compiled rule decides.
#[derive(Debug)]
pub(super) enum Decide {
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
pub(super) enum Target {
    Next,
    Goto(usize),
    Complete(String),
}

#[derive(Debug)]
pub(super) struct CompiledTransition {
    pub(super) source: Transition,
    pub(super) target: Target,
    pub(super) set: Vec<(String, Expr)>,
    /// The transition in flow syntax, as trace lines show it.
    pub(super) desc: Arc<Value>,
}

#[derive(Debug)]
pub(super) struct CompiledRule {
    /// The rule's id, shared by every step record of it.
    pub(super) id: Arc<str>,
    pub(super) decide: Decide,
    pub(super) on: Names<CompiledTransition>,
    pub(super) default: Option<CompiledTransition>,
    pub(super) on_error: Option<CompiledTransition>,
    pub(super) gray_salt: String,
}

/// A flow version ready to run: CEL compiled, regexes built, `goto` targets and master rules
/// resolved, and the paths its rules read known.
#[derive(Debug)]
pub struct CompiledFlow {
    pub(super) flow: Flow,
    pub(super) rules: Vec<CompiledRule>,
    pub(super) index: Names<usize>,
    pub(super) start: usize,
    pub(super) tries: HashMap<&'static str, PathTrie>,
    pub(super) gray_key: Option<Vec<String>>,
    /// Whether any rule reads `steps` (otherwise outcomes are not kept in the state).
    pub(super) reads_steps: bool,
}

/// A problem found while compiling, with the JSON path it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileIssue {
    /// JSON path, e.g. `$.rules[1].when`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// For a CEL syntax error, its line and column within the expression.
    pub position: Option<(u32, u32)>,
}

impl CompiledFlow {
    /// Compiles a structurally valid flow against `catalog`. Every problem found is returned, each
    /// with its path; the semantic checks of [`crate::validate`] run on top of this.
    pub fn compile(flow: &Flow, catalog: &Catalog) -> Result<CompiledFlow, Vec<CompileIssue>> {
        let mut issues = Vec::new();
        let mut index = Names::default();
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

    /// The catalog version each unpinned `use` (no `use_version`) resolved to, the latest: what
    /// an execution pins at its seq 0 (SPEC section 2). A `use` with a `use_version` needs no
    /// pin, and would otherwise stand in for an unpinned `use` of the same master rule.
    pub fn master_versions(&self) -> std::collections::BTreeMap<String, u64> {
        self.rules
            .iter()
            .zip(&self.flow.rules)
            .filter(|(_, r)| r.use_version.is_none())
            .filter_map(|(c, _)| match &c.decide {
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

    pub(super) fn trie(&self, root: &str) -> Option<&PathTrie> {
        self.tries.get(root).filter(|t| !t.is_empty())
    }
}

fn issue(path: &str, message: String) -> CompileIssue {
    CompileIssue {
        path: path.to_string(),
        message,
        position: None,
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
                let mut i = issue(path, e.to_string());
                if let expr::CompileError::Syntax { line, column, .. } = e {
                    i.position = Some((line, column));
                }
                issues.push(i);
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
    index: &Names<usize>,
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
                    } else if fpath.iter().any(|seg| {
                        seg.is_empty()
                            || seg.chars().any(|ch| {
                                ch.is_whitespace() || "+*/%()[]{}<>=!&|?,'\"".contains(ch)
                            })
                    }) {
                        issues.push(issue(
                            &format!("{cpath}.field"),
                            format!(
                                "`{}` is not a field path: keys joined by dots, e.g. input.trade.amount (an expression goes in `when`)",
                                c.field
                            ),
                        ));
                    }
                    if let Err(m) = crate::checks::check_op_value(c) {
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
    let mut on = Names::default();
    for (outcome, t) in &rule.on {
        let p = format!("{base}.on{}", crate::checks::key_path(outcome));
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
                    .map(|t| (format!("{base}.on{}", crate::checks::key_path(k)), t))
            })
            .chain(default.iter().map(|t| (format!("{base}.default"), t)))
            .chain(on_error.iter().map(|t| (format!("{base}.on_error"), t)));
        for (tpath, t) in compiled {
            for (k, e) in &t.set {
                if reads(e) {
                    reads_params.push(format!("{tpath}.set{}", crate::checks::key_path(k)));
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
        id: Arc::from(rule.id.as_str()),
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
    // Declared params with their defaults, overridden by the flow's. A master rule that
    // declares none takes any.
    let mut params = master.params.clone().unwrap_or_default();
    if let Some(given) = &rule.params {
        for (k, v) in given {
            if let Some(declared) = &master.params
                && !declared.contains_key(k)
            {
                issues.push(issue(
                    &format!("{base}.params.{k}"),
                    format!(
                        "`{k}` is not a parameter of `{id}` (it takes: {})",
                        declared.keys().cloned().collect::<Vec<_>>().join(", ")
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
            let mut missing = std::collections::BTreeSet::new();
            for p in e.paths() {
                // `params` of a master rule are bound per rule, not read from the execution.
                if p[0] != "params" {
                    add_path(tries, p);
                } else if master.params.is_none()
                    && let Some(name) = p.get(1)
                    && params.get(name).is_none()
                {
                    // A rule that declares nothing still needs what its expression reads.
                    missing.insert(name.clone());
                }
            }
            for name in missing {
                issues.push(issue(
                    &format!("{base}.params"),
                    format!(
                        "master rule `{id}` reads `params.{name}`, which the rule does not get"
                    ),
                ));
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
    index: &Names<usize>,
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
                let hint = if flow.default_status.as_deref().unwrap_or("COMPLETED") == status {
                    " (it is the default status, which only ends a flow that falls off its last rule; list it in terminal_statuses to complete with it here)"
                } else {
                    ""
                };
                issues.push(issue(
                    &format!("{path}.complete"),
                    format!(
                        "status `{status}` is not in terminal_statuses [{}]{hint}",
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
        let p = format!("{path}.set{}", crate::checks::key_path(k));
        if let Some(e) = compile_expr(src, &p, tries, issues) {
            set.push((k.clone(), e));
        }
    }
    for (ai, a) in t.actions.iter().enumerate() {
        if let Err((field, m)) = crate::checks::check_action(a, &flow.client_id) {
            let at = field.map_or(String::new(), |f| format!(".{f}"));
            issues.push(issue(&format!("{path}.actions[{ai}]{at}"), m));
        }
    }
    (issues.len() == before).then(|| CompiledTransition {
        desc: Arc::new(describe(t)),
        source: t.clone(),
        target,
        set,
    })
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
