//! Orchestrator Lambda: wires the adapters at cold start and hands each stream batch to
//! [`handler::handle`].
#![forbid(unsafe_code)]

mod handler;

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use lambda_runtime::{LambdaEvent, service_fn};
use rulestream_aws::{AwsEffects, AwsFlowSource, Base, StateSealer};
use rulestream_core::chain::Chain;

fn main() -> Result<(), lambda_runtime::Error> {
    rulestream_aws::run_function(run)
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let Base {
        cfg,
        sdk,
        journal,
        http,
    } = Base::load().await?;
    let limiter = Arc::new(rulestream_aws::redis_from_config(&cfg, &sdk).await?);
    let chain = Arc::new(Chain {
        flows: AwsFlowSource::new(cfg.clone(), &sdk, Arc::clone(&limiter)),
        journal,
        effects: AwsEffects::new(Arc::clone(&limiter), Arc::clone(&http), &sdk),
        deliveries: http,
        sealer: StateSealer::from_secret(&sdk, &cfg.state_key_secret),
        settings: cfg.chain_settings(),
    });
    let metrics = Arc::new(rulestream_aws::metrics::Metrics::init());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let (chain, metrics) = (Arc::clone(&chain), Arc::clone(&metrics));
        async move {
            let out = handler::handle(&chain, event.payload).await;
            metrics.flush();
            Ok::<DynamoDbEventResponse, lambda_runtime::Error>(out)
        }
    }))
    .await
}
