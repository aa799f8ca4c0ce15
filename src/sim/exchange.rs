//! How simulated robots share outcome records: the [`Exchange`] trait the fleet logic is
//! written against, and [`Bus`], an in-process implementation for large fleets.
//!
//! The trait mirrors the Zenoh key space of docs/PROTOCOL.md: a robot publishes its latest
//! record for an address (`qis/v2/<fleet>/<lane>/<model>/<fp>/<source>`), follows an address when it
//! first meets the scenario (one query for what is stored there, then live updates), and
//! polls what arrived. Records cross it in their encoded wire form, so the simulator
//! counts real bytes and exercises the decoder.
//!
//! Anyone with write access to the key space can put anything under any key: an
//! endpoint can also put bytes sealed by their writer ([`Exchange::put_sealed`]) under
//! another source's key (a Sybil identity it holds the key of, or a forgery under an
//! honest source). Such bytes reach a robot only through the product's admission check
//! ([`crate::fleet::signing::Admission::open`], self-certified sources, as a node runs it
//! by default), run on the receiving side. With [`BusConfig::sign_records`] (the
//! simulator's default) every record is sealed by its writer and opened there, as in the
//! product; without it honest records take the in-memory path (encoded, unsigned). The
//! check is a pure function of the key expression, the source and the bytes, which are the
//! same for every receiver of one publication: the first receiver opens it and the others
//! get that verdict (each counts its own refusal), so the bus verifies each publication
//! once rather than once per delivery.
//!
//! The bus behaves like a Zenoh storage plus subscriptions: it keeps the latest put
//! per (address, source), whatever seq it claims (a storage orders puts by arrival, not
//! by what they say); a record becomes visible `delay_ns` after it was published. The
//! fan-in is the product's ([`crate::fleet::lanes`], as `FleetExchange` runs it): each
//! robot keeps a [`LaneSelection`] fed by the sources delivered to it and revised when it
//! follows an address; a follower receives live every update at the address from the
//! sources in its selected lanes (the whole fleet until it has seen twice its budget
//! `max_sources_per_address`), and a follow's query answers with the sources of its own
//! lanes, widened once (× 4) while fewer than the budget answered. That is what keeps a
//! node's memory and traffic bounded by config while the fleet grows. (A `FleetExchange`
//! also receives, and drops, the records of unfollowed addresses in its lanes; the bus
//! does not deliver or count those.)

use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde::Serialize;
use thiserror::Error;

use ed25519_dalek::SigningKey;

use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, Seq, SourceId};
use crate::core::privacy::shared_form;
use crate::core::record::{EncodeError, OutcomeRecord, decode};
use crate::fleet::keys::record_key;
use crate::fleet::lanes::{
    Lane, LaneSelection, LaneSet, MAX_PREFIXES, lane_and_hash, select, widening,
};
use crate::fleet::signing::{Admission, seal};
use crate::fleet::{Identity, RepublishPolicy};

/// Why an exchange operation failed.
#[derive(Debug, Error)]
pub enum ExchangeError {
    /// The record could not be encoded (e.g. it holds no outcome).
    #[error("record for {fingerprint} not encoded: {source}")]
    Encode {
        /// Address of the record.
        fingerprint: Fingerprint,
        /// Why.
        source: EncodeError,
    },
    /// The endpoint has left the fleet.
    #[error("endpoint of {0} has left the fleet")]
    Left(SourceId),
    /// A networked exchange failed (session, router, query).
    #[error("network: {0}")]
    Network(String),
}

/// Propagation measured by a networked exchange: publish call → record held in the
/// receiving robot's inbox, over live deliveries (query replies are not counted).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Propagation {
    /// Which network measured it.
    pub network: &'static str,
    /// Sessions opened (one per robot).
    pub sessions: usize,
    /// Live deliveries measured.
    pub samples: u64,
    /// Median latency (ms).
    pub p50_ms: f64,
    /// 99th percentile latency (ms).
    pub p99_ms: f64,
    /// Largest latency (ms).
    pub max_ms: f64,
    /// Live deliveries expected (followers of the address at each publication).
    pub expected_deliveries: u64,
    /// Live deliveries that arrived.
    pub delivered: u64,
    /// Deliveries whose publication was unknown (should be 0).
    pub unmatched: u64,
    /// Live deliveries nobody owed (duplicates during a lane change, puts just before a
    /// follow).
    pub not_owed: u64,
    /// Owed deliveries written off (timeouts, or lanes that moved while in flight).
    pub written_off: u64,
    /// Rounds whose wait for the expected deliveries timed out.
    pub timed_out_rounds: u64,
    /// Wall time the driver spent waiting for deliveries at round ends (s).
    pub settle_wait_s: f64,
    /// Follows (subscribe + one query round trip through the router).
    pub follows: u64,
    /// Median wall time of a follow (ms).
    pub follow_p50_ms: f64,
    /// 99th percentile wall time of a follow (ms).
    pub follow_p99_ms: f64,
    /// Total wall time in follows (s): the simulator waits for each one.
    pub follow_wait_s: f64,
    /// Total wall time in publish calls (s; they only queue).
    pub publish_wait_s: f64,
    /// Fan-in on the wire, summed over the Zenoh robots.
    pub lanes: LaneFigures,
    /// The bare Zenoh put/subscribe of the same bytes with the same subscriptions, in
    /// the same run.
    pub bare: BareFigures,
}

/// What the Zenoh robots' lane selections let in, summed over them (monotonic counters
/// of their exchanges; the last two are over the robots' final state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LaneFigures {
    /// Records that crossed the wire to them (live samples and query replies).
    pub received_records: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Live samples of addresses the receiver does not follow (dropped at intake).
    pub dropped_unfollowed: u64,
    /// Live samples of lanes the receiver has not selected (dropped at intake).
    pub dropped_unselected: u64,
    /// Refused because the key's lane is not its source's.
    pub rejected_lane: u64,
    /// Gets issued (one per lane prefix and step).
    pub queries: u64,
    /// Query steps that widened beyond the robot's own lanes.
    pub widened_queries: u64,
    /// Lane changes (subscriptions redeclared).
    pub lane_changes: u64,
    /// Mean lane prefixes subscribed at the end.
    pub mean_prefixes: f64,
    /// Most Zenoh declarations one robot held at the end (subscriptions + queryable).
    pub max_declarations: u64,
}

/// The bare baseline: each publication's bytes (same length) put once more by the same
/// session under a `qisbare/...` key of the same shape, received by bare subscriptions
/// mirroring each robot's lane subscriptions; no signing, no checks, no channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct BareFigures {
    /// Bare deliveries (to robots other than the publisher).
    pub delivered: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Median put → subscriber callback (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
}

/// Records and bytes one endpoint put on and took off the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WireStats {
    /// Records published.
    pub published_records: u64,
    /// Bytes published (encoded records).
    pub published_bytes: u64,
    /// Records delivered to this endpoint (query replies and live updates).
    pub received_records: u64,
    /// Bytes delivered to this endpoint.
    pub received_bytes: u64,
    /// Delivered records that failed to decode and were dropped.
    pub dropped: u64,
    /// Delivered records the admission check refused (not signed by the key their
    /// source id names: forgeries).
    pub refused: u64,
}

impl WireStats {
    /// Adds another endpoint's figures to these.
    pub fn add(&mut self, other: &WireStats) {
        self.published_records += other.published_records;
        self.published_bytes += other.published_bytes;
        self.received_records += other.received_records;
        self.received_bytes += other.received_bytes;
        self.dropped += other.dropped;
        self.refused += other.refused;
    }
}

/// One robot's connection to the fleet: the operations the node logic needs.
pub trait Exchange {
    /// Shares this robot's latest record for an address (replaces its previous one) as
    /// the product's exchange does: put only when the republish rule lets it out
    /// ([`RepublishPolicy`]). Returns whether it was put.
    fn publish(&mut self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, ExchangeError>;
    /// Puts `bytes`, sealed by their writer ([`crate::fleet::signing::seal`]) as version
    /// `seq`, under `key` whatever source it names, as any peer with write access to the
    /// key space can. Every receiver opens them with the admission check; only what it
    /// accepts is delivered. `authentic`: the writer holds the key `key.source` names (a
    /// Sybil identity) rather than forging; networks use it for delivery bookkeeping only,
    /// never to decide acceptance.
    fn put_sealed(
        &mut self,
        key: &RecordKey,
        seq: Seq,
        bytes: Vec<u8>,
        authentic: bool,
    ) -> Result<(), ExchangeError>;
    /// Asks what the fleet holds at an address and follows its updates from now on.
    /// Idempotent: following again re-fetches the followed records.
    fn follow(&mut self, model: &ModelId, fingerprint: Fingerprint) -> Result<(), ExchangeError>;
    /// Moves the records received since the last poll into `out` (decoded, checked).
    fn poll(&mut self, out: &mut Vec<(RecordKey, OutcomeRecord)>) -> Result<(), ExchangeError>;
    /// What this endpoint has sent and received so far.
    fn wire(&self) -> WireStats;
    /// Leaves the fleet: no more deliveries; records already published stay stored.
    fn leave(&mut self);
}

/// What joins simulated robots: hands out endpoints and moves the simulated clock.
/// [`Bus`] is the in-process one; [`super::zenoh_net::ZenohNetwork`] opens a real Zenoh
/// session per robot in `connect` and lets deliveries settle in `end_round`.
pub trait Network {
    /// A robot's endpoint.
    type Endpoint: Exchange;
    /// Connects a robot whose records carry `identity`'s source id (and are signed with
    /// its key where the network signs).
    fn connect(&mut self, identity: &Identity) -> Result<Self::Endpoint, ExchangeError>;
    /// The simulated clock reached `now_ns`: deliver what is due.
    fn advance(&mut self, now_ns: i64);
    /// Records and bytes the fleet's storage holds, when the network can tell.
    fn stored(&self) -> Option<(usize, usize)>;
    /// The driver finished a round: a real-time network lets the round's deliveries
    /// arrive (bounded) before the next round starts.
    fn end_round(&mut self) -> Result<(), ExchangeError> {
        Ok(())
    }
    /// Measured propagation latency, when the network measures it (the bus does not: its
    /// delay is configured).
    fn propagation(&self) -> Option<Propagation> {
        None
    }
}

/// Settings of the in-process bus.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BusConfig {
    /// Time from publication to visibility at other robots (ns).
    pub delay_ns: i64,
    /// Most sources a robot follows per address (its fan-in budget).
    pub max_sources_per_address: usize,
    /// Seal every record with its writer's key and open it at every receiver (forged and
    /// Sybil puts always are); false = honest records are encoded without a signature.
    pub sign_records: bool,
    /// The product exchange's republish rule (`exchange.republish_growth`).
    pub republish: RepublishPolicy,
}

type ModelIx = u16;
type RobotIx = u32;

/// What the admission check said of one sealed publication (`None`: refused), filled by
/// its first receiver.
type Verdict = Rc<OnceCell<Option<OutcomeRecord>>>;

/// One source's latest record at an address.
#[derive(Clone)]
struct Held {
    source: RobotIx,
    bytes: Rc<[u8]>,
    /// Sealed: receivers must open it with the admission check.
    sealed: Option<Verdict>,
}

#[derive(Default)]
struct AddressState {
    held: Vec<Held>,
    by_source: HashMap<RobotIx, usize>,
    /// Robots following the address (each hears the sources of its own lanes).
    followers: Vec<RobotIx>,
}

/// Sources a robot remembers for its estimate of the fleet's size (the product's bound
/// is 65,536 per node; a few thousand robots in one process cannot each hold that).
const SIM_MAX_SEEN: usize = 4096;

/// One robot's lanes: the product's selection state and its query plan.
struct RobotLanes {
    selection: LaneSelection,
    /// The lane sets of the query's widening steps for the current selection (computed
    /// when first needed after a change).
    plan: Vec<LaneSet>,
}

struct InFlight {
    at_ns: i64,
    model: ModelIx,
    fingerprint: Fingerprint,
    source: RobotIx,
    bytes: Rc<[u8]>,
    sealed: Option<Verdict>,
}

struct Delivery {
    model: ModelIx,
    fingerprint: Fingerprint,
    source: RobotIx,
    bytes: Rc<[u8]>,
    sealed: Option<Verdict>,
}

struct Shared {
    config: BusConfig,
    now_ns: i64,
    models: Vec<ModelId>,
    /// Every source id seen, robots first as they join, then ids only written under
    /// (Sybil identities, forged sources); indexes `active` and the per-robot tables.
    sources: Vec<SourceId>,
    by_source: HashMap<SourceId, RobotIx>,
    fleet: FleetName,
    admission: Admission,
    active: Vec<bool>,
    inboxes: Vec<Vec<Delivery>>,
    stats: Vec<WireStats>,
    /// Each source's lane and hash (by index).
    lanes_of: Vec<(Lane, u64)>,
    /// Each robot's lane selection.
    lanes: Vec<RobotLanes>,
    addresses: HashMap<(ModelIx, Fingerprint), AddressState>,
    in_flight: VecDeque<InFlight>,
}

/// The in-process exchange shared by every simulated robot (single-threaded).
#[derive(Clone)]
pub struct Bus(Rc<RefCell<Shared>>);

/// A robot's endpoint on the [`Bus`].
pub struct BusEndpoint {
    bus: Bus,
    robot: RobotIx,
    /// Its signing key, used when the bus seals every record.
    key: Option<SigningKey>,
    /// Outcome count of the version last put, per own address (the republish rule's
    /// memory, as the product's exchange keeps it beside what it serves).
    put_counts: HashMap<(ModelId, Fingerprint), u64>,
}

impl Bus {
    /// An empty bus.
    pub fn new(config: BusConfig) -> Bus {
        Bus(Rc::new(RefCell::new(Shared {
            config,
            now_ns: i64::MIN,
            models: Vec::new(),
            sources: Vec::new(),
            by_source: HashMap::new(),
            fleet: FleetName::new(super::SIM_FLEET).expect("the simulated fleet's name is valid"),
            admission: Admission::default(),
            active: Vec::new(),
            inboxes: Vec::new(),
            stats: Vec::new(),
            lanes_of: Vec::new(),
            lanes: Vec::new(),
            addresses: HashMap::new(),
            in_flight: VecDeque::new(),
        })))
    }

    /// Connects a robot; its records will carry `source` (unsigned).
    pub fn join(&self, source: SourceId) -> BusEndpoint {
        self.join_with(source, None)
    }

    /// Connects a robot under `identity` (its key seals records when the bus signs).
    pub fn join_as(&self, identity: &Identity) -> BusEndpoint {
        self.join_with(identity.source().clone(), identity.signing_key().cloned())
    }

    fn join_with(&self, source: SourceId, key: Option<SigningKey>) -> BusEndpoint {
        let mut s = self.0.borrow_mut();
        let robot = s.ix_of(&source);
        s.active[robot as usize] = true;
        BusEndpoint {
            bus: self.clone(),
            robot,
            key,
            put_counts: HashMap::new(),
        }
    }

    /// Advances the clock: every publication due by `now_ns` becomes visible and is
    /// delivered to the followers of its source.
    pub fn advance(&self, now_ns: i64) {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        s.now_ns = now_ns;
        while s.in_flight.front().is_some_and(|m| m.at_ns <= now_ns) {
            let Some(m) = s.in_flight.pop_front() else {
                break;
            };
            s.land(m);
        }
    }

    /// Records currently stored on the bus (latest per address and source).
    pub fn stored_records(&self) -> usize {
        self.0
            .borrow()
            .addresses
            .values()
            .map(|a| a.held.len())
            .sum()
    }

    /// Bytes of the records stored on the bus.
    pub fn stored_bytes(&self) -> usize {
        let s = self.0.borrow();
        s.addresses
            .values()
            .flat_map(|a| a.held.iter())
            .map(|h| h.bytes.len())
            .sum()
    }
}

impl Shared {
    /// The index of a source id, registered (inactive: nothing is delivered to it) when
    /// first seen.
    fn ix_of(&mut self, source: &SourceId) -> RobotIx {
        if let Some(&i) = self.by_source.get(source) {
            return i;
        }
        let i = self.sources.len() as RobotIx;
        self.sources.push(source.clone());
        self.by_source.insert(source.clone(), i);
        self.active.push(false);
        self.inboxes.push(Vec::new());
        self.stats.push(WireStats::default());
        self.lanes_of.push(lane_and_hash(source));
        self.lanes.push(RobotLanes {
            selection: LaneSelection::wide(SIM_MAX_SEEN),
            plan: Vec::new(),
        });
        i
    }

    fn model_ix(&mut self, model: &ModelId) -> ModelIx {
        if let Some(i) = self.models.iter().position(|m| m == model) {
            return i as ModelIx;
        }
        self.models.push(model.clone());
        (self.models.len() - 1) as ModelIx
    }

    fn deliver(&mut self, to: RobotIx, model: ModelIx, fingerprint: Fingerprint, h: &Held) {
        // What the product's intake does with every verified record: count its source.
        let (lane, hash) = self.lanes_of[h.source as usize];
        self.lanes[to as usize].selection.note(lane, hash);
        let stats = &mut self.stats[to as usize];
        stats.received_records += 1;
        stats.received_bytes += h.bytes.len() as u64;
        self.inboxes[to as usize].push(Delivery {
            model,
            fingerprint,
            source: h.source,
            bytes: h.bytes.clone(),
            sealed: h.sealed.clone(),
        });
    }

    /// A publication becomes visible: store it (the latest put wins, as in a Zenoh
    /// storage: the bus cannot tell a forged seq from a real one, receivers can) and hand
    /// it to the followers whose lanes select its source.
    fn land(&mut self, m: InFlight) {
        let addr = self.addresses.entry((m.model, m.fingerprint)).or_default();
        let held = Held {
            source: m.source,
            bytes: m.bytes,
            sealed: m.sealed,
        };
        match addr.by_source.get(&m.source) {
            Some(&i) => addr.held[i] = held.clone(),
            None => {
                addr.held.push(held.clone());
                addr.by_source.insert(m.source, addr.held.len() - 1);
            }
        }
        let lane = self.lanes_of[m.source as usize].0;
        // Borrow juggling: collect recipients first.
        let recipients: Vec<RobotIx> = addr
            .followers
            .iter()
            .copied()
            .filter(|&r| {
                r != m.source
                    && self.active[r as usize]
                    && self.lanes[r as usize].selection.selects(lane)
            })
            .collect();
        for r in recipients {
            self.deliver(r, m.model, m.fingerprint, &held);
        }
    }

    /// The product's follow: revise the lanes, follow the address, and answer with the
    /// stored records of the sources in the robot's lanes, widened once (× 4) while
    /// fewer than the budget answered (`FleetExchange::query`).
    fn follow(&mut self, robot: RobotIx, model: ModelIx, fingerprint: Fingerprint) {
        let budget = self.config.max_sources_per_address;
        let own = self.sources[robot as usize].clone();
        let lanes = &mut self.lanes[robot as usize];
        if lanes.selection.relane(&own, budget) || lanes.plan.is_empty() {
            lanes.plan = widening(lanes.selection.fraction())
                .into_iter()
                .map(|f| LaneSet::of(&select(&own, f, MAX_PREFIXES)))
                .collect();
        }
        let addr = self.addresses.entry((model, fingerprint)).or_default();
        if !addr.followers.contains(&robot) {
            addr.followers.push(robot);
        }
        // Each stored source answers at the first step whose lanes hold it; the query
        // stops at the first step that brought the budget's worth.
        let plan = &self.lanes[robot as usize].plan;
        let mut first_step: Vec<(usize, usize)> = Vec::new();
        let mut per_step = vec![0usize; plan.len()];
        for (i, h) in addr.held.iter().enumerate() {
            if h.source == robot {
                continue;
            }
            let lane = self.lanes_of[h.source as usize].0;
            if let Some(step) = plan.iter().position(|set| set.contains(lane)) {
                per_step[step] += 1;
                first_step.push((step, i));
            }
        }
        let mut last = plan.len().saturating_sub(1);
        let mut total = 0;
        for (step, n) in per_step.iter().enumerate() {
            total += n;
            if total >= budget {
                last = step;
                break;
            }
        }
        let replies: Vec<Held> = first_step
            .iter()
            .filter(|(step, _)| *step <= last)
            .map(|&(_, i)| addr.held[i].clone())
            .collect();
        for h in &replies {
            self.deliver(robot, model, fingerprint, h);
        }
    }
}

impl BusEndpoint {
    fn check_active(&self, s: &Shared) -> Result<(), ExchangeError> {
        if s.active[self.robot as usize] {
            Ok(())
        } else {
            Err(ExchangeError::Left(s.sources[self.robot as usize].clone()))
        }
    }

    /// Queues a put of `bytes` under `source` at `key`'s address.
    fn put(
        &mut self,
        key: &RecordKey,
        source: Option<&SourceId>,
        bytes: Rc<[u8]>,
        sealed: bool,
    ) -> Result<(), ExchangeError> {
        let sealed = sealed.then(Verdict::default);
        let mut guard = self.bus.0.borrow_mut();
        let s = &mut *guard;
        self.check_active(s)?;
        let model = s.model_ix(&key.model);
        let source = source.map_or(self.robot, |src| s.ix_of(src));
        let stats = &mut s.stats[self.robot as usize];
        stats.published_records += 1;
        stats.published_bytes += bytes.len() as u64;
        let at_ns = s.now_ns.saturating_add(s.config.delay_ns);
        s.in_flight.push_back(InFlight {
            at_ns,
            model,
            fingerprint: key.fingerprint,
            source,
            bytes,
            sealed,
        });
        Ok(())
    }
}

impl Exchange for BusEndpoint {
    fn publish(&mut self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, ExchangeError> {
        let republish = self.bus.0.borrow().config.republish;
        let count = record.summary.count();
        let last_put = self
            .put_counts
            .entry((key.model.clone(), key.fingerprint))
            .or_default();
        if !republish.due(*last_put, count) {
            return Ok(false);
        }
        *last_put = count;
        // As the product's exchange shares it: outcome times rounded to the quantum.
        let record = &shared_form(record);
        let encode = |source| ExchangeError::Encode {
            fingerprint: key.fingerprint,
            source,
        };
        let (sign, fleet) = {
            let s = self.bus.0.borrow();
            (s.config.sign_records, s.fleet.clone())
        };
        let (bytes, sealed) = match (&self.key, sign) {
            (Some(k), true) => (
                seal(record, &record_key(&fleet, key), Some(k)).map_err(encode)?,
                true,
            ),
            _ => (record.encode().map_err(encode)?, false),
        };
        self.put(key, None, bytes.into(), sealed)?;
        Ok(true)
    }

    fn put_sealed(
        &mut self,
        key: &RecordKey,
        _seq: Seq,
        bytes: Vec<u8>,
        _authentic: bool,
    ) -> Result<(), ExchangeError> {
        // The bus stores by arrival whatever seq the bytes claim (as a storage does).
        self.put(key, Some(&key.source), bytes.into(), true)
    }

    fn follow(&mut self, model: &ModelId, fingerprint: Fingerprint) -> Result<(), ExchangeError> {
        let mut guard = self.bus.0.borrow_mut();
        let s = &mut *guard;
        self.check_active(s)?;
        let model = s.model_ix(model);
        s.follow(self.robot, model, fingerprint);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<(RecordKey, OutcomeRecord)>) -> Result<(), ExchangeError> {
        let mut guard = self.bus.0.borrow_mut();
        let s = &mut *guard;
        self.check_active(s)?;
        let inbox = std::mem::take(&mut s.inboxes[self.robot as usize]);
        for d in inbox {
            let key = RecordKey {
                model: s.models[d.model as usize].clone(),
                fingerprint: d.fingerprint,
                source: s.sources[d.source as usize].clone(),
            };
            if let Some(verdict) = &d.sealed {
                // What a node's exchange runs on every sample: the record must be signed
                // by the key its source id names, under this very key expression.
                let opened = verdict.get_or_init(|| {
                    s.admission
                        .open(&record_key(&s.fleet, &key), &key.source, &d.bytes)
                        .map_err(|e| {
                            tracing::debug!(source = %key.source, fingerprint = %d.fingerprint, error = %e, "refusing a record");
                        })
                        .ok()
                });
                match opened {
                    Some(record) => out.push((key, record.clone())),
                    None => s.stats[self.robot as usize].refused += 1,
                }
                continue;
            }
            match decode(&d.bytes) {
                Ok(decoded) => out.push((key, decoded.record)),
                Err(e) => {
                    tracing::warn!(fingerprint = %d.fingerprint, error = %e, "dropping undecodable record");
                    s.stats[self.robot as usize].dropped += 1;
                }
            }
        }
        Ok(())
    }

    fn wire(&self) -> WireStats {
        self.bus.0.borrow().stats[self.robot as usize]
    }

    fn leave(&mut self) {
        let mut s = self.bus.0.borrow_mut();
        s.active[self.robot as usize] = false;
        s.inboxes[self.robot as usize] = Vec::new();
    }
}

impl Network for Bus {
    type Endpoint = BusEndpoint;

    fn connect(&mut self, identity: &Identity) -> Result<BusEndpoint, ExchangeError> {
        Ok(self.join_as(identity))
    }

    fn advance(&mut self, now_ns: i64) {
        Bus::advance(self, now_ns);
    }

    fn stored(&self) -> Option<(usize, usize)> {
        Some((self.stored_records(), self.stored_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::neighbors::{SKETCH_DIM, Sketch};
    use crate::core::summary::Summary;

    fn record(seq: u64, x: f64) -> OutcomeRecord {
        OutcomeRecord {
            seq: Seq(seq),
            sketch: Sketch([0; SKETCH_DIM]),
            summary: Summary::from_sample(&[x], 0).unwrap(),
            time_base: Default::default(),
        }
    }

    fn key(model: &ModelId, fp: Fingerprint, src: &str) -> RecordKey {
        RecordKey {
            model: model.clone(),
            fingerprint: fp,
            source: SourceId::new(src).unwrap(),
        }
    }

    #[test]
    fn records_arrive_after_the_delay_and_only_at_followers() {
        let bus = Bus::new(BusConfig {
            delay_ns: 10,
            max_sources_per_address: 8,
            sign_records: false,
            // Every version (these records all hold one outcome).
            republish: RepublishPolicy::new(1.0).unwrap(),
        });
        let m = ModelId::new("wm").unwrap();
        let fp = Fingerprint([7; 16]);
        let mut a = bus.join(SourceId::new("a").unwrap());
        let mut b = bus.join(SourceId::new("b").unwrap());
        let mut c = bus.join(SourceId::new("c").unwrap());
        bus.advance(0);
        b.follow(&m, fp).unwrap();
        a.publish(&key(&m, fp, "a"), &record(1, 2.0)).unwrap();
        let mut got = Vec::new();
        bus.advance(9);
        b.poll(&mut got).unwrap();
        assert!(got.is_empty(), "not visible before the delay");
        bus.advance(10);
        b.poll(&mut got).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.source.as_str(), "a");
        assert_eq!(got[0].1, record(1, 2.0));
        c.poll(&mut got).unwrap();
        assert_eq!(got.len(), 1, "c does not follow the address");
        // A late follower gets the stored record by query: the latest put, whatever its
        // seq says (a storage cannot judge seqs; the receiving memory does).
        a.publish(&key(&m, fp, "a"), &record(2, 5.0)).unwrap();
        bus.advance(30);
        c.follow(&m, fp).unwrap();
        got.clear();
        c.poll(&mut got).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, record(2, 5.0));
        assert_eq!(a.wire().published_records, 2);
        assert_eq!(c.wire().received_records, 1);
        assert!(c.wire().received_bytes > 0);
        a.leave();
        assert!(matches!(a.poll(&mut got), Err(ExchangeError::Left(_))));
    }

    #[test]
    fn fan_in_follows_the_products_lanes() {
        use crate::fleet::lanes::{fraction_for, lane_of};
        let budget = 3;
        let bus = Bus::new(BusConfig {
            delay_ns: 0,
            max_sources_per_address: budget,
            sign_records: false,
            // Every version (these records all hold one outcome).
            republish: RepublishPolicy::new(1.0).unwrap(),
        });
        let m = ModelId::new("wm").unwrap();
        let fp = Fingerprint([1; 16]);
        let mut follower = bus.join(SourceId::new("f").unwrap());
        bus.advance(0);
        follower.follow(&m, fp).unwrap();
        const N: usize = 40;
        let mut others: Vec<BusEndpoint> = (0..N)
            .map(|i| bus.join(SourceId::new(format!("r{i}")).unwrap()))
            .collect();
        for (i, o) in others.iter_mut().enumerate() {
            o.publish(&key(&m, fp, &format!("r{i}")), &record(1, 1.0))
                .unwrap();
        }
        bus.advance(1);
        let mut got = Vec::new();
        follower.poll(&mut got).unwrap();
        assert_eq!(
            got.len(),
            N,
            "wide while it has seen at most 2 x the budget"
        );
        // Following again revises the lanes, as the product's follow does: 40 sources seen
        // > 2 x 3, so it hears the lanes of about 3 sources.
        follower.follow(&m, Fingerprint([2; 16])).unwrap();
        let me = SourceId::new("f").unwrap();
        let lanes = LaneSet::of(&select(&me, fraction_for(N, budget), MAX_PREFIXES));
        let heard = (0..N)
            .filter(|i| lanes.contains(lane_of(&SourceId::new(format!("r{i}")).unwrap())))
            .count();
        assert!(heard < N / 4, "{heard}");
        for (i, o) in others.iter_mut().enumerate() {
            o.publish(&key(&m, fp, &format!("r{i}")), &record(2, 1.0))
                .unwrap();
        }
        bus.advance(2);
        got.clear();
        follower.poll(&mut got).unwrap();
        assert_eq!(got.len(), heard);
        assert!(
            got.iter()
                .all(|(k, r)| r.seq == Seq(2) && lanes.contains(lane_of(&k.source)))
        );
        assert_eq!(bus.stored_records(), N);
        // A newcomer's first query asks its lanes first and widens until the budget's
        // worth answered: fewer than every source, at least the budget.
        let fp3 = Fingerprint([3; 16]);
        for (i, o) in others.iter_mut().enumerate() {
            o.publish(&key(&m, fp3, &format!("r{i}")), &record(1, 1.0))
                .unwrap();
        }
        bus.advance(3);
        let mut late = bus.join(SourceId::new("late").unwrap());
        late.follow(&m, fp).unwrap();
        got.clear();
        late.poll(&mut got).unwrap();
        assert_eq!(got.len(), N, "knowing nobody, it asks everyone");
        late.follow(&m, fp3).unwrap();
        got.clear();
        late.poll(&mut got).unwrap();
        assert!(got.len() >= budget && got.len() < N, "{}", got.len());
    }

    #[test]
    fn forged_puts_are_refused_by_every_receiver_and_do_not_silence_the_source() {
        use crate::fleet::signing::seal;
        let bus = Bus::new(BusConfig {
            delay_ns: 0,
            max_sources_per_address: 8,
            sign_records: true,
            // Every version (these records all hold one outcome).
            republish: RepublishPolicy::new(1.0).unwrap(),
        });
        let m = ModelId::new("wm").unwrap();
        let fp = Fingerprint([9; 16]);
        let key_of = |b: u8| ed25519_dalek::SigningKey::from_bytes(&[b; 32]);
        let (honest, attacker, sybil) = (
            Identity::signed(key_of(1)),
            Identity::signed(key_of(2)),
            Identity::signed(key_of(3)),
        );
        let mut h = bus.join_as(&honest);
        let mut a = bus.join_as(&attacker);
        let mut f = bus.join(SourceId::new("follower").unwrap());
        bus.advance(0);
        f.follow(&m, fp).unwrap();
        let honest_key = RecordKey {
            model: m.clone(),
            fingerprint: fp,
            source: honest.source().clone(),
        };
        h.publish(&honest_key, &record(1, 1.0)).unwrap();
        bus.advance(1);
        // The attacker forges the honest source's record with seq u64::MAX, signed with
        // its own key, and publishes under a Sybil identity it holds the key of.
        let fleet = FleetName::new(crate::sim::SIM_FLEET).unwrap();
        let forged = record(u64::MAX, 99.0);
        let ke = record_key(&fleet, &honest_key);
        let bytes = seal(&forged, &ke, attacker.signing_key()).unwrap();
        a.put_sealed(&honest_key, forged.seq, bytes, false).unwrap();
        let sybil_key = RecordKey {
            source: sybil.source().clone(),
            ..honest_key.clone()
        };
        let bytes = seal(
            &record(1, 50.0),
            &record_key(&fleet, &sybil_key),
            sybil.signing_key(),
        )
        .unwrap();
        a.put_sealed(&sybil_key, Seq(1), bytes, true).unwrap();
        bus.advance(2);
        h.publish(&honest_key, &record(2, 1.5)).unwrap();
        bus.advance(3);
        let mut got = Vec::new();
        f.poll(&mut got).unwrap();
        let seen: Vec<(String, u64)> = got
            .iter()
            .map(|(k, r)| (k.source.to_string(), r.seq.0))
            .collect();
        assert_eq!(
            seen,
            vec![
                (honest.source().to_string(), 1),
                (sybil.source().to_string(), 1),
                (honest.source().to_string(), 2),
            ],
            "the forgery is refused, the Sybil record (validly signed) and the honest source's next record arrive"
        );
        assert_eq!(f.wire().refused, 1);
        // A late follower gets the honest source's latest put from the storage.
        let mut late = bus.join(SourceId::new("late").unwrap());
        late.follow(&m, fp).unwrap();
        got.clear();
        late.poll(&mut got).unwrap();
        assert!(
            got.iter()
                .any(|(k, r)| k.source == *honest.source() && r.seq == Seq(2))
        );
        assert_eq!(late.wire().refused, 0);
    }
}
