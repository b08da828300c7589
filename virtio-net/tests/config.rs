//! Configuration space: `mtu` (VIRTIO_NET_F_MTU) and `speed`/`duplex` (VIRTIO_NET_F_SPEED_DUPLEX) as the device
//! offers and presents them (virtio 1.3 §5.1.3, §5.1.4) and as our driver negotiates and reads them, over
//! virtio-mmio and virtio-pci; the §5.1.4.1 promise that frames of up to `mtu` plus the Ethernet header cross
//! unfragmented in both directions, and the limit that holds beyond it once MTU is negotiated: the device drops
//! received frames longer than that which ask for no segmentation (§5.1.4.1), our driver refuses to send them
//! (§5.1.4.2), and GSO frames pass both ways; the builder refuses values §5.1.4 does not allow.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use common::*;
use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::mock::MockDriver;
use virtio_core::transport::Transport;
use virtio_core::{DeviceStatus, Features};
use virtio_mmio::{MmioDevice, MmioTransport, MmioVersion};
use virtio_net::backend::{NetBackend, SendStatus};
use virtio_net::device::{NetDevice, NetDeviceBuilder};
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::wire::{
    config_offset, feature, gso, status, ConfigRepr, HeaderLen, HeaderRepr, DUPLEX_FULL,
    DUPLEX_HALF, DUPLEX_UNKNOWN, SPEED_MAX, SPEED_UNKNOWN,
};
use virtio_net::{DropReason, NetError, MAX_FRAME_LEN};

/// Bytes of Ethernet header the MTU does not count (§5.1.4.1 "plus low level ethernet header length").
const ETH_HEADER: usize = 14;

fn base() -> NetDeviceBuilder {
    NetDeviceBuilder::new()
        .queue_size(64)
        .offer(ring_features(false))
}

/// `N` raw bytes of the device's configuration space at `offset`, read through the driver's transport.
fn raw<T: Transport, const N: usize>(driver: &mut NetDriver<T, Mem>, offset: usize) -> [u8; N] {
    let mut bytes = [0u8; N];
    driver
        .transport_mut()
        .read_config_consistent(offset, &mut bytes)
        .unwrap();
    bytes
}

/// What a driver that negotiated everything it supports sees, checked against what the builder was given: the
/// feature bits, the parsed configuration and the raw little-endian fields at their §5.1.4 offsets.
fn check_presented<T: Transport>(
    driver: &mut NetDriver<T, Mem>,
    negotiated: Features,
    config_len: usize,
    mtu: Option<u16>,
    speed_duplex: Option<(u32, u8)>,
) {
    let what = format!("mtu {mtu:?} speed/duplex {speed_duplex:?}");
    // Negotiated exactly when offered (our driver supports both).
    assert_eq!(
        driver.features().contains(feature::MTU),
        mtu.is_some(),
        "{what}"
    );
    assert_eq!(
        driver.features().contains(feature::SPEED_DUPLEX),
        speed_duplex.is_some(),
        "{what}"
    );
    assert_eq!(negotiated, driver.features(), "{what}");
    // The configuration ends with the last field that exists (§5.1.4: each field exists only if its feature is
    // offered).
    let expected_len = if speed_duplex.is_some() {
        config_offset::DUPLEX + 1
    } else if mtu.is_some() {
        config_offset::MTU + 2
    } else {
        config_offset::STATUS + 2
    };
    assert_eq!(config_len, expected_len, "{what}");

    let config = driver.read_config().unwrap();
    assert_eq!(config.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56], "{what}");
    assert_eq!(config.status, status::LINK_UP, "{what}");
    let defaults = ConfigRepr::default();
    assert_eq!(config.mtu, mtu.unwrap_or(defaults.mtu), "{what}");
    let (speed, duplex) = speed_duplex.unwrap_or((defaults.speed, defaults.duplex));
    assert_eq!((config.speed, config.duplex), (speed, duplex), "{what}");

    // The accessors: `None` where the feature was not negotiated or the device reports the value unknown.
    assert_eq!(driver.mtu(), mtu, "{what}");
    let known_speed = speed_duplex
        .map(|(speed, _)| speed)
        .filter(|speed| *speed != SPEED_UNKNOWN);
    let known_duplex = speed_duplex
        .map(|(_, duplex)| duplex)
        .filter(|duplex| *duplex != DUPLEX_UNKNOWN);
    assert_eq!(driver.speed().unwrap(), known_speed, "{what}");
    assert_eq!(driver.duplex().unwrap(), known_duplex, "{what}");

    // The same through raw reads, at the offsets and in the byte order of the specification, of the fields inside
    // the configuration (virtio-pci refuses reads past its end). With SPEED_DUPLEX but not MTU the `mtu` field lies
    // inside and reads as zero.
    if config_len >= config_offset::MTU + 2 {
        let raw_mtu: [u8; 2] = raw(driver, config_offset::MTU);
        assert_eq!(u16::from_le_bytes(raw_mtu), mtu.unwrap_or(0), "{what}");
    }
    if let Some((speed, duplex)) = speed_duplex {
        let raw_speed: [u8; 4] = raw(driver, config_offset::SPEED);
        let raw_duplex: [u8; 1] = raw(driver, config_offset::DUPLEX);
        assert_eq!(
            (u32::from_le_bytes(raw_speed), raw_duplex[0]),
            (speed, duplex),
            "{what}"
        );
    }
}

fn builder_for(mtu: Option<u16>, speed_duplex: Option<(u32, u8)>) -> NetDeviceBuilder {
    let mut b = base();
    if let Some(mtu) = mtu {
        b = b.mtu(mtu).unwrap();
    }
    if let Some((speed, duplex)) = speed_duplex {
        b = b.speed_duplex(speed, duplex).unwrap();
    }
    b
}

const MTUS: [Option<u16>; 4] = [None, Some(68), Some(9000), Some(u16::MAX)];
const SPEEDS: [Option<(u32, u8)>; 5] = [
    None,
    Some((25_000, DUPLEX_FULL)),
    Some((0, DUPLEX_HALF)),
    Some((SPEED_MAX, DUPLEX_UNKNOWN)),
    Some((SPEED_UNKNOWN, DUPLEX_UNKNOWN)),
];

#[test]
fn mtu_and_speed_duplex_offered_are_negotiated_and_read_over_mmio() {
    assert!(NetDriverConfig::all_features().contains(feature::MTU | feature::SPEED_DUPLEX));
    for mtu in MTUS {
        for speed_duplex in SPEEDS {
            let mut s = mmio(
                builder_for(mtu, speed_duplex),
                loopback(1),
                NetDriverConfig::new(),
            );
            let (negotiated, config_len) = {
                let dev = s.device.borrow();
                (dev.device().negotiated(), dev.device().config_len())
            };
            check_presented(&mut s.driver, negotiated, config_len, mtu, speed_duplex);
        }
    }
}

#[test]
fn mtu_and_speed_duplex_offered_are_negotiated_and_read_over_pci() {
    for mtu in MTUS {
        for speed_duplex in SPEEDS {
            let mut s = pci(
                builder_for(mtu, speed_duplex),
                loopback(1),
                NetDriverConfig::new(),
            );
            let (negotiated, config_len) = {
                let dev = s.device.borrow();
                (dev.device().negotiated(), dev.device().config_len())
            };
            check_presented(&mut s.driver, negotiated, config_len, mtu, speed_duplex);
        }
    }
}

#[test]
fn mtu_and_speed_duplex_declined_by_the_driver_are_not_negotiated_or_used() {
    let supported = NetDriverConfig::all_features() - feature::MTU - feature::SPEED_DUPLEX;
    let mut s = mmio(
        base()
            .mtu(9000)
            .unwrap()
            .speed_duplex(25_000, DUPLEX_FULL)
            .unwrap(),
        loopback(1),
        NetDriverConfig::new().supported(supported),
    );
    assert!(!s
        .driver
        .features()
        .intersects(feature::MTU | feature::SPEED_DUPLEX));
    assert!(!s
        .device
        .borrow()
        .device()
        .negotiated()
        .intersects(feature::MTU | feature::SPEED_DUPLEX));
    // The device still presents the fields (they exist because they are offered)...
    assert_eq!(
        u16::from_le_bytes(raw(&mut s.driver, config_offset::MTU)),
        9000
    );
    assert_eq!(
        u32::from_le_bytes(raw(&mut s.driver, config_offset::SPEED)),
        25_000
    );
    // ...but a driver that did not negotiate them does not use them (§5.1.4.2): it parses the defaults, its
    // accessors report nothing and it holds no frame to the MTU.
    let config = s.driver.read_config().unwrap();
    let defaults = ConfigRepr::default();
    assert_eq!(
        (config.mtu, config.speed, config.duplex),
        (defaults.mtu, defaults.speed, defaults.duplex)
    );
    assert_eq!(s.driver.mtu(), None);
    assert_eq!(s.driver.speed().unwrap(), None);
    assert_eq!(s.driver.duplex().unwrap(), None);
    assert_eq!(s.driver.max_tx_frame(), MAX_FRAME_LEN);
}

/// Runs §3.1.1 up to FEATURES_OK by hand with `features` and returns whether the device accepted them.
fn features_ok_with(builder: NetDeviceBuilder, features: Features) -> bool {
    let net: MmioNet = builder.build(loopback(1));
    let device: MmioShared = Rc::new(RefCell::new(
        MmioDevice::new(
            net,
            memory(),
            Arc::new(Line::default()),
            MmioVersion::Modern,
        )
        .unwrap(),
    ));
    let mut t = MmioTransport::from_registers(device, 0x200).unwrap();
    t.reset();
    t.write_status(DeviceStatus::ACKNOWLEDGE);
    t.write_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    t.write_driver_features(features);
    t.write_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    t.status().contains(DeviceStatus::FEATURES_OK)
}

#[test]
fn mtu_and_speed_duplex_never_offered_are_refused_at_features_ok() {
    let plain = base();
    assert!(!plain
        .build::<_, Mem, virtio_mmio::MmioInterrupt>(loopback(1))
        .offered_features()
        .intersects(feature::MTU | feature::SPEED_DUPLEX));
    // A driver that accepts only offered bits gets FEATURES_OK; one that also claims MTU or SPEED_DUPLEX does not.
    assert!(features_ok_with(plain, Features::VERSION_1));
    assert!(!features_ok_with(plain, Features::VERSION_1 | feature::MTU));
    assert!(!features_ok_with(
        plain,
        Features::VERSION_1 | feature::SPEED_DUPLEX
    ));
    // Offered: accepted.
    let offering = base()
        .mtu(1500)
        .unwrap()
        .speed_duplex(1000, DUPLEX_FULL)
        .unwrap();
    assert!(features_ok_with(
        offering,
        Features::VERSION_1 | feature::MTU | feature::SPEED_DUPLEX
    ));
}

/// An interrupt handle for activating a `NetDevice` directly.
#[derive(Debug, Clone, Default)]
struct NoIrq;

impl Interrupt for NoIrq {
    fn signal_queue(&self, _queue: u16) {}
    fn signal_config(&self) {}
}

#[test]
fn activation_with_mtu_never_offered_is_rejected_by_the_device() {
    // Past any transport's check: the device model itself refuses features it did not offer.
    let features = Features::VERSION_1 | feature::MTU;
    let rx = MockDriver::new(Features::VERSION_1, 16).unwrap();
    let queue =
        virtio_core::DeviceQueue::activate(&rx.queue_config(), Features::VERSION_1, rx.memory())
            .unwrap();
    let mut net: NetDevice<_, Mem, NoIrq> = base().queue_size(16).build(loopback(1));
    assert_eq!(
        net.activate(features, vec![ActiveQueue { index: 0, queue }], NoIrq),
        Err(virtio_core::Error::FeaturesRejected)
    );
    assert!(net.negotiated().is_empty());
    // The same device offering MTU accepts it.
    let queue =
        virtio_core::DeviceQueue::activate(&rx.queue_config(), Features::VERSION_1, rx.memory())
            .unwrap();
    let mut net: NetDevice<_, Mem, NoIrq> =
        base().queue_size(16).mtu(1500).unwrap().build(loopback(1));
    net.activate(features, vec![ActiveQueue { index: 0, queue }], NoIrq)
        .unwrap();
    assert_eq!(net.negotiated(), features);
}

#[test]
fn frames_of_mtu_plus_ethernet_header_cross_both_ways_unfragmented() {
    // §5.1.4.1: with MTU negotiated the device forwards transmitted frames of up to mtu + 14 bytes (gso_type NONE)
    // without fragmentation; §5.1.4.2: the driver posts receive buffers that hold one such frame.
    for mtu in [1500u16, 9000, u16::MAX] {
        for mrg in [false, true] {
            let mut b = base().mtu(mtu).unwrap();
            if mrg {
                b = b.offer(feature::MRG_RXBUF);
            }
            let (device_end, mut wire) = link();
            let mut s = mmio(b, device_end, NetDriverConfig::new());
            assert!(s.driver.features().contains(feature::MTU));
            assert_eq!(s.driver.read_config().unwrap().mtu, mtu);
            let len = usize::from(mtu) + ETH_HEADER;
            let out = frame(len, 1);
            s.driver.send(0, &out, &HeaderRepr::new()).unwrap();
            assert_eq!(drain(&mut wire), vec![out], "mtu {mtu} mrg {mrg}");
            let incoming = frame(len, 2);
            inject(&mut wire, &incoming);
            assert_eq!(s.device.borrow_mut().device_mut().process_rx(0).unwrap(), 1);
            assert_eq!(
                receive_all(&mut s.driver),
                vec![incoming],
                "mtu {mtu} mrg {mrg}"
            );
            let c = s.device.borrow().device().counters();
            assert_eq!((c.tx_frames, c.rx_frames, c.total_drops()), (1, 1, 0));
        }
    }
}

const RX_QUEUE: u16 = 0;

fn rx_over_mtu() -> Result<usize, NetError> {
    Err(NetError::Dropped {
        queue: RX_QUEUE,
        reason: DropReason::RxOverMtu,
    })
}

/// Puts `frame` on the wire towards the device behind a 12-byte backend header carrying `header`'s requests.
fn inject_with(peer: &mut PairEnd, header: &HeaderRepr, frame: &[u8]) {
    let bytes = header.to_bytes(HeaderLen::Modern);
    assert_eq!(
        peer.send(0, &[&bytes[..12], frame]).unwrap(),
        SendStatus::Sent
    );
}

/// Takes the frames the device put on the wire, each with the gso_type of its backend header.
fn drain_with_gso(peer: &mut PairEnd) -> Vec<(u8, Vec<u8>)> {
    let mut buf = vec![0u8; 12 + MAX_FRAME_LEN];
    let mut out = Vec::new();
    while let Some(n) = peer.recv(0, &mut buf).unwrap() {
        out.push((buf[1], buf[12..n].to_vec()));
    }
    out
}

/// Receives every frame waiting on pair 0 of `driver`, each with the gso_type of its header.
fn receive_with_gso<T: Transport>(driver: &mut NetDriver<T, Mem>) -> Vec<(u8, Vec<u8>)> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut out = Vec::new();
    while let Some((header, n)) = driver.receive(0, &mut buf).unwrap() {
        out.push((header.gso_type, buf[..n].to_vec()));
    }
    out
}

/// A header that asks for TCP segmentation (with checksum offload, which GSO needs).
fn tso_header(gso_type: u8) -> HeaderRepr {
    HeaderRepr::new()
        .with_checksum(34, 16)
        .with_gso(gso_type, 1448, 54)
}

#[test]
fn rx_frame_over_mtu_without_gso_is_dropped_before_using_a_buffer_and_mtu_plus_header_passes() {
    // §5.1.4.1: with MTU negotiated the device must not pass received frames longer than mtu + 14 with gso_type
    // NONE or ECN.
    for mtu in [68u16, 1500, u16::MAX] {
        for packed in [false, true] {
            for mrg in [false, true] {
                let case = format!("mtu {mtu} packed {packed} mrg {mrg}");
                let mut b = NetDeviceBuilder::new()
                    .queue_size(64)
                    .offer(ring_features(packed))
                    .mtu(mtu)
                    .unwrap();
                if mrg {
                    b = b.offer(feature::MRG_RXBUF);
                }
                let (device_end, mut wire) = link();
                let mut s = mmio(b, device_end, NetDriverConfig::new());
                assert!(s.driver.features().contains(feature::MTU), "{case}");
                let limit = usize::from(mtu) + ETH_HEADER;
                // One byte over, with gso_type NONE and with the ECN flag alone: dropped, no buffer used.
                inject(&mut wire, &frame(limit + 1, 1));
                inject_with(
                    &mut wire,
                    &HeaderRepr::new().with_gso(gso::ECN, 0, 0),
                    &frame(limit + 1, 2),
                );
                let r = s.device.borrow_mut().device_mut().process_rx(0);
                assert_eq!(r, rx_over_mtu(), "{case}");
                assert!(!s.driver.has_used(RX_QUEUE), "{case}");
                let c = s.device.borrow().device().counters();
                assert_eq!(c.drops(DropReason::RxOverMtu), 2, "{case}");
                assert_eq!((c.total_drops(), c.rx_frames), (2, 0), "{case}");
                // Exactly mtu + 14 between two frames one byte over: it alone reaches the driver, and the call
                // still reports the drop.
                inject(&mut wire, &frame(limit + 1, 3));
                inject(&mut wire, &frame(limit, 4));
                inject(&mut wire, &frame(limit + 1, 5));
                let r = s.device.borrow_mut().device_mut().process_rx(0);
                assert_eq!(r, rx_over_mtu(), "{case}");
                assert_eq!(receive_all(&mut s.driver), vec![frame(limit, 4)], "{case}");
                let c = s.device.borrow().device().counters();
                assert_eq!(c.drops(DropReason::RxOverMtu), 4, "{case}");
                assert_eq!((c.total_drops(), c.rx_frames), (4, 1), "{case}");
                // Frames keep flowing.
                inject(&mut wire, &frame(limit, 6));
                assert_eq!(
                    s.device.borrow_mut().device_mut().process_rx(0),
                    Ok(1),
                    "{case}"
                );
                assert_eq!(receive_all(&mut s.driver), vec![frame(limit, 6)], "{case}");
            }
        }
    }
}

#[test]
fn rx_frame_over_mtu_from_a_backend_without_headers_is_dropped() {
    // A backend without virtio-net headers gives frames the driver sees with gso_type NONE: the MTU holds them.
    let (device_end, mut wire) = PairEnd::pair(PairConfig::new().slots(64).vnet_header_len(0));
    let mut s = mmio(
        base().mtu(1500).unwrap(),
        device_end,
        NetDriverConfig::new(),
    );
    assert!(s.driver.features().contains(feature::MTU));
    for f in [frame(1515, 1), frame(1514, 2)] {
        assert_eq!(wire.send(0, &[&f]).unwrap(), SendStatus::Sent);
    }
    let r = s.device.borrow_mut().device_mut().process_rx(0);
    assert_eq!(r, rx_over_mtu());
    assert_eq!(receive_all(&mut s.driver), vec![frame(1514, 2)]);
    let c = s.device.borrow().device().counters();
    assert_eq!((c.drops(DropReason::RxOverMtu), c.total_drops()), (1, 1));
}

#[test]
fn rx_segmented_frames_over_mtu_pass_with_their_gso_header() {
    // The MTU limits frames that ask for no segmentation; a GSO frame (TCPv4, with or without ECN) goes through
    // up to MAX_FRAME_LEN.
    let b = base()
        .mtu(1500)
        .unwrap()
        .offer(feature::GUEST_CSUM | feature::GUEST_TSO4 | feature::GUEST_ECN);
    let (device_end, mut wire) = link();
    let mut s = mmio(b, device_end, NetDriverConfig::new());
    assert!(s
        .driver
        .features()
        .contains(feature::MTU | feature::GUEST_TSO4 | feature::GUEST_ECN));
    let sent = [
        (gso::TCPV4, frame(1515, 1)),
        (gso::TCPV4 | gso::ECN, frame(4000, 2)),
        (gso::TCPV4, frame(MAX_FRAME_LEN, 3)),
    ];
    for (gso_type, f) in &sent {
        inject_with(&mut wire, &tso_header(*gso_type), f);
    }
    assert_eq!(s.device.borrow_mut().device_mut().process_rx(0), Ok(3));
    assert_eq!(receive_with_gso(&mut s.driver), sent.to_vec());
    let c = s.device.borrow().device().counters();
    assert_eq!((c.rx_frames, c.total_drops()), (3, 0));
}

#[test]
fn rx_frames_over_the_mtu_pass_when_mtu_is_not_negotiated_and_renegotiation_moves_the_limit() {
    // The device offers MTU 1500; a driver that declines it (and then one that takes it, then one that declines it
    // again, on the same device) decides whether the limit applies. A device that never offers MTU has none.
    let declined = NetDriverConfig::new().supported(NetDriverConfig::all_features() - feature::MTU);
    let (device_end, mut wire) = link();
    let mut s = mmio(base().mtu(1500).unwrap(), device_end, declined);
    let memory = s.driver.memory().clone();
    for (round, config) in [declined, NetDriverConfig::new(), declined]
        .into_iter()
        .enumerate()
    {
        let case = format!("round {round}");
        if round > 0 {
            let transport = MmioTransport::from_registers(s.device.clone(), 0x200).unwrap();
            s.driver = NetDriver::new(transport, memory.clone(), region(), config).unwrap();
        }
        let mtu_negotiated = s
            .device
            .borrow()
            .device()
            .negotiated()
            .contains(feature::MTU);
        assert_eq!(mtu_negotiated, round == 1, "{case}");
        let drops = s
            .device
            .borrow()
            .device()
            .counters()
            .drops(DropReason::RxOverMtu);
        let over = [frame(1515, 1), frame(MAX_FRAME_LEN, 2)];
        for f in &over {
            inject(&mut wire, f);
        }
        let r = s.device.borrow_mut().device_mut().process_rx(0);
        let c = s.device.borrow().device().counters();
        if mtu_negotiated {
            assert_eq!(r, rx_over_mtu(), "{case}");
            assert!(receive_all(&mut s.driver).is_empty(), "{case}");
            assert_eq!(c.drops(DropReason::RxOverMtu), drops + 2, "{case}");
        } else {
            assert_eq!(r, Ok(2), "{case}");
            assert_eq!(receive_all(&mut s.driver), over.to_vec(), "{case}");
            assert_eq!(c.drops(DropReason::RxOverMtu), drops, "{case}");
        }
    }
    // Never offered.
    let (device_end, mut wire) = link();
    let mut s = mmio(base(), device_end, NetDriverConfig::new());
    inject(&mut wire, &frame(MAX_FRAME_LEN, 3));
    assert_eq!(s.device.borrow_mut().device_mut().process_rx(0), Ok(1));
    assert_eq!(receive_all(&mut s.driver), vec![frame(MAX_FRAME_LEN, 3)]);
}

#[test]
fn driver_refuses_plain_frames_over_mtu_and_sends_segmented_ones() {
    // §5.1.4.2: the driver must not transmit frames longer than mtu + 14 with gso_type NONE or ECN.
    for packed in [false, true] {
        let case = format!("packed {packed}");
        let b = NetDeviceBuilder::new()
            .queue_size(64)
            .offer(ring_features(packed))
            .mtu(1500)
            .unwrap()
            .offer(feature::CSUM | feature::HOST_TSO4 | feature::HOST_ECN);
        let (device_end, mut wire) = link();
        let mut s = mmio(b, device_end, NetDriverConfig::new());
        assert!(s
            .driver
            .features()
            .contains(feature::MTU | feature::HOST_TSO4 | feature::HOST_ECN));
        let plain = HeaderRepr::new();
        let ecn_alone = HeaderRepr::new().with_gso(gso::ECN, 0, 0);
        assert_eq!(s.driver.max_tx_frame(), 1514, "{case}");
        assert_eq!(s.driver.max_tx_frame_for(&plain), 1514, "{case}");
        assert_eq!(s.driver.max_tx_frame_for(&ecn_alone), 1514, "{case}");
        assert_eq!(
            s.driver.max_tx_frame_for(&tso_header(gso::TCPV4)),
            MAX_FRAME_LEN,
            "{case}"
        );
        let too_large = Err(NetError::FrameTooLarge {
            len: 1515,
            max: 1514,
        });
        for header in [&plain, &ecn_alone] {
            assert_eq!(
                s.driver.send(0, &frame(1515, 1), header),
                too_large,
                "{case}"
            );
            assert_eq!(
                s.driver.send_burst(0, &[&frame(1515, 1)], header),
                too_large.map(|()| 0),
                "{case}"
            );
        }
        // A burst stops at its first frame over the limit.
        let (ok, over) = (frame(1514, 2), frame(1515, 3));
        assert_eq!(
            s.driver.send_burst(0, &[&ok, &over, &ok], &plain),
            Ok(1),
            "{case}"
        );
        assert_eq!(drain_with_gso(&mut wire), vec![(gso::NONE, ok)], "{case}");
        // Segmented frames are limited by the buffers only.
        let (tso, tso_ecn) = (frame(1515, 4), frame(MAX_FRAME_LEN, 5));
        s.driver.send(0, &tso, &tso_header(gso::TCPV4)).unwrap();
        s.driver
            .send(0, &tso_ecn, &tso_header(gso::TCPV4 | gso::ECN))
            .unwrap();
        assert_eq!(
            drain_with_gso(&mut wire),
            vec![(gso::TCPV4, tso), (gso::TCPV4 | gso::ECN, tso_ecn)],
            "{case}"
        );
        let c = s.device.borrow().device().counters();
        assert_eq!((c.tx_frames, c.total_drops()), (3, 0), "{case}");
    }
}

#[test]
fn driver_tx_limit_is_the_smaller_of_mtu_plus_header_and_its_buffers() {
    // Without big transmit buffers a frame must fit a small slot with its 12-byte header.
    let small = 2048 - 12;
    for (mtu, plain_max) in [
        (None, small),
        (Some(1500), 1514),
        (Some(2022), small),
        (Some(2021), small - 1),
        (Some(9000), small),
    ] {
        let case = format!("mtu {mtu:?}");
        let mut b = base().offer(feature::CSUM | feature::HOST_TSO4);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu).unwrap();
        }
        let (device_end, mut wire) = link();
        let mut s = mmio(b, device_end, NetDriverConfig::new().tx_big_buffers(false));
        assert_eq!(s.driver.mtu(), mtu, "{case}");
        assert_eq!(s.driver.max_tx_frame(), plain_max, "{case}");
        assert_eq!(
            s.driver.max_tx_frame_for(&tso_header(gso::TCPV4)),
            small,
            "{case}"
        );
        assert_eq!(
            s.driver
                .send(0, &frame(plain_max + 1, 1), &HeaderRepr::new()),
            Err(NetError::FrameTooLarge {
                len: plain_max + 1,
                max: plain_max
            }),
            "{case}"
        );
        s.driver
            .send(0, &frame(plain_max, 2), &HeaderRepr::new())
            .unwrap();
        s.driver
            .send(0, &frame(small, 3), &tso_header(gso::TCPV4))
            .unwrap();
        assert_eq!(
            drain_with_gso(&mut wire),
            vec![
                (gso::NONE, frame(plain_max, 2)),
                (gso::TCPV4, frame(small, 3))
            ],
            "{case}"
        );
    }
}

#[test]
fn builder_refuses_mtu_below_68_and_speed_or_duplex_the_specification_does_not_define() {
    // §5.1.4.1: mtu between 68 and 65535.
    for mtu in [0u16, 1, 67] {
        assert_eq!(
            base().mtu(mtu).map(|_| ()),
            Err(NetError::InvalidArgument),
            "mtu {mtu}"
        );
    }
    for mtu in [68u16, 1500, u16::MAX] {
        let b = base().mtu(mtu).unwrap();
        let net: MmioNet = b.build(loopback(1));
        assert!(net.offered_features().contains(feature::MTU));
        assert_eq!(net.config().mtu, mtu);
    }
    // §5.1.4: speed 0 to 0x7fffffff or 0xffffffff (unknown); duplex 0 (half), 1 (full) or 0xff (unknown).
    for speed in [SPEED_MAX + 1, 0x8000_0001, SPEED_UNKNOWN - 1] {
        assert_eq!(
            base().speed_duplex(speed, DUPLEX_FULL).map(|_| ()),
            Err(NetError::InvalidArgument),
            "speed {speed:#x}"
        );
    }
    for duplex in [2u8, 0x7f, 0x80, 0xfe] {
        assert_eq!(
            base().speed_duplex(1000, duplex).map(|_| ()),
            Err(NetError::InvalidArgument),
            "duplex {duplex:#x}"
        );
    }
    for speed in [0, 10, SPEED_MAX, SPEED_UNKNOWN] {
        for duplex in [DUPLEX_HALF, DUPLEX_FULL, DUPLEX_UNKNOWN] {
            let net: MmioNet = base()
                .speed_duplex(speed, duplex)
                .unwrap()
                .build(loopback(1));
            assert!(net.offered_features().contains(feature::SPEED_DUPLEX));
            assert_eq!((net.config().speed, net.config().duplex), (speed, duplex));
        }
    }
}
