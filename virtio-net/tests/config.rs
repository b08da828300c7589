//! Configuration space: `mtu` (VIRTIO_NET_F_MTU) and `speed`/`duplex` (VIRTIO_NET_F_SPEED_DUPLEX) as the device
//! offers and presents them (virtio 1.3 §5.1.3, §5.1.4) and as our driver negotiates and reads them, over
//! virtio-mmio and virtio-pci; and the §5.1.4.1 promise that frames of up to `mtu` plus the Ethernet header cross
//! unfragmented in both directions.
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
use virtio_net::device::{NetDevice, NetDeviceBuilder};
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::wire::{
    config_offset, feature, status, ConfigRepr, HeaderRepr, DUPLEX_FULL, DUPLEX_HALF,
    DUPLEX_UNKNOWN, SPEED_UNKNOWN,
};

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
        b = b.mtu(mtu);
    }
    if let Some((speed, duplex)) = speed_duplex {
        b = b.speed_duplex(speed, duplex);
    }
    b
}

const MTUS: [Option<u16>; 4] = [None, Some(68), Some(9000), Some(u16::MAX)];
const SPEEDS: [Option<(u32, u8)>; 4] = [
    None,
    Some((25_000, DUPLEX_FULL)),
    Some((10, DUPLEX_HALF)),
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
        base().mtu(9000).speed_duplex(25_000, DUPLEX_FULL),
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
    // ...but a driver that did not negotiate them does not use them (§5.1.4.2): it parses the defaults.
    let config = s.driver.read_config().unwrap();
    let defaults = ConfigRepr::default();
    assert_eq!(
        (config.mtu, config.speed, config.duplex),
        (defaults.mtu, defaults.speed, defaults.duplex)
    );
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
    let offering = base().mtu(1500).speed_duplex(1000, DUPLEX_FULL);
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
    let mut net: NetDevice<_, Mem, NoIrq> = base().queue_size(16).mtu(1500).build(loopback(1));
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
            let mut b = base().mtu(mtu);
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
