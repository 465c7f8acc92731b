use super::*;
use crate::schur::{compute_schur, SchurMethod, SchurOptions};

/// The worked example of the spec (pyGPCCA 1.0.4 + scipy 1.17 reference values).
fn example_x() -> DMatrix<f64> {
    let rows = [
        [1.0, 1.3562, 0.3666],
        [1.0, 1.3812, 0.3507],
        [1.0, 1.3692, 0.3479],
        [1.0, -0.3703, -1.3662],
        [1.0, -0.3674, -1.3545],
        [1.0, -0.3931, -1.3684],
        [1.0, -0.9979, 1.0037],
        [1.0, -0.9896, 0.9953],
        [1.0, -0.9883, 1.0248],
    ];
    DMatrix::from_fn(9, 3, |i, j| rows[i][j])
}

/// The row-wise inner simplex loop as it was before the working copy was transposed (the
/// reference for [`isa_indices_equal_the_row_wise_loop`]).
fn isa_indices_row_wise(x: &DMatrix<f64>) -> Vec<usize> {
    let n = x.nrows();
    let m = x.ncols();
    let mut o = x.clone();
    let mut index = Vec::with_capacity(m);
    // Vertex 0: the row with the largest norm (first maximum).
    let mut best = 0.0;
    let mut i0 = 0;
    for l in 0..n {
        let d = o.row(l).norm();
        if d > best {
            best = d;
            i0 = l;
        }
    }
    index.push(i0);
    let r0 = o.row(i0).clone_owned();
    for l in 0..n {
        let row = o.row(l) - &r0;
        o.set_row(l, &row);
    }
    for j in 1..m {
        let t = o.row(index[j - 1]).clone_owned();
        let mut maxd = 0.0;
        let mut ij = 0;
        for l in 0..n {
            let proj = o.row(l).dot(&t);
            let row = o.row(l) - &t * proj;
            o.set_row(l, &row);
            let d = o.row(l).norm();
            if d > maxd {
                maxd = d;
                ij = l;
            }
        }
        if maxd <= 0.0 {
            panic!("degenerate");
        }
        o /= maxd;
        index.push(ij);
    }
    index
}

/// The transposed, parallel inner simplex loop picks the same vertices as the row-wise one on
/// random bases (sizes across the parallel chunking), with its constant first column.
#[test]
fn isa_indices_equal_the_row_wise_loop() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut next = move || rng.random::<f64>() - 0.5;
    for (n, m) in [(9usize, 2usize), (50, 3), (500, 5), (2000, 8), (3001, 12)] {
        let x = DMatrix::from_fn(n, m, |_, j| if j == 0 { 1.0 } else { next() });
        assert_eq!(
            isa_indices(&x).unwrap(),
            isa_indices_row_wise(&x),
            "n {n}, m {m}"
        );
    }
}

#[test]
fn isa_and_nelder_mead_match_pygpcca() {
    let x = example_x();
    let (index, a0) = isa(&x).unwrap();
    assert_eq!(index, vec![1, 5, 8]);
    let a0_ref = [
        [0.3330962895749138, 0.334389015208735, 0.3325146952163524],
        [
            0.4541639183474458,
            -0.12792574684857652,
            -0.3262381714988692,
        ],
        [
            0.11295268435584141,
            -0.4496663064199697,
            0.33671362206412814,
        ],
    ];
    for i in 0..3 {
        for j in 0..3 {
            assert!((a0[(i, j)] - a0_ref[i][j]).abs() < 1e-12, "A0[{i},{j}]");
        }
    }
    let alpha0: Vec<f64> = vec![a0[(1, 1)], a0[(1, 2)], a0[(2, 1)], a0[(2, 2)]];
    let mut a = embed(&alpha0, &a0);
    fill_matrix(&mut a, &x).unwrap();
    assert!((objective_of(&a) - 0.09466385384487364).abs() < 1e-13);
    let (a_opt, f_opt, report) = Optimizer::NelderMead.run(&x, &a0).unwrap();
    assert_eq!((report.iterations, report.evaluations), (43, 85));
    assert!((f_opt - 0.062002696752542885).abs() < 1e-12, "{f_opt}");
    // A_opt is normalised by fill: compare its first row and the crispness.
    let first_ref = [0.3340148755511985, 0.33348195856740903, 0.3325031658813923];
    for j in 0..3 {
        assert!((a_opt[(0, j)] - first_ref[j]).abs() < 1e-12, "A_opt[0,{j}]");
    }
    assert!((crispness(3, f_opt) - 0.9793324344158191).abs() < 1e-12);
    let chi = memberships(&x, &a_opt).unwrap();
    // Clipped negatives in pyGPCCA; here within rounding of 0 (summation order differs).
    assert!(chi[(3, 2)].abs() < 1e-15 && chi[(8, 1)].abs() < 1e-15);
    let row0 = [
        0.986_577_671_418_076_3,
        1.7711547998564695e-05,
        0.013404617033925172,
    ];
    for j in 0..3 {
        assert!((chi[(0, j)] - row0[j]).abs() < 1e-10);
    }
    let mc = min_chi(&x, 2..=3).unwrap();
    assert!(
        (mc[1] - -0.006743275256044362).abs() < 1e-12 && mc[0].abs() < 1e-12,
        "{mc:?}"
    );
}

#[test]
fn analytic_gradient_matches_finite_differences() {
    let x = example_x();
    let (_, a0) = isa(&x).unwrap();
    let alpha = vec![a0[(1, 1)] * 1.1, a0[(1, 2)], a0[(2, 1)] * 0.9, a0[(2, 2)]];
    let rows: Vec<usize> = (0..9).collect();
    let mut g = vec![0.0; 4];
    let f0 = optimize_value_and_gradient(&alpha, &x, &rows, &mut g);
    for p in 0..4 {
        let h = 1e-7;
        let mut ap = alpha.clone();
        ap[p] += h;
        let mut am = alpha.clone();
        am[p] -= h;
        let mut dummy = vec![0.0; 4];
        let fd = (optimize_value_and_gradient(&ap, &x, &rows, &mut dummy)
            - optimize_value_and_gradient(&am, &x, &rows, &mut dummy))
            / (2.0 * h);
        assert!(
            (fd - g[p]).abs() < 1e-6,
            "param {p}: fd {fd} vs analytic {}",
            g[p]
        );
    }
    // And it agrees with the plain objective.
    let mut a = embed(&alpha, &a0);
    fill_matrix(&mut a, &x).unwrap();
    assert!((objective_of(&a) - f0).abs() < 1e-14);
}

fn optimize_value_and_gradient(
    alpha: &[f64],
    x: &DMatrix<f64>,
    rows: &[usize],
    g: &mut [f64],
) -> f64 {
    optimize::test_value_and_gradient(alpha, x, rows, g)
}

#[test]
fn gradient_optimiser_is_at_least_as_crisp_as_nelder_mead() {
    let x = example_x();
    let (_, a0) = isa(&x).unwrap();
    let (_, f_nm, _) = Optimizer::NelderMead.run(&x, &a0).unwrap();
    let (_, f_g, rep) = Optimizer::default().run(&x, &a0).unwrap();
    assert!(f_g <= f_nm + 1e-9, "gradient {f_g} vs NM {f_nm} ({rep:?})");
}

#[test]
fn metastable_chain_recovers_its_blocks() {
    let t = crate::schur::tests::metastable_chain(3, 40, 0.002, false, 5);
    let schur = compute_schur(
        &t,
        None,
        &SchurOptions {
            n_components: 3,
            method: SchurMethod::Dense,
            ..Default::default()
        },
    )
    .unwrap();
    for opt in [Optimizer::NelderMead, Optimizer::default()] {
        let fit = fit(&t, &schur, 3, &opt, None).unwrap();
        assert!(fit.crispness > 0.9, "{}", fit.crispness);
        // Each block's cells share one dominant macrostate, different across blocks.
        let mut owners = Vec::new();
        for b in 0..3 {
            let mut counts = [0usize; 3];
            for i in 0..40 {
                let row = fit.chi.row(b * 40 + i);
                let arg = (0..3).max_by(|&p, &q| row[p].total_cmp(&row[q])).unwrap();
                counts[arg] += 1;
            }
            let owner = (0..3).max_by_key(|&p| counts[p]).unwrap();
            assert_eq!(counts[owner], 40, "block {b}: {counts:?}");
            owners.push(owner);
        }
        owners.sort_unstable();
        assert_eq!(owners, vec![0, 1, 2]);
        // Coarse T: nearly diagonal (metastable), rows sum to 1.
        for i in 0..3 {
            assert!(fit.coarse_t[(i, i)] > 0.95);
            assert!((fit.coarse_t.row(i).sum() - 1.0).abs() < 1e-8);
        }
    }
}

#[test]
fn eigengap_rule() {
    assert_eq!(eigengap(&[1.0, 0.99, 0.98, 0.5, 0.4], 1.0), 2);
}

#[test]
fn identical_at_one_and_several_threads() {
    use crate::absorption::{compute_fate_probabilities, AbsorptionOptions};
    let t = crate::schur::tests::metastable_chain(4, 80, 0.003, false, 11);
    let run = || {
        let s = compute_schur(
            &t,
            None,
            &SchurOptions {
                n_components: 5,
                method: SchurMethod::Krylov,
                ..Default::default()
            },
        )
        .unwrap();
        let f = fit(&t, &s, 4, &Optimizer::default(), None).unwrap();
        let mut term = vec![None; t.n_cells()];
        for i in 0..20 {
            term[240 + i] = Some(0);
            term[i] = Some(1);
        }
        let names = vec!["a".to_string(), "b".to_string()];
        let (fates, _) =
            compute_fate_probabilities(&t, &term, &names, &AbsorptionOptions::default()).unwrap();
        (s.eigenvalues, f.chi, fates.probs)
    };
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(run);
    assert_eq!(one, three);
}

/// Two blocks of 3 cells (each a cycle with self-loops), coupled with probability `eps`.
fn two_blocks(eps: f64) -> TransitionMatrix {
    use cellfate_kernels::{Csr, Direction};
    let mut e = Vec::new();
    for b in 0..2 {
        let o = 3 * b;
        for i in 0..3 {
            e.push((o + i, o + i, 0.5));
            e.push((o + i, o + (i + 1) % 3, 0.5 - eps));
            if eps > 0.0 {
                e.push((o + i, (o + 3 + i) % 6, eps));
            }
        }
    }
    TransitionMatrix::try_new(Csr::from_triplets(6, 6, &e).unwrap(), Direction::Forward).unwrap()
}

/// Two disconnected blocks: reducible, and the error counts the closed sets.
#[test]
fn stationary_distribution_of_a_reducible_chain_counts_its_closed_sets() {
    let e = stationary_distribution(&two_blocks(0.0)).unwrap_err();
    assert!(
        matches!(
            e,
            GpccaError::Stationary(StationaryError::Reducible {
                closed_sets: 2,
                largest: 3,
                ..
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("2 closed sets"), "{e}");
}

/// The same blocks coupled with probability 1e-13: one strongly connected component, so not
/// reducible, but λ2 is within ~1e-13 of 1: nearly reducible, with the gap in the message.
#[test]
fn stationary_distribution_of_a_nearly_reducible_chain_gives_the_gap() {
    let e = stationary_distribution(&two_blocks(1e-13)).unwrap_err();
    let GpccaError::Stationary(StationaryError::NearlyReducible { gap }) = e else {
        panic!("expected NearlyReducible, got {e}");
    };
    assert!(gap < 1e-10, "gap {gap:e}");
    let text = e.to_string();
    assert!(
        text.contains("nearly reducible") && !text.contains("closed sets of cells ("),
        "{text}"
    );
    assert!(text.contains(&format!("{gap:.1e}")), "{text}");
    // Well coupled: a stationary distribution (uniform by symmetry).
    let pi = stationary_distribution(&two_blocks(0.1)).unwrap();
    assert!(pi.iter().all(|p| (p - 1.0 / 6.0).abs() < 1e-12), "{pi:?}");
}

/// Above the dense limit the stationary distribution comes from Krylov–Schur on Pᵀ:
/// `Pᵀπ = π` within 1e-12 on a 500-cell irreducible chain. A known spectrum with λ2 ≈ 1
/// gives the same error as the computation; one without changes nothing (the same bits).
#[test]
fn stationary_distribution_at_scale_and_from_a_known_spectrum() {
    let t = crate::schur::tests::metastable_chain(5, 100, 0.02, true, 7);
    let pi = stationary_distribution(&t).unwrap();
    let back = t.mul_vec_transposed(&pi);
    let err = back
        .iter()
        .zip(&pi)
        .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(err < 1e-12, "{err:e}");
    assert!((pi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(pi.iter().all(|&p| p > 0.0));
    let hint = [(1.0, 0.0), (0.9, 0.0)];
    assert_eq!(stationary_distribution_with(&t, Some(&hint)).unwrap(), pi);
    let t2 = two_blocks(0.0);
    let s = crate::schur::compute_schur(
        &t2,
        None,
        &crate::schur::SchurOptions {
            n_components: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let a = stationary_distribution_with(&t2, Some(&s.eigenvalues)).unwrap_err();
    let b = stationary_distribution(&t2).unwrap_err();
    assert_eq!(a.to_string(), b.to_string());
}

/// CellRank's index 0 is the gap between λ1 and λ2, suggesting 1 state; index 2 suggests 3.
#[test]
fn eigengap_is_said_with_its_position_and_suggestion() {
    assert_eq!(
        Eigengap::from_index(0).to_string(),
        "eigengap after λ1 (between λ1 and λ2, 1-based) → 1 state suggested"
    );
    let g = Eigengap::from_index(2);
    assert_eq!((g.after_eigenvalue, g.suggested_states), (3, 3));
    assert_eq!(
        g.to_string(),
        "eigengap after λ3 (between λ3 and λ4, 1-based) → 3 states suggested"
    );
    assert_eq!(eigengap(&[1.0, 0.99, 0.98, 0.5, 0.45], 0.0), 2);
}

/// The subspace check's sine against analytic angles: span{e₁, e₂} against
/// span{e₁, cos θ e₂ + sin θ e₃} (scaled and mixed columns) has largest angle θ; a rank-one
/// pair of equal columns spans e₁ alone.
#[test]
fn subspace_sin_matches_analytic_angles() {
    let n = 1000;
    let e = |i: usize| DMatrix::from_fn(n, 1, |l, _| if l == i { 1.0 } else { 0.0 });
    for theta in [1e-9f64, 1e-6, 1e-3, 0.5, 1.2] {
        let a = DMatrix::from_columns(&[(e(0) * 3.0 + e(1)).column(0), (e(1) * 0.5).column(0)]);
        let b2 = e(1) * theta.cos() + e(2) * theta.sin();
        let b = DMatrix::from_columns(&[e(0).column(0), (b2 * 2.0 - e(0)).column(0)]);
        let s = subspace_sin(&a, &b);
        assert!(
            (s - theta.sin()).abs() <= 1e-12 * theta.sin().max(1e-3),
            "theta {theta}: sine {s}, expected {}",
            theta.sin()
        );
    }
    let a = DMatrix::from_columns(&[e(0).column(0), e(0).column(0)]);
    assert!(subspace_sin(&a, &e(0)) < 1e-15);
    assert_eq!(subspace_sin(&DMatrix::zeros(n, 2), &e(0)), 1.0);
}

/// An ill-conditioned basis (condition number 1e6, through the second pass) of a known
/// subspace gives the same sine as a well-conditioned one.
#[test]
fn subspace_sin_of_an_ill_conditioned_basis() {
    let n = 500;
    let e = |i: usize| DMatrix::from_fn(n, 1, |l, _| if l == i { 1.0 } else { 0.0 });
    let theta = 1e-4f64;
    let a = DMatrix::from_columns(&[e(0).column(0), (e(0) + e(1) * 1e-6).column(0)]);
    let b2 = e(1) * theta.cos() + e(2) * theta.sin();
    let b = DMatrix::from_columns(&[e(0).column(0), b2.column(0)]);
    let s = subspace_sin(&a, &b);
    assert!(
        (s - theta.sin()).abs() <= 1e-9,
        "sine {s}, expected {}",
        theta.sin()
    );
}

/// The blocked `aᵀ diag(w) b` equals nalgebra's entry-by-entry product to rounding, over
/// several row blocks and a partial last one, with and without weights.
#[test]
fn tall_gram_equals_the_plain_product() {
    let n = 3 * super::GRAM_ROWS + 77;
    let a = DMatrix::from_fn(n, 5, |i, j| {
        (((i * 31 + j * 17) % 101) as f64 - 50.0) / 50.0
    });
    let b = DMatrix::from_fn(n, 3, |i, j| (((i * 7 + j * 13) % 59) as f64 - 29.0) / 29.0);
    let w: Vec<f64> = (0..n).map(|i| 0.5 + (i % 11) as f64 / 10.0).collect();
    let plain = a.tr_mul(&b);
    let got = super::tall_gram(&a, &b, None);
    assert!((got - &plain).amax() <= 1e-12 * plain.amax(), "unweighted");
    let bw = DMatrix::from_fn(n, 3, |i, j| b[(i, j)] * w[i]);
    let plain_w = a.tr_mul(&bw);
    let got_w = super::tall_gram(&a, &b, Some(&w));
    assert!(
        (got_w - &plain_w).amax() <= 1e-12 * plain_w.amax(),
        "weighted"
    );
}
