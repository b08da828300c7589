//! The device's PCI configuration space: a type-0 header with per-byte write masks, BAR registers with sizing, and
//! the capability list (virtio 1.3 §4.1.4 Virtio Structure PCI Capabilities, MSI-X, optionally PCI Express).
//!
//! This module knows bytes, masks and BAR arithmetic only; the side effects of writes (INTx disable, MSI-X enable,
//! the PCI configuration access window) are applied by [`crate::PciDevice`], which compares state around each write.

use alloc::vec;
use alloc::vec::Vec;

use crate::spec::{bar, cap_id, command, header, msix, status, vcap, CfgType};

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BarKind {
    /// I/O space (32-bit BAR).
    Io,
    /// 32-bit memory space, non-prefetchable.
    Memory32,
    /// 64-bit memory space (occupies this BAR and the next).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// Address space of a bus access, for [`crate::PciDevice::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    /// Port I/O.
    Io,
    /// Memory (MMIO).
    Memory,
}

/// One implemented BAR of a [`crate::PciDevice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BarInfo {
    /// BAR number (0..=5).
    pub index: u8,
    /// What it maps.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// The address the driver (or firmware) programmed, flags stripped.
    pub address: u64,
}

impl BarInfo {
    /// A BAR description (for [`crate::PciAccess`] implementations that know BAR sizes without sizing, e.g. VFIO).
    pub const fn new(index: u8, kind: BarKind, size: u64, address: u64) -> Self {
        Self {
            index,
            kind,
            size,
            address,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar {
        kind: BarKind,
        size: u64,
    },
    /// Upper half of the 64-bit BAR below.
    Upper,
}

/// Where a capability was placed, for the device's own use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CapOffsets {
    pub(crate) pci_cfg: Option<u16>,
    pub(crate) msix: Option<u16>,
}

/// One virtio structure capability to place (§4.1.4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct VirtioCap {
    pub(crate) cfg_type: CfgType,
    pub(crate) bar: u8,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    /// `notify_off_multiplier` for the notify capability.
    pub(crate) multiplier: Option<u32>,
}

/// MSI-X capability placement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsixCap {
    pub(crate) vectors: u16,
    pub(crate) bar: u8,
    pub(crate) table_offset: u32,
    pub(crate) pba_offset: u32,
}

/// Identification fields of the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids {
    pub(crate) device_id: u16,
    pub(crate) revision: u8,
    pub(crate) class_code: u32,
    pub(crate) subsystem_id: u16,
}

/// Configuration space bytes, write masks and BARs.
#[derive(Debug, Clone)]
pub(crate) struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    slots: [BarSlot; 6],
    bar_regs: [u32; 6],
}

/// The low 32 bits of `v`.
pub(crate) fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(u32::MAX)
}

/// The high 32 bits of `v`.
pub(crate) fn hi32(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(u32::MAX)
}

impl ConfigSpace {
    pub(crate) fn new(ids: Ids, extended: bool) -> Self {
        let len = usize::from(if extended {
            header::EXTENDED_CONFIG_SPACE_LEN
        } else {
            header::CONFIG_SPACE_LEN
        });
        let mut space = Self {
            bytes: vec![0; len],
            wmask: vec![0; len],
            slots: [BarSlot::Unused; 6],
            bar_regs: [0; 6],
        };
        space.put16(header::VENDOR_ID, crate::spec::VIRTIO_VENDOR_ID);
        space.put16(header::DEVICE_ID, ids.device_id);
        space.put8(header::REVISION_ID, ids.revision);
        for (i, b) in ids.class_code.to_le_bytes().iter().take(3).enumerate() {
            if let Some(at) = u16::try_from(i).ok().map(|i| header::CLASS_CODE + i) {
                space.put8(at, *b);
            }
        }
        space.put8(header::HEADER_TYPE, 0);
        space.put16(header::SUBSYSTEM_VENDOR_ID, crate::spec::VIRTIO_VENDOR_ID);
        space.put16(header::SUBSYSTEM_ID, ids.subsystem_id);
        space.put8(header::INTERRUPT_PIN, 1);
        space.mask16(header::COMMAND, command::WRITABLE);
        space.mask8(header::CACHE_LINE_SIZE, 0xff);
        space.mask8(header::INTERRUPT_LINE, 0xff);
        space
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    // ----- building -----

    fn put8(&mut self, at: u16, v: u8) {
        if let Some(b) = self.bytes.get_mut(usize::from(at)) {
            *b = v;
        }
    }

    fn put16(&mut self, at: u16, v: u16) {
        for (i, b) in (at..).zip(v.to_le_bytes()) {
            self.put8(i, b);
        }
    }

    fn put32(&mut self, at: u16, v: u32) {
        for (i, b) in (at..).zip(v.to_le_bytes()) {
            self.put8(i, b);
        }
    }

    fn mask8(&mut self, at: u16, m: u8) {
        if let Some(b) = self.wmask.get_mut(usize::from(at)) {
            *b = m;
        }
    }

    fn mask16(&mut self, at: u16, m: u16) {
        for (i, b) in (at..).zip(m.to_le_bytes()) {
            self.mask8(i, b);
        }
    }

    fn mask32(&mut self, at: u16, m: u32) {
        for (i, b) in (at..).zip(m.to_le_bytes()) {
            self.mask8(i, b);
        }
    }

    /// Declares BAR `index` (`size` a power of two ≥ 16, or ≥ 4 for I/O).
    pub(crate) fn set_bar(&mut self, index: u8, kind: BarKind, size: u64) {
        let i = usize::from(index);
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = BarSlot::Bar { kind, size };
        }
        if matches!(kind, BarKind::Memory64 { .. }) {
            if let Some(slot) = self.slots.get_mut(i + 1) {
                *slot = BarSlot::Upper;
            }
        }
    }

    /// Lays out the capability list from 0x40: the virtio structures, then MSI-X, then (for extended configuration
    /// space) a PCI Express capability. Returns where the interesting ones went.
    pub(crate) fn build_caps(
        &mut self,
        virtio: &[VirtioCap],
        msix_cap: Option<MsixCap>,
        pcie: bool,
    ) -> CapOffsets {
        let mut offsets = CapOffsets::default();
        let mut at = header::LEN;
        let mut prev_next: Option<u16> = None;
        let mut link = |space: &mut Self, at: u16| {
            match prev_next {
                None => space.put8(header::CAPABILITIES_POINTER, lo8(at)),
                Some(p) => space.put8(p, lo8(at)),
            }
            prev_next = Some(at + 1);
        };
        for cap in virtio {
            link(self, at);
            let len = match cap.cfg_type {
                CfgType::Notify => vcap::NOTIFY_SIZE,
                CfgType::PciCfg => vcap::PCI_CFG_SIZE,
                _ => vcap::SIZE,
            };
            self.put8(at + vcap::VNDR, cap_id::VENDOR);
            self.put8(at + vcap::LEN, len);
            self.put8(at + vcap::CFG_TYPE, cap.cfg_type.raw());
            self.put8(at + vcap::BAR, cap.bar);
            self.put32(at + vcap::OFFSET, cap.offset);
            self.put32(at + vcap::LENGTH, cap.length);
            if let Some(m) = cap.multiplier {
                self.put32(at + vcap::NOTIFY_OFF_MULTIPLIER, m);
            }
            if cap.cfg_type == CfgType::PciCfg {
                // §4.1.4.9: cap.bar, cap.length, cap.offset and pci_cfg_data are read-write for the driver.
                self.mask8(at + vcap::BAR, 0xff);
                self.mask32(at + vcap::OFFSET, u32::MAX);
                self.mask32(at + vcap::LENGTH, u32::MAX);
                self.mask32(at + vcap::PCI_CFG_DATA, u32::MAX);
                offsets.pci_cfg = Some(at);
            }
            at += u16::from(len).next_multiple_of(4);
        }
        if let Some(m) = msix_cap {
            link(self, at);
            self.put8(at, cap_id::MSIX);
            self.put16(
                at + msix::CONTROL,
                m.vectors.saturating_sub(1) & msix::CONTROL_TABLE_SIZE,
            );
            self.mask16(
                at + msix::CONTROL,
                msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK,
            );
            self.put32(at + msix::TABLE, m.table_offset | u32::from(m.bar));
            self.put32(at + msix::PBA, m.pba_offset | u32::from(m.bar));
            offsets.msix = Some(at);
            at += u16::from(msix::CAP_LEN);
        }
        if pcie {
            link(self, at);
            // PCI Express capability, version 2, Root Complex Integrated Endpoint (no link registers).
            self.put8(at, cap_id::PCI_EXPRESS);
            self.put16(at + 2, 0x2 | (0x9 << 4));
            // Device Control: the error reporting enables, max payload/read request and the like are plain
            // read-write storage for a virtual function.
            self.mask16(at + 8, 0x7fff);
            at += 0x3c;
        }
        if at > header::LEN {
            let s = self.get16(header::STATUS) | status::CAPABILITIES_LIST;
            self.put16(header::STATUS, s);
        }
        offsets
    }

    // ----- access -----

    pub(crate) fn get8(&self, at: u16) -> u8 {
        self.read_byte(at)
    }

    pub(crate) fn get16(&self, at: u16) -> u16 {
        u16::from_le_bytes([self.read_byte(at), self.read_byte(at.wrapping_add(1))])
    }

    pub(crate) fn get32(&self, at: u16) -> u32 {
        u32::from_le_bytes([
            self.read_byte(at),
            self.read_byte(at.wrapping_add(1)),
            self.read_byte(at.wrapping_add(2)),
            self.read_byte(at.wrapping_add(3)),
        ])
    }

    /// Stores device-owned bytes regardless of the write mask (e.g. the PCI cfg window's data after a BAR read).
    pub(crate) fn store(&mut self, at: u16, data: &[u8]) {
        for (i, b) in (at..).zip(data) {
            self.put8(i, *b);
        }
    }

    /// One byte as the driver reads it. BAR registers are computed (address bits above the size, flag bits below);
    /// bytes beyond configuration space read 0xff (no such register).
    pub(crate) fn read_byte(&self, at: u16) -> u8 {
        if let Some(index) = bar_index(at) {
            let reg = self.bar_value(index);
            return reg
                .to_le_bytes()
                .get(usize::from((at - header::BAR0) % 4))
                .copied()
                .unwrap_or(0);
        }
        self.bytes.get(usize::from(at)).copied().unwrap_or(0xff)
    }

    /// One byte written by the driver: BAR registers keep what was written (masked on read), other bytes change only
    /// in their writable bits.
    pub(crate) fn write_byte(&mut self, at: u16, value: u8) {
        if let Some(index) = bar_index(at) {
            let shift = u32::from((at - header::BAR0) % 4) * 8;
            if let Some(reg) = self.bar_regs.get_mut(usize::from(index)) {
                *reg = (*reg & !(0xff << shift)) | (u32::from(value) << shift);
            }
            return;
        }
        let i = usize::from(at);
        if let (Some(b), Some(m)) = (self.bytes.get_mut(i), self.wmask.get(i)) {
            *b = (*b & !m) | (value & m);
        }
    }

    /// The BAR register as read: sizing works by writing all-ones and reading back the size mask (PCI Local Bus 3.0
    /// §6.2.5.1).
    fn bar_value(&self, index: u8) -> u32 {
        let i = usize::from(index);
        let reg = self.bar_regs.get(i).copied().unwrap_or(0);
        match self.slots.get(i) {
            Some(BarSlot::Bar { kind, size }) => {
                let mask = lo32(!(size.saturating_sub(1)));
                match kind {
                    BarKind::Io => (reg & mask & !bar::IO_FLAGS_MASK) | bar::IO,
                    BarKind::Memory32 => reg & mask & !bar::MEM_FLAGS_MASK,
                    BarKind::Memory64 { prefetchable } => {
                        let flags = bar::MEM_64 | if *prefetchable { bar::PREFETCHABLE } else { 0 };
                        (reg & mask & !bar::MEM_FLAGS_MASK) | flags
                    }
                }
            }
            Some(BarSlot::Upper) => {
                let size = index
                    .checked_sub(1)
                    .and_then(|below| self.slots.get(usize::from(below)))
                    .map_or(0, |s| match s {
                        BarSlot::Bar { size, .. } => *size,
                        _ => 0,
                    });
                reg & hi32(!(size.saturating_sub(1)))
            }
            _ => 0,
        }
    }

    /// The implemented BAR `index`.
    pub(crate) fn bar(&self, index: u8) -> Option<BarInfo> {
        let Some(BarSlot::Bar { kind, size }) = self.slots.get(usize::from(index)).copied() else {
            return None;
        };
        let low = u64::from(self.bar_value(index));
        let address = match kind {
            BarKind::Io => low & !u64::from(bar::IO_FLAGS_MASK),
            BarKind::Memory32 => low & !u64::from(bar::MEM_FLAGS_MASK),
            BarKind::Memory64 { .. } => {
                let high = u64::from(self.bar_value(index.saturating_add(1)));
                (high << 32) | (low & !u64::from(bar::MEM_FLAGS_MASK))
            }
        };
        Some(BarInfo {
            index,
            kind,
            size,
            address,
        })
    }
}

/// The low byte of a configuration space offset (capability pointers are 8-bit).
fn lo8(v: u16) -> u8 {
    v.to_le_bytes().first().copied().unwrap_or(0)
}

/// Which BAR register a configuration offset falls in.
fn bar_index(at: u16) -> Option<u8> {
    let end = header::BAR0 + 4 * u16::from(header::BAR_COUNT);
    if (header::BAR0..end).contains(&at) {
        u8::try_from((at - header::BAR0) / 4).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut s = ConfigSpace::new(
            Ids {
                device_id: 0x1041,
                revision: 1,
                class_code: 0x02_0000,
                subsystem_id: 0x1041,
            },
            false,
        );
        s.set_bar(0, BarKind::Io, 0x40);
        s.set_bar(1, BarKind::Memory32, 0x1000);
        s.set_bar(4, BarKind::Memory64 { prefetchable: true }, 0x4000);
        s
    }

    fn write32(s: &mut ConfigSpace, at: u16, v: u32) {
        for (i, b) in (at..).zip(v.to_le_bytes()) {
            s.write_byte(i, b);
        }
    }

    #[test]
    fn bar_sizing_reads_back_size_masks() {
        let mut s = space();
        for i in 0..6u16 {
            write32(&mut s, header::BAR0 + 4 * i, u32::MAX);
        }
        assert_eq!(s.get32(0x10), 0xffff_ffc1, "I/O, 64 bytes");
        assert_eq!(s.get32(0x14), 0xffff_f000, "mem32, 4 KiB");
        assert_eq!(s.get32(0x18), 0, "unimplemented");
        assert_eq!(s.get32(0x20), 0xffff_c00c, "mem64 prefetchable, 16 KiB");
        assert_eq!(s.get32(0x24), 0xffff_ffff, "upper half");
        write32(&mut s, 0x20, 0xfe00_0000);
        write32(&mut s, 0x24, 0x1);
        assert_eq!(s.bar(4).map(|b| b.address), Some(0x1_fe00_0000));
    }

    #[test]
    fn read_only_bytes_ignore_writes() {
        let mut s = space();
        s.write_byte(0, 0);
        s.write_byte(header::COMMAND, 0xff);
        assert_eq!(s.get16(header::VENDOR_ID), 0x1af4);
        assert_eq!(
            s.get16(header::COMMAND),
            0x47,
            "only implemented bits stick"
        );
        assert_eq!(s.read_byte(0x100), 0xff);
    }
}
