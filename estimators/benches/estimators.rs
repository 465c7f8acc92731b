//! Schur (20 vectors, Krylov), GPCCA macrostates and fate probabilities on a synthetic
//! kNN-like chain (30 neighbours) with drift. `cargo bench -p cellfate-estimators`; set
//! `CELLFATE_BENCH_LARGE=1` to include 100k cells.
#![allow(missing_docs)]

use cellfate_estimators::absorption::{compute_fate_probabilities, AbsorptionOptions};
use cellfate_estimators::gpcca::{fit, Optimizer};
use cellfate_estimators::schur::{compute_schur, SchurMethod, SchurOptions};
use cellfate_kernels::TransitionMatrix;
use criterion::{criterion_group, criterion_main, Criterion};

fn sizes() -> Vec<usize> {
    if std::env::var("CELLFATE_BENCH_LARGE").is_ok() {
        vec![10_000, 100_000]
    } else {
        vec![10_000]
    }
}

fn chain(n: usize) -> TransitionMatrix {
    cellfate_kernels::testing::metastable_band_chain(n, 25)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("estimators");
    g.sample_size(10);
    for n in sizes() {
        let t = chain(n);
        let opts = SchurOptions {
            n_components: 20,
            method: SchurMethod::Krylov,
            ..Default::default()
        };
        g.bench_function(format!("schur20_{n}"), |b| {
            b.iter(|| compute_schur(&t, None, &opts).expect("schur"))
        });
        let schur = compute_schur(&t, None, &opts).expect("schur");
        for m in [5usize, 15] {
            if schur.splits_pair(m) || m > schur.m() {
                continue;
            }
            g.bench_function(format!("macrostates_m{m}_{n}"), |b| {
                b.iter(|| fit(&t, &schur, m, &Optimizer::default(), None).expect("gpcca"))
            });
        }
        for l in [3usize, 10] {
            // Terminal states: l blocks of 30 cells at the far end of the chain.
            let mut term = vec![None; n];
            for j in 0..l {
                for i in 0..30 {
                    term[n - 1 - j * 40 - i] = Some(j);
                }
            }
            let names: Vec<String> = (0..l).map(|j| format!("L{j}")).collect();
            g.bench_function(format!("fates_{l}lineages_{n}"), |b| {
                b.iter(|| {
                    compute_fate_probabilities(&t, &term, &names, &AbsorptionOptions::default())
                        .expect("fates")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
