use super::*;
use crate::absorption::AbsorptionOptions;
use crate::schur::SchurOptions;
use crate::states::TerminalMethod;
use cellfate_kernels::testing::clustered_knn_chain;

fn chain() -> TransitionMatrix {
    clustered_knn_chain(300, 3, 10, 7)
}

fn small() -> (MacrostatesOptions, TerminalOptions) {
    (
        MacrostatesOptions {
            n_cells: 10,
            ..Default::default()
        },
        TerminalOptions {
            n_cells: 10,
            ..Default::default()
        },
    )
}

#[test]
fn stages_called_too_early_name_the_stage_to_call_first() {
    let mut g = Gpcca::new(chain());
    let (mo, _) = small();
    let e = g
        .compute_macrostates(NStates::Fixed(3), &mo, None)
        .unwrap_err();
    assert!(
        matches!(
            e,
            EstimatorError::NotComputed {
                call_first: "compute_schur",
                ..
            }
        ),
        "{e}"
    );
    let e = g
        .compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("predict_terminal_states"), "{e}");
    assert!(g.macrostates().is_err());
    assert!(g.absorption_times().is_err());
    let e = g
        .compute_absorption_times(&AbsorptionTimesOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("compute_fate_probabilities"), "{e}");
    let mut c = Cflare::new(chain());
    let e = c.predict(&Default::default(), None).unwrap_err();
    assert!(e.to_string().contains("compute_eigendecomposition"), "{e}");
}

#[test]
fn gpcca_stages_equal_the_free_functions() {
    let t = chain();
    let (mo, to) = small();
    let mut g = Gpcca::new(t.clone());
    g.compute_schur(&SchurOptions {
        n_components: 5,
        ..Default::default()
    })
    .unwrap();
    let ms = g
        .compute_macrostates(NStates::Fixed(3), &mo, None)
        .unwrap()
        .clone();
    // The same by hand.
    let schur = crate::schur::compute_schur(
        &t,
        None,
        &SchurOptions {
            n_components: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let pi = crate::gpcca::stationary_distribution(&t).ok();
    let fit = crate::gpcca::fit(&t, &schur, 3, &mo.optimizer, pi.as_deref()).unwrap();
    assert_eq!(ms.states.memberships.as_ref().unwrap(), &fit.chi);
    assert_eq!(ms.coarse_t, fit.coarse_t);
    let assign = crate::states::fuzzy_to_discrete_with(&fit.chi, 10, Some(&t)).unwrap();
    assert_eq!(ms.states.assignment, assign);
    assert_eq!(ms.states.names, vec!["0", "1", "2"]);
    // Terminal states: the two most stable macrostates.
    let term = g
        .predict_terminal_states(&TerminalMethod::TopN { n_states: 2 }, &to)
        .unwrap()
        .clone();
    let sel = crate::states::select_terminal(
        &ms.states.names,
        &ms.stability(),
        &TerminalMethod::TopN { n_states: 2 },
        &[],
    )
    .unwrap();
    let (ta, tp) = crate::states::states_from_memberships(&fit.chi, &sel, 10, Some(&t)).unwrap();
    assert_eq!(term.assignment, ta);
    assert_eq!(term.probs, tp);
    assert_eq!(term.memberships.as_ref().unwrap().ncols(), 2);
    let fates = g
        .compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap()
        .clone();
    let (f2, sys) = crate::absorption::compute_fate_probabilities(
        &t,
        &ta,
        &term.names,
        &AbsorptionOptions::default(),
    )
    .unwrap();
    assert_eq!(fates.probs, f2.probs);
    let times = g
        .compute_absorption_times(&AbsorptionTimesOptions::default())
        .unwrap()
        .clone();
    let by_hand = crate::absorption::compute_absorption_times(&sys, &f2, false, false).unwrap();
    assert_eq!(times.columns, by_hand.columns);
    // Bit for bit (absorbing cells hold inf/NaN for the other lineages, as in CellRank).
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&times.values) == bits(&by_hand.values));
    let p = g
        .compute_lineage_priming(crate::absorption::PrimingMethod::KlDivergence, None)
        .unwrap()
        .to_vec();
    assert_eq!(p.len(), 300);
    // Drivers on a dense toy expression: gene 0 follows lineage 0, gene 1 lineage 1.
    let values: Vec<f64> = (0..300)
        .flat_map(|i| {
            let noise = 0.01 * (i % 3) as f64;
            [
                fates.get(i, 0) + noise,
                fates.get(i, 1) - noise,
                (i % 7) as f64,
            ]
        })
        .collect();
    let expr = Expression::Dense {
        n_cells: 300,
        n_genes: 3,
        values: &values,
    };
    let d = g
        .compute_lineage_drivers(&expr, &DriverOptions::default())
        .unwrap();
    assert!(
        d.corr[0] > 0.9 && d.corr[2 + 1] > 0.9 && d.corr[4].abs() < 0.2,
        "{:?}",
        d.corr
    );
    // Only some lineages, and an unknown one.
    let one = g
        .compute_lineage_drivers(
            &expr,
            &DriverOptions {
                lineages: Some(vec![fates.names[1].clone()]),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(one.lineages, vec![fates.names[1].clone()]);
    let e = g
        .compute_lineage_drivers(
            &expr,
            &DriverOptions {
                lineages: Some(vec!["nope".into()]),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("unknown lineage \"nope\""), "{e}");
    // Initial state: the least stationary macrostate (the first group feeds the others).
    let init = g.predict_initial_states(1, 10).unwrap();
    assert_eq!(init.n_states(), 1);
}

#[test]
fn setting_terminal_states_forgets_what_came_from_the_old_ones() {
    let t = chain();
    let (mo, to) = small();
    let mut g = Gpcca::new(t);
    g.compute_schur(&SchurOptions {
        n_components: 4,
        ..Default::default()
    })
    .unwrap();
    g.compute_macrostates(NStates::Fixed(3), &mo, None).unwrap();
    g.predict_terminal_states(&TerminalMethod::TopN { n_states: 2 }, &to)
        .unwrap();
    g.compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap();
    // By macrostate name: the same cells as predicting with Names.
    let names = g.macrostates().unwrap().states.names.clone();
    let s = g
        .set_terminal_states(StatesInput::Macrostates {
            names: vec![names[2].clone()],
            n_cells: 10,
        })
        .unwrap()
        .clone();
    assert_eq!(s.names, vec![names[2].clone()]);
    assert!(g.fate_probabilities().is_err(), "fates must be forgotten");
    // By cells.
    let s = g
        .set_terminal_states(StatesInput::Cells(vec![
            ("end".into(), (290..300).collect()),
            ("mid".into(), (190..200).collect()),
        ]))
        .unwrap()
        .clone();
    assert_eq!(s.counts(), vec![10, 10]);
    assert_eq!(s.labels()[295], Some("end"));
    assert_eq!(s.probs[295], 1.0);
    let f = g
        .compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap();
    assert_eq!(f.names, vec!["end", "mid"]);
    // Bad input is a typed error naming what is wrong.
    let e = g
        .set_terminal_states(StatesInput::Cells(vec![("a".into(), vec![5000])]))
        .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = g
        .set_terminal_states(StatesInput::Labels {
            labels: vec![None; 3],
            states: None,
            colors: None,
        })
        .unwrap_err();
    assert!(e.to_string().contains("3 labels for 300 cells"), "{e}");
    let e = g
        .set_terminal_states(StatesInput::Macrostates {
            names: vec!["nope".into()],
            n_cells: 10,
        })
        .unwrap_err();
    assert!(e.to_string().contains("not a macrostate"), "{e}");
    // CFLARE has no macrostates.
    let mut c = Cflare::new(chain());
    let e = c
        .set_terminal_states(StatesInput::Macrostates {
            names: vec!["0".into()],
            n_cells: 10,
        })
        .unwrap_err();
    assert!(e.to_string().contains("no macrostates"), "{e}");
}

#[test]
fn cflare_stages_equal_the_free_function() {
    let t = chain();
    let opts = crate::cflare::CflareOptions {
        k: 6,
        use_k: Some(2),
        percentile: Some(90.0),
        ..Default::default()
    };
    let mut c = Cflare::new(t.clone());
    c.fit(6).unwrap();
    let s = c.predict(&opts, None).unwrap().clone();
    let r = crate::cflare::cflare(&t, &opts).unwrap();
    assert_eq!(s.assignment, r.assignment);
    assert_eq!(s.probs, r.probs);
    assert_eq!(c.result().unwrap(), &r);
    let f = c
        .compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap();
    assert_eq!(f.n_lineages(), r.n_clusters);
}

/// An estimator written outside the GPCCA/CFLARE pair: terminal states are the cells whose
/// rows are the most self-absorbing; it gets the absorption stages from the trait.
#[derive(Debug)]
struct MostLazy {
    core: EstimatorCore,
}

impl Estimator for MostLazy {
    fn estimator_name(&self) -> &'static str {
        "MostLazy"
    }
    fn core(&self) -> &EstimatorCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut EstimatorCore {
        &mut self.core
    }
}

#[test]
fn a_new_estimator_plugs_into_the_shared_stages() {
    let mut e = MostLazy {
        core: EstimatorCore::new(chain()),
    };
    e.set_terminal_states(StatesInput::Cells(vec![("tip".into(), vec![299])]))
        .unwrap();
    let f = e
        .compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap();
    assert!((f.get(0, 0) - 1.0).abs() < 1e-10);
    let t = e
        .compute_absorption_times(&AbsorptionTimesOptions::default())
        .unwrap();
    assert!(t.values[0] > 0.0);
}

/// With one terminal state every fate probability is 1 (± rounding): drivers would be
/// correlations with noise, so the stage refuses with a typed error naming the lineage.
#[test]
fn drivers_of_a_single_lineage_are_a_typed_error() {
    let mut e = MostLazy {
        core: EstimatorCore::new(chain()),
    };
    e.set_terminal_states(StatesInput::Cells(vec![("tip".into(), vec![299])]))
        .unwrap();
    e.compute_fate_probabilities(&AbsorptionOptions::default())
        .unwrap();
    let n = e.transition_matrix().n_cells();
    let values: Vec<f64> = (0..n * 2).map(|k| (k % 5) as f64).collect();
    let x = Expression::Dense {
        n_cells: n,
        n_genes: 2,
        values: &values,
    };
    let err = e
        .compute_lineage_drivers(&x, &DriverOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            EstimatorError::Drivers(DriversError::SingleLineage { lineage, spread })
                if lineage == "tip" && *spread < 1e-8
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least 2 lineages"), "{err}");
    assert!(e.lineage_drivers().is_err());
}

/// A source block of 20 cells that feeds two end blocks of 20 (uniform transitions inside each block), which lead back to it with
/// probability 1e-14: one strongly connected component, but λ2 and λ3 are numerically 1. The
/// initial-states note must call it nearly reducible (with the gap), as the stationary
/// distribution's note does, not reducible (issue 17: the demo said both).
#[test]
fn initial_states_of_a_nearly_reducible_chain_say_nearly_reducible() {
    use cellfate_kernels::{Csr, Direction};
    let (b, back) = (20, 1e-14);
    let mut e = Vec::new();
    let w = 1.0 / b as f64;
    for i in 0..b {
        for j in 0..b {
            // Source: stays with 0.9, leaves to either end block with 0.05 (uniform inside
            // each block); the end blocks stay but for `back`.
            e.push((i, j, 0.9 * w));
            e.push((i, b + j, 0.05 * w));
            e.push((i, 2 * b + j, 0.05 * w));
            for o in [b, 2 * b] {
                e.push((o + i, o + j, (1.0 - back) * w));
                e.push((o + i, j, back * w));
            }
        }
    }
    let t = TransitionMatrix::try_new(
        Csr::from_triplets(3 * b, 3 * b, &e).unwrap(),
        Direction::Forward,
    )
    .unwrap();
    let mut g = Gpcca::new(t);
    g.compute_schur(&SchurOptions {
        n_components: 4,
        ..Default::default()
    })
    .unwrap();
    let mo = MacrostatesOptions {
        n_cells: 5,
        ..Default::default()
    };
    g.compute_macrostates(NStates::Fixed(3), &mo, None).unwrap();
    assert!(g.macrostates().unwrap().coarse_stat.is_none());
    let init = g.predict_initial_states(1, 5).unwrap().clone();
    // The source block is the initial state.
    let source: Vec<usize> = (0..3 * b)
        .filter(|&i| init.assignment[i].is_some())
        .collect();
    assert!(
        !source.is_empty() && source.iter().all(|&i| i < b),
        "{source:?}"
    );
    let notes = g.notes().join("\n");
    let line = notes
        .lines()
        .find(|l| l.starts_with("initial states: no coarse stationary distribution"))
        .unwrap_or_else(|| panic!("{notes}"));
    assert!(
        line.contains("the chain is nearly reducible, |1 - λ2| = "),
        "{line}"
    );
    assert!(!line.contains("the chain is reducible"), "{line}");
    assert!(
        notes.contains("no coarse stationary distribution: stationary distribution: the chain is nearly reducible"),
        "{notes}"
    );
}
