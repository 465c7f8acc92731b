//! The examples run as a user runs them (`cargo run --example NAME`): `cargo test` builds them
//! beside this binary (`target/<profile>/examples/`), and these tests run them and check what
//! they print.

use std::path::PathBuf;
use std::process::Command;

use crate::common::require_shared;

/// The built example `name` (next to the test binary's `deps/` folder).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/it-HASH");
    profile_dir.join("examples").join(name)
}

fn run(name: &str, args: &[&str]) -> String {
    let path = example(name);
    assert!(
        path.exists(),
        "{}: example not built (cargo test builds the examples)",
        path.display()
    );
    let out = Command::new(&path)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Quickstart: kernel sum, bincode save/reload, GPCCA stages, drivers on the pancreas reference.
#[test]
fn quickstart_runs_on_the_pancreas_reference() {
    let Some(dir) = require_shared("reference/pancreas_3696") else {
        return;
    };
    let file = dir.join("reference.h5ad");
    let out = run("quickstart", &[file.to_str().expect("utf-8 path")]);
    assert!(out.contains("terminal states: "), "{out}");
    assert!(out.contains("fate probabilities: 3696 cells x"), "{out}");
    assert!(out.contains("Alpha drivers: "), "{out}");
}

/// CellRank's getting-started notebook: the same terminal states as CellRank 2.3.3 (the
/// example itself fails when they differ from the reference's record).
#[test]
fn cellrank_getting_started_prints_cellranks_terminal_states() {
    let Some(dir) = require_shared("reference/pancreas_3696") else {
        return;
    };
    let file = dir.join("reference.h5ad");
    let out = run(
        "cellrank_getting_started",
        &[file.to_str().expect("utf-8 path")],
    );
    assert!(out.contains("terminal states: Alpha, Beta\n"), "{out}");
    assert!(
        out.contains("CellRank 2.3.3 terminal states: Alpha, Beta"),
        "{out}"
    );
    assert!(out.contains("top Alpha drivers: "), "{out}");
}

/// A user-defined kernel joins a sum and round-trips once registered.
#[test]
fn custom_kernel_example_round_trips() {
    let out = run("custom_kernel", &[]);
    assert!(
        out.contains("equal after JSON, TOML, saved-kernel and expression round trips"),
        "{out}"
    );
}
