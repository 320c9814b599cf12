//! Faults injected for real (SPEC sections 1 Actions, 3 trigger/steps/executions): the functions
//! reach AWS through `localstack/faultproxy.py`, which records every call and answers chosen ones
//! with throttling or AccessDenied, as AWS does and LocalStack never does.

use std::time::Duration;

use rulestream_e2e::receiver::receiver;
use rulestream_e2e::{ACME_ROLE, Stack, faults, new_id};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(120);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn create_secret(name: &str, value: &Value) -> aws_sdk_secretsmanager::Client {
    let sdk = rulestream_aws::sdk_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.create_secret()
        .name(name)
        .secret_string(value.to_string())
        .send()
        .await
        .expect("create secret");
    sm
}

fn calls_naming(needle: &str) -> Vec<Value> {
    faults::calls()
        .into_iter()
        .filter(|c| c["resource"].as_str().is_some_and(|r| r.contains(needle)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_row_reads_no_secret_and_assumes_no_role() {
    let stack = Stack::from_env().await;
    let tag = uid();
    let secret_id = format!("rulestream/acme-bank/forge-{tag}");
    let sm = create_secret(&secret_id, &json!({"tier": "gold"})).await;
    let flow = json!({"client_id": "acme-bank", "flow_id": format!("forge-{tag}"), "version": 1,
        "terminal_statuses": ["DONE"],
        "rules": [{"id": "first", "when": "true", "on": {"true": {"next": true}}},
                  {"id": "second", "when": "client.tier == 'gold'", "default": {"complete": "DONE"}}]});
    stack
        .register_flow_with_data(&flow, ACME_ROLE, &secret_id)
        .await;

    // The forged row names the secret and a role of its own; the orchestrator wrote no such row.
    let forged = new_id("acme-bank", "forged");
    let role = format!("arn:aws:iam::000000000000:role/forged-{tag}");
    stack
        .trigger(
            &stack.table("trigger"),
            &json!({
            "execution_id": forged, "seq": 1, "client_id": "acme-bank", "flow_id": flow["flow_id"],
            "flow_version": 1, "input": {}, "state": {"seq": 1, "rule": "second"},
            "data_source": {"role_arn": role, "secret_id": secret_id}}),
        )
        .await;
    // A genuine execution after it: it reads the secret (so the count below can see reads).
    let real = new_id("acme-bank", "genuine");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": real, "seq": 0, "client_id": "acme-bank", "flow_id": flow["flow_id"], "input": {}}))
        .await;
    let done = stack.wait_all(std::slice::from_ref(&real), DEADLINE).await;
    assert_eq!(done[&real]["status"], "DONE", "{}", done[&real]);

    let reads = calls_naming(&secret_id);
    assert!(
        reads.iter().all(|c| c["action"] == "GetSecretValue"),
        "{reads:?}"
    );
    assert_eq!(
        reads.len(),
        1,
        "one read, by the genuine execution: {reads:?}"
    );
    assert!(
        calls_naming(&format!("forged-{tag}")).is_empty(),
        "the forged row's role was never assumed"
    );
    assert!(stack.execution(&forged).await.is_none());
    let _ = sm
        .delete_secret()
        .secret_id(&secret_id)
        .force_delete_without_recovery(true)
        .send()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_secrets_missing_flows_and_oversized_outputs_end_failed_with_their_reason() {
    let stack = Stack::from_env().await;
    let tag = uid();

    // Secrets Manager refuses the client's secret (AccessDenied, every time).
    let secret_id = format!("rulestream/acme-bank/denied-{tag}");
    let sm = create_secret(&secret_id, &json!({"tier": "gold"})).await;
    let denied_flow = json!({"client_id": "acme-bank", "flow_id": format!("denied-{tag}"), "version": 1,
        "terminal_statuses": ["DONE"],
        "rules": [{"id": "tier", "when": "client.tier == 'gold'", "default": {"complete": "DONE"}}]});
    stack
        .register_flow_with_data(&denied_flow, ACME_ROLE, &secret_id)
        .await;
    let rule = faults::inject(
        &json!({"service": "secretsmanager", "action": "GetSecretValue",
        "resource_contains": secret_id, "fault": "access_denied", "times": -1}),
    );

    // The flow's object is gone from the bucket.
    let gone = json!({"client_id": "e2e", "flow_id": format!("gone-{tag}"), "version": 1,
        "terminal_statuses": ["DONE"], "rules": [{"id": "a", "when": "true", "default": {"complete": "DONE"}}]});
    stack.register_flow(&gone).await;
    stack
        .s3
        .delete_object()
        .bucket(stack.table("configs"))
        .key(format!("flows/e2e/gone-{tag}/v1.json"))
        .send()
        .await
        .expect("delete the flow object");

    // The output outgrows its bound (64 KB).
    let big = json!({"client_id": "e2e", "flow_id": format!("big-{tag}"), "version": 1,
        "terminal_statuses": ["DONE"],
        "rules": [{"id": "copy", "when": "true", "on": {"true": {"complete": "DONE", "set": {"blob": "input.blob"}}}}]});
    stack.register_flow(&big).await;

    let ids = [
        new_id("acme-bank", "denied"),
        new_id("e2e", "gone"),
        new_id("e2e", "big"),
    ];
    let rows = [
        json!({"execution_id": ids[0], "seq": 0, "client_id": "acme-bank", "flow_id": denied_flow["flow_id"], "input": {}}),
        json!({"execution_id": ids[1], "seq": 0, "client_id": "e2e", "flow_id": gone["flow_id"], "input": {}}),
        json!({"execution_id": ids[2], "seq": 0, "client_id": "e2e", "flow_id": big["flow_id"], "input": {"blob": "x".repeat(70_000)}}),
    ];
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    // Within seconds, not after the stall bound: each is permanent and ends at once.
    let done = stack.wait_all(&ids, Duration::from_secs(45)).await;
    faults::remove(&rule);
    let why = |i: usize| {
        done[&ids[i]]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (i, e) in ids.iter().enumerate() {
        assert_eq!(done[e]["status"], "FAILED", "{e}: {}", why(i));
    }
    assert!(
        why(0).contains("client data") && why(0).contains("AccessDenied"),
        "{}",
        why(0)
    );
    assert!(
        why(1).contains("has no version 1") && !why(1).contains("s3://"),
        "{}",
        why(1)
    );
    assert!(
        why(2).contains("output is") && why(2).contains("bound"),
        "{}",
        why(2)
    );
    let _ = sm
        .delete_secret()
        .secret_id(&secret_id)
        .force_delete_without_recovery(true)
        .send()
        .await;
}

/// The commit of a step is throttled (every attempt of the SDK's retry) after its rate-limited
/// rule took the bucket's only token: the record is retried, decides again (the bucket is now
/// empty), and what is recorded is what is delivered — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_commit_is_decided_once_and_the_trace_and_the_delivery_agree() {
    let stack = Stack::from_env().await;
    let (base, seen) = receiver().await;
    let tag = uid();
    let flow = json!({"client_id": "e2e", "flow_id": format!("throttle-{tag}"), "version": 1,
        "terminal_statuses": ["GRANTED", "LIMITED"],
        "rules": [{"id": "gate", "when": "true",
                   "rate_limit": {"per_second": 0.001, "burst": 1, "fail_open": false},
                   "on": {"true": {"complete": "GRANTED", "actions": [{"type": "call_webhook", "url": format!("{base}/hook/{tag}")}]},
                          "limited": {"complete": "LIMITED", "actions": [{"type": "call_webhook", "url": format!("{base}/hook/{tag}")}]}}}]});
    stack.register_flow(&flow).await;
    let id = new_id("e2e", "throttled");
    let rule = faults::inject(&json!({"service": "dynamodb", "action": "PutItem",
        "resource_contains": "-steps", "body_contains": id, "fault": "throttle", "times": 3}));
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow["flow_id"], "input": {}}))
        .await;
    let done = stack.wait_all(std::slice::from_ref(&id), DEADLINE).await;
    assert_eq!(faults::fired(&rule), 3, "the commit was throttled");
    faults::remove(&rule);
    let e = &done[&id];
    let outcome = e["trace"][0]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(e["trace"].as_array().map(Vec::len), Some(1), "{e}");
    assert_eq!(
        e["status"],
        if outcome == "true" {
            "GRANTED"
        } else {
            "LIMITED"
        }
    );
    let count = || {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == format!("/hook/{tag}"))
            .count()
    };
    for _ in 0..40 {
        if count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hooks: Vec<_> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.path == format!("/hook/{tag}"))
        .cloned()
        .collect();
    assert_eq!(hooks.len(), 1, "delivered once");
    let body: Value = serde_json::from_slice(&hooks[0].body).expect("JSON body");
    assert_eq!(body["outcome"], outcome.as_str(), "{body}");
    assert_eq!(body["status"], e["status"], "{body}");
}

/// A step whose record can never be committed (its next row's write throttled every time) is
/// given up by the event source mapping after its retries: the runner puts AWS's invocation
/// record in the on-failure queue, and the sweeper ends the execution FAILED from it, naming the
/// step, long before the stall bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_given_up_to_the_on_failure_queue_ends_its_execution() {
    let stack = Stack::from_env().await;
    let tag = uid();
    let flow = json!({"client_id": "e2e", "flow_id": format!("given-up-{tag}"), "version": 1,
        "terminal_statuses": ["DONE"],
        "rules": [{"id": "first", "when": "true", "on": {"true": {"next": true}}},
                  {"id": "second", "when": "true", "on": {"true": {"complete": "DONE"}}}]});
    stack.register_flow(&flow).await;
    let id = new_id("e2e", "given-up");
    // Every write of this execution's next trigger row is throttled.
    let rule = faults::inject(&json!({"service": "dynamodb", "action": "PutItem",
        "resource_contains": "-trigger", "body_contains": id, "fault": "throttle", "times": -1}));
    let started = std::time::Instant::now();
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow["flow_id"], "input": {}}))
        .await;
    let done = stack
        .wait_all(std::slice::from_ref(&id), Duration::from_secs(55))
        .await;
    faults::remove(&rule);
    let e = &done[&id];
    assert_eq!(e["status"], "FAILED", "{e}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("on-failure destination") && reason.contains("RetryAttemptsExhausted"),
        "{reason}"
    );
    assert_eq!(
        e["steps_total"],
        json!(1),
        "step 0 ran, step 1 never did: {e}"
    );
    eprintln!(
        "ended from the on-failure queue after {:?}",
        started.elapsed()
    );
}
