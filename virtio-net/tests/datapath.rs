//! Driver ↔ device in-process over virtio-mmio and virtio-pci, split and packed, with and without MRG_RXBUF.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::*;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::NetDriverConfig;
use virtio_net::wire::{feature, gso, HeaderRepr};
use virtio_net::{NetError, MAX_FRAME_LEN};

const SIZES: &[usize] = &[
    14,
    60,
    61,
    1514,
    2036,
    2037,
    4096,
    9000,
    32_768,
    65_535,
    MAX_FRAME_LEN,
];

fn builder(mrg: bool, packed: bool) -> NetDeviceBuilder {
    let mut b = NetDeviceBuilder::new()
        .queue_size(64)
        .offer(ring_features(packed))
        .offer(feature::CSUM | feature::GUEST_CSUM | feature::HOST_TSO4 | feature::GUEST_TSO4);
    if mrg {
        b = b.offer(feature::MRG_RXBUF);
    }
    b
}

fn offload_header() -> HeaderRepr {
    HeaderRepr::new()
        .with_checksum(34, 16)
        .with_gso(gso::TCPV4, 1448, 54)
}

#[test]
fn mmio_loopback_all_sizes_headers_preserved() {
    for packed in [false, true] {
        for mrg in [false, true] {
            let mut s = mmio(
                builder(mrg, packed),
                loopback(1),
                NetDriverConfig::new().queue_size(64),
            );
            assert_eq!(s.driver.features().contains(feature::MRG_RXBUF), mrg);
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            for (i, &len) in SIZES.iter().enumerate() {
                let f = frame(len, i as u8);
                let h = offload_header();
                s.driver.send(0, &f, &h).unwrap();
                let rx = s.device.borrow_mut().device_mut().process_rx(0).unwrap();
                assert_eq!(rx, 1, "len {len} mrg {mrg} packed {packed}");
                let (got, n) = s.driver.receive(0, &mut buf).unwrap().expect("frame");
                assert_eq!(n, len);
                assert_eq!(&buf[..n], &f[..]);
                assert_eq!(
                    (got.flags, got.gso_type, got.gso_size, got.hdr_len),
                    (h.flags, h.gso_type, h.gso_size, h.hdr_len)
                );
                assert_eq!((got.csum_start, got.csum_offset), (34, 16));
                if mrg {
                    assert_eq!(usize::from(got.num_buffers), (len + 12).div_ceil(2048));
                } else {
                    assert_eq!(got.num_buffers, 1);
                }
            }
            let c = s.device.borrow().device().counters();
            assert_eq!(c.tx_frames, SIZES.len() as u64);
            assert_eq!(c.rx_frames, SIZES.len() as u64);
            assert_eq!(c.total_drops(), 0);
        }
    }
}

#[test]
fn pci_loopback_all_sizes_headers_preserved() {
    for packed in [false, true] {
        for mrg in [false, true] {
            let mut s = pci(
                builder(mrg, packed),
                loopback(1),
                NetDriverConfig::new().queue_size(64),
            );
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            for (i, &len) in SIZES.iter().enumerate() {
                let f = frame(len, i as u8);
                s.driver.send(0, &f, &offload_header()).unwrap();
                assert_eq!(s.device.borrow_mut().device_mut().process_rx(0).unwrap(), 1);
                let (got, n) = s.driver.receive(0, &mut buf).unwrap().expect("frame");
                assert_eq!(&buf[..n], &f[..], "len {len}");
                assert_eq!(got.gso_type, gso::TCPV4);
            }
        }
    }
}

#[test]
fn driver_frame_over_limit_is_refused() {
    let mut s = mmio(builder(true, false), loopback(1), NetDriverConfig::new());
    let f = frame(MAX_FRAME_LEN + 1, 0);
    assert!(matches!(
        s.driver.send(0, &f, &HeaderRepr::new()),
        Err(NetError::FrameTooLarge { .. })
    ));
}

#[test]
fn every_frame_size_in_range_crosses_mergeable() {
    // 14..=65550 exhaustively would be slow in debug; step through with primes plus the edges.
    let mut s = mmio(
        builder(true, false),
        loopback(1),
        NetDriverConfig::new().queue_size(64),
    );
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut len = 14;
    while len <= MAX_FRAME_LEN {
        let f = frame(len, len as u8);
        s.driver.send(0, &f, &HeaderRepr::new()).unwrap();
        s.device.borrow_mut().device_mut().process_rx(0).unwrap();
        let (_, n) = s.driver.receive(0, &mut buf).unwrap().expect("frame");
        assert_eq!(&buf[..n], &f[..]);
        len += 997;
    }
}

#[test]
fn rx_waits_for_buffers_and_resumes() {
    let mut s = mmio(
        builder(false, false),
        loopback(1),
        NetDriverConfig::new().queue_size(4),
    );
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    for i in 0..6u8 {
        s.driver
            .send(0, &frame(100, i), &HeaderRepr::new())
            .unwrap();
    }
    // 4 RX buffers: 4 frames delivered, 2 wait in the backend.
    assert_eq!(s.device.borrow_mut().device_mut().process_rx(0).unwrap(), 4);
    for _ in 0..4 {
        assert!(s.driver.receive(0, &mut buf).unwrap().is_some());
    }
    // Re-posting notified the RX queue, which delivered the rest.
    assert_eq!(s.device.borrow().device().counters().rx_frames, 6);
    assert!(s.driver.receive(0, &mut buf).unwrap().is_some());
    assert!(s.driver.receive(0, &mut buf).unwrap().is_some());
    assert!(s.driver.receive(0, &mut buf).unwrap().is_none());
}

#[test]
fn device_to_device_through_pair() {
    let (a, b) = virtio_net::pair::PairEnd::pair(virtio_net::pair::PairConfig::new());
    let mut left = mmio(builder(true, false), a, NetDriverConfig::new());
    let mut right = pci(builder(true, true), b, NetDriverConfig::new());
    let f = frame(1514, 7);
    left.driver.send(0, &f, &offload_header()).unwrap();
    assert_eq!(
        right
            .device
            .borrow_mut()
            .device_mut()
            .process_rx(0)
            .unwrap(),
        1
    );
    let mut buf = vec![0u8; 2048];
    let (h, n) = right.driver.receive(0, &mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n], &f[..]);
    assert_eq!(h.gso_size, 1448);
    assert!(left.driver.receive(0, &mut buf).unwrap().is_none());
}
