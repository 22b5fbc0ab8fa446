//! What the side-by-side benchmark measures from outside the operators: their processes'
//! CPU and memory (from /proc), their API requests (from the API server's audit log) and
//! the trial pods' timeline (from a watch).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A process's CPU-seconds so far: its own and those of the children it has waited for
/// (PostgreSQL's backends come and go under its postmaster).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: utime, stime, cutime, cstime are fields 14 to 17.
    let f: Vec<f64> = text
        .rsplit(')')
        .next()?
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(f.get(11..15)?.iter().sum::<f64>() / ticks)
}

/// A process's command name (/proc/PID/comm), or "?".
pub fn command(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A process's resident memory in bytes now.
pub fn rss_bytes(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

/// Samples a changing set of processes every 200 ms: the CPU each used while sampled, and
/// the peak of their summed resident memory. A process that exits keeps its last sample; one
/// that appears counts from its first (its CPU before that, a start-up, is its own cost too,
/// so a process that appears counts from zero).
#[derive(Default)]
struct Samples {
    /// pid -> (CPU-seconds at the first sample, at the last).
    cpu: HashMap<u32, (f64, f64)>,
    /// pid -> its command name.
    names: HashMap<u32, String>,
    peak_rss: f64,
}

pub struct Sampler {
    samples: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// `pids` is asked at every sample; `existing` are processes already running whose CPU
    /// before the start does not count.
    pub fn start(pids: impl Fn() -> Vec<u32> + Send + 'static, existing: &[u32]) -> Sampler {
        let samples: Arc<Mutex<Samples>> = Arc::default();
        {
            let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
            for &pid in existing {
                if let Some(c) = cpu_seconds(pid) {
                    s.cpu.insert(pid, (c, c));
                }
            }
        }
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let now = pids();
                let mut rss = 0.0;
                let mut cpu = Vec::new();
                for pid in now {
                    if let (Some(c), Some(r)) = (cpu_seconds(pid), rss_bytes(pid)) {
                        cpu.push((pid, c));
                        rss += r;
                    }
                }
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    for (pid, c) in cpu {
                        s.cpu.entry(pid).or_insert((0.0, c)).1 = c;
                        s.names.entry(pid).or_insert_with(|| command(pid));
                    }
                    s.peak_rss = s.peak_rss.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { samples, task }
    }

    /// CPU-seconds used (in all, and by command name), peak MiB; stops sampling.
    pub async fn finish(self) -> (f64, BTreeMap<String, f64>, f64) {
        // One last sample's worth of time, so the final moments count.
        tokio::time::sleep(Duration::from_millis(250)).await;
        self.task.abort();
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (a, b)) in &s.cpu {
            let name = s.names.get(pid).cloned().unwrap_or_else(|| "?".into());
            *by_name.entry(name).or_default() += (b - a).max(0.0);
        }
        let cpu = by_name.values().sum();
        (cpu, by_name, s.peak_rss / (1024.0 * 1024.0))
    }
}

/// The API server's audit log (tools/testenv audits every request made as a service
/// account), read from an offset: requests by verb and resource made by one user.
pub struct Audit {
    path: PathBuf,
    /// The log file as it was at the start (kept open: the API server renames it when it
    /// rotates the log at 100 MB), and where the run's requests begin in it.
    start: std::fs::File,
    offset: u64,
    started: std::time::SystemTime,
}

impl Audit {
    /// From the end of the log now; the log lies beside the test control plane's kubeconfig.
    pub fn from_now() -> anyhow::Result<Audit> {
        let kubeconfig = std::env::var("KUBECONFIG")
            .map_err(|_| anyhow::anyhow!("KUBECONFIG is not set: start tools/testenv first"))?;
        let path = PathBuf::from(kubeconfig)
            .parent()
            .map(|d| d.join("logs/audit.log"))
            .unwrap_or_default();
        Self::at(path)
    }

    fn at(path: PathBuf) -> anyhow::Result<Audit> {
        let start = std::fs::File::open(&path).map_err(|e| {
            anyhow::anyhow!(
                "no audit log at {} ({e}): the benchmark needs tools/testenv's API server",
                path.display()
            )
        })?;
        let offset = start.metadata()?.len();
        Ok(Audit {
            path,
            start,
            offset,
            started: std::time::SystemTime::now(),
        })
    }

    /// The run's part of the log: the start file from the offset, then every file the API
    /// server began after it (rotated ones, then the current one), oldest first.
    fn files(&self) -> anyhow::Result<Vec<(std::fs::File, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let first = self.start.metadata()?.ino();
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let mut later = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let meta = entry.metadata()?;
            if !name.starts_with("audit") || !name.ends_with(".log") || meta.ino() == first {
                continue;
            }
            if meta.modified()? >= self.started {
                later.push((meta.modified()?, entry.path()));
            }
        }
        later.sort();
        let mut out = vec![(self.start.try_clone()?, self.offset)];
        for (_, path) in later {
            out.push((std::fs::File::open(path)?, 0));
        }
        Ok(out)
    }

    /// `verb resource[/subresource]` -> count, for requests by `user` since the offset.
    pub fn count(&self, user: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (mut file, offset) in self.files()? {
            file.seek(SeekFrom::Start(offset))?;
            count_lines(std::io::BufReader::new(file), user, &mut out)?;
        }
        Ok(out)
    }
}

fn count_lines(
    input: impl BufRead,
    user: &str,
    out: &mut BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    {
        for line in input.lines() {
            let line = line?;
            if !line.contains(user) {
                continue;
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["user"]["username"] != user {
                continue;
            }
            let object = &event["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or("(none)").to_string();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let verb = event["verb"].as_str().unwrap_or("?");
            *out.entry(format!("{verb} {resource}")).or_default() += 1;
        }
    }
    Ok(())
}

/// Trial pods as a watch sees them: when each appeared and ended, per experiment.
#[derive(Default)]
pub struct Timeline {
    /// pod name -> (experiment, trial, created, ended).
    pub pods: HashMap<String, PodTimes>,
    pub active: usize,
    pub max_active: usize,
}

pub struct PodTimes {
    pub experiment: String,
    pub trial: String,
    pub created: Instant,
    pub ended: Option<Instant>,
}

impl Timeline {
    /// Records a pod; returns whether it is new.
    pub fn seen(&mut self, pod: &str, experiment: &str, trial: &str) -> bool {
        if self.pods.contains_key(pod) {
            return false;
        }
        self.pods.insert(
            pod.to_string(),
            PodTimes {
                experiment: experiment.to_string(),
                trial: trial.to_string(),
                created: Instant::now(),
                ended: None,
            },
        );
        self.active += 1;
        self.max_active = self.max_active.max(self.active);
        true
    }

    pub fn ended(&mut self, pod: &str) {
        if let Some(p) = self.pods.get_mut(pod)
            && p.ended.is_none()
        {
            p.ended = Some(Instant::now());
            self.active -= 1;
        }
    }

    /// Per experiment, each trial pod's end paired with the next pod its experiment created
    /// after it (ends and creations in time order, first come first paired), in
    /// milliseconds: how long a freed slot waited for its successor. A pod created while no
    /// end waits (filling the parallelism) pairs with none, and neither do the last ends.
    /// Unlike pairing the n-th end with the (parallelism + n)-th pod, this holds for an
    /// operator that never fills its parallelism.
    pub fn end_to_next_pod_ms(&self) -> Vec<f64> {
        let mut by_experiment: HashMap<&str, (Vec<Instant>, Vec<Instant>)> = HashMap::new();
        for p in self.pods.values() {
            let e = by_experiment.entry(&p.experiment).or_default();
            e.0.push(p.created);
            if let Some(end) = p.ended {
                e.1.push(end);
            }
        }
        let mut out = Vec::new();
        for (mut created, mut ended) in by_experiment.into_values() {
            created.sort();
            ended.sort();
            let mut next_end = 0;
            for c in created {
                if next_end < ended.len() && ended[next_end] <= c {
                    out.push((c - ended[next_end]).as_secs_f64() * 1000.0);
                    next_end += 1;
                }
            }
        }
        out.sort_by(f64::total_cmp);
        out
    }

    /// Trials that had more than one pod.
    pub fn trials_with_several_pods(&self) -> usize {
        let mut per: HashMap<(&str, &str), usize> = HashMap::new();
        for p in self.pods.values() {
            *per.entry((&p.experiment, &p.trial)).or_default() += 1;
        }
        per.values().filter(|n| **n > 1).count()
    }

    /// When a pod last appeared or ended.
    pub fn last_change(&self) -> Option<Instant> {
        self.pods
            .values()
            .flat_map(|p| [Some(p.created), p.ended])
            .flatten()
            .max()
    }

    pub fn ended_count(&self) -> usize {
        self.pods.values().filter(|p| p.ended.is_some()).count()
    }
}

pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pair_each_new_pod_with_the_end_that_freed_it_per_experiment() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = Timeline::default();
        // Experiment a: pods at 0, 110 (a0 ended at 100), 260 (a1 at 250); a3 created at
        // 270 while no end waits pairs with none. Experiment b: one pod only, never paired.
        for (pod, exp, created, ended) in [
            ("a0", "a", 0, Some(100)),
            ("a1", "a", 110, Some(250)),
            ("a2", "a", 260, None),
            ("a3", "a", 270, None),
            ("b0", "b", 5, Some(50)),
        ] {
            t.pods.insert(
                pod.into(),
                PodTimes {
                    experiment: exp.into(),
                    trial: pod.into(),
                    created: ms(created),
                    ended: ended.map(ms),
                },
            );
        }
        assert_eq!(t.end_to_next_pod_ms(), vec![10.0, 10.0]);
        assert_eq!(t.ended_count(), 3);
        assert_eq!(t.last_change(), Some(ms(270)));
    }

    #[test]
    fn a_trial_run_twice_is_counted_once() {
        let mut t = Timeline::default();
        assert!(t.seen("x-1", "x", "x-1"));
        assert!(!t.seen("x-1", "x", "x-1"));
        assert!(t.seen("x-1-retry", "x", "x-1"));
        assert!(t.seen("x-2", "x", "x-2"));
        assert_eq!(t.trials_with_several_pods(), 1);
        assert_eq!(t.max_active, 3);
        t.ended("x-1");
        t.ended("x-1");
        assert_eq!(t.active, 2);
    }

    #[test]
    fn audit_counts_one_users_requests_by_verb_and_resource_across_a_rotation() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("nasop-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        std::fs::write(
            &path,
            "{\"user\":{\"username\":\"old\"},\"verb\":\"get\"}\n",
        )
        .unwrap();
        let audit = Audit::at(path.clone()).unwrap();
        let lines = [
            r#"{"user":{"username":"me"},"verb":"create","objectRef":{"resource":"pods"}}"#,
            r#"{"user":{"username":"me"},"verb":"patch","objectRef":{"resource":"trials","subresource":"status"}}"#,
            r#"{"user":{"username":"me"},"verb":"create","objectRef":{"resource":"pods"}}"#,
            r#"{"user":{"username":"me-too"},"verb":"create","objectRef":{"resource":"pods"}}"#,
        ];
        let mut text = String::new();
        for l in &lines[..2] {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        // The API server rotates the log: the old file is renamed, a new one begun.
        std::fs::rename(&path, dir.join("audit-2026-12-06T10-00-00.000.log")).unwrap();
        let mut text = String::new();
        for l in &lines[2..] {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        let counts = audit.count("me").unwrap();
        assert_eq!(counts.get("create pods"), Some(&2));
        assert_eq!(counts.get("patch trials/status"), Some(&1));
        assert_eq!(counts.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 1e6);
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
