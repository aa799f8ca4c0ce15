//! Fleet exchange settings: one serde struct, defaults in one place, and `validate()`
//! that turns it into the resolved [`FleetSettings`] the exchange runs on.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::republish::{DEFAULT_REPUBLISH_GROWTH, RepublishPolicy};
use super::signing::{Admission, parse_public_key};
use crate::core::ids::FleetName;
use crate::core::privacy::{DEFAULT_TIME_QUANTUM_S, DpConfig};

pub use crate::core::ids::DEFAULT_FLEET;
/// Default wait for replies to a fleet query, milliseconds.
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 500;
/// Default least interval between two publications of one fingerprint's record, ms.
pub const DEFAULT_PUBLISH_INTERVAL_MS: u64 = 100;
pub use crate::core::privacy::DEFAULT_MIN_COUNT_TO_SHARE;
/// Default bound on live subscriptions (followed fingerprints).
pub const DEFAULT_MAX_LIVE_SUBSCRIPTIONS: usize = 1024;
/// Default anti-entropy period, ms (0 disables it).
pub const DEFAULT_ANTI_ENTROPY_PERIOD_MS: u64 = 10_000;
/// Default capacity of the channel of received records.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Default most sources kept in the digest of one followed address.
pub const DEFAULT_MAX_DIGEST_SOURCES: usize = 256;
/// Default fan-in budget: sources a node listens to (per address and overall) once the
/// fleet is larger than twice this.
pub const DEFAULT_MAX_SOURCES_PER_ADDRESS: usize = 16;
/// Largest fan-in budget accepted (the lane space has 4096 lanes).
pub const MAX_MAX_SOURCES_PER_ADDRESS: usize = 1024;
/// Default most own records served to queries.
pub const DEFAULT_MAX_SERVED_RECORDS: usize = 100_000;
/// The embedded default Zenoh config: peer mode on loopback (config/zenoh-peer.json5).
pub const DEFAULT_ZENOH_CONFIG: &str = include_str!("../../config/zenoh-peer.json5");

/// Fleet exchange settings as written in the node's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Name of the fleet; only records of this fleet are exchanged.
    pub fleet: String,
    /// Zenoh config file (Zenoh's JSON5 format); none = the embedded peer default.
    pub zenoh_config: Option<PathBuf>,
    /// Overrides Zenoh's `listen/endpoints` when non-empty (e.g. `tcp/127.0.0.1:7450`).
    pub listen: Vec<String>,
    /// Overrides Zenoh's `connect/endpoints` when non-empty.
    pub connect: Vec<String>,
    /// Wait for replies to a fleet query, milliseconds (> 0).
    pub query_timeout_ms: u64,
    /// Least interval between two publications of one fingerprint's record, ms; the
    /// latest record wins in between.
    pub publish_interval_ms: u64,
    /// Own outcomes needed at a fingerprint before its record is shared (>= 1).
    pub min_count_to_share: u64,
    /// Traffic budget (>= 1): a new version of an own record is put only when its
    /// outcome count grew by this factor since the version last put (1 = every
    /// version); a held-back version is still served to queries.
    pub republish_growth: f64,
    /// Most fingerprints followed live at once (>= 1); the least recently used is dropped.
    pub max_live_subscriptions: usize,
    /// Period of the anti-entropy re-query of followed fingerprints, ms; 0 = off.
    pub anti_entropy_period_ms: u64,
    /// Capacity of the channel of received records (>= 1); overflow is dropped and counted.
    pub channel_capacity: usize,
    /// Most sources in one followed address's digest (>= 1); the lowest seq is dropped.
    pub max_digest_sources: usize,
    /// Most own records served to queries (>= 1); the least recently updated is dropped.
    pub max_served_records: usize,
    /// Fan-in budget (1..=1024): once the node has seen more than twice this many
    /// sources it listens to the few lanes that hold about this many sources
    /// (docs/PROTOCOL.md, "Lanes"), so what it receives is bounded by this, not by the
    /// fleet's size.
    pub max_sources_per_address: usize,
    /// Opt out of signatures: records go unsigned and any well-formed record is accepted
    /// under any source id. Off by default: every record is signed by the key its
    /// self-certifying source id names, and unsigned or forged records are refused.
    pub unsigned: bool,
    /// Fleet admission: public keys (64 hex digits) allowed to write records; empty =
    /// any self-certified key. Ignored (refused) with `unsigned`.
    pub allowed_keys: Vec<String>,
    /// Optional differential privacy of shared records (Gaussian mechanism with
    /// clipping); off by default.
    pub differential_privacy: DpConfig,
    /// Shared records' first and last outcome times are rounded down to this many
    /// seconds (0 = exact).
    pub time_quantum_s: f64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            fleet: DEFAULT_FLEET.to_owned(),
            zenoh_config: None,
            listen: Vec::new(),
            connect: Vec::new(),
            query_timeout_ms: DEFAULT_QUERY_TIMEOUT_MS,
            publish_interval_ms: DEFAULT_PUBLISH_INTERVAL_MS,
            min_count_to_share: DEFAULT_MIN_COUNT_TO_SHARE,
            republish_growth: DEFAULT_REPUBLISH_GROWTH,
            max_live_subscriptions: DEFAULT_MAX_LIVE_SUBSCRIPTIONS,
            anti_entropy_period_ms: DEFAULT_ANTI_ENTROPY_PERIOD_MS,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            max_digest_sources: DEFAULT_MAX_DIGEST_SOURCES,
            max_served_records: DEFAULT_MAX_SERVED_RECORDS,
            max_sources_per_address: DEFAULT_MAX_SOURCES_PER_ADDRESS,
            unsigned: false,
            allowed_keys: Vec::new(),
            differential_privacy: DpConfig::default(),
            time_quantum_s: DEFAULT_TIME_QUANTUM_S,
        }
    }
}

/// A fleet setting that is invalid (names the field).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("fleet.{field}: {reason}")]
pub struct FleetConfigError {
    /// The bad field.
    pub field: &'static str,
    /// What is wrong, with what was found.
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> FleetConfigError {
    FleetConfigError {
        field,
        reason: reason.into(),
    }
}

/// Fleet settings after validation: what the exchange runs on.
#[derive(Debug)]
pub struct FleetSettings {
    /// The fleet.
    pub fleet: FleetName,
    /// The Zenoh session config, endpoints applied.
    pub zenoh: zenoh::Config,
    /// Wait for replies to a fleet query.
    pub query_timeout: Duration,
    /// Least interval between publications of one fingerprint's record.
    pub publish_interval: Duration,
    /// Own outcomes needed before a record is shared.
    pub min_count_to_share: u64,
    /// When a new version of an own record is put.
    pub republish: RepublishPolicy,
    /// Bound on live subscriptions.
    pub max_live_subscriptions: usize,
    /// Anti-entropy period; `None` = off.
    pub anti_entropy_period: Option<Duration>,
    /// Capacity of the received-records channel.
    pub channel_capacity: usize,
    /// Most sources in one followed address's digest.
    pub max_digest_sources: usize,
    /// Most own records served to queries.
    pub max_served_records: usize,
    /// Fan-in budget in sources (1..=1024).
    pub max_sources_per_address: usize,
    /// Who may write records and how it is checked.
    pub admission: Admission,
    /// Noise added to every shared version of an own record (off by default).
    pub dp: DpConfig,
    /// Time quantum of shared records' timestamps, ns (0 = exact).
    pub time_quantum_ns: i64,
}

fn endpoints_json(field: &'static str, eps: &[String]) -> Result<String, FleetConfigError> {
    serde_json::to_string(eps).map_err(|e| err(field, e.to_string()))
}

impl FleetConfig {
    /// Checks every field, reads the key and Zenoh config files, and resolves the
    /// settings; after this the exchange trusts them.
    pub fn validate(&self) -> Result<FleetSettings, FleetConfigError> {
        let fleet = FleetName::new(&self.fleet).map_err(|e| err("fleet", e.to_string()))?;
        if !(self.time_quantum_s.is_finite() && (0.0..=86_400.0).contains(&self.time_quantum_s)) {
            return Err(err("time_quantum_s", "must be in [0, 86400] seconds"));
        }
        if self.query_timeout_ms == 0 {
            return Err(err("query_timeout_ms", "must be > 0"));
        }
        if self.min_count_to_share == 0 {
            return Err(err("min_count_to_share", "must be >= 1"));
        }
        let republish = RepublishPolicy::new(self.republish_growth)
            .map_err(|e| err("republish_growth", e.to_string()))?;
        if self.max_live_subscriptions == 0 {
            return Err(err("max_live_subscriptions", "must be >= 1"));
        }
        if self.channel_capacity == 0 {
            return Err(err("channel_capacity", "must be >= 1"));
        }
        if self.max_digest_sources == 0 {
            return Err(err("max_digest_sources", "must be >= 1"));
        }
        if self.max_served_records == 0 {
            return Err(err("max_served_records", "must be >= 1"));
        }
        if !(1..=MAX_MAX_SOURCES_PER_ADDRESS).contains(&self.max_sources_per_address) {
            return Err(err(
                "max_sources_per_address",
                format!(
                    "must be in 1..={MAX_MAX_SOURCES_PER_ADDRESS}, got {}",
                    self.max_sources_per_address
                ),
            ));
        }
        let mut zenoh = match &self.zenoh_config {
            Some(path) => zenoh::Config::from_file(path)
                .map_err(|e| err("zenoh_config", format!("{}: {e}", path.display())))?,
            None => zenoh::Config::from_json5(DEFAULT_ZENOH_CONFIG)
                .map_err(|e| err("zenoh_config", format!("embedded default: {e}")))?,
        };
        if !self.listen.is_empty() {
            zenoh
                .insert_json5("listen/endpoints", &endpoints_json("listen", &self.listen)?)
                .map_err(|e| err("listen", e.to_string()))?;
        }
        if !self.connect.is_empty() {
            zenoh
                .insert_json5(
                    "connect/endpoints",
                    &endpoints_json("connect", &self.connect)?,
                )
                .map_err(|e| err("connect", e.to_string()))?;
        }
        self.differential_privacy
            .validate()
            .map_err(|e| err("differential_privacy", e.to_string()))?;
        if self.unsigned && !self.allowed_keys.is_empty() {
            return Err(err(
                "allowed_keys",
                "an admission list needs signatures; remove it or `unsigned: true`",
            ));
        }
        let admission = if self.unsigned {
            Admission::Unsigned
        } else {
            Admission::allow(
                self.allowed_keys
                    .iter()
                    .map(|k| {
                        parse_public_key(k).map_err(|e| err("allowed_keys", format!("{k:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        Ok(FleetSettings {
            fleet,
            zenoh,
            query_timeout: Duration::from_millis(self.query_timeout_ms),
            publish_interval: Duration::from_millis(self.publish_interval_ms),
            min_count_to_share: self.min_count_to_share,
            republish,
            max_live_subscriptions: self.max_live_subscriptions,
            anti_entropy_period: (self.anti_entropy_period_ms > 0)
                .then(|| Duration::from_millis(self.anti_entropy_period_ms)),
            channel_capacity: self.channel_capacity,
            max_digest_sources: self.max_digest_sources,
            max_served_records: self.max_served_records,
            max_sources_per_address: self.max_sources_per_address,
            admission,
            dp: self.differential_privacy.clone(),
            time_quantum_ns: (self.time_quantum_s * 1e9) as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_to_loopback_peer_without_multicast() {
        let s = FleetConfig::default().validate().unwrap();
        assert_eq!(s.fleet.as_str(), DEFAULT_FLEET);
        let z = &s.zenoh;
        assert_eq!(z.get_json("mode").unwrap(), "\"peer\"");
        assert_eq!(z.get_json("scouting/multicast/enabled").unwrap(), "false");
        assert!(
            z.get_json("listen/endpoints")
                .unwrap()
                .contains("127.0.0.1")
        );
        assert!(s.admission.is_signed(), "signed by default");
    }

    #[test]
    fn shipped_zenoh_configs_parse() {
        for f in [
            "zenoh-peer.json5",
            "zenoh-client.json5",
            "zenoh-router.json5",
        ] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(f);
            let cfg = FleetConfig {
                zenoh_config: Some(path),
                ..FleetConfig::default()
            };
            assert!(cfg.validate().is_ok(), "{f}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |c: FleetConfig| c.validate().unwrap_err().field;
        let d = FleetConfig::default;
        assert_eq!(
            bad(FleetConfig {
                fleet: String::new(),
                ..d()
            }),
            "fleet"
        );
        assert_eq!(
            bad(FleetConfig {
                query_timeout_ms: 0,
                ..d()
            }),
            "query_timeout_ms"
        );
        assert_eq!(
            bad(FleetConfig {
                min_count_to_share: 0,
                ..d()
            }),
            "min_count_to_share"
        );
        assert_eq!(
            bad(FleetConfig {
                republish_growth: 0.5,
                ..d()
            }),
            "republish_growth"
        );
        assert_eq!(
            bad(FleetConfig {
                max_live_subscriptions: 0,
                ..d()
            }),
            "max_live_subscriptions"
        );
        assert_eq!(
            bad(FleetConfig {
                channel_capacity: 0,
                ..d()
            }),
            "channel_capacity"
        );
        assert_eq!(
            bad(FleetConfig {
                listen: vec!["nonsense".into()],
                ..d()
            }),
            "listen"
        );
        assert_eq!(
            bad(FleetConfig {
                zenoh_config: Some("/nonexistent.json5".into()),
                ..d()
            }),
            "zenoh_config"
        );
        assert_eq!(
            bad(FleetConfig {
                allowed_keys: vec!["zz".into()],
                ..d()
            }),
            "allowed_keys"
        );
        assert_eq!(
            bad(FleetConfig {
                allowed_keys: vec!["00".repeat(32)],
                unsigned: true,
                ..d()
            }),
            "allowed_keys"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<FleetConfig, _> = serde_json::from_str(r#"{"fleet":"x","bogus":1}"#);
        assert!(r.is_err());
        let c: FleetConfig =
            serde_json::from_str(r#"{"fleet":"x","min_count_to_share":1}"#).unwrap();
        assert_eq!(c.min_count_to_share, 1);
    }

    #[test]
    fn bounds_must_be_at_least_one() {
        for (field, c) in [
            (
                "max_digest_sources",
                FleetConfig {
                    max_digest_sources: 0,
                    ..FleetConfig::default()
                },
            ),
            (
                "max_served_records",
                FleetConfig {
                    max_served_records: 0,
                    ..FleetConfig::default()
                },
            ),
            (
                "max_sources_per_address",
                FleetConfig {
                    max_sources_per_address: 0,
                    ..FleetConfig::default()
                },
            ),
            (
                "max_sources_per_address",
                FleetConfig {
                    max_sources_per_address: 5000,
                    ..FleetConfig::default()
                },
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
