//! How the driver side reaches a PCI function: the SDK-owned [`PciAccess`] trait, BAR sizing on top of it, and
//! [`LocalAccess`], an implementation over an in-process [`PciDevice`] (tests, simulations).
//!
//! A VFIO implementation (pread/pwrite on the region file descriptors, `VFIO_DEVICE_SET_IRQS`) and a `no_std` guest
//! implementation (port I/O or ECAM plus mapped BARs) implement the same trait.

use alloc::rc::Rc;
use core::cell::RefCell;

use virtio_core::device::VirtioDevice;

use crate::config::{BarInfo, BarKind};
use crate::device::PciDevice;
use crate::error::{Error, Result};
use crate::interrupt::PciInterrupt;
use crate::spec::{bar, command, header, msix};

/// The MSI-X capability of a function as the driver parsed it (PCI Local Bus 3.0 §6.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MsixCapability {
    /// Offset of the capability in configuration space.
    pub offset: u16,
    /// Number of table entries (Table Size + 1).
    pub table_size: u16,
    /// BAR of the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR.
    pub table_offset: u64,
    /// BAR of the Pending Bit Array.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR.
    pub pba_offset: u64,
}

/// What interrupts the driver asks the platform to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IrqRequest {
    /// The INTx line (MSI-X disabled).
    Intx,
    /// MSI-X with the first `vectors` table entries routed to the driver and unmasked.
    Msix {
        /// Entries to enable.
        vectors: u16,
        /// The capability (for implementations that program it themselves).
        capability: MsixCapability,
    },
}

/// Access to one PCI function: configuration space, BARs, and interrupt setup.
///
/// Reads of registers that do not exist, or that fail at the platform level, return all-ones (as a PCI master abort
/// does); writes that fail are dropped. Offsets are relative to the start of configuration space or of the BAR.
pub trait PciAccess {
    /// Reads `data.len()` bytes of configuration space at `offset` into `data`. `data` arrives filled with
    /// all-ones; an implementation that cannot reach the register leaves it so (a master abort).
    fn config_read_bytes(&mut self, offset: u16, data: &mut [u8]);
    /// Writes `data` to configuration space at `offset`; a write that cannot reach the device is dropped.
    fn config_write_bytes(&mut self, offset: u16, data: &[u8]);
    /// Reads `data.len()` bytes at `offset` of BAR `bar`, with the same all-ones convention as
    /// [`config_read_bytes`](Self::config_read_bytes).
    fn bar_read_bytes(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` of BAR `bar`.
    fn bar_write_bytes(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// Reads a 8-bit little-endian configuration register.
    fn config_read_u8(&mut self, offset: u16) -> u8 {
        let mut buf = [0xff; 1];
        self.config_read_bytes(offset, &mut buf);
        u8::from_le_bytes(buf)
    }
    /// Writes a 8-bit little-endian configuration register.
    fn config_write_u8(&mut self, offset: u16, value: u8) {
        self.config_write_bytes(offset, &value.to_le_bytes());
    }
    /// Reads 8 little-endian bits at `offset` of BAR `bar`.
    fn bar_read_u8(&mut self, bar: u8, offset: u64) -> u8 {
        let mut buf = [0xff; 1];
        self.bar_read_bytes(bar, offset, &mut buf);
        u8::from_le_bytes(buf)
    }
    /// Writes 8 little-endian bits at `offset` of BAR `bar`.
    fn bar_write_u8(&mut self, bar: u8, offset: u64, value: u8) {
        self.bar_write_bytes(bar, offset, &value.to_le_bytes());
    }
    /// Reads a 16-bit little-endian configuration register.
    fn config_read_u16(&mut self, offset: u16) -> u16 {
        let mut buf = [0xff; 2];
        self.config_read_bytes(offset, &mut buf);
        u16::from_le_bytes(buf)
    }
    /// Writes a 16-bit little-endian configuration register.
    fn config_write_u16(&mut self, offset: u16, value: u16) {
        self.config_write_bytes(offset, &value.to_le_bytes());
    }
    /// Reads 16 little-endian bits at `offset` of BAR `bar`.
    fn bar_read_u16(&mut self, bar: u8, offset: u64) -> u16 {
        let mut buf = [0xff; 2];
        self.bar_read_bytes(bar, offset, &mut buf);
        u16::from_le_bytes(buf)
    }
    /// Writes 16 little-endian bits at `offset` of BAR `bar`.
    fn bar_write_u16(&mut self, bar: u8, offset: u64, value: u16) {
        self.bar_write_bytes(bar, offset, &value.to_le_bytes());
    }
    /// Reads a 32-bit little-endian configuration register.
    fn config_read_u32(&mut self, offset: u16) -> u32 {
        let mut buf = [0xff; 4];
        self.config_read_bytes(offset, &mut buf);
        u32::from_le_bytes(buf)
    }
    /// Writes a 32-bit little-endian configuration register.
    fn config_write_u32(&mut self, offset: u16, value: u32) {
        self.config_write_bytes(offset, &value.to_le_bytes());
    }
    /// Reads 32 little-endian bits at `offset` of BAR `bar`.
    fn bar_read_u32(&mut self, bar: u8, offset: u64) -> u32 {
        let mut buf = [0xff; 4];
        self.bar_read_bytes(bar, offset, &mut buf);
        u32::from_le_bytes(buf)
    }
    /// Writes 32 little-endian bits at `offset` of BAR `bar`.
    fn bar_write_u32(&mut self, bar: u8, offset: u64, value: u32) {
        self.bar_write_bytes(bar, offset, &value.to_le_bytes());
    }

    /// What BAR `index` maps and how large it is; `None` if not implemented. The default sizes it through
    /// configuration space ([`size_bar`]); VFIO knows region sizes and overrides this.
    fn bar_info(&mut self, index: u8) -> Option<BarInfo> {
        size_bar(self, index)
    }

    /// Sets up interrupts: MSI-X with `vectors` entries, or INTx. After `Ok`, the platform delivers MSI-X vector `n`
    /// (or INTx) to whoever drives the transport's `handle_*` methods.
    fn enable_interrupts(&mut self, request: IrqRequest) -> Result<()>;
}

/// Sizes BAR `index` the standard way (PCI Local Bus 3.0 §6.2.5.1): with decoding disabled, write all-ones, read
/// back the mask, restore. The size is the lowest set address bit of the mask.
pub fn size_bar<A: PciAccess + ?Sized>(access: &mut A, index: u8) -> Option<BarInfo> {
    if index >= header::BAR_COUNT {
        return None;
    }
    let reg = header::BAR0 + 4 * u16::from(index);
    if index > 0 {
        // The upper half of a 64-bit BAR is not a BAR of its own.
        let below = access.config_read_u32(reg - 4);
        if below & bar::IO == 0 && below & 0b110 == bar::MEM_64 {
            return None;
        }
    }
    let cmd = access.config_read_u16(header::COMMAND);
    access.config_write_u16(
        header::COMMAND,
        cmd & !(command::IO_SPACE | command::MEMORY_SPACE),
    );
    let original = access.config_read_u32(reg);
    access.config_write_u32(reg, u32::MAX);
    let mask = access.config_read_u32(reg);
    access.config_write_u32(reg, original);
    let result = if original & bar::IO != 0 {
        // I/O decoders may implement only 16 address bits; the lowest set bit still gives the size.
        let m = u64::from(mask & !bar::IO_FLAGS_MASK);
        (m != 0).then(|| {
            BarInfo::new(
                index,
                BarKind::Io,
                m & m.wrapping_neg(),
                u64::from(original & !bar::IO_FLAGS_MASK),
            )
        })
    } else if original & 0b110 == bar::MEM_64 && index + 1 < header::BAR_COUNT {
        let high_reg = reg + 4;
        let high_original = access.config_read_u32(high_reg);
        access.config_write_u32(high_reg, u32::MAX);
        let high_mask = access.config_read_u32(high_reg);
        access.config_write_u32(high_reg, high_original);
        let m = (u64::from(high_mask) << 32) | u64::from(mask & !bar::MEM_FLAGS_MASK);
        (m != 0).then(|| {
            BarInfo::new(
                index,
                BarKind::Memory64 {
                    prefetchable: original & bar::PREFETCHABLE != 0,
                },
                m & m.wrapping_neg(),
                (u64::from(high_original) << 32) | u64::from(original & !bar::MEM_FLAGS_MASK),
            )
        })
    } else {
        let m = u64::from(mask & !bar::MEM_FLAGS_MASK);
        (m != 0).then(|| {
            BarInfo::new(
                index,
                BarKind::Memory32,
                m & m.wrapping_neg(),
                u64::from(original & !bar::MEM_FLAGS_MASK),
            )
        })
    };
    access.config_write_u16(header::COMMAND, cmd);
    result
}

/// Message Address [`LocalAccess`] programs into every MSI-X entry (the x86 local APIC window; the message data is
/// the vector number, so an [`crate::MsiSink`] can tell vectors apart by either).
pub const LOCAL_MSI_ADDRESS: u64 = 0xfee0_0000;

/// [`PciAccess`] over a [`PciDevice`] in the same process, as a guest reaches it: every access goes through the
/// device's register emulation. For tests of drivers against the device side, and simulations.
///
/// Re-entrant use (an [`crate::MsiSink`] that calls back into the device) finds the device borrowed: reads then
/// return all-ones and writes are dropped, never a panic.
pub struct LocalAccess<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    device: Rc<RefCell<PciDevice<D>>>,
}

impl<D> core::fmt::Debug for LocalAccess<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalAccess").finish_non_exhaustive()
    }
}

impl<D> LocalAccess<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    /// Access to `device`.
    pub fn new(device: Rc<RefCell<PciDevice<D>>>) -> Self {
        Self { device }
    }

    /// The device.
    pub fn device(&self) -> &Rc<RefCell<PciDevice<D>>> {
        &self.device
    }
}

impl<D> PciAccess for LocalAccess<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    fn config_read_bytes(&mut self, offset: u16, data: &mut [u8]) {
        if let Ok(mut d) = self.device.try_borrow_mut() {
            d.config_read(offset, data);
        }
    }
    fn config_write_bytes(&mut self, offset: u16, data: &[u8]) {
        if let Ok(mut d) = self.device.try_borrow_mut() {
            d.config_write(offset, data);
        }
    }
    fn bar_read_bytes(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if let Ok(mut d) = self.device.try_borrow_mut() {
            d.bar_read(bar, offset, data);
        }
    }
    fn bar_write_bytes(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if let Ok(mut d) = self.device.try_borrow_mut() {
            d.bar_write(bar, offset, data);
        }
    }

    /// Programs the MSI-X table as a guest OS does (entry `n`: address [`LOCAL_MSI_ADDRESS`], data `n`, unmasked),
    /// then sets MSI-X Enable, clears Function Mask and sets Interrupt Disable; or, for INTx, clears MSI-X Enable and
    /// Interrupt Disable.
    fn enable_interrupts(&mut self, request: IrqRequest) -> Result<()> {
        match request {
            IrqRequest::Intx => {
                if let Some(cap) =
                    crate::transport::find_capability(self, crate::spec::cap_id::MSIX)
                {
                    let control = self.config_read_u16(cap + msix::CONTROL);
                    self.config_write_u16(cap + msix::CONTROL, control & !msix::CONTROL_ENABLE);
                }
                let cmd = self.config_read_u16(header::COMMAND);
                self.config_write_u16(header::COMMAND, cmd & !command::INTX_DISABLE);
                Ok(())
            }
            IrqRequest::Msix {
                vectors,
                capability,
            } => {
                if vectors == 0 || vectors > capability.table_size {
                    return Err(Error::InterruptSetup);
                }
                let control_at = capability.offset + msix::CONTROL;
                let control = self.config_read_u16(control_at);
                // Mask the function while the table changes.
                self.config_write_u16(control_at, control | msix::CONTROL_FUNCTION_MASK);
                for v in 0..vectors {
                    let entry = capability.table_offset + u64::from(v) * msix::ENTRY_LEN;
                    let bar = capability.table_bar;
                    self.bar_write_u32(
                        bar,
                        entry + msix::ENTRY_ADDR_LO,
                        crate::config::lo32(LOCAL_MSI_ADDRESS),
                    );
                    self.bar_write_u32(
                        bar,
                        entry + msix::ENTRY_ADDR_HI,
                        crate::config::hi32(LOCAL_MSI_ADDRESS),
                    );
                    self.bar_write_u32(bar, entry + msix::ENTRY_DATA, u32::from(v));
                    self.bar_write_u32(bar, entry + msix::ENTRY_VECTOR_CONTROL, 0);
                }
                let cmd = self.config_read_u16(header::COMMAND);
                self.config_write_u16(header::COMMAND, cmd | command::INTX_DISABLE);
                let control = (control | msix::CONTROL_ENABLE) & !msix::CONTROL_FUNCTION_MASK;
                self.config_write_u16(control_at, control);
                Ok(())
            }
        }
    }
}
