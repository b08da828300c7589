//! [`PciAccess`] over PCI configuration mechanism #1 (ports 0xCF8/0xCFC, PCI Local Bus 3.0 §3.2.2.3.2) and the
//! function's BARs as the firmware or VMM assigned them: memory BARs through the identity map, I/O BARs through port
//! I/O. Interrupts are not used (the kernel polls), so [`PciAccess::enable_interrupts`] accepts INTx and refuses
//! MSI-X, which makes the transport program no vectors.

use virtio_pci::spec::{bar, header};
use virtio_pci::{IrqRequest, PciAccess};

use crate::io::{inb, inl, inw, outb, outl, outw};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Virtio's PCI vendor id.
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional virtio-net (§4.1.2.3).
const NET_TRANSITIONAL: u16 = 0x1000;
/// Modern virtio-net: 0x1040 + device type 1 (§4.1.2.1).
const NET_MODERN: u16 = 0x1041;

/// Where a BAR decodes, as read at probe time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarBase {
    Unused,
    Io(u16),
    Memory(u64),
}

/// One PCI function on bus 0, reached by configuration mechanism #1.
#[derive(Debug)]
pub(crate) struct PortPci {
    device: u8,
    function: u8,
    bars: [BarBase; 6],
    /// End of the identity-mapped physical address space.
    mapped: u64,
}

fn address(device: u8, function: u8, offset: u16) -> u32 {
    0x8000_0000 | (u32::from(device) << 11) | (u32::from(function) << 8) | u32::from(offset & 0xfc)
}

fn read32(device: u8, function: u8, offset: u16) -> u32 {
    // SAFETY: CONFIG_ADDRESS/CONFIG_DATA are the host bridge's configuration mechanism; reads of configuration space
    // have no side effects on the functions this kernel probes.
    unsafe { outl(CONFIG_ADDRESS, address(device, function, offset)) };
    // SAFETY: as above.
    unsafe { inl(CONFIG_DATA) }
}

impl PortPci {
    /// Scans bus 0 for a virtio-net function and returns the first one, with its BAR addresses read. Memory BARs
    /// are reached through the identity map, which covers physical addresses below `mapped`.
    pub(crate) fn find_net(mapped: u64) -> Option<Self> {
        for device in 0..32u8 {
            for function in 0..8u8 {
                let id = read32(device, function, 0);
                let vendor = u16::try_from(id & 0xffff).unwrap_or(0xffff);
                if vendor == 0xffff || vendor == 0 {
                    if function == 0 {
                        break;
                    }
                    continue;
                }
                let dev_id = u16::try_from(id >> 16).unwrap_or(0);
                if vendor == VIRTIO_VENDOR && (dev_id == NET_TRANSITIONAL || dev_id == NET_MODERN) {
                    return Some(Self::new(device, function, mapped));
                }
                // Single-function device: functions 1..8 are not decoded.
                let header_type = read32(device, function, 0x0c) >> 16 & 0xff;
                if function == 0 && header_type & 0x80 == 0 {
                    break;
                }
            }
        }
        None
    }

    fn new(device: u8, function: u8, mapped: u64) -> Self {
        let mut bars = [BarBase::Unused; 6];
        let mut index = 0usize;
        while index < 6 {
            let reg = header::BAR0 + 4 * u16::try_from(index).unwrap_or(0);
            let low = read32(device, function, reg);
            let mut step = 1;
            let base = if low & bar::IO != 0 {
                BarBase::Io(u16::try_from(low & !0x3).unwrap_or(0))
            } else if low & 0b110 == bar::MEM_64 {
                step = 2;
                let high = read32(device, function, reg + 4);
                BarBase::Memory((u64::from(high) << 32) | u64::from(low & !0xf))
            } else if low & !0xf != 0 {
                BarBase::Memory(u64::from(low & !0xf))
            } else {
                BarBase::Unused
            };
            if let Some(slot) = bars.get_mut(index) {
                *slot = base;
            }
            index += step;
        }
        Self {
            device,
            function,
            bars,
            mapped,
        }
    }

    /// `bus:device.function` for the log.
    pub(crate) fn location(&self) -> (u8, u8) {
        (self.device, self.function)
    }

    fn bar(&self, index: u8) -> BarBase {
        self.bars
            .get(usize::from(index))
            .copied()
            .unwrap_or(BarBase::Unused)
    }
}

impl PciAccess for PortPci {
    fn config_read_bytes(&mut self, offset: u16, data: &mut [u8]) {
        // One access of the register's own width where it is naturally aligned (the type-1 data port decodes byte
        // enables from the low address bits); byte by byte otherwise.
        let port = CONFIG_DATA + (offset & 3);
        let aligned = usize::from(offset) % data.len().max(1) == 0
            && usize::from(offset) + data.len() <= 0x100;
        if !aligned || !matches!(data.len(), 1 | 2 | 4) {
            for (i, b) in data.iter_mut().enumerate() {
                let at = offset.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
                if at < 0x100 {
                    let mut one = [0xff];
                    self.config_read_bytes(at, &mut one);
                    *b = one[0];
                }
            }
            return;
        }
        // SAFETY: selecting a register of the function this value was built for (see `read32`).
        unsafe { outl(CONFIG_ADDRESS, address(self.device, self.function, offset)) };
        match data.len() {
            // SAFETY: a configuration read of the selected register; no side effects.
            1 => data.copy_from_slice(&[unsafe { inb(port) }]),
            // SAFETY: as above.
            2 => data.copy_from_slice(&unsafe { inw(port) }.to_le_bytes()),
            // SAFETY: as above.
            _ => data.copy_from_slice(&unsafe { inl(port) }.to_le_bytes()),
        }
    }

    fn config_write_bytes(&mut self, offset: u16, data: &[u8]) {
        let port = CONFIG_DATA + (offset & 3);
        let aligned = usize::from(offset) % data.len().max(1) == 0
            && usize::from(offset) + data.len() <= 0x100;
        if !aligned || !matches!(data.len(), 1 | 2 | 4) {
            for (i, b) in data.iter().enumerate() {
                let at = offset.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
                if at < 0x100 {
                    self.config_write_bytes(at, &[*b]);
                }
            }
            return;
        }
        // SAFETY: selecting a register of the function this value was built for.
        unsafe { outl(CONFIG_ADDRESS, address(self.device, self.function, offset)) };
        match *data {
            // SAFETY: the transport writes the registers of the virtio function it drives (command, BARs while
            // sizing, MSI-X control); this kernel owns that function.
            [b] => unsafe { outb(port, b) },
            // SAFETY: as above.
            [a, b] => unsafe { outw(port, u16::from_le_bytes([a, b])) },
            // SAFETY: as above.
            [a, b, c, d] => unsafe { outl(port, u32::from_le_bytes([a, b, c, d])) },
            _ => {}
        }
    }

    fn bar_read_bytes(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match self.bar(bar) {
            BarBase::Io(base) => {
                let Some(port) = u16::try_from(offset).ok().and_then(|o| base.checked_add(o))
                else {
                    return;
                };
                match data.len() {
                    // SAFETY: a register of the virtio function's I/O BAR, which this kernel drives.
                    1 => data.copy_from_slice(&[unsafe { inb(port) }]),
                    // SAFETY: as above.
                    2 => data.copy_from_slice(&unsafe { inw(port) }.to_le_bytes()),
                    // SAFETY: as above.
                    4 => data.copy_from_slice(&unsafe { inl(port) }.to_le_bytes()),
                    _ => {
                        for (i, b) in data.iter_mut().enumerate() {
                            let p = port.wrapping_add(u16::try_from(i).unwrap_or(0));
                            // SAFETY: as above.
                            *b = unsafe { inb(p) };
                        }
                    }
                }
            }
            BarBase::Memory(base) => {
                let Some(addr) = base.checked_add(offset) else {
                    return;
                };
                mmio_read(addr, data, self.mapped);
            }
            BarBase::Unused => {}
        }
    }

    fn bar_write_bytes(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match self.bar(bar) {
            BarBase::Io(base) => {
                let Some(port) = u16::try_from(offset).ok().and_then(|o| base.checked_add(o))
                else {
                    return;
                };
                match *data {
                    // SAFETY: a register of the virtio function's I/O BAR; for a notification, the ring writes it
                    // announces were made before (the `out` is not `nomem`, and x86 orders stores before it).
                    [b] => unsafe { outb(port, b) },
                    // SAFETY: as above.
                    [a, b] => unsafe { outw(port, u16::from_le_bytes([a, b])) },
                    // SAFETY: as above.
                    [a, b, c, d] => unsafe { outl(port, u32::from_le_bytes([a, b, c, d])) },
                    _ => {
                        for (i, b) in data.iter().enumerate() {
                            let p = port.wrapping_add(u16::try_from(i).unwrap_or(0));
                            // SAFETY: as above.
                            unsafe { outb(p, *b) };
                        }
                    }
                }
            }
            BarBase::Memory(base) => {
                let Some(addr) = base.checked_add(offset) else {
                    return;
                };
                mmio_write(addr, data, self.mapped);
            }
            BarBase::Unused => {}
        }
    }

    fn enable_interrupts(&mut self, request: IrqRequest) -> virtio_pci::Result<()> {
        match request {
            IrqRequest::Intx => Ok(()),
            _ => Err(virtio_pci::Error::InterruptSetup),
        }
    }
}

/// Whether `addr..addr + len` lies below `limit`, the end of the identity map.
fn mapped(addr: u64, len: usize, limit: u64) -> bool {
    addr.checked_add(len as u64).is_some_and(|end| end <= limit)
}

/// A volatile read of the device register at address `at`.
///
/// # Safety
///
/// `at` lies in a memory BAR of the function this kernel drives (assigned by the firmware or VMM), is
/// identity-mapped by the boot page tables, and is aligned for `T`.
unsafe fn read_reg<T: Copy>(at: usize) -> T {
    // SAFETY: forwarded from the caller.
    unsafe { (at as *const T).read_volatile() }
}

/// A volatile write of the device register at address `at`.
///
/// # Safety
///
/// As for [`read_reg`].
unsafe fn write_reg<T: Copy>(at: usize, value: T) {
    // SAFETY: forwarded from the caller.
    unsafe { (at as *mut T).write_volatile(value) }
}

/// Reads `data.len()` bytes of device memory at physical `addr`, with one access of that width when it is 1, 2, 4
/// or 8 and aligned (device registers care about access width), bytewise otherwise.
fn mmio_read(addr: u64, data: &mut [u8], limit: u64) {
    if !mapped(addr, data.len(), limit) {
        return;
    }
    let Ok(at) = usize::try_from(addr) else {
        return;
    };
    let aligned = at % data.len().max(1) == 0;
    // SAFETY (for each access below): `addr` is in a BAR of our function, identity-mapped (`mapped` checked the
    // range), and each access is aligned for its width.
    match data.len() {
        2 if aligned => {
            // SAFETY: see above.
            let v: u16 = unsafe { read_reg(at) };
            data.copy_from_slice(&v.to_le_bytes());
        }
        4 if aligned => {
            // SAFETY: see above.
            let v: u32 = unsafe { read_reg(at) };
            data.copy_from_slice(&v.to_le_bytes());
        }
        8 if aligned => {
            // SAFETY: see above.
            let v: u64 = unsafe { read_reg(at) };
            data.copy_from_slice(&v.to_le_bytes());
        }
        _ => {
            for (i, b) in data.iter_mut().enumerate() {
                // SAFETY: see above; byte accesses are always aligned.
                *b = unsafe { read_reg::<u8>(at.wrapping_add(i)) };
            }
        }
    }
}

/// Writes `data` to device memory at physical `addr` (widths as for [`mmio_read`]).
fn mmio_write(addr: u64, data: &[u8], limit: u64) {
    if !mapped(addr, data.len(), limit) {
        return;
    }
    let Ok(at) = usize::try_from(addr) else {
        return;
    };
    let aligned = at % data.len().max(1) == 0;
    // Order the ring writes before a notification: x86 does not reorder stores with stores, and the fence keeps the
    // compiler from sinking them past the volatile write.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    match *data {
        [a, b] if aligned => {
            // SAFETY: as in `mmio_read`.
            unsafe { write_reg(at, u16::from_le_bytes([a, b])) };
        }
        [a, b, c, d] if aligned => {
            // SAFETY: as in `mmio_read`.
            unsafe { write_reg(at, u32::from_le_bytes([a, b, c, d])) };
        }
        [a, b, c, d, e, f, g, h] if aligned => {
            // SAFETY: as in `mmio_read`.
            unsafe { write_reg(at, u64::from_le_bytes([a, b, c, d, e, f, g, h])) };
        }
        _ => {
            for (i, b) in data.iter().enumerate() {
                // SAFETY: as in `mmio_read`; byte accesses are always aligned.
                unsafe { write_reg(at.wrapping_add(i), *b) };
            }
        }
    }
}
