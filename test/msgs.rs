//! The Rust message types against their source of truth: every field of every type in
//! `msg/` and `srv/` (name, type, order, constants), and every RIHS01 type hash against
//! `test/data/type_hashes.json`, computed independently from the .msg text by the
//! Python library rosbags (`test/data/type_hashes.py`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hiroz::dynamic::{FieldType, MessageSchema};
use hiroz::{MessageTypeInfo, ServiceTypeInfo};
use qis_ros::ros::msgs::{
    Clock, CorrectedPrior, DiagnosticArray, DiagnosticStatus, Discrepancy, Header, KeyValue, Log,
    Outcome, Prediction, Query, QueryRequest, QueryResponse, Scenario, Time,
};

/// One parsed .msg line: (name, type as written, normalized).
#[derive(Debug, PartialEq)]
struct Field {
    name: String,
    ty: String,
}

/// Parsed .msg text: fields in order and constants (name → value).
struct MsgDef {
    fields: Vec<Field>,
    constants: BTreeMap<String, String>,
}

/// Normalizes a .msg type: `pkg/T` → `pkg/msg/T`, a bare message `T` → `qis_ros/msg/T`.
fn normalize(ty: &str) -> String {
    let (base, array) = match ty.find('[') {
        Some(i) => (&ty[..i], &ty[i..]),
        None => (ty, ""),
    };
    const PRIMITIVES: [&str; 13] = [
        "bool", "byte", "char", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
        "uint64", "float32", "float64",
    ];
    let base = if PRIMITIVES.contains(&base) || base == "string" {
        base.to_string()
    } else if let Some((pkg, name)) = base.split_once('/') {
        format!("{pkg}/msg/{name}")
    } else {
        format!("qis_ros/msg/{base}")
    };
    format!("{base}{array}")
}

fn parse(text: &str) -> MsgDef {
    let mut fields = Vec::new();
    let mut constants = BTreeMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (ty, rest) = line.split_once(char::is_whitespace).expect("type and name");
        let rest = rest.trim();
        if let Some((name, value)) = rest.split_once('=') {
            constants.insert(name.trim().to_string(), value.trim().to_string());
        } else {
            fields.push(Field {
                name: rest.to_string(),
                ty: normalize(ty),
            });
        }
    }
    MsgDef { fields, constants }
}

fn render(t: &FieldType) -> String {
    match t {
        FieldType::Bool => "bool".into(),
        FieldType::Int8 => "int8".into(),
        FieldType::Int16 => "int16".into(),
        FieldType::Int32 => "int32".into(),
        FieldType::Int64 => "int64".into(),
        FieldType::Uint8 => "uint8".into(),
        FieldType::Uint16 => "uint16".into(),
        FieldType::Uint32 => "uint32".into(),
        FieldType::Uint64 => "uint64".into(),
        FieldType::Float32 => "float32".into(),
        FieldType::Float64 => "float64".into(),
        FieldType::String => "string".into(),
        FieldType::BoundedString(n) => format!("string<={n}"),
        FieldType::Message(s) => s.type_name.clone(),
        FieldType::Array(t, n) => format!("{}[{n}]", render(t)),
        FieldType::Sequence(t) => format!("{}[]", render(t)),
        FieldType::BoundedSequence(t, n) => format!("{}[<={n}]", render(t)),
    }
}

fn schema<T: MessageTypeInfo>() -> Arc<MessageSchema> {
    T::message_schema().expect("derived types carry a schema")
}

fn assert_fields(def: &MsgDef, schema: &MessageSchema) {
    let rust: Vec<Field> = schema
        .fields
        .iter()
        .map(|f| Field {
            name: f.name.clone(),
            ty: render(&f.field_type),
        })
        .collect();
    assert_eq!(
        rust, def.fields,
        "{} differs from its .msg",
        schema.type_name
    );
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn msg(name: &str) -> MsgDef {
    parse(&std::fs::read_to_string(root().join("msg").join(format!("{name}.msg"))).unwrap())
}

#[test]
fn every_msg_file_has_a_matching_rust_type() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("msg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "CorrectedPrior.msg",
            "Discrepancy.msg",
            "Outcome.msg",
            "Prediction.msg",
            "Scenario.msg"
        ],
        "a new .msg needs its Rust type in src/ros/msgs.rs and a line here"
    );
    assert_fields(&msg("Scenario"), &schema::<Scenario>());
    assert_fields(&msg("Prediction"), &schema::<Prediction>());
    assert_fields(&msg("Outcome"), &schema::<Outcome>());
    assert_fields(&msg("CorrectedPrior"), &schema::<CorrectedPrior>());
    assert_fields(&msg("Discrepancy"), &schema::<Discrepancy>());
}

#[test]
fn constants_match() {
    let c = msg("CorrectedPrior").constants;
    assert_eq!(c.len(), 3);
    assert_eq!(c["MATCH_NONE"], CorrectedPrior::MATCH_NONE.to_string());
    assert_eq!(c["MATCH_EXACT"], CorrectedPrior::MATCH_EXACT.to_string());
    assert_eq!(
        c["MATCH_NEIGHBOR"],
        CorrectedPrior::MATCH_NEIGHBOR.to_string()
    );
}

#[test]
fn query_service_matches_its_srv() {
    let text = std::fs::read_to_string(root().join("srv/Query.srv")).unwrap();
    let (req, resp) = text.split_once("---").expect("request --- response");
    // A bare type inside a .srv names a message of this package, like in a .msg.
    assert_fields(&parse(req), &schema::<QueryRequest>());
    assert_fields(&parse(resp), &schema::<QueryResponse>());
}

#[test]
fn type_hashes_match_an_independent_computation() {
    let text = std::fs::read_to_string(root().join("test/data/type_hashes.json")).unwrap();
    let expected: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    let ours: BTreeMap<String, String> = [
        ("builtin_interfaces/msg/Time", Time::type_hash()),
        ("std_msgs/msg/Header", Header::type_hash()),
        ("rosgraph_msgs/msg/Clock", Clock::type_hash()),
        ("rcl_interfaces/msg/Log", Log::type_hash()),
        ("diagnostic_msgs/msg/KeyValue", KeyValue::type_hash()),
        (
            "diagnostic_msgs/msg/DiagnosticStatus",
            DiagnosticStatus::type_hash(),
        ),
        (
            "diagnostic_msgs/msg/DiagnosticArray",
            DiagnosticArray::type_hash(),
        ),
        ("qis_ros/msg/Scenario", Scenario::type_hash()),
        ("qis_ros/msg/Prediction", Prediction::type_hash()),
        ("qis_ros/msg/Outcome", Outcome::type_hash()),
        ("qis_ros/msg/CorrectedPrior", CorrectedPrior::type_hash()),
        ("qis_ros/msg/Discrepancy", Discrepancy::type_hash()),
        ("qis_ros/srv/Query_Request", QueryRequest::type_hash()),
        ("qis_ros/srv/Query_Response", QueryResponse::type_hash()),
        ("qis_ros/srv/Query", Query::service_type_info().hash),
    ]
    .into_iter()
    .map(|(k, h)| (k.to_string(), h.to_rihs_string()))
    .collect();
    assert_eq!(ours, expected);
}

#[test]
fn dds_type_names_follow_rmw_zenoh() {
    assert_eq!(Prediction::type_name(), "qis_ros::msg::dds_::Prediction_");
    assert_eq!(
        DiagnosticArray::type_name(),
        "diagnostic_msgs::msg::dds_::DiagnosticArray_"
    );
    assert_eq!(
        Query::service_type_info().name,
        "qis_ros::srv::dds_::Query_"
    );
}
