//! Neighbors of a scenario: a locality-sensitive sketch over its canonical form and
//! embedding, and a faiss inner-product index over the sketches of known addresses.
//!
//! The sketch travels inside every record (so a robot can find neighbors among
//! addresses it never met itself); its algorithm is therefore part of the wire
//! protocol, specified in docs/PROTOCOL.md ("Sketch v1") and pinned by tests.

use std::collections::{HashMap, HashSet};

use faiss::index::flat::FlatIndexImpl;
use faiss::{ConcurrentIndex, Index};
use thiserror::Error;

use super::fingerprint::CanonicalScenario;
use super::ids::{Fingerprint, ModelId};

/// Number of components in a scenario sketch.
pub const SKETCH_DIM: usize = 32;

/// Longest embedding accepted (longer ones are refused as oversized).
pub const MAX_EMBEDDING_DIM: usize = 4096;

/// Weights of a numeric feature's own bin and its two adjacent bins in the sketch, so
/// that scenarios one bin apart share most of their code.
const BIN_SPREAD: [(i64, f64); 3] = [(-1, 0.5), (0, 1.0), (1, 0.5)];

/// A scenario's locality-sensitive sketch: a unit vector quantized to i8 (×127).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sketch(pub [i8; SKETCH_DIM]);

/// Why a sketch or a neighbor search failed.
#[derive(Debug, Error)]
pub enum NeighborError {
    /// The embedding has a NaN or infinite component.
    #[error("non-finite embedding value at index {index}")]
    NonFiniteEmbedding {
        /// Index of the first bad component.
        index: usize,
    },
    /// The embedding is longer than [`MAX_EMBEDDING_DIM`].
    #[error("oversized embedding: {len} values, at most {MAX_EMBEDDING_DIM}")]
    OversizedEmbedding {
        /// Its length.
        len: usize,
    },
    /// The faiss index refused an operation.
    #[error("faiss index: {0}")]
    Faiss(#[from] faiss::error::Error),
}

/// FNV-1a, 64 bit: a tiny hash any implementation can reproduce byte for byte.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// splitmix64 finalizer: spreads a hash's bits so each sign is an independent coin.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Adds `weight` times the ±1 vector drawn from `hash` (bit j of splitmix64(hash) set → +1).
fn add_signs(acc: &mut [f64; SKETCH_DIM], hash: u64, weight: f64) {
    let bits = splitmix64(hash);
    for (j, a) in acc.iter_mut().enumerate() {
        *a += if bits >> j & 1 == 1 { weight } else { -weight };
    }
}

fn normalize(v: &mut [f64; SKETCH_DIM]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
        true
    } else {
        false
    }
}

/// The sketch of a canonical scenario and its (optional) embedding.
///
/// Tags and quantized features are hashed to random ±1 vectors (a feature also adds
/// half of its neighboring bins' vectors); the embedding is randomly projected to
/// [`SKETCH_DIM`] components. Both halves are normalized, summed with equal weight,
/// normalized again and quantized, so cosine similarity of sketches tracks how much
/// two scenarios share. When the scenario carries a fleet key, every token hash is the
/// keyed one ([`FleetKey::token_hash`](super::fingerprint::FleetKey::token_hash)), so
/// sketches compare within the fleet but not against an outsider's dictionary.
pub fn sketch(canonical: &CanonicalScenario, embedding: &[f32]) -> Result<Sketch, NeighborError> {
    if embedding.len() > MAX_EMBEDDING_DIM {
        return Err(NeighborError::OversizedEmbedding {
            len: embedding.len(),
        });
    }
    if let Some(index) = embedding.iter().position(|v| !v.is_finite()) {
        return Err(NeighborError::NonFiniteEmbedding { index });
    }
    let key = canonical.key.as_ref();
    let hash = |parts: &[&[u8]]| key.map_or_else(|| fnv1a64(parts), |k| k.token_hash(parts));
    let mut symbolic = [0.0; SKETCH_DIM];
    for tag in &canonical.tags {
        add_signs(&mut symbolic, hash(&[b"t ", tag.as_bytes()]), 1.0);
    }
    for (name, bin) in &canonical.features {
        for (offset, weight) in BIN_SPREAD {
            let b = bin.saturating_add(offset).to_string();
            let h = hash(&[b"f ", name.as_bytes(), b" ", b.as_bytes()]);
            add_signs(&mut symbolic, h, weight);
        }
    }
    let mut combined = [0.0; SKETCH_DIM];
    if normalize(&mut symbolic) {
        combined = symbolic;
    }
    let mut projected = [0.0; SKETCH_DIM];
    for (i, &e) in embedding.iter().enumerate() {
        let h = match key {
            Some(k) => k.embedding_hash(i),
            None => fnv1a64(&[b"e ", i.to_string().as_bytes()]),
        };
        add_signs(&mut projected, h, f64::from(e));
    }
    if normalize(&mut projected) {
        combined
            .iter_mut()
            .zip(projected)
            .for_each(|(c, p)| *c += p);
    }
    normalize(&mut combined);
    let mut out = [0i8; SKETCH_DIM];
    for (o, c) in out.iter_mut().zip(combined) {
        // |c| ≤ 1 after normalization, so the cast cannot saturate past ±127.
        *o = (c * 127.0).round().clamp(-127.0, 127.0) as i8;
    }
    Ok(Sketch(out))
}

impl Sketch {
    /// The sketch as a unit-length float vector (what the index stores).
    pub fn to_unit(&self) -> [f32; SKETCH_DIM] {
        let mut v = [0f32; SKETCH_DIM];
        let mut norm = 0f32;
        for (o, &q) in v.iter_mut().zip(&self.0) {
            *o = f32::from(q);
            norm += *o * *o;
        }
        if norm > 0.0 {
            let inv = norm.sqrt().recip();
            v.iter_mut().for_each(|x| *x *= inv);
        }
        v
    }

    /// Cosine similarity to another sketch, clipped to [0, 1].
    pub fn similarity(&self, other: &Sketch) -> f32 {
        let (a, b) = (self.to_unit(), other.to_unit());
        a.iter()
            .zip(&b)
            .map(|(x, y)| x * y)
            .sum::<f32>()
            .clamp(0.0, 1.0)
    }
}

struct ModelIndex {
    index: FlatIndexImpl,
    fingerprints: Vec<Fingerprint>,
    known: HashSet<Fingerprint>,
}

/// Per-model similarity index over the sketches of known addresses (faiss, exact inner
/// product on unit vectors = cosine similarity).
#[derive(Default)]
pub struct NeighborIndex {
    models: HashMap<ModelId, ModelIndex>,
}

impl std::fmt::Debug for NeighborIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborIndex")
            .field("addresses", &self.len())
            .finish()
    }
}

impl NeighborIndex {
    /// An empty index.
    pub fn new() -> Self {
        NeighborIndex::default()
    }

    /// Number of addresses indexed, over all models.
    pub fn len(&self) -> usize {
        self.models.values().map(|m| m.fingerprints.len()).sum()
    }

    /// Whether no address is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an address; returns false when it was already indexed.
    pub fn insert(
        &mut self,
        model: &ModelId,
        fingerprint: Fingerprint,
        sketch: &Sketch,
    ) -> Result<bool, NeighborError> {
        let m = match self.models.get_mut(model.as_str()) {
            Some(m) => m,
            None => self.models.entry(model.clone()).or_insert(ModelIndex {
                index: FlatIndexImpl::new_ip(SKETCH_DIM as u32)?,
                fingerprints: Vec::new(),
                known: HashSet::new(),
            }),
        };
        if !m.known.insert(fingerprint) {
            return Ok(false);
        }
        m.index.add(&sketch.to_unit())?;
        m.fingerprints.push(fingerprint);
        Ok(true)
    }

    /// Whether an address is indexed.
    pub fn contains(&self, model: &ModelId, fingerprint: &Fingerprint) -> bool {
        self.models
            .get(model.as_str())
            .is_some_and(|m| m.known.contains(fingerprint))
    }

    /// Up to `k` indexed addresses of `model` most similar to `sketch`, best first, with
    /// cosine similarity in [0, 1] (the query's own address is included if indexed).
    pub fn nearest(
        &self,
        model: &ModelId,
        sketch: &Sketch,
        k: usize,
    ) -> Result<Vec<(Fingerprint, f32)>, NeighborError> {
        let Some(m) = self.models.get(model.as_str()) else {
            return Ok(Vec::new());
        };
        let k = k.min(m.fingerprints.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let found = ConcurrentIndex::search(&m.index, &sketch.to_unit(), k)?;
        Ok(found
            .labels
            .iter()
            .zip(&found.distances)
            .filter_map(|(label, &score)| {
                let i = usize::try_from(label.get()?).ok()?;
                Some((*m.fingerprints.get(i)?, score.clamp(0.0, 1.0)))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(tags: &[&str], features: &[(&str, i64)]) -> CanonicalScenario {
        CanonicalScenario {
            tags: tags.iter().map(|s| s.to_string()).collect(),
            features: features.iter().map(|(n, b)| (n.to_string(), *b)).collect(),
            key: None,
        }
    }

    #[test]
    fn sketch_is_deterministic_and_pinned() {
        let c = canon(&["surface=ice", "weather=snow"], &[("speed", 3)]);
        let a = sketch(&c, &[]).unwrap();
        assert_eq!(a, sketch(&c, &[]).unwrap());
        // Pinned bytes: a change to the algorithm is a protocol change (Sketch v1).
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let norm: f32 = a.to_unit().iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn similar_scenarios_are_closer_than_different_ones() {
        let base = sketch(
            &canon(&["surface=ice", "weather=snow"], &[("speed", 3)]),
            &[],
        )
        .unwrap();
        let next_bin = sketch(
            &canon(&["surface=ice", "weather=snow"], &[("speed", 4)]),
            &[],
        )
        .unwrap();
        let far_bin = sketch(
            &canon(&["surface=ice", "weather=snow"], &[("speed", 9)]),
            &[],
        )
        .unwrap();
        let other = sketch(
            &canon(&["surface=asphalt", "weather=dry"], &[("speed", 9)]),
            &[],
        )
        .unwrap();
        let s_next = base.similarity(&next_bin);
        let s_far = base.similarity(&far_bin);
        let s_other = base.similarity(&other);
        assert!(s_next > s_far, "{s_next} vs {s_far}");
        assert!(s_far > s_other, "{s_far} vs {s_other}");
        assert!(s_next > 0.8, "{s_next}");
    }

    #[test]
    fn embedding_moves_the_sketch() {
        let c = canon(&["surface=ice"], &[]);
        let e1: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
        let e2: Vec<f32> = e1.iter().map(|x| x + 0.01).collect();
        let e3: Vec<f32> = (0..64).map(|i| (i as f32 * 1.7).cos()).collect();
        let a = sketch(&c, &e1).unwrap();
        let b = sketch(&c, &e2).unwrap();
        let d = sketch(&c, &e3).unwrap();
        assert!(a.similarity(&b) > a.similarity(&d));
        assert!(matches!(
            sketch(&c, &[1.0, f32::NAN]),
            Err(NeighborError::NonFiniteEmbedding { index: 1 })
        ));
        assert!(matches!(
            sketch(&c, &vec![0.0; MAX_EMBEDDING_DIM + 1]),
            Err(NeighborError::OversizedEmbedding { .. })
        ));
    }

    #[test]
    fn index_returns_nearest_known_addresses_per_model() {
        let model = ModelId::new("wm-1").unwrap();
        let other_model = ModelId::new("wm-2").unwrap();
        let mut index = NeighborIndex::new();
        let mut fps = Vec::new();
        for speed in 0..20 {
            let c = canon(&["surface=gravel"], &[("speed", speed)]);
            let fp = c.fingerprint();
            assert!(index.insert(&model, fp, &sketch(&c, &[]).unwrap()).unwrap());
            fps.push(fp);
        }
        let c = canon(&["surface=gravel"], &[("speed", 7)]);
        assert!(
            !index
                .insert(&model, fps[7], &sketch(&c, &[]).unwrap())
                .unwrap()
        );
        assert_eq!(index.len(), 20);
        let found = index.nearest(&model, &sketch(&c, &[]).unwrap(), 3).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].0, fps[7]);
        assert!((found[0].1 - 1.0).abs() < 1e-3);
        let rest: HashSet<_> = found[1..].iter().map(|f| f.0).collect();
        assert_eq!(rest, HashSet::from([fps[6], fps[8]]));
        assert!(found.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(
            index
                .nearest(&other_model, &sketch(&c, &[]).unwrap(), 3)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn keyed_sketches_compare_within_the_fleet_only() {
        use crate::core::fingerprint::FleetKey;
        let secret = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let key = FleetKey::new(secret).unwrap();
        // Pinned (independent Python hmac): H_K("a") for the test secret.
        assert_eq!(key.token_hash(&[b"a"]), 0x24d5_5718_826a_f9e4);
        assert_eq!(
            key.token_hash(&[b"t ", b"weather=rain"]),
            0xef06_c747_64d5_8c17
        );
        let with = |c: CanonicalScenario, k: &FleetKey| CanonicalScenario {
            key: Some(k.clone()),
            ..c
        };
        let base = canon(&["surface=ice", "weather=snow"], &[("speed", 3)]);
        let next = canon(&["surface=ice", "weather=snow"], &[("speed", 4)]);
        let e: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
        let plain = sketch(&base, &e).unwrap();
        let keyed = sketch(&with(base.clone(), &key), &e).unwrap();
        let again = sketch(&with(base.clone(), &FleetKey::new(secret).unwrap()), &e).unwrap();
        let other_key = FleetKey::new(b"another fleet's secret").unwrap();
        let other = sketch(&with(base.clone(), &other_key), &e).unwrap();
        assert_eq!(keyed, again, "same secret, same sketch");
        assert_ne!(keyed, plain);
        assert_ne!(keyed, other);
        // Similarity is preserved inside the fleet.
        let keyed_next = sketch(&with(next, &key), &e).unwrap();
        assert!(keyed.similarity(&keyed_next) > 0.8);
        assert_eq!(key.embedding_hash(7), key.token_hash(&[b"e ", b"7"]));
        assert_eq!(
            key.embedding_hash(MAX_EMBEDDING_DIM + 1),
            key.token_hash(&[b"e ", (MAX_EMBEDDING_DIM + 1).to_string().as_bytes()])
        );
    }
}
