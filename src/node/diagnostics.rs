//! What the node counts about itself: inputs accepted and rejected (by kind), the
//! pairing table, the fleet records received, and the shadow-mode error balance. The
//! binding turns a [`Report`] into `diagnostic_msgs/DiagnosticArray`.

/// Why an input was refused; each kind has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// An outcome whose episode has no pending prediction.
    NoPrediction,
    /// A prediction for an episode already pending, or an outcome for one already paired.
    Duplicate,
    /// Arrays whose lengths do not agree (state vs covariance, outcome vs prediction).
    DimensionMismatch,
    /// NaN or infinity in a state, covariance or embedding.
    NonFinite,
    /// An array or string longer than the configured bounds.
    Oversized,
    /// A scenario that cannot be fingerprinted (bad tag, unknown feature, ...).
    BadScenario,
    /// An empty or invalid `episode_id` or `model_id`.
    BadId,
    /// A covariance that is not symmetric positive (semi-)definite where it must be.
    BadCovariance,
    /// Bytes that did not decode as the message type.
    Malformed,
    /// A fleet record refused by the memory (stale, own source, dimension conflict).
    FleetRecord,
    /// A fleet record whose times lie beyond the allowed clock skew.
    FutureRecord,
    /// A fleet record on another time base (sim vs wall time).
    TimeBaseRecord,
    /// A fleet record claiming what no honest node can (count, weights, magnitude).
    ImplausibleRecord,
    /// An outcome whose residual exceeds `validation.max_abs_residual`.
    HugeOutcome,
}

impl RejectKind {
    /// Every kind, in report order.
    pub const ALL: [RejectKind; 14] = [
        RejectKind::NoPrediction,
        RejectKind::Duplicate,
        RejectKind::DimensionMismatch,
        RejectKind::NonFinite,
        RejectKind::Oversized,
        RejectKind::BadScenario,
        RejectKind::BadId,
        RejectKind::BadCovariance,
        RejectKind::Malformed,
        RejectKind::FleetRecord,
        RejectKind::FutureRecord,
        RejectKind::TimeBaseRecord,
        RejectKind::ImplausibleRecord,
        RejectKind::HugeOutcome,
    ];

    /// Stable snake_case name, used as the diagnostics key suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::NoPrediction => "no_prediction",
            RejectKind::Duplicate => "duplicate",
            RejectKind::DimensionMismatch => "dimension_mismatch",
            RejectKind::NonFinite => "non_finite",
            RejectKind::Oversized => "oversized",
            RejectKind::BadScenario => "bad_scenario",
            RejectKind::BadId => "bad_id",
            RejectKind::BadCovariance => "bad_covariance",
            RejectKind::Malformed => "malformed",
            RejectKind::FleetRecord => "fleet_record",
            RejectKind::FutureRecord => "future_record",
            RejectKind::TimeBaseRecord => "time_base_record",
            RejectKind::ImplausibleRecord => "implausible_record",
            RejectKind::HugeOutcome => "huge_outcome",
        }
    }

    /// Position in [`RejectKind::ALL`]: the index of per-kind arrays.
    pub(super) fn index(self) -> usize {
        RejectKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }
}

/// Running totals since start-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Predictions corrected and kept for their outcome.
    pub predictions: u64,
    /// Refused predictions still answered, uncorrected (`MATCH_NONE`, confidence 0), so
    /// the planner waiting for them does not starve (`node::answer`).
    pub predictions_uncorrected: u64,
    /// Refused predictions left unanswered: neither a usable state nor a valid episode id.
    pub predictions_unanswered: u64,
    /// Outcomes paired with their prediction.
    pub outcomes: u64,
    /// Own records handed to the fleet.
    pub records_published: u64,
    /// Fleet records stored in the memory.
    pub records_received: u64,
    /// Fleet records ignored because the memory holds the same or a newer `seq` of their
    /// source: the normal result of anti-entropy, and what a replay of old records gets.
    pub records_stale: u64,
    /// Fleet records whose claim fails the plausibility gate (`synthesis.max_residual`):
    /// kept, so the store stays in step with the fleet, but given no weight.
    pub records_implausible: u64,
    /// Outcomes whose record did not become durable: no discrepancy (receipt) was
    /// published for them.
    pub outcomes_not_durable: u64,
    /// Corrected priors that came out non-finite and were replaced by the prediction
    /// (should stay 0: records are bounded before they reach the synthesis).
    pub priors_non_finite: u64,
    /// Drifts detected: addresses whose recent own outcomes disagreed with their summary,
    /// each of which started a fresh epoch (core::drift).
    pub drift_detected: u64,
    /// Pending predictions dropped because `max_pending` was reached.
    pub pending_evicted: u64,
    /// Pending predictions dropped after `pending_timeout_s`.
    pub pending_expired: u64,
    /// Rejected inputs, indexed like [`RejectKind::ALL`].
    rejected: [u64; RejectKind::ALL.len()],
    /// Σ |measured − predicted| over paired outcomes (Euclidean norms).
    pub raw_error_sum: f64,
    /// Σ |measured − corrected| over the same outcomes.
    pub corrected_error_sum: f64,
}

impl Counters {
    /// Counts one rejected input.
    pub fn reject(&mut self, kind: RejectKind) {
        self.rejected[kind.index()] += 1;
    }

    /// Rejected inputs of one kind.
    pub fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected[kind.index()]
    }

    /// Rejected inputs of every kind.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Error the corrections removed (> 0) or added (< 0), summed over paired outcomes:
    /// Σ|raw err| − Σ|corrected err|. In shadow mode this is what trusting them would do.
    pub fn error_removed(&self) -> f64 {
        self.raw_error_sum - self.corrected_error_sum
    }
}

/// A point-in-time report of the node's health.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Totals since start-up.
    pub counters: Counters,
    /// Predictions waiting for their outcome.
    pub pending: usize,
    /// Addresses known to the memory.
    pub addresses: usize,
    /// Fleet records held.
    pub received_records: usize,
    /// Sources judged by trust earned from outcomes.
    pub trust_sources: usize,
    /// Judged sources whose trust fell below one half.
    pub trust_distrusted: usize,
    /// Judged sources that have not yet earned full weight.
    pub trust_young: usize,
    /// Differential privacy of shared records, per release.
    pub dp: crate::core::privacy::DpConfig,
    /// Addresses evicted from the neighbor index (`neighbors_max_addresses`).
    pub neighbors_evicted: u64,
    /// Whether corrected priors go to the shadow topic.
    pub shadow_mode: bool,
}

impl Report {
    /// The report as ordered key/value text pairs (what `/diagnostics` carries).
    pub fn key_values(&self) -> Vec<(String, String)> {
        let c = &self.counters;
        let mut kv = vec![
            ("shadow_mode".to_string(), self.shadow_mode.to_string()),
            ("predictions".into(), c.predictions.to_string()),
            (
                "predictions_uncorrected".into(),
                c.predictions_uncorrected.to_string(),
            ),
            (
                "predictions_unanswered".into(),
                c.predictions_unanswered.to_string(),
            ),
            ("outcomes".into(), c.outcomes.to_string()),
            ("pending".into(), self.pending.to_string()),
            ("pending_evicted".into(), c.pending_evicted.to_string()),
            ("pending_expired".into(), c.pending_expired.to_string()),
            ("cache_addresses".into(), self.addresses.to_string()),
            (
                "cache_received_records".into(),
                self.received_records.to_string(),
            ),
            ("records_published".into(), c.records_published.to_string()),
            ("records_received".into(), c.records_received.to_string()),
            ("records_stale".into(), c.records_stale.to_string()),
            ("drift_detected".into(), c.drift_detected.to_string()),
            ("trust_sources".into(), self.trust_sources.to_string()),
            ("trust_distrusted".into(), self.trust_distrusted.to_string()),
            ("trust_young".into(), self.trust_young.to_string()),
            (
                "privacy.dp_epsilon_per_release".into(),
                self.dp.epsilon.to_string(),
            ),
            (
                "privacy.dp_delta_per_release".into(),
                if self.dp.enabled() {
                    self.dp.delta.to_string()
                } else {
                    "0".into()
                },
            ),
            (
                "neighbors_evicted".into(),
                self.neighbors_evicted.to_string(),
            ),
            (
                "records_implausible".into(),
                c.records_implausible.to_string(),
            ),
            (
                "outcomes_not_durable".into(),
                c.outcomes_not_durable.to_string(),
            ),
            ("priors_non_finite".into(), c.priors_non_finite.to_string()),
            ("raw_error_sum".into(), format!("{:.6}", c.raw_error_sum)),
            (
                "corrected_error_sum".into(),
                format!("{:.6}", c.corrected_error_sum),
            ),
            ("error_removed".into(), format!("{:.6}", c.error_removed())),
            ("rejected_total".into(), c.rejected_total().to_string()),
        ];
        for k in RejectKind::ALL {
            kv.push((
                format!("rejected.{}", k.as_str()),
                c.rejected(k).to_string(),
            ));
        }
        kv
    }
}

/// Rate limit for logging rejected inputs: at most one line per kind per interval,
/// saying how many were suppressed since (a flood of bad input must not flood the log).
#[derive(Clone, Debug)]
pub struct LogLimiter {
    interval_ns: i64,
    last: [Option<i64>; RejectKind::ALL.len()],
    suppressed: [u64; RejectKind::ALL.len()],
}

impl LogLimiter {
    /// At most one line per kind every `interval_ns` (monotonic time).
    pub fn new(interval_ns: i64) -> Self {
        LogLimiter {
            interval_ns,
            last: [None; RejectKind::ALL.len()],
            suppressed: [0; RejectKind::ALL.len()],
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&mut self, kind: RejectKind, now_ns: i64) -> Option<u64> {
        let i = kind.index();
        match self.last[i] {
            Some(t) if now_ns.saturating_sub(t) < self.interval_ns => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now_ns);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_kind_and_lists_every_kind() {
        let mut c = Counters::default();
        c.reject(RejectKind::NonFinite);
        c.reject(RejectKind::NonFinite);
        c.reject(RejectKind::FleetRecord);
        assert_eq!(c.rejected(RejectKind::NonFinite), 2);
        assert_eq!(c.rejected(RejectKind::FleetRecord), 1);
        assert_eq!(c.rejected(RejectKind::Duplicate), 0);
        assert_eq!(c.rejected_total(), 3);
        let r = Report {
            counters: c,
            pending: 0,
            addresses: 0,
            received_records: 0,
            trust_sources: 4,
            trust_distrusted: 1,
            trust_young: 2,
            dp: Default::default(),
            neighbors_evicted: 0,
            shadow_mode: true,
        };
        let kv = r.key_values();
        for k in RejectKind::ALL {
            assert!(
                kv.iter()
                    .any(|(key, _)| *key == format!("rejected.{}", k.as_str()))
            );
        }
        assert!(kv.contains(&("rejected.non_finite".into(), "2".into())));
        assert!(kv.contains(&("trust_distrusted".into(), "1".into())));
    }

    #[test]
    fn log_limiter_suppresses_within_the_interval() {
        let mut l = LogLimiter::new(100);
        assert_eq!(l.allow(RejectKind::NonFinite, 0), Some(0));
        assert_eq!(l.allow(RejectKind::NonFinite, 50), None);
        assert_eq!(l.allow(RejectKind::NonFinite, 60), None);
        assert_eq!(l.allow(RejectKind::Duplicate, 60), Some(0));
        assert_eq!(l.allow(RejectKind::NonFinite, 100), Some(2));
    }
}
