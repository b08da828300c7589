//! The device's zero-copy TX path (`NetBackend::takes_slices` / `send_slices`, which the `Pair` implements): frames
//! and headers arrive intact and in order, and a frame the backend refuses with WouldBlock is held and sent first
//! on the next pass, for both ring formats, with and without VIRTIO_F_IN_ORDER (one used element per TX burst).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

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
