//! Core benchmarks: fingerprint, merge, synthesis, and the whole per-prediction path
//! (fingerprint + memory lookup + synthesis). The raw world model's own cost (returning
//! its prediction unchanged) is measured in the same run as the baseline.
//!
//! Run: `cargo bench --bench core`; predictions/s = 1 / (time of `core_path`), and
//! `core_path_cold` for a prediction right after its address changed (full pooling).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nalgebra::DVector;
use qis_ros::core::fingerprint::{Bins, FingerprintConfig, Fingerprinter};
use qis_ros::core::ids::{ModelId, RecordKey, Seq, SourceId};
use qis_ros::core::memory::{MemoryConfig, OutcomeMemory};
use qis_ros::core::neighbors::{NeighborIndex, SKETCH_DIM, Sketch, sketch};
use qis_ros::core::record::OutcomeRecord;
use qis_ros::core::summary::{Decay, Summary};
use qis_ros::core::synthesis::{Contribution, SynthesisConfig, synthesize};

const DIM: usize = 6;
const SOURCES: usize = 10;

fn fingerprinter() -> Fingerprinter {
    let mut cfg = FingerprintConfig::default();
    cfg.features.insert(
        "speed".into(),
        Bins::Width {
            width: 0.5,
            origin: 0.0,
        },
    );
    cfg.features.insert(
        "load_kg".into(),
        Bins::Edges {
            edges: vec![10.0, 50.0, 100.0],
        },
    );
    cfg.validate().expect("bench config is valid")
}

fn scenario() -> (Vec<String>, Vec<String>, Vec<f64>) {
    (
        vec![
            "weather=rain".into(),
            "obstacle=cyclist".into(),
            "surface=gravel".into(),
        ],
        vec!["speed".into(), "load_kg".into()],
        vec![1.26, 20.0],
    )
}

fn summary(bias: f64, n: usize) -> Summary {
    let mut s = Summary::empty(DIM).expect("dim in range");
    for k in 0..n {
        let r: Vec<f64> = (0..DIM)
            .map(|i| bias + (k * 31 + i * 7) as f64 % 13.0 * 0.01)
            .collect();
        s.add(&r, k as i64 * 1_000_000, Decay::from_half_life_secs(3600.0))
            .expect("finite");
    }
    s
}

fn benches(c: &mut Criterion) {
    let fp = fingerprinter();
    let (tags, names, values) = scenario();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));

    g.bench_function("raw_model_baseline", |b| {
        let x = DVector::from_element(DIM, 1.0);
        b.iter(|| black_box(x.clone()))
    });
    g.bench_function("fingerprint", |b| {
        b.iter(|| fp.fingerprint(black_box(&tags), black_box(&names), black_box(&values)))
    });
    let (a, s) = (summary(0.5, 100), summary(0.7, 100));
    g.bench_function("merge", |b| {
        b.iter(|| {
            let mut m = a.clone();
            m.merge(black_box(&s), Decay::from_half_life_secs(3600.0))
                .expect("same dim");
            m
        })
    });
    let sums: Vec<Summary> = (0..SOURCES)
        .map(|i| summary(0.5 + i as f64 * 0.01, 50))
        .collect();
    let contributions: Vec<Contribution> = sums
        .iter()
        .map(|s| Contribution {
            summary: s,
            trust: 1.0,
            similarity: 1.0,
            exact: true,
            address: 0,
            young: false,
        })
        .collect();
    let cfg = SynthesisConfig::default();
    let x = DVector::from_element(DIM, 1.0);
    g.bench_function("synthesis_10_sources", |b| {
        b.iter(|| {
            synthesize(
                &cfg,
                black_box(&x),
                None,
                black_box(&contributions),
                100_000_000,
            )
        })
    });

    let model = ModelId::new("world_model/v1").expect("valid id");
    let address = fp
        .fingerprint(&tags, &names, &values)
        .expect("valid scenario");
    let populated = |estimate_ttl_s: f64| {
        let mut memory = OutcomeMemory::new(
            SourceId::new("me").expect("valid id"),
            MemoryConfig {
                estimate_ttl_s,
                ..MemoryConfig::default()
            },
            cfg.decay(),
        );
        for (i, s) in sums.iter().enumerate() {
            let key = RecordKey {
                model: model.clone(),
                fingerprint: address,
                source: SourceId::new(format!("r{i}")).expect("valid id"),
            };
            memory.ingest(
                &key,
                OutcomeRecord {
                    seq: Seq(1),
                    sketch: Sketch([1; SKETCH_DIM]),
                    summary: s.clone(),
                    time_base: Default::default(),
                },
            );
        }
        // Many other addresses, as on a robot that has seen a lot.
        for k in 0..10_000u32 {
            let other = fp
                .fingerprint(&[format!("id={k}")], &[], &[])
                .expect("valid scenario");
            let key = RecordKey {
                model: model.clone(),
                fingerprint: other,
                source: SourceId::new("r0").expect("valid id"),
            };
            memory.ingest(
                &key,
                OutcomeRecord {
                    seq: Seq(1),
                    sketch: Sketch([1; SKETCH_DIM]),
                    summary: sums[0].clone(),
                    time_base: Default::default(),
                },
            );
        }
        memory
    };
    // Steady state: the address's records did not change since the last prediction, so
    // the pooled estimate is reused (what a robot sees between fleet updates).
    // Cold: every prediction pools all sources again (after every change, or ttl 0).
    for (name, ttl) in [("core_path", 1.0), ("core_path_cold", 0.0)] {
        let mut memory = populated(ttl);
        g.bench_function(name, |b| {
            b.iter(|| {
                let address = fp
                    .fingerprint(black_box(&tags), &names, &values)
                    .expect("valid scenario");
                memory
                    .prior(
                        &cfg,
                        &model,
                        &address,
                        &[],
                        black_box(&x),
                        None,
                        &|_| qis_ros::core::trust::SourceTrust::FULL,
                        100_000_000,
                    )
                    .expect("valid")
            })
        });
    }

    let mut index = NeighborIndex::new();
    let mut sketches = Vec::new();
    for k in 0..10_000i64 {
        let c = fp
            .canonicalize(
                &[format!("surface=s{}", k % 50)],
                &names[..1],
                &[k as f64 / 50.0],
            )
            .expect("valid scenario");
        let s = sketch(&c, &[]).expect("finite");
        index
            .insert(&model, c.fingerprint(), &s)
            .expect("faiss insert");
        sketches.push(s);
    }
    g.bench_function("neighbors_k8_of_10k", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % sketches.len();
            index
                .nearest(&model, black_box(&sketches[i]), 8)
                .expect("faiss search")
        })
    });
    let canonical = fp
        .canonicalize(&tags, &names, &values)
        .expect("valid scenario");
    g.bench_function("sketch", |b| b.iter(|| sketch(black_box(&canonical), &[])));
    g.finish();
    records(c);
}

/// The cost of signing by default, per record: seal + open (the sender's and receiver's
/// work for one shared record) signed and self-certified vs the unsigned opt-out. The
/// prediction path signs nothing, so `core_path` is the same in both modes; a record is
/// sealed once per `min_count_to_share` outcomes and opened once per record received.
fn records(c: &mut Criterion) {
    use qis_ros::fleet::identity::Identity;
    use qis_ros::fleet::keys::record_key;
    use qis_ros::fleet::signing::{Admission, seal};
    let mut s = Summary::empty(DIM).expect("dim");
    for i in 0..20 {
        let r: Vec<f64> = (0..DIM).map(|d| (i * d) as f64 * 0.01).collect();
        s.add(&r, i as i64, Decay::NONE).expect("finite");
    }
    let record = OutcomeRecord {
        seq: Seq(20),
        sketch: Sketch([1; SKETCH_DIM]),
        summary: s,
        time_base: Default::default(),
    };
    let identity = Identity::generate();
    let key = RecordKey {
        model: ModelId::new("wm").expect("valid id"),
        fingerprint: qis_ros::core::ids::Fingerprint([5; 16]),
        source: identity.source().clone(),
    };
    let ke = record_key(
        &qis_ros::core::ids::FleetName::new("bench").expect("valid"),
        &key,
    );
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    let (signed, unsigned) = (Admission::default(), Admission::Unsigned);
    g.bench_function("seal_open_signed", |b| {
        b.iter(|| {
            let bytes = seal(black_box(&record), &ke, identity.signing_key()).expect("seal");
            signed.open(&ke, &key.source, &bytes).expect("verifies")
        })
    });
    g.bench_function("seal_open_unsigned", |b| {
        b.iter(|| {
            let bytes = seal(black_box(&record), &ke, None).expect("seal");
            unsigned.open(&ke, &key.source, &bytes).expect("decodes")
        })
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
