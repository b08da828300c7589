//! Our driver ↔ our device over shared memory: both ring formats, every combination of INDIRECT_DESC, EVENT_IDX and
//! IN_ORDER, and property tests over index wrap-around and packed wrap counters.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

use proptest::prelude::*;
use virtio_core::mock::MockDriver;
use virtio_core::{DeviceQueue, Features, InOrderBatch};

fn features(packed: bool, indirect: bool, event_idx: bool, in_order: bool) -> Features {
    let mut f = Features::VERSION_1;
    f.set(Features::RING_PACKED, packed);
    f.set(Features::INDIRECT_DESC, indirect);
    f.set(Features::EVENT_IDX, event_idx);
    f.set(Features::IN_ORDER, in_order);
    f
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect()
}

/// The device's answer: a checksum of the request followed by the request reversed, filling the writable space.
fn answer(request: &[u8], capacity: usize) -> Vec<u8> {
    let sum: u64 = request.iter().map(|b| u64::from(*b)).sum();
    let mut out = sum.to_le_bytes().to_vec();
    out.extend(request.iter().rev());
    out.resize(capacity, 0xa5);
    out
}

/// Shapes of chains: readable segment sizes, writable segment sizes; small queues get chains that fit.
fn shape(seq: u64, size: u16) -> (Vec<usize>, Vec<u32>) {
    if size == 1 {
        return if seq % 2 == 0 {
            (vec![], vec![64])
        } else {
            (vec![40], vec![])
        };
    }
    if size < 8 {
        return (vec![1 + (seq % 100) as usize], vec![120]);
    }
    match seq % 5 {
        0 => (vec![64], vec![80]),
        1 => (vec![14, 50], vec![40, 60]),
        2 => (vec![1, 2, 3], vec![300]),
        3 => (vec![200], vec![8, 8, 200]),
        _ => (vec![33, 1, 7, 90], vec![150]),
    }
}

/// Moves `count` chains through a queue of `size`, keeping it as full as possible, and checks every byte.
fn exchange(features: Features, size: u16, count: u64) {
    let mut driver = MockDriver::with_slot_len(features, size, 1024).unwrap();
    let mut device =
        DeviceQueue::activate(&driver.queue_config(), features, driver.memory()).unwrap();
    let in_order = features.contains(Features::IN_ORDER);
    let mut chain = device.new_chain();
    let memory = driver.memory();
    let mut expected = std::collections::HashMap::new();
    let (mut sent, mut received, mut seq_out) = (0u64, 0u64, 0u64);
    let mut kicks = 0u64;
    while received < count {
        // Fill.
        let mut added = 0;
        while sent < count {
            let (r, w) = shape(seq_out, size);
            let payloads: Vec<Vec<u8>> = r
                .iter()
                .enumerate()
                .map(|(i, len)| pattern(seq_out + i as u64, *len))
                .collect();
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            match driver.add(&refs, &w) {
                Ok(token) => {
                    let request: Vec<u8> = payloads.concat();
                    let capacity: u32 = w.iter().sum();
                    expected.insert(token, answer(&request, capacity as usize));
                    sent += 1;
                    seq_out += 1;
                    added += 1;
                }
                Err(virtio_core::Error::QueueFull { .. }) => break,
                Err(e) => panic!("add: {e}"),
            }
        }
        if added > 0 && driver.kick_needed() {
            kicks += 1;
        }
        // Serve: in-order devices return the whole burst with one used element.
        let mut batch = InOrderBatch::new();
        let mut last_len = 0;
        let mut served = 0;
        while device.pop_into(&mut chain).unwrap() {
            let mut request = vec![0; chain.readable_len() as usize];
            assert_eq!(
                chain.reader(&*memory).read(&mut request).unwrap(),
                request.len()
            );
            let response = answer(&request, chain.writable_len() as usize);
            let mut writer = chain.writer(&*memory);
            writer.write(&response).unwrap();
            if in_order && served % 3 != 2 {
                batch.push(chain.token());
                last_len = writer.written();
            } else {
                if batch.buffers() > 0 {
                    device.add_used_in_order(&batch, last_len).unwrap();
                    batch.clear();
                }
                device.add_used(chain.token(), writer.written()).unwrap();
            }
            served += 1;
        }
        if batch.buffers() > 0 {
            device.add_used_in_order(&batch, last_len).unwrap();
        }
        let _ = device.needs_notification();
        // Collect.
        let before = received;
        while let Some(used) = driver.pop_used().unwrap() {
            let want = expected.remove(&used.token).expect("token in flight");
            assert_eq!(used.len as usize, want.len(), "used length");
            assert_eq!(used.data, want, "payload of token {}", used.token);
            received += 1;
        }
        assert!(!device.is_broken() && !driver.queue().is_broken());
        assert!(
            added > 0 || served > 0 || received > before,
            "no progress at {received}/{count}"
        );
    }
    assert!(expected.is_empty());
    assert_eq!(driver.queue().in_flight(), 0);
    assert_eq!(driver.queue().num_free(), size);
    assert!(kicks > 0);
}

macro_rules! combos {
    ($($name:ident: $packed:expr, $indirect:expr, $event:expr, $in_order:expr;)*) => {$(
        #[test]
        fn $name() {
            exchange(features($packed, $indirect, $event, $in_order), 16, 2000);
            exchange(features($packed, $indirect, $event, $in_order), 256, 1000);
        }
    )*};
}

combos! {
    roundtrip_split_plain_data_intact: false, false, false, false;
    roundtrip_split_indirect_data_intact: false, true, false, false;
    roundtrip_split_event_idx_data_intact: false, false, true, false;
    roundtrip_split_indirect_event_idx_data_intact: false, true, true, false;
    roundtrip_split_in_order_data_intact: false, false, false, true;
    roundtrip_split_in_order_indirect_data_intact: false, true, false, true;
    roundtrip_split_in_order_event_idx_data_intact: false, false, true, true;
    roundtrip_split_all_features_data_intact: false, true, true, true;
    roundtrip_packed_plain_data_intact: true, false, false, false;
    roundtrip_packed_indirect_data_intact: true, true, false, false;
    roundtrip_packed_event_idx_data_intact: true, false, true, false;
    roundtrip_packed_indirect_event_idx_data_intact: true, true, true, false;
    roundtrip_packed_in_order_data_intact: true, false, false, true;
    roundtrip_packed_in_order_indirect_data_intact: true, true, false, true;
    roundtrip_packed_in_order_event_idx_data_intact: true, false, true, true;
    roundtrip_packed_all_features_data_intact: true, true, true, true;
}

#[test]
fn roundtrip_split_past_u16_index_wrap_data_intact() {
    exchange(features(false, false, true, false), 8, 70_000);
}

#[test]
fn roundtrip_packed_odd_size_many_wraps_data_intact() {
    exchange(features(true, false, true, false), 7, 20_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Packed rings of any size 1..=32768 keep wrap counters consistent across several wraps.
    #[test]
    fn roundtrip_packed_any_size_wrap_counters_consistent(size in 1u16..=32768, event_idx: bool, indirect: bool) {
        // Enough chains (several descriptors each) to wrap the ring at least twice.
        let count = (u64::from(size) * 2 / 3 + 50).min(30_000);
        exchange(features(true, indirect, event_idx, false), size, count);
    }

    /// Split rings of every power-of-two size move buffers past the u16 index wrap.
    #[test]
    fn roundtrip_split_power_of_two_index_wrap(shift in 0u32..=15, event_idx: bool, in_order: bool) {
        let size = 1u16 << shift;
        let count = if size <= 64 { 66_000 } else { u64::from(size) + 100 };
        exchange(features(false, false, event_idx, in_order), size, count.min(70_000));
    }
}
