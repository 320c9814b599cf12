//! Routes of the sync API (SPEC section 5), their checks, and one error type mapped to responses
//! in one place ([`ApiError`] → `{"error": {"code", "message"}}`). Never a stack trace, never a
//! secret, never client data in an answer.

use crate::openapi as api;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use lambda_http::{Body, Request, RequestExt, Response};
use rulestream_aws::config::Config;
use rulestream_aws::{AwsEffects, AwsFlowSource, Http, StateSealer};
use rulestream_core::chain::{
    Cancel, Chain, INLINE_MARK, RUNNING, bounded_trace, cancel, summary_or_pending,
};
use rulestream_core::execution::{check_execution_id, duration_secs};
use rulestream_core::ports::{FlowSource, Journal, StoreError};
use rulestream_core::{ExecutionMeta, Mocked};
use serde_json::{Map, Value, json};

use crate::inline::Captured;
use crate::keys::ApiKeys;

/// The step loop, as the orchestrator has it, with trigger rows captured for inline runs.
pub type InlineChain = Chain<AwsFlowSource, Captured, AwsEffects, Arc<Http>, StateSealer>;

/// Largest request body accepted (a trigger row must fit a 400 KB item with room to spare).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Default and largest `wait.timeout_ms` (API Gateway answers within 29 s).
pub const DEFAULT_WAIT_MS: u64 = 10_000;
/// The largest `wait.timeout_ms`.
pub const MAX_WAIT_MS: u64 = 25_000;
/// How long an inline run that was cancelled meanwhile waits for the cancel's summary.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);

/// How long an inline execution runs in the invocation before the chain takes the rest. The
/// step that is running when it passes still makes its writes and its deliveries' first
/// attempt (at most 1 s, `chain::IN_STEP_DELIVERY_MS`), and the function answers within API
/// Gateway's 29 s.
pub const INLINE_BUDGET: Duration = Duration::from_secs(15);
/// How long a start of a client with a quota looks for the orchestrator's verdict before
/// answering 202.
pub const QUOTA_LOOK: Duration = Duration::from_millis(2_000);
/// Page size of `GET /v1/executions`.
pub const PAGE: i32 = 50;
/// How many executions one filtered list request examines at most before it answers a short
/// page with a cursor.
const LIST_EXAMINED_MAX: i32 = 1000;

/// What the function holds from its cold start.
pub struct App {
    /// The step loop (inline runs, cancel, reads).
    pub chain: InlineChain,
    /// DynamoDB (trigger rows, listing).
    pub ddb: Client,
    /// API keys.
    pub keys: ApiKeys,
    /// Configuration.
    pub cfg: Config,
}

/// An answer other than success.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(m: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", m)
    }
    fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", m)
    }
    fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log, not to the caller.
        tracing::error!(error = %e, "{what}");
        ApiError::new(
            500,
            "internal",
            format!("{what}: the service failed, try again"),
        )
    }
}

fn store(what: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::not_found(m),
        other => ApiError::internal(what, other),
    }
}

type Answer = Result<(u16, Value), ApiError>;

/// A typed answer as JSON (the types are the OpenAPI document's, [`crate::openapi`]).
fn answer<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = lambda_http::http::StatusCode::from_u16(status)
        .unwrap_or(lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        lambda_http::http::HeaderValue::from_static("application/json"),
    );
    if status == 429 {
        // Start quotas refill every second.
        r.headers_mut().insert(
            "retry-after",
            lambda_http::http::HeaderValue::from_static("1"),
        );
    }
    r
}

/// `%3A` → `:` (execution ids in paths may come percent-encoded).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn body_json(req: &Request) -> Result<Map<String, Value>, ApiError> {
    let bytes: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!(
                "the body is {} bytes; the limit is {MAX_BODY_BYTES}",
                bytes.len()
            ),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the body is not valid JSON: {e}"))),
    }
}

/// A summary with every field SPEC section 3 lists, `null` where it has no value yet (a
/// `reason` of an execution that completed without one, a `finished_at` while it runs).
fn with_summary_fields(mut e: Value) -> Value {
    if let Some(o) = e.as_object_mut() {
        for k in rulestream_core::chain::SUMMARY_FIELDS {
            o.entry(k).or_insert(Value::Null);
        }
    }
    e
}

/// The versions an execution may run: the pinned one, else stable and the candidate.
fn may_run(pinned: Option<u64>, release: &rulestream_core::execution::Release) -> Vec<u64> {
    match pinned {
        Some(v) => vec![v],
        None => std::iter::once(release.stable)
            .chain(release.candidate)
            .collect(),
    }
}

fn only(body: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad(format!(
            "unknown field `{what}{k}` (known: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn text<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(ApiError::bad(format!(
            "`{field}` must be a non-empty string"
        ))),
        None => Err(ApiError::bad(format!("`{field}` is required"))),
    }
}

fn object(body: &Map<String, Value>, field: &str) -> Result<Value, ApiError> {
    match body.get(field) {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(ApiError::bad(format!("`{field}` must be a JSON object"))),
        None => Err(ApiError::bad(format!("`{field}` is required"))),
    }
}

fn opt_u64(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("`{field}` must be a whole number"))),
    }
}

impl App {
    /// Answers one request.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        match self.route(&req).await {
            Ok((status, body)) => respond(status, &body),
            Err(e) => respond(
                e.status,
                &answer(&api::ErrorBody {
                    error: api::ErrorDetail {
                        code: e.code.to_string(),
                        message: e.message,
                    },
                }),
            ),
        }
    }

    async fn route(&self, req: &Request) -> Answer {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        // Stage or function-URL prefixes before `/v1/` are not part of the route.
        let tail = path.find("/v1/").map_or(path.as_str(), |i| &path[i..]);
        let segs: Vec<String> = tail
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["v1", "health"]) => Ok((200, answer(&api::Health { ok: true }))),
            ("POST", ["v1", "executions"]) => self.start(req).await,
            ("GET", ["v1", "executions"]) => self.list(req).await,
            ("GET", ["v1", "executions", id]) => self.get(req, id).await,
            ("POST", ["v1", "executions", id, "cancel"]) => self.cancel(req, id).await,
            ("POST", ["v1", "dry-run"]) => self.dry_run(req).await,
            _ => Err(ApiError::not_found(format!("no route {method} {tail}"))),
        }
    }

    /// The clients the caller's `x-api-key` opens; 401 when missing or unknown.
    async fn caller(&self, req: &Request) -> Result<Vec<String>, ApiError> {
        let Some(key) = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
        else {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "the x-api-key header is missing",
            ));
        };
        let clients = self
            .keys
            .clients_of(key)
            .await
            .map_err(|e| ApiError::internal("reading API keys", e))?;
        if clients.is_empty() {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "the API key is not valid",
            ));
        }
        Ok(clients)
    }

    /// The caller may act for `client`: 403 otherwise.
    async fn for_client(&self, req: &Request, client: &str) -> Result<(), ApiError> {
        if self.caller(req).await?.iter().any(|c| c == client) {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                "forbidden",
                format!("this API key is not for client `{client}`"),
            ))
        }
    }

    /// The caller may see execution `id`: 404 when it is another client's (not 403: the id of
    /// another client's execution says nothing).
    async fn for_execution(&self, req: &Request, id: &str) -> Result<(), ApiError> {
        let client = id.split_once(':').map_or("", |(c, _)| c);
        if self.caller(req).await?.iter().any(|c| c == client) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("no execution `{id}`")))
        }
    }

    async fn start(&self, req: &Request) -> Answer {
        // A wait and the inline budget count from the request's arrival: what comes before the
        // run (the key, the body, the flow's release) is inside the function's time too.
        let started = Instant::now();
        // Who is asking comes first: a request without a valid key is a 401 whatever its body.
        self.caller(req).await?;
        let body = body_json(req)?;
        only(
            &body,
            &[
                "client_id",
                "flow_id",
                "input",
                "execution_id",
                "flow_version",
                "mode",
                "wait",
            ],
            "",
        )?;
        let client = text(&body, "client_id")?.to_string();
        let flow = text(&body, "flow_id")?.to_string();
        let input = object(&body, "input")?;
        let version = opt_u64(&body, "flow_version")?;
        let inline = match body.get("mode") {
            None | Some(Value::Null) => false,
            Some(Value::String(m)) if m == "chain" => false,
            Some(Value::String(m)) if m == "inline" => true,
            Some(_) => return Err(ApiError::bad("`mode` must be \"chain\" or \"inline\"")),
        };
        let wait = match body.get("wait") {
            None | Some(Value::Null) => None,
            Some(Value::Object(w)) => Some(w.clone()),
            Some(_) => return Err(ApiError::bad("`wait` must be an object")),
        };
        self.for_client(req, &client).await?;
        let cf = self
            .chain
            .flows
            .client_flow(&client, &flow)
            .await
            .map_err(|e| store("reading the client's flow", e))?;
        if !cf.enabled {
            // The flow exists, and this caller may not start it now.
            return Err(ApiError::new(
                403,
                "forbidden",
                format!("flow `{flow}` of client `{client}` is disabled"),
            ));
        }
        if let Some(v) = version {
            // A pinned version that does not exist is a 404 now (as for a dry run), rather than
            // an execution that ends FAILED. One that exists but is invalid still starts, and
            // ends FAILED with its validation errors (SPEC section 1).
            if let Err(StoreError::NotFound(m)) =
                self.chain.flows.flow_version(&client, &flow, v).await
            {
                return Err(ApiError::not_found(m));
            }
        }
        let timeout = match &wait {
            None => None,
            Some(w) => {
                only(w, &["terminal_statuses", "timeout_ms"], "wait.")?;
                let ms = opt_u64(w, "timeout_ms")
                    .map_err(|_| ApiError::bad("`wait.timeout_ms` must be a whole number"))?
                    .unwrap_or(DEFAULT_WAIT_MS);
                if ms > MAX_WAIT_MS {
                    return Err(ApiError::bad(format!(
                        "`wait.timeout_ms` is at most {MAX_WAIT_MS}"
                    )));
                }
                if let Some(list) = w.get("terminal_statuses") {
                    let wanted: Vec<&str> = list
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .filter(|v: &Vec<&str>| Some(v.len()) == list.as_array().map(Vec::len))
                        .ok_or_else(|| {
                            ApiError::bad("`wait.terminal_statuses` must be a list of strings")
                        })?;
                    let known = self.statuses(&client, &flow, version, &cf.release).await?;
                    if let Some(known) = known
                        && let Some(s) = wanted.iter().find(|s| !known.iter().any(|k| k == *s))
                    {
                        return Err(ApiError::bad(format!(
                            "`wait.terminal_statuses`: flow `{flow}` has no status `{s}` (it has {})",
                            known.join(", ")
                        )));
                    }
                }
                Some(Duration::from_millis(ms))
            }
        };
        let id = match body.get("execution_id") {
            None | Some(Value::Null) => format!("{client}:{}", uuid::Uuid::new_v4()),
            Some(Value::String(id)) => {
                check_execution_id(&client, id)
                    .map_err(|why| ApiError::bad(format!("`execution_id`: {why}")))?;
                id.clone()
            }
            Some(_) => return Err(ApiError::bad("`execution_id` must be a string")),
        };
        // An id in use: a summary, or a seq 0 row the orchestrator has not picked up yet (an
        // inline run of it would fork the execution).
        if summary_or_pending(&self.chain.journal, &self.cfg.trigger_table, &id)
            .await
            .map_err(|e| store("reading the execution", e))?
            .is_some()
        {
            return Err(ApiError::new(
                409,
                "conflict",
                format!("execution `{id}` already exists"),
            ));
        }
        let mut row = json!({"execution_id": id, "seq": 0, "client_id": client, "flow_id": flow,
            "input": input,
            "expires_at": self.chain.settings.row_expires_at()});
        if let Some(v) = version {
            row["flow_version"] = json!(v);
        }
        // Inline runs here, unless the start rule calls out or takes a token in a version the
        // execution may run: the chain runs that, as it runs any such step (see `run_inline`).
        let inline = inline
            && !self
                .starts_with_effects(&client, &flow, version, &cf.release)
                .await;
        if inline {
            // A wait shorter than the inline budget bounds the inline run too.
            let budget = timeout
                .map_or(INLINE_BUDGET, |t| t.min(INLINE_BUDGET))
                .saturating_sub(started.elapsed());
            let handed_off = self.run_inline(&id, row.clone(), budget).await?;
            self.keep_input(row).await;
            if let Some(answer) = self.ended(&id).await? {
                return Ok(answer);
            }
            // Neither ended nor handed off: it was ended from outside meanwhile (a cancel
            // writes its stop marker, then the summary). The summary follows in a moment; the
            // answer is then that end, else 202 like any execution that still runs.
            if !handed_off && let Some(answer) = self.wait(&id, CANCEL_SETTLE).await? {
                return Ok(answer);
            }
        } else {
            self.put_row(&row, true).await?;
            if timeout.is_none() && cf.quota.is_some() {
                // A client with a start quota: the orchestrator decides at seq 0, in a moment;
                // a start over the quota is answered 429 rather than 202 (SPEC 3 `quota`).
                self.refused_over_quota(&id, QUOTA_LOOK).await?;
            }
        }
        if let Some(t) = timeout {
            let left = t.saturating_sub(started.elapsed());
            if let Some(answer) = self.wait(&id, left).await? {
                return Ok(answer);
            }
        }
        Ok((
            202,
            answer(&api::Started {
                execution_id: id,
                status: RUNNING.into(),
            }),
        ))
    }

    /// Every status an execution of the flow can end with: the terminal statuses and default
    /// status of the version(s) it may run, `FAILED` and `CANCELLED`; `None` when none of those
    /// versions can be read (each is missing or invalid).
    async fn statuses(
        &self,
        client: &str,
        flow: &str,
        pinned: Option<u64>,
        release: &rulestream_core::execution::Release,
    ) -> Result<Option<Vec<String>>, ApiError> {
        let mut out = vec!["FAILED".to_string(), "CANCELLED".to_string()];
        let mut read = 0;
        for v in may_run(pinned, release) {
            let f = match self.chain.flows.flow_version(client, flow, v).await {
                Ok(f) => f,
                // A version that is missing or fails validation has no statuses to offer: an
                // execution that picks it ends `FAILED` with the reason (SPEC section 1), which
                // the wait answers like any end.
                Err(StoreError::NotFound(_) | StoreError::Invalid(_)) => continue,
                Err(e) => return Err(store("reading the flow", e)),
            };
            read += 1;
            let doc = f.flow();
            for s in doc
                .terminal_statuses
                .iter()
                .cloned()
                .chain(std::iter::once(doc.default_status().to_string()))
            {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        // No version to read the statuses of: the list cannot be checked.
        Ok((read > 0).then_some(out))
    }

    /// Whether the start rule of a version the execution may run (the pinned one, else stable
    /// and candidate) calls out or takes a token; a version that cannot be read counts as yes.
    async fn starts_with_effects(
        &self,
        client: &str,
        flow: &str,
        pinned: Option<u64>,
        release: &rulestream_core::execution::Release,
    ) -> bool {
        for v in may_run(pinned, release) {
            match self.chain.flows.flow_version(client, flow, v).await {
                Ok(f) if !f.decides_with_effects(None) => {}
                _ => return true,
            }
        }
        false
    }

    async fn put_row(&self, row: &Value, fresh: bool) -> Result<(), ApiError> {
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(row).map_err(|e| ApiError::internal("the trigger row", e))?;
        let mut put = self
            .ddb
            .put_item()
            .table_name(&self.cfg.trigger_table)
            .set_item(Some(item));
        if fresh {
            put = put.condition_expression("attribute_not_exists(execution_id)");
        }
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(ApiError::new(
                    409,
                    "conflict",
                    format!(
                        "execution `{}` already exists",
                        row["execution_id"].as_str().unwrap_or_default()
                    ),
                ))
            }
            Err(e) => Err(ApiError::internal(
                "writing the trigger row",
                rulestream_aws::errors::sdk_error_text(&e),
            )),
        }
    }

    /// Runs the execution's steps here, with the orchestrator's own step loop. A step that calls
    /// out (a `lambda`/`http` master rule, a rate-limited rule), a step that fails transiently,
    /// or the inline budget running out hands the rest to the chain: its row is written to the
    /// trigger table for real. Returns whether it was handed off.
    async fn run_inline(&self, id: &str, seq0: Value, budget: Duration) -> Result<bool, ApiError> {
        let table = self.cfg.trigger_table.clone();
        let started = Instant::now();
        if self
            .chain
            .run_row(Some(&table), seq0.clone())
            .await
            .is_err()
        {
            self.put_row(&seq0, true).await?;
            return Ok(true);
        }
        // The version the execution runs, read once (its summary was written at seq 0).
        let flow = self.flow_of(id).await;
        loop {
            let rows = self.chain.journal.take(id);
            if rows.is_empty() {
                return Ok(false);
            }
            for (t, row) in rows {
                let next = self.chain.next_rule(&row).await;
                // Rules that decide with effects (and any doubt about the flow) go to the chain.
                let calls_out = match (&flow, next.as_deref()) {
                    (Some(f), Some(rule)) => f.decides_with_effects(Some(rule)),
                    _ => true,
                };
                if calls_out || started.elapsed() > budget {
                    self.hand_off(&t, &row).await?;
                    return Ok(true);
                }
                if self.chain.run_row(Some(&t), row.clone()).await.is_err() {
                    self.hand_off(&t, &row).await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Keeps the input of an execution run inline where `rerun` reads every original's input:
    /// its seq 0 row, written once the execution has its summary and marked so the orchestrator
    /// passes over it. When the chain took the execution over at seq 0, its real row is there
    /// already and stays. The execution has run whatever happens here, so a failure is only
    /// logged: `rerun` of it then says that its input is gone.
    async fn keep_input(&self, mut row: Value) {
        row[INLINE_MARK] = json!(true);
        match self.put_row(&row, true).await {
            Ok(()) => {}
            Err(e) if e.status == 409 => {}
            Err(e) => {
                tracing::warn!(execution_id = %row["execution_id"].as_str().unwrap_or_default(),
                error = %e.message, "the input of an inline execution was not kept: it cannot be rerun")
            }
        }
    }

    async fn hand_off(&self, table: &str, row: &Value) -> Result<(), ApiError> {
        self.chain
            .journal
            .inner
            .put_row(table, row)
            .await
            .map(|_| ())
            .map_err(|e| ApiError::internal("handing the execution to the chain", e))
    }

    /// The compiled flow version an execution runs (from its summary); `None` when it cannot be
    /// told, and then every next step goes to the chain.
    async fn flow_of(&self, id: &str) -> Option<Arc<rulestream_core::CompiledFlow>> {
        let summary = self.chain.journal.summary(id).await.ok()??;
        let version = summary["flow_version"].as_u64()?;
        self.chain
            .flows
            .flow_version(
                summary["client_id"].as_str()?,
                summary["flow_id"].as_str()?,
                version,
            )
            .await
            .ok()
    }

    /// The answer for an execution that has ended, if it has.
    async fn ended(&self, id: &str) -> Result<Option<(u16, Value)>, ApiError> {
        let Some(e) = self
            .chain
            .journal
            .summary(id)
            .await
            .map_err(|e| store("reading the execution", e))?
        else {
            return Ok(None);
        };
        if e["status"] == RUNNING {
            return Ok(None);
        }
        let reason = e.get("reason").cloned().unwrap_or(Value::Null);
        if e["status"] == "FAILED"
            && reason
                .as_str()
                .is_some_and(|r| r.starts_with("start quota exceeded"))
        {
            return Err(ApiError::new(
                429,
                "throttled",
                reason.as_str().unwrap_or_default().to_string(),
            ));
        }
        Ok(Some((
            200,
            answer(&api::Ended {
                execution_id: id.to_string(),
                status: e["status"].as_str().unwrap_or_default().to_string(),
                reason: reason.as_str().map(str::to_string),
                output: e.get("output").cloned().unwrap_or(json!({})),
                flow_version: e.get("flow_version").and_then(Value::as_u64),
            }),
        )))
    }

    /// Follows the execution with consistent reads and a backoff until it ends or `left` runs
    /// out.
    /// Waits (at most `left`) for the execution's summary to exist, which the orchestrator
    /// writes at seq 0 after its quota check; `Err(429)` when the start was over the quota.
    async fn refused_over_quota(&self, id: &str, left: Duration) -> Result<(), ApiError> {
        let until = Instant::now() + left;
        let mut pause = Duration::from_millis(20);
        loop {
            let summary = self
                .chain
                .journal
                .summary(id)
                .await
                .map_err(|e| store("reading the execution", e))?;
            if let Some(e) = summary {
                if e["status"] == "FAILED" {
                    // `ended` answers 429 for a start over the quota.
                    self.ended(id).await?;
                }
                return Ok(());
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep(pause.min(until - now)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn wait(&self, id: &str, left: Duration) -> Result<Option<(u16, Value)>, ApiError> {
        let until = Instant::now() + left;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(answer) = self.ended(id).await? {
                return Ok(Some(answer));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(until - now)).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(500));
        }
    }

    async fn get(&self, req: &Request, id: &str) -> Answer {
        self.for_execution(req, id).await?;
        // Right after a start, before the orchestrator has picked up its seq 0 row: RUNNING.
        let Some(mut e) = summary_or_pending(&self.chain.journal, &self.cfg.trigger_table, id)
            .await
            .map_err(|e| store("reading the execution", e))?
        else {
            return Err(ApiError::not_found(format!("no execution `{id}`")));
        };
        // While it runs, and while a delivery of an ended execution is still being retried
        // (its results land on the step items, not on the summary), the trace is read from
        // the steps.
        if e["status"] == RUNNING || has_open_delivery(&e["trace"]) {
            let steps: Vec<Value> = self
                .chain
                .journal
                .steps(id)
                .await
                .map_err(|e| store("reading the steps", e))?
                .into_iter()
                .filter(|s| s.get("stop").is_none())
                .collect();
            let (trace, total) = bounded_trace(&steps);
            e["trace"] = json!(trace);
            e["steps_total"] = json!(total);
        }
        if let Some(o) = e.as_object_mut() {
            o.remove("running_shard");
            o.remove("expires_at");
        }
        Ok((200, with_summary_fields(e)))
    }

    async fn cancel(&self, req: &Request, id: &str) -> Answer {
        self.for_execution(req, id).await?;
        match cancel(
            &self.chain.journal,
            &self.chain.settings,
            id,
            "cancelled through the API",
        )
        .await
        .map_err(|e| store("cancelling", e))?
        {
            Cancel::Cancelled { .. } => Ok((
                200,
                answer(&api::Cancelled {
                    execution_id: id.to_string(),
                    status: "CANCELLED".into(),
                }),
            )),
            Cancel::AlreadyEnded(s) if s == "CANCELLED" => Ok((
                200,
                answer(&api::Cancelled {
                    execution_id: id.to_string(),
                    status: s,
                }),
            )),
            Cancel::AlreadyEnded(s) => Err(ApiError::new(
                409,
                "conflict",
                format!("execution `{id}` already ended {s}"),
            )),
            Cancel::NotFound => Err(ApiError::not_found(format!("no execution `{id}`"))),
        }
    }

    async fn list(&self, req: &Request) -> Answer {
        let clients = self.caller(req).await?;
        let q = req.query_string_parameters();
        let client = match q.first("client_id") {
            Some(c) if clients.iter().any(|k| k == c) => c.to_string(),
            Some(c) => {
                return Err(ApiError::new(
                    403,
                    "forbidden",
                    format!("this API key is not for client `{c}`"),
                ));
            }
            None if clients.len() == 1 => clients[0].clone(),
            None => {
                return Err(ApiError::bad(
                    "this API key opens several clients: name one with `client_id`",
                ));
            }
        };
        let mut names = HashMap::from([
            ("#c".to_string(), "client_id".to_string()),
            ("#s".to_string(), "status".to_string()),
        ]);
        let mut values = HashMap::from([(":c".to_string(), AttributeValue::S(client.clone()))]);
        let mut key = "#c = :c".to_string();
        if let Some(since) = q.first("since") {
            // An RFC 3339 time, or a look-back from now as the CLI's `--since` takes it.
            let t = match chrono::DateTime::parse_from_rfc3339(since) {
                Ok(t) => t.with_timezone(&chrono::Utc),
                Err(_) => duration_secs(since)
                    .ok()
                    .and_then(chrono::TimeDelta::try_seconds)
                    .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                    .ok_or_else(|| {
                        ApiError::bad(
                            "`since` must be an RFC 3339 time (e.g. 2026-11-30T00:00:00Z) or a look-back (30s, 15m, 2h, 7d)",
                        )
                    })?,
            };
            names.insert("#t".into(), "started_at".into());
            values.insert(
                ":t".into(),
                AttributeValue::S(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
            key.push_str(" AND #t >= :t");
        }
        let mut filters = Vec::new();
        if let Some(f) = q.first("flow_id") {
            names.insert("#f".into(), "flow_id".into());
            values.insert(":f".into(), AttributeValue::S(f.to_string()));
            filters.push("#f = :f");
        }
        if let Some(s) = q.first("status") {
            values.insert(":s".into(), AttributeValue::S(s.to_string()));
            filters.push("#s = :s");
        }
        let start = match q.first("cursor") {
            None => None,
            Some(c) => {
                // A cursor this route gave: a position in this client's listing (the keys of
                // the item a page ended at).
                let k = decode_cursor(c)
                    .filter(|k| {
                        let text = |name: &str| {
                            k.get(name)
                                .and_then(|v| v.as_s().ok())
                                .filter(|s| !s.is_empty())
                        };
                        k.len() == 3
                            && text("client_id") == Some(&client)
                            && text("execution_id").is_some()
                            && text("started_at").is_some()
                    })
                    .ok_or_else(|| ApiError::bad("`cursor` is not valid"))?;
                // Past the start of the window (a look-back `since` moves on between pages):
                // nothing older is in it, so this is the last page.
                if let (Some(AttributeValue::S(t)), Some(AttributeValue::S(at))) =
                    (values.get(":t"), k.get("started_at"))
                    && at < t
                {
                    return Ok((
                        200,
                        answer(&api::ExecutionList {
                            executions: Vec::new(),
                            cursor: None,
                        }),
                    ));
                }
                Some(k)
            }
        };
        // A filter applies after DynamoDB reads a page, so a filtered page can come back short
        // or empty. Read on until the page is full, the index is exhausted, or
        // LIST_EXAMINED_MAX items were examined (then the cursor goes on from there).
        let filter = (!filters.is_empty()).then(|| filters.join(" AND "));
        let full = usize::try_from(PAGE).unwrap_or(50);
        let mut items: Vec<Value> = Vec::new();
        let mut start = start;
        let mut examined = 0;
        let cursor = loop {
            let page = self
                .ddb
                .query()
                .table_name(&self.cfg.executions_table)
                .index_name("by-client")
                .key_condition_expression(&key)
                .set_filter_expression(filter.clone())
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .projection_expression(
                    "execution_id, client_id, flow_id, flow_version, #s, started_at, finished_at, reason, rerun_of",
                )
                .scan_index_forward(false)
                .limit(PAGE)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    ApiError::internal(
                        "listing executions",
                        rulestream_aws::errors::sdk_error_text(&e),
                    )
                })?;
            examined += page.scanned_count().max(1);
            let mut filled_at = None;
            for item in page.items() {
                if let Ok(v) = serde_dynamo::from_item::<_, Value>(item.clone()) {
                    items.push(v);
                }
                if items.len() == full {
                    filled_at = Some(item);
                    break;
                }
            }
            let next = page.last_evaluated_key().filter(|k| !k.is_empty());
            if let Some(item) = filled_at {
                // Full: the next page starts after the item that filled this one (its keys in
                // the index and the table), unless it was the last item there is.
                let last_of_all = next.is_none() && page.items().last() == Some(item);
                break (!last_of_all).then(|| {
                    let at: HashMap<String, AttributeValue> =
                        ["execution_id", "client_id", "started_at"]
                            .iter()
                            .filter_map(|k| item.get(*k).map(|v| ((*k).to_string(), v.clone())))
                            .collect();
                    encode_cursor(&at)
                });
            }
            match next {
                None => break None,
                Some(k) if examined >= LIST_EXAMINED_MAX => break Some(encode_cursor(k)),
                Some(k) => start = Some(k.clone()),
            }
        };
        Ok((
            200,
            answer(&api::ExecutionList {
                executions: items,
                cursor,
            }),
        ))
    }

    async fn dry_run(&self, req: &Request) -> Answer {
        // Who is asking comes first: a request without a valid key is a 401 whatever its body.
        self.caller(req).await?;
        let body = body_json(req)?;
        only(
            &body,
            &[
                "client_id",
                "flow_id",
                "input",
                "flow_version",
                "mocks",
                "client",
            ],
            "",
        )?;
        let client = text(&body, "client_id")?.to_string();
        let flow = text(&body, "flow_id")?.to_string();
        let input = object(&body, "input")?;
        let mocks = match body.get("mocks") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => {
                // As a real answer: a bool or a non-empty string.
                if let Some((rule, _)) = m.iter().find(|(_, a)| {
                    !a.get("outcome").is_some_and(|o| {
                        o.is_boolean() || o.as_str().is_some_and(|s| !s.is_empty())
                    })
                }) {
                    return Err(ApiError::bad(format!(
                        "`mocks.{rule}` needs an `outcome` (a bool or a non-empty string) and optionally `set`"
                    )));
                }
                m.clone()
            }
            Some(_) => {
                return Err(ApiError::bad(
                    "`mocks` must be an object of answers by rule id",
                ));
            }
        };
        let client_data = match body.get("client") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(ApiError::bad("`client` must be a JSON object")),
        };
        let version = opt_u64(&body, "flow_version")?;
        self.for_client(req, &client).await?;
        let cf = self
            .chain
            .flows
            .client_flow(&client, &flow)
            .await
            .map_err(|e| store("reading the client's flow", e))?;
        let version = version.unwrap_or(cf.release.stable);
        let compiled = self
            .chain
            .flows
            .flow_version(&client, &flow, version)
            .await
            .map_err(|e| match e {
                StoreError::Invalid(m) => ApiError::bad(m),
                other => store("reading the flow", other),
            })?;
        let meta = ExecutionMeta {
            execution_id: format!("{client}:dry-run"),
            client_id: client,
            flow_id: flow,
            flow_version: version,
        };
        let report = rulestream_core::run(
            &compiled,
            meta,
            &input,
            client_data.as_ref(),
            chrono::Utc::now(),
            None,
            &Mocked::for_flow(mocks, compiled.flow()),
        )
        .await;
        let mut doc = report.spec_json();
        doc["flow_version"] = json!(version);
        Ok((200, doc))
    }
}

fn encode_cursor(key: &HashMap<String, AttributeValue>) -> String {
    let plain: Map<String, Value> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k.clone(), json!(s))))
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Value::Object(plain).to_string())
}

fn decode_cursor(c: &str) -> Option<HashMap<String, AttributeValue>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let v: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    v.into_iter()
        .map(|(k, v)| v.as_str().map(|s| (k, AttributeValue::S(s.to_string()))))
        .collect()
}

/// Whether a trace holds a delivery that has not reached its end (`delivered` or `failed`).
fn has_open_delivery(trace: &Value) -> bool {
    trace.as_array().is_some_and(|lines| {
        lines.iter().any(|l| {
            l["actions"].as_array().is_some_and(|acts| {
                acts.iter().any(|a| {
                    a["delivery"]["status"]
                        .as_str()
                        .is_some_and(|s| s != "delivered" && s != "failed")
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_paths_are_percent_decoded() {
        assert_eq!(percent_decode("acme%3Aabc-1"), "acme:abc-1");
        assert_eq!(percent_decode("acme:abc"), "acme:abc");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }

    #[test]
    fn cursors_round_trip() {
        let k = HashMap::from([
            ("execution_id".to_string(), AttributeValue::S("a:1".into())),
            ("started_at".to_string(), AttributeValue::S("2026".into())),
        ]);
        assert_eq!(decode_cursor(&encode_cursor(&k)), Some(k));
        assert_eq!(decode_cursor("!!"), None);
    }
}
