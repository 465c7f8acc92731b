//! UMAP layout of a kNN graph (scanpy's `sc.tl.umap` semantics and defaults), in memory.
//!
//! Re-derived from the UMAP paper (McInnes, Healy & Melville 2018) and umap-learn's documented
//! behaviour (`../shared/docs/velocity-and-figures-notes.md` §4):
//! - `a`, `b` fitted so that `1 / (1 + a d^{2b})` follows 1 up to `min_dist` and
//!   `exp(−(d − min_dist) / spread)` beyond (Levenberg–Marquardt on 300 points of
//!   `[0, 3·spread]`): min_dist 0.5 gives a = 0.58303, b = 1.33417 as in scanpy;
//! - the graph's edges weaker than `max / n_epochs` are dropped (never sampled);
//! - spectral initialisation: eigenvectors 2 and 3 of the normalised adjacency
//!   `D^{-1/2} A D^{-1/2}` (Lanczos, deterministic), scaled to a largest
//!   coordinate of 10 with N(0, 1e-4) noise, then each coordinate rescaled to [0, 10];
//! - stochastic gradient descent over `n_epochs` (500 up to 10,000 cells, 200 above): each
//!   edge is sampled every `max/w` epochs (attraction moves both ends by
//!   `clip(−2ab d^{2(b−1)} / (1 + a d^{2b}) · (y_i − y_j), ±4)`), with `negative_sample_rate`
//!   negative samples per sample (repulsion `2γb / ((0.001 + d²)(1 + a d^{2b}))` moves the
//!   head only), the learning rate falling linearly to 0.
//!
//! Deterministic for a seed and independent of the thread count: the SGD visits the edges in
//! row order, sequentially (as umap-learn does with a fixed `random_state`), and every random
//! draw comes from a per-vertex generator seeded from the seed and the vertex.
//!
//! Deviations: the graph is laid out in float64 (umap-learn: float32); a graph with several
//! connected components lays each out on its own and places them on a grid by decreasing
//! size (umap-learn places their centres by a spectral embedding of the components'
//! centroids in the neighbour space); the connectivities are never modified (scanpy #4028:
//! some scanpy/scipy versions zeroed the weak edges of `obsp["connectivities"]` in place).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use cellfate_kernels::Csr;

use crate::io::element::NumVec;
use crate::io::Element;

/// Parameters of the layout (scanpy's `sc.tl.umap` names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UmapParams {
    /// Effective minimum distance between embedded points (scanpy: 0.5).
    pub min_dist: f64,
    /// Scale of the embedded points (1).
    pub spread: f64,
    /// Number of epochs (scanpy's `maxiter`; default 500 up to 10,000 cells, 200 above).
    pub n_epochs: Option<usize>,
    /// Initial learning rate (scanpy's `alpha`: 1).
    pub alpha: f64,
    /// Weight of the repulsion (scanpy's `gamma`: 1).
    pub gamma: f64,
    /// Negative samples per positive sample (5).
    pub negative_sample_rate: usize,
    /// Seed (scanpy's `random_state`: 0).
    pub random_state: u64,
}

impl Default for UmapParams {
    fn default() -> Self {
        Self {
            min_dist: 0.5,
            spread: 1.0,
            n_epochs: None,
            alpha: 1.0,
            gamma: 1.0,
            negative_sample_rate: 5,
            random_state: 0,
        }
    }
}

/// Why a layout cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum UmapError {
    /// A parameter is out of range.
    #[error("umap: {name} = {value}: expected {expected}")]
    Param {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The graph is not a square matrix of finite non-negative weights.
    #[error("umap: the neighbour graph {0}")]
    Graph(String),
}

impl UmapParams {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), UmapError> {
        let p = |name, value: f64, expected| UmapError::Param {
            name,
            value: value.to_string(),
            expected,
        };
        if !(self.spread.is_finite() && self.spread > 0.0) {
            return Err(p("spread", self.spread, "a finite number > 0"));
        }
        if !(self.min_dist.is_finite() && self.min_dist >= 0.0 && self.min_dist <= self.spread) {
            return Err(p("min_dist", self.min_dist, "a number in [0, spread]"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(p("alpha", self.alpha, "a finite number > 0"));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(p("gamma", self.gamma, "a finite number >= 0"));
        }
        if self.n_epochs == Some(0) {
            return Err(p("n_epochs", 0.0, "at least 1"));
        }
        Ok(())
    }
}

/// A computed layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Umap {
    /// Row-major n × 2 coordinates.
    pub embedding: Vec<f64>,
    /// Fitted `a` (scanpy writes it to `uns["umap"]["params"]`).
    pub a: f64,
    /// Fitted `b`.
    pub b: f64,
    /// Epochs run.
    pub n_epochs: usize,
    /// Connected components of the graph after dropping the weak edges.
    pub n_components: usize,
}

/// `a`, `b` of `1 / (1 + a x^{2b})` fitted to the target curve of `spread`, `min_dist`.
pub fn find_ab(spread: f64, min_dist: f64) -> (f64, f64) {
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let target: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if x < min_dist {
                1.0
            } else {
                (-(x - min_dist) / spread).exp()
            }
        })
        .collect();
    // Residuals and Jacobian of f(x) = 1 / (1 + a x^{2b}).
    let eval = |a: f64, b: f64| -> (f64, [[f64; 2]; 2], [f64; 2]) {
        let (mut sse, mut jtj, mut jtr) = (0.0, [[0.0; 2]; 2], [0.0; 2]);
        for (&x, &t) in xs.iter().zip(&target) {
            let p = if x > 0.0 { x.powf(2.0 * b) } else { 0.0 };
            let f = 1.0 / (1.0 + a * p);
            let r = f - t;
            let da = -p * f * f;
            let db = if x > 0.0 {
                -a * p * 2.0 * x.ln() * f * f
            } else {
                0.0
            };
            sse += r * r;
            let j = [da, db];
            for k in 0..2 {
                jtr[k] += j[k] * r;
                for l in 0..2 {
                    jtj[k][l] += j[k] * j[l];
                }
            }
        }
        (sse, jtj, jtr)
    };
    let (mut a, mut b) = (1.0, 1.0);
    let mut lambda = 1e-3;
    let (mut sse, mut jtj, mut jtr) = eval(a, b);
    for _ in 0..500 {
        let m = [
            [jtj[0][0] * (1.0 + lambda), jtj[0][1]],
            [jtj[1][0], jtj[1][1] * (1.0 + lambda)],
        ];
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        if det == 0.0 || !det.is_finite() {
            break;
        }
        let da = -(m[1][1] * jtr[0] - m[0][1] * jtr[1]) / det;
        let db = -(-m[1][0] * jtr[0] + m[0][0] * jtr[1]) / det;
        let (na, nb) = (a + da, b + db);
        if na <= 0.0 || nb <= 0.0 {
            lambda *= 10.0;
            continue;
        }
        let (nsse, njtj, njtr) = eval(na, nb);
        if nsse < sse {
            let done = (sse - nsse) <= 1e-15 * sse.max(1e-300) && da.abs() < 1e-12;
            (a, b, sse, jtj, jtr) = (na, nb, nsse, njtj, njtr);
            lambda = (lambda / 10.0).max(1e-12);
            if done {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e12 {
                break;
            }
        }
    }
    (a, b)
}

/// SplitMix64: a per-vertex generator for the negative samples.
#[derive(Clone, Copy)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Connected components (labels 0.. by first cell) of the graph's stored positive entries.
fn components(n: usize, edges: &[(u32, u32, f64)]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for &(i, j, _) in edges {
        let (a, b) = (find(&mut parent, i as usize), find(&mut parent, j as usize));
        if a != b {
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut label = vec![usize::MAX; n];
    let mut next = 0;
    (0..n)
        .map(|i| {
            let r = find(&mut parent, i);
            if label[r] == usize::MAX {
                label[r] = next;
                next += 1;
            }
            label[r]
        })
        .collect()
}

/// Lanczos steps of the spectral initialisation (fewer above 200,000 cells, where each
/// stored basis vector costs n × 8 bytes).
const LANCZOS_STEPS: usize = 150;

/// Eigenvectors 2 and 3 of `D^{-1/2} A D^{-1/2}` on the cells of one connected component
/// (`adj`: their adjacency lists with weights): Lanczos with full reorthogonalisation (twice,
/// against the known first eigenvector `D^{1/2} 1` and every basis vector), from a seeded
/// start, then the Ritz vectors of the two largest Ritz values. The eigenvalues next to 1 of
/// a kNN graph are close together (gaps ~1e-4), where power or subspace iteration barely
/// moves; an initialisation does not need them converged (umap-learn's ARPACK call stops at
/// a tolerance of 1e-4).
fn spectral(adj: &[Vec<(usize, f64)>], seed: u64) -> Vec<[f64; 2]> {
    let n = adj.len();
    let deg: Vec<f64> = adj
        .iter()
        .map(|r| r.iter().map(|e| e.1).sum::<f64>().max(f64::MIN_POSITIVE))
        .collect();
    let isq: Vec<f64> = deg.iter().map(|d| 1.0 / d.sqrt()).collect();
    let mut top: Vec<f64> = deg.iter().map(|d| d.sqrt()).collect();
    let tn = top.iter().map(|x| x * x).sum::<f64>().sqrt();
    top.iter_mut().for_each(|x| *x /= tn);
    let apply = |v: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| isq[i] * adj[i].iter().map(|&(j, w)| w * isq[j] * v[j]).sum::<f64>())
            .collect()
    };
    let dot = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    let steps = if n > 200_000 {
        LANCZOS_STEPS / 2
    } else {
        LANCZOS_STEPS
    }
    .min(n.saturating_sub(1))
    .max(2);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0, 1.0).expect("unit normal");
    let mut v: Vec<f64> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    let proj = dot(&v, &top);
    v.iter_mut().zip(&top).for_each(|(a, b)| *a -= proj * b);
    let vn = dot(&v, &v).sqrt().max(f64::MIN_POSITIVE);
    v.iter_mut().for_each(|a| *a /= vn);
    let mut basis: Vec<Vec<f64>> = vec![v];
    let (mut alpha, mut beta) = (Vec::new(), Vec::new());
    for j in 0..steps {
        let mut w = apply(&basis[j]);
        let a = dot(&w, &basis[j]);
        alpha.push(a);
        for _ in 0..2 {
            for u in std::iter::once(&top).chain(basis.iter()) {
                let c = dot(&w, u);
                w.iter_mut().zip(u.iter()).for_each(|(x, y)| *x -= c * y);
            }
        }
        let b = dot(&w, &w).sqrt();
        if j + 1 == steps || b <= 1e-10 {
            break;
        }
        beta.push(b);
        w.iter_mut().for_each(|x| *x /= b);
        basis.push(w);
    }
    let m = alpha.len();
    let t = nalgebra::DMatrix::from_fn(m, m, |i, j| {
        if i == j {
            alpha[i]
        } else if i + 1 == j {
            beta[i]
        } else if j + 1 == i {
            beta[j]
        } else {
            0.0
        }
    });
    let e = t.symmetric_eigen();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| e.eigenvalues[j].total_cmp(&e.eigenvalues[i]));
    let ritz = |k: usize| -> Vec<f64> {
        let mut out = vec![0.0; n];
        if let Some(&c) = order.get(k) {
            for (r, q) in basis.iter().take(m).enumerate() {
                let w = e.eigenvectors[(r, c)];
                out.iter_mut().zip(q).for_each(|(x, y)| *x += w * y);
            }
        }
        // A sign convention: the largest |entry| positive.
        let big = out
            .iter()
            .cloned()
            .fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
        if big < 0.0 {
            out.iter_mut().for_each(|x| *x = -*x);
        }
        out
    };
    let (v1, v2) = (ritz(0), ritz(1));
    (0..n).map(|i| [v1[i], v2[i]]).collect()
}

/// Lays out the graph `graph` (symmetric weights, e.g. `obsp["connectivities"]`).
pub fn umap(graph: &Csr, params: &UmapParams) -> Result<Umap, UmapError> {
    params.validate()?;
    let n = graph.nrows();
    if graph.ncols() != n {
        return Err(UmapError::Graph(format!(
            "is {} x {}: expected a square matrix",
            n,
            graph.ncols()
        )));
    }
    if let Some(w) = graph.data().iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(UmapError::Graph(format!(
            "has the weight {w}: expected finite weights >= 0"
        )));
    }
    let n_epochs = params
        .n_epochs
        .unwrap_or(if n <= 10_000 { 500 } else { 200 });
    let (a, b) = find_ab(params.spread, params.min_dist);
    // Edges kept: off-diagonal, at least max / n_epochs (row order, as the graph stores them).
    let wmax = graph.data().iter().cloned().fold(0.0f64, f64::max);
    let mut edges: Vec<(u32, u32, f64)> = Vec::new();
    for i in 0..n {
        let (cols, vals) = graph.row(i);
        for (&j, &w) in cols.iter().zip(vals) {
            if j as usize != i && w > 0.0 && w >= wmax / n_epochs as f64 {
                edges.push((i as u32, j, w));
            }
        }
    }
    let labels = components(n, &edges);
    let n_components = labels.iter().copied().max().map_or(0, |m| m + 1);
    // Initial positions: each component's spectral layout, components on a grid.
    let mut y = vec![[0.0f64; 2]; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_components];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    let mut order: Vec<usize> = (0..n_components).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(members[c].len()), c));
    let cols = (n_components as f64).sqrt().ceil().max(1.0) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(params.random_state);
    let mut local = vec![usize::MAX; n];
    for (slot, &c) in order.iter().enumerate() {
        let cells = &members[c];
        let centre = [(slot % cols) as f64, (slot / cols) as f64];
        let coords: Vec<[f64; 2]> = if cells.len() < 4 {
            use rand::Rng;
            cells
                .iter()
                .map(|_| [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)])
                .collect()
        } else {
            for (k, &i) in cells.iter().enumerate() {
                local[i] = k;
            }
            let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); cells.len()];
            for &(i, j, w) in &edges {
                if labels[i as usize] == c {
                    adj[local[i as usize]].push((local[j as usize], w));
                }
            }
            spectral(&adj, params.random_state.wrapping_add(c as u64))
        };
        // Scale the component into a box of side 0.8 around its grid point.
        let m = coords
            .iter()
            .flat_map(|p| p.iter())
            .fold(0.0f64, |a, x| a.max(x.abs()))
            .max(f64::MIN_POSITIVE);
        let scale = if n_components == 1 { 1.0 } else { 0.4 / m };
        for (&i, p) in cells.iter().zip(&coords) {
            y[i] = if n_components == 1 {
                *p
            } else {
                [centre[0] + scale * p[0], centre[1] + scale * p[1]]
            };
        }
    }
    // scanpy's post-processing: largest |coordinate| 10, N(0, 1e-4) noise, each coordinate
    // rescaled to [0, 10].
    let m = y
        .iter()
        .flat_map(|p| p.iter())
        .fold(0.0f64, |a, x| a.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    let noise = Normal::new(0.0, 1e-4).expect("noise");
    for p in y.iter_mut() {
        for c in p.iter_mut() {
            *c = *c * 10.0 / m + noise.sample(&mut rng);
        }
    }
    for d in 0..2 {
        let lo = y.iter().map(|p| p[d]).fold(f64::INFINITY, f64::min);
        let hi = y.iter().map(|p| p[d]).fold(f64::NEG_INFINITY, f64::max);
        let span = (hi - lo).max(f64::MIN_POSITIVE);
        y.iter_mut().for_each(|p| p[d] = 10.0 * (p[d] - lo) / span);
    }
    optimize(&mut y, &edges, wmax, a, b, n_epochs, params);
    Ok(Umap {
        embedding: y.iter().flat_map(|p| p.iter().copied()).collect(),
        a,
        b,
        n_epochs,
        n_components,
    })
}

/// The slots scanpy's `sc.tl.umap` writes: `obsm["X_umap"]` (float32, n × 2) and
/// `uns["umap"]["params"]` with `a`, `b` (and `random_state` when it is not 0).
pub fn umap_slots(u: &Umap, params: &UmapParams) -> Vec<(String, Element)> {
    let n = u.embedding.len() / 2;
    let mut p = vec![
        ("a".to_string(), Element::Scalar(NumVec::F64(vec![u.a]))),
        ("b".to_string(), Element::Scalar(NumVec::F64(vec![u.b]))),
    ];
    if params.random_state != 0 {
        p.push((
            "random_state".to_string(),
            Element::Scalar(NumVec::I64(vec![params.random_state as i64])),
        ));
    }
    vec![
        (
            "obsm/X_umap".into(),
            Element::Dense(crate::io::element::DenseArray {
                shape: vec![n, 2],
                data: NumVec::F32(u.embedding.iter().map(|&v| v as f32).collect()),
            }),
        ),
        (
            "uns/umap".into(),
            Element::Dict(vec![("params".to_string(), Element::Dict(p))]),
        ),
    ]
}

fn clip(x: f64) -> f64 {
    x.clamp(-4.0, 4.0)
}

/// The SGD (see the module docs), sequential over the edges in row order.
// Each update reads and writes two rows of `y` by coordinate.
#[allow(clippy::needless_range_loop)]
fn optimize(
    y: &mut [[f64; 2]],
    edges: &[(u32, u32, f64)],
    wmax: f64,
    a: f64,
    b: f64,
    n_epochs: usize,
    p: &UmapParams,
) {
    let n = y.len();
    if n < 2 || edges.is_empty() {
        return;
    }
    let eps: Vec<f64> = edges.iter().map(|e| wmax / e.2).collect();
    let neg_rate = p.negative_sample_rate as f64;
    let eps_neg: Vec<f64> = eps
        .iter()
        .map(|e| {
            if neg_rate > 0.0 {
                e / neg_rate
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let mut next = eps.clone();
    let mut next_neg = eps_neg.clone();
    let mut rngs: Vec<SplitMix> = (0..n)
        .map(|i| {
            let mut s = SplitMix(p.random_state ^ 0x5DEE_CE66_D1CE_B00C);
            s.0 =
                s.0.wrapping_add((i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            s.next();
            s
        })
        .collect();
    // d² to the power b, in single precision (as umap-learn computes its gradients): a
    // gradient coefficient needs no more digits, and the power dominates the cost.
    let bf = b as f32;
    let powb = |d2: f64| -> f64 { f64::from((d2 as f32).powf(bf)) };
    let mut alpha = p.alpha;
    for epoch in 0..n_epochs {
        let t = epoch as f64;
        if cellfate_kernels::interrupt::requested() {
            return;
        }
        for (k, &(i, j, _)) in edges.iter().enumerate() {
            if next[k] > t {
                continue;
            }
            let (i, j) = (i as usize, j as usize);
            let d2 = (y[i][0] - y[j][0]).powi(2) + (y[i][1] - y[j][1]).powi(2);
            let g = if d2 > 0.0 {
                // d^{2(b−1)} = d^{2b} / d²: one power per sample.
                let pb = powb(d2);
                -2.0 * a * b * (pb / d2) / (1.0 + a * pb)
            } else {
                0.0
            };
            for d in 0..2 {
                let delta = clip(g * (y[i][d] - y[j][d]));
                y[i][d] += alpha * delta;
                y[j][d] -= alpha * delta;
            }
            next[k] += eps[k];
            let n_neg = ((t - next_neg[k]) / eps_neg[k]).floor().max(0.0) as usize;
            for _ in 0..n_neg {
                let m = (rngs[i].next() % n as u64) as usize;
                if m == i {
                    continue;
                }
                let d2 = (y[i][0] - y[m][0]).powi(2) + (y[i][1] - y[m][1]).powi(2);
                if d2 <= 0.0 {
                    continue;
                }
                let g = 2.0 * p.gamma * b / ((0.001 + d2) * (1.0 + a * powb(d2)));
                for d in 0..2 {
                    y[i][d] += alpha * clip(g * (y[i][d] - y[m][d]));
                }
            }
            next_neg[k] += n_neg as f64 * eps_neg[k];
        }
        alpha = p.alpha * (1.0 - (epoch + 1) as f64 / n_epochs as f64);
    }
}

/// Trustworthiness of an embedding (Venna & Kaski; scikit-learn's `trustworthiness`): how
/// far the `k` nearest neighbours in the embedding `y` (row-major n × `dy`) are from being
/// neighbours in the original space `x` (row-major n × `dx`), 1 when every embedded
/// neighbour is an original one. O(n²) time: for tests and quality reports on thousands of
/// cells.
pub fn trustworthiness(x: &[f64], dx: usize, y: &[f64], dy: usize, k: usize) -> f64 {
    let n = x.len() / dx;
    assert!(
        y.len() == n * dy && k >= 1 && 2 * n > 3 * k + 1,
        "trustworthiness: shapes or k"
    );
    let dist = |m: &[f64], d: usize, i: usize, j: usize| -> f64 {
        (0..d).map(|c| (m[i * d + c] - m[j * d + c]).powi(2)).sum()
    };
    use rayon::prelude::*;
    let penalty: f64 = (0..n)
        .into_par_iter()
        .map(|i| {
            // Ranks of every other point in the original space (1 = nearest).
            let mut ox: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (dist(x, dx, i, j), j))
                .collect();
            ox.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut rank = vec![0usize; n];
            for (r, &(_, j)) in ox.iter().enumerate() {
                rank[j] = r + 1;
            }
            let mut oy: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (dist(y, dy, i, j), j))
                .collect();
            oy.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            oy[..k]
                .iter()
                .map(|&(_, j)| rank[j].saturating_sub(k) as f64)
                .sum::<f64>()
        })
        .sum();
    let (n, k) = (n as f64, k as f64);
    1.0 - penalty * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_and_b_are_scanpys() {
        let (a, b) = find_ab(1.0, 0.5);
        assert!(
            (a - 0.583030).abs() < 1e-5 && (b - 1.334167).abs() < 1e-5,
            "{a} {b}"
        );
        let (a, b) = find_ab(1.0, 0.1);
        assert!(
            (a - 1.576943).abs() < 1e-5 && (b - 0.895061).abs() < 1e-5,
            "{a} {b}"
        );
    }

    #[test]
    fn trustworthiness_is_one_for_the_same_points_and_lower_when_shuffled() {
        let x: Vec<f64> = (0..40)
            .flat_map(|i| [(i as f64).sin() * 3.0, i as f64 * 0.1])
            .collect();
        assert!((trustworthiness(&x, 2, &x, 2, 5) - 1.0).abs() < 1e-15);
        // A permutation of the rows breaks the neighbourhoods.
        let y: Vec<f64> = (0..40)
            .flat_map(|i| {
                let j = (i * 17) % 40;
                [x[2 * j], x[2 * j + 1]]
            })
            .collect();
        assert!(trustworthiness(&x, 2, &y, 2, 5) < 0.8);
    }

    /// Two noisy clusters joined by a thin bridge, as a kNN graph.
    fn two_clusters(n: usize) -> (Vec<f64>, Csr) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let normal = Normal::new(0.0, 1.0).unwrap();
        let x: Vec<f64> = (0..n)
            .flat_map(|i| {
                let c = if i < n / 2 { 0.0 } else { 6.0 };
                let z: Vec<f64> = (0..5).map(|_| normal.sample(&mut rng)).collect();
                [c + z[0], z[1], z[2], z[3], z[4]]
            })
            .collect();
        let mut trip = Vec::new();
        for i in 0..n {
            let mut d: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    (
                        (0..5).map(|c| (x[i * 5 + c] - x[j * 5 + c]).powi(2)).sum(),
                        j,
                    )
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            for &(dd, j) in d.iter().take(10) {
                let w = (-dd / d[9].0).exp();
                trip.push((i, j, w));
                trip.push((j, i, w));
            }
        }
        let mut g = Csr::from_triplets(n, n, &trip).unwrap();
        g.data_mut().iter_mut().for_each(|w| *w = w.min(1.0));
        (x, g)
    }

    #[test]
    fn the_layout_keeps_neighbourhoods_and_is_deterministic() {
        let (x, g) = two_clusters(300);
        let p = UmapParams::default();
        let u = umap(&g, &p).unwrap();
        assert_eq!(u.n_epochs, 500);
        assert!(u.embedding.iter().all(|v| v.is_finite()));
        let t = trustworthiness(&x, 5, &u.embedding, 2, 15);
        assert!(t > 0.85, "{t}");
        // The two clusters stay apart: the centroids are farther apart than either spread.
        let centroid = |r: std::ops::Range<usize>| {
            let m = r.len() as f64;
            let (mut a, mut b) = (0.0, 0.0);
            for i in r {
                a += u.embedding[2 * i] / m;
                b += u.embedding[2 * i + 1] / m;
            }
            (a, b)
        };
        let (c0, c1) = (centroid(0..150), centroid(150..300));
        let gap = ((c0.0 - c1.0).powi(2) + (c0.1 - c1.1).powi(2)).sqrt();
        let spread = (0..150)
            .map(|i| {
                ((u.embedding[2 * i] - c0.0).powi(2) + (u.embedding[2 * i + 1] - c0.1).powi(2))
                    .sqrt()
            })
            .sum::<f64>()
            / 150.0;
        assert!(gap > 2.0 * spread, "gap {gap}, spread {spread}");
        // Same seed, same bits; another seed, another layout.
        assert_eq!(umap(&g, &p).unwrap().embedding, u.embedding);
        let other = umap(
            &g,
            &UmapParams {
                random_state: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_ne!(other.embedding, u.embedding);
        // The graph is not modified (scanpy #4028), and bad input is an error.
        let before = g.clone();
        let _ = umap(&g, &p).unwrap();
        assert_eq!(g, before);
        let bad = UmapParams {
            min_dist: 2.0,
            ..Default::default()
        };
        assert!(umap(&g, &bad).unwrap_err().to_string().contains("min_dist"));
    }

    #[test]
    fn disconnected_components_are_laid_out_apart() {
        let (_, g) = two_clusters(200);
        // Remove the edges between the halves.
        let mut trip = Vec::new();
        for i in 0..200 {
            let (cols, vals) = g.row(i);
            for (&j, &w) in cols.iter().zip(vals) {
                if (i < 100) == ((j as usize) < 100) {
                    trip.push((i, j as usize, w));
                }
            }
        }
        let g = Csr::from_triplets(200, 200, &trip).unwrap();
        let u = umap(&g, &UmapParams::default()).unwrap();
        assert!(u.n_components >= 2, "{}", u.n_components);
        assert!(u.embedding.iter().all(|v| v.is_finite()));
    }
}
