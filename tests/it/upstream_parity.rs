//! Upstream parity with scVelo 0.3.4 on the pancreas reference: per-cell normalisation and
//! first moments from the raw counts (with the reference's kNN graph), and the stochastic
//! velocity model on the reference's moments. scVelo computes in float32, we in f64: the
//! tolerances below are relative to float32 precision (measured: Ms 1.6e-7 of max|Ms|,
//! γ 1.9e-7 relative on velocity genes, velocity 6.8e-7 of max|velocity|).

use cellfate::kernels::Csr;
use cellfate::upstream::velocity::{
    fit_velocity, second_moments, smooth_dense, smoothing_graph, VelocityMode,
};

use cellfate::kernels::CellSource;

use crate::common::{reference, require_shared, succeed};

fn column_f64(r: &cellfate::io::H5adReader, slot: &str) -> Vec<f64> {
    r.read(slot)
        .expect(slot)
        .to_f64_vec()
        .unwrap_or_else(|| panic!("{slot}: not numeric"))
}

fn bools(r: &cellfate::io::H5adReader, slot: &str) -> Vec<bool> {
    column_f64(r, slot).into_iter().map(|x| x != 0.0).collect()
}

#[test]
fn moments_and_stochastic_velocity_match_scvelo() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let raw = cellfate::io::H5adReader::open(dir.join("pancreas_3696x2000.h5ad")).expect("raw");
    let raw_genes = raw.var_names().expect("raw genes");
    let genes = r.var_names().expect("genes");
    let idx: Vec<usize> = genes
        .iter()
        .map(|g| raw_genes.iter().position(|x| x == g).expect("gene in raw"))
        .collect();
    let n = r.n_obs().expect("n");
    let g = genes.len();
    let rows: Vec<usize> = (0..n).collect();
    let norm = |slot: &str| -> Csr {
        let m = raw.csr(slot).expect(slot);
        cellfate::upstream::normalize_per_cell(&m).submatrix(&rows, &idx)
    };
    let (sn, un) = (norm("layers/spliced"), norm("layers/unspliced"));
    let w = smoothing_graph(&r.obsp("connectivities").expect("connectivities"));
    let all: Vec<usize> = (0..g).collect();
    let (_, _, ms_ref) = r.dense("layers/Ms").expect("Ms");
    let (_, _, mu_ref) = r.dense("layers/Mu").expect("Mu");
    let max_abs = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (name, m, want) in [("Ms", &sn, &ms_ref), ("Mu", &un, &mu_ref)] {
        let got = smooth_dense(&w, m, &all, &|_, _, x| x);
        let d = got
            .iter()
            .zip(want.iter())
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        let rel = d / max_abs(want);
        eprintln!("{name}: max |Δ| = {d:.3e} ({rel:.2e} of max)");
        assert!(rel <= 1e-6, "{name}: {rel:e}");
    }
    // Stochastic velocity on the reference moments (float32 as scVelo wrote them).
    let hvg = bools(&r, "var/highly_variable");
    let second = |ix: &[usize]| second_moments(&w, &sn, &un, ix);
    let fit = fit_velocity(
        &ms_ref,
        &mu_ref,
        n,
        g,
        Some(&hvg),
        VelocityMode::Stochastic,
        Some(&second),
    );
    assert_eq!(fit.velocity_genes, bools(&r, "var/velocity_genes"));
    let gamma_ref = column_f64(&r, "var/velocity_gamma");
    let (mut worst_v, mut worst_other) = (0.0f64, 0.0f64);
    for ((got, want), is_v) in fit.gamma.iter().zip(&gamma_ref).zip(&fit.velocity_genes) {
        let rel = (got - want).abs() / want.abs().max(1e-12);
        if *is_v {
            worst_v = worst_v.max(rel);
        } else {
            worst_other = worst_other.max(rel);
        }
    }
    eprintln!("gamma: velocity genes {worst_v:.2e}, others (deterministic) {worst_other:.2e}");
    assert!(worst_v <= 1e-6, "γ (velocity genes) relative {worst_v:e}");
    assert!(
        worst_other <= 2e-6,
        "γ (other genes) relative {worst_other:e}"
    );
    let r2_ref = column_f64(&r, "var/velocity_r2");
    let dr2 = fit
        .r2
        .iter()
        .zip(&r2_ref)
        .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(dr2 <= 1e-3, "r² (scVelo sums squares in float32): {dr2:e}");
    let (_, _, v_ref) = r.dense("layers/velocity").expect("velocity");
    let dv = fit
        .velocity
        .iter()
        .zip(&v_ref)
        .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    let rel = dv / max_abs(&v_ref);
    eprintln!("velocity: max |Δ| = {dv:.3e} ({rel:.2e} of max)");
    assert!(rel <= 2e-6, "velocity {rel:e}");
}

/// Diffusion pseudotime against scanpy's on both references (same connectivities, same root
/// cell as recorded in `uns["cellrank_run"]`). scanpy keeps the eigenvectors in float32 and
/// we use f64: per-cell |Δ| ≤ 1e-5 (measured 1.9e-7 on dentate gyrus, 6.5e-7 on pancreas);
/// the root chosen from the root cluster (`--root-cluster Ductal`) is the reference's.
#[test]
fn dpt_matches_scanpy() {
    for name in ["dentategyrus_200", "pancreas_3696"] {
        let Some(r) = reference(name) else {
            return;
        };
        let run: serde_json::Value = match r.read("uns/cellrank_run").expect("run") {
            cellfate::io::Element::Str(s) => serde_json::from_str(&s).expect("json"),
            other => panic!("cellrank_run: {}", other.encoding()),
        };
        let root = run["notes"]["root_cell_index"].as_u64().expect("root") as usize;
        let want = column_f64(&r, "obs/dpt_pseudotime");
        let dm = cellfate::upstream::dpt::diffmap(&r.obsp("connectivities").expect("conn"), 15)
            .expect("diffmap");
        let got = cellfate::upstream::dpt::dpt_pseudotime(&dm, root, 10);
        let worst = got
            .iter()
            .zip(&want)
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        eprintln!("{name}: DPT max |Δ| = {worst:.2e} (root {root})");
        assert!(worst <= 1e-5, "{name}: {worst:e}");
        if let Some(cluster) = run["args"]["root_cluster"].as_str() {
            let labels = r.obs_labels("clusters").expect("clusters");
            assert_eq!(
                cellfate::upstream::dpt::root_in_cluster(&dm, &labels, cluster),
                Some(root),
                "{name}: root of cluster {cluster}"
            );
        }
        if r.exists("uns/diffmap_evals") {
            let ev = column_f64(&r, "uns/diffmap_evals");
            let d = dm
                .evals
                .iter()
                .zip(&ev)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            eprintln!("{name}: diffmap eigenvalues max |Δ| = {d:.2e}");
            assert!(d <= 1e-6, "{name}: eigenvalues {d:e}");
        }
    }
}

/// `cellfate pseudotime --root-cluster` and `cellfate velocity --mode` on the references.
#[test]
fn pseudotime_and_velocity_commands() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let Some(dg) = reference("dentategyrus_200") else {
        return;
    };
    let d = crate::common::tempdir();
    let out = d.path().join("pt.h5ad");
    succeed(
        crate::common::cellfate()
            .arg("pseudotime")
            .arg(r.path())
            .arg("-o")
            .arg(&out)
            .args(["--root-cluster", "Ductal"]),
    );
    let o = cellfate::io::H5adReader::open(&out).expect("output");
    let got = column_f64(&o, "obs/dpt_pseudotime");
    let want = column_f64(&r, "obs/dpt_pseudotime");
    let worst = got
        .iter()
        .zip(&want)
        .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(worst <= 1e-5, "{worst:e}");
    assert!(o.exists("obsm/X_diffmap") && o.exists("uns/diffmap_evals"));
    // Deterministic velocity needs only the moments; stochastic names what is missing.
    let v = d.path().join("v.h5ad");
    succeed(
        crate::common::cellfate()
            .arg("velocity")
            .arg(dg.path())
            .arg("-o")
            .arg(&v)
            .args(["--mode", "deterministic"]),
    );
    let o = cellfate::io::H5adReader::open(&v).expect("output");
    assert!(o.exists("layers/velocity") && o.exists("var/velocity_gamma"));
    let res = crate::common::cellfate()
        .arg("velocity")
        .arg(dg.path())
        .arg("-o")
        .arg(d.path().join("w.h5ad"))
        .output()
        .expect("runs");
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("layers/spliced is missing"), "{err}");
}

/// The approximate neighbour search (NN-descent, used above 50,000 cells) on real data: the
/// pancreas reference's first 30 principal components, 29 neighbours, recall against the exact
/// search on every 7th cell ≥ 0.95 (measured below), and identical at 1 and 2 threads.
#[test]
fn approximate_knn_recall_on_pancreas() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let (n, c, v) = r.dense("obsm/X_pca").expect("pca");
    let x = nalgebra::DMatrix::from_fn(n, 30, |i, j| v[i * c + j]);
    let k = 29;
    let exact = cellfate::upstream::knn_exact(&x, k);
    let approx = cellfate::upstream::ann::knn_descent(&x, k, 0, 30);
    let (mut hit, mut total) = (0, 0);
    for i in (0..n).step_by(7) {
        total += k;
        hit += exact[i]
            .iter()
            .filter(|p| approx[i].iter().any(|q| q.0 == p.0))
            .count();
    }
    let recall = hit as f64 / total as f64;
    eprintln!("NN-descent recall on pancreas: {recall:.4}");
    assert!(recall >= 0.95, "recall {recall}");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool")
        .install(|| cellfate::upstream::ann::knn_descent(&x, k, 0, 30));
    assert_eq!(one, approx, "depends on the thread count");
}
