//! `qis sim`: a fleet of simulated robots whose world model is wrong in the ways real
//! ones are, run through the qis loop and compared with three baselines on the same
//! episodes (see docs/BENCHMARKS.md for figures).
//!
//! - [`world`]: the braking physics, the biased world model, the Zipf mix of classes;
//! - [`exchange`]: the [`exchange::Exchange`] trait and the in-process bus;
//! - [`zenoh_net`]: the same trait over real Zenoh sessions on loopback;
//! - [`fleet`]: the robots and the round-based driver;
//! - [`trust`]: per-source trust earned from outcomes;
//! - [`baselines`]: raw, local-only, qis and central-oracle predictors and their errors;
//! - [`report`]: table and JSON output; [`plot`]: the SVG error curves;
//! - [`cli`]: the `qis sim` arguments.

pub mod baselines;
pub mod cli;
pub mod exchange;
pub mod fleet;
pub mod plot;
pub mod report;
pub mod ros_node;
pub mod world;
pub mod zenoh_net;

use rand::SeedableRng;
use serde::Serialize;
use thiserror::Error;

use crate::core::fingerprint::{FingerprintConfigError, FingerprintError};
use crate::core::ids::IdError;
use crate::core::memory::MemoryError;
use crate::core::neighbors::NeighborError;
use crate::core::summary::SummaryError;
use crate::core::synthesis::{SynthesisConfig, SynthesisConfigError, SynthesisError};

pub use report::SimReport;

/// The simulator's random number generator: seeded, portable, reproducible.
pub type SimRng = rand_chacha::ChaCha8Rng;

/// Default number of robots.
pub const DEFAULT_ROBOTS: usize = 600;
/// Default number of rounds (episodes per robot present the whole run).
pub const DEFAULT_EPISODES: usize = 300;
/// Default seed.
pub const DEFAULT_SEED: u64 = 7;
/// Prior strength k0 of the simulated fleet (qis, local-only and oracle alike). The
/// world model's error in this world is a large per-class bias with a small spread
/// inside a class (about 0.1 of the raw error), so one outcome already says much about
/// the class: empirical Bayes puts k0 = spread² / bias² well below 1; 1 is conservative.
/// The core default (5) suits noisier worlds; `--k0 5` shows that case.
pub const SIM_PRIOR_STRENGTH: f64 = 1.0;

/// Robots `--network auto` puts on real Zenoh sessions (the first ones; the rest of the
/// fleet runs on the in-process bus). One session per robot costs a follow time that
/// grows with the number of sessions (see docs/BENCHMARKS.md): 40 keeps the default run
/// under 2 minutes on 2 cores.
pub const DEFAULT_ZENOH_ROBOTS: usize = 40;
/// Above this many robots `--network auto` uses the bus only.
pub const AUTO_ZENOH_MAX_FLEET: usize = 2_000;

/// Why a simulation could not run or report.
#[derive(Debug, Error)]
pub enum SimError {
    /// A setting is out of range.
    #[error("sim config: {field}: {reason}")]
    Config {
        /// The bad setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The fingerprint config was refused.
    #[error(transparent)]
    Fingerprint(FingerprintConfigError),
    /// A scenario had no address.
    #[error(transparent)]
    Scenario(FingerprintError),
    /// The synthesis config was refused.
    #[error(transparent)]
    Synthesis(SynthesisConfigError),
    /// A scenario had no sketch.
    #[error(transparent)]
    Sketch(NeighborError),
    /// An identifier was refused.
    #[error(transparent)]
    Id(IdError),
    /// The outcome memory refused an update.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A prior could not be computed.
    #[error(transparent)]
    Prior(#[from] SynthesisError),
    /// A residual could not be pooled.
    #[error(transparent)]
    Summary(#[from] SummaryError),
    /// The exchange failed.
    #[error(transparent)]
    Exchange(#[from] exchange::ExchangeError),
    /// Writing results failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serializing results failed.
    #[error("serializing results: {0}")]
    Json(#[from] serde_json::Error),
    /// A robot running through `qis_node` failed (node, topics, router).
    #[error("qis_node robot: {0}")]
    Ros(String),
    /// Drawing the plot failed.
    #[error("plotting {path}: {reason}")]
    Plot {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Settings of one simulation (the CLI fills the common ones).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Robots in the fleet (some join late, some leave early).
    pub robots: usize,
    /// Rounds; each robot present in a round runs one episode.
    pub episodes: usize,
    /// Simulated time between a robot's episodes (s).
    pub episode_interval_s: f64,
    /// Delivery delay of the exchange (ms).
    pub delay_ms: f64,
    /// Zipf exponent of the class frequencies.
    pub zipf_exponent: f64,
    /// Fraction of robots that join after the start (in the first half).
    pub late_join_fraction: f64,
    /// Fraction of robots that leave before the end (in the second half).
    pub leave_fraction: f64,
    /// Most sources a robot follows per address (fan-in budget).
    pub max_sources_per_address: usize,
    /// Bound of each robot's received records (MemoryConfig).
    pub max_received_records: usize,
    /// A record is republished when the own count grew by this factor.
    pub republish_growth: f64,
    /// An address whose received records were all evicted is re-asked after this (s).
    pub refollow_s: f64,
    /// Fraction of robots that publish poisoned records.
    pub attackers: f64,
    /// Bias an attacker adds to every residual, in units of each component's scale.
    pub attack_bias: f64,
    /// The plausibility gate (`synthesis.max_residual`) as a multiple of the world model's
    /// validation envelope ([`world::residual_envelope`]); 0 = no gate.
    pub plausibility_margin: f64,
    /// Neighbor addresses borrowed from when exact support is thin (0 = exact only).
    pub neighbors: usize,
    /// Trust tolerance (scale units) of a source's claims against own outcomes; 0 = off.
    pub trust_tolerance: f64,
    /// Windows of the error curve.
    pub windows: usize,
    /// Fraction of rounds counted as warm-up.
    pub warmup_fraction: f64,
    /// Robots on real Zenoh sessions (the first ones to connect); the others, and all
    /// when 0, on the in-process bus.
    pub zenoh_robots: usize,
    /// Robots whose prediction/outcome loop runs through a real `qis_node` over ROS 2
    /// topics (the last ones present the whole run; 0 = none).
    pub ros_robots: usize,
    /// Synthesis settings shared by qis, local-only and the oracle.
    #[serde(skip)]
    pub synthesis: SynthesisConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: DEFAULT_SEED,
            robots: DEFAULT_ROBOTS,
            episodes: DEFAULT_EPISODES,
            episode_interval_s: 30.0,
            delay_ms: 20.0,
            zipf_exponent: 1.0,
            late_join_fraction: 0.25,
            leave_fraction: 0.15,
            max_sources_per_address: 16,
            max_received_records: 2048,
            republish_growth: 1.25,
            refollow_s: 600.0,
            attackers: 0.0,
            attack_bias: 50.0,
            plausibility_margin: 1.5,
            neighbors: 0,
            trust_tolerance: 3.0,
            windows: 20,
            warmup_fraction: 0.25,
            zenoh_robots: 0,
            ros_robots: 0,
            synthesis: SynthesisConfig {
                prior_strength: SIM_PRIOR_STRENGTH,
                ..SynthesisConfig::default()
            },
        }
    }
}

impl SimConfig {
    /// Checks every setting; names the bad one.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field, reason: &str| {
            Err(SimError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.robots == 0 || self.robots > u32::MAX as usize {
            return bad("robots", "must be at least 1");
        }
        if self.episodes == 0 {
            return bad("episodes", "must be at least 1");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let fraction = |v: f64| (0.0..=1.0).contains(&v);
        if !positive(self.episode_interval_s) {
            return bad("episode_interval_s", "must be finite and > 0");
        }
        if !(self.delay_ms.is_finite() && self.delay_ms >= 0.0) {
            return bad("delay_ms", "must be finite and >= 0");
        }
        if !positive(self.zipf_exponent) {
            return bad("zipf_exponent", "must be finite and > 0");
        }
        for (field, v) in [
            ("late_join_fraction", self.late_join_fraction),
            ("leave_fraction", self.leave_fraction),
            ("attackers", self.attackers),
            ("warmup_fraction", self.warmup_fraction),
        ] {
            if !fraction(v) {
                return bad(field, "must be in [0, 1]");
            }
        }
        if self.max_sources_per_address == 0 {
            return bad("max_sources_per_address", "must be at least 1");
        }
        if !(self.republish_growth.is_finite() && self.republish_growth >= 1.0) {
            return bad("republish_growth", "must be finite and >= 1");
        }
        if !(self.refollow_s.is_finite() && self.refollow_s >= 0.0) {
            return bad("refollow_s", "must be finite and >= 0");
        }
        if !(self.trust_tolerance.is_finite() && self.trust_tolerance >= 0.0) {
            return bad("trust_tolerance", "must be finite and >= 0 (0 = off)");
        }
        if !(self.plausibility_margin.is_finite() && self.plausibility_margin >= 0.0) {
            return bad(
                "plausibility_margin",
                "must be finite and >= 0 (0 = no gate)",
            );
        }
        if !self.attack_bias.is_finite() {
            return bad("attack_bias", "must be finite");
        }
        if self.zenoh_robots > self.robots {
            return bad("zenoh_robots", "must be at most robots");
        }
        if self.ros_robots > self.robots {
            return bad("ros_robots", "must be at most robots");
        }
        if self.windows == 0 {
            return bad("windows", "must be at least 1");
        }
        self.synthesis.validate().map_err(SimError::Synthesis)
    }

    /// The trust settings every robot (and its node) uses: gaps in units of each state
    /// component's scale.
    pub fn trust(&self) -> crate::core::trust::TrustConfig {
        crate::core::trust::TrustConfig {
            tolerance: self.trust_tolerance,
            scale: world::STATE_SCALE.to_vec(),
            ..crate::core::trust::TrustConfig::default()
        }
    }

    /// These settings with `synthesis.max_residual` set to `plausibility_margin` times
    /// the world model's validation envelope, unless a gate is already configured or the
    /// margin is 0. The envelope comes from its own random stream, so it does not shift
    /// the episodes.
    pub fn with_plausibility_gate(&self) -> SimConfig {
        let mut config = self.clone();
        if self.plausibility_margin > 0.0 && self.synthesis.max_residual.is_empty() {
            let mut rng = SimRng::seed_from_u64(self.seed ^ 0xE57E_1093);
            let envelope = world::residual_envelope(ENVELOPE_SAMPLES_PER_CONTEXT, &mut rng);
            config.synthesis.max_residual = envelope
                .iter()
                .map(|e| e * self.plausibility_margin)
                .collect();
        }
        config
    }
}

/// Situations drawn per context to measure the world model's validation envelope.
const ENVELOPE_SAMPLES_PER_CONTEXT: usize = 200;

/// Runs the simulation (twice when there are attackers: once without, for reference,
/// on the same episodes) and gathers the report. `progress` gets the rounds done.
pub fn run(config: &SimConfig, progress: &mut dyn FnMut(usize)) -> Result<SimReport, SimError> {
    config.validate()?;
    let config = &config.with_plausibility_gate();
    let started = std::time::Instant::now();
    let outcome = fleet::simulate(config, true, progress)?;
    let wall_s = started.elapsed().as_secs_f64();
    let clean = if config.attackers > 0.0 {
        // Same robots excluded from the figures, but they publish honestly.
        Some(fleet::simulate(config, false, &mut |_| {})?)
    } else {
        None
    };
    Ok(SimReport::new(config, &outcome, clean.as_ref(), wall_s))
}
