# Stand-in for std_msgs (test/ros_build.rs).
