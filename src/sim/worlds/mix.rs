//! How often each context of a world occurs: Zipf over a seeded random ranking of the
//! contexts, so a few are everyday and many are rare.

use rand::RngExt;

use super::super::SimRng;

/// A Zipf mix over a world's contexts.
#[derive(Clone, Debug)]
pub struct ContextMix<C> {
    pub(crate) contexts: Vec<C>,
    cumulative: Vec<f64>,
}

impl<C: Copy> ContextMix<C> {
    /// Ranks `contexts` with `rng` and gives rank r (1-based) a weight r^(−exponent).
    pub fn zipf(mut contexts: Vec<C>, exponent: f64, rng: &mut SimRng) -> ContextMix<C> {
        // Fisher–Yates with our own RNG keeps the ranking reproducible from the seed.
        for i in (1..contexts.len()).rev() {
            let j = rng.random_range(0..=i);
            contexts.swap(i, j);
        }
        let mut total = 0.0;
        let cumulative = (1..=contexts.len())
            .map(|r| {
                total += (r as f64).powf(-exponent);
                total
            })
            .collect();
        ContextMix {
            contexts,
            cumulative,
        }
    }

    /// Draws one context.
    pub fn draw(&self, rng: &mut SimRng) -> C {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        let i = self.cumulative.partition_point(|&c| c <= u);
        self.contexts[i.min(self.contexts.len() - 1)]
    }

    /// The probability of each context, in the order of [`ContextMix::contexts`].
    pub fn weights(&self) -> Vec<f64> {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let mut previous = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let w = (c - previous) / total;
                previous = c;
                w
            })
            .collect()
    }

    /// The contexts, most frequent first.
    pub fn contexts(&self) -> &[C] {
        &self.contexts
    }

    /// Number of contexts.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether the mix holds no context.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}
