//! Integration tests of the core through its public API: golden fingerprint vectors,
//! unkeyed and keyed by a fleet secret.

use qis_ros::core::fingerprint::FingerprintConfig;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    version: String,
    config: FingerprintConfig,
    keyed_secret: String,
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
    keyed_fingerprint: String,
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/test/data/fingerprints.json"
    ))
    .expect("golden vectors present");
    serde_json::from_str(&text).expect("golden vectors parse")
}

/// The vectors come from an independent Python implementation of docs/PROTOCOL.md
/// (test/data/fingerprint_reference.py), so this checks the crate against the spec.
#[test]
fn golden_fingerprints() {
    let golden = golden();
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

/// The keyed form (docs/PROTOCOL.md, "Keyed"): the same canonical bytes under
/// HMAC-SHA256 with the fixed test secret, read from a file as a node reads it.
#[test]
fn golden_keyed_fingerprints() {
    let golden = golden();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.secret");
    // A trailing newline, as `openssl rand -hex 32 > file` writes, is not part of the key.
    std::fs::write(&path, format!("{}\n", golden.keyed_secret)).unwrap();
    let mut config = golden.config.clone();
    config.fleet_secret_file = Some(path);
    let fp = config.validate().expect("keyed config valid");
    assert!(fp.is_keyed());
    for v in &golden.vectors {
        let c = fp
            .canonicalize(&v.tags, &v.feature_names, &v.features)
            .unwrap();
        assert_eq!(c.fingerprint().to_hex(), v.keyed_fingerprint, "{}", v.name);
        let direct = fp
            .fingerprint(&v.tags, &v.feature_names, &v.features)
            .unwrap();
        assert_eq!(
            direct.to_hex(),
            v.keyed_fingerprint,
            "{}: fast path",
            v.name
        );
        assert_ne!(v.keyed_fingerprint, v.fingerprint, "{}", v.name);
    }
}
