//! The device's zero-copy TX path (`NetBackend::takes_slices` / `send_slices`, which the `Pair` implements): frames
//! and headers arrive intact and in order, and a frame the backend refuses with WouldBlock is held and sent first
//! on the next pass, for both ring formats.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

mod common;

use common::*;
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::NetDriverConfig;
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::wire::HeaderRepr;

fn held_frames_are_sent_in_order(packed: bool) {
    // Two slots: the device can put two frames on the wire, then the backend blocks.
    let (backend, mut peer) = PairEnd::pair(PairConfig::new().slots(2));
    assert!(backend.takes_slices());
    let mut setup = mmio(
        NetDeviceBuilder::new().offer(ring_features(packed)),
        backend,
        NetDriverConfig::new(),
    );
    let frames: Vec<Vec<u8>> = (0..7u8).map(|i| frame(60 + usize::from(i), i)).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let header = HeaderRepr::new();
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
    assert_eq!(counters.tx_frames, 7);
    assert_eq!(counters.total_drops(), 0);
    // Every chain came back: the driver can queue a full burst again.
    assert_eq!(setup.driver.send_burst(0, &refs[..2], &header).unwrap(), 2);
}

#[test]
fn tx_slices_split_backend_full_holds_frame_and_resends_in_order() {
    held_frames_are_sent_in_order(false);
}

#[test]
fn tx_slices_packed_backend_full_holds_frame_and_resends_in_order() {
    held_frames_are_sent_in_order(true);
}
