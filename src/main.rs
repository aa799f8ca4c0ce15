//! `qis`: the command line of qis_ros.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use qis_ros::app::{NODE_NAME, Node};
use qis_ros::ros::logging::{self, LogRecord};
use qis_ros::ros::native::ZenohOptions;
use qis_ros::ros::{args, names::Names, params_file};
use tokio::sync::mpsc;

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

/// Sets up logging: the filter is `--log-level` (ROS levels, `logger:=level`), else
/// `RUST_LOG`, else `default`; records go to stderr unless `--disable-stdout-logs` (ANSI
/// colours only on a terminal: `ros2 launch` pipes it), and with `rosout` also to the
/// `/rosout` channel returned (unless `--disable-rosout-logs`).
fn init_logging(
    ros: &args::RosArgs,
    names: Option<&Names>,
    default: &str,
    rosout: bool,
) -> Option<mpsc::Receiver<LogRecord>> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    let directives = if ros.log_levels.is_empty() {
        std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    } else {
        let (logger, node) = names.map_or((String::new(), String::new()), |n| {
            (logging::logger_name(&n.fqn()), n.node().to_string())
        });
        logging::filter_directives(&ros.log_levels, &logger, &node, default)
    };
    let filter = || tracing_subscriber::EnvFilter::new(&directives);
    let stderr = ros.stdout_logs.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter())
    });
    let (rosout_layer, rosout_rx) = if rosout && ros.rosout_logs {
        let (layer, rx) = logging::rosout_layer(logging::ROSOUT_CHANNEL);
        (Some(layer.with_filter(filter())), Some(rx))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(rosout_layer)
        .init();
    if let Some(e) = &ros.enclave {
        tracing::info!(enclave = %e, "--enclave accepted: Zenoh TLS and access control secure this node, not SROS2 enclaves");
    }
    if let Some(f) = &ros.log_config_file {
        tracing::warn!(file = %f.display(), "--log-config-file ignored: this node has no external logging library (use --log-level or RUST_LOG)");
    }
    if let Some(f) = &ros.log_file_name {
        tracing::info!(name = %f, "--log-file-name accepted: this node writes no log file (stderr and /rosout)");
    }
    rosout_rx
}

async fn run_node(
    a: NodeArgs,
    ros: args::RosArgs,
    names: Names,
    rosout: Option<mpsc::Receiver<LogRecord>>,
) -> anyhow::Result<()> {
    let params = params_file::load(&names, &ros.params_files, &ros.params)?;
    let domain_id = match std::env::var("ROS_DOMAIN_ID") {
        Ok(v) if !v.is_empty() => v.parse().context("ROS_DOMAIN_ID must be an integer")?,
        _ => 0,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // SIGINT (ros2 launch's first) or SIGTERM (systemd, docker, ros2 launch's second).
    let stop = async move {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if let Err(e) = r {
                    tracing::error!("waiting for SIGINT: {e}");
                }
            }
            _ = term.recv() => {}
        }
    };
    let mut builder = Node::builder()
        .params(params)
        .names(names)
        .domain_id(domain_id)
        .zenoh(ZenohOptions {
            connect: a.connect,
            listen: a.listen,
            config_file: a.zenoh_config,
            mode: a.zenoh_mode,
        });
    if let Some(records) = rosout {
        builder = builder.rosout(records);
    }
    #[cfg(feature = "r2r")]
    if a.r2r {
        return Ok(builder.run_r2r(stop).await?);
    }
    let node = builder.build().await?;
    stop.await;
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
            init_logging(&args::RosArgs::default(), None, "error", false);
            qis_ros::sim::cli::run(&args)?;
            Ok(())
        }
        Command::Node(a) => {
            let names = Names::new(
                ros.node_name.as_deref().unwrap_or(NODE_NAME),
                ros.namespace.as_deref().unwrap_or("/"),
                ros.remaps.clone(),
            )?;
            #[cfg(feature = "r2r")]
            let native = !a.r2r;
            #[cfg(not(feature = "r2r"))]
            let native = true;
            let rosout = init_logging(&ros, Some(&names), "info", native);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_node(a, ros, names, rosout))
        }
    }
}
