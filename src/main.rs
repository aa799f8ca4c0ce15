//! `qis`: the command line of qis_ros.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use qis_ros::core::ids::SourceId;
use qis_ros::core::store::Store;
use qis_ros::fleet::{FleetExchange, Identity, Received};
use qis_ros::link::{FleetLink, RunningLink};
use qis_ros::node::{FleetPort, NodeLogic, NodeParams, ParamError};
use qis_ros::ros::logging::{self, LogRecord};
use qis_ros::ros::native::{DEFAULT_INPUT_DEPTH, NativeConfig, NativeNode, ZenohOptions};
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

/// The node's default name (`-r __node:=` changes it).
const NODE_NAME: &str = "qis_node";

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

/// The store file: `store_path`, or `$ROS_HOME/qis/<fleet>.<node>.redb` (`~/.ros`).
fn store_path(params: &NodeParams, names: &Names) -> anyhow::Result<PathBuf> {
    if !params.store_path.is_empty() {
        return Ok(PathBuf::from(&params.store_path));
    }
    let ros_home = match std::env::var_os("ROS_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(std::env::var_os("HOME").context("neither ROS_HOME nor HOME is set")?)
            .join(".ros"),
    };
    let node = names.fqn().trim_start_matches('/').replace('/', ".");
    Ok(ros_home
        .join("qis")
        .join(format!("{}.{node}.redb", params.fleet)))
}

/// The robot's identity: in a signed fleet (the default) the key in `identity_file`, or
/// beside the store (`<store>.key`), created at first start with mode 0600; its source
/// id is the public key. With `exchange.unsigned: true`, the `source_id` parameter or
/// the id kept beside the store (`<store>.source`), else a new random one.
fn identity(params: &NodeParams, store: &Path) -> anyhow::Result<Identity> {
    if !params.exchange.unsigned {
        let file = if params.identity_file.is_empty() {
            store.with_extension("key")
        } else {
            PathBuf::from(&params.identity_file)
        };
        return Ok(Identity::load_or_create(&file)?);
    }
    if !params.source_id.is_empty() {
        return Ok(Identity::unsigned(SourceId::new(params.source_id.clone())?));
    }
    let file = store.with_extension("source");
    match std::fs::read_to_string(&file) {
        Ok(s) => Ok(Identity::unsigned(SourceId::new(s.trim()).with_context(
            || format!("{} holds an invalid source id", file.display()),
        )?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A random name: the public key of a throwaway identity.
            let id = Identity::generate().source().clone();
            std::fs::write(&file, id.as_str())
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(Identity::unsigned(id))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Opens the store, restores it into the node logic and starts the fleet link.
async fn start_link(
    params: &NodeParams,
    logic: &mut NodeLogic,
    store: Store,
    identity: Identity,
) -> anyhow::Result<(RunningLink, mpsc::Receiver<Received>)> {
    let stored = store.load().context("reading the store")?;
    // Own addresses first: where this robot has been is where it is likely to return.
    let mut known = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in stored
        .iter()
        .filter(|r| r.own)
        .chain(stored.iter().filter(|r| !r.own))
    {
        if seen.insert((r.key.model.clone(), r.key.fingerprint)) {
            known.push((r.key.model.clone(), r.key.fingerprint));
        }
    }
    let now = qis_ros::ros::clock::system_ns();
    let mut own = 0usize;
    for r in stored {
        if r.own {
            if r.key.source == *logic.source() {
                own += 1;
                logic.restore_own(&r.key, r.record);
            }
        } else {
            // Checked like a record from the network: a stored record from the future
            // (kept by an older version) is refused here, not trusted forever.
            logic.on_record(&r.key, r.record, now);
        }
    }
    tracing::info!(
        own,
        received = store.received_len(),
        "restored from the store"
    );
    if !params.exchange_enabled {
        return Ok(FleetLink::start(store, None, 4096));
    }
    let mut exchange = params.exchange.clone();
    exchange.fleet = params.fleet.clone();
    exchange.min_count_to_share = params.min_count_to_share;
    let settings = exchange.validate().map_err(|e| ParamError {
        param: format!("exchange.{}", e.field),
        reason: e.reason,
    })?;
    let (exchange, from_fleet) = FleetExchange::start(settings, identity)
        .await
        .context("starting the fleet exchange")?;
    let (mut link, to_node) = FleetLink::start(store, Some((exchange, from_fleet)), 4096);
    link.refollow(known);
    Ok((link, to_node))
}

async fn run_node(
    a: NodeArgs,
    ros: args::RosArgs,
    names: Names,
    rosout: Option<mpsc::Receiver<LogRecord>>,
) -> anyhow::Result<()> {
    let params = params_file::load(&names, &ros.params_files, &ros.params)?;
    let path = store_path(&params, &names)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::open(&path, params.store.clone())
        .with_context(|| format!("opening the store {}", path.display()))?;
    let identity = identity(&params, &path)?;
    let source = identity.source().clone();
    let domain_id = match std::env::var("ROS_DOMAIN_ID") {
        Ok(v) if !v.is_empty() => v.parse().context("ROS_DOMAIN_ID must be an integer")?,
        _ => 0,
    };
    tracing::info!(source = %source, signed = identity.signing_key().is_some(), fleet = %params.fleet, store = %path.display(), "starting");
    let mut logic = NodeLogic::new(params.clone(), source)?;
    let (link, records_rx) = start_link(&params, &mut logic, store, identity).await?;
    let port: Arc<dyn FleetPort> = link.port.clone();
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
    #[cfg(feature = "r2r")]
    if a.r2r {
        let name = names.node().to_string();
        qis_ros::ros::r2r_binding::run(&name, logic, port, records_rx, stop).await?;
        link.shutdown().await;
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
    let mut node = NativeNode::start(config, logic, port, records_rx).await?;
    if let Some(records) = rosout {
        node.publish_rosout(records)?;
    }
    stop.await;
    tracing::info!("shutting down");
    node.shutdown().await;
    link.shutdown().await;
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
