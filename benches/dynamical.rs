//! The dynamical model's per-gene fit (`recover_dynamics`) on CellRank's processed pancreas
//! (`../shared/reference/pancreas_3696/reference.h5ad`: Ms, Mu, connectivities), the first 50
//! genes in one thread: `cargo bench --bench dynamical`. Skipped with a message when the
//! shared folder is missing. The whole command, reading and writing included, is timed
//! against scVelo in BENCHMARKS.md.
#![allow(missing_docs, clippy::print_stderr)]

use cellfate::io::H5adReader;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/pancreas_3696/reference.h5ad");
    let Ok(r) = H5adReader::open(&path) else {
        eprintln!("skipped: {} not found", path.display());
        return;
    };
    let (n, g, ms) = r.dense("layers/Ms").expect("Ms");
    let (_, _, mu) = r.dense("layers/Mu").expect("Mu");
    let w = cellfate::dynamics::FitGraph::new(&cellfate::upstream::velocity::smoothing_graph(
        &r.obsp("connectivities").expect("graph"),
    ));
    let opts = cellfate::dynamics::DynamicsOptions::default();
    let genes: Vec<(Vec<f64>, Vec<f64>)> = (0..50.min(g))
        .map(|j| {
            (
                (0..n).map(|i| mu[i * g + j]).collect(),
                (0..n).map(|i| ms[i * g + j]).collect(),
            )
        })
        .collect();
    let mut group = c.benchmark_group("dynamical");
    group.sample_size(10);
    group.bench_function("fit_50_genes_pancreas", |b| {
        b.iter(|| {
            genes
                .iter()
                .filter_map(|(u, s)| cellfate::dynamics::fit_gene(u, s, Some(&w), &opts))
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
