//! A bare-metal x86-64 guest kernel that drives a virtio-net device with the SDK's `no_std` crates
//! (`virtio-core`, `virtio-mmio`, `virtio-pci`, `virtio-net`), and the proof that those crates build without `std`.
//!
//! Boot: QEMU's `-kernel` through the PVH ELF note (32-bit entry `_start32`), or mini-vmm through the ELF entry
//! (`_start64`, already in long mode); see [`boot`]. Both run on our own identity-mapped page tables.
//!
//! Then it finds the virtio-net device: on QEMU (PVH entry) the `-M microvm` virtio-mmio windows at
//! `0xfeb0_0000 + i * 0x200`, on mini-vmm the windows at `0xd000_0000 + i * 0x1000`, checking the magic value
//! (§4.2.2); failing that, bus 0 of PCI through configuration mechanism #1 with the BARs the firmware or VMM
//! assigned ([`pci`]). It initialises the device with [`virtio_net::driver::NetDriver`] over rings and buffers in an
//! identity-mapped static area, sends [`FRAMES`] frames (each with a sequence number, its length and an FNV-1a
//! checksum) with at most [`WINDOW`] in flight, receives the echoes, checks every byte, and prints one line on
//! COM1:
//!
//! `PASS guest transport=<mmio|mmio-legacy|pci|pci-legacy> ring=<split|packed> features=0x... frames=N bytes=B tsc=T`
//!
//! or `FAIL guest <reason>`, then writes the exit port 0xf4 (QEMU `isa-debug-exit`, mini-vmm's exit port): exit
//! status 33 after PASS, 35 after FAIL, 37 after a panic or CPU exception.

#![no_std]
#![no_main]

mod boot;
// The freestanding runtime shared with the no_std proof binary.
#[path = "../../../nostd-proof/src/mem.rs"]
mod freestanding;
mod io;
mod mem;
mod pci;

use core::ptr::NonNull;

use virtio_core::transport::Transport;
use virtio_core::{DeviceAddr, Features, OffsetMemory};
use virtio_mmio::{MmioTransport, MmioVersion};
use virtio_net::driver::{DmaRegion, NetDriver, NetDriverConfig};
use virtio_net::wire::HeaderRepr;
use virtio_net::NetError;
use virtio_pci::{Interface, PciTransport};

use crate::boot::BootKind;
use crate::io::{fail, println, rdtsc};

/// Frames sent and expected back.
pub const FRAMES: u32 = 64;
/// Frames in flight at most.
pub const WINDOW: u32 = 8;
/// Ethertype of the test frames (IEEE 802 local experimental).
const ETHERTYPE: u16 = 0x88b5;
/// Marks a test frame after the Ethernet header.
const MAGIC: &[u8; 4] = b"VSDK";
/// Shortest and longest test frame (without FCS).
const MIN_LEN: usize = 64;
const MAX_LEN: usize = 1514;
/// TSC ticks without progress before the test gives up (1 to 6 s at the TSC rates of today's hosts).
const STALL_TICKS: u64 = 6_000_000_000;
/// Entries per queue.
const QUEUE_SIZE: u16 = 32;

/// mini-vmm's virtio-mmio windows.
const MINI_VMM_MMIO: (u64, u64, usize) = (0xd000_0000, 0x1000, 8);
/// QEMU `-M microvm`'s virtio-mmio windows (hw/i386/microvm.c: `VIRTIO_MMIO_BASE`, 24 transports of 512 bytes).
const MICROVM_MMIO: (u64, u64, usize) = (0xfeb0_0000, 0x200, 24);

/// Called by the boot code on our own stack and page tables.
pub(crate) fn kernel_main(kind: BootKind, start_info: u32) -> ! {
    println!("guest-kernel: boot={kind:?} start_info={start_info:#x}");
    let (base, stride, count) = match kind {
        BootKind::Pvh => MICROVM_MMIO,
        BootKind::Long64 => MINI_VMM_MMIO,
    };
    for slot in 0..count {
        let addr = base + stride * slot as u64;
        let size = usize::try_from(stride).unwrap_or(0x200);
        let Some(ptr) = NonNull::new(addr as *mut u8) else {
            continue;
        };
        // SAFETY: the window is a virtio-mmio slot of the platform (or unbacked MMIO that reads as 0/all-ones, which
        // fails the magic check before anything is written), identity-mapped by the boot page tables, and no Rust
        // reference to it exists.
        let Ok(transport) = (unsafe { MmioTransport::new(ptr, size) }) else {
            continue;
        };
        if transport.device_type() != 1 {
            continue;
        }
        let name = match transport.version() {
            MmioVersion::Legacy => "mmio-legacy",
            _ => "mmio",
        };
        println!("guest-kernel: virtio-net on virtio-mmio at {addr:#x} ({name})");
        run(transport, name);
    }
    if let Some(access) = pci::PortPci::find_net(kind.mapped_bytes()) {
        let (device, function) = access.location();
        let transport = match PciTransport::new(access) {
            Ok(t) => t,
            Err(e) => fail(format_args!("pci 00:{device:02x}.{function}: probe: {e}")),
        };
        let name = match transport.interface() {
            Interface::Legacy => "pci-legacy",
            Interface::Modern => "pci",
        };
        println!("guest-kernel: virtio-net on pci 00:{device:02x}.{function} ({name})");
        run(transport, name);
    }
    fail(format_args!("no virtio-net device found (boot={kind:?})"))
}

/// Runs the echo test over `transport` and exits.
fn run<T: Transport>(transport: T, name: &str) -> ! {
    let base = DeviceAddr::new(mem::dma_base());
    // SAFETY: the DMA area is a static of `DMA_BYTES` bytes at its physical address (identity map), used only by
    // the driver through this memory object's raw pointers.
    let memory = unsafe { OffsetMemory::identity(base, mem::DMA_BYTES) };
    let region = DmaRegion {
        base,
        len: mem::DMA_BYTES,
    };
    let config = NetDriverConfig::new()
        .queue_size(QUEUE_SIZE)
        .tx_big_buffers(false);
    let start = rdtsc();
    let mut driver = match NetDriver::new(transport, memory, region, config) {
        Ok(d) => d,
        Err(e) => fail(format_args!("transport={name} driver init: {e} ({e:?})")),
    };
    let features = driver.features();
    let ring = if features.contains(Features::RING_PACKED) {
        "packed"
    } else {
        "split"
    };
    let mac = driver
        .mac()
        .ok()
        .flatten()
        .unwrap_or([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    println!(
        "guest-kernel: features={:#x} header={} bytes mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        features.bits(),
        driver.header_len().bytes(),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );

    let mut frame = [0u8; MAX_LEN];
    let mut expected = [0u8; MAX_LEN];
    let mut rx = [0u8; 2048];
    let mut seen = [false; FRAMES as usize];
    let (mut sent, mut received, mut ignored, mut bytes) = (0u32, 0u32, 0u32, 0u64);
    let header = HeaderRepr::new();
    let mut last_progress = rdtsc();
    let mut stalls = 0u32;
    while received < FRAMES {
        while sent < FRAMES && sent - received < WINDOW {
            let len = build_frame(sent, &mac, &mut frame);
            match driver.send(0, frame.get(..len).unwrap_or(&[]), &header) {
                Ok(()) => {
                    sent += 1;
                    bytes += len as u64;
                }
                Err(NetError::QueueFull) => break,
                Err(e) => fail(format_args!("transport={name} send #{sent}: {e} ({e:?})")),
            }
        }
        match driver.receive(0, &mut rx) {
            Ok(Some((_, n))) => {
                let got = rx.get(..n).unwrap_or(&[]);
                match check_frame(got, &mac, &mut expected, &mut seen) {
                    Ok(true) => {
                        received += 1;
                        last_progress = rdtsc();
                    }
                    Ok(false) => ignored += 1,
                    Err(why) => fail(format_args!(
                        "transport={name} ring={ring} frame {received} ({n} bytes): {why}"
                    )),
                }
            }
            Ok(None) => {
                if rdtsc().wrapping_sub(last_progress) > STALL_TICKS {
                    // Diagnose a stall once: what each queue holds, then notify both queues again. A test that
                    // only completes after this still fails (a lost notification), but says so.
                    let (rx_used, tx_used) = (driver.has_used(0), driver.has_used(1));
                    let reclaimed = driver.reclaim_tx(0).unwrap_or(usize::MAX);
                    println!(
                        "guest-kernel: stalled: sent {sent}, received {received}; rx has_used={rx_used} \
                         tx has_used={tx_used} tx reclaimed={reclaimed}; notifying both queues again"
                    );
                    if stalls == 0 {
                        stalls += 1;
                        driver.transport_mut().notify(1, 1);
                        driver.transport_mut().notify(0, 0);
                        last_progress = rdtsc();
                        continue;
                    }
                    fail(format_args!(
                        "transport={name} ring={ring} features={:#x} timeout: sent {sent}, received {received}, \
                         ignored {ignored}",
                        features.bits()
                    ));
                }
                core::hint::spin_loop();
            }
            Err(e) => fail(format_args!(
                "transport={name} ring={ring} receive after {received}: {e} ({e:?})"
            )),
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    if stalls > 0 {
        fail(format_args!(
            "transport={name} ring={ring} features={:#x} completed only after re-notifying the queues \
             (a lost notification)",
            features.bits()
        ));
    }
    println!(
        "PASS guest transport={name} ring={ring} features={:#x} frames={FRAMES} bytes={bytes} ignored={ignored} \
         tsc={ticks}",
        features.bits()
    );
    io::exit(io::EXIT_PASS)
}

/// Length of test frame `seq`: spread over 64..=1513 bytes.
fn frame_len(seq: u32) -> usize {
    MIN_LEN + (seq as usize * 97) % (MAX_LEN - MIN_LEN)
}

/// FNV-1a, 32 bits.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Writes test frame `seq` into `out` and returns its length: broadcast destination (so no receive filter can drop
/// the echo), our MAC as source, [`ETHERTYPE`], [`MAGIC`], `seq` and the length (little-endian), a pattern, and the
/// FNV-1a of everything after the Ethernet header in the last four bytes.
fn build_frame(seq: u32, mac: &[u8; 6], out: &mut [u8; MAX_LEN]) -> usize {
    let len = frame_len(seq);
    let sum_at = len - 4;
    out.fill(0);
    put(out, 0, &[0xff; 6]);
    put(out, 6, mac);
    put(out, 12, &ETHERTYPE.to_be_bytes());
    put(out, 14, MAGIC);
    put(out, 18, &seq.to_le_bytes());
    put(out, 22, &u16::try_from(len).unwrap_or(0).to_le_bytes());
    for (i, b) in out.iter_mut().enumerate().take(sum_at).skip(24) {
        let i = u32::try_from(i).unwrap_or(0);
        let [low, ..] = seq
            .wrapping_mul(31)
            .wrapping_add(i.wrapping_mul(7))
            .to_le_bytes();
        *b = low;
    }
    let sum = fnv1a(out.get(14..sum_at).unwrap_or(&[]));
    put(out, sum_at, &sum.to_le_bytes());
    len
}

/// Copies `bytes` into `out` at `at` (nothing if it does not fit).
fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Checks a received frame: `Ok(true)` for a new, intact test frame; `Ok(false)` for a frame that is not a test
/// frame (another ethertype); `Err` for a damaged, unknown or repeated test frame.
fn check_frame(
    got: &[u8],
    mac: &[u8; 6],
    scratch: &mut [u8; MAX_LEN],
    seen: &mut [bool; FRAMES as usize],
) -> Result<bool, &'static str> {
    if got.get(12..14) != Some(&ETHERTYPE.to_be_bytes()[..]) {
        return Ok(false);
    }
    if got.get(14..18) != Some(&MAGIC[..]) {
        return Err("bad magic");
    }
    let seq = got
        .get(18..22)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or("short frame")?;
    let Some(slot) = seen.get_mut(seq as usize) else {
        return Err("sequence number out of range");
    };
    if *slot {
        return Err("duplicate frame");
    }
    let Some(sum_at) = got.len().checked_sub(4).filter(|&at| at >= 24) else {
        return Err("short frame");
    };
    let sum = got
        .get(sum_at..)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or("short frame")?;
    if fnv1a(got.get(14..sum_at).unwrap_or(&[])) != sum {
        return Err("checksum mismatch");
    }
    let len = build_frame(seq, mac, scratch);
    if got.len() != len {
        return Err("length differs from the frame sent");
    }
    if got != scratch.get(..len).unwrap_or(&[]) {
        return Err("contents differ from the frame sent");
    }
    *slot = true;
    Ok(true)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    io::fail_exit(format_args!("panic: {info}"))
}

/// Personality routine symbol for unwinding; never called, because with `panic = "abort"` nothing unwinds. The
/// precompiled `core` still references it from landing pads; LTO removes them in release, this satisfies debug.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
