//! Release commands (SPEC section 6): `upload`, `set-percent`, `promote`, `rollback`, `releases`,
//! `diff`, `catalog publish`, `catalog rollback`.
//!
//! A flow's release changes only through the releases topic: the CLI stores what is new (an
//! immutable S3 version), sends one message made from the release's current generation, and waits
//! until the release bridge has applied it (or recorded why not). The catalog has no bridge: its
//! versions are written here, audited, and the config epoch is bumped so warm orchestrators reload.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rulestream_aws::config::Config;
use rulestream_aws::kafka::Producer;
use rulestream_aws::releases::{AuditEntry, ReleaseStore, check_flow_text, describe};
use rulestream_core::execution::{Guard, Release};
use rulestream_core::model::MasterRule;
use rulestream_core::ports::StoreError;
use rulestream_core::release::{ReleaseMessage, ReleaseOp, check_percent};
use serde_json::{Value, json};

use crate::Outcome;

/// How long to wait for the bridge to apply a message.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

struct Ctx {
    cfg: Config,
    sdk: aws_config::SdkConfig,
    store: ReleaseStore,
    json: bool,
    /// Validation warnings of an uploaded flow, shown with the outcome.
    warnings: Vec<String>,
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn ctx(json: bool) -> anyhow::Result<Ctx> {
    let cfg = Config::from_env().map_err(|e| anyhow!("configuration: {e}"))?;
    let sdk = rulestream_aws::sdk_config().await;
    let store = ReleaseStore::new(&sdk, &cfg);
    Ok(Ctx {
        cfg,
        sdk,
        store,
        json,
        warnings: Vec::new(),
    })
}

fn backend(e: StoreError) -> anyhow::Error {
    anyhow!("the backend cannot be reached or refused the call: {e}")
}

/// The caller's identity (STS GetCallerIdentity): the ARN recorded as `actor`.
async fn actor(sdk: &aws_config::SdkConfig) -> anyhow::Result<String> {
    let sts = aws_sdk_sts::Client::new(sdk);
    let who = sts.get_caller_identity().send().await.map_err(|e| {
        anyhow!(
            "who is calling (STS GetCallerIdentity): {}",
            rulestream_aws::errors::sdk_error_text(&e)
        )
    })?;
    Ok(who.arn().unwrap_or("unknown").to_string())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn say(c: &Ctx, line: &str) {
    if !c.json {
        eprintln!("{line}");
    }
}

/// A user error: one line, exit 1.
fn refuse(line: &str) -> anyhow::Result<Outcome> {
    crate::output::fail("refused", line);
    Ok(Outcome::UserFix)
}

/// Bad usage (a malformed option or argument): an error, which `main` prints on one line and
/// turns into exit 2, like every other usage error.
fn usage<T>(line: String) -> anyhow::Result<T> {
    Err(crate::output::usage(line))
}

/// Sends `msg` and waits until the bridge applied it or recorded why not.
async fn send_and_wait(c: &Ctx, msg: &ReleaseMessage) -> anyhow::Result<Outcome> {
    let brokers =
        c.cfg.kafka_brokers.as_deref().ok_or_else(|| {
            anyhow!("KAFKA_BROKERS is not set: the releases topic cannot be reached")
        })?;
    let producer = Producer::connect(brokers)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let body = serde_json::to_vec(msg)?;
    let (partition, offset) = producer
        .send(&c.cfg.releases_topic, &msg.key(), body)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    say(
        c,
        &format!(
            "sent {} for {} (message {}, {} partition {partition} offset {offset}); waiting for the release bridge…",
            msg.op.as_str(),
            msg.key(),
            msg.message_id,
            c.cfg.releases_topic
        ),
    );
    let start = Instant::now();
    loop {
        let cur = c
            .store
            .current(&msg.client_id, &msg.flow_id)
            .await
            .map_err(backend)?;
        let r = cur.release.as_ref();
        if r.and_then(|r| r.last_message_id.as_deref()) == Some(msg.message_id.as_str()) {
            return report(c, msg, "applied", r, None);
        }
        let history = c.store.history(&msg.key()).await.map_err(backend)?;
        if let Some(e) = history
            .iter()
            .find(|e| e.message_id.as_deref() == Some(msg.message_id.as_str()))
        {
            if e.outcome == "applied" {
                return report(c, msg, "applied", r, None);
            }
            return report(c, msg, &e.outcome.clone(), r, e.reason.clone());
        }
        if start.elapsed() > APPLY_TIMEOUT {
            bail!(
                "the release bridge has not applied message {} after {} s (is it running and consuming {}?)",
                msg.message_id,
                APPLY_TIMEOUT.as_secs(),
                c.cfg.releases_topic
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(
    c: &Ctx,
    msg: &ReleaseMessage,
    outcome: &str,
    release: Option<&Release>,
    reason: Option<String>,
) -> anyhow::Result<Outcome> {
    if c.json {
        println!(
            "{}",
            json!({
                "client_id": msg.client_id, "flow_id": msg.flow_id, "op": msg.op.as_str(),
                "message_id": msg.message_id, "outcome": outcome, "reason": reason,
                "release": release, "warnings": c.warnings,
            })
        );
    } else if outcome == "applied" {
        println!(
            "{}: {} applied: now {} (generation {})",
            msg.key(),
            msg.op.as_str(),
            describe(release),
            release.map_or(0, |r| r.generation)
        );
    }
    if outcome != "applied" {
        // The one-line reason of exit 1, on stderr also under --json.
        eprintln!(
            "rulestream: {}: {} {outcome} by the release bridge: {}",
            msg.key(),
            msg.op.as_str(),
            reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(if outcome == "applied" {
        Outcome::Ok
    } else {
        Outcome::UserFix
    })
}

fn message(
    c: &Ctx,
    op: ReleaseOp,
    client: &str,
    flow: &str,
    generation: u64,
    actor: &str,
) -> ReleaseMessage {
    let _ = c;
    ReleaseMessage {
        op,
        client_id: client.to_string(),
        flow_id: flow.to_string(),
        message_id: uuid::Uuid::new_v4().to_string(),
        actor: actor.to_string(),
        at: now(),
        generation,
        version: None,
        percent: None,
        guard: None,
        reason: None,
    }
}

/// `upload FILE [--percent P] [--guard JSON]`.
pub fn upload(
    file: &Path,
    percent: Option<f64>,
    guard: Option<&str>,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| crate::output::usage(format!("cannot read {}: {e}", file.display())))?;
    let doc: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return refuse(&format!(
                "{}: invalid JSON: line {}:{}: {e}",
                file.display(),
                e.line(),
                e.column()
            ));
        }
    };
    let (Some(client), Some(flow), Some(version)) = (
        doc.get("client_id").and_then(Value::as_str),
        doc.get("flow_id").and_then(Value::as_str),
        doc.get("version").and_then(Value::as_u64),
    ) else {
        return refuse(&format!(
            "{}: `client_id`, `flow_id` and `version` are required",
            file.display()
        ));
    };
    if let Some(p) = percent
        && let Err(e) = check_percent(p)
    {
        return usage(format!("--percent: {e}"));
    }
    let guard: Option<Guard> = match guard {
        None => None,
        // An object only: serde would also read a struct from an array (`[0.05, 200]`).
        Some(g) => match serde_json::from_str::<Value>(g).and_then(|v| match v {
            Value::Object(_) => serde_json::from_value::<Guard>(v),
            other => Err(serde::de::Error::custom(format!(
                "a guard is a JSON object, not {}",
                kind_of(&other)
            ))),
        }) {
            Ok(g) => match g.check() {
                Ok(()) => Some(g),
                Err(e) => return usage(format!("--guard: {e}")),
            },
            Err(e) => {
                return usage(format!(
                    "--guard: {e} (expected {{\"max_failed_delta\": 0.05, \"min_executions\": 200}})"
                ));
            }
        },
    };
    rt()?.block_on(async {
        let mut c = ctx(json_out).await?;
        let key = format!("{client}/{flow}");
        say(&c, &format!("validating {} against the deployed catalog…", file.display()));
        let catalog = c.store.catalog().await.map_err(backend)?;
        c.warnings = match check_flow_text(&text, &catalog, client, flow, version) {
            Ok(w) => w,
            Err(why) => return refuse(&format!("{}: {why}", file.display())),
        };
        for w in &c.warnings {
            say(&c, &format!("      {w}"));
        }
        let cur = match c.store.current(client, flow).await {
            Ok(cur) => cur,
            Err(StoreError::NotFound(m)) => {
                return refuse(&format!("{m} (register it first: rulestream client add {client} {flow})"));
            }
            Err(e) => return Err(backend(e)),
        };
        let stored = c.store.versions(client, flow).await.map_err(backend)?;
        if let Some(cv) = cur.release.as_ref().map(|r| r.candidate.unwrap_or(r.stable))
            && let Some(cur_text) = c.store.version_text(client, flow, cv).await.map_err(backend)?
            && same_flow(&cur_text, &text)
        {
            return refuse(&format!("{}: identical to v{cv}, the current version of {key}: nothing to upload", file.display()));
        }
        // The highest stored version, with this file's content, whose publish never reached the
        // bridge (Kafka was down): the audit has its upload and no publish after it. Publishing
        // it now is what the user means; it is not stored again.
        let unpublished = match stored.last() {
            Some(&max) if max == version => {
                let history = c.store.history(&key).await.map_err(backend)?;
                let to = format!("v{max}");
                let after_upload = history
                    .iter()
                    .rposition(|e| e.op == "upload" && e.outcome == "stored" && e.to.as_deref() == Some(to.as_str()))
                    .map(|i| &history[i + 1..]);
                after_upload.is_some_and(|rest| rest.iter().all(|e| e.op != "publish"))
                    && c.store.version_text(client, flow, max).await.map_err(backend)?.is_some_and(|t| same_flow(&t, &text))
            }
            _ => false,
        };
        if let Some(&max) = stored.last()
            && version <= max
            && !unpublished
        {
            return refuse(&format!(
                "{}: version {version} must exceed every stored version of {key} (highest: v{max}); bump `version`",
                file.display()
            ));
        }
        let who = actor(&c.sdk).await?;
        let generation = cur.release.as_ref().map_or(0, |r| r.generation);
        if unpublished {
            say(&c, &format!("v{version} is stored already and was never published: publishing it"));
        } else {
            if !c.store.put_version(client, flow, version, &text).await.map_err(backend)? {
                return refuse(&format!("v{version} of {key} was stored meanwhile by someone else"));
            }
            say(&c, &format!("stored {}", rulestream_aws::releases::version_key(client, flow, version)));
            let mut up = AuditEntry::new(&key, &now(), &who, "upload", "stored", &uuid::Uuid::new_v4().to_string());
            up.from = Some(stored.last().map_or_else(|| "none".to_string(), |v| format!("v{v}")));
            up.to = Some(format!("v{version}"));
            up.generation = Some(generation);
            c.store.audit(&up).await.map_err(backend)?;
        }
        let mut msg = message(&c, ReleaseOp::Publish, client, flow, generation, &who);
        msg.version = Some(version);
        msg.percent = Some(percent.unwrap_or(0.0));
        if cur.release.is_none() && guard.is_some() {
            c.warnings.push(format!("note: v{version} becomes stable (the first version of {key}); a guard watches a candidate, so --guard is not armed"));
            say(&c, c.warnings.last().map_or("", String::as_str));
        }
        msg.guard = guard;
        let out = send_and_wait(&c, &msg).await?;
        if cur.release.is_some() && percent.unwrap_or(0.0) == 0.0 && !c.json {
            eprintln!("note: v{version} is the candidate at 0%: `rulestream set-percent {client} {flow} P` or `promote` serves it");
        }
        Ok(out)
    })
}

/// Two flow texts that mean the same (whitespace and key order aside).
fn same_flow(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// `set-percent`, `promote`, `rollback`.
pub fn change(
    op: ReleaseOp,
    client: &str,
    flow: &str,
    percent: Option<f64>,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    if let Some(p) = percent
        && let Err(e) = check_percent(p)
    {
        return usage(format!("PERCENT: {e}"));
    }
    rt()?.block_on(async {
        let c = ctx(json_out).await?;
        let cur = match c.store.current(client, flow).await {
            Ok(cur) => cur,
            Err(StoreError::NotFound(m)) => return refuse(&m),
            Err(e) => return Err(backend(e)),
        };
        let Some(release) = cur.release.as_ref() else {
            return refuse(&format!(
                "{client}/{flow} has no release yet: upload a version first"
            ));
        };
        // Refused here with the same words the bridge would use, before anything is sent.
        let who = actor(&c.sdk).await?;
        let mut msg = message(&c, op, client, flow, release.generation, &who);
        msg.percent = percent;
        if let Err(e) = rulestream_core::release::apply(Some(release), &msg, &now()) {
            return refuse(&format!(
                "{client}/{flow} ({}): {e}",
                describe(Some(release))
            ));
        }
        send_and_wait(&c, &msg).await
    })
}

/// `releases CLIENT FLOW`: the audit, oldest first.
pub fn releases(client: &str, flow: &str, json_out: bool) -> anyhow::Result<Outcome> {
    rt()?.block_on(async {
        let c = ctx(json_out).await?;
        let cur = c.store.current(client, flow).await;
        let history = c.store.history(&format!("{client}/{flow}")).await.map_err(backend)?;
        // A flow that is not registered and never was: nothing to show, and the user must fix
        // the name (exit 1), as `promote` or `set-percent` on it would.
        if let (Err(StoreError::NotFound(m)), true) = (&cur, history.is_empty()) {
            return refuse(m);
        }
        if json_out {
            let release = cur.as_ref().ok().and_then(|c| c.release.clone());
            println!("{}", json!({"client_id": client, "flow_id": flow, "release": release, "history": history}));
            return Ok(Outcome::Ok);
        }
        match &cur {
            Ok(cur) => println!(
                "{client}/{flow}: {} (generation {}){}",
                describe(cur.release.as_ref()),
                cur.release.as_ref().map_or(0, |r| r.generation),
                cur.release
                    .as_ref()
                    .and_then(|r| r.guard.as_ref())
                    .map(|g| format!(", guard: FAILED share +{} points after {} executions", g.max_failed_delta * 100.0, g.min_executions))
                    .unwrap_or_default()
            ),
            Err(StoreError::NotFound(m)) => println!("{m}"),
            Err(e) => return Err(anyhow!("clients table: {e}")),
        }
        if history.is_empty() {
            println!("no release history");
            return Ok(Outcome::Ok);
        }
        println!("{:<24}  {:<12}  {:<9}  {:<28}  {:>3}  WHO / WHY", "WHEN", "WHAT", "OUTCOME", "FROM -> TO", "GEN");
        for e in &history {
            let change = match (&e.from, &e.to) {
                (Some(f), Some(t)) => format!("{f} -> {t}"),
                (None, Some(t)) => format!("-> {t}"),
                (Some(f), None) => f.clone(),
                (None, None) => String::new(),
            };
            let why = e.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            println!(
                "{:<24}  {:<12}  {:<9}  {:<28}  {:>3}  {}{why}",
                e.at,
                e.op,
                e.outcome,
                change,
                e.generation.map_or("-".into(), |g| g.to_string()),
                e.actor
            );
        }
        Ok(Outcome::Ok)
    })
}

/// `diff CLIENT FLOW [V1 V2]`: default stable → candidate, else the two highest stored versions.
pub fn diff(client: &str, flow: &str, versions: &[u64], json_out: bool) -> anyhow::Result<Outcome> {
    if !matches!(versions.len(), 0 | 2) {
        return usage(format!(
            "diff takes two versions (V1 V2) or none, not {}",
            versions.len()
        ));
    }
    rt()?.block_on(async {
        let c = ctx(json_out).await?;
        let (a, b) = match versions {
            [a, b] => (*a, *b),
            [] => {
                let cur = c.store.current(client, flow).await.ok().and_then(|c| c.release);
                match cur.and_then(|r| r.candidate.map(|cand| (r.stable, cand))) {
                    Some(pair) => pair,
                    None => {
                        let stored = c.store.versions(client, flow).await.map_err(backend)?;
                        match stored.as_slice() {
                            [.., x, y] => (*x, *y),
                            [] => return refuse(&format!("{client}/{flow} has no stored version (is the flow registered? rulestream client add {client} {flow})")),
                            _ => return refuse(&format!("{client}/{flow} has fewer than two stored versions")),
                        }
                    }
                }
            }
            _ => return usage::<Outcome>("give two versions (V1 V2) or none".to_string()),
        };
        let mut texts = Vec::new();
        for v in [a, b] {
            match c.store.version_text(client, flow, v).await.map_err(backend)? {
                Some(t) => texts.push(serde_json::from_str::<Value>(&t).with_context(|| format!("v{v} is not JSON"))?),
                None => return refuse(&format!("{client}/{flow} has no v{v}")),
            }
        }
        let changes = flow_diff(&texts[0], &texts[1]);
        if json_out {
            println!("{}", json!({"client_id": client, "flow_id": flow, "from": a, "to": b, "changes": changes}));
        } else {
            println!("{client}/{flow}: v{a} -> v{b}");
            if changes.is_empty() {
                println!("  no change");
            }
            for ch in &changes {
                let what = ch["what"].as_str().unwrap_or("");
                let fields = ch["fields"]
                    .as_array()
                    .map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                let name = ch["rule"].as_str().map(|r| format!("rule {r}")).unwrap_or_else(|| "flow".into());
                if fields.is_empty() {
                    println!("  {what:<8} {name}");
                } else {
                    println!("  {what:<8} {name}: {fields}");
                }
            }
        }
        Ok(Outcome::Ok)
    })
}

/// What changed between two flow documents, rule by rule (and the flow's own fields).
pub fn flow_diff(a: &Value, b: &Value) -> Vec<Value> {
    let fields = |x: &Value, y: &Value| -> Vec<String> {
        let keys: BTreeSet<&String> = x
            .as_object()
            .into_iter()
            .chain(y.as_object())
            .flat_map(|o| o.keys())
            .collect();
        keys.into_iter()
            .filter(|k| x.get(k.as_str()) != y.get(k.as_str()))
            .map(|k| k.to_string())
            .collect()
    };
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("rules");
            o.remove("version");
        }
        v
    };
    let mut out = Vec::new();
    let top = fields(&strip(a), &strip(b));
    if !top.is_empty() {
        out.push(json!({"what": "changed", "rule": null, "fields": top}));
    }
    let rules = |v: &Value| -> Vec<(String, Value)> {
        v.get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r.get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    r.clone(),
                )
            })
            .collect()
    };
    let (ra, rb) = (rules(a), rules(b));
    for (id, r) in &ra {
        match rb.iter().find(|(i, _)| i == id) {
            None => out.push(json!({"what": "removed", "rule": id, "fields": []})),
            Some((_, r2)) if r2 != r => {
                out.push(json!({"what": "changed", "rule": id, "fields": fields(r, r2)}))
            }
            Some(_) => {}
        }
    }
    for (id, _) in rb.iter().filter(|(i, _)| !ra.iter().any(|(j, _)| j == i)) {
        out.push(json!({"what": "added", "rule": id, "fields": []}));
    }
    out
}

/// `catalog publish FILE`: every rule of the file (an object or an array) as a new version.
pub fn catalog_publish(file: &Path, json_out: bool) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| crate::output::usage(format!("cannot read {}: {e}", file.display())))?;
    let mut parsed = rulestream_core::Catalog::new();
    if let Err(e) = parsed.add_source(&file.display().to_string(), &text) {
        return refuse(&e.to_string());
    }
    let rules: Vec<MasterRule> = parsed.iter().cloned().collect();
    rt()?.block_on(async {
        let c = ctx(json_out).await?;
        let who = actor(&c.sdk).await?;
        let (mut written, mut unchanged) = (Vec::new(), Vec::new());
        for rule in &rules {
            let stored = c.store.rule_versions(&rule.rule_id).await.map_err(backend)?;
            if let Some((same, _)) = stored.iter().find(|(r, _)| r == rule) {
                say(&c, &format!("{} v{}: unchanged, already published", same.rule_id, same.version));
                unchanged.push(json!({"rule_id": same.rule_id, "version": same.version}));
                continue;
            }
            if let Some((max, _)) = stored.last()
                && rule.version <= max.version
            {
                return refuse(&format!(
                    "catalog rule `{}`: version {} must exceed every stored version (highest: v{}); versions are never overwritten",
                    rule.rule_id, rule.version, max.version
                ));
            }
            let at = now();
            if !c.store.put_rule(rule, &who, &at).await.map_err(backend)? {
                return refuse(&format!("catalog rule `{}` v{} was published meanwhile", rule.rule_id, rule.version));
            }
            let mut e = AuditEntry::new(&format!("catalog/{}", rule.rule_id), &at, &who, "catalog_publish", "applied", &uuid::Uuid::new_v4().to_string());
            e.from = stored.iter().rev().find(|(_, retired)| !retired).map(|(r, _)| format!("v{}", r.version));
            e.to = Some(format!("v{}", rule.version));
            c.store.audit(&e).await.map_err(backend)?;
            say(&c, &format!("published {} v{}", rule.rule_id, rule.version));
            written.push(json!({"rule_id": rule.rule_id, "version": rule.version}));
        }
        // Nothing new: warm orchestrators have nothing to reload.
        let epoch = if written.is_empty() { None } else { bump(&c).await };
        if json_out {
            println!("{}", json!({"published": written, "unchanged": unchanged, "epoch": epoch}));
        } else {
            println!("{} rule version(s) published{}", written.len(), epoch.map(|e| format!("; config epoch {e}: warm orchestrators reload")).unwrap_or_default());
        }
        Ok(Outcome::Ok)
    })
}

/// `catalog rollback RULE`: retires the rule's serving version; flows use the one before it.
pub fn catalog_rollback(rule_id: &str, json_out: bool) -> anyhow::Result<Outcome> {
    rt()?.block_on(async {
        let c = ctx(json_out).await?;
        let stored = c.store.rule_versions(rule_id).await.map_err(backend)?;
        let live: Vec<&MasterRule> = stored.iter().filter(|(_, r)| !r).map(|(m, _)| m).collect();
        if stored.is_empty() {
            return refuse(&format!("no master rule `{rule_id}` in the catalog"));
        }
        let [.., before, current] = live.as_slice() else {
            return refuse(&format!("catalog rule `{rule_id}` has no earlier version to roll back to"));
        };
        let who = actor(&c.sdk).await?;
        c.store.retire_rule(rule_id, current.version).await.map_err(backend)?;
        let at = now();
        let mut e = AuditEntry::new(&format!("catalog/{rule_id}"), &at, &who, "catalog_rollback", "applied", &uuid::Uuid::new_v4().to_string());
        e.from = Some(format!("v{}", current.version));
        e.to = Some(format!("v{}", before.version));
        c.store.audit(&e).await.map_err(backend)?;
        let epoch = bump(&c).await;
        if json_out {
            println!("{}", json!({"rule_id": rule_id, "from": current.version, "to": before.version, "epoch": epoch}));
        } else {
            println!("catalog rule {rule_id}: v{} retired, v{} serves", current.version, before.version);
        }
        Ok(Outcome::Ok)
    })
}

/// Bumps the config epoch when Redis is configured (else orchestrators reload on their TTL).
async fn bump(c: &Ctx) -> Option<u64> {
    rulestream_aws::install_crypto();
    let redis = match rulestream_aws::redis_from_config(&c.cfg, &c.sdk).await {
        Ok(r) => r,
        Err(e) => {
            say(
                c,
                &format!(
                    "warning: Redis not configured ({e}): orchestrators reload within RULESTREAM_CONFIG_TTL_SECS"
                ),
            );
            return None;
        }
    };
    match redis.bump_epoch().await {
        Ok(e) => Some(e),
        Err(e) => {
            say(
                c,
                &format!(
                    "warning: config epoch not bumped ({e}): orchestrators reload within RULESTREAM_CONFIG_TTL_SECS"
                ),
            );
            None
        }
    }
}

/// What kind of JSON value `v` is, for messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_rules_and_fields() {
        let a = json!({"version": 1, "start": "a", "rules": [
            {"id": "a", "when": "true", "on": {}}, {"id": "b", "when": "x"}]});
        let b = json!({"version": 2, "start": "a", "max_steps": 5, "rules": [
            {"id": "a", "when": "false", "on": {}}, {"id": "c", "when": "y"}]});
        let d = flow_diff(&a, &b);
        assert_eq!(
            d[0],
            json!({"what": "changed", "rule": null, "fields": ["max_steps"]})
        );
        assert_eq!(
            d[1],
            json!({"what": "changed", "rule": "a", "fields": ["when"]})
        );
        assert_eq!(d[2], json!({"what": "removed", "rule": "b", "fields": []}));
        assert_eq!(d[3], json!({"what": "added", "rule": "c", "fields": []}));
        assert!(flow_diff(&a, &a).is_empty());
    }
}
