//! `vfio-net`: a userspace virtio-net driver for a PCI function bound to `vfio-pci` (DPDK style: no kernel driver).
//!
//! ```text
//! vfio-net --device <BDF> --mode <pktgen|echo|responder> [--ip A.B.C.D] [--count N] [--size BYTES] [--queues N]
//!          [--packed] [--legacy] [--queue-size N] [--duration-s S] [--dst-mac MAC] [--dst-ip A.B.C.D] [--burst N]
//!          [--full-backoff-us US]
//! ```
//!
//! - The function is opened through `vfio-ioctls` ([`VfioAccess`]); [`PciTransport`] sets Bus Master Enable and
//!   picks the modern interface when the virtio capabilities are there (`--legacy` forces the legacy I/O BAR of a
//!   transitional device), [`NetDriver`] negotiates features and sets up the queues.
//! - DMA memory: a modern device must negotiate `VIRTIO_F_ACCESS_PLATFORM` and gets [`VfioDma`] (one region mapped
//!   at a fixed IOVA). A device on the legacy interface cannot, so it gets [`VfioPaDma`]: IOVA = physical address
//!   from `/proc/self/pagemap` (needs root; the error says so otherwise).
//! - Interrupts: MSI-X vectors through eventfds (one per queue when the device has enough), but suppressed on every
//!   queue while the loop busy-polls. When idle, `echo`/`responder` re-enable the receive interrupts and sleep in
//!   `poll(2)` on the eventfds (a short sleep instead when no MSI-X could be set up).
//! - `pktgen` sends `--count` UDP frames of `--size` bytes (bursts of `--burst`, spread over the queue pairs) and
//!   prints the rate. `responder` answers ARP requests for `--ip` and ICMP echo requests to it. `echo` also sends
//!   every UDP datagram to `--ip` back (MACs, addresses and ports swapped: the checksums stay valid) after checking
//!   its IPv4 and UDP checksums. Both run until `--count` frames were received, `--duration-s` passed, or
//!   SIGINT/SIGTERM, then print their counters.
//!
//! Output: `vfio-net: ready ...` once the device is up (with the negotiated features), then one
//! `vfio-net: done ...` line with counters and rates. Exit status 0, or 1 on an error (`vfio-net: error: ...`).

// Frame parsing and building index fixed offsets after checking lengths.
#![allow(clippy::indexing_slicing)]

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use virtio_core::transport::Transport;
use virtio_core::{DeviceAddr, Features, RingMemory};
use virtio_net::driver::{DmaRegion, NetDriver, NetDriverConfig};
use virtio_net::wire::{feature, HeaderRepr};
use virtio_pci::vfio::{PciAddress, VfioAccess, VfioDma, VfioPaDma};
use virtio_pci::{Interface, InterruptMode, PciTransport};

/// IOVA of the DMA region of a modern device.
const IOVA: u64 = 0x1000_0000;
/// Bytes of DMA memory per queue pair (rings, 2 KiB receive buffers, 2 KiB transmit slots) plus the control queue.
const DMA_PER_PAIR: usize = 2 << 20;
/// Frame buffer size (MTU frames; no big transmit buffers).
const BUF: usize = 2048;
/// Default MAC when the device has none.
const DEFAULT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x5e, 0x10, 0x01];
const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const IP_ICMP: u8 = 1;
const IP_UDP: u8 = 17;
/// Empty polls before going to sleep on the interrupt eventfds.
const IDLE_POLLS: u32 = 256;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pktgen,
    Echo,
    Responder,
}

#[derive(Debug)]
struct Args {
    device: PciAddress,
    mode: Mode,
    ip: Ipv4Addr,
    count: u64,
    size: usize,
    queues: u16,
    packed: bool,
    legacy: bool,
    queue_size: u16,
    duration: Option<Duration>,
    dst_mac: [u8; 6],
    dst_ip: Ipv4Addr,
    burst: usize,
    full_backoff_us: u64,
}

const USAGE: &str = "usage: vfio-net --device BDF --mode pktgen|echo|responder [--ip A.B.C.D] [--count N] \
[--size BYTES] [--queues N] [--packed] [--legacy] [--queue-size N] [--duration-s S] [--dst-mac MAC] \
[--dst-ip A.B.C.D] [--burst N] [--full-backoff-us US]";

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("bad MAC {s}"));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s}"))?;
    }
    Ok(mac)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        device: PciAddress::new(0, 0, 0, 0).ok_or("unreachable")?,
        mode: Mode::Echo,
        ip: Ipv4Addr::new(10, 0, 0, 2),
        count: 0,
        size: 64,
        queues: 1,
        packed: false,
        legacy: false,
        queue_size: 256,
        duration: None,
        dst_mac: [0xff; 6],
        dst_ip: Ipv4Addr::new(10, 0, 0, 1),
        burst: 32,
        full_backoff_us: 0,
    };
    let mut device = None;
    let mut mode = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num =
            |v: String| -> Result<u64, String> { v.parse().map_err(|_| format!("bad number {v}")) };
        match flag.as_str() {
            "--device" => device = Some(value()?.parse::<PciAddress>().map_err(|e| e.to_string())?),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "pktgen" => Mode::Pktgen,
                    "echo" => Mode::Echo,
                    "responder" => Mode::Responder,
                    m => return Err(format!("unknown mode {m}")),
                })
            }
            "--ip" => a.ip = value()?.parse().map_err(|_| "bad --ip")?,
            "--dst-ip" => a.dst_ip = value()?.parse().map_err(|_| "bad --dst-ip")?,
            "--dst-mac" => a.dst_mac = parse_mac(&value()?)?,
            "--count" => a.count = num(value()?)?,
            "--size" => a.size = usize::try_from(num(value()?)?).map_err(|_| "bad --size")?,
            "--queues" => a.queues = u16::try_from(num(value()?)?).map_err(|_| "bad --queues")?,
            "--queue-size" => {
                a.queue_size = u16::try_from(num(value()?)?).map_err(|_| "bad --queue-size")?
            }
            "--burst" => a.burst = usize::try_from(num(value()?)?).map_err(|_| "bad --burst")?,
            "--full-backoff-us" => a.full_backoff_us = num(value()?)?,
            "--duration-s" => a.duration = Some(Duration::from_secs(num(value()?)?)),
            "--packed" => a.packed = true,
            "--legacy" => a.legacy = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    a.device = device.ok_or(USAGE)?;
    a.mode = mode.ok_or(USAGE)?;
    a.queues = a.queues.max(1);
    a.burst = a.burst.clamp(1, 256);
    Ok(a)
}

/// Internet checksum (RFC 1071) of `data`, folded, starting from `sum`.
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(0xffff)
}

/// Counters of one run.
#[derive(Debug, Default)]
struct Counters {
    rx: u64,
    tx: u64,
    tx_dropped: u64,
    arp: u64,
    icmp: u64,
    udp: u64,
    bad: u64,
    ignored: u64,
    rx_per_queue: Vec<u64>,
    irqs: u64,
    sleeps: u64,
}

/// What to do with a received frame: turn it into the reply in place and return the reply length, or `None`.
fn answer(
    frame: &mut [u8],
    len: usize,
    mac: &[u8; 6],
    ip: &[u8; 4],
    echo_udp: bool,
    c: &mut Counters,
) -> Option<usize> {
    if len < 14 || len > frame.len() {
        c.bad += 1;
        return None;
    }
    let f = &mut frame[..len];
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    match ethertype {
        ETH_ARP => {
            // htype 1, ptype IPv4, hlen 6, plen 4, oper 1 (request), target = our address.
            if len < 42 || f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] || f[38..42] != ip[..] {
                c.ignored += 1;
                return None;
            }
            let mut sha = [0u8; 6];
            sha.copy_from_slice(&f[22..28]);
            let mut spa = [0u8; 4];
            spa.copy_from_slice(&f[28..32]);
            f[0..6].copy_from_slice(&sha);
            f[6..12].copy_from_slice(mac);
            f[21] = 2; // reply
            f[22..28].copy_from_slice(mac);
            f[28..32].copy_from_slice(ip);
            f[32..38].copy_from_slice(&sha);
            f[38..42].copy_from_slice(&spa);
            c.arp += 1;
            Some(42)
        }
        ETH_IPV4 => {
            if len < 34 || f[14] >> 4 != 4 {
                c.bad += 1;
                return None;
            }
            let ihl = usize::from(f[14] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            if ihl < 20 || total < ihl || 14 + total > len {
                c.bad += 1;
                return None;
            }
            if f[30..34] != ip[..] {
                c.ignored += 1;
                return None;
            }
            if csum_fold(csum_add(0, &f[14..14 + ihl])) != 0xffff {
                c.bad += 1;
                return None;
            }
            let l4 = 14 + ihl;
            let end = 14 + total;
            match f[23] {
                IP_ICMP => {
                    if end - l4 < 8 || f[l4] != 8 {
                        c.ignored += 1;
                        return None;
                    }
                    if csum_fold(csum_add(0, &f[l4..end])) != 0xffff {
                        c.bad += 1;
                        return None;
                    }
                    f[l4] = 0; // echo reply
                    f[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
                    let sum = !csum_fold(csum_add(0, &f[l4..end]));
                    f[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
                    c.icmp += 1;
                }
                IP_UDP if echo_udp => {
                    if end - l4 < 8 {
                        c.bad += 1;
                        return None;
                    }
                    let udp_len = usize::from(u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]));
                    let stored = u16::from_be_bytes([f[l4 + 6], f[l4 + 7]]);
                    if udp_len < 8 || l4 + udp_len > end {
                        c.bad += 1;
                        return None;
                    }
                    if stored != 0 {
                        // Pseudo-header: addresses, protocol, UDP length; then the datagram.
                        let mut sum = csum_add(0, &f[26..34]);
                        sum = sum.wrapping_add(u32::from(IP_UDP));
                        sum = sum.wrapping_add(u32::try_from(udp_len).unwrap_or(0));
                        sum = csum_add(sum, &f[l4..l4 + udp_len]);
                        if csum_fold(sum) != 0xffff {
                            c.bad += 1;
                            return None;
                        }
                    }
                    // Swapping ports (and below, addresses) leaves both checksums valid.
                    let mut sport = [0u8; 2];
                    sport.copy_from_slice(&f[l4..l4 + 2]);
                    f.copy_within(l4 + 2..l4 + 4, l4);
                    f[l4 + 2..l4 + 4].copy_from_slice(&sport);
                    c.udp += 1;
                }
                _ => {
                    c.ignored += 1;
                    return None;
                }
            }
            let mut src = [0u8; 4];
            src.copy_from_slice(&f[26..30]);
            f.copy_within(30..34, 26);
            f[30..34].copy_from_slice(&src);
            f.copy_within(6..12, 0);
            f[6..12].copy_from_slice(mac);
            Some(end)
        }
        _ => {
            c.ignored += 1;
            None
        }
    }
}

/// The queue pair a UDP reply goes out on: its source port (our port) modulo the pairs. A multi-queue backend that
/// steers each flow's receive side to the queue the flow was last sent from (Linux tun's automatic queue selection,
/// like accelerated RFS) then spreads flows to different ports over the pairs. `None` for other frames (they leave
/// on the pair they came from).
fn flow_pair(f: &[u8], pairs: u16) -> Option<u16> {
    if pairs < 2 || f.len() < 34 || f[12..14] != ETH_IPV4.to_be_bytes() || f[23] != IP_UDP {
        return None;
    }
    let l4 = 14 + usize::from(f[14] & 0xf) * 4;
    let port = u16::from_be_bytes([*f.get(l4)?, *f.get(l4 + 1)?]);
    Some(port % pairs)
}

/// A UDP frame of `size` bytes (at least 60) from `mac`/`ip` to `dst_mac`/`dst_ip`, ports 9 → 9, valid checksums.
fn udp_frame(
    size: usize,
    mac: &[u8; 6],
    ip: &[u8; 4],
    dst_mac: &[u8; 6],
    dst_ip: &[u8; 4],
    seq: u32,
) -> Vec<u8> {
    let size = size.clamp(60, 1514);
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(dst_mac);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes());
    let total = u16::try_from(size - 14).unwrap_or(0);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[22] = 64;
    f[23] = IP_UDP;
    f[26..30].copy_from_slice(ip);
    f[30..34].copy_from_slice(dst_ip);
    let ipsum = !csum_fold(csum_add(0, &f[14..34]));
    f[24..26].copy_from_slice(&ipsum.to_be_bytes());
    let udp_len = total - 20;
    f[34..36].copy_from_slice(&9u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i.to_le_bytes()[0];
    }
    if f.len() >= 46 {
        f[42..46].copy_from_slice(&seq.to_be_bytes());
    }
    let mut sum = csum_add(0, &f[26..34]);
    sum = sum.wrapping_add(u32::from(IP_UDP)) + u32::from(udp_len);
    sum = csum_add(sum, &f[34..]);
    let udpsum = match !csum_fold(sum) {
        0 => 0xffff,
        s => s,
    };
    f[40..42].copy_from_slice(&udpsum.to_be_bytes());
    f
}

type Driver<'m, M> = NetDriver<PciTransport<VfioAccess>, &'m M>;

/// Waits for an interrupt on any MSI-X vector (or sleeps briefly without MSI-X); returns how many fired.
fn wait_for_interrupt<M: RingMemory>(d: &mut Driver<'_, M>, vectors: u16, timeout_ms: i32) -> u64 {
    let access = d.transport_mut().access();
    let mut fds: Vec<libc::pollfd> = (0..vectors)
        .filter_map(|v| access.msix_eventfd(v))
        .map(|e| libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(e),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(Duration::from_micros(200));
        return 0;
    }
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: `fds` is a live array of `n` pollfd entries; poll only writes their `revents`.
    let _ = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) };
    (0..vectors).map(|v| access.take_msix(v)).sum()
}

struct Setup {
    features: Features,
    mode: Option<InterruptMode>,
    interface: Interface,
    pairs: u16,
    mac: [u8; 6],
    chunks: usize,
}

fn run_with<M: RingMemory>(
    args: &Args,
    transport: PciTransport<VfioAccess>,
    memory: &M,
    regions: &[DmaRegion],
    chunks: usize,
) -> Result<(), String> {
    let interface = transport.interface();
    let modern = interface == Interface::Modern;
    let mut supported = feature::MRG_RXBUF | feature::MAC | feature::STATUS | Features::EVENT_IDX;
    let mut required = Features::empty();
    if modern {
        required = Features::VERSION_1 | Features::ACCESS_PLATFORM;
        if args.packed {
            supported |= Features::RING_PACKED;
        }
    }
    if args.queues > 1 {
        supported |= feature::MQ | feature::CTRL_VQ;
    }
    let config = NetDriverConfig::new()
        .supported(supported)
        .required(required)
        .queue_pairs(args.queues)
        .queue_size(args.queue_size)
        .rx_buffer_len(u32::try_from(BUF).unwrap_or(2048))
        .tx_big_buffers(false);
    let mut irq_mode = None;
    let mut d = NetDriver::with_regions(transport, memory, regions, config, |t, queues| {
        irq_mode = t
            .setup_interrupts(queues, InterruptMode::PerQueueVectors)
            .ok();
        Ok(())
    })
    .map_err(|e| format!("driver: {e}"))?;
    let features = d.features();
    if args.packed && !features.contains(Features::RING_PACKED) {
        return Err("--packed: the device did not negotiate RING_PACKED".into());
    }
    if args.queues > 1 && d.active_pairs() < args.queues {
        return Err(format!(
            "--queues {}: the device gave {} active pair(s) (MQ negotiated: {})",
            args.queues,
            d.active_pairs(),
            features.contains(feature::MQ)
        ));
    }
    let mac = d.mac().ok().flatten().unwrap_or(DEFAULT_MAC);
    let setup = Setup {
        features,
        mode: irq_mode,
        interface,
        pairs: d.queue_pairs(),
        mac,
        chunks,
    };
    let ring = if features.contains(Features::RING_PACKED) {
        "packed"
    } else {
        "split"
    };
    println!(
        "vfio-net: ready device={} interface={:?} ring={ring} queues={} features={:#x} irq={:?} mac={} ip={} dma_chunks={}",
        args.device,
        setup.interface,
        setup.pairs,
        setup.features.bits(),
        setup.mode,
        mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
        args.ip,
        setup.chunks,
    );
    let vectors = match setup.mode {
        Some(InterruptMode::PerQueueVectors | InterruptMode::SharedVector) => 2 * setup.pairs + 2,
        _ => 0,
    };
    // Poll mode: no used-buffer interrupts (each would cost the device an MSI and us a wake-up); `serve` re-arms the
    // receive queues only while it sleeps.
    for p in 0..setup.pairs {
        d.disable_interrupts(NetDriver::<PciTransport<VfioAccess>, &M>::rx_queue(p));
        d.disable_interrupts(NetDriver::<PciTransport<VfioAccess>, &M>::tx_queue(p));
    }
    let result = match args.mode {
        Mode::Pktgen => pktgen(args, &mut d, &setup),
        Mode::Echo | Mode::Responder => serve(args, &mut d, &setup, vectors),
    };
    // Stop the device before the memory goes away: a device without ACCESS_PLATFORM bypasses the IOMMU, so
    // unmapping would not keep it from writing received frames into freed pages.
    d.transport_mut().reset();
    result
}

fn pktgen<M: RingMemory>(args: &Args, d: &mut Driver<'_, M>, s: &Setup) -> Result<(), String> {
    let count = if args.count == 0 {
        1_000_000
    } else {
        args.count
    };
    let ip = args.ip.octets();
    let frames: Vec<Vec<u8>> = (0..args.burst)
        .map(|i| {
            udp_frame(
                args.size,
                &s.mac,
                &ip,
                &args.dst_mac,
                &args.dst_ip.octets(),
                u32::try_from(i).unwrap_or(0),
            )
        })
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let header = HeaderRepr::new();
    let mut sent = 0u64;
    let mut full = 0u64;
    let mut pair = 0u16;
    let start = Instant::now();
    let deadline = args.duration.map(|t| start + t);
    while sent < count && !STOP.load(Ordering::Relaxed) {
        let want = usize::try_from(count - sent)
            .unwrap_or(usize::MAX)
            .min(refs.len());
        let n = d
            .send_burst(pair, &refs[..want], &header)
            .map_err(|e| format!("send: {e}"))?;
        sent += n as u64;
        if n < want {
            full += 1;
            if n == 0 && args.full_backoff_us > 0 {
                // The device is the bottleneck: let the CPU go to it for a moment (a VM's device thread shares
                // the host's cores with our vCPU) instead of spinning on a full ring.
                std::thread::sleep(Duration::from_micros(args.full_backoff_us));
            }
        }
        if deadline.is_some_and(|t| Instant::now() > t) {
            break;
        }
        pair = (pair + 1) % s.pairs;
    }
    let elapsed = start.elapsed();
    // Let the device finish what is queued.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_millis(500) {
        for p in 0..s.pairs {
            let _ = d.reclaim_tx(p);
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "vfio-net: done mode=pktgen sent={sent} size={} secs={secs:.3} tx_pps={:.0} tx_mbps={:.1} ring_full={full} features={:#x}",
        args.size.clamp(60, 1514),
        sent as f64 / secs,
        sent as f64 * args.size.clamp(60, 1514) as f64 * 8.0 / secs / 1e6,
        s.features.bits()
    );
    Ok(())
}

fn serve<M: RingMemory>(
    args: &Args,
    d: &mut Driver<'_, M>,
    s: &Setup,
    vectors: u16,
) -> Result<(), String> {
    let ip = args.ip.octets();
    let echo_udp = args.mode == Mode::Echo;
    let header = HeaderRepr::new();
    let mut c = Counters {
        rx_per_queue: vec![0; usize::from(s.pairs)],
        ..Counters::default()
    };
    let burst = args.burst;
    let mut bufs = vec![[0u8; BUF]; burst];
    let mut lens = vec![0usize; burst];
    let start = Instant::now();
    let mut first_rx: Option<Instant> = None;
    let mut idle = 0u32;
    let mut waiting = false;
    loop {
        if STOP.load(Ordering::Relaxed)
            || (args.count > 0 && c.rx >= args.count)
            || args.duration.is_some_and(|t| start.elapsed() > t)
        {
            break;
        }
        let mut got_any = false;
        for pair in 0..s.pairs {
            let mut n = 0;
            while n < burst {
                let Some(buf) = bufs.get_mut(n) else { break };
                match d.receive(pair, buf) {
                    Ok(Some((_, len))) => {
                        c.rx += 1;
                        if let Some(q) = c.rx_per_queue.get_mut(usize::from(pair)) {
                            *q += 1;
                        }
                        if let Some(reply) = answer(buf, len, &s.mac, &ip, echo_udp, &mut c) {
                            if let Some(l) = lens.get_mut(n) {
                                *l = reply;
                            }
                            n += 1;
                        }
                    }
                    Ok(None) => break,
                    Err(virtio_net::NetError::FrameTooLarge { .. }) => c.bad += 1,
                    Err(e) => return Err(format!("receive on pair {pair}: {e}")),
                }
            }
            if c.rx > 0 && first_rx.is_none() {
                first_rx = Some(Instant::now());
            }
            got_any |= n > 0;
            // Replies go out on the pair their flow is steered to (see `flow_pair`), in bursts.
            for target in 0..s.pairs {
                let mut refs: [&[u8]; 256] = [&[]; 256];
                let mut m = 0;
                for (b, &l) in bufs[..n].iter().zip(&lens[..n]) {
                    let frame = &b[..l.min(BUF)];
                    if flow_pair(frame, s.pairs).unwrap_or(pair) == target {
                        if let Some(r) = refs.get_mut(m) {
                            *r = frame;
                            m += 1;
                        }
                    }
                }
                let mut done = 0;
                let mut tries = 0;
                while done < m {
                    let q = d
                        .send_burst(target, &refs[done..m], &header)
                        .map_err(|e| format!("send: {e}"))?;
                    done += q;
                    c.tx += q as u64;
                    if q == 0 {
                        tries += 1;
                        let _ = d.reclaim_tx(target);
                        if tries > 10_000 {
                            c.tx_dropped += (m - done) as u64;
                            break;
                        }
                    }
                }
            }
        }
        if got_any {
            idle = 0;
            if waiting {
                for p in 0..s.pairs {
                    d.disable_interrupts(NetDriver::<PciTransport<VfioAccess>, &M>::rx_queue(p));
                }
                waiting = false;
            }
            continue;
        }
        idle += 1;
        if idle < IDLE_POLLS {
            std::hint::spin_loop();
            continue;
        }
        // Idle: arm the receive interrupts (unless buffers arrived meanwhile) and sleep on the eventfds.
        let mut armed = true;
        for p in 0..s.pairs {
            armed &= d.enable_interrupts(NetDriver::<PciTransport<VfioAccess>, &M>::rx_queue(p));
        }
        waiting = true;
        if armed {
            c.sleeps += 1;
            c.irqs += wait_for_interrupt(d, vectors, 10);
        }
    }
    let secs = first_rx
        .map_or(0.0, |t| t.elapsed().as_secs_f64())
        .max(1e-9);
    println!(
        "vfio-net: done mode={} rx={} tx={} tx_dropped={} arp={} icmp={} udp={} bad={} ignored={} rx_per_queue={} irqs={} sleeps={} rx_pps={:.0} features={:#x}",
        if echo_udp { "echo" } else { "responder" },
        c.rx,
        c.tx,
        c.tx_dropped,
        c.arp,
        c.icmp,
        c.udp,
        c.bad,
        c.ignored,
        c.rx_per_queue.iter().map(u64::to_string).collect::<Vec<_>>().join("/"),
        c.irqs,
        c.sleeps,
        c.rx as f64 / secs,
        s.features.bits()
    );
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    let access = VfioAccess::open(args.device).map_err(|e| format!("open {}: {e}", args.device))?;
    let container = access.container().clone();
    let transport = if args.legacy {
        PciTransport::with_interface(access, Interface::Legacy)
    } else {
        PciTransport::new(access)
    }
    .map_err(|e| format!("probe: {e}"))?;
    if transport.device_type() != virtio_core::device_type::NET {
        return Err(format!(
            "device type {} is not net",
            transport.device_type()
        ));
    }
    let size = DMA_PER_PAIR * (usize::from(args.queues) + 1);
    if transport.interface() == Interface::Modern {
        let dma = VfioDma::new(&container, IOVA, size).map_err(|e| format!("dma: {e}"))?;
        let regions = [DmaRegion {
            base: DeviceAddr::new(IOVA),
            len: size,
        }];
        run_with(args, transport, &dma, &regions, 1)
    } else {
        // No ACCESS_PLATFORM on the legacy interface: the device uses physical addresses.
        let dma = VfioPaDma::new(&container, size).map_err(|e| {
            format!("IOVA-as-PA DMA memory (the legacy interface has no ACCESS_PLATFORM): {e}")
        })?;
        let regions: Vec<DmaRegion> = dma
            .chunks()
            .iter()
            .map(|c| DmaRegion {
                base: c.iova(),
                len: c.len(),
            })
            .collect();
        run_with(args, transport, &dma, &regions, regions.len())
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vfio-net: {e}");
            return ExitCode::FAILURE;
        }
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("vfio-net: error: {e}");
            ExitCode::FAILURE
        }
    }
}
