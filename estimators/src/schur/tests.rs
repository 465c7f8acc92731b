use super::*;
use cellfate_kernels::{Csr, Direction};
use nalgebra::DVector;

/// A metastable chain: `blocks` groups of `size` cells, dense-ish random transitions inside a
/// group and a small leak `eps` to the next group (cyclically when `cyclic`).
pub(crate) fn metastable_chain(
    blocks: usize,
    size: usize,
    eps: f64,
    cyclic: bool,
    seed: u64,
) -> TransitionMatrix {
    let mut rng = cellfate_kernels::testing::Lcg::new(seed);
    let n = blocks * size;
    let mut trip = Vec::new();
    for b in 0..blocks {
        for i in 0..size {
            let row = b * size + i;
            for j in 0..size {
                if rng.uniform() < 0.3 || j == (i + 1) % size {
                    trip.push((row, b * size + j, 0.1 + rng.uniform()));
                }
            }
            let next = if cyclic {
                (b + 1) % blocks
            } else {
                (b + 1).min(blocks - 1)
            };
            if next != b {
                trip.push((
                    row,
                    next * size + (i % size),
                    eps * (1.0 + rng.uniform()) * size as f64,
                ));
            }
        }
    }
    let w = Csr::from_triplets(n, n, &trip).unwrap();
    TransitionMatrix::from_weights(w, Direction::Forward).unwrap()
}

fn subspace_sin(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    crate::gpcca::subspace_sin(a, b)
}

#[test]
fn dense_and_krylov_agree_on_a_metastable_chain() {
    let t = metastable_chain(4, 60, 0.002, false, 1);
    // Four metastable groups: four eigenvalues near 1, then a gap (the subspace is only
    // well defined at a spectral gap).
    let opts = |method| SchurOptions {
        n_components: 4,
        method,
        ..SchurOptions::default()
    };
    let d = compute_schur(&t, None, &opts(SchurMethod::Dense)).unwrap();
    let k = compute_schur(&t, None, &opts(SchurMethod::Krylov)).unwrap();
    assert_eq!((d.method, k.method), ("dense", "krylov"));
    // Krylov–Schur (the path above arpack_max_cells) agrees with both.
    let ks = compute_schur(
        &t,
        None,
        &SchurOptions {
            arpack_max_cells: 0,
            ..opts(SchurMethod::Krylov)
        },
    )
    .unwrap();
    for (a, b) in d.eigenvalues.iter().zip(&ks.eigenvalues) {
        assert!((a.0 - b.0).abs() < 1e-10 && (a.1 - b.1).abs() < 1e-10);
    }
    assert!(subspace_sin(&d.q, &ks.q) < 1e-8);
    assert!(ks.residual < 1e-12, "{}", ks.residual);
    assert!(ks.restarts > 0 && ks.matvecs > 0);
    assert_eq!(d.m(), k.m());
    for (a, b) in d.eigenvalues.iter().zip(&k.eigenvalues) {
        assert!(
            (a.0 - b.0).abs() < 1e-10 && (a.1 - b.1).abs() < 1e-10,
            "{a:?} vs {b:?}"
        );
    }
    // Sorted by decreasing real part, dominant eigenvalue 1.
    assert!((d.eigenvalues[0].0 - 1.0).abs() < 1e-12);
    assert!(d.eigenvalues.windows(2).all(|w| w[0].0 >= w[1].0 - 1e-12));
    assert!(
        subspace_sin(&d.q, &k.q) < 1e-8,
        "{}",
        subspace_sin(&d.q, &k.q)
    );
    assert!(d.residual < 1e-12 && k.residual < RESIDUAL_TOL);
}

#[test]
fn conjugate_pairs_are_never_split() {
    // A cyclic chain of 3 metastable groups: its dominant spectrum has a complex pair
    // right after eigenvalue 1.
    let t = metastable_chain(3, 40, 0.01, true, 2);
    for method in [SchurMethod::Dense, SchurMethod::Krylov] {
        let s = compute_schur(
            &t,
            None,
            &SchurOptions {
                n_components: 2,
                method,
                ..SchurOptions::default()
            },
        )
        .unwrap();
        assert!(s.eigenvalues[1].1.abs() > 1e-6, "{:?}", s.eigenvalues);
        assert_eq!(s.m(), 3, "{method:?}: pair kept together");
        assert!(s
            .note
            .as_deref()
            .unwrap_or("")
            .contains("complex-conjugate"));
        assert!(!s.splits_pair(3) && s.splits_pair(2));
    }
}

#[test]
fn dense_refuses_large_matrices_and_bad_options() {
    let t = metastable_chain(2, 30, 0.01, false, 3);
    let e = compute_schur(
        &t,
        None,
        &SchurOptions {
            method: SchurMethod::Dense,
            dense_max_cells: 10,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, SchurError::TooLargeForDense { n: 60, .. }),
        "{e}"
    );
    let e = compute_schur(
        &t,
        None,
        &SchurOptions {
            n_components: 60,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            SchurError::Parameter {
                parameter: "n_components",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn eta_weighting_keeps_the_spectrum() {
    let t = metastable_chain(3, 30, 0.005, false, 4);
    let eta: Vec<f64> = (0..90).map(|i| 1.0 + (i % 7) as f64).collect();
    let a = compute_schur(
        &t,
        None,
        &SchurOptions {
            n_components: 4,
            method: SchurMethod::Dense,
            ..Default::default()
        },
    )
    .unwrap();
    let b = compute_schur(
        &t,
        Some(&eta),
        &SchurOptions {
            n_components: 4,
            method: SchurMethod::Dense,
            ..Default::default()
        },
    )
    .unwrap();
    for (x, y) in a.eigenvalues.iter().zip(&b.eigenvalues) {
        assert!((x.0 - y.0).abs() < 1e-10);
    }
}

/// Reordering a non-normal Schur form moves its eigenvalues by more than rounding (dtrsen's
/// swaps are accurate to ‖T‖·ε times the eigenvalues' condition numbers): the sort follows
/// each eigenvalue to where it went instead of giving up; and a real eigenvalue is never
/// taken for a conjugate pair equal to it up to rounding. Found on the velocity graph of a
/// 20,000-cell simulation: a real 1 was matched to a pair 1 ± 1e-15i, a 2 × 2 block moved
/// where a 1 × 1 was meant, and the sort then "lost track of 0.406 + 0.119i".
#[test]
fn sorting_follows_eigenvalues_that_move_under_reordering() {
    // Current eigenvalues after a swap: a real one, a conjugate pair, another real one.
    let wr = [0.9, 0.406_478_251 + 3e-9, 0.406_478_251 + 3e-9, 0.2];
    let wi = [0.0, 0.119_112_384 - 2e-9, -(0.119_112_384 - 2e-9), 0.0];
    // Exact matches are found as before.
    assert_eq!(locate_eigenvalue(&wr, &wi, 0, 0.9, 0.0), Some(0));
    assert_eq!(locate_eigenvalue(&wr, &wi, 1, 0.2, 0.0), Some(3));
    // A pair that moved by 4e-9 is found at its first position (positive imaginary part).
    assert_eq!(
        locate_eigenvalue(&wr, &wi, 0, 0.406_478_251, 0.119_112_384),
        Some(1)
    );
    assert_eq!(
        locate_eigenvalue(&wr, &wi, 0, 0.406_478_251, -0.119_112_384),
        Some(1)
    );
    // Only at or after `from`, only of the same kind, only nearby.
    assert_eq!(
        locate_eigenvalue(&wr, &wi, 2, 0.406_478_251, 0.119_112_384),
        None
    );
    assert_eq!(locate_eigenvalue(&wr, &wi, 0, 0.406_478_251, 0.0), None);
    assert_eq!(locate_eigenvalue(&wr, &wi, 0, 0.5, 0.0), None);
    // A real eigenvalue 1 and a pair 1 ± 1e-15i (three closed sets of a velocity graph at
    // 20,000 cells) are equal up to rounding: each is found at a block of its own kind.
    let wr3 = [
        0.999_999_999_999_999_4,
        0.999_999_999_999_999_4,
        0.654_798_574_943_081_2,
        1.000_000_000_000_002_7,
    ];
    let wi3 = [
        1.080_642_226_539_015_3e-15,
        -1.080_642_226_539_015_3e-15,
        0.0,
        0.0,
    ];
    assert_eq!(
        locate_eigenvalue(&wr3, &wi3, 0, 1.000_000_000_000_002_7, 0.0),
        Some(3)
    );
    assert_eq!(
        locate_eigenvalue(
            &wr3,
            &wi3,
            0,
            0.999_999_999_999_999_2,
            1.325_310_570_878_071_3e-15
        ),
        Some(0)
    );
    // Of two candidates within the drift, the nearer.
    let wr2 = [0.5 + 4e-7, 0.5 + 1e-7];
    let wi2 = [0.0, 0.0];
    assert_eq!(locate_eigenvalue(&wr2, &wi2, 0, 0.5, 0.0), Some(1));

    // The same through dtrsen: a Schur form with the pair first, 0.65, then the real 1.
    let n = 4;
    let mut t = DMatrix::<f64>::zeros(n, n);
    t[(0, 0)] = 1.0;
    t[(1, 1)] = 1.0;
    t[(0, 1)] = 1e-15;
    t[(1, 0)] = -1e-15;
    t[(2, 2)] = 0.65;
    t[(3, 3)] = 1.0 + 2.7e-15;
    for c in 2..n {
        for r in 0..c {
            t[(r, c)] = 0.1 * (r + c) as f64;
        }
    }
    let mut a = t.as_slice().to_vec();
    let mut z = DMatrix::<f64>::identity(n, n).as_slice().to_vec();
    let mut wr = vec![1.0, 1.0, 0.65, 1.0 + 2.7e-15];
    let mut wi = vec![1e-15, -1e-15, 0.0, 0.0];
    let sorted =
        sort_schur(n, &mut a, &mut z, &mut wr, &mut wi, n, Which::LargestReal).expect("sorted");
    assert_eq!(sorted, n);
    assert_eq!(wi[0], 0.0, "the real 1 first: {wr:?} {wi:?}");
    assert!(wi[1] > 0.0 && wi[2] < 0.0, "then the pair: {wr:?} {wi:?}");
    assert!((wr[3] - 0.65).abs() < 1e-12, "{wr:?}");

    // End to end: non-normal random matrices with clustered eigenvalues (complex pairs among
    // them) are sorted by real part, descending, with every pair kept together.
    let mut rng = cellfate_kernels::testing::Lcg::new(7);
    for trial in 0..20 {
        let n = 40;
        let mut t = DMatrix::<f64>::zeros(n, n);
        let mut i = 0;
        while i < n {
            let re = 0.4 + 1e-3 * rng.uniform();
            if i + 1 < n && rng.uniform() < 0.5 {
                let im = 0.1 + 1e-3 * rng.uniform();
                t[(i, i)] = re;
                t[(i + 1, i + 1)] = re;
                t[(i, i + 1)] = im;
                t[(i + 1, i)] = -im;
                i += 2;
            } else {
                t[(i, i)] = re;
                i += 1;
            }
        }
        let scale = 10f64.powi(trial % 3);
        for c in 0..n {
            for r in 0..c {
                if t[(r, c)] == 0.0 && t[(c, r)] == 0.0 {
                    t[(r, c)] = scale * (rng.uniform() - 0.5);
                }
            }
        }
        let g = DMatrix::from_fn(n, n, |_, _| rng.uniform() - 0.5);
        let q = g.qr().q();
        let a = &q * t * q.transpose();
        let op = |x: &[f64]| (&a * DVector::from_column_slice(x)).as_slice().to_vec();
        let (qv, ev) = dominant_schur_op(n, 10, Which::LargestReal, &op)
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        assert!(qv.ncols() >= 10 && ev.len() == qv.ncols(), "trial {trial}");
        for w in ev.windows(2) {
            assert!(w[0].0 >= w[1].0 - 1e-6, "trial {trial}: {ev:?}");
        }
    }
}

/// The Krylov–Schur path gives the same bits on one thread and on four: its sums run over
/// fixed row blocks in a fixed order (more cells than one block, so several blocks).
#[test]
fn krylov_schur_is_identical_at_any_thread_count() {
    let t = metastable_chain(6, 1500, 0.001, false, 3);
    assert!(t.n_cells() > 2 * crate::basis::BLOCK);
    let opts = SchurOptions {
        n_components: 6,
        method: SchurMethod::Krylov,
        arpack_max_cells: 0,
        ..SchurOptions::default()
    };
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| compute_schur(&t, None, &opts).unwrap())
    };
    let (a, b) = (run(1), run(4));
    assert_eq!(a.q.as_slice(), b.q.as_slice());
    assert_eq!(a.eigenvalues, b.eigenvalues);
    assert!(a.residual < 1e-12, "{}", a.residual);
}

/// A start vector in a small invariant subspace (a diagonal operator, the start on 3
/// coordinates): the Arnoldi recurrence breaks down after 3 steps and continues with fresh
/// directions; the dominant eigenvalues still come out, exact.
#[test]
fn krylov_schur_continues_after_a_breakdown() {
    let n = 500;
    let d: Vec<f64> = (0..n).map(|i| 1.0 - i as f64 / n as f64).collect();
    let mut start = vec![0.0; n];
    start[5] = 1.0;
    start[200] = 1.0;
    start[400] = 1.0;
    let mut op = |x: &[f64], y: &mut [f64]| {
        for i in 0..n {
            y[i] = d[i] * x[i];
        }
    };
    let res = krylov::krylov_schur(n, 4, 20, Which::LargestReal, 0.0, 500, &start, &mut op)
        .expect("converges");
    let q = DMatrix::from_column_slice(n, res.k, &res.q);
    // Q spans the first res.k coordinates (the largest diagonal entries).
    let lead = q.rows(0, res.k).into_owned();
    let sv = lead.singular_values();
    assert!(sv.iter().all(|s| (s - 1.0).abs() < 1e-10), "{sv:?}");
}

/// The Krylov–Schur operator path agrees with ARPACK's on a non-normal operator with complex
/// pairs: the same eigenvalues and the same invariant subspace.
#[test]
fn krylov_schur_and_arpack_agree_on_an_operator() {
    let t = metastable_chain(8, 80, 0.003, true, 5);
    let op = |x: &[f64]| t.mul_vec(x);
    let (qa, ea) = dominant_schur_op(t.n_cells(), 8, Which::LargestReal, &op).unwrap();
    let (qk, ek) = dominant_schur_krylov(t.n_cells(), 8, Which::LargestReal, &op).unwrap();
    assert_eq!(ea.len(), ek.len());
    for (a, b) in ea.iter().zip(&ek) {
        assert!(
            (a.0 - b.0).abs() < 1e-10 && (a.1.abs() - b.1.abs()).abs() < 1e-10,
            "{a:?} vs {b:?}"
        );
    }
    assert!(subspace_sin(&qa, &qk) < 1e-8, "{}", subspace_sin(&qa, &qk));
}
