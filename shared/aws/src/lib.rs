//! rulestream's adapters: the core's ports implemented on AWS (DynamoDB, S3, STS, Secrets
//! Manager) and Redis. Endpoints come from the SDK's own `AWS_ENDPOINT_URL*` settings, so the
//! same code runs on AWS and on the local stack.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cache;
pub mod config;
pub mod dynamo;
pub mod effects;
pub mod flows;
pub mod limiter;
pub mod secrets;
pub mod webhooks;

pub use config::Config;
pub use dynamo::DynamoExecutions;
pub use effects::AwsEffects;
pub use flows::AwsFlowSource;
pub use limiter::RedisLimiter;
pub use webhooks::{Egress, Http};
