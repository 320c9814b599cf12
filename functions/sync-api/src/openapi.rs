//! The API's request and response types, and the OpenAPI 3.1 document generated from them
//! (`docs/openapi.json`; `sync-api --openapi` prints it, and a test keeps the file equal to what
//! the types say). The handler builds its answers from these types, so the document describes
//! what is sent; the e2e suite validates every answer it sees against the document.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// `POST /v1/executions`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The client (must be the API key's).
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The input the rules read as `input`.
    pub input: Map<String, Value>,
    /// `<client_id>:<unique>` (1–128 of `[A-Za-z0-9._:-]` after the colon); made by the API when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// Pins a version instead of the release's pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<u64>,
    /// `chain` (default): the orchestrator runs it; `inline`: the steps run in this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Wait for the end (or one of these statuses) before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
}

/// How an execution runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through the trigger table and the orchestrator.
    Chain,
    /// Inside the request, handing steps that call out to the chain.
    Inline,
}

/// What to wait for.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// Statuses that end the wait (default: the flow's terminal statuses); FAILED always does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_statuses: Option<Vec<String>>,
    /// At most this long (default 10,000, at most 25,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// 202: the execution runs on.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Started {
    /// Its id.
    pub execution_id: String,
    /// `RUNNING`.
    pub status: String,
}

/// 200: the execution reached one of the statuses waited for.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Ended {
    /// Its id.
    pub execution_id: String,
    /// The status reached.
    pub status: String,
    /// Why, for people.
    pub reason: Option<String>,
    /// The execution's `ctx` when it ended.
    pub output: Value,
    /// The version that ran.
    pub flow_version: Option<u64>,
}

/// `GET /v1/executions/{id}`: the summary, with the trace (from the steps while it runs).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Execution {
    /// Its id.
    pub execution_id: String,
    /// Client.
    pub client_id: String,
    /// Flow.
    pub flow_id: String,
    /// Version.
    pub flow_version: Option<u64>,
    /// RUNNING, a terminal status, FAILED or CANCELLED.
    pub status: String,
    /// RFC 3339; absent right after a start, until the orchestrator has picked up the seq 0
    /// row.
    pub started_at: Option<String>,
    /// Every step so far: rule, outcome, transition, explain, duration, actions.
    pub trace: Vec<Value>,
    /// More fields of the summary (finished_at, output, reason, error, tags, route, rerun_of…).
    #[serde(flatten)]
    pub more: Map<String, Value>,
}

/// `GET /v1/executions`: one page, newest first.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionList {
    /// Summaries without their traces.
    pub executions: Vec<Value>,
    /// Pass as `cursor` for the next page; null on the last.
    pub cursor: Option<String>,
}

/// `POST /v1/executions/{id}/cancel`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Cancelled {
    /// Its id.
    pub execution_id: String,
    /// `CANCELLED`.
    pub status: String,
}

/// `POST /v1/dry-run`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// The client (must be the API key's).
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The input.
    pub input: Map<String, Value>,
    /// A version instead of the release's stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<u64>,
    /// Answers of `lambda`/`http` rules by rule id: `{"outcome", "set"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mocks: Option<Map<String, Value>>,
    /// Stands in for client data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Map<String, Value>>,
}

/// The dry run's report.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DryRunAnswer {
    /// A terminal status, the default status, or FAILED.
    pub status: String,
    /// Why.
    pub reason: Option<String>,
    /// Rule ids in order.
    pub path: Vec<String>,
    /// Each step: rule, outcome, transition, explain.
    pub steps: Vec<Value>,
    /// The context at the end.
    pub ctx: Value,
    /// Tags added.
    pub tags: Vec<String>,
    /// Actions planned (none delivered).
    pub actions: Vec<Value>,
    /// More fields (`error` when FAILED…).
    #[serde(flatten)]
    pub more: Map<String, Value>,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's code and message (never a stack trace or a secret).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large,
    /// throttled, internal.
    pub code: String,
    /// For people.
    pub message: String,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// Always true when the function answers.
    pub ok: bool,
}

/// The OpenAPI 3.1 document of the API, built from the types above.
pub fn document() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let r = |s: schemars::Schema| s.to_value();
    let start_req = r(generator.subschema_for::<StartRequest>());
    let started = r(generator.subschema_for::<Started>());
    let ended = r(generator.subschema_for::<Ended>());
    let execution = r(generator.subschema_for::<Execution>());
    let list = r(generator.subschema_for::<ExecutionList>());
    let cancelled = r(generator.subschema_for::<Cancelled>());
    let dry_req = r(generator.subschema_for::<DryRunRequest>());
    let dry = r(generator.subschema_for::<DryRunAnswer>());
    let error = r(generator.subschema_for::<ErrorBody>());
    let health = r(generator.subschema_for::<Health>());
    let schemas = generator.take_definitions(true);
    let body = |schema: &Value, description: &str| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let errors = |codes: &[(&str, &str)]| -> Map<String, Value> {
        codes
            .iter()
            .map(|(c, d)| (c.to_string(), body(&error, d)))
            .collect()
    };
    let common = [
        (
            "400",
            "invalid JSON or fields (the message names the field)",
        ),
        ("401", "x-api-key missing or wrong"),
        ("413", "body over 256 KiB"),
        ("429", "throttled"),
        ("500", "the service failed"),
    ];
    let with = |mut m: Map<String, Value>, extra: &[(&str, Value)]| {
        for (k, v) in extra {
            m.insert(k.to_string(), v.clone());
        }
        Value::Object(m)
    };
    let id_param = json!({"name": "id", "in": "path", "required": true,
        "description": "`<client_id>:<unique>` (percent-encoded or not)", "schema": {"type": "string"}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rulestream sync API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Start an execution and wait for one of its terminal statuses, read, list and cancel executions, dry-run a flow. Generated from functions/sync-api/src/openapi.rs."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/executions": {
                "post": {
                    "summary": "Start an execution (and with `wait`, wait for its end)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": start_req}}},
                    "responses": with(errors(&[common[0], common[1], ("403", "another client's flow"), ("404", "unknown flow"), ("409", "execution_id exists"), common[2], common[3], common[4]]), &[
                        ("200", body(&ended, "ended, or reached a status waited for")),
                        ("202", body(&started, "running (no wait, the wait timed out, or inline handed it to the chain)")),
                    ]),
                },
                "get": {
                    "summary": "The client's executions, newest first, paged",
                    "parameters": [
                        {"name": "client_id", "in": "query", "description": "default: the API key's client (another is a 403)", "schema": {"type": "string"}},
                        {"name": "flow_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "description": "RFC 3339, or 30s/15m/2h/7d", "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": with(errors(&[common[0], common[1], ("403", "client_id names another client"), common[3], common[4]]), &[("200", body(&list, "one page"))]),
                }
            },
            "/v1/executions/{id}": {
                "get": {
                    "summary": "An execution's summary with its trace",
                    "parameters": [id_param.clone()],
                    "responses": with(errors(&[common[1], ("404", "unknown, or another client's"), common[3], common[4]]), &[("200", body(&execution, "the summary"))]),
                }
            },
            "/v1/executions/{id}/cancel": {
                "post": {
                    "summary": "End a running execution CANCELLED before its next step",
                    "parameters": [id_param],
                    "responses": with(errors(&[common[1], ("404", "unknown, or another client's"), ("409", "it already ended otherwise"), common[3], common[4]]), &[("200", body(&cancelled, "cancelled (or it already was)"))]),
                }
            },
            "/v1/dry-run": {
                "post": {
                    "summary": "What would happen, with no side effect at all",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": dry_req}}},
                    "responses": with(errors(&[common[0], common[1], ("403", "another client's flow"), ("404", "unknown flow"), common[2], common[3], common[4]]), &[("200", body(&dry, "the report"))]),
                }
            },
            "/v1/health": {
                "get": {"summary": "Liveness", "security": [], "responses": {"200": body(&health, "up")}}
            }
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json"))
                .expect("JSON");
        assert!(
            committed == document(),
            "docs/openapi.json is stale: regenerate it with `make openapi`"
        );
    }

    #[test]
    fn answers_serialize_to_what_the_document_says() {
        let doc = document();
        let validator = |name: &str| {
            let mut schema = json!({"$ref": format!("#/components/schemas/{name}")});
            schema["components"] = doc["components"].clone();
            jsonschema::validator_for(&schema).expect("schema compiles")
        };
        let ended = serde_json::to_value(Ended {
            execution_id: "c:1".into(),
            status: "OK".into(),
            reason: None,
            output: json!({"a": 1}),
            flow_version: Some(2),
        })
        .expect("json");
        assert!(validator("Ended").is_valid(&ended), "{ended}");
        let bad = json!({"error": {"code": 7}});
        assert!(!validator("ErrorBody").is_valid(&bad));
    }
}
