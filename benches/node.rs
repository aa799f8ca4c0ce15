//! qis_node over ROS 2 topics on loopback (native binding, in-process router, 127.0.0.1):
//! predictions/s through the node and round-trip latency, against a bare hiroz echo node
//! (subscribe Prediction, publish a CorrectedPrior copied from it, no logic) measured in
//! the same run. Prints figures; asserts nothing about them.
//!
//!     cargo bench --bench node            (N=... QIS_BENCH_N to change the count)

#[path = "../test/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hiroz::Builder;
use hiroz::msg::SerdeCdrSerdes;
use hiroz::pubsub::{ZPub, ZSub};
use qis_ros::node::NodeParams;
use qis_ros::ros::msgs::{CorrectedPrior, Prediction, Scenario};
use support::*;
use tokio::sync::mpsc;
use zenoh::sample::Sample;

type Pub = ZPub<Prediction, SerdeCdrSerdes<Prediction>>;
type Sub = ZSub<CorrectedPrior, Sample, SerdeCdrSerdes<CorrectedPrior>>;

/// Predictions in flight at most during the throughput run (no queue overflows).
const WINDOW: usize = 256;

fn prediction(i: usize) -> Prediction {
    Prediction {
        episode_id: format!("ep-{i}"),
        model_id: "wm-bench".into(),
        scenario: Scenario {
            tags: vec!["road=ice".into(), "weather=snow".into()],
            ..Scenario::default()
        },
        state: vec![1.0, 2.0, 3.0, 4.0],
        covariance: vec![0.1; 4],
        ..Prediction::default()
    }
}

/// Windowed throughput: predictions per second, first send to last reply.
async fn throughput(publ: &Pub, sub: &Sub, first: usize, n: usize) -> f64 {
    let start = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while got < n {
        while sent < n && sent - got < WINDOW {
            publ.async_publish(&prediction(first + sent)).await.unwrap();
            sent += 1;
        }
        recv("reply", sub.async_recv()).await;
        got += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One at a time: round-trip latencies in microseconds, sorted.
async fn latencies(publ: &Pub, sub: &Sub, first: usize, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        publ.async_publish(&prediction(first + i)).await.unwrap();
        recv("reply", sub.async_recv()).await;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench() {
    let n: usize = std::env::var("QIS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let (_router, endpoint) = router().await;

    // The node under test.
    let (to_fleet, _fleet_rx) = mpsc::channel(1);
    let (_records_tx, rx) = mpsc::channel(1);
    let fleet = Arc::new(ChannelFleet {
        to: to_fleet,
        interests: Mutex::new(vec![]),
    });
    let params = NodeParams {
        max_pending: 4 * n,
        ..NodeParams::default()
    };
    let node = start_node(&endpoint, "/q", "robot-q", params, fleet, rx).await;

    // The baseline: a bare hiroz echo in its own session.
    let echo_ctx = client(&endpoint);
    let echo = echo_ctx.create_node("echo").build().unwrap();
    let echo_in = echo
        .create_sub::<Prediction>("/e/prediction")
        .with_qos(deep_qos())
        .build()
        .unwrap();
    let echo_out = echo
        .create_pub::<CorrectedPrior>("/e/corrected_prior")
        .build()
        .unwrap();
    let echo_task = tokio::spawn(async move {
        while let Ok(p) = echo_in.async_recv().await {
            let reply = CorrectedPrior {
                header: p.header,
                episode_id: p.episode_id,
                model_id: p.model_id,
                fingerprint: "0".repeat(32),
                state: p.state,
                covariance: vec![0.0; 16],
                correction: vec![0.0; 4],
                ..CorrectedPrior::default()
            };
            if echo_out.async_publish(&reply).await.is_err() {
                break;
            }
        }
    });

    let ctx = client(&endpoint);
    let driver = ctx.create_node("driver").build().unwrap();
    let mut ends = Vec::new();
    for ns in ["/q", "/e"] {
        let p: Pub = driver
            .create_pub(&format!("{ns}/prediction"))
            .build()
            .unwrap();
        let s: Sub = driver
            .create_sub(&format!("{ns}/corrected_prior"))
            .with_qos(deep_qos())
            .build()
            .unwrap();
        assert!(p.wait_for_subscription(1, WAIT).await);
        assert!(s.wait_for_publisher(1, WAIT).await);
        ends.push((p, s));
    }
    let (qp, qs) = &ends[0];
    let (ep, es) = &ends[1];

    // Warm-up both paths, then alternate so both see the same machine conditions.
    throughput(qp, qs, 0, 2_000).await;
    throughput(ep, es, 0, 2_000).await;
    let node_rate = throughput(qp, qs, 10_000, n).await;
    let echo_rate = throughput(ep, es, 10_000, n).await;
    let rounds = (n / 10).max(100);
    let node_lat = latencies(qp, qs, 20_000 + n, rounds).await;
    let echo_lat = latencies(ep, es, 20_000 + n, rounds).await;

    let c = node.logic().lock().unwrap().report().counters;
    println!(
        "qis_node over ROS 2 topics (hiroz/rmw_zenoh, loopback, one process, {n} predictions, window {WINDOW}):"
    );
    println!(
        "  throughput  node {node_rate:>9.0} predictions/s   bare echo {echo_rate:>9.0} msg/s   ratio {:.2}",
        node_rate / echo_rate
    );
    println!(
        "  round trip  node p50 {:>7.1} us  p99 {:>7.1} us   bare echo p50 {:>7.1} us  p99 {:>7.1} us",
        pct(&node_lat, 0.5),
        pct(&node_lat, 0.99),
        pct(&echo_lat, 0.5),
        pct(&echo_lat, 0.99)
    );
    println!(
        "  added by the node per prediction: p50 {:.1} us, p99 {:.1} us ({rounds} round trips each)",
        pct(&node_lat, 0.5) - pct(&echo_lat, 0.5),
        pct(&node_lat, 0.99) - pct(&echo_lat, 0.99)
    );
    println!(
        "  node counters: {} predictions answered, {} rejected",
        c.predictions,
        c.rejected_total()
    );
    echo_task.abort();
    node.shutdown().await;
}

fn main() {
    // cargo bench passes --bench; a plain `cargo test --benches` smoke run passes nothing
    // and runs a small count.
    if std::env::args().all(|a| a != "--bench") && std::env::var("QIS_BENCH_N").is_err() {
        // SAFETY: single-threaded at this point, before the runtime starts.
        unsafe { std::env::set_var("QIS_BENCH_N", "2000") };
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(600), bench())
                .await
                .expect("benchmark finishes")
        });
}
