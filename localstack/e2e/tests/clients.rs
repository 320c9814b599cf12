//! Onboarding and redrive on the local stack (SPEC section 6): `client add` registers a flow
//! and hands out an API key, the first `upload` makes it serve, `client rotate-key` keeps the old
//! key valid until `--finish`, `client disable` stops new executions, and `rerun --failed`
//! redrives every FAILED execution once, however often it runs.

use std::time::Duration;

use rulestream_e2e::api::call;
use rulestream_e2e::{Stack, ok_json, rs};
use serde_json::{Value, json};

fn flow_file(client: &str, version: u64, when: &str) -> std::path::PathBuf {
    let flow = json!({"client_id": client, "flow_id": "orders", "version": version,
        "terminal_statuses": ["OK", "LOW"],
        "rules": [{"id": "ratio", "when": when, "on": {"true": {"complete": "OK"}, "false": {"complete": "LOW"}}}]});
    let p = std::env::temp_dir().join(format!("{client}-orders-v{version}.json"));
    std::fs::write(&p, flow.to_string()).expect("write flow");
    p
}

fn start(key: &str, client: &str, input: Value) -> Value {
    let body = json!({"client_id": client, "flow_id": "orders", "input": input, "wait": {"timeout_ms": 20000}});
    let (status, v) = call("POST", "/v1/executions", Some(key), Some(&body.to_string()));
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboard_rotate_disable_and_redrive() {
    let stack = Stack::from_env().await;
    let client = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);

    let added = ok_json(&rs(&["client", "add", &client, "orders", "--json"]));
    let key1 = added["api_key"]
        .as_str()
        .expect("a new client gets a key")
        .to_string();
    assert!(key1.starts_with("rs_"));
    let again = rs(&["client", "add", &client, "orders"]);
    assert_eq!(again.status.code(), Some(1), "registered twice");
    // A malformed client id is bad usage: exit 2, named on one line.
    let bad = rs(&["client", "add", "Not_A_Client", "orders"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("client id"));
    // Another flow of the same client shares its keys.
    let second = ok_json(&rs(&["client", "add", &client, "returns", "--json"]));
    assert!(second["api_key"].is_null(), "{second}");

    // The first upload serves everyone. v1 divides by input.d: zero fails the execution.
    let up = ok_json(&rs(&[
        "upload",
        flow_file(&client, 1, "input.n / input.d > 1")
            .to_str()
            .expect("path"),
        "--json",
    ]));
    assert_eq!(up["release"]["stable"], json!(1), "{up}");

    let ok = start(&key1, &client, json!({"n": 4, "d": 1}));
    assert_eq!(ok["status"], "OK", "{ok}");
    let mut failed = Vec::new();
    for n in 0..3 {
        let f = start(&key1, &client, json!({"n": n, "d": 0}));
        assert_eq!(f["status"], "FAILED", "{f}");
        failed.push(f["execution_id"].as_str().expect("id").to_string());
    }
    // Another client's key opens nothing of this client's.
    let (status, _) = call(
        "GET",
        &format!("/v1/executions/{}", failed[0]),
        Some("demo-key-shopco"),
        None,
    );
    assert_eq!(status, 404, "another client's execution is not found");

    // Rotation: both keys work until --finish, then only the new one.
    let rotated = ok_json(&rs(&["client", "rotate-key", &client, "--json"]));
    let key2 = rotated["api_key"].as_str().expect("new key").to_string();
    assert_eq!(rotated["valid_keys"], json!(2));
    for k in [&key1, &key2] {
        // A key the API has not seen makes it re-read the keys (at most once a second).
        let mut answer = (0, Value::Null);
        for _ in 0..10 {
            answer = call(
                "GET",
                &format!("/v1/executions/{}", failed[0]),
                Some(k),
                None,
            );
            if answer.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(answer.0, 200, "{}", answer.1);
    }
    let finished = ok_json(&rs(&[
        "client",
        "rotate-key",
        &client,
        "--finish",
        "--json",
    ]));
    assert_eq!(finished["valid_keys"], json!(1));
    // The API caches keys for up to 30 s.
    tokio::time::sleep(Duration::from_secs(32)).await;
    let (status, _) = call(
        "GET",
        &format!("/v1/executions/{}", failed[0]),
        Some(&key1),
        None,
    );
    assert_eq!(status, 401, "the old key no longer opens anything");
    let (status, _) = call(
        "GET",
        &format!("/v1/executions/{}", failed[0]),
        Some(&key2),
        None,
    );
    assert_eq!(status, 200);

    // Fix the flow, promote it, and redrive: each FAILED execution is rerun once.
    ok_json(&rs(&[
        "upload",
        flow_file(&client, 2, "input.d == 0 || input.n / input.d > 1")
            .to_str()
            .expect("path"),
        "--json",
    ]));
    ok_json(&rs(&["promote", &client, "orders", "--json"]));
    let redrive = ok_json(&rs(&[
        "rerun", "--failed", "--client", &client, "--since", "1h", "--json",
    ]));
    let started = redrive["started"].as_array().expect("started").clone();
    assert_eq!(started.len(), 3, "{redrive}");
    let twice = ok_json(&rs(&[
        "rerun", "--failed", "--client", &client, "--since", "1h", "--json",
    ]));
    assert_eq!(twice["started"], json!([]), "{twice}");
    assert_eq!(twice["already_redriven"], json!(3));
    let ids: Vec<String> = started
        .iter()
        .map(|s| s["execution_id"].as_str().expect("id").to_string())
        .collect();
    let done = stack.wait_all(&ids, Duration::from_secs(120)).await;
    for (s, id) in started.iter().zip(&ids) {
        let e = &done[id];
        assert_eq!(e["status"], "OK", "{e}");
        assert_eq!(e["flow_version"], json!(2));
        assert_eq!(e["rerun_of"], s["rerun_of"]);
        assert!(failed.contains(&e["rerun_of"].as_str().unwrap_or("").to_string()));
    }

    // Disabled: new executions end FAILED saying so.
    ok_json(&rs(&["client", "disable", &client, "orders", "--json"]));
    let o = rs(&[
        "run",
        &client,
        "orders",
        "--input",
        r#"{"n": 4, "d": 1}"#,
        "--wait",
        "--timeout",
        "60",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        v["reason"].as_str().unwrap_or("").contains("disabled"),
        "{v}"
    );
    ok_json(&rs(&["client", "enable", &client, "--json"]));
}
