//! Finds and links the system ARPACK, LAPACK and BLAS libraries that the Schur decompositions
//! call (`schur/ffi.rs`).
//!
//! Each library is looked up through pkg-config first (Debian ships `arpack.pc` with
//! libarpack2-dev, and `lapack.pc` / `blas.pc` through the alternatives of liblapack-dev,
//! libblas-dev and libopenblas-dev), so its directory is passed to the linker. Without a
//! `.pc` file (or without pkg-config), a library the C compiler can link as `-l<name>` is
//! linked by name. When neither works the build stops here with the Debian packages to
//! install, instead of an "undefined reference" at link time.
//!
//! pkg-config's usual variables apply: `PKG_CONFIG_PATH` for a library installed elsewhere,
//! `ARPACK_NO_PKG_CONFIG=1` (`LAPACK_…`, `BLAS_…`) to skip it for one library.

// Cargo shows a failing build script's stderr: that is where the message must go.
#![allow(clippy::print_stderr)]

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// A system library the crate links.
struct SystemLib {
    /// pkg-config package name, which is also the linker name (`-l<name>`).
    name: &'static str,
    /// What it is, for the error message.
    what: &'static str,
    /// The Debian packages that provide it, first the one `scripts/setup.sh` relies on.
    debian: &'static [&'static str],
}

/// In link order: ARPACK calls LAPACK, which calls BLAS.
const LIBS: [SystemLib; 3] = [
    SystemLib {
        name: "arpack",
        what: "ARPACK (partial Schur decomposition of sparse matrices)",
        debian: &["libarpack2-dev"],
    },
    SystemLib {
        name: "lapack",
        what: "LAPACK (dense Schur decomposition)",
        debian: &["liblapack-dev", "libopenblas-dev"],
    },
    SystemLib {
        name: "blas",
        what: "BLAS (used by LAPACK and ARPACK)",
        debian: &["libopenblas-dev", "libblas-dev"],
    },
];

/// Why a library was not found.
struct Missing {
    lib: &'static SystemLib,
    pkg_config: String,
    linker: String,
    /// The `pkg-config` command itself could not be run.
    no_pkg_config: bool,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBRARY_PATH");
    let missing: Vec<Missing> = LIBS.iter().filter_map(|lib| find(lib).err()).collect();
    if !missing.is_empty() {
        eprintln!("{}", missing_message(&missing));
        std::process::exit(1);
    }
}

/// Emits the link instructions for `lib`, or says why it cannot be found.
fn find(lib: &'static SystemLib) -> Result<(), Missing> {
    // On success the pkg-config crate prints `cargo:rustc-link-search` / `-lib` itself.
    let err = match pkg_config::Config::new().probe(lib.name) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    match test_link(lib.name) {
        Ok(()) => {
            println!("cargo:rustc-link-lib={}", lib.name);
            Ok(())
        }
        Err(linker) => Err(Missing {
            lib,
            no_pkg_config: matches!(err, pkg_config::Error::Command { .. }),
            pkg_config: pkg_config_reason(&err, lib.name),
            linker,
        }),
    }
}

/// One line on why pkg-config did not find `name` (its own message runs to a dozen lines).
fn pkg_config_reason(err: &pkg_config::Error, name: &str) -> String {
    match err {
        pkg_config::Error::Command { cause, .. } => format!("cannot run `pkg-config`: {cause}"),
        pkg_config::Error::Failure { output, .. }
        | pkg_config::Error::ProbeFailure { output, .. } => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
                // "Package X was not found in the pkg-config search path." says nothing more.
                Some(line) if !line.contains("not found") => format!("{name}.pc: {line}"),
                _ => format!("no {name}.pc in its search path"),
            }
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Links an empty C program with `-l<name>` using `cc`, the linker rustc calls by default: the
/// library is found exactly where the final link will look for it. A compiler that cannot be
/// run at all is not taken as a missing library (the build may use another linker).
fn test_link(name: &str) -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let src = out_dir.join("link_probe.c");
    fs::write(&src, "int main(void) { return 0; }\n")
        .map_err(|e| format!("cannot write {}: {e}", src.display()))?;
    let output = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(out_dir.join(format!("link_probe_{name}")))
        .arg(format!("-l{name}"))
        .output();
    match output {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let line = stderr
                .lines()
                .map(str::trim)
                .find(|l| l.contains(name))
                .or_else(|| stderr.lines().map(str::trim).find(|l| !l.is_empty()))
                .unwrap_or("no message")
                .to_string();
            Err(format!("`cc -l{name}` fails: {line}"))
        }
        Err(e) => {
            println!("cargo:warning=cannot run `cc` to check for lib{name} ({e}); linking -l{name} unchecked");
            Ok(())
        }
    }
}

/// The message that stops the build: what is missing, why, and the Debian packages to install.
fn missing_message(missing: &[Missing]) -> String {
    let mut msg =
        String::from("\ncellfate-estimators needs system libraries that were not found:\n");
    let mut packages: Vec<&str> = Vec::new();
    for m in missing {
        msg += &format!(
            "\n  - lib{} — {}\n      pkg-config: {}\n      linker:     {}\n      Debian/Ubuntu package: {}\n",
            m.lib.name,
            m.lib.what,
            m.pkg_config,
            m.linker,
            m.lib.debian.join(" or "),
        );
        if !packages.contains(&m.lib.debian[0]) {
            packages.push(m.lib.debian[0]);
        }
    }
    if missing.iter().any(|m| m.no_pkg_config) {
        packages.push("pkg-config");
    }
    msg += &format!(
        "\nInstall with\n    sudo apt-get install {}\nor run `bash scripts/setup.sh`, which installs every system package cellfate needs.\n\
         A library installed elsewhere is found through pkg-config: add the directory that holds\n\
         its .pc file to PKG_CONFIG_PATH.\n",
        packages.join(" ")
    );
    msg
}
