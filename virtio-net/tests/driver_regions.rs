//! `NetDriver` setup options used by the VFIO driver: rings and buffers carved out of several disjoint regions
//! (`with_regions`, for IOVA-as-PA memory that is contiguous only in pieces), transmit slots without big buffers,
//! required features, and legacy queues sized by the device whatever size was asked for.
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
use virtio_core::{DeviceAddr, Features};
use virtio_mmio::{regs, MmioDevice, MmioRegisters, MmioTransport, MmioVersion};
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{DmaRegion, NetDriver, NetDriverConfig, TX_SMALL_SLOT};
use virtio_net::wire::{feature, HeaderRepr};
use virtio_net::NetError;
use virtio_pci::{Interface, PciVariant};

type Driver = NetDriver<MmioTransport<Recording>, Mem>;
/// Register writes: (offset, value).
type WriteLog = Rc<RefCell<Vec<(u64, u32)>>>;

/// The shared device's registers, recording the driver's writes (queue addresses are write-only registers).
struct Recording {
    device: MmioShared,
    writes: WriteLog,
}

impl MmioRegisters for Recording {
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
        self.writes.borrow_mut().push((offset as u64, value));
        self.device.write32(offset, value);
    }
}

/// A loopback device over virtio-mmio and a driver set up in `regions` with `config`; the log of register writes.
fn rig_logged(
    regions: &[DmaRegion],
    config: NetDriverConfig,
) -> (MmioShared, Result<Driver, NetError>, WriteLog) {
    let memory = memory();
    let line = Arc::new(Line::default());
    let net: MmioNet = NetDeviceBuilder::new()
        .queue_size(64)
        .offer(ring_features(false) | feature::MRG_RXBUF | feature::MAC)
        .build(loopback(1));
    let device = Rc::new(RefCell::new(
        MmioDevice::new(net, memory.clone(), line, MmioVersion::Modern).unwrap(),
    ));
    let writes = Rc::new(RefCell::new(Vec::new()));
    let recording = Recording {
        device: device.clone(),
        writes: writes.clone(),
    };
    let transport = MmioTransport::from_registers(recording, 0x200).unwrap();
    let driver = NetDriver::with_regions(transport, memory, regions, config, |_, _| Ok(()));
    (device, driver, writes)
}

fn rig(regions: &[DmaRegion], config: NetDriverConfig) -> (MmioShared, Result<Driver, NetError>) {
    let (device, driver, _) = rig_logged(regions, config);
    (device, driver)
}

/// Regions of 64 KiB pages with holes between them (every other page of the test memory), highest first.
fn scattered(count: u64, len: u64) -> Vec<DmaRegion> {
    (0..count)
        .rev()
        .map(|i| DmaRegion {
            base: DeviceAddr::new(MEM_BASE + 2 * i * len),
            len: len as usize,
        })
        .collect()
}

fn inside(regions: &[DmaRegion], addr: u64, len: u64) -> bool {
    regions
        .iter()
        .any(|r| addr >= r.base.raw() && addr + len <= r.base.raw() + r.len as u64)
}

#[test]
fn with_regions_scattered_pieces_carry_traffic() {
    let regions = scattered(16, 256 << 10);
    let config = NetDriverConfig::new()
        .queue_size(64)
        .tx_big_buffers(false)
        .supported(ring_features(false) | feature::MRG_RXBUF);
    let (device, driver, writes) = rig_logged(&regions, config);
    let mut driver = driver.unwrap();
    for seed in 0..200u8 {
        let f = frame(60 + usize::from(seed) * 7, seed);
        driver.send(0, &f, &HeaderRepr::new()).unwrap();
        assert_eq!(device.borrow_mut().device_mut().process_rx(0).unwrap(), 1);
        let got = receive_all(&mut driver);
        assert_eq!(got, vec![f], "frame {seed}");
    }
    // Every ring the driver gave the device lies inside one of the regions (the registers written per QUEUE_SEL).
    // Each queue's rings: collect per QUEUE_SEL.
    let mut per_queue: std::collections::HashMap<u32, Vec<(u64, u32)>> = Default::default();
    let mut sel = 0;
    for &(offset, value) in writes.borrow().iter() {
        if offset == regs::QUEUE_SEL {
            sel = value;
        } else {
            per_queue.entry(sel).or_default().push((offset, value));
        }
    }
    let mut queues = 0;
    for (q, w) in per_queue {
        let get = |o: u64| {
            w.iter()
                .rev()
                .find(|(off, _)| *off == o)
                .map(|(_, v)| u64::from(*v))
        };
        let Some(lo) = get(regs::QUEUE_DESC_LOW) else {
            continue;
        };
        queues += 1;
        let addr64 = |low: u64, high: u64| get(low).unwrap() | (get(high).unwrap() << 32);
        assert_eq!(
            lo,
            addr64(regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH) & 0xffff_ffff
        );
        for (addr, len) in [
            (addr64(regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH), 16 * 64),
            (
                addr64(regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH),
                6 + 2 * 64,
            ),
            (
                addr64(regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH),
                6 + 8 * 64,
            ),
        ] {
            assert!(
                inside(&regions, addr, len),
                "queue {q} area {addr:#x}+{len}"
            );
        }
    }
    assert_eq!(queues, 2);
}

#[test]
fn with_regions_piece_too_small_for_a_buffer_array_is_a_typed_error() {
    // 64 receive buffers of 2 KiB need 128 KiB in one piece; 16 KiB pieces cannot hold them.
    let regions = scattered(64, 16 << 10);
    let config = NetDriverConfig::new()
        .queue_size(64)
        .tx_big_buffers(false)
        .supported(ring_features(false) | feature::MRG_RXBUF);
    let (_, driver) = rig(&regions, config);
    assert!(matches!(driver, Err(NetError::DmaTooSmall { .. })));
}

#[test]
fn without_big_tx_buffers_frames_are_limited_to_a_small_slot() {
    let config = NetDriverConfig::new()
        .queue_size(64)
        .tx_big_buffers(false)
        .supported(ring_features(false) | feature::MRG_RXBUF);
    let (device, driver) = rig(&[region()], config);
    let mut driver = driver.unwrap();
    let max = TX_SMALL_SLOT as usize - driver.header_len().bytes();
    assert_eq!(driver.max_tx_frame(), max);
    let f = frame(max, 3);
    driver.send(0, &f, &HeaderRepr::new()).unwrap();
    assert_eq!(device.borrow_mut().device_mut().process_rx(0).unwrap(), 1);
    assert_eq!(receive_all(&mut driver), vec![f]);
    assert!(matches!(
        driver.send(0, &frame(max + 1, 4), &HeaderRepr::new()),
        Err(NetError::FrameTooLarge { len, max: m }) if len == max + 1 && m == max
    ));
    // A burst stops before the first frame that is too long.
    let ok = frame(100, 5);
    let big = frame(max + 1, 6);
    assert_eq!(
        driver
            .send_burst(0, &[&ok, &big, &ok], &HeaderRepr::new())
            .unwrap(),
        1
    );
}

#[test]
fn with_big_tx_buffers_max_frame_is_the_crate_maximum() {
    let (_, driver) = rig(&[region()], NetDriverConfig::new().queue_size(16));
    assert_eq!(driver.unwrap().max_tx_frame(), virtio_net::MAX_FRAME_LEN);
}

#[test]
fn required_feature_not_offered_fails_initialisation() {
    // Our device model does not offer ACCESS_PLATFORM.
    let config = NetDriverConfig::new()
        .queue_size(16)
        .required(Features::VERSION_1 | Features::ACCESS_PLATFORM);
    let (_, driver) = rig(&[region()], config);
    assert!(driver.is_err());
}

#[test]
fn required_feature_offered_is_negotiated_even_if_not_in_supported() {
    let config = NetDriverConfig::new()
        .queue_size(16)
        .supported(Features::VERSION_1)
        .required(Features::VERSION_1 | feature::MAC);
    let (_, driver) = rig(&[region()], config);
    let driver = driver.unwrap();
    assert!(driver.features().contains(feature::MAC));
}

#[test]
fn legacy_interface_queue_size_is_the_devices_whatever_was_asked() {
    // The legacy interface has no queue size register the driver may write (§4.1.5.1.3.1): asking for 8 entries of
    // a device whose queues have 64 must still work, with 64-entry rings.
    let s = pci_with(
        NetDeviceBuilder::new().queue_size(64),
        loopback(1),
        NetDriverConfig::new()
            .queue_size(8)
            .supported(feature::MRG_RXBUF),
        PciVariant::Transitional,
        Some(Interface::Legacy),
        None,
    );
    let mut driver = s.driver;
    assert!(!driver.features().contains(Features::VERSION_1));
    let f = frame(300, 9);
    driver.send(0, &f, &HeaderRepr::new()).unwrap();
    assert_eq!(s.device.borrow_mut().device_mut().process_rx(0).unwrap(), 1);
    assert_eq!(receive_all(&mut driver), vec![f]);
    assert_eq!(s.device.borrow().queue_config(0).unwrap().size, 64);
    assert_eq!(s.device.borrow().queue_config(1).unwrap().size, 64);
}
