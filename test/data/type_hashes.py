#!/usr/bin/env python3
"""Independent RIHS01 type hashes (REP-2011) of the node's ROS 2 types, computed by the
`rosbags` library from the .msg/.srv text (not from our Rust code), written to
test/data/type_hashes.json and checked by test/msgs.rs.

Regenerate: python3 -m pip install rosbags && python3 test/data/type_hashes.py
(test/interop_ros.py imports its service hashing for the rcl_interfaces services.)
"""
import json
import pathlib
import re

from rosbags.typesys import Stores, get_typestore, get_types_from_msg

ROOT = pathlib.Path(__file__).resolve().parents[2]
# rmw_zenoh's design document gives this key for example_interfaces/srv/AddTwoInts on
# Jazzy; the service hashing below must reproduce it.
ADD_TWO_INTS = "RIHS01_e118de6bf5eeb66a2491b5bda11202e7b68f198d6f67922cf30364858239c81a"


def strip(text):
    """The .msg text without comments."""
    return "\n".join(re.sub(r"#.*", "", line).rstrip() for line in text.splitlines())


def parse(text, name, pkg):
    """Parses msg text; rosbags names service parts `pkg/srv/msg/X` where rosidl says
    `pkg/srv/X`, and resolves a bare type inside a .srv to `pkg/srv/msg/T` where rosidl
    means the package's `pkg/msg/T`."""
    srv_parts = ("_Request", "_Response", "_Event")

    def fix(ref):
        prefix = f"{pkg}/srv/msg/"
        if ref.startswith(prefix):
            short = ref[len(prefix):]
            is_srv = short.endswith(srv_parts) or f"{pkg}/srv/{short}" == name
            return f"{pkg}/srv/{short}" if is_srv else f"{pkg}/msg/{short}"
        return ref

    def fix_field(desc):
        kind, arg = desc
        if isinstance(arg, str):
            return (kind, fix(arg))
        if isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[0], tuple):
            return (kind, (fix_field(arg[0]), arg[1]))
        return desc

    return {
        fix(key): (consts, [(n, fix_field(d)) for n, d in fields])
        for key, (consts, fields) in get_types_from_msg(text, name).items()
    }


def service_types(pkg, name, request, response):
    """The types rosidl generates for a service: request, response, the event message
    (ServiceEventInfo + at most one request and one response) and the service itself."""
    srv = f"{pkg}/srv/{name}"
    types = {}
    types.update(parse(request, f"{srv}_Request", pkg))
    types.update(parse(response, f"{srv}_Response", pkg))
    types.update(parse(
        f"service_msgs/ServiceEventInfo info\n{srv}_Request[<=1] request\n{srv}_Response[<=1] response\n",
        f"{srv}_Event", pkg))
    types.update(parse(
        f"{srv}_Request request_message\n{srv}_Response response_message\n{srv}_Event event_message\n",
        srv, pkg))
    return types


def service_store():
    """An empty store with the service plumbing. rosbags's bundled ServiceEventInfo keeps
    `char[16] client_gid` as FIELD_TYPE_CHAR, but rosidl turns msg `char` into `uint8`,
    which is what reproduces ADD_TWO_INTS."""
    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg("int32 sec\nuint32 nanosec\n", "builtin_interfaces/msg/Time"))
    store.register(get_types_from_msg(
        "uint8 event_type\nbuiltin_interfaces/Time stamp\nuint8[16] client_gid\nint64 sequence_number\n",
        "service_msgs/msg/ServiceEventInfo"))
    return store


def main():
    check = service_store()
    check.register(service_types("example_interfaces", "AddTwoInts", "int64 a\nint64 b\n", "int64 sum\n"))
    assert check.hash_rihs01("example_interfaces/srv/AddTwoInts") == ADD_TWO_INTS

    msgs = {}
    for path in sorted((ROOT / "msg").glob("*.msg")):
        msgs.update(get_types_from_msg(strip(path.read_text()), f"qis_ros/msg/{path.stem}"))

    jazzy = get_typestore(Stores.ROS2_JAZZY)
    jazzy.register(msgs)
    names = [
        "builtin_interfaces/msg/Time",
        "std_msgs/msg/Header",
        "rosgraph_msgs/msg/Clock",
        "rcl_interfaces/msg/Log",
        "diagnostic_msgs/msg/KeyValue",
        "diagnostic_msgs/msg/DiagnosticStatus",
        "diagnostic_msgs/msg/DiagnosticArray",
        *sorted(msgs),
    ]
    out = {name: jazzy.hash_rihs01(name) for name in names}

    svc = service_store()
    svc.register(msgs)
    request, response = strip((ROOT / "srv" / "Query.srv").read_text()).split("---")
    svc.register(service_types("qis_ros", "Query", request, response))
    for name in ["qis_ros/srv/Query_Request", "qis_ros/srv/Query_Response", "qis_ros/srv/Query"]:
        out[name] = svc.hash_rihs01(name)

    (ROOT / "test" / "data" / "type_hashes.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
