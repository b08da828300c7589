//! Legacy (pre-1.0) network devices driven by `NetDriver`: virtio-mmio version 1, virtio-pci transitional through
//! its legacy I/O BAR, and virtio-pci legacy-only. Full initialisation, traffic both ways with checked payloads, and
//! the header on the wire in its legacy form (§5.1.6.1 legacy interface: 10 bytes without MRG_RXBUF, 12 with it),
//! read from the split rings in guest memory as the device sees them.
//!
//! Message framing (§5.1.6.7, §2.7.4.3): with VIRTIO_F_ANY_LAYOUT negotiated the header shares the frame's
//! descriptor; a legacy device that does not offer it gets the header in a descriptor of its own on both queues and
//! control requests cut into class/command, data and ack descriptors. A modern (VERSION_1) negotiation never takes
//! the bit and keeps the one-descriptor layout.
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
use virtio_core::{DeviceAddr, DeviceSlice, Features, QueueConfig};
use virtio_mmio::{regs, MmioVersion};
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig, TX_SMALL_SLOT};
use virtio_net::pair::PairEnd;
use virtio_net::wire::{
    feature, gso, hdr_flags, CtrlCommand, HeaderLen, HeaderRepr, MacTable, RxMode,
};
use virtio_net::MAX_FRAME_LEN;
use virtio_pci::{Interface, PciVariant};

const QUEUE_SIZE: u16 = 16;
const PAGE: u64 = 4096;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// Descriptor flags (§2.7.5).
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// One descriptor as the device reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split ring in guest memory, read as the device reads it.
struct SplitRing {
    mem: Mem,
    desc: u64,
    avail: u64,
    used: u64,
}

impl SplitRing {
    /// The legacy layout (§2.7.2 legacy interface: descriptors, available ring, used ring on the next 4096
    /// boundary) from the ring's base.
    fn legacy(mem: Mem, base: u64) -> Self {
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

    /// A modern ring's areas as the driver programmed them.
    fn modern(mem: Mem, config: &QueueConfig) -> Self {
        assert_eq!(config.size, QUEUE_SIZE);
        Self {
            mem,
            desc: config.descriptors.raw(),
            avail: config.driver_area.raw(),
            used: config.device_area.raw(),
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

    fn descriptor(&self, i: u16) -> Desc {
        let b = self.bytes(self.desc + 16 * u64::from(i), 16);
        Desc {
            addr: u64::from_le_bytes(b[..8].try_into().unwrap()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
            next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
        }
    }

    /// The chain starting at descriptor `head`.
    fn chain(&self, head: u16) -> Vec<Desc> {
        let mut out = vec![self.descriptor(head)];
        while out.last().unwrap().flags & NEXT != 0 {
            assert!(out.len() < usize::from(QUEUE_SIZE), "chain loops");
            out.push(self.descriptor(out.last().unwrap().next));
        }
        out
    }

    /// The first `len` bytes of `chain`, across its descriptors.
    fn gather(&self, chain: &[Desc], len: usize) -> Vec<u8> {
        let mut out: Vec<u8> = chain
            .iter()
            .flat_map(|d| self.bytes(d.addr, d.len as usize))
            .collect();
        assert!(
            out.len() >= len,
            "chain of {} bytes, {len} wanted",
            out.len()
        );
        out.truncate(len);
        out
    }

    /// `avail.idx`: chains made available so far.
    fn avail_idx(&self) -> u16 {
        self.u16_at(self.avail + 2)
    }

    /// The head made available as chain number `idx`.
    fn avail_head(&self, idx: u16) -> u16 {
        self.u16_at(self.avail + 4 + 2 * u64::from(idx % QUEUE_SIZE))
    }

    /// `used.idx`: chains the device returned so far.
    fn used_idx(&self) -> u16 {
        self.u16_at(self.used + 2)
    }

    /// Used element number `idx`: id, len.
    fn used_elem(&self, idx: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(idx % QUEUE_SIZE);
        (self.u32_at(at), self.u32_at(at + 4))
    }
}

/// Lengths and flags of `chain`'s descriptors.
fn layout(chain: &[Desc]) -> Vec<(u32, u16)> {
    chain.iter().map(|d| (d.len, d.flags)).collect()
}

/// The descriptors the driver must use for a TX chain of an `hl`-byte header and a `len`-byte frame: one for both
/// with ANY_LAYOUT, else the header alone and the frame in the next (an empty frame: the header alone).
fn tx_layout(hl: u32, len: u32, any_layout: bool) -> Vec<(u32, u16)> {
    match (any_layout, len) {
        (true, _) => vec![(hl + len, 0)],
        (false, 0) => vec![(hl, 0)],
        (false, _) => vec![(hl, NEXT), (len, 0)],
    }
}

/// Checks a posted RX chain: one device-writable descriptor with ANY_LAYOUT; else the `hl`-byte header alone, the
/// rest of the buffer in the next descriptor, adjacent in memory. Returns the buffer's length.
fn check_rx_chain(chain: &[Desc], hl: u32, any_layout: bool, what: &str) -> u32 {
    if any_layout {
        assert_eq!(chain.len(), 1, "{what}: one RX descriptor");
        assert_eq!(chain[0].flags, WRITE, "{what}");
    } else {
        assert_eq!(chain.len(), 2, "{what}: header alone, then the data");
        assert_eq!((chain[0].len, chain[0].flags), (hl, WRITE | NEXT), "{what}");
        assert_eq!(chain[1].flags, WRITE, "{what}");
        assert_eq!(chain[1].addr, chain[0].addr + u64::from(hl), "{what}");
    }
    chain.iter().map(|d| d.len).sum()
}

fn builder(mrg: bool, any_layout: bool) -> NetDeviceBuilder {
    let mut b = NetDeviceBuilder::new()
        .queue_size(QUEUE_SIZE)
        .offer(feature::CSUM | feature::GUEST_CSUM | feature::HOST_TSO4 | feature::GUEST_TSO4);
    if mrg {
        b = b.offer(feature::MRG_RXBUF);
    }
    if !any_layout {
        b = b.without(Features::ANY_LAYOUT);
    }
    b
}

fn tso_header() -> HeaderRepr {
    HeaderRepr::new()
        .with_checksum(34, 16)
        .with_gso(gso::TCPV4, 1448, 54)
}

/// Init, config, TX and RX over a legacy device; `rings(queue)` gives the base of a queue's legacy ring.
/// `any_layout`: whether the device offers (and so the driver takes) VIRTIO_F_ANY_LAYOUT.
#[allow(clippy::too_many_arguments)]
fn legacy_traffic<T: Transport>(
    driver: &mut NetDriver<T, Mem>,
    device_features: Features,
    rings: impl Fn(u16) -> u64,
    peer: &mut PairEnd,
    process_rx: impl Fn() -> usize,
    mrg: bool,
    any_layout: bool,
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
    assert_eq!(
        features.contains(Features::ANY_LAYOUT),
        any_layout,
        "{what}: ANY_LAYOUT taken when offered"
    );
    assert_eq!(device_features, features, "{what}: both sides agree");
    assert_eq!(driver.header_len().bytes(), hl, "{what}");
    assert_eq!(
        driver.mac().unwrap(),
        Some(MAC),
        "{what}: legacy config read"
    );
    assert!(driver.link_up().unwrap(), "{what}");

    // TX: what the device reads is a `hl`-byte header and the frame: in one device-readable descriptor with
    // ANY_LAYOUT, else the header alone and the frame in the next.
    let tx_ring = SplitRing::legacy(driver.memory().clone(), rings(1));
    for (i, len) in [60usize, 1514, 9000].into_iter().enumerate() {
        let f = frame(len, i as u8);
        driver.send(0, &f, &tso_header()).unwrap();
        let chain = tx_ring.chain(tx_ring.avail_head(tx_ring.avail_idx().wrapping_sub(1)));
        assert_eq!(
            layout(&chain),
            tx_layout(hl as u32, len as u32, any_layout),
            "{what}: TX descriptors of a {len}-byte frame"
        );
        let bytes = tx_ring.gather(&chain, hl + len);
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

    // Bursts of every size class (empty, small slot edges, big buffers) over several laps of the ring: every chain
    // made available has the layout, every frame arrives intact.
    let small_max = TX_SMALL_SLOT as usize - hl;
    let sizes = [
        0,
        1,
        60,
        small_max,
        small_max + 1,
        1514,
        9000,
        MAX_FRAME_LEN,
    ];
    for lap in 0..4 {
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .cycle()
            .skip(lap)
            .take(sizes.len())
            .enumerate()
            .map(|(i, &len)| frame(len, (lap * 16 + i) as u8))
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let before = tx_ring.avail_idx();
        let sent = driver.send_burst(0, &refs, &HeaderRepr::new()).unwrap();
        assert_eq!(
            sent,
            frames.len(),
            "{what}: the ring holds a burst of {}",
            frames.len()
        );
        assert_eq!(tx_ring.avail_idx().wrapping_sub(before) as usize, sent);
        for (k, f) in frames.iter().enumerate() {
            let chain = tx_ring.chain(tx_ring.avail_head(before.wrapping_add(k as u16)));
            assert_eq!(
                layout(&chain),
                tx_layout(hl as u32, f.len() as u32, any_layout),
                "{what}: lap {lap}, frame {k} ({} bytes)",
                f.len()
            );
            let bytes = tx_ring.gather(&chain, hl + f.len());
            assert!(bytes[..hl].iter().all(|b| *b == 0), "{what}: plain header");
            assert_eq!(&bytes[hl..], &f[..], "{what}: lap {lap}, frame {k}");
        }
        assert_eq!(drain(peer), frames, "{what}: lap {lap} on the wire");
    }

    // RX: the device writes a `hl`-byte header and the frame; the used length counts both. Each chain takes two
    // descriptors without ANY_LAYOUT, so half the ring's size is posted.
    let rx_ring = SplitRing::legacy(driver.memory().clone(), rings(0));
    let per_chain = if any_layout { 1 } else { 2 };
    assert_eq!(
        rx_ring.avail_idx(),
        QUEUE_SIZE / per_chain,
        "{what}: RX buffers posted"
    );
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    for (i, len) in [60usize, 1514, 1800].into_iter().enumerate() {
        let f = frame(len, 0x40 + i as u8);
        let header = tso_header().to_bytes(HeaderLen::Modern);
        use virtio_net::backend::NetBackend;
        peer.send(0, &[&header[..12], &f]).unwrap();
        assert_eq!(process_rx(), 1, "{what}");
        let (id, used_len) = rx_ring.used_elem(rx_ring.used_idx().wrapping_sub(1));
        assert_eq!(used_len as usize, hl + len, "{what}: RX used length");
        let chain = rx_ring.chain(id as u16);
        let buffer = check_rx_chain(&chain, hl as u32, any_layout, what);
        assert!(
            buffer as usize >= hl + 1514 || mrg,
            "{what}: big-packet buffer"
        );
        let bytes = rx_ring.gather(&chain, hl + len);
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
    // A frame spanning several mergeable buffers (or one big-packet buffer): each buffer's chain has the layout,
    // only the first holds the header.
    let big = frame(9000, 0x77);
    let used_before = rx_ring.used_idx();
    inject(peer, &big);
    assert_eq!(process_rx(), 1, "{what}");
    let buffers = if mrg {
        (9000 + 12u16).div_ceil(2048)
    } else {
        1
    };
    assert_eq!(
        rx_ring.used_idx().wrapping_sub(used_before),
        buffers,
        "{what}"
    );
    for k in 0..buffers {
        let (id, used_len) = rx_ring.used_elem(used_before.wrapping_add(k));
        let buffer = check_rx_chain(&rx_ring.chain(id as u16), hl as u32, any_layout, what);
        if k + 1 < buffers {
            assert_eq!(used_len, buffer, "{what}: mergeable buffers filled up");
        }
    }
    let (got, n) = driver.receive(0, &mut buf).unwrap().expect("frame");
    assert_eq!(&buf[..n], &big[..], "{what}");
    assert_eq!(got.num_buffers, if mrg { buffers } else { 0 }, "{what}");
    assert!(driver.receive(0, &mut buf).unwrap().is_none(), "{what}");
}

#[test]
fn mmio_v1_legacy_net_headers_are_legacy_and_traffic_intact() {
    for any_layout in [true, false] {
        for mrg in [false, true] {
            let (end, mut peer) = link();
            let mut s = mmio_version(
                builder(mrg, any_layout),
                end,
                NetDriverConfig::new().queue_size(QUEUE_SIZE),
                MmioVersion::Legacy,
            );
            assert_eq!(s.driver.transport_mut().version(), MmioVersion::Legacy);
            let device = s.device.clone();
            let negotiated = device.borrow().device().negotiated();
            let rings = |q: u16| mmio_legacy_ring(&device, q);
            let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
            let what = format!("mmio v1 mrg={mrg} any_layout={any_layout}");
            legacy_traffic(
                &mut s.driver,
                negotiated,
                rings,
                &mut peer,
                rx,
                mrg,
                any_layout,
                &what,
            );
            assert_eq!(device.borrow().device().counters().total_drops(), 0);
        }
    }
}

/// The base of queue `q`'s legacy ring on an mmio v1 device (QueuePFN, in 4096-byte pages).
fn mmio_legacy_ring(device: &MmioShared, q: u16) -> u64 {
    let mut d = device.borrow_mut();
    d.write32(regs::QUEUE_SEL, u32::from(q)).unwrap();
    u64::from(d.read32(regs::QUEUE_PFN).unwrap()) * PAGE
}

/// The base of queue `q`'s legacy ring on a PCI device driven through its legacy interface.
fn pci_legacy_ring(device: &PciShared, q: u16) -> u64 {
    let c = device.borrow().queue_config(q).unwrap();
    let ring = SplitRing::legacy(memory(), c.descriptors.raw());
    assert_eq!(c.driver_area.raw(), ring.avail, "legacy avail placement");
    assert_eq!(c.device_area.raw(), ring.used, "legacy used placement");
    c.descriptors.raw()
}

fn pci_legacy(variant: PciVariant, interface: Option<Interface>) {
    for any_layout in [true, false] {
        for mrg in [false, true] {
            let (end, mut peer) = link();
            let mut s = pci_with(
                builder(mrg, any_layout),
                end,
                NetDriverConfig::new().queue_size(QUEUE_SIZE),
                variant,
                interface,
                None,
            );
            assert_eq!(s.driver.transport_mut().interface(), Interface::Legacy);
            let device = s.device.clone();
            let negotiated = device.borrow().device().negotiated();
            let rings = |q: u16| pci_legacy_ring(&device, q);
            let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
            let what = format!("pci {variant:?} mrg={mrg} any_layout={any_layout}");
            legacy_traffic(
                &mut s.driver,
                negotiated,
                rings,
                &mut peer,
                rx,
                mrg,
                any_layout,
                &what,
            );
            assert_eq!(device.borrow().device().counters().total_drops(), 0);
        }
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
        builder(false, true),
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
fn modern_negotiation_never_takes_any_layout_and_keeps_header_and_frame_together() {
    // ANY_LAYOUT is a legacy-interface bit (§2.7.4.3): whether the device offers it or not, a VERSION_1 negotiation
    // leaves it out on both sides and every chain keeps the header and the frame in one descriptor.
    for offer_any_layout in [true, false] {
        for variant in [PciVariant::Transitional, PciVariant::Modern] {
            for mrg in [false, true] {
                let what = format!("{variant:?} offer_any_layout={offer_any_layout} mrg={mrg}");
                let (end, mut peer) = link();
                let mut s = pci_with(
                    builder(mrg, offer_any_layout),
                    end,
                    NetDriverConfig::new().queue_size(QUEUE_SIZE),
                    variant,
                    Some(Interface::Modern),
                    None,
                );
                let offered = s.driver.transport_mut().device_features();
                assert!(offered.contains(Features::VERSION_1), "{what}");
                assert_eq!(
                    offered.contains(Features::ANY_LAYOUT),
                    offer_any_layout,
                    "{what}: the device's offer"
                );
                let features = s.driver.features();
                assert!(features.contains(Features::VERSION_1), "{what}");
                assert!(
                    !features.contains(Features::ANY_LAYOUT),
                    "{what}: not acked"
                );
                assert_eq!(
                    s.device.borrow().device().negotiated(),
                    features,
                    "{what}: the device agrees"
                );
                assert_eq!(s.driver.header_len(), HeaderLen::Modern, "{what}");

                let mem = memory_of(&s.driver);
                let ring = |q: u16| {
                    SplitRing::modern(mem.clone(), &s.device.borrow().queue_config(q).unwrap())
                };
                let (rx_ring, tx_ring) = (ring(0), ring(1));
                // Every receive buffer posted, one descriptor each.
                assert_eq!(rx_ring.avail_idx(), QUEUE_SIZE, "{what}");
                for k in 0..QUEUE_SIZE {
                    check_rx_chain(&rx_ring.chain(rx_ring.avail_head(k)), 12, true, &what);
                }
                let frames: Vec<Vec<u8>> = [0usize, 60, 1514, 9000]
                    .iter()
                    .map(|&len| frame(len, len as u8))
                    .collect();
                let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
                let before = tx_ring.avail_idx();
                assert_eq!(
                    s.driver.send_burst(0, &refs, &HeaderRepr::new()).unwrap(),
                    frames.len()
                );
                for (k, f) in frames.iter().enumerate() {
                    let chain = tx_ring.chain(tx_ring.avail_head(before.wrapping_add(k as u16)));
                    assert_eq!(
                        layout(&chain),
                        tx_layout(12, f.len() as u32, true),
                        "{what}: TX frame {k}"
                    );
                    assert_eq!(&tx_ring.gather(&chain, 12 + f.len())[12..], &f[..]);
                }
                assert_eq!(drain(&mut peer), frames, "{what}");
                for f in &frames[1..] {
                    inject(&mut peer, f);
                }
                s.device.borrow_mut().device_mut().process_rx(0).unwrap();
                assert_eq!(receive_all(&mut s.driver), frames[1..].to_vec(), "{what}");
                assert_eq!(s.device.borrow().device().counters().total_drops(), 0);
            }
        }
    }
}

#[test]
fn mmio_modern_negotiation_never_takes_any_layout() {
    let (end, mut peer) = link();
    let mut s = mmio_version(
        builder(true, true),
        end,
        NetDriverConfig::new().queue_size(QUEUE_SIZE),
        MmioVersion::Modern,
    );
    assert!(s
        .driver
        .transport_mut()
        .device_features()
        .contains(Features::VERSION_1 | Features::ANY_LAYOUT));
    let features = s.driver.features();
    assert!(features.contains(Features::VERSION_1));
    assert!(!features.contains(Features::ANY_LAYOUT));
    assert_eq!(s.device.borrow().device().negotiated(), features);
    let f = frame(1514, 9);
    s.driver.send(0, &f, &HeaderRepr::new()).unwrap();
    assert_eq!(drain(&mut peer), vec![f.clone()]);
    inject(&mut peer, &f);
    s.device.borrow_mut().device_mut().process_rx(0).unwrap();
    assert_eq!(receive_all(&mut s.driver), vec![f]);
}

/// Runs control commands over a legacy device and checks each request's descriptors: with ANY_LAYOUT the request in
/// one readable descriptor; without, class and command alone, the data in one descriptor (MAC_TABLE_SET: one per
/// table), and in every case the ack alone in a writable byte. The device must have applied each command.
fn legacy_ctrl<T: Transport>(
    driver: &mut NetDriver<T, Mem>,
    ctrl_ring: &SplitRing,
    any_layout: bool,
    mut device_check: impl FnMut(&str),
    what: &str,
) {
    assert_eq!(driver.features().contains(Features::ANY_LAYOUT), any_layout);
    let uni = [[0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]].concat();
    let multi = [0x01, 0, 0x5e, 0, 0, 1];
    let cases: [(&str, CtrlCommand<'_>, &[u32]); 5] = [
        (
            "promisc on",
            CtrlCommand::RxMode {
                mode: RxMode::Promisc,
                on: true,
            },
            &[2, 1],
        ),
        (
            "mac tables 2+1",
            CtrlCommand::MacTableSet {
                unicast: MacTable::new(&uni).unwrap(),
                multicast: MacTable::new(&multi).unwrap(),
            },
            &[2, 4 + 12, 4 + 6],
        ),
        (
            "mac tables 0+1",
            CtrlCommand::MacTableSet {
                unicast: MacTable::new(&[]).unwrap(),
                multicast: MacTable::new(&multi).unwrap(),
            },
            &[2, 4, 4 + 6],
        ),
        ("vlan add", CtrlCommand::VlanAdd(5), &[2, 2]),
        ("mac addr", CtrlCommand::MacAddrSet(MAC), &[2, 6]),
    ];
    for (name, command, pieces) in cases {
        driver.command(&command).unwrap();
        let chain = ctrl_ring.chain(ctrl_ring.avail_head(ctrl_ring.avail_idx().wrapping_sub(1)));
        let request_len: u32 = pieces.iter().sum();
        let mut want: Vec<(u32, u16)> = if any_layout {
            vec![(request_len, NEXT)]
        } else {
            pieces.iter().map(|&len| (len, NEXT)).collect()
        };
        want.push((1, WRITE));
        assert_eq!(layout(&chain), want, "{what}: {name}");
        let mut request = vec![0u8; request_len as usize];
        command.emit(&mut request).unwrap();
        let readable = &chain[..chain.len() - 1];
        assert_eq!(
            ctrl_ring.gather(readable, request.len()),
            request,
            "{what}: {name}"
        );
        device_check(name);
    }
}

#[test]
fn legacy_ctrl_requests_are_framed_per_any_layout() {
    for any_layout in [true, false] {
        let ctrl = feature::CTRL_RX | feature::CTRL_VLAN | feature::CTRL_MAC_ADDR;
        let (end, _peer) = link();
        let mut s = mmio_version(
            builder(false, any_layout).ctrl(ctrl),
            end,
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
            MmioVersion::Legacy,
        );
        let device = s.device.clone();
        let ctrl_ring = SplitRing::legacy(memory_of(&s.driver), mmio_legacy_ring(&device, 2));
        let check = |name: &str| check_ctrl_applied(device.borrow().device(), name);
        let what = format!("mmio v1 any_layout={any_layout}");
        legacy_ctrl(&mut s.driver, &ctrl_ring, any_layout, check, &what);

        let (end, _peer) = link();
        let mut s = pci_with(
            builder(true, any_layout).ctrl(ctrl),
            end,
            NetDriverConfig::new().queue_size(QUEUE_SIZE),
            PciVariant::Legacy,
            None,
            None,
        );
        let device = s.device.clone();
        let ctrl_ring = SplitRing::legacy(memory_of(&s.driver), pci_legacy_ring(&device, 2));
        let check = |name: &str| check_ctrl_applied(device.borrow().device(), name);
        let what = format!("pci legacy any_layout={any_layout}");
        legacy_ctrl(&mut s.driver, &ctrl_ring, any_layout, check, &what);
    }
}

fn memory_of<T: Transport>(driver: &NetDriver<T, Mem>) -> Mem {
    driver.memory().clone()
}

/// The device state after the named command of [`legacy_ctrl`].
fn check_ctrl_applied<I: virtio_core::device::Interrupt>(
    device: &virtio_net::device::NetDevice<PairEnd, Mem, I>,
    name: &str,
) {
    let uni: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]];
    let multi: [[u8; 6]; 1] = [[0x01, 0, 0x5e, 0, 0, 1]];
    match name {
        "promisc on" => assert!(device.rx_mode(RxMode::Promisc), "{name}"),
        "mac tables 2+1" => assert_eq!(device.mac_tables(), (&uni[..], &multi[..]), "{name}"),
        "mac tables 0+1" => assert_eq!(device.mac_tables(), (&[][..], &multi[..]), "{name}"),
        "vlan add" => assert!(device.vlan_allowed(5), "{name}"),
        "mac addr" => assert_eq!(device.config().mac, MAC, "{name}"),
        _ => panic!("unknown command {name}"),
    }
    assert_eq!(device.counters().total_drops(), 0, "{name}");
}

#[test]
fn pci_legacy_msix_config_offset_mac_reads_right() {
    // With MSI-X enabled the legacy device configuration moves from offset 20 to 24 (§4.1.4.10).
    for variant in [PciVariant::Legacy, PciVariant::Transitional] {
        let (end, mut peer) = link();
        let mut s = pci_with(
            builder(true, true),
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
