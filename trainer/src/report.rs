//! The trainer's side of the trial contract: JSON lines on stdout, reports posted to
//! NASOP_REPORT_URL with the trial's token, the final metrics in the termination-message file.

use nasop_core::contract::{
    DEFAULT_TERMINATION_PATH, ENV_REPORT_TOKEN, ENV_REPORT_URL, ENV_TERMINATION_PATH, Report,
    ReportAction, ReportReply, termination_message,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How long a report is retried before training goes on without it: longer than an
/// operator takes to hand over to its replacement (a new pod, the leader lease), so that a
/// restarted operator loses no report. NASOP_REPORT_RETRY_SECONDS sets another.
const RETRY_FOR: Duration = Duration::from_secs(60);
const ENV_RETRY_SECONDS: &str = "NASOP_REPORT_RETRY_SECONDS";
/// The longest wait between two tries.
const MAX_DELAY: Duration = Duration::from_secs(5);

pub struct Reporter {
    endpoint: Option<(String, String)>,
    agent: ureq::Agent,
    termination: Option<PathBuf>,
    retry_for: Duration,
}

impl Reporter {
    /// From the environment; `termination` overrides NASOP_TERMINATION_PATH.
    pub fn from_env(termination: Option<PathBuf>) -> Self {
        let endpoint = match (
            std::env::var(ENV_REPORT_URL),
            std::env::var(ENV_REPORT_TOKEN),
        ) {
            (Ok(url), Ok(token)) if !url.is_empty() => Some((url, token)),
            (Ok(url), _) if !url.is_empty() => Some((url, String::new())),
            _ => None,
        };
        let termination = termination
            .or_else(|| std::env::var(ENV_TERMINATION_PATH).ok().map(PathBuf::from))
            .or_else(|| {
                // In a pod the kubelet provides this file; elsewhere there is none to write.
                let default = PathBuf::from(DEFAULT_TERMINATION_PATH);
                default.exists().then_some(default)
            });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        Reporter {
            endpoint,
            agent,
            termination,
            retry_for: std::env::var(ENV_RETRY_SECONDS)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(RETRY_FOR, Duration::from_secs_f64),
        }
    }

    /// Prints the report as a JSON line and posts it; returns the action the runner asked
    /// for. A report that cannot be delivered is logged and training goes on.
    pub fn report(&self, step: u32, metrics: &BTreeMap<String, f64>) -> ReportAction {
        self.send(&Report {
            step,
            metrics: metrics.clone(),
            info: BTreeMap::new(),
        })
    }

    /// Prints and posts a full report (metrics and info).
    pub fn send(&self, report: &Report) -> ReportAction {
        let step = report.step;
        let line = serde_json::to_string(&report).expect("a report serialises");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        let Some((url, token)) = &self.endpoint else {
            return ReportAction::Continue;
        };
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .agent
                .post(url)
                .header("Authorization", format!("Bearer {token}"))
                .send_json(report);
            match sent {
                Ok(mut response) => match response.body_mut().read_json::<ReportReply>() {
                    Ok(reply) => return reply.action,
                    Err(e) => {
                        eprintln!(
                            "nasop-trainer: the report endpoint answered something unreadable ({e}); continuing"
                        );
                        return ReportAction::Continue;
                    }
                },
                Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) && code != 429 => {
                    eprintln!(
                        "nasop-trainer: the report endpoint refused step {step} (HTTP {code}); continuing without it"
                    );
                    return ReportAction::Continue;
                }
                Err(e) if started.elapsed() + delay < self.retry_for => {
                    eprintln!(
                        "nasop-trainer: report of step {step} failed ({e}); retrying in {delay:?}"
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_DELAY);
                }
                Err(e) => {
                    eprintln!(
                        "nasop-trainer: report of step {step} failed {attempt} times in {:.0?} ({e}); training goes on",
                        started.elapsed()
                    );
                    return ReportAction::Continue;
                }
            }
        }
    }

    /// Writes the final report (at most 4 KiB of compact JSON) to the termination file.
    /// Writes why the run failed as the termination message: the operator puts it in the
    /// Failed trial's reason, `nasop run` in its journal (Kubernetes keeps the last 4 KiB).
    pub fn fail(&self, message: &str) {
        let message = format!("nasop-trainer: error: {message}");
        let keep = message
            .len()
            .min(nasop_core::contract::TERMINATION_MESSAGE_MAX_BYTES);
        let mut start = message.len() - keep;
        while !message.is_char_boundary(start) {
            start += 1;
        }
        if let Some(path) = &self.termination
            && let Err(e) = std::fs::write(path, &message[start..])
        {
            eprintln!(
                "nasop-trainer: cannot write the termination message to {}: {e}",
                path.display()
            );
        }
    }

    pub fn finish(&self, report: &Report) {
        if let Some(path) = &self.termination
            && let Err(e) = std::fs::write(path, termination_message(report))
        {
            eprintln!(
                "nasop-trainer: cannot write the termination message to {}: {e}",
                path.display()
            );
        }
    }
}
