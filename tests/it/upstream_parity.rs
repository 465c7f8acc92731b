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
            .fold(0.0f64, |a, (x, y)| a.max((f64::from(*x) - y).abs()));
        let rel = d / max_abs(want);
        eprintln!("{name}: max |Δ| = {d:.3e} ({rel:.2e} of max)");
        assert!(rel <= 1e-6, "{name}: {rel:e}");
    }
    // Stochastic velocity on the reference moments (float32 as scVelo wrote them).
    let hvg = bools(&r, "var/highly_variable");
    let second = |ix: &[usize]| second_moments(&w, &sn, &un, ix);
    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let fit = fit_velocity(
        &to32(&ms_ref),
        &to32(&mu_ref),
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
        .fold(0.0f64, |a, (x, y)| a.max((f64::from(*x) - y).abs()));
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

/// Largest |a − b| over the reference's columns, relative to max |b| (dense row-major;
/// `pos[k]` is the column of reference gene `k` in ours).
fn rel_cols(ours: &[f64], g: usize, reference: &[f64], pos: &[usize]) -> f64 {
    let gr = pos.len();
    let (mut d, mut m) = (0.0f64, 0.0f64);
    for (i, row) in reference.chunks(gr).enumerate() {
        for (k, &y) in row.iter().enumerate() {
            d = d.max((ours[i * g + pos[k]] - y).abs());
            m = m.max(y.abs());
        }
    }
    d / m.max(f64::MIN_POSITIVE)
}

/// Same as [`rel_cols`] for two sparse matrices (all entries of the reference's columns).
fn rel_sparse(ours: &Csr, reference: &Csr, pos: &[usize]) -> f64 {
    // Dense n × pos.len() copy of the columns `cols[k]` of `m`.
    let dense = |m: &Csr, cols: &[usize]| -> Vec<f64> {
        let w = cols.len();
        let mut back = vec![usize::MAX; m.ncols()];
        for (k, &j) in cols.iter().enumerate() {
            back[j] = k;
        }
        let mut out = vec![0.0; m.nrows() * w];
        for i in 0..m.nrows() {
            let (c, v) = m.row(i);
            for (&j, &x) in c.iter().zip(v) {
                if back[j as usize] != usize::MAX {
                    out[i * w + back[j as usize]] = x;
                }
            }
        }
        out
    };
    let identity: Vec<usize> = (0..pos.len()).collect();
    rel_cols(
        &dense(ours, pos),
        pos.len(),
        &dense(reference, &identity),
        &identity,
    )
}

/// The whole preprocessing (`cellfate preprocess`) against the reference recipe (scVelo's
/// filter_and_normalize, scanpy's log1p, seurat HVGs, ARPACK PCA, neighbours, scVelo's moments
/// and stochastic velocity) run in float64 by `tests/py/upstream_f64.py` on two raw datasets:
/// pancreas (3,696 cells, 1,000 of 1,126 genes kept) and scVelo's dentate-gyrus test subset
/// (100 cells, 200 HVGs). Tolerances are the issue's; measured in brackets:
/// normalised X/spliced/unspliced ≤ 1e-12 of max (1.8e-16), HVG set identical, PCA subspace
/// sin θ ≤ 1e-6 (6e-8: the floor of the measure), kNN sets identical for every cell,
/// distances ≤ 1e-10 (1.7e-14), connectivities ≤ 1e-6 (1.2e-7: UMAP's float32), Ms/Mu ≤ 1e-6
/// of max (1.1e-7: scVelo stores them in float32), velocity genes identical, γ ≤ 1e-6 relative
/// (1.6e-7), velocity ≤ 1e-5 of max (5.8e-7).
#[test]
fn preprocessing_matches_scanpy_and_scvelo_in_float64() {
    let Some(pancreas) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let Some(subsets) = require_shared("data/scvelo_test_subsets") else {
        return;
    };
    let Some(py) = crate::common::cellrank_python() else {
        return;
    };
    let d = crate::common::tempdir();
    let cases = [
        ("pancreas", pancreas.join("pancreas_3696x2000.h5ad"), 1000),
        (
            "dentategyrus",
            subsets.join("dentategyrus_100obs.h5ad"),
            200,
        ),
    ];
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/upstream_f64.py");
    let mut python = std::process::Command::new(&py);
    python.arg("-W").arg("ignore").arg(&script);
    for (name, raw, n_top) in &cases {
        python
            .arg(raw)
            .arg(d.path().join(format!("{name}-ref.h5ad")))
            .arg(n_top.to_string());
    }
    succeed(&mut python);
    for (name, raw, n_top) in &cases {
        let ours_path = d.path().join(format!("{name}-ours.h5ad"));
        succeed(
            crate::common::cellfate()
                .arg("preprocess")
                .arg(raw)
                .args([
                    "-q",
                    "--dtype",
                    "float64",
                    "--n-top-genes",
                    &n_top.to_string(),
                    "-o",
                ])
                .arg(&ours_path),
        );
        let o = cellfate::io::H5adReader::open(&ours_path).expect("ours");
        let r = cellfate::io::H5adReader::open(d.path().join(format!("{name}-ref.h5ad")))
            .expect("reference");
        // Highly variable genes: the same set.
        let genes = o.var_names().expect("genes");
        let hvg = bools(&o, "var/highly_variable");
        let ref_genes = r.var_names().expect("ref genes");
        let mut ours_hvg: Vec<&String> = genes
            .iter()
            .zip(&hvg)
            .filter(|x| *x.1)
            .map(|x| x.0)
            .collect();
        let mut theirs: Vec<&String> = ref_genes.iter().collect();
        ours_hvg.sort();
        theirs.sort();
        assert_eq!(ours_hvg, theirs, "{name}: highly variable genes");
        let pos: Vec<usize> = ref_genes
            .iter()
            .map(|x| genes.iter().position(|y| y == x).expect("gene"))
            .collect();
        // Normalised layers.
        for slot in ["X", "layers/spliced", "layers/unspliced"] {
            let rel = rel_sparse(&o.csr(slot).expect(slot), &r.csr(slot).expect(slot), &pos);
            eprintln!("{name}: {slot} {rel:.1e}");
            assert!(rel <= 1e-12, "{name}: {slot} {rel:e}");
        }
        // PCA subspace (30 components).
        let (n, k1, a) = o.dense("obsm/X_pca").expect("pca");
        let (_, k2, b) = r.dense("obsm/X_pca").expect("ref pca");
        let sin = crate::common::subspace_sin(n, 30, (&a, k1), (&b, k2));
        eprintln!("{name}: PCA sin θ {sin:.1e}");
        assert!(sin <= 1e-6, "{name}: PCA subspace sin θ {sin:e}");
        // kNN sets and distances.
        let (dist, dist_ref) = (
            o.obsp("distances").expect("d"),
            r.obsp("distances").expect("d"),
        );
        for i in 0..n {
            let (mut x, mut y) = (dist.row(i).0.to_vec(), dist_ref.row(i).0.to_vec());
            x.sort_unstable();
            y.sort_unstable();
            assert_eq!(x, y, "{name}: neighbours of cell {i}");
        }
        let all: Vec<usize> = (0..n).collect();
        let rel = rel_sparse(&dist, &dist_ref, &all);
        assert!(rel <= 1e-10, "{name}: distances {rel:e}");
        let conn = rel_sparse(
            &o.obsp("connectivities").expect("c"),
            &r.obsp("connectivities").expect("c"),
            &all,
        );
        eprintln!("{name}: connectivities {conn:.1e}");
        assert!(conn <= 1e-6, "{name}: connectivities {conn:e}");
        // Moments and velocity.
        let g = genes.len();
        for (slot, tol) in [
            ("layers/Ms", 1e-6),
            ("layers/Mu", 1e-6),
            ("layers/velocity", 1e-5),
        ] {
            let rel = rel_cols(
                &o.dense(slot).expect(slot).2,
                g,
                &r.dense(slot).expect(slot).2,
                &pos,
            );
            eprintln!("{name}: {slot} {rel:.1e}");
            assert!(rel <= tol, "{name}: {slot} {rel:e}");
        }
        let (vg, vg_ref) = (
            bools(&o, "var/velocity_genes"),
            bools(&r, "var/velocity_genes"),
        );
        assert!(
            pos.iter().zip(&vg_ref).all(|(&j, &b)| vg[j] == b),
            "{name}: velocity genes differ"
        );
        let (gamma, gamma_ref) = (
            column_f64(&o, "var/velocity_gamma"),
            column_f64(&r, "var/velocity_gamma"),
        );
        let worst = pos
            .iter()
            .zip(&gamma_ref)
            .zip(&vg_ref)
            .filter(|x| *x.1)
            .map(|((&j, &y), _)| (gamma[j] - y).abs() / y.abs())
            .fold(0.0f64, f64::max);
        eprintln!("{name}: γ {worst:.1e}");
        assert!(worst <= 1e-6, "{name}: γ relative {worst:e}");
    }
}

/// Sorted column indices of row `i`.
fn row_set(m: &Csr, i: usize) -> Vec<u32> {
    let mut v = m.row(i).0.to_vec();
    v.sort_unstable();
    v
}

/// The default recipe (`cellfate preprocess RAW -o OUT`, no options) on the raw pancreas
/// counts against scVelo 0.3.4's recipe on the same file: the stored reference, made by
/// `reference/recipe/run_cellrank.py` (filter_and_normalize(min_shared_counts=20), log1p,
/// seurat HVGs (n_top_genes=2000 ≥ the 1,126 genes kept, so all of them), PCA, neighbours
/// (n_pcs=30, n_neighbors=30), moments, stochastic velocity). Stage by stage, tolerances
/// first, measured in brackets:
/// - sizes: `obs["initial_size_spliced"/"_unspliced"/""]` equal (integer sums over every gene
///   before the filter), `n_counts` ≤ 1e-6 of max (2.3e-7: scVelo sums in float32);
/// - genes: the reference's genes are exactly our highly variable genes; velocity genes equal;
/// - PCA, 30 components: subspace sin θ ≤ 1e-4 (2.4e-5: float32 ARPACK against f64);
/// - kNN: sets equal except at near-ties: wherever they differ, the swapped neighbours lie
///   within 1e-5 relative of our k-th neighbour distance (2 of 3,696 cells, gaps 1.3e-6 and
///   1.2e-6, while the reference's float32 scores are ~2e-5 of max from the f64 ones);
/// - `Ms`/`Mu` on the 3,690 cells whose smoothing-graph row is the reference's: ≤ 1e-6 of
///   max (1.6e-7 / 2.6e-7); velocity there ≤ 1e-3 of max (4.9e-4: γ carries the two swaps
///   to every cell); over all cells the swaps move velocity by 2.4e-2 of max (bounded here by
///   5e-2);
/// - γ on the velocity genes against the reference: max ≤ 1e-3, median ≤ 1e-5 (6.7e-4,
///   1.9e-6) — the 1e-4 asked for does not hold against this file because of the two swaps.
///   Which neighbour wins such a near-tie depends on the float32 rounding of scanpy's ARPACK
///   PCA: scVelo rerun on this machine (`scripts/scvelo_recipe_stages.py`) picked our
///   neighbours for both cells in an earlier session (γ within 2e-7 of ours), while a fresh venv of
///   session 27 (numpy 2.3.5, scipy 1.16.3, scikit-learn 1.9.1, scanpy 1.12.4) reproduces the
///   stored reference to the bit. An f64 PCA cannot follow either;
/// - γ with the reference's graph (our normalised layers from the output, the reference's
///   connectivities): ≤ 1e-4 relative on the velocity genes (2.0e-7), velocity ≤ 1e-5 of max
///   (1.5e-6, the normalised layers in float32 as scVelo's), i.e. every other stage of the
///   default recipe matches scVelo's.
///
/// Over all 1,126 genes (velocity genes or not) γ differs from the reference by up to 1.4e-2
/// and velocity by 2.4e-2 of max (issue 17's figures); scVelo's rerun differs from the
/// reference by the same amounts, since both come from the two swapped neighbourhoods.
#[test]
fn default_preprocess_on_raw_pancreas_matches_scvelo() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let d = crate::common::tempdir();
    let out = d.path().join("pp.h5ad");
    succeed(
        crate::common::cellfate()
            .arg("preprocess")
            .arg(dir.join("pancreas_3696x2000.h5ad"))
            .arg("-q")
            .arg("-o")
            .arg(&out),
    );
    let o = cellfate::io::H5adReader::open(&out).expect("output");
    let n = r.n_obs().expect("n");
    let rel_max = |a: &[f64], b: &[f64]| {
        let d = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        d / b.iter().fold(0.0f64, |m, y| m.max(y.abs()))
    };

    // Sizes (scVelo records them before the gene filter).
    for key in [
        "initial_size_spliced",
        "initial_size_unspliced",
        "initial_size",
    ] {
        let slot = format!("obs/{key}");
        assert_eq!(column_f64(&o, &slot), column_f64(&r, &slot), "{key}");
    }
    let nc = rel_max(
        &column_f64(&o, "obs/n_counts"),
        &column_f64(&r, "obs/n_counts"),
    );
    eprintln!("n_counts: {nc:.1e} of max");
    assert!(nc <= 1e-6, "n_counts {nc:e}");

    // Genes: the reference kept its 1,126 HVGs.
    let genes = o.var_names().expect("genes");
    let ref_genes = r.var_names().expect("reference genes");
    let hvg = bools(&o, "var/highly_variable");
    let mut ours: Vec<&String> = genes
        .iter()
        .zip(&hvg)
        .filter(|x| *x.1)
        .map(|x| x.0)
        .collect();
    let mut theirs: Vec<&String> = ref_genes.iter().collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "highly variable genes");
    let pos: Vec<usize> = ref_genes
        .iter()
        .map(|x| genes.iter().position(|y| y == x).expect("gene"))
        .collect();
    let vg = bools(&o, "var/velocity_genes");
    let vg_ref = bools(&r, "var/velocity_genes");
    assert!(
        pos.iter().zip(&vg_ref).all(|(&j, &b)| vg[j] == b),
        "velocity genes differ"
    );

    // PCA subspace.
    let (_, k1, a) = o.dense("obsm/X_pca").expect("pca");
    let (_, k2, b) = r.dense("obsm/X_pca").expect("reference pca");
    let sin = crate::common::subspace_sin(n, 30, (&a, k1), (&b, k2));
    eprintln!("PCA (30 components): sin θ {sin:.1e}");
    assert!(sin <= 1e-4, "PCA subspace sin θ {sin:e}");

    // kNN sets: differences only at near-ties of the k-th neighbour.
    let (dist, dist_ref) = (
        o.obsp("distances").expect("distances"),
        r.obsp("distances").expect("reference distances"),
    );
    let score = |i: usize, j: usize| -> f64 {
        (0..30)
            .map(|c| (a[i * k1 + c] - a[j * k1 + c]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut swapped = 0;
    for i in 0..n {
        let (x, y) = (row_set(&dist, i), row_set(&dist_ref, i));
        if x == y {
            continue;
        }
        swapped += 1;
        let kth = dist.row(i).1.iter().fold(0.0f64, |m, &v| m.max(v));
        for &j in x
            .iter()
            .filter(|j| !y.contains(j))
            .chain(y.iter().filter(|j| !x.contains(j)))
        {
            let gap = (score(i, j as usize) - kth).abs() / kth;
            eprintln!("kNN of cell {i}: neighbour {j} swapped, {gap:.1e} from the k-th distance");
            assert!(
                gap <= 1e-5,
                "cell {i}: neighbour {j} is not a near-tie ({gap:e})"
            );
        }
    }
    eprintln!("kNN sets: {swapped} of {n} cells differ (near-ties)");

    // Moments and velocity on the cells whose smoothing row is the reference's.
    let (conn, conn_ref) = (
        o.obsp("connectivities").expect("connectivities"),
        r.obsp("connectivities").expect("reference connectivities"),
    );
    let same: Vec<bool> = (0..n)
        .map(|i| row_set(&conn, i) == row_set(&conn_ref, i))
        .collect();
    let g = genes.len();
    let gr = ref_genes.len();
    for (slot, tol) in [
        ("layers/Ms", 1e-6),
        ("layers/Mu", 1e-6),
        ("layers/velocity", 1e-3),
    ] {
        let ours = o.dense(slot).expect(slot).2;
        let theirs = r.dense(slot).expect(slot).2;
        let (mut d_same, mut d_all, mut m) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            for (k, &j) in pos.iter().enumerate() {
                let (x, y) = (ours[i * g + j], theirs[i * gr + k]);
                d_all = d_all.max((x - y).abs());
                if same[i] {
                    d_same = d_same.max((x - y).abs());
                }
                m = m.max(y.abs());
            }
        }
        let (rs, ra) = (d_same / m, d_all / m);
        eprintln!(
            "{slot}: {rs:.1e} of max on {} cells with the reference's graph rows, {ra:.1e} on all",
            same.iter().filter(|&&b| b).count()
        );
        assert!(rs <= tol, "{slot}: {rs:e}");
        assert!(ra <= 5e-2, "{slot} (all cells): {ra:e}");
    }

    // γ against the reference.
    let gamma = column_f64(&o, "var/velocity_gamma");
    let gamma_ref = column_f64(&r, "var/velocity_gamma");
    let rel_gamma = |got: &dyn Fn(usize) -> f64| -> (f64, f64) {
        let mut v: Vec<f64> = (0..gr)
            .filter(|&k| vg_ref[k])
            .map(|k| (got(k) - gamma_ref[k]).abs() / gamma_ref[k].abs())
            .collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() - 1], v[v.len() / 2])
    };
    let (worst, median) = rel_gamma(&|k| gamma[pos[k]]);
    eprintln!("γ (velocity genes) vs the reference: max {worst:.1e}, median {median:.1e}");
    assert!(worst <= 1e-3, "γ max relative {worst:e}");
    assert!(median <= 1e-5, "γ median relative {median:e}");

    // γ with the reference's graph: our normalised layers, its connectivities.
    let rows: Vec<usize> = (0..n).collect();
    let sn = o
        .csr("layers/spliced")
        .expect("spliced")
        .submatrix(&rows, &pos);
    let un = o
        .csr("layers/unspliced")
        .expect("unspliced")
        .submatrix(&rows, &pos);
    let w = smoothing_graph(&conn_ref);
    let all: Vec<usize> = (0..gr).collect();
    let ms = smooth_dense(&w, &sn, &all, &|_, _, x| x);
    let mu = smooth_dense(&w, &un, &all, &|_, _, x| x);
    let second = |ix: &[usize]| second_moments(&w, &sn, &un, ix);
    let hvg_ref = bools(&r, "var/highly_variable");
    let fit = fit_velocity(
        &ms,
        &mu,
        n,
        gr,
        Some(&hvg_ref),
        VelocityMode::Stochastic,
        Some(&second),
    );
    assert_eq!(fit.velocity_genes, vg_ref);
    let (worst, median) = rel_gamma(&|k| fit.gamma[k]);
    eprintln!(
        "γ (velocity genes) with the reference's graph: max {worst:.1e}, median {median:.1e}"
    );
    assert!(worst <= 1e-4, "γ with the reference's graph: {worst:e}");
    let v_ref = r.dense("layers/velocity").expect("velocity").2;
    let v: Vec<f64> = fit.velocity.iter().map(|&x| f64::from(x)).collect();
    let dv = rel_max(&v, &v_ref);
    eprintln!("velocity with the reference's graph: {dv:.1e} of max");
    assert!(dv <= 1e-5, "velocity with the reference's graph: {dv:e}");
}

/// `cellfate run` on raw pancreas stores every slot it shares with CellRank 2.3.3's reference
/// file (scanpy 1.12 / scVelo 0.3.4's recipe, then CellRank) in the reference's dtype: float32
/// `X_pca`, connectivities, normalised layers, moments, velocity, scVelo's per-cell sizes and
/// γ; float64 distances, transition matrices, fate probabilities, `velocity_r2`.
#[test]
fn run_on_raw_pancreas_stores_the_references_dtypes() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let d = crate::common::tempdir();
    let out = d.path().join("run.h5ad");
    succeed(
        crate::common::cellfate()
            .arg("run")
            .arg(dir.join("pancreas_3696x2000.h5ad"))
            .args(["-q", "--cluster-key", "clusters", "-o"])
            .arg(&out),
    );
    let o = cellfate::io::H5adReader::open(&out).expect("output");
    let mut compared = Vec::new();
    let mut slots = vec!["X".to_string()];
    for group in ["layers", "obsm", "obsp", "obs", "var"] {
        for k in r.keys(group).expect(group) {
            slots.push(format!("{group}/{k}"));
        }
    }
    for slot in slots {
        if !o.exists(&slot) {
            continue;
        }
        // Slots without one numeric dtype (dataframes, categoricals, strings) are skipped.
        let (Some(want), Some(got)) = (
            r.info(&slot).ok().and_then(|i| i.dtype),
            o.info(&slot).ok().and_then(|i| i.dtype),
        ) else {
            continue;
        };
        assert_eq!(got, want, "{slot}: ours {got}, the reference's {want}");
        compared.push(slot);
    }
    eprintln!("{} slots with the reference's dtype", compared.len());
    for slot in [
        "obsm/X_pca",
        "obsp/distances",
        "obsp/connectivities",
        "layers/Ms",
        "obs/initial_size",
        "var/velocity_gamma",
        "var/velocity_r2",
    ] {
        assert!(compared.iter().any(|s| s == slot), "{slot} not compared");
    }
}
