//! The native binding: `qis_node` on ROS 2 over Zenoh (rmw_zenoh wire format) through
//! hiroz, with no ROS installation. One task per concern (predictions, outcomes, fleet
//! records, query service, diagnostics, sim clock), all around one [`NodeLogic`] behind
//! a mutex that is never held across an await, stopped by one cancellation token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hiroz::Builder;
use hiroz::context::{ZContext, ZContextBuilder};
use hiroz::node::ZNode;
use hiroz::parameter::{Parameter, SetParametersResult};
use hiroz::qos::{QosDurability, QosDuration, QosHistory, QosProfile, QosReliability};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::logging::{self, LogRecord};
use super::msgs::{
    Clock, CorrectedPrior, DiagnosticArray, DiagnosticStatus, Discrepancy, Header, KeyValue, Log,
    Outcome, Prediction, Query, Time,
};
use super::names::{NameError, Names};
use super::ros_params::{self, RosParamError};
use crate::core::ids::{Fingerprint, ModelId, RecordKey};
use crate::core::record::OutcomeRecord;
use crate::node::{FleetPort, InputError, LogLimiter, NodeLogic, NodeParams};

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

/// Default longest wait of an input for the first `/clock` under `use_sim_time`.
pub const DEFAULT_FIRST_CLOCK_WAIT: Duration = Duration::from_secs(10);

/// rclcpp's clock QoS (`rclcpp::ClockQoS`: the sensor-data profile, best effort, keep
/// last 1), which simulator bridges (Gazebo's, Isaac Sim's) publish `/clock` with.
pub fn clock_qos() -> QosProfile {
    QosProfile {
        reliability: QosReliability::BestEffort,
        history: QosHistory::from_depth(1),
        ..QosProfile::default()
    }
}

/// Sim time and whether it has started (under `use_sim_time`).
#[derive(Debug)]
struct SimTime {
    now: AtomicI64,
    started: tokio::sync::watch::Sender<bool>,
    /// Inputs handled with no `/clock` yet, after the wait ran out.
    unset: AtomicU64,
    /// Until when an input waits for the first `/clock`.
    wait_until: tokio::time::Instant,
}

/// The node's time: system time, or the latest `/clock` under `use_sim_time`.
#[derive(Clone, Debug)]
struct NodeClock {
    sim: Option<Arc<SimTime>>,
}

impl NodeClock {
    fn now_ns(&self) -> i64 {
        match &self.sim {
            // Before the first /clock message sim time is 0, as in rclcpp; inputs wait
            // for it (`ready`).
            Some(t) => t.now.load(Ordering::Relaxed),
            None => super::clock::system_ns(),
        }
    }

    /// Under `use_sim_time`, waits until the first `/clock` has arrived, at most until
    /// the node's first-clock deadline; past it the input goes on with sim time 0 and is
    /// counted (`sim_time_unset`). Immediate with the system clock or once sim time runs.
    async fn ready(&self, what: &str) {
        let Some(sim) = &self.sim else { return };
        let mut started = sim.started.subscribe();
        if *started.borrow() {
            return;
        }
        let waited = tokio::time::timeout_at(sim.wait_until, started.wait_for(|s| *s)).await;
        if !matches!(waited, Ok(Ok(_))) {
            let n = sim.unset.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                tracing::warn!(
                    "use_sim_time: no /clock yet; {what} handled at sim time 0 (counted as sim_time_unset in /diagnostics)"
                );
            }
        }
    }

    /// Diagnostics of the sim clock (none with the system clock).
    fn report(&self) -> Vec<(String, String)> {
        self.sim.as_ref().map_or_else(Vec::new, |s| {
            vec![
                ("sim_time_started".into(), s.started.borrow().to_string()),
                (
                    "sim_time_unset".into(),
                    s.unset.load(Ordering::Relaxed).to_string(),
                ),
            ]
        })
    }
}

type Shared = Arc<Mutex<NodeLogic>>;

fn lock(logic: &Shared) -> MutexGuard<'_, NodeLogic> {
    // A panic while holding the lock would be a bug in the logic; the counters it
    // guards stay meaningful, so keep serving rather than poison every task.
    logic.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs a rejected input, rate-limited per kind.
struct RejectLog {
    limiter: LogLimiter,
    start: Instant,
}

impl RejectLog {
    fn new() -> Self {
        RejectLog {
            limiter: LogLimiter::new(1_000_000_000),
            start: Instant::now(),
        }
    }

    fn log(&mut self, topic: &str, e: &InputError) {
        let now = i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX);
        if let Some(suppressed) = self.limiter.allow(e.kind(), now) {
            tracing::warn!(
                topic,
                kind = e.kind().as_str(),
                suppressed,
                "input rejected: {e}"
            );
        }
    }
}

/// Most discrepancies waiting for their outcome's durable write.
const DISCREPANCY_QUEUE: usize = 4096;

/// Asks the fleet about an address met for the first time and merges the answer before
/// the prediction is answered; without an answer in time the prediction goes on
/// uncorrected (records that arrive later still count for the next one).
async fn fetch_first(
    logic: &Shared,
    clock: &NodeClock,
    fleet: &dyn FleetPort,
    model: &ModelId,
    fp: &Fingerprint,
    wait: Duration,
) {
    let Some(rx) = fleet.fetch(model, fp) else {
        fleet.interest(model, fp);
        return;
    };
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(found)) => {
            let now = clock.now_ns();
            let mut l = lock(logic);
            for (key, record) in found {
                l.on_record(&key, record, now);
            }
        }
        Ok(Err(_)) => tracing::debug!(fingerprint = %fp, "fleet fetch dropped"),
        Err(_) => {
            tracing::debug!(fingerprint = %fp, "fleet fetch timed out; answering uncorrected")
        }
    }
}

/// Declares every node parameter (`ros2 param list/get/describe`) and applies
/// `ros2 param set` to the logic: validated there, all of one request or none. Returns
/// how many parameters were declared.
fn serve_parameters(
    node: &ZNode,
    params: &NodeParams,
    logic: &Shared,
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

/// A running native node.
pub struct NativeNode {
    logic: Shared,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    names: Names,
    clock: NodeClock,
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
        mut records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
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
        let logic: Shared = Arc::new(Mutex::new(logic));
        let declared = serve_parameters(&node, &params, &logic)?;
        let first_wait = Duration::from_secs_f64(params.first_encounter_wait_s);
        let clock = NodeClock {
            sim: params.use_sim_time.then(|| {
                Arc::new(SimTime {
                    now: AtomicI64::new(0),
                    started: tokio::sync::watch::Sender::new(false),
                    unset: AtomicU64::new(0),
                    wait_until: tokio::time::Instant::now() + first_clock_wait,
                })
            }),
        };
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
        let mut query_srv = ros(
            "serving query",
            node.create_service::<Query>(&topic("query")?).build(),
        )?;
        let clock_sub = match &clock.sim {
            Some(_) => Some(ros(
                "subscribing /clock",
                node.create_sub::<Clock>(&topic("/clock")?)
                    .with_qos(clock_qos())
                    .build(),
            )?),
            None => None,
        };

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();

        {
            let (logic, cancel, clock, fleet) =
                (logic.clone(), cancel.clone(), clock.clone(), fleet.clone());
            tasks.spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => break,
                        m = pred_sub.async_recv() => m,
                    };
                    let Ok(p) = msg else {
                        lock(&logic).on_malformed();
                        tracing::warn!("prediction: undecodable message dropped");
                        continue;
                    };
                    clock.ready("prediction").await;
                    let first = lock(&logic).first_encounter(&p);
                    if let Some((model, fp)) = first {
                        fetch_first(&logic, &clock, fleet.as_ref(), &model, &fp, first_wait).await;
                    }
                    let (result, interests) = {
                        let mut l = lock(&logic);
                        let r = l.on_prediction(&p, clock.now_ns());
                        (r, l.drain_interests().collect::<Vec<_>>())
                    };
                    for (model, fp) in &interests {
                        fleet.interest(model, fp);
                    }
                    // Refused predictions are answered too and logged by the logic.
                    if let Some(prior) = result.prior()
                        && let Err(e) = prior_pub.async_publish(prior).await
                    {
                        tracing::error!(episode_id = %prior.episode_id, "publishing corrected prior: {e}");
                    }
                }
            });
        }
        // Discrepancies leave in arrival order, each once its outcome's record is durable
        // (a discrepancy is the node's receipt for an outcome). The queue is bounded, so a
        // store that falls behind slows the outcome task rather than growing memory.
        let (receipts_tx, mut receipts_rx) = mpsc::channel::<(
            Option<tokio::sync::oneshot::Receiver<bool>>,
            Discrepancy,
        )>(DISCREPANCY_QUEUE);
        let receipt_logic = logic.clone();
        tasks.spawn(async move {
            // Drains the queue to its end after the outcome task stops (at shutdown the
            // link writes what is pending, so every receipt is answered).
            while let Some((receipt, discrepancy)) = receipts_rx.recv().await {
                if let Some(receipt) = receipt
                    && !receipt.await.unwrap_or(false)
                {
                    // The discrepancy is the receipt of a durable outcome: none without.
                    lock(&receipt_logic).on_not_durable();
                    tracing::error!(
                        episode_id = %discrepancy.episode_id,
                        "outcome not written to the store: no discrepancy published"
                    );
                    continue;
                }
                if let Err(e) = disc_pub.async_publish(&discrepancy).await {
                    tracing::error!(episode_id = %discrepancy.episode_id, "publishing discrepancy: {e}");
                }
            }
        });
        {
            let (logic, cancel, clock, fleet) =
                (logic.clone(), cancel.clone(), clock.clone(), fleet.clone());
            tasks.spawn(async move {
                let mut rejects = RejectLog::new();
                loop {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => break,
                        m = out_sub.async_recv() => m,
                    };
                    let Ok(o) = msg else {
                        lock(&logic).on_malformed();
                        tracing::warn!("outcome: undecodable message dropped");
                        continue;
                    };
                    clock.ready("outcome").await;
                    let result = lock(&logic).on_outcome(&o, clock.now_ns());
                    match result {
                        Ok(effect) => {
                            let (key, record) = &effect.own_record;
                            let receipt = fleet.own_record_receipt(key, record, effect.share);
                            if receipts_tx
                                .send((receipt, effect.discrepancy))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => rejects.log("outcome", &e),
                    }
                }
            });
        }
        {
            let (logic, cancel, clock) = (logic.clone(), cancel.clone(), clock.clone());
            tasks.spawn(async move {
                loop {
                    let rec = tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = records.recv() => r,
                    };
                    let Some((key, record)) = rec else { break };
                    let r = lock(&logic).on_record(&key, record, clock.now_ns());
                    tracing::trace!(fingerprint = %key.fingerprint, source = %key.source, ?r, "fleet record");
                }
            });
        }
        {
            let (logic, cancel, clock) = (logic.clone(), cancel.clone(), clock.clone());
            tasks.spawn(async move {
                loop {
                    let req = tokio::select! {
                        _ = cancel.cancelled() => break,
                        r = query_srv.async_take_request() => r,
                    };
                    let Ok(req) = req else {
                        lock(&logic).on_malformed();
                        tracing::warn!("query: undecodable request dropped");
                        continue;
                    };
                    let (q, reply) = req.into_parts();
                    let resp = lock(&logic).query(&q, clock.now_ns());
                    if let Err(e) = reply.reply(&resp).await {
                        tracing::warn!("query: reply failed: {e}");
                    }
                }
            });
        }
        {
            let (logic, cancel, clock, fleet) =
                (logic.clone(), cancel.clone(), clock.clone(), fleet.clone());
            let period = Duration::from_secs_f64(params.diagnostics_period_s);
            let (name, node_ref) = (format!("{}: outcome memory", names.fqn()), node.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(period);
                let mut last = (Instant::now(), 0u64, 0u64, 0u64);
                let mut fleet_rejected_before = 0u64;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let now = clock.now_ns();
                    let report = {
                        let mut l = lock(&logic);
                        l.expire(now);
                        (l.report(), l.source().as_str().to_owned())
                    };
                    let (report, source) = report;
                    let c = &report.counters;
                    let dt = last.0.elapsed().as_secs_f64().max(1e-9);
                    let rate = |n: u64, before: u64| format!("{:.1}", (n - before) as f64 / dt);
                    let (fleet_values, fleet_rejected) = fleet.diagnostics();
                    // Input refused by the node plus records refused from the network.
                    let rejected_now = c.rejected_total() - last.3
                        + fleet_rejected.saturating_sub(fleet_rejected_before);
                    fleet_rejected_before = fleet_rejected;
                    let mut values = report.key_values();
                    values.extend(fleet_values);
                    values.push(("prediction_rate_hz".into(), rate(c.predictions, last.1)));
                    values.push(("outcome_rate_hz".into(), rate(c.outcomes, last.2)));
                    values.push((
                        "rosout_dropped".into(),
                        logging::rosout_dropped().to_string(),
                    ));
                    values.extend(clock.report());
                    let info = node_ref.session().info();
                    values.push((
                        "zenoh_peers".into(),
                        info.peers_zid().await.count().to_string(),
                    ));
                    values.push((
                        "zenoh_routers".into(),
                        info.routers_zid().await.count().to_string(),
                    ));
                    last = (
                        Instant::now(),
                        c.predictions,
                        c.outcomes,
                        c.rejected_total(),
                    );
                    let (level, message) = if rejected_now > 0 {
                        (
                            DiagnosticStatus::WARN,
                            format!("{rejected_now} inputs rejected since the last report"),
                        )
                    } else {
                        (DiagnosticStatus::OK, "ok".to_string())
                    };
                    let msg = DiagnosticArray {
                        header: Header {
                            stamp: Time::from_nanos(now),
                            frame_id: String::new(),
                        },
                        status: vec![DiagnosticStatus {
                            level,
                            name: name.clone(),
                            message,
                            hardware_id: source,
                            values: values
                                .into_iter()
                                .map(|(key, value)| KeyValue { key, value })
                                .collect(),
                        }],
                    };
                    if let Err(e) = diag_pub.async_publish(&msg).await {
                        tracing::warn!("publishing diagnostics: {e}");
                    }
                }
            });
        }
        if let (Some(sub), Some(sim)) = (clock_sub, clock.sim.clone()) {
            let cancel = cancel.clone();
            tasks.spawn(async move {
                loop {
                    let m = tokio::select! {
                        _ = cancel.cancelled() => break,
                        m = sub.async_recv() => m,
                    };
                    if let Ok(c) = m {
                        sim.now.store(c.clock.as_nanos(), Ordering::Relaxed);
                        sim.started
                            .send_if_modified(|s| !std::mem::replace(s, true));
                    }
                }
            });
        }
        tracing::info!(node = %names.fqn(), corrected_prior = %prior_topic, shadow, parameters = declared, "qis_node started");
        Ok(NativeNode {
            logic,
            cancel,
            tasks,
            names,
            clock,
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
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
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
        });
        Ok(())
    }

    /// The node logic (counters, memory), shared with the node's tasks.
    pub fn logic(&self) -> &Arc<Mutex<NodeLogic>> {
        &self.logic
    }

    /// The node's names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The node's current time (ns): the latest `/clock` under `use_sim_time`, else the
    /// system time. Lets a driver of simulated time wait until the node has seen a tick.
    pub fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                tracing::error!("node task panicked: {e}");
            }
        }
    }
}
