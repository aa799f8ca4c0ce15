//! The fleet exchange: this node's records out, the fleet's records in, over one Zenoh
//! session.
//!
//! - Out: [`FleetExchange::publish`] seals (encodes, signs) an own record, makes it the
//!   record the queryable serves, and queues it for a coalesced put: at most one put per
//!   record key per `publish_interval`, latest wins, and none before the record holds
//!   `min_count_to_share` outcomes.
//! - In: the node listens to lanes, not addresses (docs/PROTOCOL.md, "Lanes"): one
//!   subscription on the whole fleet while it has seen at most twice its fan-in budget
//!   (`max_sources_per_address`) of sources, then at most 16 on the lane prefixes that
//!   hold about the budget's worth of sources, so what it receives is bounded by config,
//!   not by the fleet's size. [`FleetExchange::follow`] marks an address as followed
//!   (bounded, least recently used dropped): live samples of followed addresses in the
//!   selected lanes, and the periodic anti-entropy re-queries, go to one bounded channel
//!   of [`Received`]; other samples are dropped and counted. [`FleetExchange::query`]
//!   asks the node's own lanes first and widens only while fewer than the budget's
//!   sources answered. Everything received is checked (key and its lane, record,
//!   signature) and counted in [`FleetStats`]; refused input is dropped, never a panic.
//! - Declarations per node: one queryable (on the node's own lane and id) plus 1..=16
//!   subscriptions, whatever the number of followed addresses.
//!
//! Records are state (latest cumulative summary per source), so duplicates and replays
//! are harmless: the memory keeps the highest `seq` per source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;
use zenoh::Session;
use zenoh::handlers::FifoChannelHandler;
use zenoh::key_expr::KeyExpr;
use zenoh::pubsub::Subscriber;
use zenoh::query::{Query, Queryable};

use super::config::FleetSettings;
use super::follows::Follows;
use super::identity::Identity;
use super::intake::{Address, HAVE_PARAMETER, Intake, Received, seq_in_digest};
use super::keys::{escape_chunk, lane_selector, record_key, source_selector};
use super::lanes::{LanePrefix, LaneSelection, MAX_PREFIXES, lane_of, select};
use super::outbox::{Outbox, Sealed, put};
use super::republish::RepublishPolicy;
use super::signing::seal;
use super::stats::{FleetStats, FleetStatsSnapshot, bump, set};
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, Seq, SourceId};
use crate::core::privacy::{DpConfig, coarsen_times};
use crate::core::record::{EncodeError, OutcomeRecord};

/// Why a fleet operation failed.
#[derive(Debug, Error)]
pub enum FleetError {
    /// The Zenoh session or one of its entities failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The record could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The fleet requires signatures and the identity has no key.
    #[error(
        "this fleet signs records: identity {id} has no signing key (set `unsigned: true` to opt out)"
    )]
    UnsignedIdentity {
        /// The identity's source id.
        id: String,
    },
    /// Only this node's own records can be published.
    #[error("cannot publish a record of source {got}: this node is {own}")]
    NotOwnSource {
        /// This node's source id.
        own: String,
        /// The source of the key given.
        got: String,
    },
}

fn zerr(e: impl std::fmt::Display) -> FleetError {
    FleetError::Zenoh(e.to_string())
}

/// What [`FleetExchange::publish`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    /// Served to queries now and queued for a (coalesced) put.
    Queued,
    /// Served to queries now, not put: its count has not grown by `republish_growth`
    /// since the version last put (the traffic budget, [`super::republish`]).
    Held {
        /// Outcomes in the record.
        count: u64,
        /// Outcomes in the version last put.
        last_put: u64,
    },
    /// Not shared yet: fewer own outcomes than `min_count_to_share`.
    Withheld {
        /// Outcomes in the record.
        count: u64,
        /// Outcomes needed.
        needed: u64,
    },
}

/// Whether a shared version of an own record is put or only served.
enum Release {
    /// Put on the network.
    Put,
    /// Served only; `last_put` outcomes were in the version last put.
    Held { last_put: u64 },
}

/// One own record as the queryable serves it.
struct Served {
    ke: KeyExpr<'static>,
    seq: Seq,
    bytes: Vec<u8>,
    /// When it was last updated (a [`ServedRecords`] clock tick).
    stamp: u64,
    /// Outcome count of the version of this record last put on the network (0: none).
    put_count: u64,
}

/// Own records as the queryable serves them, by key (latest per key), at most
/// `capacity`: beyond it the least recently updated record is no longer served (it
/// stays in the store and is served again when it is next updated).
struct ServedRecords {
    by_key: BTreeMap<String, Served>,
    by_age: BTreeMap<u64, String>,
    clock: u64,
    capacity: usize,
}

impl ServedRecords {
    fn new(capacity: usize) -> Self {
        ServedRecords {
            by_key: BTreeMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    /// The outcome count of the version last put under `ke` (0: none, or forgotten).
    fn put_count(&self, ke: &str) -> u64 {
        self.by_key.get(ke).map_or(0, |s| s.put_count)
    }

    /// Serves `served` under `ke`, replacing an older version; returns how many records
    /// were dropped to stay within the capacity.
    fn insert(&mut self, ke: String, mut served: Served) -> u64 {
        self.clock += 1;
        served.stamp = self.clock;
        if let Some(old) = self.by_key.insert(ke.clone(), served) {
            self.by_age.remove(&old.stamp);
        }
        self.by_age.insert(self.clock, ke);
        let mut dropped = 0;
        while self.by_key.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
            dropped += 1;
        }
        dropped
    }
}

/// State shared between the exchange handle and its tasks.
struct Shared {
    session: Session,
    intake: Arc<Intake>,
    signing_key: Option<SigningKey>,
    query_timeout: Duration,
    min_count_to_share: u64,
    republish: RepublishPolicy,
    dp: DpConfig,
    /// Time quantum of shared records' timestamps (ns).
    time_quantum_ns: i64,
    /// Sealed own records by key, as the queryable serves them (latest per key, bounded).
    served: RwLock<ServedRecords>,
    outbox: Arc<Outbox>,
    /// Followed addresses (live samples elsewhere are dropped), least recently used
    /// dropped beyond `max_live_subscriptions`.
    follows: Mutex<Follows<Address, ()>>,
    /// The live subscriptions, one per selected lane prefix; the async lock also
    /// serializes lane changes.
    subscriptions: tokio::sync::Mutex<Vec<Subscriber<()>>>,
}

/// What a node's lane selection lets through live, for a caller that must predict
/// deliveries (the simulator's bookkeeping); shares the exchange's state.
#[derive(Clone)]
pub struct LaneView(Arc<Intake>);

impl LaneView {
    /// Whether a live sample of `source` at a followed address passes the lane check now.
    pub fn selects(&self, source: &SourceId) -> bool {
        self.0.lanes().selects(lane_of(source))
    }

    /// The selected lane prefixes now.
    pub fn prefixes(&self) -> Vec<LanePrefix> {
        self.0.lanes().prefixes().to_vec()
    }
}

/// A node's fleet exchange on one Zenoh session (see the module doc).
pub struct FleetExchange {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

/// Locks a mutex even if a panicking thread poisoned it: the data stays consistent
/// because every critical section here is a few map operations.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FleetExchange {
    /// Opens a Zenoh session with `settings.zenoh` and starts the exchange for
    /// `identity`; returns it with the receiving end of the channel of [`Received`]
    /// records. A signed fleet (the default) needs a signed identity.
    pub async fn start(
        settings: FleetSettings,
        identity: Identity,
    ) -> Result<(FleetExchange, mpsc::Receiver<Received>), FleetError> {
        if settings.admission.is_signed() && identity.signing_key().is_none() {
            return Err(FleetError::UnsignedIdentity {
                id: identity.source().to_string(),
            });
        }
        let session = zenoh::open(settings.zenoh.clone()).await.map_err(zerr)?;
        Self::with_session(session, settings, identity).await
    }

    /// Starts the exchange on an already open session (`settings.zenoh` is not used).
    pub async fn with_session(
        session: Session,
        settings: FleetSettings,
        identity: Identity,
    ) -> Result<(FleetExchange, mpsc::Receiver<Received>), FleetError> {
        if settings.admission.is_signed() && identity.signing_key().is_none() {
            return Err(FleetError::UnsignedIdentity {
                id: identity.source().to_string(),
            });
        }
        let own = identity.source().clone();
        // Unsigned fleets put no signature on the wire even when a key exists.
        let signing_key = settings
            .admission
            .is_signed()
            .then(|| identity.signing_key().cloned())
            .flatten();
        let (tx, rx) = mpsc::channel(settings.channel_capacity);
        let intake = Arc::new(Intake {
            fleet: settings.fleet.clone(),
            own: own.clone(),
            admission: settings.admission,
            stats: Arc::new(FleetStats::default()),
            tx,
            digests: Default::default(),
            max_digest_sources: settings.max_digest_sources,
            budget: settings.max_sources_per_address,
            lanes: RwLock::new(LaneSelection::default()),
        });
        // One queryable on this node's own lane and id: a query for other lanes never
        // reaches it.
        let queryable = session
            .declare_queryable(source_selector(&settings.fleet, &own))
            .await
            .map_err(zerr)?;
        let wide = declare_lane(&session, &intake, LanePrefix::ALL).await?;
        set(&intake.stats.lane_prefixes, 1);
        set(&intake.stats.declarations, 2);
        let shared = Arc::new(Shared {
            session,
            intake,
            signing_key,
            query_timeout: settings.query_timeout,
            min_count_to_share: settings.min_count_to_share,
            republish: settings.republish,
            dp: settings.dp,
            time_quantum_ns: settings.time_quantum_ns,
            served: RwLock::new(ServedRecords::new(settings.max_served_records)),
            outbox: Arc::new(Outbox::new(settings.publish_interval)),
            follows: Mutex::new(Follows::new(settings.max_live_subscriptions)),
            subscriptions: tokio::sync::Mutex::new(vec![wide]),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_queries(shared.clone(), queryable));
        tasks.spawn(
            shared
                .outbox
                .clone()
                .run(shared.session.clone(), shared.intake.stats.clone()),
        );
        if let Some(period) = settings.anti_entropy_period {
            tasks.spawn(run_anti_entropy(shared.clone(), period));
        }
        Ok((FleetExchange { shared, tasks }, rx))
    }

    /// This node's source id.
    pub fn own_source(&self) -> &SourceId {
        &self.shared.intake.own
    }

    /// The fleet this exchange belongs to.
    pub fn fleet(&self) -> &FleetName {
        &self.shared.intake.fleet
    }

    /// Most addresses followed live at once (`max_live_subscriptions`).
    pub fn max_follows(&self) -> usize {
        lock(&self.shared.follows).capacity()
    }

    /// The Zenoh session (for diagnostics such as peer lists).
    pub fn session(&self) -> &Session {
        &self.shared.session
    }

    /// The exchange's live counters (shared: they keep counting after this call).
    pub fn stats_handle(&self) -> Arc<FleetStats> {
        self.shared.intake.stats.clone()
    }

    /// The exchange's counters now.
    pub fn stats(&self) -> FleetStatsSnapshot {
        self.shared.intake.stats.snapshot()
    }

    /// Seals an own record and makes it the one served; `None` while withheld. When
    /// `publishing`, also decides whether this version is put (the republish rule).
    fn seal_own(
        &self,
        key: &RecordKey,
        record: &OutcomeRecord,
        publishing: bool,
    ) -> Result<Option<(Sealed, Release)>, FleetError> {
        let own = &self.shared.intake.own;
        if key.source != *own {
            return Err(FleetError::NotOwnSource {
                own: own.to_string(),
                got: key.source.to_string(),
            });
        }
        let count = record.summary.count();
        if count < self.shared.min_count_to_share {
            return Ok(None);
        }
        let ke = record_key(&self.shared.intake.fleet, key);
        // Noise is drawn once per shared version: what is served and what is put are the
        // same release, so repeating a query reveals nothing more.
        let coarse = coarsen_times(record, self.shared.time_quantum_ns);
        let released;
        let record = if self.shared.dp.enabled() {
            released = self.shared.dp.release(&coarse, &mut rand::rng());
            bump(&self.shared.intake.stats.dp_releases, 1);
            &released
        } else {
            &coarse
        };
        let bytes = seal(record, &ke, self.shared.signing_key.as_ref())?;
        let parsed = KeyExpr::try_from(ke.clone()).map_err(zerr)?;
        let mut served = self
            .shared
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let last_put = served.put_count(&ke);
        let release = if publishing && self.shared.republish.due(last_put, count) {
            Release::Put
        } else {
            Release::Held { last_put }
        };
        let dropped = served.insert(
            ke.clone(),
            Served {
                ke: parsed,
                seq: record.seq,
                bytes: bytes.clone(),
                stamp: 0,
                put_count: match release {
                    Release::Put => count,
                    Release::Held { last_put } => last_put,
                },
            },
        );
        drop(served);
        bump(&self.shared.intake.stats.served_evicted, dropped);
        Ok(Some(((ke, bytes), release)))
    }

    /// Shares a new version of one of this node's records: served to queries at once,
    /// and put on the network coalesced (see the module doc) when the republish rule
    /// lets it out. Never blocks on the network.
    pub fn publish(&self, key: &RecordKey, record: &OutcomeRecord) -> Result<Publish, FleetError> {
        let stats = &self.shared.intake.stats;
        let count = record.summary.count();
        match self.seal_own(key, record, true)? {
            None => {
                bump(&stats.withheld, 1);
                Ok(Publish::Withheld {
                    count,
                    needed: self.shared.min_count_to_share,
                })
            }
            Some((_, Release::Held { last_put })) => {
                bump(&stats.held_back, 1);
                Ok(Publish::Held { count, last_put })
            }
            Some((sealed, Release::Put)) => {
                self.shared.outbox.queue(key.clone(), sealed);
                Ok(Publish::Queued)
            }
        }
    }

    /// Serves an own record (restored from the store at start-up) to queries without
    /// putting it on the network; withheld below `min_count_to_share` like `publish`.
    pub fn serve_own(&self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, FleetError> {
        Ok(self.seal_own(key, record, false)?.is_some())
    }

    /// Asks the fleet once for every source's record at (model, fingerprint); waits at
    /// most the configured query timeout. Returns the checked records, newest per source.
    pub async fn query(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
    ) -> Result<Vec<Received>, FleetError> {
        self.query_with_timeout(model, fingerprint, self.shared.query_timeout)
            .await
    }

    /// Like [`query`](Self::query) with an explicit timeout.
    pub async fn query_with_timeout(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
        timeout: Duration,
    ) -> Result<Vec<Received>, FleetError> {
        let shared = &self.shared;
        shared
            .intake
            .query(&shared.session, model, fingerprint, None, timeout)
            .await
    }

    /// Follows (model, fingerprint): live samples of it in the selected lanes go to the
    /// channel from now on. Returns true when the address is newly followed (false:
    /// already followed, now marked recently used). Beyond `max_live_subscriptions` the
    /// least recently used address is dropped. Declares nothing per address; the lane
    /// selection is revised here (see the module doc).
    pub async fn follow(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
    ) -> Result<bool, FleetError> {
        let id = (model.clone(), *fingerprint);
        let fresh = {
            let mut follows = lock(&self.shared.follows);
            if follows.touch(&id) {
                false
            } else {
                let (_, evicted) = follows.insert(id.clone(), ());
                self.shared.intake.track(id);
                for (address, ()) in &evicted {
                    self.shared.intake.untrack(address);
                    debug!(model_id = %address.0, fingerprint = %address.1, "fleet: dropped least recently used follow");
                }
                true
            }
        };
        relane(&self.shared).await?;
        Ok(fresh)
    }

    /// Revises the lane selection from the sources seen so far; true if it changed.
    pub async fn relane(&self) -> Result<bool, FleetError> {
        relane(&self.shared).await
    }

    /// A handle on the lane selection (see [`LaneView`]).
    pub fn lane_view(&self) -> LaneView {
        LaneView(self.shared.intake.clone())
    }

    /// Stops following (model, fingerprint); true if it was followed.
    pub fn unfollow(&self, model: &ModelId, fingerprint: &Fingerprint) -> bool {
        let address = (model.clone(), *fingerprint);
        self.shared.intake.untrack(&address);
        lock(&self.shared.follows).remove(&address).is_some()
    }

    /// The addresses followed live now.
    pub fn followed(&self) -> Vec<Address> {
        followed(&self.shared)
    }

    /// Puts every queued record now, ignoring the coalescing interval (for shutdown).
    pub async fn flush(&self) -> Result<(), FleetError> {
        let shared = &self.shared;
        for (_, (ke, bytes)) in shared.outbox.take_all() {
            put(&shared.session, &shared.intake.stats, &ke, bytes).await?;
        }
        Ok(())
    }

    /// Flushes the queue, stops the tasks and closes the session (also a session given
    /// to [`with_session`](Self::with_session)).
    pub async fn close(mut self) -> Result<(), FleetError> {
        let flushed = self.flush().await;
        self.tasks.shutdown().await;
        lock(&self.shared.follows).clear();
        self.shared.subscriptions.lock().await.clear();
        self.shared.session.close().await.map_err(zerr)?;
        flushed
    }
}

fn followed(shared: &Shared) -> Vec<Address> {
    lock(&shared.follows).keys()
}

/// Declares the live subscription of one lane prefix, feeding the intake.
async fn declare_lane(
    session: &Session,
    intake: &Arc<Intake>,
    prefix: LanePrefix,
) -> Result<Subscriber<()>, FleetError> {
    let intake2 = intake.clone();
    session
        .declare_subscriber(lane_selector(&intake.fleet, prefix))
        .callback(move |sample| intake2.on_sample(&sample))
        .await
        .map_err(zerr)
}

/// Narrows (or widens) the live subscriptions to the lanes the sources seen call for;
/// true if they changed. New subscriptions are declared before the old are dropped, so
/// no selected lane goes unheard in between (a sample heard twice is a replay).
async fn relane(shared: &Shared) -> Result<bool, FleetError> {
    let intake = &shared.intake;
    let mut subs = shared.subscriptions.lock().await;
    let Some(fraction) = intake.lanes().wanted(intake.budget) else {
        return Ok(false);
    };
    let prefixes = select(&intake.own, fraction, MAX_PREFIXES);
    let mut fresh = Vec::with_capacity(prefixes.len());
    for p in &prefixes {
        fresh.push(declare_lane(&shared.session, intake, *p).await?);
    }
    let n = prefixes.len() as u64;
    intake.lanes_mut().switch(&intake.own, fraction, prefixes);
    let old = std::mem::replace(&mut *subs, fresh);
    drop(old);
    bump(&intake.stats.lane_changes, 1);
    set(&intake.stats.lane_prefixes, n);
    set(&intake.stats.declarations, n + 1);
    debug!(fraction, prefixes = n, "fleet: lane selection changed");
    Ok(true)
}

/// Answers queries for this node's own records from `served`, skipping a record the
/// querier's `have` digest shows it already holds.
async fn serve_queries(shared: Arc<Shared>, queryable: Queryable<FifoChannelHandler<Query>>) {
    let mut own_escaped = String::new();
    escape_chunk(shared.intake.own.as_str(), &mut own_escaped);
    while let Ok(query) = queryable.recv_async().await {
        let held = query
            .parameters()
            .get(HAVE_PARAMETER)
            .and_then(|have| seq_in_digest(have, &own_escaped));
        let asked = query.key_expr().clone();
        // Keys are ordered as text: start at the longest literal prefix of the query.
        let literal = asked
            .as_str()
            .find(['*', '$'])
            .map_or(asked.as_str(), |i| &asked.as_str()[..i]);
        let matching: Vec<(KeyExpr<'static>, Vec<u8>)> = {
            let served = shared.served.read().unwrap_or_else(PoisonError::into_inner);
            served
                .by_key
                .range(literal.to_owned()..)
                .take_while(|(k, _)| k.starts_with(literal))
                .filter(|(_, r)| asked.intersects(&r.ke) && held.is_none_or(|h| h < r.seq))
                .map(|(_, r)| (r.ke.clone(), r.bytes.clone()))
                .collect()
        };
        for (ke, bytes) in matching {
            let len = bytes.len() as u64;
            if let Err(e) = query.reply(ke, bytes).await {
                debug!(error = %e, "fleet: reply failed");
                break;
            }
            bump(&shared.intake.stats.bytes_out, len);
        }
    }
}

/// Re-queries every followed address each period with its digest and feeds the
/// channel, so missed samples and healed partitions converge; peers send only records
/// newer than the digest (storages, which ignore it, resend; replays are stale and
/// ignored downstream).
async fn run_anti_entropy(shared: Arc<Shared>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(e) = relane(&shared).await {
            debug!(error = %e, "fleet: lane change failed");
        }
        for address in followed(&shared) {
            let (model, fp) = &address;
            let have = shared.intake.have(&address);
            let got = shared
                .intake
                .query(&shared.session, model, fp, have, shared.query_timeout)
                .await;
            match got {
                Ok(records) => {
                    for r in records {
                        if shared.intake.tx.send(r).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    debug!(model_id = %model, fingerprint = %fp, error = %e, "fleet: anti-entropy query failed")
                }
            }
        }
        bump(&shared.intake.stats.anti_entropy_rounds, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(ke: &str, seq: u64) -> Served {
        Served {
            ke: KeyExpr::try_from(ke.to_owned()).unwrap(),
            seq: Seq(seq),
            bytes: vec![1, 2, 3],
            stamp: 0,
            put_count: 0,
        }
    }

    #[test]
    fn served_records_drop_the_least_recently_updated() {
        let mut s = ServedRecords::new(2);
        let key = |i: u32| format!("qis/v2/f/0/0/0/m/{i:032x}/me");
        assert_eq!(s.insert(key(1), served(&key(1), 1)), 0);
        assert_eq!(s.insert(key(2), served(&key(2), 1)), 0);
        // Updating key 1 makes key 2 the least recently updated.
        assert_eq!(s.insert(key(1), served(&key(1), 2)), 0);
        assert_eq!(s.insert(key(3), served(&key(3), 1)), 1);
        assert_eq!(s.by_key.len(), 2);
        assert!(!s.by_key.contains_key(&key(2)));
        assert_eq!(s.by_key[&key(1)].seq, Seq(2));
        assert_eq!(s.by_age.len(), 2);
    }
}
