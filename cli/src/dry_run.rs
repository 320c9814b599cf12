//! `rulestream dry-run --flow FILE --input FILE|JSON [--catalog DIR] [--now RFC3339] [--mock FILE]
//! [--client FILE] [--json]`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rulestream_core::model::FAILED;
use rulestream_core::{ExecutionMeta, Finding, Mocked, validate_str};
use serde_json::{Value, json};

use crate::Outcome;
use crate::output;

/// The command's arguments.
pub struct Args {
    pub flow: PathBuf,
    pub input: String,
    pub catalog: PathBuf,
    pub now: Option<String>,
    pub rules: Option<String>,
    pub execution_id: String,
    pub mock: Option<String>,
    pub client: Option<String>,
    pub json: bool,
}

/// Reads `--input`: inline JSON, `-` for stdin, or a file.
pub fn read_input(arg: &str) -> anyhow::Result<Value> {
    read_object("--input", arg)
}

/// Reads a JSON object given as inline JSON, `-` for stdin, or a file (`what` names the option).
pub fn read_object(what: &str, arg: &str) -> anyhow::Result<Value> {
    let trimmed = arg.trim_start();
    let (text, from) = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        (arg.to_string(), format!("inline {what}"))
    } else if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the input from stdin")?;
        (s, "stdin".to_string())
    } else {
        match std::fs::read_to_string(arg) {
            Ok(s) => (s, arg.to_string()),
            // JSON, but not an object (`5`, `null`, `"x"`): say that, not "no such file".
            Err(_) if serde_json::from_str::<Value>(arg).is_ok() => {
                return Err(crate::output::usage(format!(
                    "{what} {arg}: must be a JSON object (`{{...}}`)"
                )));
            }
            Err(e) => {
                return Err(crate::output::usage(format!(
                    "{what} {arg}: not JSON and not a readable file ({e})"
                )));
            }
        }
    };
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| crate::output::usage(format!("{from} is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(crate::output::usage(format!(
            "{from} must be a JSON object"
        )));
    }
    Ok(v)
}

/// Runs the command.
pub fn run(a: &Args) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(&a.flow)
        .map_err(|e| crate::output::usage(format!("cannot read flow {}: {e}", a.flow.display())))?;
    let input = read_input(&a.input)?;
    let mocks = match &a.mock {
        Some(m) => match read_object("--mock", m)? {
            Value::Object(map) => map,
            _ => {
                return Err(crate::output::usage(
                    "--mock must be a JSON object of answers by rule id",
                ));
            }
        },
        None => serde_json::Map::new(),
    };
    for (rule, answer) in &mocks {
        // As a real answer: a bool or a non-empty string.
        if !answer
            .get("outcome")
            .is_some_and(|o| o.is_boolean() || o.as_str().is_some_and(|s| !s.is_empty()))
        {
            return Err(crate::output::usage(format!(
                "--mock: the answer for rule `{rule}` needs an `outcome` (a bool or a non-empty string) and optionally `set`"
            )));
        }
    }
    let client = a
        .client
        .as_deref()
        .map(|c| read_object("--client", c))
        .transpose()?;
    let now: DateTime<Utc> = match &a.now {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| crate::output::usage(format!("--now {s} is not an RFC 3339 time: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let catalog = match crate::validate::load_catalog(&a.catalog)? {
        Ok(c) => c,
        Err(e) => {
            crate::output::fail("refused", &format!("catalog: error: {e}"));
            return Ok(Outcome::UserFix);
        }
    };
    let v = validate_str(&text, &catalog);
    let Some(flow) = v.flow.as_ref().filter(|_| v.is_valid()) else {
        let errors: Vec<&Finding> = v.errors().collect();
        let (reason, error) = invalid_flow_reason(&errors);
        if a.json {
            // The SPEC section 6 shape of an execution that ended FAILED, with the findings.
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "status": FAILED,
                    "reason": reason,
                    "error": error,
                    "errors": errors,
                    "path": [],
                    "steps": [],
                    "ctx": {},
                    "tags": [],
                    "actions": [],
                }))?
            );
            eprintln!("rulestream: {}: {reason}", a.flow.display());
        } else {
            eprintln!("{} is not a valid flow:", a.flow.display());
            for e in &errors {
                eprintln!("  {e}");
            }
        }
        return Ok(Outcome::UserFix);
    };
    let meta = ExecutionMeta {
        execution_id: a.execution_id.clone(),
        client_id: flow.flow().client_id.clone(),
        flow_id: flow.flow().flow_id.clone(),
        flow_version: flow.flow().version,
    };
    let subset: Option<Vec<String>> = a.rules.as_ref().map(|r| {
        r.split('|')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if subset.as_ref().is_some_and(Vec::is_empty) {
        // As a trigger row's `rules` that names no rule (its execution ends FAILED).
        return Err(crate::output::usage(
            "--rules names no rule (leave it out to run every rule)",
        ));
    }
    // A mock for a rule the flow does not have, or one that calls nothing out, is never used:
    // most likely a typo in the rule id.
    for rule in mocks.keys() {
        let external = flow.flow().rules.iter().any(|r| {
            (&r.id == rule || r.use_rule.as_ref() == Some(rule))
                && r.use_rule.as_deref().is_some_and(|m| {
                    catalog
                        .get(m, r.use_version)
                        .is_some_and(|mr| mr.kind != rulestream_core::model::MasterKind::Cel)
                })
        });
        if !external {
            eprintln!(
                "note: --mock answers rule `{rule}`, which is not a `lambda`/`http` rule of this flow: the answer is not used"
            );
        }
    }
    let report = pollster::block_on(rulestream_core::run(
        flow,
        meta,
        &input,
        client.as_ref(),
        now,
        subset,
        &Mocked::for_flow(mocks, flow.flow()),
    ));
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&output::dry_run_json(&report))?
        );
    } else {
        for w in v.warnings() {
            eprintln!("{w}");
        }
        print!("{}", output::dry_run_table(flow.flow(), &report));
    }
    if report.status == FAILED {
        let why = report
            .reason
            .as_deref()
            .or(report.error.as_deref())
            .unwrap_or("no reason recorded");
        eprintln!(
            "rulestream: execution ended FAILED: {}",
            why.replace('\n', " ")
        );
        return Ok(Outcome::UserFix);
    }
    Ok(Outcome::Ok)
}

/// One error on one line, without the word `error:` (the reason says `invalid flow:`).
fn finding_line(f: &Finding) -> String {
    let text = f.to_string();
    text.strip_prefix("error: ")
        .unwrap_or(&text)
        .replace('\n', " ")
}

/// Why a flow is not valid: a one-line reason naming its first error (and how many more), and
/// every error joined (the words `upload` uses: `invalid flow: …`).
fn invalid_flow_reason(errors: &[&Finding]) -> (String, String) {
    let Some(first) = errors.first() else {
        let r = "invalid flow".to_string();
        return (r.clone(), r);
    };
    let reason = match errors.len() {
        1 => format!("invalid flow: {}", finding_line(first)),
        n => format!(
            "invalid flow: {} (and {} more error(s))",
            finding_line(first),
            n - 1
        ),
    };
    let all: Vec<String> = errors.iter().map(|f| finding_line(f)).collect();
    (reason, format!("invalid flow: {}", all.join("; ")))
}
