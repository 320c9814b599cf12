//! Releases over Kafka on the local stack (SPEC sections 3 and 4): the CLI uploads and changes
//! releases through the `<prefix>.releases` topic (tansu), `localstack/kafka_runner.py` feeds it
//! to the real release-bridge as MSK would, and executions through the real chain show which
//! version served them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rulestream_aws::kafka::Producer;
use rulestream_e2e::{Stack, ok_json, rs};
use serde_json::{Value, json};

fn write_flow(flow: &Value) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "{}-v{}-{}.json",
        flow["flow_id"].as_str().expect("flow_id"),
        flow["version"],
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&p, serde_json::to_vec_pretty(flow).expect("json")).expect("write flow file");
    p
}

/// A flow whose terminal status names its version; `input.slow` sends an execution through a
/// rule function that takes 4 s, so it is still running when the release changes.
fn versioned_flow(flow_id: &str, version: u64, slow_rule: &str) -> Value {
    json!({"client_id": "e2e", "flow_id": flow_id, "version": version,
        "terminal_statuses": ["DONE_V1", "DONE_V2", "DONE_V3"], "gray_key": "input.key",
        "rules": [
            {"id": "route", "when": "has(input.slow) && input.slow == true",
             "on": {"true": {"next": true}, "false": {"complete": format!("DONE_V{version}")}}},
            {"id": "slow", "use": slow_rule,
             "on": {"high": {"complete": format!("DONE_V{version}")}, "low": {"complete": format!("DONE_V{version}")}},
             "on_error": {"complete": format!("DONE_V{version}")}}]})
}

/// Starts one execution per key and waits for all: key -> (version, status).
async fn run_keys(
    stack: &Stack,
    flow_id: &str,
    round: &str,
    keys: &[String],
) -> HashMap<String, (u64, String)> {
    let rows: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({"execution_id": format!("e2e:{flow_id}-{round}-{k}"), "seq": 0, "client_id": "e2e",
                   "flow_id": flow_id, "input": {"key": k}})
        })
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["execution_id"].as_str().expect("id").to_string())
        .collect();
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let done = stack.wait_all(&ids, Duration::from_secs(600)).await;
    keys.iter()
        .zip(&ids)
        .map(|(k, id)| {
            let e = &done[id];
            (
                k.clone(),
                (
                    e["flow_version"].as_u64().expect("flow_version"),
                    e["status"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

async fn release_of(stack: &Stack, flow_id: &str) -> Value {
    let out = stack
        .ddb
        .get_item()
        .table_name(stack.table("clients"))
        .key(
            "client_id",
            aws_sdk_dynamodb::types::AttributeValue::S("e2e".into()),
        )
        .key(
            "flow_id",
            aws_sdk_dynamodb::types::AttributeValue::S(flow_id.into()),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("clients row");
    let row: Value = serde_dynamo::from_item(out.item.expect("registered")).expect("decodes");
    row["release"].clone()
}

async fn send_raw(stack: &Stack, msg: &Value) {
    let brokers = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS is set by env.sh");
    let p = Producer::connect(&brokers).await.expect("brokers");
    let key = format!(
        "{}/{}",
        msg["client_id"].as_str().expect("client"),
        msg["flow_id"].as_str().expect("flow")
    );
    p.send(
        &format!("{}.releases", stack.prefix),
        &key,
        msg.to_string().into_bytes(),
    )
    .await
    .expect("sent");
}

/// Waits until `releases --json` shows an entry for `message_id`; answers it.
fn wait_audit(flow_id: &str, message_id: &str) -> Value {
    let start = Instant::now();
    loop {
        let h = ok_json(&rs(&["releases", "e2e", flow_id, "--json"]));
        if let Some(e) = h["history"]
            .as_array()
            .expect("history")
            .iter()
            .find(|e| e["message_id"] == message_id)
        {
            return e.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no audit entry for {message_id}: {h}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn share(of: &HashMap<String, (u64, String)>, version: u64) -> f64 {
    of.values().filter(|(v, _)| *v == version).count() as f64 * 100.0 / of.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_publish_raise_promote_rollback_and_bad_messages() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let flow_id = format!("rel-{}", &tag[..12]);
    let slow_rule = format!("rel_slow_{tag}");
    stack
        .publish_catalog(
            &[json!({"rule_id": slow_rule, "version": 1, "kind": "lambda",
            "function": "rulestream-rule-score", "timeout_ms": 10000, "description": "takes 4 s",
            "params": {"threshold": 100, "behave": "sleep", "sleep_ms": 4000}})],
        )
        .await;
    stack
        .register_flow(&versioned_flow(&flow_id, 1, &slow_rule))
        .await;

    // Upload v2 to 10%.
    let v2 = write_flow(&versioned_flow(&flow_id, 2, &slow_rule));
    let up = ok_json(&rs(&[
        "upload",
        v2.to_str().expect("path"),
        "--percent",
        "10",
        "--json",
    ]));
    assert_eq!(up["outcome"], "applied", "{up}");
    assert_eq!(up["release"]["candidate"], json!(2));
    // The same file again is refused, and so is a version that does not exceed the stored ones.
    let again = rs(&["upload", v2.to_str().expect("path")]);
    assert_eq!(again.status.code(), Some(1));

    let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    let at10 = run_keys(&stack, &flow_id, "p10", &keys).await;
    let s10 = share(&at10, 2);
    eprintln!("at 10%: {s10:.2}% of 2000 keys ran v2");
    assert!((8.0..=12.0).contains(&s10), "10% ± 2 points, got {s10}");
    for (k, (v, status)) in &at10 {
        assert_eq!(
            status,
            &format!("DONE_V{v}"),
            "{k} ran the rules of its version"
        );
    }
    // The same key always gets the same version.
    let sample: Vec<String> = keys.iter().take(300).cloned().collect();
    let again10 = run_keys(&stack, &flow_id, "p10b", &sample).await;
    for k in &sample {
        assert_eq!(
            again10[k].0, at10[k].0,
            "{k} changed version at the same percent"
        );
    }

    // Raise to 50%: no key that had v2 goes back to v1.
    ok_json(&rs(&["set-percent", "e2e", &flow_id, "50", "--json"]));
    let at50 = run_keys(&stack, &flow_id, "p50", &keys).await;
    let s50 = share(&at50, 2);
    eprintln!("at 50%: {s50:.2}% of 2000 keys ran v2");
    assert!((46.0..=54.0).contains(&s50), "50% ± 4 points, got {s50}");
    for (k, (v, _)) in &at10 {
        if *v == 2 {
            assert_eq!(at50[k].0, 2, "{k} went back to v1 when the percent rose");
        }
    }

    // Promote while executions are running: those finish on the version they started with.
    let v1_key = keys
        .iter()
        .find(|k| at50[*k].0 == 1)
        .expect("a v1 key")
        .clone();
    let running_id = format!("e2e:{flow_id}-running-{v1_key}");
    stack
        .trigger(
            &stack.table("trigger"),
            &json!({"execution_id": running_id, "seq": 0, "client_id": "e2e",
            "flow_id": flow_id, "input": {"key": v1_key, "slow": true}}),
        )
        .await;
    let start = Instant::now();
    while stack.execution(&running_id).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the slow execution never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = ok_json(&rs(&["promote", "e2e", &flow_id, "--json"]));
    assert_eq!(promoted["release"]["stable"], json!(2), "{promoted}");
    assert_eq!(
        stack.execution(&running_id).await.expect("summary")["status"],
        "RUNNING",
        "the slow execution was still running when the release changed"
    );
    let after_promote = run_keys(&stack, &flow_id, "promoted", &sample).await;
    assert!(
        after_promote.values().all(|(v, _)| *v == 2),
        "every new execution runs v2 after promote"
    );
    let slow = stack
        .wait_all(std::slice::from_ref(&running_id), Duration::from_secs(60))
        .await;
    assert_eq!(slow[&running_id]["flow_version"], json!(1));
    assert_eq!(
        slow[&running_id]["status"], "DONE_V1",
        "it finished on v1's rules"
    );

    // Roll back: new executions run v1 again.
    let rolled = ok_json(&rs(&["rollback", "e2e", &flow_id, "--json"]));
    assert_eq!(rolled["release"]["stable"], json!(1), "{rolled}");
    let after_rollback = run_keys(&stack, &flow_id, "rolledback", &sample).await;
    assert!(
        after_rollback.values().all(|(v, _)| *v == 1),
        "every new execution runs v1 after rollback"
    );

    // A duplicated and an out-of-order message change nothing.
    let before = release_of(&stack, &flow_id).await;
    let history = ok_json(&rs(&["releases", "e2e", &flow_id, "--json"]));
    let applied = |op: &str| -> Value {
        history["history"]
            .as_array()
            .expect("history")
            .iter()
            .find(|e| e["op"] == op && e["outcome"] == "applied")
            .unwrap_or_else(|| panic!("the {op} is in the audit"))
            .clone()
    };
    let applied_promote = applied("promote");
    let generation = before["generation"].as_u64().expect("generation");
    let dup = json!({"op": "promote", "client_id": "e2e", "flow_id": flow_id,
        "message_id": applied_promote["message_id"], "actor": "replayed", "at": applied_promote["at"],
        "generation": applied_promote["generation"]});
    send_raw(&stack, &dup).await;
    // A copy of the last applied message (the rollback) that claims another time and actor is
    // the same message: recorded as a duplicate, never as a second `applied`.
    let applied_rollback = applied("rollback");
    let copy = json!({"op": "rollback", "client_id": "e2e", "flow_id": flow_id,
        "message_id": applied_rollback["message_id"], "actor": "replayed later",
        "at": "2026-12-01T00:00:00.000Z", "generation": applied_rollback["generation"]});
    send_raw(&stack, &copy).await;
    let stale_id = format!("stale-{tag}");
    let stale = json!({"op": "publish", "client_id": "e2e", "flow_id": flow_id, "message_id": stale_id,
        "actor": "someone late", "at": "2026-11-30T00:00:00.000Z", "generation": generation - 2, "version": 2, "percent": 90});
    send_raw(&stack, &stale).await;
    let e = wait_audit(&flow_id, &stale_id);
    assert_eq!(e["outcome"], "ignored", "{e}");
    assert!(e["reason"].as_str().unwrap_or("").contains("stale"), "{e}");
    // The duplicate (same partition, so handled before the stale one) is a recorded no-op too.
    let h = ok_json(&rs(&["releases", "e2e", &flow_id, "--json"]));
    assert!(
        h["history"].as_array().expect("history").iter().any(|e| {
            e["message_id"] == applied_promote["message_id"]
                && e["outcome"] == "ignored"
                && e["reason"].as_str().unwrap_or("").contains("duplicate")
        }),
        "the duplicated promote is recorded as ignored: {h}"
    );
    let of_rollback: Vec<&Value> = h["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["message_id"] == applied_rollback["message_id"])
        .collect();
    assert_eq!(
        of_rollback
            .iter()
            .filter(|e| e["outcome"] == "applied")
            .count(),
        1,
        "{of_rollback:?}"
    );
    assert!(
        of_rollback.iter().any(|e| e["outcome"] == "ignored"
            && e["reason"].as_str().unwrap_or("").contains("duplicate")),
        "{of_rollback:?}"
    );
    assert_eq!(
        release_of(&stack, &flow_id).await,
        before,
        "the release did not move"
    );

    // An invalid v3 is refused by the CLI and never stored.
    let mut bad = versioned_flow(&flow_id, 3, &slow_rule);
    bad["rules"][0]["when"] = json!("input.key +");
    let bad_file = write_flow(&bad);
    let o = rs(&["upload", bad_file.to_str().expect("path")]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("rules[0].when"),
        "names the rule's field: {err}"
    );
    let stored = stack
        .s3
        .head_object()
        .bucket(stack.table("configs"))
        .key(format!("flows/e2e/{flow_id}/v3.json"))
        .send()
        .await;
    assert!(stored.is_err(), "an invalid version is never stored");

    // A hand-crafted message naming an invalid object is rejected by the bridge; v1 keeps serving.
    stack
        .s3
        .put_object()
        .bucket(stack.table("configs"))
        .key(format!("flows/e2e/{flow_id}/v4.json"))
        .body(b"{\"client_id\": \"e2e\", \"rules\": 7".to_vec().into())
        .send()
        .await
        .expect("put by hand");
    let forged_id = format!("forged-{tag}");
    send_raw(&stack, &json!({"op": "publish", "client_id": "e2e", "flow_id": flow_id, "message_id": forged_id,
        "actor": "by hand", "at": "2026-11-30T00:00:01.000Z", "generation": generation, "version": 4, "percent": 100}))
    .await;
    let e = wait_audit(&flow_id, &forged_id);
    assert_eq!(e["outcome"], "rejected", "{e}");
    assert!(
        e["reason"].as_str().unwrap_or("").contains("v4.json"),
        "{e}"
    );
    assert_eq!(release_of(&stack, &flow_id).await, before);
    let still = run_keys(&stack, &flow_id, "after-forged", &sample[..50]).await;
    assert!(still.values().all(|(v, _)| *v == 1));

    // The history reads as a person expects.
    let text = String::from_utf8_lossy(&rs(&["releases", "e2e", &flow_id]).stdout).to_string();
    for want in [
        "upload",
        "publish",
        "set_percent",
        "promote",
        "rollback",
        "rejected",
        "ignored",
    ] {
        assert!(text.contains(want), "`releases` shows {want}:\n{text}");
    }
    let d = ok_json(&rs(&["diff", "e2e", &flow_id, "1", "2", "--json"]));
    assert_eq!(d["changes"][0]["rule"], "route", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_rolls_back_a_candidate_that_fails_more() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let flow_id = format!("guard-{}", &tag[..12]);
    let flow = |version: u64, when: &str| {
        json!({"client_id": "e2e", "flow_id": flow_id, "version": version, "terminal_statuses": ["OK"],
            "gray_key": "input.key",
            "rules": [{"id": "check", "when": when, "on": {"true": {"complete": "OK"}, "false": {"complete": "OK"}}}]})
    };
    stack.register_flow(&flow(1, "true")).await;
    // v2 fails (an evaluation error, no on_error) for every fifth key.
    let v2 = write_flow(&flow(2, "input.n % 5 != 0 || input.missing.deeper == 1"));
    ok_json(&rs(&[
        "upload",
        v2.to_str().expect("path"),
        "--percent",
        "50",
        "--guard",
        r#"{"max_failed_delta": 0.05, "min_executions": 40}"#,
        "--json",
    ]));
    let rows: Vec<Value> = (0..300)
        .map(|i| {
            json!({"execution_id": format!("e2e:{flow_id}-{i}"), "seq": 0, "client_id": "e2e", "flow_id": flow_id,
                   "input": {"key": format!("k{i}"), "n": i}})
        })
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["execution_id"].as_str().expect("id").to_string())
        .collect();
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let done = stack.wait_all(&ids, Duration::from_secs(300)).await;
    let failed_v2 = done
        .values()
        .filter(|e| e["flow_version"] == 2 && e["status"] == "FAILED")
        .count();
    // How many ran v2 depends on how soon the guard rolls it back (the sweeper judges it while
    // the 300 are still starting); each that did ran v2's rules: every fifth key failed.
    assert!(failed_v2 >= 1, "the candidate failed for some keys");
    for (id, e) in &done {
        let n: u64 = id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("an index");
        if e["flow_version"] == 2 {
            assert_eq!(e["status"] == "FAILED", n.is_multiple_of(5), "{id}: {e}");
        }
    }
    assert!(
        done.values()
            .all(|e| e["flow_version"] == 2 || e["status"] == "OK")
    );

    // The sweeper (every 2 s here) sees it and sends the rollback through the topic.
    let start = Instant::now();
    loop {
        let r = release_of(&stack, &flow_id).await;
        if r.get("candidate").is_none_or(Value::is_null) {
            assert_eq!(r["stable"], json!(1));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no automatic rollback: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let h = ok_json(&rs(&["releases", "e2e", &flow_id, "--json"]));
    let rb = h["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|e| e["op"] == "rollback" && e["outcome"] == "applied")
        .expect("the rollback is audited")
        .clone();
    assert_eq!(rb["actor"], "guard");
    let why = rb["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("FAILED share") && why.contains("exceeds stable"),
        "{why}"
    );
    let text = String::from_utf8_lossy(&rs(&["releases", "e2e", &flow_id]).stdout).to_string();
    assert!(
        text.contains("guard") && text.contains("FAILED share"),
        "{text}"
    );
    // The sweeper counted it in the metric the template's automatic-rollback alarm reads (an
    // EMF line in the functions' output, flushed when its invocation ends).
    let state = std::env::var("RULESTREAM_STATE").expect("RULESTREAM_STATE is set by env.sh");
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(format!("{state}/lambda.log")).unwrap_or_default();
        let counted = log
            .lines()
            .filter(|l| l.contains("\"_aws\"") && l.contains("AutomaticRollbacks"))
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .any(|d| d["flow_id"] == flow_id.as_str() && d["AutomaticRollbacks"] == json!(1));
        if counted {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no AutomaticRollbacks EMF line for {flow_id}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_reach_warm_orchestrators() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let rule_id = format!("rel_cat_{tag}");
    let flow_id = format!("cat-{}", &tag[..12]);
    let file = |version: u64, expression: &str| {
        let p = std::env::temp_dir().join(format!("{rule_id}-v{version}.json"));
        std::fs::write(
            &p,
            json!({"rule_id": rule_id, "version": version, "kind": "cel", "description": "threshold",
                   "params": {}, "expression": expression})
            .to_string(),
        )
        .expect("write");
        p
    };
    let published = ok_json(&rs(&[
        "catalog",
        "publish",
        file(1, "input.n > 1").to_str().expect("p"),
        "--json",
    ]));
    assert_eq!(
        published["published"][0]["version"],
        json!(1),
        "{published}"
    );
    // A catalog row with attributes no reader knows, and one that is no rule at all, break nothing.
    for item in [
        json!({"rule_id": format!("odd_{tag}"), "version": 1, "kind": "cel", "expression": "true",
               "params": {}, "owner_team": "somebody", "added_by_a_later_version": {"x": 1}}),
        json!({"rule_id": format!("junk_{tag}"), "version": 1, "kind": "no such kind"}),
    ] {
        stack
            .ddb
            .put_item()
            .table_name(stack.table("catalog"))
            .set_item(Some(serde_dynamo::to_item(item).expect("item")))
            .send()
            .await
            .expect("put");
    }
    stack
        .register_flow(&json!({"client_id": "e2e", "flow_id": flow_id, "version": 1, "terminal_statuses": ["BIG", "SMALL"],
            "rules": [{"id": "t", "use": rule_id, "on": {"true": {"complete": "BIG"}, "false": {"complete": "SMALL"}}}]}))
        .await;
    assert_eq!(status_of(&stack, &flow_id, "a", 50).await, "BIG");
    // v2 raises the threshold; the warm orchestrator sees it on its next record.
    let o = ok_json(&rs(&[
        "catalog",
        "publish",
        file(2, "input.n > 100").to_str().expect("p"),
        "--json",
    ]));
    assert!(
        o["epoch"].as_u64().is_some(),
        "the config epoch was bumped: {o}"
    );
    assert_eq!(
        status_of(&stack, &flow_id, "b", 50).await,
        "SMALL",
        "the new rule version serves"
    );
    // Versions are never overwritten.
    let clash = rs(&[
        "catalog",
        "publish",
        file(2, "input.n > 7").to_str().expect("p"),
    ]);
    assert_eq!(clash.status.code(), Some(1));
    ok_json(&rs(&["catalog", "rollback", &rule_id, "--json"]));
    assert_eq!(
        status_of(&stack, &flow_id, "c", 50).await,
        "BIG",
        "after the rollback v1 serves again"
    );
}

/// Runs one execution of `flow_id` with `input.n = n` and answers its final status.
async fn status_of(stack: &Stack, flow_id: &str, round: &str, n: i64) -> Value {
    let id = format!("e2e:{flow_id}-{round}");
    let row = json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": {"n": n}});
    stack.trigger(&stack.table("trigger"), &row).await;
    stack
        .wait_all(std::slice::from_ref(&id), Duration::from_secs(60))
        .await[&id]["status"]
        .clone()
}
