# Stand-in for ament_cmake (test/ros_build.rs): BUILD_TESTING defaults to ON as there.
option(BUILD_TESTING "Build the testing tree." ON)
macro(ament_export_dependencies)
endmacro()
macro(ament_package)
endmacro()
