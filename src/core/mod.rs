//! The outcome-memory core: everything a robot needs to turn predictions and outcomes
//! into corrected priors, with no ROS and no networking.

pub mod discrepancy;
pub mod fingerprint;
pub mod ids;
pub mod neighbors;
pub mod record;
pub mod store;
pub mod summary;
pub mod synthesis;
