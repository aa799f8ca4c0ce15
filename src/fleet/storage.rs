//! The router's record storage: the newest record per key, bounded in records and bytes,
//! in memory (its copy on disk is [`super::volume`]).
//!
//! Why not Zenoh's storage manager: its memory volume keeps any number of keys (a
//! stranger filling the router's memory), keeps the latest *sample* per key whoever sent
//! it (a forged payload at an honest robot's key replaces that robot's record for every
//! late joiner), and applies any peer's delete. Here only checked records are offered
//! ([`super::router`] checks key, signature and size first), a key's record is replaced
//! only by a higher `seq` of the same source, deletes are not applied, and the bounds
//! hold whatever the network sends.
//!
//! Eviction is a fair share, not recency: when full, the source holding the most records
//! loses its least recently updated one (among equals, the source updated last gives
//! way), and a source never holds more than
//! `max_records_per_source`. So one source's flood evicts only its own records, and an
//! honest source keeps at least `max_records / sources` of its records however many
//! others write. (Sybils, many fresh ids each with a few records, shrink that share; a
//! fleet that admits only listed keys has no Sybils.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use thiserror::Error;
use zenoh::key_expr::KeyExpr;

use super::intake::seq_in_digest;
use super::lanes::LANE_DEPTH;
use crate::core::ids::Seq;

/// Largest payload stored (a signed record of dimension 64 is under 9 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Chunks of a record key: `qis`, `v2`, fleet, the lane's digits, model, fingerprint, source.
const KEY_CHUNKS: usize = 2 + 1 + LANE_DEPTH + 3;
/// Index of the fleet, model, fingerprint and source chunks in a record key.
const FLEET: usize = 2;
const MODEL: usize = 3 + LANE_DEPTH;
const FP: usize = MODEL + 1;
const SOURCE: usize = FP + 1;

/// Bounds of the storage (all counted in its stats when they bite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageLimits {
    /// Records held at most.
    pub max_records: usize,
    /// Bytes held at most (keys plus payloads).
    pub max_bytes: u64,
    /// Records one source holds at most.
    pub max_records_per_source: usize,
    /// Replies to one query at most (a `qis/**` query must not make the router send all).
    pub max_replies: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            max_records: 1_000_000,
            max_bytes: 1 << 30,
            max_records_per_source: 100_000,
            max_replies: 10_000,
        }
    }
}

/// A limit that cannot hold.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("router storage {field}: {reason}")]
pub struct LimitError {
    /// The limit.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl StorageLimits {
    /// Checks that each limit can hold at least one record.
    pub fn validate(&self) -> Result<(), LimitError> {
        let bad = |field, reason: &str| {
            Err(LimitError {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.max_records == 0 {
            return bad("max_records", "must be at least 1");
        }
        if self.max_records_per_source == 0 {
            return bad("max_records_per_source", "must be at least 1");
        }
        if self.max_replies == 0 {
            return bad("max_replies", "must be at least 1");
        }
        // A key alone is about 80 bytes; a record needs a few hundred.
        if self.max_bytes < 4096 {
            return bad("max_bytes", "must be at least 4096");
        }
        Ok(())
    }
}

/// Why a record was not stored.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The key holds this seq or a newer one (a replay, or an old version late).
    #[error("stale: the storage holds seq {}, got {}", held.0, got.0)]
    Stale {
        /// Seq held.
        held: Seq,
        /// Seq offered.
        got: Seq,
    },
    /// Key and payload together exceed `max_bytes`.
    #[error("{len} bytes exceed the storage's {max}")]
    TooLarge {
        /// Bytes offered.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The key is not a record key (checked by the caller; never stored).
    #[error("not a record key: {0:?}")]
    NotARecordKey(String),
}

/// What storing a record did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    /// True when the key held an older record.
    pub replaced: bool,
    /// Keys evicted to make room.
    pub evicted: Vec<String>,
}

struct Entry {
    ke: KeyExpr<'static>,
    seq: Seq,
    payload: Arc<[u8]>,
    tick: u64,
    owner: String,
    address: String,
}

impl Entry {
    fn cost(&self) -> u64 {
        (self.ke.as_str().len() + self.payload.len()) as u64
    }
}

/// The records held, with what eviction and queries need: per source its records by
/// update order, the sources by record count, and the keys per address.
#[derive(Default)]
pub struct RecordStore {
    limits: StorageLimits,
    entries: HashMap<String, Entry>,
    by_address: HashMap<String, BTreeSet<String>>,
    owners: HashMap<String, BTreeMap<u64, String>>,
    sizes: BTreeSet<(usize, u64, String)>,
    bytes: u64,
    tick: u64,
}

/// One query's answer: the matching records (key, payload) and whether any was left out
/// by `max_replies`.
pub type Matches = (Vec<(KeyExpr<'static>, Arc<[u8]>)>, bool);

impl RecordStore {
    /// An empty store with these (validated) limits.
    pub fn new(limits: StorageLimits) -> RecordStore {
        RecordStore {
            limits,
            ..RecordStore::default()
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (keys plus payloads).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sources holding at least one record.
    pub fn sources(&self) -> usize {
        self.owners.len()
    }

    /// The seq held at `key`, if any.
    pub fn seq_at(&self, key: &str) -> Option<Seq> {
        self.entries.get(key).map(|e| e.seq)
    }

    /// Stores `payload` (a checked record of `seq`) at `key`, a record key whose lane the
    /// caller has checked; evicts as the limits require (module doc).
    pub fn offer(&mut self, key: &str, seq: Seq, payload: &[u8]) -> Result<Stored, Refusal> {
        let chunks: Vec<&str> = key.split('/').collect();
        if chunks.len() != KEY_CHUNKS {
            return Err(Refusal::NotARecordKey(key.to_owned()));
        }
        let cost = (key.len() + payload.len()) as u64;
        if cost > self.limits.max_bytes {
            return Err(Refusal::TooLarge {
                len: cost,
                max: self.limits.max_bytes,
            });
        }
        let ke = KeyExpr::try_from(key.to_owned())
            .map_err(|_| Refusal::NotARecordKey(key.to_owned()))?;
        let mut stored = Stored::default();
        if let Some(held) = self.entries.get(key) {
            if held.seq >= seq {
                return Err(Refusal::Stale {
                    held: held.seq,
                    got: seq,
                });
            }
            // Out first, so that making room cannot evict the key being updated.
            self.remove(key);
            stored.replaced = true;
        }
        let owner = format!("{}/{}", chunks[FLEET], chunks[SOURCE]);
        let address = format!("{}/{}/{}", chunks[FLEET], chunks[MODEL], chunks[FP]);
        while self
            .owners
            .get(&owner)
            .is_some_and(|r| r.len() >= self.limits.max_records_per_source)
        {
            match self.oldest_of(&owner) {
                Some(victim) => {
                    self.remove(&victim);
                    stored.evicted.push(victim);
                }
                None => break,
            }
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= self.limits.max_records
                || self.bytes + cost > self.limits.max_bytes)
        {
            let Some(victim) = self.largest_owner().and_then(|o| self.oldest_of(&o)) else {
                break;
            };
            self.remove(&victim);
            stored.evicted.push(victim);
        }
        self.tick += 1;
        let entry = Entry {
            ke,
            seq,
            payload: payload.into(),
            tick: self.tick,
            owner,
            address,
        };
        self.insert(key.to_owned(), entry);
        Ok(stored)
    }

    /// The records matching `selector`, skipping those the querier's `have` digest
    /// (`<escaped source>:<seq>,…`) shows it holds; at most `max_replies`.
    pub fn query(&self, selector: &KeyExpr<'_>, have: Option<&str>) -> Matches {
        let wanted = |e: &&Entry| {
            selector.intersects(&e.ke)
                && have
                    .and_then(|h| seq_in_digest(h, source_chunk(e.ke.as_str())))
                    .is_none_or(|held| held < e.seq)
        };
        let max = self.limits.max_replies;
        let mut out = Vec::new();
        let mut truncated = false;
        let mut push = |e: &Entry| {
            if out.len() == max {
                truncated = true;
                return false;
            }
            out.push((e.ke.clone(), e.payload.clone()));
            true
        };
        match literal_address(selector.as_str()) {
            // A node's query names one address: only its keys are looked at.
            Some(address) => {
                for key in self.by_address.get(&address).into_iter().flatten() {
                    if let Some(e) = self.entries.get(key).filter(wanted)
                        && !push(e)
                    {
                        break;
                    }
                }
            }
            None => {
                for e in self.entries.values().filter(wanted) {
                    if !push(e) {
                        break;
                    }
                }
            }
        }
        (out, truncated)
    }

    fn insert(&mut self, key: String, entry: Entry) {
        self.bytes += entry.cost();
        self.by_address
            .entry(entry.address.clone())
            .or_default()
            .insert(key.clone());
        self.unrank(&entry.owner);
        self.owners
            .entry(entry.owner.clone())
            .or_default()
            .insert(entry.tick, key.clone());
        self.rank(&entry.owner);
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &str) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.bytes -= entry.cost();
        if let Some(keys) = self.by_address.get_mut(&entry.address) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_address.remove(&entry.address);
            }
        }
        self.unrank(&entry.owner);
        if let Some(records) = self.owners.get_mut(&entry.owner) {
            records.remove(&entry.tick);
            if records.is_empty() {
                self.owners.remove(&entry.owner);
            }
        }
        self.rank(&entry.owner);
    }

    /// An owner's place in `sizes`: its record count, then its newest update.
    fn place(&self, owner: &str) -> Option<(usize, u64, String)> {
        let records = self.owners.get(owner)?;
        let newest = records.last_key_value().map_or(0, |(t, _)| *t);
        Some((records.len(), newest, owner.to_owned()))
    }

    fn unrank(&mut self, owner: &str) {
        if let Some(p) = self.place(owner) {
            self.sizes.remove(&p);
        }
    }

    fn rank(&mut self, owner: &str) {
        if let Some(p) = self.place(owner) {
            self.sizes.insert(p);
        }
    }

    /// The source that gives way: the one holding the most records; among equals, the
    /// one updated most recently, so a wave of newcomers churns among itself rather than
    /// through the sources the storage has held longest.
    fn largest_owner(&self) -> Option<String> {
        self.sizes.last().map(|(_, _, o)| o.clone())
    }

    fn oldest_of(&self, owner: &str) -> Option<String> {
        self.owners
            .get(owner)
            .and_then(|r| r.first_key_value())
            .map(|(_, k)| k.clone())
    }
}

/// The source chunk of a record key (its last chunk).
fn source_chunk(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// `fleet/model/fp` when `selector` has a record key's shape with those three chunks
/// literal (no wildcard), else `None`.
fn literal_address(selector: &str) -> Option<String> {
    let chunks: Vec<&str> = selector.split('/').collect();
    if chunks.len() != KEY_CHUNKS {
        return None;
    }
    let literal = |c: &str| !c.contains(['*', '$']);
    [chunks[FLEET], chunks[MODEL], chunks[FP]]
        .into_iter()
        .all(literal)
        .then(|| format!("{}/{}/{}", chunks[FLEET], chunks[MODEL], chunks[FP]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, SourceId};
    use crate::fleet::keys::{address_selector, record_key};
    use crate::fleet::lanes::LanePrefix;

    fn key(source: &str, fp: u8) -> String {
        record_key(
            &FleetName::new("f").unwrap(),
            &RecordKey {
                model: ModelId::new("m/v1").unwrap(),
                fingerprint: Fingerprint([fp; 16]),
                source: SourceId::new(source).unwrap(),
            },
        )
    }

    fn limits(max_records: usize, per_source: usize) -> StorageLimits {
        StorageLimits {
            max_records,
            max_records_per_source: per_source,
            ..StorageLimits::default()
        }
    }

    fn address(fp: u8) -> KeyExpr<'static> {
        KeyExpr::try_from(address_selector(
            &FleetName::new("f").unwrap(),
            LanePrefix::ALL,
            &ModelId::new("m/v1").unwrap(),
            &Fingerprint([fp; 16]),
        ))
        .unwrap()
    }

    #[test]
    fn a_key_takes_only_a_newer_seq() {
        let mut s = RecordStore::new(StorageLimits::default());
        let k = key("a", 1);
        assert!(!s.offer(&k, Seq(5), b"v5").unwrap().replaced);
        assert_eq!(
            s.offer(&k, Seq(5), b"forged"),
            Err(Refusal::Stale {
                held: Seq(5),
                got: Seq(5)
            })
        );
        assert!(matches!(
            s.offer(&k, Seq(4), b"old"),
            Err(Refusal::Stale { .. })
        ));
        assert!(s.offer(&k, Seq(6), b"v6").unwrap().replaced);
        let (got, _) = s.query(&address(1), None);
        assert_eq!(got.len(), 1);
        assert_eq!(&*got[0].1, b"v6");
        assert_eq!(s.bytes(), (k.len() + 2) as u64);
    }

    #[test]
    fn a_flooding_source_evicts_only_its_own_records() {
        let mut s = RecordStore::new(limits(10, 1000));
        for fp in 0..4 {
            s.offer(&key("honest", fp), Seq(1), b"h").unwrap();
        }
        for fp in 0..200u8 {
            let stored = s.offer(&key("flood", fp), Seq(1), b"x").unwrap();
            assert!(stored.evicted.iter().all(|k| k.ends_with("/flood")));
        }
        assert_eq!(s.len(), 10);
        for fp in 0..4 {
            assert_eq!(s.seq_at(&key("honest", fp)), Some(Seq(1)));
        }
        // The flood keeps its most recent records.
        assert!(s.seq_at(&key("flood", 199)).is_some());
        assert!(s.seq_at(&key("flood", 0)).is_none());
    }

    #[test]
    fn many_sources_share_the_room_fairly_and_the_bounds_hold() {
        let mut s = RecordStore::new(limits(100, 1000));
        for fp in 0..60 {
            s.offer(&key("old-timer", fp), Seq(1), b"o").unwrap();
        }
        for i in 0..300 {
            s.offer(&key(&format!("s{i}"), 7), Seq(1), b"n").unwrap();
            assert!(s.len() <= 100);
        }
        // 300 one-record sources arrived: the big source gave way first.
        assert_eq!(s.len(), 100);
        assert!(s.owners.values().all(|r| r.len() <= 1));
        assert_eq!(s.sources(), 100);
    }

    #[test]
    fn the_per_source_bound_and_the_byte_bound_hold() {
        let mut s = RecordStore::new(limits(1000, 3));
        for fp in 0..10 {
            s.offer(&key("a", fp), Seq(1), b"p").unwrap();
        }
        assert_eq!(s.len(), 3);
        assert!(s.seq_at(&key("a", 9)).is_some());
        let k = key("b", 0);
        let payload = vec![0u8; 1500];
        let cost = (k.len() + payload.len()) as u64;
        let mut s = RecordStore::new(StorageLimits {
            max_bytes: 3 * cost + 10,
            ..StorageLimits::default()
        });
        for fp in 0..10 {
            s.offer(&key("b", fp), Seq(1), &payload).unwrap();
            assert!(s.bytes() <= 3 * cost + 10);
        }
        assert_eq!(s.len(), 3);
        assert!(matches!(
            s.offer(&k, Seq(9), &vec![0u8; 5000]),
            Err(Refusal::TooLarge { .. })
        ));
    }

    #[test]
    fn queries_see_their_address_skip_what_the_querier_has_and_are_capped() {
        let mut s = RecordStore::new(StorageLimits {
            max_replies: 3,
            ..StorageLimits::default()
        });
        for i in 0..5 {
            s.offer(&key(&format!("s{i}"), 1), Seq(10), b"r").unwrap();
        }
        s.offer(&key("s0", 2), Seq(1), b"other address").unwrap();
        let (got, truncated) = s.query(&address(1), None);
        assert_eq!((got.len(), truncated), (3, true));
        let (got, truncated) = s.query(&address(1), Some("s0:10,s1:9,s2:10,s3:10"));
        assert!(!truncated);
        let sources: Vec<&str> = got.iter().map(|(k, _)| source_chunk(k.as_str())).collect();
        assert_eq!(sources.len(), 2);
        assert!(sources.contains(&"s1") && sources.contains(&"s4"));
        // A wide selector is answered by a scan.
        let all = KeyExpr::try_from("qis/**").unwrap();
        assert_eq!(s.query(&all, None).0.len(), 3);
        let (one, _) = s.query(&KeyExpr::try_from(key("s0", 2)).unwrap(), None);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn limits_that_cannot_hold_a_record_are_refused() {
        assert!(StorageLimits::default().validate().is_ok());
        for bad in [
            limits(0, 1),
            limits(1, 0),
            StorageLimits {
                max_bytes: 10,
                ..StorageLimits::default()
            },
            StorageLimits {
                max_replies: 0,
                ..StorageLimits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
