//! Record integrity: ed25519 signatures over a record and the key it is published under.
//!
//! The signed message is `qis.sig.v1\n` + the record's key (key space v1, as bytes) +
//! `\n` + the record body (`encode_body(true)`, so the flag byte that announces the
//! signature is covered too). Binding the key means a valid record cannot be replayed
//! under another fleet, model, fingerprint or source. The 64-byte signature trails the
//! body (record layout). The key that must verify it is the one the source id names
//! (self-certifying ids, see [`super::identity`]). Spelled out in docs/PROTOCOL.md,
//! "Signatures".

use std::collections::HashSet;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use super::identity::key_of_source;
use crate::core::ids::SourceId;
use crate::core::record::{DecodeError, DecodedRecord, EncodeError, OutcomeRecord, decode};

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
    /// The record carries no signature and this fleet requires signatures.
    #[error("record is unsigned and this fleet requires signatures")]
    Unsigned,
    /// The source id is not a public key, so nothing can vouch for the record.
    #[error("source {from} is not a self-certifying id (64 hex digits of an ed25519 key)")]
    NotSelfCertified {
        /// The source the key expression names.
        from: String,
    },
    /// The source's key is not on this fleet's admission list.
    #[error("source {from} is not admitted to this fleet")]
    NotAdmitted {
        /// The source the key expression names.
        from: String,
    },
    /// The signature does not verify against the key the source id names.
    #[error("signature does not verify against the key of source {from}")]
    BadSignature {
        /// The source the key expression names.
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

/// Who may write records, and how that is checked.
///
/// - `SelfCertified` (the default): every record must be signed by the key its source id
///   names ([`key_of_source`]); with a non-empty admission list only those keys may write
///   at all. Nobody can write as another source without its secret key.
/// - `Unsigned` (explicit opt-out, `exchange.unsigned: true`): every well-formed record
///   is accepted under any source id; nothing can be checked.
#[derive(Clone, Debug)]
pub enum Admission {
    /// Signed records under self-certifying source ids, optionally from listed keys only.
    SelfCertified {
        /// Public keys admitted to write; empty = any self-certified key.
        allowed: HashSet<[u8; KEY_LEN]>,
    },
    /// No signature checks (opt-out).
    Unsigned,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::SelfCertified {
            allowed: HashSet::new(),
        }
    }
}

impl Admission {
    /// Self-certified records from the given keys only (empty = from any key).
    pub fn allow(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Admission::SelfCertified {
            allowed: keys.into_iter().map(|k| k.to_bytes()).collect(),
        }
    }

    /// True when records are signed and checked.
    pub fn is_signed(&self) -> bool {
        matches!(self, Admission::SelfCertified { .. })
    }

    /// Whether `source` may write at all (its id is a key, and a listed one where keys are
    /// listed), without looking at a record: the cheap part of [`Self::open`], for
    /// records whose signature was checked before (a router's volume).
    pub fn admits(&self, source: &SourceId) -> bool {
        match self {
            Admission::Unsigned => true,
            Admission::SelfCertified { allowed } => key_of_source(source)
                .is_some_and(|k| allowed.is_empty() || allowed.contains(k.as_bytes())),
        }
    }

    /// Decodes a payload received under `key_expr` from `source` and checks who wrote it.
    pub fn open(
        &self,
        key_expr: &str,
        source: &SourceId,
        payload: &[u8],
    ) -> Result<OutcomeRecord, VerifyError> {
        // The cheap checks first: a stranger's garbage costs no signature verification.
        let key = self.writer_key(source)?;
        self.check(key, key_expr, source, payload, decode(payload)?)
    }

    /// Checks who wrote a payload that the caller has already decoded (`decoded` of
    /// `payload`), e.g. to look at its seq before paying for the signature.
    pub fn open_decoded(
        &self,
        key_expr: &str,
        source: &SourceId,
        payload: &[u8],
        decoded: DecodedRecord,
    ) -> Result<OutcomeRecord, VerifyError> {
        let key = self.writer_key(source)?;
        self.check(key, key_expr, source, payload, decoded)
    }

    /// The key `source` names, if it may write (`None` in unsigned mode).
    fn writer_key(&self, source: &SourceId) -> Result<Option<VerifyingKey>, VerifyError> {
        let Admission::SelfCertified { allowed } = self else {
            return Ok(None);
        };
        let key = key_of_source(source).ok_or_else(|| VerifyError::NotSelfCertified {
            from: source.as_str().to_owned(),
        })?;
        if !allowed.is_empty() && !allowed.contains(key.as_bytes()) {
            return Err(VerifyError::NotAdmitted {
                from: source.as_str().to_owned(),
            });
        }
        Ok(Some(key))
    }

    /// Verifies the signature of `decoded` with `key` (none to check in unsigned mode).
    fn check(
        &self,
        key: Option<VerifyingKey>,
        key_expr: &str,
        source: &SourceId,
        payload: &[u8],
        decoded: DecodedRecord,
    ) -> Result<OutcomeRecord, VerifyError> {
        let Some(key) = key else {
            return Ok(decoded.record);
        };
        let sig = decoded.signature.ok_or(VerifyError::Unsigned)?;
        let message = signed_message(key_expr, &payload[..decoded.body_len]);
        key.verify_strict(&message, &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::BadSignature {
                from: source.as_str().to_owned(),
            })?;
        Ok(decoded.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Seq;
    use crate::core::neighbors::Sketch;
    use crate::core::summary::Summary;
    use crate::fleet::identity::source_id_of;

    fn record(seq: u64) -> OutcomeRecord {
        OutcomeRecord {
            seq: Seq(seq),
            sketch: Sketch([3; 32]),
            summary: Summary::from_sample(&[0.5, -1.0], 1_000).unwrap(),
            time_base: Default::default(),
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; KEY_LEN])
    }

    fn ke(source: &SourceId) -> String {
        format!("qis/v1/f/m/00000000000000000000000000000000/{source}")
    }

    #[test]
    fn only_the_key_a_source_id_names_can_write_as_it() {
        let a = source_id_of(&key(1).verifying_key());
        let ke_a = ke(&a);
        let open = Admission::default();
        let bytes = seal(&record(4), &ke_a, Some(&key(1))).unwrap();
        assert_eq!(open.open(&ke_a, &a, &bytes), Ok(record(4)));
        // Any flipped body byte (here the seq) breaks the signature.
        let mut t = bytes.clone();
        t[4] ^= 1;
        assert!(matches!(
            open.open(&ke_a, &a, &t),
            Err(VerifyError::BadSignature { .. })
        ));
        // The same bytes under another key expression (moved address) are refused.
        let moved = ke_a.replace("000/", "001/");
        assert!(open.open(&moved, &a, &bytes).is_err());
        // A forger signing with its own key under a's id, and an unsigned record, fail.
        let forged = seal(&record(u64::MAX), &ke_a, Some(&key(2))).unwrap();
        assert!(matches!(
            open.open(&ke_a, &a, &forged),
            Err(VerifyError::BadSignature { .. })
        ));
        let unsigned = seal(&record(5), &ke_a, None).unwrap();
        assert_eq!(open.open(&ke_a, &a, &unsigned), Err(VerifyError::Unsigned));
        // A name that is not a key cannot vouch for anything.
        let named = SourceId::new("robot-a").unwrap();
        assert!(matches!(
            open.open(&ke(&named), &named, &unsigned),
            Err(VerifyError::NotSelfCertified { .. })
        ));
    }

    #[test]
    fn admission_list_limits_who_writes() {
        let a = source_id_of(&key(1).verifying_key());
        let b = source_id_of(&key(2).verifying_key());
        let only_a = Admission::allow([key(1).verifying_key()]);
        let by_a = seal(&record(1), &ke(&a), Some(&key(1))).unwrap();
        let by_b = seal(&record(1), &ke(&b), Some(&key(2))).unwrap();
        assert!(only_a.open(&ke(&a), &a, &by_a).is_ok());
        assert!(matches!(
            only_a.open(&ke(&b), &b, &by_b),
            Err(VerifyError::NotAdmitted { .. })
        ));
    }

    #[test]
    fn unsigned_opt_out_accepts_any_well_formed_record() {
        let a = SourceId::new("a").unwrap();
        let unsigned = seal(&record(1), &ke(&a), None).unwrap();
        assert_eq!(
            Admission::Unsigned.open(&ke(&a), &a, &unsigned),
            Ok(record(1))
        );
        assert!(matches!(
            Admission::Unsigned.open(&ke(&a), &a, &unsigned[..10]),
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
