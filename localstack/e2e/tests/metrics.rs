//! Metrics (SPEC section 7): the functions' CloudWatch Embedded Metric Format lines, read from
//! the real binaries' output on the local stack, are valid EMF documents, and they add up to the
//! executions and steps the tables hold.

use std::time::{Duration, Instant};

use rulestream_e2e::Stack;
use serde_json::{Value, json};

const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Checks one document against the EMF specification; answers what is wrong.
fn emf_errors(doc: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let aws = &doc["_aws"];
    if !aws["Timestamp"].is_u64() {
        errs.push("_aws.Timestamp is not a whole number of milliseconds".into());
    }
    let Some(directives) = aws["CloudWatchMetrics"]
        .as_array()
        .filter(|d| !d.is_empty())
    else {
        errs.push("_aws.CloudWatchMetrics is not a non-empty array".into());
        return errs;
    };
    for d in directives {
        if !d["Namespace"]
            .as_str()
            .is_some_and(|n| !n.is_empty() && n.len() <= 1024)
        {
            errs.push(format!("Namespace {}", d["Namespace"]));
        }
        match d["Dimensions"].as_array() {
            None => errs.push("Dimensions is not an array".into()),
            Some(sets) => {
                for set in sets {
                    let Some(names) = set.as_array().filter(|s| s.len() <= 30) else {
                        errs.push(format!(
                            "a DimensionSet is not an array of at most 30: {set}"
                        ));
                        continue;
                    };
                    for n in names {
                        match n.as_str() {
                            Some(name) if doc[name].is_string() => {}
                            _ => errs.push(format!(
                                "dimension {n} has no string value at the top level"
                            )),
                        }
                    }
                }
            }
        }
        match d["Metrics"]
            .as_array()
            .filter(|m| !m.is_empty() && m.len() <= 100)
        {
            None => errs.push("Metrics is not an array of 1 to 100".into()),
            Some(ms) => {
                for m in ms {
                    let Some(name) = m["Name"].as_str().filter(|n| !n.is_empty()) else {
                        errs.push(format!("a metric has no Name: {m}"));
                        continue;
                    };
                    if let Some(u) = m.get("Unit")
                        && !u.as_str().is_some_and(|u| UNITS.contains(&u))
                    {
                        errs.push(format!("{name}: Unit {u} is not a CloudWatch unit"));
                    }
                    let v = &doc[name];
                    let ok = v.is_number()
                        || v.as_array().is_some_and(|a| {
                            !a.is_empty() && a.len() <= 100 && a.iter().all(Value::is_number)
                        });
                    if !ok {
                        errs.push(format!(
                            "{name}: value {v} is not a number or an array of numbers"
                        ));
                    }
                }
            }
        }
    }
    errs
}

fn emf_lines() -> Vec<Value> {
    let state = std::env::var("RULESTREAM_STATE").expect("RULESTREAM_STATE is set by env.sh");
    let text = std::fs::read_to_string(format!("{state}/lambda.log")).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("\"_aws\""))
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .collect()
}

/// Sum of a metric over the documents of one flow (counters are numbers; histograms count
/// their values).
fn total(docs: &[Value], flow: &str, metric: &str, status: Option<&str>) -> (f64, usize) {
    let mut sum = 0.0;
    let mut n = 0;
    for d in docs.iter().filter(|d| d["flow_id"] == flow) {
        if let Some(s) = status
            && d["status"] != s
        {
            continue;
        }
        match &d[metric] {
            Value::Number(x) => {
                sum += x.as_f64().unwrap_or(0.0);
                n += 1;
            }
            Value::Array(a) => {
                sum += a.iter().filter_map(Value::as_f64).sum::<f64>();
                n += a.len();
            }
            _ => {}
        }
    }
    (sum, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emf_lines_are_valid_and_add_up_to_the_tables() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let flow_id = format!("emf-{}", &tag[..12]);
    stack
        .register_flow(&json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
            "terminal_statuses": ["BIG", "SMALL"],
            "rules": [{"id": "size", "when": "input.n >= 5", "on": {"true": {"complete": "BIG"}, "false": {"next": true}}},
                      {"id": "small", "when": "true", "on": {"true": {"complete": "SMALL"}}}]}))
        .await;
    let rows: Vec<Value> = (0..10)
        .map(|i| {
            json!({"execution_id": format!("e2e:{flow_id}-{i}"), "seq": 0, "client_id": "e2e",
                        "flow_id": flow_id, "input": {"n": i}})
        })
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["execution_id"].as_str().expect("id").to_string())
        .collect();
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let done = stack.wait_all(&ids, Duration::from_secs(120)).await;
    let steps_in_table: u64 = done
        .values()
        .map(|e| e["steps_total"].as_u64().expect("steps_total"))
        .sum();
    let big = done.values().filter(|e| e["status"] == "BIG").count();
    assert_eq!((steps_in_table, big), (15, 5));

    // The metrics of a batch are flushed when its invocation ends.
    let start = Instant::now();
    loop {
        let docs = emf_lines();
        let (steps, _) = total(&docs, &flow_id, "Steps", None);
        let (execs_big, _) = total(&docs, &flow_id, "Executions", Some("BIG"));
        let (execs_small, _) = total(&docs, &flow_id, "Executions", Some("SMALL"));
        let (_, durations) = total(&docs, &flow_id, "StepDuration", None);
        let (_, exec_durations) = total(&docs, &flow_id, "ExecutionDuration", None);
        let (_, hops) = total(&docs, &flow_id, "HopLatency", None);
        if steps as u64 == steps_in_table
            && execs_big as usize == big
            && execs_small as usize == 10 - big
        {
            assert_eq!(durations, 15, "one StepDuration per step");
            assert_eq!(exec_durations, 10, "one ExecutionDuration per execution");
            assert_eq!(
                hops, 5,
                "a HopLatency for each step of a row the orchestrator wrote (seq 1)"
            );
            for d in &docs {
                let errs = emf_errors(d);
                assert!(errs.is_empty(), "invalid EMF document {d}: {errs:?}");
                assert_eq!(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], "rulestream");
            }
            let ours: Vec<&Value> = docs.iter().filter(|d| d["flow_id"] == flow_id).collect();
            assert!(ours.iter().all(|d| d["client_id"] == "e2e"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "EMF totals for {flow_id}: Steps {steps} (table {steps_in_table}), Executions BIG {execs_big} SMALL {execs_small} (table {big} BIG)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An EMF line holds at most 100 values of a histogram: an invocation that decides more steps
/// (a batch of fused hops here) writes more lines, and no `StepDuration` is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_steps_in_one_invocation_keep_every_step_duration() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let flow_id = format!("emf-many-{}", &tag[..12]);
    let mut rules: Vec<Value> = (0..24)
        .map(|i| json!({"id": format!("r{i}"), "when": "true", "on": {"true": {"next": true}}}))
        .collect();
    rules.push(json!({"id": "end", "when": "true", "on": {"true": {"complete": "DONE"}}}));
    stack
        .register_flow(
            &json!({"client_id": "e2e", "flow_id": flow_id, "version": 1, "fuse": true,
            "terminal_statuses": ["DONE"], "rules": rules}),
        )
        .await;
    let rows: Vec<Value> = (0..8)
        .map(|i| {
            json!({"execution_id": format!("e2e:{flow_id}-{i}"), "seq": 0, "client_id": "e2e",
                        "flow_id": flow_id, "input": {}})
        })
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["execution_id"].as_str().expect("id").to_string())
        .collect();
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let done = stack.wait_all(&ids, Duration::from_secs(120)).await;
    assert!(done.values().all(|e| e["status"] == "DONE"));
    let steps_in_table: u64 = done
        .values()
        .map(|e| e["steps_total"].as_u64().expect("steps_total"))
        .sum();
    assert_eq!(steps_in_table, 200);
    let start = Instant::now();
    loop {
        let docs = emf_lines();
        let (steps, _) = total(&docs, &flow_id, "Steps", None);
        let (_, durations) = total(&docs, &flow_id, "StepDuration", None);
        if steps as u64 == steps_in_table {
            assert_eq!(
                durations as u64, steps_in_table,
                "one StepDuration per step"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "EMF Steps for {flow_id}: {steps} (table {steps_in_table})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
