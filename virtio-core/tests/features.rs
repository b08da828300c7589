//! NOTIFICATION_DATA, per-queue reset (RING_RESET) and the vm-memory adapter.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs
)]

use virtio_core::mock::MockDriver;
use virtio_core::{DeviceAddr, DeviceQueue, Features, NotificationData, RingMemory, VmMemory};

fn drain(device: &mut DeviceQueue<std::sync::Arc<virtio_core::HeapMemory>>) -> usize {
    let mut n = 0;
    while let Some(chain) = device.pop().unwrap() {
        let token = chain.token();
        device.add_used(token, 0).unwrap();
        n += 1;
    }
    n
}

#[test]
fn notification_data_driver_value_matches_device_position() {
    for packed in [false, true] {
        let mut features = Features::VERSION_1 | Features::NOTIFICATION_DATA;
        features.set(Features::RING_PACKED, packed);
        let mut driver = MockDriver::with_slot_len(features, 8, 64).unwrap();
        let mut device =
            DeviceQueue::activate(&driver.queue_config(), features, driver.memory()).unwrap();
        for round in 0..40_000u32 {
            driver.add(&[b"abc"], &[]).unwrap();
            // The driver forms the 32-bit value; the device parses it.
            let value = driver.queue().notification_data(3).to_u32();
            let data = NotificationData::from_u32(value);
            assert_eq!(data.queue, 3);
            assert!(device.notification_announces_work(data), "round {round}");
            assert_eq!(drain(&mut device), 1);
            assert!(
                !device.notification_announces_work(data),
                "after draining, the device is where the driver was"
            );
            assert_eq!(device.next_avail(), (data.next_off, data.next_wrap));
            while driver.pop_used().unwrap().is_some() {}
        }
    }
}

#[test]
fn ring_reset_one_queue_others_keep_running() {
    for packed in [false, true] {
        let mut features = Features::VERSION_1 | Features::RING_RESET | Features::EVENT_IDX;
        features.set(Features::RING_PACKED, packed);
        let mut rx = MockDriver::with_slot_len(features, 16, 64).unwrap();
        let mut tx = MockDriver::with_slot_len(features, 16, 64).unwrap();
        let rx_dev = DeviceQueue::activate(&rx.queue_config(), features, rx.memory()).unwrap();
        let mut tx_dev = DeviceQueue::activate(&tx.queue_config(), features, tx.memory()).unwrap();
        for _ in 0..5 {
            rx.add(&[], &[32]).unwrap();
            tx.add(&[b"frame"], &[]).unwrap();
        }
        assert_eq!(drain(&mut tx_dev), 5);
        // Reset RX with five buffers in flight: the device side goes back to configuration, the driver reclaims.
        let (config, memory) = rx_dev.into_parts();
        let reclaimed = rx.reset();
        assert_eq!(reclaimed.len(), 5);
        assert_eq!(rx.queue().in_flight(), 0);
        // TX is unaffected.
        assert_eq!(std::iter::from_fn(|| tx.pop_used().unwrap()).count(), 5);
        tx.add(&[b"more"], &[]).unwrap();
        assert_eq!(drain(&mut tx_dev), 1);
        // RX is re-enabled and works from index 0.
        let mut rx_dev = DeviceQueue::activate(&config, features, memory).unwrap();
        let token = rx.add(&[], &[32]).unwrap();
        let chain = rx_dev.pop().unwrap().unwrap();
        assert_eq!(chain.writable_len(), 32);
        let t = chain.token();
        rx_dev.add_used(t, 7).unwrap();
        let used = rx.pop_used().unwrap().unwrap();
        assert_eq!((used.token, used.len), (token, 7));
    }
}

#[test]
fn vm_memory_adapter_refuses_ranges_across_regions() {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let gm = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1000),
        (GuestAddress(0x1000), 0x1000),
    ])
    .unwrap();
    let mem = VmMemory::new(gm.clone());
    assert!(mem.translate(DeviceAddr::new(0x10), 0x100).is_some());
    assert!(
        mem.translate(DeviceAddr::new(0xf00), 0x100).is_some(),
        "ends exactly at the region end"
    );
    assert!(
        mem.translate(DeviceAddr::new(0xf00), 0x101).is_none(),
        "a range may not span regions"
    );
    assert!(
        mem.translate(DeviceAddr::new(0x1f00), 0x200).is_none(),
        "past the end of memory"
    );
    assert!(mem.translate(DeviceAddr::new(u64::MAX), 2).is_none());
    assert!(mem.translate(DeviceAddr::new(0x10), 0).is_none());
}
