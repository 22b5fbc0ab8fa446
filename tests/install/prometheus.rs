//! A Prometheus (built by tools/testenv) scraping the operator, and the dashboard's queries.

use super::harness::free_port;
use super::*;
use std::process::Child;
use std::time::{Duration, Instant};

pub(crate) struct Prometheus {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn get(url: &str) -> Option<String> {
    ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
}

/// Prometheus scraping the operator's /metrics every second.
pub(crate) fn start_prometheus(dir: &Path, operator_port: u16) -> Prometheus {
    start_prometheus_with(
        dir,
        &format!(
            "  - job_name: nasop\n    static_configs: [{{targets: [\"127.0.0.1:{operator_port}\"]}}]\n"
        ),
        "nasop",
    )
}

/// Prometheus with these scrape configs (YAML list items), once it scrapes job `job`.
pub(crate) fn start_prometheus_with(dir: &Path, scrape_configs: &str, job: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{scrape_configs}"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // Scraping before the experiment starts: a rate needs the counters' values before the
    // trials ran, or a fast experiment's counters never increase within Prometheus's view.
    let started = Instant::now();
    let up = format!("up{{job=\"{job}\"}} == 1");
    let scraping = |p: &Prometheus| query(p, &up).is_ok_and(|s| !s.is_empty());
    while !scraping(&prometheus) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "prometheus did not scrape the operator; see {}",
            dir.join("prometheus.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus
}

/// Series a PromQL expression returns now.
pub(crate) fn query(prometheus: &Prometheus, expr: &str) -> Result<Vec<Value>, String> {
    let url = format!("{}/api/v1/query", prometheus.url);
    let body = ureq::get(&url)
        .query("query", expr)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(body);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Whether an instant-query series' value is a finite number.
pub(crate) fn finite(series: &Value) -> bool {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// Each panel's queries, with Grafana's variables as the dashboard would set them for this
/// experiment.
pub(crate) fn dashboard_queries(namespace: &str, experiment: &str) -> Vec<(String, String)> {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/nasop.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", namespace)
                .replace("$experiment", experiment)
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}
