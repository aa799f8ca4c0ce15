//! An exact inner-product index over fixed-length vectors, the one search primitive the
//! neighbor index needs: faiss's `IndexFlatIP` with the `faiss` feature (the default,
//! BLAS-backed), else a plain scan of the same rows. Both return the same rows in the
//! same order of score, so a program embedding the core without faiss's C++ build gets
//! the node's neighbors, only slower on large indexes (a scan is O(rows · dim) per query:
//! about 3 M multiply-adds at the default 100,000 addresses).

#[cfg(not(feature = "faiss"))]
use std::convert::Infallible;

/// Why the index refused an operation.
#[cfg(feature = "faiss")]
pub type IndexError = faiss::error::Error;
/// Why the index refused an operation (the scan never does).
#[cfg(not(feature = "faiss"))]
pub type IndexError = Infallible;

/// An exact inner-product index of `dim`-long rows.
pub struct FlatIp {
    #[cfg(feature = "faiss")]
    index: faiss::index::flat::FlatIndexImpl,
    #[cfg(not(feature = "faiss"))]
    rows: Vec<f32>,
    #[cfg(not(feature = "faiss"))]
    dim: usize,
}

#[cfg(feature = "faiss")]
impl FlatIp {
    /// An empty index of `dim`-long rows.
    pub fn new(dim: u32) -> Result<Self, IndexError> {
        Ok(FlatIp {
            index: faiss::index::flat::FlatIndexImpl::new_ip(dim)?,
        })
    }

    /// Appends rows (a multiple of `dim` values, row after row).
    pub fn add(&mut self, rows: &[f32]) -> Result<(), IndexError> {
        use faiss::Index;
        self.index.add(rows)
    }

    /// Every row, row after row.
    pub fn rows(&self) -> &[f32] {
        self.index.xb()
    }

    /// The `k` rows of highest inner product with `query`, best first, as (row, score).
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>, IndexError> {
        let found = faiss::ConcurrentIndex::search(&self.index, query, k)?;
        Ok(found
            .labels
            .iter()
            .zip(&found.distances)
            .filter_map(|(label, &score)| Some((usize::try_from(label.get()?).ok()?, score)))
            .collect())
    }
}

#[cfg(not(feature = "faiss"))]
impl FlatIp {
    /// An empty index of `dim`-long rows.
    pub fn new(dim: u32) -> Result<Self, IndexError> {
        Ok(FlatIp {
            rows: Vec::new(),
            dim: dim as usize,
        })
    }

    /// Appends rows (a multiple of `dim` values, row after row).
    pub fn add(&mut self, rows: &[f32]) -> Result<(), IndexError> {
        self.rows.extend_from_slice(rows);
        Ok(())
    }

    /// Every row, row after row.
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }

    /// The `k` rows of highest inner product with `query`, best first, as (row, score);
    /// ties go to the lower row, as faiss's flat index orders them.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>, IndexError> {
        if self.dim == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let mut scored: Vec<(usize, f32)> = self
            .rows
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(i, row)| (i, row.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        Ok(scored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_rows_come_first() {
        let mut ix = FlatIp::new(2).unwrap();
        ix.add(&[1.0, 0.0, 0.0, 1.0, 0.6, 0.8]).unwrap();
        let found = ix.search(&[0.0, 1.0], 2).unwrap();
        assert_eq!(found.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [1, 2]);
        assert!((found[0].1 - 1.0).abs() < 1e-6 && (found[1].1 - 0.8).abs() < 1e-6);
        assert_eq!(ix.rows().len(), 6);
        assert!(ix.search(&[0.0, 1.0], 10).unwrap().len() == 3);
    }
}
