//! Chaos on the real local stack (issue: exactly-once effects, nothing left RUNNING): many
//! concurrent executions while the fault proxy throttles DynamoDB and S3 calls at random and half
//! of the executions have every stream record delivered twice. Afterwards: none lost, none left
//! RUNNING, no step decided twice, every webhook delivered exactly once.
//!
//! `RULESTREAM_CHAOS_EXECUTIONS` sets the size (100 inside `make test`, 1,000 under `make chaos`);
//! the figures go to stdout as one JSON line for BENCHMARKS.md's reliability table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rulestream_e2e::receiver::receiver;
use rulestream_e2e::{Stack, faults, new_id};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_under_random_faults_are_never_lost_duplicated_or_stuck() {
    let n: usize = std::env::var("RULESTREAM_CHAOS_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let stack = Stack::from_env().await;
    let (base, seen) = receiver().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let flow_id = format!("chaos-{tag}");
    let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["EVEN", "ODD"],
        "rules": [
            {"id": "parity", "when": "input.n % 2 == 0 ? 'even' : 'odd'",
             "on": {"even": {"next": true, "set": {"half": "input.n / 2"}}, "odd": {"goto": "odd"}}},
            {"id": "even", "when": "true",
             "on": {"true": {"complete": "EVEN", "actions": [{"type": "call_webhook", "url": format!("{base}/chaos/{tag}")}]}}},
            {"id": "odd", "when": "true",
             "on": {"true": {"complete": "ODD", "actions": [{"type": "call_webhook", "url": format!("{base}/chaos/{tag}")}]}}}]});
    stack.register_flow(&flow).await;

    // Random faults on this run's calls only (its ids and its flow's objects carry the tag):
    // throttled writes, reads and queries of every table, throttled S3 reads.
    let rules: Vec<String> = [
        json!({"service": "dynamodb", "action": "PutItem", "body_contains": tag, "fault": "throttle", "times": -1, "probability": 0.08}),
        json!({"service": "dynamodb", "action": "UpdateItem", "body_contains": tag, "fault": "throttle", "times": -1, "probability": 0.08}),
        json!({"service": "dynamodb", "action": "GetItem", "body_contains": tag, "fault": "provisioned_throughput", "times": -1, "probability": 0.05}),
        json!({"service": "dynamodb", "action": "Query", "body_contains": tag, "fault": "throttle", "times": -1, "probability": 0.05}),
        json!({"service": "s3", "resource_contains": tag, "fault": "throttle", "times": -1, "probability": 0.3}),
    ]
    .iter()
    .map(faults::inject)
    .collect();

    let started = Instant::now();
    let mut rows: HashMap<&str, Vec<Value>> = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = new_id("e2e", &format!("chaos-{tag}-{i}"));
        let table = if i % 2 == 0 { "trigger" } else { "trigger-dup" };
        rows.entry(table).or_default().push(
            json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": {"n": i}}),
        );
        ids.push(id);
    }
    for (table, rows) in &rows {
        stack.trigger_all(&stack.table(table), rows).await;
    }
    // Mid-run, the pollers of both trigger streams die (SIGKILL, mid-batch) and come back: each
    // re-reads its stream from the start and delivers every record again, while the invocations
    // the dead poller had in flight go on.
    let kills: usize = std::env::var("RULESTREAM_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((n / 200).max(2));
    let mut runner_kills = 0;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(1500 + 700 * k as u64)).await;
        let (name, table, extra): (&str, &str, &[&str]) = if k % 2 == 0 {
            ("runner-e2e", "trigger", &[])
        } else {
            ("runner-e2e-dup", "trigger-dup", &["--duplicate"])
        };
        let restarted = std::process::Command::new("bash")
            .arg(rulestream_e2e::repo().join("localstack/runners.sh"))
            .args(["restart", name, &stack.table(table)])
            .args(extra)
            .output()
            .expect("runners.sh runs");
        assert!(restarted.status.success(), "the runner restarts");
        // A kill counts only if there was a live poller to kill.
        assert!(
            String::from_utf8_lossy(&restarted.stdout).contains(&format!("runners: killed {name}")),
            "{name} was not running when it was to be killed: {}",
            String::from_utf8_lossy(&restarted.stderr)
        );
        runner_kills += 1;
    }
    let deadline = Duration::from_secs(300 + n as u64 / 2);
    let done = stack.wait_all(&ids, deadline).await;
    let finished_in = started.elapsed();
    // Deliveries may be retried by the sweeper after the summary ends: give them time.
    let expected_deliveries = n;
    let count = || {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == format!("/chaos/{tag}"))
            .count()
    };
    let wait_from = Instant::now();
    while count() < expected_deliveries && wait_from.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let injected: u64 = rules.iter().map(|r| faults::fired(r)).sum();
    for r in &rules {
        faults::remove(r);
    }

    let mut lost = 0;
    let mut stuck = 0;
    let mut wrong = Vec::new();
    let mut duplicated_steps = 0;
    for (i, id) in ids.iter().enumerate() {
        let Some(e) = done.get(id) else {
            lost += 1;
            continue;
        };
        if e["status"] == "RUNNING" {
            stuck += 1;
        }
        let want = if i % 2 == 0 { "EVEN" } else { "ODD" };
        if e["status"] != want {
            wrong.push(format!("{id}: {} ({})", e["status"], e["reason"]));
        }
        let seqs: Vec<u64> = e["trace"]
            .as_array()
            .map(|t| t.iter().filter_map(|s| s["seq"].as_u64()).collect())
            .unwrap_or_default();
        let mut unique = seqs.clone();
        unique.sort_unstable();
        unique.dedup();
        duplicated_steps += seqs.len() - unique.len();
        if unique != (0..unique.len() as u64).collect::<Vec<_>>() {
            wrong.push(format!("{id}: trace seqs {seqs:?}"));
        }
    }
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for r in seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.path == format!("/chaos/{tag}"))
    {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        *by_key
            .entry(body["idempotency_key"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let delivered_twice = by_key.values().filter(|c| **c > 1).count();
    // What the steps table recorded for a delivery that arrived twice, to tell a resend after a
    // timeout from two senders.
    for (key, count) in by_key.iter().filter(|(_, c)| **c > 1) {
        let Some(id) = ids.iter().find(|id| key.contains(id.as_str())) else {
            eprintln!("delivered {count} times: {key} (no execution matches)");
            continue;
        };
        let steps = stack.items_of(&stack.table("steps"), id).await;
        let deliveries: Vec<&Value> = steps
            .iter()
            .flat_map(|s| s["actions"].as_array().into_iter().flatten())
            .filter_map(|a| a.get("delivery"))
            .collect();
        eprintln!("delivered {count} times: {key}: {}", json!(deliveries));
    }
    let undelivered = n.saturating_sub(by_key.len());
    println!(
        "{}",
        json!({"chaos": {"executions": n, "faults_injected": injected, "runner_kills": runner_kills, "lost": lost,
            "stuck_running": stuck, "duplicated_steps": duplicated_steps,
            "deliveries_duplicated": delivered_twice, "deliveries_missing": undelivered,
            "wrong": wrong.len(), "seconds": finished_in.as_secs_f64()}})
    );
    assert!(injected > 0, "faults were injected");
    assert_eq!(lost, 0);
    assert_eq!(stuck, 0);
    assert_eq!(duplicated_steps, 0);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(delivered_twice, 0, "a webhook delivered twice");
    assert_eq!(undelivered, 0, "a webhook never delivered");
}
