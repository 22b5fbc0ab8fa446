//! The Python client (python/nasop) against `nasop run`, and the notebook
//! (examples/notebooks/search.ipynb) executed headless: the assertions are pytest's
//! (python/tests/test_client_local.py, test_notebook.py); this test hands them this build's
//! binaries and fails if any of them is skipped. The cluster half is
//! tests/operator/python.rs.

#[path = "support/pyclient.rs"]
mod pyclient;

use std::path::Path;

#[test]
fn the_python_client_and_the_notebook_drive_local_runs() {
    let nasop = Path::new(env!("CARGO_BIN_EXE_nasop"));
    // The workspace's trainer, built beside nasop by `cargo test --workspace`.
    let trainer = nasop.with_file_name("nasop-trainer");
    assert!(
        trainer.is_file(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        trainer.display()
    );
    pyclient::pytest_all_pass(
        &[
            "python/tests/test_client_local.py",
            "python/tests/test_notebook.py",
        ],
        &[
            ("NASOP", nasop.as_os_str()),
            ("NASOP_TRAINER", trainer.as_os_str()),
        ],
    );
}
