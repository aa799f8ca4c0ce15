//! Interop: an independent ROS 2 client (Python, eclipse-zenoh + rosbags, none of our
//! code) talks to `qis_node` over the rmw_zenoh wire protocol and checks the replies
//! field by field (test/interop_client.py). Needs `python3 -m pip install
//! eclipse-zenoh==1.10.2 rosbags` (CI installs them).

mod support;

use std::process::Stdio;
use std::time::Duration;

use qis_ros::node::NodeParams;
use support::*;

/// Runs the Python script test/`script` with `args`; returns its stdout once it has
/// exited 0 within `limit`.
async fn python(script: &str, args: &[&str], limit: Duration) -> String {
    let script = format!("{}/test/{script}", env!("CARGO_MANIFEST_DIR"));
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("the client finishes")
        .expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed:\n{stdout}\n{stderr}");
    stdout
}

/// Runs test/interop_ros.py against the router; returns its stdout after checking that
/// every check passed.
async fn interop_ros(endpoint: &str, namespace: &str, what: &str) -> String {
    let args = ["--router", endpoint, "--namespace", namespace, what];
    let stdout = python("interop_ros.py", &args, 3 * WAIT).await;
    assert!(stdout.contains("\"checks_passed\""), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ros2_param_list_get_describe_set_over_the_wire() {
    let (_router, endpoint) = router().await;
    let (fleet, rx, _quiet) = quiet_fleet();
    let node = start_node(&endpoint, "/p", "robot-p", NodeParams::default(), fleet, rx).await;
    let stdout = interop_ros(&endpoint, "p", "params").await;
    assert!(stdout.contains("\"checks_passed\": 62"), "{stdout}");
    let params = node.logic().lock().unwrap().params().clone();
    assert_eq!(params.synthesis.prior_strength, 1.0);
    assert_eq!(
        params.trust.tolerance,
        NodeParams::default().trust.tolerance
    );
    assert_eq!(params.max_pending, NodeParams::default().max_pending);
    node.shutdown().await;
}

/// `use_sim_time` driven by a best-effort `/clock` as simulator bridges publish it: the
/// node subscribes with rclcpp's clock QoS, holds a prediction that arrives before the
/// first `/clock` and answers it once sim time runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_effort_clock_drives_use_sim_time() {
    let (_router, endpoint) = router().await;
    let (fleet, rx, _quiet) = quiet_fleet();
    let params = NodeParams {
        use_sim_time: true,
        diagnostics_period_s: 0.1,
        first_encounter_wait_s: 0.0,
        ..NodeParams::default()
    };
    // A wait far beyond the test's: the answer must come from the clock, not the bound.
    let node = start_node_with(&endpoint, "/c", "robot-c", params, 10 * WAIT, fleet, rx).await;
    let stdout = interop_ros(&endpoint, "c", "clock").await;
    assert!(stdout.contains("\"checks_passed\": 11"), "{stdout}");
    assert_eq!(node.now_ns(), 1_000_000_000_000);
    assert_eq!(
        node.logic().lock().unwrap().report().counters.predictions,
        1
    );
    node.shutdown().await;
}

/// The real binary as `ros2 launch` starts it (stderr piped, so no terminal): its log
/// records reach `/rosout`, stderr has no ANSI escape codes, and the rcl logging flags
/// are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_to_rosout_and_plain_stderr() {
    let (_router, endpoint) = router().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("r.redb");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qis"))
        .args([
            "node",
            "--connect",
            &endpoint,
            "--listen",
            "tcp/127.0.0.1:0",
        ])
        .args(["--ros-args", "-r", "__ns:=/r", "--log-level", "warn"])
        .args([
            "--log-level",
            "r.qis_node:=info",
            "--disable-external-lib-logs",
        ])
        .args([
            "-e",
            "/qis",
            "--log-file-name",
            "qis",
            "--enable-rosout-logs",
        ])
        .args(["-p", "exchange_enabled:=false"])
        .args(["-p", &format!("store_path:={}", store.display()), "--"])
        .env("ROS_HOME", dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("qis binary starts");
    let stdout = interop_ros(&endpoint, "r", "rosout").await;
    assert!(stdout.contains("\"checks_passed\": 11"), "{stdout}");
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the node stops on SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes on a pipe:\n{stderr}"
    );
    assert!(stderr.contains("qis_node started"), "{stderr}");
    assert!(stderr.contains("--enclave accepted"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_rmw_zenoh_client_gets_field_by_field_answers() {
    let (_router, endpoint) = router().await;
    let (fleet, rx, _quiet) = quiet_fleet();
    let node = start_node(&endpoint, "/i", "robot-i", NodeParams::default(), fleet, rx).await;
    let args = ["--router", &endpoint, "--namespace", "i"];
    let stdout = python("interop_client.py", &args, 2 * WAIT).await;
    assert!(stdout.contains("\"checks_passed\": 22"), "{stdout}");
    let c = node.logic().lock().unwrap().report().counters;
    assert_eq!(c.predictions, 2);
    assert_eq!(c.outcomes, 1);
    assert_eq!(c.rejected(qis_ros::node::RejectKind::Malformed), 1);
    node.shutdown().await;
}
