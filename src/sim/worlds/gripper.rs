//! The gripper world: a two-finger gripper carries an object to a place target. Built to
//! test what the braking world does not: tags that are wrong, noise as large as the bias,
//! and a new world model rolled out to half the fleet in mid-run.
//!
//! One episode lifts an object of some class (box, bottle, can, pouch, tray) with rubber
//! or foam pads, carries it at speed `v` (m/s) to a shelf, a bin or a conveyor after
//! lifting it `h` (m). With grip force `F` (N) per finger and friction `μ` between pad
//! and object, the grasp can hold `C = 2 μ F`; carrying mass `m` with horizontal
//! acceleration `a = v / T_acc` asks `m √(g² + a²)`, a load ratio `ρ = m √(g² + a²) / C`.
//!
//! - slip in the fingers (mm) `= 40 · max(0, ρ − 0.6)² · (1 + h)`;
//! - placement error (mm) `= 2 + 6 ρ v + 3 h + c_model` (compliance swings the object);
//! - settle time (s) `= 0.2 + m v / k_target` (a stiff bin damps faster than a conveyor).
//!
//! The world model evaluates these with each class's catalogue mass and friction. Reality:
//! - **perception**: the object class the robot sees is wrong 8 % of the time (another
//!   class, uniformly); the robot predicts and fingerprints with the class it sees, while
//!   the outcome follows the true one;
//! - **noise as large as the bias**: masses vary per object (pouches by 45 %), so in some
//!   classes one outcome says little;
//! - **model v2**: from the middle of the run, the odd-numbered robots run `grip-wm/v2`
//!   (catalogue masses recalibrated to the true means, but a new compliance model that
//!   overstates placement error by 4 mm and understates settle time by 40 %). A new
//!   `model_id` starts clean: its addresses have no records yet.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngExt;

use super::mix::ContextMix;
use super::{Change, Episode, World, WorldMeta, WorldSetup, bins, normal, width};
use crate::core::fingerprint::{Bins, FingerprintConfig};
use crate::sim::SimRng;

/// Names of the state components, with units.
pub const STATE_NAMES: [&str; 3] = ["slip_mm", "place_error_mm", "settle_s"];
/// Scale of each component in the pooled error.
pub const STATE_SCALE: [f64; 3] = [1.0, 1.0, 0.05];
/// Names of the numeric features.
pub const FEATURE_NAMES: [&str; 2] = ["carry_speed_mps", "lift_height_m"];
/// The world models: v1, and v2 rolled out to half the fleet in mid-run.
pub const MODELS: [&str; 2] = ["grip-wm/v1", "grip-wm/v2"];

const G: f64 = 9.81;
/// Grip force per finger (N).
const GRIP_FORCE_N: f64 = 12.0;
/// Time to reach carry speed (s).
const ACCEL_TIME_S: f64 = 0.25;
/// Probability that the perceived object class is wrong.
const MISPERCEPTION: f64 = 0.08;
/// Carry speed and lift height ranges (uniform).
const SPEED_RANGE: (f64, f64) = (0.2, 1.2);
const HEIGHT_RANGE: (f64, f64) = (0.1, 0.6);
/// Sensor noise per component.
const MEASUREMENT_NOISE: [f64; 3] = [0.3, 0.5, 0.02];
/// v2's compliance model: placement offset (mm) and settle-time factor it believes.
const V2_PLACE_OFFSET_MM: f64 = 4.0;
const V2_SETTLE_FACTOR: f64 = 0.6;

/// An object class: true mean mass, its spread, the catalogue mass, and friction with
/// rubber and foam pads (true, catalogue).
struct Object {
    name: &'static str,
    mass: f64,
    mass_sd: f64,
    mass_model: f64,
    mu_rubber: (f64, f64),
    mu_foam: (f64, f64),
}

const OBJECTS: [Object; 5] = [
    Object {
        name: "box",
        mass: 1.2,
        mass_sd: 0.10,
        mass_model: 1.0,
        mu_rubber: (0.8, 0.8),
        mu_foam: (0.6, 0.6),
    },
    Object {
        name: "bottle",
        mass: 0.9,
        mass_sd: 0.05,
        mass_model: 0.7,
        mu_rubber: (0.5, 0.7),
        mu_foam: (0.35, 0.5),
    },
    Object {
        name: "can",
        mass: 0.4,
        mass_sd: 0.05,
        mass_model: 0.4,
        mu_rubber: (0.45, 0.6),
        mu_foam: (0.3, 0.4),
    },
    Object {
        name: "pouch",
        mass: 0.6,
        mass_sd: 0.45,
        mass_model: 0.5,
        mu_rubber: (0.9, 0.9),
        mu_foam: (0.7, 0.8),
    },
    Object {
        name: "tray",
        mass: 1.6,
        mass_sd: 0.10,
        mass_model: 1.5,
        mu_rubber: (0.7, 0.6),
        mu_foam: (0.5, 0.55),
    },
];

const PADS: [&str; 2] = ["rubber", "foam"];
/// Place targets and their damping stiffness `k_target` (kg·m/s per s).
const TARGETS: [(&str, f64); 3] = [("shelf", 4.0), ("bin", 8.0), ("conveyor", 2.0)];

/// A context: object, pad and target indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Context {
    object: u8,
    pad: u8,
    target: u8,
}

impl Context {
    fn all() -> Vec<Context> {
        let mut out = Vec::new();
        for object in 0..OBJECTS.len() as u8 {
            for pad in 0..PADS.len() as u8 {
                for target in 0..TARGETS.len() as u8 {
                    out.push(Context {
                        object,
                        pad,
                        target,
                    });
                }
            }
        }
        out
    }

    fn mu(&self) -> (f64, f64) {
        let o = &OBJECTS[self.object as usize];
        if self.pad == 0 {
            o.mu_rubber
        } else {
            o.mu_foam
        }
    }
}

/// What every episode of the world shares: the mix and the perception posterior.
struct Tables {
    /// Weight of each context in the mix.
    weight: HashMap<Context, f64>,
    bins: [Bins; 2],
    change_round: usize,
}

impl Tables {
    /// Draws the true object given the perceived one (and pad, target): the mix weight
    /// of each true object times the chance it is perceived as `perceived`.
    fn true_object(&self, perceived: Context, rng: &mut SimRng) -> u8 {
        let likelihood = |o: u8| {
            if o == perceived.object {
                1.0 - MISPERCEPTION
            } else {
                MISPERCEPTION / (OBJECTS.len() - 1) as f64
            }
        };
        let posterior: Vec<f64> = (0..OBJECTS.len() as u8)
            .map(|o| {
                let c = Context {
                    object: o,
                    ..perceived
                };
                self.weight.get(&c).copied().unwrap_or(0.0) * likelihood(o)
            })
            .collect();
        let total: f64 = posterior.iter().sum();
        let mut u = rng.random::<f64>() * total;
        for (o, w) in posterior.iter().enumerate() {
            if u < *w {
                return o as u8;
            }
            u -= w;
        }
        perceived.object
    }
}

/// The gripper world of a run.
pub struct Gripper {
    mix: ContextMix<Context>,
    tables: Arc<Tables>,
}

impl Gripper {
    /// The world of a run: contexts ranked by a stream of the run's seed.
    pub fn new(setup: &WorldSetup) -> Gripper {
        use rand::SeedableRng;
        let mix = ContextMix::zipf(
            Context::all(),
            setup.zipf_exponent,
            &mut SimRng::seed_from_u64(setup.seed ^ 0x6219_9E12),
        );
        let weight = mix.contexts().iter().copied().zip(mix.weights()).collect();
        let bins = fingerprint_config();
        Gripper {
            mix,
            tables: Arc::new(Tables {
                weight,
                bins: [
                    bins.features[FEATURE_NAMES[0]].clone(),
                    bins.features[FEATURE_NAMES[1]].clone(),
                ],
                change_round: setup.rounds / 2,
            }),
        }
    }
}

/// The bins a user of this world declares: carry speed in 0.2 m/s, lift height in 0.1 m.
pub fn fingerprint_config() -> FingerprintConfig {
    bins(&[
        (FEATURE_NAMES[0], width(0.2)),
        (FEATURE_NAMES[1], width(0.1)),
    ])
}

/// What the zoo shows of this world.
const META: WorldMeta = WorldMeta {
    name: "gripper",
    summary: "pick and place: object class wrong 8 % of the time, mass noise as large as the bias, grip-wm/v2 to half the fleet in mid-run",
    state_names: &STATE_NAMES,
    state_scale: &STATE_SCALE,
    feature_names: &FEATURE_NAMES,
    models: &MODELS,
};

impl World for Gripper {
    fn meta(&self) -> &'static WorldMeta {
        &META
    }

    fn fingerprint_config(&self) -> FingerprintConfig {
        fingerprint_config()
    }

    fn change(&self) -> Option<Change> {
        Some(Change {
            round: self.tables.change_round,
            what: "grip-wm/v2 rolled out to the odd-numbered half of the fleet",
        })
    }

    fn draw(&self, robot: usize, round: usize, rng: &mut SimRng) -> Box<dyn Episode> {
        Box::new(self.episode(robot, round, rng))
    }
}

impl Gripper {
    fn episode(&self, robot: usize, round: usize, rng: &mut SimRng) -> GripperEpisode {
        let truth = self.mix.draw(rng);
        let perceived = if rng.random::<f64>() < MISPERCEPTION {
            let other = rng.random_range(1..OBJECTS.len() as u8);
            Context {
                object: (truth.object + other) % OBJECTS.len() as u8,
                ..truth
            }
        } else {
            truth
        };
        let phase = usize::from(round >= self.tables.change_round);
        GripperEpisode {
            perceived,
            truth,
            model: usize::from(phase == 1 && robot % 2 == 1),
            phase,
            speed: rng.random_range(SPEED_RANGE.0..SPEED_RANGE.1),
            height: rng.random_range(HEIGHT_RANGE.0..HEIGHT_RANGE.1),
            tables: Arc::clone(&self.tables),
        }
    }
}

/// One gripper episode.
struct GripperEpisode {
    perceived: Context,
    truth: Context,
    model: usize,
    phase: usize,
    speed: f64,
    height: f64,
    tables: Arc<Tables>,
}

/// The three state components for mass `m`, friction `mu`, and a model's compliance
/// offset and settle factor.
fn carry(c: Context, m: f64, mu: f64, v: f64, h: f64, offset: f64, settle: f64) -> Vec<f64> {
    let a = v / ACCEL_TIME_S;
    let rho = m * (G * G + a * a).sqrt() / (2.0 * mu * GRIP_FORCE_N);
    let slip = 40.0 * (rho - 0.6).max(0.0).powi(2) * (1.0 + h);
    let place = 2.0 + 6.0 * rho * v + 3.0 * h + offset;
    let settle_s = 0.2 + settle * m * v / TARGETS[c.target as usize].1;
    vec![slip, place, settle_s]
}

impl Episode for GripperEpisode {
    fn model(&self) -> usize {
        self.model
    }

    fn tags(&self) -> Vec<String> {
        let c = self.perceived;
        vec![
            format!("object={}", OBJECTS[c.object as usize].name),
            format!("pad={}", PADS[c.pad as usize]),
            format!("target={}", TARGETS[c.target as usize].0),
        ]
    }

    fn features(&self) -> Vec<f64> {
        vec![self.speed, self.height]
    }

    fn phase(&self) -> usize {
        self.phase
    }

    fn affected(&self) -> bool {
        self.model == 1
    }

    fn predict(&self) -> Vec<f64> {
        let c = self.perceived;
        let o = &OBJECTS[c.object as usize];
        let (_, mu_model) = c.mu();
        if self.model == 1 {
            carry(
                c,
                o.mass,
                mu_model,
                self.speed,
                self.height,
                V2_PLACE_OFFSET_MM,
                V2_SETTLE_FACTOR,
            )
        } else {
            carry(c, o.mass_model, mu_model, self.speed, self.height, 0.0, 1.0)
        }
    }

    fn outcome(&self, rng: &mut SimRng) -> Vec<f64> {
        let c = self.truth;
        let o = &OBJECTS[c.object as usize];
        let (mu, _) = c.mu();
        let m = o.mass * (o.mass_sd * normal(rng) - 0.5 * o.mass_sd * o.mass_sd).exp();
        let mut state = carry(c, m, mu, self.speed, self.height, 0.0, 1.0);
        for (x, sd) in state.iter_mut().zip(MEASUREMENT_NOISE) {
            *x += sd * normal(rng);
        }
        state[0] = state[0].max(0.0);
        state
    }

    fn resample(&self, rng: &mut SimRng) -> Box<dyn Episode> {
        let t = &self.tables;
        let object = t.true_object(self.perceived, rng);
        let within = |x: f64, bins: &Bins, range: (f64, f64), rng: &mut SimRng| {
            super::redraw_in_bin(x, bins, rng, |r| r.random_range(range.0..range.1))
        };
        Box::new(GripperEpisode {
            perceived: self.perceived,
            truth: Context {
                object,
                ..self.perceived
            },
            model: self.model,
            phase: self.phase,
            speed: within(self.speed, &t.bins[0], SPEED_RANGE, rng),
            height: within(self.height, &t.bins[1], HEIGHT_RANGE, rng),
            tables: Arc::clone(&self.tables),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn world() -> Gripper {
        Gripper::new(&WorldSetup {
            seed: 1,
            robots: 10,
            rounds: 100,
            zipf_exponent: 1.0,
        })
    }

    #[test]
    fn perception_is_wrong_about_eight_percent_of_the_time() {
        let w = world();
        let mut rng = SimRng::seed_from_u64(2);
        let n = 20_000;
        let wrong = (0..n)
            .filter(|_| {
                let e = w.episode(0, 0, &mut rng);
                e.perceived != e.truth
            })
            .count();
        let share = wrong as f64 / n as f64;
        assert!((share - MISPERCEPTION).abs() < 0.01, "{share}");
        // The class mean the floor estimates mixes in the misperceived objects.
        let e = w.episode(0, 0, &mut rng);
        let mixed = (0..4_000)
            .filter(|_| w.tables.true_object(e.perceived, &mut rng) != e.perceived.object)
            .count();
        assert!(mixed > 0 && mixed < 2_000, "{mixed}");
    }

    #[test]
    fn v2_goes_to_odd_robots_after_the_change_and_its_bias_differs() {
        let w = world();
        let mut rng = SimRng::seed_from_u64(3);
        assert_eq!(w.draw(1, 49, &mut rng).model(), 0);
        assert_eq!(w.draw(2, 50, &mut rng).model(), 0);
        let e = w.draw(1, 50, &mut rng);
        assert_eq!(e.model(), 1);
        assert!(e.affected());
        let mean = |e: &dyn Episode, rng: &mut SimRng| {
            let p = e.predict();
            (0..2_000).map(|_| e.outcome(rng)[1] - p[1]).sum::<f64>() / 2_000.0
        };
        let v1 = GripperEpisode {
            model: 0,
            perceived: Context {
                object: 0,
                pad: 0,
                target: 0,
            },
            truth: Context {
                object: 0,
                pad: 0,
                target: 0,
            },
            phase: 1,
            speed: 0.7,
            height: 0.3,
            tables: Arc::clone(&w.tables),
        };
        let v2_same = GripperEpisode {
            model: 1,
            perceived: v1.perceived,
            truth: v1.truth,
            tables: Arc::clone(&w.tables),
            ..v1
        };
        let gap = mean(&v2_same, &mut rng) - mean(&v1, &mut rng);
        assert!(gap < -1.0, "v2 overstates placement error: {gap}");
    }
}
