//! Sweeper Lambda (scheduled, EventBridge `rate(1 minute)`): sends the deliveries that are due
//! again and ends as `FAILED` every execution with no progress for `RULESTREAM_STALL_SECS`.
//! Every write it makes is conditional, so two sweeps at once (or a sweep racing the
//! orchestrator) change nothing twice. The work itself is [`rulestream_core::chain::sweep`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use rulestream_aws::{Config, DynamoJournal, Egress, Http};
use serde_json::Value;

fn main() -> Result<(), lambda_runtime::Error> {
    rulestream_aws::run_function(run)
}

async fn run() -> Result<(), lambda_runtime::Error> {
    rulestream_aws::init_logging();
    let cfg = Config::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let journal = Arc::new(DynamoJournal::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &cfg.executions_table,
        &cfg.steps_table,
    ));
    let http = Arc::new(Http::new(&sdk, Egress::parse(cfg.egress_allow.as_deref()))?);
    let settings = Arc::new(cfg.chain_settings());
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let (journal, http, settings) = (
            Arc::clone(&journal),
            Arc::clone(&http),
            Arc::clone(&settings),
        );
        async move {
            let report = rulestream_core::chain::sweep(&*journal, &*http, &settings).await;
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
