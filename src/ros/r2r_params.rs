//! The node's parameters as ROS 2 parameters on r2r (`ros2 param list/get/describe/set`):
//! the same declarations as the native binding ([`ros_params::declarations`]), served by
//! r2r's parameter services through its [`RosParams`] trait, and a `set` applied to the
//! one [`NodeLogic`] through [`NodeLogic::set_params`], so a bad value or a read-only
//! parameter is refused with the same reason on both bindings.
//!
//! What r2r cannot carry: its descriptors hold a description only (no type constraint,
//! range or `read_only` flag for `ros2 param describe`; a read-only parameter is still
//! refused on `set`, with [`ros_params::READ_ONLY_NOTE`]'s reason), and it publishes no
//! `/parameter_events` (a change is logged instead).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use hiroz::parameter::ParameterValue as Value;
use r2r::indexmap::IndexMap;
use r2r::{Parameter, ParameterValue, RosParams};

use super::ros_params::{self, Declared};
use crate::node::NodeLogic;

/// The node's parameters behind r2r's parameter services.
pub(super) struct R2rParams {
    logic: Arc<Mutex<NodeLogic>>,
    /// Current value and description of every declared parameter.
    declared: BTreeMap<String, (ParameterValue, &'static str)>,
}

impl R2rParams {
    /// Wraps the declarations of the logic's parameters.
    pub(super) fn new(logic: Arc<Mutex<NodeLogic>>, declared: Vec<Declared>) -> Self {
        let declared = declared
            .into_iter()
            .map(|d| {
                // r2r keeps descriptions as `&'static str`: leaked once per parameter at
                // start-up (about a hundred short strings), never again.
                let description: &'static str = Box::leak(d.descriptor.description.into());
                (d.name, (to_r2r(&d.value), description))
            })
            .collect();
        Self { logic, declared }
    }

    /// How many parameters are declared.
    pub(super) fn len(&self) -> usize {
        self.declared.len()
    }
}

fn conversion(name: &str, msg: impl Into<String>) -> r2r::Error {
    r2r::Error::ParameterValueConv {
        name: name.to_owned(),
        msg: msg.into(),
    }
}

impl RosParams for R2rParams {
    fn register_parameters(
        &mut self,
        _prefix: &str,
        _param: Option<Parameter>,
        params: &mut IndexMap<String, Parameter>,
    ) -> r2r::Result<()> {
        // Values given on the command line were already read by our own loader (the same
        // for both bindings), so the declared values are the ones in force.
        for (name, (value, description)) in &self.declared {
            params.insert(
                name.clone(),
                Parameter {
                    value: value.clone(),
                    description,
                },
            );
        }
        Ok(())
    }

    fn get_parameter(&mut self, name: &str) -> r2r::Result<ParameterValue> {
        self.declared
            .get(name)
            .map(|(v, _)| v.clone())
            .ok_or_else(|| r2r::Error::InvalidParameterName {
                name: name.to_owned(),
            })
    }

    fn set_parameter(&mut self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        self.check_parameter(name, value)?;
        let yaml = ros_params::to_yaml(&from_r2r(value)).map_err(|e| conversion(name, e))?;
        let result = self
            .logic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_params(&[(name.to_owned(), yaml)]);
        match result {
            Ok(()) => {
                tracing::info!(parameter = %name, value = ?value, "parameter set");
                if let Some((v, _)) = self.declared.get_mut(name) {
                    *v = value.clone();
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!("parameter change refused: {e}");
                Err(conversion(name, e.reason))
            }
        }
    }

    fn check_parameter(&self, name: &str, _value: &ParameterValue) -> r2r::Result<()> {
        if !self.declared.contains_key(name) {
            return Err(r2r::Error::InvalidParameterName {
                name: name.to_owned(),
            });
        }
        if !NodeLogic::is_runtime_param(name) {
            return Err(conversion(name, ros_params::READ_ONLY_NOTE));
        }
        Ok(())
    }
}

/// hiroz's parameter value (what the declarations are written in) as r2r's.
fn to_r2r(v: &Value) -> ParameterValue {
    match v {
        Value::NotSet => ParameterValue::NotSet,
        Value::Bool(b) => ParameterValue::Bool(*b),
        Value::Integer(i) => ParameterValue::Integer(*i),
        Value::Double(d) => ParameterValue::Double(*d),
        Value::String(s) => ParameterValue::String(s.clone()),
        Value::ByteArray(b) => ParameterValue::ByteArray(b.clone()),
        Value::BoolArray(b) => ParameterValue::BoolArray(b.clone()),
        Value::IntegerArray(i) => ParameterValue::IntegerArray(i.clone()),
        Value::DoubleArray(d) => ParameterValue::DoubleArray(d.clone()),
        Value::StringArray(s) => ParameterValue::StringArray(s.clone()),
    }
}

/// r2r's parameter value as hiroz's, which [`ros_params::to_yaml`] reads.
fn from_r2r(v: &ParameterValue) -> Value {
    match v {
        ParameterValue::NotSet => Value::NotSet,
        ParameterValue::Bool(b) => Value::Bool(*b),
        ParameterValue::Integer(i) => Value::Integer(*i),
        ParameterValue::Double(d) => Value::Double(*d),
        ParameterValue::String(s) => Value::String(s.clone()),
        ParameterValue::ByteArray(b) => Value::ByteArray(b.clone()),
        ParameterValue::BoolArray(b) => Value::BoolArray(b.clone()),
        ParameterValue::IntegerArray(i) => Value::IntegerArray(i.clone()),
        ParameterValue::DoubleArray(d) => Value::DoubleArray(d.clone()),
        ParameterValue::StringArray(s) => Value::StringArray(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_the_round_trip_between_the_two_bindings_types() {
        let values = [
            Value::Bool(true),
            Value::Integer(-3),
            Value::Double(0.25),
            Value::String("x".into()),
            Value::DoubleArray(vec![1.0, 2.0]),
            Value::StringArray(vec!["a".into()]),
        ];
        for v in values {
            assert_eq!(from_r2r(&to_r2r(&v)), v);
        }
    }
}
