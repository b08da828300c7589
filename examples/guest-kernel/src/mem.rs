//! The heap and the DMA area. The freestanding runtime (`memcpy` and friends, the bump allocator) is
//! `nostd-proof/src/mem.rs`, shared through `#[path]` as `crate::freestanding`.

use crate::freestanding::Bump;
use core::cell::UnsafeCell;

/// Bytes of the heap: the driver allocates its bookkeeping (queue shadows, free lists) once, at setup.
const HEAP_BYTES: usize = 1024 * 1024;

/// Bytes of device-visible memory for rings and packet buffers.
pub(crate) const DMA_BYTES: usize = 24 * 1024 * 1024;

#[global_allocator]
static ALLOCATOR: Bump<HEAP_BYTES> = Bump::new();

/// Device-visible memory: physical address = virtual address (identity map), so its address is what the device is
/// given. Page-aligned for legacy queue layouts.
#[repr(C, align(4096))]
struct DmaArea(UnsafeCell<[u8; DMA_BYTES]>);

// SAFETY: only reached through raw pointers (the driver's `OffsetMemory`), never through references.
unsafe impl Sync for DmaArea {}

static DMA: DmaArea = DmaArea(UnsafeCell::new([0; DMA_BYTES]));

/// Physical (= virtual) address of the DMA area.
pub(crate) fn dma_base() -> u64 {
    DMA.0.get() as u64
}
