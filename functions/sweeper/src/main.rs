//! Sweeper Lambda (scheduled, EventBridge `rate(1 minute)`): sends the deliveries that are due
//! again, ends as `FAILED` every execution with no progress for `RULESTREAM_STALL_SECS`, and
//! judges release guards ([`guard`]).
//! Every write it makes is conditional, so two sweeps at once (or a sweep racing the
//! orchestrator) change nothing twice. The work itself is [`rulestream_core::chain::sweep`], after
//! draining the orchestrator's on-failure queue ([`failures`]).
#![forbid(unsafe_code)]

mod failures;
mod guard;

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
    let releases = Arc::new(rulestream_aws::releases::ReleaseStore::new(
        &base.sdk, &base.cfg,
    ));
    let metrics = Arc::new(rulestream_aws::metrics::Metrics::init());
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let (base, settings, failures, releases, metrics) = (
            Arc::clone(&base),
            Arc::clone(&settings),
            Arc::clone(&failures),
            Arc::clone(&releases),
            Arc::clone(&metrics),
        );
        async move {
            let (given_up, queue_errors) = match failures.as_ref() {
                Some(q) => q.drain(&base.journal, &settings).await,
                None => (0, 0),
            };
            let report = rulestream_core::chain::sweep(&base.journal, &*base.http, &settings).await;
            let guards = guard::check(
                &releases,
                base.cfg.kafka_brokers.as_deref(),
                &base.cfg.releases_topic,
            )
            .await;
            tracing::info!(
                deliveries = report.deliveries,
                stalled = report.stalled,
                given_up,
                guards_checked = guards.checked,
                rolled_back = guards.rolled_back,
                errors = report.errors + queue_errors + guards.errors,
                "sweep"
            );
            metrics.flush();
            let mut out = serde_json::to_value(&report).unwrap_or(Value::Null);
            out["given_up"] = serde_json::json!(given_up);
            out["rolled_back"] = serde_json::json!(guards.rolled_back);
            if let Some(e) = out.get_mut("errors") {
                *e = serde_json::json!(report.errors + queue_errors + guards.errors);
            }
            Ok::<Value, lambda_runtime::Error>(out)
        }
    }))
    .await
}
