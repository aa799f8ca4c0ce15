//! The zoo of simulated worlds: each one a reality, a world model that gets it wrong in
//! its own way, and the fingerprint bins a user of that world would declare.
//!
//! A [`World`] says what its robots perceive (tags and numeric features), what its world
//! model predicts (an analytic model with nominal parameters), what reality then does
//! (sampled), and, for the clairvoyant floor, how to draw another episode of the same
//! class (same fingerprint, same model, same phase of the run). The fleet, the baselines
//! and the report are written against the trait, so a world is one file:
//!
//! | world | what it tests |
//! |---|---|
//! | [`braking`] | per-class bias with little spread inside a class (today's world) |
//! | [`plate`] | rapier3d physics: a plate pushed toward a table's edge; a latent cause; 0/1 outcomes |
//! | [`gripper`] | tags wrong 8 % of the time; noise as large as the bias; model v2 to half the fleet |
//! | [`dock`] | robots that differ (worn tires); a floor that gets wet in mid-run |

pub mod braking;
pub mod dock;
pub mod gripper;
pub mod mix;
pub mod plate;

use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::core::fingerprint::{Bins, FingerprintConfig, UnknownFeatures};

use super::SimRng;

/// The settings of a run a world is built for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorldSetup {
    /// The run's seed (the world draws its class mix and robot traits from it).
    pub seed: u64,
    /// Robots in the fleet (indices 0..robots).
    pub robots: usize,
    /// Rounds of the run (a mid-run change happens at half of them).
    pub rounds: usize,
    /// Zipf exponent of the class frequencies.
    pub zipf_exponent: f64,
}

/// A change of the world in mid-run, as the report names it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// First round of the changed world.
    pub round: usize,
    /// What changed.
    pub what: &'static str,
}

/// One episode as the world drew it: what the robot perceives, what its model predicts,
/// and what the world keeps hidden (true context, latent causes, robot traits).
pub trait Episode: Send {
    /// Index of the world model that predicts it, into [`World::models`].
    fn model(&self) -> usize;
    /// The scenario tags the robot perceives (`key=value`; possibly wrong).
    fn tags(&self) -> Vec<String>;
    /// The numeric features, in the order of [`World::feature_names`].
    fn features(&self) -> Vec<f64>;
    /// 0 before the world's change, 1 after (always 0 in a world without change).
    fn phase(&self) -> usize;
    /// Whether the change altered what happens in this episode (false before it).
    fn affected(&self) -> bool;
    /// What the world model predicts, in the units of [`World::state_names`].
    fn predict(&self) -> Vec<f64>;
    /// What reality does, as the robot's sensors measure it (sampled).
    fn outcome(&self, rng: &mut SimRng) -> Vec<f64>;
    /// Another episode the world could have drawn in the same class: same perceived tags,
    /// features in the same bins, same model and phase; the hidden parts (true context,
    /// latent causes, which robot) drawn from their distribution given that. The
    /// clairvoyant floor averages residuals over these.
    fn resample(&self, rng: &mut SimRng) -> Box<dyn Episode>;
}

/// The fixed facts of a world: what the report shows and what every episode shares.
#[derive(Debug)]
pub struct WorldMeta {
    /// Its name (`qis sim --world NAME`).
    pub name: &'static str,
    /// What it tests, in one line.
    pub summary: &'static str,
    /// Names of the state components, with units.
    pub state_names: &'static [&'static str],
    /// Scale of each component in the pooled, normalized error (what an engineer would
    /// call a meaningful error in that unit).
    pub state_scale: &'static [f64],
    /// Names of the numeric features.
    pub feature_names: &'static [&'static str],
    /// The world models' ids (`model_id`), one or more.
    pub models: &'static [&'static str],
}

/// A simulated world of the zoo.
pub trait World: Send + Sync {
    /// Its name, summary, state, features and models.
    fn meta(&self) -> &'static WorldMeta;
    /// Its name (`qis sim --world NAME`).
    fn name(&self) -> &'static str {
        self.meta().name
    }
    /// What it tests, in one line.
    fn summary(&self) -> &'static str {
        self.meta().summary
    }
    /// Names of the state components, with units.
    fn state_names(&self) -> &'static [&'static str] {
        self.meta().state_names
    }
    /// Scale of each component in the pooled, normalized error.
    fn state_scale(&self) -> &'static [f64] {
        self.meta().state_scale
    }
    /// Names of the numeric features.
    fn feature_names(&self) -> &'static [&'static str] {
        self.meta().feature_names
    }
    /// The world models' ids (`model_id`), one or more.
    fn models(&self) -> &'static [&'static str] {
        self.meta().models
    }
    /// The fingerprint bins a user of this world declares (the only setting a world
    /// changes from the node's shipped defaults).
    fn fingerprint_config(&self) -> FingerprintConfig;
    /// Its change in mid-run, if any.
    fn change(&self) -> Option<Change>;
    /// Class resamples the clairvoyant floor averages per class.
    fn floor_samples(&self) -> usize {
        DEFAULT_FLOOR_SAMPLES
    }
    /// Draws robot `robot`'s episode of round `round`.
    fn draw(&self, robot: usize, round: usize, rng: &mut SimRng) -> Box<dyn Episode>;
    /// The validation envelope of the world model: the largest |reality − prediction| per
    /// component over many episodes, what an engineer who validated the model offline
    /// would configure as a plausibility gate (the ground-truth experiment only).
    fn residual_envelope(&self, rng: &mut SimRng) -> Vec<f64> {
        let mut envelope = vec![0.0_f64; self.state_names().len()];
        for i in 0..ENVELOPE_EPISODES {
            let episode = self.draw(i % 64, 0, rng);
            let predicted = episode.predict();
            let measured = episode.outcome(rng);
            for (e, (m, p)) in envelope.iter_mut().zip(measured.iter().zip(&predicted)) {
                *e = e.max((m - p).abs());
            }
        }
        envelope
    }
}

/// Class resamples per class of the clairvoyant floor: its estimate of a class mean has
/// a standard error of σ/√64, which inflates the floor's RMSE by √(1 + 1/64) ≈ 1.008.
pub const DEFAULT_FLOOR_SAMPLES: usize = 64;
/// Episodes drawn to measure a world model's validation envelope.
const ENVELOPE_EPISODES: usize = 40_000;

/// The worlds of the zoo (`--world`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorldKind {
    /// An emergency stop of a wheeled robot (the original world).
    Braking,
    /// A plate pushed across a table toward its edge, on rapier3d physics.
    Plate,
    /// A gripper placing objects whose class perception sometimes gets wrong.
    Gripper,
    /// AGVs driving to a dock on worn tires, on a floor that gets wet in mid-run.
    Dock,
}

impl WorldKind {
    /// Every world, in table order.
    pub const ALL: [WorldKind; 4] = [
        WorldKind::Braking,
        WorldKind::Plate,
        WorldKind::Gripper,
        WorldKind::Dock,
    ];

    /// Builds the world for a run.
    pub fn build(self, setup: &WorldSetup) -> Box<dyn World> {
        match self {
            WorldKind::Braking => Box::new(braking::Braking::new(setup)),
            WorldKind::Plate => Box::new(plate::Plate::new(setup)),
            WorldKind::Gripper => Box::new(gripper::Gripper::new(setup)),
            WorldKind::Dock => Box::new(dock::Dock::new(setup)),
        }
    }

    /// The fingerprint bins of this world (what its users declare).
    pub fn fingerprint_config(self) -> FingerprintConfig {
        match self {
            WorldKind::Braking => braking::fingerprint_config(),
            WorldKind::Plate => plate::fingerprint_config(),
            WorldKind::Gripper => gripper::fingerprint_config(),
            WorldKind::Dock => dock::fingerprint_config(),
        }
    }

    /// Robots and rounds of its default run (`qis sim --world NAME` without `--robots`,
    /// `--episodes`): the braking world's 600 × 300; the physics world is smaller, as a
    /// rapier3d episode costs ~0.4 ms.
    pub fn default_fleet(self) -> (usize, usize) {
        match self {
            WorldKind::Braking => (super::DEFAULT_ROBOTS, super::DEFAULT_EPISODES),
            WorldKind::Plate => (200, 200),
            WorldKind::Gripper | WorldKind::Dock => (300, 300),
        }
    }

    /// The name `--world` takes.
    pub fn name(self) -> &'static str {
        match self {
            WorldKind::Braking => "braking",
            WorldKind::Plate => "plate",
            WorldKind::Gripper => "gripper",
            WorldKind::Dock => "dock",
        }
    }
}

/// One standard normal draw.
/// The fingerprint config a world's user declares: these bins per feature, the node's
/// default policy for unknown features, no fleet secret.
pub(crate) fn bins(features: &[(&str, Bins)]) -> FingerprintConfig {
    FingerprintConfig {
        features: features
            .iter()
            .map(|(name, b)| ((*name).to_owned(), b.clone()))
            .collect(),
        unknown_features: UnknownFeatures::Error,
        fleet_secret_file: None,
    }
}

/// Bins `width` wide from 0.
pub(crate) fn width(width: f64) -> Bins {
    Bins::Width { width, origin: 0.0 }
}

/// A normal draw around `mean` with spread `sd`, kept within `range`.
pub(crate) fn clamped_normal(rng: &mut SimRng, mean: f64, sd: f64, range: (f64, f64)) -> f64 {
    (mean + sd * normal(rng)).clamp(range.0, range.1)
}

pub(crate) fn normal(rng: &mut SimRng) -> f64 {
    StandardNormal.sample(rng)
}

/// Most draws [`redraw_in_bin`] tries before it keeps the last one.
const MAX_REDRAWS: usize = 100_000;

/// Draws from `draw` until the value falls in the same bin of `bins` as `x` (rejection
/// sampling: exact for the conditional distribution of the bin), at most
/// [`MAX_REDRAWS`] times; `x` itself if none does.
pub(crate) fn redraw_in_bin(
    x: f64,
    bins: &Bins,
    rng: &mut SimRng,
    mut draw: impl FnMut(&mut SimRng) -> f64,
) -> f64 {
    let target = bins.quantize(x);
    for _ in 0..MAX_REDRAWS {
        let y = draw(rng);
        if bins.quantize(y) == target {
            return y;
        }
    }
    x
}

/// The bins of feature `name` in `config` (worlds build their configs with every feature).
pub(crate) fn bins_of<'a>(config: &'a FingerprintConfig, name: &str) -> &'a Bins {
    &config.features[name]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn setup() -> WorldSetup {
        WorldSetup {
            seed: 3,
            robots: 20,
            rounds: 40,
            zipf_exponent: 1.0,
        }
    }

    /// Every world: valid bins, consistent dimensions, finite predictions and outcomes,
    /// and a resample lands in the same class.
    #[test]
    fn every_world_is_consistent_and_resamples_within_its_class() {
        for kind in WorldKind::ALL {
            let world = kind.build(&setup());
            assert_eq!(world.name(), kind.name());
            let fp = world.fingerprint_config().validate().unwrap();
            let dim = world.state_names().len();
            assert_eq!(world.state_scale().len(), dim);
            let names: Vec<String> = world
                .feature_names()
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            let mut rng = SimRng::seed_from_u64(5);
            for i in 0..200 {
                let e = world.draw(i % 20, (i * 7) % 40, &mut rng);
                assert!(e.model() < world.models().len());
                let p = e.predict();
                let o = e.outcome(&mut rng);
                assert_eq!((p.len(), o.len()), (dim, dim), "{}", kind.name());
                assert!(p.iter().chain(&o).all(|v| v.is_finite()), "{}", kind.name());
                let class = fp.fingerprint(&e.tags(), &names, &e.features()).unwrap();
                let again = e.resample(&mut rng);
                assert_eq!(
                    fp.fingerprint(&again.tags(), &names, &again.features())
                        .unwrap(),
                    class,
                    "{}: a resample leaves its class",
                    kind.name()
                );
                assert_eq!(again.model(), e.model());
                assert_eq!(again.phase(), e.phase());
            }
        }
    }
}
