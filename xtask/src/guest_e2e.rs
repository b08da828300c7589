//! `cargo xtask e2e guest`: the bare-metal guest kernel (`examples/guest-kernel`, the SDK's `no_std` driver crates on
//! an identity map) drives a virtio-net device, sends 64 frames with sequence numbers and checksums, and checks the
//! echoes. One line per cell:
//!
//! - **qemu** (TCG): QEMU's own devices. `-M microvm` with `virtio-net-device` (virtio-mmio, modern and legacy) and
//!   `-M q35` with `virtio-net-pci` (modern with `disable-legacy=on`, legacy with `disable-modern=on`, transitional
//!   driven through its modern interface), `packed=on` and off. Frames leave through a UDP socket netdev to a thread of this process that echoes every datagram.
//!   QEMU's `-kernel` boots the image through its PVH note; `isa-debug-exit` at 0xf4 ends the run.
//! - **mini-vmm** (`/dev/kvm`): `mini-vmm --kernel guest-kernel --net echo,transport=T,ring=R --console stdout`, our
//!   own device models on MMIO and PCI (modern, legacy, transitional) with the in-memory echo backend; the image
//!   starts at its 64-bit ELF entry and runs in ring 3 (see `examples/guest-kernel/src/boot.rs`).
//!
//! A cell passes when the guest prints `PASS guest transport=T ring=R features=0x...`, the transport and ring are the
//! ones the cell asked for (and agree with the negotiated feature bits), and the VMM exits with 33 (the guest wrote
//! 0x10 to the exit port). Anything else prints `FAIL ...` and the serial log. `cargo xtask e2e guest CELL...` runs
//! the cells whose names contain one of the arguments.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::cmd::{self, cargo};

/// Per-run limit (a passing run takes well under a second).
const TIMEOUT: Duration = Duration::from_secs(40);

/// Exit status of the VMM after the guest wrote 0x10 to the exit port (`(0x10 << 1) | 1`).
const EXIT_PASS: i32 = 33;

/// How a cell runs the guest.
#[derive(Debug, Clone, Copy)]
enum Vmm {
    /// QEMU TCG: machine, `-device` line (without `netdev=`), extra arguments.
    Qemu {
        machine: &'static str,
        device: &'static str,
        extra: &'static [&'static str],
    },
    /// mini-vmm on /dev/kvm with this `--net echo,transport=...` value.
    MiniVmm { transport: &'static str },
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
struct Cell {
    /// The cell's label on its PASS/FAIL line (after `PASS guest `).
    label: &'static str,
    vmm: Vmm,
    /// The transport the guest must report.
    transport: &'static str,
    /// The ring format the guest must report.
    ring: &'static str,
}

const MICROVM_MODERN: &[&str] = &["-global", "virtio-mmio.force-legacy=false"];

/// The matrix, QEMU cells first (they need no KVM).
const CELLS: &[Cell] = &[
    Cell {
        label: "vmm=qemu machine=microvm device=mmio ring=split",
        vmm: Vmm::Qemu {
            machine: "microvm",
            device: "virtio-net-device,packed=off",
            extra: MICROVM_MODERN,
        },
        transport: "mmio",
        ring: "split",
    },
    Cell {
        label: "vmm=qemu machine=microvm device=mmio ring=packed",
        vmm: Vmm::Qemu {
            machine: "microvm",
            device: "virtio-net-device,packed=on",
            extra: MICROVM_MODERN,
        },
        transport: "mmio",
        ring: "packed",
    },
    Cell {
        label: "vmm=qemu machine=microvm device=mmio-legacy ring=split",
        vmm: Vmm::Qemu {
            machine: "microvm",
            device: "virtio-net-device",
            extra: &[],
        },
        transport: "mmio-legacy",
        ring: "split",
    },
    Cell {
        label: "vmm=qemu machine=q35 device=modern ring=split",
        vmm: Vmm::Qemu {
            machine: "q35",
            device: "virtio-net-pci,disable-legacy=on,packed=off,romfile=",
            extra: &[],
        },
        transport: "pci",
        ring: "split",
    },
    Cell {
        label: "vmm=qemu machine=q35 device=modern ring=packed",
        vmm: Vmm::Qemu {
            machine: "q35",
            device: "virtio-net-pci,disable-legacy=on,packed=on,romfile=",
            extra: &[],
        },
        transport: "pci",
        ring: "packed",
    },
    Cell {
        label: "vmm=qemu machine=q35 device=legacy ring=split",
        vmm: Vmm::Qemu {
            machine: "q35",
            device: "virtio-net-pci,disable-modern=on,romfile=",
            extra: &[],
        },
        transport: "pci-legacy",
        ring: "split",
    },
    Cell {
        label: "vmm=qemu machine=q35 device=transitional ring=split",
        vmm: Vmm::Qemu {
            machine: "q35",
            device: "virtio-net-pci,disable-legacy=off,disable-modern=off,romfile=",
            extra: &[],
        },
        // A transitional device offers both interfaces; the driver takes the modern one (§4.1.5.1.1.1).
        transport: "pci",
        ring: "split",
    },
    Cell {
        label: "vmm=mini-vmm transport=mmio ring=split",
        vmm: Vmm::MiniVmm { transport: "mmio" },
        transport: "mmio",
        ring: "split",
    },
    Cell {
        label: "vmm=mini-vmm transport=mmio ring=packed",
        vmm: Vmm::MiniVmm { transport: "mmio" },
        transport: "mmio",
        ring: "packed",
    },
    Cell {
        label: "vmm=mini-vmm transport=mmio-legacy ring=split",
        vmm: Vmm::MiniVmm {
            transport: "mmio-legacy",
        },
        transport: "mmio-legacy",
        ring: "split",
    },
    Cell {
        label: "vmm=mini-vmm transport=pci ring=split",
        vmm: Vmm::MiniVmm { transport: "pci" },
        transport: "pci",
        ring: "split",
    },
    Cell {
        label: "vmm=mini-vmm transport=pci ring=packed",
        vmm: Vmm::MiniVmm { transport: "pci" },
        transport: "pci",
        ring: "packed",
    },
    Cell {
        label: "vmm=mini-vmm transport=pci-legacy ring=split",
        vmm: Vmm::MiniVmm {
            transport: "pci-legacy",
        },
        transport: "pci-legacy",
        ring: "split",
    },
    Cell {
        label: "vmm=mini-vmm transport=pci-transitional ring=split",
        vmm: Vmm::MiniVmm {
            transport: "pci-transitional",
        },
        transport: "pci",
        ring: "split",
    },
];

/// Names of the feature bits the guest may negotiate (virtio 1.3 §5.1.3 and §6).
const FEATURE_NAMES: &[(u32, &str)] = &[
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (2, "CTRL_GUEST_OFFLOADS"),
    (3, "MTU"),
    (5, "MAC"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (9, "GUEST_ECN"),
    (10, "GUEST_UFO"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (13, "HOST_ECN"),
    (14, "HOST_UFO"),
    (15, "MRG_RXBUF"),
    (16, "STATUS"),
    (17, "CTRL_VQ"),
    (18, "CTRL_RX"),
    (19, "CTRL_VLAN"),
    (20, "CTRL_RX_EXTRA"),
    (21, "GUEST_ANNOUNCE"),
    (22, "MQ"),
    (23, "CTRL_MAC_ADDR"),
    (24, "NOTIFY_ON_EMPTY"),
    (27, "ANY_LAYOUT"),
    (28, "INDIRECT_DESC"),
    (29, "EVENT_IDX"),
    (32, "VERSION_1"),
    (33, "ACCESS_PLATFORM"),
    (34, "RING_PACKED"),
    (35, "IN_ORDER"),
    (36, "ORDER_PLATFORM"),
    (37, "SR_IOV"),
    (38, "NOTIFICATION_DATA"),
    (63, "SPEED_DUPLEX"),
];

/// `CSUM|MAC|...` for a feature word.
fn feature_names(bits: u64) -> String {
    let mut names = Vec::new();
    let mut rest = bits;
    for (bit, name) in FEATURE_NAMES {
        if bits & (1u64 << bit) != 0 {
            names.push((*name).to_owned());
            rest &= !(1u64 << bit);
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    names.join("|")
}

/// Builds the guest kernel (release, `panic = "abort"`, its linker script); returns the ELF path.
fn build_kernel(root: &Path) -> Result<PathBuf, String> {
    let target = kernel_target_dir()?;
    let mut c = cargo(&[
        "build",
        "--release",
        "--manifest-path",
        "examples/guest-kernel/Cargo.toml",
        "--target-dir",
    ]);
    c.arg(&target).current_dir(root);
    cmd::run(&mut c)?;
    Ok(target.join("release").join("guest-kernel"))
}

/// `examples/guest-kernel` is outside the workspace; its artifacts live under our target dir.
pub(crate) fn kernel_target_dir() -> Result<PathBuf, String> {
    let target = bench_report::target_dir().map_err(|e| e.to_string())?;
    Ok(target.join("guest-kernel"))
}

/// Builds mini-vmm (release); returns its path.
fn build_mini_vmm(root: &Path) -> Result<PathBuf, String> {
    let mut c = cargo(&[
        "build",
        "--release",
        "-p",
        "virtio-sdk-examples",
        "--bin",
        "mini-vmm",
    ]);
    cmd::run(c.current_dir(root))?;
    let target = bench_report::target_dir().map_err(|e| e.to_string())?;
    Ok(target.join("release").join("mini-vmm"))
}

/// Echoes every datagram to its sender until `stop` is set; returns how many it echoed.
fn spawn_echo(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<u64>, String> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut echoed = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if sock.send_to(buf.get(..n).unwrap_or(&[]), from).is_ok() {
                    echoed += 1;
                }
            }
        }
        echoed
    }))
}

/// A free local UDP port (bound, read back, released; QEMU binds it right after).
fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// What one run produced.
struct Outcome {
    /// The guest's `PASS guest ...` line, or why there is none / why it does not count.
    result: Result<String, String>,
    /// Serial console and VMM output.
    log: String,
    /// Wall time of the VMM process.
    elapsed: Duration,
}

/// Runs `child_cmd` with a deadline, collecting stdout and stderr; the guest's verdict is its `PASS guest` or
/// `FAIL guest` line, and it must exit with [`EXIT_PASS`].
fn run_vm(mut child_cmd: Command) -> Outcome {
    child_cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", cmd::show(&child_cmd));
    let start = Instant::now();
    let mut child = match child_cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                result: Err(format!("cannot start: {e}")),
                log: String::new(),
                elapsed: start.elapsed(),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = start + TIMEOUT;
    let mut log = String::new();
    let mut verdict: Option<Result<String, String>> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if verdict.is_none() {
                    if let Some(at) = line.find("PASS guest") {
                        verdict = Some(Ok(line.get(at..).unwrap_or_default().to_owned()));
                    } else if let Some(at) = line.find("FAIL guest") {
                        verdict = Some(Err(line.get(at..).unwrap_or_default().to_owned()));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Outcome {
                        result: Err(format!(
                            "timeout after {}s ({})",
                            TIMEOUT.as_secs(),
                            match verdict {
                                Some(Ok(l) | Err(l)) => l,
                                None => "no verdict line".into(),
                            }
                        )),
                        log,
                        elapsed: start.elapsed(),
                    };
                }
            }
        }
    }
    let status = child.wait();
    let elapsed = start.elapsed();
    let code = status.as_ref().ok().and_then(|s| s.code());
    let result = match verdict {
        Some(Ok(line)) if code == Some(EXIT_PASS) => Ok(line),
        Some(Ok(line)) => Err(format!(
            "exit status {status:?}, expected {EXIT_PASS}, after `{line}`"
        )),
        Some(Err(line)) => Err(format!("{line} (exit status {status:?})")),
        None => Err(format!("exited ({status:?}) without a PASS/FAIL line")),
    };
    Outcome {
        result,
        log,
        elapsed,
    }
}

/// Value of `key=` in a guest result line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Checks the guest's PASS line against what the cell asked for; returns the negotiated features.
fn check_line(cell: &Cell, line: &str) -> Result<u64, String> {
    let transport = field(line, "transport").unwrap_or("?");
    let ring = field(line, "ring").unwrap_or("?");
    let features = field(line, "features")
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| format!("no features in `{line}`"))?;
    if transport != cell.transport || ring != cell.ring {
        return Err(format!(
            "guest drove transport={transport} ring={ring}, cell wants transport={} ring={}",
            cell.transport, cell.ring
        ));
    }
    let packed = features & (1 << 34) != 0;
    let modern = features & (1 << 32) != 0;
    if packed != (ring == "packed") || modern == transport.ends_with("-legacy") {
        return Err(format!(
            "features {features:#x} disagree with transport={transport} ring={ring}"
        ));
    }
    Ok(features)
}

fn qemu_command(
    kernel: &Path,
    machine: &str,
    device: &str,
    extra: &[&str],
    peer: u16,
    local: u16,
) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "-k",
        "5",
        &TIMEOUT.as_secs().to_string(),
        "qemu-system-x86_64",
    ]);
    c.args([
        "-M",
        machine,
        "-accel",
        "tcg",
        "-m",
        "128",
        "-nodefaults",
        "-no-reboot",
    ]);
    c.args(["-display", "none", "-serial", "stdio"]);
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    c.args(extra);
    c.arg("-netdev").arg(format!(
        "socket,id=n0,udp=127.0.0.1:{peer},localaddr=127.0.0.1:{local}"
    ));
    c.arg("-device").arg(format!("{device},netdev=n0"));
    c.arg("-kernel").arg(kernel);
    c
}

/// Runs one cell; returns its PASS line or the FAIL reason, and the log.
fn run_cell(
    cell: &Cell,
    kernel: &Path,
    mini_vmm: &Result<PathBuf, String>,
) -> (Result<String, String>, String) {
    match cell.vmm {
        Vmm::Qemu {
            machine,
            device,
            extra,
        } => {
            let sock = match UdpSocket::bind("127.0.0.1:0") {
                Ok(s) => s,
                Err(e) => return (Err(format!("bind echo socket: {e}")), String::new()),
            };
            let peer = match sock.local_addr() {
                Ok(a) => a.port(),
                Err(e) => return (Err(e.to_string()), String::new()),
            };
            let local = match free_udp_port() {
                Ok(p) => p,
                Err(e) => return (Err(e), String::new()),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let echo = match spawn_echo(sock, stop.clone()) {
                Ok(h) => h,
                Err(e) => return (Err(e), String::new()),
            };
            let outcome = run_vm(qemu_command(kernel, machine, device, extra, peer, local));
            stop.store(true, Ordering::Relaxed);
            let echoed = echo.join().unwrap_or(0);
            finish(cell, outcome, &format!(" echoed={echoed}"))
        }
        Vmm::MiniVmm { transport } => {
            let bin = match mini_vmm {
                Ok(b) => b,
                Err(e) => return (Err(format!("mini-vmm did not build: {e}")), String::new()),
            };
            let mut c = Command::new("timeout");
            c.args(["-k", "5", &TIMEOUT.as_secs().to_string()]).arg(bin);
            c.arg("--kernel").arg(kernel);
            c.args([
                "--net",
                &format!("echo,transport={transport},ring={}", cell.ring),
                "--console",
                "stdout",
            ]);
            finish(cell, run_vm(c), "")
        }
    }
}

fn finish(cell: &Cell, outcome: Outcome, extra: &str) -> (Result<String, String>, String) {
    let secs = outcome.elapsed.as_secs_f64();
    let result = outcome.result.and_then(|line| {
        let features = check_line(cell, &line)?;
        let tsc = field(&line, "tsc").unwrap_or("?");
        Ok(format!(
            "features={features:#x} ({}) time={secs:.2}s guest-tsc={tsc}{extra}",
            feature_names(features)
        ))
    });
    (result, outcome.log)
}

/// Runs the suite.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let only: Vec<&str> = args.iter().map(String::as_str).collect();
    let cells: Vec<&Cell> = CELLS
        .iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.label.contains(o)))
        .collect();
    if cells.is_empty() {
        return Err(format!("no cell matches {only:?}"));
    }
    let started = Instant::now();
    crate::guest::ensure_host_tools()?;
    let kernel = build_kernel(root)?;
    let mini_vmm = if cells.iter().any(|c| matches!(c.vmm, Vmm::MiniVmm { .. })) {
        build_mini_vmm(root)
    } else {
        Err("not needed".into())
    };
    let mut lines = Vec::new();
    let mut failed = 0;
    for cell in cells {
        let (result, log) = run_cell(cell, &kernel, &mini_vmm);
        let line = match result {
            Ok(details) => format!("PASS guest {} {details}", cell.label),
            Err(why) => {
                failed += 1;
                println!(
                    "---- serial log of `{}` ----\n{log}---- end ----",
                    cell.label
                );
                format!("FAIL guest {} {why}", cell.label)
            }
        };
        println!("{line}");
        lines.push(line);
    }
    println!(
        "---- e2e guest summary ({:.1}s) ----",
        started.elapsed().as_secs_f64()
    );
    for l in &lines {
        println!("{l}");
    }
    if failed > 0 {
        Err(format!(
            "e2e guest: {failed} of {} cells failed",
            lines.len()
        ))
    } else {
        println!("e2e guest: all {} cells passed", lines.len());
        Ok(())
    }
}

/// Runs the benchmark.
#[allow(dead_code)]
pub(crate) fn bench(_root: &Path, _args: &[String]) -> Result<(), String> {
    Err("guest_e2e: no benchmark; `cargo xtask e2e guest` reports per-cell timing".into())
}
