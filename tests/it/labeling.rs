//! Metabolic labeling end to end (issue 23): the simulator's three experiments through
//! `preprocess` (kinetics per experiment type against the ground truth), `run` with the
//! labeling kernel by default and its randomised control, the dynast fixture's four layers,
//! and bad input.
//!
//! Ground truth, measured (2,000 cells × 300 genes, seed 0, `simulate --experiment E`, then
//! `preprocess` with its defaults): median relative error of γ against `true_gamma_total` on
//! the well-expressed genes (total counts at or above the median) whose total RNA reaches its
//! steady state in the simulation (`var["true_reaches_steady_state"]`): kinetics (two-step)
//! 6.3 %, degradation 3.4 %, one-shot 8.2 %; half-lives 5.9 %, 3.6 %, 7.6 %. Tolerances: 10 %
//! for γ and 15 % for half-lives, as the issue asks. The one-shot and two-step estimates assume
//! the extreme cells (one-shot) or the cells of each time (two-step) are at steady state, as
//! dynamo does: on genes that never reach it (late lineage genes) γ is overestimated (all
//! well-expressed genes: one-shot 14.4 %, kinetics 14.1 %, degradation 5.8 %).

use std::path::{Path, PathBuf};

use cellfate::io::{Element, H5adEdit, H5adReader};

use crate::common::{cellfate, require_shared, succeed, tempdir};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `simulate --experiment EXP` then `preprocess`; the preprocessed file.
fn simulated(dir: &Path, experiment: &str, extra: &[&str]) -> PathBuf {
    let raw = dir.join(format!("{experiment}.h5ad"));
    let pp = dir.join(format!("{experiment}_pp.h5ad"));
    succeed(
        cellfate()
            .args(["simulate", "--experiment", experiment, "-q", "-o", &s(&raw)])
            .args(extra),
    );
    succeed(cellfate().args(["preprocess", &s(&raw), "-q", "-o", &s(&pp)]));
    pp
}

fn col(r: &H5adReader, name: &str) -> Vec<f64> {
    r.column("var", name)
        .unwrap_or_else(|e| panic!("var {name}: {e}"))
        .to_f64_vec()
        .unwrap_or_else(|| panic!("var {name}: not numeric"))
}

fn dense(r: &H5adReader, slot: &str) -> (usize, usize, Vec<f64>) {
    match r.read(slot).unwrap_or_else(|e| panic!("{slot}: {e}")) {
        Element::Dense(a) => (a.shape[0], a.shape[1], a.data.to_f64()),
        other => panic!("{slot}: {}", other.encoding()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median cosine per cell between two cells × genes matrices on `genes`.
fn median_cosine(a: &[f64], b: &[f64], n: usize, g: usize, genes: &[usize]) -> f64 {
    median(
        (0..n)
            .map(|i| {
                let (mut d, mut x, mut y) = (0.0, 0.0, 0.0);
                for &j in genes {
                    let (p, q) = (a[i * g + j], b[i * g + j]);
                    d += p * q;
                    x += p * p;
                    y += q * q;
                }
                d / (x.sqrt() * y.sqrt())
            })
            .collect(),
    )
}

#[test]
fn kinetics_recover_the_simulated_truth_per_experiment() {
    let d = tempdir();
    // (experiment, dynamo's name, estimator, γ tolerance, half-life tolerance) on the
    // well-expressed genes at steady state (module docs).
    for (exp, name, method, tol_gamma, tol_half) in [
        ("kinetics", "kin", "twostep", 0.10, 0.15),
        ("degradation", "deg", "direct", 0.10, 0.15),
        ("one-shot", "one-shot", "combined", 0.10, 0.15),
    ] {
        let pp = simulated(d.path(), exp, &[]);
        let r = H5adReader::open(&pp).expect("open");
        // The experiment is detected from the times and the new-to-total ratios.
        assert!(
            matches!(r.read("uns/dynamics/experiment_type"), Ok(Element::Str(ref e)) if e == name)
        );
        assert!(
            matches!(r.read("uns/dynamics/est_method"), Ok(Element::Str(ref m)) if m == method)
        );
        let (gamma, truth) = (col(&r, "gamma"), col(&r, "true_gamma_total"));
        let (half, true_half) = (col(&r, "half_life"), col(&r, "true_half_life_total"));
        let steady = col(&r, "true_reaches_steady_state");
        let fitted = col(&r, "use_for_dynamics");
        let (n, g, total) = dense_counts(&r, "layers/total");
        assert_eq!((n, g), (2000, 300));
        let med_total = median(total.clone());
        let well: Vec<usize> = (0..g)
            .filter(|&j| fitted[j] != 0.0 && total[j] >= med_total)
            .collect();
        let at_steady: Vec<usize> = well.iter().copied().filter(|&j| steady[j] != 0.0).collect();
        let err = |est: &[f64], tru: &[f64], genes: &[usize]| {
            median(
                genes
                    .iter()
                    .map(|&j| (est[j] / tru[j] - 1.0).abs())
                    .collect(),
            )
        };
        let (eg, eh) = (
            err(&gamma, &truth, &at_steady),
            err(&half, &true_half, &at_steady),
        );
        eprintln!(
            "{exp}: {} well-expressed genes at steady state: median |γ error| {eg:.4}, half-life {eh:.4}; all {} well-expressed: γ {:.4}",
            at_steady.len(),
            well.len(),
            err(&gamma, &truth, &well)
        );
        assert!(at_steady.len() >= 50, "{exp}: {}", at_steady.len());
        assert!(eg <= tol_gamma, "{exp}: median γ error {eg}");
        assert!(eh <= tol_half, "{exp}: median half-life error {eh}");
        // dynamo's storage: varm vel_params with the names in uns; readable var columns.
        let (pg, pn, params) = dense(&r, "varm/vel_params");
        assert_eq!((pg, pn), (300, 4));
        for j in 0..g {
            assert!(
                params[j * 4 + 1] == gamma[j] || (params[j * 4 + 1].is_nan() && gamma[j].is_nan())
            );
        }
        if exp == "degradation" {
            // dynamo writes no velocity for a chase.
            assert!(!r.exists("layers/velocity_T"));
            continue;
        }
        // Velocities: velocity_T against the true total-RNA velocity, beside the splicing
        // velocity against its own truth (median per-cell cosine over the fitted genes).
        let (_, _, vt) = dense(&r, "layers/velocity_T");
        let (_, _, tvt) = dense(&r, "layers/true_velocity_T");
        let (_, _, vs) = dense(&r, "layers/velocity");
        let (_, _, tvs) = dense(&r, "layers/true_velocity");
        let genes: Vec<usize> = (0..g).filter(|&j| fitted[j] != 0.0).collect();
        let vs: Vec<f64> = vs
            .into_iter()
            .map(|x| if x.is_finite() { x } else { 0.0 })
            .collect();
        let (ct, cs) = (
            median_cosine(&vt, &tvt, n, g, &genes),
            median_cosine(&vs, &tvs, n, g, &genes),
        );
        eprintln!(
            "{exp}: median cosine with the truth: velocity_T {ct:.3}, splicing velocity {cs:.3}"
        );
        assert!(ct > 0.5, "{exp}: velocity_T cosine {ct}");
        // The labeling velocity is at least as close to its truth as the splicing velocity
        // to its own (measured: kinetics 0.786 against 0.747, one-shot 0.784 against 0.748).
        assert!(ct >= cs, "{exp}: velocity_T {ct} < splicing {cs}");
        // velocity_N = α − γ n and velocity_T = α − γ r from the same cell-wise α.
        let (_, _, vn) = dense(&r, "layers/velocity_N");
        let (_, _, a) = dense(&r, "layers/cell_wise_alpha");
        let (_, _, mn) = dense(&r, "layers/M_n");
        let (_, _, mt) = dense(&r, "layers/M_t");
        for i in (0..n).step_by(97) {
            for &j in genes.iter().step_by(7) {
                let k = i * g + j;
                let tol = 1e-4 * (1.0 + a[k].abs());
                assert!((vn[k] - (a[k] - gamma[j] * mn[k])).abs() <= tol);
                assert!((vt[k] - (a[k] - gamma[j] * mt[k])).abs() <= tol);
            }
        }
    }
}

/// Column sums of a sparse count layer as (n, g, sums).
fn dense_counts(r: &H5adReader, slot: &str) -> (usize, usize, Vec<f64>) {
    let m = r.csr(slot).expect("csr");
    (m.nrows(), m.ncols(), m.col_sums())
}

fn uns_f64(r: &H5adReader, slot: &str) -> f64 {
    match r.read(slot).unwrap_or_else(|e| panic!("{slot}: {e}")) {
        Element::Scalar(v) => v.to_f64()[0],
        other => panic!("{slot}: {}", other.encoding()),
    }
}

#[test]
fn run_uses_the_labeling_kernel_and_its_control_separates_flow_from_noise() {
    let d = tempdir();
    let raw = d.path().join("raw.h5ad");
    succeed(cellfate().args([
        "simulate",
        "--experiment",
        "kinetics",
        "--cells",
        "1200",
        "--genes",
        "120",
        "-q",
        "-o",
        &s(&raw),
    ]));
    let out = d.path().join("out.h5ad");
    let o = succeed(cellfate().args(["run", &s(&raw), "-o", &s(&out), "--json", "-q"]));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        j["kernel"]
            .as_str()
            .expect("kernel")
            .contains("\"kernel\":\"labeling_time\""),
        "{}",
        j["kernel"]
    );
    assert!(j["warnings"][0]
        .as_str()
        .expect("w")
        .contains("0.8*labeling_time + 0.2*connectivity"));
    let score = j["random_control"]["score"].as_f64().expect("score");
    assert!(score > 0.3, "control score {score}");
    let terminal: Vec<&str> = j["estimators"]["terminal_states"]
        .as_array()
        .expect("terminal")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!terminal.contains(&"Progenitor"), "{terminal:?}");
    let r = H5adReader::open(&out).expect("out");
    for slot in [
        "obsp/T_fwd_rnd",
        "obs/random_control_score",
        "layers/velocity_T",
        "layers/M_n",
        "layers/M_s",
        "layers/M_u",
        "obs/velocity_T_confidence",
        "uns/pp",
    ] {
        assert!(r.exists(slot), "{slot}");
    }
    // An explicit --kernel is kept.
    let out2 = d.path().join("out2.h5ad");
    let o = succeed(cellfate().args([
        "run",
        &s(&out),
        "-o",
        &s(&out2),
        "--json",
        "-q",
        "--kernel",
        "0.8*velocity + 0.2*connectivity",
    ]));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(j["kernel"]
        .as_str()
        .expect("kernel")
        .contains("\"kernel\":\"velocity\""));
    assert!(j.get("random_control").is_none());
    // Velocities that are noise: the labeling velocity permuted across cells with random
    // signs; the control's score is then near zero.
    let (n, g, vt) = dense(&r, "layers/velocity_T");
    let noise = cellfate::kernels::random_control::permute_with_signs(
        &cellfate::kernels::DenseMatrix::from_f64(n, g, vt),
        7,
    );
    let noisy = d.path().join("noisy.h5ad");
    let mut edit = H5adEdit::new(&out);
    edit.set(
        "layers/velocity_T",
        Element::from_f64_matrix(n, g, noise.to_f64()),
    );
    edit.write_to(&noisy).expect("write");
    let k = d.path().join("k.h5ad");
    succeed(cellfate().args([
        "kernel",
        &s(&noisy),
        "-o",
        &s(&k),
        "--kernel",
        "labeling_time",
        "--random-control",
    ]));
    let rk = H5adReader::open(&k).expect("k");
    let noise_score = uns_f64(&rk, "uns/random_control/score");
    eprintln!("control score: directed {score:.3}, noise {noise_score:.3}");
    assert!(
        noise_score.abs() < 0.25 * score,
        "noise {noise_score} vs {score}"
    );
}

#[test]
fn dynast_fixture_four_layers_and_clear_errors() {
    let Some(dir) = require_shared("data/dynast_labeling_fixture") else {
        return;
    };
    let f = dir.join("SRR11683995_count_adata.h5ad");
    let r = H5adReader::open(&f).expect("open");
    let layout = cellfate::upstream::labeling_layout(&r)
        .expect("layout")
        .expect("a labeling layout");
    assert_eq!(
        layout,
        cellfate::upstream::LabelingLayout::Four {
            uu: "un_TC".into(),
            ul: "ul_TC".into(),
            su: "sn_TC".into(),
            sl: "sl_TC".into(),
        }
    );
    let (new, total) =
        cellfate::upstream::read_labeling_counts(&r, &layout, "fixture").expect("counts");
    let layer = |k: &str| r.csr(&format!("layers/{k}")).expect(k).to_dense();
    let sum = |ks: &[&str]| -> Vec<f64> {
        let mut acc = layer(ks[0]);
        for k in &ks[1..] {
            acc.iter_mut().zip(layer(k)).for_each(|(a, b)| *a += b);
        }
        acc
    };
    assert_eq!(new.to_dense(), sum(&["ul_TC", "sl_TC"]));
    assert_eq!(total.to_dense(), sum(&["un_TC", "ul_TC", "sn_TC", "sl_TC"]));
    // 201 of the file's 250 counts: the rest are ambiguous (neither spliced nor unspliced).
    assert_eq!(total.data().iter().sum::<f64>(), 201.0);
    let d = tempdir();
    let out = d.path().join("o.h5ad");
    // No labeling time: every command names --labeling-time.
    for args in [
        vec!["preprocess", &s(&f) as &str, "-o", &s(&out) as &str],
        vec!["run", &s(&f), "-o", &s(&out)],
        vec![
            "kernel",
            &s(&f),
            "-o",
            &s(&out),
            "--kernel",
            "labeling_time",
        ],
    ] {
        let o = cellfate().args(&args).output().expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains("--labeling-time"), "{args:?}: {err}");
    }
    let o = cellfate()
        .args(["batch", &s(&f), "--out-dir", &s(&d.path().join("b")), "-q"])
        .output()
        .expect("batch");
    assert_eq!(o.status.code(), Some(1));
    let summary = std::fs::read_to_string(d.path().join("b/summary.json")).expect("summary");
    assert!(summary.contains("--labeling-time"), "{summary}");
    // With a labeling time: too few counts, not numbers from noise.
    for cmd in ["preprocess", "run"] {
        let o = cellfate()
            .args([cmd, &s(&f), "-o", &s(&out), "--labeling-time", "2"])
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("too few counts"), "{cmd}: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn bad_labeling_input_is_named() {
    let d = tempdir();
    let raw = d.path().join("raw.h5ad");
    succeed(cellfate().args([
        "simulate",
        "--experiment",
        "kinetics",
        "--cells",
        "300",
        "--genes",
        "60",
        "-q",
        "-o",
        &s(&raw),
    ]));
    let r = H5adReader::open(&raw).expect("raw");
    let n = 300;
    let mut times = r.obs_f64("labeling_time").expect("times");
    let edited = |name: &str, slot: &str, e: Element| -> PathBuf {
        let p = d.path().join(name);
        let mut edit = H5adEdit::new(&raw);
        edit.set(slot, e);
        edit.write_to(&p).expect("write");
        p
    };
    let fails = |p: &Path, extra: &[&str], want: &[&str]| {
        let out = d.path().join("o.h5ad");
        let o = cellfate()
            .args(["preprocess", &s(p), "-o", &s(&out)])
            .args(extra)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{extra:?}: want {w:?} in {err}");
        }
    };
    // A zero and a negative labeling time.
    times[5] = 0.0;
    let zero = edited(
        "zero.h5ad",
        "obs/labeling_time",
        Element::from_f64(times.clone()),
    );
    fails(
        &zero,
        &[],
        &["obs[\"labeling_time\"]", "cell 5", "positive"],
    );
    times[5] = -1.0;
    let neg = edited("neg.h5ad", "obs/labeling_time", Element::from_f64(times));
    fails(&neg, &[], &["cell 5", "-1"]);
    // Constant times where kinetics needs several.
    fails(
        &raw,
        &["--labeling-time", "2", "--experiment-type", "kinetics"],
        &["several labeling times"],
    );
    // A missing column, and a bad value.
    fails(
        &raw,
        &["--labeling-time", "hours"],
        &["--labeling-time hours", "obs column"],
    );
    fails(&raw, &["--labeling-time=-3"], &["--labeling-time -3"]);
    fails(
        &raw,
        &["--experiment-type", "pulse"],
        &["--experiment-type pulse", "one-shot"],
    );
    // new > total.
    let total = r.csr("layers/total").expect("total");
    let mut swapped = total.clone();
    swapped.data_mut().iter_mut().for_each(|v| *v += 1.0);
    let bad = edited("newgt.h5ad", "layers/new", Element::Sparse(swapped.into()));
    fails(&bad, &[], &["new exceeds total"]);
    // Labeling switched off: the splicing path alone.
    let out = d.path().join("off.h5ad");
    succeed(cellfate().args([
        "preprocess",
        &s(&raw),
        "-q",
        "-o",
        &s(&out),
        "--labeling-time",
        "off",
    ]));
    assert!(!H5adReader::open(&out)
        .expect("off")
        .exists("layers/velocity_T"));
    let _ = n;
}

#[test]
fn labeling_only_data_without_splicing_layers() {
    // new/total alone (no spliced/unspliced): total stands for the counts.
    let d = tempdir();
    let raw = d.path().join("raw.h5ad");
    succeed(cellfate().args([
        "simulate",
        "--experiment",
        "one-shot",
        "--cells",
        "600",
        "--genes",
        "80",
        "-q",
        "-o",
        &s(&raw),
    ]));
    let r = H5adReader::open(&raw).expect("raw");
    let only = d.path().join("only.h5ad");
    let mut edit = H5adEdit::new(&raw);
    for slot in [
        "layers/spliced",
        "layers/unspliced",
        "X",
        "layers/true_velocity",
    ] {
        edit.remove(slot);
    }
    edit.set(
        "X",
        Element::Sparse(r.csr("layers/total").expect("total").into()),
    );
    edit.write_to(&only).expect("write");
    let out = d.path().join("out.h5ad");
    succeed(cellfate().args(["run", &s(&only), "-o", &s(&out), "-q", "--n-states", "4"]));
    let o = H5adReader::open(&out).expect("out");
    for slot in [
        "obsp/connectivities",
        "layers/velocity_T",
        "obsp/T_fwd",
        "obsm/lineages_fwd",
    ] {
        assert!(o.exists(slot), "{slot}");
    }
    assert!(!o.exists("layers/velocity"));
}
