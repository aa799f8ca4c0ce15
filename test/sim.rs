//! The fleet simulator, small and seeded: qis must beat the raw world model and local-only
//! learning where the fleet has seen a class before, runs must be reproducible, memory
//! must respect its bound and a poisoning minority must not undo the correction.

use qis_ros::sim::baselines::{FLOOR, LEARNER, LOCAL, ORACLE, QIS, RAW};
use qis_ros::sim::{AttackMode, SimConfig, SimReport, WorldKind, run};

/// A small fleet with the node's shipped defaults. Honest records on the bus go unsigned
/// (in memory) to keep debug runs short: signatures change no figure (every honest record
/// verifies), forged and Sybil records are sealed and opened either way, and the bus's
/// unit tests cover the signed path.
fn small(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        robots: 40,
        episodes: 80,
        sign_records: false,
        ..SimConfig::default()
    }
}

/// The same fleet sharing every record (privacy budget k = 1) with k0 = 1, for the tests
/// of the loop's mechanics (records cross, reach nodes, correct first encounters): with
/// k = 5 a robot shares an address only after 5 own outcomes there, which in 80 rounds
/// over ~2,000 classes happens for a handful of classes, and k0 = 5 shrinks a small
/// fleet's few outcomes hard (docs/BENCHMARKS.md, "What changed in the clean figures").
fn sharing(seed: u64) -> SimConfig {
    let mut config = small(seed);
    config.node.min_count_to_share = 1;
    config.node.synthesis.prior_strength = qis_ros::sim::SIM_PRIOR_STRENGTH;
    config
}

fn simulate(config: &SimConfig) -> SimReport {
    run(config, &mut |_| {}).expect("simulation runs")
}

#[test]
fn qis_beats_raw_and_local_only_on_first_encounters() {
    let r = simulate(&sharing(11));
    assert!(
        r.first_encounters > 50,
        "few first encounters: {}",
        r.first_encounters
    );
    let b = &r.baselines;
    let first = |i: usize| b[i].rmse_first_encounter;
    assert!(
        first(QIS) < 0.6 * first(RAW),
        "qis {} vs raw {} on first encounters",
        first(QIS),
        first(RAW)
    );
    assert!(
        first(QIS) < 0.6 * first(LOCAL),
        "qis {} vs local {}",
        first(QIS),
        first(LOCAL)
    );
    // Local-only has nothing on a first encounter: it is the raw model there.
    assert!((first(LOCAL) - first(RAW)).abs() < 1e-12);
    assert!(b[QIS].rmse_after_warmup < 0.6 * b[RAW].rmse_after_warmup);
    assert!(b[QIS].rmse_after_warmup < b[LOCAL].rmse_after_warmup);
    assert!(b[ORACLE].rmse_after_warmup < b[RAW].rmse_after_warmup);
    assert!(r.wire_per_robot.published_records > 0.0);
    assert!(r.wire_per_robot.received_bytes > 0.0);
    assert_eq!(r.wire_per_robot.dropped, 0);
}

/// No copy of the loop: every simulated robot is the node's `NodeLogic`, with the node's
/// shipped parameters unless a test changes them.
#[test]
fn every_simulated_robot_runs_the_node_with_its_shipped_parameters() {
    let config = small(5);
    assert!(config.shipped_defaults());
    let r = simulate(&config);
    assert_eq!(r.paths.node_logic, config.robots);
    assert_eq!(r.paths.qis_node_over_ros, 0);
    assert!(
        r.table().contains("the node's shipped defaults"),
        "{}",
        r.table()
    );
    assert!(!sharing(5).shipped_defaults());
}

#[test]
fn the_same_seed_gives_the_same_figures() {
    let a = simulate(&small(5));
    let b = simulate(&small(5));
    assert_eq!(a.baselines, b.baselines);
    assert_eq!(a.targets, b.targets);
    assert_eq!(a.wire_per_robot, b.wire_per_robot);
    assert_eq!(a.memory, b.memory);
    assert_eq!(a.episodes, b.episodes);
    let c = simulate(&small(6));
    assert_ne!(
        a.baselines, c.baselines,
        "another seed gives other episodes"
    );
}

#[test]
fn the_privacy_budget_withholds_addresses_with_fewer_than_k_outcomes() {
    let budget = simulate(&small(11));
    let every = simulate(&sharing(11));
    assert!(
        budget.wire_per_robot.published_records * 4.0 < every.wire_per_robot.published_records,
        "k = 5 shares far less: {} vs {} records per robot",
        budget.wire_per_robot.published_records,
        every.wire_per_robot.published_records
    );
    assert!(budget.wire_per_robot.published_records > 0.0);
}

#[test]
fn memory_per_node_respects_its_bound() {
    let mut config = sharing(3);
    config.node.memory.max_received_records = 10;
    let r = simulate(&config);
    assert!(r.memory.robots > 0);
    assert!(r.memory.max_received_records <= 10, "{:?}", r.memory);
    let unbounded = simulate(&sharing(3));
    assert!(
        unbounded.memory.max_received_records > 10,
        "{:?}",
        unbounded.memory
    );
}

#[test]
fn poisoned_records_are_measured_against_the_same_episodes_without_attack() {
    // With no plausibility gate at all (neither learned nor configured) and no trust
    // earned from outcomes, a huge bias reaches the honest robots. (With trust alone it
    // no longer does: young claims are judged against the neighbors' prior.) The
    // attackers keep the privacy budget: records below it are refused by every node
    // whatever they claim.
    let mut config = SimConfig {
        attackers: 0.15,
        attack: AttackMode::Bias,
        attackers_keep_budget: true,
        ..small(9)
    };
    config.node.validation.envelope_margin = 0.0;
    config.node.trust.tolerance = 0.0;
    let r = simulate(&config);
    let a = r.attack.expect("attack figures are reported");
    assert!(a.attackers > 0);
    // The robots drawn as attackers are left out of the figures in both runs, so the raw
    // model is scored on exactly the same episodes with and without the attack.
    assert_eq!(a.raw_rmse, a.raw_rmse_clean);
    assert_eq!(a.raw_rmse, r.baselines[RAW].rmse_after_warmup);
    assert!(
        a.qis_rmse_attacked > a.qis_rmse_clean,
        "poison must reach the honest robots: {} vs {}",
        a.qis_rmse_attacked,
        a.qis_rmse_clean
    );
    assert!(a.qis_rmse_clean < a.raw_rmse);
    assert!(r.synthesis.max_residual.is_empty());
    assert!(r.synthesis.learned_gate.is_empty(), "margin 0: no gate");
}

/// 20 % attackers with the node's shipped defaults (learned gate, earned trust, young
/// cap, privacy budget, admission check), in every attack mode: the corrected prior stays
/// within 1.2 x the clean run's on the same episodes. The 600-robot figures against the
/// 1.1 target are in docs/BENCHMARKS.md (there the target is NOT met).
#[test]
fn shipped_defaults_contain_twenty_percent_attackers_in_every_mode() {
    for mode in [
        AttackMode::Bias,
        AttackMode::Sybil,
        AttackMode::Hijack,
        AttackMode::All,
    ] {
        let config = SimConfig {
            attackers: 0.2,
            attack: mode,
            ..small(9)
        };
        assert_eq!(config.plausibility_margin, 0.0, "no ground-truth gate");
        let r = simulate(&config);
        assert!(r.synthesis.max_residual.is_empty());
        assert_eq!(
            r.synthesis.learned_gate.len(),
            4,
            "every robot learns a gate"
        );
        let a = r.attack.expect("attack figures are reported");
        let n = a.counts;
        eprintln!(
            "{}: {:.3} -> {:.3} ({:.3}); {:?}; trust {:?}",
            mode.name(),
            a.qis_rmse_clean,
            a.qis_rmse_attacked,
            a.attacked_over_clean.measured,
            n,
            a.trust_curve.last()
        );
        assert!(
            a.qis_rmse_attacked <= 1.2 * a.qis_rmse_clean,
            "{}: {} -> {}",
            mode.name(),
            a.qis_rmse_clean,
            a.qis_rmse_attacked
        );
        assert!(n.poisoned_records > 0);
        if mode.sybil() {
            assert!(
                n.sybil_identities > 5 * a.attackers as u64,
                "a fresh id every 5 rounds: {n:?}"
            );
        }
        if mode.hijack() {
            assert!(n.forged_records > 0, "{n:?}");
            assert!(
                n.refused_by_admission > 0,
                "forgeries reached nobody: {n:?}"
            );
        } else {
            assert_eq!((n.forged_records, n.refused_by_admission), (0, 0));
        }
        let last = a.trust_curve[a.trust_curve.len() - 1];
        if mode.sybil() {
            // A fresh identity is never earned: it stays at (or below) the initial weight.
            assert!(last.attackers <= 0.1 + 1e-9, "{:?}", a.trust_curve);
        } else {
            // Caught lying where the robots have outcomes: far below honest sources.
            assert!(last.attackers < 0.5 * last.honest, "{:?}", a.trust_curve);
        }
    }
    // The guard has teeth: with the gate and trust off, the bias multiplies the error
    // (x 1.79 measured since the bus hears the product's lanes: each robot listens to
    // about 16 sources, fewer of the attackers' records reach it than with 16 sources
    // per address; x > 2 before).
    let mut off = SimConfig {
        attackers: 0.2,
        attack: AttackMode::Bias,
        ..small(9)
    };
    off.node.trust.tolerance = 0.0;
    off.node.validation.envelope_margin = 0.0;
    let a = simulate(&off).attack.expect("attack figures are reported");
    assert!(
        a.qis_rmse_attacked > 1.5 * a.qis_rmse_clean,
        "undefended: {} -> {}",
        a.qis_rmse_clean,
        a.qis_rmse_attacked
    );
}

/// The ground-truth gate survives only as an explicit experiment.
#[test]
fn the_ground_truth_gate_is_an_explicit_experiment() {
    let r = simulate(&SimConfig {
        plausibility_margin: 1.5,
        attackers: 0.15,
        attack: AttackMode::Bias,
        ..small(9)
    });
    assert_eq!(r.synthesis.max_residual.len(), 4);
    assert!(r.synthesis.learned_gate.is_empty());
    assert!(r.table().contains("EXPERIMENT"), "{}", r.table());
}

#[test]
fn neighbors_help_classes_nobody_has_seen() {
    let mut config = sharing(11);
    config.node.neighbors_k = 0;
    let exact = simulate(&config);
    config.node.neighbors_k = 4;
    config.node.synthesis.min_support = 1.0;
    let near = simulate(&config);
    let (a, b) = (&exact.baselines[QIS], &near.baselines[QIS]);
    assert!(
        b.rmse_all < 0.9 * a.rmse_all,
        "borrowing for unseen classes: {} vs exact only {}",
        b.rmse_all,
        a.rmse_all
    );
    // Where the fleet has seen the class, neighbors only give the prior that its exact
    // outcomes update (and only while their decayed support is below min_support):
    // borrowing must not make those first encounters worse.
    assert!(
        b.rmse_first_encounter <= 1.02 * a.rmse_first_encounter,
        "first encounters: {} with neighbors vs {} without",
        b.rmse_first_encounter,
        a.rmse_first_encounter
    );
    assert!(b.rmse_after_warmup <= 1.02 * a.rmse_after_warmup);
}

#[test]
fn bad_settings_are_refused_by_name() {
    let e = run(
        &SimConfig {
            robots: 0,
            ..SimConfig::default()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("robots"), "{e}");
    let e = run(
        &SimConfig {
            attackers: 1.5,
            ..SimConfig::default()
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("attackers"), "{e}");
}

/// The same loop over real Zenoh: one client session per robot, an in-process router on
/// 127.0.0.1 (a free port), every wait bounded by the network's timeouts.
#[test]
fn over_real_zenoh_records_cross_the_wire_and_qis_beats_raw() {
    let config = SimConfig {
        seed: 11,
        robots: 12,
        episodes: 60,
        zenoh_robots: 12,
        ..sharing(11)
    };
    let r = simulate(&config);
    let p = r.propagation.expect("zenoh measures propagation");
    assert_eq!(p.network, "zenoh");
    assert_eq!(p.sessions, 12);
    assert!(p.samples > 0, "no live delivery measured: {p:?}");
    // Live delivery on a loaded 2-core machine may miss a sample within a round's 2 s
    // settle bound (the next query or record version heals it); nearly all must arrive.
    assert!(p.delivered * 100 >= p.expected_deliveries * 98, "{p:?}");
    assert_eq!(p.unmatched, 0, "{p:?}");
    assert!(p.p50_ms <= p.p99_ms && p.p99_ms <= p.max_ms, "{p:?}");
    assert!(r.wire_per_robot.published_records > 0.0);
    assert!(r.wire_per_robot.received_records > 0.0);
    assert!(r.wire_per_robot.received_bytes > 0.0);
    assert_eq!(r.wire_per_robot.dropped, 0);
    assert!(r.first_encounters > 20, "{}", r.first_encounters);
    let b = &r.baselines;
    assert!(
        b[QIS].rmse_first_encounter < 0.6 * b[RAW].rmse_first_encounter,
        "qis {} vs raw {} on first encounters",
        b[QIS].rmse_first_encounter,
        b[RAW].rmse_first_encounter
    );
    // Records that crossed Zenoh, not local ones, made the difference: local-only is raw
    // on a first encounter.
    assert!((b[LOCAL].rmse_first_encounter - b[RAW].rmse_first_encounter).abs() < 1e-12);
}

/// Part of the fleet on Zenoh, the rest on the bus (what `qis sim` runs by default):
/// records cross Zenoh between the Zenoh robots and the correction holds fleet-wide.
#[test]
fn a_mixed_fleet_shares_records_across_zenoh_and_the_bus() {
    let config = SimConfig {
        zenoh_robots: 8,
        ..sharing(13)
    };
    let r = simulate(&config);
    let p = r.propagation.expect("zenoh measures propagation");
    assert_eq!(p.sessions, 8);
    assert!(
        p.samples > 0 && p.delivered * 100 >= p.expected_deliveries * 98,
        "{p:?}"
    );
    assert!(r.storage_records > 0, "bus robots stored records");
    let b = &r.baselines;
    assert!(b[QIS].rmse_first_encounter < 0.6 * b[RAW].rmse_first_encounter);
    assert!(b[QIS].rmse_after_warmup < b[LOCAL].rmse_after_warmup);
}

/// Robots whose loop runs through real `qis_node` instances over ROS 2 topics (in-process
/// nodes, a Zenoh router on 127.0.0.1): the fleet's records reach each node through its
/// fleet port, so the node's corrected prior beats the raw model on the node robot's first
/// encounters of classes other robots have seen; the node's own records reach the fleet.
#[test]
fn node_robots_get_the_fleets_records_through_their_fleet_port() {
    let config = SimConfig {
        ros_robots: 2,
        zenoh_robots: 4,
        ..sharing(11)
    };
    let r = simulate(&config);
    let n = r.ros.expect("node robots are reported");
    assert_eq!(n.robots, 2);
    assert_eq!(r.paths.qis_node_over_ros, 2);
    assert_eq!(r.paths.node_logic, config.robots - 2);
    assert_eq!(
        n.episodes,
        2 * 80,
        "every episode of both robots went through a node"
    );
    assert!(n.fetches > 0, "{n:?}");
    assert!(n.records_fed > 0, "{n:?}");
    assert!(n.records_published > 0, "{n:?}");
    assert!(n.first_encounters >= 5, "{n:?}");
    // Local-only learning has nothing on a first encounter: only records that came
    // through the fleet port can correct it.
    assert!(
        n.qis_rmse_first_encounter < 0.6 * n.raw_rmse_first_encounter,
        "node {} vs raw {} on first encounters",
        n.qis_rmse_first_encounter,
        n.raw_rmse_first_encounter
    );
    assert!(
        n.qis_rmse_after_warmup < 0.6 * n.raw_rmse_after_warmup,
        "{n:?}"
    );
    assert!(n.round_trip_p50_ms <= n.round_trip_p99_ms, "{n:?}");
    let b = &r.baselines;
    assert!(b[QIS].rmse_first_encounter < 0.6 * b[RAW].rmse_first_encounter);
}

/// A small fixed-seed run of `world` with the node's shipped defaults (only the world's
/// bins declared), unsigned bus records as in [`small`].
fn zoo_small(world: WorldKind, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        robots: 40,
        episodes: 80,
        sign_records: false,
        ..SimConfig::for_world(world)
    }
}

/// The figures a zoo test guards, printed so a failure shows them all.
fn zoo_figures(r: &SimReport) -> [f64; 5] {
    let b = &r.baselines;
    let w = |i: usize| b[i].rmse_after_warmup;
    let f = [
        w(QIS) / w(RAW),
        w(QIS) / w(ORACLE),
        w(QIS) / w(FLOOR),
        w(QIS) / w(LEARNER),
        w(FLOOR) / w(RAW),
    ];
    eprintln!(
        "{}: qis/raw {:.3} qis/oracle {:.3} qis/floor {:.3} qis/learner {:.3} floor/raw {:.3}",
        r.world.name, f[0], f[1], f[2], f[3], f[4]
    );
    f
}

/// One world of the zoo, small and seeded, with the node's shipped defaults: qis beats
/// the raw model by the margin measured on this run, stays within the measured multiple
/// of the central oracle, neighbors on is not worse than off by more than 2 %, and the
/// floor and the learner (simulator-side baselines) beat raw. The bounds are this run's
/// measured figures plus a margin (docs/BENCHMARKS.md has the full runs and the gaps to
/// the targets: qis <= 1.2 x oracle and qis < 0.5 x raw do not hold on every
/// world with the shipped defaults).
fn guard_world(world: WorldKind, max_over_raw: f64, max_over_oracle: f64) -> SimReport {
    let config = zoo_small(world, 21);
    assert!(config.shipped_defaults(), "only the world's bins declared");
    assert_eq!(config.plausibility_margin, 0.0, "no gate from ground truth");
    let on = simulate(&config);
    assert_eq!(on.world.name, world.name());
    let f = zoo_figures(&on);
    assert!(f[0] < max_over_raw, "{}: qis/raw {:.3}", world.name(), f[0]);
    assert!(
        f[1] <= max_over_oracle,
        "{}: qis/oracle {:.3}",
        world.name(),
        f[1]
    );
    let b = &on.baselines;
    assert!(b[FLOOR].rmse_after_warmup < b[RAW].rmse_after_warmup);
    assert!(b[LEARNER].rmse_after_warmup < b[RAW].rmse_after_warmup);
    let mut off = config.clone();
    off.node.neighbors_k = 0;
    let off = simulate(&off);
    let ratio = b[QIS].rmse_after_warmup / off.baselines[QIS].rmse_after_warmup;
    assert!(
        ratio <= 1.02,
        "{}: neighbors on/off {ratio:.3}",
        world.name()
    );
    on
}

/// Measured on this run: qis/raw 0.604, qis/oracle 1.217, neighbors on/off 0.651.
#[test]
fn zoo_braking_holds_its_figures() {
    let r = guard_world(WorldKind::Braking, 0.7, 1.35);
    assert!(r.recovery.is_none(), "no change in mid-run");
}

/// rapier3d physics. Measured: qis/raw 0.971, qis/oracle 1.163, on/off 0.978; the floor
/// is 0.74 x raw (a fall near the edge is a coin flip), so qis < 0.5 x raw cannot hold.
#[test]
fn zoo_plate_holds_its_figures() {
    guard_world(WorldKind::Plate, 1.0, 1.3);
}

/// Measured: qis/raw 0.950, qis/oracle 1.038, on/off 0.953; floor 0.72 x raw.
#[test]
fn zoo_gripper_holds_its_figures() {
    let r = guard_world(WorldKind::Gripper, 1.0, 1.15);
    let rec = r
        .recovery
        .as_ref()
        .expect("model v2 in mid-run is reported");
    assert!(rec.episodes > 0, "v2 episodes were scored after the change");
    assert_eq!(r.world.models.len(), 2);
}

/// Measured: qis/raw 0.709, qis/oracle 0.744 (each robot's own records learn its tires,
/// which the oracle's per-class pool cannot), on/off 0.720; floor 0.85 x raw.
#[test]
fn zoo_dock_holds_its_figures() {
    let r = guard_world(WorldKind::Dock, 0.8, 0.85);
    let rec = r.recovery.as_ref().expect("the wet floor is reported");
    assert!(rec.episodes > 0);
    // Robots that differ: the per-class floor cannot remove a per-robot offset, qis can.
    assert!(r.qis_over(FLOOR) < 1.0, "{}", r.qis_over(FLOOR));
}
