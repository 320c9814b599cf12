//! Support commands against a deployed (or the local) stack: `run`, `status`, `trace`, `cancel`,
//! `logs` (SPEC section 6). Table names come from the same environment as the functions
//! (`RULESTREAM_PREFIX`, `AWS_ENDPOINT_URL`, the AWS credentials chain); a backend that cannot be
//! reached is exit 2 with a one-line reason.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use rulestream_aws::config::Config;
use rulestream_aws::dynamo::DynamoJournal;
use rulestream_core::chain::{self, Cancel, RUNNING, cancel};
use rulestream_core::ports::{Journal, StoreError};
use serde_json::{Value, json};

use crate::Outcome;

/// How a command that waits ended: exit 3 when the wait timed out (SPEC section 6).
pub enum Waited {
    /// The command's own outcome.
    Done(Outcome),
    /// `--wait` gave up.
    TimedOut,
}

/// A connection to the stack's tables.
pub struct Backend {
    cfg: Config,
    ddb: Client,
    journal: DynamoJournal,
}

impl Backend {
    /// From the environment, as the functions read it.
    pub fn connect() -> anyhow::Result<Backend> {
        let cfg = Config::from_env().map_err(|e| anyhow!("configuration: {e}"))?;
        let sdk = runtime()?.block_on(rulestream_aws::sdk_config());
        let ddb = Client::new(&sdk);
        let journal = DynamoJournal::new(ddb.clone(), &cfg.executions_table, &cfg.steps_table);
        Ok(Backend { cfg, ddb, journal })
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn backend_error(e: StoreError) -> anyhow::Error {
    anyhow!("the backend cannot be reached or refused the call: {e}")
}

/// An execution's summary, or `RUNNING` with no step right after a start (see
/// [`rulestream_core::chain::summary_or_pending`]).
fn summary_or_pending(
    b: &Backend,
    rt: &tokio::runtime::Runtime,
    id: &str,
) -> anyhow::Result<Option<Value>> {
    rt.block_on(chain::summary_or_pending(
        &b.journal,
        &b.cfg.trigger_table,
        id,
    ))
    .map_err(backend_error)
}

/// `status ID`.
pub fn status(id: &str, json_out: bool) -> anyhow::Result<Outcome> {
    let b = Backend::connect()?;
    let rt = runtime()?;
    let Some(mut summary) = summary_or_pending(&b, &rt, id)? else {
        crate::output::fail("not_found", &format!("no execution `{id}`"));
        return Ok(Outcome::UserFix);
    };
    let steps = rt
        .block_on(b.journal.steps(id))
        .map_err(backend_error)?
        .into_iter()
        .filter(|s| s.get("stop").is_none())
        .collect::<Vec<_>>();
    if let Some(o) = summary.as_object_mut() {
        o.remove("trace");
        o.remove("running_shard");
        o.remove("expires_at");
        // Every summary field, null where it has no value yet (as `GET` answers).
        for k in chain::SUMMARY_FIELDS {
            o.entry(k).or_insert(Value::Null);
        }
        o.insert("steps_so_far".into(), json!(steps.len()));
        if let Some(last) = steps.last() {
            o.insert("last_rule".into(), last["rule"].clone());
        }
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", status_text(&summary));
    }
    Ok(Outcome::Ok)
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn status_text(e: &Value) -> String {
    let mut out = format!(
        "{}  {}\n  client {}  flow {} v{}\n  started {}  finished {}\n  steps {}  last rule {}\n",
        s(e, "execution_id"),
        s(e, "status"),
        s(e, "client_id"),
        s(e, "flow_id"),
        s(e, "flow_version"),
        s(e, "started_at"),
        s(e, "finished_at"),
        s(e, "steps_so_far"),
        s(e, "last_rule"),
    );
    if e.get("reason").is_some_and(|r| !r.is_null()) {
        out.push_str(&format!("  reason {}\n", s(e, "reason")));
    }
    if let Some(r) = e.get("rerun_of").filter(|r| !r.is_null()) {
        out.push_str(&format!("  rerun of {r}\n"));
    }
    out
}

/// `trace ID`: every step with its explain and deliveries, read from the steps table (so it
/// works while the execution runs).
pub fn trace(id: &str, json_out: bool) -> anyhow::Result<Outcome> {
    let b = Backend::connect()?;
    let rt = runtime()?;
    let Some(mut summary) = summary_or_pending(&b, &rt, id)? else {
        crate::output::fail("not_found", &format!("no execution `{id}`"));
        return Ok(Outcome::UserFix);
    };
    let steps: Vec<Value> = rt
        .block_on(b.journal.steps(id))
        .map_err(backend_error)?
        .into_iter()
        .filter(|s| s.get("stop").is_none())
        .map(|s| rulestream_core::chain::trace_line(&s))
        .collect();
    if let Some(o) = summary.as_object_mut() {
        o.remove("trace");
        o.remove("running_shard");
        o.remove("expires_at");
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"execution": summary, "steps": steps}))?
        );
        return Ok(Outcome::Ok);
    }
    // The header reads as `status` shows it.
    if let Some(o) = summary.as_object_mut() {
        o.insert("steps_so_far".into(), json!(steps.len()));
        if let Some(last) = steps.last() {
            o.insert("last_rule".into(), last["rule"].clone());
        }
    }
    print!("{}", status_text(&summary));
    println!();
    println!(
        "{:>4}  {:<20} {:<10} {:<28} {:>9}",
        "seq", "rule", "outcome", "transition", "duration"
    );
    for st in &steps {
        let transition = st
            .get("transition")
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        let dur = st
            .get("duration")
            .and_then(Value::as_f64)
            // Steps recorded before `duration` (milliseconds) carried `duration_us`.
            .or_else(|| {
                st.get("duration_us")
                    .and_then(Value::as_f64)
                    .map(|us| us / 1000.0)
            })
            .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        println!(
            "{:>4}  {:<20} {:<10} {:<28} {:>9}",
            s(st, "seq"),
            s(st, "rule"),
            s(st, "outcome"),
            transition,
            dur
        );
        let explain = st.get("explain").cloned().unwrap_or(Value::Null);
        if let Some(conds) = explain.get("conditions").and_then(Value::as_array) {
            for c in conds {
                let mark = if c["passed"] == json!(true) {
                    "pass"
                } else {
                    "fail"
                };
                println!(
                    "        {mark}  {} {} {}  (actual {})",
                    s(c, "field"),
                    s(c, "op"),
                    c.get("expected").map_or("-".into(), Value::to_string),
                    c.get("actual").map_or("null".into(), Value::to_string),
                );
            }
        } else if let Some(m) = explain.get("message") {
            println!("        error: {}", m.as_str().unwrap_or_default());
        } else if let Some(r) = explain.get("reason") {
            println!("        {}", r.as_str().unwrap_or_default());
        }
        if let Some(set) = st
            .get("set")
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty())
        {
            println!("        set {}", Value::Object(set.clone()));
        }
        for a in st
            .get("actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = s(a, "type");
            let d = a.get("delivery").cloned().unwrap_or(Value::Null);
            let what = a
                .get("url")
                .or_else(|| a.get("tag"))
                .or_else(|| a.get("queue"))
                .or_else(|| a.get("channel"))
                .map_or(String::new(), |v| {
                    v.as_str().unwrap_or_default().to_string()
                });
            if d.is_null() {
                println!("        action {kind} {what}");
            } else {
                println!(
                    "        action {kind} {what}: {} after {} attempt(s){}",
                    s(&d, "status"),
                    s(&d, "attempts"),
                    d.get("last")
                        .and_then(Value::as_str)
                        .map_or(String::new(), |l| format!(" ({l})"))
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

/// `cancel ID`.
pub fn cancel_cmd(id: &str, json_out: bool) -> anyhow::Result<Outcome> {
    let b = Backend::connect()?;
    let rt = runtime()?;
    let settings = b.cfg.chain_settings();
    let r = rt
        .block_on(cancel(
            &b.journal,
            &settings,
            id,
            "cancelled with `rulestream cancel`",
        ))
        .map_err(backend_error)?;
    let (doc, text, outcome) = match r {
        Cancel::Cancelled { at_seq } => (
            json!({"execution_id": id, "status": "CANCELLED", "at_seq": at_seq}),
            format!("{id}: CANCELLED (no step runs from seq {at_seq} on)"),
            Outcome::Ok,
        ),
        Cancel::AlreadyEnded(st) if st == "CANCELLED" => (
            json!({"execution_id": id, "status": st}),
            format!("{id}: already CANCELLED"),
            Outcome::Ok,
        ),
        Cancel::AlreadyEnded(st) => {
            let why = format!("{id} already ended {st}: nothing to cancel");
            (
                json!({"execution_id": id, "status": st,
                    "error": {"code": "conflict", "message": why}}),
                format!("rulestream: {why}"),
                Outcome::UserFix,
            )
        }
        Cancel::NotFound => {
            let why = format!("no execution `{id}`");
            (
                json!({"execution_id": id, "error": {"code": "not_found", "message": why}}),
                format!("rulestream: {why}"),
                Outcome::UserFix,
            )
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if !matches!(outcome, Outcome::Ok) {
        // The one-line reason of exit 1, on stderr also under --json.
        eprintln!("{text}");
    } else if !json_out {
        println!("{text}");
    }
    Ok(outcome)
}

/// `run CLIENT FLOW --input … [--wait] [--timeout S]`.
pub struct RunArgs {
    pub client: String,
    pub flow: String,
    pub input: String,
    pub execution_id: Option<String>,
    pub flow_version: Option<u64>,
    pub wait: bool,
    pub timeout_secs: u64,
    pub json: bool,
}

/// Inserts a trigger row as a client process does; with `--wait`, follows the execution to its
/// end with a live progress line on stderr.
pub fn run(a: &RunArgs) -> anyhow::Result<Waited> {
    let input = crate::dry_run::read_input(&a.input)?;
    let id = match &a.execution_id {
        Some(id) => id.clone(),
        None => format!("{}:{}", a.client, uuid::Uuid::new_v4()),
    };
    if let Err(why) = rulestream_core::execution::check_execution_id(&a.client, &id) {
        return Err(crate::output::usage(format!("--execution-id: {why}")));
    }
    let b = Backend::connect()?;
    let rt = runtime()?;
    let mut row = json!({"execution_id": id, "seq": 0, "client_id": a.client, "flow_id": a.flow,
        "input": input, "expires_at": trigger_expires_at(&b)});
    if let Some(v) = a.flow_version {
        row["flow_version"] = json!(v);
    }
    start_and_follow(&b, &rt, row, a.wait, a.timeout_secs, a.json)
}

/// `rerun ID [--from RULE|SEQ] [--same-version] [--wait]`: a new execution of the original's
/// client and flow, on its input (read from its seq 0 row), linked by `rerun_of`; with `from`,
/// starting at that step with the context the original had there (read by the orchestrator).
/// The original is never changed.
pub fn rerun(
    original: &str,
    same_version: bool,
    from: Option<&str>,
    wait: bool,
    timeout_secs: u64,
    json_out: bool,
) -> anyhow::Result<Waited> {
    let b = Backend::connect()?;
    let rt = runtime()?;
    let row = match rerun_row(&b, &rt, original, same_version, from, None)? {
        RerunRow::Row(row) => row,
        RerunRow::NoInput => {
            // A rerun needs the original input, which only the seq 0 trigger row holds.
            let known = rt
                .block_on(b.journal.summary(original))
                .map_err(backend_error)?
                .is_some();
            if known {
                crate::output::fail(
                    "not_found",
                    &format!(
                        "`{original}` has no seq 0 trigger row to take its input from: its row expired (trigger rows live {} days), or it ran inline on a sync API that kept no row",
                        b.cfg.trigger_ttl.as_secs() / 86_400
                    ),
                );
            } else {
                crate::output::fail("not_found", &format!("no execution `{original}`"));
            }
            return Ok(Waited::Done(Outcome::UserFix));
        }
        RerunRow::NoVersion => {
            crate::output::fail("not_found", &no_version(original));
            return Ok(Waited::Done(Outcome::UserFix));
        }
    };
    start_and_follow(&b, &rt, row, wait, timeout_secs, json_out)
}

/// When a trigger row written now expires: `RULESTREAM_TRIGGER_TTL_DAYS` (default 7), read as
/// the functions read it (the sync API writes its rows with the same setting).
fn trigger_expires_at(b: &Backend) -> i64 {
    b.cfg.chain_settings().row_expires_at()
}

/// What `rerun_row` found.
enum RerunRow {
    /// The new seq 0 row.
    Row(Value),
    /// The original's seq 0 row is gone (unknown id, or expired): its input cannot be read.
    NoInput,
    /// `--same-version`, but the original has no recorded flow version (a fact of the data, so
    /// exit 1, not a usage error).
    NoVersion,
}

/// The reason of a `--same-version` rerun whose original has no recorded flow version.
fn no_version(original: &str) -> String {
    format!(
        "--same-version: `{original}` has no recorded flow version (it ended before one was picked); rerun it without --same-version"
    )
}

/// The seq 0 row of a rerun of `original`, with id `id` or a new `<client>:<uuid>`.
fn rerun_row(
    b: &Backend,
    rt: &tokio::runtime::Runtime,
    original: &str,
    same_version: bool,
    from: Option<&str>,
    id: Option<String>,
) -> anyhow::Result<RerunRow> {
    let got = rt
        .block_on(
            b.ddb
                .get_item()
                .table_name(&b.cfg.trigger_table)
                .key("execution_id", AttributeValue::S(original.to_string()))
                .key("seq", AttributeValue::N("0".into()))
                .consistent_read(true)
                .send(),
        )
        .map_err(|e| {
            anyhow!(
                "cannot read {}: {}",
                b.cfg.trigger_table,
                rulestream_aws::errors::sdk_error_text(&e)
            )
        })?;
    let Some(item) = got.item else {
        return Ok(RerunRow::NoInput);
    };
    let first: Value = serde_dynamo::from_item(item).context("the original's seq 0 row")?;
    let client = first["client_id"].as_str().unwrap_or_default().to_string();
    let id = id.unwrap_or_else(|| format!("{client}:{}", uuid::Uuid::new_v4()));
    let mut row = json!({"execution_id": id, "seq": 0, "client_id": client,
        "flow_id": first["flow_id"], "input": first["input"], "rerun_of": original,
        "expires_at": trigger_expires_at(b)});
    if let Some(rules) = first.get("rules").filter(|r| r.is_string()) {
        row["rules"] = rules.clone();
    }
    if let Some(f) = from {
        row["from"] = json!(f);
    }
    if same_version {
        let summary = rt
            .block_on(b.journal.summary(original))
            .map_err(backend_error)?;
        match summary
            .as_ref()
            .and_then(|s| s.get("flow_version"))
            .and_then(Value::as_u64)
        {
            Some(v) => row["flow_version"] = json!(v),
            None => return Ok(RerunRow::NoVersion),
        }
    }
    Ok(RerunRow::Row(row))
}

/// `rerun --failed --client C [--since DUR] [--same-version]`: reruns every execution of the
/// client that ended `FAILED` since then (redrive after an incident). Each rerun's id is derived
/// from its original (`<client>:redrive-<hash>`), so running the command twice starts nothing
/// twice; reruns made by a redrive are not redriven again.
pub fn rerun_failed(
    client: &str,
    since: &str,
    same_version: bool,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    use sha2::Digest;
    let secs = parse_duration(since)?;
    let b = Backend::connect()?;
    let rt = runtime()?;
    let t = chrono::Utc::now() - chrono::Duration::seconds(secs);
    let mut failed: Vec<String> = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = rt
            .block_on(
                b.ddb
                    .query()
                    .table_name(&b.cfg.executions_table)
                    .index_name("by-client")
                    .key_condition_expression("client_id = :c AND started_at >= :t")
                    .filter_expression("#s = :f")
                    .expression_attribute_names("#s", "status")
                    .expression_attribute_values(":c", AttributeValue::S(client.into()))
                    .expression_attribute_values(
                        ":t",
                        AttributeValue::S(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    )
                    .expression_attribute_values(":f", AttributeValue::S("FAILED".into()))
                    .projection_expression("execution_id")
                    .set_exclusive_start_key(start.take())
                    .send(),
            )
            .map_err(|e| {
                anyhow!(
                    "cannot query {} (index by-client): {}",
                    b.cfg.executions_table,
                    rulestream_aws::errors::sdk_error_text(&e)
                )
            })?;
        for item in page.items() {
            if let Some(AttributeValue::S(id)) = item.get("execution_id")
                && !id.contains(":redrive-")
            {
                failed.push(id.clone());
            }
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    let (mut started, mut already, mut gone) = (Vec::new(), 0usize, Vec::new());
    let mut unversioned = Vec::new();
    for original in &failed {
        let hash = sha2::Sha256::digest(original.as_bytes());
        let hex: String = hash.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let id = format!("{client}:redrive-{hex}");
        let row = match rerun_row(&b, &rt, original, same_version, None, Some(id.clone()))? {
            RerunRow::Row(row) => row,
            RerunRow::NoInput => {
                gone.push(original.clone());
                continue;
            }
            RerunRow::NoVersion => {
                // It failed before a version was picked: --same-version cannot rerun it, and
                // the others are redriven all the same.
                unversioned.push(original.clone());
                continue;
            }
        };
        if put_new_row(&b, &rt, &row)? {
            started.push(json!({"execution_id": id, "rerun_of": original}));
        } else {
            already += 1;
        }
        if !json_out && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!(
                "\rredrive: {} started, {already} already redriven, {} without input  ",
                started.len(),
                gone.len()
            );
        }
    }
    if json_out {
        println!(
            "{}",
            json!({"failed": failed.len(), "started": started, "already_redriven": already,
                   "without_input": gone, "without_version": unversioned})
        );
    } else {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
        for s in &started {
            println!(
                "{}  rerun of {}",
                s["execution_id"].as_str().unwrap_or(""),
                s["rerun_of"].as_str().unwrap_or("")
            );
        }
        println!(
            "{} FAILED execution(s) of {client} since {since}: {} rerun started, {already} already redriven, {} without input (seq 0 row expired)",
            failed.len(),
            started.len(),
            gone.len()
        );
        for u in &unversioned {
            println!("not rerun: {}", no_version(u));
        }
    }
    Ok(Outcome::Ok)
}

/// Inserts a seq 0 row (never over an existing id) and, with `wait`, follows the execution.
fn start_and_follow(
    b: &Backend,
    rt: &tokio::runtime::Runtime,
    row: Value,
    wait: bool,
    timeout_secs: u64,
    json_out: bool,
) -> anyhow::Result<Waited> {
    let id = row["execution_id"].as_str().unwrap_or_default().to_string();
    let a = FollowArgs {
        wait,
        timeout_secs,
        json: json_out,
    };
    if !put_new_row(b, rt, &row)? {
        crate::output::fail("conflict", &format!("execution `{id}` already exists"));
        return Ok(Waited::Done(Outcome::UserFix));
    }
    follow(b, rt, &id, &a)
}

/// Inserts a seq 0 row, never over an existing id: `Ok(false)` when the id exists.
fn put_new_row(b: &Backend, rt: &tokio::runtime::Runtime, row: &Value) -> anyhow::Result<bool> {
    let item: HashMap<String, AttributeValue> =
        serde_dynamo::to_item(row).context("the trigger row")?;
    let put = rt.block_on(
        b.ddb
            .put_item()
            .table_name(&b.cfg.trigger_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(execution_id)")
            .send(),
    );
    match put {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => bail!(
            "cannot insert the trigger row into {}: {}",
            b.cfg.trigger_table,
            rulestream_aws::errors::sdk_error_text(&e)
        ),
    }
}

struct FollowArgs {
    wait: bool,
    timeout_secs: u64,
    json: bool,
}

fn follow(
    b: &Backend,
    rt: &tokio::runtime::Runtime,
    id: &str,
    a: &FollowArgs,
) -> anyhow::Result<Waited> {
    let id = id.to_string();
    if !a.wait {
        if a.json {
            println!("{}", json!({"execution_id": id, "status": RUNNING}));
        } else {
            println!("{id}");
        }
        return Ok(Waited::Done(Outcome::Ok));
    }
    let started = Instant::now();
    let deadline = Duration::from_secs(a.timeout_secs);
    let mut pause = Duration::from_millis(100);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let summary = rt.block_on(b.journal.summary(&id)).map_err(backend_error)?;
        if let Some(e) = summary.as_ref().filter(|e| e["status"] != RUNNING) {
            if tty {
                eprint!("\r\x1b[2K");
            }
            let failed = e["status"] == rulestream_core::model::FAILED;
            let doc = json!({"execution_id": id, "status": e["status"], "reason": e.get("reason"),
                "output": e.get("output"), "flow_version": e.get("flow_version"),
                "steps": e.get("steps_total")});
            if a.json {
                println!("{doc}");
            } else {
                println!(
                    "{id}  {}{}",
                    s(e, "status"),
                    e.get("reason")
                        .and_then(Value::as_str)
                        .map_or(String::new(), |r| format!("  ({r})"))
                );
            }
            if failed {
                // The one-line reason of exit 1, on stderr also under --json.
                eprintln!(
                    "rulestream: {id} ended FAILED: {}",
                    e.get("reason")
                        .and_then(Value::as_str)
                        .or_else(|| e.get("error").and_then(Value::as_str))
                        .unwrap_or("no reason recorded")
                        .replace('\n', " ")
                );
            }
            return Ok(Waited::Done(if failed {
                Outcome::UserFix
            } else {
                Outcome::Ok
            }));
        }
        if started.elapsed() >= deadline {
            if tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!(
                "rulestream: {id} still running after {}s (see `rulestream status {id}`)",
                a.timeout_secs
            );
            if a.json {
                println!(
                    "{}",
                    json!({"execution_id": id, "status": RUNNING, "timed_out": true})
                );
            }
            return Ok(Waited::TimedOut);
        }
        let last = rt.block_on(b.journal.last_step(&id)).ok().flatten();
        let line = format!(
            "{id}  RUNNING  step {}  rule {}  {:.1}s",
            last.as_ref()
                .and_then(|l| l.get("seq").and_then(Value::as_u64))
                .map_or(0, |n| n + 1),
            last.as_ref().map_or("-".to_string(), |l| s(l, "rule")),
            started.elapsed().as_secs_f64()
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        }
        std::thread::sleep(pause.min(deadline.saturating_sub(started.elapsed())));
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
}

/// `logs --client C [--flow F] [--status S] [--since DUR] [--limit N]`: newest first, from the
/// executions index by client and start time (never a scan).
pub struct LogsArgs {
    pub client: Option<String>,
    pub flow: Option<String>,
    pub status: Option<String>,
    pub since: Option<String>,
    pub limit: usize,
    pub json: bool,
}

/// `15m`, `2h`, `7d`, `30s` -> seconds (as the sync API's `since` reads them).
pub fn parse_duration(d: &str) -> anyhow::Result<i64> {
    rulestream_core::execution::duration_secs(d)
        .map_err(|why| crate::output::usage(format!("--since {why}")))
}

/// Runs `logs`.
pub fn logs(a: &LogsArgs) -> anyhow::Result<Outcome> {
    let since = a.since.as_deref().map(parse_duration).transpose()?;
    let b = Backend::connect()?;
    let rt = runtime()?;
    let clients = match &a.client {
        Some(c) => vec![c.clone()],
        // Every client's executions: the clients table is small configuration; each client's
        // executions come from the index by client and start time, never a scan of them.
        None => client_ids(&b, &rt)?,
    };
    let mut out: Vec<Value> = Vec::new();
    for client in &clients {
        out.extend(list_client(&b, &rt, client, since, a)?);
    }
    out.sort_by_key(|e| std::cmp::Reverse(s(e, "started_at")));
    out.truncate(a.limit);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Outcome::Ok);
    }
    if out.is_empty() {
        match &a.client {
            Some(c) => eprintln!("no executions of client `{c}` match"),
            None => eprintln!("no executions match"),
        }
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<24} {:<14} {:<20} {:<4} {:<56}",
        "started", "status", "flow", "ver", "execution"
    );
    for e in &out {
        println!(
            "{:<24} {:<14} {:<20} {:<4} {:<56}",
            s(e, "started_at"),
            s(e, "status"),
            s(e, "flow_id"),
            s(e, "flow_version"),
            s(e, "execution_id")
        );
    }
    Ok(Outcome::Ok)
}

/// Every client id of the clients table.
fn client_ids(b: &Backend, rt: &tokio::runtime::Runtime) -> anyhow::Result<Vec<String>> {
    let mut ids = std::collections::BTreeSet::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = rt
            .block_on(
                b.ddb
                    .scan()
                    .table_name(&b.cfg.clients_table)
                    .projection_expression("client_id")
                    .set_exclusive_start_key(start.take())
                    .send(),
            )
            .map_err(|e| {
                anyhow!(
                    "cannot read {}: {}",
                    b.cfg.clients_table,
                    rulestream_aws::errors::sdk_error_text(&e)
                )
            })?;
        for item in page.items() {
            if let Some(AttributeValue::S(c)) = item.get("client_id") {
                ids.insert(c.clone());
            }
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    Ok(ids.into_iter().collect())
}

/// One client's executions, newest first, at most `a.limit`.
fn list_client(
    b: &Backend,
    rt: &tokio::runtime::Runtime,
    client: &str,
    since: Option<i64>,
    a: &LogsArgs,
) -> anyhow::Result<Vec<Value>> {
    let mut names = HashMap::from([("#c".to_string(), "client_id".to_string())]);
    let mut values = HashMap::from([(":c".to_string(), AttributeValue::S(client.to_string()))]);
    let mut key = "#c = :c".to_string();
    if let Some(secs) = since {
        let t = chrono::Utc::now() - chrono::Duration::seconds(secs);
        names.insert("#t".into(), "started_at".into());
        values.insert(
            ":t".into(),
            AttributeValue::S(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        key.push_str(" AND #t >= :t");
    }
    let mut filters = Vec::new();
    if let Some(f) = &a.flow {
        names.insert("#f".into(), "flow_id".into());
        values.insert(":f".into(), AttributeValue::S(f.clone()));
        filters.push("#f = :f");
    }
    if let Some(st) = &a.status {
        names.insert("#s".into(), "status".into());
        values.insert(":s".into(), AttributeValue::S(st.clone()));
        filters.push("#s = :s");
    }
    let index = "by-client";
    let mut out: Vec<Value> = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = rt
            .block_on(
                b.ddb
                    .query()
                    .table_name(&b.cfg.executions_table)
                    .index_name(index)
                    .key_condition_expression(&key)
                    .set_filter_expression((!filters.is_empty()).then(|| filters.join(" AND ")))
                    .set_expression_attribute_names(Some(names.clone()))
                    .set_expression_attribute_values(Some(values.clone()))
                    .projection_expression(
                        "execution_id, client_id, flow_id, flow_version, #s2, started_at, finished_at, reason, steps_total",
                    )
                    .expression_attribute_names("#s2", "status")
                    .scan_index_forward(false)
                    .set_exclusive_start_key(start.take())
                    .send(),
            )
            .map_err(|e| {
                anyhow!(
                    "cannot query {} (index {index}): {}",
                    b.cfg.executions_table,
                    rulestream_aws::errors::sdk_error_text(&e)
                )
            })?;
        for item in page.items() {
            out.push(serde_dynamo::from_item(item.clone()).context("an executions item")?);
            if out.len() >= a.limit {
                break;
            }
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() && out.len() < a.limit => start = Some(k.clone()),
            _ => break,
        }
    }
    Ok(out)
}

/// Options of `top`.
pub struct TopArgs {
    /// One client (default: all).
    pub client: Option<String>,
    /// Seconds between frames.
    pub interval: u64,
    /// The window the figures cover, seconds.
    pub window: u64,
    /// Print one frame and exit.
    pub once: bool,
    /// JSON frames.
    pub json: bool,
}

/// One frame of `top`: what the executions index says about the last `window` seconds.
fn top_frame(b: &Backend, rt: &tokio::runtime::Runtime, a: &TopArgs) -> anyhow::Result<Value> {
    let clients = match &a.client {
        Some(c) => vec![c.clone()],
        None => client_ids(b, rt)?,
    };
    let la = LogsArgs {
        client: None,
        flow: None,
        status: None,
        since: None,
        limit: 100_000,
        json: true,
    };
    let secs = i64::try_from(a.window).unwrap_or(60);
    let mut rows = Vec::new();
    for c in &clients {
        rows.extend(list_client(b, rt, c, Some(secs), &la)?);
    }
    let mut by_status: std::collections::BTreeMap<String, u64> = Default::default();
    let mut by_flow: std::collections::BTreeMap<String, u64> = Default::default();
    let mut durations: Vec<f64> = Vec::new();
    let mut per_step: Vec<f64> = Vec::new();
    for e in &rows {
        *by_status.entry(s(e, "status")).or_default() += 1;
        *by_flow
            .entry(format!("{}/{}", s(e, "client_id"), s(e, "flow_id")))
            .or_default() += 1;
        let (Ok(st), Ok(fi)) = (
            chrono::DateTime::parse_from_rfc3339(&s(e, "started_at")),
            chrono::DateTime::parse_from_rfc3339(&s(e, "finished_at")),
        ) else {
            continue;
        };
        let ms = (fi - st).num_milliseconds() as f64;
        durations.push(ms);
        if let Some(n) = e
            .get("steps_total")
            .and_then(Value::as_f64)
            .filter(|n| *n > 0.0)
        {
            per_step.push(ms / n);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied()
    };
    let finished = durations.len() as f64;
    Ok(json!({
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "window_secs": a.window,
        "started": rows.len(),
        "started_per_sec": rows.len() as f64 / a.window as f64,
        "finished_per_sec": finished / a.window as f64,
        "by_status": by_status,
        "by_flow": by_flow,
        "execution_ms": {"p50": pct(&mut durations.clone(), 0.5), "p99": pct(&mut durations, 0.99)},
        "step_ms": {"p50": pct(&mut per_step.clone(), 0.5), "p99": pct(&mut per_step, 0.99)},
    }))
}

fn render_top(f: &Value) -> String {
    let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut out = format!(
        "rulestream top  {}  (last {} s)\n\nexecutions/s  started {}  finished {}\nexecution ms  p50 {}  p99 {}\nstep ms       p50 {}  p99 {}\n\n{:<14} {:>8}\n",
        f["at"].as_str().unwrap_or(""),
        f["window_secs"],
        num(&f["started_per_sec"]),
        num(&f["finished_per_sec"]),
        num(&f["execution_ms"]["p50"]),
        num(&f["execution_ms"]["p99"]),
        num(&f["step_ms"]["p50"]),
        num(&f["step_ms"]["p99"]),
        "STATUS",
        "COUNT"
    );
    for (k, v) in f["by_status"].as_object().into_iter().flatten() {
        out.push_str(&format!("{k:<14} {v:>8}\n"));
    }
    out.push_str(&format!("\n{:<40} {:>8}\n", "CLIENT/FLOW", "STARTED"));
    let mut flows: Vec<(&String, &Value)> =
        f["by_flow"].as_object().into_iter().flatten().collect();
    flows.sort_by_key(|(_, v)| std::cmp::Reverse(v.as_u64().unwrap_or(0)));
    for (k, v) in flows.into_iter().take(15) {
        out.push_str(&format!("{k:<40} {v:>8}\n"));
    }
    out
}

/// `top`: a live view of the executions index, refreshed every `interval` seconds (Ctrl-C to
/// stop); `--once` prints one frame.
pub fn top(a: &TopArgs) -> anyhow::Result<Outcome> {
    let b = Backend::connect()?;
    let rt = runtime()?;
    let live = !a.once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let frame = top_frame(&b, &rt, a)?;
        if a.json {
            println!("{frame}");
        } else if live {
            // Clear the screen and home the cursor, then the frame.
            print!("\x1b[2J\x1b[H{}", render_top(&frame));
            use std::io::Write;
            let _ = std::io::stdout().flush();
        } else {
            print!("{}", render_top(&frame));
        }
        if a.once {
            return Ok(Outcome::Ok);
        }
        std::thread::sleep(Duration::from_secs(a.interval.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").ok(), Some(30));
        assert_eq!(parse_duration("15m").ok(), Some(900));
        assert_eq!(parse_duration("2h").ok(), Some(7200));
        assert_eq!(parse_duration("7d").ok(), Some(604_800));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
