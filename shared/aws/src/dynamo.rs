//! The executions and trigger tables: one step committed in one conditional write.
//!
//! Layout (SPEC section 3). The executions item keeps `seq` as the seq of the next row to run;
//! every commit is conditional on it, so a redelivered record (same seq) changes nothing. A
//! continuing step is one `TransactWriteItems` (append the trace line + put row seq+1, itself
//! conditional on not existing); a final step is one conditional write of the executions item.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use rulestream_core::execution::{StepCommit, Then, TriggerRow};
use rulestream_core::ports::{ExecutionStore, StoreError};
use serde_json::{Value, json};
use std::collections::HashMap;

/// Executions and trigger rows on DynamoDB.
#[derive(Clone)]
pub struct DynamoExecutions {
    client: Client,
    executions_table: String,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoExecutions {
    /// An adapter writing to `executions_table` (the trigger table comes with each commit).
    pub fn new(client: Client, executions_table: &str) -> DynamoExecutions {
        DynamoExecutions {
            client,
            executions_table: executions_table.to_string(),
        }
    }
}

fn av<T: serde::Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(v)
        .map_err(|e| StoreError::Invalid(format!("cannot encode: {e}")))
}

/// Encodes a trigger row.
pub fn trigger_item(row: &TriggerRow) -> Result<Item, StoreError> {
    serde_dynamo::to_item(row)
        .map_err(|e| StoreError::Invalid(format!("cannot encode trigger row: {e}")))
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The full executions item written at seq 0.
fn first_item(c: &StepCommit) -> Result<Item, StoreError> {
    let h = &c.header;
    let trace: Vec<Value> = c
        .record
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    let mut doc = json!({
        "execution_id": h.execution_id,
        "client_id": h.client_id,
        "flow_id": h.flow_id,
        "flow_version": h.flow_version,
        "status": "RUNNING",
        "step": u64::from(c.record.is_some()),
        "seq": c.seq + 1,
        "started_at": h.started_at,
        "updated_at": c.now,
        "tags": [],
        "trace": trace,
    });
    if let Some(r) = &h.rerun_of {
        doc["rerun_of"] = json!(r);
    }
    if let Then::Finish(f) = &c.then {
        doc["status"] = json!(f.status);
        doc["finished_at"] = json!(c.now);
        doc["output"] = Value::Object(f.output.clone());
        doc["tags"] = json!(f.tags);
        if let Some(r) = &f.reason {
            doc["reason"] = json!(r);
        }
        if let Some(e) = &f.error {
            doc["error"] = json!(e);
        }
        if let Some(r) = &f.route {
            doc["route"] = json!(r);
        }
    }
    serde_dynamo::to_item(doc)
        .map_err(|e| StoreError::Invalid(format!("cannot encode execution: {e}")))
}

/// The update of an existing executions item for step `c.seq`.
fn step_update(c: &StepCommit) -> Result<(String, HashMap<String, String>, Item), StoreError> {
    let mut names = HashMap::from([
        ("#trace".to_string(), "trace".to_string()),
        ("#seq".to_string(), "seq".to_string()),
        ("#step".to_string(), "step".to_string()),
        ("#updated".to_string(), "updated_at".to_string()),
    ]);
    let trace: Vec<Value> = c
        .record
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    let mut values: Item = HashMap::from([
        (":steps".to_string(), av(&trace)?),
        (":empty".to_string(), AttributeValue::L(vec![])),
        (":next".to_string(), n(c.seq + 1)),
        (":one".to_string(), n(u64::from(c.record.is_some()))),
        (":zero".to_string(), n(0)),
        (":now".to_string(), s(&c.now)),
    ]);
    let mut set = vec![
        "#trace = list_append(if_not_exists(#trace, :empty), :steps)".to_string(),
        "#seq = :next".to_string(),
        "#step = if_not_exists(#step, :zero) + :one".to_string(),
        "#updated = :now".to_string(),
    ];
    if let Then::Finish(f) = &c.then {
        for (name, attr, value) in [
            ("#status", "status", Some(s(&f.status))),
            ("#finished", "finished_at", Some(s(&c.now))),
            ("#output", "output", Some(av(&f.output)?)),
            ("#tags", "tags", Some(av(&f.tags)?)),
            ("#reason", "reason", f.reason.as_deref().map(s)),
            ("#error", "error", f.error.as_deref().map(s)),
            ("#route", "route", f.route.as_deref().map(s)),
        ] {
            if let Some(v) = value {
                let placeholder = format!(":{attr}");
                names.insert(name.to_string(), attr.to_string());
                values.insert(placeholder.clone(), v);
                set.push(format!("{name} = {placeholder}"));
            }
        }
    }
    Ok((format!("SET {}", set.join(", ")), names, values))
}

/// A failed call: a `ValidationException` (e.g. an item over 400 KB) will fail again, so it is
/// `Invalid`; anything else may pass on a retry.
pub(crate) fn store_error<E, R>(what: &str, e: &SdkError<E, R>) -> StoreError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    let msg = format!(
        "{what}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(e)
    );
    if e.as_service_error().and_then(|se| se.code()) == Some("ValidationException") {
        StoreError::Invalid(msg)
    } else {
        StoreError::Transient(msg)
    }
}

fn is_conditional_failure(debug: &str) -> bool {
    debug.contains("ConditionalCheckFailed")
}

impl ExecutionStore for DynamoExecutions {
    async fn commit(&self, trigger_table: &str, c: &StepCommit) -> Result<bool, StoreError> {
        let key = HashMap::from([("execution_id".to_string(), s(&c.header.execution_id))]);
        let invalid = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Invalid(e.to_string());
        // The execution's own write: created at seq 0, else advanced from `seq`.
        let exec_write = if c.seq == 0 {
            let put = Put::builder()
                .table_name(&self.executions_table)
                .set_item(Some(first_item(c)?))
                .condition_expression("attribute_not_exists(execution_id)")
                .build()
                .map_err(invalid)?;
            TransactWriteItem::builder().put(put).build()
        } else {
            let (expr, mut names, mut values) = step_update(c)?;
            values.insert(":expect".into(), n(c.seq));
            names.insert("#seqc".into(), "seq".into());
            let upd = Update::builder()
                .table_name(&self.executions_table)
                .set_key(Some(key))
                .update_expression(expr)
                .condition_expression("#seqc = :expect")
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .build()
                .map_err(invalid)?;
            TransactWriteItem::builder().update(upd).build()
        };
        let Then::Continue(row) = &c.then else {
            // A final step: one conditional write.
            let r = if let Some(put) = exec_write.put() {
                self.client
                    .put_item()
                    .table_name(put.table_name())
                    .set_item(Some(put.item().clone()))
                    .set_condition_expression(put.condition_expression().map(str::to_string))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| (format!("{e:?}"), store_error("dynamodb", &e)))
            } else if let Some(u) = exec_write.update() {
                self.client
                    .update_item()
                    .table_name(u.table_name())
                    .set_key(Some(u.key().clone()))
                    .update_expression(u.update_expression())
                    .set_condition_expression(u.condition_expression().map(str::to_string))
                    .set_expression_attribute_names(u.expression_attribute_names().cloned())
                    .set_expression_attribute_values(u.expression_attribute_values().cloned())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| (format!("{e:?}"), store_error("dynamodb", &e)))
            } else {
                Ok(())
            };
            return match r {
                Ok(()) => Ok(true),
                Err((debug, _)) if is_conditional_failure(&debug) => Ok(false),
                Err((_, e)) => Err(e),
            };
        };
        let row_put = Put::builder()
            .table_name(trigger_table)
            .set_item(Some(trigger_item(row)?))
            .condition_expression("attribute_not_exists(execution_id)")
            .build()
            .map_err(invalid)?;
        let items = vec![
            exec_write,
            TransactWriteItem::builder().put(row_put).build(),
        ];
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&format!("{e:?}")) => Ok(false),
            Err(e) => Err(store_error("dynamodb", &e)),
        }
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
