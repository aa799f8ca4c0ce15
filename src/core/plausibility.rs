//! What a record from the fleet may claim before it reaches the synthesis.
//!
//! Two layers, both pure (time comes in as an argument):
//! - [`RecordBounds::check`] refuses records that no honest node can produce: a time base
//!   other than this node's, times beyond the allowed clock skew, counts above
//!   `max_count`, weights that contradict the count (every outcome weighs at most 1 at the
//!   record's own reference time, so W ≤ count and Σw² ≤ W), and a mean or a spread
//!   beyond `max_abs_residual`. The same absolute bound refuses own outcomes, so every
//!   summary the synthesis pools is bounded: a prior is finite by construction.
//! - [`ResidualEnvelope`] learns, per world model, how large residuals are on this robot
//!   (its own outcomes, and the covariance the model and the sensors state); `margin ×`
//!   that envelope is the plausibility gate (`synthesis.max_residual`) when none is
//!   configured: a source claiming a larger mean residual gets no weight. The gate comes
//!   from data this robot holds, not from knowledge of the world.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ids::ModelId;
use super::record::{OutcomeRecord, TimeBase};

/// Most world models an envelope is kept for (model ids come from a topic).
pub const MAX_ENVELOPE_MODELS: usize = 1024;

/// Bounds on what a record may claim (node parameter group `validation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest distance into this node's future a record's times may lie, seconds.
    pub max_clock_skew_s: f64,
    /// Largest outcome count a record may claim.
    pub max_count: u64,
    /// Largest |mean residual| and residual standard deviation a record may claim, and
    /// largest |residual| an own outcome may have, in state units.
    pub max_abs_residual: f64,
    /// Plausibility gate as a multiple of this robot's residual envelope per state
    /// component, used when `synthesis.max_residual` is empty; 0 = no learned gate.
    pub envelope_margin: f64,
    /// Own outcomes of a world model before its learned gate applies.
    pub envelope_min_outcomes: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_clock_skew_s: 60.0,
            max_count: 1_000_000_000,
            max_abs_residual: 1e6,
            envelope_margin: 4.0,
            envelope_min_outcomes: 10,
        }
    }
}

/// A validation setting out of range (names the field).
#[derive(Debug, Error, Clone, PartialEq)]
#[error("validation.{field}: {reason}")]
pub struct ValidationConfigError {
    /// The bad field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl ValidationConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationConfigError> {
        let bad = |field, reason| Err(ValidationConfigError { field, reason });
        if !(self.max_clock_skew_s.is_finite() && self.max_clock_skew_s >= 0.0) {
            return bad("max_clock_skew_s", "must be finite and >= 0");
        }
        if self.max_count == 0 {
            return bad("max_count", "must be >= 1");
        }
        if !(self.max_abs_residual.is_finite()
            && self.max_abs_residual > 0.0
            && self.max_abs_residual <= 1e100)
        {
            return bad("max_abs_residual", "must be finite, > 0 and <= 1e100");
        }
        if !(self.envelope_margin.is_finite() && self.envelope_margin >= 0.0) {
            return bad("envelope_margin", "must be finite and >= 0 (0 = off)");
        }
        Ok(())
    }

    /// The plausibility gate learned for `model` (used when `synthesis.max_residual` is
    /// empty): `envelope_margin ×` this robot's residual envelope once it holds
    /// `envelope_min_outcomes` own outcomes of the model; `None` before that or when the
    /// margin is 0. The node and the simulated robots put it in force the same way.
    pub fn learned_gate(&self, envelope: &ResidualEnvelope, model: &ModelId) -> Option<Vec<f64>> {
        envelope.gate(model, self.envelope_margin, self.envelope_min_outcomes)
    }

    /// The record bounds these settings describe for a node on `time_base`.
    pub fn bounds(&self, time_base: TimeBase) -> RecordBounds {
        RecordBounds {
            time_base,
            max_skew_ns: (self.max_clock_skew_s * 1e9).min(i64::MAX as f64) as i64,
            max_count: self.max_count,
            max_abs_residual: self.max_abs_residual,
        }
    }
}

/// Why a record was refused before it reached the memory.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Implausible {
    /// The record's times come from another clock.
    #[error("record is on {got:?} time, this node on {expected:?} time")]
    TimeBase {
        /// This node's time base.
        expected: TimeBase,
        /// The record's.
        got: TimeBase,
    },
    /// The record's last time lies beyond the allowed clock skew.
    #[error("record from the future: last time {last_ns} ns, now {now_ns} ns")]
    Future {
        /// The record's last time.
        last_ns: i64,
        /// This node's time.
        now_ns: i64,
    },
    /// The count is above `max_count`.
    #[error("record claims {count} outcomes, at most {max} allowed")]
    Count {
        /// Count claimed.
        count: u64,
        /// Bound.
        max: u64,
    },
    /// Weights that no sequence of outcomes can produce.
    #[error("record weights are inconsistent: {reason}")]
    Weights {
        /// What is wrong.
        reason: &'static str,
    },
    /// A mean or spread beyond `max_abs_residual`.
    #[error("record claims a residual of {value:e} in component {index}, at most {max:e} allowed")]
    Magnitude {
        /// State component.
        index: usize,
        /// Value claimed (mean, or standard deviation).
        value: f64,
        /// Bound.
        max: f64,
    },
}

impl Implausible {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Implausible::TimeBase { .. } => "time_base",
            Implausible::Future { .. } => "future",
            Implausible::Count { .. } => "count",
            Implausible::Weights { .. } => "weights",
            Implausible::Magnitude { .. } => "magnitude",
        }
    }
}

/// Resolved bounds a record is checked against (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecordBounds {
    /// This node's time base.
    pub time_base: TimeBase,
    /// Allowed clock skew, ns.
    pub max_skew_ns: i64,
    /// Largest count.
    pub max_count: u64,
    /// Largest |mean| and standard deviation per component.
    pub max_abs_residual: f64,
}

impl RecordBounds {
    /// Checks a decoded record as seen at `now_ns` on this node's clock.
    pub fn check(&self, record: &OutcomeRecord, now_ns: i64) -> Result<(), Implausible> {
        if record.time_base != self.time_base {
            return Err(Implausible::TimeBase {
                expected: self.time_base,
                got: record.time_base,
            });
        }
        let s = &record.summary;
        if s.last_ns() > now_ns.saturating_add(self.max_skew_ns) {
            return Err(Implausible::Future {
                last_ns: s.last_ns(),
                now_ns,
            });
        }
        if s.count() > self.max_count {
            return Err(Implausible::Count {
                count: s.count(),
                max: self.max_count,
            });
        }
        // Rounding in the decay and merge arithmetic leaves a relative hair of slack.
        let slack = 1.0 + 1e-9;
        let (w, w2) = (s.weight(), s.weight_sq());
        if w > s.count() as f64 * slack {
            return Err(Implausible::Weights {
                reason: "total weight above the count",
            });
        }
        // The newest outcome weighs exactly 1 at the record's own reference time.
        if w < 1.0 / slack || w2 < 1.0 / slack {
            return Err(Implausible::Weights {
                reason: "total weight below 1 (the newest outcome weighs 1)",
            });
        }
        if w2 > w * slack + 1e-12 || w2 > w * w * slack + 1e-12 {
            return Err(Implausible::Weights {
                reason: "sum of squared weights above the total weight",
            });
        }
        let max = self.max_abs_residual;
        for (index, &m) in s.mean().iter().enumerate() {
            if m.abs() > max {
                return Err(Implausible::Magnitude {
                    index,
                    value: m,
                    max,
                });
            }
        }
        let m2 = s.m2();
        for (index, &d) in m2.diagonal().iter().enumerate() {
            let sd = (d.max(0.0) / w).sqrt();
            if sd > max {
                return Err(Implausible::Magnitude {
                    index,
                    value: sd,
                    max,
                });
            }
        }
        // A scatter matrix is positive semi-definite: |M2ᵢⱼ| ≤ sqrt(M2ᵢᵢ M2ⱼⱼ).
        let n = m2.nrows();
        for i in 0..n {
            for j in (i + 1)..n {
                let bound = (m2[(i, i)].max(0.0) * m2[(j, j)].max(0.0)).sqrt();
                if m2[(i, j)].abs() > bound * slack + 1e-9 * (1.0 + bound) {
                    return Err(Implausible::Weights {
                        reason: "scatter is not positive semi-definite",
                    });
                }
            }
        }
        Ok(())
    }
}

/// Per model: own outcomes seen and the largest residual scale per component.
#[derive(Clone, Debug, Default)]
struct ModelEnvelope {
    outcomes: u64,
    scale: Vec<f64>,
}

/// How large residuals are on this robot, per world model (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct ResidualEnvelope {
    models: HashMap<ModelId, ModelEnvelope>,
}

impl ResidualEnvelope {
    /// Folds in one own outcome: its residual and, when given, the standard deviation per
    /// component that the prediction and measurement covariances state. Returns true when
    /// the envelope of the model grew (so a cached gate is stale).
    pub fn observe(
        &mut self,
        model: &ModelId,
        residual: &[f64],
        stated_sd: Option<&[f64]>,
    ) -> bool {
        if !self.models.contains_key(model.as_str()) && self.models.len() >= MAX_ENVELOPE_MODELS {
            return false;
        }
        let e = self.models.entry(model.clone()).or_default();
        e.outcomes = e.outcomes.saturating_add(1);
        if e.scale.len() != residual.len() {
            e.scale = vec![0.0; residual.len()];
        }
        let mut grew = false;
        for (i, r) in residual.iter().enumerate() {
            // Three stated standard deviations: what the model itself calls plausible.
            let stated = stated_sd
                .and_then(|sd| sd.get(i))
                .map_or(0.0, |sd| 3.0 * sd);
            let v = r.abs().max(stated);
            if v.is_finite() && v > e.scale[i] {
                e.scale[i] = v;
                grew = true;
            }
        }
        grew
    }

    /// The learned plausibility gate of `model` (`margin ×` the envelope per component),
    /// or `None` while the model has fewer than `min_outcomes` own outcomes here.
    pub fn gate(&self, model: &ModelId, margin: f64, min_outcomes: u64) -> Option<Vec<f64>> {
        let e = self.models.get(model.as_str())?;
        (margin > 0.0 && e.outcomes >= min_outcomes.max(1))
            .then(|| e.scale.iter().map(|s| s * margin).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Seq;
    use crate::core::neighbors::Sketch;
    use crate::core::summary::{Decay, Summary};
    use nalgebra::{DMatrix, DVector};

    fn record(summary: Summary) -> OutcomeRecord {
        OutcomeRecord {
            seq: Seq(1),
            sketch: Sketch([0; 32]),
            summary,
            time_base: TimeBase::Wall,
        }
    }

    fn honest(n: usize) -> OutcomeRecord {
        let mut s = Summary::empty(2).unwrap();
        for i in 0..n {
            s.add(
                &[1.0 + i as f64 * 0.1, -2.0],
                i as i64 * 1_000_000_000,
                Decay::from_half_life_secs(10.0),
            )
            .unwrap();
        }
        record(s)
    }

    fn forged(count: u64, w: f64, w2: f64, mean: f64, m2: f64, last_ns: i64) -> OutcomeRecord {
        record(Summary::from_parts(
            count,
            w,
            w2,
            DVector::from_element(2, mean),
            DMatrix::from_diagonal_element(2, 2, m2),
            0,
            last_ns,
        ))
    }

    #[test]
    fn honest_records_pass_and_forgeries_are_named() {
        let b = ValidationConfig::default().bounds(TimeBase::Wall);
        let now = 100_000_000_000;
        assert_eq!(b.check(&honest(1), now), Ok(()));
        assert_eq!(b.check(&honest(50), now), Ok(()));
        let kind = |r: &OutcomeRecord| b.check(r, now).unwrap_err().kind();
        assert_eq!(kind(&forged(1, 1.0, 1.0, 1e306, 0.0, 0)), "magnitude");
        assert_eq!(kind(&forged(10, 10.0, 1.0, 0.0, 1e300, 0)), "magnitude");
        assert_eq!(kind(&forged(1, 1000.0, 1.0, 1.0, 0.0, 0)), "weights");
        assert_eq!(kind(&forged(10, 2.0, 3.0, 1.0, 0.0, 0)), "weights");
        assert_eq!(kind(&forged(u64::MAX, 1.0, 1.0, 1.0, 0.0, 0)), "count");
        assert_eq!(kind(&forged(1, 1.0, 1.0, 1.0, 0.0, i64::MAX)), "future");
        assert_eq!(kind(&forged(5, 1e-300, 1e-300, 1.0, 0.0, 0)), "weights");
        let mut m2 = DMatrix::from_diagonal_element(2, 2, 1.0);
        m2[(0, 1)] = 1e300;
        m2[(1, 0)] = 1e300;
        let not_psd = record(Summary::from_parts(
            3,
            3.0,
            3.0,
            DVector::from_element(2, 0.5),
            m2,
            0,
            0,
        ));
        assert_eq!(kind(&not_psd), "weights");
        let sim = OutcomeRecord {
            time_base: TimeBase::Sim,
            ..honest(3)
        };
        assert_eq!(kind(&sim), "time_base");
        // Inside the skew is fine (clocks of two robots differ a little).
        assert_eq!(
            b.check(&forged(1, 1.0, 1.0, 1.0, 0.0, now + 1_000_000_000), now),
            Ok(())
        );
    }

    #[test]
    fn envelope_gate_learns_from_own_outcomes_and_stated_covariance() {
        let m = ModelId::new("m").unwrap();
        let mut e = ResidualEnvelope::default();
        assert_eq!(e.gate(&m, 4.0, 2), None);
        assert!(e.observe(&m, &[1.0, -0.5], None));
        assert_eq!(e.gate(&m, 4.0, 2), None, "too few outcomes");
        assert!(e.observe(&m, &[-2.0, 0.1], Some(&[0.1, 1.0])));
        assert_eq!(e.gate(&m, 4.0, 2), Some(vec![8.0, 12.0]));
        assert!(!e.observe(&m, &[0.5, 0.5], None), "nothing grew");
        assert_eq!(e.gate(&m, 0.0, 2), None, "margin 0 = off");
    }
}
