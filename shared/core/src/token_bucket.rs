//! Token-bucket maths as a pure function of `(state, now, rate, burst)`. The Redis adapter runs
//! this same algorithm atomically in a Lua script; this is its reference and its unit-tested model.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` tokens per second. A new bucket is
//! full. Taking one token succeeds when at least one is there.

use serde::{Deserialize, Serialize};

/// What is stored per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketState {
    /// Tokens left after the last take.
    pub tokens: f64,
    /// When `tokens` was computed, in milliseconds since the epoch.
    pub updated_ms: i64,
}

/// The result of one take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Take {
    /// Whether a token was taken.
    pub allowed: bool,
    /// The state to store.
    pub state: BucketState,
    /// When refused: milliseconds until a token will be there.
    pub retry_after_ms: u64,
}

/// Takes one token from the bucket at `now_ms`. A clock that goes backwards refills nothing.
pub fn take(state: Option<BucketState>, now_ms: i64, rate: f64, burst: f64) -> Take {
    let burst = if burst.is_finite() {
        burst.max(0.0)
    } else {
        0.0
    };
    let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    let mut tokens = match state {
        None => burst,
        Some(s) => {
            let elapsed_ms = (now_ms - s.updated_ms).max(0) as f64;
            (s.tokens + elapsed_ms * rate / 1000.0).min(burst)
        }
    };
    let allowed = tokens >= 1.0;
    if allowed {
        tokens -= 1.0;
    }
    let retry_after_ms = if allowed {
        0
    } else if rate <= 0.0 {
        u64::MAX
    } else {
        (((1.0 - tokens) * 1000.0 / rate).ceil()).max(0.0) as u64
    };
    Take {
        allowed,
        state: BucketState {
            tokens,
            updated_ms: now_ms,
        },
        retry_after_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_bucket_allows_burst_then_refuses() {
        let mut s = None;
        let mut allowed = 0;
        for _ in 0..10 {
            let t = take(s, 1_000, 1.0, 3.0);
            allowed += usize::from(t.allowed);
            s = Some(t.state);
        }
        assert_eq!(allowed, 3);
        let t = take(s, 1_000, 1.0, 3.0);
        assert!(!t.allowed);
        assert_eq!(t.retry_after_ms, 1000);
    }

    #[test]
    fn refills_at_rate_and_caps_at_burst() {
        let s = BucketState {
            tokens: 0.0,
            updated_ms: 0,
        };
        assert!(!take(Some(s), 99, 10.0, 5.0).allowed);
        assert!(take(Some(s), 100, 10.0, 5.0).allowed);
        let t = take(Some(s), 1_000_000, 10.0, 5.0);
        assert!((t.state.tokens - 4.0).abs() < 1e-9);
    }

    #[test]
    fn clock_going_backwards_refills_nothing() {
        let s = BucketState {
            tokens: 0.5,
            updated_ms: 10_000,
        };
        let t = take(Some(s), 5_000, 100.0, 5.0);
        assert!(!t.allowed);
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_refill(rate in 0.1f64..100.0, burst in 1.0f64..50.0, steps in proptest::collection::vec(0i64..200, 1..200)) {
            let mut s = None;
            let mut now = 0i64;
            let mut allowed = 0u64;
            for d in steps {
                now += d;
                let t = take(s, now, rate, burst);
                allowed += u64::from(t.allowed);
                prop_assert!(t.state.tokens >= 0.0 && t.state.tokens <= burst);
                s = Some(t.state);
            }
            let cap = burst + rate * now as f64 / 1000.0;
            prop_assert!(allowed as f64 <= cap + 1e-9);
        }
    }
}
