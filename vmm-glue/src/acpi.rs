//! The machine description and the ACPI tables that tell a guest about it.
//!
//! A [`MachineDescription`] lists what the VMM built: RAM size, vCPUs, virtio-mmio devices, an optional PCI host
//! bridge and the COM1 serial port. [`build_tables`] turns it into ACPI 6 tables and [`write_tables`] puts them into
//! guest memory in the BIOS area (`0xE0000..0x100000`), with the RSDP at [`RSDP_ADDRESS`] where Linux finds it by
//! scanning (the Linux boot path also passes it in `boot_params.acpi_rsdp_addr`).
//!
//! Tables (ACPI 6.4 section numbers):
//! - RSDP (§5.2.5, revision 2) → XSDT (§5.2.8);
//! - FADT (§5.2.9) with the **hardware-reduced ACPI** flag: no PM timer, GPEs or SCI; the sleep control and status
//!   registers (§4.8.3.7) are the 8-bit I/O ports [`layout::ACPI_SLEEP_CONTROL_PORT`] and
//!   [`layout::ACPI_SLEEP_STATUS_PORT`]. Linux powers off by writing `SLP_TYP << 2 | SLP_EN` with `SLP_TYP` from the
//!   DSDT's `\_S5_` package ([`layout::ACPI_S5_SLEEP_TYPE`]); see [`is_poweroff_write`]. Before that it writes
//!   `WAK_STS` (0x80) to the status register to clear it.
//! - MADT (§5.2.12): one enabled local APIC per vCPU (APIC ID = ACPI processor UID = vCPU index), the IOAPIC at
//!   [`layout::IOAPIC_ADDRESS`] with GSI base 0, and a local APIC NMI structure for LINT1 of every processor. No
//!   interrupt source overrides: the legacy IRQs map 1:1 to GSIs (a hardware-reduced Linux does not use the PIT).
//! - DSDT (§5.2.11.1): `\_S5_`, and under `\_SB_` every virtio-mmio device (`_HID "LNRO0005"`, the ID Linux's
//!   `virtio_mmio` driver matches, `_CRS` = `Memory32Fixed` + one edge, active-high, exclusive `Interrupt`), COM1
//!   (`PNP0501`) and the PCI root bridge (`PNP0A08`, `_CID PNP0A03`, `_SEG`, `_BBN`, `_CRS` with the bus range, the
//!   0xCF8 configuration ports, the I/O and 32-bit MMIO windows, and a `_PRT` for INTx).
//! - MCFG (PCI Firmware 3.2 §4.1.2) when the bridge has an ECAM region (the region is also reserved in the e820 map
//!   by [`crate::boot`], which Linux requires before it uses MMCONFIG).
//!
//! Every table is checksummed; the layout is validated first, so no input makes table generation panic.
//!
//! ```
//! use vmm_glue::acpi::{build_tables, MachineDescription, MmioDeviceDesc, PciHostBridgeDesc};
//!
//! let machine = MachineDescription::new(256 << 20, 2)
//!     .with_mmio_device(MmioDeviceDesc::slot(0))
//!     .with_pci(PciHostBridgeDesc::standard());
//! let tables = build_tables(&machine).unwrap();
//! assert_eq!(tables.rsdp_address(), 0xe0000);
//! assert!(tables.table(b"DSDT").is_some() && tables.table(b"MCFG").is_some());
//! // With guest memory: `vmm_glue::acpi::write_tables(&memory, &machine)?` returns the RSDP address.
//! ```

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name, Package,
    Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout;
use crate::Error;

/// Where the RSDP goes: the start of the BIOS read-only area Linux scans (`0xE0000..0x100000`, 16-byte aligned).
pub const RSDP_ADDRESS: u64 = 0xe_0000;
/// End (exclusive) of the area the tables are placed in.
pub const ACPI_AREA_END: u64 = 0x10_0000;

/// OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"VIOSDK";
/// OEM table ID in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"VMMGLUE ";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Alignment of each table in guest memory.
const TABLE_ALIGN: u64 = 16;

/// A virtio-mmio device as the guest sees it (virtio 1.3 §4.2.2: the register block at `base`, one interrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MmioDeviceDesc {
    /// Guest-physical base of the register block (below 4 GiB: `_CRS` uses `Memory32Fixed`).
    pub base: u64,
    /// Size of the register block.
    pub size: u64,
    /// The device's interrupt (an IOAPIC pin, edge-triggered, active high).
    pub gsi: u32,
}

impl MmioDeviceDesc {
    /// A device at `base`/`size` interrupting on `gsi`.
    pub fn new(base: u64, size: u64, gsi: u32) -> Self {
        Self { base, size, gsi }
    }

    /// The device in the standard slot `slot` of [`crate::layout`] (`0xd000_0000 + slot * 0x1000`, GSI `5 + slot`).
    pub fn slot(slot: u32) -> Self {
        Self::new(
            layout::mmio_slot_address(slot),
            layout::MMIO_SLOT_SIZE,
            layout::mmio_slot_gsi(slot),
        )
    }
}

/// A PCI INTx routing entry of the root bridge's `_PRT` (ACPI 6.4 §6.2.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PciIntxRoute {
    /// Device number on the root bus (0..32).
    pub device: u8,
    /// Interrupt pin: 0 = INTA# .. 3 = INTD#.
    pub pin: u8,
    /// The GSI the pin is wired to (level-triggered, active low as Linux programs it from a `_PRT`).
    pub gsi: u32,
}

impl PciIntxRoute {
    /// Device `device`, pin `pin` (0 = INTA#) → `gsi`.
    pub fn new(device: u8, pin: u8, gsi: u32) -> Self {
        Self { device, pin, gsi }
    }
}

/// The PCI host bridge (root complex) the guest enumerates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PciHostBridgeDesc {
    /// PCI segment group (`_SEG`, MCFG segment).
    pub segment: u16,
    /// First bus number (`_BBN`).
    pub bus_start: u8,
    /// Last bus number.
    pub bus_end: u8,
    /// Whether the type-1 configuration mechanism (ports 0xCF8..0xCFF) is decoded.
    pub config_ports: bool,
    /// Base of the ECAM region, if any (one MiB per bus from `bus_start`, described by MCFG).
    pub ecam_base: Option<u64>,
    /// The 32-bit MMIO window: base and size (BARs live here).
    pub mmio32: (u64, u64),
    /// The I/O window: base port and size, if any.
    pub io_window: Option<(u16, u32)>,
    /// INTx routes for the `_PRT` (empty: no `_PRT`).
    pub intx: Vec<PciIntxRoute>,
}

impl PciHostBridgeDesc {
    /// The bridge of [`crate::layout`]: segment 0, bus 0, type-1 ports, ECAM at [`layout::PCI_ECAM_BASE`], the
    /// 32-bit MMIO and I/O windows, and INTA# of devices 1..32 routed to [`layout::pci_intx_gsi`].
    pub fn standard() -> Self {
        Self {
            segment: 0,
            bus_start: 0,
            bus_end: 0,
            config_ports: true,
            ecam_base: Some(layout::PCI_ECAM_BASE),
            mmio32: (layout::PCI_MMIO_START, layout::PCI_MMIO_SIZE),
            io_window: Some((layout::PCI_IO_START, layout::PCI_IO_SIZE)),
            intx: (1..layout::PCI_DEVICES)
                .map(|d| PciIntxRoute::new(d, 0, layout::pci_intx_gsi(d)))
                .collect(),
        }
    }

    /// Size of the ECAM region for the bus range (one MiB per bus).
    pub fn ecam_size(&self) -> u64 {
        (u64::from(self.bus_end.saturating_sub(self.bus_start)) + 1) << 20
    }
}

/// A 16550-compatible serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SerialDesc {
    /// Base I/O port (8 ports).
    pub port: u16,
    /// Interrupt line (edge, active high).
    pub gsi: u32,
}

impl SerialDesc {
    /// COM1 of [`crate::layout`]: port 0x3f8, GSI 4.
    pub fn com1() -> Self {
        Self {
            port: layout::SERIAL_PORT,
            gsi: layout::SERIAL_GSI,
        }
    }
}

/// What the VMM built, as far as the guest's firmware tables and memory map are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MachineDescription {
    /// Bytes of RAM (split around the PCI hole by [`layout::ram_regions`]).
    pub mem_size: u64,
    /// Number of vCPUs (1..=255); vCPU `i` has local APIC ID `i`.
    pub vcpus: u8,
    /// virtio-mmio devices, described in the DSDT in this order (`_UID` = index).
    pub mmio_devices: Vec<MmioDeviceDesc>,
    /// The PCI host bridge, if the machine has PCI.
    pub pci: Option<PciHostBridgeDesc>,
    /// The serial port, if any.
    pub serial: Option<SerialDesc>,
}

impl MachineDescription {
    /// A machine with `mem_size` bytes of RAM, `vcpus` vCPUs, COM1, no virtio devices and no PCI.
    pub fn new(mem_size: u64, vcpus: u8) -> Self {
        Self {
            mem_size,
            vcpus,
            mmio_devices: Vec::new(),
            pci: None,
            serial: Some(SerialDesc::com1()),
        }
    }

    /// Adds a virtio-mmio device.
    #[must_use]
    pub fn with_mmio_device(mut self, device: MmioDeviceDesc) -> Self {
        self.mmio_devices.push(device);
        self
    }

    /// Sets the PCI host bridge.
    #[must_use]
    pub fn with_pci(mut self, pci: PciHostBridgeDesc) -> Self {
        self.pci = Some(pci);
        self
    }

    /// Sets (or removes) the serial port.
    #[must_use]
    pub fn with_serial(mut self, serial: Option<SerialDesc>) -> Self {
        self.serial = serial;
        self
    }

    /// Checks the description: vCPU count, devices below 4 GiB and outside RAM, no overlapping ranges, GSIs on the
    /// IOAPIC, sane PCI windows. [`build_tables`] and the boot code call it.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.vcpus == 0 || self.vcpus == u8::MAX {
            return bad(format!("{} vCPUs (1..=254 supported)", self.vcpus));
        }
        // The boot layout needs RAM past 1 MiB (kernel, page tables below it, ACPI in the BIOS area).
        if self.mem_size < 2 << 20 {
            return bad(format!("{:#x} bytes of RAM is too little", self.mem_size));
        }
        // Guest-physical ranges that must not overlap each other (RAM is checked separately).
        let mut ranges: Vec<(u64, u64, String)> = Vec::new();
        let gsi_ok = |gsi: u32| gsi < layout::IOAPIC_PINS;
        if self.mmio_devices.len() > 256 {
            return bad(format!(
                "{} virtio-mmio devices (at most 256)",
                self.mmio_devices.len()
            ));
        }
        for (i, d) in self.mmio_devices.iter().enumerate() {
            let end = d.base.checked_add(d.size);
            if d.size == 0 || end.is_none_or(|e| e > 1 << 32) || d.size > u64::from(u32::MAX) {
                return bad(format!(
                    "virtio-mmio device {i}: range {:#x}+{:#x} not below 4 GiB",
                    d.base, d.size
                ));
            }
            if !gsi_ok(d.gsi) {
                return bad(format!(
                    "virtio-mmio device {i}: GSI {} is not an IOAPIC pin",
                    d.gsi
                ));
            }
            ranges.push((d.base, d.size, format!("virtio-mmio device {i}")));
        }
        if let Some(s) = &self.serial {
            if !gsi_ok(s.gsi) || s.port > u16::MAX - 7 {
                return bad(format!("serial port {:#x} GSI {} invalid", s.port, s.gsi));
            }
        }
        if let Some(p) = &self.pci {
            if p.bus_start > p.bus_end {
                return bad(format!("PCI bus range {}..={}", p.bus_start, p.bus_end));
            }
            let (base, size) = p.mmio32;
            if size == 0
                || size > u64::from(u32::MAX)
                || base.checked_add(size).is_none_or(|e| e > 1 << 32)
            {
                return bad(format!(
                    "PCI 32-bit MMIO window {base:#x}+{size:#x} not below 4 GiB"
                ));
            }
            ranges.push((base, size, "PCI 32-bit MMIO window".into()));
            if let Some(ecam) = p.ecam_base {
                if ecam % (1 << 20) != 0 || ecam.checked_add(p.ecam_size()).is_none() {
                    return bad(format!("ECAM base {ecam:#x} not MiB-aligned"));
                }
                ranges.push((ecam, p.ecam_size(), "PCI ECAM".into()));
            }
            if let Some((io, io_size)) = p.io_window {
                // The WordIO descriptor holds the length in 16 bits.
                if io_size == 0 || io_size > 0xffff || u32::from(io) + io_size > 0x1_0000 {
                    return bad(format!("PCI I/O window {io:#x}+{io_size:#x}"));
                }
            }
            for r in &p.intx {
                if r.device >= layout::PCI_DEVICES || r.pin > 3 || !gsi_ok(r.gsi) {
                    return bad(format!("PCI INTx route {r:?}"));
                }
            }
        }
        ranges.push((layout::IOAPIC_ADDRESS, layout::PAGE_SIZE, "IOAPIC".into()));
        ranges.push((
            layout::LAPIC_ADDRESS,
            layout::PAGE_SIZE,
            "local APIC".into(),
        ));
        ranges.sort_by_key(|r| r.0);
        for w in ranges.windows(2) {
            if let [a, b] = w {
                if a.0 + a.1 > b.0 {
                    return bad(format!("{} overlaps {}", a.2, b.2));
                }
            }
        }
        for (start, size) in layout::ram_regions(self.mem_size) {
            for r in &ranges {
                if r.0 < start + size && start < r.0 + r.1 {
                    return bad(format!("{} overlaps RAM {start:#x}+{size:#x}", r.2));
                }
            }
        }
        Ok(())
    }
}

/// Whether a byte written to the sleep control register ([`layout::ACPI_SLEEP_CONTROL_PORT`]) asks for power-off:
/// `SLP_EN` set and `SLP_TYPx` (bits 2..5) equal to the `\_S5_` value of the DSDT.
pub fn is_poweroff_write(value: u8) -> bool {
    value & layout::ACPI_SLP_EN != 0 && (value >> 2) & 0x7 == layout::ACPI_S5_SLEEP_TYPE
}

/// One ACPI table placed in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcpiTable {
    /// The 4-byte signature (`b"FACP"`, `b"APIC"`, ...).
    pub signature: [u8; 4],
    /// Guest-physical address.
    pub address: u64,
    /// The table, header included.
    pub bytes: Vec<u8>,
}

/// The RSDP and the tables it leads to, with their guest-physical addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    rsdp: Vec<u8>,
    tables: Vec<AcpiTable>,
}

impl AcpiTables {
    /// Guest-physical address of the RSDP.
    pub fn rsdp_address(&self) -> u64 {
        RSDP_ADDRESS
    }

    /// The RSDP bytes (36, revision 2).
    pub fn rsdp(&self) -> &[u8] {
        &self.rsdp
    }

    /// XSDT, DSDT, FADT, MADT and (with ECAM) MCFG, in address order.
    pub fn tables(&self) -> &[AcpiTable] {
        &self.tables
    }

    /// The table with `signature`, if present.
    pub fn table(&self, signature: &[u8; 4]) -> Option<&AcpiTable> {
        self.tables.iter().find(|t| &t.signature == signature)
    }

    /// Writes the RSDP and every table into guest memory.
    pub fn write_to<M: GuestMemoryBackend>(&self, mem: &M) -> Result<(), Error> {
        mem.write_slice(&self.rsdp, GuestAddress(RSDP_ADDRESS))?;
        for t in &self.tables {
            mem.write_slice(&t.bytes, GuestAddress(t.address))?;
        }
        Ok(())
    }
}

/// Builds the tables for `machine` (validated first).
pub fn build_tables(machine: &MachineDescription) -> Result<AcpiTables, Error> {
    machine.validate()?;
    let mut bodies: Vec<([u8; 4], Vec<u8>)> =
        vec![(*b"DSDT", dsdt(machine)?), (*b"APIC", madt(machine)?)];
    if let Some(p) = &machine.pci {
        if let Some(ecam) = p.ecam_base {
            let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
            mcfg.add_ecam(ecam, p.segment, p.bus_start, p.bus_end);
            bodies.push((*b"MCFG", aml_bytes(&mcfg)));
        }
    }

    // XSDT right after the RSDP: its size is known from the number of entries (FADT + the tables above).
    let rsdp_len = u64::try_from(Rsdp::len()).map_err(|_| Error::Config("RSDP size".into()))?;
    let xsdt_addr = align_up(RSDP_ADDRESS + rsdp_len, TABLE_ALIGN);
    let xsdt_len = 36 + 8 * (bodies.len() as u64 + 1);
    let mut next = align_up(xsdt_addr + xsdt_len, TABLE_ALIGN);
    let mut placed: Vec<AcpiTable> = Vec::new();
    for (signature, bytes) in bodies {
        let address = next;
        next = align_up(address + bytes.len() as u64, TABLE_ALIGN);
        placed.push(AcpiTable {
            signature,
            address,
            bytes,
        });
    }
    let dsdt_addr = placed
        .iter()
        .find(|t| &t.signature == b"DSDT")
        .map_or(0, |t| t.address);
    let fadt_addr = next;
    let fadt = fadt(dsdt_addr);
    next = align_up(fadt_addr + fadt.len() as u64, TABLE_ALIGN);
    placed.push(AcpiTable {
        signature: *b"FACP",
        address: fadt_addr,
        bytes: fadt,
    });
    if next > ACPI_AREA_END {
        return Err(Error::Config(format!(
            "ACPI tables end at {next:#x}, past {ACPI_AREA_END:#x}"
        )));
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // FADT first: some OSes expect it as the first XSDT entry.
    xsdt.add_entry(fadt_addr);
    for t in placed
        .iter()
        .filter(|t| &t.signature != b"FACP" && &t.signature != b"DSDT")
    {
        xsdt.add_entry(t.address);
    }
    let xsdt_bytes = aml_bytes(&xsdt);
    // The DSDT is reached through the FADT only, so the XSDT holds one entry fewer than reserved: fine.
    placed.push(AcpiTable {
        signature: *b"XSDT",
        address: xsdt_addr,
        bytes: xsdt_bytes,
    });
    placed.sort_by_key(|t| t.address);

    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        rsdp,
        tables: placed,
    })
}

/// Builds the tables for `machine` and writes them into `mem`; returns the RSDP address.
pub fn write_tables<M: GuestMemoryBackend>(
    mem: &M,
    machine: &MachineDescription,
) -> Result<u64, Error> {
    let tables = build_tables(machine)?;
    tables.write_to(mem)?;
    Ok(tables.rsdp_address())
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn to_u32(v: u64, what: &str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Config(format!("{what} {v:#x} does not fit 32 bits")))
}

/// FADT (ACPI 6.4 §5.2.9): hardware-reduced, sleep registers on I/O ports, 64-bit DSDT pointer.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let sleep_reg = |port: u16| {
        GAS::new(
            GasSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.sleep_control_reg = sleep_reg(layout::ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = sleep_reg(layout::ACPI_SLEEP_STATUS_PORT);
    // IA-PC boot architecture flags (§5.2.9.3): no VGA (bit 2), no CMOS RTC (bit 5); bit 1 (8042) clear.
    b.iapc_boot_arch = ((1u16 << 2) | (1 << 5)).into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"VIOSDK\0\0").into();
    aml_bytes(&b.finalize())
}

/// MADT (ACPI 6.4 §5.2.12).
fn madt(machine: &MachineDescription) -> Result<Vec<u8>, Error> {
    let mut sdt = Sdt::new(*b"APIC", 44, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.write_u32(36, to_u32(layout::LAPIC_ADDRESS, "LAPIC address")?);
    sdt.write_u32(40, 0); // flags: no PCAT_COMPAT (hardware-reduced: the 8259s are not used)
    let mut body = Vec::new();
    for cpu in 0..machine.vcpus {
        // Processor Local APIC (§5.2.12.2): type 0, length 8, UID, APIC ID, flags (enabled).
        body.extend_from_slice(&[0, 8, cpu, cpu]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC (§5.2.12.3): type 1, length 12, ID 0, reserved, address, GSI base 0.
    body.extend_from_slice(&[1, 12, 0, 0]);
    body.extend_from_slice(&to_u32(layout::IOAPIC_ADDRESS, "IOAPIC address")?.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Local APIC NMI (§5.2.12.7): type 4, length 6, all processors (0xff), flags 0b0101 (edge, active high), LINT1.
    body.extend_from_slice(&[4, 6, 0xff, 0x5, 0x0, 1]);
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

/// DSDT (ACPI 6.4 §5.2.11.1) definition block.
fn dsdt(machine: &MachineDescription) -> Result<Vec<u8>, Error> {
    let mut sb = Vec::new();
    for (i, d) in machine.mmio_devices.iter().enumerate() {
        sb.extend_from_slice(&mmio_device_aml(i, d)?);
    }
    if let Some(s) = &machine.serial {
        let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
        let uid = Name::new(Path::new("_UID"), &0u8);
        let io = IO::new(s.port, s.port, 1, 8);
        let irq = Interrupt::new(true, true, false, false, s.gsi);
        let rt = ResourceTemplate::new(vec![&io, &irq]);
        let crs = Name::new(Path::new("_CRS"), &rt);
        Device::new(Path::new("COM1"), vec![&hid, &uid, &crs]).to_aml_bytes(&mut sb);
    }
    if let Some(p) = &machine.pci {
        pci_root_aml(p, &mut sb)?;
    }
    let mut body = Vec::new();
    body.extend_from_slice(&Scope::raw(Path::new("\\_SB_"), sb));
    // \_S5_: Package { SLP_TYPa, SLP_TYPb, reserved, reserved }.
    let s5 = layout::ACPI_S5_SLEEP_TYPE;
    let zero = 0u8;
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&s5, &s5, &zero, &zero]),
    )
    .to_aml_bytes(&mut body);

    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

/// `Device (VRxx)` for virtio-mmio device `index` (what Linux's `virtio_mmio` ACPI probe wants).
fn mmio_device_aml(index: usize, d: &MmioDeviceDesc) -> Result<Vec<u8>, Error> {
    let name = format!("VR{index:02X}");
    let uid_v = u32::try_from(index).map_err(|_| Error::Config("too many devices".into()))?;
    let hid = Name::new(Path::new("_HID"), &"LNRO0005");
    let uid = Name::new(Path::new("_UID"), &uid_v);
    let mem = Memory32Fixed::new(
        true,
        to_u32(d.base, "virtio-mmio base")?,
        to_u32(d.size, "virtio-mmio size")?,
    );
    let irq = Interrupt::new(true, true, false, false, d.gsi);
    let rt = ResourceTemplate::new(vec![&mem, &irq]);
    let crs = Name::new(Path::new("_CRS"), &rt);
    let mut out = Vec::new();
    Device::new(Path::new(&name), vec![&hid, &uid, &crs]).to_aml_bytes(&mut out);
    Ok(out)
}

/// `Device (PCI0)`: the root bridge (PCI Firmware 3.2 §4.1; ACPI 6.4 §6.1.5 `_HID`, §6.5.5 `_BBN`, §6.5.6 `_SEG`).
fn pci_root_aml(p: &PciHostBridgeDesc, sb: &mut Vec<u8>) -> Result<(), Error> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let adr = Name::new(Path::new("_ADR"), &0u8);
    let seg = Name::new(Path::new("_SEG"), &p.segment);
    let uid = Name::new(Path::new("_UID"), &p.segment);
    let bbn = Name::new(Path::new("_BBN"), &p.bus_start);

    let buses = AddressSpace::new_bus_number(u16::from(p.bus_start), u16::from(p.bus_end));
    let cfg = IO::new(
        layout::PCI_CONFIG_ADDRESS_PORT,
        layout::PCI_CONFIG_ADDRESS_PORT,
        1,
        8,
    );
    let io = match p.io_window {
        Some((base, size)) => {
            let last = u32::from(base) + size - 1;
            let last = u16::try_from(last).map_err(|_| Error::Config("PCI I/O window".into()))?;
            Some(AddressSpace::new_io(base, last, None))
        }
        None => None,
    };
    let (mbase, msize) = p.mmio32;
    let mmio = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        to_u32(mbase, "PCI MMIO window")?,
        to_u32(mbase + msize - 1, "PCI MMIO window end")?,
        None,
    );
    let mut res: Vec<&dyn Aml> = vec![&buses];
    if p.config_ports {
        res.push(&cfg);
    }
    if let Some(io) = &io {
        res.push(io);
    }
    res.push(&mmio);
    let rt = ResourceTemplate::new(res);
    let crs = Name::new(Path::new("_CRS"), &rt);

    // _PRT entries: Package { Address (device << 16 | 0xFFFF), Pin, Source (0 = GSI), Source Index (the GSI) }.
    let entries: Vec<(u32, u8, u8, u32)> = p
        .intx
        .iter()
        .map(|r| ((u32::from(r.device) << 16) | 0xffff, r.pin, 0u8, r.gsi))
        .collect();
    let pkgs: Vec<Package<'_>> = entries
        .iter()
        .map(|(a, pin, src, gsi)| Package::new(vec![a, pin, src, gsi]))
        .collect();
    let prt_pkg = Package::new(pkgs.iter().map(|p| p as &dyn Aml).collect());
    let prt = Name::new(Path::new("_PRT"), &prt_pkg);

    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs];
    if !entries.is_empty() {
        children.push(&prt);
    }
    Device::new(Path::new("PCI0"), children).to_aml_bytes(sb);
    Ok(())
}
