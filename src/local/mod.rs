//! The local runner (`nasop run`): the engine with trials as local processes (or table
//! lookups), state in an append-only journal in the run directory. Running the same command
//! again resumes: finished trials are kept, interrupted ones restart from their checkpoints.

pub mod executor;
pub mod journal;
pub mod manifest;
#[cfg(feature = "plot")]
pub mod plot;
mod progress;
pub mod results;
pub(crate) mod server;
pub mod warm;

use crate::engine::{
    Clock, Engine, Experiment, Report, Seconds, StopReason, TrialPhase, TrialRecord,
};
use anyhow::{Context, Result, bail};
use executor::Executor;
use journal::{Entry, FinishedPhase, Journal};
use nasop_core::contract;
use progress::Progress;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
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

/// How a trial ended, as the journal records it.
struct Outcome {
    phase: FinishedPhase,
    metrics: BTreeMap<String, f64>,
    info: BTreeMap<String, String>,
    reason: String,
}

impl Outcome {
    fn stopped(reason: StopReason) -> Outcome {
        Outcome {
            phase: FinishedPhase::Stopped,
            metrics: BTreeMap::new(),
            info: BTreeMap::new(),
            reason: format!("{reason:?}"),
        }
    }
}

/// One `nasop run`: the run loop's state. Each turn of the loop reads the reports, collects
/// the trials that exited, asks the engine, records and starts trials, and writes every
/// change to the journal before acting on it (the operator's reconcile has the same steps).
struct Run {
    name: String,
    dir: PathBuf,
    executor: Executor,
    experiment: Experiment,
    journal: Journal,
    started_at: Seconds,
    /// CPU threads per trial process.
    threads: usize,
    /// Each recorded trial's seed and the trial it continues.
    seeds: BTreeMap<u32, (u64, Option<u32>)>,
    attempts: BTreeMap<u32, u32>,
    info: BTreeMap<u32, BTreeMap<String, String>>,
    trials: Vec<TrialRecord>,
    engine: Engine,
    active: BTreeMap<u32, Active>,
    server: server::ReportServer,
    reports: Receiver<(u32, contract::Report)>,
    progress: Progress,
}

pub fn run(opts: &RunOptions) -> Result<PathBuf> {
    let mut run = Run::open(opts)?;
    loop {
        let mut busy = run.read_reports()?;
        busy |= run.collect_exited()?;
        run.kill_overdue();
        match run.decide()? {
            Turn::Done => break,
            Turn::Busy(b) => busy |= b,
        }
        busy |= run.start_pending()?;
        run.progress.update(&run.trials, &run.experiment, now());
        if !busy {
            std::thread::sleep(Duration::from_millis(if run.active.is_empty() {
                1
            } else {
                50
            }));
        }
    }
    results::print_table(&run.experiment, &run.trials, &run.info, 10);
    Ok(run.dir)
}

/// What a turn of the loop came to.
enum Turn {
    /// The experiment is over (recorded in the journal).
    Done,
    /// Whether anything happened (if not, the loop sleeps a little).
    Busy(bool),
}

impl Run {
    /// Reads the manifest and the run directory's journal (a run continues where the last
    /// one stopped), and starts the report endpoint.
    fn open(opts: &RunOptions) -> Result<Run> {
        let manifest = manifest::load(&opts.manifest)?;
        let name = manifest.experiment.name.clone();
        let executor = executor::from_template(
            manifest.resource.spec.trial_template.as_ref(),
            manifest.resource.spec.wrap.as_ref(),
        )?;
        // Before anything is written: a warm start that cannot be made leaves no run behind.
        let prior = warm::prior_trials(
            &opts.runs_dir,
            &manifest.resource.spec,
            &manifest.experiment.space,
        )
        .with_context(|| format!("{}: warm start", opts.manifest.display()))?;
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
        let mut trials = replay.trials;
        // Trials that were running when the last run stopped start again (from their checkpoints).
        let resumed = trials.iter().filter(|t| t.phase.is_active()).count();
        for t in trials.iter_mut().filter(|t| t.phase == TrialPhase::Running) {
            t.phase = TrialPhase::Pending;
        }
        let finished_before = trials.len() - resumed;
        let engine = Engine::with_prior(experiment.clone(), &prior);
        let (tx, reports) = std::sync::mpsc::channel();
        let server = server::ReportServer::start(tx)?;
        let progress = Progress::new(&experiment, opts.plain, &trials, started_at);
        if let Some(w) = &manifest.resource.spec.warm_start {
            progress.line(&format!(
                "warm start: the strategy starts from {} results of {}",
                engine.prior_results(),
                w.experiments.join(", ")
            ));
        }
        if finished_before > 0 || resumed > 0 {
            progress.line(&format!(
                "resuming {}: {finished_before} trials recorded, {resumed} to restart",
                dir.display()
            ));
        }
        Ok(Run {
            name,
            dir,
            executor,
            engine,
            experiment,
            journal,
            started_at,
            threads: (cores / slots).max(1),
            seeds: replay.seeds,
            attempts: replay.attempts,
            info: replay.info,
            trials,
            active: BTreeMap::new(),
            server,
            reports,
            progress,
        })
    }

    fn record(&mut self, index: u32) -> &mut TrialRecord {
        self.trials
            .iter_mut()
            .find(|t| t.index == index)
            .expect("the runner only names recorded trials")
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, server::Gates> {
        self.server.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals the reports that arrived and adds them to their trials.
    fn read_reports(&mut self) -> Result<bool> {
        let mut busy = false;
        while let Ok((index, report)) = self.reports.try_recv() {
            busy = true;
            self.journal.append(&Entry::Report {
                index,
                step: report.step,
                metrics: report.metrics.clone(),
            })?;
            if let Some(t) = self.trials.iter_mut().find(|t| t.index == index) {
                t.reports.retain(|r| r.step != report.step);
                t.reports.push(Report {
                    step: report.step,
                    metrics: report.metrics,
                });
            }
        }
        Ok(busy)
    }

    /// Records how each trial process that exited ended: its termination message, else its
    /// last report, and its exit status.
    fn collect_exited(&mut self) -> Result<bool> {
        let exited: Vec<u32> = self
            .active
            .iter_mut()
            .filter_map(|(i, a)| {
                a.child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map(|_| *i)
            })
            .collect();
        let busy = !exited.is_empty();
        for index in exited {
            let mut a = self.active.remove(&index).expect("listed above");
            let status = a.child.as_mut().and_then(|c| c.wait().ok());
            self.gates().close(index);
            let termination =
                std::fs::read_to_string(a.dir.join("termination.json")).unwrap_or_default();
            let last: Option<contract::Report> = serde_json::from_str(&termination).ok();
            // A failed trainer's termination message is its reason, as on the cluster.
            let said = match &last {
                None if !termination.trim().is_empty() => format!(": {}", termination.trim()),
                _ => String::new(),
            };
            let (phase, reason) = match (&a.stop, status, &last) {
                (Some((why, _)), _, _) => (FinishedPhase::Stopped, format!("{why:?}")),
                // A trainer that says it was interrupted (SIGTERM from outside nasop) did not
                // earn its result, whatever its exit code.
                (None, Some(s), Some(r))
                    if s.success() && r.end != Some(contract::RunEnd::Interrupted) =>
                {
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
                metrics = self
                    .record(index)
                    .reports
                    .iter()
                    .max_by_key(|r| r.step)
                    .map(|r| r.metrics.clone())
                    .unwrap_or_default();
            }
            let info = last.map(|r| r.info).unwrap_or_default();
            self.finish(
                index,
                Outcome {
                    phase,
                    metrics,
                    info,
                    reason,
                },
            )?;
        }
        Ok(busy)
    }

    /// Kills the trial processes asked to stop that outstay their grace period.
    fn kill_overdue(&mut self) {
        for a in self.active.values_mut() {
            if let (Some((_, since)), Some(child)) = (&a.stop, a.child.as_mut())
                && since.elapsed() > STOP_GRACE
                && !a.terminated
            {
                let _ = child.kill();
                a.terminated = true;
            }
        }
    }

    /// Asks the engine, then stops, records and (when it is over) ends as it says.
    fn decide(&mut self) -> Result<Turn> {
        let mut busy = false;
        let clock = Clock {
            started_at: self.started_at,
            now: now(),
        };
        let decision = self.engine.decide(&self.trials, clock);
        for stop in &decision.stop {
            let Some(a) = self.active.get_mut(&stop.index) else {
                if self
                    .trials
                    .iter()
                    .any(|t| t.index == stop.index && t.phase == TrialPhase::Pending)
                {
                    busy = true;
                    self.finish(stop.index, Outcome::stopped(stop.reason))?;
                }
                continue;
            };
            if a.stop.is_none() {
                busy = true;
                a.stop = Some((stop.reason, Instant::now()));
                // Early stopping waits for the next report; the others cannot wait.
                if stop.reason != StopReason::EarlyStopped
                    && let Some(child) = &a.child
                {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                }
                self.gates().stop(stop.index);
            }
        }
        for t in &decision.create {
            busy = true;
            self.journal.append(&Entry::Trial {
                index: t.index,
                candidate: t.candidate.clone(),
                epochs: t.epochs,
                seed: t.seed,
                resume_from: t.resume_from,
                stage: t.stage.contract(),
                at: clock.now,
            })?;
            self.seeds.insert(t.index, (t.seed, t.resume_from));
            self.trials.push(TrialRecord {
                index: t.index,
                candidate: t.candidate.clone(),
                point: t.point.clone(),
                key: t.key.clone(),
                epochs: t.epochs,
                stage: t.stage,
                phase: TrialPhase::Pending,
                started_at: None,
                finished_at: None,
                reports: Vec::new(),
                metrics: BTreeMap::new(),
            });
        }
        if let Some(f) = &decision.finish
            && self.active.is_empty()
            && !self.trials.iter().any(|t| t.phase.is_active())
        {
            self.journal.append(&Entry::Done {
                succeeded: f.succeeded,
                reason: format!("{:?}", f.reason),
                message: f.message.clone(),
                at: now(),
            })?;
            self.progress.done(&format!(
                "{}: {}",
                if f.succeeded { "finished" } else { "failed" },
                f.message
            ));
            return Ok(Turn::Done);
        }
        Ok(Turn::Busy(busy))
    }

    /// Starts what is recorded but not running: a process, or a table lookup that ends at once.
    fn start_pending(&mut self) -> Result<bool> {
        let pending: Vec<u32> = self
            .trials
            .iter()
            .filter(|t| t.phase == TrialPhase::Pending && !self.active.contains_key(&t.index))
            .map(|t| t.index)
            .collect();
        let busy = !pending.is_empty();
        for index in pending {
            let attempt = self.attempts.get(&index).copied().unwrap_or(0) + 1;
            self.attempts.insert(index, attempt);
            self.journal.append(&Entry::Started {
                index,
                attempt,
                at: now(),
            })?;
            let record = self
                .trials
                .iter_mut()
                .find(|t| t.index == index)
                .expect("pending trials are recorded");
            record.phase = TrialPhase::Running;
            record.started_at.get_or_insert_with(now);
            match &self.executor {
                Executor::Tabular(table) => {
                    let outcome = match table.evaluate(&record.candidate, record.epochs) {
                        Ok(metrics) => Outcome {
                            phase: FinishedPhase::Succeeded,
                            metrics,
                            info: BTreeMap::new(),
                            reason: "Completed".to_string(),
                        },
                        Err(e) => Outcome {
                            phase: FinishedPhase::Failed,
                            metrics: BTreeMap::new(),
                            info: BTreeMap::new(),
                            reason: format!("TrainerFailed: {e}"),
                        },
                    };
                    let step = record.epochs;
                    record.reports.push(Report {
                        step,
                        metrics: outcome.metrics.clone(),
                    });
                    self.journal.append(&Entry::Report {
                        index,
                        step,
                        metrics: outcome.metrics.clone(),
                    })?;
                    self.finish(index, outcome)?;
                }
                Executor::Process { .. } => {
                    let child = self.spawn(index)?;
                    self.active.insert(index, child);
                }
            }
        }
        Ok(busy)
    }

    /// Starts trial `index`'s process with the trial contract in its environment.
    fn spawn(&self, index: u32) -> Result<Active> {
        let Executor::Process { program, args, env } = &self.executor else {
            unreachable!("only process trials are spawned")
        };
        let record = self
            .trials
            .iter()
            .find(|t| t.index == index)
            .expect("started trials are recorded");
        let (seed, resume_from) = self.seeds.get(&index).copied().unwrap_or_default();
        let input = self.experiment.trial_input(
            format!("{}-{index}", self.name),
            index,
            seed,
            &record.point,
            record.epochs,
            resume_from,
            record.stage,
        );
        let trial_dir = self.dir.join("trials").join(index.to_string());
        std::fs::create_dir_all(&trial_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(trial_dir.join("log.txt"))?;
        let _ = std::fs::remove_file(trial_dir.join("termination.json"));
        let token = server::token();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(contract::ENV_TRIAL, serde_json::to_string(&input)?)
            .env(contract::ENV_REPORT_URL, &self.server.url)
            .env(contract::ENV_REPORT_TOKEN, &token)
            .env(
                contract::ENV_TERMINATION_PATH,
                trial_dir.join("termination.json"),
            )
            .env(contract::ENV_CHECKPOINT_DIR, trial_dir.join("checkpoint"))
            .env(contract::ENV_ARTIFACT_DIR, trial_dir.join("artifact"))
            .env(contract::ENV_THREADS, self.threads.to_string())
            .env("OMP_NUM_THREADS", self.threads.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(parent) = resume_from {
            cmd.env(
                contract::ENV_RESUME_FROM,
                self.dir
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
        self.gates().open(index, &token);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} for trial {index}", program.display()))?;
        Ok(Active {
            child: Some(child),
            dir: trial_dir,
            stop: None,
            terminated: false,
        })
    }

    /// Journals how trial `index` ended and records it.
    fn finish(&mut self, index: u32, outcome: Outcome) -> Result<()> {
        let at = now();
        self.journal.append(&Entry::Finished {
            index,
            phase: outcome.phase,
            metrics: outcome.metrics.clone(),
            info: outcome.info.clone(),
            reason: outcome.reason.clone(),
            at,
        })?;
        self.info.insert(index, outcome.info);
        let t = self.record(index);
        t.phase = outcome.phase.into();
        t.metrics = outcome.metrics;
        t.finished_at = Some(at);
        let took = t.started_at.map(|s| at - s).unwrap_or_default();
        let t = self
            .trials
            .iter()
            .find(|t| t.index == index)
            .expect("recorded above");
        self.progress.trial_line(t, &outcome.reason, took);
        Ok(())
    }
}
