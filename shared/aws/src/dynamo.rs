//! The executions summary, the steps table and the trigger table on DynamoDB: the core's
//! [`Journal`].
//!
//! Layout (SPEC section 3): `<prefix>-executions` holds one summary per execution, written at the
//! start and at the end (sparse index `running` while it runs; index `by-client` for listing);
//! `<prefix>-steps` one small item per step (sparse index `pending` while a delivery is due);
//! trigger rows seq n+1 are put with `attribute_not_exists`. No transaction: every write is one
//! conditional single-item write, and the loop reads back what is there when a condition fails.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use rulestream_core::ports::{Journal, StoreError};
use serde_json::Value;

/// Summaries, steps and trigger rows on DynamoDB.
#[derive(Clone)]
pub struct DynamoJournal {
    client: Client,
    executions_table: String,
    steps_table: String,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoJournal {
    /// An adapter over `executions_table` and `steps_table` (trigger tables come with each row).
    pub fn new(client: Client, executions_table: &str, steps_table: &str) -> DynamoJournal {
        DynamoJournal {
            client,
            executions_table: executions_table.to_string(),
            steps_table: steps_table.to_string(),
        }
    }
}

fn to_item(v: &Value) -> Result<Item, StoreError> {
    serde_dynamo::to_item(v).map_err(|e| StoreError::Invalid(format!("cannot encode item: {e}")))
}

fn from_item(i: Item) -> Result<Value, StoreError> {
    serde_dynamo::from_item(i).map_err(|e| StoreError::Invalid(format!("cannot decode item: {e}")))
}

fn av(v: &Value) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v)
        .map_err(|e| StoreError::Invalid(format!("cannot encode: {e}")))
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n<T: ToString>(v: T) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A failed call: a `ValidationException` (e.g. an item over 400 KB) will fail again, so it is
/// `Invalid`; anything else may pass on a retry.
pub(crate) fn store_error<E, R>(what: &str, e: &SdkError<E, R>) -> StoreError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    let msg = format!("{what}: {}", crate::errors::sdk_error_text(e));
    let se = e.as_service_error();
    if crate::errors::is_permanent(se.and_then(|se| se.code()), se.and_then(|se| se.message())) {
        StoreError::Invalid(msg)
    } else {
        StoreError::Transient(msg)
    }
}

/// Whether a failed call failed on its condition (the item was already written).
fn conditional<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException")
}

/// `Ok(true)` written, `Ok(false)` its condition failed, `Err` otherwise.
pub(crate) fn outcome<T, E, R>(what: &str, r: Result<T, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match r {
        Ok(_) => Ok(true),
        Err(e) if conditional(&e) => Ok(false),
        Err(e) => Err(store_error(what, &e)),
    }
}

impl DynamoJournal {
    async fn put_if_absent(&self, table: &str, doc: &Value, key: &str) -> Result<bool, StoreError> {
        let r = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(to_item(doc)?))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", key)
            .send()
            .await;
        outcome(table, r)
    }

    async fn get(&self, table: &str, key: Item) -> Result<Option<Value>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(table, &e))?;
        out.item.map(from_item).transpose()
    }

    async fn query_steps(
        &self,
        id: &str,
        forward: bool,
        limit: Option<i32>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.steps_table)
                .key_condition_expression("execution_id = :id")
                .expression_attribute_values(":id", s(id))
                .consistent_read(true)
                .scan_index_forward(forward)
                .set_limit(limit)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error("steps query", &e))?;
            for i in page.items.unwrap_or_default() {
                out.push(from_item(i)?);
            }
            match page.last_evaluated_key {
                Some(k) if limit.is_none() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn query_index(
        &self,
        table: &str,
        index: &str,
        hash: (&str, &str),
        range_le: (&str, AttributeValue),
        limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(table)
            .index_name(index)
            .key_condition_expression("#h = :h AND #r <= :r")
            .expression_attribute_names("#h", hash.0)
            .expression_attribute_names("#r", range_le.0)
            .expression_attribute_values(":h", s(hash.1))
            .expression_attribute_values(":r", range_le.1)
            .limit(limit)
            .send()
            .await
            .map_err(|e| store_error(index, &e))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .map(from_item)
            .collect()
    }
}

impl Journal for DynamoJournal {
    async fn start(&self, summary: &Value) -> Result<bool, StoreError> {
        self.put_if_absent(&self.executions_table, summary, "execution_id")
            .await
    }

    async fn summary(&self, execution_id: &str) -> Result<Option<Value>, StoreError> {
        let key = HashMap::from([("execution_id".to_string(), s(execution_id))]);
        self.get(&self.executions_table, key).await
    }

    async fn finish(&self, execution_id: &str, finish: &Value) -> Result<bool, StoreError> {
        let Some(fields) = finish.as_object() else {
            return Err(StoreError::Invalid("a finish must be an object".into()));
        };
        let mut names: HashMap<String, String> = HashMap::new();
        let mut values: Item = HashMap::new();
        let mut set = Vec::new();
        for (i, (k, v)) in fields
            .iter()
            .filter(|(k, _)| k.as_str() != "execution_id")
            .enumerate()
        {
            names.insert(format!("#f{i}"), k.clone());
            values.insert(format!(":v{i}"), av(v)?);
            set.push(format!("#f{i} = :v{i}"));
        }
        names.insert("#st".into(), "status".into());
        names.insert("#rs".into(), "running_shard".into());
        values.insert(":running".into(), s(rulestream_core::chain::RUNNING));
        let r = self
            .client
            .update_item()
            .table_name(&self.executions_table)
            .key("execution_id", s(execution_id))
            .update_expression(format!("SET {} REMOVE #rs", set.join(", ")))
            .condition_expression("attribute_not_exists(execution_id) OR #st = :running")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        outcome("executions", r)
    }

    async fn put_step(&self, step: &Value) -> Result<bool, StoreError> {
        self.put_if_absent(&self.steps_table, step, "execution_id")
            .await
    }

    async fn step(&self, execution_id: &str, seq: u64) -> Result<Option<Value>, StoreError> {
        let key = HashMap::from([
            ("execution_id".to_string(), s(execution_id)),
            ("seq".to_string(), n(seq)),
        ]);
        self.get(&self.steps_table, key).await
    }

    async fn steps(&self, execution_id: &str) -> Result<Vec<Value>, StoreError> {
        self.query_steps(execution_id, true, None).await
    }

    async fn last_step(&self, execution_id: &str) -> Result<Option<Value>, StoreError> {
        Ok(self
            .query_steps(execution_id, false, Some(1))
            .await?
            .into_iter()
            .next())
    }

    async fn put_row(&self, table: &str, row: &Value) -> Result<bool, StoreError> {
        self.put_if_absent(table, row, "execution_id").await
    }

    async fn row(
        &self,
        table: &str,
        execution_id: &str,
        seq: u64,
    ) -> Result<Option<Value>, StoreError> {
        let key = HashMap::from([
            ("execution_id".to_string(), s(execution_id)),
            ("seq".to_string(), n(seq)),
        ]);
        self.get(table, key).await
    }

    async fn claim_delivery(
        &self,
        execution_id: &str,
        seq: u64,
        attempt: u32,
        shard: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError> {
        // A later attempt only while something is still pending (`pending_due` is removed once
        // every delivery is done) and once the previous attempt's lease (or its backoff) has run
        // out: two processes running the same record at once (a poller that died mid-batch and
        // came back) never both send, and one that read the step before the other recorded its
        // delivery does not send it again.
        let cond = if attempt <= 1 {
            "attribute_not_exists(#da) OR #da = :prev"
        } else {
            "#da = :prev AND #pd <= :now"
        };
        let r = self
            .client
            .update_item()
            .table_name(&self.steps_table)
            .key("execution_id", s(execution_id))
            .key("seq", n(seq))
            .update_expression("SET #da = :attempt, #pd = :due, #ps = :shard")
            .condition_expression(format!("attribute_exists(execution_id) AND ({cond})"))
            .expression_attribute_names("#da", "delivery_attempts")
            .expression_attribute_names("#pd", "pending_due")
            .expression_attribute_names("#ps", "pending_shard")
            .expression_attribute_values(":attempt", n(attempt))
            .expression_attribute_values(":prev", n(attempt.saturating_sub(1)))
            .expression_attribute_values(":due", n(lease_until_ms))
            .expression_attribute_values(":shard", s(shard));
        let r = if attempt <= 1 {
            r
        } else {
            r.expression_attribute_values(":now", n(chrono::Utc::now().timestamp_millis()))
        }
        .send()
        .await;
        outcome("steps claim", r)
    }

    async fn record_delivery(
        &self,
        execution_id: &str,
        seq: u64,
        attempt: u32,
        actions: &Value,
        pending_due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.steps_table)
            .key("execution_id", s(execution_id))
            .key("seq", n(seq))
            .expression_attribute_names("#a", "actions")
            .expression_attribute_names("#pd", "pending_due")
            .expression_attribute_values(":actions", av(actions)?);
        req = match pending_due_ms {
            Some(due) => req
                .update_expression("SET #a = :actions, #pd = :due")
                .expression_attribute_values(":due", n(due)),
            None => req
                .update_expression("SET #a = :actions REMOVE #pd, #ps, #ob, #wb")
                .expression_attribute_names("#ps", "pending_shard")
                .expression_attribute_names("#ob", "outbox")
                .expression_attribute_names("#wb", "webhook_body"),
        };
        req = if attempt == 0 {
            req.condition_expression("attribute_exists(execution_id)")
        } else {
            req.condition_expression("#da = :attempt")
                .expression_attribute_names("#da", "delivery_attempts")
                .expression_attribute_values(":attempt", n(attempt))
        };
        outcome("steps record", req.send().await)
    }

    async fn due_deliveries(
        &self,
        shard: &str,
        now_ms: i64,
        limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        self.query_index(
            &self.steps_table,
            "pending",
            ("pending_shard", shard),
            ("pending_due", n(now_ms)),
            limit,
        )
        .await
    }

    async fn running_before(
        &self,
        shard: &str,
        before: &str,
        limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        self.query_index(
            &self.executions_table,
            "running",
            ("running_shard", shard),
            ("started_at", s(before)),
            limit,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_smithy_types::body::SdkBody;

    fn service_error(code: &str) -> SdkError<PutItemError, HttpResponse> {
        let err = PutItemError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let status = aws_smithy_runtime_api::http::StatusCode::try_from(400).expect("status");
        SdkError::service_error(err, HttpResponse::new(status, SdkBody::empty()))
    }

    #[test]
    fn validation_errors_are_permanent_and_others_retry() {
        assert!(matches!(
            store_error("t", &service_error("ValidationException")),
            StoreError::Invalid(_)
        ));
        assert!(matches!(
            store_error(
                "t",
                &service_error("ProvisionedThroughputExceededException")
            ),
            StoreError::Transient(_)
        ));
    }
}
