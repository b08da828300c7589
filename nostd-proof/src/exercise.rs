//! The exercise: a driver queue and a device queue of `virtio-core`, split then packed, over one static buffer
//! mapped identity-style (as a bare-metal guest maps its RAM), moving buffers both ways and checking every byte.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

use crate::mem::Bump;
use virtio_core::{
    Buffer, ContiguousMemory, DeviceAddr, DeviceQueue, DeviceSlice, DriverQueue, Features,
    QueueConfig, RingFormat, RingLayout,
};

const ARENA: usize = 256 * 1024;
const RING_MEMORY: usize = 64 * 1024;

#[global_allocator]
static ALLOCATOR: Bump<ARENA> = Bump::new();

#[repr(C, align(4096))]
struct RingArea(UnsafeCell<[u8; RING_MEMORY]>);

// SAFETY: only reached through `ContiguousMemory`, i.e. raw pointers and atomics.
unsafe impl Sync for RingArea {}

static RINGS: RingArea = RingArea(UnsafeCell::new([0; RING_MEMORY]));

/// Runs the exercise; `true` means success.
pub(crate) fn run() -> bool {
    let Some(ptr) = NonNull::new(RINGS.0.get().cast::<u8>()) else {
        return false;
    };
    // Device addresses equal host addresses, as for a guest with an identity map.
    let base = DeviceAddr::new(ptr.as_ptr() as u64);
    // SAFETY: the static lives forever, is 4096-aligned, and is only accessed through this value below.
    let memory = unsafe { ContiguousMemory::from_raw_parts(base, ptr, RING_MEMORY) };
    exchange(
        &memory,
        base,
        Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC,
    ) && exchange(
        &memory,
        base,
        Features::VERSION_1 | Features::RING_PACKED | Features::EVENT_IDX,
    )
}

fn exchange(memory: &ContiguousMemory, base: DeviceAddr, features: Features) -> bool {
    let format = if features.contains(Features::RING_PACKED) {
        RingFormat::Packed
    } else {
        RingFormat::Split
    };
    let size = 16;
    let layout = RingLayout::new(format, size);
    let Some(config) = QueueConfig::with_layout(size, &layout, base) else {
        return false;
    };
    let data = base.raw() + 16 * 1024;
    let Ok(mut driver) = DriverQueue::<_, u32>::new(&config, features, memory, None) else {
        return false;
    };
    let Ok(mut device) = DeviceQueue::activate(&config, features, memory) else {
        return false;
    };
    let mut chain = device.new_chain();
    for round in 0..1000u32 {
        let request = DeviceAddr::new(data + u64::from(round % 8) * 64);
        let reply = DeviceAddr::new(request.raw() + 32);
        let Some(slice) = DeviceSlice::new(memory, request, 4) else {
            return false;
        };
        slice.write_at(0, &round.to_le_bytes());
        if driver
            .add(&[Buffer::new(request, 4)], &[Buffer::new(reply, 4)], round)
            .is_err()
        {
            return false;
        }
        let _ = driver.kick_prepare();
        if !matches!(device.pop_into(&mut chain), Ok(true)) {
            return false;
        }
        let mut bytes = [0u8; 4];
        if !matches!(chain.reader(memory).read(&mut bytes), Ok(4)) {
            return false;
        }
        let answer = u32::from_le_bytes(bytes).wrapping_mul(3);
        let mut writer = chain.writer(memory);
        if writer.write(&answer.to_le_bytes()).is_err()
            || device.add_used(chain.token(), writer.written()).is_err()
        {
            return false;
        }
        let _ = device.needs_notification();
        let Ok(Some(used)) = driver.pop_used() else {
            return false;
        };
        let mut got = [0u8; 4];
        if let Some(slice) = DeviceSlice::new(memory, reply, 4) {
            slice.read_at(0, &mut got);
        }
        if used.token != round || used.len != 4 || u32::from_le_bytes(got) != round.wrapping_mul(3)
        {
            return false;
        }
    }
    true
}
