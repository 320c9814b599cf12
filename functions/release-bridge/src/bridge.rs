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
                    // A record whose audit item DynamoDB refuses as such (a ValidationException:
                    // it would be refused forever) must not block the topic: it is dropped,
                    // loudly. Anything else (a missing table, a denied call) waits for a fix.
                    Err(StoreError::Invalid(e)) if e.contains("ValidationException") => {
                        tracing::error!(
                            partition = r.partition,
                            offset = r.offset,
                            error = %e,
                            "release message dropped: it cannot be recorded"
                        );
                        rejected += 1;
                    }
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
        // The audit's "when" is when the topic got the record, never the message's own `at`
        // (a field a sender writes, which could be anything); the same record redelivered
        // keeps it, so its audit entries are written once.
        let received = received_at(r);
        let msg = match decode(r) {
            Ok(m) => m,
            Err(why) => {
                let subject = key_of(r).unwrap_or_else(|| "unknown".into());
                let place = format!(
                    "{}-{}-{}",
                    r.topic.as_deref().unwrap_or("?"),
                    r.partition,
                    r.offset
                );
                // What can be read of it still says who sent what (SPEC section 3: the audit
                // holds who and what of every rejected release message).
                let readable = readable_fields(r);
                let field = |k: &str| {
                    readable
                        .get(k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(|s| rulestream_core::execution::cut(s, 200))
                };
                let actor = field("actor").unwrap_or_else(|| "unknown".into());
                let op = field("op")
                    .filter(|o| {
                        ["publish", "promote", "rollback", "set_percent"].contains(&o.as_str())
                    })
                    .unwrap_or_else(|| "message".into());
                let mut e = AuditEntry::new(&subject, &received, &actor, &op, "rejected", &place);
                e.message_id = field("message_id");
                e.generation = readable.get("generation").and_then(Value::as_u64);
                e.requested_at = field("at");
                e.reason = Some(format!(
                    "{} (at {place})",
                    rulestream_core::execution::cut(&why, 500)
                ));
                tracing::warn!(subject, reason = %why, "release message rejected");
                self.store.audit(&e).await?;
                return Ok(Fate::Rejected);
            }
        };
        self.message(&msg, &received).await
    }

    async fn message(&self, msg: &ReleaseMessage, received: &str) -> Result<Fate, StoreError> {
        let subject = msg.key();
        let entry = |outcome: &str| {
            let mut e = AuditEntry::new(
                &subject,
                received,
                &rulestream_core::execution::cut(&msg.actor, 200),
                msg.op.as_str(),
                outcome,
                &msg.message_id,
            );
            e.generation = Some(msg.generation);
            e.reason = msg
                .reason
                .as_deref()
                .map(|r| rulestream_core::execution::cut(r, 1000));
            e.requested_at = Some(msg.at.clone());
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
        // A duplicate of a message applied before is a recorded no-op (SPEC section 3): an
        // `ignored` entry per record that carries it (the same record redelivered writes the
        // same entry).
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
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let next = match apply(release, msg, &now) {
            Err(Refusal::Stale { .. }) if self.applied_before(msg).await? => {
                self.store.audit(&duplicate()).await?;
                tracing::info!(
                    subject,
                    message_id = msg.message_id,
                    "duplicate release message ignored"
                );
                return Ok(Fate::AlreadyApplied);
            }
            Ok(n) => n,
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

/// When the topic got `r`: its timestamp (the broker's append time on a topic with
/// `message.timestamp.type=LogAppendTime`, as docs/operations.md asks; otherwise the producer's
/// send time), never later than now; now when the record carries none.
fn received_at(r: &KafkaRecord) -> String {
    let now = chrono::Utc::now();
    let ms = r.timestamp.0.timestamp_millis();
    // Before 2020: no real timestamp (a broker that sets none gives 0 or -1).
    let t = if ms > 1_577_836_800_000 {
        chrono::DateTime::from_timestamp_millis(ms).map(|t| t.min(now))
    } else {
        None
    };
    t.unwrap_or(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The fields of a record's value that parse as JSON (an empty map otherwise).
fn readable_fields(r: &KafkaRecord) -> serde_json::Map<String, Value> {
    r.value
        .as_deref()
        .and_then(|v| b64(v).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
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
        let ok = r#"{"op":"promote","client_id":"c","flow_id":"f","message_id":"m","actor":"a","at":"2026-11-30T00:00:00Z","generation":3}"#;
        assert_eq!(decode(&record("c/f", ok)).expect("ok").generation, 3);
        for (key, value, want) in [
            ("c/f", "{not json", "not a release message"),
            ("c/f", r#"{"op":"explode"}"#, "not a release message"),
            ("x/y", ok, "is not the message's"),
            (
                "c/f",
                r#"{"op":"publish","client_id":"c","flow_id":"f","message_id":"m","actor":"a","at":"2026-11-30T00:00:00Z","generation":3}"#,
                "needs `version`",
            ),
        ] {
            let e = decode(&record(key, value)).expect_err(want);
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(key_of(&record("c/f", "")), Some("c/f".into()));
        assert_eq!(key_of(&record("no slash", "")), None);
        // A message whose `at` is not a time is refused (its guard would never count), and
        // what can be read of it still names who sent what.
        let bad_at = r#"{"op":"set_percent","client_id":"c","flow_id":"f","message_id":"m7","actor":"alice","at":"yesterday","generation":4,"percent":5}"#;
        let e = decode(&record("c/f", bad_at)).expect_err("refused");
        assert!(e.contains("RFC 3339"), "{e}");
        let r = readable_fields(&record("c/f", bad_at));
        assert_eq!(
            (
                r["actor"].as_str(),
                r["message_id"].as_str(),
                r["generation"].as_u64()
            ),
            (Some("alice"), Some("m7"), Some(4))
        );
        // The audit's time is the record's (2025-11-30 here), not the message's.
        assert_eq!(
            received_at(&record("c/f", bad_at)),
            "2025-11-30T00:00:00.000Z"
        );
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
