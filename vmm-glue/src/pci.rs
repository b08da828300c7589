//! The PCI host: bus 0 behind type-1 configuration ports (0xCF8/0xCFC) and ECAM, a host bridge at device 0, and
//! the 32-bit MMIO and I/O windows in which the VMM pre-assigns BARs (there is no firmware). BAR accesses are
//! dispatched by asking each function which BAR decodes the address, so a guest that moves a BAR keeps working;
//! queue notification ioeventfds follow the BARs (re-registered after every configuration write).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_core::device::VirtioDevice;
use virtio_pci::{AddressSpace, BarKind, PciDevice, PciInterrupt};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusDevice};
use crate::error::Error;
use crate::layout;

/// One function on bus 0, as the host sees it.
pub(crate) trait PciFunction: Send {
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// A BAR read at bus address `addr` of `space`; `false` if no BAR of this function decodes it.
    fn bar_read(&mut self, space: AddressSpace, addr: u64, data: &mut [u8]) -> bool;
    /// A BAR write; `false` if no BAR of this function decodes it.
    fn bar_write(&mut self, space: AddressSpace, addr: u64, data: &[u8]) -> bool;
}

/// The host bridge at 00:00.0 (a plain header with class 06.00.00).
struct HostBridge {
    space: [u8; 64],
}

impl HostBridge {
    fn new() -> Self {
        let mut space = [0u8; 64];
        // Red Hat, QEMU PCIe host bridge.
        space[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        space[2..4].copy_from_slice(&0x0008u16.to_le_bytes());
        space[0x0b] = 0x06; // class: bridge, subclass 0: host bridge
        Self { space }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self
                .space
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0);
        }
    }
    fn config_write(&mut self, _offset: u16, _data: &[u8]) {}
    fn bar_read(&mut self, _: AddressSpace, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn bar_write(&mut self, _: AddressSpace, _: u64, _: &[u8]) -> bool {
        false
    }
}

/// Bus 0.
pub(crate) struct PciRoot {
    vm: Arc<VmFd>,
    functions: Vec<Option<Box<dyn PciFunction>>>,
    /// The type-1 CONFIG_ADDRESS register.
    address: u32,
    next_mmio: u64,
    next_io: u64,
}

impl fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciRoot")
            .field(
                "devices",
                &self.functions.iter().filter(|f| f.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

impl PciRoot {
    pub(crate) fn new(vm: Arc<VmFd>) -> Self {
        let mut functions: Vec<Option<Box<dyn PciFunction>>> =
            (0..layout::PCI_DEVICES).map(|_| None).collect();
        if let Some(slot) = functions.first_mut() {
            *slot = Some(Box::new(HostBridge::new()));
        }
        Self {
            vm,
            functions,
            address: 0,
            next_mmio: layout::PCI_MMIO_START,
            next_io: u64::from(layout::PCI_IO_START),
        }
    }

    fn free_device(&self) -> Option<u8> {
        (1..layout::PCI_DEVICES).find(|d| {
            self.functions
                .get(usize::from(*d))
                .is_some_and(Option::is_none)
        })
    }

    fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, Error> {
        let (next, end) = match kind {
            BarKind::Io => (
                &mut self.next_io,
                u64::from(layout::PCI_IO_START) + u64::from(layout::PCI_IO_SIZE),
            ),
            _ => (&mut self.next_mmio, layout::PCI_MMIO_END),
        };
        let size = size.max(4);
        let base = next
            .checked_next_multiple_of(size)
            .filter(|b| b.checked_add(size).is_some_and(|e| e <= end))
            .ok_or(Error::PciWindowFull { size })?;
        *next = base + size;
        Ok(base)
    }

    fn function(&mut self, device: u8) -> Option<&mut Box<dyn PciFunction>> {
        self.functions.get_mut(usize::from(device))?.as_mut()
    }

    fn config_read(&mut self, device: u8, offset: u16, data: &mut [u8]) {
        match self.function(device) {
            Some(f) => f.config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    fn config_write(&mut self, device: u8, offset: u16, data: &[u8]) {
        if let Some(f) = self.function(device) {
            f.config_write(offset, data);
        }
    }

    fn bar_read(&mut self, space: AddressSpace, addr: u64, data: &mut [u8]) {
        for f in self.functions.iter_mut().flatten() {
            if f.bar_read(space, addr, data) {
                return;
            }
        }
        data.fill(0xff);
    }

    fn bar_write(&mut self, space: AddressSpace, addr: u64, data: &[u8]) {
        for f in self.functions.iter_mut().flatten() {
            if f.bar_write(space, addr, data) {
                return;
            }
        }
    }
}

type SharedRoot = Arc<Mutex<PciRoot>>;

fn lock(root: &SharedRoot) -> std::sync::MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(PoisonError::into_inner)
}

/// CONFIG_ADDRESS (0xCF8) and CONFIG_DATA (0xCFC..0xCFF).
struct ConfigPorts(SharedRoot);

impl ConfigPorts {
    /// (device, register offset) selected by CONFIG_ADDRESS, if enabled and on bus 0 function 0.
    fn target(address: u32, byte: u64) -> Option<(u8, u16)> {
        let enabled = address & 0x8000_0000 != 0;
        let bus = (address >> 16) & 0xff;
        let device = u8::try_from((address >> 11) & 0x1f).ok()?;
        let function = (address >> 8) & 0x7;
        let register = u16::try_from(address & 0xfc).ok()?;
        let byte = u16::try_from(byte).ok()?;
        (enabled && bus == 0 && function == 0).then_some((device, register + byte))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut root = lock(&self.0);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&root.address.to_le_bytes());
            return;
        }
        match offset
            .checked_sub(4)
            .and_then(|b| Self::target(root.address, b))
        {
            Some((device, register)) => root.config_read(device, register, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut root = lock(&self.0);
        if offset == 0 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                root.address = u32::from_le_bytes(bytes);
            }
            return;
        }
        if let Some((device, register)) = offset
            .checked_sub(4)
            .and_then(|b| Self::target(root.address, b))
        {
            root.config_write(device, register, data);
        }
    }
}

/// ECAM for bus 0.
struct Ecam(SharedRoot);

impl Ecam {
    fn target(offset: u64) -> Option<(u8, u16)> {
        let bus = offset >> 20;
        let device = u8::try_from((offset >> 15) & 0x1f).ok()?;
        let function = (offset >> 12) & 0x7;
        let register = u16::try_from(offset & 0xfff).ok()?;
        (bus == 0 && function == 0).then_some((device, register))
    }
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::target(offset) {
            Some((d, r)) => lock(&self.0).config_read(d, r, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((d, r)) = Self::target(offset) {
            lock(&self.0).config_write(d, r, data);
        }
    }
}

/// A PCI window on the MMIO or port I/O bus.
struct Window {
    root: SharedRoot,
    space: AddressSpace,
    base: u64,
}

impl BusDevice for Window {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.root).bar_read(self.space, self.base + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.root).bar_write(self.space, self.base + offset, data);
    }
}

/// Puts the configuration ports, ECAM and the two windows on the buses.
pub(crate) fn install(root: &SharedRoot, pio: &Bus, mmio: &Bus) -> Result<(), Error> {
    pio.insert(
        u64::from(layout::PCI_CONFIG_ADDRESS_PORT),
        8,
        Arc::new(Mutex::new(ConfigPorts(root.clone()))),
    )?;
    pio.insert(
        u64::from(layout::PCI_IO_START),
        u64::from(layout::PCI_IO_SIZE),
        Arc::new(Mutex::new(Window {
            root: root.clone(),
            space: AddressSpace::Io,
            base: u64::from(layout::PCI_IO_START),
        })),
    )?;
    mmio.insert(
        layout::PCI_MMIO_START,
        layout::PCI_MMIO_SIZE,
        Arc::new(Mutex::new(Window {
            root: root.clone(),
            space: AddressSpace::Memory,
            base: layout::PCI_MMIO_START,
        })),
    )?;
    mmio.insert(
        layout::PCI_ECAM_BASE,
        layout::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(Ecam(root.clone()))),
    )?;
    Ok(())
}

/// A registered notification ioeventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Notify {
    queue: u16,
    io: bool,
    addr: u64,
    len: u8,
    datamatch: Option<u32>,
}

/// A virtio device on bus 0, with its notification ioeventfds.
pub(crate) struct VirtioFunction<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    device: Arc<Mutex<PciDevice<D>>>,
    vm: Arc<VmFd>,
    /// One eventfd per queue (shared by the modern and legacy addresses of a transitional device).
    fds: Vec<Arc<EventFd>>,
    registered: Vec<Notify>,
}

impl<D> VirtioFunction<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt> + Send,
    D::Memory: Clone + Send,
{
    fn wanted(device: &mut PciDevice<D>) -> Vec<Notify> {
        let mut command = [0u8; 2];
        device.config_read(virtio_pci::spec::header::COMMAND, &mut command);
        let command = u16::from_le_bytes(command);
        let (io_on, mem_on) = (command & 1 != 0, command & 2 != 0);
        let mut wanted = Vec::new();
        let mut queue = 0u16;
        while device.queue_config(queue).is_some() {
            let addresses = [
                device.queue_notify_address(queue),
                device.legacy_notify_address(queue),
            ];
            for n in addresses.into_iter().flatten() {
                let Some(bar) = device.bar(n.bar) else {
                    continue;
                };
                let io = bar.kind == BarKind::Io;
                if bar.address == 0 || (io && !io_on) || (!io && !mem_on) {
                    continue;
                }
                wanted.push(Notify {
                    queue,
                    io,
                    addr: bar.address + n.offset,
                    len: n.len,
                    datamatch: n.datamatch,
                });
            }
            queue += 1;
        }
        wanted
    }

    fn register(&self, n: &Notify, on: bool) -> Result<(), kvm_ioctls::Error> {
        let Some(fd) = self.fds.get(usize::from(n.queue)) else {
            return Ok(());
        };
        let addr = if n.io {
            IoEventAddress::Pio(n.addr)
        } else {
            IoEventAddress::Mmio(n.addr)
        };
        let vm = &self.vm;
        match (n.datamatch, n.len) {
            // Port I/O needs a length; without a value to match it is left to the exit path.
            (None, _) if n.io => Ok(()),
            (None, _) if on => vm.register_ioevent(fd, &addr, NoDatamatch),
            (None, _) => vm.unregister_ioevent(fd, &addr, NoDatamatch),
            (Some(v), 2) => {
                let v = u16::try_from(v).unwrap_or(u16::MAX);
                if on {
                    vm.register_ioevent(fd, &addr, v)
                } else {
                    vm.unregister_ioevent(fd, &addr, v)
                }
            }
            (Some(v), _) if on => vm.register_ioevent(fd, &addr, v),
            (Some(v), _) => vm.unregister_ioevent(fd, &addr, v),
        }
    }

    /// Re-registers the notification ioeventfds if BARs, decoding or the notification width changed.
    fn sync(&mut self) {
        let wanted = {
            let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
            Self::wanted(&mut device)
        };
        if wanted == self.registered {
            return;
        }
        for n in std::mem::take(&mut self.registered) {
            let _ = self.register(&n, false);
        }
        for n in wanted {
            // A refused registration (e.g. two BARs moved onto each other mid-sizing) leaves the access to the
            // exit path, which still works.
            if self.register(&n, true).is_ok() {
                self.registered.push(n);
            }
        }
    }
}

impl<D> PciFunction for VirtioFunction<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt> + Send,
    D::Memory: Clone + Send,
{
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_write(offset, data);
        self.sync();
    }

    fn bar_read(&mut self, space: AddressSpace, addr: u64, data: &mut [u8]) -> bool {
        let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        match device.resolve(space, addr) {
            Some((bar, offset)) => {
                device.bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    fn bar_write(&mut self, space: AddressSpace, addr: u64, data: &[u8]) -> bool {
        let hit = {
            let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
            match device.resolve(space, addr) {
                Some((bar, offset)) => {
                    device.bar_write(bar, offset, data);
                    true
                }
                None => false,
            }
        };
        if hit {
            // The notification width follows VIRTIO_F_NOTIFICATION_DATA, fixed at FEATURES_OK.
            self.sync();
        }
        hit
    }
}

/// Where a function was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PciSlotInfo {
    /// Device number on bus 0.
    pub device: u8,
    /// GSI of its INTA#.
    pub intx_gsi: u32,
}

/// Adds `device` to bus 0: assigns its BARs in the windows, enables decoding, writes the interrupt line, and
/// registers its notification ioeventfds (`fds`, one per queue).
pub(crate) fn plug<D>(
    root: &SharedRoot,
    device: Arc<Mutex<PciDevice<D>>>,
    device_number: u8,
    fds: Vec<Arc<EventFd>>,
) -> Result<(), Error>
where
    D: VirtioDevice<Interrupt = PciInterrupt> + Send + 'static,
    D::Memory: Clone + Send,
{
    let mut root = lock(root);
    {
        let mut dev = device.lock().unwrap_or_else(PoisonError::into_inner);
        let bars: Vec<_> = dev.bars().collect();
        for bar in bars {
            let address = root.allocate(bar.kind, bar.size)?;
            let reg = virtio_pci::spec::header::BAR0 + 4 * u16::from(bar.index);
            let low = u32::try_from(address & 0xffff_ffff).unwrap_or(0);
            dev.config_write(reg, &low.to_le_bytes());
            if matches!(bar.kind, BarKind::Memory64 { .. }) {
                dev.config_write(reg + 4, &0u32.to_le_bytes());
            }
        }
        // I/O and memory decoding on, as firmware leaves it.
        dev.config_write(virtio_pci::spec::header::COMMAND, &3u16.to_le_bytes());
        let gsi = u8::try_from(layout::pci_intx_gsi(device_number)).unwrap_or(0);
        dev.config_write(virtio_pci::spec::header::INTERRUPT_LINE, &[gsi]);
    }
    let mut function = VirtioFunction {
        device,
        vm: root.vm.clone(),
        fds,
        registered: Vec::new(),
    };
    function.sync();
    if let Some(slot) = root.functions.get_mut(usize::from(device_number)) {
        *slot = Some(Box::new(function));
    }
    Ok(())
}

/// Reserves a free device number on bus 0.
pub(crate) fn reserve(root: &SharedRoot) -> Result<u8, Error> {
    lock(root).free_device().ok_or(Error::NoSlot("PCI device"))
}
