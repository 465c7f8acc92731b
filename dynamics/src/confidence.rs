//! Per-cell velocity scores: scVelo 0.3.4's `tl.velocity_confidence` (velocity length,
//! confidence, transition confidence; `../shared/docs/velocity-and-figures-notes.md` §3.3)
//! and RNAVelocity's kNN displacement score ([`displacement_coherence`]).
//!
//! All take the genes as column indices (scVelo: `var["velocity_genes"]` without NaN
//! velocities, and `spearmans_score > 0.1` when that column exists — see
//! [`crate::dense::velocity_gene_columns`]) and row-centre the velocities over those genes.
//! Computed in float64 (scVelo computes in the layers' dtype, float32 for its stored layers).

use rayon::prelude::*;

use cellfate_kernels::Csr;

use crate::dense::{centre_rows, dot, norm, RowMajor, Scalar};
use crate::error::VelocityError;
use crate::velocity_graph::{check_same_shape, Neighbors};

fn checked_genes<T: Scalar>(
    m: RowMajor<'_, T>,
    genes: &[usize],
    what: &'static str,
) -> Result<(), VelocityError> {
    if genes.is_empty() {
        return Err(VelocityError::NoGenes { what });
    }
    if let Some(&bad) = genes.iter().find(|&&j| j >= m.ncols()) {
        return Err(VelocityError::Dimension {
            what: "gene column index (below the number of genes)",
            expected: m.ncols(),
            got: bad,
        });
    }
    Ok(())
}

/// Row `i` of the velocity on `genes`, centred (`out` has one value per gene): the same
/// arithmetic as centring a gathered copy, one row at a time, so that no n × g copy is made
/// (at 100,000 cells × 2,000 genes one is 1.6 GB).
fn centred_row<V: Scalar>(velocity: RowMajor<'_, V>, genes: &[usize], i: usize, out: &mut [f64]) {
    let row = velocity.row(i);
    for (o, &j) in out.iter_mut().zip(genes) {
        *o = row[j].to_f64();
    }
    centre_rows(out, genes.len());
}

/// NumPy's `np.round(x, 2)`: x·100 rounded half to even, divided by 100.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// scVelo's `obs["velocity_length"]`: the norm of each cell's row-centred velocity over
/// `genes`, **rounded to 2 decimals** as scVelo stores it (apply no rounding with
/// [`velocity_norms`]).
pub fn velocity_length<V: Scalar>(
    velocity: RowMajor<'_, V>,
    genes: &[usize],
) -> Result<Vec<f64>, VelocityError> {
    Ok(velocity_norms(velocity, genes)?
        .into_iter()
        .map(round2)
        .collect())
}

/// The unrounded norms behind [`velocity_length`].
pub fn velocity_norms<V: Scalar>(
    velocity: RowMajor<'_, V>,
    genes: &[usize],
) -> Result<Vec<f64>, VelocityError> {
    checked_genes(velocity, genes, "the velocity length")?;
    let mut buf = vec![0.0; genes.len()];
    Ok((0..velocity.nrows())
        .map(|i| {
            centred_row(velocity, genes, i, &mut buf);
            norm(&buf)
        })
        .collect())
}

/// scVelo's `obs["velocity_confidence"]`: for each cell, the mean over its `k` distance
/// neighbours ([`Neighbors::from_distances`], all of them, no recursion) of the cosine
/// between its row-centred velocity and the neighbour's (re-centred, as scVelo does),
/// clipped below at 0. A cell with a zero velocity, or with a zero-velocity neighbour, gets
/// NaN (0/0, as in scVelo).
pub fn velocity_confidence<V: Scalar>(
    velocity: RowMajor<'_, V>,
    genes: &[usize],
    neighbors: &Neighbors,
) -> Result<Vec<f64>, VelocityError> {
    checked_genes(velocity, genes, "the velocity confidence")?;
    let n = velocity.nrows();
    if neighbors.n_cells() != n {
        return Err(VelocityError::Dimension {
            what: "cells of the neighbour table",
            expected: n,
            got: neighbors.n_cells(),
        });
    }
    let g = genes.len();
    let norms = velocity_norms(velocity, genes)?;
    Ok((0..n)
        .into_par_iter()
        .map_init(
            || (vec![0.0; g], vec![0.0; g]),
            |(buf, vi), i| {
                centred_row(velocity, genes, i, vi);
                let nb = neighbors.row(i);
                let mut sum = 0.0;
                for &j in nb {
                    // The neighbour's centred velocity, centred again (as scVelo does).
                    centred_row(velocity, genes, j as usize, buf);
                    let m = buf.iter().sum::<f64>() / g as f64;
                    buf.iter_mut().for_each(|x| *x -= m);
                    sum += dot(buf, vi) / (norm(buf) * norms[i]);
                }
                let r = sum / nb.len() as f64;
                if r.is_nan() {
                    r
                } else {
                    r.max(0.0)
                }
            },
        )
        .collect())
}

/// scVelo's `obs["velocity_confidence_transition"]`: the cosine between Δ = T·X − X and V
/// on `genes`, both row-centred, per cell (a zero norm product counts as 1, giving 0). `x` is
/// `layers["Ms"]`, `t` the transition matrix scVelo uses there
/// ([`crate::velocity_graph::transition_matrix`] with its defaults).
pub fn velocity_confidence_transition<X: Scalar, V: Scalar>(
    x: RowMajor<'_, X>,
    velocity: RowMajor<'_, V>,
    genes: &[usize],
    t: &Csr,
) -> Result<Vec<f64>, VelocityError> {
    check_same_shape(x, velocity)?;
    checked_genes(velocity, genes, "the transition confidence")?;
    let n = x.nrows();
    if t.nrows() != n || t.ncols() != n {
        return Err(VelocityError::Dimension {
            what: "size of the transition matrix (cells)",
            expected: n,
            got: t.nrows().max(t.ncols()),
        });
    }
    let g = genes.len();
    let xs = x.select_columns(genes);
    Ok((0..n)
        .into_par_iter()
        .map_init(
            || (vec![0.0; g], vec![0.0; g]),
            |(d, vi), i| {
                d.iter_mut().for_each(|x| *x = 0.0);
                let (c, w) = t.row(i);
                for (&j, &wij) in c.iter().zip(w) {
                    let xj = &xs[j as usize * g..(j as usize + 1) * g];
                    d.iter_mut()
                        .zip(xj)
                        .for_each(|(a, b)| *a += wij * b.to_f64());
                }
                let xi = &xs[i * g..(i + 1) * g];
                d.iter_mut().zip(xi).for_each(|(a, b)| *a -= b.to_f64());
                let m = d.iter().sum::<f64>() / g as f64;
                d.iter_mut().for_each(|x| *x -= m);
                centred_row(velocity, genes, i, vi);
                let mut nrm = norm(d) * norm(vi);
                if nrm == 0.0 {
                    nrm = 1.0;
                }
                dot(d, vi) / nrm
            },
        )
        .collect())
}

/// RNAVelocity's per-cell coherence of a velocity with the local expression geometry,
/// defined here as: for each cell i, the mean over its `k` distance neighbours j
/// ([`Neighbors::from_distances`]) of the plain (uncentred) cosine
/// cos(X_j − X_i, V_i) on `genes`, where X is `layers["Ms"]` and V the velocity (not
/// centred). Neighbours with a zero displacement (identical expression) are left out of the
/// mean; a cell with a zero velocity, or with no neighbour left, gets NaN. The score lies in
/// [−1, 1]: near 1 when the velocity points towards the neighbours (it cannot point at all of
/// them, so typical values are well below 1), near 0 when unrelated to them, negative when it
/// points away.
pub fn displacement_coherence<X: Scalar, V: Scalar>(
    x: RowMajor<'_, X>,
    velocity: RowMajor<'_, V>,
    genes: &[usize],
    neighbors: &Neighbors,
) -> Result<Vec<f64>, VelocityError> {
    check_same_shape(x, velocity)?;
    checked_genes(velocity, genes, "the displacement coherence")?;
    let n = x.nrows();
    if neighbors.n_cells() != n {
        return Err(VelocityError::Dimension {
            what: "cells of the neighbour table",
            expected: n,
            got: neighbors.n_cells(),
        });
    }
    let g = genes.len();
    let xs = x.select_columns(genes);
    Ok((0..n)
        .into_par_iter()
        .map_init(
            || vec![0.0; g],
            |vi, i| {
                let vrow = velocity.row(i);
                for (o, &j) in vi.iter_mut().zip(genes) {
                    *o = vrow[j].to_f64();
                }
                let vi = &vi[..];
                let vn = norm(vi);
                if vn == 0.0 || !vn.is_finite() {
                    return f64::NAN;
                }
                let xi = &xs[i * g..(i + 1) * g];
                let (mut sum, mut count) = (0.0, 0usize);
                for &j in neighbors.row(i) {
                    let xj = &xs[j as usize * g..(j as usize + 1) * g];
                    let (mut num, mut ss) = (0.0, 0.0);
                    for ((a, b), vk) in xj.iter().zip(xi).zip(vi) {
                        let d = a.to_f64() - b.to_f64();
                        num += d * vk;
                        ss += d * d;
                    }
                    if ss > 0.0 {
                        sum += num / (ss.sqrt() * vn);
                        count += 1;
                    }
                }
                if count == 0 {
                    f64::NAN
                } else {
                    sum / count as f64
                }
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: usize) -> Neighbors {
        let idx: Vec<u32> = (0..n)
            .flat_map(|i| {
                let mut r = [((i + n - 1) % n) as u32, ((i + 1) % n) as u32];
                r.sort_unstable();
                r
            })
            .collect();
        Neighbors::from_rows(2, idx).expect("nb")
    }

    #[test]
    fn length_and_confidence() {
        // Identical velocities: confidence 1; the length is the centred norm, rounded.
        let n = 5;
        let v: Vec<f64> = (0..n).flat_map(|_| [1.0, 2.0, 3.004]).collect();
        let vm = RowMajor::new("v", &v, n, 3).expect("v");
        let len = velocity_length(vm, &[0, 1, 2]).expect("len");
        let m = (1.0 + 2.0 + 3.004) / 3.0;
        let want = ((1.0f64 - m).powi(2) + (2.0f64 - m).powi(2) + (3.004f64 - m).powi(2)).sqrt();
        assert_eq!(len[0], round2(want));
        let c = velocity_confidence(vm, &[0, 1, 2], &ring(n)).expect("conf");
        assert!(c.iter().all(|x| (x - 1.0).abs() < 1e-12));
        // Opposite velocities: clipped to 0.
        let v2: Vec<f64> = (0..4)
            .flat_map(|i| {
                if i % 2 == 0 {
                    [1.0, 0.0, 0.0]
                } else {
                    [-1.0, 0.0, 0.0]
                }
            })
            .collect();
        let c = velocity_confidence(
            RowMajor::new("v", &v2, 4, 3).expect("v"),
            &[0, 1, 2],
            &ring(4),
        )
        .expect("conf");
        assert!(c.iter().all(|&x| x == 0.0));
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(0.135), 0.14);
    }

    #[test]
    fn transition_confidence_and_displacement_coherence() {
        // Cells on a line in gene 0, velocity along +gene 0, T moves each cell one step right.
        let n = 4;
        let x: Vec<f64> = (0..n).flat_map(|i| [i as f64, 0.0, 0.0]).collect();
        let v: Vec<f64> = (0..n).flat_map(|_| [1.0, 0.0, 0.0]).collect();
        let (xm, vm) = (
            RowMajor::new("x", &x, n, 3).expect("x"),
            RowMajor::new("v", &v, n, 3).expect("v"),
        );
        let t = Csr::from_triplets(n, n, &[(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 3, 1.0)])
            .expect("t");
        let c = velocity_confidence_transition(xm, vm, &[0, 1, 2], &t).expect("ct");
        assert!((c[0] - 1.0).abs() < 1e-12 && (c[2] - 1.0).abs() < 1e-12);
        assert_eq!(c[3], 0.0);
        let nb = Neighbors::from_rows(1, vec![1, 2, 3, 2]).expect("nb");
        let s = displacement_coherence(xm, vm, &[0, 1, 2], &nb).expect("dc");
        assert_eq!(s, vec![1.0, 1.0, 1.0, -1.0]);
    }
}
