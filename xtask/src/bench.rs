//! `cargo xtask bench NAME [-- ARGS...]`.
//!
//! Contract with bench programs: `NAME` is a `harness = false` bench of the
//! `virtio-sdk-tests` crate (`tests/benches/NAME.rs`). It prints its own table and
//! writes `target/bench/NAME.json` with `bench_report::Report::write`. This command runs
//! it, then reads the file back, validates it and prints the comparison table.
//! `cargo bench` passes `--bench` to the program (plus whatever follows `--` here), so
//! bench programs must tolerate that argument.

use std::fs;
use std::io;
use std::path::Path;

use bench_report::Report;

use crate::cmd;

/// The crate that owns the bench programs.
const BENCH_CRATE: &str = "virtio-sdk-tests";

/// Runs the bench named by the first argument; arguments after `--` go to the program.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let Some((name, rest)) = args.split_first() else {
        return Err(format!(
            "usage: cargo xtask bench NAME [-- ARGS...]\n{}",
            known()
        ));
    };
    // Benchmarks that boot guests live with their e2e suites; each writes target/bench/NAME.json itself.
    match name.as_str() {
        "vfio" => return crate::vfio_net_e2e::bench(root, rest),
        "vmm" => return crate::vmm_e2e::bench(root, rest),
        _ => {}
    }
    let extra = match rest.split_first() {
        None => &[][..],
        Some((dashes, extra)) if dashes == "--" => extra,
        Some(_) => return Err("arguments for the bench program go after `--`".into()),
    };
    let path = bench_report::report_path(name).map_err(|e| e.to_string())?;
    // A stale file from an earlier run must not pass for this run's results.
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove stale {}: {e}", path.display())),
    }

    let mut bench = cmd::cargo(&["bench", "-p", BENCH_CRATE, "--bench", name]);
    if !extra.is_empty() {
        bench.arg("--").args(extra);
    }
    cmd::run(&mut bench)?;

    let report = Report::read(name).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "bench `{name}` finished but did not write {} (it must call bench_report::Report::write)",
                path.display()
            )
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    report
        .check()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!();
    report.print_table();
    println!("(from {})", path.display());
    Ok(())
}

/// The bench programs present in `tests/benches/`, for the usage message.
fn known() -> String {
    let mut names: Vec<String> = fs::read_dir(Path::new("tests").join("benches"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let is_rs = path.extension().is_some_and(|x| x == "rs");
            is_rs.then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    if names.is_empty() {
        "no bench programs yet (tests/benches/*.rs)".into()
    } else {
        format!("bench programs: {}", names.join(", "))
    }
}
