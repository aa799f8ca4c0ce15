//! `qis sim --world all`: every world of the zoo with the node's shipped defaults (only
//! each world's bins declared), twice (neighbors as configured, and off), on the
//! in-process bus, and one summary table.

use std::fmt::Write as _;

use serde::Serialize;

use super::baselines::{FLOOR, LEARNER, ORACLE, QIS, RAW};
use super::cli::{SimArgs, create_out, progress_bar};
use super::recovery::RecoveryFigures;
use super::{SimConfig, SimError, SimReport, WorldKind};

/// One world's line of the summary table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZooRow {
    /// The world.
    pub world: String,
    /// Robots and rounds.
    pub robots: usize,
    /// Rounds.
    pub rounds: usize,
    /// qis ÷ raw after warm-up.
    pub qis_over_raw: f64,
    /// qis ÷ central oracle after warm-up.
    pub qis_over_oracle: f64,
    /// qis ÷ clairvoyant floor after warm-up.
    pub qis_over_floor: f64,
    /// qis ÷ central learner after warm-up.
    pub qis_over_learner: f64,
    /// The floor ÷ raw (how much a per-class correction can gain at all).
    pub floor_over_raw: f64,
    /// The oracle ÷ raw.
    pub oracle_over_raw: f64,
    /// The learner ÷ raw.
    pub learner_over_raw: f64,
    /// qis ÷ raw on first encounters of a class the fleet had met.
    pub first_encounter_over_raw: f64,
    /// qis after warm-up with neighbors ÷ without (≤ 1.02 is the target).
    pub neighbors_on_over_off: f64,
    /// Outcomes per address until qis stays within 1.5 × the floor after the world's
    /// change (`None`: no change, or never within the run).
    pub recovery_outcomes: Option<usize>,
    /// Whether the world has a change in mid-run.
    pub has_change: bool,
    /// Wall time of the two runs (s).
    pub wall_s: f64,
}

impl ZooRow {
    /// The row of a world from its run with neighbors (`on`) and without (`off`).
    pub fn new(on: &SimReport, off: &SimReport) -> ZooRow {
        let b = &on.baselines;
        let over = |p: usize| b[p].rmse_after_warmup / b[RAW].rmse_after_warmup;
        ZooRow {
            world: on.world.name.clone(),
            robots: on.config.robots,
            rounds: on.config.episodes,
            qis_over_raw: over(QIS),
            qis_over_oracle: on.qis_over(ORACLE),
            qis_over_floor: on.qis_over(FLOOR),
            qis_over_learner: on.qis_over(LEARNER),
            floor_over_raw: over(FLOOR),
            oracle_over_raw: over(ORACLE),
            learner_over_raw: over(LEARNER),
            first_encounter_over_raw: b[QIS].rmse_first_encounter / b[RAW].rmse_first_encounter,
            neighbors_on_over_off: b[QIS].rmse_after_warmup / off.baselines[QIS].rmse_after_warmup,
            recovery_outcomes: on
                .recovery
                .as_ref()
                .and_then(|r: &RecoveryFigures| r.outcomes_to_recover[QIS]),
            has_change: on.recovery.is_some(),
            wall_s: on.process.wall_s + off.process.wall_s,
        }
    }
}

/// Runs `world` with `config`'s settings, neighbors as configured and off.
pub fn run_world(config: &SimConfig) -> Result<(SimReport, SimReport, ZooRow), SimError> {
    let bar = progress_bar(config.episodes * 2);
    let on = super::run(config, &mut |r| bar.set_position(r as u64))?;
    let mut off_config = config.clone();
    off_config.node.neighbors_k = 0;
    let off = super::run(&off_config, &mut |r| {
        bar.set_position((config.episodes + r) as u64)
    })?;
    bar.finish_and_clear();
    let row = ZooRow::new(&on, &off);
    Ok((on, off, row))
}

/// The summary table of the zoo.
pub fn table(rows: &[ZooRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>8} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>7}",
        "world",
        "robots",
        "qis/raw",
        "qis/orcl",
        "qis/flr",
        "qis/lrnr",
        "flr/raw",
        "orcl/raw",
        "lrnr/raw",
        "1st/raw",
        "nbr on/off",
        "recovery",
        "wall s"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<8} {:>9} {:>8.3} {:>9.3} {:>8.3} {:>10.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11.3} {:>9} {:>7.1}",
            r.world,
            format!("{}x{}", r.robots, r.rounds),
            r.qis_over_raw,
            r.qis_over_oracle,
            r.qis_over_floor,
            r.qis_over_learner,
            r.floor_over_raw,
            r.oracle_over_raw,
            r.learner_over_raw,
            r.first_encounter_over_raw,
            r.neighbors_on_over_off,
            match (r.has_change, r.recovery_outcomes) {
                (false, _) => "-".to_owned(),
                (true, Some(n)) => n.to_string(),
                (true, None) => "never".to_owned(),
            },
            r.wall_s
        );
    }
    let _ = writeln!(
        s,
        "\nqis/raw, qis/orcl (oracle), qis/flr (clairvoyant floor), qis/lrnr (central k-NN learner): RMSE after warm-up; 1st/raw: first encounters of a class the fleet had met; nbr on/off: qis with neighbors (node default) / without; recovery: outcomes per address until qis stays within 1.5 x the floor after the world's mid-run change"
    );
    let _ = writeln!(
        s,
        "targets: qis/raw <= 0.2 (or qis/flr <= 1.25 where flr/raw > 0.2); qis/orcl <= 1.1; 1st/raw <= 0.3; nbr on/off <= 1.02; recovery <= 20; qis/lrnr <= 1.25"
    );
    s
}

/// Everything `--world all` writes to zoo.json.
#[derive(Serialize)]
struct ZooJson<'a> {
    rows: &'a [ZooRow],
    reports: &'a [SimReport],
}

/// `qis sim --world all`: every world on the bus with the flags' settings, one table.
pub fn run_cli(args: &SimArgs) -> Result<Vec<SimReport>, SimError> {
    println!(
        "zoo: every world with the node's shipped defaults (only its feature bins declared), on the in-process bus, run twice (neighbors {} and 0)",
        args.neighbors
    );
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    for world in WorldKind::ALL {
        let mut config = args.config_for(world);
        config.zenoh_robots = 0;
        config.ros_robots = 0;
        let (on, _off, row) = run_world(&config)?;
        println!(
            "\n== {} ==\n{}",
            world.name(),
            on.table().lines().take(20).collect::<Vec<_>>().join("\n")
        );
        rows.push(row);
        reports.push(on);
    }
    println!("\n{}", table(&rows));
    create_out(&args.out)?;
    let path = args.out.join("zoo.json");
    let text = serde_json::to_string_pretty(&ZooJson {
        rows: &rows,
        reports: &reports,
    })?;
    std::fs::write(&path, text).map_err(|source| SimError::Io {
        path: path.display().to_string(),
        source,
    })?;
    println!("wrote {}", path.display());
    Ok(reports)
}
