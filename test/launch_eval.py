#!/usr/bin/env python3
"""Evaluates a launch file of this package without ROS 2 and prints, as JSON, the
command line of every node it starts, built the way launch_ros's `Node` builds it
(Jazzy, launch_ros/actions/node.py): `[executable] + arguments`, then
`--ros-args` + `ros_arguments` when given, then `--ros-args -r __node:=NAME
-r __ns:=/NS`, each parameter entry as `--params-file` (a path, or a dict written to a
temporary `/**: ros__parameters:` file), and each remapping as `-r from:=to`.

`launch` and `launch_ros` cannot be installed here (the PyPI `launch` is another
project; launch_ros is not on PyPI), so the modules the launch files import are replaced
by the stand-ins below, which do what these files use and nothing more. What the stand-ins
model is checked against the real binary's `--ros-args` parsing by test/ros_build.rs;
a real `ros2 launch` is the final word.

    python3 test/launch_eval.py launch/qis.launch.py namespace:=robot1 binding:=r2r
"""
import json
import pathlib
import runpy
import sys
import tempfile
import types

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Context:
    def __init__(self, configs):
        self.launch_configurations = dict(configs)


def perform(value, context):
    """A substitution, a list of them (concatenated), or a plain value."""
    if hasattr(value, "perform"):
        return value.perform(context)
    if isinstance(value, (list, tuple)):
        return "".join(perform(v, context) for v in value)
    return value


class LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name = name
        self.default = default

    def perform(self, context):
        if self.name in context.launch_configurations:
            return context.launch_configurations[self.name]
        if self.default is not None:
            return perform(self.default, context)
        raise KeyError(f"launch configuration {self.name!r} is not set")


class PathJoinSubstitution:
    def __init__(self, parts):
        self.parts = parts

    def perform(self, context):
        return "/".join(perform(p, context) for p in self.parts)


class FindPackageShare:
    """The package's share directory: the repository itself (CMakeLists.txt installs
    launch/ and config/ into share/qis_ros)."""

    def __init__(self, package):
        if package != "qis_ros":
            raise RuntimeError(f"unknown package {package}")

    def perform(self, context):
        return str(ROOT)


class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", choices=None):
        self.name = name
        self.default_value = default_value
        self.choices = choices

    def execute(self, context):
        if self.name not in context.launch_configurations:
            if self.default_value is None:
                raise RuntimeError(f"launch argument {self.name!r} is required")
            context.launch_configurations[self.name] = perform(self.default_value, context)
        value = context.launch_configurations[self.name]
        if self.choices is not None and value not in self.choices:
            raise RuntimeError(f"{self.name}:={value} is not one of {self.choices}")
        return []


class OpaqueFunction:
    def __init__(self, function, args=None, kwargs=None):
        self.function = function
        self.args = args or []
        self.kwargs = kwargs or {}

    def execute(self, context):
        return self.function(context, *self.args, **self.kwargs) or []


class PythonLaunchDescriptionSource:
    def __init__(self, path):
        self.path = path


class IncludeLaunchDescription:
    def __init__(self, source, launch_arguments=None):
        self.source = source
        self.launch_arguments = list(launch_arguments or [])

    def execute(self, context):
        # Launch arguments of an include join the (shared, unscoped) configurations.
        for k, v in self.launch_arguments:
            context.launch_configurations[perform(k, context)] = perform(v, context)
        return [load(perform(self.source.path, context))]


class LaunchDescription:
    def __init__(self, entities):
        self.entities = list(entities)

    def execute(self, context):
        return self.entities


class ParameterValue:
    def __init__(self, value, value_type=None):
        self.value = value
        self.value_type = value_type

    def evaluate(self, context):
        text = perform(self.value, context)
        if self.value_type is None or self.value_type is str:
            return text
        value = yaml.safe_load(text)
        if not isinstance(value, self.value_type):
            raise RuntimeError(f"{text!r} is not a {self.value_type.__name__}")
        return value


class Node:
    def __init__(self, package, executable, name=None, namespace=None, arguments=None,
                 parameters=None, remappings=None, ros_arguments=None, output=None):
        self.__dict__.update(locals())

    def execute(self, context):
        p = lambda v: perform(v, context)  # noqa: E731
        cmd = [p(self.executable)] + [p(a) for a in self.arguments or []]
        if self.ros_arguments:
            cmd += ["--ros-args"] + [p(a) for a in self.ros_arguments]
        cmd += ["--ros-args"]
        if self.name is not None:
            cmd += ["-r", f"__node:={p(self.name)}"]
        ns = p(self.namespace) if self.namespace is not None else ""
        if not ns.startswith("/"):
            ns = "/" + ns
        cmd += ["-r", f"__ns:={ns}"]
        for entry in self.parameters or []:
            if isinstance(entry, dict):
                params = {k: (v.evaluate(context) if isinstance(v, ParameterValue) else p(v))
                          for k, v in entry.items()}
                with tempfile.NamedTemporaryFile("w", prefix="launch_params_", suffix=".yaml",
                                                 delete=False) as f:
                    yaml.dump({"/**": {"ros__parameters": params}}, f, default_flow_style=False)
                cmd += ["--params-file", f.name]
            else:
                cmd += ["--params-file", p(entry)]
        for src, dst in self.remappings or []:
            cmd += ["-r", f"{p(src)}:={p(dst)}"]
        NODES.append({"package": p(self.package), "executable": cmd[0], "cmd": cmd})
        return []


NODES = []


def stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


stub("launch", LaunchDescription=LaunchDescription)
stub("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument, OpaqueFunction=OpaqueFunction,
     IncludeLaunchDescription=IncludeLaunchDescription)
stub("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
     PathJoinSubstitution=PathJoinSubstitution)
stub("launch.launch_description_sources", PythonLaunchDescriptionSource=PythonLaunchDescriptionSource)
stub("launch_ros")
stub("launch_ros.actions", Node=Node)
stub("launch_ros.parameter_descriptions", ParameterValue=ParameterValue)
stub("launch_ros.substitutions", FindPackageShare=FindPackageShare)


def load(path):
    return runpy.run_path(str(path))["generate_launch_description"]()


def run(path, configs):
    context = Context(configs)
    pending = [load(path)]
    while pending:
        entity = pending.pop(0)
        pending[0:0] = list(entity.execute(context))
    return NODES


if __name__ == "__main__":
    file, *rest = sys.argv[1:]
    configs = dict(a.split(":=", 1) for a in rest)
    try:
        print(json.dumps(run(ROOT / file, configs)))
    except Exception as e:  # noqa: BLE001 - the error is the answer
        print(f"launch error: {e}", file=sys.stderr)
        sys.exit(2)
