//! Record integrity: ed25519 signatures over a record and the key it is published under.
//!
//! The signed message is `qis.sig.v1\n` + the record's key (key space v1, as bytes) +
//! `\n` + the record body (`encode_body(true)`, so the flag byte that announces the
//! signature is covered too). Binding the key means a valid record cannot be replayed
//! under another fleet, model, fingerprint or source. The 64-byte signature trails the
//! body (record v1 layout). Spelled out in docs/PROTOCOL.md, "Signatures".

use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::core::ids::SourceId;
use crate::core::record::{DecodeError, EncodeError, OutcomeRecord, decode};

/// Domain separation tag that starts every signed message.
pub const SIGNATURE_CONTEXT: &[u8] = b"qis.sig.v1\n";

/// Length of an ed25519 secret seed or public key in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyParseError {
    /// Not 64 hex digits.
    #[error("expected {} hex digits, got {len} characters", KEY_LEN * 2)]
    NotHex {
        /// Characters found (after trimming).
        len: usize,
    },
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
}

/// Why a received record was refused.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum VerifyError {
    /// The payload is not a record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A trust list is configured and the record carries no signature.
    #[error("record is unsigned and this fleet requires signatures")]
    Unsigned,
    /// No trusted key verifies the signature.
    #[error("signature does not verify against any trusted key for source {from}")]
    BadSignature {
        /// The source the key names.
        from: String,
    },
}

fn parse_hex32(text: &str) -> Result<[u8; KEY_LEN], KeyParseError> {
    let t = text.trim();
    let mut out = [0u8; KEY_LEN];
    hex::decode_to_slice(t, &mut out).map_err(|_| KeyParseError::NotHex { len: t.len() })?;
    Ok(out)
}

/// Reads a 32-byte ed25519 secret seed written as 64 hex digits (surrounding whitespace
/// ignored), the content of the signing key file.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, KeyParseError> {
    Ok(SigningKey::from_bytes(&parse_hex32(text)?))
}

/// Reads an ed25519 public key written as 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyParseError> {
    VerifyingKey::from_bytes(&parse_hex32(text)?).map_err(|_| KeyParseError::InvalidPublicKey)
}

/// The public key of a signing key, as 64 hex digits (what goes in peers' trust lists).
pub fn public_key_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

fn signed_message(key_expr: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + key_expr.len() + 1 + body.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(key_expr.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

/// Encodes a record for the wire under `key_expr`: signed when `key` is given.
pub fn seal(
    record: &OutcomeRecord,
    key_expr: &str,
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, EncodeError> {
    let Some(key) = key else {
        return record.encode();
    };
    let mut bytes = record.encode_body(true)?;
    let sig: Signature = key.sign(&signed_message(key_expr, &bytes));
    bytes.extend_from_slice(&sig.to_bytes());
    Ok(bytes)
}

/// Who may sign records: per-source pinned keys and fleet-wide keys.
///
/// An empty trust list means the fleet runs unsigned: every well-formed record is
/// accepted (signed or not, since nothing can be checked). A non-empty one requires a
/// valid signature: by the source's pinned key when it has one, else by any fleet key.
#[derive(Clone, Debug, Default)]
pub struct TrustList {
    by_source: HashMap<SourceId, VerifyingKey>,
    fleet: Vec<VerifyingKey>,
}

impl TrustList {
    /// A trust list from pinned (source, key) pairs and fleet-wide keys.
    pub fn new(
        by_source: impl IntoIterator<Item = (SourceId, VerifyingKey)>,
        fleet: impl IntoIterator<Item = VerifyingKey>,
    ) -> Self {
        TrustList {
            by_source: by_source.into_iter().collect(),
            fleet: fleet.into_iter().collect(),
        }
    }

    /// True when no key is configured (the fleet runs unsigned).
    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty() && self.fleet.is_empty()
    }

    /// Decodes a payload received under `key_expr` from `source` and checks its signature.
    pub fn open(
        &self,
        key_expr: &str,
        source: &SourceId,
        payload: &[u8],
    ) -> Result<OutcomeRecord, VerifyError> {
        let decoded = decode(payload)?;
        if self.is_empty() {
            return Ok(decoded.record);
        }
        let sig = decoded.signature.ok_or(VerifyError::Unsigned)?;
        let sig = Signature::from_bytes(&sig);
        let message = signed_message(key_expr, &payload[..decoded.body_len]);
        let ok = |k: &VerifyingKey| k.verify_strict(&message, &sig).is_ok();
        let verified = match self.by_source.get(source) {
            Some(pinned) => ok(pinned),
            None => self.fleet.iter().any(ok),
        };
        if verified {
            Ok(decoded.record)
        } else {
            Err(VerifyError::BadSignature {
                from: source.as_str().to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Seq;
    use crate::core::neighbors::Sketch;
    use crate::core::summary::Summary;

    fn record(seq: u64) -> OutcomeRecord {
        OutcomeRecord {
            seq: Seq(seq),
            sketch: Sketch([3; 32]),
            summary: Summary::from_sample(&[0.5, -1.0], 1_000).unwrap(),
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; KEY_LEN])
    }

    const KE: &str = "qis/v1/f/m/00000000000000000000000000000000/a";

    #[test]
    fn signed_records_verify_and_tampering_is_caught() {
        let a = SourceId::new("a").unwrap();
        let trust = TrustList::new([(a.clone(), key(1).verifying_key())], []);
        let bytes = seal(&record(4), KE, Some(&key(1))).unwrap();
        assert_eq!(trust.open(KE, &a, &bytes), Ok(record(4)));
        // Any flipped body byte (here the seq) breaks the signature or the decode.
        let mut t = bytes.clone();
        t[4] ^= 1;
        assert!(matches!(
            trust.open(KE, &a, &t),
            Err(VerifyError::BadSignature { .. })
        ));
        // Same bytes under another key (moved to another fingerprint) are refused.
        let moved = KE.replace("/a", "/b").replace("000/", "001/");
        assert!(trust.open(&moved, &a, &bytes).is_err());
        // A forger's key, and an unsigned record, are refused.
        let forged = seal(&record(5), KE, Some(&key(2))).unwrap();
        assert!(matches!(
            trust.open(KE, &a, &forged),
            Err(VerifyError::BadSignature { .. })
        ));
        let unsigned = seal(&record(5), KE, None).unwrap();
        assert_eq!(trust.open(KE, &a, &unsigned), Err(VerifyError::Unsigned));
    }

    #[test]
    fn fleet_keys_cover_unpinned_sources_only() {
        let a = SourceId::new("a").unwrap();
        let b = SourceId::new("b").unwrap();
        let trust = TrustList::new(
            [(a.clone(), key(1).verifying_key())],
            [key(9).verifying_key()],
        );
        let by_fleet = seal(&record(1), KE, Some(&key(9))).unwrap();
        assert!(trust.open(KE, &b, &by_fleet).is_ok());
        // a is pinned: the fleet key does not speak for it.
        assert!(trust.open(KE, &a, &by_fleet).is_err());
    }

    #[test]
    fn empty_trust_list_accepts_unsigned() {
        let a = SourceId::new("a").unwrap();
        let trust = TrustList::default();
        let unsigned = seal(&record(1), KE, None).unwrap();
        assert_eq!(trust.open(KE, &a, &unsigned), Ok(record(1)));
        assert!(matches!(
            trust.open(KE, &a, &unsigned[..10]),
            Err(VerifyError::Decode(_))
        ));
    }

    #[test]
    fn keys_parse_from_hex() {
        let k = key(7);
        let hexed = hex::encode(k.to_bytes());
        assert_eq!(
            parse_signing_key(&format!(" {hexed}\n"))
                .unwrap()
                .to_bytes(),
            k.to_bytes()
        );
        assert_eq!(
            parse_public_key(&public_key_hex(&k)).unwrap(),
            k.verifying_key()
        );
        assert_eq!(
            parse_public_key("abc"),
            Err(KeyParseError::NotHex { len: 3 })
        );
    }
}
