//! `--ros-args` as `ros2 run` and `ros2 launch` pass them (hiroz does not parse them),
//! with the flags rcl accepts (rcl/arguments.h): `-r/--remap [node:]from:=to` (incl.
//! `__ns`, `__node`/`__name`), `-p/--param [node:]name:=value`, `--params-file FILE`,
//! `--log-level [logger:=]LEVEL` (repeatable), `--log-config-file FILE`,
//! `--log-file-name NAME`, `-e/--enclave E`, `--enable-`/`--disable-` + `stdout-logs`,
//! `rosout-logs`, `external-lib-logs`; several `--ros-args ... --` blocks may appear.
//! An unknown ROS argument is an error, as in rclcpp (`UnknownROSArgsError`).

use std::path::PathBuf;

use thiserror::Error;

use super::logging::{LogLevelError, LogLevelRule};

/// What `--ros-args` asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct RosArgs {
    /// `__node:=` / `__name:=`.
    pub node_name: Option<String>,
    /// `__ns:=`.
    pub namespace: Option<String>,
    /// Topic and service remaps, in order (first match wins, as in rcl).
    pub remaps: Vec<(String, String)>,
    /// `-p name:=value`, value as YAML text, in order (later wins).
    pub params: Vec<(String, String)>,
    /// `--params-file`, in order (later wins).
    pub params_files: Vec<PathBuf>,
    /// `--log-level [logger:=]level`, in order (the last default rule wins).
    pub log_levels: Vec<LogLevelRule>,
    /// Log to stderr (`--disable-stdout-logs` turns it off; rcl's console is stderr).
    pub stdout_logs: bool,
    /// Publish log records on `/rosout` (`--disable-rosout-logs` turns it off).
    pub rosout_logs: bool,
    /// rcl's external logging library (log files); accepted, this node writes no log
    /// file either way.
    pub external_lib_logs: bool,
    /// `-e/--enclave`: accepted; the Zenoh transport is secured by its own config
    /// (TLS, ACL), not by SROS2 enclaves.
    pub enclave: Option<String>,
    /// `--log-config-file`: accepted; rcl passes it to its external logging library,
    /// which this node does not have.
    pub log_config_file: Option<PathBuf>,
    /// `--log-file-name`: accepted; no log file is written.
    pub log_file_name: Option<String>,
}

impl Default for RosArgs {
    fn default() -> Self {
        RosArgs {
            node_name: None,
            namespace: None,
            remaps: Vec::new(),
            params: Vec::new(),
            params_files: Vec::new(),
            log_levels: Vec::new(),
            stdout_logs: true,
            rosout_logs: true,
            external_lib_logs: true,
            enclave: None,
            log_config_file: None,
            log_file_name: None,
        }
    }
}

/// A malformed `--ros-args` block.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RosArgsError {
    /// A flag without its value.
    #[error("--ros-args: {flag} needs a value")]
    MissingValue {
        /// The flag.
        flag: String,
    },
    /// A rule without `:=`.
    #[error("--ros-args: {flag} {rule:?} must be of the form name:=value")]
    BadRule {
        /// The flag.
        flag: String,
        /// The rule given.
        rule: String,
    },
    /// A `--log-level` value that is no ROS level rule.
    #[error(transparent)]
    LogLevel(#[from] LogLevelError),
    /// A flag this node does not know.
    #[error("--ros-args: unknown argument {0:?}")]
    Unknown(String),
}

/// Splits `args` (without the program name) into the ROS arguments and the rest,
/// keeping only rules addressed to all nodes or to `node` (`node:rule`).
pub fn split(args: &[String], node: &str) -> Result<(RosArgs, Vec<String>), RosArgsError> {
    let mut ros = RosArgs::default();
    let mut rest = Vec::new();
    let mut it = args.iter();
    let mut in_ros = false;
    while let Some(a) = it.next() {
        if a == "--ros-args" {
            in_ros = true;
            continue;
        }
        if !in_ros {
            rest.push(a.clone());
            continue;
        }
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| RosArgsError::MissingValue {
                    flag: flag.to_string(),
                })
        };
        match a.as_str() {
            "--" => in_ros = false,
            "-r" | "--remap" => {
                let rule = value(a)?;
                if let Some((from, to)) = rule_for(a, &rule, node)? {
                    match from.as_str() {
                        "__ns" => ros.namespace = Some(to),
                        "__node" | "__name" => ros.node_name = Some(to),
                        _ => ros.remaps.push((from, to)),
                    }
                }
            }
            "-p" | "--param" => {
                let rule = value(a)?;
                if let Some(p) = rule_for(a, &rule, node)? {
                    ros.params.push(p);
                }
            }
            "--params-file" => ros.params_files.push(PathBuf::from(value(a)?)),
            "--log-level" => ros.log_levels.push(LogLevelRule::parse(&value(a)?)?),
            "--log-config-file" => ros.log_config_file = Some(PathBuf::from(value(a)?)),
            "--log-file-name" => ros.log_file_name = Some(value(a)?),
            // Security enclaves do not apply to the Zenoh transport here; accepted so
            // launch files written for other RMWs still start.
            "-e" | "--enclave" => ros.enclave = Some(value(a)?),
            "--enable-stdout-logs" => ros.stdout_logs = true,
            "--disable-stdout-logs" => ros.stdout_logs = false,
            "--enable-rosout-logs" => ros.rosout_logs = true,
            "--disable-rosout-logs" => ros.rosout_logs = false,
            "--enable-external-lib-logs" => ros.external_lib_logs = true,
            "--disable-external-lib-logs" => ros.external_lib_logs = false,
            other => return Err(RosArgsError::Unknown(other.to_string())),
        }
    }
    Ok((ros, rest))
}

/// Parses `[node:]from:=to`; `None` when the rule targets another node.
fn rule_for(flag: &str, rule: &str, node: &str) -> Result<Option<(String, String)>, RosArgsError> {
    let bad = || RosArgsError::BadRule {
        flag: flag.to_string(),
        rule: rule.to_string(),
    };
    let (lhs, to) = rule.split_once(":=").ok_or_else(bad)?;
    let (target, from) = match lhs.split_once(':') {
        Some((t, f)) => (Some(t), f),
        None => (None, lhs),
    };
    if from.is_empty() {
        return Err(bad());
    }
    if target.is_some_and(|t| t != node) {
        return Ok(None);
    }
    Ok(Some((from.to_string(), to.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_what_ros2_launch_passes() {
        let (r, rest) = split(
            &args(
                "--connect tcp/127.0.0.1:7447 --ros-args -r __node:=qis -r __ns:=/robot1 \
                 --params-file /tmp/p.yaml -r prediction:=/wm/prediction -p use_sim_time:=true \
                 -p other:x:=1 --log-level debug -- tail",
            ),
            "qis",
        )
        .unwrap();
        assert_eq!(rest, args("--connect tcp/127.0.0.1:7447 tail"));
        assert_eq!(r.node_name.as_deref(), Some("qis"));
        assert_eq!(r.namespace.as_deref(), Some("/robot1"));
        assert_eq!(
            r.remaps,
            vec![("prediction".into(), "/wm/prediction".into())]
        );
        assert_eq!(r.params, vec![("use_sim_time".into(), "true".into())]);
        assert_eq!(r.params_files, vec![PathBuf::from("/tmp/p.yaml")]);
        assert_eq!(r.log_levels, vec![LogLevelRule::parse("debug").unwrap()]);
        assert!(r.stdout_logs && r.rosout_logs && r.external_lib_logs);
    }

    #[test]
    fn accepts_the_flags_rcl_accepts() {
        let (r, rest) = split(
            &args(
                "node --ros-args --log-level WARN --log-level qis_node:=debug \
                 --disable-rosout-logs --disable-stdout-logs --disable-external-lib-logs \
                 -e /qis/enclave --log-config-file /tmp/log.conf --log-file-name qis \
                 --enable-stdout-logs --ros-args --param fleet:=f --remap a:=b",
            ),
            "qis_node",
        )
        .unwrap();
        assert_eq!(rest, args("node"));
        assert_eq!(
            r.log_levels,
            vec![
                LogLevelRule::parse("warn").unwrap(),
                LogLevelRule::parse("qis_node:=debug").unwrap()
            ]
        );
        assert!(!r.rosout_logs && !r.external_lib_logs);
        assert!(r.stdout_logs, "the later --enable-stdout-logs wins");
        assert_eq!(r.enclave.as_deref(), Some("/qis/enclave"));
        assert_eq!(r.log_config_file, Some(PathBuf::from("/tmp/log.conf")));
        assert_eq!(r.log_file_name.as_deref(), Some("qis"));
        assert_eq!(r.params, vec![("fleet".into(), "f".into())]);
        assert_eq!(r.remaps, vec![("a".into(), "b".into())]);
        assert!(matches!(
            split(&args("--ros-args --log-level loud"), "n"),
            Err(RosArgsError::LogLevel(_))
        ));
        assert!(matches!(
            split(&args("--ros-args --enable-everything"), "n"),
            Err(RosArgsError::Unknown(_))
        ));
    }

    #[test]
    fn refuses_malformed_blocks() {
        assert!(matches!(
            split(&args("--ros-args -p"), "n"),
            Err(RosArgsError::MissingValue { .. })
        ));
        assert!(matches!(
            split(&args("--ros-args -p novalue"), "n"),
            Err(RosArgsError::BadRule { .. })
        ));
        assert!(matches!(
            split(&args("--ros-args --bogus"), "n"),
            Err(RosArgsError::Unknown(_))
        ));
    }
}
