//! `reward_lens_rs._native`: the reward-lens library as a Python extension module. Each
//! function is a thin shell over the library call the command makes; the Python package
//! (`reward_lens_rs/__init__.py`) re-exports them with the error classes and the progress bar.

use pyo3::prelude::*;

mod convert;
mod errors;
mod instruments;
mod model;
mod progress;
mod workflows;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Cache>()?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(model::_bench_score, m)?)?;
    for f in [
        wrap_pyfunction!(instruments::example_pairs, m)?,
        wrap_pyfunction!(instruments::lens, m)?,
        wrap_pyfunction!(instruments::attribute, m)?,
        wrap_pyfunction!(instruments::patch, m)?,
        wrap_pyfunction!(instruments::atp, m)?,
        wrap_pyfunction!(instruments::path_patch, m)?,
        wrap_pyfunction!(instruments::faithfulness, m)?,
        wrap_pyfunction!(instruments::concepts, m)?,
        wrap_pyfunction!(instruments::conflict, m)?,
        wrap_pyfunction!(instruments::compare, m)?,
        wrap_pyfunction!(instruments::probe, m)?,
        wrap_pyfunction!(instruments::diagnose, m)?,
        wrap_pyfunction!(instruments::eval, m)?,
        wrap_pyfunction!(workflows::sae_collect, m)?,
        wrap_pyfunction!(workflows::sae_train, m)?,
        wrap_pyfunction!(workflows::sae_features, m)?,
        wrap_pyfunction!(workflows::sae_decompose, m)?,
        wrap_pyfunction!(workflows::organism, m)?,
        wrap_pyfunction!(workflows::cart_discover, m)?,
        wrap_pyfunction!(workflows::cart_oracle, m)?,
        wrap_pyfunction!(workflows::cart_vulnerability, m)?,
        wrap_pyfunction!(workflows::cart_bound, m)?,
        wrap_pyfunction!(workflows::cart_train, m)?,
        wrap_pyfunction!(workflows::cart_table, m)?,
        wrap_pyfunction!(workflows::audit, m)?,
        wrap_pyfunction!(workflows::cli, m)?,
        wrap_pyfunction!(workflows::merge, m)?,
        wrap_pyfunction!(workflows::shard_status, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
