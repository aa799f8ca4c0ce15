"""Launches qis_node: params file, namespace, topic remaps and use_sim_time.

    ros2 launch qis_ros qis.launch.py namespace:=robot1 \
        prediction_topic:=/world_model/prediction use_sim_time:=true

The node takes a ROS 2 params file (`qis_node: ros__parameters:`, default
config/qis.yaml of this package); every argument below can be overridden.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# (launch argument, node topic, help)
TOPICS = [
    ("prediction_topic", "prediction", "Prediction input (qis_ros/msg/Prediction)"),
    ("outcome_topic", "outcome", "Outcome input (qis_ros/msg/Outcome)"),
    ("corrected_prior_topic", "corrected_prior", "CorrectedPrior output"),
    ("corrected_prior_shadow_topic", "corrected_prior_shadow", "CorrectedPrior output in shadow mode"),
    ("discrepancy_topic", "discrepancy", "Discrepancy output"),
    ("query_service", "query", "Query service (qis_ros/srv/Query)"),
]


def generate_launch_description():
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace (one per robot)"),
        DeclareLaunchArgument("node_name", default_value="qis_node", description="Node name"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("qis_ros"), "config", "qis.yaml"]),
            description="ROS 2 params file for qis_node",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            description="Follow /clock (Gazebo, Isaac Sim) instead of the system clock",
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="Log level"),
    ]
    args += [DeclareLaunchArgument(arg, default_value=topic, description=help) for arg, topic, help in TOPICS]
    node = Node(
        package="qis_ros",
        executable="qis",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        arguments=["node"],
        parameters=[
            LaunchConfiguration("params_file"),
            {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
        ],
        remappings=[(topic, LaunchConfiguration(arg)) for arg, topic, _ in TOPICS],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
    )
    return LaunchDescription(args + [node])
