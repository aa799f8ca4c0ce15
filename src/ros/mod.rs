//! ROS 2 bindings of the node: the message types, `--ros-args` handling, the one
//! [`runner`] around [`crate::node::NodeLogic`], and the native (hiroz, rmw_zenoh wire
//! format) and r2r transports it runs on.

pub mod args;
pub mod clock;
pub mod logging;
pub mod msgs;
pub mod names;
pub mod native;
pub mod params_file;
#[cfg(feature = "r2r")]
pub mod r2r_binding;
#[cfg(feature = "r2r")]
mod r2r_params;
pub mod ros_params;
pub mod runner;
pub mod type_hash;
