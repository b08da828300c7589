//! Loading a guest kernel and preparing the boot vCPU (x86_64).
//!
//! Two kinds of kernel are booted, both entered directly in 64-bit long mode (no firmware):
//! - a Linux **bzImage** ([`load_linux`]): linux-loader copies the protected-mode kernel to 1 MiB, we fill the zero
//!   page (`boot_params`: setup header, command line, initrd, e820 map, `acpi_rsdp_addr`) and enter at the 64-bit
//!   entry point (`load address + 0x200`, Linux `Documentation/x86/boot.rst` "64-bit boot protocol") with `rsi` =
//!   zero page;
//! - a bare-metal **ELF** ([`load_elf`]): the `PT_LOAD` segments go to their physical addresses (at or above 1 MiB),
//!   entry at `e_entry`, same register state (a zero page with the e820 map and command line is also provided in
//!   `rsi`; a PVH note, if present, is ignored).
//!
//! Both get the same low-memory boot structures ([`write_long_mode_structures`]): a GDT with the Linux boot
//! selectors (`__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18) and a 64-bit TSS (0x20), an empty IDT, and identity page tables
//! mapping the first 4 GiB with 2 MiB pages.
//!
//! Fixed low-memory layout (all below the EBDA at 0x9fc00, which Linux keeps reserved):
//!
//! | address | what |
//! |---|---|
//! | [`GDT_ADDRESS`] 0x500 | GDT (null, null, code64, data, TSS) |
//! | [`IDT_ADDRESS`] 0x540 | IDT (limit 0: the guest installs its own) |
//! | [`TSS_ADDRESS`] 0x600 | the 104-byte TSS |
//! | [`ZERO_PAGE_ADDRESS`] 0x7000 | `boot_params` |
//! | [`BOOT_STACK_POINTER`] 0x8ff0 | initial `rsp` |
//! | [`PML4_ADDRESS`] 0x9000, [`PDPT_ADDRESS`] 0xa000, [`PD_ADDRESS`] 0xb000..0xf000 | identity page tables |
//! | [`CMDLINE_ADDRESS`] 0x20000 | kernel command line |
//! | 0xe0000..0x100000 | ACPI tables ([`crate::acpi`]) |
//!
//! ## vCPUs
//! [`configure_vcpu`] prepares every vCPU; it needs the in-kernel irqchip (`KVM_CREATE_IRQCHIP`) to exist first. It
//! sets CPUID (`KVM_GET_SUPPORTED_CPUID` with the APIC IDs fixed for vCPU `index`), the boot MSRs and the local APIC
//! LVTs (LINT0 = ExtINT, LINT1 = NMI); for vCPU 0 (the BSP) also the registers, segments, control registers and FPU of
//! the 64-bit entry. The APs need nothing else: KVM creates every vCPU other than the BSP (vCPU id 0) in
//! `KVM_MP_STATE_UNINITIALIZED` when the irqchip is in the kernel, so calling `KVM_RUN` on an AP blocks in the kernel
//! until the guest's INIT/SIPI (sent through the emulated local APIC) starts it in real mode at the SIPI vector.
//! [`configure_vcpu`] also sets that state explicitly for APs. The VMM must therefore only create the irqchip before
//! the vCPUs, configure each vCPU before its first `KVM_RUN`, and run every vCPU thread; Linux finds the APs through
//! the MADT.
//!
//! With the default KVM GSI routing, GSIs 0..16 also drive the in-kernel 8259 PIC, which a hardware-reduced-ACPI
//! Linux never programs (and which KVM creates unmasked), while LINT0 is ExtINT: call [`mask_legacy_pic`] after
//! `KVM_CREATE_IRQCHIP` so that device interrupts below GSI 16 reach the guest only through the IOAPIC.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use kvm_bindings::{
    kvm_fpu, kvm_irqchip, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::acpi::{self, MachineDescription};
use crate::layout;
use crate::Error;

/// Guest-physical address of the GDT.
pub const GDT_ADDRESS: u64 = 0x500;
/// Guest-physical address of the (empty) IDT.
pub const IDT_ADDRESS: u64 = 0x540;
/// Guest-physical address of the TSS.
pub const TSS_ADDRESS: u64 = 0x600;
/// Guest-physical address of the zero page (`boot_params`), passed in `rsi`.
pub const ZERO_PAGE_ADDRESS: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest-physical address of the PML4.
pub const PML4_ADDRESS: u64 = 0x9000;
/// Guest-physical address of the page-directory-pointer table.
pub const PDPT_ADDRESS: u64 = 0xa000;
/// Guest-physical address of the first of the four page directories (2 MiB pages).
pub const PD_ADDRESS: u64 = 0xb000;
/// How much the boot page tables identity-map.
pub const IDENTITY_MAP_SIZE: u64 = 1 << 32;
/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDRESS: u64 = 0x2_0000;
/// Room for the command line (NUL included).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the extended BIOS data area: RAM below 1 MiB ends here in the e820 map.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where high memory (and the bzImage's protected-mode kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;

/// GDT selector of the 64-bit code segment (Linux `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// GDT selector of the data segments (Linux `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// GDT selector of the TSS.
pub const BOOT_TSS: u16 = 0x20;

const PAGE: u64 = layout::PAGE_SIZE;
/// Size of a 64-bit TSS without an I/O bitmap.
const TSS_SIZE: u64 = 104;
/// `setup_header.header` magic "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `boot_flag` magic.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// `type_of_loader` for an unregistered boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
const STARTUP_64_OFFSET: u64 = 0x200;

/// What kind of kernel image a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelKind {
    /// A Linux bzImage (setup header magic "HdrS" at 0x202).
    BzImage,
    /// An ELF64 executable (a bare-metal guest kernel, or an uncompressed `vmlinux`).
    Elf,
}

/// Looks at the first bytes of `image` to tell an ELF from a bzImage; rewinds it afterwards.
pub fn detect_kernel_kind<R: Read + Seek>(image: &mut R) -> Result<KernelKind, Error> {
    let mut head = [0u8; 0x206];
    image.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        let Some(rest) = head.get_mut(n..) else { break };
        match image.read(rest)? {
            0 => break,
            r => n += r,
        }
    }
    image.seek(SeekFrom::Start(0))?;
    if head.starts_with(b"\x7fELF") {
        return Ok(KernelKind::Elf);
    }
    if n >= 0x206 && head.get(0x202..0x206) == Some(&HDRS_MAGIC.to_le_bytes()[..]) {
        return Ok(KernelKind::BzImage);
    }
    Err(Error::Boot(
        "kernel image is neither ELF nor a bzImage (no \"HdrS\" at 0x202)".into(),
    ))
}

/// Type of an e820 range (Linux `E820_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved (firmware tables, ECAM).
    Reserved,
}

impl E820Kind {
    /// The numeric type in `boot_e820_entry`.
    pub fn raw(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Kind.
    pub kind: E820Kind,
}

/// The guest's e820 memory map for `machine`, sorted, without overlaps: RAM below the EBDA, the ACPI area
/// `0xe0000..0x100000` reserved, RAM from 1 MiB to the PCI hole, the ECAM region reserved if there is one, RAM
/// above 4 GiB. The PCI MMIO window, the virtio-mmio slots, the IOAPIC and the local APIC are holes (no entry).
pub fn e820_map(machine: &MachineDescription) -> Result<Vec<E820Entry>, Error> {
    machine.validate()?;
    let mut map = Vec::new();
    let e = |addr, size, kind| E820Entry { addr, size, kind };
    for (start, size) in layout::ram_regions(machine.mem_size) {
        if start == 0 {
            if size <= HIMEM_START {
                return Err(Error::Config(format!(
                    "{size:#x} bytes of low RAM: need more than 1 MiB"
                )));
            }
            map.push(e(0, EBDA_START, E820Kind::Ram));
            map.push(e(
                acpi::RSDP_ADDRESS,
                acpi::ACPI_AREA_END - acpi::RSDP_ADDRESS,
                E820Kind::Reserved,
            ));
            map.push(e(HIMEM_START, size - HIMEM_START, E820Kind::Ram));
        } else {
            map.push(e(start, size, E820Kind::Ram));
        }
    }
    if let Some(p) = &machine.pci {
        if let Some(ecam) = p.ecam_base {
            map.push(e(ecam, p.ecam_size(), E820Kind::Reserved));
        }
    }
    map.sort_by_key(|x| x.addr);
    for w in map.windows(2) {
        if let [a, b] = w {
            if a.addr + a.size > b.addr {
                return Err(Error::Config(format!(
                    "e820 ranges overlap: {a:?} and {b:?}"
                )));
            }
        }
    }
    Ok(map)
}

/// Where things ended up, and how to enter the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BootInfo {
    /// What was loaded.
    pub kind: KernelKind,
    /// 64-bit entry point (`rip`).
    pub entry: u64,
    /// The zero page (`rsi`).
    pub boot_params: u64,
    /// Initial stack pointer.
    pub stack_pointer: u64,
    /// First byte of the loaded kernel.
    pub kernel_start: u64,
    /// End (exclusive) of the loaded kernel image.
    pub kernel_end: u64,
    /// Initrd address and size.
    pub initrd: Option<(u64, u64)>,
    /// Address of the ACPI RSDP.
    pub rsdp: u64,
}

/// Opens `kernel` (and `initrd`), detects its kind and boots it as [`load_linux`] or [`load_elf`] would (ACPI tables
/// included). An initrd with an ELF kernel is refused.
pub fn load_kernel_file<M: GuestMemoryBackend>(
    mem: &M,
    machine: &MachineDescription,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootInfo, Error> {
    let mut k = File::open(kernel)?;
    match detect_kernel_kind(&mut k)? {
        KernelKind::BzImage => match initrd {
            Some(p) => {
                let mut i = File::open(p)?;
                load_linux(mem, machine, &mut k, Some(&mut i), cmdline)
            }
            None => load_linux::<M, File, File>(mem, machine, &mut k, None, cmdline),
        },
        KernelKind::Elf => {
            if initrd.is_some() {
                return Err(Error::Config("an initrd needs a bzImage kernel".into()));
            }
            load_elf(mem, machine, &mut k, cmdline)
        }
    }
}

/// Loads a bzImage (with an optional initrd and a command line), writes the ACPI tables, the e820 map, the zero page
/// and the long-mode boot structures. The initrd goes as high as the kernel allows below the PCI hole.
pub fn load_linux<M, F, I>(
    mem: &M,
    machine: &MachineDescription,
    kernel: &mut F,
    initrd: Option<&mut I>,
    cmdline: &str,
) -> Result<BootInfo, Error>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
    I: Read + ReadVolatile + Seek,
{
    let e820 = e820_map(machine)?;
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))?;
    let mut hdr: setup_header = loaded
        .setup_header
        .ok_or_else(|| Error::Boot("bzImage without a setup header".into()))?;
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::Boot(format!(
            "kernel has no 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})"
        )));
    }
    let kernel_start = loaded.kernel_load.0;
    let kernel_end = loaded.kernel_end;
    // The decompressed kernel needs init_size bytes from its preferred address (or from the load address).
    let init_end = u64::from(hdr.init_size)
        + kernel_start.max(if version >= 0x020a {
            hdr.pref_address
        } else {
            0
        });
    let low_ram_end = machine.mem_size.min(layout::PCI_MMIO_START);
    if init_end.max(kernel_end) > low_ram_end {
        return Err(Error::Boot(format!(
            "kernel needs RAM up to {:#x}, RAM below 4 GiB ends at {low_ram_end:#x}",
            init_end.max(kernel_end)
        )));
    }

    // `cmdline_size` (protocol 2.06+) is the longest command line without its NUL; older kernels take 255 bytes.
    let cmdline_max = if version >= 0x0206 {
        usize::try_from(hdr.cmdline_size).map_or(usize::MAX, |n| n.saturating_add(1))
    } else {
        256
    };
    write_cmdline(mem, cmdline, cmdline_max)?;

    let initrd_range = match initrd {
        Some(image) => {
            let size = image.seek(SeekFrom::End(0))?;
            image.seek(SeekFrom::Start(0))?;
            let max = u64::from(hdr.initrd_addr_max);
            let top = low_ram_end.min(max.saturating_add(1));
            let start = top
                .checked_sub(size)
                .map(|s| s & !(PAGE - 1))
                .filter(|s| *s >= init_end.max(kernel_end))
                .ok_or_else(|| {
                    Error::Boot(format!(
                        "initrd of {size:#x} bytes does not fit between the kernel ({:#x}) and {top:#x}",
                        init_end.max(kernel_end)
                    ))
                })?;
            let len = usize::try_from(size).map_err(|_| Error::Boot("initrd too large".into()))?;
            mem.read_exact_volatile_from(GuestAddress(start), image, len)?;
            Some((start, size))
        }
        None => None,
    };

    let rsdp = acpi::write_tables(mem, machine)?;
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.boot_flag = BOOT_FLAG_MAGIC;
    hdr.cmd_line_ptr = to_u32(CMDLINE_ADDRESS)?;
    if let Some((start, size)) = initrd_range {
        hdr.ramdisk_image = to_u32(start)?;
        hdr.ramdisk_size = to_u32(size)?;
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    if version >= 0x020e {
        params.acpi_rsdp_addr = rsdp;
    }
    fill_e820(&mut params, &e820)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDRESS))?;
    write_long_mode_structures(mem)?;

    Ok(BootInfo {
        kind: KernelKind::BzImage,
        entry: kernel_start + STARTUP_64_OFFSET,
        boot_params: ZERO_PAGE_ADDRESS,
        stack_pointer: BOOT_STACK_POINTER,
        kernel_start,
        kernel_end,
        initrd: initrd_range,
        rsdp,
    })
}

/// Loads an ELF64 x86-64 kernel: every `PT_LOAD` segment at its physical address (which must be at or above
/// [`HIMEM_START`] and inside RAM), BSS zeroed; writes the ACPI tables, a zero page (e820 map, command line pointer,
/// `acpi_rsdp_addr`) and the long-mode boot structures. The entry point is `e_entry`, entered in 64-bit mode.
pub fn load_elf<M, F>(
    mem: &M,
    machine: &MachineDescription,
    kernel: &mut F,
    cmdline: &str,
) -> Result<BootInfo, Error>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let e820 = e820_map(machine)?;
    let segments = elf_load_segments(kernel)?;
    let ram = layout::ram_regions(machine.mem_size);
    let mut kernel_start = u64::MAX;
    for s in &segments {
        let end = s.paddr.checked_add(s.memsz);
        let in_ram = ram
            .iter()
            .any(|(b, l)| s.paddr >= *b && end.is_some_and(|e| e <= b + l));
        if s.paddr < HIMEM_START || !in_ram || s.filesz > s.memsz {
            return Err(Error::Boot(format!(
                "ELF segment at {:#x}+{:#x} is not in RAM above 1 MiB",
                s.paddr, s.memsz
            )));
        }
        kernel_start = kernel_start.min(s.paddr);
    }
    if segments.is_empty() {
        return Err(Error::Boot("ELF has no PT_LOAD segment".into()));
    }
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))?;
    // linux-loader copies p_filesz bytes; zero the rest of each segment (BSS).
    let zeros = [0u8; 4096];
    for s in &segments {
        let mut at = s.paddr + s.filesz;
        let end = s.paddr + s.memsz;
        while at < end {
            let n = usize::try_from((end - at).min(zeros.len() as u64)).unwrap_or(zeros.len());
            mem.write_slice(zeros.get(..n).unwrap_or(&zeros), GuestAddress(at))?;
            at += n as u64;
        }
    }

    write_cmdline(mem, cmdline, CMDLINE_MAX_SIZE)?;
    let rsdp = acpi::write_tables(mem, machine)?;
    let mut params = boot_params::default();
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = to_u32(CMDLINE_ADDRESS)?;
    params.hdr.cmdline_size = u32::try_from(cmdline.len()).unwrap_or(u32::MAX);
    params.acpi_rsdp_addr = rsdp;
    fill_e820(&mut params, &e820)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDRESS))?;
    write_long_mode_structures(mem)?;

    Ok(BootInfo {
        kind: KernelKind::Elf,
        entry: loaded.kernel_load.0,
        boot_params: ZERO_PAGE_ADDRESS,
        stack_pointer: BOOT_STACK_POINTER,
        kernel_start,
        kernel_end: loaded.kernel_end,
        initrd: None,
        rsdp,
    })
}

/// A `PT_LOAD` segment of an ELF file.
#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Reads and checks the ELF header (ELF64, little endian, x86-64, executable) and returns the `PT_LOAD` segments.
fn elf_load_segments<F: Read + Seek>(f: &mut F) -> Result<Vec<LoadSegment>, Error> {
    let bad = |m: &str| Error::Boot(format!("ELF: {m}"));
    let mut eh = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut eh).map_err(|_| bad("short header"))?;
    let u16_at = |b: &[u8], o: usize| {
        b.get(o..o + 2)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u16::from_le_bytes)
    };
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    let u64_at = |b: &[u8], o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    // e_ident: magic, EI_CLASS = ELFCLASS64 (2), EI_DATA = ELFDATA2LSB (1); e_type EXEC (2); e_machine x86-64 (62).
    if eh.get(..4) != Some(b"\x7fELF") || eh.get(4) != Some(&2) || eh.get(5) != Some(&1) {
        return Err(bad("not a little-endian ELF64 file"));
    }
    if u16_at(&eh, 0x10) != 2 || u16_at(&eh, 0x12) != 62 {
        return Err(bad("not an x86-64 executable"));
    }
    let phoff = u64_at(&eh, 0x20);
    let phentsize = u16_at(&eh, 0x36);
    let phnum = u16_at(&eh, 0x38);
    if phentsize != 56 {
        return Err(bad("unexpected program header size"));
    }
    let mut segs = Vec::new();
    let mut ph = [0u8; 56];
    for i in 0..u64::from(phnum) {
        f.seek(SeekFrom::Start(phoff.saturating_add(i * 56)))?;
        f.read_exact(&mut ph)
            .map_err(|_| bad("short program header table"))?;
        // p_type PT_LOAD = 1; linux-loader skips segments with p_filesz == 0, so do we (their BSS is zero RAM).
        if u32_at(&ph, 0) == 1 && u64_at(&ph, 0x20) != 0 {
            segs.push(LoadSegment {
                paddr: u64_at(&ph, 0x18),
                filesz: u64_at(&ph, 0x20),
                memsz: u64_at(&ph, 0x28),
            });
        }
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(segs)
}

fn to_u32(v: u64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Boot(format!("{v:#x} does not fit 32 bits")))
}

/// Writes `cmdline` and its NUL at [`CMDLINE_ADDRESS`]; `max` counts the NUL.
fn write_cmdline<M: GuestMemoryBackend>(mem: &M, cmdline: &str, max: usize) -> Result<(), Error> {
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::Config("command line contains NUL".into()));
    }
    let limit = max.min(CMDLINE_MAX_SIZE);
    if cmdline.len() + 1 > limit {
        return Err(Error::Config(format!(
            "command line of {} bytes; the kernel takes at most {}",
            cmdline.len(),
            limit.saturating_sub(1)
        )));
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_ADDRESS))?;
    mem.write_slice(&[0], GuestAddress(CMDLINE_ADDRESS + cmdline.len() as u64))?;
    Ok(())
}

fn fill_e820(params: &mut boot_params, map: &[E820Entry]) -> Result<(), Error> {
    let mut table = params.e820_table;
    if map.len() > table.len() {
        return Err(Error::Config("too many e820 entries".into()));
    }
    for (slot, e) in table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.raw(),
        };
    }
    params.e820_table = table;
    params.e820_entries = u8::try_from(map.len()).unwrap_or(u8::MAX);
    Ok(())
}

/// Encodes a segment descriptor (Intel SDM Vol. 3 §3.4.5): `flags` holds the access byte (bits 0..8) and the
/// G/D/L/AVL nibble (bits 12..16).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The GDT: null, null, 64-bit code (0x10), data (0x18), 64-bit TSS (0x20, two slots).
fn gdt() -> [u64; 6] {
    let tss_base = u32::try_from(TSS_ADDRESS).unwrap_or(0);
    let tss_limit = u32::try_from(TSS_SIZE - 1).unwrap_or(0);
    [
        0,
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // P, DPL 0, code exec/read accessed, G, L
        gdt_entry(0xc093, 0, 0xfffff), // P, DPL 0, data read/write accessed, G, D/B
        gdt_entry(0x008b, tss_base, tss_limit), // P, 64-bit TSS (busy)
        0,                             // upper half of the TSS descriptor (base bits 32..64)
    ]
}

/// `kvm_segment` matching a GDT entry.
fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bits = |shift: u32, mask: u64| u8::try_from((entry >> shift) & mask).unwrap_or(0);
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = u32::try_from((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)).unwrap_or(0);
    let g = bits(55, 1);
    kvm_segment {
        base,
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, the IDT, the TSS and the identity page tables (first 4 GiB, 2 MiB pages) into guest memory.
pub fn write_long_mode_structures<M: GuestMemoryBackend>(mem: &M) -> Result<(), Error> {
    for (i, e) in gdt().iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDRESS + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDRESS))?;
    mem.write_slice(&[0u8; 104], GuestAddress(TSS_ADDRESS))?;
    // I/O map base past the TSS limit: no I/O permission bitmap.
    mem.write_obj(104u16, GuestAddress(TSS_ADDRESS + 102))?;

    // Page tables (Intel SDM Vol. 3 §4.5): PML4[0] → PDPT; PDPT[0..4] → PD0..PD3; PDi[j] = 2 MiB page.
    const PRESENT_RW: u64 = 0b11;
    const PAGE_SIZE_2M: u64 = 1 << 7;
    mem.write_slice(&[0u8; 4096], GuestAddress(PML4_ADDRESS))?;
    mem.write_slice(&[0u8; 4096], GuestAddress(PDPT_ADDRESS))?;
    mem.write_obj(PDPT_ADDRESS | PRESENT_RW, GuestAddress(PML4_ADDRESS))?;
    let dirs = IDENTITY_MAP_SIZE >> 30;
    let mut pd = [0u8; 4096];
    for d in 0..dirs {
        let pd_addr = PD_ADDRESS + d * PAGE;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPT_ADDRESS + d * 8))?;
        for (j, chunk) in pd.chunks_exact_mut(8).enumerate() {
            let phys = ((d << 30) + ((j as u64) << 21)) | PRESENT_RW | PAGE_SIZE_2M;
            chunk.copy_from_slice(&phys.to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))?;
    }
    Ok(())
}

/// Prepares vCPU `index` of `vcpu_count` for `boot`: CPUID, MSRs, local APIC LVTs; the BSP (index 0) also gets the
/// 64-bit entry state ([`setup_boot_registers`]), the APs the "wait for INIT/SIPI" state. Needs the in-kernel irqchip.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    index: u8,
    vcpu_count: u8,
    boot: &BootInfo,
) -> Result<(), Error> {
    setup_cpuid(kvm, vcpu, index, vcpu_count)?;
    setup_msrs(vcpu)?;
    setup_lapic(vcpu)?;
    if index == 0 {
        setup_boot_registers(vcpu, boot)?;
    } else {
        vcpu.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_UNINITIALIZED,
        })?;
    }
    Ok(())
}

/// `KVM_SET_CPUID2` from `KVM_GET_SUPPORTED_CPUID`, with this vCPU's APIC ID in leaves 1, 0xB, 0x1F and 0x8000_001E,
/// the processor count in leaves 1, 4 and 0x8000_0008, the hypervisor bit, and the TSC-deadline timer when KVM
/// emulates it (it is not in the supported list: `KVM_CAP_TSC_DEADLINE_TIMER`).
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, index: u8, vcpu_count: u8) -> Result<(), Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let apic_id = u32::from(index);
    let count = u32::from(vcpu_count.max(1));
    // Bits needed to number `count` cores (the x2APIC ID shift of the core level).
    let core_bits = 32 - (count - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
                }
                e.ecx |= 1 << 31; // hypervisor present
                if tsc_deadline {
                    e.ecx |= 1 << 24;
                }
            }
            // Cores per package - 1 in EAX[31:26] of every valid cache leaf; one thread per core shares L1/L2.
            4 if e.eax & 0x1f != 0 => {
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1).min(63) << 26);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // SMT level: one thread
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1; // core level
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i & 0xff; // invalid level: end of the list
                    }
                }
            }
            0x8000_0008 => {
                // AMD: NC (cores - 1) in ECX[7:0], ApicIdSize 0 (legacy derivation).
                e.ecx = (e.ecx & !0xf0ff) | (count - 1);
            }
            0x8000_001e => {
                // AMD extended APIC ID; compute unit (core) ID = APIC ID, one thread per core, node 0.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)?;

    // XCR0 is left at its reset value (x87 only); the guest sets it with XSETBV. Under QEMU's TCG emulation of SVM
    // (the nested test environment) a guest XSETBV does not exit, so KVM never recomputes CPUID 0xD.0 EBX and Linux
    // reports "XSAVE consistency problem" and turns XSAVE/AVX off — harmless. Presetting XCR0 to the full CPUID mask
    // avoided that, but with it the L1 kernel running this VMM died (corrupted per-CPU GS, stack guard page hit on
    // the vCPU thread) in 4 of 4 nested runs of the mmio cells; without it the same cells passed.
    Ok(())
}

/// The MSRs a 64-bit kernel expects cleared or set at entry (SYSENTER/SYSCALL MSRs 0, fast strings on, MTRRs
/// enabled with write-back default). The TSC is left alone: KVM synchronizes the TSCs of new vCPUs itself, and
/// writing 0 to each vCPU at a different moment makes Linux mark the TSC unstable.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),          // fast-string enable
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs enabled, default type write-back
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|e| Error::Boot(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs)?;
    if set != entries.len() {
        let failed = entries.get(set).map_or(0, |e| e.index);
        return Err(Error::Boot(format!(
            "KVM_SET_MSRS set {set} of {} MSRs (refused MSR {failed:#x})",
            entries.len()
        )));
    }
    Ok(())
}

/// Local APIC LVT LINT0 = ExtINT, LINT1 = NMI (what the BIOS leaves for the virtual-wire mode Linux starts from).
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic()?;
    let set_mode = |regs: &mut [std::os::raw::c_char], off: usize, mode: u32| {
        if let Some(r) = regs.get_mut(off..off + 4) {
            let mut b = [0u8; 4];
            for (d, s) in b.iter_mut().zip(r.iter()) {
                *d = s.to_ne_bytes()[0];
            }
            // Delivery mode bits 8..11.
            let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
            for (d, s) in r.iter_mut().zip(v.to_le_bytes()) {
                *d = std::os::raw::c_char::from_ne_bytes([s]);
            }
        }
    };
    set_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)?;
    Ok(())
}

/// Registers, segments, control registers and FPU for the 64-bit entry of `boot` (Linux 64-bit boot protocol: flat
/// `__BOOT_CS`/`__BOOT_DS`, paging on with an identity map, interrupts off, `rsi` = zero page).
pub fn setup_boot_registers(vcpu: &VcpuFd, boot: &BootInfo) -> Result<(), Error> {
    // Control register bits (Intel SDM Vol. 3 §2.5).
    const CR0_PE: u64 = 1 << 0;
    const CR0_MP: u64 = 1 << 1;
    const CR0_EM: u64 = 1 << 2;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_NW: u64 = 1 << 29;
    const CR0_CD: u64 = 1 << 30;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const CR4_OSFXSR: u64 = 1 << 9;
    const CR4_OSXMMEXCPT: u64 = 1 << 10;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;

    let gdt = gdt();
    let mut sregs: kvm_sregs = vcpu.get_sregs()?;
    let code = kvm_segment_from_gdt(gdt[2], BOOT_CS);
    let data = kvm_segment_from_gdt(gdt[3], BOOT_DS);
    let tss = kvm_segment_from_gdt(gdt[4], BOOT_TSS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = GDT_ADDRESS;
    sregs.gdt.limit = u16::try_from(gdt.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = IDT_ADDRESS;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_ADDRESS;
    sregs.cr4 |= CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 =
        (sregs.cr0 & !(CR0_CD | CR0_NW | CR0_EM)) | CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)?;

    let regs = kvm_regs {
        rip: boot.entry,
        rsi: boot.boot_params,
        rsp: boot.stack_pointer,
        rbp: boot.stack_pointer,
        rflags: 0x2, // bit 1 is reserved-one; IF clear
        ..Default::default()
    };
    vcpu.set_regs(&regs)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)?;
    Ok(())
}

/// Masks every line of the in-kernel 8259 PICs (`KVM_SET_IRQCHIP`), as a BIOS would leave them when the OS uses the
/// IOAPIC only: a hardware-reduced-ACPI Linux never programs the PIC, and KVM creates it unmasked with vector base 0,
/// so with LINT0 in ExtINT mode an edge on GSI 1..16 would otherwise also arrive as a bogus low vector. Call after
/// `KVM_CREATE_IRQCHIP`.
pub fn mask_legacy_pic(vm: &VmFd) -> Result<(), Error> {
    for chip_id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip)?;
        // SAFETY: KVM_GET_IRQCHIP with a PIC chip_id filled the `pic` member of the union (it is plain integers,
        // so any bytes are a valid value anyway).
        let mut pic = unsafe { chip.chip.pic };
        pic.imr = 0xff;
        chip.chip.pic = pic;
        vm.set_irqchip(&chip)?;
    }
    Ok(())
}
