//! The step loop against in-memory fakes of its ports (the real adapters are exercised by the e2e
//! suite on the local stack): redelivery, forged rows, client identity, the outbox, the sweep.

mod common;
mod fuzzing;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rulestream_core::chain::{Chain, Retry, Settings, sweep};
use rulestream_core::execution::{ClientFlow, DataSource, Release};
use rulestream_core::ports::{
    Deliveries, Delivery, EffectError, FlowSource, Journal, Sealer, StoreError,
};
use rulestream_core::{Catalog, CompiledFlow, DryRun, validate_value};
use serde_json::{Value, json};

#[derive(Default)]
struct Flows {
    clients: HashMap<(String, String), ClientFlow>,
    versions: HashMap<u64, Value>,
    data_reads: Mutex<usize>,
}

impl FlowSource for Flows {
    async fn client_flow(&self, c: &str, f: &str) -> Result<ClientFlow, StoreError> {
        self.clients
            .get(&(c.to_string(), f.to_string()))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("no client `{c}` with flow `{f}`")))
    }
    async fn flow_version(
        &self,
        _c: &str,
        _f: &str,
        v: u64,
    ) -> Result<Arc<CompiledFlow>, StoreError> {
        let doc = self
            .versions
            .get(&v)
            .ok_or_else(|| StoreError::NotFound(format!("no v{v}")))?;
        validate_value(doc, &Catalog::new())
            .flow
            .map(Arc::new)
            .ok_or_else(|| StoreError::Invalid(format!("v{v} is invalid")))
    }
    async fn client_data(&self, _c: &str, _s: &DataSource) -> Result<Value, StoreError> {
        *self.data_reads.lock().expect("lock") += 1;
        Ok(json!({"tier": "gold", "secret_limit": 123456789}))
    }
}

/// Tables in memory: summaries, steps by (id, seq), trigger rows by table.
#[derive(Default)]
struct Mem {
    summaries: Mutex<HashMap<String, Value>>,
    steps: Mutex<BTreeMap<(String, u64), Value>>,
    rows: Mutex<Vec<(String, Value)>>,
    fail_next_step_put: Mutex<bool>,
}

impl Journal for Mem {
    async fn start(&self, summary: &Value) -> Result<bool, StoreError> {
        let id = summary["execution_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut s = self.summaries.lock().expect("lock");
        if s.contains_key(&id) {
            return Ok(false);
        }
        s.insert(id, summary.clone());
        Ok(true)
    }
    async fn summary(&self, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.summaries.lock().expect("lock").get(id).cloned())
    }
    async fn finish(&self, id: &str, finish: &Value) -> Result<bool, StoreError> {
        let mut s = self.summaries.lock().expect("lock");
        let e = s
            .entry(id.to_string())
            .or_insert_with(|| json!({"execution_id": id, "status": "RUNNING"}));
        if e["status"] != "RUNNING" {
            return Ok(false);
        }
        // As DynamoDB: an item over 400 KB is refused, for good.
        if finish.to_string().len() > 400_000 {
            return Err(StoreError::Invalid(
                "executions: ValidationException: Item size has exceeded the maximum allowed size"
                    .into(),
            ));
        }
        for (k, v) in finish.as_object().expect("object") {
            e[k] = v.clone();
        }
        if let Some(o) = e.as_object_mut() {
            o.remove("running_shard");
        }
        Ok(true)
    }
    async fn put_step(&self, step: &Value) -> Result<bool, StoreError> {
        if std::mem::take(&mut *self.fail_next_step_put.lock().expect("lock")) {
            return Err(StoreError::Transient("throttled".into()));
        }
        // As DynamoDB: an item over 400 KB is refused, for good.
        if step.to_string().len() > 400_000 {
            return Err(StoreError::Invalid(
                "steps: ValidationException: Item size has exceeded the maximum allowed size"
                    .into(),
            ));
        }
        let key = (
            step["execution_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            step["seq"].as_u64().unwrap_or(0),
        );
        let mut s = self.steps.lock().expect("lock");
        if s.contains_key(&key) {
            return Ok(false);
        }
        s.insert(key, step.clone());
        Ok(true)
    }
    async fn step(&self, id: &str, seq: u64) -> Result<Option<Value>, StoreError> {
        Ok(self
            .steps
            .lock()
            .expect("lock")
            .get(&(id.to_string(), seq))
            .cloned())
    }
    async fn steps(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .steps
            .lock()
            .expect("lock")
            .iter()
            .filter(|((i, _), _)| i == id)
            .map(|(_, v)| v.clone())
            .collect())
    }
    async fn last_step(&self, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.steps(id).await?.pop())
    }
    async fn put_row(&self, table: &str, row: &Value) -> Result<bool, StoreError> {
        let mut rows = self.rows.lock().expect("lock");
        if rows.iter().any(|(t, r)| {
            t == table && r["execution_id"] == row["execution_id"] && r["seq"] == row["seq"]
        }) {
            return Ok(false);
        }
        rows.push((table.to_string(), row.clone()));
        Ok(true)
    }
    async fn row(&self, table: &str, id: &str, seq: u64) -> Result<Option<Value>, StoreError> {
        Ok(self
            .rows
            .lock()
            .expect("lock")
            .iter()
            .find(|(t, r)| t == table && r["execution_id"] == id && r["seq"] == seq)
            .map(|(_, r)| r.clone()))
    }
    async fn claim_delivery(
        &self,
        id: &str,
        seq: u64,
        attempt: u32,
        shard: &str,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.steps.lock().expect("lock");
        let Some(step) = s.get_mut(&(id.to_string(), seq)) else {
            return Ok(false);
        };
        if step["delivery_attempts"].as_u64().unwrap_or(0) != u64::from(attempt - 1) {
            return Ok(false);
        }
        // A later attempt only while something is still pending (as the DynamoDB condition).
        if attempt > 1 && step.get("pending_due").is_none_or(Value::is_null) {
            return Ok(false);
        }
        step["delivery_attempts"] = json!(attempt);
        step["pending_due"] = json!(lease);
        step["pending_shard"] = json!(shard);
        Ok(true)
    }
    async fn record_delivery(
        &self,
        id: &str,
        seq: u64,
        attempt: u32,
        actions: &Value,
        due: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut s = self.steps.lock().expect("lock");
        let Some(step) = s.get_mut(&(id.to_string(), seq)) else {
            return Ok(false);
        };
        if attempt > 0 && step["delivery_attempts"].as_u64() != Some(u64::from(attempt)) {
            return Ok(false);
        }
        step["actions"] = actions.clone();
        match due {
            Some(d) => step["pending_due"] = json!(d),
            None => {
                let o = step.as_object_mut().expect("object");
                for k in ["pending_due", "pending_shard", "outbox", "webhook_body"] {
                    o.remove(k);
                }
            }
        }
        Ok(true)
    }
    async fn due_deliveries(
        &self,
        shard: &str,
        now_ms: i64,
        _limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .steps
            .lock()
            .expect("lock")
            .values()
            .filter(|s| {
                s["pending_shard"] == shard
                    && s["pending_due"].as_i64().is_some_and(|d| d <= now_ms)
            })
            .cloned()
            .collect())
    }
    async fn running_before(
        &self,
        shard: &str,
        before: &str,
        _limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        Ok(self
            .summaries
            .lock()
            .expect("lock")
            .values()
            .filter(|s| {
                s["running_shard"] == shard && s["started_at"].as_str().is_some_and(|t| t <= before)
            })
            .cloned()
            .collect())
    }
}

/// A toy sealer: "sealed:" + hex(aad) + ":" + plaintext. It authenticates nothing cryptographically
/// but keeps the contract: what it did not seal, or sealed for another row, does not open.
struct ToySealer;

impl Sealer for ToySealer {
    async fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<String, StoreError> {
        Ok(format!(
            "sealed:{}:{}",
            hex(aad),
            String::from_utf8_lossy(plain)
        ))
    }
    async fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, StoreError> {
        let prefix = format!("sealed:{}:", hex(aad));
        sealed
            .strip_prefix(&prefix)
            .map(|p| p.as_bytes().to_vec())
            .ok_or_else(|| StoreError::Invalid("does not open".into()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records deliveries; answers "unavailable" `down` times first.
#[derive(Default)]
struct Hooks {
    sent: Mutex<Vec<(String, String)>>,
    down: Mutex<u32>,
    /// The `timeout_ms` of every attempt, in order.
    waits: Mutex<Vec<Option<u64>>>,
}

impl Deliveries for Hooks {
    async fn deliver(&self, d: &Delivery) -> Result<(), EffectError> {
        self.waits.lock().expect("lock").push(d.timeout_ms);
        {
            let mut down = self.down.lock().expect("lock");
            if *down > 0 {
                *down -= 1;
                return Err(EffectError::Unavailable(
                    "receiver refused the connection".into(),
                ));
            }
        }
        self.sent
            .lock()
            .expect("lock")
            .push((d.idempotency_key.clone(), d.body.clone()));
        Ok(())
    }
}

type C = Chain<Flows, Mem, DryRun, Hooks, ToySealer>;

fn flow() -> Value {
    json!({"client_id": "acme", "flow_id": "f", "version": 1, "terminal_statuses": ["OK", "NO"],
           "rules": [{"id": "a", "when": "input.n > 1", "on": {"false": {"complete": "NO"}}},
                     {"id": "b", "conditions": [[{"field": "client.tier", "op": "eq", "value": "gold"}]],
                      "on": {"true": {"complete": "OK", "set": {"limit": "client.secret_limit"},
                      "actions": [{"type": "call_webhook", "url": "http://127.0.0.1:1/hook/secret-token?sig=x"}, {"type": "add_tag", "tag": "t"}]}}}]})
}

fn chain() -> C {
    let mut flows = Flows::default();
    flows.clients.insert(
        ("acme".into(), "f".into()),
        ClientFlow {
            client_id: "acme".into(),
            flow_id: "f".into(),
            enabled: true,
            release: Release {
                generation: 1,
                ..Release::stable_only(1)
            },
            data_source: Some(DataSource {
                role_arn: "arn:role".into(),
                secret_id: "s".into(),
            }),
            quota: None,
        },
    );
    flows.versions.insert(1, flow());
    flows.versions.insert(2, json!({"client_id": "acme"}));
    let settings = Settings {
        delivery_backoff_ms: vec![0; 7],
        delivery_lease_ms: 0,
        stall_secs: 0,
        ..Settings::default()
    };
    Chain {
        flows,
        journal: Mem::default(),
        effects: DryRun,
        deliveries: Hooks::default(),
        sealer: ToySealer,
        settings,
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Runs every row the chain wrote until none is left (`times` deliveries of each).
fn drain(c: &C, times: usize) {
    for _ in 0..50 {
        let rows: Vec<(String, Value)> = std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
        if rows.is_empty() {
            return;
        }
        for (table, row) in rows {
            for _ in 0..times {
                assert_eq!(block(c.run_row(Some(&table), row.clone())), Ok(()));
            }
        }
    }
}

fn summary(c: &C, id: &str) -> Value {
    c.journal
        .summaries
        .lock()
        .expect("lock")
        .get(id)
        .cloned()
        .expect("summary exists")
}

fn start(id: &str, input: Value) -> Value {
    json!({"execution_id": id, "seq": 0, "client_id": "acme", "flow_id": "f", "input": input})
}

#[test]
fn a_chain_runs_to_its_end_once_even_when_every_record_comes_twice() {
    for times in [1, 2] {
        let c = chain();
        for _ in 0..times {
            assert_eq!(
                block(c.run_row(None, start("acme:x1", json!({"n": 5})))),
                Ok(())
            );
        }
        drain(&c, times);
        let s = summary(&c, "acme:x1");
        assert_eq!(s["status"], "OK");
        let rules: Vec<&str> = s["trace"]
            .as_array()
            .expect("trace")
            .iter()
            .filter_map(|t| t["rule"].as_str())
            .collect();
        assert_eq!(rules, vec!["a", "b"]);
        assert_eq!(s["tags"], json!(["t"]));
        assert!(s.get("running_shard").is_none());
        // One delivery, with its key; the URL in the trace is scheme://host:port only.
        let sent = c.deliveries.sent.lock().expect("lock").clone();
        assert_eq!(sent.len(), 1, "times={times}");
        assert_eq!(sent[0].0, "acme:x1:1:0");
        let body: Value = serde_json::from_str(&sent[0].1).expect("a JSON body");
        assert_eq!(body["idempotency_key"], "acme:x1:1:0");
        assert_eq!(body["execution"]["id"], "acme:x1");
        assert_eq!(
            (&body["rule"], &body["status"]),
            (&json!("b"), &json!("OK"))
        );
        // The summary is written before the last step's deliveries go out (a slow receiver never
        // delays the end); the step item records what happened.
        let action = &s["trace"][1]["actions"][0];
        assert_eq!(action["url"], "http://127.0.0.1:1");
        assert_eq!(action["delivery"]["status"], "pending");
        let step = c.journal.step_sync("acme:x1", 1);
        assert_eq!(step["actions"][0]["delivery"]["status"], "delivered");
        assert_eq!(step["actions"][0]["url"], "http://127.0.0.1:1");
        // Client data: read once at seq 0 and carried; shown as <client data> in explain.
        assert_eq!(*c.flows.data_reads.lock().expect("lock"), times);
        assert_eq!(
            s["trace"][1]["explain"]["conditions"][0]["actual"],
            "<client data>"
        );
        // The trigger rows after seq 0 hold no input or client value in clear.
        assert!(s.get("outbox").is_none());
    }
}

#[test]
fn rows_after_seq_0_are_sealed_and_forged_ones_never_run() {
    let c = chain();
    block(c.run_row(None, start("acme:s1", json!({"n": 5})))).expect("start");
    let rows = c.journal.rows.lock().expect("lock").clone();
    assert_eq!(rows.len(), 1);
    let row = &rows[0].1;
    assert!(row.get("input").is_none() && row.get("state").is_none());
    assert!(row["sealed"].as_str().is_some());

    let steps_before = c.journal.steps.lock().expect("lock").len();
    // A forged seq 1 row: unsealed state, another client's data source, a webhook.
    let forged = [
        json!({"execution_id": "acme:s1", "seq": 1, "client_id": "acme", "flow_id": "f", "flow_version": 1,
               "input": {"n": 5}, "state": {"seq": 1, "rule": "b"}, "data_source": {"role_arn": "arn:other", "secret_id": "other"}}),
        // A genuine seal moved to another execution.
        {
            let mut r = row.clone();
            r["execution_id"] = json!("acme:other");
            r
        },
        // A genuine seal with its version changed.
        {
            let mut r = row.clone();
            r["flow_version"] = json!(2);
            r
        },
        json!({"execution_id": "acme:s9", "seq": 3, "sealed": "garbage", "client_id": "acme", "flow_id": "f", "flow_version": 1}),
    ];
    let reads = *c.flows.data_reads.lock().expect("lock");
    for f in forged {
        assert_eq!(block(c.run_row(None, f)), Ok(()), "ignored, not retried");
    }
    assert_eq!(
        c.journal.steps.lock().expect("lock").len(),
        steps_before,
        "nothing decided"
    );
    assert_eq!(
        *c.flows.data_reads.lock().expect("lock"),
        reads,
        "no client data read"
    );
    assert!(
        c.deliveries.sent.lock().expect("lock").is_empty(),
        "nothing delivered"
    );
    assert_eq!(
        summary(&c, "acme:s1")["status"],
        "RUNNING",
        "the execution is untouched"
    );
    assert!(
        !c.journal
            .summaries
            .lock()
            .expect("lock")
            .contains_key("acme:other")
    );
}

/// A row the orchestrator did not write, placed where the chain is going next: the chain cannot
/// write its own row there, and ends `FAILED` saying so at once (not 15 minutes later, as an
/// execution that made no progress).
#[test]
fn a_forged_row_in_the_chains_way_ends_the_execution_at_once() {
    let c = chain();
    let table = c.settings.trigger_table.clone();
    let forged = json!({"execution_id": "acme:ahead", "seq": 1, "sealed": "garbage",
        "client_id": "acme", "flow_id": "f", "flow_version": 1});
    assert_eq!(block(c.journal.put_row(&table, &forged)), Ok(true));
    block(c.run_row(None, start("acme:ahead", json!({"n": 5})))).expect("start");
    let s = summary(&c, "acme:ahead");
    assert_eq!(s["status"], "FAILED", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("trigger row 1") && r.contains("not written by rulestream")),
        "{s}"
    );
}

/// Several webhooks of one step keep one copy of the context they send (a step item must stay
/// under 400 KB with an output near its bound), each body with its own idempotency key.
#[test]
fn the_webhooks_of_a_step_share_one_copy_of_their_body() {
    let mut c = chain();
    let hooks: Vec<Value> = (0..7)
        .map(|i| json!({"type": "call_webhook", "url": format!("http://127.0.0.1:1/h{i}")}))
        .collect();
    c.flows.versions.insert(4, json!({"client_id": "acme", "flow_id": "f", "version": 4,
        "terminal_statuses": ["OK"],
        "rules": [{"id": "hook", "when": "true",
                   "on": {"true": {"complete": "OK", "set": {"big": "input.blob"}, "actions": hooks}}}]}));
    let mut row = start("acme:hooks", json!({"blob": "b".repeat(60_000)}));
    row["flow_version"] = json!(4);
    block(c.run_row(None, row)).expect("start");
    assert_eq!(summary(&c, "acme:hooks")["status"], "OK");
    let sent = c.deliveries.sent.lock().expect("lock").clone();
    assert_eq!(sent.len(), 7);
    for (i, (key, body)) in sent.iter().enumerate() {
        let body: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(key, &format!("acme:hooks:0:{i}"));
        assert_eq!(body["idempotency_key"], json!(key));
        assert_eq!(body["output"]["big"].as_str().map(str::len), Some(60_000));
    }
}

/// A summary too big for DynamoDB (here, its tags) is replaced by a small `FAILED` one that
/// keeps the ends of the trace and says why.
#[test]
fn a_summary_too_big_to_record_ends_as_a_small_failed_one() {
    let mut c = chain();
    // Each step (its actions) fits in 400 KB; the summary (the tags of both) does not.
    let tags = |from: usize| -> Vec<Value> {
        (from..from + 50)
            .map(|i| json!({"type": "add_tag", "tag": format!("{i}-{}", "x".repeat(4500))}))
            .collect()
    };
    c.flows.versions.insert(3, json!({"client_id": "acme", "flow_id": "f", "version": 3,
        "terminal_statuses": ["OK"],
        "rules": [{"id": "one", "when": "true", "on": {"true": {"next": true, "actions": tags(0)}}},
                  {"id": "two", "when": "true", "on": {"true": {"complete": "OK", "actions": tags(50)}}}]}));
    let mut row = start("acme:huge", json!({}));
    row["flow_version"] = json!(3);
    block(c.run_row(None, row)).expect("start");
    drain(&c, 1);
    let s = summary(&c, "acme:huge");
    assert_eq!(s["status"], "FAILED", "{s}");
    assert!(
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot record the end (OK)")),
        "{s}"
    );
    assert_eq!(s["tags"], json!([]));
    // Each of its two steps carries its 50 tags in its actions: the trace's ends, the two of
    // them, do not fit either, and it is left empty (the steps table keeps both).
    assert_eq!(s["trace"], json!([]), "{s}");
    assert_eq!(s["steps_total"], 2);
}

#[test]
fn seq_0_rows_must_carry_their_client_and_be_well_formed() {
    let c = chain();
    let cases = [
        (
            json!({"execution_id": "other:1", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {}}),
            "does not start with `acme:`",
        ),
        (
            json!({"execution_id": "acme", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {}}),
            "does not start with `acme:`",
        ),
        (
            json!({"execution_id": "acme:a b", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {}}),
            "[A-Za-z0-9._:-]",
        ),
        (
            json!({"execution_id": "acme:e", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {}, "rules": "", "rerun_of": "acme:orig"}),
            "`rules` names no rule",
        ),
        (
            json!({"execution_id": "acme:ni", "seq": 0, "client_id": "acme", "flow_id": "f"}),
            "`input` is required",
        ),
        (
            json!({"execution_id": "acme:si", "seq": 0, "client_id": "acme", "flow_id": "f", "input": "notamap"}),
            "`input` must be a map",
        ),
        (
            json!({"execution_id": "acme:nf", "seq": 0}),
            "missing field `client_id`",
        ),
        (
            json!({"execution_id": "acme:wt", "seq": 0, "client_id": 7, "flow_id": "f"}),
            "invalid type",
        ),
        (
            json!({"execution_id": "nobody:1", "seq": 0, "client_id": "nobody", "flow_id": "f", "input": {}}),
            "no client `nobody`",
        ),
        (
            json!({"execution_id": "acme:bv", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {}, "flow_version": 2}),
            "v2 is invalid",
        ),
    ];
    for (row, why) in cases {
        let id = row["execution_id"].as_str().expect("id").to_string();
        assert_eq!(block(c.run_row(None, row)), Ok(()));
        let s = summary(&c, &id);
        assert_eq!(s["status"], "FAILED", "{id}");
        assert!(
            s["reason"].as_str().is_some_and(|r| r.contains(why)),
            "{id}: {}",
            s["reason"]
        );
        // A version only where one was picked (here: pinned by the row); never a 0.
        let version = (id == "acme:bv").then(|| json!(2));
        assert_eq!(s.get("flow_version").cloned(), version, "{id}");
        // An id under another client's prefix is recorded as that client's: the client the
        // row names never sees it in its list, and cannot take the other's id.
        let owner = if id == "other:1" {
            "other"
        } else {
            id.split(':').next().unwrap_or_default()
        };
        if id.contains(':') {
            assert_eq!(s["client_id"], owner, "{id}");
        }
    }
    assert_eq!(
        summary(&c, "acme:e")["rerun_of"],
        "acme:orig",
        "a malformed rerun keeps its link"
    );
    assert_eq!(*c.flows.data_reads.lock().expect("lock"), 0);
    assert!(c.journal.steps.lock().expect("lock").is_empty());
}

#[test]
fn a_transient_error_retries_only_that_record_and_the_step_is_decided_once() {
    let c = chain();
    *c.journal.fail_next_step_put.lock().expect("lock") = true;
    let row = start("acme:t", json!({"n": 5}));
    assert!(matches!(block(c.run_row(None, row.clone())), Err(Retry(_))));
    assert_eq!(block(c.run_row(None, row)), Ok(()));
    drain(&c, 1);
    assert_eq!(summary(&c, "acme:t")["status"], "OK");
}

#[test]
fn a_receiver_that_is_down_never_holds_the_chain_and_is_retried_by_the_sweep() {
    let c = chain();
    *c.deliveries.down.lock().expect("lock") = 3;
    block(c.run_row(None, start("acme:w", json!({"n": 5})))).expect("start");
    drain(&c, 1);
    let s = summary(&c, "acme:w");
    assert_eq!(
        s["status"], "OK",
        "the execution ended while its webhook is pending"
    );
    let step = c.journal.step_sync("acme:w", 1);
    assert_eq!(step["actions"][0]["delivery"]["status"], "pending");
    assert_eq!(step["delivery_attempts"], 1);
    for _ in 0..3 {
        block(sweep(&c.journal, &c.deliveries, &c.settings));
    }
    let step = c.journal.step_sync("acme:w", 1);
    let d = &step["actions"][0]["delivery"];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 4);
    assert_eq!(d["results"].as_array().map(Vec::len), Some(4));
    assert!(step.get("pending_due").is_none() && step.get("outbox").is_none());
    assert_eq!(c.deliveries.sent.lock().expect("lock").len(), 1);
    // The attempt made in the step waits at most 1 s (the chain's next step waits for it); the
    // sweeper's attempts wait the action's own timeout (none set here: the sender's default).
    let waits = c.deliveries.waits.lock().expect("lock").clone();
    assert_eq!(
        waits[0],
        Some(rulestream_core::chain::IN_STEP_DELIVERY_MS),
        "{waits:?}"
    );
    assert!(waits[1..].iter().all(Option::is_none), "{waits:?}");
}

#[test]
fn a_receiver_down_for_good_is_recorded_failed_after_eight_attempts() {
    let c = chain();
    *c.deliveries.down.lock().expect("lock") = 100;
    block(c.run_row(None, start("acme:d", json!({"n": 5})))).expect("start");
    drain(&c, 1);
    for _ in 0..12 {
        block(sweep(&c.journal, &c.deliveries, &c.settings));
    }
    let step = c.journal.step_sync("acme:d", 1);
    let d = &step["actions"][0]["delivery"];
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 8);
    assert!(
        d["last"]
            .as_str()
            .is_some_and(|l| l.contains("after 8 attempts"))
    );
    assert!(step.get("pending_due").is_none());
}

#[test]
fn the_sweep_ends_executions_that_stopped_making_progress() {
    let c = chain();
    block(c.run_row(None, start("acme:stuck", json!({"n": 5})))).expect("start");
    // The seq 1 row is lost (e.g. its record reached the on-failure destination).
    c.journal.rows.lock().expect("lock").clear();
    let report = block(sweep(&c.journal, &c.deliveries, &c.settings));
    assert_eq!(report.stalled, 1);
    let s = summary(&c, "acme:stuck");
    assert_eq!(s["status"], "FAILED");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("after step 0 (rule `a`"), "{reason}");
    // Idempotent: a second sweep changes nothing.
    assert_eq!(
        block(sweep(&c.journal, &c.deliveries, &c.settings)).stalled,
        0
    );
    assert_eq!(s["steps_total"], 1, "the stop marker is not a step: {s}");
}

#[test]
fn a_step_that_comes_after_the_sweep_ended_its_execution_runs_nothing() {
    let c = chain();
    block(c.run_row(None, start("acme:late", json!({"n": 5})))).expect("start");
    // The seq 1 row is only late (a long backlog): the sweep ends the execution meanwhile.
    let late = std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
    assert_eq!(
        block(sweep(&c.journal, &c.deliveries, &c.settings)).stalled,
        1
    );
    assert_eq!(summary(&c, "acme:late")["status"], "FAILED");
    // Then the late row arrives: its step finds the stop marker, nothing is decided or sent.
    for (table, row) in late {
        assert_eq!(block(c.run_row(Some(&table), row)), Ok(()));
    }
    let s = summary(&c, "acme:late");
    assert_eq!(s["status"], "FAILED");
    assert!(
        c.deliveries.sent.lock().expect("lock").is_empty(),
        "nothing delivered"
    );
    let step1 = c.journal.step_sync("acme:late", 1);
    assert_eq!(step1["stop"], "FAILED", "{step1}");
    assert!(step1.get("rule").is_none(), "no rule decided at seq 1");
}

#[test]
fn a_late_step_that_wins_the_race_keeps_the_execution_going() {
    let c = chain();
    block(c.run_row(None, start("acme:race", json!({"n": 5})))).expect("start");
    // The step lands first; a sweep that read the execution as idle cannot end it.
    drain(&c, 1);
    let s = summary(&c, "acme:race");
    assert_eq!(s["status"], "OK");
    assert_eq!(
        block(sweep(&c.journal, &c.deliveries, &c.settings)).stalled,
        0
    );
    assert_eq!(summary(&c, "acme:race")["status"], "OK");
}

impl Mem {
    fn step_sync(&self, id: &str, seq: u64) -> Value {
        self.steps
            .lock()
            .expect("lock")
            .get(&(id.to_string(), seq))
            .cloned()
            .expect("step")
    }
}

/// Fuzz target over trigger-row images (short here, long under `make fuzz`): mutated seq 0 rows,
/// genuine sealed rows and forged ones. Nothing panics, every row is either run or ignored, and
/// whatever ran belongs to an execution started by a seq 0 row of its own client.
#[test]
fn mutated_trigger_rows_never_panic_and_forged_ones_never_run() {
    use fuzzing::{Rng, mutate_value};
    let seed = common::fuzz_seed(0x5EED_0F01_2345_6789);
    let mut rng = Rng(seed);
    let cases = common::fuzz_cases(1500);
    let c = chain();
    block(c.run_row(None, start("acme:genuine", json!({"n": 5})))).expect("start");
    let mut seeds: Vec<Value> = c
        .journal
        .rows
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, r)| r.clone())
        .collect();
    seeds.extend(
        common::corpus("rows")
            .iter()
            .map(|t| serde_json::from_str::<Value>(t).expect("corpus row is JSON")),
    );
    assert!(seeds.len() > 10);
    for i in 0..cases {
        let mut row = rng.pick(&seeds).clone();
        for _ in 0..=rng.below(3) {
            mutate_value(&mut rng, &mut row);
        }
        let text = row.to_string();
        common::fuzz_case("rows", seed, i, &text, || {
            let _ = block(c.run_row(None, row));
        });
        // Rows it wrote are run too (they are the genuine continuations of what started).
        let written: Vec<(String, Value)> =
            std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
        for (table, r) in written {
            let text = r.to_string();
            common::fuzz_case("rows", seed, i, &text, || {
                let _ = block(c.run_row(Some(&table), r));
            });
        }
    }
    let summaries = c.journal.summaries.lock().expect("lock").clone();
    for (id, s) in &summaries {
        let client = s["client_id"].as_str().unwrap_or_default();
        // A row whose id does not carry its client ends FAILED at once (and runs nothing).
        assert!(
            id.starts_with(&format!("{client}:")) || s["status"] == "FAILED",
            "{id} ran for client {client}: {s}"
        );
    }
    for (id, _) in c.journal.steps.lock().expect("lock").keys() {
        let s = &summaries.get(id);
        assert!(
            s.is_some_and(
                |s| id.starts_with(&format!("{}:", s["client_id"].as_str().unwrap_or("?")))
            ),
            "a step of {id} ran with no execution of its client started"
        );
    }
}

/// A token bucket that grants `left` tokens, then refuses; counts every take.
struct Tokens {
    left: Mutex<u32>,
    taken: Mutex<Vec<String>>,
}

impl rulestream_core::Effects for Tokens {
    async fn take_token(
        &self,
        key: &str,
        _per_second: f64,
        _burst: f64,
    ) -> Result<bool, EffectError> {
        self.taken.lock().expect("lock").push(key.to_string());
        let mut left = self.left.lock().expect("lock");
        if *left == 0 {
            return Ok(false);
        }
        *left -= 1;
        Ok(true)
    }
    async fn call_rule(
        &self,
        _rule: &str,
        _kind: rulestream_core::model::MasterKind,
        _target: &str,
        _payload: &Value,
        _timeout_ms: Option<u64>,
    ) -> Result<Value, EffectError> {
        Err(EffectError::Unsupported("no rule calls here".into()))
    }
}

#[test]
fn starts_over_the_client_quota_end_failed_and_redeliveries_are_never_refused() {
    let base = chain();
    let mut flows = base.flows;
    for cf in flows.clients.values_mut() {
        cf.quota = Some(rulestream_core::execution::Quota {
            starts_per_second: 2.0,
        });
    }
    let c = Chain {
        flows,
        journal: Mem::default(),
        effects: Tokens {
            left: Mutex::new(2),
            taken: Mutex::new(Vec::new()),
        },
        deliveries: Hooks::default(),
        sealer: ToySealer,
        settings: base.settings,
    };
    for i in 0..3 {
        let id = format!("acme:q{i}");
        assert_eq!(block(c.run_row(None, start(&id, json!({"n": 0})))), Ok(()));
    }
    // The first two started (and ended NO at rule a); the third is over the quota.
    let get = |id: &str| c.journal.summaries.lock().expect("lock")[id].clone();
    assert_eq!(get("acme:q0")["status"], "NO");
    assert_eq!(get("acme:q1")["status"], "NO");
    let over = get("acme:q2");
    assert_eq!(over["status"], "FAILED");
    assert!(
        over["reason"]
            .as_str()
            .is_some_and(|r| r.contains("start quota exceeded")),
        "{over}"
    );
    assert!(
        c.journal
            .steps
            .lock()
            .expect("lock")
            .keys()
            .all(|(id, _)| id != "acme:q2")
    );
    // A redelivered start of an execution that began is not refused, even with the bucket empty.
    assert_eq!(
        block(c.run_row(None, start("acme:q0", json!({"n": 0})))),
        Ok(())
    );
    assert_eq!(get("acme:q0")["status"], "NO");
    let taken = c.effects.taken.lock().expect("lock").clone();
    assert!(taken.iter().all(|k| k == "quota/acme"), "{taken:?}");
}

#[test]
fn a_cancelled_execution_ends_before_its_next_step_and_cancel_is_safe_to_repeat() {
    use rulestream_core::chain::{Cancel, cancel};
    let c = chain();
    block(c.run_row(None, start("acme:cx", json!({"n": 5})))).expect("start");
    let pending = std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
    assert_eq!(
        block(cancel(
            &c.journal,
            &c.settings,
            "acme:cx",
            "cancelled by support"
        )),
        Ok(Cancel::Cancelled { at_seq: 1 })
    );
    let s = summary(&c, "acme:cx");
    assert_eq!(s["status"], "CANCELLED");
    assert_eq!(s["reason"], "cancelled by support");
    assert_eq!(s["steps_total"], 1);
    // The next row arrives: nothing runs, nothing is delivered.
    for (table, row) in pending {
        assert_eq!(block(c.run_row(Some(&table), row)), Ok(()));
    }
    assert_eq!(summary(&c, "acme:cx")["status"], "CANCELLED");
    assert!(c.deliveries.sent.lock().expect("lock").is_empty());
    // Again, unknown, and already ended.
    assert_eq!(
        block(cancel(&c.journal, &c.settings, "acme:cx", "again")),
        Ok(Cancel::AlreadyEnded("CANCELLED".into()))
    );
    assert_eq!(
        block(cancel(&c.journal, &c.settings, "acme:nope", "x")),
        Ok(Cancel::NotFound)
    );
    block(c.run_row(None, start("acme:done", json!({"n": 0})))).expect("start");
    assert_eq!(
        block(cancel(&c.journal, &c.settings, "acme:done", "x")),
        Ok(Cancel::AlreadyEnded("NO".into()))
    );
    // Its last step decided the end, and the summary still says RUNNING (the orchestrator is
    // between the two writes): there is no next step to cancel. The end stands, and the cancel
    // says so rather than answering CANCELLED (the orchestrator writes that summary).
    block(c.run_row(None, start("acme:late", json!({"n": 0})))).expect("start");
    c.journal
        .summaries
        .lock()
        .expect("lock")
        .get_mut("acme:late")
        .expect("summary")["status"] = json!("RUNNING");
    assert_eq!(
        block(cancel(&c.journal, &c.settings, "acme:late", "x")),
        Ok(Cancel::AlreadyEnded("NO".into()))
    );
    assert!(
        c.journal
            .steps
            .lock()
            .expect("lock")
            .iter()
            .all(|((id, _), s)| id != "acme:late" || s.get("stop").is_none()),
        "no stop marker"
    );
}

#[test]
fn an_execution_cancelled_before_the_orchestrator_picks_it_up_never_runs_a_step() {
    use rulestream_core::chain::{Cancel, RUNNING, cancel, end_at, summary_or_pending};
    let c = chain();
    // A client inserted the seq 0 row; the orchestrator has not seen it yet.
    let row = start("acme:early", json!({"n": 5}));
    let table = c.settings.trigger_table.clone();
    assert_eq!(block(c.journal.put_row(&table, &row)), Ok(true));
    let shown = block(summary_or_pending(&c.journal, &table, "acme:early"))
        .expect("read")
        .expect("shown while pending");
    assert_eq!(shown["status"], RUNNING);
    assert_eq!(shown["client_id"], "acme");
    assert_eq!(shown["trace"], json!([]));
    assert_eq!(
        block(cancel(
            &c.journal,
            &c.settings,
            "acme:early",
            "changed my mind"
        )),
        Ok(Cancel::Cancelled { at_seq: 0 })
    );
    let s = summary(&c, "acme:early");
    assert_eq!(s["status"], "CANCELLED");
    assert_eq!(s["reason"], "changed my mind");
    // Now the orchestrator gets the row: it runs nothing and the summary stays CANCELLED.
    let rows = std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
    for (t, r) in rows {
        assert_eq!(block(c.run_row(Some(&t), r)), Ok(()));
    }
    assert_eq!(summary(&c, "acme:early")["status"], "CANCELLED");
    assert!(
        block(c.journal.steps("acme:early"))
            .expect("steps")
            .is_empty()
    );
    assert!(
        c.journal.rows.lock().expect("lock").is_empty(),
        "no next row"
    );
    assert_eq!(
        block(cancel(&c.journal, &c.settings, "acme:early", "again")),
        Ok(Cancel::AlreadyEnded("CANCELLED".into()))
    );

    // A row that does not carry its client, or a sealed one, is no pending start.
    let forged = json!({"execution_id": "acme:forged", "seq": 0, "client_id": "other",
                        "flow_id": "f", "input": {}});
    assert_eq!(block(c.journal.put_row(&table, &forged)), Ok(true));
    assert_eq!(
        block(summary_or_pending(&c.journal, &table, "acme:forged")),
        Ok(None)
    );
    assert_eq!(
        block(cancel(&c.journal, &c.settings, "acme:forged", "x")),
        Ok(Cancel::NotFound)
    );

    // The seq 0 record of a start was given up on before any summary: the sweeper ends it
    // FAILED, and a late delivery of the row then runs nothing.
    let lost = start("acme:lost", json!({"n": 5}));
    assert_eq!(block(c.journal.put_row(&table, &lost)), Ok(true));
    assert_eq!(
        block(end_at(&c.journal, &c.settings, "acme:lost", 0, "gave up")),
        Ok(true)
    );
    assert_eq!(summary(&c, "acme:lost")["status"], "FAILED");
    assert_eq!(summary(&c, "acme:lost")["reason"], "gave up");
    assert_eq!(block(c.run_row(Some(&table), lost)), Ok(()));
    assert!(
        block(c.journal.steps("acme:lost"))
            .expect("steps")
            .is_empty()
    );
    assert_eq!(summary(&c, "acme:lost")["status"], "FAILED");
}

#[test]
fn the_row_kept_for_an_inline_execution_never_runs_it_again() {
    use rulestream_core::chain::INLINE_MARK;
    let marked = |id: &str| {
        let mut row = start(id, json!({"n": 5}));
        row[INLINE_MARK] = json!(true);
        row
    };
    // An execution the API ran inline up to seq 1 and then handed to the chain: its summary
    // says RUNNING, and the row of seq 1 is in the trigger table.
    let c = chain();
    block(c.run_row(None, start("acme:inl", json!({"n": 5})))).expect("start");
    let handed = std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
    assert_eq!(handed.len(), 1);
    assert_eq!(summary(&c, "acme:inl")["status"], "RUNNING");
    let reads = *c.flows.data_reads.lock().expect("lock");
    // The kept row comes through the stream: nothing is read, decided or written again.
    assert_eq!(block(c.run_row(None, marked("acme:inl"))), Ok(()));
    assert_eq!(*c.flows.data_reads.lock().expect("lock"), reads);
    assert!(c.journal.rows.lock().expect("lock").is_empty(), "no row");
    assert_eq!(block(c.journal.steps("acme:inl")).expect("steps").len(), 1);
    // The chain goes on from the row the API handed over, once.
    c.journal.rows.lock().expect("lock").extend(handed);
    drain(&c, 1);
    assert_eq!(summary(&c, "acme:inl")["status"], "OK");
    assert_eq!(c.deliveries.sent.lock().expect("lock").len(), 1);
    // Once it has ended, the kept row is passed over too.
    assert_eq!(block(c.run_row(None, marked("acme:inl"))), Ok(()));
    assert_eq!(block(c.journal.steps("acme:inl")).expect("steps").len(), 2);
    assert_eq!(c.deliveries.sent.lock().expect("lock").len(), 1);

    // A marked row with no summary is a client's own start: it runs as any other.
    assert_eq!(block(c.run_row(None, marked("acme:own"))), Ok(()));
    drain(&c, 1);
    assert_eq!(summary(&c, "acme:own")["status"], "OK");
}

#[test]
fn a_rerun_from_a_step_starts_there_with_the_originals_context() {
    let c = chain();
    block(c.run_row(None, start("acme:orig", json!({"n": 5})))).expect("start");
    drain(&c, 1);
    assert_eq!(summary(&c, "acme:orig")["status"], "OK");
    let rerun = |id: &str, of: &str, from: &str| {
        json!({"execution_id": id, "seq": 0, "client_id": "acme", "flow_id": "f",
               "input": {"n": 5}, "rerun_of": of, "from": from})
    };
    // From rule `b` (and from seq 1, the same step): only `b` runs.
    for (id, from) in [("acme:from-b", "b"), ("acme:from-1", "1")] {
        block(c.run_row(None, rerun(id, "acme:orig", from))).expect("start");
        drain(&c, 1);
        let s = summary(&c, id);
        assert_eq!(s["status"], "OK", "{s}");
        assert_eq!(s["rerun_of"], "acme:orig");
        let rules: Vec<&str> = s["trace"]
            .as_array()
            .expect("trace")
            .iter()
            .filter_map(|t| t["rule"].as_str())
            .collect();
        assert_eq!(rules, vec!["b"], "{s}");
    }
    // A step it never ran, another client's execution, `from` without `rerun_of`: FAILED.
    for (id, row, why) in [
        (
            "acme:from-x",
            rerun("acme:from-x", "acme:orig", "7"),
            "no such step",
        ),
        (
            "acme:from-o",
            rerun("acme:from-o", "other:e", "b"),
            "not an execution of client",
        ),
        (
            "acme:from-n",
            json!({"execution_id": "acme:from-n", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {}, "from": "b"}),
            "needs `rerun_of`",
        ),
    ] {
        block(c.run_row(None, row)).expect("start");
        let s = summary(&c, id);
        assert_eq!(s["status"], "FAILED", "{s}");
        assert!(s["reason"].as_str().is_some_and(|r| r.contains(why)), "{s}");
    }
}

#[test]
fn a_step_whose_record_was_given_up_ends_its_execution_unless_it_ran() {
    use rulestream_core::chain::end_at;
    let c = chain();
    block(c.run_row(None, start("acme:lost", json!({"n": 5})))).expect("start");
    let pending = std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
    // The record of seq 1 reached the on-failure destination: the sweeper ends the execution.
    assert_eq!(
        block(end_at(&c.journal, &c.settings, "acme:lost", 1, "given up")),
        Ok(true)
    );
    let s = summary(&c, "acme:lost");
    assert_eq!(
        (s["status"].clone(), s["reason"].clone()),
        (json!("FAILED"), json!("given up"))
    );
    // Again: nothing more. And the record, if it ever came back, runs nothing.
    assert_eq!(
        block(end_at(&c.journal, &c.settings, "acme:lost", 1, "given up")),
        Ok(false)
    );
    for (table, row) in pending {
        assert_eq!(block(c.run_row(Some(&table), row)), Ok(()));
    }
    assert!(c.deliveries.sent.lock().expect("lock").is_empty());
    // The record of seq 0 given up after its step was decided (the next row never written):
    // the marker goes after that step.
    block(c.run_row(None, start("acme:lost0", json!({"n": 5})))).expect("start");
    c.journal.rows.lock().expect("lock").clear();
    assert_eq!(
        block(end_at(&c.journal, &c.settings, "acme:lost0", 0, "given up")),
        Ok(true)
    );
    assert_eq!(c.journal.step_sync("acme:lost0", 1)["stop"], "FAILED");
    assert_eq!(summary(&c, "acme:lost0")["steps_total"], 1);
    // A step that did run (a later retry got through) is not undone.
    block(c.run_row(None, start("acme:ran", json!({"n": 5})))).expect("start");
    drain(&c, 1);
    assert_eq!(
        block(end_at(&c.journal, &c.settings, "acme:ran", 1, "given up")),
        Ok(false)
    );
    assert_eq!(summary(&c, "acme:ran")["status"], "OK");
}

#[test]
fn a_fused_flow_runs_its_pure_steps_in_one_hop_and_writes_rows_only_where_a_hop_starts() {
    // a, b, c are pure; d delivers a webhook (its own hop); e is pure again.
    let fused = json!({"client_id": "acme", "flow_id": "f", "version": 3, "terminal_statuses": ["OK"],
        "fuse": true,
        "rules": [{"id": "a", "when": "true", "on": {"true": {"next": true, "set": {"x": "1"}}}},
                  {"id": "b", "when": "ctx.x == 1", "on": {"true": {"next": true, "set": {"y": "2"}}}},
                  {"id": "c", "when": "true", "on": {"true": {"next": true}}},
                  {"id": "d", "when": "true", "on": {"true": {"next": true,
                      "actions": [{"type": "call_webhook", "url": "http://127.0.0.1:1/h"}]}}},
                  {"id": "e", "when": "ctx.y == 2", "on": {"true": {"complete": "OK"}}}]});
    for times in [1, 2] {
        let mut c = chain();
        c.flows.versions.insert(3, fused.clone());
        let row = json!({"execution_id": "acme:fz", "seq": 0, "client_id": "acme", "flow_id": "f",
                         "flow_version": 3, "input": {}});
        let mut written: Vec<u64> = Vec::new();
        for _ in 0..times {
            assert_eq!(block(c.run_row(None, row.clone())), Ok(()));
        }
        for _ in 0..10 {
            let rows: Vec<(String, Value)> =
                std::mem::take(&mut *c.journal.rows.lock().expect("lock"));
            if rows.is_empty() {
                break;
            }
            for (table, r) in rows {
                written.push(r["seq"].as_u64().expect("seq"));
                for _ in 0..times {
                    assert_eq!(block(c.run_row(Some(&table), r.clone())), Ok(()));
                }
            }
        }
        let s = summary(&c, "acme:fz");
        assert_eq!(s["status"], "OK", "{s}");
        let trace: Vec<(u64, &str)> = s["trace"]
            .as_array()
            .expect("trace")
            .iter()
            .map(|t| {
                (
                    t["seq"].as_u64().expect("seq"),
                    t["rule"].as_str().expect("rule"),
                )
            })
            .collect();
        assert_eq!(
            trace,
            vec![(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]
        );
        // a, b and c ran in the first hop: the next row is the one before d (seq 3); d delivers,
        // so e gets a row of its own (seq 4).
        written.dedup();
        assert_eq!(written, vec![3, 4], "times={times}");
        assert_eq!(c.deliveries.sent.lock().expect("lock").len(), 1);
    }
}

/// SPEC section 1, Trace: client data never appears in a trace, an output or a webhook body,
/// also when a `set` copies it into `ctx` or a `when` answers with it. The execution still uses
/// the real values: in later hops, after a redelivery, and in a rerun from a later step.
#[test]
fn client_data_copied_into_ctx_is_used_but_never_shown() {
    let mut c = chain();
    let f = json!({"client_id": "acme", "flow_id": "f", "version": 3, "terminal_statuses": ["OK", "NO"],
        "rules": [
            {"id": "copy", "when": "true", "on": {"true": {"next": true,
                "set": {"limit": "client.secret_limit", "double": "ctx.limit * 2", "plain": "input.n"}}}},
            {"id": "label", "when": "string(ctx.double)", "default": {"next": true}},
            {"id": "use", "when": "ctx.double == client.secret_limit * 2 && ctx.plain == 5",
             "on": {"true": {"complete": "OK", "actions": [{"type": "call_webhook", "url": "http://127.0.0.1:1/h"}]},
                    "false": {"complete": "NO"}}}]});
    c.flows.versions.insert(3, f);
    let cf = c
        .flows
        .clients
        .get_mut(&("acme".to_string(), "f".to_string()))
        .expect("client flow");
    cf.release = Release {
        generation: 1,
        ..Release::stable_only(3)
    };
    block(c.run_row(None, start("acme:cd", json!({"n": 5})))).expect("start");
    drain(&c, 2);
    let s = summary(&c, "acme:cd");
    assert_eq!(s["status"], "OK", "the real values decided: {s}");
    let secret = ["123456789", "246913578"];
    // The step items keep the values sealed (the toy sealer of these tests does not encrypt;
    // the real one does), and show them nowhere else.
    let items: Vec<Value> = c
        .journal
        .steps
        .lock()
        .expect("lock")
        .values()
        .cloned()
        .collect();
    assert!(items[0]["client_set"].is_string(), "{}", items[0]);
    let steps: Vec<Value> = items
        .iter()
        .map(rulestream_core::chain::trace_line)
        .collect();
    let bodies: Vec<String> = c
        .deliveries
        .sent
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    for (what, text) in [
        ("summary", s.to_string()),
        ("steps", serde_json::to_string(&steps).expect("json")),
        ("webhook bodies", bodies.join("\n")),
    ] {
        for v in secret {
            assert!(!text.contains(v), "{what} shows client data {v}: {text}");
        }
    }
    assert_eq!(s["output"]["limit"], "<client data>", "{s}");
    assert_eq!(s["output"]["double"], "<client data>", "{s}");
    assert_eq!(
        s["output"]["plain"], 5,
        "a value not from client data is shown: {s}"
    );
    assert_eq!(s["trace"][1]["outcome"], "<client data>", "{s}");
    assert!(!bodies.is_empty(), "the webhook was sent");

    // A rerun from `use` starts with the context the original had there, real values included.
    let rerun = json!({"execution_id": "acme:cd-again", "seq": 0, "client_id": "acme", "flow_id": "f",
                       "input": {"n": 5}, "rerun_of": "acme:cd", "from": "use"});
    block(c.run_row(None, rerun)).expect("start");
    drain(&c, 1);
    let s = summary(&c, "acme:cd-again");
    assert_eq!(s["status"], "OK", "{s}");
}
