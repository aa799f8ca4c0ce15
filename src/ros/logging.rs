//! Logging the ROS way: `--log-level [logger:=]level` with the ROS levels, and the
//! node's records on `/rosout` (`rcl_interfaces/msg/Log`) besides stderr.
//!
//! [`RosoutLayer`] is a tracing layer that turns each event of this crate's targets into
//! a [`LogRecord`] and hands it to a bounded channel with `try_send`: logging never
//! blocks and never waits for the network; a full channel drops the record and counts
//! it ([`rosout_dropped`]). The native node publishes what the channel holds
//! ([`crate::ros::native::NativeNode::publish_rosout`]). As in rcl, only the node's own
//! loggers reach `/rosout`, not the libraries' (Zenoh, hiroz), which also keeps the
//! publisher's own logs from feeding back into it.

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::msgs::Log;

/// Records dropped because the `/rosout` channel was full or closed.
static ROSOUT_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many log records could not be queued for `/rosout` (process-wide).
pub fn rosout_dropped() -> u64 {
    ROSOUT_DROPPED.load(Ordering::Relaxed)
}

/// Counts one record that did not reach `/rosout`.
pub(crate) fn count_rosout_drop() {
    ROSOUT_DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Default capacity of the `/rosout` channel (records waiting for the publisher).
pub const ROSOUT_CHANNEL: usize = 1024;

/// A ROS log severity (rcutils: `debug`, `info`, `warn`, `error`, `fatal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RosLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
    /// Fatal (tracing has no fatal: it filters as error).
    Fatal,
}

impl RosLevel {
    /// Parses a level name, case-insensitively (`warning` is accepted for `warn`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "debug" => RosLevel::Debug,
            "info" => RosLevel::Info,
            "warn" | "warning" => RosLevel::Warn,
            "error" => RosLevel::Error,
            "fatal" => RosLevel::Fatal,
            _ => return None,
        })
    }

    /// The tracing filter level.
    pub fn tracing(self) -> &'static str {
        match self {
            RosLevel::Debug => "debug",
            RosLevel::Info => "info",
            RosLevel::Warn => "warn",
            RosLevel::Error | RosLevel::Fatal => "error",
        }
    }
}

/// A `--log-level` rule: the default level, or one logger's (`name:=level`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLevelRule {
    /// The logger, or `None` for the default level.
    pub logger: Option<String>,
    /// Its level; `None` = `unset` (the rule changes nothing).
    pub level: Option<RosLevel>,
}

/// A `--log-level` value that is no ROS log level rule.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("--log-level {value:?}: expected [logger:=]debug|info|warn|error|fatal|unset")]
pub struct LogLevelError {
    /// The value given.
    pub value: String,
}

impl LogLevelRule {
    /// Parses `level` or `logger:=level`.
    pub fn parse(value: &str) -> Result<Self, LogLevelError> {
        let bad = || LogLevelError {
            value: value.to_string(),
        };
        let (logger, level) = match value.split_once(":=") {
            Some(("", _)) => return Err(bad()),
            Some((l, v)) => (Some(l.to_string()), v),
            None => (None, value),
        };
        let level = if level.eq_ignore_ascii_case("unset") {
            None
        } else {
            Some(RosLevel::parse(level).ok_or_else(bad)?)
        };
        Ok(LogLevelRule { logger, level })
    }
}

/// The logger name rcl gives a node: its namespace and name joined with dots
/// (`/robot1/qis_node` → `robot1.qis_node`).
pub fn logger_name(fqn: &str) -> String {
    fqn.trim_start_matches('/').replace('/', ".")
}

/// This crate's tracing targets (the library and the `qis` binary).
const OUR_TARGETS: [&str; 2] = ["qis_ros", "qis"];

fn is_ours(target: &str) -> bool {
    OUR_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The tracing filter (EnvFilter directives) for `--log-level` rules: the last default
/// rule sets every target's level (else `default`); a rule for the node's logger (its
/// rcl logger name or its node name) sets this crate's targets; any other logger name
/// is taken as a tracing target (`zenoh:=debug`, dots as `::`).
pub fn filter_directives(
    rules: &[LogLevelRule],
    logger: &str,
    node: &str,
    default: &str,
) -> String {
    let mut global = default.to_string();
    let mut named = Vec::new();
    for rule in rules {
        let Some(level) = rule.level else { continue };
        match &rule.logger {
            None => global = level.tracing().to_string(),
            Some(name) if name == logger || name == node => {
                named.extend(
                    OUR_TARGETS
                        .iter()
                        .map(|t| format!("{t}={}", level.tracing())),
                );
            }
            Some(name) => named.push(format!("{}={}", name.replace('.', "::"), level.tracing())),
        }
    }
    std::iter::once(global)
        .chain(named)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `rcl_interfaces/msg/Log` severity of a tracing level.
pub fn log_level(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::TRACE | tracing::Level::DEBUG => Log::DEBUG,
        tracing::Level::INFO => Log::INFO,
        tracing::Level::WARN => Log::WARN,
        tracing::Level::ERROR => Log::ERROR,
    }
}

/// One log record on its way to `/rosout` (the logger name is the node's, added by
/// the publisher).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// System time of the record, ns.
    pub stamp_ns: i64,
    /// `rcl_interfaces/msg/Log` severity.
    pub level: u8,
    /// The message and its fields (`message key=value …`).
    pub msg: String,
    /// Source file.
    pub file: String,
    /// Module path.
    pub function: String,
    /// Source line.
    pub line: u32,
}

/// The tracing layer that queues this crate's events for `/rosout`.
#[derive(Debug)]
pub struct RosoutLayer {
    tx: mpsc::Sender<LogRecord>,
}

/// A layer and the receiving end of its bounded channel (`capacity` records).
pub fn rosout_layer(capacity: usize) -> (RosoutLayer, mpsc::Receiver<LogRecord>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (RosoutLayer { tx }, rx)
}

/// Collects the message and the other fields of an event as fmt prints them.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields
                .push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message.push_str(&format!("{value:?}"));
        } else {
            self.fields
                .push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for RosoutLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !is_ours(meta.target()) {
            return;
        }
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        let record = LogRecord {
            stamp_ns: super::clock::system_ns(),
            level: log_level(meta.level()),
            msg: format!("{}{}", v.message, v.fields),
            file: meta.file().unwrap_or_default().to_string(),
            function: meta.module_path().unwrap_or(meta.target()).to_string(),
            line: meta.line().unwrap_or(0),
        };
        if self.tx.try_send(record).is_err() {
            count_rosout_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn parses_ros_levels_and_logger_rules() {
        assert_eq!(
            LogLevelRule::parse("DEBUG").unwrap(),
            LogLevelRule {
                logger: None,
                level: Some(RosLevel::Debug)
            }
        );
        assert_eq!(
            LogLevelRule::parse("robot1.qis_node:=fatal").unwrap(),
            LogLevelRule {
                logger: Some("robot1.qis_node".into()),
                level: Some(RosLevel::Fatal)
            }
        );
        assert_eq!(LogLevelRule::parse("unset").unwrap().level, None);
        for bad in ["verbose", ":=info", "qis_node:=loud", ""] {
            assert!(LogLevelRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_become_tracing_directives() {
        let rules = |v: &[&str]| {
            v.iter()
                .map(|s| LogLevelRule::parse(s).unwrap())
                .collect::<Vec<_>>()
        };
        let f = |v: &[&str]| filter_directives(&rules(v), "robot1.qis_node", "qis_node", "info");
        assert_eq!(f(&[]), "info");
        assert_eq!(f(&["debug", "warn"]), "warn");
        assert_eq!(f(&["fatal"]), "error");
        assert_eq!(
            f(&["robot1.qis_node:=debug"]),
            "info,qis_ros=debug,qis=debug"
        );
        assert_eq!(f(&["qis_node:=error"]), "info,qis_ros=error,qis=error");
        assert_eq!(
            f(&["zenoh.net:=warn", "rcl:=unset"]),
            "info,zenoh::net=warn"
        );
        assert_eq!(logger_name("/robot1/qis_node"), "robot1.qis_node");
        assert_eq!(logger_name("/qis_node"), "qis_node");
        // Every directive is one EnvFilter accepts.
        let d = f(&["debug", "robot1.qis_node:=error", "zenoh:=warn"]);
        assert!(tracing_subscriber::EnvFilter::try_new(&d).is_ok(), "{d}");
    }

    #[test]
    fn the_layer_queues_our_events_only_and_never_blocks() {
        let (layer, mut rx) = rosout_layer(2);
        let subscriber = tracing_subscriber::registry().with(layer);
        let before = rosout_dropped();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(kind = "x", "first {}", 1);
            tracing::info!(target: "zenoh::net", "not ours");
            tracing::error!("second");
            // The channel holds 2: the third is dropped, not waited for.
            tracing::info!("third");
        });
        let a = rx.try_recv().unwrap();
        assert_eq!((a.level, a.msg.as_str()), (Log::WARN, "first 1 kind=\"x\""));
        assert!(a.file.ends_with("logging.rs"), "{}", a.file);
        assert_eq!(a.function, "qis_ros::ros::logging::tests");
        assert!(a.line > 0 && a.stamp_ns > 0);
        let b = rx.try_recv().unwrap();
        assert_eq!((b.level, b.msg.as_str()), (Log::ERROR, "second"));
        assert!(rx.try_recv().is_err());
        assert!(rosout_dropped() > before);
    }
}
