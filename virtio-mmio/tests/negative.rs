//! What a misbehaving driver (device side) or device (driver side) gets: refused accesses with no effect and a
//! typed error, never a panic.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ptr::NonNull;

use common::*;
use virtio_core::transport::{InterruptCause, Transport};
use virtio_core::{DeviceAddr, DeviceStatus, Features, QueueConfig, RingFormat};
use virtio_mmio::{
    regs, Error, MmioRegisters, MmioTransport, MmioVersion, QueuePlacement, QUEUE_RESET_POLL_LIMIT,
};

#[test]
fn queue_config_after_driver_ok_is_ignored() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    poke(&dev, regs::QUEUE_SEL, 0).unwrap();
    for register in [
        regs::QUEUE_NUM,
        regs::QUEUE_DESC_LOW,
        regs::QUEUE_DESC_HIGH,
        regs::QUEUE_DRIVER_LOW,
        regs::QUEUE_DRIVER_HIGH,
        regs::QUEUE_DEVICE_LOW,
        regs::QUEUE_DEVICE_HIGH,
    ] {
        assert_eq!(
            poke(&dev, register, 0xdead_0000),
            Err(Error::QueueLocked { index: 0 }),
            "register {register:#x}"
        );
    }
    assert_eq!(peek(&dev, regs::QUEUE_READY), 1);
    // The live queue is unaffected.
    guest.round_trip(1);
}

#[test]
fn queue_enable_after_driver_ok_without_ring_reset_is_ignored() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest
        .transport
        .begin_init(Features::VERSION_1, Features::empty())
        .unwrap();
    let config = guest
        .transport
        .queue_placement()
        .queue_config(
            RingFormat::Split,
            QUEUE_MAX,
            QUEUE_SIZE,
            DeviceAddr::new(MEM_BASE),
        )
        .unwrap();
    guest.transport.setup_queue(0, &config).unwrap();
    guest.transport.finish_init();
    assert!(dev.borrow().is_live());
    // Queue 1 was not set up before DRIVER_OK: enabling it now is refused, it stays 0.
    let config1 = guest
        .transport
        .queue_placement()
        .queue_config(
            RingFormat::Split,
            QUEUE_MAX,
            QUEUE_SIZE,
            DeviceAddr::new(MEM_BASE + QUEUE_STRIDE),
        )
        .unwrap();
    guest.transport.setup_queue(1, &config1).unwrap();
    poke(&dev, regs::QUEUE_SEL, 1).unwrap();
    assert_eq!(peek(&dev, regs::QUEUE_READY), 0);
    assert_eq!(
        poke(&dev, regs::QUEUE_READY, 1),
        Err(Error::QueueLocked { index: 1 })
    );
    assert!(dev.borrow_mut().take_reenabled_queues().is_empty());
    assert_eq!(
        poke(&dev, regs::QUEUE_NOTIFY, 1),
        Err(Error::QueueNotEnabled { index: 1 })
    );
}

#[test]
fn queue_select_out_of_range_reads_num_max_zero_and_ignores_writes() {
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (dev, _line, memory) = echo_device(version, echo_features());
        for sel in [2, 0xffff, 0x1_0000, u32::MAX] {
            poke(&dev, regs::QUEUE_SEL, sel).unwrap();
            assert_eq!(peek(&dev, regs::QUEUE_NUM_MAX), 0);
            assert_eq!(
                poke(&dev, regs::QUEUE_NUM, 8),
                Err(Error::NoSuchQueue { index: sel })
            );
            if version == MmioVersion::Modern {
                assert_eq!(peek(&dev, regs::QUEUE_READY), 0);
                assert_eq!(
                    poke(&dev, regs::QUEUE_READY, 1),
                    Err(Error::NoSuchQueue { index: sel })
                );
                assert_eq!(
                    poke(&dev, regs::QUEUE_DESC_LOW, 8),
                    Err(Error::NoSuchQueue { index: sel })
                );
            } else {
                assert_eq!(peek(&dev, regs::QUEUE_PFN), 0);
                assert_eq!(
                    poke(&dev, regs::QUEUE_PFN, 1),
                    Err(Error::NoSuchQueue { index: sel })
                );
            }
        }
        let mut guest = Guest::probe(dev.clone(), memory);
        assert_eq!(guest.transport.max_queue_size(2), 0);
        let config = QueueConfig::legacy(8, 8, DeviceAddr::new(MEM_BASE), 4096).unwrap();
        assert_eq!(
            guest.transport.setup_queue(7, &config),
            Err(virtio_core::Error::NoSuchQueue { index: 7 })
        );
        // The valid queues were not touched.
        guest.init(Features::VERSION_1).unwrap();
        guest.round_trip(2);
    }
}

#[test]
fn features_ok_with_bits_never_offered_is_refused_on_reread() {
    let (dev, _line, memory) = echo_device(
        MmioVersion::Modern,
        Features::VERSION_1 | Features::EVENT_IDX,
    );
    let mut guest = Guest::probe(dev.clone(), memory);
    let t = &mut guest.transport;
    t.reset();
    t.write_status(DeviceStatus::ACKNOWLEDGE);
    t.write_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    assert_eq!(
        t.device_features(),
        Features::VERSION_1 | Features::EVENT_IDX
    );
    // RING_PACKED and a device-specific bit were never offered.
    t.write_driver_features(
        Features::VERSION_1 | Features::RING_PACKED | Features::from_bits_retain(1 << 3),
    );
    let ok = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
    t.write_status(ok);
    assert!(
        !t.status().contains(DeviceStatus::FEATURES_OK),
        "re-read lacks FEATURES_OK"
    );
    t.write_status(ok | DeviceStatus::DRIVER_OK);
    assert!(
        !t.status().contains(DeviceStatus::DRIVER_OK),
        "never goes live"
    );
    assert!(!dev.borrow().is_live());
    assert_eq!(dev.borrow().negotiated_features(), None);
}

#[test]
fn features_ok_v2_without_version_1_is_refused() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    // begin_init with a driver that does not support VERSION_1 skips FEATURES_OK (legacy behaviour) ...
    let features = guest
        .transport
        .begin_init(Features::EVENT_IDX, Features::empty())
        .unwrap();
    assert_eq!(features, Features::EVENT_IDX);
    // ... and a version-2 device (modern-only) has no legacy shortcut from DRIVER to DRIVER_OK.
    assert_eq!(
        poke(&dev, regs::STATUS, 0x7),
        Err(Error::Status(virtio_core::Error::InvalidStatusTransition {
            from: 0x3,
            to: 0x7
        }))
    );
    assert_eq!(peek(&dev, regs::STATUS), 0x3);
    // FEATURES_OK without VERSION_1: refused like an unacceptable feature set, alone or with DRIVER_OK.
    for status in [0xb, 0xf] {
        poke(&dev, regs::STATUS, status).unwrap();
        assert_eq!(peek(&dev, regs::STATUS), 0x3, "{status:#x}");
    }
    assert!(!dev.borrow().is_live());
    assert_eq!(dev.borrow().negotiated_features(), None);
    assert!(dev.borrow().device().features.is_none(), "never activated");
}

#[test]
fn features_v1_offer_no_version_1_nor_modern_bits_and_refuse_them() {
    let (dev, _line, _memory) = echo_device(MmioVersion::Legacy, echo_features());
    let offered = dev.borrow().offered_features();
    assert_eq!(offered, Features::EVENT_IDX | Features::INDIRECT_DESC);
    poke(&dev, regs::DEVICE_FEATURES_SEL, 1).unwrap();
    assert_eq!(peek(&dev, regs::DEVICE_FEATURES), 0);
    raw_negotiate(&dev, Features::EVENT_IDX | Features::RING_PACKED);
    assert_eq!(
        poke(&dev, regs::STATUS, 0x7),
        Err(Error::Status(virtio_core::Error::FeaturesRejected))
    );
    assert!(!dev.borrow().is_live());
}

#[test]
fn features_admin_vq_is_never_offered_on_mmio() {
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (dev, _line, _memory) = echo_device(version, echo_features());
        assert!(!dev.borrow().offered_features().contains(Features::ADMIN_VQ));
    }
    // A device model that forgets VERSION_1 still presents it on version 2.
    let (dev, _line, _memory) = echo_device(MmioVersion::Modern, Features::EVENT_IDX);
    assert_eq!(
        dev.borrow().offered_features(),
        Features::VERSION_1 | Features::EVENT_IDX
    );
}

#[test]
fn driver_features_after_features_ok_are_ignored() {
    let (dev, _line, _memory) = echo_device(MmioVersion::Modern, echo_features());
    raw_negotiate(&dev, Features::VERSION_1);
    poke(&dev, regs::DRIVER_FEATURES_SEL, 1).unwrap();
    poke(&dev, regs::DRIVER_FEATURES, Features::RING_PACKED.window(1)).unwrap();
    assert_eq!(
        dev.borrow().negotiated_features(),
        Some(Features::VERSION_1)
    );
}

#[test]
fn register_access_odd_widths_and_offsets_have_no_effect() {
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (dev, _line, memory) = echo_device(version, echo_features());
        let mut d = dev.borrow_mut();
        // Control registers: only 32-bit aligned.
        for (offset, len) in [
            (0x000, 1),
            (0x000, 2),
            (0x000, 8),
            (0x001, 4),
            (0x002, 4),
            (0x070, 3),
            (0x0fe, 2),
        ] {
            let mut buf = vec![0xff; len];
            assert_eq!(
                d.read(offset, &mut buf),
                Err(Error::InvalidAccess { offset, len })
            );
            assert!(buf.iter().all(|b| *b == 0), "refused reads read zero");
        }
        assert_eq!(
            d.write(regs::STATUS, &[1]),
            Err(Error::InvalidAccess {
                offset: regs::STATUS,
                len: 1
            })
        );
        assert_eq!(
            d.write(regs::STATUS, &[1, 0]),
            Err(Error::InvalidAccess {
                offset: regs::STATUS,
                len: 2
            })
        );
        assert_eq!(
            d.write(0x071, &[1, 0, 0, 0]),
            Err(Error::InvalidAccess {
                offset: 0x071,
                len: 4
            })
        );
        assert_eq!(d.status(), DeviceStatus::empty(), "no partial status write");
        // Direction: read of write-only, write of read-only, no register at all.
        assert_eq!(
            d.read32(regs::QUEUE_NOTIFY),
            Err(Error::WriteOnlyRegister {
                offset: regs::QUEUE_NOTIFY
            })
        );
        assert_eq!(
            d.read32(regs::INTERRUPT_ACK),
            Err(Error::WriteOnlyRegister {
                offset: regs::INTERRUPT_ACK
            })
        );
        assert_eq!(
            d.write32(regs::MAGIC, 0),
            Err(Error::ReadOnlyRegister {
                offset: regs::MAGIC
            })
        );
        assert_eq!(
            d.write32(regs::INTERRUPT_STATUS, 3),
            Err(Error::ReadOnlyRegister {
                offset: regs::INTERRUPT_STATUS
            })
        );
        assert_eq!(
            d.read32(0x018),
            Err(Error::UnknownRegister { offset: 0x018 })
        );
        assert_eq!(
            d.write32(0x0f8, 1),
            Err(Error::UnknownRegister { offset: 0x0f8 })
        );
        assert_eq!(d.read32(regs::MAGIC), Ok(regs::MAGIC_VALUE), "still intact");
        if version == MmioVersion::Modern {
            // No shared memory regions: length and base read as all ones (§4.2.2).
            d.write32(regs::SHM_SEL, 0).unwrap();
            for offset in [
                regs::SHM_LEN_LOW,
                regs::SHM_LEN_HIGH,
                regs::SHM_BASE_LOW,
                regs::SHM_BASE_HIGH,
            ] {
                assert_eq!(d.read32(offset), Ok(u32::MAX));
            }
        }
        let other_version_only = match version {
            MmioVersion::Modern => [regs::QUEUE_PFN, regs::GUEST_PAGE_SIZE, regs::QUEUE_ALIGN],
            _ => [
                regs::QUEUE_READY,
                regs::CONFIG_GENERATION,
                regs::QUEUE_RESET,
            ],
        };
        for offset in other_version_only {
            assert_eq!(d.read32(offset), Err(Error::UnknownRegister { offset }));
            assert_eq!(
                d.write32(offset, 1),
                Err(Error::UnknownRegister { offset }),
                "{offset:#x} is not a {version:?} register"
            );
        }
        // Status bits above the 8-bit field: refused, not truncated (0x100 must not reset).
        d.write32(regs::STATUS, 1).unwrap();
        assert!(matches!(
            d.write32(regs::STATUS, 0x100),
            Err(Error::Status(_))
        ));
        assert_eq!(d.status(), DeviceStatus::ACKNOWLEDGE);
        // Clearing bits: refused.
        d.write32(regs::STATUS, 3).unwrap();
        assert!(matches!(d.write32(regs::STATUS, 1), Err(Error::Status(_))));
        assert_eq!(d.status(), DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        // Configuration space: 1, 2, 4, 8 bytes at any offset; others refused.
        let mut three = [0xff; 3];
        assert_eq!(
            d.read(0x101, &mut three),
            Err(Error::InvalidAccess {
                offset: 0x101,
                len: 3
            })
        );
        assert_eq!(three, [0; 3]);
        assert_eq!(
            d.read(0x100, &mut []),
            Err(Error::InvalidAccess {
                offset: 0x100,
                len: 0
            })
        );
        assert_eq!(
            d.write(0x100, &[0; 16]),
            Err(Error::InvalidAccess {
                offset: 0x100,
                len: 16
            })
        );
        let mut odd = [0; 2];
        d.read(0x101, &mut odd).unwrap();
        assert_eq!(
            odd,
            [0x22, 0x33],
            "unaligned config access is byte-granular"
        );
        let mut far = [0xff; 8];
        d.read(u64::MAX - 3, &mut far).unwrap();
        assert_eq!(far, [0; 8]);
        d.write(u64::MAX, &[1]).unwrap();
        drop(d);
        // The device still works after all that.
        let mut guest = Guest::probe(dev.clone(), memory);
        guest.init(Features::VERSION_1).unwrap();
        guest.round_trip(5);
    }
}

#[test]
fn notify_before_driver_ok_is_ignored_and_queue_untouched() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest
        .transport
        .begin_init(Features::VERSION_1, Features::empty())
        .unwrap();
    let config = guest
        .transport
        .queue_placement()
        .queue_config(
            RingFormat::Split,
            QUEUE_MAX,
            QUEUE_SIZE,
            DeviceAddr::new(MEM_BASE),
        )
        .unwrap();
    guest.transport.setup_queue(0, &config).unwrap();
    assert_eq!(poke(&dev, regs::QUEUE_NOTIFY, 0), Err(Error::NotLive));
    assert!(dev.borrow().device().notifications.is_empty());
    assert!(dev.borrow().device().queues.is_empty());
}

#[test]
fn notify_value_out_of_range_is_refused() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    assert_eq!(
        poke(&dev, regs::QUEUE_NOTIFY, 2),
        Err(Error::NoSuchQueue { index: 2 })
    );
    assert_eq!(
        poke(&dev, regs::QUEUE_NOTIFY, 0x1_0000),
        Err(Error::NoSuchQueue { index: 0x1_0000 })
    );
    assert!(dev.borrow().device().notifications.is_empty());
}

#[test]
fn interrupt_ack_of_unset_or_undefined_bits_changes_nothing() {
    let (dev, line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    dev.borrow_mut().device_mut().change_config(1);
    poke(&dev, regs::INTERRUPT_ACK, !regs::INT_CONFIG_CHANGE).unwrap();
    assert_eq!(
        peek(&dev, regs::INTERRUPT_STATUS),
        regs::INT_CONFIG_CHANGE,
        "present until acknowledged"
    );
    let lowers = line.lowers.load(std::sync::atomic::Ordering::SeqCst);
    poke(&dev, regs::INTERRUPT_ACK, regs::INT_CONFIG_CHANGE).unwrap();
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0);
    assert_eq!(
        line.lowers.load(std::sync::atomic::Ordering::SeqCst),
        lowers + 1
    );
}

// ----- driver side against a misbehaving or absent device -----

/// Registers backed by a map; `QueueReset` reads 1 for the first `reset_busy` reads.
#[derive(Debug, Default)]
struct Fake {
    values: RefCell<HashMap<usize, u32>>,
    writes: RefCell<Vec<(usize, u32)>>,
    reads: RefCell<Vec<usize>>,
    reset_busy: Cell<u32>,
}

impl Fake {
    fn device(version: u32, id: u32) -> Self {
        let fake = Self::default();
        fake.set(regs::MAGIC, regs::MAGIC_VALUE);
        fake.set(regs::VERSION, version);
        fake.set(regs::DEVICE_ID, id);
        fake.set(regs::QUEUE_NUM_MAX, 64);
        fake
    }

    fn set(&self, offset: u64, value: u32) {
        self.values
            .borrow_mut()
            .insert(usize::try_from(offset).unwrap(), value);
    }
}

impl MmioRegisters for Fake {
    fn read8(&self, offset: usize) -> u8 {
        self.read32(offset).to_le_bytes()[0]
    }
    fn read16(&self, offset: usize) -> u16 {
        u16::try_from(self.read32(offset) & 0xffff).unwrap()
    }
    fn read32(&self, offset: usize) -> u32 {
        self.reads.borrow_mut().push(offset);
        if offset == 0x0c0 && self.reset_busy.get() > 0 {
            self.reset_busy.set(self.reset_busy.get() - 1);
            return 1;
        }
        self.values.borrow().get(&offset).copied().unwrap_or(0)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.write32(offset, u32::from(value));
    }
    fn write16(&self, offset: usize, value: u16) {
        self.write32(offset, u32::from(value));
    }
    fn write32(&self, offset: usize, value: u32) {
        self.writes.borrow_mut().push((offset, value));
        if offset != 0x0c0 {
            self.values.borrow_mut().insert(offset, value);
        }
    }
}

#[test]
fn transport_new_bad_magic_is_refused() {
    let fake = Fake::device(2, 1);
    fake.set(regs::MAGIC, 0x7472_6977);
    let err = MmioTransport::from_registers(&fake, WINDOW).unwrap_err();
    assert_eq!(err, Error::BadMagic { found: 0x7472_6977 });
    assert!(err.is_peer_fault());
    assert_eq!(*fake.reads.borrow(), vec![0x000]);
    assert!(fake.writes.borrow().is_empty());
}

#[test]
fn transport_new_bad_version_is_refused() {
    for version in [0, 3, u32::MAX] {
        let fake = Fake::device(version, 1);
        assert_eq!(
            MmioTransport::from_registers(&fake, WINDOW).unwrap_err(),
            Error::UnsupportedVersion { found: version }
        );
        assert_eq!(*fake.reads.borrow(), vec![0x000, 0x004]);
        assert!(fake.writes.borrow().is_empty());
    }
}

#[test]
fn transport_new_device_id_zero_touches_no_other_register() {
    for version in [1, 2] {
        let fake = Fake::device(version, 0);
        let err = MmioTransport::from_registers(&fake, WINDOW).unwrap_err();
        assert_eq!(err, Error::NoDevice);
        assert!(
            !err.is_peer_fault(),
            "a placeholder is not an error to report"
        );
        assert_eq!(*fake.reads.borrow(), vec![0x000, 0x004, 0x008]);
        assert!(fake.writes.borrow().is_empty());
    }
}

#[test]
fn transport_new_window_too_small_is_refused() {
    let fake = Fake::device(2, 1);
    assert_eq!(
        MmioTransport::from_registers(&fake, 0xfc).unwrap_err(),
        Error::WindowTooSmall { size: 0xfc }
    );
    assert!(fake.reads.borrow().is_empty());
}

#[test]
fn transport_new_legacy_writes_guest_page_size_once() {
    let fake = Fake::device(1, 4);
    let t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
    assert_eq!(t.version(), MmioVersion::Legacy);
    assert_eq!(*fake.writes.borrow(), vec![(0x028, 4096)]);
    assert_eq!(
        t.queue_placement(),
        QueuePlacement::Legacy {
            page_size: 4096,
            align: 4096
        }
    );
}

/// Register memory for `VolatileRegisters`: 4-aligned.
#[repr(C, align(8))]
struct Window([u32; 128]);

#[test]
fn transport_new_volatile_window_validates_and_bounds_accesses() {
    let mut window = Window([0; 128]);
    window.0[0] = regs::MAGIC_VALUE.to_le();
    window.0[1] = 2u32.to_le();
    window.0[2] = 4u32.to_le();
    window.0[64] = 0x0403_0201u32.to_le();
    {
        let base = NonNull::from(&mut window).cast::<u8>();
        // SAFETY: `window` is 512 bytes of memory that outlives the transport and is not otherwise referenced while it
        // lives; plain memory behaves like registers for reads and writes.
        let mut t = unsafe { MmioTransport::new(base, 512) }.unwrap();
        assert_eq!(t.device_type(), 4);
        let mut config = [0; 4];
        t.read_config(0, &mut config).unwrap();
        assert_eq!(config, [1, 2, 3, 4]);
        t.read_config(1, &mut config[..2]).unwrap();
        assert_eq!(config[..2], [2, 3]);
        let mut beyond = [0xff; 4];
        assert_eq!(
            t.read_config(0x100, &mut beyond),
            Err(virtio_core::Error::ConfigOutOfRange {
                offset: 0x100,
                len: 4
            })
        );
        assert_eq!(beyond, [0; 4], "outside the window: not accessed");
        t.write_config(4, &[9, 8, 7, 6]).unwrap();
        t.write_driver_features(Features::VERSION_1);
    }
    assert_eq!(window.0[65], u32::from_le_bytes([9, 8, 7, 6]));
    assert_eq!(
        window.0[0x20 / 4],
        0,
        "DriverFeatures: last window written is 0"
    );
    assert_eq!(window.0[0x24 / 4], 0, "DriverFeaturesSel back to 0");

    let mut bad = Window([0; 128]);
    bad.0[0] = 0x1234;
    let base = NonNull::from(&mut bad).cast::<u8>();
    // SAFETY: as above.
    let err = unsafe { MmioTransport::new(base, 512) }.unwrap_err();
    assert_eq!(err, Error::BadMagic { found: 0x1234 });
}

#[test]
fn ack_interrupt_undefined_status_bits_are_ignored_and_never_acked() {
    let fake = Fake::device(2, 1);
    let mut t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
    fake.set(regs::INTERRUPT_STATUS, 0xffff_fffd);
    assert_eq!(t.ack_interrupt(), InterruptCause::QUEUE);
    assert_eq!(fake.writes.borrow().last(), Some(&(0x064, 1)));
    fake.set(regs::INTERRUPT_STATUS, 0xffff_fffc);
    let writes = fake.writes.borrow().len();
    assert!(t.ack_interrupt().is_empty());
    assert_eq!(fake.writes.borrow().len(), writes, "nothing to acknowledge");
}

#[test]
fn reset_queue_ring_reset_waits_until_queue_reset_reads_zero() {
    let fake = Fake::device(2, 1);
    let mut t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
    t.write_driver_features(Features::VERSION_1 | Features::RING_RESET);
    fake.reset_busy.set(3);
    t.reset_queue(5).unwrap();
    assert_eq!(fake.reset_busy.get(), 0, "read back until 0");
    assert!(fake.writes.borrow().ends_with(&[(0x030, 5), (0x0c0, 1)]));

    fake.reset_busy.set(u32::MAX);
    assert_eq!(
        t.reset_queue(5),
        Err(virtio_core::Error::QueueResetTimeout { index: 5 })
    );
    assert_eq!(fake.reset_busy.get(), u32::MAX - QUEUE_RESET_POLL_LIMIT);
}

#[test]
fn reset_queue_v2_before_driver_ok_writes_queue_ready_zero_and_reads_back() {
    let fake = Fake::device(2, 1);
    let mut t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
    fake.set(regs::QUEUE_READY, 1);
    fake.writes.borrow_mut().clear();
    fake.reads.borrow_mut().clear();
    t.reset_queue(3).unwrap();
    assert_eq!(*fake.writes.borrow(), vec![(0x030, 3), (0x044, 0)]);
    assert_eq!(
        fake.reads.borrow().last(),
        Some(&0x044),
        "QueueReady read back"
    );
}

#[test]
fn setup_queue_size_zero_or_above_max_is_refused_without_writes() {
    let fake = Fake::device(2, 1);
    let mut t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
    let placement = t.queue_placement();
    for size in [0u16, 128] {
        let mut config = placement
            .queue_config(RingFormat::Packed, 256, 128, DeviceAddr::new(0x10_0000))
            .unwrap();
        config.size = size;
        assert_eq!(
            t.setup_queue(0, &config),
            Err(virtio_core::Error::InvalidQueueSize { size, max: 64 })
        );
        assert_eq!(
            *fake.writes.borrow(),
            vec![(0x030, 0)],
            "only QueueSel written"
        );
        fake.writes.borrow_mut().clear();
    }
    // In use: refused.
    fake.set(regs::QUEUE_READY, 1);
    let config = placement
        .queue_config(RingFormat::Split, 64, 64, DeviceAddr::new(0x10_0000))
        .unwrap();
    assert_eq!(
        t.setup_queue(0, &config),
        Err(virtio_core::Error::QueueInUse { index: 0 })
    );
    assert_eq!(t.max_queue_size(0), 0);
}

#[test]
fn setup_queue_v1_non_legacy_layout_is_refused() {
    let fake = Fake::device(1, 1);
    let mut t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
    fake.writes.borrow_mut().clear();
    let modern = QueuePlacement::Modern
        .queue_config(RingFormat::Split, 64, 16, DeviceAddr::new(0x10_0000))
        .unwrap();
    assert!(matches!(
        t.setup_queue(0, &modern),
        Err(virtio_core::Error::MisalignedArea { .. })
    ));
    let unaligned = QueueConfig::legacy(64, 16, DeviceAddr::new(0x10_0010), 4096).unwrap();
    assert!(matches!(
        t.setup_queue(0, &unaligned),
        Err(virtio_core::Error::MisalignedArea { .. })
    ));
    let zero_page = QueueConfig::legacy(64, 16, DeviceAddr::new(0), 4096).unwrap();
    assert!(matches!(
        t.setup_queue(0, &zero_page),
        Err(virtio_core::Error::AreaOutOfMemory { .. })
    ));
    assert!(
        fake.writes
            .borrow()
            .iter()
            .all(|(offset, _)| *offset == 0x030),
        "only QueueSel written"
    );
    // Packed rings cannot be placed on a legacy device.
    assert!(t
        .queue_placement()
        .queue_config(RingFormat::Packed, 64, 16, DeviceAddr::new(0x10_0000))
        .is_none());
    let good = t
        .queue_placement()
        .queue_config(RingFormat::Split, 64, 16, DeviceAddr::new(0x10_0000))
        .unwrap();
    t.setup_queue(0, &good).unwrap();
    assert!(fake
        .writes
        .borrow()
        .ends_with(&[(0x038, 16), (0x03c, 4096), (0x040, 0x100)]));
}

#[test]
fn config_access_past_the_window_fails_with_config_out_of_range_and_touches_nothing() {
    for version in [1, 2] {
        let fake = Fake::device(version, 1);
        let mut t = MmioTransport::from_registers(&fake, WINDOW).unwrap();
        assert_eq!(t.config_len(), WINDOW - 0x100);
        // The last field inside the window is read.
        fake.set(0x1fc, 0x0403_0201);
        let mut last = [0xff; 4];
        t.read_config(0xfc, &mut last).unwrap();
        assert_eq!(last, [1, 2, 3, 4]);
        fake.reads.borrow_mut().clear();
        fake.writes.borrow_mut().clear();
        // Straddling the end, starting at the end, and offsets whose end overflows: refused.
        for (offset, len) in [(0xfe, 4), (0xff, 2), (0x100, 1), (usize::MAX, 2)] {
            let mut data = vec![0xff; len];
            let err = t.read_config(offset, &mut data).unwrap_err();
            assert_eq!(err, virtio_core::Error::ConfigOutOfRange { offset, len });
            assert!(!err.is_peer_fault(), "the caller named the offset");
            assert!(data.iter().all(|b| *b == 0), "a refused read reads zero");
            assert_eq!(
                t.write_config(offset, &data),
                Err(virtio_core::Error::ConfigOutOfRange { offset, len })
            );
            assert_eq!(
                t.read_config_consistent(offset, &mut data),
                Err(virtio_core::Error::ConfigOutOfRange { offset, len })
            );
        }
        // The consistent read may read ConfigGeneration (version 2); no configuration register was touched.
        assert!(
            fake.reads.borrow().iter().all(|o| *o == 0x0fc),
            "{:x?}",
            fake.reads.borrow()
        );
        assert!(fake.writes.borrow().is_empty());
    }
}

#[test]
fn setup_queue_in_use_fails_with_queue_in_use_and_writes_nothing() {
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (dev, _line, memory) = echo_device(version, echo_features());
        let mut guest = Guest::probe(Recorder::new(dev.clone()), memory);
        let features = if version == MmioVersion::Modern {
            Features::VERSION_1
        } else {
            Features::empty()
        };
        guest.init(features).unwrap();
        let in_use = match version {
            MmioVersion::Modern => regs::QUEUE_READY,
            _ => regs::QUEUE_PFN,
        };
        for q in 0..2u16 {
            // Another layout at another address: the live queue must keep its own.
            let config = guest
                .transport
                .queue_placement()
                .queue_config(
                    RingFormat::Split,
                    QUEUE_MAX,
                    8,
                    DeviceAddr::new(MEM_BASE + 4 * QUEUE_STRIDE),
                )
                .unwrap();
            let before = guest.transport.registers().log.borrow().len();
            assert_eq!(
                guest.transport.setup_queue(q, &config),
                Err(virtio_core::Error::QueueInUse { index: q })
            );
            let log = guest.transport.registers().log.borrow()[before..].to_vec();
            let accesses: Vec<(bool, usize, u32)> =
                log.iter().map(|a| (a.write, a.offset, a.value)).collect();
            assert_eq!(
                accesses,
                vec![
                    (true, 0x030, u32::from(q)),
                    (false, usize::try_from(in_use).unwrap(), log[1].value)
                ],
                "select and check only"
            );
            assert_ne!(log[1].value, 0, "the queue is in use");
        }
        // Queues that do not exist are still reported as such.
        let config = QueueConfig::legacy(8, 8, DeviceAddr::new(MEM_BASE), 4096).unwrap();
        assert_eq!(
            guest.transport.setup_queue(2, &config),
            Err(virtio_core::Error::NoSuchQueue { index: 2 })
        );
        // Both queues are untouched.
        guest.round_trip(7);
    }
}
