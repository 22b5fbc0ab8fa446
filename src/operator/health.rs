//! Whether the operator can see the cluster: each watch says when it fails and when it
//! lists or hears again. `/healthz` fails while one has failed for longer than
//! [`UNHEALTHY_AFTER`], so that a process whose watches cannot recover (a lost connection
//! it does not re-establish, expired credentials) is restarted by its liveness probe.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a watch may keep failing before the operator says it is unhealthy: longer than
/// an API server takes to restart.
pub const UNHEALTHY_AFTER: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct Health {
    /// Per watch: since when it has been failing, and its last error.
    failing: Mutex<BTreeMap<&'static str, (Instant, String)>>,
}

impl Health {
    /// The watch of `resource` delivered an event: it works.
    pub fn seen(&self, resource: &'static str) {
        let mut failing = self.lock();
        if !failing.is_empty() {
            failing.remove(resource);
        }
    }

    /// The watch of `resource` failed with `error`.
    pub fn failed(&self, resource: &'static str, error: String) {
        let mut failing = self.lock();
        let entry = failing
            .entry(resource)
            .or_insert_with(|| (Instant::now(), String::new()));
        entry.1 = error;
    }

    /// Why the operator is unhealthy at `now`, if it is.
    pub fn problem(&self, now: Instant) -> Option<String> {
        self.lock()
            .iter()
            .find(|(_, (since, _))| now.duration_since(*since) >= UNHEALTHY_AFTER)
            .map(|(resource, (since, error))| {
                format!(
                    "the {resource} watch has failed for {:.0}s: {error}",
                    now.duration_since(*since).as_secs_f64()
                )
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, (Instant, String)>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_that_keeps_failing_makes_the_operator_unhealthy_until_it_works_again() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.problem(t0), None);
        h.failed("pods", "connection refused".into());
        assert_eq!(
            h.problem(Instant::now()),
            None,
            "a short failure is a restart"
        );
        let later = Instant::now() + UNHEALTHY_AFTER + Duration::from_secs(1);
        let problem = h.problem(later).unwrap();
        assert!(
            problem.contains("pods watch") && problem.contains("connection refused"),
            "{problem}"
        );
        h.seen("nastrials");
        assert!(
            h.problem(later).is_some(),
            "another watch working does not heal this one"
        );
        h.seen("pods");
        assert_eq!(h.problem(later), None);
    }
}
