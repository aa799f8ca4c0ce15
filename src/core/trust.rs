//! Trust earned from outcomes (DESIGN 6): how much weight a robot gives each source.
//!
//! After each of its own outcomes at an address, a robot compares what every source it
//! holds there claimed (its mean residual) with the residual it just measured. The mean
//! squared gap, in units of each component's `scale`, is kept per source as a running
//! mean (the last ~`1 / MIN_RATE` observations count); trust = 1 / (1 + gap² /
//! tolerance²), so honest sources, whose claims miss only by the spread inside a class,
//! keep a trust near 1, and a source whose claims are far from what this robot sees loses
//! its weight in every class.
//!
//! Trust is also earned: a source never judged starts at `initial` (default 0.1) and
//! reaches its full weight only after `earn_outcomes` judgements that agreed with this
//! robot (gap within `tolerance`): trust = 1 / (1 + gap² / tolerance²) × (initial +
//! (1 − initial) · min(1, agreed / earn_outcomes)). A source below full weight is
//! *young*; the synthesis caps the total weight of young sources at an address
//! (`synthesis.max_young_weight`), so rotating source ids (Sybil) buys nothing. Sources
//! the fleet's operator admitted by key (`exchange.allowed_keys`) are *vouched*: they
//! start at full weight and are never young (they still lose trust when they miss).
//!
//! A record is also judged when it arrives, against this robot's own summary at its
//! address ([`TrustBook::observe_arrival`]), and against the plausibility gate
//! ([`TrustBook::observe_plausibility`]): with a fan-in budget per address most sources
//! are never held where the robot measures, so judging only at measurement leaves most
//! liars unknown until they are the lone voice in a thin class.
//!
//! Pure: no clock, no I/O. Trust is per robot and per source, kept in memory only (a
//! restarted robot starts trusting again and re-learns from its next outcomes).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ids::SourceId;
use super::summary::Summary;
use super::synthesis::per_dimension;

/// Smallest weight of a new observation in the running mean (memory of ~50 outcomes).
const MIN_RATE: f64 = 0.02;

/// Settings of trust (per robot; the fleet need not agree on them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Gap (RMS over components, in `scale` units) at which a source's weight halves;
    /// 0 turns trust off (every source weighs 1).
    pub tolerance: f64,
    /// Typical error size per state component (one value = all, a short list repeats its
    /// last value, empty = 1 for every component): gaps are measured in these units.
    pub scale: Vec<f64>,
    /// Most sources judged at once; past it the judgement resting on the fewest
    /// observations is forgotten (that source becomes young again).
    pub max_sources: usize,
    /// Weight factor in (0, 1] of a source never judged (1 = trust is only lost).
    pub initial: f64,
    /// Agreeing judgements a source needs to reach full weight (0 = at once).
    pub earn_outcomes: f64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            tolerance: 3.0,
            scale: Vec::new(),
            max_sources: 10_000,
            initial: 0.1,
            earn_outcomes: 3.0,
        }
    }
}

/// A trust setting out of range (names the field).
#[derive(Debug, Error, Clone, PartialEq)]
#[error("trust.{field}: {reason}")]
pub struct TrustConfigError {
    /// The bad field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl TrustConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), TrustConfigError> {
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(TrustConfigError {
                field: "tolerance",
                reason: "must be finite and >= 0 (0 = off)",
            });
        }
        if self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(TrustConfigError {
                field: "scale",
                reason: "every scale must be finite and > 0",
            });
        }
        if !(self.initial.is_finite() && self.initial > 0.0 && self.initial <= 1.0) {
            return Err(TrustConfigError {
                field: "initial",
                reason: "must be in (0, 1]",
            });
        }
        if !(self.earn_outcomes.is_finite() && self.earn_outcomes >= 0.0) {
            return Err(TrustConfigError {
                field: "earn_outcomes",
                reason: "must be finite and >= 0",
            });
        }
        if self.max_sources == 0 {
            return Err(TrustConfigError {
                field: "max_sources",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }

    fn scale(&self, i: usize) -> f64 {
        per_dimension(&self.scale, i).unwrap_or(1.0)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Gap {
    mean_sq: f64,
    n: f64,
    /// Judgements whose gap was within the tolerance.
    agreed: f64,
}

/// A gap (in squared scale units) that stands for "beyond measure": non-finite claims
/// count as this large a miss, and no single miss counts for more.
const MAX_GAP_SQ: f64 = 1e12;

/// How a source enters the synthesis: its weight factor and whether it is still young.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceTrust {
    /// Weight factor in [0, 1].
    pub weight: f64,
    /// Not yet at full weight: counts toward the cap on young sources.
    pub young: bool,
}

impl SourceTrust {
    /// Full, earned weight (trust off, or a source that earned it).
    pub const FULL: SourceTrust = SourceTrust {
        weight: 1.0,
        young: false,
    };
    /// No weight at all.
    pub const NONE: SourceTrust = SourceTrust {
        weight: 0.0,
        young: false,
    };
}

/// Per-source trust of one robot.
#[derive(Clone, Debug)]
pub struct TrustBook {
    config: TrustConfig,
    gaps: HashMap<SourceId, Gap>,
    /// Sources admitted by the operator: full weight from the start.
    vouched: HashSet<SourceId>,
}

impl Default for TrustBook {
    fn default() -> Self {
        TrustBook::new(TrustConfig::default())
    }
}

impl TrustBook {
    /// A book with the given (validated) settings.
    pub fn new(config: TrustConfig) -> TrustBook {
        TrustBook {
            config,
            gaps: HashMap::new(),
            vouched: HashSet::new(),
        }
    }

    /// Puts new (validated) settings in force; what was learned about sources is kept.
    pub fn set_config(&mut self, config: TrustConfig) {
        self.config = config;
    }

    /// Marks sources as vouched for (admitted by key): they need not earn their weight.
    pub fn vouch(&mut self, sources: impl IntoIterator<Item = SourceId>) {
        self.vouched.extend(sources);
    }

    fn enabled(&self) -> bool {
        self.config.tolerance > 0.0
    }

    /// The weight in [0, 1] given to a source's records.
    pub fn trust(&self, source: &SourceId) -> f64 {
        self.source(source).weight
    }

    /// A source's weight factor and whether it is young (see the module doc).
    pub fn source(&self, source: &SourceId) -> SourceTrust {
        if !self.enabled() {
            return SourceTrust::FULL;
        }
        let tol_sq = self.config.tolerance * self.config.tolerance;
        let (base, agreed) = self
            .gaps
            .get(source)
            .map_or((1.0, 0.0), |g| (1.0 / (1.0 + g.mean_sq / tol_sq), g.agreed));
        let earned = if self.config.earn_outcomes > 0.0 && !self.vouched.contains(source) {
            (agreed / self.config.earn_outcomes).min(1.0)
        } else {
            1.0
        };
        let initial = self.config.initial;
        SourceTrust {
            weight: base * (initial + (1.0 - initial) * earned),
            young: earned < 1.0,
        }
    }

    /// Records how far a source's claimed mean residual was from a measured residual.
    pub fn observe(&mut self, source: &SourceId, claimed: &[f64], measured: &[f64]) {
        self.judge(source, claimed, measured, true);
    }

    /// One judgement. `earn`: it rests on an outcome this robot measured, so agreement
    /// counts (earned weight, a smaller gap); otherwise (a record judged on arrival or
    /// by the gate, which anyone can send again and again) only a miss counts: agreeing
    /// arrivals would let a source farm trust without this robot measuring anything.
    fn judge(&mut self, source: &SourceId, claimed: &[f64], measured: &[f64], earn: bool) {
        if !self.enabled() || claimed.len() != measured.len() {
            return;
        }
        let gap_sq = claimed
            .iter()
            .zip(measured)
            .enumerate()
            .map(|(i, (c, m))| ((c - m) / self.config.scale(i)).powi(2))
            .sum::<f64>()
            / claimed.len().max(1) as f64;
        let gap_sq = if gap_sq.is_finite() {
            gap_sq.min(MAX_GAP_SQ)
        } else {
            MAX_GAP_SQ
        };
        let tol_sq = self.config.tolerance * self.config.tolerance;
        if !earn && gap_sq <= tol_sq {
            return;
        }
        if !self.gaps.contains_key(source) && self.gaps.len() >= self.config.max_sources {
            self.forget_most_trusted();
        }
        let g = match self.gaps.get_mut(source) {
            Some(g) => g,
            None => self.gaps.entry(source.clone()).or_default(),
        };
        g.n += 1.0;
        let rate = (1.0 / g.n).max(MIN_RATE);
        g.mean_sq += rate * (gap_sq - g.mean_sq);
        if earn && gap_sq <= tol_sq {
            g.agreed += 1.0;
        }
    }

    /// Drops the judgement resting on the fewest observations (ties: the smallest gap):
    /// a forgotten source is young again, so forgetting never hands a liar full weight.
    fn forget_most_trusted(&mut self) {
        let best = self
            .gaps
            .iter()
            .min_by(|a, b| {
                a.1.n
                    .total_cmp(&b.1.n)
                    .then(a.1.mean_sq.total_cmp(&b.1.mean_sq))
            })
            .map(|(s, _)| s.clone());
        if let Some(s) = best {
            self.gaps.remove(&s);
        }
    }

    /// Judges a record on arrival: its claimed mean residual against this robot's own
    /// mean residual at the same address. Returns false (nothing judged) when the robot
    /// has no outcome there or the dimensions differ.
    pub fn observe_arrival(
        &mut self,
        source: &SourceId,
        claimed: &Summary,
        own: Option<&Summary>,
    ) -> bool {
        let Some(own) = own.filter(|o| o.count() > 0 && o.dim() == claimed.dim()) else {
            return false;
        };
        self.judge(
            source,
            claimed.mean().as_slice(),
            own.mean().as_slice(),
            false,
        );
        true
    }

    /// Judges a record's claim against the plausibility gate (`max_residual`, per
    /// dimension as in the synthesis; empty = no gate): a claim beyond the gate counts as
    /// a miss by its excess over the gate, so a source that keeps claiming the implausible
    /// loses its weight at every address, including those the gate alone would not catch.
    /// Returns whether the claim was implausible.
    pub fn observe_plausibility(
        &mut self,
        source: &SourceId,
        claimed: &Summary,
        max_residual: &[f64],
    ) -> bool {
        if max_residual.is_empty() {
            return false;
        }
        let claimed = claimed.mean().as_slice();
        let gated: Vec<f64> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| per_dimension(max_residual, i).map_or(*c, |b| c.clamp(-b, b)))
            .collect();
        if gated.iter().zip(claimed).all(|(g, c)| g == c) {
            return false;
        }
        self.judge(source, claimed, &gated, false);
        true
    }

    /// Judges a record from the fleet when it arrives, before the memory decides whether
    /// to keep it (a full address may drop it unjudged): against this robot's own summary
    /// at its address (`own`), so a liar is known from the addresses where this robot has
    /// outcomes before it is the lone voice somewhere thin, and against the plausibility
    /// gate. Records of this robot's own source are not judged. Returns whether the claim
    /// lies beyond the gate.
    pub fn judge_record(
        &mut self,
        own_source: &SourceId,
        source: &SourceId,
        claimed: &Summary,
        own: Option<&Summary>,
        max_residual: &[f64],
    ) -> bool {
        if source == own_source {
            return false;
        }
        self.observe_arrival(source, claimed, own);
        self.observe_plausibility(source, claimed, max_residual)
    }

    /// Sources with a trust record.
    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    /// True when no source has been judged yet.
    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty()
    }

    /// Judged sources whose claims missed enough to put their trust below `threshold`
    /// (youth aside: a newcomer is young, not distrusted).
    pub fn distrusted(&self, threshold: f64) -> usize {
        if !self.enabled() {
            return 0;
        }
        let tol_sq = self.config.tolerance * self.config.tolerance;
        self.gaps
            .values()
            .filter(|g| 1.0 / (1.0 + g.mean_sq / tol_sq) < threshold)
            .count()
    }

    /// Judged sources that have not yet earned full weight.
    pub fn young(&self) -> usize {
        self.gaps.keys().filter(|s| self.source(s).young).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::summary::Decay;

    fn book(tolerance: f64, scale: &[f64]) -> TrustBook {
        TrustBook::new(TrustConfig {
            tolerance,
            scale: scale.to_vec(),
            ..TrustConfig::default()
        })
    }

    #[test]
    fn liars_lose_trust_and_honest_sources_keep_it() {
        let mut book = book(3.0, &[1.0, 0.5]);
        let (honest, liar) = (SourceId::new("h").unwrap(), SourceId::new("l").unwrap());
        assert_eq!(book.trust(&liar), 0.1, "unknown sources start young");
        assert!(book.source(&liar).young);
        for i in 0..20 {
            let measured = [1.0 + 0.1 * (i % 3) as f64, -2.0];
            book.observe(&honest, &[1.1, -2.05], &measured);
            book.observe(&liar, &[51.0, 23.0], &measured);
        }
        assert!(book.trust(&honest) > 0.99, "{}", book.trust(&honest));
        assert!(
            !book.source(&honest).young,
            "agreeing judgements earn full weight"
        );
        assert!(book.trust(&liar) < 0.01, "{}", book.trust(&liar));
        assert_eq!((book.len(), book.distrusted(0.5)), (2, 1));
        let mut off = TrustBook::new(TrustConfig {
            tolerance: 0.0,
            ..TrustConfig::default()
        });
        off.observe(&liar, &[51.0], &[1.0]);
        assert_eq!(off.trust(&liar), 1.0);
        assert!(off.is_empty());
    }

    fn summary(residuals: &[[f64; 2]]) -> Summary {
        let mut s = Summary::empty(2).unwrap();
        for (t, r) in residuals.iter().enumerate() {
            s.add(r, t as i64, Decay::NONE).unwrap();
        }
        s
    }

    #[test]
    fn vouched_sources_start_at_full_weight_and_can_still_lose_it() {
        let mut book = book(3.0, &[1.0]);
        let admitted = SourceId::new("a").unwrap();
        book.vouch([admitted.clone()]);
        assert_eq!(book.source(&admitted), SourceTrust::FULL);
        for _ in 0..20 {
            book.observe(&admitted, &[40.0], &[0.0]);
        }
        assert!(book.trust(&admitted) < 0.05);
    }

    #[test]
    fn records_are_judged_on_arrival_against_own_outcomes_only() {
        let mut book = book(3.0, &[1.0, 0.5]);
        let (honest, liar) = (SourceId::new("h").unwrap(), SourceId::new("l").unwrap());
        let own = summary(&[[1.0, -2.0], [1.4, -1.8]]);
        let honest_claim = summary(&[[0.9, -2.1], [1.3, -2.0], [1.1, -1.9]]);
        let liar_claim = summary(&[[51.0, 23.0]]);
        // No own outcome at the address: nothing to judge against, trust unchanged.
        assert!(!book.observe_arrival(&liar, &liar_claim, None));
        let empty = Summary::empty(2).unwrap();
        assert!(!book.observe_arrival(&liar, &liar_claim, Some(&empty)));
        assert_eq!(book.trust(&liar), 0.1, "unjudged: still young");
        assert!(book.is_empty());
        // One arrival where the robot has its own outcomes is enough to expose the liar;
        // agreeing arrivals earn nothing (anyone can send a record again and again):
        // the honest source earns its weight from this robot's own outcomes only.
        assert!(book.observe_arrival(&liar, &liar_claim, Some(&own)));
        for _ in 0..5 {
            assert!(book.observe_arrival(&honest, &honest_claim, Some(&own)));
        }
        assert!(book.trust(&liar) < 0.01, "{}", book.trust(&liar));
        assert_eq!(book.trust(&honest), 0.1, "arrivals farm no trust");
        for r in [[1.0, -2.0], [1.3, -1.9], [1.1, -2.0]] {
            book.observe(&honest, honest_claim.mean().as_slice(), &r);
        }
        assert!(!book.source(&honest).young);
        assert!(book.trust(&honest) > 0.95, "{}", book.trust(&honest));
        // A record of another dimension is not compared.
        let other = Summary::from_sample(&[1.0], 0).unwrap();
        assert!(!book.observe_arrival(&honest, &other, Some(&own)));
    }

    #[test]
    fn claims_beyond_the_gate_cost_trust_everywhere() {
        let mut book = book(3.0, &[1.0, 0.5]);
        let (honest, liar) = (SourceId::new("h").unwrap(), SourceId::new("l").unwrap());
        let gate = [10.0, 5.0];
        let big_but_plausible = summary(&[[9.0, -4.0]]);
        assert!(!book.observe_plausibility(&honest, &big_but_plausible, &gate));
        assert!(!book.observe_plausibility(&honest, &big_but_plausible, &[]));
        assert!(book.is_empty(), "a plausible claim is not judged");
        let beyond = summary(&[[9.0, 20.0]]);
        assert!(book.observe_plausibility(&liar, &beyond, &gate));
        assert!(book.trust(&liar) < 0.05, "{}", book.trust(&liar));
    }

    #[test]
    fn the_bound_forgets_the_least_evidence_and_never_hands_out_full_trust() {
        let mut book = TrustBook::new(TrustConfig {
            max_sources: 2,
            ..TrustConfig::default()
        });
        let [a, b, c] = ["a", "b", "c"].map(|s| SourceId::new(s).unwrap());
        book.observe(&a, &[30.0], &[0.0]);
        book.observe(&b, &[0.1], &[0.0]);
        book.observe(&c, &[20.0], &[0.0]);
        assert_eq!(book.len(), 2);
        // All rest on one observation: the smallest gap (b) goes, and b is young again.
        assert_eq!(book.trust(&b), 0.1, "a forgotten source starts over, young");
        assert!(book.trust(&a) < 0.05 && book.trust(&c) < 0.05);
        for bad in [
            TrustConfig {
                tolerance: f64::NAN,
                ..TrustConfig::default()
            },
            TrustConfig {
                scale: vec![0.0],
                ..TrustConfig::default()
            },
            TrustConfig {
                max_sources: 0,
                ..TrustConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
