//! Interop tests: virtio-core's split rings against real third-party peers, moving checked buffers
//! both ways over one shared memory.
//!
//! - **Our driver ↔ rust-vmm `virtio-queue` device** (the device side of Cloud Hypervisor,
//!   Firecracker, vhost-user backends), over a `vm-memory` `GuestMemoryMmap` that our side reaches
//!   through [`VmMemory`].
//! - **rcore `virtio-drivers` driver ↔ our device**: its `VirtQueue` allocates the rings through a
//!   test `Hal` whose DMA pages and bounce buffers (a tiny swiotlb) come from one [`HeapMemory`]
//!   that our `DeviceQueue` also uses; feature negotiation runs virtio-drivers' own
//!   `Transport::begin_init` against our [`Negotiation`].
//!
//! Every buffer carries a request (sequence number, a pattern payload, a checksum) split over one
//! to three device-readable buffers; the device checks it and answers (sequence number, checksum,
//! payload reversed) into one or two device-writable buffers with some slack; the driver checks the
//! answer, the reported length, and that the slack was not touched. Both sides use
//! interrupt/notification suppression as real peers do (a device that sleeps until kicked, a driver
//! that only collects on an interrupt), so a missed notification shows up as a stall.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use virtio_core::{
    Buffer, DeviceAddr, DeviceQueue, DeviceSlice, DriverQueue, Error, Features, HeapMemory,
    IndirectPool, Negotiation, QueueConfig, RingFormat, RingLayout, RingMemory, StatusChange,
    VmMemory,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// -------------------------------------------------------------------------------------------------
// Payload: what every buffer carries, and how both ends check it.
// -------------------------------------------------------------------------------------------------

/// Request: `seq: u32` + payload + `fnv1a(seq ‖ payload): u32`. Response: `seq: u32` +
/// `fnv1a(payload): u32` + payload reversed.
const REQUEST_OVERHEAD: usize = 8;
const RESPONSE_OVERHEAD: usize = 8;

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Pseudo-random bytes; buffer `seq`'s payload is a window of it at an offset that depends on `seq`
/// (a table, so that the unoptimised test build spends its time in the rings, not in generating
/// bytes).
const PATTERN: [u8; 1024] = {
    let mut table = [0; 1024];
    let mut i = 0;
    while i < table.len() {
        table[i] = ((i as u32).wrapping_mul(0x9e37_79b9) >> 24) as u8;
        i += 1;
    }
    table
};

fn pattern(seq: u32, len: usize) -> &'static [u8] {
    let offset = (seq as usize).wrapping_mul(37) % 509;
    &PATTERN[offset..offset + len]
}

/// How buffer `seq` is laid out: payload length, and the split of the request (readable) and of the
/// response space (writable, with 0..=4 bytes of slack the device must leave alone). Every eleventh
/// buffer is readable only (a one-way request, like a transmit buffer): the device answers nothing
/// and reports 0 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    payload: usize,
    readable: Vec<u32>,
    writable: Vec<u32>,
}

fn split_len(total: usize, parts: usize) -> Vec<u32> {
    let base = total / parts;
    (0..parts).map(|i| if i + 1 == parts { total - base * (parts - 1) } else { base } as u32).collect()
}

fn shape(seq: u32, max_payload: usize) -> Shape {
    let payload = (seq as usize).wrapping_mul(13) % (max_payload + 1);
    let readable = 1 + (seq % 3) as usize;
    let writable = 1 + (seq / 3 % 2) as usize;
    let slack = (seq % 5) as usize;
    Shape {
        payload,
        readable: split_len(REQUEST_OVERHEAD + payload, readable),
        writable: if seq % 11 == 10 {
            Vec::new()
        } else {
            split_len(RESPONSE_OVERHEAD + payload + slack, writable)
        },
    }
}

impl Stats {
    /// Adds the counters a device thread kept.
    fn merge_device(&mut self, device: &Stats) {
        self.device_wakes += device.device_wakes;
        self.interrupts += device.interrupts;
        self.interrupts_suppressed += device.interrupts_suppressed;
        self.indirect_chains += device.indirect_chains;
        self.direct_chains += device.direct_chains;
    }
}

impl Shape {
    fn buffers(&self) -> usize {
        self.readable.len() + self.writable.len()
    }

    /// What the device must write (nothing for a readable-only chain).
    fn response(&self, seq: u32) -> Vec<u8> {
        if self.writable.is_empty() {
            Vec::new()
        } else {
            expected_response(seq, self.payload)
        }
    }
}

fn request(seq: u32, payload: usize) -> Vec<u8> {
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend_from_slice(pattern(seq, payload));
    let sum = fnv1a(&bytes);
    bytes.extend(sum.to_le_bytes());
    bytes
}

fn expected_response(seq: u32, payload: usize) -> Vec<u8> {
    let data = pattern(seq, payload);
    let mut bytes = seq.to_le_bytes().to_vec();
    bytes.extend(fnv1a(data).to_le_bytes());
    bytes.extend(data.iter().rev());
    bytes
}

/// The device's half: checks a request (checksum, and the pattern its sequence number implies) and
/// builds the response. Returns the sequence number too, so the device can check the chain's shape.
fn serve(request: &[u8]) -> (u32, Vec<u8>) {
    assert!(
        request.len() >= REQUEST_OVERHEAD,
        "request too short: {} bytes",
        request.len()
    );
    let (body, sum) = request.split_at(request.len() - 4);
    assert_eq!(
        fnv1a(body),
        u32::from_le_bytes(sum.try_into().unwrap()),
        "request checksum"
    );
    let seq = u32::from_le_bytes(body[..4].try_into().unwrap());
    let payload = &body[4..];
    assert_eq!(
        payload,
        pattern(seq, payload.len()),
        "request {seq} payload"
    );
    let mut response = seq.to_le_bytes().to_vec();
    response.extend(fnv1a(payload).to_le_bytes());
    response.extend(payload.iter().rev());
    (seq, response)
}

/// `vring_need_event` (virtio 1.3 §2.7.10), the reference both sides' suppression must agree with.
fn spec_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// How long a threaded run's driver waits for an interrupt before declaring a notification lost.
const STALL: Duration = Duration::from_secs(20);

/// A threaded run's driver gave up waiting: join the device thread (re-raising its panic if it
/// failed) and fail.
fn lost_notification<T>(device: thread::JoinHandle<T>, what: &str) -> ! {
    match device.join() {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(_) => panic!("lost notification: {what}"),
    }
}

/// What a run did, for assertions and for the report printed with `--nocapture`.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    completed: u32,
    kicks: u32,
    kicks_suppressed: u32,
    interrupts: u32,
    interrupts_suppressed: u32,
    device_wakes: u32,
    indirect_chains: u32,
    direct_chains: u32,
    max_in_flight: u32,
    /// Kicks the virtio-drivers driver failed to send although `vring_need_event` required them
    /// (see `virtio_drivers_event_idx_at_u16_wrap_skips_kick_split_device_requested`).
    peer_missed_kicks: u32,
}

// -------------------------------------------------------------------------------------------------
// 1. Our split DriverQueue ↔ rust-vmm virtio-queue (device), over vm-memory GuestMemoryMmap.
// -------------------------------------------------------------------------------------------------

mod vmm {
    use virtio_queue::{Queue, QueueT};

    use super::*;

    pub(super) const GUEST_MEM_LEN: usize = 4 << 20;
    const RING_BASE: u64 = 0x1000;
    const INDIRECT_BASE: u64 = 0x10_0000;
    const BUF_BASE: u64 = 0x20_0000;
    /// Per in-flight chain: readable piece `i` at offset `i * PIECE_STRIDE`, writable piece `j` at
    /// offset `WRITABLE + j * WRITABLE_STRIDE`.
    const SLOT_STRIDE: u64 = 0x1000;
    const PIECE_STRIDE: u64 = 0x200;
    const WRITABLE: u64 = 0x800;
    const WRITABLE_STRIDE: u64 = 0x300;
    /// What the driver puts in the response space before offering it; bytes past the reported
    /// length must keep it.
    const FILL: u8 = 0xcd;

    pub(super) type Driver = DriverQueue<VmMemory<GuestMemoryMmap>, Token>;

    /// The driver's token: which sequence number, in which buffer slot.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Token {
        seq: u32,
        slot: usize,
    }

    impl Token {
        pub(super) fn new(seq: u32, slot: usize) -> Self {
            Self { seq, slot }
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Run {
        pub(super) size: u16,
        pub(super) features: Features,
        pub(super) indirect_entries: Option<u16>,
        pub(super) total: u32,
        pub(super) max_payload: usize,
        /// Chains the device handles per wake-up before yielding (it then stays runnable without
        /// re-enabling notifications).
        pub(super) device_budget: usize,
        /// Return each wake-up's chains to the used ring in reverse order (out-of-order
        /// completion).
        pub(super) reverse: bool,
    }

    pub(super) struct Pair {
        pub(super) gm: GuestMemoryMmap,
        pub(super) driver: Driver,
        pub(super) queue: Queue,
        pub(super) size: u16,
        features: Features,
        max_payload: usize,
        free_slots: Vec<usize>,
        next_seq: u32,
    }

    /// Configures a virtio-queue `Queue` register by register, as a VMM's transport would, from our
    /// driver's `QueueConfig`.
    fn configure_device(
        queue: &mut Queue,
        gm: &GuestMemoryMmap,
        config: &QueueConfig,
        features: Features,
    ) {
        queue.try_set_size(config.size).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(config.descriptors.raw()))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(config.driver_area.raw()))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(config.device_area.raw()))
            .unwrap();
        queue.set_event_idx(features.contains(Features::EVENT_IDX));
        queue.set_ready(true);
        assert!(
            queue.is_valid(gm),
            "virtio-queue rejects the layout our driver chose"
        );
        assert_eq!(
            (queue.desc_table(), queue.avail_ring(), queue.used_ring()),
            (
                config.descriptors.raw(),
                config.driver_area.raw(),
                config.device_area.raw()
            )
        );
    }

    pub(super) fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEM_LEN)]).unwrap()
    }

    impl Pair {
        pub(super) fn new(
            size: u16,
            features: Features,
            indirect_entries: Option<u16>,
            max_payload: usize,
        ) -> Self {
            assert!(REQUEST_OVERHEAD + max_payload <= PIECE_STRIDE as usize);
            assert!(RESPONSE_OVERHEAD + max_payload + 4 <= WRITABLE_STRIDE as usize);
            let gm = guest_memory();
            let layout = RingLayout::new(RingFormat::Split, size);
            let config =
                QueueConfig::with_layout(size, &layout, DeviceAddr::new(RING_BASE)).unwrap();
            assert!(RING_BASE + layout.total_len() as u64 <= INDIRECT_BASE);
            let indirect = indirect_entries.map(|entries| {
                assert!(INDIRECT_BASE + IndirectPool::len_for(size, entries) as u64 <= BUF_BASE);
                IndirectPool {
                    addr: DeviceAddr::new(INDIRECT_BASE),
                    entries_per_chain: entries,
                }
            });
            assert!(BUF_BASE + u64::from(size) * SLOT_STRIDE <= GUEST_MEM_LEN as u64);
            // `GuestMemoryMmap` clones share the same mappings: both peers see one memory.
            let driver =
                Driver::new(&config, features, VmMemory::new(gm.clone()), indirect).unwrap();

            let mut queue = Queue::new(size).unwrap();
            configure_device(&mut queue, &gm, &config, features);
            Self {
                gm,
                driver,
                queue,
                size,
                features,
                max_payload,
                free_slots: (0..usize::from(size)).rev().collect(),
                next_seq: 0,
            }
        }

        /// Device reset (or queue reset): the driver takes back what is in flight and
        /// re-initialises its ring, the device forgets its indices and is configured again. Returns
        /// the sequence numbers taken back.
        pub(super) fn reset(&mut self) -> Vec<u32> {
            self.queue.reset();
            let taken = self.driver.reset();
            let config = *self.driver.config();
            configure_device(&mut self.queue, &self.gm, &config, self.features);
            let mut seqs = Vec::new();
            for Token { seq, slot } in taken {
                self.free_slots.push(slot);
                seqs.push(seq);
            }
            seqs.sort_unstable();
            seqs
        }

        /// Driver submits what fits and kicks if asked; the device serves everything and re-arms;
        /// the driver collects. Returns the sequence numbers collected.
        pub(super) fn lockstep(&mut self, stats: &mut Stats) -> Vec<u32> {
            while self.submit() {}
            self.driver.kick_prepare();
            self.device_serve(usize::MAX, false, stats);
            assert!(!self.queue.enable_notification(&self.gm).unwrap());
            std::iter::from_fn(|| self.collect()).collect()
        }

        fn slot_base(slot: usize) -> u64 {
            BUF_BASE + slot as u64 * SLOT_STRIDE
        }

        fn buffers(slot: usize, shape: &Shape) -> (Vec<Buffer>, Vec<Buffer>) {
            let base = Self::slot_base(slot);
            let readable = (0u64..)
                .zip(&shape.readable)
                .map(|(i, &len)| Buffer::new(DeviceAddr::new(base + i * PIECE_STRIDE), len))
                .collect();
            let writable = (0u64..)
                .zip(&shape.writable)
                .map(|(j, &len)| {
                    Buffer::new(DeviceAddr::new(base + WRITABLE + j * WRITABLE_STRIDE), len)
                })
                .collect();
            (readable, writable)
        }

        /// Writes the next request into a free slot and makes it available. `false` when out of
        /// slots or the ring is full.
        pub(super) fn submit(&mut self) -> bool {
            let Some(slot) = self.free_slots.pop() else {
                return false;
            };
            let seq = self.next_seq;
            let shape = shape(seq, self.max_payload);
            let (readable, writable) = Self::buffers(slot, &shape);
            let bytes = request(seq, shape.payload);
            let mut at = 0;
            for b in &readable {
                let end = at + b.len as usize;
                self.gm
                    .write_slice(&bytes[at..end], GuestAddress(b.addr.raw()))
                    .unwrap();
                at = end;
            }
            for b in &writable {
                self.gm
                    .write_slice(
                        &[FILL; WRITABLE_STRIDE as usize][..b.len as usize],
                        GuestAddress(b.addr.raw()),
                    )
                    .unwrap();
            }
            match self.driver.add(&readable, &writable, Token { seq, slot }) {
                Ok(head) => {
                    assert!(head < self.size);
                    self.next_seq += 1;
                    true
                }
                Err(Error::QueueFull { .. }) => {
                    self.free_slots.push(slot);
                    false
                }
                Err(e) => panic!("driver add {seq}: {e:?}"),
            }
        }

        /// Collects one used buffer and checks it; `None` when the used ring is empty.
        pub(super) fn collect(&mut self) -> Option<u32> {
            let used = self.driver.pop_used().unwrap()?;
            let Token { seq, slot } = used.token;
            let shape = shape(seq, self.max_payload);
            let expected = shape.response(seq);
            assert_eq!(used.len as usize, expected.len(), "used length of {seq}");
            let (_, writable) = Self::buffers(slot, &shape);
            let mut got = Vec::new();
            for b in &writable {
                let mut piece = vec![0; b.len as usize];
                self.gm
                    .read_slice(&mut piece, GuestAddress(b.addr.raw()))
                    .unwrap();
                got.extend(piece);
            }
            let (answer, slack) = got.split_at(used.len as usize);
            assert_eq!(answer, expected, "response to {seq}");
            assert!(
                slack.iter().all(|&b| b == FILL),
                "device wrote past the used length of {seq}"
            );
            self.free_slots.push(slot);
            Some(seq)
        }

        /// The virtio-queue device handles up to `budget` chains and returns them (in reverse if
        /// asked); returns the number handled and whether it wants to interrupt the driver.
        pub(super) fn device_serve(
            &mut self,
            budget: usize,
            reverse: bool,
            stats: &mut Stats,
        ) -> (usize, bool) {
            serve_chains(
                &mut self.queue,
                &self.gm,
                self.max_payload,
                budget,
                reverse,
                stats,
            )
        }

        /// Moves the device to its own thread, leaving an unconfigured `Queue` behind.
        pub(super) fn take_device(&mut self) -> Queue {
            std::mem::replace(&mut self.queue, Queue::new(self.size).unwrap())
        }

        pub(super) fn submitted(&self) -> u32 {
            self.next_seq
        }
    }

    fn head_is_indirect(queue: &Queue, gm: &GuestMemoryMmap, head: u16) -> bool {
        let addr = queue.desc_table() + u64::from(head) * 16 + 12;
        let flags: u16 = gm.read_obj(GuestAddress(addr)).unwrap();
        flags & virtio_core::ring_flags::DESC_F_INDIRECT != 0
    }

    /// The virtio-queue device handles up to `budget` chains and returns them (in reverse if
    /// asked); returns the number handled and whether it wants to interrupt the driver.
    pub(super) fn serve_chains(
        queue: &mut Queue,
        gm: &GuestMemoryMmap,
        max_payload: usize,
        budget: usize,
        reverse: bool,
        stats: &mut Stats,
    ) -> (usize, bool) {
        let mut done = Vec::new();
        while done.len() < budget {
            let Some(chain) = queue.pop_descriptor_chain(gm) else {
                break;
            };
            let head = chain.head_index();
            let descriptors: Vec<_> = chain.clone().collect();
            let mut reader = chain.clone().reader(gm).unwrap();
            let mut req = vec![0; reader.available_bytes()];
            reader.read_exact(&mut req).unwrap();
            let (seq, response) = serve(&req);
            let expected = shape(seq, max_payload);
            let readable: Vec<u32> = descriptors
                .iter()
                .filter(|d| !d.is_write_only())
                .map(|d| d.len())
                .collect();
            let writable: Vec<u32> = descriptors
                .iter()
                .filter(|d| d.is_write_only())
                .map(|d| d.len())
                .collect();
            assert_eq!(
                (readable, writable),
                (expected.readable.clone(), expected.writable.clone()),
                "chain {seq}"
            );
            if head_is_indirect(queue, gm, head) {
                stats.indirect_chains += 1;
            } else {
                stats.direct_chains += 1;
            }
            let mut writer = chain.writer(gm).unwrap();
            if !expected.writable.is_empty() {
                writer.write_all(&response).unwrap();
            }
            done.push((head, writer.bytes_written() as u32));
        }
        if reverse {
            done.reverse();
        }
        for &(head, len) in &done {
            queue.add_used(gm, head, len).unwrap();
        }
        let irq = !done.is_empty() && queue.needs_notification(gm).unwrap();
        (done.len(), irq)
    }

    /// Runs `run.total` buffers with a device that sleeps until kicked and a driver that collects
    /// only when interrupted; panics on any check, and on a stall (a notification one side needed
    /// and the other did not send).
    pub(super) fn run(run: Run) -> Stats {
        let mut pair = Pair::new(
            run.size,
            run.features,
            run.indirect_entries,
            run.max_payload,
        );
        let mut stats = Stats::default();
        let mut device_runnable = false;
        let mut irq = false;
        let mut expected_seq_done = vec![false; run.total as usize];
        while stats.completed < run.total {
            let mut progress = false;
            let mut added = 0;
            while pair.submitted() < run.total && pair.submit() {
                added += 1;
            }
            stats.max_in_flight = stats.max_in_flight.max(u32::from(pair.driver.in_flight()));
            if added != 0 {
                progress = true;
                if pair.driver.kick_prepare() {
                    stats.kicks += 1;
                    device_runnable = true;
                } else {
                    stats.kicks_suppressed += 1;
                }
            }
            // The device may run twice before the driver handles an interrupt (it is the faster
            // side).
            for _ in 0..2 {
                if !device_runnable {
                    break;
                }
                // Linux/QEMU device loop: notifications off while draining, back on before
                // sleeping, re-check.
                progress = true;
                stats.device_wakes += 1;
                pair.queue.disable_notification(&pair.gm).unwrap();
                let (handled, wants_irq) =
                    pair.device_serve(run.device_budget, run.reverse, &mut stats);
                if handled != 0 {
                    if wants_irq {
                        stats.interrupts += 1;
                        irq = true;
                    } else {
                        stats.interrupts_suppressed += 1;
                    }
                }
                if handled < run.device_budget {
                    device_runnable = pair.queue.enable_notification(&pair.gm).unwrap();
                }
            }
            if irq {
                // Linux driver interrupt handler: callbacks off while collecting, back on,
                // re-check.
                progress = true;
                irq = false;
                loop {
                    pair.driver.disable_callbacks();
                    while let Some(seq) = pair.collect() {
                        assert!(
                            !std::mem::replace(&mut expected_seq_done[seq as usize], true),
                            "{seq} used twice"
                        );
                        stats.completed += 1;
                    }
                    if pair.driver.enable_callbacks() {
                        break;
                    }
                }
            }
            assert!(
                progress,
                "stall after {} of {} buffers: in flight {}, device next_avail {} next_used {}, driver has_used {}",
                stats.completed,
                run.total,
                pair.driver.in_flight(),
                pair.queue.next_avail(),
                pair.queue.next_used(),
                pair.driver.has_used(),
            );
        }
        assert!(expected_seq_done.iter().all(|&d| d));
        assert_eq!(pair.driver.in_flight(), 0);
        assert_eq!(pair.driver.num_free(), run.size);
        assert!(!pair.driver.is_broken());
        assert_eq!(pair.queue.next_avail(), run.total as u16);
        assert_eq!(pair.queue.next_used(), run.total as u16);
        stats
    }

    /// The driver on the test thread, the virtio-queue device on its own thread, notifying each
    /// other (through channels) only when suppression says so: a broken barrier pairing loses a
    /// kick or an interrupt, and the driver, left waiting, fails after [`STALL`].
    pub(super) fn run_threaded(run: Run) -> Stats {
        let mut pair = Pair::new(
            run.size,
            run.features,
            run.indirect_entries,
            run.max_payload,
        );
        let mut queue = pair.take_device();
        let gm = pair.gm.clone();
        let max_payload = run.max_payload;
        let (kick, kicked) = mpsc::channel::<()>();
        let (irq, interrupted) = mpsc::channel::<()>();
        let device = thread::spawn(move || {
            let mut stats = Stats::default();
            // Sleeps until kicked; the channel closes when the driver is done.
            while kicked.recv().is_ok() {
                stats.device_wakes += 1;
                loop {
                    queue.disable_notification(&gm).unwrap();
                    let (handled, wants_irq) =
                        serve_chains(&mut queue, &gm, max_payload, usize::MAX, false, &mut stats);
                    if handled != 0 && wants_irq {
                        stats.interrupts += 1;
                        // The driver may have finished and hung up; nothing to deliver then.
                        let _ = irq.send(());
                    } else if handled != 0 {
                        stats.interrupts_suppressed += 1;
                    }
                    if !queue.enable_notification(&gm).unwrap() {
                        break;
                    }
                }
            }
            (queue, stats)
        });
        let mut stats = Stats::default();
        let mut done = vec![false; run.total as usize];
        while stats.completed < run.total {
            let mut added = 0;
            while pair.submitted() < run.total && pair.submit() {
                added += 1;
            }
            if added != 0 {
                if pair.driver.kick_prepare() {
                    stats.kicks += 1;
                    if kick.send(()).is_err() {
                        lost_notification(device, "device thread ended");
                    }
                } else {
                    stats.kicks_suppressed += 1;
                }
            }
            // Ring full or everything submitted: sleep until interrupted.
            if interrupted.recv_timeout(STALL).is_err() {
                let what = format!(
                    "{} of {} done, {} in flight, driver has_used {}",
                    stats.completed,
                    run.total,
                    pair.driver.in_flight(),
                    pair.driver.has_used()
                );
                drop(kick);
                lost_notification(device, &what);
            }
            loop {
                pair.driver.disable_callbacks();
                while let Some(seq) = pair.collect() {
                    assert!(
                        !std::mem::replace(&mut done[seq as usize], true),
                        "{seq} used twice"
                    );
                    stats.completed += 1;
                }
                if pair.driver.enable_callbacks() {
                    break;
                }
            }
        }
        drop(kick);
        let (queue, device_stats) = device.join().unwrap();
        assert_eq!(
            (queue.next_avail(), queue.next_used()),
            (run.total as u16, run.total as u16)
        );
        assert_eq!(pair.driver.in_flight(), 0);
        stats.merge_device(&device_stats);
        stats
    }
}

/// How many of the first `total` buffers have a shape matching `f`.
fn chains_where(total: u32, f: impl Fn(&Shape) -> bool) -> u32 {
    (0..total).filter(|&seq| f(&shape(seq, 0))).count() as u32
}

fn report(name: &str, stats: &Stats) {
    println!("{name}: {stats:?}");
}

#[test]
fn split_driver_to_virtio_queue_10k_buffers_round_trip() {
    let stats = vmm::run(vmm::Run {
        size: 256,
        features: Features::VERSION_1,
        indirect_entries: None,
        total: 10_000,
        max_payload: 200,
        device_budget: usize::MAX,
        reverse: false,
    });
    report("no event idx", &stats);
    assert_eq!(stats.completed, 10_000);
    assert_eq!(stats.indirect_chains, 0);
    // virtio-queue's device asks for no kicks while it drains (VIRTQ_USED_F_NO_NOTIFY); it always
    // interrupts.
    assert_eq!(stats.interrupts_suppressed, 0);
}

#[test]
fn split_driver_event_idx_to_virtio_queue_out_of_order_round_trip() {
    let stats = vmm::run(vmm::Run {
        size: 256,
        features: Features::VERSION_1 | Features::EVENT_IDX,
        indirect_entries: None,
        total: 10_000,
        max_payload: 200,
        device_budget: 7,
        reverse: true,
    });
    report("event idx, budget 7, reversed", &stats);
    assert_eq!(stats.completed, 10_000);
    assert!(
        stats.kicks_suppressed > 0,
        "a device that is still draining needs no kick"
    );
    assert!(
        stats.interrupts_suppressed > 0,
        "a driver that has not collected yet needs no second interrupt"
    );
}

#[test]
fn split_driver_indirect_to_virtio_queue_round_trip() {
    let stats = vmm::run(vmm::Run {
        size: 64,
        features: Features::VERSION_1 | Features::INDIRECT_DESC | Features::EVENT_IDX,
        indirect_entries: Some(4),
        total: 10_000,
        max_payload: 200,
        device_budget: 5,
        reverse: true,
    });
    report("indirect (4 entries) + event idx", &stats);
    assert_eq!(stats.completed, 10_000);
    // Chains of 2..=4 buffers go through the pool; single buffers and 5-buffer chains stay direct.
    let indirect = chains_where(10_000, |s| (2..=4).contains(&s.buffers()));
    assert_eq!(
        (stats.indirect_chains, stats.direct_chains),
        (indirect, 10_000 - indirect)
    );
    assert!(indirect > 0 && indirect < 10_000);
    // Indirect chains take one descriptor each: a 64-entry ring keeps far more than 64 / 5 chains
    // in flight.
    assert!(stats.max_in_flight > 32, "{stats:?}");
}

#[test]
fn split_driver_small_queue_to_virtio_queue_wraps_u16_indices() {
    let total = 66_000;
    let stats = vmm::run(vmm::Run {
        size: 16,
        features: Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC,
        indirect_entries: Some(3),
        total,
        max_payload: 24,
        device_budget: 5,
        reverse: true,
    });
    report("wrap, size 16", &stats);
    assert_eq!(stats.completed, total);
    assert!(total > 65_536);
}

#[test]
#[ignore = "heavy tier (~2 s in debug); flag-based suppression does not depend on the indices"]
fn split_driver_without_event_idx_small_queue_wraps_u16_indices() {
    let total = 66_000;
    let stats = vmm::run(vmm::Run {
        size: 16,
        features: Features::VERSION_1,
        indirect_entries: None,
        total,
        max_payload: 16,
        device_budget: usize::MAX,
        reverse: false,
    });
    report("wrap, size 16, no event idx", &stats);
    assert_eq!(stats.completed, total);
}

#[test]
fn split_driver_without_event_idx_kick_follows_virtio_queue_used_flags() {
    use virtio_queue::QueueT;
    let mut pair = vmm::Pair::new(16, Features::VERSION_1, None, 32);
    let mut stats = Stats::default();
    // The device is draining: VIRTQ_USED_F_NO_NOTIFY set, no kick.
    pair.queue.disable_notification(&pair.gm).unwrap();
    assert!(pair.submit());
    assert!(!pair.driver.kick_prepare());
    // It re-enables before sleeping, sees the buffer that raced in, and keeps going.
    assert!(pair.queue.enable_notification(&pair.gm).unwrap());
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats), (1, true));
    assert!(!pair.queue.enable_notification(&pair.gm).unwrap());
    // Asleep with notifications on: the next buffer must be kicked.
    assert!(pair.submit());
    assert!(pair.driver.kick_prepare());
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats), (1, true));
    assert_eq!(
        (pair.collect(), pair.collect(), pair.collect()),
        (Some(0), Some(1), None)
    );
}

#[test]
fn split_driver_event_idx_kick_follows_virtio_queue_avail_event() {
    use virtio_queue::QueueT;
    let mut pair = vmm::Pair::new(16, Features::VERSION_1 | Features::EVENT_IDX, None, 32);
    let mut stats = Stats::default();
    // Fresh ring: avail_event = 0, so the first buffer crosses it.
    assert!(pair.submit());
    assert!(pair.driver.kick_prepare());
    // The device has not re-armed: adding more is silent.
    assert!(pair.submit());
    assert!(!pair.driver.kick_prepare());
    // The device drains and re-arms at its next_avail before sleeping.
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats).0, 2);
    assert!(!pair.queue.enable_notification(&pair.gm).unwrap());
    assert_eq!((pair.collect(), pair.collect()), (Some(0), Some(1)));
    for _ in 0..3 {
        assert!(pair.submit());
    }
    assert!(
        pair.driver.kick_prepare(),
        "after enable_notification the next kick_prepare must be true"
    );
    // Partially drained and not re-armed: no kick.
    assert_eq!(pair.device_serve(1, false, &mut stats).0, 1);
    assert_eq!(pair.collect(), Some(2));
    assert!(pair.submit());
    assert!(!pair.driver.kick_prepare());
    // Re-armed while 3 are pending: enable_notification reports them, and the next add (which does
    // not cross avail_event = next_avail = 3, already behind avail idx 6) needs no kick.
    assert!(pair.queue.enable_notification(&pair.gm).unwrap());
    assert!(pair.submit());
    assert!(!pair.driver.kick_prepare());
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats).0, 4);
    assert!(!pair.queue.enable_notification(&pair.gm).unwrap());
    for seq in 3..7 {
        assert_eq!(pair.collect(), Some(seq));
    }
    assert!(pair.submit());
    assert!(pair.driver.kick_prepare());
}

#[test]
fn split_driver_event_idx_used_event_drives_virtio_queue_needs_notification() {
    let mut pair = vmm::Pair::new(16, Features::VERSION_1 | Features::EVENT_IDX, None, 32);
    let mut stats = Stats::default();
    for _ in 0..4 {
        assert!(pair.submit());
    }
    // used_event = 0 (the driver has collected nothing): the first used buffer interrupts...
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, true));
    // ...the second, before the driver collected, does not.
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, false));
    // Collecting moves used_event to the driver's last_used.
    assert_eq!(
        (pair.collect(), pair.collect(), pair.collect()),
        (Some(0), Some(1), None)
    );
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, true));
    // Callbacks off: used_event half the index space away.
    pair.driver.disable_callbacks();
    assert_eq!(pair.collect(), Some(2));
    assert!(pair.submit() && pair.submit());
    assert_eq!(pair.device_serve(2, false, &mut stats), (2, false));
    // Re-enabling while used buffers wait reports them (the driver must collect before sleeping).
    assert!(!pair.driver.enable_callbacks());
    assert_eq!(
        (pair.collect(), pair.collect(), pair.collect()),
        (Some(3), Some(4), None)
    );
    assert!(pair.driver.enable_callbacks());
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, true));
    assert_eq!(pair.collect(), Some(5));
}

#[test]
fn split_driver_reset_with_buffers_in_flight_resumes_with_virtio_queue() {
    use virtio_queue::QueueT;
    let features = Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC;
    let mut pair = vmm::Pair::new(16, features, Some(3), 32);
    let mut stats = Stats::default();
    for _ in 0..5 {
        pair.lockstep(&mut stats);
    }
    // Leave buffers in every state: available and not popped, popped and not used, used and not
    // collected.
    while pair.submit() {}
    pair.driver.kick_prepare();
    let (served, _) = pair.device_serve(2, false, &mut stats);
    assert_eq!(served, 2);
    let _popped_not_used = pair.queue.pop_descriptor_chain(&pair.gm).unwrap();
    let in_flight = pair.driver.in_flight();
    assert!(in_flight > 3, "{in_flight}");
    let first = pair.submitted() - u32::from(in_flight);

    let taken = pair.reset();
    assert_eq!(
        taken,
        (first..pair.submitted()).collect::<Vec<_>>(),
        "every buffer in flight comes back once"
    );
    assert_eq!((pair.driver.in_flight(), pair.driver.num_free()), (0, 16));
    assert!(
        pair.driver.pop_used().unwrap().is_none(),
        "nothing used after a reset"
    );

    // Both sides start again from index 0 and keep moving checked buffers.
    let mut collected = 0;
    for _ in 0..50 {
        collected += pair.lockstep(&mut stats).len();
    }
    assert!(collected > 100, "{collected}");
    assert_eq!(pair.queue.next_used(), collected as u16);
}

#[test]
fn split_driver_queue_sized_chain_to_virtio_queue_round_trip() {
    use virtio_queue::QueueT;
    // A direct chain of all 16 descriptors (8 readable, 8 writable), then the same through a
    // 16-entry indirect table: the longest chains either side allows.
    for (features, pool) in [
        (Features::VERSION_1, None),
        (Features::VERSION_1 | Features::INDIRECT_DESC, Some(16)),
    ] {
        let pair = vmm::Pair::new(16, features, pool, 32);
        let (mut driver, mut queue, gm) = (pair.driver, pair.queue, pair.gm);
        let buffer = |i: u64| Buffer::new(DeviceAddr::new(0x30_0000 + i * 0x100), 0x10 + i as u32);
        let readable: Vec<Buffer> = (0..8).map(buffer).collect();
        let writable: Vec<Buffer> = (8..16).map(buffer).collect();
        let request: Vec<u8> = (0..readable.iter().map(|b| b.len).sum::<u32>())
            .map(|i| i as u8)
            .collect();
        let mut at = 0;
        for b in &readable {
            gm.write_slice(
                &request[at..at + b.len as usize],
                GuestAddress(b.addr.raw()),
            )
            .unwrap();
            at += b.len as usize;
        }
        let token = vmm::Token::new(7, 0);
        driver.add(&readable, &writable, token).unwrap();
        assert_eq!(driver.num_free(), if pool.is_some() { 15 } else { 0 });
        let chain = queue.pop_descriptor_chain(&gm).unwrap();
        let head = chain.head_index();
        assert_eq!(chain.clone().count(), 16);
        let mut got = Vec::new();
        chain
            .clone()
            .reader(&gm)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, request);
        let mut writer = chain.writer(&gm).unwrap();
        let reply: Vec<u8> = (0..writer.available_bytes())
            .map(|i| (i * 7) as u8)
            .collect();
        assert_eq!(
            writer.available_bytes(),
            writable.iter().map(|b| b.len as usize).sum::<usize>()
        );
        writer.write_all(&reply).unwrap();
        let written = writer.bytes_written() as u32;
        queue.add_used(&gm, head, written).unwrap();
        let used = driver.pop_used().unwrap().unwrap();
        assert_eq!((used.token, used.len), (token, written));
        let mut at = 0;
        for b in &writable {
            let mut piece = vec![0; b.len as usize];
            gm.read_slice(&mut piece, GuestAddress(b.addr.raw()))
                .unwrap();
            assert_eq!(piece, reply[at..at + b.len as usize]);
            at += b.len as usize;
        }
        assert_eq!(driver.num_free(), 16);
    }
}

// -------------------------------------------------------------------------------------------------
// 2. rcore virtio-drivers VirtQueue (driver) ↔ our split DeviceQueue, over one HeapMemory.
// -------------------------------------------------------------------------------------------------

mod guest {
    use virtio_drivers::queue::VirtQueue;
    use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
    use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
    use zerocopy::{FromBytes, Immutable, IntoBytes};

    use super::*;

    /// Device address of the DMA region (non-zero: virtio-drivers treats physical address 0 as an
    /// allocation failure).
    const DMA_BASE: u64 = 0x1000_0000;
    /// Pages for `dma_alloc` (the rings), then the bounce slots.
    const DMA_PAGES: usize = 64;
    const BOUNCE_SLOT: usize = 1024;
    const BOUNCE_SLOTS: usize = 4096;
    const BOUNCE_BASE: u64 = DMA_BASE + (DMA_PAGES * PAGE_SIZE) as u64;
    /// Written over a bounce slot when it is unshared, so a device touching a returned buffer reads
    /// garbage.
    const POISON: u8 = 0xee;

    /// The per-test DMA region: `Hal` methods are associated functions, so the region they allocate
    /// from is thread-local (each test runs on its own thread and installs its own).
    struct Arena {
        memory: Arc<HeapMemory>,
        next_page: usize,
        free: Vec<usize>,
        /// Length shared in each bounce slot, `None` when free.
        shared: Vec<Option<usize>>,
        shares: u64,
    }

    thread_local! {
        static ARENA: RefCell<Option<Arena>> = const { RefCell::new(None) };
    }

    /// Installs a fresh arena for this thread; removes it on drop.
    pub(super) struct ArenaGuard {
        memory: Arc<HeapMemory>,
    }

    impl ArenaGuard {
        pub(super) fn install() -> Self {
            let len = DMA_PAGES * PAGE_SIZE + BOUNCE_SLOTS * BOUNCE_SLOT;
            let memory = Arc::new(HeapMemory::new(DeviceAddr::new(DMA_BASE), len).unwrap());
            let arena = Arena {
                memory: Arc::clone(&memory),
                next_page: 0,
                // Popped from the back: the first bounce buffer is the last slot, ending exactly at
                // the end of the region (our device's bounds check must accept it).
                free: (0..BOUNCE_SLOTS).collect(),
                shared: vec![None; BOUNCE_SLOTS],
                shares: 0,
            };
            ARENA.with(|a| {
                assert!(
                    a.borrow_mut().replace(arena).is_none(),
                    "arena already installed"
                )
            });
            Self { memory }
        }

        pub(super) fn memory(&self) -> Arc<HeapMemory> {
            Arc::clone(&self.memory)
        }

        /// Bounce slots currently shared, and total shares so far.
        pub(super) fn bounce_usage(&self) -> (usize, u64) {
            with_arena(|a| (a.shared.iter().flatten().count(), a.shares))
        }
    }

    impl Drop for ArenaGuard {
        fn drop(&mut self) {
            ARENA.with(|a| a.borrow_mut().take());
        }
    }

    fn with_arena<R>(f: impl FnOnce(&mut Arena) -> R) -> R {
        ARENA.with(|a| {
            f(a.borrow_mut()
                .as_mut()
                .expect("no DMA arena installed on this thread"))
        })
    }

    /// A `Hal` whose DMA memory is the thread's arena: `dma_alloc` bump-allocates pages, `share`
    /// bounces buffers through slots of the same region (copy in on share, copy back on unshare for
    /// device-writable buffers), like a swiotlb. Physical address = our device address.
    #[derive(Debug)]
    pub(super) struct ArenaHal;

    // SAFETY: `dma_alloc` returns page-aligned (the HeapMemory is page aligned and DMA_BASE is page
    // aligned), zeroed, never-reused pages of a region that stays alive while the arena is
    // installed (the tests drop every queue before the guard); `share` returns addresses of bounce
    // slots of that region exclusively owned until `unshare`.
    unsafe impl Hal for ArenaHal {
        fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
            with_arena(|a| {
                assert!(a.next_page + pages <= DMA_PAGES, "DMA pages exhausted");
                let paddr = DMA_BASE + (a.next_page * PAGE_SIZE) as u64;
                a.next_page += pages;
                let vaddr = a
                    .memory
                    .translate(DeviceAddr::new(paddr), pages * PAGE_SIZE)
                    .unwrap();
                (paddr, vaddr)
            })
        }

        unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
            // Bump allocator: pages are not reused (each test installs a fresh arena).
            0
        }

        unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
            unreachable!("the test transport has no MMIO")
        }

        unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
            // SAFETY: virtio-drivers' contract for `share`: `buffer` is valid for reads for the
            // call (device-writable buffers too: it was a `&mut [u8]`). Copying them in for both
            // directions is what Linux' swiotlb does, so bytes the device does not write come back
            // unchanged.
            let bytes = unsafe { buffer.as_ref() };
            assert!(
                bytes.len() <= BOUNCE_SLOT,
                "buffer of {} bytes does not fit a bounce slot",
                bytes.len()
            );
            with_arena(|a| {
                let slot = a.free.pop().expect("bounce slots exhausted");
                a.shared[slot] = Some(bytes.len());
                a.shares += 1;
                let paddr = BOUNCE_BASE + (slot * BOUNCE_SLOT) as u64;
                let dst =
                    DeviceSlice::new(&*a.memory, DeviceAddr::new(paddr), bytes.len()).unwrap();
                assert_eq!(dst.write_at(0, bytes), bytes.len());
                paddr
            })
        }

        unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
            let offset = usize::try_from(paddr - BOUNCE_BASE).unwrap();
            assert_eq!(
                offset % BOUNCE_SLOT,
                0,
                "unshare of an address share never returned"
            );
            let slot = offset / BOUNCE_SLOT;
            let mut buffer = buffer;
            with_arena(|a| {
                let len = a.shared[slot]
                    .take()
                    .expect("unshare of a slot that is not shared");
                assert_eq!(
                    len,
                    buffer.len(),
                    "unshare with a different buffer than share"
                );
                let bounce =
                    DeviceSlice::new(&*a.memory, DeviceAddr::new(paddr), BOUNCE_SLOT).unwrap();
                if direction != BufferDirection::DriverToDevice {
                    // SAFETY: virtio-drivers' contract for `unshare`: `buffer` is the buffer given
                    // to `share`, valid for writes and not otherwise accessed until `pop_used`
                    // returns.
                    let dst = unsafe { buffer.as_mut() };
                    assert_eq!(bounce.read_at(0, dst), len);
                }
                bounce.fill(POISON);
                a.free.push(slot);
            });
        }
    }

    /// One queue of a device whose status and feature registers are our `Negotiation`:
    /// virtio-drivers' own `begin_init`/`finish_init` drive it. `queue_set` records the ring
    /// addresses for our `QueueConfig`.
    #[derive(Debug)]
    pub(super) struct TestTransport {
        max_queue_size: u16,
        negotiation: Negotiation,
        pub(super) config: Option<QueueConfig>,
        pub(super) live: Option<Features>,
        pub(super) notified: bool,
    }

    impl TestTransport {
        pub(super) fn new(max_queue_size: u16, offered: Features) -> Self {
            Self {
                max_queue_size,
                negotiation: Negotiation::new(offered),
                config: None,
                live: None,
                notified: false,
            }
        }
    }

    impl Transport for TestTransport {
        fn device_type(&self) -> DeviceType {
            DeviceType::EntropySource
        }

        fn read_device_features(&mut self) -> u64 {
            self.negotiation.offered().bits()
        }

        fn write_driver_features(&mut self, driver_features: u64) {
            self.negotiation
                .write_driver_features(0, driver_features as u32);
            self.negotiation
                .write_driver_features(1, (driver_features >> 32) as u32);
        }

        fn max_queue_size(&mut self, queue: u16) -> u32 {
            assert_eq!(queue, 0);
            u32::from(self.max_queue_size)
        }

        fn notify(&mut self, queue: u16) {
            assert_eq!(queue, 0);
            self.notified = true;
        }

        fn get_status(&self) -> DeviceStatus {
            DeviceStatus::from_bits_retain(u32::from(self.negotiation.status().bits()))
        }

        fn set_status(&mut self, status: DeviceStatus) {
            match self
                .negotiation
                .write_status(u8::try_from(status.bits()).unwrap())
                .unwrap()
            {
                StatusChange::DriverOk(features) => self.live = Some(features),
                StatusChange::FeaturesRejected | StatusChange::Failed => {
                    panic!("negotiation failed: {status:?}")
                }
                _ => {}
            }
        }

        fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

        fn requires_legacy_layout(&self) -> bool {
            false
        }

        fn queue_set(
            &mut self,
            queue: u16,
            size: u32,
            descriptors: PhysAddr,
            driver_area: PhysAddr,
            device_area: PhysAddr,
        ) {
            assert_eq!(queue, 0);
            let mut config = QueueConfig::new(self.max_queue_size);
            config.size = u16::try_from(size).unwrap();
            config.descriptors = DeviceAddr::new(descriptors);
            config.driver_area = DeviceAddr::new(driver_area);
            config.device_area = DeviceAddr::new(device_area);
            config.ready = true;
            self.config = Some(config);
        }

        fn queue_unset(&mut self, queue: u16) {
            assert_eq!(queue, 0);
            self.config = None;
        }

        fn queue_used(&mut self, queue: u16) -> bool {
            assert_eq!(queue, 0);
            self.config.is_some()
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

    /// A buffer in flight from the virtio-drivers side: the Rust buffers it shared (which must stay
    /// put and untouched until `pop_used`).
    struct InFlight {
        seq: u32,
        inputs: Vec<Vec<u8>>,
        outputs: Vec<Vec<u8>>,
    }

    /// Both ends, set up the way a guest driver and a device model would: negotiation, queue setup,
    /// DRIVER_OK, activation.
    pub(super) struct Pair<const SIZE: usize> {
        // Field order is drop order: the queue's DMA pages go back before the arena is removed.
        pub(super) vq: VirtQueue<ArenaHal, SIZE>,
        device: Option<DeviceQueue<Arc<HeapMemory>>>,
        pub(super) transport: TestTransport,
        pub(super) negotiated: Features,
        max_payload: usize,
        in_flight: HashMap<u16, InFlight>,
        next_seq: u32,
        pub(super) arena: ArenaGuard,
    }

    impl<const SIZE: usize> Pair<SIZE> {
        pub(super) fn new(offered: Features, supported: Features, max_payload: usize) -> Self {
            assert!(REQUEST_OVERHEAD + max_payload + 8 <= BOUNCE_SLOT);
            let arena = ArenaGuard::install();
            let mut transport = TestTransport::new(SIZE as u16, offered);
            let negotiated = transport.begin_init(supported);
            assert_eq!(negotiated, offered & supported);
            let vq = VirtQueue::<ArenaHal, SIZE>::new(
                &mut transport,
                0,
                negotiated.contains(Features::INDIRECT_DESC),
                negotiated.contains(Features::EVENT_IDX),
            )
            .unwrap();
            transport.finish_init();
            let live = transport.live.expect("DRIVER_OK reached the device");
            assert_eq!(
                live, negotiated,
                "the device sees what virtio-drivers negotiated"
            );
            let config = transport.config.expect("virtio-drivers set up queue 0");
            assert_eq!(usize::from(config.size), SIZE);
            let device = DeviceQueue::activate(&config, live, arena.memory()).unwrap();
            Self {
                vq,
                device: Some(device),
                transport,
                negotiated,
                max_payload,
                in_flight: HashMap::new(),
                next_seq: 0,
                arena,
            }
        }

        pub(super) fn submitted(&self) -> u32 {
            self.next_seq
        }

        /// Adds the next request; `false` when the queue is full.
        pub(super) fn submit(&mut self) -> bool {
            let seq = self.next_seq;
            let shape = shape(seq, self.max_payload);
            let bytes = request(seq, shape.payload);
            let mut at = 0;
            let inputs: Vec<Vec<u8>> = shape
                .readable
                .iter()
                .map(|&len| {
                    let piece = bytes[at..at + len as usize].to_vec();
                    at += len as usize;
                    piece
                })
                .collect();
            let mut outputs: Vec<Vec<u8>> = shape
                .writable
                .iter()
                .map(|&len| vec![0xcd; len as usize])
                .collect();
            let ins: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
            // SAFETY: the buffers' heap storage is moved into `in_flight` untouched (moving a `Vec`
            // does not move its elements) and only accessed again through `pop_used` with this
            // token.
            match unsafe { self.vq.add(&ins, &mut outs) } {
                Ok(token) => {
                    assert!(self
                        .in_flight
                        .insert(
                            token,
                            InFlight {
                                seq,
                                inputs,
                                outputs
                            }
                        )
                        .is_none());
                    self.next_seq += 1;
                    true
                }
                Err(virtio_drivers::Error::QueueFull) => false,
                Err(e) => panic!("virtio-drivers add {seq}: {e:?}"),
            }
        }

        /// Collects one used buffer through virtio-drivers and checks it; `None` when none is used.
        pub(super) fn collect(&mut self) -> Option<u32> {
            let token = self.vq.peek_used()?;
            let InFlight {
                seq,
                inputs,
                mut outputs,
            } = self.in_flight.remove(&token).expect("token in flight");
            let ins: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
            // SAFETY: the same buffers `add` returned `token` for.
            let len = unsafe { self.vq.pop_used(token, &ins, &mut outs) }.unwrap();
            let shape = shape(seq, self.max_payload);
            let expected = shape.response(seq);
            assert_eq!(len as usize, expected.len(), "used length of {seq}");
            let got: Vec<u8> = outputs.concat();
            let (answer, slack) = got.split_at(len as usize);
            assert_eq!(answer, expected, "response to {seq}");
            assert!(
                slack.iter().all(|&b| b == 0xcd),
                "device wrote past the used length of {seq}"
            );
            Some(seq)
        }

        /// Our device handles up to `budget` chains; returns the number and whether it wants to
        /// interrupt.
        pub(super) fn device_serve(
            &mut self,
            budget: usize,
            reverse: bool,
            stats: &mut Stats,
        ) -> (usize, bool) {
            let device = self.device.as_mut().expect("device moved to its thread");
            serve_chains(
                device,
                self.negotiated,
                self.max_payload,
                budget,
                reverse,
                stats,
            )
        }

        /// Our device queue (while it runs on the test thread).
        pub(super) fn dev(&mut self) -> &mut DeviceQueue<Arc<HeapMemory>> {
            self.device.as_mut().expect("device moved to its thread")
        }

        /// Moves our device to its own thread.
        pub(super) fn take_device(&mut self) -> DeviceQueue<Arc<HeapMemory>> {
            self.device.take().expect("device already moved")
        }

        /// `avail_event` as our device last wrote it (used ring, after the elements).
        pub(super) fn avail_event(&self) -> u16 {
            let device = self.device.as_ref().expect("device moved to its thread");
            let addr = device
                .config()
                .device_area
                .checked_add(4 + 8 * SIZE as u64)
                .unwrap();
            let memory = device.memory();
            let mut bytes = [0; 2];
            DeviceSlice::new(&**memory, addr, 2)
                .unwrap()
                .read_at(0, &mut bytes);
            u16::from_le_bytes(bytes)
        }
    }

    pub(super) struct Run {
        pub(super) offered: Features,
        pub(super) supported: Features,
        pub(super) total: u32,
        pub(super) max_payload: usize,
        pub(super) device_budget: usize,
        pub(super) reverse: bool,
    }

    /// Our device handles up to `budget` chains; returns the number and whether it wants to
    /// interrupt.
    pub(super) fn serve_chains(
        device: &mut DeviceQueue<Arc<HeapMemory>>,
        negotiated: Features,
        max_payload: usize,
        budget: usize,
        reverse: bool,
        stats: &mut Stats,
    ) -> (usize, bool) {
        let table = device.config().descriptors;
        let mut done = Vec::new();
        while done.len() < budget {
            let Some(chain) = device.pop().unwrap() else {
                break;
            };
            let mut req = vec![0; chain.readable_len() as usize];
            let mut reader = chain.reader();
            assert_eq!(reader.read(&mut req).unwrap(), req.len());
            assert_eq!(reader.remaining(), 0);
            let (seq, response) = serve(&req);
            let expected = shape(seq, max_payload);
            let readable: Vec<u32> = chain.readable().iter().map(|s| s.len()).collect();
            let writable: Vec<u32> = chain.writable().iter().map(|s| s.len()).collect();
            assert_eq!(
                (readable, writable),
                (expected.readable.clone(), expected.writable.clone()),
                "chain {seq}"
            );
            // With INDIRECT_DESC, virtio-drivers puts every multi-buffer chain in an indirect
            // table.
            let indirect = head_is_indirect(chain.memory(), table, chain.id());
            let multi = expected.buffers() > 1;
            assert_eq!(
                indirect,
                multi && negotiated.contains(Features::INDIRECT_DESC)
            );
            if indirect {
                stats.indirect_chains += 1;
            } else {
                stats.direct_chains += 1;
            }
            let mut writer = chain.writer();
            if !expected.writable.is_empty() {
                assert_eq!(writer.write(&response).unwrap(), response.len());
            }
            assert_eq!(writer.written() as usize, expected.response(seq).len());
            done.push((chain.token(), writer.written()));
        }
        if reverse {
            done.reverse();
        }
        for &(token, len) in &done {
            device.add_used(token, len).unwrap();
        }
        let irq = !done.is_empty() && device.needs_notification();
        (done.len(), irq)
    }

    /// Whether descriptor `head` of the device's table has VIRTQ_DESC_F_INDIRECT (read from ring
    /// memory, as the device saw it).
    fn head_is_indirect(memory: &HeapMemory, table: DeviceAddr, head: u16) -> bool {
        let addr = table.checked_add(u64::from(head) * 16 + 12).unwrap();
        let mut flags = [0; 2];
        DeviceSlice::new(memory, addr, 2)
            .unwrap()
            .read_at(0, &mut flags);
        u16::from_le_bytes(flags) & virtio_core::ring_flags::DESC_F_INDIRECT != 0
    }

    /// As `vmm::run`, with virtio-drivers as the driver: a device that sleeps until kicked, a
    /// driver that only collects when interrupted.
    pub(super) fn run<const SIZE: usize>(run: Run) -> Stats {
        let mut pair = Pair::<SIZE>::new(run.offered, run.supported, run.max_payload);
        let event_idx = pair.negotiated.contains(Features::EVENT_IDX);
        let mut stats = Stats::default();
        let mut device_runnable = false;
        let mut irq = false;
        let mut done = vec![false; run.total as usize];
        let mut avail_idx: u16 = 0;
        while stats.completed < run.total {
            let mut progress = false;
            let old = avail_idx;
            while pair.submitted() < run.total && pair.submit() {
                avail_idx = avail_idx.wrapping_add(1);
            }
            stats.max_in_flight = stats.max_in_flight.max(pair.in_flight.len() as u32);
            if avail_idx != old {
                progress = true;
                if pair.vq.should_notify() {
                    pair.transport.notify(0);
                }
                let kicked = std::mem::take(&mut pair.transport.notified);
                if kicked {
                    stats.kicks += 1;
                    device_runnable = true;
                } else {
                    stats.kicks_suppressed += 1;
                    let event = pair.avail_event();
                    if event_idx && spec_need_event(event, avail_idx, old) {
                        // virtio-drivers compares `avail_idx >= avail_event + 1` without wrapping;
                        // around the u16 wrap it skips a kick our device asked for. Only that case
                        // is tolerated: wake the device anyway (as a watchdog would) and count it.
                        assert!(
                            avail_idx < old,
                            "virtio-drivers skipped a kick outside the wrap case: event {event}, {old} -> {avail_idx}"
                        );
                        stats.peer_missed_kicks += 1;
                        device_runnable = true;
                    }
                }
            }
            // The device may run twice before the driver handles an interrupt (it is the faster
            // side).
            for _ in 0..2 {
                if !device_runnable {
                    break;
                }
                progress = true;
                stats.device_wakes += 1;
                pair.dev().disable_notification();
                let (handled, wants_irq) =
                    pair.device_serve(run.device_budget, run.reverse, &mut stats);
                if handled != 0 {
                    if wants_irq {
                        stats.interrupts += 1;
                        irq = true;
                    } else {
                        stats.interrupts_suppressed += 1;
                    }
                }
                if handled < run.device_budget {
                    device_runnable = pair.dev().enable_notification().unwrap();
                }
            }
            if irq {
                // virtio-drivers' interrupt path: collect everything used (it re-arms used_event on
                // each pop).
                progress = true;
                irq = false;
                while let Some(seq) = pair.collect() {
                    assert!(
                        !std::mem::replace(&mut done[seq as usize], true),
                        "{seq} used twice"
                    );
                    stats.completed += 1;
                }
            }
            assert!(
                progress,
                "stall after {} of {} buffers: {} in flight, device broken {}, driver can pop {}",
                stats.completed,
                run.total,
                pair.in_flight.len(),
                pair.dev().is_broken(),
                pair.vq.can_pop(),
            );
        }
        assert!(done.iter().all(|&d| d));
        assert!(pair.in_flight.is_empty());
        assert!(!pair.dev().is_broken());
        let (shared, shares) = pair.arena.bounce_usage();
        assert_eq!(shared, 0, "virtio-drivers left bounce slots shared");
        assert!(shares >= u64::from(run.total) * 2);
        stats
    }

    /// The virtio-drivers driver on the test thread (its `Hal` arena is thread-local), our device
    /// on its own thread, notifying each other through channels only when suppression says so; a
    /// lost kick or interrupt fails after [`STALL`].
    ///
    /// virtio-drivers 0.13 has no full barrier between publishing `avail.idx` and reading
    /// `avail_event`/`flags` in `should_notify`, nor between writing `used_event` in `pop_used` and
    /// re-reading `used.idx` (both are release/acquire pairs, which allow the store-load reordering
    /// the spec's barriers exist to forbid). A guest driving it from another CPU than the device
    /// needs those fences; this driver adds them, so the run checks our side's barriers, not
    /// virtio-drivers' missing ones.
    pub(super) fn run_threaded<const SIZE: usize>(
        offered: Features,
        total: u32,
        max_payload: usize,
    ) -> Stats {
        let mut pair = Pair::<SIZE>::new(offered, ALL_RING_FEATURES, max_payload);
        let mut device = pair.take_device();
        let negotiated = pair.negotiated;
        let (kick, kicked) = mpsc::channel::<()>();
        let (irq, interrupted) = mpsc::channel::<()>();
        let device_thread = thread::spawn(move || {
            let mut stats = Stats::default();
            while kicked.recv().is_ok() {
                stats.device_wakes += 1;
                loop {
                    device.disable_notification();
                    let (handled, wants_irq) = serve_chains(
                        &mut device,
                        negotiated,
                        max_payload,
                        usize::MAX,
                        false,
                        &mut stats,
                    );
                    if handled != 0 && wants_irq {
                        stats.interrupts += 1;
                        let _ = irq.send(());
                    } else if handled != 0 {
                        stats.interrupts_suppressed += 1;
                    }
                    if !device.enable_notification().unwrap() {
                        break;
                    }
                }
            }
            (device, stats)
        });
        let mut stats = Stats::default();
        let mut done = vec![false; total as usize];
        while stats.completed < total {
            let mut added = 0;
            while pair.submitted() < total && pair.submit() {
                added += 1;
            }
            if added != 0 {
                // The full barrier virtio-drivers' `add`/`should_notify` lack (Linux
                // `virtqueue_kick_prepare`).
                fence(Ordering::SeqCst);
                if pair.vq.should_notify() {
                    stats.kicks += 1;
                    if kick.send(()).is_err() {
                        lost_notification(device_thread, "device thread ended");
                    }
                } else {
                    stats.kicks_suppressed += 1;
                }
            }
            if interrupted.recv_timeout(STALL).is_err() {
                let what = format!(
                    "{} of {} done, {} in flight, driver can pop {}",
                    stats.completed,
                    total,
                    pair.in_flight.len(),
                    pair.vq.can_pop()
                );
                drop(kick);
                lost_notification(device_thread, &what);
            }
            loop {
                while let Some(seq) = pair.collect() {
                    assert!(
                        !std::mem::replace(&mut done[seq as usize], true),
                        "{seq} used twice"
                    );
                    stats.completed += 1;
                }
                // The full barrier virtio-drivers' `pop_used` lacks between writing `used_event`
                // and re-reading `used.idx` (Linux `virtqueue_enable_cb`).
                fence(Ordering::SeqCst);
                if !pair.vq.can_pop() {
                    break;
                }
            }
        }
        drop(kick);
        let (device, device_stats) = device_thread.join().unwrap();
        assert!(!device.is_broken());
        assert!(pair.in_flight.is_empty());
        stats.merge_device(&device_stats);
        stats
    }
}

const ALL_RING_FEATURES: Features = Features::VERSION_1
    .union(Features::EVENT_IDX)
    .union(Features::INDIRECT_DESC);

#[test]
fn virtio_drivers_to_split_device_10k_buffers_round_trip() {
    let stats = guest::run::<256>(guest::Run {
        offered: Features::VERSION_1,
        supported: ALL_RING_FEATURES,
        total: 10_000,
        max_payload: 200,
        device_budget: usize::MAX,
        reverse: false,
    });
    report("virtio-drivers, VERSION_1 only", &stats);
    assert_eq!(stats.completed, 10_000);
    assert_eq!(stats.peer_missed_kicks, 0);
}

#[test]
fn virtio_drivers_event_idx_to_split_device_out_of_order_round_trip() {
    let stats = guest::run::<64>(guest::Run {
        offered: Features::VERSION_1 | Features::EVENT_IDX,
        supported: ALL_RING_FEATURES,
        total: 10_000,
        max_payload: 200,
        device_budget: 7,
        reverse: true,
    });
    report("virtio-drivers, event idx, budget 7, reversed", &stats);
    assert_eq!(stats.completed, 10_000);
    assert_eq!(stats.peer_missed_kicks, 0);
    assert!(stats.interrupts_suppressed > 0, "{stats:?}");
}

#[test]
fn virtio_drivers_indirect_to_split_device_round_trip() {
    let stats = guest::run::<32>(guest::Run {
        offered: ALL_RING_FEATURES,
        supported: ALL_RING_FEATURES,
        total: 10_000,
        max_payload: 200,
        device_budget: 5,
        reverse: true,
    });
    report("virtio-drivers, indirect + event idx", &stats);
    assert_eq!(stats.completed, 10_000);
    // virtio-drivers sends every multi-buffer chain indirect, single buffers direct.
    let direct = chains_where(10_000, |s| s.buffers() == 1);
    assert_eq!(
        (stats.indirect_chains, stats.direct_chains),
        (10_000 - direct, direct)
    );
    assert!(direct > 0);
    assert_eq!(stats.max_in_flight, 32);
    assert_eq!(stats.peer_missed_kicks, 0);
}

#[test]
#[ignore = "heavy tier (~1 s in debug); virtio_drivers_event_idx_at_u16_wrap_skips_kick_split_device_requested \
            already takes this pairing across the wrap"]
fn virtio_drivers_small_queue_to_split_device_wraps_u16_indices() {
    let total = 66_000;
    let stats = guest::run::<16>(guest::Run {
        offered: ALL_RING_FEATURES,
        supported: ALL_RING_FEATURES,
        total,
        max_payload: 24,
        device_budget: 5,
        reverse: true,
    });
    report("virtio-drivers, wrap, size 16", &stats);
    assert_eq!(stats.completed, total);
}

#[test]
#[ignore = "heavy tier (~1 s in debug); flag-based suppression does not depend on the indices"]
fn virtio_drivers_without_event_idx_small_queue_wraps_u16_indices() {
    let total = 66_000;
    let stats = guest::run::<16>(guest::Run {
        offered: Features::VERSION_1,
        supported: ALL_RING_FEATURES,
        total,
        max_payload: 16,
        device_budget: usize::MAX,
        reverse: false,
    });
    report("virtio-drivers, wrap, size 16, no event idx", &stats);
    assert_eq!(stats.completed, total);
    assert_eq!(stats.peer_missed_kicks, 0);
}

#[test]
fn virtio_drivers_negotiation_through_core_negotiation_accepts_intersection() {
    let offered = ALL_RING_FEATURES | Features::RING_PACKED | Features::from_bits_retain(1 << 5);
    let mut pair = guest::Pair::<16>::new(offered, Features::VERSION_1 | Features::EVENT_IDX, 16);
    assert_eq!(pair.negotiated, Features::VERSION_1 | Features::EVENT_IDX);
    assert_eq!(
        pair.transport.live,
        Some(Features::VERSION_1 | Features::EVENT_IDX)
    );
    assert!(matches!(pair.dev(), DeviceQueue::Split(_)));
}

#[test]
fn virtio_drivers_avail_flags_suppress_split_device_interrupts() {
    let mut pair = guest::Pair::<16>::new(Features::VERSION_1, ALL_RING_FEATURES, 32);
    let mut stats = Stats::default();
    for _ in 0..4 {
        assert!(pair.submit());
    }
    // Fresh ring, no suppression: used buffers interrupt.
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, true));
    // VIRTQ_AVAIL_F_NO_INTERRUPT: none.
    pair.vq.set_dev_notify(false);
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, false));
    pair.vq.set_dev_notify(true);
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, true));
    // And our device's VIRTQ_USED_F_NO_NOTIFY silences virtio-drivers' kicks.
    pair.dev().disable_notification();
    assert!(!pair.vq.should_notify());
    // Re-enabled with one buffer still pending: reported, and kicks are back on.
    assert!(pair.dev().enable_notification().unwrap());
    assert!(pair.vq.should_notify());
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats), (1, true));
    assert_eq!(
        (
            pair.collect(),
            pair.collect(),
            pair.collect(),
            pair.collect(),
            pair.collect()
        ),
        (Some(0), Some(1), Some(2), Some(3), None)
    );
}

#[test]
fn virtio_drivers_event_idx_kick_follows_split_device_avail_event() {
    let mut pair = guest::Pair::<16>::new(
        ALL_RING_FEATURES,
        Features::VERSION_1 | Features::EVENT_IDX,
        32,
    );
    let mut stats = Stats::default();
    assert!(pair.submit());
    assert!(pair.vq.should_notify());
    // Our device re-arms avail_event at its next_avail on every pop and before sleeping.
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats), (1, true));
    assert!(!pair.dev().enable_notification().unwrap());
    assert_eq!(pair.avail_event(), 1);
    assert!(pair.submit());
    assert!(
        pair.vq.should_notify(),
        "after enable_notification the driver must kick"
    );
    // used_event follows virtio-drivers' pops: collected → interrupt on the next used buffer; not
    // collected → none.
    assert_eq!(pair.collect(), Some(0));
    assert!(pair.submit());
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, true));
    assert_eq!(pair.device_serve(1, false, &mut stats), (1, false));
    assert_eq!(
        (pair.collect(), pair.collect(), pair.collect()),
        (Some(1), Some(2), None)
    );
}

#[test]
fn virtio_drivers_event_idx_at_u16_wrap_skips_kick_split_device_requested() {
    // The one peer deviation `guest::run` tolerates, shown on the real objects: virtio-drivers
    // 0.13's `should_notify` compares `avail_idx >= avail_event + 1` instead of using
    // `vring_need_event`, so a batch that crosses both `avail_event` and the u16 wrap is not kicked
    // although our device asked for it.
    let mut pair = guest::Pair::<16>::new(ALL_RING_FEATURES, ALL_RING_FEATURES, 0);
    let mut stats = Stats::default();
    let brink: u16 = 0xfff8;
    let mut avail: u16 = 0;
    while avail != brink {
        let batch = (brink - avail).min(16);
        for _ in 0..batch {
            assert!(pair.submit());
        }
        avail += batch;
        assert_eq!(
            pair.device_serve(usize::MAX, false, &mut stats).0,
            usize::from(batch)
        );
        assert!(!pair.dev().enable_notification().unwrap());
        while pair.collect().is_some() {}
    }
    // Our device sleeps, asking for a kick once the driver publishes past 0xfff8.
    assert_eq!(pair.avail_event(), brink);
    for _ in 0..16 {
        assert!(pair.submit());
    }
    let new = brink.wrapping_add(16);
    assert!(
        spec_need_event(pair.avail_event(), new, brink),
        "vring_need_event: kick"
    );
    assert!(
        !pair.vq.should_notify(),
        "virtio-drivers now kicks across the u16 wrap: drop the watchdog in guest::run and this test"
    );
    // Woken anyway (the watchdog), our device serves the batch across the wrap.
    assert_eq!(pair.device_serve(usize::MAX, false, &mut stats), (16, true));
    for seq in u32::from(brink)..u32::from(brink) + 16 {
        assert_eq!(pair.collect(), Some(seq));
    }
    assert!(pair.submit());
    assert!(pair.vq.should_notify());
}

#[test]
fn virtio_drivers_queue_sized_chain_to_split_device_round_trip() {
    // 8 readable + 8 writable buffers: all 16 descriptors of the ring, then one 16-entry indirect
    // table.
    for offered in [
        Features::VERSION_1,
        Features::VERSION_1 | Features::INDIRECT_DESC,
    ] {
        let mut pair = guest::Pair::<16>::new(offered, ALL_RING_FEATURES, 32);
        let inputs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 0x10 + usize::from(i)]).collect();
        let mut outputs: Vec<Vec<u8>> = (8..16).map(|i| vec![0; 0x10 + i]).collect();
        let token = {
            let ins: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
            // SAFETY: the buffers stay alive and untouched until `pop_used` below.
            unsafe { pair.vq.add(&ins, &mut outs) }.unwrap()
        };

        let chain = pair.dev().pop().unwrap().unwrap();
        assert_eq!((chain.readable().len(), chain.writable().len()), (8, 8));
        let mut request = vec![0; chain.readable_len() as usize];
        assert_eq!(chain.reader().read(&mut request).unwrap(), request.len());
        assert_eq!(request, inputs.concat());
        let reply: Vec<u8> = (0..chain.writable_len()).map(|i| (i * 7) as u8).collect();
        let mut writer = chain.writer();
        assert_eq!(writer.write(&reply).unwrap(), reply.len());
        let (used, written) = (chain.token(), writer.written());
        pair.dev().add_used(used, written).unwrap();
        assert!(pair.dev().needs_notification());

        let len = {
            let ins: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
            // SAFETY: the same buffers `add` returned `token` for.
            unsafe { pair.vq.pop_used(token, &ins, &mut outs) }.unwrap()
        };
        assert_eq!(len, written);
        assert_eq!(outputs.concat(), reply);
        assert_eq!(pair.arena.bounce_usage().0, 0);
    }
}

#[test]
fn split_driver_threaded_virtio_queue_device_loses_no_notification() {
    for (features, pool) in [
        (Features::VERSION_1, None),
        (
            Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC,
            Some(3),
        ),
    ] {
        let stats = vmm::run_threaded(vmm::Run {
            size: 16,
            features,
            indirect_entries: pool,
            total: 10_000,
            max_payload: 24,
            device_budget: usize::MAX,
            reverse: false,
        });
        report("threaded, our driver / virtio-queue", &stats);
        assert_eq!(stats.completed, 10_000);
    }
}

#[test]
fn virtio_drivers_threaded_split_device_loses_no_notification() {
    for offered in [Features::VERSION_1, ALL_RING_FEATURES] {
        let stats = guest::run_threaded::<16>(offered, 10_000, 24);
        report("threaded, virtio-drivers / our device", &stats);
        assert_eq!(stats.completed, 10_000);
    }
}
