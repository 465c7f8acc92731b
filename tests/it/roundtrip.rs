//! read → write → read round-trips every slot losslessly (bitwise for floats), for every file
//! in `../shared/data`, both re-encoded (anndata ≥ 0.8 layout) and copied; edits add, replace
//! and remove slots without touching the input.

use std::path::Path;

use cellfate::io::{
    Categorical, DataFrame, Element, H5adEdit, H5adError, H5adReader, NumVec, SparseArray,
};
use cellfate::kernels::Csr;

use crate::common::{data_files, tempdir};

fn assert_same_content(a: &Path, b: &Path) {
    let ra = H5adReader::open(a).expect("open a");
    let rb = H5adReader::open(b).expect("open b");
    let mut ka = ra.keys("").expect("keys");
    ka.retain(|k| !k.starts_with("__"));
    for g in ["layers", "obsm", "obsp", "varm", "varp", "uns"] {
        // Empty groups are created on write; compare by content.
        if !ka.iter().any(|k| k == g) && rb.keys(g).expect("keys").is_empty() {
            continue;
        }
    }
    for k in &ka {
        let ea = ra
            .read(k)
            .unwrap_or_else(|e| panic!("{}: {e}", a.display()));
        let eb = rb
            .read(k)
            .unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        assert!(
            ea == eb,
            "{}: slot {k} differs after the round trip",
            a.display()
        );
    }
    assert_eq!(ra.n_obs().expect("n"), rb.n_obs().expect("n"));
    assert_eq!(ra.n_vars().expect("n"), rb.n_vars().expect("n"));
}

#[test]
fn reencode_round_trip_is_lossless_for_every_file() {
    let dir = tempdir();
    for f in data_files() {
        let out = dir.path().join("out.h5ad");
        let mut edit = H5adEdit::new(&f);
        edit.reencode_all(true);
        edit.write_to(&out)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_same_content(&f, &out);
        // The output is in the modern layout.
        assert!(!H5adReader::open(&out).expect("open").is_legacy());
        // And a second round trip from our own output is identical too.
        let out2 = dir.path().join("out2.h5ad");
        H5adEdit::new(&out).write_to(&out2).expect("copy");
        assert_same_content(&out, &out2);
    }
}

/// No temporary output (`.NAME.cellfate-tmp-*`) is left in `dir`.
pub(crate) fn assert_no_temporary_files(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("cellfate-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn small_file(dir: &Path) -> std::path::PathBuf {
    let n = 4;
    let obs = DataFrame {
        index_name: "_index".into(),
        index: (0..n).map(|i| format!("cell{i}")).collect(),
        columns: vec![
            (
                "clusters".into(),
                Element::Categorical(Categorical::from_labels(
                    &[Some("A".into()), Some("B".into()), None, Some("A".into())],
                    None,
                )),
            ),
            ("t".into(), Element::from_f64(vec![0.0, 0.5, 1.0, f64::NAN])),
        ],
    };
    let var = DataFrame::with_index(vec!["g1".into(), "g2".into(), "gène✓".into()]);
    let x = Csr::from_triplets(n, 3, &[(0, 0, 1.0), (1, 2, 2.5), (3, 1, -1.0)]).expect("csr");
    let p = dir.join("small.h5ad");
    cellfate::io::write_new(
        &p,
        &[
            ("X".into(), Element::Sparse(SparseArray::from_csr(&x))),
            ("obs".into(), Element::DataFrame(obs)),
            ("var".into(), Element::DataFrame(var)),
            (
                "uns".into(),
                Element::Dict(vec![(
                    "nested".into(),
                    Element::Dict(vec![
                        ("s".into(), Element::Str("hello".into())),
                        ("x".into(), Element::Scalar(NumVec::I64(vec![3]))),
                    ]),
                )]),
            ),
        ],
    )
    .expect("write");
    p
}

#[test]
fn edit_adds_replaces_and_removes_slots_without_touching_input() {
    let dir = tempdir();
    let input = small_file(dir.path());
    let before = std::fs::read(&input).expect("read input");
    let out = dir.path().join("edited.h5ad");
    let t =
        Csr::from_triplets(4, 4, &[(0, 1, 1.0), (1, 0, 1.0), (2, 3, 1.0), (3, 2, 1.0)]).expect("t");
    let mut edit = H5adEdit::new(&input);
    edit.set("obsp/T_fwd", Element::Sparse(SparseArray::from_csr(&t)))
        .set(
            "uns/T_fwd_params",
            Element::Dict(vec![("params".into(), Element::Str("{}".into()))]),
        )
        .set(
            "uns/nested/y",
            Element::from_strings(vec!["a".into(), "b".into()]),
        )
        .set("obs/t", Element::from_f64(vec![1.0, 2.0, 3.0, 4.0]))
        .set("obs/new", Element::from_f64(vec![0.0; 4]))
        .remove("obs/clusters")
        .set("obsm/X_emb", Element::from_f64_matrix(4, 2, vec![0.0; 8]));
    edit.write_to(&out).expect("write");
    assert_eq!(
        std::fs::read(&input).expect("read input"),
        before,
        "input modified"
    );

    let r = H5adReader::open(&out).expect("open");
    assert_eq!(r.transition_matrix("T_fwd").expect("T").n_cells(), 4);
    assert_eq!(r.columns("obs").expect("cols"), vec!["t", "new"]);
    assert_eq!(r.obs_f64("t").expect("t"), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        r.read("uns/nested/s").expect("s"),
        Element::Str("hello".into())
    );
    assert_eq!(r.read("uns/nested/y").expect("y").shape(), vec![2]);
    assert_eq!(r.info("obsm/X_emb").expect("emb").shape, vec![4, 2]);
    assert_eq!(r.var_names().expect("var")[2], "gène✓");
    assert_no_temporary_files(dir.path());
}

#[test]
fn edit_rejects_wrong_shapes_and_overwriting_the_input() {
    let dir = tempdir();
    let input = small_file(dir.path());
    let out = dir.path().join("o.h5ad");
    let mut edit = H5adEdit::new(&input);
    edit.set("obs/short", Element::from_f64(vec![1.0]));
    let err = edit.write_to(&out).expect_err("short column");
    assert!(err.to_string().contains("obs/short"), "{err}");
    assert!(!out.exists(), "no partial output");

    let mut edit = H5adEdit::new(&input);
    edit.set("layers/bad", Element::from_f64_matrix(2, 3, vec![0.0; 6]));
    let err = edit.write_to(&out).expect_err("bad layer");
    assert!(
        matches!(err, H5adError::Invalid { ref slot, .. } if slot == "layers/bad"),
        "{err}"
    );

    let err = H5adEdit::new(&input)
        .write_to(&input)
        .expect_err("overwrite");
    assert!(matches!(err, H5adError::WouldOverwriteInput { .. }));
    // In place only when asked.
    let mut edit = H5adEdit::new(&input);
    edit.set("obs/extra", Element::from_f64(vec![7.0; 4]));
    edit.write_in_place().expect("in place");
    assert_eq!(
        H5adReader::open(&input)
            .expect("o")
            .obs_f64("extra")
            .expect("x"),
        vec![7.0; 4]
    );
}

#[test]
fn early_slots_are_written_before_the_rest_and_replace_the_inputs() {
    let dir = tempdir();
    let input = small_file(dir.path());
    let before = std::fs::read(&input).expect("read input");
    let out = dir.path().join("early.h5ad");
    // 4 × 3: X replaced early by a whole element, a new dense layer filled by column blocks
    // (out of order), and slots computed meanwhile returned to be set with the rest.
    let x = Csr::from_triplets(4, 3, &[(2, 2, 9.0)]).expect("x");
    let mut edit = H5adEdit::new(&input);
    edit.set("obs/t", Element::from_f64(vec![1.0, 2.0, 3.0, 4.0]));
    edit.write_to_with(&out, |early| -> Result<_, H5adError> {
        early.write("X", Element::Sparse(x.into()))?;
        let mut m = early.dense_columns::<f32>("layers/Ms", 4, 3)?;
        m.write(2..3, &[3.0, 6.0, 9.0, 12.0])?;
        m.write(0..2, &[1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0])?;
        m.finish()?;
        Ok(vec![(
            "var/gamma".to_string(),
            Element::from_f64(vec![0.1, 0.2, 0.3]),
        )])
    })
    .expect("write");
    assert_eq!(
        std::fs::read(&input).expect("input"),
        before,
        "input modified"
    );
    let r = H5adReader::open(&out).expect("open");
    assert_eq!(r.csr("X").expect("X").to_dense(), {
        let mut d = vec![0.0; 12];
        d[8] = 9.0;
        d
    });
    let (n, g, ms) = r.dense("layers/Ms").expect("Ms");
    assert_eq!((n, g), (4, 3));
    assert_eq!(ms, (1..=12).map(f64::from).collect::<Vec<_>>());
    assert_eq!(r.columns("var").expect("var"), vec!["gamma"]);
    assert_eq!(r.obs_f64("t").expect("t"), vec![1.0, 2.0, 3.0, 4.0]);
    assert!(!r.exists(".cellfate-staging"));
    assert_eq!(
        r.read("uns/nested/s").expect("s"),
        Element::Str("hello".into())
    );
    let py = crate::python::python();
    if let Some(py) = py {
        let ok = std::process::Command::new(py)
            .args([
                "-c",
                "import anndata, sys; a = anndata.read_h5ad(sys.argv[1]); assert a.layers['Ms'].shape == (4, 3) and a.X[2, 2] == 9.0",
            ])
            .arg(&out)
            .status()
            .expect("python");
        assert!(ok.success(), "anndata reads the file");
    }

    // Errors: an unwritten column, a wrong shape, an error of the producer; the target is
    // never created and no temporary file is left.
    let out2 = dir.path().join("never.h5ad");
    let e = H5adEdit::new(&input)
        .write_to_with(&out2, |early| -> Result<_, H5adError> {
            let mut m = early.dense_columns::<f32>("layers/Ms", 4, 3)?;
            m.write(0..2, &[0.0; 8])?;
            m.finish()?;
            Ok(Vec::new())
        })
        .expect_err("column 2 never written");
    assert!(e.to_string().contains("column 2"), "{e}");
    let e = H5adEdit::new(&input)
        .write_to_with(&out2, |early| -> Result<_, H5adError> {
            early.dense_columns::<f32>("layers/Ms", 5, 3)?;
            Ok(Vec::new())
        })
        .expect_err("5 rows");
    assert!(
        matches!(e, H5adError::Invalid { ref slot, .. } if slot == "layers/Ms"),
        "{e}"
    );
    let e = H5adEdit::new(&input)
        .write_to_with(
            &out2,
            |early| -> Result<Vec<(String, Element)>, H5adError> {
                let mut m = early.dense_columns::<f32>("layers/Ms", 4, 3)?;
                m.write(1..3, &[0.0; 7]).map(|_| Vec::new())
            },
        )
        .expect_err("7 values for 2 columns");
    assert!(
        e.to_string().contains("8 values") || e.to_string().contains("values"),
        "{e}"
    );
    assert!(!out2.exists());
    assert_no_temporary_files(dir.path());
}
