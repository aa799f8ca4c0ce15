//! The pairing table: predictions waiting for their outcome, by `episode_id`, bounded
//! in count (`max_pending`, oldest dropped first) and in age (`pending_timeout`), plus a
//! bounded memory of recently paired episodes so a repeated outcome is told apart from
//! one that never had a prediction.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use nalgebra::DVector;

use crate::core::discrepancy::Covariance;
use crate::core::ids::{Fingerprint, ModelId};
use crate::core::neighbor_prior::BorrowedCheck;
use crate::core::neighbors::Sketch;

/// A prediction waiting for its outcome.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The prediction's model.
    pub model: ModelId,
    /// Its scenario's address.
    pub fingerprint: Fingerprint,
    /// Its scenario's sketch (goes into the own record).
    pub sketch: Sketch,
    /// Predicted state.
    pub predicted: DVector<f64>,
    /// Predicted covariance (may be absent).
    pub predicted_cov: Covariance,
    /// The corrected prior that was published for it.
    pub corrected: DVector<f64>,
    /// Node time at arrival, ns.
    pub arrived_ns: i64,
    /// What the neighbor prior predicted, if the prior was borrowed: its outcome
    /// calibrates how far neighbors are believed to disagree.
    pub checks: Vec<Option<BorrowedCheck>>,
}

/// Why an episode could not be entered or taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairingMiss {
    /// The episode is pending or was paired recently.
    Duplicate,
    /// No prediction is pending for the episode.
    Unknown,
}

/// Pending predictions by episode.
#[derive(Debug)]
pub struct PairingTable {
    capacity: usize,
    timeout_ns: i64,
    next: u64,
    pending: HashMap<String, (u64, Pending)>,
    /// Arrival order (sequence → episode) for eviction and expiry.
    order: BTreeMap<u64, String>,
    /// Recently paired episodes, at most `capacity`.
    done: HashSet<String>,
    done_order: VecDeque<String>,
}

impl PairingTable {
    /// An empty table holding at most `capacity` predictions for at most `timeout_ns`.
    pub fn new(capacity: usize, timeout_ns: i64) -> Self {
        PairingTable {
            capacity: capacity.max(1),
            timeout_ns,
            next: 0,
            pending: HashMap::new(),
            order: BTreeMap::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
        }
    }

    /// Predictions waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether an episode is pending or was paired recently.
    pub fn is_known(&self, episode_id: &str) -> bool {
        self.pending.contains_key(episode_id) || self.done.contains(episode_id)
    }

    /// Enters a prediction; returns how many old ones were dropped to make room.
    pub fn insert(&mut self, episode_id: &str, p: Pending) -> Result<usize, PairingMiss> {
        if self.is_known(episode_id) {
            return Err(PairingMiss::Duplicate);
        }
        let mut evicted = 0;
        while self.pending.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.pending.remove(&oldest);
            evicted += 1;
        }
        self.next += 1;
        self.order.insert(self.next, episode_id.to_owned());
        self.pending.insert(episode_id.to_owned(), (self.next, p));
        Ok(evicted)
    }

    /// The pending prediction of an episode, without taking it.
    pub fn get(&self, episode_id: &str) -> Result<&Pending, PairingMiss> {
        match self.pending.get(episode_id) {
            Some((_, p)) => Ok(p),
            None if self.done.contains(episode_id) => Err(PairingMiss::Duplicate),
            None => Err(PairingMiss::Unknown),
        }
    }

    /// Takes an episode's prediction and remembers the episode as paired.
    pub fn take(&mut self, episode_id: &str) -> Result<Pending, PairingMiss> {
        let Some((seq, p)) = self.pending.remove(episode_id) else {
            return Err(self.get(episode_id).err().unwrap_or(PairingMiss::Unknown));
        };
        self.order.remove(&seq);
        if self.done_order.len() >= self.capacity
            && let Some(old) = self.done_order.pop_front()
        {
            self.done.remove(&old);
        }
        self.done.insert(episode_id.to_owned());
        self.done_order.push_back(episode_id.to_owned());
        Ok(p)
    }

    /// Drops predictions older than the timeout at `now_ns`; returns how many.
    pub fn expire(&mut self, now_ns: i64) -> usize {
        let mut expired = 0;
        // Arrival order is time order under a monotonic clock; a clock that jumped back
        // (sim restart) only delays expiry, it never drops a fresh prediction.
        while let Some((&seq, episode)) = self.order.first_key_value() {
            let Some((_, p)) = self.pending.get(episode) else {
                self.order.remove(&seq);
                continue;
            };
            if now_ns.saturating_sub(p.arrived_ns) <= self.timeout_ns {
                break;
            }
            let episode = episode.clone();
            self.order.remove(&seq);
            self.pending.remove(&episode);
            expired += 1;
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(t: i64) -> Pending {
        Pending {
            model: ModelId::new("m").unwrap(),
            fingerprint: Fingerprint([0; 16]),
            sketch: Sketch([0; 32]),
            predicted: DVector::from_vec(vec![0.0]),
            predicted_cov: Covariance::None,
            corrected: DVector::from_vec(vec![0.0]),
            arrived_ns: t,
            checks: Vec::new(),
        }
    }

    #[test]
    fn pairs_once_and_tells_duplicates_from_unknown() {
        let mut t = PairingTable::new(4, 100);
        assert_eq!(t.insert("a", pending(0)), Ok(0));
        assert_eq!(
            t.insert("a", pending(1)).unwrap_err(),
            PairingMiss::Duplicate
        );
        assert!(t.take("a").is_ok());
        assert_eq!(t.take("a").unwrap_err(), PairingMiss::Duplicate);
        assert_eq!(t.take("b").unwrap_err(), PairingMiss::Unknown);
        assert_eq!(
            t.insert("a", pending(2)).unwrap_err(),
            PairingMiss::Duplicate
        );
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_by_count_and_age() {
        let mut t = PairingTable::new(2, 100);
        t.insert("a", pending(0)).unwrap();
        t.insert("b", pending(10)).unwrap();
        assert_eq!(t.insert("c", pending(20)), Ok(1));
        assert_eq!(t.len(), 2);
        assert_eq!(t.take("a").unwrap_err(), PairingMiss::Unknown);
        assert_eq!(t.expire(105), 0);
        assert_eq!(t.expire(111), 1);
        assert!(t.get("b").is_err());
        assert!(t.get("c").is_ok());
        assert_eq!(t.expire(121), 1);
        assert!(t.is_empty());
    }
}
