//! `qis sim`: a fleet of simulated robots whose world model is wrong in the ways real
//! ones are, run through the qis loop and compared with three baselines on the same
//! episodes (see docs/BENCHMARKS.md for figures).
//!
//! - [`worlds`]: the zoo of worlds (the [`worlds::World`] trait; braking, a plate on
//!   rapier3d physics, a gripper with wrong tags, AGVs on worn tires), each a reality, a
//!   biased world model and the fingerprint bins its users declare;
//! - [`exchange`]: the [`exchange::Exchange`] trait and the in-process bus;
//! - [`zenoh_net`]: the same trait over real Zenoh sessions on loopback;
//! - [`fleet`]: the robots (each one a [`crate::node::NodeLogic`] with the node's shipped
//!   parameters, or a `qis_node` over ROS 2 topics), the attackers (bias, Sybil
//!   rotation, seq hijack) and the round-based driver;
//! - [`baselines`]: raw, local-only, qis and central-oracle predictors and their errors;
//!   [`floor`]: the clairvoyant floor; [`learner`]: the central k-NN learner;
//!   [`recovery`]: how fast each follows a change in mid-run;
//! - [`report`]: table and JSON output; [`plot`]: the SVG error curves; [`zoo`]: every
//!   world in one table (`--world all`);
//! - [`cli`]: the `qis sim` arguments.

pub mod baselines;
pub mod cli;
pub mod exchange;
pub mod fleet;
pub mod floor;
pub mod learner;
pub mod plot;
pub mod recovery;
pub mod report;
pub mod ros_node;
pub mod worlds;
pub mod zenoh_net;
pub mod zoo;

use rand::SeedableRng;
use serde::Serialize;
use thiserror::Error;

use crate::core::fingerprint::{FingerprintConfigError, FingerprintError};
use crate::core::ids::IdError;
use crate::core::memory::MemoryError;
use crate::core::neighbors::NeighborError;
use crate::core::summary::SummaryError;
use crate::core::synthesis::{SynthesisConfigError, SynthesisError};
use crate::fleet::RepublishPolicy;
use crate::fleet::republish::DEFAULT_REPUBLISH_GROWTH;
use crate::node::{InputError, NodeParams, ParamError};

pub use report::SimReport;
pub use worlds::WorldKind;

/// The simulator's random number generator: seeded, portable, reproducible.
pub type SimRng = rand_chacha::ChaCha8Rng;

/// Default number of robots.
pub const DEFAULT_ROBOTS: usize = 600;
/// Default number of rounds (episodes per robot present the whole run).
pub const DEFAULT_EPISODES: usize = 300;
/// Default seed.
pub const DEFAULT_SEED: u64 = 7;
/// Prior strength k0 that suits this world (`--k0 1`), the simulator's default before it
/// ran the node's shipped defaults: the world model's error here is a large per-class bias
/// with a small spread inside a class (about 0.1 of the raw error), so empirical Bayes puts
/// k0 = spread² / bias² well below 1. Knowledge of the world, so not the default: the
/// robots run the node's k0 (5).
pub const SIM_PRIOR_STRENGTH: f64 = 1.0;

/// Robots `--network auto` puts on real Zenoh sessions (the first ones; the rest of the
/// fleet runs on the in-process bus). One session per robot costs a follow time that
/// grows with the number of sessions (see docs/BENCHMARKS.md): 40 keeps the default run
/// under 2 minutes on 2 cores.
pub const DEFAULT_ZENOH_ROBOTS: usize = 40;
/// Above this many robots `--network auto` uses the bus only.
pub const AUTO_ZENOH_MAX_FLEET: usize = 2_000;
/// Fleet name of the simulated fleet's key space (bus and Zenoh alike).
pub const SIM_FLEET: &str = "sim";
/// Default rounds between two Sybil identities of one attacker (`--sybil-rounds`).
pub const DEFAULT_SYBIL_ROUNDS: usize = 5;
/// Default forged records an attacker puts per episode in the seq hijack (`--hijack-per-episode`).
pub const DEFAULT_HIJACK_PER_EPISODE: usize = 2;

/// What the attackers do (`--attack`); every mode also biases what they publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttackMode {
    /// Publish every residual shifted by `attack_bias` × scale, under the own source id.
    Bias,
    /// The bias, under a fresh self-certified source id every `sybil_rounds` rounds, so
    /// the attacker's sources are always young.
    Sybil,
    /// The bias, and forged records under honest robots' source ids with seq = u64::MAX
    /// and a biased mean, signed with the attacker's own key.
    Hijack,
    /// Sybil rotation and the seq hijack together.
    All,
}

impl AttackMode {
    /// Whether attackers rotate source ids.
    pub fn sybil(self) -> bool {
        matches!(self, AttackMode::Sybil | AttackMode::All)
    }

    /// Whether attackers forge records under honest source ids.
    pub fn hijack(self) -> bool {
        matches!(self, AttackMode::Hijack | AttackMode::All)
    }

    /// The name `--attack` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttackMode::Bias => "bias",
            AttackMode::Sybil => "sybil",
            AttackMode::Hijack => "hijack",
            AttackMode::All => "all",
        }
    }
}

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
    /// The node parameters were refused.
    #[error(transparent)]
    Params(ParamError),
    /// A simulated robot's node refused the prediction or outcome it was fed.
    #[error("node input: {0}")]
    Node(#[from] InputError),
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
    /// The world the fleet lives in.
    pub world: WorldKind,
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
    /// The exchange's traffic budget (`exchange.republish_growth`, the product's rule): a
    /// record the privacy budget lets out is put only when the own count grew by this
    /// factor since the version last put (1 = every record the privacy budget lets out).
    pub republish_growth: f64,
    /// Fraction of robots that publish poisoned records.
    pub attackers: f64,
    /// Bias an attacker adds to every residual, in units of each component's scale.
    pub attack_bias: f64,
    /// What the attackers do besides the bias.
    pub attack: AttackMode,
    /// Rounds between two Sybil identities of one attacker.
    pub sybil_rounds: usize,
    /// Forged records an attacker puts per episode in the seq hijack (under the honest
    /// sources it holds at the episode's address, the largest counts first).
    pub hijack_per_episode: usize,
    /// Attackers share only what the privacy budget lets out, as an unmodified node with a
    /// biased sensor would; false (default) = every outcome at once, as a hostile one.
    pub attackers_keep_budget: bool,
    /// Experiment only (off by default): a plausibility gate (`synthesis.max_residual`)
    /// taken from the simulator's ground truth, this multiple of the world model's
    /// validation envelope ([`worlds::World::residual_envelope`]); 0 = off, each robot learns its
    /// gate from its own outcomes as the node does.
    pub plausibility_margin: f64,
    /// Seal every record on the bus with its writer's key and open it at every receiver,
    /// as the product does (default); false = honest records take the in-memory path
    /// (forged and Sybil records are sealed and opened either way).
    pub sign_records: bool,
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
    /// The parameters every simulated robot's node runs with: the node's shipped defaults
    /// with the world's bins ([`sim_node_params`]) unless an experiment changes them. Local-only and the oracle
    /// use its synthesis settings too (without the gate each robot learns).
    #[serde(skip)]
    pub node: NodeParams,
}

/// The node parameters of a simulated robot in `world`: `NodeParams::default()` (what
/// config/qis.yaml ships), with what any user must declare for that world: its fleet
/// name, its feature bins (the fingerprint), and simulated time.
pub fn sim_node_params(world: WorldKind) -> NodeParams {
    NodeParams {
        fleet: SIM_FLEET.into(),
        use_sim_time: true,
        fingerprint: world.fingerprint_config(),
        ..NodeParams::default()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::for_world(WorldKind::Braking)
    }
}

impl SimConfig {
    /// The default run of `world`: its default fleet size, the node's shipped defaults
    /// with the world's bins.
    pub fn for_world(world: WorldKind) -> SimConfig {
        let (robots, episodes) = world.default_fleet();
        SimConfig {
            world,
            robots,
            episodes,
            node: sim_node_params(world),
            ..SimConfig::braking()
        }
    }

    fn braking() -> SimConfig {
        SimConfig {
            world: WorldKind::Braking,
            seed: DEFAULT_SEED,
            robots: DEFAULT_ROBOTS,
            episodes: DEFAULT_EPISODES,
            episode_interval_s: 30.0,
            delay_ms: 20.0,
            zipf_exponent: 1.0,
            late_join_fraction: 0.25,
            leave_fraction: 0.15,
            max_sources_per_address: 16,
            republish_growth: DEFAULT_REPUBLISH_GROWTH,
            attackers: 0.0,
            attack_bias: 50.0,
            attack: AttackMode::All,
            sybil_rounds: DEFAULT_SYBIL_ROUNDS,
            hijack_per_episode: DEFAULT_HIJACK_PER_EPISODE,
            attackers_keep_budget: false,
            plausibility_margin: 0.0,
            sign_records: true,
            windows: 20,
            warmup_fraction: 0.25,
            zenoh_robots: 0,
            ros_robots: 0,
            node: sim_node_params(WorldKind::Braking),
        }
    }

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
        self.republish()?;
        if self.sybil_rounds == 0 {
            return bad("sybil_rounds", "must be at least 1");
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
        // One validation of the node's parameters, the node's own.
        self.node.validate().map_err(SimError::Params)?;
        Ok(())
    }

    /// The exchange's republish rule with this run's growth factor.
    pub fn republish(&self) -> Result<RepublishPolicy, SimError> {
        RepublishPolicy::new(self.republish_growth).map_err(|e| SimError::Config {
            field: "republish_growth",
            reason: e.to_string(),
        })
    }

    /// Whether the robots run the node's shipped defaults (`NodeParams::default()` with
    /// this world's bins, [`sim_node_params`]) and no ground-truth gate. The traffic
    /// budget (`republish_growth`) and the fan-in are the exchange's, the product's
    /// defaults unless an experiment changes them.
    pub fn shipped_defaults(&self) -> bool {
        self.plausibility_margin == 0.0 && self.node == sim_node_params(self.world)
    }

    /// Experiment only: these settings with `synthesis.max_residual` set to
    /// `plausibility_margin` times the world model's validation envelope (ground truth no
    /// robot has), unless a gate is already configured or the margin is 0 (the default:
    /// every robot learns its gate from its own outcomes). The envelope comes from its
    /// own random stream, so it does not shift the episodes.
    pub fn with_plausibility_gate(&self) -> SimConfig {
        let mut config = self.clone();
        if self.plausibility_margin > 0.0 && self.node.synthesis.max_residual.is_empty() {
            let mut rng = SimRng::seed_from_u64(self.seed ^ 0xE57E_1093);
            let world = self.world.build(&worlds::WorldSetup {
                seed: self.seed,
                robots: self.robots,
                rounds: self.episodes,
                zipf_exponent: self.zipf_exponent,
            });
            let envelope = world.residual_envelope(&mut rng);
            config.node.synthesis.max_residual = envelope
                .iter()
                .map(|e| e * self.plausibility_margin)
                .collect();
        }
        config
    }
}

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
