//! # cellfate-py
//!
//! The Python package's native module, `cellfate._core`: conversions between Python objects
//! (AnnData slots, NumPy arrays, SciPy CSR parts, JSON option dictionaries) and the library's
//! types, and nothing else — every computation is the library's (`cellfate`,
//! `cellfate-kernels`, `cellfate-estimators`), the same code the CLI runs. Stages release the
//! GIL while they compute. The Python side (`python/cellfate/`) gives it CellRank's API.

mod convert;
mod errors;
mod estimator;
mod figures;
mod kernel;
mod perturb;
mod run;
mod slots;
mod source;
mod upstream;
mod vectorfield;
mod velocity;

use pyo3::prelude::*;

/// The native part of the `cellfate` Python package.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<kernel::PyKernel>()?;
    m.add_class::<estimator::PyGpcca>()?;
    m.add_class::<estimator::PyCflare>()?;
    m.add_function(wrap_pyfunction!(kernel::compute_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::kernel_sum, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::kernel_product, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::kernel_from_csr, m)?)?;
    m.add_function(wrap_pyfunction!(
        velocity::velocity_graph_and_confidence,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(velocity::latent_time, m)?)?;
    m.add_function(wrap_pyfunction!(upstream::filter_and_normalize, m)?)?;
    m.add_function(wrap_pyfunction!(upstream::neighbors, m)?)?;
    m.add_function(wrap_pyfunction!(upstream::moments, m)?)?;
    m.add_function(wrap_pyfunction!(upstream::umap, m)?)?;
    m.add_function(wrap_pyfunction!(upstream::velocity, m)?)?;
    m.add_function(wrap_pyfunction!(upstream::labeling_dynamics, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::random_control, m)?)?;
    m.add_function(wrap_pyfunction!(vectorfield::vector_field, m)?)?;
    m.add_function(wrap_pyfunction!(vectorfield::project, m)?)?;
    m.add_function(wrap_pyfunction!(vectorfield::topography, m)?)?;
    m.add_function(wrap_pyfunction!(vectorfield::ddhodge, m)?)?;
    m.add_function(wrap_pyfunction!(vectorfield::ddhodge_transitions, m)?)?;
    m.add_function(wrap_pyfunction!(vectorfield::fate, m)?)?;
    m.add_function(wrap_pyfunction!(perturb::perturb, m)?)?;
    m.add_function(wrap_pyfunction!(figures::figures, m)?)?;
    m.add_function(wrap_pyfunction!(figures::html_report, m)?)?;
    m.add_function(wrap_pyfunction!(figures::write_file, m)?)?;
    Ok(())
}
