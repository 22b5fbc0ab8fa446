//! The cluster source: NasExperiments and NasTrials through the user's own kubeconfig and
//! context, the way kubectl reads them. Two watches keep a cache of what the user may list
//! (their RBAC decides); trial logs come from `pods/log` and events from the events API,
//! with the same rights. Nothing is written.

use super::Problem;
use super::model::{Condition, Detail, Event, Key, Summary, Trial};
use crate::api::record::{self, seconds};
use crate::api::{NasExperiment, NasTrial};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, LogParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a page waits for the first list before it says so.
const FIRST_LIST: Duration = Duration::from_secs(15);

pub struct Cluster {
    client: Client,
    /// None: every namespace (`-A`).
    namespace: Option<String>,
    context: String,
    experiments: Store<DynamicObject>,
    trials: Store<NasTrial>,
    /// The last error of each watch (resource → message), cleared when it lists again.
    problems: Arc<Mutex<BTreeMap<&'static str, String>>>,
    changes: tokio::sync::watch::Sender<u64>,
    cache: Mutex<HashMap<Key, (u64, Arc<Detail>)>>,
}

/// Where to look: the kubeconfig's context (or the current one) and a namespace (or the
/// context's), or every namespace.
pub struct Scope {
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub all_namespaces: bool,
}

fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// What a failed request said: the API server's own message when it answered, else the
/// error and its causes.
fn kube_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => error_text(other),
    }
}

fn watch_text(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => kube_text(k),
        watcher::Error::WatchError(status) => status.message.clone(),
        other => error_text(other),
    }
}

impl Cluster {
    pub async fn connect(scope: Scope) -> anyhow::Result<Arc<Cluster>> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = kube::config::KubeConfigOptions {
            context: scope.context.clone(),
            ..Default::default()
        };
        let config = kube::Config::from_kubeconfig(&options).await.map_err(|e| {
            anyhow::anyhow!(
                "reading the kubeconfig ($KUBECONFIG or ~/.kube/config{}): {}",
                scope
                    .context
                    .as_deref()
                    .map(|c| format!(", context {c}"))
                    .unwrap_or_default(),
                error_text(&e)
            )
        })?;
        let namespace = (!scope.all_namespaces).then(|| {
            scope
                .namespace
                .clone()
                .unwrap_or(config.default_namespace.clone())
        });
        let context = scope.context.clone().unwrap_or_else(|| {
            kube::config::Kubeconfig::read()
                .ok()
                .and_then(|k| k.current_context)
                .unwrap_or_else(|| "current context".into())
        });
        let client = Client::try_from(config)?;
        let resource = ApiResource::erase::<NasExperiment>(&());
        let exp_api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let trial_api: Api<NasTrial> = match &namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let exp_writer = reflector::store::Writer::<DynamicObject>::new(resource);
        let experiments = exp_writer.as_reader();
        let (trials, trial_writer) = reflector::store::<NasTrial>();
        let (changes, _) = tokio::sync::watch::channel(0);
        let me = Arc::new(Cluster {
            client,
            namespace,
            context,
            experiments,
            trials,
            problems: Arc::default(),
            changes,
            cache: Mutex::default(),
        });
        let config = || watcher::Config::default().any_semantic();
        let exp_stream = watcher(exp_api, config())
            .default_backoff()
            .modify(|o: &mut DynamicObject| o.managed_fields_mut().clear())
            .reflect(exp_writer);
        let trial_stream = watcher(trial_api, config())
            .default_backoff()
            .modify(|o: &mut NasTrial| o.managed_fields_mut().clear())
            .reflect(trial_writer);
        me.drive("nasexperiments", exp_stream);
        me.drive("nastrials", trial_stream);
        Ok(me)
    }

    fn drive<K: Send + 'static>(
        self: &Arc<Self>,
        resource: &'static str,
        stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let mut problems = me.problems.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(_) => {
                        problems.remove(resource);
                        drop(problems);
                        me.changes.send_modify(|v| *v += 1);
                    }
                    Err(e) => {
                        problems.insert(resource, watch_text(&e));
                    }
                }
            }
        });
    }

    pub fn label(&self) -> String {
        format!(
            "cluster: {} · {}",
            self.context,
            self.namespace
                .as_deref()
                .map(|n| format!("namespace {n}"))
                .unwrap_or_else(|| "all namespaces".into())
        )
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn where_(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("in the namespace {ns}"),
            None => "in all namespaces (-A)".into(),
        }
    }

    /// Waits for both caches' first list; a watch that fails is the page's error.
    async fn ready(&self) -> Result<(), Problem> {
        let deadline = tokio::time::Instant::now() + FIRST_LIST;
        loop {
            {
                let problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((resource, message)) = problems.iter().next() {
                    let forbidden = message.contains("forbidden") || message.contains("Forbidden");
                    return Err(Problem {
                        status: if forbidden { 403 } else { 502 },
                        title: if forbidden {
                            format!("You may not list {resource} {}", self.where_())
                        } else {
                            format!("Cannot list {resource} {}", self.where_())
                        },
                        detail: format!(
                            "The API server said: {message}{}",
                            if forbidden {
                                ". Ask for `list` and `watch` on nasexperiments and nastrials (group nasop.dev) there, or choose a namespace you may read with -n."
                            } else {
                                ""
                            }
                        ),
                    });
                }
            }
            let ready = self.experiments.wait_until_ready().now_or_never_ready()
                && self.trials.wait_until_ready().now_or_never_ready();
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Problem {
                    status: 504,
                    title: format!("No answer from the API server ({})", self.context),
                    detail: format!(
                        "Listing nasexperiments and nastrials {} has not finished in {} s.",
                        self.where_(),
                        FIRST_LIST.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn list(&self) -> Result<Vec<Summary>, Problem> {
        self.ready().await?;
        let mut out: Vec<Summary> = self
            .experiments
            .state()
            .iter()
            .map(|o| summary(o).0)
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn detail(&self, key: &Key) -> Result<Arc<Detail>, Problem> {
        self.ready().await?;
        let version = *self.changes.borrow();
        if let Some((v, d)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            && *v == version
        {
            return Ok(Arc::clone(d));
        }
        let obj = self
            .experiments
            .state()
            .into_iter()
            .find(|o| o.namespace().as_deref() == Some(&key.namespace) && o.name_any() == key.name)
            .ok_or_else(|| Problem {
                status: 404,
                title: format!("No NasExperiment {}/{}", key.namespace, key.name),
                detail: format!(
                    "It is not among the experiments {} this view can list.",
                    self.where_()
                ),
            })?;
        let detail = Arc::new(self.build(&obj).map_err(|p| Problem {
            status: 500,
            title: format!("Cannot show {}/{}", key.namespace, key.name),
            detail: p,
        })?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (v, _)| *v == version);
        cache.insert(key.clone(), (version, Arc::clone(&detail)));
        Ok(detail)
    }

    fn build(&self, obj: &DynamicObject) -> Result<Detail, String> {
        let trials = self.trials.state();
        detail_from(obj, trials.iter().map(|t| t.as_ref()))
    }

    /// The experiment's recent events; an error (no rights on events) is shown as one.
    pub async fn events(&self, key: &Key) -> Vec<Event> {
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = ListParams::default().fields(&format!(
            "involvedObject.name={},involvedObject.kind=NasExperiment",
            key.name
        ));
        match api.list(&params).await {
            Ok(list) => {
                let mut events: Vec<Event> = list
                    .items
                    .into_iter()
                    .map(|e| Event {
                        at: e
                            .last_timestamp
                            .as_ref()
                            .map(|t| seconds(&t.0))
                            .or(e.event_time.as_ref().map(|t| seconds(&t.0))),
                        type_: e.type_.unwrap_or_default(),
                        reason: e.reason.unwrap_or_default(),
                        message: e.message.unwrap_or_default(),
                        count: e.count.unwrap_or(1),
                    })
                    .collect();
                events.sort_by(|a, b| a.at.unwrap_or(0.0).total_cmp(&b.at.unwrap_or(0.0)));
                events
            }
            Err(e) => vec![Event {
                at: None,
                type_: "—".into(),
                reason: "EventsUnavailable".into(),
                message: format!("cannot list events: {}", kube_text(&e)),
                count: 1,
            }],
        }
    }

    pub async fn log(&self, key: &Key, index: u32) -> Result<String, Problem> {
        let detail = self.detail(key).await?;
        let t = detail.trial(index).ok_or_else(|| Problem {
            status: 404,
            title: format!("No trial {index}"),
            detail: format!("{}/{} has no trial {index}", key.namespace, key.name),
        })?;
        let Some(pod) = &t.pod else {
            return Ok("(no pod yet)".into());
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = LogParams {
            tail_lines: Some(200),
            // A pod with a sidecar needs the container named.
            container: detail.container.clone(),
            ..Default::default()
        };
        match api.logs(pod, &params).await {
            Ok(text) => Ok(text),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(format!(
                "(the pod {pod} is gone: nasop deletes a trial's pod after it ends, and its logs go with it)"
            )),
            Err(kube::Error::Api(s)) if s.code == 400 => {
                Ok(format!("(the pod {pod} has not started: {})", s.message))
            }
            Err(e) => Err(Problem {
                status: 502,
                title: format!("Cannot read the logs of {pod}"),
                detail: kube_text(&e),
            }),
        }
    }
}

/// An experiment object and its trials (any of them: those of other experiments are left
/// out) as the pages' model.
pub fn detail_from<'a>(
    obj: &DynamicObject,
    trials: impl Iterator<Item = &'a NasTrial>,
) -> Result<Detail, String> {
    let (summary, parsed) = summary(obj);
    let exp: NasExperiment = parsed.ok_or_else(|| summary.problem.clone().unwrap_or_default())?;
    let engine = crate::api::validate(&summary.key.name, &exp.spec).map_err(|e| e.to_string())?;
    let uid = obj.uid();
    let trials: Vec<Trial> = trials
        .filter(|t| {
            t.namespace().as_deref() == Some(&summary.key.namespace)
                && t.spec.experiment == summary.key.name
                && (uid.is_none()
                    || t.owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == uid.as_ref()))
        })
        .map(|t| trial(&engine, t))
        .collect();
    let started = exp
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| seconds(&t.0))
        .or(summary.created);
    let mut detail = Detail::new(summary, engine, trials, started);
    detail.container = exp
        .spec
        .trial_template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone());
    if let Some(status) = &exp.status {
        detail.message = status.message.clone();
        detail.conditions = status
            .conditions
            .iter()
            .map(|c| Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect();
    }
    Ok(detail)
}

trait NowOrNever {
    fn now_or_never_ready(self) -> bool;
}

impl<F: std::future::Future<Output = Result<(), reflector::store::WriterDropped>>> NowOrNever
    for F
{
    fn now_or_never_ready(self) -> bool {
        matches!(futures::FutureExt::now_or_never(self), Some(Ok(())))
    }
}

/// The list row of an experiment object, and the object parsed (None when it cannot be).
fn summary(o: &DynamicObject) -> (Summary, Option<NasExperiment>) {
    let key = Key {
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
    };
    let created = o.meta().creation_timestamp.as_ref().map(|t| seconds(&t.0));
    let parsed = serde_json::to_value(o)
        .map_err(crate::api::ParseError::json)
        .and_then(crate::api::parse_experiment)
        .map_err(|e| format!("this nasop cannot read it: {e}"));
    let mut s = Summary {
        key,
        phase: "Pending".into(),
        strategy: o
            .data
            .pointer("/spec/strategy/algorithm")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .into(),
        done: 0,
        running: 0,
        total: 0,
        best_value: None,
        created,
        problem: parsed.as_ref().err().cloned(),
    };
    let Ok(exp) = parsed else { return (s, None) };
    if let Some(status) = &exp.status {
        if let Some(p) = &status.phase {
            s.phase = serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
        }
        s.best_value = status.best_value;
        let parts: Vec<u32> = status
            .progress
            .as_deref()
            .unwrap_or_default()
            .split('/')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if let [done, running, total] = parts[..] {
            (s.done, s.running, s.total) = (done, running, total);
        }
    }
    (s, Some(exp))
}

fn trial(exp: &crate::engine::Experiment, t: &NasTrial) -> Trial {
    let status = t.status.clone().unwrap_or_default();
    // A trial whose candidate this space cannot read is still shown, without a point.
    let point = record::point(exp, t).unwrap_or_default();
    let key = if point.is_empty() {
        t.spec.candidate.clone()
    } else {
        exp.space.key(&point)
    };
    let record = record::record_at(t, point, key);
    Trial {
        name: t.name_any(),
        reason: status.reason.clone().unwrap_or_default(),
        message: status.message.clone().unwrap_or_default(),
        attempts: status.attempts,
        pod: status.pod.clone(),
        artifact: status.artifact.clone(),
        resume_from: t.spec.resume_from,
        info: status.final_report.map(|f| f.info).unwrap_or_default(),
        record,
    }
}
