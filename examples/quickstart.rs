//! Quickstart: simulate a small dataset, write it to an .h5ad file, read it back lazily.
//!
//! `cargo run --example quickstart`

#![allow(clippy::print_stdout)]

use cellfate::io::{Element, H5adReader};
use cellfate::sim::{simulate, SimParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = simulate(&SimParams {
        n_cells: 500,
        ..SimParams::default()
    })?;
    let dir = std::env::temp_dir().join("cellfate-quickstart");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("sim.h5ad");
    cellfate::io::write_new(&path, &sim.to_elements())?;

    let r = H5adReader::open(&path)?;
    let time = r.obs_f64("true_time")?;
    let Element::Categorical(fates) = r.column("obs", "true_fate")? else {
        return Err("true_fate should be categorical".into());
    };
    println!(
        "{} cells x {} genes; mean true time {:.3}; fates {:?}",
        r.n_obs()?,
        r.n_vars()?,
        time.iter().sum::<f64>() / time.len() as f64,
        fates.categories.labels()
    );
    Ok(())
}
