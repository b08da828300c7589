//! The interrupt-driven driver: `NetDriver` ↔ `NetDevice` in-process with per-queue callbacks in an
//! `InterruptDispatch`, the device raising interrupts through the transport (virtio-mmio's `IrqLine`, virtio-pci MSI-X
//! with per-queue or shared vectors, virtio-pci INTx + ISR) and the test's "interrupt handler" calling the transport's
//! handler through `NetDriver::handle_interrupt`.
//!
//! Suppression semantics checked here (and what this crate's rings do):
//! - Without EVENT_IDX (split `avail.flags`, packed ENABLE/DISABLE): an enabled queue is interrupted after every batch
//!   the device uses, whether or not the driver collected the previous one; `disable_interrupts` sets
//!   NO_INTERRUPT / DISABLE and the device raises nothing.
//! - With EVENT_IDX (split `used_event`, packed DESC with `off_wrap`): an enabled queue is interrupted once when the
//!   device crosses the index the driver last asked for; a second batch before the driver collected the first raises
//!   nothing. `disable_interrupts` parks `used_event` half the index space ahead (split) or sets DISABLE (packed), so
//!   fewer than 32768 used entries raise nothing either.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use virtio_core::transport::{InterruptCause, InterruptDispatch, Transport};
use virtio_core::Features;
use virtio_mmio::{MmioTransport, MmioVersion};
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::pair::PairEnd;
use virtio_net::wire::status;
use virtio_pci::{InterruptMode, LocalAccess, PciTransport, PciVariant};

const RX: u16 = 0;
const TX: u16 = 1;

#[derive(Default, Clone)]
struct Hits {
    rx: Arc<AtomicU32>,
    tx: Arc<AtomicU32>,
    config: Arc<AtomicU32>,
}

impl Hits {
    fn get(&self) -> (u32, u32, u32) {
        (
            self.rx.load(Ordering::SeqCst),
            self.tx.load(Ordering::SeqCst),
            self.config.load(Ordering::SeqCst),
        )
    }

    fn clear(&self) {
        for c in [&self.rx, &self.tx, &self.config] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

/// The driver's callbacks, registered at queue setup: they only count (a real driver schedules its poll).
fn dispatch() -> (InterruptDispatch, Hits) {
    let hits = Hits::default();
    let mut d = InterruptDispatch::new();
    for (queue, counter) in [(RX, hits.rx.clone()), (TX, hits.tx.clone())] {
        d.set_queue_callback(
            queue,
            Box::new(move |q| {
                assert_eq!(q, queue);
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
    }
    let config = hits.config.clone();
    d.set_config_callback(Box::new(move || {
        config.fetch_add(1, Ordering::SeqCst);
    }));
    (d, hits)
}

fn builder(packed: bool, event_idx: bool) -> NetDeviceBuilder {
    let mut f = Features::VERSION_1;
    if packed {
        f |= Features::RING_PACKED;
    }
    if event_idx {
        f |= Features::EVENT_IDX;
    }
    NetDeviceBuilder::new().queue_size(64).offer(f)
}

/// A driver ↔ device setup seen from the interrupt controller.
trait Rig {
    type T: Transport;
    fn driver(&mut self) -> &mut NetDriver<Self::T, Mem>;
    fn process_rx(&mut self) -> usize;
    fn set_link_up(&mut self, up: bool);
    /// Interrupts delivered since the last call: MSI-X vectors, or one 0 per MMIO trigger / INTx rising edge.
    fn raised(&mut self) -> Vec<u16>;
    /// The interrupt handler for one delivered interrupt.
    fn handle(&mut self, irq: u16, dispatch: &mut InterruptDispatch);
    /// What a used-buffer interrupt of `queue` looks like.
    fn queue_irq(&self, queue: u16) -> u16;
    /// What a configuration change interrupt looks like.
    fn config_irq(&self) -> u16;
}

struct MmioRig(MmioSetup);

impl Rig for MmioRig {
    type T = MmioTransport<MmioShared>;
    fn driver(&mut self) -> &mut NetDriver<Self::T, Mem> {
        &mut self.0.driver
    }
    fn process_rx(&mut self) -> usize {
        self.0
            .device
            .borrow_mut()
            .device_mut()
            .process_rx(0)
            .unwrap()
    }
    fn set_link_up(&mut self, up: bool) {
        self.0.device.borrow_mut().device_mut().set_link_up(up);
    }
    fn raised(&mut self) -> Vec<u16> {
        vec![0; self.0.line.0.swap(0, Ordering::SeqCst) as usize]
    }
    fn handle(&mut self, _irq: u16, dispatch: &mut InterruptDispatch) {
        let cause = self
            .0
            .driver
            .handle_interrupt(|t, used| t.handle_interrupt(dispatch, used));
        assert!(!cause.is_empty(), "the line was raised for a cause");
        assert_eq!(self.0.device.borrow().interrupt_status(), 0, "acknowledged");
    }
    fn queue_irq(&self, _queue: u16) -> u16 {
        0
    }
    fn config_irq(&self) -> u16 {
        0
    }
}

struct PciRig {
    s: PciSetup,
    edges: u64,
}

impl Rig for PciRig {
    type T = PciTransport<LocalAccess<PciNet>>;
    fn driver(&mut self) -> &mut NetDriver<Self::T, Mem> {
        &mut self.s.driver
    }
    fn process_rx(&mut self) -> usize {
        self.s
            .device
            .borrow_mut()
            .device_mut()
            .process_rx(0)
            .unwrap()
    }
    fn set_link_up(&mut self, up: bool) {
        self.s.device.borrow_mut().device_mut().set_link_up(up);
    }
    fn raised(&mut self) -> Vec<u16> {
        if self.s.mode == Some(InterruptMode::Intx) {
            assert!(self.s.msi.take().is_empty(), "no MSI-X in INTx mode");
            let now = self.s.intx.assertions();
            let new = now - self.edges;
            self.edges = now;
            vec![0; new as usize]
        } else {
            assert!(!self.s.intx.level(), "no INTx in MSI-X mode");
            self.s.msi.take_vectors()
        }
    }
    fn handle(&mut self, irq: u16, dispatch: &mut InterruptDispatch) {
        if self.s.mode == Some(InterruptMode::Intx) {
            assert!(self.s.intx.level());
            let ran = self
                .s
                .driver
                .handle_interrupt(|t, used| t.handle_intx(dispatch, used));
            assert!(ran > 0, "INTx with an ISR cause runs a callback");
            assert!(!self.s.intx.level(), "reading the ISR deasserts INTx");
        } else {
            self.s
                .driver
                .handle_interrupt(|t, used| t.handle_vector(irq, dispatch, used));
        }
    }
    fn queue_irq(&self, queue: u16) -> u16 {
        match self.s.mode {
            Some(InterruptMode::PerQueueVectors) => queue + 1,
            Some(InterruptMode::SharedVector) => 1,
            _ => 0,
        }
    }
    fn config_irq(&self) -> u16 {
        0
    }
}

fn service<R: Rig>(rig: &mut R, dispatch: &mut InterruptDispatch) -> Vec<u16> {
    let irqs = rig.raised();
    for &irq in &irqs {
        rig.handle(irq, dispatch);
    }
    irqs
}

/// The whole interrupt-driven cycle on one rig; `event_idx` says which suppression semantics to expect.
fn interrupt_cycle<R: Rig>(rig: &mut R, peer: &mut PairEnd, event_idx: bool, what: &str) {
    let (mut dispatch, hits) = dispatch();
    // Whatever initialisation raised (the first RX kick) is serviced and forgotten.
    service(rig, &mut dispatch);
    hits.clear();
    assert!(
        rig.driver().enable_interrupts(RX),
        "{what}: nothing used yet"
    );
    let rx_irq = rig.queue_irq(RX);

    // Frames arrive: one interrupt for the burst, the RX callback runs, the driver then receives exactly them.
    let burst: Vec<Vec<u8>> = (0..3u8)
        .map(|i| frame(60 + 700 * usize::from(i), i))
        .collect();
    for f in &burst {
        inject(peer, f);
    }
    assert_eq!(rig.process_rx(), 3, "{what}");
    assert_eq!(
        rig.raised(),
        vec![rx_irq],
        "{what}: one interrupt per burst"
    );
    rig.handle(rx_irq, &mut dispatch);
    assert_eq!(hits.get(), (1, 0, 0), "{what}: only the RX callback ran");

    // A second burst before the driver polled: EVENT_IDX already passed `used_event`, flags still say "interrupt".
    let late = frame(1514, 9);
    inject(peer, &late);
    assert_eq!(rig.process_rx(), 1, "{what}");
    let expected = if event_idx { vec![] } else { vec![rx_irq] };
    assert_eq!(
        service(rig, &mut dispatch),
        expected,
        "{what}: second burst"
    );
    assert_eq!(hits.get().0, if event_idx { 1 } else { 2 }, "{what}");

    // The poll: exactly the frames, in order; re-posting buffers interrupts nobody.
    let mut all = burst.clone();
    all.push(late);
    assert_eq!(receive_all(rig.driver()), all, "{what}");
    assert_eq!(
        rig.raised(),
        Vec::<u16>::new(),
        "{what}: re-posting RX buffers with nothing to deliver raised an interrupt"
    );
    assert!(rig.driver().enable_interrupts(RX), "{what}");

    // Disabled: the device raises nothing for new frames; re-enabling reports that used buffers are waiting.
    hits.clear();
    rig.driver().disable_interrupts(RX);
    let quiet: Vec<Vec<u8>> = (0..2u8).map(|i| frame(100, 20 + i)).collect();
    for f in &quiet {
        inject(peer, f);
    }
    assert_eq!(rig.process_rx(), 2, "{what}");
    assert_eq!(
        rig.raised(),
        Vec::<u16>::new(),
        "{what}: disabled queue interrupted"
    );
    assert!(
        !rig.driver().enable_interrupts(RX),
        "{what}: used buffers arrived while disabled: poll again"
    );
    assert_eq!(receive_all(rig.driver()), quiet, "{what}");
    assert!(rig.driver().enable_interrupts(RX), "{what}");
    assert_eq!(hits.get(), (0, 0, 0), "{what}");

    // Enabled again: interrupts resume.
    let again = frame(64, 33);
    inject(peer, &again);
    assert_eq!(rig.process_rx(), 1, "{what}");
    assert_eq!(service(rig, &mut dispatch), vec![rx_irq], "{what}");
    assert_eq!(hits.get(), (1, 0, 0), "{what}");
    assert_eq!(receive_all(rig.driver()), vec![again], "{what}");

    // TX completion: the notification runs the device's TX, the TX callback runs, the slot comes back.
    hits.clear();
    let out = frame(1000, 44);
    rig.driver()
        .send(0, &out, &virtio_net::wire::HeaderRepr::new())
        .unwrap();
    assert_eq!(drain(peer), vec![out], "{what}");
    assert_eq!(
        service(rig, &mut dispatch),
        vec![rig.queue_irq(TX)],
        "{what}: TX completion"
    );
    assert_eq!(hits.get(), (0, 1, 0), "{what}");
    assert_eq!(rig.driver().reclaim_tx(0).unwrap(), 1, "{what}");

    // Link down: a configuration change interrupt runs the config callback; the driver re-reads the status.
    hits.clear();
    assert!(rig.driver().link_up().unwrap());
    rig.set_link_up(false);
    assert_eq!(
        service(rig, &mut dispatch),
        vec![rig.config_irq()],
        "{what}: link change"
    );
    assert_eq!(
        hits.get(),
        (0, 0, 1),
        "{what}: only the config callback ran"
    );
    let config = rig.driver().handle_config_change().unwrap();
    assert_eq!(config.status & status::LINK_UP, 0, "{what}");
    assert!(!rig.driver().link_up().unwrap());
    rig.set_link_up(true);
    service(rig, &mut dispatch);
    assert_eq!(hits.get(), (0, 0, 2), "{what}");
    assert!(rig.driver().link_up().unwrap());
}

const RINGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[test]
fn mmio_interrupt_driven_rx_tx_config_callbacks_run() {
    for (packed, event_idx) in RINGS {
        let (end, mut peer) = link();
        let s = mmio(
            builder(packed, event_idx),
            end,
            NetDriverConfig::new().queue_size(64),
        );
        assert_eq!(s.driver.features().contains(Features::EVENT_IDX), event_idx);
        let what = format!("mmio packed={packed} event_idx={event_idx}");
        interrupt_cycle(&mut MmioRig(s), &mut peer, event_idx, &what);
    }
}

fn pci_rig(mode: InterruptMode, packed: bool, event_idx: bool, peer_end: PairEnd) -> PciRig {
    let s = pci_with(
        builder(packed, event_idx),
        peer_end,
        NetDriverConfig::new().queue_size(64),
        PciVariant::Modern,
        None,
        Some(mode),
    );
    assert_eq!(s.mode, Some(mode));
    if mode != InterruptMode::Intx {
        let dev = s.device.borrow();
        assert!(dev.msix_enabled());
        assert_eq!(dev.config_vector(), 0);
        for q in [RX, TX] {
            let expect = if mode == InterruptMode::PerQueueVectors {
                q + 1
            } else {
                1
            };
            assert_eq!(dev.queue_vector(q), expect);
        }
    }
    PciRig { s, edges: 0 }
}

#[test]
fn pci_msix_per_queue_vectors_rx_tx_config_callbacks_run() {
    for (packed, event_idx) in RINGS {
        let (end, mut peer) = link();
        let mut rig = pci_rig(InterruptMode::PerQueueVectors, packed, event_idx, end);
        let what = format!("pci per-queue packed={packed} event_idx={event_idx}");
        interrupt_cycle(&mut rig, &mut peer, event_idx, &what);
    }
}

#[test]
fn pci_msix_shared_vector_rx_tx_config_callbacks_run() {
    for (packed, event_idx) in RINGS {
        let (end, mut peer) = link();
        let mut rig = pci_rig(InterruptMode::SharedVector, packed, event_idx, end);
        let what = format!("pci shared packed={packed} event_idx={event_idx}");
        interrupt_cycle(&mut rig, &mut peer, event_idx, &what);
    }
}

#[test]
fn pci_intx_rx_tx_config_callbacks_run() {
    for (packed, event_idx) in RINGS {
        let (end, mut peer) = link();
        let mut rig = pci_rig(InterruptMode::Intx, packed, event_idx, end);
        let what = format!("pci intx packed={packed} event_idx={event_idx}");
        interrupt_cycle(&mut rig, &mut peer, event_idx, &what);
    }
}

#[test]
fn pci_msix_vector_of_other_queue_runs_no_rx_callback() {
    // Vector 2 is TX's: with nothing used on TX, frames waiting on RX do not run the RX callback through it.
    let (end, mut peer) = link();
    let mut rig = pci_rig(InterruptMode::PerQueueVectors, false, true, end);
    let (mut dispatch, hits) = dispatch();
    service(&mut rig, &mut dispatch);
    hits.clear();
    inject(&mut peer, &frame(60, 1));
    assert_eq!(rig.process_rx(), 1);
    assert_eq!(rig.raised(), vec![1]);
    rig.handle(2, &mut dispatch);
    assert_eq!(hits.get(), (0, 0, 0));
    rig.handle(1, &mut dispatch);
    assert_eq!(hits.get(), (1, 0, 0));
}

#[test]
fn mmio_spurious_interrupt_runs_no_callback() {
    let (end, _peer) = link();
    let mut rig = MmioRig(mmio(
        builder(false, true),
        end,
        NetDriverConfig::new().queue_size(64),
    ));
    let (mut dispatch, hits) = dispatch();
    service(&mut rig, &mut dispatch);
    hits.clear();
    // A shared line fired for another device: InterruptStatus is 0, nothing runs.
    let cause = rig
        .0
        .driver
        .handle_interrupt(|t, used| t.handle_interrupt(&mut dispatch, used));
    assert_eq!(cause, InterruptCause::empty());
    assert_eq!(hits.get(), (0, 0, 0));
}

#[test]
fn mmio_legacy_interrupt_driven_rx_callback_runs() {
    let (end, mut peer) = link();
    let s = mmio_version(
        NetDeviceBuilder::new().queue_size(64),
        end,
        NetDriverConfig::new().queue_size(64),
        MmioVersion::Legacy,
    );
    assert!(!s.driver.features().contains(Features::VERSION_1));
    interrupt_cycle(&mut MmioRig(s), &mut peer, false, "mmio legacy");
}

#[test]
fn pci_legacy_msix_interrupt_driven_rx_callback_runs() {
    for variant in [PciVariant::Legacy, PciVariant::Transitional] {
        for mode in [InterruptMode::PerQueueVectors, InterruptMode::Intx] {
            let (end, mut peer) = link();
            let s = pci_with(
                NetDeviceBuilder::new().queue_size(64),
                end,
                NetDriverConfig::new().queue_size(64),
                variant,
                Some(virtio_pci::Interface::Legacy),
                Some(mode),
            );
            assert_eq!(s.mode, Some(mode));
            assert!(!s.driver.features().contains(Features::VERSION_1));
            let what = format!("pci legacy {variant:?} {mode:?}");
            interrupt_cycle(&mut PciRig { s, edges: 0 }, &mut peer, false, &what);
        }
    }
}
