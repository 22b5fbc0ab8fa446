//! `nasop wrap -- <command>`: runs an unmodified training command as a trial. It reads the
//! trial contract, hands the command its candidate and hyperparameters (`{name}` in its
//! arguments, and `NASOP_HP_<NAME>` in its environment), reports the metrics it prints
//! (`name=value` lines, Katib's format, or a regular expression) or writes to TensorBoard
//! event files, turns the search's "stop" into SIGTERM for the command's process group
//! (SIGKILL after a grace), and writes the final report as the termination message.
//! Reports go through the same client as nasop-trainer's (`nasop_core::client`).

pub mod lines;
pub mod tfevents;

use anyhow::{Context, Result};
use nasop_core::client::Reporter;
use nasop_core::contract::{self, ReportAction, RunEnd, TrialInput};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

const WHO: &str = "nasop wrap";

#[derive(Debug, Clone, clap::Args)]
pub struct WrapArgs {
    /// A regular expression for metrics in the command's output, capturing the name and
    /// the value (two groups, or groups named `name` and `value`). Default: Katib's
    /// `name=value` format.
    #[arg(long)]
    pub metrics_regex: Option<String>,
    /// Names whose value is the step rather than a metric (default: epoch, step). A line
    /// without one reports at the last step named, or at the next step.
    #[arg(long = "step-metric")]
    pub step_metrics: Vec<String>,
    /// Also read scalars from TensorBoard event files under this directory.
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when the command must stop (shorter than a
    /// pod's default 30 s, so that the final report is written before the kubelet's SIGKILL).
    #[arg(long, default_value_t = 20.0)]
    pub stop_grace_seconds: f64,
    /// The command and its arguments; `{lr}`, `{architecture}`, `{candidate}`, `{epochs}`,
    /// `{seed}`, `{trial}`, `{index}` in them become the trial's values (`${NAME}` is left
    /// to the shell).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// The values a `{name}` in the command may take, and the environment the command gets.
fn values(input: &TrialInput) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    for (name, value) in &input.hyperparameters {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        v.insert(name.clone(), text);
    }
    v.insert("candidate".into(), input.candidate.clone());
    // The architecture's string, or the candidate's part before its hyperparameters.
    let from_candidate = input
        .candidate
        .split(';')
        .next()
        .filter(|a| !a.contains('='))
        .unwrap_or_default()
        .to_string();
    v.insert(
        "architecture".into(),
        input
            .architecture
            .as_ref()
            .map_or(from_candidate, |a| a.string.clone()),
    );
    v.insert("epochs".into(), input.budget.epochs.to_string());
    v.insert("seed".into(), input.seed.to_string());
    v.insert("trial".into(), input.trial.clone());
    v.insert("index".into(), input.index.to_string());
    v
}

/// The command's arguments with every `{name}` replaced; an unknown name is an error that
/// lists the known ones.
pub fn substitute(args: &[String], values: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let placeholder =
        regex::Regex::new(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}").expect("a valid pattern");
    args.iter()
        .map(|arg| {
            let mut missing = None;
            let out = placeholder.replace_all(arg, |c: &regex::Captures| {
                let whole = c.get(0).expect("the match");
                // `${NAME}` is the shell's, not ours.
                if arg[..whole.start()].ends_with('$') {
                    return whole.as_str().to_string();
                }
                values.get(&c[1]).cloned().unwrap_or_else(|| {
                    missing = Some(c[1].to_string());
                    String::new()
                })
            });
            match missing {
                Some(name) => anyhow::bail!(
                    "the argument {arg:?} names {{{name}}}, which this trial has no value for; it has {}",
                    values
                        .keys()
                        .map(|k| format!("{{{k}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => Ok(out.into_owned()),
            }
        })
        .collect()
}

fn env_name(name: &str) -> String {
    format!(
        "NASOP_HP_{}",
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            })
            .collect::<String>()
    )
}

enum Seen {
    Line(lines::Found),
    Scalars(Vec<tfevents::Scalar>),
}

/// What has been reported so far.
#[derive(Default)]
struct Progress {
    /// Each metric's last value: the final report's metrics.
    last: BTreeMap<String, f64>,
    /// Each step's metrics, as reported (a step may gain metrics from later lines).
    steps: BTreeMap<u32, BTreeMap<String, f64>>,
    step: u32,
    /// Whether the output has named a step: then lines without one belong to it.
    named: bool,
}

impl Progress {
    /// Takes what was seen; the reports to send.
    fn take(&mut self, seen: Seen) -> Vec<(u32, BTreeMap<String, f64>)> {
        let mut touched = Vec::new();
        let mut add = |p: &mut Progress, step: u32, mut metrics: BTreeMap<String, f64>| {
            // What the endpoint refuses is not sent: invalid names, and names beyond the
            // first 64 (a report of more is refused whole).
            metrics.retain(|name, _| {
                contract::valid_name(name)
                    && (p.last.contains_key(name) || p.last.len() < contract::MAX_METRICS)
            });
            if metrics.is_empty() {
                return;
            }
            p.step = p.step.max(step);
            p.last.extend(metrics.clone());
            p.steps.entry(step).or_default().extend(metrics);
            if !touched.contains(&step) {
                touched.push(step);
            }
        };
        match seen {
            Seen::Line(found) => {
                let step = match found.step {
                    Some(s) => {
                        self.named = true;
                        self.step = s;
                        s
                    }
                    None if self.named => self.step,
                    None => self.step + 1,
                };
                add(self, step, found.metrics);
            }
            Seen::Scalars(scalars) => {
                for (step, name, value) in scalars {
                    add(self, step, BTreeMap::from([(name, value)]));
                }
            }
        }
        touched.sort();
        touched
            .into_iter()
            .map(|s| (s, self.steps[&s].clone()))
            .collect()
    }
}

/// Why the command is being ended.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ending {
    Stopped,
    Interrupted,
}

/// Why this process is not a multi-rank trial's rank 0, if it is not: the RANK (or a
/// TrainJob's PET_NODE_RANK) it was given, or, in a JobSet, a pod outside the first
/// replicated job's first pod (NASOP_PRIMARY_JOB, NASOP_JOB_INDEX, JOB_COMPLETION_INDEX).
fn not_rank_zero(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    if var(contract::ENV_PRIMARY_JOB).as_deref() == Some("false") {
        return Some("a pod of another replicated job than the first".into());
    }
    for name in [
        "RANK",
        "PET_NODE_RANK",
        contract::ENV_JOB_INDEX,
        "JOB_COMPLETION_INDEX",
    ] {
        let value = var(name).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(v) = value.filter(|&v| v != 0) {
            return Some(format!("{name}={v}"));
        }
    }
    None
}

/// Copies the running nasop to `file`, readable and executable by anyone (the trial
/// container's user is not the init container's), whole or not at all.
pub fn copy_self(file: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().context("finding the running nasop")?;
    let partial = file.with_extension("partial");
    std::fs::copy(&exe, &partial)
        .with_context(|| format!("copying {} to {}", exe.display(), partial.display()))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", partial.display()))?;
    std::fs::rename(&partial, file)
        .with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
    eprintln!("nasop: copied {} to {}", exe.display(), file.display());
    Ok(())
}

/// Runs the wrapped command to its end; the exit code `nasop wrap` ends with.
pub fn run(args: &WrapArgs) -> Result<i32> {
    let mut reporter = Reporter::from_env(WHO, None);
    // In a trial of several ranks (a JobSet's, a TrainJob's), rank 0 alone reports.
    if let Some(why) = not_rank_zero(|n| std::env::var(n).ok()) {
        eprintln!("{WHO}: {why}: rank 0 reports, this one runs the command only");
        reporter.stay_quiet();
    }
    match run_with(args, &reporter) {
        Ok(code) => Ok(code),
        Err(e) => {
            reporter.fail(&format!("{e:#}"));
            Err(e)
        }
    }
}

fn run_with(args: &WrapArgs, reporter: &Reporter) -> Result<i32> {
    let raw = std::env::var(contract::ENV_TRIAL).with_context(|| {
        format!(
            "{} is not set: nasop wrap runs as a trial (nasop run and the operator set the trial contract)",
            contract::ENV_TRIAL
        )
    })?;
    let input: TrialInput = serde_json::from_str(&raw)
        .with_context(|| format!("{} is not a trial's JSON", contract::ENV_TRIAL))?;
    let values = values(&input);
    let argv = substitute(&args.command, &values)?;
    let step_names = if args.step_metrics.is_empty() {
        vec!["epoch".to_string(), "step".to_string()]
    } else {
        args.step_metrics.clone()
    };
    let scanner = lines::LineMetrics::new(args.metrics_regex.as_deref(), step_names)
        .map_err(anyhow::Error::msg)?;
    let terminated = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, terminated.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, terminated.clone())?;

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null());
    for (name, value) in &input.hyperparameters {
        let text = values
            .get(name)
            .cloned()
            .unwrap_or_else(|| value.to_string());
        cmd.env(env_name(name), text);
    }
    cmd.env("NASOP_CANDIDATE", &input.candidate)
        .env("NASOP_ARCHITECTURE", &values["architecture"])
        .env("NASOP_EPOCHS", input.budget.epochs.to_string())
        .env("NASOP_SEED", input.seed.to_string());
    // SAFETY: setpgid in the child before exec: the command and what it starts form one
    // process group that a stop can signal whole.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            // Out of our process group it would outlive a killed wrapper: it dies with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", argv[0]))?;
    let pgid = child.id() as i32;

    let (tx, rx) = mpsc::channel::<Seen>();
    let stdout = child.stdout.take().expect("piped");
    let tail = Arc::new(std::sync::Mutex::new(
        std::collections::VecDeque::<String>::new(),
    ));
    let reader = {
        let tx = tx.clone();
        let tail = tail.clone();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match out.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line that is not UTF-8 is read as well as it can be, never dropped.
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.push_back(line.clone());
                if t.len() > 5 {
                    t.pop_front();
                }
                drop(t);
                let found = scanner.scan(&line);
                if !found.metrics.is_empty() || found.step.is_some() {
                    let _ = tx.send(Seen::Line(found));
                }
            }
        })
    };
    let watching = Arc::new(AtomicBool::new(true));
    if let Some(dir) = &args.tensorboard {
        let mut events = tfevents::EventDir::new(dir.clone());
        let tx = tx.clone();
        let watching = watching.clone();
        std::thread::spawn(move || {
            loop {
                let last_round = !watching.load(Ordering::Relaxed);
                let scalars = events.poll();
                if !scalars.is_empty() && tx.send(Seen::Scalars(scalars)).is_err() {
                    break;
                }
                if last_round {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    }
    drop(tx);

    let grace = Duration::from_secs_f64(args.stop_grace_seconds.max(0.0));
    let signal = |sig: i32| {
        // SAFETY: kill(2) on the command's own process group.
        unsafe { libc::kill(-pgid, sig) };
    };
    let mut progress = Progress::default();
    let mut ending: Option<(Ending, Instant)> = None;
    let mut killed = false;
    let stop = |why: Ending, ending: &mut Option<(Ending, Instant)>| {
        if ending.is_none() {
            eprintln!(
                "{WHO}: {}; SIGTERM to the command, SIGKILL in {grace:?} if it is still running",
                match why {
                    Ending::Stopped => "the search said stop",
                    Ending::Interrupted => "terminated",
                }
            );
            signal(libc::SIGTERM);
            *ending = Some((why, Instant::now()));
        }
    };
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(seen) => {
                for (step, metrics) in progress.take(seen) {
                    if reporter.report(step, &metrics) == ReportAction::Stop && ending.is_none() {
                        let why = if reporter.superseded() {
                            Ending::Interrupted
                        } else {
                            Ending::Stopped
                        };
                        stop(why, &mut ending);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The output has ended but the command runs on: wait without spinning.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100))
            }
        }
        if terminated.load(Ordering::Relaxed) {
            stop(Ending::Interrupted, &mut ending);
        }
        if let Some((_, since)) = ending
            && !killed
            && since.elapsed() >= grace
        {
            eprintln!("{WHO}: the command outlived its {grace:?} grace; SIGKILL");
            signal(libc::SIGKILL);
            killed = true;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
    };
    // What the command printed last, and its last event files, still count. A process it
    // left behind may hold its output open: wait for the end of the output 2 s at most,
    // then end what is left of its process group.
    let output_ends = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < output_ends {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The trial has ended: nothing it started keeps running (or holds its output).
    signal(libc::SIGKILL);
    watching.store(false, Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Ok(seen) = rx.recv_timeout(drain_until.saturating_duration_since(Instant::now())) {
        for (step, metrics) in progress.take(seen) {
            reporter.report(step, &metrics);
        }
    }
    let ending = ending.map(|e| e.0);
    let end = match ending {
        Some(Ending::Stopped) => RunEnd::Stopped,
        Some(Ending::Interrupted) => RunEnd::Interrupted,
        None if status.success() => RunEnd::Completed,
        None => {
            let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            anyhow::bail!(
                "{} ended with {status}{}",
                argv[0],
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; its last output: {}",
                        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
                    )
                }
            );
        }
    };
    let last = contract::Report {
        step: progress.step,
        metrics: progress.last,
        info: BTreeMap::new(),
        end: Some(end),
    };
    if end != RunEnd::Interrupted {
        reporter.send(&last);
    }
    reporter.finish(&last);
    Ok(if end == RunEnd::Interrupted { 143 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_the_trials_values_and_unknown_ones_are_named() {
        let values = BTreeMap::from([
            ("lr".to_string(), "0.1".to_string()),
            ("architecture".to_string(), "|skip~0|".to_string()),
        ]);
        let out = substitute(
            &[
                "train.py".into(),
                "--lr={lr}".into(),
                "--arch".into(),
                "{architecture}".into(),
            ],
            &values,
        )
        .unwrap();
        assert_eq!(out, vec!["train.py", "--lr=0.1", "--arch", "|skip~0|"]);
        let e = substitute(&["--wd={wd}".into()], &values)
            .unwrap_err()
            .to_string();
        assert!(e.contains("{wd}") && e.contains("{lr}"), "{e}");
        assert_eq!(env_name("learning-rate"), "NASOP_HP_LEARNING_RATE");
        let shell = substitute(&["echo ${OUT} {lr}".into()], &values).unwrap();
        assert_eq!(shell, vec!["echo ${OUT} 0.1"]);
    }

    #[test]
    fn only_the_first_pod_of_the_first_replicated_job_is_rank_zero() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(not_rank_zero(env(&[])), None);
        assert_eq!(
            not_rank_zero(env(&[
                ("NASOP_PRIMARY_JOB", "true"),
                ("NASOP_JOB_INDEX", "0"),
                ("JOB_COMPLETION_INDEX", "0")
            ])),
            None
        );
        assert!(
            not_rank_zero(env(&[
                ("NASOP_PRIMARY_JOB", "false"),
                ("NASOP_JOB_INDEX", "0")
            ]))
            .is_some()
        );
        assert!(
            not_rank_zero(env(&[
                ("NASOP_PRIMARY_JOB", "true"),
                ("NASOP_JOB_INDEX", "1")
            ]))
            .is_some()
        );
        assert!(not_rank_zero(env(&[("JOB_COMPLETION_INDEX", "2")])).is_some());
        assert!(not_rank_zero(env(&[("RANK", "1")])).is_some());
        assert!(not_rank_zero(env(&[("PET_NODE_RANK", "1")])).is_some());
    }

    /// What spec.wrap turns into on a trial's command line is what `nasop wrap` reads.
    #[test]
    fn spec_wrap_becomes_the_wrappers_own_arguments() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Wrap(WrapArgs),
        }
        let spec = crate::api::WrapSpec {
            // A value starting with '-' is still the value.
            metrics_regex: Some(r"-(?P<name>\w+)=(?P<value>\S+)".into()),
            step_metrics: vec!["epoch".into(), "iter".into()],
            tensorboard_dir: Some("/logs".into()),
            stop_grace_seconds: Some(7),
        };
        let mut argv = vec!["nasop".to_string()];
        argv.extend(spec.args());
        argv.extend([
            "python".into(),
            "train.py".into(),
            "--lr".into(),
            "{lr}".into(),
        ]);
        let Sub::Wrap(args) = Cli::try_parse_from(&argv).unwrap().command;
        assert_eq!(args.metrics_regex, spec.metrics_regex);
        assert_eq!(args.step_metrics, spec.step_metrics);
        assert_eq!(args.tensorboard, Some(PathBuf::from("/logs")));
        assert_eq!(args.stop_grace_seconds, 7.0);
        assert_eq!(args.command, ["python", "train.py", "--lr", "{lr}"]);
        let Sub::Wrap(plain) = Cli::try_parse_from(
            ["nasop".to_string()]
                .into_iter()
                .chain(crate::api::WrapSpec::default().args())
                .chain(["./run.sh".to_string()]),
        )
        .unwrap()
        .command;
        assert_eq!(plain.stop_grace_seconds, 20.0);
        assert_eq!(plain.command, ["./run.sh"]);
    }

    #[test]
    fn lines_without_a_step_count_up_until_one_names_it() {
        let mut p = Progress::default();
        let line = |step: Option<u32>, m: &[(&str, f64)]| {
            Seen::Line(lines::Found {
                step,
                metrics: m.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })
        };
        assert_eq!(p.take(line(None, &[("loss", 1.0)]))[0].0, 1);
        assert_eq!(p.take(line(None, &[("loss", 0.9)]))[0].0, 2);
        assert_eq!(p.take(line(Some(5), &[("acc", 0.5)]))[0].0, 5);
        // Named once, a line without a step adds to it.
        let r = p.take(line(None, &[("loss", 0.4)]));
        assert_eq!(r[0].0, 5);
        assert_eq!(
            r[0].1,
            BTreeMap::from([("acc".into(), 0.5), ("loss".into(), 0.4)])
        );
        assert_eq!(p.last["loss"], 0.4);
        assert!(
            p.take(line(Some(6), &[])).is_empty(),
            "a step alone reports nothing"
        );
    }
}
