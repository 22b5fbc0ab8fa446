//! The wiring: `nasop operator` starts the watches, the HTTP server and both controllers,
//! waits for the leader lease when asked to, and stops on SIGTERM or a lost lease.

use super::context::{Backoff, Ctx, Error, Settings, Stores, WrittenObjects, lock};
use super::experiment::{self, States};
use super::health::Health;
use super::lease::{self, Elector, Leadership, fence_layer};
use super::metrics::{self, Metrics};
use super::{http, pod, trial, watch};
use crate::api::{NasExperiment, NasTrial};
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ApiResource;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
    /// The image wrapped trials (spec.wrap) copy the static `nasop` from, in an init
    /// container: the operator's own (the Helm chart passes it).
    #[arg(long, default_value = concat!("ghcr.io/nasop/nasop:", env!("CARGO_PKG_VERSION")))]
    pub wrap_image: String,
    /// Log format: json (one object per line) or text.
    #[arg(long, default_value = "json")]
    pub log_format: String,
}

fn init_logs(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
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

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: OperatorArgs) -> Result<()> {
    init_logs(&args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let leadership = if args.leader_election {
        Leadership::elected()
    } else {
        Leadership::always()
    };
    let mut kube_config = kube::Config::infer()
        .await
        .context("connecting to Kubernetes (in a pod: the service account; else $KUBECONFIG or ~/.kube/config)")?;
    kube_config.connect_timeout = Some(lease::CONNECT_TIMEOUT);
    let client = counted_client(kube_config.clone(), &metrics, leadership.clone())?;
    let pod_namespace = std::env::var("POD_NAMESPACE").ok();
    let report_url = match (&args.report_url, &pod_namespace) {
        (Some(u), _) => u.clone(),
        (None, Some(ns)) => format!("http://nasop.{ns}.svc:{}/v1/report", args.listen.port()),
        (None, None) => format!("http://127.0.0.1:{}/v1/report", args.listen.port()),
    };
    let experiment_resource = ApiResource::erase::<NasExperiment>(&());
    let health = Arc::new(Health::default());
    let w = watch::start(&client, &args.namespace, &experiment_resource, &health);
    let config = Config::default().concurrency(args.concurrency);
    let exp_controller = Controller::for_stream_with(
        w.experiments,
        w.experiment_store.clone(),
        experiment_resource.clone(),
    )
    .reconcile_on(w.wake)
    .with_config(config.clone());
    let trial_controller = Controller::for_stream(w.trials, w.trial_store.clone())
        // A pod wakes the trial its label names: the trial's own pods, and the pods of its
        // JobSet (owned by Jobs). Which pods count is the trial controller's to check.
        .watches_stream(w.pods, |p: Pod| {
            let ns = p.namespace();
            pod::trial_of(&p).map(|t| {
                let r = ObjectRef::<NasTrial>::new(t);
                match ns {
                    Some(ns) => r.within(&ns),
                    None => r,
                }
            })
        })
        .with_config(config);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        metrics: metrics.clone(),
        settings: Settings {
            report_url: report_url.clone(),
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| "nasop-operator".into()),
            controller: format!(
                "{}/{}",
                lease_namespace(&args, pod_namespace.clone()),
                args.lease_name
            ),
            stop_grace: Duration::from_secs(args.stop_grace_seconds),
            max_attempts: args.max_attempts.max(1),
            keep_finished_pods: args.keep_finished_pods,
            wrap_image: args.wrap_image.clone(),
        },
        stores: Stores {
            experiments: w.experiment_store,
            experiment_resource,
            trials: w.trial_store,
            index: w.index,
            pods: w.pod_store,
        },
        states: States::new(w.reporting),
        written: WrittenObjects::default(),
        reports: Default::default(),
        reviews: Default::default(),
        elsewhere: Default::default(),
        leadership: leadership.clone(),
        health,
        backoff: Backoff::default(),
        queue_messages: Default::default(),
        ready: false.into(),
    });
    let server = tokio::spawn(http::serve(
        args.listen,
        args.tls_cert.clone(),
        args.tls_key.clone(),
        ctx.clone(),
    ));
    let lease = if args.leader_election {
        match lead(&args, kube_config, pod_namespace, leadership).await? {
            Some(lease) => Some(lease),
            None => return Ok(()),
        }
    } else {
        None
    };
    // Nothing is decided from a cache that has not listed everything yet: an experiment
    // reconciled against half its trials would rewrite its status.
    ctx.caches_ready().await;
    metrics.leader.set(1);
    ctx.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(%report_url, listen = %args.listen, "operator running");
    tokio::spawn(sweep(ctx.clone()));

    let exps = exp_controller
        .graceful_shutdown_on(shutdown_signal())
        .run(
            move |e, c| {
                let uid = e.uid().unwrap_or_default();
                timed(c.clone(), "nasexperiment", uid, experiment::reconcile(e, c))
            },
            experiment::error_policy,
            ctx.clone(),
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
    let outcome = until_stopped(futures::future::join(exps, trials), lease).await;
    server.abort();
    outcome
}

/// The leader Lease's namespace: --lease-namespace, else this pod's, else "default".
fn lease_namespace(args: &OperatorArgs, pod_namespace: Option<String>) -> String {
    args.lease_namespace
        .clone()
        .or(pod_namespace)
        .unwrap_or_else(|| "default".into())
}

/// Waits for the leader lease (`--leader-election`); None when a signal came first. The
/// lease is read and written with a client of its own, outside the fence it lifts.
async fn lead(
    args: &OperatorArgs,
    config: kube::Config,
    pod_namespace: Option<String>,
    leadership: Arc<Leadership>,
) -> Result<Option<Elector>> {
    let ns = lease_namespace(args, pod_namespace);
    let client = Client::try_from(config).context("the leader lease's client")?;
    let identity = format!(
        "{}_{}",
        std::env::var("POD_NAME").unwrap_or_else(|_| "nasop".into()),
        nasop_core::rng::os_random_hex(4)
    );
    let mut elector = Elector::new(
        Api::namespaced(client, &ns),
        &args.lease_name,
        &identity,
        leadership,
    );
    info!(lease = %args.lease_name, namespace = %ns, %identity, "waiting for the leader lease");
    tokio::select! {
        () = elector.acquire() => Ok(Some(elector)),
        () = shutdown_signal() => Ok(None),
    }
}

/// Runs the controllers until they stop after a signal (or 20 s after it, if a reconcile
/// hangs), or until the lease is lost; then hands the lease over.
async fn until_stopped(controllers: impl Future, mut lease: Option<Elector>) -> Result<()> {
    let lost = async {
        match lease.as_mut() {
            Some(elector) => elector.keep().await,
            None => futures::future::pending::<String>().await,
        }
    };
    let stuck = async {
        shutdown_signal().await;
        tokio::time::sleep(Duration::from_secs(20)).await;
    };
    let lost_lease = tokio::select! {
        _ = controllers => { info!("controllers stopped"); None }
        _ = stuck => { warn!("reconciles still running 20 s after the signal; exiting anyway"); None }
        why = lost => Some(why),
    };
    if let Some(why) = lost_lease {
        // Another replica may act now; stop at once rather than race it. The fence already
        // refuses every write of this process.
        anyhow::bail!("lost the leader lease ({why}); exiting so that only the new leader acts");
    }
    if let Some(mut elector) = lease
        && tokio::time::timeout(Duration::from_secs(3), elector.release())
            .await
            .is_err()
    {
        warn!("releasing the leader lease took over 3 s; it expires on its own");
    }
    Ok(())
}

/// Every 15 s: forgets deleted (or replaced) experiment objects (their caches and metric
/// series) and written
/// trials the store has caught up with.
async fn sweep(ctx: Arc<Ctx>) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let now = Instant::now();
        lock(&ctx.written.trials).sweep(now, |ns, name| {
            ctx.stores.trials.get(&ObjectRef::new(name).within(ns))
        });
        lock(&ctx.written.pods).sweep(now, |ns, name| {
            ctx.stores.pods.get(&ObjectRef::new(name).within(ns))
        });
        for (uid, key) in ctx.states.entries() {
            let stored = ctx.stores.experiment(&key.0, &key.1);
            if stored.is_none_or(|e| e.uid().as_deref() != Some(uid.as_str())) {
                experiment::forget(&ctx, &uid, &key);
            }
        }
    }
}

/// A client that counts its requests in `nasop_kube_requests_total`, and sends no write
/// while this replica does not lead (lease.rs).
fn counted_client(
    config: kube::Config,
    metrics: &Arc<Metrics>,
    leadership: Arc<Leadership>,
) -> Result<Client> {
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
        .with_layer(&fence_layer(leadership))
        .build())
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
        ctx.backoff.reset(&uid);
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
