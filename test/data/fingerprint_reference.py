#!/usr/bin/env python3
"""Independent reference implementation of the qis fingerprint v1 (docs/PROTOCOL.md),
unkeyed and keyed by a fleet secret (HMAC-SHA256, the "Keyed" subsection).

Regenerates test/data/fingerprints.json from the cases below; the Rust test
`golden_fingerprints` checks the crate against that file byte for byte.
Run: python3 test/data/fingerprint_reference.py > test/data/fingerprints.json
"""
import bisect
import hashlib
import hmac
import json
import math

CONFIG = {
    "features": {
        "speed": {"width": 0.5},
        "load_kg": {"edges": [10.0, 50.0, 100.0]},
        "slope_deg": {"width": 5.0, "origin": -2.5},
    },
    "unknown_features": "error",
}

# The fixed test secret (the file's bytes, surrounding whitespace trimmed): 64 hex digits.
KEYED_SECRET = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

CASES = [
    ("empty scenario", [], [], []),
    ("tags only", ["weather=rain", "obstacle=cyclist"], [], []),
    ("tag order, case and whitespace", ["  Obstacle = Cyclist", "WEATHER=rain "], [], []),
    ("duplicate tags collapse", ["a=1", "a=1", "b"], [], []),
    ("features quantized", ["surface=gravel"], ["speed", "load_kg"], [1.26, 20.0]),
    ("same bins, other noise", ["Surface=Gravel"], ["Load_KG", "speed"], [49.9, 1.4999]),
    ("negative bin and origin", ["surface=ice"], ["speed", "slope_deg"], [-0.2, -2.6]),
    ("edge boundaries", [], ["load_kg"], [10.0]),
    ("below first edge", [], ["load_kg"], [-5.0]),
    ("unicode tag", ["Wetter=Regen Straße"], [], []),
    ("value with equals sign", ["note=a=b"], [], []),
]


def normalize_text(s):
    return " ".join(s.lower().split())


def normalize_tag(s):
    n = normalize_text(s)
    if "=" not in n:
        return n
    key, value = n.split("=", 1)
    return key.rstrip() + "=" + value.lstrip()


def quantize(bins, x):
    if "width" in bins:
        return math.floor((x - bins.get("origin", 0.0)) / bins["width"])
    return bisect.bisect_right(bins["edges"], x)


def canonical(tags, names, values):
    out = "qis.fp.v1\n"
    for t in sorted(set(normalize_tag(t) for t in tags), key=lambda t: t.encode()):
        out += "t " + t + "\n"
    feats = sorted(
        ((normalize_text(n), quantize(CONFIG["features"][normalize_text(n)], v)) for n, v in zip(names, values)),
        key=lambda f: f[0].encode(),
    )
    for name, b in feats:
        out += "f %s %d\n" % (name, b)
    return out


vectors = []
for name, tags, names, values in CASES:
    text = canonical(tags, names, values)
    vectors.append({
        "name": name,
        "tags": tags,
        "feature_names": names,
        "features": values,
        "canonical": text,
        "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:32],
        "keyed_fingerprint": hmac.new(KEYED_SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()[:32],
    })
print(json.dumps({"version": "qis.fp.v1", "config": CONFIG, "keyed_secret": KEYED_SECRET, "vectors": vectors}, indent=2, ensure_ascii=False))
