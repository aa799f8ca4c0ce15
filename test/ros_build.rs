//! The colcon side of the package, checked without ROS 2: the real `CMakeLists.txt` is
//! configured and built against stand-ins of the ROS CMake packages
//! (`test/data/ros_cmake_stubs/`) with a fake `cargo` that records its arguments, so the
//! cargo command lines of `colcon build` and `colcon test` are checked for every kind of
//! `QIS_CARGO_FEATURES`; and package.xml declares what the build needs.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Configures and builds CMakeLists.txt with `-DQIS_CARGO_FEATURES=<features>`, runs its
/// CTest entry, and returns the cargo calls of the build and of the test.
fn cargo_calls(features: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("build");
    let log = dir.path().join("cargo.log");
    let fake = dir.path().join("cargo");
    std::fs::write(
        &fake,
        "#!/bin/sh\n{ printf '%s\\n' \"$@\"; echo ---; } >> \"$QIS_FAKE_CARGO_LOG\"\n",
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
    std::fs::remove_file(&log).unwrap();
    let tests = run(Command::new("ctest")
        .arg("--test-dir")
        .arg(&build)
        .arg("--output-on-failure")
        .env("QIS_FAKE_CARGO_LOG", &log));
    assert!(tests.contains("cargo_test"), "{tests}");
    let tested = calls(&log);
    (built, tested, build.join("cargo"))
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
        let (built, tested, target) = cargo_calls(features);
        let target = target.display().to_string();
        let mut build = strings(&["build"]);
        build.extend(strings(&expected));
        build.extend(strings(&[
            "--target-dir",
            &target,
            "--release",
            "--bin",
            "qis",
        ]));
        assert_eq!(built, vec![build], "QIS_CARGO_FEATURES={features:?}");
        let mut test = strings(&["test"]);
        test.extend(strings(&expected));
        test.extend(strings(&["--target-dir", &target]));
        assert_eq!(tested, vec![test], "QIS_CARGO_FEATURES={features:?}");
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
