//! `qis-fleet`: fleet tools. `router` runs a Zenoh router holding every qis record in
//! its storage; `peer` runs a fleet peer that reports synthetic outcomes for one
//! scenario and serves them (for demos and the multi-process tests); `keygen` writes a
//! signing key.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qis_ros::core::ids::{Fingerprint, ModelId, RecordKey, SourceId};
use qis_ros::core::memory::{MemoryConfig, OutcomeMemory};
use qis_ros::core::neighbors::Sketch;
use qis_ros::core::summary::Decay;
use qis_ros::fleet::signing::public_key_hex;
use qis_ros::fleet::{FleetConfig, FleetExchange, FleetRouter, router::router_config};

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
    /// Runs a Zenoh router with the storage manager holding `qis/**` until Ctrl-C.
    Router {
        /// Zenoh JSON5 config (default: the embedded config/zenoh-router.json5).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen endpoint, e.g. tcp/127.0.0.1:7447 (repeatable; replaces the config's).
        #[arg(long)]
        listen: Vec<String>,
    },
    /// Runs a fleet peer that folds `outcomes` synthetic residuals for one address,
    /// publishes its record, serves it, and prints what it receives, until Ctrl-C.
    Peer {
        /// Fleet settings (JSON, the `FleetConfig` fields); flags below override.
        #[arg(long)]
        config: Option<PathBuf>,
        /// This peer's source id.
        #[arg(long)]
        source: String,
        /// Fleet name.
        #[arg(long)]
        fleet: Option<String>,
        /// Zenoh listen endpoint (repeatable).
        #[arg(long)]
        listen: Vec<String>,
        /// Zenoh connect endpoint (repeatable).
        #[arg(long)]
        connect: Vec<String>,
        /// Signing key file (64 hex digits).
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
        Command::Router { config, listen } => {
            let cfg = router_config(config.as_deref(), &listen)?;
            let router = FleetRouter::start(cfg).await?;
            say(&format!("ready router {}", router.locators().join(",")))?;
            tokio::signal::ctrl_c().await?;
            router.close().await?;
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
            if key_file.is_some() {
                cfg.signing_key_file = key_file;
            }
            if residual.is_empty() {
                bail!("--residual needs at least one value");
            }
            let settings = cfg.validate()?;
            let source = SourceId::new(source)?;
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
            let (exchange, mut rx) = FleetExchange::start(settings, source).await?;
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
            say("ready peer")?;
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
