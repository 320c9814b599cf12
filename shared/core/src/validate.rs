//! Flow validation (SPEC section 1): every problem in one pass, each with its JSON path.
//!
//! Three layers, each reporting everything it finds:
//! 1. JSON syntax, with line and column;
//! 2. structure against the JSON Schema derived from [`crate::model`] (unknown fields, types,
//!    required fields);
//! 3. meaning: duplicate ids, `start`/`goto` targets, `complete` statuses, CEL that does not
//!    compile or reads unknown variables, op/value mismatches, master rules missing from the
//!    catalog, percents outside 0–100, rules from which no terminal status can be reached.
//!
//! Warnings (a rule no path reaches, a gray percent of 0 or 100) do not make a flow invalid.
//! Rules that fail layer 2 are left out of layer 3, so one bad rule does not hide the others.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog::Catalog;
use crate::checks::json_type;
pub use crate::checks::{
    MAX_TIMEOUT_MS, check_action, check_master_rule, check_op_value, key_path,
};
use crate::engine::CompiledFlow;
use crate::model::{Because, Flow, Rule, Way};

/// Severity of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The flow cannot be activated.
    Error,
    /// Worth a look; the flow is still valid.
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// JSON path, e.g. `$.rules[2].on.true.goto` (`$` for the document).
    pub path: String,
    /// 1-based line, for syntax errors: of the file for JSON syntax, of the expression that
    /// `path` names for CEL syntax.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, for syntax errors (of the file, or of the expression, as `line`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{sev}: {}:{l}:{c}: {}", self.path, self.message),
            _ => write!(f, "{sev}: {}: {}", self.path, self.message),
        }
    }
}

/// The result of validating one flow document.
#[derive(Debug)]
pub struct Validation {
    /// Errors then warnings, each group in document order.
    pub findings: Vec<Finding>,
    /// The compiled flow, when there is no error.
    pub flow: Option<CompiledFlow>,
}

impl Validation {
    /// Whether the flow may be activated.
    pub fn is_valid(&self) -> bool {
        self.flow.is_some() && !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }
}

fn error(path: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Error,
        path: path.into(),
        line: None,
        column: None,
        message: message.into(),
    }
}

fn warning(path: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Warning,
        path: path.into(),
        line: None,
        column: None,
        message: message.into(),
    }
}

fn schema_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .build(&crate::model::flow_schema())
            .ok()
    })
    .as_ref()
}

/// Validates a flow document against `catalog`.
pub fn validate_str(text: &str, catalog: &Catalog) -> Validation {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let mut out = validate_value(&v, catalog);
            // JSON keeps the last of two equal keys, where a person reading the file sees the
            // first: the flow would not run as it reads.
            let dups = duplicate_keys(text);
            if !dups.is_empty() {
                let mut errs: Vec<Finding> = dups
                    .into_iter()
                    .map(|(path, key)| {
                        error(
                            path,
                            format!(
                                "`{key}` is written twice in one object (JSON keeps only the last): remove one"
                            ),
                        )
                    })
                    .collect();
                errs.append(&mut out.findings);
                out.findings = errs;
                out.findings
                    .sort_by_key(|f| f.severity == Severity::Warning);
                out.flow = None;
            }
            out
        }
        Err(e) => Validation {
            findings: vec![Finding {
                severity: Severity::Error,
                path: "$".into(),
                line: Some(e.line()),
                column: Some(e.column()),
                message: format!("invalid JSON: {}", strip_position(&e.to_string())),
            }],
            flow: None,
        },
    }
}

/// Every key written twice in one object of the JSON `text`, with the path of the second one.
fn duplicate_keys(text: &str) -> Vec<(String, String)> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

    struct Walk<'a> {
        path: String,
        out: &'a mut Vec<(String, String)>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0usize;
            while seq
                .next_element_seed(Walk {
                    path: format!("{}[{i}]", self.path),
                    out: &mut *self.out,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(k) = map.next_key::<String>()? {
                let path = format!("{}{}", self.path, crate::checks::key_path(&k));
                if !seen.insert(k.clone()) {
                    self.out.push((path.clone(), k));
                }
                map.next_value_seed(Walk {
                    path,
                    out: &mut *self.out,
                })?;
            }
            Ok(())
        }
    }

    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    // The text parsed as JSON already: an error here only stops the search.
    let _ = Walk {
        path: "$".into(),
        out: &mut out,
    }
    .deserialize(&mut de);
    out
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Validates a parsed flow document against `catalog`.
pub fn validate_value(doc: &Value, catalog: &Catalog) -> Validation {
    let mut findings = structural(doc);
    let (flow, bad_rules) = best_effort_flow(doc);
    let mut compiled = None;
    if let Some(flow) = flow {
        let mut semantic = Vec::new();
        check_flow(&flow, &mut semantic);
        match CompiledFlow::compile(&flow, catalog) {
            Ok(c) => compiled = Some(c),
            Err(issues) => semantic.extend(issues.into_iter().map(|i| {
                let Some((line, column)) = i.position else {
                    return error(i.path, i.message);
                };
                // The position moves out of the message into the finding (`path:line:column`).
                let message = i.message.replacen(&format!(" at {line}:{column}"), "", 1);
                let mut f = error(i.path, message);
                f.line = usize::try_from(line).ok();
                f.column = usize::try_from(column).ok();
                f
            })),
        }
        // Rules that failed the structural layer stand in with the parts of them that fit:
        // drop what the parts left out caused (the structural layer reported those).
        let rules_missing = !doc.get("rules").is_some_and(Value::is_array);
        // With a way out of some rule left out, the graph is not the flow's: what it says of
        // reachability (of any rule) is not sure, and waits for the structural errors' fix.
        let graph_unsure = bad_rules.iter().any(|b| b.ways_dropped);
        semantic.retain(|f| {
            if graph_unsure && is_graph_finding(f) {
                return false;
            }
            let left_out = bad_rules.iter().any(|b| {
                let base = format!("$.rules[{}]", b.index);
                let Some(rest) = f.path.strip_prefix(&base) else {
                    return false;
                };
                if rest.is_empty() {
                    return b.ways_dropped || b.dropped.iter().any(String::is_empty);
                }
                b.dropped.iter().any(|d| {
                    let d = format!(".{d}");
                    d == "."
                        || rest == d
                        || rest.starts_with(&format!("{d}."))
                        || rest.starts_with(&format!("{d}["))
                })
            });
            let placeholder_rules = rules_missing && f.path == "$.rules";
            !(left_out || placeholder_rules)
        });
        findings.extend(semantic);
        // The parts left out still have their CEL checked (one pass: a wrong type elsewhere
        // in the rule hides no syntax error).
        for b in &bad_rules {
            cel_of_raw_rule(
                &Value::Object(b.raw.clone()),
                &format!("$.rules[{}]", b.index),
                &mut findings,
            );
        }
    }
    dedup(&mut findings);
    findings.sort_by_key(|f| f.severity == Severity::Warning);
    let has_error = findings.iter().any(|f| f.severity == Severity::Error);
    Validation {
        findings,
        flow: if has_error { None } else { compiled },
    }
}

/// The CEL errors of a rule given as raw JSON: its `when` and the `set` of its transitions.
fn cel_of_raw_rule(rule: &Value, base: &str, out: &mut Vec<Finding>) {
    let mut exprs: Vec<(String, &str)> = Vec::new();
    if let Some(w) = rule.get("when").and_then(Value::as_str) {
        exprs.push((format!("{base}.when"), w));
    }
    let mut transitions: Vec<(String, &Value)> = Vec::new();
    if let Some(Value::Object(on)) = rule.get("on") {
        for (k, t) in on {
            transitions.push((format!("{base}.on{}", crate::checks::key_path(k)), t));
        }
    }
    for k in ["default", "on_error"] {
        if let Some(t) = rule.get(k) {
            transitions.push((format!("{base}.{k}"), t));
        }
    }
    for (path, t) in transitions {
        if let Some(Value::Object(set)) = t.get("set") {
            for (k, e) in set {
                if let Some(e) = e.as_str() {
                    exprs.push((format!("{path}.set{}", crate::checks::key_path(k)), e));
                }
            }
        }
    }
    for (path, src) in exprs {
        if let Err(errs) = crate::expr::Expr::compile(src) {
            for e in errs {
                let mut f = error(path.clone(), e.to_string());
                if let crate::expr::CompileError::Syntax { line, column, .. } = e {
                    f.message = f.message.replacen(&format!(" at {line}:{column}"), "", 1);
                    f.line = usize::try_from(line).ok();
                    f.column = usize::try_from(column).ok();
                }
                out.push(f);
            }
        }
    }
}

fn dedup(findings: &mut Vec<Finding>) {
    let mut seen = BTreeSet::new();
    findings.retain(|f| seen.insert((f.path.clone(), f.message.clone())));
}

/// Layer 2: the JSON Schema, with messages rewritten for people.
fn structural(doc: &Value) -> Vec<Finding> {
    let Some(validator) = schema_validator() else {
        return vec![error("$", "internal: the flow schema did not compile")];
    };
    let mut out = Vec::new();
    for e in validator.iter_errors(doc) {
        let pointer = e.instance_path().to_string();
        let path = pointer_to_path(doc, &pointer);
        use jsonschema::error::ValidationErrorKind as K;
        match e.kind() {
            K::AdditionalProperties { unexpected } => {
                for u in unexpected {
                    out.push(error(
                        format!("{path}{}", key_path(u)),
                        format!("unknown field `{u}`"),
                    ));
                }
            }
            K::Required { property } => {
                let p = property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_string);
                out.push(error(path, format!("missing required field `{p}`")));
            }
            _ => {
                let instance = value_at(doc, &pointer);
                let message = match one_of_names(&path) {
                    Some((what, names)) if e.to_string().contains("'oneOf'") => format!(
                        "unknown {what} {} (one of: {})",
                        instance.map_or_else(String::new, ToString::to_string),
                        names.join(", ")
                    ),
                    _ => friendly(&e.to_string(), instance),
                };
                out.push(error(path, message));
            }
        }
    }
    out
}

/// The names of the flow schema's enum `def` (`Op`, `ActionType`).
fn enum_names(def: &str) -> Vec<&'static str> {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA
        .get_or_init(crate::model::flow_schema)
        .pointer(&format!("/definitions/{def}/oneOf"))
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|c| c.get("const").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `v` is one of the names of the flow schema's enum `def`.
fn known_name(def: &str, v: Option<&Value>) -> bool {
    v.and_then(Value::as_str)
        .is_some_and(|name| enum_names(def).contains(&name))
}

/// For a field whose values are a fixed list (a condition's `op`, an action's `type`): what it is
/// called and its values, from the flow schema.
fn one_of_names(path: &str) -> Option<(&'static str, Vec<&'static str>)> {
    let (what, def) = if path.ends_with(".op") && path.contains(".conditions[") {
        ("op", "Op")
    } else if path.ends_with(".type") && path.contains(".actions[") {
        ("action type", "ActionType")
    } else {
        return None;
    };
    let names = enum_names(def);
    (!names.is_empty()).then_some((what, names))
}

fn friendly(msg: &str, instance: Option<&Value>) -> String {
    let got = instance.map(json_type).unwrap_or("nothing");
    if let Some(rest) = msg.split(" is not of type ").nth(1) {
        return format!("expected {}, got {got}", rest.replace('"', ""));
    }
    if msg.contains("is not one of") {
        return msg.replace(" is not one of ", " is not one of: ");
    }
    msg.to_string()
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn value_at<'a>(doc: &'a Value, pointer: &str) -> Option<&'a Value> {
    doc.pointer(pointer)
}

/// `/rules/2/on/true` -> `$.rules[2].on.true`.
pub fn pointer_to_path(doc: &Value, pointer: &str) -> String {
    let mut out = String::from("$");
    let mut cur = Some(doc);
    for seg in pointer.split('/').skip(1) {
        let seg = unescape(seg);
        match cur {
            Some(Value::Array(items)) => {
                out.push_str(&format!("[{seg}]"));
                cur = seg.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            Some(Value::Object(map)) => {
                out.push_str(&key_path(&seg));
                cur = map.get(&seg);
            }
            _ => {
                out.push_str(&key_path(&seg));
                cur = None;
            }
        }
    }
    out
}

/// A flow for the semantic layer even when some rules are malformed: each rule that does not
/// deserialize is replaced by a placeholder keeping its id; the indexes of those rules are
/// returned so their findings can be dropped. `None` when the document's top level is unusable.
fn best_effort_flow(doc: &Value) -> (Option<Flow>, Vec<Salvaged>) {
    let Value::Object(top) = doc else {
        return (None, vec![]);
    };
    let mut cleaned = top.clone();
    // Top-level fields the structural layer already reported (unknown, or of the wrong type) are
    // dropped, and required ones stood in for, so the rules are still checked.
    fn fits<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
        serde_json::from_value::<T>(v.clone()).is_ok()
    }
    cleaned.retain(|k, v| match k.as_str() {
        "$schema" | "client_id" | "flow_id" | "description" | "default_status" | "start"
        | "gray_key" => fits::<String>(v),
        "version" => fits::<u64>(v),
        "max_steps" => fits::<u32>(v),
        "fuse" => fits::<bool>(v),
        "terminal_statuses" => fits::<Vec<String>>(v),
        "rules" => v.is_array(),
        _ => false,
    });
    for (k, placeholder) in [
        ("client_id", Value::from("client")),
        ("flow_id", Value::from("flow")),
        ("version", Value::from(1)),
        ("rules", Value::Array(vec![])),
    ] {
        cleaned.entry(k).or_insert(placeholder);
    }
    let mut bad = Vec::new();
    if let Some(Value::Array(rules)) = top.get("rules") {
        let fixed: Vec<Value> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // Fields the structural layer reported as unknown are left out, so the rest of
                // the rule is still checked (one pass: an unknown field hides nothing).
                let r = &without_unknown_fields(r);
                if serde_json::from_value::<Rule>(r.clone()).is_ok() {
                    r.clone()
                } else {
                    let (kept, dropped) = salvage_rule(r, i);
                    bad.push(dropped);
                    kept
                }
            })
            .collect();
        cleaned.insert("rules".into(), Value::Array(fixed));
    }
    (serde_json::from_value(Value::Object(cleaned)).ok(), bad)
}

/// A finding about reachability, which [`check_graph`] makes.
fn is_graph_finding(f: &Finding) -> bool {
    f.message
        .starts_with("no terminal status can be reached from rule")
        || (f.message.starts_with("rule `") && f.message.contains("is never reached"))
}

/// What of a rule the structural layer refused was left out of its stand-in.
#[derive(Debug)]
struct Salvaged {
    /// The rule's index.
    index: usize,
    /// Paths under the rule (`when`, `on.approve`, …) left out: their findings are the
    /// structural layer's.
    dropped: Vec<String>,
    /// The parts left out, as written (their CEL is still checked).
    raw: Map<String, Value>,
    /// Whether a way out of the rule (`on`, `default`, `on_error` or an entry of `on`) was left
    /// out, so findings about its reachability are not sure.
    ways_dropped: bool,
}

/// A stand-in for a rule that does not deserialise: every part of it that does (its decision,
/// each entry of `on`, `default`, `on_error`, `gray`, …), so those are still checked in the same
/// pass; a decision that does not is replaced by `"when": "true"`.
fn salvage_rule(r: &Value, index: usize) -> (Value, Salvaged) {
    let mut out = Salvaged {
        index,
        dropped: Vec::new(),
        raw: Map::new(),
        ways_dropped: false,
    };
    let Value::Object(rule) = r else {
        out.dropped.push(String::new());
        out.ways_dropped = true;
        return (
            serde_json::json!({"id": format!("#{index}"), "when": "true"}),
            out,
        );
    };
    let fits =
        |m: &Map<String, Value>| serde_json::from_value::<Rule>(Value::Object(m.clone())).is_ok();
    let mut kept = Map::new();
    match rule.get("id").and_then(Value::as_str) {
        Some(id) => kept.insert("id".into(), Value::from(id)),
        None => kept.insert("id".into(), Value::from(format!("#{index}"))),
    };
    kept.insert("when".into(), Value::from("true"));
    let drop = |out: &mut Salvaged, key: &str, v: &Value| {
        out.dropped.push(key.to_string());
        out.raw.insert(key.to_string(), v.clone());
        // Each of these decides where the rule can go (a gray or rate-limit gate adds the
        // `skipped`/`limited` ways).
        if matches!(key, "on" | "default" | "on_error" | "gray" | "rate_limit") {
            out.ways_dropped = true;
        }
    };
    // The decision first: `when`, `conditions` or `use` (with its `use_version` and `params`).
    let decision: Vec<&str> = ["when", "conditions", "use"]
        .into_iter()
        .filter(|k| rule.contains_key(*k))
        .collect();
    let mut decided = false;
    for k in &decision {
        let mut trial = kept.clone();
        trial.remove("when");
        trial.insert((*k).to_string(), rule[*k].clone());
        if !decided && fits(&trial) {
            kept = trial;
            decided = true;
        } else {
            drop(&mut out, k, &rule[*k]);
        }
    }
    for (k, v) in rule {
        if matches!(k.as_str(), "id" | "when" | "conditions" | "use") {
            continue;
        }
        if matches!(k.as_str(), "use_version" | "params") && !kept.contains_key("use") {
            drop(&mut out, k, v);
            continue;
        }
        let mut trial = kept.clone();
        trial.insert(k.clone(), v.clone());
        if fits(&trial) {
            kept = trial;
            continue;
        }
        // `on` entry by entry: one transition of the wrong shape hides none of the others.
        if let (Some("on"), Value::Object(entries)) = (Some(k.as_str()), v) {
            let mut on = Map::new();
            for (label, t) in entries {
                let mut trial = kept.clone();
                trial.insert(
                    "on".into(),
                    Value::Object(Map::from_iter([(label.clone(), t.clone())])),
                );
                if fits(&trial) {
                    on.insert(label.clone(), t.clone());
                } else {
                    let path = format!("on{}", crate::checks::key_path(label));
                    out.dropped.push(path);
                    out.raw
                        .entry("on")
                        .or_insert_with(|| Value::Object(Map::new()))
                        .as_object_mut()
                        .map(|m| m.insert(label.clone(), t.clone()));
                    out.ways_dropped = true;
                }
            }
            kept.insert("on".into(), Value::Object(on));
            continue;
        }
        drop(&mut out, k, v);
    }
    if rule.get("id").and_then(Value::as_str).is_none() {
        out.dropped.push("id".into());
    }
    (Value::Object(kept), out)
}

/// A rule without the fields a rule, its transitions and its actions do not have (the
/// structural layer reports them).
fn without_unknown_fields(rule: &Value) -> Value {
    const RULE: [&str; 12] = [
        "id",
        "description",
        "when",
        "conditions",
        "use",
        "use_version",
        "params",
        "gray",
        "rate_limit",
        "on",
        "default",
        "on_error",
    ];
    const TRANSITION: [&str; 6] = ["next", "goto", "complete", "reason", "set", "actions"];
    const ACTION: [&str; 10] = [
        "type",
        "url",
        "secret_id",
        "timeout_ms",
        "channel",
        "template",
        "tag",
        "queue",
        "field",
        "value",
    ];
    fn keep(v: &mut Value, known: &[&str]) {
        if let Value::Object(m) = v {
            m.retain(|k, _| known.contains(&k.as_str()));
        }
    }
    fn transition(t: &mut Value) {
        keep(t, &TRANSITION);
        if let Some(Value::Array(actions)) = t.get_mut("actions") {
            for a in actions {
                keep(a, &ACTION);
                // An unknown `type` (reported by the structural layer) stands as a harmless
                // action, so the rule's other errors still show.
                if !known_name("ActionType", a.get("type")) {
                    *a = serde_json::json!({"type": "add_tag", "tag": "-"});
                }
            }
        }
    }
    let mut r = rule.clone();
    keep(&mut r, &RULE);
    if let Some(Value::Array(groups)) = r.get_mut("conditions") {
        for g in groups {
            if let Value::Array(conds) = g {
                for c in conds {
                    keep(c, &["field", "op", "value"]);
                    // Likewise an unknown `op`: `eq` takes any value.
                    if !known_name("Op", c.get("op"))
                        && let Value::Object(m) = c
                    {
                        m.insert("op".into(), Value::from("eq"));
                        m.entry("value").or_insert(Value::Null);
                    }
                }
            }
        }
    }
    if let Some(g) = r.get_mut("gray") {
        keep(g, &["percent"]);
    }
    if let Some(l) = r.get_mut("rate_limit") {
        keep(l, &["per_second", "burst", "fail_open"]);
    }
    if let Some(Value::Object(on)) = r.get_mut("on") {
        for t in on.values_mut() {
            transition(t);
        }
    }
    for k in ["default", "on_error"] {
        if let Some(t) = r.get_mut(k) {
            transition(t);
        }
    }
    r
}

/// Layer 3 checks that need the whole flow (the compiler checks each rule).
fn check_flow(flow: &Flow, out: &mut Vec<Finding>) {
    if flow.rules.len() > MAX_RULES {
        out.push(error(
            "$.rules",
            format!(
                "a flow has at most {MAX_RULES} rules (this one has {})",
                flow.rules.len()
            ),
        ));
    }
    // `version` 0: the schema says so (its minimum is 1).
    if flow.max_steps == Some(0) {
        out.push(error("$.max_steps", "max_steps must be 1 or more"));
    }
    if !crate::execution::is_client_id(&flow.client_id) {
        out.push(error(
            "$.client_id",
            format!(
                "client_id `{}` is not a client id: 1-63 characters of lower-case letters, digits and `-`, not starting with `-`",
                crate::execution::cut(&flow.client_id, 70)
            ),
        ));
    }
    let f = &flow.flow_id;
    if f.is_empty() || f.contains('/') || f.chars().any(char::is_whitespace) {
        out.push(error(
            "$.flow_id",
            "flow_id must be non-empty, without `/` or spaces",
        ));
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, r) in flow.rules.iter().enumerate() {
        if r.id.is_empty() {
            out.push(error(
                format!("$.rules[{i}].id"),
                "rule id must not be empty",
            ));
        }
        if r.id.contains('|') {
            out.push(error(
                format!("$.rules[{i}].id"),
                format!(
                    "rule id `{}` must not contain `|`: a trigger row's `rules` subset is a `|`-separated list of rule ids",
                    r.id
                ),
            ));
        }
        if r.on.contains_key(crate::execution::CLIENT_DATA) {
            out.push(error(
                format!("$.rules[{i}].on"),
                format!(
                    "`{}` is how a trace shows client data, not an outcome a rule can name",
                    crate::execution::CLIENT_DATA
                ),
            ));
        }
        if let Some(j) = first.get(r.id.as_str()) {
            out.push(error(
                format!("$.rules[{i}].id"),
                format!("duplicate rule id `{}` (first used by $.rules[{j}])", r.id),
            ));
        } else {
            first.insert(&r.id, i);
        }
        if let Some(g) = &r.gray {
            let p = format!("$.rules[{i}].gray.percent");
            if !(0.0..=100.0).contains(&g.percent) || g.percent.is_nan() {
                out.push(error(p, format!("percent {} is outside 0–100", g.percent)));
            } else if g.percent == 0.0 {
                out.push(warning(p, "gray percent 0: the rule is always skipped"));
            } else if g.percent == 100.0 {
                out.push(warning(p, "gray percent 100: the gate has no effect"));
            }
        }
        if let Some(rl) = &r.rate_limit {
            if rl.per_second.is_nan() || rl.per_second <= 0.0 {
                out.push(error(
                    format!("$.rules[{i}].rate_limit.per_second"),
                    "per_second must be greater than 0",
                ));
            }
            if rl.burst.is_some_and(|b| b.is_nan() || b < 1.0) {
                out.push(error(
                    format!("$.rules[{i}].rate_limit.burst"),
                    "burst must be at least 1",
                ));
            }
        }
    }
    if let Some(status) = flow.default_status.as_deref() {
        if status.is_empty() {
            out.push(error(
                "$.default_status",
                "default_status must not be empty",
            ));
        } else if RESERVED_STATUSES.contains(&status) {
            out.push(error(
                "$.default_status",
                format!("`{status}` is reserved by rulestream"),
            ));
        }
    }
    for (i, s) in flow.terminal_statuses.iter().enumerate() {
        if RESERVED_STATUSES.contains(&s.as_str()) {
            out.push(error(
                format!("$.terminal_statuses[{i}]"),
                format!("`{s}` is reserved by rulestream"),
            ));
        }
    }
    check_graph(flow, out);
}

/// Where each rule can go (`n`, one past the last rule: the end of the flow), from
/// [`Rule::ways`]: every way, or (with `designed_only`) without the ways only a `rules` subset
/// opens.
fn successors(flow: &Flow, index: &HashMap<&str, usize>, designed_only: bool) -> Vec<Vec<usize>> {
    let n = flow.rules.len();
    flow.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.ways()
                .into_iter()
                .filter(|(_, why)| !(designed_only && *why == Because::Subset))
                .filter_map(|(w, _)| match w {
                    Way::Take(t) => match &t.goto {
                        Some(g) => index.get(g.as_str()).copied(),
                        None if t.complete.is_some() => Some(n),
                        None => Some(i + 1),
                    },
                    Way::NextRule => Some(i + 1),
                    Way::Fail => None,
                })
                .collect()
        })
        .collect()
}

fn check_graph(flow: &Flow, out: &mut Vec<Finding>) {
    let n = flow.rules.len();
    if n == 0 {
        return;
    }
    let mut index = HashMap::new();
    for (i, r) in flow.rules.iter().enumerate() {
        index.entry(r.id.as_str()).or_insert(i);
    }
    // Which rules can reach the end: reverse search from `n`, over the ways a flow is designed
    // to take (leaving a rule out with a `rules` subset is not a way out of a loop).
    let mut preds = vec![Vec::new(); n + 1];
    for (i, s) in successors(flow, &index, true).iter().enumerate() {
        for &j in s {
            preds[j.min(n)].push(i);
        }
    }
    let mut ends = vec![false; n + 1];
    ends[n] = true;
    let mut q = VecDeque::from([n]);
    while let Some(j) = q.pop_front() {
        for &i in &preds[j] {
            if !ends[i] {
                ends[i] = true;
                q.push_back(i);
            }
        }
    }
    // Which rules the start reaches by the flow's own transitions, and which only through a
    // `rules` subset's skips (a rule left out falls through to the next one).
    let start = flow
        .start
        .as_deref()
        .and_then(|s| index.get(s).copied())
        .unwrap_or(0);
    let designed = reached(&successors(flow, &index, true), start);
    let seen = reached(&successors(flow, &index, false), start);
    for (i, r) in flow.rules.iter().enumerate() {
        if !ends[i] {
            out.push(error(
                format!("$.rules[{i}]"),
                format!(
                    "no terminal status can be reached from rule `{}` (every path loops back: add a `complete` or a way out)",
                    r.id
                ),
            ));
        }
        if !seen[i] {
            out.push(warning(
                format!("$.rules[{i}]"),
                format!("rule `{}` is never reached from the start rule", r.id),
            ));
        } else if !designed[i] {
            out.push(warning(
                format!("$.rules[{i}]"),
                format!(
                    "rule `{}` is never reached by a transition from the start rule (only when a trigger row's `rules` subset passes over a rule before it)",
                    r.id
                ),
            ));
        }
    }
}

/// Which of the rules (and `n`, the end) a breadth-first walk from `start` over `succ` reaches.
fn reached(succ: &[Vec<usize>], start: usize) -> Vec<bool> {
    let n = succ.len();
    let mut seen = vec![false; n + 1];
    seen[start] = true;
    let mut q = VecDeque::from([start]);
    while let Some(i) = q.pop_front() {
        if i >= n {
            continue;
        }
        for &j in &succ[i] {
            let j = j.min(n);
            if !seen[j] {
                seen[j] = true;
                q.push_back(j);
            }
        }
    }
    seen
}

/// Statuses rulestream gives an execution itself (SPEC section 3): a flow may not use them.
pub const RESERVED_STATUSES: [&str; 3] = ["RUNNING", crate::model::FAILED, "CANCELLED"];

/// The most rules a flow may have (SPEC section 1, Limits).
pub const MAX_RULES: usize = 200;
pub use crate::expr::MAX_PATTERN_CHARS;
