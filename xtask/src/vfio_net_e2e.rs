//! `cargo xtask e2e vfio` and `cargo xtask bench vfio`: the `vfio-net` userspace driver against QEMU's
//! virtio-net-pci inside a QEMU TCG guest with an emulated IOMMU (`intel-iommu`), the device bound to `vfio-pci`.
//!
//! **e2e.** One guest boot holds three devices under test, each bound to `vfio-pci` and driven by `vfio-net`:
//! modern (`disable-legacy=on,iommu_platform=on,packed=on`), transitional (`disable-legacy=off`, driven through its
//! legacy I/O BAR with `--legacy`) and legacy-only (`disable-modern=on`); all `mq=on`. Beside each sits a peer
//! virtio-net-pci bound to the guest's **Linux kernel driver**. Each pair is joined on the host by a bridge between
//! two taps (the device under test gets a 2-queue tap, so that QEMU offers 2 queue pairs: a socket netdev has one
//! queue); QEMU, the taps and the bridges live in a private network namespace, so nothing on the host changes.
//! Per cell (device × ring × queue pairs) the guest runs `vfio-net --mode responder` and pings it from the peer,
//! then `vfio-net --mode echo` and `net-check stream` (checksummed, sequenced UDP; [`FRAMES`] datagrams, split over
//! two flows (UDP ports 7000 and 7001) with 2 queue pairs, and each receive queue must have carried at least a tenth
//! of them: `vfio-net` replies to a flow on pair `port % 2`, and the 2-queue tap steers a flow's receive side to the
//! queue it was last sent from). Each cell prints
//! `PASS vfio device=.. ring=.. queues=.. features=0x..` or `FAIL ...`.
//!
//! **bench.** One boot with one modern device (`iommu_platform=on`), its TX sent by QEMU to a UDP sink on the host.
//! [`ROUNDS`] rounds, alternating the order: `vfio-net --mode pktgen` and DPDK `dpdk-testpmd --forward-mode=txonly`
//! (`--no-huge`, IOVA as VA, interactive with two `show port stats all` [`BENCH_SECS`] apart, as in the DPDK recipe;
//! the Debian `dpdk` libraries and the virtio PMD copied into the guest), both with 64-byte frames in bursts of 32.
//! The primary record (`tx-64B-split-1q-txonly-wire`) is what reached the host sink per second during each run
//! (seconds carrying at least half of the run's busiest second), the same measure for both; the second
//! (`...-self-reported`) is each generator's own figure. Under TCG on a shared 2-core host both vary by tens of
//! percent between rounds (testpmd's command line sometimes answers the two stats requests late and close together,
//! so its own Tx-pps then covers a short interval). Written to `target/bench/vfio.json` as `impl: "ours"` and
//! `impl: "dpdk"` (Mpps).

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd::{self, cargo};
use crate::guest::{self, ImageSpec, INIT_PRELUDE, VFIO_MODULES};

/// Datagrams per cell through net-check.
const FRAMES: u32 = 100_000;
/// Per-boot limit.
const TIMEOUT: Duration = Duration::from_secs(1500);
/// The virtio stack of Debian's 6.1 kernel for the Linux peers, in load order.
const VIRTIO_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// A device under test: name, QEMU properties, PCI slot of it and of its Linux peer, extra `vfio-net` flags.
struct Dut {
    name: &'static str,
    props: &'static str,
    slot: u8,
    peer_slot: u8,
    flags: &'static str,
    rings: &'static [&'static str],
}

const DUTS: &[Dut] = &[
    Dut {
        name: "modern",
        props: "disable-legacy=on,iommu_platform=on,packed=on",
        slot: 4,
        peer_slot: 5,
        flags: "",
        rings: &["split", "packed"],
    },
    Dut {
        name: "transitional",
        props: "disable-legacy=off,disable-modern=off",
        slot: 6,
        peer_slot: 7,
        flags: "--legacy",
        rings: &["split"],
    },
    Dut {
        name: "legacy",
        props: "disable-modern=on",
        slot: 8,
        peer_slot: 9,
        flags: "",
        rings: &["split"],
    },
];

fn host_triple() -> Result<String, String> {
    let out = cmd::output(Command::new("rustc").arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// Builds static `vfio-net` and `net-check`; returns their paths.
fn build_bins(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let triple = host_triple()?;
    cmd::run(
        cargo(&[
            "build",
            "--release",
            "-p",
            "virtio-sdk-examples",
            "--bin",
            "vfio-net",
            "--bin",
            "net-check",
            "--target",
            &triple,
        ])
        // With --target, RUSTFLAGS apply to the target only (not build scripts).
        .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    let dir = root.join(format!("target/{triple}/release"));
    Ok((dir.join("vfio-net"), dir.join("net-check")))
}

fn bdf(slot: u8) -> String {
    format!("0000:00:{slot:02x}.0")
}

/// Shell functions of the guest `/init` shared by the suite and the bench.
const INIT_FUNCS: &str = r#"
bind_vfio() {
  echo vfio-pci > /sys/bus/pci/devices/$1/driver_override
  echo $1 > /sys/bus/pci/drivers/vfio-pci/bind || echo "bind $1 failed"
}
# wait_ready LOG: until vfio-net printed its ready line (or failed / exited).
wait_ready() {
  for i in $(seq 1 300); do
    grep -q "vfio-net: ready\|vfio-net: error" $1 2>/dev/null && break
    sleep 0.1
  done
}
"#;

/// One cell as guest shell: responder + ping, then echo + net-check.
fn cell_script(d: &Dut, index: usize, ring: &str, queues: u16) -> String {
    let ip = format!("10.0.{index}.2");
    let packed = if ring == "packed" { "--packed" } else { "" };
    let vflags = format!("--ip {ip} --queues {queues} {packed} {}", d.flags);
    let streams = if queues > 1 {
        let half = FRAMES / 2;
        format!(
            "/bin/net-check stream --to {ip}:7000 --count {half} --size 256 --window 32 --timeout-s 600 > /tmp/nc0.log 2>&1 &\n\
             N0=$!\n\
             /bin/net-check stream --to {ip}:7001 --count {half} --size 256 --window 32 --timeout-s 600 > /tmp/nc1.log 2>&1\n\
             wait $N0\n"
        )
    } else {
        format!(
            "/bin/net-check stream --to {ip}:7000 --count {FRAMES} --size 256 --window 64 --timeout-s 600 > /tmp/nc0.log 2>&1\n\
             echo 'net-check: PASS (single flow)' > /tmp/nc1.log\n"
        )
    };
    format!(
        r#"
echo "=== cell device={name} ring={ring} queues={queues} ({bdf})"
T0=$(date +%s)
/bin/vfio-net --device {bdf} --mode responder {vflags} > /tmp/resp.log 2>&1 &
P=$!
wait_ready /tmp/resp.log
ping -c 5 -i 0.2 -W 3 {ip} > /tmp/ping.log 2>&1; PING=$?
kill $P; wait $P
cat /tmp/resp.log /tmp/ping.log
/bin/vfio-net --device {bdf} --mode echo {vflags} > /tmp/echo.log 2>&1 &
P=$!
wait_ready /tmp/echo.log
{streams}kill $P; wait $P
cat /tmp/echo.log /tmp/nc0.log /tmp/nc1.log
FEAT=$(sed -n 's/.*vfio-net: ready.* features=\(0x[0-9a-f]*\).*/\1/p' /tmp/echo.log)
RXQ=$(sed -n 's/.*vfio-net: done.* rx_per_queue=\([0-9/]*\).*/\1/p' /tmp/echo.log)
WHY=
[ $PING = 0 ] || WHY="$WHY ping"
grep -q "net-check: PASS" /tmp/nc0.log || WHY="$WHY stream0"
grep -q "net-check: PASS" /tmp/nc1.log || WHY="$WHY stream1"
grep -q "vfio-net: done" /tmp/resp.log || WHY="$WHY responder"
grep -q "vfio-net: done" /tmp/echo.log || WHY="$WHY echo"
if [ {queues} -gt 1 ]; then
  A=${{RXQ%/*}}; B=${{RXQ#*/}}
  [ "${{A:-0}}" -ge {min} ] 2>/dev/null && [ "${{B:-0}}" -ge {min} ] 2>/dev/null || WHY="$WHY rx-queues=$RXQ"
fi
SECS=$(( $(date +%s) - T0 ))
if [ -z "$WHY" ]; then
  echo "PASS vfio device={name} ring={ring} queues={queues} features=$FEAT rx_per_queue=$RXQ secs=$SECS"
else
  echo "FAIL vfio device={name} ring={ring} queues={queues} features=$FEAT reason=$WHY"
fi
"#,
        name = d.name,
        bdf = bdf(d.slot),
        min = FRAMES / 10,
    )
}

/// The cells (device, ring, queue pairs) selected by `only` (names like `modern/packed/2`; empty = all).
fn cells(only: &[&str]) -> Vec<(usize, &'static str, u16)> {
    let mut out = Vec::new();
    for (i, d) in DUTS.iter().enumerate() {
        for ring in d.rings {
            for q in [1u16, 2] {
                let name = format!("{}/{ring}/{q}", d.name);
                if only.is_empty() || only.iter().any(|o| name.starts_with(o)) {
                    out.push((i, *ring, q));
                }
            }
        }
    }
    out
}

fn init_script(selected: &[(usize, &'static str, u16)]) -> String {
    let mut s = String::from(INIT_PRELUDE);
    for m in VFIO_MODULES {
        s.push_str(&format!(
            "insmod /lib/modules/{m}.ko || echo \"insmod {m} failed\"\n"
        ));
    }
    s.push_str(INIT_FUNCS);
    // Devices under test to vfio-pci first, so that virtio_pci binds only the peers.
    for d in DUTS {
        s.push_str(&format!("bind_vfio {}\n", bdf(d.slot)));
    }
    for m in VIRTIO_MODULES {
        s.push_str(&format!(
            "insmod /lib/modules/{m}.ko || echo \"insmod {m} failed\"\n"
        ));
    }
    s.push_str("ip link set lo up\n");
    for (i, d) in DUTS.iter().enumerate() {
        s.push_str(&format!(
            "IF=$(ls /sys/bus/pci/devices/{peer}/virtio*/net/ 2>/dev/null)\n\
             if [ -n \"$IF\" ]; then ip addr add 10.0.{i}.1/24 dev $IF; ip link set $IF up; \
             echo \"peer of {name}: $IF 10.0.{i}.1\"; else echo \"no peer netdev for {name}\"; fi\n\
             echo \"{name} {dut}: driver $(readlink /sys/bus/pci/devices/{dut}/driver) group $(readlink /sys/bus/pci/devices/{dut}/iommu_group) id $(cat /sys/bus/pci/devices/{dut}/device)\"\n",
            peer = bdf(d.peer_slot),
            dut = bdf(d.slot),
            name = d.name,
        ));
    }
    s.push_str("sleep 1\n");
    for &(i, ring, q) in selected {
        if let Some(d) = DUTS.get(i) {
            s.push_str(&cell_script(d, i, ring, q));
        }
    }
    s.push_str("echo \"vfio-net e2e: guest done\"\npoweroff -f\n");
    s
}

/// A private network namespace with one bridge per pair of taps (device under test: 2-queue tap; Linux peer:
/// 1-queue tap). Removed on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create() -> Result<Self, String> {
        let name = format!("vfionet{}", std::process::id());
        let _ = cmd::succeeds(Command::new("ip").args(["netns", "del", &name]));
        cmd::run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        let mut script = String::from("set -e\nip link set lo up\n");
        for i in 0..DUTS.len() {
            script.push_str(&format!(
                "ip tuntap add dev vfnd{i} mode tap multi_queue\n\
                 ip tuntap add dev vfnk{i} mode tap\n\
                 ip link add vfnb{i} type bridge\n\
                 ip link set vfnd{i} master vfnb{i}\n\
                 ip link set vfnk{i} master vfnb{i}\n\
                 ip link set vfnd{i} up\n\
                 ip link set vfnk{i} up\n\
                 ip link set vfnb{i} up\n"
            ));
        }
        cmd::run(Command::new("ip").args(["netns", "exec", &ns.name, "sh", "-c", &script]))?;
        Ok(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = cmd::succeeds(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Installs `iproute2` when `ip` is missing.
fn ensure_ip() -> Result<(), String> {
    if cmd::succeeds(Command::new("sh").args(["-c", "command -v ip"])) {
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "iproute2"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn qemu_base(image: &guest::GuestImage, memory: &str, append: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35,accel=tcg,kernel-irqchip=split",
        "-cpu",
        "max",
        "-m",
        memory,
        "-smp",
        "2",
        "-device",
        "intel-iommu,intremap=on",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-append",
        &format!("console=ttyS0 intel_iommu=on panic=-1 quiet {append}"),
    ])
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initrd);
    qemu
}

/// Runs the suite.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let only: Vec<&str> = args.iter().map(String::as_str).collect();
    let selected = cells(&only);
    if selected.is_empty() {
        return Err(format!("no cell matches {only:?}"));
    }
    guest::ensure_host_tools()?;
    ensure_ip()?;
    let (vfio_net, net_check) = build_bins(root)?;
    let mut modules: Vec<&str> = VFIO_MODULES.to_vec();
    modules.extend_from_slice(VIRTIO_MODULES);
    let image = guest::build(
        root,
        &ImageSpec {
            name: "vfio-net",
            modules: &modules,
            files: vec![
                (vfio_net, "/bin/vfio-net".into()),
                (net_check, "/bin/net-check".into()),
            ],
            init: init_script(&selected),
        },
    )?;
    let ns = NetNs::create()?;
    let mut qemu = Command::new("ip");
    qemu.args(["netns", "exec", &ns.name]);
    let base = qemu_base(&image, "1024", "");
    qemu.arg(base.get_program());
    qemu.args(base.get_args());
    for (i, d) in DUTS.iter().enumerate() {
        qemu.args([
            "-netdev",
            &format!("tap,id=d{i},ifname=vfnd{i},script=no,downscript=no,queues=2,vhost=off"),
            "-device",
            &format!(
                "virtio-net-pci,netdev=d{i},{},mq=on,vectors=6,romfile=,addr={:#x},mac=52:54:00:12:0{i}:02",
                d.props, d.slot
            ),
            "-netdev",
            &format!("tap,id=k{i},ifname=vfnk{i},script=no,downscript=no,vhost=off"),
            "-device",
            &format!(
                "virtio-net-pci,netdev=k{i},disable-legacy=on,romfile=,addr={:#x},mac=52:54:00:12:0{i}:01",
                d.peer_slot
            ),
        ]);
    }
    let start = Instant::now();
    let mut results: Vec<String> = Vec::new();
    let (log, timed_out) = guest::run_console(qemu, TIMEOUT, |line| {
        if line.contains("=== cell") || line.contains("net-check:") || line.contains("vfio-net:") {
            println!("  guest: {line}");
        }
        if let Some(at) = line.find("PASS vfio ").or_else(|| line.find("FAIL vfio ")) {
            results.push(line[at..].to_owned());
        }
    })?;
    drop(ns);
    let secs = start.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.starts_with("FAIL")).count();
    let missing = selected.len().saturating_sub(results.len());
    if failed > 0 || missing > 0 || timed_out || log.contains("Kernel panic") {
        println!("---- guest console ----\n{log}---- end of guest console ----");
    }
    println!("vfio e2e results ({secs:.1} s, one boot):");
    for r in &results {
        println!("{r}");
    }
    for &(i, ring, q) in selected.iter().skip(results.len()) {
        let name = DUTS.get(i).map_or("?", |d| d.name);
        println!(
            "FAIL vfio device={name} ring={ring} queues={q} reason={}",
            if timed_out { "timeout" } else { "no-result" }
        );
    }
    if failed == 0 && missing == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} of {} vfio cells failed",
            failed + missing,
            selected.len()
        ))
    }
}

/// The DPDK plugin directory testpmd's EAL loads (Debian's build).
const DPDK_PMD_DIR: &str = "/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0";
/// The DPDK ABI major version (the plugins' soname suffix).
const DPDK_ABI: &str = "23";
/// The plugins txonly on a virtio-net PCI function needs.
const DPDK_PLUGINS: &[&str] = &[
    "librte_bus_pci",
    "librte_bus_vdev",
    "librte_mempool_ring",
    "librte_net_virtio",
];
/// Rounds of (ours, DPDK), alternating, in one boot.
const ROUNDS: u32 = 2;
/// Seconds each generator runs.
const BENCH_SECS: u32 = 10;
/// Where QEMU sends the device's TX in the bench, and its local end.
const SINK: &str = "127.0.0.1:47391";
const SINK_QEMU: &str = "127.0.0.1:47392";

/// Installs Debian's `dpdk` runtime and `dpdk-testpmd` (`dpdk-dev`) when missing.
fn ensure_dpdk() -> Result<(), String> {
    if Path::new("/usr/bin/dpdk-testpmd").exists() && Path::new(DPDK_PMD_DIR).exists() {
        return Ok(());
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "dpdk",
                "dpdk-dev",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The shared libraries `ldd` lists for `bin` (resolved paths, including the dynamic loader).
fn ldd(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let out = cmd::output(Command::new("ldd").arg(bin))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `dpdk-testpmd`, the plugins (as `NAME.so` in [`DPDK_PMD_DIR`]) and every library they need, as image files.
fn dpdk_files() -> Result<Vec<(PathBuf, String)>, String> {
    let testpmd = PathBuf::from("/usr/bin/dpdk-testpmd");
    let mut files = vec![(testpmd.clone(), "/usr/bin/dpdk-testpmd".to_owned())];
    let mut libs = ldd(&testpmd)?;
    for p in DPDK_PLUGINS {
        let so = PathBuf::from(format!("{DPDK_PMD_DIR}/{p}.so"));
        if !so.exists() {
            return Err(format!("{} is missing (Debian package dpdk)", so.display()));
        }
        libs.extend(ldd(&so)?);
        // As the soname file; `/init` links `NAME.so` to it, as the package does, so that a plugin testpmd also
        // links directly (bus_pci, bus_vdev) is one file and is not loaded twice.
        files.push((so, format!("{DPDK_PMD_DIR}/{p}.so.{DPDK_ABI}")));
    }
    // glibc's pthread_cancel (testpmd's shutdown) dlopens libgcc_s.
    let gcc_s = PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1");
    if gcc_s.exists() {
        libs.push(gcc_s);
    }
    libs.sort();
    libs.dedup();
    for l in libs {
        let dst = l.display().to_string();
        files.push((l, dst));
    }
    Ok(files)
}

fn bench_init(bdf_: &str) -> String {
    let mut s = String::from(INIT_PRELUDE);
    for m in VFIO_MODULES {
        s.push_str(&format!(
            "insmod /lib/modules/{m}.ko || echo \"insmod {m} failed\"\n"
        ));
    }
    s.push_str(INIT_FUNCS);
    s.push_str(&format!(
        r#"VFIO_NET_BENCH_ARGS=$(sed -n 's/.*bench_args=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
mkdir -p /var/run /run /tmp /lib64
for p in {plugins}; do ln -sf $p.so.{DPDK_ABI} {DPDK_PMD_DIR}/$p.so; done
bind_vfio {bdf_}
ours() {{
echo "=== bench ours round $1"
/bin/vfio-net --device {bdf_} --mode pktgen --size 64 --count 4000000000 --duration-s {BENCH_SECS} --burst 32 $VFIO_NET_BENCH_ARGS
}}
# testpmd as in the DPDK recipe: interactive, forwarding from the start; the second `show port stats all` prints
# Tx-pps averaged over the {BENCH_SECS} s since the first. $2: the EAL core options.
dpdk() {{
echo "=== bench dpdk round $1 ($2)"
(sleep 6; echo "show port stats all"; sleep {BENCH_SECS}; echo "show port stats all"; echo stop; echo quit) | \
timeout -s INT {dpdk_secs} /usr/bin/dpdk-testpmd $2 -a {bdf_} --no-huge -m 512 --iova-mode=va -- \
  -i --auto-start --forward-mode=txonly --txpkts=64 --burst=32 --nb-cores=1 --total-num-mbufs=8192 2>&1 | \
  grep -E "Tx-pps|TX-packets|Error|error|Fail|Cannot" | sed 's/^/testpmd: /'
}}
# Alternate the order (DPDK first in odd rounds) so that neither always runs on a device the other just used.
for r in $(seq 1 {ROUNDS}); do
  if [ $((r % 2)) = 1 ]; then dpdk $r "-l 0-1"; ours $r; else ours $r; dpdk $r "--lcores=0@0,1@0"; fi
done
echo "vfio-net bench: guest done"
poweroff -f
"#,
        dpdk_secs = BENCH_SECS + 20,
        plugins = DPDK_PLUGINS.join(" "),
    ));
    s
}

/// Datagrams the host sink received, per 100 ms since a start instant.
struct SinkCounts {
    start: Instant,
    buckets: Vec<AtomicU64>,
}

impl SinkCounts {
    const BUCKET: Duration = Duration::from_millis(100);

    fn new() -> Self {
        Self {
            start: Instant::now(),
            buckets: (0..20_000).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Steady rate in `[from, to)` (offsets from the start): the datagrams of each whole second, averaged over the
    /// seconds that carried at least half of the busiest one (start-up, stalls and the tail are left out). Also
    /// returns the total in the range.
    fn steady_rate(&self, from: Duration, to: Duration) -> (Option<f64>, u64) {
        let b = |d: Duration| {
            usize::try_from(d.as_millis() / Self::BUCKET.as_millis()).unwrap_or(usize::MAX)
        };
        let (lo, hi) = (b(from), b(to).min(self.buckets.len()));
        let counts: Vec<u64> = self
            .buckets
            .get(lo..hi.max(lo))
            .unwrap_or(&[])
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let seconds: Vec<u64> = counts.chunks_exact(10).map(|c| c.iter().sum()).collect();
        let max = seconds.iter().copied().max().unwrap_or(0);
        let steady: Vec<u64> = seconds
            .into_iter()
            .filter(|&c| max > 0 && c * 2 >= max)
            .collect();
        let rate =
            (!steady.is_empty()).then(|| steady.iter().sum::<u64>() as f64 / steady.len() as f64);
        (rate, counts.iter().sum())
    }
}

/// Receives datagrams on [`SINK`] into `counts` until `stop`.
fn spawn_sink(
    stop: Arc<AtomicBool>,
    counts: Arc<SinkCounts>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let sock = UdpSocket::bind(SINK).map_err(|e| format!("bind {SINK}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if sock.recv_from(&mut buf).is_ok() {
                let i = counts.start.elapsed().as_millis() / SinkCounts::BUCKET.as_millis();
                if let Some(b) = usize::try_from(i).ok().and_then(|i| counts.buckets.get(i)) {
                    b.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }))
}

/// Runs the benchmark.
pub(crate) fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("bench vfio takes no arguments (got `{a}`)"));
    }
    guest::ensure_host_tools()?;
    ensure_dpdk()?;
    let (vfio_net, _) = build_bins(root)?;
    let mut files = vec![(vfio_net, "/bin/vfio-net".to_owned())];
    files.extend(dpdk_files()?);
    let slot = 4u8;
    let image = guest::build(
        root,
        &ImageSpec {
            name: "vfio-bench",
            modules: VFIO_MODULES,
            files,
            init: bench_init(&bdf(slot)),
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(SinkCounts::new());
    let sink = spawn_sink(stop.clone(), counts.clone())?;
    // (impl, start, end) of each generator run, as offsets of the sink's clock (from the console lines).
    let mut phases: Vec<(&'static str, Duration, Option<Duration>)> = Vec::new();
    // Extra `vfio-net` arguments for the pktgen runs (e.g. `--full-backoff-us 20`), from the environment.
    let extra = std::env::var("VFIO_NET_BENCH_ARGS").unwrap_or_default();
    let mut qemu = qemu_base(
        &image,
        "1536",
        &format!("bench_args={}", extra.trim().replace(' ', ",")),
    );
    qemu.args([
        "-netdev",
        &format!("socket,id=b0,udp={SINK},localaddr={SINK_QEMU}"),
        "-device",
        &format!(
            "virtio-net-pci,netdev=b0,disable-legacy=on,iommu_platform=on,romfile=,addr={slot:#x}"
        ),
    ]);
    let mut ours_rounds: Vec<f64> = Vec::new();
    let mut ours_features = String::new();
    // Tx-pps samples of each DPDK round.
    let mut dpdk_rounds: Vec<Vec<f64>> = Vec::new();
    // TX-packets of each `show port stats all` of each DPDK round.
    let mut dpdk_packets: Vec<Vec<f64>> = Vec::new();
    let mut in_dpdk = false;
    let (log, timed_out) = guest::run_console(qemu, Duration::from_secs(900), |line| {
        let now = counts.start.elapsed();
        if line.contains("=== bench") || line.contains("vfio-net bench: guest done") {
            if let Some(last) = phases.last_mut() {
                last.2.get_or_insert(now);
            }
        }
        if line.contains("=== bench ours") {
            phases.push(("ours", now, None));
        } else if line.contains("=== bench dpdk") {
            phases.push(("dpdk", now, None));
        }
        if line.contains("vfio-net: done") {
            if let Some(last) = phases.last_mut() {
                last.2.get_or_insert(now);
            }
        }
        if line.contains("=== bench ours") {
            in_dpdk = false;
        } else if line.contains("=== bench dpdk") {
            in_dpdk = true;
            dpdk_rounds.push(Vec::new());
            dpdk_packets.push(Vec::new());
        }
        let noise = line.contains("2J");
        if (line.contains("vfio-net:")
            || line.starts_with("testpmd:")
            || line.contains("=== bench"))
            && !noise
        {
            println!("  guest: {line}");
        }
        if let Some(rest) = line.split("tx_pps=").nth(1) {
            if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                ours_rounds.push(v);
            }
        }
        if let Some(rest) = line.split("vfio-net: ready").nth(1) {
            ours_features = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("features="))
                .unwrap_or("")
                .to_owned();
        }
        if in_dpdk {
            // The port statistics' cumulative count (`TX-packets: N  TX-errors: ..`, not the forward statistics).
            if let Some(rest) = line
                .split("TX-packets:")
                .nth(1)
                .filter(|_| line.contains("TX-errors"))
            {
                if let (Some(v), Some(round)) = (
                    rest.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<f64>().ok()),
                    dpdk_packets.last_mut(),
                ) {
                    round.push(v);
                }
            }
            if let Some(rest) = line.split("Tx-pps:").nth(1) {
                if let (Some(v), Some(round)) = (
                    rest.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<f64>().ok()),
                    dpdk_rounds.last_mut(),
                ) {
                    round.push(v);
                }
            }
        }
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = sink.join();
    let sunk = counts.total();
    // What reached the wire, measured on the host: the primary metric (the same for both, outside the guest).
    let mut wire: Vec<(&str, f64, u64)> = Vec::new();
    for &(who, from, to) in &phases {
        let to = to.unwrap_or_else(|| counts.start.elapsed());
        let (rate, total) = counts.steady_rate(from, to);
        println!(
            "vfio bench: {who} phase {:.1}-{:.1} s: {total} datagrams at the host sink, steady {rate:?} per s",
            from.as_secs_f64(),
            to.as_secs_f64()
        );
        if let Some(r) = rate {
            wire.push((who, r, total));
        }
    }
    let wire_mean = |who: &str| {
        let v: Vec<f64> = wire.iter().filter(|w| w.0 == who).map(|w| w.1).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let (wire_ours, wire_dpdk) = (wire_mean("ours"), wire_mean("dpdk"));
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    // Per round, testpmd's Tx-pps at the second `show port stats all`: packets since the first show over the time
    // between them, measured with the TSC (the DPDK recipe). Under TCG on a loaded host testpmd's command line can
    // process the two shows late and close together, so the interval is not always the 10 s the script waits; the
    // packet deltas over those 10 s are printed too (a lower bound when that happens).
    let dpdk_per_round: Vec<f64> = dpdk_rounds
        .iter()
        .filter_map(|r| (r.len() >= 2).then(|| r.last().copied()).flatten())
        .collect();
    let dpdk_delta_pps: Vec<f64> = dpdk_packets
        .iter()
        .filter_map(|r| match r.as_slice() {
            [.., a, b] => Some((b - a) / f64::from(BENCH_SECS)),
            _ => None,
        })
        .collect();
    let ours = mean(&ours_rounds);
    let dpdk = mean(&dpdk_per_round);
    if ours.is_none() || dpdk.is_none() || timed_out {
        println!("---- guest console ----\n{log}---- end of guest console ----");
    }
    let mut report = bench_report::Report::new("vfio");
    // Primary: frames per second that reached the host through QEMU's device (steady seconds).
    let case = "tx-64B-split-1q-txonly-wire";
    if let Some(v) = wire_ours {
        report.record(case, "ours", "Mpps", v / 1e6, bench_report::Better::Higher);
    }
    if let Some(v) = wire_dpdk {
        report.record(case, "dpdk", "Mpps", v / 1e6, bench_report::Better::Higher);
    }
    // Secondary: what each generator reports itself (vfio-net: frames queued over 10 s; testpmd: Tx-pps of its
    // second stats snapshot, over an interval it measures with the TSC).
    let case = "tx-64B-split-1q-txonly-self-reported";
    if let Some(v) = ours {
        report.record(case, "ours", "Mpps", v / 1e6, bench_report::Better::Higher);
    }
    if let Some(v) = dpdk {
        report.record(case, "dpdk", "Mpps", v / 1e6, bench_report::Better::Higher);
    }
    println!(
        "vfio bench: at the wire (host sink, steady seconds): ours {wire_ours:?} dpdk {wire_dpdk:?} per s, ratio ours/dpdk {:?}",
        wire_ours.zip(wire_dpdk).map(|(o, d)| o / d)
    );
    println!(
        "vfio bench: ours {ours_rounds:?} pps per round (features {ours_features}), dpdk {dpdk_per_round:?} pps per round; \
         means ours {ours:?} dpdk {dpdk:?}, ratio ours/dpdk {:?} (DPDK packets between the shows / {BENCH_SECS} s: {dpdk_delta_pps:?}); \
         the host sink received {sunk} datagrams",
        ours.zip(dpdk).map(|(o, d)| o / d)
    );
    if report.records().is_empty() {
        return Err("vfio bench: no result".into());
    }
    report.print_table();
    let path = report.write().map_err(|e| format!("write report: {e}"))?;
    println!("wrote {}", path.display());
    if wire_ours.is_none() || wire_dpdk.is_none() {
        return Err("vfio bench: one implementation produced no rate".into());
    }
    Ok(())
}
