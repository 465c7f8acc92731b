//! Issue 25 item 4: outputs compressed on request (`--compression gzip[:LEVEL]`, a run
//! config's `compression`): the same values, smaller files, the filters on the datasets
//! written, slots copied unchanged keeping their encoding, the flag overriding the config.

use std::path::Path;

use cellfate::io::H5adReader;
use hdf5::filters::Filter;

use crate::common::{cellfate, tempdir};

fn ok(args: &[&str]) {
    let out = cellfate().args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two files hold the same slots with the same values.
fn same_content(a: &Path, b: &Path) {
    crate::common::same_content(
        &H5adReader::open(a).expect("a"),
        &H5adReader::open(b).expect("b"),
        &format!("{} against {}", a.display(), b.display()),
    );
}

fn filters(file: &Path, dataset: &str) -> Vec<Filter> {
    let f = hdf5::File::open(file).expect("opens");
    let out = f.dataset(dataset).expect(dataset).filters();
    f.close().expect("closes");
    out
}

#[test]
fn compressed_outputs_hold_the_same_values_in_less_space() {
    let d = tempdir();
    let p = |s: &str| d.path().join(s);
    let s = |s: &str| p(s).display().to_string();
    ok(&[
        "simulate",
        "--cells",
        "1500",
        "--genes",
        "40",
        "-o",
        &s("raw.h5ad"),
    ]);
    ok(&["preprocess", &s("raw.h5ad"), "-o", &s("pp.h5ad"), "-q"]);
    ok(&[
        "--compression",
        "gzip",
        "preprocess",
        &s("raw.h5ad"),
        "-o",
        &s("ppz.h5ad"),
        "-q",
    ]);
    same_content(&p("pp.h5ad"), &p("ppz.h5ad"));
    let size = |f: &str| std::fs::metadata(p(f)).expect("size").len();
    assert!(
        size("ppz.h5ad") * 10 < size("pp.h5ad") * 7,
        "gzip: {} against {} bytes",
        size("ppz.h5ad"),
        size("pp.h5ad")
    );
    assert_eq!(
        filters(&p("ppz.h5ad"), "layers/Ms"),
        vec![Filter::Shuffle, Filter::Deflate(4)]
    );
    assert!(filters(&p("pp.h5ad"), "layers/Ms").is_empty());
    // A run config's compression; the transition matrix is new, Ms is copied as stored.
    std::fs::write(p("c.toml"), "compression = \"gzip:1\"\n").expect("config");
    ok(&[
        "run",
        &s("pp.h5ad"),
        "-o",
        &s("run1.h5ad"),
        "--config",
        &s("c.toml"),
        "-q",
    ]);
    assert_eq!(
        filters(&p("run1.h5ad"), "obsp/T_fwd/data"),
        vec![Filter::Shuffle, Filter::Deflate(1)]
    );
    assert!(filters(&p("run1.h5ad"), "layers/Ms").is_empty());
    // The flag overrides the config.
    ok(&[
        "--compression",
        "none",
        "run",
        &s("pp.h5ad"),
        "-o",
        &s("run0.h5ad"),
        "--config",
        &s("c.toml"),
        "-q",
    ]);
    assert!(filters(&p("run0.h5ad"), "obsp/T_fwd/data").is_empty());
    same_content(&p("run0.h5ad"), &p("run1.h5ad"));
    // A stage command without the flag copies the compressed slots as they are stored.
    ok(&["kernel", &s("ppz.h5ad"), "-o", &s("k.h5ad")]);
    assert_eq!(
        filters(&p("k.h5ad"), "layers/Ms"),
        vec![Filter::Shuffle, Filter::Deflate(4)]
    );
    assert!(filters(&p("k.h5ad"), "obsp/T_fwd/data").is_empty());
    // A bad setting names the flag or the key.
    let out = cellfate()
        .args(["--compression", "lzf", "inspect", &s("pp.h5ad")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--compression"));
    std::fs::write(p("bad.toml"), "compression = \"gzip:12\"\n").expect("config");
    let out = cellfate()
        .args([
            "run",
            &s("pp.h5ad"),
            "-o",
            &s("x.h5ad"),
            "--config",
            &s("bad.toml"),
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gzip:12") && err.contains("expected none, gzip"),
        "{err}"
    );
    assert!(!p("x.h5ad").exists());
}
