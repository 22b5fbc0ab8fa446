//! The Python client (python/nasop) against the operator on the test control plane, as a
//! user's notebook drives it: create, wait, trials, best, delete through the user's
//! kubeconfig and the official `kubernetes` client; a bad field refused before it is sent;
//! a user without rights given the API server's message. The assertions are pytest's
//! (python/tests/test_client_cluster.py); this test starts the cluster side.

use crate::harness::{Env, Plan, manifest, report_json, value_of};
use crate::pyclient;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_drives_an_experiment_on_the_cluster() {
    let mut env = Env::new("op-python").await;
    env.start_operator(&[]);
    env.start_trainer(Arc::new(|input, _| {
        Plan::Exit(
            0,
            report_json(4, "val_accuracy", value_of(&input.candidate)),
        )
    }));
    let nobody = env.account_kubeconfig("python-nobody", None).await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-client");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest_path = dir.join("experiment.yaml");
    std::fs::write(
        &manifest_path,
        manifest(
            "from-python",
            "{algorithm: random, seed: 5}",
            "{maxTrials: 4, parallelism: 2, trialEpochs: 4}",
            "",
        ),
    )
    .unwrap();
    pyclient::pytest_all_pass(
        &["python/tests/test_client_cluster.py"],
        &[
            ("NASOP_TEST_NAMESPACE", env.ns.as_ref()),
            ("NASOP_TEST_MANIFEST", manifest_path.as_os_str()),
            ("NASOP_TEST_FORBIDDEN_KUBECONFIG", nobody.as_os_str()),
            ("NASOP", env!("CARGO_BIN_EXE_nasop").as_ref()),
        ],
    );
}
