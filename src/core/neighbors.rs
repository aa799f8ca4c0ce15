//! Placeholder replaced by the neighbors module (sketch + faiss index).

/// Number of components in a scenario sketch.
pub const SKETCH_DIM: usize = 32;

/// A scenario's locality-sensitive sketch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sketch(pub [i8; SKETCH_DIM]);
