//! The plate world, on a real physics engine (rapier3d): a robot pushes a plate across a
//! table toward the table's edge. Does it stop, or fall?
//!
//! One episode gives a square plate (half-width 0.1 m, 2 cm thick) of some material on a
//! table of some surface a push of speed `v` (m/s) with its center `d` (m) from the edge.
//! Reality is a rapier3d rigid-body simulation (a dynamic cuboid sliding on a fixed one,
//! Coulomb friction, gravity, 60 Hz, at most [`MAX_STEPS`] steps): the plate slides,
//! decelerates and either comes to rest or tips over the edge once its center of mass has
//! passed it, and falls. State: `[slide_m, fell]`: how far its center travelled while on
//! the table (until rest, or until it had dropped 3 cm below the table top), and 1 if it
//! fell, else 0.
//!
//! The world model is the textbook point mass with catalogue friction `μ̂` per pair:
//! slide `v² / (2 μ̂ g)`, falls iff that exceeds `d`; a falling plate is predicted to
//! leave the table when its trailing edge passes the edge (`d` + half-width). What it
//! misses, and what each tests:
//! - true friction differs from the catalogue per pair (a per-class bias);
//! - a **latent cause no tag names**: a quarter of the time the table was just wiped and
//!   is damp (friction × 0.7);
//! - per-episode push-speed error (3 %) and friction jitter (5 %), so near the edge the
//!   `fell` component is a coin flip: **noise as large as the bias**;
//! - the bias varies **continuously inside a bin** (slide grows with v², the tipping
//!   dynamics with how far past the edge the plate gets).
//!
//! Each episode runs its own small simulation (deterministic for given inputs), about
//! 30–60 steps, 0.1–0.5 ms in release.

use rand::RngExt;
use rapier3d::prelude::{
    ColliderBuilder, FrictionModel, PhysicsWorld, Real, RigidBodyBuilder, Vector,
};

use super::mix::ContextMix;
use super::{
    Change, Episode, World, WorldMeta, WorldSetup, bins, clamped_normal, normal, redraw_in_bin,
    width,
};
use crate::core::fingerprint::{Bins, FingerprintConfig};
use crate::sim::SimRng;

/// Names of the state components, with units.
pub const STATE_NAMES: [&str; 2] = ["slide_m", "fell"];
/// Scale of each component in the pooled error: 5 cm of slide, a 25 % fall probability.
pub const STATE_SCALE: [f64; 2] = [0.05, 0.25];
/// Names of the numeric features.
pub const FEATURE_NAMES: [&str; 2] = ["push_speed_mps", "edge_distance_m"];
/// The world model's id.
pub const MODEL_ID: &str = "plate-push/v1";

const G: f64 = 9.81;
/// Half-width of the (square) plate (m) and its half-thickness.
const PLATE_HALF: f64 = 0.1;
const PLATE_HALF_THICK: f64 = 0.01;
/// Simulation step (s) and the most steps an episode runs.
const DT: Real = 1.0 / 60.0;
/// The most steps of one episode (2.5 s of simulated time).
pub const MAX_STEPS: usize = 150;
/// Below the table top by this much (m), the plate has fallen.
const FALLEN_DROP: Real = 0.03;
/// Steps at rest that end an episode.
const REST_STEPS: usize = 5;
/// Probability that the table was just wiped (damp), and what that does to friction.
const DAMP_PROBABILITY: f64 = 0.25;
const DAMP_FRICTION: f64 = 0.7;
/// Per-episode relative spread of the push speed and of friction.
const PUSH_JITTER: f64 = 0.03;
const FRICTION_JITTER: f64 = 0.05;
/// Sensor noise of the measured slide (m).
const SLIDE_NOISE_M: f64 = 0.005;
/// Push speed distribution (m/s) and edge distance range (m).
const SPEED_MEAN: f64 = 1.2;
const SPEED_SD: f64 = 0.35;
const SPEED_RANGE: (f64, f64) = (0.3, 2.4);
const DISTANCE_RANGE: (f64, f64) = (0.05, 0.45);
/// Floor-sample resamples per class: each costs a physics run.
const FLOOR_SAMPLES: usize = 24;

/// Plate materials and table surfaces.
const PLATES: [&str; 4] = ["ceramic", "melamine", "steel", "glass"];
const TABLES: [&str; 4] = ["oak", "laminate", "steel", "linen"];
/// True friction per (plate, table).
const MU_TRUE: [[f64; 4]; 4] = [
    [0.30, 0.22, 0.18, 0.38],
    [0.35, 0.28, 0.24, 0.42],
    [0.28, 0.20, 0.30, 0.35],
    [0.25, 0.17, 0.15, 0.30],
];
/// Catalogue friction the world model uses per (plate, table).
const MU_MODEL: [[f64; 4]; 4] = [
    [0.30, 0.25, 0.20, 0.45],
    [0.30, 0.30, 0.25, 0.45],
    [0.30, 0.25, 0.25, 0.40],
    [0.30, 0.25, 0.20, 0.40],
];

/// A context: plate and table indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Context {
    plate: u8,
    table: u8,
}

impl Context {
    fn all() -> Vec<Context> {
        let mut out = Vec::new();
        for plate in 0..PLATES.len() as u8 {
            for table in 0..TABLES.len() as u8 {
                out.push(Context { plate, table });
            }
        }
        out
    }
}

/// What rapier says happened to one push.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Push {
    /// How far the plate's center travelled while on the table (m).
    pub slide_m: f64,
    /// Whether it fell off.
    pub fell: bool,
    /// Steps simulated.
    pub steps: usize,
}

/// Simulates one push with rapier3d: a plate with its center `distance` (m) before the
/// edge of a fixed table, pushed at `speed` (m/s), friction `mu` on both surfaces.
pub fn simulate_push(speed: f64, distance: f64, mu: f64) -> Push {
    let mut w = PhysicsWorld::new();
    w.gravity = Vector::new(0.0, -G as Real, 0.0);
    w.integration_parameters.dt = DT;
    // Fresh contact points every step: recycled ones can keep holding a plate whose
    // center has passed the edge.
    w.integration_parameters.contact_recycling = false;
    w.integration_parameters.friction_model = FrictionModel::Simplified;
    let mu = mu as Real;
    // The table: x in [−2, 0] (its edge at x = 0), top at y = 0.
    w.insert_collider(
        ColliderBuilder::cuboid(1.0, 0.02, 0.5)
            .translation(Vector::new(-1.0, -0.02, 0.0))
            .friction(mu),
        None,
    );
    let x0 = -(distance as Real);
    let (plate, _) = w.insert(
        RigidBodyBuilder::dynamic()
            .translation(Vector::new(x0, PLATE_HALF_THICK as Real, 0.0))
            .linvel(Vector::new(speed as Real, 0.0, 0.0)),
        ColliderBuilder::cuboid(
            PLATE_HALF as Real,
            PLATE_HALF_THICK as Real,
            PLATE_HALF as Real,
        )
        .friction(mu)
        .density(2000.0),
    );
    let mut last_x = x0;
    let mut rest = 0;
    for step in 1..=MAX_STEPS {
        w.step();
        let body = &w.bodies[plate];
        let t = body.translation();
        if t.y < -FALLEN_DROP {
            return Push {
                slide_m: f64::from(last_x - x0),
                fell: true,
                steps: step,
            };
        }
        last_x = t.x;
        if body.linvel().length() < 2e-3 && body.angvel().length() < 2e-2 {
            rest += 1;
        } else {
            rest = 0;
        }
        if rest >= REST_STEPS {
            break;
        }
    }
    let body = &w.bodies[plate];
    Push {
        slide_m: f64::from(last_x - x0),
        fell: body.translation().y < 0.0,
        steps: MAX_STEPS,
    }
}

/// The plate world of a run.
pub struct Plate {
    mix: ContextMix<Context>,
    bins: [Bins; 2],
}

impl Plate {
    /// The world of a run: contexts ranked by a stream of the run's seed.
    pub fn new(setup: &WorldSetup) -> Plate {
        use rand::SeedableRng;
        let bins = fingerprint_config();
        Plate {
            mix: ContextMix::zipf(
                Context::all(),
                setup.zipf_exponent,
                &mut SimRng::seed_from_u64(setup.seed ^ 0x91A7_E000),
            ),
            bins: [
                bins.features[FEATURE_NAMES[0]].clone(),
                bins.features[FEATURE_NAMES[1]].clone(),
            ],
        }
    }
}

/// The bins a user of this world declares: push speed in 0.2 m/s, edge distance in 5 cm.
pub fn fingerprint_config() -> FingerprintConfig {
    bins(&[
        (FEATURE_NAMES[0], width(0.2)),
        (FEATURE_NAMES[1], width(0.05)),
    ])
}

fn draw_speed(rng: &mut SimRng) -> f64 {
    clamped_normal(rng, SPEED_MEAN, SPEED_SD, SPEED_RANGE)
}

fn draw_distance(rng: &mut SimRng) -> f64 {
    rng.random_range(DISTANCE_RANGE.0..DISTANCE_RANGE.1)
}

/// What the zoo shows of this world.
const META: WorldMeta = WorldMeta {
    name: "plate",
    summary: "rapier3d: a plate pushed toward a table's edge stops or falls; a damp table no tag names; fall is a coin flip near the edge",
    state_names: &STATE_NAMES,
    state_scale: &STATE_SCALE,
    feature_names: &FEATURE_NAMES,
    models: &[MODEL_ID],
};

impl World for Plate {
    fn meta(&self) -> &'static WorldMeta {
        &META
    }

    fn fingerprint_config(&self) -> FingerprintConfig {
        fingerprint_config()
    }

    fn change(&self) -> Option<Change> {
        None
    }

    fn floor_samples(&self) -> usize {
        FLOOR_SAMPLES
    }

    fn draw(&self, _robot: usize, _round: usize, rng: &mut SimRng) -> Box<dyn Episode> {
        let context = self.mix.draw(rng);
        Box::new(PlateEpisode {
            context,
            speed: draw_speed(rng),
            distance: draw_distance(rng),
            bins: self.bins.clone(),
        })
    }
}

/// One push.
struct PlateEpisode {
    context: Context,
    speed: f64,
    distance: f64,
    bins: [Bins; 2],
}

impl Episode for PlateEpisode {
    fn model(&self) -> usize {
        0
    }

    fn tags(&self) -> Vec<String> {
        vec![
            format!("plate={}", PLATES[self.context.plate as usize]),
            format!("table={}", TABLES[self.context.table as usize]),
        ]
    }

    fn features(&self) -> Vec<f64> {
        vec![self.speed, self.distance]
    }

    fn phase(&self) -> usize {
        0
    }

    fn affected(&self) -> bool {
        false
    }

    fn predict(&self) -> Vec<f64> {
        let mu = MU_MODEL[self.context.plate as usize][self.context.table as usize];
        let slide = self.speed * self.speed / (2.0 * mu * G);
        if slide > self.distance {
            vec![self.distance + PLATE_HALF, 1.0]
        } else {
            vec![slide, 0.0]
        }
    }

    fn outcome(&self, rng: &mut SimRng) -> Vec<f64> {
        let mut mu = MU_TRUE[self.context.plate as usize][self.context.table as usize];
        if rng.random::<f64>() < DAMP_PROBABILITY {
            mu *= DAMP_FRICTION;
        }
        mu *= (1.0 + FRICTION_JITTER * normal(rng)).max(0.5);
        let speed = self.speed * (1.0 + PUSH_JITTER * normal(rng));
        let push = simulate_push(speed, self.distance, mu);
        vec![
            push.slide_m + SLIDE_NOISE_M * normal(rng),
            f64::from(u8::from(push.fell)),
        ]
    }

    fn resample(&self, rng: &mut SimRng) -> Box<dyn Episode> {
        Box::new(PlateEpisode {
            context: self.context,
            speed: redraw_in_bin(self.speed, &self.bins[0], rng, draw_speed),
            distance: redraw_in_bin(self.distance, &self.bins[1], rng, draw_distance),
            bins: self.bins.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_push_stops_like_the_textbook_and_a_fast_one_falls() {
        // Far from the edge: the point-mass slide v²/(2μg) within 5 %.
        let p = simulate_push(1.0, 0.45, 0.3);
        let textbook = 1.0 / (2.0 * 0.3 * G);
        assert!(!p.fell, "{p:?}");
        assert!(
            (p.slide_m - textbook).abs() < 0.05 * textbook,
            "{p:?} vs {textbook}"
        );
        // Its center stops short of the edge: it stays; past the edge: it tips and falls.
        assert!(!simulate_push(1.2, 0.3, 0.3).fell);
        let over = simulate_push(1.45, 0.3, 0.3);
        assert!(over.fell, "{over:?}");
        assert!(over.steps < MAX_STEPS);
        // Deterministic for given inputs.
        assert_eq!(simulate_push(1.1, 0.2, 0.25), simulate_push(1.1, 0.2, 0.25));
    }
}
