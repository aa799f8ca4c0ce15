"""Launches qis_node: params file, namespace, topic remaps, use_sim_time, the binding
and the Zenoh endpoints.

    ros2 launch qis_ros qis.launch.py namespace:=robot1 \
        prediction_topic:=/world_model/prediction use_sim_time:=true
    ros2 launch qis_ros qis.launch.py binding:=r2r          # rcl through r2r, any RMW
    ros2 launch qis_ros qis.launch.py zenoh_connect:=tcp/10.0.0.2:7447

The node takes a ROS 2 params file (`/**/qis_node: ros__parameters:`, default
config/qis.yaml of this package); every argument below can be overridden.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
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

BINDINGS = ["native", "r2r"]


def endpoints(flag, value):
    """`--connect a --connect b` for "a,b" (empty: the binding's default)."""
    return [arg for e in value.split(",") if e.strip() for arg in (flag, e.strip())]


def node_arguments(context):
    """The qis command line before --ros-args: the node, its binding, its endpoints."""
    binding = LaunchConfiguration("binding").perform(context)
    if binding not in BINDINGS:
        raise RuntimeError(f"binding:={binding}: expected one of {BINDINGS}")
    args = ["node"]
    if binding == "r2r":
        # rcl through r2r: the RMW (and its endpoints) come from the ROS environment.
        args.append("--r2r")
    args += endpoints("--connect", LaunchConfiguration("zenoh_connect").perform(context))
    args += endpoints("--listen", LaunchConfiguration("zenoh_listen").perform(context))
    return args


def launch_setup(context):
    return [
        Node(
            package="qis_ros",
            executable="qis",
            name=LaunchConfiguration("node_name"),
            namespace=LaunchConfiguration("namespace"),
            arguments=node_arguments(context),
            parameters=[
                LaunchConfiguration("params_file"),
                {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
            ],
            remappings=[(topic, LaunchConfiguration(arg)) for arg, topic, _ in TOPICS],
            ros_arguments=["--log-level", LaunchConfiguration("log_level")],
            output="screen",
        )
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
        DeclareLaunchArgument(
            "log_level",
            default_value="info",
            description="Log level: debug|info|warn|error|fatal, or logger:=level",
        ),
        DeclareLaunchArgument(
            "binding",
            default_value="native",
            choices=BINDINGS,
            description="native: ROS 2 over Zenoh (rmw_zenoh wire) without rcl; r2r: rcl, any RMW "
            "(needs a build with -DQIS_CARGO_FEATURES=r2r)",
        ),
        DeclareLaunchArgument(
            "zenoh_connect",
            default_value="",
            description="Zenoh endpoints to connect to, comma-separated (native; empty: "
            "a router on tcp/localhost:7447, as rmw_zenoh)",
        ),
        DeclareLaunchArgument(
            "zenoh_listen",
            default_value="",
            description="Zenoh endpoints to listen on, comma-separated (native)",
        ),
    ]
    args += [DeclareLaunchArgument(arg, default_value=topic, description=help) for arg, topic, help in TOPICS]
    return LaunchDescription(args + [OpaqueFunction(function=launch_setup)])
