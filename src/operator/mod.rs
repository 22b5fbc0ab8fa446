//! `nasop operator`: NasExperiments on Kubernetes (DESIGN.md, "The operator").
//!
//! Two kube-runtime controllers share one process:
//! - the experiment controller asks the engine what to do and records NasTrials (named
//!   `<experiment>-<index>`, so creating one twice is harmless), asks trials to stop, and
//!   writes the experiment's status;
//! - the trial controller runs each NasTrial as a Pod from the experiment's `trialTemplate`
//!   (one pod per attempt, retried when the cluster loses it) and records what the pod said.
//!
//! Trial reports arrive on `/v1/report` beside `/metrics`, `/healthz` and `/readyz`. All state
//! lives in the API server: a restarted operator rebuilds the strategy from the recorded trials.

pub mod decide;
mod experiment;
mod http;
pub mod index;
pub mod limit;
pub mod metrics;
pub mod pod;
pub mod status;
pub mod token;
mod trial;
mod warm;
mod watch;
pub mod written;

use crate::api::{NasExperiment, NasTrial};
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use metrics::Metrics;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use token::TokenKey;
use tracing::{info, warn};
use written::Written;

/// The field manager of everything the operator writes with server-side apply.
pub const MANAGER: &str = "nasop";

/// `nasop operator` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Address of the HTTP server (metrics, health, trial reports).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The report URL trial pods are given; default
    /// `http://nasop.$POD_NAMESPACE.svc:8080/v1/report` (the chart's Service).
    #[arg(long)]
    pub report_url: Option<String>,
    /// File holding the key that signs trial report tokens (the chart mounts a Secret).
    /// Without it a random key is used, valid until this process exits.
    #[arg(long, default_value = "/etc/nasop/report-key/key")]
    pub report_key_file: PathBuf,
    /// TLS certificate and key for the HTTP server; served over TLS when both exist.
    #[arg(long, default_value = "/etc/nasop/tls/tls.crt")]
    pub tls_cert: PathBuf,
    #[arg(long, default_value = "/etc/nasop/tls/tls.key")]
    pub tls_key: PathBuf,
    /// Take part in leader election with a Lease, so that only one replica acts.
    #[arg(long)]
    pub leader_election: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long)]
    pub lease_namespace: Option<String>,
    #[arg(long, default_value = "nasop-operator")]
    pub lease_name: String,
    /// Seconds a trial asked to stop may take before its pod is deleted.
    #[arg(long, default_value_t = 30)]
    pub stop_grace_seconds: u64,
    /// Pods started per trial when the cluster loses them (eviction, preemption, node loss).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Pods of finished trials kept per experiment (the newest), for `kubectl logs`; older
    /// ones are deleted once their results are recorded.
    #[arg(long, default_value_t = 20)]
    pub keep_finished_pods: usize,
    /// Reconciliations run at once, per controller.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Log format: json (one object per line) or text.
    #[arg(long, default_value = "json")]
    pub log_format: String,
}

/// An experiment's identity in the caches.
pub type ExpKey = (String, String);

/// What the operator keeps about one experiment between reconciles. All of it can be
/// rebuilt from the API server; it is here so that a reconcile does not redo it.
#[derive(Default)]
pub struct ExperimentState {
    /// The experiment as last parsed, with the resourceVersion it was parsed from.
    parsed: Option<(String, Arc<NasExperiment>)>,
    /// The engine and the trial records (rebuilt when the spec or the UID changes).
    pub engine: Option<experiment::Cached>,
    /// When trial slots came free, oldest first (for the queue metric).
    free_slots: VecDeque<Instant>,
    /// The phase last counted in the experiments-by-phase metric.
    pub phase: Option<String>,
    /// The ended status this process wrote: the experiment's status while the store still
    /// shows an older version without the end.
    pub ended: Option<crate::api::NasExperimentStatus>,
    /// Finished trials in the order they ended, whose pods are kept for now; the oldest
    /// beyond `--keep-finished-pods` have their pods deleted.
    pub finished: VecDeque<(f64, String, u32)>,
    /// Every finished trial already placed in `finished` (or cleaned up).
    pub seen_finished: std::collections::HashSet<String>,
    /// Trials this process created that the trial store may not show yet (see
    /// [`experiment::with_created`]).
    pub created: Written<NasTrial>,
}

/// What the controllers and the report endpoint share.
pub struct Ctx {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub key: TokenKey,
    pub report_url: String,
    /// This replica's name in the events it writes.
    pub instance: String,
    /// Experiments, untyped: each is parsed on its own (see [`Ctx::experiment`]).
    pub experiments: Store<DynamicObject>,
    pub experiment_resource: ApiResource,
    pub trials: Store<NasTrial>,
    /// The trials of each experiment, by its UID.
    pub index: Arc<index::TrialIndex>,
    pub pods: Store<Pod>,
    pub stop_grace: Duration,
    pub max_attempts: u32,
    pub keep_finished_pods: usize,
    /// Per-experiment state, each behind its own lock: one experiment's decision never
    /// waits for another's. The map's lock is only held to find an entry.
    pub state: Mutex<HashMap<ExpKey, Arc<Mutex<ExperimentState>>>>,
    /// Experiments whose decisions read progress reports (early stopping): a report wakes
    /// their reconcile.
    pub reporting: Arc<Mutex<std::collections::HashSet<ExpKey>>>,
    /// The per-trial rate limit on reports.
    pub reports: limit::ReportLimit,
    /// Consecutive failed reconciles per object, for the error backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    pub ready: std::sync::atomic::AtomicBool,
    /// Trial statuses we wrote whose new version the store may not have yet (see
    /// [`trial::freshest`]).
    pub written_trials: Mutex<Written<NasTrial>>,
    /// Pods this process created that the pod store may not show yet (see [`Ctx::pod`]).
    pub written_pods: Mutex<Written<Pod>>,
}

impl Ctx {
    /// A pod from the store, or one this process created moments ago that the store does not
    /// show yet.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        let stored = self.pods.get(&ObjectRef::new(name).within(ns));
        lock(&self.written_pods).newest(ns, name, stored, Instant::now())
    }

    /// The state of one experiment (created empty on first use).
    pub fn state_of(&self, key: &ExpKey) -> Arc<Mutex<ExperimentState>> {
        lock(&self.state).entry(key.clone()).or_default().clone()
    }

    pub fn slot_freed(&self, key: &ExpKey) {
        lock(&self.state_of(key))
            .free_slots
            .push_back(Instant::now());
    }

    pub fn slot_taken(&self, key: &ExpKey) {
        let state = self.state_of(key);
        let at = lock(&state).free_slots.pop_front();
        if let Some(at) = at {
            self.metrics
                .queue_latency
                .observe(at.elapsed().as_secs_f64());
        }
    }

    /// The experiment `name` in `namespace` from the store, parsed (once per version).
    /// None when the store does not have it; an error names the field nasop cannot read.
    pub fn experiment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Result<Arc<NasExperiment>, String>> {
        let object = self
            .experiments
            .get(&ObjectRef::new_with(name, self.experiment_resource.clone()).within(namespace))?;
        Some(self.parse(&object))
    }

    /// Parses a stored experiment, reusing the last parse of the same version.
    pub fn parse(&self, object: &DynamicObject) -> Result<Arc<NasExperiment>, String> {
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        let version = object.resource_version().unwrap_or_default();
        let state = self.state_of(&key);
        let cached = lock(&state)
            .parsed
            .as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, p)| p.clone());
        if let Some(parsed) = cached {
            return Ok(parsed);
        }
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        let parsed = Arc::new(crate::api::parse_experiment(value)?);
        lock(&state).parsed = Some((version, parsed.clone()));
        Ok(parsed)
    }

    /// Waits until the watch caches have listed everything once: before that, an
    /// experiment would be reconciled against a partial set of trials and pods.
    pub async fn caches_ready(&self) {
        let _ = self.trials.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.experiments.wait_until_ready().await;
    }

    /// How long to wait after a failed reconcile of `uid`: exponential from 250 ms to a
    /// minute, with jitter so that objects that failed together do not retry together.
    pub fn backoff(&self, uid: &str) -> Duration {
        let mut failures = lock(&self.failures);
        let n = failures.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n, jitter())
    }

    pub fn succeeded(&self, uid: &str) {
        lock(&self.failures).remove(uid);
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
        reporting_instance: Some(ctx.instance.clone()),
        ..Default::default()
    };
    tokio::spawn(async move {
        if let Err(e) = api.create(&Default::default(), &event).await {
            warn!(object = ?event.regarding.and_then(|r| r.name), error = %e, "could not record an event");
        }
    });
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_lease_manager=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}

fn report_key(args: &OperatorArgs) -> Result<TokenKey> {
    if args.report_key_file.exists() {
        TokenKey::from_file(&args.report_key_file)
    } else {
        warn!(
            path = %args.report_key_file.display(),
            "no report-token key file; using a random key for this process (pods started by an earlier process will report through their termination message only)"
        );
        Ok(TokenKey::random())
    }
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: OperatorArgs) -> Result<()> {
    init_logs(&args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let client = counted_client(&metrics)
        .await
        .context("connecting to Kubernetes (in a pod: the service account; else $KUBECONFIG or ~/.kube/config)")?;
    let pod_namespace = std::env::var("POD_NAMESPACE").ok();
    let report_url = match (&args.report_url, &pod_namespace) {
        (Some(u), _) => u.clone(),
        (None, Some(ns)) => format!("http://nasop.{ns}.svc:{}/v1/report", args.listen.port()),
        (None, None) => format!("http://127.0.0.1:{}/v1/report", args.listen.port()),
    };
    let key = report_key(&args)?;

    let experiment_resource = ApiResource::erase::<NasExperiment>(&());
    let w = watch::start(&client, &args.namespace, &experiment_resource);
    let exp_controller = Controller::for_stream_with(
        w.experiments,
        w.experiment_store.clone(),
        experiment_resource.clone(),
    )
    .reconcile_on(w.wake)
    .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency));
    let trial_controller = Controller::for_stream(w.trials, w.trial_store.clone())
        .owns_stream(w.pods)
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency));

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        metrics: metrics.clone(),
        key,
        report_url: report_url.clone(),
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "nasop-operator".into()),
        experiments: w.experiment_store,
        experiment_resource,
        trials: w.trial_store,
        index: w.index,
        pods: w.pod_store,
        stop_grace: Duration::from_secs(args.stop_grace_seconds),
        max_attempts: args.max_attempts.max(1),
        keep_finished_pods: args.keep_finished_pods,
        state: Mutex::default(),
        failures: Mutex::default(),
        reports: Default::default(),
        reporting: w.reporting,
        ready: false.into(),
        written_trials: Mutex::default(),
        written_pods: Mutex::default(),
    });

    let server = tokio::spawn(http::serve(
        args.listen,
        args.tls_cert.clone(),
        args.tls_key.clone(),
        ctx.clone(),
    ));

    // Leadership: without election this process acts at once.
    let mut leader_lost = None;
    if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .or(pod_namespace)
            .unwrap_or_else(|| "default".into());
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&ns)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .context("creating the leader-election lease manager")?;
        let (mut channel, task) = manager.watch().await;
        info!(lease = %args.lease_name, namespace = %ns, "waiting for the leader lease");
        while !*channel.borrow_and_update() {
            tokio::select! {
                r = channel.changed() => r.context("the lease manager stopped")?,
                _ = shutdown_signal() => { return Ok(()); }
            }
        }
        info!(lease = %args.lease_name, "acquired the leader lease");
        leader_lost = Some((channel, task));
    }
    // Nothing is decided from a cache that has not listed everything yet: an experiment
    // reconciled against half its trials would rewrite its status.
    ctx.caches_ready().await;
    metrics.leader.set(1);
    ctx.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(%report_url, listen = %args.listen, "operator running");

    tokio::spawn(sweep(ctx.clone()));

    let exp_ctx = ctx.clone();
    let exps = exp_controller
        .graceful_shutdown_on(shutdown_signal())
        .run(
            move |e, c| {
                let uid = e.uid().unwrap_or_default();
                timed(c.clone(), "nasexperiment", uid, experiment::reconcile(e, c))
            },
            experiment::error_policy,
            exp_ctx,
        )
        .for_each(|_| futures::future::ready(()));
    let trials = trial_controller
        .graceful_shutdown_on(shutdown_signal())
        .run(
            move |t, c| {
                let uid = t.uid().unwrap_or_default();
                timed(c.clone(), "nastrial", uid, trial::reconcile(t, c))
            },
            trial::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let mut lease = leader_lost;
    let lost = async {
        match lease.as_mut() {
            Some((channel, _)) => loop {
                if channel.changed().await.is_err() || !*channel.borrow_and_update() {
                    break;
                }
            },
            None => futures::future::pending::<()>().await,
        }
    };
    let stuck = async {
        shutdown_signal().await;
        tokio::time::sleep(Duration::from_secs(20)).await;
    };
    let lost_lease = tokio::select! {
        _ = futures::future::join(exps, trials) => { info!("controllers stopped"); false }
        _ = stuck => { warn!("reconciles still running 20 s after the signal; exiting anyway"); false }
        _ = lost => true,
    };
    if lost_lease {
        // Another replica may act now; stop at once rather than race it.
        anyhow::bail!("lost the leader lease; exiting so that only the new leader acts");
    }
    // Hand the lease over now rather than let it expire: the replacement pod leads (and
    // takes trial reports) at once instead of up to 15 s later. The lease manager releases
    // it when its channel is dropped.
    if let Some((channel, task)) = lease {
        drop(channel);
        match tokio::time::timeout(Duration::from_secs(3), task).await {
            Ok(Ok(Ok(_))) => info!(lease = %args.lease_name, "released the leader lease"),
            Ok(Ok(Err(e))) => {
                warn!(error = %e, "could not release the leader lease; it expires on its own")
            }
            Ok(Err(e)) => {
                warn!(error = %e, "the lease manager failed; the lease expires on its own")
            }
            Err(_) => warn!("releasing the leader lease took over 3 s; it expires on its own"),
        }
    }
    server.abort();
    Ok(())
}

/// Every 15 s: forgets deleted experiments (their caches and metric series) and written
/// trials the store has caught up with.
async fn sweep(ctx: Arc<Ctx>) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let now = Instant::now();
        lock(&ctx.written_trials).sweep(now, |ns, name| {
            ctx.trials.get(&ObjectRef::new(name).within(ns))
        });
        lock(&ctx.written_pods).sweep(now, |ns, name| {
            ctx.pods.get(&ObjectRef::new(name).within(ns))
        });
        let known: Vec<ExpKey> = lock(&ctx.state).keys().cloned().collect();
        for k in known {
            let gone = ctx
                .experiments
                .get(&ObjectRef::new_with(&k.1, ctx.experiment_resource.clone()).within(&k.0))
                .is_none();
            if gone {
                experiment::forget(&ctx, &k);
            }
        }
    }
}

/// A client that counts its requests in `nasop_kube_requests_total`.
async fn counted_client(metrics: &Arc<Metrics>) -> Result<Client> {
    let config = kube::Config::infer().await?;
    let counter = metrics.kube_requests.clone();
    let layer =
        tower::util::MapRequestLayer::new(move |req: ::http::Request<kube::client::Body>| {
            counter
                .get_or_create(&metrics::MethodLabels {
                    method: req.method().to_string(),
                })
                .inc();
            req
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

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

async fn timed(
    ctx: Arc<Ctx>,
    controller: &'static str,
    uid: String,
    work: impl Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = work.await;
    if result.is_ok() {
        ctx.succeeded(&uid);
    }
    let outcome = match &result {
        Ok(a) if *a == Action::await_change() => "success",
        Ok(_) => "requeue",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciled(controller, started.elapsed(), outcome);
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
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
