//! Transition-matrix projection onto an embedding and seeded random walks (CellRank's
//! `plot_projection` and `plot_random_walks` data, without the plotting).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::csr::ROW_CHUNK;
use crate::source::DenseMatrix;
use crate::transition::TransitionMatrix;

/// The transition-weighted displacement of every cell on an embedding `e` (n × d):
/// `p_i = Σ_j T_ij u_ij − (1/|N(i)|) Σ_j u_ij` with unit vectors `u_ij = (e_j − e_i)/‖e_j − e_i‖`
/// over the stored neighbours `j` of row `i` (CellRank's definition; the plotting-only
/// quiver autoscale factor is not applied). Row-major n × d.
pub fn project(t: &TransitionMatrix, e: &DenseMatrix) -> Vec<f64> {
    let (n, d) = (e.nrows(), e.ncols());
    assert_eq!(
        n,
        t.n_cells(),
        "project: embedding rows must equal the number of cells"
    );
    let rows: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .with_min_len(ROW_CHUNK)
        .map(|i| {
            let (cols, probs) = t.row(i);
            let mut ei = Vec::new();
            let mut ej = Vec::new();
            e.row_into(i, &mut ei);
            let mut weighted = vec![0.0; d];
            let mut mean = vec![0.0; d];
            for (&j, &p) in cols.iter().zip(probs) {
                e.row_into(j as usize, &mut ej);
                let diff: Vec<f64> = ej.iter().zip(&ei).map(|(a, b)| a - b).collect();
                let norm = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm == 0.0 {
                    continue;
                }
                for k in 0..d {
                    let u = diff[k] / norm;
                    weighted[k] += p * u;
                    mean[k] += u;
                }
            }
            let m = cols.len().max(1) as f64;
            (0..d).map(|k| weighted[k] - mean[k] / m).collect()
        })
        .collect();
    rows.into_iter().flatten().collect()
}

/// Seeded random walks on `t`: `n_sims` walks of at most `max_iter` steps, each starting at a
/// cell drawn uniformly from `start` (all cells when empty) and stopping early after
/// `successive_hits + 1` consecutive visits to `stop` cells. Walk `w` uses its own stream
/// seeded with `seed + w`. Each step costs O(log row length).
pub fn random_walks(
    t: &TransitionMatrix,
    n_sims: usize,
    max_iter: usize,
    start: &[usize],
    stop: &[usize],
    successive_hits: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let n = t.n_cells();
    let mut is_stop = vec![false; n];
    for &s in stop {
        if s < n {
            is_stop[s] = true;
        }
    }
    (0..n_sims)
        .into_par_iter()
        .map(|w| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut cell = if start.is_empty() {
                rng.random_range(0..n)
            } else {
                start[rng.random_range(0..start.len())]
            };
            let mut path = vec![cell];
            let mut hits = 0;
            for _ in 0..max_iter {
                let (cols, probs) = t.row(cell);
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut next = cols[cols.len() - 1] as usize;
                for (&c, &p) in cols.iter().zip(probs) {
                    acc += p;
                    if u < acc {
                        next = c as usize;
                        break;
                    }
                }
                cell = next;
                path.push(cell);
                if is_stop[cell] {
                    hits += 1;
                    if hits > successive_hits {
                        break;
                    }
                } else {
                    hits = 0;
                }
            }
            path
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Csr, Direction};

    #[test]
    fn projection_points_along_the_flow() {
        // Cells on a line; every cell moves right with probability 0.9.
        let n = 5;
        let mut trip = Vec::new();
        for i in 0..n {
            if i + 1 < n {
                trip.push((i, i + 1, 0.9));
            }
            if i > 0 {
                trip.push((i, i - 1, if i + 1 < n { 0.1 } else { 1.0 }));
            }
        }
        trip[0].2 = 1.0;
        let t = TransitionMatrix::from_weights(
            Csr::from_triplets(n, n, &trip).unwrap(),
            Direction::Forward,
        )
        .unwrap();
        let e = DenseMatrix::from_f64(n, 2, (0..n).flat_map(|i| [i as f64, 0.0]).collect());
        let p = project(&t, &e);
        // Middle cell: 0.9·(+1) + 0.1·(−1) − mean(+1, −1) = 0.8.
        assert!((p[2 * 2] - 0.8).abs() < 1e-12 && p[2 * 2 + 1].abs() < 1e-12);
    }

    #[test]
    fn walks_are_seeded_and_stop() {
        let trip = vec![(0, 1, 1.0), (1, 2, 1.0), (2, 2, 1.0)];
        let t = TransitionMatrix::from_weights(
            Csr::from_triplets(3, 3, &trip).unwrap(),
            Direction::Forward,
        )
        .unwrap();
        let w = random_walks(&t, 4, 10, &[0], &[2], 1, 7);
        for p in &w {
            assert_eq!(p, &vec![0, 1, 2, 2]);
        }
        assert_eq!(w, random_walks(&t, 4, 10, &[0], &[2], 1, 7));
    }
}
