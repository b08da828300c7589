//! The fixed machine layout of a vmm-glue VM (x86_64): where RAM, devices, interrupt lines and the control ports are.
//!
//! These constants are a contract with the guest side (the ACPI tables in [`crate::acpi`], the bare-metal guest kernel
//! of the examples, and tests) and must not change silently.
//!
//! ```text
//! guest-physical
//! 0x0000_0000 .. mem_below_4g        RAM (at most up to PCI_MMIO_START; the rest of RAM goes above 4 GiB)
//! 0xc000_0000 .. 0xd000_0000         PCI 32-bit MMIO window (BARs pre-assigned by the VMM, no firmware)
//! 0xd000_0000 + i * 0x1000           virtio-mmio slot i (0x1000 bytes), interrupt GSI 5 + i (edge)
//! 0xe000_0000 .. 0xe010_0000         PCI ECAM for bus 0 (MCFG)
//! 0xfec0_0000                        IOAPIC
//! 0xfee0_0000                        local APIC
//! 0x1_0000_0000 ..                   RAM above 4 GiB
//!
//! port I/O
//! 0x0064   i8042 command: write 0xFE = reset (VM ends with ExitReason::Reset)
//! 0x00f4   exit port (QEMU isa-debug-exit): 1/2/4-byte write of v ends the VM, exit status (v << 1) | 1
//! 0x03c0   ACPI hardware-reduced sleep control register: write with SLP_EN (bit 5) = power off
//! 0x03c1   ACPI hardware-reduced sleep status register (reads 0)
//! 0x03f8   COM1 (8250 UART), GSI 4
//! 0x0cf8   PCI type-1 configuration address, 0x0cfc..0x0cff data
//! 0xc000 .. 0x10000                  PCI I/O window (legacy virtio I/O BARs)
//! ```
//!
//! Interrupts: GSIs 0..24 are the IOAPIC pins (0..16 also the PIC); PCI INTx of device `d` on bus 0 is GSI
//! [`pci_intx_gsi`]`(d)` (level, active high as KVM's IOAPIC sees it); MSI routes take GSIs from [`MSI_GSI_BASE`] up.

/// Size of a page.
pub const PAGE_SIZE: u64 = 0x1000;

/// Start of the PCI 32-bit MMIO window: RAM below 4 GiB ends here at the latest.
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// Size of the PCI 32-bit MMIO window.
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
/// End (exclusive) of the PCI 32-bit MMIO window.
pub const PCI_MMIO_END: u64 = PCI_MMIO_START + PCI_MMIO_SIZE;

/// Base of the virtio-mmio device slots.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Number of virtio-mmio slots (GSIs 5..=12, below the PCI INTx GSIs).
pub const MMIO_SLOTS: u32 = 8;
/// GSI of virtio-mmio slot 0 (slot `i` uses `MMIO_GSI_BASE + i`), edge-triggered.
pub const MMIO_GSI_BASE: u32 = 5;

/// Guest-physical address of virtio-mmio slot `slot`.
pub const fn mmio_slot_address(slot: u32) -> u64 {
    MMIO_BASE + slot as u64 * MMIO_SLOT_SIZE
}

/// GSI of virtio-mmio slot `slot`.
pub const fn mmio_slot_gsi(slot: u32) -> u32 {
    MMIO_GSI_BASE + slot
}

/// Base of the PCI ECAM (enhanced configuration access) region, bus 0 only.
pub const PCI_ECAM_BASE: u64 = 0xe000_0000;
/// Size of the ECAM region (one bus: 32 devices × 8 functions × 4 KiB).
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;

/// IOAPIC base address.
pub const IOAPIC_ADDRESS: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const LAPIC_ADDRESS: u64 = 0xfee0_0000;
/// Number of IOAPIC pins (GSIs 0..24).
pub const IOAPIC_PINS: u32 = 24;

/// Where KVM places the three-page TSS (`KVM_SET_TSS_ADDR`), above the local APIC, below 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Where KVM places the identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Start of RAM above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// i8042 command port: writing [`I8042_RESET`] resets the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 data port (reads 0).
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042 "pulse reset line" command.
pub const I8042_RESET: u8 = 0xfe;

/// The x86 reset vector (`F000:FFF0`). There is no firmware, so a guest that "reboots through the BIOS" (Linux does
/// on a hardware-reduced ACPI machine without EFI: its reboot type becomes EFI, then BIOS, and it jumps here in real
/// mode) finds [`Vm::install_reset_vector`](crate::Vm::install_reset_vector)'s stub, which resets through the
/// i8042.
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// Exit port, compatible with QEMU's `isa-debug-exit` (`iobase=0xf4`): a write of `v` ends the VM with
/// `ExitReason::ExitPort(v)`; mini-vmm then exits with status `(v << 1) | 1`.
pub const EXIT_PORT: u16 = 0xf4;

/// ACPI hardware-reduced sleep control register (FADT `SLEEP_CONTROL_REG`, 8-bit system I/O).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI hardware-reduced sleep status register (FADT `SLEEP_STATUS_REG`, 8-bit system I/O).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// SLP_EN bit of the sleep control register (ACPI 6.4 §4.8.3.7): set with SLP_TYPx = 5 (S5) to power off.
pub const ACPI_SLP_EN: u8 = 1 << 5;
/// The S5 sleep type value the DSDT's `_S5_` package reports (written to SLP_TYPx, bits 2..5).
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// COM1 base port.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const SERIAL_GSI: u32 = 4;

/// PCI type-1 configuration address port.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// PCI type-1 configuration data port (4 bytes, 0xcfc..0xd00).
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Start of the PCI I/O window.
pub const PCI_IO_START: u16 = 0xc000;
/// Size of the PCI I/O window (to the end of the 64 KiB I/O space).
pub const PCI_IO_SIZE: u32 = 0x4000;
/// Number of device slots on bus 0 (device 0 is the host bridge).
pub const PCI_DEVICES: u8 = 32;
/// First GSI used for PCI INTx.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of GSIs used for PCI INTx (16..24).
pub const PCI_INTX_GSIS: u32 = 8;

/// GSI of INTA# of PCI device `device` on bus 0 (as in a `_PRT`: device `d`, pin INTA → this GSI).
pub const fn pci_intx_gsi(device: u8) -> u32 {
    PCI_INTX_GSI_BASE + (device as u32) % PCI_INTX_GSIS
}

/// First GSI handed out for MSI routes (above the IOAPIC pins).
pub const MSI_GSI_BASE: u32 = IOAPIC_PINS;

/// Guest-physical address and size of RAM regions for `mem_size` bytes of RAM: below the PCI window first, the rest
/// from 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(PCI_MMIO_START);
    let mut regions = vec![(0, low)];
    if mem_size > low {
        regions.push((HIGH_RAM_START, mem_size - low));
    }
    regions
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::assertions_on_constants,
    clippy::cast_possible_truncation,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn layout_regions_do_not_overlap() {
        assert_eq!(mmio_slot_address(0), 0xd000_0000);
        assert_eq!(mmio_slot_gsi(3), 8);
        assert!(mmio_slot_address(MMIO_SLOTS) <= PCI_ECAM_BASE);
        assert!(PCI_MMIO_END <= MMIO_BASE);
        assert!(mmio_slot_gsi(MMIO_SLOTS - 1) < PCI_INTX_GSI_BASE);
        assert!(KVM_IDENTITY_MAP_ADDRESS >= LAPIC_ADDRESS + PAGE_SIZE);
        assert!(KVM_TSS_ADDRESS + 3 * PAGE_SIZE <= 1 << 32);
        assert_eq!(ram_regions(1 << 30), vec![(0, 1 << 30)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, PCI_MMIO_START),
                (HIGH_RAM_START, (4 << 30) - PCI_MMIO_START)
            ]
        );
    }
}
