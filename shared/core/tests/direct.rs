//! The direct evaluator ([`rulestream_core::fast`]) against `cel`, differentially: generated
//! expressions over generated inputs, each run through the engine twice, once with direct
//! evaluation and once with `cel` alone. Every step record (outcome, explain, `set` values,
//! errors and their messages) and where the execution goes must be the same.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use rulestream_core::expr::Expr;
use rulestream_core::fast::Roots;
use rulestream_core::{
    Catalog, CompiledFlow, DryRun, ExecutionMeta, Next, RunState, Session, validate_value,
};
use serde_json::{Map, Value, json};

/// Paths of every kind the generated inputs hold, and some that are missing.
const PATHS: [&str; 13] = [
    "input.i",
    "input.j",
    "input.d",
    "input.s",
    "input.t",
    "input.n",
    "input.l",
    "input.m",
    "input.m.k",
    "input.u",
    "input.missing",
    "ctx.c",
    "input.ts",
];

/// Timestamps as a flow meets them: RFC 3339 with offsets and fractions, the edges of `cel`'s
/// range (years 1 to 9999, in UTC), leap seconds, and strings that are not timestamps.
const TIMES: [&str; 13] = [
    "2026-11-22T10:00:00Z",
    "2027-01-15T09:30:00+05:30",
    "2027-01-15T04:00:00.000000001Z",
    "2027-01-15T04:00:00Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:60Z",
    "2016-12-31T23:59:60Z",
    "2026-02-30T00:00:00Z",
    "2026-11-22 10:00:00",
    "",
];

/// Conversions and times: `now`, `timestamp(..)` of a field or a literal, `int(..)` and
/// `double(..)` of values of every kind.
const TIME_ATOMS: [&str; 13] = [
    "now",
    "timestamp(input.ts)",
    "timestamp('2027-01-15T04:00:00Z')",
    "timestamp(timestamp(input.ts))",
    "int(now)",
    "int(timestamp(input.ts))",
    "int(input.i)",
    "int(input.s)",
    "timestamp(input.i)",
    "double(input.i)",
    "double(input.u)",
    "double(input.d)",
    "double(input.s)",
];

fn time_text() -> impl Strategy<Value = Value> {
    proptest::sample::select(&TIMES[..]).prop_map(Value::from)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..5).prop_map(Value::from),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(-1i64)].prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-2.0), Just(3.0), Just(1e300)].prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(1u64 << 63)].prop_map(Value::from),
        prop_oneof![Just("a"), Just("b"), Just(""), Just("CN")].prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn input() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(scalar(), 9),
        proptest::collection::vec(scalar(), 0..4),
    )
        .prop_flat_map(|(v, l)| {
            prop_oneof![time_text(), scalar()].prop_map(move |ts| {
                json!({"i": v[0], "j": v[1], "d": v[2], "s": v[3], "t": v[4], "n": v[5],
                       "u": v[6], "l": l, "m": {"k": v[7], "other": v[8]}, "ts": ts})
            })
        })
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        (-3i64..4).prop_map(|i| i.to_string()),
        Just("9223372036854775807".to_string()),
        Just("2u".to_string()),
        Just("0.5".to_string()),
        Just("3.0".to_string()),
        Just("'a'".to_string()),
        Just("'CN'".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
        Just("[1, 'a', 2.0]".to_string()),
        Just("['CN', 'HK']".to_string()),
        Just("[]".to_string()),
    ]
}

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&PATHS[..]).prop_map(str::to_string),
        3 => literal(),
        1 => proptest::sample::select(&TIME_ATOMS[..]).prop_map(str::to_string),
    ]
}

/// A master rule's expressions: the atoms above, its `params`, and comparisons of times as the
/// catalog's rules write them (`timestamp(a) <= now`, `int(now) - int(timestamp(a)) >= n`).
fn master_atom() -> impl Strategy<Value = String> {
    let time = || {
        proptest::sample::select(
            &[
                "now",
                "timestamp(input.ts)",
                "timestamp(params.q)",
                "timestamp('2027-01-15T04:00:00Z')",
            ][..],
        )
    };
    let cmp = || proptest::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]);
    prop_oneof![
        2 => atom(),
        2 => proptest::sample::select(&["params.p", "params.q", "params.missing", "params"][..])
            .prop_map(str::to_string),
        2 => (time(), cmp(), time()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
        1 => (time(), cmp(), prop_oneof![Just("params.p"), Just("86400")])
            .prop_map(|(a, o, n)| format!("int(now) - int({a}) {o} {n} * 86400")),
    ]
}

/// Deep expressions, a function call among them (outside the subset).
fn expression() -> impl Strategy<Value = String> {
    tree(4, true)
}

/// Shallow expressions of the subset only: most of them are answered directly.
fn shallow() -> impl Strategy<Value = String> {
    tree(2, false)
}

fn tree(depth: u32, calls: bool) -> impl Strategy<Value = String> {
    tree_of(atom(), depth, calls)
}

fn tree_of(
    atom: impl Strategy<Value = String> + 'static,
    depth: u32,
    calls: bool,
) -> impl Strategy<Value = String> {
    atom.prop_recursive(depth, 24, 3, move |inner| {
        let ops = proptest::sample::select(
            &[
                "==", "!=", "<", "<=", ">", ">=", "in", "&&", "||", "+", "-", "*", "/", "%",
            ][..],
        );
        prop_oneof![
            (inner.clone(), ops, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            // Outside the subset: `cel` alone answers, and the engine must still agree.
            inner.prop_map(move |a| if calls { format!("size([{a}])") } else { a }),
        ]
    })
}

fn compile(flow: &Value) -> Option<CompiledFlow> {
    compile_with(flow, &Catalog::new())
}

fn compile_with(flow: &Value, catalog: &Catalog) -> Option<CompiledFlow> {
    validate_value(flow, catalog).flow
}

/// Every step of a run (records without their timing), and how it ended.
fn run(flow: &CompiledFlow, input: &Value, direct: bool) -> Vec<Value> {
    let meta = ExecutionMeta {
        execution_id: "t:1".into(),
        client_id: "t".into(),
        flow_id: "f".into(),
        flow_version: 1,
    };
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
    let state = RunState {
        ctx: Map::from_iter([("c".to_string(), json!(2))]),
        ..RunState::default()
    };
    let mut s =
        Session::new(flow, meta, input, None, now, None, state).with_direct_evaluation(direct);
    let mut out = Vec::new();
    for taken in 0..10 {
        let r = pollster::block_on(s.step(&DryRun, taken));
        let mut rec = serde_json::to_value(&r.record).expect("a record serializes");
        if let Some(o) = rec.as_object_mut() {
            o.remove("duration");
        }
        out.push(unordered(rec));
        out.push(unordered(
            serde_json::to_value(&r.next).expect("next serializes"),
        ));
        if matches!(r.next, Next::Done { .. }) {
            break;
        }
    }
    out
}

/// `cel` words some errors with a map's debug form, whose entries come in hash order: such a
/// message is compared up to the map.
fn unordered(v: Value) -> Value {
    match v {
        Value::String(s) => match s.find("Map(Map {") {
            Some(i) => Value::String(s[..i].to_string()),
            None => Value::String(s),
        },
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, unordered(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(unordered).collect()),
        other => other,
    }
}

fn agree(src: &str, input: &Value) -> Result<(), TestCaseError> {
    let when = json!({"client_id": "t", "flow_id": "f", "version": 1,
        "terminal_statuses": ["OK"], "rules": [
            {"id": "w", "when": src, "on_error": {"next": true}},
            {"id": "s", "when": "true", "on": {"true": {"complete": "OK", "set": {"v": src}}}}]});
    // Expressions that do not compile (or do not validate) are not this test's business.
    if let Some(flow) = compile(&when) {
        prop_assert_eq!(run(&flow, input, true), run(&flow, input, false), "{}", src);
    }
    Ok(())
}

/// A master rule of kind `cel` whose expression is `src`, used with `params`, then a rule
/// whose `set` reads the same parameters.
fn agree_master(src: &str, input: &Value, params: &Value) -> Result<(), TestCaseError> {
    let mut catalog = Catalog::new();
    let rule = json!({"rule_id": "m", "version": 1, "kind": "cel", "expression": src,
        "params": {"p": 1, "q": 1}});
    if catalog.add_source("m.json", &rule.to_string()).is_err() {
        return Ok(());
    }
    let flow = json!({"client_id": "t", "flow_id": "f", "version": 1,
        "terminal_statuses": ["OK"], "rules": [
            {"id": "w", "use": "m", "params": params, "on_error": {"next": true},
             "default": {"next": true}},
            {"id": "s", "use": "m", "params": params, "on_error": {"complete": "OK"},
             "default": {"complete": "OK", "set": {"v": "params.p"}}}]});
    let v = validate_value(&flow, &catalog);
    let errors: Vec<String> = v.errors().map(ToString::to_string).collect();
    prop_assert!(
        v.flow.is_some(),
        "the flow around `{}` is valid: {:?}",
        src,
        errors
    );
    if let Some(flow) = v.flow {
        prop_assert_eq!(run(&flow, input, true), run(&flow, input, false), "{}", src);
    }
    Ok(())
}

/// A master rule's parameters (a `null` one counts as missing, which validation refuses).
fn params() -> impl Strategy<Value = Value> {
    let given = || scalar().prop_filter("a parameter is given", |v| !v.is_null());
    (given(), prop_oneof![given(), time_text()]).prop_map(|(p, q)| json!({"p": p, "q": q}))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Master rules' expressions, over their `params` and time functions: the same steps with
    /// and without direct evaluation.
    #[test]
    fn direct_evaluation_agrees_with_cel_in_master_rules(
        src in tree_of(master_atom(), 2, false),
        input in input(),
        params in params(),
    ) {
        agree_master(&src, &input, &params)?;
    }

    /// Shallow expressions of the subset: the same steps with and without direct evaluation.
    #[test]
    fn direct_evaluation_agrees_with_cel_on_the_subset(src in shallow(), input in input()) {
        agree(&src, &input)?;
    }

    /// Deep expressions, calls among them: the same steps with and without direct evaluation.
    #[test]
    fn direct_evaluation_agrees_with_cel(src in expression(), input in input()) {
        agree(&src, &input)?;
    }
}

/// The generated cases are not all left to `cel`: the direct evaluator answers at least a fifth
/// of the shallow ones (about 500 of 2,000; the rest are errors of mixed types, which `cel`
/// words), so the tests above do not only compare `cel` with itself.
#[test]
fn the_direct_evaluator_answers_most_generated_cases() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut compiled, mut answered) = (0, 0);
    let expression = shallow;
    let ctx = Map::from_iter([("c".to_string(), json!(2))]);
    let steps = Map::new();
    for _ in 0..2000 {
        let src = expression()
            .new_tree(&mut runner)
            .expect("an expression")
            .current();
        let input = input().new_tree(&mut runner).expect("an input").current();
        let Ok(e) = Expr::compile(&src) else {
            continue;
        };
        compiled += 1;
        let roots = Roots {
            input: &input,
            ctx: &ctx,
            client: None,
            steps: &steps,
            params: None,
            now: None,
        };
        if e.eval_direct(&roots).is_some() {
            answered += 1;
        }
    }
    assert!(compiled > 1500, "{compiled} of 2000 compiled");
    assert!(
        answered * 5 >= compiled,
        "only {answered} of {compiled} answered directly"
    );
}

/// The decision of the peers benchmark is entirely inside the subset.
#[test]
fn the_benchmark_decision_is_direct() {
    for src in [
        r#"input.user.register_days < 30 && input.user.order_count == 0 && input.ml.score < 0.3 && input.user.country in ["CN", "HK"]"#,
        "input.order.amount > 1000",
        r#""blocked" in input.user.tags"#,
        "input.ml.score > 0.9",
        "input.n % 2 == 0 ? 'even' : 'odd'",
        // The acme-bank sample's master rules.
        "int(now) - int(timestamp(input.employee.last_trade_at)) >= params.min_days * 86400",
        "timestamp(input.blackout.start) <= now && now < timestamp(input.blackout.end)",
        "input.trade.currency == params.currency && input.trade.amount <= params.limit",
    ] {
        let e = Expr::compile(src).expect("compiles");
        assert!(e.is_direct(), "{src}");
    }
}
