//! The dock world: AGVs drive a straight leg of length `L` (m) at speed `v` (m/s) by
//! wheel odometry and stop at a dock or station. Built to test robots that differ (each
//! robot's tires are worn its own way) and a change of the world in mid-run (the dock
//! zone's floor gets wet), which no tag names.
//!
//! Odometry counts wheel turns times the nominal radius, so a robot whose tires are worn
//! by a fraction `w` (its true radius is `(1 − w)` of nominal) drives `L (1 − w)` when it
//! believes it drove `L`; wheel slip under acceleration loses a further `s · v · L`,
//! where the slip `s` depends on the floor and the load; braking from `v` with floor
//! friction `μ` overshoots by `v² / (2 μ g) − v² / (2 μ̂ g)` beyond what the planner
//! assumed. A robot's left and right tires also differ by `δ`, which curves its path:
//! cross-track error `δ L² / (2 b)` (wheelbase `b`), heading error `δ L / b` (rad); a
//! ramp adds cross-track drift that grows with the load.
//!
//! - along-track error (m) `= −w L − s v L + v²/(2 μ g) − v²/(2 μ̂ g)`;
//! - cross-track error (m) `= δ L² / (2 b) + ramp · c_load · L`;
//! - heading error (deg) `= 57.3 δ L / b`.
//!
//! The world model knows none of the tire wear (it assumes new tires), one slip value for
//! every floor, and the friction of a dry floor. Reality: each robot's `w` and `δ` are
//! drawn once (a fleet whose tires wear 1 % on average, by 0.6 % more or less per robot,
//! so a per-class mean over the fleet leaves a per-robot offset no shared correction
//! removes); per-episode slip jitter and sensor noise. From the middle of the run the
//! floor of the `zone=dock` stations is wet: slip grows by half and friction drops to a quarter.

use rand::RngExt;

use super::mix::ContextMix;
use super::{
    Change, Episode, World, WorldMeta, WorldSetup, bins, clamped_normal, normal, redraw_in_bin,
    width,
};
use crate::core::fingerprint::{Bins, FingerprintConfig};
use crate::sim::SimRng;

/// Names of the state components, with units.
pub const STATE_NAMES: [&str; 3] = ["along_track_m", "cross_track_m", "heading_deg"];
/// Scale of each component in the pooled error.
pub const STATE_SCALE: [f64; 3] = [0.05, 0.05, 1.0];
/// Names of the numeric features.
pub const FEATURE_NAMES: [&str; 2] = ["leg_length_m", "speed_mps"];
/// The world model's id.
pub const MODEL_ID: &str = "agv-odometry/v1";

const G: f64 = 9.81;
/// Wheelbase (m).
const WHEELBASE_M: f64 = 0.5;
/// Fleet tire wear: mean and spread between robots (fraction of the radius).
const WEAR_MEAN: f64 = 0.01;
const WEAR_SD: f64 = 0.006;
/// Left/right radius difference between robots (fraction).
const SKEW_SD: f64 = 0.0015;
/// The slip the model assumes on every floor, per m/s.
const MODEL_SLIP: f64 = 0.008;
/// Per-episode slip jitter (relative).
const SLIP_JITTER: f64 = 0.2;
/// Sensor noise per component.
const MEASUREMENT_NOISE: [f64; 3] = [0.01, 0.01, 0.2];
/// What the wet floor does to slip and to friction.
const WET_SLIP: f64 = 1.5;
const WET_FRICTION: f64 = 0.25;
/// Leg length and speed ranges.
const LENGTH_RANGE: (f64, f64) = (2.0, 20.0);
const SPEED_MEAN: f64 = 0.9;
const SPEED_SD: f64 = 0.3;
const SPEED_RANGE: (f64, f64) = (0.3, 1.5);

/// A floor: name, true slip per m/s, true friction, friction the planner assumes.
const FLOORS: [(&str, f64, f64, f64); 4] = [
    ("epoxy", 0.010, 0.55, 0.6),
    ("concrete", 0.005, 0.7, 0.6),
    ("tile", 0.015, 0.45, 0.6),
    ("steel_plate", 0.020, 0.35, 0.6),
];
/// Loads: name, slip factor, ramp drift factor.
const LOADS: [(&str, f64, f64); 3] = [("empty", 1.0, 0.0), ("half", 1.3, 0.5), ("full", 1.7, 1.0)];
/// Zones: name, ramp drift per m at full factor.
const ZONES: [(&str, f64); 3] = [("aisle", 0.0), ("ramp", 0.004), ("dock", 0.0)];
/// Index of the zone whose floor gets wet.
const WET_ZONE: u8 = 2;

/// A context: floor, load and zone indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Context {
    floor: u8,
    load: u8,
    zone: u8,
}

impl Context {
    fn all() -> Vec<Context> {
        let mut out = Vec::new();
        for floor in 0..FLOORS.len() as u8 {
            for load in 0..LOADS.len() as u8 {
                for zone in 0..ZONES.len() as u8 {
                    out.push(Context { floor, load, zone });
                }
            }
        }
        out
    }
}

/// One robot's tires: wear and left/right skew (fractions of the nominal radius).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tires {
    wear: f64,
    skew: f64,
}

/// The dock world of a run.
pub struct Dock {
    mix: ContextMix<Context>,
    tires: std::sync::Arc<Vec<Tires>>,
    change_round: usize,
    bins: [Bins; 2],
}

impl Dock {
    /// The world of a run: contexts ranked and every robot's tires drawn from streams of
    /// the run's seed.
    pub fn new(setup: &WorldSetup) -> Dock {
        use rand::SeedableRng;
        let mut rng = SimRng::seed_from_u64(setup.seed ^ 0xD0C4_0000);
        let mix = ContextMix::zipf(Context::all(), setup.zipf_exponent, &mut rng);
        let tires = (0..setup.robots.max(1))
            .map(|_| Tires {
                wear: (WEAR_MEAN + WEAR_SD * normal(&mut rng)).max(0.0),
                skew: SKEW_SD * normal(&mut rng),
            })
            .collect();
        let bins = fingerprint_config();
        Dock {
            mix,
            tires: std::sync::Arc::new(tires),
            change_round: setup.rounds / 2,
            bins: [
                bins.features[FEATURE_NAMES[0]].clone(),
                bins.features[FEATURE_NAMES[1]].clone(),
            ],
        }
    }
}

/// The bins a user of this world declares: leg length in 2 m, speed in 0.3 m/s.
pub fn fingerprint_config() -> FingerprintConfig {
    bins(&[
        (FEATURE_NAMES[0], width(2.0)),
        (FEATURE_NAMES[1], width(0.3)),
    ])
}

fn draw_speed(rng: &mut SimRng) -> f64 {
    clamped_normal(rng, SPEED_MEAN, SPEED_SD, SPEED_RANGE)
}

fn draw_length(rng: &mut SimRng) -> f64 {
    rng.random_range(LENGTH_RANGE.0..LENGTH_RANGE.1)
}

/// What the zoo shows of this world.
const META: WorldMeta = WorldMeta {
    name: "dock",
    summary: "AGV odometry legs: every robot's tires worn its own way, the dock zone's floor wet from mid-run (no tag says so)",
    state_names: &STATE_NAMES,
    state_scale: &STATE_SCALE,
    feature_names: &FEATURE_NAMES,
    models: &[MODEL_ID],
};

impl World for Dock {
    fn meta(&self) -> &'static WorldMeta {
        &META
    }

    fn fingerprint_config(&self) -> FingerprintConfig {
        fingerprint_config()
    }

    fn change(&self) -> Option<Change> {
        Some(Change {
            round: self.change_round,
            what: "the floor of zone=dock gets wet (slip x1.5, friction x0.25; no tag says so)",
        })
    }

    fn draw(&self, robot: usize, round: usize, rng: &mut SimRng) -> Box<dyn Episode> {
        let context = self.mix.draw(rng);
        Box::new(DockEpisode {
            context,
            tires: self.tires[robot % self.tires.len()],
            fleet: std::sync::Arc::clone(&self.tires),
            phase: usize::from(round >= self.change_round),
            length: draw_length(rng),
            speed: draw_speed(rng),
            bins: self.bins.clone(),
        })
    }
}

/// One leg.
struct DockEpisode {
    context: Context,
    tires: Tires,
    /// Every robot's tires (a class resample draws the robot too).
    fleet: std::sync::Arc<Vec<Tires>>,
    phase: usize,
    length: f64,
    speed: f64,
    bins: [Bins; 2],
}

impl DockEpisode {
    fn wet(&self) -> bool {
        self.phase == 1 && self.context.zone == WET_ZONE
    }
}

impl Episode for DockEpisode {
    fn model(&self) -> usize {
        0
    }

    fn tags(&self) -> Vec<String> {
        let c = self.context;
        vec![
            format!("floor={}", FLOORS[c.floor as usize].0),
            format!("load={}", LOADS[c.load as usize].0),
            format!("zone={}", ZONES[c.zone as usize].0),
        ]
    }

    fn features(&self) -> Vec<f64> {
        vec![self.length, self.speed]
    }

    fn phase(&self) -> usize {
        self.phase
    }

    fn affected(&self) -> bool {
        self.wet()
    }

    fn predict(&self) -> Vec<f64> {
        vec![-MODEL_SLIP * self.speed * self.length, 0.0, 0.0]
    }

    fn outcome(&self, rng: &mut SimRng) -> Vec<f64> {
        let c = self.context;
        let (_, slip, mu, mu_model) = FLOORS[c.floor as usize];
        let (_, load_slip, load_drift) = LOADS[c.load as usize];
        let (slip, mu) = if self.wet() {
            (slip * WET_SLIP, mu * WET_FRICTION)
        } else {
            (slip, mu)
        };
        let slip = slip * load_slip * (1.0 + SLIP_JITTER * normal(rng));
        let (l, v) = (self.length, self.speed);
        let overshoot = v * v / (2.0 * G * mu) - v * v / (2.0 * G * mu_model);
        let along = -self.tires.wear * l - slip * v * l + overshoot;
        let cross = self.tires.skew * l * l / (2.0 * WHEELBASE_M)
            + ZONES[c.zone as usize].1 * load_drift * l;
        let heading = 57.3 * self.tires.skew * l / WHEELBASE_M;
        let mut state = vec![along, cross, heading];
        for (x, sd) in state.iter_mut().zip(MEASUREMENT_NOISE) {
            *x += sd * normal(rng);
        }
        state
    }

    fn resample(&self, rng: &mut SimRng) -> Box<dyn Episode> {
        let robot = rng.random_range(0..self.fleet.len());
        Box::new(DockEpisode {
            context: self.context,
            tires: self.fleet[robot],
            fleet: std::sync::Arc::clone(&self.fleet),
            phase: self.phase,
            length: redraw_in_bin(self.length, &self.bins[0], rng, draw_length),
            speed: redraw_in_bin(self.speed, &self.bins[1], rng, draw_speed),
            bins: self.bins.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn world() -> Dock {
        Dock::new(&WorldSetup {
            seed: 4,
            robots: 50,
            rounds: 100,
            zipf_exponent: 1.0,
        })
    }

    fn leg(w: &Dock, robot: usize, zone: u8, phase: usize) -> DockEpisode {
        DockEpisode {
            context: Context {
                floor: 1,
                load: 0,
                zone,
            },
            tires: w.tires[robot],
            fleet: std::sync::Arc::clone(&w.tires),
            phase,
            length: 10.0,
            speed: 1.0,
            bins: w.bins.clone(),
        }
    }

    fn mean_along(e: &DockEpisode, rng: &mut SimRng) -> f64 {
        let p = e.predict();
        (0..2_000).map(|_| e.outcome(rng)[0] - p[0]).sum::<f64>() / 2_000.0
    }

    #[test]
    fn robots_differ_by_their_tires() {
        let w = world();
        let mut rng = SimRng::seed_from_u64(5);
        let (most, least) = (0..50).fold((f64::MIN, f64::MAX), |(hi, lo), r| {
            let m = mean_along(&leg(&w, r, 0, 0), &mut rng);
            (hi.max(m), lo.min(m))
        });
        assert!(
            most - least > 2.0 * STATE_SCALE[0],
            "tire wear spreads the fleet: {least}..{most}"
        );
    }

    #[test]
    fn the_dock_floor_gets_wet_in_mid_run() {
        let w = world();
        let mut rng = SimRng::seed_from_u64(6);
        let dry = mean_along(&leg(&w, 0, WET_ZONE, 0), &mut rng);
        let wet = leg(&w, 0, WET_ZONE, 1);
        assert!(wet.affected());
        assert!(!leg(&w, 0, 0, 1).affected());
        let gap = mean_along(&wet, &mut rng) - dry;
        assert!(gap > STATE_SCALE[0], "wet floor: {gap}");
    }
}
