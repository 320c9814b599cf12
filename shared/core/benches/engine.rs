//! Criterion benchmarks of the engine (figures in BENCHMARKS.md; run with `make bench`).
//!
//! - `decision/*`: the 4-rule first-match coupon decision of issue 2 on its JSON input, through
//!   the engine (pruned conversion + context reuse), against naive CEL and hand-written Rust;
//! - `step/one_rule`: one `when` rule step on a warm session;
//! - `preclear/five_rules`: a whole dry-run of the pre-clearance sample through five rules.

use std::hint::black_box;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group};
use rulestream_core::{
    Catalog, CompiledFlow, DryRun, ExecutionMeta, RunState, Session, validate_value,
};
use serde_json::{Value, json};

const RULES: [&str; 4] = [
    r#"user.register_days < 30 && user.order_count == 0 && ml.score < 0.3 && (user.country == "CN" || user.country == "HK")"#,
    "order.amount > 1000",
    r#""blocked" in user.tags"#,
    "ml.score > 0.9",
];

fn decision_input() -> Value {
    json!({"user": {"register_days": 3, "order_count": 0, "country": "HK", "tags": ["new"]},
           "ml": {"score": 0.1}, "order": {"amount": 250.0}})
}

fn decision_flow() -> CompiledFlow {
    let outcomes = ["COUPON", "VIP", "DENY", "REVIEW"];
    let rules: Vec<Value> = RULES
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (r, o))| {
            json!({"id": format!("r{i}"), "when": r.replace("user.", "input.user.").replace("ml.", "input.ml.").replace("order.", "input.order."),
                   "on": {"true": {"complete": o}}})
        })
        .collect();
    let flow = json!({"client_id": "shop", "flow_id": "coupon", "version": 1,
        "terminal_statuses": outcomes, "default_status": "NONE", "rules": rules});
    compile(&flow, &Catalog::new())
}

fn compile(flow: &Value, catalog: &Catalog) -> CompiledFlow {
    let v = validate_value(flow, catalog);
    assert!(v.is_valid(), "{:?}", v.findings);
    v.flow.expect("valid")
}

fn meta(f: &CompiledFlow) -> ExecutionMeta {
    ExecutionMeta {
        execution_id: "bench".into(),
        client_id: f.flow().client_id.clone(),
        flow_id: f.flow().flow_id.clone(),
        flow_version: f.flow().version,
    }
}

/// One whole run through the engine, as dry-run and inline mode do it.
fn run_once<'a>(
    flow: &'a CompiledFlow,
    m: &ExecutionMeta,
    input: &'a Value,
    now: chrono::DateTime<Utc>,
) -> rulestream_core::RunReport<'a> {
    pollster::block_on(rulestream_core::run(
        flow,
        m.clone(),
        black_box(input),
        None,
        now,
        None,
        &DryRun,
    ))
}

fn hand_written(v: &Value) -> &'static str {
    let user = &v["user"];
    let score = v["ml"]["score"].as_f64().unwrap_or(0.0);
    let country = user["country"].as_str().unwrap_or("");
    if user["register_days"].as_i64().unwrap_or(i64::MAX) < 30
        && user["order_count"].as_i64() == Some(0)
        && score < 0.3
        && (country == "CN" || country == "HK")
    {
        "coupon"
    } else if v["order"]["amount"].as_f64().unwrap_or(0.0) > 1000.0 {
        "vip"
    } else if user["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == "blocked"))
    {
        "deny"
    } else if score > 0.9 {
        "review"
    } else {
        "none"
    }
}

fn bench_decision(c: &mut Criterion) {
    let input = decision_input();
    let now = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let flow = decision_flow();
    let m = meta(&flow);
    let mut g = c.benchmark_group("decision");
    g.bench_function("engine_from_json", |b| {
        b.iter(|| {
            let r = run_once(&flow, &m, &input, now);
            assert_eq!(r.status, "COUPON");
        })
    });
    // Naive CEL: a context built from the whole JSON for every decision.
    let env = Arc::clone(rulestream_core::expr::env());
    let programs: Vec<_> = RULES
        .iter()
        .map(|r| env.compile(r).expect("compiles"))
        .collect::<Vec<_>>();
    g.bench_function("cel_naive_full_context", |b| {
        b.iter(|| {
            let mut ctx = cel::Context::with_env(Arc::clone(&env));
            for (k, v) in black_box(&input).as_object().expect("object") {
                ctx.add_variable_from_value(k.as_str(), rulestream_core::expr::json_to_cel(v));
            }
            let hit = programs
                .iter()
                .position(|p| p.execute(&ctx) == Ok(cel::Value::Bool(true)));
            assert_eq!(hit, Some(0));
        })
    });
    let mut ctx = cel::Context::with_env(Arc::clone(&env));
    for (k, v) in input.as_object().expect("object") {
        ctx.add_variable_from_value(k.as_str(), rulestream_core::expr::json_to_cel(v));
    }
    g.bench_function("cel_eval_only", |b| {
        b.iter(|| {
            let hit = programs
                .iter()
                .position(|p| p.execute(black_box(&ctx)) == Ok(cel::Value::Bool(true)));
            assert_eq!(hit, Some(0));
        })
    });
    g.bench_function("hand_written_rust", |b| {
        b.iter(|| assert_eq!(hand_written(black_box(&input)), "coupon"))
    });
    g.finish();
}

fn bench_step(c: &mut Criterion) {
    let flow = compile(
        &json!({"client_id": "c", "flow_id": "f", "version": 1, "terminal_statuses": ["DENIED"],
                "rules": [{"id": "restricted", "when": "input.trade.symbol in input.restricted_symbols",
                           "on": {"true": {"complete": "DENIED"}}}]}),
        &Catalog::new(),
    );
    let input = json!({"trade": {"symbol": "AAPL", "amount": 5000}, "restricted_symbols": ["TSLA", "GME", "AMC"]});
    let now = Utc::now();
    let m = meta(&flow);
    c.bench_function("step/one_rule", |b| {
        let mut s = Session::new(
            &flow,
            m.clone(),
            &input,
            None,
            now,
            None,
            RunState::default(),
        );
        b.iter(|| {
            let r = pollster::block_on(s.step(&DryRun, 0));
            black_box(r);
        })
    });
}

fn bench_preclear(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../client-configs");
    let catalog = Catalog::load_dir(&root.join("catalog")).expect("catalog");
    let flow_doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("acme-bank/trade-preclear.json")).expect("flow"),
    )
    .expect("json");
    let flow = compile(&flow_doc, &catalog);
    let examples: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/acme-bank.trade-preclear.json"))
            .expect("examples"),
    )
    .expect("json");
    let case = examples
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["expect_path"].as_array().is_some_and(|p| p.len() == 5))
        .expect("a five-rule example");
    let input = case["input"].clone();
    let want = case["expect_status"].as_str().expect("status").to_string();
    let now = chrono::DateTime::parse_from_rfc3339(
        case["now"].as_str().unwrap_or("2026-11-22T10:00:00Z"),
    )
    .expect("time")
    .with_timezone(&Utc);
    let m = meta(&flow);
    c.bench_function("preclear/five_rules", |b| {
        b.iter(|| {
            let r = run_once(&flow, &m, &input, now);
            assert_eq!(r.status, want);
            assert_eq!(r.path.len(), 5);
        })
    });
}

criterion_group!(benches, bench_decision, bench_step, bench_preclear);

/// The benches run on a thread with a stack as large as the functions' (their runtime threads
/// are bigger than `expr::STACK_RED_ZONE`), so a `cel` evaluation never grows a new stack segment
/// here either: on the main thread's 8 MiB every one would, and that is not what runs in Lambda.
fn main() {
    std::thread::Builder::new()
        .stack_size(2 * rulestream_core::expr::STACK_RED_ZONE)
        .spawn(|| {
            benches();
            Criterion::default().configure_from_args().final_summary();
        })
        .expect("a bench thread")
        .join()
        .expect("the benches ran");
}
