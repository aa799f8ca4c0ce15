//! The native binding: `qis_node` on ROS 2 over Zenoh (rmw_zenoh wire format) through
//! hiroz, with no ROS installation. Transport only: it declares the node's topics, the
//! `query` service and the parameter services, and hands them to the one
//! [`Runner`] both bindings share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hiroz::Builder;
use hiroz::context::{ZContext, ZContextBuilder};
use hiroz::msg::SerdeCdrSerdes;
use hiroz::node::ZNode;
use hiroz::parameter::{Parameter, SetParametersResult};
use hiroz::pubsub::ZPub;
use hiroz::qos::{QosDurability, QosDuration, QosHistory, QosProfile, QosReliability};
use thiserror::Error;
use tokio::sync::mpsc;

use super::logging::{self, LogRecord};
use super::msgs::{
    Clock, CorrectedPrior, DiagnosticArray, Discrepancy, Log, Outcome, Prediction, Query, Time,
};
use super::names::{NameError, Names};
use super::ros_params::{self, RosParamError};
use super::runner::{
    Inputs, Outputs, QueryCall, Runner, RunnerConfig, SharedLogic, Undecodable, lock,
};
use crate::core::ids::RecordKey;
use crate::core::record::OutcomeRecord;
use crate::node::{FleetPort, NodeLogic, NodeParams};

pub use super::runner::DEFAULT_FIRST_CLOCK_WAIT;

/// Default depth of the input topics' queues: deep enough for bursts at the target
/// rate (20k predictions/s) between two scheduler slices.
pub const DEFAULT_INPUT_DEPTH: usize = 1000;

/// How the node reaches the Zenoh network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZenohOptions {
    /// Endpoints to connect to (default: rmw_zenoh's, a router on tcp/localhost:7447).
    pub connect: Vec<String>,
    /// Endpoints to listen on.
    pub listen: Vec<String>,
    /// A Zenoh session config file (JSON5), replacing the rmw_zenoh defaults.
    pub config_file: Option<PathBuf>,
    /// `peer` (default) or `client`.
    pub mode: Option<String>,
}

/// Everything the native node needs besides the logic.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    /// Node name, namespace and remaps.
    pub names: Names,
    /// ROS domain id (`ROS_DOMAIN_ID`).
    pub domain_id: usize,
    /// Zenoh session settings.
    pub zenoh: ZenohOptions,
    /// Queue depth of the `prediction` and `outcome` subscriptions.
    pub input_depth: usize,
}

/// Why the node could not start.
#[derive(Debug, Error)]
pub enum NativeError {
    /// A topic or service name that does not resolve.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A parameter with no ROS 2 form.
    #[error(transparent)]
    Parameters(#[from] RosParamError),
    /// hiroz refused to declare a parameter.
    #[error("declaring parameter {name}: {reason}")]
    Declare {
        /// The parameter.
        name: String,
        /// hiroz's reason.
        reason: String,
    },
    /// hiroz or Zenoh refused.
    #[error("{what}: {source}")]
    Ros {
        /// What was being set up.
        what: String,
        /// The error.
        source: zenoh::Error,
    },
}

fn ros<T>(what: impl Into<String>, r: zenoh::Result<T>) -> Result<T, NativeError> {
    r.map_err(|source| NativeError::Ros {
        what: what.into(),
        source,
    })
}

/// rclcpp's clock QoS (`rclcpp::ClockQoS`: the sensor-data profile, best effort, keep
/// last 1), which simulator bridges (Gazebo's, Isaac Sim's) publish `/clock` with.
pub fn clock_qos() -> QosProfile {
    QosProfile {
        reliability: QosReliability::BestEffort,
        history: QosHistory::from_depth(1),
        ..QosProfile::default()
    }
}

/// Declares every node parameter (`ros2 param list/get/describe`) and applies
/// `ros2 param set` to the logic: validated there, all of one request or none. Returns
/// how many parameters were declared.
fn serve_parameters(
    node: &ZNode,
    params: &NodeParams,
    logic: &SharedLogic,
) -> Result<usize, NativeError> {
    let declared = ros_params::declarations(params)?;
    for d in &declared {
        node.declare_parameter(&d.name, d.value.clone(), d.descriptor.clone())
            .map_err(|reason| NativeError::Declare {
                name: d.name.clone(),
                reason,
            })?;
    }
    let logic = logic.clone();
    node.on_set_parameters(move |changes: &[Parameter]| {
        let mut yaml = Vec::with_capacity(changes.len());
        for p in changes {
            match ros_params::to_yaml(&p.value) {
                Ok(v) => yaml.push((p.name.clone(), v)),
                Err(reason) => {
                    return SetParametersResult::failure(format!(
                        "invalid parameter `{}`: {reason}",
                        p.name
                    ));
                }
            }
        }
        match lock(&logic).set_params(&yaml) {
            Ok(()) => {
                for (name, value) in &yaml {
                    tracing::info!(parameter = %name, value = ?value, "parameter set");
                }
                SetParametersResult::success()
            }
            Err(e) => {
                tracing::warn!("parameter change refused: {e}");
                SetParametersResult::failure(e.to_string())
            }
        }
    });
    Ok(declared.len())
}

/// The native node's publishers: the runner's [`Outputs`].
struct Publishers {
    prior: ZPub<CorrectedPrior, SerdeCdrSerdes<CorrectedPrior>>,
    discrepancy: ZPub<Discrepancy, SerdeCdrSerdes<Discrepancy>>,
    diagnostics: ZPub<DiagnosticArray, SerdeCdrSerdes<DiagnosticArray>>,
    session: zenoh::Session,
}

impl Outputs for Publishers {
    async fn prior(&self, msg: &CorrectedPrior) -> Result<(), String> {
        self.prior
            .async_publish(msg)
            .await
            .map_err(|e| e.to_string())
    }

    async fn discrepancy(&self, msg: &Discrepancy) -> Result<(), String> {
        self.discrepancy
            .async_publish(msg)
            .await
            .map_err(|e| e.to_string())
    }

    async fn diagnostics(&self, msg: &DiagnosticArray) -> Result<(), String> {
        self.diagnostics
            .async_publish(msg)
            .await
            .map_err(|e| e.to_string())
    }

    async fn transport_diagnostics(&self) -> Vec<(String, String)> {
        let info = self.session.info();
        vec![
            (
                "zenoh_peers".into(),
                info.peers_zid().await.count().to_string(),
            ),
            (
                "zenoh_routers".into(),
                info.routers_zid().await.count().to_string(),
            ),
        ]
    }
}

/// A running native node.
pub struct NativeNode {
    runner: Runner,
    names: Names,
    // Dropped last: the entities above hold references into the session.
    _node: Arc<ZNode>,
    _ctx: ZContext,
}

fn qos(depth: usize) -> QosProfile {
    QosProfile {
        history: QosHistory::from_depth(depth),
        ..QosProfile::default()
    }
}

/// rcl's QoS of `/rosout` (`rcl_qos_profile_rosout_default`): reliable, transient local,
/// keep last 1000, lifespan 10 s.
pub fn rosout_qos() -> QosProfile {
    QosProfile {
        reliability: QosReliability::Reliable,
        durability: QosDurability::TransientLocal,
        history: QosHistory::from_depth(1000),
        lifespan: QosDuration { sec: 10, nsec: 0 },
        ..QosProfile::default()
    }
}

impl NativeNode {
    /// Opens the Zenoh session, declares the node's topics and service and starts its
    /// tasks. Own records go to `fleet`; records from the fleet arrive on `records`.
    pub async fn start(
        config: NativeConfig,
        logic: NodeLogic,
        fleet: Arc<dyn FleetPort>,
        records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
    ) -> Result<Self, NativeError> {
        Self::start_with(config, DEFAULT_FIRST_CLOCK_WAIT, logic, fleet, records).await
    }

    /// [`Self::start`] with the longest wait of inputs for the first `/clock` under
    /// `use_sim_time` (counted from the start): predictions and outcomes that arrive
    /// before the simulator's first `/clock` are held until it comes; past
    /// `first_clock_wait` they are handled at sim time 0, as rclcpp's clock reads then,
    /// and counted as `sim_time_unset` in `/diagnostics`.
    pub async fn start_with(
        config: NativeConfig,
        first_clock_wait: Duration,
        logic: NodeLogic,
        fleet: Arc<dyn FleetPort>,
        records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
    ) -> Result<Self, NativeError> {
        let names = config.names.clone();
        let mut builder = ZContextBuilder::default().with_domain_id(config.domain_id);
        if let Some(f) = &config.zenoh.config_file {
            builder = builder.with_config_file(f.clone());
        }
        if !config.zenoh.connect.is_empty() {
            builder = builder.with_connect_endpoints(config.zenoh.connect.clone());
        }
        if !config.zenoh.listen.is_empty() {
            builder = builder.with_listen_endpoints(config.zenoh.listen.clone());
        }
        if let Some(m) = &config.zenoh.mode {
            builder = builder.with_mode(m.clone());
        }
        let ctx = ros("opening the Zenoh session", builder.build())?;
        let node = ros(
            format!("creating node {}", names.fqn()),
            ctx.create_node(names.node())
                .with_namespace(names.namespace())
                .build(),
        )?;
        let node = Arc::new(node);
        let params = logic.params().clone();
        let logic: SharedLogic = Arc::new(std::sync::Mutex::new(logic));
        let declared = serve_parameters(&node, &params, &logic)?;
        let shadow = params.shadow_mode;
        let prior_topic = names.resolve(if shadow {
            "corrected_prior_shadow"
        } else {
            "corrected_prior"
        })?;
        let topic = |t: &str| names.resolve(t);
        let pred_sub = ros(
            "subscribing prediction",
            node.create_sub::<Prediction>(&topic("prediction")?)
                .with_qos(qos(config.input_depth))
                .build(),
        )?;
        let out_sub = ros(
            "subscribing outcome",
            node.create_sub::<Outcome>(&topic("outcome")?)
                .with_qos(qos(config.input_depth))
                .build(),
        )?;
        let prior_pub = ros(
            "advertising corrected_prior",
            node.create_pub::<CorrectedPrior>(&prior_topic).build(),
        )?;
        let disc_pub = ros(
            "advertising discrepancy",
            node.create_pub::<Discrepancy>(&topic("discrepancy")?)
                .build(),
        )?;
        let diag_pub = ros(
            "advertising /diagnostics",
            node.create_pub::<DiagnosticArray>(&topic("/diagnostics")?)
                .build(),
        )?;
        let query_srv = ros(
            "serving query",
            node.create_service::<Query>(&topic("query")?).build(),
        )?;
        let clock_sub = if params.use_sim_time {
            Some(ros(
                "subscribing /clock",
                node.create_sub::<Clock>(&topic("/clock")?)
                    .with_qos(clock_qos())
                    .build(),
            )?)
        } else {
            None
        };

        let zenoh = (**node.session()).clone();
        let predictions = futures_util::stream::unfold(pred_sub, |sub| async move {
            let m = sub.async_recv().await.map_err(|_| Undecodable);
            Some((m, sub))
        })
        .boxed();
        let outcomes = futures_util::stream::unfold(out_sub, |sub| async move {
            let m = sub.async_recv().await.map_err(|_| Undecodable);
            Some((m, sub))
        })
        .boxed();
        let queries = futures_util::stream::unfold(query_srv, |mut srv| async move {
            let call = srv.async_take_request().await.map(|req| {
                let (request, reply) = req.into_parts();
                QueryCall {
                    request,
                    reply: Box::new(move |resp| {
                        Box::pin(async move { reply.reply(&resp).await.map_err(|e| e.to_string()) })
                    }),
                }
            });
            Some((call.map_err(|_| Undecodable), srv))
        })
        .boxed();
        let clock = clock_sub.map(|sub| {
            futures_util::stream::unfold(sub, |sub| async move {
                // An undecodable tick is skipped: the next one carries the time.
                loop {
                    if let Ok(c) = sub.async_recv().await {
                        return Some((c, sub));
                    }
                }
            })
            .boxed()
        });
        let outputs = Arc::new(Publishers {
            prior: prior_pub,
            discrepancy: disc_pub,
            diagnostics: diag_pub,
            session: zenoh,
        });
        let runner = Runner::start(
            RunnerConfig {
                fqn: names.fqn(),
                first_clock_wait,
            },
            logic,
            fleet,
            records,
            Inputs {
                predictions,
                outcomes,
                queries: Some(queries),
                clock,
            },
            outputs,
        );
        tracing::info!(node = %names.fqn(), corrected_prior = %prior_topic, shadow, parameters = declared, "qis_node started");
        Ok(NativeNode {
            runner,
            names,
            _node: node,
            _ctx: ctx,
        })
    }

    /// Publishes the log records of `records` (a [`logging::RosoutLayer`]'s channel) on
    /// `/rosout` as `rcl_interfaces/msg/Log` under the node's logger name, with rcl's
    /// rosout QoS. The task never logs (its records would feed back into it): a record
    /// it cannot publish counts in `rosout_dropped` of `/diagnostics`.
    pub fn publish_rosout(
        &mut self,
        mut records: mpsc::Receiver<LogRecord>,
    ) -> Result<(), NativeError> {
        let publisher = ros(
            "advertising /rosout",
            self._node
                .create_pub::<Log>(&self.names.resolve("/rosout")?)
                .with_qos(rosout_qos())
                .build(),
        )?;
        let name = logging::logger_name(&self.names.fqn());
        self.runner.spawn(move |cancel| {
            Box::pin(async move {
                let to_log = |r: LogRecord| Log {
                    stamp: Time::from_nanos(r.stamp_ns),
                    level: r.level,
                    name: name.clone(),
                    msg: r.msg,
                    file: r.file,
                    function: r.function,
                    line: r.line,
                };
                loop {
                    let r = tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = records.recv() => r,
                    };
                    let Some(r) = r else { return };
                    if publisher.async_publish(&to_log(r)).await.is_err() {
                        logging::count_rosout_drop();
                    }
                }
                // At shutdown: what was logged up to now still goes out.
                while let Ok(r) = records.try_recv() {
                    if publisher.async_publish(&to_log(r)).await.is_err() {
                        logging::count_rosout_drop();
                    }
                }
            })
        });
        Ok(())
    }

    /// The node logic (counters, memory), shared with the node's tasks.
    pub fn logic(&self) -> &SharedLogic {
        self.runner.logic()
    }

    /// The node's names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The node's current time (ns): the latest `/clock` under `use_sim_time`, else the
    /// system time. Lets a driver of simulated time wait until the node has seen a tick.
    pub fn now_ns(&self) -> i64 {
        self.runner.now_ns()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) {
        self.runner.shutdown().await;
    }
}
