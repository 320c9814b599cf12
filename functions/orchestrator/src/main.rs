//! Orchestrator Lambda: wires the adapters at cold start and hands each stream batch to
//! [`handler::Handler`].
#![forbid(unsafe_code)]

mod handler;

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use lambda_runtime::{LambdaEvent, service_fn};
use rulestream_aws::{
    AwsEffects, AwsFlowSource, Config, DynamoExecutions, Egress, Http, RedisLimiter,
};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .init();
    let cfg = Config::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let limiter = Arc::new(RedisLimiter::new(cfg.redis_url.as_deref(), &cfg.prefix)?);
    let http = Arc::new(Http::new(&sdk, Egress::parse(cfg.egress_allow.as_deref()))?);
    let handler = Arc::new(handler::Handler {
        flows: AwsFlowSource::new(cfg.clone(), &sdk, Arc::clone(&limiter)),
        store: DynamoExecutions::new(aws_sdk_dynamodb::Client::new(&sdk), &cfg.executions_table),
        effects: AwsEffects::new(Arc::clone(&limiter), Arc::clone(&http)),
        ledger: limiter,
        deliveries: http,
        default_trigger_table: cfg.trigger_table.clone(),
        trigger_ttl_secs: i64::try_from(cfg.trigger_ttl.as_secs()).unwrap_or(i64::MAX),
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let handler = Arc::clone(&handler);
        async move {
            Ok::<DynamoDbEventResponse, lambda_runtime::Error>(handler.handle(event.payload).await)
        }
    }))
    .await
}
