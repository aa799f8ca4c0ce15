//! The simulated fleet: robots whose loop is the node's own [`NodeLogic`] (or, for
//! `--ros-robots`, a whole `qis_node` over ROS 2 topics with its `NodeLogic` inside),
//! joined by an [`Exchange`], and the round-based driver that feeds them episodes and
//! scores them against the baselines on the same episodes.
//!
//! No robot runs a copy of the loop. Fingerprint, first-encounter follow, record bounds,
//! trust (earned from the robot's own outcomes), the plausibility gate learned from its
//! own residuals, neighbors, synthesis and the privacy budget are `NodeLogic`'s, with the
//! parameters in [`SimConfig::node`] (the node's shipped defaults plus this world's bins,
//! unless an experiment changes them). Each robot has a self-certifying identity (ed25519
//! key, source id = public key) under which its exchange endpoint seals its records.
//! What stays the simulator's: the world, the exchange (bus or Zenoh) with its fan-in,
//! the baselines and the attackers. What the node lets out goes through the product's
//! republish rule ([`crate::fleet::RepublishPolicy`]) on either network.
//!
//! Attackers ([`super::AttackMode`]) run a node with a biased sensor (their outcomes are
//! shifted by `attack_bias`) and publish every own record at once, ignoring both budgets
//! (`attackers_keep_budget`: only what their node's privacy budget lets out); with Sybil
//! rotation under a fresh identity every `sybil_rounds` rounds; with the seq hijack they
//! also put forged records (seq = u64::MAX, biased mean, signed with their own key) under
//! the source ids of honest robots whose records their node holds, which every receiver
//! opens with the product's admission check.
//!
//! Time: robots act in rounds of `episode_interval_s`; inside a round robot i acts at
//! offset i / N of the interval, so a record published by one robot can reach the next
//! ones within the same round when the delivery delay is shorter than that offset.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::SigningKey;
use nalgebra::DVector;
use rand::{RngExt, SeedableRng};

use crate::core::fingerprint::Fingerprinter;
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, Seq, SourceId};
use crate::core::memory::Ingest;
use crate::core::record::{OutcomeRecord, TimeBase};
use crate::core::summary::Summary;
use crate::fleet::Identity;
use crate::fleet::keys::record_key;
use crate::fleet::signing::seal;
use crate::node::NodeLogic;
use crate::ros::msgs::{CorrectedPrior, Outcome, Prediction, Scenario};

use super::baselines::{
    Class, FLOOR, LEARNER, LOCAL, Metrics, ORACLE, Oracle, PREDICTORS, QIS, RAW,
};
use super::exchange::{Bus, BusConfig, Exchange, ExchangeError, Network, Propagation, WireStats};
use super::floor::Floor;
use super::learner::Learner;
use super::recovery::{Recovery, RecoveryFigures};
use super::ros_node::{self, NodeRobot, RosFigures, RosNodes};
use super::worlds::{World, WorldSetup};
use super::zenoh_net::{MixedNetwork, ZenohNetConfig, ZenohNetwork};
use super::{SIM_FLEET, SimConfig, SimError, SimRng};

/// What an attacking robot keeps besides its loop.
struct Attacker {
    /// Where its Sybil keys come from (its own stream: the episodes do not depend on it).
    keys: SimRng,
    /// The Sybil identity it publishes under now, and the rotation epoch it belongs to.
    sybil: Option<(usize, Identity)>,
}

/// Which implementation of the node a simulated robot's loop runs through.
enum Brain {
    /// The node logic, driven in process (the fleet's robots).
    Logic(Box<NodeLogic>),
    /// A `qis_node` over ROS 2 topics (native binding), its logic inside.
    Ros(Box<NodeRobot>),
}

/// One simulated robot: a node, its endpoint on the exchange and its random stream.
pub struct Robot<E: Exchange> {
    /// Its name in episode ids and node namespaces (`robot-00017`).
    name: String,
    /// Its key and self-certifying source id.
    identity: Identity,
    exchange: E,
    rng: SimRng,
    join_round: usize,
    leave_round: usize,
    attacker: bool,
    attack: Option<Attacker>,
    inbox: Vec<(RecordKey, OutcomeRecord)>,
    brain: Brain,
    /// The local-only baseline: this robot's own residuals per class, same estimator.
    local: Oracle,
    /// Classes met (the first episode of each is scored as a first encounter).
    met: HashSet<Class>,
}

/// Per-robot memory figures at the end of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct MemoryFigures {
    /// Robots measured (those still in the fleet at the end).
    pub robots: usize,
    /// Mean received records held per robot.
    pub mean_received_records: f64,
    /// Largest number of received records held by one robot.
    pub max_received_records: usize,
    /// Mean addresses known per robot.
    pub mean_addresses: f64,
    /// Mean estimated bytes of outcome memory per robot (records held, in memory).
    pub mean_memory_bytes: f64,
    /// Largest estimated outcome-memory bytes of one robot.
    pub max_memory_bytes: usize,
    /// The configured bound on received records per robot.
    pub bound_received_records: usize,
}

/// Everything one simulated run produced (deterministic given the config).
#[derive(Debug)]
pub struct RunOutcome {
    /// Error bookkeeping.
    pub metrics: Metrics,
    /// Summed wire statistics of the honest robots.
    pub wire_total: WireStats,
    /// Robots that took part (joined at some point), honest ones.
    pub honest_robots: usize,
    /// Robots that published poisoned records.
    pub attackers: usize,
    /// Memory per robot at the end.
    pub memory: MemoryFigures,
    /// Records stored on the bus (the fleet's storage) at the end.
    pub bus_records: usize,
    /// Bytes stored on the bus at the end.
    pub bus_bytes: usize,
    /// Distinct classes (fingerprints) met.
    pub classes: usize,
    /// Received records ingested, by outcome of the ingest.
    pub ingested: u64,
    /// Propagation measured by the network (real Zenoh), `None` on the bus.
    pub propagation: Option<Propagation>,
    /// The robots that ran through `qis_node` over ROS topics, if any.
    pub ros: Option<RosFigures>,
    /// The world simulated.
    pub world: super::report::WorldFigures,
    /// How fast each predictor followed the world's change in mid-run, if it has one.
    pub recovery: Option<RecoveryFigures>,
    /// Refits of the central learner, and the k it answered with at the end.
    pub learner_refits: usize,
    /// The k (neighbours) the central learner chose by the end.
    pub learner_k: usize,
    /// How much honest robots trust attackers and honest sources, at the end of each
    /// window (empty without attackers).
    pub trust_curve: Vec<TrustPoint>,
    /// What the attackers did and what the defences refused.
    pub attack: AttackCounts,
    /// The plausibility gate the honest robots still present had learned at the end, mean
    /// per component (empty when a gate is configured or none was learned).
    pub learned_gate: Vec<f64>,
    /// The prior strength k0 per component the honest robots still present had learned
    /// at the end, mean over robots (empty when k0 is configured or none was learned).
    pub learned_prior_strength: Vec<f64>,
    /// How many robots ran which implementation of the node.
    pub paths: RobotPaths,
}

/// How many robots of a run ran which implementation of the node (all of them one).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct RobotPaths {
    /// Robots whose loop was the node's `NodeLogic`, driven in process.
    pub node_logic: usize,
    /// Robots whose loop was a whole `qis_node` over ROS 2 topics (`--ros-robots`).
    pub qis_node_over_ros: usize,
}

/// What the attackers put on the wire and what the honest robots refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct AttackCounts {
    /// Records attackers published under their own or a Sybil source id.
    pub poisoned_records: u64,
    /// Sybil identities used (fresh keys, each a self-certified source id).
    pub sybil_identities: u64,
    /// Forged records put under honest robots' source ids (seq = u64::MAX).
    pub forged_records: u64,
    /// Deliveries to honest robots the admission check refused (forgeries).
    pub refused_by_admission: u64,
    /// Received records honest robots refused by the record bounds.
    pub refused_by_bounds: u64,
}

/// Mean trust honest robots give at one moment (sources never judged count at the
/// trust's `initial` weight, as in the synthesis).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct TrustPoint {
    /// Rounds done.
    pub round: usize,
    /// Mean trust in the attackers' sources (the Sybil identity each publishes under at
    /// that moment, when they rotate).
    pub attackers: f64,
    /// Mean trust in other honest robots' sources.
    pub honest: f64,
}

/// Mean trust honest robots present at `round` give to the attackers (the source each
/// publishes under) and to the other honest robots (present or not).
fn trust_point<E: Exchange>(robots: &[Robot<E>], round: usize) -> TrustPoint {
    let (mut attackers, mut na, mut honest, mut nh) = (0.0, 0u64, 0.0, 0u64);
    for judge in robots
        .iter()
        .filter(|r| !r.attacker && r.join_round <= round && round < r.leave_round)
    {
        // A node robot's trust book is inside its `qis_node`.
        let Brain::Logic(logic) = &judge.brain else {
            continue;
        };
        for other in robots {
            if other.source() == judge.source() {
                continue;
            }
            let t = logic.trust().trust(other.publishing_source());
            if other.attacker {
                attackers += t;
                na += 1;
            } else {
                honest += t;
                nh += 1;
            }
        }
    }
    TrustPoint {
        round: round + 1,
        attackers: attackers / na.max(1) as f64,
        honest: honest / nh.max(1) as f64,
    }
}

/// Estimated heap + inline bytes of one received record of dimension `dim` held in an
/// [`OutcomeMemory`].
fn held_record_bytes(source: &SourceId, dim: usize) -> usize {
    std::mem::size_of::<crate::core::memory::SourceRecord>()
        + 8 * dim
        + 8 * dim * dim
        + source.as_str().len()
        // The memory's LRU queue entry: tick + RecordKey with its two strings.
        + 8
        + std::mem::size_of::<RecordKey>()
        + source.as_str().len()
        + 8
}

/// Runs one simulation on the in-process bus, with the first `config.zenoh_robots`
/// robots on real Zenoh sessions instead (see [`simulate_on`]).
pub fn simulate(
    config: &SimConfig,
    poison: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<RunOutcome, SimError> {
    let republish = config.republish()?;
    let mut bus = Bus::new(BusConfig {
        delay_ns: (config.delay_ms * 1e6) as i64,
        max_sources_per_address: config.max_sources_per_address,
        sign_records: config.sign_records,
        republish,
    });
    if config.zenoh_robots > 0 {
        let zenoh = ZenohNetwork::start(ZenohNetConfig {
            republish,
            ..ZenohNetConfig::default()
        })?;
        let mut mixed = MixedNetwork::new(bus, zenoh, config.zenoh_robots);
        return simulate_on(&mut mixed, config, poison, progress);
    }
    simulate_on(&mut bus, config, poison, progress)
}

/// What every robot's episode reads or feeds: settings, the world and the scorekeeping.
struct Scene<'a> {
    config: &'a SimConfig,
    poison: bool,
    world: &'a dyn World,
    /// The world's fingerprint (the nodes compute their own): scores per class.
    fingerprinter: Fingerprinter,
    fleet: FleetName,
    /// Every source id attackers publish under (own and Sybil): forgers spare them.
    attacker_sources: HashSet<SourceId>,
    attack: AttackCounts,
    /// The world's models' ids, by index.
    models: Vec<ModelId>,
    feature_names: Vec<String>,
    oracle: Oracle,
    floor: Floor,
    learner: Learner,
    metrics: Metrics,
    /// The same bookkeeping for the robots that run through `qis_node` only.
    node_metrics: Metrics,
    /// Error after the world's change, by outcomes at the address since it.
    recovery: Option<Recovery>,
    /// Fleet outcomes per address since the world's change.
    since_change: HashMap<Class, u64>,
    attack_offset: Vec<f64>,
    ingested: u64,
}

impl<E: Exchange> Robot<E> {
    /// This robot's own source id.
    fn source(&self) -> &SourceId {
        self.identity.source()
    }

    /// The source id this robot's records go out under: its own, or while it attacks with
    /// Sybil rotation, its current Sybil identity's.
    fn publishing_source(&self) -> &SourceId {
        match self.attack.as_ref().and_then(|a| a.sybil.as_ref()) {
            Some((_, id)) => id.source(),
            None => self.source(),
        }
    }

    /// Route, as a binding does: a first encounter follows the address on the exchange
    /// (the node's first-encounter fetch); then every record that arrived goes to the node.
    fn route(
        &mut self,
        scene: &mut Scene<'_>,
        p: &Prediction,
        class: Class,
        first: bool,
        now: i64,
    ) -> Result<(), SimError> {
        let fp = class.fingerprint;
        let follow = match &mut self.brain {
            Brain::Logic(logic) => logic.first_encounter(p).is_some(),
            Brain::Ros(_) => first,
        };
        if follow {
            self.exchange.follow(&scene.models[class.model], fp)?;
        }
        self.exchange.poll(&mut self.inbox)?;
        match &mut self.brain {
            Brain::Logic(logic) => {
                for (key, record) in self.inbox.drain(..) {
                    match logic.on_record(&key, record, now) {
                        Ingest::Stored => scene.ingested += 1,
                        Ingest::Refused if !self.attacker => scene.attack.refused_by_bounds += 1,
                        _ => {}
                    }
                }
            }
            // Those at a new address answer the node's fetch, the others go into its
            // record channel.
            Brain::Ros(node) => {
                let fed: Vec<_> = self.inbox.drain(..).collect();
                node.deliver(first.then_some(fp), fed)?;
            }
        }
        Ok(())
    }

    /// The node's corrected prior for `p`; addresses the node asks to follow are followed.
    fn predict(
        &mut self,
        p: &Prediction,
        dim: usize,
        now: i64,
    ) -> Result<CorrectedPrior, SimError> {
        let prior = match &mut self.brain {
            Brain::Logic(logic) => {
                // The simulator only sends predictions the node accepts: a refusal is a bug.
                let prior = logic.on_prediction(p, now).accepted()?;
                for (model, f) in logic.drain_interests() {
                    self.exchange.follow(&model, f)?;
                }
                prior
            }
            Brain::Ros(node) => {
                let prior = node.predict(now, p)?;
                for (model, f) in node.interests() {
                    self.exchange.follow(&model, f)?;
                }
                prior
            }
        };
        if prior.state.len() != dim {
            return Err(SimError::Ros(format!(
                "corrected prior of {} has {} components",
                p.episode_id,
                prior.state.len()
            )));
        }
        Ok(prior)
    }

    /// Sybil rotation: a fresh self-certified identity every `sybil_rounds` rounds.
    fn rotate(&mut self, scene: &mut Scene<'_>, round: usize) {
        let Some(a) = &mut self.attack else {
            return;
        };
        let epoch = round / scene.config.sybil_rounds;
        if a.sybil.as_ref().is_some_and(|(e, _)| *e == epoch) {
            return;
        }
        let id = Identity::signed(SigningKey::from_bytes(&a.keys.random::<[u8; 32]>()));
        scene.attacker_sources.insert(id.source().clone());
        scene.attack.sybil_identities += 1;
        a.sybil = Some((epoch, id));
    }

    /// An attacker shares every outcome's (biased) record at once, under its Sybil
    /// identity when it rotates, and with the seq hijack also forges the records of the
    /// honest sources it holds at the address.
    fn attack(
        &mut self,
        scene: &mut Scene<'_>,
        key: RecordKey,
        record: &OutcomeRecord,
    ) -> Result<(), SimError> {
        let encode = |source| {
            SimError::Exchange(ExchangeError::Encode {
                fingerprint: key.fingerprint,
                source,
            })
        };
        scene.attack.poisoned_records += 1;
        match self.attack.as_ref().and_then(|a| a.sybil.as_ref()) {
            Some((_, id)) => {
                // A validly signed record under a source id nobody has judged yet.
                let key = RecordKey {
                    source: id.source().clone(),
                    ..key.clone()
                };
                let bytes = seal(record, &record_key(&scene.fleet, &key), id.signing_key())
                    .map_err(encode)?;
                self.exchange.put_sealed(&key, record.seq, bytes, true)?;
            }
            None => {
                self.exchange.publish(&key, record)?;
            }
        }
        if !scene.config.attack.hijack() {
            return Ok(());
        }
        // Attackers always run the node logic in process (node robots are honest).
        let Brain::Logic(logic) = &self.brain else {
            return Ok(());
        };
        let Some(addr) = logic.memory().address(&key.model, &key.fingerprint) else {
            return Ok(());
        };
        let mut victims: Vec<_> = addr
            .received
            .iter()
            .filter(|r| !scene.attacker_sources.contains(&r.source))
            .collect();
        victims.sort_by_key(|r| std::cmp::Reverse(r.summary.count()));
        victims.truncate(scene.config.hijack_per_episode);
        let mut forged = Vec::with_capacity(victims.len());
        for victim in victims {
            let s = &victim.summary;
            let mut mean = s.mean().clone();
            for (m, o) in mean.iter_mut().zip(&scene.attack_offset) {
                *m += o;
            }
            // The victim's own record, its mean shifted, at the last seq there is: a
            // memory that took it would refuse every later record of the victim as stale.
            let record = OutcomeRecord {
                seq: Seq(u64::MAX),
                sketch: record.sketch,
                summary: Summary::from_parts(
                    s.count(),
                    s.weight(),
                    s.weight_sq(),
                    mean,
                    s.m2().clone(),
                    s.first_ns(),
                    s.last_ns(),
                ),
                time_base: TimeBase::Sim,
            };
            let fkey = RecordKey {
                source: victim.source.clone(),
                ..key.clone()
            };
            // Signed with the attacker's own key: it has no other.
            let bytes = seal(
                &record,
                &record_key(&scene.fleet, &fkey),
                self.identity.signing_key(),
            )
            .map_err(encode)?;
            forged.push((fkey, bytes));
        }
        for (fkey, bytes) in forged {
            scene.attack.forged_records += 1;
            self.exchange
                .put_sealed(&fkey, Seq(u64::MAX), bytes, false)?;
        }
        Ok(())
    }

    /// One episode: route, predict with every baseline, measure, score, learn, publish.
    fn episode(
        &mut self,
        scene: &mut Scene<'_>,
        index: usize,
        round: usize,
        now: i64,
    ) -> Result<(), SimError> {
        let attacking = self.attacker && scene.poison;
        if attacking && scene.config.attack.sybil() {
            self.rotate(scene, round);
        }
        let episode = scene.world.draw(index, round, &mut self.rng);
        let tags = episode.tags();
        let features = episode.features();
        let class = Class {
            model: episode.model(),
            fingerprint: scene
                .fingerprinter
                .fingerprint(&tags, &scene.feature_names, &features)
                .map_err(SimError::Scenario)?,
        };
        let predicted = episode.predict();
        let dim = predicted.len();
        let p = Prediction {
            episode_id: format!("{}-{round}", self.name),
            model_id: scene.models[class.model].as_str().to_owned(),
            scenario: Scenario {
                tags: tags.clone(),
                feature_names: scene.feature_names.clone(),
                features: features.clone(),
                embedding: Vec::new(),
            },
            state: predicted.clone(),
            ..Prediction::default()
        };
        let first = self.met.insert(class);
        self.route(scene, &p, class, first, now)?;
        let qis = self.predict(&p, dim, now)?;

        // The baselines have nothing to defend against: the node's synthesis, no gate.
        let synthesis = &scene.config.node.synthesis;
        let x = DVector::from_row_slice(&predicted);
        let local = self.local.prior(synthesis, &class, &x, now)?;
        let central = scene.oracle.prior(synthesis, &class, &x, now)?;
        let floor: Vec<f64> = scene
            .floor
            .mean_error(class, episode.as_ref())
            .iter()
            .zip(&predicted)
            .map(|(m, p)| p + m)
            .collect();
        let context = scene.learner.context(class.model, &tags, &features);
        let guess = scene.learner.guess(&context);
        let learner: Vec<f64> = scene
            .learner
            .correction(&guess)
            .iter()
            .zip(&predicted)
            .map(|(c, p)| p + c)
            .collect();
        let measured = episode.outcome(&mut self.rng);
        let after_change = episode.affected().then(|| {
            let n = scene.since_change.entry(class).or_default();
            *n += 1;
            *n - 1
        });
        if !self.attacker {
            let mut predictions: [&[f64]; PREDICTORS] = [&[]; PREDICTORS];
            predictions[RAW] = &predicted;
            predictions[LOCAL] = local.as_slice();
            predictions[QIS] = &qis.state;
            predictions[ORACLE] = central.as_slice();
            predictions[FLOOR] = &floor;
            predictions[LEARNER] = &learner;
            let first_support = first.then(|| scene.oracle.count(&class));
            scene
                .metrics
                .add(round, &predictions, &measured, first_support);
            if matches!(self.brain, Brain::Ros(_)) {
                scene
                    .node_metrics
                    .add(round, &predictions, &measured, first_support);
            }
            if let (Some(n), Some(recovery)) = (after_change, scene.recovery.as_mut()) {
                let scale = scene.world.state_scale();
                let errors = predictions.map(|pred| {
                    pred.iter()
                        .zip(&measured)
                        .zip(scale)
                        .map(|((p, m), s)| (p - m) / s)
                        .collect::<Vec<f64>>()
                });
                recovery.add(n, &errors);
            }
        }
        let residual: Vec<f64> = measured
            .iter()
            .zip(&predicted)
            .map(|(m, p)| m - p)
            .collect();
        let decay = synthesis.decay();
        scene.oracle.add(class, &residual, now, decay)?;
        self.local.add(class, &residual, now, decay)?;
        scene.learner.add(context, &guess, &residual);

        // What the robot's sensor reports: an attacker's is biased.
        let mut reported = measured;
        if attacking {
            for (r, o) in reported.iter_mut().zip(&scene.attack_offset) {
                *r += o;
            }
        }
        let o = Outcome {
            episode_id: p.episode_id,
            state: reported,
            ..Outcome::default()
        };
        let (own, share) = match &mut self.brain {
            Brain::Logic(logic) => {
                let effect = logic.on_outcome(&o, now)?;
                (Some(effect.own_record), effect.share)
            }
            // The node hands its port only what its privacy budget lets out.
            Brain::Ros(node) => {
                let shared = node.outcome(&o)?.1.pop();
                let share = shared.is_some();
                (shared, share)
            }
        };
        let Some((key, record)) = own else {
            return Ok(());
        };
        if attacking {
            if scene.config.attackers_keep_budget && !share {
                return Ok(());
            }
            return self.attack(scene, key, &record);
        }
        if share && self.exchange.publish(&key, &record)? {
            if let Brain::Ros(node) = &mut self.brain {
                node.count_published();
            }
        }
        Ok(())
    }
}

/// Creates the robots: who joins late, who leaves early, who attacks, each from its own
/// random stream so the episodes do not depend on the others; every robot gets an
/// ed25519 key, the self-certifying source id of its public key, and a node.
fn spawn<N: Network>(
    network: &mut N,
    config: &SimConfig,
) -> Result<Vec<Robot<N::Endpoint>>, SimError> {
    let mut schedule = SimRng::seed_from_u64(config.seed ^ 0x5CED_u64);
    let mut attack_rng = SimRng::seed_from_u64(config.seed ^ 0xA77AC4);
    let mut key_rng = SimRng::seed_from_u64(config.seed ^ 0x1DE7_17E5);
    let rounds = config.episodes;
    let mut robots = Vec::with_capacity(config.robots);
    for i in 0..config.robots {
        let identity = Identity::signed(SigningKey::from_bytes(&key_rng.random::<[u8; 32]>()));
        let join_round = if schedule.random::<f64>() < config.late_join_fraction {
            schedule.random_range(1..rounds.max(2).div_ceil(2).max(2))
        } else {
            0
        };
        let leave_round = if schedule.random::<f64>() < config.leave_fraction {
            schedule
                .random_range(rounds / 2..rounds.max(1))
                .max(join_round + 1)
        } else {
            usize::MAX
        };
        let attacker = attack_rng.random::<f64>() < config.attackers;
        let logic = NodeLogic::new(config.node.clone(), identity.source().clone())
            .map_err(SimError::Params)?;
        robots.push(Robot {
            name: format!("robot-{i:05}"),
            exchange: network.connect(&identity)?,
            identity,
            rng: SimRng::seed_from_u64(config.seed.wrapping_add(1 + i as u64)),
            join_round,
            leave_round,
            attacker,
            attack: attacker.then(|| Attacker {
                keys: SimRng::seed_from_u64(config.seed ^ 0x5B11_0000 ^ ((i as u64) << 24)),
                sybil: None,
            }),
            inbox: Vec::new(),
            brain: Brain::Logic(Box::new(logic)),
            local: Oracle::default(),
            met: HashSet::new(),
        });
    }
    Ok(robots)
}

/// Runs one simulation over `network`. The robots drawn as attackers are left out of
/// the error figures; with `poison` they attack (`config.attack`), without it they
/// behave (the reference run of an attack scenario).
pub fn simulate_on<N: Network>(
    network: &mut N,
    config: &SimConfig,
    poison: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<RunOutcome, SimError> {
    config.validate()?;
    let rounds = config.episodes;
    let warmup = (rounds as f64 * config.warmup_fraction).round() as usize;
    let world = config.world.build(&WorldSetup {
        seed: config.seed,
        robots: config.robots,
        rounds,
        zipf_exponent: config.zipf_exponent,
    });
    let world: &dyn World = world.as_ref();
    let scale = world.state_scale();
    let models = world
        .models()
        .iter()
        .map(|m| ModelId::new(*m).map_err(SimError::Id))
        .collect::<Result<Vec<_>, _>>()?;
    let mut scene = Scene {
        config,
        poison,
        world,
        fingerprinter: config.node.validate().map_err(SimError::Params)?,
        models,
        feature_names: world
            .feature_names()
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        oracle: Oracle::default(),
        floor: Floor::new(config.seed ^ 0xF100_4000, world.floor_samples()),
        learner: Learner::new(scale, world.models().len(), world.feature_names().len()),
        metrics: Metrics::new(rounds, config.windows, warmup, scale),
        node_metrics: Metrics::new(rounds, config.windows, warmup, scale),
        recovery: world
            .change()
            .map(|change| Recovery::new(change, scale.len())),
        since_change: HashMap::new(),
        attack_offset: scale.iter().map(|s| s * config.attack_bias).collect(),
        ingested: 0,
        fleet: FleetName::new(SIM_FLEET).map_err(SimError::Id)?,
        attacker_sources: HashSet::new(),
        attack: AttackCounts::default(),
    };
    // Declared before the robots: their nodes shut down before the router closes.
    let mut ros_nodes: Option<RosNodes> = None;
    let mut robots = spawn(network, config)?;
    scene.attacker_sources = robots
        .iter()
        .filter(|r| r.attacker)
        .map(|r| r.source().clone())
        .collect();
    if config.ros_robots > 0 {
        let nodes = ros_nodes.insert(RosNodes::start()?);
        // The last robots present the whole run and honest: their episodes come late in
        // each round, after most of the fleet has published.
        let mut picked = 0;
        for robot in robots.iter_mut().rev() {
            if picked == config.ros_robots {
                break;
            }
            if robot.join_round == 0 && robot.leave_round == usize::MAX && !robot.attacker {
                let node =
                    nodes.attach(&robot.name, robot.identity.source(), config.node.clone())?;
                robot.brain = Brain::Ros(Box::new(node));
                picked += 1;
            }
        }
        if picked < config.ros_robots {
            // A small fleet may have fewer such robots: run with those (the report
            // counts the node robots that actually ran).
            tracing::warn!(
                asked = config.ros_robots,
                picked,
                "sim: fewer robots stay the whole run than --ros-robots asks"
            );
        }
    }
    let interval_ns = (config.episode_interval_s * 1e9) as i64;
    let n = robots.len().max(1) as i64;
    let window = (rounds / config.windows).max(1);
    let mut trust_curve = Vec::new();
    for round in 0..rounds {
        for (i, robot) in robots.iter_mut().enumerate() {
            if round < robot.join_round {
                continue;
            }
            if round == robot.leave_round {
                robot.exchange.leave();
                if let Brain::Ros(node) = &mut robot.brain {
                    node.shutdown();
                }
            }
            if round >= robot.leave_round {
                continue;
            }
            let now = round as i64 * interval_ns + i as i64 * interval_ns / n;
            network.advance(now);
            robot.episode(&mut scene, i, round, now)?;
        }
        network.end_round()?;
        if config.attackers > 0.0 && (round + 1) % window == 0 {
            trust_curve.push(trust_point(&robots, round));
        }
        progress(round + 1);
    }
    let mut outcome = tally(network, config, &robots, scene);
    outcome.trust_curve = trust_curve;
    for robot in &mut robots {
        if let Brain::Ros(node) = &mut robot.brain {
            node.shutdown();
        }
    }
    drop(robots);
    drop(ros_nodes);
    Ok(outcome)
}

/// The end-of-run figures: traffic of the honest robots, memory of those still present
/// (the in-process nodes: a node robot's memory is inside its `qis_node`).
fn tally<N: Network>(
    network: &N,
    config: &SimConfig,
    robots: &[Robot<N::Endpoint>],
    scene: Scene<'_>,
) -> RunOutcome {
    let mut wire_total = WireStats::default();
    let mut memory = MemoryFigures {
        bound_received_records: config.node.memory.max_received_records,
        ..Default::default()
    };
    let (mut honest, mut attackers) = (0, 0);
    let (mut sum_records, mut sum_bytes, mut sum_addr) = (0usize, 0usize, 0usize);
    let dim = scene.world.state_names().len();
    let mut learned_gate = vec![0.0; dim];
    let mut learned_k0 = vec![0.0; dim];
    let mut with_k0 = 0usize;
    let mut gated = 0usize;
    let mut paths = RobotPaths::default();
    for r in robots {
        match &r.brain {
            Brain::Logic(_) => paths.node_logic += 1,
            Brain::Ros(_) => paths.qis_node_over_ros += 1,
        }
        if r.attacker {
            attackers += 1;
            continue;
        }
        honest += 1;
        wire_total.add(&r.exchange.wire());
        let Brain::Logic(logic) = &r.brain else {
            continue;
        };
        if r.leave_round != usize::MAX {
            continue;
        }
        let m = logic.memory();
        let held = m.received_len();
        let bytes = held * held_record_bytes(r.source(), dim)
            + m.addresses_len() * (std::mem::size_of::<(Fingerprint, u64)>() + 64);
        memory.robots += 1;
        memory.max_received_records = memory.max_received_records.max(held);
        memory.max_memory_bytes = memory.max_memory_bytes.max(bytes);
        sum_records += held;
        sum_bytes += bytes;
        sum_addr += m.addresses_len();
        let k0 = logic.learned_prior_strength();
        if k0.len() == dim {
            with_k0 += 1;
            learned_k0.iter_mut().zip(k0).for_each(|(m, v)| *m += v);
        }
        let gate = logic.plausibility_gate();
        if config.node.synthesis.max_residual.is_empty() && gate.len() == dim {
            gated += 1;
            for (m, v) in learned_gate.iter_mut().zip(gate) {
                *m += v;
            }
        }
    }
    if memory.robots > 0 {
        let k = memory.robots as f64;
        memory.mean_received_records = sum_records as f64 / k;
        memory.mean_memory_bytes = sum_bytes as f64 / k;
        memory.mean_addresses = sum_addr as f64 / k;
    }
    if gated == 0 {
        learned_gate.clear();
    }
    if with_k0 == 0 {
        learned_k0.clear();
    }
    learned_k0
        .iter_mut()
        .for_each(|v| *v /= with_k0.max(1) as f64);
    learned_gate
        .iter_mut()
        .for_each(|v| *v /= gated.max(1) as f64);
    let stored = network.stored().unwrap_or_default();
    let node_robots = robots.iter().filter_map(|r| match &r.brain {
        Brain::Ros(node) => Some(node.as_ref()),
        Brain::Logic(_) => None,
    });
    let ros = (paths.qis_node_over_ros > 0).then(|| {
        let mut f = ros_node::figures(node_robots);
        let b = scene.node_metrics.results();
        f.first_encounters = scene.node_metrics.first_encounters();
        f.qis_rmse_first_encounter = b[QIS].rmse_first_encounter;
        f.raw_rmse_first_encounter = b[RAW].rmse_first_encounter;
        f.qis_rmse_after_warmup = b[QIS].rmse_after_warmup;
        f.raw_rmse_after_warmup = b[RAW].rmse_after_warmup;
        f
    });
    let attack = AttackCounts {
        refused_by_admission: wire_total.refused,
        ..scene.attack
    };
    RunOutcome {
        world: super::report::WorldFigures::of(scene.world),
        recovery: scene.recovery.as_ref().map(Recovery::figures),
        learner_refits: scene.learner.refits(),
        learner_k: scene.learner.chosen_k(),
        classes: scene.oracle.classes(),
        ingested: scene.ingested,
        metrics: scene.metrics,
        wire_total,
        honest_robots: honest,
        attackers,
        memory,
        bus_records: stored.0,
        bus_bytes: stored.1,
        propagation: network.propagation(),
        ros,
        trust_curve: Vec::new(),
        attack,
        learned_gate,
        learned_prior_strength: learned_k0,
        paths,
    }
}
