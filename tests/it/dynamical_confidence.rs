//! scVelo 0.3.4's velocity graph, velocity confidence and latent time on the pancreas
//! reference (`../shared/reference/pancreas_3696/dynamical.h5ad`, made by
//! `recipe/make_dynamical.py` from `reference.h5ad`'s `Ms`, `Mu`, `connectivities`,
//! `distances`), starting from scVelo's own `layers["velocity"]` and `fit_t` (float32 as
//! stored; scVelo computed the graph and the confidences in float32, we compute in f64).
//!
//! Tolerances (absolute) and what they cover:
//! - `velocity_self_transition` (the graph's row maxima through P98): 1e-5 — float32 cosines;
//! - `velocity_confidence`: 1e-6 — float32 velocity, mean of 29 cosines;
//! - `velocity_length`: our unrounded norm within 0.005 + 1e-5 of scVelo's value rounded to 2
//!   decimals (float32 norms), and our rounded value within 0.01 of it (a rounding boundary);
//! - `velocity_confidence_transition`: 1e-4 — the transition matrix exp(10·cos) amplifies
//!   the float32 cosine error;
//! - `root_cells`/`end_points`: the same cells above 1 − 1e-3 (scVelo found no backward
//!   eigenvalue ≥ 1 − 1e-3 here: the top one is 0.99883, so every root score is 0), scores
//!   within 1e-3;
//! - `latent_time` from scVelo's `fit_t` and `fit_likelihood`: Spearman ≥ 0.99 (and max abs
//!   difference ≤ 0.01) with scVelo's.
//!
//! The measured figures are printed (`cargo test --test it -- dynamical_confidence
//! --nocapture`).

use std::time::Instant;

use cellfate::dynamics::{
    knn_weights, latent_time, terminal_states, transition_matrix, velocity_confidence,
    velocity_confidence_transition, velocity_gene_columns, velocity_graph, velocity_norms,
    LatentTimeInput, LatentTimeOptions, Neighbors, RootPrior, RowMajor, TerminalStatesOptions,
    TransitionOptions, VelocityGraphOptions,
};
use cellfate::io::H5adReader;

use crate::common::require_shared;

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Average ranks (ties share their mean rank).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

struct Pancreas {
    n: usize,
    g: usize,
    ms: Vec<f64>,
    velocity: Vec<f64>,
    velocity_genes: Vec<bool>,
    distances: cellfate::kernels::Csr,
    connectivities: cellfate::kernels::Csr,
    fit_t: Vec<f64>,
    likelihood: Vec<f64>,
    obs: H5adReader,
}

fn load() -> Option<Pancreas> {
    let dir = require_shared("reference/pancreas_3696")?;
    let r = H5adReader::open(dir.join("reference.h5ad")).expect("reference.h5ad");
    let d = H5adReader::open(dir.join("dynamical.h5ad")).expect("dynamical.h5ad");
    let (n, g, ms) = r.dense("layers/Ms").expect("Ms");
    let (n2, g2, velocity) = d.dense("layers/velocity").expect("velocity");
    assert_eq!((n, g), (n2, g2));
    let (_, _, fit_t) = d.dense("layers/fit_t").expect("fit_t");
    let velocity_genes = d
        .read("var/velocity_genes")
        .expect("velocity_genes")
        .to_f64_vec()
        .expect("bool column")
        .into_iter()
        .map(|x| x != 0.0)
        .collect();
    let likelihood = d
        .column("var", "fit_likelihood")
        .expect("fit_likelihood")
        .to_f64_vec()
        .expect("numeric");
    Some(Pancreas {
        n,
        g,
        ms,
        velocity,
        velocity_genes,
        distances: r.obsp("distances").expect("distances"),
        connectivities: r.obsp("connectivities").expect("connectivities"),
        fit_t,
        likelihood,
        obs: d,
    })
}

#[test]
fn velocity_graph_and_confidences_match_scvelo() {
    let Some(p) = load() else {
        return;
    };
    let x = RowMajor::new("Ms", &p.ms, p.n, p.g).expect("Ms");
    let v = RowMajor::new("velocity", &p.velocity, p.n, p.g).expect("velocity");
    let genes = velocity_gene_columns(v, Some(&p.velocity_genes)).expect("genes");
    assert_eq!(genes.len(), 547, "velocity genes without NaN");
    let nb = Neighbors::from_distances(&p.distances, None).expect("neighbours");
    assert_eq!(nb.k(), 29);

    let clock = Instant::now();
    let vg = velocity_graph(x, v, &genes, &nb, &VelocityGraphOptions::default()).expect("graph");
    let t_graph = clock.elapsed().as_secs_f64();
    let want_self = p.obs.obs_f64("velocity_self_transition").expect("self");
    let e_self = max_abs_diff(&vg.self_transition, &want_self);

    let clock = Instant::now();
    let norms = velocity_norms(v, &genes).expect("norms");
    let conf = velocity_confidence(v, &genes, &nb).expect("confidence");
    let t_conf = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let t = transition_matrix(
        &vg.graph,
        Some(&vg.graph_neg),
        &TransitionOptions::default(),
    )
    .expect("T");
    let conf_t = velocity_confidence_transition(x, v, &genes, &t).expect("transition conf");
    let t_trans = clock.elapsed().as_secs_f64();

    let want_conf = p.obs.obs_f64("velocity_confidence").expect("confidence");
    let want_len = p.obs.obs_f64("velocity_length").expect("length");
    let want_ct = p
        .obs
        .obs_f64("velocity_confidence_transition")
        .expect("transition confidence");
    let e_conf = max_abs_diff(&conf, &want_conf);
    let e_len = max_abs_diff(&norms, &want_len);
    let rounded: Vec<f64> = norms
        .iter()
        .map(|&x| cellfate::dynamics::confidence::round2(x))
        .collect();
    let e_len_rounded = max_abs_diff(&rounded, &want_len);
    let n_len_mismatch = rounded
        .iter()
        .zip(&want_len)
        .filter(|(a, b)| (*a - *b).abs() > 1e-9)
        .count();
    let e_ct = max_abs_diff(&conf_t, &want_ct);
    eprintln!(
        "pancreas velocity graph: {} + {} entries, {t_graph:.3} s; self-transition max error {e_self:.2e}",
        vg.graph.nnz(),
        vg.graph_neg.nnz()
    );
    eprintln!(
        "velocity_confidence max error {e_conf:.2e}; velocity_length max error {e_len:.2e} \
         unrounded, {e_len_rounded:.2e} rounded ({n_len_mismatch} cells differ after rounding); \
         {t_conf:.3} s"
    );
    eprintln!(
        "velocity_confidence_transition max error {e_ct:.2e} (transition matrix + score {t_trans:.3} s)"
    );
    assert!(e_self <= 1e-5, "self-transition error {e_self}");
    assert!(e_conf <= 1e-6, "confidence error {e_conf}");
    assert!(e_len <= 0.005 + 1e-5, "length error {e_len}");
    assert!(
        e_len_rounded <= 0.01 + 1e-9,
        "rounded length error {e_len_rounded}"
    );
    assert!(e_ct <= 1e-4, "transition confidence error {e_ct}");
}

#[test]
fn terminal_states_and_latent_time_match_scvelo() {
    let Some(p) = load() else {
        return;
    };
    let x = RowMajor::new("Ms", &p.ms, p.n, p.g).expect("Ms");
    let v = RowMajor::new("velocity", &p.velocity, p.n, p.g).expect("velocity");
    let genes = velocity_gene_columns(v, Some(&p.velocity_genes)).expect("genes");
    let nb = Neighbors::from_distances(&p.distances, None).expect("neighbours");
    let vg = velocity_graph(x, v, &genes, &nb, &VelocityGraphOptions::default()).expect("graph");

    let clock = Instant::now();
    let wd = knn_weights(&p.distances);
    let ts = terminal_states(
        &vg.graph,
        Some(&vg.graph_neg),
        &wd,
        &TerminalStatesOptions::default(),
    )
    .expect("terminal states");
    let t_ts = clock.elapsed().as_secs_f64();
    let want_roots = p.obs.obs_f64("root_cells").expect("root_cells");
    let want_ends = p.obs.obs_f64("end_points").expect("end_points");
    let above = |s: &[f64]| -> Vec<usize> { (0..s.len()).filter(|&i| s[i] > 1.0 - 1e-3).collect() };
    let e_roots = max_abs_diff(&ts.root_cells, &want_roots);
    let e_ends = max_abs_diff(&ts.end_points, &want_ends);
    eprintln!(
        "terminal states {t_ts:.3} s: backward eigenvalues {:?}, forward {:?}",
        &ts.root_eigenvalues[..3],
        &ts.end_eigenvalues[..3]
    );
    eprintln!(
        "root regions {} (scVelo: none), end regions {}; root cells above 1 - 1e-3: {} vs {}; \
         end points: {} vs {}; max error roots {e_roots:.2e}, ends {e_ends:.2e}",
        ts.n_root_regions,
        ts.n_end_regions,
        above(&ts.root_cells).len(),
        above(&want_roots).len(),
        above(&ts.end_points).len(),
        above(&want_ends).len()
    );
    assert_eq!(above(&ts.root_cells), above(&want_roots));
    assert_eq!(above(&ts.end_points), above(&want_ends));
    assert!(e_roots <= 1e-3 && e_ends <= 1e-3, "{e_roots} {e_ends}");

    let w = knn_weights(&p.connectivities);
    let clock = Instant::now();
    let lt = latent_time(
        &LatentTimeInput {
            fit_t: RowMajor::new("fit_t", &p.fit_t, p.n, p.g).expect("fit_t"),
            likelihood: &p.likelihood,
            connectivities: &w,
            roots: RootPrior::Scores(&ts.root_cells),
            ends: None,
            velocity_pseudotime: None,
        },
        &LatentTimeOptions::default(),
    )
    .expect("latent time");
    let t_lt = clock.elapsed().as_secs_f64();
    let want = p.obs.obs_f64("latent_time").expect("latent_time");
    let rho = spearman(&lt.latent_time, &want);
    let e_lt = max_abs_diff(&lt.latent_time, &want);
    eprintln!(
        "latent_time {t_lt:.3} s: {} genes, roots {:?} (detected: {}), {} low-confidence cells; \
         Spearman {rho:.7} with scVelo, max abs difference {e_lt:.2e}",
        lt.n_genes, lt.roots, lt.roots_detected, lt.n_low_confidence
    );
    assert_eq!(lt.n_genes, 1109);
    assert!(rho >= 0.99, "Spearman {rho}");
    assert!(e_lt <= 0.01, "max abs difference {e_lt}");
}
