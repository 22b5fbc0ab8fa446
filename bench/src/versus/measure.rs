//! What the side-by-side benchmark measures from outside the operators: their processes'
//! CPU and memory (from /proc), their API requests (from the API server's audit log) and
//! the trial pods' timeline (from a watch).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What /proc/PID/stat says of a process: its parent, and its CPU-seconds, its own and
/// those of the children it has waited for.
struct Stat {
    parent: u32,
    own: f64,
    children: f64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, ppid, ..., utime, stime, cutime, cstime (fields 14 to
    // 17 of the whole line).
    let f: Vec<&str> = text.rsplit(')').next()?.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let seconds = |i: usize| f.get(i).map(|x| x.parse::<f64>().unwrap_or(0.0) / ticks);
    Some(Stat {
        parent: f.get(1)?.parse().ok()?,
        own: seconds(11)? + seconds(12)?,
        children: seconds(13)? + seconds(14)?,
    })
}

/// A process's CPU-seconds so far: its own and those of the children it has waited for
/// (PostgreSQL's backends come and go under its postmaster).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat(pid).map(|s| s.own + s.children)
}

/// The CPU of each of `pids`: a process's own and its waited-for children's, except where
/// its children are among `pids` (counted there, not twice: PostgreSQL's postmaster).
fn cpu_of(pids: &[u32]) -> Vec<(u32, f64)> {
    let stats: Vec<(u32, Stat)> = pids
        .iter()
        .filter_map(|&pid| Some((pid, stat(pid)?)))
        .collect();
    let parents: std::collections::HashSet<u32> = stats.iter().map(|(_, s)| s.parent).collect();
    stats
        .into_iter()
        .map(|(pid, s)| {
            let children = if parents.contains(&pid) {
                0.0
            } else {
                s.children
            };
            (pid, s.own + children)
        })
        .collect()
}

/// A process's command name (/proc/PID/comm), or "?".
pub fn command(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A `Key:  N kB` line of a /proc file, in bytes.
fn kib_line(path: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kib: f64 = text
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

/// A process's resident memory in bytes now.
pub fn rss_bytes(pid: u32) -> Option<f64> {
    kib_line(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A process's proportional set size in bytes now (/proc/PID/smaps_rollup): each shared
/// page counted as its share among the processes that map it, so that shared libraries and
/// PostgreSQL's shared buffers count once across processes, not once per process.
pub fn pss_bytes(pid: u32) -> Option<f64> {
    kib_line(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// The processes whose parent is `pid` (PostgreSQL's backends under its postmaster).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat(child).is_some_and(|s| s.parent == pid))
        .collect()
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
    /// The peak of their summed PSS (see [`pss_bytes`]).
    peak_pss: f64,
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
            for (pid, c) in cpu_of(existing) {
                s.cpu.insert(pid, (c, c));
            }
        }
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let now = pids();
                let (mut rss, mut pss) = (0.0, 0.0);
                let mut cpu = Vec::new();
                for (pid, c) in cpu_of(&now) {
                    if let Some(r) = rss_bytes(pid) {
                        cpu.push((pid, c));
                        rss += r;
                        pss += pss_bytes(pid).unwrap_or(r);
                    }
                }
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    for (pid, c) in cpu {
                        s.cpu.entry(pid).or_insert((0.0, c)).1 = c;
                        s.names.entry(pid).or_insert_with(|| command(pid));
                    }
                    s.peak_rss = s.peak_rss.max(rss);
                    s.peak_pss = s.peak_pss.max(pss);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { samples, task }
    }

    /// CPU-seconds used (in all, and by command name), peak RSS and peak PSS in MiB; stops
    /// sampling.
    pub async fn finish(self) -> (f64, BTreeMap<String, f64>, f64, f64) {
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
        let mib = 1024.0 * 1024.0;
        (cpu, by_name, s.peak_rss / mib, s.peak_pss / mib)
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
        self.count_by(user, |u| u == user)
    }

    /// The same for every user whose name starts with `prefix` (the controller manager's
    /// controllers, each its own service account with --use-service-account-credentials).
    pub fn count_prefix(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        self.count_by(prefix, |u| u.starts_with(prefix))
    }

    fn count_by(
        &self,
        needle: &str,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (mut file, offset) in self.files()? {
            file.seek(SeekFrom::Start(offset))?;
            count_lines(std::io::BufReader::new(file), needle, &matches, &mut out)?;
        }
        Ok(out)
    }
}

fn count_lines(
    input: impl BufRead,
    needle: &str,
    matches: &dyn Fn(&str) -> bool,
    out: &mut BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    {
        for line in input.lines() {
            let line = line?;
            if !line.contains(needle) {
                continue;
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if !event["user"]["username"].as_str().is_some_and(matches) {
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

/// A log file read from an offset: how many lines since then hold a phrase (client-go's
/// "Waited for ... due to client-side throttling").
pub struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    /// From the end of `path` now; a file that does not exist yet counts from its start.
    pub fn from_now(path: PathBuf) -> LogTail {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        LogTail { path, offset }
    }

    pub fn count(&self, phrase: &str) -> u64 {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return 0;
        };
        // A file rotated or truncated since: count it whole.
        let len = file.metadata().map_or(0, |m| m.len());
        let offset = if len < self.offset { 0 } else { self.offset };
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return 0;
        }
        std::io::BufReader::new(file)
            .split(b'\n')
            .map_while(Result::ok)
            .filter(|l| String::from_utf8_lossy(l).contains(phrase))
            .count() as u64
    }
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
    /// When the watch first saw it Running.
    pub running: Option<Instant>,
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
                running: None,
                ended: None,
            },
        );
        self.active += 1;
        self.max_active = self.max_active.max(self.active);
        true
    }

    /// The pod runs (first seen Running, or ended without being seen Running: then from
    /// its end, running no time).
    pub fn running(&mut self, pod: &str) {
        if let Some(p) = self.pods.get_mut(pod) {
            p.running.get_or_insert_with(Instant::now);
        }
    }

    /// Per experiment, a slot freed (a trial pod's end) to the pod created for it, in
    /// milliseconds, slots served first-freed first: an experiment starts with
    /// `parallelism` free slots (their first pods are not refills), each end frees one, each
    /// new pod takes the one free longest. An operator that leaves slots empty makes every
    /// later slot wait behind them, so this is a refill latency whether or not the operator
    /// fills its parallelism; the same definition for both operators.
    pub fn refill_ms(&self, parallelism: usize) -> Vec<f64> {
        let mut by_experiment: HashMap<&str, Vec<(Instant, bool)>> = HashMap::new();
        for p in self.pods.values() {
            let e = by_experiment.entry(&p.experiment).or_default();
            e.push((p.created, true));
            if let Some(end) = p.ended {
                e.push((end, false));
            }
        }
        let mut out = Vec::new();
        for mut events in by_experiment.into_values() {
            // At one instant, an end frees its slot before a pod takes one.
            events.sort_by_key(|&(at, created)| (at, created));
            // None: one of the slots free from the start.
            let mut free: std::collections::VecDeque<Option<Instant>> =
                std::iter::repeat_n(None, parallelism).collect();
            for (at, created) in events {
                if created {
                    if let Some(Some(freed)) = free.pop_front() {
                        out.push((at - freed).as_secs_f64() * 1000.0);
                    }
                } else {
                    free.push_back(Some(at));
                }
            }
        }
        out.sort_by(f64::total_cmp);
        out
    }

    /// The share of slot-seconds from `start` to `end` with a trial pod running, over
    /// `slots` slots.
    pub fn slot_utilisation(&self, slots: usize, start: Instant, end: Instant) -> f64 {
        let span = end.saturating_duration_since(start).as_secs_f64() * slots as f64;
        if span <= 0.0 {
            return f64::NAN;
        }
        let busy: f64 = self
            .pods
            .values()
            .filter_map(|p| {
                let from = p.running?.max(start);
                let to = p.ended.unwrap_or(end).min(end);
                Some(to.saturating_duration_since(from).as_secs_f64())
            })
            .sum();
        busy / span
    }

    /// The first time a trial pod ran.
    pub fn first_running(&self) -> Option<Instant> {
        self.pods.values().filter_map(|p| p.running).min()
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
                    running: None,
                    ended: ended.map(ms),
                },
            );
        }
        assert_eq!(t.end_to_next_pod_ms(), vec![10.0, 10.0]);
        assert_eq!(t.ended_count(), 3);
        assert_eq!(t.last_change(), Some(ms(270)));
    }

    #[test]
    fn a_slot_waits_behind_slots_left_empty_and_utilisation_counts_running_time() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = Timeline::default();
        // Parallelism 2. p0 and p1 take the two first slots; p0 ends at 100, p2 comes at
        // 130 (a refill of 30 ms); p1 ends at 200, p3 comes at 500 (300 ms).
        for (pod, created, running, ended) in [
            ("p0", 0, Some(10), Some(100)),
            ("p1", 0, Some(10), Some(200)),
            ("p2", 130, Some(140), Some(300)),
            ("p3", 500, Some(500), Some(600)),
        ] {
            t.pods.insert(
                pod.into(),
                PodTimes {
                    experiment: "a".into(),
                    trial: pod.into(),
                    created: ms(created),
                    running: running.map(ms),
                    ended: ended.map(ms),
                },
            );
        }
        assert_eq!(t.refill_ms(2), vec![30.0, 300.0]);
        // With parallelism 3 the first three pods took free slots: p3 takes p0's slot,
        // free since 100.
        assert_eq!(t.refill_ms(3), vec![400.0]);
        // Running: 90 + 190 + 160 + 100 = 540 ms of 2 slots × 600 ms.
        let u = t.slot_utilisation(2, ms(0), ms(600));
        assert!((u - 0.45).abs() < 1e-9, "{u}");
        assert_eq!(t.first_running(), Some(ms(10)));
    }

    #[test]
    fn a_log_tail_counts_the_lines_written_since() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("nasop-logtail-{}", std::process::id()));
        std::fs::write(&path, "Waited for 1s due to client-side throttling\n").unwrap();
        let tail = LogTail::from_now(path.clone());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(
            f,
            "I1207 Waited for 2.1s due to client-side throttling, not priority and fairness"
        )
        .unwrap();
        writeln!(f, "other").unwrap();
        assert_eq!(tail.count("client-side throttling"), 1);
        assert_eq!(LogTail::from_now(path.with_extension("none")).count("x"), 0);
        std::fs::remove_file(path).unwrap();
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
        let pss = pss_bytes(pid).unwrap();
        assert!(pss > 0.0 && pss <= rss_bytes(pid).unwrap() * 1.5, "{pss}");
        assert!(cpu_seconds(u32::MAX).is_none());
        // A child sampled beside its parent: the parent's CPU is its own only.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(children(pid).contains(&child.id()));
        let both = cpu_of(&[pid, child.id()]);
        let own = stat(pid).unwrap().own;
        assert!((both[0].1 - own).abs() < 0.05, "{both:?} vs own {own}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
