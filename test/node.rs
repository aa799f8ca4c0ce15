//! `qis_node` end to end over ROS 2 topics on loopback (native binding, in-process
//! Zenoh router on 127.0.0.1): two nodes correct each other's predictions through a
//! fleet port, malformed inputs are rejected and counted while the node keeps serving,
//! diagnostics and the query service answer.

mod support;

use std::sync::{Arc, Mutex};

use hiroz::Builder;
use qis_ros::core::ids::{Fingerprint, ModelId, RecordKey};
use qis_ros::core::record::OutcomeRecord;
use qis_ros::node::{FleetPort, NodeParams, RejectKind};
use qis_ros::ros::msgs::{
    Clock, CorrectedPrior, DiagnosticArray, Discrepancy, Outcome, Prediction, Query, QueryRequest,
    Scenario, Time,
};
use support::*;
use tokio::sync::mpsc;

fn prediction(ep: &str, tag: &str, state: &[f64]) -> Prediction {
    Prediction {
        episode_id: ep.into(),
        model_id: "wm-1".into(),
        scenario: Scenario {
            tags: vec![tag.into()],
            ..Scenario::default()
        },
        state: state.to_vec(),
        ..Prediction::default()
    }
}

fn outcome(ep: &str, state: &[f64]) -> Outcome {
    Outcome {
        episode_id: ep.into(),
        state: state.to_vec(),
        ..Outcome::default()
    }
}

/// Robot (test/support) as this file's tests drive it.
impl Robot {
    /// One episode: prediction, its corrected prior, then the outcome and its discrepancy.
    async fn episode(&self, p: &Prediction, measured: &[f64]) -> (CorrectedPrior, Discrepancy) {
        self.pred.async_publish(p).await.unwrap();
        let prior = recv("corrected prior", self.prior.async_recv()).await;
        assert_eq!(prior.episode_id, p.episode_id);
        self.out
            .async_publish(&outcome(&p.episode_id, measured))
            .await
            .unwrap();
        let d = recv("discrepancy", self.disc.async_recv()).await;
        assert_eq!(d.episode_id, p.episode_id);
        (prior, d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_correct_each_others_predictions_over_ros_topics() {
    let (_router, endpoint) = router().await;
    let (to_a, rx_a) = mpsc::channel(10_000);
    let (to_b, rx_b) = mpsc::channel(10_000);
    let fleet_a = Arc::new(ChannelFleet {
        to: to_b,
        interests: Mutex::new(vec![]),
    });
    let fleet_b = Arc::new(ChannelFleet {
        to: to_a,
        interests: Mutex::new(vec![]),
    });
    let a = start_node(
        &endpoint,
        "/a",
        "robot-a",
        NodeParams::default(),
        fleet_a.clone(),
        rx_a,
    )
    .await;
    let b = start_node(
        &endpoint,
        "/b",
        "robot-b",
        NodeParams::default(),
        fleet_b.clone(),
        rx_b,
    )
    .await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("driver").build().unwrap();
    let ra = Robot::new(&driver, "/a").await;
    let rb = Robot::new(&driver, "/b").await;

    // Robot A learns that reality runs +0.8 ahead of the model on ice ...
    for i in 0..20 {
        let (prior, d) = ra
            .episode(
                &prediction(&format!("a{i}"), "road=ice", &[1.0, 0.0]),
                &[1.8, 0.0],
            )
            .await;
        assert!((d.residual[0] - 0.8).abs() < 1e-12);
        assert_eq!(prior.sources, u32::from(i > 0));
    }
    // ... and robot B that reality runs −0.5 behind on gravel.
    for i in 0..20 {
        rb.episode(
            &prediction(&format!("b{i}"), "road=gravel", &[2.0, 2.0]),
            &[1.5, 2.0],
        )
        .await;
    }
    wait_until("A's records at B", || {
        b.logic().lock().unwrap().report().counters.records_received >= 1
    })
    .await;
    wait_until("B's records at A", || {
        a.logic().lock().unwrap().report().counters.records_received >= 1
    })
    .await;
    // Both nodes told the exchange about the address they met first.
    assert_eq!(fleet_a.interests.lock().unwrap().len(), 1);
    assert_eq!(fleet_b.interests.lock().unwrap().len(), 1);
    // B has never been on ice, yet its first prediction there is corrected by A's
    // outcomes; and A's first prediction on gravel by B's.
    let (on_ice, _) = rb
        .episode(&prediction("b-ice", "road=ice", &[1.0, 0.0]), &[1.8, 0.0])
        .await;
    // A is a stranger to B (they share no address, no admission list): its 20 outcomes
    // weigh trust.initial x 20 = 2, at most synthesis.max_young_weight = 2, and young
    // evidence carries the fallback k0 (5) again on top of k0 (the fallback 5 too: too
    // little is held to learn it), so the fleet gets w = 2 / (2 + 5 + 5) of the
    // correction until A earns B's trust. Two outcomes' worth is thin support, so B's one
    // neighbor (its own gravel address: same key, another value) may inform the prior a
    // little, toward its -0.5; it never replaces A's evidence.
    let young = 2.0 / (2.0 + 5.0 + 5.0);
    let thin = |p: &CorrectedPrior, exact: f64, neighbor: f64| {
        assert!(
            p.r#match == CorrectedPrior::MATCH_EXACT || p.r#match == CorrectedPrior::MATCH_NEIGHBOR,
            "{p:?}"
        );
        let c = p.correction[0];
        let alone = exact * young;
        assert!(
            (c - alone) * (neighbor - exact).signum() >= -1e-6
                && (c - alone).abs() < 0.05 * (neighbor - exact).abs(),
            "{c} vs {alone} alone: {p:?}"
        );
        assert!(p.support >= 20 && p.sources >= 1, "{p:?}");
    };
    thin(&on_ice, 0.8, -0.5);
    assert!((on_ice.state[0] - (1.0 + on_ice.correction[0])).abs() < 1e-9);
    let (on_gravel, _) = ra
        .episode(
            &prediction("a-gravel", "road=gravel", &[2.0, 2.0]),
            &[1.5, 2.0],
        )
        .await;
    thin(&on_gravel, -0.5, 0.8);

    // The query service names the fleet's sources behind B's ice address.
    let client = driver.create_client::<Query>("/b/query").build().unwrap();
    let req = QueryRequest {
        scenario: prediction("", "road=ice", &[]).scenario,
        model_id: "wm-1".into(),
    };
    let resp = tokio::time::timeout(WAIT, client.call(&req))
        .await
        .expect("query answered")
        .unwrap();
    assert_eq!(resp.error, "");
    assert_eq!(resp.fingerprint, on_ice.fingerprint);
    assert_eq!(
        resp.source_ids,
        vec!["robot-b".to_string(), "robot-a".to_string()]
    );
    assert_eq!(resp.support, 21);
    assert!((resp.mean_residual[0] - 0.8).abs() < 1e-9);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_are_rejected_counted_and_reported_while_the_node_serves() {
    let (_router, endpoint) = router().await;
    let (fleet, rx, _quiet) = quiet_fleet();
    let params = NodeParams {
        diagnostics_period_s: 0.05,
        shadow_mode: true,
        ..NodeParams::default()
    };
    let n = start_node(&endpoint, "/m", "robot-m", params, fleet, rx).await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("driver").build().unwrap();
    let pred = driver
        .create_pub::<Prediction>("/m/prediction")
        .build()
        .unwrap();
    let out = driver.create_pub::<Outcome>("/m/outcome").build().unwrap();
    let shadow = deep_sub::<CorrectedPrior>(&driver, "/m/corrected_prior_shadow");
    let diag = deep_sub::<DiagnosticArray>(&driver, "/diagnostics");
    assert!(pred.wait_for_subscription(1, WAIT).await);
    assert!(out.wait_for_subscription(1, WAIT).await);
    assert!(shadow.wait_for_publisher(1, WAIT).await);

    let mut nan = prediction("nan", "k=v", &[f64::NAN]);
    pred.async_publish(&nan).await.unwrap();
    nan.state = vec![1.0, 2.0];
    nan.covariance = vec![1.0, 2.0, 3.0];
    pred.async_publish(&nan).await.unwrap();
    pred.async_publish(&prediction("big", "k=v", &vec![0.0; 100_000]))
        .await
        .unwrap();
    out.async_publish(&outcome("never-predicted", &[1.0]))
        .await
        .unwrap();
    // Every refused prediction is still answered: with no state where it has none usable,
    // with its own state (uncorrected) where it has one.
    for (ep, state) in [("nan", vec![]), ("nan", vec![1.0, 2.0]), ("big", vec![])] {
        let echo = recv("shadow echo", shadow.async_recv()).await;
        assert_eq!((echo.episode_id.as_str(), &echo.state), (ep, &state));
        assert_eq!(echo.r#match, CorrectedPrior::MATCH_NONE);
        assert_eq!(echo.confidence, 0.0);
    }
    // A valid episode, then its duplicates.
    pred.async_publish(&prediction("ok", "k=v", &[1.0]))
        .await
        .unwrap();
    let first = recv("shadow prior", shadow.async_recv()).await;
    assert_eq!(first.episode_id, "ok");
    pred.async_publish(&prediction("ok", "k=v", &[1.0]))
        .await
        .unwrap();
    let again = recv("shadow prior of the duplicate", shadow.async_recv()).await;
    assert_eq!(
        (again.episode_id.as_str(), &again.state),
        ("ok", &first.state)
    );
    out.async_publish(&outcome("ok", &[1.0, 1.0]))
        .await
        .unwrap();
    out.async_publish(&outcome("ok", &[1.5])).await.unwrap();
    wait_until("the valid outcome", || {
        n.logic().lock().unwrap().report().counters.outcomes == 1
    })
    .await;
    out.async_publish(&outcome("ok", &[1.5])).await.unwrap();
    wait_until("all rejections", || {
        n.logic().lock().unwrap().report().counters.rejected_total() == 7
    })
    .await;
    let c = n.logic().lock().unwrap().report().counters;
    assert_eq!(c.rejected(RejectKind::NonFinite), 1);
    assert_eq!(c.rejected(RejectKind::DimensionMismatch), 2);
    assert_eq!(c.rejected(RejectKind::Oversized), 1);
    assert_eq!(c.rejected(RejectKind::NoPrediction), 1);
    assert_eq!(c.rejected(RejectKind::Duplicate), 2);

    // Still serving, on the shadow topic, and /diagnostics reports the counts.
    pred.async_publish(&prediction("after", "k=v", &[1.0]))
        .await
        .unwrap();
    let after = recv("shadow prior after errors", shadow.async_recv()).await;
    assert_eq!(after.episode_id, "after");
    // Shadow mode: the correction learned from one outcome (+0.5) is reported as the
    // error it would have removed.
    assert!(after.correction[0] > 0.0);
    let report = loop {
        let d = recv("diagnostics", diag.async_recv()).await;
        let status = &d.status[0];
        let get = |k: &str| {
            status
                .values
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.clone())
        };
        if get("predictions").as_deref() == Some("2") {
            break status.clone();
        }
    };
    let get = |k: &str| {
        report
            .values
            .iter()
            .find(|kv| kv.key == k)
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(report.name, "/m/qis_node: outcome memory");
    assert_eq!(report.hardware_id, "robot-m");
    assert_eq!(get("shadow_mode"), "true");
    assert_eq!(get("rejected.duplicate"), "2");
    assert_eq!(get("rejected.dimension_mismatch"), "2");
    assert_eq!(get("rejected.oversized"), "1");
    assert_eq!(get("rejected.non_finite"), "1");
    assert_eq!(get("rejected.no_prediction"), "1");
    assert_eq!(get("predictions_uncorrected"), "3");
    assert_eq!(get("predictions_unanswered"), "0");
    assert_eq!(get("pending"), "1");
    assert!(get("zenoh_routers").parse::<usize>().unwrap() >= 1);
    n.shutdown().await;
}

/// A planner waiting on `corrected_prior` never starves: a prediction whose scenario
/// cannot be fingerprinted (numeric `speed` has no bins, `unknown_features: error`) gets
/// its own state back with `MATCH_NONE` and confidence 0, at the rate it is sent, and
/// `/diagnostics` counts every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbinned_numeric_feature_is_answered_uncorrected_and_counted() {
    let (_router, endpoint) = router().await;
    let (to_fleet, _fleet_rx) = mpsc::channel(100);
    let (_records_tx, rx) = mpsc::channel(100);
    let fleet = Arc::new(ChannelFleet {
        to: to_fleet,
        interests: Mutex::new(vec![]),
    });
    let params = NodeParams {
        diagnostics_period_s: 0.05,
        ..NodeParams::default()
    };
    let n = start_node(&endpoint, "/f", "robot-f", params, fleet, rx).await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("driver").build().unwrap();
    let r = Robot::new(&driver, "/f").await;
    let diag = driver
        .create_sub::<DiagnosticArray>("/diagnostics")
        .with_qos(deep_qos())
        .build()
        .unwrap();
    // Learned: a correction at the tag's own address would show in a leaked answer.
    for i in 0..5 {
        r.episode(
            &prediction(&format!("k{i}"), "road=ice", &[1.0, 2.0]),
            &[1.5, 2.0],
        )
        .await;
    }
    const BAD: usize = 20;
    for i in 0..BAD {
        let mut p = prediction(&format!("u{i}"), "road=ice", &[1.0 + i as f64, -2.0]);
        p.scenario.feature_names = vec!["speed".into()];
        p.scenario.features = vec![3.0];
        p.covariance = vec![0.25, 4.0];
        r.pred.async_publish(&p).await.unwrap();
    }
    for i in 0..BAD {
        let prior = recv("uncorrected prior", r.prior.async_recv()).await;
        assert_eq!(prior.episode_id, format!("u{i}"));
        assert_eq!(prior.r#match, CorrectedPrior::MATCH_NONE);
        assert_eq!(prior.confidence, 0.0);
        assert_eq!(prior.state, vec![1.0 + i as f64, -2.0], "state unchanged");
        assert_eq!(prior.covariance, vec![0.25, 0.0, 0.0, 4.0]);
        assert_eq!(prior.correction, vec![0.0, 0.0]);
        assert_eq!(prior.support, 0);
    }
    let c = n.logic().lock().unwrap().report().counters;
    assert_eq!(c.rejected(RejectKind::BadScenario), BAD as u64);
    assert_eq!(c.predictions_uncorrected, BAD as u64);
    assert_eq!(c.predictions, 5);
    loop {
        let d = recv("diagnostics", diag.async_recv()).await;
        let v = |k: &str| diag_value(&d, k);
        if v("rejected.bad_scenario") == Some(BAD.to_string()) {
            assert_eq!(v("predictions_uncorrected"), Some(BAD.to_string()));
            break;
        }
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_sim_time_follows_clock() {
    let (_router, endpoint) = router().await;
    let (fleet, rx, _quiet) = quiet_fleet();
    let params = NodeParams {
        use_sim_time: true,
        pending_timeout_s: 10.0,
        diagnostics_period_s: 0.05,
        ..NodeParams::default()
    };
    let n = start_node(&endpoint, "/s", "robot-s", params, fleet, rx).await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("sim").build().unwrap();
    let clock = driver.create_pub::<Clock>("/clock").build().unwrap();
    let pred = driver
        .create_pub::<Prediction>("/s/prediction")
        .build()
        .unwrap();
    let prior = deep_sub::<CorrectedPrior>(&driver, "/s/corrected_prior");
    let diag = deep_sub::<DiagnosticArray>(&driver, "/diagnostics");
    assert!(clock.wait_for_subscription(1, WAIT).await);
    assert!(pred.wait_for_subscription(1, WAIT).await);
    let at = |sec| Clock {
        clock: Time { sec, nanosec: 0 },
    };
    // Diagnostics are stamped with sim time once /clock runs.
    clock.async_publish(&at(1_000)).await.unwrap();
    loop {
        let d = recv("diagnostics", diag.async_recv()).await;
        if d.header.stamp.sec == 1_000 {
            break;
        }
    }
    pred.async_publish(&prediction("p", "k=v", &[1.0]))
        .await
        .unwrap();
    recv("prior", prior.async_recv()).await;
    assert_eq!(n.logic().lock().unwrap().report().pending, 1);
    // Nine simulated seconds later the prediction still waits; past ten it has expired,
    // however little wall-clock time went by.
    clock.async_publish(&at(1_009)).await.unwrap();
    loop {
        let d = recv("diagnostics", diag.async_recv()).await;
        if d.header.stamp.sec == 1_009 {
            break;
        }
    }
    assert_eq!(
        n.logic().lock().unwrap().report().counters.pending_expired,
        0
    );
    clock.async_publish(&at(1_011)).await.unwrap();
    wait_until("sim-time expiry", || {
        n.logic().lock().unwrap().report().counters.pending_expired == 1
    })
    .await;
    n.shutdown().await;
}

/// Writes an ed25519 identity key file (mode 0600) from a seed; returns its source id.
fn identity_file(path: &std::path::Path, seed: u8) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    std::fs::write(path, hex::encode(key.to_bytes())).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    hex::encode(key.verifying_key().as_bytes())
}

/// Starts `qis node` as a process: its own store, the fleet exchange on loopback
/// (listening on `listen`, connecting to `peer`), ROS over the test's router. Signed
/// (the default): its identity is `<store>.key`; `admitted` is the fleet's admission
/// list (public keys = source ids).
fn spawn_qis_node(
    router: &str,
    ns: &str,
    admitted: &[&str],
    store: &std::path::Path,
    listen: u16,
    peer: u16,
) -> tokio::process::Child {
    let allowed: Vec<String> = admitted.iter().map(|k| format!("\"{k}\"")).collect();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_qis"))
        .args(["node", "--connect", router, "--listen", "tcp/127.0.0.1:0"])
        .args(["--ros-args", "-r", &format!("__ns:={ns}")])
        .args([
            "-p",
            &format!("exchange.allowed_keys:=[{}]", allowed.join(",")),
        ])
        // Generous bounds so a loaded machine cannot turn the first-encounter fetch into
        // an uncorrected answer (they bound waits; nothing here measures speed).
        .args(["-p", "first_encounter_wait_s:=20.0"])
        .args(["-p", "exchange.query_timeout_ms:=10000"])
        .args(["-p", &format!("store_path:={}", store.display())])
        .args([
            "-p",
            &format!("exchange.listen:=[\"tcp/127.0.0.1:{listen}\"]"),
        ])
        .args([
            "-p",
            &format!("exchange.connect:=[\"tcp/127.0.0.1:{peer}\"]"),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qis binary starts")
}

/// Waits (hang guard `WAIT`) until the fleet exchange listening on `port` serves a
/// record of `source` with sequence number `seq`.
async fn served_seq_reaches(port: u16, source: &str, seq: u64) {
    let mut cfg = zenoh::Config::default();
    cfg.insert_json5("mode", "\"peer\"").unwrap();
    cfg.insert_json5("listen/endpoints", "[]").unwrap();
    cfg.insert_json5("connect/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]"))
        .unwrap();
    cfg.insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let session = zenoh::open(cfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let replies = session.get(format!("qis/v2/**/{source}")).await.unwrap();
        let mut best = 0;
        while let Ok(reply) = replies.recv_async().await {
            if let Ok(sample) = reply.result() {
                let bytes = sample.payload().to_bytes();
                if let Ok(d) = qis_ros::core::record::decode(&bytes) {
                    best = best.max(d.record.seq.0);
                }
            }
        }
        if best >= seq {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "served seq {best} < {seq}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    session.close().await.unwrap();
}

/// The whole stack in separate processes: two `qis node`s, each with its own redb store
/// and the Zenoh fleet exchange. B's FIRST prediction in a scenario only A has met is
/// corrected by A's outcomes (fetched before answering); A killed with SIGKILL and
/// restarted on its store still holds every outcome it had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qis_node_processes_share_outcomes_over_the_fleet_and_survive_sigkill() {
    let (_router, endpoint) = router().await;
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let store_a = dir.path().join("a.redb");
    let store_b = dir.path().join("b.redb");
    // The fleet's operator admits both keys; identities live beside the stores.
    let robot_a = identity_file(&store_a.with_extension("key"), 1);
    let robot_b = identity_file(&store_b.with_extension("key"), 2);
    let admitted = [robot_a.as_str(), robot_b.as_str()];
    let mut a = spawn_qis_node(&endpoint, "/pa", &admitted, &store_a, pa, pb);
    let _b = spawn_qis_node(&endpoint, "/pb", &admitted, &store_b, pb, pa);
    let ctx = client(&endpoint);
    let driver = ctx.create_node("driver").build().unwrap();
    let ra = Robot::new(&driver, "/pa").await;
    let rb = Robot::new(&driver, "/pb").await;

    for i in 0..10 {
        let (_, d) = ra
            .episode(
                &prediction(&format!("a{i}"), "road=ice", &[1.0, 0.0]),
                &[1.8, 0.0],
            )
            .await;
        assert!((d.residual[0] - 0.8).abs() < 1e-12);
    }
    // A serves (and publishes) a record only after its durable write: once the fleet
    // sees seq 10, all ten outcomes are on A's disk.
    served_seq_reaches(pa, &robot_a, 10).await;
    // B's first prediction on ice asks the fleet before answering.
    let (prior, _) = rb
        .episode(&prediction("b0", "road=ice", &[1.0, 0.0]), &[1.8, 0.0])
        .await;
    assert_eq!(prior.r#match, CorrectedPrior::MATCH_EXACT, "{prior:?}");
    assert_eq!(prior.sources, 1);
    assert_eq!(prior.support, 10);
    let s = f64::from(prior.support);
    // Shared times are rounded down to the minute, so B sees A's outcomes up to a minute
    // older than they are: a one-day half-life shifts the weight by < 5e-4.
    assert!(
        (prior.correction[0] - 0.8 * s / (s + 5.0)).abs() < 1e-3,
        "{:?}",
        prior.correction
    );

    // kill -9 and restart on the same store: A's own outcomes are all still there.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    drop(ra);
    // A new fleet port: the identity of a robot is its store and source id, and the
    // killed process's port may still be held by the kernel for a moment.
    let _a2 = spawn_qis_node(&endpoint, "/pa", &admitted, &store_a, free_port(), pb);
    let ra = Robot::new(&driver, "/pa").await;
    // The killed node's graph entries can outlive it for a moment, so "matched" may still
    // mean the dead subscriber: send fresh episodes until the new node answers one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let prior = loop {
        let p = prediction(&format!("a-after-{}", free_port()), "road=ice", &[1.0, 0.0]);
        ra.pred.async_publish(&p).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(2), ra.prior.async_recv());
        if let Ok(Ok(prior)) = answer.await {
            break prior;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "restarted node never answered"
        );
    };
    assert!(prior.support >= 10, "restored support {}", prior.support);
    assert!(
        prior.support <= 11,
        "no outcome counted twice: {}",
        prior.support
    );
    assert!(prior.correction[0] > 0.5, "{:?}", prior.correction);
}

/// A fleet port whose store always fails: every receipt answers "not durable".
struct FailingStore;

impl qis_ros::node::FleetPort for FailingStore {
    fn publish(
        &self,
        _key: &qis_ros::core::ids::RecordKey,
        _record: &qis_ros::core::record::OutcomeRecord,
    ) {
    }

    fn own_record_receipt(
        &self,
        _key: &qis_ros::core::ids::RecordKey,
        _record: &qis_ros::core::record::OutcomeRecord,
        _share: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(false);
        Some(rx)
    }
}

/// The discrepancy is the receipt of a durable outcome: when the write fails there is
/// none, the failure is counted (`outcomes_not_durable`), and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_discrepancy_without_a_durable_write() {
    let (_router, endpoint) = router().await;
    let (_records_tx, rx) = mpsc::channel(100);
    let n = start_node(
        &endpoint,
        "/d",
        "robot-d",
        NodeParams::default(),
        Arc::new(FailingStore),
        rx,
    )
    .await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("driver").build().unwrap();
    let r = Robot::new(&driver, "/d").await;
    for i in 0..3 {
        let p = prediction(&format!("d{i}"), "road=ice", &[1.0, 0.0]);
        r.pred.async_publish(&p).await.unwrap();
        let prior = recv("corrected prior", r.prior.async_recv()).await;
        assert_eq!(prior.episode_id, p.episode_id, "the node keeps serving");
        r.out
            .async_publish(&outcome(&p.episode_id, &[1.5, 0.0]))
            .await
            .unwrap();
    }
    wait_until("three writes reported failed", || {
        n.logic()
            .lock()
            .unwrap()
            .report()
            .counters
            .outcomes_not_durable
            == 3
    })
    .await;
    let got =
        tokio::time::timeout(std::time::Duration::from_millis(500), r.disc.async_recv()).await;
    assert!(
        got.is_err(),
        "a discrepancy without a durable write: {got:?}"
    );
    n.shutdown().await;
}

/// Under `use_sim_time` with no `/clock` at all, an input waits only as long as the
/// first-clock bound: then it is answered (at sim time 0, as rclcpp reads it) and counted
/// as `sim_time_unset` in `/diagnostics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clock_inputs_wait_the_bound_then_are_counted() {
    let (_router, endpoint) = router().await;
    let (fleet, rx, _quiet) = quiet_fleet();
    let params = NodeParams {
        use_sim_time: true,
        diagnostics_period_s: 0.05,
        first_encounter_wait_s: 0.0,
        ..NodeParams::default()
    };
    let bound = std::time::Duration::from_millis(300);
    let started = std::time::Instant::now();
    let n = start_node_with(&endpoint, "/u", "robot-u", params, bound, fleet, rx).await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("no_sim").build().unwrap();
    let pred = driver
        .create_pub::<Prediction>("/u/prediction")
        .build()
        .unwrap();
    let prior = deep_sub::<CorrectedPrior>(&driver, "/u/corrected_prior");
    let diag = deep_sub::<DiagnosticArray>(&driver, "/diagnostics");
    assert!(pred.wait_for_subscription(1, WAIT).await);
    assert!(prior.wait_for_publisher(1, WAIT).await);
    pred.async_publish(&prediction("u-1", "k=v", &[1.0]))
        .await
        .unwrap();
    let p = recv("prior", prior.async_recv()).await;
    assert_eq!(p.episode_id, "u-1");
    assert!(started.elapsed() >= bound, "answered before the bound");
    loop {
        let d = recv("diagnostics", diag.async_recv()).await;
        let v = |k: &str| diag_value(&d, k);
        if v("sim_time_unset").as_deref() == Some("1") {
            assert_eq!(v("sim_time_started").as_deref(), Some("false"));
            break;
        }
    }
    n.shutdown().await;
}

/// The answer a fetch waits for.
type Found = tokio::sync::oneshot::Sender<Vec<(RecordKey, OutcomeRecord)>>;

/// A fleet whose fetches are never answered (a silent queryable on the key space): the
/// node waits `first_encounter_wait_s` for each, counting them.
struct SilentFleet {
    pending: Mutex<Vec<Found>>,
}

impl FleetPort for SilentFleet {
    fn publish(&self, _key: &RecordKey, _record: &OutcomeRecord) {}

    fn fetch(
        &self,
        _model: &ModelId,
        _fingerprint: &Fingerprint,
    ) -> Option<tokio::sync::oneshot::Receiver<Vec<(RecordKey, OutcomeRecord)>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap().push(tx);
        Some(rx)
    }
}

/// A first encounter waits for the fleet on its own task: predictions behind it are
/// answered first, and it is answered once its wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_fleet_delays_only_the_first_encounter_it_is_asked_about() {
    let (_router, endpoint) = router().await;
    let fleet = Arc::new(SilentFleet {
        pending: Mutex::new(Vec::new()),
    });
    let (_records_tx, records_rx) = mpsc::channel(10);
    let params = NodeParams {
        first_encounter_wait_s: 2.0,
        ..NodeParams::default()
    };
    let n = start_node(
        &endpoint,
        "/s",
        "robot-s",
        params,
        fleet.clone(),
        records_rx,
    )
    .await;
    let ctx = client(&endpoint);
    let driver = ctx.create_node("silent_driver").build().unwrap();
    let r = Robot::new(&driver, "/s").await;
    // The first prediction at ice is a first encounter; the next ones at ice are not.
    for ep in ["first", "second", "third"] {
        r.pred
            .async_publish(&prediction(ep, "road=ice", &[1.0, 0.0]))
            .await
            .unwrap();
    }
    let order: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(recv("prior", r.prior.async_recv()).await.episode_id);
        }
        v
    };
    assert_eq!(
        order,
        ["second", "third", "first"],
        "answered in this order"
    );
    assert_eq!(fleet.pending.lock().unwrap().len(), 1, "one fetch asked");
    n.shutdown().await;
}

/// A program embeds the whole node (store, identity, fleet exchange, binding) with the
/// builder `qis node` uses, and shuts it down with its store flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_program_runs_the_node_through_the_builder() {
    let (_router, endpoint) = router().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("embedded.redb");
    let node = qis_ros::app::Node::builder()
        .params(NodeParams {
            min_count_to_share: 1,
            ..NodeParams::default()
        })
        .names(qis_ros::ros::names::Names::new("qis_node", "/emb", vec![]).unwrap())
        .zenoh(zenoh_options(&endpoint))
        .store_path(&store)
        .build()
        .await
        .expect("the builder starts the node");
    let ctx = client(&endpoint);
    let driver = ctx.create_node("embedding_driver").build().unwrap();
    let r = Robot::new(&driver, "/emb").await;
    let (prior, disc) = r
        .episode(&prediction("emb-1", "road=ice", &[1.0, 0.0]), &[1.5, 0.0])
        .await;
    assert_eq!(prior.episode_id, "emb-1");
    assert_eq!(disc.episode_id, "emb-1");
    node.shutdown().await;
    // The outcome is in the store, and the key beside it (signed by default).
    let kept = qis_ros::core::store::Store::open(&store, Default::default())
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(kept.iter().filter(|r| r.own).count(), 1, "{kept:?}");
    assert!(store.with_extension("key").exists());
}
