//! An example `lambda` master rule (SPEC section 2), written in Rust: it receives
//! `{input, ctx, client, params, execution}` and answers `{"outcome", "set"}`.
//!
//! The rule: `score = input.amount / params.threshold` (0 when either is missing); outcome
//! `"high"` when the score is at least 1, else `"low"`; `set: {"score": score}`.
//!
//! For tests of the caller's error handling, `params.behave` makes it misbehave on purpose:
//! `"sleep"` (answers after `params.sleep_ms`, default 5 s), `"garbage"` (an answer that is not a
//! rule answer), `"fail"` (a function error).
#![forbid(unsafe_code)]

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

/// The rule's answer to one request.
fn decide(req: &Value) -> Value {
    let amount = req["input"]["amount"].as_f64().unwrap_or(0.0);
    let threshold = req["params"]["threshold"].as_f64().unwrap_or(0.0);
    let score = if threshold > 0.0 {
        amount / threshold
    } else {
        0.0
    };
    let outcome = if score >= 1.0 { "high" } else { "low" };
    json!({"outcome": outcome, "set": {"score": score}})
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let req = event.payload;
    match req["params"]["behave"].as_str() {
        Some("sleep") => {
            let ms = req["params"]["sleep_ms"].as_u64().unwrap_or(5_000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(decide(&req))
        }
        Some("garbage") => Ok(json!("not a rule answer")),
        Some("fail") => Err("asked to fail".into()),
        _ => Ok(decide(&req)),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_against_the_threshold() {
        let r = decide(&json!({"input": {"amount": 300}, "params": {"threshold": 100}}));
        assert_eq!(r, json!({"outcome": "high", "set": {"score": 3.0}}));
        let r = decide(&json!({"input": {"amount": 50}, "params": {"threshold": 100}}));
        assert_eq!(r, json!({"outcome": "low", "set": {"score": 0.5}}));
        let r = decide(&json!({"input": {}, "params": {}}));
        assert_eq!(r["outcome"], "low");
    }
}
