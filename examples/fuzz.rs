//! A fuzzer for the `.h5ad` reader and the kernel-expression parser that runs on the stable
//! toolchain (no nightly, no libFuzzer): structured random inputs, kept when they produce an
//! outcome not seen before (a new error class, a new set of readable slots), so the corpus
//! grows towards the reader's and parser's distinct paths.
//!
//! ```text
//! cargo build --release --example fuzz --bin cellfate
//! target/release/examples/fuzz h5ad --seconds 3600 --corpus fuzz/corpus/h5ad \
//!     --cli target/release/cellfate
//! target/release/examples/fuzz expr --seconds 600 --corpus fuzz/corpus/expr
//! ```
//!
//! - `h5ad`: each input is a mutated copy of a corpus file — structural mutations through
//!   HDF5 (members deleted, encodings changed, datasets replaced with other dtypes and shapes,
//!   including huge declared shapes with tiny compressed storage, NaN/negative/out-of-range
//!   values, hostile names, external/soft/hard links, cycles) or byte-level ones (flips,
//!   truncation). Each input runs in a child process (this program's `exec` mode: open, check,
//!   inspect, read every slot, every obsp as a transition matrix, two columns of every obsm)
//!   under a 4 GB address-space limit and a 20 s timeout, and with `--cli` every 8th input
//!   also through `cellfate run`. A signal, a panic (exit 101) or a timeout is a crash: the
//!   input is saved under `--crashes`. Crashes inside libhdf5 are reported as such (we
//!   cannot fix them; we guard against them before the call).
//! - `expr`: random expressions from the grammar (kernel names, numbers including NaN, inf
//!   and huge ones, operators, deep nesting, Unicode, random bytes) and mutations of the
//!   corpus; parsed in-process under `catch_unwind`. The input being parsed is written to
//!   `--crashes/current-expr.txt` first, so a stack overflow (an abort) leaves it behind.
//!
//! At the end both print executions, executions per second, distinct outcomes and crashes.
//! The committed corpus (`fuzz/corpus/`) is replayed by `tests/it/fuzz_corpus.rs` in CI.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Opts {
    mode: String,
    seconds: u64,
    seed: u64,
    corpus: PathBuf,
    crashes: PathBuf,
    cli: Option<PathBuf>,
    max_corpus: usize,
    file: Option<PathBuf>,
}

fn parse_args() -> Res<Opts> {
    let mut a = std::env::args().skip(1);
    let mode = a.next().ok_or("usage: fuzz h5ad|expr|exec [options]")?;
    let mut o = Opts {
        mode,
        seconds: 60,
        seed: 0,
        corpus: PathBuf::from("fuzz/corpus/h5ad"),
        crashes: PathBuf::from("fuzz/crashes"),
        cli: None,
        max_corpus: 60,
        file: None,
    };
    if o.mode == "expr" {
        o.corpus = PathBuf::from("fuzz/corpus/expr");
    }
    while let Some(k) = a.next() {
        let mut v = || a.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--seconds" => o.seconds = v()?.parse()?,
            "--seed" => o.seed = v()?.parse()?,
            "--corpus" => o.corpus = v()?.into(),
            "--crashes" => o.crashes = v()?.into(),
            "--cli" => o.cli = Some(v()?.into()),
            "--max-corpus" => o.max_corpus = v()?.parse()?,
            f if o.mode == "exec" && o.file.is_none() => o.file = Some(f.into()),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    let r = parse_args().and_then(|o| match o.mode.as_str() {
        "h5ad" => fuzz_h5ad(&o),
        "expr" => fuzz_expr(&o),
        "exec" => {
            let f = o.file.ok_or("exec needs a file")?;
            // As in the CLI: a fault inside libhdf5 is reported (exit 2), not a bare signal.
            cellfate::io::install_fault_reporter();
            println!("{}", exec_h5ad(&f));
            Ok(())
        }
        m => Err(format!("unknown mode {m} (h5ad, expr, exec)").into()),
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

// ----- outcome classes --------------------------------------------------------------------

/// An error message reduced to its class: digits, paths and quoted names removed, bounded.
fn class_of(msg: &str) -> String {
    let mut out = String::new();
    let mut last_digit = false;
    for word in msg.split_whitespace() {
        if word.contains('/') && word.len() > 12 {
            out.push_str("<path> ");
            continue;
        }
        for c in word.chars() {
            if c.is_ascii_digit() {
                if !last_digit {
                    out.push('#');
                }
                last_digit = true;
            } else {
                last_digit = false;
                out.push(c);
            }
        }
        out.push(' ');
        if out.len() > 160 {
            break;
        }
    }
    out.trim().to_string()
}

// ----- the h5ad target (child process) ----------------------------------------------------

/// Reads everything a command could read from `path`; returns a one-line outcome.
fn exec_h5ad(path: &Path) -> String {
    use cellfate::io::H5adReader;
    let mut outcome: Vec<String> = Vec::new();
    let r = match H5adReader::open(path) {
        Ok(r) => r,
        Err(e) => return format!("open-err {}", class_of(&e.to_string())),
    };
    match r.validate() {
        Ok(p) => outcome.extend(
            p.iter()
                .map(|e| format!("problem {}", class_of(&e.to_string()))),
        ),
        Err(e) => outcome.push(format!("validate-err {}", class_of(&e.to_string()))),
    }
    if let Err(e) = cellfate::inspect::inspect(path) {
        outcome.push(format!("inspect-err {}", class_of(&e.to_string())));
    }
    let mut stack = vec![String::new()];
    let mut n_ok = 0usize;
    while let Some(g) = stack.pop() {
        let Ok(keys) = r.keys(&g) else { continue };
        for k in keys {
            let slot = if g.is_empty() { k } else { format!("{g}/{k}") };
            match r.read(&slot) {
                Ok(_) => n_ok += 1,
                Err(e) => outcome.push(format!("read-err {}", class_of(&e.to_string()))),
            }
            if slot.split('/').count() < 4 {
                stack.push(slot);
            }
        }
    }
    for k in r.keys("obsp").unwrap_or_default() {
        if let Err(e) = r.transition_matrix(&k) {
            outcome.push(format!("T-err {}", class_of(&e.to_string())));
        }
    }
    for k in r.keys("obsm").unwrap_or_default() {
        if let Err(e) = r.dense_f32_columns(&format!("obsm/{k}"), 0..2) {
            outcome.push(format!("obsm-err {}", class_of(&e.to_string())));
        }
    }
    for c in r.columns("obs").unwrap_or_default() {
        if let Err(e) = r.obs_f64(&c) {
            outcome.push(format!("obs-err {}", class_of(&e.to_string())));
        }
    }
    outcome.sort();
    outcome.dedup();
    format!("ok {} | {}", n_ok.min(64), outcome.join(" | "))
}

// ----- running a child with limits ----------------------------------------------------------

#[derive(Debug)]
enum Run {
    /// Exit code and stdout's last line / stderr's first line.
    Exited(i32, String, String),
    Signal(i32, String),
    Timeout,
}

fn run_limited(cmd: &mut Command, timeout: Duration) -> Res<Run> {
    use std::os::unix::process::ExitStatusExt;
    // Output goes to files, not pipes: a child writing more than a pipe holds (libhdf5's
    // error stacks can) would block until the timeout and be counted as a hang.
    let dir = tempfile::tempdir()?;
    let (o, e) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o)?)
        .stderr(std::fs::File::create(&e)?)
        .spawn()?;
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let out = std::fs::read(&o)?;
            let err = std::fs::read(&e)?;
            let stdout = String::from_utf8_lossy(&out);
            let stderr = String::from_utf8_lossy(&err).into_owned();
            return Ok(match st.signal() {
                Some(s) => Run::Signal(s, stderr),
                None => Run::Exited(
                    st.code().unwrap_or(-1),
                    stdout.lines().last().unwrap_or("").to_string(),
                    stderr,
                ),
            });
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Run::Timeout);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `prlimit --as=4G` around `program` when prlimit exists (allocation failures then abort
/// the child instead of swapping the machine).
fn limited(program: &Path) -> Command {
    if Command::new("prlimit").arg("--version").output().is_ok() {
        let mut c = Command::new("prlimit");
        c.arg("--as=4000000000").arg(program);
        c
    } else {
        Command::new(program)
    }
}

// ----- h5ad mutations ------------------------------------------------------------------------

fn all_objects(file: &hdf5::File) -> (Vec<String>, Vec<String>) {
    let (mut groups, mut sets) = (vec![String::new()], Vec::new());
    let mut stack = vec![String::new()];
    while let Some(g) = stack.pop() {
        let grp = if g.is_empty() {
            Ok((**file).clone())
        } else {
            file.group(&g)
        };
        let Ok(grp) = grp else { continue };
        for name in grp.member_names().unwrap_or_default() {
            let p = if g.is_empty() {
                name.clone()
            } else {
                format!("{g}/{name}")
            };
            if grp.dataset(&name).is_ok() {
                sets.push(p);
            } else if grp.group(&name).is_ok() && p.split('/').count() < 6 {
                groups.push(p.clone());
                stack.push(p);
            }
        }
    }
    (groups, sets)
}

const ENCODINGS: [&str; 16] = [
    "array",
    "csr_matrix",
    "csc_matrix",
    "string-array",
    "categorical",
    "nullable-integer",
    "nullable-boolean",
    "nullable-string-array",
    "dataframe",
    "dict",
    "raw",
    "string",
    "numeric-scalar",
    "anndata",
    "awkward-array",
    "",
];

fn hostile_string(rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..8) {
        0 => "\u{1b}[31mred\u{1b}[0m".into(),
        1 => "a,b\"c\nd".into(),
        2 => "x".repeat(rng.random_range(200..6000)),
        3 => "../../etc/passwd".into(),
        4 => "A\\B".into(),
        5 => String::new(),
        6 => "名前 ünïcödé".into(),
        _ => format!("c{}", rng.random::<u32>()),
    }
}

fn dims(rng: &mut ChaCha8Rng, n_obs: usize, n_vars: usize) -> Vec<usize> {
    let rank = rng.random_range(0..4);
    (0..rank)
        .map(|_| match rng.random_range(0..8) {
            0 => 0,
            1 => 1,
            2 => n_obs,
            3 => n_vars,
            4 => n_obs + 1,
            5 => 50_000_000,
            6 => rng.random_range(2..50),
            _ => n_obs.saturating_sub(1),
        })
        .collect()
}

fn weird_f64(rng: &mut ChaCha8Rng) -> f64 {
    match rng.random_range(0..8) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -1.0,
        3 => 1e308,
        4 => -0.0,
        _ => rng.random_range(0.0..10.0),
    }
}

/// One structural mutation of an open file; a description of what was done.
fn mutate_structure(file: &hdf5::File, rng: &mut ChaCha8Rng) -> hdf5::Result<String> {
    let (groups, sets) = all_objects(file);
    let n_obs = 100;
    let n_vars = 24;
    let pick = |rng: &mut ChaCha8Rng, v: &[String]| -> Option<String> {
        (!v.is_empty()).then(|| v[rng.random_range(0..v.len())].clone())
    };
    let split = |p: &str| -> (String, String) {
        match p.rsplit_once('/') {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (String::new(), p.to_string()),
        }
    };
    let group_of = |p: &str| -> hdf5::Result<hdf5::Group> {
        if p.is_empty() {
            Ok((**file).clone())
        } else {
            file.group(p)
        }
    };
    let op = rng.random_range(0..10);
    match op {
        0 => {
            // Delete a member.
            let all: Vec<String> = groups.iter().skip(1).chain(&sets).cloned().collect();
            if let Some(p) = pick(rng, &all) {
                file.unlink(&p)?;
                return Ok(format!("unlink {p}"));
            }
        }
        1 => {
            // Change an encoding-type attribute.
            let all: Vec<String> = groups.iter().chain(&sets).cloned().collect();
            if let Some(p) = pick(rng, &all) {
                let enc = ENCODINGS[rng.random_range(0..ENCODINGS.len())];
                let loc: hdf5::Location = if let Ok(d) = file.dataset(&p) {
                    (**d).clone()
                } else {
                    (*group_of(&p)?).clone()
                };
                if loc.attr("encoding-type").is_ok() {
                    loc.delete_attr("encoding-type")?;
                }
                let v: hdf5::types::VarLenUnicode = enc.parse().unwrap_or_default();
                loc.new_attr::<hdf5::types::VarLenUnicode>()
                    .shape(())
                    .create("encoding-type")?
                    .write_scalar(&v)?;
                return Ok(format!("encoding {p} = {enc}"));
            }
        }
        2 | 3 => {
            // Replace a dataset with another dtype/shape.
            if let Some(p) = pick(rng, &sets) {
                let (parent, name) = split(&p);
                let g = group_of(&parent)?;
                g.unlink(&name)?;
                let shape = dims(rng, n_obs, n_vars);
                let total: usize = shape.iter().product();
                let huge = total > 10_000_000;
                let which = rng.random_range(0..5);
                macro_rules! make {
                    ($t:ty, $val:expr) => {{
                        let b = g.new_dataset::<$t>();
                        let ds = if shape.is_empty() {
                            b.shape(()).create(name.as_str())?
                        } else if huge {
                            let chunk: Vec<usize> = shape.iter().map(|&d| d.clamp(1, 16)).collect();
                            b.shape(shape.clone())
                                .chunk(chunk)
                                .deflate(9)
                                .create(name.as_str())?
                        } else {
                            b.shape(shape.clone()).create(name.as_str())?
                        };
                        if !huge {
                            let v: Vec<$t> = (0..total.max(1)).map(|_| $val).collect();
                            if shape.is_empty() {
                                ds.write_scalar(&v[0])?;
                            } else {
                                ds.write_raw(&v)?;
                            }
                        }
                    }};
                }
                match which {
                    0 => make!(f64, weird_f64(rng)),
                    1 => make!(f32, weird_f64(rng) as f32),
                    2 => make!(i32, rng.random_range(-5..(n_obs as i32 + 5))),
                    3 => make!(i64, rng.random_range(-5..(n_obs as i64 + 5))),
                    _ => make!(u8, rng.random::<u8>()),
                }
                return Ok(format!("replace {p} shape {shape:?} kind {which}"));
            }
        }
        4 => {
            // Overwrite values of a numeric dataset in place.
            if let Some(p) = pick(rng, &sets) {
                let ds = file.dataset(&p)?;
                let n = ds.size();
                if n > 0 && n < 1_000_000 {
                    if let Ok(mut v) = ds.read_raw::<f64>() {
                        for _ in 0..rng.random_range(1..8) {
                            let i = rng.random_range(0..n);
                            v[i] = weird_f64(rng);
                        }
                        if ds.write_raw(&v).is_ok() {
                            return Ok(format!("values {p}"));
                        }
                    }
                    if let Ok(mut v) = ds.read_raw::<i64>() {
                        for _ in 0..rng.random_range(1..8) {
                            let i = rng.random_range(0..n);
                            v[i] = [-1, 0, i64::MAX, n_obs as i64, 1 << 40][rng.random_range(0..5)];
                        }
                        ds.write_raw(&v)?;
                        return Ok(format!("ints {p}"));
                    }
                }
            }
        }
        5 => {
            // A sparse group's shape attribute.
            if let Some(p) = pick(rng, &groups) {
                let g = group_of(&p)?;
                if g.attr("shape").is_ok() {
                    g.delete_attr("shape")?;
                    let s: Vec<i64> = (0..rng.random_range(0..4))
                        .map(|_| [0, 1, -1, 64, 65, 1 << 40][rng.random_range(0..6)])
                        .collect();
                    g.new_attr::<i64>()
                        .shape(s.len())
                        .create("shape")?
                        .write(&s)?;
                    return Ok(format!("shape attr {p}"));
                }
            }
        }
        6 => {
            // Hostile strings in a string dataset (categories, index).
            let strs: Vec<String> = sets
                .iter()
                .filter(|p| {
                    file.dataset(p)
                        .and_then(|d| d.dtype())
                        .is_ok_and(|t| t.is::<hdf5::types::VarLenUnicode>())
                })
                .cloned()
                .collect();
            if let Some(p) = pick(rng, &strs) {
                let ds = file.dataset(&p)?;
                let mut v = ds.read_raw::<hdf5::types::VarLenUnicode>()?;
                if !v.is_empty() {
                    let i = rng.random_range(0..v.len());
                    v[i] = hostile_string(rng).parse().unwrap_or_default();
                    if rng.random_bool(0.3) && v.len() > 1 {
                        v[0] = v[v.len() - 1].clone();
                    }
                    ds.write_raw(&v)?;
                    return Ok(format!("strings {p}"));
                }
            }
        }
        7 => {
            // Links: external, soft (dangling or cyclic), hard cycle.
            if let Some(p) = pick(rng, &groups) {
                let g = group_of(&p)?;
                let name = format!("lnk{}", rng.random::<u16>());
                match rng.random_range(0..3) {
                    0 => g.link_external("/etc/hostname", "/x", &name)?,
                    1 => g.link_soft(if rng.random_bool(0.5) { "/" } else { "/nope" }, &name)?,
                    _ => g.link_hard("/", &name)?,
                }
                return Ok(format!("link {p}/{name}"));
            }
        }
        _ => {
            // A new random member in a standard group.
            let parent = ["obsp", "obsm", "layers", "uns", "obs", "varm"][rng.random_range(0..6)];
            let g = match file.group(parent) {
                Ok(g) => g,
                Err(_) => file.create_group(parent)?,
            };
            let name = if rng.random_bool(0.2) {
                hostile_string(rng).replace('/', "_")
            } else {
                format!("k{}", rng.random::<u16>())
            };
            if name.is_empty() || g.link_exists(&name) {
                return Ok("noop".into());
            }
            let shape = dims(rng, n_obs, n_vars);
            if shape.iter().product::<usize>() > 10_000_000 || shape.is_empty() {
                return Ok("noop".into());
            }
            let total: usize = shape.iter().product();
            let v: Vec<f64> = (0..total).map(|_| weird_f64(rng)).collect();
            g.new_dataset::<f64>()
                .shape(shape.clone())
                .create(name.as_str())?
                .write_raw(&v)?;
            return Ok(format!("new {parent}/{} {shape:?}", name.len()));
        }
    }
    Ok("noop".into())
}

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut ChaCha8Rng) -> String {
    if bytes.is_empty() {
        return "empty".into();
    }
    match rng.random_range(0..4) {
        0 => {
            let n = rng.random_range(1..bytes.len().max(2));
            bytes.truncate(n);
            format!("truncate {n}")
        }
        1 => {
            // Skip the superblock most of the time: flips in object headers and data.
            for _ in 0..rng.random_range(1..16) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            "bitflips".into()
        }
        2 => {
            let i = rng.random_range(0..bytes.len());
            let v = [0u8, 0xff, 0x7f, 0x80][rng.random_range(0..4)];
            let n = rng.random_range(1..9).min(bytes.len() - i);
            bytes[i..i + n].fill(v);
            format!("fill {i}")
        }
        _ => {
            let i = rng.random_range(0..bytes.len());
            let j = rng.random_range(0..bytes.len());
            let n = rng.random_range(1..64).min(bytes.len() - i.max(j));
            let chunk = bytes[j..j + n].to_vec();
            bytes[i..i + n].copy_from_slice(&chunk);
            format!("copy {j}->{i}")
        }
    }
}

fn load_corpus(dir: &Path, ext: &str) -> Res<Vec<(PathBuf, Vec<u8>)>> {
    let mut v = Vec::new();
    if dir.exists() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == ext) {
                let b = std::fs::read(&p)?;
                v.push((p, b));
            }
        }
    }
    v.sort();
    Ok(v)
}

fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a: stable file names for corpus entries.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn seed_files(dir: &Path) -> Res<()> {
    // A raw simulation, the same preprocessed and fully run (through the library).
    std::fs::create_dir_all(dir)?;
    let raw = dir.join("seed_raw.h5ad");
    let params = cellfate::sim::SimParams {
        n_cells: 100,
        n_genes: 24,
        n_fates: 2,
        ..Default::default()
    };
    cellfate::sim::simulate_to_file(&params, &raw)?;
    let pp = dir.join("seed_pp.h5ad");
    cellfate::upstream::prepare_with(
        &raw,
        &pp,
        &cellfate::upstream::UpstreamSpec {
            n_neighbors: 10,
            n_pcs: 10,
            ..Default::default()
        },
        &mut |_| {},
    )?;
    Ok(())
}

fn fuzz_h5ad(o: &Opts) -> Res<()> {
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(&o.crashes)?;
    if load_corpus(&o.corpus, "h5ad")?.is_empty() {
        seed_files(&o.corpus)?;
    }
    let mut corpus = load_corpus(&o.corpus, "h5ad")?;
    let work = tempfile::tempdir()?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    // The corpus's own outcomes are known.
    for (p, _) in &corpus {
        if let Run::Exited(_, line, _) =
            run_limited(limited(&me).arg("exec").arg(p), Duration::from_secs(20))?
        {
            *seen.entry(line).or_default() += 1;
        }
    }
    let (mut execs, mut cli_execs, mut crashes, mut added) = (0u64, 0u64, 0u64, 0usize);
    let mut hdf5_faults = 0u64;
    let mut mutation_faults = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(o.seconds) {
        let (_, base) = &corpus[rng.random_range(0..corpus.len())];
        let input = work.path().join("input.h5ad");
        let mut what = Vec::new();
        if rng.random_bool(0.75) {
            std::fs::write(&input, base)?;
            // Mutating through libhdf5 opens corrupt corpus files read-write, and libhdf5 can
            // crash on them too: the mutation runs in a forked child, and an input whose
            // mutation crashed is skipped.
            let mseed: u64 = rng.random();
            let log = work.path().join("mutations.txt");
            match mutate_in_child(&input, &log, mseed) {
                Some(w) => what = w,
                None => {
                    mutation_faults += 1;
                    continue;
                }
            }
        } else {
            let mut b = base.clone();
            what.push(mutate_bytes(&mut b, &mut rng));
            std::fs::write(&input, &b)?;
        }
        let bytes = std::fs::read(&input)?;
        execs += 1;
        let run = run_limited(
            limited(&me).arg("exec").arg(&input),
            Duration::from_secs(20),
        )?;
        let mut key = match &run {
            Run::Exited(0, line, _) => Some(line.clone()),
            Run::Exited(2, _, err)
                if (err.contains("libhdf5 crashed")
                    || err.contains("libhdf5 did not return")
                    || err.contains("aborted (SIGABRT) while reading"))
                    // Our own aborts (allocation failures, stack overflows) print first.
                    && !err.contains("memory allocation of")
                    && !err.contains("overflowed its stack")
                    && !err.contains("panicked") =>
            {
                // Inside libhdf5 on a corrupt file, reported by the fault reporter: counted
                // and kept apart from crashes in our code.
                hdf5_faults += 1;
                let dir = o.crashes.join("libhdf5");
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join(format!("{:016x}.h5ad", hash(&bytes))), &bytes)?;
                None
            }
            Run::Exited(code, _, err) => {
                // 101 = a Rust panic; anything else from the target is unexpected too.
                crashes += 1;
                save_crash(
                    o,
                    &bytes,
                    &format!("exit {code}: {}", first_line(err)),
                    &what,
                )?;
                None
            }
            Run::Signal(sig, err) => {
                crashes += 1;
                save_crash(
                    o,
                    &bytes,
                    &format!("signal {sig}: {}", first_line(err)),
                    &what,
                )?;
                None
            }
            Run::Timeout => {
                crashes += 1;
                save_crash(o, &bytes, "timeout (20 s)", &what)?;
                None
            }
        };
        if let (Some(cli), true) = (&o.cli, execs % 8 == 0) {
            cli_execs += 1;
            let out = work.path().join("out.h5ad");
            let _ = std::fs::remove_file(&out);
            let run = run_limited(
                limited(cli)
                    .arg("run")
                    .arg(&input)
                    .arg("-q")
                    .arg("-o")
                    .arg(&out),
                Duration::from_secs(60),
            )?;
            match run {
                Run::Exited(0 | 2, _, err)
                    if !err.contains("panicked")
                        && !err.contains("memory allocation of")
                        && !err.contains("overflowed its stack") =>
                {
                    if let Some(k) = key.as_mut() {
                        k.push_str(" || cli ");
                        k.push_str(&class_of(first_line(&err)));
                    }
                }
                other => {
                    crashes += 1;
                    save_crash(o, &bytes, &format!("cli run: {other:?}"), &what)?;
                }
            }
        }
        if let Some(k) = key {
            let n = seen.entry(k).or_default();
            *n += 1;
            if *n == 1 && corpus.len() < o.max_corpus && bytes.len() < 400_000 {
                let p = o.corpus.join(format!("{:016x}.h5ad", hash(&bytes)));
                std::fs::write(&p, &bytes)?;
                corpus.push((p, bytes));
                added += 1;
            }
        }
        if execs % 200 == 0 {
            eprintln!(
                "{:>6.0} s  execs {execs}  cli {cli_execs}  outcomes {}  corpus {}  crashes {crashes}  libhdf5 faults reported {hdf5_faults}  mutation faults {mutation_faults}",
                start.elapsed().as_secs_f64(),
                seen.len(),
                corpus.len()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "h5ad: {execs} executions ({cli_execs} also through `cellfate run`) in {secs:.0} s ({:.1}/s), {} distinct outcomes, corpus {} (+{added}), crashes {crashes}, libhdf5 faults reported {hdf5_faults} (mutations crashing libhdf5 in the mutator, skipped: {mutation_faults})",
        execs as f64 / secs,
        seen.len(),
        corpus.len()
    );
    Ok(())
}

/// Applies 1-3 structural mutations to `input` in a forked child (libhdf5 may crash on a
/// corrupt file opened read-write); the mutations' descriptions, or `None` when the child
/// died.
#[allow(unsafe_code)]
fn mutate_in_child(input: &Path, log: &Path, seed: u64) -> Option<Vec<String>> {
    let _ = std::fs::remove_file(log);
    // SAFETY: this process is single-threaded here (child processes are waited for, libhdf5
    // starts no threads); the child only mutates the file, writes the log and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut what = Vec::new();
        hdf5::silence_errors(true);
        if let Ok(file) = hdf5::File::open_rw(input) {
            for _ in 0..rng.random_range(1..4) {
                match mutate_structure(&file, &mut rng) {
                    Ok(w) => what.push(w),
                    Err(e) => what.push(format!("failed: {e}")),
                }
            }
            drop(file);
        }
        let ok = std::fs::write(log, what.join("\n")).is_ok();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(i32::from(!ok)) };
    }
    if pid < 0 {
        return None;
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return None;
    }
    let text = std::fs::read_to_string(log).ok()?;
    Some(text.lines().map(String::from).collect())
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn save_crash(o: &Opts, bytes: &[u8], why: &str, what: &[String]) -> Res<()> {
    let name = format!("{:016x}", hash(bytes));
    std::fs::write(o.crashes.join(format!("{name}.h5ad")), bytes)?;
    std::fs::write(
        o.crashes.join(format!("{name}.txt")),
        format!("{why}\nmutations: {}\n", what.join("; ")),
    )?;
    eprintln!("CRASH {name}: {why} ({})", what.join("; "));
    Ok(())
}

// ----- the expression target ------------------------------------------------------------------

const NAMES: [&str; 14] = [
    "velocity",
    "connectivity",
    "pseudotime",
    "cytotrace",
    "labeling_time",
    "real_time",
    "precomputed",
    "vk",
    "ck",
    "pk",
    "VelocityKernel",
    "ConnectivityKernel",
    "nope",
    "velocityy",
];

fn gen_expr(rng: &mut ChaCha8Rng, depth: usize) -> String {
    if depth > 6 || rng.random_bool(0.3) {
        return match rng.random_range(0..6) {
            0 => format!("{}", weird_f64(rng)),
            1 => ["NaN", "inf", "-1", "1e999", "0", "0.5", ".", "1e-400"][rng.random_range(0..8)]
                .into(),
            _ => NAMES[rng.random_range(0..NAMES.len())].into(),
        };
    }
    match rng.random_range(0..6) {
        0 => format!(
            "{} + {}",
            gen_expr(rng, depth + 1),
            gen_expr(rng, depth + 1)
        ),
        1 => format!("{}*{}", gen_expr(rng, depth + 1), gen_expr(rng, depth + 1)),
        2 => format!("({})", gen_expr(rng, depth + 1)),
        3 => format!("~{}", gen_expr(rng, depth + 1)),
        4 => {
            let n = rng.random_range(1..20_000);
            format!("{}velocity{}", "(".repeat(n), ")".repeat(n))
        }
        _ => format!("!{}", gen_expr(rng, depth + 1)),
    }
}

fn mutate_str(s: &str, rng: &mut ChaCha8Rng) -> String {
    let mut c: Vec<char> = s.chars().collect();
    for _ in 0..rng.random_range(1..5) {
        let extra = [
            '(', ')', '+', '*', '~', '!', ' ', '\u{0}', 'é', '🦀', '-', 'e', '.', '1',
        ];
        match rng.random_range(0..3) {
            0 if !c.is_empty() => {
                c.remove(rng.random_range(0..c.len()));
            }
            1 => {
                let i = rng.random_range(0..=c.len());
                c.insert(i, extra[rng.random_range(0..extra.len())]);
            }
            _ if !c.is_empty() => {
                let i = rng.random_range(0..c.len());
                c[i] = extra[rng.random_range(0..extra.len())];
            }
            _ => {}
        }
    }
    c.into_iter().collect()
}

fn fuzz_expr(o: &Opts) -> Res<()> {
    std::fs::create_dir_all(&o.crashes)?;
    std::fs::create_dir_all(&o.corpus)?;
    let mut corpus: Vec<String> = load_corpus(&o.corpus, "txt")?
        .into_iter()
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
        .collect();
    if corpus.is_empty() {
        corpus.push("0.8*velocity + 0.2*connectivity".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let current = o.crashes.join("current-expr.txt");
    std::panic::set_hook(Box::new(|_| {}));
    let (mut execs, mut panics) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(o.seconds) {
        let input = if rng.random_bool(0.5) {
            gen_expr(&mut rng, 0)
        } else {
            mutate_str(&corpus[rng.random_range(0..corpus.len())], &mut rng)
        };
        if execs % 64 == 0 {
            std::fs::write(&current, &input)?;
        }
        execs += 1;
        let r = std::panic::catch_unwind(|| {
            cellfate::kernels::expr::parse(&input).map(|mut spec| {
                // Random parameters on whatever parsed.
                let _ = spec.set_param("velocity", "similarity", "cosine");
                let _ = spec.set_param("connectivity", "density_normalize", "maybe");
                use cellfate::kernels::kernel::Kernel;
                spec.validate().map(|()| format!("{spec:?}"))
            })
        });
        let key = match r {
            Ok(Ok(Ok(_))) => "ok".to_string(),
            Ok(Ok(Err(e))) | Ok(Err(e)) => class_of(&e.to_string().replace(&input, "<expr>")),
            Err(_) => {
                panics += 1;
                let name = format!("{:016x}", hash(input.as_bytes()));
                std::fs::write(o.crashes.join(format!("{name}.expr.txt")), &input)?;
                eprintln!("PANIC on {name}");
                continue;
            }
        };
        let n = seen.entry(key).or_default();
        *n += 1;
        if *n == 1 && corpus.len() < o.max_corpus * 4 && input.len() < 50_000 {
            std::fs::write(
                o.corpus
                    .join(format!("{:016x}.txt", hash(input.as_bytes()))),
                &input,
            )?;
            corpus.push(input);
        }
    }
    let _ = std::fs::remove_file(&current);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "expr: {execs} executions in {secs:.0} s ({:.0}/s), {} distinct outcomes, corpus {}, panics {panics}",
        execs as f64 / secs,
        seen.len(),
        corpus.len()
    );
    Ok(())
}
