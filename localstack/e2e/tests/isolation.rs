//! Tenant isolation and input limits on the real local stack (SPEC sections 1 Limits/Trace and
//! 3): a flow that would hurt the function is refused or ends FAILED without touching other
//! clients' executions, and client data and secrets never land in an item, a row or a log.

use std::time::Duration;

use rulestream_e2e::{Stack, cli, examples, new_id, our_logs};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(180);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cel_bomb_is_refused_by_validate_and_uploaded_by_hand_fails_alone() {
    let stack = Stack::from_env().await;
    let tag = uid();
    // 25,000 terms: far past the 4,096-character limit.
    let bomb = json!({"client_id": "bombco", "flow_id": format!("chain-{tag}"), "version": 1,
        "terminal_statuses": ["OK"],
        "rules": [{"id": "bomb", "when": format!("1{} > 0", "+1".repeat(25_000)), "default": {"complete": "OK"}}]});
    // Valid, but quadratic over its input: the evaluation budget stops it.
    let quadratic = json!({"client_id": "bombco", "flow_id": format!("quad-{tag}"), "version": 1,
        "terminal_statuses": ["OK", "NO"],
        "rules": [{"id": "pairs", "when": "input.xs.exists(x, input.xs.exists(y, x * y == -1))",
                   "on": {"true": {"complete": "OK"}, "false": {"complete": "NO"}}}]});

    // `rulestream validate` refuses the bomb, naming the rule and the limit.
    let file = std::env::temp_dir().join(format!("bomb-{tag}.json"));
    std::fs::write(&file, bomb.to_string()).expect("write flow");
    let out = cli()
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run the CLI");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("bomb") && said.contains("characters long"),
        "{said}"
    );
    let _ = std::fs::remove_file(&file);

    // Uploaded by hand (no validation on the way), in one batch with other clients' executions.
    stack.register_flow(&bomb).await;
    stack.register_flow(&quadratic).await;
    let mut rows = Vec::new();
    let mut bombs = Vec::new();
    let mut quads = Vec::new();
    let mut others = Vec::new();
    for (client, flow, c) in examples().into_iter().take(12) {
        let id = new_id(&client, "beside-bomb");
        rows.push(json!({"execution_id": id, "seq": 0, "client_id": client, "flow_id": flow, "input": c["input"]}));
        others.push((id, c["expect_status"].clone()));
        if rows.len() % 4 == 0 {
            let b = new_id("bombco", "bomb");
            rows.push(json!({"execution_id": b, "seq": 0, "client_id": "bombco", "flow_id": bomb["flow_id"], "input": {}}));
            bombs.push(b);
            let q = new_id("bombco", "quad");
            let xs: Vec<i64> = (1..=3_000).collect();
            rows.push(json!({"execution_id": q, "seq": 0, "client_id": "bombco", "flow_id": quadratic["flow_id"], "input": {"xs": xs}}));
            quads.push(q);
        }
    }
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let ids: Vec<String> = others
        .iter()
        .map(|(i, _)| i.clone())
        .chain(bombs.iter().cloned())
        .chain(quads.iter().cloned())
        .collect();
    let done = stack.wait_all(&ids, DEADLINE).await;
    for (id, want) in &others {
        assert_eq!(&done[id]["status"], want, "{id}: {}", done[id]["reason"]);
    }
    for id in &bombs {
        let e = &done[id];
        assert_eq!(e["status"], "FAILED", "{e}");
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("invalid") && reason.contains("characters long"),
            "{reason}"
        );
    }
    for id in &quads {
        let e = &done[id];
        assert_eq!(e["status"], "FAILED", "{e}");
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("pairs") && reason.contains("budget"),
            "{reason}"
        );
    }
}

/// String leaves of a JSON value (or the text itself when it is not JSON).
fn leaves(text: &str, out: &mut Vec<String>) {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Number(n) => out.push(n.to_string()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => walk(&v, out),
        Err(_) => out.push(text.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_data_and_secrets_never_land_in_an_item_a_row_or_a_log() {
    let stack = Stack::from_env().await;
    let sdk = rulestream_aws::sdk_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let tag = uid();
    // acme-bank's seeded role, a secret of its own for this test, with values found nowhere else.
    let tier = format!("gold-{tag}");
    let limit = 900_000_000_000u64 + u64::from(tag.as_bytes()[0]) * 1_000 + 417;
    let secret_id = format!("rulestream/acme-bank/e2e-data-{tag}");
    sm.create_secret()
        .name(&secret_id)
        .secret_string(json!({"tier": tier, "limit": limit}).to_string())
        .send()
        .await
        .expect("create secret");
    let flow_id = format!("leak-{tag}");
    let flow = json!({"client_id": "acme-bank", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["DONE", "NO"],
        "rules": [
            {"id": "tier", "conditions": [[{"field": "client.tier", "op": "starts_with", "value": "gold-"}]],
             "on": {"true": {"next": true}, "false": {"complete": "NO"}}},
            {"id": "limit", "when": "client.limit > input.amount ? 'ok' : 'over'",
             "on": {"ok": {"next": true, "set": {"checked": "true", "copied": "client.limit"}}, "over": {"complete": "NO"}}},
            // Client data copied into ctx is used by the next hop, and shown nowhere.
            {"id": "echo", "when": "string(ctx.copied)",
             "default": {"complete": "DONE", "actions": [{"type": "add_tag", "tag": "echoed"}]}}]});
    stack
        .register_flow_with_data(&flow, rulestream_e2e::ACME_ROLE, &secret_id)
        .await;

    let id = new_id("acme-bank", "leak");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "acme-bank", "flow_id": flow_id, "input": {"amount": 10}}))
        .await;
    let done = stack.wait_all(std::slice::from_ref(&id), DEADLINE).await;
    let e = &done[&id];
    assert_eq!(e["status"], "DONE", "{e}");
    // The condition's actual value is shown as client data, not the value.
    let step0 = &e["trace"][0];
    assert_eq!(
        step0["explain"]["conditions"][0]["actual"], "<client data>",
        "{step0}"
    );
    assert_eq!(
        step0["explain"]["conditions"][0]["expected"], "gold-",
        "{step0}"
    );

    assert_eq!(e["output"]["copied"], "<client data>", "{e}");
    assert_eq!(e["output"]["checked"], true, "{e}");
    assert_eq!(e["trace"][2]["outcome"], "<client data>", "{e}");

    // Everything the run left: the summary, its steps, its trigger rows (sealed) and the logs.
    let mut everything = e.to_string();
    for s in stack.items_of(&stack.table("steps"), &id).await {
        everything.push_str(&s.to_string());
    }
    let trigger_rows = stack.items_of(&stack.table("trigger"), &id).await;
    assert!(trigger_rows.len() >= 2, "seq 0 and the next hop's row");
    for r in &trigger_rows {
        everything.push_str(&r.to_string());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = our_logs();
    assert!(logs.contains(&id), "the run is in the logs");
    for needle in [tier.clone(), limit.to_string()] {
        assert!(
            !everything.contains(&needle),
            "client value {needle} in an item or row"
        );
        assert!(!logs.contains(&needle), "client value {needle} in a log");
    }

    // No secret value of any client, nor the state key, in any log or in this run's items.
    let mut values = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = sm
            .list_secrets()
            .set_next_token(next.take())
            .send()
            .await
            .expect("list secrets");
        for s in page.secret_list() {
            let name = s.name().unwrap_or_default();
            if !(name.starts_with("rulestream/") || name.contains("-system/")) {
                continue;
            }
            if let Ok(v) = sm.get_secret_value().secret_id(name).send().await
                && let Some(text) = v.secret_string()
            {
                leaves(text, &mut values);
            }
        }
        match page.next_token() {
            Some(t) => next = Some(t.to_string()),
            None => break,
        }
    }
    values.retain(|v| v.len() >= 12);
    assert!(!values.is_empty(), "the stack holds secrets to look for");
    for v in &values {
        assert!(!logs.contains(v.as_str()), "a secret value is in a log");
        assert!(
            !everything.contains(v.as_str()),
            "a secret value is in an item"
        );
    }
    let _ = sm
        .delete_secret()
        .secret_id(&secret_id)
        .force_delete_without_recovery(true)
        .send()
        .await;
}
