//! Diffusion map and diffusion pseudotime (scanpy's `tl.diffmap` + `tl.dpt`, Haghverdi et al.
//! 2016), re-derived from the papers and scanpy's documented behaviour:
//!
//! - from the symmetric kNN connectivities `K`: density normalisation `K' = D⁻¹ K D⁻¹` with
//!   `D = diag(column sums of K)`, then the symmetric operator `T = Z⁻¹ K' Z⁻¹` with
//!   `Z = diag(√(column sums of K'))`;
//! - the `n_comps` (15) eigenpairs of `T` of largest magnitude, ordered by decreasing
//!   eigenvalue: `obsm["X_diffmap"]` (eigenvectors) and `uns["diffmap_evals"]`;
//! - DPT distance from the root over the first `n_dcs` (10) components:
//!   `d(i)² = Σ_{λ_l < 0.9994} (λ_l/(1 − λ_l))² (ψ_l(root) − ψ_l(i))² + Σ_{λ_l ≥ 0.9994}
//!   (ψ_l(root) − ψ_l(i))²`; cells outside the root's connected component get +∞; the
//!   pseudotime is `d / max finite d`.
//!
//! Eigenvectors are defined up to sign; DPT does not depend on it. We fix the sign so that
//! the entry of largest magnitude is positive (scanpy's sign is whatever ARPACK returns).

use std::path::PathBuf;

use cellfate_estimators::schur::{dominant_schur_op, SchurError, Which};
use cellfate_kernels::{Csr, SourceError};
use nalgebra::DMatrix;
use thiserror::Error;

#[cfg(feature = "h5ad")]
use crate::io::H5adError;

/// Errors of the diffusion map and the diffusion pseudotime.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DptError {
    /// The connectivities are not square.
    #[error("diffusion map: connectivities must be square, got {rows}×{cols}")]
    NotSquare {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// Too few cells for a diffusion map.
    #[error("diffusion map: {n} cells are too few (at least 3 are needed)")]
    TooFewCells {
        /// Cells.
        n: usize,
    },
    /// A cell without neighbours.
    #[error("diffusion map: cell {cell} has no neighbours in obsp[\"connectivities\"]")]
    NoNeighbours {
        /// The cell.
        cell: usize,
    },
    /// The eigendecomposition failed.
    #[error("diffusion map: {0}")]
    Eigen(#[from] SchurError),
    /// Reading or writing the file.
    #[cfg(feature = "h5ad")]
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// The kNN graph is missing.
    #[error("{}: obsp[\"connectivities\"] is missing (the kNN graph); run `cellfate preprocess` or scanpy's neighbors first", path.display())]
    MissingGraph {
        /// The file.
        path: PathBuf,
    },
    /// A root cell index past the cells.
    #[error("{}: root cell {index} is out of range (the file has {n_cells} cells)", path.display())]
    RootOutOfRange {
        /// The file.
        path: PathBuf,
        /// The index given.
        index: usize,
        /// Cells in the file.
        n_cells: usize,
    },
    /// A root cell name not in `obs_names`.
    #[error("{}: no cell named {name:?}", path.display())]
    UnknownCell {
        /// The file.
        path: PathBuf,
        /// The name given.
        name: String,
    },
    /// The cluster column cannot be read.
    #[error("{}: {source}", path.display())]
    Clusters {
        /// The file.
        path: PathBuf,
        /// The lookup error (names the column).
        source: SourceError,
    },
    /// A root cluster with no cells.
    #[error("{}: no cell of cluster {name:?} in obs[{key:?}] (clusters: {})", path.display(), clusters.join(", "))]
    UnknownCluster {
        /// The file.
        path: PathBuf,
        /// The obs column.
        key: String,
        /// The cluster given.
        name: String,
        /// The clusters present.
        clusters: Vec<String>,
    },
}

/// A diffusion map.
#[derive(Clone, Debug)]
pub struct DiffusionMap {
    /// Eigenvalues, decreasing.
    pub evals: Vec<f64>,
    /// Eigenvectors (n × k), column `l` for `evals[l]`.
    pub evecs: DMatrix<f64>,
    /// Connected component of every cell (of the kNN graph).
    pub components: Vec<usize>,
}

/// Connected components of an (undirected) graph's non-zero pattern.
pub fn connected_components(g: &Csr) -> Vec<usize> {
    let n = g.nrows();
    let mut comp = vec![usize::MAX; n];
    let mut next = 0;
    let mut stack = Vec::new();
    for s in 0..n {
        if comp[s] != usize::MAX {
            continue;
        }
        comp[s] = next;
        stack.push(s);
        while let Some(i) = stack.pop() {
            let (c, v) = g.row(i);
            for (&j, &x) in c.iter().zip(v) {
                let j = j as usize;
                if x != 0.0 && comp[j] == usize::MAX {
                    comp[j] = next;
                    stack.push(j);
                }
            }
        }
        next += 1;
    }
    comp
}

/// The diffusion map of the connectivities `conn` (symmetrised as `(K + Kᵀ)/2` if needed).
pub fn diffmap(conn: &Csr, n_comps: usize) -> Result<DiffusionMap, DptError> {
    let n = conn.nrows();
    if conn.ncols() != n {
        return Err(DptError::NotSquare {
            rows: n,
            cols: conn.ncols(),
        });
    }
    if n < 3 {
        return Err(DptError::TooFewCells { n });
    }
    let k = conn.add_scaled(0.5, &conn.transpose(), 0.5);
    let dens = k.col_sums();
    if let Some(cell) = dens.iter().position(|&d| d <= 0.0) {
        return Err(DptError::NoNeighbours { cell });
    }
    let mut kn = k.clone();
    {
        let indptr = k.indptr().to_vec();
        let idx = k.indices().to_vec();
        let data = kn.data_mut();
        for i in 0..n {
            for p in indptr[i]..indptr[i + 1] {
                data[p] /= dens[i] * dens[idx[p] as usize];
            }
        }
    }
    let z: Vec<f64> = kn.col_sums().iter().map(|s| s.sqrt()).collect();
    let mut t = kn.clone();
    {
        let indptr = kn.indptr().to_vec();
        let idx = kn.indices().to_vec();
        let data = t.data_mut();
        for i in 0..n {
            for p in indptr[i]..indptr[i + 1] {
                data[p] /= z[i] * z[idx[p] as usize];
            }
        }
    }
    let m = n_comps.clamp(1, n - 1);
    let op = |x: &[f64]| t.mul_vec(x);
    let (q, eig) = dominant_schur_op(n, m, Which::LargestMagnitude, &op)?;
    // Symmetric operator: Schur vectors are eigenvectors; order by decreasing eigenvalue.
    let mut order: Vec<usize> = (0..eig.len().min(q.ncols())).collect();
    order.sort_by(|&a, &b| eig[b].0.total_cmp(&eig[a].0).then(a.cmp(&b)));
    order.truncate(m);
    let mut evecs = DMatrix::from_fn(n, order.len(), |i, j| q[(i, order[j])]);
    for j in 0..evecs.ncols() {
        let big = evecs
            .column(j)
            .iter()
            .fold(0.0f64, |a, &v| if v.abs() > a.abs() { v } else { a });
        if big < 0.0 {
            evecs.column_mut(j).neg_mut();
        }
    }
    Ok(DiffusionMap {
        evals: order.iter().map(|&l| eig[l].0).collect(),
        evecs,
        components: connected_components(&k),
    })
}

/// Diffusion pseudotime from `root` over the first `n_dcs` components.
pub fn dpt_pseudotime(dm: &DiffusionMap, root: usize, n_dcs: usize) -> Vec<f64> {
    let n = dm.evecs.nrows();
    let l = n_dcs.min(dm.evals.len());
    let mut d: Vec<f64> = (0..n)
        .map(|i| {
            if dm.components[i] != dm.components[root] {
                return f64::INFINITY;
            }
            (0..l)
                .map(|c| {
                    let lam = dm.evals[c];
                    let diff = dm.evecs[(root, c)] - dm.evecs[(i, c)];
                    if lam < 0.9994 {
                        (lam / (1.0 - lam) * diff).powi(2)
                    } else {
                        diff * diff
                    }
                })
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let max = d
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    if max > 0.0 {
        d.iter_mut().for_each(|x| *x /= max);
    }
    d
}

/// The root cell in cluster `cluster`: its cell whose first non-trivial diffusion component is
/// farthest from that component's median over all cells (the reference recipe's rule).
pub fn root_in_cluster(
    dm: &DiffusionMap,
    labels: &[Option<String>],
    cluster: &str,
) -> Option<usize> {
    let n = dm.evecs.nrows();
    let c = 1.min(dm.evecs.ncols() - 1);
    let mut dc1: Vec<f64> = (0..n).map(|i| dm.evecs[(i, c)]).collect();
    let med = {
        let mut v = dc1.clone();
        v.sort_by(f64::total_cmp);
        if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    };
    dc1.iter_mut().for_each(|x| *x = (*x - med).abs());
    (0..n)
        .filter(|&i| labels[i].as_deref() == Some(cluster))
        .fold(None, |best: Option<usize>, i| match best {
            Some(b) if dc1[b] >= dc1[i] => Some(b),
            _ => Some(i),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_pseudotime_increases_from_the_root() {
        // A path graph 0 - 1 - ... - 29 (each cell linked to its two neighbours on each side).
        let n = 30;
        let mut t = Vec::new();
        for i in 0..n {
            for d in 1..=2 {
                if i + d < n {
                    t.push((i, i + d, 1.0));
                    t.push((i + d, i, 1.0));
                }
            }
        }
        let g = Csr::from_triplets(n, n, &t).expect("graph");
        let dm = diffmap(&g, 5).expect("diffmap");
        assert!((dm.evals[0] - 1.0).abs() < 1e-10, "{:?}", dm.evals);
        assert!(dm.evals.windows(2).all(|w| w[0] >= w[1]));
        let pt = dpt_pseudotime(&dm, 0, 5);
        assert_eq!(pt[0], 0.0);
        assert!((pt.iter().copied().fold(0.0, f64::max) - 1.0).abs() < 1e-12);
        // Increasing along the path, away from its two ends (boundary effects of 5 components).
        assert!(pt[3..26].windows(2).all(|w| w[1] > w[0]), "{pt:?}");
        assert!(pt[1..].iter().all(|&x| x > 0.0) && pt[29] > 0.9);
        let labels: Vec<Option<String>> = (0..n)
            .map(|i| Some(if i < 5 { "A" } else { "B" }.to_string()))
            .collect();
        assert!(matches!(root_in_cluster(&dm, &labels, "A"), Some(0 | 1)));
        assert_eq!(root_in_cluster(&dm, &labels, "C"), None);
    }

    #[test]
    fn disconnected_cells_are_infinitely_far() {
        let t = [
            (0, 1, 1.0),
            (1, 0, 1.0),
            (1, 2, 1.0),
            (2, 1, 1.0),
            (3, 4, 1.0),
            (4, 3, 1.0),
        ];
        let g = Csr::from_triplets(5, 5, &t).expect("graph");
        let dm = diffmap(&g, 3).expect("diffmap");
        let pt = dpt_pseudotime(&dm, 0, 3);
        assert!(pt[3].is_infinite() && pt[4].is_infinite());
        assert!(pt[..3].iter().all(|x| x.is_finite()));
    }
}

/// How the DPT root cell is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Root {
    /// A cell index.
    Index(usize),
    /// A cell by obs name.
    Name(String),
    /// The extreme cell (first diffusion component) of a cluster.
    Cluster {
        /// obs column.
        key: String,
        /// Cluster name.
        name: String,
    },
    /// `uns["iroot"]` when present, else the cell with the smallest first diffusion component.
    Auto,
}

/// What [`pseudotime_in_file`] computed.
#[derive(Clone, Debug)]
pub struct PseudotimeResult {
    /// Root cell index.
    pub root: usize,
    /// Diffusion pseudotime.
    pub pseudotime: Vec<f64>,
    /// Diffusion-map eigenvalues.
    pub evals: Vec<f64>,
    /// Cells outside the root's connected component (pseudotime +∞).
    pub unreachable: usize,
}

#[cfg(feature = "h5ad")]
/// Diffusion map + pseudotime on a file with `obsp["connectivities"]`: writes
/// `obsm["X_diffmap"]`, `uns["diffmap_evals"]`, `uns["iroot"]`, `obs["dpt_pseudotime"]`.
pub fn pseudotime_in_file(
    input: &std::path::Path,
    output: &std::path::Path,
    root: &Root,
    n_comps: usize,
    n_dcs: usize,
) -> Result<PseudotimeResult, DptError> {
    use crate::io::{Element, H5adEdit, H5adReader, NumVec};
    use cellfate_kernels::CellSource;
    let r = H5adReader::open(input)?;
    if !r.exists("obsp/connectivities") {
        return Err(DptError::MissingGraph {
            path: input.to_path_buf(),
        });
    }
    let dm = diffmap(&r.obsp("connectivities")?, n_comps)?;
    let n = dm.evecs.nrows();
    let root = match root {
        Root::Index(i) if *i < n => *i,
        Root::Index(i) => {
            return Err(DptError::RootOutOfRange {
                path: input.to_path_buf(),
                index: *i,
                n_cells: n,
            })
        }
        Root::Name(s) => {
            r.obs_names()?
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| DptError::UnknownCell {
                    path: input.to_path_buf(),
                    name: s.clone(),
                })?
        }
        Root::Cluster { key, name } => {
            let labels = r.obs_labels(key).map_err(|source| DptError::Clusters {
                path: input.to_path_buf(),
                source,
            })?;
            root_in_cluster(&dm, &labels, name).ok_or_else(|| {
                let mut clusters: Vec<String> = labels.iter().flatten().cloned().collect();
                clusters.sort();
                clusters.dedup();
                DptError::UnknownCluster {
                    path: input.to_path_buf(),
                    key: key.clone(),
                    name: name.clone(),
                    clusters,
                }
            })?
        }
        Root::Auto => match r.read("uns/iroot") {
            Ok(Element::Scalar(v)) if !v.is_empty() && (v.get_f64(0) as usize) < n => {
                v.get_f64(0) as usize
            }
            _ => {
                let c = 1.min(dm.evecs.ncols() - 1);
                (0..n)
                    .min_by(|&a, &b| dm.evecs[(a, c)].total_cmp(&dm.evecs[(b, c)]))
                    .unwrap_or(0)
            }
        },
    };
    let pt = dpt_pseudotime(&dm, root, n_dcs);
    let unreachable = pt.iter().filter(|x| x.is_infinite()).count();
    let mut edit = H5adEdit::new(input);
    edit.set("obsm/X_diffmap", Element::from_dmatrix(&dm.evecs));
    edit.set("uns/diffmap_evals", Element::from_f64(dm.evals.clone()));
    edit.set("uns/iroot", Element::Scalar(NumVec::I64(vec![root as i64])));
    edit.set("obs/dpt_pseudotime", Element::from_f64(pt.clone()));
    edit.write_to(output)?;
    Ok(PseudotimeResult {
        root,
        pseudotime: pt,
        evals: dm.evals,
        unreachable,
    })
}
