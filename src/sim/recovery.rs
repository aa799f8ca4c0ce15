//! How fast each predictor follows a change of the world in mid-run: the error of the
//! episodes the change affected, as a function of how many outcomes the fleet had
//! measured at that address since the change, against the clairvoyant floor of the
//! changed world.
//!
//! An episode after the change is put in bucket n = the fleet's outcomes at its address
//! (model and fingerprint) since the change, 0 ..= [`MAX_OUTCOMES`] − 1, the last bucket
//! holding every n ≥ [`MAX_OUTCOMES`]. A predictor has recovered after n outcomes when
//! its RMSE is within [`RECOVERED_OVER_FLOOR`] × the floor's in bucket n and in every
//! later bucket with at least [`MIN_BUCKET_EPISODES`] episodes.

use serde::Serialize;

use super::baselines::{BASELINES, FLOOR, PREDICTORS};
use super::worlds::Change;

/// Buckets of the recovery curve (the last holds all later outcomes).
pub const MAX_OUTCOMES: usize = 40;
/// Within this multiple of the floor counts as recovered (the target).
pub const RECOVERED_OVER_FLOOR: f64 = 1.5;
/// Buckets with fewer episodes are too noisy to judge.
pub const MIN_BUCKET_EPISODES: u64 = 30;

/// Squared normalized errors per bucket and predictor.
#[derive(Debug)]
pub struct Recovery {
    change: Change,
    sq: Vec<[f64; PREDICTORS]>,
    n: Vec<u64>,
    components: usize,
}

/// One point of the recovery curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecoveryPoint {
    /// Fleet outcomes at the address since the change (the last point: at least this).
    pub outcomes: usize,
    /// Affected episodes scored in the bucket.
    pub episodes: u64,
    /// Normalized RMSE per predictor (table order).
    pub rmse: Vec<f64>,
}

/// What the recovery bookkeeping reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecoveryFigures {
    /// The change.
    pub change: Change,
    /// Affected episodes scored after it.
    pub episodes: u64,
    /// The curve (buckets with at least one episode).
    pub curve: Vec<RecoveryPoint>,
    /// Per predictor (table order): outcomes per address after which its error stays
    /// within 1.5 × the floor; `None` = not within the curve.
    pub outcomes_to_recover: Vec<Option<usize>>,
}

impl Recovery {
    /// Bookkeeping for `change` of a world with `components` state components.
    pub fn new(change: Change, components: usize) -> Recovery {
        Recovery {
            change,
            sq: vec![[0.0; PREDICTORS]; MAX_OUTCOMES + 1],
            n: vec![0; MAX_OUTCOMES + 1],
            components,
        }
    }

    /// Scores one affected episode after the change: `outcomes` the fleet measured at its
    /// address since the change, each predictor's normalized error per component.
    pub fn add(&mut self, outcomes: u64, errors: &[Vec<f64>; PREDICTORS]) {
        let b = (outcomes as usize).min(MAX_OUTCOMES);
        for (p, e) in errors.iter().enumerate() {
            self.sq[b][p] += e.iter().map(|x| x * x).sum::<f64>();
        }
        self.n[b] += 1;
    }

    /// The curve and the outcomes each predictor needs to recover.
    pub fn figures(&self) -> RecoveryFigures {
        let dim = self.components.max(1) as f64;
        let curve: Vec<RecoveryPoint> = (0..=MAX_OUTCOMES)
            .filter(|&b| self.n[b] > 0)
            .map(|b| RecoveryPoint {
                outcomes: b,
                episodes: self.n[b],
                rmse: (0..PREDICTORS)
                    .map(|p| (self.sq[b][p] / (self.n[b] as f64 * dim)).sqrt())
                    .collect(),
            })
            .collect();
        let judged: Vec<&RecoveryPoint> = curve
            .iter()
            .filter(|p| p.episodes >= MIN_BUCKET_EPISODES)
            .collect();
        let outcomes_to_recover = (0..BASELINES.len())
            .map(|p| {
                let ok = |q: &RecoveryPoint| q.rmse[p] <= RECOVERED_OVER_FLOOR * q.rmse[FLOOR];
                // The first judged bucket from which every later one is within bounds.
                let mut first = None;
                for q in judged.iter().rev() {
                    if ok(q) {
                        first = Some(q.outcomes);
                    } else {
                        break;
                    }
                }
                first
            })
            .collect();
        RecoveryFigures {
            change: self.change.clone(),
            episodes: self.n.iter().sum(),
            curve,
            outcomes_to_recover,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovered_is_the_first_bucket_from_which_error_stays_near_the_floor() {
        let change = Change {
            round: 10,
            what: "test",
        };
        let mut r = Recovery::new(change, 1);
        for n in 0..=MAX_OUTCOMES as u64 + 3 {
            for _ in 0..MIN_BUCKET_EPISODES {
                // Predictor 2 (qis) decays toward the floor (1.0), 1.4 × from n = 6 on.
                let qis = if n < 6 { 3.0 } else { 1.4 };
                let mut e: [Vec<f64>; PREDICTORS] = Default::default();
                for (p, v) in e.iter_mut().enumerate() {
                    *v = vec![match p {
                        2 => qis,
                        FLOOR => 1.0,
                        _ => 5.0,
                    }];
                }
                r.add(n, &e);
            }
        }
        let f = r.figures();
        assert_eq!(f.outcomes_to_recover[2], Some(6));
        assert_eq!(f.outcomes_to_recover[0], None);
        assert_eq!(f.outcomes_to_recover[FLOOR], Some(0));
        assert_eq!(f.curve.len(), MAX_OUTCOMES + 1);
    }
}
