//! The predictors compared on every episode, and the error bookkeeping.
//!
//! (a) raw: the world model's prediction; (b) local-only: corrected by the robot's own
//! outcomes in that class only; (c) qis: the corrected prior from the robot's outcome
//! memory (own + fleet records received over the exchange); (d) oracle: a central server
//! that pools every robot's raw residual per class instantly, with the same shrinkage;
//! (e) floor: the prediction plus the world's true mean error of the class (known only
//! to the simulator, [`super::floor`]); (f) learner: a central k-NN regression of the
//! residual on the context, over every raw residual ([`super::learner`]).

use std::collections::HashMap;

use nalgebra::DVector;
use serde::Serialize;

use crate::core::ids::Fingerprint;
use crate::core::shrinkage::learn_prior_strength;
use crate::core::summary::{Decay, Summary, SummaryError};
use crate::core::synthesis::{Contribution, SynthesisConfig, SynthesisError, synthesize};

/// An address of the simulated fleet: the world model (index into the world's models)
/// and the fingerprint, as a node's memory keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Class {
    /// Index of the world model.
    pub model: usize,
    /// The scenario's fingerprint.
    pub fingerprint: Fingerprint,
}

/// Number of predictors.
pub const PREDICTORS: usize = 6;
/// The predictors, in table order.
pub const BASELINES: [&str; PREDICTORS] =
    ["raw", "local-only", "qis", "oracle", "floor", "learner"];
/// Index of the raw world model in [`BASELINES`].
pub const RAW: usize = 0;
/// Index of local-only learning.
pub const LOCAL: usize = 1;
/// Index of the qis corrected prior.
pub const QIS: usize = 2;
/// Index of the central oracle.
pub const ORACLE: usize = 3;
/// Index of the clairvoyant floor.
pub const FLOOR: usize = 4;
/// Index of the central learner.
pub const LEARNER: usize = 5;

/// The corrected prior from one summary alone (local-only and oracle use this).
pub fn prior_from(
    config: &SynthesisConfig,
    summary: Option<&Summary>,
    predicted: &DVector<f64>,
    now_ns: i64,
) -> Result<DVector<f64>, SynthesisError> {
    let contributions: Vec<Contribution<'_>> = summary
        .map(|s| Contribution {
            summary: s,
            trust: 1.0,
            similarity: 1.0,
            exact: true,
            address: 0,
            young: false,
        })
        .into_iter()
        .collect();
    Ok(synthesize(config, predicted, None, &contributions, now_ns)?.state)
}

/// Central oracle: every raw residual, pooled per class the moment it is measured, and
/// corrected with the node's estimator (k0 learned the same way, from what it pools).
/// Local-only is the same with one robot's residuals.
#[derive(Debug, Default)]
pub struct Oracle {
    pooled: HashMap<Class, Summary>,
    /// k0 per dimension learned from `pooled` (empty = not yet: the fallback).
    learned: Vec<f64>,
    /// Residuals folded in since `learned` was computed.
    since: u64,
}

/// Residuals between two learnings of a baseline's k0 (as the node's interval).
const LEARN_EVERY: u64 = 64;

impl Oracle {
    /// Folds one residual in.
    pub fn add(
        &mut self,
        class: Class,
        residual: &[f64],
        t_ns: i64,
        decay: Decay,
    ) -> Result<(), SummaryError> {
        self.since += 1;
        match self.pooled.get_mut(&class) {
            Some(s) => s.add(residual, t_ns, decay),
            None => {
                self.pooled
                    .insert(class, Summary::from_sample(residual, t_ns)?);
                Ok(())
            }
        }
    }

    /// The corrected prior of a class with `base`'s estimator: its k0 learned from every
    /// class pooled here when `base` configures none, as the node learns its own.
    pub fn prior(
        &mut self,
        base: &SynthesisConfig,
        class: &Class,
        predicted: &DVector<f64>,
        now_ns: i64,
    ) -> Result<DVector<f64>, SynthesisError> {
        if base.prior_strength == 0.0 && (self.since >= LEARN_EVERY || self.learned.is_empty()) {
            self.since = 0;
            self.learned =
                learn_prior_strength(self.pooled.values().map(std::iter::once)).unwrap_or_default();
        }
        let config = SynthesisConfig {
            learned_prior_strength: self.learned.clone(),
            ..base.clone()
        };
        prior_from(&config, self.pooled.get(class), predicted, now_ns)
    }

    /// Outcomes pooled for a class so far.
    pub fn count(&self, class: &Class) -> u64 {
        self.pooled.get(class).map_or(0, Summary::count)
    }

    /// The pooled summary of a class.
    pub fn summary(&self, class: &Class) -> Option<&Summary> {
        self.pooled.get(class)
    }

    /// Classes seen.
    pub fn classes(&self) -> usize {
        self.pooled.len()
    }
}

/// Sums of squared normalized errors.
#[derive(Clone, Debug, Default)]
struct Acc {
    sq: Vec<f64>,
    n: u64,
}

impl Acc {
    fn add(&mut self, err: &[f64]) {
        if self.sq.len() < err.len() {
            self.sq.resize(err.len(), 0.0);
        }
        for (s, e) in self.sq.iter_mut().zip(err) {
            *s += e * e;
        }
        self.n += 1;
    }

    /// RMSE over all components (normalized units).
    fn rmse(&self) -> f64 {
        if self.n == 0 || self.sq.is_empty() {
            return f64::NAN;
        }
        (self.sq.iter().sum::<f64>() / (self.n as f64 * self.sq.len() as f64)).sqrt()
    }

    /// RMSE of each component, in the component's own unit.
    fn rmse_per_dim(&self, scale: &[f64]) -> Vec<f64> {
        scale
            .iter()
            .enumerate()
            .map(|(d, s)| match self.sq.get(d) {
                Some(sq) if self.n > 0 => (sq / self.n as f64).sqrt() * s,
                _ => f64::NAN,
            })
            .collect()
    }
}

/// One accumulator per predictor.
type Row = [Acc; PREDICTORS];

/// Error bookkeeping of one run: per predictor, over time windows, after warm-up and on
/// first encounters.
#[derive(Debug)]
pub struct Metrics {
    scale: Vec<f64>,
    windows: Vec<Row>,
    rounds_per_window: usize,
    warmup_rounds: usize,
    all: Row,
    after_warmup: Row,
    first: Row,
    /// First encounters split by how many fleet outcomes existed: 1–4, 5–19, ≥ 20.
    first_by_support: [Row; 3],
    /// Scratch: one episode's normalized error.
    err: Vec<f64>,
}

/// Support buckets of [`Metrics::first_by_support`], for the report.
pub const SUPPORT_BUCKETS: [&str; 3] = ["1-4", "5-19", "20+"];

/// Error figures of one predictor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselineResult {
    /// Predictor name.
    pub name: String,
    /// Normalized RMSE over all episodes.
    pub rmse_all: f64,
    /// Normalized RMSE after warm-up.
    pub rmse_after_warmup: f64,
    /// Per-component RMSE after warm-up, in each component's unit.
    pub rmse_after_warmup_per_dim: Vec<f64>,
    /// Normalized RMSE on first encounters of a class other robots had already seen.
    pub rmse_first_encounter: f64,
    /// Same, split by the fleet's support for the class at that moment.
    pub rmse_first_encounter_by_support: [f64; 3],
    /// Normalized RMSE per time window (the error curve).
    pub curve: Vec<f64>,
}

impl Metrics {
    /// Bookkeeping for `rounds` rounds cut into `windows` windows, the first
    /// `warmup_rounds` being warm-up; errors are divided by `scale` per component.
    pub fn new(rounds: usize, windows: usize, warmup_rounds: usize, scale: &[f64]) -> Metrics {
        let windows = windows.clamp(1, rounds.max(1));
        Metrics {
            scale: scale.to_vec(),
            windows: vec![Row::default(); windows],
            rounds_per_window: rounds.max(1).div_ceil(windows),
            warmup_rounds,
            all: Row::default(),
            after_warmup: Row::default(),
            first: Row::default(),
            first_by_support: Default::default(),
            err: vec![0.0; scale.len()],
        }
    }

    /// Records one episode: each predictor's state against the measured one.
    /// `first_support` is the fleet's outcome count for the class when this is the
    /// robot's first episode in it (None otherwise).
    pub fn add(
        &mut self,
        round: usize,
        predictions: &[&[f64]; PREDICTORS],
        measured: &[f64],
        first_support: Option<u64>,
    ) {
        let w = (round / self.rounds_per_window).min(self.windows.len() - 1);
        for (b, pred) in predictions.iter().enumerate() {
            for (d, e) in self.err.iter_mut().enumerate() {
                *e = (pred[d] - measured[d]) / self.scale[d];
            }
            let err = &self.err;
            self.windows[w][b].add(err);
            self.all[b].add(err);
            if round >= self.warmup_rounds {
                self.after_warmup[b].add(err);
            }
            if let Some(support) = first_support.filter(|&s| s > 0) {
                self.first[b].add(err);
                let bucket = match support {
                    0..=4 => 0,
                    5..=19 => 1,
                    _ => 2,
                };
                self.first_by_support[bucket][b].add(err);
            }
        }
    }

    /// Episodes counted.
    pub fn episodes(&self) -> u64 {
        self.all[RAW].n
    }

    /// First encounters of a class others had seen.
    pub fn first_encounters(&self) -> u64 {
        self.first[RAW].n
    }

    /// First encounters per support bucket.
    pub fn first_encounters_by_support(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.first_by_support[i][RAW].n)
    }

    /// Rounds per window of the curve.
    pub fn rounds_per_window(&self) -> usize {
        self.rounds_per_window
    }

    /// The figures of every predictor.
    pub fn results(&self) -> Vec<BaselineResult> {
        BASELINES
            .iter()
            .enumerate()
            .map(|(b, name)| BaselineResult {
                name: (*name).to_owned(),
                rmse_all: self.all[b].rmse(),
                rmse_after_warmup: self.after_warmup[b].rmse(),
                rmse_after_warmup_per_dim: self.after_warmup[b].rmse_per_dim(&self.scale),
                rmse_first_encounter: self.first[b].rmse(),
                rmse_first_encounter_by_support: [0, 1, 2]
                    .map(|i| self.first_by_support[i][b].rmse()),
                curve: self.windows.iter().map(|w| w[b].rmse()).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCALE: [f64; 4] = [1.0, 0.25, 0.1, 0.25];

    #[test]
    fn rmse_is_normalized_per_component() {
        let mut m = Metrics::new(10, 2, 5, &SCALE);
        let truth = [10.0, 1.0, 0.5, 3.0];
        let off = [
            truth[0] + SCALE[0],
            truth[1] + SCALE[1],
            truth[2] + SCALE[2],
            truth[3] + SCALE[3],
        ];
        let (t, o): (&[f64], &[f64]) = (&truth, &off);
        m.add(1, &[o, t, t, t, t, t], &truth, None);
        m.add(7, &[o, o, t, t, t, t], &truth, Some(3));
        let r = m.results();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(r[RAW].rmse_all, 1.0), "{}", r[RAW].rmse_all);
        assert_eq!(r[QIS].rmse_all, 0.0);
        assert!(close(r[LOCAL].rmse_all, 0.5f64.sqrt()));
        assert_eq!(r[LOCAL].curve[0], 0.0);
        assert!(close(r[LOCAL].curve[1], 1.0));
        assert!(close(r[LOCAL].rmse_after_warmup, 1.0));
        for (got, want) in r[RAW].rmse_after_warmup_per_dim.iter().zip(SCALE) {
            assert!(close(*got, want), "{got} vs {want}");
        }
        assert_eq!(m.first_encounters(), 1);
        assert_eq!(m.first_encounters_by_support(), [1, 0, 0]);
        assert!(r[RAW].rmse_first_encounter_by_support[1].is_nan());
    }

    #[test]
    fn the_oracle_pools_and_shrinks() {
        let mut o = Oracle::default();
        let fp = Class {
            model: 0,
            fingerprint: Fingerprint([1; 16]),
        };
        for _ in 0..95 {
            o.add(fp, &[2.0], 0, Decay::NONE).unwrap();
        }
        let cfg = SynthesisConfig::default();
        let p = prior_from(&cfg, o.summary(&fp), &DVector::zeros(1), 0).unwrap();
        assert!((p[0] - 2.0 * 95.0 / 100.0).abs() < 1e-9);
        assert_eq!(o.count(&fp), 95);
        let none = prior_from(&cfg, None, &DVector::from_vec(vec![3.0]), 0).unwrap();
        assert_eq!(none[0], 3.0);
    }
}
