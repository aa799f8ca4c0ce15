//! Fleet exchange figures on loopback, two Zenoh peer sessions in one process:
//! - propagation: A's `publish` until B's memory holds the record (channel + ingest);
//! - fleet query latency (`FleetExchange::query`, verify included) next to a bare Zenoh
//!   get of a payload of the same size, measured in the same run, with the ratio.
//!
//! Prints p50/p99 in microseconds. Run: `cargo bench --bench fleet`.
//! Targets (DESIGN.md §7): propagation p99 <= 20 ms; query <= 2x the bare get.

use std::time::{Duration, Instant};

use qis_ros::core::ids::{Fingerprint, ModelId, RecordKey, SourceId};
use qis_ros::core::memory::{Ingest, MemoryConfig, OutcomeMemory};
use qis_ros::core::neighbors::Sketch;
use qis_ros::core::record::OutcomeRecord;
use qis_ros::core::summary::Decay;
use qis_ros::fleet::{FleetConfig, FleetExchange, Identity, Publish};

const WARMUP: usize = 100;
const DIM: usize = 8;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn config(listen: u16, connect: u16, signed: bool) -> FleetConfig {
    FleetConfig {
        fleet: "bench".into(),
        listen: vec![format!("tcp/127.0.0.1:{listen}")],
        connect: vec![format!("tcp/127.0.0.1:{connect}")],
        publish_interval_ms: 0,
        min_count_to_share: 1,
        // Propagation of each put is measured, so every version is put.
        republish_growth: 1.0,
        anti_entropy_period_ms: 0,
        unsigned: !signed,
        ..FleetConfig::default()
    }
}

async fn run(signed: bool, rounds: usize) {
    let (pa, pb) = (free_port(), free_port());
    // Signed: self-certifying identities (the default); unsigned: named robots.
    let identity = |name: &str| {
        if signed {
            Identity::generate()
        } else {
            Identity::unsigned(SourceId::new(name).unwrap())
        }
    };
    let id_a = identity("robot-a");
    let a_source = id_a.source().clone();
    let (a, _rx_a) = FleetExchange::start(config(pa, pb, signed).validate().expect("config"), id_a)
        .await
        .expect("A starts");
    let (b, mut rx_b) = FleetExchange::start(
        config(pb, pa, signed).validate().expect("config"),
        identity("robot-b"),
    )
    .await
    .expect("B starts");
    let model = ModelId::new("bench-model").unwrap();
    let fp = Fingerprint([9; 16]);
    let key = RecordKey {
        model: model.clone(),
        fingerprint: fp,
        source: a_source,
    };
    // Pre-compute the record versions so only the exchange is timed.
    let mut own = OutcomeMemory::new(
        key.source.clone(),
        MemoryConfig::default(),
        Decay::from_half_life_secs(0.0),
    );
    let residual = [0.25; DIM];
    let records: Vec<OutcomeRecord> = (0..rounds + WARMUP)
        .map(|i| {
            own.record_outcome(&model, fp, Sketch([0; 32]), &residual, i as i64 * 1000)
                .expect("outcome")
        })
        .collect();
    let mut memory = OutcomeMemory::new(
        SourceId::new("robot-b").unwrap(),
        MemoryConfig::default(),
        Decay::from_half_life_secs(0.0),
    );
    b.follow(&model, &fp).await.expect("follow");
    // Wait until B's subscription reaches A: publish until one arrives.
    let mut i = 0;
    loop {
        assert_eq!(
            a.publish(&key, &records[i]).expect("publish"),
            Publish::Queued
        );
        if tokio::time::timeout(Duration::from_millis(200), rx_b.recv())
            .await
            .is_ok()
        {
            break;
        }
        i += 1;
        assert!(i < WARMUP, "B never received A's records");
    }
    while rx_b.try_recv().is_ok() {}

    let mut propagation = Vec::with_capacity(rounds);
    for (n, rec) in records.iter().enumerate().skip(i + 1) {
        let t0 = Instant::now();
        a.publish(&key, rec).expect("publish");
        loop {
            let (k, r) = tokio::time::timeout(Duration::from_secs(5), rx_b.recv())
                .await
                .expect("record arrives")
                .expect("channel open");
            if r.seq == rec.seq {
                assert_eq!(memory.ingest(&k, r), Ingest::Stored);
                break;
            }
        }
        if n > WARMUP {
            propagation.push(t0.elapsed());
        }
    }

    // Query: the fleet path vs a bare get of the same bytes from a bare queryable.
    let payload_len = a.stats().bytes_out / a.stats().published.max(1);
    let bare = a
        .session()
        .declare_queryable("bench/bare")
        .await
        .expect("bare queryable");
    let payload = vec![0x5au8; payload_len as usize];
    let server = tokio::spawn(async move {
        while let Ok(q) = bare.recv_async().await {
            let _ = q.reply("bench/bare", payload.clone()).await;
        }
    });
    let mut fleet_q = Vec::with_capacity(rounds);
    let mut bare_q = Vec::with_capacity(rounds);
    for n in 0..rounds + WARMUP {
        let t0 = Instant::now();
        let got = b.query(&model, &fp).await.expect("query");
        let d_fleet = t0.elapsed();
        assert_eq!(got.len(), 1);
        let t0 = Instant::now();
        let replies = b.session().get("bench/bare").await.expect("get");
        let mut count = 0;
        while let Ok(r) = replies.recv_async().await {
            count += usize::from(
                r.result()
                    .is_ok_and(|s| s.payload().len() == payload_len as usize),
            );
        }
        let d_bare = t0.elapsed();
        assert_eq!(count, 1);
        if n >= WARMUP {
            fleet_q.push(d_fleet);
            bare_q.push(d_bare);
        }
    }
    server.abort();
    let (p50, p99) = percentiles(propagation);
    let (f50, f99) = percentiles(fleet_q);
    let (b50, b99) = percentiles(bare_q);
    let mode = if signed { "signed" } else { "unsigned" };
    println!("fleet/{mode}: record {payload_len} bytes, {rounds} rounds, loopback, 2 peers");
    println!(
        "  propagation publish -> B memory   p50 {p50:8.1} us  p99 {p99:8.1} us  (target p99 <= 20000 us)"
    );
    println!("  fleet query (verify + decode)     p50 {f50:8.1} us  p99 {f99:8.1} us");
    println!("  bare zenoh get, same payload size p50 {b50:8.1} us  p99 {b99:8.1} us");
    println!(
        "  ratio fleet/bare                  p50 {:8.2}x    p99 {:8.2}x  (target <= 2x)",
        f50 / b50,
        f99 / b99
    );
    a.close().await.expect("close A");
    b.close().await.expect("close B");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: then a short
    // smoke run checks the bench still works without spending CI time on figures.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        2000
    } else {
        50
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(false, rounds));
    rt.block_on(run(true, rounds));
}
