//! The run directory's journal: one JSON object per line, appended and fsynced before the
//! runner acts on it, so a crash at any moment loses nothing that was acted on. Replaying it
//! gives the trials as the engine sees them.

use crate::engine::{Report, Seconds, Stage, TrialPhase, TrialRecord};
use anyhow::{Context, Result};
use nasop_core::SearchSpace;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// The first line: what the recorded trials depend on.
    Experiment {
        name: String,
        identity: serde_json::Value,
        at: Seconds,
    },
    /// A trial, recorded before it starts.
    Trial {
        index: u32,
        candidate: String,
        epochs: u32,
        seed: u64,
        resume_from: Option<u32>,
        /// `final` for final training; absent for the search (and in older journals).
        #[serde(
            default,
            skip_serializing_if = "nasop_core::contract::Stage::is_search"
        )]
        stage: nasop_core::contract::Stage,
        at: Seconds,
    },
    Started {
        index: u32,
        attempt: u32,
        at: Seconds,
    },
    Report {
        index: u32,
        step: u32,
        metrics: BTreeMap<String, f64>,
    },
    Finished {
        index: u32,
        phase: FinishedPhase,
        metrics: BTreeMap<String, f64>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        info: BTreeMap<String, String>,
        reason: String,
        at: Seconds,
    },
    /// The experiment ended (a later run with a larger budget may continue it).
    Done {
        succeeded: bool,
        reason: String,
        message: String,
        at: Seconds,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishedPhase {
    Succeeded,
    Failed,
    Stopped,
}

impl From<FinishedPhase> for TrialPhase {
    fn from(p: FinishedPhase) -> TrialPhase {
        match p {
            FinishedPhase::Succeeded => TrialPhase::Succeeded,
            FinishedPhase::Failed => TrialPhase::Failed,
            FinishedPhase::Stopped => TrialPhase::Stopped,
        }
    }
}

/// What a journal holds, replayed.
#[derive(Debug, Default)]
pub struct Replay {
    pub name: Option<String>,
    pub identity: Option<serde_json::Value>,
    pub started_at: Option<Seconds>,
    pub trials: Vec<TrialRecord>,
    pub seeds: BTreeMap<u32, (u64, Option<u32>)>,
    pub attempts: BTreeMap<u32, u32>,
    pub info: BTreeMap<u32, BTreeMap<String, String>>,
    pub reasons: BTreeMap<u32, String>,
    pub done: Option<(bool, String, String)>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens a journal for appending. A torn last line (a crash mid-write, which `replay`
    /// skips) is cut off first: appended to, it would merge with the next entry into a line
    /// no replay could read.
    pub fn open(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the journal {}", path.display()))?;
        if bytes.last().is_some_and(|b| *b != b'\n') {
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |k| k + 1);
            file.set_len(whole as u64)
                .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends and fsyncs one entry.
    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_string(entry)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        Ok(())
    }

    /// Reads what was appended to a journal since `offset` (a byte position a previous call
    /// returned, 0 at first) into `replay`; returns the new position. Only whole lines are
    /// read: a line still being written is left for the next call. `nasop ui` follows a
    /// running search this way without reading its journal again.
    pub fn follow(
        path: &Path,
        space: Option<&SearchSpace>,
        replay: &mut Replay,
        offset: u64,
    ) -> Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |k| k + 1);
        let text = std::str::from_utf8(&bytes[..whole])
            .with_context(|| format!("{}: not UTF-8 after byte {offset}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let entry: Entry = serde_json::from_str(line).with_context(|| {
                format!("{}: unreadable journal entry {line:?}", path.display())
            })?;
            apply(replay, entry, space).with_context(|| path.display().to_string())?;
        }
        Ok(offset + whole as u64)
    }

    /// Reads a journal. A torn last line (a crash mid-write) is ignored; anything else
    /// unreadable is an error naming the line.
    pub fn replay(path: &Path, space: Option<&SearchSpace>) -> Result<Replay> {
        let mut replay = Replay::default();
        if !path.exists() {
            return Ok(replay);
        }
        let lines: Vec<String> = BufReader::new(File::open(path)?)
            .lines()
            .collect::<std::io::Result<_>>()?;
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = match serde_json::from_str(line) {
                Ok(e) => e,
                Err(_) if n + 1 == lines.len() => break,
                Err(e) => anyhow::bail!(
                    "{}:{}: unreadable journal entry: {e}",
                    path.display(),
                    n + 1
                ),
            };
            apply(&mut replay, entry, space)
                .with_context(|| format!("{}:{}", path.display(), n + 1))?;
        }
        Ok(replay)
    }
}

fn apply(r: &mut Replay, entry: Entry, space: Option<&SearchSpace>) -> Result<()> {
    let find = |r: &mut Replay, index: u32| {
        r.trials
            .iter()
            .position(|t| t.index == index)
            .with_context(|| format!("trial {index} is not recorded"))
    };
    match entry {
        Entry::Experiment { name, identity, at } => {
            r.name = Some(name);
            r.identity = Some(identity);
            r.started_at.get_or_insert(at);
        }
        Entry::Trial {
            index,
            candidate,
            epochs,
            seed,
            resume_from,
            stage,
            ..
        } => {
            let (point, key) = match space {
                Some(s) => {
                    let p = s
                        .parse(&candidate)
                        .map_err(|e| anyhow::anyhow!("trial {index}: {e}"))?;
                    let k = s.key(&p);
                    (p, k)
                }
                None => (Vec::new(), candidate.clone()),
            };
            r.trials.push(TrialRecord {
                index,
                candidate,
                point,
                key,
                epochs,
                stage: Stage::from_contract(stage),
                phase: TrialPhase::Pending,
                started_at: None,
                finished_at: None,
                reports: Vec::new(),
                metrics: BTreeMap::new(),
            });
            r.seeds.insert(index, (seed, resume_from));
            r.done = None;
        }
        Entry::Started { index, attempt, at } => {
            let i = find(r, index)?;
            r.trials[i].phase = TrialPhase::Running;
            r.trials[i].started_at.get_or_insert(at);
            r.attempts.insert(index, attempt);
        }
        Entry::Report {
            index,
            step,
            metrics,
        } => {
            let i = find(r, index)?;
            let reports = &mut r.trials[i].reports;
            reports.retain(|rep| rep.step != step);
            reports.push(Report { step, metrics });
        }
        Entry::Finished {
            index,
            phase,
            metrics,
            info,
            reason,
            at,
        } => {
            let i = find(r, index)?;
            let t = &mut r.trials[i];
            t.phase = phase.into();
            t.metrics = metrics;
            t.finished_at = Some(at);
            r.info.insert(index, info);
            r.reasons.insert(index, reason);
        }
        Entry::Done {
            succeeded,
            reason,
            message,
            ..
        } => r.done = Some((succeeded, reason, message)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(e: &Entry) -> String {
        serde_json::to_string(e).unwrap() + "\n"
    }

    #[test]
    fn following_reads_whole_lines_only_and_picks_up_where_it_stopped() {
        let path = std::env::temp_dir().join(format!("nasop-follow-{}.jsonl", std::process::id()));
        let trial = Entry::Trial {
            index: 0,
            candidate: "c".into(),
            epochs: 3,
            seed: 1,
            resume_from: None,
            stage: Default::default(),
            at: 1.0,
        };
        let started = Entry::Started {
            index: 0,
            attempt: 1,
            at: 2.0,
        };
        let report = line(&Entry::Report {
            index: 0,
            step: 1,
            metrics: BTreeMap::from([("acc".to_string(), 0.5)]),
        });
        // A report half written: only the first two lines count.
        let (head, rest) = report.split_at(10);
        std::fs::write(&path, line(&trial) + &line(&started) + head).unwrap();
        let mut replay = Replay::default();
        let offset = Journal::follow(&path, None, &mut replay, 0).unwrap();
        assert_eq!(offset as usize, line(&trial).len() + line(&started).len());
        assert_eq!(replay.trials[0].phase, TrialPhase::Running);
        assert!(replay.trials[0].reports.is_empty());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(rest.as_bytes()).unwrap();
        let offset = Journal::follow(&path, None, &mut replay, offset).unwrap();
        assert_eq!(offset, std::fs::metadata(&path).unwrap().len());
        assert_eq!(replay.trials[0].reports.len(), 1);
        // Nothing new: nothing changes.
        assert_eq!(
            Journal::follow(&path, None, &mut replay, offset).unwrap(),
            offset
        );
        let _ = std::fs::remove_file(&path);
    }
}
