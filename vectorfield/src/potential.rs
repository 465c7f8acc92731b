//! The potential of a flow on a cell graph by Hodge decomposition (dynamo's `ddhodge`, after
//! Maehara & Ohkawa): the edge flow F (antisymmetric) is split into a gradient part ∇p, a
//! divergence-free rest; p is the least-squares potential, min Σ_edges (p_j − p_i − F_ij)²,
//! i.e. the graph-Laplacian system L p = −div F with div_i = Σ_j F_ij (net outflow).
//!
//! Where this deviates from dynamo (`../shared/docs/dynamo-notes.md` §5.1):
//! - the edge flow is by default the line integral of the field along the edge,
//!   F_ij = ½ (v_i + v_j)·(x_j − x_i), which makes p exactly −V + c for a gradient field
//!   f = −∇V; dynamo's F_ij = ½ (v_i·û_ij + v_j·û_ij) with the unit vector û_ij
//!   ([`EdgeFlow::Unit`]) drops the edge length;
//! - L is sparse and solved by preconditioned conjugate gradients (each connected component's
//!   mean set to zero), which scales to millions of cells; dynamo builds dense n × n matrices
//!   and downsamples above 5,000 cells;
//! - the kNN graph is given by the caller.
//!
//! Signs: `ddhodge_potential` is dynamo's p − min p, **low for sources (progenitors), high for
//! sinks**, like a pseudotime; the Waddington potential (sclsd's convention, high for
//! progenitors) is max p − p.

use serde::{Deserialize, Serialize};

use crate::VectorFieldError;

/// How the flow along an edge is read from the velocities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeFlow {
    /// ½ (v_i + v_j)·(x_j − x_i): the line integral along the edge (cellfate's default).
    #[default]
    Displacement,
    /// ½ (v_i + v_j)·(x_j − x_i)/‖x_j − x_i‖ (dynamo's ddhodge).
    Unit,
}

/// Options of [`hodge_potential`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PotentialOptions {
    /// Edge flow.
    pub flow: EdgeFlow,
    /// Relative residual ‖L p + div‖ / ‖div‖ at which the solve stops.
    pub tol: f64,
    /// Conjugate-gradient iterations at most.
    pub max_iter: usize,
}

impl Default for PotentialOptions {
    fn default() -> Self {
        Self {
            flow: EdgeFlow::Displacement,
            tol: 1e-10,
            max_iter: 20_000,
        }
    }
}

/// The potential and what the decomposition gives per cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Potential {
    /// dynamo's `obs["<basis>_ddhodge_potential"]`: p − min p (low for sources).
    pub ddhodge_potential: Vec<f64>,
    /// dynamo's `obs["<basis>_ddhodge_div"]`: net outflow Σ_j F_ij.
    pub divergence: Vec<f64>,
    /// Waddington potential (sclsd's `obs["potential"]`): max p − p (high for progenitors).
    pub waddington: Vec<f64>,
    /// Per cell, the share of its edges' flow the gradient does not explain:
    /// Σ_j (F_ij − (p_j − p_i))² / Σ_j F_ij² (0: a pure gradient around the cell).
    pub curl_fraction: Vec<f64>,
    /// Connected component of each cell.
    pub component: Vec<usize>,
    /// Conjugate-gradient iterations and the final relative residual.
    pub iterations: usize,
    /// Final relative residual of L p = −div.
    pub residual: f64,
}

/// The symmetric edge set of neighbour lists (j ≠ i), sorted and deduplicated per cell.
fn symmetric(neighbors: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, VectorFieldError> {
    let n = neighbors.len();
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, row) in neighbors.iter().enumerate() {
        for &j in row {
            if j >= n {
                return Err(VectorFieldError::Invalid(format!(
                    "neighbour {j} of cell {i} is not a cell (of {n})"
                )));
            }
            if j != i {
                adj[i].push(j);
                adj[j].push(i);
            }
        }
    }
    for row in &mut adj {
        row.sort_unstable();
        row.dedup();
    }
    Ok(adj)
}

fn components(adj: &[Vec<usize>]) -> Vec<usize> {
    let n = adj.len();
    let mut comp = vec![usize::MAX; n];
    let mut c = 0;
    for s in 0..n {
        if comp[s] != usize::MAX {
            continue;
        }
        let mut stack = vec![s];
        comp[s] = c;
        while let Some(i) = stack.pop() {
            for &j in &adj[i] {
                if comp[j] == usize::MAX {
                    comp[j] = c;
                    stack.push(j);
                }
            }
        }
        c += 1;
    }
    comp
}

/// The Hodge potential of the flow of velocities `v` at positions `x` (both row-major n × d)
/// over the graph `neighbors` (each cell's neighbours; made symmetric, self-loops dropped).
pub fn hodge_potential(
    x: &[f64],
    v: &[f64],
    d: usize,
    neighbors: &[Vec<usize>],
    opts: &PotentialOptions,
) -> Result<Potential, VectorFieldError> {
    let n = neighbors.len();
    if d == 0 || x.len() != n * d || v.len() != n * d {
        return Err(VectorFieldError::Invalid(format!(
            "potential: positions ({} values) and velocities ({} values) must be {n} × {d} (one row per cell of the graph)",
            x.len(),
            v.len()
        )));
    }
    if let Some(k) = x.iter().chain(v).position(|a| !a.is_finite()) {
        let (what, k) = if k < x.len() {
            ("positions", k)
        } else {
            ("velocities", k - x.len())
        };
        return Err(VectorFieldError::Invalid(format!(
            "potential: {what} must be finite: cell {} has a non-finite value in dimension {}",
            k / d,
            k % d
        )));
    }
    let adj = symmetric(neighbors)?;
    let comp = components(&adj);
    let flow = |i: usize, j: usize| -> f64 {
        let (xi, xj) = (&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
        let (vi, vj) = (&v[i * d..(i + 1) * d], &v[j * d..(j + 1) * d]);
        let dot: f64 = (0..d)
            .map(|k| 0.5 * (vi[k] + vj[k]) * (xj[k] - xi[k]))
            .sum();
        match opts.flow {
            EdgeFlow::Displacement => dot,
            EdgeFlow::Unit => {
                let len = (0..d).map(|k| (xj[k] - xi[k]).powi(2)).sum::<f64>().sqrt();
                if len > 0.0 {
                    dot / len
                } else {
                    0.0
                }
            }
        }
    };
    let f: Vec<Vec<f64>> = adj
        .iter()
        .enumerate()
        .map(|(i, row)| row.iter().map(|&j| flow(i, j)).collect())
        .collect();
    solve_flow(&adj, &f, comp, opts)
}

/// The Hodge potential of the net flow of a Markov chain: each cell's transitions `rows[i]` =
/// `[(j, T_ij)]` (a transition matrix's rows), the edge flow F_ij = T_ij − T_ji on the
/// symmetrised graph (the chain's net probability flow per step from i to j). Needs no
/// embedding: the landscape of the kernel itself.
pub fn hodge_potential_of_transitions(
    rows: &[Vec<(usize, f64)>],
    opts: &PotentialOptions,
) -> Result<Potential, VectorFieldError> {
    let n = rows.len();
    let neighbors: Vec<Vec<usize>> = rows
        .iter()
        .map(|r| r.iter().map(|&(j, _)| j).collect())
        .collect();
    let adj = symmetric(&neighbors)?;
    for (i, r) in rows.iter().enumerate() {
        if let Some(&(j, w)) = r.iter().find(|e| !e.1.is_finite()) {
            return Err(VectorFieldError::Invalid(format!(
                "potential: the transition from cell {i} to cell {j} is {w}"
            )));
        }
    }
    let weight = |i: usize, j: usize| -> f64 {
        rows[i]
            .iter()
            .filter(|e| e.0 == j)
            .map(|e| e.1)
            .sum::<f64>()
    };
    let f: Vec<Vec<f64>> = adj
        .iter()
        .enumerate()
        .map(|(i, row)| row.iter().map(|&j| weight(i, j) - weight(j, i)).collect())
        .collect();
    let comp = components(&adj);
    let _ = n;
    solve_flow(&adj, &f, comp, opts)
}

/// Least-squares potential of the antisymmetric edge flow `f` (aligned with `adj`).
fn solve_flow(
    adj: &[Vec<usize>],
    f: &[Vec<f64>],
    comp: Vec<usize>,
    opts: &PotentialOptions,
) -> Result<Potential, VectorFieldError> {
    let n = adj.len();
    let div: Vec<f64> = f.iter().map(|r| r.iter().sum()).collect();
    let b: Vec<f64> = div.iter().map(|x| -x).collect();
    let deg: Vec<f64> = adj.iter().map(|r| r.len() as f64).collect();
    let lap = |p: &[f64], out: &mut [f64]| {
        for (i, row) in adj.iter().enumerate() {
            out[i] = deg[i] * p[i] - row.iter().map(|&j| p[j]).sum::<f64>();
        }
    };
    // Preconditioned CG (Jacobi), sequential reductions: the same bits at any thread count.
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let inv: Vec<f64> = deg
        .iter()
        .map(|&g| if g > 0.0 { 1.0 / g } else { 0.0 })
        .collect();
    let bnorm = dot(&b, &b).sqrt();
    let mut p = vec![0.0; n];
    let mut r = b.clone();
    let mut z: Vec<f64> = r.iter().zip(&inv).map(|(a, w)| a * w).collect();
    let mut dir = z.clone();
    let mut rz = dot(&r, &z);
    let mut q = vec![0.0; n];
    let mut it = 0;
    let mut res = if bnorm > 0.0 { 1.0 } else { 0.0 };
    while res > opts.tol && it < opts.max_iter {
        lap(&dir, &mut q);
        let dq = dot(&dir, &q);
        if dq <= 0.0 {
            break;
        }
        let alpha = rz / dq;
        for i in 0..n {
            p[i] += alpha * dir[i];
            r[i] -= alpha * q[i];
        }
        for i in 0..n {
            z[i] = r[i] * inv[i];
        }
        let rz_new = dot(&r, &z);
        let beta = rz_new / rz;
        rz = rz_new;
        for i in 0..n {
            dir[i] = z[i] + beta * dir[i];
        }
        it += 1;
        res = dot(&r, &r).sqrt() / bnorm;
    }
    if res > opts.tol.max(1e-6) {
        return Err(VectorFieldError::Numerical(format!(
            "potential: the graph-Laplacian solve reached a relative residual of {res:.2e} after {it} iterations (wanted {:.0e}); raise max_iter",
            opts.tol
        )));
    }
    // Mean zero per component, then dynamo's shift to a minimum of 0.
    let nc = comp.iter().max().map_or(0, |m| m + 1);
    let mut sum = vec![0.0; nc];
    let mut cnt = vec![0usize; nc];
    for i in 0..n {
        sum[comp[i]] += p[i];
        cnt[comp[i]] += 1;
    }
    for i in 0..n {
        p[i] -= sum[comp[i]] / cnt[comp[i]] as f64;
    }
    let lo = p.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let curl_fraction = adj
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (mut rest, mut tot) = (0.0, 0.0);
            for (k, &j) in row.iter().enumerate() {
                let e = f[i][k] - (p[j] - p[i]);
                rest += e * e;
                tot += f[i][k] * f[i][k];
            }
            if tot > 0.0 {
                rest / tot
            } else {
                0.0
            }
        })
        .collect();
    Ok(Potential {
        ddhodge_potential: p.iter().map(|x| x - lo).collect(),
        waddington: p.iter().map(|x| hi - x).collect(),
        divergence: div,
        curl_fraction,
        component: comp,
        iterations: it,
        residual: res,
    })
}

/// Each row's `k` nearest other rows of `x` (row-major n × d), exact (ties by index): the
/// graph [`hodge_potential`] works on when the caller has none. Quadratic: for up to tens of
/// thousands of cells (the root crate passes its own kNN at scale).
pub fn knn(x: &[f64], d: usize, k: usize) -> Vec<Vec<usize>> {
    use rayon::prelude::*;
    let n = x.len() / d.max(1);
    (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut ds: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let xj = &x[j * d..(j + 1) * d];
                    (xi.iter().zip(xj).map(|(a, b)| (a - b) * (a - b)).sum(), j)
                })
                .collect();
            let kk = k.min(ds.len());
            if kk > 0 && kk < ds.len() {
                ds.select_nth_unstable_by(kk - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                ds.truncate(kk);
            }
            ds.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            ds.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}
