//! The node's parameters: one serde struct, loaded from the `ros__parameters` of a ROS 2
//! params file plus `-p name:=value` overrides, validated once at start-up.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::fingerprint::{FingerprintConfig, Fingerprinter};
use crate::core::memory::MemoryConfig;
use crate::core::plausibility::ValidationConfig;
use crate::core::store::StoreConfig;
use crate::core::synthesis::SynthesisConfig;
use crate::core::trust::TrustConfig;
use crate::fleet::FleetConfig;

/// Default most predictions waiting for their outcome.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Default seconds a prediction waits for its outcome.
pub const DEFAULT_PENDING_TIMEOUT_S: f64 = 300.0;
/// Default seconds between two `/diagnostics` reports.
pub const DEFAULT_DIAGNOSTICS_PERIOD_S: f64 = 1.0;
/// Default neighbors asked for when exact support is thin.
pub const DEFAULT_NEIGHBORS_K: usize = 8;
pub use crate::core::privacy::DEFAULT_MIN_COUNT_TO_SHARE;
/// Default longest wait of a first prediction for the fleet's answer, seconds.
pub const DEFAULT_FIRST_ENCOUNTER_WAIT_S: f64 = 1.0;
pub use crate::core::ids::DEFAULT_FLEET;

/// Everything `qis_node` can be configured with (`qis_node: ros__parameters:`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeParams {
    /// Fleet name: records are exchanged only within one fleet.
    pub fleet: String,
    /// This robot's source id, only with `exchange.unsigned: true`; empty = derived from
    /// the node's key (signed fleets: the id is the public key, so it cannot be chosen).
    pub source_id: String,
    /// The node's ed25519 key file (created with mode 0600 at first start); empty =
    /// beside the store (`<store>.key`).
    pub identity_file: String,
    /// Publish corrected priors on `corrected_prior_shadow` instead of `corrected_prior`.
    pub shadow_mode: bool,
    /// Most predictions waiting for their outcome; the oldest is dropped beyond it.
    pub max_pending: usize,
    /// Seconds a prediction waits for its outcome before it is dropped.
    pub pending_timeout_s: f64,
    /// Seconds between two `/diagnostics` reports.
    pub diagnostics_period_s: f64,
    /// Neighbor addresses asked for when exact support is below `synthesis.min_support`.
    pub neighbors_k: usize,
    /// Most addresses in the neighbor index (>= 1); the least recently seen is evicted.
    pub neighbors_max_addresses: usize,
    /// Privacy budget k: own outcomes needed at an address before its record is shared
    /// with the fleet, and new ones needed before it is shared again.
    pub min_count_to_share: u64,
    /// Longest the first prediction at an unknown address waits for the fleet's answer,
    /// seconds (0 = never wait: answer uncorrected, records count from the next one).
    pub first_encounter_wait_s: f64,
    /// Follow `/clock` instead of the system clock (ROS 2 standard parameter).
    pub use_sim_time: bool,
    /// How scenarios become addresses.
    pub fingerprint: FingerprintConfig,
    /// How the corrected prior is computed.
    pub synthesis: SynthesisConfig,
    /// Trust earned from outcomes: how sources whose claims miss this robot's outcomes
    /// lose weight.
    pub trust: TrustConfig,
    /// Bounds on what a fleet record may claim, and the learned plausibility gate.
    pub validation: ValidationConfig,
    /// Bounds of the in-memory outcome memory.
    pub memory: MemoryConfig,
    /// Embedded store file; empty = `$ROS_HOME/qis/<fleet>.<node name>.redb` (ROS_HOME
    /// defaults to `~/.ros`).
    pub store_path: String,
    /// Bounds of the embedded store.
    pub store: StoreConfig,
    /// Exchange records with the fleet over Zenoh (false: this robot learns alone).
    pub exchange_enabled: bool,
    /// The fleet exchange (Zenoh config, endpoints, timeouts, signing). Its fleet name
    /// and `min_count_to_share` are this node's `fleet` and `min_count_to_share`.
    pub exchange: FleetConfig,
}

impl Default for NodeParams {
    fn default() -> Self {
        NodeParams {
            fleet: DEFAULT_FLEET.into(),
            source_id: String::new(),
            identity_file: String::new(),
            shadow_mode: false,
            max_pending: DEFAULT_MAX_PENDING,
            pending_timeout_s: DEFAULT_PENDING_TIMEOUT_S,
            diagnostics_period_s: DEFAULT_DIAGNOSTICS_PERIOD_S,
            neighbors_k: DEFAULT_NEIGHBORS_K,
            neighbors_max_addresses: crate::core::neighbors::DEFAULT_MAX_ADDRESSES,
            min_count_to_share: DEFAULT_MIN_COUNT_TO_SHARE,
            first_encounter_wait_s: DEFAULT_FIRST_ENCOUNTER_WAIT_S,
            use_sim_time: false,
            fingerprint: FingerprintConfig::default(),
            synthesis: SynthesisConfig::default(),
            trust: TrustConfig::default(),
            validation: ValidationConfig::default(),
            memory: MemoryConfig::default(),
            store_path: String::new(),
            store: StoreConfig::default(),
            exchange_enabled: true,
            exchange: FleetConfig::default(),
        }
    }
}

/// A parameter with a value out of range; `param` is its full ROS name.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("invalid parameter `{param}`: {reason}")]
pub struct ParamError {
    /// Full parameter name, e.g. `synthesis.prior_strength`.
    pub param: String,
    /// What is wrong, with the value that came.
    pub reason: String,
}

impl ParamError {
    fn new(param: impl Into<String>, reason: impl Into<String>) -> Self {
        ParamError {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

impl NodeParams {
    /// Checks every parameter and returns the fingerprinter the config describes.
    pub fn validate(&self) -> Result<Fingerprinter, ParamError> {
        crate::core::ids::FleetName::new(self.fleet.clone())
            .map_err(|e| ParamError::new("fleet", e.to_string()))?;
        if !self.source_id.is_empty() {
            crate::core::ids::SourceId::new(self.source_id.clone())
                .map_err(|e| ParamError::new("source_id", e.to_string()))?;
            if !self.exchange.unsigned {
                return Err(ParamError::new(
                    "source_id",
                    "a signed fleet derives the source id from the node's key; leave it empty or set exchange.unsigned: true",
                ));
            }
        }
        if self.min_count_to_share == 0 {
            return Err(ParamError::new("min_count_to_share", "must be >= 1, got 0"));
        }
        if self.exchange.min_count_to_share != crate::core::privacy::DEFAULT_MIN_COUNT_TO_SHARE
            && self.exchange.min_count_to_share != self.min_count_to_share
        {
            return Err(ParamError::new(
                "exchange.min_count_to_share",
                format!(
                    "the privacy budget is set by `min_count_to_share` ({}), got {}",
                    self.min_count_to_share, self.exchange.min_count_to_share
                ),
            ));
        }
        if self.max_pending == 0 {
            return Err(ParamError::new("max_pending", "must be >= 1, got 0"));
        }
        if self.neighbors_max_addresses == 0 {
            return Err(ParamError::new(
                "neighbors_max_addresses",
                "must be >= 1, got 0",
            ));
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ParamError::new(
                    name,
                    format!("must be finite and > 0, got {v}"),
                ))
            }
        };
        positive("pending_timeout_s", self.pending_timeout_s)?;
        positive("diagnostics_period_s", self.diagnostics_period_s)?;
        if !(self.first_encounter_wait_s.is_finite()
            && (0.0..=60.0).contains(&self.first_encounter_wait_s))
        {
            return Err(ParamError::new(
                "first_encounter_wait_s",
                format!("must be in 0..=60, got {}", self.first_encounter_wait_s),
            ));
        }
        if self.store.max_received_records == 0 {
            return Err(ParamError::new(
                "store.max_received_records",
                "must be >= 1, got 0",
            ));
        }
        if self.exchange.fleet != DEFAULT_FLEET && self.exchange.fleet != self.fleet {
            return Err(ParamError::new(
                "exchange.fleet",
                format!(
                    "the fleet name is set by `fleet` ({}), got {}",
                    self.fleet, self.exchange.fleet
                ),
            ));
        }
        if self.memory.max_received_records == 0 {
            return Err(ParamError::new(
                "memory.max_received_records",
                "must be >= 1, got 0",
            ));
        }
        self.synthesis
            .validate()
            .map_err(|e| ParamError::new(format!("synthesis.{}", e.field), e.reason))?;
        self.trust
            .validate()
            .map_err(|e| ParamError::new(format!("trust.{}", e.field), e.reason))?;
        self.validation
            .validate()
            .map_err(|e| ParamError::new(format!("validation.{}", e.field), e.reason))?;
        self.fingerprint
            .validate()
            .map_err(|e| ParamError::new(format!("fingerprint.{}", e.field()), e.reason()))
    }

    /// Pending timeout in nanoseconds.
    pub fn pending_timeout_ns(&self) -> i64 {
        (self.pending_timeout_s * 1e9).min(i64::MAX as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeParams::default().validate().unwrap();
    }

    #[test]
    fn validate_names_the_bad_parameter() {
        let p = NodeParams {
            pending_timeout_s: -1.0,
            ..NodeParams::default()
        };
        assert_eq!(p.validate().unwrap_err().param, "pending_timeout_s");
        let mut p = NodeParams::default();
        p.synthesis.prior_strength = -1.0;
        assert_eq!(p.validate().unwrap_err().param, "synthesis.prior_strength");
        let p = NodeParams {
            max_pending: 0,
            ..NodeParams::default()
        };
        assert_eq!(p.validate().unwrap_err().param, "max_pending");
        let p = NodeParams {
            fleet: String::new(),
            ..NodeParams::default()
        };
        assert_eq!(p.validate().unwrap_err().param, "fleet");
        let p = NodeParams {
            neighbors_max_addresses: 0,
            ..NodeParams::default()
        };
        assert_eq!(p.validate().unwrap_err().param, "neighbors_max_addresses");
        let mut p = NodeParams::default();
        p.fingerprint.fleet_secret_file = Some("/nonexistent/qis.secret".into());
        assert_eq!(
            p.validate().unwrap_err().param,
            "fingerprint.fleet_secret_file"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_yaml_ng::from_str::<NodeParams>("max_pendin: 3").unwrap_err();
        assert!(err.to_string().contains("max_pendin"), "{err}");
        let p: NodeParams =
            serde_yaml_ng::from_str("max_pending: 3\nsynthesis: {prior_strength: 2.0}").unwrap();
        assert_eq!(p.max_pending, 3);
        assert_eq!(p.synthesis.prior_strength, 2.0);
    }
}
