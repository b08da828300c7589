//! Shared harness: our `NetDriver` driving our `NetDevice` in-process over virtio-mmio or virtio-pci, with the
//! device's backend an in-memory `PairEnd` (loopback, or one end of a pair).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_core::{DeviceAddr, Features, HeapMemory};
use virtio_mmio::{IrqLine, MmioDevice, MmioInterrupt, MmioTransport, MmioVersion};
use virtio_net::device::{NetDevice, NetDeviceBuilder};
use virtio_net::driver::{DmaRegion, NetDriver, NetDriverConfig};
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_pci::mock::{RecordingIntx, RecordingMsi};
use virtio_pci::{
    InterruptSinks, LocalAccess, PciDevice, PciInterrupt, PciOptions, PciTransport, PciVariant,
};

pub const MEM_BASE: u64 = 0x10_0000;
pub const MEM_LEN: usize = 48 << 20;

pub type Mem = Arc<HeapMemory>;
pub type MmioNet = NetDevice<PairEnd, Mem, MmioInterrupt>;
pub type PciNet = NetDevice<PairEnd, Mem, PciInterrupt>;
pub type MmioShared = Rc<RefCell<MmioDevice<MmioNet>>>;
pub type PciShared = Rc<RefCell<PciDevice<PciNet>>>;

#[derive(Debug, Default)]
pub struct Line(pub AtomicU32);

impl IrqLine for Line {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn memory() -> Mem {
    Arc::new(HeapMemory::new(DeviceAddr::new(MEM_BASE), MEM_LEN).unwrap())
}

pub fn region() -> DmaRegion {
    DmaRegion {
        base: DeviceAddr::new(MEM_BASE),
        len: MEM_LEN,
    }
}

pub fn ring_features(packed: bool) -> Features {
    let mut f = Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC;
    if packed {
        f |= Features::RING_PACKED;
    }
    f
}

pub struct MmioSetup {
    pub device: MmioShared,
    pub driver: NetDriver<MmioTransport<MmioShared>, Mem>,
    pub line: Arc<Line>,
}

pub fn mmio(builder: NetDeviceBuilder, backend: PairEnd, config: NetDriverConfig) -> MmioSetup {
    let memory = memory();
    let line = Arc::new(Line::default());
    let net: MmioNet = builder.build(backend);
    let device = Rc::new(RefCell::new(
        MmioDevice::new(net, memory.clone(), line.clone(), MmioVersion::Modern).unwrap(),
    ));
    let transport = MmioTransport::from_registers(device.clone(), 0x200).unwrap();
    let driver = NetDriver::new(transport, memory, region(), config).unwrap();
    MmioSetup {
        device,
        driver,
        line,
    }
}

pub struct PciSetup {
    pub device: PciShared,
    pub driver: NetDriver<PciTransport<LocalAccess<PciNet>>, Mem>,
    pub msi: RecordingMsi,
}

pub fn pci(builder: NetDeviceBuilder, backend: PairEnd, config: NetDriverConfig) -> PciSetup {
    let memory = memory();
    let msi = RecordingMsi::new();
    let intx = RecordingIntx::new();
    let net: PciNet = builder.build(backend);
    let config_len = net.config_len();
    let device = Rc::new(RefCell::new(
        PciDevice::new(
            net,
            memory.clone(),
            PciOptions::new(PciVariant::Modern).config_len(config_len),
            InterruptSinks::new().msi(msi.clone()).intx(intx),
        )
        .unwrap(),
    ));
    let transport = PciTransport::new(LocalAccess::new(device.clone())).unwrap();
    let driver = NetDriver::new(transport, memory, region(), config).unwrap();
    PciSetup {
        device,
        driver,
        msi,
    }
}

pub fn loopback(pairs: u16) -> PairEnd {
    PairEnd::loopback(PairConfig::new().queue_pairs(pairs).slots(64))
}

/// A frame of `len` bytes: broadcast destination, a pattern after it.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    for b in f.iter_mut().take(6) {
        *b = 0xff;
    }
    f
}
