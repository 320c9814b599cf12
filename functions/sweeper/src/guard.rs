//! Release guards (SPEC section 4), judged on the sweeper's schedule, off the orchestrator's hot
//! path: for every flow whose candidate carries a guard, the executions started since the candidate
//! was published are counted by version from the executions index (so they count wherever they
//! ended: orchestrator, API or sweeper), and when the candidate's `FAILED` share exceeds stable's
//! by more than the guard's delta, a `rollback` message goes through the releases topic, so the
//! bridge applies and audits it like a manual one.
//!
//! Two sweeps at once send the same message (its id is derived from the release generation): the
//! bridge applies one and records the other as a duplicate.

use rulestream_aws::kafka::Producer;
use rulestream_aws::releases::ReleaseStore;
use rulestream_core::release::{ReleaseMessage, ReleaseOp, guard_verdict};

/// What one pass did.
#[derive(Debug, Default)]
pub struct GuardReport {
    /// Guarded candidates looked at.
    pub checked: usize,
    /// Rollbacks sent.
    pub rolled_back: usize,
    /// Errors (logged).
    pub errors: usize,
}

/// Judges every guarded candidate once.
pub async fn check(store: &ReleaseStore, brokers: Option<&str>, topic: &str) -> GuardReport {
    let mut report = GuardReport::default();
    let guarded = match store.guarded().await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "guard: cannot read the clients table");
            report.errors += 1;
            return report;
        }
    };
    let mut producer: Option<Producer> = None;
    for (client, flow, release) in guarded {
        let (Some(guard), Some(candidate), Some(since)) = (
            release.guard.as_ref(),
            release.candidate,
            release.candidate_since.as_deref(),
        ) else {
            continue;
        };
        report.checked += 1;
        let counts = match store.version_counts(&client, &flow, since).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(client, flow, error = %e, "guard: cannot count executions");
                report.errors += 1;
                continue;
            }
        };
        let cand = counts.get(&candidate).copied().unwrap_or_default();
        let stable = counts.get(&release.stable).copied().unwrap_or_default();
        let Some(why) = guard_verdict(guard, cand, stable) else {
            continue;
        };
        let Some(brokers) = brokers else {
            tracing::error!(
                client,
                flow,
                reason = why,
                "guard: rollback due but KAFKA_BROKERS is not set"
            );
            report.errors += 1;
            continue;
        };
        let msg = ReleaseMessage {
            op: ReleaseOp::Rollback,
            client_id: client.clone(),
            flow_id: flow.clone(),
            message_id: format!("guard-{client}-{flow}-g{}", release.generation),
            actor: "guard".into(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            generation: release.generation,
            version: None,
            percent: None,
            guard: None,
            reason: Some(why.clone()),
        };
        if producer.is_none() {
            match Producer::connect(brokers).await {
                Ok(p) => producer = Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "guard: cannot reach the releases topic");
                    report.errors += 1;
                    return report;
                }
            }
        }
        let Some(p) = producer.as_ref() else { continue };
        let body = match serde_json::to_vec(&msg) {
            Ok(b) => b,
            Err(_) => continue,
        };
        match p.send(topic, &msg.key(), body).await {
            Ok(_) => {
                tracing::warn!(
                    client,
                    flow,
                    candidate,
                    reason = why,
                    "guard: automatic rollback sent"
                );
                rulestream_core::chain::emit::rolled_back(&client, &flow);
                report.rolled_back += 1;
            }
            Err(e) => {
                tracing::error!(client, flow, error = %e, "guard: rollback not sent");
                report.errors += 1;
            }
        }
    }
    report
}
