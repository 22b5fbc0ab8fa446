//! Runs the Python client's pytest files (scripts/pyclient.sh: its pinned environment) with
//! `envs`, and fails unless they all pass and none is skipped: a skipped client test would
//! be a test that cannot fail.

use std::process::Command;

pub fn pytest_all_pass(files: &[&str], envs: &[(&str, &std::ffi::OsStr)]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(format!("{root}/scripts/pyclient.sh"));
    cmd.args(files).arg("-rs").current_dir(root);
    for (name, value) in envs {
        cmd.env(name, value);
    }
    let out = cmd.output().expect("scripts/pyclient.sh runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(
        text.contains(" passed") && !text.contains("skipped"),
        "every client test must run, none skip:\n{text}"
    );
}
