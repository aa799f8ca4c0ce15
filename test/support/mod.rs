//! Shared by the node tests and benchmark: an in-process Zenoh router on a free
//! loopback port, native nodes connected to it, and a client context to talk to them
//! (a node's topics as one [`Robot`]).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hiroz::Builder;
use hiroz::context::{ZContext, ZContextBuilder};
use hiroz::msg::ZMessage;
use hiroz::node::ZNode;
use hiroz::pubsub::ZSub;
use hiroz::qos::{QosHistory, QosProfile};
use hiroz::ros_msg::WithTypeInfo;
use qis_ros::core::ids::{Fingerprint, ModelId, RecordKey, SourceId};
use qis_ros::core::record::OutcomeRecord;
use qis_ros::node::{FleetPort, NodeLogic, NodeParams};
use qis_ros::ros::msgs::{CorrectedPrior, DiagnosticArray, Discrepancy, Outcome, Prediction};
use qis_ros::ros::names::Names;
use qis_ros::ros::native::{NativeConfig, NativeNode, ZenohOptions};
use tokio::sync::mpsc;
use zenoh::sample::Sample;

/// Longest any single wait in a test may take before the test fails (hang guard only).
pub const WAIT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An in-process Zenoh router listening on 127.0.0.1; returns it and its endpoint.
pub async fn router() -> (zenoh::Session, String) {
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let cfg = hiroz::config::RouterConfigBuilder::new()
        .with_listen_endpoint(&endpoint)
        .build_config()
        .expect("router config");
    let session = zenoh::open(cfg).await.expect("router session");
    (session, endpoint)
}

/// Zenoh options of a session that reaches `router` over loopback only.
pub fn zenoh_options(router: &str) -> ZenohOptions {
    ZenohOptions {
        connect: vec![router.to_string()],
        listen: vec!["tcp/127.0.0.1:0".to_string()],
        config_file: None,
        mode: None,
    }
}

/// A client context for the test driver.
pub fn client(router: &str) -> ZContext {
    ZContextBuilder::default()
        .with_connect_endpoints([router])
        .with_listen_endpoints(["tcp/127.0.0.1:0"])
        .build()
        .expect("client context")
}

/// Deep queues so no test message is dropped by history depth.
pub fn deep_qos() -> QosProfile {
    QosProfile {
        history: QosHistory::from_depth(10_000),
        ..QosProfile::default()
    }
}

/// A subscriber of `topic` on `node` with [`deep_qos`].
pub fn deep_sub<T: ZMessage + WithTypeInfo>(
    node: &ZNode,
    topic: &str,
) -> ZSub<T, Sample, T::Serdes> {
    node.create_sub::<T>(topic)
        .with_qos(deep_qos())
        .build()
        .unwrap()
}

/// A fleet port that hands records to another node's record channel (the fleet exchange
/// stand-in) and remembers the addresses it was told about.
pub struct ChannelFleet {
    /// Where records go.
    pub to: mpsc::Sender<(RecordKey, OutcomeRecord)>,
    /// `interest` calls seen.
    pub interests: Mutex<Vec<(ModelId, Fingerprint)>>,
}

impl FleetPort for ChannelFleet {
    fn publish(&self, key: &RecordKey, record: &OutcomeRecord) {
        // A full channel drops the record, as a rate-limited exchange would; the tests
        // size it far above what they send.
        let _ = self.to.try_send((key.clone(), record.clone()));
    }

    fn interest(&self, model: &ModelId, fingerprint: &Fingerprint) {
        self.interests
            .lock()
            .unwrap()
            .push((model.clone(), *fingerprint));
    }
}

/// The far ends of the channels of [`quiet_fleet`]: while this lives, the node's fleet
/// channels stay open.
pub struct QuietFleet {
    _published: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
    _incoming: mpsc::Sender<(RecordKey, OutcomeRecord)>,
}

/// A node's fleet for a test that does not look at it: records go to a channel nobody
/// reads, no record comes in (channels of 100). Hold the [`QuietFleet`] while the node runs.
pub fn quiet_fleet() -> (
    Arc<ChannelFleet>,
    mpsc::Receiver<(RecordKey, OutcomeRecord)>,
    QuietFleet,
) {
    let (to_fleet, published) = mpsc::channel(100);
    let (incoming, rx) = mpsc::channel(100);
    let fleet = Arc::new(ChannelFleet {
        to: to_fleet,
        interests: Mutex::new(vec![]),
    });
    let ends = QuietFleet {
        _published: published,
        _incoming: incoming,
    };
    (fleet, rx, ends)
}

/// The logic and config of a native node `qis_node` in `namespace`.
fn native(
    router: &str,
    namespace: &str,
    source: &str,
    params: NodeParams,
    input_depth: usize,
) -> (NodeLogic, NativeConfig) {
    let logic = NodeLogic::new(params, SourceId::new(source).unwrap()).unwrap();
    let config = NativeConfig {
        names: Names::new("qis_node", namespace, vec![]).unwrap(),
        domain_id: 0,
        zenoh: zenoh_options(router),
        input_depth,
    };
    (logic, config)
}

/// Starts a native node `qis_node` in `namespace`.
pub async fn start_node(
    router: &str,
    namespace: &str,
    source: &str,
    params: NodeParams,
    fleet: Arc<dyn FleetPort>,
    records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
) -> NativeNode {
    let (logic, config) = native(router, namespace, source, params, 10_000);
    NativeNode::start(config, logic, fleet, records)
        .await
        .expect("node starts")
}

/// [`start_node`] with input queues of 100 whose inputs wait at most `first_clock_wait`
/// for the first `/clock` under `use_sim_time` (`NativeNode::start_with`).
pub async fn start_node_with(
    router: &str,
    namespace: &str,
    source: &str,
    params: NodeParams,
    first_clock_wait: Duration,
    fleet: Arc<dyn FleetPort>,
    records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
) -> NativeNode {
    let (logic, config) = native(router, namespace, source, params, 100);
    NativeNode::start_with(config, first_clock_wait, logic, fleet, records)
        .await
        .expect("node starts")
}

/// Publishers and subscribers of one node's topics, on the test's client node.
pub struct Robot {
    pub pred: hiroz::pubsub::ZPub<Prediction, hiroz::msg::SerdeCdrSerdes<Prediction>>,
    pub out: hiroz::pubsub::ZPub<Outcome, hiroz::msg::SerdeCdrSerdes<Outcome>>,
    pub prior: ZSub<CorrectedPrior, Sample, hiroz::msg::SerdeCdrSerdes<CorrectedPrior>>,
    pub disc: ZSub<Discrepancy, Sample, hiroz::msg::SerdeCdrSerdes<Discrepancy>>,
}

impl Robot {
    /// The topics of the node in `ns`, once each is matched (bounded by [`WAIT`]).
    pub async fn new(node: &ZNode, ns: &str) -> Robot {
        let r = Robot {
            pred: node
                .create_pub(&format!("{ns}/prediction"))
                .build()
                .unwrap(),
            out: node.create_pub(&format!("{ns}/outcome")).build().unwrap(),
            prior: deep_sub(node, &format!("{ns}/corrected_prior")),
            disc: deep_sub(node, &format!("{ns}/discrepancy")),
        };
        assert!(
            r.pred.wait_for_subscription(1, WAIT).await,
            "{ns}/prediction matched"
        );
        assert!(
            r.out.wait_for_subscription(1, WAIT).await,
            "{ns}/outcome matched"
        );
        assert!(
            r.prior.wait_for_publisher(1, WAIT).await,
            "{ns}/corrected_prior matched"
        );
        assert!(
            r.disc.wait_for_publisher(1, WAIT).await,
            "{ns}/discrepancy matched"
        );
        r
    }
}

/// Waits for `f` to hold, polling; panics after [`WAIT`].
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Receives the next message or panics after [`WAIT`].
pub async fn recv<F: std::future::Future<Output = zenoh::Result<T>>, T>(what: &str, f: F) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The value of `key` in the node's first diagnostics status, if it reports one.
pub fn diag_value(d: &DiagnosticArray, key: &str) -> Option<String> {
    d.status[0]
        .values
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.clone())
}
