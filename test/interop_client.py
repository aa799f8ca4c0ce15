#!/usr/bin/env python3
"""An independent ROS 2 client of qis_node over the rmw_zenoh wire protocol: no code of
ours, only eclipse-zenoh and rosbags (CDR and RIHS01 type hashes from the .msg text).

It publishes Prediction and Outcome messages the way rmw_zenoh_cpp does (key expression
with the type hash, CDR payload, 33-byte attachment) and checks the CorrectedPrior and
Discrepancy it gets back field by field. Run by test/interop.rs:

    python3 test/interop_client.py --router tcp/127.0.0.1:PORT --namespace i
Exit status 0 when every check passed; the failed check otherwise.
"""
import argparse
import hashlib
import json
import math
import pathlib
import queue
import re
import struct
import sys
import time

import numpy as np
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
from interop_common import check, client_session, run  # noqa: E402

WAIT_S = 20.0


def strip(text):
    return "\n".join(re.sub(r"#.*", "", line).rstrip() for line in text.splitlines())


store = get_typestore(Stores.ROS2_JAZZY)
store.register({
    k: v
    for p in sorted((ROOT / "msg").glob("*.msg"))
    for k, v in get_types_from_msg(strip(p.read_text()), f"qis_ros/msg/{p.stem}").items()
})
T = store.types


def key(domain, ns, topic, typ):
    """rmw_zenoh topic key: <domain>/<fully qualified name>/<pkg>::msg::dds_::<T>_/<RIHS01>."""
    pkg, _, name = typ.split("/")
    return f"{domain}/{ns}/{topic}/{pkg}::msg::dds_::{name}_/{store.hash_rihs01(typ)}"


def fingerprint(tags):
    """Fingerprint v1 of a tags-only scenario (docs/PROTOCOL.md), written out here."""
    canon = "qis.fp.v1\n" + "".join(f"t {t}\n" for t in sorted(set(tags), key=str.encode))
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def close(a, b, tol=1e-9):
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--router", required=True)
    ap.add_argument("--namespace", default="i")
    args = ap.parse_args()

    session = client_session(args.router)
    gid = hashlib.md5(b"interop_client").digest()
    seq = [0]

    def publisher(topic, typ):
        pub = session.declare_publisher(key(0, args.namespace, topic, typ))

        def put(msg):
            seq[0] += 1
            att = struct.pack("<qqB", seq[0], time.time_ns(), 16) + gid
            assert len(att) == 33
            pub.put(bytes(store.serialize_cdr(msg, typ)), attachment=att)

        return put

    def subscriber(topic, typ):
        q = queue.Queue()
        session.declare_subscriber(
            key(0, args.namespace, topic, typ),
            lambda s: q.put((store.deserialize_cdr(s.payload.to_bytes(), typ), s.attachment)),
        )
        return q

    priors = subscriber("corrected_prior", "qis_ros/msg/CorrectedPrior")
    discrepancies = subscriber("discrepancy", "qis_ros/msg/Discrepancy")
    pub_pred = publisher("prediction", "qis_ros/msg/Prediction")
    pub_out = publisher("outcome", "qis_ros/msg/Outcome")

    def until_reply(send, q, episode):
        """Sends until the node answers (its subscription may not be declared yet;
        repeats are rejected as duplicates by the node)."""
        deadline = time.time() + WAIT_S
        while time.time() < deadline:
            send()
            try:
                while True:
                    msg, att = q.get(timeout=0.2)
                    if msg.episode_id == episode:
                        return msg, att
            except queue.Empty:
                continue
        check(f"reply for {episode}", False, "timeout")

    Time = T["builtin_interfaces/msg/Time"]
    Header = T["std_msgs/msg/Header"]
    Scenario = T["qis_ros/msg/Scenario"]
    Prediction = T["qis_ros/msg/Prediction"]
    Outcome = T["qis_ros/msg/Outcome"]
    tags = ["road=ice"]
    scenario = Scenario(tags=tags, feature_names=[], features=np.array([], dtype=np.float64),
                        embedding=np.array([], dtype=np.float32))
    predicted = [1.0, 2.0]
    pred_cov = [0.25, 0.0, 0.0, 0.25]
    measured = [1.6, 1.8]
    meas_cov = [0.25, 0.25]

    def prediction(ep):
        return Prediction(
            header=Header(stamp=Time(sec=42, nanosec=7), frame_id="base_link"),
            episode_id=ep, model_id="wm-py", scenario=scenario,
            state=np.array(predicted, dtype=np.float64),
            covariance=np.array(pred_cov, dtype=np.float64))

    def outcome(ep):
        return Outcome(header=Header(stamp=Time(sec=43, nanosec=0), frame_id="base_link"),
                       episode_id=ep, state=np.array(measured, dtype=np.float64),
                       covariance=np.array(meas_cov, dtype=np.float64))

    # Episode 1: nothing known, the prediction comes back unchanged.
    prior, att = until_reply(lambda: pub_pred(prediction("py-1")), priors, "py-1")
    fp = fingerprint(tags)
    check("attachment is rmw_zenoh's 33 bytes", att is not None and len(att.to_bytes()) == 33, att)
    check("header stamp copied", (prior.header.stamp.sec, prior.header.stamp.nanosec) == (42, 7), prior.header)
    check("header frame copied", prior.header.frame_id == "base_link", prior.header.frame_id)
    check("model_id", prior.model_id == "wm-py", prior.model_id)
    check("fingerprint", prior.fingerprint == fp, prior.fingerprint)
    check("match none", prior.match == prior.MATCH_NONE == 0, prior.match)
    check("state unchanged", close(list(prior.state), predicted), prior.state)
    check("covariance = prediction's", close(list(prior.covariance), pred_cov), prior.covariance)
    check("correction zero", close(list(prior.correction), [0.0, 0.0]), prior.correction)
    check("support", (prior.support, prior.sources) == (0, 0), (prior.support, prior.sources))
    check("confidence", prior.confidence == 0.0, prior.confidence)

    # Bytes that are no Prediction: the node must drop and count them, and go on.
    session.put(key(0, args.namespace, "prediction", "qis_ros/msg/Prediction"), b"\x00\x01\x00\x00junk",
                attachment=struct.pack("<qqB", 10_000, time.time_ns(), 16) + gid)

    disc, _ = until_reply(lambda: pub_out(outcome("py-1")), discrepancies, "py-1")
    r = np.array(measured) - np.array(predicted)
    s = np.array(pred_cov).reshape(2, 2) + np.diag(meas_cov)
    check("discrepancy header", disc.header.stamp.sec == 43, disc.header)
    check("discrepancy ids", (disc.model_id, disc.fingerprint) == ("wm-py", fp), (disc.model_id, disc.fingerprint))
    check("residual", close(list(disc.residual), list(r)), disc.residual)
    check("error_norm", math.isclose(disc.error_norm, float(np.linalg.norm(r)), rel_tol=1e-12), disc.error_norm)
    maha = float(np.sqrt(r @ np.linalg.solve(s, r)))
    check("mahalanobis", math.isclose(disc.mahalanobis, maha, rel_tol=1e-9), disc.mahalanobis)

    # Episode 2: one outcome is known; shrinkage with k0 = 5 gives w = 1/6.
    prior, _ = until_reply(lambda: pub_pred(prediction("py-2")), priors, "py-2")
    w = 1.0 / 6.0
    check("match exact", prior.match == prior.MATCH_EXACT, prior.match)
    check("support after one outcome", (prior.support, prior.sources) == (1, 1), (prior.support, prior.sources))
    check("correction = w * residual", close(list(prior.correction), list(w * r), 1e-6), prior.correction)
    check("state = predicted + correction",
          close(list(prior.state), list(np.array(predicted) + w * r), 1e-6), prior.state)
    check("confidence = w", math.isclose(prior.confidence, w, rel_tol=1e-6), prior.confidence)
    check("covariance is n*n", len(prior.covariance) == 4, prior.covariance)
    session.close()
    print(json.dumps({"checks_passed": check.count}))


if __name__ == "__main__":
    run(main)
