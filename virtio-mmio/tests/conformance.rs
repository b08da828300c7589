//! Driver requirements of virtio 1.3 §4.2.2.2, §4.2.3 and §4.2.4, checked on the register accesses the driver side
//! makes in a full session (probe, initialisation, traffic, interrupts, configuration reads, queue reset, device
//! reset), recorded between `MmioTransport` and the device.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use virtio_core::transport::{InterruptDispatch, Transport};
use virtio_core::{DeviceAddr, Features, RingFormat};
use virtio_mmio::{regs, MmioVersion};

fn at(register: u64) -> usize {
    usize::try_from(register).unwrap()
}

/// Runs a session and returns the recorded accesses.
fn recorded_session(version: MmioVersion, supported: Features) -> (Vec<Access>, Features) {
    let (dev, _line, memory) = echo_device(version, echo_features());
    let mut guest = Guest::probe(Recorder::new(dev.clone()), memory);
    let features = guest.init(supported).unwrap();
    for round in 0..20 {
        guest.round_trip(round);
    }
    let mut dispatch = InterruptDispatch::new();
    dev.borrow_mut().device_mut().change_config(9);
    guest
        .transport
        .handle_interrupt(&mut dispatch, |q| guest.queues[usize::from(q)].has_used());
    let mut word = [0; 4];
    guest
        .transport
        .read_config_consistent(0, &mut word)
        .unwrap();
    let mut byte = [0; 1];
    guest.transport.read_config(4, &mut byte).unwrap();
    let mut mac = [0; 6];
    guest.transport.read_config(6, &mut mac).unwrap();
    let mut wide = [0; 8];
    guest.transport.read_config(0, &mut wide).unwrap();
    guest.transport.write_config(10, &[1, 2]).unwrap();

    // Stop queue 1 (legacy: QueuePFN = 0; version 2: QueueReset) and set it up again (version 2).
    let ring_reset = features.contains(Features::RING_RESET);
    if version == MmioVersion::Legacy || ring_reset {
        guest.transport.reset_queue(1).unwrap();
        guest.queues[1].reset();
    }
    if version == MmioVersion::Modern && ring_reset {
        let format = if features.contains(Features::RING_PACKED) {
            RingFormat::Packed
        } else {
            RingFormat::Split
        };
        let max = guest.transport.max_queue_size(1);
        let config = guest
            .transport
            .queue_placement()
            .queue_config(
                format,
                max,
                QUEUE_SIZE,
                DeviceAddr::new(MEM_BASE + QUEUE_STRIDE),
            )
            .unwrap();
        guest.transport.setup_queue(1, &config).unwrap();
    }
    guest.transport.reset();
    guest.init(supported).unwrap();
    guest.round_trip(99);
    let log = guest.transport.registers().log.borrow().clone();
    (log, features)
}

/// Checks every driver requirement that shows in the access log; returns the violations.
fn violations(version: MmioVersion, log: &[Access]) -> Vec<String> {
    let mut bad = Vec::new();
    // §4.2.3.1.1: MagicValue and Version first, then DeviceID.
    let first: Vec<(bool, usize)> = log.iter().take(3).map(|a| (a.write, a.offset)).collect();
    if first != [(false, 0x000), (false, 0x004), (false, 0x008)] {
        bad.push(format!("probe order: {first:?}"));
    }
    let mut fail = |i: usize, what: &str, a: &Access| bad.push(format!("#{i} {a:?}: {what}"));

    let mut queue_sel = 0u32;
    let mut ready: HashSet<u32> = HashSet::new();
    let mut num_max: HashMap<u32, u32> = HashMap::new();
    let mut page_size_written = false;
    let mut align_written: HashSet<u32> = HashSet::new();
    let mut reset_pending: Option<u32> = None;
    let mut statuses = Vec::new();
    for (i, a) in log.iter().enumerate() {
        let previous = i.checked_sub(1).and_then(|p| log.get(p));
        if a.offset >= at(regs::CONFIG) {
            // Configuration space: checked per field below.
            continue;
        }
        let offset = u64::try_from(a.offset).unwrap();
        // §4.2.2.2: 32-bit wide and aligned accesses to control registers only.
        if a.width != 4 || a.offset % 4 != 0 {
            fail(i, "control register access not 32-bit aligned", a);
        }
        // §4.2.2.2: only registers of the table, never writing R nor reading W registers.
        match regs::register_access(version, offset) {
            None => fail(i, "no such register", a),
            Some(access) if a.write && !access.write => fail(i, "write to a read-only register", a),
            Some(access) if !a.write && !access.read => fail(i, "read of a write-only register", a),
            _ => {}
        }
        // §4.2.3.1.1: drivers not expecting shared memory do not use the SHM registers.
        if (regs::SHM_SEL..=regs::SHM_BASE_HIGH).contains(&offset) {
            fail(i, "shared memory register used", a);
        }
        // §4.2.2.2: DeviceFeaturesSel written before reading DeviceFeatures, DriverFeaturesSel before writing
        // DriverFeatures.
        let after = |register: u64| previous.is_some_and(|p| p.write && p.offset == at(register));
        if offset == regs::DEVICE_FEATURES && !after(regs::DEVICE_FEATURES_SEL) {
            fail(i, "DeviceFeatures read without selecting", a);
        }
        if offset == regs::DRIVER_FEATURES && !after(regs::DRIVER_FEATURES_SEL) {
            fail(i, "DriverFeatures written without selecting", a);
        }
        // §4.2.2.2: no access to the queue configuration while QueueReady is non-zero.
        let config_register = matches!(
            offset,
            regs::QUEUE_NUM
                | regs::QUEUE_DESC_LOW
                | regs::QUEUE_DESC_HIGH
                | regs::QUEUE_DRIVER_LOW
                | regs::QUEUE_DRIVER_HIGH
                | regs::QUEUE_DEVICE_LOW
                | regs::QUEUE_DEVICE_HIGH
        );
        if config_register && ready.contains(&queue_sel) {
            fail(
                i,
                "queue configuration accessed while the queue is ready",
                a,
            );
        }
        // §4.2.2.2 (RING_RESET): the reset is not complete until QueueReset reads 0.
        if let Some(q) = reset_pending {
            if offset == regs::QUEUE_RESET && !a.write && a.value == 0 {
                reset_pending = None;
            } else if offset != regs::QUEUE_RESET
                && (config_register || offset == regs::QUEUE_READY)
            {
                fail(i, &format!("queue {q} used before its reset completed"), a);
            }
        }
        match (a.write, offset) {
            (true, regs::QUEUE_SEL) => queue_sel = a.value,
            (false, regs::QUEUE_NUM_MAX) => {
                num_max.insert(queue_sel, a.value);
            }
            // §4.2.2.2: QueueNum ≤ QueueNumMax.
            (true, regs::QUEUE_NUM) if num_max.get(&queue_sel).is_none_or(|max| a.value > *max) => {
                fail(
                    i,
                    "QueueNum above QueueNumMax (or QueueNumMax never read)",
                    a,
                );
            }
            (true, regs::QUEUE_READY) => {
                if a.value == 1 {
                    ready.insert(queue_sel);
                } else {
                    ready.remove(&queue_sel);
                    // §4.2.2.2: stopping a queue is confirmed by reading QueueReady back.
                    let next = log.get(i + 1);
                    if !next.is_some_and(|n| !n.write && n.offset == at(regs::QUEUE_READY)) {
                        fail(i, "QueueReady = 0 not read back", a);
                    }
                }
            }
            (true, regs::QUEUE_RESET) if a.value == 1 => {
                ready.remove(&queue_sel);
                reset_pending = Some(queue_sel);
            }
            (true, regs::GUEST_PAGE_SIZE) => page_size_written = true,
            (true, regs::QUEUE_ALIGN) => {
                align_written.insert(queue_sel);
            }
            (true, regs::QUEUE_PFN) => {
                // §4.2.4: GuestPageSize before the queues, QueueAlign before QueuePFN.
                if a.value != 0 && (!page_size_written || !align_written.contains(&queue_sel)) {
                    fail(i, "QueuePFN before GuestPageSize/QueueAlign", a);
                }
                if a.value == 0 {
                    let next = log.get(i + 1);
                    if !next.is_some_and(|n| !n.write && n.offset == at(regs::QUEUE_PFN)) {
                        fail(i, "QueuePFN = 0 not read back", a);
                    }
                }
            }
            (true, regs::INTERRUPT_ACK) => {
                // §4.2.2.2: no undefined bits in InterruptACK.
                if a.value & !regs::INT_VALID != 0 || a.value == 0 {
                    fail(i, "InterruptACK with undefined (or no) bits", a);
                }
                if !previous.is_some_and(|p| !p.write && p.offset == at(regs::INTERRUPT_STATUS)) {
                    fail(i, "InterruptACK without reading InterruptStatus", a);
                }
            }
            (true, regs::STATUS) => {
                statuses.push(a.value);
                if a.value == 0 {
                    ready.clear();
                    align_written.clear();
                }
            }
            _ => {}
        }
    }
    // §3.1.1 as MMIO drives it (§4.2.3.1): reset, ACKNOWLEDGE, DRIVER, [FEATURES_OK], DRIVER_OK; a reset; again.
    let init: &[u32] = match version {
        MmioVersion::Modern => &[0, 1, 3, 0xb, 0xf],
        _ => &[0, 1, 3, 7],
    };
    if statuses != [init, &[0], init].concat() {
        bad.push(format!("status writes {statuses:x?}"));
    }
    bad
}

/// The configuration-space accesses of `recorded_session`, in order: (write, offset, width).
fn config_accesses(log: &[Access]) -> Vec<(bool, usize, usize)> {
    log.iter()
        .filter(|a| a.offset >= at(regs::CONFIG))
        .map(|a| (a.write, a.offset - at(regs::CONFIG), a.width))
        .collect()
}

#[test]
fn driver_session_v2_split_meets_register_requirements() {
    let (log, features) = recorded_session(
        MmioVersion::Modern,
        Features::VERSION_1 | Features::EVENT_IDX | Features::RING_RESET,
    );
    assert!(features.contains(Features::RING_RESET));
    assert_eq!(violations(MmioVersion::Modern, &log), Vec::<String>::new());
    assert!(log
        .iter()
        .any(|a| a.write && a.offset == at(regs::QUEUE_RESET)));
}

#[test]
fn driver_session_v2_packed_meets_register_requirements() {
    let (log, _) = recorded_session(
        MmioVersion::Modern,
        Features::VERSION_1
            | Features::RING_PACKED
            | Features::NOTIFICATION_DATA
            | Features::RING_RESET,
    );
    assert_eq!(violations(MmioVersion::Modern, &log), Vec::<String>::new());
}

#[test]
fn driver_session_v1_split_meets_register_requirements() {
    let (log, _) = recorded_session(MmioVersion::Legacy, Features::all());
    assert_eq!(violations(MmioVersion::Legacy, &log), Vec::<String>::new());
    assert!(
        log.iter().all(|a| a.offset != at(regs::CONFIG_GENERATION)),
        "legacy has no ConfigGeneration"
    );
}

#[test]
fn driver_config_access_widths_follow_field_widths() {
    for version in [MmioVersion::Modern, MmioVersion::Legacy] {
        let (log, _) = recorded_session(version, Features::VERSION_1);
        let config = config_accesses(&log);
        // read_config_consistent(0, 4), read_config(4, 1), read_config(6, 6), read_config(0, 8), write_config(10, 2).
        let mut expect = vec![(false, 0, 4)];
        expect.extend([(false, 4, 1)]);
        expect.extend((6..12).map(|o| (false, o, 1)));
        expect.extend([(false, 0, 4), (false, 4, 4)]);
        if version == MmioVersion::Legacy {
            // Legacy: each read repeated until two agree (no ConfigGeneration).
            let twice = |v: Vec<(bool, usize, usize)>| [v.clone(), v].concat();
            expect = [
                twice(vec![(false, 0, 4)]),
                twice(vec![(false, 4, 1)]),
                twice((6..12).map(|o| (false, o, 1)).collect()),
                twice(vec![(false, 0, 4), (false, 4, 4)]),
            ]
            .concat();
        }
        expect.push((true, 10, 2));
        assert_eq!(config, expect, "{version:?}");
    }
}

#[test]
fn conformance_checker_detects_violations() {
    // The checker itself: a log breaking each rule is reported.
    let a = |write, offset: u64, width, value| Access {
        write,
        offset: at(offset),
        width,
        value,
    };
    let log = vec![
        a(false, regs::MAGIC, 4, regs::MAGIC_VALUE),
        a(false, regs::VERSION, 4, 2),
        a(false, regs::DEVICE_ID, 4, 1),
        a(false, regs::DEVICE_FEATURES, 4, 0),
        a(true, regs::MAGIC, 4, 0),
        a(false, regs::QUEUE_NOTIFY, 4, 0),
        a(false, regs::STATUS, 1, 0),
        a(false, regs::SHM_LEN_LOW, 4, 0),
        a(true, regs::QUEUE_SEL, 4, 0),
        a(false, regs::QUEUE_NUM_MAX, 4, 8),
        a(true, regs::QUEUE_NUM, 4, 16),
        a(true, regs::QUEUE_READY, 4, 1),
        a(true, regs::QUEUE_DESC_LOW, 4, 0),
        a(true, regs::INTERRUPT_ACK, 4, 4),
    ];
    assert_eq!(violations(MmioVersion::Modern, &log).len(), 10);
}
