//! Coalesced publishing of own records: at most one put per record key per interval,
//! the latest version winning in between. A bandwidth budget, and the reason a burst of
//! outcomes costs one or two puts instead of one per outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;
use zenoh::Session;
use zenoh::qos::CongestionControl;

use super::exchange::FleetError;
use super::stats::{FleetStats, bump};
use crate::core::ids::RecordKey;

/// A sealed record ready for the wire: its key expression and bytes.
pub(crate) type Sealed = (String, Vec<u8>);

#[derive(Default)]
struct State {
    pending: HashMap<RecordKey, Sealed>,
    last_put: HashMap<RecordKey, Instant>,
}

/// Own records waiting for their put, and when each key was last put.
pub(crate) struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    interval: Duration,
}

/// Puts one sealed record and counts it.
pub(crate) async fn put(
    session: &Session,
    stats: &FleetStats,
    ke: &str,
    bytes: Vec<u8>,
) -> Result<(), FleetError> {
    let len = bytes.len() as u64;
    session
        .put(ke, bytes)
        // Records are state that must arrive; express skips batching for latency.
        .congestion_control(CongestionControl::Block)
        .express(true)
        .await
        .map_err(|e| FleetError::Zenoh(e.to_string()))?;
    bump(&stats.published, 1);
    bump(&stats.bytes_out, len);
    Ok(())
}

impl Outbox {
    /// An empty outbox putting each key at most once per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            interval,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are a few map operations: the state stays consistent even if
        // a thread panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the latest version for `key` (replacing a queued older one) and wakes the
    /// publishing task. Never blocks on the network.
    pub(crate) fn queue(&self, key: RecordKey, sealed: Sealed) {
        self.lock().pending.insert(key, sealed);
        self.wake.notify_one();
    }

    /// Takes every queued record, due or not (for flush on shutdown).
    pub(crate) fn take_all(&self) -> Vec<(RecordKey, Sealed)> {
        let mut st = self.lock();
        let now = Instant::now();
        let all: Vec<_> = st.pending.drain().collect();
        for (k, _) in &all {
            st.last_put.insert(k.clone(), now);
        }
        all
    }

    /// Takes the records whose key may be put now; returns them and the next deadline.
    fn take_due(&self, now: Instant) -> (Vec<(RecordKey, Sealed)>, Option<Instant>) {
        let interval = self.interval;
        let mut st = self.lock();
        let State { pending, last_put } = &mut *st;
        // Entries older than the interval no longer hold anything back.
        last_put.retain(|_, t| now < *t + interval);
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        pending.retain(|key, item| match last_put.get(key) {
            Some(t) => {
                let at = *t + interval;
                next = Some(next.map_or(at, |n| n.min(at)));
                true
            }
            None => {
                due.push((key.clone(), std::mem::take(item)));
                false
            }
        });
        for (key, _) in &due {
            last_put.insert(key.clone(), now);
        }
        (due, next)
    }

    /// The publishing task: puts due records, sleeps until the next is due or a new one
    /// is queued. Runs until aborted.
    pub(crate) async fn run(self: Arc<Self>, session: Session, stats: Arc<FleetStats>) {
        loop {
            let (due, next) = self.take_due(Instant::now());
            for (key, (ke, bytes)) in due {
                if let Err(e) = put(&session, &stats, &ke, bytes).await {
                    warn!(fingerprint = %key.fingerprint, error = %e, "fleet: put failed");
                }
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{Fingerprint, ModelId, SourceId};

    fn key(b: u8) -> RecordKey {
        RecordKey {
            model: ModelId::new("m").unwrap(),
            fingerprint: Fingerprint([b; 16]),
            source: SourceId::new("s").unwrap(),
        }
    }

    #[test]
    fn a_key_is_due_once_per_interval_latest_wins() {
        let o = Outbox::new(Duration::from_secs(1));
        let t0 = Instant::now();
        o.queue(key(1), ("k1".into(), vec![1]));
        let (due, next) = o.take_due(t0);
        assert_eq!(due.len(), 1);
        assert_eq!(next, None);
        // Two newer versions within the interval: held back, the latest kept.
        o.queue(key(1), ("k1".into(), vec![2]));
        o.queue(key(1), ("k1".into(), vec![3]));
        o.queue(key(2), ("k2".into(), vec![7]));
        let (due, next) = o.take_due(t0 + Duration::from_millis(10));
        assert_eq!(due.len(), 1, "another key is not held back");
        assert_eq!(due[0].0, key(2));
        assert_eq!(next, Some(t0 + Duration::from_secs(1)));
        let (due, _) = o.take_due(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.1, vec![3]);
    }
}
