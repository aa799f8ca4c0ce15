//! The outcome record: a source's summary for one address, in its versioned binary form.
//!
//! This is what is stored and what crosses the network (layout in docs/PROTOCOL.md).
//! All integers and floats are little endian. Version 2 (version 1 is the same layout
//! without the time-base flag; it is still read, as wall time):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 2 |
//! | 1 | 1 | flags: bit 0 = a 64-byte ed25519 signature trails the body; bit 1 = times are simulation time (`/clock`), else wall time since the Unix epoch; other bits 0 |
//! | 2 | 1 | state dimension n, 1..=64 |
//! | 3 | 1 | reserved, 0 |
//! | 4 | 8 | seq (u64), grows with every new version of this source's record |
//! | 12 | 8 | count (u64), outcomes folded in |
//! | 20 | 8 | first_ns (i64) |
//! | 28 | 8 | last_ns (i64), also the decay reference time |
//! | 36 | 8 | weight W (f64) |
//! | 44 | 8 | weight_sq Σw² (f64) |
//! | 52 | 32 | sketch (i8 × 32) of the scenario, for neighbor search |
//! | 84 | 8n | mean residual (f64 × n) |
//! | 84+8n | 4n(n+1) | scatter M2, upper triangle row by row (i ≤ j) |
//! | end | 64 | signature, only when flags bit 0 |
//!
//! For n = 8 a signed record is 500 bytes.

use nalgebra::{DMatrix, DVector};
use thiserror::Error;

use super::MAX_STATE_DIM;
use super::ids::Seq;
use super::neighbors::{SKETCH_DIM, Sketch};
use super::summary::Summary;

/// The record layout version this code writes (it reads this and [`RECORD_VERSION_V1`]).
pub const RECORD_VERSION: u8 = 2;
/// The first record layout: as version 2 without the time-base flag (wall time).
pub const RECORD_VERSION_V1: u8 = 1;
/// Length of an ed25519 signature trailer.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes before the mean vector.
pub const HEADER_LEN: usize = 52 + SKETCH_DIM;
const FLAG_SIGNED: u8 = 0b01;
const FLAG_SIM_TIME: u8 = 0b10;

/// The clock a record's times come from; records of another time base are not comparable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimeBase {
    /// Wall-clock nanoseconds since the Unix epoch.
    #[default]
    Wall,
    /// Simulation time (ROS `/clock`, `use_sim_time`).
    Sim,
}

/// Why bytes could not be read as a record.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    /// Fewer bytes than the header.
    #[error("record truncated: {len} bytes, header needs {HEADER_LEN}")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// A version this code does not read.
    #[error(
        "record version {got} not supported (this build reads {RECORD_VERSION_V1} and {RECORD_VERSION})"
    )]
    UnsupportedVersion {
        /// Version byte found.
        got: u8,
    },
    /// Flag or reserved bits that the record's version does not define.
    #[error("record has unknown flags {flags:#04x} or reserved byte {reserved}")]
    UnknownFlags {
        /// Flags byte found.
        flags: u8,
        /// Reserved byte found.
        reserved: u8,
    },
    /// Dimension 0 or above the maximum.
    #[error("record dimension {dim} out of range 1..={MAX_STATE_DIM}")]
    BadDimension {
        /// Dimension found.
        dim: usize,
    },
    /// Length differs from what the header announces.
    #[error("record length {len} does not match {expected} announced by its header")]
    WrongLength {
        /// Bytes received.
        len: usize,
        /// Bytes the header implies.
        expected: usize,
    },
    /// A float field is NaN or infinite.
    #[error("record field {field} is not finite")]
    NonFinite {
        /// Which field.
        field: &'static str,
    },
    /// Fields that contradict each other (negative weight, first after last, ...).
    #[error("record is inconsistent: {reason}")]
    Inconsistent {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why a record could not be encoded.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EncodeError {
    /// The summary has no outcomes; an empty record is never shared.
    #[error("refusing to encode a record with no outcomes")]
    Empty,
}

/// One source's summary for one address, with its version and the scenario's sketch.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeRecord {
    /// Version of this source's record; receivers keep only the highest.
    pub seq: Seq,
    /// Sketch of the scenario, so receivers can index the address for neighbor search.
    pub sketch: Sketch,
    /// The residual statistics.
    pub summary: Summary,
    /// The clock the summary's times come from.
    pub time_base: TimeBase,
}

/// A decoded record and, when present, its signature and the bytes it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedRecord {
    /// The record.
    pub record: OutcomeRecord,
    /// The ed25519 signature trailer, if the record was signed.
    pub signature: Option<[u8; SIGNATURE_LEN]>,
    /// Length of the body (everything before the signature), which the signature covers.
    pub body_len: usize,
}

/// Encoded length of an unsigned record of dimension `dim`.
pub fn body_len(dim: usize) -> usize {
    HEADER_LEN + 8 * dim + 4 * dim * (dim + 1)
}

impl OutcomeRecord {
    /// Encodes the record; with `signed`, sets the flag so a signature can be appended.
    pub fn encode_body(&self, signed: bool) -> Result<Vec<u8>, EncodeError> {
        let s = &self.summary;
        if s.count() == 0 {
            return Err(EncodeError::Empty);
        }
        let n = s.dim();
        let mut out = Vec::with_capacity(body_len(n) + if signed { SIGNATURE_LEN } else { 0 });
        out.push(RECORD_VERSION);
        let sim = if self.time_base == TimeBase::Sim {
            FLAG_SIM_TIME
        } else {
            0
        };
        out.push(if signed { FLAG_SIGNED } else { 0 } | sim);
        out.push(n as u8);
        out.push(0);
        out.extend_from_slice(&self.seq.0.to_le_bytes());
        out.extend_from_slice(&s.count().to_le_bytes());
        out.extend_from_slice(&s.first_ns().to_le_bytes());
        out.extend_from_slice(&s.last_ns().to_le_bytes());
        out.extend_from_slice(&s.weight().to_le_bytes());
        out.extend_from_slice(&s.weight_sq().to_le_bytes());
        out.extend(self.sketch.0.iter().map(|&b| b as u8));
        for v in s.mean().iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let m2 = s.m2();
        for i in 0..n {
            for j in i..n {
                out.extend_from_slice(&m2[(i, j)].to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Encodes an unsigned record.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_body(false)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[self.pos..self.pos + N]);
        self.pos += N;
        a
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn f64(&mut self, field: &'static str) -> Result<f64, DecodeError> {
        let v = f64::from_le_bytes(self.take());
        if v.is_finite() {
            Ok(v)
        } else {
            Err(DecodeError::NonFinite { field })
        }
    }
}

/// Decodes and checks a record; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<DecodedRecord, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    let known_flags = match bytes[0] {
        RECORD_VERSION => FLAG_SIGNED | FLAG_SIM_TIME,
        RECORD_VERSION_V1 => FLAG_SIGNED,
        got => return Err(DecodeError::UnsupportedVersion { got }),
    };
    let (flags, reserved) = (bytes[1], bytes[3]);
    if flags & !known_flags != 0 || reserved != 0 {
        return Err(DecodeError::UnknownFlags { flags, reserved });
    }
    let time_base = if flags & FLAG_SIM_TIME != 0 {
        TimeBase::Sim
    } else {
        TimeBase::Wall
    };
    let n = bytes[2] as usize;
    if n == 0 || n > MAX_STATE_DIM {
        return Err(DecodeError::BadDimension { dim: n });
    }
    let signed = flags & FLAG_SIGNED != 0;
    let body = body_len(n);
    let expected = body + if signed { SIGNATURE_LEN } else { 0 };
    if bytes.len() != expected {
        return Err(DecodeError::WrongLength {
            len: bytes.len(),
            expected,
        });
    }
    let mut r = Reader { bytes, pos: 4 };
    let seq = Seq(r.u64());
    let count = r.u64();
    let first_ns = r.i64();
    let last_ns = r.i64();
    let weight = r.f64("weight")?;
    let weight_sq = r.f64("weight_sq")?;
    let sketch_bytes: [u8; SKETCH_DIM] = r.take();
    let sketch = Sketch(sketch_bytes.map(|b| b as i8));
    let mut mean = DVector::zeros(n);
    for i in 0..n {
        mean[i] = r.f64("mean")?;
    }
    let mut m2 = DMatrix::zeros(n, n);
    for i in 0..n {
        for j in i..n {
            let v = r.f64("m2")?;
            m2[(i, j)] = v;
            m2[(j, i)] = v;
        }
    }
    if count == 0 {
        return Err(DecodeError::Inconsistent {
            reason: "count is 0",
        });
    }
    if weight < 0.0 || weight_sq < 0.0 {
        return Err(DecodeError::Inconsistent {
            reason: "negative weight",
        });
    }
    if first_ns > last_ns {
        return Err(DecodeError::Inconsistent {
            reason: "first_ns after last_ns",
        });
    }
    // Rounding in Chan's update can leave a diagonal a hair below zero; more is corruption.
    let tolerance = 1e-9 * (1.0 + m2.diagonal().abs().sum());
    if m2.diagonal().iter().any(|&d| d < -tolerance) {
        return Err(DecodeError::Inconsistent {
            reason: "negative variance",
        });
    }
    let signature = signed.then(|| r.take::<SIGNATURE_LEN>());
    Ok(DecodedRecord {
        record: OutcomeRecord {
            seq,
            sketch,
            summary: Summary::from_parts(count, weight, weight_sq, mean, m2, first_ns, last_ns),
            time_base,
        },
        signature,
        body_len: body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::summary::Decay;
    use proptest::prelude::*;

    fn record(dim: usize, samples: usize) -> OutcomeRecord {
        let mut s = Summary::empty(dim).unwrap();
        for k in 0..samples {
            let r: Vec<f64> = (0..dim).map(|i| (k * 7 + i) as f64 * 0.1 - 1.0).collect();
            s.add(&r, k as i64 * 1_000_000, Decay::from_half_life_secs(3600.0))
                .unwrap();
        }
        let mut sk = [0i8; SKETCH_DIM];
        sk.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as i8 - 16);
        OutcomeRecord {
            seq: Seq(42),
            sketch: Sketch(sk),
            summary: s,
            time_base: TimeBase::Wall,
        }
    }

    #[test]
    fn round_trips_exactly() {
        let rec = record(3, 10);
        let bytes = rec.encode().unwrap();
        assert_eq!(bytes.len(), body_len(3));
        let d = decode(&bytes).unwrap();
        assert_eq!(d.record, rec);
        assert_eq!(d.signature, None);
    }

    #[test]
    fn time_base_round_trips() {
        let rec = OutcomeRecord {
            time_base: TimeBase::Sim,
            ..record(2, 4)
        };
        let bytes = rec.encode().unwrap();
        assert_eq!(bytes[1], FLAG_SIM_TIME);
        assert_eq!(decode(&bytes).unwrap().record, rec);
    }

    #[test]
    fn dimension_8_signed_fits_in_512_bytes() {
        let mut bytes = record(8, 5).encode_body(true).unwrap();
        bytes.extend_from_slice(&[7u8; SIGNATURE_LEN]);
        assert!(bytes.len() <= 512, "{} bytes", bytes.len());
        let d = decode(&bytes).unwrap();
        assert_eq!(d.signature, Some([7u8; SIGNATURE_LEN]));
        assert_eq!(d.body_len, body_len(8));
    }

    #[test]
    fn refuses_bad_bytes_with_typed_errors() {
        let good = record(2, 3).encode().unwrap();
        assert_eq!(decode(&good[..10]), Err(DecodeError::Truncated { len: 10 }));
        let mut v = good.clone();
        v[0] = 3;
        assert_eq!(decode(&v), Err(DecodeError::UnsupportedVersion { got: 3 }));
        // Version 1 has no time-base flag.
        let mut v = good.clone();
        v[0] = RECORD_VERSION_V1;
        assert_eq!(decode(&v).unwrap().record, record(2, 3));
        v[1] = FLAG_SIM_TIME;
        assert!(matches!(decode(&v), Err(DecodeError::UnknownFlags { .. })));
        let mut v = good.clone();
        v.push(0);
        assert!(matches!(decode(&v), Err(DecodeError::WrongLength { .. })));
        let mut v = good.clone();
        v[2] = 65;
        assert_eq!(decode(&v), Err(DecodeError::BadDimension { dim: 65 }));
        let mut v = good.clone();
        v[36..44].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(decode(&v), Err(DecodeError::NonFinite { field: "weight" }));
        let mut v = good.clone();
        v[1] = 0x80;
        assert!(matches!(decode(&v), Err(DecodeError::UnknownFlags { .. })));
        let mut v = good;
        v[12..20].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(decode(&v), Err(DecodeError::Inconsistent { .. })));
        assert_eq!(
            OutcomeRecord {
                summary: Summary::empty(2).unwrap(),
                ..record(2, 1)
            }
            .encode(),
            Err(EncodeError::Empty)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_records(pos in 0usize..500, val in any::<u8>(), dim in 1usize..9) {
            let mut v = record(dim, 4).encode().unwrap();
            let p = pos % v.len();
            v[p] = val;
            if let Ok(d) = decode(&v) {
                prop_assert_eq!(d.record.summary.dim(), dim);
            }
        }
    }
}
