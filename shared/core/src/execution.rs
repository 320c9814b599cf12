//! Executions as the trigger table and the executions table hold them (SPEC section 3): the
//! trigger row a client inserts (seq 0) or the orchestrator writes (seq n+1), the commit of one
//! step, and the version choice at seq 0 (SPEC section 4).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::{RunState, StepRecord};
use crate::gray;

/// A row of the trigger table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRow {
    /// The execution.
    pub execution_id: String,
    /// 0 for the row a client inserts; n+1 for each row the orchestrator writes.
    pub seq: u64,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The client's input.
    #[serde(default)]
    pub input: Value,
    /// Pins a version (seq 0), or the version picked at seq 0 (later rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<u64>,
    /// Pipe-delimited subset of rule ids to run; the others are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// Carried between steps (rows written by the orchestrator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// When the execution started (RFC 3339), carried between steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The execution this one reruns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// Where the client's data is read (carried so later steps need no clients-table read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<DataSource>,
    /// TTL (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl TriggerRow {
    /// The `rules` subset as ids (`None`: every rule runs).
    pub fn subset(&self) -> Option<Vec<String>> {
        self.rules.as_ref().map(|r| {
            r.split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
    }
}

/// The release state of a client's flow (the `release` attribute of the clients table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The version everyone gets.
    pub stable: u64,
    /// The version a gray share gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<u64>,
    /// The gray share (0–100) of the candidate.
    #[serde(default)]
    pub percent: f64,
    /// Bumped by every release message applied; stale messages are ignored.
    #[serde(default)]
    pub generation: u64,
}

impl Release {
    /// The version an execution starts on (SPEC section 4): the pinned one, else the candidate
    /// when the gray key's bucket is below the percent, else stable.
    pub fn pick(&self, client_id: &str, flow_id: &str, pinned: Option<u64>, gray_key: &str) -> u64 {
        if let Some(v) = pinned {
            return v;
        }
        match self.candidate {
            Some(c) if gray::in_gray(client_id, flow_id, gray_key, self.percent) => c,
            _ => self.stable,
        }
    }
}

/// Where a client's data comes from: a role in the client's account and a secret there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataSource {
    /// Role to assume with STS.
    pub role_arn: String,
    /// Secrets Manager id of the JSON client data.
    pub secret_id: String,
}

/// A clients-table row, as the orchestrator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFlow {
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// Disabled flows do not run.
    pub enabled: bool,
    /// Which versions serve.
    pub release: Release,
    /// Client data, when configured.
    pub data_source: Option<DataSource>,
}

/// What is known of an execution at its start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionHeader {
    /// The execution.
    pub execution_id: String,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The version picked at seq 0 (0 when none could be).
    pub flow_version: u64,
    /// RFC 3339.
    pub started_at: String,
    /// The execution this one reruns.
    pub rerun_of: Option<String>,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finish {
    /// Terminal status, default status, or `FAILED`.
    pub status: String,
    /// Why.
    pub reason: Option<String>,
    /// For `FAILED`: the error.
    pub error: Option<String>,
    /// The final `ctx`.
    pub output: Map<String, Value>,
    /// Tags added.
    pub tags: Vec<String>,
    /// Route set by `route_to`.
    pub route: Option<String>,
}

/// One step to persist, atomically: the trace line and either the next trigger row or the end.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCommit {
    /// Who.
    pub header: ExecutionHeader,
    /// The seq of the row that ran (the executions item must be at this seq).
    pub seq: u64,
    /// The trace line, when a rule ran.
    pub record: Option<StepRecord>,
    /// What follows.
    pub then: Then,
    /// RFC 3339 time of the commit.
    pub now: String,
}

/// What follows a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Put this row (seq + 1) into the trigger table.
    Continue(Box<TriggerRow>),
    /// The execution ended.
    Finish(Finish),
}
