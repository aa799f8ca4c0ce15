//! `qis-fleet`: fleet tools. `router` runs a Zenoh router holding every qis record in
//! its storage; `peer` runs a fleet peer that reports synthetic outcomes for one
//! scenario and serves them (for demos and the multi-process tests); `keygen` writes a
//! signing key; the hidden `ingest-loop` records outcomes durably until killed (for the
//! crash-safety test in test/reliability.rs).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qis_ros::core::ids::FleetName;
use qis_ros::core::ids::{Fingerprint, ModelId, RecordKey, SourceId};
use qis_ros::core::memory::{MemoryConfig, OutcomeMemory};
use qis_ros::core::neighbors::Sketch;
use qis_ros::core::summary::Decay;
use qis_ros::fleet::signing::{parse_public_key, public_key_hex};
use qis_ros::fleet::storage::StorageLimits;
use qis_ros::fleet::{
    Admission, FleetConfig, FleetExchange, FleetRouter, Identity, RouterSettings,
    router::router_config,
};

#[derive(Parser)]
#[command(
    name = "qis-fleet",
    about = "qis fleet tools: router with storage, test peer, keygen"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a Zenoh router with a bounded storage of the fleet's records until Ctrl-C or
    /// SIGTERM, then prints its counters as one `stats {json}` line.
    Router {
        /// Zenoh JSON5 config (default: the embedded config/zenoh-router.json5).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen endpoint, e.g. tcp/127.0.0.1:7447 (repeatable; replaces the config's).
        #[arg(long)]
        listen: Vec<String>,
        /// Persistent volume (a redb file, created when missing): every record stored is
        /// also written there and is back in the storage after a restart.
        #[arg(long)]
        volume: Option<PathBuf>,
        /// Store only this fleet's records (default: every fleet's).
        #[arg(long)]
        fleet: Option<String>,
        /// Records stored at most; beyond it the source holding the most gives way.
        #[arg(long, default_value_t = StorageLimits::default().max_records)]
        max_records: usize,
        /// Bytes (keys plus payloads) stored at most.
        #[arg(long, default_value_t = StorageLimits::default().max_bytes)]
        max_bytes: u64,
        /// Records one source may have stored at most.
        #[arg(long, default_value_t = StorageLimits::default().max_records_per_source)]
        max_records_per_source: usize,
        /// Replies to one query at most.
        #[arg(long, default_value_t = StorageLimits::default().max_replies)]
        max_replies: usize,
        /// Store records only from these public keys (64 hex digits, repeatable; default:
        /// any self-certified key).
        #[arg(long)]
        allow_key: Vec<String>,
        /// Store unsigned records under any source id (explicit opt-out, for unsigned
        /// fleets only: nothing stops a peer overwriting another's record).
        #[arg(long, conflicts_with = "allow_key")]
        unsigned: bool,
    },
    /// Runs a fleet peer that folds `outcomes` synthetic residuals for one address,
    /// publishes its record, serves it, and prints what it receives, until Ctrl-C.
    Peer {
        /// Fleet settings (JSON, the `FleetConfig` fields); flags below override.
        #[arg(long)]
        config: Option<PathBuf>,
        /// This peer's source id: only for unsigned fleets (`"unsigned": true` in the
        /// config); a signed peer's id is its public key.
        #[arg(long)]
        source: Option<String>,
        /// Fleet name.
        #[arg(long)]
        fleet: Option<String>,
        /// Zenoh listen endpoint (repeatable).
        #[arg(long)]
        listen: Vec<String>,
        /// Zenoh connect endpoint (repeatable).
        #[arg(long)]
        connect: Vec<String>,
        /// Identity key file (64 hex digits, mode 0600; created when missing); none = a
        /// fresh key for this run.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// World-model id.
        #[arg(long)]
        model: String,
        /// Scenario address (32 hex digits).
        #[arg(long)]
        fingerprint: String,
        /// Outcomes to report before publishing.
        #[arg(long, default_value_t = 10)]
        outcomes: u32,
        /// Residual of each outcome, comma-separated (its dimension is the state's).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        residual: Vec<f64>,
        /// Also follow the address and print `received <source> <seq> <count>` lines.
        #[arg(long)]
        follow: bool,
    },
    /// Restores own records from the store at PATH, then records synthetic outcomes round
    /// robin over `fingerprints` addresses forever, each committed durably (`put_own`),
    /// then published (with `--connect`), then acked on stdout as
    /// `acked <fingerprint> <seq> <count>`. The residual of the outcome
    /// that gets seq n is (n, -n/2), so a reader can check that no outcome was counted
    /// twice or lost from a summary. For the crash-safety test (killed with SIGKILL).
    #[command(hide = true)]
    IngestLoop {
        /// The redb store file (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// This robot's source id.
        #[arg(long, default_value = "robot-crash")]
        source: String,
        /// World-model id.
        #[arg(long, default_value = "crash/v1")]
        model: String,
        /// Number of scenario addresses written round robin.
        #[arg(long, default_value_t = 4)]
        fingerprints: u8,
        /// Also publish each record (after its durable write) to the fleet through this
        /// Zenoh endpoint (repeatable); none = store only.
        #[arg(long)]
        connect: Vec<String>,
        /// Fleet name when publishing.
        #[arg(long, default_value = qis_ros::core::ids::DEFAULT_FLEET)]
        fleet: String,
    },
    /// Writes a new ed25519 signing key (64 hex digits) to FILE and prints its public key.
    Keygen {
        /// Where to write the secret key (created, mode 0600).
        file: PathBuf,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Router {
            config,
            listen,
            volume,
            fleet,
            max_records,
            max_bytes,
            max_records_per_source,
            max_replies,
            allow_key,
            unsigned,
        } => {
            let cfg = router_config(config.as_deref(), &listen)?;
            let admission = if unsigned {
                Admission::Unsigned
            } else {
                let keys = allow_key
                    .iter()
                    .map(|k| parse_public_key(k).with_context(|| format!("--allow-key {k:?}")))
                    .collect::<Result<Vec<_>>>()?;
                Admission::allow(keys)
            };
            let settings = RouterSettings {
                limits: StorageLimits {
                    max_records,
                    max_bytes,
                    max_records_per_source,
                    max_replies,
                },
                admission,
                fleet: fleet.map(FleetName::new).transpose()?,
                volume,
            };
            let router = FleetRouter::start(cfg, settings).await?;
            say(&format!("ready router {}", router.locators().join(",")))?;
            shutdown_signal().await?;
            let stats = router.stats();
            router.close().await?;
            say(&format!("stats {}", serde_json::to_string(&stats)?))?;
        }
        Command::Peer {
            config,
            source,
            fleet,
            listen,
            connect,
            key_file,
            model,
            fingerprint,
            outcomes,
            residual,
            follow,
        } => {
            let mut cfg: FleetConfig = match config {
                Some(p) => serde_json::from_str(
                    &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
                )
                .with_context(|| p.display().to_string())?,
                None => FleetConfig::default(),
            };
            if let Some(f) = fleet {
                cfg.fleet = f;
            }
            if !listen.is_empty() {
                cfg.listen = listen;
            }
            if !connect.is_empty() {
                cfg.connect = connect;
            }
            if residual.is_empty() {
                bail!("--residual needs at least one value");
            }
            let identity = match (cfg.unsigned, key_file, source) {
                (true, _, Some(name)) => Identity::unsigned(SourceId::new(name)?),
                (true, _, None) => bail!("an unsigned peer needs --source"),
                (false, _, Some(_)) => {
                    bail!("--source is only for unsigned fleets: a signed peer's id is its key")
                }
                (false, Some(file), None) => Identity::load_or_create(&file)?,
                (false, None, None) => Identity::generate(),
            };
            let settings = cfg.validate()?;
            let source = identity.source().clone();
            let key = RecordKey {
                model: ModelId::new(model)?,
                fingerprint: Fingerprint::from_hex(&fingerprint)?,
                source: source.clone(),
            };
            let mut memory = OutcomeMemory::new(
                source.clone(),
                MemoryConfig::default(),
                Decay::from_half_life_secs(0.0),
            );
            let (exchange, mut rx) = FleetExchange::start(settings, identity).await?;
            let mut record = None;
            for i in 0..outcomes {
                // Deterministic spread around the given residual, so the covariance is real.
                let jitter = if i % 2 == 0 { 0.01 } else { -0.01 };
                let r: Vec<f64> = residual.iter().map(|v| v + jitter).collect();
                record = Some(memory.record_outcome(
                    &key.model,
                    key.fingerprint,
                    Sketch([0; 32]),
                    &r,
                    i64::from(i) * 1_000_000,
                )?);
            }
            if let Some(record) = record {
                exchange.publish(&key, &record)?;
                exchange.flush().await?;
            }
            if follow {
                exchange.follow(&key.model, &key.fingerprint).await?;
            }
            say(&format!("ready peer {source}"))?;
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some((k, rec)) => say(&format!("received {} {} {}", k.source, rec.seq.0, rec.summary.count()))?,
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            exchange.close().await?;
        }
        Command::IngestLoop {
            store,
            source,
            model,
            fingerprints,
            connect,
            fleet,
        } => {
            let fleet = (!connect.is_empty()).then(|| FleetConfig {
                fleet,
                connect,
                listen: vec!["tcp/127.0.0.1:0".into()],
                min_count_to_share: 1,
                publish_interval_ms: 0,
                anti_entropy_period_ms: 0,
                // The crash workload names its source (`--source`); it tests the store.
                unsigned: true,
                ..FleetConfig::default()
            });
            ingest_loop(&store, source, model, fingerprints, fleet).await?
        }
        Command::Keygen { file } => {
            let mut seed = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
                .context("reading /dev/urandom")?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            write_secret(&file, &hex::encode(seed))?;
            say(&public_key_hex(&key))?;
        }
    }
    Ok(())
}

/// The crash-safety workload (see `Command::IngestLoop`): never returns unless a write
/// fails.
async fn ingest_loop(
    path: &std::path::Path,
    source: String,
    model: String,
    fps: u8,
    fleet: Option<FleetConfig>,
) -> Result<()> {
    use qis_ros::core::store::{Store, StoreConfig};
    if fps == 0 {
        bail!("--fingerprints must be >= 1");
    }
    let source = SourceId::new(source)?;
    let model = ModelId::new(model)?;
    let mut store = Store::open(path, StoreConfig::default())
        .with_context(|| format!("opening {}", path.display()))?;
    let mut memory = OutcomeMemory::new(
        source.clone(),
        MemoryConfig::default(),
        Decay::from_half_life_secs(0.0),
    );
    let restored = store.load()?;
    let own = restored.iter().filter(|r| r.own).count();
    let exchange = match fleet {
        Some(cfg) => {
            Some(FleetExchange::start(cfg.validate()?, Identity::unsigned(source.clone())).await?)
        }
        None => None,
    };
    for r in restored.into_iter().filter(|r| r.own) {
        if let Some((ex, _)) = &exchange {
            ex.serve_own(&r.key, &r.record)?;
        }
        memory.restore_own(&r.key.model, r.key.fingerprint, r.record);
    }
    say(&format!("ready {own}"))?;
    for i in 0u64.. {
        let fingerprint = Fingerprint([(i % u64::from(fps)) as u8; 16]);
        let next = memory
            .address(&model, &fingerprint)
            .and_then(|a| a.own.as_ref())
            .map_or(1, |(seq, _)| seq.0 + 1);
        let n = next as f64;
        let t_ns = i64::try_from(next).unwrap_or(i64::MAX);
        let record =
            memory.record_outcome(&model, fingerprint, Sketch([0; 32]), &[n, -n / 2.0], t_ns)?;
        let key = RecordKey {
            model: model.clone(),
            fingerprint,
            source: source.clone(),
        };
        // Durable first, then published: a record seen on the network is on disk.
        tokio::task::block_in_place(|| store.put_own(&key, &record))?;
        if let Some((ex, _)) = &exchange {
            ex.publish(&key, &record)?;
            // Let the outbox task put it.
            tokio::task::yield_now().await;
        }
        say(&format!(
            "acked {} {} {}",
            fingerprint.to_hex(),
            record.seq.0,
            record.summary.count()
        ))?;
    }
    Ok(())
}

/// One line on stdout, flushed (the tests read it through a pipe).
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

/// Resolves at SIGINT (Ctrl-C) or SIGTERM (systemd, docker), so either stops the router
/// gracefully, its volume committed.
async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
