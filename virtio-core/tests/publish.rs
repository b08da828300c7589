//! Deferred publication (`add_unpublished` + `publish`) and batched reclaim (`pop_used_batch`) of the driver queue,
//! for both ring formats, against our device queue and against a device that lies about what it used.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;

use virtio_core::{
    Buffer, DeviceAddr, DeviceQueue, DeviceSlice, DriverQueue, Error, Features, HeapMemory,
    InOrderBatch, Popped, QueueConfig, RingFormat, Used, UsedToken,
};

mod common;
use common::{ring_memory, BASE, DATA};

const SIZE: u16 = 16;

struct Pair {
    memory: Arc<HeapMemory>,
    config: QueueConfig,
    driver: DriverQueue<Arc<HeapMemory>, u32>,
    device: DeviceQueue<Arc<HeapMemory>>,
}

fn setup(packed: bool, in_order: bool, indirect: bool) -> Pair {
    let mut features = Features::VERSION_1 | Features::EVENT_IDX;
    features.set(Features::RING_PACKED, packed);
    features.set(Features::IN_ORDER, in_order);
    features.set(Features::INDIRECT_DESC, indirect);
    let format = if packed {
        RingFormat::Packed
    } else {
        RingFormat::Split
    };
    let (memory, config) = ring_memory(format, SIZE);
    let pool = virtio_core::IndirectPool {
        addr: DeviceAddr::new(BASE + 0x8000),
        entries_per_chain: 4,
    };
    let driver =
        DriverQueue::new(&config, features, memory.clone(), indirect.then_some(pool)).unwrap();
    let device = DeviceQueue::activate(&config, features, memory.clone()).unwrap();
    Pair {
        memory,
        config,
        driver,
        device,
    }
}

fn buf(i: u64, len: u32) -> Buffer {
    Buffer::new(DeviceAddr::new(DATA + i * 0x100), len)
}

/// Adds `tokens` unpublished: single readable buffers, single writable buffers, and a three-buffer chain.
fn add_mixed(p: &mut Pair, tokens: std::ops::Range<u32>) {
    for t in tokens {
        let i = u64::from(t);
        match t % 3 {
            0 => p.driver.add_unpublished(&[buf(i, 60)], &[], t),
            1 => p.driver.add_unpublished(&[], &[buf(i, 80)], t),
            _ => p
                .driver
                .add_unpublished(&[buf(i, 10), buf(i + 40, 20)], &[buf(i + 80, 30)], t),
        }
        .unwrap();
    }
}

/// Pops everything the device can see, returning the tokens of the chains.
fn pop_all(p: &mut Pair) -> Vec<UsedToken> {
    let mut out = Vec::new();
    while let Some(chain) = p.device.pop().unwrap() {
        out.push(chain.token());
    }
    out
}

fn all_cases() -> impl Iterator<Item = (bool, bool, bool)> {
    [false, true].into_iter().flat_map(|packed| {
        [false, true].into_iter().flat_map(move |in_order| {
            [false, true]
                .into_iter()
                .map(move |indirect| (packed, in_order, indirect))
        })
    })
}

#[test]
fn add_unpublished_device_sees_nothing_until_publish_then_all() {
    for (packed, in_order, indirect) in all_cases() {
        let mut p = setup(packed, in_order, indirect);
        // Several rounds so that packed rings wrap and split indices move on.
        for round in 0..5u32 {
            let tokens = round * 6..round * 6 + 6;
            add_mixed(&mut p, tokens.clone());
            assert_eq!(p.driver.unpublished(), 6);
            assert!(
                pop_all(&mut p).is_empty(),
                "device saw unpublished chains (packed {packed}, in_order {in_order}, indirect {indirect})"
            );
            p.driver.publish();
            assert_eq!(p.driver.unpublished(), 0);
            let popped = pop_all(&mut p);
            assert_eq!(popped.len(), 6, "packed {packed} in_order {in_order}");
            for token in popped {
                p.device.add_used(token, 0).unwrap();
            }
            let mut got = Vec::new();
            p.driver.pop_used_batch(|u| got.push(u.token)).unwrap();
            assert_eq!(got, tokens.collect::<Vec<_>>());
            assert_eq!(p.driver.in_flight(), 0);
        }
    }
}

#[test]
fn add_unpublished_kick_prepare_publishes_first() {
    for (packed, in_order, indirect) in all_cases() {
        let mut p = setup(packed, in_order, indirect);
        add_mixed(&mut p, 0..4);
        assert!(pop_all(&mut p).is_empty());
        // The device asked for a kick at the start (EVENT_IDX), so the pending chains need one.
        assert!(p.driver.kick_prepare());
        assert_eq!(p.driver.unpublished(), 0);
        assert_eq!(pop_all(&mut p).len(), 4);
        // Publishing with nothing pending changes nothing.
        p.driver.publish();
        assert!(pop_all(&mut p).is_empty());
    }
}

#[test]
fn add_unpublished_then_add_publishes_both() {
    for (packed, in_order, indirect) in all_cases() {
        let mut p = setup(packed, in_order, indirect);
        add_mixed(&mut p, 0..2);
        p.driver.add(&[buf(9, 16)], &[], 2).unwrap();
        assert_eq!(p.driver.unpublished(), 0);
        let popped = pop_all(&mut p);
        assert_eq!(popped.len(), 3, "packed {packed}");
    }
}

#[test]
fn pop_used_batch_in_order_one_element_retires_the_whole_batch() {
    for packed in [false, true] {
        let mut p = setup(packed, true, false);
        add_mixed(&mut p, 0..5);
        p.driver.publish();
        let mut batch = InOrderBatch::new();
        for token in pop_all(&mut p) {
            batch.push(token);
        }
        assert_eq!(batch.buffers(), 5);
        p.device.add_used_in_order(&batch, 7).unwrap();
        let mut got: Vec<Used<u32>> = Vec::new();
        assert_eq!(p.driver.pop_used_batch(|u| got.push(u)).unwrap(), 5);
        let tokens: Vec<u32> = got.iter().map(|u| u.token).collect();
        assert_eq!(tokens, vec![0, 1, 2, 3, 4]);
        // Earlier buffers report what they offered to the device (writable bytes); the named one its length.
        let lens: Vec<u32> = got.iter().map(|u| u.len).collect();
        assert_eq!(lens, vec![0, 80, 30, 0, 7]);
        assert_eq!(p.driver.in_flight(), 0);
        assert_eq!(p.driver.num_free(), SIZE);
        assert_eq!(
            p.driver.pop_used_batch(|_| panic!("nothing left")).unwrap(),
            0
        );
    }
}

#[test]
fn pop_used_batch_out_of_order_matches_pop_used() {
    for packed in [false, true] {
        let mut p = setup(packed, false, true);
        add_mixed(&mut p, 0..6);
        p.driver.publish();
        let popped = pop_all(&mut p);
        let used: Vec<(UsedToken, u32)> = popped.iter().rev().map(|t| (*t, 0)).collect();
        p.device.add_used_batch(&used).unwrap();
        let mut got = Vec::new();
        assert_eq!(p.driver.pop_used_batch(|u| got.push(u.token)).unwrap(), 6);
        assert_eq!(got, vec![5, 4, 3, 2, 1, 0]);
        assert_eq!(p.driver.num_free(), SIZE);
    }
}

#[test]
fn pop_used_batch_finishes_a_batch_pop_used_started() {
    for packed in [false, true] {
        let mut p = setup(packed, true, false);
        add_mixed(&mut p, 0..4);
        p.driver.publish();
        let mut batch = InOrderBatch::new();
        for token in pop_all(&mut p) {
            batch.push(token);
        }
        p.device.add_used_in_order(&batch, 0).unwrap();
        assert_eq!(p.driver.pop_used().unwrap().unwrap().token, 0);
        let mut got = Vec::new();
        assert_eq!(p.driver.pop_used_batch(|u| got.push(u.token)).unwrap(), 3);
        assert_eq!(got, vec![1, 2, 3]);
    }
}

/// Writes a split used element and `used.idx` by hand, as a hostile device would.
fn poke_split_used(p: &Pair, slot: u16, id: u32, len: u32, used_idx: u16) {
    let area = p.config.device_area.raw();
    let at = |off: u64, bytes: &[u8]| {
        DeviceSlice::new(&*p.memory, DeviceAddr::new(area + off), bytes.len())
            .unwrap()
            .write_at(0, bytes);
    };
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&id.to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    at(4 + 8 * u64::from(slot), &elem);
    at(2, &used_idx.to_le_bytes());
}

#[test]
fn pop_used_batch_split_in_order_used_idx_short_of_batch_refused() {
    let mut p = setup(false, true, false);
    for t in 0..3 {
        p.driver.add(&[buf(u64::from(t), 60)], &[], t).unwrap();
    }
    // One used entry naming the third chain, but `used.idx` moved by one only.
    poke_split_used(&p, 0, 2, 0, 1);
    let mut got = Vec::new();
    let err = p.driver.pop_used_batch(|u| got.push(u.token)).unwrap_err();
    assert!(matches!(err, Error::UsedIndexJump { .. }), "{err:?}");
    assert!(p.driver.is_broken());
    assert!(matches!(
        p.driver.pop_used_batch(|_| {}),
        Err(Error::QueueBroken)
    ));
}

/// The error collecting the used buffers gives, with `pop_used_batch` or with `pop_used`.
fn collect_err(p: &mut Pair, batch: bool) -> Error {
    if batch {
        p.driver.pop_used_batch(|_| {}).unwrap_err()
    } else {
        p.driver.pop_used().unwrap_err()
    }
}

#[test]
fn pop_used_split_device_cannot_return_unpublished_chains() {
    for batch in [false, true] {
        let mut p = setup(false, false, false);
        p.driver.add(&[buf(0, 60)], &[], 0).unwrap();
        p.driver.add_unpublished(&[buf(1, 60)], &[], 1).unwrap();
        // The device claims both: the second was never published.
        poke_split_used(&p, 0, 0, 0, 1);
        poke_split_used(&p, 1, 1, 0, 2);
        let err = collect_err(&mut p, batch);
        assert!(matches!(err, Error::UsedIndexJump { .. }), "{err:?}");
    }
}

#[test]
fn pop_used_packed_device_cannot_return_unpublished_chains() {
    for batch in [false, true] {
        let mut p = setup(true, false, false);
        p.driver.add_unpublished(&[buf(1, 60)], &[], 1).unwrap();
        // The device marks the unpublished descriptor used (wrap counter 1: AVAIL and USED set), id 0.
        let flags = virtio_core::ring_flags::PACKED_DESC_F_AVAIL
            | virtio_core::ring_flags::PACKED_DESC_F_USED;
        let mut raw = [0u8; 8];
        raw[4..6].copy_from_slice(&0u16.to_le_bytes());
        raw[6..].copy_from_slice(&flags.to_le_bytes());
        DeviceSlice::new(
            &*p.memory,
            DeviceAddr::new(p.config.descriptors.raw() + 8),
            8,
        )
        .unwrap()
        .write_at(0, &raw);
        let err = collect_err(&mut p, batch);
        assert!(matches!(err, Error::UsedIdNotInFlight { .. }), "{err:?}");
    }
}

#[test]
fn pop_used_batch_reports_device_faults_like_pop_used() {
    for packed in [false, true] {
        let mut p = setup(packed, false, false);
        p.driver.add(&[], &[buf(0, 16)], 0).unwrap();
        let token = pop_all(&mut p)[0];
        // More bytes written than offered.
        p.device.add_used(token, 17).unwrap();
        let err = p.driver.pop_used_batch(|_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UsedLengthTooLarge {
                    len: 17,
                    offered: 16
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn pop_single_buffer_after_longer_chain_resets_the_chain() {
    for packed in [false, true] {
        let mut p = setup(packed, false, false);
        let mut chain = p.device.new_chain();
        p.driver
            .add(&[buf(0, 10), buf(1, 20)], &[buf(2, 30)], 0)
            .unwrap();
        p.driver.add(&[], &[buf(3, 40)], 1).unwrap();
        p.driver.add(&[buf(4, 50)], &[], 2).unwrap();
        assert!(p.device.pop_into(&mut chain).unwrap());
        assert_eq!((chain.readable().len(), chain.writable().len()), (2, 1));
        assert_eq!((chain.readable_len(), chain.writable_len()), (30, 30));
        assert!(p.device.pop_into(&mut chain).unwrap());
        assert_eq!((chain.readable().len(), chain.writable().len()), (0, 1));
        assert_eq!((chain.readable_len(), chain.writable_len()), (0, 40));
        assert_eq!(chain.writable()[0].addr(), buf(3, 40).addr);
        assert_eq!(chain.token().descriptors(), 1);
        assert!(p.device.pop_into(&mut chain).unwrap());
        assert_eq!((chain.readable().len(), chain.writable().len()), (1, 0));
        assert_eq!((chain.readable_len(), chain.writable_len()), (50, 0));
        assert!(!p.device.pop_into(&mut chain).unwrap());
    }
}

#[test]
fn pop_buffer_matches_pop_into_and_hands_single_buffers_translated_without_a_chain() {
    for (packed, in_order, indirect) in all_cases() {
        let mut a = setup(packed, in_order, indirect);
        let mut b = setup(packed, in_order, indirect);
        for p in [&mut a, &mut b] {
            add_mixed(p, 0..9);
            p.driver.publish();
            // Distinct bytes in each buffer, to check the translated slices.
            for i in 0..9u64 {
                let b0 = buf(i, 60);
                DeviceSlice::new(&*p.memory, b0.addr, 60)
                    .unwrap()
                    .write_at(0, &[i as u8; 60]);
            }
        }
        let (mut ca, mut cb) = (a.device.new_chain(), b.device.new_chain());
        let mut singles = 0;
        loop {
            let previous = cb.token();
            let got = a.device.pop_into(&mut ca).unwrap();
            let popped = b.device.pop_buffer(&mut cb).unwrap();
            match popped {
                Popped::Empty => {
                    assert!(!got);
                    break;
                }
                Popped::Chain => {
                    assert!(got);
                    assert!(ca.readable().len() + ca.writable().len() > 1);
                }
                Popped::Single(single) => {
                    assert!(got);
                    singles += 1;
                    let (buffer, writable, token) =
                        (single.buffer(), single.writable(), single.token());
                    assert_eq!(token, ca.token());
                    let seg = if writable {
                        assert!(ca.readable().is_empty());
                        ca.writable()[0]
                    } else {
                        assert!(ca.writable().is_empty());
                        ca.readable()[0]
                    };
                    assert_eq!(buffer.len(), seg.len() as usize);
                    let mut bytes = vec![0u8; buffer.len()];
                    buffer.read_at(0, &mut bytes);
                    // The bytes of the buffer the driver offered (`buf(i, _)` holds `i`).
                    let i = (seg.addr().raw() - DATA) / 0x100;
                    assert_eq!(bytes[..60], [i as u8; 60]);
                    // The chain is left alone until asked for.
                    assert_eq!(cb.token(), previous);
                    single.to_chain(&mut cb);
                }
                _ => panic!("unexpected {popped:?}"),
            }
            assert!(!got || !matches!(popped, Popped::Empty));
            assert_eq!(ca.token(), cb.token());
            assert_eq!(ca.readable(), cb.readable());
            assert_eq!(ca.writable(), cb.writable());
            assert_eq!(
                (ca.readable_len(), ca.writable_len()),
                (cb.readable_len(), cb.writable_len())
            );
        }
        // Readable and writable single buffers: 6 of the 9 chains (3 are three-buffer chains).
        assert_eq!(
            singles, 6,
            "packed {packed} in_order {in_order} indirect {indirect}"
        );
    }
}

/// The split driver skips stores that would not change a descriptor or an available entry (so that the device keeps
/// those lines cached); a descriptor or entry the device scribbled on in between must still be rewritten.
#[test]
fn split_driver_rewrites_descriptors_and_avail_entries_the_device_changed() {
    let mut p = setup(false, true, false);
    let poke = |p: &Pair, addr: u64, bytes: &[u8]| {
        DeviceSlice::new(&*p.memory, DeviceAddr::new(addr), bytes.len())
            .unwrap()
            .write_at(0, bytes);
    };
    let size = u32::from(SIZE);
    // Three laps of the ring with the same buffers: from the second lap on, every store is skippable.
    for t in 0..3 * size {
        let slot = u64::from(t % size);
        let lap = t / size;
        if lap == 2 && slot % 2 == 0 {
            // A hostile device overwrites the descriptor the driver is about to reuse, and its available entry.
            poke(&p, p.config.descriptors.raw() + 16 * slot, &[0xa5; 16]);
            poke(
                &p,
                p.config.driver_area.raw() + 4 + 2 * slot,
                &3u16.to_le_bytes(),
            );
        }
        // A length change on the third lap for odd slots: the descriptor's second half differs.
        let len = if lap == 2 && slot % 2 == 1 { 48 } else { 60 };
        let head = p.driver.add(&[buf(slot, len)], &[], t).unwrap();
        assert_eq!(
            u64::from(head),
            slot,
            "IN_ORDER hands out descriptors in ring order"
        );
        let mut chain = p.device.new_chain();
        let Popped::Single(single) = p.device.pop_buffer(&mut chain).unwrap() else {
            panic!("one descriptor, one buffer");
        };
        assert_eq!(single.token().id(), head, "lap {lap} slot {slot}");
        assert_eq!(
            single.buffer().as_ptr(),
            DeviceSlice::new(&*p.memory, buf(slot, len).addr, len as usize)
                .unwrap()
                .as_ptr(),
            "lap {lap} slot {slot}: the device sees the driver's address"
        );
        assert_eq!(single.buffer().len(), len as usize, "lap {lap} slot {slot}");
        assert!(!single.writable());
        let token = single.token();
        p.device.add_used(token, 0).unwrap();
        assert_eq!(p.driver.pop_used().unwrap().unwrap().token, t);
    }
}
