//! The support commands of the `rulestream` CLI against the local stack (SPEC section 6): run
//! (with --wait, and its timeout), status, trace, cancel, logs; exit codes 0/1/2/3.

use std::process::Output;

use rulestream_e2e::{Stack, rs};
use serde_json::{Value, json};

fn out_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_status_trace_and_logs() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let flow_id = format!("cli-{tag}");
    let flow = json!({"client_id": "e2e", "flow_id": flow_id, "version": 1,
        "terminal_statuses": ["BIG", "SMALL"],
        "rules": [{"id": "size", "conditions": [[{"field": "input.n", "op": "gte", "value": 10}]],
                   "on": {"true": {"complete": "BIG"}, "false": {"next": true}}},
                  {"id": "small", "when": "true", "on": {"true": {"complete": "SMALL", "set": {"twice": "input.n * 2"}}}}]});
    stack.register_flow(&flow).await;

    let o = rs(&[
        "run",
        "e2e",
        &flow_id,
        "--input",
        r#"{"n": 3}"#,
        "--wait",
        "--timeout",
        "60",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let done = out_json(&o);
    assert_eq!(done["status"], "SMALL", "{done}");
    assert_eq!(done["output"]["twice"], json!(6));
    let id = done["execution_id"].as_str().expect("id").to_string();
    assert!(id.starts_with("e2e:"));

    let st = out_json(&rs(&["status", &id, "--json"]));
    assert_eq!(st["status"], "SMALL");
    assert_eq!(st["flow_version"], json!(1));
    assert_eq!(st["steps_so_far"], json!(2));

    let tr = out_json(&rs(&["trace", &id, "--json"]));
    let steps = tr["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["rule"], "size");
    assert_eq!(steps[0]["outcome"], "false");
    let c = &steps[0]["explain"]["conditions"][0];
    assert_eq!(
        (c["expected"].clone(), c["actual"].clone()),
        (json!(10), json!(3))
    );
    let text = String::from_utf8_lossy(&rs(&["trace", &id]).stdout).to_string();
    assert!(text.contains("fail  input.n gte 10  (actual 3)"), "{text}");

    let logs = out_json(&rs(&[
        "logs", "--client", "e2e", "--flow", &flow_id, "--since", "10m", "--json",
    ]));
    assert!(
        logs.as_array()
            .expect("list")
            .iter()
            .any(|e| e["execution_id"] == id.as_str()),
        "{logs}"
    );
    let none = out_json(&rs(&[
        "logs", "--client", "e2e", "--flow", &flow_id, "--status", "BIG", "--json",
    ]));
    assert_eq!(none, json!([]));

    // Right after a run without --wait, status and trace answer (RUNNING before the orchestrator
    // has picked up the seq 0 row), never "no execution".
    let o = rs(&["run", "e2e", &flow_id, "--input", r#"{"n": 40}"#, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let early = out_json(&o)["execution_id"]
        .as_str()
        .expect("id")
        .to_string();
    for cmd in ["status", "trace"] {
        let o = rs(&[cmd, &early, "--json"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let doc = out_json(&o);
        // `trace --json` is {"execution": summary, "steps"}; `status --json` the summary.
        let st = doc.get("execution").unwrap_or(&doc);
        assert!(
            st["status"] == "RUNNING" || st["status"] == "BIG",
            "{cmd}: {doc}"
        );
    }

    // --wait that times out: exit 3 with a reason; a duplicate id: exit 1.
    let o = rs(&[
        "run",
        "e2e",
        &flow_id,
        "--input",
        r#"{"n": 50}"#,
        "--wait",
        "--timeout",
        "0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("still running"));
    let o = rs(&[
        "run",
        "e2e",
        &flow_id,
        "--input",
        "{}",
        "--execution-id",
        &id,
    ]);
    assert_eq!(o.status.code(), Some(1));
    // Another client's prefix is refused before anything is written.
    let o = rs(&[
        "run",
        "e2e",
        &flow_id,
        "--input",
        "{}",
        "--execution-id",
        "other:x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // An execution that ended FAILED under --wait: exit 1.
    let o = rs(&[
        "run",
        "e2e",
        "no-such-flow",
        "--input",
        "{}",
        "--wait",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out_json(&o)["status"], "FAILED");
    // Its one-line reason is on stderr, also under --json.
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("ended FAILED"), "{err}");
    // Unknown ids.
    assert_eq!(rs(&["status", "e2e:nope-nope"]).status.code(), Some(1));

    // Rerun: a new execution on the original's input, linked by rerun_of; the original unchanged.
    let o = rs(&["rerun", &id, "--same-version", "--wait", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let again = out_json(&o);
    assert_eq!(again["status"], "SMALL");
    assert_eq!(again["output"]["twice"], json!(6));
    let new_id = again["execution_id"].as_str().expect("id").to_string();
    assert_ne!(new_id, id);
    let st = out_json(&rs(&["status", &new_id, "--json"]));
    assert_eq!(st["rerun_of"], json!(id));
    assert_eq!(out_json(&rs(&["status", &id, "--json"]))["status"], "SMALL");
    assert_eq!(rs(&["rerun", "e2e:nope-nope"]).status.code(), Some(1));
    // From a rule: only that step runs, with the context the original had there.
    let o = rs(&["rerun", &id, "--from", "small", "--wait", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let from = out_json(&o);
    assert_eq!(from["status"], "SMALL");
    let tr = out_json(&rs(&[
        "trace",
        from["execution_id"].as_str().expect("id"),
        "--json",
    ]));
    let rules: Vec<&str> = tr["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["rule"].as_str())
        .collect();
    assert_eq!(rules, vec!["small"]);
    // From a step the original never ran: it ends FAILED saying so (exit 1).
    let o = rs(&["rerun", &id, "--from", "99", "--wait", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out_json(&o)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no such step"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_running_execution_and_is_safe_to_repeat() {
    let stack = Stack::from_env().await;
    // A running execution whose next step has not come yet (its summary, as seq 0 writes it).
    let id = format!("e2e:cancel-{}", uuid::Uuid::new_v4().simple());
    let summary = json!({"execution_id": id, "client_id": "e2e", "flow_id": "cycle", "flow_version": 1,
        "status": "RUNNING", "started_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)});
    stack
        .ddb
        .put_item()
        .table_name(stack.table("executions"))
        .set_item(Some(serde_dynamo::to_item(summary).expect("item")))
        .send()
        .await
        .expect("put summary");
    let o = rs(&["cancel", &id, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out_json(&o)["status"], "CANCELLED");
    let e = stack.execution(&id).await.expect("summary");
    assert_eq!(e["status"], "CANCELLED");
    assert!(e["finished_at"].is_string());
    let steps = stack.items_of(&stack.table("steps"), &id).await;
    assert_eq!(steps.len(), 1, "the stop marker");
    assert_eq!(steps[0]["stop"], "CANCELLED");
    // Again: still CANCELLED, exit 0; unknown: exit 1.
    assert_eq!(rs(&["cancel", &id]).status.code(), Some(0));
    assert_eq!(rs(&["cancel", "e2e:never-was"]).status.code(), Some(1));
    // Under --json the document is on stdout and the one-line reason on stderr.
    let o = rs(&["cancel", "e2e:never-was", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out_json(&o)["error"]["code"], "not_found");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("no execution"), "{err}");
    // Every command under --json leaves a document on stdout, also when the id is unknown.
    for cmd in ["status", "trace"] {
        let o = rs(&[cmd, "e2e:never-was", "--json"]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let doc = out_json(&o);
        assert_eq!(doc["error"]["code"], "not_found", "{cmd}: {doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("e2e:never-was")),
            "{cmd}: {doc}"
        );
    }
}

/// Runs `cmd` in a detached tmux session on a server of its own (so it gets this process's
/// environment) and answers the screen as a person sees it, once it shows every one of `want`
/// (or after `wait`, whatever it shows then).
fn tmux_screen(socket: &str, cmd: &str, want: &[&str], wait: std::time::Duration) -> String {
    let st = std::process::Command::new("tmux")
        .args([
            "-L",
            socket,
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            cmd,
        ])
        .status()
        .expect("tmux runs");
    assert!(st.success(), "tmux new-session");
    let start = std::time::Instant::now();
    let mut screen = String::new();
    while start.elapsed() < wait {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let out = std::process::Command::new("tmux")
            .args(["-L", socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .expect("capture-pane");
        screen = String::from_utf8_lossy(&out.stdout).to_string();
        if want.iter().all(|w| screen.contains(w)) {
            break;
        }
    }
    let _ = std::process::Command::new("tmux")
        .args(["-L", socket, "kill-server"])
        .status();
    screen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_logs_and_run_wait_as_a_person_sees_them() {
    let stack = Stack::from_env().await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let flow_id = format!("top-{tag}");
    // A client of its own: the view then shows only this test's executions.
    let client = format!("t{tag}");
    stack
        .register_flow(
            &json!({"client_id": client, "flow_id": flow_id, "version": 1,
            "terminal_statuses": ["DONE"],
            "rules": [{"id": "one", "when": "true", "on": {"true": {"next": true}}},
                      {"id": "two", "when": "true", "on": {"true": {"complete": "DONE"}}}]}),
        )
        .await;
    // 500 executions: enough for `logs` to page through the index (DynamoDB pages of 1 MB).
    let rows: Vec<Value> = (0..500)
        .map(|i| {
            json!({"execution_id": format!("{client}:{flow_id}-{i}"), "seq": 0, "client_id": client,
                        "flow_id": flow_id, "input": {"i": i}})
        })
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["execution_id"].as_str().expect("id").to_string())
        .collect();
    stack.trigger_all(&stack.table("trigger"), &rows).await;
    let ended = stack
        .wait_all(&ids, std::time::Duration::from_secs(300))
        .await;
    let not_done: Vec<String> = ended
        .values()
        .filter(|e| e["status"] != "DONE")
        .map(|e| format!("{} {} ({})", e["execution_id"], e["status"], e["reason"]))
        .collect();
    assert!(
        not_done.is_empty(),
        "every execution ends DONE: {not_done:?}"
    );

    // logs without --client: every client's executions, merged newest first.
    let all = out_json(&rs(&[
        "logs", "--flow", &flow_id, "--since", "10m", "--json",
    ]));
    let listed: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["execution_id"].as_str())
        .collect();
    assert_eq!(listed.len(), 50, "the default page of 50: {all}");
    let started: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["started_at"].as_str())
        .collect();
    assert!(started.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // top, as JSON and as a person sees it.
    let frame = out_json(&rs(&[
        "top", "--client", &client, "--once", "--json", "--window", "600",
    ]));
    assert_eq!(
        frame["by_flow"][format!("{client}/{flow_id}")],
        json!(500),
        "{frame}"
    );
    assert_eq!(frame["by_status"]["DONE"], json!(500), "{frame}");
    // All 500, newest first, each once.
    let every = out_json(&rs(&[
        "logs", "--client", &client, "--since", "1h", "--limit", "1000", "--json",
    ]));
    let ids_listed: std::collections::HashSet<&str> = every
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["execution_id"].as_str())
        .collect();
    assert_eq!(ids_listed.len(), 500);
    assert_eq!(every.as_array().map(Vec::len), Some(500));
    let done_only = out_json(&rs(&[
        "logs", "--client", &client, "--status", "DONE", "--flow", &flow_id, "--limit", "7",
        "--json",
    ]));
    assert_eq!(done_only.as_array().map(Vec::len), Some(7));
    assert!(frame["step_ms"]["p50"].is_number(), "{frame}");
    let cli_path = rulestream_e2e::cli()
        .get_program()
        .to_string_lossy()
        .to_string();
    let screen = tmux_screen(
        &format!("rs-top-{tag}"),
        &format!("{cli_path} top --client {client} --interval 1 --window 600"),
        &["rulestream top", "DONE"],
        std::time::Duration::from_secs(30),
    );
    assert!(screen.contains("rulestream top"), "{screen}");
    assert!(screen.contains(&format!("{client}/{flow_id}")), "{screen}");
    assert!(
        screen.contains("STATUS") && screen.contains("DONE"),
        "{screen}"
    );

    // run --wait on a terminal: the final line names the status.
    let screen = tmux_screen(
        &format!("rs-run-{tag}"),
        &format!(
            "{cli_path} run {client} {flow_id} --input '{{\"i\": 99}}' --wait --timeout 90; sleep 60"
        ),
        &["DONE"],
        std::time::Duration::from_secs(90),
    );
    assert!(screen.contains("DONE"), "{screen}");
}
