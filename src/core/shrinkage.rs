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

/// k0 per state dimension learned from `addresses` (each the summaries held at one
/// address), or `None` while the evidence is too thin. Summaries whose dimension differs
/// from the first one's are skipped.
pub fn learn_prior_strength<'a, A, S>(addresses: A) -> Option<Vec<f64>>
where
    A: IntoIterator<Item = S>,
    S: IntoIterator<Item = &'a Summary>,
{
    let mut dim = None;
    let mut m2 = Vec::new();
    let mut dof = 0.0;
    // Per address: pooled weight and weighted mean.
    let mut pooled: Vec<(f64, Vec<f64>)> = Vec::new();
    for summaries in addresses {
        let mut n_a = 0.0;
        let mut sum: Vec<f64> = Vec::new();
        for s in summaries {
            let n = s.dim();
            if *dim.get_or_insert(n) != n {
                continue;
            }
            if m2.is_empty() {
                m2 = vec![0.0; n];
            }
            if sum.is_empty() {
                sum = vec![0.0; n];
            }
            let w = s.weight();
            if !(w.is_finite() && w > 0.0) {
                continue;
            }
            let d = w - s.weight_sq() / w;
            if d > 0.0 {
                dof += d;
                for (i, v) in m2.iter_mut().enumerate() {
                    *v += s.m2()[(i, i)].max(0.0);
                }
            }
            n_a += w;
            for (acc, m) in sum.iter_mut().zip(s.mean().iter()) {
                *acc += w * m;
            }
        }
        if n_a > 0.0 {
            sum.iter_mut().for_each(|v| *v /= n_a);
            pooled.push((n_a, sum));
        }
    }
    if pooled.len() < MIN_ADDRESSES || dof < MIN_DOF {
        return None;
    }
    let k = pooled.len() as f64;
    let k0 = m2
        .iter()
        .enumerate()
        .map(|(d, m2)| {
            let sigma2 = m2 / dof;
            let tau2 = pooled
                .iter()
                .map(|(n, mean)| mean[d] * mean[d] - sigma2 / n)
                .sum::<f64>()
                / k;
            let tau2 = tau2.max(sigma2 / MAX_PRIOR_STRENGTH);
            if tau2 > 0.0 && (sigma2 / tau2).is_finite() {
                (sigma2 / tau2).clamp(MIN_PRIOR_STRENGTH, MAX_PRIOR_STRENGTH)
            } else {
                // No spread at all inside addresses (σ² = 0): exact evidence is exact.
                MIN_PRIOR_STRENGTH
            }
        })
        .collect();
    Some(k0)
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
        let noisy = world(400, 6, 0.2, 1.0, 2);
        let k0 = learn_prior_strength(noisy.iter().map(std::iter::once)).unwrap();
        // σ²/τ² = 25: noisy evidence is shrunk.
        assert!(k0[0] > 12.0 && k0[0] < 50.0, "{k0:?}");
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
