//! The simulated fleet: robots that each run the qis loop (fingerprint, follow, ingest,
//! corrected prior, outcome, publish) on their own [`OutcomeMemory`], joined by an
//! [`Exchange`], and the round-based driver that feeds them episodes.
//!
//! Every robot runs the node's defences with the node's code and settings: a
//! self-certifying identity (ed25519 key, source id = public key); received records
//! checked against the record bounds ([`RecordBounds::check`]), judged by trust
//! ([`TrustBook::judge_record`]) and weighed by earned trust ([`TrustBook::source`]);
//! the plausibility gate learned from its own outcomes ([`ResidualEnvelope`],
//! [`ValidationConfig::learned_gate`], as `NodeLogic` does), never one taken from the
//! simulator's ground truth unless `--plausibility-margin` asks for that experiment; and
//! the privacy budget ([`OutcomeMemory::take_share`]) before its traffic budget.
//!
//! Attackers ([`super::AttackMode`]) publish every outcome, biased, ignoring both budgets
//! (`attackers_keep_budget`: only what the privacy budget lets out); with
//! Sybil rotation under a fresh identity every `sybil_rounds` rounds; with the seq hijack
//! they also put forged records (seq = u64::MAX, biased mean, signed with their own key)
//! under the source ids of honest robots whose records they hold, which every receiver
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
use crate::core::memory::{Ingest, MemoryConfig, OutcomeMemory};
use crate::core::neighbors::{NeighborIndex, Sketch, sketch};
use crate::core::plausibility::{RecordBounds, ResidualEnvelope, ValidationConfig};
use crate::core::privacy::PrivacyBudget;
use crate::core::record::{OutcomeRecord, TimeBase};
use crate::core::summary::Summary;
use crate::core::synthesis::SynthesisConfig;
use crate::core::trust::TrustBook;
use crate::fleet::Identity;
use crate::fleet::keys::record_key;
use crate::fleet::signing::seal;
use crate::ros::msgs::{Outcome, Prediction, Scenario};

use super::baselines::{LOCAL, Metrics, ORACLE, Oracle, QIS, RAW, prior_from};
use super::exchange::{Bus, BusConfig, Exchange, ExchangeError, Network, Propagation, WireStats};
use super::ros_node::{self, NodeRobot, RosFigures, RosNodes};
use super::world::{ContextMix, FEATURE_NAMES, STATE_DIM, STATE_SCALE, Situation};
use super::zenoh_net::{MixedNetwork, ZenohNetConfig, ZenohNetwork};
use super::{SIM_FLEET, SimConfig, SimError, SimRng};

/// What a robot remembers about a class it has met.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    /// Own count when the robot last published its record for the class.
    published_count: u64,
    /// When it last asked the fleet about the class (ns).
    followed_ns: i64,
}

/// What an attacking robot keeps besides its loop.
struct Attacker {
    /// Where its Sybil keys come from (its own stream: the episodes do not depend on it).
    keys: SimRng,
    /// The Sybil identity it publishes under now, and the rotation epoch it belongs to.
    sybil: Option<(usize, Identity)>,
}

/// One simulated robot running the qis loop.
pub struct Robot<E: Exchange> {
    /// Its name in episode ids and node namespaces (`robot-00017`).
    name: String,
    /// Its key and self-certifying source id.
    identity: Identity,
    source: SourceId,
    memory: OutcomeMemory,
    exchange: E,
    rng: SimRng,
    known: HashMap<Fingerprint, Known>,
    join_round: usize,
    leave_round: usize,
    attacker: bool,
    attack: Option<Attacker>,
    inbox: Vec<(RecordKey, OutcomeRecord)>,
    trust: TrustBook,
    /// Its residual envelope, fed by its own outcomes as `NodeLogic` feeds the node's.
    envelope: ResidualEnvelope,
    /// The synthesis settings in force: the run's, with the gate learned from
    /// `envelope` when none is configured (as `NodeLogic::refresh_gate`).
    synthesis: SynthesisConfig,
    /// Whether `synthesis` holds the gate of the current envelope.
    gate_current: bool,
    /// What a received record may claim (the node's `validation` bounds, simulated time).
    bounds: RecordBounds,
    /// Similarity index over the addresses this robot knows (two-level addressing),
    /// when neighbor borrowing is on.
    neighbors: Option<NeighborIndex>,
    /// Its `qis_node`, when this robot's loop runs through one over ROS 2 topics.
    node: Option<Box<NodeRobot>>,
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
    /// How much honest robots trust attackers and honest sources, at the end of each
    /// window (empty without attackers).
    pub trust_curve: Vec<TrustPoint>,
    /// What the attackers did and what the defences refused.
    pub attack: AttackCounts,
    /// The plausibility gate the honest robots still present had learned at the end, mean
    /// per component (empty when a gate is configured or none was learned).
    pub learned_gate: Vec<f64>,
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
        for other in robots {
            if other.source == judge.source {
                continue;
            }
            let t = judge.trust.trust(other.publishing_source());
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

/// Estimated heap + inline bytes of one received record held in an [`OutcomeMemory`].
fn held_record_bytes(source: &SourceId) -> usize {
    std::mem::size_of::<crate::core::memory::SourceRecord>()
        + 8 * STATE_DIM
        + 8 * STATE_DIM * STATE_DIM
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
    let mut bus = Bus::new(BusConfig {
        delay_ns: (config.delay_ms * 1e6) as i64,
        max_sources_per_address: config.max_sources_per_address,
        sign_records: config.sign_records,
    });
    if config.zenoh_robots > 0 {
        let zenoh = ZenohNetwork::start(ZenohNetConfig::default())?;
        let mut mixed = MixedNetwork::new(bus, zenoh, config.zenoh_robots);
        return simulate_on(&mut mixed, config, poison, progress);
    }
    simulate_on(&mut bus, config, poison, progress)
}

/// What every robot's episode reads or feeds: settings, the world and the scorekeeping.
struct Scene<'a> {
    config: &'a SimConfig,
    poison: bool,
    fingerprinter: Fingerprinter,
    /// The run's synthesis settings (the baselines' too); robots add their learned gate.
    synthesis: SynthesisConfig,
    /// Whether robots learn their gate (no gate configured).
    learn_gate: bool,
    validation: ValidationConfig,
    budget: PrivacyBudget,
    fleet: FleetName,
    /// Every source id attackers publish under (own and Sybil): forgers spare them.
    attacker_sources: HashSet<SourceId>,
    attack: AttackCounts,
    model: ModelId,
    feature_names: Vec<String>,
    mix: ContextMix,
    oracle: Oracle,
    metrics: Metrics,
    /// The same bookkeeping for the robots that run through `qis_node` only.
    node_metrics: Metrics,
    /// A class's sketch is a pure function of its canonical form: computed once per class.
    sketches: HashMap<Fingerprint, Sketch>,
    attack_offset: [f64; STATE_DIM],
    refollow_ns: i64,
    ingested: u64,
}

impl Scene<'_> {
    fn sketch(
        &mut self,
        fp: Fingerprint,
        tags: &[String],
        features: &[f64],
    ) -> Result<Sketch, SimError> {
        if let Some(s) = self.sketches.get(&fp) {
            return Ok(*s);
        }
        let canonical = self
            .fingerprinter
            .canonicalize(tags, &self.feature_names, features)
            .map_err(SimError::Scenario)?;
        let s = sketch(&canonical, &[]).map_err(SimError::Sketch)?;
        self.sketches.insert(fp, s);
        Ok(s)
    }
}

impl<E: Exchange> Robot<E> {
    /// The source id this robot's records go out under: its own, or while it attacks with
    /// Sybil rotation, its current Sybil identity's.
    fn publishing_source(&self) -> &SourceId {
        match self.attack.as_ref().and_then(|a| a.sybil.as_ref()) {
            Some((_, id)) => id.source(),
            None => &self.source,
        }
    }

    /// Puts the plausibility gate in force as `NodeLogic::refresh_gate` does: the
    /// configured one, else the one learned from this robot's own outcomes once it has
    /// enough of them, else none.
    fn refresh_gate(&mut self, scene: &Scene<'_>) {
        if !scene.learn_gate || self.gate_current {
            return;
        }
        match scene.validation.learned_gate(&self.envelope, &scene.model) {
            Some(gate) => {
                self.synthesis.max_residual = gate;
                self.gate_current = true;
            }
            None => self.synthesis.max_residual.clear(),
        }
    }

    /// Route: the first encounter asks the fleet; an address whose received records were
    /// all evicted is asked again (at most once per refollow interval). Then check, judge
    /// and ingest what arrived, as the node's `on_record` does.
    fn route(
        &mut self,
        scene: &mut Scene<'_>,
        fp: Fingerprint,
        now: i64,
    ) -> Result<bool, SimError> {
        let first = !self.known.contains_key(&fp);
        let known = self.known.entry(fp).or_default();
        let held = self
            .memory
            .address(&scene.model, &fp)
            .map_or(0, |a| a.received.len());
        if first || (held == 0 && now - known.followed_ns >= scene.refollow_ns) {
            known.followed_ns = now;
            self.exchange.follow(&scene.model, fp)?;
        }
        self.exchange.poll(&mut self.inbox)?;
        let mut fed = Vec::new();
        for (key, record) in self.inbox.drain(..) {
            if self.bounds.check(&record, now).is_err() {
                // A claim no honest node makes: refused, and a miss for trust.
                if !self.attacker {
                    scene.attack.refused_by_bounds += 1;
                }
                if key.source != self.source {
                    self.trust.observe(&key.source, &[f64::INFINITY], &[0.0]);
                }
                // The node robot's node checks (and refuses) it itself.
                if self.node.is_some() {
                    fed.push((key, record));
                }
                continue;
            }
            self.trust.judge_record(
                &self.source,
                &key.source,
                &record.summary,
                self.memory.own_summary(&key.model, &key.fingerprint),
                &self.synthesis.max_residual,
            );
            if let Some(index) = &mut self.neighbors {
                index
                    .insert(&key.model, key.fingerprint, &record.sketch)
                    .map_err(SimError::Sketch)?;
            }
            if self.node.is_some() {
                fed.push((key.clone(), record.clone()));
            }
            if self.memory.ingest(&key, record) == Ingest::Stored {
                scene.ingested += 1;
            }
        }
        // A node robot's node gets the same records: those at a new address answer its
        // first-encounter fetch, the others go into its record channel.
        if let Some(node) = &mut self.node {
            node.deliver(first.then_some(fp), fed)?;
        }
        Ok(first)
    }

    /// Neighbor addresses to borrow from when the exact address has thin support.
    fn near(
        &self,
        scene: &Scene<'_>,
        fp: Fingerprint,
        sketch: &Sketch,
    ) -> Result<Vec<(Fingerprint, f32)>, SimError> {
        let Some(index) = &self.neighbors else {
            return Ok(Vec::new());
        };
        let support: u64 = self.memory.address(&scene.model, &fp).map_or(0, |a| {
            a.own.as_ref().map_or(0, |o| o.1.count())
                + a.received.iter().map(|r| r.summary.count()).sum::<u64>()
        });
        if support as f64 >= self.synthesis.min_support {
            return Ok(Vec::new());
        }
        let mut near = index
            .nearest(&scene.model, sketch, scene.config.neighbors + 1)
            .map_err(SimError::Sketch)?;
        near.retain(|(f, _)| *f != fp);
        near.truncate(scene.config.neighbors);
        Ok(near)
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
            None => self.exchange.publish(&key, record)?,
        }
        if !scene.config.attack.hijack() {
            return Ok(());
        }
        let Some(addr) = self.memory.address(&key.model, &key.fingerprint) else {
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
            for (m, o) in mean.iter_mut().zip(scene.attack_offset) {
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
    fn episode(&mut self, scene: &mut Scene<'_>, round: usize, now: i64) -> Result<(), SimError> {
        let attacking = self.attacker && scene.poison;
        if attacking && scene.config.attack.sybil() {
            self.rotate(scene, round);
        }
        self.refresh_gate(scene);
        let context = scene.mix.draw(&mut self.rng);
        let situation = Situation::draw(context, &mut self.rng);
        let tags = context.tags();
        let features = situation.features();
        let fp = scene
            .fingerprinter
            .fingerprint(&tags, &scene.feature_names, &features)
            .map_err(SimError::Scenario)?;
        let first = self.route(scene, fp, now)?;
        let sketch = scene.sketch(fp, &tags, &features)?;
        let near = self.near(scene, fp, &sketch)?;

        let predicted = situation.predict();
        let x = DVector::from_row_slice(&predicted);
        let trust = &self.trust;
        let on_node = self.node.is_some();
        let qis = self.memory.prior(
            &self.synthesis,
            &scene.model,
            &fp,
            &near,
            &x,
            None,
            &|s| trust.source(s),
            now,
        )?;
        let mut qis_state = [0.0; STATE_DIM];
        for (q, v) in qis_state.iter_mut().zip(qis.state.iter()) {
            *q = *v;
        }
        let episode_id = format!("{}-{round}", self.name);
        if let Some(node) = &mut self.node {
            let p = Prediction {
                episode_id: episode_id.clone(),
                model_id: scene.model.as_str().to_owned(),
                scenario: Scenario {
                    tags: tags.to_vec(),
                    feature_names: scene.feature_names.clone(),
                    features: features.to_vec(),
                    embedding: Vec::new(),
                },
                state: predicted.to_vec(),
                ..Prediction::default()
            };
            let prior = node.predict(now, &p)?;
            if prior.state.len() != STATE_DIM {
                return Err(SimError::Ros(format!(
                    "corrected prior of {episode_id} has {} components",
                    prior.state.len()
                )));
            }
            let mut diff = 0.0_f64;
            for d in 0..STATE_DIM {
                diff = diff.max(((prior.state[d] - qis_state[d]) / STATE_SCALE[d]).abs());
                qis_state[d] = prior.state[d];
            }
            node.compare(diff);
        }
        // The baselines have nothing to defend against: the run's settings, no learned gate.
        let own = self.memory.own_summary(&scene.model, &fp);
        let local = prior_from(&scene.synthesis, own, &x, now)?;
        let central = prior_from(&scene.synthesis, scene.oracle.summary(&fp), &x, now)?;
        let measured = situation.measure(&mut self.rng);

        if !self.attacker {
            let mut predictions = [[0.0; STATE_DIM]; 4];
            predictions[RAW] = predicted;
            for d in 0..STATE_DIM {
                predictions[LOCAL][d] = local[d];
                predictions[QIS][d] = qis_state[d];
                predictions[ORACLE][d] = central[d];
            }
            let first_support = first.then(|| scene.oracle.count(&fp));
            scene
                .metrics
                .add(round, &predictions, &measured, first_support);
            if on_node {
                scene
                    .node_metrics
                    .add(round, &predictions, &measured, first_support);
            }
        }

        let mut residual = [0.0; STATE_DIM];
        for d in 0..STATE_DIM {
            residual[d] = measured[d] - predicted[d];
        }
        // Trust earned from outcomes: judge every source held here by this outcome.
        if let Some(addr) = self.memory.address(&scene.model, &fp) {
            for r in &addr.received {
                self.trust
                    .observe(&r.source, r.summary.mean().as_slice(), &residual);
            }
        }
        scene
            .oracle
            .add(fp, &residual, now, scene.synthesis.decay())?;
        if attacking {
            for (r, o) in residual.iter_mut().zip(scene.attack_offset) {
                *r += o;
            }
        }
        if let Some(index) = &mut self.neighbors {
            index
                .insert(&scene.model, fp, &sketch)
                .map_err(SimError::Sketch)?;
        }
        let record = self
            .memory
            .record_outcome(&scene.model, fp, sketch, &residual, now)?;
        // The learned gate's envelope, fed as the node feeds it (no stated covariance:
        // the simulated model states none).
        if self.envelope.observe(&scene.model, &residual, None) {
            self.gate_current = false;
        }
        let key = RecordKey {
            model: scene.model.clone(),
            fingerprint: fp,
            source: self.source.clone(),
        };
        if attacking {
            if scene.config.attackers_keep_budget
                && !self.memory.take_share(&scene.model, &fp, scene.budget)
            {
                return Ok(());
            }
            return self.attack(scene, key, &record);
        }
        // A node robot shares what its node handed to its fleet port (its own memory
        // above only serves the local-only baseline and the comparison); the others what
        // the privacy budget lets out, as the node decides (`OutcomeMemory::take_share`).
        let shared = match &mut self.node {
            Some(node) => {
                let o = Outcome {
                    episode_id,
                    state: measured.to_vec(),
                    ..Outcome::default()
                };
                node.outcome(&o)?.1.pop()
            }
            None => self
                .memory
                .take_share(&scene.model, &fp, scene.budget)
                .then_some((key, record)),
        };
        // Traffic budget on top: publish what the privacy budget let out only when the
        // own count grew by the configured factor since the last publication.
        if let Some((key, record)) = shared {
            let count = record.summary.count();
            let known = self.known.entry(fp).or_default();
            if known.published_count == 0
                || count as f64 >= known.published_count as f64 * scene.config.republish_growth
            {
                known.published_count = count;
                self.exchange.publish(&key, &record)?;
                if let Some(node) = &mut self.node {
                    node.count_published();
                }
            }
        }
        if let Some(node) = &mut self.node {
            for (model, f) in node.interests() {
                self.exchange.follow(&model, f)?;
            }
        }
        Ok(())
    }
}

/// Creates the robots: who joins late, who leaves early, who attacks, each from its own
/// random stream so the episodes do not depend on the others; every robot gets an
/// ed25519 key and the self-certifying source id of its public key.
fn spawn<N: Network>(
    network: &mut N,
    config: &SimConfig,
    decay: crate::core::summary::Decay,
) -> Result<Vec<Robot<N::Endpoint>>, SimError> {
    let mut schedule = SimRng::seed_from_u64(config.seed ^ 0x5CED_u64);
    let mut attack_rng = SimRng::seed_from_u64(config.seed ^ 0xA77AC4);
    let mut key_rng = SimRng::seed_from_u64(config.seed ^ 0x1DE7_17E5);
    let rounds = config.episodes;
    let bounds = config.validation.bounds(TimeBase::Sim);
    let mut robots = Vec::with_capacity(config.robots);
    for i in 0..config.robots {
        let identity = Identity::signed(SigningKey::from_bytes(&key_rng.random::<[u8; 32]>()));
        let source = identity.source().clone();
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
        let mut memory = OutcomeMemory::new(
            source.clone(),
            MemoryConfig {
                max_received_records: config.max_received_records,
                ..MemoryConfig::default()
            },
            decay,
        );
        // Simulated robots run on simulated time, like the node robots (`use_sim_time`),
        // whose record bounds refuse records of another time base.
        memory.set_time_base(TimeBase::Sim);
        robots.push(Robot {
            name: format!("robot-{i:05}"),
            memory,
            exchange: network.connect(&identity)?,
            identity,
            source,
            rng: SimRng::seed_from_u64(config.seed.wrapping_add(1 + i as u64)),
            known: HashMap::new(),
            join_round,
            leave_round,
            attacker,
            attack: attacker.then(|| Attacker {
                keys: SimRng::seed_from_u64(config.seed ^ 0x5B11_0000 ^ ((i as u64) << 24)),
                sybil: None,
            }),
            inbox: Vec::new(),
            trust: TrustBook::new(config.trust()),
            envelope: ResidualEnvelope::default(),
            synthesis: config.synthesis.clone(),
            gate_current: false,
            bounds,
            neighbors: (config.neighbors > 0).then(NeighborIndex::new),
            node: None,
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
    let synthesis = config.synthesis.clone();
    synthesis.validate().map_err(SimError::Synthesis)?;
    config.validation.validate().map_err(SimError::Validation)?;
    let rounds = config.episodes;
    let warmup = (rounds as f64 * config.warmup_fraction).round() as usize;
    let mut scene = Scene {
        config,
        poison,
        fingerprinter: super::world::fingerprint_config()
            .validate()
            .map_err(SimError::Fingerprint)?,
        model: ModelId::new("brake-wm/v1").map_err(SimError::Id)?,
        feature_names: FEATURE_NAMES.iter().map(|s| (*s).to_owned()).collect(),
        // Its own stream: the class mix is the same whatever else the seed drives.
        mix: ContextMix::zipf(
            config.zipf_exponent,
            &mut SimRng::seed_from_u64(config.seed),
        ),
        oracle: Oracle::default(),
        metrics: Metrics::new(rounds, config.windows, warmup),
        node_metrics: Metrics::new(rounds, config.windows, warmup),
        sketches: HashMap::new(),
        attack_offset: STATE_SCALE.map(|s| s * config.attack_bias),
        refollow_ns: (config.refollow_s * 1e9) as i64,
        ingested: 0,
        learn_gate: synthesis.max_residual.is_empty(),
        validation: config.validation.clone(),
        budget: PrivacyBudget {
            min_count: config.min_count_to_share,
        },
        fleet: FleetName::new(SIM_FLEET).map_err(SimError::Id)?,
        attacker_sources: HashSet::new(),
        attack: AttackCounts::default(),
        synthesis,
    };
    // Declared before the robots: their nodes shut down before the router closes.
    let mut ros_nodes: Option<RosNodes> = None;
    let mut robots = spawn(network, config, scene.synthesis.decay())?;
    scene.attacker_sources = robots
        .iter()
        .filter(|r| r.attacker)
        .map(|r| r.source.clone())
        .collect();
    if config.ros_robots > 0 {
        let nodes = ros_nodes.insert(RosNodes::start()?);
        let params = RosNodes::params(config);
        // The last robots present the whole run and honest: their episodes come late in
        // each round, after most of the fleet has published.
        let mut picked = 0;
        for robot in robots.iter_mut().rev() {
            if picked == config.ros_robots {
                break;
            }
            if robot.join_round == 0 && robot.leave_round == usize::MAX && !robot.attacker {
                robot.node = Some(Box::new(nodes.attach(
                    &robot.name,
                    &robot.source,
                    params.clone(),
                )?));
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
                if let Some(node) = &mut robot.node {
                    node.shutdown();
                }
            }
            if round >= robot.leave_round {
                continue;
            }
            let now = round as i64 * interval_ns + i as i64 * interval_ns / n;
            network.advance(now);
            robot.episode(&mut scene, round, now)?;
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
        if let Some(node) = &mut robot.node {
            node.shutdown();
        }
    }
    drop(robots);
    drop(ros_nodes);
    Ok(outcome)
}

/// The end-of-run figures: traffic of the honest robots, memory of those still present.
fn tally<N: Network>(
    network: &N,
    config: &SimConfig,
    robots: &[Robot<N::Endpoint>],
    scene: Scene<'_>,
) -> RunOutcome {
    let mut wire_total = WireStats::default();
    let mut memory = MemoryFigures {
        bound_received_records: config.max_received_records,
        ..Default::default()
    };
    let (mut honest, mut attackers) = (0, 0);
    let (mut sum_records, mut sum_bytes, mut sum_addr) = (0usize, 0usize, 0usize);
    for r in robots {
        if r.attacker {
            attackers += 1;
            continue;
        }
        honest += 1;
        wire_total.add(&r.exchange.wire());
        if r.leave_round != usize::MAX {
            continue;
        }
        let held = r.memory.received_len();
        let bytes = held * held_record_bytes(&r.source)
            + r.memory.addresses_len() * (std::mem::size_of::<(Fingerprint, Known)>() + 64);
        memory.robots += 1;
        memory.max_received_records = memory.max_received_records.max(held);
        memory.max_memory_bytes = memory.max_memory_bytes.max(bytes);
        sum_records += held;
        sum_bytes += bytes;
        sum_addr += r.memory.addresses_len();
    }
    if memory.robots > 0 {
        let k = memory.robots as f64;
        memory.mean_received_records = sum_records as f64 / k;
        memory.mean_memory_bytes = sum_bytes as f64 / k;
        memory.mean_addresses = sum_addr as f64 / k;
    }
    let stored = network.stored().unwrap_or_default();
    let ros = robots.iter().any(|r| r.node.is_some()).then(|| {
        let mut f = ros_node::figures(robots.iter().filter_map(|r| r.node.as_deref()));
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
    let mut learned_gate = vec![0.0; STATE_DIM];
    let mut gated = 0usize;
    if scene.learn_gate {
        for r in robots
            .iter()
            .filter(|r| !r.attacker && r.leave_round == usize::MAX)
        {
            if let Some(g) = scene.validation.learned_gate(&r.envelope, &scene.model) {
                gated += 1;
                for (m, v) in learned_gate.iter_mut().zip(g) {
                    *m += v;
                }
            }
        }
    }
    if gated == 0 {
        learned_gate.clear();
    }
    learned_gate
        .iter_mut()
        .for_each(|v| *v /= gated.max(1) as f64);
    RunOutcome {
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
    }
}
