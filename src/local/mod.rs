//! The local runner (`nasop run`): the engine with trials as local processes (or table
//! lookups), state in an append-only journal in the run directory. Running the same command
//! again resumes: finished trials are kept, interrupted ones restart from their checkpoints.

pub mod executor;
pub mod journal;
pub mod manifest;
pub mod plot;
pub mod results;
pub(crate) mod server;

use crate::engine::{Clock, Engine, Experiment, Report, StopReason, TrialPhase, TrialRecord};
use anyhow::{Context, Result, bail};
use executor::Executor;
use journal::{Entry, FinishedPhase, Journal};
use nasop_core::contract::{self, TrialInput};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RunOptions {
    pub manifest: PathBuf,
    /// Where run directories live (`nasop-runs` by default).
    pub runs_dir: PathBuf,
    /// Trials at once (default: what the machine can hold, at most the manifest's parallelism).
    pub parallel: Option<usize>,
    /// Plain log lines even on a terminal.
    pub plain: bool,
}

/// How long a trial may take to stop after being asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// What the search space, strategy and fidelity were: a journal started under another
/// identity cannot be continued.
fn identity(spec: &crate::api::NasExperimentSpec) -> serde_json::Value {
    serde_json::json!({"searchSpace": spec.search_space, "strategy": spec.strategy, "fidelity": spec.fidelity})
}

struct Active {
    child: Option<Child>,
    dir: PathBuf,
    stop: Option<(StopReason, Instant)>,
    terminated: bool,
}

pub fn run(opts: &RunOptions) -> Result<PathBuf> {
    let manifest = manifest::load(&opts.manifest)?;
    let name = manifest.experiment.name.clone();
    let executor = executor::from_template(manifest.resource.spec.trial_template.as_ref())?;
    let dir = opts.runs_dir.join(&name);
    std::fs::create_dir_all(dir.join("trials"))
        .with_context(|| format!("creating the run directory {}", dir.display()))?;
    let journal_path = dir.join("journal.jsonl");
    let replay = Journal::replay(&journal_path, Some(&manifest.experiment.space))?;
    let ident = identity(&manifest.resource.spec);
    if let Some(old) = &replay.identity
        && *old != ident
    {
        let differs: Vec<&str> = ["searchSpace", "strategy", "fidelity"]
            .into_iter()
            .filter(|k| old.get(k) != ident.get(k))
            .collect();
        bail!(
            "{} was started with a different {}; the recorded trials belong to that search. Run with --runs-dir elsewhere, rename metadata.name, or delete {}",
            dir.display(),
            differs.join(" and "),
            dir.display()
        );
    }
    std::fs::write(dir.join("manifest.yaml"), &manifest.text)?;
    let mut journal = Journal::open(&journal_path)?;
    let started_at = match replay.started_at {
        Some(t) => t,
        None => {
            let t = now();
            journal.append(&Entry::Experiment {
                name: name.clone(),
                identity: ident,
                at: t,
            })?;
            t
        }
    };
    let mut experiment = manifest.experiment.clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slots = match (&executor, opts.parallel) {
        (_, Some(p)) => p.max(1),
        (Executor::Tabular(_), None) => experiment.budget.parallelism as usize,
        (Executor::Process { .. }, None) => (experiment.budget.parallelism as usize).min(cores),
    };
    experiment.budget.parallelism = experiment.budget.parallelism.min(slots as u32).max(1);
    let threads = (cores / slots).max(1);
    let mut seeds = replay.seeds.clone();
    let mut attempts = replay.attempts.clone();
    let mut info = replay.info.clone();
    let mut trials: Vec<TrialRecord> = replay.trials;
    // Trials that were running when the last run stopped start again (from their checkpoints).
    let resumed = trials.iter().filter(|t| t.phase.is_active()).count();
    for t in trials.iter_mut().filter(|t| t.phase == TrialPhase::Running) {
        t.phase = TrialPhase::Pending;
    }
    let finished_before = trials.len() - resumed;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = server::ReportServer::start(tx)?;
    let mut engine = Engine::new(experiment.clone());
    let mut active: BTreeMap<u32, Active> = BTreeMap::new();
    let mut progress = Progress::new(&experiment, opts.plain, &trials);
    if finished_before > 0 || resumed > 0 {
        progress.line(&format!(
            "resuming {}: {finished_before} trials recorded, {resumed} to restart",
            dir.display()
        ));
    }
    loop {
        let mut busy = false;
        // Reports.
        while let Ok((index, report)) = rx.try_recv() {
            busy = true;
            journal.append(&Entry::Report {
                index,
                step: report.step,
                metrics: report.metrics.clone(),
            })?;
            if let Some(t) = trials.iter_mut().find(|t| t.index == index) {
                t.reports.retain(|r| r.step != report.step);
                t.reports.push(Report {
                    step: report.step,
                    metrics: report.metrics,
                });
            }
        }
        // Exited processes.
        let exited: Vec<u32> = active
            .iter_mut()
            .filter_map(|(i, a)| {
                a.child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map(|_| *i)
            })
            .collect();
        for index in exited {
            busy = true;
            let mut a = active.remove(&index).expect("listed above");
            let status = a.child.as_mut().and_then(|c| c.wait().ok());
            server
                .gates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .close(index);
            let termination =
                std::fs::read_to_string(a.dir.join("termination.json")).unwrap_or_default();
            let last: Option<contract::Report> = serde_json::from_str(&termination).ok();
            // A failed trainer's termination message is its reason, as on the cluster.
            let said = match &last {
                None if !termination.trim().is_empty() => format!(": {}", termination.trim()),
                _ => String::new(),
            };
            let record = trials
                .iter()
                .find(|t| t.index == index)
                .expect("active trials are recorded");
            let (phase, reason) = match (&a.stop, status, &last) {
                (Some((why, _)), _, _) => (FinishedPhase::Stopped, format!("{why:?}")),
                (None, Some(s), Some(_)) if s.success() => {
                    (FinishedPhase::Succeeded, "Completed".to_string())
                }
                (None, s, _) => (
                    FinishedPhase::Failed,
                    format!(
                        "TrainerFailed: {}{said}; see {}",
                        s.map_or("killed".into(), |s| s.to_string()),
                        a.dir.join("log.txt").display()
                    ),
                ),
            };
            let mut metrics = last.as_ref().map(|r| r.metrics.clone()).unwrap_or_default();
            if metrics.is_empty() {
                metrics = record
                    .reports
                    .iter()
                    .max_by_key(|r| r.step)
                    .map(|r| r.metrics.clone())
                    .unwrap_or_default();
            }
            let extra = last.map(|r| r.info).unwrap_or_default();
            finish(
                &mut journal,
                &mut trials,
                &mut info,
                index,
                phase,
                metrics,
                extra,
                reason,
                &mut progress,
            )?;
        }
        // Stop processes that outstay their grace period.
        for a in active.values_mut() {
            if let (Some((_, since)), Some(child)) = (&a.stop, a.child.as_mut())
                && since.elapsed() > STOP_GRACE
                && !a.terminated
            {
                let _ = child.kill();
                a.terminated = true;
            }
        }
        // The engine.
        let clock = Clock {
            started_at,
            now: now(),
        };
        let decision = engine.decide(&trials, clock);
        for stop in &decision.stop {
            let Some(a) = active.get_mut(&stop.index) else {
                if trials
                    .iter()
                    .any(|t| t.index == stop.index && t.phase == TrialPhase::Pending)
                {
                    busy = true;
                    finish(
                        &mut journal,
                        &mut trials,
                        &mut info,
                        stop.index,
                        FinishedPhase::Stopped,
                        BTreeMap::new(),
                        BTreeMap::new(),
                        format!("{:?}", stop.reason),
                        &mut progress,
                    )?;
                }
                continue;
            };
            if a.stop.is_none() {
                busy = true;
                a.stop = Some((stop.reason, Instant::now()));
                server
                    .gates
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stop(stop.index);
                // Early stopping waits for the next report; the others cannot wait.
                if stop.reason != StopReason::EarlyStopped
                    && let Some(child) = &a.child
                {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                }
            }
        }
        for t in &decision.create {
            busy = true;
            journal.append(&Entry::Trial {
                index: t.index,
                candidate: t.candidate.clone(),
                epochs: t.epochs,
                seed: t.seed,
                resume_from: t.resume_from,
                at: clock.now,
            })?;
            seeds.insert(t.index, (t.seed, t.resume_from));
            trials.push(TrialRecord {
                index: t.index,
                candidate: t.candidate.clone(),
                point: t.point.clone(),
                key: t.key.clone(),
                epochs: t.epochs,
                phase: TrialPhase::Pending,
                started_at: None,
                finished_at: None,
                reports: Vec::new(),
                metrics: BTreeMap::new(),
            });
        }
        if let Some(f) = &decision.finish
            && active.is_empty()
            && !trials.iter().any(|t| t.phase.is_active())
        {
            journal.append(&Entry::Done {
                succeeded: f.succeeded,
                reason: format!("{:?}", f.reason),
                message: f.message.clone(),
                at: now(),
            })?;
            progress.done(&format!(
                "{}: {}",
                if f.succeeded { "finished" } else { "failed" },
                f.message
            ));
            break;
        }
        // Start what is recorded but not running.
        let pending: Vec<u32> = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Pending && !active.contains_key(&t.index))
            .map(|t| t.index)
            .collect();
        for index in pending {
            busy = true;
            let attempt = attempts.get(&index).copied().unwrap_or(0) + 1;
            attempts.insert(index, attempt);
            let record = trials
                .iter_mut()
                .find(|t| t.index == index)
                .expect("pending trials are recorded");
            journal.append(&Entry::Started {
                index,
                attempt,
                at: now(),
            })?;
            record.phase = TrialPhase::Running;
            record.started_at.get_or_insert_with(now);
            let (seed, resume_from) = seeds.get(&index).copied().unwrap_or_default();
            match &executor {
                Executor::Tabular(table) => {
                    let (phase, metrics, reason) =
                        match table.evaluate(&record.candidate, record.epochs) {
                            Ok(m) => (FinishedPhase::Succeeded, m, "Completed".to_string()),
                            Err(e) => (
                                FinishedPhase::Failed,
                                BTreeMap::new(),
                                format!("TrainerFailed: {e}"),
                            ),
                        };
                    journal.append(&Entry::Report {
                        index,
                        step: record.epochs,
                        metrics: metrics.clone(),
                    })?;
                    record.reports.push(Report {
                        step: record.epochs,
                        metrics: metrics.clone(),
                    });
                    finish(
                        &mut journal,
                        &mut trials,
                        &mut info,
                        index,
                        phase,
                        metrics,
                        BTreeMap::new(),
                        reason,
                        &mut progress,
                    )?;
                }
                Executor::Process { program, args, env } => {
                    let input = experiment.trial_input(
                        format!("{name}-{index}"),
                        index,
                        seed,
                        &record.point,
                        record.epochs,
                        resume_from,
                    );
                    let trial_dir = dir.join("trials").join(index.to_string());
                    let token = server::token();
                    server
                        .gates
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .open(index, &token);
                    let child = spawn(
                        program,
                        args,
                        env,
                        &input,
                        &trial_dir,
                        &dir,
                        &server.url,
                        &token,
                        threads,
                    )?;
                    active.insert(
                        index,
                        Active {
                            child: Some(child),
                            dir: trial_dir,
                            stop: None,
                            terminated: false,
                        },
                    );
                }
            }
        }
        progress.update(&trials);
        if !busy {
            std::thread::sleep(Duration::from_millis(if active.is_empty() {
                1
            } else {
                50
            }));
        }
    }
    results::print_table(&experiment, &trials, &info, 10);
    Ok(dir)
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    input: &TrialInput,
    trial_dir: &Path,
    run_dir: &Path,
    url: &str,
    token: &str,
    threads: usize,
) -> Result<Child> {
    std::fs::create_dir_all(trial_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(trial_dir.join("log.txt"))?;
    let _ = std::fs::remove_file(trial_dir.join("termination.json"));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(contract::ENV_TRIAL, serde_json::to_string(input)?)
        .env(contract::ENV_REPORT_URL, url)
        .env(contract::ENV_REPORT_TOKEN, token)
        .env(
            contract::ENV_TERMINATION_PATH,
            trial_dir.join("termination.json"),
        )
        .env(contract::ENV_CHECKPOINT_DIR, trial_dir.join("checkpoint"))
        .env(contract::ENV_THREADS, threads.to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(parent) = input.resume_from {
        cmd.env(
            contract::ENV_RESUME_FROM,
            run_dir
                .join("trials")
                .join(parent.to_string())
                .join("checkpoint"),
        );
    }
    // SAFETY: prctl in the child before exec; it only sets a flag of the calling process.
    unsafe {
        cmd.pre_exec(|| {
            // A trial dies with the runner (kill -9 included) instead of training on unseen.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {} for trial {}", program.display(), input.index))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    journal: &mut Journal,
    trials: &mut [TrialRecord],
    info: &mut BTreeMap<u32, BTreeMap<String, String>>,
    index: u32,
    phase: FinishedPhase,
    metrics: BTreeMap<String, f64>,
    extra: BTreeMap<String, String>,
    reason: String,
    progress: &mut Progress,
) -> Result<()> {
    let at = now();
    journal.append(&Entry::Finished {
        index,
        phase,
        metrics: metrics.clone(),
        info: extra.clone(),
        reason: reason.clone(),
        at,
    })?;
    let t = trials
        .iter_mut()
        .find(|t| t.index == index)
        .expect("finished trials are recorded");
    t.phase = phase.into();
    t.metrics = metrics;
    t.finished_at = Some(at);
    info.insert(index, extra);
    let took = t.started_at.map(|s| at - s).unwrap_or_default();
    progress.trial_line(t, &reason, took);
    Ok(())
}

/// The live display: a progress bar on a terminal, log lines elsewhere.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    objective: String,
    maximize: bool,
    tabular_quiet: bool,
}

impl Progress {
    fn new(exp: &Experiment, plain: bool, trials: &[TrialRecord]) -> Self {
        let bar = (!plain && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(exp.budget.max_trials as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {bar:30} {pos}/{len} trials  {msg}  [{elapsed_precise} < {eta}]",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_position(trials.iter().filter(|t| !t.phase.is_active()).count() as u64);
            bar
        });
        Progress {
            bar,
            objective: exp.objectives[0].metric.clone(),
            maximize: exp.objectives[0].maximize,
            tabular_quiet: exp.budget.max_trials > 200,
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => println!("{text}"),
        }
    }

    fn best(&self, trials: &[TrialRecord]) -> Option<f64> {
        let values = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Succeeded)
            .filter_map(|t| t.metrics.get(&self.objective).copied());
        if self.maximize {
            values.reduce(f64::max)
        } else {
            values.reduce(f64::min)
        }
    }

    fn trial_line(&self, t: &TrialRecord, reason: &str, seconds: f64) {
        if self.tabular_quiet && self.bar.is_none() && t.phase == TrialPhase::Succeeded {
            return;
        }
        let value = t
            .metrics
            .get(&self.objective)
            .map_or("-".into(), |v| format!("{v:.4}"));
        self.line(&format!(
            "trial {:>4} {:<9} {}={value} epochs={} {:.1}s {}  {}",
            t.index,
            format!("{:?}", t.phase).to_lowercase(),
            self.objective,
            t.epochs,
            seconds,
            reason,
            t.candidate
        ));
    }

    fn update(&self, trials: &[TrialRecord]) {
        let Some(bar) = &self.bar else { return };
        let done = trials.iter().filter(|t| !t.phase.is_active()).count();
        let running = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Running)
            .count();
        let failed = trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Failed)
            .count();
        bar.set_position(done as u64);
        let best = self.best(trials).map_or("-".into(), |b| format!("{b:.4}"));
        bar.set_message(format!(
            "running {running}  failed {failed}  best {} {best}",
            self.objective
        ));
    }

    fn done(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        println!("{text}");
    }
}
