//! Rendering: the JSON documents of `--json` and the human tables.

use rulestream_core::engine::{Explain, shown_value};
use rulestream_core::{Flow, RunReport};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// Whether this command runs with `--json` (set once by `main`, before anything is printed).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Bad usage (a malformed argument or option, named in the message): an error that `main`
/// prints on one line and turns into exit 2, with code `usage` under `--json`.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error.
pub fn usage(line: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(line.into()))
}

/// A failure that has nothing else to print: its one-line reason on stderr, as every exit 1, 2
/// or 3 has. Under `--json`, stdout also gets `{"error": {"code", "message"}}` (the API's
/// error shape), so a script that parses stdout gets a document rather than nothing. `code` is
/// `usage`, `not_found`, `conflict`, `refused` or `error` (an unreachable backend or a failed
/// call).
pub fn fail(code: &str, message: &str) {
    eprintln!("rulestream: {message}");
    if JSON.load(Ordering::Relaxed) {
        println!(
            "{}",
            serde_json::json!({"error": {"code": code, "message": message}})
        );
    }
}

/// The `dry-run --json` document (SPEC section 6).
pub fn dry_run_json(r: &RunReport) -> Value {
    r.spec_json()
}

fn transition_text(t: &Value) -> String {
    if let Some(g) = t.get("goto").and_then(Value::as_str) {
        format!("goto {g}")
    } else if let Some(c) = t.get("complete").and_then(Value::as_str) {
        format!("complete {c}")
    } else if t.get("next").is_some() {
        "next".into()
    } else {
        "-".into()
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn explain_text(e: &Explain) -> Vec<String> {
    match e {
        Explain::Expression { expression, result } => {
            vec![format!("{expression}  =>  {}", compact(result))]
        }
        Explain::Conditions { conditions, .. } => conditions
            .iter()
            .map(|c| {
                format!(
                    "{} [group {}] {} {} {}  (actual {})",
                    if c.passed { "pass" } else { "fail" },
                    c.group,
                    c.field,
                    c.op,
                    c.value
                        .as_deref()
                        .map(|v| compact(&shown_value(v)))
                        .unwrap_or_default(),
                    if rulestream_core::engine::reads_client(&c.field) {
                        "\"<client data>\"".to_string()
                    } else {
                        // Cut to 256 characters, as in a trace.
                        compact(&shown_value(&c.actual))
                    }
                )
            })
            .collect(),
        Explain::Master {
            rule_id,
            version,
            result,
            ..
        } => vec![format!(
            "master rule {rule_id} v{version}  =>  {}",
            compact(result)
        )],
        Explain::Skipped { reason } | Explain::Limited { reason } => vec![reason.clone()],
        Explain::Error { message } => vec![format!("error: {message}")],
    }
}

/// A readable table of the path: each rule's outcome, transition and why.
pub fn dry_run_table(flow: &Flow, r: &RunReport) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "#".into(),
        "rule".into(),
        "outcome".into(),
        "transition".into(),
        "why".into(),
    ]];
    let mut extra: Vec<Vec<String>> = vec![vec![]];
    for s in &r.steps {
        let mut why = explain_text(&s.explain);
        // What a dry run did differently here (a rate limit treated as granted).
        if let Some(note) = &s.note {
            why.push(format!("note: {note}"));
        }
        let first = if why.is_empty() {
            String::new()
        } else {
            why.remove(0)
        };
        rows.push([
            s.seq.to_string(),
            s.rule.to_string(),
            s.outcome.to_string(),
            transition_text(&s.transition),
            first,
        ]);
        extra.push(why);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("{}/{} v{}\n", flow.client_id, flow.flow_id, flow.version);
    for (row, more) in rows.iter().zip(&extra) {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            line.push_str(&format!("{:<w$}  ", row[i], w = *w));
        }
        line.push_str(&row[4]);
        out.push_str(line.trim_end());
        out.push('\n');
        let indent: usize = widths.iter().map(|w| w + 2).sum();
        for m in more {
            out.push_str(&format!("{:indent$}{m}\n", ""));
        }
    }
    out.push_str(&format!("status: {}", r.status));
    if let Some(reason) = &r.reason {
        out.push_str(&format!("  ({reason})"));
    }
    out.push('\n');
    if !r.ctx.is_empty() {
        out.push_str(&format!("ctx:    {}\n", Value::Object(r.ctx.clone())));
    }
    if !r.tags.is_empty() {
        out.push_str(&format!("tags:   {}\n", r.tags.join(", ")));
    }
    if let Some(route) = &r.route {
        out.push_str(&format!("route:  {route}\n"));
    }
    for a in &r.actions {
        // A URL shows as scheme://host[:port] only, as in traces (its path may hold a token).
        let url = a
            .action
            .url
            .as_deref()
            .map(rulestream_core::chain::redact_url);
        out.push_str(&format!(
            "action: {} {}  key {}\n",
            a.action.kind.as_str(),
            url.as_deref()
                .or(a.action.tag.as_deref())
                .or(a.action.queue.as_deref())
                .or(a.action.channel.as_deref())
                .or(a.action.field.as_deref())
                .unwrap_or(""),
            a.idempotency_key
        ));
    }
    out
}
