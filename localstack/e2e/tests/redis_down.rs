//! With Redis stopped, `fail_open` rules run and the others are `limited`, as the flow says.
//! This stops the stack's Redis, so `make e2e` runs it alone, after the other e2e tests, and it
//! starts Redis again whatever happens.

use std::process::Command;
use std::time::Duration;

use rulestream_e2e::{Stack, new_id, path, redis_cli, repo};
use serde_json::json;

struct RestartRedis;

impl Drop for RestartRedis {
    fn drop(&mut self) {
        let ok = Command::new("bash")
            .arg(repo().join("localstack/up.sh"))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not restart the local stack's Redis: run `bash localstack/up.sh`");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_fail_open_rules_pass_and_others_are_limited() {
    let stack = Stack::from_env().await;
    let flow = json!({"client_id": "e2e", "flow_id": "limits", "version": 1,
        "terminal_statuses": ["PASSED", "LIMITED", "DENIED"],
        "rules": [{"id": "open", "when": "true", "rate_limit": {"per_second": 1000, "burst": 1000, "fail_open": true},
                   "on": {"true": {"next": true}, "limited": {"complete": "LIMITED"}}},
                  {"id": "closed", "when": "true", "rate_limit": {"per_second": 1000, "burst": 1000, "fail_open": false},
                   "on": {"true": {"complete": "PASSED"}, "limited": {"complete": "DENIED", "reason": "limiter down"}}}]});
    stack.register_flow(&flow).await;

    // Redis up: both rules pass.
    let up = new_id("e2e", "redis-up");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": up, "seq": 0, "client_id": "e2e", "flow_id": "limits", "input": {}}))
        .await;
    let done = stack
        .wait_all(std::slice::from_ref(&up), Duration::from_secs(120))
        .await;
    assert_eq!(done[&up]["status"], "PASSED");

    let _restart = RestartRedis;
    let stopped = redis_cli()
        .args(["shutdown", "nosave"])
        .status()
        .expect("redis-cli runs");
    // `shutdown` closes the connection before answering, so its exit code says nothing; check
    // that Redis is really gone.
    let _ = stopped;
    let ping = redis_cli().arg("ping").output().expect("redis-cli runs");
    assert!(
        !String::from_utf8_lossy(&ping.stdout).contains("PONG"),
        "redis is still up"
    );

    let down = new_id("e2e", "redis-down");
    stack
        .trigger(&stack.table("trigger"), &json!({"execution_id": down, "seq": 0, "client_id": "e2e", "flow_id": "limits", "input": {}}))
        .await;
    let done = stack
        .wait_all(std::slice::from_ref(&down), Duration::from_secs(120))
        .await;
    let e = &done[&down];
    assert_eq!(e["status"], "DENIED", "{e}");
    assert_eq!(e["reason"], "limiter down");
    assert_eq!(path(e), vec!["open", "closed"]);
    let outcomes: Vec<&str> = e["trace"]
        .as_array()
        .expect("trace")
        .iter()
        .filter_map(|s| s["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, vec!["true", "limited"]);
}
