//! Mergeable, decaying residual statistics: what one robot learned about one scenario.
//!
//! A [`Summary`] holds the decay-weighted sufficient statistics of the residuals
//! (measured − predicted) seen for one (model, fingerprint, source): count, total weight
//! W = Σ wᵢ, Σ wᵢ², weighted mean μ and the weighted scatter M2 = Σ wᵢ (rᵢ − μ)(rᵢ − μ)ᵀ.
//! Each sample's weight is `exp(-λ (t_ref − tᵢ))` with λ = ln 2 / half-life and `t_ref`
//! the newest sample time, so old reality fades at the same rate on every robot.
//!
//! Merging uses Chan's parallel update on weighted moments after bringing both sides to
//! the later reference time. It is associative and commutative (up to rounding), so any
//! order of arrival gives the same statistics as one pass over all samples.

use nalgebra::{DMatrix, DVector};
use thiserror::Error;

use super::MAX_STATE_DIM;

const NANOS_PER_SEC: f64 = 1e9;

/// Why a sample or summary was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SummaryError {
    /// Dimension 0 or above [`MAX_STATE_DIM`].
    #[error("state dimension {dim} out of range 1..={MAX_STATE_DIM}")]
    BadDimension {
        /// The dimension that was given.
        dim: usize,
    },
    /// Two summaries (or a summary and a sample) of different dimensions.
    #[error("dimension mismatch: summary has {expected}, got {got}")]
    DimensionMismatch {
        /// The summary's dimension.
        expected: usize,
        /// The other side's dimension.
        got: usize,
    },
    /// A residual component was NaN or infinite.
    #[error("residual component {index} is not finite")]
    NonFinite {
        /// Index of the bad component.
        index: usize,
    },
}

/// How fast old outcomes fade: the half-life of a sample's weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decay {
    /// λ in 1/ns; 0 means no decay.
    rate_per_ns: f64,
}

impl Decay {
    /// No fading: every outcome counts forever.
    pub const NONE: Decay = Decay { rate_per_ns: 0.0 };

    /// Decay with the given half-life in seconds; non-positive or infinite means none.
    pub fn from_half_life_secs(half_life_s: f64) -> Self {
        if half_life_s.is_finite() && half_life_s > 0.0 {
            Decay {
                rate_per_ns: std::f64::consts::LN_2 / (half_life_s * NANOS_PER_SEC),
            }
        } else {
            Decay::NONE
        }
    }

    /// The factor a weight recorded at `from_ns` has shrunk by at `to_ns` (1 if `to_ns` is earlier).
    pub fn factor(&self, from_ns: i64, to_ns: i64) -> f64 {
        if self.rate_per_ns == 0.0 || to_ns <= from_ns {
            return 1.0;
        }
        let dt = (to_ns as i128 - from_ns as i128) as f64;
        (-self.rate_per_ns * dt).exp()
    }
}

/// Decay-weighted mean and scatter of residuals for one (model, fingerprint, source).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    count: u64,
    weight: f64,
    weight_sq: f64,
    mean: DVector<f64>,
    m2: DMatrix<f64>,
    first_ns: i64,
    last_ns: i64,
}

impl Summary {
    /// An empty summary for residuals of dimension `dim`.
    pub fn empty(dim: usize) -> Result<Self, SummaryError> {
        if dim == 0 || dim > MAX_STATE_DIM {
            return Err(SummaryError::BadDimension { dim });
        }
        Ok(Summary {
            count: 0,
            weight: 0.0,
            weight_sq: 0.0,
            mean: DVector::zeros(dim),
            m2: DMatrix::zeros(dim, dim),
            first_ns: 0,
            last_ns: 0,
        })
    }

    /// A summary of one residual observed at `t_ns`.
    pub fn from_sample(residual: &[f64], t_ns: i64) -> Result<Self, SummaryError> {
        let mut s = Summary::empty(residual.len())?;
        s.add(residual, t_ns, Decay::NONE)?;
        Ok(s)
    }

    /// Rebuilds a summary from its parts (used by the record decoder, which validates them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        count: u64,
        weight: f64,
        weight_sq: f64,
        mean: DVector<f64>,
        m2: DMatrix<f64>,
        first_ns: i64,
        last_ns: i64,
    ) -> Self {
        Summary {
            count,
            weight,
            weight_sq,
            mean,
            m2,
            first_ns,
            last_ns,
        }
    }

    /// Folds one residual observed at `t_ns` in.
    pub fn add(&mut self, residual: &[f64], t_ns: i64, decay: Decay) -> Result<(), SummaryError> {
        if residual.len() != self.dim() {
            return Err(SummaryError::DimensionMismatch {
                expected: self.dim(),
                got: residual.len(),
            });
        }
        if let Some(index) = residual.iter().position(|x| !x.is_finite()) {
            return Err(SummaryError::NonFinite { index });
        }
        // A one-sample summary merged in keeps a single code path for the update rule.
        let one = Summary {
            count: 1,
            weight: 1.0,
            weight_sq: 1.0,
            mean: DVector::from_column_slice(residual),
            m2: DMatrix::zeros(self.dim(), self.dim()),
            first_ns: t_ns,
            last_ns: t_ns,
        };
        self.merge(&one, decay)
    }

    /// Merges another summary of the same dimension in (Chan's weighted update).
    pub fn merge(&mut self, other: &Summary, decay: Decay) -> Result<(), SummaryError> {
        if other.dim() != self.dim() {
            return Err(SummaryError::DimensionMismatch {
                expected: self.dim(),
                got: other.dim(),
            });
        }
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            *self = other.clone();
            return Ok(());
        }
        let t_ref = self.last_ns.max(other.last_ns);
        let fa = decay.factor(self.last_ns, t_ref);
        let fb = decay.factor(other.last_ns, t_ref);
        let wa = self.weight * fa;
        let wb = other.weight * fb;
        let w = wa + wb;
        if w > 0.0 {
            let delta = &other.mean - &self.mean;
            let k = wb / w;
            self.m2 *= fa;
            self.m2 += &other.m2 * fb;
            self.m2 += (&delta * delta.transpose()) * (wa * k);
            self.mean += delta * k;
        }
        self.weight = w;
        self.weight_sq = self.weight_sq * fa * fa + other.weight_sq * fb * fb;
        // Saturating: a count cannot overflow, whatever a peer claimed (records are bounded
        // by `validation.max_count` before they merge; this guards every other path).
        self.count = self.count.saturating_add(other.count);
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = t_ref;
        Ok(())
    }

    /// This summary as seen at `now_ns`: weights faded, statistics otherwise unchanged.
    pub fn decayed_to(&self, now_ns: i64, decay: Decay) -> Summary {
        let mut s = self.clone();
        s.decay_in_place(now_ns, decay);
        s
    }

    /// Fades the weights to `now_ns` in place (no allocation).
    pub fn decay_in_place(&mut self, now_ns: i64, decay: Decay) {
        let f = decay.factor(self.last_ns, now_ns);
        if f != 1.0 {
            self.weight *= f;
            self.weight_sq *= f * f;
            self.m2 *= f;
            self.last_ns = now_ns;
        }
    }

    /// Scales this summary's weight by `factor` in [0, ∞): trust, similarity or caps.
    pub fn scale_weight(&mut self, factor: f64) {
        self.weight *= factor;
        self.weight_sq *= factor * factor;
        self.m2 *= factor;
    }

    /// State dimension of the residuals.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Number of outcomes folded in (not decayed).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Total decayed weight W = Σ wᵢ at the reference time.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Σ wᵢ², for the effective sample size W² / Σ wᵢ².
    pub fn weight_sq(&self) -> f64 {
        self.weight_sq
    }

    /// Kish's effective sample size W² / Σ wᵢ² (0 when empty).
    pub fn effective_count(&self) -> f64 {
        if self.weight_sq > 0.0 {
            self.weight * self.weight / self.weight_sq
        } else {
            0.0
        }
    }

    /// Weighted mean residual.
    pub fn mean(&self) -> &DVector<f64> {
        &self.mean
    }

    /// Weighted scatter Σ wᵢ (rᵢ − μ)(rᵢ − μ)ᵀ.
    pub fn m2(&self) -> &DMatrix<f64> {
        &self.m2
    }

    /// Weighted residual covariance M2 / W (zeros when W is 0).
    pub fn covariance(&self) -> DMatrix<f64> {
        if self.weight > 0.0 {
            &self.m2 / self.weight
        } else {
            DMatrix::zeros(self.dim(), self.dim())
        }
    }

    /// Time of the oldest outcome, ns since the epoch of the caller's clock.
    pub fn first_ns(&self) -> i64 {
        self.first_ns
    }

    /// Time of the newest outcome (also the decay reference time).
    pub fn last_ns(&self) -> i64 {
        self.last_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Batch weighted statistics straight from the definition, as the reference.
    fn batch(samples: &[(Vec<f64>, i64)], decay: Decay) -> (f64, DVector<f64>, DMatrix<f64>) {
        let t_ref = samples.iter().map(|s| s.1).max().unwrap();
        let dim = samples[0].0.len();
        let ws: Vec<f64> = samples.iter().map(|s| decay.factor(s.1, t_ref)).collect();
        let w: f64 = ws.iter().sum();
        let mut mean = DVector::zeros(dim);
        for (s, wi) in samples.iter().zip(&ws) {
            mean += DVector::from_column_slice(&s.0) * *wi;
        }
        mean /= w;
        let mut m2 = DMatrix::zeros(dim, dim);
        for (s, wi) in samples.iter().zip(&ws) {
            let d = DVector::from_column_slice(&s.0) - &mean;
            m2 += (&d * d.transpose()) * *wi;
        }
        (w, mean, m2)
    }

    fn close(a: f64, b: f64, scale: f64) -> bool {
        (a - b).abs() <= 1e-9 * scale.max(1.0)
    }

    fn assert_matches_batch(s: &Summary, samples: &[(Vec<f64>, i64)], decay: Decay) {
        let (w, mean, m2) = batch(samples, decay);
        assert_eq!(s.count(), samples.len() as u64);
        assert!(close(s.weight(), w, w), "weight {} vs {}", s.weight(), w);
        let mscale = mean.amax().max(1.0);
        for i in 0..mean.len() {
            assert!(
                close(s.mean()[i], mean[i], mscale),
                "mean[{i}] {} vs {}",
                s.mean()[i],
                mean[i]
            );
        }
        let sscale = m2.amax().max(1.0);
        for i in 0..m2.len() {
            assert!(
                close(s.m2()[i], m2[i], sscale),
                "m2[{i}] {} vs {}",
                s.m2()[i],
                m2[i]
            );
        }
    }

    fn samples_strategy() -> impl Strategy<Value = Vec<(Vec<f64>, i64)>> {
        (1usize..=4).prop_flat_map(|dim| {
            prop::collection::vec(
                (
                    prop::collection::vec(-1e3f64..1e3, dim),
                    0i64..3_600_000_000_000,
                ),
                1..40,
            )
        })
    }

    fn fold(samples: &[(Vec<f64>, i64)], decay: Decay) -> Summary {
        let mut s = Summary::empty(samples[0].0.len()).unwrap();
        for (r, t) in samples {
            s.add(r, *t, decay).unwrap();
        }
        s
    }

    proptest! {
        #[test]
        fn sequential_fold_equals_batch(samples in samples_strategy(), half_life in prop::option::of(60.0f64..7200.0)) {
            let decay = half_life.map_or(Decay::NONE, Decay::from_half_life_secs);
            assert_matches_batch(&fold(&samples, decay), &samples, decay);
        }

        #[test]
        fn merge_is_commutative_and_associative(samples in samples_strategy(), cut1 in 0usize..40, cut2 in 0usize..40, half_life in 60.0f64..7200.0) {
            let decay = Decay::from_half_life_secs(half_life);
            let n = samples.len();
            let (i, j) = { let a = cut1 % (n + 1); let b = cut2 % (n + 1); (a.min(b), a.max(b)) };
            let dim = samples[0].0.len();
            let part = |r: &[(Vec<f64>, i64)]| if r.is_empty() { Summary::empty(dim).unwrap() } else { fold(r, decay) };
            let (a, b, c) = (part(&samples[..i]), part(&samples[i..j]), part(&samples[j..]));
            // (a + b) + c
            let mut left = a.clone();
            left.merge(&b, decay).unwrap();
            left.merge(&c, decay).unwrap();
            // a + (c + b)
            let mut cb = c.clone();
            cb.merge(&b, decay).unwrap();
            let mut right = a.clone();
            right.merge(&cb, decay).unwrap();
            // c + (b + a)
            let mut ba = b.clone();
            ba.merge(&a, decay).unwrap();
            let mut rev = c.clone();
            rev.merge(&ba, decay).unwrap();
            for s in [&left, &right, &rev] {
                assert_matches_batch(s, &samples, decay);
            }
        }
    }

    #[test]
    fn decay_halves_weight_after_one_half_life() {
        let decay = Decay::from_half_life_secs(10.0);
        let s = Summary::from_sample(&[1.0, 2.0], 0).unwrap();
        let later = s.decayed_to(10_000_000_000, decay);
        assert!((later.weight() - 0.5).abs() < 1e-12);
        assert_eq!(later.mean(), s.mean());
        assert_eq!(later.count(), 1);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(
            Summary::empty(0),
            Err(SummaryError::BadDimension { dim: 0 })
        );
        assert!(Summary::empty(MAX_STATE_DIM + 1).is_err());
        let mut s = Summary::empty(2).unwrap();
        assert_eq!(
            s.add(&[1.0], 0, Decay::NONE),
            Err(SummaryError::DimensionMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            s.add(&[1.0, f64::NAN], 0, Decay::NONE),
            Err(SummaryError::NonFinite { index: 1 })
        );
        assert_eq!(s.count(), 0);
        let other = Summary::empty(3).unwrap();
        assert!(s.merge(&other, Decay::NONE).is_err());
    }

    #[test]
    fn effective_count_of_equal_weights_is_the_count() {
        let mut s = Summary::empty(1).unwrap();
        for _ in 0..5 {
            s.add(&[1.0], 0, Decay::NONE).unwrap();
        }
        assert!((s.effective_count() - 5.0).abs() < 1e-12);
        assert_eq!(s.covariance()[(0, 0)], 0.0);
    }
}
