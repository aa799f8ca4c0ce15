//! The Zenoh key space v2:
//! `qis/v2/<fleet>/<b1>/…/<b12>/<model_id>/<fingerprint hex>/<source>`, where
//! `b1 … b12` are the binary digits of the source's lane ([`super::lanes`]).
//!
//! Every key and selector the fleet uses is built here, and only here, so the layout
//! lives in one place (docs/PROTOCOL.md, "Key space v2"). Names are free text, so each
//! is written as one key chunk with a reversible escape: the bytes `A-Z a-z 0-9 - . _ ~`
//! stand for themselves, every other byte of the UTF-8 text becomes `%XX` (two uppercase
//! hex digits). That removes every character Zenoh gives a meaning (`/ * $ # ? @`) and
//! `%` itself, and the decoder accepts only that one canonical spelling, so a name has
//! exactly one key and a key exactly one name.

use thiserror::Error;

use super::lanes::{LANE_DEPTH, Lane, LanePrefix, lane_of};
use crate::core::ids::{Fingerprint, FleetName, IdError, ModelId, RecordKey, SourceId};

/// First chunks of every key of this version of the key space.
pub const KEY_PREFIX: &str = "qis/v2";

/// Every record key of this version and nothing else:
/// `qis/v2/<fleet>/<b1>/…/<b12>/<model>/<fp>/<source>` (what a router's storage may hold).
pub const RECORD_KEY_SPACE: &str = "qis/v2/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*";

/// Why a key could not be read back into a [`RecordKey`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key does not start with `qis/v2/`.
    #[error("key {key:?} is not in the qis/v2 key space")]
    WrongPrefix {
        /// The key received.
        key: String,
    },
    /// The key has another number of chunks than
    /// `qis/v2/<fleet>/<b1>/…/<b12>/<model>/<fp>/<source>`.
    #[error("key {key:?} has {chunks} chunks, expected 18")]
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
    /// The lane chunks are not the lane of the key's source (or not one binary digit each).
    #[error("key {key:?}: lane {got:?} is not the lane of its source ({expected})")]
    WrongLane {
        /// The key received.
        key: String,
        /// The lane chunks found.
        got: String,
        /// The source's lane, as key chunks.
        expected: String,
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

/// Writes the chunks of a lane prefix, then `*` for each digit it leaves open.
fn push_lane_chunks(out: &mut String, prefix: LanePrefix) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = prefix.digits();
    for i in 0..LANE_DEPTH {
        out.push('/');
        match digits.get(i) {
            Some(&d) => out.push(HEX[usize::from(d)] as char),
            None => out.push('*'),
        }
    }
}

/// The key chunks of one lane, `b1/…/b12`.
pub fn lane_chunks(lane: Lane) -> String {
    let mut s = String::new();
    push_lane_chunks(&mut s, lane_prefix(lane));
    s.split_off(1)
}

/// The full-depth prefix holding exactly `lane`.
fn lane_prefix(lane: Lane) -> LanePrefix {
    LanePrefix::of_lane(lane)
}

/// `qis/v2/<fleet>`.
fn fleet_root(fleet: &FleetName) -> String {
    format!("{KEY_PREFIX}/{}", escaped(fleet.as_str()))
}

/// The key of one source's record:
/// `qis/v2/<fleet>/<lane of source>/<model>/<fp>/<source>`.
pub fn record_key(fleet: &FleetName, key: &RecordKey) -> String {
    let mut s = fleet_root(fleet);
    push_lane_chunks(&mut s, lane_prefix(lane_of(&key.source)));
    s.push('/');
    escape_chunk(key.model.as_str(), &mut s);
    s.push('/');
    s.push_str(&key.fingerprint.to_hex());
    s.push('/');
    escape_chunk(key.source.as_str(), &mut s);
    s
}

/// Selector for the records at one address of the sources under a lane prefix:
/// `qis/v2/<fleet>/<prefix, * for open digits>/<model>/<fp>/*` (a query of one lane
/// prefix; [`LanePrefix::ALL`] asks every source).
pub fn address_selector(
    fleet: &FleetName,
    prefix: LanePrefix,
    model: &ModelId,
    fingerprint: &Fingerprint,
) -> String {
    let mut s = fleet_root(fleet);
    push_lane_chunks(&mut s, prefix);
    s.push('/');
    escape_chunk(model.as_str(), &mut s);
    s.push('/');
    s.push_str(&fingerprint.to_hex());
    s.push_str("/*");
    s
}

/// Selector for every record of the sources under a lane prefix:
/// `qis/v2/<fleet>/<prefix, * for open digits>/*/*/*` (a node's live subscription).
pub fn lane_selector(fleet: &FleetName, prefix: LanePrefix) -> String {
    let mut s = fleet_root(fleet);
    push_lane_chunks(&mut s, prefix);
    s.push_str("/*/*/*");
    s
}

/// Selector for every record one source can hold:
/// `qis/v2/<fleet>/<its lane>/*/*/<source>` (what a node's queryable answers for).
pub fn source_selector(fleet: &FleetName, source: &SourceId) -> String {
    let mut s = fleet_root(fleet);
    push_lane_chunks(&mut s, lane_prefix(lane_of(source)));
    s.push_str("/*/*/");
    escape_chunk(source.as_str(), &mut s);
    s
}

/// Selector for the whole fleet: `qis/v2/<fleet>/**`.
pub fn fleet_selector(fleet: &FleetName) -> String {
    fleet_root(fleet) + "/**"
}

/// Reads a record key of fleet `fleet` back into a [`RecordKey`].
pub fn parse_record_key(fleet: &FleetName, key: &str) -> Result<RecordKey, KeyError> {
    let (got_fleet, record_key) = parse_any_record_key(key)?;
    if got_fleet != *fleet {
        return Err(KeyError::OtherFleet {
            expected: fleet.as_str().to_owned(),
            got: got_fleet.as_str().to_owned(),
        });
    }
    Ok(record_key)
}

/// Selector for every record key of one fleet (`qis/v2/<fleet>/` and 15 `*` chunks):
/// what a router storing that fleet only holds.
pub fn fleet_record_space(fleet: &FleetName) -> String {
    fleet_root(fleet) + &"/*".repeat(LANE_DEPTH + 3)
}

/// Reads a record key of any fleet back into its fleet and [`RecordKey`] (what a router
/// serving several fleets checks).
pub fn parse_any_record_key(key: &str) -> Result<(FleetName, RecordKey), KeyError> {
    let rest = key
        .strip_prefix(KEY_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| KeyError::WrongPrefix {
            key: key.to_owned(),
        })?;
    let chunks: Vec<&str> = rest.split('/').collect();
    if chunks.len() != 1 + LANE_DEPTH + 3 {
        return Err(KeyError::WrongShape {
            key: key.to_owned(),
            chunks: chunks.len() + 2,
        });
    }
    let (fleet_chunk, lane) = (chunks[0], &chunks[1..=LANE_DEPTH]);
    let [model, fp, source] = chunks[LANE_DEPTH + 1..] else {
        return Err(KeyError::WrongShape {
            key: key.to_owned(),
            chunks: chunks.len() + 2,
        });
    };
    let fleet = FleetName::new(unescape_chunk("fleet", fleet_chunk)?).map_err(|source| {
        KeyError::BadName {
            field: "fleet",
            source,
        }
    })?;
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
    // The lane is a function of the source: a key under another lane would reach
    // subscribers that did not choose its source (and escape those that did).
    let expected = lane_chunks(lane_of(&source));
    let got = lane.join("/");
    if got != expected {
        return Err(KeyError::WrongLane {
            key: key.to_owned(),
            got,
            expected,
        });
    }
    Ok((
        fleet,
        RecordKey {
            model,
            fingerprint,
            source,
        },
    ))
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
                // Lane 9d6 = 1001 1101 0110: SHA-256("qis.lane.v1\nrobot-1") starts 9d6.
                "qis/v2/depot%207/1/0/0/1/1/1/0/1/0/1/1/0/cosmos%2Fv1%2A%24%23%3F%25%40x/{}/robot-1",
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
        let lane = lane_of(&k.source);
        let ke = |s: String| KeyExpr::try_from(s).unwrap();
        let addr = ke(address_selector(
            &fleet(),
            LanePrefix::ALL,
            &k.model,
            &k.fingerprint,
        ));
        let src = ke(source_selector(&fleet(), &k.source));
        let all = ke(fleet_selector(&fleet()));
        assert!(addr.includes(&rk));
        assert!(src.includes(&rk));
        assert!(all.includes(&rk));
        // Lane prefixes of every depth hold the key iff they hold its lane.
        for sel in crate::fleet::lanes::select(&k.source, 0.05, 16) {
            let inside = sel.contains(lane);
            assert_eq!(ke(lane_selector(&fleet(), sel)).includes(&rk), inside);
            let q = ke(address_selector(&fleet(), sel, &k.model, &k.fingerprint));
            assert_eq!(
                q.intersects(&src),
                inside,
                "a query of {sel:?} reaches the source's queryable"
            );
        }
        assert!(ke(lane_selector(&fleet(), LanePrefix::of_lane(lane))).includes(&rk));
        let other = key("m/1", "r*");
        let other = KeyExpr::try_from(record_key(&fleet(), &other)).unwrap();
        assert!(!src.intersects(&other));
    }

    #[test]
    fn bad_keys_are_refused_with_typed_errors() {
        let f = fleet();
        let fp = "5a".repeat(16);
        assert!(matches!(
            parse_record_key(&f, "qis/v1/depot%207/m/fp/r"),
            Err(KeyError::WrongPrefix { .. })
        ));
        assert!(matches!(
            parse_record_key(&f, "qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/m/fp"),
            Err(KeyError::WrongShape { chunks: 17, .. })
        ));
        assert!(matches!(
            parse_record_key(
                &f,
                &format!("qis/v2/depot8/0/0/0/0/0/1/1/0/1/0/1/0/m/{fp}/r")
            ),
            Err(KeyError::OtherFleet { .. })
        ));
        // Lowercase hex, an escaped plain byte, a truncated escape, a raw special byte.
        for model in ["a%2f", "%41", "a%2", "a+b"] {
            assert!(
                matches!(
                    parse_record_key(
                        &f,
                        &format!("qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/{model}/{fp}/r")
                    ),
                    Err(KeyError::BadEscape {
                        field: "model_id",
                        ..
                    })
                ),
                "{model}"
            );
        }
        assert!(matches!(
            parse_record_key(&f, "qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/m/abc/r"),
            Err(KeyError::BadName {
                field: "fingerprint",
                ..
            })
        ));
        assert!(matches!(
            parse_record_key(
                &f,
                &format!(
                    "qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/m/{}/r",
                    "5A".repeat(16)
                )
            ),
            Err(KeyError::BadEscape {
                field: "fingerprint",
                ..
            })
        ));
        assert!(matches!(
            parse_record_key(
                &f,
                &format!("qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/m/{fp}/%0A")
            ),
            Err(KeyError::BadName {
                field: "source",
                ..
            })
        ));
        assert!(matches!(
            parse_record_key(
                &f,
                &format!("qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/m/{fp}/%FF")
            ),
            Err(KeyError::BadEscape {
                field: "source",
                ..
            })
        ));
    }

    #[test]
    fn a_key_under_another_lane_than_its_source_is_refused() {
        let f = fleet();
        let fp = "5a".repeat(16);
        // Source `r` is in lane 06a = 0000 0110 1010.
        assert!(
            parse_record_key(
                &f,
                &format!("qis/v2/depot%207/0/0/0/0/0/1/1/0/1/0/1/0/m/{fp}/r")
            )
            .is_ok()
        );
        for lane in [
            "0/0/0/0/0/1/1/0/1/0/1/1",
            "1/0/0/0/0/1/1/0/1/0/1/0",
            "0/0/0/0/0/1/1/0/1/0/1/2",
            "0/0/0/0/0/1/1/0/1/0/1/*",
            "00/0/0/0/1/1/0/1/0/1/0/x",
        ] {
            assert!(
                matches!(
                    parse_record_key(&f, &format!("qis/v2/depot%207/{lane}/m/{fp}/r")),
                    Err(KeyError::WrongLane { .. })
                ),
                "{lane}"
            );
        }
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
