//! Release messages (SPEC section 3, the `<prefix>.releases` topic) and how one changes a flow's
//! release state: pure functions, so the bridge, the CLI and the guard share one meaning.
//!
//! A message applies only to the generation it was made from. Applying it yields the next
//! release (generation + 1, the message's id remembered); a message made from another generation
//! is stale and changes nothing. The bridge makes that a conditional write on the generation, so
//! of two messages made from the same generation at most one ever wins.

use serde::{Deserialize, Serialize};

use crate::execution::{Guard, Release};

/// What a release message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOp {
    /// A new version becomes the candidate for a gray share (or stable, for a flow's first
    /// version).
    Publish,
    /// The candidate's share changes.
    SetPercent,
    /// The candidate becomes stable.
    Promote,
    /// The candidate is dropped; without a candidate, stable goes back to the previous stable.
    Rollback,
}

impl ReleaseOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseOp::Publish => "publish",
            ReleaseOp::SetPercent => "set_percent",
            ReleaseOp::Promote => "promote",
            ReleaseOp::Rollback => "rollback",
        }
    }
}

/// One message of the releases topic (key `<client>/<flow>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMessage {
    /// What to do.
    pub op: ReleaseOp,
    /// The client.
    pub client_id: String,
    /// The flow.
    pub flow_id: String,
    /// Unique per message (a retried send keeps it).
    pub message_id: String,
    /// Who asked (the caller identity), or `guard` for an automatic rollback.
    pub actor: String,
    /// When it was made (RFC 3339).
    pub at: String,
    /// The release generation it was made from.
    pub generation: u64,
    /// `publish`: the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `publish`, `set_percent`: the candidate's share (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// `publish`: the candidate's guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// Why (an automatic rollback says what its guard saw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReleaseMessage {
    /// The topic key: `<client>/<flow>` (one partition per key keeps a flow's messages in order).
    pub fn key(&self) -> String {
        format!("{}/{}", self.client_id, self.flow_id)
    }

    /// Checks the fields every reader relies on; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.client_id.is_empty() || self.flow_id.is_empty() {
            return Err("`client_id` and `flow_id` must not be empty".into());
        }
        if self.message_id.is_empty() || self.message_id.chars().count() > 200 {
            return Err("`message_id` must be 1 to 200 characters".into());
        }
        if chrono::DateTime::parse_from_rfc3339(&self.at).is_err() {
            return Err(format!(
                "`at` must be an RFC 3339 time (got {:?})",
                crate::execution::cut(&self.at, 64)
            ));
        }
        match self.op {
            ReleaseOp::Publish => {
                match self.version {
                    Some(v) if v >= 1 => {}
                    _ => return Err("`publish` needs `version` (a whole number ≥ 1)".into()),
                }
                check_percent(self.percent.unwrap_or(0.0))?;
                if let Some(g) = &self.guard {
                    g.check()?;
                }
            }
            ReleaseOp::SetPercent => match self.percent {
                Some(p) => check_percent(p)?,
                None => return Err("`set_percent` needs `percent`".into()),
            },
            ReleaseOp::Promote | ReleaseOp::Rollback => {}
        }
        Ok(())
    }
}

/// A percent is a number in 0–100.
pub fn check_percent(p: f64) -> Result<(), String> {
    if p.is_finite() && (0.0..=100.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("`percent` must be between 0 and 100 (got {p})"))
    }
}

/// Why a message changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Made from another generation: a duplicate or a stale message.
    #[error("stale: made from generation {message}, the release is at generation {current}")]
    Stale {
        /// The message's generation.
        message: u64,
        /// The release's.
        current: u64,
    },
    /// Not applicable to this release (e.g. promote without a candidate).
    #[error("{0}")]
    Invalid(String),
}

/// The release `msg` makes of `current` (`None`: the flow has no release yet), or why it changes
/// nothing. The result's generation is the message's plus one. `now` (RFC 3339, the applier's
/// clock) is when a published candidate starts counting for its guard: never the message's own
/// `at`, which a sender could backdate (SPEC section 4: counted since the candidate was
/// published).
pub fn apply(
    current: Option<&Release>,
    msg: &ReleaseMessage,
    now: &str,
) -> Result<Release, Refusal> {
    let generation = current.map_or(0, |r| r.generation);
    if msg.generation != generation {
        return Err(Refusal::Stale {
            message: msg.generation,
            current: generation,
        });
    }
    msg.check().map_err(Refusal::Invalid)?;
    let next = |r: Release| Release {
        generation: generation + 1,
        last_message_id: Some(msg.message_id.clone()),
        ..r
    };
    let Some(cur) = current else {
        // A flow's first version serves everyone: there is nothing to compare it with.
        return match (msg.op, msg.version) {
            (ReleaseOp::Publish, Some(v)) => Ok(next(Release::stable_only(v))),
            _ => Err(Refusal::Invalid(format!(
                "`{}`: the flow has no release yet (publish a version first)",
                msg.op.as_str()
            ))),
        };
    };
    match msg.op {
        ReleaseOp::Publish => {
            let v = msg.version.unwrap_or_default();
            if v == cur.stable || Some(v) == cur.candidate {
                return Err(Refusal::Invalid(format!("v{v} is already released")));
            }
            Ok(next(Release {
                candidate: Some(v),
                percent: msg.percent.unwrap_or(0.0),
                guard: msg.guard.clone(),
                candidate_since: Some(now.to_string()),
                ..cur.clone()
            }))
        }
        ReleaseOp::SetPercent => {
            if cur.candidate.is_none() {
                return Err(Refusal::Invalid(
                    "`set_percent`: there is no candidate".into(),
                ));
            }
            Ok(next(Release {
                percent: msg.percent.unwrap_or(0.0),
                ..cur.clone()
            }))
        }
        ReleaseOp::Promote => {
            let Some(c) = cur.candidate else {
                return Err(Refusal::Invalid(
                    "`promote`: there is no candidate to promote".into(),
                ));
            };
            Ok(next(Release {
                stable: c,
                previous: Some(cur.stable),
                ..Release::stable_only(c)
            }))
        }
        ReleaseOp::Rollback => match (cur.candidate, cur.previous) {
            (Some(_), _) => Ok(next(Release {
                previous: cur.previous,
                ..Release::stable_only(cur.stable)
            })),
            (None, Some(p)) => Ok(next(Release::stable_only(p))),
            (None, None) => Err(Refusal::Invalid(
                "`rollback`: no candidate and no previous stable version to go back to".into(),
            )),
        },
    }
}

/// What a guard decides from the outcome counts since its candidate was published: `Some(why)`
/// when the candidate must be rolled back (SPEC section 4).
pub fn guard_verdict(guard: &Guard, candidate: Counts, stable: Counts) -> Option<String> {
    if candidate.finished < guard.min_executions || candidate.finished == 0 {
        return None;
    }
    let share = |c: Counts| {
        if c.finished == 0 {
            0.0
        } else {
            c.failed as f64 / c.finished as f64
        }
    };
    let (cs, ss) = (share(candidate), share(stable));
    // "More than the delta": a difference equal to it, give or take float rounding (110/200 -
    // 100/200 is 0.050000000000000044), is not over it.
    (cs - ss - guard.max_failed_delta > 1e-9).then(|| {
        format!(
            "the candidate's FAILED share {:.1}% ({} of {}) exceeds stable's {:.1}% ({} of {}) by more than {:.1} points",
            cs * 100.0,
            candidate.failed,
            candidate.finished,
            ss * 100.0,
            stable.failed,
            stable.finished,
            guard.max_failed_delta * 100.0
        )
    })
}

/// Finished and failed executions of one version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Executions that ended (any status).
    pub finished: u64,
    /// Of which `FAILED`.
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the applier applies (the messages below were made at midnight).
    const NOW: &str = "2026-11-30T08:00:00.000Z";

    fn msg(op: ReleaseOp, generation: u64) -> ReleaseMessage {
        ReleaseMessage {
            op,
            client_id: "c".into(),
            flow_id: "f".into(),
            message_id: format!("m{generation}"),
            actor: "tester".into(),
            at: "2026-11-30T00:00:00Z".into(),
            generation,
            version: None,
            percent: None,
            guard: None,
            reason: None,
        }
    }

    fn publish(v: u64, p: f64, generation: u64) -> ReleaseMessage {
        ReleaseMessage {
            version: Some(v),
            percent: Some(p),
            ..msg(ReleaseOp::Publish, generation)
        }
    }

    #[test]
    fn a_release_goes_through_its_life() {
        let r1 = apply(None, &publish(1, 0.0, 0), NOW).expect("first");
        assert_eq!((r1.stable, r1.candidate, r1.generation), (1, None, 1));
        let r2 = apply(Some(&r1), &publish(2, 10.0, 1), NOW).expect("publish");
        assert_eq!((r2.stable, r2.candidate, r2.percent), (1, Some(2), 10.0));
        // The guard counts from when the candidate was applied, not the message's own `at`.
        assert_eq!(r2.candidate_since.as_deref(), Some(NOW));
        let r3 = apply(
            Some(&r2),
            &ReleaseMessage {
                percent: Some(50.0),
                ..msg(ReleaseOp::SetPercent, 2)
            },
            NOW,
        )
        .expect("raise");
        assert_eq!(
            (r3.candidate, r3.percent, r3.generation),
            (Some(2), 50.0, 3)
        );
        let r4 = apply(Some(&r3), &msg(ReleaseOp::Promote, 3), NOW).expect("promote");
        assert_eq!((r4.stable, r4.candidate, r4.previous), (2, None, Some(1)));
        let r5 = apply(Some(&r4), &msg(ReleaseOp::Rollback, 4), NOW).expect("back to v1");
        assert_eq!((r5.stable, r5.candidate, r5.generation), (1, None, 5));
        assert_eq!(r5.last_message_id.as_deref(), Some("m4"));
    }

    #[test]
    fn rollback_of_a_candidate_keeps_stable() {
        let r1 = apply(None, &publish(1, 0.0, 0), NOW).expect("first");
        let r2 = apply(Some(&r1), &publish(2, 10.0, 1), NOW).expect("publish");
        let r3 = apply(Some(&r2), &msg(ReleaseOp::Rollback, 2), NOW).expect("rollback");
        assert_eq!((r3.stable, r3.candidate, r3.percent), (1, None, 0.0));
    }

    #[test]
    fn a_stale_or_duplicate_message_changes_nothing() {
        let r1 = apply(None, &publish(1, 0.0, 0), NOW).expect("first");
        let r2 = apply(Some(&r1), &publish(2, 10.0, 1), NOW).expect("publish");
        // The same message again, and one made from an older generation.
        assert!(matches!(
            apply(Some(&r2), &publish(2, 10.0, 1), NOW),
            Err(Refusal::Stale {
                message: 1,
                current: 2
            })
        ));
        assert!(matches!(
            apply(Some(&r2), &msg(ReleaseOp::Promote, 0), NOW),
            Err(Refusal::Stale { .. })
        ));
    }

    #[test]
    fn inapplicable_messages_say_why() {
        let r1 = apply(None, &publish(1, 0.0, 0), NOW).expect("first");
        for (m, want) in [
            (msg(ReleaseOp::Promote, 1), "no candidate"),
            (msg(ReleaseOp::Rollback, 1), "no previous"),
            (publish(1, 5.0, 1), "already released"),
            (publish(2, 101.0, 1), "between 0 and 100"),
            (msg(ReleaseOp::SetPercent, 1), "needs `percent`"),
            (
                ReleaseMessage {
                    at: "yesterday".into(),
                    ..msg(ReleaseOp::Promote, 1)
                },
                "RFC 3339",
            ),
        ] {
            let e = apply(Some(&r1), &m, NOW).expect_err("refused").to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(apply(None, &msg(ReleaseOp::Promote, 0), NOW).is_err());
    }

    #[test]
    fn the_guard_compares_failed_shares() {
        let g = Guard {
            max_failed_delta: 0.05,
            min_executions: 100,
        };
        let c = |finished, failed| Counts { finished, failed };
        assert_eq!(
            guard_verdict(&g, c(99, 99), c(1000, 0)),
            None,
            "too few yet"
        );
        assert_eq!(
            guard_verdict(&g, c(200, 20), c(1000, 60)),
            None,
            "10% vs 6%"
        );
        let why = guard_verdict(&g, c(200, 40), c(1000, 60)).expect("20% vs 6%");
        assert!(why.contains("20.0%") && why.contains("6.0%"), "{why}");
        assert_eq!(
            guard_verdict(&g, c(200, 110), c(200, 100)),
            None,
            "55% vs 50%: exactly the delta is not more than it"
        );
        assert!(guard_verdict(&g, c(200, 111), c(200, 100)).is_some());
    }

    #[test]
    fn messages_round_trip_with_their_wire_names() {
        let m = publish(3, 10.0, 7);
        let j = serde_json::to_value(&m).expect("json");
        assert_eq!(j["op"], "publish");
        assert_eq!(j["generation"], 7);
        let back: ReleaseMessage = serde_json::from_value(j).expect("back");
        assert_eq!(back, m);
        let sp: ReleaseMessage = serde_json::from_str(
            r#"{"op":"set_percent","client_id":"c","flow_id":"f","message_id":"x","actor":"a","at":"t","generation":1,"percent":5}"#,
        )
        .expect("set_percent");
        assert_eq!(sp.op, ReleaseOp::SetPercent);
    }
}
