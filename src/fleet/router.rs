//! A Zenoh router holding every qis record in its own bounded storage, so a robot that
//! joins after another has gone offline still receives its records.
//!
//! Zenoh's engine routes; the storage ([`super::storage`]) is ours: the router's own
//! session subscribes to the record key space and answers queries on it. Why not
//! Zenoh's storage manager: see the module doc of [`super::storage`] (no bound, any
//! sample replaces a key's record, any peer's delete applies). What reaches the storage
//! is checked first, cheapest check first: key shape and lane, payload size, seq against
//! the one held (a replay costs no signature check), then the signature and admission.
//! Refusals and evictions are counted in [`RouterStats`].
//!
//! The router is started through Zenoh's runtime API (`zenoh::internal`) so that the
//! storage holds its volume's records and listens before the router accepts a link
//! (FACTS.md, "Zenoh for scale-out").

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;

use serde::Serialize;
use thiserror::Error;
use tracing::{debug, info, warn};
use zenoh::internal::runtime::{Runtime, RuntimeBuilder};
use zenoh::pubsub::Subscriber;
use zenoh::query::{Query, Queryable};
use zenoh::sample::{Sample, SampleKind};
use zenoh::{Session, Wait};

use super::intake::HAVE_PARAMETER;
use super::keys::{RECORD_KEY_SPACE, fleet_record_space, parse_any_record_key};
use super::signing::Admission;
use super::storage::{LimitError, MAX_PAYLOAD, RecordStore, Refusal, StorageLimits, Stored};
use super::volume::{Volume, VolumeError};
use crate::core::ids::{FleetName, Seq};
use crate::core::record::decode;

/// The embedded router config (config/zenoh-router.json5).
pub const DEFAULT_ROUTER_CONFIG: &str = include_str!("../../config/zenoh-router.json5");

/// Samples and queries waiting for the storage's threads at most.
const CHANNEL: usize = 16 * 1024;

/// Why the router could not be configured or started.
#[derive(Debug, Error)]
pub enum RouterError {
    /// The config was refused (names the config key).
    #[error("router config {key}: {reason}")]
    Config {
        /// The Zenoh config key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A storage limit cannot hold.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// The persistent volume failed to open.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A storage thread could not be started.
    #[error("router storage thread: {0}")]
    Thread(String),
    /// Zenoh failed to build, start or close the router.
    #[error("router {stage}: {reason}")]
    Zenoh {
        /// What was being done.
        stage: &'static str,
        /// Zenoh's message.
        reason: String,
    },
}

/// The router config: `file` (Zenoh JSON5) or the embedded default, with the listen
/// endpoints replaced when `listen` is non-empty. Forces router mode and timestamping,
/// and refuses a `plugins/storage-manager` section (the storage is built in, set by
/// [`RouterSettings`]).
pub fn router_config(
    file: Option<&std::path::Path>,
    listen: &[String],
) -> Result<zenoh::Config, RouterError> {
    let cfg_err = |key, e: &dyn std::fmt::Display| RouterError::Config {
        key,
        reason: e.to_string(),
    };
    let mut cfg = match file {
        Some(p) => zenoh::Config::from_file(p).map_err(|e| cfg_err("file", &e))?,
        None => {
            zenoh::Config::from_json5(DEFAULT_ROUTER_CONFIG).map_err(|e| cfg_err("file", &e))?
        }
    };
    cfg.insert_json5("mode", "\"router\"")
        .map_err(|e| cfg_err("mode", &e))?;
    cfg.insert_json5(
        "timestamping",
        "{ enabled: { router: true, peer: true, client: true } }",
    )
    .map_err(|e| cfg_err("timestamping", &e))?;
    if !listen.is_empty() {
        let eps = serde_json::to_string(listen).map_err(|e| cfg_err("listen/endpoints", &e))?;
        cfg.insert_json5("listen/endpoints", &eps)
            .map_err(|e| cfg_err("listen/endpoints", &e))?;
    }
    let plugin = cfg
        .get_json("plugins/storage-manager")
        .unwrap_or_else(|_| "null".into());
    if plugin != "null" && !plugin.is_empty() {
        return Err(RouterError::Config {
            key: "plugins/storage-manager",
            reason: "the record storage is built into qis-fleet router (bounded, checked); \
                     remove this section and set the storage with --fleet, --volume and \
                     --max-records"
                .into(),
        });
    }
    Ok(cfg)
}

/// What the router's storage keeps and from whom.
#[derive(Clone, Debug, Default)]
pub struct RouterSettings {
    /// Bounds of the storage.
    pub limits: StorageLimits,
    /// Who may write records (default: self-certified signed records from any key;
    /// [`Admission::Unsigned`] is the explicit opt-out for unsigned fleets).
    pub admission: Admission,
    /// Store only this fleet's records (default: every fleet's).
    pub fleet: Option<FleetName>,
    /// Persistent volume (a redb file, created when missing); none = memory only.
    pub volume: Option<PathBuf>,
}

/// The storage's counters, shared with its threads.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Records held now.
    pub records: AtomicU64,
    /// Bytes held now (keys plus payloads).
    pub bytes: AtomicU64,
    /// Sources holding a record now.
    pub sources: AtomicU64,
    /// Records stored at a key that held none.
    pub stored: AtomicU64,
    /// Records that replaced an older seq at their key.
    pub replaced: AtomicU64,
    /// Records evicted by the bounds.
    pub evicted: AtomicU64,
    /// Samples refused: not a record key (shape, escape, lane, another fleet).
    pub refused_key: AtomicU64,
    /// Samples refused: payload or record larger than the bounds.
    pub refused_size: AtomicU64,
    /// Samples refused: not a decodable record, unsigned, bad signature or not admitted.
    pub refused_record: AtomicU64,
    /// Samples refused: the key holds this seq or a newer one (replays).
    pub refused_stale: AtomicU64,
    /// Deletes received and not applied.
    pub deletes_ignored: AtomicU64,
    /// Queries answered.
    pub queries: AtomicU64,
    /// Queries whose answer `max_replies` cut short.
    pub queries_truncated: AtomicU64,
    /// Queries dropped because the storage was too far behind.
    pub queries_dropped: AtomicU64,
    /// Replies sent.
    pub replies: AtomicU64,
    /// Records taken back from the volume at start.
    pub restored: AtomicU64,
    /// Records of the volume not taken back (unreadable, or no longer admitted).
    pub restore_refused: AtomicU64,
}

/// The counters at one moment, as printed by `qis-fleet router`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouterStatsSnapshot {
    /// Records held.
    pub records: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Sources holding a record.
    pub sources: u64,
    /// Stored at a new key.
    pub stored: u64,
    /// Replaced an older seq.
    pub replaced: u64,
    /// Evicted by the bounds.
    pub evicted: u64,
    /// Refused: not a record key.
    pub refused_key: u64,
    /// Refused: too large.
    pub refused_size: u64,
    /// Refused: record, signature or admission.
    pub refused_record: u64,
    /// Refused: stale seq.
    pub refused_stale: u64,
    /// Deletes not applied.
    pub deletes_ignored: u64,
    /// Queries answered.
    pub queries: u64,
    /// Queries cut short.
    pub queries_truncated: u64,
    /// Queries dropped.
    pub queries_dropped: u64,
    /// Replies sent.
    pub replies: u64,
    /// Restored from the volume.
    pub restored: u64,
    /// Not restored from the volume.
    pub restore_refused: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl RouterStats {
    /// The counters now.
    pub fn snapshot(&self) -> RouterStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouterStatsSnapshot {
            records: g(&self.records),
            bytes: g(&self.bytes),
            sources: g(&self.sources),
            stored: g(&self.stored),
            replaced: g(&self.replaced),
            evicted: g(&self.evicted),
            refused_key: g(&self.refused_key),
            refused_size: g(&self.refused_size),
            refused_record: g(&self.refused_record),
            refused_stale: g(&self.refused_stale),
            deletes_ignored: g(&self.deletes_ignored),
            queries: g(&self.queries),
            queries_truncated: g(&self.queries_truncated),
            queries_dropped: g(&self.queries_dropped),
            replies: g(&self.replies),
            restored: g(&self.restored),
            restore_refused: g(&self.restore_refused),
        }
    }
}

/// The storage and what its threads share.
struct Storage {
    store: Mutex<RecordStore>,
    admission: Admission,
    stats: Arc<RouterStats>,
    volume: Option<Volume>,
}

impl Storage {
    fn store(&self) -> MutexGuard<'_, RecordStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers a checked record (key, seq, payload) to the store and applies what it did
    /// to the gauges and, unless the record comes from it (`restoring`), to the volume.
    fn keep(
        &self,
        key: &str,
        seq: Seq,
        payload: &[u8],
        restoring: bool,
    ) -> Result<Stored, Refusal> {
        let result = {
            let mut store = self.store();
            let result = store.offer(key, seq, payload);
            let s = &self.stats;
            s.records.store(store.len() as u64, Ordering::Relaxed);
            s.bytes.store(store.bytes(), Ordering::Relaxed);
            s.sources.store(store.sources() as u64, Ordering::Relaxed);
            result
        };
        let stored = result?;
        self.stats
            .evicted
            .fetch_add(stored.evicted.len() as u64, Ordering::Relaxed);
        if let Some(v) = &self.volume {
            if !restoring {
                v.put(key.to_owned(), payload.to_vec());
            }
            for victim in &stored.evicted {
                v.delete(victim.clone());
            }
        }
        Ok(stored)
    }

    /// Checks one sample from the network and keeps it if it passes (module doc).
    fn intake(&self, sample: &Sample) {
        if sample.kind() == SampleKind::Delete {
            bump(&self.stats.deletes_ignored);
            return;
        }
        let key = sample.key_expr().as_str();
        let payload = sample.payload().to_bytes();
        if payload.len() > MAX_PAYLOAD {
            bump(&self.stats.refused_size);
            return;
        }
        let Ok((_, record_key)) = parse_any_record_key(key) else {
            bump(&self.stats.refused_key);
            return;
        };
        let Ok(decoded) = decode(&payload) else {
            bump(&self.stats.refused_record);
            return;
        };
        if self
            .store()
            .seq_at(key)
            .is_some_and(|held| held >= decoded.record.seq)
        {
            bump(&self.stats.refused_stale);
            return;
        }
        let record = match self
            .admission
            .open_decoded(key, &record_key.source, &payload, decoded)
        {
            Ok(record) => record,
            Err(e) => {
                bump(&self.stats.refused_record);
                debug!(key, error = %e, "router storage: refused record");
                return;
            }
        };
        bump(match self.keep(key, record.seq, &payload, false) {
            Ok(stored) if stored.replaced => &self.stats.replaced,
            Ok(_) => &self.stats.stored,
            Err(Refusal::Stale { .. }) => &self.stats.refused_stale,
            Err(Refusal::TooLarge { .. }) => &self.stats.refused_size,
            Err(Refusal::NotARecordKey(_)) => &self.stats.refused_key,
        });
    }

    /// Takes back the volume's records, within the bounds: their signatures were
    /// checked when they were stored, so only the key, the record's shape and the
    /// admission list are checked again. A record not taken back leaves the file.
    fn restore(&self, stored: Vec<super::volume::StoredRecord>) {
        for (key, payload) in stored {
            let seq = parse_any_record_key(&key)
                .ok()
                .filter(|(_, k)| self.admission.admits(&k.source))
                .and_then(|_| decode(&payload).ok())
                .map(|d| d.record.seq);
            let kept = seq.is_some_and(|seq| self.keep(&key, seq, &payload, true).is_ok());
            if kept {
                bump(&self.stats.restored);
            } else {
                bump(&self.stats.restore_refused);
                if let Some(v) = &self.volume {
                    v.delete(key);
                }
            }
        }
    }

    /// Answers one query from the store.
    fn answer(&self, query: &Query) {
        let have = query.parameters().get(HAVE_PARAMETER);
        let (matches, truncated) = self.store().query(query.key_expr(), have);
        bump(&self.stats.queries);
        if truncated {
            bump(&self.stats.queries_truncated);
        }
        for (ke, payload) in matches {
            if let Err(e) = query.reply(ke, payload.to_vec()).wait() {
                debug!(error = %e, "router storage: reply failed");
                break;
            }
            bump(&self.stats.replies);
        }
    }
}

/// A running router with its storage; dropped or [`close`](Self::close)d to stop.
pub struct FleetRouter {
    runtime: Runtime,
    session: Session,
    storage: Arc<Storage>,
    subscriber: Option<Subscriber<()>>,
    queryable: Option<Queryable<()>>,
    threads: Vec<JoinHandle<()>>,
}

fn spawn<T: Send + 'static>(
    name: &str,
    rx: mpsc::Receiver<T>,
    storage: Arc<Storage>,
    work: fn(&Storage, T),
) -> Result<JoinHandle<()>, RouterError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(item) = rx.recv() {
                work(&storage, item);
            }
        })
        .map_err(|e| RouterError::Thread(e.to_string()))
}

impl FleetRouter {
    /// Builds the router runtime, fills its storage from the volume (if any), declares
    /// the storage's subscriber and queryable, then starts listening.
    pub async fn start(
        config: zenoh::Config,
        settings: RouterSettings,
    ) -> Result<FleetRouter, RouterError> {
        settings.limits.validate()?;
        let zerr = |stage| {
            move |e: zenoh::Error| RouterError::Zenoh {
                stage,
                reason: e.to_string(),
            }
        };
        let mut runtime = RuntimeBuilder::new(config)
            .build()
            .await
            .map_err(zerr("build"))?;
        let session = zenoh::session::init(runtime.clone().into())
            .await
            .map_err(zerr("session"))?;
        let (volume, stored) = match &settings.volume {
            Some(path) => {
                let (v, stored) = Volume::open(path)?;
                (Some(v), stored)
            }
            None => (None, Vec::new()),
        };
        let storage = Arc::new(Storage {
            store: Mutex::new(RecordStore::new(settings.limits.clone())),
            admission: settings.admission.clone(),
            stats: Arc::new(RouterStats::default()),
            volume,
        });
        storage.restore(stored);
        let space = match &settings.fleet {
            Some(f) => fleet_record_space(f),
            None => RECORD_KEY_SPACE.to_owned(),
        };
        let (sample_tx, sample_rx) = mpsc::sync_channel::<Sample>(CHANNEL);
        let (query_tx, query_rx) = mpsc::sync_channel::<Query>(CHANNEL);
        let threads = vec![
            spawn("qis-router-intake", sample_rx, storage.clone(), |s, x| {
                s.intake(&x)
            })?,
            spawn("qis-router-answer", query_rx, storage.clone(), |s, q| {
                s.answer(&q)
            })?,
        ];
        // If a declaration fails, what was declared is dropped on return, and with it the
        // sender its thread waits on: the thread ends.
        let subscriber = session
            .declare_subscriber(space.clone())
            // Blocks Zenoh's delivery when the intake is behind: nothing is lost.
            .callback(move |sample| {
                let _ = sample_tx.send(sample);
            })
            .await
            .map_err(zerr("subscriber"))?;
        let stats = storage.stats.clone();
        let queryable = session
            .declare_queryable(space.clone())
            // A query flood must not stall routing: beyond the queue it is dropped.
            .callback(move |query| {
                if query_tx.try_send(query).is_err() {
                    bump(&stats.queries_dropped);
                }
            })
            .await
            .map_err(zerr("queryable"))?;
        // Listening starts only here; before it, nothing can connect.
        runtime.start().await.map_err(zerr("start"))?;
        info!(
            zid = %runtime.zid(),
            locators = ?runtime.get_locators(),
            key_expr = %space,
            records = storage.stats.records.load(Ordering::Relaxed),
            "qis router with storage started"
        );
        Ok(FleetRouter {
            runtime,
            session,
            storage,
            subscriber: Some(subscriber),
            queryable: Some(queryable),
            threads,
        })
    }

    /// The router's own session (e.g. to check what its storage holds).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The storage's counters now.
    pub fn stats(&self) -> RouterStatsSnapshot {
        self.storage.stats.snapshot()
    }

    /// The endpoints it listens on.
    pub fn locators(&self) -> Vec<String> {
        self.runtime
            .get_locators()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Stops the storage (everything heard is kept and, with a volume, committed), then
    /// closes the session and the runtime.
    pub async fn close(mut self) -> Result<(), RouterError> {
        let zerr = |stage| {
            move |e: zenoh::Error| RouterError::Zenoh {
                stage,
                reason: e.to_string(),
            }
        };
        // Undeclaring drops the callbacks, their senders with them: the threads drain and end.
        if let Some(s) = self.subscriber.take() {
            s.undeclare().await.map_err(zerr("undeclare subscriber"))?;
        }
        if let Some(q) = self.queryable.take() {
            q.undeclare().await.map_err(zerr("undeclare queryable"))?;
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("router storage: a thread panicked");
            }
        }
        self.session.close().await.map_err(zerr("close session"))?;
        self.runtime.close().await.map_err(zerr("close"))?;
        // The last reference: the volume commits what is queued and stops.
        match Arc::try_unwrap(self.storage) {
            Ok(storage) => {
                if let Some(v) = storage.volume {
                    v.close();
                }
            }
            Err(_) => warn!("router storage: still shared at close"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_router_config_is_a_router_without_the_storage_manager() {
        let cfg = router_config(None, &["tcp/127.0.0.1:7999".into()]).unwrap();
        assert_eq!(cfg.get_json("mode").unwrap(), "\"router\"");
        assert!(cfg.get_json("listen/endpoints").unwrap().contains("7999"));
        for shipped in ["zenoh-mtls-router.json5", "zenoh-mtls-acl-router.json5"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(shipped);
            assert!(router_config(Some(&path), &[]).is_ok(), "{shipped}");
        }
    }

    #[test]
    fn a_storage_manager_section_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.json5");
        let text = DEFAULT_ROUTER_CONFIG.replacen(
            "  timestamping:",
            r#"  plugins: { "storage-manager": { storages: { qis: { key_expr: "qis/**", volume: { id: "memory" } } } } },
  timestamping:"#,
            1,
        );
        assert_ne!(text, DEFAULT_ROUTER_CONFIG);
        std::fs::write(&path, text).unwrap();
        let e = router_config(Some(&path), &[]).expect_err("refused");
        assert!(
            matches!(
                e,
                RouterError::Config {
                    key: "plugins/storage-manager",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--max-records"), "{e}");
    }

    #[test]
    fn the_shipped_access_control_router_config_denies_by_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/zenoh-mtls-acl-router.json5");
        let cfg = router_config(Some(&path), &[]).unwrap();
        assert_eq!(cfg.get_json("access_control/enabled").unwrap(), "true");
        assert_eq!(
            cfg.get_json("access_control/default_permission").unwrap(),
            "\"deny\""
        );
        assert!(
            cfg.get_json("access_control/rules")
                .unwrap()
                .contains("qis/v2/default/**")
        );
        assert_eq!(
            cfg.get_json("transport/link/tls/enable_mtls").unwrap(),
            "true"
        );
    }
}
