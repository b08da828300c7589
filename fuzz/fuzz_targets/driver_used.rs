//! Driver-side used processing against a device that writes arbitrary bytes into the used ring (split) or the
//! descriptor ring (packed): every error is a typed peer fault, the driver's bookkeeping stays consistent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtio_core::mock::MockDriver;
use virtio_core::{DeviceAddr, Features};

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let packed = mode & 1 != 0;
    let mut features = Features::VERSION_1;
    features.set(Features::RING_PACKED, packed);
    features.set(Features::EVENT_IDX, mode & 2 != 0);
    features.set(Features::IN_ORDER, mode & 4 != 0);
    features.set(Features::INDIRECT_DESC, mode & 8 != 0);
    let size = if packed {
        u16::from(mode >> 4) + 1
    } else {
        1 << (mode >> 5)
    };
    let Ok(mut driver) = MockDriver::with_slot_len(features, size, 64) else {
        return;
    };
    let config = driver.queue_config();
    let target = if packed {
        config.descriptors
    } else {
        config.device_area
    };
    let mut chunks = rest.chunks(24);
    for step in 0..64u32 {
        // The driver keeps adding; the "device" scribbles over its area.
        let _ = driver.add(&[b"req"], &[1 + step % 40]);
        let Some(chunk) = chunks.next() else { break };
        let [at_lo, at_hi, bytes @ ..] = chunk else {
            break;
        };
        let offset = u64::from(u16::from_le_bytes([*at_lo, *at_hi])) % (16 * u64::from(size) + 8);
        let _ = driver.poke(DeviceAddr::new(target.raw() + offset), bytes);
        loop {
            match driver.pop_used() {
                Ok(Some(used)) => assert!(used.len <= 40 && used.data.len() == used.len as usize),
                Ok(None) => break,
                Err(e) => {
                    assert!(e.is_peer_fault(), "{e:?}");
                    let in_flight = driver.queue().in_flight();
                    assert_eq!(driver.reset().len(), usize::from(in_flight));
                    break;
                }
            }
        }
        assert!(driver.queue().in_flight() <= size);
    }
});
