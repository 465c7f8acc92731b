//! Scale benchmark of the estimators on synthetic clustered kNN-like graphs (30 random
//! neighbours, mostly within one of 25 clusters; see `kernels::testing::clustered_knn_chain`): one timed run per stage and
//! size (criterion's repeated sampling is impractical at 1M cells), wall seconds and the peak
//! resident memory of the stage (Linux: `VmHWM`, reset before each stage through
//! `/proc/self/clear_refs`).
//!
//! ```sh
//! cargo run --release --example scale -- 10000 100000 1000000
//! cargo run --release --example scale -- --m50 100000      # macrostates with m = 50
//! cargo run --release --example scale -- --states 1000000   # Schur and macrostates only
//! cargo run --release --example scale -- --drivers 100000  # drivers, 2,000 genes x 5 lineages
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use cellfate::estimators::absorption::{compute_fate_probabilities, AbsorptionOptions, Solver};
use cellfate::estimators::drivers::{compute_lineage_drivers, DriverTest, Expression};
use cellfate::estimators::gpcca::{fit, Optimizer};
use cellfate::estimators::schur::{compute_schur, SchurMethod, SchurOptions};
use cellfate::kernels::testing::{clustered_knn_chain, Lcg};
use cellfate::kernels::Csr;

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn stage<T>(name: &str, n: usize, f: impl FnOnce() -> T) -> T {
    reset_peak();
    let t0 = Instant::now();
    let out = f();
    let s = t0.elapsed().as_secs_f64();
    let mb = cellfate::pipeline::peak_rss_mb().unwrap_or(f64::NAN);
    println!("| {name} | {n} | {s:.2} | {mb:.0} |");
    out
}

fn terminal(n: usize, l: usize) -> (Vec<Option<usize>>, Vec<String>) {
    let mut term = vec![None; n];
    for j in 0..l {
        for i in 0..30 {
            term[n - 1 - j * 40 - i] = Some(j);
        }
    }
    (term, (0..l).map(|j| format!("L{j}")).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let m50 = args.iter().any(|a| a == "--m50");
    let drivers = args.iter().any(|a| a == "--drivers");
    let states_only = args.iter().any(|a| a == "--states");
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![10_000]
    } else {
        sizes
    };
    println!("| stage | cells | seconds | peak MB |");
    println!("| --- | --- | --- | --- |");
    for n in sizes {
        if drivers {
            let (genes, lineages) = (2000usize, 5usize);
            let mut rng = Lcg::new(7);
            let mut trip = Vec::new();
            for i in 0..n {
                for g in 0..genes {
                    if rng.uniform() < 0.1 {
                        trip.push((i, g, (rng.uniform() * 5.0).round() + 1.0));
                    }
                }
            }
            let x = Csr::from_triplets(n, genes, &trip).unwrap();
            drop(trip);
            let ys: Vec<Vec<f64>> = (0..lineages)
                .map(|_| (0..n).map(|_| rng.uniform()).collect())
                .collect();
            let names: Vec<String> = (0..lineages).map(|j| format!("L{j}")).collect();
            stage("drivers, 2,000 genes × 5 lineages (Fisher)", n, || {
                compute_lineage_drivers(
                    &Expression::Sparse(&x),
                    &ys,
                    &names,
                    &DriverTest::Fisher,
                    0.95,
                )
                .unwrap()
            });
            continue;
        }
        let groups = if m50 { 60 } else { 25 };
        let t = clustered_knn_chain(n, groups, 30, 1);
        let k = if m50 { 51 } else { 20 };
        let opts = SchurOptions {
            n_components: k,
            method: SchurMethod::Krylov,
            ..Default::default()
        };
        let schur = stage(&format!("Schur, {k} vectors (Krylov)"), n, || {
            compute_schur(&t, None, &opts).unwrap()
        });
        let ms: &[usize] = if m50 { &[50] } else { &[5, 15] };
        for &m in ms {
            if schur.splits_pair(m) || m > schur.m() {
                println!("| macrostates m = {m} | {n} | skipped (would split a pair) | |");
                continue;
            }
            let g = stage(
                &format!("macrostates m = {m} (gradient, 10 starts)"),
                n,
                || fit(&t, &schur, m, &Optimizer::default(), None).unwrap(),
            );
            println!(
                "|   objective {:.6}, crispness {:.6}, {} iterations, {} evaluations, best start {} | | | |",
                g.report.f_opt, g.crispness, g.report.iterations, g.report.evaluations, g.report.best_start
            );
        }
        if m50 || states_only {
            continue;
        }
        for l in [3usize, 10] {
            let (term, names) = terminal(n, l);
            stage(
                &format!("fate probabilities, {l} lineages (auto)"),
                n,
                || {
                    compute_fate_probabilities(&t, &term, &names, &AbsorptionOptions::default())
                        .unwrap()
                },
            );
            // GMRES for comparison (slow on strongly metastable chains): 3 lineages up to
            // 100k cells, 10 lineages up to 10k.
            if n <= 10_000 || (n <= 100_000 && l == 3) {
                let gm = AbsorptionOptions {
                    solver: Solver::Gmres,
                    ..Default::default()
                };
                stage(
                    &format!("fate probabilities, {l} lineages (GMRES + ILU0)"),
                    n,
                    || compute_fate_probabilities(&t, &term, &names, &gm).unwrap(),
                );
            }
        }
    }
}
