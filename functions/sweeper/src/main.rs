//! Sweeper Lambda (scheduled, EventBridge `rate(1 minute)`): sends the deliveries that are due
//! again and ends as `FAILED` every execution with no progress for `RULESTREAM_STALL_SECS`.
//! Every write it makes is conditional, so two sweeps at once (or a sweep racing the
//! orchestrator) change nothing twice. The work itself is [`rulestream_core::chain::sweep`], after
//! draining the orchestrator's on-failure queue ([`failures`]).
#![forbid(unsafe_code)]

mod failures;

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
    let failures = Arc::new(failures::FailureQueue::connect(&base.sdk, &base.cfg.prefix).await);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let (base, settings, failures) = (
            Arc::clone(&base),
            Arc::clone(&settings),
            Arc::clone(&failures),
        );
        async move {
            let (given_up, queue_errors) = match failures.as_ref() {
                Some(q) => q.drain(&base.journal, &settings).await,
                None => (0, 0),
            };
            let report = rulestream_core::chain::sweep(&base.journal, &*base.http, &settings).await;
            tracing::info!(
                deliveries = report.deliveries,
                stalled = report.stalled,
                given_up,
                errors = report.errors + queue_errors,
                "sweep"
            );
            let mut out = serde_json::to_value(&report).unwrap_or(Value::Null);
            out["given_up"] = serde_json::json!(given_up);
            if let Some(e) = out.get_mut("errors") {
                *e = serde_json::json!(report.errors + queue_errors);
            }
            Ok::<Value, lambda_runtime::Error>(out)
        }
    }))
    .await
}
