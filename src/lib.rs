//! qis_ros: outcome memory for robot world models.
//!
//! `core` is pure (no ROS, no networking): fingerprints, discrepancy, summaries,
//! synthesis and the embedded store. `node` is the binding-free node logic, `ros` its
//! runner and bindings, `fleet` shares records over Zenoh, and `app` wires them into
//! one node behind a builder (what `qis node` runs).
//!
//! Cargo features (all on by default): `node` (node, ros, fleet, link, app), `sim` (the
//! simulator) and `faiss` (the neighbor index on faiss). With `--no-default-features`
//! only `core` is built, with no ROS, Zenoh, C++ build, plotting or progress bars.

#[cfg(feature = "node")]
pub mod app;
pub mod core;
#[cfg(feature = "node")]
pub mod fleet;
#[cfg(feature = "node")]
pub mod link;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod ros;
#[cfg(feature = "sim")]
pub mod sim;
