//! Issue 18, writes: nothing outside the output path is touched. Special files and links at
//! the output path are refused, temporary files are exclusive and unpredictable, output
//! directories are checked before any work, inputs drawing data from other files are
//! refused, and a full disk (simulated with `prlimit --fsize`) is an error naming the output
//! with the temporary file removed — never a crash.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{cellfate, tempdir};

/// A small simulated dataset, its preprocessed copy and a full run's output.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    raw: PathBuf,
    pp: PathBuf,
    run: PathBuf,
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fixture() -> Fixture {
    let d = tempdir();
    let dir = d.path().to_path_buf();
    let raw = dir.join("sim.h5ad");
    let pp = dir.join("pp.h5ad");
    let run = dir.join("run.h5ad");
    let out = cellfate()
        .args(["simulate", "--cells", "300", "--genes", "40", "-o"])
        .arg(&raw)
        .output()
        .expect("runs");
    ok(&out, "simulate");
    let out = cellfate()
        .arg("preprocess")
        .arg(&raw)
        .arg("-o")
        .arg(&pp)
        .output()
        .expect("runs");
    ok(&out, "preprocess");
    let out = cellfate()
        .arg("run")
        .arg(&pp)
        .arg("-o")
        .arg(&run)
        .arg("-q")
        .output()
        .expect("runs");
    ok(&out, "run");
    Fixture {
        _dir: d,
        dir,
        raw,
        pp,
        run,
    }
}

/// Every entry of `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The commands that write one output file, each with the output path appended last.
fn writers(f: &Fixture) -> Vec<(&'static str, Vec<std::ffi::OsString>)> {
    let s = |p: &Path| p.as_os_str().to_owned();
    let o = |x: &str| std::ffi::OsString::from(x);
    vec![
        (
            "simulate",
            vec![o("simulate"), o("--cells"), o("50"), o("-o")],
        ),
        ("preprocess", vec![o("preprocess"), s(&f.raw), o("-o")]),
        ("run", vec![o("run"), s(&f.pp), o("-q"), o("-o")]),
        ("kernel", vec![o("kernel"), s(&f.pp), o("-o")]),
        ("velocity", vec![o("velocity"), s(&f.pp), o("-o")]),
        ("report", vec![o("report"), s(&f.run), o("-o")]),
        ("fates", vec![o("fates"), s(&f.run), o("-o")]),
        (
            "drivers --csv",
            vec![
                o("drivers"),
                s(&f.run),
                o("-o"),
                s(&f.dir.join("d.h5ad")),
                o("--csv"),
            ],
        ),
    ]
}

#[test]
fn special_files_at_the_output_path_are_refused() {
    let f = fixture();
    let fifo = f.dir.join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(st.success());
    let subdir = f.dir.join("a_directory");
    std::fs::create_dir(&subdir).expect("mkdir");
    let before = listing(&f.dir);
    for (target, kind) in [
        (PathBuf::from("/dev/null"), "character device"),
        (fifo.clone(), "FIFO"),
        (subdir.clone(), "directory"),
    ] {
        for (name, args) in writers(&f) {
            let out = cellfate().args(&args).arg(&target).output().expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} -o {target:?}: {err}");
            assert!(
                err.contains(kind) && err.contains(&*target.to_string_lossy()),
                "{name} -o {target:?}: {err}"
            );
        }
    }
    let null = std::fs::symlink_metadata("/dev/null").expect("/dev/null");
    assert!(null.file_type().is_char_device(), "/dev/null was replaced");
    assert!(std::fs::symlink_metadata(&fifo)
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert_eq!(listing(&subdir), Vec::<String>::new());
    // Nothing was written anywhere (no output, no temporary file).
    assert_eq!(listing(&f.dir), before);
    // Figures and batch outputs go into directories: a regular file there is refused.
    let plain = f.dir.join("plain");
    std::fs::write(&plain, b"keep").expect("write");
    for args in [
        vec!["plot".into(), f.run.clone().into_os_string(), "-o".into()],
        vec![
            "batch".into(),
            f.pp.clone().into_os_string(),
            "--out-dir".into(),
        ],
    ] {
        let out = cellfate().args(&args).arg(&plain).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("plain"), "{err}");
    }
    assert_eq!(std::fs::read(&plain).expect("read"), b"keep");
}

#[test]
fn links_at_the_output_path_or_at_temporary_names_are_never_followed() {
    let f = fixture();
    let victim = f.dir.join("victim.txt");
    std::fs::write(&victim, b"precious").expect("write");
    // A link at the output path is refused, its target untouched.
    for (name, args) in writers(&f) {
        let link = f
            .dir
            .join(format!("link-{}", name.replace([' ', '-'], "_")));
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let out = cellfate().args(&args).arg(&link).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("symbolic link"), "{name}: {err}");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious", "{name}");
    }
    // Links planted at the temporary names earlier versions used (predictable: .NAME.tmp.png,
    // .NAME.cellfate-tmp-PID-0, .NAME.tmp-PID) are not written through.
    let figs = f.dir.join("figs");
    let out = cellfate()
        .arg("plot")
        .arg(&f.run)
        .arg("-o")
        .arg(&figs)
        .args(["--format", "png"])
        .output()
        .expect("runs");
    ok(&out, "plot");
    let names = listing(&figs);
    assert!(!names.is_empty());
    for n in &names {
        let stem = n.trim_end_matches(".png");
        std::os::unix::fs::symlink(&victim, figs.join(format!(".{stem}.tmp.png")))
            .expect("symlink");
    }
    let csv = f.dir.join("drivers.csv");
    for pid in 0..64 {
        std::os::unix::fs::symlink(&victim, f.dir.join(format!(".drivers.csv.tmp-{pid}")))
            .expect("symlink");
    }
    let out = cellfate()
        .arg("plot")
        .arg(&f.run)
        .arg("-o")
        .arg(&figs)
        .args(["--format", "png"])
        .output()
        .expect("runs");
    ok(&out, "plot again");
    let out = cellfate()
        .arg("drivers")
        .arg(&f.run)
        .arg("-o")
        .arg(f.dir.join("d.h5ad"))
        .arg("--csv")
        .arg(&csv)
        .output()
        .expect("runs");
    ok(&out, "drivers --csv");
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    // The figures are real PNGs, the CSV a regular file.
    for n in &names {
        let bytes = std::fs::read(figs.join(n)).expect("figure");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{n} is not a PNG");
        assert!(std::fs::symlink_metadata(figs.join(n))
            .expect("meta")
            .is_file());
    }
    assert!(std::fs::symlink_metadata(&csv).expect("csv").is_file());
}

#[test]
fn output_directory_problems_are_reported_before_any_work() {
    let f = fixture();
    let t = std::time::Instant::now();
    for args in [
        vec!["run".into(), f.pp.clone().into_os_string(), "-o".into()],
        vec!["kernel".into(), f.pp.clone().into_os_string(), "-o".into()],
        vec!["simulate".into(), "-o".into()],
    ] {
        let target = f.dir.join("no_such_dir").join("out.h5ad");
        let out = cellfate().args(&args).arg(&target).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("no_such_dir") && err.contains("does not exist"),
            "{args:?}: {err}"
        );
        // The error names the output, not a temporary file.
        assert!(!err.contains("cellfate-tmp"), "{err}");
    }
    // `run --report` into a missing directory fails before the run writes its output.
    let out_path = f.dir.join("never.h5ad");
    let out = cellfate()
        .arg("run")
        .arg(&f.pp)
        .arg("-o")
        .arg(&out_path)
        .arg("--report")
        .arg(f.dir.join("missing").join("r.html"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    assert!(!out_path.exists(), "the run went ahead");
    eprintln!("four refused commands took {:?}", t.elapsed());
}

/// Adds an external link `obsp/ext` (into `other`) to a copy of `src`.
fn with_external_link(src: &Path, dst: &Path, other: &Path) {
    std::fs::copy(src, dst).expect("copy");
    let file = hdf5::File::open_rw(dst).expect("open rw");
    let obsp = file.group("obsp").expect("obsp");
    obsp.link_external(&other.to_string_lossy(), "/obsp/connectivities", "ext")
        .expect("external link");
}

#[test]
fn inputs_with_data_in_other_files_are_refused() {
    let f = fixture();
    let linked = f.dir.join("linked.h5ad");
    with_external_link(&f.pp, &linked, &f.run);
    // External raw storage: a dataset whose bytes live in another file.
    let ext_store = f.dir.join("extstore.h5ad");
    std::fs::copy(&f.pp, &ext_store).expect("copy");
    std::fs::write(f.dir.join("raw.bin"), vec![0u8; 8 * 300]).expect("raw");
    {
        let file = hdf5::File::open_rw(&ext_store).expect("open rw");
        let uns = file.group("uns").expect("uns");
        uns.new_dataset::<f64>()
            .shape(300)
            .external(&f.dir.join("raw.bin").to_string_lossy(), 0, 8 * 300)
            .create("outside")
            .expect("external storage dataset");
        // Closed strongly (every handle, and HDF5's lock on the file) before the CLI opens
        // it: a weak close on drop left the lock held in one run (errno 11).
        drop(uns);
        file.close().expect("close");
    }
    for (input, slot, what) in [
        (&linked, "obsp/ext", "external link"),
        (&ext_store, "uns/outside", "external files"),
    ] {
        for args in [
            vec!["inspect".into(), input.clone().into_os_string()],
            vec![
                "run".into(),
                input.clone().into_os_string(),
                "-o".into(),
                f.dir.join("o.h5ad").into_os_string(),
            ],
            vec![
                "kernel".into(),
                input.clone().into_os_string(),
                "-o".into(),
                f.dir.join("o.h5ad").into_os_string(),
            ],
        ] {
            let out = cellfate().args(&args).output().expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(slot) && err.contains(what) && err.contains(&*input.to_string_lossy()),
                "{args:?}: {err}"
            );
            assert!(!f.dir.join("o.h5ad").exists());
        }
    }
}

/// Runs `args` with the file-size limit `limit` (bytes) and SIGXFSZ ignored, so that writes
/// past it fail with EFBIG, as on a full disk. `None` when `prlimit` is missing.
fn with_fsize(limit: u64, args: &[std::ffi::OsString]) -> Option<Output> {
    let has = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        assert!(!crate::common::in_ci(), "prlimit (util-linux) is missing");
        eprintln!("skipping: prlimit not found");
        return None;
    }
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=\"$0\" \"$@\"")
        .arg(limit.to_string())
        .arg(env!("CARGO_BIN_EXE_cellfate"))
        .args(args);
    Some(cmd.output().expect("runs"))
}

fn no_temporaries(dir: &Path) {
    let left: Vec<String> = listing(dir)
        .into_iter()
        .filter(|n| n.contains("cellfate-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn a_full_disk_is_an_error_naming_the_output_not_a_crash() {
    use std::os::unix::process::ExitStatusExt;
    let f = fixture();
    let full = f.dir.join("full");
    std::fs::create_dir(&full).expect("mkdir");
    let size = std::fs::metadata(&f.run).expect("run").len();
    let o = |p: &Path| p.as_os_str().to_owned();
    let target = full.join("out.h5ad");
    let cases: Vec<(&str, Vec<std::ffi::OsString>)> = vec![
        (
            "simulate",
            vec![
                "simulate".into(),
                "--cells".into(),
                "2000".into(),
                "-o".into(),
                o(&target),
            ],
        ),
        (
            "preprocess",
            vec!["preprocess".into(), o(&f.raw), "-o".into(), o(&target)],
        ),
        (
            "run (raw)",
            vec![
                "run".into(),
                o(&f.raw),
                "-q".into(),
                "-o".into(),
                o(&target),
            ],
        ),
        (
            "run",
            vec!["run".into(), o(&f.pp), "-q".into(), "-o".into(), o(&target)],
        ),
        (
            "kernel",
            vec!["kernel".into(), o(&f.pp), "-o".into(), o(&target)],
        ),
        (
            "fates",
            vec!["fates".into(), o(&f.run), "-o".into(), o(&target)],
        ),
    ];
    let mut crashes = Vec::new();
    for (name, args) in &cases {
        // From far too small to just below what the output needs.
        for frac in [0.02, 0.2, 0.5, 0.8, 0.95, 0.99] {
            let limit = (size as f64 * frac) as u64;
            let Some(out) = with_fsize(limit, args) else {
                return;
            };
            let err = String::from_utf8_lossy(&out.stderr);
            if let Some(sig) = out.status.signal() {
                crashes.push(format!("{name} at {limit} B: signal {sig}"));
                continue;
            }
            if out.status.success() {
                // It fitted (outputs smaller than the run's); it must be complete.
                assert!(target.exists(), "{name}");
                std::fs::remove_file(&target).expect("rm");
                continue;
            }
            assert_eq!(out.status.code(), Some(2), "{name} at {limit} B: {err}");
            assert!(
                err.contains("out.h5ad")
                    && (err.contains("File too large") || err.contains("file-size limit")),
                "{name} at {limit} B: {err}"
            );
            assert!(!target.exists(), "{name}: partial output left");
            no_temporaries(&full);
        }
    }
    assert!(crashes.is_empty(), "crashes: {crashes:?}");
    // batch: every sample fails, the summary still says so, and the process does not crash.
    let batch_dir = f.dir.join("batch");
    let Some(out) = with_fsize(
        size / 2,
        &["batch".into(), o(&f.pp), "--out-dir".into(), o(&batch_dir)],
    ) else {
        return;
    };
    assert_eq!(out.status.signal(), None, "batch crashed");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(batch_dir.join("summary.json").exists());
    no_temporaries(&batch_dir);
}
