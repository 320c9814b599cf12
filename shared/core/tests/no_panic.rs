//! Bad input never panics: thousands of mutated flow documents and CEL strings go through
//! validation and, when they still validate, a dry-run; each must give an error or a result.
//!
//! These are fuzz targets as well as tests: the seeds are the samples plus the corpus kept in
//! `tests/corpus/<target>/`, the run length is `RULESTREAM_FUZZ_CASES` (short inside `make test`,
//! long under `make fuzz`) and the seed `RULESTREAM_FUZZ_SEED`. A panic saves its input and
//! names the seed that reproduces it (see `common::fuzz_case`).

mod common;
mod fuzzing;

use fuzzing::{Rng, mutate_text, mutate_value};

use rulestream_core::expr::Expr;
use rulestream_core::validate_str;
use serde_json::{Value, json};

fn seeds() -> Vec<String> {
    let root = common::repo().join("client-configs");
    let mut out: Vec<String> = common::json_files(&root)
        .into_iter()
        .filter(|p| {
            !p.components().any(|c| {
                matches!(
                    c.as_os_str().to_str(),
                    Some("schema" | "catalog" | "examples")
                )
            })
        })
        .map(|p| std::fs::read_to_string(p).expect("readable"))
        .collect();
    assert!(!out.is_empty(), "sample flows exist");
    out.extend(common::corpus("flows"));
    out.push(
        json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["A", "B"],
               "rules": [{"id": "a", "when": "input.x > 1 ? 'hi' : 'lo'",
                          "on": {"hi": {"complete": "A", "set": {"n": "input.x * 2"}}, "lo": {"goto": "b"}}},
                         {"id": "b", "conditions": [[{"field": "input.s", "op": "matches", "value": "^a+$"}]],
                          "on": {"true": {"complete": "B", "actions": [{"type": "add_tag", "tag": "t"}]}}}]})
        .to_string(),
    );
    out
}

#[test]
fn mutated_flows_never_panic() {
    let catalog = common::sample_catalog();
    let seeds = seeds();
    let fuzz_seed = common::fuzz_seed(0xDEAD_BEEF_CAFE_F00D);
    let mut rng = Rng(fuzz_seed);
    let cases = common::fuzz_cases(4000);
    let inputs = [
        json!({}),
        json!({"x": 5, "s": "aaa", "trade": {"symbol": "X", "amount": 1e12}, "employee": {"id": 7}}),
        json!({"x": "str", "user": null}),
    ];
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..cases {
        let seed = rng.pick(&seeds).clone();
        let doc = if i % 2 == 0 {
            mutate_text(&mut rng, &seed)
        } else {
            let mut v: Value = serde_json::from_str(&seed).expect("seed is JSON");
            for _ in 0..=rng.below(3) {
                mutate_value(&mut rng, &mut v);
            }
            v.to_string()
        };
        let input = rng.pick(&inputs).clone();
        let mut was_valid = false;
        common::fuzz_case("flows", fuzz_seed, i, &doc, || {
            was_valid = check_flow(&doc, &catalog, &input, i);
        });
        if was_valid {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(
        valid > cases / 80 && invalid > cases / 4,
        "mutations exercised both paths: {valid} valid, {invalid} invalid"
    );
}

/// Validates `doc` and, when valid, dry-runs it; true when it was valid.
fn check_flow(doc: &str, catalog: &rulestream_core::Catalog, input: &Value, i: usize) -> bool {
    {
        let v = validate_str(doc, catalog);
        if let Some(flow) = v.flow.as_ref().filter(|_| v.is_valid()) {
            let meta = rulestream_core::ExecutionMeta {
                execution_id: format!("e{i}"),
                client_id: flow.flow().client_id.clone(),
                flow_id: flow.flow().flow_id.clone(),
                flow_version: flow.flow().version,
            };
            let r = pollster::block_on(rulestream_core::run(
                flow,
                meta,
                input,
                None,
                chrono::Utc::now(),
                None,
                &rulestream_core::DryRun,
            ));
            assert!(!r.status.is_empty());
            true
        } else {
            assert!(
                v.errors().next().is_some(),
                "an invalid flow names its errors"
            );
            false
        }
    }
}

#[test]
fn random_cel_never_panics() {
    let atoms = [
        "input",
        "input.x",
        "ctx",
        "steps.a",
        "now",
        "execution.seq",
        "1",
        "1.5",
        "-0",
        "'s'",
        "\"",
        "true",
        "null",
        "[1, 'a']",
        "{'k': 1}",
        "size(",
        "has(input.x)",
        "timestamp('bad')",
        "duration('1h')",
        "int(",
        "double(",
        ".startsWith(",
        ".matches('[')",
        "exists(x,",
        "x",
        "+",
        "-",
        "*",
        "/",
        "%",
        "==",
        "!=",
        "<",
        ">=",
        "&&",
        "||",
        "!",
        "?",
        ":",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ".",
        "in",
        "'\\u00'",
        "9223372036854775807",
        "18446744073709551615u",
        "b'\\xff'",
        "1 / 0",
        "9223372036854775807 + 1",
    ];
    let ctx_input =
        json!({"x": 3, "list": [1, 2], "s": "abc", "xs": (0..400).collect::<Vec<i64>>()});
    let fuzz_seed = common::fuzz_seed(0x1234_5678_9ABC_DEF1);
    let mut rng = Rng(fuzz_seed);
    let corpus = common::corpus("cel");
    assert!(!corpus.is_empty(), "the CEL corpus is kept in the repo");
    let mut compiled = 0;
    let cases = common::fuzz_cases(5000);
    for i in 0..cases {
        let src = if i % 3 == 2 {
            {
                let base = rng.pick(&corpus).trim_end().to_string();
                mutate_text(&mut rng, &base)
            }
        } else {
            let n = 1 + rng.below(7);
            let src: Vec<&str> = (0..n).map(|_| *rng.pick(&atoms)).collect();
            src.join(if rng.below(2) == 0 { " " } else { "" })
        };
        let mut ok = false;
        common::fuzz_case("cel", fuzz_seed, i, &src, || {
            if let Ok(e) = Expr::compile(&src) {
                ok = true;
                let mut ctx =
                    cel::Context::with_env(std::sync::Arc::clone(rulestream_core::expr::env()));
                ctx.add_variable_from_value(
                    "input",
                    rulestream_core::expr::json_to_cel(&ctx_input),
                );
                let _ = e.eval(&ctx);
            }
        });
        compiled += usize::from(ok);
    }
    assert!(
        compiled > cases / 50,
        "some random expressions compile: {compiled}"
    );
}
