//! What a simulation run tells a person: the summary table and the results JSON (the SVG
//! plot of the error curves is drawn in [`super::plot`]).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::baselines::{
    BASELINES, BaselineResult, FLOOR, LEARNER, LOCAL, ORACLE, QIS, RAW, SUPPORT_BUCKETS,
};
use super::exchange::{Propagation, WireStats};
use super::fleet::{AttackCounts, MemoryFigures, RunOutcome, TrustPoint};
use super::recovery::{RECOVERED_OVER_FLOOR, RecoveryFigures};
use super::worlds::World;
use super::{SimConfig, SimError};

/// DESIGN 7: corrected-prior RMSE after warm-up at most this fraction of raw.
pub const TARGET_CORRECTED_OVER_RAW: f64 = 0.2;
/// DESIGN 7: first-encounter RMSE at most this fraction of raw (local-only gets 1.0).
pub const TARGET_FIRST_OVER_RAW: f64 = 0.3;
/// DESIGN 7: qis within 10 % of the central oracle.
pub const TARGET_OVER_ORACLE: f64 = 1.1;
/// DESIGN 7: where the floor is higher than 0.2 × raw, qis within 1.25 × the floor.
pub const TARGET_OVER_FLOOR: f64 = 1.25;
/// Issue 12: qis within 1.25 × the central learner that sees every raw residual.
pub const TARGET_OVER_LEARNER: f64 = 1.25;
/// Issue 12: after the mid-run change, back within 1.5 × the floor within this many
/// outcomes per address.
pub const TARGET_RECOVERY_OUTCOMES: usize = 20;

/// Per-robot traffic (honest robots, mean over those that took part).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WirePerRobot {
    /// Records published per robot.
    pub published_records: f64,
    /// Bytes published per robot.
    pub published_bytes: f64,
    /// Records received per robot (query replies and live updates).
    pub received_records: f64,
    /// Bytes received per robot.
    pub received_bytes: f64,
    /// Received records dropped as undecodable (total).
    pub dropped: u64,
    /// Received records the admission check refused (total): forgeries.
    pub refused: u64,
}

/// A DESIGN 7 target: the measured ratio, the bound and whether it is met.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Target {
    /// Measured ratio.
    pub measured: f64,
    /// Bound (met when measured ≤ bound).
    pub bound: f64,
    /// measured ≤ bound.
    pub met: bool,
}

impl Target {
    fn new(measured: f64, bound: f64) -> Target {
        Target {
            measured,
            bound,
            met: measured <= bound,
        }
    }
}

/// The DESIGN 7 correction-quality targets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Targets {
    /// qis RMSE after warm-up / raw RMSE after warm-up.
    pub corrected_over_raw: Target,
    /// qis first-encounter RMSE / raw first-encounter RMSE.
    pub first_encounter_over_raw: Target,
    /// qis RMSE after warm-up / oracle RMSE after warm-up.
    pub qis_over_oracle: Target,
    /// qis RMSE after warm-up / clairvoyant floor RMSE after warm-up.
    pub qis_over_floor: Target,
    /// qis RMSE after warm-up / central learner RMSE after warm-up.
    pub qis_over_learner: Target,
}

/// The world a run simulated, as the report names it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorldFigures {
    /// Its name (`--world`).
    pub name: String,
    /// What it tests.
    pub summary: String,
    /// Its world models' ids.
    pub models: Vec<String>,
    /// Names of the state components.
    pub state_names: Vec<String>,
    /// Scale of each component in the pooled, normalized RMSE.
    pub state_scale: Vec<f64>,
}

impl WorldFigures {
    /// What the report says about `world`.
    pub fn of(world: &dyn World) -> WorldFigures {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        WorldFigures {
            name: world.name().to_owned(),
            summary: world.summary().to_owned(),
            models: strings(world.models()),
            state_names: strings(world.state_names()),
            state_scale: world.state_scale().to_vec(),
        }
    }
}

/// The poisoning target (issue 6): qis RMSE after warm-up under attack at most this
/// many times the same run's without the attack.
pub const TARGET_ATTACKED_OVER_CLEAN: f64 = 1.1;

/// An attack scenario's effect on the qis corrected prior.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttackFigures {
    /// What the attackers did (`--attack`).
    pub mode: super::AttackMode,
    /// Robots that published poisoned records.
    pub attackers: usize,
    /// What they put on the wire and what the honest robots refused.
    pub counts: AttackCounts,
    /// qis RMSE after warm-up on the same episodes without the attack.
    pub qis_rmse_clean: f64,
    /// qis RMSE after warm-up under attack.
    pub qis_rmse_attacked: f64,
    /// qis first-encounter RMSE without the attack.
    pub qis_first_clean: f64,
    /// qis first-encounter RMSE under attack.
    pub qis_first_attacked: f64,
    /// Raw RMSE after warm-up under attack.
    pub raw_rmse: f64,
    /// Raw RMSE after warm-up without attack (equal: the same episodes are scored).
    pub raw_rmse_clean: f64,
    /// qis RMSE after warm-up, attacked / clean, against [`TARGET_ATTACKED_OVER_CLEAN`].
    pub attacked_over_clean: Target,
    /// Trust honest robots give attackers and honest sources, per window.
    pub trust_curve: Vec<TrustPoint>,
}

/// Process figures (not deterministic: they depend on the machine).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProcessFigures {
    /// Wall time of the simulated run (s).
    pub wall_s: f64,
    /// Episodes simulated per second of wall time.
    pub episodes_per_s: f64,
    /// Resident set size at the end (bytes), from /proc/self/status; 0 if unknown.
    pub rss_bytes: u64,
    /// Peak resident set size (bytes); 0 if unknown.
    pub peak_rss_bytes: u64,
}

/// The synthesis settings of the run (qis, local-only and oracle alike).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SynthesisFigures {
    /// Prior strength k0.
    pub prior_strength: f64,
    /// Exact support below which neighbors are borrowed.
    pub min_support: f64,
    /// Largest weight of one source.
    pub max_source_weight: f64,
    /// Robust z-score above which a source is down-weighted.
    pub outlier_z: f64,
    /// Half-life of an outcome's weight (s).
    pub half_life_s: f64,
    /// Plausibility gate per state component (`max_residual`, state units) when one is
    /// configured (the ground-truth experiment); empty = each robot learns its own.
    pub max_residual: Vec<f64>,
    /// The gate the honest robots had learned at the end, mean per component (state
    /// units); empty when a gate is configured or none was learned.
    pub learned_gate: Vec<f64>,
    /// The k0 per component learned by the honest robots (mean; empty = configured).
    pub learned_prior_strength: Vec<f64>,
    /// Young sources' total weight cap at an address (`max_young_weight`).
    pub max_young_weight: f64,
}

/// Everything a run reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// The settings.
    pub config: SimConfig,
    /// The synthesis settings.
    pub synthesis: SynthesisFigures,
    /// Scored episodes (honest robots).
    pub episodes: u64,
    /// Robots that took part, honest ones.
    pub robots: usize,
    /// Distinct classes met.
    pub classes: usize,
    /// Scored first encounters of a class other robots had seen.
    pub first_encounters: u64,
    /// First encounters per fleet-support bucket (see `support_buckets`).
    pub first_encounters_by_support: [u64; 3],
    /// Names of the fleet-support buckets.
    pub support_buckets: [&'static str; 3],
    /// The world.
    pub world: WorldFigures,
    /// Names of the state components.
    pub state_names: Vec<String>,
    /// Scale of each component in the pooled, normalized RMSE.
    pub state_scale: Vec<f64>,
    /// Rounds per point of the error curves.
    pub rounds_per_window: usize,
    /// Figures per predictor.
    pub baselines: Vec<BaselineResult>,
    /// DESIGN 7 targets.
    pub targets: Targets,
    /// How fast each predictor followed the world's change in mid-run, if it has one.
    pub recovery: Option<RecoveryFigures>,
    /// Refits of the central learner during the run.
    pub learner_refits: usize,
    /// The number of neighbours the central learner answered with at the end.
    pub learner_k: usize,
    /// Traffic per robot.
    pub wire_per_robot: WirePerRobot,
    /// Memory per robot.
    pub memory: MemoryFigures,
    /// Records held by the fleet's storage (the bus) at the end.
    pub storage_records: usize,
    /// Bytes held by the fleet's storage at the end.
    pub storage_bytes: usize,
    /// Propagation measured over real Zenoh (`None` on the bus, whose delay is configured).
    pub propagation: Option<Propagation>,
    /// The robots whose loop ran through `qis_node` over ROS 2 topics, if any.
    pub ros: Option<super::ros_node::RosFigures>,
    /// How many robots ran which implementation of the node.
    pub paths: super::fleet::RobotPaths,
    /// Attack scenario, when `attackers` > 0.
    pub attack: Option<AttackFigures>,
    /// Machine-dependent figures.
    pub process: ProcessFigures,
}

/// Reads a `Vm*` line of /proc/self/status, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

impl SimReport {
    /// Gathers the report of a run (`clean`: the same run without attack, if any).
    pub fn new(
        config: &SimConfig,
        run: &RunOutcome,
        clean: Option<&RunOutcome>,
        wall_s: f64,
    ) -> SimReport {
        let baselines = run.metrics.results();
        let ratio =
            |a: usize, b: usize, f: fn(&BaselineResult) -> f64| f(&baselines[a]) / f(&baselines[b]);
        let targets = Targets {
            corrected_over_raw: Target::new(
                ratio(QIS, RAW, |b| b.rmse_after_warmup),
                TARGET_CORRECTED_OVER_RAW,
            ),
            first_encounter_over_raw: Target::new(
                ratio(QIS, RAW, |b| b.rmse_first_encounter),
                TARGET_FIRST_OVER_RAW,
            ),
            qis_over_oracle: Target::new(
                ratio(QIS, ORACLE, |b| b.rmse_after_warmup),
                TARGET_OVER_ORACLE,
            ),
            qis_over_floor: Target::new(
                ratio(QIS, FLOOR, |b| b.rmse_after_warmup),
                TARGET_OVER_FLOOR,
            ),
            qis_over_learner: Target::new(
                ratio(QIS, LEARNER, |b| b.rmse_after_warmup),
                TARGET_OVER_LEARNER,
            ),
        };
        let k = run.honest_robots.max(1) as f64;
        let w: WireStats = run.wire_total;
        let attack = clean.map(|c| {
            let cb = c.metrics.results();
            AttackFigures {
                mode: config.attack,
                attackers: run.attackers,
                counts: run.attack,
                qis_rmse_clean: cb[QIS].rmse_after_warmup,
                qis_rmse_attacked: baselines[QIS].rmse_after_warmup,
                qis_first_clean: cb[QIS].rmse_first_encounter,
                qis_first_attacked: baselines[QIS].rmse_first_encounter,
                raw_rmse: baselines[RAW].rmse_after_warmup,
                raw_rmse_clean: cb[RAW].rmse_after_warmup,
                attacked_over_clean: Target::new(
                    baselines[QIS].rmse_after_warmup / cb[QIS].rmse_after_warmup,
                    TARGET_ATTACKED_OVER_CLEAN,
                ),
                trust_curve: run.trust_curve.clone(),
            }
        });
        let episodes = run.metrics.episodes();
        let sc = &config.node.synthesis;
        SimReport {
            config: config.clone(),
            synthesis: SynthesisFigures {
                prior_strength: sc.prior_strength,
                min_support: sc.min_support,
                max_source_weight: sc.max_source_weight,
                outlier_z: sc.outlier_z,
                half_life_s: sc.half_life_s,
                max_residual: sc.max_residual.clone(),
                learned_gate: run.learned_gate.clone(),
                learned_prior_strength: run.learned_prior_strength.clone(),
                max_young_weight: sc.max_young_weight,
            },
            episodes,
            robots: run.honest_robots,
            classes: run.classes,
            first_encounters: run.metrics.first_encounters(),
            first_encounters_by_support: run.metrics.first_encounters_by_support(),
            support_buckets: SUPPORT_BUCKETS,
            world: run.world.clone(),
            state_names: run.world.state_names.clone(),
            state_scale: run.world.state_scale.clone(),
            recovery: run.recovery.clone(),
            learner_refits: run.learner_refits,
            learner_k: run.learner_k,
            rounds_per_window: run.metrics.rounds_per_window(),
            baselines,
            targets,
            wire_per_robot: WirePerRobot {
                published_records: w.published_records as f64 / k,
                published_bytes: w.published_bytes as f64 / k,
                received_records: w.received_records as f64 / k,
                received_bytes: w.received_bytes as f64 / k,
                dropped: w.dropped,
                refused: w.refused,
            },
            memory: run.memory,
            storage_records: run.bus_records,
            storage_bytes: run.bus_bytes,
            propagation: run.propagation,
            ros: run.ros.clone(),
            paths: run.paths,
            attack,
            process: ProcessFigures {
                wall_s,
                episodes_per_s: episodes as f64 / wall_s.max(1e-9),
                rss_bytes: proc_status_bytes("VmRSS:"),
                peak_rss_bytes: proc_status_bytes("VmHWM:"),
            },
        }
    }

    /// The summary table, as printed by `qis sim`.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "qis sim: world `{}` ({}), models {}",
            self.world.name,
            self.world.summary,
            self.world.models.join(", ")
        );
        let _ = writeln!(
            s,
            "{} robots ({} scored), {} rounds, seed {}, {} scored episodes, {} classes met",
            c.robots, self.robots, c.episodes, c.seed, self.episodes, self.classes
        );
        let _ = writeln!(
            s,
            "loop: every robot runs the node's own code: {} robots NodeLogic in process, {} a whole qis_node over ROS 2 topics; no copy of the loop",
            self.paths.node_logic, self.paths.qis_node_over_ros
        );
        let _ = writeln!(
            s,
            "error: RMSE of the {}-d state, each component divided by its scale {:?} ({})",
            self.state_scale.len(),
            self.state_scale,
            self.state_names.join(", ")
        );
        let trust = &c.node.trust;
        let _ = writeln!(
            s,
            "settings{}: k0 {}, min_support {}, outlier z {}, half-life {} s, young sources <= {} at an address; trust tolerance {} (scale {:?}), initial {}, earned after {} agreeing outcomes; privacy budget k = {}, traffic budget x{}; neighbors {}",
            if c.shipped_defaults() {
                " (the node's shipped defaults)"
            } else {
                " (NOT the node's shipped defaults)"
            },
            if self.synthesis.prior_strength > 0.0 {
                format!("{} (configured)", self.synthesis.prior_strength)
            } else {
                let k0: Vec<String> = self
                    .synthesis
                    .learned_prior_strength
                    .iter()
                    .map(|k| format!("{k:.2}"))
                    .collect();
                format!(
                    "learned per component (empirical Bayes; robots' mean at the end [{}])",
                    k0.join(", ")
                )
            },
            self.synthesis.min_support,
            self.synthesis.outlier_z,
            self.synthesis.half_life_s,
            self.synthesis.max_young_weight,
            trust.tolerance,
            trust.scale,
            trust.initial,
            trust.earn_outcomes,
            c.node.min_count_to_share,
            c.republish_growth,
            c.node.neighbors_k
        );
        let in_scale = |g: &[f64]| -> String {
            g.iter()
                .zip(&self.state_scale)
                .map(|(g, s)| format!("{:.1}", g / s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.synthesis.max_residual.is_empty() {
            let _ = writeln!(
                s,
                "plausibility gate: EXPERIMENT, taken from the simulator's ground truth (no robot has it): sources claiming a mean residual beyond [{}] x scale ({} x the model's validation envelope) are left out",
                in_scale(&self.synthesis.max_residual),
                c.plausibility_margin
            );
        } else {
            let _ = writeln!(
                s,
                "plausibility gate: learned by each robot from its own outcomes ({} x its largest |residual| per component after {} outcomes, as the node); at the end, mean over honest robots [{}] x scale",
                c.node.validation.envelope_margin,
                c.node.validation.envelope_min_outcomes,
                in_scale(&self.synthesis.learned_gate)
            );
        }
        let raw = &self.baselines[RAW];
        let _ = writeln!(
            s,
            "\n{:<12} {:>10} {:>16} {:>8} {:>16} {:>8}",
            "predictor", "RMSE all", "after warm-up", "x raw", "first encounter", "x raw"
        );
        for b in &self.baselines {
            let _ = writeln!(
                s,
                "{:<12} {:>10.3} {:>16.3} {:>8.3} {:>16.3} {:>8.3}",
                b.name,
                b.rmse_all,
                b.rmse_after_warmup,
                b.rmse_after_warmup / raw.rmse_after_warmup,
                b.rmse_first_encounter,
                b.rmse_first_encounter / raw.rmse_first_encounter
            );
        }
        let _ = writeln!(
            s,
            "floor = prediction + the world's true mean error of the class (simulator only); learner = central k-NN on every raw residual (tags one-hot + features, k chosen online: {} at the end, {} refits)",
            self.learner_k, self.learner_refits
        );
        let _ = writeln!(
            s,
            "\nfirst encounters scored: {} (fleet support {}: {:?})",
            self.first_encounters,
            self.support_buckets.join(" / "),
            self.first_encounters_by_support
        );
        let qis = &self.baselines[QIS];
        let _ = writeln!(
            s,
            "qis first-encounter x raw by fleet support {}: {}",
            self.support_buckets.join(" / "),
            (0..3)
                .map(|i| format!(
                    "{:.3}",
                    qis.rmse_first_encounter_by_support[i] / raw.rmse_first_encounter_by_support[i]
                ))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        let _ = writeln!(
            s,
            "per component after warm-up ({}):",
            self.state_names.join(", ")
        );
        for b in &self.baselines {
            let _ = writeln!(
                s,
                "  {:<12} {}",
                b.name,
                b.rmse_after_warmup_per_dim
                    .iter()
                    .map(|v| format!("{v:>8.3}"))
                    .collect::<String>()
            );
        }
        let w = &self.wire_per_robot;
        let how = match &self.propagation {
            Some(p) if p.sessions == c.robots => {
                "over Zenoh; each robot hears the lanes of its fan-in budget".to_owned()
            }
            Some(p) => format!(
                "{} robots over Zenoh hearing the lanes of their fan-in budget, the rest on the bus with delay {} ms, fan-in <= {} sources per address",
                p.sessions, c.delay_ms, c.max_sources_per_address
            ),
            None => format!(
                "delay {} ms, fan-in <= {} sources per address",
                c.delay_ms, c.max_sources_per_address
            ),
        };
        let _ = writeln!(
            s,
            "\nwire per robot: published {:.1} records / {:.1} KiB, received {:.1} records / {:.1} KiB ({how})",
            w.published_records,
            w.published_bytes / 1024.0,
            w.received_records,
            w.received_bytes / 1024.0,
        );
        match &self.propagation {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "network: real Zenoh for {} of {} robots (a client session each, one in-process router with storage, 127.0.0.1); propagation publish -> receiving robot's inbox p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} live deliveries between them ({} expected; {} rounds timed out waiting; {:.1} s waited at round ends)",
                    p.sessions,
                    c.robots,
                    p.p50_ms,
                    p.p99_ms,
                    p.max_ms,
                    p.samples,
                    p.expected_deliveries,
                    p.timed_out_rounds,
                    p.settle_wait_s
                );
                let _ = writeln!(
                    s,
                    "follow (mark followed, maybe change lanes, query own lanes then widen): p50 {:.2} ms, p99 {:.2} ms over {} follows, {:.1} s in total; {:.1} s in publish calls",
                    p.follow_p50_ms, p.follow_p99_ms, p.follows, p.follow_wait_s, p.publish_wait_s
                );
                let l = &p.lanes;
                let per = (p.sessions.max(1) * c.episodes.max(1)) as f64;
                let _ = writeln!(
                    s,
                    "zenoh fan-in per robot per round: received {:.2} records / {:.2} KiB on the wire (of which dropped at intake: {:.2} unfollowed, {:.2} unselected lanes); {:.2} gets, {:.3} widened steps; lane prefixes at the end {:.1} on average, at most {} declarations per robot; {} lane changes, {} wrong-lane keys refused",
                    l.received_records as f64 / per,
                    l.received_bytes as f64 / per / 1024.0,
                    l.dropped_unfollowed as f64 / per,
                    l.dropped_unselected as f64 / per,
                    l.queries as f64 / per,
                    l.widened_queries as f64 / per,
                    l.mean_prefixes,
                    l.max_declarations,
                    l.lane_changes,
                    l.rejected_lane
                );
                let _ = writeln!(
                    s,
                    "bare zenoh put/subscribe of the same bytes, same subscriptions, same run: put -> callback p50 {:.2} ms, p99 {:.2} ms over {} deliveries ({:.2} records / {:.2} KiB per robot per round); qis live deliveries owed {} arrived {}, {} written off (lanes moved in flight, timeouts), +{} not owed (duplicates during lane changes, puts before a follow)",
                    p.bare.p50_ms,
                    p.bare.p99_ms,
                    p.bare.delivered,
                    p.bare.delivered as f64 / per,
                    p.bare.bytes as f64 / per / 1024.0,
                    p.expected_deliveries,
                    p.delivered,
                    p.written_off,
                    p.not_owed,
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "network: in-process bus (propagation is the configured {} ms delay, not a measurement; `--network zenoh` measures it)",
                    c.delay_ms
                );
            }
        }
        if let Some(r) = &self.ros {
            let _ = writeln!(
                s,
                "through qis_node over ROS topics: {} robots, {} episodes, round trip prediction -> corrected_prior p50 {:.2} ms / p99 {:.2} ms (outcome -> discrepancy p50 {:.2} ms); fleet port: {} records shared into the exchange, {} received records fed in, {} first-encounter fetches",
                r.robots,
                r.episodes,
                r.round_trip_p50_ms,
                r.round_trip_p99_ms,
                r.outcome_p50_ms,
                r.records_published,
                r.records_fed,
                r.fetches
            );
            let _ = writeln!(
                s,
                "  node robots' RMSE: first encounters ({}) corrected {:.3} vs raw {:.3}; after warm-up corrected {:.3} vs raw {:.3}",
                r.first_encounters,
                r.qis_rmse_first_encounter,
                r.raw_rmse_first_encounter,
                r.qis_rmse_after_warmup,
                r.raw_rmse_after_warmup
            );
        }
        let m = &self.memory;
        let _ = writeln!(
            s,
            "memory per node: {:.1} received records (max {}, bound {}), {:.1} addresses, ~{:.1} KiB outcome memory (max {:.1} KiB)",
            m.mean_received_records,
            m.max_received_records,
            m.bound_received_records,
            m.mean_addresses,
            m.mean_memory_bytes / 1024.0,
            m.max_memory_bytes as f64 / 1024.0
        );
        let p = &self.process;
        let _ = writeln!(
            s,
            "process: RSS {:.1} MiB (peak {:.1} MiB) for {} robots = {:.1} KiB per robot; fleet storage {} records / {:.1} MiB{}; {:.1} s wall, {:.0} episodes/s",
            p.rss_bytes as f64 / 1048576.0,
            p.peak_rss_bytes as f64 / 1048576.0,
            c.robots,
            p.peak_rss_bytes as f64 / 1024.0 / c.robots as f64,
            self.storage_records,
            self.storage_bytes as f64 / 1048576.0,
            if self.propagation.is_some() {
                " on the bus (the Zenoh router's storage is not counted)"
            } else {
                ""
            },
            p.wall_s,
            p.episodes_per_s
        );
        let t = &self.targets;
        let mark = |t: &Target| if t.met { "met" } else { "NOT met" };
        let _ = writeln!(s, "\nDESIGN 7 targets:");
        let _ = writeln!(
            s,
            "  corrected RMSE after warm-up <= {:.1} x raw:  {:.3}  {}",
            t.corrected_over_raw.bound,
            t.corrected_over_raw.measured,
            mark(&t.corrected_over_raw)
        );
        let _ = writeln!(
            s,
            "  first encounter <= {:.1} x raw (local-only {:.3}):  {:.3}  {}",
            t.first_encounter_over_raw.bound,
            self.baselines[LOCAL].rmse_first_encounter / raw.rmse_first_encounter,
            t.first_encounter_over_raw.measured,
            mark(&t.first_encounter_over_raw)
        );
        let _ = writeln!(
            s,
            "  within 10% of the central oracle (qis / oracle <= {:.1}):  {:.3}  {}",
            t.qis_over_oracle.bound,
            t.qis_over_oracle.measured,
            mark(&t.qis_over_oracle)
        );
        let floor_over_raw = self.baselines[FLOOR].rmse_after_warmup / raw.rmse_after_warmup;
        let _ = writeln!(
            s,
            "  where the floor is above 0.2 x raw ({:.3} here), within {:.2} x the floor:  {:.3}  {}",
            floor_over_raw,
            t.qis_over_floor.bound,
            t.qis_over_floor.measured,
            if floor_over_raw <= TARGET_CORRECTED_OVER_RAW {
                "(floor below 0.2 x raw: the 0.2 x raw target applies)"
            } else {
                mark(&t.qis_over_floor)
            }
        );
        let _ = writeln!(
            s,
            "  within {:.2} x the central learner (every raw residual):  {:.3}  {}",
            t.qis_over_learner.bound,
            t.qis_over_learner.measured,
            mark(&t.qis_over_learner)
        );
        if let Some(r) = &self.recovery {
            s.push_str(&recovery_lines(r));
        }
        if let Some(a) = &self.attack {
            let n = &a.counts;
            let _ = writeln!(
                s,
                "\nattack `{}`: {} robots publish every outcome biased by {} x scale ({} records{}{})",
                a.mode.name(),
                a.attackers,
                c.attack_bias,
                n.poisoned_records,
                if a.mode.sybil() {
                    format!(
                        ", under {} Sybil identities rotated every {} rounds",
                        n.sybil_identities, c.sybil_rounds
                    )
                } else {
                    String::new()
                },
                if a.mode.hijack() {
                    format!(
                        "; {} forged records under honest source ids with seq = u64::MAX, {} deliveries of them refused by the admission check",
                        n.forged_records, n.refused_by_admission
                    )
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                s,
                "  qis RMSE after warm-up {:.3} clean -> {:.3} attacked (raw {:.3}), first encounter {:.3} -> {:.3}; records refused by the bounds {}",
                a.qis_rmse_clean,
                a.qis_rmse_attacked,
                a.raw_rmse,
                a.qis_first_clean,
                a.qis_first_attacked,
                n.refused_by_bounds
            );
            let how = if !self.synthesis.max_residual.is_empty() {
                "ground-truth gate EXPERIMENT"
            } else if c.shipped_defaults() {
                "shipped defaults"
            } else {
                "NOT the shipped defaults"
            };
            let _ = writeln!(
                s,
                "  attacked RMSE <= {:.1} x clean ({:.0} % attackers, {how}): {} ({:.3})",
                a.attacked_over_clean.bound,
                c.attackers * 100.0,
                if a.attacked_over_clean.met {
                    "MET"
                } else {
                    "NOT MET"
                },
                a.attacked_over_clean.measured
            );
            if let (Some(first), Some(last)) = (a.trust_curve.first(), a.trust_curve.last()) {
                let _ = writeln!(
                    s,
                    "  trust honest robots give the attackers {:.3} (round {}) -> {:.3} (round {}); other honest robots {:.3} -> {:.3}",
                    first.attackers,
                    first.round,
                    last.attackers,
                    last.round,
                    first.honest,
                    last.honest
                );
                let curve: Vec<String> = a
                    .trust_curve
                    .iter()
                    .map(|p| format!("{} {:.3}/{:.3}", p.round, p.attackers, p.honest))
                    .collect();
                let _ = writeln!(
                    s,
                    "  trust curve (round attackers/honest; sources never judged count at the initial {}): {}",
                    c.node.trust.initial,
                    curve.join(", ")
                );
            }
        }
        s
    }

    /// qis after warm-up ÷ another predictor's.
    pub fn qis_over(&self, predictor: usize) -> f64 {
        self.baselines[QIS].rmse_after_warmup / self.baselines[predictor].rmse_after_warmup
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), SimError> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The recovery part of the table: the curve at a few points and outcomes to recover.
fn recovery_lines(r: &RecoveryFigures) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nafter the change at round {} ({}): {} affected episodes scored; normalized RMSE by fleet outcomes at the address since the change:",
        r.change.round, r.change.what, r.episodes
    );
    let _ = writeln!(
        s,
        "  {:>9} {:>8} {}",
        "outcomes",
        "episodes",
        BASELINES
            .iter()
            .map(|b| format!("{b:>11}"))
            .collect::<String>()
    );
    for p in r
        .curve
        .iter()
        .filter(|p| matches!(p.outcomes, 0 | 1 | 2 | 5 | 10 | 20 | 30) || p.outcomes >= 40)
    {
        let _ = writeln!(
            s,
            "  {:>9} {:>8} {}",
            if p.outcomes >= 40 {
                format!("{}+", p.outcomes)
            } else {
                p.outcomes.to_string()
            },
            p.episodes,
            p.rmse
                .iter()
                .map(|v| format!("{v:>11.3}"))
                .collect::<String>()
        );
    }
    let _ = writeln!(
        s,
        "  outcomes per address until the error stays within {RECOVERED_OVER_FLOOR} x the floor (target <= {TARGET_RECOVERY_OUTCOMES} for qis): {}",
        BASELINES
            .iter()
            .zip(&r.outcomes_to_recover)
            .map(|(b, n)| match n {
                Some(n) => format!("{b} {n}"),
                None => format!("{b} never"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}
