//! The step engine: a flow version compiled once ([`CompiledFlow`]), and a [`Session`] that runs
//! one rule at a time against an execution's state, giving its outcome, transition, `set` values,
//! actions and explain record. [`run`] loops over it for dry-runs and inline executions; the
//! orchestrator calls [`Session::step`] once per trigger row.
//!
//! - [`compile`](CompiledFlow::compile): a flow version made ready to run, once;
//! - `session`: one execution, one rule at a time;
//! - `trace`: what each step records, and what a trace may show.

mod compile;
mod session;
mod trace;

pub use compile::{CompileIssue, CompiledFlow};
pub use session::{Session, gray_key_value, run};
pub use trace::{
    CLIENT_DATA, EXPLAIN_VALUE_CHARS, Explain, Next, PlannedAction, RunReport, StepRecord,
    StepResult, reads_client, redact_url, sanitize_explain, shown_value,
};

pub use crate::execution::{ExecutionMeta, RunState};
pub use crate::model::{ERROR, LIMITED, SKIPPED};
