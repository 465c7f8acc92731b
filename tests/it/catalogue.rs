//! The bad-input catalogue (issue 18, item 9): one case per item of the hostile-input campaign
//! (writes, resources, data validation, flags, batch, names, determinism, a full disk, faults
//! inside libhdf5), each run through the CLI as a user would, asserting the exit code, the
//! message's key words, and that no file outside the case's own output paths was created,
//! changed or removed (sizes, modification times and bytes of everything in the case's
//! folder, FIFOs and links included). The thorough tests of each item live beside it:
//! `writes.rs`, `flags.rs`, `data_validation.rs`, `names_batch.rs`, `determinism.rs`,
//! `fuzz_corpus.rs`.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cellfate::io::{Element, H5adEdit, H5adReader, NumVec};

use crate::common::{
    cellfate, run_bounded, simulate_cli, small_run_flags, snapshot, succeed, tempdir,
};

/// One case: the command, the paths it may create or change, the expected exit code and the
/// key words its stderr (or, on success, stdout) must hold.
struct Case {
    item: &'static str,
    cmd: Command,
    outputs: Vec<PathBuf>,
    code: i32,
    keys: Vec<String>,
    limit: Duration,
}

impl Case {
    fn new(item: &'static str, cmd: Command, code: i32, keys: &[&str]) -> Self {
        Self {
            item,
            cmd,
            outputs: Vec::new(),
            code,
            keys: keys.iter().map(|s| (*s).to_string()).collect(),
            limit: Duration::from_secs(120),
        }
    }

    fn writes(mut self, p: &Path) -> Self {
        self.outputs.push(p.to_path_buf());
        self
    }

    fn within(mut self, secs: u64) -> Self {
        self.limit = Duration::from_secs(secs);
        self
    }

    /// Runs the case in `dir`; returns its output for further checks.
    fn check(mut self, dir: &Path) -> Output {
        let before = snapshot(dir);
        let out = run_bounded(&mut self.cmd, self.limit);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        let item = self.item;
        assert_eq!(
            out.status.signal(),
            None,
            "{item}: killed by a signal: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{item}: a panic, not an error: {stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(self.code),
            "{item}: exit code; stderr: {stderr}"
        );
        let text = if self.code == 0 { &stdout } else { &stderr };
        for k in &self.keys {
            assert!(text.contains(k.as_str()), "{item}: {k:?} not in: {text}");
        }
        if self.code != 0 {
            assert!(stderr.starts_with("error: "), "{item}: {stderr}");
        }
        let after = snapshot(dir);
        let allowed = |p: &PathBuf| self.outputs.iter().any(|o| p.starts_with(o));
        let changed: Vec<&PathBuf> = before
            .keys()
            .chain(after.keys())
            .filter(|p| !allowed(p) && before.get(*p) != after.get(*p))
            .collect();
        assert!(
            changed.is_empty(),
            "{item}: files outside the output changed: {changed:?}"
        );
        out
    }
}

/// A folder with a small simulation (`sim.h5ad`, 200 cells, 20 genes, 2 fates).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(&sim, &["--cells", "200", "--genes", "20", "--fates", "2"]);
    (d, sim)
}

fn cmd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = cellfate();
    for a in args {
        c.arg(a);
    }
    c
}

fn mkfifo(p: &Path) {
    succeed(Command::new("mkfifo").arg(p));
}

#[test]
fn item1_writes_special_files_and_links_at_the_output_are_refused() {
    let (d, sim) = fixture();
    let fifo = d.path().join("out.h5ad");
    mkfifo(&fifo);
    Case::new(
        "1: FIFO at the output",
        cmd(&[&"kernel", &sim, &"-q", &"-o", &fifo]),
        2,
        &["out.h5ad", "a FIFO", "refusing to replace it"],
    )
    .within(60)
    .check(d.path());
    let victim = d.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("write");
    let link = d.path().join("linked.h5ad");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    Case::new(
        "1: link at the output",
        cmd(&[&"kernel", &sim, &"-q", &"-o", &link]),
        2,
        &["linked.h5ad", "link"],
    )
    .check(d.path());
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
}

#[test]
fn item2_resources_fifo_input_and_deep_expressions_are_refused() {
    let (d, sim) = fixture();
    let fifo = d.path().join("in.h5ad");
    mkfifo(&fifo);
    Case::new(
        "2: FIFO as input",
        cmd(&[&"inspect", &fifo]),
        2,
        &["in.h5ad", "FIFO"],
    )
    .within(30)
    .check(d.path());
    let deep = format!("{}velocity{}", "(".repeat(5000), ")".repeat(5000));
    let out = d.path().join("k.h5ad");
    Case::new(
        "2: expression nested 5,000 deep",
        cmd(&[&"kernel", &sim, &"-q", &"--kernel", &deep, &"-o", &out]),
        2,
        &[
            "kernel expression",
            "nested deeper than 64",
            "(10008 characters)",
        ],
    )
    .writes(&out)
    .within(60)
    .check(d.path());
    assert!(!out.exists());
    // 197 macrostates on 200 cells: the Schur vectors fit, but not 30 cells per state; the
    // number of states is refused before any computation, with the limits of both flags.
    let run_out = d.path().join("r.h5ad");
    Case::new(
        "2: more macrostates than the cells can hold",
        cmd(&[
            &"run",
            &sim,
            &"--n-states",
            &"197",
            &"--n-components",
            &"198",
            &"-o",
            &run_out,
        ]),
        2,
        &[
            "sim.h5ad: 200 cells",
            "--n-states",
            "--n-cells",
            "needs 5910 cells",
            "n_states to at most 6",
            "n_cells to at most 1",
        ],
    )
    .writes(&run_out)
    .within(30)
    .check(d.path());
    assert!(!run_out.exists());
}

#[test]
fn item3_negative_raw_counts_are_an_error_naming_layer_and_value() {
    let (d, sim) = fixture();
    let r = H5adReader::open(&sim).expect("simulation");
    let Element::Sparse(mut s) = r.read("layers/unspliced").expect("unspliced") else {
        panic!("layers/unspliced is not sparse");
    };
    drop(r);
    match &mut s.data {
        NumVec::F32(v) => v[3] = -3.0,
        NumVec::F64(v) => v[3] = -3.0,
        _ => panic!("unexpected dtype"),
    }
    let bad = d.path().join("negative.h5ad");
    let mut edit = H5adEdit::new(&sim);
    edit.set("layers/unspliced", Element::Sparse(s));
    edit.write_to(&bad).expect("edited copy");
    let out = d.path().join("out.h5ad");
    let mut c = cmd(&[&"run", &bad, &"-o", &out]);
    c.args(small_run_flags("20"));
    Case::new(
        "3: negative raw counts",
        c,
        2,
        &[
            "negative.h5ad",
            "layers[\"unspliced\"]",
            "-3",
            "finite, non-negative",
        ],
    )
    .writes(&out)
    .check(d.path());
    assert!(!out.exists());
}

#[test]
fn item4_conflicting_flags_name_both() {
    let (d, sim) = fixture();
    let out = d.path().join("out.h5ad");
    Case::new(
        "4: --in-place with -o",
        cmd(&[&"kernel", &sim, &"--in-place", &"-o", &out]),
        2,
        &["--in-place", "--output"],
    )
    .check(d.path());
    Case::new(
        "4: NaN threshold",
        cmd(&[&"run", &sim, &"-o", &out, &"--stability-threshold", &"NaN"]),
        2,
        &["--stability-threshold", "NaN"],
    )
    .check(d.path());
}

#[test]
fn item5_batch_same_named_inputs_get_distinct_outputs() {
    let (d, sim) = fixture();
    for sub in ["a", "b"] {
        std::fs::create_dir(d.path().join(sub)).expect("mkdir");
        std::fs::copy(&sim, d.path().join(sub).join("s.h5ad")).expect("copy");
    }
    let out_dir = d.path().join("out");
    Case::new(
        "5: same-named inputs",
        cmd(&[
            &"batch",
            &"--dry-run",
            &"--out-dir",
            &out_dir,
            &d.path().join("a/s.h5ad"),
            &d.path().join("b/s.h5ad"),
            &d.path().join("a/s.h5ad"),
        ]),
        0,
        &["named s", "a_s.h5ad", "b_s.h5ad"],
    )
    .check(d.path());
    assert!(!out_dir.exists(), "a dry run creates nothing");
}

#[test]
fn item6_control_characters_in_names_are_escaped_on_the_terminal() {
    let (d, sim) = fixture();
    let r = H5adReader::open(&sim).expect("simulation");
    let Element::Categorical(mut c) = r.read("obs/clusters").expect("clusters") else {
        panic!("obs/clusters is not categorical");
    };
    drop(r);
    let cellfate::io::Categories::Str(names) = &mut c.categories else {
        panic!("numeric cluster categories");
    };
    names[0] = "\u{1b}[31mred\u{1b}[0m".into();
    let named = d.path().join("named.h5ad");
    let mut edit = H5adEdit::new(&sim);
    edit.set("obs/clusters", Element::Categorical(c));
    edit.write_to(&named).expect("edited copy");
    let out = Case::new(
        "6: ESC in a category name",
        cmd(&[&"inspect", &named]),
        0,
        &["[31mred"],
    )
    .check(d.path());
    assert!(
        !out.stdout.contains(&0x1b),
        "a raw ESC reached the terminal"
    );
}

#[test]
fn item7_results_do_not_depend_on_the_thread_count() {
    let (d, sim) = fixture();
    let (a, b) = (d.path().join("t1.h5ad"), d.path().join("t2.h5ad"));
    for (threads, out) in [("1", &a), ("2", &b)] {
        let mut c = cmd(&[&"--threads", &threads, &"run", &sim, &"-o", out]);
        c.args(small_run_flags("20"));
        Case::new("7: run", c, 0, &[]).writes(out).check(d.path());
    }
    crate::determinism::assert_same_data(&a, &b);
}

#[test]
fn item8_a_full_disk_is_an_error_naming_the_output() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        assert!(!crate::common::in_ci(), "prlimit (util-linux) is missing");
        eprintln!("skipping: prlimit not found");
        return;
    }
    let (d, sim) = fixture();
    let out = d.path().join("out.h5ad");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=\"$0\" \"$@\"")
        .arg("60000")
        .arg(env!("CARGO_BIN_EXE_cellfate"))
        .arg("run")
        .arg(&sim)
        .arg("-o")
        .arg(&out)
        .args(small_run_flags("20"));
    Case::new("8: full disk", c, 2, &["out.h5ad"])
        .writes(&out)
        .check(d.path());
    assert!(!out.exists());
    let left: Vec<OsString> = std::fs::read_dir(d.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().contains("cellfate-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// Files on which libhdf5 itself faults (a corrupt heap of variable-length strings, found by
/// the fuzzer): a SIGSEGV inside `H5HG_read`, and a read that never returns. Both are
/// reported as errors naming the file, exit 2.
#[test]
fn item9_faults_inside_libhdf5_are_reported_not_crashes() {
    let d = tempdir();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/libhdf5");
    let segv = d.path().join("segv.h5ad");
    let hang = d.path().join("hang.h5ad");
    std::fs::copy(fixtures.join("segv.h5ad"), &segv).expect("copy");
    std::fs::copy(fixtures.join("hang.h5ad"), &hang).expect("copy");
    let out = d.path().join("out.h5ad");
    Case::new(
        "9: SIGSEGV inside libhdf5",
        cmd(&[&"run", &segv, &"-q", &"-o", &out]),
        2,
        &["segv.h5ad", "libhdf5 crashed", "corrupt"],
    )
    .writes(&out)
    .within(60)
    .check(d.path());
    Case::new(
        "9: libhdf5 never returns",
        cmd(&[&"inspect", &hang]),
        2,
        &["hang.h5ad", "did not return", "corrupt"],
    )
    .within(60)
    .check(d.path());
    assert!(!out.exists());
}
