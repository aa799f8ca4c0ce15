//! The simulator's fleet over real Zenoh: every simulated robot gets its own
//! [`FleetExchange`] (its own Zenoh session), all of them clients of one in-process
//! [`FleetRouter`] with storage, on 127.0.0.1 only.
//!
//! Why clients of one router rather than peers: a client holds one TCP connection (to the
//! router), so N robots cost N connections and the router does the fan-out; peers with
//! gossip scouting would mesh (up to N² connections), which does not fit a few hundred
//! sessions on 2 cores. The router's storage also gives late joiners the records of
//! robots that have left, as the in-process bus does.
//!
//! The adapter is the fleet author's: publish → [`FleetExchange::publish`]; follow →
//! [`FleetExchange::follow`] then a blocking [`FleetExchange::query`] whose replies are
//! buffered for the next poll (the query's round trip through the router also orders the
//! new subscription before any later put); poll → what the receive channel delivered;
//! leave → [`FleetExchange::close`]. The fan-in is the product's: each exchange listens to
//! the lanes its budget calls for (`crate::fleet::lanes`), so the driver expects a live
//! delivery only where the follower's [`LaneView`] selects the source.
//!
//! Time: the simulated clock is not Zenoh's. A task per robot drains its receive channel
//! as records arrive, stamping the wall time, so propagation latency (publish call →
//! record held in the receiving robot's inbox, which its memory ingests at its next step)
//! is measured, not configured. At the end of each round the driver waits until every
//! live delivery expected so far has arrived (followers of the address whose lanes select
//! the source at publish time), bounded by a timeout, so the next round sees the records
//! as a networked fleet with rounds of seconds would.
//!
//! Baseline in the same run: every publication is put once more, by the same session,
//! as bare bytes of the same length under `qisbare/...` (the same key shape), to bare
//! subscriptions that mirror each robot's lane subscriptions; their put → callback
//! latency and deliveries are reported next to the product's ([`BareFigures`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use zenoh::Session;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;

use super::SIM_FLEET;
use super::exchange::{
    BareFigures, Exchange, ExchangeError, LaneFigures, Network, Propagation, WireStats,
};
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, Seq, SourceId};
use crate::core::record::OutcomeRecord;
use crate::fleet::keys::{KEY_PREFIX, lane_selector, record_key};
use crate::fleet::lanes::LanePrefix;
use crate::fleet::router::router_config;
use crate::fleet::{
    FleetConfig, FleetExchange, FleetRouter, FleetStats, Identity, LaneView, Publish, Received,
    RepublishPolicy, RouterSettings,
};

/// First chunks of the bare baseline's keys (same shape as the record keys).
const BARE_PREFIX: &str = "qisbare/v2";
/// Bytes of an ed25519 signature, which every simulated record carries on Zenoh.
const SIGNATURE_LEN: usize = 64;

/// Settings of the Zenoh network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZenohNetConfig {
    /// Wait for replies to one follow's query (ms).
    pub query_timeout_ms: u64,
    /// Longest wait at the end of a round for the expected deliveries (ms).
    pub settle_timeout_ms: u64,
    /// The exchange's republish rule (`exchange.republish_growth`).
    pub republish: RepublishPolicy,
}

impl Default for ZenohNetConfig {
    fn default() -> Self {
        ZenohNetConfig {
            query_timeout_ms: 2_000,
            settle_timeout_ms: 2_000,
            republish: RepublishPolicy::default(),
        }
    }
}

fn net_err(what: &str, e: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Network(format!("{what}: {e}"))
}

/// Identity of one publication: (source, fingerprint, seq).
type PubId = (SourceId, Fingerprint, u64);

/// What the driver and the receive tasks share: publication times, who follows what,
/// which deliveries are still owed, latency samples.
#[derive(Default)]
struct Ledger {
    published_at: HashMap<PubId, Instant>,
    /// Robots following each address (model is one per simulation, the fingerprint
    /// names the address), active ones only.
    followers: HashMap<(ModelId, Fingerprint), Vec<u32>>,
    /// Each robot's lane selection (`None` once it left).
    views: Vec<Option<LaneView>>,
    /// Each robot's exchange counters (kept after it left: they are final).
    stats: Vec<Arc<FleetStats>>,
    /// Live deliveries still owed, by publication: the robots that should receive it.
    pending: HashMap<PubId, Vec<u32>>,
    /// Sum of the `pending` lists' lengths.
    owed: u64,
    /// Live deliveries expected: for each publication, the followers whose lanes
    /// selected its source at that moment.
    expected: u64,
    /// Owed deliveries written off (a round's wait timed out, or the follower's lanes
    /// moved away from the source while the record was in flight).
    written_off: u64,
    /// Expected live deliveries that arrived.
    delivered: u64,
    /// Live deliveries nobody owed (a record put just before a follow, a sample heard
    /// through the old and the new subscription during a lane change).
    extra: u64,
    /// Publish → inbox latency of each owed live delivery (µs).
    latencies_us: Vec<u64>,
    /// Live deliveries whose publication was not found (should stay 0).
    unmatched: u64,
    /// Total wall time spent waiting at round ends.
    settle_wait: Duration,
    /// Wall time of each follow (subscribe + query round trip), µs.
    follows_us: Vec<u64>,
    /// Wall time spent in publish calls.
    publish_wait: Duration,
    /// Rounds whose wait timed out.
    timed_out_rounds: u64,
    /// Bare baseline: put time of each bare publication, by id.
    bare_at: HashMap<u64, Instant>,
    /// Bare put → callback latencies (µs).
    bare_latencies_us: Vec<u64>,
    /// Bare bytes delivered.
    bare_bytes: u64,
}

impl Ledger {
    /// Robot `robot`'s lanes changed (or it left): what it was owed from sources its
    /// lanes no longer select will not come.
    fn forgive(&mut self, robot: u32, view: Option<&LaneView>) {
        let mut forgiven = 0;
        self.pending.retain(|id, list| {
            if view.is_none_or(|v| !v.selects(&id.0)) {
                let before = list.len();
                list.retain(|&r| r != robot);
                forgiven += (before - list.len()) as u64;
            }
            !list.is_empty()
        });
        self.owed -= forgiven;
        self.written_off += forgiven;
    }
}

struct Track {
    ledger: Mutex<Ledger>,
}

impl Track {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A few map operations per critical section: consistent even after a panic.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Real Zenoh sessions on loopback: one in-process router with storage, one client
/// session per robot (see the module doc).
pub struct ZenohNetwork {
    runtime: Arc<Runtime>,
    router: Option<FleetRouter>,
    connect: String,
    config: ZenohNetConfig,
    track: Arc<Track>,
    sessions: usize,
}

impl ZenohNetwork {
    /// Starts the router (with storage) on a free 127.0.0.1 port and a 2-thread runtime
    /// for the exchanges' tasks.
    pub fn start(config: ZenohNetConfig) -> Result<ZenohNetwork, ExchangeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| net_err("tokio runtime", e))?;
        let cfg = router_config(None, &["tcp/127.0.0.1:0".to_owned()])
            .map_err(|e| net_err("router config", e))?;
        let router = runtime
            .block_on(FleetRouter::start(cfg, RouterSettings::default()))
            .map_err(|e| net_err("router", e))?;
        let connect = router
            .locators()
            .into_iter()
            .find(|l| l.starts_with("tcp/127.0.0.1:") && !l.ends_with(":0"))
            .ok_or_else(|| {
                ExchangeError::Network(format!(
                    "router listens on no loopback tcp port: {:?}",
                    router.locators()
                ))
            })?;
        tracing::info!(router = %connect, "sim: zenoh router with storage started");
        Ok(ZenohNetwork {
            runtime: Arc::new(runtime),
            router: Some(router),
            connect,
            config,
            track: Arc::new(Track {
                ledger: Mutex::new(Ledger::default()),
            }),
            sessions: 0,
        })
    }

    /// The router's endpoint (`tcp/127.0.0.1:<port>`).
    pub fn router_endpoint(&self) -> &str {
        &self.connect
    }
}

impl Drop for ZenohNetwork {
    fn drop(&mut self) {
        if let Some(router) = self.router.take()
            && let Err(e) = self.runtime.block_on(router.close())
        {
            tracing::warn!(error = %e, "sim: closing the zenoh router failed");
        }
    }
}

/// A robot's own Zenoh session and fleet exchange.
pub struct ZenohEndpoint {
    robot: u32,
    source: SourceId,
    runtime: Arc<Runtime>,
    exchange: Option<FleetExchange>,
    track: Arc<Track>,
    /// Live records the receive task has taken off the channel.
    inbox: Arc<Mutex<Vec<Received>>>,
    /// Query replies, handed out at the next poll.
    replies: Vec<Received>,
    receiver: Option<JoinHandle<()>>,
    query_timeout: Duration,
    /// Counters frozen when the robot left.
    final_wire: Option<WireStats>,
    /// The exchange's lane changes when the bare subscriptions were last mirrored.
    bare_lane_changes: u64,
    /// The bare subscriptions, one per lane prefix of the exchange.
    bare_subs: Vec<Subscriber<()>>,
}

fn wire_of(ex: &FleetExchange) -> WireStats {
    let s = ex.stats();
    WireStats {
        published_records: s.published,
        // Includes the bytes of query replies this robot served for its own records.
        published_bytes: s.bytes_out,
        received_records: s.received,
        received_bytes: s.bytes_in,
        dropped: s.dropped_overflow,
        // Unsigned, forged, wrong-key and malformed input the exchange's intake refused.
        refused: s.rejected(),
    }
}

/// The bare baseline's key for a record key (same chunks, another first chunk).
fn bare_key(record_key: &str) -> String {
    record_key.replacen(KEY_PREFIX, BARE_PREFIX, 1)
}

/// Declares the bare subscriptions mirroring `prefixes` on `session` for `robot`.
async fn declare_bare(
    session: &Session,
    fleet: &FleetName,
    prefixes: &[LanePrefix],
    robot: u32,
    track: &Arc<Track>,
) -> Result<Vec<Subscriber<()>>, ExchangeError> {
    let mut subs = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let track = track.clone();
        let sub = session
            .declare_subscriber(bare_key(&lane_selector(fleet, *p)))
            .callback(move |sample| {
                let now = Instant::now();
                let payload = sample.payload().to_bytes();
                let (Some(id), Some(from)) = (payload.get(..8), payload.get(8..12)) else {
                    return;
                };
                let id = u64::from_le_bytes(id.try_into().unwrap_or([0; 8]));
                let from = u32::from_le_bytes(from.try_into().unwrap_or([0; 4]));
                if from == robot {
                    return;
                }
                let mut ledger = track.ledger();
                if let Some(at) = ledger.bare_at.get(&id).copied() {
                    let us = now.saturating_duration_since(at).as_micros();
                    ledger
                        .bare_latencies_us
                        .push(u64::try_from(us).unwrap_or(u64::MAX));
                    ledger.bare_bytes += payload.len() as u64;
                }
            })
            .await
            .map_err(|e| net_err("bare subscriber", e))?;
        subs.push(sub);
    }
    Ok(subs)
}

impl ZenohEndpoint {
    /// Stamps a publication and notes the live deliveries it owes (the followers of its
    /// address whose lanes select its source; this robot too when the record is not
    /// under its own source id, which its exchange then takes as any other), before the
    /// put can possibly arrive anywhere.
    fn expect(&self, key: &RecordKey, seq: Seq) {
        let echo = key.source != self.source;
        let mut ledger = self.track.ledger();
        let id = (key.source.clone(), key.fingerprint, seq.0);
        ledger.published_at.insert(id.clone(), Instant::now());
        let owed: Vec<u32> = ledger
            .followers
            .get(&(key.model.clone(), key.fingerprint))
            .map(|l| {
                l.iter()
                    .copied()
                    .filter(|&r| echo || r != self.robot)
                    .filter(|&r| {
                        ledger
                            .views
                            .get(r as usize)
                            .and_then(Option::as_ref)
                            .is_some_and(|v| v.selects(&key.source))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let n = owed.len() as u64;
        ledger.expected += n;
        ledger.owed += n;
        if n > 0 {
            ledger.pending.entry(id).or_default().extend(owed);
        }
    }

    /// Takes back what [`expect`](Self::expect) owed for a version the exchange held
    /// back (never put, so nothing of it can arrive).
    fn unexpect(&self, key: &RecordKey, seq: Seq) {
        let mut ledger = self.track.ledger();
        let id = (key.source.clone(), key.fingerprint, seq.0);
        ledger.published_at.remove(&id);
        if let Some(owed) = ledger.pending.remove(&id) {
            let n = owed.len() as u64;
            ledger.expected -= n;
            ledger.owed -= n;
        }
    }

    fn exchange(&self) -> Result<&FleetExchange, ExchangeError> {
        self.exchange
            .as_ref()
            .ok_or_else(|| ExchangeError::Left(self.source.clone()))
    }

    /// After a lane change: forgive what the old lanes owed and mirror the new lanes in
    /// the bare subscriptions.
    fn follow_lanes(&mut self) -> Result<(), ExchangeError> {
        let ex = self.exchange()?;
        let changes = ex.stats().lane_changes;
        if changes == self.bare_lane_changes {
            return Ok(());
        }
        let view = ex.lane_view();
        self.track.ledger().forgive(self.robot, Some(&view));
        let subs = self.runtime.block_on(declare_bare(
            ex.session(),
            ex.fleet(),
            &view.prefixes(),
            self.robot,
            &self.track,
        ))?;
        self.bare_subs = subs;
        self.bare_lane_changes = changes;
        Ok(())
    }

    fn close(&mut self) {
        if let Some(task) = self.receiver.take() {
            task.abort();
        }
        self.bare_subs.clear();
        let Some(ex) = self.exchange.take() else {
            return;
        };
        self.final_wire = Some(wire_of(&ex));
        {
            let mut ledger = self.track.ledger();
            for list in ledger.followers.values_mut() {
                list.retain(|&r| r != self.robot);
            }
            if let Some(v) = ledger.views.get_mut(self.robot as usize) {
                *v = None;
            }
            // Nothing more reaches a robot that left: not a loss.
            ledger.forgive(self.robot, None);
        }
        if let Err(e) = self.runtime.block_on(ex.close()) {
            tracing::warn!(source = %self.source, error = %e, "sim: closing a robot's session failed");
        }
    }
}

impl Drop for ZenohEndpoint {
    fn drop(&mut self) {
        self.close();
    }
}

/// Takes records off a robot's receive channel as they arrive and stamps their latency.
async fn receive(
    robot: u32,
    mut rx: tokio::sync::mpsc::Receiver<Received>,
    inbox: Arc<Mutex<Vec<Received>>>,
    track: Arc<Track>,
) {
    while let Some((key, record)) = rx.recv().await {
        let now = Instant::now();
        {
            let mut ledger = track.ledger();
            let id = (key.source.clone(), key.fingerprint, record.seq.0);
            let owed = ledger.pending.get_mut(&id).and_then(|list| {
                let i = list.iter().position(|&r| r == robot)?;
                list.swap_remove(i);
                Some(list.is_empty())
            });
            match owed {
                Some(emptied) => {
                    if emptied {
                        ledger.pending.remove(&id);
                    }
                    ledger.owed -= 1;
                    ledger.delivered += 1;
                    match ledger.published_at.get(&id).copied() {
                        Some(at) => {
                            let us = now.saturating_duration_since(at).as_micros();
                            ledger
                                .latencies_us
                                .push(u64::try_from(us).unwrap_or(u64::MAX));
                        }
                        None => ledger.unmatched += 1,
                    }
                }
                None if ledger.published_at.contains_key(&id) => ledger.extra += 1,
                None => ledger.unmatched += 1,
            }
        }
        inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key, record));
    }
}

impl Exchange for ZenohEndpoint {
    fn publish(&mut self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, ExchangeError> {
        let ex = self.exchange()?;
        // Owed before the put: a delivery may arrive before `publish` returns.
        self.expect(key, record.seq);
        let started = Instant::now();
        let done = ex.publish(key, record).map_err(|e| net_err("publish", e));
        self.track.ledger().publish_wait += started.elapsed();
        if done? != Publish::Queued {
            self.unexpect(key, record.seq);
            return Ok(false);
        }
        // The bare baseline: the same number of bytes under the same key shape.
        let len = record.encode().map_or(0, |b| b.len()) + SIGNATURE_LEN;
        let mut payload = vec![0u8; len.max(12)];
        let id = {
            let mut ledger = self.track.ledger();
            let id = ledger.bare_at.len() as u64 + 1;
            ledger.bare_at.insert(id, Instant::now());
            id
        };
        payload[..8].copy_from_slice(&id.to_le_bytes());
        payload[8..12].copy_from_slice(&self.robot.to_le_bytes());
        let ke = bare_key(&record_key(ex.fleet(), key));
        self.runtime
            .block_on(async {
                ex.session()
                    .put(ke, payload)
                    .congestion_control(CongestionControl::Block)
                    .express(true)
                    .await
            })
            .map_err(|e| net_err("bare put", e))?;
        Ok(true)
    }

    fn put_sealed(
        &mut self,
        key: &RecordKey,
        seq: Seq,
        bytes: Vec<u8>,
        authentic: bool,
    ) -> Result<(), ExchangeError> {
        let ex = self.exchange()?;
        // A forgery never reaches an inbox (every receiver's intake refuses it): only an
        // authentic put is owed to the followers.
        if authentic {
            self.expect(key, seq);
        }
        let ke = record_key(ex.fleet(), key);
        let started = Instant::now();
        let done = self
            .runtime
            .block_on(async { ex.session().put(ke, bytes).await })
            .map_err(|e| net_err("put", e));
        self.track.ledger().publish_wait += started.elapsed();
        done
    }

    fn follow(&mut self, model: &ModelId, fingerprint: Fingerprint) -> Result<(), ExchangeError> {
        let timeout = self.query_timeout;
        let ex = self.exchange()?;
        let started = Instant::now();
        let got = self.runtime.block_on(async {
            ex.follow(model, &fingerprint).await?;
            ex.query_with_timeout(model, &fingerprint, timeout).await
        });
        let got = got.map_err(|e| net_err("follow", e))?;
        {
            let mut ledger = self.track.ledger();
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            ledger.follows_us.push(us);
            let list = ledger
                .followers
                .entry((model.clone(), fingerprint))
                .or_default();
            if !list.contains(&self.robot) {
                list.push(self.robot);
            }
        }
        self.replies.extend(got);
        self.follow_lanes()
    }

    fn poll(&mut self, out: &mut Vec<(RecordKey, OutcomeRecord)>) -> Result<(), ExchangeError> {
        self.exchange()?;
        out.append(&mut self.replies);
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut inbox);
        Ok(())
    }

    fn wire(&self) -> WireStats {
        match (&self.exchange, self.final_wire) {
            (Some(ex), _) => wire_of(ex),
            (None, Some(w)) => w,
            (None, None) => WireStats::default(),
        }
    }

    fn leave(&mut self) {
        self.close();
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Network for ZenohNetwork {
    type Endpoint = ZenohEndpoint;

    fn connect(&mut self, identity: &Identity) -> Result<ZenohEndpoint, ExchangeError> {
        let source = identity.source().clone();
        let fleet = FleetConfig {
            fleet: SIM_FLEET.into(),
            connect: vec![self.connect.clone()],
            query_timeout_ms: self.config.query_timeout_ms,
            // The simulated robot decides what to share (privacy budget and traffic
            // budget, as the node does before its exchange): put each publication at
            // once, no anti-entropy (rounds are short and the driver waits for
            // deliveries). Signed by default, as the node: every record is sealed with the
            // robot's key and every sample opened by the intake. The fan-in budget is the
            // product's default (`max_sources_per_address`).
            publish_interval_ms: 0,
            min_count_to_share: 1,
            republish_growth: self.config.republish.growth(),
            anti_entropy_period_ms: 0,
            ..FleetConfig::default()
        };
        let mut settings = fleet.validate().map_err(|e| net_err("fleet config", e))?;
        settings
            .zenoh
            .insert_json5("mode", "\"client\"")
            .map_err(|e| net_err("zenoh mode", e))?;
        settings
            .zenoh
            .insert_json5("listen/endpoints", "[]")
            .map_err(|e| net_err("zenoh listen", e))?;
        let (exchange, rx) = self
            .runtime
            .block_on(FleetExchange::start(settings, identity.clone()))
            .map_err(|e| net_err("session", e))?;
        let robot = self.sessions as u32;
        self.sessions += 1;
        let view = exchange.lane_view();
        let bare_subs = self.runtime.block_on(declare_bare(
            exchange.session(),
            exchange.fleet(),
            &view.prefixes(),
            robot,
            &self.track,
        ))?;
        {
            let mut ledger = self.track.ledger();
            ledger.views.push(Some(view));
            ledger.stats.push(exchange.stats_handle());
        }
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let receiver = self
            .runtime
            .spawn(receive(robot, rx, inbox.clone(), self.track.clone()));
        Ok(ZenohEndpoint {
            robot,
            source,
            runtime: self.runtime.clone(),
            bare_lane_changes: exchange.stats().lane_changes,
            exchange: Some(exchange),
            track: self.track.clone(),
            inbox,
            replies: Vec::new(),
            receiver: Some(receiver),
            query_timeout: Duration::from_millis(self.config.query_timeout_ms),
            final_wire: None,
            bare_subs,
        })
    }

    fn advance(&mut self, _now_ns: i64) {
        // Zenoh runs in real time; deliveries are awaited at the end of each round.
    }

    fn end_round(&mut self) -> Result<(), ExchangeError> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.config.settle_timeout_ms);
        loop {
            let mut ledger = self.track.ledger();
            if ledger.owed == 0 {
                ledger.settle_wait += started.elapsed();
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    missing = ledger.owed,
                    "sim: zenoh deliveries still missing at the end of the round"
                );
                ledger.written_off += ledger.owed;
                ledger.owed = 0;
                ledger.pending.clear();
                ledger.timed_out_rounds += 1;
                ledger.settle_wait += started.elapsed();
                return Ok(());
            }
            drop(ledger);
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn stored(&self) -> Option<(usize, usize)> {
        None
    }

    fn propagation(&self) -> Option<Propagation> {
        let ledger = self.track.ledger();
        let mut sorted = ledger.latencies_us.clone();
        sorted.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let mut follows = ledger.follows_us.clone();
        follows.sort_unstable();
        let mut lanes = LaneFigures::default();
        let mut prefixes = 0;
        for s in &ledger.stats {
            let s = s.snapshot();
            lanes.received_records += s.received;
            lanes.received_bytes += s.bytes_in;
            lanes.dropped_unfollowed += s.dropped_unfollowed;
            lanes.dropped_unselected += s.dropped_unselected;
            lanes.rejected_lane += s.rejected_lane;
            lanes.queries += s.queries;
            lanes.widened_queries += s.widened_queries;
            lanes.lane_changes += s.lane_changes;
            prefixes += s.lane_prefixes;
            lanes.max_declarations = lanes.max_declarations.max(s.declarations);
        }
        lanes.mean_prefixes = prefixes as f64 / ledger.stats.len().max(1) as f64;
        let mut bare = ledger.bare_latencies_us.clone();
        bare.sort_unstable();
        Some(Propagation {
            network: "zenoh",
            sessions: self.sessions,
            samples: sorted.len() as u64,
            p50_ms: ms(percentile(&sorted, 0.5)),
            p99_ms: ms(percentile(&sorted, 0.99)),
            max_ms: ms(sorted.last().copied().unwrap_or(0)),
            expected_deliveries: ledger.expected,
            delivered: ledger.delivered,
            unmatched: ledger.unmatched,
            not_owed: ledger.extra,
            written_off: ledger.written_off,
            timed_out_rounds: ledger.timed_out_rounds,
            settle_wait_s: ledger.settle_wait.as_secs_f64(),
            follows: follows.len() as u64,
            follow_p50_ms: ms(percentile(&follows, 0.5)),
            follow_p99_ms: ms(percentile(&follows, 0.99)),
            follow_wait_s: follows.iter().sum::<u64>() as f64 / 1e6,
            publish_wait_s: ledger.publish_wait.as_secs_f64(),
            lanes,
            bare: BareFigures {
                delivered: bare.len() as u64,
                bytes: ledger.bare_bytes,
                p50_ms: ms(percentile(&bare, 0.5)),
                p99_ms: ms(percentile(&bare, 0.99)),
            },
        })
    }
}

/// A fleet of which the first `zenoh_robots` robots run on real Zenoh and the rest on
/// the in-process bus, so a large default fleet still exercises Zenoh within the time a
/// demo allows (one session per robot does not scale to hundreds on 2 cores: each follow
/// is a query every session's queryable answers, see docs/BENCHMARKS.md).
///
/// Records cross both ways: a Zenoh robot also publishes into the bus and follows there
/// (through a shadow bus endpoint) to get the bus robots' records; what its shadow
/// receives from other Zenoh robots is dropped, so records between Zenoh robots only
/// ever cross Zenoh. The same pattern fits robots behind `qis_node` ROS topics.
pub struct MixedNetwork {
    bus: super::exchange::Bus,
    zenoh: ZenohNetwork,
    zenoh_robots: usize,
    connected: usize,
    zenoh_sources: Rc<RefCell<HashSet<SourceId>>>,
}

impl MixedNetwork {
    /// The first `zenoh_robots` robots to connect go on Zenoh, the others on `bus`.
    pub fn new(
        bus: super::exchange::Bus,
        zenoh: ZenohNetwork,
        zenoh_robots: usize,
    ) -> MixedNetwork {
        MixedNetwork {
            bus,
            zenoh,
            zenoh_robots,
            connected: 0,
            zenoh_sources: Rc::new(RefCell::new(HashSet::new())),
        }
    }
}

/// A robot's endpoint in a [`MixedNetwork`].
pub enum MixedEndpoint {
    /// A robot on the in-process bus.
    Bus(super::exchange::BusEndpoint),
    /// A robot on Zenoh, with its shadow on the bus for the bus robots' records.
    Zenoh {
        /// Its Zenoh session and exchange.
        zenoh: Box<ZenohEndpoint>,
        /// Its bus endpoint.
        shadow: super::exchange::BusEndpoint,
        /// Sources that are on Zenoh (their records must come over Zenoh).
        zenoh_sources: Rc<RefCell<HashSet<SourceId>>>,
        /// Scratch for the shadow's deliveries.
        scratch: Vec<(RecordKey, OutcomeRecord)>,
        /// Shadow deliveries dropped because they came from Zenoh robots.
        duplicates: u64,
    },
}

impl Exchange for MixedEndpoint {
    fn publish(&mut self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, ExchangeError> {
        match self {
            MixedEndpoint::Bus(b) => b.publish(key, record),
            MixedEndpoint::Zenoh { zenoh, shadow, .. } => {
                let put = zenoh.publish(key, record)?;
                // The shadow applies the same republish rule to the same versions.
                shadow.publish(key, record)?;
                Ok(put)
            }
        }
    }

    fn put_sealed(
        &mut self,
        key: &RecordKey,
        seq: Seq,
        bytes: Vec<u8>,
        authentic: bool,
    ) -> Result<(), ExchangeError> {
        match self {
            MixedEndpoint::Bus(b) => b.put_sealed(key, seq, bytes, authentic),
            MixedEndpoint::Zenoh {
                zenoh,
                shadow,
                zenoh_sources,
                ..
            } => {
                // On both sides, as the robot's own records; a Sybil id put over Zenoh
                // reaches the Zenoh robots over Zenoh only, like their own records.
                if authentic {
                    zenoh_sources.borrow_mut().insert(key.source.clone());
                }
                zenoh.put_sealed(key, seq, bytes.clone(), authentic)?;
                shadow.put_sealed(key, seq, bytes, authentic)
            }
        }
    }

    fn follow(&mut self, model: &ModelId, fingerprint: Fingerprint) -> Result<(), ExchangeError> {
        match self {
            MixedEndpoint::Bus(b) => b.follow(model, fingerprint),
            MixedEndpoint::Zenoh { zenoh, shadow, .. } => {
                zenoh.follow(model, fingerprint)?;
                shadow.follow(model, fingerprint)
            }
        }
    }

    fn poll(&mut self, out: &mut Vec<(RecordKey, OutcomeRecord)>) -> Result<(), ExchangeError> {
        match self {
            MixedEndpoint::Bus(b) => b.poll(out),
            MixedEndpoint::Zenoh {
                zenoh,
                shadow,
                zenoh_sources,
                scratch,
                duplicates,
            } => {
                zenoh.poll(out)?;
                shadow.poll(scratch)?;
                let on_zenoh = zenoh_sources.borrow();
                for (key, record) in scratch.drain(..) {
                    if on_zenoh.contains(&key.source) {
                        *duplicates += 1;
                    } else {
                        out.push((key, record));
                    }
                }
                Ok(())
            }
        }
    }

    fn wire(&self) -> WireStats {
        match self {
            MixedEndpoint::Bus(b) => b.wire(),
            MixedEndpoint::Zenoh {
                zenoh,
                shadow,
                duplicates,
                ..
            } => {
                // Zenoh traffic plus what the bus delivered from bus robots (the shadow's
                // publications mirror the Zenoh ones and are not counted twice).
                let (z, s) = (zenoh.wire(), shadow.wire());
                let kept = s.received_records.saturating_sub(*duplicates);
                let kept_bytes = (s.received_bytes as f64 * kept as f64
                    / s.received_records.max(1) as f64) as u64;
                WireStats {
                    received_records: z.received_records + kept,
                    received_bytes: z.received_bytes + kept_bytes,
                    dropped: z.dropped + s.dropped,
                    refused: z.refused + s.refused,
                    ..z
                }
            }
        }
    }

    fn leave(&mut self) {
        match self {
            MixedEndpoint::Bus(b) => b.leave(),
            MixedEndpoint::Zenoh { zenoh, shadow, .. } => {
                zenoh.leave();
                shadow.leave();
            }
        }
    }
}

impl Network for MixedNetwork {
    type Endpoint = MixedEndpoint;

    fn connect(&mut self, identity: &Identity) -> Result<MixedEndpoint, ExchangeError> {
        self.connected += 1;
        if self.connected > self.zenoh_robots {
            return Ok(MixedEndpoint::Bus(self.bus.join_as(identity)));
        }
        self.zenoh_sources
            .borrow_mut()
            .insert(identity.source().clone());
        let zenoh = Box::new(self.zenoh.connect(identity)?);
        Ok(MixedEndpoint::Zenoh {
            zenoh,
            shadow: self.bus.join_as(identity),
            zenoh_sources: self.zenoh_sources.clone(),
            scratch: Vec::new(),
            duplicates: 0,
        })
    }

    fn advance(&mut self, now_ns: i64) {
        self.bus.advance(now_ns);
    }

    fn end_round(&mut self) -> Result<(), ExchangeError> {
        self.zenoh.end_round()
    }

    fn stored(&self) -> Option<(usize, usize)> {
        Some((self.bus.stored_records(), self.bus.stored_bytes()))
    }

    fn propagation(&self) -> Option<Propagation> {
        self.zenoh.propagation()
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
