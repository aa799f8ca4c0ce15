# Stand-in for rosidl_default_generators (test/ros_build.rs): the interface target only.
function(rosidl_generate_interfaces target)
  add_custom_target(${target})
endfunction()
