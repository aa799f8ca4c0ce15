//! The privacy budget (DESIGN 6): when an own record may leave the robot.
//!
//! A record is a cumulative summary, so two consecutive versions can be differenced: if
//! they differ by one outcome, the difference is that outcome's residual. The budget
//! therefore shares an address's record only once it holds at least `k` own outcomes,
//! and a newer version only once it holds at least `k` more than the version last
//! shared. Whatever an observer records on the wire, each difference it can form covers
//! at least `k` outcomes: it learns means of `k` or more residuals, never a single one.

/// Default `k`: own outcomes before an address is shared, and between two shares.
pub const DEFAULT_MIN_COUNT_TO_SHARE: u64 = 5;

/// The sharing rule for own records (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivacyBudget {
    /// `k`, at least 1 (1 = every version is shared: no privacy).
    pub min_count: u64,
}

impl Default for PrivacyBudget {
    fn default() -> Self {
        PrivacyBudget {
            min_count: DEFAULT_MIN_COUNT_TO_SHARE,
        }
    }
}

impl PrivacyBudget {
    /// Whether a record holding `count` own outcomes may be shared when the version last
    /// shared held `last_shared` (0 = none shared yet).
    pub fn may_share(&self, count: u64, last_shared: u64) -> bool {
        let k = self.min_count.max(1);
        count >= k && count >= last_shared.saturating_add(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shared_difference_covers_k_outcomes() {
        let b = PrivacyBudget { min_count: 5 };
        let mut last = 0;
        let mut shared = Vec::new();
        for count in 1..=23 {
            if b.may_share(count, last) {
                shared.push(count);
                last = count;
            }
        }
        assert_eq!(shared, vec![5, 10, 15, 20]);
        assert!(PrivacyBudget { min_count: 1 }.may_share(1, 0));
        // Saturating, never an overflow panic.
        let _ = b.may_share(u64::MAX, u64::MAX);
    }
}
