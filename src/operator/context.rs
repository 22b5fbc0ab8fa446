//! What the operator's parts share: the API client, the watch caches, the settings, the
//! per-experiment state (owned by the experiment controller), the records of what this
//! process wrote, and the helpers every controller uses (events, backoff, the clock).
//! Controllers and the HTTP server import this module; it imports none of them but the
//! experiment controller's state type.

use super::experiment::state::States;
use super::health::Health;
use super::index::TrialIndex;
use super::limit::ReportLimit;
use super::metrics::Metrics;
use super::status;
pub use super::sync::lock;
use super::token::Reviews;
use super::written::Written;
use crate::api::{NasExperiment, NasTrial, ParseError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// The field manager of everything the operator writes with server-side apply.
pub const MANAGER: &str = "nasop";

/// What the controllers and the report endpoint share.
pub struct Ctx {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub stores: Stores,
    /// Per-experiment state, each experiment behind its own lock.
    pub states: States,
    /// What this process wrote that its stores may not show yet.
    pub written: WrittenObjects,
    /// The per-trial rate limit on reports.
    pub reports: ReportLimit,
    /// Experiments (by UID) already announced as run by another installation.
    pub elsewhere: Mutex<std::collections::HashSet<String>>,
    /// Until when this replica may act (lease.rs).
    pub leadership: Arc<super::lease::Leadership>,
    /// Whether the watches work (`/healthz`).
    pub health: Arc<Health>,
    /// Report tokens the API server has vouched for (token.rs).
    pub reviews: Reviews,
    /// Consecutive failed reconciles per object, for the error backoff.
    pub backoff: Backoff,
    /// What Kueue said lately about trials waiting in its queues (queue.rs).
    pub queue_messages: super::queue::Messages,
    /// Leading, with caches that have listed everything: reports are taken.
    pub ready: AtomicBool,
}

/// The operator's settings, fixed at start.
pub struct Settings {
    /// The report URL trial pods are given.
    pub report_url: String,
    /// This replica's name in the events it writes.
    pub instance: String,
    /// This installation, as experiments' `status.controller` names it:
    /// `<lease namespace>/<lease name>` (replicas of one installation share it).
    pub controller: String,
    pub stop_grace: Duration,
    pub max_attempts: u32,
    pub keep_finished_pods: usize,
    /// The image whose `/nasop` wrapped trials (spec.wrap) copy: the operator's own.
    pub wrap_image: String,
}

/// The watch caches.
pub struct Stores {
    /// Experiments, untyped: each is parsed on its own (see [`Ctx::experiment`]).
    pub experiments: Store<DynamicObject>,
    pub experiment_resource: ApiResource,
    pub trials: Store<NasTrial>,
    /// The trials of each experiment, by its UID.
    pub index: Arc<TrialIndex>,
    pub pods: Store<Pod>,
}

impl Stores {
    /// The experiment's trials, by index: those its UID owns (see [`super::index`]).
    pub fn trials_of(&self, namespace: &str, uid: &str) -> Vec<Arc<NasTrial>> {
        let mut trials: Vec<Arc<NasTrial>> = self
            .index
            .names(uid)
            .iter()
            .filter_map(|name| self.trials.get(&ObjectRef::new(name).within(namespace)))
            .filter(|t| super::index::owner_uid(t) == Some(uid))
            .collect();
        trials.sort_by_key(|t| t.spec.index);
        trials
    }

    /// The stored experiment `name` in `namespace`, unparsed.
    pub fn experiment(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.experiments
            .get(&ObjectRef::new_with(name, self.experiment_resource.clone()).within(namespace))
    }
}

/// The annotation that names the installation that may run an experiment.
pub const CONTROLLER_ANNOTATION: &str = "nasop.dev/controller";

/// The other installation that runs an experiment (two nasop installations can watch one
/// namespace: a cluster-wide one and one for the namespace), if it is not this one: the one
/// the annotation names, else the one its status names. An experiment no installation has
/// written yet is this one's.
pub fn controlled_elsewhere(
    settings: &Settings,
    annotations: &std::collections::BTreeMap<String, String>,
    status_controller: Option<&str>,
) -> Option<String> {
    let named = annotations
        .get(CONTROLLER_ANNOTATION)
        .map(String::as_str)
        .or(status_controller)?;
    (named != settings.controller).then(|| named.to_string())
}

/// Objects this process wrote whose new version its stores may not show yet.
#[derive(Default)]
pub struct WrittenObjects {
    /// Trial statuses (see [`super::trial::freshest`]).
    pub trials: Mutex<Written<NasTrial>>,
    /// Pods it created (see [`Ctx::pod`]).
    pub pods: Mutex<Written<Pod>>,
}

/// Consecutive failed reconciles per object, for the error backoff.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// How long to wait after a failed reconcile of `uid`: exponential from 250 ms to a
    /// minute, with jitter so that objects that failed together do not retry together.
    pub fn next(&self, uid: &str) -> Duration {
        let mut failures = lock(&self.failures);
        let n = failures.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n, jitter())
    }

    /// `uid` succeeded: its next failure waits the shortest time again.
    pub fn reset(&self, uid: &str) {
        lock(&self.failures).remove(uid);
    }
}

impl Ctx {
    /// A pod from the store, or one this process created moments ago that the store does not
    /// show yet.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        let stored = self.stores.pods.get(&ObjectRef::new(name).within(ns));
        lock(&self.written.pods).newest(ns, name, stored, Instant::now())
    }

    /// The experiment `name` in `namespace` from the store, parsed (once per version).
    /// None when the store does not have it; an error names the field nasop cannot read.
    pub fn experiment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Result<Arc<NasExperiment>, ParseError>> {
        let object = self.stores.experiment(namespace, name)?;
        Some(self.parse(&object))
    }

    /// Parses a stored experiment, reusing the last parse of the same version.
    pub fn parse(&self, object: &DynamicObject) -> Result<Arc<NasExperiment>, ParseError> {
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        let version = object.resource_version().unwrap_or_default();
        let state = self
            .states
            .of(object.uid().as_deref().unwrap_or_default(), &key);
        let cached = lock(&state)
            .parsed
            .as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, p)| p.clone());
        if let Some(parsed) = cached {
            return Ok(parsed);
        }
        let value = serde_json::to_value(object).map_err(ParseError::json)?;
        let parsed = Arc::new(crate::api::parse_experiment(value)?);
        lock(&state).parsed = Some((version, parsed.clone()));
        Ok(parsed)
    }

    /// Waits until the watch caches have listed everything once: before that, an
    /// experiment would be reconciled against a partial set of trials and pods.
    pub async fn caches_ready(&self) {
        let _ = self.stores.trials.wait_until_ready().await;
        let _ = self.stores.pods.wait_until_ready().await;
        let _ = self.stores.experiments.wait_until_ready().await;
    }
}

/// The delay after `failures` failures in a row; `jitter` in [0, 1) spreads it over
/// [delay / 2, delay * 3 / 2).
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    let base = 0.25 * 2f64.powi(failures.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64(base.min(60.0) * (0.5 + jitter))
}

fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Records a Kubernetes Event (events.k8s.io/v1) about `object` in the background: events
/// are for people, and a slow event write must not delay a trial. Each is written once,
/// without kube's Recorder and its cache of every event of the last six minutes (at tens of
/// trials a second that cache held tens of megabytes and was scanned on every event).
pub fn publish_event(
    ctx: &Ctx,
    object: k8s_openapi::api::core::v1::ObjectReference,
    type_: kube::runtime::events::EventType,
    reason: &str,
    note: String,
) {
    use k8s_openapi::api::events::v1::Event;
    let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event = Event {
        metadata: kube::api::ObjectMeta {
            // `<object>.<nanoseconds, hex>`, as kubectl's events are named.
            name: Some(format!(
                "{}.{:x}",
                object.name.clone().unwrap_or_default(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            )),
            namespace: Some(ns),
            ..Default::default()
        },
        event_time: Some(status::micro(now())),
        action: Some(reason.to_string()),
        reason: Some(reason.to_string()),
        note: Some(note),
        type_: Some(format!("{type_:?}")),
        regarding: Some(object),
        reporting_controller: Some("nasop.dev/operator".into()),
        reporting_instance: Some(ctx.settings.instance.clone()),
        ..Default::default()
    };
    tokio::spawn(async move {
        if let Err(e) = api.create(&Default::default(), &event).await {
            warn!(object = ?event.regarding.and_then(|r| r.name), error = %e, "could not record an event");
        }
    });
}

/// What a reconcile can fail with: the API server's error, retried with backoff, or a
/// recorded object nasop cannot carry on with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A recorded trial the experiment's search space cannot read.
    #[error(transparent)]
    Record(#[from] status::RecordError),
    #[error("spec.trialTemplate is missing")]
    NoTemplate,
    /// A pod of the trial's name exists and is not the trial's.
    #[error("pod {pod} already exists and belongs to another object; waiting for it to be deleted")]
    PodTaken { pod: String },
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::backoff_delay;
    use std::time::Duration;

    #[test]
    fn errors_back_off_exponentially_with_jitter_up_to_a_minute() {
        assert_eq!(backoff_delay(1, 0.5), Duration::from_millis(250));
        assert_eq!(backoff_delay(3, 0.5), Duration::from_secs(1));
        assert_eq!(backoff_delay(40, 0.5), Duration::from_secs(60));
        // Jitter spreads one delay over [1/2, 3/2) of it.
        assert_eq!(backoff_delay(3, 0.0), Duration::from_millis(500));
        assert!(backoff_delay(3, 0.999) < Duration::from_millis(1500));
    }
}
