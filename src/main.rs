//! `qis`: the command line of qis_ros.

use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use qis_ros::core::ids::SourceId;
use qis_ros::node::{LocalOnly, NodeLogic};
use qis_ros::ros::native::{DEFAULT_INPUT_DEPTH, NativeConfig, NativeNode, ZenohOptions};
use qis_ros::ros::{args, names::Names, params_file};

/// Outcome memory for robot world models.
#[derive(Debug, Parser)]
#[command(name = "qis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulates a fleet whose world model is biased per scenario and compares the qis
    /// corrected prior with the raw model, local-only learning and a central oracle.
    Sim(qis_ros::sim::cli::SimArgs),
    /// Run the ROS 2 node `qis_node` (native rmw_zenoh binding; accepts --ros-args).
    Node(NodeArgs),
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Zenoh endpoint to connect to (repeatable; default: a router on tcp/localhost:7447).
    #[arg(long)]
    connect: Vec<String>,
    /// Zenoh endpoint to listen on (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Zenoh session config file (JSON5) replacing the rmw_zenoh defaults.
    #[arg(long)]
    zenoh_config: Option<PathBuf>,
    /// Zenoh mode: peer or client.
    #[arg(long)]
    zenoh_mode: Option<String>,
    /// Run on r2r (rcl, any RMW) instead of the native binding; needs a sourced ROS 2.
    #[cfg(feature = "r2r")]
    #[arg(long)]
    r2r: bool,
}

/// The node's default name (`-r __node:=` changes it).
const NODE_NAME: &str = "qis_node";

/// Logs to stderr: `RUST_LOG`, or `level` (`--ros-args --log-level`), or `default`.
fn init_logging(level: Option<&str>, default: &str) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A fresh pseudonymous source id: 64 random bits (std's per-process random hash keys).
fn random_source_id() -> anyhow::Result<SourceId> {
    let bits = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    Ok(SourceId::new(format!("robot-{bits:016x}"))?)
}

async fn run_node(a: NodeArgs, ros: args::RosArgs) -> anyhow::Result<()> {
    let names = Names::new(
        ros.node_name.as_deref().unwrap_or(NODE_NAME),
        ros.namespace.as_deref().unwrap_or("/"),
        ros.remaps.clone(),
    )?;
    let params = params_file::load(&names, &ros.params_files, &ros.params)?;
    let source = if params.source_id.is_empty() {
        random_source_id()?
    } else {
        SourceId::new(params.source_id.clone())?
    };
    let domain_id = match std::env::var("ROS_DOMAIN_ID") {
        Ok(v) if !v.is_empty() => v.parse().context("ROS_DOMAIN_ID must be an integer")?,
        _ => 0,
    };
    tracing::info!(source = %source, fleet = %params.fleet, "starting");
    let logic = NodeLogic::new(params, source)?;
    // Until the fleet exchange is wired in, records stay local; the sender half is held
    // so the node's record task keeps waiting instead of ending.
    let (_records_tx, records_rx) = tokio::sync::mpsc::channel(1024);
    #[cfg(feature = "r2r")]
    if a.r2r {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let name = names.node().to_string();
        qis_ros::ros::r2r_binding::run(&name, logic, Arc::new(LocalOnly), records_rx, stop).await?;
        return Ok(());
    }
    let config = NativeConfig {
        names,
        domain_id,
        zenoh: ZenohOptions {
            connect: a.connect,
            listen: a.listen,
            config_file: a.zenoh_config,
            mode: a.zenoh_mode,
        },
        input_depth: DEFAULT_INPUT_DEPTH,
    };
    let node = NativeNode::start(config, logic, Arc::new(LocalOnly), records_rx).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (ros, rest) = args::split(&argv, NODE_NAME)?;
    let cli = Cli::parse_from(std::iter::once("qis".to_string()).chain(rest));
    match cli.command {
        Command::Sim(args) => {
            init_logging(None, "error");
            qis_ros::sim::cli::run(&args)?;
            Ok(())
        }
        Command::Node(a) => {
            init_logging(ros.log_level.as_deref(), "info");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_node(a, ros))
        }
    }
}
