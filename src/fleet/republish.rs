//! The traffic budget on own records: a new version of a record is put on the network
//! only when its outcome count grew by a factor since the version last put. On top of
//! the privacy budget (which lets a version out only after k new outcomes), it makes a
//! robot's puts per address grow with the logarithm of its outcomes there, not linearly:
//! at an address met n times, about `log(n / k) / log(growth)` puts.
//!
//! A held-back version is still the one served to queries (and so reaches anti-entropy
//! and first-encounter fetches); only its push to the followers waits. A version whose
//! count is below the last one put starts a fresh epoch (a drift restarted the summary)
//! and goes out at once: followers must learn that the world changed.

use serde::Serialize;
use thiserror::Error;

/// Default growth factor of the outcome count between two puts of one record.
pub const DEFAULT_REPUBLISH_GROWTH: f64 = 1.25;

/// A growth factor that is not finite or below 1.
#[derive(Debug, Error, Clone, Copy, PartialEq)]
#[error("republish growth must be finite and >= 1, got {0}")]
pub struct BadGrowth(pub f64);

/// The republishing rule: put a version when its count reached `growth` times the count
/// last put (1 = every version).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RepublishPolicy {
    growth: f64,
}

impl Default for RepublishPolicy {
    fn default() -> Self {
        RepublishPolicy {
            growth: DEFAULT_REPUBLISH_GROWTH,
        }
    }
}

impl RepublishPolicy {
    /// The rule for a growth factor (finite, >= 1).
    pub fn new(growth: f64) -> Result<Self, BadGrowth> {
        if growth.is_finite() && growth >= 1.0 {
            Ok(RepublishPolicy { growth })
        } else {
            Err(BadGrowth(growth))
        }
    }

    /// The growth factor.
    pub fn growth(&self) -> f64 {
        self.growth
    }

    /// Whether a version with `count` outcomes is put, given the count of the version
    /// last put (`0`: none yet).
    pub fn due(&self, last_put: u64, count: u64) -> bool {
        last_put == 0 || count < last_put || count as f64 >= last_put as f64 * self.growth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_grow_geometrically_and_a_fresh_epoch_goes_out_at_once() {
        let p = RepublishPolicy::default();
        let mut last = 0;
        let mut puts = Vec::new();
        for count in 1..=100 {
            if p.due(last, count) {
                puts.push(count);
                last = count;
            }
        }
        assert_eq!(puts[..6], [1, 2, 3, 4, 5, 7]);
        assert_eq!(puts.len(), 17, "{puts:?}");
        assert!(p.due(40, 3), "a count below the last put is a fresh epoch");
        assert!(!p.due(40, 49));
        assert!(p.due(40, 50));
    }

    #[test]
    fn growth_one_puts_every_version_and_bad_factors_are_refused() {
        let p = RepublishPolicy::new(1.0).unwrap();
        assert!((1..50).all(|c| p.due(c, c + 1)));
        for bad in [0.99, f64::NAN, f64::INFINITY, -1.0] {
            assert!(RepublishPolicy::new(bad).is_err(), "{bad}");
        }
    }
}
