//! The outcome-memory core: everything a robot needs to turn predictions and outcomes
//! into corrected priors, with no ROS and no networking.

pub mod discrepancy;
pub mod drift;
pub mod fingerprint;
pub mod flat_ip;
pub mod ids;
pub mod memory;
pub mod neighbor_prior;
pub mod neighbors;
pub mod plausibility;
pub mod privacy;
pub mod record;
pub mod shrinkage;
pub mod store;
pub mod summary;
pub mod synthesis;
pub mod trust;

/// Largest state dimension accepted anywhere (messages, records, synthesis); larger
/// arrays are refused as oversized, which bounds every allocation made for one input.
pub const MAX_STATE_DIM: usize = 64;
