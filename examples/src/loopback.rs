//! In-process loopback: a driver thread and a device thread move buffers through one virtqueue living in one
//! `HeapMemory` region, first over a split ring, then over a packed ring.
//!
//! Every chain is a device-readable request (a 16-byte header holding a sequence number and a checksum, then
//! pseudo-random bytes; 64 to 1500 bytes in all) followed by a device-writable buffer. The device checks the sequence
//! number and the checksum and echoes the request into the writable buffer; the driver checks the echo against what
//! it sent. Any mismatch makes the program exit with status 1.
//!
//! Notifications use `std::thread::park`/`unpark`, and each side wakes the other only when the ring says so:
//! the driver kicks when `kick_prepare()` is true, the device interrupts when `needs_notification()` is true, and
//! before sleeping each side re-arms notifications with the race-free re-check (`enable_callbacks()` /
//! `enable_notification()`), going back to work if buffers slipped in meanwhile.
//!
//! ```text
//! cargo run --release -p virtio-sdk-examples --bin loopback [-- --secs 2 --buffers N]
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use virtio_core::{
    Buffer, DeviceAddr, DeviceQueue, DeviceSlice, DriverQueue, Features, HeapMemory, QueueConfig,
    RingFormat, RingLayout,
};

/// Descriptors in the ring; each chain takes two (request + response), so `QUEUE_SIZE / 2` chains fit.
const QUEUE_SIZE: u16 = 256;
/// Chains in flight at most, one buffer slot each.
const SLOTS: u16 = QUEUE_SIZE / 2;
/// The one memory region: rings first, then the buffer slots.
const MEM_LEN: usize = 1 << 20;
const RING_BASE: u64 = 0;
const SLOTS_BASE: u64 = 0x1_0000;
/// Each slot holds a request buffer and a response buffer of `BUF_LEN` bytes each.
const BUF_LEN: u32 = 2048;
const MIN_REQUEST: usize = 64;
const MAX_REQUEST: usize = 1500;
/// Request header: sequence number (u64 LE), checksum of the rest (u64 LE).
const HEADER_LEN: usize = 16;
/// The device checks for a pending interrupt at least this often while draining.
const DEVICE_BATCH: u32 = 32;

/// Command-line options.
#[derive(Debug, Clone, Copy)]
struct Options {
    duration: Duration,
    max_buffers: u64,
}

/// What both threads see besides the ring: stop and failure flags.
#[derive(Debug, Default)]
struct Control {
    /// Set by the driver when every buffer came back and no more will be sent.
    stop: AtomicBool,
    /// Set by whichever side found a mismatch, so the other does not sleep forever.
    failed: AtomicBool,
}

/// Driver-side counts.
#[derive(Debug, Default)]
struct DriverStats {
    buffers: u64,
    payload_bytes: u64,
    elapsed: Duration,
    kick_checks: u64,
    kicks: u64,
    sleeps: u64,
}

/// Device-side counts.
#[derive(Debug, Default)]
struct DeviceStats {
    buffers: u64,
    interrupt_checks: u64,
    interrupts: u64,
    sleeps: u64,
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            eprintln!("usage: loopback [--secs SECONDS] [--buffers N]");
            return ExitCode::from(2);
        }
    };
    let limit = match options.max_buffers {
        u64::MAX => String::new(),
        n => format!(" or {n} buffers"),
    };
    println!(
        "loopback: queue size {QUEUE_SIZE}, {SLOTS} chains in flight, requests {MIN_REQUEST}..={MAX_REQUEST} bytes, \
         {:.1} s{limit} per ring format",
        options.duration.as_secs_f64(),
    );
    for format in [RingFormat::Split, RingFormat::Packed] {
        if let Err(message) = run(format, options) {
            eprintln!("loopback {format:?}: FAILED: {message}");
            return ExitCode::FAILURE;
        }
    }
    println!("all echoes verified");
    ExitCode::SUCCESS
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        duration: Duration::from_secs(2),
        max_buffers: u64::MAX,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--secs" => {
                let secs: f64 = value.parse().map_err(|e| format!("--secs {value}: {e}"))?;
                options.duration = Duration::try_from_secs_f64(secs)
                    .map_err(|e| format!("--secs {value}: {e}"))?;
            }
            "--buffers" => {
                options.max_buffers = value
                    .parse()
                    .map_err(|e| format!("--buffers {value}: {e}"))?
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(options)
}

/// One driver thread (this one) and one device thread over a fresh region and ring of `format`.
fn run(format: RingFormat, options: Options) -> Result<(), String> {
    let memory =
        HeapMemory::new(DeviceAddr::new(0), MEM_LEN).ok_or("cannot allocate the memory region")?;
    let layout = RingLayout::new(format, QUEUE_SIZE);
    let config = QueueConfig::with_layout(QUEUE_SIZE, &layout, DeviceAddr::new(RING_BASE))
        .ok_or("ring layout overflows")?;
    let mut features = Features::VERSION_1 | Features::EVENT_IDX;
    if format == RingFormat::Packed {
        features |= Features::RING_PACKED;
    }
    // The driver initialises the rings; the device activates from the configuration the driver "wrote".
    let mut driver: DriverQueue<&HeapMemory, u16> =
        DriverQueue::new(&config, features, &memory, None)
            .map_err(|e| format!("driver queue: {e}"))?;
    let mut device =
        DeviceQueue::activate(&config, features, &memory).map_err(|e| format!("activate: {e}"))?;
    let control = Control::default();
    let driver_thread = thread::current();

    let (driver_result, device_result) = thread::scope(|s| {
        let device_handle = s.spawn(|| {
            let result = run_device(&mut device, &memory, &driver_thread, &control);
            if result.is_err() {
                control.failed.store(true, Ordering::SeqCst);
                driver_thread.unpark();
            }
            result
        });
        let device_thread = device_handle.thread().clone();
        let driver_result = run_driver(&mut driver, &memory, &device_thread, &control, options);
        if driver_result.is_err() {
            control.failed.store(true, Ordering::SeqCst);
        }
        // Whatever happened, let the device finish: it exits once `stop` is set and the ring is empty.
        control.stop.store(true, Ordering::SeqCst);
        device_thread.unpark();
        let device_result = device_handle
            .join()
            .unwrap_or_else(|_| Err("device thread panicked".into()));
        (driver_result, device_result)
    });
    let driver_stats = driver_result?;
    let device_stats = device_result?;
    if device_stats.buffers != driver_stats.buffers {
        return Err(format!(
            "the device processed {} buffers, the driver got {} back",
            device_stats.buffers, driver_stats.buffers
        ));
    }
    report(format, &driver_stats, &device_stats);
    Ok(())
}

fn report(format: RingFormat, driver: &DriverStats, device: &DeviceStats) {
    let secs = driver.elapsed.as_secs_f64();
    let buffers = driver.buffers as f64;
    let name = match format {
        RingFormat::Split => "split",
        RingFormat::Packed => "packed",
    };
    println!(
        "{name:>6}: {} buffers in {secs:.2} s: {:.3} Mbuf/s, {:.2} Gbit/s of requests (avg {:.0} B; the echo moves as \
         much back)",
        driver.buffers,
        buffers / secs / 1e6,
        driver.payload_bytes as f64 * 8.0 / secs / 1e9,
        driver.payload_bytes as f64 / buffers.max(1.0),
    );
    println!(
        "        notifications driver->device: {} kicks ({} kick_prepare calls); device->driver: {} interrupts \
         ({} needs_notification calls)",
        driver.kicks, driver.kick_checks, device.interrupts, device.interrupt_checks
    );
    println!(
        "        sleeps: driver {}, device {}",
        driver.sleeps, device.sleeps
    );
}

/// Device address of `slot`'s request buffer; its response buffer follows `BUF_LEN` bytes later.
fn request_addr(slot: u16) -> u64 {
    SLOTS_BASE + u64::from(slot) * 2 * u64::from(BUF_LEN)
}

/// Request length for sequence number `seq` (varies over 64..=1500).
fn request_len(seq: u64) -> usize {
    let span = (MAX_REQUEST - MIN_REQUEST + 1) as u64;
    MIN_REQUEST + usize::try_from(seq.wrapping_mul(7919) % span).unwrap_or(0)
}

/// A position-dependent checksum (Fletcher-style over little-endian 64-bit words, zero-padded).
fn checksum(data: &[u8]) -> u64 {
    let (mut a, mut b) = (0u64, 0u64);
    for chunk in data.chunks(8) {
        let mut word = [0u8; 8];
        word.iter_mut().zip(chunk).for_each(|(w, c)| *w = *c);
        a = a.wrapping_add(u64::from_le_bytes(word));
        b = b.wrapping_add(a);
    }
    a ^ b.rotate_left(32)
}

/// Splits a request into (sequence number, checksum, data), if it has a header.
fn parse_request(request: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (header, data) = request.split_first_chunk::<HEADER_LEN>()?;
    let (seq, sum) = header.split_first_chunk::<8>()?;
    let sum: &[u8; 8] = sum.try_into().ok()?;
    Some((u64::from_le_bytes(*seq), u64::from_le_bytes(*sum), data))
}

/// Fills `request` with sequence number `seq`: header, then xorshift bytes seeded by `seq`. Returns the checksum.
fn fill_request(request: &mut [u8], seq: u64) -> u64 {
    let (header, data) = request.split_at_mut(HEADER_LEN.min(request.len()));
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk
            .iter_mut()
            .zip(state.to_le_bytes())
            .for_each(|(d, s)| *d = s);
    }
    let sum = checksum(data);
    let mut head = [0u8; HEADER_LEN];
    let (seq_bytes, sum_bytes) = head.split_at_mut(8);
    seq_bytes.copy_from_slice(&seq.to_le_bytes());
    sum_bytes.copy_from_slice(&sum.to_le_bytes());
    header.copy_from_slice(head.get(..header.len()).unwrap_or_default());
    sum
}

/// What the driver remembers about a chain in flight.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    seq: u64,
    len: usize,
    sum: u64,
}

/// The driver: keeps the ring full of requests until the time or buffer budget is spent, checks every echo.
fn run_driver(
    driver: &mut DriverQueue<&HeapMemory, u16>,
    memory: &HeapMemory,
    device_thread: &Thread,
    control: &Control,
    options: Options,
) -> Result<DriverStats, String> {
    let mut stats = DriverStats::default();
    let mut sent = vec![Sent::default(); usize::from(SLOTS)];
    let mut free: Vec<u16> = (0..SLOTS).rev().collect();
    let mut scratch = vec![0u8; MAX_REQUEST];
    let mut next_seq = 0u64;
    let mut sending = true;
    // Busy: the driver polls used buffers itself and asks for interrupts only before sleeping.
    driver.disable_callbacks();
    let start = Instant::now();
    loop {
        if control.failed.load(Ordering::SeqCst) {
            return Err("stopped: the device reported a failure".into());
        }
        let mut progress = false;

        // Collect and verify what the device returned.
        while let Some(used) = driver.pop_used().map_err(|e| format!("pop_used: {e}"))? {
            let slot = used.token;
            let expect = *sent
                .get(usize::from(slot))
                .ok_or("used token out of range")?;
            if used.len as usize != expect.len {
                return Err(format!(
                    "seq {}: device wrote {} bytes, request had {}",
                    expect.seq, used.len, expect.len
                ));
            }
            let echo = scratch.get_mut(..expect.len).ok_or("echo too long")?;
            let response = request_addr(slot) + u64::from(BUF_LEN);
            DeviceSlice::new(memory, DeviceAddr::new(response), expect.len)
                .ok_or("response buffer outside memory")?
                .read_at(0, echo);
            match parse_request(echo) {
                Some((seq, sum, data))
                    if seq == expect.seq && sum == expect.sum && checksum(data) == sum => {}
                _ => {
                    return Err(format!(
                        "seq {}: echo does not match the request",
                        expect.seq
                    ))
                }
            }
            free.push(slot);
            stats.buffers += 1;
            stats.payload_bytes += expect.len as u64;
            progress = true;
        }

        // Offer new requests while slots are free.
        if sending && (start.elapsed() >= options.duration || next_seq >= options.max_buffers) {
            sending = false;
        }
        let mut added = false;
        while sending && next_seq < options.max_buffers {
            let Some(slot) = free.pop() else { break };
            let len = request_len(next_seq);
            let request = scratch.get_mut(..len).ok_or("request too long")?;
            let sum = fill_request(request, next_seq);
            DeviceSlice::new(memory, DeviceAddr::new(request_addr(slot)), len)
                .ok_or("request buffer outside memory")?
                .write_at(0, request);
            let readable = Buffer::new(
                DeviceAddr::new(request_addr(slot)),
                u32::try_from(len).unwrap_or(BUF_LEN),
            );
            let writable = Buffer::new(
                DeviceAddr::new(request_addr(slot) + u64::from(BUF_LEN)),
                BUF_LEN,
            );
            driver
                .add(&[readable], &[writable], slot)
                .map_err(|e| format!("add: {e}"))?;
            if let Some(entry) = sent.get_mut(usize::from(slot)) {
                *entry = Sent {
                    seq: next_seq,
                    len,
                    sum,
                };
            }
            next_seq += 1;
            added = true;
        }
        if added {
            progress = true;
            stats.kick_checks += 1;
            if driver.kick_prepare() {
                stats.kicks += 1;
                device_thread.unpark();
            }
        }

        if !sending && driver.in_flight() == 0 {
            break;
        }
        if !progress {
            // Nothing to do until the device returns something: ask for an interrupt, and sleep only if no used
            // buffer arrived between the last poll and the request (`enable_callbacks` re-checks after its fence).
            if driver.enable_callbacks() {
                stats.sleeps += 1;
                thread::park();
            }
            driver.disable_callbacks();
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// The device: pops requests, verifies them, echoes them into the response buffer, interrupts when asked to.
fn run_device(
    device: &mut DeviceQueue<&HeapMemory>,
    memory: &HeapMemory,
    driver_thread: &Thread,
    control: &Control,
) -> Result<DeviceStats, String> {
    let mut stats = DeviceStats::default();
    let mut chain = device.new_chain();
    let mut buffer = vec![0u8; BUF_LEN as usize];
    let mut expected_seq = 0u64;
    let interrupt = |device: &mut DeviceQueue<&HeapMemory>, stats: &mut DeviceStats| {
        stats.interrupt_checks += 1;
        if device.needs_notification() {
            stats.interrupts += 1;
            driver_thread.unpark();
        }
    };
    loop {
        let mut since_check = 0u32;
        while device
            .pop_into(&mut chain)
            .map_err(|e| format!("pop: {e}"))?
        {
            let len = chain.readable_len() as usize;
            let request = buffer
                .get_mut(..len)
                .ok_or_else(|| format!("request of {len} bytes is too long"))?;
            let read = chain
                .reader(memory)
                .read(request)
                .map_err(|e| format!("read request: {e}"))?;
            match parse_request(request) {
                Some((seq, sum, data))
                    if read == len && seq == expected_seq && checksum(data) == sum => {}
                Some((seq, ..)) if seq != expected_seq => {
                    return Err(format!("expected request {expected_seq}, got {seq}"));
                }
                _ => return Err(format!("request {expected_seq}: bad checksum or length")),
            }
            let mut writer = chain.writer(memory);
            if writer
                .write(request)
                .map_err(|e| format!("write echo: {e}"))?
                != len
            {
                return Err(format!("request {expected_seq}: response buffer too small"));
            }
            device
                .add_used(chain.token(), writer.written())
                .map_err(|e| format!("add_used: {e}"))?;
            expected_seq += 1;
            stats.buffers += 1;
            since_check += 1;
            if since_check == DEVICE_BATCH {
                since_check = 0;
                interrupt(device, &mut stats);
            }
        }
        if since_check != 0 {
            interrupt(device, &mut stats);
        }
        // The ring looks empty: ask for kicks, and sleep only if nothing arrived meanwhile (`enable_notification`
        // re-checks after its fence).
        if device
            .enable_notification()
            .map_err(|e| format!("enable_notification: {e}"))?
        {
            device.disable_notification();
            continue;
        }
        if control.stop.load(Ordering::SeqCst) {
            return Ok(stats);
        }
        if control.failed.load(Ordering::SeqCst) {
            return Err("stopped: the driver reported a failure".into());
        }
        stats.sleeps += 1;
        thread::park();
        device.disable_notification();
    }
}
