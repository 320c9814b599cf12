//! The orchestrator's handler: a DynamoDB stream batch in, batch item failures out. Each INSERT
//! record is one step of one execution, run by the shared step loop
//! ([`rulestream_core::chain::Chain`]); MODIFY and REMOVE records are ignored. Records run
//! concurrently; only those that failed for a reason a retry may fix are reported.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use rulestream_core::chain::{Chain, Retry};
use rulestream_core::ports::{Deliveries, Effects, FlowSource, Journal, Sealer};
use serde_json::Value;

/// The table a stream record came from: `arn:aws:dynamodb:r:a:table/NAME/stream/...`.
pub fn table_of(arn: Option<&str>) -> Option<String> {
    let rest = arn?.split_once(":table/")?.1;
    Some(rest.split('/').next()?.to_string())
}

/// Handles a batch: the response lists the records to retry.
pub async fn handle<F, J, E, D, S>(
    chain: &Chain<F, J, E, D, S>,
    event: Event,
) -> DynamoDbEventResponse
where
    F: FlowSource,
    J: Journal,
    E: Effects,
    D: Deliveries,
    S: Sealer,
{
    let run = |rec: &EventRecord| {
        // INSERT only: MODIFY and REMOVE (TTL) records are no steps.
        let image = (rec.event_name == "INSERT")
            .then(|| serde_dynamo::from_item::<_, Value>(rec.change.new_image.clone()));
        let table = table_of(rec.event_source_arn.as_deref());
        async move {
            match image {
                None => Ok(()),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "undecodable trigger row dropped");
                    Ok(())
                }
                Some(Ok(image)) => chain.run_row(table.as_deref(), image).await,
            }
        }
    };
    let results = futures::future::join_all(event.records.iter().map(run)).await;
    let mut resp = DynamoDbEventResponse::default();
    for (rec, res) in event.records.iter().zip(results) {
        if let Err(Retry(why)) = res {
            tracing::warn!(
                sequence_number = rec.change.sequence_number.as_deref().unwrap_or(""),
                error = %why,
                "record will be retried"
            );
            let mut f = DynamoDbBatchItemFailure::default();
            f.item_identifier = rec.change.sequence_number.clone();
            resp.batch_item_failures.push(f);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_come_from_the_stream_arn() {
        assert_eq!(
            table_of(Some(
                "arn:aws:dynamodb:us-east-1:1:table/rs-trigger/stream/2026-01-01T00:00:00.000"
            )),
            Some("rs-trigger".into())
        );
        assert_eq!(table_of(Some("nonsense")), None);
    }
}
