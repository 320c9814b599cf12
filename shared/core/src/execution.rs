//! Executions as the trigger table and the executions table hold them (SPEC section 3): the
//! trigger row a client inserts (seq 0) or the orchestrator writes (seq n+1), the commit of one
//! step, and the version choice at seq 0 (SPEC section 4).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::gray;

/// What an `output` may weigh (JSON bytes); over it the execution ends `FAILED`.
pub const OUTPUT_LIMIT_BYTES: usize = 64 * 1024;

/// Why an execution whose `ctx` is this ends `FAILED` (instead of `status`, when it was about to
/// end): its output is over [`OUTPUT_LIMIT_BYTES`] (the same bound for the chain, inline runs
/// and dry runs).
pub fn output_over_bound(ctx: &Map<String, Value>, status: Option<&str>) -> Option<String> {
    // Counted as it is written, never held: this runs at every step that sets something.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let len = serde_json::to_writer(&mut count, ctx).map_or(0, |()| count.0);
    (len > OUTPUT_LIMIT_BYTES).then(|| {
        let was = status.map_or_else(String::new, |s| format!(" (status would have been {s})"));
        format!("output is {len} bytes, over the {OUTPUT_LIMIT_BYTES}-byte bound{was}")
    })
}

/// Who and what an execution is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionMeta {
    /// The execution id.
    pub execution_id: String,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The flow version picked at seq 0.
    pub flow_version: u64,
}

/// What an execution carries from one step to the next (in chain mode, inside the trigger row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Sequence number of the step about to run (0 for the first).
    pub seq: u64,
    /// Rule to run next (`None`: the flow's start rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// Values written by `set` and `set_field`.
    #[serde(default)]
    pub ctx: Map<String, Value>,
    /// Outcome of each rule run so far, by id.
    #[serde(default)]
    pub steps: Map<String, Value>,
    /// Tags added so far.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Route set by `route_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Keys of `ctx` that hold client data: written by a `set` whose expression read `client`
    /// (or such a key). Their values are used as they are, and shown as `"<client data>"`
    /// wherever `ctx` is shown (SPEC section 1, Trace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_keys: Vec<String>,
}

/// How client data shows in a trace, an output, a log or an answer.
pub const CLIENT_DATA: &str = "<client data>";

impl RunState {
    /// Records whether `ctx.<key>` now holds client data.
    pub fn mark_client(&mut self, key: &str, client: bool) {
        let at = self.client_keys.iter().position(|k| k == key);
        match (client, at) {
            (true, None) => self.client_keys.push(key.to_string()),
            (false, Some(i)) => {
                self.client_keys.swap_remove(i);
            }
            _ => {}
        }
    }

    /// `ctx` as it may be shown: every key that holds client data as `"<client data>"`.
    pub fn shown_ctx(&self) -> Map<String, Value> {
        let mut ctx = self.ctx.clone();
        for k in &self.client_keys {
            if let Some(v) = ctx.get_mut(k) {
                *v = Value::String(CLIENT_DATA.into());
            }
        }
        ctx
    }
}

/// A seq 0 row of the trigger table, as a client process inserts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRow {
    /// The execution.
    pub execution_id: String,
    /// Always 0.
    pub seq: u64,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The client's input.
    #[serde(default)]
    pub input: Value,
    /// Pins a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<u64>,
    /// Pipe-delimited subset of rule ids to run; the others are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// The execution this one reruns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// With `rerun_of`: start at this step of the original (a seq, or a rule id meaning its
    /// first visit), with the context the original had there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// TTL (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl TriggerRow {
    /// The `rules` subset as ids (`None`: every rule runs).
    pub fn subset(&self) -> Option<Vec<String>> {
        subset_of(self.rules.as_deref())
    }
}

/// A pipe-delimited `rules` subset as ids (`None`: every rule runs).
pub fn subset_of(rules: Option<&str>) -> Option<Vec<String>> {
    rules.map(|r| {
        r.split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
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
    /// The candidate's guard (automatic rollback, SPEC section 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// When the candidate was published (RFC 3339): its guard counts from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_since: Option<String>,
    /// The stable version before the last promote (what a rollback without a candidate returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// The id of the release message that made this generation (a redelivered message finds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
}

/// A release's guard (SPEC section 4): roll the candidate back when its `FAILED` share exceeds
/// stable's by more than `max_failed_delta`, once it has finished `min_executions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// A share (0–1): 0.05 is five points.
    pub max_failed_delta: f64,
    /// Executions the candidate must have finished before the guard judges it.
    pub min_executions: u64,
}

impl Guard {
    /// Checks the ranges; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(self.max_failed_delta.is_finite() && (0.0..=1.0).contains(&self.max_failed_delta)) {
            return Err(format!(
                "guard `max_failed_delta` must be a share between 0 and 1 (got {})",
                self.max_failed_delta
            ));
        }
        if self.min_executions == 0 {
            return Err("guard `min_executions` must be at least 1".into());
        }
        Ok(())
    }
}

impl Release {
    /// One version for everyone, no candidate, generation 0.
    pub fn stable_only(version: u64) -> Release {
        Release {
            stable: version,
            candidate: None,
            percent: 0.0,
            generation: 0,
            guard: None,
            candidate_since: None,
            previous: None,
            last_message_id: None,
        }
    }

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
    /// The client's start quota, when set.
    pub quota: Option<Quota>,
}

/// A client's start quota (SPEC section 3, clients `quota`): seq 0 rows over it end `FAILED`,
/// so one client's flood cannot fill the shards every other client's chains run on.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    /// Executions the client may start per second (the bucket holds one second's worth).
    pub starts_per_second: f64,
}

impl Quota {
    /// The token bucket the quota is counted in (one per client, whichever flow starts).
    pub fn bucket(client_id: &str) -> String {
        format!("quota/{client_id}")
    }
}

/// Milliseconds since `started`, to the microsecond: a step's `duration`.
pub fn millis_since(started: std::time::Instant) -> f64 {
    started.elapsed().as_micros() as f64 / 1000.0
}

/// A look-back like `30s`, `15m`, `2h` or `7d` in seconds (a bare number counts minutes), as the
/// CLI's `--since` and the API's `since` take it; `Err` says what is wrong.
pub fn duration_secs(d: &str) -> Result<i64, String> {
    let (num, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{d}`: expected a number and a unit (30s, 15m, 2h, 7d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" | "" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{d}`: unknown unit `{unit}` (s, m, h, d)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{d}` is too long a look-back"))
}

/// Whether `s` is a client id: `[a-z0-9][a-z0-9-]{0,62}` (SPEC section 3).
pub fn is_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// Why an execution id is not acceptable for a client (SPEC section 3): `<client_id>:` followed by
/// 1–128 characters of `[A-Za-z0-9._:-]`, client ids being `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_execution_id(client_id: &str, execution_id: &str) -> Result<(), String> {
    if !is_client_id(client_id) {
        return Err(format!(
            "client_id `{}` is not a client id ([a-z0-9][a-z0-9-]{{0,62}})",
            cut(client_id, 70)
        ));
    }
    let Some(unique) = execution_id
        .strip_prefix(client_id)
        .and_then(|r| r.strip_prefix(':'))
    else {
        return Err(format!(
            "execution_id `{}` does not start with `{client_id}:` (an execution id is `<client_id>:<unique>`)",
            cut(execution_id, 140)
        ));
    };
    if unique.is_empty()
        || unique.len() > 128
        || !unique
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(format!(
            "execution_id `{}`: after `{client_id}:` come 1-128 characters of [A-Za-z0-9._:-]",
            cut(execution_id, 140)
        ));
    }
    Ok(())
}

/// `s` cut to at most `max` characters (on a character boundary), with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// What the orchestrator carries from one hop to the next, sealed (encrypted and authenticated)
/// inside the trigger row it writes: nobody else can forge it, and client data in it is never in
/// clear in the trigger table or its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    /// The client's input.
    #[serde(default)]
    pub input: Value,
    /// The `rules` subset, as written at seq 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// The run state before the step this row runs.
    pub state: RunState,
    /// When the execution started (RFC 3339).
    pub started_at: String,
    /// The execution this one reruns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// Client data read at seq 0 (absent when the client has no data source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Value>,
    /// Master-rule versions resolved at seq 0 (rule id -> version): every later step uses them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pins: std::collections::BTreeMap<String, u64>,
    /// When the orchestrator wrote this row (epoch ms; `HopLatency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ms: Option<i64>,
}

/// The clear part of a trigger row the orchestrator writes (seq > 0); `sealed` holds the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedRow {
    /// The execution.
    pub execution_id: String,
    /// The seq of the step this row runs.
    pub seq: u64,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// The version picked at seq 0.
    pub flow_version: u64,
    /// TTL (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// [`Carried`], sealed with the orchestrator's state key (base64).
    pub sealed: String,
}

impl SealedRow {
    /// The associated data the seal authenticates: every clear field that steers the step.
    pub fn aad(&self) -> Vec<u8> {
        format!(
            "rulestream-row-v1\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.execution_id, self.seq, self.client_id, self.flow_id, self.flow_version
        )
        .into_bytes()
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_ids_carry_their_client() {
        assert!(check_execution_id("acme-bank", "acme-bank:t-1").is_ok());
        assert!(check_execution_id("acme-bank", "acme-bank:a:b.c_d-e").is_ok());
        for (client, id) in [
            ("acme-bank", "shopco:t-1"),
            ("acme-bank", "acme-bank"),
            ("acme-bank", "acme-bank:"),
            ("acme-bank", "acme-bankx:1"),
            ("acme-bank", "acme-bank:a b"),
            ("acme-bank", "acme-bank:a/b"),
            ("Acme", "Acme:1"),
            ("-x", "-x:1"),
            ("", ":1"),
        ] {
            assert!(check_execution_id(client, id).is_err(), "{client} {id}");
        }
        let long = format!("c:{}", "x".repeat(129));
        assert!(check_execution_id("c", &long).is_err());
        assert!(check_execution_id("c", &format!("c:{}", "x".repeat(128))).is_ok());
    }

    #[test]
    fn cut_respects_characters() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("ééé", 2), "éé…");
    }
}
