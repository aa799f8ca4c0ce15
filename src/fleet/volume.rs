//! The router's persistent volume: every record its storage holds, kept in a redb file,
//! read back into the storage when the router starts again, so a router restart loses no
//! record.
//!
//! Why not a Zenoh backend: the storage is the router's own ([`super::storage`]), and
//! Zenoh's filesystem and RocksDB volumes are backend libraries that the storage manager
//! loads dynamically (built with the same zenoh and rustc), which a statically linked
//! router cannot use (FACTS.md, "Zenoh for scale-out"). redb is the store the node
//! already uses.
//!
//! Durability: changes go through a bounded channel (a flood blocks the router's intake,
//! not memory) to one writer thread that commits in batches; a record is on disk once
//! its batch is committed, and [`Volume::close`] drains the channel before it returns.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;
use tracing::warn;

/// Records by key expression: the latest payload put there.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("router_records_v1");
/// Changes waiting for the writer at most.
const CHANNEL: usize = 16 * 1024;
/// Changes committed in one transaction at most.
const BATCH: usize = 1024;

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
}

/// A record as the file holds it: its key and payload.
pub type StoredRecord = (String, Vec<u8>);

/// One change the writer applies.
enum Change {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A running volume: the channel feeding the writer thread.
pub struct Volume {
    tx: Option<mpsc::SyncSender<Change>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

fn db_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> VolumeError + '_ {
    move |e| VolumeError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Reads every record of the file.
fn load(db: &Database, path: &Path) -> Result<Vec<StoredRecord>, VolumeError> {
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
    /// Opens (or creates) the volume at `path` and returns it with every record
    /// (key, payload) the file holds, for the storage to take back before it listens.
    pub fn open(path: &Path) -> Result<(Volume, Vec<StoredRecord>), VolumeError> {
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
        tracing::info!(path = %path.display(), records = stored.len(), "router volume open");
        Ok((
            Volume {
                tx: Some(tx),
                writer: Some(writer),
                path: path.to_owned(),
            },
            stored,
        ))
    }

    /// Writes the record now held at `key`.
    pub fn put(&self, key: String, payload: Vec<u8>) {
        self.send(Change::Put(key, payload));
    }

    /// Removes the record at `key` (evicted from the storage).
    pub fn delete(&self, key: String) {
        self.send(Change::Delete(key));
    }

    fn send(&self, change: Change) {
        // Blocks when the writer is behind: backpressure rather than memory.
        if let Some(tx) = &self.tx
            && tx.send(change).is_err()
        {
            warn!(path = %self.path.display(), "router volume: writer stopped");
        }
    }

    /// Stops writing once everything sent is committed.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
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
