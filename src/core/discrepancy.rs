//! Discrepancy between a prediction and the measured outcome: the residual, its
//! Euclidean norm and its Mahalanobis distance under the combined covariance.

use nalgebra::{DMatrix, DVector};
use thiserror::Error;

use super::MAX_STATE_DIM;

/// Why a discrepancy could not be computed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DiscrepancyError {
    /// The two state vectors differ in length.
    #[error("dimension mismatch: predicted has {predicted} values, measured has {measured}")]
    DimensionMismatch {
        /// Length of the predicted state.
        predicted: usize,
        /// Length of the measured state.
        measured: usize,
    },
    /// A state or covariance is longer than [`MAX_STATE_DIM`] allows.
    #[error("oversized {what}: {len} values, at most {max}")]
    Oversized {
        /// Which array.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A value is NaN or infinite.
    #[error("non-finite value in {what} at index {index}")]
    NonFinite {
        /// Which array.
        what: &'static str,
        /// Index of the first bad value.
        index: usize,
    },
    /// A covariance has a length other than 0, n or n*n.
    #[error("covariance has {len} values; expected 0, {n} (diagonal) or {nn} (full)", nn = n * n)]
    CovarianceShape {
        /// Its length.
        len: usize,
        /// The state dimension.
        n: usize,
    },
    /// A covariance is not symmetric positive definite (Cholesky failed).
    #[error("covariance is not positive definite")]
    NotPositiveDefinite,
}

/// A covariance as given on the wire: absent, diagonal or full.
#[derive(Clone, Debug, PartialEq)]
pub enum Covariance {
    /// No covariance given.
    None,
    /// Per-dimension variances.
    Diagonal(DVector<f64>),
    /// Full symmetric matrix.
    Full(DMatrix<f64>),
}

impl Covariance {
    /// Reads a message's flat covariance (empty, `n` diagonal or `n*n` row-major) for
    /// state dimension `n`, checking shape, finiteness and (for a full matrix) symmetry.
    pub fn from_flat(flat: &[f64], n: usize) -> Result<Covariance, DiscrepancyError> {
        check_len("covariance", flat.len(), MAX_STATE_DIM * MAX_STATE_DIM)?;
        check_finite("covariance", flat)?;
        match flat.len() {
            0 => Ok(Covariance::None),
            l if l == n => {
                if flat.iter().any(|&v| v <= 0.0) {
                    return Err(DiscrepancyError::NotPositiveDefinite);
                }
                Ok(Covariance::Diagonal(DVector::from_column_slice(flat)))
            }
            l if l == n * n => {
                let m = DMatrix::from_row_slice(n, n, flat);
                let scale = m.amax().max(f64::MIN_POSITIVE);
                if (&m - m.transpose()).amax() > 1e-9 * scale {
                    return Err(DiscrepancyError::NotPositiveDefinite);
                }
                Ok(Covariance::Full(m))
            }
            len => Err(DiscrepancyError::CovarianceShape { len, n }),
        }
    }

    /// The covariance as a dense matrix (`None` when absent).
    pub fn to_matrix(&self) -> Option<DMatrix<f64>> {
        match self {
            Covariance::None => None,
            Covariance::Diagonal(d) => Some(DMatrix::from_diagonal(d)),
            Covariance::Full(m) => Some(m.clone()),
        }
    }

    /// Sum of two covariances (prediction uncertainty plus measurement noise).
    pub fn sum(&self, other: &Covariance) -> Covariance {
        match (self, other) {
            (Covariance::None, c) | (c, Covariance::None) => c.clone(),
            (Covariance::Diagonal(a), Covariance::Diagonal(b)) => Covariance::Diagonal(a + b),
            (a, b) => match (a.to_matrix(), b.to_matrix()) {
                (Some(a), Some(b)) => Covariance::Full(a + b),
                _ => Covariance::None,
            },
        }
    }
}

/// The difference between what was predicted and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Discrepancy {
    /// measured − predicted.
    pub residual: Vec<f64>,
    /// Euclidean norm of the residual.
    pub error_norm: f64,
    /// sqrt(rᵀ Σ⁻¹ r) under the covariance; NaN when no covariance was given.
    pub mahalanobis: f64,
}

impl Discrepancy {
    /// Computes the residual of `measured` against `predicted` and its norms; `cov` is the
    /// covariance of the residual (usually prediction plus measurement covariance).
    pub fn compute(
        predicted: &[f64],
        measured: &[f64],
        cov: &Covariance,
    ) -> Result<Discrepancy, DiscrepancyError> {
        check_len("predicted state", predicted.len(), MAX_STATE_DIM)?;
        check_len("measured state", measured.len(), MAX_STATE_DIM)?;
        if predicted.len() != measured.len() {
            return Err(DiscrepancyError::DimensionMismatch {
                predicted: predicted.len(),
                measured: measured.len(),
            });
        }
        check_finite("predicted state", predicted)?;
        check_finite("measured state", measured)?;
        let residual: Vec<f64> = measured.iter().zip(predicted).map(|(m, p)| m - p).collect();
        // Finite inputs of opposite sign near f64::MAX overflow the difference.
        check_finite("residual", &residual)?;
        let error_norm = scaled_norm(residual.iter().copied());
        let n = residual.len();
        let mahalanobis = match cov {
            Covariance::None => f64::NAN,
            Covariance::Diagonal(d) => {
                if d.len() != n {
                    return Err(DiscrepancyError::CovarianceShape { len: d.len(), n });
                }
                scaled_norm(residual.iter().zip(d.iter()).map(|(r, v)| r / v.sqrt()))
            }
            Covariance::Full(m) => {
                if m.nrows() != n || m.ncols() != n {
                    return Err(DiscrepancyError::CovarianceShape { len: m.len(), n });
                }
                let chol = m
                    .clone()
                    .cholesky()
                    .ok_or(DiscrepancyError::NotPositiveDefinite)?;
                // rᵀ Σ⁻¹ r = |L⁻¹ r|², one triangular solve instead of an inverse.
                let r = DVector::from_column_slice(&residual);
                let z = chol
                    .l_dirty()
                    .solve_lower_triangular(&r)
                    .ok_or(DiscrepancyError::NotPositiveDefinite)?;
                scaled_norm(z.iter().copied())
            }
        };
        Ok(Discrepancy {
            residual,
            error_norm,
            mahalanobis,
        })
    }
}

/// Euclidean norm without overflow for large finite components (squares are taken of
/// values scaled by the largest magnitude).
fn scaled_norm(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let scale = values.clone().fold(0.0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return scale;
    }
    scale * values.map(|v| (v / scale).powi(2)).sum::<f64>().sqrt()
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), DiscrepancyError> {
    if len > max {
        return Err(DiscrepancyError::Oversized { what, len, max });
    }
    Ok(())
}

fn check_finite(what: &'static str, values: &[f64]) -> Result<(), DiscrepancyError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(DiscrepancyError::NonFinite { what, index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_and_euclidean_norm() {
        let d = Discrepancy::compute(&[1.0, 2.0], &[4.0, 6.0], &Covariance::None).unwrap();
        assert_eq!(d.residual, vec![3.0, 4.0]);
        assert!((d.error_norm - 5.0).abs() < 1e-12);
        assert!(d.mahalanobis.is_nan());
    }

    #[test]
    fn diagonal_mahalanobis_scales_by_variance() {
        let cov = Covariance::from_flat(&[9.0, 16.0], 2).unwrap();
        let d = Discrepancy::compute(&[0.0, 0.0], &[3.0, 4.0], &cov).unwrap();
        assert!((d.mahalanobis - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn full_mahalanobis_matches_inverse() {
        let flat = [4.0, 1.0, 1.0, 3.0];
        let cov = Covariance::from_flat(&flat, 2).unwrap();
        let d = Discrepancy::compute(&[0.0, 0.0], &[1.0, 2.0], &cov).unwrap();
        let m = DMatrix::from_row_slice(2, 2, &flat);
        let r = DVector::from_column_slice(&[1.0, 2.0]);
        let expected = (r.transpose() * m.try_inverse().unwrap() * &r)[(0, 0)].sqrt();
        assert!((d.mahalanobis - expected).abs() < 1e-12);
        // The same matrix given as a diagonal-only equivalent differs: off-diagonals count.
        let diag = Covariance::from_flat(&[4.0, 3.0], 2).unwrap();
        let d2 = Discrepancy::compute(&[0.0, 0.0], &[1.0, 2.0], &diag).unwrap();
        assert!((d.mahalanobis - d2.mahalanobis).abs() > 1e-3);
    }

    #[test]
    fn not_positive_definite_is_a_typed_error() {
        let cov = Covariance::from_flat(&[1.0, 2.0, 2.0, 1.0], 2).unwrap();
        assert_eq!(
            Discrepancy::compute(&[0.0, 0.0], &[1.0, 1.0], &cov),
            Err(DiscrepancyError::NotPositiveDefinite)
        );
        assert_eq!(
            Covariance::from_flat(&[1.0, 0.0], 2),
            Err(DiscrepancyError::NotPositiveDefinite)
        );
        assert_eq!(
            Covariance::from_flat(&[1.0, 0.5, 0.0, 1.0], 2),
            Err(DiscrepancyError::NotPositiveDefinite)
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(matches!(
            Discrepancy::compute(&[0.0], &[1.0, 2.0], &Covariance::None),
            Err(DiscrepancyError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            Discrepancy::compute(&[f64::NAN], &[1.0], &Covariance::None),
            Err(DiscrepancyError::NonFinite { index: 0, .. })
        ));
        assert!(matches!(
            Discrepancy::compute(&[0.0; 65], &[0.0; 65], &Covariance::None),
            Err(DiscrepancyError::Oversized { .. })
        ));
        assert!(matches!(
            Covariance::from_flat(&[1.0, 1.0, 1.0], 2),
            Err(DiscrepancyError::CovarianceShape { len: 3, n: 2 })
        ));
        assert!(matches!(
            Covariance::from_flat(&[f64::INFINITY], 1),
            Err(DiscrepancyError::NonFinite { .. })
        ));
    }

    #[test]
    fn huge_finite_values_do_not_overflow_the_norm() {
        // Found by test/fuzz.rs: the squared residual overflowed to an infinite norm.
        let d = Discrepancy::compute(&[1.690600094333484e230], &[-0.0], &Covariance::None).unwrap();
        assert!((d.error_norm - 1.690600094333484e230).abs() < 1e216);
        let d = Discrepancy::compute(&[0.0, 0.0], &[3e200, 4e200], &Covariance::None).unwrap();
        assert!((d.error_norm / 5e200 - 1.0).abs() < 1e-12);
        assert!(matches!(
            Discrepancy::compute(&[-1.7e308], &[1.7e308], &Covariance::None),
            Err(DiscrepancyError::NonFinite {
                what: "residual",
                ..
            })
        ));
    }

    #[test]
    fn covariances_add() {
        let a = Covariance::from_flat(&[1.0, 2.0], 2).unwrap();
        let b = Covariance::from_flat(&[1.0, 0.5, 0.5, 1.0], 2).unwrap();
        let s = a.sum(&b).to_matrix().unwrap();
        assert_eq!(s, DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 3.0]));
        assert_eq!(Covariance::None.sum(&a), a);
    }
}
