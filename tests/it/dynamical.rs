//! scVelo's dynamical model (`cellfate velocity --mode dynamical`): parity with scVelo 0.3.4's
//! `recover_dynamics(var_names="all")` + `velocity(mode="dynamical")` on CellRank's processed
//! pancreas (`../shared/reference/pancreas_3696/dynamical.h5ad`, made by
//! `reference/recipe/make_dynamical.py` from `reference.h5ad` beside it), the keys written,
//! determinism across thread counts, and bad input.
//!
//! Tolerances (the issue's): α, β, γ, t_ within 1 % for ≥ 95 % of the genes both tools fit;
//! likelihoods within 1e-3 relative (for ≥ 99 % of the genes: scVelo computes in the
//! layers' float32, we in float64, and for a few genes a rounding flips one cell's state and
//! the EM path); r² within 1e-4 (absolute); velocity genes agreeing on ≥ 99 %; per-cell cosine of the velocities on the
//! common velocity genes ≥ 0.999 in the median; the bimodality p-value and the upper steady
//! state within 1e-6 for ≥ 98 % (tiny p-values differ relatively in float32).

use std::path::Path;

use cellfate::io::H5adReader;

use crate::common::{cellfate, require_shared, simulate_cli, succeed, tempdir};

fn var(r: &H5adReader, key: &str) -> Vec<f64> {
    r.column("var", key)
        .unwrap_or_else(|e| panic!("var/{key}: {e}"))
        .to_f64_vec()
        .unwrap_or_else(|| panic!("var/{key}: not numeric"))
}

fn within(a: &[f64], b: &[f64], tol: f64) -> (usize, usize) {
    let mut both = 0;
    let mut ok = 0;
    for (&x, &y) in a.iter().zip(b) {
        if x.is_finite() && y.is_finite() {
            both += 1;
            if ((x - y) / y).abs() <= tol {
                ok += 1;
            }
        }
    }
    (ok, both)
}

#[test]
fn dynamical_model_matches_scvelo_on_pancreas() {
    let Some(dir) = require_shared("reference/pancreas_3696") else {
        return;
    };
    let d = tempdir();
    let out = d.path().join("dyn.h5ad");
    let res = succeed(
        cellfate()
            .args(["velocity", "--mode", "dynamical", "--var-names", "all"])
            .arg(dir.join("reference.h5ad"))
            .arg("-o")
            .arg(&out),
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(stdout.contains("1126 genes fitted"), "{stdout}");
    let ours = H5adReader::open(&out).expect("output");
    let scv = H5adReader::open(dir.join("dynamical.h5ad")).expect("reference");
    for (key, tol, share) in [
        ("fit_alpha", 1e-2, 0.95),
        ("fit_beta", 1e-2, 0.95),
        ("fit_gamma", 1e-2, 0.95),
        ("fit_t_", 1e-2, 0.95),
        ("fit_scaling", 1e-2, 0.99),
        ("fit_likelihood", 1e-3, 0.99),
        ("fit_variance", 1e-3, 0.99),
        ("fit_std_u", 1e-6, 1.0),
        ("fit_std_s", 1e-6, 1.0),
        ("fit_pval_steady", 1e-6, 0.98),
        ("fit_steady_u", 1e-6, 0.98),
    ] {
        let (ok, both) = within(&var(&ours, key), &var(&scv, key), tol);
        let frac = ok as f64 / both as f64;
        eprintln!("{key}: {ok}/{both} within {tol:e} ({:.1} %)", 100.0 * frac);
        assert!(both >= 1120, "{key}: {both} genes fitted by both");
        assert!(frac >= share, "{key}: {ok}/{both} within {tol:e}");
    }
    // r² (scVelo's adjusted r², near 0 for many genes): absolute, float32 rounding.
    let (x, y) = (var(&ours, "fit_r2"), var(&scv, "fit_r2"));
    let worst = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("fit_r2: largest absolute difference {worst:.2e}");
    assert!(worst <= 1e-4, "{worst}");
    // Velocity genes and velocities.
    let vg = |r: &H5adReader| -> Vec<bool> {
        var(r, "velocity_genes").iter().map(|&x| x != 0.0).collect()
    };
    let (a, b) = (vg(&ours), vg(&scv));
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    eprintln!(
        "velocity genes: ours {}, scVelo {}, agreeing on {agree} of {}",
        a.iter().filter(|&&x| x).count(),
        b.iter().filter(|&&x| x).count(),
        a.len()
    );
    assert!(agree as f64 >= 0.99 * a.len() as f64);
    let (n, g, v) = ours.dense("layers/velocity").expect("velocity");
    let (_, _, w) = scv.dense("layers/velocity").expect("scVelo velocity");
    let common: Vec<usize> = (0..g).filter(|&j| a[j] && b[j]).collect();
    let mut cos: Vec<f64> = (0..n)
        .map(|i| {
            let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
            for &j in &common {
                let (x, y) = (v[i * g + j], w[i * g + j]);
                xy += x * y;
                xx += x * x;
                yy += y * y;
            }
            xy / (xx.sqrt() * yy.sqrt())
        })
        .filter(|c| c.is_finite())
        .collect();
    cos.sort_by(f64::total_cmp);
    let median = cos[cos.len() / 2];
    eprintln!(
        "velocity cosine per cell: median {median:.6}, min {:.4}",
        cos[0]
    );
    assert!(median >= 0.999, "{median}");
    // Keys as scVelo writes them.
    for slot in [
        "layers/fit_t",
        "layers/fit_tau",
        "layers/fit_tau_",
        "layers/velocity_u",
        "varm/loss",
        "uns/recover_dynamics/fit_connected_states",
        "var/fit_alignment_scaling",
        "var/fit_u0",
        "var/fit_s0",
        "var/fit_steady_s",
    ] {
        assert!(ours.exists(slot), "{slot} missing");
    }
    match ours.read("uns/velocity_params/mode").expect("mode") {
        cellfate::io::Element::Str(m) => assert_eq!(m, "dynamical"),
        other => panic!("mode: {other:?}"),
    }
    // fit_t as scVelo (kNN-smoothed, aligned to a total time of 20): within 1e-3 wherever the
    // gene's fit agrees (96 % of the genes: 94.6 % of all values measured).
    let (_, _, t) = ours.dense("layers/fit_t").expect("fit_t");
    let (_, _, st) = scv.dense("layers/fit_t").expect("scVelo fit_t");
    let close = t
        .iter()
        .zip(&st)
        .filter(|(x, y)| {
            x.is_finite() && y.is_finite() && (*x - *y).abs() <= 1e-3 * (1.0 + y.abs())
        })
        .count();
    eprintln!("fit_t within 1e-3: {close} of {}", t.len());
    assert!(close as f64 >= 0.94 * t.len() as f64);
}

/// A small simulation through `preprocess --velocity-mode dynamical`: the same bits at 1 and
/// 2 threads; then `run --velocity-mode dynamical` on the processed file recomputes the
/// velocity (it was stochastic) and maps fates.
#[test]
fn dynamical_model_is_deterministic_and_runs_end_to_end() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(
        &sim,
        &[
            "--cells", "400", "--genes", "40", "--fates", "2", "--seed", "2",
        ],
    );
    let mut outs = Vec::new();
    for threads in ["1", "2"] {
        let out = d.path().join(format!("dyn{threads}.h5ad"));
        succeed(
            cellfate()
                .args(["--threads", threads, "preprocess"])
                .arg(&sim)
                .args([
                    "--n-top-genes",
                    "40",
                    "--velocity-mode",
                    "dynamical",
                    "-q",
                    "-o",
                ])
                .arg(&out),
        );
        outs.push(out);
    }
    let (a, b) = (
        H5adReader::open(&outs[0]).expect("1"),
        H5adReader::open(&outs[1]).expect("2"),
    );
    for slot in [
        "layers/velocity",
        "layers/fit_t",
        "layers/fit_tau_",
        "layers/velocity_u",
    ] {
        let (x, y) = (a.dense(slot).expect(slot).2, b.dense(slot).expect(slot).2);
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{slot} differs between 1 and 2 threads"
        );
    }
    for key in ["fit_alpha", "fit_gamma", "fit_t_", "fit_likelihood"] {
        let (x, y) = (var(&a, key), var(&b, key));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{key}"
        );
        assert!(x.iter().any(|v| v.is_finite()), "{key}: nothing fitted");
    }
    // A stochastic file, then run asking for the dynamical model.
    let st = d.path().join("st.h5ad");
    succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["--n-top-genes", "40", "-q", "-o"])
            .arg(&st),
    );
    let out = d.path().join("run.h5ad");
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(&st)
            .args(crate::common::small_run_flags("30"))
            .args(["--velocity-mode", "dynamical", "-o"])
            .arg(&out),
    );
    let r = H5adReader::open(&out).expect("run output");
    match r.read("uns/velocity_params/mode").expect("mode") {
        cellfate::io::Element::Str(m) => assert_eq!(m, "dynamical", "{res:?}"),
        other => panic!("mode: {other:?}"),
    }
    assert!(r.exists("obsm/lineages_fwd"));
}

/// Bad input: the dynamical model needs the kNN graph; its absence is an error naming the
/// slot and the file, nothing is written. An unknown mode lists the three.
#[test]
fn dynamical_model_names_what_is_missing() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(&sim, &["--cells", "200", "--genes", "20", "--fates", "2"]);
    let pp = d.path().join("pp.h5ad");
    succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["--n-top-genes", "20", "-q", "-o"])
            .arg(&pp),
    );
    let mut edit = cellfate::io::H5adEdit::new(&pp);
    edit.remove("obsp/connectivities");
    let bad = d.path().join("nograph.h5ad");
    edit.write_to(&bad).expect("edited copy");
    let out = d.path().join("out.h5ad");
    let res = cellfate()
        .args(["velocity", "--mode", "dynamical"])
        .arg(&bad)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    let msg = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("obsp/connectivities") && msg.contains("nograph.h5ad"),
        "{msg}"
    );
    assert!(!Path::new(&out).exists());
    let res = cellfate()
        .args(["velocity", "--mode", "dynamic"])
        .arg(&pp)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    let msg = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{msg}");
    assert!(msg.contains("dynamical"), "{msg}");
}

/// Ground truth on the project's simulator (2,000 cells, 100 genes, two fates, true time):
/// Spearman correlation of two samples without ties.
fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let rank = |v: &[f64]| -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (a, b) = (rank(x), rank(y));
    let n = a.len() as f64;
    let ma = a.iter().sum::<f64>() / n;
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - ma)).sum();
    let var: f64 = a.iter().map(|x| (x - ma) * (x - ma)).sum();
    cov / var
}

/// Ground truth on scVelo's own kind of data (`simulate --model switch`: every gene induced
/// from 0 and switched off at its own time, Gaussian noise, a kNN graph and moments; 1,000
/// cells × 50 genes), `velocity --mode dynamical --var-names all`, two seeds:
/// - γ/β within 5 % of the truth in the median over the genes (measured 3.4–3.6 %; the
///   issue's goal; scVelo reports 2.9 % on its simulation);
/// - latent time from the earliest cell (`--latent-root-cell`) with Spearman ≥ 0.99 against
///   the true time (measured 0.9988, 0.9991; scVelo reports 0.9997);
/// - with scVelo's automatic roots ≥ 0.98 (measured 0.985, 0.999): the roots it detects sit
///   at true time ≈ 1.2, because the first cells, near (0, 0) in every gene, get the zero
///   steady state and no velocity; the cells before the roots are then placed after them.
#[test]
fn the_dynamical_model_recovers_a_single_switch_simulation() {
    let d = tempdir();
    for seed in ["0", "1"] {
        let sim = d.path().join(format!("switch{seed}.h5ad"));
        let res = succeed(
            cellfate()
                .args(["simulate", "--model", "switch", "--cells", "1000"])
                .args(["--genes", "50", "--seed", seed, "-o"])
                .arg(&sim),
        );
        assert!(
            String::from_utf8_lossy(&res.stdout).contains("one switch per gene"),
            "{res:?}"
        );
        let truth = H5adReader::open(&sim)
            .expect("simulation")
            .obs_f64("true_time")
            .expect("true_time");
        let first = (0..truth.len())
            .min_by(|&a, &b| truth[a].total_cmp(&truth[b]))
            .expect("cells");
        for root in [Some(first), None] {
            let out = d.path().join(format!("dyn{seed}_{}.h5ad", root.is_some()));
            let mut cmd = cellfate();
            cmd.arg("velocity")
                .arg(&sim)
                .args(["--mode", "dynamical", "--var-names", "all", "-o"])
                .arg(&out);
            if let Some(c) = root {
                cmd.args(["--latent-root-cell", &c.to_string()]);
            }
            succeed(&mut cmd);
            let r = H5adReader::open(&out).expect("output");
            let rho = spearman(&r.obs_f64("latent_time").expect("latent_time"), &truth);
            let (tb, tg) = (var(&r, "true_beta"), var(&r, "true_gamma"));
            let (fb, fg) = (var(&r, "fit_beta"), var(&r, "fit_gamma"));
            let mut err: Vec<f64> = (0..tb.len())
                .map(|j| ((fg[j] / fb[j]) / (tg[j] / tb[j]) - 1.0).abs())
                .filter(|x| x.is_finite())
                .collect();
            assert_eq!(err.len(), 50, "every gene fitted");
            err.sort_by(f64::total_cmp);
            let median = err[err.len() / 2];
            eprintln!("seed {seed}, root {root:?}: latent time Spearman {rho:.4}, gamma/beta median error {median:.4}");
            assert!(
                median <= 0.05,
                "seed {seed}: gamma/beta median error {median}"
            );
            let floor = if root.is_some() { 0.99 } else { 0.98 };
            assert!(rho >= floor, "seed {seed}, root {root:?}: Spearman {rho}");
        }
    }
}

/// `preprocess --velocity-mode dynamical` writes latent time with Spearman ≥ 0.9 against the
/// true time (0.928 measured), the velocity confidences in obs, and the kinetic-parameter and
/// latent-time tables as CSV.
#[test]
fn latent_time_follows_the_true_time_of_a_simulation() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(
        &sim,
        &[
            "--cells", "2000", "--genes", "100", "--fates", "2", "--seed", "3",
        ],
    );
    let out = d.path().join("dyn.h5ad");
    let (k, l) = (d.path().join("kinetics.csv"), d.path().join("latent.csv"));
    let res = succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args([
                "--n-top-genes",
                "100",
                "--velocity-mode",
                "dynamical",
                "--var-names",
                "all",
            ])
            .arg("--kinetics-csv")
            .arg(&k)
            .arg("--latent-time-csv")
            .arg(&l)
            .arg("-o")
            .arg(&out),
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("latent time") && stdout.contains("velocity confidence"),
        "{stdout}"
    );
    let r = H5adReader::open(&out).expect("output");
    let lt = r.obs_f64("latent_time").expect("latent_time");
    let truth = r.obs_f64("true_time").expect("true_time");
    let rho = spearman(&lt, &truth);
    eprintln!("latent time vs true time: Spearman {rho:.4}\n{stdout}");
    assert!(rho >= 0.9, "{rho}");
    // γ/β against the simulator's on the well-expressed genes (upper half by mean Ms, as for
    // the steady-state γ in BENCHMARKS.md): measured 7.2 % (12.4 % over all 100 genes; the
    // stochastic model's γ has 3.9 % there).
    let (n, g, ms) = r.dense("layers/Ms").expect("Ms");
    let mean: Vec<f64> = (0..g)
        .map(|j| (0..n).map(|i| ms[i * g + j]).sum::<f64>() / n as f64)
        .collect();
    let mut order: Vec<usize> = (0..g).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
    let (tb, tg) = (var(&r, "true_beta"), var(&r, "true_gamma"));
    let (fb, fg) = (var(&r, "fit_beta"), var(&r, "fit_gamma"));
    let mut err: Vec<f64> = order[..g / 2]
        .iter()
        .map(|&j| ((fg[j] / fb[j]) / (tg[j] / tb[j]) - 1.0).abs())
        .filter(|x| x.is_finite())
        .collect();
    assert_eq!(err.len(), g / 2, "every well-expressed gene fitted");
    err.sort_by(f64::total_cmp);
    let median = err[err.len() / 2];
    eprintln!("gamma/beta median error, upper half by mean Ms: {median:.4}");
    assert!(median <= 0.10, "gamma/beta median error {median}");
    for key in [
        "velocity_confidence",
        "velocity_length",
        "velocity_confidence_transition",
        "velocity_coherence",
        "root_cells",
        "end_points",
    ] {
        assert!(r.obs_f64(key).is_ok(), "obs/{key}");
    }
    assert!(r.exists("uns/velocity_graph"));
    let kin = std::fs::read_to_string(&k).expect("kinetics csv");
    assert!(kin.starts_with("gene,fit_alpha,fit_beta,fit_gamma,fit_t_"));
    assert_eq!(kin.lines().count(), 101);
    let lat = std::fs::read_to_string(&l).expect("latent csv");
    assert!(lat.starts_with("cell,latent_time,velocity_confidence"));
    assert_eq!(lat.lines().count(), 2001);
    // The report shows the confidences, latent time and the fit quality per gene.
    let html = d.path().join("report.html");
    succeed(cellfate().arg("report").arg(&out).arg("-o").arg(&html));
    let page = std::fs::read_to_string(&html).expect("report");
    for words in [
        "<h2>Velocity</h2>",
        "Velocity model: dynamical",
        "velocity_confidence",
        "velocity_coherence",
        "latent_time",
        "100 of 100 genes fitted",
        "Best fitted (likelihood)",
    ] {
        assert!(page.contains(words), "report lacks {words:?}");
    }
}

/// A gene with no unspliced counts cannot be fitted (scVelo: "not recoverable"): its
/// parameters are NaN, it is counted and named in the summary, never a panic, and the other
/// genes are fitted as before; the pseudotime kernel then runs on latent time.
#[test]
fn unrecoverable_genes_are_named_and_latent_time_drives_the_pseudotime_kernel() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(
        &sim,
        &[
            "--cells", "300", "--genes", "30", "--fates", "2", "--seed", "4",
        ],
    );
    let pp = d.path().join("pp.h5ad");
    succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["--n-top-genes", "30", "-q", "-o"])
            .arg(&pp),
    );
    let r = H5adReader::open(&pp).expect("pp");
    let (n, g, mut mu) = r.dense("layers/Mu").expect("Mu");
    let name = r.var_names().expect("names")[3].clone();
    drop(r);
    for i in 0..n {
        mu[i * g + 3] = 0.0;
    }
    let mut edit = cellfate::io::H5adEdit::new(&pp);
    edit.set(
        "layers/Mu",
        cellfate::io::Element::from_f64_matrix(n, g, mu),
    );
    let bad = d.path().join("nounspliced.h5ad");
    edit.write_to(&bad).expect("edited");
    let out = d.path().join("dyn.h5ad");
    let res = succeed(
        cellfate()
            .args(["velocity", "--mode", "dynamical", "--var-names", "all"])
            .arg(&bad)
            .arg("-o")
            .arg(&out),
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("1 genes not recoverable") && stdout.contains(&name),
        "{stdout}"
    );
    let r = H5adReader::open(&out).expect("output");
    let alpha = var(&r, "fit_alpha");
    assert!(alpha[3].is_nan());
    assert_eq!(alpha.iter().filter(|a| a.is_finite()).count(), g - 1);
    let pt = d.path().join("pt.h5ad");
    succeed(
        cellfate()
            .arg("run")
            .arg(&out)
            .args([
                "--kernel",
                "pseudotime",
                "--param",
                "pseudotime.time_key=latent_time",
            ])
            .args(crate::common::small_run_flags("20"))
            .arg("-o")
            .arg(&pt),
    );
    assert!(H5adReader::open(&pt)
        .expect("run")
        .exists("obsm/lineages_fwd"));
}
