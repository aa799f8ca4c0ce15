//! The colcon side of the package, checked without ROS 2: the real `CMakeLists.txt` is
//! configured and built against stand-ins of the ROS CMake packages
//! (`test/data/ros_cmake_stubs/`) with a fake `cargo` that records its arguments, so the
//! cargo command lines of `colcon build` and `colcon test` are checked for every kind of
//! `QIS_CARGO_FEATURES`; package.xml declares what the build needs; and the launch files,
//! evaluated the way `ros2 launch` would (test/launch_eval.py), give the binary a command
//! line its `--ros-args` parsing accepts, and the binary starts with it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use qis_ros::ros::{args, names::Names, params_file};
use support::*;
use tokio::io::AsyncBufReadExt;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The argument lists the fake cargo was called with, in order.
fn calls(log: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split_terminator("---\n")
        .map(|call| call.lines().map(String::from).collect())
        .collect()
}

/// The cargo calls of one configure + build + CTest + install of CMakeLists.txt.
struct CargoCalls {
    /// Calls during `cmake --build`.
    built: Vec<Vec<String>>,
    /// Calls during `ctest`.
    tested: Vec<Vec<String>>,
    /// Calls during `cmake --install`, and the AMENT_PREFIX_PATH each saw.
    installed: Vec<(Vec<String>, String)>,
    /// The cargo target directory.
    target: PathBuf,
    /// The install prefix.
    prefix: PathBuf,
    _dir: tempfile::TempDir,
}

/// Configures and builds CMakeLists.txt with `-DQIS_CARGO_FEATURES=<features>`, runs its
/// CTest entry, installs it, and returns the cargo calls of each step. The fake cargo
/// logs its arguments and AMENT_PREFIX_PATH, and writes the binary a build would.
fn cargo_calls(features: &str) -> CargoCalls {
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("build");
    let log = dir.path().join("cargo.log");
    let env_log = dir.path().join("cargo.log.env");
    let fake = dir.path().join("cargo");
    std::fs::write(
        &fake,
        concat!(
            "#!/bin/sh\n",
            "{ printf '%s\\n' \"$@\"; echo ---; } >> \"$QIS_FAKE_CARGO_LOG\"\n",
            "echo \"$AMENT_PREFIX_PATH\" >> \"$QIS_FAKE_CARGO_LOG.env\"\n",
            "while [ $# -gt 0 ]; do\n",
            "  if [ \"$1\" = --target-dir ]; then mkdir -p \"$2/release\"; touch \"$2/release/qis\"; fi\n",
            "  shift\n",
            "done\n",
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    run(Command::new("cmake")
        .arg("-S")
        .arg(repo())
        .arg("-B")
        .arg(&build)
        .args(["-G", "Unix Makefiles"])
        .arg(format!(
            "-DCMAKE_PREFIX_PATH={}",
            repo().join("test/data/ros_cmake_stubs").display()
        ))
        .arg(format!("-DCARGO={}", fake.display()))
        .arg(format!("-DQIS_CARGO_FEATURES={features}")));
    run(Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .args(["--target", "qis_cargo"])
        .env("QIS_FAKE_CARGO_LOG", &log));
    let built = calls(&log);
    let _ = std::fs::remove_file(&log);
    let tests = run(Command::new("ctest")
        .arg("--test-dir")
        .arg(&build)
        .arg("--output-on-failure")
        .env("QIS_FAKE_CARGO_LOG", &log));
    assert!(tests.contains("cargo_test"), "{tests}");
    let tested = calls(&log);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&env_log);
    let prefix = dir.path().join("install");
    run(Command::new("cmake")
        .arg("--install")
        .arg(&build)
        .arg("--prefix")
        .arg(&prefix)
        .env("QIS_FAKE_CARGO_LOG", &log)
        .env("AMENT_PREFIX_PATH", "/opt/ros/jazzy"));
    let envs: Vec<String> = std::fs::read_to_string(&env_log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    let installed = calls(&log).into_iter().zip(envs).collect();
    assert!(
        prefix.join("lib/qis_ros/qis").exists(),
        "the binary is installed"
    );
    CargoCalls {
        built,
        tested,
        installed,
        target: build.join("cargo"),
        prefix,
        _dir: dir,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cmake_passes_features_to_cargo_only_when_there_are_some() {
    if !(have("cmake") && have("ctest") && have("make")) {
        eprintln!("SKIPPED: cmake, ctest or make not installed");
        return;
    }
    for (features, expected) in [
        ("", vec![]),
        ("r2r", vec!["--features", "r2r"]),
        ("r2r,foo", vec!["--features", "r2r,foo"]),
        (" r2r ", vec!["--features", "r2r"]),
    ] {
        let c = cargo_calls(features);
        let target = c.target.display().to_string();
        let mut build = strings(&["build"]);
        build.extend(strings(&expected));
        build.extend(strings(&[
            "--target-dir",
            &target,
            "--release",
            "--bin",
            "qis",
        ]));
        if expected.is_empty() {
            // Native: built with the package, nothing left for the install.
            assert_eq!(c.built, vec![build], "QIS_CARGO_FEATURES={features:?}");
            assert!(c.installed.is_empty(), "{:?}", c.installed);
        } else {
            // r2r: built at install time, after the interfaces are installed, with the
            // install prefix first on AMENT_PREFIX_PATH, so r2r's build script finds
            // qis_ros/msg/* there.
            // The install-time build also has the typed `query` service (r2r-query),
            // which needs r2r's generated qis_ros types.
            assert!(c.built.is_empty(), "{:?}", c.built);
            let want = format!("{}:/opt/ros/jazzy", c.prefix.display());
            let mut install = strings(&["build", "--features"]);
            install.push(format!("{},r2r-query", expected[1]));
            install.extend(build[3..].iter().cloned());
            assert_eq!(
                c.installed,
                vec![(install, want)],
                "QIS_CARGO_FEATURES={features:?}"
            );
        }
        let mut test = strings(&["test"]);
        test.extend(strings(&expected));
        test.extend(strings(&["--target-dir", &target]));
        assert_eq!(c.tested, vec![test], "QIS_CARGO_FEATURES={features:?}");
    }
}

#[test]
fn package_xml_declares_the_build_and_test_dependencies() {
    let xml = std::fs::read_to_string(repo().join("package.xml")).unwrap();
    assert!(xml.contains("<package format=\"3\">"));
    for tag in [
        "<buildtool_depend>ament_cmake</buildtool_depend>",
        "<buildtool_depend>rosidl_default_generators</buildtool_depend>",
        "<buildtool_depend>cargo</buildtool_depend>",
        "<buildtool_depend>cmake</buildtool_depend>",
        "<build_depend>libopenblas-dev</build_depend>",
        "<build_depend>liblapack-dev</build_depend>",
        "<build_depend>libclang-dev</build_depend>",
        "<exec_depend>rcl_interfaces</exec_depend>",
        "<exec_depend>rosgraph_msgs</exec_depend>",
        "<test_depend>python3-numpy</test_depend>",
    ] {
        assert!(xml.contains(tag), "package.xml lacks {tag}");
    }
}

/// The command line of the one node `launch` starts with `configs` (launch arguments);
/// `Err` with the launch error.
fn launch(file: &str, configs: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new("python3")
        .arg(repo().join("test/launch_eval.py"))
        .arg(file)
        .args(configs)
        .output()
        .expect("python3 runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["package"], "qis_ros");
    assert_eq!(nodes[0]["executable"], "qis");
    Ok(nodes[0]["cmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect())
}

/// What the binary makes of a launch command line: the arguments before `--ros-args`,
/// the node's names and its parameters (temporary params files removed afterwards).
fn parse(cmd: &[String]) -> (Vec<String>, args::RosArgs, Names, qis_ros::node::NodeParams) {
    let (ros, rest) = args::split(&cmd[1..], "qis_node").expect("--ros-args parse");
    let names = Names::new(
        ros.node_name.as_deref().unwrap_or("qis_node"),
        ros.namespace.as_deref().unwrap_or("/"),
        ros.remaps.clone(),
    )
    .unwrap();
    let params = params_file::load(&names, &ros.params_files, &ros.params).expect("params load");
    for f in &ros.params_files {
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("launch_params_"))
        {
            let _ = std::fs::remove_file(f);
        }
    }
    (rest, ros, names, params)
}

#[test]
fn launch_files_give_a_command_line_the_node_parses() {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Defaults: the native binding, rmw_zenoh's default endpoint, the shipped config.
    let (rest, ros, names, params) = parse(&launch("launch/qis.launch.py", &[]).unwrap());
    assert_eq!(rest, strs(&["node"]));
    assert_eq!(names.fqn(), "/qis_node");
    assert!(!params.use_sim_time);
    assert_eq!(
        params.fingerprint.features.len(),
        2,
        "config/qis.yaml applied"
    );
    assert_eq!(ros.log_levels.len(), 1);
    assert_eq!(names.resolve("prediction").unwrap(), "/prediction");
    // Every argument: namespace, binding, endpoints, sim time, log level, remaps.
    let cmd = launch(
        "launch/qis.launch.py",
        &[
            "namespace:=robot1",
            "node_name:=qis",
            "binding:=r2r",
            "zenoh_connect:=tcp/127.0.0.1:7447,tcp/127.0.0.1:7448",
            "zenoh_listen:=tcp/127.0.0.1:7450",
            "use_sim_time:=true",
            "log_level:=qis:=debug",
            "prediction_topic:=/world_model/prediction",
        ],
    )
    .unwrap();
    let (rest, ros, names, params) = parse(&cmd);
    assert_eq!(
        rest,
        strs(&[
            "node",
            "--r2r",
            "--connect",
            "tcp/127.0.0.1:7447",
            "--connect",
            "tcp/127.0.0.1:7448",
            "--listen",
            "tcp/127.0.0.1:7450"
        ])
    );
    assert_eq!(names.fqn(), "/robot1/qis");
    assert!(params.use_sim_time);
    assert_eq!(
        names.resolve("prediction").unwrap(),
        "/world_model/prediction"
    );
    assert_eq!(ros.log_levels[0].logger.as_deref(), Some("qis"));
    // The sim launch file: the same node on sim time, arguments passed through.
    let (rest, _, names, params) =
        parse(&launch("launch/qis_sim.launch.py", &["namespace:=robot2"]).unwrap());
    assert_eq!(rest, strs(&["node"]));
    assert_eq!(names.fqn(), "/robot2/qis_node");
    assert!(params.use_sim_time);
    // A binding that does not exist is refused by the launch file.
    let e = launch("launch/qis.launch.py", &["binding:=dds"]).unwrap_err();
    assert!(e.contains("binding"), "{e}");
}

/// The binary itself takes what `ros2 launch qis_ros qis.launch.py` passes (native
/// binding, endpoints from the launch arguments) and starts the node it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_from_the_launch_command_line() {
    let (_router, endpoint) = router().await;
    let dir = tempfile::tempdir().unwrap();
    let params = dir.path().join("p.yaml");
    std::fs::write(
        &params,
        format!(
            "/**/qis_node:\n  ros__parameters:\n    exchange_enabled: false\n    store_path: {}\n",
            dir.path().join("s.redb").display()
        ),
    )
    .unwrap();
    let cmd = launch(
        "launch/qis.launch.py",
        &[
            "namespace:=robot3",
            &format!("zenoh_connect:={endpoint}"),
            "zenoh_listen:=tcp/127.0.0.1:0",
            &format!("params_file:={}", params.display()),
        ],
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qis"))
        .args(&cmd[1..])
        .env("ROS_HOME", dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("qis starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("qis_node started") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("the node starts in time")
    .expect("the node starts");
    assert!(started.contains("/robot3/qis_node"), "{started}");
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    // A SIGTERM in the instant between the start and the signal handler kills it
    // outright; either way it stopped (the graceful stop is test/interop.rs's).
    let by_term = std::os::unix::process::ExitStatusExt::signal(&status) == Some(15);
    assert!(status.success() || by_term, "{status:?}");
    for f in cmd.iter().filter(|a| a.contains("launch_params_")) {
        let _ = std::fs::remove_file(f);
    }
}
