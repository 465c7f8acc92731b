//! `cellfate vectorfield`, `topography` and `potential` on the simulator (issue 21): dynamo's
//! keys, the landscape against the simulation's true time (Waddington potential Spearman
//! ≤ −0.9, developmental entropy ≤ −0.8, the thresholds), fixed points of a 2-D field,
//! fates by integrating the field (≥ 90 % of committed cells end in their true fate), the
//! animation, determinism, and bad input named.

use cellfate::io::{Element, H5adReader};
use cellfate::kernels::CellSource;

use crate::common::{cellfate, spearman, succeed, tempdir};

#[test]
fn vector_field_topography_and_landscape_on_the_demo() {
    let d = tempdir();
    let p = |s: &str| d.path().join(s);
    succeed(
        cellfate()
            .args(["-q", "run", "--demo", "-o"])
            .arg(p("demo.h5ad")),
    );
    let out = succeed(
        cellfate()
            .arg("vectorfield")
            .arg(p("demo.h5ad"))
            .arg("-o")
            .arg(p("vf.h5ad")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("151 control points"), "{text}");
    succeed(
        cellfate()
            .arg("potential")
            .arg(p("vf.h5ad"))
            .arg("-o")
            .arg(p("pot.h5ad")),
    );
    let r = H5adReader::open(p("pot.h5ad")).expect("output");
    for slot in [
        "obsm/velocity_pca",
        "uns/VecFld_pca/X_ctrl",
        "uns/VecFld_pca/C",
        "uns/VecFld_pca/beta",
        "uns/VecFld_pca/V",
        "uns/VecFld_pca/P",
        "obsm/velocity_pca_SparseVFC",
        "obs/control_point_pca",
        "obs/inlier_prob_pca",
        "obs/speed_pca",
        "obs/divergence_pca",
        "obs/curl_pca",
        "obs/acceleration_pca",
        "obs/curvature_pca",
        "obs/pca_ddhodge_potential",
        "obs/pca_ddhodge_div",
        "obs/potential",
        "obs/entropy",
    ] {
        assert!(r.exists(slot), "{slot} missing");
    }
    let t = r.obs_f64("true_time").expect("true time");
    let pot = r.obs_f64("potential").expect("potential");
    let ent = r.obs_f64("entropy").expect("entropy");
    let dd = r.obs_f64("pca_ddhodge_potential").expect("ddhodge");
    let (sp, se) = (spearman(&pot, &t), spearman(&ent, &t));
    eprintln!("Spearman with true time: Waddington potential {sp:.4}, entropy {se:.4}");
    assert!(sp <= -0.9, "potential: {sp}");
    assert!(se <= -0.8, "entropy: {se}");
    assert!(
        (spearman(&dd, &t) + sp).abs() < 1e-12,
        "dynamo's sign is the opposite"
    );
    // The control points are cells, marked as such.
    let ctrl = r.obs_f64("control_point_pca").expect("control points");
    assert_eq!(ctrl.iter().filter(|&&c| c != 0.0).count(), 151);
    // The same field bit for bit at two thread counts.
    succeed(
        cellfate()
            .args(["--threads", "1", "vectorfield"])
            .arg(p("demo.h5ad"))
            .arg("-o")
            .arg(p("vf1.h5ad")),
    );
    let c = |f: &str| match H5adReader::open(p(f))
        .expect("out")
        .read("uns/VecFld_pca/C")
    {
        Ok(Element::Dense(a)) => a.data.to_f64(),
        other => panic!("C: {other:?}"),
    };
    assert_eq!(c("vf.h5ad"), c("vf1.h5ad"));
    // Integrating the field from the committed cells (the intermediate clusters, past the
    // branch point) ends in their true fate (issue 21: >= 90 %; measured 98.8 %).
    let out = succeed(
        cellfate()
            .arg("predict-fate")
            .arg(p("vf.h5ad"))
            .args([
                "--from-cluster",
                "Intermediate_Alpha",
                "--from-cluster",
                "Intermediate_Beta",
                "--from-cluster",
                "Intermediate_Gamma",
                "--animate",
            ])
            .arg(p("fates.gif"))
            .arg("-o")
            .arg(p("fate.h5ad")),
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let r = H5adReader::open(p("fate.h5ad")).expect("fate output");
    let names = r.obs_names().expect("names");
    let fate = r.obs_labels("true_fate").expect("true fate");
    let init = match r.read("uns/fate_pca/init_cells").expect("init") {
        Element::Strings { values, .. } => values,
        other => panic!("init_cells: {other:?}"),
    };
    let end = match r.read("uns/fate_pca/end_cell").expect("end") {
        Element::Dense(a) => a.data.to_f64(),
        other => panic!("end_cell: {other:?}"),
    };
    assert_eq!(init.len(), 1038);
    let agree = init
        .iter()
        .zip(&end)
        .filter(|(c, &e)| {
            let i = names.iter().position(|n| n == *c).expect("a cell");
            fate[i] == fate[e as usize]
        })
        .count() as f64
        / init.len() as f64;
    eprintln!(
        "integrated fate = true fate for {:.1} % of committed cells",
        100.0 * agree
    );
    assert!(agree >= 0.9, "{agree}");
    assert!(r.exists("uns/fate_pca/prediction") && r.exists("obs/fate_pca_end_cluster"));
    let gif = std::fs::read(p("fates.gif")).expect("gif");
    assert!(
        gif.starts_with(b"GIF89a") && gif.len() > 50_000,
        "{}",
        gif.len()
    );
    // Topography of a 2-D field: converged roots with dynamo's types.
    succeed(
        cellfate()
            .arg("vectorfield")
            .arg(p("demo.h5ad"))
            .args(["--dims", "2", "-o"])
            .arg(p("vf2.h5ad")),
    );
    let out = succeed(
        cellfate()
            .arg("topography")
            .arg(p("vf2.h5ad"))
            .arg("-o")
            .arg(p("topo.h5ad")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    let r = H5adReader::open(p("topo.h5ad")).expect("topography");
    let ftype = match r.read("uns/VecFld_pca/ftype").expect("ftype") {
        Element::Dense(a) => a.data.to_f64(),
        other => panic!("ftype: {other:?}"),
    };
    assert!(!ftype.is_empty() && ftype.iter().all(|f| [-1.0, 0.0, 1.0].contains(f)));
    assert!(r.exists("uns/VecFld_pca/Xss") && r.exists("uns/VecFld_pca/xlim"));
    assert!(r.exists("uns/VecFld_pca/NCx/0") && r.exists("uns/VecFld_pca/NCy/0"));
}

#[test]
fn vector_field_commands_name_bad_input() {
    let d = tempdir();
    let p = |s: &str| d.path().join(s);
    succeed(
        cellfate()
            .args(["-q", "run", "--demo", "-o"])
            .arg(p("demo.h5ad")),
    );
    let fail = |args: &[&str], want: &str| {
        let out = cellfate().args(args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    let demo = p("demo.h5ad").display().to_string();
    let out = p("x.h5ad").display().to_string();
    fail(
        &["vectorfield", &demo, "-o", &out, "--basis", "umap"],
        "obsm[\"X_umap\"] is missing",
    );
    fail(
        &["vectorfield", &demo, "-o", &out, "--dims", "99"],
        "--dims 99",
    );
    fail(
        &["topography", &demo, "-o", &out],
        "uns[\"VecFld_pca\"] is missing",
    );
    let vf = p("vf.h5ad").display().to_string();
    succeed(cellfate().args(["-q", "vectorfield", &demo, "-o", &vf]));
    fail(
        &["predict-fate", &vf, "-o", &out, "--from-cluster", "Nowhere"],
        "no cell of cluster \"Nowhere\"",
    );
    assert!(!p("x.h5ad").exists(), "nothing written on failure");
}

/// `run --vectorfield` (and TOML `[vectorfield]`) computes, in the same pass as the fate
/// mapping, exactly what `vectorfield` → `topography` → `potential` write when run one after
/// the other on the run's output: the same slots, bit for bit, and the summary says so.
#[test]
fn run_with_a_vector_field_equals_the_three_commands() {
    let d = tempdir();
    let p = |s: &str| d.path().join(s);
    let out = succeed(
        cellfate()
            .args(["run", "--demo", "--vectorfield", "-o"])
            .arg(p("all.h5ad")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("vector field (pca, 30 dimensions)") && text.contains("fixed points:"),
        "{text}"
    );
    for stage in ["vector field", "topography", "potential"] {
        assert!(
            text.contains(&format!("  {stage} ")),
            "stage {stage}: {text}"
        );
    }
    // In 30 dimensions no fixed point converges on the demo: the run says so, and how to
    // search in two.
    assert!(
        text.contains("fixed points: 0 stable, 0 saddle, 0 unstable")
            && text.contains("no fixed point converged")
            && text.contains("[vectorfield] dims = 2"),
        "{text}"
    );
    // The same run without the vector field, then the three commands.
    let sim = p("all.simulation.h5ad");
    succeed(
        cellfate()
            .args(["-q", "run"])
            .arg(&sim)
            .arg("-o")
            .arg(p("plain.h5ad")),
    );
    for (cmd, from, to) in [
        ("vectorfield", "plain.h5ad", "vf.h5ad"),
        ("topography", "vf.h5ad", "topo.h5ad"),
        ("potential", "topo.h5ad", "pot.h5ad"),
    ] {
        succeed(
            cellfate()
                .args(["-q", cmd])
                .arg(p(from))
                .arg("-o")
                .arg(p(to)),
        );
    }
    let a = H5adReader::open(p("all.h5ad")).expect("run output");
    let b = H5adReader::open(p("pot.h5ad")).expect("commands' output");
    for slot in [
        "obsm/velocity_pca",
        "uns/VecFld_pca/X_ctrl",
        "uns/VecFld_pca/C",
        "uns/VecFld_pca/V",
        "uns/VecFld_pca/Xss",
        "uns/VecFld_pca/ftype",
        "uns/VecFld_pca/Xss_eigenvalues",
        "obs/speed_pca",
        "obs/divergence_pca",
        "obs/curl_pca",
        "obs/pca_ddhodge_potential",
        "obs/potential",
        "obs/potential_pseudotime",
        "obs/entropy",
    ] {
        let (x, y) = (a.read(slot), b.read(slot));
        assert!(x.is_ok(), "{slot} missing from the run's output");
        assert_eq!(
            format!("{x:?}"),
            format!("{y:?}"),
            "{slot}: the run differs from the commands"
        );
    }
    // TOML: the table, printed by --dry-run, and its switches honoured.
    std::fs::write(
        p("vf.toml"),
        "[vectorfield]\nbasis = \"pca\"\ndims = 2\ntopography = false\n",
    )
    .expect("config");
    let dry = succeed(
        cellfate()
            .args(["run"])
            .arg(&sim)
            .arg("-o")
            .arg(p("toml.h5ad"))
            .arg("--config")
            .arg(p("vf.toml"))
            .arg("--dry-run"),
    );
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        printed.contains("[vectorfield]") && printed.contains("topography = false"),
        "{printed}"
    );
    succeed(
        cellfate()
            .args(["-q", "run"])
            .arg(&sim)
            .arg("-o")
            .arg(p("toml.h5ad"))
            .arg("--config")
            .arg(p("vf.toml")),
    );
    let t = H5adReader::open(p("toml.h5ad")).expect("toml output");
    assert!(t.exists("uns/VecFld_pca/C") && t.exists("obs/potential"));
    assert!(!t.exists("uns/VecFld_pca/Xss"), "topography = false");
    let (_, dims, _) = t.dense("uns/VecFld_pca/X_ctrl").expect("X_ctrl");
    assert_eq!(dims, 2, "dims = 2");
    // A basis the input lacks: an error naming it, before anything is written.
    let bad = cellfate()
        .args(["run"])
        .arg(&sim)
        .arg("-o")
        .arg(p("bad.h5ad"))
        .args(["--vectorfield", "umap"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("X_umap"), "{err}");
    assert!(!p("bad.h5ad").exists());
}
