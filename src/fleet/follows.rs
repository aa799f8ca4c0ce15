//! The bounded set of live subscriptions (followed addresses), least recently used
//! dropped first. Generic over what is held so the policy is tested without Zenoh.

use std::collections::HashMap;
use std::hash::Hash;

/// Followed addresses and their subscriptions, at most `capacity` of them.
pub(crate) struct Follows<K, S> {
    entries: HashMap<K, (S, u64)>,
    tick: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, S> Follows<K, S> {
    /// An empty set holding at most `capacity` (>= 1) subscriptions.
    pub(crate) fn new(capacity: usize) -> Self {
        Follows {
            entries: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    /// Most subscriptions held.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Marks `id` as just used; false if it is not followed.
    pub(crate) fn touch(&mut self, id: &K) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(id) {
            Some(e) => {
                e.1 = tick;
                true
            }
            None => false,
        }
    }

    /// Adds a subscription unless `id` is already followed (then `sub` is returned to be
    /// dropped); evicts least recently used entries beyond the capacity and returns them.
    pub(crate) fn insert(&mut self, id: K, sub: S) -> (Option<S>, Vec<(K, S)>) {
        if self.touch(&id) {
            return (Some(sub), Vec::new());
        }
        self.entries.insert(id, (sub, self.tick));
        let mut evicted = Vec::new();
        while self.entries.len() > self.capacity {
            // Linear scan: runs only when a new address is followed, over a bounded map.
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.1)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((s, _)) = self.entries.remove(&oldest) {
                evicted.push((oldest, s));
            }
        }
        (None, evicted)
    }

    /// Stops following `id`; returns its subscription.
    pub(crate) fn remove(&mut self, id: &K) -> Option<S> {
        self.entries.remove(id).map(|e| e.0)
    }

    /// The followed ids.
    pub(crate) fn keys(&self) -> Vec<K> {
        self.entries.keys().cloned().collect()
    }

    /// Drops every subscription.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_is_evicted_and_duplicates_returned() {
        let mut f = Follows::new(2);
        assert_eq!(f.insert("a", 1), (None, vec![]));
        assert_eq!(f.insert("b", 2), (None, vec![]));
        assert!(f.touch(&"a"));
        assert_eq!(f.insert("a", 9), (Some(9), vec![]));
        assert_eq!(f.insert("c", 3), (None, vec![("b", 2)]));
        let mut k = f.keys();
        k.sort();
        assert_eq!(k, vec!["a", "c"]);
        assert_eq!(f.remove(&"a"), Some(1));
        assert!(!f.touch(&"a"));
    }
}
