//! Every `.h5ad` under `../shared/data` opens, and what the reader (and `cellfate inspect`)
//! reports matches what the folder's README says (`data_expectations.rs`).

use cellfate::inspect::inspect;
use cellfate::io::{Element, H5adReader};

use crate::common::{data_files, require_shared};
use crate::data_expectations::FILES;

#[test]
fn expectations_cover_every_data_file() {
    let files = data_files();
    if files.is_empty() {
        return;
    }
    let root = require_shared("data").expect("data dir");
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under data")
            .to_string_lossy()
            .into_owned();
        assert!(
            FILES.iter().any(|e| e.path == rel),
            "{rel} has no entry in data_expectations.rs"
        );
    }
}

#[test]
fn every_data_file_matches_its_readme() {
    let Some(root) = require_shared("data") else {
        return;
    };
    for e in FILES {
        let path = root.join(e.path);
        let rep = inspect(&path).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        assert_eq!(
            (rep.n_obs, rep.n_vars),
            (e.n_obs, e.n_vars),
            "{}: shape",
            e.path
        );
        let x = match rep.x.as_ref().map(|x| x.encoding.as_str()) {
            None => "none",
            Some("csr_matrix") => "csr",
            Some("csc_matrix") => "csc",
            Some("array") => "dense",
            Some(other) => panic!("{}: unexpected X encoding {other}", e.path),
        };
        assert_eq!(x, e.x, "{}: X storage", e.path);
        if let Some(xs) = &rep.x {
            assert_eq!(xs.shape, vec![e.n_obs, e.n_vars], "{}: X shape", e.path);
        }
        let keys = |v: &[cellfate::inspect::SlotSummary]| {
            v.iter().map(|s| s.key.clone()).collect::<Vec<_>>()
        };
        assert_eq!(keys(&rep.layers), e.layers, "{}: layers", e.path);
        assert_eq!(keys(&rep.obsm), e.obsm, "{}: obsm", e.path);
        assert_eq!(keys(&rep.obsp), e.obsp, "{}: obsp", e.path);
        let cols: Vec<&str> = rep.obs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cols, e.obs_columns, "{}: obs columns", e.path);
        for (col, cats) in e.categoricals {
            let c = rep
                .obs
                .iter()
                .find(|c| c.name == *col)
                .unwrap_or_else(|| panic!("{}: no obs column {col}", e.path));
            assert_eq!(c.kind, "categorical", "{}: {col} kind", e.path);
            assert_eq!(
                c.categories.as_deref().expect("categories"),
                *cats,
                "{}: {col} categories",
                e.path
            );
        }
        // Every layer has the shape of X, every obsm has n_obs rows, every obsp is n x n.
        assert!(rep.problems.is_empty(), "{}: {:?}", e.path, rep.problems);
        for l in &rep.layers {
            assert_eq!(
                l.shape,
                vec![e.n_obs, e.n_vars],
                "{}: layer {}",
                e.path,
                l.key
            );
        }
        for p in &rep.obsp {
            assert_eq!(
                p.shape,
                vec![e.n_obs, e.n_obs],
                "{}: obsp {}",
                e.path,
                p.key
            );
        }
    }
}

#[test]
fn every_slot_of_every_file_reads() {
    for f in data_files() {
        let r = H5adReader::open(&f).expect("opens");
        for top in r.keys("").expect("root keys") {
            let el = r
                .read(&top)
                .unwrap_or_else(|e| panic!("{}: {top}: {e}", f.display()));
            if let Element::Sparse(s) = &el {
                s.to_csr().expect("valid sparse");
            }
        }
        assert_eq!(
            r.obs_names().expect("obs names").len(),
            r.n_obs().expect("n_obs")
        );
    }
}

#[test]
fn lazy_reading_touches_only_the_requested_slot() {
    let Some(root) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let path = root.join("pancreas_3696x2000.h5ad");
    let r = H5adReader::open(&path).expect("opens");
    // Reading a single obs column and X's metadata does not read X's values: this is
    // structural (slot-wise reads); we check the values we get are the right ones.
    let info = r.info("X").expect("info");
    assert_eq!(info.shape, vec![3696, 2000]);
    let clusters = r.column("obs", "clusters").expect("clusters");
    let Element::Categorical(c) = clusters else {
        panic!("clusters is categorical")
    };
    assert_eq!(c.codes.len(), 3696);
    assert_eq!(c.categories.len(), 8);
}

#[test]
fn reference_transition_matrices_validate() {
    let Some(root) = require_shared("reference/pancreas_3696") else {
        return;
    };
    let r = H5adReader::open(root.join("reference.h5ad")).expect("opens");
    for key in r.keys("obsp").expect("obsp") {
        if key.starts_with("T_") {
            let t = r
                .transition_matrix(&key)
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(t.n_cells(), r.n_obs().expect("n_obs"));
            assert!(t.max_row_sum_error() <= 1e-12);
        }
    }
}

/// `H5adReader::dense_select` (used to read only the velocity genes' columns of `Ms` and
/// `velocity` in blocks of rows) gives exactly the chosen columns of `dense`, for a dense
/// layer and for a sparse matrix (`obsp/connectivities`), and names the slot for a column out of range.
#[test]
fn dense_select_reads_exactly_the_chosen_columns() {
    let Some(r) = crate::common::reference("pancreas_3696") else {
        return;
    };
    for slot in ["layers/Ms", "obsp/connectivities"] {
        let (n, g, all) = r.dense(slot).expect(slot);
        let cols = [g - 1, 0, 7, 7, g / 2];
        let (n2, g2, some) = r.dense_select(slot, &cols).expect(slot);
        assert_eq!((n2, g2), (n, g), "{slot}");
        assert_eq!(some.len(), n * cols.len(), "{slot}");
        for i in 0..n {
            for (k, &c) in cols.iter().enumerate() {
                assert_eq!(
                    some[i * cols.len() + k],
                    all[i * g + c],
                    "{slot} [{i}, {c}]"
                );
            }
        }
        let e = r.dense_select(slot, &[g]).expect_err("column out of range");
        assert!(e.to_string().contains(slot), "{slot}: {e}");
    }
}
