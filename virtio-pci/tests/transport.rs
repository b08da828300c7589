//! The driver side against devices that present malformed capability lists or refuse requests, and the interrupt
//! fallbacks (per-queue vectors → shared vector → INTx).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

mod common;

use common::{device, find_cap, Harness, Patched, Pci};
use virtio_core::transport::{InterruptDispatch, Transport};
use virtio_core::{DeviceAddr, Features, QueueConfig, RingFormat, RingLayout};
use virtio_pci::spec::{cap_id, header, msix, vcap, CfgType};
use virtio_pci::{
    size_bar, Error, Interface, InterruptMode, LocalAccess, PciAccess, PciTransport, PciVariant,
};

fn modern() -> Pci {
    device(PciVariant::Modern, |o| o).0
}

fn cap(pci: &Pci, t: CfgType) -> u16 {
    find_cap(pci, cap_id::VENDOR, Some(t)).unwrap()
}

fn probe(pci: &Pci, patch: impl FnOnce(&mut Patched)) -> Result<PciTransport<Patched>, Error> {
    let mut access = Patched::new(pci);
    patch(&mut access);
    PciTransport::new(access)
}

// ----- capability list -----

#[test]
fn transport_unpatched_device_probes_every_structure() {
    let pci = modern();
    let t = probe(&pci, |_| {}).unwrap();
    let m = t.modern_layout().unwrap();
    assert_eq!(
        (m.common.bar, m.common.offset, m.common.length),
        (4, 0, 0x40)
    );
    assert_eq!(m.notify_off_multiplier, 4);
    assert_eq!(m.device.unwrap().length, 8);
    assert_eq!(t.msix_capability().unwrap().table_size, 3);
    assert_eq!(t.device_type(), virtio_core::device_type::RNG);
    assert_eq!(t.device_id(), 0x1044);
}

#[test]
fn transport_cap_length_outside_its_bar_is_rejected() {
    let pci = modern();
    let at = cap(&pci, CfgType::Common);
    let err = probe(&pci, |a| a.set32(at + vcap::LENGTH, 0x1_0000)).unwrap_err();
    assert_eq!(
        err,
        Error::CapabilityOutOfBar {
            cfg_type: CfgType::Common,
            bar: 4,
            offset: 0,
            length: 0x1_0000,
            bar_size: 0x4000
        }
    );
    assert!(err.is_device_fault());
}

#[test]
fn transport_cap_offset_outside_its_bar_is_rejected() {
    let pci = modern();
    let at = cap(&pci, CfgType::Device);
    let err = probe(&pci, |a| a.set32(at + vcap::OFFSET, 0x3ffc)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapabilityOutOfBar {
                cfg_type: CfgType::Device,
                offset: 0x3ffc,
                ..
            }
        ),
        "{err}"
    );
    let err = probe(&pci, |a| {
        a.set32(at + vcap::OFFSET, 0xffff_fffc);
        a.set32(at + vcap::LENGTH, 0xffff_ffff);
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::CapabilityOutOfBar { .. }),
        "no overflow: {err}"
    );
}

#[test]
fn transport_cap_naming_unimplemented_bar_is_rejected() {
    let pci = modern();
    let at = cap(&pci, CfgType::Isr);
    let err = probe(&pci, |a| a.set8(at + vcap::BAR, 2)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CapabilityOutOfBar {
                cfg_type: CfgType::Isr,
                bar: 2,
                bar_size: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn transport_looping_cap_list_is_rejected() {
    let pci = modern();
    let common_at = cap(&pci, CfgType::Common);
    let isr_at = cap(&pci, CfgType::Isr);
    let err = probe(&pci, |a| a.set8(isr_at + vcap::NEXT, common_at as u8)).unwrap_err();
    assert_eq!(err, Error::CapabilityLoop { at: common_at });
    let err = probe(&pci, |a| a.set8(common_at + vcap::NEXT, common_at as u8)).unwrap_err();
    assert_eq!(err, Error::CapabilityLoop { at: common_at }, "self loop");
}

#[test]
fn transport_cap_pointer_into_the_header_is_rejected() {
    let pci = modern();
    let common_at = cap(&pci, CfgType::Common);
    let err = probe(&pci, |a| a.set8(common_at + vcap::NEXT, 0x20)).unwrap_err();
    assert_eq!(
        err,
        Error::CapabilityPointer {
            at: common_at + 1,
            pointer: 0x20
        }
    );
    let err = probe(&pci, |a| a.set8(header::CAPABILITIES_POINTER, 0x3c)).unwrap_err();
    assert_eq!(
        err,
        Error::CapabilityPointer {
            at: header::CAPABILITIES_POINTER,
            pointer: 0x3c
        }
    );
}

#[test]
fn transport_cap_pointer_low_bits_are_masked() {
    let pci = modern();
    let common_at = cap(&pci, CfgType::Common);
    assert!(probe(&pci, |a| a
        .set8(header::CAPABILITIES_POINTER, common_at as u8 | 3))
    .is_ok());
}

#[test]
fn transport_short_cap_len_is_rejected() {
    let pci = modern();
    let notify_at = cap(&pci, CfgType::Notify);
    let err = probe(&pci, |a| a.set8(notify_at + vcap::LEN, 16)).unwrap_err();
    assert_eq!(
        err,
        Error::CapabilityTooShort {
            at: notify_at,
            len: 16
        }
    );
    let common_at = cap(&pci, CfgType::Common);
    let err = probe(&pci, |a| a.set8(common_at + vcap::LEN, 8)).unwrap_err();
    assert_eq!(
        err,
        Error::CapabilityTooShort {
            at: common_at,
            len: 8
        }
    );
    // A longer cap_len than the structure is accepted (§4.1.4.1).
    assert!(probe(&pci, |a| a.set8(common_at + vcap::LEN, 32)).is_ok());
}

#[test]
fn transport_structure_too_short_or_misaligned_is_rejected() {
    let pci = modern();
    let common_at = cap(&pci, CfgType::Common);
    let err = probe(&pci, |a| a.set32(common_at + vcap::LENGTH, 0x30)).unwrap_err();
    assert_eq!(
        err,
        Error::StructureTooShort {
            cfg_type: CfgType::Common,
            length: 0x30,
            needed: 0x38
        }
    );
    let err = probe(&pci, |a| a.set32(common_at + vcap::OFFSET, 2)).unwrap_err();
    assert_eq!(
        err,
        Error::MisalignedStructure {
            cfg_type: CfgType::Common,
            offset: 2,
            align: 4
        }
    );
    let notify_at = cap(&pci, CfgType::Notify);
    let err = probe(&pci, |a| a.set32(notify_at + vcap::LENGTH, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StructureTooShort {
                cfg_type: CfgType::Notify,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn transport_reserved_cfg_type_or_bar_is_ignored() {
    let pci = modern();
    let notify_at = cap(&pci, CfgType::Notify);
    let err = probe(&pci, |a| a.set8(notify_at + vcap::CFG_TYPE, 7)).unwrap_err();
    assert_eq!(
        err,
        Error::MissingCapability {
            cfg_type: CfgType::Notify
        }
    );
    let err = probe(&pci, |a| a.set8(notify_at + vcap::BAR, 6)).unwrap_err();
    assert_eq!(
        err,
        Error::MissingCapability {
            cfg_type: CfgType::Notify
        }
    );
    // Without the common configuration, a modern-only device has nothing a driver can use.
    let common_at = cap(&pci, CfgType::Common);
    let err = probe(&pci, |a| a.set8(common_at + vcap::BAR, 0xff)).unwrap_err();
    assert_eq!(err, Error::NoSuchInterface { wanted: "legacy" });
}

#[test]
fn transport_uses_the_first_instance_of_each_structure() {
    let pci = modern();
    // Turn the PCI cfg capability (after the real common one) into a bogus second common configuration.
    let pci_cfg_at = cap(&pci, CfgType::PciCfg);
    let t = probe(&pci, |a| {
        a.set8(pci_cfg_at + vcap::CFG_TYPE, CfgType::Common.raw());
        a.set8(pci_cfg_at + vcap::BAR, 4);
        a.set32(pci_cfg_at + vcap::OFFSET, 0xffff_0000);
    })
    .unwrap();
    assert_eq!(t.modern_layout().unwrap().common.offset, 0);
}

#[test]
fn transport_transitional_without_caps_falls_back_to_legacy() {
    let (pci, ..) = device(PciVariant::Transitional, |o| o);
    let common_at = cap(&pci, CfgType::Common);
    let t = probe(&pci, |a| a.set8(common_at + vcap::CFG_TYPE, 0x77)).unwrap();
    assert_eq!(t.interface(), Interface::Legacy);
}

#[test]
fn transport_non_virtio_function_is_rejected() {
    let pci = modern();
    let err = probe(&pci, |a| a.set16(header::VENDOR_ID, 0x8086)).unwrap_err();
    assert_eq!(
        err,
        Error::NotVirtio {
            vendor: 0x8086,
            device: 0x1044
        }
    );
    let err = probe(&pci, |a| a.set16(header::DEVICE_ID, 0x1080)).unwrap_err();
    assert_eq!(
        err,
        Error::NotVirtio {
            vendor: 0x1af4,
            device: 0x1080
        }
    );
}

#[test]
fn transport_msix_table_or_pba_outside_its_bar_is_rejected() {
    let pci = modern();
    let m = find_cap(&pci, cap_id::MSIX, None).unwrap();
    let err = probe(&pci, |a| a.set32(m + msix::TABLE, 0x1000 | 1)).unwrap_err();
    assert_eq!(
        err,
        Error::MsixOutOfBar {
            what: "table",
            bar: 1,
            offset: 0x1000
        }
    );
    let err = probe(&pci, |a| a.set32(m + msix::PBA, 0x800 | 2)).unwrap_err();
    assert_eq!(
        err,
        Error::MsixOutOfBar {
            what: "PBA",
            bar: 2,
            offset: 0x800
        }
    );
    let err = probe(&pci, |a| a.set16(m + msix::CONTROL, 0x7ff)).unwrap_err();
    assert!(
        matches!(err, Error::MsixOutOfBar { what: "table", .. }),
        "2048 entries do not fit 4 KiB: {err}"
    );
}

#[test]
fn transport_legacy_bar_that_is_not_io_is_rejected() {
    let (pci, ..) = device(PciVariant::Transitional, |o| o);
    struct MemBar0(LocalAccess<virtio_pci::mock::EchoDevice>);
    impl PciAccess for MemBar0 {
        fn config_read_bytes(&mut self, o: u16, d: &mut [u8]) {
            self.0.config_read_bytes(o, d)
        }
        fn config_write_bytes(&mut self, o: u16, d: &[u8]) {
            self.0.config_write_bytes(o, d)
        }
        fn bar_read_bytes(&mut self, b: u8, o: u64, d: &mut [u8]) {
            self.0.bar_read_bytes(b, o, d)
        }
        fn bar_write_bytes(&mut self, b: u8, o: u64, d: &[u8]) {
            self.0.bar_write_bytes(b, o, d)
        }
        fn bar_info(&mut self, index: u8) -> Option<virtio_pci::BarInfo> {
            let b = self.0.bar_info(index)?;
            Some(if index == 0 {
                virtio_pci::BarInfo::new(0, virtio_pci::BarKind::Memory32, b.size, 0)
            } else {
                b
            })
        }
        fn enable_interrupts(&mut self, r: virtio_pci::IrqRequest) -> virtio_pci::Result<()> {
            self.0.enable_interrupts(r)
        }
    }
    let err = PciTransport::with_interface(MemBar0(LocalAccess::new(pci)), Interface::Legacy)
        .unwrap_err();
    assert_eq!(err, Error::NoLegacyBar);
}

#[test]
fn transport_bar_sizing_matches_the_device() {
    for variant in [
        PciVariant::Modern,
        PciVariant::Transitional,
        PciVariant::Legacy,
    ] {
        let (pci, ..) = device(variant, |o| o);
        let mut access = LocalAccess::new(pci.clone());
        access.config_write_u32(0x20, 0xfe00_0000);
        access.config_write_u16(header::COMMAND, 0x7);
        for i in 0..6u8 {
            let sized = size_bar(&mut access, i);
            let truth = pci.borrow().bar(i);
            assert_eq!(sized, truth, "{variant:?} BAR {i}");
        }
        assert_eq!(
            access.config_read_u16(header::COMMAND),
            0x7,
            "decoding restored"
        );
        assert_eq!(
            access.config_read_u32(0x20) & !0xf,
            if variant == PciVariant::Legacy {
                0
            } else {
                0xfe00_0000
            }
        );
    }
}

// ----- interrupts -----

#[test]
fn transport_vector_refused_falls_back_to_shared_vector() {
    // The device has 2 vectors but its capability claims 8: per-queue vectors need 3, the device refuses vector 2
    // (reads back NO_VECTOR), the driver falls back to one shared vector.
    let (pci, msi, intx, memory) = device(PciVariant::Modern, |o| o.msix_vectors(2));
    let m = find_cap(&pci, cap_id::MSIX, None).unwrap();
    let mut access = Patched::new(&pci);
    access.set16(m + msix::CONTROL, 7);
    let transport = PciTransport::new(access).unwrap();
    assert_eq!(transport.msix_capability().unwrap().table_size, 8);
    let mut h = Harness::from_parts(pci, transport, memory, msi, intx);
    assert_eq!(
        h.init(Features::VERSION_1, InterruptMode::PerQueueVectors),
        InterruptMode::SharedVector
    );
    assert_eq!(h.pci.borrow().queue_vector(1), 1);
    h.traffic(5);
    h.config_change(3);
}

#[test]
fn transport_single_vector_device_falls_back_to_intx() {
    let mut h = Harness::with_options(PciVariant::Modern, None, |o| o.msix_vectors(1));
    assert_eq!(
        h.init(Features::VERSION_1, InterruptMode::PerQueueVectors),
        InterruptMode::Intx
    );
    assert!(!h.pci.borrow().msix_enabled());
    h.traffic(5);
    h.config_change(3);
}

#[test]
fn transport_device_without_msix_uses_intx() {
    for variant in [
        PciVariant::Modern,
        PciVariant::Transitional,
        PciVariant::Legacy,
    ] {
        let mut h = Harness::with_options(variant, None, |o| o.msix_vectors(0));
        assert!(h.transport.msix_capability().is_none());
        assert_eq!(
            h.init(
                Features::VERSION_1 | Features::EVENT_IDX,
                InterruptMode::PerQueueVectors
            ),
            InterruptMode::Intx
        );
        h.traffic(5);
        h.config_change(9);
    }
}

#[test]
fn transport_handle_intx_with_empty_isr_reports_not_mine() {
    let mut h = Harness::new(PciVariant::Modern, None);
    h.init(Features::VERSION_1, InterruptMode::Intx);
    let mut dispatch = InterruptDispatch::new();
    assert_eq!(h.transport.handle_intx(&mut dispatch, |_| true), 0);
    assert_eq!(
        h.transport.handle_vector(1, &mut dispatch, |_| true),
        0,
        "no vectors in INTx mode"
    );
}

// ----- queues and configuration -----

#[test]
fn transport_config_out_of_range_is_a_typed_error() {
    let mut h = Harness::new(PciVariant::Modern, None);
    h.init(Features::VERSION_1, InterruptMode::Intx);
    let mut buf = [0u8; 4];
    assert_eq!(
        h.transport.read_config_checked(6, &mut buf),
        Err(Error::ConfigOutOfRange { offset: 6, len: 4 })
    );
    assert_eq!(
        h.transport.write_config_checked(usize::MAX, &buf),
        Err(Error::ConfigOutOfRange {
            offset: usize::MAX,
            len: 4
        })
    );
    assert_eq!(
        h.transport.read_config(8, &mut buf),
        Err(virtio_core::Error::ConfigOutOfRange { offset: 8, len: 4 })
    );
    assert!(h.transport.read_config(4, &mut buf).is_ok());
    assert_eq!(u32::from_le_bytes(buf), 1, "one activation so far");
    // Odd offsets and lengths inside the structure use naturally aligned accesses.
    let mut three = [0u8; 3];
    h.pci.borrow_mut().device_mut().change_config(0x0403_0201);
    h.transport.read_config(1, &mut three).unwrap();
    assert_eq!(three, [2, 3, 4]);
    h.transport.write_config(1, &[9, 9]).unwrap();
    h.transport.read_config(0, &mut buf).unwrap();
    assert_eq!(buf, [1, 9, 9, 4]);
}

#[test]
fn transport_modern_queue_errors_are_typed() {
    let mut h = Harness::new(PciVariant::Modern, None);
    h.transport
        .begin_init(Features::VERSION_1, Features::VERSION_1)
        .unwrap();
    let layout = RingLayout::new(RingFormat::Split, 32);
    let too_big = QueueConfig::with_layout(32, &layout, DeviceAddr::new(common::MEM_BASE)).unwrap();
    assert_eq!(
        h.transport.setup_queue(0, &too_big),
        Err(virtio_core::Error::InvalidQueueSize { size: 32, max: 16 })
    );
    assert_eq!(
        h.transport.setup_queue_checked(2, &too_big),
        Err(Error::Core(virtio_core::Error::NoSuchQueue { index: 2 }))
    );
    assert_eq!(h.transport.max_queue_size(2), 0);
    let mut odd = QueueConfig::with_layout(
        16,
        &RingLayout::new(RingFormat::Split, 16),
        DeviceAddr::new(common::MEM_BASE),
    )
    .unwrap();
    odd.size = 12;
    assert_eq!(
        h.transport.setup_queue(0, &odd),
        Err(virtio_core::Error::InvalidQueueSize { size: 12, max: 16 }),
        "split rings need a power of two"
    );
    let ok = QueueConfig::with_layout(
        16,
        &RingLayout::new(RingFormat::Split, 16),
        DeviceAddr::new(common::MEM_BASE),
    )
    .unwrap();
    h.transport.setup_queue_checked(0, &ok).unwrap();
    assert_eq!(h.transport.max_queue_size(0), 0, "in use");
    assert_eq!(
        h.transport.setup_queue(0, &ok),
        Err(virtio_core::Error::QueueInUse { index: 0 }),
        "already enabled"
    );
    assert_eq!(
        h.transport.reset_queue(0),
        Err(virtio_core::Error::QueueNotReady)
    );
    assert_eq!(
        h.transport.reset_queue_checked(0),
        Err(Error::QueueResetUnsupported),
        "RING_RESET not negotiated"
    );
}

#[test]
fn transport_notify_offset_outside_notify_structure_is_rejected() {
    let (pci, msi, intx, memory) = device(PciVariant::Modern, |o| o);
    let notify_at = cap(&pci, CfgType::Notify);
    let mut access = Patched::new(&pci);
    access.set32(notify_at + vcap::LENGTH, 2); // room for queue 0 only
    let transport = PciTransport::new(access).unwrap();
    let mut h = Harness::from_parts(pci, transport, memory, msi, intx);
    h.transport
        .begin_init(Features::VERSION_1, Features::VERSION_1)
        .unwrap();
    let config = |base| {
        QueueConfig::with_layout(
            16,
            &RingLayout::new(RingFormat::Split, 16),
            DeviceAddr::new(base),
        )
        .unwrap()
    };
    h.transport
        .setup_queue_checked(0, &config(common::MEM_BASE))
        .unwrap();
    assert_eq!(
        h.transport
            .setup_queue_checked(1, &config(common::MEM_BASE + 0x1_0000)),
        Err(Error::NotifyOutOfRange {
            queue: 1,
            offset: 4
        })
    );
}

#[test]
fn transport_legacy_queue_with_wrong_layout_is_rejected() {
    let mut h = Harness::new(PciVariant::Transitional, Some(Interface::Legacy));
    h.transport
        .begin_init(Features::EVENT_IDX, Features::empty())
        .unwrap();
    let base = DeviceAddr::new(common::MEM_BASE);
    let smaller = QueueConfig::legacy(16, 8, base, 4096).unwrap();
    assert_eq!(
        h.transport.setup_queue(0, &smaller),
        Err(virtio_core::Error::InvalidQueueSize { size: 8, max: 16 }),
        "no size negotiation on the legacy interface"
    );
    let misaligned =
        QueueConfig::legacy(16, 16, DeviceAddr::new(common::MEM_BASE + 0x100), 4096).unwrap();
    assert_eq!(
        h.transport.setup_queue_checked(0, &misaligned),
        Err(Error::QueueLayout { queue: 0 })
    );
    let modern_layout =
        QueueConfig::with_layout(16, &RingLayout::new(RingFormat::Split, 16), base).unwrap();
    assert_eq!(
        h.transport.setup_queue_checked(0, &modern_layout),
        Err(Error::QueueLayout { queue: 0 })
    );
    let high = QueueConfig::legacy(16, 16, DeviceAddr::new(1 << 44), 4096).unwrap();
    assert_eq!(
        h.transport.setup_queue_checked(0, &high),
        Err(Error::QueueLayout { queue: 0 }),
        "PFN beyond 32 bits"
    );
    let good = QueueConfig::legacy(16, 16, base, 4096).unwrap();
    h.transport.setup_queue_checked(0, &good).unwrap();
    assert_eq!(
        h.transport.setup_queue(0, &good),
        Err(virtio_core::Error::QueueInUse { index: 0 }),
        "already set"
    );
    assert_eq!(
        h.transport.reset_queue_checked(0),
        Err(Error::QueueResetUnsupported)
    );
    assert_eq!(
        h.transport.config_generation(),
        0,
        "legacy has no generation"
    );
    assert_eq!(h.transport.num_queues(), None);
}

#[test]
fn transport_ring_reset_then_setup_restarts_one_queue() {
    let mut h = Harness::new(PciVariant::Modern, None);
    h.init(
        Features::VERSION_1 | Features::RING_RESET | Features::EVENT_IDX,
        InterruptMode::PerQueueVectors,
    );
    assert!(h.features.contains(Features::RING_RESET));
    h.traffic(3);
    h.transport.reset_queue(1).unwrap();
    assert_eq!(h.pci.borrow().device().live_queues(), vec![0]);
    assert_eq!(h.roundtrip(0, b"still running"), b"gninnur llits");
    // Reprogram queue 1 somewhere else, with another size; the device model takes it through `enable_queue`.
    h.queues[1].reset();
    let config = QueueConfig::with_layout(
        16,
        &RingLayout::new(RingFormat::Split, 8),
        DeviceAddr::new(common::MEM_BASE + 0x3_0000),
    )
    .unwrap();
    h.queues[1] =
        virtio_core::DriverQueue::new(&config, h.features, h.memory.clone(), None).unwrap();
    assert_eq!(h.transport.max_queue_size(1), 16, "back to its reset value");
    h.transport.setup_queue(1, &config).unwrap();
    assert_eq!(h.pci.borrow().device().live_queues(), vec![0, 1]);
    assert_eq!(h.roundtrip(1, b"back"), b"kcab");
    h.traffic(3);
}

#[test]
fn transport_features_ok_refused_sets_failed() {
    // The echo device never offers bit 0; a driver that "supports" it still only selects offered bits, so force the
    // refusal by writing the features by hand.
    let mut h = Harness::new(PciVariant::Modern, None);
    h.transport.reset();
    h.transport
        .write_status(virtio_core::DeviceStatus::ACKNOWLEDGE);
    h.transport
        .write_status(virtio_core::DeviceStatus::ACKNOWLEDGE | virtio_core::DeviceStatus::DRIVER);
    h.transport
        .write_driver_features(Features::VERSION_1 | Features::from_bits_retain(1));
    let s = virtio_core::DeviceStatus::ACKNOWLEDGE
        | virtio_core::DeviceStatus::DRIVER
        | virtio_core::DeviceStatus::FEATURES_OK;
    h.transport.write_status(s);
    assert!(!h
        .transport
        .status()
        .contains(virtio_core::DeviceStatus::FEATURES_OK));
    // begin_init with a required feature the device lacks sets FAILED.
    let err = h
        .transport
        .begin_init(
            Features::all(),
            Features::VERSION_1 | Features::ACCESS_PLATFORM,
        )
        .unwrap_err();
    assert!(matches!(err, virtio_core::Error::MissingFeatures { .. }));
    assert!(h
        .transport
        .status()
        .contains(virtio_core::DeviceStatus::FAILED));
}
