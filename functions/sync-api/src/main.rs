//! Sync API Lambda (API Gateway HTTP API, payload v2): start an execution and wait for it, read,
//! list and cancel executions, dry-run a flow (SPEC section 5). The routes and their answers are
//! in [`api`]; inline executions run the orchestrator's own step loop ([`inline`]).
#![forbid(unsafe_code)]

mod api;
mod inline;
mod keys;
mod openapi;

use std::sync::Arc;

use lambda_http::{Request, service_fn};
use rulestream_aws::{AwsEffects, AwsFlowSource, Base, StateSealer};
use rulestream_core::chain::Chain;

fn main() -> Result<(), lambda_http::Error> {
    if std::env::args().nth(1).as_deref() == Some("--openapi") {
        // The API's OpenAPI 3.1 document (docs/openapi.json is this output).
        let doc = serde_json::to_string_pretty(&openapi::document())?;
        println!("{doc}");
        return Ok(());
    }
    rulestream_aws::run_function(run)
}

async fn run() -> Result<(), lambda_http::Error> {
    let Base {
        cfg,
        sdk,
        journal,
        http,
    } = Base::load().await?;
    let limiter = Arc::new(rulestream_aws::redis_from_config(&cfg, &sdk).await?);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let chain = Chain {
        flows: AwsFlowSource::new(cfg.clone(), &sdk, Arc::clone(&limiter)),
        journal: inline::Captured::new(journal),
        effects: AwsEffects::new(Arc::clone(&limiter), Arc::clone(&http), &sdk),
        deliveries: http,
        sealer: StateSealer::from_secret(&sdk, &cfg.state_key_secret),
        settings: cfg.chain_settings(),
    };
    let app = Arc::new(api::App {
        keys: keys::ApiKeys::new(ddb.clone(), &cfg.clients_table),
        chain,
        ddb,
        cfg,
    });
    let metrics = Arc::new(rulestream_aws::metrics::Metrics::init());
    lambda_http::run(service_fn(move |req: Request| {
        let (app, metrics) = (Arc::clone(&app), Arc::clone(&metrics));
        async move {
            let out = app.handle(req).await;
            metrics.flush();
            Ok::<_, lambda_http::Error>(out)
        }
    }))
    .await
}
