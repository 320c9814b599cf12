//! Sweeper Lambda (scheduled, EventBridge `rate(1 minute)`): sends the deliveries that are due
//! again and ends as `FAILED` every execution with no progress for `RULESTREAM_STALL_SECS`.
//! Every write it makes is conditional, so two sweeps at once (or a sweep racing the
//! orchestrator) change nothing twice. The work itself is [`rulestream_core::chain::sweep`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use rulestream_aws::Base;
use serde_json::Value;

fn main() -> Result<(), lambda_runtime::Error> {
    rulestream_aws::run_function(run)
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let base = Arc::new(Base::load().await?);
    let settings = Arc::new(base.cfg.chain_settings());
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let (base, settings) = (Arc::clone(&base), Arc::clone(&settings));
        async move {
            let report = rulestream_core::chain::sweep(&base.journal, &*base.http, &settings).await;
            tracing::info!(
                deliveries = report.deliveries,
                stalled = report.stalled,
                errors = report.errors,
                "sweep"
            );
            Ok::<Value, lambda_runtime::Error>(serde_json::to_value(report).unwrap_or(Value::Null))
        }
    }))
    .await
}
