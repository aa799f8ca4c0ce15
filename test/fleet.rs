//! Fleet exchange over real Zenoh sessions on loopback (127.0.0.1 only): peers in this
//! process and in separate `qis-fleet` processes (killed on drop), a router with
//! storage, signatures, replays, coalescing. Every wait is bounded.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use nalgebra::DVector;
use qis_ros::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, Seq, SourceId};
use qis_ros::core::memory::{Ingest, MemoryConfig, OutcomeMemory};
use qis_ros::core::neighbors::Sketch;
use qis_ros::core::privacy::shared_form as shared;
use qis_ros::core::record::OutcomeRecord;
use qis_ros::core::summary::Decay;
use qis_ros::core::synthesis::SynthesisConfig;
use qis_ros::core::trust::SourceTrust;
use qis_ros::fleet::identity::source_id_of;
use qis_ros::fleet::keys::record_key;
use qis_ros::fleet::signing::{public_key_hex, seal};
use qis_ros::fleet::{FleetConfig, FleetExchange, Identity, Publish, Received};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

const FLEET: &str = "test fleet";
const MODEL: &str = "cosmos/v1";
/// Bound on any single wait for the network in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local addr").port()
}

fn ep(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

fn fp(byte: u8) -> Fingerprint {
    Fingerprint([byte; 16])
}

fn key_of(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn write_key(dir: &Path, name: &str, key: &SigningKey) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, hex::encode(key.to_bytes())).expect("write key file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    p
}

/// The self-certifying source id of a key.
fn sid(key: &SigningKey) -> String {
    source_id_of(&key.verifying_key()).as_str().to_owned()
}

/// Peer settings on loopback with the given endpoints. Unsigned (the explicit opt-out),
/// so these tests can name their robots; `three_peers_share_verify_and_survive_the_source`
/// and test/attack.rs run the signed default.
fn peer_config(listen: u16, connect: &[u16]) -> FleetConfig {
    FleetConfig {
        fleet: FLEET.into(),
        listen: vec![ep(listen)],
        connect: connect.iter().map(|p| ep(*p)).collect(),
        query_timeout_ms: 1000,
        publish_interval_ms: 0,
        min_count_to_share: 3,
        anti_entropy_period_ms: 0,
        unsigned: true,
        ..FleetConfig::default()
    }
}

/// Signed peer settings (the default) on loopback.
fn signed_config(listen: u16, connect: &[u16]) -> FleetConfig {
    FleetConfig {
        unsigned: false,
        ..peer_config(listen, connect)
    }
}

/// A client of the router on `port` (the shipped client config), sharing from the first
/// outcome, without anti-entropy rounds.
fn router_client(port: u16) -> FleetConfig {
    FleetConfig {
        fleet: FLEET.into(),
        zenoh_config: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zenoh-client.json5")),
        connect: vec![ep(port)],
        min_count_to_share: 1,
        anti_entropy_period_ms: 0,
        ..FleetConfig::default()
    }
}

/// An exchange under a name: the unsigned opt-out, whatever `cfg` says.
async fn start(cfg: FleetConfig, source: &str) -> (FleetExchange, mpsc::Receiver<Received>) {
    let cfg = FleetConfig {
        unsigned: true,
        ..cfg
    };
    start_as(cfg, Identity::unsigned(SourceId::new(source).unwrap())).await
}

async fn start_as(
    cfg: FleetConfig,
    identity: Identity,
) -> (FleetExchange, mpsc::Receiver<Received>) {
    FleetExchange::start(cfg.validate().expect("valid config"), identity)
        .await
        .expect("exchange starts")
}

/// Spawns `qis-fleet <args>` and waits (bounded) for its `ready` line on stdout.
async fn spawn_ready(args: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qis-fleet"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qis-fleet");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(WAIT, lines.next_line())
        .await
        .expect("qis-fleet ready in time")
        .expect("read stdout")
        .expect("a line before EOF");
    assert!(line.starts_with("ready"), "unexpected first line {line:?}");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// Queries until `pred` holds on the result, bounded by WAIT.
async fn query_until(
    ex: &FleetExchange,
    fingerprint: &Fingerprint,
    pred: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let model = ModelId::new(MODEL).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = ex.query(&model, fingerprint).await.expect("query runs");
        if pred(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "query result never satisfied the condition: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `ex` completed `n` more anti-entropy rounds.
async fn wait_rounds(ex: &FleetExchange, n: u64) {
    let start = ex.stats().anti_entropy_rounds;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ex.stats().anti_entropy_rounds < start + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "anti-entropy stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives from the channel until `pred` holds, bounded by WAIT.
async fn recv_until(
    rx: &mut mpsc::Receiver<Received>,
    mut pred: impl FnMut(&Received) -> bool,
) -> Received {
    timeout(WAIT, async {
        loop {
            let r = rx.recv().await.expect("channel open");
            if pred(&r) {
                return r;
            }
        }
    })
    .await
    .expect("expected record arrived in time")
}

fn memory(source: &str) -> OutcomeMemory {
    OutcomeMemory::new(
        SourceId::new(source).unwrap(),
        MemoryConfig::default(),
        Decay::from_half_life_secs(0.0),
    )
}

/// An own record of `source` after `n` outcomes with residual `r` (± 0.01).
fn own_record(
    source: &str,
    fingerprint: Fingerprint,
    n: u32,
    r: &[f64],
) -> (RecordKey, OutcomeRecord) {
    let mut m = memory(source);
    let model = ModelId::new(MODEL).unwrap();
    let mut rec = None;
    for i in 0..n {
        let jitter = if i % 2 == 0 { 0.01 } else { -0.01 };
        let v: Vec<f64> = r.iter().map(|x| x + jitter).collect();
        rec = Some(
            m.record_outcome(
                &model,
                fingerprint,
                Sketch([0; 32]),
                &v,
                i64::from(i) * 1_000_000,
            )
            .unwrap(),
        );
    }
    let key = RecordKey {
        model,
        fingerprint,
        source: SourceId::new(source).unwrap(),
    };
    (key, rec.expect("n >= 1"))
}

/// A prediction of zeros corrected by what `m` holds for `fingerprint`.
fn corrected(m: &mut OutcomeMemory, fingerprint: &Fingerprint) -> (DVector<f64>, u32) {
    let prior = m
        .prior(
            &SynthesisConfig::default(),
            &ModelId::new(MODEL).unwrap(),
            fingerprint,
            &[],
            &DVector::zeros(2),
            None,
            &|_| SourceTrust::FULL,
            10_000_000,
        )
        .unwrap();
    (prior.state, prior.sources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_share_verify_and_survive_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb, kc, forger) = (key_of(1), key_of(2), key_of(3), key_of(66));
    let ka_file = write_key(dir.path(), "a.key", &ka);
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let s = fp(0x5a);
    let s_hex = s.to_hex();

    // A: a separate process that reports 10 outcomes (residual 0.5, -0.25) for s.
    let a = spawn_ready(&[
        "peer",
        "--fleet",
        FLEET,
        "--listen",
        &ep(pa),
        "--connect",
        &ep(pb),
        "--key-file",
        ka_file.to_str().unwrap(),
        "--model",
        MODEL,
        "--fingerprint",
        &s_hex,
        "--outcomes",
        "10",
        "--residual",
        "0.5,-0.25",
    ])
    .await;

    // Admission: only these three keys may write in this fleet.
    let admitted = |mut c: FleetConfig| {
        c.allowed_keys = [&ka, &kb, &kc].iter().map(|k| public_key_hex(k)).collect();
        c
    };
    let (a_id, b_id, c_id) = (sid(&ka), sid(&kb), sid(&kc));
    let mut cfg_b = admitted(signed_config(pb, &[pa]));
    // Anti-entropy on: a live sample sent before a link is up is still delivered.
    cfg_b.anti_entropy_period_ms = 300;
    let (b, mut rx_b) = start_as(cfg_b, Identity::signed(kb.clone())).await;

    // B never met s: one query brings A's record, and B's first prior reflects it.
    let got = query_until(&b, &s, |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (key, rec) = got[0].clone();
    assert_eq!(key.source.as_str(), a_id);
    assert_eq!((rec.seq, rec.summary.count()), (Seq(10), 10));
    let mut mem_b = memory(&b_id);
    let (before, _) = corrected(&mut mem_b, &s);
    assert_eq!(before, DVector::zeros(2));
    assert_eq!(mem_b.ingest(&key, rec.clone()), Ingest::Stored);
    let (state_b, sources) = corrected(&mut mem_b, &s);
    assert_eq!(sources, 1);
    // Shrinkage toward A's mean residual: same signs, not beyond it.
    assert!(state_b[0] > 0.1 && state_b[0] <= 0.5, "{state_b}");
    assert!(state_b[1] < -0.05 && state_b[1] >= -0.25, "{state_b}");

    // B follows s for live updates.
    assert!(b.follow(&key.model, &s).await.unwrap());
    assert!(!b.follow(&key.model, &s).await.unwrap());

    // C joins later (connects to A and B) and gets the same record.
    let cfg_c = admitted(signed_config(pc, &[pa, pb]));
    let (c, _rx_c) = start_as(cfg_c, Identity::signed(kc.clone())).await;
    let got_c = query_until(&c, &s, |g| g.iter().any(|(k, _)| k.source.as_str() == a_id)).await;
    let (_, rec_c) = got_c
        .iter()
        .find(|(k, _)| k.source.as_str() == a_id)
        .unwrap();
    assert_eq!(rec_c, &rec);
    let mut mem_c = memory(&c_id);
    mem_c.ingest(&key, rec_c.clone());
    assert_eq!(corrected(&mut mem_c, &s), (state_b.clone(), 1));

    // C shares its own record for s: B receives it live and verified.
    let (key_c, rec_own_c) = own_record(&c_id, s, 4, &[0.4, -0.2]);
    assert_eq!(c.publish(&key_c, &rec_own_c).unwrap(), Publish::Queued);
    let (k, r) = recv_until(&mut rx_b, |(k, _)| k.source.as_str() == c_id).await;
    assert_eq!((r.seq, r.summary.count()), (Seq(4), 4));
    assert_eq!(mem_b.ingest(&k, r), Ingest::Stored);

    // Hostile input on the wire, from a raw session: a record claiming to be A's signed
    // by a forger, an unsigned one, garbage bytes, a key outside the key space v2 rules,
    // and A's record correctly signed by A's own key but put under another lane than
    // A's (which would reach subscribers that never chose A).
    let mut raw_cfg = zenoh::Config::default();
    raw_cfg.insert_json5("mode", "\"peer\"").unwrap();
    raw_cfg
        .insert_json5("listen/endpoints", &format!("[\"{}\"]", ep(pd)))
        .unwrap();
    raw_cfg
        .insert_json5(
            "connect/endpoints",
            &format!("[\"{}\",\"{}\"]", ep(pa), ep(pb)),
        )
        .unwrap();
    raw_cfg
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let raw = zenoh::open(raw_cfg).await.unwrap();
    let fleet = FleetName::new(FLEET).unwrap();
    let ke_a = record_key(&fleet, &key);
    let wrong_lane = {
        let mut chunks: Vec<String> = ke_a.split('/').map(str::to_owned).collect();
        // Chunk 14 is the lane's last binary digit: flipping it is another lane.
        chunks[14] = if chunks[14] == "0" { "1" } else { "0" }.to_owned();
        chunks.join("/")
    };
    let (_, newer) = own_record(&a_id, s, 20, &[9.0, 9.0]);
    let before_stats = b.stats();
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Resend until B has seen all four (the raw session needs a moment to connect).
    while b.stats().rejected() < before_stats.rejected() + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hostile samples never reached B"
        );
        raw.put(&ke_a, seal(&newer, &ke_a, Some(&forger)).unwrap())
            .await
            .unwrap();
        raw.put(&ke_a, seal(&newer, &ke_a, None).unwrap())
            .await
            .unwrap();
        raw.put(&ke_a, vec![1u8, 2, 3]).await.unwrap();
        raw.put(&wrong_lane, seal(&newer, &wrong_lane, Some(&ka)).unwrap())
            .await
            .unwrap();
        raw.put(
            format!(
                "qis/v2/test%20fleet/{}/cosmos%2Fv1/{s_hex}/a+b",
                ["0"; 12].join("/")
            ),
            vec![0u8],
        )
        .await
        .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = b.stats();
    assert!(after.rejected_signature > before_stats.rejected_signature);
    assert!(after.rejected_unsigned > before_stats.rejected_unsigned);
    assert!(after.rejected_decode > before_stats.rejected_decode);
    assert!(after.rejected_key > before_stats.rejected_key);
    assert!(
        after.rejected_lane > before_stats.rejected_lane,
        "a validly signed record under a wrong lane is refused and counted"
    );
    assert!(sent >= 1);

    // A genuine replay (A's older seq 5, correctly signed): verified, delivered, and the
    // memory keeps the newer seq, so nothing is double counted.
    let (_, older) = own_record(&a_id, s, 5, &[0.5, -0.25]);
    raw.put(&ke_a, seal(&older, &ke_a, Some(&ka)).unwrap())
        .await
        .unwrap();
    let (k, r) = recv_until(&mut rx_b, |(k, r)| {
        k.source.as_str() == a_id && r.seq == Seq(5)
    })
    .await;
    let (state_before_replay, _) = corrected(&mut mem_b, &s);
    assert_eq!(mem_b.ingest(&k, r), Ingest::Stale);
    assert_eq!(corrected(&mut mem_b, &s).0, state_before_replay);
    // None of the forged records got through to the channel.
    while let Ok(r) = rx_b.try_recv() {
        assert_ne!(r.1.summary.count(), 20, "forged record delivered: {r:?}");
    }
    raw.close().await.unwrap();

    // A dies. B and C still answer: B's prior still rests on A's outcomes, and C still
    // gets B's record from B (each node serves only its own records).
    drop(a);
    let (state_after, sources_after) = corrected(&mut mem_b, &s);
    assert_eq!(sources_after, 2);
    assert!(state_after[0] > 0.1, "{state_after}");
    let (key_b, rec_own_b) = own_record(&b_id, s, 3, &[0.45, -0.2]);
    assert_eq!(b.publish(&key_b, &rec_own_b).unwrap(), Publish::Queued);
    let got_c = query_until(&c, &s, |g| g.iter().any(|(k, _)| k.source.as_str() == b_id)).await;
    assert!(got_c.iter().all(|(k, _)| k.source.as_str() != c_id));

    b.close().await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_storage_serves_records_of_departed_robots() {
    let pr = free_port();
    let router = spawn_ready(&["router", "--unsigned", "--listen", &ep(pr)]).await;
    let client = |source: &'static str| start(router_client(pr), source);
    let s = fp(0x11);

    // A (client of the router) reports and publishes, then goes offline.
    let (a, _rx_a) = client("robot-a").await;
    let (key, rec) = own_record("robot-a", s, 6, &[1.0, 2.0]);
    assert_eq!(a.publish(&key, &rec).unwrap(), Publish::Queued);
    a.flush().await.unwrap();
    // Wait until the record can be read back while A is still up (storage or A answers).
    let (probe, _rx_p) = client("probe").await;
    query_until(&probe, &s, |g| !g.is_empty()).await;
    a.close().await.unwrap();

    // C joins after A left: only the router's storage can answer.
    let (c, _rx_c) = client("robot-c").await;
    let got = query_until(&c, &s, |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, key);
    assert_eq!(got[0].1, shared(&rec));

    probe.close().await.unwrap();
    c.close().await.unwrap();
    drop(router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_withheld_then_coalesced_and_subscriptions_are_bounded() {
    let (pa, pb) = (free_port(), free_port());
    let mut cfg_a = peer_config(pa, &[pb]);
    cfg_a.publish_interval_ms = 2000;
    cfg_a.min_count_to_share = 3;
    let (a, _rx_a) = start(cfg_a, "robot-a").await;
    let mut cfg_b = peer_config(pb, &[pa]);
    cfg_b.max_live_subscriptions = 2;
    let (b, mut rx_b) = start(cfg_b, "robot-b").await;
    let s = fp(0x22);
    let model = ModelId::new(MODEL).unwrap();
    assert!(b.follow(&model, &s).await.unwrap());

    // Below min_count_to_share: withheld, not served.
    let (key, r2) = own_record("robot-a", s, 2, &[0.3, 0.3]);
    assert_eq!(
        a.publish(&key, &r2).unwrap(),
        Publish::Withheld {
            count: 2,
            needed: 3
        }
    );
    assert!(b.query(&model, &s).await.unwrap().is_empty());

    // Wait until B's subscription is known to A (a served record is visible to queries).
    let (_, r3) = own_record("robot-a", s, 3, &[0.3, 0.3]);
    a.serve_own(&key, &r3).unwrap();
    query_until(&b, &s, |g| !g.is_empty()).await;

    // A burst of three versions: at most one put goes out at once (the outbox task may
    // wake after any of them), the rest coalesce into one put of the latest after the
    // interval. B ends with seq 5 after at most two samples.
    for n in 3..=5 {
        let (_, r) = own_record("robot-a", s, n, &[0.3, 0.3]);
        assert_eq!(a.publish(&key, &r).unwrap(), Publish::Queued);
    }
    // The traffic budget: 6 outcomes are fewer than 1.25 x the 5 last put, so this
    // version is held back from the network, yet it is the one served.
    let (_, r6) = own_record("robot-a", s, 6, &[0.3, 0.3]);
    assert_eq!(
        a.publish(&key, &r6).unwrap(),
        Publish::Held {
            count: 6,
            last_put: 5
        }
    );
    let mut samples = 0;
    recv_until(&mut rx_b, |(_, r)| {
        samples += 1;
        r.seq == Seq(5)
    })
    .await;
    assert!(
        samples <= 2,
        "{samples} samples: intermediate versions were not coalesced"
    );
    // The counter is bumped after the put returns, which can be after B got it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.stats().published == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no put counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let published = a.stats().published;
    assert!(
        (1..=2).contains(&published),
        "{published} puts for one burst"
    );
    assert_eq!(a.stats().withheld, 1);
    assert_eq!(a.stats().held_back, 1);
    let got = b.query(&model, &s).await.unwrap();
    assert_eq!(
        got.iter().map(|(_, r)| r.seq).max(),
        Some(Seq(6)),
        "the held-back version is served"
    );

    // Live subscriptions are bounded: following a third address drops the least
    // recently used one (s was refreshed, so fp 0x33 goes).
    assert!(b.follow(&model, &fp(0x33)).await.unwrap());
    assert!(!b.follow(&model, &s).await.unwrap());
    assert!(b.follow(&model, &fp(0x44)).await.unwrap());
    let mut followed: Vec<Fingerprint> = b.followed().into_iter().map(|(_, f)| f).collect();
    followed.sort();
    assert_eq!(followed, vec![s, fp(0x44)]);

    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_brings_records_missed_live() {
    let (pa, pb) = (free_port(), free_port());
    let (a, _rx_a) = start(peer_config(pa, &[pb]), "robot-a").await;
    let mut cfg_b = peer_config(pb, &[pa]);
    cfg_b.anti_entropy_period_ms = 200;
    let (b, mut rx_b) = start(cfg_b, "robot-b").await;
    let s = fp(0x77);
    let model = ModelId::new(MODEL).unwrap();
    assert!(b.follow(&model, &s).await.unwrap());

    // Served but never put: no live sample exists, only a re-query can deliver it.
    let (key, rec) = own_record("robot-a", s, 4, &[0.1, 0.2]);
    assert!(a.serve_own(&key, &rec).unwrap());
    let (k, r) = recv_until(&mut rx_b, |_| true).await;
    assert_eq!((k, r), (key.clone(), shared(&rec)));
    assert_eq!(a.stats().published, 0);
    assert!(
        b.stats().queries >= 1,
        "only an anti-entropy query can have delivered it"
    );

    // B's digest now holds A's seq 4: later rounds ask with it and A sends nothing.
    wait_rounds(&b, 1).await;
    let sent = a.stats().bytes_out;
    wait_rounds(&b, 3).await;
    assert_eq!(
        a.stats().bytes_out,
        sent,
        "A resent a record B already holds"
    );
    assert!(rx_b.try_recv().is_err());

    // A newer version is still fetched.
    let (_, rec5) = own_record("robot-a", s, 5, &[0.1, 0.2]);
    assert!(a.serve_own(&key, &rec5).unwrap());
    let (_, r) = recv_until(&mut rx_b, |_| true).await;
    assert_eq!(r.seq, Seq(5));

    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Privacy (DESIGN §6): only fingerprints and summaries cross the wire. A spy on `**`
/// (live samples, plus a get of everything at the end) must never see a raw predicted
/// or measured state value, a scenario feature value, an embedding value, a tag or a
/// feature name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_records_cross_the_wire() {
    use qis_ros::core::fingerprint::{Bins, FingerprintConfig};
    use std::sync::{Arc, Mutex};

    let (pa, pb, ps) = (free_port(), free_port(), free_port());
    let mut fcfg = FingerprintConfig::default();
    fcfg.features.insert(
        "speed".into(),
        Bins::Width {
            width: 1.0,
            origin: 0.0,
        },
    );
    let fingerprinter = fcfg.validate().unwrap();
    let tags = vec!["weather=rain".to_owned(), "obstacle=cyclist".to_owned()];
    let names = vec!["speed".to_owned()];
    let features = [7.3125];
    let embedding = [0.123_f32, -0.456, 0.789, 0.321];
    let canonical = fingerprinter
        .canonicalize(&tags, &names, &features)
        .unwrap();
    let s = canonical.fingerprint();
    let sketch = qis_ros::core::neighbors::sketch(&canonical, &embedding).unwrap();

    // The spy: a plain Zenoh peer connected to both robots.
    let mut spy_cfg = zenoh::Config::default();
    spy_cfg.insert_json5("mode", "\"peer\"").unwrap();
    spy_cfg
        .insert_json5("listen/endpoints", &format!("[\"{}\"]", ep(ps)))
        .unwrap();
    spy_cfg
        .insert_json5(
            "connect/endpoints",
            &format!("[\"{}\",\"{}\"]", ep(pa), ep(pb)),
        )
        .unwrap();
    spy_cfg
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    let spy = zenoh::open(spy_cfg).await.unwrap();
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let _sub = spy
        .declare_subscriber("**")
        .callback(move |sample| {
            sink.lock().unwrap().push((
                sample.key_expr().as_str().to_owned(),
                sample.payload().to_bytes().into_owned(),
            ));
        })
        .await
        .unwrap();

    let (a, _rx_a) = start(peer_config(pa, &[pb, ps]), "robot-a").await;
    let (b, _rx_b) = start(peer_config(pb, &[pa, ps]), "robot-b").await;
    let model = ModelId::new(MODEL).unwrap();
    let key = RecordKey {
        model: model.clone(),
        fingerprint: s,
        source: SourceId::new("robot-a").unwrap(),
    };
    let mut mem_a = memory("robot-a");
    let mut raw_values: Vec<f64> = features.to_vec();
    for i in 0..6 {
        let predicted = [10.0 + f64::from(i) * 0.37, -3.3 - f64::from(i) * 0.11];
        let measured = [
            predicted[0] + 0.5 + f64::from(i) * 0.013,
            predicted[1] - 0.25 + f64::from(i) * 0.007,
        ];
        raw_values.extend(predicted);
        raw_values.extend(measured);
        let residual = [measured[0] - predicted[0], measured[1] - predicted[1]];
        let rec = mem_a
            .record_outcome(&model, s, sketch, &residual, i64::from(i) * 1_000_000)
            .unwrap();
        a.publish(&key, &rec).unwrap();
    }
    // B sees A's record (so data really flowed), and the spy saw at least one put.
    query_until(&b, &s, |g| g.iter().any(|(_, r)| r.summary.count() == 6)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "spy saw nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replies = spy.get("qis/**").await.unwrap();
    while let Ok(r) = replies.recv_async().await {
        if let Ok(sample) = r.result() {
            seen.lock().unwrap().push((
                sample.key_expr().as_str().to_owned(),
                sample.payload().to_bytes().into_owned(),
            ));
        }
    }

    let seen = seen.lock().unwrap().clone();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (k, payload) in &seen {
        assert!(k.starts_with("qis/v2/"), "unexpected key {k}");
        for text in ["rain", "cyclist", "speed", "weather", "obstacle"] {
            assert!(
                !k.contains(text) && !contains(payload, text.as_bytes()),
                "{text} leaked"
            );
        }
        for v in &raw_values {
            assert!(
                !contains(payload, &v.to_le_bytes()),
                "raw value {v} leaked under {k}"
            );
            assert!(
                !contains(payload, v.to_string().as_bytes()),
                "raw value {v} leaked as text"
            );
        }
        for e in embedding {
            assert!(
                !contains(payload, &e.to_le_bytes()),
                "embedding value {e} leaked"
            );
        }
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
    spy.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_key_whose_public_half_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("robot.key");
    let out = Command::new(env!("CARGO_BIN_EXE_qis-fleet"))
        .arg("keygen")
        .arg(&file)
        .output()
        .await
        .expect("run keygen");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let key = qis_ros::fleet::signing::parse_signing_key(&std::fs::read_to_string(&file).unwrap())
        .expect("a valid key file");
    assert_eq!(printed.trim(), public_key_hex(&key));
    // Never overwrites an existing key.
    let again = Command::new(env!("CARGO_BIN_EXE_qis-fleet"))
        .arg("keygen")
        .arg(&file)
        .output()
        .await
        .expect("run keygen");
    assert!(!again.status.success());
}

/// A robot restarted on its store knows its addresses, so none is a first encounter:
/// the link must follow them again, or it never hears of newer records there. Also
/// checks that what the exchange refuses from the network reaches the node's
/// diagnostics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_link_follows_its_stored_addresses_again_and_reports_refusals() {
    use qis_ros::core::store::{Store, StoreConfig};
    use qis_ros::link::FleetLink;
    use qis_ros::node::FleetPort;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    let model = ModelId::new(MODEL).unwrap();
    let (py, px) = (free_port(), free_port());
    let (y, _y_rx) = start(peer_config(py, &[]), "robot-y").await;
    // Y learned at fp(7) while X was down.
    let (ky, ry) = own_record("robot-y", fp(7), 3, &[0.5, -0.5]);
    assert_eq!(y.publish(&ky, &ry).unwrap(), Publish::Queued);

    // X's previous life left an own record at fp(7) in its store.
    let mut store = Store::open(dir.path().join("x.redb"), StoreConfig::default()).unwrap();
    let (kx, rx) = own_record("robot-x", fp(7), 3, &[0.4, -0.4]);
    store.put_own(&kx, &rx).unwrap();
    let (x, x_rx) = start(peer_config(px, &[py]), "robot-x").await;
    let (mut link, mut to_node) = FleetLink::start(store, Some((x, x_rx)), 64);
    link.refollow(vec![(model.clone(), fp(7))]);

    // The refollow query brings what Y learned meanwhile...
    recv_until(&mut to_node, |(k, r)| k == &ky && r.seq == ry.seq).await;
    assert_eq!(link.stats.refollowed.load(Ordering::Relaxed), 1);
    // ...and the subscription brings what Y learns next (anti-entropy is off here).
    let (ky2, ry2) = own_record("robot-y", fp(7), 5, &[0.5, -0.5]);
    assert!(ry2.seq > ry.seq);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Y republishes until the subscription, declared asynchronously, delivers.
        y.publish(&ky2, &ry2).unwrap();
        let got = timeout(Duration::from_millis(300), async {
            loop {
                let (k, r) = to_node.recv().await.expect("channel open");
                if k == ky2 && r.seq == ry2.seq {
                    return;
                }
            }
        })
        .await;
        if got.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restored address was not followed again"
        );
    }

    // Garbage on the fleet's key space is refused by X's exchange and shows in the
    // diagnostics the node publishes.
    let fleet = FleetName::new(FLEET).unwrap();
    let garbage_key = RecordKey {
        model: model.clone(),
        fingerprint: fp(7),
        source: SourceId::new("robot-g").unwrap(),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        y.session()
            .put(record_key(&fleet, &garbage_key), b"not a record".to_vec())
            .await
            .unwrap();
        let (values, refused) = link.port.diagnostics();
        if refused > 0 {
            let get = |k: &str| {
                values
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.parse::<u64>().unwrap())
                    .unwrap_or_else(|| panic!("{k} missing from {values:?}"))
            };
            assert!(get("fleet.rejected_decode") >= 1);
            assert!(get("fleet.accepted") >= 2);
            assert_eq!(get("link.refollowed"), 1);
            // The bounds' counters reach /diagnostics too (nothing exceeded them here).
            assert_eq!(get("fleet.digest_dropped"), 0);
            assert_eq!(get("fleet.served_evicted"), 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "garbage never counted: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link.shutdown().await;
    y.close().await.unwrap();
}

/// Stops a `qis-fleet` child with SIGINT (its graceful path) and waits, bounded.
async fn interrupt(mut child: Child) {
    let pid = child.id().expect("child running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = timeout(WAIT, child.wait())
        .await
        .expect("router exits in time")
        .expect("wait");
    assert!(status.success(), "router exit {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_a_volume_keeps_every_record_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("router.redb");
    let volume_arg = volume.to_str().unwrap();
    let pr = free_port();
    // This test's robots are unsigned (readable names): so is the storage.
    let args = [
        "router",
        "--unsigned",
        "--listen",
        &ep(pr),
        "--volume",
        volume_arg,
    ];
    let router = spawn_ready(&args).await;
    let client = |source: &'static str| start(router_client(pr), source);
    // Two robots, three addresses; then both go offline.
    let addresses = [fp(0x31), fp(0x32), fp(0x33)];
    let (a, _rx_a) = client("robot-a").await;
    let (b, _rx_b) = client("robot-b").await;
    let mut published = Vec::new();
    for (i, s) in addresses.iter().enumerate() {
        let (key, rec) = own_record("robot-a", *s, 4 + i as u32, &[1.0, 2.0]);
        a.publish(&key, &rec).unwrap();
        published.push((key, rec));
    }
    let (key, rec) = own_record("robot-b", addresses[0], 7, &[0.5, 0.5]);
    b.publish(&key, &rec).unwrap();
    published.push((key, rec));
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let (probe, _rx_p) = client("probe").await;
    query_until(&probe, &addresses[0], |g| g.len() == 2).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    // Only the router's storage answers now: wait until it holds every record.
    for s in &addresses {
        let want = published
            .iter()
            .filter(|(k, _)| k.fingerprint == *s)
            .count();
        query_until(&probe, s, |g| g.len() == want).await;
    }
    probe.close().await.unwrap();

    // Restart on the same volume and port: a robot that never met anyone gets them all.
    interrupt(router).await;
    let router = spawn_ready(&args).await;
    let (late, _rx_l) = client("robot-late").await;
    let mut got = Vec::new();
    for s in &addresses {
        let want = published
            .iter()
            .filter(|(k, _)| k.fingerprint == *s)
            .count();
        got.extend(query_until(&late, s, |g| g.len() >= want).await);
    }
    got.sort_by(|x, y| {
        (x.0.fingerprint, x.0.source.as_str()).cmp(&(y.0.fingerprint, y.0.source.as_str()))
    });
    published.sort_by(|x, y| {
        (x.0.fingerprint, x.0.source.as_str()).cmp(&(y.0.fingerprint, y.0.source.as_str()))
    });
    // As shared: outcome times rounded to the exchange's quantum.
    let published: Vec<_> = published
        .iter()
        .map(|(k, r)| (k.clone(), shared(r)))
        .collect();
    assert_eq!(
        got, published,
        "every record, byte for byte, after the restart"
    );
    late.close().await.unwrap();

    // Without the volume the same restart starts empty (the volume is what kept them).
    interrupt(router).await;
    let router = spawn_ready(&["router", "--unsigned", "--listen", &ep(pr)]).await;
    let (empty, _rx_e) = client("robot-empty").await;
    let model = ModelId::new(MODEL).unwrap();
    assert!(empty.query(&model, &addresses[0]).await.unwrap().is_empty());
    empty.close().await.unwrap();
    interrupt(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hears_its_lanes_once_the_fleet_outgrows_its_budget() {
    use qis_ros::fleet::lanes::{MAX_PREFIXES, fraction_for, lane_of, select};
    use qis_ros::fleet::{Admission, FleetRouter, RouterSettings, router::router_config};
    const SOURCES: usize = 30;
    const BUDGET: usize = 3;
    let pr = free_port();
    // This test's robots are unsigned (readable names): so is the storage.
    let unsigned = RouterSettings {
        admission: Admission::Unsigned,
        ..RouterSettings::default()
    };
    let router = FleetRouter::start(router_config(None, &[ep(pr)]).unwrap(), unsigned)
        .await
        .unwrap();
    let cfg = |budget: usize| FleetConfig {
        publish_interval_ms: 0,
        max_sources_per_address: budget,
        ..router_client(pr)
    };
    let model = ModelId::new(MODEL).unwrap();
    let (s, rare) = (fp(0x41), fp(0x42));
    let mut robots = Vec::new();
    for i in 0..SOURCES {
        let name = format!("robot-{i}");
        let (ex, rx) = start(cfg(16), &name).await;
        let (key, rec) = own_record(&name, s, 2, &[0.1, 0.1]);
        ex.publish(&key, &rec).unwrap();
        robots.push((name, ex, rx));
    }
    let (o, mut rx_o) = start(cfg(BUDGET), "observer").await;
    assert_eq!(
        o.stats().declarations,
        2,
        "one queryable, one wide subscription"
    );
    // Wide: the first query of s brings every source (the storage holds them all).
    let got = query_until(&o, &s, |g| g.len() == SOURCES).await;
    assert_eq!(got.len(), SOURCES);
    // Following now narrows to the lanes of about BUDGET sources.
    o.follow(&model, &s).await.unwrap();
    let st = o.stats();
    assert_eq!(st.lane_changes, 1);
    let me = SourceId::new("observer").unwrap();
    let chosen = select(&me, fraction_for(SOURCES, BUDGET), MAX_PREFIXES);
    assert_eq!(o.lane_view().prefixes(), chosen);
    assert_eq!(st.lane_prefixes, chosen.len() as u64);
    assert_eq!(st.declarations, chosen.len() as u64 + 1);
    let view = o.lane_view();
    let heard: Vec<&String> = robots
        .iter()
        .map(|(n, _, _)| n)
        .filter(|n| view.selects(&SourceId::new(n.as_str()).unwrap()))
        .collect();
    assert!(
        heard.len() < SOURCES / 2,
        "{} of {SOURCES} selected",
        heard.len()
    );

    // Everyone publishes a new version: only the selected sources reach the observer live.
    let served_before: Vec<u64> = robots
        .iter()
        .map(|(_, ex, _)| ex.stats().bytes_out)
        .collect();
    for (name, ex, _) in &robots {
        let (key, rec) = own_record(name, s, 3, &[0.1, 0.1]);
        ex.publish(&key, &rec).unwrap();
    }
    let mut live = std::collections::HashSet::new();
    while live.len() < heard.len() {
        let (k, r) = timeout(WAIT, rx_o.recv())
            .await
            .expect("live record")
            .unwrap();
        assert_eq!(r.seq, Seq(3));
        assert!(
            view.selects(&k.source),
            "{} is not in the observer's lanes",
            k.source
        );
        live.insert(k.source.to_string());
    }
    // A record put under a lane the observer hears, but not its source's lane, is
    // refused and counted (it would otherwise win a place in the observer's fan-in).
    if let Some(name) = heard.first() {
        let fleet = FleetName::new(FLEET).unwrap();
        let (key, rec) = own_record("robot-x", s, 9, &[0.1, 0.1]);
        let heard_key = record_key(
            &fleet,
            &RecordKey {
                source: SourceId::new(name.as_str()).unwrap(),
                ..key.clone()
            },
        );
        let mut chunks: Vec<String> = record_key(&fleet, &key)
            .split('/')
            .map(str::to_owned)
            .collect();
        for (i, c) in heard_key.split('/').skip(3).take(12).enumerate() {
            chunks[3 + i] = c.to_owned();
        }
        let forged = chunks.join("/");
        assert_ne!(
            lane_of(&key.source),
            lane_of(&SourceId::new(name.as_str()).unwrap())
        );
        let before = o.stats().rejected_lane;
        let raw = robots[0].1.session().clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        while o.stats().rejected_lane == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "wrong-lane put never refused"
            );
            raw.put(&forged, seal(&rec, &forged, None).unwrap())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A query of s now reaches only the sessions of the observer's lanes (and the
    // storage): the robots outside them served nothing.
    let got = o.query(&model, &s).await.unwrap();
    assert!(got.len() >= heard.len().min(BUDGET));
    // These fixed names put at least BUDGET sources in the observer's lanes.
    assert!(heard.len() >= BUDGET, "{} heard", heard.len());
    {
        assert_eq!(o.stats().widened_queries, 0);
        for ((name, ex, _), before) in robots.iter().zip(&served_before) {
            let served = ex.stats().bytes_out - before;
            let (_, rec) = own_record(name, s, 3, &[0.1, 0.1]);
            let put = rec.encode().unwrap().len() as u64;
            if view.selects(&SourceId::new(name.as_str()).unwrap()) {
                assert!(served > put, "{name} in the lanes answered the query");
            } else {
                // Outside the lanes: only its own put of seq 3 went out, no query reply.
                assert_eq!(served, put, "{name} outside the lanes answered a query");
            }
        }
    }
    // A rare address met only by one robot outside the observer's lanes but inside the
    // widened ones (4 x its share): the query widens once and finds it.
    let f = fraction_for(SOURCES, BUDGET);
    let widened = qis_ros::fleet::lanes::LaneSet::of(&select(&me, 4.0 * f, MAX_PREFIXES));
    let in_widened = |n: &str| widened.contains(lane_of(&SourceId::new(n).unwrap()));
    let outsider = robots
        .iter()
        .find(|(n, _, _)| !view.selects(&SourceId::new(n.as_str()).unwrap()) && in_widened(n))
        .expect("a robot in the widened lanes only");
    let (key, rec) = own_record(&outsider.0, rare, 2, &[0.3, 0.3]);
    outsider.1.publish(&key, &rec).unwrap();
    let got = query_until(&o, &rare, |g| !g.is_empty()).await;
    assert_eq!(got[0].0.source.as_str(), outsider.0);
    assert!(o.stats().widened_queries > 0);
    // One met only by a robot beyond the widened lanes is not asked for: the query
    // stays within about 4 budgets' worth of sessions (and the storage's same lanes).
    let far = robots
        .iter()
        .find(|(n, _, _)| !in_widened(n))
        .expect("a robot beyond the widened lanes");
    let remote = fp(0x43);
    let (key, rec) = own_record(&far.0, remote, 2, &[0.3, 0.3]);
    far.1.publish(&key, &rec).unwrap();
    // Wait until the storage holds it (a wide query from another robot sees it).
    let other = robots
        .iter()
        .find(|(n, _, _)| *n != far.0)
        .expect("another robot");
    query_until(&other.1, &remote, |g| !g.is_empty()).await;
    let served = far.1.stats().bytes_out;
    assert!(o.query(&model, &remote).await.unwrap().is_empty());
    assert_eq!(
        far.1.stats().bytes_out,
        served,
        "the far robot was not asked"
    );

    o.close().await.unwrap();
    for (_, ex, _) in robots {
        ex.close().await.unwrap();
    }
    router.close().await.unwrap();
}

/// The router's storage against a hostile peer: forged, unsigned, garbage, oversized,
/// wrong-lane and replayed records and deletes at an honest robot's key, then a flood of
/// 200 self-certified Sybil ids and one source writing 100 addresses. The storage stays
/// within its bounds, counts each refusal, and a late joiner still gets the honest
/// record exactly as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_storage_keeps_honest_records_within_its_bounds_under_attack() {
    use qis_ros::fleet::storage::StorageLimits;
    use qis_ros::fleet::{FleetRouter, RouterSettings, router::router_config};
    const MAX: usize = 60;
    const PER_SOURCE: usize = 20;
    let pr = free_port();
    let settings = RouterSettings {
        limits: StorageLimits {
            max_records: MAX,
            max_records_per_source: PER_SOURCE,
            ..StorageLimits::default()
        },
        ..RouterSettings::default()
    };
    let router = FleetRouter::start(router_config(None, &[ep(pr)]).unwrap(), settings)
        .await
        .unwrap();
    let s = fp(0x5c);
    let ka = SigningKey::from_bytes(&[0x5a; 32]);
    let a_id = source_id_of(&ka.verifying_key());
    let (a, _rx_a) = start_as(router_client(pr), Identity::signed(ka.clone())).await;
    let (key, rec) = own_record(a_id.as_str(), s, 6, &[0.3, -0.1]);
    a.publish(&key, &rec).unwrap();
    a.flush().await.unwrap();
    router_stats_until(&router, "A's record stored", |st| st.stored == 1).await;
    a.close().await.unwrap();

    let mut raw_cfg = zenoh::Config::from_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zenoh-client.json5"),
    )
    .unwrap();
    raw_cfg
        .insert_json5("connect/endpoints", &format!("[\"{}\"]", ep(pr)))
        .unwrap();
    let raw = zenoh::open(raw_cfg).await.unwrap();
    let fleet = FleetName::new(FLEET).unwrap();
    let ke_a = record_key(&fleet, &key);
    let forger = SigningKey::from_bytes(&[0x66; 32]);
    let (_, newer) = own_record(a_id.as_str(), s, 50, &[9.0, 9.0]);
    let wrong_lane = {
        let mut chunks: Vec<String> = ke_a.split('/').map(str::to_owned).collect();
        chunks[14] = if chunks[14] == "0" { "1" } else { "0" }.to_owned();
        chunks.join("/")
    };
    put_blocking(&raw, &ke_a, seal(&newer, &ke_a, Some(&forger)).unwrap()).await;
    put_blocking(&raw, &ke_a, seal(&newer, &ke_a, None).unwrap()).await;
    put_blocking(&raw, &ke_a, vec![1u8, 2, 3]).await;
    put_blocking(&raw, &ke_a, vec![0u8; 70 * 1024]).await;
    put_blocking(
        &raw,
        &wrong_lane,
        seal(&newer, &wrong_lane, Some(&ka)).unwrap(),
    )
    .await;
    // A's own published version again, and an older one, correctly signed: replays.
    let (_, older) = own_record(a_id.as_str(), s, 3, &[0.3, -0.1]);
    put_blocking(&raw, &ke_a, seal(&older, &ke_a, Some(&ka)).unwrap()).await;
    raw.delete(&ke_a)
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
    let hostile = router_stats_until(&router, "every hostile sample counted", |st| {
        st.refused_record >= 3
            && st.refused_size >= 1
            && st.refused_key >= 1
            && st.refused_stale >= 1
            && st.deletes_ignored >= 1
    })
    .await;
    assert_eq!((hostile.records, hostile.replaced), (1, 0), "{hostile:?}");

    // The flood: 200 Sybil ids with one record each, one source with 100 addresses.
    let mut flood = 0u64;
    for i in 0..200u32 {
        let k = SigningKey::from_bytes(&[
            (i % 251) as u8,
            (i / 251) as u8,
            0x77,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            15,
            16,
            17,
            18,
            19,
            20,
            21,
            22,
            23,
            24,
            25,
            26,
            27,
            28,
            29,
        ]);
        let id = source_id_of(&k.verifying_key());
        let (sk, srec) = own_record(id.as_str(), fp(0x90), 1, &[5.0, 5.0]);
        let ke = record_key(&fleet, &sk);
        put_blocking(&raw, &ke, seal(&srec, &ke, Some(&k)).unwrap()).await;
        flood += 1;
    }
    let big = SigningKey::from_bytes(&[0x99; 32]);
    let big_id = source_id_of(&big.verifying_key());
    for f in 0..100u8 {
        // Addresses of their own, none the test reads.
        let mut at = [0xbb; 16];
        at[0] = f;
        let (bk, brec) = own_record(big_id.as_str(), Fingerprint(at), 1, &[5.0, 5.0]);
        let ke = record_key(&fleet, &bk);
        put_blocking(&raw, &ke, seal(&brec, &ke, Some(&big)).unwrap()).await;
        flood += 1;
    }
    let st = router_stats_until(&router, "the flood is taken in", |st| {
        st.stored >= 1 + flood - 5
    })
    .await;
    assert!(st.records as usize <= MAX, "{st:?}");
    assert!(st.evicted > 0, "{st:?}");
    raw.close().await.unwrap();

    // A late joiner gets A's record exactly as published.
    let (c, _rx_c) = start_as(router_client(pr), Identity::generate()).await;
    let got = query_until(&c, &s, |g| !g.is_empty()).await;
    assert_eq!(got, vec![(key, shared(&rec))]);
    c.close().await.unwrap();
    let st = router.stats();
    println!("router storage under attack: {st:?}");
    router.close().await.unwrap();
}

/// Polls the router's counters until `pred` holds, bounded by WAIT.
async fn router_stats_until(
    router: &qis_ros::fleet::FleetRouter,
    what: &str,
    pred: impl Fn(&qis_ros::fleet::RouterStatsSnapshot) -> bool,
) -> qis_ros::fleet::RouterStatsSnapshot {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = router.stats();
        if pred(&st) {
            return st;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A put that waits for room instead of being dropped under congestion (Zenoh's default
/// for puts), so every hostile sample of the router test reaches the router.
async fn put_blocking(session: &zenoh::Session, key: &str, payload: Vec<u8>) {
    session
        .put(key, payload)
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
}
