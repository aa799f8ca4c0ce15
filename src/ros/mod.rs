//! ROS 2 bindings of the node: the message types, `--ros-args` handling and the
//! native (hiroz, rmw_zenoh wire format) and r2r runners around [`crate::node::NodeLogic`].

pub mod args;
pub mod clock;
pub mod logging;
pub mod msgs;
pub mod names;
pub mod native;
pub mod params_file;
#[cfg(feature = "r2r")]
pub mod r2r_binding;
pub mod ros_params;
pub mod type_hash;
