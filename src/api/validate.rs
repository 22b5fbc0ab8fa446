//! From a `NasExperimentSpec` to the engine's `Experiment`, with errors that name the field
//! and say what would be valid. The schema already enforces bounds on the API server; this
//! repeats what `nasop run` needs without one and adds the checks a schema cannot express.

use super::experiment::*;
use crate::engine::{Budget, Constraint, Experiment, FinalTraining, MedianStop, Objective};
use crate::strategy::{Algorithm, FidelitySchedule, Settings, StrategyConfig};
use nasop_core::SearchSpace;
use nasop_core::space::{ArchitectureSpace, CellSpace, Domain, Hyperparameter, LayerOptions};

/// A spec field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// The field's path, e.g. `spec.strategy.settings.population`.
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Validates `spec` of the experiment `name`.
pub fn validate(name: &str, spec: &NasExperimentSpec) -> Result<Experiment, ValidationError> {
    let objectives = objectives(&spec.objectives)?;
    let constraints = constraints(&spec.constraints)?;
    let space = search_space(&spec.search_space)?;
    let settings = settings(spec.strategy.algorithm, &spec.strategy.settings)?;
    if spec.strategy.seed > (1u64 << 53) - 1 {
        return Err(invalid(
            "spec.strategy.seed",
            "must be at most 2^53-1 (JSON numbers above it lose precision)",
        ));
    }
    let fidelity = spec.fidelity.as_ref().map(fidelity).transpose()?;
    let budget = budget(&spec.budget)?;
    if let Some(warm) = &spec.warm_start {
        warm_start(name, warm)?;
    }
    if let Some(storage) = &spec.storage {
        self::storage(storage)?;
    }
    if let Some(w) = &spec.wrap {
        wrap(w, spec)?;
    }
    let final_training = spec
        .final_training
        .as_ref()
        .map(|f| final_training(f, &objectives, fidelity.as_ref(), &budget))
        .transpose()?;
    let early_stopping = spec.early_stopping.as_ref().map(|e| MedianStop {
        min_trials: e.min_trials.unwrap_or(3) as usize,
        start_step: e.start_step.unwrap_or(1),
    });
    Ok(Experiment {
        name: name.to_string(),
        space,
        objectives,
        constraints,
        strategy: StrategyConfig {
            algorithm: spec.strategy.algorithm,
            seed: spec.strategy.seed,
            settings,
            fidelity,
        },
        early_stopping,
        budget,
        final_training,
    })
}

fn final_training(
    spec: &FinalTrainingSpec,
    objectives: &[Objective],
    fidelity: Option<&FidelitySchedule>,
    budget: &Budget,
) -> Result<FinalTraining, ValidationError> {
    let field = |name: &str| format!("spec.finalTraining.{name}");
    let within = |name: &str, v: u32, hi: u32| {
        if (1..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(
                field(name),
                format!("{v} is out of range; use 1..={hi}"),
            ))
        }
    };
    let top = within("top", spec.top.unwrap_or(3), 16)?;
    let seeds = within("seeds", spec.seeds.unwrap_or(3), 16)?;
    let largest = fidelity
        .and_then(|f| f.rungs.last().copied())
        .unwrap_or(budget.trial_epochs);
    let epochs = within("epochs", spec.epochs.unwrap_or(largest), 100_000)?;
    let metric = &objectives[0].metric;
    if metric.starts_with("test") {
        return Err(invalid(
            "spec.objectives[0].metric",
            format!(
                "{metric:?} picks final training's winner, which must not be chosen on test data; make the first objective a validation metric (e.g. val_accuracy) and report test metrics beside it"
            ),
        ));
    }
    Ok(FinalTraining { top, epochs, seeds })
}

fn storage(spec: &StorageSpec) -> Result<(), ValidationError> {
    let relative = |field: &str, sub: &str| {
        if sub.is_empty()
            || sub.starts_with('/')
            || sub.split('/').any(|part| part == ".." || part.is_empty())
            || sub.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                field,
                format!("{sub:?} is not a relative path (no leading '/', no '..' or empty parts)"),
            ));
        }
        Ok(())
    };
    let dns = |name: &str| {
        !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.'])
    };
    match (&spec.persistent_volume_claim, &spec.s3) {
        (Some(pvc), None) => {
            let claim = &pvc.claim_name;
            if !dns(claim) {
                return Err(invalid(
                    "spec.storage.persistentVolumeClaim.claimName",
                    format!(
                        "{claim:?} is not a PersistentVolumeClaim name (lower-case letters, digits, '-' and '.')"
                    ),
                ));
            }
            if let Some(sub) = &pvc.sub_path {
                relative("spec.storage.persistentVolumeClaim.subPath", sub)?;
            }
        }
        (None, Some(s3)) => {
            let bucket = &s3.bucket;
            if bucket.len() < 3 || bucket.len() > 63 || !dns(bucket) {
                return Err(invalid(
                    "spec.storage.s3.bucket",
                    format!(
                        "{bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, '-' and '.')"
                    ),
                ));
            }
            if let Some(prefix) = &s3.prefix {
                relative("spec.storage.s3.prefix", prefix)?;
            }
            if let Some(endpoint) = &s3.endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                return Err(invalid(
                    "spec.storage.s3.endpoint",
                    format!("{endpoint:?} is not a URL; give http(s)://host[:port]"),
                ));
            }
            if let Some(secret) = &s3.credentials_secret
                && !dns(secret)
            {
                return Err(invalid(
                    "spec.storage.s3.credentialsSecret",
                    format!("{secret:?} is not a Secret name"),
                ));
            }
        }
        _ => {
            return Err(invalid(
                "spec.storage",
                "give exactly one of persistentVolumeClaim and s3",
            ));
        }
    }
    Ok(())
}

/// spec.wrap: a regular expression that compiles with two captures, and a written command
/// for every container it wraps (an image's entrypoint is out of nasop's sight).
fn wrap(w: &WrapSpec, spec: &NasExperimentSpec) -> Result<(), ValidationError> {
    if let Some(r) = &w.metrics_regex {
        let re = regex::Regex::new(r).map_err(|e| {
            invalid(
                "spec.wrap.metricsRegex",
                format!("{r:?} is not a regular expression: {e}"),
            )
        })?;
        let named = re.capture_names().flatten().any(|n| n == "name")
            && re.capture_names().flatten().any(|n| n == "value");
        if !named && re.captures_len() < 3 {
            return Err(invalid(
                "spec.wrap.metricsRegex",
                format!(
                    "{r:?} must capture the name and the value: two groups, or groups named `name` and `value` (e.g. `(\\w+)=([-+.\\deE]+)`)"
                ),
            ));
        }
    }
    for (i, s) in w.step_metrics.iter().enumerate() {
        if s.is_empty() {
            return Err(invalid(
                format!("spec.wrap.stepMetrics[{i}]"),
                "name a metric, or remove the entry",
            ));
        }
    }
    let needs_command = "nasop wrap runs the command written here (nasop cannot read an image's entrypoint); write the program and its arguments as command (and args)";
    if spec.trial_train_job.is_some() {
        return Err(invalid(
            "spec.wrap",
            "wrap is for trialTemplate and trialJobSet trials; in a TrainJob, run the command as `nasop wrap -- <command>` with nasop in the image, or use the Python helper",
        ));
    }
    if let Some(js) = &spec.trial_job_set {
        let jobs = js
            .spec
            .get("replicatedJobs")
            .and_then(|j| j.as_array())
            .cloned()
            .unwrap_or_default();
        for (i, job) in jobs.iter().enumerate() {
            let command = job
                .pointer("/template/spec/template/spec/containers/0/command")
                .and_then(|c| c.as_array())
                .is_some_and(|c| !c.is_empty());
            if !command {
                return Err(invalid(
                    format!(
                        "spec.trialJobSet.spec.replicatedJobs[{i}].template.spec.template.spec.containers[0].command"
                    ),
                    needs_command,
                ));
            }
        }
        return Ok(());
    }
    let command = spec
        .trial_template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.command.as_ref())
        .is_some_and(|c| !c.is_empty());
    if !command {
        return Err(invalid(
            "spec.trialTemplate.spec.containers[0].command",
            needs_command,
        ));
    }
    Ok(())
}

fn warm_start(name: &str, spec: &WarmStartSpec) -> Result<(), ValidationError> {
    if spec.experiments.is_empty() || spec.experiments.len() > 16 {
        return Err(invalid(
            "spec.warmStart.experiments",
            "name 1 to 16 earlier experiments (or remove warmStart)",
        ));
    }
    for (i, other) in spec.experiments.iter().enumerate() {
        let field = format!("spec.warmStart.experiments[{i}]");
        if other.trim().is_empty() || other.len() > 4096 {
            return Err(invalid(field, "is empty; name an earlier experiment"));
        }
        if other == name {
            return Err(invalid(
                field,
                format!("is this experiment ({name}); name an earlier one"),
            ));
        }
    }
    Ok(())
}

fn check_metric(field: &str, metric: &str) -> Result<(), ValidationError> {
    if metric.is_empty()
        || metric.len() > 63
        || !metric
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(invalid(
            field,
            format!(
                "{metric:?} is not a metric name; use letters, digits, '_', '-' or '.', at most 63"
            ),
        ));
    }
    Ok(())
}

fn objectives(specs: &[ObjectiveSpec]) -> Result<Vec<Objective>, ValidationError> {
    if specs.is_empty() {
        return Err(invalid(
            "spec.objectives",
            "give at least one objective, e.g. [{metric: val_accuracy, goal: maximize}]",
        ));
    }
    let mut out: Vec<Objective> = Vec::new();
    for (i, o) in specs.iter().enumerate() {
        let field = format!("spec.objectives[{i}].metric");
        check_metric(&field, &o.metric)?;
        if out.iter().any(|p| p.metric == o.metric) {
            return Err(invalid(
                field,
                format!("{:?} is already an objective", o.metric),
            ));
        }
        if let Some(t) = o.target
            && !t.is_finite()
        {
            return Err(invalid(
                format!("spec.objectives[{i}].target"),
                "must be a finite number",
            ));
        }
        out.push(Objective {
            metric: o.metric.clone(),
            maximize: o.goal == Goal::Maximize,
            target: o.target,
        });
    }
    Ok(out)
}

fn constraints(specs: &[ConstraintSpec]) -> Result<Vec<Constraint>, ValidationError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("spec.constraints[{i}]");
            check_metric(&format!("{field}.metric"), &c.metric)?;
            match (c.min, c.max) {
                (None, None) => Err(invalid(field, "give min, max or both")),
                (Some(lo), Some(hi)) if lo > hi => Err(invalid(
                    format!("{field}.min"),
                    format!("{lo} is above max {hi}"),
                )),
                _ => Ok(Constraint {
                    metric: c.metric.clone(),
                    min: c.min,
                    max: c.max,
                }),
            }
        })
        .collect()
}

fn search_space(spec: &SearchSpaceSpec) -> Result<SearchSpace, ValidationError> {
    let architecture = match (&spec.cell, &spec.layers) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "spec.searchSpace",
                "give either cell or layers, not both",
            ));
        }
        (Some(c), None) => Some(ArchitectureSpace::Cell(CellSpace {
            nodes: c.nodes as usize,
            operations: c.operations.clone(),
        })),
        (None, Some(layers)) => Some(ArchitectureSpace::Layers(
            layers
                .iter()
                .map(|l| LayerOptions {
                    operations: l.operations.clone(),
                    widths: l.widths.clone(),
                })
                .collect(),
        )),
        (None, None) => None,
    };
    let mut hps = Vec::new();
    for (i, h) in spec.hyperparameters.iter().enumerate() {
        let field = format!("spec.searchSpace.hyperparameters[{i}]");
        let domain = match (&h.int, &h.float, &h.categorical) {
            (Some(r), None, None) => Domain::Int {
                min: r.min,
                max: r.max,
            },
            (None, Some(r), None) => Domain::Real {
                min: r.min,
                max: r.max,
                log: r.log.unwrap_or(false),
            },
            (None, None, Some(values)) => Domain::Choice {
                options: values.clone(),
            },
            _ => {
                return Err(invalid(
                    field,
                    format!("{:?}: give exactly one of int, float, categorical", h.name),
                ));
            }
        };
        hps.push(Hyperparameter {
            name: h.name.clone(),
            domain,
        });
    }
    SearchSpace::new(architecture, hps).map_err(|e| {
        let field = if e.field.is_empty() {
            "spec.searchSpace".to_string()
        } else {
            format!("spec.searchSpace.{}", e.field)
        };
        invalid(field, e.problem)
    })
}

fn settings(algorithm: Algorithm, s: &StrategySettings) -> Result<Settings, ValidationError> {
    let mut out = Settings::default();
    // Which algorithms read each setting: anything else is a mistake worth reporting.
    let uses = |name: &str, users: &[Algorithm]| -> Result<(), ValidationError> {
        if users.contains(&algorithm) {
            Ok(())
        } else {
            let names: Vec<&str> = users.iter().map(|a| a.name()).collect();
            Err(invalid(
                format!("spec.strategy.settings.{name}"),
                format!(
                    "is a setting of {}, not of {algorithm}; remove it",
                    names.join(" and ")
                ),
            ))
        }
    };
    let range = |name: &str, v: f64, lo: f64, hi: f64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(invalid(
                format!("spec.strategy.settings.{name}"),
                format!("{v} is out of range; use {lo}..={hi}"),
            ))
        }
    };
    if let Some(v) = s.population {
        uses("population", &[Algorithm::Evolution, Algorithm::Nsga2])?;
        range("population", v as f64, 2.0, 10_000.0)?;
        out.population = v as usize;
    }
    if let Some(v) = s.sample_size {
        uses("sampleSize", &[Algorithm::Evolution])?;
        range("sampleSize", v as f64, 1.0, out.population as f64)?;
        out.sample_size = v as usize;
    } else {
        out.sample_size = out.sample_size.min(out.population);
    }
    if let Some(v) = s.initial_samples {
        uses("initialSamples", &[Algorithm::Bayesian])?;
        range("initialSamples", v as f64, 1.0, 10_000.0)?;
        out.initial_samples = v as usize;
    }
    if let Some(v) = s.candidates {
        uses("candidates", &[Algorithm::Bayesian])?;
        range("candidates", v as f64, 1.0, 100_000.0)?;
        out.candidates = v as usize;
    }
    if let Some(v) = s.learning_rate {
        uses("learningRate", &[Algorithm::Reinforce])?;
        range("learningRate", v, 0.0, 10.0)?;
        out.learning_rate = v;
    }
    if let Some(v) = s.baseline_decay {
        uses("baselineDecay", &[Algorithm::Reinforce])?;
        range("baselineDecay", v, 0.0, 0.999)?;
        out.baseline_decay = v;
    }
    Ok(out)
}

fn fidelity(f: &FidelitySpec) -> Result<FidelitySchedule, ValidationError> {
    if f.min_epochs == 0 {
        return Err(invalid("spec.fidelity.minEpochs", "must be at least 1"));
    }
    if f.min_epochs > f.max_epochs {
        return Err(invalid(
            "spec.fidelity.minEpochs",
            format!("{} is above maxEpochs {}", f.min_epochs, f.max_epochs),
        ));
    }
    let eta = f.reduction_factor.unwrap_or(3.0);
    if !(1.1..=100.0).contains(&eta) {
        return Err(invalid(
            "spec.fidelity.reductionFactor",
            format!("{eta} is out of range; use 1.1..=100 (3 is usual)"),
        ));
    }
    Ok(FidelitySchedule::geometric(
        f.algorithm,
        f.min_epochs,
        f.max_epochs,
        eta,
    ))
}

fn budget(b: &BudgetSpec) -> Result<Budget, ValidationError> {
    let at_least_one = |name: &str, v: u32| {
        if v >= 1 {
            Ok(())
        } else {
            Err(invalid(format!("spec.budget.{name}"), "must be at least 1"))
        }
    };
    at_least_one("maxTrials", b.max_trials)?;
    at_least_one("parallelism", b.parallelism)?;
    at_least_one("trialEpochs", b.trial_epochs)?;
    if b.trial_timeout_seconds == Some(0) {
        return Err(invalid(
            "spec.budget.trialTimeoutSeconds",
            "must be at least 1 (leave it out for no timeout)",
        ));
    }
    if b.deadline_seconds == Some(0) {
        return Err(invalid(
            "spec.budget.deadlineSeconds",
            "must be at least 1 (leave it out for no deadline)",
        ));
    }
    Ok(Budget {
        max_trials: b.max_trials,
        parallelism: b.parallelism,
        max_failed_trials: b.max_failed_trials,
        trial_epochs: b.trial_epochs,
        trial_timeout: b.trial_timeout_seconds.map(|s| s as f64),
        deadline: b.deadline_seconds.map(|s| s as f64),
    })
}

#[cfg(test)]
mod tests;
