//! Trust earned from outcomes (DESIGN 6), as a simulated node keeps it.
//!
//! After each of its own outcomes at an address, a robot compares what every source it
//! holds there claimed (its mean residual) with the residual it just measured. The mean
//! squared gap, in units of each component's scale, is kept per source as a running mean
//! (the last ~`1 / MIN_RATE` observations count); trust = 1 / (1 + gap² / tolerance²), so
//! honest sources, whose claims miss only by the spread inside a class, keep a trust near
//! 1, and a source whose claims are far from what this robot sees loses its weight in
//! every class. Unknown sources start at 1: trust is lost, not granted.
//!
//! A record is also judged when it arrives, against this robot's own summary at its
//! address (see [`TrustBook::observe_arrival`]): with a fan-in budget per address most
//! sources are never held where the robot measures, so judging only at measurement
//! leaves most liars unknown until they are the lone voice in a thin class.

use std::collections::HashMap;

use crate::core::ids::SourceId;
use crate::core::summary::Summary;

/// Smallest weight of a new observation in the running mean (memory of ~50 outcomes).
const MIN_RATE: f64 = 0.02;

#[derive(Clone, Copy, Debug, Default)]
struct Gap {
    mean_sq: f64,
    n: f64,
}

/// Per-source trust of one robot.
#[derive(Clone, Debug, Default)]
pub struct TrustBook {
    tolerance_sq: f64,
    gaps: HashMap<SourceId, Gap>,
}

impl TrustBook {
    /// Trust with the given tolerance (scale units); 0 disables it (everyone gets 1).
    pub fn new(tolerance: f64) -> TrustBook {
        TrustBook {
            tolerance_sq: tolerance * tolerance,
            gaps: HashMap::new(),
        }
    }

    /// The weight in [0, 1] given to a source's records.
    pub fn trust(&self, source: &SourceId) -> f64 {
        if self.tolerance_sq <= 0.0 {
            return 1.0;
        }
        self.gaps
            .get(source)
            .map_or(1.0, |g| 1.0 / (1.0 + g.mean_sq / self.tolerance_sq))
    }

    /// Records how far a source's claimed mean residual was from a measured residual.
    pub fn observe(&mut self, source: &SourceId, claimed: &[f64], measured: &[f64], scale: &[f64]) {
        if self.tolerance_sq <= 0.0 {
            return;
        }
        let gap_sq = claimed
            .iter()
            .zip(measured)
            .zip(scale)
            .map(|((c, m), s)| ((c - m) / s).powi(2))
            .sum::<f64>()
            / claimed.len().max(1) as f64;
        if !gap_sq.is_finite() {
            return;
        }
        let g = match self.gaps.get_mut(source) {
            Some(g) => g,
            None => self.gaps.entry(source.clone()).or_default(),
        };
        g.n += 1.0;
        let rate = (1.0 / g.n).max(MIN_RATE);
        g.mean_sq += rate * (gap_sq - g.mean_sq);
    }

    /// Judges a record on arrival: its claimed mean residual against this robot's own
    /// mean residual at the same address. Returns false (nothing judged) when the robot
    /// has no outcome there or the dimensions differ.
    pub fn observe_arrival(
        &mut self,
        source: &SourceId,
        claimed: &Summary,
        own: Option<&Summary>,
        scale: &[f64],
    ) -> bool {
        let Some(own) = own.filter(|o| o.count() > 0 && o.dim() == claimed.dim()) else {
            return false;
        };
        if claimed.dim() != scale.len() {
            return false;
        }
        self.observe(
            source,
            claimed.mean().as_slice(),
            own.mean().as_slice(),
            scale,
        );
        true
    }

    /// Judges a record's claim against the plausibility gate (`max_residual`, per
    /// dimension as in the synthesis; empty = no gate): a claim beyond the gate counts as
    /// a miss by its excess over the gate, so a source that keeps claiming the implausible
    /// loses its weight at every address, including those the gate alone would not catch.
    /// Returns whether the claim was implausible.
    pub fn observe_plausibility(
        &mut self,
        source: &SourceId,
        claimed: &Summary,
        max_residual: &[f64],
        scale: &[f64],
    ) -> bool {
        let Some(&last) = max_residual.last() else {
            return false;
        };
        if claimed.dim() != scale.len() {
            return false;
        }
        let claimed = claimed.mean().as_slice();
        let gated: Vec<f64> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let b = max_residual.get(i).copied().unwrap_or(last);
                c.clamp(-b, b)
            })
            .collect();
        if gated.iter().zip(claimed).all(|(g, c)| g == c) {
            return false;
        }
        self.observe(source, claimed, &gated, scale);
        true
    }

    /// Sources with a trust record.
    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    /// True when no source has been judged yet.
    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::summary::Decay;

    #[test]
    fn liars_lose_trust_and_honest_sources_keep_it() {
        let mut book = TrustBook::new(3.0);
        let (honest, liar) = (SourceId::new("h").unwrap(), SourceId::new("l").unwrap());
        assert_eq!(book.trust(&liar), 1.0, "unknown sources start trusted");
        for i in 0..20 {
            let measured = [1.0 + 0.1 * (i % 3) as f64, -2.0];
            book.observe(&honest, &[1.1, -2.05], &measured, &[1.0, 0.5]);
            book.observe(&liar, &[51.0, 23.0], &measured, &[1.0, 0.5]);
        }
        assert!(book.trust(&honest) > 0.99, "{}", book.trust(&honest));
        assert!(book.trust(&liar) < 0.01, "{}", book.trust(&liar));
        assert_eq!(book.len(), 2);
        let mut off = TrustBook::new(0.0);
        off.observe(&liar, &[51.0], &[1.0], &[1.0]);
        assert_eq!(off.trust(&liar), 1.0);
        assert!(off.is_empty());
    }

    fn summary(residuals: &[[f64; 2]]) -> Summary {
        let mut s = Summary::empty(2).unwrap();
        for (t, r) in residuals.iter().enumerate() {
            s.add(r, t as i64, Decay::NONE).unwrap();
        }
        s
    }

    #[test]
    fn records_are_judged_on_arrival_against_own_outcomes_only() {
        let mut book = TrustBook::new(3.0);
        let (honest, liar) = (SourceId::new("h").unwrap(), SourceId::new("l").unwrap());
        let scale = [1.0, 0.5];
        let own = summary(&[[1.0, -2.0], [1.4, -1.8]]);
        let honest_claim = summary(&[[0.9, -2.1], [1.3, -2.0], [1.1, -1.9]]);
        let liar_claim = summary(&[[51.0, 23.0]]);
        // No own outcome at the address: nothing to judge against, trust unchanged.
        assert!(!book.observe_arrival(&liar, &liar_claim, None, &scale));
        let empty = Summary::empty(2).unwrap();
        assert!(!book.observe_arrival(&liar, &liar_claim, Some(&empty), &scale));
        assert_eq!(book.trust(&liar), 1.0);
        assert!(book.is_empty());
        // One arrival where the robot has its own outcomes is enough to expose the liar.
        assert!(book.observe_arrival(&liar, &liar_claim, Some(&own), &scale));
        assert!(book.observe_arrival(&honest, &honest_claim, Some(&own), &scale));
        assert!(book.trust(&liar) < 0.01, "{}", book.trust(&liar));
        assert!(book.trust(&honest) > 0.95, "{}", book.trust(&honest));
        // A record of another dimension is not compared.
        let other = Summary::from_sample(&[1.0], 0).unwrap();
        assert!(!book.observe_arrival(&honest, &other, Some(&own), &scale));
    }

    #[test]
    fn claims_beyond_the_gate_cost_trust_everywhere() {
        let mut book = TrustBook::new(3.0);
        let (honest, liar) = (SourceId::new("h").unwrap(), SourceId::new("l").unwrap());
        let scale = [1.0, 0.5];
        let gate = [10.0, 5.0];
        let big_but_plausible = summary(&[[9.0, -4.0]]);
        assert!(!book.observe_plausibility(&honest, &big_but_plausible, &gate, &scale));
        assert!(!book.observe_plausibility(&honest, &big_but_plausible, &[], &scale));
        assert_eq!(book.trust(&honest), 1.0, "a plausible claim is not judged");
        let beyond = summary(&[[9.0, 20.0]]);
        assert!(book.observe_plausibility(&liar, &beyond, &gate, &scale));
        assert!(book.trust(&liar) < 0.05, "{}", book.trust(&liar));
    }
}
