//! The operator's three watches (experiments, trials, trial pods), each feeding a cache and
//! running in a task of its own, so that the caches fill, and are waited for before anything
//! is decided, whatever the controllers are doing. The controllers read them from channels.

use super::context::lock;
use super::experiment::ExpKey;
use super::health::Health;
use super::{index, pod};
use crate::api::{NasTrial, TrialPhaseName};
use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tracing::warn;

pub type Items<K> = UnboundedReceiver<Result<K, watcher::Error>>;

pub struct Watches {
    /// Experiments, untyped: a manifest the API server accepted but nasop cannot read (the
    /// trial template is opaque to the API server) must fail that experiment alone, not the
    /// list of all of them.
    pub experiments: Items<DynamicObject>,
    pub experiment_store: Store<DynamicObject>,
    pub trials: Items<NasTrial>,
    pub trial_store: Store<NasTrial>,
    pub pods: Items<Pod>,
    pub pod_store: Store<Pod>,
    pub index: Arc<index::TrialIndex>,
    /// Experiments to reconcile because one of their trials changed in a way that matters.
    pub wake: UnboundedReceiver<ObjectRef<DynamicObject>>,
    /// Experiments whose decisions read progress reports (see [`Wake`]).
    pub reporting: Arc<Mutex<HashSet<ExpKey>>>,
}

fn config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

pub fn start(
    client: &Client,
    namespace: &Option<String>,
    experiment_resource: &ApiResource,
    health: &Arc<Health>,
) -> Watches {
    let exp_api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, experiment_resource),
        None => Api::all_with(client.clone(), experiment_resource),
    };
    let exp_writer = reflector::store::Writer::<DynamicObject>::new(experiment_resource.clone());
    let experiment_store = exp_writer.as_reader();
    let experiments = watcher(exp_api, config())
        .default_backoff()
        .reflect(exp_writer)
        .inspect(heard(health.clone(), "nasexperiments"))
        .touched_objects();

    // Trials: one watch feeds the trial store, the per-experiment index, the trial
    // controller, and (after the store has the change) the experiment controller's wake-ups.
    let trial_api: Api<NasTrial> = scoped(client, namespace);
    let (trial_store, trial_writer) = reflector::store::<NasTrial>();
    let index = Arc::new(index::TrialIndex::default());
    let (wake_tx, wake) = unbounded();
    let reporting: Arc<Mutex<HashSet<ExpKey>>> = Arc::default();
    let mut waker = Wake {
        phases: HashMap::new(),
        reporting: reporting.clone(),
        index: index.clone(),
        resource: experiment_resource.clone(),
        tx: wake_tx,
    };
    let trials = watcher(trial_api, config())
        .default_backoff()
        .modify(|t: &mut NasTrial| t.managed_fields_mut().clear())
        .reflect(trial_writer)
        .inspect(heard(health.clone(), "nastrials"))
        .inspect(move |e| {
            if let Ok(e) = e {
                waker.follow(e);
            }
        })
        .touched_objects();

    let pod_api: Api<Pod> = scoped(client, namespace);
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let pods = watcher(pod_api, config().labels(pod::LABEL_TRIAL))
        .default_backoff()
        .modify(pod::strip)
        .reflect(pod_writer)
        .inspect(heard(health.clone(), "pods"))
        .touched_objects();

    Watches {
        experiments: drive("nasexperiments", experiments),
        experiment_store,
        trials: drive("nastrials", trials),
        trial_store,
        pods: drive("pods", pods),
        pod_store,
        index,
        wake,
        reporting,
    }
}

/// Tells `health` how the watch of `resource` is doing.
fn heard<K>(
    health: Arc<Health>,
    resource: &'static str,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |e| match e {
        Ok(_) => health.seen(resource),
        Err(e) => health.failed(resource, e.to_string()),
    }
}

/// Runs a watch stream in a task of its own and hands its objects on through a channel.
///
/// Errors stay here: the watch retries them under its own backoff, and logging them is all
/// that is left to do. Handed on, they would cost far more: kube's `Controller` backs its
/// whole trigger stream off on every error it reads (800 ms doubling to 30 s, reset only
/// after two quiet minutes), so the errors queued while the API server restarted (one per
/// retry) held every reconcile back for over six minutes after it was back (chaos seed
/// 988360: all pods done, no trial updated).
fn drive<K: Send + 'static>(
    resource: &'static str,
    stream: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> Items<K> {
    let (tx, rx) = unbounded();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(object) => {
                    if tx.unbounded_send(Ok(object)).is_err() {
                        break;
                    }
                }
                Err(e) => warn!(resource, error = %e, "watch failed; retrying"),
            }
        }
    });
    rx
}

/// Follows the trial watch: keeps the index, and wakes a trial's experiment when the trial
/// appears, changes phase, is asked to stop or goes. A progress report alone wakes it only
/// when the experiment stops trials early (the one decision that reads reports), so a
/// report costs a status write, not a reconcile of the whole experiment.
struct Wake {
    /// Each trial's phase, and its reason and message while Pending.
    #[allow(clippy::type_complexity)]
    phases: HashMap<
        (String, String),
        (
            Option<TrialPhaseName>,
            Option<(Option<String>, Option<String>)>,
        ),
    >,
    reporting: Arc<Mutex<HashSet<ExpKey>>>,
    index: Arc<index::TrialIndex>,
    resource: ApiResource,
    tx: UnboundedSender<ObjectRef<DynamicObject>>,
}

impl Wake {
    fn follow(&mut self, event: &watcher::Event<NasTrial>) {
        self.index.apply(event);
        if let Some((ns, name)) = self.wakes(event) {
            let _ = self
                .tx
                .unbounded_send(ObjectRef::new_with(&name, self.resource.clone()).within(&ns));
        }
    }

    /// The experiment this event should wake, if any.
    fn wakes(&mut self, event: &watcher::Event<NasTrial>) -> Option<ExpKey> {
        let (trial, deleted) = match event {
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) => (t, false),
            watcher::Event::Delete(t) => (t, true),
            _ => return None,
        };
        let ns = trial.namespace().unwrap_or_default();
        let id = (ns.clone(), trial.name_any());
        let phase = trial.status.as_ref().and_then(|s| s.phase);
        // A waiting trial's reason and message, which the experiment's TrialsPending
        // condition shows (a queue's word can change while the phase does not).
        let waits = trial
            .status
            .as_ref()
            .filter(|s| s.phase == Some(TrialPhaseName::Pending))
            .map(|s| (s.reason.clone(), s.message.clone()));
        let changed = if deleted {
            self.phases.remove(&id);
            true
        } else {
            let seen = (phase, waits);
            self.phases.get(&id) != Some(&seen) && {
                self.phases.insert(id, seen);
                true
            }
        };
        let key = (ns, trial.spec.experiment.clone());
        (changed || trial.spec.stop.is_some() || lock(&self.reporting).contains(&key))
            .then_some(key)
    }
}

/// An API over `namespace`, or over all namespaces.
fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NasTrialSpec, NasTrialStatus, ReportEntry};

    fn trial(phase: Option<TrialPhaseName>, reports: u32) -> NasTrial {
        let mut t = NasTrial::new(
            "e-0",
            NasTrialSpec {
                experiment: "e".into(),
                index: 0,
                candidate: "c".into(),
                epochs: 1,
                seed: 0,
                resume_from: None,
                stage: None,
                stop: None,
            },
        );
        t.metadata.namespace = Some("ns".into());
        t.status = Some(NasTrialStatus {
            phase,
            history: (1..=reports)
                .map(|step| ReportEntry {
                    step,
                    metrics: Default::default(),
                })
                .collect(),
            ..Default::default()
        });
        t
    }

    #[test]
    fn a_report_wakes_the_experiment_only_when_it_stops_trials_early() {
        let (tx, _rx) = unbounded();
        let mut wake = Wake {
            phases: HashMap::new(),
            reporting: Arc::default(),
            index: Arc::default(),
            resource: ApiResource::erase::<crate::api::NasExperiment>(&()),
            tx,
        };
        let key = Some(("ns".to_string(), "e".to_string()));
        let running = Some(TrialPhaseName::Running);
        assert_eq!(wake.wakes(&watcher::Event::Apply(trial(running, 0))), key);
        // A report: same phase, nothing to decide.
        assert_eq!(wake.wakes(&watcher::Event::Apply(trial(running, 1))), None);
        lock(&wake.reporting).insert(key.clone().unwrap());
        assert_eq!(wake.wakes(&watcher::Event::Apply(trial(running, 2))), key);
        lock(&wake.reporting).clear();
        let done = Some(TrialPhaseName::Succeeded);
        assert_eq!(wake.wakes(&watcher::Event::Apply(trial(done, 2))), key);
        assert_eq!(wake.wakes(&watcher::Event::Delete(trial(done, 2))), key);
    }

    /// The errors of an outage never reach the controllers, whose trigger backoff would
    /// hold every reconcile back for each of them.
    #[tokio::test]
    async fn watch_errors_are_not_handed_to_the_controllers() {
        let items = futures::stream::iter([
            Err(watcher::Error::NoResourceVersion),
            Ok(1),
            Err(watcher::Error::NoResourceVersion),
            Err(watcher::Error::NoResourceVersion),
            Ok(2),
        ]);
        let got: Vec<_> = drive("test", items).collect().await;
        let got: Vec<i32> = got.into_iter().map(|r| r.expect("only objects")).collect();
        assert_eq!(got, [1, 2]);
    }
}
