//! `cellfate perturb` against the simulator's causal circuit (issue 22): a knocked-out branch
//! driver moves fate probability away from its branch as the re-simulated truth does; over
//! 10 drivers the predicted magnitudes rank like the truth's (Spearman ≥ 0.8); the screen is
//! the same at 1 and 2 threads; the outputs and bad input.

use std::path::{Path, PathBuf};

use cellfate::io::{Element, H5adEdit, H5adReader};
use cellfate::perturb::{PerturbMethod, PerturbSpec, Prepared};
use cellfate::sim::{simulate, SimData, SimParams};

use crate::common::{cellfate, spearman, succeed, tempdir};

const CELLS: usize = 3000;

/// The simulation with the circuit, run through `cellfate run` (defaults): the input of
/// every perturbation here.
fn circuit_run(dir: &Path) -> PathBuf {
    let sim = dir.join("circuit.h5ad");
    let out = dir.join("run.h5ad");
    succeed(
        cellfate()
            .args([
                "-q",
                "simulate",
                "--circuit",
                "--cells",
                &CELLS.to_string(),
                "-o",
            ])
            .arg(&sim),
    );
    succeed(cellfate().args(["-q", "run"]).arg(&sim).arg("-o").arg(&out));
    out
}

fn params(knockout: &[usize], n_cells: usize) -> SimParams {
    SimParams {
        n_cells,
        circuit: true,
        knockout: knockout.iter().map(|g| format!("gene_{g}")).collect(),
        ..SimParams::default()
    }
}

fn fractions(d: &SimData) -> Vec<f64> {
    let n = d.fate.len() as f64;
    (0..d.params.n_fates)
        .map(|f| d.fate.iter().filter(|&&x| x == f).count() as f64 / n)
        .collect()
}

/// The true change of the fate fractions when `gene` is knocked out (same cells).
fn true_shift(gene: usize, n_cells: usize) -> Vec<f64> {
    let base = fractions(&simulate(&params(&[], n_cells)).expect("simulation"));
    let ko = fractions(&simulate(&params(&[gene], n_cells)).expect("simulation"));
    ko.iter().zip(&base).map(|(a, b)| a - b).collect()
}

/// The Progenitor group of an outcome (the cells whose fate the circuit decides).
fn progenitors(o: &cellfate::perturb::PerturbOutcome) -> &cellfate::dynamics::perturb::GroupShift {
    o.groups
        .iter()
        .find(|g| g.group == "Progenitor")
        .expect("a Progenitor group")
}

#[test]
fn knocking_out_a_branch_driver_moves_fate_away_from_its_branch_like_the_truth() {
    let d = tempdir();
    let run = circuit_run(d.path());
    let r = H5adReader::open(&run).expect("run output");
    let p = Prepared::new(&r, &run, &PerturbSpec::default()).expect("prepared");
    let mut names = p.lineages.clone();
    names.sort();
    assert_eq!(names, vec!["Alpha", "Beta", "Gamma"]);
    // gene_2, gene_4, gene_6 are the first early genes of Alpha, Beta, Gamma (the truth's
    // fates in this order; the run's lineages in its own).
    for (gene, fate) in [(2, 0), (4, 1), (6, 2)] {
        let o = p.perturb(&[format!("gene_{gene}")]).expect("perturbation");
        // Solved from the unperturbed factorisation, not a new one.
        assert_eq!(o.solver, cellfate::estimators::absorption::NEAR);
        let g = progenitors(&o);
        let lineage = p
            .lineages
            .iter()
            .position(|l| l == ["Alpha", "Beta", "Gamma"][fate])
            .expect("lineage");
        let t = true_shift(gene, CELLS);
        // The truth in the run's lineage order.
        let truth: Vec<f64> = p
            .lineages
            .iter()
            .map(|l| {
                t[["Alpha", "Beta", "Gamma"]
                    .iter()
                    .position(|n| n == l)
                    .expect("fate")]
            })
            .collect();
        // The prediction takes probability from the knocked-out branch, with an interval
        // that excludes 0, and gives it to the others.
        assert!(
            g.mean[lineage] < 0.0 && g.ci_high[lineage] < 0.0,
            "gene_{gene}: {g:?}"
        );
        for j in (0..3).filter(|&j| j != lineage) {
            assert!(g.mean[j] > 0.0, "gene_{gene}: {g:?}");
        }
        // The truth moves the same way.
        assert!(truth[lineage] < -0.01, "gene_{gene}: truth {truth:?}");
        let dot: f64 = g.mean.iter().zip(&truth).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (norm(&g.mean) * norm(&truth));
        assert!(
            cos > 0.8,
            "gene_{gene}: cosine {cos} of {:?} and {truth:?}",
            g.mean
        );
    }
}

#[test]
fn predicted_knockout_magnitudes_rank_like_the_truth() {
    let d = tempdir();
    let run = circuit_run(d.path());
    let r = H5adReader::open(&run).expect("run output");
    let p = Prepared::new(&r, &run, &PerturbSpec::default()).expect("prepared");
    // Ten drivers spanning their range of transcription rates (evenly spaced in the order
    // of α), so that the true effects differ.
    let sim = simulate(&params(&[], 100)).expect("simulation");
    let mut drivers: Vec<usize> = (0..sim.genes.len())
        .filter(|&g| sim.genes[g].driver)
        .collect();
    drivers.sort_by(|&a, &b| {
        sim.genes[a]
            .alpha
            .total_cmp(&sim.genes[b].alpha)
            .then(a.cmp(&b))
    });
    let m = drivers.len();
    let chosen: Vec<usize> = (0..10).map(|k| drivers[k * (m - 1) / 9]).collect();
    let mut truth = Vec::new();
    let mut predicted = Vec::new();
    for &gene in &chosen {
        // The re-simulated truth on more cells than the data (less sampling noise).
        let t = true_shift(gene, 20_000);
        truth.push(0.5 * t.iter().map(|x| x.abs()).sum::<f64>());
        let o = p.perturb(&[format!("gene_{gene}")]).expect("perturbation");
        predicted.push(progenitors(&o).magnitude);
    }
    let rho = spearman(&truth, &predicted);
    eprintln!("knockouts {chosen:?}: truth {truth:?}, predicted {predicted:?}, Spearman {rho:.3}");
    assert!(
        rho >= 0.8,
        "Spearman {rho}: truth {truth:?}, predicted {predicted:?}"
    );
}

#[test]
fn the_screen_is_the_same_at_one_and_two_threads_and_ranked() {
    let d = tempdir();
    let run = circuit_run(d.path());
    let mut tables = Vec::new();
    for threads in ["1", "2"] {
        let csv = d.path().join(format!("screen{threads}.csv"));
        let out = d.path().join(format!("screen{threads}.h5ad"));
        succeed(
            cellfate()
                .args(["-q", "--threads", threads, "perturb"])
                .arg(&run)
                .arg("-o")
                .arg(&out)
                .args(["--screen", "top_drivers:8", "--n-boot", "200", "--csv"])
                .arg(&csv),
        );
        let r = H5adReader::open(&out).expect("output");
        assert!(r.exists("uns/perturbed_screen"));
        tables.push(std::fs::read_to_string(&csv).expect("csv"));
    }
    assert_eq!(tables[0], tables[1], "the screen depends on the threads");
    let rows: Vec<&str> = tables[0].lines().collect();
    assert!(
        rows[0].starts_with("rank,gene,magnitude,n_changed,shift_"),
        "{}",
        rows[0]
    );
    assert_eq!(rows.len(), 9, "{}", tables[0]);
    let mags: Vec<f64> = rows[1..]
        .iter()
        .map(|l| {
            l.split(',')
                .nth(2)
                .expect("magnitude")
                .parse()
                .expect("number")
        })
        .collect();
    assert!(
        mags.windows(2).all(|w| w[0] >= w[1]),
        "not ranked: {mags:?}"
    );
}

#[test]
fn outputs_and_bad_input() {
    let d = tempdir();
    let run = circuit_run(d.path());
    let out = d.path().join("ko.h5ad");
    let csv = d.path().join("ko.csv");
    let png = d.path().join("ko.png");
    let text = succeed(
        cellfate()
            .arg("perturb")
            .arg(&run)
            .arg("-o")
            .arg(&out)
            .args(["--gene", "gene_2", "--csv"])
            .arg(&csv)
            .arg("--plot")
            .arg(&png),
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("knockout of gene_2 (kinetic route) in 3000 cells"),
        "{stdout}"
    );
    let r = H5adReader::open(&out).expect("output");
    let (n, l, fates) = r.dense("obsm/lineages_fwd_perturbed").expect("fates");
    assert_eq!((n, l), (CELLS, 3));
    for row in fates.chunks(l) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-8);
    }
    let (_, _, shift) = r.dense("obsm/lineages_fwd_perturbed_shift").expect("shift");
    let (_, _, base) = r.dense("obsm/lineages_fwd").expect("run's fates");
    // The unperturbed reference is the run's own chain: perturbed − shift = the run's fates.
    let worst = fates
        .iter()
        .zip(&shift)
        .zip(&base)
        .map(|((f, s), b)| (f - s - b).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst < 1e-8,
        "reference differs from obsm[\"lineages_fwd\"] by {worst}"
    );
    for slot in [
        "obs/fate_changed_perturbed",
        "obsp/perturbed_transition_matrix",
        "obsm/velocity_pca_perturbed",
        "uns/perturbed",
    ] {
        assert!(r.exists(slot), "{slot} missing");
    }
    match r.read("uns/perturbed").expect("uns") {
        Element::Str(s) => {
            let v: serde_json::Value = serde_json::from_str(&s).expect("json");
            assert_eq!(v["genes"][0], "gene_2");
            assert_eq!(v["change"], "knockout");
            assert_eq!(v["summary"][0]["group"], "all");
        }
        other => panic!("uns/perturbed: {other:?}"),
    }
    let table = std::fs::read_to_string(&csv).expect("csv");
    assert!(table.starts_with("group,n_cells,lineage,mean_shift,ci_low,ci_high,n_changed\n"));
    assert!(table.contains("Progenitor,"));
    assert!(std::fs::metadata(&png).expect("png").len() > 1000);
    // Overexpression and a cluster: only those cells are perturbed.
    let text = succeed(
        cellfate()
            .arg("perturb")
            .arg(&run)
            .arg("-o")
            .arg(d.path().join("oe.h5ad"))
            .args(["--gene", "gene_2", "--fold", "3", "--cluster", "Progenitor"]),
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("fold 3 of gene_2"), "{stdout}");
    // The same spec from TOML (the library's PerturbSpec), flags on top.
    let toml = d.path().join("perturb.toml");
    std::fs::write(
        &toml,
        "genes = [\"gene_2\"]\nfold = 2.0\nkey = \"oe2\"\nn_boot = 50\n",
    )
    .expect("toml");
    let via_toml = d.path().join("toml.h5ad");
    succeed(
        cellfate()
            .arg("perturb")
            .arg(&run)
            .arg("-o")
            .arg(&via_toml)
            .arg("--config")
            .arg(&toml),
    );
    let rt = H5adReader::open(&via_toml).expect("output");
    assert!(rt.exists("obsm/lineages_fwd_oe2"));
    match rt.read("uns/oe2").expect("uns") {
        Element::Str(s) => assert!(s.contains("\"fold 2\""), "{s}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(&toml, "genes = [\"gene_2\"]\nfolds = 2.0\n").expect("toml");
    let o = cellfate()
        .arg("perturb")
        .arg(&run)
        .arg("-o")
        .arg(d.path().join("t2.h5ad"))
        .arg("--config")
        .arg(&toml)
        .output()
        .expect("cellfate");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("folds"), "{err}");
    // Bad input, each named, nothing written.
    let fails = |args: &[&str], words: &[&str]| {
        let bad = d.path().join("bad.h5ad");
        let o = cellfate()
            .arg("perturb")
            .arg(&run)
            .arg("-o")
            .arg(&bad)
            .args(args)
            .output()
            .expect("cellfate");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        for w in words {
            assert!(err.contains(w), "{args:?}: {w:?} missing from {err}");
        }
        assert!(!bad.exists());
    };
    fails(&["--gene", "gene_2x"], &["gene_2x", "closest", "gene_2"]);
    fails(
        &["--gene", "gene_2", "--cluster", "Nowhere"],
        &["Nowhere", "Progenitor"],
    );
    fails(
        &["--gene", "gene_2", "--method", "jacobian"],
        &["VecFld_pca", "cellfate vectorfield"],
    );
    // A gene the kernel does not read: the message names the other predictor.
    let vg = match r.column("var", "velocity_genes").expect("velocity genes") {
        Element::Dense(a) => a.data.to_f64(),
        other => panic!("{other:?}"),
    };
    if let Some(j) = vg.iter().position(|&b| b == 0.0) {
        fails(
            &["--gene", &format!("gene_{j}")],
            &["not among the velocity genes", "--method jacobian"],
        );
    }
    // A gene with no expression in the perturbed cells.
    let silent = d.path().join("silent.h5ad");
    let (rows, g, mut ms) = r.dense("layers/Ms").expect("Ms");
    for i in 0..rows {
        ms[i * g + 2] = 0.0;
    }
    let mut edit = H5adEdit::new(&run);
    edit.set("layers/Ms", Element::from_f64_matrix(rows, g, ms));
    edit.write_to(&silent).expect("write");
    let o = cellfate()
        .arg("perturb")
        .arg(&silent)
        .arg("-o")
        .arg(d.path().join("s.h5ad"))
        .args(["--gene", "gene_2"])
        .output()
        .expect("cellfate");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no expression to change"),
        "{err}"
    );
}

#[test]
fn the_jacobian_route_ranks_housekeeping_knockouts_below_branch_drivers() {
    let d = tempdir();
    let run = circuit_run(d.path());
    let vf = d.path().join("vf.h5ad");
    succeed(
        cellfate()
            .args(["-q", "vectorfield"])
            .arg(&run)
            .arg("-o")
            .arg(&vf)
            .args(["--basis", "pca", "--dims", "10"]),
    );
    let r = H5adReader::open(&vf).expect("field");
    let spec = PerturbSpec {
        method: PerturbMethod::Jacobian,
        n_boot: 0,
        ..Default::default()
    };
    let p = Prepared::new(&r, &vf, &spec).expect("prepared");
    let size =
        |g: usize| progenitors(&p.perturb(&[format!("gene_{g}")]).expect("perturbation")).magnitude;
    // Housekeeping genes (program 1 of 8) against the first driver of each branch.
    let housekeeping: Vec<f64> = [1, 9, 17].iter().map(|&g| size(g)).collect();
    let drivers: Vec<f64> = [2, 4, 6].iter().map(|&g| size(g)).collect();
    eprintln!("jacobian route: housekeeping {housekeeping:?}, drivers {drivers:?}");
    let hk_max = housekeeping.iter().cloned().fold(0.0f64, f64::max);
    let drv_min = drivers.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        hk_max < drv_min,
        "housekeeping {housekeeping:?} vs drivers {drivers:?}"
    );
}
