//! The trial controller's decision, as a pure function of what it sees: the trial's attempt
//! and stop request, and what its pod says. The reconciler only carries it out, so every
//! branch is unit-tested without a cluster.

use crate::api::TrialPhaseName;
use crate::operator::pod::Outcome;
#[cfg(test)]
use crate::operator::pod::Waiting;
use nasop_core::contract::{self, Report};

/// What the trial controller knows when it decides.
#[derive(Debug, Clone)]
pub struct TrialView<'a> {
    /// Pods started so far (0: none yet).
    pub attempt: u32,
    /// What the current attempt's pod says; None when there is no such pod.
    pub outcome: Option<&'a Outcome>,
    /// The operator's stop request (EarlyStopped, Timeout, Deadline, ExperimentFinished).
    pub stop: Option<&'a str>,
    /// When the stop was first seen (seconds), if it was.
    pub stop_requested_at: Option<f64>,
    /// The trial was created moments ago (its first pod is on its way).
    pub young: bool,
    pub now: f64,
    pub grace: f64,
    /// Seconds between the trainer's reports so far (0 when unknown). A trainer hears a stop
    /// in the reply to its next report, so the grace period starts that much later.
    pub report_interval: f64,
    pub max_attempts: u32,
    /// Seconds a pod may wait to start before the trial fails (PendingTimeout).
    pub pending_timeout: f64,
    /// The final report the current attempt posted (it completed, or stopped when asked),
    /// if it did: its result even when its pod is deleted before it is read.
    pub final_report: Option<Report>,
}

/// How long (from its creation) a pod may wait on a cause that waiting does not cure
/// ([`crate::operator::pod::Waiting::is_hopeless`]: an image the kubelet keeps failing to pull) before the trial
/// fails with the kubelet's words, instead of holding GPUs for the pending timeout.
pub const CONFIG_ERROR_SECONDS: f64 = 60.0;

/// How a trial ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub phase: TrialPhaseName,
    pub reason: String,
    pub message: Option<String>,
    pub report: Option<Report>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Start pod `attempt`; `lost` says why the previous one is gone.
    Start { attempt: u32, lost: Option<String> },
    /// Record the end of the trial.
    End(Ending),
    /// The pod is pending or running: record it (and when it started).
    Track {
        phase: TrialPhaseName,
        /// While pending: why the pod has not started (Unschedulable, ImagePullBackOff).
        reason: Option<String>,
        message: Option<String>,
        started_at: Option<f64>,
        /// Asked to stop: record when the request was first seen; delete the pod when
        /// `delete`, else look again after `requeue` seconds.
        stop: Option<StopProgress>,
        /// Look again after this many seconds even if nothing changes (the pending
        /// timeout).
        after: Option<f64>,
    },
    /// Nothing to do until something changes (the pod is going away, or the experiment
    /// controller is creating the first pod); look again after this many seconds.
    Wait(Option<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopProgress {
    pub requested_at: f64,
    pub delete: bool,
    pub requeue: Option<f64>,
}

fn ending(phase: TrialPhaseName, reason: &str, message: Option<String>) -> Ending {
    Ending {
        phase,
        reason: reason.into(),
        message,
        report: None,
        started_at: None,
        finished_at: None,
    }
}

pub fn next_step(v: &TrialView) -> Step {
    let gone = matches!(
        v.outcome,
        None | Some(Outcome::Lost(_)) | Some(Outcome::Terminating(_))
    );
    if v.attempt > 0
        && gone
        && let Some(report) = &v.final_report
    {
        // The pod posted its final report and then went away (PodGC, a drain after it
        // ended): that report is its result.
        let (phase, reason) = match v.stop {
            Some(reason) => (TrialPhaseName::Stopped, reason.to_string()),
            None => (TrialPhaseName::Succeeded, "Completed".to_string()),
        };
        return Step::End(Ending {
            phase,
            reason,
            message: None,
            report: Some(report.clone()),
            started_at: None,
            finished_at: None,
        });
    }
    let lost = match v.outcome {
        None if v.attempt > 0 => Some("the pod was deleted".to_string()),
        Some(Outcome::Lost(why)) => Some(why.clone()),
        _ => None,
    };
    if let Some(why) = lost {
        return match v.stop {
            Some(reason) => Step::End(ending(TrialPhaseName::Stopped, reason, None)),
            None if v.attempt >= v.max_attempts => Step::End(ending(
                TrialPhaseName::Failed,
                "PodLost",
                Some(format!(
                    "lost {} pods (last: {why}); raise --max-attempts or check the nodes",
                    v.attempt
                )),
            )),
            None => Step::Start {
                attempt: v.attempt + 1,
                lost: Some(why),
            },
        };
    }
    let Some(outcome) = v.outcome else {
        // No pod yet.
        return match v.stop {
            Some(reason) => Step::End(ending(
                TrialPhaseName::Stopped,
                reason,
                Some("stopped before it started".into()),
            )),
            None if v.young => Step::Wait(Some(3.0)),
            None => Step::Start {
                attempt: 1,
                lost: None,
            },
        };
    };
    let ended = |ok: TrialPhaseName, default_reason: &str| {
        if v.stop.is_some() {
            (
                TrialPhaseName::Stopped,
                v.stop.unwrap_or_default().to_string(),
            )
        } else {
            (ok, default_reason.to_string())
        }
    };
    let stop_progress = |never_ran: bool| {
        v.stop.map(|_| {
            let requested_at = v.stop_requested_at.unwrap_or(v.now);
            let waited = v.now - requested_at;
            let grace = v.grace + v.report_interval;
            let delete = never_ran || waited >= grace;
            StopProgress {
                requested_at,
                delete,
                requeue: (!delete).then_some(grace - waited + 0.05),
            }
        })
    };
    match outcome {
        Outcome::Succeeded {
            report,
            started_at,
            finished_at,
        } => {
            let (phase, reason) = ended(TrialPhaseName::Succeeded, "Completed");
            Step::End(Ending {
                phase,
                reason,
                message: None,
                report: report.clone(),
                started_at: *started_at,
                finished_at: *finished_at,
            })
        }
        Outcome::Failed {
            message,
            started_at,
            finished_at,
        } => {
            // A bucket that refused the trainer is named as such (the experiment gets a
            // Storage condition); any other failure is the trainer's.
            let why = if message.contains(&format!("{}:", contract::STORAGE_REFUSED)) {
                contract::STORAGE_REFUSED
            } else {
                "TrainerFailed"
            };
            let (phase, reason) = ended(TrialPhaseName::Failed, why);
            Step::End(Ending {
                phase,
                reason,
                message: Some(message.clone()),
                report: None,
                started_at: *started_at,
                finished_at: *finished_at,
            })
        }
        Outcome::Waiting(w) => {
            let waited = w.since.map_or(0.0, |s| v.now - s);
            let give_up = if w.is_hopeless() {
                CONFIG_ERROR_SECONDS.min(v.pending_timeout)
            } else {
                v.pending_timeout
            };
            if v.stop.is_none() && w.is_hopeless() && waited >= give_up {
                let why = w.describe().unwrap_or_default();
                let fix = if why.contains("runAsNonRoot") {
                    "trial pods run as non-root unless their template says otherwise (the restricted Pod Security Standard): set securityContext.runAsUser to a non-zero UID in spec.trialTemplate, or runAsNonRoot: false where the image needs root"
                } else {
                    "fix the image in spec.trialTemplate (or spec.trialJobSet, spec.trialTrainJob)"
                };
                return Step::End(Ending {
                    message: Some(format!("the pod cannot start: {why}; {fix}")),
                    ..ending(
                        TrialPhaseName::Failed,
                        w.reason.as_deref().unwrap_or("CreateContainerError"),
                        None,
                    )
                });
            }
            if v.stop.is_none() && waited >= v.pending_timeout {
                let why = w.describe().unwrap_or_else(|| "not started".into());
                return Step::End(ending(
                    TrialPhaseName::Failed,
                    "PendingTimeout",
                    Some(format!(
                        "the pod did not start in {:.0}s (budget.pendingTimeoutSeconds): {why}",
                        v.pending_timeout
                    )),
                ));
            }
            let after = if w.reason.as_deref() == Some(crate::operator::pod::QUEUED) {
                crate::operator::queue::POLL
            } else {
                give_up - waited + 0.05
            };
            Step::Track {
                phase: TrialPhaseName::Pending,
                reason: w.reason.clone(),
                message: w.describe(),
                started_at: None,
                stop: stop_progress(true),
                after: Some(after),
            }
        }
        Outcome::Running { started_at } => Step::Track {
            phase: TrialPhaseName::Running,
            reason: None,
            message: None,
            started_at: Some(started_at.unwrap_or(v.now).min(v.now)),
            stop: stop_progress(false),
            after: None,
        },
        Outcome::Terminating(after) => Step::Wait(*after),
        Outcome::Lost(_) => unreachable!("lost pods are handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(attempt: u32, outcome: Option<&Outcome>) -> TrialView<'_> {
        TrialView {
            attempt,
            outcome,
            stop: None,
            stop_requested_at: None,
            young: false,
            now: 1000.0,
            grace: 30.0,
            report_interval: 0.0,
            max_attempts: 3,
            pending_timeout: 900.0,
            final_report: None,
        }
    }

    #[test]
    fn a_new_trial_waits_for_its_first_pod_then_starts_it_itself() {
        let young = TrialView {
            young: true,
            ..view(0, None)
        };
        assert_eq!(next_step(&young), Step::Wait(Some(3.0)));
        assert_eq!(
            next_step(&view(0, None)),
            Step::Start {
                attempt: 1,
                lost: None
            }
        );
        let stopped = TrialView {
            stop: Some("ExperimentFinished"),
            ..view(0, None)
        };
        assert!(
            matches!(next_step(&stopped), Step::End(e) if e.phase == TrialPhaseName::Stopped && e.reason == "ExperimentFinished")
        );
    }

    #[test]
    fn lost_pods_are_retried_up_to_max_attempts_then_fail() {
        assert_eq!(
            next_step(&view(1, None)),
            Step::Start {
                attempt: 2,
                lost: Some("the pod was deleted".into())
            }
        );
        let evicted = Outcome::Lost("Evicted".into());
        assert_eq!(
            next_step(&view(2, Some(&evicted))),
            Step::Start {
                attempt: 3,
                lost: Some("Evicted".into())
            }
        );
        match next_step(&view(3, Some(&evicted))) {
            Step::End(e) => {
                assert_eq!(
                    (e.phase, e.reason.as_str()),
                    (TrialPhaseName::Failed, "PodLost")
                );
                assert!(e.message.unwrap().contains("--max-attempts"));
            }
            s => panic!("{s:?}"),
        }
        // A stopped trial whose pod is gone is simply stopped.
        let stopped = TrialView {
            stop: Some("Timeout"),
            ..view(1, None)
        };
        assert!(matches!(next_step(&stopped), Step::End(e) if e.reason == "Timeout"));
    }

    #[test]
    fn pod_endings_become_trial_endings() {
        let ok = Outcome::Succeeded {
            report: None,
            started_at: Some(990.0),
            finished_at: Some(999.0),
        };
        assert!(
            matches!(next_step(&view(1, Some(&ok))), Step::End(e) if e.phase == TrialPhaseName::Succeeded && e.reason == "Completed" && e.started_at == Some(990.0))
        );
        let failed = Outcome::Failed {
            message: "exit 2".into(),
            started_at: None,
            finished_at: None,
        };
        assert!(
            matches!(next_step(&view(1, Some(&failed))), Step::End(e) if e.phase == TrialPhaseName::Failed && e.reason == "TrainerFailed")
        );
        // A trainer that exits after a stop reply ended a stopped trial, whatever its code.
        for o in [&ok, &failed] {
            let v = TrialView {
                stop: Some("EarlyStopped"),
                ..view(1, Some(o))
            };
            assert!(
                matches!(next_step(&v), Step::End(e) if e.phase == TrialPhaseName::Stopped && e.reason == "EarlyStopped")
            );
        }
    }

    #[test]
    fn a_stopped_running_pod_gets_its_grace_period_then_is_deleted() {
        let running = Outcome::Running {
            started_at: Some(500.0),
        };
        let asked = TrialView {
            stop: Some("EarlyStopped"),
            ..view(1, Some(&running))
        };
        match next_step(&asked) {
            Step::Track {
                phase,
                stop: Some(s),
                started_at,
                ..
            } => {
                assert_eq!(phase, TrialPhaseName::Running);
                assert_eq!(started_at, Some(500.0), "the pod's own start time");
                assert_eq!(s.requested_at, 1000.0);
                assert!(!s.delete);
                assert!((s.requeue.unwrap() - 30.05).abs() < 1e-9);
            }
            s => panic!("{s:?}"),
        }
        let later = TrialView {
            stop_requested_at: Some(960.0),
            ..asked.clone()
        };
        assert!(matches!(
            next_step(&later),
            Step::Track {
                stop: Some(StopProgress {
                    delete: true,
                    requeue: None,
                    ..
                }),
                ..
            }
        ));
        // A trainer that reports every 100 s hears the stop up to 100 s later: it gets that
        // much longer.
        let slow = TrialView {
            report_interval: 100.0,
            ..later.clone()
        };
        match next_step(&slow) {
            Step::Track { stop: Some(s), .. } => {
                assert!(!s.delete);
                assert!((s.requeue.unwrap() - 90.05).abs() < 1e-9, "{s:?}");
            }
            s => panic!("{s:?}"),
        }
        // A pod that never ran is deleted at once.
        let waiting = Outcome::Waiting(Waiting {
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available".into()),
            since: Some(900.0),
        });
        let v = TrialView {
            stop: Some("Deadline"),
            ..view(1, Some(&waiting))
        };
        assert!(matches!(
            next_step(&v),
            Step::Track {
                stop: Some(StopProgress { delete: true, .. }),
                ..
            }
        ));
        assert_eq!(
            next_step(&view(1, Some(&Outcome::Terminating(None)))),
            Step::Wait(None)
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_fails_the_trial_in_a_minute_not_the_pending_timeout() {
        let pulling = |waited: f64| {
            Outcome::Waiting(Waiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some("Back-off pulling image \"trainer:nosuch\"".into()),
                since: Some(1000.0 - waited),
            })
        };
        let early = pulling(20.0);
        match next_step(&view(1, Some(&early))) {
            Step::Track { phase, after, .. } => {
                assert_eq!(phase, TrialPhaseName::Pending);
                assert_eq!(after, Some(CONFIG_ERROR_SECONDS - 20.0 + 0.05));
            }
            s => panic!("{s:?}"),
        }
        let late = pulling(CONFIG_ERROR_SECONDS);
        match next_step(&view(1, Some(&late))) {
            Step::End(e) => {
                assert_eq!(
                    (e.phase, e.reason.as_str()),
                    (TrialPhaseName::Failed, "ImagePullBackOff")
                );
                let message = e.message.unwrap();
                assert!(
                    message.contains("trainer:nosuch") && message.contains("spec.trialTemplate"),
                    "{message}"
                );
            }
            s => panic!("{s:?}"),
        }
        // A trial being stopped is stopped, not failed.
        let stopping = TrialView {
            stop: Some("Deadline"),
            ..view(1, Some(&late))
        };
        assert!(matches!(next_step(&stopping), Step::Track { .. }));
    }

    #[test]
    fn a_final_report_stands_when_the_pod_is_gone_before_it_was_read() {
        let report = Report {
            step: 12,
            metrics: [("acc".to_string(), 0.93)].into(),
            end: Some(contract::RunEnd::Completed),
            ..Report::default()
        };
        for outcome in [None, Some(Outcome::Lost("the pod was deleted".into()))] {
            let v = TrialView {
                final_report: Some(report.clone()),
                ..view(1, outcome.as_ref())
            };
            match next_step(&v) {
                Step::End(e) => {
                    assert_eq!(
                        (e.phase, e.reason.as_str()),
                        (TrialPhaseName::Succeeded, "Completed")
                    );
                    assert_eq!(e.report, Some(report.clone()));
                }
                s => panic!("{s:?}"),
            }
        }
        // Without it, the attempt is lost and run again.
        assert!(matches!(
            next_step(&view(1, None)),
            Step::Start { attempt: 2, .. }
        ));
    }

    #[test]
    fn a_pod_that_never_starts_fails_the_trial_after_the_pending_timeout() {
        let pulling = Outcome::Waiting(Waiting {
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available".into()),
            since: Some(1000.0 - 899.0),
        });
        match next_step(&view(1, Some(&pulling))) {
            Step::Track { phase, message, .. } => {
                assert_eq!(phase, TrialPhaseName::Pending);
                assert_eq!(
                    message.as_deref(),
                    Some("Unschedulable: 0/3 nodes are available")
                );
            }
            s => panic!("{s:?}"),
        }
        let v = TrialView {
            now: 1001.0,
            ..view(1, Some(&pulling))
        };
        match next_step(&v) {
            Step::End(e) => {
                assert_eq!(e.phase, TrialPhaseName::Failed);
                assert_eq!(e.reason, "PendingTimeout");
                assert!(e.message.unwrap().contains("Unschedulable"));
            }
            s => panic!("{s:?}"),
        }
    }
}
