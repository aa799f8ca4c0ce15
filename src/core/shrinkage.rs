//! Empirical-Bayes prior strength: how much the fleet's mean residual at an address
//! should count against the world model, learned from the summaries the node holds
//! instead of a count fixed in config.
//!
//! Model, per world model and state dimension d: a residual at address a is
//! `r = θ_a + ε`, where ε has variance σ²_d (reality's spread inside an address, the
//! summaries' second moments) and the address's bias θ_a has variance τ²_d around the
//! world model's prediction (the spread of biases between addresses). Given n outcomes
//! at a with mean m, the posterior mean of θ_a is `w · m` with
//! `w = n / (n + k0_d)` and `k0_d = σ²_d / τ²_d`:
//! consistent, low-noise evidence (σ² ≪ τ²) dominates after one or two outcomes; noisy
//! evidence is shrunk.
//!
//! Estimates, by the method of moments over the addresses held:
//! - `σ²_d = Σ_s M2_s,dd / Σ_s (W_s − W2_s / W_s)` over every summary held (reliability
//!   weights: a count-1 summary carries no degree of freedom);
//! - `τ²_d = mean_a (m_a,d² − σ²_d / n_a)` over addresses, with m_a and n_a pooled over
//!   the address's summaries (E[m²] = τ² + σ²/n), floored at `σ²_d / MAX_PRIOR_STRENGTH`;
//! - `k0_d` clamped to [`MIN_PRIOR_STRENGTH`, `MAX_PRIOR_STRENGTH`].
//!
//! The caller chooses which summaries count (the node passes its own and those of
//! established sources, so young or distrusted ids cannot widen τ² to make every prior
//! credulous). With fewer than [`MIN_ADDRESSES`] addresses or [`MIN_DOF`] degrees of
//! freedom nothing is learned and the configured fallback applies.

use super::summary::Summary;

/// Smallest learned k0: even a perfectly consistent fleet leaves the model a voice.
pub const MIN_PRIOR_STRENGTH: f64 = 0.05;
/// Largest learned k0: addresses whose biases are indistinguishable from noise.
pub const MAX_PRIOR_STRENGTH: f64 = 1000.0;
/// Addresses with evidence needed before k0 is learned.
pub const MIN_ADDRESSES: usize = 8;
/// Within-address degrees of freedom needed before k0 is learned.
pub const MIN_DOF: f64 = 16.0;

/// What empirical Bayes learned per state dimension from the summaries held.
#[derive(Clone, Debug, PartialEq)]
pub struct Shrinkage {
    /// k0_d = σ²_d / τ²_d, clamped to [`MIN_PRIOR_STRENGTH`, `MAX_PRIOR_STRENGTH`].
    pub prior_strength: Vec<f64>,
    /// σ²_d, the within-address residual variance (state units squared): the noise the
    /// neighbor prior and the drift test measure evidence against.
    pub within_variance: Vec<f64>,
    /// τ²_d, the spread of biases between addresses around the world model (state units
    /// squared; mean square, so a bias shared by every address counts), before k0 is
    /// clamped: how far a neighborhood's common bias may lie from the model.
    pub between_variance: Vec<f64>,
}

/// k0 per state dimension learned from `addresses` (each the summaries held at one
/// address), or `None` while the evidence is too thin. Summaries whose dimension differs
/// from the first one's are skipped.
pub fn learn_prior_strength<'a, A, S>(addresses: A) -> Option<Vec<f64>>
where
    A: IntoIterator<Item = S>,
    S: IntoIterator<Item = &'a Summary>,
{
    learn_shrinkage(addresses).map(|s| s.prior_strength)
}

/// k0 and σ² per state dimension learned from `addresses`, as [`learn_prior_strength`].
pub fn learn_shrinkage<'a, A, S>(addresses: A) -> Option<Shrinkage>
where
    A: IntoIterator<Item = S>,
    S: IntoIterator<Item = &'a Summary>,
{
    let mut dim = None;
    // Per address: pooled weight, weighted mean, diagonal scatter and its degrees of
    // freedom.
    let mut pooled: Vec<AddressMoments> = Vec::new();
    for summaries in addresses {
        let mut a = AddressMoments::default();
        for s in summaries {
            let n = s.dim();
            if *dim.get_or_insert(n) != n {
                continue;
            }
            if a.mean.is_empty() {
                a.mean = vec![0.0; n];
                a.m2 = vec![0.0; n];
            }
            let w = s.weight();
            if !(w.is_finite() && w > 0.0) {
                continue;
            }
            let d = w - s.weight_sq() / w;
            if d > 0.0 {
                a.dof += d;
                for (i, v) in a.m2.iter_mut().enumerate() {
                    *v += s.m2()[(i, i)].max(0.0);
                }
            }
            a.weight += w;
            for (acc, m) in a.mean.iter_mut().zip(s.mean().iter()) {
                *acc += w * m;
            }
        }
        if a.weight > 0.0 {
            let w = a.weight;
            a.mean.iter_mut().for_each(|v| *v /= w);
            pooled.push(a);
        }
    }
    // Sums in a canonical order: the caller's (a hash map's) order must not change the
    // last bits, or two runs of one seed would differ.
    pooled.sort_unstable_by(AddressMoments::canonical);
    let dof: f64 = pooled.iter().map(|a| a.dof).sum();
    if pooled.len() < MIN_ADDRESSES || dof < MIN_DOF {
        return None;
    }
    let n = pooled[0].mean.len();
    let m2: Vec<f64> = (0..n)
        .map(|i| pooled.iter().map(|a| a.m2[i]).sum())
        .collect();
    let k = pooled.len() as f64;
    let within_variance: Vec<f64> = m2.iter().map(|m2| m2 / dof).collect();
    let between_variance: Vec<f64> = within_variance
        .iter()
        .enumerate()
        .map(|(d, sigma2)| {
            let tau2 = pooled
                .iter()
                .map(|a| a.mean[d] * a.mean[d] - sigma2 / a.weight)
                .sum::<f64>()
                / k;
            tau2.max(sigma2 / MAX_PRIOR_STRENGTH)
        })
        .collect();
    let prior_strength = within_variance
        .iter()
        .zip(&between_variance)
        .map(|(sigma2, tau2)| {
            if *tau2 > 0.0 && (sigma2 / tau2).is_finite() {
                (sigma2 / tau2).clamp(MIN_PRIOR_STRENGTH, MAX_PRIOR_STRENGTH)
            } else {
                // No spread at all inside addresses (σ² = 0): exact evidence is exact.
                MIN_PRIOR_STRENGTH
            }
        })
        .collect();
    Some(Shrinkage {
        prior_strength,
        within_variance,
        between_variance,
    })
}

/// What one address contributes to the estimates.
#[derive(Default)]
struct AddressMoments {
    weight: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    dof: f64,
}

impl AddressMoments {
    /// A total order on the values themselves, so sorting makes any input order the same.
    fn canonical(a: &Self, b: &Self) -> std::cmp::Ordering {
        a.weight
            .total_cmp(&b.weight)
            .then_with(|| a.dof.total_cmp(&b.dof))
            .then_with(|| cmp_slices(&a.mean, &b.mean))
            .then_with(|| cmp_slices(&a.m2, &b.m2))
    }
}

fn cmp_slices(a: &[f64], b: &[f64]) -> std::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;
    use crate::core::summary::Decay;

    /// Summaries of `n` outcomes at each of `addresses` addresses whose biases are drawn
    /// with spread `tau` and whose outcomes scatter by `sigma` around them.
    fn world(addresses: usize, n: usize, tau: f64, sigma: f64, seed: u64) -> Vec<Summary> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = move || -> f64 { StandardNormal.sample(&mut rng) };
        (0..addresses)
            .map(|_| {
                let bias = tau * normal();
                let mut s = Summary::empty(1).unwrap();
                for t in 0..n {
                    s.add(&[bias + sigma * normal()], t as i64, Decay::NONE)
                        .unwrap();
                }
                s
            })
            .collect()
    }

    #[test]
    fn learns_sigma_squared_over_tau_squared() {
        let held = world(400, 6, 1.0, 0.5, 1);
        let k0 = learn_prior_strength(held.iter().map(std::iter::once)).unwrap();
        // σ²/τ² = 0.25.
        assert!((k0[0] - 0.25).abs() < 0.08, "{k0:?}");
        let learned = learn_shrinkage(held.iter().map(std::iter::once)).unwrap();
        assert!(
            (learned.within_variance[0] - 0.25).abs() < 0.03,
            "{learned:?}"
        );
        assert!(
            (learned.between_variance[0] - 1.0).abs() < 0.2,
            "{learned:?}"
        );
        let noisy = world(400, 6, 0.2, 1.0, 2);
        let k0 = learn_prior_strength(noisy.iter().map(std::iter::once)).unwrap();
        // σ²/τ² = 25: noisy evidence is shrunk.
        assert!(k0[0] > 12.0 && k0[0] < 50.0, "{k0:?}");
    }

    #[test]
    fn the_order_addresses_come_in_does_not_change_a_bit() {
        let held = world(300, 5, 1.3, 0.7, 6);
        let forward = learn_shrinkage(held.iter().map(std::iter::once)).unwrap();
        let backward = learn_shrinkage(held.iter().rev().map(std::iter::once)).unwrap();
        let mut shuffled: Vec<&Summary> = held.iter().collect();
        shuffled.sort_by(|a, b| a.mean()[0].total_cmp(&b.mean()[0]));
        let sorted = learn_shrinkage(shuffled.into_iter().map(std::iter::once)).unwrap();
        assert_eq!(forward, backward);
        assert_eq!(forward, sorted);
    }

    #[test]
    fn thin_evidence_learns_nothing() {
        let held = world(3, 6, 1.0, 0.5, 3);
        assert!(learn_prior_strength(held.iter().map(std::iter::once)).is_none());
        // Count-1 summaries carry no within-address degree of freedom.
        let singles = world(100, 1, 1.0, 0.5, 4);
        assert!(learn_prior_strength(singles.iter().map(std::iter::once)).is_none());
    }

    #[test]
    fn biases_indistinguishable_from_noise_give_the_largest_k0() {
        let held = world(200, 4, 0.0, 1.0, 5);
        let k0 = learn_prior_strength(held.iter().map(std::iter::once)).unwrap();
        assert!(k0[0] > 10.0, "{k0:?}");
        assert!(k0[0] <= MAX_PRIOR_STRENGTH);
    }
}
