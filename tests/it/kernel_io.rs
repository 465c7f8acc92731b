//! Kernels saved into `.h5ad` (CellRank's layout) and to binary files reload exactly; the
//! `cellfate kernel` command writes what it says and fails clearly on bad input.

use cellfate::io::{H5adEdit, H5adReader};
use cellfate::kernel_io::{read_kernel, write_kernel};
use cellfate::kernels::{expr, Kernel};

use crate::common::{cellfate, require_shared, succeed, tempdir};

fn dg() -> Option<std::path::PathBuf> {
    require_shared("reference/dentategyrus_200").map(|d| d.join("reference.h5ad"))
}

#[test]
fn write_to_adata_and_from_adata_round_trip() {
    let Some(input) = dg() else {
        return;
    };
    let r = H5adReader::open(&input).expect("open");
    let spec = expr::parse("0.7*velocity + 0.3*connectivity").expect("parse");
    let out = spec.compute(&r).expect("compute");
    let d = tempdir();
    let path = d.path().join("k.h5ad");
    let mut edit = H5adEdit::new(&input);
    write_kernel(&mut edit, &out, None);
    edit.write_to(&path).expect("write");
    let r2 = H5adReader::open(&path).expect("open out");
    let back = read_kernel(&r2, "T_fwd").expect("read kernel");
    assert_eq!(back, out, "matrix and effective spec reload exactly");
    // The reloaded spec recomputes the same matrix from the file's inputs.
    let again = back.effective.compute(&r2).expect("recompute");
    assert_eq!(again.transition, out.transition);
    // CellRank's layout: params/init dicts next to the matrix.
    assert!(r2.exists("uns/T_fwd_params/params/VelocityKernel:0/params/softmax_scale"));
    assert!(r2.exists("uns/T_fwd_params/init"));
    // A matrix written by CellRank itself (no spec) reloads as a precomputed kernel.
    let ck = read_kernel(&r, "T_ck").expect("cellrank matrix");
    assert_eq!(ck.effective.kind(), "precomputed");
}

#[test]
fn kernel_command_save_load_and_random_control() {
    let Some(input) = dg() else {
        return;
    };
    let d = tempdir();
    let (o1, o2, bin) = (
        d.path().join("a.h5ad"),
        d.path().join("b.h5ad"),
        d.path().join("k.bin"),
    );
    let out = cellfate()
        .arg("kernel")
        .arg(&input)
        .arg("-o")
        .arg(&o1)
        .args([
            "--kernel",
            "0.8*velocity+0.2*connectivity",
            "--param",
            "velocity.similarity=cosine",
        ])
        .args([
            "--random-control",
            "--seed",
            "3",
            "--projection",
            "umap",
            "--save-kernel",
        ])
        .arg(&bin)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    succeed(
        cellfate()
            .arg("kernel")
            .arg(&input)
            .arg("-o")
            .arg(&o2)
            .arg("--load-kernel")
            .arg(&bin),
    );
    let (a, b) = (
        H5adReader::open(&o1).expect("a"),
        H5adReader::open(&o2).expect("b"),
    );
    assert_eq!(
        a.transition_matrix("T_fwd").expect("T"),
        b.transition_matrix("T_fwd").expect("T")
    );
    assert_eq!(
        a.info("obsm/T_fwd_umap").expect("projection").shape,
        vec![200, 2]
    );
    // The same projection under scVelo's key, for its stream plots.
    assert_eq!(
        a.dense("obsm/velocity_umap").expect("velocity_umap"),
        a.dense("obsm/T_fwd_umap").expect("T_fwd_umap")
    );
    let rnd = a.transition_matrix("T_fwd_rnd").expect("random control");
    assert_ne!(rnd, a.transition_matrix("T_fwd").expect("T"));
    // The input is untouched.
    assert!(!H5adReader::open(&input).expect("in").exists("obsp/T_fwd"));
}

#[test]
fn kernel_command_errors_name_the_problem() {
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let raw = dir.join("pancreas_3696x2000.h5ad");
    let d = tempdir();
    let out = cellfate()
        .arg("kernel")
        .arg(&raw)
        .arg("-o")
        .arg(d.path().join("x.h5ad"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VelocityKernel")
            && err.contains("obsp[\"connectivities\"]")
            && err.contains("cellfate preprocess"),
        "{err}"
    );
    assert_eq!(err.matches("not found").count(), 1, "cause repeated: {err}");
    let out = cellfate()
        .arg("kernel")
        .arg(&raw)
        .arg("-o")
        .arg(d.path().join("x.h5ad"))
        .args(["--kernel", "0.5*velo"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kernel \"velo\""));
    assert!(!d.path().join("x.h5ad").exists());
}

/// The real-time kernel reads moscot's transport maps (`uns["tmap_10_105"]`, ...) from the
/// Schiebinger serum time course: rows of day-10 cells are the row-normalised map to day 10.5.
#[test]
fn real_time_kernel_uses_moscot_couplings() {
    use cellfate::kernels::real_time::{SelfTransitions, Threshold};
    use cellfate::kernels::{Kernel, RealTimeParams};
    let Some(dir) = require_shared("data/schiebinger_serum_moscot") else {
        return;
    };
    let r = H5adReader::open(dir.join("moscot_temporal_tests_250cells_2024.h5ad")).expect("open");
    let k = RealTimeParams {
        threshold: Threshold::None,
        self_transitions: SelfTransitions::Diagonal,
        ..Default::default()
    };
    let t = k.compute(&r).expect("real-time kernel").transition;
    let days = cellfate::kernels::CellSource::obs_labels(&r, "day").expect("day");
    let d10: Vec<usize> = (0..days.len())
        .filter(|&i| days[i].as_deref() == Some("10.0"))
        .collect();
    let d105: Vec<usize> = (0..days.len())
        .filter(|&i| days[i].as_deref() == Some("10.5"))
        .collect();
    let (na, nb, tmap) = r.dense("uns/tmap_10_105").expect("tmap");
    assert_eq!((na, nb), (d10.len(), d105.len()));
    let mut worst: f64 = 0.0;
    for (a, &i) in d10.iter().enumerate() {
        let s: f64 = tmap[a * nb..(a + 1) * nb].iter().sum();
        for (b, &j) in d105.iter().enumerate() {
            worst = worst.max((t.as_csr().get(i, j) - tmap[a * nb + b] / s).abs());
        }
    }
    assert!(worst < 1e-12, "{worst:e}");
    // The auto threshold keeps at least one transition per row.
    let auto = RealTimeParams {
        self_transitions: SelfTransitions::Diagonal,
        ..Default::default()
    };
    let ta = auto.compute(&r).expect("auto").transition;
    assert!(ta.nnz() < t.nnz() && (0..ta.n_cells()).all(|i| !ta.row(i).0.is_empty()));
}
