//! The dynamical model's fit in the input's cell order against the breadth-first order of
//! [`cellfate::dynamics::FitGraph::new`], on the first genes of a processed `.h5ad` (layers
//! `Ms`, `Mu`, `obsp["connectivities"]`), one gene after another in this thread:
//!
//! `cargo run --release --example dynamical_order -- FILE.h5ad [GENES]` (default 4 genes).
//!
//! Prints both times and the largest relative difference of the fitted parameters
//! (BENCHMARKS.md, "Dynamical fit: cell order").
#![allow(clippy::print_stdout)]

use cellfate::dynamics::{fit_gene, DynamicsOptions, FitGraph};
use cellfate::io::H5adReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        return Err("usage: dynamical_order FILE.h5ad [GENES]".into());
    };
    let genes: usize = args.get(2).map_or(Ok(4), |x| x.parse())?;
    let r = H5adReader::open(std::path::Path::new(path))?;
    let (n, g, ms) = r.dense("layers/Ms")?;
    let (_, _, mu) = r.dense("layers/Mu")?;
    let w = cellfate::upstream::velocity::smoothing_graph(&r.obsp("connectivities")?);
    let opts = DynamicsOptions::default();
    let genes = genes.min(g);
    let mut fits = Vec::new();
    for reorder in [false, true] {
        let clock = std::time::Instant::now();
        let graph = FitGraph::with_order(&w, reorder);
        let prepared = clock.elapsed().as_secs_f64();
        let fitted: Vec<_> = (0..genes)
            .map(|j| {
                let u: Vec<f64> = (0..n).map(|i| mu[i * g + j]).collect();
                let s: Vec<f64> = (0..n).map(|i| ms[i * g + j]).collect();
                fit_gene(&u, &s, Some(&graph), &opts)
            })
            .collect();
        println!(
            "{n} cells, {genes} genes, {}: graph {prepared:.2} s, fits {:.2} s",
            if reorder {
                "breadth-first order"
            } else {
                "input order"
            },
            clock.elapsed().as_secs_f64() - prepared
        );
        fits.push(fitted);
    }
    let mut worst = 0.0f64;
    for (a, b) in fits[0].iter().zip(&fits[1]) {
        if let (Some(a), Some(b)) = (a, b) {
            for (x, y) in [(a.alpha, b.alpha), (a.gamma, b.gamma), (a.t_, b.t_)] {
                worst = worst.max((x - y).abs() / x.abs().max(y.abs()));
            }
        }
    }
    println!("largest relative difference of alpha, gamma, t_: {worst:.1e}");
    Ok(())
}
