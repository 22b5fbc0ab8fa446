//! A trial's side of the contract (feature `client`): JSON lines on stdout, reports posted
//! to NASOP_REPORT_URL with the trial's token, the final metrics in the termination-message
//! file. nasop-trainer and `nasop wrap` both report through it, so that the operator and
//! `nasop run` see the same requests from either (python/nasop_trial.py is the same
//! protocol in Python).

use crate::contract::{
    DEFAULT_TERMINATION_PATH, ENV_REPORT_TOKEN, ENV_REPORT_TOKEN_FILE, ENV_REPORT_URL,
    ENV_TERMINATION_PATH, Report, ReportAction, ReportReply, termination_message,
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

/// Where the report token comes from.
enum Token {
    /// NASOP_REPORT_TOKEN (`nasop run`).
    Plain(String),
    /// NASOP_REPORT_TOKEN_FILE: a pod's projected service-account token, which the kubelet
    /// rotates, so it is read for every report.
    File(PathBuf),
}

impl Token {
    fn from_env() -> Token {
        match std::env::var_os(ENV_REPORT_TOKEN_FILE).filter(|f| !f.is_empty()) {
            Some(file) => Token::File(PathBuf::from(file)),
            None => Token::Plain(std::env::var(ENV_REPORT_TOKEN).unwrap_or_default()),
        }
    }

    fn read(&self, who: &str) -> String {
        match self {
            Token::Plain(t) => t.clone(),
            Token::File(path) => match std::fs::read_to_string(path) {
                Ok(t) => t.trim().to_string(),
                Err(e) => {
                    eprintln!(
                        "{who}: ERROR: cannot read the report token {} ({e}); the report will be refused",
                        path.display()
                    );
                    String::new()
                }
            },
        }
    }
}

pub struct Reporter {
    /// Who is speaking in log lines: `nasop-trainer`, `nasop wrap`.
    who: &'static str,
    /// A report was answered 409: this attempt no longer counts (or its trial ended).
    superseded: std::sync::atomic::AtomicBool,
    endpoint: Option<(String, Token)>,
    agent: ureq::Agent,
    termination: Option<PathBuf>,
    retry_for: Duration,
}

impl Reporter {
    /// From the environment; `termination` overrides NASOP_TERMINATION_PATH. `who` names
    /// the program in log lines.
    pub fn from_env(who: &'static str, termination: Option<PathBuf>) -> Self {
        let endpoint = std::env::var(ENV_REPORT_URL)
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| (url, Token::from_env()));
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
            who,
            superseded: Default::default(),
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

    /// Sends no report: a data-parallel run's other ranks (rank 0 reports).
    pub fn stay_quiet(&mut self) {
        self.endpoint = None;
    }

    /// Prints the report as a JSON line and posts it; returns the action the runner asked
    /// for. A report that cannot be delivered is logged and training goes on.
    pub fn report(&self, step: u32, metrics: &BTreeMap<String, f64>) -> ReportAction {
        self.send(&Report {
            step,
            metrics: metrics.clone(),
            info: BTreeMap::new(),
            end: None,
        })
    }

    /// Whether a report was answered 409: the run must not end as a result (its final
    /// report says `interrupted`, and it exits non-zero).
    pub fn superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Relaxed)
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
        let mut reread = false;
        loop {
            attempt += 1;
            let sent = self
                .agent
                .post(url)
                .config()
                .http_status_as_error(false)
                .build()
                .header("Authorization", format!("Bearer {}", token.read(self.who)))
                .send_json(report);
            let error = match sent {
                Ok(mut response) => match Answer::of(self.who, &mut response) {
                    Answer::Action(action) => return action,
                    // The kubelet may have just rotated the token: read it again, once.
                    Answer::Unauthorized(_) if !reread => {
                        reread = true;
                        continue;
                    }
                    Answer::Refused(code, why) | Answer::Unauthorized((code, why)) => {
                        if code == 409 {
                            self.superseded
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        return refused(self.who, step, code, &why);
                    }
                    Answer::Retry(code) => ureq::Error::StatusCode(code),
                },
                Err(e) => e,
            };
            match error {
                e if started.elapsed() + delay < self.retry_for => {
                    eprintln!(
                        "{}: report of step {step} failed ({e}); retrying in {delay:?}",
                        self.who
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_DELAY);
                }
                e => {
                    eprintln!(
                        "{}: report of step {step} failed {attempt} times in {:.0?} ({e}); training goes on",
                        self.who,
                        started.elapsed()
                    );
                    return ReportAction::Continue;
                }
            }
        }
    }
}

/// What the report endpoint answered.
enum Answer {
    Action(ReportAction),
    /// 401 or 403, with what the endpoint said.
    Unauthorized((u16, String)),
    /// Another 4xx (409: this attempt was superseded, or the trial has ended).
    Refused(u16, String),
    /// 429 or 5xx: try again.
    Retry(u16),
}

impl Answer {
    fn of(who: &str, response: &mut ureq::http::Response<ureq::Body>) -> Answer {
        let code = response.status().as_u16();
        let mut text = || {
            response
                .body_mut()
                .read_to_string()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect::<String>()
        };
        match code {
            200..300 => match response.body_mut().read_json::<ReportReply>() {
                Ok(reply) => Answer::Action(reply.action),
                Err(e) => {
                    eprintln!(
                        "{who}: the report endpoint answered something unreadable ({e}); continuing"
                    );
                    Answer::Action(ReportAction::Continue)
                }
            },
            401 | 403 => Answer::Unauthorized((code, text())),
            429 | 500.. => Answer::Retry(code),
            _ => Answer::Refused(code, text()),
        }
    }
}

/// A report the endpoint refused: said loudly, never dropped in silence. A 409 means the
/// trial has ended or another attempt replaced this one: stop.
fn refused(who: &str, step: u32, code: u16, why: &str) -> ReportAction {
    if code == 409 {
        eprintln!(
            "{who}: ERROR: the report of step {step} was not recorded (HTTP 409: {why}); stopping: this attempt no longer counts"
        );
        return ReportAction::Stop;
    }
    eprintln!(
        "{who}: ERROR: the report of step {step} was refused and not recorded (HTTP {code}: {why}); training goes on, its result still goes to the termination message"
    );
    ReportAction::Continue
}

impl Reporter {
    /// Writes the final report (at most 4 KiB of compact JSON) to the termination file.
    /// Writes why the run failed as the termination message: the operator puts it in the
    /// Failed trial's reason, `nasop run` in its journal (Kubernetes keeps the last 4 KiB).
    pub fn fail(&self, message: &str) {
        let message = format!("{}: error: {message}", self.who);
        let keep = message
            .len()
            .min(crate::contract::TERMINATION_MESSAGE_MAX_BYTES);
        let mut start = message.len() - keep;
        while !message.is_char_boundary(start) {
            start += 1;
        }
        if let Some(path) = &self.termination
            && let Err(e) = std::fs::write(path, &message[start..])
        {
            eprintln!(
                "{}: cannot write the termination message to {}: {e}",
                self.who,
                path.display()
            );
        }
    }

    pub fn finish(&self, report: &Report) {
        if let Some(path) = &self.termination
            && let Err(e) = std::fs::write(path, termination_message(report))
        {
            eprintln!(
                "{}: cannot write the termination message to {}: {e}",
                self.who,
                path.display()
            );
        }
    }
}
