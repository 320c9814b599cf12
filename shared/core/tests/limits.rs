//! SPEC section 1, Limits: any expression within the size limits, of any shape, compiles and
//! evaluates without exhausting the stack; beyond them it is a validation error.

use rulestream_core::expr::{Expr, MAX_EXPR_CHARS, MAX_NESTING};
use rulestream_core::{Catalog, DryRun, ExecutionMeta, run, validate_value};
use serde_json::{Value, json};

/// Shapes at the limits: long operator chains, unary chains, member chains, deep nesting.
fn shapes() -> Vec<(&'static str, String)> {
    let terms = (MAX_EXPR_CHARS - 1) / 2;
    vec![
        ("sum chain", format!("1{}", "+1".repeat(terms))),
        (
            "and chain",
            format!("true{}", " && true".repeat((MAX_EXPR_CHARS - 4) / 8)),
        ),
        (
            "not chain",
            format!("{}true", "!".repeat(MAX_EXPR_CHARS - 4)),
        ),
        (
            "neg chain",
            format!("{}1 > 0", "-".repeat(MAX_EXPR_CHARS - 6)),
        ),
        (
            "member chain",
            format!("input{} == null", ".a".repeat((MAX_EXPR_CHARS - 14) / 2)),
        ),
        (
            "nesting",
            format!(
                "{}1{} > 0",
                "(".repeat(MAX_NESTING),
                ")".repeat(MAX_NESTING)
            ),
        ),
        (
            "list nesting",
            format!(
                "size({}1{}) > 0",
                "[".repeat(MAX_NESTING - 1),
                "]".repeat(MAX_NESTING - 1)
            ),
        ),
        // Conditionals are not brackets: a chain of them as long as the length limit allows
        // (each nests its `else` branch one level deeper, for the parser and the evaluator).
        (
            "ternary chain",
            format!("{}0 == 0", "1?1:".repeat((MAX_EXPR_CHARS - 6) / 4)),
        ),
        (
            "ternaries in brackets",
            format!(
                "{}{}true{}",
                "(".repeat(MAX_NESTING),
                "false ? false : ".repeat((MAX_EXPR_CHARS - 2 * MAX_NESTING - 4) / 16),
                ")".repeat(MAX_NESTING)
            ),
        ),
        (
            "ternaries side by side",
            format!("{} == 0", vec!["(true ? 0 : 1)"; 100].join(" + ")),
        ),
    ]
}

fn flow(when: &str) -> Value {
    json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["A"],
           "rules": [{"id": "r", "when": when, "on_error": {"complete": "A"}, "default": {"complete": "A"}}]})
}

/// On a thread with the stack a tokio worker gets (2 MiB), in this (debug) build.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("thread")
        .join()
        .expect("no stack overflow")
}

#[test]
fn every_shape_within_the_limits_compiles_and_evaluates_on_a_small_stack() {
    for (name, src) in shapes() {
        assert!(
            src.chars().count() <= MAX_EXPR_CHARS,
            "{name}: {} chars",
            src.len()
        );
        let name2 = name;
        let status = on_small_stack(move || {
            let v = validate_value(&flow(&src), &Catalog::new());
            let Some(f) = v.flow else {
                return format!(
                    "invalid: {:?}",
                    v.findings.first().map(|f| f.message.clone())
                );
            };
            let meta = ExecutionMeta {
                execution_id: "c:1".into(),
                client_id: "c".into(),
                flow_id: "f".into(),
                flow_version: 1,
            };
            let input = json!({});
            let r = pollster::block_on(run(
                &f,
                meta,
                &input,
                None,
                chrono::Utc::now(),
                None,
                &DryRun,
            ));
            r.status
        });
        assert_eq!(status, "A", "{name2}");
    }
}

#[test]
fn beyond_the_limits_is_a_validation_error_never_a_crash() {
    let long = format!("1{}", "+1".repeat(25_000));
    let deep = format!(
        "{}1{} > 0",
        "(".repeat(MAX_NESTING + 1),
        ")".repeat(MAX_NESTING + 1)
    );
    for (src, why) in [(long, "characters long"), (deep, "nests")] {
        let err = on_small_stack(move || match Expr::compile(&src) {
            Ok(_) => String::new(),
            Err(e) => e
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        });
        assert!(err.contains(why), "{err}");
    }
    // Conditionals do not count as nesting: 200 chained are no error, and a 65th bracket
    // around them still is.
    let ternaries = format!("{}true", "true ? false : ".repeat(200));
    assert!(on_small_stack(move || Expr::compile(&ternaries).is_ok()));
    let deep = format!(
        "{}{}true{}",
        "(".repeat(MAX_NESTING + 1),
        "true ? false : ".repeat(10),
        ")".repeat(MAX_NESTING + 1)
    );
    let err = on_small_stack(move || Expr::compile(&deep).err().map(|e| e[0].to_string()));
    assert!(
        err.as_deref().is_some_and(|e| e.contains("65 deep")),
        "{err:?}"
    );
    // Brackets inside strings do not count.
    assert!(Expr::compile(&format!("'{}' == ''", "(".repeat(200))).is_ok());
}

fn run_flow(flow_json: &Value, input: &Value) -> rulestream_core::RunReport<'static> {
    dry_run(flow_json, input, None, None)
}

/// A dry run of `flow_json` (valid) as execution `c:1`, with client data and a rules subset.
fn dry_run(
    flow_json: &Value,
    input: &Value,
    client: Option<&Value>,
    subset: Option<Vec<String>>,
) -> rulestream_core::RunReport<'static> {
    let v = validate_value(flow_json, &Catalog::new());
    let f = v.flow.expect("valid flow");
    let meta = ExecutionMeta {
        execution_id: "c:1".into(),
        client_id: "c".into(),
        flow_id: "f".into(),
        flow_version: 1,
    };
    pollster::block_on(run(
        &f,
        meta,
        input,
        client,
        chrono::Utc::now(),
        subset,
        &DryRun,
    ))
    .into_owned()
}

/// A quadratic comprehension over a large input list runs out of budget: an evaluation error
/// that `on_error` decides, not a function timeout.
#[test]
fn a_quadratic_comprehension_is_an_evaluation_error_that_on_error_decides() {
    let bomb = "input.xs.exists(x, input.xs.exists(y, x * y == -1))";
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK", "ERR", "NO"],
        "rules": [{"id": "bomb", "when": bomb, "on": {"true": {"complete": "OK"}, "false": {"complete": "NO"}},
                   "on_error": {"complete": "ERR", "reason": "budget"}}]});
    let xs: Vec<i64> = (1..=2_000).collect();
    let started = std::time::Instant::now();
    let r = on_small_stack(move || run_flow(&f, &json!({ "xs": xs })));
    assert_eq!(r.status, "ERR", "{:?}", r.reason);
    let explain = serde_json::to_string(&r.steps).expect("json");
    assert!(explain.contains("evaluation budget exceeded"), "{explain}");
    // 4 million iterations would take seconds in a debug build; the budget stops it early.
    // (Not a timing assertion on speed: a bound two orders of magnitude above the budget.)
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // Without on_error the execution fails and the reason names the rule and the budget.
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
        "rules": [{"id": "bomb", "when": bomb, "default": {"complete": "OK"}}]});
    let xs: Vec<i64> = (1..=2_000).collect();
    let r = on_small_stack(move || run_flow(&f, &json!({ "xs": xs })));
    assert_eq!(r.status, "FAILED");
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("bomb") && reason.contains("budget"),
        "{reason}"
    );
}

/// The 10 ms budget also bounds an evaluation with no comprehension: a chain of concatenations
/// of a large input string (quadratic in copies) is an evaluation error, not seconds of work.
#[test]
fn a_long_chain_of_concatenations_runs_out_of_time() {
    let chain = vec!["input.s"; 400].join(" + ");
    assert!(chain.len() <= 4_096);
    let when = format!("size({chain}) > 0");
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK", "ERR"],
        "rules": [{"id": "concat", "when": when, "on": {"true": {"complete": "OK"}},
                   "on_error": {"complete": "ERR"}}]});
    let s = "x".repeat(200_000);
    let r = on_small_stack(move || run_flow(&f, &json!({ "s": s })));
    assert_eq!(r.status, "ERR", "{:?}", r.reason);
    let explain = serde_json::to_string(&r.steps).expect("json");
    assert!(explain.contains("ms of evaluation time"), "{explain}");
}

/// A chain of conditionals as long as the length limit allows is evaluated to its last branch
/// (every condition false), on the stack a tokio worker has.
#[test]
fn the_longest_chain_of_conditionals_is_evaluated_to_its_end() {
    let n = (MAX_EXPR_CHARS - 6) / "false?'x':".len();
    let when = format!("{}'deep'", "false?'x':".repeat(n));
    assert!(when.len() <= MAX_EXPR_CHARS);
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["DEEP", "ERR", "NO"],
        "rules": [{"id": "chain", "when": when, "on": {"deep": {"complete": "DEEP"}},
                   "default": {"complete": "NO"}, "on_error": {"complete": "ERR"}}]});
    let r = on_small_stack(move || run_flow(&f, &json!({})));
    assert_eq!(r.status, "DEEP", "{:?}", r.reason);
}

/// The same expression over a small list stays well inside the budget.
#[test]
fn a_comprehension_within_the_budget_evaluates() {
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK", "NO"],
        "rules": [{"id": "r", "when": "input.xs.exists(x, input.xs.exists(y, x * y == 12))",
                   "on": {"true": {"complete": "OK"}, "false": {"complete": "NO"}}}]});
    let xs: Vec<i64> = (1..=300).collect();
    let r = on_small_stack(move || run_flow(&f, &json!({ "xs": xs })));
    assert_eq!(r.status, "OK", "{:?}", r.reason);
}

/// `matches` patterns: checked and compiled with the flow, kept compiled for every call.
#[test]
fn matches_patterns_are_checked_with_the_flow_and_compiled_once() {
    let long = format!("'{}'", "a".repeat(1001));
    for (src, why) in [
        (
            "input.s.matches('([a-z')".to_string(),
            "invalid `matches` pattern",
        ),
        (
            format!("input.s.matches({long})"),
            "at most 1000 characters",
        ),
        (
            format!("matches(input.s, {long})"),
            "at most 1000 characters",
        ),
    ] {
        let err = Expr::compile(&src)
            .err()
            .map(|e| {
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        assert!(err.contains(why), "{src}: {err}");
        let v = validate_value(&flow(&src), &Catalog::new());
        assert!(v.flow.is_none(), "{src}");
    }
    let p = "^[a-z]+-[0-9]{3}$";
    assert!(Expr::compile(&format!("input.s.matches('{p}')")).is_ok());
    let a = cel::budget::regex(p).expect("compiled");
    let b = cel::budget::regex(p).expect("compiled");
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "one compiled regex per pattern"
    );
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK", "NO"],
        "rules": [{"id": "r", "when": format!("input.s.matches('{p}')"),
                   "on": {"true": {"complete": "OK"}, "false": {"complete": "NO"}}}]});
    assert_eq!(run_flow(&f, &json!({"s": "abc-123"})).status, "OK");
    assert_eq!(run_flow(&f, &json!({"s": "abc-12"})).status, "NO");
}

#[test]
fn evaluation_errors_never_show_client_data() {
    let flow = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["A"],
        "rules": [{"id": "r", "when": "client.tier + 1 > 1", "on": {"true": {"complete": "A"}}},
                  {"id": "s", "when": "input.tier + 1 > 1", "on": {"true": {"complete": "A"}}}]});
    let client = json!({"tier": "SEKRIT-gold"});
    let input = json!({"tier": "plain-input"});
    let r = dry_run(&flow, &input, Some(&client), None);
    let shown = serde_json::to_string(&r.spec_json()).expect("json");
    assert_eq!(r.status, "FAILED");
    assert!(!shown.contains("SEKRIT"), "{shown}");
    assert!(
        shown.contains("Unsupported binary operator") && shown.contains("client data"),
        "the kind of error stays: {shown}"
    );
    // An expression that does not read client data keeps the values it failed on.
    let r = dry_run(&flow, &input, Some(&client), Some(vec!["s".to_string()]));
    assert!(r.error.unwrap_or_default().contains("plain-input"));
}

#[test]
fn a_call_of_an_undeclared_function_is_a_validation_error() {
    let v = validate_value(&flow("sizee(input.l) > 0"), &Catalog::new());
    assert!(
        v.findings
            .iter()
            .any(|f| f.path == "$.rules[0].when" && f.message.contains("unknown function `sizee`")),
        "{:?}",
        v.findings
    );
    // Standard, member, namespaced and macro calls are declared.
    for ok in [
        "size(input.l) > 0 && input.l.size() > 0",
        "input.s.startsWith('a') || input.s.lowerAscii() == 'a' || strings.quote(input.s) == ''",
        "has(input.x) && input.l.all(v, v > 0) && input.l.exists_one(v, v > 0)",
        "int(input.x) == 1 && timestamp('2026-01-01T00:00:00Z') < now && duration('1s') > duration('0s')",
    ] {
        let v = validate_value(&flow(ok), &Catalog::new());
        assert!(v.is_valid(), "{ok}: {:?}", v.findings);
    }
}

/// SPEC section 3: an output over the bound ends the execution FAILED. A dry run says what
/// would happen, so it ends the same way rather than answering the whole output.
#[test]
fn an_output_over_the_bound_ends_failed_in_a_dry_run_too() {
    let f = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["OK"],
        "rules": [{"id": "r", "when": "true", "on": {"true": {"complete": "OK", "set": {"big": "input.s"},
            "actions": [{"type": "call_webhook", "url": "https://hooks.example.com/x"}]}}}]});
    let big = "x".repeat(rulestream_core::chain::OUTPUT_LIMIT_BYTES);
    let r = run_flow(&f, &json!({ "s": big }));
    assert_eq!(r.status, "FAILED");
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("over the") && reason.contains("rule `r`"),
        "{reason}"
    );
    assert!(r.ctx.is_empty());
    // The step keeps its value cut, so no item outgrows DynamoDB's 400 KB.
    let kept = r.steps[0].set["big"].as_str().expect("a string");
    assert!(kept.chars().count() <= 256, "{}", kept.len());
    // Nothing is delivered: a webhook body would carry the whole output.
    assert!(r.actions.is_empty(), "{:?}", r.actions);
    // Just under the bound, the flow's own end.
    let r = run_flow(&f, &json!({ "s": "x".repeat(1000) }));
    assert_eq!(r.status, "OK");
    assert_eq!(r.actions.len(), 1);
}

/// A dry run shows no client data either: not a value a `set` copied from it, not a label a
/// `when` answered with it, not `ctx` at the end (SPEC section 1, Trace).
#[test]
fn a_dry_run_never_shows_client_data_copied_into_ctx() {
    let flow = json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["A", "B"],
        "rules": [{"id": "a", "when": "true", "on": {"true": {"next": true, "set": {"p": "client.p"}}}},
                  {"id": "e", "when": "ctx.p == 'zz' ? 'a' : ctx.p", "on": {"a": {"complete": "A"}}, "default": {"next": true}},
                  {"id": "d", "conditions": [[{"field": "ctx.p", "op": "starts_with", "value": "SECRET"}]],
                   "on": {"true": {"complete": "B"}}}]});
    let client = json!({"p": "SECRETPAT"});
    let r = dry_run(&flow, &json!({}), Some(&client), None);
    assert_eq!(r.status, "B", "the real value decided");
    let shown = serde_json::to_string(&r.spec_json()).expect("json");
    let full = serde_json::to_string(&r.steps).expect("json");
    for text in [&shown, &full] {
        assert!(!text.contains("SECRETPAT"), "{text}");
    }
    assert_eq!(r.ctx["p"], "<client data>");
}
