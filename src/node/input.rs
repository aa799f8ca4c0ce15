//! Checks on what arrives on the `prediction` and `outcome` topics, before anything is
//! computed from it: every refusal is an [`InputError`] that names its [`RejectKind`].

use nalgebra::{DMatrix, DVector};
use thiserror::Error;

use crate::core::MAX_STATE_DIM;
use crate::core::discrepancy::DiscrepancyError;
use crate::core::fingerprint::FingerprintError;
use crate::core::ids::{IdError, MAX_NAME_LEN};
use crate::core::memory::MemoryError;
use crate::core::neighbors::NeighborError;
use crate::core::synthesis::SynthesisError;

use super::diagnostics::RejectKind;

/// Why an input message was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InputError {
    /// An outcome for an episode with no pending prediction (never seen, or timed out).
    #[error("outcome for episode {episode_id:?} has no pending prediction")]
    NoPrediction {
        /// The episode.
        episode_id: String,
    },
    /// A second prediction or outcome for the same episode.
    #[error("episode {episode_id:?} already has a {what}")]
    Duplicate {
        /// The episode.
        episode_id: String,
        /// "pending prediction" or "paired outcome".
        what: &'static str,
    },
    /// Lengths that do not agree.
    #[error("{what}: expected {expected}, got {got}")]
    DimensionMismatch {
        /// Which array.
        what: &'static str,
        /// Length expected.
        expected: String,
        /// Length received.
        got: usize,
    },
    /// NaN or infinity.
    #[error("{what}[{index}] is {value}, expected a finite number")]
    NonFinite {
        /// Which array.
        what: &'static str,
        /// Position of the first bad value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Longer than allowed.
    #[error("{what} has length {len}, at most {max} allowed")]
    Oversized {
        /// Which array or string.
        what: &'static str,
        /// Length received.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A scenario that cannot be fingerprinted.
    #[error("scenario refused: {0}")]
    BadScenario(FingerprintError),
    /// An invalid identifier.
    #[error("{0}")]
    BadId(IdError),
    /// An outcome whose residual is beyond `validation.max_abs_residual`: folding it in
    /// would make the summary overflow or dominate every prior.
    #[error(
        "outcome residual {value:e} in component {index} exceeds the bound {max:e} (validation.max_abs_residual)"
    )]
    HugeOutcome {
        /// State component.
        index: usize,
        /// The residual.
        value: f64,
        /// The bound.
        max: f64,
    },
    /// A covariance that cannot be one.
    #[error("{what}: {reason}")]
    BadCovariance {
        /// Which covariance.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl InputError {
    /// The diagnostics counter this error goes to.
    pub fn kind(&self) -> RejectKind {
        match self {
            InputError::NoPrediction { .. } => RejectKind::NoPrediction,
            InputError::Duplicate { .. } => RejectKind::Duplicate,
            InputError::DimensionMismatch { .. } => RejectKind::DimensionMismatch,
            InputError::NonFinite { .. } => RejectKind::NonFinite,
            InputError::Oversized { .. } => RejectKind::Oversized,
            InputError::BadScenario(_) => RejectKind::BadScenario,
            InputError::BadId(IdError::TooLong { .. }) => RejectKind::Oversized,
            InputError::BadId(_) => RejectKind::BadId,
            InputError::BadCovariance { .. } => RejectKind::BadCovariance,
            InputError::HugeOutcome { .. } => RejectKind::HugeOutcome,
        }
    }
}

impl From<FingerprintError> for InputError {
    fn from(e: FingerprintError) -> Self {
        match e {
            FingerprintError::TooMany { what, got, max } => InputError::Oversized {
                what: if what == "tags" {
                    "scenario.tags"
                } else {
                    "scenario.features"
                },
                len: got,
                max,
            },
            FingerprintError::BadValue { value, .. } if !value.is_finite() => {
                InputError::NonFinite {
                    what: "scenario.features",
                    index: 0,
                    value,
                }
            }
            other => InputError::BadScenario(other),
        }
    }
}

impl From<DiscrepancyError> for InputError {
    fn from(e: DiscrepancyError) -> Self {
        match e {
            DiscrepancyError::DimensionMismatch {
                predicted,
                measured,
            } => InputError::DimensionMismatch {
                what: "outcome.state (prediction's dimension)",
                expected: predicted.to_string(),
                got: measured,
            },
            DiscrepancyError::Oversized { what, len, max } => {
                InputError::Oversized { what, len, max }
            }
            DiscrepancyError::NonFinite { what, index } => InputError::NonFinite {
                what,
                index,
                value: f64::NAN,
            },
            DiscrepancyError::CovarianceShape { len, n } => InputError::DimensionMismatch {
                what: "covariance",
                expected: format!("0, {n} or {}", n * n),
                got: len,
            },
            DiscrepancyError::NotPositiveDefinite => InputError::BadCovariance {
                what: "covariance",
                reason: "not symmetric positive definite".into(),
            },
        }
    }
}

impl From<NeighborError> for InputError {
    fn from(e: NeighborError) -> Self {
        match e {
            NeighborError::NonFiniteEmbedding { index } => InputError::NonFinite {
                what: "scenario.embedding",
                index,
                value: f64::NAN,
            },
            NeighborError::OversizedEmbedding { len } => InputError::Oversized {
                what: "scenario.embedding",
                len,
                max: crate::core::neighbors::MAX_EMBEDDING_DIM,
            },
            other => InputError::BadCovariance {
                what: "scenario sketch",
                reason: other.to_string(),
            },
        }
    }
}

impl From<MemoryError> for InputError {
    fn from(e: MemoryError) -> Self {
        // Inputs are checked before they reach the memory, so these only fire when a
        // record's shape disagrees with the prediction's.
        match e {
            MemoryError::Synthesis(SynthesisError::BadCovariance { rows, n, .. }) => {
                InputError::DimensionMismatch {
                    what: "covariance rows",
                    expected: n.to_string(),
                    got: rows,
                }
            }
            MemoryError::Synthesis(SynthesisError::BadDimension { dim }) => {
                InputError::DimensionMismatch {
                    what: "state",
                    expected: format!("1..={MAX_STATE_DIM}"),
                    got: dim,
                }
            }
            MemoryError::Synthesis(SynthesisError::DimensionMismatch { expected, got, .. }) => {
                InputError::DimensionMismatch {
                    what: "fleet summary dimension",
                    expected: expected.to_string(),
                    got,
                }
            }
            MemoryError::OwnAddressesFull { max } => InputError::Oversized {
                what: "own addresses (memory.max_own_addresses)",
                len: max + 1,
                max,
            },
            MemoryError::Summary(s) => InputError::DimensionMismatch {
                what: "residual",
                expected: s.to_string(),
                got: 0,
            },
        }
    }
}

/// Checks an `episode_id`: non-empty and at most [`MAX_NAME_LEN`] bytes.
pub fn episode_id(id: &str) -> Result<(), InputError> {
    if id.is_empty() {
        return Err(InputError::BadId(IdError::Empty { kind: "episode_id" }));
    }
    if id.len() > MAX_NAME_LEN {
        return Err(InputError::Oversized {
            what: "episode_id",
            len: id.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

/// Checks that every value is finite.
pub fn finite<T: Copy + Into<f64>>(what: &'static str, values: &[T]) -> Result<(), InputError> {
    match values.iter().position(|v| !(*v).into().is_finite()) {
        Some(index) => Err(InputError::NonFinite {
            what,
            index,
            value: values[index].into(),
        }),
        None => Ok(()),
    }
}

/// Checks a state vector: 1..=[`MAX_STATE_DIM`] finite values.
pub fn state(what: &'static str, values: &[f64]) -> Result<DVector<f64>, InputError> {
    if values.len() > MAX_STATE_DIM {
        return Err(InputError::Oversized {
            what,
            len: values.len(),
            max: MAX_STATE_DIM,
        });
    }
    if values.is_empty() {
        return Err(InputError::DimensionMismatch {
            what,
            expected: format!("1..={MAX_STATE_DIM}"),
            got: 0,
        });
    }
    finite(what, values)?;
    Ok(DVector::from_column_slice(values))
}

/// Flattens an n × n matrix row-major, as the messages carry it.
pub fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    m.transpose().as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_bounds() {
        assert_eq!(
            state("s", &[]).unwrap_err().kind(),
            RejectKind::DimensionMismatch
        );
        let big = vec![0.0; MAX_STATE_DIM + 1];
        assert_eq!(state("s", &big).unwrap_err().kind(), RejectKind::Oversized);
        assert_eq!(
            state("s", &[1.0, f64::INFINITY]).unwrap_err().kind(),
            RejectKind::NonFinite
        );
        assert_eq!(state("s", &[1.0, 2.0]).unwrap().len(), 2);
    }

    #[test]
    fn episode_ids() {
        assert_eq!(episode_id("").unwrap_err().kind(), RejectKind::BadId);
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(episode_id(&long).unwrap_err().kind(), RejectKind::Oversized);
        episode_id("ep-1").unwrap();
    }
}
