//! qis_ros: outcome memory for robot world models.
//!
//! `core` is pure (no ROS, no networking): fingerprints, discrepancy, summaries,
//! synthesis and the embedded store.

pub mod core;
pub mod node;
pub mod ros;
