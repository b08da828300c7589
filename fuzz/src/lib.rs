//! Shared harness for the fuzz targets: the device side of a ring over memory the fuzzer fills.

use virtio_core::{
    DeviceAddr, DeviceQueue, DeviceSlice, Features, HeapMemory, Popped, QueueConfig, RingFormat,
    RingLayout,
};

/// Device address of the fuzzed memory.
pub const BASE: u64 = 0x1000;
/// Size of the fuzzed memory.
pub const LEN: usize = 0x4000;

/// Fills memory with the fuzzer's bytes, activates a device queue on it and pops until empty or broken, touching
/// every byte of every chain and returning each one as used.
pub fn device_pop(format: RingFormat, data: &[u8]) {
    let [size_byte, feature_byte, rest @ ..] = data else {
        return;
    };
    let size = match format {
        RingFormat::Split => 1u16 << (size_byte % 8),
        RingFormat::Packed => u16::from(*size_byte % 64) + 1,
    };
    let mut features = Features::VERSION_1;
    features.set(Features::RING_PACKED, format == RingFormat::Packed);
    features.set(Features::INDIRECT_DESC, feature_byte & 1 != 0);
    features.set(Features::EVENT_IDX, feature_byte & 2 != 0);
    features.set(Features::IN_ORDER, feature_byte & 4 != 0);
    let Some(memory) = HeapMemory::new(DeviceAddr::new(BASE), LEN) else {
        return;
    };
    if let Some(all) = DeviceSlice::new(&memory, DeviceAddr::new(BASE), LEN) {
        all.write_at(0, rest);
    }
    let layout = RingLayout::new(format, size);
    let Some(config) = QueueConfig::with_layout(size, &layout, DeviceAddr::new(BASE)) else {
        return;
    };
    let Ok(mut queue) = DeviceQueue::activate(&config, features, &memory) else {
        return;
    };
    let mut chain = queue.new_chain();
    let mut scratch = [0u8; 256];
    // Bit 3 picks `pop_buffer` (the one-descriptor fast path) over `pop_into`: both must hold the same line.
    let fast_path = feature_byte & 8 != 0;
    for round in 0..(2 * usize::from(size) + 4) {
        let popped = if fast_path {
            match queue.pop_buffer(&mut chain) {
                Ok(Popped::Single(single)) => {
                    let buffer = single.buffer();
                    let n = buffer.len().min(scratch.len());
                    let written = if single.writable() {
                        buffer.write_at(0, scratch.get(..n).unwrap_or(&[]));
                        u32::try_from(n).unwrap_or(0)
                    } else {
                        buffer.read_at(0, scratch.get_mut(..n).unwrap_or(&mut []));
                        0
                    };
                    let token = single.token();
                    let _ = queue.add_used(token, written);
                    let _ = queue.needs_notification();
                    continue;
                }
                Ok(Popped::Chain) => Ok(true),
                // `Popped` is non-exhaustive; a future variant is treated as nothing popped.
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            }
        } else {
            queue.pop_into(&mut chain)
        };
        match popped {
            Ok(true) => {
                let mut reader = chain.reader(&memory);
                while reader.read(&mut scratch).map(|n| n != 0).unwrap_or(false) {}
                let mut writer = chain.writer(&memory);
                while writer.write(&scratch).map(|n| n != 0).unwrap_or(false) {}
                let written = writer.written();
                assert!(written <= chain.writable_len());
                let _ = queue.add_used(chain.token(), written);
                let _ = queue.needs_notification();
            }
            Ok(false) => {
                if round % 2 == 0 || queue.enable_notification().is_err() {
                    break;
                }
            }
            Err(e) => {
                assert!(
                    e.is_peer_fault(),
                    "a device-side pop error is always the driver's fault: {e:?}"
                );
                assert!(queue.is_broken());
                break;
            }
        }
    }
}
