//! Shared helpers: locating `../shared`, skipping (locally) or failing (under `CI=true`)
//! when it is missing, and temporary directories.

use std::path::PathBuf;

/// `../shared` beside the repository (override with `CELLFATE_SHARED`).
pub(crate) fn shared_dir() -> PathBuf {
    std::env::var_os("CELLFATE_SHARED").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        PathBuf::from,
    )
}

/// True when running under CI (`CI=true`), where missing inputs are failures, not skips.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `../shared/<sub>` if it exists. Under CI a missing folder fails the test; elsewhere the
/// test is skipped with a message (returns `None`).
pub(crate) fn require_shared(sub: &str) -> Option<PathBuf> {
    let p = shared_dir().join(sub);
    if p.exists() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "{} is missing; CI must run with ../shared beside the repository",
        p.display()
    );
    eprintln!("skipping: {} not found", p.display());
    None
}

/// Every `.h5ad` file under `../shared/data`, sorted.
pub(crate) fn data_files() -> Vec<PathBuf> {
    let Some(root) = require_shared("data") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable data dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "h5ad") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A fresh temporary directory.
pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// The `cellfate` binary built for these tests.
pub(crate) fn cellfate() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_cellfate"))
}

/// Runs a command and returns its output; fails the test with the command's stderr unless it
/// exits with success.
pub(crate) fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `../shared/reference/<name>/reference.h5ad`, or `None` (skip) when missing outside CI.
pub(crate) fn reference(name: &str) -> Option<cellfate::io::H5adReader> {
    let dir = require_shared(&format!("reference/{name}"))?;
    Some(cellfate::io::H5adReader::open(dir.join("reference.h5ad")).expect("reference opens"))
}

/// A string-array slot (e.g. `uns/lineages_fwd_names`).
pub(crate) fn strings(r: &cellfate::io::H5adReader, slot: &str) -> Vec<String> {
    match r.read(slot).expect(slot) {
        cellfate::io::Element::Strings { values, .. } => values,
        other => panic!("{slot}: expected strings, found {}", other.encoding()),
    }
}

/// Writes a seeded simulation of `n_cells` cells (default genes unless `n_genes` is given) to
/// `path` and returns it.
pub(crate) fn write_simulation(
    path: &std::path::Path,
    n_cells: usize,
    n_genes: Option<usize>,
) -> cellfate::sim::SimData {
    let defaults = cellfate::sim::SimParams::default();
    let s = cellfate::sim::simulate(&cellfate::sim::SimParams {
        n_cells,
        n_genes: n_genes.unwrap_or(defaults.n_genes),
        ..defaults
    })
    .expect("simulate");
    cellfate::io::write_new(path, &s.to_elements()).expect("write the simulation");
    s
}

/// The first interpreter of `candidates` that can `import` the given modules. None found:
/// the test fails under CI (with `missing`) and is skipped with `hint` elsewhere.
pub(crate) fn find_python(
    candidates: impl IntoIterator<Item = PathBuf>,
    import: &str,
    missing: &str,
    hint: &str,
) -> Option<PathBuf> {
    for p in candidates {
        let ok = std::process::Command::new(&p)
            .args(["-c", &format!("import {import}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    assert!(!in_ci(), "{missing}");
    eprintln!("skipping: {hint}");
    None
}

/// The Python of `.venv-cellrank` (CellRank 2.3.3, scanpy, scVelo 0.3.4; created by
/// scripts/setup.sh under CI or with CELLFATE_CELLRANK=1).
pub(crate) fn cellrank_python() -> Option<PathBuf> {
    find_python(
        [PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-cellrank/bin/python")],
        "cellrank, scanpy, scvelo",
        "CellRank venv missing; scripts/setup.sh creates .venv-cellrank under CI=true",
        "no .venv-cellrank (run CELLFATE_CELLRANK=1 bash scripts/setup.sh)",
    )
}

/// sin of the largest principal angle between the column spaces of two row-major n × k1 and
/// n × k2 matrices, over their first `k` columns.
pub(crate) fn subspace_sin(n: usize, k: usize, a: (&[f64], usize), b: (&[f64], usize)) -> f64 {
    let q = |(m, kk): (&[f64], usize)| {
        nalgebra::DMatrix::from_fn(n, k, |i, j| m[i * kk + j])
            .qr()
            .q()
    };
    let smin = (q(a).transpose() * q(b))
        .singular_values()
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    (1.0 - smin * smin).max(0.0).sqrt()
}

/// Fate-mapping flags of the runs on small simulations: the two most stable of 4 macrostates
/// are the terminal states, named after the `clusters` of their `n_cells` cells; quiet.
pub(crate) fn small_run_flags(n_cells: &'static str) -> [&'static str; 11] {
    [
        "--cluster-key",
        "clusters",
        "--n-states",
        "4",
        "--terminal-method",
        "top_n",
        "--n-terminal",
        "2",
        "--n-cells",
        n_cells,
        "-q",
    ]
}

/// `cellfate simulate -q ARGS -o path` (the CLI's simulator), which must succeed.
pub(crate) fn simulate_cli(path: &std::path::Path, args: &[&str]) {
    succeed(
        cellfate()
            .args(["simulate", "-q"])
            .args(args)
            .arg("-o")
            .arg(path),
    );
}

/// Everything under `dir` (links not followed): kind, size, modification time and bytes.
pub(crate) fn snapshot(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<std::path::PathBuf, (String, u64, std::time::SystemTime, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let mtime = m.modified().expect("mtime");
            let t = m.file_type();
            if t.is_dir() {
                stack.push(p.clone());
                out.insert(p, ("dir".into(), 0, mtime, Vec::new()));
            } else if t.is_file() {
                let bytes = std::fs::read(&p).expect("read");
                out.insert(p, ("file".into(), m.len(), mtime, bytes));
            } else if t.is_symlink() {
                let target = std::fs::read_link(&p).expect("link");
                let bytes = target.as_os_str().as_encoded_bytes().to_vec();
                out.insert(p, ("link".into(), 0, mtime, bytes));
            } else {
                out.insert(p, ("special".into(), 0, mtime, Vec::new()));
            }
        }
    }
    out
}

/// Runs `cmd` (stdin closed), killing it after `limit`: a hang fails the case.
pub(crate) fn run_bounded(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    let d = tempdir();
    let (o, e) = (d.path().join("out"), d.path().join("err"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&o).expect("stdout"))
        .stderr(std::fs::File::create(&e).expect("stderr"))
        .spawn()
        .expect("starts");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: no answer within {limit:?} (killed)");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&o).expect("stdout"),
        stderr: std::fs::read(&e).expect("stderr"),
    }
}

/// Spearman's rank correlation (ranks by sort order: samples without ties).
pub(crate) fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let rank = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Every slot of an `.h5ad` file (dataframe columns one by one), but the run's own record
/// (`uns["cellfate"]`) and its wall-clock timings.
pub(crate) fn slots(r: &cellfate::io::H5adReader) -> Vec<String> {
    let mut v = vec!["X".to_string()];
    for g in ["obs", "var"] {
        for k in r.columns(g).expect("columns") {
            v.push(format!("{g}/{k}"));
        }
    }
    for g in ["obsm", "obsp", "varm", "layers", "uns"] {
        for k in r.keys(g).unwrap_or_default() {
            v.push(format!("{g}/{k}"));
        }
    }
    v.retain(|s| s != "uns/cellfate" && s != cellfate::pipeline::TIMINGS_SLOT);
    v.sort();
    v
}

/// The two files hold the same slots ([`slots`]) with the same values (compared as Debug
/// text, so NaN equals NaN: absorption times of absorbing cells). `what` names the pair.
pub(crate) fn same_content(a: &cellfate::io::H5adReader, b: &cellfate::io::H5adReader, what: &str) {
    assert_eq!(slots(a), slots(b), "{what}: the same slots");
    for slot in slots(a) {
        let (x, y) = match slot.split_once('/') {
            Some((df @ ("obs" | "var"), col)) => (a.column(df, col), b.column(df, col)),
            _ => (a.read(&slot), b.read(&slot)),
        };
        assert_eq!(
            format!("{:?}", x.expect("first file")),
            format!("{:?}", y.expect("second file")),
            "{what}: slot {slot} differs"
        );
    }
}
