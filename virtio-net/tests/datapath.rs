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
    // A quick stride over 14..=65550 on a 64-entry queue (the every_frame_size_round_trips_* tests take every size).
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

// ---------------------------------------------------------------------------------------------------------------
// Frame-size sweeps: driver → device → loopback `Pair` → device → driver, one frame at a time, each checked byte for
// byte with its header, with and without MRG_RXBUF; the split ring over virtio-mmio, the packed ring over
// virtio-pci.

/// Bytes of the mergeable receive buffers the sweeps' drivers post (the driver's default, set explicitly because
/// the expected `num_buffers` follows from it).
const SWEEP_RX_BUFFER: usize = 2048;
/// Bytes of virtio-net header in front of each received frame (VERSION_1).
const SWEEP_HEADER: usize = 12;

/// Pseudo-random bytes (xorshift). A frame is a window of them starting at an offset derived from its length, so
/// neighbouring sizes differ almost everywhere and a shifted, stale or misordered piece does not match.
fn sweep_pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..MAX_FRAME_LEN + 4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The header sent with a frame of `len` bytes: offload requests with fields derived from `len`, so that a header
/// delivered with the wrong frame is noticed.
fn sweep_header(len: usize) -> HeaderRepr {
    let l = (len % 60_000) as u16;
    HeaderRepr::new()
        .with_checksum(l % 1500, 16 + (l % 7) * 2)
        .with_gso(gso::TCPV4, 536 + l % 900, 54 + l % 40)
}

/// Sends a frame of every length the crate accepts (14..=[`MAX_FRAME_LEN`]) over a fresh driver/device pair and
/// checks each one that comes back: length, every byte, the whole header with the `num_buffers` the buffer size
/// implies; then the device's counters. About 9 s in debug for the four sweeps together on one idle core (3 s in
/// release), so they run in every test run rather than only in the heavy tier.
fn sweep(packed: bool, mrg: bool) {
    let config = NetDriverConfig::new()
        .queue_size(64)
        .rx_buffer_len(SWEEP_RX_BUFFER as u32);
    if packed {
        let mut s = pci(builder(mrg, packed), loopback(1), config);
        let device = s.device.clone();
        sweep_over(
            &mut s.driver,
            || device.borrow_mut().device_mut().process_rx(0),
            || device.borrow().device().counters(),
            (packed, mrg),
        );
    } else {
        let mut s = mmio(builder(mrg, packed), loopback(1), config);
        let device = s.device.clone();
        sweep_over(
            &mut s.driver,
            || device.borrow_mut().device_mut().process_rx(0),
            || device.borrow().device().counters(),
            (packed, mrg),
        );
    }
}

fn sweep_over<T: virtio_core::transport::Transport>(
    driver: &mut virtio_net::driver::NetDriver<T, Mem>,
    mut process_rx: impl FnMut() -> virtio_net::Result<usize>,
    counters: impl Fn() -> virtio_net::NetCounters,
    (packed, mrg): (bool, bool),
) {
    assert_eq!(
        driver
            .features()
            .contains(virtio_core::Features::RING_PACKED),
        packed
    );
    assert_eq!(driver.features().contains(feature::MRG_RXBUF), mrg);
    let pattern = sweep_pattern();
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let sizes = 14..=MAX_FRAME_LEN;
    let mut bytes = 0u64;
    for len in sizes.clone() {
        let at = len.wrapping_mul(7919) % 4096;
        let f = &pattern[at..at + len];
        let h = sweep_header(len);
        driver.send(0, f, &h).unwrap();
        assert_eq!(
            process_rx().unwrap(),
            1,
            "len {len} mrg {mrg} packed {packed}"
        );
        let (got, n) = driver
            .receive(0, &mut buf)
            .unwrap()
            .unwrap_or_else(|| panic!("len {len} mrg {mrg} packed {packed}: nothing received"));
        assert_eq!(n, len, "mrg {mrg} packed {packed}");
        // Not `assert_eq!`: a failure would print 64 KiB twice.
        if buf[..n] != *f {
            let first = buf[..n].iter().zip(f).position(|(a, b)| a != b);
            panic!("len {len} mrg {mrg} packed {packed}: first differing byte at {first:?}");
        }
        let num_buffers = if mrg {
            (SWEEP_HEADER + len).div_ceil(SWEEP_RX_BUFFER) as u16
        } else {
            1
        };
        let mut expected = h;
        expected.num_buffers = num_buffers;
        assert_eq!(got, expected, "len {len} mrg {mrg} packed {packed}");
        bytes += len as u64;
    }
    assert!(driver.receive(0, &mut buf).unwrap().is_none());
    let c = counters();
    let frames = sizes.count() as u64;
    assert_eq!(
        (c.tx_frames, c.rx_frames, c.tx_bytes, c.rx_bytes),
        (frames, frames, bytes, bytes)
    );
    assert_eq!(c.total_drops(), 0);
}

#[test]
fn every_frame_size_round_trips_split_mmio() {
    sweep(false, false);
}

#[test]
fn every_frame_size_round_trips_split_mmio_mergeable() {
    sweep(false, true);
}

#[test]
fn every_frame_size_round_trips_packed_pci() {
    sweep(true, false);
}

#[test]
fn every_frame_size_round_trips_packed_pci_mergeable() {
    sweep(true, true);
}
