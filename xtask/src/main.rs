//! Project automation for virtio-sdk, run as `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`).
//!
//! - `cargo xtask ci [STEP...]`: the full check suite (see [`ci`]); with step names, only
//!   those steps.
//! - `cargo xtask bench NAME [-- ARGS...]`: runs `cargo bench -p virtio-sdk-tests --bench
//!   NAME`, then reads `target/bench/NAME.json` and prints the comparison table.
//! - `cargo xtask e2e SUITE`: end-to-end suites ([`e2e`]); `vfio-smoke` boots QEMU TCG guests.
//! - `cargo xtask guest-image`: builds the base Linux guest image under `target/guest/` ([`guest`]).

mod bench;
mod ci;
mod cmd;
mod e2e;
mod elf;
mod guest;
mod guest_e2e;
mod vfio_e2e;
mod vfio_net_e2e;
mod vmm_e2e;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [STEP...]             run the CI suite (all steps, or only the named ones);
                           `cargo xtask ci --list` lists the steps
  bench NAME [-- ARGS...]  run `cargo bench -p virtio-sdk-tests --bench NAME` (ring,
                           net), then print the table from target/bench/NAME.json;
                           `bench vfio` and `bench vmm` boot guests (see e2e --list)
  e2e SUITE [CELL...]      run an end-to-end suite (`cargo xtask e2e --list`);
                           `e2e vfio-smoke`: our PciTransport over VfioAccess drives
                           QEMU's virtio-net-pci from a TCG guest (intel-iommu,
                           vfio-pci), frames echoed by a UDP peer; cells split,
                           split+event_idx, packed, packed+event_idx; `e2e vfio`,
                           `e2e vmm`, `e2e guest`: see `cargo xtask e2e --list`
  guest-image              fetch the Debian kernel + busybox-static (apt-get download,
                           cached in target/guest/cache) and build target/guest/base/
                           {vmlinuz,initrd.gz} with the VFIO modules
  help                     this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    if let Err(e) = std::env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let result = match command.as_str() {
        "ci" => ci::run(&root, rest),
        "bench" => bench::run(&root, rest),
        "e2e" => e2e::run(&root, rest),
        "guest-image" => guest::run(&root, rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {command}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root: the parent of this crate's directory.
fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
