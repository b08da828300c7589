//! `cargo xtask e2e vmm` and `cargo xtask bench vmm`: real Linux virtio drivers against our VMM (`mini-vmm`),
//! nested: an L1 Debian kernel under QEMU TCG (`-cpu EPYC`, so KVM works inside it through emulated SVM) runs
//! `mini-vmm`, which boots an L2 Debian kernel whose `virtio_net` drives our device model.
//!
//! 1. Builds `mini-vmm` and `net-check` (examples) statically (`-C target-feature=+crt-static`, host target).
//! 2. Builds the L2 image `target/guest/vmm-l2/`: busybox, the virtio-net module stack, `net-check`, `iperf3` with
//!    its libraries, and `/init` from `tests/e2e/vmm/l2-init.sh`.
//! 3. Builds the L1 image `target/guest/vmm-l1/`: busybox, `irqbypass kvm ccp kvm-amd tun`, `mini-vmm`,
//!    `net-check`, `iperf3`, QEMU 7.2 with its libraries and firmware (the reference VMM of the benchmark and the
//!    `--vmm qemu` runs), the L2 kernel and initramfs under `/l2/`, and `/init` from `tests/e2e/vmm/l1-init.sh`.
//! 4. Boots L1 once; its `/init` runs every cell (named on its kernel command line) as a fresh L2 boot with a tap
//!    `tap0` (10.0.0.1 in L1, 10.0.0.2 in L2), captures the L2 console to a file, and prints one result line per
//!    cell on the L1 console, which this program relays (`PASS vmm transport=T ring=R ...` or
//!    `FAIL vmm transport=T ring=R ... <reason>` followed by the L2 console). L1 consoles are kept in
//!    `target/e2e/vmm-l1-N.log`.
//! 5. Retries what the nested environment breaks, once per cell: QEMU TCG's emulation of SVM (what makes KVM work
//!    in L1) is not reliable under sustained traffic. With either VMM in L1 we have seen the L1 kernel die (per-CPU
//!    GS corrupted on the thread running the L2 vCPU, a silent L1 reset) and L2 end mid-transfer with no panic
//!    (a `TripleFault` under mini-vmm, a silent reset that QEMU's `-no-reboot` turns into exit status 0). So a
//!    cell during which L1 dies, or whose L2 ends or hangs without a result line and without a panic, prints
//!    `RETRY vmm ...` with the evidence and runs again in a fresh L1, at most [`MAX_RETRIES`] times. A
//!    failed check (a wrong feature bit, a corrupt or lost datagram, a failed reload, a panic) is never retried.
//!    The summary names the retried cells.
//!
//! Options: `--vmm qemu` runs the cells with QEMU 7.2 as the L2 VMM instead (microvm for mmio and pci, `pc` for
//! pci-legacy/pci-transitional, which need an I/O BAR), `--vmm both` each cell under both, one after the other;
//! `TRANSPORT` or `TRANSPORT/RING` arguments pick cells.
//! Environment: `VMM_L2_LOG=loglevel=7` replaces the L2 kernel's `quiet`; `VMM_WINDOW=N` sets net-check's window;
//! `VMM_SHOW_L2=1` shows the L2 console of passing cells too; `VMM_L1_ACCEL` and `VMM_L1_SMP` replace L1's
//! `-accel tcg` and `-smp 2` (for experiments: `tcg,thread=single` and `-smp 1` made cells several times slower).
//!
//! In each e2e cell the L2 `/init` checks: `virtio_net` probed on the expected transport (PCI device id, or a
//! virtio-mmio platform device), the negotiated `VERSION_1` (bit 32) and `RING_PACKED` (bit 34) from
//! `/sys/bus/virtio/devices/*/features`, ping to L1, `net-check stream` of 100,000 checksummed datagrams echoed by
//! L1 (each crosses the link both ways), and five `rmmod virtio_net; insmod` rounds with ping before and ping plus a
//! 2,000-datagram stream after. A cell passes only on `L2-RESULT PASS` and a VMM exit status of 0 (guest
//! power-off).
//!
//! The benchmark runs iperf3 TCP (5 s each way) through `mini-vmm` (pci, split and packed, `offload=on`) and
//! through QEMU's
//! `virtio-net-pci` (userspace, `vhost=off`, tap; `impl` `qemu`, and `qemu-no-offloads` with its checksum and
//! segmentation offloads off) with the same L2 kernel, in one L1 boot, and records throughput and the time from
//! starting the VMM to the L2 `/init` (polled by L1 every 50 ms) in `target/bench/vmm.json`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench_report::{Better, Report, OURS};

use crate::cmd::{self, cargo};
use crate::guest::{self, GuestImage, ImageSpec, INIT_PRELUDE};

/// The transports and the rings each supports (packed needs VIRTIO_F_VERSION_1, so modern transports only).
const CELLS: &[(&str, &str)] = &[
    ("mmio-legacy", "split"),
    ("mmio", "split"),
    ("mmio", "packed"),
    ("pci-legacy", "split"),
    ("pci-transitional", "split"),
    ("pci-transitional", "packed"),
    ("pci", "split"),
    ("pci", "packed"),
];

/// The benchmark cells: VMM, transport, ring. `qemu-nooff` is QEMU with the checksum and segmentation offloads
/// off (`csum=off,guest_csum=off,gso=off,host_tso4=off,...`), i.e. the feature set of `mini-vmm` without
/// `offload=on`; the `mini` cells run with `offload=on`.
const BENCH_CELLS: &[(&str, &str, &str)] = &[
    ("mini", "pci", "packed"),
    ("mini", "pci", "split"),
    ("qemu", "pci", "packed"),
    ("qemu", "pci", "split"),
    ("qemu-nooff", "pci", "packed"),
    ("qemu-nooff", "pci", "split"),
];

/// The L2 virtio-net stack of Debian's 6.1 kernel, in load order.
const L2_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_mmio",
    "failover",
    "net_failover",
    "virtio_net",
];

/// L1: KVM on emulated AMD SVM, and tun for the L2 link.
const L1_MODULES: &[&str] = &["irqbypass", "kvm", "ccp", "kvm-amd", "tun"];

/// Firmware the L1 QEMU may load (microvm's qboot; SeaBIOS and the Linux boot option ROMs for `pc`), at their
/// host paths (Debian's QEMU searches `/usr/share/qemu` and `/usr/share/seabios`).
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/seabios/bios.bin",
];

/// How many times one cell may be run again after the nested environment failed under it. Measured on
/// 2026-11-22: 7 environment failures in 21 first attempts of mini-vmm cells in stand-alone runs, and 5 in 13
/// attempts in the full CI run (where mmio/packed needed its 4th attempt); QEMU as the L2 VMM failed the same ways.
/// At about 1 in 3, five retries make a cell fail on the environment alone about 0.2% of the time.
const MAX_RETRIES: usize = 5;

/// L1 kernel options for its timer: a periodic LAPIC tick instead of one-shot TSC-deadline timers. Twice, in the
/// cell after an mmio/split cell, L1 went idle for good (its vCPUs halted, QEMU at 0% CPU, `sleep` in its `/init`
/// never returning): one lost one-shot timer interrupt stops every timer of a tickless kernel, whereas a periodic
/// tick re-arms itself.
const L1_TIMER: &str = "nohz=off highres=off lapic=notscdeadline";

/// Limit for one L2 cell inside L1 (boot, checks, transfer, reloads).
const CELL_TIMEOUT_S: u64 = 240;

/// What one run of L1 should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    E2e,
    Bench,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::E2e => "e2e",
            Mode::Bench => "bench",
        }
    }
}

fn host_triple() -> Result<String, String> {
    let out = cmd::output(Command::new("rustc").arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// Builds the static example binaries `bins` and returns their paths, in order.
fn build_static(root: &Path, bins: &[&str]) -> Result<Vec<PathBuf>, String> {
    let triple = host_triple()?;
    let mut args = vec![
        "build",
        "--release",
        "-p",
        "virtio-sdk-examples",
        "--target",
        &triple,
    ];
    for b in bins {
        args.push("--bin");
        args.push(b);
    }
    // With --target, RUSTFLAGS apply to the target only (not build scripts).
    cmd::run(cargo(&args).env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    Ok(bins
        .iter()
        .map(|b| root.join(format!("target/{triple}/release/{b}")))
        .collect())
}

/// Installs `iperf3` (and QEMU, cpio through [`guest::ensure_host_tools`]) when missing.
fn ensure_tools() -> Result<(), String> {
    guest::ensure_host_tools()?;
    if cmd::succeeds(Command::new("sh").args(["-c", "command -v iperf3"])) {
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "iperf3"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The absolute path of the program `name` on the host.
fn which(name: &str) -> Result<PathBuf, String> {
    let out = cmd::output(Command::new("sh").args(["-c", &format!("command -v {name}")]))?;
    let p = out.trim();
    if p.is_empty() {
        return Err(format!("{name} not found"));
    }
    Ok(PathBuf::from(p))
}

/// `program` at its host path plus every shared library `ldd` names (the dynamic loader included), each at its host
/// path, as image file entries.
fn with_libraries(program: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let mut files = vec![(program.to_path_buf(), program.display().to_string())];
    let out = cmd::output(Command::new("ldd").arg(program))?;
    for line in out.lines() {
        // `libx.so.1 => /lib/.../libx.so.1 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`; vdso has no path.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let real = fs::canonicalize(path).map_err(|e| format!("{path}: {e}"))?;
        files.push((real, path.to_owned()));
    }
    Ok(files)
}

/// Adds `entries` to `files`, skipping guest paths already present.
fn add_files(files: &mut Vec<(PathBuf, String)>, entries: Vec<(PathBuf, String)>) {
    for (src, dst) in entries {
        if !files.iter().any(|(_, d)| *d == dst) {
            files.push((src, dst));
        }
    }
}

fn read_script(root: &Path, name: &str) -> Result<String, String> {
    let path = root.join("tests/e2e/vmm").join(name);
    let body = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("{INIT_PRELUDE}{body}"))
}

/// Builds both images (`target/guest/{prefix}-l2`, `{prefix}-l1`) and returns L1's.
fn build_images(root: &Path, prefix: &str) -> Result<GuestImage, String> {
    let bins = build_static(root, &["mini-vmm", "net-check"])?;
    let mut tools = Vec::new();
    for (src, name) in bins.iter().zip(["mini-vmm", "net-check"]) {
        tools.push((src.clone(), format!("/bin/{name}")));
    }
    add_files(&mut tools, with_libraries(&which("iperf3")?)?);

    let l2 = guest::build(
        root,
        &ImageSpec {
            name: &format!("{prefix}-l2"),
            modules: L2_MODULES,
            files: tools.clone(),
            init: read_script(root, "l2-init.sh")?,
        },
    )?;

    let mut files = tools;
    files.push((l2.kernel.clone(), "/l2/vmlinuz".into()));
    files.push((l2.initrd.clone(), "/l2/initrd.gz".into()));
    let qemu = which("qemu-system-x86_64")?;
    add_files(&mut files, with_libraries(&qemu)?);
    for fw in QEMU_FIRMWARE {
        if let Ok(real) = fs::canonicalize(fw) {
            files.push((real, (*fw).to_owned()));
        }
    }
    guest::build(
        root,
        &ImageSpec {
            name: &format!("{prefix}-l1"),
            modules: L1_MODULES,
            files,
            init: read_script(root, "l1-init.sh")?,
        },
    )
}

/// What one L1 boot reported.
#[derive(Debug)]
struct L1Run {
    /// The `PASS vmm` / `FAIL vmm` / `BENCH vmm` lines.
    results: Vec<String>,
    /// Why L1 ended before `VMM-L1-DONE` (crash, timeout), with the end of its console; `None` if it finished.
    died: Option<String>,
}

/// Boots L1 with `cells` (`VMM:TRANSPORT:RING`), relays its result lines (and, for failures, the L2 console dumps)
/// to stdout, and returns the result lines. The whole L1 console goes to `log_path`.
fn boot_l1(
    image: &GuestImage,
    mode: Mode,
    cells: &[String],
    log_path: &Path,
) -> Result<L1Run, String> {
    // `VMM_L2_LOG=loglevel=7` (say) replaces the L2 kernel's `quiet` when a cell needs debugging.
    let l2_log = std::env::var("VMM_L2_LOG").unwrap_or_else(|_| "quiet".into());
    // `VMM_WINDOW=N`: net-check's window of unanswered datagrams (default 64).
    let window = std::env::var("VMM_WINDOW").unwrap_or_else(|_| "64".into());
    // `VMM_SHOW_L2=1`: the L2 console of passing cells is shown too (to compare VMMs).
    let show = u8::from(std::env::var("VMM_SHOW_L2").is_ok_and(|v| v == "1"));
    // `VMM_KVM_AMD=npt=0,...`: kvm-amd module parameters in L1.
    let kvm_amd = std::env::var("VMM_KVM_AMD").unwrap_or_default();
    let append = format!(
        "console=ttyS0 panic=-1 quiet {L1_TIMER} vmm_mode={} vmm_cells={} vmm_cell_timeout={CELL_TIMEOUT_S} \
         vmm_l2_log={l2_log} vmm_window={window} vmm_show={show} vmm_kvm_amd={kvm_amd}",
        mode.as_str(),
        cells.join(",")
    );
    let limit = Duration::from_secs(120 + CELL_TIMEOUT_S * u64::try_from(cells.len()).unwrap_or(1));
    // `VMM_L1_ACCEL=tcg,thread=single` (say) replaces L1's accelerator options.
    let accel = std::env::var("VMM_L1_ACCEL").unwrap_or_else(|_| "tcg".into());
    // `VMM_L1_SMP=N`: L1's vCPU count (default 2: mini-vmm's vCPU thread and its event loop each get one).
    let smp = std::env::var("VMM_L1_SMP").unwrap_or_else(|_| "2".into());
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        &accel,
        "-cpu",
        "EPYC",
        "-m",
        "2048",
        "-smp",
        &smp,
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd)
    .args(["-append", &append]);
    if let Some(dir) = log_path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut log = fs::File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let start = Instant::now();
    let mut results = Vec::new();
    let mut in_dump = false;
    let mut done = false;
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    // L1 prints a line per cell at least every cell timeout (plus the SIGTERM grace and its own slack); silence for
    // longer means L1 itself hangs (seen once: L1 idle, its `/init` never woke up again).
    let idle = Duration::from_secs(CELL_TIMEOUT_S + 150);
    let (_, timed_out) = guest::run_console_idle(qemu, limit, Some(idle), |line| {
        let _ = writeln!(log, "{line}");
        if tail.len() >= 30 {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
        if in_dump {
            println!("    {line}");
            in_dump = !line.starts_with("--- end L2 console");
        } else if line.starts_with("--- L2 console") {
            println!("    {line}");
            in_dump = true;
        } else if line.starts_with("PASS vmm")
            || line.starts_with("FAIL vmm")
            || line.starts_with("BENCH vmm")
        {
            println!("{line}    [{:.0} s]", start.elapsed().as_secs_f64());
            results.push(line.to_owned());
        } else if let Some(info) = line.strip_prefix("INFO vmm ") {
            println!("    {info}");
        } else if line.starts_with("VMM-L1") {
            println!("{line}");
            done |= line == "VMM-L1-DONE";
        } else if line.contains("Kernel panic") {
            println!("L1: {line}");
        }
    })?;
    println!(
        "L1 ran {:.1} s{}, console in {}",
        start.elapsed().as_secs_f64(),
        if timed_out {
            " (stopped: over its time limit, or its console silent for too long)"
        } else {
            ""
        },
        log_path.display()
    );
    let died = if timed_out {
        Some(format!(
            "L1 hung: over {limit:?} in all, or no console output for {idle:?}"
        ))
    } else {
        (!done).then(|| {
            let lines: Vec<String> = tail.into_iter().collect();
            format!(
                "L1 ended before finishing; end of its console ({}):\n{}",
                log_path.display(),
                lines.join("\n")
            )
        })
    };
    Ok(L1Run { results, died })
}

/// Whether result `line` is about plan entry `cell` (`VMM:TRANSPORT:RING`).
fn reports(line: &str, cell: &str) -> bool {
    let (v, t, r) = cell_parts(cell);
    field(line, "vmm") == Some(v)
        && field(line, "transport") == Some(t)
        && field(line, "ring") == Some(r)
}

/// Whether a cell's FAIL line shows the nested environment failing rather than a check: L2 ended or hung with no
/// result line and no kernel panic. Evidence that these are QEMU TCG's emulation of SVM and not our VMM:
/// - resets: with QEMU as the L2 VMM too (`--vmm both`), L2 reset silently mid-run (QEMU under `-no-reboot` exits
///   0); under mini-vmm they show as a `TripleFault` (exit status 1), with nothing on the L2 console;
/// - hangs: mini-vmm's vCPU dumps (every 60 s) of three hung L2s (CI run of 2026-11-22) show the L1 host's context in
///   the L2 vCPU: two different L2 boots (different KASLR: kernel rIP 0xffffffffa147e744 vs 0xffffffffa667e744) in
///   the same L1 boot reported the identical RIP 0xffffffffc072720c and stacks in the same vmalloc area
///   (0xffffd4654…), while the hang in the next L1 boot reported 0xffffffffc061420c (same page offset 0x20c): the
///   registers follow L1's layout, not L2's. A genuine hang of ours would recur on every retry and fail the cell.
fn environment_failure(line: &str) -> bool {
    line.starts_with("FAIL vmm")
        && (line.contains("and no L2 result") || line.contains("cell timeout"))
}

/// Runs `plan` in as few L1 boots as possible. A cell runs again (up to [`MAX_RETRIES`] times), in a fresh L1 after
/// the others, when the
/// nested environment failed under it: L1 died during it (a crash of the L1 kernel, an L1 timeout; the cells after
/// it then run in a fresh L1 too), or L2 ended without a result and without a panic ([`environment_failure`]). Every failure stays printed; returns the final result line of each
/// cell and the retried cells with why.
fn run_cells(
    image: &GuestImage,
    mode: Mode,
    plan: &[String],
    log_stem: &Path,
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut pending: Vec<String> = plan.to_vec();
    let mut all = Vec::new();
    let mut retried: Vec<String> = Vec::new();
    let mut boot = 0;
    let stem = log_stem
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("vmm-l1")
        .to_owned();
    while !pending.is_empty() {
        boot += 1;
        let log_path = log_stem.with_file_name(format!("{stem}-{boot}.log"));
        let run = boot_l1(image, mode, &pending, &log_path)?;
        let mut again = Vec::new();
        let mut unreached = Vec::new();
        let mut l1_death_seen = false;
        for cell in &pending {
            let line = run.results.iter().find(|l| reports(l, cell));
            let why = match (line, &run.died) {
                (Some(l), _) if environment_failure(l) => l.clone(),
                (Some(l), _) => {
                    all.push(l.clone());
                    continue;
                }
                // The first cell without a result is the one L1 died in; the later ones were never reached.
                (None, Some(died)) if !l1_death_seen => {
                    l1_death_seen = true;
                    format!("L1 died during this cell\n{died}")
                }
                (None, _) => {
                    unreached.push(cell.clone());
                    continue;
                }
            };
            let (v, t, r) = cell_parts(cell);
            let failures = 1 + retried.iter().filter(|c| *c == cell).count();
            if failures > MAX_RETRIES {
                let line = format!(
                    "FAIL vmm transport={t} ring={r} vmm={v} the nested environment failed {failures} times: {}",
                    why.lines().next().unwrap_or("")
                );
                println!("{line}");
                all.push(line);
            } else {
                println!(
                    "RETRY vmm transport={t} ring={r} vmm={v} (environment failure {failures} of at most {}; \
                     again in a fresh L1): {}",
                    MAX_RETRIES + 1,
                    why.replace('\n', "\n    ")
                );
                retried.push(cell.clone());
                again.push(cell.clone());
            }
        }
        // Unreached cells first (plan order), then the retries.
        unreached.extend(again);
        pending = unreached;
    }
    Ok((all, retried))
}

/// `VMM:TRANSPORT:RING` → its three parts.
fn cell_parts(cell: &str) -> (&str, &str, &str) {
    let mut it = cell.split(':');
    (
        it.next().unwrap_or("?"),
        it.next().unwrap_or("?"),
        it.next().unwrap_or("?"),
    )
}

/// Parses `--vmm mini|qemu|both` (`both`: each cell under mini-vmm, then under QEMU) and cell filters (`TRANSPORT` or `TRANSPORT/RING`).
fn parse_args(args: &[String]) -> Result<(String, Vec<String>), String> {
    let mut vmm = "mini".to_owned();
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--vmm" => {
                vmm = it.next().ok_or("--vmm needs mini, qemu or both")?.clone();
                if !["mini", "qemu", "both"].contains(&vmm.as_str()) {
                    return Err(format!("--vmm {vmm}: expected mini, qemu or both"));
                }
            }
            "--help" | "-h" => {
                return Err(
                    "usage: cargo xtask e2e vmm [--vmm mini|qemu|both] [TRANSPORT[/RING]...]"
                        .into(),
                )
            }
            other => only.push(other.to_owned()),
        }
    }
    Ok((vmm, only))
}

/// Runs the suite.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (vmm, only) = parse_args(args)?;
    let cells: Vec<(&str, &str)> = CELLS
        .iter()
        .copied()
        .filter(|(t, r)| only.is_empty() || only.iter().any(|o| o == t || *o == format!("{t}/{r}")))
        .collect();
    if cells.is_empty() {
        return Err(format!("no cell matches {only:?}"));
    }
    let start = Instant::now();
    ensure_tools()?;
    let image = build_images(root, "vmm")?;
    println!(
        "vmm: images built in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let vmms: &[&str] = match vmm.as_str() {
        "both" => &["mini", "qemu"],
        one => &[one][..],
    };
    let plan: Vec<String> = cells
        .iter()
        .flat_map(|(t, r)| vmms.iter().map(move |v| format!("{v}:{t}:{r}")))
        .collect();
    let (results, l1_deaths) =
        run_cells(&image, Mode::E2e, &plan, &root.join("target/e2e/vmm-l1"))?;
    let mut failed = Vec::new();
    for cell in &plan {
        if !results
            .iter()
            .any(|l| l.starts_with("PASS vmm") && reports(l, cell))
        {
            failed.push(cell.clone());
        }
    }
    println!(
        "vmm: {} cells, {} failed, total {:.1} s",
        plan.len(),
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if !l1_deaths.is_empty() {
        println!(
            "vmm: the nested environment failed (and the cell ran again in a fresh L1) during: {}",
            l1_deaths.join(", ")
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("vmm cells failed: {}", failed.join(", ")))
    }
}

/// The value of `key=` in a result line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Runs the benchmark.
pub(crate) fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("bench vmm takes no arguments (got `{a}`)"));
    }
    ensure_tools()?;
    let image = build_images(root, "vmm-bench")?;
    let plan: Vec<String> = BENCH_CELLS
        .iter()
        .map(|(v, t, r)| format!("{v}:{t}:{r}"))
        .collect();
    let (results, _) = run_cells(
        &image,
        Mode::Bench,
        &plan,
        &root.join("target/e2e/vmm-bench-l1"),
    )?;
    let mut report = Report::new("vmm");
    let mut missing = Vec::new();
    for (v, t, r) in BENCH_CELLS {
        let who = match *v {
            "mini" => OURS,
            "qemu" => "qemu",
            _ => "qemu-no-offloads",
        };
        let prefix = format!("BENCH vmm={v} transport={t} ring={r} ");
        let Some(line) = results.iter().find(|l| l.starts_with(&prefix)) else {
            missing.push(format!("{v}:{t}:{r}"));
            continue;
        };
        let num = |k: &str| field(line, k).and_then(|s| s.parse::<f64>().ok());
        let case = format!("{t}-{r}");
        if let Some(x) = num("l2_to_l1_mbps") {
            report.record(
                &format!("tcp L2->L1 {case}"),
                who,
                "Mbit/s",
                x,
                Better::Higher,
            );
        }
        if let Some(x) = num("l1_to_l2_mbps") {
            report.record(
                &format!("tcp L1->L2 {case}"),
                who,
                "Mbit/s",
                x,
                Better::Higher,
            );
        }
        if let Some(x) = num("boot_s") {
            report.record(&format!("boot-to-init {case}"), who, "s", x, Better::Lower);
        }
    }
    if report.records().is_empty() {
        return Err("no benchmark numbers came back".into());
    }
    report.print_table();
    let path = report.write().map_err(|e| e.to_string())?;
    println!("wrote {}", path.display());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "benchmark cells without numbers: {} (the others are in {})",
            missing.join(", "),
            path.display()
        ))
    }
}
