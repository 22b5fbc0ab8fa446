//! The report endpoint of the local runner: `POST /v1/report` on loopback, one bearer token
//! per trial. Reports go to the run loop through a channel; the answer (continue or stop)
//! comes from the gate the run loop sets.

use nasop_core::contract::{Report, ReportAction, ReportReply};
use std::collections::HashMap;
use std::io::Read;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// Per-trial access: token and whether the next report is answered "stop".
#[derive(Default)]
pub struct Gates {
    by_token: HashMap<String, (u32, bool)>,
}

impl Gates {
    pub fn open(&mut self, index: u32, token: &str) {
        self.by_token.insert(token.to_string(), (index, false));
    }

    pub fn close(&mut self, index: u32) {
        self.by_token.retain(|_, (i, _)| *i != index);
    }

    pub fn stop(&mut self, index: u32) {
        for (i, stop) in self.by_token.values_mut() {
            if *i == index {
                *stop = true;
            }
        }
    }
}

pub struct ReportServer {
    pub url: String,
    pub gates: Arc<Mutex<Gates>>,
}

/// A random token (16 bytes from the OS, hex).
pub fn token() -> String {
    nasop_core::rng::os_random_hex(16)
}

impl ReportServer {
    pub fn start(reports: Sender<(u32, Report)>) -> anyhow::Result<ReportServer> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("cannot listen on loopback for trial reports: {e}"))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .unwrap_or_default();
        let gates: Arc<Mutex<Gates>> = Arc::default();
        let shared = Arc::clone(&gates);
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let (status, body) = handle(&mut request, &shared, &reports);
                let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .expect("a valid header");
                let _ = request.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        });
        Ok(ReportServer {
            url: format!("http://127.0.0.1:{port}/v1/report"),
            gates,
        })
    }
}

fn handle(
    request: &mut tiny_http::Request,
    gates: &Mutex<Gates>,
    reports: &Sender<(u32, Report)>,
) -> (u16, String) {
    if request.url() != "/v1/report" || *request.method() != tiny_http::Method::Post {
        return (404, "{\"error\":\"POST /v1/report\"}".into());
    }
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer ").map(str::to_string))
        .unwrap_or_default();
    let Some((index, stop)) = gates
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .by_token
        .get(&token)
        .copied()
    else {
        return (401, "{\"error\":\"unknown or missing trial token\"}".into());
    };
    let mut body = String::new();
    if request
        .as_reader()
        .take(1 << 20)
        .read_to_string(&mut body)
        .is_err()
    {
        return (400, "{\"error\":\"unreadable body\"}".into());
    }
    let report: Report = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                400,
                serde_json::json!({"error": format!("not a report: {e}")}).to_string(),
            );
        }
    };
    let _ = reports.send((index, report));
    let action = if stop {
        ReportAction::Stop
    } else {
        ReportAction::Continue
    };
    (
        200,
        serde_json::to_string(&ReportReply { action }).expect("a reply serialises"),
    )
}
