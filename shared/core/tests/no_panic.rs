//! Bad input never panics: thousands of mutated flow documents and CEL strings go through
//! validation and, when they still validate, a dry-run; each must give an error or a result.

mod common;

use rulestream_core::expr::Expr;
use rulestream_core::validate_str;
use serde_json::{Value, json};

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "\"id\"",
    "\"when\"",
    "\"on\"",
    "\"goto\"",
    "\"complete\"",
    "\"rules\"",
    "&&",
    "||",
    "(",
    ")",
    "?",
    "'",
    "input.",
    "ctx.",
    "steps.",
    "💥",
    "\u{0}",
    " ",
];

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

fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1).min(chars.len());
        match rng.below(4) {
            0 if !chars.is_empty() => {
                let end = (at + rng.below(8)).min(chars.len());
                chars.drain(at..end);
            }
            1 => {
                let tok: Vec<char> = rng.pick(TOKENS).chars().collect();
                chars.splice(at..at, tok);
            }
            2 if at < chars.len() => {
                chars[at] = *rng.pick(&['"', '{', '}', ',', 'x', '1', '.', ']']);
            }
            _ => {
                let end = (at + rng.below(16)).min(chars.len());
                let dup: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, dup);
            }
        }
    }
    chars.into_iter().collect()
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.below(1000) as i64 - 500),
        3 => json!(-1.5e300),
        4 => json!(*rng.pick(&["", "a", "next", "input.x", "'", "a &&", "DENIED", "é"])),
        5 => json!([]),
        6 => json!({}),
        _ => json!({"next": true}),
    }
}

fn mutate_value(rng: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            match rng.below(5) {
                0 => {
                    map.remove(&k);
                }
                1 => {
                    map.insert(k, random_value(rng));
                }
                2 => {
                    let val = map.remove(&k).unwrap_or(Value::Null);
                    map.insert(format!("{k}x"), val);
                }
                _ => {
                    if let Some(child) = map.get_mut(&k) {
                        mutate_value(rng, child);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            match rng.below(4) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let dup = items[i].clone();
                    items.push(dup);
                }
                _ => mutate_value(rng, &mut items[i]),
            }
        }
        other => *other = random_value(rng),
    }
}

#[test]
fn mutated_flows_never_panic() {
    let catalog = common::sample_catalog();
    let seeds = seeds();
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let inputs = [
        json!({}),
        json!({"x": 5, "s": "aaa", "trade": {"symbol": "X", "amount": 1e12}, "employee": {"id": 7}}),
        json!({"x": "str", "user": null}),
    ];
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..4000 {
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
        let v = validate_str(&doc, &catalog);
        if let Some(flow) = v.flow.as_ref().filter(|_| v.is_valid()) {
            valid += 1;
            let meta = rulestream_core::ExecutionMeta {
                execution_id: format!("e{i}"),
                client_id: flow.flow().client_id.clone(),
                flow_id: flow.flow().flow_id.clone(),
                flow_version: flow.flow().version,
            };
            let input = rng.pick(&inputs);
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
        } else {
            assert!(
                v.errors().next().is_some(),
                "an invalid flow names its errors"
            );
            invalid += 1;
        }
    }
    assert!(
        valid > 50 && invalid > 1000,
        "mutations exercised both paths: {valid} valid, {invalid} invalid"
    );
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
    let ctx_input = json!({"x": 3, "list": [1, 2], "s": "abc"});
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut compiled = 0;
    for _ in 0..5000 {
        let n = 1 + rng.below(7);
        let src: Vec<&str> = (0..n).map(|_| *rng.pick(&atoms)).collect();
        let src = src.join(if rng.below(2) == 0 { " " } else { "" });
        if let Ok(e) = Expr::compile(&src) {
            compiled += 1;
            let mut ctx =
                cel::Context::with_env(std::sync::Arc::clone(rulestream_core::expr::env()));
            ctx.add_variable_from_value("input", rulestream_core::expr::json_to_cel(&ctx_input));
            let _ = e.eval(&ctx);
        }
    }
    assert!(
        compiled > 100,
        "some random expressions compile: {compiled}"
    );
}
