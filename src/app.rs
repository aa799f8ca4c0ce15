//! The whole node, wired: store, identity, fleet exchange and a binding around one
//! [`NodeLogic`], behind a builder, so `qis node` and any program that embeds the node
//! run the same wiring (`qis node` only parses arguments and waits for a signal).
//!
//! ```no_run
//! # async fn demo() -> Result<(), qis_ros::app::BuildError> {
//! use qis_ros::app::Node;
//! use qis_ros::node::NodeParams;
//! let node = Node::builder()
//!     .params(NodeParams::default())
//!     .store_path("/tmp/qis-demo.redb")
//!     .build()
//!     .await?;
//! // ... the node serves its topics until:
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::mpsc;

use crate::core::ids::{IdError, SourceId};
use crate::core::store::{Store, StoreError};
use crate::fleet::{FleetError, FleetExchange, FleetSettings, Identity, IdentityError, Received};
use crate::link::{FleetLink, RunningLink};
use crate::node::{FleetPort, NodeLogic, NodeParams, ParamError};
use crate::ros::logging::LogRecord;
use crate::ros::names::{NameError, Names};
use crate::ros::native::{
    DEFAULT_INPUT_DEPTH, NativeConfig, NativeError, NativeNode, ZenohOptions,
};

/// The node's default name (`-r __node:=` changes it).
pub const NODE_NAME: &str = "qis_node";

/// Queue depth between the link and the node's record intake.
const LINK_QUEUE: usize = 4096;

/// Why the node could not start.
#[derive(Debug, Error)]
pub enum BuildError {
    /// A parameter was refused.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// The node name or namespace does not resolve.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Neither `store_path`, `ROS_HOME` nor `HOME` says where the store goes.
    #[error("no store path: set the store_path parameter, ROS_HOME or HOME")]
    NoStorePath,
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened or read.
    #[error("store {path}: {source}")]
    Store {
        /// The store file.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A persisted or configured source id is invalid.
    #[error("source id: {0}")]
    SourceId(#[from] IdError),
    /// The fleet exchange did not start.
    #[error("starting the fleet exchange: {0}")]
    Fleet(#[from] FleetError),
    /// The native binding did not start.
    #[error(transparent)]
    Native(#[from] NativeError),
}

/// Builds a [`Node`]: every setting has the default `qis node` uses.
#[derive(Debug, Default)]
pub struct NodeBuilder {
    params: NodeParams,
    names: Option<Names>,
    zenoh: ZenohOptions,
    domain_id: usize,
    store_path: Option<PathBuf>,
    rosout: Option<mpsc::Receiver<LogRecord>>,
}

/// A running node: the binding, the link to store and fleet, shut down together.
pub struct Node {
    native: NativeNode,
    link: RunningLink,
}

impl Node {
    /// A builder with the defaults of `qis node`.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The running native binding (logic, names, clock).
    pub fn native(&self) -> &NativeNode {
        &self.native
    }

    /// Stops the node: its tasks first (discrepancies whose records are being written
    /// still go out), then the link, which flushes the store.
    pub async fn shutdown(self) {
        self.native.shutdown().await;
        self.link.shutdown().await;
    }
}

impl NodeBuilder {
    /// The node parameters (validated at [`Self::build`]).
    pub fn params(mut self, params: NodeParams) -> Self {
        self.params = params;
        self
    }

    /// Node name, namespace and remaps (default `/qis_node`).
    pub fn names(mut self, names: Names) -> Self {
        self.names = Some(names);
        self
    }

    /// How the node reaches Zenoh (default: rmw_zenoh's, a router on localhost:7447).
    pub fn zenoh(mut self, zenoh: ZenohOptions) -> Self {
        self.zenoh = zenoh;
        self
    }

    /// The ROS domain id (`ROS_DOMAIN_ID`).
    pub fn domain_id(mut self, domain_id: usize) -> Self {
        self.domain_id = domain_id;
        self
    }

    /// The store file, overriding `store_path` and the `$ROS_HOME/qis/...` default.
    pub fn store_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.store_path = Some(path.into());
        self
    }

    /// Log records to publish on `/rosout` (a [`crate::ros::logging::rosout_layer`]'s
    /// channel).
    pub fn rosout(mut self, records: mpsc::Receiver<LogRecord>) -> Self {
        self.rosout = Some(records);
        self
    }

    /// The node's names, the default ones unless set.
    fn resolved_names(&self) -> Result<Names, BuildError> {
        match &self.names {
            Some(n) => Ok(n.clone()),
            None => Ok(Names::new(NODE_NAME, "/", vec![])?),
        }
    }

    /// Opens the store, restores the logic from it and starts the link (and the fleet
    /// exchange unless disabled): the part both bindings share.
    async fn start_parts(
        &self,
        names: &Names,
    ) -> Result<(NodeLogic, RunningLink, mpsc::Receiver<Received>), BuildError> {
        let params = &self.params;
        let path = match &self.store_path {
            Some(p) => p.clone(),
            None => store_path(params, names)?,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| BuildError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let store =
            Store::open(&path, params.store.clone()).map_err(|source| BuildError::Store {
                path: path.clone(),
                source,
            })?;
        let identity = identity(params, &path)?;
        tracing::info!(source = %identity.source(), signed = identity.signing_key().is_some(), fleet = %params.fleet, store = %path.display(), "starting");
        let mut logic = NodeLogic::new(params.clone(), identity.source().clone())?;
        let (link, records) = start_link(params, &mut logic, store, &path, identity).await?;
        Ok((logic, link, records))
    }

    /// Starts the node on the native binding (hiroz, rmw_zenoh wire format).
    pub async fn build(mut self) -> Result<Node, BuildError> {
        let names = self.resolved_names()?;
        let (logic, link, records) = self.start_parts(&names).await?;
        let port: Arc<dyn FleetPort> = link.port.clone();
        let config = NativeConfig {
            names,
            domain_id: self.domain_id,
            zenoh: std::mem::take(&mut self.zenoh),
            input_depth: DEFAULT_INPUT_DEPTH,
        };
        let mut native = NativeNode::start(config, logic, port, records).await?;
        if let Some(records) = self.rosout.take() {
            native.publish_rosout(records)?;
        }
        Ok(Node { native, link })
    }

    /// Runs the node on r2r (rcl, any RMW) until `stop` resolves, then flushes the store.
    #[cfg(feature = "r2r")]
    pub async fn run_r2r(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), R2rRunError> {
        let names = self.resolved_names()?;
        let (logic, link, records) = self.start_parts(&names).await?;
        let port: Arc<dyn FleetPort> = link.port.clone();
        let r = crate::ros::r2r_binding::run(names.node(), logic, port, records, stop).await;
        link.shutdown().await;
        Ok(r?)
    }
}

/// Why the r2r node could not run.
#[cfg(feature = "r2r")]
#[derive(Debug, Error)]
pub enum R2rRunError {
    /// The shared part (store, identity, fleet) did not start.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// rcl refused.
    #[error(transparent)]
    R2r(#[from] crate::ros::r2r_binding::R2rError),
}

/// The store file: `store_path`, or `$ROS_HOME/qis/<fleet>.<node>.redb` (`~/.ros`).
pub fn store_path(params: &NodeParams, names: &Names) -> Result<PathBuf, BuildError> {
    if !params.store_path.is_empty() {
        return Ok(PathBuf::from(&params.store_path));
    }
    let ros_home = match std::env::var_os("ROS_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or(BuildError::NoStorePath)?).join(".ros"),
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
fn identity(params: &NodeParams, store: &Path) -> Result<Identity, BuildError> {
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
    let io = |source| BuildError::Io {
        path: file.clone(),
        source,
    };
    match std::fs::read_to_string(&file) {
        Ok(s) => Ok(Identity::unsigned(SourceId::new(s.trim())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A random name: the public key of a throwaway identity.
            let id = Identity::generate().source().clone();
            std::fs::write(&file, id.as_str()).map_err(io)?;
            Ok(Identity::unsigned(id))
        }
        Err(e) => Err(io(e)),
    }
}

/// The fleet exchange's settings, resolved once: `exchange` with the node's fleet name
/// and privacy budget (the node's parameters are the one place they are set).
pub fn fleet_settings(params: &NodeParams) -> Result<FleetSettings, ParamError> {
    let mut exchange = params.exchange.clone();
    exchange.fleet = params.fleet.clone();
    exchange.min_count_to_share = params.min_count_to_share;
    exchange.validate().map_err(|e| ParamError {
        param: format!("exchange.{}", e.field),
        reason: e.reason,
    })
}

/// Restores the store into the node logic and starts the fleet link.
async fn start_link(
    params: &NodeParams,
    logic: &mut NodeLogic,
    store: Store,
    path: &Path,
    identity: Identity,
) -> Result<(RunningLink, mpsc::Receiver<Received>), BuildError> {
    let stored = store.load().map_err(|source| BuildError::Store {
        path: path.to_path_buf(),
        source,
    })?;
    // Own addresses first: where this robot has been is where it is likely to return.
    let mut known = Vec::new();
    let mut seen = HashSet::new();
    for r in stored
        .iter()
        .filter(|r| r.own)
        .chain(stored.iter().filter(|r| !r.own))
    {
        if seen.insert((r.key.model.clone(), r.key.fingerprint)) {
            known.push((r.key.model.clone(), r.key.fingerprint));
        }
    }
    let now = crate::ros::clock::system_ns();
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
        return Ok(FleetLink::start(store, None, LINK_QUEUE));
    }
    let settings = fleet_settings(params)?;
    let (exchange, from_fleet) = FleetExchange::start(settings, identity).await?;
    let (mut link, to_node) = FleetLink::start(store, Some((exchange, from_fleet)), LINK_QUEUE);
    link.refollow(known);
    Ok((link, to_node))
}
