//! Bad input gets a typed error naming the path, the slot and what was expected; never a panic.

use std::path::{Path, PathBuf};

use cellfate::io::{DataFrame, Element, H5adError, H5adReader, NumVec, SparseArray, SparseFormat};

use crate::common::{require_shared, tempdir};

fn obs_var(n_obs: usize, n_vars: usize) -> Vec<(String, Element)> {
    vec![
        (
            "obs".into(),
            Element::DataFrame(DataFrame::with_index(
                (0..n_obs).map(|i| format!("c{i}")).collect(),
            )),
        ),
        (
            "var".into(),
            Element::DataFrame(DataFrame::with_index(
                (0..n_vars).map(|i| format!("g{i}")).collect(),
            )),
        ),
    ]
}

fn file_with(dir: &Path, name: &str, extra: Vec<(String, Element)>) -> PathBuf {
    let mut members = obs_var(3, 2);
    members.extend(extra);
    let p = dir.join(name);
    cellfate::io::write_new(&p, &members).expect("write fixture");
    p
}

fn sparse(indptr: Vec<usize>, indices: Vec<u32>, data: Vec<f64>, shape: [usize; 2]) -> Element {
    Element::Sparse(SparseArray {
        format: SparseFormat::Csr,
        shape,
        indptr,
        indices,
        data: NumVec::F64(data),
    })
}

fn obsp(key: &str, el: Element) -> Vec<(String, Element)> {
    vec![("obsp".into(), Element::Dict(vec![(key.into(), el)]))]
}

#[test]
fn not_an_hdf5_file() {
    let d = tempdir();
    let p = d.path().join("notes.h5ad");
    std::fs::write(&p, "cell,gene\n1,2\n").expect("write");
    let e = H5adReader::open(&p).expect_err("not hdf5");
    assert!(matches!(e, H5adError::NotHdf5 { .. }), "{e}");
    assert!(e.to_string().contains("notes.h5ad") && e.to_string().contains("not an HDF5 file"));
}

#[test]
fn empty_file() {
    let d = tempdir();
    let p = d.path().join("empty.h5ad");
    std::fs::write(&p, b"").expect("write");
    let e = H5adReader::open(&p).expect_err("empty");
    assert!(matches!(e, H5adError::Empty { .. }), "{e}");
}

#[test]
fn missing_file() {
    let e = H5adReader::open("/nonexistent/x.h5ad").expect_err("missing");
    assert!(matches!(e, H5adError::Open { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/x.h5ad"));
}

#[test]
fn truncated_file() {
    let Some(dir) = require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let bytes = std::fs::read(dir.join("adata_50.h5ad")).expect("read");
    let d = tempdir();
    let p = d.path().join("truncated.h5ad");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    // Either opening fails, or reading the lost slots fails: never a panic, always named.
    match H5adReader::open(&p) {
        Err(e) => {
            assert!(matches!(e, H5adError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("truncated.h5ad"));
        }
        Ok(r) => {
            let errs: Vec<_> = r
                .keys("")
                .unwrap_or_default()
                .iter()
                .filter_map(|k| r.read(k).err())
                .collect();
            assert!(
                !errs.is_empty(),
                "a truncated file must not read completely"
            );
        }
    }
}

#[test]
fn missing_slot_lists_what_is_there() {
    let d = tempdir();
    let p = file_with(
        d.path(),
        "m.h5ad",
        obsp(
            "distances",
            sparse(vec![0, 0, 0, 0], vec![], vec![], [3, 3]),
        ),
    );
    let r = H5adReader::open(&p).expect("open");
    let e = r.obsp("connectivities").expect_err("missing");
    let msg = e.to_string();
    assert!(matches!(e, H5adError::Missing { .. }), "{msg}");
    assert!(
        msg.contains("obsp/connectivities") && msg.contains("distances"),
        "{msg}"
    );
    assert!(matches!(
        r.obs_f64("pseudotime"),
        Err(H5adError::Missing { .. })
    ));
}

#[test]
fn layer_shape_differs_from_x() {
    let d = tempdir();
    let x = Element::from_f64_matrix(3, 2, vec![0.0; 6]);
    let layer = Element::from_f64_matrix(3, 5, vec![0.0; 15]);
    let p = file_with(
        d.path(),
        "l.h5ad",
        vec![
            ("X".into(), x),
            (
                "layers".into(),
                Element::Dict(vec![("spliced".into(), layer)]),
            ),
        ],
    );
    let problems = H5adReader::open(&p)
        .expect("open")
        .validate()
        .expect("validate");
    assert_eq!(problems.len(), 1);
    let msg = problems[0].to_string();
    assert!(
        msg.contains("layers/spliced") && msg.contains("[3, 2]") && msg.contains("[3, 5]"),
        "{msg}"
    );
}

#[test]
fn obsp_not_square() {
    let d = tempdir();
    let p = file_with(
        d.path(),
        "o.h5ad",
        obsp(
            "connectivities",
            sparse(vec![0, 0, 0, 0], vec![], vec![], [3, 4]),
        ),
    );
    let e = H5adReader::open(&p)
        .expect("open")
        .obsp("connectivities")
        .expect_err("not square");
    let msg = e.to_string();
    assert!(
        matches!(e, H5adError::Invalid { .. }) && msg.contains("3 x 3") && msg.contains("3 x 4"),
        "{msg}"
    );
}

#[test]
fn indptr_not_monotone() {
    let d = tempdir();
    let p = file_with(
        d.path(),
        "i.h5ad",
        obsp(
            "g",
            sparse(vec![0, 2, 1, 2], vec![0, 1], vec![1.0, 1.0], [3, 3]),
        ),
    );
    let e = H5adReader::open(&p)
        .expect("open")
        .read("obsp/g")
        .expect_err("bad indptr");
    let msg = e.to_string();
    assert!(
        msg.contains("obsp/g/indptr") && msg.contains("monotone") && msg.contains("row 1"),
        "{msg}"
    );
}

#[test]
fn indices_out_of_range() {
    let d = tempdir();
    let p = file_with(
        d.path(),
        "j.h5ad",
        obsp(
            "g",
            sparse(vec![0, 1, 1, 2], vec![0, 7], vec![1.0, 1.0], [3, 3]),
        ),
    );
    let e = H5adReader::open(&p)
        .expect("open")
        .read("obsp/g")
        .expect_err("bad index");
    let msg = e.to_string();
    assert!(
        msg.contains("obsp/g/indices") && msg.contains("index 7") && msg.contains("row 2"),
        "{msg}"
    );
}

#[test]
fn transition_matrix_with_negative_or_nan_entries() {
    let d = tempdir();
    let neg = sparse(
        vec![0, 2, 3, 4],
        vec![0, 1, 1, 2],
        vec![1.5, -0.5, 1.0, 1.0],
        [3, 3],
    );
    let nan = sparse(
        vec![0, 1, 2, 3],
        vec![0, 1, 2],
        vec![1.0, f64::NAN, 1.0],
        [3, 3],
    );
    let zero = sparse(vec![0, 1, 1, 2], vec![0, 2], vec![1.0, 1.0], [3, 3]);
    let p = file_with(
        d.path(),
        "t.h5ad",
        vec![(
            "obsp".into(),
            Element::Dict(vec![
                ("T_fwd".into(), neg),
                ("T_nan".into(), nan),
                ("T_zero".into(), zero),
            ]),
        )],
    );
    let r = H5adReader::open(&p).expect("open");
    let msg = r
        .transition_matrix("T_fwd")
        .expect_err("negative")
        .to_string();
    assert!(
        msg.contains("obsp/T_fwd") && msg.contains("negative") && msg.contains("(0, 1)"),
        "{msg}"
    );
    let msg = r.transition_matrix("T_nan").expect_err("nan").to_string();
    assert!(
        msg.contains("obsp/T_nan") && msg.contains("not finite") && msg.contains("(1, 1)"),
        "{msg}"
    );
    let msg = r
        .transition_matrix("T_zero")
        .expect_err("zero row")
        .to_string();
    assert!(msg.contains("row 1") && msg.contains("all zero"), "{msg}");
}

#[test]
fn unsupported_encoding() {
    let d = tempdir();
    let p = file_with(d.path(), "u.h5ad", vec![]);
    {
        let f = hdf5::File::with_options()
            .with_fapl(|p| {
                p.fclose_degree(hdf5::file::FileCloseDegree::Strong)
                    .file_locking(false)
            })
            .open_rw(&p)
            .expect("open rw");
        let g = f
            .group("obsm")
            .expect("obsm")
            .create_group("awk")
            .expect("create");
        let v: hdf5::types::VarLenUnicode = "awkward-array".parse().expect("str");
        g.new_attr::<hdf5::types::VarLenUnicode>()
            .shape(())
            .create("encoding-type")
            .expect("attr")
            .write_scalar(&v)
            .expect("write");
        drop(g);
        f.close().expect("close");
    }
    let r = H5adReader::open(&p).expect("open");
    let e = r.read("obsm/awk").expect_err("unsupported");
    assert!(
        matches!(e, H5adError::Unsupported { ref encoding, ref slot, .. } if encoding == "awkward-array" && slot == "obsm/awk"),
        "{e}"
    );
}

/// `cellfate preprocess` on degenerate counts: genes and cells without any count are
/// carried through (never highly variable, never velocity genes, no NaN anywhere); all-zero
/// counts, too strict a gene filter and fewer cells than neighbours are clear errors naming
/// the file and the parameter (exit code 2).
#[test]
fn preprocess_degenerate_counts() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    crate::common::write_simulation(&sim, 400, Some(120));
    let r = H5adReader::open(&sim).expect("sim");
    // Zero out gene 0 and cells 3 and 7 in every count matrix.
    let zeroed = |slot: &str, all: bool| -> Element {
        let m = r.csr(slot).expect(slot);
        let mut trip = Vec::new();
        for i in 0..m.nrows() {
            let (c, v) = m.row(i);
            for (&j, &x) in c.iter().zip(v) {
                if !all && j != 0 && i != 3 && i != 7 {
                    trip.push((i, j as usize, x));
                }
            }
        }
        let z = cellfate::kernels::Csr::from_triplets(m.nrows(), m.ncols(), &trip).expect("csr");
        Element::Sparse(SparseArray::from_csr(&z))
    };
    let write = |name: &str, all: bool| -> PathBuf {
        let p = d.path().join(name);
        cellfate::io::H5adEdit::new(&sim)
            .set("X", zeroed("X", all))
            .set("layers/spliced", zeroed("layers/spliced", all))
            .set("layers/unspliced", zeroed("layers/unspliced", all))
            .write_to(&p)
            .expect("write");
        p
    };
    let holes = write("holes.h5ad", false);
    let out = d.path().join("pp.h5ad");
    crate::common::succeed(
        crate::common::cellfate()
            .arg("preprocess")
            .arg(&holes)
            .args(["-q", "--n-neighbors", "15", "-o"])
            .arg(&out),
    );
    let o = H5adReader::open(&out).expect("output");
    let flag = |slot: &str| o.read(slot).expect(slot).to_f64_vec().expect(slot)[0] != 0.0;
    assert!(
        !flag("var/highly_variable"),
        "an all-zero gene is highly variable"
    );
    assert!(
        !flag("var/velocity_genes"),
        "an all-zero gene is a velocity gene"
    );
    for slot in ["layers/Ms", "layers/Mu", "layers/velocity", "obsm/X_pca"] {
        let (_, _, v) = o.dense(slot).expect(slot);
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{slot} has non-finite values"
        );
    }
    let conn = o.obsp("connectivities").expect("connectivities");
    assert!(conn.data().iter().all(|x| x.is_finite() && *x >= 0.0));
    assert!(
        conn.row(3).0.len() >= 14,
        "an empty cell still has neighbours"
    );
    // Errors: exit code 2 and a message naming the file and the parameter.
    let fails = |input: &Path, args: &[&str], want: &[&str]| {
        let res = crate::common::cellfate()
            .arg("preprocess")
            .arg(input)
            .args(args)
            .arg("-o")
            .arg(d.path().join("never.h5ad"))
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{err}");
        for w in want {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert!(!d.path().join("never.h5ad").exists());
    };
    let empty = write("empty.h5ad", true);
    fails(&empty, &[], &["empty.h5ad", "min_shared_counts = 20"]);
    fails(
        &holes,
        &["--min-shared-counts", "1e9"],
        &["holes.h5ad", "--min-shared-counts"],
    );
    fails(
        &holes,
        &["--n-neighbors", "400"],
        &["holes.h5ad", "400 cells", "n_neighbors = 400"],
    );
}

#[test]
fn simulate_rejects_bad_parameters_by_name() {
    let d = tempdir();
    for (args, name) in [
        (vec!["--cells", "50"], "n_cells"),
        (vec!["--depth", "0"], "depth"),
        (vec!["--fates", "9"], "n_fates"),
    ] {
        let out = d.path().join("sim.h5ad");
        let res = crate::common::cellfate()
            .arg("simulate")
            .args(&args)
            .arg("-o")
            .arg(&out)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(name) && err.contains("expected"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?}: output written");
    }
}

/// A sparse matrix of more stored entries than one block of indices (read in blocks of
/// 2²⁰, narrowed as they come): read back exactly, and an index out of range in the second
/// block is reported at its own row.
#[test]
fn indices_read_in_blocks() {
    let (rows, cols) = (1200, 1000);
    let mut indptr = vec![0];
    let mut indices = Vec::new();
    let mut data = Vec::new();
    for i in 0..rows {
        for j in 0..cols {
            indices.push(j as u32);
            data.push((i * cols + j) as f64);
        }
        indptr.push(indices.len());
    }
    assert!(indices.len() > 1 << 20);
    let d = tempdir();
    let write = |name: &str, indices: Vec<u32>| {
        let p = d.path().join(name);
        let mut members = obs_var(rows, cols);
        members.push((
            "X".into(),
            sparse(indptr.clone(), indices, data.clone(), [rows, cols]),
        ));
        cellfate::io::write_new(&p, &members).expect("write fixture");
        p
    };
    let p = write("big.h5ad", indices.clone());
    let x = H5adReader::open(&p).expect("open").csr("X").expect("read");
    assert_eq!(x.nnz(), rows * cols);
    assert_eq!(x.indices(), &indices[..]);
    assert_eq!(x.data(), &data[..]);
    // Entry 1,100,003 (row 1100, column 3) out of range.
    let mut bad = indices;
    bad[1_100_003] = 5000;
    let p = write("bad.h5ad", bad);
    let e = H5adReader::open(&p)
        .expect("open")
        .read("X")
        .expect_err("bad index");
    let msg = e.to_string();
    assert!(
        msg.contains("X/indices") && msg.contains("index 5000") && msg.contains("row 1100"),
        "{msg}"
    );
}
