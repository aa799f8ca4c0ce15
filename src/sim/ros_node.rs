//! Simulated robots whose prediction/outcome loop runs through real `qis_node` instances
//! over ROS 2 topics (native binding, rmw_zenoh wire format), so the demo exercises the
//! whole stack: CDR messages, the node's tasks, its pairing, its outcome memory and its
//! fleet port.
//!
//! Layout: one in-process Zenoh router on 127.0.0.1, one [`NativeNode`] per node robot
//! (namespace `/robot_NNNNN`, `use_sim_time`), and one driver context that publishes the
//! robot's `prediction` and `outcome` and `/clock`, and subscribes its `corrected_prior`
//! and `discrepancy`. The node's [`FleetPort`] is wired to the robot's endpoint on the
//! simulator's exchange: own records the node shares (its privacy budget) are queued and
//! published into the exchange by the driver after each episode (the driver's traffic
//! budget), first-encounter fetches are answered with what the driver's follow of the
//! address returned, and every other record the endpoint receives is fed into the node's record
//! channel before the next prediction. The other simulated robots run the same
//! `NodeLogic` in process; these ones add the binding, the topics and the CDR.
//!
//! The simulator is synchronous: a 2-thread tokio runtime runs the nodes, and the driver
//! blocks on it once per message exchange (hiroz panics under `current_thread`).
//!
//! Time: the node follows `/clock`; before each prediction the driver publishes the
//! simulated time of the episode and waits until the node has seen it, so outcome
//! timestamps and decay match the in-process robots exactly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hiroz::Builder;
use hiroz::context::{ZContext, ZContextBuilder};
use hiroz::msg::SerdeCdrSerdes;
use hiroz::node::ZNode;
use hiroz::pubsub::{ZPub, ZSub};
use hiroz::qos::{QosHistory, QosProfile};
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use crate::core::ids::{Fingerprint, ModelId, RecordKey, SourceId};
use crate::core::record::OutcomeRecord;
use crate::node::{FleetPort, NodeLogic, NodeParams};
use crate::ros::msgs::{Clock, CorrectedPrior, Discrepancy, Outcome, Prediction, Time};
use crate::ros::names::Names;
use crate::ros::native::{NativeConfig, NativeNode, ZenohOptions};

use super::SimError;

/// Default number of node robots of `qis sim` (`--ros-robots`).
pub const DEFAULT_ROS_ROBOTS: usize = 2;

/// Longest wait for one reply of a node (a hang guard; a healthy node answers in ms).
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Queue depth of the driver's subscriptions and of the node's record channel.
const DEPTH: usize = 4096;

fn ros_err(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Ros(format!("{what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain queues: consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the node handed to its fleet port, waiting for the driver.
#[derive(Default)]
struct PortState {
    /// Own records to share, in the order the node produced them.
    published: Vec<(RecordKey, OutcomeRecord)>,
    /// Addresses the node asked to follow outside a fetch.
    interests: Vec<(ModelId, Fingerprint)>,
    /// Answers of first-encounter fetches, prepared by the driver before the prediction.
    prepared: HashMap<Fingerprint, Vec<(RecordKey, OutcomeRecord)>>,
    /// Fetches the node made.
    fetches: u64,
}

/// The node's fleet port in the simulator: a queue between the node's tasks and the
/// driver, which owns the robot's (single-threaded) exchange endpoint.
#[derive(Default)]
pub struct SimPort {
    state: Mutex<PortState>,
}

impl FleetPort for SimPort {
    fn publish(&self, key: &RecordKey, record: &OutcomeRecord) {
        lock(&self.state)
            .published
            .push((key.clone(), record.clone()));
    }

    fn interest(&self, model: &ModelId, fingerprint: &Fingerprint) {
        lock(&self.state)
            .interests
            .push((model.clone(), *fingerprint));
    }

    fn fetch(
        &self,
        _model: &ModelId,
        fingerprint: &Fingerprint,
    ) -> Option<oneshot::Receiver<Vec<(RecordKey, OutcomeRecord)>>> {
        let (tx, rx) = oneshot::channel();
        let found = {
            let mut s = lock(&self.state);
            s.fetches += 1;
            s.prepared.remove(fingerprint).unwrap_or_default()
        };
        // The receiver is awaited right after this returns; a send cannot fail before.
        let _ = tx.send(found);
        Some(rx)
    }
}

/// Figures of the node robots of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RosFigures {
    /// Robots whose loop ran through a `qis_node`.
    pub robots: usize,
    /// Their episodes (prediction → corrected prior → outcome → discrepancy).
    pub episodes: u64,
    /// Median round trip prediction published → corrected prior received (ms).
    pub round_trip_p50_ms: f64,
    /// 99th percentile of that round trip (ms).
    pub round_trip_p99_ms: f64,
    /// Median round trip outcome published → discrepancy received (ms).
    pub outcome_p50_ms: f64,
    /// Own records the nodes shared through their fleet port into the exchange.
    pub records_published: u64,
    /// Records of other robots fed to the nodes (fetch answers and record channel).
    pub records_fed: u64,
    /// First-encounter fetches the nodes made through their fleet port.
    pub fetches: u64,
    /// Scored first encounters of a class other robots had seen, node robots only.
    pub first_encounters: u64,
    /// Normalized RMSE of the node's corrected prior on those first encounters.
    pub qis_rmse_first_encounter: f64,
    /// Normalized RMSE of the raw world model on the same episodes.
    pub raw_rmse_first_encounter: f64,
    /// Normalized RMSE of the node's corrected prior after warm-up.
    pub qis_rmse_after_warmup: f64,
    /// Normalized RMSE of the raw world model after warm-up, same episodes.
    pub raw_rmse_after_warmup: f64,
}

/// The node robots' shared machinery: runtime, router and driver context.
pub struct RosNodes {
    runtime: Arc<Runtime>,
    endpoint: String,
    driver: Option<Arc<ZNode>>,
    clock: Option<Arc<ZPub<Clock, SerdeCdrSerdes<Clock>>>>,
    ctx: Option<ZContext>,
    router: Option<zenoh::Session>,
    attached: usize,
}

fn qos() -> QosProfile {
    QosProfile {
        history: QosHistory::from_depth(DEPTH),
        ..QosProfile::default()
    }
}

impl RosNodes {
    /// Starts the router on a free 127.0.0.1 port, the runtime and the driver context.
    pub fn start() -> Result<RosNodes, SimError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ros_err("tokio runtime", e))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| ros_err("finding a free loopback port", e))?
            .port();
        let endpoint = format!("tcp/127.0.0.1:{port}");
        let cfg = hiroz::config::RouterConfigBuilder::new()
            .with_listen_endpoint(&endpoint)
            .build_config()
            .map_err(|e| ros_err("router config", e))?;
        let router = runtime
            .block_on(async { zenoh::open(cfg).await })
            .map_err(|e| ros_err("router", e))?;
        let ctx = runtime
            .block_on(async {
                ZContextBuilder::default()
                    .with_connect_endpoints([endpoint.as_str()])
                    .with_listen_endpoints(["tcp/127.0.0.1:0"])
                    .build()
            })
            .map_err(|e| ros_err("driver context", e))?;
        let driver = runtime
            .block_on(async { ctx.create_node("qis_sim_driver").build() })
            .map_err(|e| ros_err("driver node", e))?;
        let clock = runtime
            .block_on(async { driver.create_pub::<Clock>("/clock").build() })
            .map_err(|e| ros_err("advertising /clock", e))?;
        tracing::info!(router = %endpoint, "sim: router for the qis_node robots started");
        Ok(RosNodes {
            runtime: Arc::new(runtime),
            endpoint,
            driver: Some(Arc::new(driver)),
            clock: Some(Arc::new(clock)),
            ctx: Some(ctx),
            router: Some(router),
            attached: 0,
        })
    }

    /// Starts a `qis_node` for robot `name` (its namespace: `/robot_00017` for
    /// `robot-00017`) with source id `source`, and the driver's end of its topics.
    pub fn attach(
        &mut self,
        name: &str,
        source: &SourceId,
        params: NodeParams,
    ) -> Result<NodeRobot, SimError> {
        let (Some(driver), Some(clock)) = (&self.driver, &self.clock) else {
            return Err(SimError::Ros("driver already closed".into()));
        };
        let ns = format!("/{}", name.replace('-', "_"));
        let logic =
            NodeLogic::new(params, source.clone()).map_err(|e| ros_err("node params", e))?;
        let config = NativeConfig {
            names: Names::new("qis_node", &ns, vec![]).map_err(|e| ros_err("node name", e))?,
            domain_id: 0,
            zenoh: ZenohOptions {
                connect: vec![self.endpoint.clone()],
                listen: vec!["tcp/127.0.0.1:0".into()],
                config_file: None,
                mode: None,
            },
            input_depth: DEPTH,
        };
        let port = Arc::new(SimPort::default());
        let (to_node, records) = mpsc::channel(DEPTH);
        let driver = driver.clone();
        let clock = clock.clone();
        let fleet: Arc<dyn FleetPort> = port.clone();
        self.attached += 1;
        let nodes = self.attached;
        let (node, io) = self.runtime.block_on(async move {
            let node = NativeNode::start(config, logic, fleet, records)
                .await
                .map_err(|e| ros_err("starting qis_node", e))?;
            let pred = driver
                .create_pub::<Prediction>(&format!("{ns}/prediction"))
                .build()
                .map_err(|e| ros_err("advertising prediction", e))?;
            let out = driver
                .create_pub::<Outcome>(&format!("{ns}/outcome"))
                .build()
                .map_err(|e| ros_err("advertising outcome", e))?;
            let prior = driver
                .create_sub::<CorrectedPrior>(&format!("{ns}/corrected_prior"))
                .with_qos(qos())
                .build()
                .map_err(|e| ros_err("subscribing corrected_prior", e))?;
            let disc = driver
                .create_sub::<Discrepancy>(&format!("{ns}/discrepancy"))
                .with_qos(qos())
                .build()
                .map_err(|e| ros_err("subscribing discrepancy", e))?;
            // Every topic matched before the first message, or that message is lost.
            let matched = pred.wait_for_subscription(1, REPLY_TIMEOUT).await
                && out.wait_for_subscription(1, REPLY_TIMEOUT).await
                && prior.wait_for_publisher(1, REPLY_TIMEOUT).await
                && disc.wait_for_publisher(1, REPLY_TIMEOUT).await
                && clock.wait_for_subscription(nodes, REPLY_TIMEOUT).await;
            if !matched {
                return Err(SimError::Ros(format!("{ns}: topics did not match")));
            }
            Ok((
                node,
                Io {
                    pred,
                    out,
                    prior,
                    disc,
                    clock,
                },
            ))
        })?;
        tracing::info!(node = %node.names().fqn(), "sim: robot runs through qis_node");
        Ok(NodeRobot {
            runtime: self.runtime.clone(),
            node: Some(node),
            port,
            to_node,
            io: Some(io),
            round_trips_us: Vec::new(),
            outcome_us: Vec::new(),
            published: 0,
            fed: 0,
        })
    }
}

impl Drop for RosNodes {
    fn drop(&mut self) {
        self.clock.take();
        self.driver.take();
        self.ctx.take();
        if let Some(router) = self.router.take()
            && let Err(e) = self.runtime.block_on(async { router.close().await })
        {
            tracing::warn!(error = %e, "sim: closing the router of the node robots failed");
        }
    }
}

/// The driver's publishers and subscribers of one node.
struct Io {
    pred: ZPub<Prediction, SerdeCdrSerdes<Prediction>>,
    out: ZPub<Outcome, SerdeCdrSerdes<Outcome>>,
    prior: ZSub<CorrectedPrior, zenoh::sample::Sample, SerdeCdrSerdes<CorrectedPrior>>,
    disc: ZSub<Discrepancy, zenoh::sample::Sample, SerdeCdrSerdes<Discrepancy>>,
    clock: Arc<ZPub<Clock, SerdeCdrSerdes<Clock>>>,
}

/// A simulated robot whose loop runs through its own `qis_node`.
pub struct NodeRobot {
    runtime: Arc<Runtime>,
    node: Option<NativeNode>,
    port: Arc<SimPort>,
    to_node: mpsc::Sender<(RecordKey, OutcomeRecord)>,
    io: Option<Io>,
    round_trips_us: Vec<u64>,
    outcome_us: Vec<u64>,
    published: u64,
    fed: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl NodeRobot {
    fn parts(&self) -> Result<(&NativeNode, &Io), SimError> {
        match (&self.node, &self.io) {
            (Some(n), Some(io)) => Ok((n, io)),
            _ => Err(SimError::Ros("node robot already shut down".into())),
        }
    }

    /// Hands the records the robot's endpoint received to the node: those at `first`
    /// (an address the robot meets for the first time) answer the node's fetch; the
    /// others go into its record channel.
    pub fn deliver(
        &mut self,
        first: Option<Fingerprint>,
        records: Vec<(RecordKey, OutcomeRecord)>,
    ) -> Result<(), SimError> {
        let mut channel = Vec::new();
        {
            let mut s = lock(&self.port.state);
            for (key, record) in records {
                self.fed += 1;
                if Some(key.fingerprint) == first {
                    s.prepared
                        .entry(key.fingerprint)
                        .or_default()
                        .push((key, record));
                } else {
                    channel.push((key, record));
                }
            }
            if let Some(fp) = first {
                // An empty answer still answers the fetch (nothing known yet).
                s.prepared.entry(fp).or_default();
            }
        }
        self.feed(channel)
    }

    fn feed(&self, records: Vec<(RecordKey, OutcomeRecord)>) -> Result<(), SimError> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.to_node.clone();
        self.runtime.block_on(async move {
            for r in records {
                tx.send(r)
                    .await
                    .map_err(|_| SimError::Ros("node's record channel closed".into()))?;
            }
            Ok(())
        })
    }

    /// Publishes `/clock` = `now_ns` and `p`, and returns the node's corrected prior.
    pub fn predict(&mut self, now_ns: i64, p: &Prediction) -> Result<CorrectedPrior, SimError> {
        let (node, io) = self.parts()?;
        let to_node = &self.to_node;
        let (prior, took) = self.runtime.block_on(async {
            let deadline = Instant::now() + REPLY_TIMEOUT;
            io.clock
                .async_publish(&Clock {
                    clock: Time::from_nanos(now_ns),
                })
                .await
                .map_err(|e| ros_err("publishing /clock", e))?;
            // The node must be at this episode's time, and have taken every fed record
            // off its channel, before it sees the prediction.
            while node.now_ns() < now_ns || to_node.capacity() < to_node.max_capacity() {
                if Instant::now() >= deadline {
                    return Err(SimError::Ros(
                        "node did not reach the episode's time".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let started = Instant::now();
            io.pred
                .async_publish(p)
                .await
                .map_err(|e| ros_err("publishing prediction", e))?;
            let prior = tokio::time::timeout(REPLY_TIMEOUT, io.prior.async_recv())
                .await
                .map_err(|_| SimError::Ros(format!("no corrected prior for {}", p.episode_id)))?
                .map_err(|e| ros_err("corrected prior", e))?;
            Ok::<_, SimError>((prior, started.elapsed()))
        })?;
        if prior.episode_id != p.episode_id {
            return Err(SimError::Ros(format!(
                "corrected prior for {} while waiting for {}",
                prior.episode_id, p.episode_id
            )));
        }
        self.round_trips_us.push(micros(took));
        // A prepared answer the node did not fetch goes to its channel instead.
        let left: Vec<_> = lock(&self.port.state)
            .prepared
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        self.feed(left)?;
        Ok(prior)
    }

    /// Publishes the outcome of an episode; returns the node's discrepancy and the own
    /// records it shared through its fleet port meanwhile.
    #[allow(clippy::type_complexity)]
    pub fn outcome(
        &mut self,
        o: &Outcome,
    ) -> Result<(Discrepancy, Vec<(RecordKey, OutcomeRecord)>), SimError> {
        let (_, io) = self.parts()?;
        let (disc, took) = self.runtime.block_on(async {
            let started = Instant::now();
            io.out
                .async_publish(o)
                .await
                .map_err(|e| ros_err("publishing outcome", e))?;
            let d = tokio::time::timeout(REPLY_TIMEOUT, io.disc.async_recv())
                .await
                .map_err(|_| SimError::Ros(format!("no discrepancy for {}", o.episode_id)))?
                .map_err(|e| ros_err("discrepancy", e))?;
            Ok::<_, SimError>((d, started.elapsed()))
        })?;
        if disc.episode_id != o.episode_id {
            return Err(SimError::Ros(format!(
                "discrepancy for {} while waiting for {}",
                disc.episode_id, o.episode_id
            )));
        }
        self.outcome_us.push(micros(took));
        // The node hands its record to the port before it publishes the discrepancy.
        let shared = std::mem::take(&mut lock(&self.port.state).published);
        Ok((disc, shared))
    }

    /// Counts an own record that reached the exchange.
    pub fn count_published(&mut self) {
        self.published += 1;
    }

    /// Addresses the node asked the fleet to follow since the last call.
    pub fn interests(&mut self) -> Vec<(ModelId, Fingerprint)> {
        std::mem::take(&mut lock(&self.port.state).interests)
    }

    /// Stops the node (the robot left the fleet, or the run ended).
    pub fn shutdown(&mut self) {
        self.io.take();
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.shutdown());
        }
    }
}

impl Drop for NodeRobot {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sums the node robots' figures (error figures are filled by the caller).
pub fn figures<'a>(nodes: impl Iterator<Item = &'a NodeRobot>) -> RosFigures {
    let (mut trips, mut outs) = (Vec::new(), Vec::new());
    let mut f = RosFigures::default();
    for n in nodes {
        f.robots += 1;
        trips.extend_from_slice(&n.round_trips_us);
        outs.extend_from_slice(&n.outcome_us);
        f.records_published += n.published;
        f.records_fed += n.fed;
        f.fetches += lock(&n.port.state).fetches;
    }
    trips.sort_unstable();
    outs.sort_unstable();
    f.episodes = outs.len() as u64;
    f.round_trip_p50_ms = percentile(&trips, 0.5) as f64 / 1000.0;
    f.round_trip_p99_ms = percentile(&trips, 0.99) as f64 / 1000.0;
    f.outcome_p50_ms = percentile(&outs, 0.5) as f64 / 1000.0;
    f
}
