//! The receiving side of the exchange: every record that arrives (live sample, query
//! reply, anti-entropy) is checked here (key, record, signature), counted, and either
//! handed on as a [`Received`] or dropped. Never panics on network input.
//!
//! For followed addresses it also keeps the digest of what it handed on (highest `seq`
//! per source), which anti-entropy sends with its query (`?have=<source>:<seq>,...`) so
//! that peers reply only with records newer than that. A digest holds at most
//! `max_digest_sources` sources (the highest seqs); a source left out is only resent by
//! peers (its records are stale downstream), never lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::join_all;

use tokio::sync::mpsc;
use tracing::debug;
use zenoh::Session;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::Sample;

use super::exchange::FleetError;
use super::keys::{KeyError, address_selector, escape_chunk, parse_record_key};
use super::lanes::{
    LanePrefix, LaneSelection, LaneSet, MAX_PREFIXES, lane_and_hash, select, widening,
};
use super::signing::{Admission, VerifyError};
use super::stats::{FleetStats, bump, set};
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, Seq, SourceId};
use crate::core::record::OutcomeRecord;

/// A record received from the fleet, checked: its key and the record.
pub type Received = (RecordKey, OutcomeRecord);

/// An address: (model, fingerprint).
pub type Address = (ModelId, Fingerprint);

/// Name of the selector parameter carrying the querier's digest of an address.
pub const HAVE_PARAMETER: &str = "have";

/// Highest seq handed on per source, for each followed address.
type Digests = HashMap<Address, HashMap<SourceId, Seq>>;

/// Notes `seq` for `source` in one address's digest of at most `max` sources; when full,
/// the lowest seq (held or new) is left out. Returns whether one was left out.
fn note_in_digest(
    digest: &mut HashMap<SourceId, Seq>,
    source: &SourceId,
    seq: Seq,
    max: usize,
) -> bool {
    if let Some(held) = digest.get_mut(source) {
        *held = (*held).max(seq);
        return false;
    }
    if digest.len() >= max {
        let lowest = digest
            .iter()
            .min_by_key(|(_, held)| **held)
            .map(|(s, held)| (s.clone(), *held));
        match lowest {
            Some((low, held)) if held < seq => {
                digest.remove(&low);
            }
            _ => return true,
        }
        digest.insert(source.clone(), seq);
        return true;
    }
    digest.insert(source.clone(), seq);
    false
}

/// Writes a digest as the `have` parameter value: `<escaped source>:<seq>` joined by
/// `,` (neither character occurs in an escaped name).
fn digest_parameter(digest: &HashMap<SourceId, Seq>) -> String {
    let mut out = String::new();
    for (source, seq) in digest {
        if !out.is_empty() {
            out.push(',');
        }
        escape_chunk(source.as_str(), &mut out);
        out.push(':');
        out.push_str(&seq.0.to_string());
    }
    out
}

/// The seq the querier holds for the source whose escaped name is `escaped_source`,
/// read from a `have` parameter value; malformed entries are ignored.
pub(crate) fn seq_in_digest(have: &str, escaped_source: &str) -> Option<Seq> {
    have.split(',').find_map(|entry| {
        let (name, seq) = entry.split_once(':')?;
        (name == escaped_source)
            .then(|| seq.parse().ok().map(Seq))
            .flatten()
    })
}

/// What every receive path shares: who we are, whom we trust, where records go.
pub(crate) struct Intake {
    pub(crate) fleet: FleetName,
    pub(crate) own: SourceId,
    pub(crate) admission: Admission,
    pub(crate) stats: Arc<FleetStats>,
    pub(crate) tx: mpsc::Sender<Received>,
    /// Digests of followed addresses (entries exist only while followed: bounded).
    pub(crate) digests: Mutex<Digests>,
    /// Most sources in one address's digest.
    pub(crate) max_digest_sources: usize,
    /// Fan-in budget (sources).
    pub(crate) budget: usize,
    /// The lanes listened to and the sources seen.
    pub(crate) lanes: RwLock<LaneSelection>,
}

impl Intake {
    fn digests(&self) -> MutexGuard<'_, Digests> {
        self.digests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts keeping a digest for a followed address.
    pub(crate) fn track(&self, address: Address) {
        self.digests().entry(address).or_default();
    }

    /// Stops keeping the digest of an address no longer followed.
    pub(crate) fn untrack(&self, address: &Address) {
        self.digests().remove(address);
    }

    /// Notes that a record was handed on (only followed addresses keep a digest).
    pub(crate) fn note(&self, key: &RecordKey, seq: Seq) {
        // The clone of the model id is off the hot path (one per received record).
        if let Some(d) = self
            .digests()
            .get_mut(&(key.model.clone(), key.fingerprint))
            && note_in_digest(d, &key.source, seq, self.max_digest_sources)
        {
            bump(&self.stats.digest_dropped, 1);
        }
    }

    /// The `have` parameter for an address, if it is followed and anything was seen.
    pub(crate) fn have(&self, address: &Address) -> Option<String> {
        self.digests()
            .get(address)
            .filter(|d| !d.is_empty())
            .map(digest_parameter)
    }

    /// The lane state, read.
    pub(crate) fn lanes(&self) -> std::sync::RwLockReadGuard<'_, LaneSelection> {
        self.lanes.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lane state, written.
    pub(crate) fn lanes_mut(&self) -> std::sync::RwLockWriteGuard<'_, LaneSelection> {
        self.lanes.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks one received (key, payload); `None` for own echoes and refused input.
    /// `live`: a subscription sample, dropped (counted, before its signature is checked)
    /// unless its address is followed and its lane selected.
    pub(crate) fn accept(&self, key_expr: &str, payload: &[u8], live: bool) -> Option<Received> {
        let key = match parse_record_key(&self.fleet, key_expr) {
            Ok(k) => k,
            Err(e) => {
                bump(&self.stats.received, 1);
                let counter = match e {
                    KeyError::WrongLane { .. } => &self.stats.rejected_lane,
                    _ => &self.stats.rejected_key,
                };
                bump(counter, 1);
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
        let (lane, hash) = lane_and_hash(&key.source);
        if live {
            // The clone of the model id is off the hot path (one per received record).
            if !self
                .digests()
                .contains_key(&(key.model.clone(), key.fingerprint))
            {
                bump(&self.stats.dropped_unfollowed, 1);
                return None;
            }
            if !self.lanes().selects(lane) {
                bump(&self.stats.dropped_unselected, 1);
                return None;
            }
        }
        match self.admission.open(key_expr, &key.source, payload) {
            Ok(record) => {
                bump(&self.stats.accepted, 1);
                let mut lanes = self.lanes_mut();
                if lanes.note(lane, hash) {
                    set(&self.stats.sources_seen, lanes.seen() as u64);
                }
                Some((key, record))
            }
            Err(e) => {
                let counter = match e {
                    VerifyError::Decode(_) => &self.stats.rejected_decode,
                    VerifyError::Unsigned => &self.stats.rejected_unsigned,
                    VerifyError::BadSignature { .. }
                    | VerifyError::NotSelfCertified { .. }
                    | VerifyError::NotAdmitted { .. } => &self.stats.rejected_signature,
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
        let Some((key, record)) = self.accept(sample.key_expr().as_str(), &payload, true) else {
            return;
        };
        let (noted, seq) = (key.clone(), record.seq);
        match self.tx.try_send((key, record)) {
            Ok(()) => self.note(&noted, seq),
            // Not noted in the digest: the next anti-entropy round brings it back.
            Err(mpsc::error::TrySendError::Full(_)) => bump(&self.stats.dropped_overflow, 1),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Gets the sources' records at (model, fingerprint), checked, newest per source:
    /// first from this node's own lanes; while fewer than the budget's sources answered,
    /// from lanes widened once to four times that share ([`widening`]). A query thus
    /// reaches the sessions of a few lanes (and the storages), not every session.
    /// With `have`, peers skip records the querier already holds (see the module doc).
    pub(crate) async fn query(
        &self,
        session: &Session,
        model: &ModelId,
        fingerprint: &Fingerprint,
        have: Option<String>,
        timeout: Duration,
    ) -> Result<Vec<Received>, FleetError> {
        let fraction = self.lanes().fraction();
        let mut newest: HashMap<SourceId, Received> = HashMap::new();
        let mut asked: Option<LaneSet> = None;
        for (step, f) in widening(fraction).into_iter().enumerate() {
            let prefixes = select(&self.own, f, MAX_PREFIXES);
            // Prefixes whose every lane an earlier step asked are not asked again.
            let fresh: Vec<LanePrefix> = match &asked {
                None => prefixes.clone(),
                Some(done) => prefixes
                    .iter()
                    .copied()
                    .filter(|p| !LaneSet::of(&[*p]).is_subset(done))
                    .collect(),
            };
            if step > 0 {
                bump(&self.stats.widened_queries, 1);
            }
            let gets = fresh.iter().map(|p| {
                self.query_prefix(session, *p, model, fingerprint, have.as_deref(), timeout)
            });
            let mut failed = None;
            for got in join_all(gets).await {
                match got {
                    Ok(records) => {
                        for (key, record) in records {
                            if newest
                                .get(&key.source)
                                .is_none_or(|(_, held)| held.seq < record.seq)
                            {
                                newest.insert(key.source.clone(), (key, record));
                            }
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed
                && newest.is_empty()
            {
                return Err(e);
            }
            asked = Some(LaneSet::of(&prefixes));
            if newest.len() >= self.budget {
                break;
            }
        }
        for (key, record) in newest.values() {
            self.note(key, record.seq);
        }
        Ok(newest.into_values().collect())
    }

    /// One get of the records at (model, fingerprint) of the sources under `prefix`.
    async fn query_prefix(
        &self,
        session: &Session,
        prefix: LanePrefix,
        model: &ModelId,
        fingerprint: &Fingerprint,
        have: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Received>, FleetError> {
        bump(&self.stats.queries, 1);
        let mut selector = address_selector(&self.fleet, prefix, model, fingerprint);
        if let Some(have) = have {
            selector.push('?');
            selector.push_str(HAVE_PARAMETER);
            selector.push('=');
            selector.push_str(have);
        }
        let replies = session
            .get(selector)
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
        let mut out = Vec::new();
        while let Ok(reply) = replies.recv_async().await {
            match reply.result() {
                Ok(sample) => {
                    let payload = sample.payload().to_bytes();
                    if let Some(r) = self.accept(sample.key_expr().as_str(), &payload, false) {
                        out.push(r);
                    }
                }
                Err(e) => {
                    bump(&self.stats.query_errors, 1);
                    debug!(error = ?e, "fleet: error reply");
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parameter_round_trips_per_source() {
        let mut d = HashMap::new();
        d.insert(SourceId::new("robot a").unwrap(), Seq(12));
        d.insert(SourceId::new("b:c,d").unwrap(), Seq(3));
        let have = digest_parameter(&d);
        assert!(!have.contains(';') && !have.contains('='), "{have}");
        assert_eq!(seq_in_digest(&have, "robot%20a"), Some(Seq(12)));
        assert_eq!(seq_in_digest(&have, "b%3Ac%2Cd"), Some(Seq(3)));
        assert_eq!(seq_in_digest(&have, "robot"), None);
        assert_eq!(seq_in_digest("x:notanumber,:,", "x"), None);
    }

    #[test]
    fn a_full_digest_keeps_the_highest_seqs() {
        let id = |i: u64| SourceId::new(format!("s{i}")).unwrap();
        let mut d = HashMap::new();
        for i in 1..=3 {
            assert!(!note_in_digest(&mut d, &id(i), Seq(10 * i), 3));
        }
        // A known source is updated in place, never dropped.
        assert!(!note_in_digest(&mut d, &id(1), Seq(5), 3));
        assert_eq!(d[&id(1)], Seq(10));
        // Full: a new source with a lower seq than all held is left out...
        assert!(note_in_digest(&mut d, &id(4), Seq(1), 3));
        assert!(!d.contains_key(&id(4)));
        // ...one with a higher seq replaces the lowest held.
        assert!(note_in_digest(&mut d, &id(5), Seq(99), 3));
        assert_eq!(d.len(), 3);
        assert!(!d.contains_key(&id(1)) && d[&id(5)] == Seq(99));
        assert!(!note_in_digest(&mut d, &id(2), Seq(21), 3));
        assert_eq!(d[&id(2)], Seq(21));
    }
}
