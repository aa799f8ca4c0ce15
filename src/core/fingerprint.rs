//! The exact address of a scenario: canonical form plus a stable, versioned hash.
//!
//! Canonical form, version 1 (docs/PROTOCOL.md has the full rule and golden vectors):
//! - a tag is trimmed, lowercased (Unicode default mapping), runs of whitespace become
//!   one space, and it is split at its first `=` into key and value, each trimmed again;
//!   tags are deduplicated and sorted by their UTF-8 bytes;
//! - a numeric feature's name is normalized like a tag key; its value is quantized to a
//!   bin index by the feature's bins from config (`width`/`origin`: ⌊(x − origin)/width⌋;
//!   `edges`: the number of edges ≤ x); features are sorted by name;
//! - the canonical bytes are `qis.fp.v1\n`, then `t <tag>\n` per tag, then
//!   `f <name> <bin>\n` per feature (bin in decimal), and the fingerprint is the first
//!   16 bytes of their SHA-256.
//!
//! So tag order, case, whitespace and float noise within a bin never change the address.
//!
//! Keyed (optional, `fleet_secret_file`): with a fleet secret the fingerprint is the first
//! 16 bytes of HMAC-SHA256(secret, canonical bytes) instead, so an outsider without the
//! secret cannot reverse addresses from a dictionary of plausible tags; the sketch's
//! projections are keyed too (see [`FleetKey`] and docs/PROTOCOL.md, "Keyed").

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::ids::{FINGERPRINT_LEN, Fingerprint};
use super::neighbors::MAX_EMBEDDING_DIM;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation prefix; changing the canonical form means a new version here.
pub const CANONICAL_PREFIX: &str = "qis.fp.v1\n";
/// Most tags one scenario may carry.
pub const MAX_TAGS: usize = 64;
/// Most numeric features one scenario may carry.
pub const MAX_FEATURES: usize = 64;
/// Longest tag or feature name, in bytes.
pub const MAX_TAG_LEN: usize = 256;
/// Largest bin index magnitude: beyond it quantization would lose integer precision.
pub const MAX_BIN: f64 = 9_007_199_254_740_992.0; // 2^53
/// Fewest bytes a fleet secret may have (after trimming surrounding whitespace).
pub const MIN_SECRET_LEN: usize = 16;
/// Message under which the sketch key is derived from the fleet secret.
pub const SKETCH_KEY_LABEL: &str = "qis.sketch.v1";

/// Why a scenario has no address.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FingerprintError {
    /// More tags or features than allowed.
    #[error("scenario has {got} {what}, at most {max} allowed")]
    TooMany {
        /// "tags" or "features".
        what: &'static str,
        /// How many came.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A tag or name that is empty, too long or holds a control character.
    #[error("{what} {text:?} is invalid: {reason}")]
    BadText {
        /// "tag" or "feature name".
        what: &'static str,
        /// The offending text (truncated to 64 chars).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `feature_names` and `features` differ in length.
    #[error("{names} feature names but {values} feature values")]
    LengthMismatch {
        /// Number of names.
        names: usize,
        /// Number of values.
        values: usize,
    },
    /// The same feature twice.
    #[error("feature {name:?} given twice")]
    DuplicateFeature {
        /// Normalized name.
        name: String,
    },
    /// A feature value that is NaN or infinite, or whose bin index is out of range.
    #[error("feature {name:?} has value {value}, which cannot be quantized")]
    BadValue {
        /// Normalized name.
        name: String,
        /// The value.
        value: f64,
    },
    /// A feature with no bins in config while `unknown_features` is `error`.
    #[error("feature {name:?} has no bins in config (known: {known})")]
    UnknownFeature {
        /// Normalized name.
        name: String,
        /// Comma-separated configured names.
        known: String,
    },
}

/// Why a fleet secret cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SecretError {
    /// The secret file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error(
        "{path}: the secret has {len} bytes, at least {MIN_SECRET_LEN} are needed (e.g. 64 hex digits)"
    )]
    TooShort {
        /// The file (empty when the secret was given as bytes).
        path: PathBuf,
        /// Bytes found after trimming.
        len: usize,
    },
}

/// Why a fingerprint config is invalid (names the field).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FingerprintConfigError {
    /// A feature's bins are invalid.
    #[error("fingerprint.features.{feature}: {reason}")]
    Bins {
        /// Feature whose bins are invalid.
        feature: String,
        /// What is wrong.
        reason: String,
    },
    /// `fleet_secret_file` is unreadable or too short.
    #[error("fingerprint.fleet_secret_file: {0}")]
    Secret(#[from] SecretError),
}

impl FingerprintConfigError {
    /// The field at fault below `fingerprint.`: `features.<name>` or `fleet_secret_file`.
    pub fn field(&self) -> String {
        match self {
            FingerprintConfigError::Bins { feature, .. } => format!("features.{feature}"),
            FingerprintConfigError::Secret(_) => "fleet_secret_file".into(),
        }
    }

    /// What is wrong, without the field name.
    pub fn reason(&self) -> String {
        match self {
            FingerprintConfigError::Bins { reason, .. } => reason.clone(),
            FingerprintConfigError::Secret(e) => e.to_string(),
        }
    }
}

/// A fleet secret made ready: keyed HMAC states for addresses and sketch projections.
/// Cheap to clone; its `Debug` never shows the secret.
#[derive(Clone)]
pub struct FleetKey(Arc<KeyState>);

struct KeyState {
    /// HMAC-SHA256 keyed with the secret: addresses.
    address: HmacSha256,
    /// K_s = HMAC-SHA256(secret, [`SKETCH_KEY_LABEL`]): what the sketch hashes are keyed with.
    sketch_key: [u8; 32],
    /// HMAC-SHA256 keyed with K_s: sketch token hashes.
    sketch: HmacSha256,
    /// Token hashes of embedding indices `e <i>`, computed on first use.
    embedding: OnceLock<Box<[u64]>>,
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(<secret>)")
    }
}

impl PartialEq for FleetKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.sketch_key == other.0.sketch_key
    }
}

impl Eq for FleetKey {}

impl FleetKey {
    /// A key from secret bytes (surrounding ASCII whitespace is trimmed first).
    pub fn new(secret: &[u8]) -> Result<FleetKey, SecretError> {
        Self::from_secret(secret, Path::new(""))
    }

    /// Reads a secret file: its bytes with surrounding ASCII whitespace trimmed, at least
    /// [`MIN_SECRET_LEN`] of them.
    pub fn from_file(path: &Path) -> Result<FleetKey, SecretError> {
        let bytes = std::fs::read(path).map_err(|e| SecretError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_secret(&bytes, path)
    }

    fn from_secret(secret: &[u8], path: &Path) -> Result<FleetKey, SecretError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: path.to_owned(),
                len: secret.len(),
            });
        }
        // HMAC takes keys of any length: these cannot fail.
        let address = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
        let mut derive = address.clone();
        Mac::update(&mut derive, SKETCH_KEY_LABEL.as_bytes());
        let sketch_key: [u8; 32] = derive.finalize().into_bytes().into();
        let sketch = HmacSha256::new_from_slice(&sketch_key).expect("HMAC accepts any key length");
        Ok(FleetKey(Arc::new(KeyState {
            address,
            sketch_key,
            sketch,
            embedding: OnceLock::new(),
        })))
    }

    /// The keyed sketch hash of a token given in parts: the first 8 bytes, little endian,
    /// of HMAC-SHA256(K_s, parts concatenated).
    pub fn token_hash(&self, parts: &[&[u8]]) -> u64 {
        let mut mac = self.0.sketch.clone();
        for part in parts {
            Mac::update(&mut mac, part);
        }
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_le_bytes(first)
    }

    /// `token_hash("e <index>")`, cached for every index below [`MAX_EMBEDDING_DIM`].
    pub fn embedding_hash(&self, index: usize) -> u64 {
        let table = self.0.embedding.get_or_init(|| {
            (0..MAX_EMBEDDING_DIM)
                .map(|i| self.token_hash(&[b"e ", i.to_string().as_bytes()]))
                .collect()
        });
        match table.get(index) {
            Some(h) => *h,
            None => self.token_hash(&[b"e ", index.to_string().as_bytes()]),
        }
    }
}

/// What to do with a numeric feature that has no bins in config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFeatures {
    /// Refuse the scenario (default: an unconfigured feature is usually a typo).
    #[default]
    Error,
    /// Leave the feature out of the address.
    Ignore,
}

/// How one numeric feature is cut into bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Bins {
    /// Uniform bins: ⌊(x − origin) / width⌋.
    Width {
        /// Bin width, > 0, in the feature's unit.
        width: f64,
        /// Where bin 0 starts.
        #[serde(default)]
        origin: f64,
    },
    /// Explicit, strictly increasing edges: the bin is the number of edges ≤ x.
    Edges {
        /// Bin edges.
        edges: Vec<f64>,
    },
}

impl Bins {
    /// The bin index of `x`, or `None` when `x` is not finite or out of range.
    pub fn quantize(&self, x: f64) -> Option<i64> {
        if !x.is_finite() {
            return None;
        }
        match self {
            Bins::Width { width, origin } => {
                let q = ((x - origin) / width).floor();
                (q.abs() < MAX_BIN).then_some(q as i64)
            }
            Bins::Edges { edges } => Some(edges.partition_point(|&e| e <= x) as i64),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Bins::Width { width, origin } => {
                if !(width.is_finite() && *width > 0.0) {
                    return Err(format!("width must be finite and > 0, got {width}"));
                }
                if !origin.is_finite() {
                    return Err(format!("origin must be finite, got {origin}"));
                }
            }
            Bins::Edges { edges } => {
                if edges.is_empty() || edges.iter().any(|e| !e.is_finite()) {
                    return Err("edges must be a non-empty list of finite numbers".into());
                }
                if edges.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("edges must be strictly increasing".into());
                }
            }
        }
        Ok(())
    }
}

/// Fingerprint settings: the bins of each numeric feature and what to do with others.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintConfig {
    /// Bins per feature name (names are normalized like tag keys when loaded).
    #[serde(default)]
    pub features: BTreeMap<String, Bins>,
    /// Policy for features without bins.
    #[serde(default)]
    pub unknown_features: UnknownFeatures,
    /// File holding the fleet secret (at least 16 bytes, e.g. 64 hex digits); none =
    /// unkeyed addresses. With it, addresses and sketches are keyed (HMAC-SHA256).
    #[serde(default)]
    pub fleet_secret_file: Option<PathBuf>,
}

impl FingerprintConfig {
    /// Checks every feature's bins, reads the fleet secret if one is configured, and
    /// returns the ready-to-use fingerprinter.
    pub fn validate(&self) -> Result<Fingerprinter, FingerprintConfigError> {
        let mut features = BTreeMap::new();
        for (name, bins) in &self.features {
            let err = |reason: String| FingerprintConfigError::Bins {
                feature: name.clone(),
                reason,
            };
            bins.validate().map_err(err)?;
            let norm = normalize_name(name)
                .map_err(|e| err(e.to_string()))?
                .into_owned();
            if features.insert(norm, bins.clone()).is_some() {
                return Err(err("two entries normalize to the same name".into()));
            }
        }
        let key = match &self.fleet_secret_file {
            Some(path) => Some(FleetKey::from_file(path)?),
            None => None,
        };
        Ok(Fingerprinter {
            features,
            unknown: self.unknown_features,
            key,
        })
    }
}

/// A scenario in canonical form: what the address is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalScenario {
    /// Normalized `key=value` tags, deduplicated and sorted.
    pub tags: Vec<String>,
    /// (normalized name, bin index), sorted by name.
    pub features: Vec<(String, i64)>,
    /// The fleet key of the fingerprinter that made it: keys its fingerprint and sketch.
    pub key: Option<FleetKey>,
}

impl CanonicalScenario {
    /// The exact bytes that are hashed (human-readable, for docs and debugging).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        write_canonical(
            &mut out,
            self.tags.iter().map(String::as_str),
            &self.features,
        );
        out
    }

    /// The scenario's exact address (keyed when [`key`](Self::key) is set).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = HashSink::new(self.key.as_ref());
        write_canonical(&mut h, self.tags.iter().map(String::as_str), &self.features);
        h.finish()
    }
}

/// Computes addresses with a validated config; cheap to share.
#[derive(Clone, Debug, Default)]
pub struct Fingerprinter {
    features: BTreeMap<String, Bins>,
    unknown: UnknownFeatures,
    key: Option<FleetKey>,
}

impl Fingerprinter {
    /// The same fingerprinter with addresses and sketches keyed by `key` (or unkeyed).
    pub fn with_key(mut self, key: Option<FleetKey>) -> Self {
        self.key = key;
        self
    }

    /// Whether addresses are keyed by a fleet secret.
    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// Canonicalizes a scenario given as message fields.
    pub fn canonicalize(
        &self,
        tags: &[String],
        feature_names: &[String],
        features: &[f64],
    ) -> Result<CanonicalScenario, FingerprintError> {
        let tags = canonical_tags(tags)?;
        let feats = self.quantize(feature_names, features)?;
        Ok(CanonicalScenario {
            tags: tags.into_iter().map(Cow::into_owned).collect(),
            features: feats
                .into_iter()
                .map(|(n, b)| (n.into_owned(), b))
                .collect(),
            key: self.key.clone(),
        })
    }

    /// The address of a scenario given as message fields, without keeping the canonical form.
    pub fn fingerprint(
        &self,
        tags: &[String],
        feature_names: &[String],
        features: &[f64],
    ) -> Result<Fingerprint, FingerprintError> {
        let tags = canonical_tags(tags)?;
        let feats = self.quantize(feature_names, features)?;
        let mut h = HashSink::new(self.key.as_ref());
        write_canonical(&mut h, tags.iter().map(|t| t.as_ref()), &feats);
        Ok(h.finish())
    }

    fn quantize<'a>(
        &self,
        names: &'a [String],
        values: &[f64],
    ) -> Result<Vec<(Cow<'a, str>, i64)>, FingerprintError> {
        if names.len() != values.len() {
            return Err(FingerprintError::LengthMismatch {
                names: names.len(),
                values: values.len(),
            });
        }
        check_count("features", names.len(), MAX_FEATURES)?;
        let mut out = Vec::with_capacity(names.len());
        for (name, &value) in names.iter().zip(values) {
            let name = normalize_name(name)?;
            let Some(bins) = self.features.get(name.as_ref()) else {
                match self.unknown {
                    UnknownFeatures::Ignore => continue,
                    UnknownFeatures::Error => {
                        return Err(FingerprintError::UnknownFeature {
                            name: name.into_owned(),
                            known: self.features.keys().cloned().collect::<Vec<_>>().join(","),
                        });
                    }
                }
            };
            let Some(bin) = bins.quantize(value) else {
                return Err(FingerprintError::BadValue {
                    name: name.into_owned(),
                    value,
                });
            };
            out.push((name, bin));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(FingerprintError::DuplicateFeature {
                name: w[0].0.clone().into_owned(),
            });
        }
        Ok(out)
    }
}

fn check_count(what: &'static str, got: usize, max: usize) -> Result<(), FingerprintError> {
    if got > max {
        return Err(FingerprintError::TooMany { what, got, max });
    }
    Ok(())
}

fn canonical_tags(tags: &[String]) -> Result<Vec<Cow<'_, str>>, FingerprintError> {
    check_count("tags", tags.len(), MAX_TAGS)?;
    let mut out = tags
        .iter()
        .map(|t| normalize_tag(t))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn bad(what: &'static str, text: &str, reason: &'static str) -> FingerprintError {
    FingerprintError::BadText {
        what,
        text: text.chars().take(64).collect(),
        reason,
    }
}

/// Trims, lowercases and collapses whitespace; borrows when the text is already canonical.
fn normalize_text<'a>(what: &'static str, s: &'a str) -> Result<Cow<'a, str>, FingerprintError> {
    if s.len() > MAX_TAG_LEN {
        return Err(bad(what, s, "longer than 256 bytes"));
    }
    let already = s
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase() || b == b' ')
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !s.contains("  ");
    let out = if already {
        Cow::Borrowed(s)
    } else {
        if s.chars().any(|c| c.is_control() && !c.is_whitespace()) {
            return Err(bad(what, s, "contains a control character"));
        }
        let lower = s.to_lowercase();
        Cow::Owned(lower.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    if out.is_empty() {
        return Err(bad(what, s, "empty after normalization"));
    }
    Ok(out)
}

fn normalize_name(s: &str) -> Result<Cow<'_, str>, FingerprintError> {
    let n = normalize_text("feature name", s)?;
    if n.contains('=') {
        return Err(bad("feature name", s, "contains '='"));
    }
    Ok(n)
}

fn normalize_tag(s: &str) -> Result<Cow<'_, str>, FingerprintError> {
    let n = normalize_text("tag", s)?;
    let Some(eq) = n.find('=') else {
        return Ok(n);
    };
    let (key, value) = (n[..eq].trim_end(), n[eq + 1..].trim_start());
    if key.is_empty() {
        return Err(bad("tag", s, "empty key before '='"));
    }
    if key.len() + 1 + value.len() == n.len() {
        return Ok(n);
    }
    Ok(Cow::Owned(format!("{key}={value}")))
}

/// Where canonical bytes go: a buffer for display, a hasher for the address.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// SHA-256 (unkeyed) or HMAC-SHA256 under the fleet secret (keyed).
enum HashSink {
    Plain(Sha256),
    Keyed(HmacSha256),
}

impl Sink for HashSink {
    fn put(&mut self, bytes: &[u8]) {
        match self {
            HashSink::Plain(h) => Digest::update(h, bytes),
            HashSink::Keyed(m) => Mac::update(m, bytes),
        }
    }
}

impl HashSink {
    fn new(key: Option<&FleetKey>) -> Self {
        match key {
            Some(k) => HashSink::Keyed(k.0.address.clone()),
            None => HashSink::Plain(Sha256::new()),
        }
    }

    fn finish(self) -> Fingerprint {
        let digest: [u8; 32] = match self {
            HashSink::Plain(h) => h.finalize().into(),
            HashSink::Keyed(m) => m.finalize().into_bytes().into(),
        };
        let mut fp = [0u8; FINGERPRINT_LEN];
        fp.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Fingerprint(fp)
    }
}

fn write_canonical<'a, N: AsRef<str>>(
    sink: &mut impl Sink,
    tags: impl Iterator<Item = &'a str>,
    features: &[(N, i64)],
) {
    sink.put(CANONICAL_PREFIX.as_bytes());
    for tag in tags {
        sink.put(b"t ");
        sink.put(tag.as_bytes());
        sink.put(b"\n");
    }
    let mut num = itoa_buf();
    for (name, bin) in features {
        sink.put(b"f ");
        sink.put(name.as_ref().as_bytes());
        sink.put(b" ");
        sink.put(format_i64(&mut num, *bin));
        sink.put(b"\n");
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

/// Decimal form of `v` without allocating (the hot path formats every bin).
fn format_i64(buf: &mut [u8; 20], v: i64) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn fp() -> Fingerprinter {
        let cfg: FingerprintConfig = serde_yaml_ng::from_str(
            "features:\n  speed: {width: 0.5}\n  load_kg: {edges: [10, 50, 100]}\n",
        )
        .unwrap();
        cfg.validate().unwrap()
    }

    #[test]
    fn order_case_whitespace_and_noise_do_not_change_the_address() {
        let f = fp();
        let a = f
            .fingerprint(
                &strings(&["weather=rain", "obstacle=cyclist"]),
                &strings(&["speed", "load_kg"]),
                &[1.26, 20.0],
            )
            .unwrap();
        let b = f
            .fingerprint(
                &strings(&["  Obstacle = Cyclist", "WEATHER=rain "]),
                &strings(&["load_kg", " Speed"]),
                &[49.9, 1.4999],
            )
            .unwrap();
        assert_eq!(a, b);
        let c = f
            .fingerprint(
                &strings(&["weather=rain", "obstacle=cyclist"]),
                &strings(&["speed", "load_kg"]),
                &[1.51, 20.0],
            )
            .unwrap();
        assert_ne!(a, c, "a different speed bin is a different scenario");
    }

    #[test]
    fn canonical_form_is_as_documented() {
        let c = fp()
            .canonicalize(
                &strings(&["b=2", "A = 1", "b=2"]),
                &strings(&["speed"]),
                &[-0.2],
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(c.canonical_bytes()).unwrap(),
            "qis.fp.v1\nt a=1\nt b=2\nf speed -1\n"
        );
        assert_eq!(
            c.fingerprint(),
            fp().fingerprint(&strings(&["a=1", "b=2"]), &strings(&["speed"]), &[-0.01])
                .unwrap()
        );
    }

    #[test]
    fn bad_scenarios_are_refused() {
        let f = fp();
        let none: Vec<String> = vec![];
        assert!(matches!(
            f.fingerprint(&none, &strings(&["speed"]), &[]),
            Err(FingerprintError::LengthMismatch { .. })
        ));
        assert!(matches!(
            f.fingerprint(&none, &strings(&["speed"]), &[f64::NAN]),
            Err(FingerprintError::BadValue { .. })
        ));
        assert!(matches!(
            f.fingerprint(&none, &strings(&["speed"]), &[1e300]),
            Err(FingerprintError::BadValue { .. })
        ));
        assert!(matches!(
            f.fingerprint(&none, &strings(&["mass"]), &[1.0]),
            Err(FingerprintError::UnknownFeature { .. })
        ));
        assert!(matches!(
            f.fingerprint(&none, &strings(&["speed", "SPEED"]), &[1.0, 1.0]),
            Err(FingerprintError::DuplicateFeature { .. })
        ));
        assert!(matches!(
            f.fingerprint(&strings(&["  "]), &none, &[]),
            Err(FingerprintError::BadText { .. })
        ));
        assert!(matches!(
            f.fingerprint(&strings(&["=x"]), &none, &[]),
            Err(FingerprintError::BadText { .. })
        ));
        assert!(matches!(
            f.fingerprint(&strings(&["a\u{0}b"]), &none, &[]),
            Err(FingerprintError::BadText { .. })
        ));
        let many = vec!["x=1".to_string(); MAX_TAGS + 1];
        assert!(matches!(
            f.fingerprint(&many, &none, &[]),
            Err(FingerprintError::TooMany { .. })
        ));
    }

    #[test]
    fn unknown_features_can_be_ignored() {
        let cfg = FingerprintConfig {
            unknown_features: UnknownFeatures::Ignore,
            ..Default::default()
        };
        let f = cfg.validate().unwrap();
        let a = f
            .fingerprint(&strings(&["x=1"]), &strings(&["mass"]), &[3.0])
            .unwrap();
        let b = f.fingerprint(&strings(&["x=1"]), &[], &[]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn invalid_bins_name_the_feature() {
        let cfg: FingerprintConfig =
            serde_yaml_ng::from_str("features:\n  speed: {width: 0}\n").unwrap();
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field(), "features.speed");
        let cfg: FingerprintConfig =
            serde_yaml_ng::from_str("features:\n  load: {edges: [3, 1]}\n").unwrap();
        assert!(cfg.validate().is_err());
        assert!(serde_yaml_ng::from_str::<FingerprintConfig>("bogus: 1\n").is_err());
    }

    #[test]
    fn integers_format_like_decimal() {
        let mut b = itoa_buf();
        for v in [0i64, 7, -7, 1234567, i64::MIN, i64::MAX] {
            assert_eq!(format_i64(&mut b, v), v.to_string().as_bytes());
        }
    }

    /// The fixed test secret of test/data/fingerprints.json (64 hex digits as text).
    pub(crate) const TEST_SECRET: &str =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn keyed(secret: &str) -> Fingerprinter {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.secret");
        std::fs::write(&path, secret).unwrap();
        let mut cfg: FingerprintConfig = serde_yaml_ng::from_str(
            "features:\n  speed: {width: 0.5}\n  load_kg: {edges: [10, 50, 100]}\n",
        )
        .unwrap();
        cfg.fleet_secret_file = Some(path);
        cfg.validate().unwrap()
    }

    #[test]
    fn keyed_addresses_depend_on_the_secret() {
        let tags = strings(&["weather=rain", "obstacle=cyclist"]);
        let at = |f: &Fingerprinter| f.fingerprint(&tags, &[], &[]).unwrap();
        let (a, b) = (keyed(TEST_SECRET), keyed(&format!("  {TEST_SECRET}\n")));
        assert!(a.is_keyed() && !fp().is_keyed());
        assert_eq!(at(&a), at(&b), "same secret, two fingerprinters");
        assert_ne!(at(&a), at(&keyed(&TEST_SECRET.replace('0', "f"))));
        // Without a secret: exactly the unkeyed golden value ("tags only").
        assert_eq!(at(&fp()).to_hex(), "b7b7576815d84859360316cc1e6b6960");
        assert_eq!(at(&a).to_hex(), "1c936165cee9079b647f6bb4b4c238c8");
        let c = a.canonicalize(&tags, &[], &[]).unwrap();
        assert_eq!(c.fingerprint(), at(&a));
        assert_eq!(
            c.canonical_bytes(),
            fp().canonicalize(&tags, &[], &[])
                .unwrap()
                .canonical_bytes()
        );
        assert!(
            !format!("{a:?}").contains(TEST_SECRET),
            "Debug must not show the secret"
        );
    }

    #[test]
    fn a_missing_or_short_secret_names_the_field() {
        let cfg = FingerprintConfig {
            fleet_secret_file: Some("/nonexistent/fleet.secret".into()),
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field(), "fleet_secret_file");
        assert!(matches!(
            e,
            FingerprintConfigError::Secret(SecretError::Unreadable { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, "0123456789abcde\n").unwrap();
        let cfg = FingerprintConfig {
            fleet_secret_file: Some(path),
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err();
        assert!(
            matches!(
                e,
                FingerprintConfigError::Secret(SecretError::TooShort { len: 15, .. })
            ),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("fingerprint.fleet_secret_file: "),
            "{e}"
        );
        assert!(FleetKey::new(b"0123456789abcdef").is_ok());
    }
}
