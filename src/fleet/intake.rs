//! The receiving side of the exchange: every record that arrives (live sample, query
//! reply, anti-entropy) is checked here (key, record, signature), counted, and either
//! handed on as a [`Received`] or dropped. Never panics on network input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;
use zenoh::Session;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::Sample;

use super::exchange::FleetError;
use super::keys::{address_selector, parse_record_key};
use super::signing::{TrustList, VerifyError};
use super::stats::{FleetStats, bump};
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, SourceId};
use crate::core::record::OutcomeRecord;

/// A record received from the fleet, checked: its key and the record.
pub type Received = (RecordKey, OutcomeRecord);

/// What every receive path shares: who we are, whom we trust, where records go.
pub(crate) struct Intake {
    pub(crate) fleet: FleetName,
    pub(crate) own: SourceId,
    pub(crate) trust: TrustList,
    pub(crate) stats: Arc<FleetStats>,
    pub(crate) tx: mpsc::Sender<Received>,
}

impl Intake {
    /// Checks one received (key, payload); `None` for own echoes and refused input.
    pub(crate) fn accept(&self, key_expr: &str, payload: &[u8]) -> Option<Received> {
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
                // Debug, not warn: a hostile peer must not be able to flood the log; the
                // counters carry the signal to diagnostics.
                debug!(source = %key.source, fingerprint = %key.fingerprint, error = %e, "fleet: refused record");
                None
            }
        }
    }

    /// Subscriber callback: check and forward without waiting (the channel is bounded).
    pub(crate) fn on_sample(&self, sample: &Sample) {
        let payload = sample.payload().to_bytes();
        if let Some(received) = self.accept(sample.key_expr().as_str(), &payload)
            && self.tx.try_send(received).is_err()
        {
            // Full (or closed): the next anti-entropy round brings the record back.
            bump(&self.stats.dropped_overflow, 1);
        }
    }

    /// Gets every source's record at (model, fingerprint), checked, newest per source.
    pub(crate) async fn query(
        &self,
        session: &Session,
        model: &ModelId,
        fingerprint: &Fingerprint,
        timeout: Duration,
    ) -> Result<Vec<Received>, FleetError> {
        bump(&self.stats.queries, 1);
        let replies = session
            .get(address_selector(&self.fleet, model, fingerprint))
            // Every node answers for its own records and a storage may hold the same
            // ones: ask all of them and keep the newest seq per source here.
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .timeout(timeout)
            .await
            .map_err(|e| {
                bump(&self.stats.query_errors, 1);
                FleetError::Zenoh(e.to_string())
            })?;
        let mut newest: HashMap<SourceId, Received> = HashMap::new();
        while let Ok(reply) = replies.recv_async().await {
            match reply.result() {
                Ok(sample) => {
                    let payload = sample.payload().to_bytes();
                    let Some((key, record)) = self.accept(sample.key_expr().as_str(), &payload)
                    else {
                        continue;
                    };
                    if newest
                        .get(&key.source)
                        .is_none_or(|(_, held)| held.seq < record.seq)
                    {
                        newest.insert(key.source.clone(), (key, record));
                    }
                }
                Err(e) => {
                    bump(&self.stats.query_errors, 1);
                    debug!(error = ?e, "fleet: error reply");
                }
            }
        }
        Ok(newest.into_values().collect())
    }
}
