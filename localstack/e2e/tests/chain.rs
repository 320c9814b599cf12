//! The chain on the real local stack: trigger rows in, executions out, through DynamoDB
//! Streams, the event-source runner and the orchestrator binary.

use std::collections::HashSet;
use std::time::Duration;

use rulestream_e2e::{Stack, examples, new_id, path};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_flow_reaches_its_expected_status() {
    let stack = Stack::from_env().await;
    let cases = examples();
    assert!(cases.len() >= 16, "examples found: {}", cases.len());
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for (client, flow, c) in &cases {
        let id = new_id(client, "sample");
        rows.push(json!({"execution_id": id, "seq": 0, "client_id": client, "flow_id": flow, "input": c["input"]}));
        expected.push((id, c.clone()));
    }
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let ids: Vec<String> = expected.iter().map(|(id, _)| id.clone()).collect();
    let done = stack.wait_all(&ids, DEADLINE).await;
    let mut failures = Vec::new();
    for (id, c) in &expected {
        let e = &done[id];
        if e["status"] != c["expect_status"] {
            failures.push(format!(
                "{}: status {} (reason {}), want {}",
                c["name"], e["status"], e["reason"], c["expect_status"]
            ));
        }
        if json!(path(e)) != c["expect_path"] {
            failures.push(format!(
                "{}: path {:?}, want {}",
                c["name"],
                path(e),
                c["expect_path"]
            ));
        }
        assert_eq!(
            e["steps_total"].as_u64(),
            Some(path(e).len() as u64),
            "{id}: step count"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Times (`now` read by a rule) legitimately differ between two runs: mask them.
fn mask_times(v: &mut Value) {
    match v {
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => *s = "<time>".into(),
        Value::Array(a) => a.iter_mut().for_each(mask_times),
        Value::Object(o) => o.values_mut().for_each(mask_times),
        _ => {}
    }
}

/// What must be equal between two runs of the same input.
fn normalized(e: &Value) -> Value {
    let mut v = normalized_raw(e);
    mask_times(&mut v);
    v
}

fn normalized_raw(e: &Value) -> Value {
    let trace: Vec<Value> = e["trace"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|s| {
                    json!({"seq": s["seq"], "rule": s["rule"], "outcome": s["outcome"],
                                "transition": s["transition"], "set": s["set"],
                                "actions": s["actions"].as_array().map(|a| a.len()).unwrap_or(0)})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"status": e["status"], "reason": e["reason"], "error": e["error"], "output": e["output"],
           "tags": e["tags"], "route": e["route"], "steps_total": e["steps_total"], "trace": trace})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_delivered_twice_changes_nothing() {
    let stack = Stack::from_env().await;
    let cases = examples();
    // Each sample runs on a copy of its flow that only this test uses, so that redelivery is
    // the only difference between the two runs of a pair:
    // - a rule's token bucket is keyed by client, flow and rule, and other runs of the samples
    //   would take from the same bucket;
    // - a rate limit fails open in the copy: a limiter call that times out (80 ms to connect,
    //   50 ms to answer, easily missed on two busy cores) would make one run of the pair
    //   `limited` and not the other. Its own bucket holds more tokens than the test takes.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut copies = HashSet::new();
    let fail_open = |doc: &mut Value| {
        for rule in doc["rules"].as_array_mut().into_iter().flatten() {
            if let Some(rl) = rule.get_mut("rate_limit").and_then(Value::as_object_mut) {
                rl.insert("fail_open".into(), json!(true));
            }
        }
    };
    for (client, flow, _) in &cases {
        if copies.insert((client.clone(), flow.clone())) {
            stack
                .register_copy(client, flow, &format!("{flow}-redeliver-{run}"), fail_open)
                .await;
        }
    }
    let (mut once, mut twice, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for (client, flow, c) in &cases {
        let flow = format!("{flow}-redeliver-{run}");
        let a = new_id(client, "once");
        let b = new_id(client, "twice");
        once.push(json!({"execution_id": a, "seq": 0, "client_id": client, "flow_id": flow, "input": c["input"]}));
        twice.push(json!({"execution_id": b, "seq": 0, "client_id": client, "flow_id": flow, "input": c["input"]}));
        pairs.push((a, b));
    }
    // `<prefix>-trigger-dup` is consumed by a runner that delivers every batch twice.
    stack.trigger_all(&stack.table("trigger"), &once).await;
    stack.trigger_all(&stack.table("trigger-dup"), &twice).await;
    let ids: Vec<String> = pairs
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let done = stack.wait_all(&ids, DEADLINE).await;
    for (a, b) in &pairs {
        let (ea, eb) = (&done[a], &done[b]);
        // Gray rules bucket by gray key; the examples' keys are the same in both runs.
        assert_eq!(normalized(ea), normalized(eb), "{a} vs {b}");
        let trace = eb["trace"].as_array().expect("trace");
        let seqs: Vec<u64> = trace.iter().filter_map(|s| s["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            (0..trace.len() as u64).collect::<Vec<_>>(),
            "{b}: one trace line per seq"
        );
        let keys: Vec<String> = trace
            .iter()
            .flat_map(|s| s["actions"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["idempotency_key"].as_str().map(str::to_string))
            .collect();
        let unique: HashSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{b}: duplicated action");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_fail_clearly_and_good_rows_in_the_same_batch_complete() {
    let stack = Stack::from_env().await;
    let (client, flow, good) = examples().into_iter().next().expect("an example");
    let good_id = new_id(&client, "good");
    let poison = [
        (
            "missing",
            json!({"seq": 0, "client_id": client}),
            "missing field `flow_id`",
        ),
        (
            "wrongtype",
            json!({"seq": 0, "client_id": client, "flow_id": 42, "input": {}}),
            "invalid type",
        ),
        (
            "unknown",
            json!({"seq": 0, "client_id": "no-such-client", "flow_id": flow, "input": {}}),
            "no client `no-such-client`",
        ),
        (
            "noversion",
            json!({"seq": 0, "client_id": client, "flow_id": flow, "flow_version": 999, "input": {}}),
            "version 999",
        ),
    ];
    let mut rows = vec![
        json!({"execution_id": good_id, "seq": 0, "client_id": client, "flow_id": flow, "input": good["input"]}),
    ];
    let mut ids = vec![good_id.clone()];
    for (tag, mut row, _) in poison.clone() {
        let owner = row["client_id"].as_str().unwrap_or("e2e").to_string();
        let id = new_id(&owner, tag);
        row["execution_id"] = json!(id);
        rows.push(row);
        ids.push(id);
    }
    // A seq 0 row for another client's id prefix.
    let foreign = new_id("shopco", "foreign");
    rows.push(json!({"execution_id": foreign, "seq": 0, "client_id": client, "flow_id": flow, "input": good["input"]}));
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let mut all = ids.clone();
    all.push(foreign.clone());
    let done = stack.wait_all(&all, DEADLINE).await;
    assert_eq!(done[&good_id]["status"], good["expect_status"]);
    assert_eq!(done[&foreign]["status"], "FAILED");
    let why = done[&foreign]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("does not start with `{client}:`")),
        "{why}"
    );
    for ((tag, _, why), id) in poison.iter().zip(&ids[1..]) {
        let e = &done[id];
        assert_eq!(e["status"], "FAILED", "{tag}");
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(why),
            "{tag}: reason {reason:?} should say {why:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goto_cycle_stops_at_max_steps() {
    let stack = Stack::from_env().await;
    let flow = json!({"client_id": "e2e", "flow_id": "cycle", "version": 1, "terminal_statuses": ["DONE"],
        "max_steps": 7,
        "rules": [{"id": "ping", "when": "has(input.stop)", "on": {"true": {"complete": "DONE"}, "false": {"goto": "pong"}}},
                  {"id": "pong", "when": "true", "on": {"true": {"goto": "ping"}}}]});
    stack.register_flow(&flow).await;
    let id = new_id("e2e", "cycle");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": "cycle", "input": {}}))
        .await;
    let done = stack.wait_all(std::slice::from_ref(&id), DEADLINE).await;
    let e = &done[&id];
    assert_eq!(e["status"], "FAILED");
    assert!(
        e["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("max_steps (7)"),
        "{}",
        e["reason"]
    );
    assert_eq!(path(e).len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_executions_all_finish() {
    let stack = Stack::from_env().await;
    let flow = json!({"client_id": "e2e", "flow_id": "load", "version": 1, "terminal_statuses": ["BIG", "SMALL"],
        "rules": [{"id": "size", "when": "input.n >= 100", "on": {"true": {"complete": "BIG"}}},
                  {"id": "tag", "when": "true", "on": {"true": {"next": true, "set": {"double": "input.n * 2"}}}},
                  {"id": "end", "when": "true", "on": {"true": {"complete": "SMALL"}}}]});
    stack.register_flow(&flow).await;
    let rows: Vec<Value> = (0..200)
        .map(|n| json!({"execution_id": new_id("e2e", "load"), "seq": 0, "client_id": "e2e", "flow_id": "load", "input": {"n": n}}))
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["execution_id"].as_str().expect("id").to_string())
        .collect();
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let done = stack.wait_all(&ids, Duration::from_secs(300)).await;
    for (row, id) in rows.iter().zip(&ids) {
        let n = row["input"]["n"].as_i64().expect("n");
        let e = &done[id];
        let want = if n >= 100 { "BIG" } else { "SMALL" };
        assert_eq!(e["status"], want, "{id}");
        if n < 100 {
            assert_eq!(e["output"]["double"], json!(n * 2), "{id}");
        }
    }
}
