//! The clairvoyant floor: the world model's prediction corrected by the world's TRUE mean
//! error of the class, which only the simulator knows. No method that corrects per class
//! (per fingerprint) can do better on average, so it is the bound qis is measured
//! against where the world's noise or its variation inside a bin leaves little to gain.
//!
//! The true class mean `E[measured − predicted | class, phase]` is estimated once per
//! class and phase of the run by averaging `floor_samples` residuals of episodes the
//! world resamples in that class ([`super::worlds::Episode::resample`]: perceived tags,
//! feature bins, model and phase held; true context, latent causes, robot traits and
//! noise drawn). Each class draws from its own random stream seeded by the class, so the
//! floor does not depend on the order classes are met nor shift any episode.

use std::collections::HashMap;

use rand::SeedableRng;

use super::SimRng;
use super::baselines::Class;
use super::worlds::Episode;

/// The per-class true mean errors met so far.
#[derive(Debug)]
pub struct Floor {
    seed: u64,
    samples: usize,
    means: HashMap<(Class, usize), Vec<f64>>,
}

impl Floor {
    /// A floor averaging `samples` resampled residuals per class, streams from `seed`.
    pub fn new(seed: u64, samples: usize) -> Floor {
        Floor {
            seed,
            samples: samples.max(1),
            means: HashMap::new(),
        }
    }

    /// The world's true mean residual of `episode`'s class (`class`) in its phase.
    pub fn mean_error(&mut self, class: Class, episode: &dyn Episode) -> &[f64] {
        let phase = episode.phase();
        let (seed, samples) = (self.seed, self.samples);
        self.means.entry((class, phase)).or_insert_with(|| {
            let mut rng = SimRng::seed_from_u64(class_seed(seed, &class, phase));
            let mut mean = vec![0.0; episode.predict().len()];
            for _ in 0..samples {
                let e = episode.resample(&mut rng);
                let predicted = e.predict();
                let measured = e.outcome(&mut rng);
                for (m, (y, p)) in mean.iter_mut().zip(measured.iter().zip(&predicted)) {
                    *m += (y - p) / samples as f64;
                }
            }
            mean
        })
    }

    /// Classes (and phases) evaluated.
    pub fn classes(&self) -> usize {
        self.means.len()
    }
}

/// The seed of one class's stream: the run's floor seed mixed with the class.
fn class_seed(seed: u64, class: &Class, phase: usize) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&class.fingerprint.0[..8]);
    seed ^ u64::from_le_bytes(head) ^ ((class.model as u64) << 56) ^ ((phase as u64) << 48)
}
