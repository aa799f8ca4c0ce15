//! Drift: recent own residuals at an address that disagree with its long-run summary,
//! detected so the prior follows a changed world without a restart.
//!
//! Test, per state dimension d, a two-sided CUSUM (Page) on standardized, clipped own
//! residuals. With μ, W, Σw² and M2 the own summary before the residual r arrives,
//! - `σ²_d = (M2_dd + ν σ²_learned,d) / (W − Σw²/W + ν)` (the address's own scatter,
//!   pooled with the within-address variance the node learned, ν = [`NOISE_PRIOR_DOF`]
//!   when it learned one, else 0);
//! - `z = clamp((r_d − μ_d) / √(σ²_d (1 + Σw²/W²)), ±CLIP)` (the variance of a new
//!   residual around an estimated mean; clipped so that one wild outcome, a wrong tag,
//!   cannot raise an alarm alone);
//! - `S⁺ = max(0, S⁺ + z − κ)`, `S⁻ = max(0, S⁻ − z − κ)`; an alarm when either exceeds
//!   h ([`SLACK`] κ = 0.5, [`THRESHOLD`] h = 8, [`CLIP`] 3).
//!
//! Each clipped step adds at most 2.5, so a shift of three standard deviations or more
//! is caught on the 4th outcome after it, one of one σ in about 18 (≈ (h + 1.17)/(δ − κ));
//! with Gaussian noise a stationary dimension raises a false alarm about once in 10⁴
//! outcomes (Siegmund's approximation, two sides), rarer with the clip.
//!
//! On an alarm the caller starts a fresh epoch: the own summary restarts from the
//! outcome that raised it (the ones before it mix the old world with the new, and keeping
//! them would cost n·(n+1) values per address and side). The CUSUM's estimate of the
//! change point, the first residual since the alarming statistic was last 0
//! ([`Drift::since_ns`]), dates the change: records of other sources at the address are
//! then weighed by the share of their time span that lies after it
//! ([`post_change_share`]): none for a record whose outcomes all predate it, full weight
//! once its source started a fresh epoch of its own.
//!
//! Pure: time comes in as an argument.

use super::summary::{Decay, Summary, SummaryError};

/// Slack κ of the CUSUM, in standard deviations: shifts below it are not accumulated.
pub const SLACK: f64 = 0.5;
/// Alarm threshold h of the CUSUM statistic.
pub const THRESHOLD: f64 = 8.0;
/// Largest standardized step |z| one residual contributes.
pub const CLIP: f64 = 3.0;
/// Own outcomes at an address before it is tested (a younger summary is all recent).
pub const MIN_COUNT: u64 = 8;
/// Degrees of freedom the learned within-address variance counts for in σ².
pub const NOISE_PRIOR_DOF: f64 = 2.0;

/// A detected change at one address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// Estimated start of the change: the first residual since the alarming statistic
    /// was last 0, ns in the caller's clock.
    pub since_ns: i64,
    /// The state dimension whose statistic crossed the threshold.
    pub dimension: usize,
    /// Its signed standardized shift: the residual that raised the alarm minus the
    /// long-run mean, over the long-run standard deviation (positive = reality now above
    /// the summary).
    pub shift: f64,
    /// Outcomes since the estimated start of the change, the alarming one included.
    pub outcomes: u64,
}

/// The CUSUM state of one address (empty until its first test): per dimension and side
/// the statistic, when its current run began and how many residuals it holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftDetector {
    up: Vec<Side>,
    down: Vec<Side>,
}

/// One side of one dimension's CUSUM.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Side {
    statistic: f64,
    since_ns: i64,
    outcomes: u64,
}

impl Side {
    /// Adds one standardized step (z − κ for the upper side, −z − κ for the lower).
    fn step(&mut self, step: f64, t_ns: i64) {
        if self.statistic <= 0.0 {
            self.since_ns = t_ns;
            self.outcomes = 0;
        }
        self.statistic = (self.statistic + step).max(0.0);
        self.outcomes += 1;
    }
}

impl DriftDetector {
    /// Tests `residual` (observed at `t_ns`) against `long_run`, the own summary before
    /// it; `noise` is the learned within-address variance per dimension (one value for
    /// all, or empty). On an alarm returns the drift and the fresh epoch's summary (the
    /// residual alone), and starts over; else `None` and the caller folds `residual`
    /// into `long_run` as usual.
    pub fn observe(
        &mut self,
        long_run: &Summary,
        residual: &[f64],
        t_ns: i64,
        noise: &[f64],
        decay: Decay,
    ) -> Result<Option<(Drift, Summary)>, SummaryError> {
        let n = long_run.dim();
        if residual.len() != n {
            return Err(SummaryError::DimensionMismatch {
                expected: n,
                got: residual.len(),
            });
        }
        if let Some(index) = residual.iter().position(|x| !x.is_finite()) {
            return Err(SummaryError::NonFinite { index });
        }
        if long_run.count() < MIN_COUNT {
            self.up.clear();
            self.down.clear();
            return Ok(None);
        }
        if self.up.len() != n {
            self.up = vec![Side::default(); n];
            self.down = vec![Side::default(); n];
        }
        let (w, w2) = (long_run.weight(), long_run.weight_sq());
        let mut alarm: Option<(usize, Side, f64)> = None;
        for (d, &r) in residual.iter().enumerate() {
            let Some(z) = standardized(long_run, d, r, noise, w, w2) else {
                continue;
            };
            self.up[d].step(z - SLACK, t_ns);
            self.down[d].step(-z - SLACK, t_ns);
            for side in [self.up[d], self.down[d]] {
                if side.statistic > THRESHOLD
                    && alarm.is_none_or(|(_, best, _)| side.statistic > best.statistic)
                {
                    alarm = Some((d, side, z));
                }
            }
        }
        let Some((dimension, side, _)) = alarm else {
            return Ok(None);
        };
        self.up.clear();
        self.down.clear();
        let sd = standard_deviation(long_run, dimension, noise, w);
        let delta = residual[dimension] - long_run.mean()[dimension];
        let drift = Drift {
            since_ns: side.since_ns,
            dimension,
            shift: if sd > 0.0 { delta / sd } else { 0.0 },
            outcomes: side.outcomes,
        };
        let mut fresh = Summary::empty(n)?;
        fresh.add(residual, t_ns, decay)?;
        Ok(Some((drift, fresh)))
    }
}

/// σ_d of the residuals at an address: its own scatter pooled with the learned σ².
fn standard_deviation(long_run: &Summary, d: usize, noise: &[f64], w: f64) -> f64 {
    let learned = super::synthesis::per_dimension(noise, d).filter(|v| v.is_finite() && *v > 0.0);
    let (prior_m2, prior_dof) =
        learned.map_or((0.0, 0.0), |v| (NOISE_PRIOR_DOF * v, NOISE_PRIOR_DOF));
    let dof = if w > 0.0 {
        (w - long_run.weight_sq() / w).max(0.0)
    } else {
        0.0
    };
    let total = dof + prior_dof;
    if total <= 0.0 {
        return 0.0;
    }
    let mean = long_run.mean()[d];
    // A world with no scatter at all still needs a scale: a relative floor, so that
    // every real change is drift but rounding is not.
    let floor = 1e-9 * (1.0 + mean.abs());
    ((long_run.m2()[(d, d)].max(0.0) + prior_m2) / total)
        .sqrt()
        .max(floor)
}

/// The clipped standardized residual z of dimension `d`, or `None` where no scale is
/// known (no degree of freedom and nothing learned).
fn standardized(
    long_run: &Summary,
    d: usize,
    r: f64,
    noise: &[f64],
    w: f64,
    w2: f64,
) -> Option<f64> {
    let sd = standard_deviation(long_run, d, noise, w);
    if !(sd > 0.0 && w > 0.0) {
        return None;
    }
    let sd_new = sd * (1.0 + w2 / (w * w)).sqrt();
    let z = (r - long_run.mean()[d]) / sd_new;
    z.is_finite().then(|| z.clamp(-CLIP, CLIP))
}

/// The share of a record's outcomes that lies after a change at `since_ns`, estimated
/// from its time span (outcomes spread evenly over [first, last]): 0 for a record whose
/// outcomes all predate the change, 1 for one that starts after it.
pub fn post_change_share(summary: &Summary, since_ns: i64) -> f64 {
    let (first, last) = (summary.first_ns(), summary.last_ns());
    if first >= since_ns {
        1.0
    } else if last < since_ns {
        0.0
    } else {
        let span = (last as i128 - first as i128) as f64;
        if span > 0.0 {
            ((last as i128 - since_ns as i128) as f64 / span).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;

    const S: i64 = 1_000_000_000;

    /// Feeds `residuals` one per second through a detector and an own summary as the
    /// memory does: a fresh epoch on alarm. Returns the alarms (index, drift).
    fn run(residuals: &[f64], noise: &[f64]) -> (Vec<(usize, Drift)>, Summary) {
        let mut detector = DriftDetector::default();
        let mut own = Summary::from_sample(&[residuals[0]], 0).unwrap();
        let mut alarms = Vec::new();
        for (i, r) in residuals.iter().enumerate().skip(1) {
            let t = i as i64 * S;
            match detector
                .observe(&own, &[*r], t, noise, Decay::NONE)
                .unwrap()
            {
                Some((drift, fresh)) => {
                    alarms.push((i, drift));
                    own = fresh;
                }
                None => own.add(&[*r], t, Decay::NONE).unwrap(),
            }
        }
        (alarms, own)
    }

    fn noisy(n: usize, bias: impl Fn(usize) -> f64, sd: f64, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let e: f64 = StandardNormal.sample(&mut rng);
                bias(i) + sd * e
            })
            .collect()
    }

    /// A bias that jumps mid-stream: caught within a few outcomes, and the own mean is
    /// the new bias right after (no restart, no waiting for decay).
    #[test]
    fn a_jump_is_caught_within_a_few_outcomes_and_the_mean_follows() {
        let residuals = noisy(200, |i| if i < 100 { 1.0 } else { 3.0 }, 0.2, 1);
        let (alarms, own) = run(&residuals, &[]);
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        let (at, drift) = alarms[0];
        assert!((100..=104).contains(&at), "caught at {at}");
        assert!(
            drift.since_ns >= 99 * S && drift.since_ns <= 100 * S,
            "{drift:?}"
        );
        assert!(drift.shift > 3.0 && drift.dimension == 0, "{drift:?}");
        assert!((own.mean()[0] - 3.0).abs() < 0.1, "{}", own.mean()[0]);
        assert!(own.first_ns() >= 99 * S);
        // Without the fresh epoch the long-run mean would still sit near 2.
        let pooled = residuals.iter().sum::<f64>() / residuals.len() as f64;
        assert!((pooled - 2.0).abs() < 0.1);
    }

    #[test]
    fn a_small_shift_takes_longer_and_a_drop_is_caught_too() {
        let residuals = noisy(300, |i| if i < 150 { 0.0 } else { -0.3 }, 0.2, 2);
        let (alarms, _) = run(&residuals, &[]);
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        let (at, drift) = alarms[0];
        assert!(at > 150 && at < 190, "1.5 σ shift caught at {at}");
        assert!(drift.shift < 0.0);
    }

    /// No false alarm in a long stationary stream, even with 5 % of outcomes wild (a
    /// wrong tag): the clip keeps one outcome from raising an alarm alone.
    #[test]
    fn a_stationary_stream_with_outliers_raises_no_alarm() {
        let mut residuals = noisy(3000, |_| 0.5, 0.1, 3);
        for r in residuals.iter_mut().step_by(20) {
            *r += 5.0;
        }
        let (alarms, own) = run(&residuals, &[0.01]);
        assert!(alarms.is_empty(), "{alarms:?}");
        assert_eq!(own.count(), 3000);
    }

    #[test]
    fn young_summaries_are_not_tested() {
        let residuals = [0.0, 0.0, 100.0, 100.0, 100.0, 100.0];
        let (alarms, own) = run(&residuals, &[]);
        assert!(alarms.is_empty());
        assert_eq!(own.count(), 6);
    }

    #[test]
    fn the_post_change_share_is_the_time_after_the_change() {
        let mut s = Summary::from_sample(&[1.0], 0).unwrap();
        s.add(&[1.0], 100, Decay::NONE).unwrap();
        assert_eq!(post_change_share(&s, 0), 1.0);
        assert_eq!(post_change_share(&s, 101), 0.0);
        assert!((post_change_share(&s, 75) - 0.25).abs() < 1e-12);
        let one = Summary::from_sample(&[1.0], 50).unwrap();
        assert_eq!(post_change_share(&one, 50), 1.0);
        assert_eq!(post_change_share(&one, 51), 0.0);
    }

    #[test]
    fn a_dimension_mismatch_is_an_error() {
        let own = Summary::from_sample(&[1.0, 2.0], 0).unwrap();
        let mut d = DriftDetector::default();
        assert!(d.observe(&own, &[1.0], 1, &[], Decay::NONE).is_err());
    }
}
