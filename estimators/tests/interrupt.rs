//! A requested stop ends the long stages early with `EstimatorError::Interrupted` and leaves
//! the estimator as it was. (Its own test binary: the stop flag is process-wide, so it must not
//! run beside the other tests.)

use std::time::{Duration, Instant};

use cellfate_estimators::gpcca::Optimizer;
use cellfate_estimators::schur::{SchurMethod, SchurOptions};
use cellfate_estimators::{EstimatorError, Gpcca, MacrostatesOptions, NStates};
use cellfate_kernels::interrupt;
use cellfate_kernels::testing::clustered_knn_chain;

#[test]
fn a_requested_stop_interrupts_schur_and_macrostates() {
    let t = clustered_knn_chain(3000, 12, 15, 3);
    let mut g = Gpcca::new(t);
    let krylov = SchurOptions {
        n_components: 14,
        method: SchurMethod::Krylov,
        ..Default::default()
    };
    {
        let _scope = interrupt::Scope::new();
        interrupt::request();
        let err = g.compute_schur(&krylov).expect_err("interrupted");
        assert!(
            matches!(
                err,
                EstimatorError::Interrupted {
                    stage: "compute_schur",
                    ..
                }
            ),
            "{err}"
        );
        assert!(g.schur().is_err(), "nothing stored");
    }
    // Without a request the same call completes.
    g.compute_schur(&krylov).expect("schur");
    // Stopped from another thread while the optimiser runs.
    let started = Instant::now();
    let err = std::thread::scope(|s| {
        let _scope = interrupt::Scope::new();
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            interrupt::request();
        });
        g.compute_macrostates(
            NStates::Fixed(12),
            &MacrostatesOptions {
                optimizer: Optimizer::NelderMead,
                ..Default::default()
            },
            None,
        )
        .map(|_| ())
        .expect_err("interrupted")
    });
    assert!(matches!(err, EstimatorError::Interrupted { .. }), "{err}");
    assert!(g.macrostates().is_err(), "nothing stored");
    eprintln!("stopped after {:.2} s", started.elapsed().as_secs_f64());
}
