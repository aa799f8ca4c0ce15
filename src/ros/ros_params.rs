//! The node's parameters as ROS 2 parameters: every [`NodeParams`] field, flattened to
//! dotted names (`synthesis.prior_strength`), declared with its type, a description
//! (the comment of `config/qis.yaml`), a range where one applies, and `read_only` unless
//! [`NodeLogic::is_runtime_param`] says it can change while the node runs. The parameter
//! services (`ros2 param list/get/describe/set`) and `/parameter_events` are hiroz's.

use std::collections::BTreeMap;

use hiroz::parameter::{FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterValue};
use serde_yaml_ng::Value;
use thiserror::Error;

use super::params_file::flatten;
use crate::node::{NodeLogic, NodeParams};

/// The shipped params file, whose comments describe each parameter.
const DOCUMENTED: &str = include_str!("../../config/qis.yaml");

/// What `additional_constraints` says of a parameter read at start-up only.
pub const READ_ONLY_NOTE: &str =
    "read-only while the node runs: set it in the params file or with -p, then restart";

/// A parameter value that has no ROS 2 parameter form.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RosParamError {
    /// The parameters could not be turned into a tree (a bug: every field serializes).
    #[error("parameters not representable: {0}")]
    Tree(String),
    /// A value with no ROS 2 parameter type (a number too large, a mixed list).
    #[error("parameter `{name}`: {reason}")]
    Value {
        /// The parameter.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// One parameter as the node declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct Declared {
    /// Dotted name.
    pub name: String,
    /// Its value at start-up.
    pub value: ParameterValue,
    /// Type, description, range, read-only.
    pub descriptor: ParameterDescriptor,
}

/// Every parameter of `params`, in name order, with its descriptor.
pub fn declarations(params: &NodeParams) -> Result<Vec<Declared>, RosParamError> {
    let tree = serde_yaml_ng::to_value(params).map_err(|e| RosParamError::Tree(e.to_string()))?;
    let mut flat = BTreeMap::new();
    flatten("", &tree, &mut flat);
    let docs = descriptions();
    let mut out = Vec::new();
    for (name, v) in &flat {
        let value = match v {
            // An empty group (no feature bins configured) has no parameter.
            Value::Mapping(_) => continue,
            // An unset optional path: declared as an empty string ("" = unset).
            Value::Null => ParameterValue::String(String::new()),
            Value::Sequence(s) if s.is_empty() => empty_list(&tree, name),
            other => from_yaml(name, other)?,
        };
        let read_only = !NodeLogic::is_runtime_param(name);
        let mut descriptor = ParameterDescriptor::new(name.clone(), value.parameter_type());
        descriptor.description = description(&docs, name);
        descriptor.read_only = read_only;
        if read_only {
            descriptor.additional_constraints = READ_ONLY_NOTE.to_string();
        } else {
            descriptor.additional_constraints =
                "changes the running node; checked as at start-up, a refused value is reported with the reason"
                    .to_string();
        }
        apply_range(name, &value, &mut descriptor);
        out.push(Declared {
            name: name.clone(),
            value,
            descriptor,
        });
    }
    Ok(out)
}

/// The ROS 2 value of a YAML leaf of the parameter tree.
fn from_yaml(name: &str, v: &Value) -> Result<ParameterValue, RosParamError> {
    let bad = |reason: &str| RosParamError::Value {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    Ok(match v {
        Value::Bool(b) => ParameterValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ParameterValue::Integer(i),
            None if n.is_f64() => ParameterValue::Double(n.as_f64().unwrap_or(f64::NAN)),
            None => return Err(bad("integer beyond the int64 range of ROS 2 parameters")),
        },
        Value::String(s) => ParameterValue::String(s.clone()),
        Value::Sequence(items) => {
            if let Some(b) = items.iter().map(Value::as_bool).collect::<Option<Vec<_>>>() {
                ParameterValue::BoolArray(b)
            } else if let Some(i) = items
                .iter()
                .map(|v| v.as_i64().filter(|_| !v.is_f64()))
                .collect::<Option<Vec<_>>>()
            {
                ParameterValue::IntegerArray(i)
            } else if let Some(d) = items.iter().map(Value::as_f64).collect::<Option<Vec<_>>>() {
                ParameterValue::DoubleArray(d)
            } else if let Some(s) = items
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
            {
                ParameterValue::StringArray(s)
            } else {
                return Err(bad("a list mixing types has no ROS 2 parameter type"));
            }
        }
        Value::Null | Value::Mapping(_) | Value::Tagged(_) => {
            return Err(bad("not a scalar or a list"));
        }
    })
}

/// The typed empty list of an empty sequence: the first element type the parameters
/// accept there (bool, double, integer, string), found by deserializing a probe.
fn empty_list(tree: &Value, name: &str) -> ParameterValue {
    let accepts = |probe: &str| {
        let mut t = tree.clone();
        let Some(slot) = slot(&mut t, name) else {
            return false;
        };
        *slot = serde_yaml_ng::from_str(probe).unwrap_or(Value::Null);
        serde_yaml_ng::from_value::<NodeParams>(t).is_ok()
    };
    if accepts("[true]") {
        ParameterValue::BoolArray(vec![])
    } else if accepts("[0.5]") {
        ParameterValue::DoubleArray(vec![])
    } else if accepts("[1]") {
        ParameterValue::IntegerArray(vec![])
    } else {
        ParameterValue::StringArray(vec![])
    }
}

fn slot<'a>(tree: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    name.split('.').try_fold(tree, |node, part| match node {
        Value::Mapping(m) => m.get_mut(part),
        _ => None,
    })
}

/// The YAML form of a ROS 2 value, as `-p name:=value` would give it; `Err` for an
/// unset value.
pub fn to_yaml(v: &ParameterValue) -> Result<Value, String> {
    let seq = |items: Vec<Value>| Value::Sequence(items);
    Ok(match v {
        ParameterValue::NotSet => return Err("a parameter of this node cannot be unset".into()),
        ParameterValue::Bool(b) => Value::Bool(*b),
        ParameterValue::Integer(i) => Value::Number((*i).into()),
        ParameterValue::Double(d) => Value::Number((*d).into()),
        ParameterValue::String(s) => Value::String(s.clone()),
        ParameterValue::ByteArray(b) => seq(b.iter().map(|x| Value::Number((*x).into())).collect()),
        ParameterValue::BoolArray(b) => seq(b.iter().map(|x| Value::Bool(*x)).collect()),
        ParameterValue::IntegerArray(i) => {
            seq(i.iter().map(|x| Value::Number((*x).into())).collect())
        }
        ParameterValue::DoubleArray(d) => {
            seq(d.iter().map(|x| Value::Number((*x).into())).collect())
        }
        ParameterValue::StringArray(s) => seq(s.iter().map(|x| Value::String(x.clone())).collect()),
    })
}

/// Ranges of the numeric parameters with a plain interval (the checks of
/// `NodeParams::validate` still apply: a range endpoint it excludes is refused there).
const FLOAT_RANGES: &[(&str, f64, f64)] = &[
    ("first_encounter_wait_s", 0.0, 60.0),
    ("trust.initial", 0.0, 1.0),
    ("validation.max_abs_residual", 0.0, 1e100),
];

/// Integer parameters that must be at least 1.
const AT_LEAST_ONE: &[&str] = &[
    "max_pending",
    "neighbors_max_addresses",
    "min_count_to_share",
    "trust.max_sources",
    "validation.max_count",
    "memory.max_received_records",
    "store.max_received_records",
];

fn apply_range(name: &str, value: &ParameterValue, d: &mut ParameterDescriptor) {
    match value {
        ParameterValue::Double(_) => {
            let (from, to) = FLOAT_RANGES
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or((0.0, f64::INFINITY), |(_, a, b)| (*a, *b));
            // Every double parameter of the node is >= 0 except a bin origin.
            if !name.ends_with(".origin") && !name.contains(".edges") {
                d.floating_point_range = Some(FloatingPointRange {
                    from_value: from,
                    to_value: to,
                    step: 0.0,
                });
            }
        }
        ParameterValue::Integer(_) => {
            let from = i64::from(AT_LEAST_ONE.contains(&name));
            d.integer_range = Some(IntegerRange {
                from_value: from,
                to_value: i64::MAX,
                step: 0,
            });
        }
        _ => {}
    }
}

/// Descriptions by dotted name, from the comments of `config/qis.yaml` (a comment on a
/// line of its own continues the one above).
fn descriptions() -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut last: Option<String> = None;
    for line in DOCUMENTED.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        let (code, comment) = match body
            .find(" #")
            .map(|i| (i, i + 2))
            .or_else(|| body.starts_with('#').then_some((0, 1)))
        {
            Some((end, start)) => (body[..end].trim(), body[start..].trim()),
            None => (body, ""),
        };
        if code.is_empty() {
            // A comment line of its own: continues the previous key's description.
            if let (Some(key), false) = (&last, comment.is_empty()) {
                let d = out.entry(key.clone()).or_default();
                if !d.is_empty() {
                    d.push(' ');
                }
                d.push_str(comment);
            }
            continue;
        }
        let Some((key, _)) = code.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().to_string()));
        // qis_node: ros__parameters: ... (the first two levels are the section).
        let name = stack
            .iter()
            .skip(2)
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        if name.is_empty() {
            last = None;
            continue;
        }
        if !comment.is_empty() {
            out.insert(name.clone(), comment.to_string());
        }
        last = Some(name);
    }
    out
}

/// A parameter's description: its own comment, else the nearest group's.
fn description(docs: &BTreeMap<String, String>, name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(d) = docs.get(n) {
            return if n == name {
                d.clone()
            } else {
                format!("({n}) {d}")
            };
        }
        match n.rsplit_once('.') {
            Some((parent, _)) => n = parent,
            None => return String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hiroz::parameter::ParameterType;

    fn by_name(params: &NodeParams) -> BTreeMap<String, Declared> {
        declarations(params)
            .unwrap()
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect()
    }

    #[test]
    fn every_parameter_is_declared_with_its_type_and_value() {
        let params = crate::ros::params_file::load(
            &crate::ros::names::Names::new("qis_node", "/", vec![]).unwrap(),
            &[std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/qis.yaml")],
            &[],
        )
        .unwrap();
        let d = by_name(&params);
        let v = |n: &str| d[n].value.clone();
        assert_eq!(v("fleet"), ParameterValue::String("default".into()));
        assert_eq!(v("max_pending"), ParameterValue::Integer(10_000));
        assert_eq!(v("synthesis.prior_strength"), ParameterValue::Double(0.0));
        assert_eq!(v("use_sim_time"), ParameterValue::Bool(false));
        assert_eq!(
            v("synthesis.max_residual"),
            ParameterValue::DoubleArray(vec![])
        );
        assert_eq!(v("trust.scale"), ParameterValue::DoubleArray(vec![]));
        assert_eq!(v("exchange.connect"), ParameterValue::StringArray(vec![]));
        assert_eq!(
            v("exchange.allowed_keys"),
            ParameterValue::StringArray(vec![])
        );
        assert_eq!(
            v("fingerprint.fleet_secret_file"),
            ParameterValue::String(String::new())
        );
        assert_eq!(
            v("fingerprint.unknown_features"),
            ParameterValue::String("error".into())
        );
        assert_eq!(
            v("fingerprint.features.distance.edges"),
            ParameterValue::DoubleArray(vec![1.0, 5.0, 20.0])
        );
        assert_eq!(
            v("fingerprint.features.speed.width"),
            ParameterValue::Double(1.0)
        );
        assert_eq!(
            v("exchange.differential_privacy.delta"),
            ParameterValue::Double(1e-5)
        );
        // Every documented parameter of the shipped file is declared, and every declared
        // one is documented (a new field needs its line in config/qis.yaml).
        let docs = descriptions();
        for name in d.keys() {
            assert!(
                !d[name].descriptor.description.is_empty(),
                "{name} undocumented"
            );
        }
        for name in docs.keys() {
            let group = d.keys().any(|n| n.starts_with(&format!("{name}.")));
            assert!(
                d.contains_key(name) || group,
                "{name} documented, not declared"
            );
        }
    }

    #[test]
    fn run_time_parameters_are_writable_the_rest_read_only() {
        let d = by_name(&NodeParams::default());
        for name in [
            "synthesis.prior_strength",
            "trust.initial",
            "validation.max_count",
            "neighbors_k",
        ] {
            assert!(!d[name].descriptor.read_only, "{name}");
        }
        for name in [
            "synthesis.half_life_s",
            "max_pending",
            "use_sim_time",
            "fleet",
            "exchange.unsigned",
        ] {
            assert!(d[name].descriptor.read_only, "{name}");
            assert_eq!(d[name].descriptor.additional_constraints, READ_ONLY_NOTE);
        }
        assert_eq!(
            d["trust.initial"].descriptor.floating_point_range,
            Some(FloatingPointRange {
                from_value: 0.0,
                to_value: 1.0,
                step: 0.0
            })
        );
        assert_eq!(
            d["max_pending"]
                .descriptor
                .integer_range
                .as_ref()
                .map(|r| r.from_value),
            Some(1)
        );
        assert!(
            d["synthesis.prior_strength"]
                .descriptor
                .description
                .contains("k0")
        );
        assert_eq!(
            d["synthesis.prior_strength"].descriptor.type_,
            ParameterType::Double
        );
    }

    #[test]
    fn values_convert_both_ways() {
        for (ros, yaml) in [
            (ParameterValue::Bool(true), "true"),
            (ParameterValue::Integer(3), "3"),
            (ParameterValue::Double(2.5), "2.5"),
            (ParameterValue::String("x".into()), "x"),
            (ParameterValue::DoubleArray(vec![0.5, 1.0]), "[0.5, 1.0]"),
            (ParameterValue::IntegerArray(vec![1, 2]), "[1, 2]"),
            (ParameterValue::StringArray(vec!["a".into()]), "[a]"),
            (ParameterValue::BoolArray(vec![false]), "[false]"),
        ] {
            let y: Value = serde_yaml_ng::from_str(yaml).unwrap();
            assert_eq!(to_yaml(&ros).unwrap(), y, "{yaml}");
            assert_eq!(from_yaml("p", &y).unwrap(), ros, "{yaml}");
        }
        assert!(to_yaml(&ParameterValue::NotSet).is_err());
        let mixed: Value = serde_yaml_ng::from_str("[1, a]").unwrap();
        assert!(from_yaml("p", &mixed).is_err());
    }
}
