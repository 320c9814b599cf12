//! The sync API (SPEC section 5) on the local stack: the real `sync-api` binary under `cargo lambda
//! watch`, reached through its function URL (`/lambda-url/sync-api/...`, the API Gateway HTTP API
//! payload v2 the function gets on AWS too), in front of the same tables and orchestrator.

use aws_sdk_dynamodb::types::AttributeValue;
use rulestream_e2e::api::call;
use rulestream_e2e::{Stack, new_id, ok_json, rs};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("?")
}

/// A client id of this run (`<prefix>` and 8 random hex digits) and an API key for it.
fn new_client(prefix: &str) -> (String, String) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    (format!("{prefix}{}", &tag[..8]), format!("key-{tag}"))
}

/// Registers `flow` for its client with API key `key` (and a rotated-out second key).
async fn register(stack: &Stack, flow: &Value, key: &str) {
    stack.register_flow(flow).await;
    let client = flow["client_id"].as_str().expect("client");
    let id = flow["flow_id"].as_str().expect("flow");
    set_client_field(
        stack,
        client,
        id,
        "api_key_sha256",
        AttributeValue::L(vec![
            AttributeValue::S(hex(key)),
            AttributeValue::S(hex("an-older-key")),
        ]),
    )
    .await;
}

/// Sets one attribute of a clients row.
async fn set_client_field(stack: &Stack, client: &str, flow: &str, name: &str, v: AttributeValue) {
    stack
        .ddb
        .update_item()
        .table_name(stack.table("clients"))
        .key("client_id", AttributeValue::S(client.into()))
        .key("flow_id", AttributeValue::S(flow.into()))
        .update_expression("SET #n = :v")
        .expression_attribute_names("#n", name)
        .expression_attribute_values(":v", v)
        .send()
        .await
        .expect("the clients row is updated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_wait_read_list_cancel_and_dry_run_with_auth() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let client = format!("api{}", &tag[..8]);
    let other = format!("oth{}", &tag[..8]);
    let key = format!("key-{tag}");
    let other_key = format!("other-{tag}");
    let flow = json!({"client_id": client, "flow_id": "score", "version": 1,
        "terminal_statuses": ["HIGH", "LOW"],
        "rules": [{"id": "size", "conditions": [[{"field": "input.n", "op": "gte", "value": 10}]],
                   "on": {"true": {"complete": "HIGH"}, "false": {"next": true}}},
                  {"id": "low", "when": "true", "on": {"true": {"complete": "LOW", "set": {"twice": "input.n * 2"}}}}]});
    register(&stack, &flow, &key).await;
    let mut other_flow = flow.clone();
    other_flow["client_id"] = json!(other);
    register(&stack, &other_flow, &other_key).await;
    wait_for_key(&client, &key);
    wait_for_key(&other, &other_key);
    let k = Some(key.as_str());

    // Auth.
    let start = json!({"client_id": client, "flow_id": "score", "input": {"n": 3}}).to_string();
    let (s, v) = call("POST", "/v1/executions", None, Some(&start));
    assert_eq!((s, error_code(&v)), (401, "unauthorized"), "{v}");
    let (s, _) = call("POST", "/v1/executions", Some("wrong"), Some(&start));
    assert_eq!(s, 401);
    let (s, v) = call("POST", "/v1/executions", Some(&other_key), Some(&start));
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");

    // Bad requests name the field.
    let (s, v) = call("POST", "/v1/executions", k, Some("{not json"));
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        "POST",
        "/v1/executions",
        k,
        Some(&json!({"client_id": client, "input": {}}).to_string()),
    );
    assert!(
        s == 400
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("flow_id")),
        "{v}"
    );
    let (s, v) = call("POST", "/v1/executions", k, Some(&json!({"client_id": client, "flow_id": "score", "input": {}, "wait": {"terminal_statuses": ["NOPE"]}}).to_string()));
    assert!(
        s == 400
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("NOPE")),
        "{v}"
    );
    let (s, v) = call("POST", "/v1/executions", k, Some(&json!({"client_id": client, "flow_id": "score", "input": {}, "execution_id": format!("{other}:x")}).to_string()));
    assert!(
        s == 400
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("execution_id")),
        "{v}"
    );
    let (s, v) = call(
        "POST",
        "/v1/executions",
        k,
        Some(&json!({"client_id": client, "flow_id": "nope", "input": {}}).to_string()),
    );
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    // A pinned version that does not exist: 404 at once, not an execution that ends FAILED.
    let (s, v) = call(
        "POST",
        "/v1/executions",
        k,
        Some(
            &json!({"client_id": client, "flow_id": "score", "input": {}, "flow_version": 99})
                .to_string(),
        ),
    );
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no version 99") && !m.contains("s3://")),
        "{v}"
    );
    let big =
        json!({"client_id": client, "flow_id": "score", "input": {"blob": "x".repeat(300_000)}})
            .to_string();
    let (s, v) = call("POST", "/v1/executions", k, Some(&big));
    assert_eq!((s, error_code(&v)), (413, "payload_too_large"), "{v}");

    // Start and wait (chain mode): 200 with the end.
    let id = new_id(&client, "api");
    let body = json!({"client_id": client, "flow_id": "score", "input": {"n": 3}, "execution_id": id,
                      "wait": {"terminal_statuses": ["LOW", "HIGH"], "timeout_ms": 20000}});
    let (s, v) = call("POST", "/v1/executions", k, Some(&body.to_string()));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "LOW");
    assert_eq!(v["output"]["twice"], json!(6));
    assert_eq!(v["flow_version"], json!(1));
    assert_eq!(v["execution_id"], json!(id));
    // The same id again: 409.
    let (s, v) = call("POST", "/v1/executions", k, Some(&body.to_string()));
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");
    // Read it: summary and trace; another client's key sees nothing.
    let (s, v) = call("GET", &format!("/v1/executions/{id}"), k, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["trace"].as_array().map(Vec::len), Some(2));
    // Every summary field is there, null where it has no value (no reason, route or rerun_of).
    for f in [
        "client_id",
        "flow_id",
        "flow_version",
        "status",
        "started_at",
        "finished_at",
        "output",
        "reason",
        "error",
        "tags",
        "route",
        "rerun_of",
    ] {
        assert!(v.get(f).is_some(), "{f} missing: {v}");
    }
    let (s, _) = call(
        "GET",
        &format!("/v1/executions/{id}"),
        Some(&other_key),
        None,
    );
    assert_eq!(s, 404);
    let (s, _) = call("GET", &format!("/v1/executions/{client}:never"), k, None);
    assert_eq!(s, 404);

    // Async: 202, then it ends.
    let (s, v) = call(
        "POST",
        "/v1/executions",
        k,
        Some(&json!({"client_id": client, "flow_id": "score", "input": {"n": 50}}).to_string()),
    );
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "RUNNING");
    let async_id = v["execution_id"].as_str().expect("id").to_string();
    assert!(async_id.starts_with(&format!("{client}:")));
    let done = stack
        .wait_all(
            std::slice::from_ref(&async_id),
            std::time::Duration::from_secs(60),
        )
        .await;
    assert_eq!(done[&async_id]["status"], "HIGH");
    // A wait that times out first: 202.
    let (s, v) = call("POST", "/v1/executions", k, Some(&json!({"client_id": client, "flow_id": "score", "input": {"n": 1}, "wait": {"timeout_ms": 0}}).to_string()));
    assert_eq!((s, v["status"].clone()), (202, json!("RUNNING")), "{v}");

    // Inline: every step in the invocation, the same summary and steps. The only trigger row
    // is the seq 0 row that keeps the input for a rerun, marked so the chain passes over it.
    let inline_id = new_id(&client, "inline");
    let (s, v) = call("POST", "/v1/executions", k, Some(&json!({"client_id": client, "flow_id": "score", "input": {"n": 4}, "execution_id": inline_id, "mode": "inline"}).to_string()));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "LOW");
    assert_eq!(v["output"]["twice"], json!(8));
    let rows = stack.items_of(&stack.table("trigger"), &inline_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (&rows[0]["seq"], &rows[0]["inline"], &rows[0]["input"]),
        (&json!(0), &json!(true), &json!({"n": 4}))
    );
    let e = stack.execution(&inline_id).await.expect("summary");
    assert_eq!(e["steps_total"], json!(2));
    // A rerun of it: a new execution on its input; the original keeps its two steps and its
    // summary (the kept row, which the orchestrator got meanwhile, ran nothing).
    let again = ok_json(&rs(&["rerun", &inline_id, "--wait", "--json"]));
    assert_eq!(again["status"], "LOW", "{again}");
    assert_eq!(again["output"]["twice"], json!(8));
    let rerun_id = again["execution_id"].as_str().expect("id").to_string();
    assert_eq!(
        stack.execution(&rerun_id).await.expect("rerun")["rerun_of"],
        json!(inline_id)
    );
    assert_eq!(
        stack
            .items_of(&stack.table("steps"), &inline_id)
            .await
            .len(),
        2
    );
    let after = stack.execution(&inline_id).await.expect("summary");
    assert_eq!(
        (&after["status"], &after["finished_at"]),
        (&e["status"], &e["finished_at"])
    );

    // Listing: newest first, this client's only.
    let (s, v) = call("GET", "/v1/executions?flow_id=score", k, None);
    assert_eq!(s, 200, "{v}");
    let listed: Vec<&str> = v["executions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["execution_id"].as_str())
        .collect();
    assert!(
        listed.contains(&id.as_str()) && listed.contains(&inline_id.as_str()),
        "{v}"
    );
    assert!(listed.iter().all(|i| i.starts_with(&format!("{client}:"))));
    let (s, _) = call("GET", &format!("/v1/executions?client_id={other}"), k, None);
    assert_eq!(s, 403);

    // Cancel: a running execution ends CANCELLED; again is fine; an ended one is a conflict.
    let running = format!("{client}:cancel-{tag}");
    stack
        .ddb
        .put_item()
        .table_name(stack.table("executions"))
        .set_item(Some(
            serde_dynamo::to_item(
                json!({"execution_id": running, "client_id": client, "flow_id": "score",
            "flow_version": 1, "status": "RUNNING", "started_at": chrono::Utc::now().to_rfc3339()}),
            )
            .expect("item"),
        ))
        .send()
        .await
        .expect("put summary");
    let (s, v) = call("POST", &format!("/v1/executions/{running}/cancel"), k, None);
    assert_eq!((s, v["status"].clone()), (200, json!("CANCELLED")), "{v}");
    let (s, _) = call("POST", &format!("/v1/executions/{running}/cancel"), k, None);
    assert_eq!(s, 200);
    let (s, v) = call("POST", &format!("/v1/executions/{id}/cancel"), k, None);
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");

    // Dry run: no side effects, client data stand-in hidden in the explain.
    let (s, v) = call(
        "POST",
        "/v1/dry-run",
        k,
        Some(&json!({"client_id": client, "flow_id": "score", "input": {"n": 12}}).to_string()),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "HIGH");
    assert_eq!(v["path"], json!(["size"]));
    assert_eq!(
        v["steps"][0]["explain"]["conditions"][0]["expected"],
        json!(10)
    );
    assert!(
        stack
            .execution(&format!("{client}:dry-run"))
            .await
            .is_none(),
        "nothing written"
    );
    let (s, _) = call(
        "POST",
        "/v1/dry-run",
        Some(&other_key),
        Some(&json!({"client_id": client, "flow_id": "score", "input": {}}).to_string()),
    );
    assert_eq!(s, 403);
    // Unknown route.
    let (s, v) = call("GET", "/v1/nothing", k, None);
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
}

/// Waits until the API accepts `key`: a warm API container learns a new key within a second (it
/// reloads the keys when it meets an unknown one, at most once a second).
fn wait_for_key(client: &str, key: &str) {
    let start = std::time::Instant::now();
    while call(
        "GET",
        &format!("/v1/executions?client_id={client}"),
        Some(key),
        None,
    )
    .0 == 401
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the new key is never accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // One instance accepts it; another (the e2e stack runs four) that read the key hashes in the
    // second before the key was written refuses it until that second has passed (docs/api.md).
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_is_read_and_cancelled_right_after_its_start() {
    let stack = Stack::from_env().await;
    let (client, key) = new_client("now");
    // A long chain: still running when it is read and cancelled, whether or not the
    // orchestrator has picked up its seq 0 row yet.
    let mut rules: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("r{i}"), "when": "true", "on": {"true": {"next": true}}}))
        .collect();
    rules.push(json!({"id": "end", "when": "true", "on": {"true": {"complete": "DONE"}}}));
    let flow = json!({"client_id": client, "flow_id": "long", "version": 1,
        "terminal_statuses": ["DONE"], "rules": rules});
    register(&stack, &flow, &key).await;
    wait_for_key(&client, &key);
    let k = Some(key.as_str());

    // Without a valid key, the body does not matter: 401 first.
    let (s, v) = call("POST", "/v1/executions", None, Some("{not json"));
    assert_eq!((s, error_code(&v)), (401, "unauthorized"), "{v}");
    let (s, v) = call("POST", "/v1/dry-run", Some("wrong"), Some("[]"));
    assert_eq!((s, error_code(&v)), (401, "unauthorized"), "{v}");

    let start = json!({"client_id": client, "flow_id": "long", "input": {}}).to_string();
    for _ in 0..3 {
        // Read at once: never a 404, even before the orchestrator's first step.
        let (s, v) = call("POST", "/v1/executions", k, Some(&start));
        assert_eq!(s, 202, "{v}");
        let id = v["execution_id"].as_str().expect("id").to_string();
        let (s, v) = call("GET", &format!("/v1/executions/{id}"), k, None);
        assert_eq!((s, v["status"].clone()), (200, json!("RUNNING")), "{v}");
        assert_eq!(v["execution_id"], json!(id), "{v}");
        assert_eq!(v["flow_id"], "long", "{v}");

        // Cancel at once: it ends CANCELLED before its next step, and never runs to DONE.
        let (s, v) = call("POST", &format!("/v1/executions/{id}/cancel"), k, None);
        assert_eq!((s, v["status"].clone()), (200, json!("CANCELLED")), "{v}");
        let (s, v) = call("GET", &format!("/v1/executions/{id}"), k, None);
        assert_eq!((s, v["status"].clone()), (200, json!("CANCELLED")), "{v}");
        let steps = v["steps_total"].as_u64().unwrap_or(0);
        // A step already under way when the cancel landed finds the stop marker and runs
        // nothing: after a while, the steps table holds exactly the steps the summary counts.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let decided = stack
            .items_of(&stack.table("steps"), &id)
            .await
            .into_iter()
            .filter(|s| s.get("stop").is_none())
            .count() as u64;
        assert_eq!(decided, steps, "no step after the cancel ({id})");
        let after = stack.execution(&id).await.expect("summary");
        assert_eq!(after["status"], "CANCELLED", "{after}");
    }

    // Listing with a look-back, as the CLI's --since takes it.
    let (s, v) = call("GET", "/v1/executions?since=1h", k, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["executions"].as_array().map(Vec::len), Some(3), "{v}");
    let (s, v) = call("GET", "/v1/executions?since=soon", k, None);
    assert_eq!((s, error_code(&v)), (400, "bad_request"), "{v}");

    // A disabled flow exists, and may not be started now: 403.
    ok_json(&rs(&["client", "disable", &client, "long", "--json"]));
    let (s, v) = call("POST", "/v1/executions", k, Some(&start));
    assert_eq!((s, error_code(&v)), (403, "forbidden"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{v}"
    );
}

/// SPEC section 1: a flow with no valid version ends its executions `FAILED` with the validation
/// errors as the reason; a start that waits for some of the flow's statuses gets that end, not a
/// 500 (the statuses of an invalid version cannot be read to check the list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_with_no_valid_version_ends_failed_also_under_a_wait() {
    let stack = Stack::from_env().await;
    let (client, key) = new_client("inv");
    let flow = json!({"client_id": client, "flow_id": "broken", "version": 1,
        "terminal_statuses": ["OK"],
        "rules": [{"id": "only", "when": "true", "on": {"true": {"complete": "OK"}}}]});
    register(&stack, &flow, &key).await;
    // Replaced by hand with a version that fails validation, before anything read it.
    let mut bad = flow.clone();
    bad["rules"][0]["on"]["true"] = json!({"goto": "nowhere"});
    stack
        .s3
        .put_object()
        .bucket(stack.table("configs"))
        .key(format!("flows/{client}/broken/v1.json"))
        .body(bad.to_string().into_bytes().into())
        .send()
        .await
        .expect("put by hand");
    wait_for_key(&client, &key);
    let k = Some(key.as_str());
    for wait in [
        json!({"terminal_statuses": ["OK"], "timeout_ms": 20000}),
        json!({"timeout_ms": 20000}),
    ] {
        let body = json!({"client_id": client, "flow_id": "broken", "input": {}, "wait": wait});
        let (s, v) = call("POST", "/v1/executions", k, Some(&body.to_string()));
        assert_eq!(
            (s, v["status"].clone()),
            (200, json!("FAILED")),
            "{wait}: {v}"
        );
        assert!(
            v["reason"].as_str().is_some_and(|r| r.contains("nowhere")),
            "the reason has the validation error: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_run_cancelled_while_it_runs_answers_its_end() {
    let stack = Stack::from_env().await;
    let (client, key) = new_client("inl");
    // A long run of pure steps, all run inline (about a thousand steps take several seconds).
    let flow = json!({"client_id": client, "flow_id": "loop", "version": 1,
        "terminal_statuses": ["DONE"], "max_steps": 2000,
        "rules": [{"id": "init", "when": "true", "on": {"true": {"next": true, "set": {"n": "0"}}}},
                  {"id": "inc", "when": "ctx.n < input.n",
                   "on": {"true": {"goto": "inc", "set": {"n": "ctx.n + 1"}},
                          "false": {"complete": "DONE"}}}]});
    register(&stack, &flow, &key).await;
    wait_for_key(&client, &key);
    let id = new_id(&client, "inline-cancel");
    let body = json!({"client_id": client, "flow_id": "loop", "input": {"n": 1500},
        "execution_id": id, "mode": "inline", "wait": {"timeout_ms": 20000}})
    .to_string();
    let start = std::thread::spawn(move || call("POST", "/v1/executions", Some(&key), Some(&body)));
    // Once it has run a few steps, cancel it from the support CLI (straight to the tables).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack.items_of(&stack.table("steps"), &id).await.len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the inline run never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cancelled = ok_json(&rs(&["cancel", &id, "--json"]));
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    // The request that ran it answers the end it got, never a 500.
    let (s, v) = start.join().expect("the start request");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "CANCELLED", "{v}");
    let e = stack.execution(&id).await.expect("summary");
    assert_eq!(e["status"], "CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_over_the_client_quota_are_answered_429_without_waiting() {
    let stack = Stack::from_env().await;
    let (client, key) = new_client("quo");
    let flow = json!({"client_id": client, "flow_id": "q", "version": 1, "terminal_statuses": ["OK"],
        "rules": [{"id": "a", "when": "true", "on": {"true": {"complete": "OK"}}}]});
    register(&stack, &flow, &key).await;
    // One start per second: a burst of five is partly over it.
    set_client_field(
        &stack,
        &client,
        "q",
        "quota",
        AttributeValue::M(std::collections::HashMap::from([(
            "starts_per_second".to_string(),
            AttributeValue::N("1".into()),
        )])),
    )
    .await;
    // Wait for the new key, so the burst is not refused 401.
    wait_for_key(&client, &key);
    // Every other warm container has loaded its keys more than a second ago by now, so it
    // reloads them on meeting this one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A burst of five starts at once (the API answers each once the orchestrator has decided at
    // seq 0, or after its 2 s look). A verdict that comes after the look leaves a 202 whose
    // execution is then refused: on a loaded machine a whole burst can be that late, so up to
    // three bursts (a second apart, for the quota's token) are tried for the 429 this test is
    // about. Every burst is judged in full.
    let mut bursts = Vec::new();
    for _ in 0..3 {
        let codes = quota_burst(&stack, &client, &key).await;
        let answered_429 = codes.contains(&429);
        bursts.push(codes);
        if answered_429 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert!(
        bursts.iter().any(|codes| codes.contains(&429)),
        "a start over the quota is answered 429: {bursts:?}"
    );
}

/// Five concurrent starts of `client`'s flow `q` (quota: one start a second); their status codes.
/// Each accepted start must end either OK or FAILED for the quota, and some but not all of the
/// five run.
async fn quota_burst(stack: &Stack, client: &str, key: &str) -> Vec<u16> {
    let body = json!({"client_id": client, "flow_id": "q", "input": {}}).to_string();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|_| s.spawn(|| call("POST", "/v1/executions", Some(key), Some(&body))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    let mut codes = Vec::new();
    let mut accepted = Vec::new();
    for (status, v) in answers {
        if status == 429 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("start quota exceeded"),
                "{v}"
            );
        }
        if status == 202 {
            accepted.push(v["execution_id"].as_str().expect("an id").to_string());
        }
        codes.push(status);
    }
    assert!(codes.iter().all(|c| *c == 202 || *c == 429), "{codes:?}");
    assert!(codes.contains(&202), "{codes:?}");
    // How many of the five ran depends on how far apart they reached the orchestrator (one
    // token a second): each accepted start either ran or was refused for the quota.
    let ended = stack
        .wait_all(&accepted, std::time::Duration::from_secs(60))
        .await;
    let mut ran = 0;
    for id in &accepted {
        let e = &ended[id];
        match e["status"].as_str() {
            Some("OK") => ran += 1,
            Some("FAILED") => assert!(e["reason"].as_str().unwrap_or("").contains("quota"), "{e}"),
            _ => panic!("{id} ended {e}"),
        }
    }
    assert!(ran >= 1, "{codes:?}: none of the accepted starts ran");
    assert!(ran < 5, "{codes:?}: all five ran");
    codes
}

/// `GET /v1/executions` pages through every execution of the client once, newest first, and a
/// filter fills its pages across the index's reads: a rare match is not behind empty pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_execution_once_and_filters_fill_their_pages() {
    let stack = Stack::from_env().await;
    let (client, key) = new_client("pages");
    let flow = json!({"client_id": client, "flow_id": "common", "version": 1,
        "terminal_statuses": ["DONE"], "rules": [{"id": "r", "when": "true", "on": {"true": {"complete": "DONE"}}}]});
    register(&stack, &flow, &key).await;
    wait_for_key(&client, &key);
    let k = Some(key.as_str());
    // 120 summaries, written as the orchestrator writes them: one in ten of flow `rare`
    // (FAILED), the rest of flow `common` (DONE), one a second apart.
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut puts = Vec::new();
    for i in 0..120 {
        let rare = i % 10 == 3;
        let summary = json!({
            "execution_id": format!("{client}:e{i:03}"), "client_id": client,
            "flow_id": if rare { "rare" } else { "common" }, "flow_version": 1,
            "status": if rare { "FAILED" } else { "DONE" },
            "started_at": (t0 + chrono::Duration::seconds(i)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "finished_at": (t0 + chrono::Duration::seconds(i)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "output": {}, "tags": [], "trace": []});
        puts.push(
            stack
                .ddb
                .put_item()
                .table_name(stack.table("executions"))
                .set_item(Some(serde_dynamo::to_item(&summary).expect("item")))
                .send(),
        );
    }
    for p in puts {
        p.await.expect("summary written");
    }
    let pages = |query: &str| -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                None => format!("/v1/executions?{query}"),
                Some(c) => format!("/v1/executions?{query}&cursor={c}"),
            };
            let (s, v) = call("GET", &url, k, None);
            assert_eq!(s, 200, "{v}");
            out.push(
                v["executions"]
                    .as_array()
                    .expect("executions")
                    .iter()
                    .map(|e| e["execution_id"].as_str().expect("id").to_string())
                    .collect(),
            );
            cursor = v["cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                return out;
            }
            assert!(out.len() < 10, "the pages never end: {out:?}");
        }
    };
    let ids = |pred: &dyn Fn(i64) -> bool| -> Vec<String> {
        (0..120)
            .rev()
            .filter(|i| pred(*i))
            .map(|i| format!("{client}:e{i:03}"))
            .collect()
    };

    let all = pages("");
    assert_eq!(
        all.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![50, 50, 20]
    );
    assert_eq!(
        all.concat(),
        ids(&|_| true),
        "every execution once, newest first"
    );

    // 12 rare ones among 120: one full read of the index, one page, no cursor.
    let rare = pages("flow_id=rare");
    assert_eq!(rare.len(), 1, "{rare:?}");
    assert_eq!(rare.concat(), ids(&|i| i % 10 == 3));
    assert_eq!(pages("status=FAILED").concat(), ids(&|i| i % 10 == 3));

    // 108 common ones: pages of 50 filled across the index's reads.
    let common = pages("flow_id=common&status=DONE");
    assert_eq!(
        common.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![50, 50, 8]
    );
    assert_eq!(common.concat(), ids(&|i| i % 10 != 3));

    // A status no execution has: one empty page, and no cursor to follow.
    assert_eq!(pages("status=NOPE"), vec![Vec::<String>::new()]);

    // A cursor past the start of the window (a look-back `since` moves on between pages) is
    // the end of the listing, not an error.
    let (_, first) = call("GET", "/v1/executions", k, None);
    let cursor = first["cursor"].as_str().expect("a cursor").to_string();
    let since =
        (t0 + chrono::Duration::seconds(100)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, v) = call(
        "GET",
        &format!(
            "/v1/executions?since={}&cursor={cursor}",
            since.replace('+', "%2B")
        ),
        k,
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["executions"], json!([]), "{v}");
    assert!(v["cursor"].is_null(), "{v}");
    // A cursor that is not this listing's: 400, never a 500.
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for bad in [
        b64(json!({})),
        b64(json!({"execution_id": format!("{client}:x")})),
        b64(json!({"execution_id": "other:x", "client_id": "other", "started_at": since})),
    ] {
        let (s, v) = call("GET", &format!("/v1/executions?cursor={bad}"), k, None);
        assert_eq!((s, error_code(&v)), (400, "bad_request"), "{v}");
    }
}
