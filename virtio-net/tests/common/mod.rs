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
    Interface, InterruptMode, InterruptSinks, LocalAccess, PciDevice, PciInterrupt, PciOptions,
    PciTransport, PciVariant,
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
    mmio_version(builder, backend, config, MmioVersion::Modern)
}

/// As [`mmio`], presenting register interface `version` (1 is the legacy, pre-1.0 interface).
pub fn mmio_version(
    builder: NetDeviceBuilder,
    backend: PairEnd,
    config: NetDriverConfig,
    version: MmioVersion,
) -> MmioSetup {
    let memory = memory();
    let line = Arc::new(Line::default());
    let net: MmioNet = builder.build(backend);
    let device = Rc::new(RefCell::new(
        MmioDevice::new(net, memory.clone(), line.clone(), version).unwrap(),
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
    pub intx: RecordingIntx,
    /// What `PciTransport::setup_interrupts` chose, if it was called.
    pub mode: Option<InterruptMode>,
}

pub fn pci(builder: NetDeviceBuilder, backend: PairEnd, config: NetDriverConfig) -> PciSetup {
    pci_with(builder, backend, config, PciVariant::Modern, None, None)
}

/// As [`pci`], with the function presenting `variant`, the driver using `interface` (`None`: what the transport
/// picks) and, with `interrupts`, setting up interrupts (best mode first) between feature negotiation and queue
/// setup.
pub fn pci_with(
    builder: NetDeviceBuilder,
    backend: PairEnd,
    config: NetDriverConfig,
    variant: PciVariant,
    interface: Option<Interface>,
    interrupts: Option<InterruptMode>,
) -> PciSetup {
    let memory = memory();
    let msi = RecordingMsi::new();
    let intx = RecordingIntx::new();
    let net: PciNet = builder.build(backend);
    let config_len = net.config_len();
    let device = Rc::new(RefCell::new(
        PciDevice::new(
            net,
            memory.clone(),
            PciOptions::new(variant).config_len(config_len),
            InterruptSinks::new().msi(msi.clone()).intx(intx.clone()),
        )
        .unwrap(),
    ));
    let access = LocalAccess::new(device.clone());
    let transport = match interface {
        Some(i) => PciTransport::with_interface(access, i).unwrap(),
        None => PciTransport::new(access).unwrap(),
    };
    let mut mode = None;
    let driver = NetDriver::with_setup(transport, memory, region(), config, |t, queues| {
        if let Some(best) = interrupts {
            mode = Some(
                t.setup_interrupts(queues, best)
                    .map_err(|e| virtio_net::NetError::Core(e.to_core()))?,
            );
        }
        Ok(())
    })
    .unwrap();
    PciSetup {
        device,
        driver,
        msi,
        intx,
        mode,
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

/// Two ends of an in-memory link: the first for the device's backend, the second the test's (the "wire"), with the
/// pair's default 12-byte headers in front of each frame.
pub fn link() -> (PairEnd, PairEnd) {
    PairEnd::pair(PairConfig::new().slots(64))
}

/// Puts `frame` on the wire towards the device (behind a zeroed 12-byte backend header).
pub fn inject(peer: &mut PairEnd, frame: &[u8]) {
    use virtio_net::backend::{NetBackend, SendStatus};
    let header = [0u8; 12];
    assert_eq!(peer.send(0, &[&header, frame]).unwrap(), SendStatus::Sent);
}

/// Takes the frames the device put on the wire (backend header stripped).
pub fn drain(peer: &mut PairEnd) -> Vec<Vec<u8>> {
    use virtio_net::backend::NetBackend;
    let mut buf = vec![0u8; 12 + virtio_net::MAX_FRAME_LEN];
    let mut out = Vec::new();
    while let Some(n) = peer.recv(0, &mut buf).unwrap() {
        out.push(buf[12..n].to_vec());
    }
    out
}

/// Receives every frame waiting on pair 0 of `driver`.
pub fn receive_all<T: virtio_core::transport::Transport>(
    driver: &mut NetDriver<T, Mem>,
) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; virtio_net::MAX_FRAME_LEN];
    let mut out = Vec::new();
    while let Some((_, n)) = driver.receive(0, &mut buf).unwrap() {
        out.push(buf[..n].to_vec());
    }
    out
}
