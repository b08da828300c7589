//! The driver side (`MmioTransport` + `DriverQueue`) driving the device side (`MmioDevice` + an echo device model)
//! in-process, register by register as a guest does: initialisation, traffic, interrupts, configuration changes,
//! reset and re-initialisation, per-queue reset, activation failures. Version 2 (split and packed) and the legacy
//! version 1 (split).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use virtio_core::transport::{InterruptCause, InterruptDispatch, Transport};
use virtio_core::{DeviceAddr, DeviceStatus, Features, NotificationData, RingFormat};
use virtio_mmio::{regs, Error, MmioVersion};

const ACK_DRIVER: DeviceStatus = DeviceStatus::ACKNOWLEDGE.union(DeviceStatus::DRIVER);

/// Init, 40 round trips per queue (ring indices wrap past the queue size), reset, re-init, traffic again.
fn session(version: MmioVersion, supported: Features, expect: Features) {
    let (dev, line, memory) = echo_device(version, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    assert_eq!(guest.transport.version(), version);
    assert_eq!(
        guest.transport.device_type(),
        virtio_core::device_type::CONSOLE
    );
    assert_eq!(guest.transport.vendor_id(), regs::DEFAULT_VENDOR_ID);

    for generation in 0..2u8 {
        let features = guest.init(supported).unwrap();
        assert_eq!(features, expect);
        let mut status = ACK_DRIVER | DeviceStatus::DRIVER_OK;
        if version == MmioVersion::Modern {
            status |= DeviceStatus::FEATURES_OK;
        }
        assert_eq!(guest.transport.status(), status);
        assert!(dev.borrow().is_live());
        assert_eq!(dev.borrow().device().features, Some(features));
        assert_eq!(dev.borrow().negotiated_features(), Some(features));

        let triggers = line.triggers();
        for round in 0..40u8 {
            guest.round_trip(round.wrapping_add(generation * 100));
        }
        assert!(line.triggers() > triggers, "the device interrupted");
        assert!(guest
            .transport
            .ack_interrupt()
            .contains(InterruptCause::QUEUE));
        assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0, "acknowledged");
        assert!(dev.borrow().device().errors.is_empty());

        guest.transport.reset();
        assert!(!dev.borrow().is_live());
        assert!(
            dev.borrow().device().queues.is_empty(),
            "queues went back at reset"
        );
    }
}

#[test]
fn session_v2_split_init_traffic_reset_reinit_succeeds() {
    let want = Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC;
    session(MmioVersion::Modern, want, want);
}

#[test]
fn session_v2_split_without_event_idx_succeeds() {
    session(
        MmioVersion::Modern,
        Features::VERSION_1,
        Features::VERSION_1,
    );
}

#[test]
fn session_v2_packed_init_traffic_reset_reinit_succeeds() {
    let want = Features::VERSION_1 | Features::RING_PACKED | Features::EVENT_IDX;
    session(MmioVersion::Modern, want, want);
}

#[test]
fn session_v2_packed_without_event_idx_succeeds() {
    let want = Features::VERSION_1 | Features::RING_PACKED;
    session(MmioVersion::Modern, want, want);
}

#[test]
fn session_v1_split_init_traffic_reset_reinit_succeeds() {
    // The legacy device offers neither VERSION_1 nor modern-only bits: a driver supporting everything gets the
    // legacy ring features only, and never sets FEATURES_OK.
    session(
        MmioVersion::Legacy,
        Features::all(),
        Features::EVENT_IDX | Features::INDIRECT_DESC,
    );
}

#[test]
fn session_v1_split_without_event_idx_succeeds() {
    session(MmioVersion::Legacy, Features::empty(), Features::empty());
}

#[test]
fn notification_data_v2_device_receives_parsed_position() {
    for packed in [false, true] {
        let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
        let mut guest = Guest::probe(dev.clone(), memory);
        let mut supported = Features::VERSION_1 | Features::NOTIFICATION_DATA;
        supported.set(Features::RING_PACKED, packed);
        guest.init(supported).unwrap();
        assert_eq!(
            dev.borrow().notify_datamatch(0),
            None,
            "the value carries the position"
        );
        for round in 0..20u8 {
            guest.round_trip(round);
        }
        let notes = dev.borrow().device().notifications.clone();
        assert_eq!(notes.len(), 40);
        for (i, (queue, data)) in notes.iter().enumerate() {
            let round = u16::try_from(i / 2).unwrap();
            let data = data.expect("notification data parsed");
            assert_eq!(data.queue, *queue);
            let expect = if packed {
                // One descriptor per chain... two here (readable + writable): position 2 * round + 2 mod size.
                let pos = (2 * (round + 1)) % QUEUE_SIZE;
                let wrap = (2 * (round + 1)) / QUEUE_SIZE % 2 == 0;
                NotificationData {
                    queue: *queue,
                    next_off: pos,
                    next_wrap: wrap,
                }
            } else {
                NotificationData {
                    queue: *queue,
                    next_off: round + 1,
                    next_wrap: false,
                }
            };
            assert_eq!(data, expect, "notification {i}");
        }
    }
}

#[test]
fn notify_datamatch_without_notification_data_is_queue_index() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    let d = dev.borrow();
    assert_eq!(virtio_mmio::MmioDevice::<Echo>::NOTIFY_ADDRESS, 0x050);
    assert_eq!(d.notify_datamatch(0), Some(0));
    assert_eq!(d.notify_datamatch(1), Some(1));
    assert_eq!(d.notify_datamatch(2), None, "no such queue");
}

#[test]
fn notify_ioeventfd_path_reaches_device() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    // The VMM's ioeventfd fired with datamatch 1: it calls `notify` with that value.
    dev.borrow_mut().notify(1).unwrap();
    assert_eq!(dev.borrow().device().notifications, vec![(1, None)]);
}

#[test]
fn interrupt_used_buffer_runs_callbacks_of_queues_with_used_only() {
    let (dev, line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let mut dispatch = InterruptDispatch::new();
    for q in 0..2u16 {
        let hits = hits.clone();
        dispatch.set_queue_callback(
            q,
            Box::new(move |queue| {
                hits.fetch_add(1 << (8 * queue), Ordering::SeqCst);
            }),
        );
    }
    let before = line.triggers();
    guest.send(1, b"only queue one");
    assert_eq!(line.triggers(), before + 1);
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), regs::INT_USED_BUFFER);
    let cause = guest
        .transport
        .handle_interrupt(&mut dispatch, |q| guest.queues[usize::from(q)].has_used());
    assert_eq!(cause, InterruptCause::QUEUE);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1 << 8,
        "queue 1's callback only"
    );
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0);
    // Nothing pending: a spurious interrupt is reported as such and acknowledges nothing.
    let cause = guest.transport.handle_interrupt(&mut dispatch, |_| true);
    assert!(cause.is_empty());
    assert_eq!(guest.collect(1).len(), 1);
}

#[test]
fn config_change_v2_raises_config_cause_and_bumps_generation() {
    let (dev, line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    let generation = guest.transport.config_generation();
    let mut word = [0; 4];
    guest
        .transport
        .read_config_consistent(0, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), 0x4433_2211);

    let triggers = line.triggers();
    dev.borrow_mut().device_mut().change_config(0xdead_beef);
    assert_eq!(line.triggers(), triggers + 1);
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), regs::INT_CONFIG_CHANGE);

    let seen = Arc::new(AtomicU32::new(0));
    let mut dispatch = InterruptDispatch::new();
    let config_seen = seen.clone();
    dispatch.set_config_callback(Box::new(move || {
        config_seen.fetch_add(1, Ordering::SeqCst);
    }));
    let cause = guest.transport.handle_interrupt(&mut dispatch, |_| false);
    assert_eq!(cause, InterruptCause::CONFIG);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_ne!(
        guest.transport.config_generation(),
        generation,
        "generation changed"
    );
    guest
        .transport
        .read_config_consistent(0, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), 0xdead_beef);

    // The VMM may change the configuration itself, too.
    let generation = guest.transport.config_generation();
    dev.borrow().signal_config();
    assert_eq!(guest.transport.ack_interrupt(), InterruptCause::CONFIG);
    assert_eq!(
        guest.transport.config_generation(),
        generation.wrapping_add(1)
    );
}

#[test]
fn config_change_v1_raises_config_cause_generation_stays_zero() {
    let (dev, _line, memory) = echo_device(MmioVersion::Legacy, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::empty()).unwrap();
    assert_eq!(guest.transport.config_generation(), 0);
    dev.borrow_mut().device_mut().change_config(0x0102_0304);
    assert_eq!(guest.transport.ack_interrupt(), InterruptCause::CONFIG);
    assert_eq!(
        guest.transport.config_generation(),
        0,
        "legacy has no ConfigGeneration"
    );
    let mut word = [0; 4];
    guest
        .transport
        .read_config_consistent(0, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), 0x0102_0304);
}

#[test]
fn config_space_fields_of_each_width_round_trip() {
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (dev, _line, memory) = echo_device(version, echo_features());
        let mut guest = Guest::probe(dev.clone(), memory);
        let t = &mut guest.transport;
        let mut byte = [0; 1];
        t.read_config(4, &mut byte).unwrap();
        assert_eq!(byte, [0x55]);
        let mut mac = [0; 6];
        t.read_config(6, &mut mac).unwrap();
        assert_eq!(mac, [1, 2, 3, 4, 5, 6]);
        let mut wide = [0; 8];
        t.read_config(0, &mut wide).unwrap();
        assert_eq!(wide, [0x11, 0x22, 0x33, 0x44, 0x55, 0, 1, 2]);
        let mut half = [0; 2];
        t.read_config(6, &mut half).unwrap();
        assert_eq!(half, [1, 2]);

        t.write_config(0, &0xa1b2_c3d4u32.to_le_bytes()).unwrap();
        t.write_config(4, &[0x99]).unwrap();
        t.write_config(6, &[9, 8, 7, 6, 5, 4]).unwrap();
        t.write_config(10, &0x0f0eu16.to_le_bytes()).unwrap();
        assert_eq!(
            dev.borrow().device().config,
            [0xd4, 0xc3, 0xb2, 0xa1, 0x99, 0, 9, 8, 7, 6, 0x0e, 0x0f]
        );
        // Beyond the device's space but inside the window: the device reads zeros.
        let mut far = [0xff; 4];
        t.read_config(64, &mut far).unwrap();
        assert_eq!(far, [0; 4]);
        // Beyond the window: refused, no access (details in negative.rs).
        let mut outside = [0xff; 4];
        assert_eq!(
            t.read_config(WINDOW, &mut outside),
            Err(virtio_core::Error::ConfigOutOfRange {
                offset: WINDOW,
                len: 4
            })
        );
        assert_eq!(outside, [0; 4]);
        assert_eq!(
            t.write_config(usize::MAX - 1, &[1, 2]),
            Err(virtio_core::Error::ConfigOutOfRange {
                offset: usize::MAX - 1,
                len: 2
            })
        );
        assert_eq!(
            dev.borrow().device().config,
            [0xd4, 0xc3, 0xb2, 0xa1, 0x99, 0, 9, 8, 7, 6, 0x0e, 0x0f],
            "nothing written"
        );
    }
}

#[test]
fn reset_v2_clears_interrupt_status_and_queue_ready() {
    let (dev, line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    guest.send(0, b"pending");
    dev.borrow_mut().device_mut().change_config(7);
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), regs::INT_VALID);
    for q in 0..2 {
        poke(&dev, regs::QUEUE_SEL, q).unwrap();
        assert_eq!(peek(&dev, regs::QUEUE_READY), 1);
    }
    let lowers = line.lowers.load(Ordering::SeqCst);
    guest.transport.write_status(DeviceStatus::empty());
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0);
    assert!(
        line.lowers.load(Ordering::SeqCst) > lowers,
        "the line is lowered"
    );
    for q in 0..2 {
        poke(&dev, regs::QUEUE_SEL, q).unwrap();
        assert_eq!(peek(&dev, regs::QUEUE_READY), 0, "queue {q}");
        assert_eq!(peek(&dev, regs::QUEUE_RESET), 0, "queue {q}");
        assert_eq!(peek(&dev, regs::QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    }
    assert_eq!(peek(&dev, regs::STATUS), 0);
}

#[test]
fn reset_v1_clears_queue_pfn() {
    let (dev, _line, memory) = echo_device(MmioVersion::Legacy, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::empty()).unwrap();
    poke(&dev, regs::QUEUE_SEL, 1).unwrap();
    assert_eq!(
        u64::from(peek(&dev, regs::QUEUE_PFN)),
        (MEM_BASE + QUEUE_STRIDE) / 4096
    );
    guest.transport.reset();
    for q in 0..2 {
        poke(&dev, regs::QUEUE_SEL, q).unwrap();
        assert_eq!(peek(&dev, regs::QUEUE_PFN), 0);
    }
    // GuestPageSize survives the reset (written once at probe): re-initialisation works.
    guest.init(Features::empty()).unwrap();
    guest.round_trip(1);
}

#[test]
fn interrupt_handle_from_before_reset_raises_nothing() {
    let (dev, line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    let stale = dev.borrow().device().interrupt.clone().unwrap();
    assert!(!stale.is_stale());
    guest.transport.reset();
    assert!(stale.is_stale());
    let (triggers, generation) = (line.triggers(), dev.borrow().config_generation());
    use virtio_core::device::Interrupt;
    stale.signal_queue(0);
    stale.signal_config();
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0);
    assert_eq!(line.triggers(), triggers);
    assert_eq!(dev.borrow().config_generation(), generation);
}

#[test]
fn queue_reset_v2_ring_reset_stops_queue_and_reenable_hands_it_over() {
    for packed in [false, true] {
        let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
        // A device model that does not take re-enabled queues from `enable_queue`: the VMM passes them on.
        dev.borrow_mut().device_mut().decline_enabled_queues = true;
        let mut guest = Guest::probe(dev.clone(), memory);
        let mut supported = Features::VERSION_1 | Features::RING_RESET;
        supported.set(Features::RING_PACKED, packed);
        guest.init(supported).unwrap();
        guest.round_trip(1);
        // Leave a buffer in flight on queue 1 that the device never sees (no notification).
        guest.queues[1]
            .add(
                &[virtio_core::Buffer::new(DeviceAddr::new(DATA_BASE), 4)],
                &[],
                999,
            )
            .unwrap();

        guest.transport.reset_queue(1).unwrap();
        poke(&dev, regs::QUEUE_SEL, 1).unwrap();
        assert_eq!(peek(&dev, regs::QUEUE_RESET), 0, "reset complete");
        assert_eq!(peek(&dev, regs::QUEUE_READY), 0);
        assert!(
            dev.borrow().device().queues[1].is_none(),
            "the device gave queue 1 back"
        );
        assert_eq!(guest.queues[1].reset(), vec![999]);

        // Queue 0 keeps running.
        let token = guest.send(0, b"still here");
        assert_eq!(guest.collect(0)[0].0, token);

        // Re-enable queue 1 (same memory); the device model hands it back, so the VMM passes it on.
        let format = if packed {
            RingFormat::Packed
        } else {
            RingFormat::Split
        };
        assert_eq!(guest.transport.max_queue_size(1), QUEUE_MAX);
        let config = guest
            .transport
            .queue_placement()
            .queue_config(
                format,
                QUEUE_MAX,
                QUEUE_SIZE,
                DeviceAddr::new(MEM_BASE + QUEUE_STRIDE),
            )
            .unwrap();
        guest.transport.setup_queue(1, &config).unwrap();
        // Until the VMM hands the queue over, notifications for it are not forwarded.
        let notes = dev.borrow().device().notifications.len();
        poke(&dev, regs::QUEUE_NOTIFY, 1).unwrap();
        assert_eq!(dev.borrow().device().notifications.len(), notes);
        let reenabled = dev.borrow_mut().take_reenabled_queues();
        assert_eq!(reenabled.len(), 1);
        for queue in reenabled {
            dev.borrow_mut().device_mut().adopt(queue);
        }
        poke(&dev, regs::QUEUE_SEL, 1).unwrap();
        assert_eq!(peek(&dev, regs::QUEUE_READY), 1);
        assert_eq!(peek(&dev, regs::QUEUE_RESET), 0, "0 once enabled");
        guest.round_trip(2);
    }
}

#[test]
fn queue_reenable_v2_device_model_takes_queue_and_receives_notifications() {
    for packed in [false, true] {
        let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
        let mut guest = Guest::probe(dev.clone(), memory);
        let mut supported = Features::VERSION_1 | Features::RING_RESET;
        supported.set(Features::RING_PACKED, packed);
        guest.init(supported).unwrap();
        guest.round_trip(1);
        let format = if packed {
            RingFormat::Packed
        } else {
            RingFormat::Split
        };
        let config = guest
            .transport
            .queue_placement()
            .queue_config(
                format,
                QUEUE_MAX,
                QUEUE_SIZE,
                DeviceAddr::new(MEM_BASE + QUEUE_STRIDE),
            )
            .unwrap();
        // Twice: a queue the model took through `enable_queue` can be reset and re-enabled again.
        for round in 0..2u8 {
            guest.transport.reset_queue(1).unwrap();
            assert!(dev.borrow().device().queues[1].is_none(), "given back");
            guest.queues[1].reset();
            guest.transport.setup_queue(1, &config).unwrap();
            assert!(
                dev.borrow().device().queues[1].is_some(),
                "the device model took the queue while live"
            );
            assert!(dev.borrow_mut().take_reenabled_queues().is_empty());
            assert!(dev.borrow().is_live());
            // Notifications for it are forwarded at once.
            let notes = dev.borrow().device().notifications.len();
            poke(&dev, regs::QUEUE_NOTIFY, 1).unwrap();
            assert_eq!(
                dev.borrow().device().notifications[notes..],
                [(1, None)],
                "round {round}"
            );
            guest.round_trip(10 + round);
        }
        assert!(dev.borrow().device().errors.is_empty());
    }
}

#[test]
fn queue_reset_without_ring_reset_after_driver_ok_is_refused() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    assert_eq!(
        guest.transport.reset_queue(0),
        Err(virtio_core::Error::MissingFeatures {
            missing: Features::RING_RESET.bits()
        })
    );
    poke(&dev, regs::QUEUE_SEL, 0).unwrap();
    assert_eq!(
        poke(&dev, regs::QUEUE_RESET, 1),
        Err(Error::FeatureNotNegotiated {
            feature: Features::RING_RESET.bits()
        })
    );
    assert_eq!(peek(&dev, regs::QUEUE_READY), 1);
    guest.round_trip(3);
}

#[test]
fn queue_stop_v2_before_driver_ok_clears_queue_ready() {
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
    assert_eq!(guest.transport.max_queue_size(0), 0, "in use");
    guest.transport.reset_queue(0).unwrap();
    assert_eq!(guest.transport.max_queue_size(0), QUEUE_MAX, "free again");
}

#[test]
fn queue_stop_v1_pfn_zero_stops_live_queue() {
    let (dev, _line, memory) = echo_device(MmioVersion::Legacy, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::empty()).unwrap();
    guest.transport.reset_queue(1).unwrap();
    poke(&dev, regs::QUEUE_SEL, 1).unwrap();
    assert_eq!(peek(&dev, regs::QUEUE_PFN), 0);
    assert!(dev.borrow().device().queues[1].is_none());
    assert_eq!(
        poke(&dev, regs::QUEUE_NOTIFY, 1),
        Err(Error::QueueNotEnabled { index: 1 })
    );
    // A legacy device cannot take the queue back while live.
    assert_eq!(
        poke(&dev, regs::QUEUE_PFN, 0x123),
        Err(Error::QueueLocked { index: 1 })
    );
}

#[test]
fn activation_queue_outside_memory_sets_needs_reset_and_config_interrupt() {
    let (dev, line, _memory) = echo_device(MmioVersion::Modern, echo_features());
    raw_negotiate(&dev, Features::VERSION_1);
    poke(&dev, regs::QUEUE_SEL, 0).unwrap();
    poke(&dev, regs::QUEUE_NUM, 16).unwrap();
    // Descriptor area at 0x1000: below guest memory.
    poke(&dev, regs::QUEUE_DESC_LOW, 0x1000).unwrap();
    poke(&dev, regs::QUEUE_DRIVER_LOW, 0x10_0000).unwrap();
    poke(&dev, regs::QUEUE_DEVICE_LOW, 0x10_1000).unwrap();
    poke(&dev, regs::QUEUE_READY, 1).unwrap();
    let triggers = line.triggers();
    let err = poke(&dev, regs::STATUS, 0xf).unwrap_err();
    assert!(
        matches!(err, Error::Activation { queue: Some(0), .. }),
        "{err:?}"
    );
    assert!(err.is_peer_fault());
    let status = DeviceStatus::from_bits_retain(u8::try_from(peek(&dev, regs::STATUS)).unwrap());
    assert!(status.contains(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::DRIVER_OK));
    assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), regs::INT_CONFIG_CHANGE);
    assert_eq!(line.triggers(), triggers + 1);
    assert!(!dev.borrow().is_live());
    assert_eq!(poke(&dev, regs::QUEUE_NOTIFY, 0), Err(Error::NotLive));
    assert!(dev.borrow().device().notifications.is_empty());
    // Reset recovers.
    poke(&dev, regs::STATUS, 0).unwrap();
    assert_eq!(peek(&dev, regs::STATUS), 0);
}

#[test]
fn activation_refused_by_device_model_sets_needs_reset() {
    let (dev, _line, memory) = echo_device(MmioVersion::Modern, echo_features());
    dev.borrow_mut().device_mut().refuse_activation = true;
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    assert!(guest
        .transport
        .status()
        .contains(DeviceStatus::DEVICE_NEEDS_RESET));
    assert_eq!(guest.transport.ack_interrupt(), InterruptCause::CONFIG);
    assert!(!dev.borrow().is_live());
    dev.borrow_mut().device_mut().refuse_activation = false;
    guest.init(Features::VERSION_1).unwrap();
    guest.round_trip(4);
}

#[test]
fn needs_reset_set_by_vmm_raises_config_interrupt_and_reset_recovers() {
    let (dev, line, memory) = echo_device(MmioVersion::Modern, echo_features());
    // Before DRIVER_OK there is nothing to flag.
    dev.borrow_mut().set_needs_reset();
    assert_eq!(peek(&dev, regs::STATUS), 0);
    let mut guest = Guest::probe(dev.clone(), memory);
    guest.init(Features::VERSION_1).unwrap();
    let triggers = line.triggers();
    dev.borrow_mut().set_needs_reset();
    assert!(guest
        .transport
        .status()
        .contains(DeviceStatus::DEVICE_NEEDS_RESET));
    assert_eq!(line.triggers(), triggers + 1);
    assert_eq!(guest.transport.ack_interrupt(), InterruptCause::CONFIG);
    guest.init(Features::VERSION_1).unwrap();
    assert!(!guest
        .transport
        .status()
        .contains(DeviceStatus::DEVICE_NEEDS_RESET));
    guest.round_trip(6);
}

#[test]
fn needs_reset_signalled_by_device_model_sets_status_and_config_interrupt() {
    use virtio_core::device::Interrupt;
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (dev, line, memory) = echo_device(version, echo_features());
        let features = if version == MmioVersion::Modern {
            Features::VERSION_1
        } else {
            Features::empty()
        };
        let mut guest = Guest::probe(dev.clone(), memory);
        // Before DRIVER_OK there is nothing to flag: a handle of this activation reports nothing, now or later.
        guest
            .transport
            .begin_init(features, Features::empty())
            .unwrap();
        let early = dev.borrow().interrupt();
        let (status, triggers) = (guest.transport.status(), line.triggers());
        early.signal_needs_reset();
        assert_eq!(guest.transport.status(), status);
        assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0);
        assert_eq!(line.triggers(), triggers);
        guest.transport.finish_init();
        assert!(dev.borrow().is_live());
        assert!(!guest
            .transport
            .status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET));

        guest.init(features).unwrap();
        guest.round_trip(1);
        guest.transport.ack_interrupt();
        // The device model reports from a worker thread (the handle is Send + Sync).
        let handle = dev.borrow().device().interrupt.clone().unwrap();
        let (triggers, generation) = (line.triggers(), dev.borrow().config_generation());
        std::thread::spawn(move || handle.signal_needs_reset())
            .join()
            .unwrap();
        let status = guest.transport.status();
        assert!(
            status.contains(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::DRIVER_OK),
            "{version:?}: {status:?}"
        );
        assert_eq!(dev.borrow().status(), status);
        assert_eq!(line.triggers(), triggers + 1);
        assert_eq!(
            dev.borrow().config_generation(),
            generation,
            "the status changed, not the configuration"
        );
        assert_eq!(guest.transport.ack_interrupt(), InterruptCause::CONFIG);
        // The flag stays through later status writes until the device is reset.
        guest.transport.write_status(status | DeviceStatus::FAILED);
        assert_eq!(guest.transport.status(), status | DeviceStatus::FAILED);
        let stale = dev.borrow().device().interrupt.clone().unwrap();
        guest.transport.reset();
        assert_eq!(guest.transport.status(), DeviceStatus::empty());
        stale.signal_needs_reset();
        assert_eq!(peek(&dev, regs::INTERRUPT_STATUS), 0, "stale handle");
        guest.init(features).unwrap();
        assert!(!guest
            .transport
            .status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET));
        guest.round_trip(2);
    }
}

#[test]
fn activation_v1_invalid_guest_page_size_sets_needs_reset() {
    let (dev, _line, memory) = echo_device(MmioVersion::Legacy, echo_features());
    let mut guest = Guest::probe(dev.clone(), memory);
    guest
        .transport
        .begin_init(Features::empty(), Features::empty())
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
    poke(&dev, regs::GUEST_PAGE_SIZE, 3000).unwrap();
    let err = poke(&dev, regs::STATUS, 0x7).unwrap_err();
    assert!(
        matches!(err, Error::Activation { queue: Some(0), .. }),
        "{err:?}"
    );
    assert!(guest
        .transport
        .status()
        .contains(DeviceStatus::DEVICE_NEEDS_RESET));
}

#[cfg(feature = "std")]
#[test]
fn loopback_mutex_transport_on_another_thread_completes_session() {
    use std::sync::Mutex;
    use virtio_core::HeapMemory;
    use virtio_mmio::MmioDevice;
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(MEM_BASE), MEM_LEN).unwrap());
    let line = Arc::new(CountingLine::default());
    let device = MmioDevice::new(
        Echo::new(echo_features()),
        memory.clone(),
        line.clone(),
        MmioVersion::Modern,
    )
    .unwrap();
    let shared = Arc::new(Mutex::new(device));
    let regs = shared.clone();
    std::thread::spawn(move || {
        let mut guest = Guest::probe(regs, memory);
        guest
            .init(Features::VERSION_1 | Features::RING_PACKED)
            .unwrap();
        for round in 0..10 {
            guest.round_trip(round);
        }
    })
    .join()
    .unwrap();
    assert!(shared.lock().unwrap().is_live());
    assert!(line.triggers() >= 20);
}
