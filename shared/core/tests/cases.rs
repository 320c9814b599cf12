//! Table-driven engine tests from `tests/cases/*.json` (dry-runs with expected status, path,
//! outcomes, ctx, tags, actions) and `tests/invalid/*.json` (flows with every expected error).

mod common;

use std::path::Path;

use rulestream_core::engine::Explain;
use rulestream_core::{Catalog, Severity, validate_str, validate_value};
use serde_json::Value;

fn load(dir: &str) -> Vec<(String, Value)> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut out = Vec::new();
    for f in common::json_files(&base) {
        let text = std::fs::read_to_string(&f).expect("readable");
        let cases: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for c in cases.as_array().expect("a file holds an array of cases") {
            let name = format!(
                "{}::{}",
                f.file_stem().and_then(|s| s.to_str()).unwrap_or("?"),
                c["name"].as_str().expect("case has a name")
            );
            out.push((name, c.clone()));
        }
    }
    assert!(!out.is_empty(), "no cases in {}", base.display());
    out
}

fn catalog(c: &Value) -> Catalog {
    match c.get("catalog") {
        Some(rules) => common::catalog_of(rules),
        None => Catalog::new(),
    }
}

#[test]
fn run_cases() {
    let mut failures = Vec::new();
    let cases = load("cases");
    for (name, c) in &cases {
        let report = common::dry_run(
            &c["flow"],
            &catalog(c),
            &c["input"],
            c["now"].as_str().unwrap_or("2026-01-01T00:00:00Z"),
            c["execution_id"].as_str().unwrap_or("exec-1"),
            c["rules_subset"].as_str(),
        );
        let e = &c["expect"];
        let mut check = |what: &str, got: Value, want: &Value| {
            if !want.is_null() && &got != want {
                failures.push(format!("{name}: {what}: got {got}, want {want}"));
            }
        };
        check("status", Value::from(report.status.clone()), &e["status"]);
        check("path", serde_json::json!(report.path), &e["path"]);
        let outcomes: Vec<&str> = report.steps.iter().map(|s| &*s.outcome).collect();
        check("outcomes", serde_json::json!(outcomes), &e["outcomes"]);
        if e.get("reason").is_some() {
            check("reason", serde_json::json!(report.reason), &e["reason"]);
        }
        check("ctx", Value::Object(report.ctx.clone()), &e["ctx"]);
        check("tags", serde_json::json!(report.tags), &e["tags"]);
        check("route", serde_json::json!(report.route), &e["route"]);
        let keys: Vec<&str> = report
            .actions
            .iter()
            .map(|a| a.idempotency_key.as_str())
            .collect();
        check("action_keys", serde_json::json!(keys), &e["action_keys"]);
        if !e["conditions_passed"].is_null() {
            let passed = report.steps.iter().find_map(|s| match &s.explain {
                Explain::Conditions { conditions, .. } => {
                    Some(conditions.iter().map(|c| c.passed).collect::<Vec<_>>())
                }
                _ => None,
            });
            check(
                "conditions_passed",
                serde_json::json!(passed),
                &e["conditions_passed"],
            );
        }
        if let Some(sub) = e["error_contains"].as_str() {
            let err = report.error.clone().unwrap_or_default();
            if !err.contains(sub) {
                failures.push(format!("{name}: error {err:?} lacks {sub:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_flows_report_every_error_with_its_path() {
    let mut failures = Vec::new();
    let cases = load("invalid");
    for (name, c) in &cases {
        let v = match &c["flow"] {
            Value::String(text) => validate_str(text, &catalog(c)),
            doc => validate_value(doc, &catalog(c)),
        };
        if v.is_valid() && !c["errors"].as_array().is_none_or(Vec::is_empty) {
            failures.push(format!("{name}: accepted an invalid flow"));
            continue;
        }
        for (sev, key) in [(Severity::Error, "errors"), (Severity::Warning, "warnings")] {
            let Some(expected) = c[key].as_array() else {
                continue;
            };
            let got: Vec<_> = v.findings.iter().filter(|f| f.severity == sev).collect();
            for want in expected {
                let path = want["path"].as_str().unwrap_or("?");
                let contains = want["contains"].as_str().unwrap_or("");
                let hit = got.iter().any(|f| {
                    f.path == path
                        && f.message.contains(contains)
                        && want["line"]
                            .as_u64()
                            .is_none_or(|l| f.line == Some(l as usize))
                        && want["column"]
                            .as_u64()
                            .is_none_or(|l| f.column == Some(l as usize))
                });
                if !hit {
                    failures.push(format!(
                        "{name}: missing {key} {path} ~ {contains:?}; got {:#?}",
                        got.iter().map(|f| f.to_string()).collect::<Vec<_>>()
                    ));
                }
            }
            if got.len() != expected.len() {
                failures.push(format!(
                    "{name}: {} {key} expected, got {}: {:#?}",
                    expected.len(),
                    got.len(),
                    got.iter().map(|f| f.to_string()).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems over {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn dry_run_answers_show_webhook_urls_as_scheme_host_and_port_only() {
    let flow = serde_json::json!({"client_id": "acme", "flow_id": "hooks", "version": 1,
        "terminal_statuses": ["OK"],
        "rules": [{"id": "a", "when": "true", "on": {"true": {"complete": "OK", "actions": [
            {"type": "call_webhook", "url": "https://hooks.example.com:8443/T000/B000/secret-token?sig=x"},
            {"type": "add_tag", "tag": "t"}]}}}]});
    let report = common::dry_run(
        &flow,
        &Catalog::new(),
        &serde_json::json!({}),
        "2026-01-01T00:00:00Z",
        "acme:1",
        None,
    );
    let doc = report.spec_json();
    assert_eq!(doc["actions"][0]["url"], "https://hooks.example.com:8443");
    assert_eq!(doc["actions"][1]["tag"], "t");
    assert!(!doc.to_string().contains("secret-token"), "{doc}");
}
