//! Newtypes for the identifiers that must never be mixed up: model, fingerprint, source, sequence.

use std::fmt;

use thiserror::Error;

/// Length in bytes of a fingerprint (the scenario's exact address).
pub const FINGERPRINT_LEN: usize = 16;

/// Longest accepted model id, fleet name or source id, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Why an identifier was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The identifier was longer than [`MAX_NAME_LEN`].
    #[error("{kind} is {len} bytes, at most {MAX_NAME_LEN} allowed")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The identifier held a control character.
    #[error("{kind} contains a control character")]
    ControlChar {
        /// Which identifier.
        kind: &'static str,
    },
    /// A fingerprint was not 32 lowercase or uppercase hex digits.
    #[error("fingerprint must be {} hex digits, got {got:?}", FINGERPRINT_LEN * 2)]
    BadFingerprint {
        /// The text that was given.
        got: String,
    },
}

fn check_name(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(IdError::TooLong { kind, len: s.len() });
    }
    if s.chars().any(char::is_control) {
        return Err(IdError::ControlChar { kind });
    }
    Ok(())
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks the text (non-empty, bounded, no control characters) and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_name($kind, &s)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Lets maps keyed by the newtype be searched with a plain `&str` (no allocation);
        // the derived Hash of a one-field struct equals the field's, as Borrow requires.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_newtype!(
    /// World-model identity and version; corrections of one model never apply to another.
    ModelId,
    "model_id"
);
name_newtype!(
    /// Pseudonymous id of the robot (node) that produced a record.
    SourceId,
    "source id"
);
name_newtype!(
    /// Name of the fleet whose robots share records.
    FleetName,
    "fleet name"
);

/// The fleet name a node joins unless configured (`fleet`, `exchange.fleet`).
pub const DEFAULT_FLEET: &str = "default";

/// A scenario's exact address: 16 bytes of a versioned SHA-256 over its canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; FINGERPRINT_LEN]);

impl Fingerprint {
    /// Parses the 32-digit hex form used in keys and messages.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let mut out = [0u8; FINGERPRINT_LEN];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| IdError::BadFingerprint { got: s.to_owned() })?;
        Ok(Self(out))
    }

    /// The 32-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Per-source record version: each new summary a source publishes has a larger one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u64);

/// Where a record lives: which model, which scenario address, which robot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// The world model the record corrects.
    pub model: ModelId,
    /// The scenario address.
    pub fingerprint: Fingerprint,
    /// The robot that produced it.
    pub source: SourceId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_hex_round_trips_and_rejects_garbage() {
        let fp = Fingerprint([0xab; FINGERPRINT_LEN]);
        assert_eq!(Fingerprint::from_hex(&fp.to_hex()), Ok(fp));
        assert!(Fingerprint::from_hex("abc").is_err());
        assert!(Fingerprint::from_hex(&"zz".repeat(16)).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(ModelId::new("cosmos/v1.2").is_ok());
        assert_eq!(ModelId::new(""), Err(IdError::Empty { kind: "model_id" }));
        assert!(matches!(
            SourceId::new("a\nb"),
            Err(IdError::ControlChar { .. })
        ));
        assert!(matches!(
            FleetName::new("x".repeat(300)),
            Err(IdError::TooLong { .. })
        ));
    }
}
