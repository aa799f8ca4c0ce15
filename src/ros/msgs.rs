//! Rust types of the ROS 2 interface: `msg/*.msg`, `srv/Query.srv` and the standard
//! messages the node uses (`std_msgs/Header`, `diagnostic_msgs/DiagnosticArray`,
//! `rosgraph_msgs/Clock`, `rcl_interfaces/Log`).
//!
//! The .msg files are the single source of truth: field names, types and order here
//! must match them, which `test/msgs.rs` checks by parsing `msg/` and `srv/`. Each type
//! carries its RIHS01 type hash (REP-2011), computed from its structure by the hiroz
//! derive, or by [`super::type_hash`] where the derive cannot express a field type
//! (`byte`) or a service; the test compares every hash with an independent computation.
//!
//! The types are plain serde structs: the native binding moves them with hiroz's CDR
//! codec, the r2r binding with the same codec over raw CDR bytes.

use serde::{Deserialize, Serialize};

use hiroz::MessageTypeInfo;

/// Implements hiroz's CDR message trait for types whose type info comes from the derive.
macro_rules! cdr_message {
    ($($t:ty),* $(,)?) => {
        $(impl hiroz::msg::ZMessage for $t {
            type Serdes = hiroz::msg::SerdeCdrSerdes<$t>;
        })*
    };
}

/// `builtin_interfaces/msg/Time`: seconds and nanoseconds since the epoch (or sim start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "builtin_interfaces/msg/Time")]
pub struct Time {
    /// Whole seconds.
    pub sec: i32,
    /// Nanoseconds within the second, < 1e9.
    pub nanosec: u32,
}

impl Time {
    /// The time `ns` nanoseconds after the epoch (saturates outside the i32 seconds range).
    pub fn from_nanos(ns: i64) -> Self {
        let sec = ns.div_euclid(1_000_000_000);
        let nanosec = ns.rem_euclid(1_000_000_000) as u32;
        let sec = sec.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        Time { sec, nanosec }
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(&self) -> i64 {
        i64::from(self.sec) * 1_000_000_000 + i64::from(self.nanosec)
    }
}

/// `std_msgs/msg/Header`: timestamp and coordinate frame of the data.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "std_msgs/msg/Header")]
pub struct Header {
    /// When the data was valid.
    pub stamp: Time,
    /// Frame the data is expressed in.
    pub frame_id: String,
}

/// `qis_ros/msg/Scenario`: the context that makes two situations "the same".
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/msg/Scenario")]
pub struct Scenario {
    /// Categorical context, `key=value`.
    pub tags: Vec<String>,
    /// Names of the numeric features, same length as `features`.
    pub feature_names: Vec<String>,
    /// Numeric context, quantized into the address per config.
    pub features: Vec<f64>,
    /// Optional latent embedding, for similarity.
    pub embedding: Vec<f32>,
}

/// `qis_ros/msg/Prediction`: what the world model expects for one episode.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/msg/Prediction")]
pub struct Prediction {
    /// Stamp and frame of the prediction.
    pub header: Header,
    /// Pairs this prediction with its outcome; unique per robot.
    pub episode_id: String,
    /// World-model identity and version.
    pub model_id: String,
    /// The scenario's context.
    pub scenario: Scenario,
    /// Predicted state vector.
    pub state: Vec<f64>,
    /// Empty, n (diagonal) or n*n (row-major).
    pub covariance: Vec<f64>,
}

/// `qis_ros/msg/Outcome`: what reality did in that episode.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/msg/Outcome")]
pub struct Outcome {
    /// Stamp and frame of the measurement.
    pub header: Header,
    /// The episode the outcome belongs to.
    pub episode_id: String,
    /// Measured state, same space as the prediction.
    pub state: Vec<f64>,
    /// Measurement noise: empty, n or n*n.
    pub covariance: Vec<f64>,
}

/// `qis_ros/msg/CorrectedPrior`: the prediction corrected by the fleet's outcomes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/msg/CorrectedPrior")]
pub struct CorrectedPrior {
    /// Stamp and frame of the prediction it corrects.
    pub header: Header,
    /// The prediction's episode.
    pub episode_id: String,
    /// The prediction's model.
    pub model_id: String,
    /// Hex address of the scenario.
    pub fingerprint: String,
    /// One of the `MATCH_*` constants.
    pub r#match: u8,
    /// Corrected prediction.
    pub state: Vec<f64>,
    /// Corrected covariance, n*n row-major.
    pub covariance: Vec<f64>,
    /// corrected − predicted.
    pub correction: Vec<f64>,
    /// Outcomes behind the correction.
    pub support: u32,
    /// Distinct robots behind it.
    pub sources: u32,
    /// 0..1 weight given to the fleet over the model.
    pub confidence: f32,
}

impl CorrectedPrior {
    /// No fleet knowledge: the prediction unchanged.
    pub const MATCH_NONE: u8 = 0;
    /// Corrected from the scenario's exact address.
    pub const MATCH_EXACT: u8 = 1;
    /// Neighbors were borrowed.
    pub const MATCH_NEIGHBOR: u8 = 2;
}

/// `qis_ros/msg/Discrepancy`: one per paired outcome, for monitoring and training.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/msg/Discrepancy")]
pub struct Discrepancy {
    /// Stamp and frame of the outcome.
    pub header: Header,
    /// The episode.
    pub episode_id: String,
    /// The prediction's model.
    pub model_id: String,
    /// Hex address of the scenario.
    pub fingerprint: String,
    /// measured − predicted.
    pub residual: Vec<f64>,
    /// Euclidean norm of the residual.
    pub error_norm: f64,
    /// Mahalanobis norm of the residual; NaN when no covariance was given.
    pub mahalanobis: f64,
}

/// `diagnostic_msgs/msg/KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "diagnostic_msgs/msg/KeyValue")]
pub struct KeyValue {
    /// What the value is.
    pub key: String,
    /// The value, as text.
    pub value: String,
}

/// `diagnostic_msgs/msg/DiagnosticStatus` (its type info is in [`super::type_hash`]:
/// `level` is a `byte`, which the derive cannot express).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    /// One of the `OK`, `WARN`, `ERROR`, `STALE` levels.
    pub level: u8,
    /// Name of the component reporting.
    pub name: String,
    /// Human-readable summary.
    pub message: String,
    /// Hardware identity (here: the source id).
    pub hardware_id: String,
    /// Figures, as key/value text.
    pub values: Vec<KeyValue>,
}

impl DiagnosticStatus {
    /// Operating normally.
    pub const OK: u8 = 0;
    /// Operating, but something needs attention.
    pub const WARN: u8 = 1;
    /// Not operating correctly.
    pub const ERROR: u8 = 2;
    /// No recent report.
    pub const STALE: u8 = 3;
}

/// `diagnostic_msgs/msg/DiagnosticArray`, published on `/diagnostics`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiagnosticArray {
    /// When the report was made.
    pub header: Header,
    /// One status per component.
    pub status: Vec<DiagnosticStatus>,
}

/// `rosgraph_msgs/msg/Clock`, published on `/clock` by simulators (`use_sim_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "rosgraph_msgs/msg/Clock")]
pub struct Clock {
    /// The simulation time.
    pub clock: Time,
}

/// `rcl_interfaces/msg/Log`: one log record, published on `/rosout`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "rcl_interfaces/msg/Log")]
pub struct Log {
    /// When the record was made (system time, as rcl stamps it).
    pub stamp: Time,
    /// Severity: [`Log::DEBUG`] … [`Log::FATAL`].
    pub level: u8,
    /// Logger name (`robot1.qis_node`).
    pub name: String,
    /// The message.
    pub msg: String,
    /// Source file of the record.
    pub file: String,
    /// Function (here: the module path) that logged it.
    pub function: String,
    /// Source line.
    pub line: u32,
}

impl Log {
    /// Debug severity.
    pub const DEBUG: u8 = 10;
    /// Info severity.
    pub const INFO: u8 = 20;
    /// Warning severity.
    pub const WARN: u8 = 30;
    /// Error severity.
    pub const ERROR: u8 = 40;
    /// Fatal severity.
    pub const FATAL: u8 = 50;
}

/// `qis_ros/srv/Query` request: a scenario and the model to ask about.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/srv/Query_Request")]
pub struct QueryRequest {
    /// The scenario to look up.
    pub scenario: Scenario,
    /// The model whose corrections are asked for.
    pub model_id: String,
}

/// `qis_ros/srv/Query` response: the fleet summary at the scenario's address.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, MessageTypeInfo)]
#[ros_msg(type_name = "qis_ros/srv/Query_Response")]
pub struct QueryResponse {
    /// Hex address of the scenario.
    pub fingerprint: String,
    /// `CorrectedPrior::MATCH_*`.
    pub r#match: u8,
    /// Outcomes behind the summary.
    pub support: u32,
    /// Distinct robots behind it.
    pub sources: u32,
    /// Pooled mean of measured − predicted.
    pub mean_residual: Vec<f64>,
    /// Pooled residual covariance, n*n row-major.
    pub residual_covariance: Vec<f64>,
    /// Provenance: the sources the summary rests on.
    pub source_ids: Vec<String>,
    /// Record version of each source.
    pub source_seqs: Vec<u64>,
    /// Final synthesis weight of each source.
    pub source_weights: Vec<f64>,
    /// Empty on success, else why there is no answer.
    pub error: String,
}

cdr_message!(
    Time,
    Header,
    Scenario,
    Prediction,
    Outcome,
    CorrectedPrior,
    Discrepancy,
    KeyValue,
    DiagnosticStatus,
    DiagnosticArray,
    Clock,
    Log,
    QueryRequest,
    QueryResponse,
);

/// The `qis_ros/srv/Query` service (request and response above).
pub struct Query;

impl hiroz::msg::ZService for Query {
    type Request = QueryRequest;
    type Response = QueryResponse;
}
