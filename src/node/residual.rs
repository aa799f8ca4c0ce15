//! Residual of a paired outcome: measured − predicted, its Euclidean norm and its
//! Mahalanobis norm under the combined covariance (prediction + measurement noise).
// Kept here until `core::discrepancy` lands on main; then this delegates to it.

use nalgebra::{DMatrix, DVector};

/// The residual and its norms.
#[derive(Clone, Debug, PartialEq)]
pub struct Residual {
    /// measured − predicted.
    pub residual: DVector<f64>,
    /// ‖residual‖₂.
    pub error_norm: f64,
    /// √(rᵀ S⁻¹ r) with S the sum of the given covariances; NaN when none was given
    /// or S is not positive definite.
    pub mahalanobis: f64,
}

/// Computes the residual of `measured` against `predicted` (same length, checked by the caller).
pub fn residual(
    predicted: &DVector<f64>,
    measured: &DVector<f64>,
    predicted_cov: Option<&DMatrix<f64>>,
    measured_cov: Option<&DMatrix<f64>>,
) -> Residual {
    let r = measured - predicted;
    let combined = match (predicted_cov, measured_cov) {
        (None, None) => None,
        (Some(p), None) => Some(p.clone()),
        (None, Some(m)) => Some(m.clone()),
        (Some(p), Some(m)) => Some(p + m),
    };
    let mahalanobis = combined
        .and_then(|s| s.cholesky())
        .map(|ch| r.dot(&ch.solve(&r)).max(0.0).sqrt())
        .unwrap_or(f64::NAN);
    Residual {
        error_norm: r.norm(),
        residual: r,
        mahalanobis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms() {
        let p = DVector::from_vec(vec![1.0, 2.0]);
        let m = DVector::from_vec(vec![4.0, 6.0]);
        let r = residual(&p, &m, None, None);
        assert_eq!(r.residual.as_slice(), &[3.0, 4.0]);
        assert_eq!(r.error_norm, 5.0);
        assert!(r.mahalanobis.is_nan());
        let cov = DMatrix::from_diagonal(&DVector::from_vec(vec![9.0, 16.0]));
        let r = residual(&p, &m, Some(&cov), None);
        assert!((r.mahalanobis - 2f64.sqrt()).abs() < 1e-12);
        // Prediction and measurement noise add up.
        let half = &cov * 0.5;
        let r2 = residual(&p, &m, Some(&half), Some(&half));
        assert!((r2.mahalanobis - r.mahalanobis).abs() < 1e-12);
        let singular = DMatrix::zeros(2, 2);
        assert!(residual(&p, &m, Some(&singular), None).mahalanobis.is_nan());
    }
}
