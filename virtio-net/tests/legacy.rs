//! Legacy (pre-1.0) network devices driven by `NetDriver`: virtio-mmio version 1, virtio-pci transitional through
//! its legacy I/O BAR, and virtio-pci legacy-only. Full initialisation, traffic both ways with checked payloads, and
//! the header on the wire in its legacy form (§5.1.6.1 legacy interface: 10 bytes without MRG_RXBUF, 12 with it),
//! read from the split rings in guest memory as the device sees them.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::*;
use virtio_core::transport::Transport;
use virtio_core::{DeviceAddr, DeviceSlice, Features};
use virtio_mmio::{regs, MmioVersion};
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::pair::PairEnd;
use virtio_net::wire::{feature, gso, hdr_flags, HeaderLen, HeaderRepr};
use virtio_pci::{Interface, PciVariant};

const QUEUE_SIZE: u16 = 16;
const PAGE: u64 = 4096;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A legacy split ring in guest memory (§2.7.2 legacy layout: descriptors, available ring, used ring on the next
/// 4096 boundary).
struct LegacyRing {
    mem: Mem,
    desc: u64,
    avail: u64,
    used: u64,
}

impl LegacyRing {
    fn at(mem: Mem, base: u64) -> Self {
        assert_eq!(base % PAGE, 0, "legacy rings start on a page");
        let n = u64::from(QUEUE_SIZE);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n).div_ceil(PAGE) * PAGE;
        Self {
            mem,
            desc: base,
            avail,
            used,
        }
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        DeviceSlice::new(&self.mem, DeviceAddr::new(addr), len)
            .unwrap()
            .read_at(0, &mut out);
        out
    }

    fn u16_at(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.bytes(addr, 2).try_into().unwrap())
    }

    fn u32_at(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.bytes(addr, 4).try_into().unwrap())
    }

    /// Descriptor `i`: address, length, flags.
    fn descriptor(&self, i: u16) -> (u64, u32, u16) {
        let at = self.desc + 16 * u64::from(i);
        let b = self.bytes(at, 16);
        (
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            u16::from_le_bytes(b[12..14].try_into().unwrap()),
        )
    }

    /// The head of the most recently made-available chain.
    fn last_avail_head(&self) -> u16 {
        let idx = self.u16_at(self.avail + 2);
        let slot = idx.wrapping_sub(1) % QUEUE_SIZE;
        self.u16_at(self.avail + 4 + 2 * u64::from(slot))
    }

    /// The most recent used element: id, len.
    fn last_used(&self) -> (u32, u32) {
        let idx = self.u16_at(self.used + 2);
        let slot = idx.wrapping_sub(1) % QUEUE_SIZE;
        let at = self.used + 4 + 8 * u64::from(slot);
        (self.u32_at(at), self.u32_at(at + 4))
    }
}

fn builder(mrg: bool) -> NetDeviceBuilder {
    let mut b = NetDeviceBuilder::new()
        .queue_size(QUEUE_SIZE)
        .offer(feature::CSUM | feature::GUEST_CSUM | feature::HOST_TSO4 | feature::GUEST_TSO4);
    if mrg {
        b = b.offer(feature::MRG_RXBUF);
    }
    b
}

fn tso_header() -> HeaderRepr {
    HeaderRepr::new()
        .with_checksum(34, 16)
        .with_gso(gso::TCPV4, 1448, 54)
}

/// Init, config, TX and RX over a legacy device; `rings(queue)` gives the base of a queue's legacy ring.
fn legacy_traffic<T: Transport>(
    driver: &mut NetDriver<T, Mem>,
    device_features: Features,
    rings: impl Fn(u16) -> u64,
    peer: &mut PairEnd,
    process_rx: impl Fn() -> usize,
    mrg: bool,
    what: &str,
) {
    let hl = if mrg { 12 } else { 10 };
    let features = driver.features();
    assert!(!features.contains(Features::VERSION_1), "{what}");
    assert!(
        !features.intersects(Features::MODERN_ONLY),
        "{what}: no modern-only bit on a legacy interface"
    );
    assert_eq!(features.contains(feature::MRG_RXBUF), mrg, "{what}");
    assert_eq!(device_features, features, "{what}: both sides agree");
    assert_eq!(driver.header_len().bytes(), hl, "{what}");
    assert_eq!(
        driver.mac().unwrap(),
        Some(MAC),
        "{what}: legacy config read"
    );
    assert!(driver.link_up().unwrap(), "{what}");

    // TX: what the device reads is a `hl`-byte header and the frame, in one device-readable descriptor.
    let tx_ring = LegacyRing::at(driver.memory().clone(), rings(1));
    for (i, len) in [60usize, 1514, 9000].into_iter().enumerate() {
        let f = frame(len, i as u8);
        driver.send(0, &f, &tso_header()).unwrap();
        let (addr, dlen, flags) = tx_ring.descriptor(tx_ring.last_avail_head());
        assert_eq!(dlen as usize, hl + len, "{what}: TX descriptor length");
        assert_eq!(flags, 0, "{what}: one device-readable descriptor");
        let bytes = tx_ring.bytes(addr, hl + len);
        let h = HeaderRepr::parse(&virtio_net::wire::Header::new_unchecked(&bytes[..hl]));
        assert_eq!(h.flags, hdr_flags::NEEDS_CSUM, "{what}");
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (gso::TCPV4, 1448, 54));
        assert_eq!((h.csum_start, h.csum_offset), (34, 16), "{what}");
        if mrg {
            assert_eq!(&bytes[10..12], &[0, 0], "{what}: TX num_buffers is 0");
        }
        assert_eq!(
            &bytes[hl..],
            &f[..],
            "{what}: payload right after the header"
        );
        assert_eq!(drain(peer), vec![f], "{what}: the backend got the frame");
    }
    // Each send reclaims the slots completed before it: the last one is left.
    assert_eq!(driver.reclaim_tx(0).unwrap(), 1, "{what}");

    // RX: the device writes a `hl`-byte header and the frame; the used length counts both.
    let rx_ring = LegacyRing::at(driver.memory().clone(), rings(0));
    let mut buf = vec![0u8; virtio_net::MAX_FRAME_LEN];
    for (i, len) in [60usize, 1514, 1800].into_iter().enumerate() {
        let f = frame(len, 0x40 + i as u8);
        let header = tso_header().to_bytes(HeaderLen::Modern);
        use virtio_net::backend::NetBackend;
        peer.send(0, &[&header[..12], &f]).unwrap();
        assert_eq!(process_rx(), 1, "{what}");
        let (id, used_len) = rx_ring.last_used();
        assert_eq!(used_len as usize, hl + len, "{what}: RX used length");
        let (addr, _, flags) = rx_ring.descriptor(id as u16);
        assert_eq!(flags & 2, 2, "{what}: device-writable");
        let bytes = rx_ring.bytes(addr, hl + len);
        let h = HeaderRepr::parse(&virtio_net::wire::Header::new_unchecked(&bytes[..hl]));
        assert_eq!((h.gso_type, h.gso_size), (gso::TCPV4, 1448), "{what}");
        if mrg {
            assert_eq!(&bytes[10..12], &1u16.to_le_bytes(), "{what}: num_buffers");
        }
        assert_eq!(
            &bytes[hl..],
            &f[..],
            "{what}: payload right after the header"
        );
        let (got, n) = driver.receive(0, &mut buf).unwrap().expect("frame");
        assert_eq!(&buf[..n], &f[..], "{what}");
        assert_eq!((got.flags, got.csum_start, got.csum_offset), (1, 34, 16));
        assert_eq!(got.num_buffers, u16::from(mrg), "{what}");
    }
    // A frame spanning several mergeable buffers (or one big-packet buffer).
    let big = frame(9000, 0x77);
    inject(peer, &big);
    assert_eq!(process_rx(), 1, "{what}");
    let (got, n) = driver.receive(0, &mut buf).unwrap().expect("frame");
    assert_eq!(&buf[..n], &big[..], "{what}");
    assert_eq!(
        got.num_buffers,
        if mrg {
            (9000u16 + 12).div_ceil(2048)
        } else {
            0
        },
        "{what}"
    );
    assert!(driver.receive(0, &mut buf).unwrap().is_none(), "{what}");
}

#[test]
fn mmio_v1_legacy_net_headers_are_legacy_and_traffic_intact() {
    for mrg in [false, true] {
        let (end, mut peer) = link();
        let mut s = mmio_version(
            builder(mrg),
            end,
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
            MmioVersion::Legacy,
        );
        assert_eq!(s.driver.transport_mut().version(), MmioVersion::Legacy);
        let device = s.device.clone();
        let negotiated = device.borrow().device().negotiated();
        let rings = |q: u16| {
            let mut d = device.borrow_mut();
            d.write32(regs::QUEUE_SEL, u32::from(q)).unwrap();
            u64::from(d.read32(regs::QUEUE_PFN).unwrap()) * PAGE
        };
        let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
        let what = format!("mmio v1 mrg={mrg}");
        legacy_traffic(&mut s.driver, negotiated, rings, &mut peer, rx, mrg, &what);
        assert_eq!(device.borrow().device().counters().total_drops(), 0);
    }
}

fn pci_legacy(variant: PciVariant, interface: Option<Interface>) {
    for mrg in [false, true] {
        let (end, mut peer) = link();
        let mut s = pci_with(
            builder(mrg),
            end,
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
            variant,
            interface,
            None,
        );
        assert_eq!(s.driver.transport_mut().interface(), Interface::Legacy);
        let device = s.device.clone();
        let negotiated = device.borrow().device().negotiated();
        let rings = |q: u16| {
            let c = device.borrow().queue_config(q).unwrap();
            let ring = LegacyRing::at(memory(), c.descriptors.raw());
            assert_eq!(c.driver_area.raw(), ring.avail, "legacy avail placement");
            assert_eq!(c.device_area.raw(), ring.used, "legacy used placement");
            c.descriptors.raw()
        };
        let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
        let what = format!("pci {variant:?} mrg={mrg}");
        legacy_traffic(&mut s.driver, negotiated, rings, &mut peer, rx, mrg, &what);
        assert_eq!(device.borrow().device().counters().total_drops(), 0);
    }
}

#[test]
fn pci_transitional_legacy_interface_headers_are_legacy_and_traffic_intact() {
    pci_legacy(PciVariant::Transitional, Some(Interface::Legacy));
}

#[test]
fn pci_legacy_only_headers_are_legacy_and_traffic_intact() {
    pci_legacy(PciVariant::Legacy, None);
}

#[test]
fn pci_transitional_modern_interface_headers_are_modern() {
    // The same transitional function driven through its modern interface: VERSION_1, 12-byte header always.
    let (end, mut peer) = link();
    let mut s = pci_with(
        builder(false),
        end,
        NetDriverConfig::new().queue_size(QUEUE_SIZE),
        PciVariant::Transitional,
        Some(Interface::Modern),
        None,
    );
    assert!(s.driver.features().contains(Features::VERSION_1));
    assert_eq!(s.driver.header_len(), HeaderLen::Modern);
    let f = frame(1514, 3);
    s.driver.send(0, &f, &HeaderRepr::new()).unwrap();
    assert_eq!(drain(&mut peer), vec![f.clone()]);
    inject(&mut peer, &f);
    s.device.borrow_mut().device_mut().process_rx(0).unwrap();
    assert_eq!(receive_all(&mut s.driver), vec![f]);
}

#[test]
fn pci_legacy_msix_config_offset_mac_reads_right() {
    // With MSI-X enabled the legacy device configuration moves from offset 20 to 24 (§4.1.4.10).
    for variant in [PciVariant::Legacy, PciVariant::Transitional] {
        let (end, mut peer) = link();
        let mut s = pci_with(
            builder(true),
            end,
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
            variant,
            Some(Interface::Legacy),
            Some(virtio_pci::InterruptMode::PerQueueVectors),
        );
        assert!(s.device.borrow().msix_enabled());
        assert_eq!(s.driver.mac().unwrap(), Some(MAC), "{variant:?}");
        assert!(s.driver.link_up().unwrap());
        let f = frame(600, 5);
        s.driver.send(0, &f, &HeaderRepr::new()).unwrap();
        assert_eq!(drain(&mut peer), vec![f.clone()]);
        inject(&mut peer, &f);
        s.device.borrow_mut().device_mut().process_rx(0).unwrap();
        assert_eq!(receive_all(&mut s.driver), vec![f]);
    }
}
