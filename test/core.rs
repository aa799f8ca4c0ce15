//! Integration tests of the core through its public API: golden fingerprint vectors.

use qis_ros::core::fingerprint::FingerprintConfig;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    version: String,
    config: FingerprintConfig,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    tags: Vec<String>,
    feature_names: Vec<String>,
    features: Vec<f64>,
    canonical: String,
    fingerprint: String,
}

/// The vectors come from an independent Python implementation of docs/PROTOCOL.md
/// (test/data/fingerprint_reference.py), so this checks the crate against the spec.
#[test]
fn golden_fingerprints() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/test/data/fingerprints.json"
    ))
    .expect("golden vectors present");
    let golden: Golden = serde_json::from_str(&text).expect("golden vectors parse");
    assert_eq!(golden.version, "qis.fp.v1");
    let fp = golden.config.validate().expect("golden config valid");
    assert!(golden.vectors.len() >= 10);
    for v in &golden.vectors {
        let c = fp
            .canonicalize(&v.tags, &v.feature_names, &v.features)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(
            String::from_utf8(c.canonical_bytes()).unwrap(),
            v.canonical,
            "{}",
            v.name
        );
        assert_eq!(c.fingerprint().to_hex(), v.fingerprint, "{}", v.name);
        let direct = fp
            .fingerprint(&v.tags, &v.feature_names, &v.features)
            .unwrap();
        assert_eq!(direct.to_hex(), v.fingerprint, "{}: fast path", v.name);
    }
}
