//! The fleet exchange: this node's records out, the fleet's records in, over one Zenoh
//! session.
//!
//! - Out: [`FleetExchange::publish`] seals (encodes, signs) an own record, makes it the
//!   record the queryable serves, and queues it for a coalesced put: at most one put per
//!   record key per `publish_interval`, latest wins, and none before the record holds
//!   `min_count_to_share` outcomes.
//! - In: [`FleetExchange::query`] asks `.../<fp>/*` once; [`FleetExchange::follow`] keeps
//!   a live subscription (bounded, least recently used dropped) whose samples, and the
//!   periodic anti-entropy re-queries, go to one bounded channel of [`Received`].
//!   Everything received is checked (key, record, signature) and counted in
//!   [`FleetStats`]; refused input is dropped, never a panic.
//!
//! Records are state (latest cumulative summary per source), so duplicates and replays
//! are harmless: the memory keeps the highest `seq` per source.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};
use zenoh::Session;
use zenoh::key_expr::KeyExpr;
use zenoh::pubsub::Subscriber;
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::Sample;

use super::config::FleetSettings;
use super::keys::{address_selector, parse_record_key, record_key, source_selector};
use super::signing::{TrustList, VerifyError, seal};
use super::stats::{FleetStats, FleetStatsSnapshot, bump};
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, SourceId};
use crate::core::record::{EncodeError, OutcomeRecord};

/// A record received from the fleet, checked: its key and the record.
pub type Received = (RecordKey, OutcomeRecord);

/// Why a fleet operation failed.
#[derive(Debug, Error)]
pub enum FleetError {
    /// The Zenoh session or one of its entities failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The record could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
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
    /// Not shared yet: fewer own outcomes than `min_count_to_share`.
    Withheld {
        /// Outcomes in the record.
        count: u64,
        /// Outcomes needed.
        needed: u64,
    },
}

/// The receiving side shared by subscriber callbacks, queries and anti-entropy.
struct Intake {
    fleet: FleetName,
    own: SourceId,
    trust: TrustList,
    stats: Arc<FleetStats>,
    tx: mpsc::Sender<Received>,
}

impl Intake {
    /// Checks one received (key, payload); `None` for own echoes and refused input.
    fn accept(&self, key_expr: &str, payload: &[u8]) -> Option<Received> {
        let key = match parse_record_key(&self.fleet, key_expr) {
            Ok(k) => k,
            Err(e) => {
                bump(&self.stats.received, 1);
                bump(&self.stats.rejected_key, 1);
                debug!(key = key_expr, error = %e, "fleet: refused key");
                return None;
            }
        };
        // Our own puts and queryable replies come back to us; they are not fleet input.
        if key.source == self.own {
            return None;
        }
        bump(&self.stats.received, 1);
        bump(&self.stats.bytes_in, payload.len() as u64);
        match self.trust.open(key_expr, &key.source, payload) {
            Ok(record) => {
                bump(&self.stats.accepted, 1);
                Some((key, record))
            }
            Err(e) => {
                let counter = match e {
                    VerifyError::Decode(_) => &self.stats.rejected_decode,
                    VerifyError::Unsigned => &self.stats.rejected_unsigned,
                    VerifyError::BadSignature { .. } => &self.stats.rejected_signature,
                };
                bump(counter, 1);
                warn!(source = %key.source, fingerprint = %key.fingerprint, error = %e, "fleet: refused record");
                None
            }
        }
    }

    fn on_sample(&self, sample: &Sample) {
        let payload = sample.payload().to_bytes();
        if let Some(received) = self.accept(sample.key_expr().as_str(), &payload)
            && self.tx.try_send(received).is_err()
        {
            // Full (or closed): the next anti-entropy round brings the record back.
            bump(&self.stats.dropped_overflow, 1);
        }
    }
}

/// Own records waiting for their coalesced put.
#[derive(Default)]
struct Outbox {
    pending: HashMap<RecordKey, (String, Vec<u8>)>,
    last_put: HashMap<RecordKey, Instant>,
}

/// One live subscription and when it was last asked for.
struct Followed {
    _subscriber: Subscriber<()>,
    last_used: u64,
}

#[derive(Default)]
struct Follows {
    subs: HashMap<(ModelId, Fingerprint), Followed>,
    tick: u64,
}

/// State shared between the exchange handle and its tasks.
struct Shared {
    session: Session,
    intake: Arc<Intake>,
    signing_key: Option<SigningKey>,
    query_timeout: Duration,
    publish_interval: Duration,
    min_count_to_share: u64,
    max_live_subscriptions: usize,
    /// Sealed own records by key, as the queryable serves them (latest per key).
    served: RwLock<BTreeMap<String, (KeyExpr<'static>, Vec<u8>)>>,
    outbox: Mutex<Outbox>,
    wake: Notify,
    follows: Mutex<Follows>,
}

/// A node's fleet exchange on one Zenoh session (see the module doc).
pub struct FleetExchange {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

/// Locks a mutex even if a panicking thread poisoned it: the data stays consistent
/// because every critical section here is a few map operations.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FleetExchange {
    /// Opens a Zenoh session with `settings.zenoh` and starts the exchange for source
    /// `own`; returns it with the receiving end of the channel of [`Received`] records.
    pub async fn start(
        settings: FleetSettings,
        own: SourceId,
    ) -> Result<(FleetExchange, mpsc::Receiver<Received>), FleetError> {
        let session = zenoh::open(settings.zenoh.clone()).await.map_err(zerr)?;
        Self::with_session(session, settings, own).await
    }

    /// Starts the exchange on an already open session (`settings.zenoh` is not used).
    pub async fn with_session(
        session: Session,
        settings: FleetSettings,
        own: SourceId,
    ) -> Result<(FleetExchange, mpsc::Receiver<Received>), FleetError> {
        let (tx, rx) = mpsc::channel(settings.channel_capacity);
        let intake = Arc::new(Intake {
            fleet: settings.fleet.clone(),
            own: own.clone(),
            trust: settings.trust,
            stats: Arc::new(FleetStats::default()),
            tx,
        });
        let queryable = session
            .declare_queryable(source_selector(&settings.fleet, &own))
            .await
            .map_err(zerr)?;
        let shared = Arc::new(Shared {
            session,
            intake,
            signing_key: settings.signing_key,
            query_timeout: settings.query_timeout,
            publish_interval: settings.publish_interval,
            min_count_to_share: settings.min_count_to_share,
            max_live_subscriptions: settings.max_live_subscriptions,
            served: RwLock::new(BTreeMap::new()),
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            follows: Mutex::new(Follows::default()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_queries(shared.clone(), queryable));
        tasks.spawn(run_outbox(shared.clone()));
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

    /// The Zenoh session (for diagnostics such as peer lists).
    pub fn session(&self) -> &Session {
        &self.shared.session
    }

    /// The exchange's counters now.
    pub fn stats(&self) -> FleetStatsSnapshot {
        self.shared.intake.stats.snapshot()
    }

    /// Seals an own record and makes it the one served; `None` while withheld.
    fn seal_own(
        &self,
        key: &RecordKey,
        record: &OutcomeRecord,
    ) -> Result<Option<(String, Vec<u8>)>, FleetError> {
        let own = &self.shared.intake.own;
        if key.source != *own {
            return Err(FleetError::NotOwnSource {
                own: own.to_string(),
                got: key.source.to_string(),
            });
        }
        if record.summary.count() < self.shared.min_count_to_share {
            return Ok(None);
        }
        let ke = record_key(&self.shared.intake.fleet, key);
        let bytes = seal(record, &ke, self.shared.signing_key.as_ref())?;
        let parsed = KeyExpr::try_from(ke.clone()).map_err(zerr)?;
        self.shared
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ke.clone(), (parsed, bytes.clone()));
        Ok(Some((ke, bytes)))
    }

    /// Shares a new version of one of this node's records: served to queries at once and
    /// put on the network coalesced (see the module doc). Never blocks on the network.
    pub fn publish(&self, key: &RecordKey, record: &OutcomeRecord) -> Result<Publish, FleetError> {
        let Some((ke, bytes)) = self.seal_own(key, record)? else {
            bump(&self.shared.intake.stats.withheld, 1);
            return Ok(Publish::Withheld {
                count: record.summary.count(),
                needed: self.shared.min_count_to_share,
            });
        };
        lock(&self.shared.outbox)
            .pending
            .insert(key.clone(), (ke, bytes));
        self.shared.wake.notify_one();
        Ok(Publish::Queued)
    }

    /// Serves an own record (restored from the store at start-up) to queries without
    /// putting it on the network; withheld below `min_count_to_share` like `publish`.
    pub fn serve_own(&self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, FleetError> {
        Ok(self.seal_own(key, record)?.is_some())
    }

    /// Asks the fleet once for every source's record at (model, fingerprint); waits at
    /// most the configured query timeout. Returns the checked records, newest per source.
    pub async fn query(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
    ) -> Result<Vec<Received>, FleetError> {
        query_address(&self.shared, model, fingerprint, self.shared.query_timeout).await
    }

    /// Like [`query`](Self::query) with an explicit timeout.
    pub async fn query_with_timeout(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
        timeout: Duration,
    ) -> Result<Vec<Received>, FleetError> {
        query_address(&self.shared, model, fingerprint, timeout).await
    }

    /// Subscribes to live updates of (model, fingerprint); received records go to the
    /// channel. Returns true when a new subscription was declared (false: already
    /// followed, now marked recently used). Beyond `max_live_subscriptions` the least
    /// recently used subscription is dropped.
    pub async fn follow(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
    ) -> Result<bool, FleetError> {
        let id = (model.clone(), *fingerprint);
        {
            let mut f = lock(&self.shared.follows);
            f.tick += 1;
            let tick = f.tick;
            if let Some(sub) = f.subs.get_mut(&id) {
                sub.last_used = tick;
                return Ok(false);
            }
        }
        let intake = self.shared.intake.clone();
        let subscriber = self
            .shared
            .session
            .declare_subscriber(address_selector(&intake.fleet.clone(), model, fingerprint))
            .callback(move |sample| intake.on_sample(&sample))
            .await
            .map_err(zerr)?;
        let mut f = lock(&self.shared.follows);
        f.tick += 1;
        let tick = f.tick;
        // A concurrent follow of the same address may have won; keep one subscription.
        if let Some(sub) = f.subs.get_mut(&id) {
            sub.last_used = tick;
            return Ok(false);
        }
        f.subs.insert(
            id,
            Followed {
                _subscriber: subscriber,
                last_used: tick,
            },
        );
        while f.subs.len() > self.shared.max_live_subscriptions {
            // Linear scan: runs only when a new address is followed, over a bounded map.
            let Some(oldest) = f
                .subs
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            debug!(model_id = %oldest.0, fingerprint = %oldest.1, "fleet: dropping least recently used subscription");
            f.subs.remove(&oldest);
        }
        Ok(true)
    }

    /// Stops following (model, fingerprint); true if it was followed.
    pub fn unfollow(&self, model: &ModelId, fingerprint: &Fingerprint) -> bool {
        lock(&self.shared.follows)
            .subs
            .remove(&(model.clone(), *fingerprint))
            .is_some()
    }

    /// The addresses followed live now.
    pub fn followed(&self) -> Vec<(ModelId, Fingerprint)> {
        followed(&self.shared)
    }

    /// Puts every queued record now, ignoring the coalescing interval (for shutdown).
    pub async fn flush(&self) -> Result<(), FleetError> {
        let due: Vec<_> = lock(&self.shared.outbox).pending.drain().collect();
        for (key, (ke, bytes)) in due {
            put(&self.shared, &ke, bytes).await?;
            lock(&self.shared.outbox)
                .last_put
                .insert(key, Instant::now());
        }
        Ok(())
    }

    /// Flushes the queue, stops the tasks and closes the session.
    pub async fn close(mut self) -> Result<(), FleetError> {
        let flushed = self.flush().await;
        self.tasks.shutdown().await;
        lock(&self.shared.follows).subs.clear();
        self.shared.session.close().await.map_err(zerr)?;
        flushed
    }
}

fn followed(shared: &Shared) -> Vec<(ModelId, Fingerprint)> {
    lock(&shared.follows).subs.keys().cloned().collect()
}

async fn put(shared: &Shared, ke: &str, bytes: Vec<u8>) -> Result<(), FleetError> {
    let len = bytes.len() as u64;
    shared
        .session
        .put(ke, bytes)
        // Records are state that must arrive; express skips batching for latency.
        .congestion_control(CongestionControl::Block)
        .express(true)
        .await
        .map_err(zerr)?;
    bump(&shared.intake.stats.published, 1);
    bump(&shared.intake.stats.bytes_out, len);
    Ok(())
}

async fn query_address(
    shared: &Shared,
    model: &ModelId,
    fingerprint: &Fingerprint,
    timeout: Duration,
) -> Result<Vec<Received>, FleetError> {
    let stats = &shared.intake.stats;
    bump(&stats.queries, 1);
    let selector = address_selector(&shared.intake.fleet, model, fingerprint);
    let replies = shared
        .session
        .get(selector)
        // Every node answers for its own records and a storage may hold the same ones:
        // ask all of them and keep the newest seq per source here.
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .await
        .map_err(|e| {
            bump(&stats.query_errors, 1);
            zerr(e)
        })?;
    let mut newest: HashMap<SourceId, Received> = HashMap::new();
    while let Ok(reply) = replies.recv_async().await {
        match reply.result() {
            Ok(sample) => {
                let payload = sample.payload().to_bytes();
                if let Some((key, record)) =
                    shared.intake.accept(sample.key_expr().as_str(), &payload)
                {
                    match newest.get(&key.source) {
                        Some((_, held)) if held.seq >= record.seq => {}
                        _ => {
                            newest.insert(key.source.clone(), (key, record));
                        }
                    }
                }
            }
            Err(e) => {
                bump(&stats.query_errors, 1);
                debug!(error = ?e, "fleet: error reply");
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// Answers queries for this node's own records from `served`.
async fn serve_queries(
    shared: Arc<Shared>,
    queryable: zenoh::query::Queryable<zenoh::handlers::FifoChannelHandler<zenoh::query::Query>>,
) {
    while let Ok(query) = queryable.recv_async().await {
        let asked = query.key_expr().clone();
        // Keys are ordered as text: start at the longest literal prefix of the query.
        let literal = asked
            .as_str()
            .find(['*', '$'])
            .map_or(asked.as_str(), |i| &asked.as_str()[..i]);
        let matching: Vec<(KeyExpr<'static>, Vec<u8>)> = {
            let served = shared.served.read().unwrap_or_else(PoisonError::into_inner);
            served
                .range(literal.to_owned()..)
                .take_while(|(k, _)| k.starts_with(literal))
                .filter(|(_, (ke, _))| asked.intersects(ke))
                .map(|(_, v)| v.clone())
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

/// Puts queued own records, at most once per key per `publish_interval`.
async fn run_outbox(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let interval = shared.publish_interval;
        let (due, next) = {
            let mut out = lock(&shared.outbox);
            let Outbox { pending, last_put } = &mut *out;
            // Entries older than the interval no longer hold anything back.
            last_put.retain(|_, t| now < *t + interval);
            let mut next: Option<Instant> = None;
            let mut due = Vec::new();
            pending.retain(|key, item| match last_put.get(key) {
                Some(t) if now < *t + interval => {
                    let at = *t + interval;
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
                _ => {
                    due.push((key.clone(), std::mem::take(item)));
                    false
                }
            });
            for (key, _) in &due {
                last_put.insert(key.clone(), now);
            }
            (due, next)
        };
        for (key, (ke, bytes)) in due {
            if let Err(e) = put(&shared, &ke, bytes).await {
                warn!(fingerprint = %key.fingerprint, error = %e, "fleet: put failed");
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

/// Re-queries every followed address each period and feeds the channel, so missed
/// samples and healed partitions converge (replays are stale and ignored downstream).
async fn run_anti_entropy(shared: Arc<Shared>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        for (model, fp) in followed(&shared) {
            match query_address(&shared, &model, &fp, shared.query_timeout).await {
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
