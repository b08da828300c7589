//! IOVA-as-PA DMA memory for devices that cannot negotiate `VIRTIO_F_ACCESS_PLATFORM` (legacy and transitional
//! devices driven through the legacy interface), as DPDK's `--iova-mode=pa` does.
//!
//! Such a device puts physical addresses in its rings: behind an IOMMU it is translated like any other device, and a
//! hypervisor's virtio device without the platform feature bypasses the IOMMU altogether and reads guest-physical
//! memory. Either way the addresses the driver writes must be the buffers' physical addresses, and mapping each buffer
//! in the IOMMU at IOVA = its physical address makes both cases work.
//!
//! [`VfioPaDma::new`] allocates anonymous memory aligned to 2 MiB and asks for transparent huge pages
//! (`MADV_HUGEPAGE`) so that it comes in physically contiguous 2 MiB runs, locks it (`mlock`), reads each page's frame
//! number from `/proc/self/pagemap`, groups the pages into physically contiguous [`PaChunk`]s and maps every chunk
//! with `VFIO_IOMMU_MAP_DMA` at IOVA = physical address (which pins it; the frame numbers are read again afterwards
//! and must not have changed). Rings and buffers must each lie inside one chunk: a driver carves them out of
//! [`VfioPaDma::chunks`].
//!
//! This needs what DPDK's PA mode needs: the frame numbers in `pagemap` are zero unless the process has
//! `CAP_SYS_ADMIN` ([`VfioError::NoPhysicalAddresses`]), and locking needs a large enough `RLIMIT_MEMLOCK`
//! ([`VfioError::Lock`]).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::vec::Vec;

use vfio_ioctls::VfioContainer;
use virtio_core::{DeviceAddr, RingMemory};

use super::{VfioError, DMA_PAGE_SIZE};

/// The huge-page size asked for (x86-64 PMD).
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// `/proc/self/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
const PAGEMAP_PFN_MASK: u64 = (1 << 55) - 1;

/// A physically contiguous piece of a [`VfioPaDma`], mapped in the IOMMU at IOVA = its physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaChunk {
    iova: u64,
    offset: usize,
    len: usize,
}

impl PaChunk {
    /// Device address (= IOVA = physical address) of the first byte.
    pub fn iova(&self) -> DeviceAddr {
        DeviceAddr::new(self.iova)
    }

    /// Length in bytes (a multiple of [`DMA_PAGE_SIZE`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Groups pages into physically contiguous runs. `frames[i]` is the page frame number of page `i` of a virtually
/// contiguous range. Returns `(first page, first frame, pages)` per run, in virtual order.
pub fn contiguous_runs(frames: &[u64]) -> Vec<(usize, u64, usize)> {
    let mut runs: Vec<(usize, u64, usize)> = Vec::new();
    for (i, &pfn) in frames.iter().enumerate() {
        match runs.last_mut() {
            Some((_, first, pages)) if first.checked_add(*pages as u64) == Some(pfn) => *pages += 1,
            _ => runs.push((i, pfn, 1)),
        }
    }
    runs
}

/// Decodes `/proc/self/pagemap` entries into frame numbers: every page must be present (not swapped) and show a
/// non-zero frame number.
pub fn decode_pagemap(entries: &[u64]) -> Result<Vec<u64>, VfioError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            if e & PAGEMAP_PRESENT == 0 || e & PAGEMAP_SWAPPED != 0 {
                return Err(VfioError::PageNotPresent { page: i });
            }
            match e & PAGEMAP_PFN_MASK {
                0 => Err(VfioError::NoPhysicalAddresses),
                pfn => Ok(pfn),
            }
        })
        .collect()
}

/// Reads the pagemap entries of `pages` pages starting at virtual address `va` (page-aligned).
fn read_pagemap(va: usize, pages: usize) -> Result<Vec<u64>, VfioError> {
    let io_err = |source| VfioError::Pagemap { source };
    let file = File::open("/proc/self/pagemap").map_err(io_err)?;
    let mut raw = std::vec![0u8; pages * 8];
    let offset = (va / DMA_PAGE_SIZE) as u64 * 8;
    file.read_exact_at(&mut raw, offset).map_err(io_err)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect())
}

/// DMA memory mapped at IOVA = physical address, in physically contiguous [`PaChunk`]s (see the module
/// documentation). Device addresses are physical addresses. Dropping it removes the IOMMU mappings, then unlocks and
/// unmaps the memory; if the IOMMU refuses to unmap, the memory is leaked rather than reused under a live mapping.
pub struct VfioPaDma {
    container: Arc<VfioContainer>,
    /// The whole anonymous mapping (with alignment slack) and its length, for `munmap`.
    mapping: NonNull<u8>,
    mapping_len: usize,
    /// The 2 MiB-aligned part in use.
    base: NonNull<u8>,
    len: usize,
    /// Sorted by IOVA; disjoint.
    chunks: Vec<PaChunk>,
}

// SAFETY: the memory is plain anonymous memory owned by this value; all accesses go through raw pointers and atomics
// (the `RingMemory` contract), so sharing or moving the value across threads is sound.
unsafe impl Send for VfioPaDma {}
// SAFETY: as above.
unsafe impl Sync for VfioPaDma {}

impl fmt::Debug for VfioPaDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioPaDma")
            .field("len", &self.len)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

impl VfioPaDma {
    /// Allocates `size` bytes (rounded up to [`HUGE_PAGE_SIZE`]), locks them and maps each physically contiguous
    /// run in `container` at IOVA = its physical address. The container must already hold a group (open a
    /// [`super::VfioAccess`] first).
    pub fn new(container: &Arc<VfioContainer>, size: usize) -> Result<Self, VfioError> {
        let bad = VfioError::BadDmaRange { iova: 0, size };
        let len = size
            .checked_next_multiple_of(HUGE_PAGE_SIZE)
            .filter(|&l| l != 0)
            .ok_or(VfioError::BadDmaRange { iova: 0, size })?;
        let mapping_len = len.checked_add(HUGE_PAGE_SIZE).ok_or(bad)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                mapping_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(VfioError::Lock {
                what: "mmap",
                source: io::Error::last_os_error(),
            });
        }
        let mapping =
            NonNull::new(raw.cast::<u8>()).ok_or(VfioError::BadDmaRange { iova: 0, size })?;
        let slack =
            (HUGE_PAGE_SIZE - (mapping.as_ptr() as usize) % HUGE_PAGE_SIZE) % HUGE_PAGE_SIZE;
        // SAFETY: `slack < HUGE_PAGE_SIZE` and `slack + len <= mapping_len`: inside the mapping.
        let base = unsafe { mapping.add(slack) };
        let mut this = Self {
            container: container.clone(),
            mapping,
            mapping_len,
            base,
            len,
            chunks: Vec::new(),
        };
        // SAFETY: `[base, base + len)` is inside the mapping this value owns. MADV_HUGEPAGE only changes how the
        // kernel backs it; a failure (THP disabled) just leaves small pages.
        let _ = unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        // SAFETY: as above; mlock faults every page in and keeps it resident.
        if unsafe { libc::mlock(base.as_ptr().cast(), len) } != 0 {
            return Err(VfioError::Lock {
                what: "mlock",
                source: io::Error::last_os_error(),
            });
        }
        let pages = len / DMA_PAGE_SIZE;
        let frames = decode_pagemap(&read_pagemap(base.as_ptr() as usize, pages)?)?;
        let mut chunks = Vec::new();
        for (first, pfn, n) in contiguous_runs(&frames) {
            let iova = pfn
                .checked_mul(DMA_PAGE_SIZE as u64)
                .ok_or(VfioError::BadDmaRange {
                    iova: u64::MAX,
                    size,
                })?;
            let chunk = PaChunk {
                iova,
                offset: first * DMA_PAGE_SIZE,
                len: n * DMA_PAGE_SIZE,
            };
            // SAFETY: `offset + len <= self.len`: inside the locked range.
            let host = unsafe { this.base.as_ptr().add(chunk.offset) };
            // SAFETY: `[host, host + len)` is locked memory this value owns and keeps mapped until `Drop`, which
            // removes the IOMMU mapping (recorded in `this.chunks` right after) before the memory is released. No
            // Rust reference to these bytes is ever created (the `RingMemory` contract).
            unsafe { this.container.vfio_dma_map(chunk.iova, chunk.len, host) }
                .map_err(VfioError::Vfio)?;
            this.chunks.push(chunk);
            chunks.push(chunk);
        }
        // The IOMMU mapping pinned the pages; the frames must be those it was mapped at.
        let again = decode_pagemap(&read_pagemap(base.as_ptr() as usize, pages)?)?;
        if again != frames {
            return Err(VfioError::PagesMoved);
        }
        this.chunks.sort_by_key(|c| c.iova);
        Ok(this)
    }

    /// The physically contiguous chunks, sorted by IOVA.
    pub fn chunks(&self) -> &[PaChunk] {
        &self.chunks
    }

    /// Bytes in all chunks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: a range is translated only if it lies inside one chunk, which is `len` bytes of locked memory at
// `base + offset` owned by `self` (not stored inline, so moving `self` keeps it valid) until `Drop`. Chunks start on
// page boundaries in both address spaces, so `ptr % 16 == addr % 16`.
unsafe impl RingMemory for VfioPaDma {
    #[inline]
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        let a = addr.raw();
        let i = self
            .chunks
            .partition_point(|c| c.iova <= a)
            .checked_sub(1)?;
        let c = self.chunks.get(i)?;
        let off = usize::try_from(a - c.iova).ok()?;
        if len == 0 || off.checked_add(len)? > c.len {
            return None;
        }
        // SAFETY: `c.offset + off + len <= c.offset + c.len <= self.len`: inside the locked range.
        Some(unsafe { self.base.add(c.offset + off) })
    }
}

impl Drop for VfioPaDma {
    fn drop(&mut self) {
        let mut all_unmapped = true;
        for c in &self.chunks {
            all_unmapped &= self.container.vfio_dma_unmap(c.iova, c.len).is_ok();
        }
        if all_unmapped {
            // SAFETY: no IOMMU mapping refers to the memory any more and nothing else uses it; the mapping is
            // released once (munmap also unlocks).
            unsafe { libc::munmap(self.mapping.as_ptr().cast(), self.mapping_len) };
        }
        // Otherwise the device may still reach the pages: leak them.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_runs_split_where_frames_jump() {
        assert_eq!(
            contiguous_runs(&[10, 11, 12, 40, 41, 7]),
            std::vec![(0, 10, 3), (3, 40, 2), (5, 7, 1)]
        );
        assert!(contiguous_runs(&[]).is_empty());
    }

    #[test]
    fn contiguous_runs_descending_frames_are_separate() {
        assert_eq!(
            contiguous_runs(&[5, 4, 3]),
            std::vec![(0, 5, 1), (1, 4, 1), (2, 3, 1)]
        );
    }

    #[test]
    fn decode_pagemap_zero_frame_means_no_privilege() {
        assert!(matches!(
            decode_pagemap(&[PAGEMAP_PRESENT]),
            Err(VfioError::NoPhysicalAddresses)
        ));
    }

    #[test]
    fn decode_pagemap_absent_or_swapped_page_is_an_error() {
        assert!(matches!(
            decode_pagemap(&[PAGEMAP_PRESENT | 5, 0]),
            Err(VfioError::PageNotPresent { page: 1 })
        ));
        assert!(matches!(
            decode_pagemap(&[PAGEMAP_PRESENT | PAGEMAP_SWAPPED | 5]),
            Err(VfioError::PageNotPresent { page: 0 })
        ));
        assert_eq!(
            decode_pagemap(&[PAGEMAP_PRESENT | (1 << 55) | 9]).expect("valid in this test"),
            std::vec![9]
        );
    }

    #[test]
    fn read_pagemap_of_locked_memory_is_present() {
        // Without CAP_SYS_ADMIN the frame numbers read as zero; the present bit is there either way.
        let buf = std::vec![1u8; 4 * DMA_PAGE_SIZE];
        let va = (buf.as_ptr() as usize).next_multiple_of(DMA_PAGE_SIZE);
        let entries = read_pagemap(va, 2).expect("pagemap is readable");
        assert!(entries.iter().all(|e| e & PAGEMAP_PRESENT != 0));
    }
}
