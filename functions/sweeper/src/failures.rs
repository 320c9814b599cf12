//! The orchestrator's on-failure destination: for each batch the event source mapping gave up on,
//! AWS puts an invocation record in the SQS queue — metadata only (shard, first and last sequence
//! number, why), never the records. The sweeper reads the records back from the trigger stream and
//! ends each execution whose step will now never run `FAILED`, naming the step and the cause
//! ([`rulestream_core::chain::end_at`]), instead of waiting for the stall bound.

use aws_sdk_dynamodbstreams::types::{AttributeValue, ShardIteratorType};
use rulestream_aws::DynamoJournal;
use rulestream_core::chain::{Settings, end_at};
use rulestream_core::ports::Journal;
use serde_json::Value;

/// The queue and the clients to drain it.
pub struct FailureQueue {
    sqs: aws_sdk_sqs::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    queue_url: String,
}

/// How many messages one sweep reads at most (10 per receive).
const MAX_MESSAGES: usize = 100;

impl FailureQueue {
    /// The queue named by `RULESTREAM_FAILURE_QUEUE_URL`, else `<prefix>-orchestrator-dlq` (its
    /// URL asked of SQS); `None` when there is none.
    pub async fn connect(sdk: &aws_config::SdkConfig, prefix: &str) -> Option<FailureQueue> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queue_url = match std::env::var("RULESTREAM_FAILURE_QUEUE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                let name = format!("{prefix}-orchestrator-dlq");
                match sqs.get_queue_url().queue_name(&name).send().await {
                    Ok(out) => out.queue_url?.to_string(),
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "no on-failure queue: given-up records end by the stall rule only");
                        return None;
                    }
                }
            }
        };
        Some(FailureQueue {
            sqs,
            streams: aws_sdk_dynamodbstreams::Client::new(sdk),
            queue_url,
        })
    }

    /// Reads up to [`MAX_MESSAGES`] invocation records; returns how many executions it ended and
    /// how many errors it met. A message is deleted once its records were handled; one that
    /// failed stays, to be read again after its visibility timeout.
    pub async fn drain(&self, journal: &DynamoJournal, settings: &Settings) -> (usize, usize) {
        let (mut ended, mut errors, mut read) = (0, 0, 0);
        while read < MAX_MESSAGES {
            let out = match self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot read the on-failure queue");
                    return (ended, errors + 1);
                }
            };
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            read += messages.len();
            for m in messages {
                let body: Value = m
                    .body()
                    .and_then(|b| serde_json::from_str(b).ok())
                    .unwrap_or(Value::Null);
                match self.handle(&body, journal, settings).await {
                    Ok(n) => {
                        ended += n;
                        if let Some(h) = m.receipt_handle() {
                            let _ = self
                                .sqs
                                .delete_message()
                                .queue_url(&self.queue_url)
                                .receipt_handle(h)
                                .send()
                                .await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot handle an on-failure record; it will be read again");
                        errors += 1;
                    }
                }
            }
        }
        (ended, errors)
    }

    /// Ends the executions of the records one invocation record names.
    async fn handle(
        &self,
        msg: &Value,
        journal: &DynamoJournal,
        settings: &Settings,
    ) -> Result<usize, String> {
        let info = &msg["DDBStreamBatchInfo"];
        let (Some(arn), Some(shard), Some(first), Some(last)) = (
            info["streamArn"].as_str(),
            info["shardId"].as_str(),
            info["startSequenceNumber"].as_str(),
            info["endSequenceNumber"].as_str(),
        ) else {
            // Not an invocation record of a stream: nothing to do with it.
            tracing::warn!("on-failure message without DDBStreamBatchInfo: dropped");
            return Ok(0);
        };
        let condition = msg["requestContext"]["condition"]
            .as_str()
            .unwrap_or("given up")
            .to_string();
        let attempts = msg["requestContext"]["approximateInvokeCount"]
            .as_u64()
            .unwrap_or(0);
        let mut iterator = self
            .streams
            .get_shard_iterator()
            .stream_arn(arn)
            .shard_id(shard)
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(first)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "stream iterator: {}",
                    aws_sdk_dynamodbstreams::error::DisplayErrorContext(&e)
                )
            })?
            .shard_iterator;
        let mut ended = 0;
        let mut empty_reads = 0;
        while let Some(it) = iterator.take() {
            let page = self
                .streams
                .get_records()
                .shard_iterator(it)
                .limit(100)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "stream records: {}",
                        aws_sdk_dynamodbstreams::error::DisplayErrorContext(&e)
                    )
                })?;
            let records = page.records.unwrap_or_default();
            if records.is_empty() {
                empty_reads += 1;
                if empty_reads > 3 {
                    break;
                }
            }
            for r in records {
                let Some(d) = r.dynamodb else { continue };
                let seq_no = d.sequence_number.clone().unwrap_or_default();
                if later(&seq_no, last) {
                    return Ok(ended);
                }
                let image = d.new_image.unwrap_or_default();
                let (Some(AttributeValue::S(id)), Some(AttributeValue::N(seq))) =
                    (image.get("execution_id"), image.get("seq"))
                else {
                    continue;
                };
                let Ok(seq) = seq.parse::<u64>() else {
                    continue;
                };
                // A batch that failed as a whole lands every record of it here, also those
                // whose step was decided. A decided step says whether the chain went on.
                let decided = journal
                    .step(id, seq)
                    .await
                    .map_err(|e| format!("reading step {seq} of {id}: {e}"))?
                    .filter(|s| s.get("stop").is_none());
                let why = if let Some(step) = &decided {
                    let last = journal
                        .last_step(id)
                        .await
                        .map_err(|e| format!("reading the steps of {id}: {e}"))?
                        .and_then(|l| l.get("seq").and_then(Value::as_u64));
                    let next_row = journal
                        .row(&settings.trigger_table, id, seq + 1)
                        .await
                        .map_err(|e| format!("reading row {} of {id}: {e}", seq + 1))?;
                    let ended = step.pointer("/next/kind").and_then(Value::as_str) == Some("done");
                    if last.is_some_and(|l| l > seq) || next_row.is_some() || ended {
                        // It ran, and the chain went on (or the step ended the execution:
                        // the stall sweep finishes one whose summary was never written).
                        tracing::info!(execution_id = %id, seq, "on-failure record of a step that ran: nothing to end");
                        continue;
                    }
                    let next = match step.pointer("/next/rule") {
                        Some(Value::String(rule)) => format!(" (rule `{rule}`)"),
                        _ => String::new(),
                    };
                    format!(
                        "the record of step {seq} (rule `{}`) reached the on-failure destination ({condition}, {attempts} invocations) after its step was decided: the next step{next} never ran",
                        step.get("rule").and_then(Value::as_str).unwrap_or("?")
                    )
                } else {
                    // The rule that never ran: where the step before it said to go.
                    let before = match seq.checked_sub(1) {
                        Some(prev) => journal.step(id, prev).await.ok().flatten(),
                        None => None,
                    };
                    let what = match before.as_ref().and_then(|s| s.pointer("/next/rule")) {
                        Some(Value::String(rule)) => format!("rule `{rule}` (step {seq})"),
                        _ if seq == 0 => "the start rule (step 0)".to_string(),
                        _ => format!("step {seq}"),
                    };
                    format!(
                        "the record of {what} reached the on-failure destination ({condition}, {attempts} invocations): it never ran"
                    )
                };
                match end_at(journal, settings, id, seq, &why).await {
                    Ok(true) => ended += 1,
                    Ok(false) => {}
                    Err(e) => return Err(format!("ending {id}: {e}")),
                }
            }
            iterator = page.next_shard_iterator;
        }
        Ok(ended)
    }
}

/// Whether stream sequence number `a` comes after `b` (decimal strings of any length).
fn later(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) > (b.len(), b)
}

#[cfg(test)]
mod tests {
    use super::later;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert!(later("000000000000000000076", "000000000000000000075"));
        assert!(later("1000", "999"));
        assert!(!later("75", "000075"));
        assert!(!later("74", "75"));
    }
}
