//! Hostile names and batch bookkeeping (issue 18, items 5 and 6): inputs sharing a file name,
//! duplicate inputs, re-runs and failed samples keep the batch summary complete and the
//! outputs distinct; names with control characters, commas, quotes, line breaks, characters
//! that sanitise alike or 5,000 characters stay escaped on the terminal, quoted in CSV files,
//! and give unique, bounded file names.

use std::path::{Path, PathBuf};

use cellfate::io::{Categories, Element};

use crate::common::{cellfate, simulate_cli, small_run_flags, succeed, tempdir};

/// Writes a small raw-count simulation (500 cells, 60 genes, fates `Alpha` and `Beta`) to
/// `path`, with the `clusters` categories renamed as `rename` says.
fn simulation(path: &Path, seed: u64, rename: &[(&str, &str)]) -> PathBuf {
    let s = cellfate::sim::simulate(&cellfate::sim::SimParams {
        n_cells: 500,
        n_genes: 60,
        n_fates: 2,
        seed,
        ..Default::default()
    })
    .expect("simulate");
    let mut members = s.to_elements();
    let mut renamed = 0;
    for (key, el) in &mut members {
        let (true, Element::DataFrame(df)) = (key == "obs", el) else {
            continue;
        };
        for (name, col) in &mut df.columns {
            let (true, Element::Categorical(c)) = (name == "clusters", col) else {
                continue;
            };
            let Categories::Str(cats) = &mut c.categories else {
                panic!("clusters: expected string categories");
            };
            for cat in cats.iter_mut() {
                if let Some((_, new)) = rename.iter().find(|(old, _)| old == cat) {
                    *cat = (*new).to_string();
                    renamed += 1;
                }
            }
        }
    }
    assert_eq!(renamed, rename.len(), "every category to rename exists");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("fixture folder");
    }
    cellfate::io::write_new(path, &members).expect("write the simulation");
    path.to_path_buf()
}

/// A tiny RFC 4180 reader: records of fields; quoted fields may hold commas, doubled quotes
/// and line breaks. Fails the test on a malformed quote.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_field_start => {
                // A quoted field: up to the closing quote (a doubled quote is one quote).
                loop {
                    match chars.next().expect("an unterminated quoted field") {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        '"' => break,
                        other => field.push(other),
                    }
                }
                assert!(
                    matches!(chars.peek(), None | Some(',' | '\n' | '\r')),
                    "text after a closing quote in {text:?}"
                );
                at_field_start = false;
            }
            '"' => panic!("a quote inside an unquoted field: {text:?}"),
            ',' => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                at_field_start = true;
            }
            other => {
                field.push(other);
                at_field_start = false;
            }
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
        .expect("summary.json is JSON")
}

fn samples(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["samples"].as_array().expect("samples").clone()
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn batch(inputs: &[&Path], out: &Path, extra: &[&str]) -> std::process::Output {
    cellfate()
        .arg("batch")
        .args(inputs)
        .arg("--out-dir")
        .arg(out)
        .args(small_run_flags("60"))
        .args(extra)
        .output()
        .expect("batch runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Two inputs named `s.h5ad` in folders `a` and `b`: two outputs (`a_s`, `b_s`), both results
/// in the summary, and the renaming said; a re-run skips both and the summary still carries
/// their results.
#[test]
fn batch_same_file_names_get_distinct_outputs_and_a_rerun_keeps_the_summary() {
    let d = tempdir();
    let a = simulation(&d.path().join("a/s.h5ad"), 1, &[]);
    let b = simulation(&d.path().join("b/s.h5ad"), 2, &[]);
    let out = d.path().join("out");
    let res = batch(&[&a, &b], &out, &["--jobs", "2"]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let stdout = text(&res.stdout);
    assert!(
        stdout.contains("2 inputs are named s") && stdout.contains("a_s.h5ad"),
        "{stdout}"
    );
    assert!(out.join("a_s.h5ad").exists() && out.join("b_s.h5ad").exists());
    assert!(!out.join("s.h5ad").exists());
    let first = samples(&summary(&out));
    assert_eq!(first.len(), 2);
    for (s, input) in first.iter().zip([&a, &b]) {
        assert_eq!(s["status"], "ok", "{s}");
        assert_eq!(s["input"], input.display().to_string());
        assert_eq!(strs(&s["terminal_states"]).len(), 2, "{s}");
    }
    assert_eq!(first[0]["sample"], "a_s");
    assert_eq!(first[1]["sample"], "b_s");
    assert!(summary(&out)["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .any(|n| n.as_str().unwrap_or("").contains("after their folders")));
    // Re-run: both skipped, the summary still complete.
    let res = batch(&[&a, &b], &out, &["--jobs", "2"]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let again = samples(&summary(&out));
    assert_eq!(again.len(), 2);
    for (s, before) in again.iter().zip(&first) {
        assert_eq!(s["status"], "skipped (up to date)", "{s}");
        for key in [
            "sample",
            "input",
            "output",
            "n_cells",
            "terminal_states",
            "fate_shares",
            "upstream_steps",
            "warnings",
        ] {
            assert_eq!(s[key], before[key], "{key} of a skipped sample");
        }
        assert!(s["seconds"].as_f64().expect("seconds") > 0.0, "{s}");
    }
    let csv = parse_csv(&std::fs::read_to_string(out.join("summary.csv")).expect("csv"));
    assert_eq!(csv.len(), 3);
    let col = |name: &str| csv[0].iter().position(|c| c == name).expect(name);
    for row in &csv[1..] {
        assert_eq!(row.len(), csv[0].len());
        assert!(!row[col("terminal_states")].is_empty(), "{row:?}");
        assert!(!row[col("fate_shares")].is_empty(), "{row:?}");
    }
    // Other settings: the outputs are not up to date any more.
    let res = batch(&[&a, &b], &out, &["--jobs", "2", "--seed", "1"]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    for s in samples(&summary(&out)) {
        assert_eq!(s["status"], "ok", "{s}");
    }
}

/// Same-named inputs whose folders do not tell them apart get a hash of their path; in one
/// folder, their extensions; the names are the same on every run and in any input order
/// (`--dry-run`: nothing computed).
#[test]
fn batch_names_same_named_inputs_deterministically() {
    let d = tempdir();
    let p = d.path();
    let inputs = [
        p.join("p/x/s.h5ad"),
        p.join("q/x/s.h5ad"),
        p.join("d/t.h5ad"),
        p.join("d/t.hdf5"),
    ];
    let names = |order: &[usize]| -> Vec<String> {
        let res = succeed(
            cellfate()
                .args(["batch", "--dry-run", "--out-dir"])
                .arg(p.join("out"))
                .args(order.iter().map(|&i| &inputs[i])),
        );
        let mut v: Vec<String> = text(&res.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("# sample "))
            .map(|l| l.split(':').next().expect("name").to_string())
            .collect();
        v.sort();
        v
    };
    let first = names(&[0, 1, 2, 3]);
    assert_eq!(first.len(), 4);
    assert!(first.contains(&"t_h5ad".to_string()) && first.contains(&"t_hdf5".to_string()));
    let hashed: Vec<&String> = first.iter().filter(|n| n.starts_with("s_")).collect();
    assert_eq!(hashed.len(), 2, "{first:?}");
    assert_ne!(hashed[0], hashed[1]);
    assert!(
        hashed.iter().all(|n| n.len() == "s_".len() + 8),
        "{first:?}"
    );
    assert_eq!(names(&[3, 2, 1, 0]), first);
}

/// The same input given twice (and once more through `..`) with `--jobs 2`: one sample, one
/// output, and a note.
#[test]
fn batch_computes_a_duplicate_input_once() {
    let d = tempdir();
    let a = simulation(&d.path().join("in/x.h5ad"), 3, &[]);
    let detour = d.path().join("in/../in/x.h5ad");
    let out = d.path().join("out");
    let res = batch(&[&a, &a, &detour], &out, &["--jobs", "2"]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let stdout = text(&res.stdout);
    assert_eq!(stdout.matches("is the same file as").count(), 2, "{stdout}");
    assert!(stdout.contains("computed once"), "{stdout}");
    let s = samples(&summary(&out));
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["sample"], "x");
    assert_eq!(s[0]["status"], "ok");
    let outputs: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".h5ad"))
        .collect();
    assert_eq!(outputs, ["x.h5ad"]);
}

/// A corrupt input and a missing one among good ones: the summary (JSON and CSV) lists every
/// sample, the failures with their errors and the others with their results; exit code 1.
#[test]
fn batch_summary_records_failed_samples_with_the_others() {
    let d = tempdir();
    let good = simulation(&d.path().join("good.h5ad"), 4, &[]);
    let corrupt = d.path().join("corrupt.h5ad");
    std::fs::write(&corrupt, b"\x89HDF\r\n\x1a\nthen garbage").expect("write");
    let missing = d.path().join("missing.h5ad");
    let out = d.path().join("out");
    let res = batch(&[&corrupt, &good, &missing], &out, &["--jobs", "2"]);
    assert_eq!(res.status.code(), Some(1), "{}", text(&res.stderr));
    let v = summary(&out);
    assert_eq!(v["complete"], true);
    let s = samples(&v);
    assert_eq!(s.len(), 3);
    let by = |name: &str| {
        s.iter()
            .find(|x| x["sample"] == name)
            .unwrap_or_else(|| panic!("{name} in the summary"))
            .clone()
    };
    for bad in ["corrupt", "missing"] {
        let e = by(bad);
        assert_eq!(e["status"], "failed", "{e}");
        assert!(
            e["error"].as_str().expect("error").contains(bad),
            "the error names the file: {e}"
        );
    }
    let g = by("good");
    assert_eq!(g["status"], "ok");
    assert_eq!(strs(&g["terminal_states"]).len(), 2);
    let csv = parse_csv(&std::fs::read_to_string(out.join("summary.csv")).expect("csv"));
    assert_eq!(csv.len(), 4);
    let col = |name: &str| csv[0].iter().position(|c| c == name).expect(name);
    for row in &csv[1..] {
        assert_eq!(row.len(), csv[0].len(), "{row:?}");
        let failed = row[col("status")] == "failed";
        assert_eq!(failed, !row[col("error")].is_empty(), "{row:?}");
        assert_eq!(failed, row[col("terminal_states")].is_empty(), "{row:?}");
    }
    // The stdout report lists every sample too.
    let stdout = text(&res.stdout);
    for name in ["corrupt", "good", "missing"] {
        assert!(stdout.contains(name), "{stdout}");
    }
}

/// The disk fills (simulated with `prlimit --fsize`, SIGXFSZ ignored, so that writes past
/// 700 kB fail with EFBIG): every sample fails with its error, the summary is still written
/// and complete. Skipped where `prlimit` is missing.
#[test]
fn batch_summary_is_written_when_the_disk_fills() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: no prlimit");
        return;
    }
    let d = tempdir();
    let a = simulation(&d.path().join("a/s.h5ad"), 9, &[]);
    let b = simulation(&d.path().join("b/s.h5ad"), 10, &[]);
    let out = d.path().join("out");
    let res = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=700000 -- \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_cellfate"))
        .arg("batch")
        .args([&a, &b])
        .arg("--out-dir")
        .arg(&out)
        .args(small_run_flags("60"))
        .args(["--jobs", "2"])
        .output()
        .expect("runs");
    assert_eq!(res.status.code(), Some(1), "{}", text(&res.stderr));
    let v = summary(&out);
    assert_eq!(v["complete"], true);
    let s = samples(&v);
    assert_eq!(s.len(), 2);
    for e in &s {
        assert_eq!(e["status"], "failed", "{e}");
        let err = e["error"].as_str().expect("error").to_lowercase();
        assert!(err.contains("too large"), "{err}");
    }
    let csv = parse_csv(&std::fs::read_to_string(out.join("summary.csv")).expect("csv"));
    assert_eq!(csv.len(), 3);
    assert!(csv.iter().all(|r| r.len() == csv[0].len()));
}

/// A summary that cannot be written is an error naming it (exit 2), found before any sample
/// is computed.
#[test]
fn batch_reports_a_summary_it_cannot_write() {
    let d = tempdir();
    let good = simulation(&d.path().join("good.h5ad"), 5, &[]);
    let out = d.path().join("out");
    // A directory where summary.csv goes.
    std::fs::create_dir_all(out.join("summary.csv/occupied")).expect("mkdir");
    let res = batch(&[&good], &out, &[]);
    assert_eq!(res.status.code(), Some(2), "{}", text(&res.stdout));
    let stderr = text(&res.stderr);
    assert!(stderr.contains("summary.csv"), "{stderr}");
    assert!(!out.join("good.h5ad").exists(), "no sample computed");
}

/// A cluster name with an escape sequence does not reach the terminal raw; names with a comma,
/// a quote and a line break are quoted in the drivers CSV, which parses back to the names.
#[test]
fn hostile_names_are_escaped_on_the_terminal_and_quoted_in_csv() {
    let d = tempdir();
    let red = "red\u{1b}[31m\u{1b}]0;owned\u{7}";
    let csvish = "x,\"y\"\nz";
    let bidi = "Pro\u{9b}31m\u{202e}genitor";
    let input = simulation(
        &d.path().join("hostile.h5ad"),
        6,
        &[("Alpha", red), ("Beta", csvish), ("Progenitor", bidi)],
    );
    // `inspect`, as text and as JSON (which stays valid JSON, with the names intact).
    let hazard = |s: &str| {
        s.chars().any(|c| {
            (c.is_control() && c != '\n' && c != '\t') || ('\u{202a}'..='\u{202e}').contains(&c)
        })
    };
    let res = succeed(cellfate().arg("inspect").arg(&input));
    assert!(!hazard(&text(&res.stdout)), "{}", text(&res.stdout));
    assert!(text(&res.stdout).contains("Pro\\u{9b}31m\\u{202e}genitor"));
    let res = succeed(cellfate().arg("inspect").arg("--json").arg(&input));
    assert!(!hazard(&text(&res.stdout)), "{}", text(&res.stdout));
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).expect("inspect --json");
    fn all_strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| all_strings(x, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    all_strings(&v, &mut found);
    assert!(found.iter().any(|s| s == bidi) && found.iter().any(|s| s == red));
    let out = d.path().join("out.h5ad");
    let res = cellfate()
        .arg("run")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(small_run_flags("60"))
        .output()
        .expect("runs");
    assert!(res.status.success(), "{}", text(&res.stderr));
    let stdout = text(&res.stdout);
    for stream in [&stdout, &text(&res.stderr)] {
        assert!(
            !stream.contains('\u{1b}') && !stream.contains('\u{7}'),
            "{stream:?}"
        );
    }
    // The names are there, escaped (terminal states are named after their clusters).
    assert!(
        stdout.contains("red\\x1b[31m\\x1b]0;owned\\x07"),
        "{stdout}"
    );
    assert!(stdout.contains("x,\"y\"\\nz"), "{stdout}");
    // The batch report escapes them too.
    let bout = d.path().join("batch");
    let res = batch(&[&input], &bout, &[]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    assert!(
        !text(&res.stdout).contains('\u{1b}'),
        "{}",
        text(&res.stdout)
    );
    let csv = parse_csv(&std::fs::read_to_string(bout.join("summary.csv")).expect("csv"));
    assert_eq!(csv.len(), 2);
    assert!(csv[1].iter().any(|f| f.contains(csvish)), "{csv:?}");
    // drivers --csv: every record has the header's number of fields, and the header holds
    // the lineage names as they are.
    let table = d.path().join("drivers.csv");
    let res = cellfate()
        .arg("drivers")
        .arg(&out)
        .arg("-o")
        .arg(d.path().join("drivers.h5ad"))
        .arg("--csv")
        .arg(&table)
        .output()
        .expect("runs");
    assert!(res.status.success(), "{}", text(&res.stderr));
    assert!(!text(&res.stdout).contains('\u{1b}'));
    // Figures: no control character in the SVG files (XML forbids them).
    let plots = d.path().join("plots");
    succeed(
        cellfate()
            .arg("plot")
            .arg(&out)
            .arg("-o")
            .arg(&plots)
            .args(["--format", "svg", "--n-walks", "5"]),
    );
    for e in std::fs::read_dir(&plots).expect("plots") {
        let svg = std::fs::read_to_string(e.expect("entry").path()).expect("svg");
        assert!(
            !svg.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')),
            "a control character in an SVG"
        );
    }
    // The HTML report neither.
    let report = d.path().join("report.html");
    succeed(
        cellfate()
            .arg("report")
            .arg(&out)
            .arg("-o")
            .arg(&report)
            .args(["--n-walks", "5"]),
    );
    let html = std::fs::read_to_string(&report).expect("report");
    assert!(!html.contains('\u{1b}') && html.contains("red\\x1b[31m"));
    let rows = parse_csv(&std::fs::read_to_string(&table).expect("drivers.csv"));
    let header = &rows[0];
    assert_eq!(header[0], "gene");
    assert!(header.contains(&format!("{csvish}_corr")), "{header:?}");
    assert!(header.contains(&format!("{red}_qval")), "{header:?}");
    assert!(rows.len() > 10, "a row per gene: {}", rows.len());
    for row in &rows[1..] {
        assert_eq!(row.len(), header.len(), "{row:?}");
    }
}

/// Lineages `A B` and `A\B` sanitise alike: two distinct plot files (`fate_A_B`,
/// `fate_A_B_2`).
#[test]
fn lineages_that_sanitise_alike_get_distinct_plot_files() {
    let d = tempdir();
    let input = simulation(
        &d.path().join("ab.h5ad"),
        7,
        &[("Alpha", "A B"), ("Beta", "A\\B")],
    );
    let out = d.path().join("out.h5ad");
    let plots = d.path().join("plots");
    succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(small_run_flags("60"))
            .arg("--plots")
            .arg(&plots)
            .args(["--n-walks", "5"]),
    );
    let mut fates: Vec<String> = std::fs::read_dir(&plots)
        .expect("plots")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fate_") && n.ends_with(".png"))
        .collect();
    fates.sort();
    assert_eq!(fates, ["fate_A_B.png", "fate_A_B_2.png"]);
}

/// A 5,000-character state name (two of them, sharing their first 4,999 characters): the
/// plots and the report are written, every file name is bounded, the two fates get distinct
/// files.
#[test]
fn a_5000_character_state_name_does_not_abort_plots_or_report() {
    let d = tempdir();
    let long_a = "L".repeat(5000);
    let long_b = format!("{}M", "L".repeat(4999));
    let input = simulation(
        &d.path().join("long.h5ad"),
        8,
        &[("Alpha", &long_a), ("Beta", &long_b)],
    );
    let out = d.path().join("out.h5ad");
    let plots = d.path().join("plots");
    let report = d.path().join("report.html");
    succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(small_run_flags("60"))
            .arg("--plots")
            .arg(&plots)
            .arg("--report")
            .arg(&report)
            .args(["--n-walks", "5"]),
    );
    let names: Vec<String> = std::fs::read_dir(&plots)
        .expect("plots")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.len() <= 120), "{names:?}");
    let fates: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("fate_") && n.ends_with(".svg"))
        .collect();
    assert_eq!(fates.len(), 2, "{names:?}");
    let html = std::fs::read_to_string(&report).expect("report");
    assert!(html.contains(&long_a) && html.contains(&long_b));
    // `plot` on the output, too.
    succeed(
        cellfate()
            .arg("plot")
            .arg(&out)
            .arg("-o")
            .arg(d.path().join("plots2"))
            .args(["--format", "svg", "--n-walks", "5"]),
    );
}

/// `terminal-states --cells-file`: names holding commas come quoted (RFC 4180, as cellfate
/// writes CSV), an unclosed quote is an error naming the line, and duplicated obs names are
/// refused (a name shared by many cells would pick one of them).
#[test]
fn cells_file_reads_quoted_names_and_refuses_duplicated_obs_names() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(&sim, &["--cells", "200", "--genes", "20", "--fates", "2"]);
    let r = cellfate::io::H5adReader::open(&sim).expect("simulation");
    let names = r.obs_names().expect("obs names");
    drop(r);
    let cells = d.path().join("cells.csv");
    std::fs::write(
        &cells,
        format!("cell,state\n\"{}\",A\n{},\"B, late\"\n", names[0], names[1]),
    )
    .expect("write");
    let out = d.path().join("ts.h5ad");
    let res = succeed(
        cellfate()
            .arg("terminal-states")
            .arg(&sim)
            .arg("--cells-file")
            .arg(&cells)
            .arg("-o")
            .arg(&out),
    );
    assert!(
        text(&res.stdout).contains("B, late (1 cells)"),
        "{}",
        text(&res.stdout)
    );
    std::fs::write(&cells, format!("cell,state\n\"{},A\n", names[0])).expect("write");
    let res = cellfate()
        .arg("terminal-states")
        .arg(&sim)
        .arg("--cells-file")
        .arg(&cells)
        .arg("-o")
        .arg(d.path().join("ts2.h5ad"))
        .output()
        .expect("runs");
    assert_eq!(res.status.code(), Some(2));
    assert!(
        text(&res.stderr).contains("cells.csv:2"),
        "{}",
        text(&res.stderr)
    );
    // Every cell named "cell": refused, naming the input and the duplicated name.
    let dup = d.path().join("dup.h5ad");
    let r = cellfate::io::H5adReader::open(&sim).expect("simulation");
    let mut obs = r.obs().expect("obs");
    drop(r);
    obs.index = vec!["cell".to_string(); names.len()];
    let mut edit = cellfate::io::H5adEdit::new(&sim);
    edit.set("obs", Element::DataFrame(obs));
    edit.write_to(&dup).expect("edited copy");
    std::fs::write(&cells, "cell,state\ncell,A\n").expect("write");
    let res = cellfate()
        .arg("terminal-states")
        .arg(&dup)
        .arg("--cells-file")
        .arg(&cells)
        .arg("-o")
        .arg(d.path().join("ts3.h5ad"))
        .output()
        .expect("runs");
    let err = text(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(
        err.contains("dup.h5ad") && err.contains("not unique") && err.contains("\"cell\""),
        "{err}"
    );
}

/// `cellfate summary` over outputs computed separately (as a workflow engine runs `run` per
/// sample): the rows carry what `batch`'s summary says of the same outputs, times and memory
/// come from Snakemake-style benchmark tables, a file that is not a fate-mapping output is a
/// failed row (exit 1), and a missing benchmark table is an error naming it (exit 2).
#[test]
fn summary_gathers_separate_outputs_like_batch() {
    let d = tempdir();
    let a = simulation(&d.path().join("in/a.h5ad"), 5, &[]);
    let b = simulation(&d.path().join("in/b.h5ad"), 6, &[]);
    let by_batch = d.path().join("batch");
    let res = batch(&[&a, &b], &by_batch, &[]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let bench = d.path().join("benchmarks");
    std::fs::create_dir(&bench).expect("mkdir");
    let header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time";
    std::fs::write(
        bench.join("a.tsv"),
        format!("{header}\n12.5\t0:00:12\t150.25\t900\t140\t141\t0\t10\t95\t11.9\n"),
    )
    .expect("write");
    std::fs::write(
        bench.join("b.tsv"),
        format!("{header}\n3.25\t0:00:03\tNA\tNA\tNA\tNA\t0\t10\t90\t3\n"),
    )
    .expect("write");
    std::fs::write(
        bench.join("a_raw.tsv"),
        format!("{header}\n1\t0:00:01\t10\t-\t-\t-\t-\t-\t-\t-\n"),
    )
    .expect("write");
    // The raw input under another name: readable, but not a fate-mapping output.
    let raw = d.path().join("a_raw.h5ad");
    std::fs::copy(&a, &raw).expect("copy");
    let out = d.path().join("gathered");
    let run = |files: &[&Path], bench: &Path| {
        cellfate()
            .arg("summary")
            .args(files)
            .arg("--out-dir")
            .arg(&out)
            .arg("--benchmarks")
            .arg(bench)
            .output()
            .expect("summary runs")
    };
    let (oa, ob) = (by_batch.join("a.h5ad"), by_batch.join("b.h5ad"));
    let res = run(&[&oa, &ob], &bench);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let stdout = text(&res.stdout);
    assert!(stdout.contains("terminal:"), "{stdout}");
    let (mine, theirs) = (samples(&summary(&out)), samples(&summary(&by_batch)));
    assert_eq!(mine.len(), 2);
    for (m, t) in mine.iter().zip(&theirs) {
        assert_eq!(m["status"], "ok", "{m}");
        for key in [
            "sample",
            "n_cells",
            "terminal_states",
            "fate_shares",
            "upstream_steps",
            "warnings",
        ] {
            assert_eq!(m[key], t[key], "{key}: {m} vs {t}");
        }
        assert!(!strs(&m["terminal_states"]).is_empty(), "{m}");
    }
    assert_eq!(mine[0]["seconds"], 12.5);
    assert_eq!(mine[0]["peak_rss_mb"], 150.25);
    assert_eq!(mine[1]["seconds"], 3.25);
    assert!(mine[1]["peak_rss_mb"].is_null(), "NA is no measurement");
    // One settings for both: recorded as batch records them.
    assert_eq!(summary(&out)["config"], summary(&by_batch)["config"]);
    let csv = parse_csv(&std::fs::read_to_string(out.join("summary.csv")).expect("csv"));
    let batch_csv = parse_csv(&std::fs::read_to_string(by_batch.join("summary.csv")).expect("csv"));
    assert_eq!(csv[0], batch_csv[0], "the same columns as batch's summary");
    assert_eq!(csv.len(), 3);
    // A file that is not an output: a failed row with the reason, the others kept, exit 1.
    let res = run(&[&oa, &raw, &ob], &bench);
    assert_eq!(res.status.code(), Some(1), "{}", text(&res.stderr));
    let s = samples(&summary(&out));
    assert_eq!(s.len(), 3);
    assert_eq!(s[1]["status"], "failed");
    assert!(
        s[1]["error"]
            .as_str()
            .expect("error")
            .contains("uns/cellfate/summary"),
        "{}",
        s[1]
    );
    assert_eq!(
        (s[0]["status"].as_str(), s[2]["status"].as_str()),
        (Some("ok"), Some("ok"))
    );
    // A missing benchmark table: an error naming it, exit 2.
    let empty = d.path().join("no-benchmarks");
    std::fs::create_dir(&empty).expect("mkdir");
    let res = run(&[&oa], &empty);
    assert_eq!(res.status.code(), Some(2));
    assert!(text(&res.stderr).contains("a.tsv"), "{}", text(&res.stderr));
}
