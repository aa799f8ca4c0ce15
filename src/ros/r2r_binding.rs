//! The r2r binding (cargo feature `r2r`): `qis_node` on any ROS 2 RMW (DDS included)
//! through rcl, for robots with a sourced ROS 2. Transport only, like the native
//! binding: its raw subscriptions become the [`Runner`]'s inputs and its untyped
//! publishers its outputs, so first-encounter fetch, receipts, diagnostics, the sim clock
//! and shutdown are the same code. Messages travel as raw CDR (`subscribe_raw` /
//! `publish_raw`) and are decoded with the same serde types as the native binding. rcl
//! parses `--ros-args` itself (name, namespace, remaps); parameters are loaded by our
//! own loader, exactly as in the native binding, so both validate them the same way.
//!
//! The ROS parameter services (`ros2 param list/get/describe/set`) are r2r's, over the
//! same declarations and the same validation as the native binding ([`super::r2r_params`]).
//!
//! The `query` service needs r2r's generated types for our own interface package (r2r
//! has no untyped service server), which exist only when r2r is built after the
//! interfaces are installed: feature `r2r-query`, which CMakeLists.txt adds to the
//! install-time build. Its calls cross as CDR bytes into the native binding's serde types
//! ([`query_service`], generic, type-checked by CI); the one line naming the generated
//! type compiles only there, and CI's `doc-only` check cannot see it
//! (docs/ARCHITECTURE.md, "r2r layout"). Without the feature, no `query` service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use hiroz::msg::{ZDeserializer, ZMessage};
use thiserror::Error;
use tokio::sync::mpsc;

use super::msgs::{
    Clock, CorrectedPrior, DiagnosticArray, Discrepancy, Outcome, Prediction, QueryRequest,
    QueryResponse,
};
use super::native::DEFAULT_INPUT_DEPTH;
use super::r2r_params::R2rParams;
use super::ros_params::{self, RosParamError};
use super::runner::{Inputs, Outputs, QueryCall, Runner, RunnerConfig, Undecodable};
use crate::core::ids::RecordKey;
use crate::core::record::OutcomeRecord;
use crate::node::{FleetPort, NodeLogic};

/// Why the r2r node could not start.
#[derive(Debug, Error)]
pub enum R2rError {
    /// rcl refused.
    #[error("{what}: {source}")]
    Rcl {
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: r2r::Error,
    },
    /// A parameter has no ROS 2 form.
    #[error(transparent)]
    Params(#[from] RosParamError),
}

fn rcl<T>(what: &'static str, r: r2r::Result<T>) -> Result<T, R2rError> {
    r.map_err(|source| R2rError::Rcl { what, source })
}

fn decode<T: ZMessage>(bytes: &[u8]) -> Result<T, Undecodable>
where
    for<'a> T::Serdes: ZDeserializer<Input<'a> = &'a [u8], Output = T>,
{
    <T::Serdes as ZDeserializer>::deserialize(bytes).map_err(|_| Undecodable)
}

/// One untyped publisher, shareable between the runner's tasks (r2r's is `Send`, not
/// `Sync`; publishing is a short synchronous rcl call, so a lock costs nothing that
/// matters).
struct Raw(Mutex<r2r::PublisherUntyped>);

impl Raw {
    fn publish(&self, bytes: &[u8]) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .publish_raw(bytes)
            .map_err(|e| e.to_string())
    }
}

/// The r2r node's publishers: the runner's [`Outputs`].
struct Publishers {
    prior: Raw,
    discrepancy: Raw,
    diagnostics: Raw,
}

impl Outputs for Publishers {
    async fn prior(&self, msg: &CorrectedPrior) -> Result<(), String> {
        self.prior.publish(&msg.serialize())
    }

    async fn discrepancy(&self, msg: &Discrepancy) -> Result<(), String> {
        self.discrepancy.publish(&msg.serialize())
    }

    async fn diagnostics(&self, msg: &DiagnosticArray) -> Result<(), String> {
        self.diagnostics.publish(&msg.serialize())
    }
}

/// The `query` service for a service type `S` whose request and response are
/// `qis_ros/srv/Query`'s: each call is serialized by rcl and decoded with the native
/// binding's serde types, and the answer goes back the same way.
#[cfg_attr(not(feature = "r2r-query"), allow(dead_code))]
fn query_service<S>(
    node: &mut r2r::Node,
    qos: r2r::QosProfile,
) -> Result<BoxStream<'static, Result<QueryCall, Undecodable>>, R2rError>
where
    S: r2r::WrappedServiceTypeSupport + 'static,
    S::Response: Send,
{
    use r2r::WrappedTypesupport;
    let requests = rcl("serving query", node.create_service::<S>("query", qos))?;
    Ok(requests
        .map(|req: r2r::ServiceRequest<S>| {
            let bytes = req.message.to_serialized_bytes().map_err(|_| Undecodable)?;
            let request = decode::<QueryRequest>(&bytes)?;
            let reply = move |resp: QueryResponse| -> BoxFuture<'static, Result<(), String>> {
                Box::pin(async move {
                    let typed = S::Response::from_serialized_bytes(&resp.serialize())
                        .map_err(|e| e.to_string())?;
                    req.respond(typed).map_err(|e| e.to_string())
                })
            };
            Ok(QueryCall {
                request,
                reply: Box::new(reply),
            })
        })
        .boxed())
}

/// Runs `qis_node` on r2r until `stop` resolves (SIGINT or SIGTERM in `qis node`).
/// `name` is the default node name (rcl applies `-r __node:=` / `__ns:=` from the
/// process arguments).
pub async fn run(
    name: &str,
    logic: NodeLogic,
    fleet: Arc<dyn FleetPort>,
    records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), R2rError> {
    let ctx = rcl("creating the rcl context", r2r::Context::create())?;
    let mut node = rcl("creating the node", r2r::Node::create(ctx, name, ""))?;
    let params = logic.params().clone();
    // Deep input queues, as the native binding's: bursts between two spins are kept.
    let input_qos = r2r::QosProfile::default().keep_last(DEFAULT_INPUT_DEPTH);
    let qos = r2r::QosProfile::default();
    let predictions = rcl(
        "subscribing prediction",
        node.subscribe_raw("prediction", "qis_ros/msg/Prediction", input_qos.clone()),
    )?
    .map(|b| decode::<Prediction>(&b))
    .boxed();
    let outcomes = rcl(
        "subscribing outcome",
        node.subscribe_raw("outcome", "qis_ros/msg/Outcome", input_qos),
    )?
    .map(|b| decode::<Outcome>(&b))
    .boxed();
    let prior_topic = if params.shadow_mode {
        "corrected_prior_shadow"
    } else {
        "corrected_prior"
    };
    let outputs = Arc::new(Publishers {
        prior: Raw(Mutex::new(rcl(
            "advertising corrected_prior",
            node.create_publisher_untyped(prior_topic, "qis_ros/msg/CorrectedPrior", qos.clone()),
        )?)),
        discrepancy: Raw(Mutex::new(rcl(
            "advertising discrepancy",
            node.create_publisher_untyped("discrepancy", "qis_ros/msg/Discrepancy", qos.clone()),
        )?)),
        diagnostics: Raw(Mutex::new(rcl(
            "advertising /diagnostics",
            node.create_publisher_untyped(
                "/diagnostics",
                "diagnostic_msgs/msg/DiagnosticArray",
                qos,
            ),
        )?)),
    });
    let clock = if params.use_sim_time {
        let sub = rcl(
            "subscribing /clock",
            // rclcpp's ClockQoS: the sensor-data profile (best effort) with keep last 1.
            node.subscribe_raw(
                "/clock",
                "rosgraph_msgs/msg/Clock",
                r2r::QosProfile::sensor_data().keep_last(1),
            ),
        )?;
        // An undecodable tick is skipped: the next one carries the time.
        Some(
            sub.filter_map(|b| async move { decode::<Clock>(&b).ok() })
                .boxed(),
        )
    } else {
        None
    };
    #[cfg(feature = "r2r-query")]
    let queries = Some(query_service::<r2r::qis_ros::srv::Query::Service>(
        &mut node,
        r2r::QosProfile::default(),
    )?);
    #[cfg(not(feature = "r2r-query"))]
    let queries = None;
    let fqn = rcl("reading the node name", node.fully_qualified_name())?;
    let logic = Arc::new(Mutex::new(logic));
    let declared = ros_params::declarations(&params).map_err(R2rError::Params)?;
    let served = R2rParams::new(logic.clone(), declared);
    let declared = served.len();
    let (param_services, param_events) = rcl(
        "serving the parameter services",
        node.make_derived_parameter_handler(Arc::new(Mutex::new(served))),
    )?;
    let param_task = tokio::spawn(param_services);
    // r2r reports accepted changes on this stream; they are applied and logged already,
    // so it is drained only to keep r2r's channel from filling.
    let events_task = tokio::spawn(param_events.for_each(|_| async {}));
    let runner = Runner::start(
        RunnerConfig {
            fqn,
            first_clock_wait: super::runner::DEFAULT_FIRST_CLOCK_WAIT,
        },
        logic,
        fleet,
        records,
        Inputs {
            predictions,
            outcomes,
            queries,
            clock,
        },
        outputs,
    );
    tracing::info!(
        node = name,
        shadow = params.shadow_mode,
        parameters = declared,
        "qis_node started (r2r)"
    );

    // rcl needs its executor spun; r2r's node is driven from one blocking thread.
    let spinning = Arc::new(AtomicBool::new(true));
    let spin = spinning.clone();
    let spinner = tokio::task::spawn_blocking(move || {
        while spin.load(Ordering::Relaxed) {
            node.spin_once(Duration::from_millis(10));
        }
    });
    stop.await;
    tracing::info!("shutting down");
    // The runner drains what is queued (discrepancies whose records are being written)
    // before the spinner, which delivers its publications, stops.
    runner.shutdown().await;
    spinning.store(false, Ordering::Relaxed);
    let _ = spinner.await;
    param_task.abort();
    events_task.abort();
    Ok(())
}
