//! The router's persistent volume: every record put on the record key space, kept in a
//! redb file beside the storage manager's memory volume, and put back into that storage
//! when the router starts again, so a router restart loses no record.
//!
//! Why not a Zenoh backend: the storage manager links only its `memory` volume
//! statically; the filesystem and RocksDB volumes are separate backend libraries that it
//! loads dynamically (built with the same zenoh and rustc), which a statically linked
//! router cannot use (FACTS.md, "Zenoh for scale-out"). So the router subscribes to the
//! record key space on its own session and writes what it hears to redb, the store the
//! node already uses; at start it replays the file into the storage and checks, by a
//! query of its own storage, that every record is held again.
//!
//! Durability: samples go through a bounded channel (a flood blocks the subscriber, not
//! memory) to one writer thread that commits in batches; a record is on disk once its
//! batch is committed, and [`Volume::close`] drains the channel before it returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;
use tracing::{debug, warn};
use zenoh::Session;
use zenoh::pubsub::Subscriber;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::SampleKind;

use super::keys::RECORD_KEY_SPACE;

/// Records by key expression: the latest payload put there.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("router_records_v1");
/// Largest payload kept (a signed record of dimension 64 is under 9 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Samples waiting for the writer at most.
const CHANNEL: usize = 16 * 1024;
/// Samples committed in one transaction at most.
const BATCH: usize = 1024;
/// How long the start waits for its storage to hold every replayed record.
const REPLAY_WAIT: Duration = Duration::from_secs(10);

/// Why the volume could not be opened, replayed or written.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// The redb file failed.
    #[error("router volume {path}: {reason}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Zenoh failed (subscriber, put or query).
    #[error("router volume: zenoh {stage}: {reason}")]
    Zenoh {
        /// What was being done.
        stage: &'static str,
        /// Zenoh's message.
        reason: String,
    },
    /// The storage did not hold every replayed record in time.
    #[error("router volume: the storage holds {held} of {stored} records after the replay")]
    Incomplete {
        /// Records the storage answered with.
        held: usize,
        /// Records in the file.
        stored: usize,
    },
}

/// One change the writer applies.
enum Change {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A running volume: the subscriber feeding the writer thread.
pub struct Volume {
    subscriber: Option<Subscriber<()>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

fn db_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> VolumeError + '_ {
    move |e| VolumeError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn zerr(stage: &'static str) -> impl Fn(zenoh::Error) -> VolumeError {
    move |e| VolumeError::Zenoh {
        stage,
        reason: e.to_string(),
    }
}

/// Reads every record of the file.
fn load(db: &Database, path: &Path) -> Result<Vec<(String, Vec<u8>)>, VolumeError> {
    let e = db_err(path);
    let read = db.begin_read().map_err(|x| e(&x))?;
    let table = read.open_table(RECORDS).map_err(|x| e(&x))?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(|x| e(&x))? {
        let (k, v) = entry.map_err(|x| e(&x))?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

/// Applies changes in batches until every sender is gone.
fn write(db: Database, path: PathBuf, rx: mpsc::Receiver<Change>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let commit = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(RECORDS)?;
                for c in &batch {
                    match c {
                        Change::Put(k, v) => {
                            table.insert(k.as_str(), v.as_slice())?;
                        }
                        Change::Delete(k) => {
                            table.remove(k.as_str())?;
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        };
        if let Err(e) = commit() {
            // The records stay in the memory storage; only their copy on disk is missing.
            warn!(path = %path.display(), error = %e, lost = batch.len(), "router volume: commit failed");
        }
    }
}

impl Volume {
    /// Opens (or creates) the volume at `path`, starts recording every put and delete on
    /// the record key space heard by `session` (the router's own, its storage running),
    /// then puts every record the file holds back and waits until the storage answers
    /// with every one of them. Call it before the router listens, so that no peer's
    /// newer put can arrive before the replay of an older one.
    pub async fn open(session: &Session, path: &Path) -> Result<Volume, VolumeError> {
        let e = db_err(path);
        let db = Database::create(path).map_err(|x| e(&x))?;
        {
            let txn = db.begin_write().map_err(|x| e(&x))?;
            txn.open_table(RECORDS).map_err(|x| e(&x))?;
            txn.commit().map_err(|x| e(&x))?;
        }
        let stored = load(&db, path)?;
        let (tx, rx) = mpsc::sync_channel(CHANNEL);
        let writer_path = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("qis-router-volume".into())
            .spawn(move || write(db, writer_path, rx))
            .map_err(|x| e(&x))?;
        let subscriber = session
            .declare_subscriber(RECORD_KEY_SPACE)
            .callback(move |sample| {
                let key = sample.key_expr().as_str().to_owned();
                let change = match sample.kind() {
                    SampleKind::Put => {
                        let payload = sample.payload().to_bytes();
                        if payload.len() > MAX_PAYLOAD {
                            debug!(
                                key,
                                len = payload.len(),
                                "router volume: payload too large, not kept"
                            );
                            return;
                        }
                        Change::Put(key, payload.into_owned())
                    }
                    SampleKind::Delete => Change::Delete(key),
                };
                // Blocks when the writer is behind: backpressure rather than memory.
                if tx.send(change).is_err() {
                    debug!("router volume: writer stopped");
                }
            })
            .await
            .map_err(zerr("subscriber"))?;
        let mut volume = Volume {
            subscriber: Some(subscriber),
            writer: Some(writer),
            path: path.to_owned(),
        };
        // Heard by the subscriber above and written again: the same bytes, harmless.
        if let Err(e) = replay(session, &stored).await {
            volume.stop();
            return Err(e);
        }
        tracing::info!(path = %path.display(), records = stored.len(), "router volume open");
        Ok(volume)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops recording and waits until everything heard is committed.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Undeclaring drops the callback and with it the channel's sender.
        drop(self.subscriber.take());
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            warn!(path = %self.path.display(), "router volume: writer panicked");
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Puts the stored records into the storage, again while it does not answer with all
/// of them (its subscriber may be declared a moment after the router starts).
async fn replay(session: &Session, stored: &[(String, Vec<u8>)]) -> Result<(), VolumeError> {
    if stored.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
    let mut missing: Vec<&(String, Vec<u8>)> = stored.iter().collect();
    loop {
        for (k, v) in &missing {
            session
                .put(k.as_str(), v.clone())
                .await
                .map_err(zerr("put"))?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let held = held_keys(session).await?;
        missing.retain(|(k, _)| !held.contains(k));
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VolumeError::Incomplete {
                held: stored.len() - missing.len(),
                stored: stored.len(),
            });
        }
    }
}

/// The keys the local storage answers for.
async fn held_keys(session: &Session) -> Result<HashSet<String>, VolumeError> {
    let replies = session
        .get(RECORD_KEY_SPACE)
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(Duration::from_secs(2))
        .await
        .map_err(zerr("get"))?;
    let mut held = HashSet::new();
    while let Ok(reply) = replies.recv_async().await {
        if let Ok(sample) = reply.result() {
            held.insert(sample.key_expr().as_str().to_owned());
        }
    }
    Ok(held)
}
