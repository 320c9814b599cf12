//! The orchestrator's logic: one DynamoDB stream record = one step of one execution.
//!
//! For each INSERT of the trigger table: seq 0 picks and pins the flow version (gray, SPEC
//! section 4); every row runs its rule, then one conditional write records the step and puts row
//! seq+1, or finalises the execution. Malformed rows, unknown or disabled clients and invalid
//! flows end the execution `FAILED` with the reason; transient errors are reported as batch item
//! failures so only that record is retried. MODIFY and REMOVE records are ignored.

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use chrono::{SecondsFormat, Utc};
use rulestream_core::CompiledFlow;
use rulestream_core::engine::{ExecutionMeta, Next, RunState, Session, gray_key_value};
use rulestream_core::execution::{ExecutionHeader, Finish, StepCommit, Then, TriggerRow};
use rulestream_core::model::ActionType;
use rulestream_core::model::FAILED;
use rulestream_core::ports::{
    Deliveries, Delivery, Effects, ExecutionStore, FlowSource, StepLedger, StoreError,
};
use serde_json::{Map, Value};

/// A record that must be retried (reported as a batch item failure).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

/// The handler, with only the capabilities it needs.
pub struct Handler<F, S, E, D, L> {
    /// Flows, releases and client data.
    pub flows: F,
    /// Executions and trigger rows.
    pub store: S,
    /// Rate limiter and external rules.
    pub effects: E,
    /// Webhook deliveries.
    pub deliveries: D,
    /// Which steps are already recorded (recognises redeliveries before their side effects).
    pub ledger: L,
    /// The trigger table, when a record does not name its own.
    pub default_trigger_table: String,
    /// Lifetime of trigger rows, seconds.
    pub trigger_ttl_secs: i64,
}

/// The table a stream record came from: `arn:aws:dynamodb:r:a:table/NAME/stream/...`.
pub fn table_of(arn: Option<&str>) -> Option<String> {
    let rest = arn?.split_once(":table/")?.1;
    Some(rest.split('/').next()?.to_string())
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl<F: FlowSource, S: ExecutionStore, E: Effects, D: Deliveries, L: StepLedger>
    Handler<F, S, E, D, L>
{
    /// Handles a batch: records run concurrently (each is one execution's step); the response
    /// lists the records to retry.
    pub async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let results =
            futures::future::join_all(event.records.iter().map(|r| self.handle_record(r))).await;
        let mut resp = DynamoDbEventResponse::default();
        for (rec, res) in event.records.iter().zip(results) {
            if let Err(Retry(why)) = res {
                tracing::warn!(
                    sequence_number = rec.change.sequence_number.as_deref().unwrap_or(""),
                    error = %why,
                    "record will be retried"
                );
                let mut f = DynamoDbBatchItemFailure::default();
                f.item_identifier = rec.change.sequence_number.clone();
                resp.batch_item_failures.push(f);
            }
        }
        resp
    }

    /// Handles one record.
    pub async fn handle_record(&self, rec: &EventRecord) -> Result<(), Retry> {
        if rec.event_name != "INSERT" {
            return Ok(());
        }
        let table = table_of(rec.event_source_arn.as_deref())
            .unwrap_or_else(|| self.default_trigger_table.clone());
        let raw: Value = match serde_dynamo::from_item(rec.change.new_image.clone()) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "undecodable trigger row dropped");
                return Ok(());
            }
        };
        match serde_json::from_value::<TriggerRow>(raw.clone()) {
            Ok(row) => self.step(&table, row).await,
            Err(e) => {
                let Some(id) = raw
                    .get("execution_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                else {
                    tracing::error!(error = %e, "trigger row without an execution_id dropped");
                    return Ok(());
                };
                let header = ExecutionHeader {
                    execution_id: id.to_string(),
                    client_id: str_field(&raw, "client_id"),
                    flow_id: str_field(&raw, "flow_id"),
                    flow_version: raw.get("flow_version").and_then(Value::as_u64).unwrap_or(0),
                    started_at: now_rfc3339(),
                    rerun_of: None,
                };
                let seq = raw.get("seq").and_then(Value::as_u64).unwrap_or(0);
                self.fail(&table, header, seq, format!("malformed trigger row: {e}"))
                    .await
            }
        }
    }

    async fn fail(
        &self,
        table: &str,
        header: ExecutionHeader,
        seq: u64,
        reason: String,
    ) -> Result<(), Retry> {
        tracing::warn!(execution_id = %header.execution_id, seq, reason = %reason, "execution failed");
        let commit = StepCommit {
            header,
            seq,
            record: None,
            then: Then::Finish(Finish {
                status: FAILED.to_string(),
                reason: Some(reason.clone()),
                error: Some(reason),
                output: Map::new(),
                tags: vec![],
                route: None,
            }),
            now: now_rfc3339(),
        };
        self.store
            .commit(table, &commit)
            .await
            .map(|_| ())
            .map_err(|e| Retry(e.to_string()))
    }

    async fn step(&self, table: &str, row: TriggerRow) -> Result<(), Retry> {
        let started = std::time::Instant::now();
        if self.ledger.recorded(&row.execution_id, row.seq).await {
            tracing::info!(execution_id = %row.execution_id, seq = row.seq, "redelivered step skipped");
            return Ok(());
        }
        let mut header = ExecutionHeader {
            execution_id: row.execution_id.clone(),
            client_id: row.client_id.clone(),
            flow_id: row.flow_id.clone(),
            flow_version: row.flow_version.unwrap_or(0),
            started_at: row.started_at.clone().unwrap_or_else(now_rfc3339),
            rerun_of: row.rerun_of.clone(),
        };
        if row.execution_id.is_empty() || row.client_id.is_empty() || row.flow_id.is_empty() {
            return self
                .fail(
                    table,
                    header,
                    row.seq,
                    "malformed trigger row: execution_id, client_id and flow_id must not be empty"
                        .into(),
                )
                .await;
        }
        // Which version, and where the client's data comes from.
        let (flow, data_source) = if row.seq == 0 {
            let cf = match self.flows.client_flow(&row.client_id, &row.flow_id).await {
                Ok(cf) => cf,
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => return self.fail(table, header, 0, e.to_string()).await,
            };
            if !cf.enabled {
                let why = format!(
                    "client `{}` flow `{}` is disabled",
                    row.client_id, row.flow_id
                );
                return self.fail(table, header, 0, why).await;
            }
            let version = match (row.flow_version, cf.release.candidate) {
                (Some(v), _) => v,
                (None, None) => cf.release.stable,
                (None, Some(_)) => {
                    let stable = match self.load(&row, cf.release.stable).await {
                        Ok(f) => f,
                        Err(Err(retry)) => return Err(retry),
                        Err(Ok(why)) => return self.fail(table, header, 0, why).await,
                    };
                    let key =
                        gray_key_value(&stable, &row.execution_id, &row.input, None, &Map::new());
                    cf.release.pick(&row.client_id, &row.flow_id, None, &key)
                }
            };
            header.flow_version = version;
            match self.load(&row, version).await {
                Ok(f) => (f, cf.data_source),
                Err(Err(retry)) => return Err(retry),
                Err(Ok(why)) => return self.fail(table, header, 0, why).await,
            }
        } else {
            let Some(version) = row.flow_version else {
                return self
                    .fail(
                        table,
                        header,
                        row.seq,
                        "malformed trigger row: a row after seq 0 needs flow_version".into(),
                    )
                    .await;
            };
            match self.load(&row, version).await {
                Ok(f) => (f, row.data_source.clone()),
                Err(Err(retry)) => return Err(retry),
                Err(Ok(why)) => return self.fail(table, header, row.seq, why).await,
            }
        };
        let client = match &data_source {
            None => None,
            Some(src) => match self.flows.client_data(src).await {
                Ok(v) => Some(v),
                Err(StoreError::Transient(e)) => return Err(Retry(e)),
                Err(e) => {
                    return self
                        .fail(table, header, row.seq, format!("client data: {e}"))
                        .await;
                }
            },
        };
        let meta = ExecutionMeta {
            execution_id: row.execution_id.clone(),
            client_id: row.client_id.clone(),
            flow_id: row.flow_id.clone(),
            flow_version: header.flow_version,
        };
        let mut state = row.state.clone().unwrap_or_default();
        state.seq = row.seq;
        let steps_taken = u32::try_from(row.seq).unwrap_or(u32::MAX);
        let mut session = Session::new(
            &flow,
            meta,
            &row.input,
            client.as_ref(),
            Utc::now(),
            row.subset(),
            state,
        );
        let result = session.step(&self.effects, steps_taken).await;
        let state: RunState = session.state().clone();
        let (then, next_desc) = match &result.next {
            Next::Rule { rule } => {
                let next = TriggerRow {
                    execution_id: row.execution_id.clone(),
                    seq: row.seq + 1,
                    client_id: row.client_id.clone(),
                    flow_id: row.flow_id.clone(),
                    input: row.input.clone(),
                    flow_version: Some(header.flow_version),
                    rules: row.rules.clone(),
                    state: Some(state.clone()),
                    started_at: Some(header.started_at.clone()),
                    rerun_of: row.rerun_of.clone(),
                    data_source: data_source.clone(),
                    expires_at: Some(Utc::now().timestamp() + self.trigger_ttl_secs),
                };
                (Then::Continue(Box::new(next)), format!("goto {rule}"))
            }
            Next::Done {
                status,
                reason,
                error,
            } => (
                Then::Finish(Finish {
                    status: status.clone(),
                    reason: reason.clone(),
                    error: error.clone(),
                    output: state.ctx.clone(),
                    tags: state.tags.clone(),
                    route: state.route.clone(),
                }),
                format!("complete {status}"),
            ),
        };
        // Webhooks go out before the step is recorded. A receiver that is down (or answers 5xx/429)
        // retries the record, which sends the same idempotency key again: at least once, never
        // lost. A delivery that cannot succeed (blocked host, 4xx, missing signing secret) is
        // recorded on the action in the trace and the chain goes on: one bad webhook never blocks
        // the shard.
        let mut record = result.record.clone();
        if let Some(rec) = record.as_mut() {
            let (status, reason) = match &result.next {
                Next::Done { status, reason, .. } => (status.clone(), reason.clone()),
                Next::Rule { .. } => ("RUNNING".to_string(), None),
            };
            let (rule, outcome) = (rec.rule.clone(), rec.outcome.clone());
            for a in rec
                .actions
                .iter_mut()
                .filter(|a| a.action.kind == ActionType::CallWebhook)
            {
                let Some(url) = a.action.url.clone() else {
                    continue;
                };
                let delivery = Delivery {
                    idempotency_key: a.idempotency_key.clone(),
                    url,
                    secret_id: a.action.secret_id.clone(),
                    timeout_ms: a.action.timeout_ms,
                    body: serde_json::json!({
                        "idempotency_key": a.idempotency_key,
                        "execution_id": row.execution_id,
                        "client_id": row.client_id,
                        "flow_id": row.flow_id,
                        "flow_version": header.flow_version,
                        "seq": row.seq,
                        "rule": rule,
                        "outcome": outcome,
                        "status": status,
                        "reason": reason,
                        "ctx": state.ctx,
                        "tags": state.tags,
                    }),
                };
                a.delivery = Some(match self.deliveries.deliver(&delivery).await {
                    Ok(()) => "delivered".to_string(),
                    Err(rulestream_core::EffectError::Unavailable(e)) => {
                        return Err(Retry(format!("webhook {}: {e}", a.idempotency_key)));
                    }
                    Err(e) => {
                        tracing::warn!(key = %a.idempotency_key, error = %e, "webhook not delivered");
                        format!("failed: {e}")
                    }
                });
            }
        }
        let commit = StepCommit {
            header,
            seq: row.seq,
            record,
            then,
            now: now_rfc3339(),
        };
        let applied = match self.store.commit(table, &commit).await {
            Ok(applied) => {
                self.ledger.remember(&row.execution_id, row.seq).await;
                applied
            }
            Err(StoreError::Transient(e)) => return Err(Retry(e)),
            // A write that can never succeed (e.g. the execution outgrew an item) ends it.
            Err(e) => {
                let why = format!(
                    "cannot record step {} of rule `{}`: {e}",
                    row.seq,
                    commit.record.as_ref().map_or("", |r| r.rule.as_str())
                );
                return self.fail(table, commit.header.clone(), row.seq, why).await;
            }
        };
        let rec = result.record.as_ref();
        tracing::info!(
            execution_id = %row.execution_id,
            client_id = %row.client_id,
            flow_id = %row.flow_id,
            flow_version = commit.header.flow_version,
            seq = row.seq,
            rule = rec.map_or("", |r| r.rule.as_str()),
            outcome = rec.map_or("", |r| r.outcome.as_str()),
            next = %next_desc,
            duplicate = !applied,
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "step"
        );
        Ok(())
    }

    /// Loads a flow version: `Err(Ok(reason))` ends the execution, `Err(Err(retry))` retries.
    async fn load(
        &self,
        row: &TriggerRow,
        version: u64,
    ) -> Result<Arc<CompiledFlow>, Result<String, Retry>> {
        match self
            .flows
            .flow_version(&row.client_id, &row.flow_id, version)
            .await
        {
            Ok(f) => Ok(f),
            Err(StoreError::Transient(e)) => Err(Err(Retry(e))),
            Err(e) => Err(Ok(e.to_string())),
        }
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    //! The handler against in-memory fakes of its ports (the real adapters are exercised by the
    //! e2e suite on the local stack).

    use std::collections::HashMap;
    use std::sync::Mutex;

    use rulestream_core::execution::{ClientFlow, DataSource, Release};
    use rulestream_core::{Catalog, DryRun, validate_value};
    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Flows {
        clients: HashMap<(String, String), ClientFlow>,
        versions: HashMap<u64, Value>,
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
            let val = validate_value(doc, &Catalog::new());
            val.flow
                .map(Arc::new)
                .ok_or_else(|| StoreError::Invalid(format!("v{v} is invalid")))
        }
        async fn client_data(&self, _s: &DataSource) -> Result<Value, StoreError> {
            Ok(json!({"tier": "gold"}))
        }
    }

    /// seq, status, trace ("rule=outcome"), reason.
    type Exec = (u64, String, Vec<String>, Option<String>);

    #[derive(Default)]
    struct Store {
        executions: Mutex<HashMap<String, Exec>>,
        rows: Mutex<Vec<TriggerRow>>,
        fail_next: Mutex<bool>,
    }

    impl ExecutionStore for Store {
        async fn commit(&self, _t: &str, c: &StepCommit) -> Result<bool, StoreError> {
            if std::mem::take(&mut *self.fail_next.lock().expect("lock")) {
                return Err(StoreError::Transient("throttled".into()));
            }
            let mut ex = self.executions.lock().expect("lock");
            let id = &c.header.execution_id;
            let ok = match ex.get(id) {
                None => c.seq == 0,
                Some((seq, ..)) => *seq == c.seq,
            };
            if !ok {
                return Ok(false);
            }
            let entry = ex
                .entry(id.clone())
                .or_insert((0, "RUNNING".into(), vec![], None));
            entry.0 = c.seq + 1;
            if let Some(r) = &c.record {
                entry.2.push(format!("{}={}", r.rule, r.outcome));
            }
            match &c.then {
                Then::Continue(row) => self.rows.lock().expect("lock").push((**row).clone()),
                Then::Finish(f) => {
                    entry.1 = f.status.clone();
                    entry.3 = f.reason.clone();
                }
            }
            Ok(true)
        }
    }

    fn flow() -> Value {
        json!({"client_id": "acme", "flow_id": "f", "version": 1, "terminal_statuses": ["OK", "NO"],
               "rules": [{"id": "a", "when": "input.n > 1", "on": {"false": {"complete": "NO"}}},
                         {"id": "b", "when": "client.tier == 'gold'", "on": {"true": {"complete": "OK",
                          "actions": [{"type": "call_webhook", "url": "http://127.0.0.1:1/hook"}, {"type": "add_tag", "tag": "t"}]}}}]})
    }

    /// Records deliveries; fails the first one when asked.
    #[derive(Default)]
    struct Hooks {
        sent: Mutex<Vec<String>>,
        fail_first: Mutex<bool>,
    }

    impl Deliveries for Hooks {
        async fn deliver(&self, d: &Delivery) -> Result<(), rulestream_core::EffectError> {
            if std::mem::take(&mut *self.fail_first.lock().expect("lock")) {
                return Err(rulestream_core::EffectError::Unavailable("receiver".into()));
            }
            if d.url.contains("blocked") {
                return Err(rulestream_core::EffectError::Failed("blocked: host".into()));
            }
            self.sent
                .lock()
                .expect("lock")
                .push(d.idempotency_key.clone());
            Ok(())
        }
    }

    /// An in-memory ledger.
    #[derive(Default)]
    struct Ledger(Mutex<std::collections::HashSet<(String, u64)>>);

    impl StepLedger for Ledger {
        async fn recorded(&self, id: &str, seq: u64) -> bool {
            self.0
                .lock()
                .expect("lock")
                .contains(&(id.to_string(), seq))
        }
        async fn remember(&self, id: &str, seq: u64) {
            self.0.lock().expect("lock").insert((id.to_string(), seq));
        }
    }

    type H = Handler<Flows, Store, DryRun, Hooks, Ledger>;

    fn handler(enabled: bool) -> H {
        let mut flows = Flows::default();
        flows.clients.insert(
            ("acme".into(), "f".into()),
            ClientFlow {
                client_id: "acme".into(),
                flow_id: "f".into(),
                enabled,
                release: Release {
                    stable: 1,
                    candidate: None,
                    percent: 0.0,
                    generation: 1,
                },
                data_source: Some(DataSource {
                    role_arn: "arn:role".into(),
                    secret_id: "s".into(),
                }),
            },
        );
        flows.versions.insert(1, flow());
        flows.versions.insert(2, json!({"client_id": "acme"}));
        let mut blocked = flow();
        blocked["version"] = json!(3);
        blocked["rules"][1]["on"]["true"]["actions"][0]["url"] =
            json!("http://blocked.example/hook");
        flows.versions.insert(3, blocked);
        Handler {
            flows,
            store: Store::default(),
            effects: DryRun,
            deliveries: Hooks::default(),
            ledger: Ledger::default(),
            default_trigger_table: "t".into(),
            trigger_ttl_secs: 60,
        }
    }

    fn event(images: &[Value]) -> Event {
        let records: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let item: serde_dynamo::Item = serde_dynamo::to_item(img).expect("item");
                json!({"eventID": format!("e{i}"), "eventName": "INSERT", "eventVersion": "1.1",
                       "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
                       "dynamodb": {"ApproximateCreationDateTime": 1.7e9, "Keys": {},
                                    "NewImage": item, "SequenceNumber": format!("{}", 100 + i),
                                    "SizeBytes": 10, "StreamViewType": "NEW_IMAGE"},
                       "eventSourceARN": "arn:aws:dynamodb:us-east-1:000000000000:table/rs-trigger/stream/x"})
            })
            .collect();
        serde_json::from_value(json!({"Records": records})).expect("event")
    }

    fn drain(h: &H, twice: bool) {
        for _ in 0..20 {
            let rows: Vec<TriggerRow> = std::mem::take(&mut *h.store.rows.lock().expect("lock"));
            if rows.is_empty() {
                return;
            }
            let imgs: Vec<Value> = rows
                .iter()
                .map(|r| serde_json::to_value(r).expect("row"))
                .collect();
            let resp = pollster::block_on(h.handle(event(&imgs)));
            assert!(resp.batch_item_failures.is_empty());
            if twice {
                pollster::block_on(h.handle(event(&imgs)));
            }
        }
    }

    fn status(h: &H, id: &str) -> (u64, String, Vec<String>, Option<String>) {
        h.store
            .executions
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .expect("execution exists")
    }

    #[test]
    fn a_chain_runs_to_its_terminal_status_even_when_every_record_comes_twice() {
        for twice in [false, true] {
            let h = handler(true);
            let first = json!({"execution_id": "x1", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {"n": 5}});
            pollster::block_on(h.handle(event(std::slice::from_ref(&first))));
            if twice {
                pollster::block_on(h.handle(event(&[first])));
            }
            drain(&h, twice);
            if twice {
                // The ledger recognised the repeats: the webhook went out once.
                assert_eq!(
                    *h.deliveries.sent.lock().expect("lock"),
                    vec!["x1:1:0".to_string()]
                );
            }
            let (seq, st, trace, _) = status(&h, "x1");
            assert_eq!(st, "OK");
            assert_eq!(trace, vec!["a=true", "b=true"]);
            assert_eq!(seq, 2);
        }
    }

    #[test]
    fn poison_rows_fail_with_a_reason_and_do_not_block_good_ones() {
        let h = handler(true);
        let rows = [
            json!({"execution_id": "good", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {"n": 0}}),
            json!({"execution_id": "nofields", "seq": 0}),
            json!({"execution_id": "wrongtype", "seq": 0, "client_id": 7, "flow_id": "f", "input": {}}),
            json!({"execution_id": "unknown", "seq": 0, "client_id": "nobody", "flow_id": "f", "input": {}}),
            json!({"execution_id": "badver", "seq": 0, "client_id": "acme", "flow_id": "f", "flow_version": 2, "input": {}}),
            json!({"seq": 0, "client_id": "acme"}),
        ];
        let resp = pollster::block_on(h.handle(event(&rows)));
        assert!(resp.batch_item_failures.is_empty());
        assert_eq!(status(&h, "good").1, "NO");
        for (id, why) in [
            ("nofields", "missing field `client_id`"),
            ("wrongtype", "invalid type"),
            ("unknown", "no client `nobody`"),
            ("badver", "v2 is invalid"),
        ] {
            let (_, st, _, reason) = status(&h, id);
            assert_eq!(st, "FAILED", "{id}");
            assert!(
                reason.as_deref().is_some_and(|r| r.contains(why)),
                "{id}: {reason:?}"
            );
        }
    }

    #[test]
    fn a_disabled_client_fails_and_a_transient_error_is_retried() {
        let h = handler(false);
        let row = json!({"execution_id": "d", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {"n": 5}});
        pollster::block_on(h.handle(event(&[row])));
        let (_, st, _, reason) = status(&h, "d");
        assert_eq!(st, "FAILED");
        assert!(reason.as_deref().is_some_and(|r| r.contains("disabled")));

        let h = handler(true);
        *h.store.fail_next.lock().expect("lock") = true;
        let row = json!({"execution_id": "t", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {"n": 5}});
        let resp = pollster::block_on(h.handle(event(std::slice::from_ref(&row))));
        assert_eq!(resp.batch_item_failures.len(), 1);
        assert_eq!(
            resp.batch_item_failures[0].item_identifier.as_deref(),
            Some("100")
        );
        let resp = pollster::block_on(h.handle(event(&[row])));
        assert!(resp.batch_item_failures.is_empty());
        drain(&h, false);
        assert_eq!(status(&h, "t").1, "OK");
    }

    #[test]
    fn a_failed_webhook_retries_the_step_with_the_same_key() {
        let h = handler(true);
        *h.deliveries.fail_first.lock().expect("lock") = true;
        let row = json!({"execution_id": "w", "seq": 0, "client_id": "acme", "flow_id": "f", "input": {"n": 5}});
        pollster::block_on(h.handle(event(&[row])));
        let rows: Vec<TriggerRow> = h.store.rows.lock().expect("lock").clone();
        assert_eq!(rows.len(), 1);
        let img = serde_json::to_value(&rows[0]).expect("row");
        let resp = pollster::block_on(h.handle(event(std::slice::from_ref(&img))));
        assert_eq!(
            resp.batch_item_failures.len(),
            1,
            "the failed delivery retries the record"
        );
        assert_eq!(status(&h, "w").0, 1, "and the step is not recorded");
        let resp = pollster::block_on(h.handle(event(&[img])));
        assert!(resp.batch_item_failures.is_empty());
        assert_eq!(status(&h, "w").1, "OK");
        assert_eq!(
            *h.deliveries.sent.lock().expect("lock"),
            vec!["w:1:0".to_string()]
        );
    }

    #[test]
    fn an_undeliverable_webhook_is_recorded_and_the_chain_goes_on() {
        let h = handler(true);
        let row = json!({"execution_id": "b", "seq": 0, "client_id": "acme", "flow_id": "f",
                         "flow_version": 3, "input": {"n": 5}});
        pollster::block_on(h.handle(event(&[row])));
        drain(&h, false);
        assert_eq!(status(&h, "b").1, "OK");
        assert!(h.deliveries.sent.lock().expect("lock").is_empty());
    }

    #[test]
    fn tables_come_from_the_stream_arn() {
        assert_eq!(
            table_of(Some(
                "arn:aws:dynamodb:us-east-1:1:table/rs-trigger/stream/2026-01-01T00:00:00.000"
            )),
            Some("rs-trigger".into())
        );
        assert_eq!(table_of(Some("nonsense")), None);
    }
}
