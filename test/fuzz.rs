//! Bounded fuzzing of every parser that sees bytes or values from outside: record
//! decode, scenario canonicalization, sketching and covariance/discrepancy input.
//!
//! proptest stands in for cargo-fuzz (which needs nightly): inputs are random and
//! mutated-valid; the property is "a typed result, never a panic", plus invariants
//! that must hold whenever the input is accepted. Case counts keep the whole file
//! well under a minute in debug builds; raise `QIS_FUZZ_CASES` to search longer.

use proptest::prelude::*;
use qis_ros::core::discrepancy::{Covariance, Discrepancy};
use qis_ros::core::fingerprint::{Bins, FingerprintConfig, Fingerprinter, UnknownFeatures};
use qis_ros::core::ids::Seq;
use qis_ros::core::neighbors::{SKETCH_DIM, Sketch, sketch};
use qis_ros::core::record::{OutcomeRecord, decode};
use qis_ros::core::summary::{Decay, Summary};

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("QIS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(n)
}

fn valid_record(dim: usize, seed: u64) -> Vec<u8> {
    let mut s = Summary::empty(dim).expect("dim in range");
    for k in 0..3u64 {
        let r: Vec<f64> = (0..dim)
            .map(|i| ((seed ^ (k * 7 + i as u64)) % 97) as f64 * 0.1)
            .collect();
        s.add(&r, (k * 1000) as i64, Decay::from_half_life_secs(60.0))
            .expect("finite");
    }
    OutcomeRecord {
        seq: Seq(seed),
        sketch: Sketch([(seed % 100) as i8; SKETCH_DIM]),
        summary: s,
    }
    .encode()
    .expect("encodable")
}

fn fingerprinter(ignore_unknown: bool) -> Fingerprinter {
    let mut cfg = FingerprintConfig::default();
    cfg.features.insert(
        "speed".into(),
        Bins::Width {
            width: 0.5,
            origin: 0.0,
        },
    );
    cfg.features.insert(
        "load".into(),
        Bins::Edges {
            edges: vec![1.0, 10.0, 100.0],
        },
    );
    if ignore_unknown {
        cfg.unknown_features = UnknownFeatures::Ignore;
    }
    cfg.validate().expect("valid config")
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        -1e6..1e6f64
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn record_decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn record_decode_never_panics_on_mutated_records(
        dim in 1usize..9,
        seed in 1u64..1000,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid_record(dim, seed);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        if let Ok(d) = decode(&bytes) {
            // Whatever is accepted is internally consistent and re-encodes to itself.
            prop_assert!(d.record.summary.mean().iter().all(|x| x.is_finite()));
            prop_assert!(d.record.summary.count() > 0);
            prop_assert_eq!(d.record.encode_body(d.signature.is_some()).expect("re-encode"), bytes[..d.body_len].to_vec());
        }
    }

    #[test]
    fn canonicalization_never_panics_and_is_order_free(
        tags in proptest::collection::vec("\\PC{0,12}", 0..8),
        names in proptest::collection::vec(prop_oneof![Just("speed".to_string()), Just(" LOAD ".to_string()), "\\PC{0,6}"], 0..4),
        values in proptest::collection::vec(any_f64(), 0..4),
        ignore in any::<bool>(),
    ) {
        let fp = fingerprinter(ignore);
        let first = fp.fingerprint(&tags, &names, &values);
        let canonical = fp.canonicalize(&tags, &names, &values);
        prop_assert_eq!(first.is_ok(), canonical.is_ok());
        if let (Ok(a), Ok(c)) = (&first, &canonical) {
            prop_assert_eq!(*a, c.fingerprint());
            let mut rev_tags = tags.clone();
            rev_tags.reverse();
            let mut pairs: Vec<(String, f64)> = names.iter().cloned().zip(values.iter().copied()).collect();
            pairs.reverse();
            let (n2, v2): (Vec<String>, Vec<f64>) = pairs.into_iter().unzip();
            prop_assert_eq!(fp.fingerprint(&rev_tags, &n2, &v2), Ok(*a));
            prop_assert!(sketch(c, &[]).is_ok());
        }
    }

    #[test]
    fn sketch_never_panics(embedding in proptest::collection::vec(prop_oneof![any::<f32>(), -10.0..10.0f32], 0..300)) {
        let c = fingerprinter(true).canonicalize(&["a=b".into()], &[], &[]).expect("valid");
        match sketch(&c, &embedding) {
            Ok(s) => prop_assert!(s.0.iter().all(|&q| q >= -127)),
            Err(_) => prop_assert!(embedding.iter().any(|v| !v.is_finite())),
        }
    }

    #[test]
    fn discrepancy_input_never_panics(
        n in 0usize..70,
        flat in proptest::collection::vec(any_f64(), 0..80),
        predicted in proptest::collection::vec(any_f64(), 0..70),
        measured in proptest::collection::vec(any_f64(), 0..70),
    ) {
        let cov = Covariance::from_flat(&flat, n).unwrap_or(Covariance::None);
        if let Ok(d) = Discrepancy::compute(&predicted, &measured, &cov) {
            prop_assert!(d.error_norm.is_finite());
            prop_assert!(d.residual.iter().all(|r| r.is_finite()));
            prop_assert_eq!(d.residual.len(), predicted.len());
        }
    }
}
