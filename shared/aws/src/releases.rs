//! Release state, flow versions, the catalog and the audit, as the CLI, the release bridge and
//! the sweeper's guard read and change them (SPEC sections 2–4).
//!
//! - a flow's `release` lives on its clients row; it changes only by a conditional write on its
//!   `generation` ([`ReleaseStore::commit`]);
//! - flow versions are immutable S3 objects `flows/<client>/<flow>/v<version>.json`, written with
//!   `If-None-Match: *` ([`ReleaseStore::put_version`]);
//! - the audit table is append-only: HASH `subject` (`<client>/<flow>` or `catalog/<rule>`),
//!   RANGE `id` (`<at>#<message id>#<outcome>`), so writing the same entry twice is a no-op.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client as Ddb;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::Client as S3;
use rulestream_core::catalog::Catalog;
use rulestream_core::execution::Release;
use rulestream_core::model::MasterRule;
use rulestream_core::ports::StoreError;
use rulestream_core::release::Counts;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::dynamo::store_error;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `<client>/<flow>` or `catalog/<rule id>`.
    pub subject: String,
    /// `<at>#<message id>#<outcome>`: sorts by time, unique per message and outcome.
    pub id: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who (caller identity, or `guard`).
    pub actor: String,
    /// `upload`, `publish`, `set_percent`, `promote`, `rollback`, `catalog_publish`,
    /// `catalog_rollback`, or `message` for one that could not be read.
    pub op: String,
    /// `applied`, `ignored` (stale or duplicate), `rejected`, or `stored`.
    pub outcome: String,
    /// The release (or rule version) before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The release (or rule version) after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The generation the change was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The release message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Why (rejections, automatic rollbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A release message's own `at` (when its sender made it), beside `at` (when the bridge
    /// received it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
}

impl AuditEntry {
    /// An entry whose id is built from `at`, `message_id` and `outcome`.
    pub fn new(
        subject: &str,
        at: &str,
        actor: &str,
        op: &str,
        outcome: &str,
        message_id: &str,
    ) -> AuditEntry {
        AuditEntry {
            subject: subject.to_string(),
            id: format!("{at}#{message_id}#{outcome}"),
            at: at.to_string(),
            actor: actor.to_string(),
            op: op.to_string(),
            outcome: outcome.to_string(),
            from: None,
            to: None,
            generation: None,
            message_id: Some(message_id.to_string()),
            reason: None,
            requested_at: None,
        }
    }
}

/// A release in a few words: `v1`, or `v1 + v2 at 10%`.
pub fn describe(r: Option<&Release>) -> String {
    match r {
        None => "none".into(),
        Some(r) => match r.candidate {
            None => format!("v{}", r.stable),
            Some(c) => format!("v{} + v{c} at {}%", r.stable, r.percent),
        },
    }
}

/// A clients row's release, as the bridge sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    /// `None`: the flow has no version yet.
    pub release: Option<Release>,
    /// Whether the row is enabled.
    pub enabled: bool,
}

/// The stores behind releases.
#[derive(Clone)]
pub struct ReleaseStore {
    ddb: Ddb,
    s3: S3,
    clients_table: String,
    catalog_table: String,
    audit_table: String,
    executions_table: String,
    bucket: String,
}

/// The S3 key of a flow version.
pub fn version_key(client_id: &str, flow_id: &str, version: u64) -> String {
    format!("flows/{client_id}/{flow_id}/v{version}.json")
}

/// `flows/c/f/v3.json` -> 3.
pub fn version_of_key(key: &str) -> Option<u64> {
    key.rsplit('/')
        .next()?
        .strip_prefix('v')?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

impl ReleaseStore {
    /// The stores of `cfg`.
    pub fn new(sdk: &aws_config::SdkConfig, cfg: &Config) -> ReleaseStore {
        ReleaseStore {
            ddb: Ddb::new(sdk),
            s3: S3::from_conf(
                aws_sdk_s3::config::Builder::from(sdk)
                    .force_path_style(true)
                    .build(),
            ),
            clients_table: cfg.clients_table.clone(),
            catalog_table: cfg.catalog_table.clone(),
            audit_table: cfg.audit_table.clone(),
            executions_table: cfg.executions_table.clone(),
            bucket: cfg.bucket.clone(),
        }
    }

    /// The DynamoDB client.
    pub fn ddb(&self) -> &Ddb {
        &self.ddb
    }

    /// The release of a client's flow; `NotFound` when the clients row does not exist.
    pub async fn current(&self, client_id: &str, flow_id: &str) -> Result<Current, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.clients_table)
            .key("client_id", AttributeValue::S(client_id.into()))
            .key("flow_id", AttributeValue::S(flow_id.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("clients table", &e))?;
        let Some(item) = out.item else {
            return Err(StoreError::NotFound(format!(
                "no client `{client_id}` with flow `{flow_id}` is registered"
            )));
        };
        let enabled = !matches!(item.get("enabled"), Some(AttributeValue::Bool(false)));
        let release = match item.get("release") {
            Some(AttributeValue::M(m)) => Some(
                serde_dynamo::from_item::<_, Release>(m.clone()).map_err(|e| {
                    StoreError::Invalid(format!(
                        "clients row {client_id}/{flow_id}: `release` is malformed: {e}"
                    ))
                })?,
            ),
            _ => match item.get("config_key") {
                Some(AttributeValue::S(k)) => version_of_key(k).map(Release::stable_only),
                _ => None,
            },
        };
        Ok(Current { release, enabled })
    }

    /// Writes `next` if the row's release is still at `from_generation` (or absent, for 0):
    /// `Ok(false)` when another change won.
    pub async fn commit(
        &self,
        client_id: &str,
        flow_id: &str,
        from_generation: u64,
        next: &Release,
    ) -> Result<bool, StoreError> {
        let item = serde_dynamo::to_item(next)
            .map_err(|e| StoreError::Invalid(format!("release: {e}")))?;
        let condition = if from_generation == 0 {
            "attribute_exists(client_id) AND (attribute_not_exists(#r) OR #r.#g = :g)"
        } else {
            "attribute_exists(client_id) AND #r.#g = :g"
        };
        let r = self
            .ddb
            .update_item()
            .table_name(&self.clients_table)
            .key("client_id", AttributeValue::S(client_id.into()))
            .key("flow_id", AttributeValue::S(flow_id.into()))
            .update_expression("SET #r = :r, config_key = :k")
            .condition_expression(condition)
            .expression_attribute_names("#r", "release")
            .expression_attribute_names("#g", "generation")
            .expression_attribute_values(":r", AttributeValue::M(item))
            .expression_attribute_values(
                ":k",
                AttributeValue::S(version_key(client_id, flow_id, next.stable)),
            )
            .expression_attribute_values(":g", AttributeValue::N(from_generation.to_string()))
            .send()
            .await;
        crate::dynamo::outcome("clients table", r)
    }

    /// Appends `entry` (writing the same entry again changes nothing).
    pub async fn audit(&self, entry: &AuditEntry) -> Result<bool, StoreError> {
        let item = serde_dynamo::to_item(entry)
            .map_err(|e| StoreError::Invalid(format!("audit entry: {e}")))?;
        let r = self
            .ddb
            .put_item()
            .table_name(&self.audit_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(subject)")
            .send()
            .await;
        // Written before (the same entry again): nothing to do, `Ok(false)`.
        crate::dynamo::outcome("audit table", r)
    }

    /// Every audit entry of `subject`, oldest first.
    pub async fn history(&self, subject: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .ddb
                .query()
                .table_name(&self.audit_table)
                .key_condition_expression("subject = :s")
                .expression_attribute_values(":s", AttributeValue::S(subject.into()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("audit table", &e))?;
            for item in page.items() {
                if let Ok(e) = serde_dynamo::from_item::<_, AuditEntry>(item.clone()) {
                    out.push(e);
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The stored versions of a flow, ascending.
    pub async fn versions(&self, client_id: &str, flow_id: &str) -> Result<Vec<u64>, StoreError> {
        let prefix = format!("flows/{client_id}/{flow_id}/");
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| store_error("listing flow versions", &e))?;
            for o in page.contents() {
                if let Some(v) = o.key().and_then(version_of_key) {
                    out.push(v);
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The text of a flow version (`None`: no such object).
    pub async fn version_text(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
    ) -> Result<Option<String>, StoreError> {
        let key = version_key(client_id, flow_id, version);
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(o) => {
                let bytes = o
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError::Transient(format!("reading {key}: {e}")))?
                    .into_bytes();
                String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| StoreError::Invalid(format!("{key} is not UTF-8")))
            }
            Err(e) => {
                let missing = e.as_service_error().is_some_and(|s| s.is_no_such_key());
                if missing {
                    Ok(None)
                } else {
                    Err(store_error(&format!("reading {key}"), &e))
                }
            }
        }
    }

    /// Stores a new version; `Ok(false)` when the object already exists (never overwritten).
    pub async fn put_version(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
        text: &str,
    ) -> Result<bool, StoreError> {
        let key = version_key(client_id, flow_id, version);
        // Checked first as well: not every S3 implementation honours If-None-Match.
        if self
            .version_text(client_id, flow_id, version)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let r = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .if_none_match("*")
            .body(text.as_bytes().to_vec().into())
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) => {
                let code = e
                    .as_service_error()
                    .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code);
                if matches!(
                    code,
                    Some("PreconditionFailed" | "ConditionalRequestConflict")
                ) {
                    Ok(false)
                } else {
                    Err(store_error(&format!("writing {key}"), &e))
                }
            }
        }
    }

    /// The catalog table as the orchestrator reads it ([`load_catalog`]).
    pub async fn catalog(&self) -> Result<Catalog, StoreError> {
        load_catalog(&self.ddb, &self.catalog_table)
            .await
            .map(|(c, _)| c)
    }

    /// Every stored version of a master rule (retired ones included), ascending, with whether
    /// each is retired.
    pub async fn rule_versions(
        &self,
        rule_id: &str,
    ) -> Result<Vec<(MasterRule, bool)>, StoreError> {
        let page = self
            .ddb
            .query()
            .table_name(&self.catalog_table)
            .key_condition_expression("rule_id = :r")
            .expression_attribute_values(":r", AttributeValue::S(rule_id.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("catalog table", &e))?;
        let mut out = Vec::new();
        for item in page.items() {
            if let Some(rule) = rule_of_item(item) {
                out.push((rule, retired(item)));
            }
        }
        out.sort_by_key(|(r, _)| r.version);
        Ok(out)
    }

    /// Writes a new master rule version; `Ok(false)` when that version exists.
    pub async fn put_rule(
        &self,
        rule: &MasterRule,
        actor: &str,
        at: &str,
    ) -> Result<bool, StoreError> {
        let mut item =
            serde_dynamo::to_item(rule).map_err(|e| StoreError::Invalid(format!("rule: {e}")))?;
        let item_map: &mut HashMap<String, AttributeValue> = &mut item;
        item_map.insert("published_by".into(), AttributeValue::S(actor.into()));
        item_map.insert("published_at".into(), AttributeValue::S(at.into()));
        let r = self
            .ddb
            .put_item()
            .table_name(&self.catalog_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(rule_id)")
            .send()
            .await;
        crate::dynamo::outcome("catalog table", r)
    }

    /// Marks a rule version retired (flows then use the highest version not retired).
    pub async fn retire_rule(&self, rule_id: &str, version: u64) -> Result<(), StoreError> {
        self.ddb
            .update_item()
            .table_name(&self.catalog_table)
            .key("rule_id", AttributeValue::S(rule_id.into()))
            .key("version", AttributeValue::N(version.to_string()))
            .update_expression("SET retired = :t")
            .condition_expression("attribute_exists(rule_id)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(|e| store_error("catalog table", &e))?;
        Ok(())
    }

    /// Whether a stored version may serve: `Ok(Err(why))` when it is missing, invalid against
    /// the deployed catalog, or names another flow or version.
    pub async fn check_version(
        &self,
        client_id: &str,
        flow_id: &str,
        version: u64,
    ) -> Result<Result<(), String>, StoreError> {
        let key = version_key(client_id, flow_id, version);
        let Some(text) = self.version_text(client_id, flow_id, version).await? else {
            return Ok(Err(format!("{key} does not exist")));
        };
        let catalog = self.catalog().await?;
        Ok(
            check_flow_text(&text, &catalog, client_id, flow_id, version)
                .map(|_| ())
                .map_err(|e| format!("{key}: {e}")),
        )
    }

    /// Executions of a flow started since `since` (RFC 3339), by version: how many ended and how
    /// many of those `FAILED` (the executions index by client and start time, never a scan).
    pub async fn version_counts(
        &self,
        client_id: &str,
        flow_id: &str,
        since: &str,
    ) -> Result<HashMap<u64, Counts>, StoreError> {
        let mut out: HashMap<u64, Counts> = HashMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .ddb
                .query()
                .table_name(&self.executions_table)
                .index_name("by-client")
                .key_condition_expression("client_id = :c AND started_at >= :t")
                .filter_expression("flow_id = :f")
                .projection_expression("flow_version, #s")
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":c", AttributeValue::S(client_id.into()))
                .expression_attribute_values(":t", AttributeValue::S(since.into()))
                .expression_attribute_values(":f", AttributeValue::S(flow_id.into()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("executions index by-client", &e))?;
            for item in page.items() {
                let version = match item.get("flow_version") {
                    Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
                    _ => None,
                };
                let status = match item.get("status") {
                    Some(AttributeValue::S(s)) => s.as_str(),
                    _ => "",
                };
                let Some(v) = version else { continue };
                if status.is_empty() || status == rulestream_core::chain::RUNNING {
                    continue;
                }
                let c = out.entry(v).or_default();
                c.finished += 1;
                if status == "FAILED" {
                    c.failed += 1;
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Scans the clients table for rows whose release has a candidate with a guard.
    pub async fn guarded(&self) -> Result<Vec<(String, String, Release)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(&self.clients_table)
                .filter_expression("attribute_exists(#r.guard) AND attribute_exists(#r.candidate)")
                .expression_attribute_names("#r", "release")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("clients table", &e))?;
            for item in page.items() {
                let (
                    Some(AttributeValue::S(c)),
                    Some(AttributeValue::S(f)),
                    Some(AttributeValue::M(r)),
                ) = (
                    item.get("client_id"),
                    item.get("flow_id"),
                    item.get("release"),
                )
                else {
                    continue;
                };
                if let Ok(rel) = serde_dynamo::from_item::<_, Release>(r.clone()) {
                    out.push((c.clone(), f.clone(), rel));
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// The attributes a master rule has (SPEC section 2); any other attribute of a catalog row
/// (`published_by`, `retired`, or one a later version adds) is ignored by the reader.
const RULE_FIELDS: &[&str] = &[
    "rule_id",
    "version",
    "kind",
    "description",
    "params",
    "expression",
    "function",
    "url",
    "timeout_ms",
];

fn retired(item: &HashMap<String, AttributeValue>) -> bool {
    matches!(item.get("retired"), Some(AttributeValue::Bool(true)))
}

/// A catalog row as a master rule (unknown attributes dropped), or `None` when it is not one.
fn rule_of_item(item: &HashMap<String, AttributeValue>) -> Option<MasterRule> {
    let known: HashMap<String, AttributeValue> = item
        .iter()
        .filter(|(k, _)| RULE_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let value: Value = serde_dynamo::from_item(known).ok()?;
    serde_json::from_value(value).ok()
}

/// Reads the whole catalog table: the rules that serve, and a line for each row skipped (a row
/// that is not a valid master rule is left out, so one bad row never makes every flow invalid;
/// a retired version is kept but is never a rule's latest, so flows use the one before it).
pub async fn load_catalog(ddb: &Ddb, table: &str) -> Result<(Catalog, Vec<String>), StoreError> {
    let mut catalog = Catalog::new();
    let mut skipped = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| store_error("catalog scan", &e))?;
        for item in out.items() {
            let id = match item.get("rule_id") {
                Some(AttributeValue::S(s)) => s.clone(),
                _ => "?".into(),
            };
            match rule_of_item(item) {
                Some(rule) => match rulestream_core::validate::check_master_rule(&rule) {
                    // A rolled-back version is never a rule's latest, but an execution that
                    // pinned it at its start still finds it.
                    Ok(()) if retired(item) => catalog.insert_retired(rule),
                    Ok(()) => catalog.insert(rule),
                    Err(m) => skipped.push(format!("catalog rule `{id}` skipped: {m}")),
                },
                None => skipped.push(format!("catalog row `{id}` skipped: not a master rule")),
            }
        }
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    for s in &skipped {
        tracing::warn!(table, "{s}");
    }
    Ok((catalog, skipped))
}

/// Whether `text` is a valid flow for `client_id`/`flow_id` at `version` against `catalog`; the
/// error lists the first problems.
pub fn check_flow_text(
    text: &str,
    catalog: &Catalog,
    client_id: &str,
    flow_id: &str,
    version: u64,
) -> Result<Vec<String>, String> {
    let v = rulestream_core::validate_str(text, catalog);
    if !v.is_valid() {
        let errs: Vec<String> = v.errors().take(5).map(ToString::to_string).collect();
        return Err(format!("invalid flow: {}", errs.join("; ")));
    }
    let warnings = v.warnings().map(ToString::to_string).collect();
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let (c, f, n) = (
        doc.get("client_id").and_then(Value::as_str),
        doc.get("flow_id").and_then(Value::as_str),
        doc.get("version").and_then(Value::as_u64),
    );
    if c != Some(client_id) || f != Some(flow_id) || n != Some(version) {
        return Err(format!(
            "the file says {}/{} v{}, the release names {client_id}/{flow_id} v{version}",
            c.unwrap_or("?"),
            f.unwrap_or("?"),
            n.map_or("?".into(), |n| n.to_string())
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_round_trip() {
        assert_eq!(version_key("acme", "trade", 3), "flows/acme/trade/v3.json");
        assert_eq!(version_of_key("flows/acme/trade/v3.json"), Some(3));
        assert_eq!(version_of_key("flows/acme/trade/latest.json"), None);
    }
}
