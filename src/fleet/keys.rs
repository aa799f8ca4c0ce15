//! The Zenoh key space v1: `qis/v1/<fleet>/<model_id>/<fingerprint hex>/<source>`.
//!
//! Every key and selector the fleet uses is built here, and only here, so the layout
//! lives in one place (docs/PROTOCOL.md, "Key space v1"). Names are free text, so each
//! is written as one key chunk with a reversible escape: the bytes `A-Z a-z 0-9 - . _ ~`
//! stand for themselves, every other byte of the UTF-8 text becomes `%XX` (two uppercase
//! hex digits). That removes every character Zenoh gives a meaning (`/ * $ # ? @`) and
//! `%` itself, and the decoder accepts only that one canonical spelling, so a name has
//! exactly one key and a key exactly one name.

use thiserror::Error;

use crate::core::ids::{Fingerprint, FleetName, IdError, ModelId, RecordKey, SourceId};

/// First chunks of every key of this version of the key space.
pub const KEY_PREFIX: &str = "qis/v1";

/// Every record key of this version and nothing else: `qis/v1/<fleet>/<model>/<fp>/<source>`
/// (what a router's storage may hold).
pub const RECORD_KEY_SPACE: &str = "qis/v1/*/*/*/*";

/// Why a key could not be read back into a [`RecordKey`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key does not start with `qis/v1/`.
    #[error("key {key:?} is not in the qis/v1 key space")]
    WrongPrefix {
        /// The key received.
        key: String,
    },
    /// The key has another number of chunks than `qis/v1/<fleet>/<model>/<fp>/<source>`.
    #[error("key {key:?} has {chunks} chunks, expected 6")]
    WrongShape {
        /// The key received.
        key: String,
        /// Chunks found.
        chunks: usize,
    },
    /// The key belongs to another fleet.
    #[error("key is for fleet {got:?}, this node is in fleet {expected:?}")]
    OtherFleet {
        /// Fleet expected.
        expected: String,
        /// Fleet found (decoded).
        got: String,
    },
    /// A chunk is not in the canonical escaped form.
    #[error("{field} chunk {chunk:?} is not canonically escaped")]
    BadEscape {
        /// Which part of the key.
        field: &'static str,
        /// The chunk found.
        chunk: String,
    },
    /// A decoded name is not a valid identifier.
    #[error("{field} in key: {source}")]
    BadName {
        /// Which part of the key.
        field: &'static str,
        /// Why the identifier was refused.
        source: IdError,
    },
}

/// Bytes written as themselves in a key chunk (RFC 3986 "unreserved").
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Escapes a name into one key chunk (see the module doc).
pub fn escape_chunk(name: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in name.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reverses [`escape_chunk`]; refuses anything but the canonical escaped spelling.
pub fn unescape_chunk(field: &'static str, chunk: &str) -> Result<String, KeyError> {
    let bad = || KeyError::BadEscape {
        field,
        chunk: chunk.to_owned(),
    };
    let bytes = chunk.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes
                .get(i + 1)
                .copied()
                .and_then(hex_digit)
                .ok_or_else(bad)?;
            let lo = bytes
                .get(i + 2)
                .copied()
                .and_then(hex_digit)
                .ok_or_else(bad)?;
            let v = hi << 4 | lo;
            // A plain byte written escaped is a second spelling of the same name.
            if is_plain(v) {
                return Err(bad());
            }
            out.push(v);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(bad());
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn escaped(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    escape_chunk(name, &mut s);
    s
}

/// `qis/v1/<fleet>/<model>/<fp>`: the address prefix shared by every source's record.
fn address_prefix(fleet: &FleetName, model: &ModelId, fingerprint: &Fingerprint) -> String {
    format!(
        "{KEY_PREFIX}/{}/{}/{}",
        escaped(fleet.as_str()),
        escaped(model.as_str()),
        fingerprint.to_hex()
    )
}

/// The key of one source's record: `qis/v1/<fleet>/<model>/<fp>/<source>`.
pub fn record_key(fleet: &FleetName, key: &RecordKey) -> String {
    let mut s = address_prefix(fleet, &key.model, &key.fingerprint);
    s.push('/');
    escape_chunk(key.source.as_str(), &mut s);
    s
}

/// Selector for every source's record at one address: `qis/v1/<fleet>/<model>/<fp>/*`.
pub fn address_selector(fleet: &FleetName, model: &ModelId, fingerprint: &Fingerprint) -> String {
    address_prefix(fleet, model, fingerprint) + "/*"
}

/// Selector for every record one source can hold: `qis/v1/<fleet>/*/*/<source>`
/// (what a node's queryable answers for).
pub fn source_selector(fleet: &FleetName, source: &SourceId) -> String {
    format!(
        "{KEY_PREFIX}/{}/*/*/{}",
        escaped(fleet.as_str()),
        escaped(source.as_str())
    )
}

/// Selector for the whole fleet: `qis/v1/<fleet>/**`.
pub fn fleet_selector(fleet: &FleetName) -> String {
    format!("{KEY_PREFIX}/{}/**", escaped(fleet.as_str()))
}

/// Reads a record key of fleet `fleet` back into a [`RecordKey`].
pub fn parse_record_key(fleet: &FleetName, key: &str) -> Result<RecordKey, KeyError> {
    let rest = key
        .strip_prefix(KEY_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| KeyError::WrongPrefix {
            key: key.to_owned(),
        })?;
    let chunks: Vec<&str> = rest.split('/').collect();
    let [fleet_chunk, model, fp, source] = chunks[..] else {
        return Err(KeyError::WrongShape {
            key: key.to_owned(),
            chunks: chunks.len() + 2,
        });
    };
    let got_fleet = unescape_chunk("fleet", fleet_chunk)?;
    if got_fleet != fleet.as_str() {
        return Err(KeyError::OtherFleet {
            expected: fleet.as_str().to_owned(),
            got: got_fleet,
        });
    }
    let model =
        ModelId::new(unescape_chunk("model_id", model)?).map_err(|source| KeyError::BadName {
            field: "model_id",
            source,
        })?;
    // Only the lowercase spelling that `to_hex` writes, so the key stays canonical.
    if fp.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(KeyError::BadEscape {
            field: "fingerprint",
            chunk: fp.to_owned(),
        });
    }
    let fingerprint = Fingerprint::from_hex(fp).map_err(|source| KeyError::BadName {
        field: "fingerprint",
        source,
    })?;
    let source =
        SourceId::new(unescape_chunk("source", source)?).map_err(|source| KeyError::BadName {
            field: "source",
            source,
        })?;
    Ok(RecordKey {
        model,
        fingerprint,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zenoh::key_expr::KeyExpr;

    fn fleet() -> FleetName {
        FleetName::new("depot 7").unwrap()
    }

    fn key(model: &str, source: &str) -> RecordKey {
        RecordKey {
            model: ModelId::new(model).unwrap(),
            fingerprint: Fingerprint([0x5a; 16]),
            source: SourceId::new(source).unwrap(),
        }
    }

    #[test]
    fn special_characters_are_escaped_and_round_trip() {
        let k = key("cosmos/v1*$#?%@x", "robot-1");
        let s = record_key(&fleet(), &k);
        assert_eq!(
            s,
            format!(
                "qis/v1/depot%207/cosmos%2Fv1%2A%24%23%3F%25%40x/{}/robot-1",
                "5a".repeat(16)
            )
        );
        assert!(KeyExpr::try_from(s.as_str()).is_ok());
        assert_eq!(parse_record_key(&fleet(), &s), Ok(k));
    }

    #[test]
    fn record_keys_match_their_selectors() {
        let k = key("m/1", "r**");
        let rk = KeyExpr::try_from(record_key(&fleet(), &k)).unwrap();
        let addr = KeyExpr::try_from(address_selector(&fleet(), &k.model, &k.fingerprint)).unwrap();
        let src = KeyExpr::try_from(source_selector(&fleet(), &k.source)).unwrap();
        let all = KeyExpr::try_from(fleet_selector(&fleet())).unwrap();
        assert!(addr.includes(&rk));
        assert!(src.includes(&rk));
        assert!(all.includes(&rk));
        let other = key("m/1", "r*");
        let other = KeyExpr::try_from(record_key(&fleet(), &other)).unwrap();
        assert!(!src.intersects(&other));
    }

    #[test]
    fn bad_keys_are_refused_with_typed_errors() {
        let f = fleet();
        let fp = "5a".repeat(16);
        assert!(matches!(
            parse_record_key(&f, "other/v1/a/b/c/d"),
            Err(KeyError::WrongPrefix { .. })
        ));
        assert!(matches!(
            parse_record_key(&f, "qis/v1/depot%207/m/fp"),
            Err(KeyError::WrongShape { chunks: 5, .. })
        ));
        assert!(matches!(
            parse_record_key(&f, &format!("qis/v1/depot8/m/{fp}/r")),
            Err(KeyError::OtherFleet { .. })
        ));
        // Lowercase hex, an escaped plain byte, a truncated escape, a raw special byte.
        for model in ["a%2f", "%41", "a%2", "a+b"] {
            assert!(
                matches!(
                    parse_record_key(&f, &format!("qis/v1/depot%207/{model}/{fp}/r")),
                    Err(KeyError::BadEscape {
                        field: "model_id",
                        ..
                    })
                ),
                "{model}"
            );
        }
        assert!(matches!(
            parse_record_key(&f, "qis/v1/depot%207/m/abc/r"),
            Err(KeyError::BadName {
                field: "fingerprint",
                ..
            })
        ));
        assert!(matches!(
            parse_record_key(&f, &format!("qis/v1/depot%207/m/{}/r", "5A".repeat(16))),
            Err(KeyError::BadEscape {
                field: "fingerprint",
                ..
            })
        ));
        assert!(matches!(
            parse_record_key(&f, &format!("qis/v1/depot%207/m/{fp}/%0A")),
            Err(KeyError::BadName {
                field: "source",
                ..
            })
        ));
        assert!(matches!(
            parse_record_key(&f, &format!("qis/v1/depot%207/m/{fp}/%FF")),
            Err(KeyError::BadEscape {
                field: "source",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn any_names_round_trip(
            fleet in "[^\\p{Cc}]{1,40}",
            model in "[^\\p{Cc}]{1,60}",
            source in "[^\\p{Cc}]{1,40}",
            fp in any::<[u8; 16]>(),
        ) {
            let fleet = FleetName::new(fleet).unwrap();
            let k = RecordKey {
                model: ModelId::new(model).unwrap(),
                fingerprint: Fingerprint(fp),
                source: SourceId::new(source).unwrap(),
            };
            let s = record_key(&fleet, &k);
            prop_assert!(KeyExpr::try_from(s.as_str()).is_ok(), "zenoh refused {}", s);
            prop_assert_eq!(parse_record_key(&fleet, &s), Ok(k));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse_record_key(&fleet(), &s);
        }
    }
}
