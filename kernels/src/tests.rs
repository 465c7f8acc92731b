//! Unit tests: the contract suite on every kernel, analytic cases, and algebra properties.

use crate::testing::{assert_kernel_contract, toy_cells, Lcg};
use crate::*;

fn cells() -> InMemoryCells {
    toy_cells(240, 40, 12, 7)
}

#[test]
fn contract_connectivity() {
    let c = cells();
    assert_kernel_contract(&ConnectivityParams::default(), &c);
    assert_kernel_contract(
        &ConnectivityParams {
            density_normalize: false,
            ..Default::default()
        },
        &c,
    );
}

#[test]
fn contract_pseudotime() {
    let c = cells();
    assert_kernel_contract(&PseudotimeParams::default(), &c);
    let soft = PseudotimeParams {
        threshold_scheme: ThresholdScheme::Soft,
        backward: true,
        ..Default::default()
    };
    assert_kernel_contract(&soft, &c);
}

#[test]
fn contract_velocity() {
    let c = cells();
    for sim in [
        Similarity::Correlation,
        Similarity::Cosine,
        Similarity::DotProduct,
    ] {
        assert_kernel_contract(
            &VelocityParams {
                similarity: sim,
                ..Default::default()
            },
            &c,
        );
    }
    for mode in [BackwardMode::Transpose, BackwardMode::Negate] {
        assert_kernel_contract(
            &VelocityParams {
                backward: true,
                backward_mode: mode,
                softmax_scale: Some(3.0),
                ..Default::default()
            },
            &c,
        );
    }
}

#[test]
fn contract_precomputed_and_combinations() {
    let c = cells();
    assert_kernel_contract(&PrecomputedParams::default(), &c);
    let sum: KernelSpec = 0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default();
    assert_kernel_contract(&sum, &c);
    let prod = KernelSpec::from(VelocityParams::default()) * ConnectivityParams::default().spec();
    assert_kernel_contract(&prod, &c);
}

#[test]
fn connectivity_density_normalisation_formula() {
    let c = cells();
    let conn = c.graphs["connectivities"].clone();
    let q = conn.col_sums();
    let t = ConnectivityParams::default()
        .compute(&c)
        .unwrap()
        .transition;
    for i in [0, 17, 120] {
        let (cols, vals) = conn.row(i);
        let w: Vec<f64> = cols
            .iter()
            .zip(vals)
            .map(|(&j, &v)| v / q[i] / q[j as usize])
            .collect();
        let s: f64 = w.iter().sum();
        for ((&j, wv), tv) in cols.iter().zip(&w).zip(t.row(i).1) {
            assert!((wv / s - tv).abs() < 1e-15, "row {i} col {j}");
        }
    }
    // Without density normalisation, a symmetric graph gives T ∝ C row-wise.
    let t0 = ConnectivityParams {
        density_normalize: false,
        ..Default::default()
    }
    .compute(&c)
    .unwrap()
    .transition;
    let (_, v) = conn.row(5);
    let s: f64 = v.iter().sum();
    for (a, b) in v.iter().zip(t0.row(5).1) {
        assert!((a / s - b).abs() < 1e-15);
    }
}

#[test]
fn pseudotime_hard_keeps_future_and_strongest() {
    let mut c = cells();
    // frac_to_keep = 0: only neighbours at the same time or later survive.
    let p = PseudotimeParams {
        frac_to_keep: 0.0,
        ..Default::default()
    };
    let t = c.obs["dpt_pseudotime"].clone();
    // Give the latest cell a neighbour-less future: it must be an error, not a panic.
    let out = p.compute(&c);
    match out {
        Ok(o) => {
            for i in 0..c.n_cells {
                for &j in o.transition.row(i).0 {
                    assert!(t[j as usize] >= t[i]);
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("frac_to_keep"), "{e}"),
    }
    // Soft scheme weight formula on one edge.
    c.obs.insert("dpt_pseudotime".into(), t.clone());
    let soft = PseudotimeParams {
        threshold_scheme: ThresholdScheme::Soft,
        b: 5.0,
        nu: 0.5,
        ..Default::default()
    };
    let conn = c.graphs["connectivities"].clone();
    let biased = soft.bias(&conn, &t);
    let i = 100;
    let (cols, vals) = conn.row(i);
    let (bc, bv) = biased.row(i);
    for ((&j, &v), (&j2, &b)) in cols.iter().zip(vals).zip(bc.iter().zip(bv)) {
        assert_eq!(j, j2);
        let dt = t[i] - t[j as usize];
        let w = if dt > 0.0 {
            2.0 / (1.0 + (5.0 * dt).exp()).powf(2.0)
        } else {
            1.0
        };
        assert!((v * w - b).abs() < 1e-15);
    }
}

#[test]
fn velocity_analytic_two_neighbours() {
    // Cell 0 at the origin, cell 1 along +e1, cell 2 along -e1; velocity of cell 0 is +e1.
    let g = 3;
    let x = vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0];
    let v = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let conn = Csr::from_triplets(
        3,
        3,
        &[
            (0, 1, 1.0),
            (0, 2, 1.0),
            (1, 0, 1.0),
            (1, 2, 1.0),
            (2, 0, 1.0),
            (2, 1, 1.0),
        ],
    )
    .unwrap();
    let mut c = InMemoryCells {
        n_cells: 3,
        n_genes: g,
        ..Default::default()
    };
    c.graphs.insert("connectivities".into(), conn);
    c.layers.insert("Ms".into(), DenseMatrix::from_f64(3, g, x));
    c.layers
        .insert("velocity".into(), DenseMatrix::from_f64(3, g, v));
    let k = VelocityParams {
        similarity: Similarity::Cosine,
        softmax_scale: Some(2.0),
        ..Default::default()
    };
    let t = k.compute(&c).unwrap().transition;
    // cos = +1 towards cell 1, -1 towards cell 2: p = e^2 / (e^2 + e^-2).
    let p = 2f64.exp() / (2f64.exp() + (-2f64).exp());
    assert!((t.row(0).1[0] - p).abs() < 1e-15);
    assert!((t.row(0).1[1] - (1.0 - p)).abs() < 1e-15);
    // Zero velocity gives a uniform row.
    c.layers
        .insert("velocity".into(), DenseMatrix::from_f64(3, g, vec![0.0; 9]));
    let t = VelocityParams {
        softmax_scale: Some(1.0),
        ..Default::default()
    }
    .compute(&c)
    .unwrap()
    .transition;
    assert_eq!(t.row(0).1, &[0.5, 0.5]);
    // ...and the scale cannot be estimated from all-zero logits: a clear error.
    let e = VelocityParams::default().compute(&c).unwrap_err();
    assert!(e.to_string().contains("softmax scale"), "{e}");
}

#[test]
fn softmax_scale_is_inverse_median() {
    assert_eq!(
        velocity::estimate_softmax_scale(&[0.0, 0.5, -0.25, 1.0]),
        Some(2.0)
    );
    assert_eq!(
        velocity::estimate_softmax_scale(&[0.2, -0.4, 0.0]),
        Some(1.0 / 0.30000000000000004)
    );
    assert_eq!(velocity::estimate_softmax_scale(&[0.0]), None);
}

#[test]
fn missing_inputs_name_kernel_slot_and_fix() {
    let mut c = cells();
    c.layers.remove("Ms");
    let e = VelocityParams::default()
        .compute(&c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("VelocityKernel")
            && e.contains("layers[\"Ms\"]")
            && e.contains("cellfate preprocess"),
        "{e}"
    );
    c.graphs.remove("connectivities");
    let e = ConnectivityParams::default()
        .compute(&c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ConnectivityKernel")
            && e.contains("obsp[\"connectivities\"]")
            && e.contains("neighbors"),
        "{e}"
    );
    let e = PseudotimeParams {
        time_key: "nope".into(),
        conn_key: "T_fwd".into(),
        ..Default::default()
    }
    .compute(&c)
    .unwrap_err()
    .to_string();
    assert!(e.contains("obs[\"nope\"]") && e.contains("time_key"), "{e}");
}

#[test]
fn algebra_properties() {
    let c = cells();
    let vk = VelocityParams::default();
    let ck = ConnectivityParams::default();
    let tv = vk.compute(&c).unwrap().transition.into_csr();
    let tc = ck.compute(&c).unwrap().transition.into_csr();
    let mut rng = Lcg::new(3);
    for _ in 0..5 {
        let (a, b) = (rng.uniform() + 0.01, rng.uniform() + 0.01);
        let s = (rng.uniform() + 0.1) * 10.0;
        let k1 = KernelSpec::sum(vec![(a, vk.spec()), (b, ck.spec())]);
        let k2 = KernelSpec::sum(vec![(a * s, vk.spec()), (b * s, ck.spec())]);
        let t1 = k1.compute(&c).unwrap().transition;
        let t2 = k2.compute(&c).unwrap().transition;
        // Stochastic, and invariant to scaling all weights.
        assert!(t1.max_row_sum_error() <= 1e-12);
        assert!(t1.as_csr().max_abs_diff(t2.as_csr()) <= 1e-14);
        // Equal to the weighted sum of the parts.
        let manual = tv.add_scaled(a / (a + b), &tc, b / (a + b));
        assert!(t1.as_csr().max_abs_diff(&manual) <= 1e-14);
    }
    // Nested sums flatten with renormalised inner weights.
    let nested =
        0.5 * (KernelSpec::from(vk.clone()) + ck.clone()) + 0.5 * PseudotimeParams::default();
    let KernelSpec::Sum { terms } = &nested else {
        panic!("sum")
    };
    assert_eq!(
        terms.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![0.25, 0.25, 0.5]
    );
    // Mixed directions, bad weights: typed errors.
    let mixed = KernelSpec::from(vk.clone()) + !PseudotimeParams::default();
    let e = mixed.validate().unwrap_err();
    assert!(
        matches!(&e, KernelError::MixedDirections { forward, backward }
            if forward == "VelocityKernel" && backward == "PseudotimeKernel"),
        "{e}"
    );
    assert!(e.to_string().contains("cannot combine kernels"), "{e}");
    assert!(matches!(
        KernelSpec::sum(vec![(-1.0, vk.spec())]).validate(),
        Err(KernelError::InvalidWeight { weight, .. }) if weight == -1.0
    ));
    assert!(matches!(
        KernelSpec::sum(vec![(f64::NAN, vk.spec())]).validate(),
        Err(KernelError::InvalidWeight { .. })
    ));
    assert!(matches!(
        KernelSpec::sum(vec![(0.0, vk.spec())]).validate(),
        Err(KernelError::ZeroWeights { n_terms: 1 })
    ));
    assert!(matches!(
        KernelSpec::sum(Vec::new()).validate(),
        Err(KernelError::EmptyCombination { combination: "sum" })
    ));
    assert!(matches!(
        KernelSpec::product(Vec::new()).validate(),
        Err(KernelError::EmptyCombination {
            combination: "product"
        })
    ));
    // Flip is an involution and flips every directed leaf.
    let f = !(0.8 * vk.clone() + 0.2 * ck.clone());
    assert_eq!(f.direction(), Some(Direction::Backward));
    assert_eq!(!f, 0.8 * vk + 0.2 * ck);
}

#[test]
fn set_param_by_kernel_name() {
    let mut k = 0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default();
    assert_eq!(k.set_param("velocity", "similarity", "cosine").unwrap(), 1);
    assert_eq!(k.set_param("velocity", "softmax_scale", "4").unwrap(), 1);
    assert_eq!(
        k.set_param("connectivity", "density_normalize", "false")
            .unwrap(),
        1
    );
    let KernelSpec::Sum { terms } = &k else {
        panic!()
    };
    let KernelSpec::Velocity(v) = &terms[0].1 else {
        panic!()
    };
    assert_eq!(
        (v.similarity, v.softmax_scale),
        (Similarity::Cosine, Some(4.0))
    );
    let e = k.set_param("velocity", "similarity", "bogus").unwrap_err();
    assert!(
        matches!(&e, KernelError::InvalidParamValue { kernel, name, .. }
            if kernel == "velocity" && name == "similarity"),
        "{e}"
    );
    assert!(e.to_string().contains("cosine"), "{e}");
    let e = k.set_param("velocity", "nope", "1").unwrap_err();
    assert!(
        matches!(&e, KernelError::UnknownParam { known, .. } if known.iter().any(|p| p == "similarity")),
        "{e}"
    );
    assert!(e.to_string().contains("similarity"), "{e}");
    let e = k.set_param("pseudotime", "b", "1").unwrap_err();
    assert!(
        matches!(&e, KernelError::ParamTargetsNoKernel { present, .. }
            if present == &["velocity", "connectivity"]),
        "{e}"
    );
}

#[test]
fn contract_cytotrace() {
    let mut c = cells();
    // X: expression with a gradient in the number of expressed genes along pseudotime.
    let n = c.n_cells;
    let g = c.n_genes;
    let t = c.obs["dpt_pseudotime"].clone();
    let x: Vec<f64> = (0..n)
        .flat_map(|i| {
            let t = t[i];
            (0..g).map(move |j| {
                if (j as f64) / (g as f64) < 1.0 - 0.8 * t {
                    1.0 + j as f64 * 0.01
                } else {
                    0.0
                }
            })
        })
        .collect();
    c.layers
        .insert("X".into(), DenseMatrix::from_f64(n, g, x.clone()));
    c.layers.insert("Ms".into(), DenseMatrix::from_f64(n, g, x));
    let k = CytoTraceParams {
        n_genes: 10,
        ..Default::default()
    };
    assert_kernel_contract(&k, &c);
    // The CytoTRACE pseudotime increases with the true time (fewer expressed genes later).
    let (pt, _) = k.pseudotime(&c).unwrap();
    let corr = {
        let (ma, mb) = (
            pt.iter().sum::<f64>() / n as f64,
            t.iter().sum::<f64>() / n as f64,
        );
        let cov: f64 = pt.iter().zip(&t).map(|(a, b)| (a - ma) * (b - mb)).sum();
        cov / (pt.iter().map(|a| (a - ma).powi(2)).sum::<f64>().sqrt()
            * t.iter().map(|b| (b - mb).powi(2)).sum::<f64>().sqrt())
    };
    assert!(corr > 0.8, "{corr}");
    assert!(expr::parse("cytotrace").is_ok());
}

/// Toy cells with metabolic labeling: total RNA from the expression, new RNA with γ = 0.3 and
/// labeling times 1 or 2.
fn labeling_cells() -> InMemoryCells {
    let mut c = cells();
    let (n, g) = (c.n_cells, c.n_genes);
    let ms = c.layers["Ms"].to_f64();
    // Total RNA from the expression; new RNA with gamma 0.3 and labeling times 1 or 2.
    let times: Vec<f64> = (0..n).map(|i| if i % 2 == 0 { 1.0 } else { 2.0 }).collect();
    let total: Vec<f64> = ms.iter().map(|v| v.abs() + 1.0).collect();
    let new: Vec<f64> = (0..n * g)
        .map(|k| total[k] * (1.0 - (-0.3 * times[k / g]).exp()))
        .collect();
    c.layers
        .insert("total".into(), DenseMatrix::from_f64(n, g, total));
    c.layers
        .insert("new".into(), DenseMatrix::from_f64(n, g, new));
    c.obs.insert("labeling_time".into(), times);
    c
}

#[test]
fn contract_labeling_time() {
    let c = labeling_cells();
    let k = LabelingTimeParams::default();
    assert_kernel_contract(&k, &c);
    let lv = k.labeling_velocity(&c).unwrap();
    assert_eq!(lv.estimator, "two_step");
    for gm in &lv.gamma {
        assert!((gm - 0.3).abs() < 1e-6, "{gm}");
    }
}

// ----- real-time kernel ----------------------------------------------------------------------

fn two_time_points() -> InMemoryCells {
    // Day 0: points at x = i; day 1: the same points shifted by +0.05.
    let n0 = 20;
    let mut emb = Vec::new();
    let mut labels = Vec::new();
    for d in 0..2 {
        for i in 0..n0 {
            emb.extend([i as f64 + 0.05 * d as f64, 0.0]);
            labels.push(Some(format!("{d}")));
        }
    }
    let n = 2 * n0;
    let mut trip = Vec::new();
    for i in 0..n {
        for j in 0..n {
            if i != j && (i as i64 % n0 as i64 - j as i64 % n0 as i64).abs() <= 2 {
                trip.push((i, j, 1.0));
            }
        }
    }
    let mut c = InMemoryCells {
        n_cells: n,
        n_genes: 1,
        ..Default::default()
    };
    c.labels.insert("day".into(), labels);
    c.obsm
        .insert("X_pca".into(), DenseMatrix::from_f64(n, 2, emb));
    c.graphs.insert(
        "connectivities".into(),
        Csr::from_triplets(n, n, &trip).unwrap(),
    );
    c
}

#[test]
fn ot_couples_each_cell_with_its_shifted_copy() {
    let c = two_time_points();
    let k = RealTimeParams {
        epsilon: 0.001,
        ..Default::default()
    };
    let t = k.compute(&c).unwrap().transition;
    for i in 0..20 {
        let (cols, vals) = t.row(i);
        let (best, p) = cols
            .iter()
            .zip(vals)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        assert_eq!(*best as usize, i + 20, "cell {i}");
        assert!(*p > 0.9);
    }
    assert_kernel_contract(&k, &c);
    assert_kernel_contract(
        &RealTimeParams {
            self_transitions: real_time::SelfTransitions::Uniform,
            threshold: real_time::Threshold::Percentile(50.0),
            ..Default::default()
        },
        &c,
    );
}

// ----- every kernel kind: expressions, parameters, round trips -----------------------------

/// Every built-in kernel with its default parameters.
fn every_default() -> Vec<KernelSpec> {
    vec![
        VelocityParams::default().into(),
        ConnectivityParams::default().into(),
        PseudotimeParams::default().into(),
        CytoTraceParams::default().into(),
        LabelingTimeParams::default().into(),
        RealTimeParams::default().into(),
        PrecomputedParams::default().into(),
    ]
}

#[test]
fn every_kernel_kind_parses_validates_and_round_trips() {
    let defaults = every_default();
    assert_eq!(defaults.len(), kernel::BUILTIN_KERNELS.len());
    for ((kind, aliases), spec) in kernel::BUILTIN_KERNELS.iter().zip(&defaults) {
        assert_eq!(spec.kind(), *kind);
        // By name, alias and CellRank class name, case-insensitively.
        assert_eq!(&expr::parse(kind).unwrap(), spec, "{kind}");
        assert_eq!(&expr::parse(&kind.to_uppercase()).unwrap(), spec);
        for a in *aliases {
            assert_eq!(&expr::parse(a).unwrap(), spec, "{kind}: alias {a}");
        }
        assert_eq!(&KernelSpec::named(kind).unwrap(), spec);
        spec.validate().unwrap();
        // In a weighted sum with the connectivity kernel, and flipped.
        let sum = expr::parse(&format!("0.8*{kind} + 0.2*connectivity")).unwrap();
        assert_eq!(
            sum,
            KernelSpec::sum(vec![
                (0.8, spec.clone()),
                (0.2, ConnectivityParams::default().into())
            ])
        );
        let flipped = expr::parse(&format!("~{kind}")).unwrap();
        assert_eq!(flipped, spec.clone().flip());
        // JSON, TOML and the saved-kernel format.
        for k in [spec.clone(), sum.clone()] {
            assert_eq!(KernelSpec::from_json(&k.to_json()).unwrap(), k, "{kind}");
            let text = toml::to_string(&k).unwrap_or_else(|e| panic!("{kind}: toml: {e}"));
            let back: KernelSpec =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{kind}: {e}\n{text}"));
            assert_eq!(back, k, "{kind}: TOML\n{text}");
            let dir = k.direction().unwrap_or_default();
            let out = KernelOutput {
                transition: TransitionMatrix::try_new(Csr::identity(3), dir).unwrap(),
                effective: k.clone(),
            };
            assert_eq!(
                save::from_bytes(&save::to_bytes(&out).unwrap()).unwrap(),
                out
            );
        }
        // Every parameter can be set, by kind and by alias (here: to its current value).
        let serde_json::Value::Object(params) = serde_json::to_value(spec).unwrap() else {
            panic!("{kind}: a spec serialises to an object")
        };
        assert!(params.len() > 1, "{kind}");
        let n_leaves = sum.leaves().iter().filter(|l| l.kind() == *kind).count();
        for (name, value) in params.iter().filter(|(n, _)| *n != "kernel") {
            for target in std::iter::once(*kind).chain(aliases.iter().copied()) {
                let mut k = sum.clone();
                let n = k.set_param(target, name, &value.to_string());
                assert_eq!(n, Ok(n_leaves), "{target}.{name} = {value}");
                assert_eq!(k, sum, "{target}.{name}");
            }
        }
    }
}

#[test]
fn set_param_reaches_every_kernel_kind() {
    use real_time::{SelfTransitions, Threshold};
    let mut k =
        expr::parse("vk + ck + pk + ctk + labeling_time + real_time + precomputed").unwrap();
    let set = |k: &mut KernelSpec, p: &str| {
        let (lhs, v) = p.split_once('=').unwrap();
        let (kind, name) = lhs.split_once('.').unwrap();
        k.set_param(kind, name, v)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    for p in [
        "velocity.similarity=cosine",
        "velocity.gene_subset=velocity_genes",
        "connectivity.density_normalize=false",
        "pseudotime.time_key=latent_time",
        "pseudotime.threshold_scheme=soft",
        "cytotrace.n_genes=50",
        "cytotrace.layer=X",
        "labeling_time.estimator=two_step",
        "labeling_time.time_key=2",
        "labeling_time.perc=90",
        "labeling_time.softmax_scale=4",
        "real_time.time_key=day",
        "real_time.threshold=90",
        "real_time.self_transitions=diagonal",
        "real_time.epsilon=0.1",
        "precomputed.obsp_key=T_custom",
    ] {
        assert_eq!(set(&mut k, p), 1, "{p}");
    }
    k.validate().unwrap();
    let leaves = k.leaves();
    let find = |kind: &str| *leaves.iter().find(|l| l.kind() == kind).unwrap();
    let KernelSpec::LabelingTime(lt) = find("labeling_time") else {
        panic!()
    };
    assert_eq!(
        (
            lt.estimator,
            lt.time_key.as_str(),
            lt.perc,
            lt.softmax_scale
        ),
        (GammaEstimator::TwoStep, "2", 90.0, Some(4.0))
    );
    let KernelSpec::RealTime(rt) = find("real_time") else {
        panic!()
    };
    assert_eq!(
        (rt.threshold, rt.self_transitions, rt.epsilon),
        (Threshold::Percentile(90.0), SelfTransitions::Diagonal, 0.1)
    );
    let KernelSpec::CytoTrace(ct) = find("cytotrace") else {
        panic!()
    };
    assert_eq!((ct.n_genes, ct.layer.as_str()), (50, "X"));
    let KernelSpec::Precomputed(pr) = find("precomputed") else {
        panic!()
    };
    assert_eq!(pr.key(), "T_custom");
    // CellRank's forms of the real-time threshold, and out-of-range values caught by validate.
    for (v, want) in [
        ("auto_local", Threshold::AutoLocal),
        ("none", Threshold::None),
        ("null", Threshold::None),
        ("{\"percentile\": 50}", Threshold::Percentile(50.0)),
    ] {
        let mut r = expr::parse("rtk").unwrap();
        set(&mut r, &format!("real_time.threshold={v}"));
        assert_eq!(
            r,
            RealTimeParams {
                threshold: want,
                ..Default::default()
            }
            .into()
        );
    }
    let mut r = expr::parse("rtk").unwrap();
    set(&mut r, "rtk.threshold=150");
    assert!(matches!(
        r.validate(),
        Err(KernelError::InvalidParam {
            name: "threshold",
            ..
        })
    ));
    let e = expr::parse("ltk")
        .unwrap()
        .set_param("labeling_time", "estimator", "three_step")
        .unwrap_err();
    assert!(e.to_string().contains("two_step"), "{e}");
}

#[test]
fn labeling_and_real_time_kernels_compute_through_expressions() {
    let c = labeling_cells();
    let k = expr::parse("0.8*labeling_time + 0.2*connectivity").unwrap();
    assert_kernel_contract(&k, &c);
    let out = k.compute(&c).unwrap();
    let KernelSpec::Sum { terms } = &out.effective else {
        panic!("sum")
    };
    assert_eq!(
        terms.iter().map(|t| t.1.kind()).collect::<Vec<_>>(),
        ["labeling_time", "connectivity"]
    );
    let mut rt = expr::parse("real_time").unwrap();
    rt.set_param("real_time", "epsilon", "0.001").unwrap();
    assert_kernel_contract(&rt, &two_time_points());
}

#[test]
fn operators_for_every_parameter_type() {
    let ck = || ConnectivityParams::default();
    // Weighted sums: every type on either side.
    let k: KernelSpec = 0.5 * LabelingTimeParams::default() + 0.5 * ck();
    assert_eq!(
        k,
        expr::parse("0.5*labeling_time + 0.5*connectivity").unwrap()
    );
    let all = 0.1 * VelocityParams::default()
        + 0.1 * ck()
        + 0.1 * PseudotimeParams::default()
        + 0.1 * CytoTraceParams::default()
        + 0.2 * LabelingTimeParams::default()
        + 0.2 * RealTimeParams::default()
        + 0.2 * PrecomputedParams::default();
    assert_eq!(
        all,
        expr::parse("0.1*vk + 0.1*ck + 0.1*pk + 0.1*ctk + 0.2*ltk + 0.2*rtk + 0.2*prk").unwrap()
    );
    assert_eq!(
        RealTimeParams::default() + ck(),
        expr::parse("real_time + connectivity").unwrap()
    );
    assert_eq!(
        CytoTraceParams::default() + PrecomputedParams::default(),
        expr::parse("cytotrace + precomputed").unwrap()
    );
    // Products and flips.
    assert_eq!(
        LabelingTimeParams::default() * ck(),
        expr::parse("labeling_time * connectivity").unwrap()
    );
    assert_eq!(
        RealTimeParams::default() * CytoTraceParams::default() * ck(),
        expr::parse("rtk * ctk * ck").unwrap()
    );
    assert_eq!(!CytoTraceParams::default(), expr::parse("~ctk").unwrap());
    assert_eq!(!LabelingTimeParams::default(), expr::parse("!ltk").unwrap());
    assert_eq!(
        (!PrecomputedParams::default()).direction(),
        Some(Direction::Backward)
    );
    assert_eq!(
        0.3 * (PseudotimeParams::default() * ck()) + 0.7 * VelocityParams::default(),
        expr::parse("0.3 * (pk * ck) + 0.7 * vk").unwrap()
    );
}

// ----- user-defined kernels ----------------------------------------------------------------

/// A user-defined kernel for the tests: follows the kNN graph, favouring neighbours with a
/// higher value of an obs column by `exp(beta * (v_j - v_i))`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Uphill {
    key: String,
    beta: f64,
    backward: bool,
}

impl Default for Uphill {
    fn default() -> Self {
        Self {
            key: "dpt_pseudotime".into(),
            beta: 5.0,
            backward: false,
        }
    }
}

impl CustomKernel for Uphill {
    const NAME: &'static str = "uphill";
}

impl Kernel for Uphill {
    fn name(&self) -> &'static str {
        "UphillKernel"
    }
    fn spec(&self) -> KernelSpec {
        KernelSpec::custom(self)
    }
    fn direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }
    fn validate(&self) -> Result<(), KernelError> {
        if self.beta.is_finite() {
            Ok(())
        } else {
            Err(KernelError::InvalidParam {
                kernel: "UphillKernel",
                name: "beta",
                value: self.beta.to_string(),
                expected: "a finite number".into(),
            })
        }
    }
    fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
        self.validate()?;
        let g = cells.graph("connectivities").unwrap();
        let v = cells.obs_f64(&self.key).unwrap();
        let sign = if self.backward { -1.0 } else { 1.0 };
        let mut trip = Vec::new();
        for i in 0..g.nrows() {
            let (cols, vals) = g.row(i);
            for (&j, &w) in cols.iter().zip(vals) {
                let j = j as usize;
                trip.push((i, j, w * (sign * self.beta * (v[j] - v[i])).exp()));
            }
        }
        let m = Csr::from_triplets(g.nrows(), g.ncols(), &trip).unwrap();
        Ok(KernelOutput {
            transition: TransitionMatrix::from_weights(m, Direction::from_backward(self.backward))
                .unwrap(),
            effective: self.spec(),
        })
    }
}

/// Another type, to check that a name cannot be taken twice.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct UphillImpostor;

impl CustomKernel for UphillImpostor {
    const NAME: &'static str = "uphill";
}

impl Kernel for UphillImpostor {
    fn name(&self) -> &'static str {
        "UphillImpostor"
    }
    fn spec(&self) -> KernelSpec {
        KernelSpec::custom(self)
    }
    fn direction(&self) -> Option<Direction> {
        None
    }
    fn validate(&self) -> Result<(), KernelError> {
        Ok(())
    }
    fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
        ConnectivityParams::default().compute(cells)
    }
}

/// A kernel no test registers, with a given (possibly invalid) name.
macro_rules! named_kernel {
    ($t:ident, $name:expr) => {
        #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
        struct $t {
            x: f64,
        }
        impl CustomKernel for $t {
            const NAME: &'static str = $name;
        }
        impl Kernel for $t {
            fn name(&self) -> &'static str {
                stringify!($t)
            }
            fn spec(&self) -> KernelSpec {
                KernelSpec::custom(self)
            }
            fn direction(&self) -> Option<Direction> {
                None
            }
            fn validate(&self) -> Result<(), KernelError> {
                Ok(())
            }
            fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
                let out = ConnectivityParams::default().compute(cells)?;
                Ok(KernelOutput {
                    transition: out.transition,
                    effective: self.spec(),
                })
            }
        }
    };
}
named_kernel!(NeverRegistered, "never_registered");
named_kernel!(BadName, "Bad-Name");
named_kernel!(Shadow, "vk");
named_kernel!(Reserved, "sum");

#[test]
fn custom_kernel_joins_sums_and_products_without_registration() {
    let c = cells();
    let mine = NeverRegistered { x: 2.0 };
    let k = 0.7 * mine.spec() + 0.3 * ConnectivityParams::default();
    // Computes in-process, with its spec kept in the effective spec.
    let out = k.compute(&c).unwrap();
    assert_eq!(out.effective, k);
    assert_eq!(k.leaves()[0].kind(), "never_registered");
    assert_eq!(k.leaves()[0].name(), "NeverRegistered");
    let p = mine.spec() * ConnectivityParams::default();
    assert!(p.compute(&c).is_ok());
    let mut set = k.clone();
    assert_eq!(set.set_param("never_registered", "x", "3"), Ok(1));
    // Read back from text, the name is unknown: a typed error naming it and the known ones.
    let e = KernelSpec::from_json(&k.to_json()).unwrap_err();
    match &e {
        KernelError::UnknownKernel { name, known } => {
            assert_eq!(name, "never_registered");
            assert!(known.iter().any(|k| k == "labeling_time"), "{known:?}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("register_kernel"), "{e}");
    let e = expr::parse("0.5 * never_registered + 0.5 * ck").unwrap_err();
    assert!(
        matches!(&e, KernelError::Expression { problem: ExprProblem::UnknownKernel { name }, known, .. }
            if name == "never_registered" && known.iter().any(|k| k == "real_time")),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("unknown kernel \"never_registered\""),
        "{e}"
    );
    let custom = KernelSpec::Custom(CustomSpec::new(
        "never_registered",
        serde_json::json!({"x": 1.0}),
    ));
    assert!(matches!(
        custom.validate(),
        Err(KernelError::UnknownKernel { .. })
    ));
    assert!(matches!(
        custom.compute(&c),
        Err(KernelError::UnknownKernel { .. })
    ));
}

#[test]
fn registered_custom_kernel_round_trips_everywhere() {
    register_kernel::<Uphill>().unwrap();
    register_kernel::<Uphill>().unwrap(); // idempotent
    assert!(registered_kernels().contains(&"uphill".to_string()));
    assert!(kernel::known_kernels().contains(&"uphill".to_string()));
    let c = cells();
    let up = Uphill {
        beta: 3.0,
        ..Default::default()
    };
    let k = 0.7 * up.spec() + 0.3 * ConnectivityParams::default();
    assert_kernel_contract(&k, &c);
    assert_kernel_contract(&up.spec(), &c);
    // Flows towards later pseudotime.
    let t = &c.obs["dpt_pseudotime"];
    let out = k.compute(&c).unwrap();
    let drift: f64 = out
        .transition
        .mul_vec(t)
        .iter()
        .zip(t)
        .map(|(a, b)| a - b)
        .sum();
    assert!(drift > 0.0, "{drift}");
    // JSON (uns["T_fwd_params"]), TOML and the saved-kernel format.
    let json = k.to_json();
    assert!(
        json.contains("\"kernel\":\"custom\"") && json.contains("\"name\":\"uphill\""),
        "{json}"
    );
    assert_eq!(KernelSpec::from_json(&json).unwrap(), k);
    let text = toml::to_string(&k).unwrap();
    assert_eq!(toml::from_str::<KernelSpec>(&text).unwrap(), k, "{text}");
    let back = save::from_bytes(&save::to_bytes(&out).unwrap()).unwrap();
    assert_eq!(back, out);
    // A spec read from text recomputes the same matrix (through the registry).
    assert_eq!(
        KernelSpec::from_json(&json)
            .unwrap()
            .compute(&c)
            .unwrap()
            .transition,
        out.transition
    );
    // The expression parser by name (case-insensitive), with parameters set after.
    let mut parsed = expr::parse("0.7*Uphill + 0.3*connectivity").unwrap();
    assert_eq!(parsed.set_param("uphill", "beta", "3"), Ok(1));
    assert_eq!(parsed, k);
    // Parameter errors name the kernel and its parameters.
    let e = parsed.set_param("uphill", "gamma", "1").unwrap_err();
    assert!(
        matches!(&e, KernelError::UnknownParam { kernel, known, .. }
            if kernel == "uphill" && known == &["backward", "beta", "key"]),
        "{e}"
    );
    let e = parsed.set_param("uphill", "beta", "steep").unwrap_err();
    assert!(
        matches!(&e, KernelError::InvalidParamValue { name, .. } if name == "beta"),
        "{e}"
    );
    // A text parameter given a number is retried as text.
    assert_eq!(parsed.set_param("uphill", "key", "7"), Ok(1));
    // Flipping toggles a `backward` parameter; mixed directions are caught.
    let flipped = !up.spec();
    assert_eq!(flipped.direction(), Some(Direction::Backward));
    assert!(matches!(
        (up.spec() + flipped).validate(),
        Err(KernelError::MixedDirections { .. })
    ));
    // The name is taken by this type; invalid and built-in names are refused.
    assert!(matches!(
        register_kernel::<UphillImpostor>(),
        Err(KernelError::Registration {
            problem: RegistrationProblem::Taken { .. },
            ..
        })
    ));
    assert!(matches!(
        register_kernel::<BadName>(),
        Err(KernelError::Registration {
            problem: RegistrationProblem::InvalidName,
            ..
        })
    ));
    let e = register_kernel::<Shadow>().unwrap_err();
    assert!(
        matches!(&e, KernelError::Registration { problem: RegistrationProblem::Builtin { .. }, name } if name == "vk"),
        "{e}"
    );
    assert!(register_kernel::<Reserved>().is_err());
    // Bad parameters in stored text: a typed error naming the kernel.
    let bad = json.replace("\"beta\":3.0", "\"beta\":\"steep\"");
    assert!(
        matches!(
            KernelSpec::from_json(&bad),
            Err(KernelError::CustomParams { kernel, .. }) if kernel == "uphill"
        ),
        "{bad}"
    );
}

#[test]
fn real_time_reads_numeric_time_points_and_resolves_auto_self_transitions() {
    use real_time::SelfTransitions;
    let c = two_time_points();
    let auto = RealTimeParams {
        epsilon: 0.001,
        ..Default::default()
    };
    assert_eq!(auto.self_transitions, SelfTransitions::Auto);
    // With a kNN graph, `auto` is `connectivities`, and the effective spec says so.
    let out = auto.compute(&c).unwrap();
    let explicit = RealTimeParams {
        self_transitions: SelfTransitions::Connectivities,
        ..auto.clone()
    };
    assert_eq!(out.effective, explicit.spec());
    assert_eq!(explicit.compute(&c).unwrap().transition, out.transition);
    // Without one, `diagonal`; asking for connectivities explicitly is an error naming the fix.
    let mut no_graph = c.clone();
    no_graph.graphs.clear();
    let out = auto.compute(&no_graph).unwrap();
    let KernelSpec::RealTime(eff) = &out.effective else {
        panic!()
    };
    assert_eq!(eff.self_transitions, SelfTransitions::Diagonal);
    assert_eq!(out.transition.row(39), (&[39u32][..], &[1.0][..]));
    let e = explicit.compute(&no_graph).unwrap_err().to_string();
    assert!(
        e.contains("obsp[\"connectivities\"]") && e.contains("cellfate preprocess"),
        "{e}"
    );
    // A numeric time column (moscot's float `day`) gives the same kernel as its labels.
    let mut numeric = c.clone();
    let labels = numeric.labels.remove("day").unwrap();
    let days: Vec<f64> = labels
        .iter()
        .map(|l| l.as_deref().unwrap().parse().unwrap())
        .collect();
    numeric.obs.insert("day".into(), days);
    assert_eq!(
        auto.compute(&numeric).unwrap().transition,
        auto.compute(&c).unwrap().transition
    );
    // Couplings keyed as moscot does (`tmap_0_1` for days 0.0 and 1.0) are used.
    let mut coupled = numeric.clone();
    let tmap: Vec<f64> = (0..400)
        .map(|k| if k / 20 == k % 20 { 1.0 } else { 0.0 })
        .collect();
    coupled
        .uns
        .insert("tmap_0_1".into(), DenseMatrix::from_f64(20, 20, tmap));
    let t = auto.compute(&coupled).unwrap().transition;
    for i in 0..20 {
        assert_eq!(t.row(i), (&[i as u32 + 20][..], &[1.0][..]), "cell {i}");
    }
    // Missing column: the error names it.
    let e = RealTimeParams {
        time_key: "nope".into(),
        ..Default::default()
    }
    .compute(&c)
    .unwrap_err()
    .to_string();
    assert!(e.contains("obs[\"nope\"]") && e.contains("time_key"), "{e}");
}

/// Combining kernels computed already (`KernelOutput::sum` / `product`, what CellRank's
/// `0.8 * vk + 0.2 * ck` does after both kernels are computed) gives bit for bit what
/// computing the combined spec gives, with the same effective spec; mixed directions and
/// bad weights are refused as for the spec.
#[test]
fn combining_computed_kernels_equals_computing_the_combination() {
    let c = cells();
    let vk = VelocityParams::default().compute(&c).unwrap();
    let ck = ConnectivityParams::default().compute(&c).unwrap();
    let sum = KernelOutput::sum(vec![(0.8, vk.clone()), (0.2, ck.clone())]).unwrap();
    let direct = (0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default())
        .compute(&c)
        .unwrap();
    assert_eq!(sum.transition, direct.transition);
    assert_eq!(sum.effective, direct.effective);
    let prod = KernelOutput::product(vec![vk.clone(), ck.clone()]).unwrap();
    let direct = KernelSpec::product(vec![
        VelocityParams::default().into(),
        ConnectivityParams::default().into(),
    ])
    .compute(&c)
    .unwrap();
    assert_eq!(prod.transition, direct.transition);
    let bwd = VelocityParams {
        backward: true,
        ..Default::default()
    }
    .compute(&c)
    .unwrap();
    assert!(matches!(
        KernelOutput::sum(vec![(1.0, vk.clone()), (1.0, bwd)]),
        Err(KernelError::MixedDirections { .. })
    ));
    assert!(matches!(
        KernelOutput::sum(vec![(-1.0, vk), (1.0, ck)]),
        Err(KernelError::InvalidWeight { .. })
    ));
    assert!(matches!(
        KernelOutput::sum(Vec::new()),
        Err(KernelError::EmptyCombination { .. })
    ));
}

/// Values held elsewhere (`DenseMatrix::from_shared_f32`, how the Python package passes NumPy
/// arrays) read exactly like owned ones, and a kernel computed on them is bit-identical.
#[test]
fn shared_dense_values_read_like_owned_ones() {
    let v: Vec<f32> = (0..12).map(|x| x as f32 * 0.5 - 2.0).collect();
    let owned = DenseMatrix::from_f32(3, 4, v.clone());
    let shared = DenseMatrix::from_shared_f32(3, 4, std::sync::Arc::new(v));
    assert_eq!(owned, shared);
    assert_eq!(owned.to_f64(), shared.to_f64());
    assert_eq!(owned.col_sums(), shared.col_sums());
    assert_eq!(owned.get(2, 3), shared.get(2, 3));
    let keep = [true, false, true, true];
    assert_eq!(owned.select_columns(&keep), shared.select_columns(&keep));
    assert_eq!(shared.select_columns(&[true; 4]), shared);
    let mut c = cells();
    let k = VelocityParams::default();
    let before = k.compute(&c).unwrap();
    for key in ["Ms", "velocity"] {
        let m = c.layers[key].clone();
        let values: Vec<f64> = m.to_f64();
        let shared =
            DenseMatrix::from_shared_f64(m.nrows(), m.ncols(), std::sync::Arc::new(values));
        c.layers.insert(key.to_string(), shared);
    }
    let after = k.compute(&c).unwrap();
    assert_eq!(before.transition, after.transition);
}
