//! The braking world: an emergency stop of a wheeled utility robot, with physics the
//! robots' world model gets wrong in class-dependent ways.
//!
//! One episode is a braking manoeuvre from speed `v` (m/s) on a slope of grade `g` (%,
//! positive = downhill) with a payload, on a surface, in some weather, reacting to an
//! obstacle. The dynamics are the textbook point-mass stop:
//!
//! - dead time `τ = τ_perception(obstacle) + τ_actuation(weather)` at constant speed;
//! - deceleration `a = min(g·μ·cos θ, F_brake / m) − g·sin θ` (friction or actuator
//!   limited, gravity along the slope), with `μ = μ_dry(surface) · f(surface, weather)`;
//! - state `[stop distance v·τ + v²/2a (m), stop time τ + v/a (s),
//!   lateral drift k_yaw · distance · u² (m), measured deceleration a (m/s²)]`, where
//!   `u = F_used / (m·g·μ·cos θ)` is the friction utilization (drift grows as braking nears
//!   the friction limit) and `k_yaw` grows with wet or snowy split-friction patches.
//!
//! The world model evaluates the same equations with what a model trained on dry asphalt
//! believes: optimistic friction on loose and frozen ground, a generic weather factor,
//! the unloaded mass (it ignores payload), one perception latency for every obstacle and
//! the data-sheet actuation lag. Reality adds per-episode variation (tyre and brake
//! condition, timing jitter) and sensor noise. So the model's error is a bias that depends
//! on the scenario class plus noise: the setting the outcome layer is meant for.

use rand_distr::{Distribution, StandardNormal};

use super::mix::ContextMix;
use super::{Change, Episode, World, WorldMeta, WorldSetup, bins_of, redraw_in_bin};
use crate::sim::SimRng;

use crate::core::fingerprint::{Bins, FingerprintConfig, UnknownFeatures};

/// Dimension of the predicted and measured state.
pub const STATE_DIM: usize = 4;
/// Names of the state components, with units.
pub const STATE_NAMES: [&str; STATE_DIM] = [
    "stop_distance_m",
    "stop_time_s",
    "lateral_drift_m",
    "decel_mps2",
];
/// Scale of each component used to pool them into one error figure (normalized RMSE):
/// roughly what an engineer would call a meaningful error in each unit.
pub const STATE_SCALE: [f64; STATE_DIM] = [1.0, 0.25, 0.1, 0.25];
/// Names of the numeric features of a scenario.
pub const FEATURE_NAMES: [&str; 2] = ["speed_mps", "grade_pct"];

const G: f64 = 9.81;
/// Unloaded robot mass (kg): all the world model knows.
const BASE_MASS_KG: f64 = 150.0;
/// Brake force limit (N).
const BRAKE_FORCE_N: f64 = 900.0;
/// Smallest deceleration the physics allows (m/s²): a stop on a steep icy descent would
/// otherwise never end; real robots have a parking brake / ground contact fallback.
const MIN_DECEL: f64 = 0.3;
/// Actuation lag the world model assumes (s).
const MODEL_ACTUATION_LAG_S: f64 = 0.10;
/// Perception latency the world model assumes for every obstacle (s).
const MODEL_PERCEPTION_S: f64 = 0.15;
/// Yaw-drift coefficient the world model assumes.
const MODEL_K_YAW: f64 = 0.03;

/// A ground surface: true dry friction, true weather factors (rain, snow) and the
/// friction the world model believes.
struct Surface {
    name: &'static str,
    mu_dry: f64,
    rain: f64,
    snow: f64,
    mu_model: f64,
    /// Typical cruising speed on it (m/s).
    speed: f64,
}

const SURFACES: [Surface; 6] = [
    Surface {
        name: "asphalt",
        mu_dry: 0.85,
        rain: 0.65,
        snow: 0.40,
        mu_model: 0.85,
        speed: 9.0,
    },
    Surface {
        name: "concrete",
        mu_dry: 0.80,
        rain: 0.70,
        snow: 0.42,
        mu_model: 0.82,
        speed: 8.5,
    },
    Surface {
        name: "gravel",
        mu_dry: 0.55,
        rain: 0.85,
        snow: 0.60,
        mu_model: 0.65,
        speed: 6.5,
    },
    Surface {
        name: "grass",
        mu_dry: 0.40,
        rain: 0.70,
        snow: 0.55,
        mu_model: 0.55,
        speed: 5.0,
    },
    Surface {
        name: "sand",
        mu_dry: 0.35,
        rain: 1.10,
        snow: 0.70,
        mu_model: 0.50,
        speed: 4.5,
    },
    Surface {
        name: "ice",
        mu_dry: 0.12,
        rain: 0.50,
        snow: 0.85,
        mu_model: 0.25,
        speed: 3.5,
    },
];

/// Weather: what the model believes it does to friction, its true extra actuation lag
/// (iced or wet brakes), yaw-drift coefficient and effect on cruising speed.
struct Weather {
    name: &'static str,
    model_factor: f64,
    extra_lag_s: f64,
    k_yaw: f64,
    speed: f64,
}

const WEATHERS: [Weather; 3] = [
    Weather {
        name: "dry",
        model_factor: 1.0,
        extra_lag_s: 0.0,
        k_yaw: 0.03,
        speed: 1.0,
    },
    Weather {
        name: "rain",
        model_factor: 0.85,
        extra_lag_s: 0.03,
        k_yaw: 0.06,
        speed: 0.85,
    },
    Weather {
        name: "snow",
        model_factor: 0.70,
        extra_lag_s: 0.10,
        k_yaw: 0.10,
        speed: 0.7,
    },
];

/// Payload classes (kg); the world model always assumes none.
const LOADS: [(&str, f64); 3] = [("empty", 0.0), ("half", 60.0), ("full", 120.0)];

/// Obstacles and the true perception latency (s) of reacting to each.
const OBSTACLES: [(&str, f64); 4] = [
    ("none", 0.05),
    ("pedestrian", 0.25),
    ("cyclist", 0.32),
    ("vehicle", 0.18),
];

/// True actuation lag of the brakes in dry weather (s).
const ACTUATION_LAG_S: f64 = 0.12;

/// Per-episode variation of reality, as relative or absolute standard deviations.
const MU_JITTER: f64 = 0.03;
const BRAKE_JITTER: f64 = 0.02;
const LAG_JITTER_S: f64 = 0.01;
/// Sensor noise of the measured state, per component.
const MEASUREMENT_NOISE: [f64; STATE_DIM] = [0.05, 0.02, 0.01, 0.05];

/// Spread of speeds around a context's typical speed (m/s), and the allowed range.
const SPEED_SD: f64 = 0.5;
const SPEED_RANGE: (f64, f64) = (1.5, 13.5);
/// Spread of slopes (grade %), and the allowed range.
const GRADE_SD: f64 = 1.5;
const GRADE_RANGE: (f64, f64) = (-10.0, 10.0);

/// A categorical context: indices into the surface, weather, load and obstacle tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Context {
    surface: u8,
    weather: u8,
    load: u8,
    obstacle: u8,
}

impl Context {
    /// Every context, in a fixed order.
    pub fn all() -> Vec<Context> {
        let mut out = Vec::new();
        for surface in 0..SURFACES.len() as u8 {
            for weather in 0..WEATHERS.len() as u8 {
                for load in 0..LOADS.len() as u8 {
                    for obstacle in 0..OBSTACLES.len() as u8 {
                        out.push(Context {
                            surface,
                            weather,
                            load,
                            obstacle,
                        });
                    }
                }
            }
        }
        out
    }

    /// The scenario tags (`key=value`) of this context.
    pub fn tags(&self) -> [String; 4] {
        [
            format!("surface={}", SURFACES[self.surface as usize].name),
            format!("weather={}", WEATHERS[self.weather as usize].name),
            format!("load={}", LOADS[self.load as usize].0),
            format!("obstacle={}", OBSTACLES[self.obstacle as usize].0),
        ]
    }

    fn typical_speed(&self) -> f64 {
        SURFACES[self.surface as usize].speed * WEATHERS[self.weather as usize].speed
    }
}

/// One episode's situation: what the robot knows before it acts.
#[derive(Clone, Debug, PartialEq)]
pub struct Situation {
    /// Categorical context.
    pub context: Context,
    /// Speed at the start of the stop (m/s).
    pub speed_mps: f64,
    /// Road grade (%; positive = downhill).
    pub grade_pct: f64,
}

impl Situation {
    /// Draws speed and grade for a context.
    pub fn draw(context: Context, rng: &mut SimRng) -> Situation {
        let speed = draw_speed(context, rng);
        let grade = draw_grade(rng);
        Situation {
            context,
            speed_mps: speed,
            grade_pct: grade,
        }
    }

    /// Numeric feature values, in the order of [`FEATURE_NAMES`].
    pub fn features(&self) -> [f64; 2] {
        [self.speed_mps, self.grade_pct]
    }

    /// What the world model predicts.
    pub fn predict(&self) -> [f64; STATE_DIM] {
        let c = self.context;
        let s = &SURFACES[c.surface as usize];
        let w = &WEATHERS[c.weather as usize];
        stop(&Physics {
            speed: self.speed_mps,
            grade_pct: self.grade_pct,
            mu: s.mu_model * w.model_factor,
            mass: BASE_MASS_KG,
            brake_force: BRAKE_FORCE_N,
            dead_time: MODEL_PERCEPTION_S + MODEL_ACTUATION_LAG_S,
            k_yaw: MODEL_K_YAW,
        })
    }

    /// What reality does (true physics with per-episode variation), as measured by the
    /// robot's sensors.
    pub fn measure(&self, rng: &mut SimRng) -> [f64; STATE_DIM] {
        let c = self.context;
        let s = &SURFACES[c.surface as usize];
        let w = &WEATHERS[c.weather as usize];
        let weather_factor = match c.weather {
            0 => 1.0,
            1 => s.rain,
            _ => s.snow,
        };
        let mut n = || -> f64 { StandardNormal.sample(&mut *rng) };
        let mu = s.mu_dry * weather_factor * (1.0 + MU_JITTER * n());
        let brake_force = BRAKE_FORCE_N * (1.0 + BRAKE_JITTER * n());
        let dead_time =
            OBSTACLES[c.obstacle as usize].1 + ACTUATION_LAG_S + w.extra_lag_s + LAG_JITTER_S * n();
        let mut state = stop(&Physics {
            speed: self.speed_mps,
            grade_pct: self.grade_pct,
            mu: mu.max(0.01),
            mass: BASE_MASS_KG + LOADS[c.load as usize].1,
            brake_force,
            dead_time: dead_time.max(0.0),
            k_yaw: w.k_yaw,
        });
        for (x, sd) in state.iter_mut().zip(MEASUREMENT_NOISE) {
            *x += sd * n();
        }
        state
    }
}

fn draw_speed(context: Context, rng: &mut SimRng) -> f64 {
    let n: f64 = StandardNormal.sample(rng);
    (context.typical_speed() + SPEED_SD * n).clamp(SPEED_RANGE.0, SPEED_RANGE.1)
}

fn draw_grade(rng: &mut SimRng) -> f64 {
    let n: f64 = StandardNormal.sample(rng);
    (GRADE_SD * n).clamp(GRADE_RANGE.0, GRADE_RANGE.1)
}

/// The validation envelope of the world model: the largest |reality − prediction| per
/// state component over `per_context` random situations of every context. It is what an
/// engineer who validated the model offline would configure as the plausibility gate
/// (`max_residual`): no honest robot's mean residual can lie outside it.
pub fn residual_envelope(per_context: usize, rng: &mut SimRng) -> [f64; STATE_DIM] {
    let mut envelope = [0.0_f64; STATE_DIM];
    for context in Context::all() {
        for _ in 0..per_context {
            let situation = Situation::draw(context, rng);
            let predicted = situation.predict();
            let measured = situation.measure(rng);
            for d in 0..STATE_DIM {
                envelope[d] = envelope[d].max((measured[d] - predicted[d]).abs());
            }
        }
    }
    envelope
}

struct Physics {
    speed: f64,
    grade_pct: f64,
    mu: f64,
    mass: f64,
    brake_force: f64,
    dead_time: f64,
    k_yaw: f64,
}

fn stop(p: &Physics) -> [f64; STATE_DIM] {
    let theta = (p.grade_pct / 100.0).atan();
    let friction_limit = G * p.mu * theta.cos();
    let brake = friction_limit.min(p.brake_force / p.mass);
    let decel = (brake - G * theta.sin()).max(MIN_DECEL);
    let utilization = brake / friction_limit;
    let distance = p.speed * p.dead_time + p.speed * p.speed / (2.0 * decel);
    let time = p.dead_time + p.speed / decel;
    let drift = p.k_yaw * distance * utilization * utilization;
    [distance, time, drift, decel]
}

/// The fingerprint settings of the simulated fleet: tags as they come, speed in 1 m/s
/// bins, grade as downhill (> 2 %), flat or uphill (< −2 %): fine enough that the model's
/// error is nearly constant inside a class, coarse enough that a class recurs.
pub fn fingerprint_config() -> FingerprintConfig {
    let mut features = std::collections::BTreeMap::new();
    features.insert(
        FEATURE_NAMES[0].to_owned(),
        Bins::Width {
            width: 1.0,
            origin: 0.0,
        },
    );
    features.insert(
        FEATURE_NAMES[1].to_owned(),
        Bins::Edges {
            edges: vec![-2.0, 2.0],
        },
    );
    FingerprintConfig {
        features,
        unknown_features: UnknownFeatures::Error,
        fleet_secret_file: None,
    }
}

/// Situations drawn per context to measure the world model's validation envelope.
const ENVELOPE_SAMPLES_PER_CONTEXT: usize = 200;

/// The braking world of a run: its class mix (drawn from the run's seed).
pub struct Braking {
    mix: ContextMix<Context>,
    bins: FingerprintConfig,
}

impl Braking {
    /// The world of a run: contexts ranked by a stream of the run's seed, as before the zoo.
    pub fn new(setup: &WorldSetup) -> Braking {
        use rand::SeedableRng;
        Braking {
            mix: ContextMix::zipf(
                Context::all(),
                setup.zipf_exponent,
                &mut SimRng::seed_from_u64(setup.seed),
            ),
            bins: fingerprint_config(),
        }
    }
}

/// What the zoo shows of this world.
const META: WorldMeta = WorldMeta {
    name: "braking",
    summary: "emergency stop: per-class bias from friction, payload and latency the model gets wrong; error grows with speed inside a 1 m/s bin",
    state_names: &STATE_NAMES,
    state_scale: &STATE_SCALE,
    feature_names: &FEATURE_NAMES,
    models: &[MODEL_ID],
};

impl World for Braking {
    fn meta(&self) -> &'static WorldMeta {
        &META
    }

    fn fingerprint_config(&self) -> FingerprintConfig {
        self.bins.clone()
    }

    fn change(&self) -> Option<Change> {
        None
    }

    fn draw(&self, _robot: usize, _round: usize, rng: &mut SimRng) -> Box<dyn Episode> {
        let context = self.mix.draw(rng);
        Box::new(BrakingEpisode {
            situation: Situation::draw(context, rng),
            bins: [
                bins_of(&self.bins, FEATURE_NAMES[0]).clone(),
                bins_of(&self.bins, FEATURE_NAMES[1]).clone(),
            ],
        })
    }

    fn residual_envelope(&self, rng: &mut SimRng) -> Vec<f64> {
        residual_envelope(ENVELOPE_SAMPLES_PER_CONTEXT, rng).to_vec()
    }
}

/// The world model's id.
pub const MODEL_ID: &str = "brake-wm/v1";

/// One braking episode: the situation and the bins its class is cut by.
struct BrakingEpisode {
    situation: Situation,
    bins: [Bins; 2],
}

impl Episode for BrakingEpisode {
    fn model(&self) -> usize {
        0
    }

    fn tags(&self) -> Vec<String> {
        self.situation.context.tags().to_vec()
    }

    fn features(&self) -> Vec<f64> {
        self.situation.features().to_vec()
    }

    fn phase(&self) -> usize {
        0
    }

    fn affected(&self) -> bool {
        false
    }

    fn predict(&self) -> Vec<f64> {
        self.situation.predict().to_vec()
    }

    fn outcome(&self, rng: &mut SimRng) -> Vec<f64> {
        self.situation.measure(rng).to_vec()
    }

    fn resample(&self, rng: &mut SimRng) -> Box<dyn Episode> {
        let s = &self.situation;
        let context = s.context;
        let speed = redraw_in_bin(s.speed_mps, &self.bins[0], rng, |r| draw_speed(context, r));
        let grade = redraw_in_bin(s.grade_pct, &self.bins[1], rng, draw_grade);
        Box::new(BrakingEpisode {
            situation: Situation {
                context,
                speed_mps: speed,
                grade_pct: grade,
            },
            bins: self.bins.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn situation(surface: u8, weather: u8, load: u8, speed: f64, grade: f64) -> Situation {
        Situation {
            context: Context {
                surface,
                weather,
                load,
                obstacle: 0,
            },
            speed_mps: speed,
            grade_pct: grade,
        }
    }

    #[test]
    fn physics_is_monotone_where_it_must_be() {
        // Faster, downhill, more slippery, heavier: each stops longer.
        let base = situation(0, 0, 0, 6.0, 0.0).predict()[0];
        assert!(situation(0, 0, 0, 8.0, 0.0).predict()[0] > base);
        assert!(situation(0, 0, 0, 6.0, 6.0).predict()[0] > base);
        assert!(situation(5, 0, 0, 6.0, 0.0).predict()[0] > base);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let light: f64 = (0..200)
            .map(|_| situation(0, 0, 0, 6.0, 0.0).measure(&mut rng)[0])
            .sum();
        let heavy: f64 = (0..200)
            .map(|_| situation(0, 0, 2, 6.0, 0.0).measure(&mut rng)[0])
            .sum();
        assert!(
            heavy > light * 1.3,
            "payload must lengthen the stop: {heavy} vs {light}"
        );
    }

    #[test]
    fn the_model_is_biased_per_class_and_reality_is_noisy() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mean_residual = |s: &Situation, rng: &mut ChaCha8Rng| {
            let p = s.predict();
            (0..400).map(|_| s.measure(rng)[0] - p[0]).sum::<f64>() / 400.0
        };
        let icy = mean_residual(&situation(5, 2, 2, 4.0, 0.0), &mut rng);
        let dry = mean_residual(&situation(0, 0, 0, 4.0, 0.0), &mut rng);
        assert!(
            icy > 2.0,
            "the model is optimistic on snowy ice with payload: {icy}"
        );
        assert!(dry.abs() < 1.0, "and nearly right on dry asphalt: {dry}");
        let s = situation(1, 1, 1, 7.0, 2.0);
        assert_ne!(s.measure(&mut rng), s.measure(&mut rng));
    }

    #[test]
    fn the_envelope_bounds_every_class_mean_and_is_finite() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let envelope = residual_envelope(200, &mut rng);
        eprintln!(
            "envelope (scale units): {:?}",
            std::array::from_fn::<f64, STATE_DIM, _>(|d| envelope[d] / STATE_SCALE[d])
        );
        assert!(envelope.iter().all(|e| e.is_finite() && *e > 0.0));
        let icy = situation(5, 2, 2, 4.0, 0.0);
        let p = icy.predict();
        for _ in 0..200 {
            let m = icy.measure(&mut rng);
            for d in 0..STATE_DIM {
                assert!((m[d] - p[d]).abs() <= envelope[d] * 1.5, "component {d}");
            }
        }
    }

    #[test]
    fn zipf_mix_is_skewed_and_reproducible() {
        let mix = ContextMix::zipf(Context::all(), 1.0, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(mix.len(), 216);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..20_000 {
            *counts.entry(mix.draw(&mut rng)).or_insert(0u32) += 1;
        }
        let max = *counts.values().max().unwrap();
        assert!(max > 2_000, "the head context is frequent: {max}");
        assert!(
            counts.len() > 150,
            "and most contexts still occur: {}",
            counts.len()
        );
        let again = ContextMix::zipf(Context::all(), 1.0, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(again.contexts, mix.contexts);
    }

    #[test]
    fn the_fingerprint_config_is_valid_and_bins_speed() {
        let fp = fingerprint_config().validate().unwrap();
        let s = situation(0, 0, 0, 6.2, 0.3);
        let names: Vec<String> = FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
        let a = fp
            .fingerprint(&s.context.tags(), &names, &s.features())
            .unwrap();
        let b = fp
            .fingerprint(&s.context.tags(), &names, &[6.9, -1.0])
            .unwrap();
        let c = fp
            .fingerprint(&s.context.tags(), &names, &[7.1, -1.0])
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
