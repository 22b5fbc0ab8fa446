//! What the experiment controller keeps about each experiment between reconciles. All of it
//! can be rebuilt from the API server; it is kept so that a reconcile does not redo it.

use crate::api::{NasExperiment, NasExperimentSpec, NasExperimentStatus, NasTrial};
use crate::engine::{Engine, Experiment, TrialRecord};
use crate::operator::status::{self, RecordError};
use crate::operator::sync::lock;
use crate::operator::written::Written;
use kube::ResourceExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An experiment's identity in the caches: namespace and name.
pub type ExpKey = (String, String);

/// What `spec.warmStart` names, read when the engine is built.
pub enum Prior {
    /// The finished trials of the named experiments (none without warmStart).
    Found(Vec<TrialRecord>),
    /// A named experiment is not there (the message says which).
    Missing(String),
}

/// What the operator keeps about one experiment object between reconciles: keyed by its
/// UID, so that an experiment deleted and created again under the same name starts afresh.
#[derive(Default)]
pub struct ExperimentState {
    /// The experiment's namespace and name.
    pub key: ExpKey,
    /// The experiment as last parsed, with the resourceVersion it was parsed from.
    pub parsed: Option<(String, Arc<NasExperiment>)>,
    /// The engine and the trial records (rebuilt when the spec or the UID changes).
    pub engine: Option<Cached>,
    /// When trial slots came free, oldest first (for the queue metric).
    free_slots: VecDeque<Instant>,
    /// The phase last counted in the experiments-by-phase metric.
    pub phase: Option<String>,
    /// The ended status this process wrote: the experiment's status while the store still
    /// shows an older version without the end.
    pub ended: Option<NasExperimentStatus>,
    /// Finished trials in the order they ended, whose pods are kept for now; the oldest
    /// beyond `--keep-finished-pods` have their pods deleted: when each ended, its name,
    /// its attempts and its UID.
    pub finished: VecDeque<(f64, String, u32, String)>,
    /// Every finished trial already placed in `finished` (or cleaned up).
    pub seen_finished: HashSet<String>,
    /// Trials this process created that the trial store may not show yet (see
    /// [`super::with_created`]).
    pub created: Written<NasTrial>,
}

/// Every experiment's state by the object's UID, each behind its own lock: one experiment's
/// decision never waits for another's. The map's lock is only held to find an entry.
pub struct States {
    map: Mutex<HashMap<String, Arc<Mutex<ExperimentState>>>>,
    /// Experiments whose decisions read progress reports (early stopping): a report wakes
    /// their reconcile. Shared with the watch that wakes them (by name).
    pub reporting: Arc<Mutex<HashSet<ExpKey>>>,
}

impl States {
    pub fn new(reporting: Arc<Mutex<HashSet<ExpKey>>>) -> States {
        States {
            map: Mutex::default(),
            reporting,
        }
    }

    /// The state of the experiment object `uid` named `key`, created empty on first use. A
    /// new object drops the state of an earlier one of the same name: nothing of the old
    /// run (its end, its engine, its pods to clean up) carries over.
    pub fn of(&self, uid: &str, key: &ExpKey) -> Arc<Mutex<ExperimentState>> {
        let mut map = lock(&self.map);
        if let Some(state) = map.get(uid) {
            return state.clone();
        }
        map.retain(|_, s| lock(s).key != *key);
        let state = Arc::new(Mutex::new(ExperimentState {
            key: key.clone(),
            ..ExperimentState::default()
        }));
        map.insert(uid.to_string(), state.clone());
        state
    }

    /// The state of the experiment object `uid`, if it has one.
    pub fn get(&self, uid: &str) -> Option<Arc<Mutex<ExperimentState>>> {
        lock(&self.map).get(uid).cloned()
    }

    /// Every experiment object with state: its UID and name.
    pub fn entries(&self) -> Vec<(String, ExpKey)> {
        lock(&self.map)
            .iter()
            .map(|(uid, s)| (uid.clone(), lock(s).key.clone()))
            .collect()
    }

    /// The phase each experiment was last counted in.
    pub fn phases(&self) -> Vec<Option<String>> {
        lock(&self.map)
            .values()
            .map(|s| lock(s).phase.clone())
            .collect()
    }

    /// Drops an experiment object's state; what it held.
    pub fn remove(&self, uid: &str) -> Option<Arc<Mutex<ExperimentState>>> {
        let removed = lock(&self.map).remove(uid);
        if let Some(state) = &removed {
            let key = lock(state).key.clone();
            let named = lock(&self.map).values().any(|s| lock(s).key == key);
            if !named {
                lock(&self.reporting).remove(&key);
            }
        }
        removed
    }

    /// A trial of the experiment `uid` ended: a slot is free from now.
    pub fn slot_freed(&self, uid: &str) {
        if let Some(state) = self.get(uid) {
            lock(&state).free_slots.push_back(Instant::now());
        }
    }

    /// A trial's first pod took a slot: how long the slot it took was free, if one was.
    pub fn slot_taken(&self, uid: &str) -> Option<Duration> {
        let state = self.get(uid)?;
        let at = lock(&state).free_slots.pop_front();
        at.map(|at| at.elapsed())
    }

    /// The engine's experiment for `exp` as the experiment controller last built it, when
    /// that was from the same spec.
    pub fn experiment(&self, exp: &NasExperiment) -> Option<Arc<Experiment>> {
        let state = self.get(exp.metadata.uid.as_deref()?)?;
        lock(&state)
            .engine
            .as_ref()
            .filter(|c| c.spec == exp.spec)
            .map(|c| c.experiment.clone())
    }
}

/// The engine and the trial records of one experiment, kept between reconciles; records
/// are re-read only for trials whose resourceVersion changed.
pub struct Cached {
    pub spec: NasExperimentSpec,
    pub experiment: Arc<Experiment>,
    pub(super) engine: Engine,
    pub(super) records: Vec<TrialRecord>,
    pub(super) versions: Vec<String>,
    pub(super) gpu: Vec<f64>,
    /// Each trial's final model, where it has one.
    pub(super) artifacts: HashMap<u32, String>,
    pub(super) position: HashMap<u32, usize>,
    pub(super) last_status_write: Option<Instant>,
    /// Built while an experiment named in warmStart was missing: rebuilt once it is there.
    pub(super) prior_missing: bool,
}

impl Cached {
    pub(super) fn new(spec: NasExperimentSpec, experiment: Experiment, prior: &Prior) -> Cached {
        let (records, prior_missing) = match prior {
            Prior::Found(records) => (records.as_slice(), false),
            Prior::Missing(_) => (&[][..], true),
        };
        Cached {
            spec,
            prior_missing,
            engine: Engine::with_prior(experiment.clone(), records),
            experiment: Arc::new(experiment),
            records: Vec::new(),
            versions: Vec::new(),
            gpu: Vec::new(),
            artifacts: HashMap::new(),
            position: HashMap::new(),
            last_status_write: None,
        }
    }

    /// Brings the records up to date with the experiment's trials.
    pub(super) fn sync(&mut self, trials: &[Arc<NasTrial>]) -> Result<(), RecordError> {
        if trials.len() < self.records.len() {
            // Trials were deleted by hand: start over.
            self.records.clear();
            self.versions.clear();
            self.gpu.clear();
            self.artifacts.clear();
            self.position.clear();
        }
        for t in trials {
            let rv = t.resource_version().unwrap_or_default();
            let gpu = t.status.as_ref().map_or(0.0, |s| s.gpu_seconds);
            if let Some(artifact) = t.status.as_ref().and_then(|s| s.artifact.clone()) {
                self.artifacts.insert(t.spec.index, artifact);
            }
            match self.position.get(&t.spec.index) {
                Some(&i) if self.versions[i] == rv => {}
                Some(&i) => {
                    self.records[i] = status::record(&self.experiment, t)?;
                    self.versions[i] = rv;
                    self.gpu[i] = gpu;
                }
                None => {
                    self.position.insert(t.spec.index, self.records.len());
                    self.records.push(status::record(&self.experiment, t)?);
                    self.versions.push(rv);
                    self.gpu.push(gpu);
                }
            }
        }
        Ok(())
    }
}
