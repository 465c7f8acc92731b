//! Development check: scVelo's dynamical model on CellRank's pancreas against the stored
//! scVelo 0.3.4 fit (`../shared/reference/pancreas_3696/dynamical.h5ad`).
//! `cargo run --release --example dyn_parity --features h5ad [N_GENES]`
use cellfate::dynamics::{fit_gene, DynamicsOptions};
use cellfate::io::H5adReader;
use rayon::prelude::*;

fn main() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/pancreas_3696");
    let r = H5adReader::open(dir.join("reference.h5ad")).expect("reference");
    let (n, g, ms) = r.dense("layers/Ms").expect("Ms");
    let (_, _, mu) = r.dense("layers/Mu").expect("Mu");
    let w = cellfate::upstream::velocity::smoothing_graph(&r.obsp("connectivities").expect("conn"));
    let d = H5adReader::open(dir.join("dynamical.h5ad")).expect("dynamical");
    let col = |k: &str| d.column("var", k).expect(k).to_f64_vec().expect(k);
    let (ra, rb, rg, rt, rl) = (
        col("fit_alpha"),
        col("fit_beta"),
        col("fit_gamma"),
        col("fit_t_"),
        col("fit_likelihood"),
    );
    let opts = DynamicsOptions {
        assignment_mode: if std::env::var("EXPLICIT").is_ok() {
            cellfate::dynamics::AssignmentMode::Explicit
        } else {
            Default::default()
        },
        ..Default::default()
    };
    let take: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(g);
    let clock = std::time::Instant::now();
    let fits: Vec<_> = (0..take)
        .into_par_iter()
        .map(|j| {
            let u: Vec<f64> = (0..n).map(|i| mu[i * g + j]).collect();
            let s: Vec<f64> = (0..n).map(|i| ms[i * g + j]).collect();
            fit_gene(&u, &s, Some(&w), &opts)
        })
        .collect();
    eprintln!("{take} genes in {:.2} s", clock.elapsed().as_secs_f64());
    let mut within = [0usize; 5];
    let mut both = 0;
    for (j, f) in fits.iter().enumerate() {
        let Some(f) = f else { continue };
        if !ra[j].is_finite() {
            continue;
        }
        both += 1;
        let rel = |a: f64, b: f64| ((a - b) / b).abs();
        let e = [
            rel(f.alpha, ra[j]),
            rel(f.beta, rb[j]),
            rel(f.gamma, rg[j]),
            rel(f.t_, rt[j]),
            rel(f.likelihood, rl[j]),
        ];
        for (k, x) in e.iter().enumerate() {
            if *x < if k == 4 { 1e-3 } else { 1e-2 } {
                within[k] += 1;
            }
        }
        if j < 8 {
            eprintln!("gene {j}: alpha {:.5} vs {:.5}, beta {:.5} vs {:.5}, gamma {:.5} vs {:.5}, t_ {:.4} vs {:.4}, lik {:.5} vs {:.5}", f.alpha, ra[j], f.beta, rb[j], f.gamma, rg[j], f.t_, rt[j], f.likelihood, rl[j]);
        }
    }
    eprintln!(
        "both fitted {both}; within tolerance: alpha {} beta {} gamma {} t_ {} likelihood {}",
        within[0], within[1], within[2], within[3], within[4]
    );
}
