//! Quickstart: read a processed `.h5ad`, compose `0.8 * velocity + 0.2 * connectivity`, save the
//! kernel and reload it, then GPCCA: macrostates, terminal states, fate probabilities, drivers.
//!
//! `cargo run --release --example quickstart [-- FILE.h5ad]` (default: the pancreas reference,
//! `../shared/reference/pancreas_3696/reference.h5ad`; any file with `layers["Ms"]`,
//! `layers["velocity"]` and `obsp["connectivities"]` works).

#![allow(clippy::print_stdout)]

use cellfate::estimator_io::read_cluster_key;
use cellfate::estimators::{drivers::Expression, Estimator, Gpcca, NStates};
use cellfate::io::H5adReader;
use cellfate::kernels::{save, ConnectivityParams, Kernel, VelocityParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1);
    let path = path
        .as_deref()
        .unwrap_or("../shared/reference/pancreas_3696/reference.h5ad");
    let cells = H5adReader::open(path)?; // lazy: each slot is read when a kernel needs it
    let kernel = 0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default();
    let computed = kernel.compute(&cells)?;
    let bytes = save::to_bytes(&computed)?; // versioned bincode: matrix + effective spec
    let reloaded = save::from_bytes(&bytes)?;
    assert_eq!(reloaded.transition, computed.transition);

    let mut g = Gpcca::new(reloaded.transition);
    g.compute_schur(&Default::default())?;
    // Names from obs["clusters"] when the file has it (a `Some("key")` must exist).
    let clusters = read_cluster_key(&cells, None)?;
    let opts = Default::default();
    g.compute_macrostates(
        NStates::Fixed(8),
        &opts,
        clusters.as_ref().map(|c| c.reference()),
    )?;
    let terminal = g.predict_terminal_states(&Default::default(), &Default::default())?;
    println!("terminal states: {}", terminal.names.join(", "));
    let fates = g.compute_fate_probabilities(&Default::default())?;
    println!(
        "fate probabilities: {} cells x {} lineages",
        cells.n_obs()?,
        fates.n_lineages()
    );
    let genes = cells.var_names()?;
    // X, or the smoothed spliced counts where the file keeps no X (the reference files).
    let x = cells.csr(if cells.exists("X") { "X" } else { "layers/Ms" })?;
    let drivers = g.compute_lineage_drivers(&Expression::Sparse(&x), &Default::default())?;
    for (j, lineage) in drivers.lineages.iter().enumerate() {
        let top: Vec<&str> = drivers.ranking(j)[..5]
            .iter()
            .map(|&i| genes[i].as_str())
            .collect();
        println!("{lineage} drivers: {}", top.join(", "));
    }
    Ok(())
}
