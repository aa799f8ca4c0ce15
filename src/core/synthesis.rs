//! Synthesis: the corrected prior from a prediction and the fleet's summaries.
//!
//! Hierarchical normal–normal shrinkage, per state dimension d. A residual at address a
//! is `θ_a + ε` with `Var ε = σ²_d` (reality's spread inside an address) and the bias θ_a
//! has prior mean m_d and prior strength k_d (in outcomes: σ²_d over the prior's
//! variance). With x̄ the pooled, decay-weighted mean residual of the exact address's
//! sources and n their pooled weight, the posterior mean is
//! `θ̂_d = (n x̄_d + k_d m_d) / (n + k_d)` and `corrected = predicted + clamp(θ̂, ±bound)`.
//! - Exact support enough (decayed weight ≥ `min_support`), or no neighbor known: the
//!   prior is the world model's, m = 0 and k = k0_d = σ²_d / τ²_d, learned by empirical
//!   Bayes from the summaries the node holds ([`super::shrinkage`]: σ² over the spread τ²
//!   of biases between addresses); `prior_strength` > 0 overrides it with one fixed k0,
//!   and [`FALLBACK_PRIOR_STRENGTH`] applies while too little is held to learn it. This is
//!   `w = n / (n + k0)` applied to x̄.
//! - Exact support thin: the neighbor addresses passed in give the prior, m = m_N and
//!   k = k_N ≥ k0 ([`super::neighbor_prior`]: the neighbors' pooled means, weighted by
//!   similarity and by their own disagreement, which also sets the prior's variance).
//!   Neighbors never count as exact samples: one or two consistent exact outcomes move
//!   the prior as far as the neighbors' disagreement allows.
//!
//! Young sources' weight n_young (trust not yet earned) adds `FALLBACK_PRIOR_STRENGTH ·
//! n_young / n` to k: unverified evidence never counts for more than it would with the
//! fallback, however small the learned k0. The reported confidence is the mean over d of
//! the fleet's share of the answer, `(n + k_N − k0) / (n + k)` (= n / (n + k0) without
//! neighbors). The corrected covariance blends the model's with the fleet's:
//! `(1 − w) · P + w · Σ_res · (1 + 1 / n_eff)`, where Σ_res is the pooled residual
//! covariance of the sources used (neighbors at weight × similarity).
//!
//! Robustness, in this order, per source: weight = decayed W × trust, capped at
//! `max_source_weight`; then per address (the exact one, and each neighbor on its own:
//! sources at one address report one bias, while neighbors may legitimately differ, which
//! the neighbor prior measures) young sources (trust not yet earned) are scaled down
//! together to at most `max_young_weight`, and, with at least three voting sources (the
//! established ones whenever any is active, else all: young sources never outvote
//! established ones), each source's mean is compared with the voters' median per
//! dimension; a source whose robust z-score (|μ_s − median| / (1.4826 · MAD)) exceeds
//! `outlier_z` has its weight multiplied by (outlier_z / z)², so a few broken or hostile
//! robots cannot steer the fleet. A neighbor claiming far more than the others widens
//! their measured disagreement, which weakens the neighbor prior toward the model's.
//!
//! Pure: no clock, no I/O; time comes in as `now_ns`.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::neighbor_prior::{
    BorrowedCheck, NeighborEvidence, NeighborPrior, PriorScale, neighbor_prior,
};
use super::summary::{Decay, Summary};

/// Settings of the synthesis (fleet-wide; every robot should use the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisConfig {
    /// Prior strength k0 override: how many outcomes the fleet needs to count as much as
    /// the model; 0 (default) = learned per dimension from the data (empirical Bayes).
    pub prior_strength: f64,
    /// The k0 per dimension learned by the node (not a setting: filled from what the
    /// node holds, see [`super::shrinkage`]); used when `prior_strength` is 0.
    #[serde(skip)]
    pub learned_prior_strength: Vec<f64>,
    /// The within-address residual variance σ² per dimension learned with k0 (not a
    /// setting); the neighbor prior and the drift test weigh evidence against it.
    #[serde(skip)]
    pub learned_within_variance: Vec<f64>,
    /// The spread τ² of biases between addresses per dimension learned with k0 (not a
    /// setting); how far the neighbor prior lets a neighborhood's bias lie from the model.
    #[serde(skip)]
    pub learned_bias_variance: Vec<f64>,
    /// λ per dimension, the calibration of the neighbors' disagreement learned from this
    /// robot's outcomes at borrowed addresses (not a setting; empty = 1, see
    /// [`super::neighbor_prior::SpreadCalibration`]).
    #[serde(skip)]
    pub learned_spread_scale: Vec<f64>,
    /// Exact support (decayed weight) below which neighbors give the prior mean.
    pub min_support: f64,
    /// Largest weight one source can carry, in outcomes.
    pub max_source_weight: f64,
    /// Robust z-score above which a source is down-weighted.
    pub outlier_z: f64,
    /// Half-life of an outcome's weight, seconds; 0 disables decay.
    pub half_life_s: f64,
    /// Largest correction per state dimension (one value for all, or one per dimension); empty = unbounded.
    pub max_correction: Vec<f64>,
    /// Plausibility gate: largest mean residual a source may claim per state dimension
    /// (one value for all, or one per dimension); a source claiming more is left out
    /// entirely. Empty = no gate.
    pub max_residual: Vec<f64>,
    /// Variance per dimension used when the prediction carries no covariance.
    pub default_variance: f64,
    /// Most weight (in outcomes) that young sources (trust not yet earned) carry together
    /// at one address, so new or rotating source ids cannot outvote known ones.
    pub max_young_weight: f64,
}

/// Smallest pooled weight (in outcomes) a correction is computed from.
const MIN_EVIDENCE: f64 = 1e-9;

/// Default prior strength: 0 = learned (empirical Bayes).
pub const DEFAULT_PRIOR_STRENGTH: f64 = 0.0;

/// k0 used while none is learned yet and none is configured (the value this project
/// shipped as a fixed default before k0 was learned).
pub const FALLBACK_PRIOR_STRENGTH: f64 = 5.0;

impl Default for SynthesisConfig {
    fn default() -> Self {
        SynthesisConfig {
            prior_strength: DEFAULT_PRIOR_STRENGTH,
            learned_prior_strength: Vec::new(),
            learned_within_variance: Vec::new(),
            learned_bias_variance: Vec::new(),
            learned_spread_scale: Vec::new(),
            min_support: 5.0,
            max_source_weight: 1000.0,
            outlier_z: 3.0,
            half_life_s: 24.0 * 3600.0,
            max_correction: Vec::new(),
            max_residual: Vec::new(),
            default_variance: 1.0,
            max_young_weight: 2.0,
        }
    }
}

/// A synthesis setting out of range (names the field).
#[derive(Debug, Error, Clone, PartialEq)]
#[error("synthesis.{field}: {reason}")]
pub struct SynthesisConfigError {
    /// The bad field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl SynthesisConfig {
    /// Checks every field; after this the synthesis trusts the values.
    pub fn validate(&self) -> Result<(), SynthesisConfigError> {
        let positive = |field, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(SynthesisConfigError {
                    field,
                    reason: "must be finite and > 0",
                })
            }
        };
        if !(self.prior_strength.is_finite() && self.prior_strength >= 0.0) {
            return Err(SynthesisConfigError {
                field: "prior_strength",
                reason: "must be finite and >= 0 (0 = learned)",
            });
        }
        positive("max_source_weight", self.max_source_weight)?;
        positive("outlier_z", self.outlier_z)?;
        positive("default_variance", self.default_variance)?;
        positive("max_young_weight", self.max_young_weight)?;
        if !(self.min_support.is_finite() && self.min_support >= 0.0) {
            return Err(SynthesisConfigError {
                field: "min_support",
                reason: "must be finite and >= 0",
            });
        }
        if !(self.half_life_s.is_finite() && self.half_life_s >= 0.0) {
            return Err(SynthesisConfigError {
                field: "half_life_s",
                reason: "must be finite and >= 0 (0 = no decay)",
            });
        }
        for (field, bounds) in [
            ("max_correction", &self.max_correction),
            ("max_residual", &self.max_residual),
        ] {
            if bounds.iter().any(|b| !(b.is_finite() && *b >= 0.0)) {
                return Err(SynthesisConfigError {
                    field,
                    reason: "every bound must be finite and >= 0",
                });
            }
        }
        Ok(())
    }

    /// The prior strength k0 in force for state dimension `i`: the configured override,
    /// else the learned one (one value for all dimensions, or one per dimension), else
    /// the fallback.
    pub fn k0(&self, i: usize) -> f64 {
        if self.prior_strength > 0.0 {
            return self.prior_strength;
        }
        match self.learned_prior_strength.as_slice() {
            [] => FALLBACK_PRIOR_STRENGTH,
            [k] => *k,
            ks => ks.get(i).copied().unwrap_or(FALLBACK_PRIOR_STRENGTH),
        }
    }

    /// The learned within-address residual variance σ² for state dimension `i`, if any
    /// (one value for all dimensions, or one per dimension).
    pub fn within_variance(&self, i: usize) -> Option<f64> {
        per_dimension(&self.learned_within_variance, i).filter(|v| v.is_finite() && *v > 0.0)
    }

    /// The learned spread τ² of biases between addresses for state dimension `i`, if any.
    pub fn bias_variance(&self, i: usize) -> Option<f64> {
        per_dimension(&self.learned_bias_variance, i).filter(|v| v.is_finite() && *v > 0.0)
    }

    /// λ for state dimension `i`: the learned calibration of the neighbors' disagreement,
    /// 1 while none is learned.
    pub fn spread_scale(&self, i: usize) -> f64 {
        per_dimension(&self.learned_spread_scale, i).unwrap_or(1.0)
    }

    /// Whether a source claiming this mean residual passes the plausibility gate
    /// (`max_residual`); always true without a gate.
    pub fn plausible(&self, mean: &[f64]) -> bool {
        mean.iter()
            .enumerate()
            .all(|(i, m)| per_dimension(&self.max_residual, i).is_none_or(|b| m.abs() <= b))
    }

    /// The decay implied by `half_life_s`.
    pub fn decay(&self) -> Decay {
        Decay::from_half_life_secs(self.half_life_s)
    }

    fn bound(&self, i: usize) -> f64 {
        per_dimension(&self.max_correction, i).unwrap_or(f64::INFINITY)
    }
}

/// The value for dimension `i` of a per-dimension list (one value = all dimensions, a
/// short list repeats its last value); `None` for an empty list. Every per-dimension
/// setting (correction bounds, the plausibility gate, trust scales) reads it this way.
pub(crate) fn per_dimension(list: &[f64], i: usize) -> Option<f64> {
    list.get(i).or(list.last()).copied()
}

/// Why no prior could be synthesized.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SynthesisError {
    /// A summary's dimension differs from the prediction's.
    #[error("summary from source #{index} has dimension {got}, prediction has {expected}")]
    DimensionMismatch {
        /// Position of the summary in the input.
        index: usize,
        /// Prediction dimension.
        expected: usize,
        /// Summary dimension.
        got: usize,
    },
    /// The prediction's dimension is 0 or above the maximum.
    #[error("prediction dimension {dim} out of range 1..={}", super::MAX_STATE_DIM)]
    BadDimension {
        /// Dimension given.
        dim: usize,
    },
    /// The predicted covariance is not n × n.
    #[error("predicted covariance is {rows}x{cols}, expected {n}x{n}")]
    BadCovariance {
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
        /// State dimension.
        n: usize,
    },
}

/// How one source's summary enters the synthesis.
#[derive(Clone, Debug)]
pub struct Contribution<'a> {
    /// The source's summary for an address.
    pub summary: &'a Summary,
    /// Trust in this source, in [0, 1] (1 = full).
    pub trust: f64,
    /// Similarity of the summary's address to the prediction's (1 = exact address).
    pub similarity: f64,
    /// Whether it comes from the exact address (false = a neighbor).
    pub exact: bool,
    /// Which neighbor address it comes from (any value for the exact address): neighbor
    /// contributions with the same value are one address, pooled before neighbors are
    /// compared with each other.
    pub address: u32,
    /// A source that has not yet earned full trust: young sources together carry at
    /// most `max_young_weight`.
    pub young: bool,
}

/// Which addresses the corrected prior rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Nothing: the prediction is returned unchanged.
    None,
    /// Only the exact address.
    Exact,
    /// Neighbors were borrowed (exact support was below `min_support`).
    Neighbor,
}

/// The corrected prior and what it rests on.
#[derive(Clone, Debug, PartialEq)]
pub struct Prior {
    /// Corrected prediction.
    pub state: DVector<f64>,
    /// Corrected covariance (n × n).
    pub covariance: DMatrix<f64>,
    /// corrected − predicted, after clamping.
    pub correction: DVector<f64>,
    /// Outcomes behind the correction (sum of counts of sources with weight > 0).
    pub support: u64,
    /// Distinct sources behind it.
    pub sources: u32,
    /// Shrinkage weight w in [0, 1) given to the fleet over the model.
    pub confidence: f64,
    /// Which addresses contributed.
    pub matched: Match,
    /// Final weight of each contribution, in input order (provenance and trust updates).
    pub weights: Vec<f64>,
    /// What the neighbor prior predicted per dimension (empty unless neighbors
    /// contributed): kept with the prediction to calibrate later ones by its outcome.
    pub checks: Vec<Option<BorrowedCheck>>,
    /// Whether exact support was below `min_support`, so neighbors were eligible (a
    /// caller that passed none may search them and ask again).
    pub borrowed: bool,
}

/// What the fleet says about an address, independent of the prediction it corrects:
/// the bounded correction, the residual covariance and the support behind them. Computing
/// it is the expensive part of a synthesis; applying it to a prediction is cheap, so the
/// memory caches it per address.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetEstimate {
    /// w · μ, clamped per dimension (zeros when nothing contributed).
    pub correction: DVector<f64>,
    /// Pooled residual covariance, inflated by (1 + 1/n_eff) for the mean's own error.
    pub residual_cov: DMatrix<f64>,
    /// Shrinkage weight w in [0, 1).
    pub confidence: f64,
    /// Outcomes behind the correction.
    pub support: u64,
    /// Distinct sources behind it.
    pub sources: u32,
    /// Which addresses contributed.
    pub matched: Match,
    /// Final weight of each contribution, in input order.
    pub weights: Vec<f64>,
    /// Whether exact support was below `min_support`, so neighbors were eligible.
    pub borrowed: bool,
    /// What the neighbor prior predicted per dimension, to be checked against the
    /// outcome (empty unless neighbors contributed).
    pub checks: Vec<Option<BorrowedCheck>>,
}

/// Computes the corrected prior for `predicted` (covariance `predicted_cov`, n × n, or
/// `None` for the configured default) from the contributions, as seen at `now_ns`.
pub fn synthesize(
    config: &SynthesisConfig,
    predicted: &DVector<f64>,
    predicted_cov: Option<&DMatrix<f64>>,
    contributions: &[Contribution<'_>],
    now_ns: i64,
) -> Result<Prior, SynthesisError> {
    estimate(config, predicted.len(), contributions, now_ns)?.apply(
        config,
        predicted,
        predicted_cov,
    )
}

/// Pools the contributions into the fleet's estimate for state dimension `n` at `now_ns`.
pub fn estimate(
    config: &SynthesisConfig,
    n: usize,
    contributions: &[Contribution<'_>],
    now_ns: i64,
) -> Result<FleetEstimate, SynthesisError> {
    if n == 0 || n > super::MAX_STATE_DIM {
        return Err(SynthesisError::BadDimension { dim: n });
    }
    for (index, c) in contributions.iter().enumerate() {
        if c.summary.dim() != n {
            return Err(SynthesisError::DimensionMismatch {
                index,
                expected: n,
                got: c.summary.dim(),
            });
        }
    }
    let decay = config.decay();
    // One exp per source: the decayed weights feed both the support test and the
    // weights. A source failing the plausibility gate counts for nothing, not even as
    // support that would stop neighbors from being borrowed.
    let gated = !config.max_residual.is_empty();
    let mut weights: Vec<f64> = contributions
        .iter()
        .map(|c| {
            if gated && !config.plausible(c.summary.mean().as_slice()) {
                0.0
            } else {
                c.summary.weight() * decay.factor(c.summary.last_ns(), now_ns)
            }
        })
        .collect();
    // Young sources count as support at most as much as they may weigh (the young cap):
    // a crowd of fresh ids claiming many outcomes must not switch the neighbors off.
    // A source given no trust at all (or a record that predates a drift) is no support.
    let (mut established_support, mut young_support) = (0.0, 0.0);
    for (c, w) in contributions.iter().zip(&weights) {
        if c.trust <= 0.0 {
            continue;
        }
        match (c.exact, c.young) {
            (true, false) => established_support += w,
            (true, true) => young_support += w,
            _ => {}
        }
    }
    let exact_support = established_support + young_support.min(config.max_young_weight);
    let borrow = exact_support < config.min_support;
    // A neighbor's decayed weight measures how precisely its mean is known; trust, caps
    // and the outlier test say how far it may be believed, which is kept apart for it.
    let decayed: Vec<f64> = if borrow {
        weights
            .iter()
            .map(|w| w.min(config.max_source_weight))
            .collect()
    } else {
        Vec::new()
    };
    // Similarity is not a weight here: it enters the neighbor prior (how far a
    // neighbor's bias may lie from this address's), never the exact evidence.
    for (c, w) in contributions.iter().zip(weights.iter_mut()) {
        *w = if c.exact || borrow {
            (*w * c.trust.clamp(0.0, 1.0)).min(config.max_source_weight)
        } else {
            0.0
        };
    }
    // The robustness steps run per address: sources at one address report the same
    // bias and may be judged against each other; different neighbor addresses may
    // legitimately disagree, which the neighbor prior measures instead.
    let exact_members: Vec<usize> = (0..contributions.len())
        .filter(|&i| contributions[i].exact)
        .collect();
    let groups = if borrow {
        neighbor_groups(contributions, &weights)
    } else {
        Vec::new()
    };
    cap_young(
        config.max_young_weight,
        contributions,
        &mut weights,
        &exact_members,
    );
    for members in std::iter::once(&exact_members).chain(&groups) {
        down_weight_outliers(
            config.outlier_z,
            contributions,
            &mut weights,
            members,
            false,
        );
    }
    if !groups.is_empty() {
        // Young sources at neighbors are judged by the established neighbors, across
        // addresses: a crowd of fresh ids cannot make a neighborhood look like its claim
        // (established neighbors that disagree are the spread the prior measures). They
        // share one young cap over every neighbor, as they did when neighbors were pooled.
        let all: Vec<usize> = groups.iter().flatten().copied().collect();
        cap_young(config.max_young_weight, contributions, &mut weights, &all);
        down_weight_outliers(config.outlier_z, contributions, &mut weights, &all, true);
    }

    // Exact evidence: pooled by hand rather than by Summary::merge (same algebra: decay
    // cancels in M2/W, so each source enters as mean μ_s at its final weight), with one
    // buffer instead of allocations per source.
    let (mut n_exact, mut n_young) = (0.0, 0.0);
    let mut exact_mean = DVector::zeros(n);
    // The established part alone, for the neighbors' measured disagreement: unverified
    // claims at the exact address must not make the neighbors look unlike it.
    let mut established_mean = DVector::zeros(if groups.is_empty() { 0 } else { n });
    for &i in &exact_members {
        let w = weights[i];
        if w <= 0.0 {
            continue;
        }
        exact_mean.axpy(w, contributions[i].summary.mean(), 1.0);
        n_exact += w;
        if contributions[i].young {
            n_young += w;
        } else if !groups.is_empty() {
            established_mean.axpy(w, contributions[i].summary.mean(), 1.0);
        }
    }
    let n_established = n_exact - n_young;
    if n_established > MIN_EVIDENCE {
        established_mean /= n_established;
    }
    if n_exact > MIN_EVIDENCE {
        exact_mean /= n_exact;
    } else {
        n_exact = 0.0;
    }
    let neighbors: Vec<NeighborAddress> = groups
        .iter()
        .filter_map(|members| NeighborAddress::pool(n, contributions, &weights, &decayed, members))
        .collect();
    // Below this the pooled weight is no evidence (sources decayed or distrusted to
    // nothing), and its 1/n_eff inflation would only amplify rounding.
    if n_exact <= MIN_EVIDENCE && neighbors.is_empty() {
        let none = vec![0.0; weights.len()];
        return Ok(FleetEstimate::nothing(n, none, borrow));
    }
    let sigma2 = if neighbors.is_empty() {
        Vec::new()
    } else {
        within_variance(config, n, contributions, &weights)
    };

    let mut borrowed_any = false;
    // Per neighbor address: its worth in the corrected mean, in outcomes (provenance).
    let mut neighbor_worth = vec![0.0; neighbors.len()];
    let mut evidence: Vec<NeighborEvidence> = Vec::with_capacity(neighbors.len());
    let mut checks: Vec<Option<BorrowedCheck>> = Vec::new();
    // Empty without neighbors: every dimension's prior is then the model's.
    let mut priors: Vec<NeighborPrior> =
        Vec::with_capacity(if neighbors.is_empty() { 0 } else { n });
    for i in (0..n).filter(|_| !neighbors.is_empty()) {
        let k0 = config.k0(i);
        let prior = {
            evidence.clear();
            let local = sigma2.get(i).copied().flatten();
            evidence.extend(neighbors.iter().map(|g| NeighborEvidence {
                weight: g.weight_at(i, local),
                mean: g.mean[i],
                similarity: g.similarity,
                credence: g.credence,
            }));
            let own = (n_established > MIN_EVIDENCE).then(|| NeighborEvidence {
                weight: n_established,
                mean: established_mean[i],
                similarity: 1.0,
                credence: 1.0,
            });
            // τ² is the spread of biases between addresses, in units of the σ² of the
            // summaries at hand: the learned one (not the clamped k0, which caps it at
            // 20 σ² in consistent worlds), else what the k0 in force implies.
            let t = match (config.bias_variance(i), local) {
                (Some(tau2), Some(local)) if local > 0.0 => tau2 / local,
                _ => 1.0 / k0,
            };
            let p = neighbor_prior(
                &evidence,
                own,
                PriorScale {
                    sigma2: local,
                    t,
                    k0,
                    spread_scale: config.spread_scale(i),
                },
            );
            checks.push(BorrowedCheck::of(&p, local));
            for (worth, g) in neighbor_worth.iter_mut().zip(&evidence) {
                *worth += p.strength * p.share_of(g) / n as f64;
            }
            p
        };
        borrowed_any |= prior.share > 0.0;
        priors.push(prior);
    }
    if borrowed_any && n_young > 0.0 {
        // Young exact sources are judged against the neighbors' prior, as they are
        // against established sources: at a thin address a fresh id claiming what no
        // neighbor suggests would otherwise carry its full capped weight.
        for &i in &exact_members {
            if !contributions[i].young || weights[i] <= 0.0 {
                continue;
            }
            let s = contributions[i].summary;
            let z = (0..n)
                .filter_map(|d| {
                    let p = &priors[d];
                    // Without scatter (σ² = 0) nothing tells a claim from noise.
                    let sigma2 = sigma2.get(d).copied().flatten().filter(|v| *v > 0.0)?;
                    (p.share > 0.0 && p.precision > 0.0).then(|| {
                        let var =
                            sigma2 * (p.spread + 1.0 / p.precision + 1.0 / s.weight().max(1.0));
                        (s.mean()[d] - p.mean).abs() / var.sqrt()
                    })
                })
                .fold(0.0f64, f64::max);
            if z > config.outlier_z {
                let k = (config.outlier_z / z).powi(2);
                let w = weights[i];
                weights[i] = w * k;
                exact_mean *= n_exact;
                exact_mean.axpy(-w * (1.0 - k), s.mean(), 1.0);
                n_exact -= w * (1.0 - k);
                n_young -= w * (1.0 - k);
                if n_exact > MIN_EVIDENCE {
                    exact_mean /= n_exact;
                } else {
                    n_exact = 0.0;
                    exact_mean.fill(0.0);
                }
            }
        }
    }
    // Young evidence is unverified: it carries the fallback k0 as an extra prior in
    // proportion to its share, so a learned k0 near 0 (consistent worlds) cannot let a
    // lone young source move the prior further than it could with the fallback.
    let k_young = if n_exact > 0.0 {
        FALLBACK_PRIOR_STRENGTH * n_young.max(0.0) / n_exact
    } else {
        0.0
    };
    let mut correction = DVector::zeros(n);
    let mut w_sum = 0.0;
    for i in 0..n {
        let k0 = config.k0(i);
        let prior = priors.get(i).copied().unwrap_or(NeighborPrior::none(k0));
        let k = prior.strength + k_young;
        let theta = (n_exact * exact_mean[i] + k * prior.mean) / (n_exact + k);
        // The fleet's share of the answer: the exact evidence plus what the neighbors
        // add over the model (k_N − k0 outcomes' worth), n / (n + k0) without them.
        w_sum += ((n_exact + prior.strength - k0) / (n_exact + k)).clamp(0.0, 1.0);
        let b = config.bound(i);
        correction[i] = theta.clamp(-b, b);
    }
    let confidence = w_sum / n as f64;
    if !borrowed_any {
        for g in &neighbors {
            for &j in &g.members {
                weights[j] = 0.0;
            }
        }
    }
    if n_exact <= 0.0 && !borrowed_any {
        let none = vec![0.0; weights.len()];
        return Ok(FleetEstimate::nothing(n, none, borrow));
    }
    // Provenance: a neighbor source's reported weight is its share of its address's
    // worth in the corrected mean (outcomes), so weights read alike for every source.
    // The covariance still pools every source used, neighbors at weight × similarity.
    // (Without neighbors the weights are the covariance's: no copy on the exact path.)
    let borrowed_weights;
    let cov_weights: &[f64] = if neighbors.is_empty() {
        &weights
    } else {
        let mut w = weights.clone();
        for g in &neighbors {
            for &j in &g.members {
                w[j] = weights[j] * g.similarity;
            }
        }
        borrowed_weights = w;
        &borrowed_weights
    };
    let (mut support, mut sources) = (0u64, 0u32);
    let mut pooled_mean = DVector::zeros(n);
    let mut n_eff = 0.0;
    for (c, &w) in contributions.iter().zip(cov_weights) {
        if w <= 0.0 {
            continue;
        }
        pooled_mean.axpy(w, c.summary.mean(), 1.0);
        n_eff += w;
        support = support.saturating_add(c.summary.count());
        sources += 1;
    }
    let mut residual_cov = DMatrix::zeros(n, n);
    if n_eff > MIN_EVIDENCE {
        pooled_mean /= n_eff;
        let mut delta = DVector::zeros(n);
        for (c, &w) in contributions.iter().zip(cov_weights) {
            if w <= 0.0 {
                continue;
            }
            let s = c.summary;
            if s.weight() > 0.0 {
                let k = w / s.weight();
                residual_cov.zip_apply(s.m2(), |a, b| *a += k * b);
            }
            delta.copy_from(s.mean());
            delta -= &pooled_mean;
            residual_cov.ger(w, &delta, &delta, 1.0);
        }
        residual_cov /= n_eff;
        residual_cov *= 1.0 + 1.0 / n_eff;
    }
    for (g, worth) in neighbors.iter().zip(&neighbor_worth) {
        for &j in &g.members {
            weights[j] = if borrowed_any && g.weight > 0.0 {
                worth * weights[j] / g.weight
            } else {
                0.0
            };
        }
    }
    // Records are bounded before they get here, so this cannot happen; if it ever does,
    // the prediction is answered unchanged rather than with inf or NaN.
    if !(correction.iter().all(|v| v.is_finite()) && residual_cov.iter().all(|v| v.is_finite())) {
        let none = vec![0.0; weights.len()];
        return Ok(FleetEstimate::nothing(n, none, borrow));
    }
    Ok(FleetEstimate {
        correction,
        residual_cov,
        confidence,
        support,
        sources,
        matched: if borrowed_any {
            Match::Neighbor
        } else {
            Match::Exact
        },
        weights,
        borrowed: borrow,
        checks: if borrowed_any { checks } else { Vec::new() },
    })
}

/// One neighbor address pooled over its sources.
struct NeighborAddress {
    /// Pooled final weight of its sources, in outcomes (trusted, capped, robust).
    weight: f64,
    /// Their decayed weight before trust: how precisely its mean is known.
    precise: f64,
    /// weight / precise in [0, 1]: how far its sources are believed (trust, caps, the
    /// outlier test), which scales its precision in the prior like similarity does.
    credence: f64,
    /// Their weighted mean residual.
    mean: DVector<f64>,
    /// Their scatter per dimension (Σ (w/W) M2_dd) and its degrees of freedom: the
    /// address's own noise, which may differ from the neighborhood's.
    scatter: Vec<f64>,
    dof: f64,
    /// Similarity of the address to the predicted one.
    similarity: f64,
    /// Indices of its contributions.
    members: Vec<usize>,
}

impl NeighborAddress {
    /// Pools one neighbor address's sources at their final weights (`None` if none has
    /// weight left).
    fn pool(
        n: usize,
        contributions: &[Contribution<'_>],
        weights: &[f64],
        decayed: &[f64],
        members: &[usize],
    ) -> Option<NeighborAddress> {
        let mut mean = DVector::zeros(n);
        let mut scatter = vec![0.0; n];
        let (mut weight, mut similarity, mut dof) = (0.0, 0.0f64, 0.0);
        // Σ w²/d over Σ w: each source's belief w/d, averaged at its weight, so a source
        // the outlier test silenced does not lower the belief in the others.
        let mut belief = 0.0;
        for &i in members {
            let w = weights[i];
            if w <= 0.0 {
                continue;
            }
            belief += w * (w / decayed[i].max(w));
            let s = contributions[i].summary;
            mean.axpy(w, s.mean(), 1.0);
            weight += w;
            similarity = similarity.max(contributions[i].similarity.clamp(0.0, 1.0));
            if s.weight() > 0.0 {
                let k = w / s.weight();
                dof += w * (1.0 - s.weight_sq() / (s.weight() * s.weight())).max(0.0);
                for (d, v) in scatter.iter_mut().enumerate() {
                    *v += k * s.m2()[(d, d)].max(0.0);
                }
            }
        }
        (weight > MIN_EVIDENCE && similarity > 0.0).then(|| {
            mean /= weight;
            let credence = (belief / weight).clamp(0.0, 1.0);
            NeighborAddress {
                weight,
                precise: weight / credence.max(f64::MIN_POSITIVE),
                credence,
                mean,
                scatter,
                dof,
                similarity,
                members: members.to_vec(),
            }
        })
    }

    /// Its weight in outcomes of the neighborhood's noise σ² in dimension `d`: an
    /// address noisier than the neighborhood (its own scatter, pooled with σ² at
    /// [`WITHIN_VARIANCE_PRIOR_DOF`]) counts for fewer outcomes.
    fn weight_at(&self, d: usize, sigma2: Option<f64>) -> f64 {
        match sigma2 {
            Some(pooled) if pooled > 0.0 => {
                let own = (self.scatter[d] + WITHIN_VARIANCE_PRIOR_DOF * pooled)
                    / (self.dof + WITHIN_VARIANCE_PRIOR_DOF);
                if own > 0.0 {
                    self.precise * pooled / own
                } else {
                    self.precise
                }
            }
            _ => self.precise,
        }
    }
}

/// The neighbor contributions grouped by address, in order of first appearance.
fn neighbor_groups(contributions: &[Contribution<'_>], weights: &[f64]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for (i, c) in contributions.iter().enumerate() {
        if c.exact || weights[i] <= 0.0 {
            continue;
        }
        match groups.iter_mut().find(|(a, _)| *a == c.address) {
            Some((_, members)) => members.push(i),
            None => groups.push((c.address, vec![i])),
        }
    }
    groups.into_iter().map(|(_, m)| m).collect()
}

/// Degrees of freedom the learned within-address variance counts for against the
/// scatter of the summaries at hand (a scaled-inverse-χ² prior centered on it).
const WITHIN_VARIANCE_PRIOR_DOF: f64 = 4.0;

/// σ² per state dimension for the neighbor prior: the scatter of the sources used
/// (each at its final share w / W of its own summary), pooled with the learned σ² at
/// [`WITHIN_VARIANCE_PRIOR_DOF`]; `None` for a dimension with neither.
fn within_variance(
    config: &SynthesisConfig,
    n: usize,
    contributions: &[Contribution<'_>],
    weights: &[f64],
) -> Vec<Option<f64>> {
    let mut m2 = vec![0.0; n];
    let mut dof = 0.0;
    for (c, &w) in contributions.iter().zip(weights) {
        let s = c.summary;
        let big_w = s.weight();
        if w <= 0.0 || big_w <= 0.0 {
            continue;
        }
        let k = w / big_w;
        dof += w * (1.0 - s.weight_sq() / (big_w * big_w)).max(0.0);
        for (d, v) in m2.iter_mut().enumerate() {
            *v += k * s.m2()[(d, d)].max(0.0);
        }
    }
    m2.iter()
        .enumerate()
        .map(|(d, m2)| {
            let (prior_m2, prior_dof) = match config.within_variance(d) {
                Some(s2) => (WITHIN_VARIANCE_PRIOR_DOF * s2, WITHIN_VARIANCE_PRIOR_DOF),
                None => (0.0, 0.0),
            };
            let total = dof + prior_dof;
            (total > 0.0).then(|| (m2 + prior_m2) / total)
        })
        .collect()
}

impl FleetEstimate {
    /// No correction at all (nothing contributed), keeping the per-contribution weights.
    fn nothing(n: usize, weights: Vec<f64>, borrowed: bool) -> FleetEstimate {
        FleetEstimate {
            correction: DVector::zeros(n),
            residual_cov: DMatrix::zeros(n, n),
            confidence: 0.0,
            support: 0,
            sources: 0,
            matched: Match::None,
            weights,
            borrowed,
            checks: Vec::new(),
        }
    }

    /// State dimension the estimate is for.
    pub fn dim(&self) -> usize {
        self.correction.len()
    }

    /// The corrected prior for one prediction.
    pub fn apply(
        &self,
        config: &SynthesisConfig,
        predicted: &DVector<f64>,
        predicted_cov: Option<&DMatrix<f64>>,
    ) -> Result<Prior, SynthesisError> {
        let n = self.dim();
        if predicted.len() != n {
            return Err(SynthesisError::DimensionMismatch {
                index: 0,
                expected: predicted.len(),
                got: n,
            });
        }
        if let Some(p) = predicted_cov
            && (p.nrows() != n || p.ncols() != n)
        {
            return Err(SynthesisError::BadCovariance {
                rows: p.nrows(),
                cols: p.ncols(),
                n,
            });
        }
        let w = self.confidence;
        let mut covariance = match predicted_cov {
            Some(p) => p * (1.0 - w),
            None => DMatrix::from_diagonal_element(n, n, config.default_variance * (1.0 - w)),
        };
        if w > 0.0 {
            covariance.zip_apply(&self.residual_cov, |a, b| *a += w * b);
        }
        Ok(Prior {
            state: predicted + &self.correction,
            covariance,
            correction: self.correction.clone(),
            support: self.support,
            sources: self.sources,
            confidence: w,
            matched: self.matched,
            weights: self.weights.clone(),
            checks: self.checks.clone(),
            borrowed: self.borrowed,
        })
    }
}

/// Scales the young sources among `members` (one address) down together so that their
/// total weight is at most `cap`.
fn cap_young(cap: f64, contributions: &[Contribution<'_>], weights: &mut [f64], members: &[usize]) {
    let total: f64 = members
        .iter()
        .filter(|&&i| contributions[i].young)
        .map(|&i| weights[i])
        .sum();
    if total > cap {
        let k = cap / total;
        for &i in members {
            if contributions[i].young {
                weights[i] *= k;
            }
        }
    }
}

/// Multiplies the weight of sources among `members` (one address, or with `young_only`
/// the young sources among every neighbor's) whose mean is a robust outlier by (z0 / z)².
///
/// The median and MAD are taken over the sources that vote: the established ones (not
/// young) whenever any is active, else all. Young sources carry at most
/// `max_young_weight` together, however many they are; if each of them also had a vote,
/// a crowd of new or rotating ids (or one stranger echoing another source's mean, which
/// makes the MAD 0) would make the established sources the outliers and silence them.
fn down_weight_outliers(
    z0: f64,
    contributions: &[Contribution<'_>],
    weights: &mut [f64],
    members: &[usize],
    young_only: bool,
) {
    let active: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| weights[i] > 0.0)
        .collect();
    let any_established = active.iter().any(|&i| !contributions[i].young);
    let votes = |i: usize| !contributions[i].young || (!any_established && !young_only);
    let voters = active.iter().filter(|&&i| votes(i)).count();
    if voters < 3 {
        return;
    }
    let judged = |i: usize| !young_only || contributions[i].young;
    let n = contributions[active[0]].summary.dim();
    // z per active source (in `active` order), and one buffer for every median.
    let mut z = vec![0.0f64; active.len()];
    let mut column: Vec<f64> = Vec::with_capacity(voters);
    for d in 0..n {
        column.clear();
        column.extend(
            active
                .iter()
                .filter(|&&i| votes(i))
                .map(|&i| contributions[i].summary.mean()[d]),
        );
        let med = median(&mut column);
        for v in column.iter_mut() {
            *v = (*v - med).abs();
        }
        let mad = median(&mut column);
        let floor = 1e-9 * (1.0 + med.abs());
        let mut scale = (1.4826 * mad).max(floor);
        let far = |scale: f64| {
            active.iter().any(|&i| {
                judged(i) && (contributions[i].summary.mean()[d] - med).abs() > z0 * scale
            })
        };
        // Scale floor: sources that agree exactly (MAD 0) must not make every other one
        // an outlier, so the scale is at least the typical standard error of a voter's
        // own mean (sd · sqrt(Σw²) / W, from its own scatter). Only needed, and so only
        // computed, when the MAD alone would call someone an outlier.
        if far(scale) {
            column.clear();
            column.extend(active.iter().filter(|&&i| votes(i)).map(|&i| {
                let s = contributions[i].summary;
                let w = s.weight();
                if w > 0.0 {
                    (s.m2()[(d, d)].max(0.0) / w).sqrt() * s.weight_sq().sqrt() / w
                } else {
                    0.0
                }
            }));
            scale = scale.max(median(&mut column));
        }
        for (zi, &i) in z.iter_mut().zip(&active) {
            *zi = zi.max((contributions[i].summary.mean()[d] - med).abs() / scale);
        }
    }
    for (&zi, &i) in z.iter().zip(&active) {
        if zi > z0 && judged(i) {
            weights[i] *= (z0 / zi).powi(2);
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard normal samples (Box–Muller over a splitmix64 stream).
    pub(crate) struct Normal(u64);
    impl Normal {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn sample(&mut self) -> f64 {
            let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn source(bias: &[f64], noise: f64, n: usize, rng: &mut Normal) -> Summary {
        let mut s = Summary::empty(bias.len()).unwrap();
        for k in 0..n {
            let r: Vec<f64> = bias.iter().map(|b| b + noise * rng.sample()).collect();
            s.add(&r, k as i64, Decay::NONE).unwrap();
        }
        s
    }

    fn exact(s: &Summary) -> Contribution<'_> {
        Contribution {
            summary: s,
            trust: 1.0,
            similarity: 1.0,
            exact: true,
            address: 0,
            young: false,
        }
    }

    fn config() -> SynthesisConfig {
        SynthesisConfig {
            half_life_s: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn zero_support_returns_the_prediction_unchanged() {
        let x = DVector::from_vec(vec![1.0, -2.0]);
        let p = synthesize(&config(), &x, None, &[], 0).unwrap();
        assert_eq!(p.state, x);
        assert_eq!(p.confidence, 0.0);
        assert_eq!(p.support, 0);
        assert_eq!(p.matched, Match::None);
        assert_eq!(p.covariance, DMatrix::identity(2, 2));
    }

    #[test]
    fn correction_converges_to_the_true_bias() {
        let mut rng = Normal(7);
        let b = [0.8, -0.3, 2.0];
        let x = DVector::from_vec(vec![10.0, 0.0, -5.0]);
        let mut last_err = f64::INFINITY;
        for n in [10usize, 100, 1000, 10_000] {
            let s = source(&b, 0.5, n, &mut rng);
            let p = synthesize(&config(), &x, None, &[exact(&s)], n as i64).unwrap();
            let err = (0..3)
                .map(|i| (p.correction[i] - b[i]).abs())
                .fold(0.0, f64::max);
            assert!(
                err < last_err || err < 0.02,
                "error must shrink with support: {err} after {last_err}"
            );
            last_err = err;
            assert_eq!(p.support, n as u64);
            assert_eq!(p.matched, Match::Exact);
        }
        assert!(last_err < 0.02, "correction {last_err} away from bias");
    }

    #[test]
    fn two_hostile_sources_of_twenty_barely_move_the_correction() {
        let mut rng = Normal(11);
        let b = [1.0, -0.5];
        let mut sums: Vec<Summary> = (0..18).map(|_| source(&b, 0.3, 200, &mut rng)).collect();
        let honest_only: Vec<Summary> = sums.clone();
        sums.push(source(&[100.0, -50.0], 0.3, 200, &mut rng));
        sums.push(source(&[100.0, -50.0], 0.3, 200, &mut rng));
        let x = DVector::zeros(2);
        let cfg = config();
        let clean = synthesize(
            &cfg,
            &x,
            None,
            &honest_only.iter().map(exact).collect::<Vec<_>>(),
            0,
        )
        .unwrap();
        let attacked = synthesize(
            &cfg,
            &x,
            None,
            &sums.iter().map(exact).collect::<Vec<_>>(),
            0,
        )
        .unwrap();
        for (i, bias) in b.iter().enumerate() {
            let moved = (attacked.correction[i] - clean.correction[i]).abs();
            assert!(moved < 0.05 * bias.abs(), "dim {i} moved by {moved}");
        }
        assert!(attacked.weights[18] < 0.01 * attacked.weights[0]);
    }

    /// Found by test/attack.rs: young sources used to vote in the median/MAD one each,
    /// so one stranger echoing this robot's mean (MAD 0) or a crowd of Sybils silenced an
    /// established source although their weight was capped.
    #[test]
    fn two_sources_that_agree_exactly_do_not_make_a_third_an_outlier() {
        let mut rng = Normal(5);
        // Own outcomes and an established copy of them (same mean to the last bit), and
        // an honest source whose mean differs by less than its own standard error.
        let own = source(&[0.8], 0.1, 20, &mut rng);
        let copy = own.clone();
        let a = source(&[0.0], 0.1, 20, &mut rng);
        let shifted = Summary::from_parts(
            a.count(),
            a.weight(),
            a.weight_sq(),
            own.mean() + DVector::from_element(1, 0.02),
            a.m2().clone(),
            a.first_ns(),
            a.last_ns(),
        );
        let p = synthesize(
            &config(),
            &DVector::zeros(1),
            None,
            &[exact(&own), exact(&copy), exact(&shifted)],
            0,
        )
        .unwrap();
        // MAD is 0; the scale floor is the sources' standard error (~0.1 / sqrt(20)).
        assert!(
            (p.weights[2] - p.weights[0]).abs() < 1e-9,
            "the third source kept its weight: {:?}",
            p.weights
        );
    }

    /// Empirical Bayes: a learned k0 near 0 lets one consistent outcome dominate, but a
    /// lone young source still moves the prior no further than the fallback allows.
    #[test]
    fn a_small_learned_k0_trusts_exact_evidence_but_not_young_sources() {
        let mut rng = Normal(21);
        let cfg = SynthesisConfig {
            learned_prior_strength: vec![0.05],
            ..config()
        };
        let x = DVector::zeros(1);
        let own = source(&[0.8], 0.0, 1, &mut rng);
        let p = synthesize(&cfg, &x, None, &[exact(&own)], 0).unwrap();
        assert!((p.confidence - 1.0 / 1.05).abs() < 1e-12, "{p:?}");
        let sybil = source(&[50.0], 0.0, 1000, &mut rng);
        // Full trust weight, so the young cap (2 outcomes) is what binds.
        let young = Contribution {
            young: true,
            ..exact(&sybil)
        };
        let p = synthesize(&cfg, &x, None, &[young], 0).unwrap();
        let y = cfg.max_young_weight;
        // All evidence young: the fallback's k0 comes on top of the learned one.
        assert!(
            (p.confidence - y / (y + 0.05 + FALLBACK_PRIOR_STRENGTH)).abs() < 1e-9,
            "{p:?}"
        );
        assert!(p.confidence <= y / (y + FALLBACK_PRIOR_STRENGTH), "{p:?}");
    }

    #[test]
    fn young_sources_never_outvote_established_ones() {
        let mut rng = Normal(12);
        let own = source(&[0.8], 0.0, 4, &mut rng);
        let a = source(&[0.9], 0.0, 20, &mut rng);
        let echo = source(&[0.8], 0.0, 5, &mut rng);
        let sybil = source(&[50.0], 0.0, 1000, &mut rng);
        let young = |s| Contribution {
            young: true,
            trust: 1e-3,
            ..exact(s)
        };
        let x = DVector::zeros(1);
        let cfg = config();
        let honest = synthesize(&cfg, &x, None, &[exact(&own), exact(&a)], 0).unwrap();
        // An echo of the own mean, with almost no weight: before, median 0.8 and MAD 0
        // made A an outlier (weight ~1e-14).
        let echoed =
            synthesize(&cfg, &x, None, &[exact(&own), exact(&a), young(&echo)], 0).unwrap();
        assert_eq!(echoed.weights[..2], honest.weights[..]);
        // A hundred Sybils: together at most the young cap, and the established sources
        // keep their weight, so the shift is what the cap allows and no more.
        let mut crowd = vec![exact(&own), exact(&a)];
        crowd.extend((0..100).map(|_| young(&sybil)));
        let flooded = synthesize(&cfg, &x, None, &crowd, 0).unwrap();
        assert_eq!(flooded.weights[..2], honest.weights[..]);
        let young_total: f64 = flooded.weights[2..].iter().sum();
        assert!(
            (young_total - cfg.max_young_weight).abs() < 1e-9,
            "{young_total}"
        );
        let n_h: f64 = honest.weights.iter().sum();
        let c_h = honest.correction[0];
        let y = cfg.max_young_weight;
        // The young share adds the fallback's k0 in proportion to its weight, so the
        // shift is below what the cap alone would allow.
        let k = cfg.k0(0) + FALLBACK_PRIOR_STRENGTH * y / (n_h + y);
        let expected = (c_h * (n_h + cfg.k0(0)) + y * 50.0) / (n_h + y + k);
        assert!(
            (flooded.correction[0] - expected).abs() < 1e-9,
            "{flooded:?}"
        );
        let cap_only = y * (50.0 - c_h) / (n_h + y + cfg.k0(0));
        assert!(flooded.correction[0] - c_h < cap_only);
        // With three established sources the young ones are judged by them: a far young
        // claim is an outlier and loses its weight.
        let c = source(&[0.85], 0.0, 10, &mut rng);
        let judged = synthesize(
            &cfg,
            &x,
            None,
            &[exact(&own), exact(&a), exact(&c), young(&sybil)],
            0,
        )
        .unwrap();
        assert!(judged.weights[3] < 1e-3, "{:?}", judged.weights);
        assert!((judged.weights[1] - 20.0).abs() < 1e-9);
        // Nobody established (a first encounter among strangers): all vote, as before.
        let strangers = synthesize(
            &cfg,
            &x,
            None,
            &[young(&own), young(&a), young(&c), young(&sybil)],
            0,
        )
        .unwrap();
        assert!(strangers.weights[3] < 0.01 * strangers.weights[1]);
    }

    /// Sources at neighbor address `address` (similarity `similarity`).
    fn neighbor(s: &Summary, address: u32, similarity: f64) -> Contribution<'_> {
        Contribution {
            similarity,
            exact: false,
            address,
            ..exact(s)
        }
    }

    /// Biases spread τ = 1 between addresses, outcomes σ = 0.5 around them: k0 = 0.25.
    fn learned() -> SynthesisConfig {
        SynthesisConfig {
            learned_prior_strength: vec![0.25],
            learned_within_variance: vec![0.25],
            learned_bias_variance: vec![1.0],
            ..config()
        }
    }

    #[test]
    fn neighbors_are_borrowed_only_when_exact_support_is_thin() {
        let mut rng = Normal(3);
        let exact_many = source(&[1.0], 0.5, 50, &mut rng);
        let near: Vec<Summary> = (0..4).map(|_| source(&[2.0], 0.5, 40, &mut rng)).collect();
        let cfg = learned();
        let x = DVector::zeros(1);
        let mut rich = vec![exact(&exact_many)];
        rich.extend(near.iter().zip(1..).map(|(s, a)| neighbor(s, a, 0.9)));
        let p = synthesize(&cfg, &x, None, &rich, 0).unwrap();
        assert_eq!(p.matched, Match::Exact);
        assert!(p.weights[1..].iter().all(|w| *w == 0.0), "{:?}", p.weights);
        assert_eq!(p.support, 50);
    }

    /// The neighbors give the prior mean; the exact outcomes update it. Before, four
    /// neighbors of 40 outcomes each were pooled as 144 exact samples and two exact
    /// outcomes moved the answer by 1 %.
    #[test]
    fn a_thin_address_starts_from_its_neighbors_and_its_outcomes_move_it() {
        let mut rng = Normal(4);
        let near: Vec<Summary> = (0..4).map(|_| source(&[2.0], 0.5, 40, &mut rng)).collect();
        let neighbors: Vec<Contribution<'_>> = near
            .iter()
            .zip(1..)
            .map(|(s, a)| neighbor(s, a, 0.9))
            .collect();
        let cfg = learned();
        let x = DVector::zeros(1);
        let unseen = synthesize(&cfg, &x, None, &neighbors, 0).unwrap();
        assert_eq!(unseen.matched, Match::Neighbor);
        let c0 = unseen.correction[0];
        assert!(c0 > 1.7 && c0 < 2.1, "the neighbors' level: {c0}");
        assert!(unseen.confidence > 0.5, "{unseen:?}");
        let mut last = c0;
        for n in [1usize, 2, 4] {
            // Exact outcomes at 1.0 (no noise: a consistent address unlike its neighbors).
            let own = source(&[1.0], 0.0, n, &mut rng);
            let mut all = vec![exact(&own)];
            all.extend(neighbors.iter().cloned());
            let p = synthesize(&cfg, &x, None, &all, 0).unwrap();
            let c = p.correction[0];
            assert!(c > 1.0 && c < last, "{n} outcomes: {c} after {last}");
            last = c;
            // Own outcomes count as exact samples, neighbors at their prior strength.
            let neighbor_worth: f64 = p.weights[1..].iter().sum();
            assert!(p.weights[0] == n as f64 && neighbor_worth > 0.0, "{p:?}");
        }
        assert!(
            last < 1.0 + 0.75 * (c0 - 1.0),
            "four outcomes move it: {last}"
        );
    }

    #[test]
    fn neighbors_that_disagree_leave_the_exact_answer() {
        let mut rng = Normal(8);
        let near: Vec<Summary> = [3.0, -3.0, 2.5, -2.0, 3.5, -2.5]
            .iter()
            .map(|&b| source(&[b], 0.5, 40, &mut rng))
            .collect();
        let own = source(&[1.0], 0.5, 2, &mut rng);
        let cfg = learned();
        let x = DVector::zeros(1);
        let alone = synthesize(&cfg, &x, None, &[exact(&own)], 0).unwrap();
        let mut all = vec![exact(&own)];
        all.extend(near.iter().zip(1..).map(|(s, a)| neighbor(s, a, 0.9)));
        let p = synthesize(&cfg, &x, None, &all, 0).unwrap();
        let (a, b) = (alone.correction[0], p.correction[0]);
        assert!(
            (a - b).abs() < 0.1 * a.abs(),
            "alone {a}, with neighbors {b}"
        );
    }

    /// Three sources at one neighbor address are one address: their agreement is not
    /// the neighbors' agreement, and a hostile one among them is judged by the others.
    #[test]
    fn sources_at_one_neighbor_address_are_pooled_and_judged_together() {
        let mut rng = Normal(9);
        let honest: Vec<Summary> = (0..3).map(|_| source(&[2.0], 0.5, 40, &mut rng)).collect();
        let liar = source(&[40.0], 0.5, 40, &mut rng);
        let cfg = learned();
        let x = DVector::zeros(1);
        let mut at_one: Vec<Contribution<'_>> =
            honest.iter().map(|s| neighbor(s, 1, 0.9)).collect();
        let one = synthesize(&cfg, &x, None, &at_one, 0).unwrap();
        let spread: Vec<Contribution<'_>> = honest
            .iter()
            .zip(1..)
            .map(|(s, a)| neighbor(s, a, 0.9))
            .collect();
        let three = synthesize(&cfg, &x, None, &spread, 0).unwrap();
        assert!(
            three.confidence > one.confidence,
            "three agreeing addresses say more than one: {} vs {}",
            three.confidence,
            one.confidence
        );
        at_one.push(neighbor(&liar, 1, 0.9));
        let attacked = synthesize(&cfg, &x, None, &at_one, 0).unwrap();
        assert!(
            attacked.weights[3] < 0.01 * attacked.weights[0],
            "{attacked:?}"
        );
        assert!((attacked.correction[0] - one.correction[0]).abs() < 0.05);
    }

    #[test]
    fn caps_trust_and_bounds_apply() {
        let mut rng = Normal(5);
        let big = source(&[1.0], 0.1, 10_000, &mut rng);
        let cfg = SynthesisConfig {
            max_source_weight: 20.0,
            max_correction: vec![0.5],
            ..config()
        };
        let x = DVector::zeros(1);
        let p = synthesize(&cfg, &x, None, &[exact(&big)], 0).unwrap();
        assert_eq!(p.weights[0], 20.0);
        assert!((p.confidence - 20.0 / 25.0).abs() < 1e-12);
        assert_eq!(p.correction[0], 0.5, "clamped to the bound");
        let distrusted = Contribution {
            trust: 0.0,
            ..exact(&big)
        };
        let p = synthesize(&cfg, &x, None, &[distrusted], 0).unwrap();
        assert_eq!(p.matched, Match::None);
    }

    #[test]
    fn implausible_sources_are_left_out_and_do_not_count_as_support() {
        let mut rng = Normal(6);
        let honest = source(&[2.0, -1.0], 0.1, 3, &mut rng);
        let liar = source(&[40.0, 0.0], 0.1, 50, &mut rng);
        let near = source(&[2.5, -1.0], 0.1, 10, &mut rng);
        let cfg = SynthesisConfig {
            max_residual: vec![10.0, 5.0],
            min_support: 5.0,
            ..learned()
        };
        assert!(cfg.plausible(&[9.9, -4.9]) && !cfg.plausible(&[0.0, 5.1]));
        assert!(config().plausible(&[1e300]), "no gate: everything passes");
        let x = DVector::zeros(2);
        let neighbor = Contribution {
            similarity: 0.9,
            exact: false,
            ..exact(&near)
        };
        let p = synthesize(&cfg, &x, None, &[exact(&honest), exact(&liar), neighbor], 0).unwrap();
        assert_eq!(p.weights[1], 0.0, "the liar weighs nothing");
        assert_eq!(p.support, 13, "the honest source and the borrowed neighbor");
        assert_eq!(
            p.matched,
            Match::Neighbor,
            "the liar's 50 outcomes are not support"
        );
        assert!(
            p.correction[0] > 1.5 && p.correction[0] < 2.6,
            "{}",
            p.correction[0]
        );
        let ungated = synthesize(&config(), &x, None, &[exact(&honest), exact(&liar)], 0).unwrap();
        assert!(
            ungated.correction[0] > 2.6,
            "without the gate the liar pulls it"
        );
        let bad = SynthesisConfig {
            max_residual: vec![-1.0],
            ..config()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_residual");
    }

    #[test]
    fn bad_dimensions_are_errors() {
        let s = Summary::from_sample(&[1.0, 2.0], 0).unwrap();
        let x = DVector::zeros(3);
        assert!(matches!(
            synthesize(&config(), &x, None, &[exact(&s)], 0),
            Err(SynthesisError::DimensionMismatch { .. })
        ));
        let p = DMatrix::identity(2, 2);
        assert!(matches!(
            synthesize(&config(), &x, Some(&p), &[], 0),
            Err(SynthesisError::BadCovariance { .. })
        ));
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = SynthesisConfig {
            prior_strength: -1.0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "prior_strength");
        let bad = SynthesisConfig {
            max_correction: vec![f64::NAN],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_correction");
        assert!(SynthesisConfig::default().validate().is_ok());
    }
}
