//! The node, independent of any ROS binding: what `qis_node` does with a prediction, an
//! outcome or a fleet record, as plain synchronous functions of the message and the
//! time. The bindings in `crate::ros` only move messages in and out.

pub mod answer;
pub mod diagnostics;
pub mod fleet_port;
pub mod input;
pub mod logic;
pub mod pairing;
pub mod params;

pub use answer::PredictionAnswer;
pub use diagnostics::{Counters, LogLimiter, RejectKind, Report};
pub use fleet_port::{FleetPort, LocalOnly};
pub use input::InputError;
pub use logic::{Intake, NodeLogic, OutcomeEffect};
pub use params::{NodeParams, ParamError};

#[cfg(test)]
mod tests;
