//! Messages that do not mislead (issue 17, item 5): what the CLI prints on success and on
//! failure says what happened, in the terms of the command that prints it.

use crate::common::{cellfate, succeed, tempdir};

/// Runs `cmd` expecting exit code 2; returns stderr.
fn fails(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `preprocess -v` prints every stage's duration and, where known, the peak memory; the
/// sub-stages timed inside a stage have no peak of their own and print none (not `NaN`).
#[test]
fn preprocess_verbose_prints_no_nan() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    crate::common::write_simulation(&sim, 300, Some(80));
    let out = succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["-v", "--n-neighbors", "15", "-o"])
            .arg(d.path().join("pp.h5ad")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first moments"), "no sub-stage timings: {err}");
    assert!(
        !err.to_lowercase().contains("nan"),
        "NaN in the -v output: {err}"
    );
    for line in err.lines().filter(|l| l.contains(" MB")) {
        let mb = line
            .split("peak")
            .nth(1)
            .and_then(|s| s.trim().strip_suffix("MB"))
            .and_then(|s| s.trim().parse::<f64>().ok());
        assert!(mb.is_some_and(|m| m > 0.0), "bad peak line {line:?}");
    }
}

/// The `--flag`s a message suggests, with the subcommand each belongs to: flags inside a
/// backticked `` `cellfate SUB ...` `` belong to SUB, every other flag to `command` (the
/// command that printed the message).
fn suggested_flags(message: &str, command: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, part) in message.split('`').enumerate() {
        let owner = match part.strip_prefix("cellfate ") {
            Some(rest) if k % 2 == 1 => rest.split_whitespace().next().unwrap_or(command),
            _ => command,
        };
        let bytes = part.as_bytes();
        let mut i = 0;
        while let Some(at) = part[i..].find("--") {
            let s = i + at;
            let start_ok =
                s == 0 || !(bytes[s - 1].is_ascii_alphanumeric() || bytes[s - 1] == b'-');
            let mut e = s + 2;
            while e < bytes.len() && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'-') {
                e += 1;
            }
            if start_ok && e > s + 2 && bytes[s + 2].is_ascii_lowercase() {
                out.push((owner.to_string(), part[s..e].to_string()));
            }
            i = e.max(s + 2);
        }
    }
    out
}

/// The flags `cellfate SUB --help` lists.
fn flags_of(sub: &str) -> std::collections::BTreeSet<String> {
    let out = succeed(cellfate().args([sub, "--help"]));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    suggested_flags(&help, sub)
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

/// A failing run, macrostates, terminal-states, fates, preprocess and batch: every `--flag`
/// the error (and its hint) suggests is listed by `--help` of the command it belongs to (the
/// command that printed it, or the one it names as `` `cellfate SUB --flag` ``).
#[test]
fn every_suggested_flag_exists_on_the_command_that_prints_it() {
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let d = tempdir();
    let p = |name: &str| d.path().join(name);
    let a100 = data.join("adata_100.h5ad");
    let kernel = "0.8*velocity + 0.2*connectivity";
    let never = p("never.h5ad");
    let mut messages: Vec<(&str, String)> = Vec::new();
    // 1. The stability rule selects nothing: run, macrostates, terminal-states, batch.
    // CellRank's stability rule (the default `sinks` rule falls back instead of failing).
    let strict = [
        "--terminal-method",
        "stability",
        "--stability-threshold",
        "0.999999",
        "--n-cells",
        "5",
        "-q",
    ];
    messages.push((
        "run",
        fails(
            cellfate()
                .arg("run")
                .arg(&a100)
                .args(strict)
                .arg("-o")
                .arg(&never),
        ),
    ));
    messages.push((
        "macrostates",
        fails(
            cellfate()
                .arg("macrostates")
                .arg(&a100)
                .args(["--kernel", kernel])
                .args(strict)
                .arg("-o")
                .arg(&never),
        ),
    ));
    succeed(
        cellfate()
            .arg("macrostates")
            .arg(&a100)
            .args(["--kernel", kernel, "--n-cells", "5", "-q"])
            .args(["--terminal-method", "top_n", "--n-terminal", "1", "-o"])
            .arg(p("m.h5ad")),
    );
    messages.push((
        "terminal-states",
        fails(
            cellfate()
                .arg("terminal-states")
                .arg(p("m.h5ad"))
                .args(["--method", "stability", "--threshold", "0.999999"])
                .args(["--n-cells", "5", "-o"])
                .arg(&never),
        ),
    ));
    let out = cellfate()
        .args(["batch", "--out-dir"])
        .arg(p("batch"))
        .arg(&a100)
        .args(strict)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "batch: one failed sample");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p("batch").join("summary.json")).expect("summary.json"),
    )
    .expect("json");
    let err = summary["samples"][0]["error"]
        .as_str()
        .expect("error")
        .to_string();
    messages.push(("batch", err));
    // 2. Raw counts: too many neighbours (preprocess; run with a config); no pseudotime root.
    let sim = p("sim.h5ad");
    crate::common::write_simulation(&sim, 300, Some(80));
    messages.push((
        "preprocess",
        fails(
            cellfate()
                .arg("preprocess")
                .arg(&sim)
                .args(["--n-neighbors", "1000", "-o"])
                .arg(&never),
        ),
    ));
    std::fs::write(p("nn.toml"), "[upstream.preprocess]\nn_neighbors = 1000\n").expect("toml");
    messages.push((
        "run",
        fails(
            cellfate()
                .arg("run")
                .arg(&sim)
                .arg("--config")
                .arg(p("nn.toml"))
                .args(["-q", "-o"])
                .arg(&never),
        ),
    ));
    let pp = p("pp.h5ad");
    succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["-q", "--n-neighbors", "15", "-o"])
            .arg(&pp),
    );
    for cmd in ["run", "macrostates"] {
        messages.push((
            cmd,
            fails(
                cellfate()
                    .arg(cmd)
                    .arg(&pp)
                    .args(["--kernel", "pseudotime", "-q", "-o"])
                    .arg(&never),
            ),
        ));
    }
    // 3. Fates with cells that reach no terminal state: two disconnected blocks of cells,
    //    terminal cells in the first only.
    let n = 300;
    let mut trip = Vec::new();
    for i in 0..n {
        let block = if i < n / 2 { 0 } else { n / 2 };
        trip.push((i, i, 0.5));
        trip.push((i, block + (i - block + 1) % (n / 2), 0.5));
    }
    let t = cellfate::kernels::Csr::from_triplets(n, n, &trip).expect("csr");
    let blocks = p("blocks.h5ad");
    cellfate::io::H5adEdit::new(&pp)
        .set(
            "obsp/T_fwd",
            cellfate::io::Element::Sparse(cellfate::io::SparseArray::from_csr(&t)),
        )
        .write_to(&blocks)
        .expect("write");
    let names = cellfate::io::H5adReader::open(&blocks)
        .expect("open")
        .obs_names()
        .expect("names");
    std::fs::write(p("cells.csv"), format!("cell,state\n{},A\n", names[3])).expect("csv");
    succeed(
        cellfate()
            .arg("terminal-states")
            .arg(&blocks)
            .arg("--cells-file")
            .arg(p("cells.csv"))
            .arg("-o")
            .arg(p("term.h5ad")),
    );
    messages.push((
        "fates",
        fails(
            cellfate()
                .arg("fates")
                .arg(p("term.h5ad"))
                .arg("-o")
                .arg(&never),
        ),
    ));
    // Every suggestion exists; the tests above do suggest flags.
    let mut helps = std::collections::BTreeMap::new();
    let mut checked = 0;
    for (cmd, msg) in &messages {
        assert!(
            msg.contains("hint") || msg.contains("`cellfate"),
            "{cmd}: no suggestion in {msg}"
        );
        for (owner, flag) in suggested_flags(msg, cmd) {
            let known = helps
                .entry(owner.clone())
                .or_insert_with(|| flags_of(&owner));
            assert!(
                known.contains(&flag),
                "`cellfate {cmd}` suggests {flag} for `cellfate {owner}`, which has no such flag: {msg}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} flags suggested");
    // And the advice is the command's own: run and terminal-states spell top_n differently.
    assert!(messages[0]
        .1
        .contains("--terminal-method top_n --n-terminal 2"));
    assert!(messages[2].1.contains("--method top_n --n-states 2"));
}

#[test]
fn the_flag_parser_finds_flags_and_their_commands() {
    assert_eq!(
        suggested_flags(
            "use --method top_n (e.g. `cellfate kernel --kernel \"a\"`), 1-based, x--y",
            "terminal-states"
        ),
        vec![
            ("terminal-states".to_string(), "--method".to_string()),
            ("kernel".to_string(), "--kernel".to_string()),
        ]
    );
}

/// The library crates know nothing of the CLI: their messages name parameters in library
/// terms (`TerminalMethod::TopN { n_states }`, `n_cells`), never a `--flag` (except in a
/// backticked `` `cellfate SUB --flag` ``, which names its command).
#[test]
fn library_messages_name_no_flags() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stack = vec![root.join("estimators/src"), root.join("kernels/src")];
    let mut offenders = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            for (k, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                let stray: Vec<_> = suggested_flags(line, "-")
                    .into_iter()
                    .filter(|(owner, _)| owner == "-")
                    .collect();
                if !stray.is_empty() {
                    offenders.push(format!("{}:{}: {}", path.display(), k + 1, line.trim()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

/// A cluster key given by name that is missing or not categorical is an error listing the
/// categorical obs columns — from the CLI (`run`, `macrostates`, `cflare`), a TOML config and
/// the library — before anything is computed; without a key, a file with no `clusters`
/// column still runs (states named 0, 1, ...), silently as in CellRank.
#[test]
fn an_unknown_cluster_key_is_an_error_listing_the_categorical_columns() {
    use cellfate::estimator_io::{read_cluster_key, read_clusters, EstimatorIoError};
    use cellfate::io::H5adReader;
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let a100 = data.join("adata_100.h5ad");
    let d = tempdir();
    let never = d.path().join("never.h5ad");
    let check = |err: &str, key: &str, problem: &str| {
        assert!(
            err.contains(&format!("cluster_key \"{key}\"")) && err.contains(problem),
            "{err}"
        );
        assert!(
            err.contains("categorical obs columns are: clusters, age(days), clusters_enlarged"),
            "{err}"
        );
    };
    let err = fails(
        cellfate()
            .arg("run")
            .arg(&a100)
            .args(["--cluster-key", "nope", "-o"])
            .arg(&never),
    );
    check(&err, "nope", "does not exist");
    // Nothing ran: the error comes before the kernel.
    assert!(!err.contains("] kernel"), "{err}");
    let err = fails(
        cellfate()
            .arg("macrostates")
            .arg(&a100)
            .args([
                "--kernel",
                "connectivity",
                "--cluster-key",
                "dpt_pseudotime",
            ])
            .arg("-o")
            .arg(&never),
    );
    check(&err, "dpt_pseudotime", "is not categorical");
    let toml = d.path().join("c.toml");
    std::fs::write(&toml, "[estimators]\ncluster_key = \"Clusters\"\n").expect("toml");
    let err = fails(
        cellfate()
            .arg("run")
            .arg(&a100)
            .arg("--config")
            .arg(&toml)
            .arg("-o")
            .arg(&never),
    );
    check(&err, "Clusters", "does not exist");
    let k = d.path().join("k.h5ad");
    succeed(
        cellfate()
            .arg("kernel")
            .arg(&a100)
            .args(["--kernel", "0.8*velocity + 0.2*connectivity", "-o"])
            .arg(&k),
    );
    let err = fails(
        cellfate()
            .arg("cflare")
            .arg(&k)
            .args(["--cluster-key", "nope", "-o"])
            .arg(&never),
    );
    check(&err, "nope", "does not exist");
    assert!(!never.exists());
    // The library: the same typed error, from the adapter and from the pipeline.
    let r = H5adReader::open(&a100).expect("open");
    let e = read_clusters(&r, "nope").expect_err("missing key");
    assert!(
        matches!(&e, EstimatorIoError::ClusterKey { key, categorical, .. }
            if key == "nope" && categorical.len() == 3),
        "{e}"
    );
    assert!(read_cluster_key(&r, Some("clusters"))
        .expect("clusters")
        .is_some());
    let spec = cellfate::pipeline::FateMapSpec::from_toml("[estimators]\ncluster_key = \"nope\"\n")
        .expect("toml");
    let e = cellfate::pipeline::run(&a100, &never, &spec, &mut |_| {}).expect_err("missing key");
    assert!(
        matches!(
            e,
            cellfate::pipeline::PipelineError::EstimatorIo(EstimatorIoError::ClusterKey { .. })
        ),
        "{e}"
    );
    // No key and no `clusters` column: silently unnamed (CellRank's default).
    let Some(dyngen) = crate::common::require_shared("data/dyngen_bifurcating_sim") else {
        return;
    };
    let r = H5adReader::open(dyngen.join("bifurcating.h5ad")).expect("open");
    assert!(read_cluster_key(&r, None).expect("no error").is_none());
}

/// One terminal state: every fate probability is 1, so `run` and `drivers` skip the drivers
/// with a note (no table written, no "drivers" line) instead of ranking rounding noise.
#[test]
fn drivers_of_a_single_lineage_are_skipped_with_a_note() {
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let d = tempdir();
    let out = d.path().join("one.h5ad");
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(data.join("adata_200.h5ad"))
            .args([
                "--n-cells",
                "5",
                "--terminal-method",
                "top_n",
                "--n-terminal",
                "1",
            ])
            .args(["-q", "-o"])
            .arg(&out),
    );
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        text.contains("warnings:\n")
            && text
                .contains("\n  lineage drivers skipped: lineage drivers need at least 2 lineages"),
        "{text}"
    );
    assert!(!text.contains("  drivers "), "drivers printed: {text}");
    let r = cellfate::io::H5adReader::open(&out).expect("output");
    assert!(r.exists("obsm/lineages_fwd"));
    assert!(!r.exists("varm/terminal_lineage_drivers"));
    let again = d.path().join("drivers.h5ad");
    let res = succeed(
        cellfate()
            .arg("drivers")
            .arg(&out)
            .arg("--csv")
            .arg(d.path().join("table.csv"))
            .arg("-o")
            .arg(&again),
    );
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(text.contains("lineage drivers skipped"), "{text}");
    assert!(!d.path().join("table.csv").exists());
    let r = cellfate::io::H5adReader::open(&again).expect("output");
    assert!(!r.exists("varm/terminal_lineage_drivers"));
}

/// The eigengap is said one way everywhere: `uns` keeps CellRank's 0-based index `i`; the
/// console, the JSON summary, the spectrum plot (SVG) and the notes say "after λ(i+1) …
/// → i+1 states suggested"; the macrostates computed beyond the suggestion are explained.
#[test]
fn the_eigengap_is_said_the_same_way_everywhere() {
    use cellfate::estimators::gpcca::Eigengap;
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let d = tempdir();
    let input = data.join("adata_200.h5ad");
    let out = d.path().join("a.h5ad");
    let figs = d.path().join("figs");
    let json = succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .args(["--n-cells", "5", "--json", "-q", "-o"])
            .arg(&out)
            .arg("--plots")
            .arg(&figs),
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let r = cellfate::io::H5adReader::open(&out).expect("output");
    let cellfate::io::Element::Scalar(stored) = r
        .read("uns/eigendecomposition_fwd/eigengap")
        .expect("eigengap")
    else {
        panic!("eigengap is not a scalar")
    };
    let stored = stored.get_f64(0) as usize;
    let gap = Eigengap::from_index(stored);
    let said = gap.to_string();
    let j = &v["estimators"]["eigengap"];
    assert_eq!(j["index"], stored, "{j}");
    assert_eq!(j["after_eigenvalue"], stored + 1, "{j}");
    assert_eq!(j["suggested_states"], stored + 1, "{j}");
    let text = succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .args(["--n-cells", "5", "-q", "-o"])
            .arg(d.path().join("b.h5ad")),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    let schur_line = text
        .lines()
        .find(|l| l.starts_with("Schur:"))
        .expect("Schur line");
    assert!(schur_line.ends_with(&said), "{schur_line}");
    assert!(!schur_line.contains("eigengap 0"), "{schur_line}");
    let svg = std::fs::read_to_string(figs.join("spectrum.svg")).expect("spectrum.svg");
    assert!(svg.contains(&said), "the spectrum plot says otherwise");
    // This file's gap suggests 1 state; `n_states = auto` computes 3 (minChi) and says why,
    // in the same words.
    let m = v["estimators"]["n_macrostates"].as_u64().expect("n") as usize;
    if gap.suggested_states < m {
        let why = format!("n_states auto: {said} (too few to tell a start from two ends)");
        assert!(text.contains(&why), "{text}");
        let notes = v["warnings"].to_string();
        assert!(notes.contains(&why), "{notes}");
    }
}
