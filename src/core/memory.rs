//! The in-memory outcome memory of one robot: its own summaries and the fleet's records,
//! per address, bounded, and the corrected prior computed from them.
//!
//! This is the hot path's only data structure (one hash lookup per prediction); the
//! persistent [`Store`](super::store) sits under it and the fleet exchange feeds it.

use std::collections::{BTreeMap, HashMap};

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::drift::{Drift, DriftDetector, post_change_share};
use super::ids::{Fingerprint, ModelId, RecordKey, Seq, SourceId};
use super::neighbors::Sketch;
use super::privacy::PrivacyBudget;
use super::record::{OutcomeRecord, TimeBase};
use super::summary::{Decay, Summary, SummaryError};
use super::synthesis::{
    Contribution, FleetEstimate, Prior, SynthesisConfig, SynthesisError, estimate, synthesize,
};
use super::trust::SourceTrust;

/// Bounds of the in-memory outcome memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Most received (fleet) records kept; least recently used are dropped beyond it.
    pub max_received_records: usize,
    /// Most addresses with an own summary: outcomes at further new addresses are refused
    /// (never an old summary dropped: own outcomes are not re-learnable from the fleet).
    pub max_own_addresses: usize,
    /// How long (seconds, in the caller's clock) a pooled fleet estimate is reused for an
    /// address whose records did not change; it bounds staleness from decay and trust
    /// updates. 0 disables the cache.
    pub estimate_ttl_s: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            // The store keeps as many, so what the memory holds survives a restart.
            max_received_records: crate::core::store::DEFAULT_MAX_RECEIVED_RECORDS,
            max_own_addresses: 100_000,
            estimate_ttl_s: 1.0,
        }
    }
}

/// Why the memory refused an update.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MemoryError {
    /// The residual could not be folded in.
    #[error(transparent)]
    Summary(#[from] SummaryError),
    /// The synthesis refused its input.
    #[error(transparent)]
    Synthesis(#[from] SynthesisError),
    /// A new own address beyond `max_own_addresses`.
    #[error(
        "own addresses full ({max}, memory.max_own_addresses): outcome at a new address refused"
    )]
    OwnAddressesFull {
        /// The bound.
        max: usize,
    },
}

/// What happened to a received record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// Newer than what was held: stored.
    Stored,
    /// Same or older sequence number than what is held: ignored (replay or duplicate).
    Stale,
    /// Claims to be from this robot: ignored (own records come from the store).
    OwnSource,
    /// Its dimension differs from the other records of this address: ignored.
    DimensionConflict,
    /// Refused before the memory by the node's record bounds (see
    /// [`crate::core::plausibility`]): never stored, never pooled.
    Refused,
}

/// What folding in one own outcome produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The new own record, to be persisted and then published.
    pub record: OutcomeRecord,
    /// The drift this outcome revealed, if any (the record then starts a fresh epoch).
    pub drift: Option<Drift>,
}

/// One source's latest record at an address.
#[derive(Clone, Debug)]
pub struct SourceRecord {
    /// The source robot.
    pub source: SourceId,
    /// Its record version.
    pub seq: Seq,
    /// Its statistics.
    pub summary: Summary,
    last_used: u64,
}

/// Everything known about one (model, fingerprint).
#[derive(Clone, Debug, Default)]
pub struct Address {
    /// Scenario sketch, once any record or prediction supplied it.
    pub sketch: Option<Sketch>,
    /// This robot's own summary and its version.
    pub own: Option<(Seq, Summary)>,
    /// Own outcomes in the version last shared with the fleet (privacy budget); a
    /// restored address counts as shared at its restored count, since what was shared
    /// before the restart is not known and the budget must hold across it.
    pub own_shared: u64,
    /// Latest record per other source.
    pub received: Vec<SourceRecord>,
    /// Last pooled estimate (exact address only) and when it was computed; dropped on
    /// any change to this address's records.
    cached: Option<(i64, FleetEstimate)>,
    /// The drift test of the own residuals here (core::drift).
    detector: DriftDetector,
    /// Start of the current epoch after a detected drift: other sources' records count
    /// by the share of their time span after it.
    drift_since_ns: Option<i64>,
    /// `drift_since_ns` rounded down to the fleet's time quantum: received records carry
    /// rounded times, and one whose outcomes all follow the drift must count in full.
    share_since_ns: Option<i64>,
}

impl Address {
    /// When the last drift detected here began (ns, the caller's clock), if any: the own
    /// summary holds only outcomes since, and older records of others lose weight.
    pub fn drift_since_ns(&self) -> Option<i64> {
        self.drift_since_ns
    }

    /// How much a received record counts here after a detected drift (1 without one).
    pub fn post_change_share(&self, summary: &Summary) -> f64 {
        self.share_since_ns
            .map_or(1.0, |since| post_change_share(summary, since))
    }

    fn dim(&self) -> Option<usize> {
        self.own
            .as_ref()
            .map(|o| o.1.dim())
            .or_else(|| self.received.first().map(|r| r.summary.dim()))
    }
}

/// The outcome memory of one robot.
#[derive(Debug)]
pub struct OutcomeMemory {
    own_source: SourceId,
    config: MemoryConfig,
    decay: Decay,
    models: HashMap<ModelId, HashMap<Fingerprint, Address>>,
    /// Eviction queue: (tick at enqueue → record). Touches only bump the record's own
    /// `last_used`, so the hot path never reorders this map; eviction re-queues entries
    /// whose record was used since (second chance), which keeps true LRU order.
    lru: BTreeMap<u64, RecordKey>,
    received_len: usize,
    own_len: usize,
    tick: u64,
    time_base: TimeBase,
    /// The fleet's time quantum for shared records (ns): received times are rounded down
    /// to it, so a drift's start is compared at the same resolution.
    record_time_quantum_ns: i64,
}

impl OutcomeMemory {
    /// An empty memory for robot `own_source`; `decay` must match the fleet's synthesis.
    pub fn new(own_source: SourceId, config: MemoryConfig, decay: Decay) -> Self {
        OutcomeMemory {
            own_source,
            config,
            decay,
            models: HashMap::new(),
            lru: BTreeMap::new(),
            received_len: 0,
            own_len: 0,
            tick: 0,
            time_base: TimeBase::Wall,
            record_time_quantum_ns: (crate::core::privacy::DEFAULT_TIME_QUANTUM_S * 1e9) as i64,
        }
    }

    /// Whether an own outcome at this address would be refused: it has no own summary
    /// yet and `max_own_addresses` are held.
    pub fn own_full_for(&self, model: &ModelId, fingerprint: &Fingerprint) -> bool {
        self.own_len >= self.config.max_own_addresses
            && self
                .address(model, fingerprint)
                .is_none_or(|a| a.own.is_none())
    }

    /// Addresses holding an own summary.
    pub fn own_len(&self) -> usize {
        self.own_len
    }

    /// Forgets every cached fleet estimate (after a change of the synthesis settings).
    pub fn drop_estimates(&mut self) {
        for per_model in self.models.values_mut() {
            per_model.values_mut().for_each(|a| a.cached = None);
        }
    }

    /// Sets the clock own records are stamped with (sim time under `use_sim_time`).
    pub fn set_time_base(&mut self, time_base: TimeBase) {
        self.time_base = time_base;
    }

    /// Sets the fleet's time quantum of shared records (seconds; 0 = exact times), the
    /// exchange's `time_quantum_s`.
    pub fn set_record_time_quantum(&mut self, seconds: f64) {
        self.record_time_quantum_ns = (seconds * 1e9) as i64;
    }

    /// Whether the own record at an address may be shared now under `budget`; when it
    /// may, the address counts as shared at its current count.
    pub fn take_share(
        &mut self,
        model: &ModelId,
        fingerprint: &Fingerprint,
        budget: PrivacyBudget,
    ) -> bool {
        let Some(addr) = self
            .models
            .get_mut(model.as_str())
            .and_then(|m| m.get_mut(fingerprint))
        else {
            return false;
        };
        let count = addr.own.as_ref().map_or(0, |o| o.1.count());
        let share = budget.may_share(count, addr.own_shared);
        if share {
            addr.own_shared = count;
        }
        share
    }

    fn entry(&mut self, model: &ModelId, fingerprint: Fingerprint) -> &mut Address {
        // Off the prediction path (outcomes and received records), so the key clone is fine.
        self.models
            .entry(model.clone())
            .or_default()
            .entry(fingerprint)
            .or_default()
    }

    /// This robot's source id.
    pub fn own_source(&self) -> &SourceId {
        &self.own_source
    }

    /// Folds one of this robot's residuals in and returns its new own record, to be
    /// persisted and then published: [`OutcomeMemory::fold_outcome`] without the drift
    /// test, so the summary holds every outcome (tools, replays and tests that count).
    pub fn record_outcome(
        &mut self,
        model: &ModelId,
        fingerprint: Fingerprint,
        sketch: Sketch,
        residual: &[f64],
        t_ns: i64,
    ) -> Result<OutcomeRecord, MemoryError> {
        self.fold_outcome(model, fingerprint, sketch, residual, t_ns, None)
            .map(|r| r.record)
    }

    /// Folds one of this robot's residuals in and returns its new own record, to be
    /// persisted and then published. With `drift_noise` (the learned within-address variance
    /// per dimension, or empty) the residual is first tested for drift against the own
    /// summary; on a drift the own summary restarts at this outcome (a fresh epoch,
    /// shared again only after `min_count_to_share` outcomes).
    pub fn fold_outcome(
        &mut self,
        model: &ModelId,
        fingerprint: Fingerprint,
        sketch: Sketch,
        residual: &[f64],
        t_ns: i64,
        drift_noise: Option<&[f64]>,
    ) -> Result<Recorded, MemoryError> {
        if self.own_full_for(model, &fingerprint) {
            return Err(MemoryError::OwnAddressesFull {
                max: self.config.max_own_addresses,
            });
        }
        let (decay, time_base, quantum) = (self.decay, self.time_base, self.record_time_quantum_ns);
        let is_new = self
            .address(model, &fingerprint)
            .is_none_or(|a| a.own.is_none());
        let addr = self.entry(model, fingerprint);
        addr.sketch.get_or_insert(sketch);
        addr.cached = None;
        let mut drift = None;
        let (seq, summary) = match &mut addr.own {
            Some((seq, s)) => {
                let tested = match drift_noise {
                    Some(noise) => addr.detector.observe(s, residual, t_ns, noise, decay)?,
                    None => None,
                };
                match tested {
                    Some((d, fresh)) => {
                        *s = fresh;
                        addr.drift_since_ns = Some(d.since_ns);
                        let q = quantum.max(1);
                        addr.share_since_ns = Some(d.since_ns - d.since_ns.rem_euclid(q));
                        // The fresh epoch is a new record for the privacy budget.
                        addr.own_shared = 0;
                        drift = Some(d);
                    }
                    None => s.add(residual, t_ns, decay)?,
                }
                seq.0 += 1;
                (*seq, s)
            }
            own @ None => {
                let s = Summary::from_sample(residual, t_ns)?;
                let (seq, s) = own.insert((Seq(1), s));
                (*seq, s)
            }
        };
        let record = OutcomeRecord {
            seq,
            sketch: addr.sketch.unwrap_or(sketch),
            summary: summary.clone(),
            time_base,
        };
        self.own_len += usize::from(is_new);
        Ok(Recorded { record, drift })
    }

    /// Restores an own record from the store at start-up.
    pub fn restore_own(
        &mut self,
        model: &ModelId,
        fingerprint: Fingerprint,
        record: OutcomeRecord,
    ) {
        // Restored addresses count toward the bound but are never refused: they are
        // durable outcomes already.
        if self
            .address(model, &fingerprint)
            .is_none_or(|a| a.own.is_none())
        {
            self.own_len += 1;
        }
        let addr = self.entry(model, fingerprint);
        addr.sketch.get_or_insert(record.sketch);
        if addr.own.as_ref().is_none_or(|(seq, _)| *seq < record.seq) {
            addr.cached = None;
            addr.own_shared = record.summary.count();
            addr.own = Some((record.seq, record.summary));
        }
    }

    /// Merges a record received from the fleet, keeping only the newest per source.
    pub fn ingest(&mut self, key: &RecordKey, record: OutcomeRecord) -> Ingest {
        if key.source == self.own_source {
            return Ingest::OwnSource;
        }
        self.tick += 1;
        let tick = self.tick;
        let addr = self.entry(&key.model, key.fingerprint);
        if addr.dim().is_some_and(|d| d != record.summary.dim()) {
            return Ingest::DimensionConflict;
        }
        addr.sketch.get_or_insert(record.sketch);
        match addr.received.iter_mut().find(|r| r.source == key.source) {
            Some(r) if r.seq >= record.seq => Ingest::Stale,
            Some(r) => {
                addr.cached = None;
                r.seq = record.seq;
                r.summary = record.summary;
                r.last_used = tick;
                Ingest::Stored
            }
            None => {
                addr.cached = None;
                addr.received.push(SourceRecord {
                    source: key.source.clone(),
                    seq: record.seq,
                    summary: record.summary,
                    last_used: tick,
                });
                self.received_len += 1;
                self.lru.insert(tick, key.clone());
                self.evict_over_bound();
                Ingest::Stored
            }
        }
    }

    /// Drops least recently used received records until within the bound; own records stay.
    fn evict_over_bound(&mut self) {
        while self.received_len > self.config.max_received_records {
            let Some((tick, key)) = self.lru.pop_first() else {
                return;
            };
            let Some(per_model) = self.models.get_mut(key.model.as_str()) else {
                continue;
            };
            let Some(addr) = per_model.get_mut(&key.fingerprint) else {
                continue;
            };
            let Some(pos) = addr.received.iter().position(|r| r.source == key.source) else {
                continue;
            };
            let used = addr.received[pos].last_used;
            if used > tick {
                // Re-queue under a fresh tick: records used by one prior() share a
                // `last_used` tick, and re-inserting under it would overwrite all but one.
                self.tick += 1;
                self.lru.insert(self.tick, key);
                continue;
            }
            addr.received.swap_remove(pos);
            addr.cached = None;
            self.received_len -= 1;
            if addr.own.is_none() && addr.received.is_empty() {
                per_model.remove(&key.fingerprint);
            }
        }
    }

    /// What is known about one address.
    pub fn address(&self, model: &ModelId, fingerprint: &Fingerprint) -> Option<&Address> {
        self.models.get(model.as_str())?.get(fingerprint)
    }

    /// This robot's own summary at one address, if it has outcomes there.
    pub fn own_summary(&self, model: &ModelId, fingerprint: &Fingerprint) -> Option<&Summary> {
        self.address(model, fingerprint)
            .and_then(|a| a.own.as_ref())
            .map(|o| &o.1)
    }

    /// Number of own outcomes folded in for one address.
    pub fn own_count(&self, model: &ModelId, fingerprint: &Fingerprint) -> u64 {
        self.own_summary(model, fingerprint)
            .map_or(0, Summary::count)
    }

    /// Number of received records held.
    pub fn received_len(&self) -> usize {
        self.received_len
    }

    /// Number of addresses known.
    pub fn addresses_len(&self) -> usize {
        self.models.values().map(HashMap::len).sum()
    }

    /// Every address held for `model` (to learn from what the node holds).
    pub fn addresses_of(&self, model: &ModelId) -> impl Iterator<Item = &Address> {
        self.models
            .get(model.as_str())
            .into_iter()
            .flat_map(HashMap::values)
    }

    /// All known addresses with their sketches (to fill a neighbor index).
    pub fn sketches(&self) -> impl Iterator<Item = (&ModelId, &Fingerprint, &Sketch)> {
        self.models.iter().flat_map(|(m, per_model)| {
            per_model
                .iter()
                .filter_map(move |(f, a)| a.sketch.as_ref().map(|s| (m, f, s)))
        })
    }

    /// The corrected prior for a prediction at an address, borrowing from `neighbors`
    /// (address, similarity) when exact support is thin. `trust` gives a source's weight
    /// in [0, 1] (1 when unknown).
    #[allow(clippy::too_many_arguments)]
    pub fn prior(
        &mut self,
        config: &SynthesisConfig,
        model: &ModelId,
        fingerprint: &Fingerprint,
        neighbors: &[(Fingerprint, f32)],
        predicted: &DVector<f64>,
        predicted_cov: Option<&DMatrix<f64>>,
        trust: &dyn Fn(&SourceId) -> SourceTrust,
        now_ns: i64,
    ) -> Result<Prior, MemoryError> {
        self.tick += 1;
        let tick = self.tick;
        let ttl_ns = (self.config.estimate_ttl_s * 1e9) as i64;
        let n = predicted.len();
        let Some(per_model) = self.models.get_mut(model.as_str()) else {
            return Ok(synthesize(config, predicted, predicted_cov, &[], now_ns)?);
        };
        // Mark use first (a cheap tick store), then borrow immutably for the synthesis.
        if let Some(a) = per_model.get_mut(fingerprint) {
            a.received.iter_mut().for_each(|r| r.last_used = tick);
            if let Some((at, est)) = &a.cached
                && est.dim() == n
                && (0..ttl_ns).contains(&(now_ns - at))
            {
                return Ok(est.apply(config, predicted, predicted_cov)?);
            }
        }
        for fp in neighbors.iter().map(|n| &n.0) {
            if let Some(a) = per_model.get_mut(fp) {
                a.received.iter_mut().for_each(|r| r.last_used = tick);
            }
        }
        let per_model_ref = &*per_model;
        let exact = per_model_ref.get(fingerprint).map(|a| (a, 1.0, true));
        let near = neighbors
            .iter()
            .filter(|n| n.0 != *fingerprint)
            .filter_map(|(fp, sim)| per_model_ref.get(fp).map(|a| (a, f64::from(*sim), false)));
        let held = |a: Option<&Address>| a.map_or(0, |a| a.received.len() + 1);
        let mut contributions = Vec::with_capacity(
            held(per_model_ref.get(fingerprint))
                + neighbors
                    .iter()
                    .map(|n| held(per_model_ref.get(&n.0)))
                    .sum::<usize>(),
        );
        for (address, (addr, similarity, exact)) in (0u32..).zip(exact.into_iter().chain(near)) {
            if addr.dim() != Some(n) {
                continue;
            }
            if let Some((_, s)) = &addr.own {
                contributions.push(Contribution {
                    summary: s,
                    trust: 1.0,
                    similarity,
                    exact,
                    address,
                    young: false,
                });
            }
            for r in &addr.received {
                // After a drift here, a record counts by its share after the change;
                // one entirely before it is no evidence (nor support) at all. Still
                // listed, so weights stay aligned with the address's records.
                let share = addr.post_change_share(&r.summary);
                let t = trust(&r.source);
                contributions.push(Contribution {
                    summary: &r.summary,
                    trust: t.weight * share,
                    similarity,
                    exact,
                    address,
                    young: t.young,
                });
            }
        }
        let est = estimate(config, n, &contributions, now_ns)?;
        let prior = est.apply(config, predicted, predicted_cov)?;
        drop(contributions);
        // Only an estimate that rests on the exact address alone is reusable: a borrowed
        // one depends on the neighbor list the caller passed.
        if !est.borrowed
            && ttl_ns > 0
            && let Some(a) = per_model.get_mut(fingerprint)
        {
            a.cached = Some((now_ns, est));
        }
        Ok(prior)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::neighbors::SKETCH_DIM;

    fn ids() -> (ModelId, Fingerprint, Sketch) {
        (
            ModelId::new("wm/v1").unwrap(),
            Fingerprint([1; 16]),
            Sketch([3; SKETCH_DIM]),
        )
    }

    fn key(src: &str, fp: Fingerprint) -> RecordKey {
        RecordKey {
            model: ModelId::new("wm/v1").unwrap(),
            fingerprint: fp,
            source: SourceId::new(src).unwrap(),
        }
    }

    fn record(seq: u64, bias: f64, n: usize) -> OutcomeRecord {
        let mut s = Summary::empty(1).unwrap();
        for i in 0..n {
            s.add(&[bias], i as i64, Decay::NONE).unwrap();
        }
        OutcomeRecord {
            seq: Seq(seq),
            sketch: Sketch([3; SKETCH_DIM]),
            summary: s,
            time_base: Default::default(),
        }
    }

    /// The memory of source "me", without decay.
    fn memory(cfg: MemoryConfig) -> OutcomeMemory {
        OutcomeMemory::new(SourceId::new("me").unwrap(), cfg, Decay::NONE)
    }

    /// The prior of model `m` at `fp` (near `neighbors`) for a one-dimensional prediction
    /// at 0, every source at `trust`, at time 0.
    fn prior_at(
        mem: &mut OutcomeMemory,
        cfg: &SynthesisConfig,
        m: &ModelId,
        fp: &Fingerprint,
        neighbors: &[(Fingerprint, f32)],
        trust: SourceTrust,
    ) -> Prior {
        mem.prior(
            cfg,
            m,
            fp,
            neighbors,
            &DVector::zeros(1),
            None,
            &|_| trust,
            0,
        )
        .unwrap()
    }

    #[test]
    fn own_addresses_are_bounded_and_a_full_memory_refuses_new_ones_only() {
        let (m, fp, sk) = ids();
        let mut mem = memory(MemoryConfig {
            max_own_addresses: 2,
            ..MemoryConfig::default()
        });
        let other = |b: u8| Fingerprint([b; 16]);
        mem.record_outcome(&m, fp, sk, &[1.0], 0).unwrap();
        mem.record_outcome(&m, other(2), sk, &[1.0], 0).unwrap();
        assert!(mem.own_full_for(&m, &other(3)));
        assert!(matches!(
            mem.record_outcome(&m, other(3), sk, &[1.0], 0),
            Err(MemoryError::OwnAddressesFull { max: 2 })
        ));
        // Known addresses keep learning.
        assert!(!mem.own_full_for(&m, &fp));
        mem.record_outcome(&m, fp, sk, &[1.0], 1).unwrap();
        assert_eq!((mem.own_len(), mem.own_count(&m, &fp)), (2, 2));
    }

    #[test]
    fn own_outcomes_bump_the_sequence() {
        let (m, fp, sk) = ids();
        let mut mem = memory(MemoryConfig::default());
        assert_eq!(
            mem.record_outcome(&m, fp, sk, &[1.0], 0).unwrap().seq,
            Seq(1)
        );
        let r = mem.record_outcome(&m, fp, sk, &[3.0], 1).unwrap();
        assert_eq!(r.seq, Seq(2));
        assert_eq!(r.summary.count(), 2);
        assert_eq!(mem.own_count(&m, &fp), 2);
        assert!(mem.record_outcome(&m, fp, sk, &[1.0, 2.0], 2).is_err());
    }

    #[test]
    fn replays_never_double_count() {
        let (m, fp, _) = ids();
        let mut mem = memory(MemoryConfig::default());
        assert_eq!(
            mem.ingest(&key("a", fp), record(2, 1.0, 10)),
            Ingest::Stored
        );
        assert_eq!(mem.ingest(&key("a", fp), record(2, 1.0, 10)), Ingest::Stale);
        assert_eq!(mem.ingest(&key("a", fp), record(1, 1.0, 5)), Ingest::Stale);
        assert_eq!(
            mem.ingest(&key("me", fp), record(9, 1.0, 5)),
            Ingest::OwnSource
        );
        assert_eq!(
            mem.ingest(&key("a", fp), record(3, 1.0, 12)),
            Ingest::Stored
        );
        let cfg = SynthesisConfig {
            half_life_s: 0.0,
            ..Default::default()
        };
        let p = prior_at(&mut mem, &cfg, &m, &fp, &[], SourceTrust::FULL);
        assert_eq!(p.support, 12, "latest record replaces, never adds");
        assert_eq!(p.sources, 1);
    }

    #[test]
    fn received_records_are_bounded_by_lru_and_own_records_stay() {
        let (m, _, sk) = ids();
        let cfg = MemoryConfig {
            max_received_records: 2,
            ..Default::default()
        };
        let mut mem = memory(cfg);
        let (f1, f2, f3) = (
            Fingerprint([1; 16]),
            Fingerprint([2; 16]),
            Fingerprint([3; 16]),
        );
        mem.record_outcome(&m, f1, sk, &[0.0], 0).unwrap();
        mem.ingest(&key("a", f1), record(1, 1.0, 1));
        mem.ingest(&key("b", f2), record(1, 1.0, 1));
        // Using f1 makes f2's record the least recently used.
        let scfg = SynthesisConfig::default();
        prior_at(&mut mem, &scfg, &m, &f1, &[], SourceTrust::FULL);
        mem.ingest(&key("c", f3), record(1, 1.0, 1));
        assert_eq!(mem.received_len(), 2);
        assert!(mem.address(&m, &f2).is_none());
        assert_eq!(mem.address(&m, &f1).unwrap().received.len(), 1);
        assert_eq!(mem.own_count(&m, &f1), 1);
    }

    #[test]
    fn neighbors_and_trust_reach_the_synthesis() {
        let (m, fp, _) = ids();
        let near = Fingerprint([9; 16]);
        let mut mem = memory(MemoryConfig::default());
        mem.ingest(&key("a", near), record(1, 2.0, 50));
        let cfg = SynthesisConfig {
            half_life_s: 0.0,
            ..Default::default()
        };
        let p = prior_at(&mut mem, &cfg, &m, &fp, &[(near, 0.9)], SourceTrust::FULL);
        assert_eq!(p.matched, crate::core::synthesis::Match::Neighbor);
        assert!(p.correction[0] > 1.5);
        let p = prior_at(&mut mem, &cfg, &m, &fp, &[(near, 0.9)], SourceTrust::NONE);
        assert_eq!(p.support, 0, "an untrusted source contributes nothing");
    }

    #[test]
    fn cached_estimate_is_dropped_when_records_change_or_age() {
        let (m, _, sk) = ids();
        let fp = Fingerprint([9; 16]);
        let mut mem = memory(MemoryConfig::default());
        let cfg = SynthesisConfig {
            half_life_s: 0.0,
            min_support: 1.0,
            ..Default::default()
        };
        let x = DVector::from_vec(vec![0.0]);
        mem.ingest(&key("a", fp), record(1, 1.0, 10));
        let p1 = mem
            .prior(&cfg, &m, &fp, &[], &x, None, &|_| SourceTrust::FULL, 0)
            .unwrap();
        // Same answer from the cache, and for a different prediction the same correction.
        let p2 = mem
            .prior(&cfg, &m, &fp, &[], &x, None, &|_| SourceTrust::FULL, 10)
            .unwrap();
        assert_eq!(p1, p2);
        let y = DVector::from_vec(vec![5.0]);
        let p3 = mem
            .prior(&cfg, &m, &fp, &[], &y, None, &|_| SourceTrust::FULL, 20)
            .unwrap();
        assert_eq!(p3.correction, p1.correction);
        assert!((p3.state[0] - 5.0 - p1.correction[0]).abs() < 1e-12);
        // A newer record invalidates at once.
        mem.ingest(&key("a", fp), record(2, 3.0, 10));
        let p4 = mem
            .prior(&cfg, &m, &fp, &[], &x, None, &|_| SourceTrust::FULL, 30)
            .unwrap();
        assert!(p4.correction[0] > p1.correction[0] + 1.0);
        // So does an own outcome.
        mem.record_outcome(&m, fp, sk, &[-50.0], 40).unwrap();
        let p5 = mem
            .prior(&cfg, &m, &fp, &[], &x, None, &|_| SourceTrust::FULL, 50)
            .unwrap();
        assert_ne!(p5.support, p4.support);
        // Trust changes are picked up once the estimate ages past the ttl (1 s).
        let p6 = mem
            .prior(&cfg, &m, &fp, &[], &x, None, &|_| SourceTrust::NONE, 60)
            .unwrap();
        assert_eq!(p6, p5);
        let p7 = mem
            .prior(
                &cfg,
                &m,
                &fp,
                &[],
                &x,
                None,
                &|_| SourceTrust::NONE,
                2_000_000_000,
            )
            .unwrap();
        assert_eq!(p7.sources, 1, "only the own summary is left at trust 0");
    }

    /// After a drift at an address, others' records count by their share after the
    /// change: one from before it weighs nothing (nor counts as support), one whose
    /// source restarted its own epoch since weighs fully.
    #[test]
    fn a_drift_starts_a_fresh_epoch_and_older_records_lose_their_weight() {
        let (m, fp, sk) = ids();
        let mut mem = memory(MemoryConfig::default());
        let cfg = SynthesisConfig {
            half_life_s: 0.0,
            prior_strength: 0.1,
            ..Default::default()
        };
        let s = 1_000_000_000;
        // A peer's 20 outcomes, all at t <= 19 ns: before the change.
        mem.ingest(&key("old", fp), record(1, 0.5, 20));
        let mut drift = None;
        for i in 0..40i64 {
            let r = if i < 30 { 0.5 } else { 2.0 } + if i % 2 == 0 { 0.05 } else { -0.05 };
            let rec = mem
                .fold_outcome(&m, fp, sk, &[r], 100 * s + i * s, Some(&[]))
                .unwrap();
            if let Some(d) = rec.drift {
                assert!(drift.is_none(), "one drift");
                drift = Some(d);
                assert_eq!(rec.record.summary.count(), 1, "a fresh epoch");
                assert_eq!(rec.record.seq, Seq(i as u64 + 1), "versions still grow");
            }
        }
        let d = drift.expect("the jump is detected");
        assert_eq!(d.since_ns, 130 * s);
        let addr = mem.address(&m, &fp).unwrap();
        assert_eq!(addr.drift_since_ns(), Some(130 * s));
        assert_eq!(addr.post_change_share(&addr.received[0].summary), 0.0);
        let p = prior_at(&mut mem, &cfg, &m, &fp, &[], SourceTrust::FULL);
        assert_eq!(p.weights.len(), 2, "still listed");
        assert_eq!(p.weights[1], 0.0, "the old record weighs nothing");
        assert!((p.correction[0] - 2.0).abs() < 0.1, "{:?}", p.correction);
        // A record written after the change (its source restarted too) counts fully.
        let mut fresh = Summary::empty(1).unwrap();
        for i in 0..5 {
            fresh.add(&[2.0], 140 * s + i, Decay::NONE).unwrap();
        }
        let rec = OutcomeRecord {
            summary: fresh,
            ..record(2, 0.0, 1)
        };
        assert_eq!(mem.ingest(&key("old", fp), rec), Ingest::Stored);
        let p = prior_at(&mut mem, &cfg, &m, &fp, &[], SourceTrust::FULL);
        assert_eq!(p.weights[1], 5.0, "{p:?}");
        // Outcomes at 131–135 s, as the fleet shares them (rounded down to the minute,
        // 120 s): still after the change (130 s), so in full, not as from before it.
        let mut late = Summary::empty(1).unwrap();
        for i in 131..136 {
            late.add(&[2.0], i * s, Decay::NONE).unwrap();
        }
        let shared = crate::core::privacy::shared_form(&OutcomeRecord {
            summary: late,
            ..record(3, 0.0, 1)
        });
        assert_eq!(shared.summary.last_ns(), 120 * s);
        let addr = mem.address(&m, &fp).unwrap();
        assert_eq!(addr.post_change_share(&shared.summary), 1.0);
    }

    #[test]
    fn records_used_together_stay_evictable() {
        // Found by the simulator: records used by the same prior() once dropped out of
        // the eviction queue for good and fresh records were evicted instead.
        let (m, _, _) = ids();
        let cfg = MemoryConfig {
            max_received_records: 4,
            ..Default::default()
        };
        let mut mem = memory(cfg);
        let scfg = SynthesisConfig::default();
        let a = Fingerprint([1; 16]);
        for s in ["s1", "s2", "s3", "s4"] {
            mem.ingest(&key(s, a), record(1, 1.0, 1));
        }
        prior_at(&mut mem, &scfg, &m, &a, &[], SourceTrust::FULL);
        for i in 2..12u8 {
            let f = Fingerprint([i; 16]);
            mem.ingest(&key(&format!("n{i}"), f), record(1, 1.0, 1));
            prior_at(&mut mem, &scfg, &m, &f, &[], SourceTrust::FULL);
        }
        let held = |f: Fingerprint| mem.address(&m, &f).map_or(0, |x| x.received.len());
        assert_eq!(held(a), 0, "stale records at a were never evicted");
        assert_eq!(held(Fingerprint([11; 16])), 1);
        assert_eq!(mem.received_len(), 4);
    }
}
