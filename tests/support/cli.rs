//! Running the command-line tools a user runs (kubectl, helm, make) from tests: the install
//! tests and the end-to-end test share these.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn chart() -> PathBuf {
    repo("charts/nasop")
}

/// The tools tools/testenv built: helm, prometheus, the ServiceMonitor CRD.
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("NASOP_TESTENV_BIN").unwrap_or_default();
    let path = Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "NASOP_TESTENV_BIN does not hold {name}: run `make test`, or `eval $(make testenv-up | tail -1)` first"
    );
    path
}

/// Runs `cmd` to its end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"))
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn helm() -> Command {
    Command::new(tool("helm"))
}

pub fn kubectl() -> Command {
    Command::new("kubectl")
}

/// Waits until each CRD is Established. `kubectl wait --for=condition=...` fails at once,
/// instead of waiting, while the API server has written no condition yet, so it is retried.
pub fn wait_established(crds: &[&str]) {
    let started = std::time::Instant::now();
    loop {
        let out = run(kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s"])
            .args(crds.iter().map(|c| format!("crd/{c}"))));
        if out.status.success() {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{crds:?} not Established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `cmd` with `input` on its standard input.
pub fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
