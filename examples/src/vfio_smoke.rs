//! `vfio-smoke`: drives a virtio-net PCI function bound to `vfio-pci` with `PciTransport` over `VfioAccess`, and
//! checks that Ethernet frames sent on TX come back on RX (the peer echoes them).
//!
//! ```text
//! vfio-smoke --device 0000:00:03.0 [--packed] [--event-idx] [--frames N] [--timeout-ms MS]
//! ```
//!
//! Negotiates VERSION_1 | ACCESS_PLATFORM (plus RING_PACKED / EVENT_IDX when asked; nothing net-specific), sets up RX
//! queue 0 and TX queue 1 in one IOMMU-mapped DMA region, posts RX buffers, sends N frames (a zeroed 12-byte
//! `virtio_net_hdr_v1`, broadcast destination, ethertype 0x88b5, payload: sequence number, pattern, FNV-1a checksum)
//! and polls the used rings until every frame came back or the timeout passes. MSI-X vectors are set up through VFIO
//! and counted, but completion is found by polling. Prints one line, `PASS vfio ...` or `FAIL vfio ...`, and exits
//! 0 or 1.

// Frame building and parsing slice fixed-size arrays at constant offsets (checked lengths first).
#![allow(clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use virtio_core::transport::Transport;
use virtio_core::{
    Buffer, DeviceAddr, DeviceSlice, DriverQueue, Features, QueueConfig, RingFeatures, RingFormat,
    RingLayout,
};
use virtio_pci::vfio::{PciAddress, VfioAccess, VfioDma};
use virtio_pci::{InterruptMode, PciTransport};

/// `virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`).
const NET_HDR_LEN: usize = 12;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Ring size we ask for (capped by the device's maximum).
const WANT_QUEUE_SIZE: u16 = 256;
const RX_BUF_LEN: u32 = 2048;
const RX_BUF_BYTES: usize = 2048;
const TX_BUF_LEN: u32 = 2048;
const ETHERTYPE: u16 = 0x88b5;
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x5e, 0x10, 0x01];
const PAYLOAD_LEN: usize = 64;
const FRAME_LEN: usize = 14 + PAYLOAD_LEN;

/// IOVA of the DMA region, and its layout.
const IOVA: u64 = 0x4000_0000;
const DMA_LEN: usize = 4 << 20;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x2_0000;
const TX_BUFS: u64 = 0x2_0000 + 0x10_0000;

struct Args {
    device: PciAddress,
    packed: bool,
    event_idx: bool,
    frames: u32,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut device = None;
    let mut packed = false;
    let mut event_idx = false;
    let mut frames = 32;
    let mut timeout = Duration::from_secs(20);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => {
                let v = it.next().ok_or("--device needs a PCI address")?;
                device = Some(v.parse::<PciAddress>().map_err(|e| e.to_string())?);
            }
            "--packed" => packed = true,
            "--event-idx" => event_idx = true,
            "--frames" => {
                let v = it.next().ok_or("--frames needs a number")?;
                frames = v.parse().map_err(|_| format!("bad --frames {v}"))?;
            }
            "--timeout-ms" => {
                let v = it.next().ok_or("--timeout-ms needs a number")?;
                timeout =
                    Duration::from_millis(v.parse().map_err(|_| format!("bad --timeout-ms {v}"))?);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        device: device.ok_or("usage: vfio-smoke --device BDF [--packed] [--event-idx] [--frames N] [--timeout-ms MS]")?,
        packed,
        event_idx,
        frames,
        timeout,
    })
}

/// FNV-1a over `data`.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The Ethernet frame carrying sequence number `seq`.
fn frame(seq: u32) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&SRC_MAC);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let payload = &mut f[14..];
    payload[..4].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in payload[4..PAYLOAD_LEN - 4].iter_mut().enumerate() {
        *b = seq.to_le_bytes()[0]
            .wrapping_mul(31)
            .wrapping_add(i.to_le_bytes()[0]);
    }
    let sum = fnv1a(&payload[..PAYLOAD_LEN - 4]);
    payload[PAYLOAD_LEN - 4..].copy_from_slice(&sum.to_le_bytes());
    f
}

/// The sequence number of a received frame, if it is one of ours and intact.
fn check_frame(f: &[u8]) -> Option<u32> {
    if f.len() < FRAME_LEN || f[6..12] != SRC_MAC || f[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let payload = &f[14..FRAME_LEN];
    let sum = u32::from_le_bytes(payload[PAYLOAD_LEN - 4..].try_into().ok()?);
    if fnv1a(&payload[..PAYLOAD_LEN - 4]) != sum {
        return None;
    }
    let seq = u32::from_le_bytes(payload[..4].try_into().ok()?);
    (frame(seq)[..] == f[..FRAME_LEN]).then_some(seq)
}

struct Outcome {
    features: Features,
    mode: InterruptMode,
    queue_size: u16,
    received: u32,
    bad: u32,
    irqs: u64,
    elapsed: Duration,
}

fn run(args: &Args) -> Result<Outcome, String> {
    let start = Instant::now();
    let access = VfioAccess::open(args.device).map_err(|e| format!("open: {e}"))?;
    let container = access.container().clone();
    let dma = VfioDma::new(&container, IOVA, DMA_LEN).map_err(|e| format!("dma: {e}"))?;
    let mem = dma.memory();
    let mut t = PciTransport::new(access).map_err(|e| format!("probe: {e}"))?;
    if t.device_type() != virtio_core::device_type::NET {
        return Err(format!("device type {} is not net", t.device_type()));
    }

    let required = Features::VERSION_1 | Features::ACCESS_PLATFORM;
    let mut supported = required;
    if args.packed {
        supported |= Features::RING_PACKED;
    }
    if args.event_idx {
        supported |= Features::EVENT_IDX;
    }
    let features = t
        .begin_init(supported, required)
        .map_err(|e| format!("negotiation: {e}"))?;
    if args.packed && !features.contains(Features::RING_PACKED) {
        return Err("device did not offer RING_PACKED".into());
    }
    let format = RingFeatures::from_features(features).format();
    let mode = t
        .setup_interrupts(2, InterruptMode::PerQueueVectors)
        .map_err(|e| format!("interrupts: {e}"))?;

    let mut queues = Vec::new();
    for (q, ring) in [(RX_QUEUE, RX_RING), (TX_QUEUE, TX_RING)] {
        let max = t.max_queue_size(q);
        if max == 0 {
            return Err(format!("queue {q} unavailable"));
        }
        let mut size = WANT_QUEUE_SIZE.min(max);
        if format == RingFormat::Split {
            size = 1 << (15 - size.leading_zeros()); // power of two ≤ size
        }
        let layout = RingLayout::new(format, size);
        let mut config = QueueConfig::with_layout(max, &layout, DeviceAddr::new(IOVA + ring))
            .ok_or("ring layout overflows")?;
        config.max_size = max;
        let queue: DriverQueue<_, u32> = DriverQueue::new(&config, features, mem, None)
            .map_err(|e| format!("queue {q}: {e}"))?;
        t.setup_queue(q, queue.config())
            .map_err(|e| format!("setup queue {q}: {e}"))?;
        queues.push(queue);
    }
    let mut tx = queues.pop().ok_or("no tx queue")?;
    let mut rx = queues.pop().ok_or("no rx queue")?;
    let queue_size = rx.size();

    // RX buffers: one writable 2 KiB buffer per slot, token = slot.
    let rx_addr =
        |slot: u32| DeviceAddr::new(IOVA + RX_BUFS + u64::from(slot) * u64::from(RX_BUF_LEN));
    for slot in 0..u32::from(queue_size) {
        rx.add(&[], &[Buffer::new(rx_addr(slot), RX_BUF_LEN)], slot)
            .map_err(|e| format!("rx add: {e}"))?;
    }
    t.finish_init();
    if rx.kick_prepare() {
        t.notify(RX_QUEUE, u32::from(RX_QUEUE));
    }

    let tx_addr = |seq: u32| {
        DeviceAddr::new(
            IOVA + TX_BUFS + u64::from(seq % u32::from(queue_size)) * u64::from(TX_BUF_LEN),
        )
    };
    let mut received = vec![false; usize::try_from(args.frames).map_err(|_| "too many frames")?];
    let mut got = 0u32;
    let mut bad = 0u32;
    let mut next = 0u32;
    let mut irqs = 0u64;
    let deadline = Instant::now() + args.timeout;
    while got < args.frames {
        if Instant::now() > deadline {
            break;
        }
        // Send what fits (one TX slot per frame in flight).
        let mut sent = false;
        while next < args.frames && tx.num_free() > 0 && tx.in_flight() < queue_size {
            let mut bytes = [0u8; NET_HDR_LEN + FRAME_LEN];
            bytes[NET_HDR_LEN..].copy_from_slice(&frame(next));
            let addr = tx_addr(next);
            DeviceSlice::new(mem, addr, bytes.len())
                .ok_or("tx buffer outside DMA memory")?
                .write_at(0, &bytes);
            let len = u32::try_from(bytes.len()).map_err(|_| "frame too long")?;
            tx.add(&[Buffer::new(addr, len)], &[], next)
                .map_err(|e| format!("tx add: {e}"))?;
            next += 1;
            sent = true;
        }
        if sent && tx.kick_prepare() {
            t.notify(TX_QUEUE, u32::from(TX_QUEUE));
        }
        while let Some(_used) = tx.pop_used().map_err(|e| format!("tx used: {e}"))? {}
        let mut reposted = false;
        while let Some(used) = rx.pop_used().map_err(|e| format!("rx used: {e}"))? {
            let len = used.len as usize;
            let mut buf = vec![0u8; len.min(RX_BUF_BYTES)];
            DeviceSlice::new(mem, rx_addr(used.token), RX_BUF_BYTES)
                .ok_or("rx buffer outside DMA memory")?
                .read_at(0, &mut buf);
            match buf.get(NET_HDR_LEN..).and_then(check_frame) {
                Some(seq) => match usize::try_from(seq).ok().and_then(|i| received.get_mut(i)) {
                    Some(seen @ false) => {
                        *seen = true;
                        got += 1;
                    }
                    _ => bad += 1,
                },
                _ => bad += 1,
            }
            rx.add(
                &[],
                &[Buffer::new(rx_addr(used.token), RX_BUF_LEN)],
                used.token,
            )
            .map_err(|e| format!("rx re-add: {e}"))?;
            reposted = true;
        }
        if reposted && rx.kick_prepare() {
            t.notify(RX_QUEUE, u32::from(RX_QUEUE));
        }
        for v in 0..3 {
            irqs += t.access().take_msix(v);
        }
        if rx.is_broken() || tx.is_broken() {
            return Err("a queue broke (device fault)".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    t.reset();
    Ok(Outcome {
        features,
        mode,
        queue_size,
        received: got,
        bad,
        irqs,
        elapsed: start.elapsed(),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vfio-smoke: {e}");
            println!("FAIL vfio reason=usage");
            return ExitCode::FAILURE;
        }
    };
    let ring = if args.packed { "packed" } else { "split" };
    match run(&args) {
        Ok(o) if o.received == args.frames => {
            println!(
                "PASS vfio device=modern ring={ring} frames={} features={:#x} irq={:?} irqs={} queue_size={} bad={} ms={}",
                o.received,
                o.features.bits(),
                o.mode,
                o.irqs,
                o.queue_size,
                o.bad,
                o.elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Ok(o) => {
            println!(
                "FAIL vfio device=modern ring={ring} frames={}/{} bad={} features={:#x} irq={:?} irqs={} reason=timeout",
                o.received,
                args.frames,
                o.bad,
                o.features.bits(),
                o.mode,
                o.irqs
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("FAIL vfio device=modern ring={ring} reason={e}");
            ExitCode::FAILURE
        }
    }
}
