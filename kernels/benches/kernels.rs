//! Velocity kernel and the 0.8/0.2 kernel sum on synthetic kNN-like data
//! (30 neighbours, 1,000 genes). `cargo bench -p cellfate-kernels`; set
//! `CELLFATE_BENCH_LARGE=1` to include 100k cells.
#![allow(missing_docs)]

use cellfate_kernels::testing::chain_cells;
use cellfate_kernels::{ConnectivityParams, Kernel, KernelSpec, VelocityParams};
use criterion::{criterion_group, criterion_main, Criterion};

fn sizes() -> Vec<usize> {
    if std::env::var("CELLFATE_BENCH_LARGE").is_ok() {
        vec![10_000, 100_000]
    } else {
        vec![10_000]
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10);
    for n in sizes() {
        let cells = chain_cells(n, 1000, 30, 1);
        let vk = VelocityParams::default();
        g.bench_function(format!("velocity_{n}"), |b| {
            b.iter(|| vk.compute(&cells).expect("vk"))
        });
        let sum: KernelSpec = 0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default();
        g.bench_function(format!("sum_0.8vk_0.2ck_{n}"), |b| {
            b.iter(|| sum.compute(&cells).expect("sum"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
