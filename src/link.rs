//! The link between a node, its embedded store and the fleet exchange.
//!
//! - Own records: the node hands each new own record to [`FleetLink::publish`] (never
//!   blocks). A persistence task writes them to the store in durable batches (latest
//!   version per key wins) and only then gives them to the exchange, so no record is
//!   ever published that a crash could lose.
//! - Interests: the first prediction at an address asks the fleet once (query) and keeps
//!   the address fresh (live subscription); answers go to the node and the store.
//! - Received records: from the exchange's channel into the store (bounded, newest
//!   sequence number per source) and to the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::core::ids::{Fingerprint, ModelId, RecordKey};
use crate::core::record::OutcomeRecord;
use crate::core::store::Store;
use crate::fleet::{FleetExchange, FleetStats, Received};
use crate::node::FleetPort;

/// Bound on addresses waiting for their first fleet query.
const INTEREST_QUEUE: usize = 1024;
/// Most received records written to the store in one transaction.
const RECEIVED_BATCH: usize = 256;

/// Counters of the link, for diagnostics.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Own records written durably.
    pub own_persisted: AtomicU64,
    /// Received records written to the store.
    pub received_persisted: AtomicU64,
    /// Addresses dropped because the interest queue was full.
    pub interests_dropped: AtomicU64,
    /// Store or exchange failures (logged).
    pub errors: AtomicU64,
    /// Addresses known from the store followed again after a restart.
    pub refollowed: AtomicU64,
}

/// The node's [`FleetPort`]: persistence first, then the fleet.
pub struct FleetLink {
    /// Own records waiting for their durable write.
    pending_own: Mutex<HashMap<RecordKey, PendingOwn>>,
    own_ready: Notify,
    interests: mpsc::Sender<Interest>,
    stats: Arc<LinkStats>,
    /// The exchange's counters (not the exchange itself, which shutdown must own alone).
    fleet_stats: Option<Arc<FleetStats>>,
}

/// An own record waiting for its durable write.
struct PendingOwn {
    record: OutcomeRecord,
    /// Share it with the fleet once written.
    share: bool,
    /// Receipts of the outcomes it contains, answered once written (true) or failed.
    receipts: Vec<oneshot::Sender<bool>>,
}

/// An address to ask the fleet about, and who waits for the answer.
type Interest = (ModelId, Fingerprint, Option<oneshot::Sender<Vec<Received>>>);

impl FleetLink {
    /// Queues an address for the fleet task; false when it was not queued. Without an
    /// exchange (queue closed) nothing is asked and nothing counted as dropped.
    fn ask(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
        reply: Option<oneshot::Sender<Vec<Received>>>,
    ) -> bool {
        match self
            .interests
            .try_send((model.clone(), *fingerprint, reply))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.interests_dropped.fetch_add(1, Ordering::Relaxed);
                debug!(%fingerprint, "fleet interest queue full: address left to anti-entropy");
                false
            }
        }
    }

    fn queue_own(
        &self,
        key: &RecordKey,
        record: &OutcomeRecord,
        share: bool,
        receipt: Option<oneshot::Sender<bool>>,
    ) {
        let mut pending = self
            .pending_own
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Records are cumulative: a newer version replaces one not yet written and takes
        // over its receipts (it contains their outcomes).
        let entry = pending.entry(key.clone()).or_insert_with(|| PendingOwn {
            record: record.clone(),
            share,
            receipts: Vec::new(),
        });
        if record.seq > entry.record.seq {
            entry.record = record.clone();
            entry.share = share;
        }
        entry.receipts.extend(receipt);
        drop(pending);
        self.own_ready.notify_one();
    }
}

impl FleetPort for FleetLink {
    fn publish(&self, key: &RecordKey, record: &OutcomeRecord) {
        self.queue_own(key, record, true, None);
    }

    fn keep(&self, key: &RecordKey, record: &OutcomeRecord) {
        self.queue_own(key, record, false, None);
    }

    fn own_record_receipt(
        &self,
        key: &RecordKey,
        record: &OutcomeRecord,
        share: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        let (tx, rx) = oneshot::channel();
        self.queue_own(key, record, share, Some(tx));
        Some(rx)
    }

    fn interest(&self, model: &ModelId, fingerprint: &Fingerprint) {
        self.ask(model, fingerprint, None);
    }

    fn fetch(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
    ) -> Option<oneshot::Receiver<Vec<Received>>> {
        let (tx, rx) = oneshot::channel();
        self.ask(model, fingerprint, Some(tx)).then_some(rx)
    }

    fn diagnostics(&self) -> (Vec<(String, String)>, u64) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let l = &self.stats;
        let mut kv: Vec<(String, String)> = [
            ("store.own_persisted", r(&l.own_persisted)),
            ("store.received_persisted", r(&l.received_persisted)),
            ("link.interests_dropped", r(&l.interests_dropped)),
            ("link.refollowed", r(&l.refollowed)),
            ("link.errors", r(&l.errors)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let Some(fleet) = &self.fleet_stats else {
            return (kv, 0);
        };
        let f = fleet.snapshot();
        kv.extend(
            [
                ("fleet.received", f.received),
                ("fleet.accepted", f.accepted),
                ("fleet.bytes_in", f.bytes_in),
                ("fleet.rejected_key", f.rejected_key),
                ("fleet.rejected_decode", f.rejected_decode),
                ("fleet.rejected_unsigned", f.rejected_unsigned),
                ("fleet.rejected_signature", f.rejected_signature),
                ("fleet.dropped_overflow", f.dropped_overflow),
                ("fleet.published", f.published),
                ("fleet.bytes_out", f.bytes_out),
                ("fleet.withheld", f.withheld),
                ("fleet.held_back", f.held_back),
                ("fleet.queries", f.queries),
                ("fleet.query_errors", f.query_errors),
                ("fleet.anti_entropy_rounds", f.anti_entropy_rounds),
                ("fleet.digest_dropped", f.digest_dropped),
                ("fleet.served_evicted", f.served_evicted),
                ("fleet.dp_releases", f.dp_releases),
                ("fleet.rejected_lane", f.rejected_lane),
                ("fleet.dropped_unfollowed", f.dropped_unfollowed),
                ("fleet.dropped_unselected", f.dropped_unselected),
                ("fleet.widened_queries", f.widened_queries),
                ("fleet.lane_changes", f.lane_changes),
                ("fleet.lane_prefixes", f.lane_prefixes),
                ("fleet.sources_seen", f.sources_seen),
                ("fleet.declarations", f.declarations),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_string())),
        );
        (kv, f.rejected())
    }
}

/// A started link: the port for the node, the records for the node, and its tasks.
pub struct RunningLink {
    /// Give this to the node as its fleet port.
    pub port: Arc<FleetLink>,
    /// The link's counters.
    pub stats: Arc<LinkStats>,
    store: Arc<Mutex<Store>>,
    exchange: Option<Arc<FleetExchange>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// The node's record channel: held so it stays open (and empty) when the robot
    /// learns alone, and used by [`RunningLink::refollow`].
    to_node: mpsc::Sender<Received>,
}

impl FleetLink {
    /// Starts the link's tasks; returns it with the channel of fleet records for the
    /// node. Own records restored from the store are not served until the node shares
    /// them again: which version was last shared before the restart is not kept, and
    /// serving a newer one could reveal fewer than `min_count_to_share` outcomes by
    /// difference (privacy budget). Routers' storages keep serving the shared version.
    ///
    /// Without an exchange (`None`) the link only persists: the robot learns alone.
    pub fn start(
        store: Store,
        exchange: Option<(FleetExchange, mpsc::Receiver<Received>)>,
        node_capacity: usize,
    ) -> (RunningLink, mpsc::Receiver<Received>) {
        let (exchange, from_fleet) = exchange.unzip();
        let (interest_tx, interest_rx) = mpsc::channel(INTEREST_QUEUE);
        let (node_tx, node_rx) = mpsc::channel(node_capacity.max(1));
        let stats = Arc::new(LinkStats::default());
        let port = Arc::new(FleetLink {
            pending_own: Mutex::new(HashMap::new()),
            own_ready: Notify::new(),
            interests: interest_tx,
            stats: stats.clone(),
            fleet_stats: exchange.as_ref().map(FleetExchange::stats_handle),
        });
        let store = Arc::new(Mutex::new(store));
        let exchange = exchange.map(Arc::new);
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(persist_and_publish(
            port.clone(),
            store.clone(),
            exchange.clone(),
            cancel.clone(),
        ));
        if let (Some(exchange), Some(from_fleet)) = (&exchange, from_fleet) {
            tasks.spawn(ask_fleet(
                interest_rx,
                exchange.clone(),
                node_tx.clone(),
                store.clone(),
                stats.clone(),
                cancel.clone(),
            ));
            tasks.spawn(take_in(
                from_fleet,
                node_tx.clone(),
                store.clone(),
                stats.clone(),
                cancel.clone(),
            ));
        }
        let link = RunningLink {
            port,
            stats,
            store,
            exchange,
            cancel,
            tasks,
            to_node: node_tx,
        };
        (link, node_rx)
    }
}

/// Writes pending own records durably, then publishes them.
async fn persist_and_publish(
    port: Arc<FleetLink>,
    store: Arc<Mutex<Store>>,
    exchange: Option<Arc<FleetExchange>>,
    cancel: CancellationToken,
) {
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = port.own_ready.notified() => false,
        };
        flush_own(&port, &store, exchange.as_deref()).await;
        if stop {
            break;
        }
    }
}

async fn flush_own(port: &FleetLink, store: &Arc<Mutex<Store>>, exchange: Option<&FleetExchange>) {
    let mut batch = Vec::new();
    let mut share = Vec::new();
    let mut receipts = Vec::new();
    for (k, p) in port
        .pending_own
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
    {
        batch.push((k, p.record));
        share.push(p.share);
        receipts.extend(p.receipts);
    }
    if batch.is_empty() {
        return;
    }
    // Every receipt is answered on every path below; a dropped sender also reads as
    // "not written" on the other side.
    let answer = |receipts: Vec<oneshot::Sender<bool>>, durable: bool| {
        for r in receipts {
            let _ = r.send(durable);
        }
    };
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let r = store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put_own_batch(&batch);
        (r, batch)
    })
    .await;
    let (result, batch) = match written {
        Ok(x) => x,
        Err(e) => {
            port.stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!("store task failed: {e}");
            answer(receipts, false);
            return;
        }
    };
    match result {
        Ok(n) => {
            port.stats
                .own_persisted
                .fetch_add(n as u64, Ordering::Relaxed);
            answer(receipts, true);
        }
        Err(e) => {
            // Not durable, so not published: the next outcome at each address produces a
            // newer cumulative record and retries.
            port.stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!(
                records = batch.len(),
                "store write failed, records not published: {e}"
            );
            answer(receipts, false);
            return;
        }
    }
    let Some(exchange) = exchange else { return };
    for ((key, record), _) in batch.iter().zip(share).filter(|(_, s)| *s) {
        if let Err(e) = exchange.publish(key, record) {
            port.stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!(fingerprint = %key.fingerprint, "publishing own record: {e}");
        }
    }
}

/// Asks the fleet about newly met addresses and follows them.
async fn ask_fleet(
    mut interests: mpsc::Receiver<Interest>,
    exchange: Arc<FleetExchange>,
    node: mpsc::Sender<Received>,
    store: Arc<Mutex<Store>>,
    stats: Arc<LinkStats>,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            n = interests.recv() => n,
        };
        let Some((model, fingerprint, reply)) = next else {
            break;
        };
        // Subscribe first so nothing published between the query and the subscription
        // is missed (duplicates are harmless: newest seq wins).
        if let Err(e) = exchange.follow(&model, &fingerprint).await {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!(%fingerprint, "following an address: {e}");
        }
        match exchange.query(&model, &fingerprint).await {
            Ok(found) => {
                if let Some(reply) = reply {
                    // The waiting prediction merges these at once; the copies sent on
                    // to the node below are then replays (ignored as stale).
                    let _ = reply.send(found.clone());
                }
                deliver(found, &node, &store, &stats).await
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(%fingerprint, "fleet query: {e}");
            }
        }
    }
}

/// Moves records from the exchange's channel into the store and the node.
async fn take_in(
    mut from_fleet: mpsc::Receiver<Received>,
    node: mpsc::Sender<Received>,
    store: Arc<Mutex<Store>>,
    stats: Arc<LinkStats>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(RECEIVED_BATCH);
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => break,
            n = from_fleet.recv_many(&mut batch, RECEIVED_BATCH) => n,
        };
        if n == 0 {
            break;
        }
        deliver(std::mem::take(&mut batch), &node, &store, &stats).await;
    }
}

async fn deliver(
    records: Vec<Received>,
    node: &mpsc::Sender<Received>,
    store: &Arc<Mutex<Store>>,
    stats: &LinkStats,
) {
    if records.is_empty() {
        return;
    }
    let to_store = records.clone();
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put_received(&to_store)
    })
    .await;
    match written {
        Ok(Ok(n)) => {
            stats
                .received_persisted
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!("store write of received records failed: {e}");
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!("store task failed: {e}");
        }
    }
    for r in records {
        if node.send(r).await.is_err() {
            return;
        }
    }
}

impl RunningLink {
    /// Follows again the addresses a restarted robot knows from its store (at most the
    /// exchange's live-subscription budget, in the order given), and asks the fleet what
    /// changed there meanwhile. Without this a restored address is never subscribed again:
    /// the node knows it, so it is no first encounter, and it would miss every newer
    /// record. Runs in its own task beside first-encounter fetches, so those never queue
    /// behind it. Does nothing without an exchange.
    pub fn refollow(&mut self, addresses: Vec<(ModelId, Fingerprint)>) {
        let Some(exchange) = self.exchange.clone() else {
            return;
        };
        let node = self.to_node.clone();
        let (store, stats, cancel) = (self.store.clone(), self.stats.clone(), self.cancel.clone());
        let budget = exchange.max_follows();
        self.tasks.spawn(async move {
            for (model, fingerprint) in addresses.into_iter().take(budget) {
                if cancel.is_cancelled() {
                    break;
                }
                if let Err(e) = exchange.follow(&model, &fingerprint).await {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(%fingerprint, "following a restored address: {e}");
                    continue;
                }
                stats.refollowed.fetch_add(1, Ordering::Relaxed);
                let found = tokio::select! {
                    _ = cancel.cancelled() => break,
                    found = exchange.query(&model, &fingerprint) => found,
                };
                match found {
                    Ok(found) => deliver(found, &node, &store, &stats).await,
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(%fingerprint, "fleet query for a restored address: {e}");
                    }
                }
            }
        });
    }

    /// Stops the tasks after writing and publishing what is pending, flushes the store's
    /// use order and closes the exchange.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        flush_own(&self.port, &self.store, self.exchange.as_deref()).await;
        let store = self.store.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            store.lock().unwrap_or_else(PoisonError::into_inner).flush()
        })
        .await;
        if let Ok(Err(e)) = flushed {
            warn!("store flush at shutdown: {e}");
        }
        match self.exchange.map(Arc::try_unwrap) {
            Some(Ok(exchange)) => {
                if let Err(e) = exchange.close().await {
                    warn!("closing the fleet exchange: {e}");
                }
            }
            Some(Err(_)) => warn!("fleet exchange still shared at shutdown; session left to drop"),
            None => {}
        }
    }
}
