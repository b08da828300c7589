//! `net` benchmark: our virtio-net driver (TX) → our virtio-net device → the in-memory `Pair` backend, on two
//! cores, against DPDK's testpmd (virtio-user txonly → vhost-user rxonly) on the same two cores.
//!
//! Cases, written to `target/bench/net.json` through `bench-report`:
//!
//! - `net-pps/<split|packed>/64B` — million frames per second of 64-byte Ethernet frames. `impl: "virtio-sdk"`:
//!   `NetDriver::send_burst` (bursts of [`BURST`] frames) on one thread (CPU 0), `NetDevice::process_tx` in TX
//!   polling mode (`NetDevice::set_tx_polling`) on another (CPU 1) whose backend is one end of
//!   a `PairEnd::pair`; the device thread also drains the pair's other end and counts the frames that came out of
//!   it. `impl: "dpdk"`: Debian's `dpdk-testpmd` as in `../shared/ENVIRONMENT.md`, vhost rxonly on CPU 0 and
//!   virtio-user txonly (`--txpkts=64`) on CPU 1, the receiver's `Rx-pps` over 10 s.
//! - `net-gbps/<split|packed>/<1500B|64KiB>` — Gbit/s of Ethernet frame bytes (virtio-net header excluded), same
//!   setup with 1500-byte and 65536-byte frames.
//! - `net-pps-sink/<split|packed>/64B` — as `net-pps` but the device's backend is a sink that copies each frame out
//!   of the driver's buffer into one scratch buffer and counts it (what DPDK's vhost dequeue + testpmd rxonly do:
//!   one copy into an mbuf, then the mbuf is freed): the device's own cost without the `Pair`.
//!
//! What each side does per 64-byte frame (so the comparison is apples to apples):
//!
//! | step | ours (`net-pps`) | ours (`net-pps-sink`) | DPDK testpmd |
//! |---|---|---|---|
//! | sender builds the frame | `send_burst` copies header + frame into the driver's 2 KiB TX slot | same | txonly writes the packet headers into an mbuf from a template; the virtio-net header is pushed into the mbuf headroom |
//! | ring (sender) | one descriptor and avail entry per frame, each stored only if it changed (split: under IN_ORDER with FIFO slots, as DPDK's `vq_update_avail_ring` does for avail entries), `avail.idx` once per burst / descriptor per frame, first head's flags last (packed); the burst's TX slots prefetched for writing; one notification decision per burst of 32; lazy reclaim of used slots | same | one descriptor per packet, avail entries stored only if changed, `avail.idx` once per burst (split); flags per descriptor (packed); reclaim when the free count falls below a threshold |
//! | ring (receiver) | pop chain (validated, DESIGN §5) with the buffers of the next 16 available chains prefetched; used elements of a burst published as one IN_ORDER element with one `used.idx` store (split) / one descriptor (packed) | same | pop a burst of up to 32 after one `avail.idx` read; shadow used ring flushed once per burst |
//! | payload | header read + **one copy** from the driver's buffer into a `Pair` slot (`NetBackend::send_slices`), then **a second copy** out of the slot by the consumer (`PairEnd::recv_burst`, same thread) | **one copy** into the sink's buffer | **one copy** into an mbuf, freed in bulk by rxonly |
//! | hand-off | lock-free SPSC ring of the `Pair` | none | none |
//!
//! So `net-pps-sink` is the like-for-like comparison with testpmd; `net-pps` does one more copy and the `Pair`.
//! `--callgrind <split|packed> [--sink]` runs the same steps single-threaded for instruction counting (see
//! `tests/benches/net-callgrind.sh`).
//!
//! Transport: the driver runs over `virtio_mmio::MmioTransport` on a `Mutex<MmioDevice<NetDevice>>` (the
//! in-process transport the virtio-net tests use, in its thread-safe form). Setup (feature negotiation, queue
//! registers, DRIVER_OK) goes through the registers as usual. During the measurement the device thread holds the
//! device's lock and spin-polls `process_tx`; the driver's `QueueNotify` writes are counted and dropped (as an
//! ioeventfd nobody waits on), so nothing but the rings and the backend is shared between the threads. Both sides
//! SPIN-POLL: the driver suppresses TX interrupts (`disable_interrupts`) and queues bursts of [`BURST`] frames with
//! one notification decision each (`send_burst`, completed slots reclaimed lazily); the device runs in TX polling
//! mode (`set_tx_polling`): driver notifications stay off and `process_tx` returns when the ring is empty, without
//! the re-enable/barrier/re-check (every `ours` case, sink included).
//! Features: VERSION_1, EVENT_IDX, IN_ORDER, MRG_RXBUF (+ RING_PACKED), queues of 256 entries (virtio-user's
//! defaults in DPDK include `in_order=1` and `mrg_rxbuf=1`; with IN_ORDER our device returns each TX burst as one
//! used element).
//!
//! Run with `cargo bench -p virtio-sdk-tests --bench net` or `cargo xtask bench net` (about 90 s on two idle cores).
//! Options after `--`: `--quick` (one short run per case), `--no-dpdk`, `--filter SUBSTRING`, `--runs N`,
//! `--seconds S` (measured seconds per run of ours), `--verbose` (every run, testpmd's output), `--no-in-order`
//! (do not offer VIRTIO_F_IN_ORDER to our driver), `--thp` (a
//! diagnostic: `madvise(MADV_HUGEPAGE)` on the driver's memory; TX frames up to 2 KiB with their header go to 2 KiB
//! slots, larger ones to 64 KiB slots).
//!
//! Noise control as in `ring.rs`: runs during which other processes used the CPUs are repeated (twice at most) and
//! medians are reported; the 1-minute load average and the CPU use of others are printed first.

// A benchmark program, not library code: setup failures abort with a message (`expect`, `panic!`), and small fixed
// tables are indexed directly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::hint::spin_loop;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bench_report::{Better, Report, OURS};
use virtio_core::{DeviceAddr, DeviceSlice, Features, HeapMemory};
use virtio_mmio::{IrqLine, MmioDevice, MmioInterrupt, MmioRegisters, MmioTransport, MmioVersion};
use virtio_net::backend::{BackendError, NetBackend, SendStatus};
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{DmaRegion, NetDriver, NetDriverConfig};
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::wire::{feature, HeaderRepr};

/// `impl` name of DPDK's testpmd pair.
const DPDK: &str = "dpdk";

const MEM_BASE: u64 = 0x10_0000;
/// Rings, 256 TX slots (2 KiB small + header + 64 KiB big buffers), 256 RX buffers of 2 KiB.
const MEM_LEN: usize = 32 << 20;
const QUEUE_SIZE: u16 = 256;
/// Frames per `NetDriver::send_burst` call.
const BURST: usize = 32;
/// Bytes of virtio-net header (modern form) the `Pair` keeps in front of each frame.
const VNET_HDR: usize = 12;

type Mem = Arc<HeapMemory>;
type Net<B> = virtio_net::device::NetDevice<B, Mem, MmioInterrupt>;
type Shared<B> = Arc<Mutex<MmioDevice<Net<B>>>>;
type Driver<B> = NetDriver<MmioTransport<PollRegs<B>>, Mem>;

/// `--thp`: back the driver's memory (rings and buffers) with transparent huge pages.
static THP: AtomicBool = AtomicBool::new(false);

/// `--no-in-order`: do not offer VIRTIO_F_IN_ORDER (an A/B switch; DPDK's virtio-user negotiates it by default).
static NO_IN_ORDER: AtomicBool = AtomicBool::new(false);

/// Whether to print every run.
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Other work above this many CPUs during a run makes it "contended": it is retried (twice at most).
const CONTENDED_CPUS: f64 = 0.2;

#[derive(Debug, Clone, Copy)]
struct Params {
    runs: usize,
    seconds: f64,
}

fn main() {
    // `cargo bench` passes `--bench`; anything else we do not know is ignored too.
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value_of = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    let quick = flag("--quick");
    let filter = value_of("--filter");
    let selected = |case: &str| filter.as_deref().is_none_or(|f| case.contains(f));
    let mut params = if quick {
        Params {
            runs: 1,
            seconds: 0.3,
        }
    } else {
        Params {
            runs: 3,
            seconds: 1.0,
        }
    };
    if let Some(runs) = value_of("--runs").and_then(|v| v.parse::<usize>().ok()) {
        params.runs = runs.max(1);
    }
    if let Some(s) = value_of("--seconds").and_then(|v| v.parse::<f64>().ok()) {
        params.seconds = s.clamp(0.05, 60.0);
    }
    NO_IN_ORDER.store(flag("--no-in-order"), Ordering::Relaxed);
    if let Some(format) = value_of("--callgrind") {
        let bursts = value_of("--bursts")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(20_000);
        callgrind(&format, flag("--sink"), bursts);
        return;
    }
    VERBOSE.store(flag("--verbose"), Ordering::Relaxed);
    THP.store(flag("--thp"), Ordering::Relaxed);
    let started = Instant::now();
    let mut report = Report::new("net");

    println!("== machine");
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1 = loadavg
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok());
    println!("   /proc/loadavg: {}", loadavg.trim());
    let idle_use = cpu_use_while_idle(Duration::from_millis(500));
    if let Some((busy, steal)) = idle_use {
        println!("   CPUs busy with other work while this program slept 0.5 s: {busy:.2}; hypervisor steal: {steal:.2}");
    }
    // The load average lags by minutes (it still counts work that just ended), so the verdict rests on measured CPU
    // use: the probe above, then every run's own meter. A high load average is reported but not decisive.
    let mut quiet =
        idle_use.is_none_or(|(busy, steal)| busy <= CONTENDED_CPUS && steal <= CONTENDED_CPUS);
    if quiet {
        println!("   CPUs are QUIET (other work <= {CONTENDED_CPUS} CPUs)");
        if load1.is_some_and(|l| l >= 1.0) {
            println!("   (the 1-minute load average is still high from earlier work; it lags, the probe does not)");
        }
    } else {
        println!("   WARNING: machine is NOT QUIET (other processes use the CPUs): numbers are depressed");
    }
    let pinned =
        available_cpus() >= 2 && thread::available_parallelism().map_or(1, usize::from) >= 2;
    if !pinned {
        println!("   WARNING: fewer than 2 usable CPUs: driver and device share one core (numbers meaningless)");
    }

    println!();
    println!(
        "== ours: NetDriver::send_burst x{BURST} (CPU 0) -> NetDevice::process_tx, TX polling mode (CPU 1) -> backend, both threads spin-poll"
    );
    println!("   (driver TX interrupts suppressed; QueueNotify writes dropped; device TX polling mode: notifications stay off)");
    println!(
        "   {} run(s) of {:.1} s per case after 0.2 s warm-up, median reported",
        params.runs, params.seconds
    );
    let mut ours_pps = [None, None];
    for (fi, packed) in [false, true].into_iter().enumerate() {
        let format = if packed { "packed" } else { "split" };
        let cases: [(String, usize, bool); 4] = [
            (format!("net-pps/{format}/64B"), 64, false),
            (format!("net-pps-sink/{format}/64B"), 64, true),
            (format!("net-gbps/{format}/1500B"), 1500, false),
            (format!("net-gbps/{format}/64KiB"), 65536, false),
        ];
        for (case, len, sink) in cases {
            if !selected(&case) {
                continue;
            }
            let run = median_run(params.runs, &[], || {
                if sink {
                    run_ours(packed, len, params.seconds, pinned, Sink::default(), |_| {})
                } else {
                    let (a, mut b) = PairEnd::pair(PairConfig::new().vnet_header_len(VNET_HDR));
                    let mut buf = vec![0u8; VNET_HDR + virtio_net::MAX_FRAME_LEN];
                    let mut frames = 0u64;
                    let mut bytes = 0u64;
                    run_ours(packed, len, params.seconds, pinned, a, move |c| {
                        let _ = b.recv_burst(0, &mut buf, usize::MAX, |frame| {
                            if let Ok(frame) = frame {
                                frames += 1;
                                bytes += (frame.len() - VNET_HDR) as u64;
                            }
                        });
                        c.frames = frames;
                        c.bytes = bytes;
                    })
                }
            });
            quiet &= run.others <= CONTENDED_CPUS;
            if case.starts_with("net-gbps") {
                report.record(&case, OURS, "Gbit/s", run.gbps, Better::Higher);
                println!(
                    "   {case:<28} {:8.2} Gbit/s ({:6.3} Mpps; {} kicks, {} device passes){}",
                    run.gbps,
                    run.mpps,
                    run.kicks,
                    run.passes,
                    contention_note(run.others)
                );
            } else {
                report.record(&case, OURS, "Mpps", run.mpps, Better::Higher);
                if !sink {
                    ours_pps[fi] = Some(run.mpps);
                }
                println!(
                    "   {case:<28} {:8.3} Mpps ({:.2} Gbit/s; {} kicks, {} device passes){}",
                    run.mpps,
                    run.gbps,
                    run.kicks,
                    run.passes,
                    contention_note(run.others)
                );
            }
        }
    }

    println!();
    println!("== dpdk: testpmd virtio-user txonly (CPU 1) -> vhost-user rxonly (CPU 0), 64 B, Rx-pps over 10 s");
    let mut dpdk_pps = [None, None];
    if flag("--no-dpdk") {
        println!("   SKIPPED: --no-dpdk");
    } else if !(selected("net-pps/split/64B") || selected("net-pps/packed/64B")) {
        println!("   SKIPPED: --filter excludes the net-pps cases");
    } else {
        match ensure_testpmd() {
            Err(why) => println!("   NOT RUN, no DPDK number recorded: {why}"),
            Ok(testpmd) => {
                for (fi, packed) in [false, true].into_iter().enumerate() {
                    let format = if packed { "packed" } else { "split" };
                    let case = format!("net-pps/{format}/64B");
                    if !selected(&case) {
                        continue;
                    }
                    // A run that other processes disturbed is repeated once; the less disturbed one is kept.
                    let mut result = run_dpdk(&testpmd, packed);
                    if let Ok((_, others)) = result {
                        if others > CONTENDED_CPUS {
                            println!("   {case:<28} contended ({others:.2} CPUs of other work): once more");
                            if let Ok(again) = run_dpdk(&testpmd, packed) {
                                if again.1 < others {
                                    result = Ok(again);
                                }
                            }
                        }
                    }
                    match result {
                        Ok((mpps, others)) => {
                            quiet &= others <= CONTENDED_CPUS;
                            report.record(&case, DPDK, "Mpps", mpps, Better::Higher);
                            dpdk_pps[fi] = Some(mpps);
                            println!("   {case:<28} {mpps:8.3} Mpps{}", contention_note(others));
                        }
                        Err(why) => {
                            println!("   {case:<28} FAILED, no DPDK number recorded: {why}")
                        }
                    }
                }
            }
        }
    }

    println!();
    if report.records().is_empty() {
        println!("no case ran: nothing to write");
        return;
    }
    report.print_table();
    match report.write() {
        Ok(path) => println!("wrote {}", path.display()),
        Err(e) => panic!("cannot write the report: {e}"),
    }
    println!();
    println!("== goals (reported, not asserted)");
    for (fi, format) in ["split", "packed"].into_iter().enumerate() {
        match (ours_pps[fi], dpdk_pps[fi]) {
            (Some(ours), Some(dpdk)) => {
                let ratio = ours / dpdk;
                let verdict = if ratio >= 1.0 { "MET" } else { "NOT MET" };
                println!(
                    "   ours >= DPDK, net-pps/{format}/64B: {ours:.3} / {dpdk:.3} Mpps = {ratio:.3} -> {verdict}"
                );
            }
            _ => {
                println!("   ours >= DPDK, net-pps/{format}/64B: not compared (a side did not run)")
            }
        }
    }
    if !quiet {
        println!("   NOTE: the machine was NOT QUIET during this run (see the warnings above): numbers are depressed");
    } else {
        println!("   the machine was quiet during this run");
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------------------------
// ours
// ---------------------------------------------------------------------------------------------------------------

/// A backend that copies each frame out (as vhost copies into an mbuf), counts and drops it (testpmd's rxonly):
/// the device's cost alone.
#[derive(Debug)]
struct Sink {
    frames: u64,
    bytes: u64,
    /// Where each frame is copied (one buffer, reused).
    scratch: Vec<u8>,
}

impl Default for Sink {
    fn default() -> Self {
        Self {
            frames: 0,
            bytes: 0,
            scratch: vec![0; VNET_HDR + virtio_net::MAX_FRAME_LEN],
        }
    }
}

impl NetBackend for Sink {
    fn vnet_header_len(&self) -> usize {
        VNET_HDR
    }

    fn send(&mut self, _pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        let len: usize = frame.iter().map(|p| p.len()).sum();
        self.frames += 1;
        self.bytes += len.saturating_sub(VNET_HDR) as u64;
        Ok(SendStatus::Sent)
    }

    fn takes_slices(&self) -> bool {
        true
    }

    fn send_slices(
        &mut self,
        _pair: u16,
        header: &[u8],
        frame: &[DeviceSlice<'_>],
    ) -> Result<SendStatus, BackendError> {
        let mut at = header.len();
        for part in frame {
            let Some(dst) = self.scratch.get_mut(at..at + part.len()) else {
                return Err(BackendError::TooLarge {
                    len: at + part.len(),
                    max: self.scratch.len(),
                });
            };
            at += part.read_at(0, dst);
        }
        self.frames += 1;
        self.bytes += at.saturating_sub(VNET_HDR) as u64;
        Ok(SendStatus::Sent)
    }

    fn send_packet(
        &mut self,
        _pair: u16,
        packet: &DeviceSlice<'_>,
    ) -> Result<SendStatus, BackendError> {
        // Header and frame in one copy, as the `Pair` takes them.
        let Some(dst) = self.scratch.get_mut(..packet.len()) else {
            return Err(BackendError::TooLarge {
                len: packet.len(),
                max: self.scratch.len(),
            });
        };
        let at = packet.read_at(0, dst);
        self.frames += 1;
        self.bytes += at.saturating_sub(VNET_HDR) as u64;
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, _pair: u16, _buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        Ok(None)
    }
}

/// Cumulative frames and bytes that came out of the backend.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    frames: u64,
    bytes: u64,
}

/// Backends whose output the device thread can count.
trait Counted: NetBackend + Send + 'static {
    /// Frames and bytes this backend itself saw (the sink); the `Pair` is counted at its other end instead.
    fn counts(&self) -> Option<Counts>;
}

impl Counted for Sink {
    fn counts(&self) -> Option<Counts> {
        Some(Counts {
            frames: self.frames,
            bytes: self.bytes,
        })
    }
}

impl Counted for PairEnd {
    fn counts(&self) -> Option<Counts> {
        None
    }
}

#[derive(Debug, Default)]
struct Line;

impl IrqLine for Line {
    fn trigger(&self) {}
}

/// `MmioRegisters` onto the shared device; once `polling` is set, `QueueNotify` writes are counted and dropped (the
/// device thread polls) so the driver never takes the device's lock during the measurement.
struct PollRegs<B: NetBackend> {
    device: Shared<B>,
    polling: Arc<AtomicBool>,
    kicks: Arc<AtomicU64>,
}

impl<B: NetBackend> std::fmt::Debug for PollRegs<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollRegs").finish_non_exhaustive()
    }
}

impl<B: NetBackend> MmioRegisters for PollRegs<B> {
    fn read8(&self, offset: usize) -> u8 {
        self.device.read8(offset)
    }
    fn read16(&self, offset: usize) -> u16 {
        self.device.read16(offset)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.device.read32(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.device.write8(offset, value);
    }
    fn write16(&self, offset: usize, value: u16) {
        self.device.write16(offset, value);
    }
    fn write32(&self, offset: usize, value: u32) {
        if offset as u64 == virtio_mmio::regs::QUEUE_NOTIFY && self.polling.load(Ordering::Relaxed)
        {
            self.kicks.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.device.write32(offset, value);
    }
}

/// One run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    mpps: f64,
    gbps: f64,
    /// QueueNotify writes the driver made (dropped).
    kicks: u64,
    /// `process_tx` calls that moved at least one frame.
    passes: u64,
    /// CPUs' worth of other processes' work (and hypervisor steal) during the run.
    others: f64,
}

/// A `len`-byte broadcast frame with a counting pattern.
fn test_frame(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i < 6 {
                0xff
            } else {
                u8::try_from(i % 251).unwrap_or(0)
            }
        })
        .collect()
}

/// The driver over the thread-safe MMIO transport on a device with `backend`, negotiated (split or packed), with
/// TX interrupts suppressed and `QueueNotify` writes dropped from now on. Returns the driver, the device and the
/// dropped-kick counter.
fn setup<B: NetBackend>(packed: bool, backend: B) -> (Driver<B>, Shared<B>, Arc<AtomicU64>) {
    let memory: Mem =
        Arc::new(HeapMemory::new(DeviceAddr::new(MEM_BASE), MEM_LEN).expect("heap memory"));
    if THP.load(Ordering::Relaxed) {
        let all = virtio_core::DeviceSlice::new(&*memory, DeviceAddr::new(MEM_BASE), MEM_LEN)
            .expect("whole memory");
        // SAFETY: the range is the heap memory's own allocation, alive for this call; MADV_HUGEPAGE only changes
        // how the kernel backs it.
        unsafe { libc::madvise(all.as_ptr().cast(), MEM_LEN, libc::MADV_HUGEPAGE) };
    }
    // IN_ORDER as DPDK's virtio-user negotiates it by default (`in_order=1`, which its vhost-user supports).
    let mut rings = Features::VERSION_1 | Features::EVENT_IDX;
    if !NO_IN_ORDER.load(Ordering::Relaxed) {
        rings |= Features::IN_ORDER;
    }
    if packed {
        rings |= Features::RING_PACKED;
    }
    let net: Net<B> = NetDeviceBuilder::new()
        .queue_size(QUEUE_SIZE)
        .offer(rings | feature::MRG_RXBUF)
        .build(backend);
    let device: Shared<B> = Arc::new(Mutex::new(
        MmioDevice::new(net, memory.clone(), Arc::new(Line), MmioVersion::Modern)
            .expect("mmio device"),
    ));
    let polling = Arc::new(AtomicBool::new(false));
    let kicks = Arc::new(AtomicU64::new(0));
    let regs = PollRegs {
        device: device.clone(),
        polling: polling.clone(),
        kicks: kicks.clone(),
    };
    let transport = MmioTransport::from_registers(regs, 0x200).expect("mmio transport");
    let region = DmaRegion {
        base: DeviceAddr::new(MEM_BASE),
        len: MEM_LEN,
    };
    let config = NetDriverConfig::new()
        .supported(rings | feature::MRG_RXBUF | feature::MAC | feature::STATUS)
        .queue_size(QUEUE_SIZE);
    let mut driver = NetDriver::new(transport, memory, region, config).expect("net driver");
    assert_eq!(
        driver.features().contains(Features::RING_PACKED),
        packed,
        "ring format not negotiated"
    );
    driver.disable_interrupts(NetDriver::<MmioTransport<PollRegs<B>>, Mem>::tx_queue(0));
    polling.store(true, Ordering::SeqCst);

    (driver, device, kicks)
}

/// Our driver sending `len`-byte frames to our device over `backend` for `seconds`; `drain` counts the frames that
/// came out of the backend (called on the device thread after each `process_tx`).
fn run_ours<B: Counted>(
    packed: bool,
    len: usize,
    seconds: f64,
    pin: bool,
    backend: B,
    mut drain: impl FnMut(&mut Counts) + Send,
) -> Run {
    let (mut driver, device, kicks) = setup(packed, backend);

    let frame = test_frame(len);
    let header = HeaderRepr::new();
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(2);
    let warmup = Duration::from_millis(200);
    let window = Duration::from_secs_f64(seconds);

    let (result, passes) = thread::scope(|s| {
        let device_thread = s.spawn(|| {
            if pin {
                pin_to_cpu(1);
            }
            let mut guard = device.lock().unwrap_or_else(PoisonError::into_inner);
            let net = guard.device_mut();
            net.set_tx_polling(0, true).expect("TX polling mode");
            let mut counts = Counts::default();
            let mut passes = 0u64;
            barrier.wait();
            let start = Instant::now();
            let mut mark: Option<(Instant, Counts)> = None;
            let mut polls = 0u32;
            loop {
                match net.process_tx(0) {
                    Ok(0) => spin_loop(),
                    Ok(_) => passes += 1,
                    Err(e) => panic!("process_tx: {e}"),
                }
                match net.backend().counts() {
                    Some(c) => counts = c,
                    None => drain(&mut counts),
                }
                polls = polls.wrapping_add(1);
                if polls % 64 != 0 {
                    continue;
                }
                let now = Instant::now();
                match mark {
                    None if now - start >= warmup => mark = Some((now, counts)),
                    Some((t0, c0)) if now - t0 >= window => {
                        stop.store(true, Ordering::Relaxed);
                        let secs = (now - t0).as_secs_f64();
                        let frames = counts.frames - c0.frames;
                        let bytes = counts.bytes - c0.bytes;
                        let counters = net.counters();
                        assert_eq!(counters.total_drops(), 0, "device dropped frames");
                        break (
                            (frames as f64 / secs / 1e6, bytes as f64 * 8.0 / secs / 1e9),
                            passes,
                        );
                    }
                    _ => {}
                }
            }
        });

        if pin {
            pin_to_cpu(0);
        }
        barrier.wait();
        let burst: [&[u8]; BURST] = [&frame; BURST];
        while !stop.load(Ordering::Relaxed) {
            match driver.send_burst(0, &burst, &header) {
                Ok(0) => spin_loop(),
                Ok(_) => {}
                Err(e) => panic!("send_burst: {e}"),
            }
        }
        device_thread.join().expect("device thread")
    });
    if pin {
        unpin();
    }
    Run {
        mpps: result.0,
        gbps: result.1,
        kicks: kicks.load(Ordering::Relaxed),
        passes,
        others: 0.0,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// callgrind mode
// ---------------------------------------------------------------------------------------------------------------

/// `--callgrind <split|packed> [--sink] [--bursts N]`: one thread alternates `send_burst` (x[`BURST`] 64-byte
/// frames), `process_tx` and (with the `Pair`) draining the pair's other end, `bursts` times after 200 warm-up
/// bursts. Meant to run under `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=...` (see
/// `tests/benches/net-callgrind.sh`): the three steps are the non-inlined `cg_driver`, `cg_device`, `cg_drain`,
/// so their inclusive instruction counts divided by the frames printed are the per-frame costs of each side.
fn callgrind(format: &str, sink: bool, bursts: usize) {
    let packed = match format {
        "split" => false,
        "packed" => true,
        other => panic!("--callgrind takes split or packed, not {other}"),
    };
    let frames = if sink {
        callgrind_loop(packed, bursts, Sink::default(), |_, _| 0)
    } else {
        let (a, b) = PairEnd::pair(PairConfig::new().vnet_header_len(VNET_HDR));
        let mut buf = vec![0u8; VNET_HDR + virtio_net::MAX_FRAME_LEN];
        let mut b = b;
        callgrind_loop(packed, bursts, a, move |_, measured| {
            if measured {
                cg_drain(&mut b, &mut buf)
            } else {
                drain_pair(&mut b, &mut buf)
            }
        })
    };
    println!(
        "callgrind {format}{}: {frames} frames measured",
        if sink { " sink" } else { "" }
    );
}

fn callgrind_loop<B: NetBackend>(
    packed: bool,
    bursts: usize,
    backend: B,
    mut drain: impl FnMut(&mut Net<B>, bool) -> u64,
) -> u64 {
    let (mut driver, device, _kicks) = setup(packed, backend);
    let frame = test_frame(64);
    let header = HeaderRepr::new();
    let burst: [&[u8]; BURST] = [&frame; BURST];
    let mut guard = device.lock().unwrap_or_else(PoisonError::into_inner);
    let net = guard.device_mut();
    net.set_tx_polling(0, true).expect("TX polling mode");
    let (mut sent, mut moved, mut drained) = (0u64, 0u64, 0u64);
    for i in 0..200 + bursts {
        let measured = i >= 200;
        let s = if measured {
            cg_driver(&mut driver, &burst, &header)
        } else {
            driver.send_burst(0, &burst, &header).expect("send_burst")
        };
        let m = if measured {
            cg_device(net)
        } else {
            net.process_tx(0).expect("process_tx")
        };
        let d = drain(net, measured);
        if measured {
            sent += s as u64;
            moved += m as u64;
            drained += d;
        }
    }
    assert_eq!(net.counters().total_drops(), 0, "device dropped frames");
    assert_eq!(
        sent, moved,
        "device moved a different number of frames than the driver sent"
    );
    if drained != 0 {
        assert_eq!(
            drained, moved,
            "the pair delivered a different number of frames"
        );
    }
    moved
}

#[inline(never)]
fn cg_driver<B: NetBackend>(driver: &mut Driver<B>, burst: &[&[u8]], header: &HeaderRepr) -> usize {
    driver.send_burst(0, burst, header).expect("send_burst")
}

#[inline(never)]
fn cg_device<B: NetBackend>(net: &mut Net<B>) -> usize {
    net.process_tx(0).expect("process_tx")
}

#[inline(never)]
fn cg_drain(end: &mut PairEnd, buf: &mut [u8]) -> u64 {
    drain_pair(end, buf)
}

fn drain_pair(end: &mut PairEnd, buf: &mut [u8]) -> u64 {
    let mut n = 0;
    let _ = end.recv_burst(0, buf, usize::MAX, |frame| n += u64::from(frame.is_ok()));
    n
}

// ---------------------------------------------------------------------------------------------------------------
// DPDK
// ---------------------------------------------------------------------------------------------------------------

/// `dpdk-testpmd`'s path, installing Debian's `dpdk-dev` (apt-get update first) if it is missing and we are root.
fn ensure_testpmd() -> Result<String, String> {
    if let Some(path) = which("dpdk-testpmd") {
        return Ok(path);
    }
    // SAFETY: `geteuid` only reads the process's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || which("apt-get").is_none() {
        return Err("dpdk-testpmd is not installed (Debian package dpdk-dev) and this process cannot install it \
                    (needs root and apt-get)"
            .into());
    }
    println!("   dpdk-testpmd missing: apt-get update && apt-get install -y dpdk-dev");
    for args in [
        &["update", "-q"][..],
        &["install", "-y", "-q", "dpdk-dev"][..],
    ] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "apt-get {} failed ({}): {}",
                args.join(" "),
                out.status,
                err.trim()
            ));
        }
    }
    which("dpdk-testpmd").ok_or_else(|| "dpdk-dev installed but dpdk-testpmd is not on PATH".into())
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.to_str().map(str::to_owned))
}

/// A child whose stdout is collected by a thread.
struct Testpmd {
    child: Child,
    output: thread::JoinHandle<String>,
}

fn spawn_testpmd(testpmd: &str, args: &[String]) -> Result<Testpmd, String> {
    let mut child = Command::new(testpmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {testpmd}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&line);
            s.push('\n');
        }
        s
    });
    let output = thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            s.push_str(&line);
            s.push('\n');
        }
        s.push_str(&err_thread.join().unwrap_or_default());
        s
    });
    Ok(Testpmd { child, output })
}

/// Waits up to `timeout` for the child to exit, then kills it; returns its output.
fn finish(mut t: Testpmd, timeout: Duration) -> String {
    let until = Instant::now() + timeout;
    loop {
        match t.child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= until => {
                let _ = t.child.kill();
                let _ = t.child.wait();
                break;
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
        }
    }
    t.output.join().unwrap_or_default()
}

fn send_line(t: &mut Testpmd, line: &str) {
    if let Some(stdin) = t.child.stdin.as_mut() {
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

/// The numbers after each `Rx-pps:` in testpmd's output.
fn rx_pps(output: &str) -> Vec<u64> {
    output
        .match_indices("Rx-pps:")
        .filter_map(|(at, tag)| {
            output[at + tag.len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n      ")
}

/// testpmd vhost rxonly (CPU 0) ← virtio-user txonly (CPU 1), as `../shared/ENVIRONMENT.md` gives it; returns the
/// receiver's Rx-pps (Mpps) of the second `show port stats all` (averaged over the 10 s since the first), and the
/// CPUs' worth of work of processes other than this one and the two testpmds during those 10 s.
fn run_dpdk(testpmd: &str, packed: bool) -> Result<(f64, f64), String> {
    let pid = std::process::id();
    let sock = format!("/tmp/virtio-sdk-bench-net-{pid}.sock");
    let _ = std::fs::remove_file(&sock);
    let (vh, vu) = (format!("vh{pid}"), format!("vu{pid}"));
    let s = |v: &str| v.to_owned();
    let receiver_args = vec![
        s("--lcores"),
        s("0@0,1@0"),
        s("--no-pci"),
        s("--no-huge"),
        s("-m"),
        s("512"),
        format!("--file-prefix={vh}"),
        s("--vdev"),
        format!("net_vhost0,iface={sock},queues=1"),
        s("--"),
        s("-i"),
        s("--nb-cores=1"),
        s("--total-num-mbufs=16384"),
        s("--forward-mode=rxonly"),
        s("--auto-start"),
    ];
    let packed_arg = if packed { ",packed_vq=1" } else { "" };
    let sender_args = vec![
        s("--lcores"),
        s("0@1,1@1"),
        s("--no-pci"),
        s("--no-huge"),
        s("-m"),
        s("512"),
        format!("--file-prefix={vu}"),
        s("--vdev"),
        format!("net_virtio_user0,path={sock},queues=1{packed_arg}"),
        s("--"),
        s("-i"),
        s("--nb-cores=1"),
        s("--total-num-mbufs=16384"),
        s("--forward-mode=txonly"),
        s("--txpkts=64"),
        s("--auto-start"),
    ];
    let mut receiver = spawn_testpmd(testpmd, &receiver_args)?;
    thread::sleep(Duration::from_secs(3));
    let mut sender = match spawn_testpmd(testpmd, &sender_args) {
        Ok(t) => t,
        Err(e) => {
            send_line(&mut receiver, "quit");
            finish(receiver, Duration::from_secs(5));
            return Err(e);
        }
    };
    let pids = [receiver.child.id(), sender.child.id()];
    // The receiver's script: sleep 9; show port stats all; sleep 10; show port stats all; stop; quit.
    thread::sleep(Duration::from_secs(9));
    send_line(&mut receiver, "show port stats all");
    let before = CpuMeter::now(&pids);
    thread::sleep(Duration::from_secs(10));
    let after = CpuMeter::now(&pids);
    send_line(&mut receiver, "show port stats all");
    thread::sleep(Duration::from_millis(300));
    send_line(&mut receiver, "stop");
    send_line(&mut receiver, "quit");
    let rx_out = finish(receiver, Duration::from_secs(10));
    send_line(&mut sender, "stop");
    send_line(&mut sender, "quit");
    let tx_out = finish(sender, Duration::from_secs(10));
    let _ = std::fs::remove_file(&sock);
    for prefix in [&vh, &vu] {
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(prefix));
    }
    let others = before.zip(after).map_or(0.0, |(a, b)| {
        let (others, steal) = a.others_since(b);
        others + steal
    });
    if VERBOSE.load(Ordering::Relaxed) {
        println!("   --- receiver output ---\n      {}", tail(&rx_out, 40));
        println!("   --- sender output ---\n      {}", tail(&tx_out, 20));
    }
    let pps = rx_pps(&rx_out);
    match pps.get(1) {
        Some(&p) if p > 0 => Ok((p as f64 / 1e6, others)),
        Some(_) => Err(format!(
            "the receiver's second Rx-pps is 0 (no traffic); receiver output ends:\n      {}\n   sender output ends:\n      {}",
            tail(&rx_out, 15),
            tail(&tx_out, 15)
        )),
        None => Err(format!(
            "no second `Rx-pps` in the receiver's output (found {}); it ends:\n      {}\n   sender output ends:\n      {}",
            pps.len(),
            tail(&rx_out, 15),
            tail(&tx_out, 15)
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// noise control (as in ring.rs)
// ---------------------------------------------------------------------------------------------------------------

fn contention_note(others: f64) -> String {
    if others > CONTENDED_CPUS {
        format!(" [CONTENDED: {others:.2} CPUs of other work]")
    } else {
        String::new()
    }
}

/// Runs `run` `runs` times and returns the median run (by Mpps). A run during which processes other than this one
/// (and `pids`) used the CPUs is discarded and repeated, twice at most.
fn median_run(runs: usize, pids: &[u32], mut run: impl FnMut() -> Run) -> Run {
    let mut all = Vec::new();
    let mut retried = 0;
    for _ in 0..runs.max(1) {
        for attempt in 0..3 {
            let before = CpuMeter::now(pids);
            let result = run();
            let others = before.zip(CpuMeter::now(pids)).map_or(0.0, |(a, b)| {
                let (others, steal) = a.others_since(b);
                others + steal
            });
            if others <= CONTENDED_CPUS || attempt == 2 {
                all.push(Run { others, ..result });
                break;
            }
            retried += 1;
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        let each: Vec<String> = all.iter().map(|r| format!("{:.3}", r.mpps)).collect();
        println!("   [runs (Mpps): {}; {retried} retried]", each.join(" "));
    }
    all.sort_by(|a, b| a.mpps.total_cmp(&b.mpps));
    all[all.len() / 2]
}

/// System-wide CPU time and the CPU time of this process plus `pids`, to tell how much other work shared the CPUs.
#[derive(Debug, Clone, Copy)]
struct CpuMeter {
    total: u64,
    busy: u64,
    steal: u64,
    own: u64,
}

/// utime + stime of `/proc/<who>/stat`.
fn process_ticks(who: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    Some(
        after_comm
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum(),
    )
}

impl CpuMeter {
    fn now(pids: &[u32]) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        let steal = *fields.get(7)?;
        let mut own = process_ticks("self")?;
        for pid in pids {
            own += process_ticks(&pid.to_string()).unwrap_or(0);
        }
        Some(Self {
            total,
            busy: total - idle - steal,
            steal,
            own,
        })
    }

    /// CPUs' worth of (other processes' work, hypervisor steal) since `self`.
    fn others_since(self, later: Self) -> (f64, f64) {
        let cpus = available_cpus() as f64;
        let ticks = later.total.saturating_sub(self.total).max(1) as f64;
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        let others = busy.saturating_sub(own) as f64 / ticks * cpus;
        let steal = later.steal.saturating_sub(self.steal) as f64 / ticks * cpus;
        (others, steal)
    }
}

/// CPUs' worth of other work and steal over `window` while this program sleeps.
fn cpu_use_while_idle(window: Duration) -> Option<(f64, f64)> {
    let before = CpuMeter::now(&[])?;
    thread::sleep(window);
    Some(before.others_since(CpuMeter::now(&[])?))
}

/// CPUs online. Not `available_parallelism`, which shrinks to 1 once this thread is pinned.
fn available_cpus() -> usize {
    // SAFETY: `sysconf` only reads a system value.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

fn set_affinity(cpus: &[usize]) {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` is below the number of CPUs, far below CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid `cpu_set_t` of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        eprintln!(
            "warning: cannot set thread affinity to {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Pins the calling thread to `cpu` (best effort).
fn pin_to_cpu(cpu: usize) {
    set_affinity(&[cpu]);
}

/// Lets the calling thread run on every CPU again (children started later inherit the mask: testpmd pins itself).
fn unpin() {
    let all: Vec<usize> = (0..available_cpus()).collect();
    set_affinity(&all);
}
