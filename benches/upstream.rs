//! Preprocessing stages on the built-in simulation (2,000 genes, 3 fates): the whole
//! in-memory `preprocess` (normalise, HVGs, PCA, kNN, connectivities, moments, stochastic
//! velocity) and its heavy stages alone. `cargo bench --bench upstream`; set
//! `CELLFATE_BENCH_LARGE=1` to add 100k cells. Peak memory per stage is reported by
//! `cellfate preprocess -v` (see BENCHMARKS.md), not here.
#![allow(missing_docs)]

use cellfate::upstream::{self, velocity, RawCounts, UpstreamSpec};
use criterion::{criterion_group, criterion_main, Criterion};

fn sizes() -> Vec<usize> {
    if std::env::var("CELLFATE_BENCH_LARGE").is_ok() {
        vec![10_000, 100_000]
    } else {
        vec![10_000]
    }
}

fn counts(n: usize) -> RawCounts {
    let sim = cellfate::sim::simulate(&cellfate::sim::SimParams {
        n_cells: n,
        n_genes: 2000,
        ..Default::default()
    })
    .expect("simulate");
    let spliced = sim.spliced.to_csr().expect("spliced");
    RawCounts {
        unspliced: sim.unspliced.to_csr().expect("unspliced"),
        x: None,
        float64: Default::default(),
        spliced,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream");
    g.sample_size(10);
    let spec = UpstreamSpec::default();
    for n in sizes() {
        let raw = counts(n);
        g.bench_function(format!("preprocess_{n}"), |b| {
            b.iter(|| upstream::preprocess(raw.clone(), &spec, "bench").expect("preprocess"))
        });
        let p = upstream::preprocess(raw, &spec, "bench").expect("preprocess");
        let cols: Vec<usize> = (0..p.x.ncols()).filter(|&j| p.highly_variable[j]).collect();
        let rows: Vec<usize> = (0..n).collect();
        let hvg = p.x.submatrix(&rows, &cols);
        g.bench_function(format!("pca30_{n}"), |b| {
            b.iter(|| upstream::pca::pca(&hvg, 30, 0))
        });
        if n <= upstream::KNN_EXACT_MAX_CELLS {
            g.bench_function(format!("knn_exact_{n}"), |b| {
                b.iter(|| upstream::knn_exact(&p.pca, 29))
            });
        }
        g.bench_function(format!("knn_descent_{n}"), |b| {
            b.iter(|| upstream::ann::knn_descent(&p.pca, 29, 0, 30))
        });
        let w = velocity::smoothing_graph(&p.connectivities);
        let all: Vec<usize> = (0..p.spliced.ncols()).collect();
        g.bench_function(format!("moments_{n}"), |b| {
            b.iter(|| {
                (
                    velocity::smooth_dense(&w, &p.spliced, &all, &|_, _, x| x),
                    velocity::smooth_dense(&w, &p.unspliced, &all, &|_, _, x| x),
                )
            })
        });
        let second = |idx: &[usize]| velocity::second_moments(&w, &p.spliced, &p.unspliced, idx);
        g.bench_function(format!("velocity_stochastic_{n}"), |b| {
            b.iter(|| {
                velocity::fit_velocity(
                    &p.ms,
                    &p.mu,
                    n,
                    all.len(),
                    Some(&p.highly_variable),
                    velocity::VelocityMode::Stochastic,
                    Some(&second),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
