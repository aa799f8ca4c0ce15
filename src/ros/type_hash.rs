//! RIHS01 type information (REP-2011) for the types the hiroz derive cannot describe:
//! `diagnostic_msgs/DiagnosticStatus` (its `byte level` is not a `uint8` to the hash)
//! and the `qis_ros/srv/Query` service (whose hash covers request, response and the
//! implicit `Query_Event`). Built as type descriptions and hashed by `hiroz-schema`,
//! the same code that hashes derived messages; `test/msgs.rs` checks the results
//! against an independent implementation.

use std::sync::OnceLock;

use hiroz::dynamic::MessageSchemaTypeDescription;
use hiroz::entity::{TypeHash, TypeInfo};
use hiroz::{MessageTypeInfo, ServiceTypeInfo, WithTypeInfo};
use hiroz_schema::{
    FieldDescription, FieldTypeDescription, TypeDescription, TypeDescriptionMsg, TypeId,
    calculate_hash,
};

use super::msgs::{
    DiagnosticArray, DiagnosticStatus, Header, KeyValue, Query, QueryRequest, QueryResponse,
};

/// The full description (with referenced types) of a derived message.
fn derived<T: MessageTypeInfo>() -> TypeDescriptionMsg {
    // The derive always provides a schema, and a derived schema always converts: both
    // are compile-time facts of our own types, checked by the tests.
    T::message_schema()
        .and_then(|s| s.to_type_description_msg().ok())
        .unwrap_or_default()
}

fn field(name: &str, field_type: FieldTypeDescription) -> FieldDescription {
    FieldDescription {
        name: name.into(),
        field_type,
        default_value: String::new(),
    }
}

fn nested(name: &str, type_name: &str) -> FieldDescription {
    field(
        name,
        FieldTypeDescription::nested(TypeId::NESTED_TYPE, type_name),
    )
}

/// Adds `msg` and everything it references to `out`, once per type name.
fn absorb(out: &mut Vec<TypeDescription>, msg: TypeDescriptionMsg) {
    for t in std::iter::once(msg.type_description).chain(msg.referenced_type_descriptions) {
        if !out.iter().any(|o| o.type_name == t.type_name) {
            out.push(t);
        }
    }
}

fn finish(main: TypeDescription, mut referenced: Vec<TypeDescription>) -> TypeDescriptionMsg {
    referenced.retain(|t| t.type_name != main.type_name);
    referenced.sort_by(|a, b| a.type_name.cmp(&b.type_name));
    TypeDescriptionMsg {
        type_description: main,
        referenced_type_descriptions: referenced,
    }
}

/// Type description of `diagnostic_msgs/msg/DiagnosticStatus`.
pub fn diagnostic_status_description() -> TypeDescriptionMsg {
    let prim = FieldTypeDescription::primitive;
    let main = TypeDescription {
        type_name: "diagnostic_msgs/msg/DiagnosticStatus".into(),
        fields: vec![
            field("level", prim(TypeId::BYTE)),
            field("name", prim(TypeId::STRING)),
            field("message", prim(TypeId::STRING)),
            field("hardware_id", prim(TypeId::STRING)),
            field(
                "values",
                FieldTypeDescription::nested(
                    TypeId::NESTED_TYPE_UNBOUNDED_SEQUENCE,
                    "diagnostic_msgs/msg/KeyValue",
                ),
            ),
        ],
    };
    let mut referenced = Vec::new();
    absorb(&mut referenced, derived::<KeyValue>());
    finish(main, referenced)
}

/// Type description of `diagnostic_msgs/msg/DiagnosticArray`.
pub fn diagnostic_array_description() -> TypeDescriptionMsg {
    let main = TypeDescription {
        type_name: "diagnostic_msgs/msg/DiagnosticArray".into(),
        fields: vec![
            nested("header", "std_msgs/msg/Header"),
            field(
                "status",
                FieldTypeDescription::nested(
                    TypeId::NESTED_TYPE_UNBOUNDED_SEQUENCE,
                    "diagnostic_msgs/msg/DiagnosticStatus",
                ),
            ),
        ],
    };
    let mut referenced = Vec::new();
    absorb(&mut referenced, derived::<Header>());
    absorb(&mut referenced, diagnostic_status_description());
    finish(main, referenced)
}

/// Type description of the `qis_ros/srv/Query` service, as rosidl generates it: the
/// request, the response and the event message (`service_msgs/ServiceEventInfo` plus
/// at most one request and one response).
pub fn query_service_description() -> TypeDescriptionMsg {
    let prim = FieldTypeDescription::primitive;
    let bounded_one = |type_name: &str| FieldTypeDescription {
        type_id: TypeId::NESTED_TYPE_BOUNDED_SEQUENCE,
        capacity: 1,
        string_capacity: 0,
        nested_type_name: type_name.into(),
    };
    let event = TypeDescription {
        type_name: "qis_ros/srv/Query_Event".into(),
        fields: vec![
            nested("info", "service_msgs/msg/ServiceEventInfo"),
            field("request", bounded_one("qis_ros/srv/Query_Request")),
            field("response", bounded_one("qis_ros/srv/Query_Response")),
        ],
    };
    // service_msgs/msg/ServiceEventInfo; `char[16]` is `uint8[16]` in ROS 2 IDL.
    let event_info = TypeDescription {
        type_name: "service_msgs/msg/ServiceEventInfo".into(),
        fields: vec![
            field("event_type", prim(TypeId::UINT8)),
            nested("stamp", "builtin_interfaces/msg/Time"),
            field(
                "client_gid",
                FieldTypeDescription::array(TypeId::UINT8_ARRAY, 16),
            ),
            field("sequence_number", prim(TypeId::INT64)),
        ],
    };
    let main = TypeDescription {
        type_name: "qis_ros/srv/Query".into(),
        fields: vec![
            nested("request_message", "qis_ros/srv/Query_Request"),
            nested("response_message", "qis_ros/srv/Query_Response"),
            nested("event_message", "qis_ros/srv/Query_Event"),
        ],
    };
    let mut referenced = vec![event, event_info];
    absorb(&mut referenced, derived::<QueryRequest>());
    absorb(&mut referenced, derived::<QueryResponse>());
    absorb(&mut referenced, derived::<super::msgs::Time>());
    finish(main, referenced)
}

fn hash_of(desc: &TypeDescriptionMsg) -> TypeHash {
    // Both hash types are the same 32 bytes behind the same RIHS01 text form.
    TypeHash::from_rihs_string(&calculate_hash(desc).to_rihs_string())
        .unwrap_or_else(TypeHash::zero)
}

fn cached(cell: &'static OnceLock<TypeHash>, describe: fn() -> TypeDescriptionMsg) -> TypeHash {
    cell.get_or_init(|| hash_of(&describe())).clone()
}

impl MessageTypeInfo for DiagnosticStatus {
    fn type_name() -> &'static str {
        "diagnostic_msgs::msg::dds_::DiagnosticStatus_"
    }

    fn type_hash() -> TypeHash {
        static HASH: OnceLock<TypeHash> = OnceLock::new();
        cached(&HASH, diagnostic_status_description)
    }
}

impl WithTypeInfo for DiagnosticStatus {}

impl MessageTypeInfo for DiagnosticArray {
    fn type_name() -> &'static str {
        "diagnostic_msgs::msg::dds_::DiagnosticArray_"
    }

    fn type_hash() -> TypeHash {
        static HASH: OnceLock<TypeHash> = OnceLock::new();
        cached(&HASH, diagnostic_array_description)
    }
}

impl WithTypeInfo for DiagnosticArray {}

impl ServiceTypeInfo for Query {
    fn service_type_info() -> TypeInfo {
        static HASH: OnceLock<TypeHash> = OnceLock::new();
        TypeInfo::new(
            "qis_ros::srv::dds_::Query_",
            cached(&HASH, query_service_description),
        )
    }
}
