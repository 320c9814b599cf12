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
        // The CEL parser refuses more than 96 nested ternaries with a clean syntax error (see
        // the test below); up to there they evaluate.
        (
            "ternary chain",
            format!("{}true", "true ? false : ".repeat(90)),
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
            let r = pollster::block_on(run(
                &f,
                meta,
                &json!({}),
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
    // The parser's own recursion limit is an error, not a crash.
    let ternaries = format!("{}true", "true ? false : ".repeat(200));
    let err = on_small_stack(move || Expr::compile(&ternaries).err().map(|e| e[0].to_string()));
    assert!(err.is_some_and(|e| e.contains("Recursion limit")));
    // Brackets inside strings do not count.
    assert!(Expr::compile(&format!("'{}' == ''", "(".repeat(200))).is_ok());
}
