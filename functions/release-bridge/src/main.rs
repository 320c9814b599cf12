//! Release bridge Lambda: the MSK event source of the `<prefix>.releases` topic. Each message
//! (SPEC section 3) changes a flow's release with a conditional write on its generation, is
//! recorded in the audit, and moves the Redis config epoch so every warm orchestrator reloads on
//! its next batch.
//!
//! Delivery is at least once and in order per partition (a flow's messages share one). So:
//! - a message already applied (the release names it, or the audit has it applied) is not applied
//!   again; a duplicate or stale one (made from another generation) is a recorded no-op;
//! - a malformed message, or one naming a missing or invalid version, is rejected with an audit
//!   record and acknowledged: it is never retried, and the previous release keeps serving;
//! - only a store that cannot be reached fails the invocation, and the batch is redelivered
//!   (which the two rules above make harmless).
#![forbid(unsafe_code)]

mod bridge;

use std::sync::Arc;

use aws_lambda_events::event::kafka::KafkaEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use rulestream_aws::releases::ReleaseStore;

fn main() -> Result<(), lambda_runtime::Error> {
    rulestream_aws::run_function(run)
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let base = rulestream_aws::Base::load().await?;
    let redis = rulestream_aws::redis_from_config(&base.cfg, &base.sdk).await?;
    let bridge = Arc::new(bridge::Bridge {
        store: ReleaseStore::new(&base.sdk, &base.cfg),
        redis,
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KafkaEvent>| {
        let bridge = Arc::clone(&bridge);
        async move { bridge.handle(event.payload).await }
    }))
    .await
}
