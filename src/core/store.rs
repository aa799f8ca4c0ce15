//! The embedded persistent store (redb): this robot's own records and the records
//! received from the fleet, one latest record per (model, fingerprint, source).
//!
//! Own records are committed with immediate durability before `put_own` returns, so a
//! record is on disk before anyone can publish it. Received records are bounded: past
//! `max_received_records` the least recently used are evicted (own records never are).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

use super::ids::{FINGERPRINT_LEN, Fingerprint, ModelId, RecordKey, SourceId};
use super::record::{EncodeError, OutcomeRecord, decode};

/// Own records: key → encoded record.
const OWN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("own_records_v1");
/// Received records: key → (last-use tick, encoded record).
const RECEIVED: TableDefinition<&[u8], (u64, &[u8])> = TableDefinition::new("received_records_v1");

/// Default bound on received records kept on disk.
pub const DEFAULT_MAX_RECEIVED_RECORDS: usize = 100_000;

/// Store settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most received records kept; least recently used are evicted beyond it.
    pub max_received_records: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_received_records: DEFAULT_MAX_RECEIVED_RECORDS,
        }
    }
}

impl StoreConfig {
    /// Checks the settings, naming the bad field.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.max_received_records == 0 {
            return Err(StoreError::Config(
                "max_received_records must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused an operation (I/O, corruption, lock held by another process).
    #[error("store database: {0}")]
    Database(#[from] redb::Error),
    /// A record could not be encoded.
    #[error("store encode: {0}")]
    Encode(#[from] EncodeError),
    /// The configuration is invalid.
    #[error("store config: {0}")]
    Config(String),
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Database(e.into())
}

/// A record read back from the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    /// Where it lives.
    pub key: RecordKey,
    /// The record.
    pub record: OutcomeRecord,
    /// Whether it is one of this robot's own records.
    pub own: bool,
}

/// Key bytes: u16 BE model length, model, fingerprint, source. The length prefix keeps
/// every (model, fingerprint) a contiguous, prefix-free range.
fn key_bytes(key: &RecordKey) -> Vec<u8> {
    let model = key.model.as_str().as_bytes();
    let source = key.source.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + model.len() + FINGERPRINT_LEN + source.len());
    // Names are at most MAX_NAME_LEN (256) bytes, so the length fits in u16.
    out.extend_from_slice(&(model.len() as u16).to_be_bytes());
    out.extend_from_slice(model);
    out.extend_from_slice(&key.fingerprint.0);
    out.extend_from_slice(source);
    out
}

fn parse_key(bytes: &[u8]) -> Option<RecordKey> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let model = std::str::from_utf8(rest.get(..len)?).ok()?;
    let rest = rest.get(len..)?;
    let (fp, source) = rest.split_first_chunk::<FINGERPRINT_LEN>()?;
    Some(RecordKey {
        model: ModelId::new(model).ok()?,
        fingerprint: Fingerprint(*fp),
        source: SourceId::new(std::str::from_utf8(source).ok()?).ok()?,
    })
}

/// The embedded store of one robot.
pub struct Store {
    db: Database,
    config: StoreConfig,
    /// Last-use tick per received key and its inverse (eviction order), kept in memory so
    /// a touch costs no I/O; ticks reach disk when a record is written.
    received_ticks: HashMap<Vec<u8>, u64>,
    lru: BTreeMap<u64, Vec<u8>>,
    /// Keys touched since their tick last reached disk.
    touched: HashSet<Vec<u8>>,
    tick: u64,
    own_len: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("own", &self.own_len)
            .field("received", &self.received_ticks.len())
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let db = Database::create(path.as_ref()).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(OWN).map_err(db_err)?;
        txn.open_table(RECEIVED).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let mut store = Store {
            db,
            config,
            received_ticks: HashMap::new(),
            lru: BTreeMap::new(),
            touched: HashSet::new(),
            tick: 0,
            own_len: 0,
        };
        let read = store.db.begin_read().map_err(db_err)?;
        store.own_len = read
            .open_table(OWN)
            .map_err(db_err)?
            .len()
            .map_err(db_err)? as usize;
        let received = read.open_table(RECEIVED).map_err(db_err)?;
        for entry in received.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let tick = v.value().0;
            store.tick = store.tick.max(tick);
            store.received_ticks.insert(k.value().to_vec(), tick);
        }
        drop(received);
        drop(read);
        // Ties (equal persisted ticks) are re-numbered so the order map stays a bijection.
        let mut order: Vec<(u64, Vec<u8>)> = store
            .received_ticks
            .iter()
            .map(|(k, t)| (*t, k.clone()))
            .collect();
        order.sort();
        store.received_ticks.clear();
        for (i, (_, k)) in order.into_iter().enumerate() {
            let t = i as u64 + 1;
            store.received_ticks.insert(k.clone(), t);
            store.lru.insert(t, k);
        }
        store.tick = store.received_ticks.len() as u64;
        Ok(store)
    }

    /// Writes one of this robot's own records durably (fsync'd before returning). A record
    /// older than or equal to the stored one is ignored and `false` returned.
    pub fn put_own(&mut self, key: &RecordKey, record: &OutcomeRecord) -> Result<bool, StoreError> {
        Ok(self.put_own_batch(std::slice::from_ref(&(key.clone(), record.clone())))? == 1)
    }

    /// Writes own records in one durable transaction (one fsync for the batch); records
    /// not newer than the stored ones are skipped. Returns how many were written.
    pub fn put_own_batch(
        &mut self,
        records: &[(RecordKey, OutcomeRecord)],
    ) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut written = 0;
        {
            let mut table = txn.open_table(OWN).map_err(db_err)?;
            for (key, record) in records {
                let k = key_bytes(key);
                let stored_seq = match table.get(k.as_slice()).map_err(db_err)? {
                    Some(v) => decode(v.value()).ok().map(|d| d.record.seq),
                    None => None,
                };
                if stored_seq.is_some_and(|s| s >= record.seq) {
                    continue;
                }
                let bytes = record.encode()?;
                if table
                    .insert(k.as_slice(), bytes.as_slice())
                    .map_err(db_err)?
                    .is_none()
                {
                    self.own_len += 1;
                }
                written += 1;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(written)
    }

    /// Writes received records in one transaction, keeping per key only a newer sequence
    /// number; returns how many were written. Evicts least recently used received records
    /// beyond the configured bound.
    pub fn put_received(
        &mut self,
        records: &[(RecordKey, OutcomeRecord)],
    ) -> Result<usize, StoreError> {
        let mut written = 0;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RECEIVED).map_err(db_err)?;
            for (key, record) in records {
                let k = key_bytes(key);
                let stored_seq = match table.get(k.as_slice()).map_err(db_err)? {
                    Some(v) => decode(v.value().1).ok().map(|d| d.record.seq),
                    None => None,
                };
                if stored_seq.is_some_and(|s| s >= record.seq) {
                    continue;
                }
                let bytes = record.encode()?;
                self.tick += 1;
                if let Some(old) = self.received_ticks.insert(k.clone(), self.tick) {
                    self.lru.remove(&old);
                }
                self.lru.insert(self.tick, k.clone());
                table
                    .insert(k.as_slice(), (self.tick, bytes.as_slice()))
                    .map_err(db_err)?;
                written += 1;
            }
            self.write_touched(&mut table)?;
            while self.received_ticks.len() > self.config.max_received_records {
                let Some((_, k)) = self.lru.pop_first() else {
                    break;
                };
                self.received_ticks.remove(&k);
                table.remove(k.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(written)
    }

    /// Marks received records as used. In memory only (no I/O on the prediction path);
    /// the new order reaches disk with the next write or [`Store::flush`].
    pub fn touch(&mut self, keys: &[RecordKey]) {
        for key in keys {
            let k = key_bytes(key);
            if let Some(t) = self.received_ticks.get_mut(&k) {
                self.lru.remove(t);
                self.tick += 1;
                *t = self.tick;
                self.lru.insert(self.tick, k.clone());
                self.touched.insert(k);
            }
        }
    }

    /// Persists the use order of touched records (call at shutdown).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RECEIVED).map_err(db_err)?;
            self.write_touched(&mut table)?;
        }
        txn.commit().map_err(db_err)
    }

    fn write_touched(
        &mut self,
        table: &mut redb::Table<'_, &'static [u8], (u64, &'static [u8])>,
    ) -> Result<(), StoreError> {
        for k in std::mem::take(&mut self.touched) {
            let Some(&tick) = self.received_ticks.get(&k) else {
                continue;
            };
            let bytes = match table.get(k.as_slice()).map_err(db_err)? {
                Some(v) => v.value().1.to_vec(),
                None => continue,
            };
            table
                .insert(k.as_slice(), (tick, bytes.as_slice()))
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Number of own records.
    pub fn own_len(&self) -> usize {
        self.own_len
    }

    /// Number of received records.
    pub fn received_len(&self) -> usize {
        self.received_ticks.len()
    }

    /// Reads every record back (at start-up). Entries that no longer decode are logged and
    /// skipped rather than failing the whole load.
    pub fn load(&self) -> Result<Vec<StoredRecord>, StoreError> {
        let read = self.db.begin_read().map_err(db_err)?;
        let mut out = Vec::with_capacity(self.own_len + self.received_ticks.len());
        let own = read.open_table(OWN).map_err(db_err)?;
        for entry in own.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            push_decoded(&mut out, k.value(), v.value(), true);
        }
        let received = read.open_table(RECEIVED).map_err(db_err)?;
        for entry in received.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            push_decoded(&mut out, k.value(), v.value().1, false);
        }
        Ok(out)
    }

    /// The own record stored under `key`, if any.
    pub fn own(&self, key: &RecordKey) -> Result<Option<OutcomeRecord>, StoreError> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(OWN).map_err(db_err)?;
        let found = table.get(key_bytes(key).as_slice()).map_err(db_err)?;
        Ok(found.and_then(|v| decode(v.value()).ok().map(|d| d.record)))
    }
}

fn push_decoded(out: &mut Vec<StoredRecord>, k: &[u8], v: &[u8], own: bool) {
    let Some(key) = parse_key(k) else {
        warn!(own, "store: skipping entry with an unreadable key");
        return;
    };
    match decode(v) {
        Ok(d) => out.push(StoredRecord {
            key,
            record: d.record,
            own,
        }),
        Err(e) => {
            warn!(own, fingerprint = %key.fingerprint.to_hex(), error = %e, "store: skipping undecodable record")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Seq;
    use crate::core::neighbors::Sketch;
    use crate::core::summary::Summary;

    fn key(fp: u8, source: &str) -> RecordKey {
        RecordKey {
            model: ModelId::new("wm/v1").unwrap(),
            fingerprint: Fingerprint([fp; FINGERPRINT_LEN]),
            source: SourceId::new(source).unwrap(),
        }
    }

    fn record(seq: u64, value: f64) -> OutcomeRecord {
        OutcomeRecord {
            seq: Seq(seq),
            sketch: Sketch([1; 32]),
            summary: Summary::from_sample(&[value, -value], 1_000).unwrap(),
            time_base: Default::default(),
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qis.redb");
        {
            let mut s = Store::open(&path, StoreConfig::default()).unwrap();
            assert!(s.put_own(&key(1, "me"), &record(1, 1.0)).unwrap());
            assert!(s.put_own(&key(1, "me"), &record(2, 2.0)).unwrap());
            assert!(!s.put_own(&key(1, "me"), &record(2, 3.0)).unwrap());
            assert_eq!(s.put_received(&[(key(1, "a"), record(4, 4.0))]).unwrap(), 1);
        }
        let s = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!((s.own_len(), s.received_len()), (1, 1));
        let mut all = s.load().unwrap();
        all.sort_by_key(|r| !r.own);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].key, key(1, "me"));
        assert_eq!(all[0].record, record(2, 2.0));
        assert!(all[0].own);
        assert_eq!(all[1].record, record(4, 4.0));
        assert_eq!(s.own(&key(1, "me")).unwrap(), Some(record(2, 2.0)));
    }

    #[test]
    fn own_batch_is_one_durable_write_keeping_newer_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.redb");
        let mut s = Store::open(&path, StoreConfig::default()).unwrap();
        let batch = [
            (key(1, "me"), record(3, 1.0)),
            (key(2, "me"), record(1, 2.0)),
            (key(1, "me"), record(2, 9.0)),
        ];
        assert_eq!(s.put_own_batch(&batch).unwrap(), 2);
        drop(s);
        let s = Store::open(&path, StoreConfig::default()).unwrap();
        assert_eq!(s.own(&key(1, "me")).unwrap(), Some(record(3, 1.0)));
        assert_eq!(s.own_len(), 2);
    }

    #[test]
    fn received_keeps_newer_sequence_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path().join("s.redb"), StoreConfig::default()).unwrap();
        assert_eq!(s.put_received(&[(key(2, "a"), record(5, 5.0))]).unwrap(), 1);
        assert_eq!(s.put_received(&[(key(2, "a"), record(5, 9.0))]).unwrap(), 0);
        assert_eq!(s.put_received(&[(key(2, "a"), record(3, 9.0))]).unwrap(), 0);
        assert_eq!(s.put_received(&[(key(2, "a"), record(6, 6.0))]).unwrap(), 1);
        let all = s.load().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].record, record(6, 6.0));
    }

    #[test]
    fn eviction_drops_least_recently_used_received_never_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let config = StoreConfig {
            max_received_records: 3,
        };
        let mut s = Store::open(&path, config.clone()).unwrap();
        for fp in 0..5 {
            s.put_own(&key(fp, "me"), &record(1, 1.0)).unwrap();
        }
        for (fp, src) in [(1, "a"), (2, "b"), (3, "c")] {
            s.put_received(&[(key(fp, src), record(1, 1.0))]).unwrap();
        }
        s.touch(&[key(1, "a")]);
        s.put_received(&[(key(4, "d"), record(1, 1.0))]).unwrap();
        let held = |s: &Store| {
            let mut v: Vec<String> = s
                .load()
                .unwrap()
                .into_iter()
                .filter(|r| !r.own)
                .map(|r| r.key.source.as_str().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(held(&s), ["a", "c", "d"]);
        assert_eq!(s.own_len(), 5);
        drop(s);
        // The order survives a restart: "c" is now the oldest and goes first.
        let mut s = Store::open(&path, config).unwrap();
        s.put_received(&[(key(5, "e"), record(1, 1.0))]).unwrap();
        assert_eq!(held(&s), ["a", "d", "e"]);
        assert_eq!(s.own_len(), 5);
    }

    #[test]
    fn keys_round_trip() {
        let k = key(7, "robot/7");
        assert_eq!(parse_key(&key_bytes(&k)), Some(k));
        assert_eq!(parse_key(&[0, 9, b'x']), None);
    }

    #[test]
    fn invalid_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = StoreConfig {
            max_received_records: 0,
        };
        assert!(matches!(
            Store::open(dir.path().join("s.redb"), bad),
            Err(StoreError::Config(_))
        ));
    }
}
