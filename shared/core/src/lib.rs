//! rulestream core: the pure heart of the rules engine.
//!
//! - [`model`]: the flow file and catalog formats, and the JSON Schema derived from them;
//! - [`checks`]: the checks of single pieces (a condition, an action, a master rule) shared by
//!   compiling, validating and loading the catalog;
//! - [`validate`]: every problem of a flow in one pass, each with its JSON path;
//! - [`expr`] and [`conditions`]: CEL expressions and JSON conditions; [`fast`]: the common
//!   subset of CEL evaluated directly over JSON, `cel` answering the rest;
//! - [`catalog`]: master rules by id and version;
//! - [`gray`]: the stable gray-release bucket;
//! - [`token_bucket`]: rate-limit maths;
//! - [`engine`]: compiling a flow version and running it one step at a time;
//! - [`ports`]: what the engine needs from outside (rate limiter, external rules, stores);
//! - [`chain`]: the step loop every function runs (load, decide once, chain, deliver) and the sweep.
//!
//! No AWS SDK, Redis or Lambda runtime here: adapters live in `rulestream-aws`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod catalog;
pub mod chain;
pub mod checks;
pub mod conditions;
pub mod engine;
pub mod execution;
pub mod expr;
pub mod fast;
pub mod gray;
pub mod model;
pub mod ports;
pub mod release;
pub mod token_bucket;
pub mod validate;

pub use catalog::Catalog;
pub use engine::{
    CompiledFlow, ExecutionMeta, Next, RunReport, RunState, Session, StepRecord, run,
};
pub use model::{Flow, MasterRule};
pub use ports::{DryRun, EffectError, Effects, Mocked};
pub use validate::{Finding, Severity, Validation, validate_str, validate_value};
