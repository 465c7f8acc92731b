//! Figures and HTML reports: `run --report --plots` on the simulated demo, `cellfate plot` and
//! `cellfate report` on CellRank's own output (the pancreas reference), batch index pages.

use crate::common::{cellfate, reference, simulate_cli, succeed, tempdir};

fn is_png(p: &std::path::Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.len() > 2000 && &b[1..4] == b"PNG")
}

/// The demo run writes every figure the issue lists (PNG and SVG) and a self-contained report.
#[test]
fn demo_run_writes_figures_and_a_report() {
    let d = tempdir();
    let out = d.path().join("demo.h5ad");
    let figs = d.path().join("figs");
    let html = d.path().join("report.html");
    succeed(
        cellfate()
            .args(["run", "--demo", "--demo-cells", "1200", "-q", "-o"])
            .arg(&out)
            .arg("--plots")
            .arg(&figs)
            .arg("--report")
            .arg(&html),
    );
    let r = cellfate::io::H5adReader::open(&out).expect("output");
    let cellfate::io::Element::Strings {
        values: lineages, ..
    } = r.read("uns/lineages_fwd_names").expect("lineages")
    else {
        panic!("lineage names")
    };
    let mut want: Vec<String> = [
        "embedding_clusters",
        "embedding_macrostates",
        "embedding_terminal_states",
        "spectrum",
        "coarse_T",
        "drivers",
        "random_walks",
        // The demo has no embedding: `run --plots` lays out a UMAP for the figures.
        "velocity_stream_umap",
        "aggregated_fates",
    ]
    .map(String::from)
    .to_vec();
    want.extend(lineages.iter().map(|l| format!("fate_{l}")));
    for name in &want {
        assert!(is_png(&figs.join(format!("{name}.png"))), "{name}.png");
        let svg = std::fs::read_to_string(figs.join(format!("{name}.svg"))).expect(name);
        assert!(svg.starts_with("<svg"), "{name}.svg");
    }
    // The spectrum marks the number of macrostates computed (issue 24).
    let spectrum = std::fs::read_to_string(figs.join("spectrum.svg")).expect("spectrum");
    assert!(
        spectrum.contains("macrostates computed"),
        "the spectrum does not mark the macrostates"
    );
    // The demo has no embedding of its own: the run laid out a UMAP for the figures.
    assert!(cellfate::io::H5adReader::open(&out)
        .expect("output")
        .exists("obsm/X_umap"));
    let page = std::fs::read_to_string(&html).expect("report");
    for needle in [
        "<h2>Terminal states</h2>",
        "<h2>Figures</h2>",
        "<h2>Driver genes</h2>",
        "<h2>Timings</h2>",
        "<h2>Parameters</h2>",
        "Schur decomposition",
        "Peak memory",
    ] {
        assert!(page.contains(needle), "report lacks {needle}");
    }
    assert_eq!(page.matches("<svg").count(), want.len());
    for l in &lineages {
        assert!(page.contains(l.as_str()), "report lacks lineage {l}");
    }
    // Self-contained: no external resources.
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    // Nothing temporary left behind.
    for e in std::fs::read_dir(d.path())
        .expect("dir")
        .chain(std::fs::read_dir(&figs).expect("figs"))
    {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "left {name}");
    }
}

/// CellRank's own output (no `T_fwd`, no eigendecomposition): `plot` draws what is there,
/// `report` says what is missing; a missing basis is a clear error.
#[test]
fn plot_and_report_on_a_cellrank_file() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let d = tempdir();
    let figs = d.path().join("figs");
    let res = succeed(
        cellfate()
            .arg("plot")
            .arg(r.path())
            .arg("-o")
            .arg(&figs)
            .args(["--format", "png"]),
    );
    for name in [
        "embedding_clusters",
        "embedding_macrostates",
        "embedding_terminal_states",
    ] {
        assert!(is_png(&figs.join(format!("{name}.png"))), "{name}");
    }
    assert!(String::from_utf8_lossy(&res.stdout).contains("no obsp[\"T_fwd\"]"));
    let html = d.path().join("r.html");
    succeed(
        cellfate()
            .arg("report")
            .arg(r.path())
            .arg("-o")
            .arg(&html)
            .args(["--n-walks", "0"]),
    );
    let page = std::fs::read_to_string(&html).expect("report");
    assert!(page.contains("<h2>Terminal states</h2>") && page.contains("Alpha"));
    let res = cellfate()
        .arg("plot")
        .arg(r.path())
        .arg("-o")
        .arg(&figs)
        .args(["--basis", "tsne"])
        .output()
        .expect("runs");
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("X_tsne") && err.contains("X_pca"), "{err}");
}

/// q-values below 1e-300 (a subnormal `6.48e-316` or 0 in a file CellRank wrote) print as
/// `< 1e-300` in the report, never as digits no test can resolve.
#[test]
fn report_prints_tiny_q_values_as_below_1e_300() {
    use cellfate::io::{DataFrame, Element, H5adEdit, H5adReader};
    let Some(r) = reference("dentategyrus_200") else {
        return;
    };
    let d = tempdir();
    let genes = r.var_names().expect("genes");
    let n = genes.len();
    let mut df = DataFrame::with_index(genes);
    df.set_column(
        "Granule mature_corr",
        Element::from_f64((0..n).map(|g| 1.0 - g as f64 / n as f64).collect()),
    );
    df.set_column(
        "Granule mature_qval",
        Element::from_f64(
            (0..n)
                .map(|g| match g {
                    0 => 6.48e-316,
                    1 => 0.0,
                    _ => 1.234e-5,
                })
                .collect(),
        ),
    );
    let out = d.path().join("drivers.h5ad");
    let mut edit = H5adEdit::new(r.path());
    edit.set("varm/terminal_lineage_drivers", Element::DataFrame(df));
    edit.write_to(&out).expect("written");
    let page = cellfate::report::html::report(
        &H5adReader::open(&out).expect("opens"),
        "q-values",
        &cellfate::report::PlotOptions {
            n_walks: 0,
            ..Default::default()
        },
    )
    .expect("report");
    assert_eq!(page.matches("&lt; 1e-300").count(), 2, "two tiny q-values");
    assert!(page.contains("1.23e-5"));
    assert!(
        !page.contains("e-316") && !page.contains("0.00e0"),
        "raw tiny q-value printed"
    );
}

/// A `--cluster-key` that names no categorical obs column is an error naming it (exit 2,
/// nothing written), for `plot` and `report` alike; the default `clusters` may be missing.
#[test]
fn an_unknown_cluster_key_is_an_error_naming_it() {
    let d = tempdir();
    let out = d.path().join("demo.h5ad");
    succeed(
        cellfate()
            .args(["run", "--demo", "--demo-cells", "600", "-q", "-o"])
            .arg(&out),
    );
    for (cmd, target) in [("plot", "figs"), ("report", "r.html")] {
        let o = cellfate()
            .args([cmd])
            .arg(&out)
            .arg("-o")
            .arg(d.path().join(target))
            .args(["--cluster-key", "no_such_column"])
            .output()
            .expect("cellfate");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("--cluster-key")
                && err.contains("no_such_column")
                && err.contains("clusters"),
            "{cmd}: {err}"
        );
        assert!(!d
            .path()
            .join(target)
            .join("embedding_clusters.png")
            .exists());
    }
}

/// Fate-probability figures draw the cells from low to high probability, so that high
/// probabilities are on top (issue 24: drawn in file order, they hid under low ones).
#[test]
fn fate_figures_draw_high_probabilities_last() {
    use cellfate::report::{figures, Plot, PlotOptions};
    let d = tempdir();
    let out = d.path().join("demo.h5ad");
    succeed(
        cellfate()
            .args(["run", "--demo", "--demo-cells", "600", "-q", "-o"])
            .arg(&out),
    );
    let r = cellfate::io::H5adReader::open(&out).expect("output");
    let (n, l, b) = r.dense("obsm/lineages_fwd").expect("fates");
    let (figs, _) = figures(&r, &PlotOptions::default()).expect("figures");
    let (xy, _) = cellfate::report::embedding(&r, None).expect("embedding");
    let mut checked = 0;
    for (j, f) in figs
        .iter()
        .filter(|f| f.name.starts_with("fate_"))
        .enumerate()
    {
        let Plot::Embedding { xy: drawn, .. } = &f.plot else {
            panic!("{}: not an embedding", f.name)
        };
        assert_eq!(drawn.len(), n);
        // The value of each drawn point (the embedding's points are distinct here).
        let value = |p: &[f64; 2]| {
            let i = xy.iter().position(|q| q == p).expect("a cell");
            b[i * l + j]
        };
        let values: Vec<f64> = drawn.iter().map(value).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{}: not drawn in ascending order",
            f.name
        );
        checked += 1;
    }
    assert_eq!(checked, l);
}

/// With one terminal state every fate probability is 1: the map's title says why instead of
/// showing a uniformly coloured map without comment (issue 24).
#[test]
fn a_single_lineage_map_says_so() {
    let d = tempdir();
    let sim = d.path().join("linear.h5ad");
    simulate_cli(&sim, &["--cells", "600", "--fates", "1"]);
    let out = d.path().join("run.h5ad");
    let figs = d.path().join("figs");
    succeed(
        cellfate()
            .args(["-q", "run"])
            .arg(&sim)
            .arg("-o")
            .arg(&out)
            .arg("--plots")
            .arg(&figs),
    );
    let fates: Vec<_> = std::fs::read_dir(&figs)
        .expect("figures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "svg")
                && p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with("fate_"))
        })
        .collect();
    assert_eq!(fates.len(), 1, "{fates:?}");
    let svg = std::fs::read_to_string(&fates[0]).expect("svg");
    assert!(
        svg.contains("the only terminal state"),
        "{}",
        fates[0].display()
    );
}
