//! The neighbor prior: what similar addresses say about the bias of an address with
//! thin exact support, as a prior mean and a prior strength that its own outcomes then
//! update (they never replace them: see [`super::synthesis`]).
//!
//! Model, per state dimension, in units of σ² (the within-address residual variance of
//! the summaries at hand; t = τ²/σ² is the spread τ² of biases between addresses around
//! the world model in those units, τ² learned by [`super::shrinkage`]):
//! - the address a and its neighbors g share a neighborhood center c: `θ_a = c + δ_a`,
//!   `θ_g = c + δ_g`, with `δ ~ N(0, η²)` (the neighbors' disagreement, h = η²/σ²) and
//!   `c ~ N(0, τ² − η²)`, so that every bias still has variance τ² around the world model,
//!   as in the exact-only model;
//! - neighbor g's pooled mean is `μ_g ~ N(θ_g, σ²/n_g)` (n_g its decayed, trusted, capped
//!   weight in outcomes);
//! - a neighbor at similarity s (in (0, 1]) counts with its precision times s: a less
//!   similar address is judged as if seen through 1/s times the noise;
//! - similarity is also read as the correlation of two addresses' biases when nothing
//!   else tells how far neighbors disagree: `h₀ = t · (1 − s̄)`.
//!
//! Estimates:
//! - t is the larger of the learned one and the neighborhood's own mean square,
//!   `Σ s_g (μ_g²/σ² − 1/n_g) / Σ s_g`: biases spread more in some neighborhoods (ice,
//!   snow) than in the fleet's average, and a neighborhood whose common bias lies far
//!   from the model shows it. Without that, the average τ² both shrinks such a
//!   neighborhood's mean toward 0 and, below, caps its disagreement into saying nothing.
//! - h by the method of moments over the neighbors and the exact address itself (it is
//!   one of the neighborhood's addresses: its outcomes tell whether it is like the others):
//!   Cochran's Q with weights a_g = s_g n_g, μ̃ = Σ a μ / A, A = Σ a, has
//!   `E[Q] = Σ_g a_g (η² + σ²/n_g)(1 − a_g/A)`, so
//!   `h_MoM = (Q/σ² − Σ_g s_g (1 − a_g/A)) / (A − Σ a²/A)`, floored at 0 and raised by
//!   [`SPREAD_CAUTION`] standard errors (`× (1 + c √(2/(J−1)))`: finding a common center
//!   among neighbors that have none costs more than missing one), then pooled with the
//!   similarity guess, `h = ((J − 1) h_MoM + ν h₀) / (J − 1 + ν)` (J members, ν =
//!   [`SPREAD_PRIOR_DOF`]). Without σ² (no degree of freedom held, nothing learned)
//!   h = h₀.
//! - h is then multiplied by λ, the calibration learned from this robot's own outcomes
//!   ([`SpreadCalibration`]: how far outcomes at borrowed addresses actually fell from the
//!   prior mean, over how far the model said), and capped at t (neighbors that disagree
//!   more than addresses do in general say nothing).
//! - the center: `u_g = s_g / (h + 1/n_g)`, `P = 1/(t − h) + Σ u_g`, prior mean
//!   `m = Σ u_g μ_g / P` (shrunk toward the model's 0 by the share `Σ u / P`);
//! - the prior for θ_a is `N(m, σ² v)` with `v = h + 1/P ≤ t`: t/v times tighter than
//!   the model's `N(0, τ²)`, so it is worth `k_N = k0 · t / v` exact outcomes (≥ k0;
//!   exactly k0 when the neighbors say nothing, so the exact-only answer is the limit).
//!
//! The exact address's n outcomes with mean x̄ then give the posterior mean
//! `(n x̄ + k_N m) / (n + k_N)`: with many consistent neighbors k_N is large and a few
//! outcomes move the prior little; with neighbors that disagree k_N → k0 and m → 0, the
//! exact-only answer.
//!
//! Calibration: under the model an outcome r at a borrowed address has
//! `E[(r − m)²] / σ² = 1 + 1/P + h_true`. Each outcome adds `(r − m)²/σ² − 1 − 1/P` to the
//! observed excess and the h the prior used (before λ) to the predicted one, both faded
//! over about [`CALIBRATION_MEMORY`] outcomes; `λ = observed / predicted`, clamped to
//! [`MIN_SPREAD_SCALE`, `MAX_SPREAD_SCALE`], once [`CALIBRATION_MIN_OUTCOMES`] are held.
//! So a world whose neighbors predict better than their mutual disagreement suggests
//! (λ < 1) trusts them more, and one whose similarity means little (λ > 1) falls back to
//! the exact-only answer: borrowing cannot stay worse than not borrowing.
//!
//! Pure, scalar, allocation-free: the synthesis calls it once per state dimension.

use super::shrinkage::MAX_PRIOR_STRENGTH;

/// Pseudo-members behind the similarity guess h₀ of the neighbors' disagreement: with
/// two members the measured spread and the guess count alike.
pub const SPREAD_PRIOR_DOF: f64 = 1.0;

/// Standard errors the measured disagreement is raised by before it is believed (its
/// estimate from J members has a relative error of about √(2/(J−1))).
pub const SPREAD_CAUTION: f64 = 1.0;

/// Outcomes over which the spread calibration fades (exponential memory).
pub const CALIBRATION_MEMORY: f64 = 200.0;
/// Outcomes at borrowed addresses needed before the calibration applies.
pub const CALIBRATION_MIN_OUTCOMES: f64 = 10.0;
/// Smallest calibration factor λ of the neighbors' disagreement.
pub const MIN_SPREAD_SCALE: f64 = 0.01;
/// Largest calibration factor λ.
pub const MAX_SPREAD_SCALE: f64 = 100.0;

/// Smallest share of the prior mean resting on neighbors for the prior to count as
/// borrowed: below it the answer is the model's prior (and says so), not a neighbor's.
pub const MIN_SHARE: f64 = 0.01;

/// Smallest t − h treated as room for a neighborhood center (below it, none).
const MIN_CENTER_VARIANCE: f64 = 1e-12;

/// One neighbor address as the prior sees it, for one state dimension.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NeighborEvidence {
    /// Pooled weight of its sources, in outcomes (decayed, trusted, capped).
    pub weight: f64,
    /// Pooled mean residual of its sources.
    pub mean: f64,
    /// Similarity of its address to the predicted one, in (0, 1].
    pub similarity: f64,
    /// How far its sources are believed, in [0, 1] (trust, caps, the outlier test): it
    /// scales the neighbor's pull like similarity, but not the guess h₀, since a
    /// distrusted record says nothing about how alike the two addresses are.
    pub credence: f64,
}

impl NeighborEvidence {
    /// Similarity × credence: the factor on this neighbor's precision.
    fn pull(&self) -> f64 {
        self.similarity.min(1.0) * self.credence.clamp(0.0, 1.0)
    }
}

/// The scale the neighbors are judged on, for one state dimension.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriorScale {
    /// Within-address residual variance σ² (`None`: unknown).
    pub sigma2: Option<f64>,
    /// t = τ²/σ²: the spread of biases between addresses, in units of σ².
    pub t: f64,
    /// The exact-only prior strength in force; the neighbor prior is measured against it.
    pub k0: f64,
    /// λ, the calibration of the neighbors' disagreement (1 = none learned).
    pub spread_scale: f64,
}

/// The prior an address's exact outcomes start from, for one state dimension.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NeighborPrior {
    /// Prior mean m of the address's bias.
    pub mean: f64,
    /// Prior strength k_N = k0 · t / v, in exact outcomes (≥ k0).
    pub strength: f64,
    /// Σ u / P in [0, 1): how much of m rests on neighbors (the rest is the model's 0).
    pub share: f64,
    /// h = λ · h_raw (capped at t): how far the neighbors' biases disagree, in units of σ².
    pub spread: f64,
    /// h_raw: the disagreement before calibration (what the calibration is judged by).
    pub raw_spread: f64,
    /// The precision P of the center (1/σ² units), to split `share` among neighbors.
    pub precision: f64,
}

impl NeighborPrior {
    /// The prior without neighbors: mean 0 (the world model), strength k0.
    pub fn none(k0: f64) -> Self {
        NeighborPrior {
            mean: 0.0,
            strength: k0,
            share: 0.0,
            spread: 0.0,
            raw_spread: 0.0,
            precision: 0.0,
        }
    }

    /// The share of the prior mean that rests on neighbor `g` (Σ over g = `share`).
    pub fn share_of(&self, g: &NeighborEvidence) -> f64 {
        if self.precision <= 0.0 || g.weight <= 0.0 || g.similarity <= 0.0 {
            return 0.0;
        }
        g.pull() / (self.spread + 1.0 / g.weight) / self.precision
    }
}

/// The prior mean and strength that `neighbors` give an address, for one state
/// dimension (model and formulas: module doc). `exact` is the address's own pooled
/// evidence, if any (it joins the measured disagreement only). Neighbors with no weight
/// or no similarity are ignored.
pub fn neighbor_prior(
    neighbors: &[NeighborEvidence],
    exact: Option<NeighborEvidence>,
    scale: PriorScale,
) -> NeighborPrior {
    let PriorScale {
        sigma2,
        t,
        k0,
        spread_scale,
    } = scale;
    let k0 = k0.max(f64::MIN_POSITIVE);
    if !(t.is_finite() && t > 0.0) {
        return NeighborPrior::none(k0);
    }
    let usable = |g: &&NeighborEvidence| g.weight > 0.0 && g.pull() > 0.0 && g.mean.is_finite();
    let used = || neighbors.iter().filter(usable);
    let (mut a_sum, mut as_sum) = (0.0, 0.0);
    for g in used() {
        let s = g.similarity.min(1.0);
        a_sum += s * g.weight;
        as_sum += s * s * g.weight;
    }
    if !(a_sum > 0.0 && a_sum.is_finite()) {
        return NeighborPrior::none(k0);
    }
    // A neighborhood whose biases are larger than addresses' in general shows it: the
    // spread around the model is the larger of the learned one and the neighborhood's
    // own mean square (less the noise of its means).
    let t = match sigma2.filter(|s| s.is_finite() && *s > 0.0) {
        Some(sigma2) => {
            let (mut local, mut s_sum) = (0.0, 0.0);
            for g in used() {
                let s = g.pull();
                local += s * (g.mean * g.mean / sigma2 - 1.0 / g.weight);
                s_sum += s;
            }
            let local = local / s_sum;
            if local.is_finite() { t.max(local) } else { t }
        }
        _ => t,
    };
    let h0 = t * (1.0 - as_sum / a_sum);
    let spread_members = || used().chain(exact.iter().filter(usable));
    let raw = match sigma2.filter(|s| s.is_finite() && *s > 0.0) {
        Some(sigma2) => measured_spread(spread_members, sigma2).map_or(h0, |(h_mom, dof)| {
            let h_up = h_mom * (1.0 + SPREAD_CAUTION * (2.0 / dof).sqrt());
            (dof * h_up + SPREAD_PRIOR_DOF * h0) / (dof + SPREAD_PRIOR_DOF)
        }),
        None => h0,
    }
    .min(t);
    let lambda = if spread_scale.is_finite() {
        spread_scale.clamp(MIN_SPREAD_SCALE, MAX_SPREAD_SCALE)
    } else {
        1.0
    };
    let h = (raw * lambda).min(t);
    // Also catches NaN: no room for a center unless t − h is a number above the floor.
    if (t - h).partial_cmp(&MIN_CENTER_VARIANCE) != Some(std::cmp::Ordering::Greater) {
        return NeighborPrior {
            spread: h,
            raw_spread: raw,
            ..NeighborPrior::none(k0)
        };
    }
    let (mut u_sum, mut um_sum) = (0.0, 0.0);
    for g in used() {
        let u = g.pull() / (h + 1.0 / g.weight);
        u_sum += u;
        um_sum += u * g.mean;
    }
    let precision = 1.0 / (t - h) + u_sum;
    let v = h + 1.0 / precision;
    let prior = NeighborPrior {
        mean: um_sum / precision,
        strength: (k0 * t / v).clamp(k0, MAX_PRIOR_STRENGTH.max(k0)),
        share: u_sum / precision,
        spread: h,
        raw_spread: raw,
        precision,
    };
    if prior.share >= MIN_SHARE && prior.mean.is_finite() && prior.strength.is_finite() {
        prior
    } else {
        NeighborPrior {
            spread: h,
            raw_spread: raw,
            ..NeighborPrior::none(k0)
        }
    }
}

/// The method-of-moments disagreement h (module doc) of `members` and its degrees of
/// freedom J − 1; `None` with fewer than two members.
fn measured_spread<'a, I>(members: impl Fn() -> I, sigma2: f64) -> Option<(f64, f64)>
where
    I: Iterator<Item = &'a NeighborEvidence>,
{
    let (mut a_sum, mut a2_sum, mut am_sum, mut j) = (0.0, 0.0, 0.0, 0usize);
    for g in members() {
        let a = g.pull() * g.weight;
        a_sum += a;
        a2_sum += a * a;
        am_sum += a * g.mean;
        j += 1;
    }
    let denominator = a_sum - a2_sum / a_sum;
    if j < 2 || denominator.is_nan() || denominator <= 0.0 {
        return None;
    }
    let centre = am_sum / a_sum;
    let (mut q, mut expected_noise) = (0.0, 0.0);
    for g in members() {
        let s = g.pull();
        let a = s * g.weight;
        q += a * (g.mean - centre).powi(2) / sigma2;
        expected_noise += s * (1.0 - a / a_sum);
    }
    let h = ((q - expected_noise) / denominator).max(0.0);
    h.is_finite().then_some((h, (j - 1) as f64))
}

/// What a borrowed prior predicted for one state dimension, kept with the prediction
/// and checked against its outcome by [`SpreadCalibration`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BorrowedCheck {
    /// The prior mean m the neighbors gave.
    pub mean: f64,
    /// σ² the neighbors were judged on.
    pub sigma2: f64,
    /// h_raw, the disagreement before calibration.
    pub raw_spread: f64,
    /// 1/P, the center's own variance (units of σ²).
    pub center_variance: f64,
}

impl BorrowedCheck {
    /// The check of a prior that rested on neighbors (`None` when it did not, or when
    /// σ² was unknown).
    pub fn of(prior: &NeighborPrior, sigma2: Option<f64>) -> Option<BorrowedCheck> {
        let sigma2 = sigma2.filter(|s| s.is_finite() && *s > 0.0)?;
        (prior.share > 0.0 && prior.precision > 0.0).then(|| BorrowedCheck {
            mean: prior.mean,
            sigma2,
            raw_spread: prior.raw_spread,
            center_variance: 1.0 / prior.precision,
        })
    }
}

/// λ per state dimension, learned from how far this robot's outcomes at borrowed
/// addresses fell from the neighbors' prior mean (module doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpreadCalibration {
    observed: Vec<f64>,
    predicted: Vec<f64>,
    outcomes: Vec<f64>,
}

impl SpreadCalibration {
    /// Folds in one outcome's residual at an address whose prior was borrowed; `checks`
    /// has one entry per state dimension (`None` where that dimension did not borrow).
    pub fn observe(&mut self, checks: &[Option<BorrowedCheck>], residual: &[f64]) {
        let n = checks.len().min(residual.len());
        if self.observed.len() < n {
            self.observed.resize(n, 0.0);
            self.predicted.resize(n, 0.0);
            self.outcomes.resize(n, 0.0);
        }
        let fade = 1.0 - 1.0 / CALIBRATION_MEMORY;
        for (d, (check, r)) in checks.iter().zip(residual).enumerate() {
            let Some(c) = check else { continue };
            let excess = (r - c.mean).powi(2) / c.sigma2 - 1.0 - c.center_variance;
            if !(excess.is_finite() && c.raw_spread.is_finite()) {
                continue;
            }
            // One wild outcome (a wrong tag, a glitch) moves λ by a bounded step.
            let cap = 10.0 * (1.0 + c.raw_spread + c.center_variance);
            self.observed[d] = fade * self.observed[d] + excess.min(cap);
            self.predicted[d] = fade * self.predicted[d] + c.raw_spread;
            self.outcomes[d] = fade * self.outcomes[d] + 1.0;
        }
    }

    /// λ per state dimension (1 where too little is known yet).
    pub fn scales(&self) -> Vec<f64> {
        (0..self.observed.len())
            .map(|d| {
                if self.outcomes[d] < CALIBRATION_MIN_OUTCOMES {
                    return 1.0;
                }
                let predicted = self.predicted[d].max(1e-3 * self.outcomes[d]);
                (self.observed[d].max(0.0) / predicted).clamp(MIN_SPREAD_SCALE, MAX_SPREAD_SCALE)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;

    fn scale(sigma2: Option<f64>, t: f64, k0: f64) -> PriorScale {
        PriorScale {
            sigma2,
            t,
            k0,
            spread_scale: 1.0,
        }
    }

    fn near(weight: f64, mean: f64, similarity: f64) -> NeighborEvidence {
        NeighborEvidence {
            weight,
            mean,
            similarity,
            credence: 1.0,
        }
    }

    #[test]
    fn without_neighbors_the_prior_is_the_models() {
        assert_eq!(
            neighbor_prior(&[], None, scale(Some(1.0), 0.5, 2.0)),
            NeighborPrior::none(2.0)
        );
        let ignored = [near(0.0, 5.0, 1.0), near(10.0, 5.0, 0.0)];
        assert_eq!(
            neighbor_prior(&ignored, None, scale(Some(1.0), 0.5, 2.0)),
            NeighborPrior::none(2.0)
        );
    }

    #[test]
    fn agreeing_neighbors_give_a_strong_prior_and_disagreeing_ones_a_weak_one() {
        // k0 = 0.05: biases spread 20 σ² around the model.
        let agree: Vec<_> = (0..6)
            .map(|i| near(50.0, 3.0 + 0.01 * i as f64, 0.9))
            .collect();
        let p = neighbor_prior(&agree, None, scale(Some(1.0), 20.0, 0.05));
        assert!((p.mean - 3.0).abs() < 0.1, "{p:?}");
        assert!(p.spread < 0.5 && p.strength > 2.0, "{p:?}");
        let spread: Vec<_> = (0..6)
            .map(|i| near(50.0, if i % 2 == 0 { 8.0 } else { -8.0 }, 0.9))
            .collect();
        let q = neighbor_prior(&spread, None, scale(Some(1.0), 20.0, 0.05));
        assert!(q.spread > 10.0, "{q:?}");
        assert!(q.strength < 0.1, "barely more than k0: {q:?}");
        let total: f64 = spread.iter().map(|g| q.share_of(g)).sum();
        assert!((total - q.share).abs() < 1e-12);
    }

    #[test]
    fn one_neighbor_is_read_through_its_similarity() {
        let close = neighbor_prior(&[near(30.0, 1.0, 0.95)], None, scale(None, 1.0, 1.0));
        let far = neighbor_prior(&[near(30.0, 1.0, 0.3)], None, scale(None, 1.0, 1.0));
        assert!(close.mean > far.mean && close.strength > far.strength);
        assert!(close.mean > 0.5 && close.mean < 1.0, "{close:?}");
    }

    /// Every estimate stays finite and the strength bounded, whatever the input.
    #[test]
    fn degenerate_input_gives_a_finite_prior() {
        for sigma2 in [
            None,
            Some(0.0),
            Some(1e-300),
            Some(f64::INFINITY),
            Some(1e300),
        ] {
            for (t, k0) in [(0.0, 0.0), (20.0, 0.05), (1e-3, 1e3), (f64::NAN, 1.0)] {
                let gs = [
                    near(1e-9, 1e6, 1.0),
                    near(1e9, -1e6, 1e-9),
                    near(1.0, 0.0, 1.0),
                ];
                let p = neighbor_prior(&gs, Some(near(2.0, 1e6, 1.0)), scale(sigma2, t, k0));
                assert!(p.mean.is_finite() && p.strength.is_finite(), "{p:?}");
                assert!(p.share >= 0.0 && p.share < 1.0, "{p:?}");
            }
        }
    }

    /// Posterior mean of an address's bias from n exact outcomes with mean x̄ and a prior.
    fn posterior(prior: &NeighborPrior, n: f64, mean: f64) -> f64 {
        (n * mean + prior.strength * prior.mean) / (n + prior.strength)
    }

    /// Three worlds of addresses on a line (neighbors = the adjacent addresses, the
    /// prediction's address in the middle): borrowing is judged against the exact-only
    /// posterior on the same draws, without calibration and with λ learned from the
    /// outcomes of earlier draws. Where neighbors' biases vary smoothly it must help a
    /// lot; where they are unrelated to the address's, though the similarity claims
    /// otherwise, it must cost at most 2 %.
    #[test]
    fn borrowing_never_costs_more_than_two_percent_and_helps_smooth_worlds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut normal = move || -> f64 { StandardNormal.sample(&mut rng) };
        // Biases spread τ = 1 around the model, outcomes σ = 0.5 around the bias.
        let sigma = 0.5f64;
        let k0 = sigma * sigma;
        type Bias = fn(f64, &[f64; 9]) -> f64;
        let worlds: [(&str, Bias); 3] = [
            // Smooth: a level and a slope shared by the line.
            ("smooth", |i, z| z[0] + 0.15 * z[1] * i),
            // Unrelated: every address its own draw.
            ("unrelated", |i, z| z[(i + 4.0) as usize]),
            // Half and half: a shared level plus an address's own part.
            ("mixed", |i, z| {
                0.5f64.sqrt() * (z[0] + z[(i + 4.0) as usize])
            }),
        ];
        for (name, bias) in worlds {
            for n_exact in [0usize, 1, 2, 4] {
                let mut calibration = SpreadCalibration::default();
                let (mut off, mut raw, mut calibrated) = (0.0, 0.0, 0.0);
                let (warm_up, trials) = (300, 4000);
                for trial in 0..warm_up + trials {
                    let z: [f64; 9] = std::array::from_fn(|_| normal());
                    let theta = bias(0.0, &z);
                    let n = n_exact as f64;
                    let exact = if n_exact == 0 {
                        0.0
                    } else {
                        theta + sigma * normal() / n.sqrt()
                    };
                    let neighbors: Vec<_> = [-3.0f64, -2.0, -1.0, 1.0, 2.0, 3.0]
                        .iter()
                        .map(|&i| {
                            let mean = bias(i, &z) + sigma * normal() / 20f64.sqrt();
                            near(20.0, mean, 1.0 - 0.1 * i.abs())
                        })
                        .collect();
                    let own = (n_exact > 0).then(|| near(n, exact, 1.0));
                    let at = |spread_scale| PriorScale {
                        spread_scale,
                        ..scale(Some(sigma * sigma), 1.0 / k0, k0)
                    };
                    let p = neighbor_prior(&neighbors, own, at(1.0));
                    let lambda = calibration.scales().first().copied().unwrap_or(1.0);
                    let c = neighbor_prior(&neighbors, own, at(lambda));
                    // The outcome that follows the prediction calibrates later ones.
                    let outcome = theta + sigma * normal();
                    calibration.observe(&[BorrowedCheck::of(&c, Some(sigma * sigma))], &[outcome]);
                    if trial < warm_up {
                        continue;
                    }
                    let without = posterior(&NeighborPrior::none(k0), n, exact);
                    off += (without - theta).powi(2);
                    raw += (posterior(&p, n, exact) - theta).powi(2);
                    calibrated += (posterior(&c, n, exact) - theta).powi(2);
                }
                let (r, c) = ((raw / off).sqrt(), (calibrated / off).sqrt());
                let lambda = calibration.scales()[0];
                // Before calibration a world whose similarity means nothing costs up to
                // ~2.5 % (the measured disagreement is noisy); calibrated, at most 2 %.
                let message =
                    format!("{name}, {n_exact} exact: {r} raw, {c} calibrated (λ {lambda})");
                assert!(r <= 1.03 && c <= 1.02, "{message}");
                if name == "smooth" {
                    assert!(c < 0.3 && r < 0.75, "{message}");
                }
                if name == "unrelated" {
                    assert!(lambda > 1.0, "similarity overstated: {message}");
                }
            }
        }
    }

    #[test]
    fn the_calibration_follows_how_far_outcomes_fall_from_the_prior() {
        let check = BorrowedCheck {
            mean: 0.0,
            sigma2: 1.0,
            raw_spread: 4.0,
            center_variance: 0.0,
        };
        let mut cal = SpreadCalibration::default();
        assert!(cal.scales().is_empty());
        // Outcomes at ±2 σ: excess 3 where 4 was predicted.
        for i in 0..9 {
            cal.observe(
                &[Some(check), None],
                &[if i % 2 == 0 { 2.0 } else { -2.0 }, 9.0],
            );
        }
        assert_eq!(cal.scales(), vec![1.0, 1.0], "too few outcomes yet");
        for _ in 0..200 {
            cal.observe(&[Some(check), None], &[2.0, 9.0]);
        }
        let s = cal.scales();
        assert!((s[0] - 0.75).abs() < 1e-9, "{s:?}");
        assert_eq!(s[1], 1.0, "a dimension that never borrowed keeps λ = 1");
        // Non-finite input is ignored.
        cal.observe(&[Some(check)], &[f64::NAN]);
        assert!((cal.scales()[0] - 0.75).abs() < 1e-9);
    }
}
