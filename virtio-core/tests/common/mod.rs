//! Setup shared by the virtio-core integration tests: one guest memory layout and a ring placed in it.
#![allow(dead_code)]

use std::sync::Arc;

use virtio_core::{DeviceAddr, HeapMemory, QueueConfig, RingFormat, RingLayout};

/// Where the guest memory starts; the rings are laid out from here.
pub(crate) const BASE: u64 = 0x10000;
/// How large the guest memory is.
pub(crate) const MEM: usize = 0x40000;
/// Where the tests' data buffers start, past the rings and any indirect tables.
pub(crate) const DATA: u64 = BASE + 0x20000;

/// `MEM` bytes of guest memory at `BASE` and the configuration of a `format` ring of `size` laid out from `BASE`.
pub(crate) fn ring_memory(format: RingFormat, size: u16) -> (Arc<HeapMemory>, QueueConfig) {
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(BASE), MEM).unwrap());
    let layout = RingLayout::new(format, size);
    let config = QueueConfig::with_layout(size, &layout, DeviceAddr::new(BASE)).unwrap();
    (memory, config)
}
