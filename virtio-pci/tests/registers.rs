//! The device side register by register, as a guest (or a hostile guest) touches it: configuration space, BAR
//! sizing, capabilities, the PCI configuration access window, common configuration, MSI-X, ISR/INTx, the legacy
//! header, and accesses of odd widths and offsets.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

mod common;

use common::{device, find_cap, Pci};
use virtio_core::device::Interrupt;
use virtio_core::{DeviceStatus, Features};
use virtio_pci::spec::{cap_id, common as cc, header, legacy, msix, vcap, CfgType, NO_VECTOR};
use virtio_pci::{
    AddressSpace, BarKind, PciVariant, COMMON_OFFSET, DEVICE_OFFSET, ISR_OFFSET, LEGACY_BAR,
    MODERN_BAR, MSIX_BAR, NOTIFY_OFFSET,
};

const ACK: u8 = 1;
const DRV: u8 = 3;
const FOK: u8 = 11;
const DOK: u8 = 15;

fn cfg(pci: &Pci, at: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    pci.borrow_mut().config_read(at, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn wcfg(pci: &Pci, at: u16, v: u32, len: usize) {
    pci.borrow_mut().config_write(at, &v.to_le_bytes()[..len]);
}

fn bar(pci: &Pci, bar: u8, at: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    pci.borrow_mut().bar_read(bar, at, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn wbar(pci: &Pci, bar: u8, at: u64, v: u32, len: usize) {
    pci.borrow_mut().bar_write(bar, at, &v.to_le_bytes()[..len]);
}

fn common(pci: &Pci, field: u16, len: usize) -> u32 {
    bar(pci, MODERN_BAR, COMMON_OFFSET + u64::from(field), len)
}

fn wcommon(pci: &Pci, field: u16, v: u32, len: usize) {
    wbar(pci, MODERN_BAR, COMMON_OFFSET + u64::from(field), v, len);
}

fn modern() -> Pci {
    device(PciVariant::Modern, |o| o).0
}

/// Drives a modern device to FEATURES_OK with `features`, and programs queue 0 (split, size 16) in memory.
fn negotiate(pci: &Pci, features: Features) {
    wcommon(pci, cc::DEVICE_STATUS, 0, 1);
    wcommon(pci, cc::DEVICE_STATUS, u32::from(ACK), 1);
    wcommon(pci, cc::DEVICE_STATUS, u32::from(DRV), 1);
    for sel in 0..2 {
        wcommon(pci, cc::DRIVER_FEATURE_SELECT, sel, 4);
        wcommon(pci, cc::DRIVER_FEATURE, features.window(sel), 4);
    }
    wcommon(pci, cc::DEVICE_STATUS, u32::from(FOK), 1);
}

fn program_queue(pci: &Pci, queue: u16, base: u64) {
    wcommon(pci, cc::QUEUE_SELECT, u32::from(queue), 2);
    wcommon(pci, cc::QUEUE_SIZE, 16, 2);
    let (d, a, u) = (base, base + 0x100, base + 0x200);
    for (field, addr) in [
        (cc::QUEUE_DESC, d),
        (cc::QUEUE_DRIVER, a),
        (cc::QUEUE_DEVICE, u),
    ] {
        wcommon(pci, field, addr as u32, 4);
        wcommon(pci, field + 4, (addr >> 32) as u32, 4);
    }
    wcommon(pci, cc::QUEUE_ENABLE, 1, 2);
}

// ----- identity and configuration space -----

#[test]
fn config_space_ids_follow_the_variant() {
    for (variant, device_id, revision, subsystem) in [
        (PciVariant::Modern, 0x1044, 1, 0x1044),
        (PciVariant::Transitional, 0x1005, 0, 4),
        (PciVariant::Legacy, 0x1005, 0, 4),
    ] {
        let (pci, ..) = device(variant, |o| o);
        assert_eq!(cfg(&pci, header::VENDOR_ID, 2), 0x1af4);
        assert_eq!(cfg(&pci, header::DEVICE_ID, 2), device_id, "{variant:?}");
        assert_eq!(cfg(&pci, header::REVISION_ID, 1), revision, "{variant:?}");
        assert_eq!(cfg(&pci, header::SUBSYSTEM_VENDOR_ID, 2), 0x1af4);
        assert_eq!(cfg(&pci, header::SUBSYSTEM_ID, 2), subsystem, "{variant:?}");
        assert_eq!(cfg(&pci, header::HEADER_TYPE, 1), 0);
        assert_eq!(cfg(&pci, header::INTERRUPT_PIN, 1), 1);
        assert_eq!(cfg(&pci, header::CLASS_CODE, 3), 0xff_0000);
    }
}

#[test]
fn config_space_device_without_transitional_id_cannot_be_transitional() {
    let memory = common::memory();
    let device =
        virtio_pci::mock::EchoDevice::new(&[8]).device_type_id(virtio_core::device_type::VSOCK);
    let err = virtio_pci::PciDevice::new(
        device,
        memory,
        virtio_pci::PciOptions::new(PciVariant::Transitional),
        virtio_pci::InterruptSinks::new(),
    )
    .unwrap_err();
    assert_eq!(err, virtio_pci::Error::NoDeviceId { device_type: 19 });
}

#[test]
fn config_space_invalid_options_are_typed_errors() {
    let build = |o: virtio_pci::PciOptions| {
        virtio_pci::PciDevice::new(
            virtio_pci::mock::EchoDevice::new(&[8]),
            common::memory(),
            o,
            virtio_pci::InterruptSinks::new(),
        )
        .map(|_| ())
    };
    let o = virtio_pci::PciOptions::new(PciVariant::Modern);
    assert_eq!(
        build(o.notify_off_multiplier(2)),
        Err(virtio_pci::Error::InvalidNotifyMultiplier { multiplier: 2 })
    );
    assert_eq!(
        build(o.notify_off_multiplier(12)),
        Err(virtio_pci::Error::InvalidNotifyMultiplier { multiplier: 12 })
    );
    assert_eq!(
        build(o.msix_vectors(0x801)),
        Err(virtio_pci::Error::TooManyVectors { vectors: 0x801 })
    );
    assert_eq!(
        build(o.config_len(0x1001)),
        Err(virtio_pci::Error::ConfigTooLarge { len: 0x1001 })
    );
    assert!(build(o.notify_off_multiplier(0)).is_ok());
    assert!(build(o.msix_vectors(0)).is_ok());
}

#[test]
fn config_space_read_only_fields_ignore_writes() {
    let pci = modern();
    let before: Vec<u32> = (0..64).map(|i| cfg(&pci, i * 4, 4)).collect();
    for i in 0..64u16 {
        if (0x10..0x28).contains(&(i * 4)) {
            continue; // BARs are read-write
        }
        wcfg(&pci, i * 4, 0xa5a5_a5a5, 4);
    }
    for (i, b) in before.iter().enumerate() {
        let at = i as u16 * 4;
        let now = cfg(&pci, at, 4);
        match at {
            0x04 => assert_eq!(
                now & 0xffff,
                0x0505,
                "command keeps only implemented bits (memory, io, parity, INTx disable)"
            ),
            0x0c => assert_eq!(now, (b & !0xff) | 0xa5, "cache line size is read-write"),
            0x10..=0x27 => {}
            0x3c => assert_eq!(now, (b & !0xff) | 0xa5, "interrupt line is read-write"),
            _ if find_cap(&pci, cap_id::VENDOR, Some(CfgType::PciCfg))
                .is_some_and(|c| (c..c + 20).contains(&at)) => {}
            _ if find_cap(&pci, cap_id::MSIX, None) == Some(at) => {
                assert_eq!(now & 0xffff, b & 0xffff, "MSI-X id, next");
            }
            _ => assert_eq!(now, *b, "config {at:#x} is read-only"),
        }
    }
}

#[test]
fn config_space_odd_widths_and_offsets_never_panic() {
    for variant in [
        PciVariant::Modern,
        PciVariant::Transitional,
        PciVariant::Legacy,
    ] {
        let (pci, ..) = device(variant, |o| o.extended_config(true));
        for at in [
            0u16,
            1,
            3,
            0x3f,
            0xff,
            0x100,
            0xffd,
            0xfff,
            0x1000,
            u16::MAX - 2,
            u16::MAX,
        ] {
            for len in [0usize, 1, 2, 3, 5, 8, 17] {
                let mut buf = vec![0u8; len];
                pci.borrow_mut().config_read(at, &mut buf);
                pci.borrow_mut().config_write(at, &buf);
            }
        }
        let mut beyond = [0u8; 4];
        pci.borrow_mut().config_read(0x1000, &mut beyond);
        assert_eq!(
            beyond, [0xff; 4],
            "beyond configuration space reads all-ones"
        );
    }
}

#[test]
fn config_space_status_interrupt_bit_follows_isr() {
    let (pci, _msi, intx, _) = device(PciVariant::Modern, |o| o);
    let irq = pci.borrow().interrupt();
    assert_eq!(
        cfg(&pci, header::STATUS, 2) & 0x18,
        0x10,
        "capability list, no interrupt"
    );
    irq.signal_queue(0);
    assert_eq!(cfg(&pci, header::STATUS, 2) & 0x08, 0x08);
    assert!(intx.level());
    assert_eq!(bar(&pci, MODERN_BAR, ISR_OFFSET, 1), 1, "queue interrupt");
    assert_eq!(cfg(&pci, header::STATUS, 2) & 0x08, 0);
    assert!(!intx.level());
    assert_eq!(
        bar(&pci, MODERN_BAR, ISR_OFFSET, 1),
        0,
        "reading cleared it"
    );
}

#[test]
fn config_space_intx_disable_bit_masks_the_line() {
    let (pci, _msi, intx, _) = device(PciVariant::Transitional, |o| o);
    let irq = pci.borrow().interrupt();
    wcfg(&pci, header::COMMAND, 0x0400, 2);
    irq.signal_config();
    assert!(!intx.level(), "Interrupt Disable set");
    assert!(!pci.borrow().intx_level());
    wcfg(&pci, header::COMMAND, 0, 2);
    assert!(intx.level(), "clearing it asserts the pending condition");
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::ISR, 1), 2, "config interrupt");
    assert!(!intx.level());
}

#[test]
fn config_space_extended_has_pcie_capability_and_4k() {
    let (pci, ..) = device(PciVariant::Modern, |o| o.extended_config(true));
    assert_eq!(pci.borrow().config_space_len(), 4096);
    let at = find_cap(&pci, virtio_pci::spec::cap_id::PCI_EXPRESS, None).expect("PCIe capability");
    assert_eq!(cfg(&pci, at + 2, 2), 0x92, "version 2, RCiEP");
    assert_eq!(cfg(&pci, 0x100, 4), 0, "no extended capabilities");
    assert_eq!(cfg(&pci, 0xffc, 4), 0);
}

// ----- BARs -----

#[test]
fn bar_sizing_reads_back_size_masks_per_variant() {
    for variant in [
        PciVariant::Modern,
        PciVariant::Transitional,
        PciVariant::Legacy,
    ] {
        let (pci, ..) = device(variant, |o| o);
        let expected: Vec<(u8, BarKind)> = pci.borrow().bars().map(|b| (b.index, b.kind)).collect();
        for i in 0..6u16 {
            wcfg(&pci, 0x10 + 4 * i, u32::MAX, 4);
        }
        let regs: Vec<u32> = (0..6u16).map(|i| cfg(&pci, 0x10 + 4 * i, 4)).collect();
        let has = |i: u8| expected.iter().any(|(b, _)| *b == i);
        assert_eq!(
            has(0),
            variant != PciVariant::Modern,
            "{variant:?}: legacy I/O BAR 0"
        );
        assert!(has(1), "MSI-X BAR 1");
        assert_eq!(
            has(4),
            variant != PciVariant::Legacy,
            "{variant:?}: modern BAR 4"
        );
        if has(0) {
            assert_eq!(regs[0] & 1, 1, "I/O");
            let size = (!(regs[0] & !3)).wrapping_add(1);
            assert_eq!(size, 32, "0x18 header + 8 config bytes, rounded up");
        } else {
            assert_eq!(regs[0], 0);
        }
        assert_eq!(regs[1], 0xffff_f000, "32-bit memory, 4 KiB");
        assert_eq!(regs[2] | regs[3], 0, "unimplemented");
        if has(4) {
            assert_eq!(regs[4] & 0xf, 0xc, "64-bit prefetchable");
            assert_eq!(regs[4] & !0xf, 0xffff_c000, "16 KiB");
            assert_eq!(regs[5], u32::MAX);
        }
        // Program addresses and resolve bus addresses to (BAR, offset).
        wcfg(&pci, 0x14, 0xfebf_0000, 4);
        wcfg(&pci, 0x20, 0xfe00_0000, 4);
        wcfg(&pci, 0x24, 0, 4);
        wcfg(&pci, 0x10, 0xc000, 4);
        let p = pci.borrow();
        assert_eq!(
            p.resolve(AddressSpace::Memory, 0xfebf_0010),
            None,
            "memory decoding is off"
        );
        drop(p);
        wcfg(&pci, header::COMMAND, 3, 2);
        let p = pci.borrow();
        assert_eq!(
            p.resolve(AddressSpace::Memory, 0xfebf_0010),
            Some((MSIX_BAR, 0x10))
        );
        if has(4) {
            assert_eq!(
                p.resolve(AddressSpace::Memory, 0xfe00_3004),
                Some((MODERN_BAR, 0x3004))
            );
        }
        if has(0) {
            assert_eq!(
                p.resolve(AddressSpace::Io, 0xc012),
                Some((LEGACY_BAR, 0x12))
            );
        }
        assert_eq!(p.resolve(AddressSpace::Memory, 0x1000), None);
    }
}

#[test]
fn bar_unimplemented_or_out_of_range_reads_all_ones_and_ignores_writes() {
    let pci = modern();
    assert_eq!(bar(&pci, 2, 0, 4), u32::MAX);
    assert_eq!(
        bar(&pci, 0, 0, 4),
        u32::MAX,
        "no legacy BAR on a modern device"
    );
    assert_eq!(bar(&pci, 9, 0, 4), u32::MAX);
    assert_eq!(
        bar(&pci, MODERN_BAR, 0x3ffe, 4),
        u32::MAX,
        "crosses the end of the BAR"
    );
    assert_eq!(bar(&pci, MODERN_BAR, u64::MAX - 1, 4), u32::MAX);
    wbar(&pci, MODERN_BAR, u64::MAX - 1, 1, 4);
    wbar(&pci, 7, 0, 1, 4);
    for at in [0u64, 1, 0xfff, 0x1001, 0x1fff, 0x2007, 0x3001, 0x3fff] {
        for len in [0usize, 1, 2, 3, 4, 8, 9] {
            let mut buf = vec![0x5a; len];
            pci.borrow_mut().bar_read(MODERN_BAR, at, &mut buf);
            pci.borrow_mut().bar_write(MODERN_BAR, at, &buf);
            pci.borrow_mut().bar_read(MSIX_BAR, at, &mut buf);
            pci.borrow_mut().bar_write(MSIX_BAR, at, &buf);
        }
    }
}

// ----- capabilities -----

#[test]
fn capabilities_present_every_virtio_structure_inside_its_bar() {
    let pci = modern();
    let bar4 = pci.borrow().bar(MODERN_BAR).unwrap().size;
    let mut seen = Vec::new();
    for t in [
        CfgType::Common,
        CfgType::Notify,
        CfgType::Isr,
        CfgType::Device,
        CfgType::PciCfg,
    ] {
        let at =
            find_cap(&pci, cap_id::VENDOR, Some(t)).unwrap_or_else(|| panic!("{t} capability"));
        let len = cfg(&pci, at + vcap::LEN, 1);
        let b = cfg(&pci, at + vcap::BAR, 1) as u8;
        let offset = u64::from(cfg(&pci, at + vcap::OFFSET, 4));
        let length = u64::from(cfg(&pci, at + vcap::LENGTH, 4));
        seen.push(t);
        match t {
            CfgType::Common => {
                assert_eq!(
                    (len, b, offset, length),
                    (16, MODERN_BAR, COMMON_OFFSET, 0x40)
                );
                assert_eq!(offset % 4, 0);
            }
            CfgType::Notify => {
                assert_eq!((len, b, offset), (20, MODERN_BAR, NOTIFY_OFFSET));
                assert_eq!(cfg(&pci, at + vcap::NOTIFY_OFF_MULTIPLIER, 4), 4);
                assert!(length >= 4 + 2, "queue_notify_off * 4 + 2 for queue 1");
            }
            CfgType::Isr => assert_eq!((b, offset, length), (MODERN_BAR, ISR_OFFSET, 1)),
            CfgType::Device => {
                assert_eq!((b, offset, length), (MODERN_BAR, DEVICE_OFFSET, 8));
                assert_eq!(offset % 4, 0);
            }
            CfgType::PciCfg => assert_eq!(len, 20),
            _ => unreachable!(),
        }
        if t != CfgType::PciCfg {
            assert!(offset + length <= bar4);
        }
    }
    assert_eq!(seen.len(), 5);
    let m = find_cap(&pci, cap_id::MSIX, None).expect("MSI-X");
    assert_eq!(
        cfg(&pci, m + msix::CONTROL, 2) & 0x7ff,
        2,
        "3 vectors: 2 queues + config"
    );
    assert_eq!(cfg(&pci, m + msix::TABLE, 4), u32::from(MSIX_BAR));
    assert_eq!(cfg(&pci, m + msix::PBA, 4), 0x800 | u32::from(MSIX_BAR));
}

#[test]
fn capabilities_legacy_device_has_no_virtio_structures() {
    let (pci, ..) = device(PciVariant::Legacy, |o| o);
    assert!(find_cap(&pci, cap_id::VENDOR, None).is_none());
    assert!(find_cap(&pci, cap_id::MSIX, None).is_some());
    let (pci, ..) = device(PciVariant::Legacy, |o| o.msix_vectors(0));
    assert_eq!(
        cfg(&pci, header::STATUS, 2) & 0x10,
        0,
        "no capability list at all"
    );
    assert_eq!(cfg(&pci, header::CAPABILITIES_POINTER, 1), 0);
}

#[test]
fn pci_cfg_window_reads_and_writes_reach_the_bar() {
    let pci = modern();
    let at = find_cap(&pci, cap_id::VENDOR, Some(CfgType::PciCfg)).unwrap();
    let window = |bar_: u8, offset: u32, len: u32| {
        wcfg(&pci, at + vcap::BAR, u32::from(bar_), 1);
        wcfg(&pci, at + vcap::OFFSET, offset, 4);
        wcfg(&pci, at + vcap::LENGTH, len, 4);
    };
    // Read num_queues through the window.
    window(MODERN_BAR, u32::from(cc::NUM_QUEUES), 2);
    assert_eq!(cfg(&pci, at + vcap::PCI_CFG_DATA, 4) & 0xffff, 2);
    // Write device_status = ACKNOWLEDGE through the window.
    window(MODERN_BAR, u32::from(cc::DEVICE_STATUS), 1);
    wcfg(&pci, at + vcap::PCI_CFG_DATA, u32::from(ACK), 4);
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1), u32::from(ACK));
    assert_eq!(pci.borrow_mut().status(), DeviceStatus::ACKNOWLEDGE);
    // Read the ISR through the window: it clears.
    pci.borrow().interrupt().signal_config();
    window(MODERN_BAR, ISR_OFFSET as u32, 1);
    assert_eq!(cfg(&pci, at + vcap::PCI_CFG_DATA, 1), 2);
    assert_eq!(bar(&pci, MODERN_BAR, ISR_OFFSET, 1), 0);
    // Device configuration through the window.
    pci.borrow_mut().device_mut().change_config(0x0102_0304);
    window(MODERN_BAR, DEVICE_OFFSET as u32, 4);
    assert_eq!(cfg(&pci, at + vcap::PCI_CFG_DATA, 4), 0x0102_0304);
}

#[test]
fn pci_cfg_window_with_invalid_length_or_alignment_is_inert() {
    let pci = modern();
    let at = find_cap(&pci, cap_id::VENDOR, Some(CfgType::PciCfg)).unwrap();
    wcfg(&pci, at + vcap::BAR, u32::from(MODERN_BAR), 1);
    for (offset, len) in [
        (u32::from(cc::DEVICE_STATUS), 3),
        (u32::from(cc::DEVICE_STATUS), 0),
        (0x15, 2),
        (0x16, 4),
    ] {
        wcfg(&pci, at + vcap::OFFSET, offset, 4);
        wcfg(&pci, at + vcap::LENGTH, len, 4);
        wcfg(&pci, at + vcap::PCI_CFG_DATA, 1, 4);
        let _ = cfg(&pci, at + vcap::PCI_CFG_DATA, 4);
    }
    assert_eq!(
        common(&pci, cc::DEVICE_STATUS, 1),
        0,
        "nothing reached the BAR"
    );
    // An unimplemented BAR through the window reads all-ones, writes vanish.
    wcfg(&pci, at + vcap::BAR, 2, 1);
    wcfg(&pci, at + vcap::OFFSET, 0, 4);
    wcfg(&pci, at + vcap::LENGTH, 4, 4);
    assert_eq!(cfg(&pci, at + vcap::PCI_CFG_DATA, 4), u32::MAX);
}

// ----- common configuration -----

#[test]
fn common_cfg_device_feature_windows_present_offered_bits() {
    let pci = modern();
    let offered = pci.borrow().offered_features();
    assert!(offered.contains(Features::VERSION_1));
    for sel in 0..4u32 {
        wcommon(&pci, cc::DEVICE_FEATURE_SELECT, sel, 4);
        assert_eq!(common(&pci, cc::DEVICE_FEATURE_SELECT, 4), sel);
        assert_eq!(
            common(&pci, cc::DEVICE_FEATURE, 4),
            offered.window(sel),
            "select {sel}"
        );
    }
    wcommon(&pci, cc::DEVICE_FEATURE, 0, 4);
    wcommon(&pci, cc::DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(
        common(&pci, cc::DEVICE_FEATURE, 4),
        offered.window(1),
        "device_feature is read-only"
    );
}

#[test]
fn common_cfg_features_ok_with_never_offered_bits_is_refused() {
    let pci = modern();
    negotiate(
        &pci,
        Features::VERSION_1 | Features::from_bits_retain(1 << 5),
    );
    let status = common(&pci, cc::DEVICE_STATUS, 1);
    assert_eq!(status & 8, 0, "FEATURES_OK does not stick: {status:#x}");
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    assert!(!pci.borrow().is_live(), "never goes live");
    // The driver-written bits are mirrored, valid or not (§4.1.4.3.1 MAY).
    wcommon(&pci, cc::DRIVER_FEATURE_SELECT, 0, 4);
    assert_eq!(common(&pci, cc::DRIVER_FEATURE, 4), 1 << 5);
    // FAILED is always accepted.
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DRV | 0x80), 1);
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1), u32::from(DRV | 0x80));
}

#[test]
fn common_cfg_features_frozen_after_features_ok() {
    let pci = modern();
    negotiate(&pci, Features::VERSION_1 | Features::EVENT_IDX);
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1), u32::from(FOK));
    wcommon(&pci, cc::DRIVER_FEATURE_SELECT, 0, 4);
    wcommon(&pci, cc::DRIVER_FEATURE, 0, 4);
    assert_eq!(
        common(&pci, cc::DRIVER_FEATURE, 4),
        Features::EVENT_IDX.window(0)
    );
}

#[test]
fn common_cfg_out_of_range_queue_select_reads_size_zero() {
    let pci = modern();
    assert_eq!(common(&pci, cc::NUM_QUEUES, 2), 2);
    for q in [2u32, 3, 0x7fff, 0xffff] {
        wcommon(&pci, cc::QUEUE_SELECT, q, 2);
        assert_eq!(common(&pci, cc::QUEUE_SELECT, 2), q);
        assert_eq!(
            common(&pci, cc::QUEUE_SIZE, 2),
            0,
            "queue {q} is unavailable"
        );
        assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 0);
        assert_eq!(common(&pci, cc::QUEUE_MSIX_VECTOR, 2), u32::from(NO_VECTOR));
        // Writes to the unavailable queue go nowhere.
        wcommon(&pci, cc::QUEUE_SIZE, 4, 2);
        wcommon(&pci, cc::QUEUE_MSIX_VECTOR, 0, 2);
        wcommon(&pci, cc::QUEUE_ENABLE, 1, 2);
        wcommon(&pci, cc::QUEUE_DESC, 0x1000, 4);
        assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 0);
        assert_eq!(common(&pci, cc::QUEUE_DESC, 4), 0);
    }
    wcommon(&pci, cc::QUEUE_SELECT, 1, 2);
    assert_eq!(
        common(&pci, cc::QUEUE_SIZE, 2),
        16,
        "reset value: the maximum"
    );
    assert_eq!(common(&pci, cc::QUEUE_NOTIFY_OFF, 2), 1);
    assert_eq!(common(&pci, cc::QUEUE_NOTIFY_DATA, 2), 1);
}

#[test]
fn common_cfg_64bit_fields_take_independent_halves_or_one_8_byte_write() {
    let pci = modern();
    negotiate(&pci, Features::VERSION_1);
    wcommon(&pci, cc::QUEUE_SELECT, 0, 2);
    wcommon(&pci, cc::QUEUE_DESC + 4, 0x1, 4);
    wcommon(&pci, cc::QUEUE_DESC, 0x2000, 4);
    assert_eq!(
        pci.borrow().queue_config(0).unwrap().descriptors.raw(),
        0x1_0000_2000
    );
    pci.borrow_mut().bar_write(
        MODERN_BAR,
        u64::from(cc::QUEUE_DRIVER),
        &0x2_0000_3000u64.to_le_bytes(),
    );
    assert_eq!(
        pci.borrow().queue_config(0).unwrap().driver_area.raw(),
        0x2_0000_3000
    );
    assert_eq!(common(&pci, cc::QUEUE_DRIVER + 4, 4), 2);
    let mut eight = [0u8; 8];
    pci.borrow_mut()
        .bar_read(MODERN_BAR, u64::from(cc::QUEUE_DRIVER), &mut eight);
    assert_eq!(u64::from_le_bytes(eight), 0x2_0000_3000);
}

#[test]
fn common_cfg_odd_width_and_unaligned_writes_are_ignored() {
    let pci = modern();
    negotiate(&pci, Features::VERSION_1);
    wcommon(&pci, cc::QUEUE_SELECT, 0, 2);
    // 1 byte into a 16-bit field, 2 bytes straddling two fields, 4 bytes into 16-bit fields, a 3-byte write.
    wcommon(&pci, cc::QUEUE_SIZE, 4, 1);
    wcommon(&pci, cc::QUEUE_SIZE + 1, 0x0404, 2);
    wcommon(&pci, cc::QUEUE_SIZE, 0x0004_0004, 4);
    wcommon(&pci, cc::QUEUE_DESC + 1, 0x00ff_ffff, 3);
    wcommon(&pci, cc::QUEUE_DESC + 2, 0xffff, 2);
    wcommon(&pci, cc::DEVICE_STATUS, 0x0f0f, 2);
    let q = pci.borrow().queue_config(0).unwrap();
    assert_eq!(q.size, 16);
    assert_eq!(q.descriptors.raw(), 0);
    assert_eq!(
        common(&pci, cc::DEVICE_STATUS, 1),
        u32::from(FOK),
        "16-bit write to the status byte ignored"
    );
    // Reads of any width assemble bytes of the fields they cover.
    assert_eq!(common(&pci, cc::NUM_QUEUES, 4), 2 | (u32::from(FOK) << 16));
    assert_eq!(common(&pci, cc::NUM_QUEUES + 1, 1), 0);
    assert_eq!(bar(&pci, MODERN_BAR, 0x40, 4), 0, "past the structure");
}

#[test]
fn common_cfg_queue_writes_after_driver_ok_are_ignored() {
    let (pci, ..) = device(PciVariant::Modern, |o| o);
    negotiate(&pci, Features::VERSION_1);
    program_queue(&pci, 0, common::MEM_BASE);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    assert!(pci.borrow().is_live());
    assert_eq!(pci.borrow().device().live_queues(), vec![0]);
    let before = (
        pci.borrow().queue_config(0).unwrap(),
        pci.borrow().queue_config(1).unwrap(),
    );
    for q in 0..2 {
        wcommon(&pci, cc::QUEUE_SELECT, q, 2);
        wcommon(&pci, cc::QUEUE_SIZE, 4, 2);
        wcommon(&pci, cc::QUEUE_DESC, 0x9000, 4);
        wcommon(&pci, cc::QUEUE_DRIVER + 4, 0x9, 4);
        wcommon(&pci, cc::QUEUE_ENABLE, 1, 2);
        wcommon(&pci, cc::QUEUE_ENABLE, 0, 2);
    }
    assert_eq!(
        (
            pci.borrow().queue_config(0).unwrap(),
            pci.borrow().queue_config(1).unwrap()
        ),
        before,
        "queue configuration is fixed once the device is live"
    );
    assert_eq!(pci.borrow().device().live_queues(), vec![0]);
    wcommon(&pci, cc::QUEUE_SELECT, 0, 2);
    assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 1);
}

#[test]
fn common_cfg_queue_size_presents_zero_or_a_power_of_two_for_split_rings() {
    let memory = common::memory();
    let pci = std::rc::Rc::new(std::cell::RefCell::new(
        virtio_pci::PciDevice::new(
            virtio_pci::mock::EchoDevice::new(&[100, 8]),
            memory,
            virtio_pci::PciOptions::new(PciVariant::Modern),
            virtio_pci::InterruptSinks::new(),
        )
        .unwrap(),
    ));
    negotiate(&pci, Features::VERSION_1);
    wcommon(&pci, cc::QUEUE_SELECT, 0, 2);
    assert_eq!(
        common(&pci, cc::QUEUE_SIZE, 2),
        64,
        "maximum 100: a split ring gets 64"
    );
    for bad in [0u32, 48, 128] {
        wcommon(&pci, cc::QUEUE_SIZE, bad, 2);
        assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 0, "size {bad} is unusable");
    }
    wcommon(&pci, cc::QUEUE_SIZE, 32, 2);
    assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 32);
    // With the packed ring any size up to the maximum is fine.
    wcommon(&pci, cc::DEVICE_STATUS, 0, 1);
    negotiate(&pci, Features::VERSION_1 | Features::RING_PACKED);
    assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 100);
    wcommon(&pci, cc::QUEUE_SIZE, 48, 2);
    assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 48);
}

#[test]
fn common_cfg_queue_enabled_before_driver_ok_is_frozen() {
    let pci = modern();
    negotiate(&pci, Features::VERSION_1);
    program_queue(&pci, 0, common::MEM_BASE);
    wcommon(&pci, cc::QUEUE_SIZE, 4, 2);
    assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 16);
}

#[test]
fn common_cfg_reset_restores_defaults_and_unmaps_vectors() {
    let (pci, ..) = device(PciVariant::Modern, |o| o);
    negotiate(&pci, Features::VERSION_1);
    wcommon(&pci, cc::CONFIG_MSIX_VECTOR, 0, 2);
    program_queue(&pci, 1, common::MEM_BASE);
    wcommon(&pci, cc::QUEUE_MSIX_VECTOR, 2, 2);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    assert!(pci.borrow().device().is_active());
    wcommon(&pci, cc::DEVICE_STATUS, 0, 1);
    assert_eq!(
        common(&pci, cc::DEVICE_STATUS, 1),
        0,
        "reset completes at once"
    );
    assert!(!pci.borrow().device().is_active());
    assert_eq!(
        common(&pci, cc::CONFIG_MSIX_VECTOR, 2),
        u32::from(NO_VECTOR)
    );
    assert_eq!(common(&pci, cc::QUEUE_SELECT, 2), 0);
    assert_eq!(
        common(&pci, cc::DRIVER_FEATURE_SELECT, 4),
        0,
        "selects reset too"
    );
    for q in 0..2 {
        wcommon(&pci, cc::QUEUE_SELECT, q, 2);
        assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 0);
        assert_eq!(common(&pci, cc::QUEUE_SIZE, 2), 16);
        assert_eq!(common(&pci, cc::QUEUE_MSIX_VECTOR, 2), u32::from(NO_VECTOR));
        assert_eq!(common(&pci, cc::QUEUE_DESC, 4), 0);
    }
}

#[test]
fn common_cfg_activation_failure_sets_needs_reset_and_signals_config() {
    let (pci, msi, _intx, _) = device(PciVariant::Modern, |o| o);
    // Enable MSI-X, map the config vector to 0, unmask it.
    let m = find_cap(&pci, cap_id::MSIX, None).unwrap();
    wcfg(&pci, m + msix::CONTROL, u32::from(msix::CONTROL_ENABLE), 2);
    wbar(&pci, MSIX_BAR, msix::ENTRY_VECTOR_CONTROL, 0, 4);
    negotiate(&pci, Features::VERSION_1);
    wcommon(&pci, cc::CONFIG_MSIX_VECTOR, 0, 2);
    // A queue whose rings are outside memory: activation fails.
    program_queue(&pci, 0, 0x4000_0000);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    let status = common(&pci, cc::DEVICE_STATUS, 1);
    assert_eq!(status, u32::from(DOK | 0x40), "DEVICE_NEEDS_RESET");
    assert_eq!(
        msi.take_vectors(),
        vec![0],
        "configuration change notification"
    );
    // The device model refusing activation does the same.
    wcommon(&pci, cc::DEVICE_STATUS, 0, 1);
    pci.borrow_mut().device_mut().fail_next_activation();
    negotiate(&pci, Features::VERSION_1);
    wcommon(&pci, cc::CONFIG_MSIX_VECTOR, 0, 2);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1), u32::from(DOK | 0x40));
    assert_eq!(msi.take_vectors(), vec![0]);
}

#[test]
fn common_cfg_device_needs_reset_from_the_device_model_is_visible() {
    let (pci, ..) = device(PciVariant::Modern, |o| o);
    negotiate(&pci, Features::VERSION_1);
    program_queue(&pci, 0, common::MEM_BASE);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    // The device's handle (given at activation) reports a fault.
    let handle = pci.borrow().interrupt();
    handle.signal_needs_reset();
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1), u32::from(DOK | 0x40));
    assert_eq!(bar(&pci, MODERN_BAR, ISR_OFFSET, 1), 2, "config interrupt");
}

#[test]
fn common_cfg_config_generation_moves_on_change_and_on_first_read_after() {
    let pci = modern();
    let generation = || common(&pci, cc::CONFIG_GENERATION, 1);
    let g0 = generation();
    pci.borrow().interrupt().signal_config();
    let g1 = generation();
    assert_ne!(g1, g0, "changed at once");
    let _ = bar(&pci, MODERN_BAR, DEVICE_OFFSET, 4);
    let g2 = generation();
    assert_ne!(
        g2, g1,
        "the first device configuration read after a change moves it again"
    );
    let _ = bar(&pci, MODERN_BAR, DEVICE_OFFSET, 4);
    assert_eq!(generation(), g2, "stable without changes");
    // 256 changes between two driver reads cannot wrap back to the value seen.
    for _ in 0..256 {
        pci.borrow().interrupt().signal_config();
    }
    assert_eq!(generation(), g2, "wrapped");
    let _ = bar(&pci, MODERN_BAR, DEVICE_OFFSET, 4);
    assert_ne!(generation(), g2);
    wcommon(&pci, cc::CONFIG_GENERATION, 0, 1);
    assert_ne!(generation(), 0, "read-only");
}

#[test]
fn common_cfg_device_config_reads_past_length_are_zero_and_writes_ignored() {
    let pci = modern();
    pci.borrow_mut().device_mut().change_config(0xaabb_ccdd);
    assert_eq!(bar(&pci, MODERN_BAR, DEVICE_OFFSET, 4), 0xaabb_ccdd);
    assert_eq!(
        bar(&pci, MODERN_BAR, DEVICE_OFFSET + 1, 2),
        0xbbcc,
        "any width"
    );
    assert_eq!(
        bar(&pci, MODERN_BAR, DEVICE_OFFSET + 6, 4),
        0,
        "past the 8 bytes (activations = 0)"
    );
    wbar(&pci, MODERN_BAR, DEVICE_OFFSET + 8, 0x1234, 4);
    assert_eq!(bar(&pci, MODERN_BAR, DEVICE_OFFSET + 8, 4), 0);
    wbar(&pci, MODERN_BAR, DEVICE_OFFSET, 0x1122_3344, 4);
    assert_eq!(bar(&pci, MODERN_BAR, DEVICE_OFFSET, 4), 0x1122_3344);
}

#[test]
fn common_cfg_ring_reset_resets_and_restarts_one_queue() {
    let (pci, ..) = device(PciVariant::Modern, |o| o);
    negotiate(&pci, Features::VERSION_1 | Features::RING_RESET);
    program_queue(&pci, 0, common::MEM_BASE);
    program_queue(&pci, 1, common::MEM_BASE + 0x1_0000);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    assert_eq!(pci.borrow().device().live_queues(), vec![0, 1]);
    wcommon(&pci, cc::QUEUE_SELECT, 1, 2);
    wcommon(&pci, cc::QUEUE_RESET, 1, 2);
    assert_eq!(common(&pci, cc::QUEUE_RESET, 2), 0, "reset complete");
    assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 0);
    assert_eq!(common(&pci, cc::QUEUE_DESC, 4), 0);
    assert_eq!(
        pci.borrow().device().live_queues(),
        vec![0],
        "queue 0 keeps running"
    );
    // Re-enable with a different configuration: the device model gets the queue through `enable_queue`.
    program_queue(&pci, 1, common::MEM_BASE + 0x2_0000);
    assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 1);
    assert_eq!(pci.borrow().device().live_queues(), vec![0, 1]);
    assert_eq!(
        pci.borrow().queue_config(1).unwrap().descriptors.raw(),
        common::MEM_BASE + 0x2_0000
    );
    assert_eq!(
        common(&pci, cc::DEVICE_STATUS, 1),
        u32::from(DOK),
        "no DEVICE_NEEDS_RESET"
    );
    // A re-enabled queue whose rings are outside memory cannot run: DEVICE_NEEDS_RESET, queue_enable stays 0.
    wcommon(&pci, cc::QUEUE_RESET, 1, 2);
    program_queue(&pci, 1, 0x4000_0000);
    assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 0);
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1), u32::from(DOK | 0x40));
}

#[test]
fn common_cfg_modern_only_device_refuses_a_legacy_driver() {
    let pci = modern();
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(ACK), 1);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DRV), 1);
    wcommon(&pci, cc::DRIVER_FEATURE_SELECT, 0, 4);
    wcommon(&pci, cc::DRIVER_FEATURE, Features::EVENT_IDX.window(0), 4);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DRV | 4), 1);
    assert!(
        !pci.borrow().is_live(),
        "no DRIVER_OK without VERSION_1 on a modern-only device"
    );
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(FOK), 1);
    assert_eq!(common(&pci, cc::DEVICE_STATUS, 1) & 8, 0);
}

#[test]
fn common_cfg_queue_reset_without_ring_reset_is_ignored() {
    let (pci, ..) = device(PciVariant::Modern, |o| o);
    negotiate(&pci, Features::VERSION_1);
    program_queue(&pci, 0, common::MEM_BASE);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    wcommon(&pci, cc::QUEUE_SELECT, 0, 2);
    wcommon(&pci, cc::QUEUE_RESET, 1, 2);
    assert_eq!(common(&pci, cc::QUEUE_ENABLE, 2), 1);
    assert_eq!(pci.borrow().device().live_queues(), vec![0]);
}

// ----- notifications -----

#[test]
fn notify_addresses_report_bar_offset_and_datamatch() {
    let pci = modern();
    let a = pci.borrow().queue_notify_address(1).unwrap();
    assert_eq!(
        (a.bar, a.offset, a.len, a.datamatch),
        (MODERN_BAR, NOTIFY_OFFSET + 4, 2, None)
    );
    assert!(pci.borrow().queue_notify_address(2).is_none());
    assert!(pci.borrow().legacy_notify_address(0).is_none());
    let (pci, ..) = device(PciVariant::Transitional, |o| o.notify_off_multiplier(0));
    let a = pci.borrow().queue_notify_address(1).unwrap();
    assert_eq!((a.offset, a.datamatch), (NOTIFY_OFFSET, Some(1)));
    let l = pci.borrow().legacy_notify_address(1).unwrap();
    assert_eq!(
        (l.bar, l.offset, l.len, l.datamatch),
        (LEGACY_BAR, legacy::QUEUE_NOTIFY, 2, Some(1))
    );
    negotiate(&pci, Features::VERSION_1 | Features::NOTIFICATION_DATA);
    let a = pci.borrow().queue_notify_address(1).unwrap();
    assert_eq!((a.len, a.datamatch), (4, None));
}

#[test]
fn notify_writes_of_wrong_width_or_offset_do_not_notify() {
    // The echo device counts processed chains; a notify with nothing available processes nothing but must not
    // fault either. Use an unprogrammed-but-enabled queue to see that odd writes never reach the device.
    let (pci, ..) = device(PciVariant::Modern, |o| o);
    negotiate(&pci, Features::VERSION_1);
    program_queue(&pci, 0, common::MEM_BASE);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    for (at, len) in [
        (0u64, 1usize),
        (0, 3),
        (0, 4),
        (1, 2),
        (2, 2),
        (8, 2),
        (0xffc, 2),
    ] {
        let buf = vec![0u8; len];
        pci.borrow_mut()
            .bar_write(MODERN_BAR, NOTIFY_OFFSET + at, &buf);
    }
    assert_eq!(pci.borrow().device().faults(), 0);
    assert_eq!(
        bar(&pci, MODERN_BAR, NOTIFY_OFFSET, 4),
        0,
        "the notification structure reads 0"
    );
}

// ----- MSI-X -----

fn msix_on(pci: &Pci) -> u16 {
    let m = find_cap(pci, cap_id::MSIX, None).unwrap();
    wcfg(pci, m + msix::CONTROL, u32::from(msix::CONTROL_ENABLE), 2);
    m
}

#[test]
fn msix_vector_beyond_table_reads_back_no_vector() {
    let pci = modern();
    msix_on(&pci);
    for (v, expect) in [
        (0u32, 0u32),
        (2, 2),
        (3, u32::from(NO_VECTOR)),
        (0x7ff, u32::from(NO_VECTOR)),
        (0xffff, 0xffff),
    ] {
        wcommon(&pci, cc::CONFIG_MSIX_VECTOR, v, 2);
        assert_eq!(
            common(&pci, cc::CONFIG_MSIX_VECTOR, 2),
            expect,
            "config vector {v}"
        );
        wcommon(&pci, cc::QUEUE_SELECT, 1, 2);
        wcommon(&pci, cc::QUEUE_MSIX_VECTOR, v, 2);
        assert_eq!(
            common(&pci, cc::QUEUE_MSIX_VECTOR, 2),
            expect,
            "queue vector {v}"
        );
    }
    // Without an MSI-X capability every mapping is refused.
    let (pci, ..) = device(PciVariant::Modern, |o| o.msix_vectors(0));
    wcommon(&pci, cc::CONFIG_MSIX_VECTOR, 0, 2);
    assert_eq!(
        common(&pci, cc::CONFIG_MSIX_VECTOR, 2),
        u32::from(NO_VECTOR)
    );
}

#[test]
fn msix_table_writes_out_of_range_are_ignored() {
    let pci = modern(); // 3 vectors: table 0x30 bytes, PBA at 0x800
    let before: Vec<u32> = (0..0x1000 / 4)
        .map(|i| bar(&pci, MSIX_BAR, i * 4, 4))
        .collect();
    for at in (0x30..0x1000u64).step_by(4) {
        wbar(&pci, MSIX_BAR, at, 0xdead_beef, 4);
    }
    let after: Vec<u32> = (0..0x1000 / 4)
        .map(|i| bar(&pci, MSIX_BAR, i * 4, 4))
        .collect();
    assert_eq!(
        before, after,
        "beyond the table and the read-only PBA nothing changes"
    );
    assert_eq!(after[3], 1, "entries start masked");
    assert_eq!(after[0x800 / 4], 0, "nothing pending");
    // In range, entries are read-write at dword granularity.
    wbar(&pci, MSIX_BAR, 0x20, 0xfee0_1000, 4);
    wbar(&pci, MSIX_BAR, 0x28, 0x41, 4);
    assert_eq!(bar(&pci, MSIX_BAR, 0x20, 4), 0xfee0_1000);
    assert_eq!(bar(&pci, MSIX_BAR, 0x28, 4), 0x41);
}

#[test]
fn msix_masked_vector_sets_pending_and_delivers_on_unmask() {
    let (pci, msi, intx, _) = device(PciVariant::Modern, |o| o);
    msix_on(&pci);
    wbar(&pci, MSIX_BAR, 16, 0xfee0_0000, 4);
    wbar(&pci, MSIX_BAR, 16 + 8, 0x77, 4);
    wcommon(&pci, cc::QUEUE_SELECT, 0, 2);
    wcommon(&pci, cc::QUEUE_MSIX_VECTOR, 1, 2);
    pci.borrow().interrupt().signal_queue(0);
    assert!(msi.take().is_empty(), "vector 1 is masked");
    assert!(pci.borrow().msix_pending(1));
    assert_eq!(bar(&pci, MSIX_BAR, 0x800, 4), 0b10, "PBA bit 1");
    assert!(!intx.level(), "no INTx with MSI-X enabled");
    wbar(&pci, MSIX_BAR, 16 + 12, 0, 4); // unmask
    let sent = msi.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].vector, sent[0].address, sent[0].data),
        (1, 0xfee0_0000, 0x77)
    );
    assert_eq!(
        bar(&pci, MSIX_BAR, 0x800, 4),
        0,
        "pending cleared on delivery"
    );
    pci.borrow().interrupt().signal_queue(0);
    assert_eq!(msi.take_vectors(), vec![1], "unmasked: delivered at once");
}

#[test]
fn msix_function_mask_holds_messages_until_cleared() {
    let (pci, msi, ..) = device(PciVariant::Modern, |o| o);
    let m = msix_on(&pci);
    for v in 0..3u64 {
        wbar(&pci, MSIX_BAR, v * 16 + 12, 0, 4);
    }
    wcommon(&pci, cc::CONFIG_MSIX_VECTOR, 0, 2);
    wcfg(
        &pci,
        m + msix::CONTROL,
        u32::from(msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK),
        2,
    );
    assert!(pci.borrow().msix_function_masked());
    pci.borrow().interrupt().signal_config();
    assert!(msi.take().is_empty());
    assert!(pci.borrow().msix_pending(0));
    wcfg(&pci, m + msix::CONTROL, u32::from(msix::CONTROL_ENABLE), 2);
    assert_eq!(msi.take_vectors(), vec![0]);
}

#[test]
fn msix_no_vector_raises_no_interrupt_at_all() {
    let (pci, msi, intx, _) = device(PciVariant::Modern, |o| o);
    msix_on(&pci);
    pci.borrow().interrupt().signal_queue(0);
    pci.borrow().interrupt().signal_config();
    assert!(msi.take().is_empty());
    assert!(!intx.level());
    for v in 0..3 {
        assert!(!pci.borrow().msix_pending(v));
    }
    assert_eq!(
        bar(&pci, MODERN_BAR, ISR_OFFSET, 1),
        2,
        "the config bit is still set in the ISR"
    );
}

#[test]
fn interrupt_handle_of_an_earlier_activation_is_inert_after_reset() {
    let (pci, msi, intx, _) = device(PciVariant::Transitional, |o| o);
    negotiate(&pci, Features::VERSION_1);
    program_queue(&pci, 0, common::MEM_BASE);
    wcommon(&pci, cc::DEVICE_STATUS, u32::from(DOK), 1);
    let stale = pci.borrow().device().interrupt_handle().expect("activated");
    assert!(!stale.is_stale());
    wcommon(&pci, cc::DEVICE_STATUS, 0, 1);
    assert!(stale.is_stale());
    stale.signal_queue(0);
    stale.signal_config();
    stale.signal_needs_reset();
    assert!(!intx.level());
    assert!(msi.take().is_empty());
    assert_eq!(bar(&pci, MODERN_BAR, ISR_OFFSET, 1), 0);
    // The VMM's handle is not bound to an activation and keeps working.
    let vmm = pci.borrow().interrupt();
    vmm.signal_config();
    assert!(intx.level());
}

// ----- legacy header -----

#[test]
fn legacy_header_moves_device_config_when_msix_is_enabled() {
    let (pci, ..) = device(PciVariant::Transitional, |o| o);
    pci.borrow_mut().device_mut().change_config(0x1122_3344);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::CONFIG_OFFSET, 4),
        0x1122_3344,
        "at 20 without MSI-X"
    );
    let m = msix_on(&pci);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::CONFIG_OFFSET_MSIX, 4),
        0x1122_3344,
        "at 24 with MSI-X"
    );
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::CONFIG_MSIX_VECTOR, 2),
        u32::from(NO_VECTOR)
    );
    wbar(&pci, LEGACY_BAR, legacy::CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::CONFIG_MSIX_VECTOR, 2), 2);
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_MSIX_VECTOR, 5, 2);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::QUEUE_MSIX_VECTOR, 2),
        u32::from(NO_VECTOR),
        "beyond the table"
    );
    wcfg(&pci, m + msix::CONTROL, 0, 2);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::CONFIG_OFFSET, 4),
        0x1122_3344,
        "and back"
    );
    // Any width on device configuration through the legacy interface.
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::CONFIG_OFFSET + 1, 1), 0x33);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::CONFIG_OFFSET + 1, 2), 0x2233);
}

#[test]
fn legacy_pfn_programs_the_ring_with_4096_alignment() {
    let (pci, ..) = device(PciVariant::Legacy, |o| o);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::HOST_FEATURES, 4),
        pci.borrow().offered_features().window(0)
    );
    assert_eq!(
        pci.borrow().offered_features().bits() >> 32,
        0,
        "a legacy device offers no bit above 31"
    );
    wbar(&pci, LEGACY_BAR, legacy::DEVICE_STATUS, u32::from(ACK), 1);
    wbar(&pci, LEGACY_BAR, legacy::DEVICE_STATUS, u32::from(DRV), 1);
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_SELECT, 1, 2);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::QUEUE_SIZE, 2), 16);
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_SIZE, 4, 2);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::QUEUE_SIZE, 2),
        16,
        "read-only"
    );
    let pfn = (common::MEM_BASE >> 12) as u32;
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, pfn, 4);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, 4), pfn);
    let q = pci.borrow().queue_config(1).unwrap();
    assert!(q.ready);
    assert_eq!(q.descriptors.raw(), common::MEM_BASE);
    assert_eq!(q.driver_area.raw(), common::MEM_BASE + 16 * 16);
    assert_eq!(
        q.device_area.raw(),
        common::MEM_BASE + 0x1000,
        "used ring on the next 4096 boundary"
    );
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, 0, 4);
    assert!(
        !pci.borrow().queue_config(1).unwrap().ready,
        "PFN 0 disables the queue"
    );
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, pfn, 4);
    wbar(
        &pci,
        LEGACY_BAR,
        legacy::DEVICE_STATUS,
        u32::from(DRV | 4),
        1,
    );
    assert!(pci.borrow().is_live());
    assert_eq!(pci.borrow().device().live_queues(), vec![1]);
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, pfn + 1, 4);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, 4),
        pfn,
        "fixed once live"
    );
}

#[test]
fn legacy_guest_features_write_clears_the_high_word() {
    let (pci, ..) = device(PciVariant::Transitional, |o| o);
    // A modern driver wrote VERSION_1, then a legacy driver takes over without a reset.
    wcommon(&pci, cc::DRIVER_FEATURE_SELECT, 1, 4);
    wcommon(&pci, cc::DRIVER_FEATURE, 1, 4);
    wbar(
        &pci,
        LEGACY_BAR,
        legacy::GUEST_FEATURES,
        Features::EVENT_IDX.window(0),
        4,
    );
    assert_eq!(pci.borrow().driver_features(), Features::EVENT_IDX);
    assert_eq!(
        bar(&pci, LEGACY_BAR, legacy::GUEST_FEATURES, 4),
        Features::EVENT_IDX.window(0)
    );
}

#[test]
fn legacy_header_odd_widths_never_panic_and_ignore_partial_writes() {
    let (pci, ..) = device(PciVariant::Transitional, |o| o);
    for at in 0..0x20u64 {
        for len in [1usize, 2, 3, 4, 8] {
            let mut buf = vec![0u8; len];
            pci.borrow_mut().bar_read(LEGACY_BAR, at, &mut buf);
        }
    }
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_SELECT, 0, 1);
    wbar(&pci, LEGACY_BAR, legacy::DEVICE_STATUS - 1, 0x0101, 2); // straddles notify and status
    wbar(&pci, LEGACY_BAR, legacy::QUEUE_PFN + 1, 0xffff, 2);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::DEVICE_STATUS, 1), 0);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::QUEUE_PFN, 4), 0);
    // A 4-byte read at the status byte includes the ISR, which it clears once.
    pci.borrow().interrupt().signal_config();
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::DEVICE_STATUS, 2) >> 8, 2);
    assert_eq!(bar(&pci, LEGACY_BAR, legacy::ISR, 1), 0);
}

#[test]
fn isr_read_clears_and_deasserts_intx() {
    let (pci, _msi, intx, _) = device(PciVariant::Modern, |o| o);
    let irq = pci.borrow().interrupt();
    irq.signal_queue(1);
    irq.signal_config();
    assert!(intx.level());
    assert_eq!(intx.assertions(), 1, "one rising edge for both causes");
    assert_eq!(
        bar(&pci, MODERN_BAR, ISR_OFFSET, 4),
        3,
        "both bits, padding reads 0"
    );
    assert!(!intx.level());
    assert_eq!(bar(&pci, MODERN_BAR, ISR_OFFSET, 1), 0);
    irq.signal_queue(7);
    assert!(!intx.level(), "a queue that does not exist raises nothing");
    wbar(&pci, MODERN_BAR, ISR_OFFSET, 0xff, 1);
    assert_eq!(bar(&pci, MODERN_BAR, ISR_OFFSET, 1), 0, "read-only");
}
