#!/usr/bin/env python3
"""A forging fleet peer for test/attack.rs: an independent implementation of the record
v2 encoding, the key space v2 (with its lanes) and the record signatures of docs/PROTOCOL.md (stdlib
struct, eclipse-zenoh, and `cryptography` for ed25519; none of qis_ros's code).

It connects to one fleet endpoint on loopback and executes attack plans that the Rust
test writes to its stdin, one JSON list per line; after each plan it prints one JSON
line with what it sent. It exits at end of input, or after --deadline-s whatever
happens (bounded in time).

A plan is a list of steps:
  {"op": "raw", "key": KEY, "payload_hex": HEX}          bytes as given
  {"op": "bytes", "key": KEY, "len": N}                  N bytes of a fixed pattern
  {"op": "record", "key": KEY | null, "address": ADDR, "signer": SEED_HEX | null,
   "source": CHUNK | null, "record": REC, "truncate": N | null}
  {"op": "sybil", "address": ADDR, "n": N, "record": REC}  N fresh keys, one record each
  {"op": "sleep", "s": SECONDS}
ADDR = {"fleet": ..., "model": ..., "fp": 32 hex}; KEY = a key expression as put on the
wire. A record step signs with SIGNER (seed) when given (flags bit 0, the signed
message of PROTOCOL "Signatures"); its key is KEY, or ADDR with SOURCE as the source
chunk, or ADDR with the signer's public key (a self-certified id).
REC = {"seq", "count", "first_ns", "last_ns", "weight", "weight_sq", "mean": [...],
"m2": [upper triangle] (default zeros), "sim": bool, "version": 2, "flags": extra bits}.
Floats may be written as the strings "nan", "inf", "-inf".
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import threading
import time

import zenoh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIGNATURE_CONTEXT = b"qis.sig.v1\n"
PLAIN = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# How long a put waits for a subscriber on its key before it goes out anyway.
MATCH_WAIT_S = 5.0


def escape(name):
    """Key space v2: one chunk, plain bytes as themselves, others %XX (uppercase)."""
    return "".join(chr(b) if b in PLAIN else "%%%02X" % b for b in name.encode())


def unescape(chunk):
    """The name a canonically escaped chunk stands for (bytes; others are left as is)."""
    out, i = bytearray(), 0
    while i < len(chunk):
        if chunk[i] == "%" and i + 3 <= len(chunk) and all(
                c in "0123456789ABCDEF" for c in chunk[i + 1:i + 3]):
            out.append(int(chunk[i + 1:i + 3], 16))
            i += 3
        else:
            out += chunk[i].encode()
            i += 1
    return bytes(out)


def lane(source_chunk):
    """PROTOCOL "Lanes": the first 12 bits of SHA-256("qis.lane.v1\n" + source), one
    key chunk of one binary digit each."""
    digest = hashlib.sha256(b"qis.lane.v1\n" + unescape(source_chunk)).digest()
    bits = (digest[0] << 4) | (digest[1] >> 4)
    return "/".join(str((bits >> (11 - i)) & 1) for i in range(12))


def address_key(addr, source_chunk):
    return "qis/v2/%s/%s/%s/%s/%s" % (
        escape(addr["fleet"]), lane(source_chunk), escape(addr["model"]), addr["fp"],
        source_chunk)


def num(v):
    return float(v) if isinstance(v, str) else v


def encode_body(rec, signed):
    """Record v2 (PROTOCOL "Outcome record v2"): everything before the signature."""
    mean = [num(v) for v in rec["mean"]]
    n = len(mean)
    m2 = [num(v) for v in rec.get("m2", [0.0] * (n * (n + 1) // 2))]
    flags = (1 if signed else 0) | (2 if rec.get("sim") else 0) | rec.get("flags", 0)
    out = struct.pack(
        "<BBBBQQqqdd",
        rec.get("version", 2), flags, n, 0,
        rec["seq"], rec["count"], rec["first_ns"], rec["last_ns"],
        num(rec["weight"]), num(rec["weight_sq"]),
    )
    out += bytes(rec.get("sketch", [0] * 32))
    out += struct.pack("<%dd" % n, *mean)
    out += struct.pack("<%dd" % len(m2), *m2)
    return out


def public_hex(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def seal(rec, key_expr, signer):
    if signer is None:
        return encode_body(rec, False)
    body = encode_body(rec, True)
    sig = signer.sign(SIGNATURE_CONTEXT + key_expr.encode() + b"\n" + body)
    return body + sig


class Peer:
    def __init__(self, session):
        self.session = session
        self.publishers = {}

    def put(self, key, payload):
        """Puts once, after a subscriber matches the key (bounded wait); returns whether
        one matched."""
        pub = self.publishers.get(key)
        if pub is None:
            pub = self.session.declare_publisher(key)
            self.publishers[key] = pub
        deadline = time.monotonic() + MATCH_WAIT_S
        matched = pub.matching_status.matching
        while not matched and time.monotonic() < deadline:
            time.sleep(0.01)
            matched = pub.matching_status.matching
        pub.put(payload)
        return matched

    def run(self, plan):
        sent, unmatched, sources = 0, [], []
        for step in plan:
            op = step["op"]
            if op == "sleep":
                time.sleep(step["s"])
                continue
            if op == "raw":
                items = [(step["key"], bytes.fromhex(step["payload_hex"]))]
            elif op == "bytes":
                items = [(step["key"], bytes((i * 7 + 1) & 0xFF for i in range(step["len"])))]
            elif op == "record":
                signer = None
                if step.get("signer"):
                    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(step["signer"]))
                key = step.get("key")
                if key is None:
                    chunk = step.get("source") or public_hex(signer)
                    key = address_key(step["address"], chunk)
                payload = seal(step["record"], key, signer)
                if step.get("truncate") is not None:
                    payload = payload[: step["truncate"]]
                items = [(key, payload)]
            elif op == "sybil":
                items = []
                for _ in range(step["n"]):
                    k = Ed25519PrivateKey.from_private_bytes(os.urandom(32))
                    key = address_key(step["address"], public_hex(k))
                    sources.append(public_hex(k))
                    items.append((key, seal(step["record"], key, k)))
            else:
                raise ValueError("unknown op %r" % op)
            for key, payload in items:
                if not self.put(key, payload):
                    unmatched.append(key[:80])
                sent += 1
        return {"sent": sent, "unmatched": unmatched, "sources": sources}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True, help="fleet endpoint, tcp/127.0.0.1:PORT")
    ap.add_argument("--deadline-s", type=float, default=90.0)
    args = ap.parse_args()
    # Bounded whatever the test does: the whole process ends at the deadline.
    threading.Timer(args.deadline_s, lambda: os._exit(3)).start()
    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("connect/endpoints", json.dumps([args.connect]))
    conf.insert_json5("listen/endpoints", "[]")
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)
    peer = Peer(session)
    print(json.dumps({"ready": str(session.zid())}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            result = peer.run(json.loads(line))
        except Exception as e:  # reported to the test, which fails on it
            result = {"error": repr(e)}
        print(json.dumps(result), flush=True)
    session.close()
    # Zenoh's threads would keep the interpreter alive.
    os._exit(0)


if __name__ == "__main__":
    main()
