//! One test per validation rule: the device side against a hostile driver (DESIGN.md §5), and the driver side against
//! a hostile device. Each gives a typed error, never a panic, and the queue refuses work until reset.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use virtio_core::mock::MockDriver;
use virtio_core::ring_flags::{
    DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED,
};
use virtio_core::{
    DeviceAddr, DeviceQueue, DeviceSlice, Error, Features, HeapMemory, QueueConfig, RingArea,
    RingFormat, RingLayout,
};

mod common;
use common::{ring_memory, BASE, DATA, MEM};

const SIZE: u16 = 8;

/// A split ring the test writes by hand, as a hostile driver would.
struct RawSplit {
    memory: Arc<HeapMemory>,
    config: QueueConfig,
    avail_idx: u16,
}

impl RawSplit {
    fn new() -> Self {
        let (memory, config) = ring_memory(RingFormat::Split, SIZE);
        Self {
            memory,
            config,
            avail_idx: 0,
        }
    }

    fn poke(&self, addr: u64, bytes: &[u8]) {
        DeviceSlice::new(&*self.memory, DeviceAddr::new(addr), bytes.len())
            .unwrap()
            .write_at(0, bytes);
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.config.descriptors.raw() + 16 * u64::from(index);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.poke(at, &raw);
    }

    fn indirect_entry(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.poke(table + 16 * u64::from(index), &raw);
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % SIZE);
        self.poke(
            self.config.driver_area.raw() + 4 + 2 * slot,
            &head.to_le_bytes(),
        );
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    fn set_avail_idx(&self, idx: u16) {
        self.poke(self.config.driver_area.raw() + 2, &idx.to_le_bytes());
    }

    fn device(&self, features: Features) -> DeviceQueue<Arc<HeapMemory>> {
        DeviceQueue::activate(
            &self.config,
            features | Features::VERSION_1,
            self.memory.clone(),
        )
        .unwrap()
    }
}

/// Pops once expecting `want`, then checks the queue stays broken.
fn expect_fault(device: &mut DeviceQueue<Arc<HeapMemory>>, want: Error) {
    let mut chain = device.new_chain();
    let got = device.pop_into(&mut chain).unwrap_err();
    assert_eq!(got, want);
    assert!(got.is_peer_fault());
    assert!(device.is_broken());
    assert_eq!(
        device.pop_into(&mut chain).unwrap_err(),
        Error::QueueBroken,
        "refuses work until reset"
    );
}

/// [`expect_fault`] through `pop_into` on one queue and through `pop_buffer` on a second one activated over the same
/// ring (the first refused the chain without changing the ring).
fn expect_fault_both(make: impl Fn() -> DeviceQueue<Arc<HeapMemory>>, want: Error) {
    expect_fault(&mut make(), want);
    let mut device = make();
    let mut chain = device.new_chain();
    let got = device.pop_buffer(&mut chain).unwrap_err();
    assert_eq!(got, want, "pop_buffer");
    assert!(device.is_broken());
    assert_eq!(
        device.pop_buffer(&mut chain).unwrap_err(),
        Error::QueueBroken,
        "pop_buffer refuses work until reset"
    );
}

fn split_fault(features: Features, build: impl FnOnce(&mut RawSplit), want: Error) {
    let mut raw = RawSplit::new();
    build(&mut raw);
    expect_fault_both(|| raw.device(features), want);
}

// ----- configuration rules -----

#[test]
fn activate_size_zero_refused() {
    let raw = RawSplit::new();
    let mut config = raw.config;
    config.size = 0;
    let err = DeviceQueue::activate(&config, Features::VERSION_1, raw.memory.clone()).unwrap_err();
    assert_eq!(err, Error::InvalidQueueSize { size: 0, max: SIZE });
}

#[test]
fn activate_size_above_max_refused() {
    let raw = RawSplit::new();
    let mut config = raw.config;
    config.size = SIZE * 2;
    assert!(matches!(
        DeviceQueue::activate(&config, Features::VERSION_1, raw.memory.clone()),
        Err(Error::InvalidQueueSize { .. })
    ));
}

#[test]
fn activate_split_size_not_power_of_two_refused() {
    let raw = RawSplit::new();
    let mut config = raw.config;
    config.size = 6;
    assert!(matches!(
        DeviceQueue::activate(&config, Features::VERSION_1, raw.memory.clone()),
        Err(Error::InvalidQueueSize { size: 6, .. })
    ));
    // The same size is fine for a packed ring.
    assert!(DeviceQueue::activate(
        &config,
        Features::VERSION_1 | Features::RING_PACKED,
        raw.memory.clone()
    )
    .is_ok());
}

#[test]
fn activate_not_ready_refused() {
    let raw = RawSplit::new();
    let mut config = raw.config;
    config.ready = false;
    assert_eq!(
        DeviceQueue::activate(&config, Features::VERSION_1, raw.memory.clone()).unwrap_err(),
        Error::QueueNotReady
    );
}

#[test]
fn activate_misaligned_areas_refused() {
    let raw = RawSplit::new();
    for (packed, area, offset, align) in [
        (false, RingArea::Descriptors, 8, 16),
        (false, RingArea::DriverArea, 1, 2),
        (false, RingArea::DeviceArea, 2, 4),
        (true, RingArea::Descriptors, 8, 16),
        (true, RingArea::DriverArea, 2, 4),
        (true, RingArea::DeviceArea, 2, 4),
    ] {
        let mut config = raw.config;
        let field = match area {
            RingArea::Descriptors => &mut config.descriptors,
            RingArea::DriverArea => &mut config.driver_area,
            RingArea::DeviceArea => &mut config.device_area,
        };
        *field = DeviceAddr::new(field.raw() + 0x1000 + offset);
        let addr = *field;
        let mut features = Features::VERSION_1;
        features.set(Features::RING_PACKED, packed);
        let err = DeviceQueue::activate(&config, features, raw.memory.clone()).unwrap_err();
        assert_eq!(
            err,
            Error::MisalignedArea { area, addr, align },
            "packed={packed}"
        );
    }
}

#[test]
fn activate_area_outside_memory_refused() {
    let raw = RawSplit::new();
    for addr in [0u64, BASE + MEM as u64 - 16, u64::MAX - 15] {
        let mut config = raw.config;
        config.device_area = DeviceAddr::new(addr & !3);
        assert!(matches!(
            DeviceQueue::activate(&config, Features::VERSION_1, raw.memory.clone()),
            Err(Error::AreaOutOfMemory {
                area: RingArea::DeviceArea,
                ..
            })
        ));
    }
}

// ----- split: chain rules -----

#[test]
fn pop_avail_idx_jump_refused() {
    let raw = RawSplit::new();
    raw.set_avail_idx(SIZE + 1);
    expect_fault_both(
        || raw.device(Features::empty()),
        Error::AvailIndexJump {
            avail_idx: SIZE + 1,
            last_avail: 0,
            size: SIZE,
        },
    );
}

#[test]
fn pop_head_out_of_range_refused() {
    split_fault(
        Features::empty(),
        |r| r.publish(SIZE),
        Error::DescriptorIndexOutOfRange { index: 8, size: 8 },
    );
}

#[test]
fn pop_next_out_of_range_refused() {
    split_fault(
        Features::empty(),
        |r| {
            r.desc(0, DATA, 16, DESC_F_NEXT, 200);
            r.publish(0);
        },
        Error::DescriptorIndexOutOfRange {
            index: 200,
            size: 8,
        },
    );
}

#[test]
fn pop_descriptor_loop_refused() {
    split_fault(
        Features::empty(),
        |r| {
            r.desc(0, DATA, 16, DESC_F_NEXT, 1);
            r.desc(1, DATA, 16, DESC_F_NEXT, 0);
            r.publish(0);
        },
        Error::ChainTooLong { size: 8 },
    );
}

#[test]
fn pop_indirect_with_next_refused() {
    split_fault(
        Features::INDIRECT_DESC,
        |r| {
            r.desc(0, DATA, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1);
            r.publish(0);
        },
        Error::IndirectWithNext,
    );
}

#[test]
fn pop_indirect_bad_length_refused() {
    for len in [0u32, 24] {
        split_fault(
            Features::INDIRECT_DESC,
            |r| {
                r.desc(0, DATA, len, DESC_F_INDIRECT, 0);
                r.publish(0);
            },
            Error::IndirectTableLength { len },
        );
    }
}

#[test]
fn pop_nested_indirect_refused() {
    split_fault(
        Features::INDIRECT_DESC,
        |r| {
            r.indirect_entry(DATA, 0, DATA + 0x100, 32, DESC_F_INDIRECT, 0);
            r.desc(0, DATA, 32, DESC_F_INDIRECT, 0);
            r.publish(0);
        },
        Error::NestedIndirect,
    );
}

#[test]
fn pop_indirect_table_outside_memory_refused() {
    let addr = DeviceAddr::new(BASE + MEM as u64 - 16);
    split_fault(
        Features::INDIRECT_DESC,
        |r| {
            r.desc(0, addr.raw(), 32, DESC_F_INDIRECT, 0);
            r.publish(0);
        },
        Error::BufferOutOfMemory { addr, len: 32 },
    );
}

#[test]
fn pop_indirect_not_negotiated_refused() {
    split_fault(
        Features::empty(),
        |r| {
            r.indirect_entry(DATA, 0, DATA + 0x100, 32, 0, 0);
            r.desc(0, DATA, 16, DESC_F_INDIRECT, 0);
            r.publish(0);
        },
        Error::IndirectNotNegotiated,
    );
}

#[test]
fn pop_indirect_loop_refused() {
    split_fault(
        Features::INDIRECT_DESC,
        |r| {
            r.indirect_entry(DATA, 0, DATA + 0x100, 16, DESC_F_NEXT, 1);
            r.indirect_entry(DATA, 1, DATA + 0x100, 16, DESC_F_NEXT, 0);
            r.desc(0, DATA, 32, DESC_F_INDIRECT, 0);
            r.publish(0);
        },
        Error::ChainTooLong { size: 2 },
    );
}

#[test]
fn pop_total_length_overflow_refused() {
    // Four in-memory buffers of ~2 GiB each (the same range, lazily mapped) sum past 4 GiB.
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(0), 0x8000_0000 + 0x10000).unwrap());
    let layout = RingLayout::new(RingFormat::Split, SIZE);
    let config = QueueConfig::with_layout(SIZE, &layout, DeviceAddr::new(0)).unwrap();
    let raw = RawSplit {
        memory: memory.clone(),
        config,
        avail_idx: 0,
    };
    let mut raw = raw;
    for i in 0..3u16 {
        raw.desc(i, 0x10000, 0x7fff_0000, DESC_F_NEXT, i + 1);
    }
    raw.desc(3, 0x10000, 0x7fff_0000, 0, 0);
    raw.publish(0);
    expect_fault_both(
        || DeviceQueue::activate(&config, Features::VERSION_1, memory.clone()).unwrap(),
        Error::ChainLengthOverflow,
    );
}

#[test]
fn pop_buffer_outside_memory_refused() {
    let addr = DeviceAddr::new(BASE + MEM as u64 - 8);
    split_fault(
        Features::empty(),
        |r| {
            r.desc(0, addr.raw(), 16, 0, 0);
            r.publish(0);
        },
        Error::BufferOutOfMemory { addr, len: 16 },
    );
}

#[test]
fn pop_buffer_address_overflow_refused() {
    let addr = DeviceAddr::new(u64::MAX - 4);
    split_fault(
        Features::empty(),
        |r| {
            r.desc(0, addr.raw(), 16, 0, 0);
            r.publish(0);
        },
        Error::BufferOutOfMemory { addr, len: 16 },
    );
}

#[test]
fn pop_readable_after_writable_refused() {
    split_fault(
        Features::empty(),
        |r| {
            r.desc(0, DATA, 16, DESC_F_WRITE | DESC_F_NEXT, 1);
            r.desc(1, DATA + 16, 16, 0, 0);
            r.publish(0);
        },
        Error::ReadableAfterWritable,
    );
}

#[test]
fn pop_well_formed_chain_after_refusal_needs_reset() {
    let mut raw = RawSplit::new();
    raw.publish(SIZE);
    let mut device = raw.device(Features::empty());
    expect_fault(
        &mut device,
        Error::DescriptorIndexOutOfRange { index: 8, size: 8 },
    );
    // Reset: the queue goes back to its configuration and can be activated again.
    let (config, memory) = device.into_parts();
    let mut raw = RawSplit {
        memory,
        config,
        avail_idx: 0,
    };
    raw.desc(0, DATA, 16, 0, 0);
    raw.publish(0);
    let mut device = raw.device(Features::empty());
    let chain = device.pop().unwrap().unwrap();
    assert_eq!((chain.id(), chain.readable_len()), (0, 16));
}

#[test]
fn add_used_token_out_of_range_refused() {
    // A token from a larger queue names a head this queue does not have.
    let mut big = MockDriver::with_slot_len(Features::VERSION_1, 64, 64).unwrap();
    for _ in 0..10 {
        big.add(&[b"x"], &[]).unwrap();
    }
    let mut big_device =
        DeviceQueue::activate(&big.queue_config(), Features::VERSION_1, big.memory()).unwrap();
    let mut last = None;
    while let Some(chain) = big_device.pop().unwrap() {
        last = Some(chain.token());
    }
    let token = last.unwrap();
    assert!(token.id() >= SIZE);
    for features in [Features::empty(), Features::RING_PACKED] {
        let mut device = if features.is_empty() {
            RawSplit::new().device(features)
        } else {
            RawPacked::new().device(features)
        };
        assert_eq!(
            device.add_used(token, 0).unwrap_err(),
            Error::InvalidUsedToken {
                id: token.id(),
                size: SIZE
            }
        );
        assert!(
            !device.is_broken(),
            "a caller error does not break the queue"
        );
    }
}

#[test]
fn pop_segments_are_read_once_into_the_chain() {
    // The chain holds copies of every descriptor field: rewriting the ring after pop does not change it.
    let mut raw = RawSplit::new();
    raw.desc(0, DATA, 16, DESC_F_NEXT, 1);
    raw.desc(1, DATA + 32, 8, DESC_F_WRITE, 0);
    raw.publish(0);
    let mut device = raw.device(Features::empty());
    let mut chain = device.new_chain();
    assert!(device.pop_into(&mut chain).unwrap());
    raw.desc(0, DATA + 0x1000, 0xffff, DESC_F_WRITE | DESC_F_NEXT, 7);
    raw.desc(1, 0, 0, 0, 0);
    assert_eq!(chain.readable().len(), 1);
    assert_eq!(chain.readable()[0].addr().raw(), DATA);
    assert_eq!(chain.readable()[0].len(), 16);
    assert_eq!(chain.writable()[0].addr().raw(), DATA + 32);
}

// ----- packed -----

struct RawPacked {
    memory: Arc<HeapMemory>,
    config: QueueConfig,
}

impl RawPacked {
    fn new() -> Self {
        let (memory, config) = ring_memory(RingFormat::Packed, SIZE);
        Self { memory, config }
    }

    fn desc(&self, pos: u16, addr: u64, len: u32, id: u16, flags: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&id.to_le_bytes());
        raw[14..].copy_from_slice(&flags.to_le_bytes());
        let at = self.config.descriptors.raw() + 16 * u64::from(pos);
        DeviceSlice::new(&*self.memory, DeviceAddr::new(at), 16)
            .unwrap()
            .write_at(0, &raw);
    }

    fn device(&self, features: Features) -> DeviceQueue<Arc<HeapMemory>> {
        let f = features | Features::VERSION_1 | Features::RING_PACKED;
        DeviceQueue::activate(&self.config, f, self.memory.clone()).unwrap()
    }
}

const AVAIL: u16 = PACKED_DESC_F_AVAIL;

#[test]
fn packed_pop_wrong_wrap_bits_not_available() {
    let raw = RawPacked::new();
    // USED set as well (a used descriptor of the first lap), or AVAIL clear: neither is available at wrap 1.
    raw.desc(0, DATA, 16, 0, AVAIL | PACKED_DESC_F_USED);
    let mut device = raw.device(Features::empty());
    assert!(device.pop().unwrap().is_none());
    raw.desc(0, DATA, 16, 0, PACKED_DESC_F_USED);
    assert!(device.pop().unwrap().is_none());
    raw.desc(0, DATA, 16, 0, AVAIL);
    assert!(device.pop().unwrap().is_some());
}

#[test]
fn packed_pop_tail_not_available_refused() {
    let raw = RawPacked::new();
    raw.desc(1, DATA + 16, 16, 0, 0);
    raw.desc(0, DATA, 16, 0, AVAIL | DESC_F_NEXT);
    expect_fault_both(
        || raw.device(Features::empty()),
        Error::PackedDescriptorNotAvailable { index: 1 },
    );
}

#[test]
fn packed_pop_single_buffer_outside_memory_refused() {
    let raw = RawPacked::new();
    let addr = DeviceAddr::new(BASE + MEM as u64 - 8);
    raw.desc(0, addr.raw(), 16, 0, AVAIL);
    expect_fault_both(
        || raw.device(Features::empty()),
        Error::BufferOutOfMemory { addr, len: 16 },
    );
}

#[test]
fn packed_pop_buffer_id_out_of_range_refused() {
    let raw = RawPacked::new();
    raw.desc(0, DATA, 16, SIZE, AVAIL);
    expect_fault_both(
        || raw.device(Features::empty()),
        Error::BufferIdOutOfRange {
            id: SIZE,
            size: SIZE,
        },
    );
}

#[test]
fn packed_pop_chain_longer_than_ring_refused() {
    let raw = RawPacked::new();
    for pos in 0..SIZE {
        raw.desc(pos, DATA, 16, 0, AVAIL | DESC_F_NEXT);
    }
    let mut device = raw.device(Features::empty());
    // After a full lap the wrap counter flips, so the first slot is no longer "available" for the chain's tail.
    let mut chain = device.new_chain();
    let err = device.pop_into(&mut chain).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChainTooLong { .. } | Error::PackedDescriptorNotAvailable { .. }
        ),
        "{err:?}"
    );
    assert!(device.is_broken());
}

#[test]
fn packed_pop_indirect_not_alone_refused() {
    let raw = RawPacked::new();
    raw.desc(1, DATA + 0x100, 32, 0, AVAIL | DESC_F_INDIRECT);
    raw.desc(0, DATA, 16, 0, AVAIL | DESC_F_NEXT);
    expect_fault_both(
        || raw.device(Features::INDIRECT_DESC),
        Error::IndirectWithNext,
    );
}

#[test]
fn packed_pop_indirect_not_negotiated_refused() {
    let raw = RawPacked::new();
    raw.desc(0, DATA, 32, 0, AVAIL | DESC_F_INDIRECT);
    expect_fault_both(
        || raw.device(Features::empty()),
        Error::IndirectNotNegotiated,
    );
}

#[test]
fn packed_pop_nested_indirect_refused() {
    let raw = RawPacked::new();
    let mut entry = [0u8; 16];
    entry[..8].copy_from_slice(&(DATA + 0x200).to_le_bytes());
    entry[8..12].copy_from_slice(&32u32.to_le_bytes());
    entry[14..].copy_from_slice(&DESC_F_INDIRECT.to_le_bytes());
    DeviceSlice::new(&*raw.memory, DeviceAddr::new(DATA + 0x100), 16)
        .unwrap()
        .write_at(0, &entry);
    raw.desc(0, DATA + 0x100, 16, 0, AVAIL | DESC_F_INDIRECT);
    expect_fault_both(
        || raw.device(Features::INDIRECT_DESC),
        Error::NestedIndirect,
    );
}

#[test]
fn packed_pop_readable_after_writable_refused() {
    let raw = RawPacked::new();
    raw.desc(1, DATA + 16, 16, 0, AVAIL);
    raw.desc(0, DATA, 16, 0, AVAIL | DESC_F_NEXT | DESC_F_WRITE);
    expect_fault_both(
        || raw.device(Features::empty()),
        Error::ReadableAfterWritable,
    );
}

#[test]
fn packed_used_skips_the_chain_descriptors() {
    // A 3-descriptor chain is returned with one used element; the next chain starts 3 slots later.
    let raw = RawPacked::new();
    raw.desc(1, DATA + 16, 16, 0, AVAIL | DESC_F_NEXT);
    raw.desc(2, DATA + 32, 16, 5, AVAIL | DESC_F_WRITE);
    raw.desc(0, DATA, 16, 0, AVAIL | DESC_F_NEXT);
    raw.desc(3, DATA + 48, 16, 6, AVAIL);
    let mut device = raw.device(Features::empty());
    let token = device.pop().unwrap().unwrap().token();
    assert_eq!((token.id(), token.descriptors()), (5, 3));
    device.add_used(token, 4).unwrap();
    let next = device.pop().unwrap().unwrap().token();
    assert_eq!((next.id(), next.descriptors()), (6, 1));
    device.add_used(next, 0).unwrap();
    // The used elements sit at slots 0 and 3.
    let mut flags = [0u8; 2];
    let at = |pos: u64| DeviceAddr::new(raw.config.descriptors.raw() + 16 * pos + 14);
    DeviceSlice::new(&*raw.memory, at(3), 2)
        .unwrap()
        .read_at(0, &mut flags);
    assert_eq!(
        u16::from_le_bytes(flags) & (AVAIL | PACKED_DESC_F_USED),
        AVAIL | PACKED_DESC_F_USED
    );
}

// ----- driver side against a hostile device -----

fn split_used(driver: &MockDriver, idx: u16, slot: u16, id: u32, len: u32) {
    let used = driver.queue_config().device_area.raw();
    let size = driver.queue_config().size;
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&id.to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    driver
        .poke(
            DeviceAddr::new(used + 4 + 8 * u64::from(slot % size)),
            &elem,
        )
        .unwrap();
    driver
        .poke(DeviceAddr::new(used + 2), &idx.to_le_bytes())
        .unwrap();
}

fn packed_used(driver: &MockDriver, pos: u16, id: u16, len: u32) {
    let desc = driver.queue_config().descriptors.raw() + 16 * u64::from(pos);
    driver
        .poke(DeviceAddr::new(desc + 8), &len.to_le_bytes())
        .unwrap();
    driver
        .poke(DeviceAddr::new(desc + 12), &id.to_le_bytes())
        .unwrap();
    driver
        .poke(
            DeviceAddr::new(desc + 14),
            &(AVAIL | PACKED_DESC_F_USED).to_le_bytes(),
        )
        .unwrap();
}

fn driver_fault(driver: &mut MockDriver, want: Error) {
    let got = driver.pop_used().unwrap_err();
    assert_eq!(got, want);
    assert!(got.is_peer_fault());
    assert_eq!(driver.pop_used().unwrap_err(), Error::QueueBroken);
    assert_eq!(driver.add(&[b"x"], &[]).unwrap_err(), Error::QueueBroken);
    // Reset reclaims what was in flight and makes the queue usable again.
    let reclaimed = driver.reset();
    assert!(!reclaimed.is_empty());
    assert!(!driver.queue().is_broken());
    let token = driver.add(&[b"after reset"], &[]).unwrap();
    assert!(reclaimed.contains(&token) || driver.queue().in_flight() == 1);
}

fn driver_with_one(features: Features) -> (MockDriver, u16) {
    let mut driver = MockDriver::with_slot_len(features | Features::VERSION_1, SIZE, 256).unwrap();
    let token = driver.add(&[b"req"], &[16]).unwrap();
    (driver, token)
}

#[test]
fn driver_used_id_out_of_range_refused() {
    let (mut driver, _) = driver_with_one(Features::empty());
    split_used(&driver, 1, 0, 99, 0);
    driver_fault(&mut driver, Error::UsedIdOutOfRange { id: 99, size: SIZE });
}

#[test]
fn driver_used_id_not_in_flight_refused() {
    let (mut driver, head) = driver_with_one(Features::empty());
    split_used(&driver, 1, 0, u32::from(head) + 3, 0);
    driver_fault(
        &mut driver,
        Error::UsedIdNotInFlight {
            id: u32::from(head) + 3,
        },
    );
}

#[test]
fn driver_used_length_above_offered_refused() {
    let (mut driver, head) = driver_with_one(Features::empty());
    split_used(&driver, 1, 0, u32::from(head), 17);
    driver_fault(
        &mut driver,
        Error::UsedLengthTooLarge {
            len: 17,
            offered: 16,
        },
    );
}

#[test]
fn driver_used_idx_jump_refused() {
    let (mut driver, head) = driver_with_one(Features::empty());
    split_used(&driver, 2, 0, u32::from(head), 0);
    driver_fault(
        &mut driver,
        Error::UsedIndexJump {
            used_idx: 2,
            last_used: 0,
            in_flight: 1,
        },
    );
}

#[test]
fn driver_used_twice_refused() {
    let (mut driver, head) = driver_with_one(Features::empty());
    split_used(&driver, 1, 0, u32::from(head), 4);
    assert_eq!(driver.pop_used().unwrap().unwrap().len, 4);
    driver.add(&[b"again"], &[8]).unwrap();
    // The device returns the first head again, which is no longer (or not yet) in flight under that id.
    let other = if head == 0 { 5 } else { 0 };
    split_used(&driver, 2, 1, other, 0);
    driver_fault(&mut driver, Error::UsedIdNotInFlight { id: other });
}

#[test]
fn driver_packed_used_id_out_of_range_refused() {
    let (mut driver, _) = driver_with_one(Features::RING_PACKED);
    packed_used(&driver, 0, SIZE, 0);
    driver_fault(
        &mut driver,
        Error::UsedIdOutOfRange {
            id: u32::from(SIZE),
            size: SIZE,
        },
    );
}

#[test]
fn driver_packed_used_id_not_in_flight_refused() {
    let (mut driver, id) = driver_with_one(Features::RING_PACKED);
    packed_used(&driver, 0, id + 1, 0);
    driver_fault(
        &mut driver,
        Error::UsedIdNotInFlight {
            id: u32::from(id) + 1,
        },
    );
}

#[test]
fn driver_packed_used_length_above_offered_refused() {
    let (mut driver, id) = driver_with_one(Features::RING_PACKED);
    packed_used(&driver, 0, id, 1000);
    driver_fault(
        &mut driver,
        Error::UsedLengthTooLarge {
            len: 1000,
            offered: 16,
        },
    );
}

#[test]
fn driver_reset_reclaims_buffers_in_flight() {
    for features in [
        Features::VERSION_1,
        Features::VERSION_1 | Features::RING_PACKED,
    ] {
        let mut driver = MockDriver::with_slot_len(features, SIZE, 256).unwrap();
        let tokens: Vec<u16> = (0..4)
            .map(|_| driver.add(&[b"abc"], &[4]).unwrap())
            .collect();
        let mut reclaimed = driver.reset();
        reclaimed.sort_unstable();
        let mut want = tokens.clone();
        want.sort_unstable();
        assert_eq!(reclaimed, want);
        assert_eq!(driver.queue().num_free(), SIZE);
        assert_eq!(driver.queue().in_flight(), 0);
    }
}

// ----- the device queues' look-ahead (prefetch of the next available buffers) -----

/// The look-ahead reads entries past the one being popped; whatever garbage it meets there must neither panic nor
/// fail the pop in hand: each bad entry is reported, as usual, by the pop that reaches it.
#[test]
fn split_lookahead_over_hostile_entries_leaves_faults_to_their_pops() {
    type Case = (&'static str, fn(&mut RawSplit), Error);
    let bad: [Case; 4] = [
        (
            "head out of range",
            |r| r.publish(SIZE + 3),
            Error::DescriptorIndexOutOfRange {
                index: u32::from(SIZE + 3),
                size: u32::from(SIZE),
            },
        ),
        (
            "buffer outside memory",
            |r| {
                r.desc(1, BASE + MEM as u64 - 8, 32, 0, 0);
                r.publish(1);
            },
            Error::BufferOutOfMemory {
                addr: DeviceAddr::new(BASE + MEM as u64 - 8),
                len: 32,
            },
        ),
        (
            "huge length at the top of the address space",
            |r| {
                r.desc(1, u64::MAX - 4, u32::MAX, DESC_F_WRITE, 0);
                r.publish(1);
            },
            Error::BufferOutOfMemory {
                addr: DeviceAddr::new(u64::MAX - 4),
                len: u32::MAX,
            },
        ),
        (
            "indirect not negotiated, garbage table address",
            |r| {
                r.desc(1, u64::MAX, 16, DESC_F_INDIRECT, 0);
                r.publish(1);
            },
            Error::IndirectNotNegotiated,
        ),
    ];
    for (what, build, want) in bad {
        let mut raw = RawSplit::new();
        raw.desc(0, DATA, 64, 0, 0);
        raw.publish(0);
        // The bad entry second, then more of the same kind so that the look-ahead crosses several.
        for _ in 1..SIZE {
            build(&mut raw);
        }
        for via_pop_buffer in [false, true] {
            let mut device = raw.device(Features::empty());
            let mut chain = device.new_chain();
            if via_pop_buffer {
                assert!(
                    matches!(
                        device.pop_buffer(&mut chain),
                        Ok(virtio_core::Popped::Single(_))
                    ),
                    "{what}: the good first chain pops"
                );
                assert_eq!(device.pop_buffer(&mut chain).unwrap_err(), want, "{what}");
            } else {
                assert!(
                    device.pop_into(&mut chain).unwrap(),
                    "{what}: the good first chain pops"
                );
                assert_eq!(device.pop_into(&mut chain).unwrap_err(), want, "{what}");
            }
            assert!(device.is_broken(), "{what}");
        }
    }
}

/// As above for a packed ring; the look-ahead must also stop at a descriptor that is not available (wrong wrap
/// bits), which the next pop then reports as an empty ring.
#[test]
fn packed_lookahead_over_hostile_descriptors_leaves_faults_to_their_pops() {
    type Case = (&'static str, fn(&RawPacked, u16), Option<Error>);
    let bad: [Case; 4] = [
        (
            "buffer outside memory",
            |r, pos| r.desc(pos, BASE + MEM as u64 - 8, 32, pos, AVAIL),
            Some(Error::BufferOutOfMemory {
                addr: DeviceAddr::new(BASE + MEM as u64 - 8),
                len: 32,
            }),
        ),
        (
            "huge length at the top of the address space",
            |r, pos| r.desc(pos, u64::MAX - 4, u32::MAX, pos, AVAIL | DESC_F_WRITE),
            Some(Error::BufferOutOfMemory {
                addr: DeviceAddr::new(u64::MAX - 4),
                len: u32::MAX,
            }),
        ),
        (
            "indirect not negotiated, garbage table address",
            |r, pos| r.desc(pos, u64::MAX, 16, pos, AVAIL | DESC_F_INDIRECT),
            Some(Error::IndirectNotNegotiated),
        ),
        (
            "not available (used bit set on the first lap)",
            |r, pos| r.desc(pos, DATA, 16, pos, AVAIL | PACKED_DESC_F_USED),
            None,
        ),
    ];
    for (what, build, want) in bad {
        let raw = RawPacked::new();
        raw.desc(0, DATA, 64, 0, AVAIL);
        for pos in 1..SIZE {
            build(&raw, pos);
        }
        for via_pop_buffer in [false, true] {
            let mut device = raw.device(Features::empty());
            let mut chain = device.new_chain();
            let second = if via_pop_buffer {
                assert!(
                    matches!(
                        device.pop_buffer(&mut chain),
                        Ok(virtio_core::Popped::Single(_))
                    ),
                    "{what}: the good first chain pops"
                );
                device
                    .pop_buffer(&mut chain)
                    .map(|p| matches!(p, virtio_core::Popped::Empty))
            } else {
                assert!(
                    device.pop_into(&mut chain).unwrap(),
                    "{what}: the good first chain pops"
                );
                device.pop_into(&mut chain).map(|popped| !popped)
            };
            match &want {
                Some(e) => {
                    assert_eq!(second.unwrap_err(), *e, "{what}");
                    assert!(device.is_broken(), "{what}");
                }
                None => {
                    assert!(second.unwrap(), "{what}: nothing more is available");
                    assert!(!device.is_broken(), "{what}");
                }
            }
        }
    }
}
