//! Boot path and ACPI tables: table checksums and layout, the DSDT's virtio-mmio devices decoded from the emitted AML
//! and disassembled by `iasl`, the e820 map, ELF loading (and a real 64-bit entry under /dev/kvm), and the Debian
//! bzImage (ignored by default: it needs `cargo xtask guest-image` first).

// Test code: fixed small constants are cast freely, and failures panic.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_lossless
)]

use std::io::Cursor;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_glue::acpi::{self, MachineDescription, MmioDeviceDesc, PciHostBridgeDesc};
use vmm_glue::boot::{self, E820Kind, KernelKind};
use vmm_glue::layout;

fn machine() -> MachineDescription {
    MachineDescription::new(256 << 20, 2)
        .with_mmio_device(MmioDeviceDesc::slot(0))
        .with_mmio_device(MmioDeviceDesc::slot(1))
        .with_pci(PciHostBridgeDesc::standard())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn guest_mem(size: u64) -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

#[test]
fn acpi_tables_standard_machine_checksums_and_lengths_valid() {
    let t = acpi::build_tables(&machine()).unwrap();
    let rsdp = t.rsdp();
    assert_eq!(rsdp.len(), 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(t.rsdp_address() % 16, 0);
    assert!((0xe0000..0x100000).contains(&t.rsdp_address()));

    let xsdt_addr = u64_at(rsdp, 24);
    let mut end = t.rsdp_address() + 36;
    for table in t.tables() {
        assert_eq!(&table.bytes[..4], &table.signature);
        assert_eq!(
            u32_at(&table.bytes, 4) as usize,
            table.bytes.len(),
            "{:?} length",
            table.signature
        );
        assert_eq!(sum(&table.bytes), 0, "{:?} checksum", table.signature);
        assert!(table.address >= end, "tables do not overlap");
        end = table.address + table.bytes.len() as u64;
    }
    assert!(end <= acpi::ACPI_AREA_END);

    let xsdt = t.table(b"XSDT").unwrap();
    assert_eq!(xsdt.address, xsdt_addr);
    let entries: Vec<u64> = xsdt.bytes[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
    let sig_at = |a: u64| {
        t.tables()
            .iter()
            .find(|x| x.address == a)
            .map(|x| x.signature)
    };
    let sigs: Vec<[u8; 4]> = entries.iter().map(|a| sig_at(*a).unwrap()).collect();
    assert_eq!(sigs, vec![*b"FACP", *b"APIC", *b"MCFG"]);

    let fadt = t.table(b"FACP").unwrap();
    assert_eq!(fadt.bytes.len(), 276);
    assert_eq!(
        u64_at(&fadt.bytes, 140),
        t.table(b"DSDT").unwrap().address,
        "X_DSDT"
    );
    assert_ne!(u32_at(&fadt.bytes, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
    // SLEEP_CONTROL_REG / SLEEP_STATUS_REG: system I/O, 8 bits, byte access.
    assert_eq!(&fadt.bytes[244..248], &[1, 8, 0, 1]);
    assert_eq!(
        u64_at(&fadt.bytes, 248),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT)
    );
    assert_eq!(&fadt.bytes[256..260], &[1, 8, 0, 1]);
    assert_eq!(
        u64_at(&fadt.bytes, 260),
        u64::from(layout::ACPI_SLEEP_STATUS_PORT)
    );

    let mcfg = t.table(b"MCFG").unwrap();
    assert_eq!(mcfg.bytes.len(), 44 + 16);
    assert_eq!(u64_at(&mcfg.bytes, 44), layout::PCI_ECAM_BASE);
    assert_eq!(&mcfg.bytes[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
}

#[test]
fn acpi_madt_two_vcpus_lists_apics_ioapic_and_nmi() {
    let t = acpi::build_tables(&machine()).unwrap();
    let madt = &t.table(b"APIC").unwrap().bytes;
    assert_eq!(u32_at(madt, 36) as u64, layout::LAPIC_ADDRESS);
    let mut off = 44;
    let mut lapics = Vec::new();
    let mut ioapics = Vec::new();
    let mut nmis = 0;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        assert!(len >= 2 && off + len <= madt.len());
        match kind {
            0 => lapics.push((madt[off + 2], madt[off + 3], u32_at(madt, off + 4))),
            1 => ioapics.push((madt[off + 2], u32_at(madt, off + 4), u32_at(madt, off + 8))),
            4 => {
                assert_eq!(madt[off + 5], 1, "LINT1");
                nmis += 1;
            }
            other => panic!("unexpected MADT entry {other}"),
        }
        off += len;
    }
    assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1)]);
    assert_eq!(ioapics, vec![(0, layout::IOAPIC_ADDRESS as u32, 0)]);
    assert_eq!(nmis, 1);
}

/// AML PkgLength (ACPI 6.4 §20.2.4): returns (length, bytes used).
fn pkg_length(b: &[u8]) -> (usize, usize) {
    let lead = b[0];
    let extra = (lead >> 6) as usize;
    if extra == 0 {
        return ((lead & 0x3f) as usize, 1);
    }
    let mut len = (lead & 0x0f) as usize;
    for i in 0..extra {
        len |= (b[1 + i] as usize) << (4 + 8 * i);
    }
    (len, 1 + extra)
}

/// The body of `Device (name)` in the AML.
fn device_body<'a>(aml: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    (0..aml.len().saturating_sub(6)).find_map(|i| {
        if aml[i] != 0x5b || aml[i + 1] != 0x82 {
            return None;
        }
        let (len, used) = pkg_length(&aml[i + 2..]);
        let body = aml.get(i + 2 + used..i + 2 + len)?;
        (body.get(..4)? == name).then_some(body)
    })
}

/// The resource template bytes of `Name (_CRS, Buffer ...)` inside a device body.
fn crs(body: &[u8]) -> Vec<u8> {
    let at = body
        .windows(5)
        .position(|w| w == b"\x08_CRS")
        .expect("_CRS");
    let b = &body[at + 5..];
    assert_eq!(b[0], 0x11, "Buffer");
    let (len, used) = pkg_length(&b[1..]);
    let after_len = &b[1 + used..1 + len];
    // BufferSize is an integer term: ByteConst (0x0a) or WordConst (0x0b).
    let skip = match after_len[0] {
        0x0a => 2,
        0x0b => 3,
        other => panic!("buffer size op {other:#x}"),
    };
    after_len[skip..].to_vec()
}

/// Decoded resource descriptors we emit.
#[derive(Debug, PartialEq)]
enum Res {
    Mem32 { rw: bool, base: u32, len: u32 },
    Irq { flags: u8, gsi: u32 },
    Io { min: u16, len: u8 },
    Word { kind: u8, min: u16, max: u16 },
    DWord { kind: u8, min: u32, max: u32 },
}

fn decode_resources(mut b: &[u8]) -> Vec<Res> {
    let mut out = Vec::new();
    loop {
        match b[0] {
            0x79 => return out, // end tag
            0x47 => {
                out.push(Res::Io {
                    min: u16_at(b, 2),
                    len: b[7],
                });
                b = &b[8..];
            }
            0x86 => {
                out.push(Res::Mem32 {
                    rw: b[3] == 1,
                    base: u32_at(b, 4),
                    len: u32_at(b, 8),
                });
                b = &b[12..];
            }
            0x89 => {
                assert_eq!(b[4], 1, "one interrupt");
                out.push(Res::Irq {
                    flags: b[3],
                    gsi: u32_at(b, 5),
                });
                b = &b[3 + u16_at(b, 1) as usize..];
            }
            0x88 => {
                out.push(Res::Word {
                    kind: b[3],
                    min: u16_at(b, 8),
                    max: u16_at(b, 10),
                });
                b = &b[3 + u16_at(b, 1) as usize..];
            }
            0x87 => {
                out.push(Res::DWord {
                    kind: b[3],
                    min: u32_at(b, 10),
                    max: u32_at(b, 14),
                });
                b = &b[3 + u16_at(b, 1) as usize..];
            }
            other => panic!("unexpected descriptor {other:#x}"),
        }
    }
}

#[test]
fn acpi_dsdt_virtio_mmio_devices_have_lnro0005_and_resources() {
    let t = acpi::build_tables(&machine()).unwrap();
    let dsdt = &t.table(b"DSDT").unwrap().bytes;
    let aml = &dsdt[36..];
    assert_eq!(aml[0], 0x10, "Scope (\\_SB_)");
    for slot in 0..2u32 {
        let name = format!("VR{slot:02X}");
        let body = device_body(aml, name.as_bytes().try_into().unwrap()).expect("device");
        let hid = b"\x08_HID\x0dLNRO0005\x00";
        assert!(body.windows(hid.len()).any(|w| w == hid), "{name} _HID");
        let res = decode_resources(&crs(body));
        assert_eq!(
            res,
            vec![
                Res::Mem32 {
                    rw: true,
                    base: layout::mmio_slot_address(slot) as u32,
                    len: layout::MMIO_SLOT_SIZE as u32
                },
                // consumer | edge; active high; exclusive
                Res::Irq {
                    flags: 0b0011,
                    gsi: layout::mmio_slot_gsi(slot)
                },
            ]
        );
    }
    let com1 = device_body(aml, b"COM1").unwrap();
    assert!(com1.windows(5).any(|w| w == b"\x08_HID"));
    assert_eq!(
        decode_resources(&crs(com1)),
        vec![
            Res::Io { min: 0x3f8, len: 8 },
            Res::Irq {
                flags: 0b0011,
                gsi: 4
            }
        ]
    );

    let pci = device_body(aml, b"PCI0").unwrap();
    // _HID EISAID("PNP0A08") = DWordConst 0x080ad041, _CID EISAID("PNP0A03").
    assert!(pci
        .windows(10)
        .any(|w| w == b"\x08_HID\x0c\x41\xd0\x0a\x08"));
    assert!(pci
        .windows(10)
        .any(|w| w == b"\x08_CID\x0c\x41\xd0\x0a\x03"));
    assert!(pci.windows(6).any(|w| w == b"\x08_SEG\x00"));
    assert!(pci.windows(6).any(|w| w == b"\x08_BBN\x00"));
    assert_eq!(
        decode_resources(&crs(pci)),
        vec![
            Res::Word {
                kind: 2,
                min: 0,
                max: 0
            },
            Res::Io { min: 0xcf8, len: 8 },
            Res::Word {
                kind: 1,
                min: 0xc000,
                max: 0xffff
            },
            Res::DWord {
                kind: 0,
                min: 0xc000_0000,
                max: 0xcfff_ffff
            },
        ]
    );
    // _PRT: a Package of 31 four-element packages.
    let at = pci.windows(5).position(|w| w == b"\x08_PRT").unwrap();
    let prt = &pci[at + 5..];
    assert_eq!(prt[0], 0x12);
    let (_, used) = pkg_length(&prt[1..]);
    assert_eq!(prt[1 + used], 31, "NumElements");
    // Device 1, INTA -> GSI 17: Package (4) { 0x0001FFFF, Zero, Zero, 17 }.
    let first = b"\x12\x0b\x04\x0c\xff\xff\x01\x00\x00\x00\x0a\x11";
    assert!(
        prt.windows(first.len()).any(|w| w == first),
        "first _PRT entry"
    );

    // \_S5_ = Package (4) { 5, 5, 0, 0 } at the root.
    let s5 = b"\x08_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00";
    assert!(aml.windows(s5.len()).any(|w| w == s5), "_S5_");
}

#[test]
fn acpi_poweroff_write_recognised() {
    assert!(acpi::is_poweroff_write((5 << 2) | 0x20));
    assert!(
        !acpi::is_poweroff_write(0x80),
        "WAK_STS clear is not a power-off"
    );
    assert!(!acpi::is_poweroff_write(5 << 2), "no SLP_EN");
}

#[test]
fn acpi_overlapping_devices_rejected() {
    let m = MachineDescription::new(256 << 20, 1)
        .with_mmio_device(MmioDeviceDesc::slot(0))
        .with_mmio_device(MmioDeviceDesc::new(
            layout::mmio_slot_address(0) + 0x800,
            0x1000,
            6,
        ));
    assert!(acpi::build_tables(&m).is_err());
    let m = MachineDescription::new(256 << 20, 1)
        .with_mmio_device(MmioDeviceDesc::new(0x1000, 0x1000, 5));
    assert!(acpi::build_tables(&m).is_err(), "device inside RAM");
    let m = MachineDescription::new(256 << 20, 1).with_mmio_device(MmioDeviceDesc::new(
        0xd000_0000,
        0x1000,
        99,
    ));
    assert!(acpi::build_tables(&m).is_err(), "GSI beyond the IOAPIC");
    let m = MachineDescription::new(256 << 20, 0);
    assert!(acpi::build_tables(&m).is_err(), "no vCPU");
    let mut p = PciHostBridgeDesc::standard();
    p.io_window = Some((0, 0x1_0000));
    let m = MachineDescription::new(256 << 20, 1).with_pci(p);
    assert!(
        acpi::build_tables(&m).is_err(),
        "I/O window length does not fit WordIO"
    );
    let mut p = PciHostBridgeDesc::standard();
    p.bus_start = 3;
    p.bus_end = 2;
    let m = MachineDescription::new(256 << 20, 1).with_pci(p);
    assert!(acpi::build_tables(&m).is_err(), "empty bus range");
}

/// Arbitrary descriptions (a fixed pseudo-random sequence) never make table generation panic, and whatever is
/// accepted is well formed.
#[test]
fn acpi_arbitrary_descriptions_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut accepted = 0;
    for _ in 0..2000 {
        let mem = [1u64 << 20, 64 << 20, 3 << 30, 1 << 40, next()][(next() % 5) as usize];
        let mut m = MachineDescription::new(mem, (next() % 300) as u8);
        for _ in 0..next() % 6 {
            let d = if next() % 2 == 0 {
                MmioDeviceDesc::slot((next() % 12) as u32)
            } else {
                MmioDeviceDesc::new(
                    next() >> (next() % 64),
                    next() >> (next() % 64),
                    (next() % 40) as u32,
                )
            };
            m = m.with_mmio_device(d);
        }
        if next() % 2 == 0 {
            let mut p = PciHostBridgeDesc::standard();
            p.bus_start = next() as u8;
            p.bus_end = next() as u8;
            if next() % 3 == 0 {
                p.mmio32 = (next() >> (next() % 64), next() >> (next() % 64));
            }
            if next() % 3 == 0 {
                p.io_window = Some((next() as u16, (next() % 0x2_0000) as u32));
            }
            if next() % 3 == 0 {
                p.ecam_base = Some(next() >> (next() % 64));
            }
            m = m.with_pci(p);
        }
        if let Ok(t) = acpi::build_tables(&m) {
            accepted += 1;
            assert_eq!(sum(t.rsdp()), 0);
            for table in t.tables() {
                assert_eq!(sum(&table.bytes), 0);
            }
            boot::e820_map(&m).unwrap();
        }
    }
    assert!(accepted > 100, "only {accepted} accepted");
}

#[test]
fn e820_various_sizes_sorted_no_overlap_no_ram_in_holes() {
    for mem in [64u64 << 20, 256 << 20, 3 << 30, 5 << 30] {
        let m = MachineDescription::new(mem, 1)
            .with_mmio_device(MmioDeviceDesc::slot(0))
            .with_pci(PciHostBridgeDesc::standard());
        let map = boot::e820_map(&m).unwrap();
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{map:?}");
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(
            ram,
            mem - (boot::HIMEM_START - boot::EBDA_START),
            "{mem:#x}"
        );
        let holes = [
            (layout::PCI_MMIO_START, layout::PCI_MMIO_SIZE),
            (layout::MMIO_BASE, layout::MMIO_SLOT_SIZE * 8),
            (layout::IOAPIC_ADDRESS, 0x1000),
            (layout::LAPIC_ADDRESS, 0x1000),
            (acpi::RSDP_ADDRESS, 0x20000),
        ];
        for e in map.iter().filter(|e| e.kind == E820Kind::Ram) {
            for (h, l) in holes {
                assert!(
                    e.addr + e.size <= h || h + l <= e.addr,
                    "RAM {e:?} overlaps hole {h:#x}"
                );
            }
        }
        assert!(map
            .iter()
            .any(|e| e.kind == E820Kind::Reserved && e.addr == layout::PCI_ECAM_BASE));
    }
}

/// A minimal ELF64 x86-64 executable: one PT_LOAD at `paddr` with `code`, `bss` extra zeroed bytes.
fn tiny_elf(paddr: u64, code: &[u8], bss: u64) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little endian
    f[6] = 1; // EV_CURRENT
    f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
    f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // p_offset
    f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
    f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
    f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

#[test]
fn elf_tiny_image_loads_at_paddr_with_zero_page() {
    let code = [0x90u8, 0x90, 0xf4];
    let image = tiny_elf(0x20_0000, &code, 0x100);
    let mut cur = Cursor::new(image);
    assert_eq!(boot::detect_kernel_kind(&mut cur).unwrap(), KernelKind::Elf);
    let mem = guest_mem(64 << 20);
    mem.write_slice(&[0xaa; 0x200], GuestAddress(0x20_0000))
        .unwrap();
    let m = MachineDescription::new(64 << 20, 1).with_mmio_device(MmioDeviceDesc::slot(0));
    let info = boot::load_elf(&mem, &m, &mut cur, "console=ttyS0").unwrap();
    assert_eq!(info.entry, 0x20_0000);
    assert_eq!(info.kernel_start, 0x20_0000);
    assert_eq!(info.kernel_end, 0x20_0000 + 3 + 0x100);
    let mut got = [0u8; 0x103];
    mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&got[..3], &code);
    assert!(got[3..].iter().all(|b| *b == 0), "BSS zeroed");

    // Zero page: e820 count and table, command line pointer, RSDP.
    let zp = boot::ZERO_PAGE_ADDRESS;
    let n: u8 = mem.read_obj(GuestAddress(zp + 0x1e8)).unwrap();
    assert_eq!(n, 3);
    let t1: u32 = mem.read_obj(GuestAddress(zp + 0x2d0 + 20 + 16)).unwrap();
    assert_eq!(t1, 2, "second entry is the reserved ACPI area");
    let cmd_ptr: u32 = mem.read_obj(GuestAddress(zp + 0x228)).unwrap();
    assert_eq!(u64::from(cmd_ptr), boot::CMDLINE_ADDRESS);
    let mut cmd = [0u8; 14];
    mem.read_slice(&mut cmd, GuestAddress(boot::CMDLINE_ADDRESS))
        .unwrap();
    assert_eq!(&cmd, b"console=ttyS0\0");
    let rsdp: u64 = mem.read_obj(GuestAddress(zp + 0x70)).unwrap();
    assert_eq!(rsdp, acpi::RSDP_ADDRESS);
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
    assert_eq!(&sig, b"RSD PTR ");

    // Identity map: PML4[0] -> PDPT, PD[1] maps 2 MiB, last PD entry maps 4 GiB - 2 MiB.
    let pml4: u64 = mem.read_obj(GuestAddress(boot::PML4_ADDRESS)).unwrap();
    assert_eq!(pml4, boot::PDPT_ADDRESS | 3);
    let pd1: u64 = mem.read_obj(GuestAddress(boot::PD_ADDRESS + 8)).unwrap();
    assert_eq!(pd1, 0x20_0000 | 0x83);
    let last: u64 = mem
        .read_obj(GuestAddress(boot::PD_ADDRESS + 4 * 4096 - 8))
        .unwrap();
    assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
}

#[test]
fn elf_segment_below_1mib_or_garbage_rejected() {
    let mem = guest_mem(64 << 20);
    let m = MachineDescription::new(64 << 20, 1);
    let mut low = Cursor::new(tiny_elf(0x8000, &[0xf4], 0));
    assert!(boot::load_elf(&mem, &m, &mut low, "").is_err());
    let mut past_ram = Cursor::new(tiny_elf(0x3ff_f000, &[0xf4], 0x10_0000));
    assert!(boot::load_elf(&mem, &m, &mut past_ram, "").is_err());
    let mut garbage = Cursor::new(vec![0x55u8; 4096]);
    assert!(boot::detect_kernel_kind(&mut garbage).is_err());
    let mut short = Cursor::new(b"\x7fELF".to_vec());
    assert!(boot::load_elf(&mem, &m, &mut short, "").is_err());
}

/// Boots the tiny ELF on a real vCPU: 64-bit entry with `rsi` = zero page; the guest reads `e820_entries` through
/// `rsi` and writes it to the exit port.
#[test]
fn elf_entry_under_kvm_reaches_long_mode_and_reads_zero_page() {
    use kvm_ioctls::{Kvm, VcpuExit};
    // mov al, [rsi + 0x1e8]; out 0xf4, al; hlt
    let code = [0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00, 0xe6, 0xf4, 0xf4];
    let kvm =
        Kvm::new().expect("/dev/kvm (this test needs KVM; every machine of this project has it)");
    let vm = kvm.create_vm().unwrap();
    let size = 64u64 << 20;
    let mem = guest_mem(size);
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    // SAFETY: `mem` is a live anonymous mapping of `size` bytes that outlives the VM in this test.
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        })
        .unwrap();
    }
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .unwrap();
    vm.create_irq_chip().unwrap();
    boot::mask_legacy_pic(&vm).unwrap();
    let m = MachineDescription::new(size, 1);
    let mut image = Cursor::new(tiny_elf(0x10_0000, &code, 0));
    let info = boot::load_elf(&mem, &m, &mut image, "").unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    boot::configure_vcpu(&kvm, &vcpu, 0, 1, &info).unwrap();
    let out = match vcpu.run().unwrap() {
        VcpuExit::IoOut(0xf4, data) => Some(data[0]),
        other => panic!("unexpected exit {other:?}"),
    };
    assert_eq!(out, Some(3), "e820_entries read through rsi");
    let sregs = vcpu.get_sregs().unwrap();
    assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA");
    assert_eq!(sregs.cs.l, 1);
    assert_eq!(sregs.cs.selector, boot::BOOT_CS);
}

fn debian_kernel() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinuz"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

#[test]
#[ignore = "needs the Debian kernel under target/guest/ (cargo xtask guest-image); run by the full test command"]
fn bzimage_debian_kernel_header_parsed_and_zero_page_filled() {
    let path =
        debian_kernel().expect("no target/guest/*/vmlinuz: run `cargo xtask guest-image` first");
    let mut k = std::fs::File::open(&path).unwrap();
    assert_eq!(
        boot::detect_kernel_kind(&mut k).unwrap(),
        KernelKind::BzImage
    );
    let size = 512u64 << 20;
    let mem = guest_mem(size);
    let m = MachineDescription::new(size, 1).with_mmio_device(MmioDeviceDesc::slot(0));
    let mut initrd = Cursor::new(vec![0x5au8; 3 << 20]);
    let info =
        boot::load_linux(&mem, &m, &mut k, Some(&mut initrd), "console=ttyS0 quiet").unwrap();
    assert_eq!(info.kind, KernelKind::BzImage);
    assert_eq!(info.kernel_start, boot::HIMEM_START);
    assert_eq!(info.entry, boot::HIMEM_START + 0x200);
    let (rd, rd_len) = info.initrd.unwrap();
    assert_eq!(rd_len, 3 << 20);
    assert_eq!(rd % 4096, 0);
    assert!(
        rd + rd_len <= size && rd + rd_len > size - 4096 - (3 << 20),
        "initrd placed high: {rd:#x}"
    );

    let zp = boot::ZERO_PAGE_ADDRESS;
    let magic: u32 = mem.read_obj(GuestAddress(zp + 0x202)).unwrap();
    assert_eq!(magic, 0x5372_6448, "HdrS");
    let version: u16 = mem.read_obj(GuestAddress(zp + 0x206)).unwrap();
    assert!(
        version >= 0x020f,
        "Debian 6.1 speaks boot protocol 2.15: {version:#x}"
    );
    let loader: u8 = mem.read_obj(GuestAddress(zp + 0x210)).unwrap();
    assert_eq!(loader, 0xff);
    let ramdisk: u32 = mem.read_obj(GuestAddress(zp + 0x218)).unwrap();
    let ramdisk_size: u32 = mem.read_obj(GuestAddress(zp + 0x21c)).unwrap();
    assert_eq!((u64::from(ramdisk), u64::from(ramdisk_size)), (rd, rd_len));
    let xloadflags: u16 = mem.read_obj(GuestAddress(zp + 0x236)).unwrap();
    assert_ne!(xloadflags & 1, 0, "XLF_KERNEL_64");
    let rsdp: u64 = mem.read_obj(GuestAddress(zp + 0x70)).unwrap();
    assert_eq!(rsdp, acpi::RSDP_ADDRESS);
    let n: u8 = mem.read_obj(GuestAddress(zp + 0x1e8)).unwrap();
    assert_eq!(n, 3);
    // The setup code is not loaded; the protected-mode kernel starts at 1 MiB.
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(boot::HIMEM_START))
        .unwrap();
    assert_ne!(first, [0; 4]);
}

/// `iasl`, installing Debian's `acpica-tools` first when it is missing.
fn iasl() -> PathBuf {
    let have = || {
        std::process::Command::new("sh")
            .args(["-c", "command -v iasl"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let Some(p) = have() {
        return p;
    }
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "acpica-tools"]) {
        assert!(apt(&["update"]), "apt-get update failed");
        assert!(
            apt(&["install", "-y", "acpica-tools"]),
            "cannot install acpica-tools"
        );
    }
    have().expect("iasl after installing acpica-tools")
}

/// Runs `iasl -d` on every table (installing `acpica-tools` with apt-get when `iasl` is missing, as CI runs as root).
#[test]
fn acpi_tables_disassembled_by_iasl_without_errors() {
    let iasl = iasl();
    let t = acpi::build_tables(&machine()).unwrap();
    let dir = std::env::temp_dir().join(format!("vmm-glue-iasl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut dsl = String::new();
    for table in t.tables() {
        let name = String::from_utf8_lossy(&table.signature).to_lowercase();
        let dat = dir.join(format!("{name}.dat"));
        std::fs::write(&dat, &table.bytes).unwrap();
        let out = std::process::Command::new(&iasl)
            .arg("-d")
            .arg(&dat)
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {name}: {log}");
        let text = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        for bad in ["Error", "Invalid", "**** "] {
            assert!(!text.contains(bad), "{name}.dsl contains {bad:?}:\n{text}");
        }
        dsl.push_str(&text);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let squeezed: String = dsl.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Name (_HID, \"LNRO0005\")",
        "Memory32Fixed (ReadWrite, 0xD0000000, // Address Base 0x00001000, // Address Length )",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000005, }",
        "Memory32Fixed (ReadWrite, 0xD0001000, // Address Base 0x00001000, // Address Length )",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000006, }",
        "Name (_HID, EisaId (\"PNP0501\")",
        "Name (_HID, EisaId (\"PNP0A08\")",
        "Name (_CID, EisaId (\"PNP0A03\")",
        "Name (_S5, Package (0x04)",
        "Hardware Reduced (V5) : 1",
        "Subtable Type : 04 [Local APIC NMI]",
        "Subtable Type : 01 [I/O APIC]",
        "Address : 00000000000003C0",
        "Address : 00000000000003C1",
    ] {
        assert!(
            squeezed.contains(want),
            "disassembly lacks {want:?}:\n{dsl}"
        );
    }
}
