//! The peers benchmark: one 4-rule first-match decision, 1,000 inputs per pool, in every engine.
//!
//! rule1 `user.register_days < 30 && user.order_count == 0 && ml.score < 0.3 &&
//! user.country in ["CN","HK"]` → coupon; rule2 `order.amount > 1000` → vip; rule3
//! `"blocked" in user.tags` → deny; rule4 `ml.score > 0.9` → review; else none.
//!
//! ```text
//! rulestream-peers check               every engine against the oracle, on every input of both pools
//! rulestream-peers time [ROUNDS]       interleaved timing (json-rules-engine through node, in the same rounds)
//! rulestream-peers count ENGINE POOL N a warm-up pass, then N passes: what callgrind counts
//! rulestream-peers pools               both pools and the oracle's answers, as JSON (for the JS side)
//! ```
//!
//! `scripts/bench-peers.sh` runs all of it and prints the table of BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use rulestream_core::{Catalog, CompiledFlow, DryRun, ExecutionMeta, validate_value};
use serde_json::{Value, json};
use zen_expression::variable::Variable;

const POOL: usize = 1_000;
const LABELS: [&str; 4] = ["coupon", "vip", "deny", "review"];
const NONE: &str = "none";
const WHEN: [&str; 4] = [
    r#"input.user.register_days < 30 && input.user.order_count == 0 && input.ml.score < 0.3 && input.user.country in ["CN", "HK"]"#,
    "input.order.amount > 1000",
    r#""blocked" in input.user.tags"#,
    "input.ml.score > 0.9",
];

/// The two pools of the issue: `mix` (about two thirds coupon, a quarter none) and `miss` (every
/// rule misses, rule1 on its last term).
fn pools() -> Vec<(&'static str, Vec<Value>)> {
    let mix = (0..POOL)
        .map(|i| {
            let score = if i % 50 == 11 {
                0.95
            } else {
                ((i * 37) % 100) as f64 / 100.0 * 0.32
            };
            let country = if i % 25 == 3 {
                "US"
            } else {
                ["CN", "HK"][i % 2]
            };
            let tags = if i % 13 == 0 {
                json!(["new", "blocked"])
            } else {
                json!(["new"])
            };
            json!({"user": {"register_days": i % 40, "order_count": u64::from(i % 20 == 7),
                            "country": country, "tags": tags},
                   "ml": {"score": score}, "order": {"amount": ((i * 53) % 1200) as f64 + 0.5}})
        })
        .collect();
    let miss = (0..POOL)
        .map(|i| {
            let country = ["US", "DE", "FR"][i % 3];
            json!({"user": {"register_days": 5 + i % 20, "order_count": 0,
                            "country": country, "tags": ["new", "vip"]},
                   "ml": {"score": 0.1 + (i % 10) as f64 / 100.0}, "order": {"amount": ((i * 7) % 1000) as f64}})
        })
        .collect();
    vec![("mix", mix), ("miss", miss)]
}

/// Hand-written Rust over `serde_json::Value`: the oracle, and the floor.
fn oracle(v: &Value) -> &'static str {
    let user = &v["user"];
    let score = v["ml"]["score"].as_f64().unwrap_or(0.0);
    let country = user["country"].as_str().unwrap_or("");
    if user["register_days"].as_f64().unwrap_or(f64::MAX) < 30.0
        && user["order_count"].as_f64() == Some(0.0)
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
        NONE
    }
}

fn compile(flow: &Value) -> CompiledFlow {
    let v = validate_value(flow, &Catalog::new());
    assert!(v.is_valid(), "{:?}", v.findings);
    v.flow.expect("a valid flow compiles")
}

fn flow_of(rules: Vec<Value>) -> CompiledFlow {
    let statuses: Vec<String> = LABELS.iter().map(|l| l.to_uppercase()).collect();
    compile(
        &json!({"client_id": "shop", "flow_id": "coupon", "version": 1,
        "terminal_statuses": statuses, "default_status": "NONE", "rules": rules}),
    )
}

fn when_flow() -> CompiledFlow {
    flow_of(
        WHEN.iter()
            .zip(LABELS)
            .enumerate()
            .map(|(i, (w, l))| {
                json!({"id": format!("r{i}"), "when": w, "on": {"true": {"complete": l.to_uppercase()}}})
            })
            .collect(),
    )
}

fn conditions_flow() -> CompiledFlow {
    let c = |field: &str, op: &str, value: Value| json!({"field": field, "op": op, "value": value});
    let groups = [
        vec![
            c("input.user.register_days", "lt", json!(30)),
            c("input.user.order_count", "eq", json!(0)),
            c("input.ml.score", "lt", json!(0.3)),
            c("input.user.country", "in", json!(["CN", "HK"])),
        ],
        vec![c("input.order.amount", "gt", json!(1000))],
        vec![c("input.user.tags", "contains", json!("blocked"))],
        vec![c("input.ml.score", "gt", json!(0.9))],
    ];
    flow_of(
        groups
            .into_iter()
            .zip(LABELS)
            .enumerate()
            .map(|(i, (g, l))| {
                json!({"id": format!("r{i}"), "conditions": [g], "on": {"true": {"complete": l.to_uppercase()}}})
            })
            .collect(),
    )
}

/// A rulestream decision: a whole run (trace and report included), as `dry-run` does it.
struct Rulestream {
    flow: CompiledFlow,
    meta: ExecutionMeta,
    now: chrono::DateTime<chrono::Utc>,
}

impl Rulestream {
    fn new(flow: CompiledFlow) -> Rulestream {
        let meta = ExecutionMeta {
            execution_id: "shop:bench".into(),
            client_id: "shop".into(),
            flow_id: "coupon".into(),
            flow_version: 1,
        };
        Rulestream {
            flow,
            meta,
            now: chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time"),
        }
    }

    fn decide(&self, input: &Value) -> &'static str {
        let r = pollster::block_on(rulestream_core::run(
            &self.flow,
            self.meta.clone(),
            input,
            None,
            self.now,
            None,
            &DryRun,
        ));
        label(&r.status)
    }
}

fn label(status: &str) -> &'static str {
    LABELS
        .iter()
        .find(|l| l.eq_ignore_ascii_case(status))
        .copied()
        .unwrap_or(NONE)
}

/// zen-expression: the input converted once (`Variable::from`), four compiled expressions.
struct ZenExpression {
    exprs: Vec<zen_expression::Expression<zen_expression::expression::Standard>>,
}

impl ZenExpression {
    fn new() -> ZenExpression {
        let src = [
            r#"user.register_days < 30 and user.order_count == 0 and ml.score < 0.3 and user.country in ["CN", "HK"]"#,
            "order.amount > 1000",
            r#"contains(user.tags, "blocked")"#,
            "ml.score > 0.9",
        ];
        ZenExpression {
            exprs: src
                .iter()
                .map(|s| zen_expression::compile_expression(s).expect("zen compiles"))
                .collect(),
        }
    }

    fn decide(&self, input: &Value) -> &'static str {
        let ctx = Variable::from(input);
        for (e, l) in self.exprs.iter().zip(LABELS) {
            if e.evaluate(ctx.clone()).ok() == Some(Variable::Bool(true)) {
                return l;
            }
        }
        NONE
    }
}

/// zen-engine: a first-hit decision table between an input and an output node.
struct ZenTable {
    decision: zen_engine::Decision,
}

impl ZenTable {
    fn new() -> ZenTable {
        let inputs = json!([
            {"id": "rd", "name": "register_days", "field": "user.register_days"},
            {"id": "oc", "name": "order_count", "field": "user.order_count"},
            {"id": "sc", "name": "score", "field": "ml.score"},
            {"id": "co", "name": "country", "field": "user.country"},
            {"id": "am", "name": "amount", "field": "order.amount"},
            {"id": "tg", "name": "tags", "field": "user.tags"}
        ]);
        let outputs = json!([{"id": "o", "name": "label", "field": "label"}]);
        let row = |id: &str, cells: &[(&str, &str)], out: &str| {
            let mut r = serde_json::Map::new();
            r.insert("_id".into(), json!(id));
            for k in ["rd", "oc", "sc", "co", "am", "tg"] {
                r.insert(k.into(), json!(""));
            }
            for (k, v) in cells {
                r.insert((*k).into(), json!(v));
            }
            r.insert("o".into(), json!(format!("\"{out}\"")));
            Value::Object(r)
        };
        let rules = vec![
            row(
                "r1",
                &[
                    ("rd", "< 30"),
                    ("oc", "0"),
                    ("sc", "< 0.3"),
                    ("co", r#""CN", "HK""#),
                ],
                "coupon",
            ),
            row("r2", &[("am", "> 1000")], "vip"),
            row("r3", &[("tg", r#"contains($, "blocked")"#)], "deny"),
            row("r4", &[("sc", "> 0.9")], "review"),
            row("r5", &[], NONE),
        ];
        let content: zen_engine::model::DecisionContent = serde_json::from_value(json!({
            "nodes": [
                {"id": "in", "name": "request", "type": "inputNode", "content": {}},
                {"id": "dt", "name": "decision", "type": "decisionTableNode", "content": {
                    "hitPolicy": "first", "inputs": inputs, "outputs": outputs, "rules": rules,
                    "passThrough": false}},
                {"id": "out", "name": "response", "type": "outputNode", "content": {}}
            ],
            "edges": [
                {"id": "e1", "sourceId": "in", "targetId": "dt"},
                {"id": "e2", "sourceId": "dt", "targetId": "out"}
            ]
        }))
        .expect("a decision graph");
        let engine = zen_engine::DecisionEngine::default();
        let mut decision = engine
            .create_decision(Arc::new(content))
            .expect("a graph decision");
        decision.compile();
        ZenTable { decision }
    }

    fn decide(&self, input: &Value) -> &'static str {
        let r = pollster::block_on(self.decision.evaluate(Variable::from(input)))
            .expect("zen evaluates");
        let out: Value = r.result.to_value();
        label(out["label"].as_str().unwrap_or(NONE))
    }
}

/// The `cel` crate done naively: a new context (over one shared standard library) from the whole
/// input for every decision.
struct CelNaive {
    env: Arc<cel::Env>,
    programs: Vec<cel::Program>,
}

impl CelNaive {
    fn new() -> CelNaive {
        let src = [
            r#"user.register_days < 30 && user.order_count == 0 && ml.score < 0.3 && user.country in ["CN", "HK"]"#,
            "order.amount > 1000",
            r#""blocked" in user.tags"#,
            "ml.score > 0.9",
        ];
        CelNaive {
            env: Arc::new(cel::Env::stdlib()),
            programs: src
                .iter()
                .map(|s| cel::Program::compile(s).expect("cel compiles"))
                .collect(),
        }
    }

    fn decide(&self, input: &Value) -> &'static str {
        let mut ctx = cel::Context::with_env(Arc::clone(&self.env));
        for (k, v) in input.as_object().into_iter().flatten() {
            ctx.add_variable_from_value(k.as_str(), rulestream_core::expr::json_to_cel(v));
        }
        for (p, l) in self.programs.iter().zip(LABELS) {
            if p.execute(&ctx) == Ok(cel::Value::Bool(true)) {
                return l;
            }
        }
        NONE
    }
}

struct Engines {
    when: Rulestream,
    conditions: Rulestream,
    zen_expression: ZenExpression,
    zen_table: ZenTable,
    cel_naive: CelNaive,
}

/// Engine names, in table order.
const ENGINES: [&str; 6] = [
    "zen-expression",
    "zen-table",
    "cel-naive",
    "rulestream-when",
    "rulestream-conditions",
    "hand-written",
];

impl Engines {
    fn new() -> Engines {
        Engines {
            when: Rulestream::new(when_flow()),
            conditions: Rulestream::new(conditions_flow()),
            zen_expression: ZenExpression::new(),
            zen_table: ZenTable::new(),
            cel_naive: CelNaive::new(),
        }
    }

    fn decide(&self, engine: &str, input: &Value) -> &'static str {
        match engine {
            "zen-expression" => self.zen_expression.decide(input),
            "zen-table" => self.zen_table.decide(input),
            "cel-naive" => self.cel_naive.decide(input),
            "rulestream-when" => self.when.decide(input),
            "rulestream-conditions" => self.conditions.decide(input),
            "hand-written" => oracle(input),
            other => panic!("unknown engine {other}; one of {ENGINES:?}"),
        }
    }

    /// One pass over a pool; the number of `coupon` answers (so nothing is optimised away).
    fn pass(&self, engine: &str, pool: &[Value]) -> usize {
        pool.iter()
            .filter(|i| black_box(self.decide(engine, black_box(i))) == "coupon")
            .count()
    }
}

fn check(engines: &Engines) -> Result<(), String> {
    let mut wrong = Vec::new();
    for (name, pool) in pools() {
        let mut shares: HashMap<&str, usize> = HashMap::new();
        for input in &pool {
            let want = oracle(input);
            *shares.entry(want).or_default() += 1;
            for e in ENGINES {
                let got = engines.decide(e, input);
                if got != want {
                    wrong.push(format!(
                        "{e} on {name} {input}: {got}, the oracle says {want}"
                    ));
                }
            }
        }
        let mut s: Vec<String> = shares
            .iter()
            .map(|(k, v)| format!("{k} {:.1} %", *v as f64 * 100.0 / pool.len() as f64))
            .collect();
        s.sort();
        println!("pool {name}: {}", s.join(", "));
    }
    if wrong.is_empty() {
        println!(
            "check: {} engines agree with the oracle on every input",
            ENGINES.len()
        );
        Ok(())
    } else {
        wrong.truncate(20);
        Err(wrong.join("\n"))
    }
}

/// json-rules-engine in a node child, asked for one pass at a time so its passes interleave with
/// the Rust ones.
struct Node {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Node {
    fn start(pools_file: &str) -> Option<Node> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
        let mut child = Command::new("node")
            .arg(format!("{dir}/bench.js"))
            .arg(pools_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let out = BufReader::new(child.stdout.take()?);
        let mut n = Node { child, out };
        let ready = n.ask("check")?;
        println!("json-rules-engine: {ready}");
        ready.starts_with("ok").then_some(n)
    }

    fn ask(&mut self, line: &str) -> Option<String> {
        let stdin = self.child.stdin.as_mut()?;
        writeln!(stdin, "{line}").ok()?;
        stdin.flush().ok()?;
        let mut answer = String::new();
        self.out.read_line(&mut answer).ok()?;
        Some(answer.trim().to_string())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(engines: &Engines, rounds: usize, pools_file: Option<&str>) {
    let pools = pools();
    let mut node = pools_file.and_then(Node::start);
    let mut samples: HashMap<(String, &str), Vec<f64>> = HashMap::new();
    for _ in 0..rounds {
        for (name, pool) in &pools {
            for e in ENGINES {
                let t = Instant::now();
                black_box(engines.pass(e, pool));
                let ns = t.elapsed().as_nanos() as f64 / pool.len() as f64;
                samples.entry((e.to_string(), name)).or_default().push(ns);
            }
            if let Some(n) = node.as_mut()
                && let Some(ns) = n.ask(name).and_then(|a| a.parse::<f64>().ok())
            {
                samples
                    .entry(("json-rules-engine".into(), name))
                    .or_default()
                    .push(ns);
            }
        }
    }
    println!("| engine | mix pool, ns/decision | miss pool, ns/decision |");
    println!("|---|---|---|");
    let mut names: Vec<String> = ENGINES.iter().map(|e| e.to_string()).collect();
    if node.is_some() {
        names.push("json-rules-engine".into());
    }
    for e in names {
        let mut cell = |pool: &'static str| {
            samples
                .get_mut(&(e.clone(), pool))
                .map(|v| format!("{:.0}", median(v)))
                .unwrap_or_else(|| "–".into())
        };
        let (mix, miss) = (cell("mix"), cell("miss"));
        println!("| {e} | {mix} | {miss} |");
    }
    if let Some(mut n) = node {
        // Closing its stdin ends the node side.
        drop(n.child.stdin.take());
        let _ = n.child.wait();
    }
}

/// The acme-bank trade pre-clearance sample (`client-configs/`): its flow, through the catalog,
/// and its examples, each checked against the status it expects.
struct Preclear {
    flow: CompiledFlow,
    meta: ExecutionMeta,
    cases: Vec<(Value, chrono::DateTime<chrono::Utc>, String)>,
}

impl Preclear {
    fn load() -> Preclear {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../client-configs");
        let read = |p: &str| -> Value {
            let text = std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
        };
        let catalog = Catalog::load_dir(&root.join("catalog")).expect("the sample catalog");
        let v = validate_value(&read("acme-bank/trade-preclear.json"), &catalog);
        let errors: Vec<String> = v.errors().map(ToString::to_string).collect();
        let flow = v
            .flow
            .unwrap_or_else(|| panic!("the sample flow is invalid: {errors:?}"));
        let cases = read("examples/acme-bank.trade-preclear.json")
            .as_array()
            .expect("a list of examples")
            .iter()
            .map(|c| {
                let now = chrono::DateTime::parse_from_rfc3339(c["now"].as_str().expect("now"))
                    .expect("now is RFC 3339")
                    .with_timezone(&chrono::Utc);
                let want = c["expect_status"]
                    .as_str()
                    .expect("expect_status")
                    .to_string();
                (c["input"].clone(), now, want)
            })
            .collect();
        let meta = ExecutionMeta {
            execution_id: "acme-bank:bench".into(),
            client_id: flow.flow().client_id.clone(),
            flow_id: flow.flow().flow_id.clone(),
            flow_version: flow.flow().version,
        };
        Preclear { flow, meta, cases }
    }

    /// One run of every example; panics when one ends with another status than it expects.
    fn pass(&self) -> usize {
        let mut steps = 0;
        for (input, now, want) in &self.cases {
            let r = pollster::block_on(rulestream_core::run(
                &self.flow,
                self.meta.clone(),
                black_box(input),
                None,
                *now,
                None,
                &DryRun,
            ));
            assert_eq!(&r.status, want, "acme-bank example on {input}");
            steps += black_box(r.steps.len());
        }
        steps
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("count-preclear") {
        // Instructions per run of the acme-bank sample: callgrind over a warm-up pass and then
        // PASSES passes of its examples, less the same run with none.
        let passes: usize = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(1);
        let p = Preclear::load();
        let mut steps = p.pass();
        for _ in 0..passes {
            steps += p.pass();
        }
        println!("{} examples, {steps} steps", p.cases.len());
        return;
    }
    let engines = Engines::new();
    match args.get(1).map(String::as_str) {
        Some("check") => {
            if let Err(e) = check(&engines) {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        Some("time") => {
            let rounds = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(15);
            time(&engines, rounds, args.get(3).map(String::as_str));
        }
        Some("count") => {
            let engine = args.get(2).map(String::as_str).unwrap_or("hand-written");
            let pool_name = args.get(3).map(String::as_str).unwrap_or("mix");
            let passes: usize = args.get(4).and_then(|p| p.parse().ok()).unwrap_or(1);
            let pools = pools();
            let pool = &pools
                .iter()
                .find(|(n, _)| *n == pool_name)
                .expect("pool mix or miss")
                .1;
            // A warm-up pass (lazy statics, caches), then the passes callgrind is asked about.
            let mut hits = engines.pass(engine, pool);
            for _ in 0..passes {
                hits += engines.pass(engine, pool);
            }
            println!("{hits}");
        }
        Some("pools") => {
            let doc: serde_json::Map<String, Value> = pools()
                .into_iter()
                .map(|(n, p)| {
                    let answers: Vec<&str> = p.iter().map(oracle).collect();
                    (n.to_string(), json!({"inputs": p, "answers": answers}))
                })
                .collect();
            println!("{}", Value::Object(doc));
        }
        _ => {
            eprintln!(
                "usage: rulestream-peers check | time [ROUNDS [POOLS.json]] | count ENGINE mix|miss PASSES | count-preclear PASSES | pools"
            );
            std::process::exit(2);
        }
    }
}
