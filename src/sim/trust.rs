//! Trust earned from outcomes (DESIGN 6), as a simulated node keeps it.
//!
//! After each of its own outcomes at an address, a robot compares what every source it
//! holds there claimed (its mean residual) with the residual it just measured. The mean
//! squared gap, in units of each component's scale, is kept per source as a running mean
//! (the last ~`1 / MIN_RATE` observations count); trust = 1 / (1 + gap² / tolerance²), so
//! honest sources, whose claims miss only by the spread inside a class, keep a trust near
//! 1, and a source whose claims are far from what this robot sees loses its weight in
//! every class. Unknown sources start at 1: trust is lost, not granted.

use std::collections::HashMap;

use crate::core::ids::SourceId;

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
}
