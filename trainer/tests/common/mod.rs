//! What the trainer's integration tests share: the binary, a quick run, a report server.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

pub const FMNIST: &str = "/usr/share/datasets/fashion-mnist";
pub const SMALL_CELL: &str =
    "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|";

pub fn trainer() -> Command {
    assert!(
        PathBuf::from(FMNIST).is_dir(),
        "Fashion-MNIST is missing: run `make data` (apt-get install dataset-fashion-mnist)"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_nasop-trainer"));
    c.env_remove("NASOP_TRIAL")
        .env_remove("NASOP_REPORT_URL")
        .env_remove("NASOP_REPORT_TOKEN")
        .env_remove("NASOP_TERMINATION_PATH");
    c
}

pub fn quick(c: &mut Command) -> &mut Command {
    c.args([
        "train",
        "--arch",
        SMALL_CELL,
        "--channels",
        "4",
        "--cells-per-stage",
        "1",
        "--threads",
        "2",
        "--limit",
        "1200",
        "--batch-size",
        "100",
    ])
}

/// The JSON lines a run printed.
pub fn lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "trainer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

pub fn metric(line: &serde_json::Value, name: &str) -> f64 {
    line["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// A report endpoint on loopback: records each request's Authorization header and body, and
/// answers `stop` from the `stop_at`-th report on.
pub struct ReportServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl ReportServer {
    pub fn start(stop_at: usize) -> Self {
        Self::answering(stop_at, "200 OK")
    }

    /// Answers `status` (with stop) from the `stop_at`-th report on: "409 Conflict" is the
    /// operator's word for an attempt that another one replaced.
    pub fn answering(stop_at: usize, status: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/report", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut auth, mut length) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if lower.starts_with("authorization:") {
                        auth = line["authorization:".len()..].trim().to_string();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let mut seen = log.lock().unwrap();
                seen.push((auth, serde_json::from_slice(&body).unwrap()));
                let (code, action) = if seen.len() >= stop_at {
                    (status, "stop")
                } else {
                    ("200 OK", "continue")
                };
                let reply = format!("{{\"action\":\"{action}\"}}");
                write!(stream, "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len()).unwrap();
            }
        });
        ReportServer { url, seen }
    }
}

pub fn tempdir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("nasop-trainer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
