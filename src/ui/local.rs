//! The local source: a runs directory (what `nasop run` writes), or one run directory.
//! Each run is read from its manifest and journal, again only when the journal changed; a
//! poll of the journals' sizes and times tells the pages that something did.

use super::Problem;
use super::model::{self, Detail, Key, Summary, Trial};
use crate::engine::TrialPhase;
use crate::local::journal::{Journal, Replay};
use crate::local::manifest;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Local runs have no namespace; the pages show this one.
pub const NAMESPACE: &str = "local";
/// How often the journals are looked at: a new report shows well within 2 s.
const POLL: Duration = Duration::from_millis(300);

/// What a run directory's files looked like when it was last read.
type Stamp = Vec<(u64, Option<SystemTime>)>;

/// A run as last read: the journal is followed from `offset`, not read again.
struct Followed {
    stamp: Stamp,
    manifest: Stamp,
    experiment: crate::engine::Experiment,
    replay: Replay,
    offset: u64,
    detail: Arc<Detail>,
}

pub struct Local {
    root: PathBuf,
    cache: Mutex<HashMap<PathBuf, Followed>>,
    changes: tokio::sync::watch::Sender<u64>,
}

fn stamp(dir: &Path) -> Stamp {
    ["manifest.yaml", "journal.jsonl"]
        .iter()
        .map(|f| match std::fs::metadata(dir.join(f)) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
}

impl Local {
    pub fn new(root: PathBuf) -> anyhow::Result<Arc<Local>> {
        anyhow::ensure!(
            root.is_dir(),
            "{} is not a directory: give the runs directory `nasop run` writes (nasop-runs by default) or one run directory in it",
            root.display()
        );
        // `nasop ui .` inside a run: the run is named by its directory's real name.
        let root = root.canonicalize().unwrap_or(root);
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Local {
            root,
            cache: Mutex::new(HashMap::new()),
            changes,
        }))
    }

    pub fn label(&self) -> String {
        format!("runs in {}", self.root.display())
    }

    /// The run directories: the root itself when it is one, else its children that are.
    fn runs(&self) -> Vec<PathBuf> {
        if self.root.join("manifest.yaml").exists() {
            return vec![self.root.clone()];
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.yaml").exists())
            .collect();
        dirs.sort();
        dirs
    }

    fn dir_of(&self, key: &Key) -> Option<PathBuf> {
        self.runs().into_iter().find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy() == key.name)
        })
    }

    /// Polls the journals and tells the pages when any changed; runs until the process ends.
    pub fn spawn_watch(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now: Vec<(PathBuf, Stamp)> = me
                    .runs()
                    .into_iter()
                    .map(|d| {
                        let s = stamp(&d);
                        (d, s)
                    })
                    .collect();
                if last.as_ref() != Some(&now) {
                    if last.is_some() {
                        me.changes.send_modify(|v| *v += 1);
                    }
                    last = Some(now);
                }
                tokio::time::sleep(POLL).await;
            }
        });
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn load(&self, dir: &Path) -> Result<Arc<Detail>, Problem> {
        let problem = |e: anyhow::Error| Problem {
            status: 500,
            title: format!("cannot read the run {}", dir.display()),
            detail: format!("{e:#}"),
        };
        let s = stamp(dir);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get_mut(dir) {
            if f.stamp == s {
                return Ok(Arc::clone(&f.detail));
            }
            // The same manifest and a journal that only grew: read what was appended.
            if f.manifest[..] == s[..1] && s[1].0 >= f.offset {
                let path = dir.join("journal.jsonl");
                match Journal::follow(&path, Some(&f.experiment.space), &mut f.replay, f.offset) {
                    Ok(offset) => {
                        f.offset = offset;
                        f.detail = Arc::new(detail_of(dir, &f.experiment, &f.replay));
                        f.stamp = s;
                        return Ok(Arc::clone(&f.detail));
                    }
                    Err(e) => {
                        // Half applied: the run is read whole next time.
                        cache.remove(dir);
                        return Err(problem(e));
                    }
                }
            }
        }
        let m = manifest::load(&dir.join("manifest.yaml")).map_err(|e| problem(e.into()))?;
        let mut replay = Replay::default();
        let offset = Journal::follow(
            &dir.join("journal.jsonl"),
            Some(&m.experiment.space),
            &mut replay,
            0,
        )
        .map_err(problem)?;
        let detail = Arc::new(detail_of(dir, &m.experiment, &replay));
        cache.insert(
            dir.to_path_buf(),
            Followed {
                manifest: s[..1].to_vec(),
                stamp: s,
                experiment: m.experiment,
                replay,
                offset,
                detail: Arc::clone(&detail),
            },
        );
        Ok(detail)
    }

    pub fn list(&self) -> Result<Vec<Summary>, Problem> {
        Ok(self
            .runs()
            .iter()
            .map(|d| match self.load(d) {
                Ok(detail) => detail.summary.clone(),
                Err(p) => Summary {
                    key: Key {
                        namespace: NAMESPACE.into(),
                        name: name_of(d),
                    },
                    phase: "Unreadable".into(),
                    strategy: String::new(),
                    done: 0,
                    running: 0,
                    total: 0,
                    best_value: None,
                    created: None,
                    problem: Some(p.detail),
                },
            })
            .collect())
    }

    pub fn detail(&self, key: &Key) -> Result<Arc<Detail>, Problem> {
        let dir = self
            .dir_of(key)
            .filter(|_| key.namespace == NAMESPACE)
            .ok_or_else(|| Problem {
                status: 404,
                title: format!("no run {}", key.name),
                detail: format!(
                    "{} holds no run directory named {}",
                    self.root.display(),
                    key.name
                ),
            })?;
        self.load(&dir)
    }

    pub fn log(&self, key: &Key, index: u32) -> Result<String, Problem> {
        let dir = self
            .detail(key)
            .map(|_| self.dir_of(key))?
            .unwrap_or_default();
        let path = dir.join("trials").join(index.to_string()).join("log.txt");
        match tail(&path, 64 * 1024) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(format!("(no log yet: {} does not exist)", path.display()))
            }
            Err(e) => Err(Problem {
                status: 500,
                title: "cannot read the log".into(),
                detail: format!("{}: {e}", path.display()),
            }),
        }
    }
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The last `bytes` of a file, from a line start.
pub fn tail(path: &Path, bytes: u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(bytes);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(match (from > 0, text.find('\n')) {
        (true, Some(k)) => text[k + 1..].to_string(),
        _ => text,
    })
}

/// Reads a run directory into the pages' model.
pub fn read_run(dir: &Path) -> anyhow::Result<Detail> {
    let m = manifest::load(&dir.join("manifest.yaml"))?;
    let replay = Journal::replay(&dir.join("journal.jsonl"), Some(&m.experiment.space))?;
    Ok(detail_of(dir, &m.experiment, &replay))
}

/// A run's journal, replayed, as the pages' model.
fn detail_of(dir: &Path, exp: &crate::engine::Experiment, replay: &Replay) -> Detail {
    let name = name_of(dir);
    let trials: Vec<Trial> =
        replay
            .trials
            .iter()
            .map(|r| {
                let info = replay.info.get(&r.index).cloned().unwrap_or_default();
                Trial {
                    name: format!("{name}-{}", r.index),
                    reason: replay.reasons.get(&r.index).cloned().unwrap_or_else(|| {
                        match r.phase {
                            TrialPhase::Running => "Running".into(),
                            _ => String::new(),
                        }
                    }),
                    message: info.get("message").cloned().unwrap_or_default(),
                    attempts: replay.attempts.get(&r.index).copied().unwrap_or(0),
                    pod: None,
                    // Looked for when a page shows it (Detail::artifact): a stat per trial
                    // here cost more than the rest of a 10,000-trial page.
                    artifact: None,
                    resume_from: replay.seeds.get(&r.index).and_then(|s| s.1),
                    info,
                    record: r.clone(),
                }
            })
            .collect();
    let (done, running, total) = model::counts(exp, &replay.trials);
    let phase = match &replay.done {
        Some((true, _, _)) => "Succeeded",
        Some((false, _, _)) => "Failed",
        None if replay.trials.is_empty() => "Pending",
        None => "Running",
    };
    let best_value =
        crate::engine::best_trial(exp, &replay.trials).and_then(|t| model::value_of(exp, t));
    let created = replay.started_at;
    let summary = Summary {
        key: Key {
            namespace: NAMESPACE.into(),
            name,
        },
        phase: phase.into(),
        strategy: model::strategy_name(exp),
        done,
        running,
        total,
        best_value,
        created,
        problem: None,
    };
    let mut detail = Detail::new(summary, exp.clone(), trials, created);
    detail.run_dir = Some(dir.to_path_buf());
    detail.message = replay
        .done
        .as_ref()
        .map(|(_, reason, message)| format!("{reason}: {message}"));
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_run_reads_back_with_a_pareto_front_no_trial_dominates() {
        let dir = std::env::temp_dir().join(format!("nasop-ui-local-{}", std::process::id()));
        let run = dir.join("ui-bench");
        crate::ui::bench::write_run(&run, 300).unwrap();
        let d = read_run(&run).unwrap();
        assert_eq!(d.trials.len(), 300);
        assert_eq!(
            d.summary.phase, "Running",
            "no Done line: the run is still going"
        );
        assert_eq!((d.summary.done, d.summary.total), (300, 300));
        let records = d.records();
        let front = d.pareto().to_vec();
        assert!(front.len() >= 2, "{front:?}");
        // Feasible (latency_ms ≤ 20) succeeded trials; none dominates a front member.
        let point = |i: u32| {
            let m = &d.trial(i).unwrap().record.metrics;
            (m["val_accuracy"], m["latency_ms"])
        };
        let feasible: Vec<u32> = d
            .trials
            .iter()
            .filter(|t| {
                t.record
                    .metrics
                    .get("latency_ms")
                    .is_some_and(|l| *l <= 20.0)
            })
            .map(|t| t.record.index)
            .collect();
        for &f in &front {
            let (acc, lat) = point(f);
            assert!(lat <= 20.0, "trial {f} breaks the constraint");
            for &o in &feasible {
                let (a, l) = point(o);
                assert!(
                    !(a >= acc && l <= lat && (a > acc || l < lat)),
                    "trial {o} dominates front member {f}"
                );
            }
        }
        assert!(d.best().is_some_and(|b| front.contains(&b)));
        assert_eq!(records.len(), 300);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_tail_starts_at_a_line() {
        let path = std::env::temp_dir().join(format!("nasop-ui-tail-{}", std::process::id()));
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let t = tail(&path, 100).unwrap();
        assert!(t.starts_with("line ") && t.ends_with("line 999\n"), "{t:?}");
        assert!(t.len() <= 100);
        assert_eq!(tail(&path, 1 << 20).unwrap(), text);
        let _ = std::fs::remove_file(&path);
    }
}
