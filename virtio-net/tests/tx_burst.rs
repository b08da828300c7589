//! `NetDriver::send_burst` (partial acceptance, frames and headers intact, one notification decision per burst,
//! small/big TX buffers) and the device's TX polling mode (`NetDevice::set_tx_polling`).
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use common::*;
use virtio_core::Features;
use virtio_mmio::{MmioDevice, MmioRegisters, MmioTransport, MmioVersion};
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig, TX_SMALL_SLOT};
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::wire::{feature, gso, HeaderLen, HeaderRepr};
use virtio_net::{NetError, MAX_FRAME_LEN};

const TX: u16 = 1;

/// Registers of the shared device that count the driver's TX `QueueNotify` writes and, once `drop_kicks` is set,
/// drop them (the test runs the device's TX by hand).
struct Counting {
    device: MmioShared,
    tx_kicks: Rc<Cell<u32>>,
    drop_kicks: Rc<Cell<bool>>,
}

impl MmioRegisters for Counting {
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
        if offset as u64 == virtio_mmio::regs::QUEUE_NOTIFY {
            if value & 0xffff == u32::from(TX) {
                self.tx_kicks.set(self.tx_kicks.get() + 1);
            }
            if self.drop_kicks.get() {
                return;
            }
        }
        self.device.write32(offset, value);
    }
}

struct Rig {
    device: MmioShared,
    driver: NetDriver<MmioTransport<Counting>, Mem>,
    peer: PairEnd,
    tx_kicks: Rc<Cell<u32>>,
    drop_kicks: Rc<Cell<bool>>,
}

impl Rig {
    /// Driver and device over virtio-mmio, queues of `queue_size`, the device's backend one end of a pair whose
    /// other end (`peer`) holds 512 frames.
    fn new(rings: Features, queue_size: u16) -> Self {
        let memory = memory();
        let (backend, peer) = PairEnd::pair(PairConfig::new().slots(512));
        let net: MmioNet = NetDeviceBuilder::new()
            .queue_size(queue_size)
            .offer(rings | feature::MRG_RXBUF | feature::CSUM | feature::HOST_TSO4)
            .build(backend);
        let device = Rc::new(RefCell::new(
            MmioDevice::new(
                net,
                memory.clone(),
                Arc::new(Line::default()),
                MmioVersion::Modern,
            )
            .unwrap(),
        ));
        let tx_kicks = Rc::new(Cell::new(0));
        let drop_kicks = Rc::new(Cell::new(false));
        let regs = Counting {
            device: device.clone(),
            tx_kicks: tx_kicks.clone(),
            drop_kicks: drop_kicks.clone(),
        };
        let transport = MmioTransport::from_registers(regs, 0x200).unwrap();
        let driver = NetDriver::new(
            transport,
            memory,
            region(),
            NetDriverConfig::new().queue_size(queue_size),
        )
        .unwrap();
        assert_eq!(
            driver.features().contains(Features::RING_PACKED),
            rings.contains(Features::RING_PACKED)
        );
        Self {
            device,
            driver,
            peer,
            tx_kicks,
            drop_kicks,
        }
    }

    fn process_tx(&self) -> usize {
        self.device.borrow_mut().device_mut().process_tx(0).unwrap()
    }

    fn set_polling(&self, on: bool) {
        self.device
            .borrow_mut()
            .device_mut()
            .set_tx_polling(0, on)
            .unwrap();
    }

    /// The frames (header, payload) the device put on the wire.
    fn wire(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut buf = vec![0u8; 12 + MAX_FRAME_LEN];
        let mut out = Vec::new();
        while let Some(n) = self.peer.recv(0, &mut buf).unwrap() {
            out.push((buf[..12].to_vec(), buf[12..n].to_vec()));
        }
        out
    }

    fn wire_frames(&mut self) -> Vec<Vec<u8>> {
        self.wire().into_iter().map(|(_, f)| f).collect()
    }
}

fn rings(packed: bool, event_idx: bool) -> Features {
    let mut f = Features::VERSION_1;
    if packed {
        f |= Features::RING_PACKED;
    }
    if event_idx {
        f |= Features::EVENT_IDX;
    }
    f
}

fn refs(frames: &[Vec<u8>]) -> Vec<&[u8]> {
    frames.iter().map(Vec::as_slice).collect()
}

#[test]
fn send_burst_accepts_what_fits_when_the_ring_is_full() {
    for packed in [false, true] {
        for event_idx in [false, true] {
            let what = format!("packed={packed} event_idx={event_idx}");
            let mut rig = Rig::new(rings(packed, event_idx), 16);
            rig.drop_kicks.set(true);
            let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(60 + i, i as u8)).collect();
            let all = refs(&frames);
            let header = HeaderRepr::new();
            let mut bursts = 0;

            // 16 entries: the first burst of 32 is accepted in part, the next finds the ring full.
            assert_eq!(
                rig.driver.send_burst(0, &all[..32], &header).unwrap(),
                16,
                "{what}"
            );
            bursts += 1;
            assert_eq!(
                rig.driver.send_burst(0, &all[16..32], &header).unwrap(),
                0,
                "{what}"
            );
            assert_eq!(
                rig.driver.send(0, &frames[16], &header),
                Err(NetError::QueueFull),
                "{what}"
            );
            let kicks = rig.tx_kicks.get();
            assert!(
                (1..=bursts).contains(&kicks),
                "{what}: {kicks} kicks for {bursts} bursts"
            );

            // The device drains them; the driver reclaims because the burst needs the slots.
            assert_eq!(rig.process_tx(), 16, "{what}");
            assert_eq!(rig.wire_frames(), frames[..16].to_vec(), "{what}");
            assert_eq!(
                rig.driver.send_burst(0, &all[16..40], &header).unwrap(),
                16,
                "{what}"
            );
            bursts += 1;
            assert_eq!(rig.process_tx(), 16, "{what}");
            assert_eq!(
                rig.driver.send_burst(0, &all[32..40], &header).unwrap(),
                8,
                "{what}"
            );
            bursts += 1;
            assert_eq!(rig.process_tx(), 8, "{what}");
            assert_eq!(rig.wire_frames(), frames[16..40].to_vec(), "{what}");
            let kicks = rig.tx_kicks.get();
            assert!(
                (1..=bursts).contains(&kicks),
                "{what}: {kicks} kicks for {bursts} bursts"
            );
            // The last burst reclaimed the 16 before it; its own 8 are left.
            assert_eq!(rig.driver.reclaim_tx(0).unwrap(), 8, "{what}");
            let counters = rig.device.borrow().device().counters();
            assert_eq!(counters.tx_frames, 40, "{what}");
            assert_eq!(counters.total_drops(), 0, "{what}");
        }
    }
}

#[test]
fn send_burst_frames_and_header_intact_across_buffer_sizes() {
    let hl = HeaderLen::Modern.bytes();
    let small_max = TX_SMALL_SLOT as usize - hl;
    let sizes = [
        14,
        60,
        64,
        1514,
        small_max - 1,
        small_max,
        small_max + 1,
        9000,
        MAX_FRAME_LEN,
    ];
    let header = HeaderRepr::new()
        .with_checksum(34, 16)
        .with_gso(gso::TCPV4, 1448, 54);
    let mut expected_header = header;
    expected_header.num_buffers = 0;
    let expected_header = expected_header.to_bytes(HeaderLen::Modern)[..hl].to_vec();
    for packed in [false, true] {
        let what = format!("packed={packed}");
        // Kicks reach the device: each burst is drained by the notification it causes.
        let mut rig = Rig::new(rings(packed, true), 32);
        for round in 0..6u8 {
            // Rotate the sizes so every slot carries small and big frames in turn.
            let frames: Vec<Vec<u8>> = (0..sizes.len())
                .map(|i| {
                    let len = sizes[(i + usize::from(round)) % sizes.len()];
                    frame(len, round.wrapping_mul(17).wrapping_add(i as u8))
                })
                .collect();
            let before = rig.tx_kicks.get();
            assert_eq!(
                rig.driver.send_burst(0, &refs(&frames), &header).unwrap(),
                frames.len(),
                "{what} round {round}"
            );
            assert!(
                rig.tx_kicks.get() - before <= 1,
                "{what}: one kick per burst at most"
            );
            let wire = rig.wire();
            assert_eq!(wire.len(), frames.len(), "{what} round {round}");
            for ((h, f), want) in wire.iter().zip(&frames) {
                assert_eq!(h, &expected_header, "{what} round {round}: header");
                assert_eq!(
                    f,
                    want,
                    "{what} round {round}: frame of {} bytes",
                    want.len()
                );
            }
        }
        let counters = rig.device.borrow().device().counters();
        assert_eq!(counters.total_drops(), 0, "{what}");
    }
}

#[test]
fn send_burst_stops_at_an_oversized_frame() {
    let mut rig = Rig::new(rings(false, true), 64);
    let ok = frame(100, 1);
    let big = vec![0u8; MAX_FRAME_LEN + 1];
    let header = HeaderRepr::new();
    assert!(matches!(
        rig.driver.send_burst(0, &[&big, &ok], &header),
        Err(NetError::FrameTooLarge { .. })
    ));
    assert_eq!(
        rig.driver
            .send_burst(0, &[&ok, &big, &ok], &header)
            .unwrap(),
        1
    );
    assert_eq!(rig.driver.send_burst(0, &[], &header).unwrap(), 0);
    assert_eq!(rig.wire_frames(), vec![ok]);
    assert!(matches!(
        rig.driver.send_burst(3, &[&[0u8; 60][..]], &header),
        Err(NetError::QueueNotActive(_))
    ));
}

#[test]
fn send_burst_reclaims_lazily_and_reuses_slots() {
    // 64 entries, bursts of 8 drained at once: slots come back only when fewer than TX_RECLAIM_BELOW are free.
    let mut rig = Rig::new(rings(true, true), 64);
    let header = HeaderRepr::new();
    let mut sent = Vec::new();
    for round in 0..40u8 {
        let frames: Vec<Vec<u8>> = (0..8)
            .map(|i| frame(60 + usize::from(round) * 7 + i, round ^ i as u8))
            .collect();
        assert_eq!(
            rig.driver.send_burst(0, &refs(&frames), &header).unwrap(),
            8,
            "round {round}"
        );
        sent.extend(frames);
    }
    assert_eq!(rig.wire_frames(), sent);
    // At most a ring's worth is left to reclaim.
    let left = rig.driver.reclaim_tx(0).unwrap();
    assert!(left <= 64, "{left}");
}

#[test]
fn tx_polling_mode_leaves_notifications_off_and_needs_polling() {
    for packed in [false, true] {
        for event_idx in [false, true] {
            let what = format!("packed={packed} event_idx={event_idx}");
            let mut rig = Rig::new(rings(packed, event_idx), 256);
            rig.drop_kicks.set(true);
            let header = HeaderRepr::new();
            let frames: Vec<Vec<u8>> = (0..32u8).map(|i| frame(64, i)).collect();
            let burst = refs(&frames);

            // Notification mode: once the device found the ring empty it asks for a kick again.
            assert_eq!(
                rig.driver.send_burst(0, &burst, &header).unwrap(),
                32,
                "{what}"
            );
            assert_eq!(rig.process_tx(), 32, "{what}");
            assert_eq!(rig.process_tx(), 0, "{what}");
            let before = rig.tx_kicks.get();
            assert_eq!(
                rig.driver.send_burst(0, &burst, &header).unwrap(),
                32,
                "{what}"
            );
            assert_eq!(
                rig.tx_kicks.get(),
                before + 1,
                "{what}: kick after re-enable"
            );
            assert_eq!(rig.process_tx(), 32, "{what}");

            // Polling mode: notifications stay off, bursts cause no kicks, polling moves everything, including
            // more than one device burst (TX_BURST) in one call.
            assert!(!rig.device.borrow().device().tx_polling(0), "{what}");
            rig.set_polling(true);
            assert!(rig.device.borrow().device().tx_polling(0), "{what}");
            assert_eq!(rig.process_tx(), 0, "{what}");
            let before = rig.tx_kicks.get();
            for _ in 0..3 {
                assert_eq!(
                    rig.driver.send_burst(0, &burst, &header).unwrap(),
                    32,
                    "{what}"
                );
            }
            assert_eq!(rig.process_tx(), 96, "{what}");
            assert_eq!(rig.process_tx(), 0, "{what}: empty, returns");
            for _ in 0..4 {
                assert_eq!(
                    rig.driver.send_burst(0, &burst, &header).unwrap(),
                    32,
                    "{what}"
                );
                assert_eq!(rig.process_tx(), 32, "{what}");
            }
            // With EVENT_IDX the driver still sees the last `avail_event` the device published before polling
            // began, and kicks once when it passes it; after that, none.
            let allowed = u32::from(event_idx);
            assert!(
                rig.tx_kicks.get() - before <= allowed,
                "{what}: no kicks while the device polls ({} seen)",
                rig.tx_kicks.get() - before
            );
            let before = rig.tx_kicks.get();
            assert_eq!(rig.wire_frames().len(), 32 * 9, "{what}");

            // Back to notifications: one more poll re-enables them, and the next burst kicks.
            rig.set_polling(false);
            assert_eq!(rig.process_tx(), 0, "{what}");
            assert_eq!(
                rig.driver.send_burst(0, &burst, &header).unwrap(),
                32,
                "{what}"
            );
            assert_eq!(
                rig.tx_kicks.get(),
                before + 1,
                "{what}: kick after polling ends"
            );
            assert_eq!(rig.process_tx(), 32, "{what}");
            assert_eq!(rig.wire_frames(), frames, "{what}");
            let counters = rig.device.borrow().device().counters();
            assert_eq!(counters.total_drops(), 0, "{what}");
        }
    }
}

#[test]
fn tx_polling_mode_of_a_missing_pair_is_an_error() {
    let rig = Rig::new(rings(false, true), 64);
    let mut device = rig.device.borrow_mut();
    assert!(matches!(
        device.device_mut().set_tx_polling(5, true),
        Err(NetError::QueueNotActive(_))
    ));
    assert!(!device.device().tx_polling(5));
}
