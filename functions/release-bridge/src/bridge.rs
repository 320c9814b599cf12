//! Applying release messages, one record at a time, in offset order per partition.

use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use base64::Engine;
use rulestream_aws::RedisLimiter;
use rulestream_aws::releases::{AuditEntry, ReleaseStore, describe};
use rulestream_core::ports::StoreError;
use rulestream_core::release::{Refusal, ReleaseMessage, ReleaseOp, apply};
use serde_json::{Value, json};

/// The bridge's clients.
pub struct Bridge {
    /// Releases, versions, catalog, audit.
    pub store: ReleaseStore,
    /// The config epoch.
    pub redis: RedisLimiter,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Applied,
    AlreadyApplied,
    Ignored,
    Rejected,
}

impl Bridge {
    /// Every record of the event, partition by partition, in offset order. Only an unreachable
    /// store fails the invocation (the batch is then redelivered).
    pub async fn handle(&self, event: KafkaEvent) -> Result<Value, lambda_runtime::Error> {
        let mut partitions: Vec<(String, Vec<KafkaRecord>)> = event.records.into_iter().collect();
        partitions.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut applied, mut duplicates, mut ignored, mut rejected) = (0, 0, 0, 0);
        for (_, mut records) in partitions {
            records.sort_by_key(|r| r.offset);
            for r in &records {
                match self.record(r).await {
                    Ok(Fate::Applied) => applied += 1,
                    Ok(Fate::AlreadyApplied) => duplicates += 1,
                    Ok(Fate::Ignored) => ignored += 1,
                    Ok(Fate::Rejected) => rejected += 1,
                    Err(e) => {
                        tracing::error!(
                            partition = r.partition,
                            offset = r.offset,
                            error = %e,
                            "release message not applied: the batch will be redelivered"
                        );
                        return Err(format!(
                            "offset {} of partition {}: {e}",
                            r.offset, r.partition
                        )
                        .into());
                    }
                }
            }
        }
        Ok(
            json!({"applied": applied, "duplicates": duplicates, "ignored": ignored, "rejected": rejected}),
        )
    }

    async fn record(&self, r: &KafkaRecord) -> Result<Fate, StoreError> {
        let msg = match decode(r) {
            Ok(m) => m,
            Err(why) => {
                let subject = key_of(r).unwrap_or_else(|| "unknown".into());
                let at = chrono::DateTime::from_timestamp_millis(r.timestamp.0.timestamp_millis())
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let place = format!(
                    "{}-{}-{}",
                    r.topic.as_deref().unwrap_or("?"),
                    r.partition,
                    r.offset
                );
                let mut e =
                    AuditEntry::new(&subject, &at, "unknown", "message", "rejected", &place);
                e.message_id = None;
                e.reason = Some(format!("{why} (at {place})"));
                tracing::warn!(subject, reason = %why, "release message rejected");
                self.store.audit(&e).await?;
                return Ok(Fate::Rejected);
            }
        };
        self.message(&msg).await
    }

    async fn message(&self, msg: &ReleaseMessage) -> Result<Fate, StoreError> {
        let subject = msg.key();
        let entry = |outcome: &str| {
            let mut e = AuditEntry::new(
                &subject,
                &msg.at,
                &msg.actor,
                msg.op.as_str(),
                outcome,
                &msg.message_id,
            );
            e.generation = Some(msg.generation);
            e.reason = msg.reason.clone();
            e
        };
        let reject = |why: String| {
            let mut e = entry("rejected");
            e.reason = Some(why);
            e
        };
        let current = match self.store.current(&msg.client_id, &msg.flow_id).await {
            Ok(c) => c,
            Err(StoreError::NotFound(m)) => {
                self.store.audit(&reject(m)).await?;
                return Ok(Fate::Rejected);
            }
            Err(e) => return Err(e),
        };
        let release = current.release.as_ref();
        // A duplicate of a message applied before is a recorded no-op (SPEC section 3): one
        // `ignored` entry per duplicated message, however often it comes again.
        let duplicate = || {
            let mut e = entry("ignored");
            e.reason = Some(format!(
                "duplicate: message `{}` was applied before",
                msg.message_id
            ));
            e.from = Some(describe(release));
            e
        };
        if release.and_then(|r| r.last_message_id.as_deref()) == Some(msg.message_id.as_str()) {
            // Redelivered after it was applied: make sure its audit record exists (the first
            // delivery may have stopped before writing it); if it does, this is a duplicate,
            // whatever else the copy says (another `at` or `actor` is still the same message).
            let mut e = entry("applied");
            e.to = Some(describe(release));
            if self.applied_before(msg).await? || !self.store.audit(&e).await? {
                self.store.audit(&duplicate()).await?;
                tracing::info!(
                    subject,
                    message_id = msg.message_id,
                    "duplicate release message ignored"
                );
            }
            return Ok(Fate::AlreadyApplied);
        }
        let next = match apply(release, msg) {
            Ok(n) => n,
            Err(Refusal::Stale { .. }) if self.applied_before(msg).await? => {
                self.store.audit(&duplicate()).await?;
                tracing::info!(
                    subject,
                    message_id = msg.message_id,
                    "duplicate release message ignored"
                );
                return Ok(Fate::AlreadyApplied);
            }
            Err(r @ Refusal::Stale { .. }) => {
                let mut e = entry("ignored");
                e.reason = Some(r.to_string());
                e.from = Some(describe(release));
                self.store.audit(&e).await?;
                tracing::info!(subject, message_id = msg.message_id, reason = %r, "release message ignored");
                return Ok(Fate::Ignored);
            }
            Err(Refusal::Invalid(why)) => {
                let mut e = reject(why);
                e.from = Some(describe(release));
                self.store.audit(&e).await?;
                return Ok(Fate::Rejected);
            }
        };
        if msg.op == ReleaseOp::Publish
            && let Some(v) = msg.version
            && let Err(why) = self
                .store
                .check_version(&msg.client_id, &msg.flow_id, v)
                .await?
        {
            let mut e = reject(why);
            e.from = Some(describe(release));
            self.store.audit(&e).await?;
            tracing::warn!(
                subject,
                message_id = msg.message_id,
                "release rejected: invalid version"
            );
            return Ok(Fate::Rejected);
        }
        let generation = release.map_or(0, |r| r.generation);
        if !self
            .store
            .commit(&msg.client_id, &msg.flow_id, generation, &next)
            .await?
        {
            // Another change won the generation between the read and the write.
            let mut e = entry("ignored");
            e.reason = Some(format!(
                "stale: generation {generation} changed while applying"
            ));
            self.store.audit(&e).await?;
            return Ok(Fate::Ignored);
        }
        // Warm orchestrators reload the clients row on their next record once the epoch moves.
        // It moves before the audit says `applied`: the CLI returns on that entry, and an
        // execution started after the CLI returned must run the new release. Redis down: they
        // reload within RULESTREAM_CONFIG_TTL_SECS anyway.
        if let Err(err) = self.redis.bump_epoch().await {
            tracing::warn!(error = %err, "config epoch not bumped (orchestrators reload on their TTL)");
        }
        let mut e = entry("applied");
        e.from = Some(describe(release));
        e.to = Some(describe(Some(&next)));
        self.store.audit(&e).await?;
        tracing::info!(
            subject,
            op = msg.op.as_str(),
            message_id = msg.message_id,
            from = describe(release),
            to = describe(Some(&next)),
            generation = next.generation,
            "release applied"
        );
        Ok(Fate::Applied)
    }

    /// Whether the audit already holds a message with this id as applied (redelivered after
    /// later ones, or a copy with another `at`).
    async fn applied_before(&self, msg: &ReleaseMessage) -> Result<bool, StoreError> {
        Ok(self
            .store
            .history(&msg.key())
            .await?
            .iter()
            .any(|e| e.outcome == "applied" && e.message_id.as_deref() == Some(&msg.message_id)))
    }
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("not base64: {e}"))
}

fn key_of(r: &KafkaRecord) -> Option<String> {
    let k = b64(r.key.as_deref()?).ok()?;
    let k = String::from_utf8(k).ok()?;
    // Only a key shaped like `<client>/<flow>` names an audit subject.
    let ok = k.len() <= 200
        && k.split('/').count() == 2
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then_some(k)
}

/// The message of a record, or why it is not one.
fn decode(r: &KafkaRecord) -> Result<ReleaseMessage, String> {
    let value = r.value.as_deref().ok_or("the record has no value")?;
    let bytes = b64(value)?;
    let msg: ReleaseMessage =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a release message: {e}"))?;
    msg.check()?;
    if let Some(k) = key_of(r)
        && k != msg.key()
    {
        return Err(format!(
            "the record's key `{k}` is not the message's `{}`",
            msg.key()
        ));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &str) -> KafkaRecord {
        let e = base64::engine::general_purpose::STANDARD;
        serde_json::from_value(json!({
            "topic": "rulestream.releases", "partition": 0, "offset": 7,
            "timestamp": 1764460800000_i64, "timestampType": "CREATE_TIME",
            "key": e.encode(key), "value": e.encode(value), "headers": []
        }))
        .expect("record")
    }

    #[test]
    fn records_decode_or_say_why_not() {
        let ok = r#"{"op":"promote","client_id":"c","flow_id":"f","message_id":"m","actor":"a","at":"t","generation":3}"#;
        assert_eq!(decode(&record("c/f", ok)).expect("ok").generation, 3);
        for (key, value, want) in [
            ("c/f", "{not json", "not a release message"),
            ("c/f", r#"{"op":"explode"}"#, "not a release message"),
            ("x/y", ok, "is not the message's"),
            (
                "c/f",
                r#"{"op":"publish","client_id":"c","flow_id":"f","message_id":"m","actor":"a","at":"t","generation":3}"#,
                "needs `version`",
            ),
        ] {
            let e = decode(&record(key, value)).expect_err(want);
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(key_of(&record("c/f", "")), Some("c/f".into()));
        assert_eq!(key_of(&record("no slash", "")), None);
    }

    #[test]
    fn the_msk_event_shape_parses() {
        let event: KafkaEvent = serde_json::from_value(json!({
            "eventSource": "aws:kafka",
            "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/rs/abc",
            "bootstrapServers": "b-1:9092",
            "records": {"rulestream.releases-0": [{
                "topic": "rulestream.releases", "partition": 0, "offset": 0,
                "timestamp": 1764460800000_i64, "timestampType": "CREATE_TIME",
                "key": "Yy9m", "value": "e30=", "headers": []
            }]}
        }))
        .expect("event");
        assert_eq!(event.records["rulestream.releases-0"].len(), 1);
    }
}
