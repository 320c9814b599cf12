//! The `rulestream` binary as a user runs it: output, `--json` and exit codes (SPEC section 6).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rulestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rulestream"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the binary runs")
}

/// `rulestream dry-run --flow FLOW --input {} EXTRA…`.
fn dry_run_empty_input(flow: &str, extra: &[&str]) -> Output {
    let mut args = vec!["dry-run", "--flow", flow, "--input", "{}"];
    args.extend_from_slice(extra);
    rulestream(&args)
}

fn tmp_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rulestream-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write tmp file");
    p
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn validate_accepts_the_samples() {
    let o = rulestream(&["validate", "client-configs"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = rulestream(&["validate", "client-configs", "--json"]);
    let doc = stdout_json(&o);
    assert_eq!(doc["valid"], json!(true));
    assert!(doc["files"].as_array().is_some_and(|f| f.len() >= 4));
}

#[test]
fn validate_rejects_an_invalid_flow_with_exit_1_and_paths() {
    let bad = tmp_file(
        "bad.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
                "rules": [{"id": "a", "whenn": "true"},
                          {"id": "b", "when": "input.x >", "on": {"true": {"goto": "nowhere"}}}]})
        .to_string(),
    );
    let o = rulestream(&["validate", bad.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("$.rules[0].whenn"), "{text}");
    assert!(text.contains("$.rules[1].when"), "{text}");
    assert!(text.contains("$.rules[1].on.true.goto"), "{text}");
    // The one-line reason of the non-zero exit, on stderr.
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("error(s) in 1 file(s)"), "{err}");

    let o = rulestream(&["validate", bad.to_str().expect("utf8"), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let doc = stdout_json(&o);
    let errors = doc["files"][0]["errors"].as_array().expect("errors");
    assert!(errors.len() >= 3, "{errors:?}");
    // Under --json too (the JSON stays on stdout).
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{} error(s) in 1 file(s)", errors.len())),
        "{err}"
    );
}

/// SPEC section 6: `dry-run --json` of a flow that fails validation answers the FAILED shape,
/// with the findings, exit 1 and a one-line reason on stderr.
#[test]
fn dry_run_json_of_an_invalid_flow_is_failed_with_its_errors() {
    let bad = tmp_file(
        "dry-bad.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
                "rules": [{"id": "a", "whenn": "true"},
                          {"id": "b", "when": "true", "on": {"true": {"goto": "nowhere"}}}]})
        .to_string(),
    );
    let o = rulestream(&[
        "dry-run",
        "--flow",
        bad.to_str().expect("utf8"),
        "--input",
        "{}",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let doc = stdout_json(&o);
    assert_eq!(doc["status"], json!("FAILED"), "{doc}");
    assert!(doc.get("valid").is_none(), "{doc}");
    let reason = doc["reason"].as_str().expect("a reason");
    assert!(reason.starts_with("invalid flow: $."), "{doc}");
    assert!(!reason.contains('\n'), "{doc}");
    let errors = doc["errors"].as_array().expect("errors");
    assert!(errors.len() >= 2, "{doc}");
    assert!(
        errors[0]["path"]
            .as_str()
            .is_some_and(|p| reason.contains(p)),
        "the reason names the first error: {doc}"
    );
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("$.rules[1].on.true.goto")),
        "{doc}"
    );
    for (key, empty) in [
        ("path", json!([])),
        ("steps", json!([])),
        ("ctx", json!({})),
        ("tags", json!([])),
        ("actions", json!([])),
    ] {
        assert_eq!(doc[key], empty, "{key}: {doc}");
    }
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("invalid flow"), "{err}");
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let bad = tmp_file("syntax.json", "{\n  \"client_id\": \"c\",\n  oops\n}");
    let o = rulestream(&["validate", bad.to_str().expect("utf8"), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let e = &stdout_json(&o)["files"][0]["errors"][0];
    assert_eq!(e["line"], json!(3));
    assert_eq!(e["column"], json!(3));
}

#[test]
fn bad_usage_and_missing_paths_exit_2_with_one_line() {
    let o = rulestream(&["validate", "no/such/file.json"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let o = rulestream(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim().lines().count(), 1);
    assert_eq!(rulestream(&["dry-run", "--flow"]).status.code(), Some(2));
    // Under --json, bad usage also leaves the error document on stdout.
    let o = rulestream(&["dry-run", "--flow", "x.json", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let doc = stdout_json(&o);
    assert_eq!(doc["error"]["code"], "usage", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--input")),
        "{doc}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim().lines().count(), 1);
    // A malformed option value the parser itself cannot see is bad usage too.
    let flow = tmp_file(
        "usage.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1,
            "rules": [{"id": "r", "when": "true"}]})
        .to_string(),
    );
    let flow = flow.to_str().expect("utf-8 path");
    let o = rulestream(&["dry-run", "--flow", flow, "--input", "{bad", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout_json(&o)["error"]["code"], "usage");
}

#[test]
fn dry_run_json_has_the_spec_shape() {
    let o = rulestream(&[
        "dry-run",
        "--flow",
        "client-configs/loyalco/points.json",
        "--input",
        &examples("loyalco.points")[0]["input"].to_string(),
        "--now",
        "2026-11-22T10:00:00Z",
        "--json",
    ]);
    let doc = stdout_json(&o);
    for key in [
        "status", "reason", "path", "steps", "ctx", "tags", "actions",
    ] {
        assert!(doc.get(key).is_some(), "missing {key}: {doc}");
    }
    let steps = doc["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), doc["path"].as_array().expect("path").len());
    for s in steps {
        for key in ["rule", "outcome", "transition", "explain"] {
            assert!(s.get(key).is_some(), "step lacks {key}: {s}");
        }
    }
    assert_eq!(
        doc["status"],
        examples("loyalco.points")[0]["expect_status"]
    );
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn dry_run_table_shows_conditions_and_exit_1_on_failed() {
    let flow = tmp_file(
        "fails.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
                "rules": [{"id": "check", "conditions": [[{"field": "input.n", "op": "gt", "value": 3}]],
                           "on": {"true": {"goto": "boom"}, "false": {"complete": "OK"}}},
                          {"id": "boom", "when": "input.missing.deep", "on": {"true": {"complete": "OK"}}}]})
        .to_string(),
    );
    let f = flow.to_str().expect("utf8");
    let o = rulestream(&["dry-run", "--flow", f, "--input", r#"{"n": 1}"#]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("fail [group 0] input.n gt 3"), "{text}");
    assert!(text.contains("status: OK"), "{text}");

    let o = rulestream(&["dry-run", "--flow", f, "--input", r#"{"n": 5}"#, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let doc = stdout_json(&o);
    assert_eq!(doc["status"], json!("FAILED"));
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("rule `boom`")),
        "{doc}"
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("execution ended FAILED"), "{err}");
}

/// A malformed option or argument is bad usage (exit 2, one line naming it), found before any
/// backend is called.
#[test]
fn malformed_options_are_bad_usage_with_exit_2() {
    let flow = tmp_file(
        "upload-me.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 2,
                "rules": [{"id": "a", "when": "true"}]})
        .to_string(),
    );
    let flow = flow.to_str().expect("utf8");
    let cases: [(&[&str], &str); 8] = [
        (&["set-percent", "c", "f", "150"], "PERCENT"),
        (&["upload", flow, "--percent", "101"], "--percent"),
        (&["upload", flow, "--guard", "not json"], "--guard"),
        (
            &[
                "upload",
                flow,
                "--guard",
                r#"{"max_failed_delta": 2, "min_executions": 10}"#,
            ],
            "max_failed_delta",
        ),
        (&["diff", "c", "f", "1"], "two versions"),
        (&["client", "add", "Not_A_Client", "f"], "client id"),
        (&["client", "add", "c", "f", "--quota", "0"], "--quota"),
        (&["client", "disable", "Bad_Client"], "client id"),
    ];
    for (args, names) in cases {
        let o = rulestream(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(names), "{args:?} names {names}: {err}");
    }
}

#[test]
fn dry_run_reads_input_from_a_file_and_rejects_bad_input() {
    let input = tmp_file("input.json", r#"{"n": 1}"#);
    let flow = tmp_file(
        "ok.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1,
                "rules": [{"id": "a", "when": "input.n == 1"}]})
        .to_string(),
    );
    let o = rulestream(&[
        "dry-run",
        "--flow",
        flow.to_str().expect("utf8"),
        "--input",
        input.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(stdout_json(&o)["status"], json!("COMPLETED"));
    let o = rulestream(&[
        "dry-run",
        "--flow",
        flow.to_str().expect("utf8"),
        "--input",
        "{not json",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

fn examples(name: &str) -> Vec<Value> {
    let p = repo().join(format!("client-configs/examples/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).expect("examples")).expect("json")
}

/// SPEC section 6: `--mock` answers `lambda`/`http` rules by rule id, `--client` stands in for
/// client data, and a rate-limited rule is granted and says so.
#[test]
fn dry_run_takes_mocks_and_client_data_and_says_a_rate_limit_was_granted() {
    let flow = tmp_file(
        "mocked.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1,
            "terminal_statuses": ["ALLOW", "BLOCK", "GOLD", "ERR"],
            "rules": [
                {"id": "tier", "conditions": [[{"field": "client.tier", "op": "eq", "value": "gold"}]],
                 "rate_limit": {"per_second": 1, "burst": 1},
                 "on": {"true": {"next": true}}, "default": {"complete": "ALLOW"}},
                {"id": "fraud", "use": "ml_fraud_score", "params": {"threshold": 0.9},
                 "on": {"block": {"complete": "BLOCK"}, "allow": {"complete": "GOLD", "set": {"s": "ctx.fraud_score * 10.0"}}},
                 "on_error": {"complete": "ERR"}}]})
        .to_string(),
    );
    let flow = flow.to_str().expect("utf-8 path");
    let mock = r#"{"fraud": {"outcome": "allow", "set": {"fraud_score": 0.25}}}"#;
    let o = rulestream(&[
        "dry-run",
        "--flow",
        flow,
        "--input",
        "{}",
        "--client",
        r#"{"tier": "gold"}"#,
        "--mock",
        mock,
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = stdout_json(&o);
    assert_eq!(v["status"], "GOLD", "{v}");
    assert_eq!(v["path"], json!(["tier", "fraud"]));
    assert_eq!(v["ctx"]["fraud_score"], json!(0.25));
    assert_eq!(v["ctx"]["s"], json!(2.5));
    assert_eq!(
        v["steps"][0]["explain"]["conditions"][0]["actual"],
        "<client data>"
    );
    assert!(
        v["steps"][0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("treated as granted")),
        "{v}"
    );
    assert!(v["steps"][1].get("note").is_none());

    // Without a mock the rule evaluates as an error, so `on_error` decides.
    let o = rulestream(&[
        "dry-run",
        "--flow",
        flow,
        "--input",
        "{}",
        "--client",
        r#"{"tier": "gold"}"#,
        "--json",
    ]);
    let v = stdout_json(&o);
    assert_eq!(v["status"], "ERR", "{v}");
    // A mock keyed by the master rule's `rule_id` answers the rule that uses it, silently.
    let o = rulestream(&[
        "dry-run",
        "--flow",
        flow,
        "--input",
        "{}",
        "--client",
        r#"{"tier": "gold"}"#,
        "--mock",
        r#"{"ml_fraud_score": {"outcome": "block"}}"#,
        "--json",
    ]);
    assert_eq!(stdout_json(&o)["status"], "BLOCK");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("note"));
    // Without client data the condition fails.
    let o = rulestream(&["dry-run", "--flow", flow, "--input", "{}", "--json"]);
    assert_eq!(stdout_json(&o)["status"], "ALLOW");
    // A malformed mock is bad usage, named.
    let o = dry_run_empty_input(flow, &["--mock", r#"{"fraud": {"set": {}}}"#]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fraud"));
}

/// Usage errors name what is wrong on one line (SPEC section 6), e.g. the missing option.
#[test]
fn usage_errors_name_the_missing_option_and_completions_are_printed() {
    let o = rulestream(&["dry-run", "--input", "{}"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("--flow"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let o = rulestream(&["run", "acme"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("<FLOW>") && err.contains("--input"), "{err}");
    for shell in ["bash", "zsh", "fish"] {
        let o = rulestream(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("dry-run") && script.contains("rulestream"),
            "{shell}"
        );
    }
    assert_eq!(rulestream(&["completions", "tcsh"]).status.code(), Some(2));
}

/// Every subcommand (and sub-subcommand) has a complete `--help` (exit 0, a description, its
/// options) and takes `--json` (SPEC section 6).
#[test]
fn every_command_documents_itself_and_takes_json() {
    let top = rulestream(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    let text = String::from_utf8_lossy(&top.stdout).to_string();
    let spec = [
        "validate",
        "dry-run",
        "run",
        "status",
        "trace",
        "cancel",
        "rerun",
        "logs",
        "upload",
        "set-percent",
        "promote",
        "rollback",
        "releases",
        "diff",
        "catalog",
        "client",
        "top",
        "completions",
    ];
    for cmd in spec {
        assert!(
            text.contains(&format!("  {cmd}")),
            "`rulestream --help` lists {cmd}:\n{text}"
        );
    }
    let mut leaves: Vec<Vec<&str>> = spec
        .iter()
        .filter(|c| !["catalog", "client"].contains(c))
        .map(|c| vec![*c])
        .collect();
    for sub in ["publish", "rollback"] {
        leaves.push(vec!["catalog", sub]);
    }
    for sub in ["add", "disable", "enable", "rotate-key"] {
        leaves.push(vec!["client", sub]);
    }
    for leaf in leaves {
        let mut args = leaf.clone();
        args.push("--help");
        let o = rulestream(&args);
        assert_eq!(o.status.code(), Some(0), "{leaf:?} --help");
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(help.contains("Usage: rulestream"), "{leaf:?}: {help}");
        assert!(help.contains("--json"), "{leaf:?} takes --json:\n{help}");
        let first = help.lines().next().unwrap_or_default();
        assert!(first.len() > 10, "{leaf:?} says what it does: {first}");
    }
}

#[test]
fn a_malformed_client_id_or_a_guard_that_is_not_an_object_is_bad_usage() {
    // Refused before any backend is asked: exit 2, one line naming the argument.
    for args in [
        vec!["promote", "BAD_ID", "f"],
        vec!["releases", "BAD_ID", "f"],
        vec!["logs", "--client", "BAD_ID"],
        vec!["run", "Bad", "f", "--input", "{}"],
    ] {
        let o = rulestream(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("client id"),
            "{args:?}"
        );
    }
    let o = rulestream(&[
        "upload",
        "client-configs/shopco/coupon.json",
        "--guard",
        "[0.1, 10]",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("a guard is a JSON object"));
}

/// `rulestream dry-run … --json | head -c 10`: the reader closes the pipe early. The command
/// ends quietly (exit 0, nothing on stderr), not with a panic and exit 101.
#[test]
fn a_reader_that_closes_the_pipe_early_ends_the_command_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    // An answer well over a pipe's buffer (64 KB), so the writer meets the closed pipe: 150
    // steps, each explain holding its 1,000-character expression.
    let when = format!("input.x == 1{}", " || input.x == 1".repeat(62));
    let rules: Vec<Value> = (0..150)
        .map(|i| json!({"id": format!("r{i}"), "when": when, "default": {"next": true}}))
        .collect();
    let flow = json!({"client_id": "c", "flow_id": "big", "version": 1,
                      "terminal_statuses": ["OK"], "max_steps": 200, "rules": rules});
    let flow = tmp_file("big-answer.json", &flow.to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rulestream"))
        .args([
            "dry-run",
            "--flow",
            flow.to_str().expect("utf8"),
            "--input",
            r#"{"x": 1}"#,
            "--json",
        ])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout);
    let o = child.wait_with_output().expect("it ends");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(o.status.code(), Some(0), "{stderr}");
}

/// `--rules ''` names no rule: bad usage, as a trigger row's empty `rules` ends its execution
/// FAILED. A mock for a rule that calls nothing out is never used, and a note says so.
#[test]
fn an_empty_rules_subset_is_refused_and_an_unused_mock_is_noted() {
    let flow = tmp_file(
        "subset.json",
        &json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
            "rules": [{"id": "a", "when": "true", "on": {"true": {"complete": "OK"}}}]})
        .to_string(),
    );
    let flow = flow.to_str().expect("utf-8 path");
    let o = dry_run_empty_input(flow, &["--rules", ""]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("names no rule"));
    let o = dry_run_empty_input(flow, &["--mock", r#"{"typo": {"outcome": "ok"}}"#]);
    assert_eq!(o.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("rule `typo`") && stderr.contains("not used"),
        "{stderr}"
    );
}
