//! The `qis sim` command line: arguments, progress bar, output files.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    AUTO_ZENOH_MAX_FLEET, AttackMode, DEFAULT_SEED, DEFAULT_ZENOH_ROBOTS, SimConfig, SimError,
    SimReport, WorldKind,
};

/// `--network`: which exchange joins the robots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkChoice {
    /// `--zenoh-robots` robots on real Zenoh, the rest on the bus; the bus only above
    /// 2,000 robots.
    Auto,
    /// Real Zenoh sessions on 127.0.0.1, one per robot, whatever the fleet size.
    Zenoh,
    /// The in-process bus.
    Bus,
}

/// `--world`: which world of the zoo, or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorldChoice {
    /// An emergency stop of a wheeled robot (the original world).
    Braking,
    /// A plate pushed toward a table's edge, on rapier3d physics.
    Plate,
    /// A gripper placing objects whose class perception sometimes gets wrong.
    Gripper,
    /// AGVs on worn tires, a floor that gets wet in mid-run.
    Dock,
    /// Every world, one after the other, on the bus; one summary table.
    All,
}

impl WorldChoice {
    /// The worlds this choice runs.
    pub fn worlds(self) -> Vec<WorldKind> {
        match self {
            WorldChoice::Braking => vec![WorldKind::Braking],
            WorldChoice::Plate => vec![WorldKind::Plate],
            WorldChoice::Gripper => vec![WorldKind::Gripper],
            WorldChoice::Dock => vec![WorldKind::Dock],
            WorldChoice::All => WorldKind::ALL.to_vec(),
        }
    }
}

/// Arguments of `qis sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// The world: braking (default), plate (rapier3d), gripper, dock, or all (each in
    /// turn on the in-process bus, neighbors on and off, one summary table).
    #[arg(long, value_enum, default_value_t = WorldChoice::Braking)]
    pub world: WorldChoice,
    /// Robots in the fleet (25% join late, 15% leave early); default: the world's
    /// (600 braking, 200 plate, 300 gripper and dock).
    #[arg(long)]
    pub robots: Option<usize>,
    /// Rounds: episodes per robot present for the whole run; default: the world's (300
    /// braking, 200 plate, 300 gripper and dock).
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Seed of every random stream; the same seed gives the same figures.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Folder for results.json and rmse.svg (created if missing).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Fraction of robots that publish poisoned records (e.g. 0.1); reports RMSE with and
    /// without the attack on the same episodes.
    #[arg(long, default_value_t = 0.0)]
    pub attackers: f64,
    /// Bias an attacker adds to every residual it publishes, in units of each component's
    /// scale (50 = huge, 2 = subtle).
    #[arg(long, default_value_t = SimConfig::default().attack_bias, allow_hyphen_values = true)]
    pub attack_bias: f64,
    /// What attackers do besides the bias: bias only; sybil = a fresh self-certified source
    /// id every --sybil-rounds rounds; hijack = also forged records under honest robots'
    /// source ids with seq = u64::MAX (signed with the attacker's key, opened by every
    /// receiver's admission check); all = sybil and hijack.
    #[arg(long, value_enum, default_value_t = AttackMode::All)]
    pub attack: AttackMode,
    /// Rounds between two Sybil identities of one attacker.
    #[arg(long, default_value_t = SimConfig::default().sybil_rounds)]
    pub sybil_rounds: usize,
    /// Forged records an attacker puts per episode in the seq hijack.
    #[arg(long, default_value_t = SimConfig::default().hijack_per_episode)]
    pub hijack_per_episode: usize,
    /// Attackers share only what the privacy budget lets out (an unmodified node with a
    /// biased sensor); default: every outcome at once (a hostile node).
    #[arg(long)]
    pub attackers_keep_budget: bool,
    /// Experiment, not the product: a plausibility gate taken from the simulator's ground
    /// truth, this multiple of the world model's validation envelope (no robot has it);
    /// 0 (default) = every robot learns its gate from its own outcomes, as the node does.
    #[arg(long, default_value_t = SimConfig::default().plausibility_margin)]
    pub plausibility_margin: f64,
    /// Honest records on the in-process bus go unsigned (in memory) instead of sealed with
    /// the writer's key and opened by every receiver; forged and Sybil records are sealed
    /// and opened either way, Zenoh robots always sign. Faster for large fleets.
    #[arg(long)]
    pub unsigned_bus: bool,
    /// Privacy budget k (`min_count_to_share`): an address is shared after k own outcomes
    /// and republished after k more; 1 = no privacy.
    #[arg(long, default_value_t = SimConfig::default().node.min_count_to_share)]
    pub min_count_to_share: u64,
    /// Exchange: zenoh = every robot on its own real Zenoh session (clients of one
    /// in-process router with storage, 127.0.0.1 only); bus = the in-process exchange;
    /// auto = the first --zenoh-robots robots on Zenoh and the rest on the bus (records
    /// cross both ways), the bus only above 2,000 robots.
    #[arg(long, value_enum, default_value_t = NetworkChoice::Auto)]
    pub network: NetworkChoice,
    /// Robots on real Zenoh sessions under `--network auto`.
    #[arg(long, default_value_t = DEFAULT_ZENOH_ROBOTS)]
    pub zenoh_robots: usize,
    /// Robots whose prediction/outcome loop runs through a real `qis_node` (in-process,
    /// over ROS 2 topics on a loopback Zenoh router), its fleet port wired to the
    /// simulated exchange; 0 disables.
    #[arg(long, default_value_t = super::ros_node::DEFAULT_ROS_ROBOTS)]
    pub ros_robots: usize,
    /// Delivery delay of the in-process exchange, milliseconds.
    #[arg(long, default_value_t = SimConfig::default().delay_ms)]
    pub delay_ms: f64,
    /// Most sources a robot follows per address (fan-in budget).
    #[arg(long, default_value_t = SimConfig::default().max_sources_per_address)]
    pub max_sources: usize,
    /// Bound of each robot's received records (memory per node).
    #[arg(long, default_value_t = SimConfig::default().node.memory.max_received_records)]
    pub max_received_records: usize,
    /// Zipf exponent of the class frequencies.
    #[arg(long, default_value_t = SimConfig::default().zipf_exponent)]
    pub zipf: f64,
    /// Traffic budget on top of the privacy budget: a record is republished only when its
    /// own count grew by this factor since the last publication (1 = off).
    #[arg(long, default_value_t = SimConfig::default().republish_growth)]
    pub republish_growth: f64,
    /// Prior strength k0 of the shrinkage (qis, local-only and oracle alike).
    #[arg(long, default_value_t = SimConfig::default().node.synthesis.prior_strength)]
    pub k0: f64,
    /// Borrow from up to this many similar addresses (faiss over scenario sketches) when
    /// a class has fewer than min_support outcomes (`neighbors_k`); 0 = exact only.
    #[arg(long, default_value_t = SimConfig::default().node.neighbors_k)]
    pub neighbors: usize,
    /// Trust tolerance in scale units (a source whose claims miss this robot's outcomes by
    /// more loses weight); 0 turns trust off.
    #[arg(long, default_value_t = SimConfig::default().node.trust.tolerance)]
    pub trust_tolerance: f64,
    /// Trust scale per state component, comma separated (`trust.scale`: the units trust
    /// gaps are measured in; one value = all components); absent = 1 for all, the node's
    /// default (`1,0.25,0.1,0.25` = the error metric's scales).
    #[arg(long, value_delimiter = ',')]
    pub trust_scale: Vec<f64>,
    /// Weight factor of a source never judged (`trust.initial`; 1 = trust is only lost).
    #[arg(long, default_value_t = SimConfig::default().node.trust.initial)]
    pub trust_initial: f64,
    /// Agreeing judgements a source needs to reach full weight (`trust.earn_outcomes`).
    #[arg(long, default_value_t = SimConfig::default().node.trust.earn_outcomes)]
    pub trust_earn_outcomes: f64,
    /// Most weight young sources carry together at an address (`synthesis.max_young_weight`).
    #[arg(long, default_value_t = SimConfig::default().node.synthesis.max_young_weight)]
    pub max_young_weight: f64,
    /// Learned gate = this multiple of each robot's residual envelope
    /// (`validation.envelope_margin`; 0 = no learned gate).
    #[arg(long, default_value_t = SimConfig::default().node.validation.envelope_margin)]
    pub envelope_margin: f64,
    /// Own outcomes before the learned gate applies (`validation.envelope_min_outcomes`).
    #[arg(long, default_value_t = SimConfig::default().node.validation.envelope_min_outcomes)]
    pub envelope_min_outcomes: u64,
    /// Exact support (outcomes) below which neighbors are borrowed.
    #[arg(long, default_value_t = SimConfig::default().node.synthesis.min_support)]
    pub min_support: f64,
    /// Robust z-score above which a source is down-weighted.
    #[arg(long, default_value_t = SimConfig::default().node.synthesis.outlier_z)]
    pub outlier_z: f64,
}

impl SimArgs {
    /// How many robots `--network` puts on real Zenoh for a fleet of `robots`.
    pub fn zenoh_robots(&self, robots: usize) -> usize {
        match self.network {
            NetworkChoice::Zenoh => robots,
            NetworkChoice::Bus => 0,
            NetworkChoice::Auto if robots > AUTO_ZENOH_MAX_FLEET => 0,
            NetworkChoice::Auto => self.zenoh_robots.min(robots),
        }
    }

    /// The simulation settings these arguments describe for the first world they name
    /// (see [`SimArgs::config_for`]).
    pub fn config(&self) -> SimConfig {
        self.config_for(self.world.worlds()[0])
    }

    /// The simulation settings these arguments describe in `world`: the node's shipped
    /// parameters with the world's bins and what the flags change (each flag's default
    /// is the node's).
    pub fn config_for(&self, world: WorldKind) -> SimConfig {
        let d = SimConfig::for_world(world);
        let robots = self.robots.unwrap_or(d.robots);
        let mut node = d.node.clone();
        node.min_count_to_share = self.min_count_to_share;
        node.memory.max_received_records = self.max_received_records;
        node.neighbors_k = self.neighbors;
        node.synthesis.prior_strength = self.k0;
        node.synthesis.outlier_z = self.outlier_z;
        node.synthesis.min_support = self.min_support;
        node.synthesis.max_young_weight = self.max_young_weight;
        node.trust.tolerance = self.trust_tolerance;
        node.trust.initial = self.trust_initial;
        node.trust.earn_outcomes = self.trust_earn_outcomes;
        if !self.trust_scale.is_empty() {
            node.trust.scale = self.trust_scale.clone();
        }
        node.validation.envelope_margin = self.envelope_margin;
        node.validation.envelope_min_outcomes = self.envelope_min_outcomes;
        SimConfig {
            seed: self.seed,
            robots,
            episodes: self.episodes.unwrap_or(d.episodes),
            attackers: self.attackers,
            attack_bias: self.attack_bias,
            attack: self.attack,
            sybil_rounds: self.sybil_rounds,
            hijack_per_episode: self.hijack_per_episode,
            attackers_keep_budget: self.attackers_keep_budget,
            plausibility_margin: self.plausibility_margin,
            sign_records: !self.unsigned_bus,
            delay_ms: self.delay_ms,
            max_sources_per_address: self.max_sources,
            zipf_exponent: self.zipf,
            republish_growth: self.republish_growth,
            zenoh_robots: self.zenoh_robots(robots),
            ros_robots: self.ros_robots.min(robots),
            node,
            ..d
        }
    }
}

/// Runs `qis sim`: simulates, prints the table, writes results.json and rmse.svg
/// (`--world all`: every world, one summary table, zoo.json).
pub fn run(args: &SimArgs) -> Result<Vec<SimReport>, SimError> {
    if args.world == WorldChoice::All {
        return super::zoo::run_cli(args);
    }
    run_one(args).map(|r| vec![r])
}

/// Runs one world as `qis sim --world NAME` does.
fn run_one(args: &SimArgs) -> Result<SimReport, SimError> {
    let config = args.config();
    config.validate()?;
    let z = config.zenoh_robots;
    match args.network {
        NetworkChoice::Auto if z == 0 => println!(
            "network: {} robots > {AUTO_ZENOH_MAX_FLEET}: in-process bus only (`--network zenoh` forces one Zenoh session per robot)",
            config.robots
        ),
        _ if z == 0 => println!("network: in-process bus only"),
        _ if z == config.robots => println!(
            "network: real Zenoh for all {z} robots (one client session each, one in-process router with storage, 127.0.0.1)"
        ),
        _ => println!(
            "network: real Zenoh for {z} of {} robots (one client session each, one in-process router with storage, 127.0.0.1); the other {} on the in-process bus, records crossing both ways",
            config.robots,
            config.robots - z
        ),
    }
    if config.ros_robots > 0 {
        println!(
            "ros: up to {} robots (the last ones present the whole run) run through their own qis_node over ROS 2 topics (in-process nodes, loopback Zenoh router)",
            config.ros_robots
        );
    }
    let bar = progress_bar(config.episodes);
    let report = super::run(&config, &mut |round| bar.set_position(round as u64))?;
    bar.finish_and_clear();
    print!("{}", report.table());
    create_out(&args.out)?;
    let json = args.out.join("results.json");
    let svg = args.out.join("rmse.svg");
    report.write_json(&json)?;
    report.write_svg(&svg)?;
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(report)
}

/// A progress bar over `rounds` rounds on a terminal, hidden otherwise.
pub fn progress_bar(rounds: usize) -> ProgressBar {
    let bar = ProgressBar::new(rounds as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] round {pos}/{len} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Creates the output folder.
pub fn create_out(out: &std::path::Path) -> Result<(), SimError> {
    std::fs::create_dir_all(out).map_err(|source| SimError::Io {
        path: out.display().to_string(),
        source,
    })
}
