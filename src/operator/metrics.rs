//! The operator's Prometheus metrics (ARCHITECTURE.md, "Metrics"): `nasop_`-prefixed, labels
//! bounded (namespace, experiment, phase, result; never a trial name), plus the
//! `controller_runtime_reconcile_*` family that stock operator dashboards read.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabels {
    pub namespace: String,
    pub experiment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub experiment: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentPhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub namespace: String,
    pub experiment: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OnlyResult {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerResult {
    pub controller: String,
    pub result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn duration_histogram() -> Histogram {
    // 1 s .. ~9 days
    Histogram::new(exponential_buckets(1.0, 2.0, 20))
}

pub struct Metrics {
    pub registry: Registry,
    pub experiments: Family<ExperimentPhaseLabels, Gauge>,
    pub trials: Family<PhaseLabels, Gauge>,
    pub trials_finished: Family<ResultLabels, Counter>,
    pub trial_duration: HistogramFamily<OnlyResult>,
    pub best_objective: Family<ExperimentLabels, FloatGauge>,
    pub queue_latency: Histogram,
    pub proposal_latency: Histogram,
    pub report_latency: Histogram,
    pub reports: Family<OnlyResult, Counter>,
    pub gpu_seconds: Family<ExperimentLabels, FloatCounter>,
    pub pod_retries: Family<ExperimentLabels, Counter>,
    pub reconcile_total: Family<ControllerResult, Counter>,
    pub reconcile_errors: Family<ControllerLabels, Counter>,
    pub reconcile_time: HistogramFamily<ControllerLabels>,
    pub leader: Gauge,
    pub kube_requests: Family<MethodLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            experiments: Family::default(),
            trials: Family::default(),
            trials_finished: Family::default(),
            trial_duration: Family::new_with_constructor(duration_histogram),
            best_objective: Family::default(),
            queue_latency: latency_histogram(),
            proposal_latency: latency_histogram(),
            report_latency: latency_histogram(),
            reports: Family::default(),
            gpu_seconds: Family::default(),
            pod_retries: Family::default(),
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_time: Family::new_with_constructor(latency_histogram),
            leader: Gauge::default(),
            kube_requests: Family::default(),
        };
        let mut registry = Registry::default();
        m.register_nasop(&mut registry);
        m.register_controller_runtime(&mut registry);
        m.registry = registry;
        // Series that are zero until something goes wrong exist from the start, so that a
        // dashboard shows 0 rather than "no data" (controller-runtime does the same).
        for controller in ["nasexperiment", "nastrial"] {
            let _ = m.reconcile_errors.get_or_create(&ControllerLabels {
                controller: controller.into(),
            });
        }
        for result in ["accepted", "stop", "refused", "invalid", "error"] {
            let _ = m.reports.get_or_create(&OnlyResult {
                result: result.into(),
            });
        }
        m
    }

    /// nasop's own series, `nasop_*`.
    fn register_nasop(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "nasop_experiments",
            "NasExperiments by phase",
            m.experiments.clone(),
        );
        r.register(
            "nasop_trials",
            "Trials of each experiment by phase",
            m.trials.clone(),
        );
        r.register(
            "nasop_trials_finished",
            "Trials that ended, by result (Succeeded, Failed, EarlyStopped, Timeout, Deadline, ExperimentFinished)",
            m.trials_finished.clone(),
        );
        r.register(
            "nasop_trial_duration_seconds",
            "Running time of ended trials",
            m.trial_duration.clone(),
        );
        r.register(
            "nasop_best_objective",
            "The first objective's value of each experiment's best trial",
            m.best_objective.clone(),
        );
        r.register(
            "nasop_trial_queue_seconds",
            "Time from a free trial slot (a trial ended) to the next trial's pod creation",
            m.queue_latency.clone(),
        );
        r.register(
            "nasop_strategy_proposal_seconds",
            "Time the engine took to decide (strategy proposals included)",
            m.proposal_latency.clone(),
        );
        r.register(
            "nasop_report_seconds",
            "Time to handle one trial report",
            m.report_latency.clone(),
        );
        r.register(
            "nasop_reports",
            "Trial reports by result (accepted, stop, refused, invalid, error)",
            m.reports.clone(),
        );
        r.register(
            "nasop_gpu_seconds",
            "GPU-seconds used by trial pods (requested GPUs times running time)",
            m.gpu_seconds.clone(),
        );
        r.register(
            "nasop_pod_retries",
            "Trial pods lost to eviction, preemption or node loss and started again",
            m.pod_retries.clone(),
        );
        r.register(
            "nasop_leader",
            "1 when this replica holds the leader lease",
            m.leader.clone(),
        );
        r.register(
            "nasop_kube_requests",
            "Requests the operator sent to the Kubernetes API server, by HTTP method (a watch counts once)",
            m.kube_requests.clone(),
        );
    }

    /// The `controller_runtime_reconcile_*` family, so that stock operator dashboards work.
    fn register_controller_runtime(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "controller_runtime_reconcile",
            "Reconciliations per controller and result (success, error, requeue)",
            m.reconcile_total.clone(),
        );
        r.register(
            "controller_runtime_reconcile_errors",
            "Reconciliation errors per controller",
            m.reconcile_errors.clone(),
        );
        r.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of reconciliations per controller",
            m.reconcile_time.clone(),
        );
    }

    /// Creates an experiment's counters at zero when it is first seen.
    pub fn experiment_seen(&self, namespace: &str, experiment: &str) {
        let e = ExperimentLabels {
            namespace: namespace.into(),
            experiment: experiment.into(),
        };
        let _ = self.gpu_seconds.get_or_create(&e);
        let _ = self.pod_retries.get_or_create(&e);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn reconciled(&self, controller: &str, elapsed: Duration, result: &str) {
        let c = ControllerLabels {
            controller: controller.into(),
        };
        self.reconcile_time
            .get_or_create(&c)
            .observe(elapsed.as_secs_f64());
        self.reconcile_total
            .get_or_create(&ControllerResult {
                controller: controller.into(),
                result: result.into(),
            })
            .inc();
        if result == "error" {
            self.reconcile_errors.get_or_create(&c).inc();
        }
    }

    /// Forgets an experiment's labelled series (it was deleted).
    pub fn forget(&self, namespace: &str, experiment: &str) {
        let e = ExperimentLabels {
            namespace: namespace.into(),
            experiment: experiment.into(),
        };
        self.best_objective.remove(&e);
        self.gpu_seconds.remove(&e);
        self.pod_retries.remove(&e);
        for phase in ["Pending", "Running", "Succeeded", "Failed", "Stopped"] {
            self.trials.remove(&PhaseLabels {
                namespace: namespace.into(),
                experiment: experiment.into(),
                phase: phase.into(),
            });
        }
        for result in [
            "Succeeded",
            "Failed",
            "EarlyStopped",
            "Timeout",
            "Deadline",
            "ExperimentFinished",
        ] {
            self.trials_finished.remove(&ResultLabels {
                namespace: namespace.into(),
                experiment: experiment.into(),
                result: result.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_reconcile_family_is_present() {
        let m = Metrics::new();
        m.reconciled("nasexperiment", Duration::from_millis(3), "success");
        m.reconciled("nasexperiment", Duration::from_millis(3), "error");
        m.queue_latency.observe(0.01);
        m.experiment_seen("ns", "exp");
        let text = m.encode();
        for zero in [
            "controller_runtime_reconcile_errors_total{controller=\"nastrial\"} 0",
            "nasop_reports_total{result=\"refused\"} 0",
            "nasop_gpu_seconds_total{namespace=\"ns\",experiment=\"exp\"} 0",
            "nasop_pod_retries_total{namespace=\"ns\",experiment=\"exp\"} 0",
        ] {
            assert!(text.contains(zero), "{zero} missing from\n{text}");
        }
        for name in [
            "controller_runtime_reconcile_total{controller=\"nasexperiment\",result=\"success\"} 1",
            "controller_runtime_reconcile_errors_total{controller=\"nasexperiment\"} 1",
            "controller_runtime_reconcile_time_seconds_bucket",
            "nasop_trial_queue_seconds_count 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                name.starts_with("nasop_") || name.starts_with("controller_runtime_"),
                "{name}"
            );
        }
    }
}
