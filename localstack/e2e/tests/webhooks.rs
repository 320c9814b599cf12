//! `call_webhook` actions and `http` master rules against a real HTTP receiver on 127.0.0.1:
//! the receiver scores through the catalog rule, and gets one signed POST per action, even when
//! every stream record is delivered twice.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rulestream_e2e::receiver::{Request, receiver};
use rulestream_e2e::{Stack, new_id};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_delivered_once_per_key_and_http_rules_answer() {
    let stack = Stack::from_env().await;
    let (base, seen) = receiver().await;
    let sdk = rulestream_aws::sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret_id = format!("rulestream/e2e/hook-key-{}", uuid::Uuid::new_v4());
    secrets
        .create_secret()
        .name(&secret_id)
        .secret_string("s3cr3t-signing-key")
        .send()
        .await
        .expect("create secret");
    // The http master rule, in the catalog; the epoch bump tells warm containers to reload it.
    let rule_id = format!("e2e_score_{}", uuid::Uuid::new_v4().simple());
    let rule = json!({"rule_id": rule_id, "version": 1, "kind": "http", "url": format!("{base}/score"),
                      "description": "scores a request", "params": {"threshold": 5}});
    stack.publish_catalog(std::slice::from_ref(&rule)).await;

    let flow_id = format!("hooks-{}", uuid::Uuid::new_v4().simple());
    let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["APPROVED", "DECLINED"],
        "rules": [
            {"id": "score", "use": rule_id,
             "on": {"approve": {"next": true}, "decline": {"complete": "DECLINED"}},
             "on_error": {"complete": "DECLINED", "reason": "scoring unavailable"}},
            {"id": "notify", "when": "ctx.score > 5",
             "on": {"true": {"complete": "APPROVED",
                             "actions": [{"type": "call_webhook", "url": format!("{base}/hook"), "secret_id": secret_id},
                                         {"type": "add_tag", "tag": "notified"}]}}}]});
    stack.register_flow(&flow).await;

    let once = new_id("e2e", "hook-once");
    let twice = new_id("e2e", "hook-twice");
    let row = |id: &str| json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": {"amount": 10}});
    stack.trigger(&stack.table("trigger"), &row(&once)).await;
    stack
        .trigger(&stack.table("trigger-dup"), &row(&twice))
        .await;
    let done = stack
        .wait_all(&[once.clone(), twice.clone()], Duration::from_secs(120))
        .await;
    for id in [&once, &twice] {
        let e = &done[id];
        assert_eq!(e["status"], "APPROVED", "{e}");
        assert_eq!(e["output"]["score"], json!(7));
        assert_eq!(e["tags"], json!(["notified"]));
    }

    // The summary ends before the last step's deliveries go out (a slow receiver never delays
    // the end): wait for the step items to record them.
    for id in [&once, &twice] {
        let mut delivery = Value::Null;
        for _ in 0..80 {
            delivery =
                step_item(&stack, id, 1).await.expect("step 1")["actions"][0]["delivery"].clone();
            if delivery["status"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(delivery["status"], "delivered", "{id}: {delivery}");
        assert_eq!(delivery["attempts"], 1, "{id}: {delivery}");
    }
    let seen = seen.lock().expect("lock").clone();
    let scored: Vec<&Request> = seen.iter().filter(|r| r.path == "/score").collect();
    let payload: Value = serde_json::from_slice(&scored[0].body).expect("json payload");
    assert_eq!(payload["params"]["threshold"], json!(5));
    assert_eq!(payload["input"]["amount"], json!(10));
    assert!(payload["execution"]["id"].is_string());

    for id in [&once, &twice] {
        let hooks: Vec<&Request> = seen
            .iter()
            .filter(|r| {
                r.path == "/hook"
                    && r.header("idempotency-key")
                        .is_some_and(|k| k.starts_with(id.as_str()))
            })
            .collect();
        assert!(!hooks.is_empty(), "{id}: no delivery");
        let key = format!("{id}:1:0");
        for h in &hooks {
            assert_eq!(
                h.header("idempotency-key"),
                Some(key.as_str()),
                "one key per action"
            );
            // The signature covers `<timestamp>.<body>` (replay protection).
            let ts = h
                .header("x-rulestream-timestamp")
                .expect("timestamp header");
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t-signing-key").expect("key");
            mac.update(format!("{ts}.").as_bytes());
            mac.update(&h.body);
            let want: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                h.header("x-rulestream-signature"),
                Some(format!("sha256={want}").as_str())
            );
            let body: Value = serde_json::from_slice(&h.body).expect("json body");
            assert_eq!(body["status"], "APPROVED");
            assert_eq!(body["idempotency_key"], json!(key));
            assert!(
                !String::from_utf8_lossy(&h.body).contains("s3cr3t"),
                "the secret never travels"
            );
        }
        // Even when every record comes twice, the step is decided once and its delivery attempt
        // claimed once: one POST.
        assert_eq!(hooks.len(), 1, "{id}: one POST per action");
    }
}

/// The step item `seq` of an execution, as JSON.
async fn step_item(stack: &Stack, id: &str, seq: u64) -> Option<Value> {
    let out = stack
        .ddb
        .get_item()
        .table_name(stack.table("steps"))
        .key(
            "execution_id",
            aws_sdk_dynamodb::types::AttributeValue::S(id.to_string()),
        )
        .key(
            "seq",
            aws_sdk_dynamodb::types::AttributeValue::N(seq.to_string()),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("get step");
    out.item
        .map(|i| serde_dynamo::from_item(i).expect("step decodes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_row_runs_nothing_and_redirects_are_not_followed() {
    let stack = Stack::from_env().await;
    let (base, seen) = receiver().await;
    let flow_id = format!("forge-{}", uuid::Uuid::new_v4().simple());
    let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["DONE"],
        "rules": [
            {"id": "first", "when": "true", "on": {"true": {"next": true}}},
            {"id": "leak", "when": "true",
             "on": {"true": {"complete": "DONE",
                             "actions": [{"type": "call_webhook", "url": format!("{base}/redirect")}]}}}]});
    stack.register_flow(&flow).await;

    // A row nobody but the orchestrator may write: seq 1, with its own state and another
    // client's data source, aimed at the webhook.
    let forged = new_id("e2e", "forged");
    stack
        .trigger(&stack.table("trigger"), &json!({
            "execution_id": forged, "seq": 1, "client_id": "e2e", "flow_id": flow_id,
            "flow_version": 1, "input": {}, "state": {"seq": 1, "rule": "leak"},
            "data_source": {"role_arn": "arn:aws:iam::000000000000:role/rulestream-client-acme-bank",
                            "secret_id": "rulestream/acme-bank/client-data"}}))
        .await;
    // A genuine execution of the same flow, started after it.
    let real = new_id("e2e", "real");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": real, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": {}}))
        .await;
    let done = stack
        .wait_all(std::slice::from_ref(&real), Duration::from_secs(120))
        .await;
    assert_eq!(done[&real]["status"], "DONE");

    // The redirect was answered and not followed: recorded as a failed delivery.
    let mut delivery = Value::Null;
    for _ in 0..40 {
        delivery =
            step_item(&stack, &real, 1).await.expect("step 1")["actions"][0]["delivery"].clone();
        if delivery["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert!(
        delivery["last"]
            .as_str()
            .is_some_and(|l| l.contains("redirects are not followed")),
        "{delivery}"
    );

    // The forged row: no summary, no step, nothing delivered for it, and a log line saying so.
    let state = std::env::var("RULESTREAM_STATE").expect("RULESTREAM_STATE is set by env.sh");
    let log_path = std::path::Path::new(&state).join("lambda.log");
    let mut logged = false;
    for _ in 0..40 {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains(&forged) && l.contains("ignored, nothing run"))
        {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(logged, "the orchestrator logs the forged row it ignored");
    assert!(
        stack.execution(&forged).await.is_none(),
        "no summary for a forged row"
    );
    assert!(
        step_item(&stack, &forged, 1).await.is_none(),
        "no step decided"
    );
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains(&forged)),
        "nothing delivered for the forged row"
    );
    assert!(
        seen.iter().all(|r| r.path != "/landed"),
        "the redirect was not followed"
    );
    assert_eq!(seen.iter().filter(|r| r.path == "/redirect").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_never_hold_the_chain_and_are_retried_then_recorded() {
    let stack = Stack::from_env().await;
    let (base, seen) = receiver().await;
    // A port nothing listens on: a receiver that is down for good.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let flaky = format!("/flaky/{}", uuid::Uuid::new_v4().simple());
    let flow_id = format!("retry-{}", uuid::Uuid::new_v4().simple());
    let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["DONE"],
        "rules": [{"id": "notify", "when": "true",
                   "on": {"true": {"complete": "DONE", "actions": [
                       {"type": "call_webhook", "url": format!("{base}{flaky}")},
                       {"type": "call_webhook", "url": format!("http://{down}/hook")}]}}}]});
    stack.register_flow(&flow).await;
    let id = new_id("e2e", "retry");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": {}}))
        .await;
    // The execution ends at once, whatever its receivers do.
    let done = stack
        .wait_all(std::slice::from_ref(&id), Duration::from_secs(60))
        .await;
    assert_eq!(done[&id]["status"], "DONE");

    // The sweeper retries on the short local backoff: the flaky receiver gets its success on
    // the sixth attempt, the dead one is recorded failed after the eighth.
    let mut step = Value::Null;
    for _ in 0..240 {
        step = step_item(&stack, &id, 0).await.expect("step 0");
        let settled = step["actions"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["delivery"]["status"] != "pending"));
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (ok, dead) = (
        &step["actions"][0]["delivery"],
        &step["actions"][1]["delivery"],
    );
    assert_eq!(ok["status"], "delivered", "{step}");
    assert_eq!(ok["attempts"], 6, "{ok}");
    assert_eq!(
        ok["results"].as_array().map(Vec::len),
        Some(6),
        "every attempt is recorded"
    );
    assert_eq!(dead["status"], "failed", "{dead}");
    assert_eq!(dead["attempts"], 8, "{dead}");
    assert!(
        step.get("pending_due").is_none() && step.get("outbox").is_none(),
        "{step}"
    );
    let hits = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.path == flaky)
        .count();
    assert_eq!(hits, 6, "one POST per attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_their_channel_once_with_the_rendered_template() {
    let stack = Stack::from_env().await;
    let (base, seen) = receiver().await;
    let sdk = rulestream_aws::sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // The channel's URL lives only in the client's secret (SPEC section 1: `channels.<name>`).
    let secret_id = format!("rulestream/acme-bank/notify-{tag}");
    let channel_url = format!("{base}/slack/{tag}");
    secrets
        .create_secret()
        .name(&secret_id)
        .secret_string(json!({"channels": {"ops": channel_url}}).to_string())
        .send()
        .await
        .expect("create secret");
    let flow_id = format!("notify-{tag}");
    let flow = json!({"client_id": "acme-bank", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["DENIED", "OK"],
        "rules": [{"id": "size", "when": "input.amount > 100",
            "on": {"true": {"complete": "DENIED", "reason": "too large", "set": {"amount": "input.amount"},
                            "actions": [
                                {"type": "send_notification", "channel": "ops",
                                 "template": "Trade {{execution.id}} {{status}}: {{reason}} (amount {{output.amount}})"},
                                {"type": "send_notification", "channel": "nowhere", "template": "lost"}]},
                   "false": {"complete": "OK"}}}]});
    stack
        .register_flow_with_data(&flow, rulestream_e2e::ACME_ROLE, &secret_id)
        .await;
    let once = new_id("acme-bank", "notify-once");
    let twice = new_id("acme-bank", "notify-twice");
    let row = |id: &str| json!({"execution_id": id, "seq": 0, "client_id": "acme-bank", "flow_id": flow_id, "input": {"amount": 250}});
    stack.trigger(&stack.table("trigger"), &row(&once)).await;
    stack
        .trigger(&stack.table("trigger-dup"), &row(&twice))
        .await;
    let done = stack
        .wait_all(&[once.clone(), twice.clone()], Duration::from_secs(120))
        .await;
    for id in [&once, &twice] {
        assert_eq!(done[id]["status"], "DENIED", "{}", done[id]);
        let mut step = Value::Null;
        for _ in 0..80 {
            step = step_item(&stack, id, 0).await.expect("step 0");
            if step["actions"][0]["delivery"]["status"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            step["actions"][0]["delivery"]["status"], "delivered",
            "{step}"
        );
        assert_eq!(step["actions"][0]["delivery"]["attempts"], 1, "{step}");
        assert_eq!(step["actions"][1]["delivery"]["status"], "failed", "{step}");
        assert!(
            step["actions"][1]["delivery"]["last"]
                .as_str()
                .unwrap_or("")
                .contains("channel `nowhere`"),
            "{step}"
        );
        assert!(
            !step.to_string().contains(&format!("/slack/{tag}")),
            "the channel URL is in no step once sent: {step}"
        );
    }
    let seen = seen.lock().expect("lock").clone();
    let posts: Vec<&Request> = seen
        .iter()
        .filter(|r| r.path == format!("/slack/{tag}"))
        .collect();
    assert_eq!(
        posts.len(),
        2,
        "one notification per execution, even delivered twice"
    );
    for p in &posts {
        let body: Value = serde_json::from_slice(&p.body).expect("json");
        let text = body["text"].as_str().expect("Slack-compatible text");
        assert!(
            text.starts_with("Trade acme-bank:notify-")
                && text.ends_with("DENIED: too large (amount 250)"),
            "{text}"
        );
        assert!(p.header("idempotency-key").is_some());
    }
    let texts: std::collections::HashSet<String> = posts
        .iter()
        .map(|p| String::from_utf8_lossy(&p.body).to_string())
        .collect();
    assert!(texts.iter().any(|t| t.contains(&once)) && texts.iter().any(|t| t.contains(&twice)));
}
