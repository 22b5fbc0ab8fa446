//! What nasop's cluster tests (tests/) and cluster benchmarks (bench/) share, so that both
//! play a trial the same way: the fake trainer, which stands in for the trainer in every
//! trial pod on KWOK's simulated nodes (tools/testenv), and those nodes and the trial
//! template that lands on them.
//!
//! The fake trainer reads the trial contract from the pod as a real trainer would, posts
//! reports to the operator with the pod's token, and ends the pod through the annotations
//! that tools/testenv/stages.yaml turns into its exit code and termination message.

mod nodes;
mod trainer;

pub use nodes::{GPU_TRIAL_TEMPLATE, add_gpu_nodes};
pub use trainer::{
    EXIT_CODE, FakeTrainer, NODE_LOST, Plan, Player, TERMINATION_MESSAGE, end_pod,
    end_pod_annotations, pod_env, pod_token, pod_token_for, post_report, report_json,
};
