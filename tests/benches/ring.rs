//! `ring` benchmark: virtio-sdk's split and packed rings against the rust-vmm and rcore crates.
//!
//! Two families of cases, each written to `target/bench/ring.json` through `bench-report`:
//!
//! - `device-pop-add-used/<split|packed>/chain<1|4>` — ns per descriptor for a device (one thread) draining a full
//!   queue of 256 descriptors with pop + add_used, compared with rust-vmm `virtio-queue` 0.18 on the very same split
//!   rings in the same `vm_memory::GuestMemoryMmap` (ours runs over it through `virtio_core::VmMemory`). An extra
//!   `/heapmem` case runs ours over `HeapMemory`.
//! - `ring-2thread/<split|packed>/q<256|1024>/batch<1|32>` — million buffers per second between our driver on one
//!   core and our device on the other, compared (split only) with rcore `virtio-drivers` 0.13 `VirtQueue` as the
//!   driver and `virtio-queue` as the device. Both sides spin-poll; notifications are suppressed.
//!
//! Run with `cargo bench -p virtio-sdk-tests --bench ring` or `cargo xtask bench ring` (about a minute on two idle
//! cores). Options after `--`: `--quick` (a few seconds, rougher numbers), `--filter SUBSTRING` (only matching
//! cases), `--runs N` and `--buffers N` (two-thread runs per case and buffers per run), `--verbose` (every run).
//!
//! Noise control: single-thread cases pin to CPU 0 and sample the implementations interleaved; two-thread runs
//! during which other processes used the CPUs are discarded and repeated (at most twice), and medians are reported.
//! `valgrind --tool=callgrind --toggle-collect='*drain_ours*'` (or `*drain_virtio_queue*`) counts the instructions
//! of exactly the timed device work.

// A benchmark program, not library code: setup failures and ring errors abort with a message (`expect`, `panic!`),
// and small fixed tables are indexed by slot numbers that the queues themselves bound.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::hint::{black_box, spin_loop};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use bench_report::{Better, Report, OURS};
use virtio_core::{
    Buffer, Chain, DeviceAddr, DeviceQueue, DriverQueue, Features, HeapMemory, QueueConfig,
    RingFormat, RingLayout, RingMemory, UsedToken, VmMemory,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap};

/// `impl` name of rust-vmm virtio-queue (device role).
const VIRTIO_QUEUE: &str = "virtio-queue";
/// `impl` name of rcore virtio-drivers (driver role) paired with virtio-queue (device role).
const VD_VQ: &str = "virtio-drivers+virtio-queue";

/// Guest memory: one region at guest address 0.
const MEM_LEN: usize = 4 << 20;
/// Our rings start here (both tests use a fresh memory per case).
const RING_BASE: u64 = 0;
/// `[DMA_POOL_START, DMA_POOL_END)` is where the virtio-drivers HAL allocates its rings.
const DMA_POOL_START: u64 = 0x10_0000;
const DMA_POOL_END: u64 = 0x20_0000;
/// Payload buffers: `BUF_LEN` bytes each, one per slot.
const PAYLOAD_BASE: u64 = 0x20_0000;
const BUF_LEN: u32 = 64;

/// Queue size of the device-only cases.
const DEVICE_QSIZE: u16 = 256;

/// Run lengths.
#[derive(Debug, Clone, Copy)]
struct Params {
    /// Device cases: samples (the median is reported) and timed rounds per sample.
    samples: usize,
    rounds: usize,
    /// Two-thread cases: buffers per run, and runs (the median is reported).
    buffers: u64,
    runs: usize,
}

fn main() {
    // `cargo bench` passes `--bench`; anything else we do not know is ignored too.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--filter SUBSTRING`: run only the cases whose name contains it.
    let filter = args
        .windows(2)
        .find(|w| w[0] == "--filter")
        .map(|w| w[1].clone());
    let selected = |case: &str| filter.as_deref().is_none_or(|f| case.contains(f));
    let params = if quick {
        Params {
            samples: 5,
            rounds: 500,
            buffers: 1_000_000,
            runs: 1,
        }
    } else {
        Params {
            samples: 21,
            rounds: 2_000,
            buffers: 2_000_000,
            runs: 5,
        }
    };
    // `--runs N`, `--buffers N`: override the two-thread run count and length; `--verbose`: print every run.
    let value_of = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .and_then(|w| w[1].parse::<u64>().ok())
    };
    let mut params = params;
    if let Some(runs) = value_of("--runs") {
        params.runs = usize::try_from(runs).unwrap_or(1);
    }
    if let Some(buffers) = value_of("--buffers") {
        params.buffers = buffers;
    }
    VERBOSE.store(args.iter().any(|a| a == "--verbose"), Ordering::Relaxed);
    let started = Instant::now();
    let mut report = Report::new("ring");

    println!("== device-pop-add-used: one thread, queue size {DEVICE_QSIZE}, ns per descriptor (lower is better)");
    println!("   (the driver refills the full queue between timed rounds; only the device's drain is timed;");
    println!(
        "    implementations are sampled interleaved and each one's median sample is reported)"
    );
    // CPUs this process may run on (the affinity mask), read before pinning anything.
    let usable_cpus = thread::available_parallelism().map_or(1, usize::from);
    // The single-threaded cases run on CPU 0 too, as the two-thread driver does (no migrations mid-sample).
    let pinned = usable_cpus >= 2 && available_cpus() >= 2;
    if pinned {
        pin_to_cpu(0);
    }
    let timer = timer_overhead_ns();
    println!("   timer overhead subtracted per round: {timer:.1} ns");
    let mut device_ratios = Vec::new();
    for format in [RingFormat::Split, RingFormat::Packed] {
        for chain_len in [1usize, 4] {
            let case = format!(
                "device-pop-add-used/{}/chain{chain_len}",
                format_name(format)
            );
            if !selected(&case) {
                continue;
            }
            // Every implementation gets its own memory. `VmMemory` owns its `GuestMemoryBackend` (vm-memory
            // implements the trait for the collection, not for `&_`); cloning a `GuestMemoryMmap` clones `Arc`s.
            let vm = VmMemory::new(guest_memory());
            let heap = HeapMemory::new(DeviceAddr::new(0), MEM_LEN).expect("heap memory");
            let gm = guest_memory();
            let mut samplers = vec![
                device_ours(&vm, format, chain_len, timer),
                device_ours(&heap, format, chain_len, timer),
            ];
            if format == RingFormat::Split {
                samplers.push(device_virtio_queue(&gm, chain_len, timer));
            }
            let results = sample_interleaved(&mut samplers, params);
            let (ours, ours_heap) = (results[0], results[1]);
            report.record(&case, OURS, "ns/desc", ours, Better::Lower);
            report.record(
                &format!("{case}/heapmem"),
                OURS,
                "ns/desc",
                ours_heap,
                Better::Lower,
            );
            print!("   {case:<34} ours {ours:6.2}  ours/heapmem {ours_heap:6.2}");
            if let Some(&theirs) = results.get(2) {
                report.record(&case, VIRTIO_QUEUE, "ns/desc", theirs, Better::Lower);
                print!(
                    "  virtio-queue {theirs:6.2}  ours/theirs {:.3}",
                    ours / theirs
                );
                device_ratios.push((case.clone(), ours / theirs));
            }
            println!();
        }
    }

    println!();
    println!("== ring-2thread: driver thread and device thread pinned to separate cores, Mbuf/s (higher is better)");
    println!("   both sides SPIN-POLL: driver disable_callbacks(), device disable_notification(); no thread sleeps");
    println!("   payload: one 64-byte device-readable buffer per chain; the driver writes a sequence number into it,");
    println!("   the device reads those 8 bytes and the sums are checked at the end");
    if let Some((busy, steal)) = cpu_use_while_idle(Duration::from_millis(300)) {
        println!("   CPUs busy with other work while this program slept: {busy:.2} CPUs; hypervisor steal: {steal:.2} CPUs");
        if busy > 0.2 || steal > 0.2 {
            println!("   WARNING: spin-polling threads share their cores with other work: the numbers below are depressed");
        }
    }
    let two_thread_sizes: &[u16] = if pinned {
        &[256, 1024]
    } else {
        // Two spin-polling threads on one CPU only measure the scheduler's time slice.
        println!("   SKIPPED: this process may use fewer than 2 CPUs ({usable_cpus})");
        &[]
    };
    let mut two_thread = Vec::new();
    for &qsize in two_thread_sizes {
        for batch in [1usize, 32] {
            let label = format!("q{qsize}/batch{batch}");
            let (mut ours_split, mut vs_theirs, mut packed_vs_split) = (None, None, None);
            for format in [RingFormat::Split, RingFormat::Packed] {
                let case = format!("ring-2thread/{}/{label}", format_name(format));
                if !selected(&case) {
                    continue;
                }
                let run = median_run(params.runs, || {
                    two_thread_ours(format, qsize, batch, params.buffers, pinned)
                });
                report.record(&case, OURS, "Mbuf/s", run.mbuf_s, Better::Higher);
                print!(
                    "   {case:<34} ours {:7.2} Mbuf/s ({} kicks, {} interrupts){}",
                    run.mbuf_s,
                    run.kicks,
                    run.irqs,
                    contention_note(&run)
                );
                if format == RingFormat::Split {
                    ours_split = Some(run.mbuf_s);
                    let theirs = median_run(params.runs, || match qsize {
                        256 => two_thread_vd::<256>(batch, params.buffers, pinned),
                        _ => two_thread_vd::<1024>(batch, params.buffers, pinned),
                    });
                    report.record(&case, VD_VQ, "Mbuf/s", theirs.mbuf_s, Better::Higher);
                    let ratio = run.mbuf_s / theirs.mbuf_s;
                    print!(
                        "  {VD_VQ} {:7.2} Mbuf/s ({} kicks, {} interrupts)  ours/theirs {ratio:.3}",
                        theirs.mbuf_s, theirs.kicks, theirs.irqs,
                    );
                    print!("{}", contention_note(&theirs));
                    vs_theirs = Some(ratio);
                } else if let Some(split) = ours_split {
                    let ratio = run.mbuf_s / split;
                    print!("  packed/split {ratio:.3}");
                    packed_vs_split = Some(ratio);
                }
                println!();
            }
            two_thread.push((label, vs_theirs, packed_vs_split));
        }
    }
    println!("   (kicks/interrupts count how often kick_prepare/should_notify and needs_notification said \"notify\";");
    println!("    nothing is actually signalled since both sides poll)");

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
    for (case, ratio) in &device_ratios {
        let verdict = if *ratio <= 1.0 / 3.0 {
            "MET"
        } else {
            "NOT MET"
        };
        println!(
            "   ours <= 1/3 of virtio-queue time, {case}: ours/theirs = {ratio:.3} -> {verdict}"
        );
    }
    for (case, vs_vd, packed_vs_split) in &two_thread {
        if let Some(ratio) = vs_vd {
            let verdict = if *ratio >= 1.5 { "MET" } else { "NOT MET" };
            println!("   ours >= 1.5x {VD_VQ}, split/{case}: {ratio:.2}x -> {verdict}");
        }
        if let Some(ratio) = packed_vs_split {
            let verdict = if *ratio >= 1.0 { "MET" } else { "NOT MET" };
            println!("   packed >= split (ours), {case}: packed/split = {ratio:.3} -> {verdict}");
        }
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
}

fn format_name(format: RingFormat) -> &'static str {
    match format {
        RingFormat::Split => "split",
        RingFormat::Packed => "packed",
    }
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_LEN)]).expect("guest memory")
}

/// Negotiated features of every case: VERSION_1 and EVENT_IDX, plus RING_PACKED for packed rings.
fn ring_config(format: RingFormat, size: u16) -> (QueueConfig, Features) {
    let layout = RingLayout::new(format, size);
    let config =
        QueueConfig::with_layout(size, &layout, DeviceAddr::new(RING_BASE)).expect("layout fits");
    let mut features = Features::VERSION_1 | Features::EVENT_IDX;
    if format == RingFormat::Packed {
        features |= Features::RING_PACKED;
    }
    (config, features)
}

fn payload_addr(slot: usize) -> u64 {
    PAYLOAD_BASE + slot as u64 * u64::from(BUF_LEN)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------------------------
// device-pop-add-used
// ---------------------------------------------------------------------------------------------------------------

/// The median cost of `Instant::now()` + `elapsed()`, subtracted once per timed round.
fn timer_overhead_ns() -> f64 {
    let samples = (0..10_000)
        .map(|_| {
            let start = Instant::now();
            black_box(start.elapsed()).as_nanos() as f64
        })
        .collect();
    median(samples)
}

/// One implementation set up for a device case: each call runs that many timed rounds and returns ns/descriptor.
type Sampler<'a> = Box<dyn FnMut(usize) -> f64 + 'a>;

/// Method: the driver fills the whole queue (untimed), then the device drains it (timed: `Instant` around the drain
/// only, minus the measured timer overhead); repeated `rounds` times, so the refill never counts. The result is the
/// timed total divided by the descriptors drained. The rings are hot in this core's cache for every implementation
/// alike (the refill just wrote them), so this compares the per-descriptor CPU cost of the device paths.
fn time_rounds(
    rounds: usize,
    timer_ns: f64,
    per_round: usize,
    mut refill: impl FnMut(),
    mut drain: impl FnMut() -> usize,
) -> f64 {
    let mut timed = Duration::ZERO;
    for _ in 0..rounds {
        refill();
        let start = Instant::now();
        let drained = drain();
        timed += start.elapsed();
        assert_eq!(drained, per_round, "the device must drain the whole queue");
    }
    let ns = timed.as_nanos() as f64 - timer_ns * rounds as f64;
    ns / (rounds * per_round) as f64
}

/// Runs the samplers interleaved (A B C A B C ...), so that slow phases of a noisy host hit all of them alike, and
/// returns each one's median sample. A sample during which other processes kept both CPUs busy is retried.
fn sample_interleaved(samplers: &mut [Sampler<'_>], params: Params) -> Vec<f64> {
    for sampler in samplers.iter_mut() {
        sampler((params.rounds / 5).max(1));
    }
    let mut samples = vec![Vec::new(); samplers.len()];
    for _ in 0..params.samples {
        for (sampler, mine) in samplers.iter_mut().zip(&mut samples) {
            for attempt in 0..3 {
                let before = CpuMeter::now();
                let value = sampler(params.rounds);
                let others = before.zip(CpuMeter::now()).map_or(0.0, |(a, b)| {
                    let (others, steal) = a.others_since(b);
                    others + steal
                });
                // One thread: only work that leaves it no CPU of its own disturbs it.
                if others <= available_cpus() as f64 - 1.0 || attempt == 2 {
                    mine.push(value);
                    break;
                }
            }
        }
    }
    samples.into_iter().map(median).collect()
}

/// Chains of `chain_len` device-readable buffers filling a `DEVICE_QSIZE` ring, each buffer at its own address.
fn device_chains(chain_len: usize) -> Vec<Vec<Buffer>> {
    let chains = usize::from(DEVICE_QSIZE) / chain_len;
    (0..chains)
        .map(|c| {
            (0..chain_len)
                .map(|j| Buffer::new(DeviceAddr::new(payload_addr(c * chain_len + j)), BUF_LEN))
                .collect()
        })
        .collect()
}

/// Collects everything the device returned and makes `chains` available again (untimed).
fn refill<M: RingMemory>(driver: &mut DriverQueue<M, u16>, chains: &[Vec<Buffer>]) {
    while driver.pop_used().expect("pop_used").is_some() {}
    for (token, buffers) in (0u16..).zip(chains) {
        driver.add(buffers, &[], token).expect("add");
    }
}

/// Our device draining a full queue over `memory` (`pop_into` a reusable chain, then `add_used`); our driver (same
/// memory) refills it.
fn device_ours<'a, M: RingMemory + Clone + 'a>(
    memory: M,
    format: RingFormat,
    chain_len: usize,
    timer_ns: f64,
) -> Sampler<'a> {
    let (config, features) = ring_config(format, DEVICE_QSIZE);
    let mut driver: DriverQueue<M, u16> =
        DriverQueue::new(&config, features, memory.clone(), None).expect("driver");
    driver.disable_callbacks();
    let mut device = DeviceQueue::activate(&config, features, memory).expect("device");
    let chains = device_chains(chain_len);
    let mut chain = device.new_chain();
    let per_round = chains.len() * chain_len;
    Box::new(move |rounds| {
        time_rounds(
            rounds,
            timer_ns,
            per_round,
            || refill(&mut driver, &chains),
            || drain_ours(&mut device, &mut chain),
        )
    })
}

/// The timed part for ours: pops every available chain into `chain`, touches each segment, returns it. Not inlined,
/// so that `valgrind --tool=callgrind` attributes exactly the device's work to it (one call per round).
#[inline(never)]
fn drain_ours<M: RingMemory>(device: &mut DeviceQueue<M>, chain: &mut Chain) -> usize {
    let (mut descriptors, mut bytes) = (0usize, 0u64);
    while device.pop_into(chain).expect("pop") {
        // Touch every segment: the same work as iterating virtio-queue's descriptors below.
        for segment in chain.readable().iter().chain(chain.writable()) {
            bytes += u64::from(segment.len());
            descriptors += 1;
        }
        device.add_used(chain.token(), 0).expect("add_used");
    }
    black_box(bytes);
    descriptors
}

/// The timed part for virtio-queue: pops every available chain, iterates its descriptors, returns it.
#[inline(never)]
fn drain_virtio_queue(queue: &mut Queue, gm: &GuestMemoryMmap) -> usize {
    let (mut descriptors, mut bytes) = (0usize, 0u64);
    while let Some(chain) = queue.pop_descriptor_chain(gm) {
        let head = chain.head_index();
        for desc in chain {
            bytes += u64::from(desc.len());
            descriptors += 1;
        }
        queue.add_used(gm, head, 0).expect("add_used");
    }
    black_box(bytes);
    descriptors
}

/// A rust-vmm queue configured like `config` (what a VMM does from the transport registers), ready.
fn virtio_queue_for(gm: &GuestMemoryMmap, size: u16, desc: u64, avail: u64, used: u64) -> Queue {
    let mut queue = Queue::new(size).expect("virtio-queue max size");
    queue.set_size(size);
    queue
        .try_set_desc_table_address(GuestAddress(desc))
        .expect("descriptor table");
    queue
        .try_set_avail_ring_address(GuestAddress(avail))
        .expect("avail ring");
    queue
        .try_set_used_ring_address(GuestAddress(used))
        .expect("used ring");
    queue.set_event_idx(true);
    queue.set_ready(true);
    assert!(
        queue.is_valid(gm),
        "virtio-queue rejected the configuration"
    );
    queue
}

/// virtio-queue's device (`pop_descriptor_chain`, iterate the descriptors, `add_used`) draining the same split rings,
/// prepared by our driver, in the same kind of guest memory.
fn device_virtio_queue(gm: &GuestMemoryMmap, chain_len: usize, timer_ns: f64) -> Sampler<'_> {
    let (config, features) = ring_config(RingFormat::Split, DEVICE_QSIZE);
    let mut driver: DriverQueue<_, u16> =
        DriverQueue::new(&config, features, VmMemory::new(gm.clone()), None).expect("driver");
    driver.disable_callbacks();
    let mut queue = virtio_queue_for(
        gm,
        config.size,
        config.descriptors.raw(),
        config.driver_area.raw(),
        config.device_area.raw(),
    );
    let chains = device_chains(chain_len);
    let per_round = chains.len() * chain_len;
    Box::new(move |rounds| {
        time_rounds(
            rounds,
            timer_ns,
            per_round,
            || refill(&mut driver, &chains),
            || drain_virtio_queue(&mut queue, gm),
        )
    })
}

// ---------------------------------------------------------------------------------------------------------------
// ring-2thread
// ---------------------------------------------------------------------------------------------------------------

/// One two-thread run.
#[derive(Debug, Clone, Copy)]
struct Run {
    mbuf_s: f64,
    /// Times the driver's notification check said "notify".
    kicks: u64,
    /// Times the device's notification check said "notify".
    irqs: u64,
    /// CPUs' worth of other processes' work (and hypervisor steal) during the run.
    others: f64,
}

/// A warning for a median run that other processes disturbed even after retries.
fn contention_note(run: &Run) -> String {
    if run.others > CONTENDED_CPUS {
        format!(" [CONTENDED: {:.2} CPUs of other work]", run.others)
    } else {
        String::new()
    }
}

/// Whether to print every two-thread run.
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Other work above this many CPUs during a two-thread run makes it "contended": it is retried (twice at most).
const CONTENDED_CPUS: f64 = 0.2;

/// Runs `run` `runs` times and returns the median run. A run during which other processes used the CPUs is
/// discarded and repeated (spin-polling threads that lose their core measure the scheduler, not the ring).
fn median_run(runs: usize, mut run: impl FnMut() -> Run) -> Run {
    let mut all = Vec::new();
    let mut retried = 0;
    for _ in 0..runs.max(1) {
        for attempt in 0..3 {
            let before = CpuMeter::now();
            let result = run();
            let others = before.zip(CpuMeter::now()).map_or(0.0, |(a, b)| {
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
        let each: Vec<String> = all.iter().map(|r| format!("{:.2}", r.mbuf_s)).collect();
        print!("[runs: {}; {retried} retried] ", each.join(" "));
    }
    all.sort_by(|a, b| a.mbuf_s.total_cmp(&b.mbuf_s));
    all[all.len() / 2]
}

/// System-wide and own CPU time, to tell how much other work shared the CPUs during a measurement.
#[derive(Debug, Clone, Copy)]
struct CpuMeter {
    /// All ticks of all CPUs, busy ticks of all CPUs (steal excluded), steal ticks, this process's ticks.
    total: u64,
    busy: u64,
    steal: u64,
    own: u64,
}

impl CpuMeter {
    fn now() -> Option<Self> {
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
        // /proc/self/stat: utime and stime are fields 14 and 15, i.e. 12 and 13 after the `(comm)` field.
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_comm = own_stat.rsplit_once(')')?.1;
        let own: Vec<u64> = after_comm
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        Some(Self {
            total,
            busy: total - idle - steal,
            steal,
            own: own.iter().sum(),
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
    let before = CpuMeter::now()?;
    thread::sleep(window);
    Some(before.others_since(CpuMeter::now()?))
}

/// CPUs online. Not `available_parallelism`, which shrinks to 1 once this thread is pinned.
fn available_cpus() -> usize {
    // SAFETY: `sysconf` only reads a system value.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// Pins the calling thread to `cpu` (best effort).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the number of CPUs, far below CPU_SETSIZE, so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid `cpu_set_t` of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        eprintln!(
            "warning: cannot pin thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sum of the sequence numbers `0..n` the driver writes; the device's checksum must equal it.
fn expected_sum(n: u64) -> u64 {
    n.wrapping_mul(n.wrapping_sub(1)) / 2
}

/// Host address of the payload of `slot` in `gm` (single region: contiguous).
fn payload_host(gm: &GuestMemoryMmap, slot: usize) -> *mut u64 {
    gm.get_host_address(GuestAddress(payload_addr(slot)))
        .expect("payload in memory")
        .cast()
}

/// Our driver and our device on two threads.
fn two_thread_ours(format: RingFormat, qsize: u16, batch: usize, total: u64, pin: bool) -> Run {
    let gm = guest_memory();
    let vm = VmMemory::new(gm.clone());
    let memory = &vm;
    let (config, features) = ring_config(format, qsize);
    let mut driver: DriverQueue<_, u16> =
        DriverQueue::new(&config, features, memory, None).expect("driver");
    let mut device = DeviceQueue::activate(&config, features, memory).expect("device");
    // Host address of slot 0's payload; slots are contiguous (`payload_host` per slot costs a lookup).
    let payload = payload_host(&gm, 0) as usize;
    let batch_u64 = batch as u64;
    let barrier = Barrier::new(2);

    let (elapsed, kicks, (sum, irqs)) = thread::scope(|s| {
        let device_thread = s.spawn(|| {
            if pin {
                pin_to_cpu(1);
            }
            device.disable_notification();
            let mut chain = device.new_chain();
            let mut used: Vec<(UsedToken, u32)> = Vec::with_capacity(batch);
            let (mut done, mut sum, mut irqs) = (0u64, 0u64, 0u64);
            barrier.wait();
            while done < total {
                used.clear();
                while used.len() < batch {
                    if !device.pop_into(&mut chain).expect("pop") {
                        break;
                    }
                    let mut word = [0u8; 8];
                    chain.reader(memory).read(&mut word).expect("read payload");
                    sum = sum.wrapping_add(u64::from_le_bytes(word));
                    used.push((chain.token(), 0));
                }
                match used.as_slice() {
                    [] => {
                        spin_loop();
                        continue;
                    }
                    [(token, len)] if batch == 1 => {
                        device.add_used(*token, *len).expect("add_used")
                    }
                    many => device.add_used_batch(many).expect("add_used_batch"),
                }
                done += used.len() as u64;
                if device.needs_notification() {
                    irqs += 1;
                }
            }
            (sum, irqs)
        });

        if pin {
            pin_to_cpu(0);
        }
        driver.disable_callbacks();
        let mut free: Vec<u16> = (0..qsize).rev().collect();
        let (mut sent, mut done, mut kicks) = (0u64, 0u64, 0u64);
        barrier.wait();
        let start = Instant::now();
        while done < total {
            let want = batch_u64.min(total - sent);
            if want != 0 && free.len() as u64 >= want {
                for _ in 0..want {
                    let slot = free.pop().expect("free slot");
                    let host = (payload + usize::from(slot) * BUF_LEN as usize) as *mut u64;
                    // SAFETY: `host` is the 64-aligned payload of `slot` inside `gm`, which outlives this scope; the
                    // slot is not in flight, so the device does not read it until `add` publishes it (release).
                    unsafe { host.write_volatile(sent.to_le()) };
                    let buffer =
                        Buffer::new(DeviceAddr::new(payload_addr(usize::from(slot))), BUF_LEN);
                    driver.add(&[buffer], &[], slot).expect("add");
                    sent += 1;
                }
                if driver.kick_prepare() {
                    kicks += 1;
                }
            }
            while let Some(used) = driver.pop_used().expect("pop_used") {
                free.push(used.token);
                done += 1;
            }
        }
        let elapsed = start.elapsed();
        (elapsed, kicks, device_thread.join().expect("device thread"))
    });
    assert_eq!(
        sum,
        expected_sum(total),
        "device checksum mismatch (ours, {format:?})"
    );
    Run {
        mbuf_s: total as f64 / elapsed.as_secs_f64() / 1e6,
        kicks,
        irqs,
        others: 0.0,
    }
}

/// rcore virtio-drivers as the driver over guest memory, through a HAL whose DMA memory is a window of one
/// `GuestMemoryMmap` region: `share` is address arithmetic (no bounce buffer).
mod vd {
    use super::*;
    use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
    use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
    use zerocopy::{FromBytes, Immutable, IntoBytes};

    /// Host address of guest address 0 of the installed memory, its length, and the DMA bump pointer.
    static HOST_BASE: AtomicUsize = AtomicUsize::new(0);
    static MEM_SIZE: AtomicUsize = AtomicUsize::new(0);
    static DMA_NEXT: AtomicU64 = AtomicU64::new(DMA_POOL_START);

    /// Makes `gm` (one region at guest address 0) the HAL's memory and resets the DMA pool. One case at a time.
    pub(super) fn install(gm: &GuestMemoryMmap) {
        let host = gm.get_host_address(GuestAddress(0)).expect("region at 0") as usize;
        HOST_BASE.store(host, Ordering::SeqCst);
        MEM_SIZE.store(MEM_LEN, Ordering::SeqCst);
        DMA_NEXT.store(DMA_POOL_START, Ordering::SeqCst);
    }

    /// The benchmark's HAL (guest physical address = offset in the installed memory).
    #[derive(Debug)]
    pub(super) struct GuestHal;

    // SAFETY: `dma_alloc` returns page-aligned, zeroed, never-reused ranges of the installed mapping (a bump
    // allocator inside the DMA pool window, which nothing else uses); `share` returns the guest address of memory that
    // is inside that same mapping (checked), so the device sees exactly the driver's bytes.
    unsafe impl Hal for GuestHal {
        fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
            let len = pages * PAGE_SIZE;
            let paddr = DMA_NEXT.fetch_add(len as u64, Ordering::SeqCst);
            assert!(
                paddr + len as u64 <= DMA_POOL_END,
                "benchmark DMA pool exhausted"
            );
            let host =
                HOST_BASE.load(Ordering::SeqCst) + usize::try_from(paddr).expect("64-bit host");
            // SAFETY: `[host, host + len)` lies inside the installed mapping (pool end < memory size) and is handed
            // out once, so nothing else references it.
            unsafe { std::ptr::write_bytes(host as *mut u8, 0, len) };
            (paddr, NonNull::new(host as *mut u8).expect("non-null"))
        }

        unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
            0
        }

        unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
            panic!("the benchmark transport has no MMIO")
        }

        unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
            let host = buffer.as_ptr().cast::<u8>() as usize;
            let base = HOST_BASE.load(Ordering::Relaxed);
            let offset = host.wrapping_sub(base);
            assert!(
                offset
                    .checked_add(buffer.len())
                    .is_some_and(|end| end <= MEM_SIZE.load(Ordering::Relaxed)),
                "buffer outside guest memory"
            );
            offset as PhysAddr
        }

        unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
    }

    /// A transport that only records where the driver put queue 0.
    #[derive(Debug, Default)]
    pub(super) struct BenchTransport {
        /// (size, descriptors, driver area, device area) of queue 0.
        pub(super) queue: Option<(u32, u64, u64, u64)>,
    }

    impl Transport for BenchTransport {
        fn device_type(&self) -> DeviceType {
            DeviceType::Block
        }
        fn read_device_features(&mut self) -> u64 {
            0
        }
        fn write_driver_features(&mut self, _driver_features: u64) {}
        fn max_queue_size(&mut self, _queue: u16) -> u32 {
            1024
        }
        fn notify(&mut self, _queue: u16) {}
        fn get_status(&self) -> DeviceStatus {
            DeviceStatus::empty()
        }
        fn set_status(&mut self, _status: DeviceStatus) {}
        fn set_guest_page_size(&mut self, _guest_page_size: u32) {}
        fn requires_legacy_layout(&self) -> bool {
            false
        }
        fn queue_set(
            &mut self,
            _queue: u16,
            size: u32,
            descriptors: PhysAddr,
            driver: PhysAddr,
            device: PhysAddr,
        ) {
            self.queue = Some((size, descriptors, driver, device));
        }
        fn queue_unset(&mut self, _queue: u16) {
            self.queue = None;
        }
        fn queue_used(&mut self, _queue: u16) -> bool {
            self.queue.is_some()
        }
        fn ack_interrupt(&mut self) -> InterruptStatus {
            InterruptStatus::empty()
        }
        fn read_config_generation(&self) -> u32 {
            0
        }
        fn read_config_space<T: FromBytes + IntoBytes>(
            &self,
            _offset: usize,
        ) -> virtio_drivers::Result<T> {
            Err(virtio_drivers::Error::ConfigSpaceMissing)
        }
        fn write_config_space<T: IntoBytes + Immutable>(
            &mut self,
            _offset: usize,
            _value: T,
        ) -> virtio_drivers::Result<()> {
            Err(virtio_drivers::Error::ConfigSpaceMissing)
        }
    }
}

/// virtio-drivers `VirtQueue<_, Q>` as the driver and virtio-queue as the device, on two threads sharing only the
/// guest memory (as a guest and a VMM do).
fn two_thread_vd<const Q: usize>(batch: usize, total: u64, pin: bool) -> Run {
    use virtio_drivers::queue::VirtQueue;

    let gm = guest_memory();
    vd::install(&gm);
    let mut transport = vd::BenchTransport::default();
    // indirect: no; event_idx: yes (as negotiated for ours).
    let mut vq = VirtQueue::<vd::GuestHal, Q>::new(&mut transport, 0, false, true)
        .expect("virtio-drivers queue");
    let (size, desc, avail, used) = transport.queue.expect("queue_set was called");
    let size = u16::try_from(size).expect("queue size");
    let mut queue = virtio_queue_for(&gm, size, desc, avail, used);
    let payload = payload_host(&gm, 0) as usize;
    let slice_of = |slot: usize| -> &[u8] {
        let host = (payload + slot * BUF_LEN as usize) as *const u8;
        // SAFETY: the slot's 64 bytes lie inside `gm`, which outlives every use of the slice; while such a slice
        // exists nobody writes the bytes (the driver writes its sequence number before creating it, the device only
        // reads readable buffers).
        unsafe { std::slice::from_raw_parts(host, BUF_LEN as usize) }
    };
    let batch_u64 = batch as u64;
    let barrier = Barrier::new(2);
    let gm_ref = &gm;

    let (elapsed, kicks, (sum, irqs)) = thread::scope(|s| {
        let device_thread = s.spawn(|| {
            if pin {
                pin_to_cpu(1);
            }
            queue
                .disable_notification(gm_ref)
                .expect("disable_notification");
            let mut heads: Vec<u16> = Vec::with_capacity(batch);
            let (mut done, mut sum, mut irqs) = (0u64, 0u64, 0u64);
            barrier.wait();
            while done < total {
                heads.clear();
                while heads.len() < batch {
                    let Some(chain) = queue.pop_descriptor_chain(gm_ref) else {
                        break;
                    };
                    let head = chain.head_index();
                    for desc in chain {
                        if !desc.is_write_only() {
                            let word: u64 = gm_ref.read_obj(desc.addr()).expect("read payload");
                            sum = sum.wrapping_add(u64::from_le(word));
                        }
                    }
                    heads.push(head);
                }
                if heads.is_empty() {
                    spin_loop();
                    continue;
                }
                // virtio-queue has no batched add_used: one call (and one used.idx publication) per chain.
                for &head in &heads {
                    queue.add_used(gm_ref, head, 0).expect("add_used");
                }
                done += heads.len() as u64;
                if queue
                    .needs_notification(gm_ref)
                    .expect("needs_notification")
                {
                    irqs += 1;
                }
            }
            (sum, irqs)
        });

        if pin {
            pin_to_cpu(0);
        }
        vq.set_dev_notify(false);
        let mut free: Vec<usize> = (0..Q).rev().collect();
        let mut slot_of_token = vec![0usize; Q];
        let (mut sent, mut done, mut kicks) = (0u64, 0u64, 0u64);
        barrier.wait();
        let start = Instant::now();
        while done < total {
            let want = batch_u64.min(total - sent);
            if want != 0 && free.len() as u64 >= want {
                for _ in 0..want {
                    let slot = free.pop().expect("free slot");
                    let host = (payload + slot * BUF_LEN as usize) as *mut u64;
                    // SAFETY: as in `two_thread_ours`: inside `gm`, not in flight, published by `add` afterwards.
                    unsafe { host.write_volatile(sent.to_le()) };
                    // SAFETY: the buffer lives in `gm` (outliving the queue's use of it) and is not accessed until
                    // `pop_used` returns its token.
                    let token = unsafe { vq.add(&[slice_of(slot)], &mut []) }.expect("add");
                    slot_of_token[usize::from(token)] = slot;
                    sent += 1;
                }
                if vq.should_notify() {
                    kicks += 1;
                }
            }
            while let Some(token) = vq.peek_used() {
                let slot = slot_of_token[usize::from(token)];
                // SAFETY: the same buffer that was added with this token.
                unsafe { vq.pop_used(token, &[slice_of(slot)], &mut []) }.expect("pop_used");
                free.push(slot);
                done += 1;
            }
        }
        let elapsed = start.elapsed();
        (elapsed, kicks, device_thread.join().expect("device thread"))
    });
    assert_eq!(
        sum,
        expected_sum(total),
        "device checksum mismatch (virtio-drivers+virtio-queue)"
    );
    Run {
        mbuf_s: total as f64 / elapsed.as_secs_f64() / 1e6,
        kicks,
        irqs,
        others: 0.0,
    }
}
