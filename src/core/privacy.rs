//! The privacy budget (DESIGN 6): when an own record may leave the robot.
//!
//! A record is a cumulative summary, so two consecutive versions can be differenced: if
//! they differ by one outcome, the difference is that outcome's residual. The budget
//! therefore shares an address's record only once it holds at least `k` own outcomes,
//! and a newer version only once it holds at least `k` more than the version last
//! shared. Whatever an observer records on the wire, each difference it can form covers
//! at least `k` outcomes: it learns means of `k` or more residuals, never a single one.
//!
//! Times: a shared record's first and last outcome times are rounded down to a time
//! quantum ([`coarsen_times`], `exchange.time_quantum_s`, default one minute), so the
//! wire does not tell when each outcome happened to the nanosecond (decay, with its
//! one-day half-life, does not notice a minute).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::record::OutcomeRecord;
use super::summary::Summary;

/// Default `k`: own outcomes before an address is shared, and between two shares.
pub const DEFAULT_MIN_COUNT_TO_SHARE: u64 = 5;

/// Default time quantum of shared records' timestamps, seconds.
pub const DEFAULT_TIME_QUANTUM_S: f64 = 60.0;

/// The record as shared: its first and last outcome times rounded down to multiples of
/// `quantum_ns` (rounded down, so a record never claims a time later than its own and
/// no receiver sees it as from the future); `quantum_ns` <= 1 keeps them exact.
pub fn coarsen_times(record: &OutcomeRecord, quantum_ns: i64) -> OutcomeRecord {
    if quantum_ns <= 1 {
        return record.clone();
    }
    let down = |t: i64| t - t.rem_euclid(quantum_ns);
    let s = &record.summary;
    OutcomeRecord {
        summary: Summary::from_parts(
            s.count(),
            s.weight(),
            s.weight_sq(),
            s.mean().clone(),
            s.m2().clone(),
            down(s.first_ns()),
            down(s.last_ns()),
        ),
        ..record.clone()
    }
}

/// The record as a fleet with the default time quantum shares it: what a receiver
/// holds of a record published under the shipped defaults.
pub fn shared_form(record: &OutcomeRecord) -> OutcomeRecord {
    coarsen_times(record, (DEFAULT_TIME_QUANTUM_S * 1e9) as i64)
}

/// The sharing rule for own records (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivacyBudget {
    /// `k`, at least 1 (1 = every version is shared: no privacy).
    pub min_count: u64,
}

impl Default for PrivacyBudget {
    fn default() -> Self {
        PrivacyBudget {
            min_count: DEFAULT_MIN_COUNT_TO_SHARE,
        }
    }
}

impl PrivacyBudget {
    /// Whether a record holding `count` own outcomes may be shared when the version last
    /// shared held `last_shared` (0 = none shared yet).
    pub fn may_share(&self, count: u64, last_shared: u64) -> bool {
        let k = self.min_count.max(1);
        count >= k && count >= last_shared.saturating_add(k)
    }
}

/// Optional differential privacy of shared records: the Gaussian mechanism with clipping
/// (node parameter group `differential_privacy`; off by default).
///
/// With `epsilon > 0`, every own residual is clipped to ±`clip` per component before it
/// is folded into the own summary, and every version of a record that leaves the robot
/// is released with Gaussian noise, half of the (ε, δ) budget on each of two parts:
/// - the mean: replacing one residual moves a weighted mean by at most 2·clip·√n / W in
///   L2 (each weight ≤ 1, W ≥ 1), so σ_μ = (2·clip·√n / W) · √(2 ln(1.25 / (δ/2))) / (ε/2);
/// - the scatter's diagonal (off-diagonals are not released): replacing one residual
///   moves M2ᵢᵢ = Σ w r² − (Σ w r)² / W by at most clip² + 4·clip² + 4·clip²/W ≤ 9·clip²,
///   so σ_M = 9·clip²·√n · √(2 ln(1.25 / (δ/2))) / (ε/2).
///
/// The noisy mean is clamped to ±clip and the diagonal to [0, 4·clip²·W] (post-processing
/// keeps the guarantee). Each release of an address is (ε, δ)-DP for the residuals it
/// covers; releases of one address compose (basic composition: r releases cost (rε, rδ)),
/// releases of different addresses cover different residuals (parallel composition).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpConfig {
    /// ε per release; 0 = off.
    pub epsilon: f64,
    /// δ per release, in (0, 1).
    pub delta: f64,
    /// Clip bound per residual component, in state units (> 0 when on).
    pub clip: f64,
}

impl Default for DpConfig {
    fn default() -> Self {
        DpConfig {
            epsilon: 0.0,
            delta: 1e-5,
            clip: 1.0,
        }
    }
}

/// A differential-privacy setting out of range (names the field).
#[derive(Debug, Error, Clone, PartialEq)]
#[error("differential_privacy.{field}: {reason}")]
pub struct DpConfigError {
    /// The bad field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl DpConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), DpConfigError> {
        let bad = |field, reason| Err(DpConfigError { field, reason });
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return bad("epsilon", "must be finite and >= 0 (0 = off)");
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("delta", "must be in (0, 1)");
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad("clip", "must be finite and > 0");
        }
        Ok(())
    }

    /// Whether records are released with noise.
    pub fn enabled(&self) -> bool {
        self.epsilon > 0.0
    }

    /// Clips a residual in place to ±`clip` per component (when on).
    pub fn clip_residual(&self, residual: &mut [f64]) {
        if self.enabled() {
            for r in residual {
                *r = r.clamp(-self.clip, self.clip);
            }
        }
    }

    /// Noise standard deviations (mean, scatter diagonal) for a summary of dimension `n`
    /// and weight `w` (see the type doc).
    pub fn sigmas(&self, n: usize, w: f64) -> (f64, f64) {
        let half_eps = self.epsilon / 2.0;
        let z = (2.0 * (1.25 / (self.delta / 2.0)).ln()).sqrt() / half_eps;
        let root_n = (n as f64).sqrt();
        let w = w.max(1.0);
        (
            2.0 * self.clip * root_n / w * z,
            9.0 * self.clip * self.clip * root_n * z,
        )
    }

    /// The version of `record` that leaves the robot: itself when off, else with noise.
    pub fn release(&self, record: &OutcomeRecord, rng: &mut impl Rng) -> OutcomeRecord {
        if !self.enabled() {
            return record.clone();
        }
        let s = &record.summary;
        let (n, w) = (s.dim(), s.weight());
        let (sigma_mean, sigma_m2) = self.sigmas(n, w);
        let mut noise = || -> f64 { StandardNormal.sample(&mut *rng) };
        let mean = s
            .mean()
            .map(|m| (m + sigma_mean * noise()).clamp(-self.clip, self.clip));
        let cap = 4.0 * self.clip * self.clip * w;
        let mut m2 = nalgebra::DMatrix::zeros(n, n);
        for i in 0..n {
            m2[(i, i)] = (s.m2()[(i, i)] + sigma_m2 * noise()).clamp(0.0, cap);
        }
        OutcomeRecord {
            summary: Summary::from_parts(
                s.count(),
                w,
                s.weight_sq(),
                mean,
                m2,
                s.first_ns(),
                s.last_ns(),
            ),
            ..record.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_records_are_noisy_clamped_and_centred_on_the_truth() {
        use crate::core::ids::Seq;
        use crate::core::neighbors::Sketch;
        use crate::core::summary::Decay;
        let dp = DpConfig {
            epsilon: 1.0,
            ..DpConfig::default()
        };
        dp.validate().unwrap();
        let mut s = Summary::empty(2).unwrap();
        for i in 0..50 {
            let mut r = [0.3 + 0.01 * (i % 5) as f64, 7.0];
            dp.clip_residual(&mut r);
            assert_eq!(r[1], 1.0, "clipped");
            s.add(&r, i, Decay::NONE).unwrap();
        }
        let rec = OutcomeRecord {
            seq: Seq(50),
            sketch: Sketch([0; 32]),
            summary: s,
            time_base: Default::default(),
        };
        let mut rng = rand::rng();
        let mut mean0 = 0.0;
        for _ in 0..400 {
            let out = dp.release(&rec, &mut rng);
            let m = out.summary.mean();
            assert!(m.iter().all(|v| v.abs() <= 1.0));
            assert_ne!(m[0], rec.summary.mean()[0], "noise was added");
            assert!(out.summary.m2().iter().all(|v| v.is_finite() && *v >= 0.0));
            assert_eq!(out.summary.count(), 50);
            mean0 += m[0] / 400.0;
        }
        // σ_μ for W = 50: 2·√2/50 · √(2 ln 250000) / 0.5 ≈ 0.564; the average of 400
        // releases lies within 0.1 of the truth (clamping at ±1 pulls it in by ~0.05).
        let (sigma, _) = dp.sigmas(2, 50.0);
        assert!((sigma - 0.564).abs() < 0.01, "{sigma}");
        assert!((mean0 - 0.32).abs() < 0.1, "{mean0}");
        let off = DpConfig::default();
        assert_eq!(off.release(&rec, &mut rng), rec);
        assert!(
            DpConfig {
                delta: 0.0,
                ..DpConfig::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn every_shared_difference_covers_k_outcomes() {
        let b = PrivacyBudget { min_count: 5 };
        let mut last = 0;
        let mut shared = Vec::new();
        for count in 1..=23 {
            if b.may_share(count, last) {
                shared.push(count);
                last = count;
            }
        }
        assert_eq!(shared, vec![5, 10, 15, 20]);
        assert!(PrivacyBudget { min_count: 1 }.may_share(1, 0));
        // Saturating, never an overflow panic.
        let _ = b.may_share(u64::MAX, u64::MAX);
    }

    #[test]
    fn shared_times_are_rounded_down_to_the_quantum() {
        let mut s = Summary::from_sample(&[1.0], 61_500_000_000).unwrap();
        s.add(&[2.0], 185_250_000_000, crate::core::summary::Decay::NONE)
            .unwrap();
        let r = OutcomeRecord {
            seq: crate::core::ids::Seq(2),
            sketch: crate::core::neighbors::Sketch([0; 32]),
            summary: s,
            time_base: Default::default(),
        };
        let c = coarsen_times(&r, 60_000_000_000);
        assert_eq!(c.summary.first_ns(), 60_000_000_000);
        assert_eq!(c.summary.last_ns(), 180_000_000_000);
        assert_eq!(c.summary.mean(), r.summary.mean());
        assert_eq!(c.summary.count(), 2);
        assert_eq!(coarsen_times(&r, 0).summary.last_ns(), 185_250_000_000);
    }
}
