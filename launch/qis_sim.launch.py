"""qis_node for simulation (Gazebo, Isaac Sim): qis.launch.py with use_sim_time:=true,
so pairing timeouts and summary decay follow the simulator's /clock. Every argument of
qis.launch.py (namespace, binding, zenoh_connect, ...) passes through.

    ros2 launch qis_ros qis_sim.launch.py namespace:=robot1
"""

from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    main = PathJoinSubstitution([FindPackageShare("qis_ros"), "launch", "qis.launch.py"])
    return LaunchDescription(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(main),
                launch_arguments={"use_sim_time": "true"}.items(),
            )
        ]
    )
