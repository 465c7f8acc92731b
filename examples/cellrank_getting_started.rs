//! CellRank 2's "getting started" notebook, step by step, on the pancreas reference
//! (`../shared/reference/pancreas_3696/reference.h5ad`: scVelo's processed pancreas plus what
//! CellRank 2.3.3 computed from it). Prints the same terminal states as CellRank and checks
//! them against the reference's record (`uns["cellrank_run"]`); exits non-zero otherwise.
//!
//! `cargo run --release --example cellrank_getting_started [-- REFERENCE.h5ad]`
//!
//! | CellRank                                                   | here                         |
//! |------------------------------------------------------------|------------------------------|
//! | `vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()` | `VelocityParams::default().compute(&adata)` |
//! | `ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()` | `ConnectivityParams` |
//! | `combined_kernel = 0.8 * vk + 0.2 * ck`                    | `0.8 * vk + 0.2 * ck`        |
//! | `g = cr.estimators.GPCCA(combined_kernel)`                 | `Gpcca::new(t)`              |
//! | `g.compute_schur(n_components=20)`                         | `g.compute_schur(..)`        |
//! | `g.compute_macrostates(n_states=8, cluster_key="clusters")` | `g.compute_macrostates(..)`  |
//! | `g.predict_terminal_states(method="stability")`            | `g.predict_terminal_states(..)` |
//! | `g.compute_fate_probabilities()`                           | `g.compute_fate_probabilities(..)` |
//! | `g.compute_lineage_drivers(cluster_key="clusters")`        | `g.compute_lineage_drivers(..)` |

#![allow(clippy::print_stdout)]

use cellfate::estimator_io::read_clusters;
use cellfate::estimators::gpcca::Optimizer;
use cellfate::estimators::schur::SchurOptions;
use cellfate::estimators::states::TerminalMethod;
use cellfate::estimators::{
    drivers::Expression, DriverOptions, Estimator, Gpcca, MacrostatesOptions, NStates,
    TerminalOptions,
};
use cellfate::io::{Element, H5adReader};
use cellfate::kernels::{ConnectivityParams, Kernel, VelocityParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1);
    let path = path
        .as_deref()
        .unwrap_or("../shared/reference/pancreas_3696/reference.h5ad");
    let adata = H5adReader::open(path)?;
    println!(
        "{path}: {} cells x {} genes",
        adata.n_obs()?,
        adata.n_vars()?
    );

    // Kernels.
    let vk = VelocityParams::default();
    let ck = ConnectivityParams::default();
    let combined = (0.8 * vk + 0.2 * ck).compute(&adata)?;
    println!("combined kernel: {}", combined.effective.to_json());

    // The GPCCA estimator, with CellRank's optimiser (Nelder-Mead) for parity.
    let mut g = Gpcca::new(combined.transition);
    let schur = g.compute_schur(&SchurOptions {
        n_components: 20,
        ..Default::default()
    })?;
    println!(
        "Schur: {} vectors ({}), residual {:.1e}",
        schur.m(),
        schur.method,
        schur.residual
    );
    let clusters = read_clusters(&adata, "clusters")?; // an error if obs["clusters"] is missing
    let ms = g.compute_macrostates(
        NStates::Fixed(8),
        &MacrostatesOptions {
            optimizer: Optimizer::NelderMead,
            ..Default::default()
        },
        Some(clusters.reference()),
    )?;
    println!("macrostates: {}", ms.states.names.join(", "));
    let terminal = g
        .predict_terminal_states(
            &TerminalMethod::Stability { threshold: 0.96 },
            &TerminalOptions::default(),
        )?
        .names
        .clone();
    println!("terminal states: {}", terminal.join(", "));
    let fates = g.compute_fate_probabilities(&Default::default())?;
    println!(
        "fate probabilities: rows sum to 1 within {:.1e} (backward error {:.1e})",
        fates.row_sum_error, fates.residual
    );
    let genes = adata.var_names()?;
    // X, or the smoothed spliced counts where the file keeps no X (the reference files).
    let x = adata.csr(if adata.exists("X") { "X" } else { "layers/Ms" })?;
    let drivers = g.compute_lineage_drivers(&Expression::Sparse(&x), &DriverOptions::default())?;
    for (j, lineage) in drivers.lineages.iter().enumerate() {
        let top: Vec<&str> = drivers.ranking(j)[..8]
            .iter()
            .map(|&i| genes[i].as_str())
            .collect();
        println!("top {lineage} drivers: {}", top.join(", "));
    }

    // What CellRank 2.3.3 found on the same file.
    if let Ok(Element::Str(run)) = adata.read("uns/cellrank_run") {
        let run: serde_json::Value = serde_json::from_str(&run)?;
        let want: Vec<String> = run["notes"]["gpcca_terminal_states"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let (mut got, mut want) = (terminal.clone(), want);
        got.sort();
        want.sort();
        println!("CellRank 2.3.3 terminal states: {}", want.join(", "));
        if got != want {
            return Err(
                format!("terminal states differ from CellRank's: {got:?} vs {want:?}").into(),
            );
        }
    }
    Ok(())
}
