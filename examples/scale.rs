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
//! cargo run --release --example scale -- --fates 100000    # fate probabilities only
//! # a real chain: the default kernel on a preprocessed file (e.g. `cellfate simulate --cells
//! # 1000000` then `cellfate preprocess`), cached in K.bin, then every estimator stage with
//! # the defaults of `cellfate run`
//! cargo run --release --example scale -- --chain pre.h5ad K.bin
//! # the absorption stages alone on that chain, each timed apart (the terminal states of
//! # the defaults are computed once and cached in TERM.txt, one label per line)
//! cargo run --release --example scale -- --absorb pre.h5ad K.bin TERM.txt
//! ```
//!
//! Lab variables of `--chain`: `SCALE_NCV` and `SCALE_TOL` set the Schur decomposition's
//! Krylov subspace size and tolerance, `SCALE_NO_FATES` stops after the terminal states,
//! `SCALE_EIGS` prints the Schur eigenvalues, `SCALE_N_STATES` fixes the number of macrostates; `SCALE_RESTART` sets `--absorb`'s GMRES restart length, `SCALE_AGGREGATE` its aggregate
//! size of the coarse correction (0: ILU(0) alone). `SCALE_LINEAGES` (say `3`) sets the
//! lineage counts of `--fates` (default `3,10`).
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

/// Every estimator stage of `cellfate run` (its defaults) on the default kernel of a
/// preprocessed file, computed once and cached in `cache` (the saved-kernel format).
fn real_chain(input: &str, cache: &str) {
    use cellfate::io::H5adReader;
    use cellfate::kernels::{save, Kernel};
    use cellfate::pipeline::{estimate::fit_gpcca, FateMapSpec};
    let mut spec = FateMapSpec::default();
    // Lab overrides of the Krylov settings (not part of the bench's defaults).
    if let Some(v) = std::env::var("SCALE_NCV").ok().and_then(|v| v.parse().ok()) {
        spec.estimators.schur.ncv = Some(v);
    }
    if let Some(v) = std::env::var("SCALE_TOL").ok().and_then(|v| v.parse().ok()) {
        spec.estimators.schur.tol = v;
    }
    if std::env::var_os("SCALE_NO_FATES").is_some() {
        spec.estimators.fates = false;
    }
    if let Some(m) = std::env::var("SCALE_N_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        spec.estimators.n_states = cellfate::estimators::NStates::Fixed(m);
    }
    let r = H5adReader::open(std::path::Path::new(input)).unwrap();
    let n = r.n_obs().unwrap();
    println!("| stage | cells | seconds | peak MB |");
    println!("| --- | --- | --- | --- |");
    let t = match std::fs::read(cache) {
        Ok(bytes) => save::from_bytes(&bytes).unwrap().transition,
        Err(_) => {
            let out = stage(&format!("kernel {}", spec.kernel), n, || {
                spec.kernel_spec().unwrap().compute(&r).unwrap()
            });
            std::fs::write(cache, save::to_bytes(&out).unwrap()).unwrap();
            out.transition
        }
    };
    reset_peak();
    let mut marks: Vec<(String, Instant)> = Vec::new();
    let g = fit_gpcca(&r, t, &spec.estimators, &mut |s: &str| {
        marks.push((s.to_string(), Instant::now()))
    });
    let end = Instant::now();
    // The stages that ran are printed even when a later one failed (the last one's time is
    // up to the failure).
    for (k, (name, at)) in marks.iter().enumerate() {
        let next = marks.get(k + 1).map_or(end, |m| m.1);
        println!(
            "| {name} | {n} | {:.2} | |",
            next.duration_since(*at).as_secs_f64()
        );
    }
    let g = match g {
        Ok(g) => g,
        Err(e) => {
            println!("| failed: {e} | {n} | | |");
            return;
        }
    };
    let mb = cellfate::pipeline::peak_rss_mb().unwrap_or(f64::NAN);
    println!("| all estimator stages (peak) | {n} | | {mb:.0} |");
    if let Ok(s) = g.schur() {
        println!(
            "|   Schur: {} vectors, {} products, {} restarts, residual {:.1e} | | | |",
            s.m(),
            s.matvecs,
            s.restarts,
            s.residual
        );
        if std::env::var_os("SCALE_EIGS").is_some() {
            for (i, e) in s.eigenvalues.iter().enumerate() {
                println!("|   eigenvalue {i}: {:.15} {:+.3e}i | | | |", e.0, e.1);
            }
        }
    }
}

/// The absorption stages of the real chain, each timed apart: building `I − Q` and its
/// preconditioner, the fate probabilities' solve, the absorption times.
fn absorb(input: &str, cache: &str, term_cache: &str) {
    use cellfate::estimators::absorption::{compute_absorption_times, TransientSystem};
    use cellfate::estimators::Estimator;
    use cellfate::kernels::save;
    use cellfate::pipeline::{estimate::fit_gpcca, FateMapSpec};
    let t = save::from_bytes(&std::fs::read(cache).expect("run --chain first to cache the kernel"))
        .unwrap()
        .transition;
    let n = t.n_cells();
    let (terminal, names) = match std::fs::read_to_string(term_cache) {
        Ok(text) => {
            let mut lines = text.lines();
            let names: Vec<String> = lines
                .next()
                .unwrap()
                .split('\t')
                .map(String::from)
                .collect();
            let terminal: Vec<Option<usize>> = lines.map(|l| l.parse().ok()).collect();
            (terminal, names)
        }
        Err(_) => {
            let mut spec = FateMapSpec::default();
            spec.estimators.fates = false;
            let r = cellfate::io::H5adReader::open(std::path::Path::new(input)).unwrap();
            let g = fit_gpcca(&r, t.clone(), &spec.estimators, &mut |_: &str| {}).unwrap();
            let states = g.terminal_states().unwrap();
            let mut text = states.names.join("\t");
            for a in &states.assignment {
                text.push('\n');
                text.push_str(&a.map_or("-".to_string(), |j| j.to_string()));
            }
            std::fs::write(term_cache, text).unwrap();
            (states.assignment.clone(), states.names.clone())
        }
    };
    let mut opts = FateMapSpec::default().estimators.absorption;
    if let Some(size) = std::env::var("SCALE_AGGREGATE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.aggregate_size = size;
    }
    if let Some(r) = std::env::var("SCALE_RESTART")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.restart = r;
    }
    println!("| stage | cells | seconds | peak MB |");
    println!("| --- | --- | --- | --- |");
    let sys = stage("I − Q and its preconditioner", n, || {
        TransientSystem::new(&t, &terminal, &names, &opts).unwrap()
    });
    let b = stage("fate probabilities' solve (S)", n, || {
        sys.solve(&sys.s).unwrap()
    });
    let (fates, sys) = stage("fate probabilities (all)", n, || {
        cellfate::estimators::absorption::compute_fate_probabilities(&t, &terminal, &names, &opts)
            .unwrap()
    });
    let _ = b;
    stage("absorption times (means, the default)", n, || {
        compute_absorption_times(&sys, &fates, false, false).unwrap()
    });
    stage("absorption times (means and variances)", n, || {
        compute_absorption_times(&sys, &fates, true, false).unwrap()
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(k) = args.iter().position(|a| a == "--absorb") {
        let get = |i: usize| {
            args.get(k + i)
                .expect("--absorb FILE.h5ad CACHE.bin TERM.txt")
        };
        absorb(get(1), get(2), get(3));
        return;
    }
    if let Some(k) = args.iter().position(|a| a == "--chain") {
        let input = args.get(k + 1).expect("--chain FILE.h5ad CACHE.bin");
        let cache = args.get(k + 2).expect("--chain FILE.h5ad CACHE.bin");
        real_chain(input, cache);
        return;
    }
    let m50 = args.iter().any(|a| a == "--m50");
    let drivers = args.iter().any(|a| a == "--drivers");
    let states_only = args.iter().any(|a| a == "--states");
    let fates_only = args.iter().any(|a| a == "--fates");
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
        if fates_only {
            fates(&t, n);
            continue;
        }
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
        fates(&t, n);
    }
}

/// The fate probabilities of a synthetic chain, 3 and 10 lineages.
fn fates(t: &cellfate::kernels::TransitionMatrix, n: usize) {
    {
        let lineages: Vec<usize> = std::env::var("SCALE_LINEAGES")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| vec![3, 10]);
        for l in lineages {
            let (term, names) = terminal(n, l);
            stage(
                &format!("fate probabilities, {l} lineages (auto)"),
                n,
                || {
                    compute_fate_probabilities(t, &term, &names, &AbsorptionOptions::default())
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
                    || compute_fate_probabilities(t, &term, &names, &gm).unwrap(),
                );
            }
        }
    }
}
