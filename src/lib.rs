//! qis_ros: outcome memory for robot world models.
//!
//! `core` is pure (no ROS, no networking): fingerprints, discrepancy, summaries,
//! synthesis and the embedded store. `fleet` shares records over Zenoh.

pub mod core;
pub mod fleet;
pub mod link;
pub mod node;
pub mod ros;
pub mod sim;
