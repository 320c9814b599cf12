//! `client add|disable|enable|rotate-key` (SPEC section 6): onboarding a client's flow without a
//! redeploy, switching it off, and rotating its sync API key without downtime.
//!
//! A client's API keys are stored as SHA-256 digests (`api_key_sha256`, a list) on each of its
//! clients rows; the key itself is printed once and never stored. Every change is audited
//! (subject `client/<id>`) and bumps the config epoch.

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use aws_sdk_dynamodb::types::AttributeValue;
use rulestream_aws::config::Config;
use rulestream_aws::releases::{AuditEntry, ReleaseStore};
use serde_json::json;
use sha2::Digest;

use crate::Outcome;

struct Ctx {
    cfg: Config,
    sdk: aws_config::SdkConfig,
    ddb: aws_sdk_dynamodb::Client,
    store: ReleaseStore,
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn ctx() -> anyhow::Result<Ctx> {
    let cfg = Config::from_env().map_err(|e| anyhow!("configuration: {e}"))?;
    let sdk = rulestream_aws::sdk_config().await;
    Ok(Ctx {
        ddb: aws_sdk_dynamodb::Client::new(&sdk),
        store: ReleaseStore::new(&sdk, &cfg),
        cfg,
        sdk,
    })
}

/// A user error: one line, exit 1.
fn refuse(line: &str) -> anyhow::Result<Outcome> {
    crate::output::fail("refused", line);
    Ok(Outcome::UserFix)
}

/// Bad usage (a malformed argument or option): an error, which `main` prints on one line and
/// turns into exit 2, like every other usage error.
fn usage(line: String) -> anyhow::Result<Outcome> {
    Err(crate::output::usage(line))
}

/// The usage error of a client id that SPEC section 3 does not allow.
fn check_client_arg(client: &str) -> anyhow::Result<()> {
    if valid_client_id(client) {
        return Ok(());
    }
    Err(crate::output::usage(format!(
        "client id `{client}`: use 1-63 of a-z, 0-9 and `-`, starting with a letter or digit"
    )))
}

fn ddb_err<
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
>(
    what: &str,
    e: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> anyhow::Error {
    anyhow!(
        "the backend cannot be reached or refused the call: {what}: {}",
        rulestream_aws::errors::sdk_error_text(&e)
    )
}

/// A client id as SPEC section 3 allows: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_client_id(id: &str) -> bool {
    rulestream_core::execution::is_client_id(id)
}

fn valid_flow_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A new API key: `rs_` and 64 hex digits from the OS's random source.
fn new_key() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("rs_{a}{b}")
}

fn digest(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The client's rows: flow id -> item.
async fn rows(c: &Ctx, client: &str) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    let out = c
        .ddb
        .query()
        .table_name(&c.cfg.clients_table)
        .key_condition_expression("client_id = :c")
        .expression_attribute_values(":c", AttributeValue::S(client.into()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| ddb_err("clients table", e))?;
    Ok(out.items().to_vec())
}

/// The key digests of a client's rows, each once, in the order the rows give them (the last is
/// the newest).
fn client_keys(items: &[HashMap<String, AttributeValue>]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for k in items.iter().flat_map(rulestream_aws::flows::api_key_hashes) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

fn flow_of(item: &HashMap<String, AttributeValue>) -> String {
    item.get("flow_id")
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

async fn audit(c: &Ctx, client: &str, op: &str, to: String) -> anyhow::Result<()> {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sts = aws_sdk_sts::Client::new(&c.sdk);
    let who = sts
        .get_caller_identity()
        .send()
        .await
        .ok()
        .and_then(|w| w.arn().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let mut e = AuditEntry::new(
        &format!("client/{client}"),
        &at,
        &who,
        op,
        "applied",
        &uuid::Uuid::new_v4().to_string(),
    );
    e.to = Some(to);
    c.store
        .audit(&e)
        .await
        .map_err(|e| anyhow!("the backend cannot be reached or refused the call: {e}"))?;
    bump(c).await;
    Ok(())
}

async fn bump(c: &Ctx) {
    rulestream_aws::install_crypto();
    if let Ok(r) = rulestream_aws::redis_from_config(&c.cfg, &c.sdk).await {
        let _ = r.bump_epoch().await;
    }
}

/// Options of `client add`.
pub struct AddArgs {
    /// Client id.
    pub client: String,
    /// Flow id.
    pub flow: String,
    /// Client data: the role in the client's account.
    pub role_arn: Option<String>,
    /// Client data: the secret there.
    pub secret_id: Option<String>,
    /// Start quota.
    pub quota: Option<f64>,
    /// JSON output.
    pub json: bool,
}

/// `client add CLIENT FLOW`.
pub fn add(a: &AddArgs) -> anyhow::Result<Outcome> {
    // Malformed arguments and options are bad usage: exit 2.
    check_client_arg(&a.client)?;
    if !valid_flow_id(&a.flow) {
        return usage(format!(
            "flow id `{}`: use 1-128 of A-Z, a-z, 0-9, `-`, `_` and `.`",
            a.flow
        ));
    }
    if a.role_arn.is_some() != a.secret_id.is_some() {
        return usage("client data needs both --role-arn and --secret-id".to_string());
    }
    if let Some(q) = a.quota
        && !(q.is_finite() && q > 0.0)
    {
        return usage(format!("--quota {q}: starts per second must be above 0"));
    }
    rt()?.block_on(async {
        let c = ctx().await?;
        let existing = rows(&c, &a.client).await?;
        // A client's keys are the same on all its rows: a new flow inherits them.
        let mut keys = client_keys(&existing);
        let new_key = keys.is_empty().then(new_key);
        if let Some(k) = &new_key {
            keys.push(digest(k));
        }
        let mut item = HashMap::from([
            ("client_id".to_string(), AttributeValue::S(a.client.clone())),
            ("flow_id".to_string(), AttributeValue::S(a.flow.clone())),
            ("enabled".to_string(), AttributeValue::Bool(true)),
            (
                "api_key_sha256".to_string(),
                AttributeValue::L(keys.iter().cloned().map(AttributeValue::S).collect()),
            ),
        ]);
        if let (Some(r), Some(s)) = (&a.role_arn, &a.secret_id) {
            item.insert("role_arn".into(), AttributeValue::S(r.clone()));
            item.insert("secret_id".into(), AttributeValue::S(s.clone()));
        }
        if let Some(q) = a.quota {
            item.insert(
                "quota".into(),
                AttributeValue::M(HashMap::from([(
                    "starts_per_second".to_string(),
                    AttributeValue::N(q.to_string()),
                )])),
            );
        }
        let put = c
            .ddb
            .put_item()
            .table_name(&c.cfg.clients_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(client_id)")
            .send()
            .await;
        if let Err(e) = put {
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception())
            {
                return refuse(&format!(
                    "{}/{} is already registered",
                    a.client, a.flow
                ));
            }
            return Err(ddb_err("clients table", e));
        }
        audit(&c, &a.client, "client_add", format!("flow {}", a.flow)).await?;
        if a.json {
            println!(
                "{}",
                json!({"client_id": a.client, "flow_id": a.flow, "api_key": new_key, "enabled": true})
            );
        } else {
            println!("registered {}/{} (enabled)", a.client, a.flow);
            match &new_key {
                Some(k) => {
                    println!("api key: {k}");
                    eprintln!("note: the key is shown once and stored only as a SHA-256 digest; keep it now");
                }
                None => println!("the flow uses the client's existing API keys"),
            }
            eprintln!(
                "next: rulestream upload <flow file> (its first version serves every execution)"
            );
        }
        Ok(Outcome::Ok)
    })
}

/// `client disable|enable CLIENT [FLOW]`.
pub fn set_enabled(
    client: &str,
    flow: Option<&str>,
    enabled: bool,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    check_client_arg(client)?;
    rt()?.block_on(async {
        let c = ctx().await?;
        let mut flows: Vec<String> = rows(&c, client).await?.iter().map(flow_of).collect();
        if let Some(f) = flow {
            flows.retain(|x| x == f);
        }
        if flows.is_empty() {
            return refuse(&format!(
                "no client `{client}`{} is registered",
                flow.map(|f| format!(" with flow `{f}`"))
                    .unwrap_or_default()
            ));
        }
        for f in &flows {
            c.ddb
                .update_item()
                .table_name(&c.cfg.clients_table)
                .key("client_id", AttributeValue::S(client.into()))
                .key("flow_id", AttributeValue::S(f.clone()))
                .update_expression("SET enabled = :e")
                .condition_expression("attribute_exists(client_id)")
                .expression_attribute_values(":e", AttributeValue::Bool(enabled))
                .send()
                .await
                .map_err(|e| ddb_err("clients table", e))?;
        }
        let word = if enabled { "enabled" } else { "disabled" };
        audit(
            &c,
            client,
            if enabled {
                "client_enable"
            } else {
                "client_disable"
            },
            format!("{word}: {}", flows.join(", ")),
        )
        .await?;
        if json_out {
            println!(
                "{}",
                json!({"client_id": client, "flows": flows, "enabled": enabled})
            );
        } else {
            println!("{client}: {word} {}", flows.join(", "));
        }
        Ok(Outcome::Ok)
    })
}

/// `client rotate-key CLIENT [--finish]`: adds a new key (the old ones stay valid), or with
/// `finish` removes every key but the newest.
pub fn rotate_key(client: &str, finish: bool, json_out: bool) -> anyhow::Result<Outcome> {
    check_client_arg(client)?;
    rt()?.block_on(async {
        let c = ctx().await?;
        let items = rows(&c, client).await?;
        if items.is_empty() {
            return refuse(&format!("no client `{client}` is registered"));
        }
        let keys = client_keys(&items);
        let new_key = (!finish).then(new_key);
        let next: Vec<String> = match &new_key {
            Some(k) => keys.iter().cloned().chain([digest(k)]).collect(),
            None => match keys.last() {
                Some(last) => vec![last.clone()],
                None => return refuse(&format!("{client} has no API key to keep")),
            },
        };
        for item in &items {
            c.ddb
                .update_item()
                .table_name(&c.cfg.clients_table)
                .key("client_id", AttributeValue::S(client.into()))
                .key("flow_id", AttributeValue::S(flow_of(item)))
                .update_expression("SET api_key_sha256 = :k")
                .condition_expression("attribute_exists(client_id)")
                .expression_attribute_values(
                    ":k",
                    AttributeValue::L(next.iter().cloned().map(AttributeValue::S).collect()),
                )
                .send()
                .await
                .map_err(|e| ddb_err("clients table", e))?;
        }
        audit(
            &c,
            client,
            if finish { "key_rotation_finished" } else { "key_rotated" },
            format!("{} key(s) valid", next.len()),
        )
        .await?;
        if json_out {
            println!("{}", json!({"client_id": client, "api_key": new_key, "valid_keys": next.len()}));
        } else if let Some(k) = &new_key {
            println!("new api key: {k}");
            println!("{} key(s) now valid; once every caller uses the new one: rulestream client rotate-key {client} --finish", next.len());
            eprintln!("note: the key is shown once and stored only as a SHA-256 digest; keep it now");
        } else {
            println!("{client}: only the newest key is valid now");
        }
        Ok(Outcome::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys() {
        assert!(valid_client_id("acme-bank") && valid_client_id("9z"));
        assert!(!valid_client_id("-x") && !valid_client_id("Acme") && !valid_client_id(""));
        assert!(!valid_client_id(&"a".repeat(64)));
        let k = new_key();
        assert!(k.starts_with("rs_") && k.len() == 67);
        assert_ne!(new_key(), k);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
