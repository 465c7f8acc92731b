//! Replays the fuzzer's committed corpus (`fuzz/corpus/`, grown by `examples/fuzz.rs`): every
//! `.h5ad` input through `cellfate inspect` and `cellfate run`, every kernel expression through
//! the parser. Each must end in success or a clear error (exit 2, `error: ` naming the file),
//! never a signal, a panic or a hang, and nothing may be written beside the input.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{cellfate, run_bounded, tempdir};

fn corpus(kind: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Runs the CLI with a timeout; returns (exit code, stderr) or fails on a signal or a hang.
fn run_cli(args: &[&std::ffi::OsStr], timeout: Duration) -> (i32, String) {
    let out = run_bounded(cellfate().args(args), timeout);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        None,
        "{args:?}: killed by a signal: {err}"
    );
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn h5ad_corpus_gives_results_or_clear_errors() {
    let files = corpus("h5ad", "h5ad");
    assert!(files.len() >= 2, "the corpus holds at least the seeds");
    replay(&files);
}

/// Inputs on which the fuzzer found crashes in our code (stack overflows through empty
/// member names, allocations from declared shapes, 2-d categories), fixed since: each must
/// now end in a result or a clear error (`fuzz/regressions/README.txt` says what each was).
#[test]
fn h5ad_regressions_give_results_or_clear_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "h5ad"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    replay(&files);
}

/// The library side of the same inputs, as the fuzzer drives it: every slot (to depth 4)
/// read on its own gives a value or an error naming the file, without allocating what a
/// crafted shape declares (`623b079b3219a8e1`: a column declaring [24, 5e7] read on its own
/// used to allocate 4.8 GB).
#[test]
fn every_slot_of_the_regressions_reads_to_a_value_or_an_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let crafted = dir.join("623b079b3219a8e1.h5ad");
    let r = cellfate::io::H5adReader::open(&crafted).expect("opens");
    let e = r.read("obs/size_factor").expect_err("a column of 24 x 5e7");
    let msg = e.to_string();
    assert!(
        msg.contains("obs/size_factor") && msg.contains("index length") && msg.contains("623b"),
        "{msg}"
    );
    // A var group without its index: the column is still checked (1-d, X's length).
    let r = cellfate::io::H5adReader::open(dir.join("4edcb447e597406c.h5ad")).expect("opens");
    let e = r
        .read("var/true_gamma_total")
        .expect_err("a column of 5e7 x 24");
    assert!(e.to_string().contains("var/true_gamma_total"), "{e}");
    drop(r);
    for f in std::fs::read_dir(&dir).expect("regressions") {
        let f = f.expect("entry").path();
        if f.extension().is_none_or(|x| x != "h5ad") {
            continue;
        }
        let Ok(r) = cellfate::io::H5adReader::open(&f) else {
            continue;
        };
        let mut stack = vec![String::new()];
        while let Some(g) = stack.pop() {
            let Ok(keys) = r.keys(&g) else { continue };
            for k in keys {
                let slot = if g.is_empty() { k } else { format!("{g}/{k}") };
                if let Err(e) = r.read(&slot) {
                    let name = f.file_name().expect("name").to_string_lossy().into_owned();
                    assert!(e.to_string().contains(&name), "{}: {e}", f.display());
                }
                if slot.split('/').count() < 4 {
                    stack.push(slot);
                }
            }
        }
    }
}

fn replay(files: &[PathBuf]) {
    let d = tempdir();
    for f in files {
        let copy = d.path().join("input.h5ad");
        std::fs::copy(f, &copy).expect("copy");
        let before = std::fs::read(&copy).expect("read");
        let out = d.path().join("out.h5ad");
        for args in [
            vec![std::ffi::OsStr::new("inspect"), copy.as_os_str()],
            vec![
                "run".as_ref(),
                copy.as_os_str(),
                "-q".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
        ] {
            let (code, err) = run_cli(&args, Duration::from_secs(120));
            assert!(
                code == 0 || code == 2,
                "{} {args:?}: exit {code}: {err}",
                f.display()
            );
            assert!(!err.contains("panicked"), "{}: {err}", f.display());
            if code == 2 {
                assert!(
                    err.starts_with("error: ") && err.contains("input.h5ad"),
                    "{}: the error names the file: {err}",
                    f.display()
                );
            }
        }
        assert_eq!(
            std::fs::read(&copy).expect("read"),
            before,
            "{}: input modified",
            f.display()
        );
        let _ = std::fs::remove_file(&out);
        let extra: Vec<_> = std::fs::read_dir(d.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "input.h5ad")
            .collect();
        assert!(extra.is_empty(), "{}: left behind {extra:?}", f.display());
    }
}

#[test]
fn expression_corpus_parses_or_errs_without_panicking() {
    let files = corpus("expr", "txt");
    assert!(!files.is_empty());
    for f in &files {
        let text = std::fs::read(f).expect("read");
        let expr = String::from_utf8_lossy(&text);
        let r = std::panic::catch_unwind(|| cellfate::kernels::expr::parse(&expr).map(|_| ()));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => assert!(!e.to_string().is_empty(), "{}", f.display()),
            Err(_) => panic!("{}: the parser panicked", f.display()),
        }
    }
}

/// `fuzz/libhdf5/close-hang-8509a7c0512f5415.h5ad`: once every slot has been read (as the
/// fuzzer's library drive does), closing the file never returns inside libhdf5 (`H5C_dest`).
/// The reader closes files under the fault reporter's watchdog, so this is an error naming
/// the file (exit 2) within the watchdog's 15 s. The reporter ends the process, so the reads
/// run in a child: this test binary again, running only this test with `CELLFATE_CLOSE_CHILD`.
#[test]
fn a_hang_closing_a_damaged_file_is_reported() {
    let f =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/libhdf5/close-hang-8509a7c0512f5415.h5ad");
    if std::env::var_os("CELLFATE_CLOSE_CHILD").is_some() {
        cellfate::io::install_fault_reporter();
        let r = cellfate::io::H5adReader::open(&f).expect("opens");
        let mut stack = vec![String::new()];
        while let Some(g) = stack.pop() {
            let Ok(keys) = r.keys(&g) else { continue };
            for k in keys {
                let slot = if g.is_empty() { k } else { format!("{g}/{k}") };
                let _ = r.read(&slot);
                if slot.split('/').count() < 4 {
                    stack.push(slot);
                }
            }
        }
        drop(r);
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "fuzz_corpus::a_hang_closing_a_damaged_file_is_reported",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("CELLFATE_CLOSE_CHILD", "1");
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("close-hang-8509a7c0512f5415.h5ad") && err.contains("did not return"),
        "{err}"
    );
}
