//! qis_ros: outcome memory for robot world models.
//!
//! `core` is pure (no ROS, no networking): fingerprints, discrepancy, summaries,
//! synthesis and the embedded store. `node` is the binding-free node logic, `ros` its
//! runner and bindings, `fleet` shares records over Zenoh, and `app` wires them into
//! one node behind a builder (what `qis node` runs).

pub mod app;
pub mod core;
pub mod fleet;
pub mod link;
pub mod node;
pub mod ros;
pub mod sim;
