//! The simulated fleet: robots that each run the qis loop (fingerprint, follow, ingest,
//! corrected prior, outcome, publish) on their own [`OutcomeMemory`], joined by an
//! [`Exchange`], and the round-based driver that feeds them episodes.
//!
//! Time: robots act in rounds of `episode_interval_s`; inside a round robot i acts at
//! offset i / N of the interval, so a record published by one robot can reach the next
//! ones within the same round when the delivery delay is shorter than that offset.

use std::collections::HashMap;

use nalgebra::DVector;
use rand::{RngExt, SeedableRng};

use crate::core::ids::{Fingerprint, ModelId, RecordKey, SourceId};
use crate::core::memory::{Ingest, MemoryConfig, OutcomeMemory};
use crate::core::neighbors::{Sketch, sketch};
use crate::core::record::OutcomeRecord;

use super::baselines::{LOCAL, Metrics, ORACLE, Oracle, QIS, RAW, prior_from};
use super::exchange::{Bus, BusConfig, Exchange, Network, WireStats};
use super::trust::TrustBook;
use super::world::{ContextMix, FEATURE_NAMES, STATE_DIM, STATE_SCALE, Situation};
use super::{SimConfig, SimError, SimRng};

/// What a robot remembers about a class it has met.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    /// Own count when the robot last published its record for the class.
    published_count: u64,
    /// When it last asked the fleet about the class (ns).
    followed_ns: i64,
}

/// One simulated robot running the qis loop.
pub struct Robot<E: Exchange> {
    source: SourceId,
    memory: OutcomeMemory,
    exchange: E,
    rng: SimRng,
    known: HashMap<Fingerprint, Known>,
    join_round: usize,
    leave_round: usize,
    attacker: bool,
    inbox: Vec<(RecordKey, OutcomeRecord)>,
    trust: TrustBook,
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

/// Runs one simulation on the in-process bus (see [`simulate_on`]).
pub fn simulate(
    config: &SimConfig,
    poison: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<RunOutcome, SimError> {
    let mut bus = Bus::new(BusConfig {
        delay_ns: (config.delay_ms * 1e6) as i64,
        max_sources_per_address: config.max_sources_per_address,
    });
    simulate_on(&mut bus, config, poison, progress)
}

/// Runs one simulation over `network`. The robots drawn as attackers are left out of
/// the error figures; with `poison` they publish poisoned records, without it they
/// behave (the reference run of an attack scenario).
pub fn simulate_on<N: Network>(
    network: &mut N,
    config: &SimConfig,
    poison: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<RunOutcome, SimError> {
    let fingerprinter = super::world::fingerprint_config()
        .validate()
        .map_err(SimError::Fingerprint)?;
    let synthesis = config.synthesis.clone();
    synthesis.validate().map_err(SimError::Synthesis)?;
    let model = ModelId::new("brake-wm/v1").map_err(SimError::Id)?;
    let feature_names: Vec<String> = FEATURE_NAMES.iter().map(|s| (*s).to_owned()).collect();

    // Independent streams, so the episodes do not depend on who attacks or when robots
    // come and go: the same seed gives the same episodes with and without an attack.
    let mix = ContextMix::zipf(
        config.zipf_exponent,
        &mut SimRng::seed_from_u64(config.seed),
    );
    let mut schedule = SimRng::seed_from_u64(config.seed ^ 0x5CED_u64);
    let mut attack_rng = SimRng::seed_from_u64(config.seed ^ 0xA77AC4);

    let rounds = config.episodes;
    let mut robots: Vec<Robot<N::Endpoint>> = Vec::with_capacity(config.robots);
    for i in 0..config.robots {
        let source = SourceId::new(format!("robot-{i:05}")).map_err(SimError::Id)?;
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
        robots.push(Robot {
            memory: OutcomeMemory::new(
                source.clone(),
                MemoryConfig {
                    max_received_records: config.max_received_records,
                    ..MemoryConfig::default()
                },
                synthesis.decay(),
            ),
            exchange: network.connect(source.clone())?,
            source,
            rng: SimRng::seed_from_u64(config.seed.wrapping_add(1 + i as u64)),
            known: HashMap::new(),
            join_round,
            leave_round,
            attacker,
            inbox: Vec::new(),
            trust: TrustBook::new(config.trust_tolerance),
        });
    }

    let interval_ns = (config.episode_interval_s * 1e9) as i64;
    let refollow_ns = (config.refollow_s * 1e9) as i64;
    let warmup = (rounds as f64 * config.warmup_fraction).round() as usize;
    let mut metrics = Metrics::new(rounds, config.windows, warmup);
    let mut oracle = Oracle::default();
    let decay = synthesis.decay();
    let attack_offset: [f64; STATE_DIM] = STATE_SCALE.map(|s| s * config.attack_bias);
    let n = robots.len().max(1) as i64;
    let mut ingested = 0u64;
    // A class's sketch is a pure function of its canonical form: computed once per class.
    let mut sketches: HashMap<Fingerprint, Sketch> = HashMap::new();

    for round in 0..rounds {
        for (i, robot) in robots.iter_mut().enumerate() {
            if round < robot.join_round {
                continue;
            }
            if round == robot.leave_round {
                robot.exchange.leave();
            }
            if round >= robot.leave_round {
                continue;
            }
            let now = round as i64 * interval_ns + i as i64 * interval_ns / n;
            network.advance(now);

            let context = mix.draw(&mut robot.rng);
            let situation = Situation::draw(context, &mut robot.rng);
            let tags = context.tags();
            let fp = fingerprinter
                .fingerprint(&tags, &feature_names, &situation.features())
                .map_err(SimError::Scenario)?;

            // Route: first encounter asks the fleet; an address whose received records
            // were all evicted is asked again (at most once per refollow interval).
            let first = !robot.known.contains_key(&fp);
            let known = robot.known.entry(fp).or_default();
            let held = robot
                .memory
                .address(&model, &fp)
                .map_or(0, |a| a.received.len());
            if first || (held == 0 && now - known.followed_ns >= refollow_ns) {
                known.followed_ns = now;
                robot.exchange.follow(&model, fp)?;
            }
            robot.exchange.poll(&mut robot.inbox)?;
            for (key, record) in robot.inbox.drain(..) {
                if robot.memory.ingest(&key, record) == Ingest::Stored {
                    ingested += 1;
                }
            }

            let predicted = situation.predict();
            let x = DVector::from_row_slice(&predicted);
            let qis = robot.memory.prior(
                &synthesis,
                &model,
                &fp,
                &[],
                &x,
                None,
                &|s| robot.trust.trust(s),
                now,
            )?;
            let own = robot
                .memory
                .address(&model, &fp)
                .and_then(|a| a.own.as_ref())
                .map(|o| &o.1);
            let local = prior_from(&synthesis, own, &x, now)?;
            let central = prior_from(&synthesis, oracle.summary(&fp), &x, now)?;
            let measured = situation.measure(&mut robot.rng);

            if !robot.attacker {
                let mut predictions = [[0.0; STATE_DIM]; 4];
                predictions[RAW] = predicted;
                for d in 0..STATE_DIM {
                    predictions[LOCAL][d] = local[d];
                    predictions[QIS][d] = qis.state[d];
                    predictions[ORACLE][d] = central[d];
                }
                let first_support = first.then(|| oracle.count(&fp));
                metrics.add(round, &predictions, &measured, first_support);
            }

            let mut residual = [0.0; STATE_DIM];
            for d in 0..STATE_DIM {
                residual[d] = measured[d] - predicted[d];
            }
            // Trust earned from outcomes: judge every source held here by this outcome.
            if let Some(addr) = robot.memory.address(&model, &fp) {
                for r in &addr.received {
                    robot.trust.observe(
                        &r.source,
                        r.summary.mean().as_slice(),
                        &residual,
                        &STATE_SCALE,
                    );
                }
            }
            oracle.add(fp, &residual, now, decay)?;
            if robot.attacker && poison {
                for (r, o) in residual.iter_mut().zip(attack_offset) {
                    *r += o;
                }
            }
            let sketch = match sketches.get(&fp) {
                Some(s) => *s,
                None => {
                    let canonical = fingerprinter
                        .canonicalize(&tags, &feature_names, &situation.features())
                        .map_err(SimError::Scenario)?;
                    let s = sketch(&canonical, &[]).map_err(SimError::Sketch)?;
                    sketches.insert(fp, s);
                    s
                }
            };
            let record = robot
                .memory
                .record_outcome(&model, fp, sketch, &residual, now)?;
            // Bandwidth budget: republish only when the own count grew by the configured
            // factor since the last publication (1, 2, 3, 4, 5, 7, 9, ... for 1.25).
            let count = record.summary.count();
            let known = robot.known.entry(fp).or_default();
            if known.published_count == 0
                || count as f64 >= known.published_count as f64 * config.republish_growth
            {
                known.published_count = count;
                let key = RecordKey {
                    model: model.clone(),
                    fingerprint: fp,
                    source: robot.source.clone(),
                };
                robot.exchange.publish(&key, &record)?;
            }
        }
        progress(round + 1);
    }

    let mut wire_total = WireStats::default();
    let mut memory = MemoryFigures {
        bound_received_records: config.max_received_records,
        ..Default::default()
    };
    let (mut honest, mut attackers) = (0, 0);
    let (mut sum_records, mut sum_bytes, mut sum_addr) = (0usize, 0usize, 0usize);
    for r in &robots {
        if r.attacker {
            attackers += 1;
            continue;
        }
        honest += 1;
        let w = r.exchange.wire();
        wire_total.published_records += w.published_records;
        wire_total.published_bytes += w.published_bytes;
        wire_total.received_records += w.received_records;
        wire_total.received_bytes += w.received_bytes;
        wire_total.dropped += w.dropped;
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
    Ok(RunOutcome {
        metrics,
        wire_total,
        honest_robots: honest,
        attackers,
        memory,
        bus_records: stored.0,
        bus_bytes: stored.1,
        classes: oracle.classes(),
        ingested,
    })
}
