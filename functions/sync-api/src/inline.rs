//! The journal of inline executions: everything goes to DynamoDB as the chain writes it, except
//! the next trigger rows, which are kept here so the API runs them in the same invocation (or
//! writes them for real to hand the rest of the execution to the chain).

use std::collections::HashMap;
use std::sync::Mutex;

use rulestream_aws::DynamoJournal;
use rulestream_core::ports::{Journal, StoreError};
use serde_json::Value;

/// [`DynamoJournal`] with trigger rows captured per execution.
pub struct Captured {
    /// The real journal.
    pub inner: DynamoJournal,
    rows: Mutex<HashMap<String, Vec<(String, Value)>>>,
}

impl Captured {
    /// Wraps `inner`.
    pub fn new(inner: DynamoJournal) -> Captured {
        Captured {
            inner,
            rows: Mutex::new(HashMap::new()),
        }
    }

    /// The rows the chain wrote for `execution_id` since the last call (table, row).
    pub fn take(&self, execution_id: &str) -> Vec<(String, Value)> {
        self.rows
            .lock()
            .map(|mut r| r.remove(execution_id).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Journal for Captured {
    async fn start(&self, summary: &Value) -> Result<bool, StoreError> {
        self.inner.start(summary).await
    }
    async fn summary(&self, execution_id: &str) -> Result<Option<Value>, StoreError> {
        self.inner.summary(execution_id).await
    }
    async fn finish(&self, execution_id: &str, finish: &Value) -> Result<bool, StoreError> {
        self.inner.finish(execution_id, finish).await
    }
    async fn put_step(&self, step: &Value) -> Result<bool, StoreError> {
        self.inner.put_step(step).await
    }
    async fn step(&self, execution_id: &str, seq: u64) -> Result<Option<Value>, StoreError> {
        self.inner.step(execution_id, seq).await
    }
    async fn steps(&self, execution_id: &str) -> Result<Vec<Value>, StoreError> {
        self.inner.steps(execution_id).await
    }
    async fn last_step(&self, execution_id: &str) -> Result<Option<Value>, StoreError> {
        self.inner.last_step(execution_id).await
    }
    async fn put_row(&self, table: &str, row: &Value) -> Result<bool, StoreError> {
        let id = row
            .get("execution_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.rows
            .lock()
            .map_err(|_| StoreError::Transient("inline rows lock poisoned".into()))?
            .entry(id)
            .or_default()
            .push((table.to_string(), row.clone()));
        Ok(true)
    }
    async fn row(
        &self,
        table: &str,
        execution_id: &str,
        seq: u64,
    ) -> Result<Option<Value>, StoreError> {
        self.inner.row(table, execution_id, seq).await
    }
    async fn claim_delivery(
        &self,
        execution_id: &str,
        seq: u64,
        attempt: u32,
        shard: &str,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .claim_delivery(execution_id, seq, attempt, shard, lease_until_ms)
            .await
    }
    async fn record_delivery(
        &self,
        execution_id: &str,
        seq: u64,
        attempt: u32,
        actions: &Value,
        pending_due_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.inner
            .record_delivery(execution_id, seq, attempt, actions, pending_due_ms)
            .await
    }
    async fn due_deliveries(
        &self,
        shard: &str,
        now_ms: i64,
        limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        self.inner.due_deliveries(shard, now_ms, limit).await
    }
    async fn running_before(
        &self,
        shard: &str,
        before: &str,
        limit: i32,
    ) -> Result<Vec<Value>, StoreError> {
        self.inner.running_before(shard, before, limit).await
    }
}
