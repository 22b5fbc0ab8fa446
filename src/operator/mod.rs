//! `nasop operator`: NasExperiments on Kubernetes (ARCHITECTURE.md, "The operator").
//!
//! Two kube-runtime controllers share one process:
//! - the experiment controller ([`experiment`]) asks the engine what to do and records
//!   NasTrials (named `<experiment>-<index>`, so creating one twice is harmless), asks trials
//!   to stop, and writes the experiment's status;
//! - the trial controller ([`trial`]) runs each NasTrial as a Pod from the experiment's
//!   `trialTemplate`, or as a JobSet from its `trialJobSet` ([`jobset`]), one per attempt
//!   (retried when the cluster loses a pod), and records what rank 0 said.
//!
//! Both read → decide → act → write: the decisions are pure functions beside them
//! (`engine::decide`, [`trial::decide`]), tested without a cluster. Trial reports arrive on
//! `/v1/report` ([`http`]) beside `/metrics`, `/healthz` and `/readyz`. All state lives in
//! the API server: a restarted operator rebuilds the strategy from the recorded trials.
//!
//! Layers inside: [`context`] is the base every part imports; [`run`] wires the parts
//! together and nothing imports it.

pub mod context;
pub mod experiment;
pub mod health;
mod http;
pub mod index;
pub mod jobset;
pub mod lease;
pub mod limit;
pub mod metrics;
pub mod pod;
pub mod queue;
mod run;
pub mod start;
pub mod status;
mod sync;
pub mod token;
pub mod trainjob;
pub mod trial;
mod watch;
pub mod written;

pub use run::{OperatorArgs, run};
