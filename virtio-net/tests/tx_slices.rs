//! The device's zero-copy TX path (`NetBackend::takes_slices` / `send_slices`, which the `Pair` implements): frames
//! and headers arrive intact and in order, and a frame the backend refuses with WouldBlock is held and sent first
//! on the next pass, for both ring formats, with and without VIRTIO_F_IN_ORDER (one used element per TX burst).
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::*;
use virtio_core::Features;
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::NetDriverConfig;
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::wire::HeaderRepr;

fn held_frames_are_sent_in_order(features: Features) {
    // Two slots: the device can put two frames on the wire, then the backend blocks.
    let (backend, mut peer) = PairEnd::pair(PairConfig::new().slots(2));
    assert!(backend.takes_slices());
    let mut setup = mmio(
        NetDeviceBuilder::new().offer(features),
        backend,
        NetDriverConfig::new(),
    );
    assert_eq!(
        setup.driver.features() & (Features::RING_PACKED | Features::IN_ORDER),
        features & (Features::RING_PACKED | Features::IN_ORDER)
    );
    let frames: Vec<Vec<u8>> = (0..7u8).map(|i| frame(60 + usize::from(i), i)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let header = HeaderRepr::new();
    // 20 rounds of 7 frames through a 64-entry queue: every chain must come back to the driver.
    for round in 0..20u64 {
        // The notification runs the device's TX (two frames out, the third held).
        assert_eq!(setup.driver.send_burst(0, &refs, &header).unwrap(), 7);
        let mut wire = Vec::new();
        for _ in 0..10 {
            wire.extend(drain(&mut peer));
            let _ = setup
                .device
                .borrow_mut()
                .device_mut()
                .process_tx(0)
                .unwrap();
        }
        wire.extend(drain(&mut peer));
        assert_eq!(wire, frames);
        let counters = setup.device.borrow().device().counters();
        assert_eq!(counters.tx_frames, 7 * (round + 1));
        assert_eq!(counters.total_drops(), 0);
    }
}

#[test]
fn tx_slices_split_backend_full_holds_frame_and_resends_in_order() {
    held_frames_are_sent_in_order(ring_features(false));
}

#[test]
fn tx_slices_packed_backend_full_holds_frame_and_resends_in_order() {
    held_frames_are_sent_in_order(ring_features(true));
}

#[test]
fn tx_slices_split_in_order_returns_every_chain() {
    held_frames_are_sent_in_order(ring_features(false) | Features::IN_ORDER);
}

#[test]
fn tx_slices_packed_in_order_returns_every_chain() {
    held_frames_are_sent_in_order(ring_features(true) | Features::IN_ORDER);
}

mod chains {
    //! TX chains of many shapes straight on the device queue (virtio-core's mock driver's queue), to reach the
    //! multi-buffer zero-copy path and its copying fallback (more than 8 frame pieces).
    use std::sync::Arc;

    use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
    use virtio_core::mock::MockDriver;
    use virtio_core::{Buffer, DeviceAddr, DeviceQueue, Features, HeapMemory};
    use virtio_net::backend::NetBackend;
    use virtio_net::device::{NetDevice, NetDeviceBuilder};
    use virtio_net::pair::{PairConfig, PairEnd};

    struct NoIrq;

    impl Interrupt for NoIrq {
        fn signal_queue(&self, _queue: u16) {}
        fn signal_config(&self) {}
    }

    /// Sends each chain (its readable buffers' bytes) through the device; returns what reached the wire.
    fn through_device(features: Features, chains: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
        let mut driver = MockDriver::new(features, 64).unwrap();
        let memory: Arc<HeapMemory> = driver.memory();
        let (backend, mut peer) = PairEnd::pair(PairConfig::new().slots(64));
        let mut device: NetDevice<PairEnd, Arc<HeapMemory>, NoIrq> = NetDeviceBuilder::new()
            .queue_size(64)
            .offer(features)
            .build(backend);
        let queue =
            DeviceQueue::activate(&driver.queue_config(), features, memory.clone()).unwrap();
        VirtioDevice::activate(
            &mut device,
            features,
            vec![ActiveQueue { index: 1, queue }],
            NoIrq,
        )
        .unwrap();
        // Buffers at the top of the mock's memory (its own data slots are at the bottom of that area).
        let mut addr = memory.base().raw() + memory.len() as u64 - 0x4000;
        for (token, chain) in chains.iter().enumerate() {
            let mut buffers = Vec::new();
            for piece in chain {
                driver.poke(DeviceAddr::new(addr), piece).unwrap();
                buffers.push(Buffer::new(DeviceAddr::new(addr), piece.len() as u32));
                addr += (piece.len() as u64 + 15) & !15;
            }
            driver.queue().add(&buffers, &[], token as u16).unwrap();
        }
        assert_eq!(device.process_tx(0).unwrap(), chains.len());
        assert_eq!(device.counters().total_drops(), 0);
        let mut buf = vec![0u8; 12 + virtio_net::MAX_FRAME_LEN];
        let mut out = Vec::new();
        while let Some(n) = peer.recv(0, &mut buf).unwrap() {
            out.push(buf[..n].to_vec());
        }
        for token in 0..chains.len() {
            let used = driver.pop_used().unwrap().unwrap();
            assert_eq!(usize::from(used.token), token);
        }
        out
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn tx_slices_header_and_frame_over_many_buffers_arrive_whole() {
        for packed in [false, true] {
            let mut features = Features::VERSION_1;
            if packed {
                features |= Features::RING_PACKED;
            }
            let chains = vec![
                // Header split over two buffers, the frame over three.
                vec![
                    bytes(5, 1),
                    bytes(7, 2),
                    bytes(20, 3),
                    bytes(30, 4),
                    bytes(10, 5),
                ],
                // Header and the start of the frame in one buffer, the rest in another.
                vec![bytes(22, 6), bytes(50, 7)],
                // Header alone, the frame in one buffer.
                vec![bytes(12, 8), bytes(60, 9)],
                // Header alone, the frame over seven buffers.
                {
                    let mut c = vec![bytes(12, 10)];
                    c.extend((0..7).map(|i| bytes(9, 11 + i)));
                    c
                },
            ];
            let wire = through_device(features, &chains);
            let expected: Vec<Vec<u8>> = chains.iter().map(|c| c.concat()).collect();
            assert_eq!(wire, expected, "packed: {packed}");
        }
    }

    #[test]
    fn tx_slices_more_pieces_than_the_slice_limit_take_the_copy_path() {
        for packed in [false, true] {
            let mut features = Features::VERSION_1;
            if packed {
                features |= Features::RING_PACKED;
            }
            // Eight frame pieces (the limit): zero-copy; ten: the device copies the frame instead.
            let mut at_limit = vec![bytes(14, 1)];
            at_limit.extend((0..7).map(|i| bytes(11, 2 + i)));
            let mut over = vec![bytes(14, 20)];
            over.extend((0..9).map(|i| bytes(13, 21 + i)));
            let chains = vec![at_limit, over];
            let wire = through_device(features, &chains);
            let expected: Vec<Vec<u8>> = chains.iter().map(|c| c.concat()).collect();
            assert_eq!(wire, expected, "packed: {packed}");
        }
    }

    #[test]
    fn tx_slices_pair_reports_taking_slices() {
        let (a, _b) = PairEnd::pair(PairConfig::new());
        assert!(a.takes_slices());
    }
}
