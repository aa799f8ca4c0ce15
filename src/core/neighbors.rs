//! Neighbors of a scenario: a locality-sensitive sketch over its canonical form and
//! embedding, and a faiss inner-product index over the sketches of known addresses.
//!
//! The sketch travels inside every record (so a robot can find neighbors among
//! addresses it never met itself); its algorithm is therefore part of the wire
//! protocol, specified in docs/PROTOCOL.md ("Sketch v1") and pinned by tests.
//!
//! The index is bounded ([`NeighborIndex::with_capacity`]): beyond its capacity the least
//! recently inserted or re-inserted address is evicted and counted.

use std::collections::{BTreeMap, HashMap};

use super::flat_ip::{FlatIp, IndexError};
use thiserror::Error;

use super::fingerprint::CanonicalScenario;
use super::ids::{Fingerprint, ModelId};

/// Number of components in a scenario sketch.
pub const SKETCH_DIM: usize = 32;

/// Longest embedding accepted (longer ones are refused as oversized).
pub const MAX_EMBEDDING_DIM: usize = 4096;

/// Default most addresses a [`NeighborIndex`] holds (over all models).
pub const DEFAULT_MAX_ADDRESSES: usize = 100_000;

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
    /// The index (faiss) refused an operation.
    #[error("neighbor index: {0}")]
    Index(#[from] IndexError),
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

/// One model's addresses: a faiss index whose evicted rows stay as tombstones until
/// they outnumber half the live ones, then the index is rebuilt from the live rows.
struct ModelIndex {
    index: FlatIp,
    /// The address at each faiss row; `None` once evicted.
    rows: Vec<Option<Fingerprint>>,
    /// Live addresses: (faiss row, last insert stamp).
    live: HashMap<Fingerprint, (usize, u64)>,
    /// Live addresses by last insert stamp, oldest first.
    by_age: BTreeMap<u64, Fingerprint>,
    /// Evicted rows still in `index`.
    dead: usize,
}

impl ModelIndex {
    fn new() -> Result<Self, NeighborError> {
        Ok(ModelIndex {
            index: FlatIp::new(SKETCH_DIM as u32)?,
            rows: Vec::new(),
            live: HashMap::new(),
            by_age: BTreeMap::new(),
            dead: 0,
        })
    }

    fn oldest(&self) -> Option<u64> {
        self.by_age.first_key_value().map(|(stamp, _)| *stamp)
    }

    /// Evicts the oldest address; rebuilds the index when tombstones pile up.
    fn evict_oldest(&mut self) -> Result<(), NeighborError> {
        let Some((_, fp)) = self.by_age.pop_first() else {
            return Ok(());
        };
        if let Some((row, _)) = self.live.remove(&fp) {
            self.rows[row] = None;
            self.dead += 1;
        }
        if self.dead * 2 > self.live.len() {
            self.rebuild()?;
        }
        Ok(())
    }

    /// A new faiss index holding only the live rows (amortized: at most every
    /// `live / 2` evictions).
    fn rebuild(&mut self) -> Result<(), NeighborError> {
        let mut index = FlatIp::new(SKETCH_DIM as u32)?;
        let old = self.index.rows();
        let mut kept = Vec::with_capacity(self.live.len() * SKETCH_DIM);
        let mut rows = Vec::with_capacity(self.live.len());
        for (row, fp) in self.rows.iter().enumerate() {
            let Some(fp) = fp else { continue };
            let Some(v) = old.get(row * SKETCH_DIM..(row + 1) * SKETCH_DIM) else {
                continue;
            };
            if let Some(entry) = self.live.get_mut(fp) {
                entry.0 = rows.len();
                rows.push(Some(*fp));
                kept.extend_from_slice(v);
            }
        }
        if !kept.is_empty() {
            index.add(&kept)?;
        }
        self.index = index;
        self.rows = rows;
        self.dead = 0;
        Ok(())
    }
}

/// Per-model similarity index over the sketches of known addresses (faiss, exact inner
/// product on unit vectors = cosine similarity), bounded by a capacity over all models.
pub struct NeighborIndex {
    models: HashMap<ModelId, ModelIndex>,
    capacity: usize,
    len: usize,
    clock: u64,
    evicted: u64,
}

impl Default for NeighborIndex {
    fn default() -> Self {
        NeighborIndex::with_capacity(DEFAULT_MAX_ADDRESSES)
    }
}

impl std::fmt::Debug for NeighborIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborIndex")
            .field("addresses", &self.len)
            .field("capacity", &self.capacity)
            .field("evicted", &self.evicted)
            .finish()
    }
}

impl NeighborIndex {
    /// An empty index holding at most [`DEFAULT_MAX_ADDRESSES`].
    pub fn new() -> Self {
        NeighborIndex::default()
    }

    /// An empty index holding at most `max_addresses` (at least 1) over all models.
    pub fn with_capacity(max_addresses: usize) -> Self {
        NeighborIndex {
            models: HashMap::new(),
            capacity: max_addresses.max(1),
            len: 0,
            clock: 0,
            evicted: 0,
        }
    }

    /// Most addresses held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Addresses evicted since creation to stay within the capacity.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Number of addresses indexed, over all models.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no address is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an address, or marks a known one as recently inserted; returns false when it
    /// was already indexed (its sketch is kept). Beyond the capacity the least recently
    /// inserted address (of any model) is evicted first.
    pub fn insert(
        &mut self,
        model: &ModelId,
        fingerprint: Fingerprint,
        sketch: &Sketch,
    ) -> Result<bool, NeighborError> {
        self.clock += 1;
        let stamp = self.clock;
        if let Some(m) = self.models.get_mut(model.as_str())
            && let Some(entry) = m.live.get_mut(&fingerprint)
        {
            m.by_age.remove(&entry.1);
            entry.1 = stamp;
            m.by_age.insert(stamp, fingerprint);
            return Ok(false);
        }
        if self.len >= self.capacity {
            self.evict_oldest()?;
        }
        let m = match self.models.get_mut(model.as_str()) {
            Some(m) => m,
            None => self
                .models
                .entry(model.clone())
                .or_insert(ModelIndex::new()?),
        };
        m.index.add(&sketch.to_unit())?;
        m.live.insert(fingerprint, (m.rows.len(), stamp));
        m.rows.push(Some(fingerprint));
        m.by_age.insert(stamp, fingerprint);
        self.len += 1;
        Ok(true)
    }

    /// Evicts the least recently inserted address over all models.
    fn evict_oldest(&mut self) -> Result<(), NeighborError> {
        let Some(model) = self
            .models
            .iter()
            .filter_map(|(id, m)| Some((m.oldest()?, id)))
            .min_by_key(|(stamp, _)| *stamp)
            .map(|(_, id)| id.clone())
        else {
            return Ok(());
        };
        let Some(m) = self.models.get_mut(model.as_str()) else {
            return Ok(());
        };
        self.len -= 1;
        self.evicted += 1;
        if m.live.len() <= 1 {
            self.models.remove(model.as_str());
            return Ok(());
        }
        m.evict_oldest()
    }

    /// Whether an address is indexed.
    pub fn contains(&self, model: &ModelId, fingerprint: &Fingerprint) -> bool {
        self.models
            .get(model.as_str())
            .is_some_and(|m| m.live.contains_key(fingerprint))
    }

    /// Up to `k` indexed addresses of `model` most similar to `sketch`, best first, with
    /// cosine similarity in [0, 1] (the query's own address is included if indexed).
    /// Evicted addresses are never returned.
    pub fn nearest(
        &self,
        model: &ModelId,
        sketch: &Sketch,
        k: usize,
    ) -> Result<Vec<(Fingerprint, f32)>, NeighborError> {
        let Some(m) = self.models.get(model.as_str()) else {
            return Ok(Vec::new());
        };
        let k = k.min(m.live.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let query = sketch.to_unit();
        // Tombstones are at most half the live rows: ask for enough rows that k live
        // ones are expected among them, and ask again for more if they were not.
        let rows = m.rows.len();
        let mut want = (k + (k * m.dead).div_ceil(m.live.len())).min(rows);
        loop {
            let found = m.index.search(&query, want)?;
            let out: Vec<(Fingerprint, f32)> = found
                .into_iter()
                .filter_map(|(row, score)| Some(((*m.rows.get(row)?)?, score.clamp(0.0, 1.0))))
                .take(k)
                .collect();
            // With k live rows among the `want` best rows, they are the k best live rows.
            if out.len() == k || want == rows {
                return Ok(out);
            }
            want = (want * 2).min(rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

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
    fn a_full_index_evicts_the_oldest_and_never_returns_an_evicted_address() {
        let model = ModelId::new("wm-1").unwrap();
        let (cap, extra) = (50, 37);
        let mut index = NeighborIndex::with_capacity(cap);
        let mut fps = Vec::new();
        let mut sketches = Vec::new();
        for speed in 0..(cap + extra) as i64 {
            let c = canon(&["surface=gravel"], &[("speed", speed)]);
            let s = sketch(&c, &[]).unwrap();
            assert!(index.insert(&model, c.fingerprint(), &s).unwrap());
            fps.push(c.fingerprint());
            sketches.push(s);
        }
        assert_eq!(index.len(), cap);
        assert_eq!(index.evicted(), extra as u64);
        let evicted: HashSet<_> = fps[..extra].iter().copied().collect();
        let kept: HashSet<_> = fps[extra..].iter().copied().collect();
        for fp in &fps {
            assert_eq!(index.contains(&model, fp), kept.contains(fp));
        }
        for s in &sketches[..extra] {
            let found = index.nearest(&model, s, 5).unwrap();
            assert_eq!(found.len(), 5);
            assert!(found.iter().all(|(fp, _)| !evicted.contains(fp)));
            assert!(found.windows(2).all(|w| w[0].1 >= w[1].1));
        }
        let last = cap + extra - 1;
        let found = index.nearest(&model, &sketches[last], 1).unwrap();
        assert_eq!(found[0].0, fps[last]);
        assert!((found[0].1 - 1.0).abs() < 1e-3);
        let all = index.nearest(&model, &sketches[0], 10 * cap).unwrap();
        assert_eq!(all.len(), cap);
        assert_eq!(all.iter().map(|f| f.0).collect::<HashSet<_>>(), kept);
    }

    #[test]
    fn reinsertion_refreshes_an_address_and_the_capacity_spans_models() {
        let (m1, m2) = (ModelId::new("wm-1").unwrap(), ModelId::new("wm-2").unwrap());
        let mut index = NeighborIndex::with_capacity(3);
        let add = |index: &mut NeighborIndex, m: &ModelId, tag: &str| {
            let c = canon(&[tag], &[]);
            index
                .insert(m, c.fingerprint(), &sketch(&c, &[]).unwrap())
                .unwrap();
            c.fingerprint()
        };
        let a = add(&mut index, &m1, "a=1");
        let b = add(&mut index, &m1, "b=1");
        let c = add(&mut index, &m1, "c=1");
        add(&mut index, &m1, "a=1"); // a is now the most recent
        let d = add(&mut index, &m2, "d=1");
        assert!(
            !index.contains(&m1, &b),
            "b was the least recently inserted"
        );
        assert!(index.contains(&m1, &a) && index.contains(&m1, &c) && index.contains(&m2, &d));
        add(&mut index, &m2, "e=1");
        add(&mut index, &m2, "f=1");
        assert!(!index.contains(&m1, &a) && !index.contains(&m1, &c));
        assert_eq!((index.len(), index.evicted()), (3, 3));
        let probe = sketch(&canon(&["a=1"], &[]), &[]).unwrap();
        assert!(index.nearest(&m1, &probe, 3).unwrap().is_empty());
        assert_eq!(index.nearest(&m2, &probe, 3).unwrap().len(), 3);
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
