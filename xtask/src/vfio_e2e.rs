//! `cargo xtask e2e vfio-smoke`: our PCI driver (`PciTransport` over `VfioAccess`) against QEMU's own
//! virtio-net-pci, from userspace inside a QEMU TCG guest with an emulated IOMMU.
//!
//! 1. Builds `vfio-smoke` (examples) statically (`-C target-feature=+crt-static`, host target).
//! 2. Builds the guest image `target/guest/vfio-smoke/` (busybox, the VFIO modules, `vfio-smoke`).
//! 3. Starts a UDP echo peer on 127.0.0.1:47001 (QEMU's `-netdev socket,udp=` sends every TX frame there from
//!    :47002 and delivers what comes back to :47002 as RX).
//! 4. Per cell, boots `q35` + `intel-iommu` + `virtio-net-pci,disable-legacy=on,iommu_platform=on[,packed=on]`; the
//!    guest `/init` loads the VFIO stack, finds the function (1af4:1041), binds it to `vfio-pci`, runs `vfio-smoke`
//!    and powers off. The cell passes when the console shows `PASS vfio ...`; a `FAIL` line, a panic, QEMU exiting
//!    without a result, or [`TIMEOUT`] fail it (the console log is printed then).

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd::{self, cargo};
use crate::guest::{self, ImageSpec, INIT_PRELUDE, VFIO_MODULES};

/// Per-boot limit.
const TIMEOUT: Duration = Duration::from_secs(180);
/// Where QEMU sends TX frames (our echo peer) and where it listens for RX.
const PEER: &str = "127.0.0.1:47001";
const QEMU_LOCAL: &str = "127.0.0.1:47002";
/// Frames per cell.
const FRAMES: u32 = 64;

/// A cell: name, extra `virtio-net-pci` properties, extra `vfio-smoke` arguments.
const CELLS: &[(&str, &str, &str)] = &[
    ("split", "", ""),
    ("split+event_idx", "", "--event-idx"),
    ("packed", ",packed=on", "--packed"),
    ("packed+event_idx", ",packed=on", "--packed --event-idx"),
];

fn host_triple() -> Result<String, String> {
    let out = cmd::output(Command::new("rustc").arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// Builds the static `vfio-smoke` and returns its path.
fn build_smoke(root: &Path) -> Result<PathBuf, String> {
    let triple = host_triple()?;
    cmd::run(
        cargo(&[
            "build",
            "--release",
            "-p",
            "virtio-sdk-examples",
            "--bin",
            "vfio-smoke",
            "--target",
            &triple,
        ])
        // With --target, RUSTFLAGS apply to the target only (not build scripts).
        .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(root.join(format!("target/{triple}/release/vfio-smoke")))
}

/// The guest `/init`: modules, bind, run the cell named by `smoke_args=` on the kernel command line.
fn init_script() -> String {
    let mut s = String::from(INIT_PRELUDE);
    for m in VFIO_MODULES {
        s.push_str(&format!(
            "insmod /lib/modules/{m}.ko || echo \"insmod {m} failed\"\n"
        ));
    }
    s.push_str(
        r#"ARGS=$(sed -n 's/.*smoke_args=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
BDF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1041 ]; then BDF=${d##*/}; fi
done
if [ -z "$BDF" ]; then
  echo "FAIL vfio reason=no-virtio-net-function"
else
  echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
  echo $BDF > /sys/bus/pci/drivers/vfio-pci/bind
  echo "vfio-smoke: $BDF group $(readlink /sys/bus/pci/devices/$BDF/iommu_group) driver $(readlink /sys/bus/pci/devices/$BDF/driver)"
  /bin/vfio-smoke --device $BDF --frames FRAMES $ARGS || echo "vfio-smoke exited with $?"
fi
poweroff -f
"#,
    );
    s.replace("FRAMES", &FRAMES.to_string())
}

/// Echoes every datagram on [`PEER`] back to its sender until `stop` is set.
fn spawn_echo(stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<u64>, String> {
    let sock = UdpSocket::bind(PEER).map_err(|e| format!("bind {PEER}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
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

/// Boots one cell; returns the result line, or an error with the reason. The console log is returned either way.
fn boot(
    image: &guest::GuestImage,
    props: &str,
    smoke_args: &str,
) -> (Result<String, String>, String) {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35,accel=tcg,kernel-irqchip=split",
        "-cpu",
        "max",
        "-m",
        "512",
        "-smp",
        "2",
        "-device",
        "intel-iommu,intremap=on",
        "-netdev",
        &format!("socket,id=n0,udp={PEER},localaddr={QEMU_LOCAL}"),
        "-device",
        &format!("virtio-net-pci,netdev=n0,disable-legacy=on,iommu_platform=on,romfile={props}"),
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-append",
        &format!(
            "console=ttyS0 intel_iommu=on panic=-1 quiet smoke_args={}",
            smoke_args.replace(' ', ",")
        ),
    ])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd);
    let mut result: Option<Result<String, String>> = None;
    let run = guest::run_console(qemu, TIMEOUT, |line| {
        if result.is_none() {
            if let Some(at) = line.find("PASS vfio") {
                result = Some(Ok(line[at..].to_owned()));
            } else if let Some(at) = line.find("FAIL vfio") {
                result = Some(Err(line[at..].to_owned()));
            } else if line.contains("Kernel panic") {
                result = Some(Err(format!("guest panic: {line}")));
            }
        }
    });
    match run {
        Err(e) => (Err(e), String::new()),
        Ok((log, true)) => (
            Err(result
                .map(|r| format!("timeout after {TIMEOUT:?} (had {r:?})"))
                .unwrap_or_else(|| format!("timeout after {TIMEOUT:?}"))),
            log,
        ),
        Ok((log, false)) => (
            result.unwrap_or_else(|| Err("qemu exited without a result line".into())),
            log,
        ),
    }
}

/// Runs the suite.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let only: Vec<&str> = args.iter().map(String::as_str).collect();
    guest::ensure_host_tools()?;
    let smoke = build_smoke(root)?;
    let image = guest::build(
        root,
        &ImageSpec {
            name: "vfio-smoke",
            modules: VFIO_MODULES,
            files: vec![(smoke, "/bin/vfio-smoke".into())],
            init: init_script(),
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = spawn_echo(stop.clone())?;
    let mut failed = 0;
    let mut ran = 0;
    for &(name, props, smoke_args) in CELLS {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let (result, log) = boot(&image, props, smoke_args);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(line) => println!("PASS vfio-smoke/{name} ({secs:.1} s): {line}"),
            Err(why) => {
                failed += 1;
                println!("---- console of vfio-smoke/{name} ----\n{log}---- end of console ----");
                println!("FAIL vfio-smoke/{name} ({secs:.1} s): {why}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let echoed = echo.join().unwrap_or(0);
    println!("vfio-smoke: {ran} cells, {failed} failed; the echo peer returned {echoed} datagrams");
    if ran == 0 {
        return Err(format!("no cell matches {only:?}"));
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} of {ran} cells failed"))
    }
}
