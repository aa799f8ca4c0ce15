//! Bounded fuzzing of every parser that sees bytes or values from outside: record
//! decode, scenario canonicalization, sketching, covariance/discrepancy input, and the
//! CDR messages the node receives (decoded as the native binding decodes them, then fed
//! to `NodeLogic`).
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
        time_base: Default::default(),
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
            // A version-1 input re-encodes as version 2 (same layout, no time-base flag).
            let mut expected = bytes[..d.body_len].to_vec();
            expected[0] = qis_ros::core::record::RECORD_VERSION;
            prop_assert_eq!(d.record.encode_body(d.signature.is_some()).expect("re-encode"), expected);
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

// ---------------------------------------------------------------------------------------
// CDR messages: what the node decodes from the `prediction` and `outcome` topics and the
// `query` service, with the decoder the native binding uses (hiroz's `SerdeCdrSerdes`,
// through `ZMessage::deserialize`, as `ZSub::async_recv` and the service server do), and
// then what `NodeLogic` does with whatever decodes.
// ---------------------------------------------------------------------------------------

mod cdr {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use hiroz::msg::ZMessage;
    use qis_ros::core::ids::SourceId;
    use qis_ros::node::{NodeLogic, NodeParams};
    use qis_ros::ros::msgs::{Header, Outcome, Prediction, QueryRequest, Scenario, Time};

    /// Counts the largest single allocation made by the current thread, so a test can
    /// show that a forged length prefix does not make the decoder reserve gigabytes.
    /// Per thread because proptest runs the targets of this file in parallel.
    pub struct PeakAlloc;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: forwards every call to `System` unchanged; the thread-local is a
    // const-initialized `Cell` (no allocation, no destructor), so recording into it
    // cannot re-enter the allocator.
    unsafe impl GlobalAlloc for PeakAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f` and returns its result with the largest allocation (bytes) it made.
    pub fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        let r = f();
        (r, LARGEST.with(Cell::get))
    }

    /// One node for all cases of a target: the node must keep serving after any of them.
    pub fn node() -> &'static Mutex<NodeLogic> {
        static NODE: OnceLock<Mutex<NodeLogic>> = OnceLock::new();
        NODE.get_or_init(|| {
            let params = NodeParams {
                exchange_enabled: false,
                ..NodeParams::default()
            };
            Mutex::new(
                NodeLogic::new(params, SourceId::new("fuzz-robot").expect("valid id"))
                    .expect("default params are valid"),
            )
        })
    }

    /// Feeds whatever decoded to the node the way the native binding does, then checks it
    /// still answers a valid prediction. A panic anywhere fails the property.
    pub fn feed_and_check(
        prediction: Option<&Prediction>,
        outcome: Option<&Outcome>,
        query: Option<&QueryRequest>,
        now_ns: i64,
    ) -> Result<(), String> {
        // A panic in an earlier case (already reported) must not hide later ones.
        let mut n = node().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = prediction {
            let _ = n.first_encounter(p);
            let answer = n.on_prediction(p, now_ns);
            let _ = n.drain_interests().count();
            // Always answer: a planner waiting for a valid episode id never starves, and
            // whatever is published is finite.
            match answer.prior() {
                None if qis_ros::node::input::episode_id(&p.episode_id).is_ok() => {
                    return Err(format!("valid episode id left unanswered: {answer:?}"));
                }
                Some(prior)
                    if prior.episode_id != p.episode_id
                        || !prior
                            .state
                            .iter()
                            .chain(&prior.covariance)
                            .all(|v| v.is_finite()) =>
                {
                    return Err(format!("bad answer {prior:?} to {p:?}"));
                }
                _ => {}
            }
        }
        if let Some(o) = outcome {
            if let Ok(effect) = n.on_outcome(o, now_ns) {
                if !effect
                    .own_record
                    .1
                    .summary
                    .mean()
                    .iter()
                    .all(|x| x.is_finite())
                {
                    return Err(format!("non-finite own record from {o:?}"));
                }
            }
        }
        if let Some(q) = query {
            let _ = n.query(q, now_ns);
        }
        let _ = n.report().key_values();
        // Still serving: a fresh valid episode gets a prior, and its outcome pairs.
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let ep = format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
        let probe = Prediction {
            episode_id: ep.clone(),
            model_id: "wm-fuzz".into(),
            scenario: scenario(&["probe=1"]),
            state: vec![1.0, 2.0],
            ..Prediction::default()
        };
        let prior = n
            .on_prediction(&probe, now_ns)
            .accepted()
            .map_err(|e| format!("valid prediction refused after fuzz input: {e}"))?;
        if prior.episode_id != ep || prior.state.len() != 2 {
            return Err(format!("bad prior after fuzz input: {prior:?}"));
        }
        let outcome = Outcome {
            episode_id: ep,
            state: vec![1.5, 2.0],
            ..Outcome::default()
        };
        n.on_outcome(&outcome, now_ns)
            .map_err(|e| format!("valid outcome refused after fuzz input: {e}"))?;
        Ok(())
    }

    pub fn scenario(tags: &[&str]) -> Scenario {
        Scenario {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Scenario::default()
        }
    }

    /// A valid prediction with every field populated (so mutations can hit each one).
    pub fn valid_prediction(seed: u64) -> Prediction {
        let d = (seed % 4 + 1) as usize;
        Prediction {
            header: Header {
                stamp: Time {
                    sec: seed as i32,
                    nanosec: 7,
                },
                frame_id: "base_link".into(),
            },
            episode_id: format!("ep-{seed}"),
            model_id: "wm-fuzz".into(),
            scenario: Scenario {
                tags: vec!["weather=rain".into(), format!("zone={}", seed % 5)],
                feature_names: vec!["speed".into()],
                features: vec![seed as f64 * 0.25],
                embedding: vec![0.5; (seed % 3) as usize * 4],
            },
            state: (0..d).map(|i| i as f64 + 0.5).collect(),
            covariance: if seed % 2 == 0 { vec![] } else { vec![0.1; d] },
        }
    }

    pub fn valid_outcome(seed: u64) -> Outcome {
        let d = (seed % 4 + 1) as usize;
        Outcome {
            header: Header::default(),
            episode_id: format!("ep-{seed}"),
            state: (0..d).map(|i| i as f64 + 0.75).collect(),
            covariance: if seed % 3 == 0 { vec![0.2; d] } else { vec![] },
        }
    }

    pub fn valid_query(seed: u64) -> QueryRequest {
        QueryRequest {
            scenario: valid_prediction(seed).scenario,
            model_id: "wm-fuzz".into(),
        }
    }

    /// Decodes with the binding's decoder.
    pub fn decode<T: ZMessage>(bytes: &[u8]) -> Option<T>
    where
        T::Serdes: for<'a> hiroz::msg::ZDeserializer<Input<'a> = &'a [u8], Output = T>,
    {
        T::deserialize(bytes).ok()
    }

    /// Offsets (after the 4-byte encapsulation header, CDR alignment is relative to the
    /// payload) where a u32 length prefix can sit: every 4-aligned position.
    pub fn u32_slots(len: usize) -> Vec<usize> {
        (4..len.saturating_sub(3)).step_by(4).collect()
    }
}

#[global_allocator]
static ALLOC: cdr::PeakAlloc = cdr::PeakAlloc;

/// A forged length no honest message has: past the decoder's own cap (100,000,000), at
/// it, at 2^31 and at the top of the u32 range.
const FORGED_LENGTHS: [u32; 5] = [1 << 31, u32::MAX, 100_000_001, 100_000_000, 1 << 24];

/// Largest allocation a decode of a small message may make: far below what a forged
/// length would reserve if it were trusted (2^31 × 8 bytes = 16 GiB for a `float64[]`).
const DECODE_ALLOC_BOUND: usize = 1 << 20;

fn mutate(
    mut bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    length: Option<(prop::sample::Index, u32)>,
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    for (at, v) in flips {
        let i = at.index(bytes.len());
        bytes[i] ^= v;
    }
    if let Some((at, forged)) = length {
        let slots = cdr::u32_slots(bytes.len());
        if !slots.is_empty() {
            let i = slots[at.index(slots.len())];
            bytes[i..i + 4].copy_from_slice(&forged.to_le_bytes());
        }
    }
    if let Some(c) = cut {
        bytes.truncate(c.index(bytes.len() + 1));
    }
    bytes
}

fn any_length() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(FORGED_LENGTHS.to_vec()),
        any::<u32>(),
        0u32..64
    ]
}

/// Every 4-aligned u32 of a valid encoding replaced by each forged length: whatever the
/// slot held (a sequence or string length, a number), decoding stays small and typed.
#[test]
fn cdr_forged_length_prefixes_allocate_nothing_large() {
    use hiroz::msg::ZMessage;
    let p = cdr::valid_prediction(3).serialize();
    let o = cdr::valid_outcome(5).serialize();
    let q = cdr::valid_query(7).serialize();
    let mut checked = 0;
    for (name, valid) in [("prediction", &p), ("outcome", &o), ("query", &q)] {
        for slot in cdr::u32_slots(valid.len()) {
            for forged in FORGED_LENGTHS {
                let mut bytes = valid.clone();
                bytes[slot..slot + 4].copy_from_slice(&forged.to_le_bytes());
                let (decoded, largest) = cdr::largest_alloc(|| match name {
                    "prediction" => cdr::decode::<qis_ros::ros::msgs::Prediction>(&bytes)
                        .map(|m| format!("{m:?}")),
                    "outcome" => {
                        cdr::decode::<qis_ros::ros::msgs::Outcome>(&bytes).map(|m| format!("{m:?}"))
                    }
                    _ => cdr::decode::<qis_ros::ros::msgs::QueryRequest>(&bytes)
                        .map(|m| format!("{m:?}")),
                });
                assert!(
                    largest <= DECODE_ALLOC_BOUND,
                    "{name}: length {forged} at byte {slot} allocated {largest} bytes"
                );
                // A u32 slot that was a sequence length cannot claim more elements than
                // the bytes hold; a slot holding data (a stamp, a float half) may decode.
                if let Some(m) = decoded {
                    assert!(m.len() < 1 << 16, "{name}: implausibly large decode");
                }
                checked += 1;
            }
        }
    }
    // The node still answers after all of them went through its decoder.
    cdr::feed_and_check(None, None, None, 1).expect("node serves");
    assert!(checked > 100, "only {checked} forged encodings");
    // The measurement is real: a trusted forged length would show up.
    let (_, big) = cdr::largest_alloc(|| Vec::<f64>::with_capacity(1 << 21));
    assert!(big > DECODE_ALLOC_BOUND, "allocation probe saw {big} bytes");
}

/// The header the binding checks first: anything but CDR little endian is refused.
#[test]
fn cdr_wrong_encapsulation_is_refused() {
    use hiroz::msg::ZMessage;
    let mut p = cdr::valid_prediction(1).serialize();
    assert!(cdr::decode::<qis_ros::ros::msgs::Prediction>(&p).is_some());
    p[1] = 0x00; // CDR big endian
    assert!(cdr::decode::<qis_ros::ros::msgs::Prediction>(&p).is_none());
    for short in 0..4 {
        assert!(cdr::decode::<qis_ros::ros::msgs::Outcome>(&p[..short]).is_none());
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn cdr_decode_never_panics_on_random_bytes(
        // Bytes, or 4-byte words that are mostly small (CDR lengths are aligned u32s), so
        // that short strings and sequences make some arbitrary inputs decode at all.
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::collection::vec(prop_oneof![3 => 0u32..6, 1 => any::<u32>()], 0..100)
                .prop_map(|w| w.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ],
        header in any::<bool>(),
        now in 1i64..1_000_000_000,
    ) {
        use qis_ros::ros::msgs::{Outcome, Prediction, QueryRequest};
        // Half the inputs get the right encapsulation header so the body is parsed.
        let bytes = if header { [&[0u8, 1, 0, 0][..], &body].concat() } else { body };
        let (decoded, largest) = cdr::largest_alloc(|| {
            (
                cdr::decode::<Prediction>(&bytes),
                cdr::decode::<Outcome>(&bytes),
                cdr::decode::<QueryRequest>(&bytes),
            )
        });
        prop_assert!(largest <= DECODE_ALLOC_BOUND, "allocated {} bytes", largest);
        let (p, o, q) = decoded;
        let r = cdr::feed_and_check(p.as_ref(), o.as_ref(), q.as_ref(), now);
        prop_assert!(r.is_ok(), "{:?}", r);
    }

    #[test]
    fn cdr_decode_never_panics_on_mutated_messages(
        seed in 0u64..1000,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..5),
        length in proptest::option::of((any::<prop::sample::Index>(), any_length())),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        now in 1i64..1_000_000_000,
    ) {
        use hiroz::msg::ZMessage;
        use qis_ros::ros::msgs::{Outcome, Prediction, QueryRequest};
        let p = mutate(cdr::valid_prediction(seed).serialize(), &flips, length, cut);
        let o = mutate(cdr::valid_outcome(seed).serialize(), &flips, length, cut);
        let q = mutate(cdr::valid_query(seed).serialize(), &flips, length, cut);
        let (decoded, largest) = cdr::largest_alloc(|| {
            (
                cdr::decode::<Prediction>(&p),
                cdr::decode::<Outcome>(&o),
                cdr::decode::<QueryRequest>(&q),
            )
        });
        prop_assert!(largest <= DECODE_ALLOC_BOUND, "allocated {} bytes", largest);
        let (p, o, q) = decoded;
        // Unmutated encodings must round-trip (the generator is not vacuous).
        if flips.is_empty() && length.is_none() && cut.is_none() {
            prop_assert_eq!(p.as_ref(), Some(&cdr::valid_prediction(seed)));
            prop_assert_eq!(o.as_ref(), Some(&cdr::valid_outcome(seed)));
        }
        let r = cdr::feed_and_check(p.as_ref(), o.as_ref(), q.as_ref(), now);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}
