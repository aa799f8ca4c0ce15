//! What a prediction gets back on `corrected_prior`. A planner that publishes a
//! prediction and waits for its prior must never starve, so a prediction the node refuses
//! is still answered whenever something can be echoed:
//!
//! - **Usable `state`** (1..=`MAX_STATE_DIM` finite values), refused for anything else (a
//!   scenario that cannot be fingerprinted, such as a numeric feature with no bins under
//!   `unknown_features: error`; a bad `model_id`, covariance or embedding; an empty or
//!   oversized `episode_id`): the prediction's own state, unchanged, with `MATCH_NONE`,
//!   confidence 0, zero correction, no support and an empty `fingerprint` (no address was
//!   used). Its covariance is the prediction's when it is a valid one, else
//!   `synthesis.default_variance × I`: exactly what a prediction at an address the fleet
//!   knows nothing about gets, so `MATCH_NONE` keeps one meaning.
//! - **No usable state** (empty, NaN/infinite, longer than `MAX_STATE_DIM`) but a valid
//!   `episode_id`: the ids and header with an empty state, covariance and correction, so
//!   the planner waiting for that episode learns at once that it has no prior and falls
//!   back to its own prediction. NaN is not echoed: every published prior is finite.
//! - **Neither**: no answer; nothing would let a planner recognise it as its own.
//! - **Duplicate `episode_id`** (pending, or paired recently): the planner is most likely
//!   retrying a prediction whose answer it missed, or re-planning within the episode, so
//!   it gets the full corrected prior for the state it sent, computed as for any other
//!   prediction. Only the pairing refuses it: the outcome still pairs with the first
//!   prediction of the episode, which is not replaced.
//!
//! Every refusal is counted by kind (`rejected.<kind>` in `/diagnostics`) and logged at
//! WARN the first time its kind occurs, later at DEBUG only: a planner sending bad input
//! at 100 Hz fills the counters, not the log.

use nalgebra::DMatrix;

use crate::core::discrepancy::Covariance;
use crate::ros::msgs::{CorrectedPrior, Prediction};

use super::diagnostics::RejectKind;
use super::input::{self, InputError};

/// The node's answer to one prediction.
#[derive(Clone, Debug, PartialEq)]
pub enum PredictionAnswer {
    /// Corrected and kept for its outcome.
    Accepted(CorrectedPrior),
    /// Not kept for its outcome, counted under `reason`'s kind.
    Refused {
        /// What is still published: the echo of the prediction, or the corrected prior of
        /// a duplicate episode; `None` when neither the state nor the episode id is usable.
        prior: Option<CorrectedPrior>,
        /// Why the prediction was refused.
        reason: InputError,
    },
}

impl PredictionAnswer {
    /// The message to publish on `corrected_prior`, if there is one.
    pub fn prior(&self) -> Option<&CorrectedPrior> {
        match self {
            PredictionAnswer::Accepted(p) => Some(p),
            PredictionAnswer::Refused { prior, .. } => prior.as_ref(),
        }
    }

    /// Why the prediction was refused, if it was.
    pub fn refusal(&self) -> Option<&InputError> {
        match self {
            PredictionAnswer::Accepted(_) => None,
            PredictionAnswer::Refused { reason, .. } => Some(reason),
        }
    }

    /// The prior of an accepted prediction, else why it was refused.
    pub fn accepted(self) -> Result<CorrectedPrior, InputError> {
        match self {
            PredictionAnswer::Accepted(p) => Ok(p),
            PredictionAnswer::Refused { reason, .. } => Err(reason),
        }
    }
}

/// The uncorrected answer to a refused prediction (the rules are in the module doc);
/// `default_variance` is the `synthesis.default_variance` in force.
pub fn echo(p: &Prediction, default_variance: f64) -> Option<CorrectedPrior> {
    let answer = |state: Vec<f64>, covariance: Vec<f64>| CorrectedPrior {
        header: p.header.clone(),
        episode_id: p.episode_id.clone(),
        model_id: p.model_id.clone(),
        fingerprint: String::new(),
        r#match: CorrectedPrior::MATCH_NONE,
        correction: vec![0.0; state.len()],
        state,
        covariance,
        support: 0,
        sources: 0,
        confidence: 0.0,
    };
    match input::state("state", &p.state) {
        Ok(state) => {
            let n = state.len();
            let covariance = Covariance::from_flat(&p.covariance, n)
                .ok()
                .and_then(|c| c.to_matrix())
                .unwrap_or_else(|| DMatrix::from_diagonal_element(n, n, default_variance));
            Some(answer(p.state.clone(), input::row_major(&covariance)))
        }
        Err(_) if input::episode_id(&p.episode_id).is_ok() => Some(answer(vec![], vec![])),
        Err(_) => None,
    }
}

/// Logs refused predictions: the first of each kind at WARN, the rest at DEBUG (their
/// number is in `/diagnostics`). Once per node lifetime, not per interval: the counters
/// say how often, the log only needs to say that it happens and why.
#[derive(Clone, Debug, Default)]
pub struct RefusalLog {
    logged: [bool; RejectKind::ALL.len()],
}

impl RefusalLog {
    /// Logs one refused prediction; `answered` says whether a prior was still published.
    pub fn log(&mut self, reason: &InputError, episode_id: &str, answered: bool) {
        let kind = reason.kind();
        let first = !std::mem::replace(&mut self.logged[kind.index()], true);
        if first {
            tracing::warn!(
                episode_id,
                kind = kind.as_str(),
                answered,
                "prediction refused: {reason}; further {} refusals are counted in \
                 /diagnostics (rejected.{}) and logged at debug level only",
                kind.as_str(),
                kind.as_str()
            );
        } else {
            tracing::debug!(
                episode_id,
                kind = kind.as_str(),
                answered,
                "prediction refused: {reason}"
            );
        }
    }

    /// Whether a refusal of `kind` has been logged at WARN.
    pub fn logged(&self, kind: RejectKind) -> bool {
        self.logged[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(ep: &str, state: &[f64], covariance: &[f64]) -> Prediction {
        Prediction {
            episode_id: ep.into(),
            model_id: "wm-1".into(),
            state: state.to_vec(),
            covariance: covariance.to_vec(),
            ..Prediction::default()
        }
    }

    #[test]
    fn echo_keeps_the_state_and_a_valid_covariance() {
        let e = echo(&prediction("e", &[1.0, -2.0], &[4.0, 9.0]), 1.0).unwrap();
        assert_eq!(e.state, vec![1.0, -2.0]);
        assert_eq!(e.covariance, vec![4.0, 0.0, 0.0, 9.0]);
        assert_eq!(e.correction, vec![0.0, 0.0]);
        assert_eq!(e.r#match, CorrectedPrior::MATCH_NONE);
        assert_eq!((e.confidence, e.support, e.sources), (0.0, 0, 0));
        assert_eq!(e.fingerprint, "");
        // A covariance that is none is replaced by the default, as for an unknown address.
        let bad = echo(&prediction("e", &[1.0, -2.0], &[1.0, 2.0, 3.0]), 0.5).unwrap();
        assert_eq!(bad.covariance, vec![0.5, 0.0, 0.0, 0.5]);
    }

    #[test]
    fn echo_without_a_state_needs_a_valid_episode_id() {
        let nan = echo(&prediction("e", &[f64::NAN], &[]), 1.0).unwrap();
        assert!(nan.state.is_empty() && nan.covariance.is_empty());
        assert_eq!(nan.episode_id, "e");
        assert!(
            echo(&prediction("e", &[], &[]), 1.0)
                .unwrap()
                .state
                .is_empty()
        );
        assert_eq!(echo(&prediction("", &[f64::NAN], &[]), 1.0), None);
        // With a usable state even an empty episode id is answered.
        assert_eq!(
            echo(&prediction("", &[3.0], &[]), 1.0).unwrap().state,
            vec![3.0]
        );
    }

    /// WARN lines written while `f` runs.
    fn warnings(f: impl FnOnce()) -> String {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let out = buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&out).into_owned()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refusals_are_logged_at_warn_once_per_kind() {
        let mut log = RefusalLog::default();
        let dup = InputError::Duplicate {
            episode_id: "e".into(),
            what: "prediction",
        };
        let ids = InputError::BadId(crate::core::ids::IdError::Empty { kind: "model_id" });
        let out = warnings(|| {
            // A planner at 100 Hz for a second.
            for _ in 0..100 {
                log.log(&dup, "e", true);
            }
            log.log(&ids, "f", true);
        });
        assert_eq!(out.lines().count(), 2, "{out}");
        assert_eq!(out.matches("kind=\"duplicate\"").count(), 1, "{out}");
        assert_eq!(out.matches("kind=\"bad_id\"").count(), 1, "{out}");
        assert!(log.logged(RejectKind::Duplicate));
        assert!(!log.logged(RejectKind::BadScenario));
    }
}
