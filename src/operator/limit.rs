//! A per-trial rate limit on reports: a token bucket per trial, so that one trainer in a
//! tight loop cannot turn the operator into a status-writing machine for the API server.
//! A trainer reports once per epoch or step; bursts of a few a second are normal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Reports a second per trial, sustained: each accepted report is one status write.
pub const RATE: f64 = 10.0;
/// Reports a trial may send at once after a quiet spell.
pub const BURST: f64 = 20.0;
/// Buckets kept at most: beyond this the idlest are dropped (a full bucket is the same as
/// none, so dropping one only forgives its trial).
const MAX_BUCKETS: usize = 100_000;

#[derive(Default)]
pub struct ReportLimit {
    buckets: Mutex<HashMap<(String, String), (f64, Instant)>>,
}

impl ReportLimit {
    /// Takes a token from the trial's bucket; false when it is empty.
    pub fn allow(&self, namespace: &str, trial: &str) -> bool {
        self.allow_at(namespace, trial, Instant::now())
    }

    fn allow_at(&self, namespace: &str, trial: &str, now: Instant) -> bool {
        let mut buckets = crate::operator::sync::lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() * RATE < BURST);
        }
        let (tokens, at) = buckets
            .entry((namespace.to_string(), trial.to_string()))
            .or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * RATE).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_trial() {
        let limit = ReportLimit::default();
        let t0 = Instant::now();
        let passed = (0..100).filter(|_| limit.allow_at("ns", "a", t0)).count();
        assert_eq!(passed, BURST as usize);
        // Another trial has its own bucket.
        assert!(limit.allow_at("ns", "b", t0));
        // After a second, RATE more.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..100).filter(|_| limit.allow_at("ns", "a", t1)).count();
        assert_eq!(passed, RATE as usize);
    }
}
