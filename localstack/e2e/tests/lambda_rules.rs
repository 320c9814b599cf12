//! `lambda` master rules (SPEC section 2) on the local stack: the orchestrator invokes the real
//! example rule function (`functions/rules/score`, served by `cargo lambda watch`, reached through
//! the SDK's endpoint setting `AWS_ENDPOINT_URL_LAMBDA`); a function that times out, answers
//! garbage, fails or does not exist is an evaluation error, so `on_error` decides.

use std::time::Duration;

use rulestream_e2e::{Stack, new_id};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_rules_decide_and_their_failures_take_on_error() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let rule = |suffix: &str, function: &str, params: serde_json::Value, timeout: u64| {
        json!({"rule_id": format!("score_{suffix}_{tag}"), "version": 1, "kind": "lambda",
               "function": function, "params": params, "timeout_ms": timeout,
               "description": "example rule function"})
    };
    let rules = [
        rule(
            "ok",
            "rulestream-rule-score",
            json!({"threshold": 100}),
            10_000,
        ),
        rule(
            "slow",
            "rulestream-rule-score",
            json!({"threshold": 100, "behave": "sleep", "sleep_ms": 4000}),
            1_000,
        ),
        rule(
            "junk",
            "rulestream-rule-score",
            json!({"behave": "garbage"}),
            10_000,
        ),
        rule(
            "fail",
            "rulestream-rule-score",
            json!({"behave": "fail"}),
            10_000,
        ),
        rule("gone", "rulestream-rule-missing", json!({}), 3_000),
    ];
    stack.publish_catalog(&rules).await;

    let mut cases = Vec::new();
    for (suffix, amount, want, why) in [
        ("ok", 300, "HIGH", None),
        ("ok", 50, "LOW", None),
        (
            "slow",
            300,
            "ERRORED",
            Some("did not answer within 1000 ms"),
        ),
        ("junk", 300, "ERRORED", Some("no `outcome`")),
        ("fail", 300, "ERRORED", Some("failed")),
        ("gone", 300, "ERRORED", Some("rulestream-rule-missing")),
    ] {
        let flow_id = format!("lambda-{suffix}-{tag}");
        let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
            "terminal_statuses": ["HIGH", "LOW", "ERRORED"],
            "rules": [{"id": "score", "use": format!("score_{suffix}_{tag}"),
                       "on": {"high": {"complete": "HIGH"}, "low": {"complete": "LOW"}},
                       "on_error": {"complete": "ERRORED", "reason": "the rule function failed"}}]});
        stack.register_flow(&flow).await;
        let id = new_id("e2e", &format!("lambda-{suffix}"));
        stack
            .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": {"amount": amount}}))
            .await;
        cases.push((id, amount, want, why));
    }
    let ids: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let done = stack.wait_all(&ids, Duration::from_secs(240)).await;
    for (id, amount, want, why) in &cases {
        let e = &done[id];
        assert_eq!(e["status"], *want, "{id}: {e}");
        let step = &e["trace"][0];
        match why {
            None => {
                assert_eq!(
                    e["output"]["score"].as_f64(),
                    Some(f64::from(*amount) / 100.0),
                    "{e}"
                );
                assert_eq!(step["explain"]["type"], "master", "{step}");
            }
            Some(why) => {
                let message = step["explain"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(why), "{id}: {message}");
                assert!(message.contains("score_"), "names the rule: {message}");
            }
        }
    }
}

/// One flow, two languages: the Rust `lambda` rule decides the first branch, the Python `http`
/// rule (functions/rules/risk, served by `localstack/e2e.sh`) the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_lambda_rule_and_a_python_http_rule_decide_one_flow() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let risk_url = std::env::var("RULESTREAM_RULE_RISK_URL")
        .expect("RULESTREAM_RULE_RISK_URL is set by localstack/e2e.sh");
    stack
        .publish_catalog(&[
        json!({"rule_id": format!("rust_score_{tag}"), "version": 1, "kind": "lambda",
               "function": "rulestream-rule-score", "params": {"threshold": 100}, "timeout_ms": 10000,
               "description": "Rust example"}),
        json!({"rule_id": format!("py_risk_{tag}"), "version": 1, "kind": "http", "url": risk_url,
               "params": {"high_risk_countries": ["XX"], "max_amount": 1000}, "description": "Python example"}),
])
        .await;
    let flow_id = format!("two-languages-{tag}");
    let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["LOW", "REVIEW", "APPROVED", "ERRORED"],
        "rules": [
            {"id": "score", "use": format!("rust_score_{tag}"),
             "on": {"high": {"next": true}, "low": {"complete": "LOW"}}, "on_error": {"complete": "ERRORED"}},
            {"id": "risk", "use": format!("py_risk_{tag}"),
             "on": {"risky": {"complete": "REVIEW"}, "safe": {"complete": "APPROVED"}}, "on_error": {"complete": "ERRORED"}}]});
    stack.register_flow(&flow).await;
    let mut cases = Vec::new();
    for (input, want, path) in [
        (
            json!({"amount": 300, "country": "XX"}),
            "REVIEW",
            vec!["score", "risk"],
        ),
        (
            json!({"amount": 300, "country": "FR"}),
            "APPROVED",
            vec!["score", "risk"],
        ),
        (json!({"amount": 50, "country": "XX"}), "LOW", vec!["score"]),
    ] {
        let id = new_id("e2e", "two-languages");
        stack
            .trigger(&stack.table("trigger"), &json!({"execution_id": id, "seq": 0, "client_id": "e2e", "flow_id": flow_id, "input": input}))
            .await;
        cases.push((id, want, path));
    }
    let ids: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let done = stack.wait_all(&ids, Duration::from_secs(120)).await;
    for (id, want, path) in &cases {
        let e = &done[id];
        assert_eq!(e["status"], *want, "{e}");
        assert_eq!(rulestream_e2e::path(e), *path, "{e}");
        if path.len() == 2 {
            assert!(
                e["output"]["risk"].as_f64().is_some(),
                "the Python rule set `risk`: {e}"
            );
            assert_eq!(
                e["output"]["score"].as_f64(),
                Some(3.0),
                "the Rust rule set `score`: {e}"
            );
        }
    }
}
