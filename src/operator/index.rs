//! Which trials belong to which experiment, kept from the trial watch: the experiment
//! controller reads its own trials in O(its trials) instead of scanning every trial in the
//! cluster, and a trial belongs to the experiment whose UID its controller owner reference
//! names, never to another object that happens to have the same name (an experiment deleted
//! and applied again before garbage collection removed the old trials).

use crate::api::NasTrial;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The UID of the NasExperiment that controls this trial, if any.
pub fn owner_uid(trial: &NasTrial) -> Option<&str> {
    trial
        .metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "NasExperiment")
        .map(|o| o.uid.as_str())
}

/// The object that controls `object`, as a person reads it: `<kind> <name> (<uid>)`.
pub fn controller(object: &impl ResourceExt) -> Option<String> {
    object
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{} {} ({})", o.kind, o.name, o.uid))
}

/// Trial names by owner UID and index.
type ByOwner = HashMap<String, BTreeMap<u32, String>>;

#[derive(Default)]
pub struct TrialIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    live: ByOwner,
    /// A relist in progress: it replaces `live` when it is complete, as the store does.
    relisting: Option<ByOwner>,
}

fn insert(map: &mut ByOwner, trial: &NasTrial) {
    if let Some(uid) = owner_uid(trial) {
        map.entry(uid.to_string())
            .or_default()
            .insert(trial.spec.index, trial.name_any());
    }
}

fn remove(map: &mut ByOwner, trial: &NasTrial) {
    if let Some(uid) = owner_uid(trial)
        && let Some(m) = map.get_mut(uid)
    {
        if m.get(&trial.spec.index) == Some(&trial.name_any()) {
            m.remove(&trial.spec.index);
        }
        if m.is_empty() {
            map.remove(uid);
        }
    }
}

impl TrialIndex {
    /// Follows one watch event (after the store has applied it).
    pub fn apply(&self, event: &Event<NasTrial>) {
        let mut inner = crate::operator::sync::lock(&self.inner);
        match event {
            Event::Init => inner.relisting = Some(ByOwner::new()),
            Event::InitApply(t) => match inner.relisting.as_mut() {
                Some(map) => insert(map, t),
                None => insert(&mut inner.live, t),
            },
            Event::InitDone => {
                if let Some(map) = inner.relisting.take() {
                    inner.live = map;
                }
            }
            Event::Apply(t) => insert(&mut inner.live, t),
            Event::Delete(t) => remove(&mut inner.live, t),
        }
    }

    /// The names of the trials the experiment with this UID owns, by index.
    pub fn names(&self, owner: &str) -> Vec<String> {
        crate::operator::sync::lock(&self.inner)
            .live
            .get(owner)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a deleted experiment's entry (its trials' delete events do the same, one by
    /// one, as garbage collection removes them).
    pub fn forget(&self, owner: &str) {
        crate::operator::sync::lock(&self.inner).live.remove(owner);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::api::NasTrialSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    /// A trial of index `index` whose controller is the experiment of UID `owner`.
    pub(in crate::operator) fn trial(name: &str, index: u32, owner: &str) -> NasTrial {
        let mut t = NasTrial::new(
            name,
            NasTrialSpec {
                experiment: "e".into(),
                index,
                candidate: "c".into(),
                epochs: 1,
                seed: 0,
                resume_from: None,
                stage: None,
                stop: None,
            },
        );
        t.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "nasop.dev/v1alpha1".into(),
            kind: "NasExperiment".into(),
            name: "e".into(),
            uid: owner.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        t
    }

    #[test]
    fn trials_are_found_by_their_owners_uid_not_by_name() {
        let index = TrialIndex::default();
        index.apply(&Event::Apply(trial("e-0", 0, "old")));
        index.apply(&Event::Apply(trial("e-1", 1, "new")));
        index.apply(&Event::Apply(trial("e-0b", 0, "new")));
        assert_eq!(index.names("new"), vec!["e-0b", "e-1"]);
        assert_eq!(index.names("old"), vec!["e-0"]);
        index.apply(&Event::Delete(trial("e-0", 0, "old")));
        assert!(index.names("old").is_empty());
        let mut unowned = trial("x", 0, "new");
        unowned.metadata.owner_references = None;
        index.apply(&Event::Apply(unowned));
        assert_eq!(index.names("new"), vec!["e-0b", "e-1"]);
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_is_complete() {
        let index = TrialIndex::default();
        index.apply(&Event::Apply(trial("e-0", 0, "a")));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(trial("e-1", 1, "a")));
        // Until the relist is done, readers see the old state.
        assert_eq!(index.names("a"), vec!["e-0"]);
        index.apply(&Event::InitDone);
        assert_eq!(index.names("a"), vec!["e-1"]);
    }
}
