//! Placeholder (being written).

use std::path::Path;

/// Runs the suite.
pub(crate) fn run(_root: &Path, _args: &[String]) -> Result<(), String> {
    Err("vfio_net_e2e: not implemented yet".into())
}

/// Runs the benchmark.
#[allow(dead_code)]
pub(crate) fn bench(_root: &Path, _args: &[String]) -> Result<(), String> {
    Err("vfio_net_e2e: benchmark not implemented yet".into())
}
