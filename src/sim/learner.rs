//! The central learner: what a team with every robot's raw data would build instead of
//! an outcome layer. A k-nearest-neighbour regression of the residual
//! (measured − predicted) on the context, over every raw residual of the fleet, on a k-d
//! tree (`kiddo`'s `ImmutableKdTree`), refitted as data arrives.
//!
//! - **Context vector**: the numeric features as z-scores (mean and standard deviation
//!   of the data at the last refit), then one 0/1 coordinate per world model and per tag
//!   (`key=value`, vocabulary in order of first sight; past [`DIM`] coordinates, tags
//!   share coordinates by hash). Two contexts that differ in one tag are √2 apart, so
//!   the nearest neighbours are the same tags at the nearest features, and borrow across
//!   tags only where the same tags have nothing within √2 standard deviations.
//! - **Prediction**: predicted + the mean residual of the k nearest stored contexts. k is
//!   chosen online from {1, 2, 4, 8, 16, 32}: each candidate's squared error (normalized
//!   by the world's scales) is scored on every outcome before it is stored (prequential),
//!   and the best so far answers. No setting is taken from the simulator's ground truth.
//! - **Refit**: the tree is rebuilt from all stored residuals whenever
//!   max([`REFIT_MIN`], 5 % of the stored ones) arrived since the last fit; until then new
//!   residuals wait (as a nightly or hourly retrain would, only more often).
//!
//! Why k-NN: the worlds' errors are interactions of tags and nonlinear in the features,
//! which a linear ridge regression on one-hot tags cannot represent; a k-NN adapts to
//! any such structure and is what a team would try first on tabular context. A k-d tree
//! from a well-kept crate keeps a query at a few microseconds over 10⁵ residuals.

use std::collections::HashMap;
use std::num::NonZero;

use kiddo::{ImmutableKdTree, SquaredEuclidean};

/// Coordinates of the context vector (features, models, tags; zero-padded).
pub const DIM: usize = 32;
/// Fewest new residuals that trigger a refit.
pub const REFIT_MIN: usize = 200;
/// The candidate numbers of neighbours, scored online.
pub const CANDIDATE_K: [usize; 6] = [1, 2, 4, 8, 16, 32];
/// Squared distance within which neighbours are searched first: contexts that differ in
/// a tag or the model are at least 2 apart, so this keeps the same tags and model (at
/// features within √2 standard deviations); only a context with nothing there looks
/// further. It also keeps the k-d tree's search cheap in 32 dimensions.
const SAME_TAGS_RADIUS: f64 = 1.99;
/// The candidate used before any outcome was scored.
const INITIAL_CANDIDATE: usize = 3;

/// One context: features, model and tags as the learner encodes them.
#[derive(Clone, Debug)]
pub struct Context {
    features: Vec<f64>,
    /// Coordinates set to 1 (model and tags).
    hot: Vec<usize>,
}

/// The learner's answer for one context: every candidate's correction.
#[derive(Clone, Debug, Default)]
pub struct Guess {
    /// Correction (mean residual) per candidate k, flattened by state dimension.
    per_candidate: Vec<f64>,
    dim: usize,
}

impl Guess {
    /// The correction of candidate `c` (index into [`CANDIDATE_K`]); zero when nothing
    /// is stored yet.
    fn correction(&self, c: usize) -> &[f64] {
        &self.per_candidate[c * self.dim..(c + 1) * self.dim]
    }
}

/// The fitted residuals of one (model, tags) group: their indices and a tree over them.
#[derive(Debug)]
struct Group {
    items: Vec<usize>,
    tree: ImmutableKdTree<f64, DIM>,
}

/// The central k-NN learner.
#[derive(Debug)]
pub struct Learner {
    scale: Vec<f64>,
    models: usize,
    features: usize,
    vocabulary: HashMap<String, usize>,
    contexts: Vec<Context>,
    /// Residuals, flattened by state dimension.
    residuals: Vec<f64>,
    /// Residuals in the fitted tree (the first `fitted` stored).
    fitted: usize,
    /// The fitted tree over every residual, and one per (model, tags) group.
    tree: Option<ImmutableKdTree<f64, DIM>>,
    groups: HashMap<Vec<usize>, Group>,
    /// Feature mean and standard deviation at the last fit.
    center: Vec<f64>,
    spread: Vec<f64>,
    /// Prequential squared error per candidate.
    scores: [f64; CANDIDATE_K.len()],
    refits: usize,
}

impl Learner {
    /// A learner for a world with these state scales, models and numeric features.
    pub fn new(scale: &[f64], models: usize, features: usize) -> Learner {
        Learner {
            scale: scale.to_vec(),
            models,
            features,
            vocabulary: HashMap::new(),
            contexts: Vec::new(),
            residuals: Vec::new(),
            fitted: 0,
            tree: None,
            groups: HashMap::new(),
            center: vec![0.0; features],
            spread: vec![1.0; features],
            scores: [0.0; CANDIDATE_K.len()],
            refits: 0,
        }
    }

    /// Encodes a context (new tags join the vocabulary).
    pub fn context(&mut self, model: usize, tags: &[String], features: &[f64]) -> Context {
        let first_tag = (self.features + self.models).min(DIM - 1);
        let mut hot = vec![(self.features + model).min(DIM - 1)];
        for tag in tags {
            let next = self.vocabulary.len();
            let slot = *self.vocabulary.entry(tag.clone()).or_insert(next);
            let room = DIM - first_tag;
            hot.push(first_tag + slot % room);
        }
        hot.sort_unstable();
        hot.dedup();
        Context {
            features: features.to_vec(),
            hot,
        }
    }

    fn point(&self, c: &Context) -> [f64; DIM] {
        let mut p = [0.0; DIM];
        for (i, x) in c.features.iter().enumerate().take(DIM) {
            p[i] = (x - self.center[i]) / self.spread[i];
        }
        for &h in &c.hot {
            p[h] = 1.0;
        }
        p
    }

    /// Every candidate's correction for `context` (zero before the first fit).
    pub fn guess(&self, context: &Context) -> Guess {
        let dim = self.scale.len();
        let mut per_candidate = vec![0.0; dim * CANDIDATE_K.len()];
        if let (Some(tree), Some(most)) = (&self.tree, NonZero::new(CANDIDATE_K[5])) {
            let point = self.point(context);
            // Same tags and model first (their own small tree: the search is exact, as
            // every other context is at least 2 away); the whole tree otherwise.
            let mut near: Vec<usize> = match self.groups.get(&context.hot) {
                Some(g) => g
                    .tree
                    .nearest_n_within::<SquaredEuclidean>(&point, SAME_TAGS_RADIUS, most, true)
                    .iter()
                    .map(|n| g.items[n.item as usize])
                    .collect(),
                None => Vec::new(),
            };
            if near.is_empty() {
                near = tree
                    .nearest_n::<SquaredEuclidean>(&point, most)
                    .iter()
                    .map(|n| n.item as usize)
                    .collect();
            }
            let mut sum = vec![0.0; dim];
            let mut c = 0;
            for (i, &n) in near.iter().enumerate() {
                let r = &self.residuals[n * dim..(n + 1) * dim];
                sum.iter_mut().zip(r).for_each(|(s, x)| *s += x);
                while c < CANDIDATE_K.len() && CANDIDATE_K[c] == i + 1 {
                    for d in 0..dim {
                        per_candidate[c * dim + d] = sum[d] / (i + 1) as f64;
                    }
                    c += 1;
                }
            }
            // Fewer stored than a candidate asks: it gets all of them.
            for c in c..CANDIDATE_K.len() {
                for d in 0..dim {
                    per_candidate[c * dim + d] = sum[d] / near.len().max(1) as f64;
                }
            }
        }
        Guess { per_candidate, dim }
    }

    /// The correction the learner answers with: the candidate with the least
    /// prequential error so far.
    pub fn correction<'g>(&self, guess: &'g Guess) -> &'g [f64] {
        let best = if self.scores.iter().all(|&s| s == 0.0) {
            INITIAL_CANDIDATE
        } else {
            (0..CANDIDATE_K.len())
                .min_by(|&a, &b| self.scores[a].total_cmp(&self.scores[b]))
                .unwrap_or(INITIAL_CANDIDATE)
        };
        guess.correction(best)
    }

    /// Scores each candidate of `guess` against the measured residual, stores it, and
    /// refits when enough arrived.
    pub fn add(&mut self, context: Context, guess: &Guess, residual: &[f64]) {
        if self.tree.is_some() {
            for (c, score) in self.scores.iter_mut().enumerate() {
                let g = guess.correction(c);
                *score += residual
                    .iter()
                    .zip(g)
                    .zip(&self.scale)
                    .map(|((r, g), s)| ((r - g) / s).powi(2))
                    .sum::<f64>();
            }
        }
        self.contexts.push(context);
        self.residuals.extend_from_slice(residual);
        let waiting = self.contexts.len() - self.fitted;
        if waiting >= REFIT_MIN.max(self.contexts.len() / 20) {
            self.refit();
        }
    }

    /// Rebuilds the tree from every stored residual, features standardized anew.
    fn refit(&mut self) {
        let n = self.contexts.len() as f64;
        for f in 0..self.features.min(DIM) {
            let mean = self.contexts.iter().map(|c| c.features[f]).sum::<f64>() / n;
            let var = self
                .contexts
                .iter()
                .map(|c| (c.features[f] - mean).powi(2))
                .sum::<f64>()
                / n;
            self.center[f] = mean;
            self.spread[f] = if var > 0.0 { var.sqrt() } else { 1.0 };
        }
        let points: Vec<[f64; DIM]> = self.contexts.iter().map(|c| self.point(c)).collect();
        self.tree = Some(ImmutableKdTree::new_from_slice(&points));
        let mut members: HashMap<Vec<usize>, Vec<usize>> = HashMap::new();
        for (i, c) in self.contexts.iter().enumerate() {
            members.entry(c.hot.clone()).or_default().push(i);
        }
        self.groups = members
            .into_iter()
            .map(|(hot, items)| {
                let slice: Vec<[f64; DIM]> = items.iter().map(|&i| points[i]).collect();
                let tree = ImmutableKdTree::new_from_slice(&slice);
                (hot, Group { items, tree })
            })
            .collect();
        self.fitted = self.contexts.len();
        self.refits += 1;
    }

    /// Refits so far.
    pub fn refits(&self) -> usize {
        self.refits
    }

    /// The k the learner answers with now.
    pub fn chosen_k(&self) -> usize {
        let best = (0..CANDIDATE_K.len())
            .min_by(|&a, &b| self.scores[a].total_cmp(&self.scores[b]))
            .unwrap_or(INITIAL_CANDIDATE);
        CANDIDATE_K[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_same_tags_answer_and_k_is_chosen_online() {
        let mut l = Learner::new(&[1.0], 1, 1);
        let tags = |t: &str| vec![format!("surface={t}")];
        for i in 0..1_000 {
            let x = (i % 10) as f64;
            let (t, r) = if i % 2 == 0 {
                ("ice", 2.0)
            } else {
                ("dry", -1.0)
            };
            let c = l.context(0, &tags(t), &[x]);
            let g = l.guess(&c);
            l.add(c, &g, &[r]);
        }
        assert!(l.refits() >= 2);
        let c = l.context(0, &tags("ice"), &[3.0]);
        let g = l.guess(&c);
        assert!((l.correction(&g)[0] - 2.0).abs() < 1e-9, "{:?}", g);
        let c = l.context(0, &tags("dry"), &[3.0]);
        assert!((l.correction(&l.guess(&c))[0] + 1.0).abs() < 1e-9);
        // Noise-free residuals: any k inside one tag is exact; scores stay at zero.
        assert!(CANDIDATE_K.contains(&l.chosen_k()));
    }
}
