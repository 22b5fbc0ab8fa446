//! Objects this process wrote that its watch-fed stores may not show yet.
//!
//! Under load a watch lags the operator's own writes by seconds. A reconcile in between
//! would otherwise act on the store's older copy: take a trial it just created for a gap and
//! propose its index again, create a pod again (refused, then read back), or patch a status
//! from a stale version (a conflict, then a retry). One record serves every such case: each
//! write is kept until the store shows it (or a newer version), or for [`GRACE`] at most
//! (an object deleted before its store saw it), as controller-runtime's "expectations" do.

use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a write counts while its store does not show it: far longer than a watch event
/// takes, even on a loaded API server.
pub const GRACE: Duration = Duration::from_secs(30);

struct Entry<K> {
    at: Instant,
    /// Created by this process (it counts even while the store has no version of it).
    created: bool,
    /// The versions our writes replaced: while the store shows one of them, ours is newer.
    replaced: Vec<String>,
    object: Arc<K>,
}

/// Written objects by (namespace, name), each kept as its store keeps it (the caller strips
/// it first where the store strips; managed fields are always dropped).
pub struct Written<K> {
    entries: HashMap<(String, String), Entry<K>>,
    /// When entries past the grace were last dropped on an insert.
    pruned: Option<Instant>,
}

impl<K> Default for Written<K> {
    fn default() -> Self {
        Written {
            entries: HashMap::new(),
            pruned: None,
        }
    }
}

impl<K: Resource> Written<K> {
    /// An object this process created.
    pub fn created(&mut self, object: K, now: Instant) {
        self.insert(object, None, now);
    }

    /// An object this process updated from version `replaced`.
    pub fn updated(&mut self, replaced: Option<String>, object: K, now: Instant) {
        self.insert(object, replaced, now);
    }

    fn insert(&mut self, mut object: K, replaced: Option<String>, now: Instant) {
        object.managed_fields_mut().clear();
        // Entries nobody asks for again (an object deleted before its store saw it) go here,
        // at most once a second: thousands of creates at once stay linear.
        if self
            .pruned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.entries.retain(|_, e| now.duration_since(e.at) < GRACE);
            self.pruned = Some(now);
        }
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        let mut entry = Entry {
            at: now,
            created: replaced.is_none(),
            replaced: replaced.clone().into_iter().collect(),
            object: Arc::new(object),
        };
        // A write on top of our own earlier one: the store may still show any version before.
        if let Some(earlier) = self.entries.remove(&key)
            && replaced.is_some()
            && replaced == earlier.object.resource_version()
        {
            entry.created = earlier.created;
            entry.replaced.extend(earlier.replaced);
        }
        self.entries.insert(key, entry);
    }

    /// The newest copy of an object: ours while the store does not show the write (nothing
    /// for a create, or a version ours replaced), else the store's (and ours is dropped).
    pub fn newest(
        &mut self,
        ns: &str,
        name: &str,
        stored: Option<Arc<K>>,
        now: Instant,
    ) -> Option<Arc<K>> {
        let key = (ns.to_string(), name.to_string());
        let Some(entry) = self.entries.get(&key) else {
            return stored;
        };
        if now.duration_since(entry.at) < GRACE && !Self::shown(entry, stored.as_deref()) {
            return Some(entry.object.clone());
        }
        self.entries.remove(&key);
        stored
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The objects created here that the store does not show yet (`in_store` says whether it
    /// does, by name); the others are dropped, updates among them: a record read this way
    /// should hold creates only.
    pub fn unseen(&mut self, now: Instant, in_store: impl Fn(&str) -> bool) -> Vec<Arc<K>> {
        self.entries.retain(|(_, name), e| {
            e.created && now.duration_since(e.at) < GRACE && !in_store(name)
        });
        self.entries.values().map(|e| e.object.clone()).collect()
    }

    /// Drops what the store shows and what is past the grace (`stored` gives the store's
    /// copy by namespace and name).
    pub fn sweep(&mut self, now: Instant, stored: impl Fn(&str, &str) -> Option<Arc<K>>) {
        self.entries.retain(|(ns, name), e| {
            now.duration_since(e.at) < GRACE && !Self::shown(e, stored(ns, name).as_deref())
        });
    }

    /// Whether the store's copy is our write or newer.
    fn shown(entry: &Entry<K>, stored: Option<&K>) -> bool {
        match stored {
            Some(s) => !s
                .resource_version()
                .is_some_and(|v| entry.replaced.contains(&v)),
            // Not in the store: not yet there (ours is a create), or deleted.
            None => !entry.created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, version: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("ns".into());
        p.metadata.name = Some(name.into());
        p.metadata.resource_version = Some(version.into());
        p
    }

    fn version(p: Option<Arc<Pod>>) -> Option<String> {
        p.and_then(|p| p.resource_version())
    }

    #[test]
    fn a_created_object_counts_until_the_store_shows_it_or_the_grace_ends() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let late = t0 + GRACE + Duration::from_secs(1);
        let mut written = Written::default();
        written.created(pod("a", "1"), t0);
        written.created(pod("b", "1"), t0);
        assert_eq!(
            version(written.newest("ns", "a", None, soon)),
            Some("1".into())
        );
        assert!(written.newest("other", "a", None, soon).is_none());
        // Once the store has it, the store's object, and it is no longer kept.
        let stored = Some(Arc::new(pod("a", "7")));
        assert_eq!(
            version(written.newest("ns", "a", stored, soon)),
            Some("7".into())
        );
        assert!(written.newest("ns", "a", None, soon).is_none());
        // Past the grace (deleted before the store saw it): gone.
        assert!(written.newest("ns", "b", None, late).is_none());
        // Old entries go as new ones come.
        written.created(pod("b", "1"), t0);
        written.created(pod("c", "1"), late);
        assert_eq!(written.entries.len(), 1);
    }

    #[test]
    fn an_update_counts_while_the_store_shows_a_version_it_replaced() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let mut written = Written::default();
        written.updated(Some("1".into()), pod("a", "2"), t0);
        // Two writes in a row before the store caught up with the first.
        written.updated(Some("2".into()), pod("a", "3"), t0);
        for seen in ["1", "2"] {
            let stored = Some(Arc::new(pod("a", seen)));
            assert_eq!(
                version(written.newest("ns", "a", stored, soon)),
                Some("3".into())
            );
        }
        // The store caught up (or someone else wrote after us): the store's.
        let stored = Some(Arc::new(pod("a", "4")));
        assert_eq!(
            version(written.newest("ns", "a", stored, soon)),
            Some("4".into())
        );
        assert_eq!(written.entries.len(), 0);
        // Deleted: nothing, and nothing kept.
        written.updated(Some("4".into()), pod("a", "5"), t0);
        assert!(written.newest("ns", "a", None, soon).is_none());
        assert_eq!(written.entries.len(), 0);
        // A write replacing a version other than ours starts afresh.
        written.updated(Some("1".into()), pod("b", "2"), t0);
        written.updated(Some("9".into()), pod("b", "10"), t0);
        let stored = Some(Arc::new(pod("b", "1")));
        assert_eq!(
            version(written.newest("ns", "b", stored, soon)),
            Some("1".into())
        );
    }

    #[test]
    fn unseen_lists_the_creates_the_store_lacks_and_sweep_drops_the_rest() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_secs(1);
        let mut written = Written::default();
        written.created(pod("a", "1"), t0);
        written.created(pod("b", "1"), t0);
        written.updated(Some("1".into()), pod("c", "2"), t0);
        let mut unseen: Vec<String> = written
            .unseen(soon, |name| name == "a")
            .iter()
            .map(|p| p.name_any())
            .collect();
        unseen.sort();
        assert_eq!(unseen, vec!["b"]);
        assert_eq!(written.entries.len(), 1);
        written.created(pod("d", "1"), t0);
        written.updated(Some("1".into()), pod("c", "2"), t0);
        written.sweep(soon, |_, name| {
            (name == "c").then(|| Arc::new(pod("c", "1")))
        });
        // b and d are not in the store yet; c's store copy is the version it replaced.
        assert_eq!(written.entries.len(), 3);
        written.sweep(soon, |_, name| Some(Arc::new(pod(name, "5"))));
        assert_eq!(written.entries.len(), 0);
        written.created(pod("e", "1"), t0);
        written.sweep(t0 + GRACE, |_, _| None);
        assert_eq!(written.entries.len(), 0);
    }
}
