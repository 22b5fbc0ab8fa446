//! A real browser for the UI tests: Debian's headless Chromium driven through chromedriver
//! (WebDriver) with fantoccini, and `nasop ui` started the way a user starts it.
//! scripts/chromium.sh installs both (`make test` runs it).

use fantoccini::{Client, ClientBuilder, Locator};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where screenshots are kept: target/ui-screenshots (README's pictures come from there).
pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The operations of a cell candidate, in edge order: what its drawing must show.
pub fn cell_ops(candidate: &str) -> Vec<String> {
    candidate
        .split(';')
        .next()
        .unwrap()
        .split(['|', '+'])
        .filter(|s| !s.is_empty())
        .map(|s| s.split('~').next().unwrap().to_string())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    pub async fn start() -> Browser {
        let driver_path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is not installed: run scripts/chromium.sh (make test does)");
        let port = free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }))
        .unwrap();
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver on port {port} gave no session: {e}"),
            }
        };
        Browser { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs a script in the page; its return value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    pub async fn count(&self, css: &str) -> usize {
        self.eval(&format!(
            "return document.querySelectorAll({}).length",
            serde_json::to_string(css).unwrap()
        ))
        .await
        .as_u64()
        .unwrap() as usize
    }

    pub async fn text(&self, css: &str) -> String {
        self.eval(&format!(
            "const e = document.querySelector({}); return e ? (e.innerText ?? e.textContent) : null",
            serde_json::to_string(css).unwrap()
        ))
        .await
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no element {css} on the page"))
    }

    /// The texts of every match of `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        serde_json::from_value(
            self.eval(&format!(
                "return Array.from(document.querySelectorAll({})).map(e => e.textContent)",
                serde_json::to_string(css).unwrap()
            ))
            .await,
        )
        .unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Clicks the trial table's value header and waits for the sorted page; the values shown.
    pub async fn sort_by_value(&self) -> Vec<f64> {
        self.click("#trial-table a[data-sort=value]").await;
        self.wait_until(
            "sorted",
            "location.search.includes('sort=value')",
            Duration::from_secs(10),
        )
        .await;
        self.texts("#trial-table td.value")
            .await
            .iter()
            .map(|v| v.parse().unwrap())
            .collect()
    }

    /// Polls `script` (a JavaScript expression) until it is true; the time it took.
    pub async fn wait_until(&self, what: &str, script: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let v = self.eval(&format!("return !!({script})")).await;
            if v.as_bool() == Some(true) {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                let body = self.eval("return document.body.innerText").await;
                panic!(
                    "{what}: not true after {timeout:?}: {script}\npage:\n{}",
                    body.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves the page as target/ui-screenshots/<name>.png, in the light or dark theme.
    pub async fn screenshot(&self, name: &str, theme: &str) -> PathBuf {
        self.eval(&format!(
            "document.documentElement.dataset.theme = {}; return 1",
            serde_json::to_string(theme).unwrap()
        ))
        .await;
        let png = self.client.screenshot().await.unwrap();
        let path = screenshots().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// `nasop ui` running as a user runs it; killed when dropped.
pub struct Ui {
    child: Child,
    pub url: String,
}

impl Ui {
    /// Starts `nasop ui <args>` with extra environment; waits for the address it prints.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Ui {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nasop"))
            .arg("ui")
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nasop ui starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("nasop ui printed no address: {line:?}"))
            .trim_end_matches('/')
            .to_string();
        Ui { child, url }
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
