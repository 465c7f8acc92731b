//! From fuzzy memberships to named, coloured cell states: CellRank's discretisation
//! (`n_cells` most likely cells per state), naming after the majority cluster with `_1`, `_2`
//! suffixes for duplicates, its colour palette, and the terminal/initial-state rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cellfate_kernels::{Csr, TransitionMatrix};
use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of the state assignment.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum StatesError {
    /// A parameter out of its range or inconsistent with the data.
    #[error("{parameter} = {got} is invalid: expected {expected}")]
    Parameter {
        /// The parameter (`n_cells`, `n_states`, ...).
        parameter: &'static str,
        /// What is allowed.
        expected: String,
        /// What was given.
        got: String,
    },
    /// More terminal states asked of the `top_n` rule than there are macrostates.
    #[error("top_n: {n_states} terminal states requested, but there are only {macrostates} macrostates; ask for at most {macrostates}")]
    TopNTooMany {
        /// How many were asked for.
        n_states: usize,
        /// How many macrostates there are.
        macrostates: usize,
    },
    /// More categories than the palette has colours.
    #[error("at most {max} categories can be coloured, got {got}")]
    TooManyCategories {
        /// Categories to colour.
        got: usize,
        /// Colours in the palette.
        max: usize,
    },
    /// The transition matrix and the memberships differ in cells.
    #[error("the transition matrix has {transition} cells, the memberships {memberships}")]
    CellCount {
        /// Cells of the transition matrix.
        transition: usize,
        /// Rows of the memberships.
        memberships: usize,
    },
    /// An empty list of states.
    #[error("no states given: the list of {what} is empty")]
    NoStates {
        /// What the list holds.
        what: &'static str,
    },
    /// A state name that is not a macrostate.
    #[error("terminal state {name:?} is not a macrostate; the macrostates are: {}", .macrostates.join(", "))]
    UnknownState {
        /// The name given.
        name: String,
        /// The macrostates.
        macrostates: Vec<String>,
    },
    /// A state named twice.
    #[error("terminal state {name:?} is named twice")]
    DuplicateState {
        /// The name.
        name: String,
    },
    /// A state without cells.
    #[error("state {name:?} has no cells")]
    EmptyState {
        /// The state.
        name: String,
    },
    /// Too few cells in a state after discretisation.
    #[error("discretising the memberships leaves a state with {got} cells, fewer than {threshold}; recompute the macrostates with another number of states or decrease n_cells")]
    TooFewCells {
        /// Cells kept.
        got: usize,
        /// Required.
        threshold: usize,
    },
    /// Nothing passed the stability threshold.
    #[error("no macrostate has a coarse self-transition probability >= {threshold} (the highest is {max:.4}); coarse self-transitions: {listing}. Decrease the stability threshold (TerminalMethod::Stability {{ threshold }}), or take the most stable macrostates (TerminalMethod::TopN {{ n_states }}, method = \"top_n\" in a config; e.g. n_states = 2)")]
    NoneStable {
        /// Threshold.
        threshold: f64,
        /// Highest stability.
        max: f64,
        /// `name: value` pairs.
        listing: String,
    },
}

/// CellRank's 62-colour categorical palette (scanpy's 20, then Accent, Dark2, Set1, Set2, Set3).
pub const PALETTE: [&str; 62] = [
    "#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b", "#e377c2", "#b5bd61",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5", "#ad494a", "#8c6d31", "#7fc97f", "#beaed4", "#fdc086", "#ffff99",
    "#386cb0", "#f0027f", "#bf5b17", "#666666", "#d95f02", "#7570b3", "#66a61e", "#e6ab02",
    "#a6761d", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628",
    "#f781bf", "#999999", "#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f",
    "#e5c494", "#b3b3b3", "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462",
    "#b3de69", "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f",
];

/// The first `k` palette colours (an error past 62).
pub fn palette(k: usize) -> Result<Vec<String>, StatesError> {
    if k > PALETTE.len() {
        return Err(StatesError::TooManyCategories {
            got: k,
            max: PALETTE.len(),
        });
    }
    Ok(PALETTE[..k].iter().map(|s| (*s).to_string()).collect())
}

/// Memberships closer than this to the `n_cells`-th largest of their column are ties: the
/// memberships cannot tell those cells apart (a metastable set whose memberships saturate at
/// the same value to 6 digits over thousands of cells, e.g. a whole branch).
pub const MEMBERSHIP_TIE_TOL: f64 = 1e-4;

/// Power iterations of the quasi-stationary distribution used to break membership ties.
const QSD_MAX_ITER: usize = 5000;

/// Iterations between two checks of a tie-break distribution's most likely cells. The top
/// is accepted when it is the same at two checks and the distribution moved less than 1e-9
/// in L1 in the last step, or when it is the same over [`QSD_STABLE_ITERATIONS`]: checks 50
/// apart let a converged distribution stop after 100 iterations (the first check compares
/// with the uniform start), where checks 100 apart needed 200 (m = 15 on the real 1M demo
/// chain: 51.3 -> 43.7 s).
const QSD_CHECK_EVERY: usize = 50;

/// Iterations over which an unchanged top is accepted while the distribution still moves.
const QSD_STABLE_ITERATIONS: usize = 300;

/// The quasi-stationary distributions that break ties are iterated until at least this many
/// of their most likely cells are stable, whatever the number of cells per state asked for,
/// so that one distribution serves every number of cells up to it (the recovery with fewer
/// cells per state retries 29, 28, … and reuses the bands' distributions).
const QSD_MIN_TOP: usize = 30;

/// Bands of at least this many tied cells have their quasi-stationary distribution iterated
/// in a bandwidth order (smaller ones fit in cache as they are).
const QSD_ORDER_MIN_CELLS: usize = 65_536;

/// The `n_cells` most likely cells of each column of `chi`; a cell picked by several columns
/// stays with the one where its membership is largest (first column on ties). Boundary ties
/// are broken by larger value, then smaller cell index (CellRank's argpartition is
/// unspecified there). Returns the state (column) of each cell, `None` for unassigned cells.
///
/// This is CellRank's rule; [`fuzzy_to_discrete_with`] breaks ties by where the walk dwells.
pub fn fuzzy_to_discrete(
    chi: &DMatrix<f64>,
    n_cells: usize,
) -> Result<Vec<Option<usize>>, StatesError> {
    fuzzy_to_discrete_with(chi, n_cells, None)
}

/// [`fuzzy_to_discrete`], with membership ties broken by the chain `t` when given.
///
/// **Deviation from CellRank.** When more cells than fit tie at the boundary of a column
/// (memberships within [`MEMBERSHIP_TIE_TOL`] of the `n_cells`-th largest), CellRank keeps
/// whichever the sort returns: numerical noise in the 7th digit. On a saturated branch that
/// is an arbitrary stretch of it, e.g. its middle instead of its tip, and a terminal state in
/// the middle of a branch leaves the tip (nearly) unable to reach any terminal state. Here the
/// tied cells are ranked by the quasi-stationary distribution of the chain restricted to the
/// column's candidates (every cell within the tolerance of the boundary or above): where a
/// walk that stays in the state spends its time: the tip of a terminal branch, the core of a metastable
/// set. When the column saturates (the boundary is tied with the column's maximum), the
/// candidates are the cells tied with the maximum: the same band for every `n_cells` up to
/// its size. Without ties the result is CellRank's.
pub fn fuzzy_to_discrete_with(
    chi: &DMatrix<f64>,
    n_cells: usize,
    t: Option<&TransitionMatrix>,
) -> Result<Vec<Option<usize>>, StatesError> {
    fuzzy_to_discrete_cached(chi, n_cells, t, None)
}

/// A band of tied cells (in the order the distribution is given in) and the number of top
/// cells whose ranking was iterated for.
type Band = (Vec<usize>, usize);

/// The quasi-stationary distributions computed by [`fuzzy_to_discrete_cached`] for the
/// tie-breaks of one chain, by the band of tied cells they were computed for: the
/// macrostates, the terminal states and the initial states of one estimator discretise the
/// same memberships, and at 1,000,000 cells each such distribution takes seconds. Only valid
/// with the chain it was filled with.
#[derive(Debug, Default)]
pub struct TieBreaks {
    by_band: Mutex<HashMap<Band, Arc<Vec<f64>>>>,
}

impl TieBreaks {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distributions are kept.
    pub fn len(&self) -> usize {
        self.by_band
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distribution on the band of `cells` (sorted by index) with `n_top`, computed once:
    /// bands of the same cells share it, whatever their order.
    fn get(&self, t: &TransitionMatrix, cells: &[usize], n_top: usize) -> Arc<Vec<f64>> {
        // A panic elsewhere while the lock was held leaves entries that are still valid.
        let lock = || self.by_band.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (cells.to_vec(), n_top.max(QSD_MIN_TOP));
        if let Some(q) = lock().get(&key) {
            return Arc::clone(q);
        }
        let q = Arc::new(quasi_stationary(t, cells, n_top));
        lock().insert(key, Arc::clone(&q));
        q
    }
}

/// [`fuzzy_to_discrete_with`], reusing (and filling) `cache` for the tie-breaks when given:
/// the same result, computed once per band of tied cells.
pub fn fuzzy_to_discrete_cached(
    chi: &DMatrix<f64>,
    n_cells: usize,
    t: Option<&TransitionMatrix>,
    cache: Option<&TieBreaks>,
) -> Result<Vec<Option<usize>>, StatesError> {
    let (n, m) = (chi.nrows(), chi.ncols());
    if n_cells == 0 {
        return Err(StatesError::Parameter {
            parameter: "n_cells",
            expected: "a positive number of cells per state".into(),
            got: n_cells.to_string(),
        });
    }
    if n_cells > n / m.max(1) {
        return Err(StatesError::Parameter {
            parameter: "n_cells",
            expected: format!(
                "at most {} cells per state for {n} cells and {m} states",
                n / m.max(1)
            ),
            got: n_cells.to_string(),
        });
    }
    if let Some(t) = t {
        if t.n_cells() != n {
            return Err(StatesError::CellCount {
                transition: t.n_cells(),
                memberships: n,
            });
        }
    }
    let threshold = ((0.2 * n_cells as f64).floor() as usize).max(1);
    // Each column's cells by decreasing membership (ties by index), down to the band of
    // cells tied at the `n_cells`-th, and how many of them are above the band (sure to be
    // kept). Without a chain the band is cut by index: every kept cell is sure.
    let mut columns: Vec<(Vec<usize>, usize)> = Vec::with_capacity(m);
    for j in 0..m {
        // A selection, then a sort of the selected cells (linear in the cells instead of a
        // sort of all of them).
        let by_membership =
            |a: &usize, b: &usize| chi[(*b, j)].total_cmp(&chi[(*a, j)]).then(a.cmp(b));
        let mut idx: Vec<usize> = (0..n).collect();
        idx.select_nth_unstable_by(n_cells - 1, by_membership);
        let boundary = chi[(idx[n_cells - 1], j)];
        let (head, tail) = idx.split_at(n_cells);
        let mut idx: Vec<usize> = head
            .iter()
            .copied()
            .chain(
                tail.iter()
                    .copied()
                    .filter(|&l| chi[(l, j)] >= boundary - MEMBERSHIP_TIE_TOL),
            )
            .collect();
        idx.sort_by(by_membership);
        let mut band = idx.partition_point(|&l| chi[(l, j)] >= boundary - MEMBERSHIP_TIE_TOL);
        let mut sure = n_cells;
        if t.is_some() && band > n_cells {
            sure = idx.partition_point(|&l| chi[(l, j)] > boundary + MEMBERSHIP_TIE_TOL);
            if sure == 0 {
                // A saturated column: the boundary is tied with the maximum, and the band is
                // the cells tied with the maximum (a subset holding the top `n_cells`), the
                // same for every number of cells per state up to its size.
                let top = chi[(idx[0], j)];
                band = idx.partition_point(|&l| chi[(l, j)] >= top - MEMBERSHIP_TIE_TOL);
            }
            if band == n_cells {
                sure = n_cells;
            }
        }
        idx.truncate(band.max(n_cells));
        if sure == n_cells {
            idx.truncate(n_cells);
        }
        columns.push((idx, sure));
    }
    // The tie-breaks: one quasi-stationary distribution per band of tied cells (on the cells
    // sorted by index, so that bands of the same cells share it), the bands in parallel,
    // each iterated alone (the same at any thread count).
    let sorted: Vec<Option<Vec<usize>>> = columns
        .iter()
        .map(|(idx, _)| {
            (idx.len() > n_cells).then(|| {
                let mut cells = idx.clone();
                cells.sort_unstable();
                cells
            })
        })
        .collect();
    let mut bands: Vec<&Vec<usize>> = sorted.iter().flatten().collect();
    bands.sort();
    bands.dedup();
    let ranked: Vec<Arc<Vec<f64>>> = match t {
        Some(t) => bands
            .par_iter()
            .map(|cells| match cache {
                Some(c) => c.get(t, cells, n_cells),
                None => Arc::new(quasi_stationary(t, cells, n_cells)),
            })
            .collect(),
        // Without a chain no column has tied cells left.
        None => Vec::new(),
    };
    let mut candidates: Vec<Vec<usize>> = Vec::with_capacity(m);
    for ((idx, sure), cells) in columns.into_iter().zip(&sorted) {
        let Some(cells) = cells else {
            candidates.push(idx);
            continue;
        };
        let q = &ranked[bands.binary_search(&cells).expect("every band is ranked")];
        // Each tied cell with its probability (found by its position in the sorted band);
        // the most likely first, ties by index: a selection of the few kept, then their sort.
        let mut tied: Vec<(f64, usize)> = idx[sure..]
            .iter()
            .map(|&l| {
                (
                    q[cells.binary_search(&l).expect("the band holds its cells")],
                    l,
                )
            })
            .collect();
        let by_probability =
            |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let r = n_cells - sure;
        tied.select_nth_unstable_by(r - 1, by_probability);
        tied.truncate(r);
        tied.sort_by(by_probability);
        let mut keep: Vec<usize> = idx[..sure].to_vec();
        keep.extend(tied.iter().map(|&(_, l)| l));
        candidates.push(keep);
    }
    let mut owner: Vec<Option<usize>> = vec![None; n];
    for (j, cells) in candidates.iter().enumerate() {
        for &l in cells {
            owner[l] = match owner[l] {
                None => Some(j),
                Some(prev) if chi[(l, j)] > chi[(l, prev)] => Some(j),
                keep => keep,
            };
        }
    }
    let counts: Vec<usize> = (0..m)
        .map(|j| owner.iter().filter(|o| **o == Some(j)).count())
        .collect();
    let min = counts.iter().copied().min().unwrap_or(0);
    if min < threshold {
        return Err(StatesError::TooFewCells {
            got: min,
            threshold,
        });
    }
    Ok(owner)
}

/// The quasi-stationary distribution of the chain restricted to `cells` (the normalised
/// leading left eigenvector of the sub-stochastic `T[cells, cells]`), by power iteration from
/// the uniform distribution; in the order of `cells`. Iterates until the `n_top` (at least
/// [`QSD_MIN_TOP`]) most likely cells are the same over [`QSD_STABLE_ITERATIONS`] (checked
/// every [`QSD_CHECK_EVERY`]), or at two checks when the distribution moved less than 1e-9
/// in L1 in the last step, or [`QSD_MAX_ITER`] iterations: only the ranking is used.
/// Products run row by row in a fixed order (independent of the thread count).
fn quasi_stationary(t: &TransitionMatrix, cells: &[usize], n_top: usize) -> Vec<f64> {
    quasi_stationary_in(
        t,
        cells,
        n_top.max(QSD_MIN_TOP),
        cells.len() >= QSD_ORDER_MIN_CELLS,
    )
}

/// [`quasi_stationary`], iterated in a bandwidth order of the band's chain when `ordered`.
fn quasi_stationary_in(
    t: &TransitionMatrix,
    cells: &[usize],
    n_top: usize,
    ordered: bool,
) -> Vec<f64> {
    let k = cells.len();
    // Large bands (a branch's worth of cells) are iterated in a reverse Cuthill–McKee order
    // of their chain, so that the products gather from nearby memory (at 1,000,000 cells,
    // bands of 216,000 cells: 300 iterations 4.0 -> 3.0 s, for about 0.5 s of ordering);
    // the result is mapped back.
    let sub = t.submatrix(cells, cells);
    let order = ordered.then(|| crate::graph::bandwidth_order(&sub));
    // Rows of the transpose: p_new[j] = Σ_i p[i] T[cells_i, cells_j], with the entries in
    // float32 (only the ranking is used; the products stream the band's chain from memory,
    // 8 bytes per entry instead of 12) and the sums in float64.
    let identity: Vec<usize>;
    let (indptr, indices, data) = permuted_transpose(
        &sub,
        match &order {
            Some(o) => o,
            None => {
                identity = (0..k).collect();
                &identity
            }
        },
    );
    drop(sub);
    let back = |p: &[f64]| -> Vec<f64> {
        match &order {
            Some(o) => {
                let mut out = vec![0.0; k];
                for (&orig, &v) in o.iter().zip(p) {
                    out[orig] = v;
                }
                out
            }
            None => p.to_vec(),
        }
    };
    let step = |p: &[f64], next: &mut [f64]| {
        next.par_iter_mut()
            .enumerate()
            .with_min_len(1024)
            .for_each(|(i, out)| {
                let (a, b) = (indptr[i], indptr[i + 1]);
                *out = indices[a..b]
                    .iter()
                    .zip(&data[a..b])
                    .map(|(&c, &v)| f64::from(v) * p[c as usize])
                    .sum();
            });
    };
    let mut next = vec![0.0; k];
    let mut p = vec![1.0 / k as f64; k];
    let top = |p: &[f64]| -> Vec<usize> {
        let mut o: Vec<usize> = (0..k).collect();
        o.select_nth_unstable_by(n_top.min(k) - 1, |&a, &b| {
            p[b].total_cmp(&p[a]).then(a.cmp(&b))
        });
        o.truncate(n_top.min(k));
        o.sort_unstable();
        o
    };
    let mut last_top = top(&back(&p));
    let mut stable = 0;
    for it in 1..=QSD_MAX_ITER {
        step(&p, &mut next);
        let total: f64 = next.iter().sum();
        if total.is_nan() || total <= 0.0 || total.is_infinite() {
            // Nothing stays: the ranking by the last iterate is all there is.
            break;
        }
        next.iter_mut().for_each(|v| *v /= total);
        let moved: f64 = next.iter().zip(&p).map(|(a, b)| (a - b).abs()).sum();
        std::mem::swap(&mut p, &mut next);
        if it % QSD_CHECK_EVERY == 0 {
            let now = top(&back(&p));
            stable = if now == last_top { stable + 1 } else { 0 };
            last_top = now;
            if stable * QSD_CHECK_EVERY >= QSD_STABLE_ITERATIONS || (stable >= 1 && moved < 1e-9) {
                break;
            }
        }
    }
    back(&p)
}

/// The rows of `(P S Pᵀ)ᵀ` for the square `s` and the permutation `order` (new position →
/// old), entries in float32: `s.submatrix(order, order).transpose()` in one pass over `s`
/// (each output row's columns come out in increasing order, as the transpose's do).
fn permuted_transpose(s: &Csr, order: &[usize]) -> (Vec<usize>, Vec<u32>, Vec<f32>) {
    let k = order.len();
    let mut new_of = vec![0u32; k];
    for (new, &old) in order.iter().enumerate() {
        new_of[old] = new as u32;
    }
    let mut indptr = vec![0usize; k + 1];
    for &j in s.indices() {
        indptr[new_of[j as usize] as usize + 1] += 1;
    }
    for r in 0..k {
        indptr[r + 1] += indptr[r];
    }
    let mut next = indptr[..k].to_vec();
    let mut indices = vec![0u32; s.nnz()];
    let mut data = vec![0f32; s.nnz()];
    for (new_i, &i) in order.iter().enumerate() {
        let (cols, vals) = s.row(i);
        for (&j, &v) in cols.iter().zip(vals) {
            let r = new_of[j as usize] as usize;
            indices[next[r]] = new_i as u32;
            data[next[r]] = v as f32;
            next[r] += 1;
        }
    }
    (indptr, indices, data)
}

/// A reference categorical used to name states (e.g. `obs["clusters"]`).
#[derive(Clone, Copy, Debug)]
pub struct ClusterReference<'a> {
    /// Label of every cell (`None` = missing).
    pub labels: &'a [Option<String>],
    /// The categories, in order.
    pub categories: &'a [String],
    /// Their colours (`uns["clusters_colors"]`), when known.
    pub colors: Option<&'a [String]>,
}

/// Names and colours of states from a reference categorical (`clusters`): each state is named
/// after the category most of its cells carry (first category on ties); names chosen by k ≥ 2
/// states get `_1.._k` suffixes in state order and shifted shades of the category colour.
/// Without a reference, states are named `0..m-1` with palette colours.
pub fn name_states(
    assignment: &[Option<usize>],
    m: usize,
    reference: Option<ClusterReference<'_>>,
) -> Result<(Vec<String>, Vec<String>), StatesError> {
    let Some(ClusterReference {
        labels,
        categories,
        colors,
    }) = reference
    else {
        return Ok(((0..m).map(|i| i.to_string()).collect(), palette(m)?));
    };
    let ref_colors: Vec<String> = match colors {
        Some(c) if c.len() >= categories.len() => c[..categories.len()].to_vec(),
        _ => palette(categories.len())?,
    };
    let mut names = Vec::with_capacity(m);
    let mut cols = Vec::with_capacity(m);
    for q in 0..m {
        let mut counts = vec![0usize; categories.len()];
        for (l, a) in assignment.iter().enumerate() {
            if *a == Some(q) {
                if let Some(Some(lab)) = labels.get(l) {
                    if let Some(r) = categories.iter().position(|c| c == lab) {
                        counts[r] += 1;
                    }
                }
            }
        }
        let mut best = 0;
        for r in 1..counts.len() {
            if counts[r] > counts[best] {
                best = r;
            }
        }
        names.push(
            categories
                .get(best)
                .cloned()
                .unwrap_or_else(|| q.to_string()),
        );
        cols.push(
            ref_colors
                .get(best)
                .cloned()
                .unwrap_or_else(|| PALETTE[q % 62].to_string()),
        );
    }
    // Deduplicate with suffixes and shaded colours.
    let mut out_names = names.clone();
    let mut out_cols = cols.clone();
    let mut seen: Vec<&String> = Vec::new();
    for name in &names {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let idx: Vec<usize> = (0..m).filter(|&q| &names[q] == name).collect();
        if idx.len() >= 2 {
            let shades = shade_colors(&cols[idx[0]], idx.len());
            for (k, &q) in idx.iter().enumerate() {
                out_names[q] = format!("{name}_{}", k + 1);
                out_cols[q] = shades[k].clone();
            }
        }
    }
    Ok((out_names, out_cols))
}

fn hex_to_rgb(hex: &str) -> (f64, f64, f64) {
    let h = hex.trim_start_matches('#');
    let p = |i: usize| {
        u8::from_str_radix(h.get(i..i + 2).unwrap_or("00"), 16).unwrap_or(0) as f64 / 255.0
    };
    (p(0), p(2), p(4))
}

fn rgb_to_hex(r: f64, g: f64, b: f64) -> String {
    // Python's round (half to even) on 255·c.
    let c = |x: f64| {
        let v = x * 255.0;
        let r = v.round_ties_even();
        r.clamp(0.0, 255.0) as u8
    };
    format!("#{:02x}{:02x}{:02x}", c(r), c(g), c(b))
}

fn rgb_to_hsv(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
    let v = r.max(g).max(b);
    let delta = v - r.min(g).min(b);
    let s = if v > 0.0 { delta / v } else { 0.0 };
    let mut h = 0.0;
    if delta > 0.0 {
        if r == v {
            h = (g - b) / delta;
        }
        if g == v {
            h = 2.0 + (b - r) / delta;
        }
        if b == v {
            h = 4.0 + (r - g) / delta;
        }
        h = (h / 6.0).rem_euclid(1.0);
    }
    (h, s, v)
}

fn hsv_to_rgb(h: f64, s: f64, v: f64) -> (f64, f64, f64) {
    if s == 0.0 {
        return (v, v, v);
    }
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (i as i64).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// `k` shades around a colour (CellRank's `_create_colors`: hue ± 0.1, value ± 0.3, every
/// other of `2k` steps).
pub fn shade_colors(hex: &str, k: usize) -> Vec<String> {
    let (r, g, b) = hex_to_rgb(hex);
    let (h, s, v) = rgb_to_hsv(r, g, b);
    let steps = 2 * k;
    let lin = |a: f64, b: f64, i: usize| {
        if steps == 1 {
            a
        } else {
            a + (b - a) * i as f64 / (steps - 1) as f64
        }
    };
    (0..steps)
        .step_by(2)
        .map(|i| {
            let hh = lin((h - 0.1).max(0.0), (h + 0.1).min(1.0), i);
            let vv = lin((v - 0.3).max(0.0), (v + 0.3).min(1.0), i);
            let (r, g, b) = hsv_to_rgb(hh, s, vv);
            rgb_to_hex(r, g, b)
        })
        .collect()
}

/// How terminal states are chosen among macrostates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum TerminalMethod {
    /// cellfate's default: the stable macrostates (coarse self-transition ≥ `threshold`) that
    /// are not sources of the coarse-grained chain (see [`select_terminal_sinks`]). When the
    /// initial state (the one [`select_initial`] names) is *drained* (its stationary share
    /// relative to its share of the cells below a tenth of every other selected state's),
    /// it is never terminal while another one remains, and a stable source whose cells lie
    /// in the far half of the graph from it (median hops from its cells, between it and the
    /// farthest macrostate) is an end whose tip leaks into another branch, and is kept.
    ///
    /// **Deviation from CellRank**, whose default is [`TerminalMethod::Stability`]: a
    /// metastable start (the progenitors of a differentiation, which the walk leaves slowly
    /// but only forwards and which nothing enters) passes CellRank's stability cut and is
    /// reported terminal; here it is not.
    Sinks {
        /// Stability threshold (CellRank's 0.96).
        threshold: f64,
        /// A macrostate is a source when its net inflow is at most this fraction of its net
        /// outflow.
        source_ratio: f64,
    },
    /// CellRank's rule: macrostates whose coarse self-transition is ≥ `threshold` (CellRank's
    /// default 0.96).
    Stability {
        /// Threshold.
        threshold: f64,
    },
    /// The `n_states` most stable macrostates.
    TopN {
        /// How many.
        n_states: usize,
    },
    /// `eigengap + 1` most stable macrostates (eigengap of the Schur/eigen values).
    Eigengap {
        /// Eigengap parameter α.
        alpha: f64,
    },
    /// `eigengap` (no +1; 0 = all) of the sorted coarse self-transitions.
    EigengapCoarse {
        /// Eigengap parameter α.
        alpha: f64,
    },
    /// Set by hand: these macrostates, by name (CellRank's `set_terminal_states(["Alpha"])`).
    Names {
        /// Macrostate names.
        states: Vec<String>,
    },
}

impl Default for TerminalMethod {
    fn default() -> Self {
        Self::sinks()
    }
}

impl TerminalMethod {
    /// [`TerminalMethod::Sinks`] with its defaults (threshold 0.96, source ratio 0.05).
    pub fn sinks() -> Self {
        Self::Sinks {
            threshold: 0.96,
            source_ratio: SOURCE_RATIO,
        }
    }

    /// CellRank's default, [`TerminalMethod::Stability`] at 0.96.
    pub fn cellrank() -> Self {
        Self::Stability { threshold: 0.96 }
    }
}

/// Default `source_ratio` of [`TerminalMethod::Sinks`].
pub const SOURCE_RATIO: f64 = 0.05;

/// How one macrostate fares under [`TerminalMethod::Sinks`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowScore {
    /// Coarse self-transition probability.
    pub stability: f64,
    /// Net probability flow into the macrostate per step, per unit of its mass.
    pub net_inflow: f64,
    /// Net probability flow out of it per step, per unit of its mass.
    pub net_outflow: f64,
    /// Stable (self-transition ≥ threshold).
    pub stable: bool,
    /// A source: net inflow ≤ source_ratio × net outflow (and a net outflow above 1e-12).
    pub source: bool,
}

/// The net flows of the coarse-grained chain: with mass `μ` (the coarse initial
/// distribution, the share of cells in each macrostate) and the coarse transition matrix
/// `T_c` (negative entries, rounding artefacts of the coarse-graining, read as 0), the flow
/// from `q` to `r` in one step is `μ_q T_qr`; the net flow is `μ_q T_qr − μ_r T_rq`.
/// Returns `(net inflow, net outflow)` of each macrostate per unit of its mass.
pub fn coarse_net_flows(coarse_t: &DMatrix<f64>, mass: &[f64]) -> Vec<(f64, f64)> {
    let m = coarse_t.nrows();
    let flow = |q: usize, r: usize| mass[q].max(0.0) * coarse_t[(q, r)].max(0.0);
    (0..m)
        .map(|q| {
            let (mut inflow, mut outflow) = (0.0, 0.0);
            for r in (0..m).filter(|&r| r != q) {
                let net = flow(q, r) - flow(r, q);
                if net > 0.0 {
                    outflow += net;
                } else {
                    inflow -= net;
                }
            }
            let w = mass[q].max(f64::MIN_POSITIVE);
            (inflow / w, outflow / w)
        })
        .collect()
}

/// cellfate's default terminal-state rule ([`TerminalMethod::Sinks`]): macrostates that are
/// stable (coarse self-transition ≥ `threshold`, CellRank's criterion) and not sources of
/// the coarse-grained chain. A source receives (almost) no net flow from the other
/// macrostates (net inflow ≤ `source_ratio` × net outflow, net outflow > 1e-12 per step):
/// the start of a differentiation, which every other macrostate is downstream of. A closed
/// set with neither inflow nor outflow is not a source (its cells can reach nothing else, so
/// it must absorb). When no macrostate qualifies, the most stable non-source is taken (and
/// the most stable one when all are sources); the second value says so.
///
/// Returns the selected macrostates (in macrostate order), whether the fallback was used,
/// and the scores of every macrostate.
pub fn select_terminal_sinks(
    coarse_t: &DMatrix<f64>,
    mass: &[f64],
    threshold: f64,
    source_ratio: f64,
) -> (Vec<usize>, bool, Vec<FlowScore>) {
    let m = coarse_t.nrows();
    let flows = coarse_net_flows(coarse_t, mass);
    let scores: Vec<FlowScore> = (0..m)
        .map(|q| {
            let (net_inflow, net_outflow) = flows[q];
            FlowScore {
                stability: coarse_t[(q, q)],
                net_inflow,
                net_outflow,
                stable: coarse_t[(q, q)] >= threshold,
                source: net_outflow > 1e-12 && net_inflow <= source_ratio * net_outflow,
            }
        })
        .collect();
    let sel: Vec<usize> = (0..m)
        .filter(|&q| scores[q].stable && !scores[q].source)
        .collect();
    if !sel.is_empty() {
        return (sel, false, scores);
    }
    let most_stable = |pool: &mut dyn Iterator<Item = usize>| {
        pool.max_by(|&a, &b| {
            scores[a]
                .stability
                .total_cmp(&scores[b].stability)
                .then(b.cmp(&a))
        })
    };
    let pick = most_stable(&mut (0..m).filter(|&q| !scores[q].source))
        .or_else(|| most_stable(&mut (0..m)))
        .map_or_else(Vec::new, |q| vec![q]);
    (pick, true, scores)
}

/// Indices of the terminal macrostates (CellRank's order: stability keeps macrostate order;
/// the others order by increasing stability). `eigenvalues_re` are the real parts used by
/// `Eigengap`.
pub fn select_terminal(
    names: &[String],
    coarse_diag: &[f64],
    method: &TerminalMethod,
    eigenvalues_re: &[f64],
) -> Result<Vec<usize>, StatesError> {
    let m = names.len();
    let by_stability = |n_states: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..m).collect();
        idx.sort_by(|&a, &b| coarse_diag[a].total_cmp(&coarse_diag[b]).then(a.cmp(&b)));
        if n_states == 0 || n_states >= m {
            idx
        } else {
            idx[m - n_states..].to_vec()
        }
    };
    match method {
        TerminalMethod::Sinks { .. } => Err(StatesError::Parameter {
            parameter: "method",
            expected: "a rule that needs only the coarse self-transitions (sinks needs the coarse transition matrix: select_terminal_sinks)".into(),
            got: "sinks".into(),
        }),
        TerminalMethod::Stability { threshold } => {
            let sel: Vec<usize> = (0..m).filter(|&q| coarse_diag[q] >= *threshold).collect();
            if sel.is_empty() {
                let max = coarse_diag
                    .iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max);
                let listing = names
                    .iter()
                    .zip(coarse_diag)
                    .map(|(n, d)| format!("{n}: {d:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(StatesError::NoneStable {
                    threshold: *threshold,
                    max,
                    listing,
                });
            }
            Ok(sel)
        }
        TerminalMethod::TopN { n_states } => {
            if *n_states == 0 {
                return Err(StatesError::Parameter {
                    parameter: "n_states",
                    expected: "at least 1 for method top_n".into(),
                    got: n_states.to_string(),
                });
            }
            if *n_states > m {
                return Err(StatesError::TopNTooMany {
                    n_states: *n_states,
                    macrostates: m,
                });
            }
            Ok(by_stability(*n_states))
        }
        TerminalMethod::Eigengap { alpha } => Ok(by_stability(
            crate::gpcca::eigengap(eigenvalues_re, *alpha) + 1,
        )),
        TerminalMethod::EigengapCoarse { alpha } => {
            Ok(by_stability(crate::gpcca::eigengap(coarse_diag, *alpha)))
        }
        TerminalMethod::Names { states } => {
            if states.is_empty() {
                return Err(StatesError::NoStates {
                    what: "terminal state names",
                });
            }
            let mut sel = Vec::with_capacity(states.len());
            for s in states {
                let q =
                    names
                        .iter()
                        .position(|n| n == s)
                        .ok_or_else(|| StatesError::UnknownState {
                            name: s.clone(),
                            macrostates: names.to_vec(),
                        })?;
                if sel.contains(&q) {
                    return Err(StatesError::DuplicateState { name: s.clone() });
                }
                sel.push(q);
            }
            Ok(sel)
        }
    }
}

/// Cell states restricted to a subset of macrostates: the `n_cells` most likely cells of each
/// selected membership column, and CellRank's probability `max_j χ_lj / max_l' χ_l'j`.
/// Membership ties are broken by the chain `t` when given (see [`fuzzy_to_discrete_with`]).
pub fn states_from_memberships(
    chi: &DMatrix<f64>,
    selected: &[usize],
    n_cells: usize,
    t: Option<&TransitionMatrix>,
) -> Result<(Vec<Option<usize>>, Vec<f64>), StatesError> {
    let sub = DMatrix::from_fn(chi.nrows(), selected.len(), |i, j| chi[(i, selected[j])]);
    let assignment = fuzzy_to_discrete_with(&sub, n_cells, t)?;
    Ok((assignment, state_probabilities(&sub)))
}

/// CellRank's state probability of each cell: `max_j χ_lj / max_l' χ_l'j` over the columns
/// of `chi` (the memberships of the states kept).
pub fn state_probabilities(chi: &DMatrix<f64>) -> Vec<f64> {
    let maxes: Vec<f64> = (0..chi.ncols()).map(|j| chi.column(j).max()).collect();
    (0..chi.nrows())
        .map(|l| {
            (0..chi.ncols())
                .map(|j| {
                    if maxes[j] > 0.0 {
                        chi[(l, j)] / maxes[j]
                    } else {
                        0.0
                    }
                })
                .fold(0.0f64, f64::max)
        })
        .collect()
}

/// Initial states without a stationary distribution: the `n_states` strongest sources of the
/// coarse chain ([`coarse_net_flows`]): smallest share of net inflow in the net flow (0 for a
/// pure source), then largest net outflow.
pub fn select_initial_by_flow(
    coarse_t: &DMatrix<f64>,
    mass: &[f64],
    n_states: usize,
) -> Result<Vec<usize>, StatesError> {
    let m = coarse_t.nrows();
    if n_states == 0 || n_states > m {
        return Err(StatesError::Parameter {
            parameter: "n_states",
            expected: format!("1..={m} (the number of macrostates)"),
            got: n_states.to_string(),
        });
    }
    let flows = coarse_net_flows(coarse_t, mass);
    let mut idx: Vec<usize> = (0..m).collect();
    // Share of the net flow that comes in: 0 for a pure source; a closed, isolated state
    // (no net flow) is no source at all.
    let share_in = |q: usize| {
        let (i, o) = flows[q];
        if i + o > 0.0 {
            i / (i + o)
        } else {
            1.0
        }
    };
    idx.sort_by(|&a, &b| {
        share_in(a)
            .total_cmp(&share_in(b))
            .then(flows[b].1.total_cmp(&flows[a].1))
            .then(a.cmp(&b))
    });
    idx.truncate(n_states);
    Ok(idx)
}

/// Initial states: the `n_states` macrostates with the smallest coarse stationary probability.
pub fn select_initial(coarse_stat: &[f64], n_states: usize) -> Result<Vec<usize>, StatesError> {
    if n_states == 0 || n_states > coarse_stat.len() {
        return Err(StatesError::Parameter {
            parameter: "n_states",
            expected: format!("1..={} (the number of macrostates)", coarse_stat.len()),
            got: n_states.to_string(),
        });
    }
    let mut idx: Vec<usize> = (0..coarse_stat.len()).collect();
    idx.sort_by(|&a, &b| coarse_stat[a].total_cmp(&coarse_stat[b]).then(a.cmp(&b)));
    idx.truncate(n_states);
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_by_name() {
        let names: Vec<String> = ["Alpha", "Beta", "Ductal"].map(String::from).to_vec();
        let diag = [0.99, 0.5, 0.97];
        let by = |v: &[&str]| TerminalMethod::Names {
            states: v.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            select_terminal(&names, &diag, &by(&["Ductal", "Beta"]), &[]).unwrap(),
            vec![2, 1]
        );
        let e = select_terminal(&names, &diag, &by(&["Delta"]), &[]).unwrap_err();
        assert!(e.to_string().contains("Alpha, Beta, Ductal"), "{e}");
        assert!(select_terminal(&names, &diag, &by(&["Beta", "Beta"]), &[]).is_err());
        assert!(select_terminal(&names, &diag, &by(&[]), &[]).is_err());
    }

    /// Two branches of 20 cells each, drifting towards their last cell (0.9 forward, 0.1
    /// back, a self-loop at the tip), with a 1e-3 leak between the branch starts; every
    /// cell of a branch has the same membership up to noise far below the tie tolerance.
    fn two_saturated_branches() -> (DMatrix<f64>, TransitionMatrix) {
        use cellfate_kernels::{Csr, Direction};
        let (b, n) = (20usize, 40usize);
        let mut trip = Vec::new();
        for br in 0..2 {
            let o = br * b;
            for i in 0..b {
                let (fwd, back) = if i + 1 < b {
                    (o + i + 1, o + i.max(1) - 1)
                } else {
                    (o + i, o + i - 1)
                };
                if i == 0 {
                    let other = (1 - br) * b;
                    trip.push((o, fwd, 0.9));
                    trip.push((o, o, 0.099));
                    trip.push((o, other, 0.001));
                } else {
                    trip.push((o + i, fwd, 0.9));
                    trip.push((o + i, back, 0.1));
                }
            }
        }
        let t =
            TransitionMatrix::try_new(Csr::from_triplets(n, n, &trip).unwrap(), Direction::Forward)
                .unwrap();
        // Noise decreasing along each branch: CellRank's rule keeps the branch starts.
        let chi = DMatrix::from_fn(n, 2, |i, j| {
            let noise = 1e-7 * (b - i % b) as f64;
            if i / b == j {
                0.9999 + noise
            } else {
                1e-4 - noise
            }
        });
        (chi, t)
    }

    #[test]
    fn saturated_memberships_are_broken_by_where_the_walk_dwells() {
        let (chi, t) = two_saturated_branches();
        let cellrank = fuzzy_to_discrete(&chi, 5).unwrap();
        let cells = |a: &[Option<usize>], j: usize| -> Vec<usize> {
            (0..a.len()).filter(|&l| a[l] == Some(j)).collect()
        };
        // CellRank's rule: the largest memberships, i.e. the noise: the branch starts.
        assert_eq!(cells(&cellrank, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(cells(&cellrank, 1), vec![20, 21, 22, 23, 24]);
        // The quasi-stationary distribution: the tips, where the walk accumulates.
        let ours = fuzzy_to_discrete_with(&chi, 5, Some(&t)).unwrap();
        assert_eq!(cells(&ours, 0), vec![15, 16, 17, 18, 19]);
        assert_eq!(cells(&ours, 1), vec![35, 36, 37, 38, 39]);
        let (assign, probs) = states_from_memberships(&chi, &[1], 5, Some(&t)).unwrap();
        assert_eq!(cells(&assign, 0), vec![35, 36, 37, 38, 39]);
        assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
        // Memberships that do separate the cells keep CellRank's choice, chain or not.
        let crisp = DMatrix::from_fn(40, 2, |i, j| {
            let x = (i % 20) as f64 / 19.0;
            if i / 20 == j {
                0.5 + 0.5 * x
            } else {
                0.5 - 0.5 * x
            }
        });
        assert_eq!(
            fuzzy_to_discrete_with(&crisp, 5, Some(&t)).unwrap(),
            fuzzy_to_discrete(&crisp, 5).unwrap()
        );
        // Through a cache: the same result, one quasi-stationary distribution per band,
        // reused by a second discretisation (the terminal states' after the macrostates').
        let cache = TieBreaks::new();
        for _ in 0..2 {
            assert_eq!(
                fuzzy_to_discrete_cached(&chi, 5, Some(&t), Some(&cache)).unwrap(),
                ours
            );
            assert_eq!(cache.len(), 2);
        }
        // Saturated columns: the band is the cells tied with the maximum, the same for fewer
        // cells per state, and its distribution (iterated for at least `QSD_MIN_TOP` cells)
        // serves them: no new distribution, and the same picks as without the cache.
        for fewer in [4, 3, 1] {
            let cached = fuzzy_to_discrete_cached(&chi, fewer, Some(&t), Some(&cache)).unwrap();
            assert_eq!(cache.len(), 2);
            assert_eq!(
                cached,
                fuzzy_to_discrete_with(&chi, fewer, Some(&t)).unwrap()
            );
            assert_eq!(cells(&cached, 0).len(), fewer);
        }
        // In a bandwidth order (as bands of 65,536 cells and more are): the same
        // distribution to rounding, on a band given in a scrambled order.
        let band: Vec<usize> = (0..40).map(|i| (i * 17) % 40).collect();
        let plain = quasi_stationary_in(&t, &band, 5, false);
        let ordered = quasi_stationary_in(&t, &band, 5, true);
        let worst = plain
            .iter()
            .zip(&ordered)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-13, "{worst:e}");
        // A chain of another size is an error, not a panic.
        let small_chi = DMatrix::from_element(10, 2, 0.5);
        assert!(fuzzy_to_discrete_with(&small_chi, 2, Some(&t)).is_err());
    }

    #[test]
    fn permuted_transpose_is_the_transpose_of_the_permuted_block() {
        let (_, t) = two_saturated_branches();
        let cells: Vec<usize> = (0..40).map(|i| (i * 17) % 40).collect();
        let sub = t.submatrix(&cells, &cells);
        let order: Vec<usize> = (0..40).map(|i| (i * 23 + 5) % 40).collect();
        let (indptr, indices, data) = permuted_transpose(&sub, &order);
        let want = sub.submatrix(&order, &order).transpose();
        assert_eq!(indptr, want.indptr());
        assert_eq!(indices, want.indices());
        let want32: Vec<f32> = want.data().iter().map(|&v| v as f32).collect();
        assert_eq!(data, want32);
    }

    #[test]
    fn discretisation_overlap_and_threshold() {
        // 12 cells, 2 states; cell 5 is in both top-5 lists, goes to the larger membership.
        let vals = [
            0.9, 0.8, 0.7, 0.6, 0.55, 0.52, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0,
        ];
        let chi = DMatrix::from_fn(12, 2, |i, j| if j == 0 { vals[i] } else { 1.0 - vals[i] });
        let a = fuzzy_to_discrete(&chi, 6).unwrap();
        assert_eq!(&a[..6], &[Some(0); 6]);
        assert_eq!(a[6..].iter().filter(|x| **x == Some(1)).count(), 6);
        assert!(fuzzy_to_discrete(&chi, 7).is_err());
    }

    #[test]
    fn naming_with_suffixes_and_colours() {
        let labels: Vec<Option<String>> = ["A", "A", "B", "A", "A", "B"]
            .iter()
            .map(|s| Some((*s).to_string()))
            .collect();
        let cats = vec!["A".to_string(), "B".to_string()];
        let colors = vec!["#1f77b4".to_string(), "#ff7f0e".to_string()];
        let assign = vec![Some(0), Some(0), Some(2), Some(1), Some(1), Some(2)];
        let (names, cols) = name_states(
            &assign,
            3,
            Some(ClusterReference {
                labels: &labels,
                categories: &cats,
                colors: Some(&colors),
            }),
        )
        .unwrap();
        assert_eq!(names, vec!["A_1", "A_2", "B"]);
        assert_eq!(cols[2], "#ff7f0e");
        assert_ne!(cols[0], cols[1]);
        let (n2, c2) = name_states(&assign, 3, None).unwrap();
        assert_eq!(
            (n2, c2[0].as_str()),
            (vec!["0".to_string(), "1".into(), "2".into()], "#1f77b4")
        );
    }

    #[test]
    fn terminal_rules() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_string()).collect();
        let d = [0.97, 0.5, 0.99];
        assert_eq!(
            select_terminal(&names, &d, &TerminalMethod::cellrank(), &[]).unwrap(),
            vec![0, 2]
        );
        assert_eq!(
            select_terminal(&names, &d, &TerminalMethod::TopN { n_states: 1 }, &[]).unwrap(),
            vec![2]
        );
        // More than there are macrostates: an error saying how many there are.
        let e =
            select_terminal(&names, &d, &TerminalMethod::TopN { n_states: 50 }, &[]).unwrap_err();
        assert_eq!(
            e,
            StatesError::TopNTooMany {
                n_states: 50,
                macrostates: 3
            }
        );
        assert!(e.to_string().contains("only 3 macrostates"), "{e}");
        let e = select_terminal(&names, &[0.5, 0.6, 0.7], &TerminalMethod::cellrank(), &[])
            .unwrap_err();
        assert!(
            e.to_string().contains("c: 0.7000") && e.to_string().contains("top_n"),
            "{e}"
        );
        assert_eq!(select_initial(&[0.3, 0.1, 0.6], 1).unwrap(), vec![1]);
    }

    /// A start that is stable but only leaks forward is a source, not terminal; an end that
    /// leaks into another end but receives flow from upstream stays terminal; a pass-through
    /// state below the stability threshold is not terminal.
    #[test]
    fn sinks_rule_on_a_coarse_chain() {
        // 0 start (stable 0.98, leaks to 1 and 3), 1 intermediate (0.8), 2 end A (leaks 1 %
        // into 3), 3 end B (closed).
        let t = DMatrix::from_row_slice(
            4,
            4,
            &[
                0.98, 0.015, 0.0, 0.005, //
                0.0, 0.80, 0.12, 0.08, //
                0.0, 0.0, 0.99, 0.01, //
                0.0, 0.0, 0.0, 1.0,
            ],
        );
        let mass = [0.4, 0.1, 0.2, 0.3];
        let (sel, fallback, scores) = select_terminal_sinks(&t, &mass, 0.96, SOURCE_RATIO);
        assert_eq!(sel, vec![2, 3]);
        assert!(!fallback);
        assert!(scores[0].stable && scores[0].source);
        assert!(!scores[1].stable && !scores[1].source);
        // End A: inflow 0.1 * 0.12 / 0.2 = 0.06 per unit mass, outflow 0.01.
        assert!(
            (scores[2].net_inflow - 0.06).abs() < 1e-12,
            "{:?}",
            scores[2]
        );
        assert!(
            (scores[2].net_outflow - 0.01).abs() < 1e-12,
            "{:?}",
            scores[2]
        );
        // CellRank's rule takes the start too.
        let names: Vec<String> = ["s", "i", "a", "b"].map(String::from).to_vec();
        let diag: Vec<f64> = (0..4).map(|q| t[(q, q)]).collect();
        assert_eq!(
            select_terminal(&names, &diag, &TerminalMethod::cellrank(), &[]).unwrap(),
            vec![0, 2, 3]
        );
        // Negative coarse entries (rounding artefacts) are read as 0; a closed, isolated
        // set is not a source.
        let t2 = DMatrix::from_row_slice(2, 2, &[1.0, -1e-17, 0.0, 1.0]);
        let (sel2, _, sc2) = select_terminal_sinks(&t2, &[0.5, 0.5], 0.96, SOURCE_RATIO);
        assert_eq!(sel2, vec![0, 1]);
        assert!(!sc2[0].source);
        // Nothing stable: the most stable non-source, with the fallback flag.
        let t3 = DMatrix::from_row_slice(2, 2, &[0.5, 0.5, 0.1, 0.9]);
        let (sel3, fb3, _) = select_terminal_sinks(&t3, &[0.5, 0.5], 0.96, SOURCE_RATIO);
        assert_eq!((sel3, fb3), (vec![1], true));
        // The strongest source is the start.
        assert_eq!(select_initial_by_flow(&t, &mass, 1).unwrap(), vec![0]);
    }
}
