#!/usr/bin/env python3
"""The ROS 2 plumbing of qis_node seen by an independent rmw_zenoh client (eclipse-zenoh
+ rosbags, no code of ours): what `ros2 param`, `ros2 topic echo /rosout` and a simulator
publishing `/clock` do on the wire. Run by test/interop.rs:

    python3 test/interop_ros.py --router tcp/127.0.0.1:PORT --namespace p params

Type hashes come from rosbags: messages from its Jazzy store, the rcl_interfaces services
composed from their .srv text the way rosidl does (test/data/type_hashes.py, which
reproduces the hash rmw_zenoh's design document gives for AddTwoInts).
Exit status 0 when every check passed; the failed check otherwise.
"""
import argparse
import hashlib
import json
import pathlib
import queue
import re
import struct
import sys
import time

import numpy as np
import zenoh
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "data"))
sys.path.insert(0, str(ROOT / "test"))
import type_hashes as th  # noqa: E402
from interop_common import check, client_session, run  # noqa: E402

WAIT_S = 20.0
DOMAIN = 0

jazzy = get_typestore(Stores.ROS2_JAZZY)
jazzy.register({
    k: v
    for p in sorted((ROOT / "msg").glob("*.msg"))
    for k, v in get_types_from_msg(th.strip(p.read_text()), f"qis_ros/msg/{p.stem}").items()
})

# The rcl_interfaces services behind `ros2 param` (Jazzy .srv text).
SRVS = {
    "ListParameters": ("uint64 DEPTH_RECURSIVE=0\nstring[] prefixes\nuint64 depth\n",
                       "ListParametersResult result\n"),
    "GetParameters": ("string[] names\n", "ParameterValue[] values\n"),
    "SetParameters": ("Parameter[] parameters\n", "SetParametersResult[] results\n"),
    "SetParametersAtomically": ("Parameter[] parameters\n", "SetParametersResult result\n"),
    "DescribeParameters": ("string[] names\n", "ParameterDescriptor[] descriptors\n"),
    "GetParameterTypes": ("string[] names\n", "uint8[] types\n"),
}
svc = th.service_store()
svc.register({n: jazzy.fielddefs[n] for n in jazzy.fielddefs if n.startswith("rcl_interfaces/msg/")})
for _name, (_req, _resp) in SRVS.items():
    svc.register(th.service_types("rcl_interfaces", _name, _req, _resp))
assert svc.hash_rihs01("rcl_interfaces/msg/ParameterDescriptor") == jazzy.hash_rihs01(
    "rcl_interfaces/msg/ParameterDescriptor")

# rcl_interfaces/msg/ParameterType
NOT_SET, BOOL, INTEGER, DOUBLE, STRING = 0, 1, 2, 3, 4
BOOL_ARRAY, INTEGER_ARRAY, DOUBLE_ARRAY, STRING_ARRAY = 6, 7, 8, 9


def dds(typ):
    """`pkg/msg/T` -> `pkg::msg::dds_::T_` (rmw_zenoh's type name)."""
    pkg, kind, name = typ.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def topic_key(name, typ, store=jazzy):
    """rmw_zenoh key: <domain>/<fully qualified name>/<type>/<RIHS01>."""
    return f"{DOMAIN}/{name.strip('/')}/{dds(typ)}/{store.hash_rihs01(typ)}"


class Peer:
    """A Zenoh client session that speaks rmw_zenoh: attachments, topics, services."""

    def __init__(self, router):
        self.session = client_session(router)
        self.gid = hashlib.md5(b"interop_ros").digest()
        self.seq = 0

    def attachment(self):
        self.seq += 1
        att = struct.pack("<qqB", self.seq, time.time_ns(), 16) + self.gid
        assert len(att) == 33
        return att

    def publisher(self, name, typ, store=jazzy):
        pub = self.session.declare_publisher(topic_key(name, typ, store))

        def put(msg):
            pub.put(bytes(store.serialize_cdr(msg, typ)), attachment=self.attachment())

        return put

    def subscriber(self, name, typ, store=jazzy):
        q = queue.Queue()
        self.session.declare_subscriber(
            topic_key(name, typ, store),
            lambda s: q.put(store.deserialize_cdr(s.payload.to_bytes(), typ)),
        )
        return q

    def call(self, service, srv_name, request):
        """Calls rcl_interfaces/srv/<srv_name> at `service` until it answers."""
        typ = f"rcl_interfaces/srv/{srv_name}"
        key = f"{DOMAIN}/{service.strip('/')}/{dds(typ)}/{svc.hash_rihs01(typ)}"
        payload = bytes(svc.serialize_cdr(request, f"{typ}_Request"))
        deadline = time.time() + WAIT_S
        while time.time() < deadline:
            for reply in self.session.get(key, payload=payload, attachment=self.attachment(), timeout=2.0):
                if reply.ok is not None:
                    check(f"{srv_name} reply carries the request's attachment",
                          reply.ok.attachment is not None and len(reply.ok.attachment.to_bytes()) == 33,
                          reply.ok.attachment)
                    return svc.deserialize_cdr(reply.ok.payload.to_bytes(), f"{typ}_Response")
            time.sleep(0.1)
        check(f"{srv_name} answers at {key}", False, "timeout")

    def tokens(self):
        """rmw_zenoh liveliness tokens of the graph, split into their fields."""
        out = []
        for reply in self.session.liveliness().get(f"@ros2_lv/{DOMAIN}/**", timeout=2.0):
            if reply.ok is not None:
                out.append(str(reply.ok.key_expr).split("/"))
        return out


def S(typ, **kw):
    return svc.types[typ](**kw)


def pvalue(kind, **kw):
    fields = dict(type=kind, bool_value=False, integer_value=0, double_value=0.0, string_value="",
                  byte_array_value=np.array([], dtype=np.uint8),
                  bool_array_value=np.array([], dtype=np.bool_),
                  integer_array_value=np.array([], dtype=np.int64),
                  double_array_value=np.array([], dtype=np.float64), string_array_value=[])
    fields.update(kw)
    return S("rcl_interfaces/msg/ParameterValue", **fields)


def check_params(peer, ns):
    node = f"/{ns}/qis_node"
    # The graph: what `ros2 param` discovers before calling (service server tokens).
    services = {}
    deadline = time.time() + WAIT_S
    while time.time() < deadline and len(services) < len(SRVS):
        for t in peer.tokens():
            if len(t) > 12 and t[5] == "SS" and t[7].replace("%", "/") == f"/{ns}" and t[8] == "qis_node":
                services[t[9].replace("%", "/")] = (t[10], t[11])
        time.sleep(0.1)
    for srv_name in SRVS:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", srv_name).lower()
        typ = f"rcl_interfaces/srv/{srv_name}"
        got = services.get(f"{node}/{snake}")
        check(f"{node}/{snake} in the graph with its Jazzy type and hash",
              got == (dds(typ), svc.hash_rihs01(typ)), got)

    events = peer.subscriber("/parameter_events", "rcl_interfaces/msg/ParameterEvent")

    listed = peer.call(f"{node}/list_parameters", "ListParameters",
                       S("rcl_interfaces/srv/ListParameters_Request", prefixes=[], depth=0)).result
    names = list(listed.names)
    for n in ["use_sim_time", "max_pending", "synthesis.prior_strength", "trust.initial",
              "validation.max_clock_skew_s", "exchange.differential_privacy.epsilon"]:
        check(f"list_parameters names {n}", n in names, names)
    check("list_parameters prefixes", "synthesis" in listed.prefixes and "exchange.differential_privacy"
          in listed.prefixes, listed.prefixes)
    only = peer.call(f"{node}/list_parameters", "ListParameters",
                     S("rcl_interfaces/srv/ListParameters_Request", prefixes=["trust"], depth=0)).result
    check("list_parameters by prefix", sorted(only.names) == sorted(n for n in names if n.startswith("trust.")),
          only.names)

    asked = ["synthesis.prior_strength", "max_pending", "fleet", "synthesis.max_residual", "use_sim_time",
             "no.such"]
    values = peer.call(f"{node}/get_parameters", "GetParameters",
                       S("rcl_interfaces/srv/GetParameters_Request", names=asked)).values
    check("get_parameters answers each name", len(values) == len(asked), values)
    check("prior_strength double 0.0", (values[0].type, values[0].double_value) == (DOUBLE, 0.0), values[0])
    check("max_pending integer 10000", (values[1].type, values[1].integer_value) == (INTEGER, 10000), values[1])
    check("fleet string", (values[2].type, values[2].string_value) == (STRING, "default"), values[2])
    check("max_residual empty double array",
          (values[3].type, list(values[3].double_array_value)) == (DOUBLE_ARRAY, []), values[3])
    check("use_sim_time bool", (values[4].type, values[4].bool_value) == (BOOL, False), values[4])
    check("unknown parameter not set", values[5].type == NOT_SET, values[5])
    types = peer.call(f"{node}/get_parameter_types", "GetParameterTypes",
                      S("rcl_interfaces/srv/GetParameterTypes_Request", names=asked[:3])).types
    check("get_parameter_types", list(types) == [DOUBLE, INTEGER, STRING], types)

    described = peer.call(f"{node}/describe_parameters", "DescribeParameters",
                          S("rcl_interfaces/srv/DescribeParameters_Request",
                            names=["synthesis.prior_strength", "max_pending", "trust.initial"])).descriptors
    ps, mp, ti = described
    check("prior_strength descriptor", (ps.name, ps.type, ps.read_only) == ("synthesis.prior_strength", DOUBLE, False),
          ps)
    check("prior_strength description", "k0" in ps.description, ps.description)
    check("max_pending is read-only", (mp.type, mp.read_only) == (INTEGER, True), mp)
    check("max_pending says why", "restart" in mp.additional_constraints, mp.additional_constraints)
    check("max_pending integer range from 1", len(mp.integer_range) == 1 and mp.integer_range[0].from_value == 1,
          mp.integer_range)
    check("trust.initial range [0, 1]",
          len(ti.floating_point_range) == 1
          and (ti.floating_point_range[0].from_value, ti.floating_point_range[0].to_value) == (0.0, 1.0),
          ti.floating_point_range)

    def set_one(name, value):
        req = S("rcl_interfaces/srv/SetParameters_Request",
                parameters=[S("rcl_interfaces/msg/Parameter", name=name, value=value)])
        results = peer.call(f"{node}/set_parameters", "SetParameters", req).results
        check(f"set_parameters {name}: one result", len(results) == 1, results)
        return results[0]

    r = set_one("synthesis.prior_strength", pvalue(DOUBLE, double_value=-1.0))
    check("a prior_strength below its range is refused", not r.successful and "out of range" in r.reason, r)
    r = set_one("synthesis.outlier_z", pvalue(DOUBLE, double_value=0.0))
    check("outlier_z 0 (in range, invalid) is refused", not r.successful, r)
    check("with the parameter and the reason", "synthesis.outlier_z" in r.reason and "> 0" in r.reason,
          r.reason)
    r = set_one("max_pending", pvalue(INTEGER, integer_value=3))
    check("a read-only parameter is refused", not r.successful and "read-only" in r.reason, r)
    r = set_one("synthesis.prior_strength", pvalue(INTEGER, integer_value=1))
    check("a value of the wrong type is refused", not r.successful and "type" in r.reason, r)
    r = set_one("synthesis.prior_strength", pvalue(NOT_SET))
    check("unsetting is refused", not r.successful, r)
    got = peer.call(f"{node}/get_parameters", "GetParameters",
                    S("rcl_interfaces/srv/GetParameters_Request", names=["synthesis.prior_strength"])).values
    check("refused changes left prior_strength at 0.0 (learned)", got[0].double_value == 0.0, got)

    r = set_one("synthesis.prior_strength", pvalue(DOUBLE, double_value=1.0))
    check("prior_strength 1.0 accepted", r.successful, r)
    got = peer.call(f"{node}/get_parameters", "GetParameters",
                    S("rcl_interfaces/srv/GetParameters_Request", names=["synthesis.prior_strength"])).values
    check("get_parameters after set", (got[0].type, got[0].double_value) == (DOUBLE, 1.0), got)
    atomic = peer.call(f"{node}/set_parameters_atomically", "SetParametersAtomically",
                       S("rcl_interfaces/srv/SetParametersAtomically_Request", parameters=[
                           S("rcl_interfaces/msg/Parameter", name="trust.tolerance",
                             value=pvalue(DOUBLE, double_value=2.0)),
                           S("rcl_interfaces/msg/Parameter", name="trust.max_sources",
                             value=pvalue(INTEGER, integer_value=0)),
                       ])).result
    check("atomic set with one bad value fails", not atomic.successful and atomic.reason, atomic)
    got = peer.call(f"{node}/get_parameters", "GetParameters",
                    S("rcl_interfaces/srv/GetParameters_Request", names=["trust.tolerance"])).values
    check("... whole: trust.tolerance unchanged", got[0].double_value == 3.0, got)

    # /parameter_events: the accepted change, from this node.
    deadline = time.time() + WAIT_S
    changed = None
    while time.time() < deadline and changed is None:
        try:
            ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        for p in ev.changed_parameters:
            if ev.node == node and p.name == "synthesis.prior_strength":
                changed = p.value
    check("parameter event for the change", changed is not None and changed.double_value == 1.0, changed)

    # The next corrected prior uses k0 = 1: after one outcome w = 1/2 (it was 1/6).
    pred_pub = peer.publisher(f"{node.rsplit('/', 1)[0]}/prediction", "qis_ros/msg/Prediction")
    out_pub = peer.publisher(f"{node.rsplit('/', 1)[0]}/outcome", "qis_ros/msg/Outcome")
    priors = peer.subscriber(f"{node.rsplit('/', 1)[0]}/corrected_prior", "qis_ros/msg/CorrectedPrior")
    discrepancies = peer.subscriber(f"{node.rsplit('/', 1)[0]}/discrepancy", "qis_ros/msg/Discrepancy")
    T = jazzy.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="")
    scenario = T["qis_ros/msg/Scenario"](tags=["road=gravel"], feature_names=[],
                                         features=np.array([], dtype=np.float64),
                                         embedding=np.array([], dtype=np.float32))

    def prediction(ep):
        return T["qis_ros/msg/Prediction"](header=header, episode_id=ep, model_id="wm-p", scenario=scenario,
                                           state=np.array([1.0, 2.0]), covariance=np.array([], dtype=np.float64))

    def until(send, q, ep):
        deadline = time.time() + WAIT_S
        while time.time() < deadline:
            send()
            try:
                while True:
                    m = q.get(timeout=0.2)
                    if m.episode_id == ep:
                        return m
            except queue.Empty:
                continue
        check(f"reply for {ep}", False, "timeout")

    until(lambda: pred_pub(prediction("p-1")), priors, "p-1")
    until(lambda: out_pub(T["qis_ros/msg/Outcome"](header=header, episode_id="p-1", state=np.array([1.6, 2.0]),
                                                   covariance=np.array([], dtype=np.float64))),
          discrepancies, "p-1")
    prior = until(lambda: pred_pub(prediction("p-2")), priors, "p-2")
    check("the next prior uses the new prior_strength (w = 1/2)", abs(prior.confidence - 0.5) < 1e-4,
          prior.confidence)


def node_tokens(peer, ns, kind, topic, wait_for=True):
    """The liveliness tokens of kind MP/MS/SS of node /<ns>/qis_node on `topic`."""
    deadline = time.time() + WAIT_S
    while True:
        found = [t for t in peer.tokens()
                 if len(t) > 12 and t[5] == kind and t[7].replace("%", "/") == f"/{ns}"
                 and t[8] == "qis_node" and t[9].replace("%", "/") == topic]
        if found or not wait_for or time.time() > deadline:
            return found
        time.sleep(0.1)


def qos_fields(token):
    """rmw_zenoh's QoS field of a token: reliability:durability:history,depth:deadline:
    lifespan:liveliness (defaults left empty; reliable 1, best effort 2; transient local 1,
    volatile 2)."""
    return token[12].split(":")


def check_rosout(peer, ns):
    logs = peer.subscriber("/rosout", "rcl_interfaces/msg/Log")
    pubs = node_tokens(peer, ns, "MP", "/rosout")
    check("/rosout publisher in the graph", len(pubs) == 1, pubs)
    t = pubs[0]
    check("/rosout type and hash", (t[10], t[11]) == (dds("rcl_interfaces/msg/Log"),
                                                     jazzy.hash_rihs01("rcl_interfaces/msg/Log")), t)
    rel, dur, hist, _deadline, lifespan, _live = qos_fields(t)
    check("/rosout QoS: reliable", rel in ("", "1"), t[12])
    check("/rosout QoS: transient local", dur == "1", t[12])
    check("/rosout QoS: keep last 1000", hist in (",1000", "1,1000"), t[12])
    check("/rosout QoS: lifespan 10 s", lifespan == "10,0", t[12])
    # Junk on the prediction topic makes the node log a warning.
    junk_key = topic_key(f"/{ns}/prediction", "qis_ros/msg/Prediction")
    deadline = time.time() + WAIT_S
    record = None
    while time.time() < deadline and record is None:
        peer.session.put(junk_key, b"\x00\x01\x00\x00junk", attachment=peer.attachment())
        try:
            while True:
                m = logs.get(timeout=0.2)
                if m.level == 30 and "undecodable" in m.msg:
                    record = m
                    break
        except queue.Empty:
            continue
    check("a warning reaches /rosout", record is not None, record)
    check("logger name is the node's (rcl: namespace.name)", record.name == f"{ns}.qis_node", record.name)
    check("file and line", record.file.endswith("runner.rs") and record.line > 0, (record.file, record.line))
    check("function", record.function.startswith("qis_ros::ros::runner"), record.function)
    check("stamped with the system time", abs(record.stamp.sec - time.time()) < 600, record.stamp)


def check_clock(peer, ns):
    subs = node_tokens(peer, ns, "MS", "/clock")
    check("/clock subscription in the graph", len(subs) == 1, subs)
    t = subs[0]
    check("/clock type and hash", (t[10], t[11]) == (dds("rosgraph_msgs/msg/Clock"),
                                                    jazzy.hash_rihs01("rosgraph_msgs/msg/Clock")), t)
    rel, dur, hist, _deadline, _lifespan, _live = qos_fields(t)
    check("/clock QoS: best effort (rclcpp ClockQoS)", rel == "2", t[12])
    check("/clock QoS: volatile", dur in ("", "2"), t[12])
    check("/clock QoS: keep last 1", hist in (",1", "1,1"), t[12])

    T = jazzy.types
    priors = peer.subscriber(f"/{ns}/corrected_prior", "qis_ros/msg/CorrectedPrior")
    diags = peer.subscriber("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
    pred_pub = peer.publisher(f"/{ns}/prediction", "qis_ros/msg/Prediction")
    # A simulator bridge's /clock: best effort, dropped rather than queued.
    clock_pub = peer.session.declare_publisher(topic_key("/clock", "rosgraph_msgs/msg/Clock"),
                                               congestion_control=zenoh.CongestionControl.DROP)
    prediction = T["qis_ros/msg/Prediction"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=5, nanosec=0), frame_id=""),
        episode_id="c-1", model_id="wm-c",
        scenario=T["qis_ros/msg/Scenario"](tags=["sim=yes"], feature_names=[],
                                          features=np.array([], dtype=np.float64),
                                          embedding=np.array([], dtype=np.float32)),
        state=np.array([1.0]), covariance=np.array([], dtype=np.float64))

    # Before the first /clock the prediction is held, not answered at time 0.
    end = time.time() + 1.5
    early = None
    while time.time() < end and early is None:
        pred_pub(prediction)
        try:
            early = priors.get(timeout=0.2)
        except queue.Empty:
            pass
    check("no answer before the first /clock", early is None, early)

    def tick(sec):
        msg = T["rosgraph_msgs/msg/Clock"](clock=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=0))
        clock_pub.put(bytes(jazzy.serialize_cdr(msg, "rosgraph_msgs/msg/Clock")), attachment=peer.attachment())

    deadline = time.time() + WAIT_S
    prior = None
    while time.time() < deadline and prior is None:
        tick(1000)
        try:
            m = priors.get(timeout=0.1)
            if m.episode_id == "c-1":
                prior = m
        except queue.Empty:
            pass
    check("answered once /clock runs", prior is not None, prior)
    check("header copied from the prediction", prior.header.stamp.sec == 5, prior.header)

    report = None
    deadline = time.time() + WAIT_S
    while time.time() < deadline and report is None:
        tick(1000)
        try:
            d = diags.get(timeout=0.2)
        except queue.Empty:
            continue
        for st in d.status:
            if st.name.startswith(f"/{ns}/qis_node") and d.header.stamp.sec == 1000:
                report = {kv.key: kv.value for kv in st.values}
    check("diagnostics stamped with sim time", report is not None, report)
    check("sim time started", report.get("sim_time_started") == "true", report)
    check("no input handled without a clock", report.get("sim_time_unset") == "0", report)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--router", required=True)
    ap.add_argument("--namespace", default="p")
    ap.add_argument("what", choices=["params", "rosout", "clock"])
    args = ap.parse_args()
    peer = Peer(args.router)
    if args.what == "params":
        check_params(peer, args.namespace)
    elif args.what == "rosout":
        check_rosout(peer, args.namespace)
    elif args.what == "clock":
        check_clock(peer, args.namespace)
    peer.session.close()
    print(json.dumps({"checks_passed": check.count}))


if __name__ == "__main__":
    run(main)
