//! Lanes: how a node's fan-in stays bounded by config, not by fleet size (key space v2,
//! docs/PROTOCOL.md "Lanes").
//!
//! Every source belongs to one of 4096 lanes, the first 12 bits of a hash of its id
//! ([`lane_of`]), written as 12 key chunks of one binary digit after the fleet. Binary,
//! not hex: a fraction of the lane space is then the sum of few prefixes (one per 1-bit
//! of its binary expansion), so a node needs 1 to 4 subscriptions and gets where hex
//! digits needed up to 16 (measured: docs/BENCHMARKS.md). A node that meets more
//! than about twice its budget of sources (`max_sources_per_address`) stops listening to
//! the whole fleet and listens to a few lane prefixes only, chosen by rendezvous hashing
//! of (its own id, prefix), covering the fraction `budget / sources` of the lane space
//! ([`select`]), so it hears about `budget` sources whatever the fleet size. Everything
//! here is a pure function: the exchange (`FleetExchange`) and the simulator call the
//! same code.

use sha2::{Digest, Sha256};

use crate::core::ids::SourceId;

/// Lane chunks in a key (`qis/v2/<fleet>/<b1>/…/<b12>/...`), one binary digit each.
pub const LANE_DEPTH: usize = 12;
/// Lanes in the key space (2^[`LANE_DEPTH`]).
pub const LANES: usize = 1 << LANE_DEPTH;
/// A selection stops refining once it covers the wanted fraction within this share of it.
pub const TOLERANCE: f64 = 0.05;
/// Most lane prefixes a node subscribes to (and queries at once).
pub const MAX_PREFIXES: usize = 16;
/// A node listens to the whole fleet until it has seen this many times its budget.
pub const WIDE_FACTOR: usize = 2;
/// Each widening step of a query multiplies the covered fraction by this.
pub const WIDEN_FACTOR: f64 = 4.0;
/// Domain separation of the lane hash (docs/PROTOCOL.md).
const LANE_DOMAIN: &[u8] = b"qis.lane.v1\n";
/// Domain separation of the rendezvous score.
const RENDEZVOUS_DOMAIN: &[u8] = b"qis.rendezvous.v1\n";

/// A source's lane: an index below [`LANES`], whose binary digits are its key chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane(pub u16);

impl Lane {
    /// Binary digit `i` (0 = the first chunk), 0 or 1.
    pub fn digit(self, i: usize) -> u8 {
        ((self.0 >> (LANE_DEPTH - 1 - i)) & 1) as u8
    }

    /// The lane whose digits these are; `None` unless exactly [`LANE_DEPTH`] digits < 2.
    pub fn from_digits(digits: &[u8]) -> Option<Lane> {
        if digits.len() != LANE_DEPTH || digits.iter().any(|&d| d > 1) {
            return None;
        }
        Some(Lane(
            digits.iter().fold(0u16, |acc, &d| acc << 1 | u16::from(d)),
        ))
    }
}

/// The lane of a source and a 64-bit hash of its id (for counting distinct sources):
/// SHA-256 of `qis.lane.v1\n` followed by the source id's UTF-8 bytes; the lane is the
/// first 12 bits of the digest (its first three hex digits), the hash its first 8 bytes
/// (big endian).
pub fn lane_and_hash(source: &SourceId) -> (Lane, u64) {
    let mut h = Sha256::new();
    h.update(LANE_DOMAIN);
    h.update(source.as_str().as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    let hash = u64::from_be_bytes(first);
    (Lane((hash >> (64 - LANE_DEPTH)) as u16), hash)
}

/// The lane of a source (see [`lane_and_hash`]).
pub fn lane_of(source: &SourceId) -> Lane {
    lane_and_hash(source).0
}

/// A set of lanes sharing their first `depth` digits (depth 0 = every lane).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LanePrefix {
    /// The shared digits, packed like [`Lane`] (only the first `depth` count).
    bits: u16,
    /// Digits fixed, 0..=[`LANE_DEPTH`].
    depth: u8,
}

impl LanePrefix {
    /// Every lane.
    pub const ALL: LanePrefix = LanePrefix { bits: 0, depth: 0 };

    /// The full-depth prefix holding exactly `lane`.
    pub fn of_lane(lane: Lane) -> LanePrefix {
        LanePrefix {
            bits: lane.0,
            depth: LANE_DEPTH as u8,
        }
    }

    /// Digits fixed by this prefix.
    pub fn depth(self) -> usize {
        usize::from(self.depth)
    }

    /// The fixed digits, first chunk first.
    pub fn digits(self) -> Vec<u8> {
        (0..self.depth())
            .map(|i| ((self.bits >> (self.depth() - 1 - i)) & 1) as u8)
            .collect()
    }

    /// The child prefix one digit deeper; `None` at full depth.
    fn child(self, digit: u8) -> Option<LanePrefix> {
        (self.depth() < LANE_DEPTH).then(|| LanePrefix {
            bits: self.bits << 1 | u16::from(digit & 1),
            depth: self.depth + 1,
        })
    }

    /// Whether `lane` lies under this prefix.
    pub fn contains(self, lane: Lane) -> bool {
        self.depth == 0 || lane.0 >> (LANE_DEPTH - self.depth()) == self.bits
    }

    /// Fraction of all lanes under this prefix.
    pub fn fraction(self) -> f64 {
        2f64.powi(-i32::from(self.depth))
    }
}

/// Rendezvous score of (node, prefix): the first 8 bytes of SHA-256 of
/// `qis.rendezvous.v1\n`, the node's source id, `\n`, the prefix's digits (`0`/`1`). A node's
/// order of prefixes is stable, uniform over nodes, and cannot be steered by others.
fn score(own: &SourceId, prefix: LanePrefix) -> u64 {
    let mut h = Sha256::new();
    h.update(RENDEZVOUS_DOMAIN);
    h.update(own.as_str().as_bytes());
    h.update(b"\n");
    let digits: Vec<u8> = prefix.digits().iter().map(|&d| b'0' + d).collect();
    h.update(&digits);
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The two children of `parent`, higher rendezvous score first.
fn children_by_score(own: &SourceId, parent: LanePrefix) -> Vec<LanePrefix> {
    let mut c: Vec<(u64, LanePrefix)> = (0..2u8)
        .filter_map(|d| parent.child(d))
        .map(|p| (score(own, p), p))
        .collect();
    c.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    c.into_iter().map(|(_, p)| p).collect()
}

/// The fraction of the lane space a node listens to when it has seen `sources` distinct
/// sources with a fan-in budget of `budget` sources: 1 (the whole fleet) up to
/// [`WIDE_FACTOR`] × budget sources, else `budget / sources`.
pub fn fraction_for(sources: usize, budget: usize) -> f64 {
    let budget = budget.max(1);
    if sources <= WIDE_FACTOR * budget {
        1.0
    } else {
        budget as f64 / sources as f64
    }
}

/// The lane prefixes `own` listens to for `fraction` of the lane space: disjoint
/// prefixes taken in `own`'s rendezvous order depth by depth along the binary expansion of
/// `fraction` (at each depth whose bit is 1, the higher-scored child is taken whole and the
/// walk goes on in the other; else in the higher-scored one), until the remainder is at
/// most [`TOLERANCE`] of `fraction`; when `max_prefixes` (≥ 1) or the last depth is
/// reached first, it rounds up (takes the subtree the walk is in). So the selection
/// covers between 95 % of `fraction` and `fraction` plus one lane, and `fraction ≥ 1` is
/// [`LanePrefix::ALL`].
pub fn select(own: &SourceId, fraction: f64, max_prefixes: usize) -> Vec<LanePrefix> {
    let max = max_prefixes.max(1);
    // NaN too: a fraction that is not below 1 means the whole fleet.
    if fraction.partial_cmp(&1.0) != Some(std::cmp::Ordering::Less) {
        return vec![LanePrefix::ALL];
    }
    let fraction = fraction.max(1.0 / LANES as f64);
    let mut out = Vec::new();
    let mut rem = fraction;
    let mut parent = LanePrefix::ALL;
    for depth in 1..=LANE_DEPTH {
        let order = children_by_score(own, parent);
        let unit = 2f64.powi(-(depth as i32));
        let next = if rem >= unit * (1.0 - 1e-12) {
            out.push(order[0]);
            rem -= unit;
            order[1]
        } else {
            order[0]
        };
        if rem <= TOLERANCE * fraction {
            break;
        }
        if out.len() + 1 >= max || depth == LANE_DEPTH {
            // Out of prefixes or depth: round up rather than cover too little. When the
            // last prefix was taken here, it and `next` are the two halves of `parent`.
            if out.last() == Some(&order[0]) && next == order[1] {
                out.pop();
                out.push(parent);
            } else {
                out.push(next);
            }
            break;
        }
        parent = next;
    }
    if out.is_empty() {
        out.push(children_by_score(own, LanePrefix::ALL)[0]);
    }
    out
}

/// The fraction of the lane space a set of disjoint prefixes covers.
pub fn coverage(prefixes: &[LanePrefix]) -> f64 {
    prefixes.iter().map(|p| p.fraction()).sum::<f64>().min(1.0)
}

/// The lanes selected by a set of prefixes, as a bitmap for the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneSet {
    bits: Vec<u64>,
}

impl LaneSet {
    /// Every lane.
    pub fn all() -> LaneSet {
        LaneSet {
            bits: vec![u64::MAX; LANES / 64],
        }
    }

    /// The lanes under `prefixes`.
    pub fn of(prefixes: &[LanePrefix]) -> LaneSet {
        let mut bits = vec![0u64; LANES / 64];
        for lane in 0..LANES as u16 {
            if prefixes.iter().any(|p| p.contains(Lane(lane))) {
                bits[usize::from(lane) / 64] |= 1 << (lane % 64);
            }
        }
        LaneSet { bits }
    }

    /// Whether `lane` is in the set.
    pub fn contains(&self, lane: Lane) -> bool {
        self.bits
            .get(usize::from(lane.0) / 64)
            .is_some_and(|w| w & (1 << (lane.0 % 64)) != 0)
    }

    /// Whether every lane of this set is in `other`.
    pub fn is_subset(&self, other: &LaneSet) -> bool {
        self.bits.iter().zip(&other.bits).all(|(a, b)| a & !b == 0)
    }

    /// Lanes in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set holds no lane.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sources in its query region a node must have seen before it scales them up to a fleet
/// size.
const MIN_SCALED: usize = 32;
/// Most distinct sources a [`LaneSelection`] remembers by default (16 bytes each).
pub const MAX_SOURCES_COUNTED: usize = 1 << 16;

/// What a node listens to now and what it has seen: the state behind its lane choice.
/// Pure (no I/O): the exchange keeps one per node and the simulator's bus one per robot.
#[derive(Clone, Debug)]
pub struct LaneSelection {
    fraction: f64,
    prefixes: Vec<LanePrefix>,
    set: LaneSet,
    /// Distinct sources seen: hash → lane.
    seen: std::collections::HashMap<u64, Lane>,
    /// The lanes a query reaches ([`widening`]'s last step): the selected ones and more.
    region: LaneSet,
    /// Its share of the lane space.
    region_coverage: f64,
    /// How many of `seen` lie in `region`.
    seen_region: usize,
    max_seen: usize,
}

impl Default for LaneSelection {
    fn default() -> Self {
        Self::wide(MAX_SOURCES_COUNTED)
    }
}

impl LaneSelection {
    /// The whole fleet, nothing seen yet; remembers at most `max_seen` sources.
    pub fn wide(max_seen: usize) -> Self {
        LaneSelection {
            fraction: 1.0,
            prefixes: vec![LanePrefix::ALL],
            set: LaneSet::all(),
            seen: std::collections::HashMap::new(),
            region: LaneSet::all(),
            region_coverage: 1.0,
            seen_region: 0,
            max_seen,
        }
    }

    /// Fraction of the lane space selected (1 = the whole fleet).
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The selected prefixes (`[LanePrefix::ALL]` while wide).
    pub fn prefixes(&self) -> &[LanePrefix] {
        &self.prefixes
    }

    /// Whether `lane` is selected.
    pub fn selects(&self, lane: Lane) -> bool {
        self.set.contains(lane)
    }

    /// Distinct sources remembered.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// The fleet's size as this node can tell: the distinct sources seen, or the sources
    /// seen in the lanes its queries reach (its own lanes and the widened ones, where it
    /// meets about four budgets' worth of sources) divided by those lanes' share, once at
    /// least 32 were seen there, whichever is larger. Once narrowed, a node meets sources
    /// almost only in those lanes, so the plain count would stall near four budgets.
    pub fn estimate(&self) -> usize {
        // Scaling a few sources is noise (and the larger of two noisy numbers is biased
        // up): the region's count speaks only once it holds enough sources.
        if self.seen_region < MIN_SCALED || self.region_coverage >= 1.0 {
            return self.seen.len();
        }
        let scaled = (self.seen_region as f64 / self.region_coverage).round() as usize;
        self.seen.len().max(scaled)
    }

    /// Notes a verified source by its [`lane_and_hash`]; true if it was new.
    pub fn note(&mut self, lane: Lane, hash: u64) -> bool {
        if self.seen.len() >= self.max_seen || self.seen.contains_key(&hash) {
            return false;
        }
        self.seen.insert(hash, lane);
        if self.region.contains(lane) {
            self.seen_region += 1;
        }
        true
    }

    /// The fraction to listen to now; `None` while the current one is within 15 % of it
    /// (hysteresis: each change redeclares subscriptions).
    pub fn wanted(&self, budget: usize) -> Option<f64> {
        let want = fraction_for(self.estimate(), budget);
        let same = (want - self.fraction).abs() <= 0.15 * self.fraction;
        (!same).then_some(want)
    }

    /// Switches node `own` to `prefixes` covering `fraction` (and to the query region
    /// of that fraction).
    pub fn switch(&mut self, own: &SourceId, fraction: f64, prefixes: Vec<LanePrefix>) {
        self.set = LaneSet::of(&prefixes);
        self.fraction = fraction;
        self.prefixes = prefixes;
        let widest = widening(fraction).last().copied().unwrap_or(1.0);
        let region = select(own, widest, MAX_PREFIXES);
        self.region_coverage = coverage(&region);
        self.region = LaneSet::of(&region);
        self.seen_region = self
            .seen
            .values()
            .filter(|&&l| self.region.contains(l))
            .count();
    }

    /// Revises the selection of node `own` with fan-in budget `budget`; true if changed.
    pub fn relane(&mut self, own: &SourceId, budget: usize) -> bool {
        match self.wanted(budget) {
            Some(f) => {
                let prefixes = select(own, f, MAX_PREFIXES);
                self.switch(own, f, prefixes);
                true
            }
            None => false,
        }
    }
}

/// The fractions a query covers in turn: the node's own `fraction`, then once
/// [`WIDEN_FACTOR`] × it (capped at the whole fleet). A querier stops at the first step
/// that brought `budget` sources. One step, not "until found": widening to the whole
/// fleet made what a query brings grow with the fleet (measured: 40.6 records per robot
/// per round at 100 robots against 27.5 at 50, docs/BENCHMARKS.md), while one step keeps
/// a query within about [`WIDEN_FACTOR`] budgets' worth of sources' sessions whatever the
/// fleet's size. An address met by very few robots, none in those lanes, is then not
/// found by the query; the node still corrects it from neighbors and learns it live once
/// a robot of its lanes meets it.
pub fn widening(fraction: f64) -> Vec<f64> {
    let f = fraction.clamp(1.0 / LANES as f64, 1.0);
    if f >= 1.0 - 1e-12 {
        return vec![1.0];
    }
    vec![f, (f * WIDEN_FACTOR).min(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> SourceId {
        SourceId::new(s).unwrap()
    }

    #[test]
    fn lane_hash_is_pinned() {
        // SHA-256("qis.lane.v1\nrobot-1") starts with 9d6 (Python hashlib).
        let (lane, hash) = lane_and_hash(&id("robot-1"));
        assert_eq!(lane.0, 0x9d6);
        let expected = {
            let mut h = Sha256::new();
            h.update(b"qis.lane.v1\nrobot-1");
            let d = h.finalize();
            u16::from(d[0]) << 4 | u16::from(d[1] >> 4)
        };
        assert_eq!(lane.0, expected);
        assert_eq!((hash >> 52) as u16, lane.0);
        let digits: Vec<u8> = (0..LANE_DEPTH).map(|i| lane.digit(i)).collect();
        assert_eq!(digits, [1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0]);
        assert_eq!(Lane::from_digits(&digits), Some(lane));
        assert_eq!(Lane::from_digits(&[1, 0]), None);
        assert_eq!(Lane::from_digits(&[2; LANE_DEPTH]), None);
    }

    #[test]
    fn lanes_are_spread_evenly() {
        let mut first = [0u32; 16];
        for i in 0..16_000 {
            first[usize::from(lane_of(&id(&format!("r{i}"))).0 >> 8)] += 1;
        }
        for c in first {
            assert!((800..1200).contains(&c), "{first:?}");
        }
    }

    #[test]
    fn small_fleets_are_heard_whole() {
        assert_eq!(fraction_for(32, 16), 1.0);
        assert_eq!(fraction_for(33, 16), 16.0 / 33.0);
        assert_eq!(select(&id("a"), 1.0, 16), vec![LanePrefix::ALL]);
    }

    #[test]
    fn selection_covers_the_budget_within_a_few_percent() {
        for sources in [50usize, 100, 200, 400, 1000, 10_000] {
            let f = fraction_for(sources, 16);
            let sel = select(&id("me"), f, MAX_PREFIXES);
            let c = coverage(&sel);
            assert!(sel.len() <= 5, "{sources}: {} prefixes", sel.len());
            assert!(
                c >= f * (1.0 - TOLERANCE) - 1e-12 && c <= f + 1.0 / LANES as f64,
                "{sources}: {c} vs {f}"
            );
            // Disjoint: lanes counted once.
            let counted = (0..LANES as u16)
                .filter(|&l| sel.iter().any(|p| p.contains(Lane(l))))
                .count();
            assert_eq!(counted as f64, c * LANES as f64, "{sources}");
        }
    }

    #[test]
    fn nodes_choose_different_lanes() {
        let a = select(&id("a"), 0.1, 16);
        let b = select(&id("b"), 0.1, 16);
        assert_ne!(a, b);
    }

    #[test]
    fn widening_is_one_step_of_four() {
        assert_eq!(widening(1.0), vec![1.0]);
        let w = widening(0.08);
        assert_eq!(w.len(), 2);
        assert!((w[1] - 0.32).abs() < 1e-12);
        assert_eq!(widening(0.3), vec![0.3, 1.0]);
    }

    #[test]
    fn a_selection_narrows_past_twice_the_budget_and_estimates_from_where_it_queries() {
        let me = id("me");
        let mut sel = LaneSelection::default();
        for i in 0..32 {
            let (l, h) = lane_and_hash(&id(&format!("s{i}")));
            assert!(sel.note(l, h));
        }
        assert!(!sel.relane(&me, 16), "32 = 2 x budget: still wide");
        let (l, h) = lane_and_hash(&id("s32"));
        sel.note(l, h);
        assert!(sel.relane(&me, 16));
        assert!((sel.fraction() - 16.0 / 33.0).abs() < 1e-12);
        assert!(!sel.relane(&me, 16), "unchanged: hysteresis");
        for i in 33..2000 {
            let (l, h) = lane_and_hash(&id(&format!("s{i}")));
            sel.note(l, h);
        }
        assert_eq!(sel.estimate(), 2000);
        assert!(sel.relane(&me, 16));
        assert!((sel.fraction() - 0.008).abs() < 1e-12);
        // Narrowed, a node meets sources almost only where its queries reach (4 x its
        // lanes): those count for the whole fleet.
        let mut met = 0;
        for i in 2000..20_000 {
            let (l, h) = lane_and_hash(&id(&format!("s{i}")));
            if sel.region.contains(l) && sel.note(l, h) {
                met += 1;
            }
        }
        assert!(met < 1000, "{met}");
        let e = sel.estimate();
        assert!((15_000..25_000).contains(&e), "{e}");
        assert!(sel.relane(&me, 16));
        assert!(sel.fraction() < 0.001);
    }

    proptest! {
        #[test]
        fn a_wider_selection_holds_the_narrower_one(f in 0.0001f64..1.0, g in 0.0001f64..1.0, own in "[a-z]{1,8}") {
            let (lo, hi) = if f < g { (f, g) } else { (g, f) };
            let narrow = LaneSet::of(&select(&id(&own), lo, MAX_PREFIXES));
            let wide = LaneSet::of(&select(&id(&own), hi, MAX_PREFIXES));
            for l in 0..LANES as u16 {
                prop_assert!(!narrow.contains(Lane(l)) || wide.contains(Lane(l)), "lane {}", l);
            }
        }
    }
}
