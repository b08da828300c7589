//! No allocation per packet: our `NetDriver` and `NetDevice` in-process (virtio-mmio and virtio-pci with MSI-X),
//! split and packed rings, with and without MRG_RXBUF and IN_ORDER, pass thousands of frames each way while a
//! counting global allocator watches the test's thread. Every buffer is sized at activation or in a warm-up, so the
//! measured window must see no `alloc`, `alloc_zeroed` or `realloc` at all.
//!
//! Covered per frame: `NetDriver::send`, `send_burst`, `reclaim_tx`, `receive` and their notifications,
//! `NetDevice::process_tx` / `process_rx` (directly and from the transport's notify path), the `Pair` backend
//! (`NetBackend::send`, `PairEnd::recv_burst`), interrupt signalling and the driver's interrupt dispatch
//! (`handle_interrupt` over MMIO, `handle_vector` over MSI-X).
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{
    frame, link, memory, mmio, region, ring_features, Mem, MmioShared, PciNet, PciShared,
};
use virtio_core::transport::{InterruptDispatch, Transport};
use virtio_core::Features;
use virtio_net::backend::{NetBackend, SendStatus};
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::pair::PairEnd;
use virtio_net::wire::{feature, gso, HeaderLen, HeaderRepr};
use virtio_net::{NetError, MAX_FRAME_LEN};
use virtio_pci::{
    InterruptMode, InterruptSinks, IntxLine, LocalAccess, MsiMessage, MsiSink, PciDevice,
    PciOptions, PciTransport, PciVariant,
};

// ---------------------------------------------------------------------------------------------------------------
// The counting allocator.

thread_local! {
    /// Whether allocations of this thread are being counted. Const-initialised and without a destructor, so reading
    /// it from inside the allocator never allocates or registers anything.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations (`alloc`, `alloc_zeroed`, `realloc`) this thread made while [`COUNTING`] was on. Per thread, so
    /// the other tests of this binary, which the harness runs on other threads, do not disturb the count.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Every allocation of every thread, counted or not: a check that the allocator really is installed.
static ALL_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// `System`, counting the calls that obtain memory.
struct CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Counts one allocation: cannot allocate, panic or unwind (`try_with` fails quietly during thread teardown).
fn record_allocation() {
    ALL_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method passes its arguments unchanged to `System`, which upholds `GlobalAlloc`'s contract; the only
// addition, `record_allocation`, touches an atomic and two const-initialised thread-locals and never allocates,
// panics or unwinds.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_allocation();
        // SAFETY: the caller upholds `alloc`'s contract for `layout` (non-zero size), forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_allocation();
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`) with `layout`, and a
        // valid `new_size`; forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns what it returned and how many allocations this thread made meanwhile.
fn count_allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let r = f();
    COUNTING.with(|on| on.set(false));
    (r, ALLOCATIONS.with(Cell::get))
}

#[test]
fn counting_allocator_counts_allocations_in_the_window_only() {
    let before = ALL_ALLOCATIONS.load(Ordering::Relaxed);
    let (v, n) = count_allocations(|| {
        let mut v: Vec<u8> = Vec::with_capacity(black_box(16));
        // Past the capacity: one `realloc`.
        v.extend_from_slice(black_box(&[7u8; 64]));
        v
    });
    assert_eq!(v.len(), 64);
    assert_eq!(n, 2, "one alloc and one realloc");
    assert!(ALL_ALLOCATIONS.load(Ordering::Relaxed) >= before + 2);
    // Outside the window nothing is counted.
    let outside = black_box(vec![0u8; black_box(32)]);
    let ((), n) = count_allocations(|| ());
    assert_eq!((outside.len(), n), (32, 0));
}

// ---------------------------------------------------------------------------------------------------------------
// The traffic.

/// Frames per round in each direction: a `send_burst` of `BURST - 1` and one `send`.
const BURST: usize = 8;
/// Rounds in the warm-up (every frame size several times, every ring slot used and wrapped).
const WARM_UP_ROUNDS: usize = 40;
/// Rounds measured: 2000 frames each way.
const ROUNDS: usize = 250;
/// Bytes of virtio-net header the `Pair` keeps in front of each frame.
const PAIR_HEADER: usize = 12;
const QUEUE_SIZE: u16 = 64;

/// Sizes cycled through: minimum, MTU-sized, the last frame of a 2 KiB TX slot and the first past it, multi-buffer
/// mergeable frames, jumbo and the largest frame.
const SIZES: &[usize] = &[14, 60, 1514, 2036, 2037, 4000, 9000, MAX_FRAME_LEN];

#[derive(Debug, Clone, Copy)]
struct Case {
    packed: bool,
    mrg: bool,
    in_order: bool,
}

fn cases() -> impl Iterator<Item = Case> {
    [false, true].into_iter().flat_map(|packed| {
        [false, true].into_iter().flat_map(move |mrg| {
            [false, true].into_iter().map(move |in_order| Case {
                packed,
                mrg,
                in_order,
            })
        })
    })
}

fn builder(case: Case) -> NetDeviceBuilder {
    let mut b = NetDeviceBuilder::new()
        .queue_size(QUEUE_SIZE)
        .offer(ring_features(case.packed))
        .offer(feature::CSUM | feature::GUEST_CSUM | feature::HOST_TSO4 | feature::GUEST_TSO4);
    if case.mrg {
        b = b.offer(feature::MRG_RXBUF);
    }
    if case.in_order {
        b = b.offer(Features::IN_ORDER);
    }
    b
}

fn offload_header() -> HeaderRepr {
    HeaderRepr::new()
        .with_checksum(34, 16)
        .with_gso(gso::TCPV4, 1448, 54)
}

/// The device side as the traffic loop needs it, whatever transport presents it.
trait DeviceSide {
    fn process_tx(&self) -> virtio_net::Result<usize>;
    fn process_rx(&self) -> virtio_net::Result<usize>;
}

impl DeviceSide for MmioShared {
    fn process_tx(&self) -> virtio_net::Result<usize> {
        self.borrow_mut().device_mut().process_tx(0)
    }
    fn process_rx(&self) -> virtio_net::Result<usize> {
        self.borrow_mut().device_mut().process_rx(0)
    }
}

impl DeviceSide for PciShared {
    fn process_tx(&self) -> virtio_net::Result<usize> {
        self.borrow_mut().device_mut().process_tx(0)
    }
    fn process_rx(&self) -> virtio_net::Result<usize> {
        self.borrow_mut().device_mut().process_rx(0)
    }
}

/// Everything the loop touches, allocated before it starts.
struct Traffic {
    frames: Vec<Vec<u8>>,
    /// Where the test reads frames the device put on the wire (pair header + frame).
    wire_buf: Vec<u8>,
    /// Where the driver copies received frames.
    rx_buf: Vec<u8>,
    header: HeaderRepr,
    wire_header: [u8; PAIR_HEADER],
    /// Next frame index (cycles through `frames`).
    next: usize,
    /// Frames checked in each direction.
    tx_checked: u64,
    rx_checked: u64,
}

impl Traffic {
    fn new(case: Case) -> Self {
        let header = offload_header();
        let mut wire_header = [0u8; PAIR_HEADER];
        wire_header.copy_from_slice(&header.to_bytes(HeaderLen::Modern)[..PAIR_HEADER]);
        Self {
            frames: SIZES
                .iter()
                .enumerate()
                .map(|(i, &len)| frame(len, i as u8 ^ u8::from(case.mrg)))
                .collect(),
            wire_buf: vec![0; PAIR_HEADER + MAX_FRAME_LEN],
            rx_buf: vec![0; MAX_FRAME_LEN],
            header,
            wire_header,
            next: 0,
            tx_checked: 0,
            rx_checked: 0,
        }
    }

    /// Indices of the next `BURST` frames.
    fn take_burst(&mut self) -> [usize; BURST] {
        let mut out = [0; BURST];
        for slot in &mut out {
            *slot = self.next % self.frames.len();
            self.next += 1;
        }
        out
    }

    /// One round: `BURST` frames driver → device → wire, then `BURST` frames wire → device → driver, each checked
    /// byte for byte; the driver's interrupt handling (`interrupts`) runs while each queue has used buffers.
    fn round<T: Transport>(
        &mut self,
        driver: &mut NetDriver<T, Mem>,
        device: &impl DeviceSide,
        wire: &mut PairEnd,
        interrupts: &mut impl FnMut(&mut NetDriver<T, Mem>),
    ) {
        // TX: a burst, then a single frame.
        let burst = self.take_burst();
        let mut slices: [&[u8]; BURST] = [&[]; BURST];
        for (slot, &i) in slices.iter_mut().zip(&burst) {
            *slot = &self.frames[i];
        }
        let queued = driver
            .send_burst(0, &slices[..BURST - 1], &self.header)
            .unwrap();
        assert_eq!(queued, BURST - 1);
        driver.send(0, slices[BURST - 1], &self.header).unwrap();
        // The notifications above ran the TX queue already; polling it again must find it empty.
        assert_eq!(device.process_tx().unwrap(), 0);
        let mut seen = 0;
        let frames = &self.frames;
        let wire_header = &self.wire_header;
        let taken = wire
            .recv_burst(0, &mut self.wire_buf, usize::MAX, |got| {
                let got = got.unwrap();
                let expected = &frames[burst[seen]];
                assert_eq!(&got[..PAIR_HEADER], wire_header);
                assert_eq!(&got[PAIR_HEADER..], &expected[..]);
                seen += 1;
            })
            .unwrap();
        assert_eq!((taken, seen), (BURST, BURST));
        self.tx_checked += BURST as u64;
        // The TX queue has used buffers now: its interrupt finds them.
        interrupts(driver);
        driver.reclaim_tx(0).unwrap();

        // RX: the wire sends a burst; the device delivers as RX buffers allow (the driver's re-posts notify it).
        let burst = self.take_burst();
        for &i in &burst {
            let sent = wire.send(0, &[&self.wire_header, &self.frames[i]]).unwrap();
            assert_eq!(sent, SendStatus::Sent);
        }
        // The RX queue has used buffers now: its interrupt finds them.
        assert!(device.process_rx().unwrap() > 0);
        interrupts(driver);
        let mut received = 0;
        while received < BURST {
            match driver.receive(0, &mut self.rx_buf).unwrap() {
                Some((h, n)) => {
                    let expected = &self.frames[burst[received]];
                    assert_eq!(&self.rx_buf[..n], &expected[..]);
                    assert_eq!((h.gso_type, h.gso_size), (gso::TCPV4, 1448));
                    received += 1;
                }
                None => {
                    let delivered = device.process_rx().unwrap();
                    assert!(delivered > 0, "RX stalled with frames pending");
                }
            }
        }
        self.rx_checked += BURST as u64;
    }
}

/// Runs the warm-up, then the measured rounds; asserts the measured rounds allocated nothing.
fn run<T: Transport>(
    what: &str,
    driver: &mut NetDriver<T, Mem>,
    device: &impl DeviceSide,
    wire: &mut PairEnd,
    case: Case,
    mut interrupts: impl FnMut(&mut NetDriver<T, Mem>),
) {
    assert_eq!(driver.features().contains(feature::MRG_RXBUF), case.mrg);
    assert_eq!(
        driver.features().contains(Features::IN_ORDER),
        case.in_order
    );
    assert_eq!(
        driver.features().contains(Features::RING_PACKED),
        case.packed
    );
    let mut traffic = Traffic::new(case);
    for _ in 0..WARM_UP_ROUNDS {
        traffic.round(driver, device, wire, &mut interrupts);
    }
    let ((), allocations) = count_allocations(|| {
        for _ in 0..ROUNDS {
            traffic.round(driver, device, wire, &mut interrupts);
        }
    });
    let frames = (ROUNDS * BURST) as u64;
    let total = (WARM_UP_ROUNDS * BURST) as u64 + frames;
    assert_eq!((traffic.tx_checked, traffic.rx_checked), (total, total));
    assert_eq!(
        allocations, 0,
        "{what} {case:?}: {allocations} allocations while {frames} frames went each way"
    );
}

/// An interrupt dispatch whose callbacks for the RX and TX queue of pair 0 count their runs.
fn counting_dispatch() -> (InterruptDispatch, Arc<[AtomicU64; 2]>) {
    let callbacks = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut dispatch = InterruptDispatch::new();
    for queue in [0u16, 1] {
        let counts = callbacks.clone();
        dispatch.set_queue_callback(
            queue,
            Box::new(move |q| {
                counts[usize::from(q)].fetch_add(1, Ordering::Relaxed);
            }),
        );
    }
    (dispatch, callbacks)
}

/// The interrupt path was part of the measured work: both queues' callbacks ran.
fn assert_callbacks_ran(what: &str, case: Case, callbacks: &[AtomicU64; 2]) {
    let [rx, tx] = [0, 1].map(|q| callbacks[q].load(Ordering::Relaxed));
    assert!(
        rx > 0 && tx > 0,
        "{what} {case:?}: callbacks ran RX {rx}, TX {tx} times"
    );
}

#[test]
fn mmio_datapath_allocates_nothing_per_frame() {
    for case in cases() {
        let (device_end, mut wire) = link();
        let mut s = mmio(
            builder(case),
            device_end,
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
        );
        let (mut dispatch, callbacks) = counting_dispatch();
        let device = s.device.clone();
        run("mmio", &mut s.driver, &device, &mut wire, case, |driver| {
            driver.handle_interrupt(|t, used| t.handle_interrupt(&mut dispatch, used));
        });
        assert_callbacks_ran("mmio", case, &callbacks);
    }
}

/// MSI-X messages per vector, as atomics (a recorder that does not allocate per message, unlike
/// `virtio_pci::mock::RecordingMsi`).
#[derive(Debug, Default)]
struct VectorCounts([AtomicU64; 8]);

#[derive(Debug, Clone)]
struct VectorSink(Arc<VectorCounts>);

impl MsiSink for VectorSink {
    fn signal(&self, message: MsiMessage) {
        if let Some(n) = self.0 .0.get(usize::from(message.vector)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default)]
struct NoIntx;

impl IntxLine for NoIntx {
    fn set_level(&self, asserted: bool) {
        assert!(!asserted, "INTx asserted although MSI-X is on");
    }
}

#[test]
fn pci_msix_datapath_allocates_nothing_per_frame() {
    for case in cases() {
        let (device_end, mut wire) = link();
        let vectors = Arc::new(VectorCounts::default());
        let net: PciNet = builder(case).build(device_end);
        let config_len = net.config_len();
        let mem = memory();
        let device: PciShared = Rc::new(RefCell::new(
            PciDevice::new(
                net,
                mem.clone(),
                PciOptions::new(PciVariant::Modern).config_len(config_len),
                InterruptSinks::new()
                    .msi(VectorSink(Arc::clone(&vectors)))
                    .intx(NoIntx),
            )
            .unwrap(),
        ));
        let transport = PciTransport::new(LocalAccess::new(device.clone())).unwrap();
        let mut driver = NetDriver::with_setup(
            transport,
            mem,
            region(),
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
            |t, queues| {
                let mode = t
                    .setup_interrupts(queues, InterruptMode::PerQueueVectors)
                    .map_err(|e| NetError::Core(e.to_core()))?;
                assert_eq!(mode, InterruptMode::PerQueueVectors);
                Ok(())
            },
        )
        .unwrap();
        let (mut dispatch, callbacks) = counting_dispatch();
        // Messages already handled, per vector: vector q + 1 is queue q.
        let mut handled = [0u64; 8];
        run("pci", &mut driver, &device, &mut wire, case, |driver| {
            for (vector, done) in handled.iter_mut().enumerate().skip(1).take(2) {
                let fired = vectors.0[vector].load(Ordering::Relaxed);
                if fired != *done {
                    *done = fired;
                    driver.handle_interrupt(|t, used| {
                        t.handle_vector(vector as u16, &mut dispatch, used)
                    });
                }
            }
        });
        assert_callbacks_ran("pci", case, &callbacks);
    }
}
