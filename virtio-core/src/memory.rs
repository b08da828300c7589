//! Memory the rings and buffers live in.
//!
//! Addresses inside rings are *device addresses*: guest-physical for a VMM, IOVA for a VFIO driver, physical for a
//! bare-metal guest. [`RingMemory`] translates a device-address range into a host pointer. Ring areas are translated
//! once, at activation, into ring regions; payload ranges are translated per descriptor.
//!
//! This is one of the few modules allowed to use `unsafe`: every access to shared memory goes through it.

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

/// An address as the device sees it (guest-physical, IOVA or physical, depending on who runs the ring).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAddr(u64);

impl DeviceAddr {
    /// Wraps a raw device address.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    pub const fn checked_add(self, offset: u64) -> Option<Self> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

impl fmt::LowerHex for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Translates device addresses into host pointers.
///
/// # Safety
///
/// Implementors guarantee that when [`translate`](RingMemory::translate) returns `Some(ptr)` for `(addr, len)`:
/// - `[ptr, ptr + len)` is one allocation, valid for reads and writes (including atomic accesses of naturally aligned
///   2-, 4- and 8-byte words) for as long as `self` is alive, **including after `self` is moved** (the memory is not
///   stored inline in `self`), and as long as no `&mut` borrow of `self` is used;
/// - `ptr` has the same alignment as `addr` modulo 16 (the rings check alignment on device addresses);
/// - the memory may be changed concurrently by the peer; no Rust reference to it exists that would make such a change
///   undefined behaviour (the SDK only touches it through raw pointers and atomics).
///
/// Callers (the rings) only rely on these guarantees and never dereference a pointer outside the range it was
/// returned for.
pub unsafe trait RingMemory {
    /// Host pointer for the device-address range `[addr, addr + len)`, or `None` if any byte of it is not backed by
    /// this memory (or the range overflows). `len == 0` may return `None`.
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>>;
}

// SAFETY: forwards to `T`, whose guarantees hold for as long as the reference (and so `T`) lives.
unsafe impl<T: RingMemory + ?Sized> RingMemory for &T {
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        (**self).translate(addr, len)
    }
}

#[cfg(feature = "alloc")]
// SAFETY: forwards to `T`, kept alive by the `Arc`.
unsafe impl<T: RingMemory + ?Sized> RingMemory for alloc::sync::Arc<T> {
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        (**self).translate(addr, len)
    }
}

#[cfg(feature = "alloc")]
// SAFETY: forwards to `T`, owned by the `Box`.
unsafe impl<T: RingMemory + ?Sized> RingMemory for alloc::boxed::Box<T> {
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        (**self).translate(addr, len)
    }
}

/// Offset of `[addr, addr + len)` inside a window `[base, base + size)`, if it lies entirely inside.
fn window_offset(base: DeviceAddr, size: usize, addr: DeviceAddr, len: usize) -> Option<usize> {
    let offset = usize::try_from(addr.raw().checked_sub(base.raw())?).ok()?;
    let end = offset.checked_add(len)?;
    (len != 0 && end <= size).then_some(offset)
}

/// One contiguous host mapping seen by the device at `base` (a VFIO DMA region, a test buffer).
#[derive(Debug)]
pub struct ContiguousMemory {
    base: DeviceAddr,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; all accesses go through raw pointers and atomics.
unsafe impl Send for ContiguousMemory {}
// SAFETY: as above; concurrent access from several threads is what the rings are built for.
unsafe impl Sync for ContiguousMemory {}

impl ContiguousMemory {
    /// Describes `len` bytes at `ptr`, seen by the device at `base`.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must stay valid for reads and writes for the lifetime of the returned value, `ptr` must be
    /// aligned to at least 16 bytes relative to `base` (`ptr % 16 == base % 16`), and no Rust reference to the bytes
    /// may be used while rings access them.
    pub unsafe fn from_raw_parts(base: DeviceAddr, ptr: NonNull<u8>, len: usize) -> Self {
        Self { base, ptr, len }
    }

    /// Device address of the first byte.
    pub fn base(&self) -> DeviceAddr {
        self.base
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: the range is checked against the window given to `from_raw_parts`, whose caller promised validity.
unsafe impl RingMemory for ContiguousMemory {
    #[inline]
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        let offset = window_offset(self.base, self.len, addr, len)?;
        // SAFETY: `offset + len <= self.len`, so the result stays inside the mapping.
        Some(unsafe { self.ptr.add(offset) })
    }
}

/// A page-aligned, zeroed heap buffer seen by the device at `base`: ring memory for tests, examples and benchmarks.
#[cfg(feature = "alloc")]
pub struct HeapMemory {
    region: ContiguousMemory,
    layout: core::alloc::Layout,
}

#[cfg(feature = "alloc")]
impl fmt::Debug for HeapMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapMemory")
            .field("base", &self.region.base)
            .field("len", &self.region.len)
            .finish()
    }
}

#[cfg(feature = "alloc")]
impl HeapMemory {
    /// Allocates `len` zeroed bytes (rounded up to a page), seen by the device at `base` (which must be 16-aligned).
    ///
    /// Returns `None` if `len` is zero, `base` is misaligned or the allocation fails.
    pub fn new(base: DeviceAddr, len: usize) -> Option<Self> {
        if len == 0 || !base.is_aligned(16) {
            return None;
        }
        let layout = core::alloc::Layout::from_size_align(len, 4096)
            .ok()?
            .pad_to_align();
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        // SAFETY: the allocation is owned by `Self` and freed only in `Drop`; it is page aligned and `base` is
        // 16-aligned, so the offsets agree modulo 16; nothing creates references to the bytes.
        let region = unsafe { ContiguousMemory::from_raw_parts(base, ptr, layout.size()) };
        Some(Self { region, layout })
    }

    /// Device address of the first byte.
    pub fn base(&self) -> DeviceAddr {
        self.region.base
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len
    }

    /// Whether the region is empty (never: construction refuses zero).
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }
}

#[cfg(feature = "alloc")]
impl Drop for HeapMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::alloc::dealloc(self.region.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(feature = "alloc")]
// SAFETY: delegates to the owned `ContiguousMemory`, alive as long as `self`.
unsafe impl RingMemory for HeapMemory {
    #[inline]
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        self.region.translate(addr, len)
    }
}

/// Memory where host address = device address + a fixed offset, inside a window: a bare-metal guest's identity (or
/// linearly offset) map.
#[derive(Debug, Clone, Copy)]
pub struct OffsetMemory {
    start: DeviceAddr,
    size: usize,
    host_minus_device: usize,
}

impl OffsetMemory {
    /// Device addresses `[start, start + size)` are at host addresses `device + host_minus_device` (wrapping).
    ///
    /// # Safety
    ///
    /// Every byte of the window must be mapped, valid for reads and writes for the lifetime of the value, and accessed
    /// by Rust code only through raw pointers while rings use it. `host_minus_device` must be a multiple of 16.
    pub unsafe fn new(start: DeviceAddr, size: usize, host_minus_device: usize) -> Self {
        Self {
            start,
            size,
            host_minus_device,
        }
    }

    /// An identity map of `[start, start + size)`.
    ///
    /// # Safety
    ///
    /// As for [`OffsetMemory::new`].
    pub unsafe fn identity(start: DeviceAddr, size: usize) -> Self {
        Self {
            start,
            size,
            host_minus_device: 0,
        }
    }
}

// SAFETY: the range is checked against the window whose validity the constructor's caller promised.
unsafe impl RingMemory for OffsetMemory {
    #[inline]
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        window_offset(self.start, self.size, addr, len)?;
        let device = usize::try_from(addr.raw()).ok()?;
        NonNull::new(device.wrapping_add(self.host_minus_device) as *mut u8)
    }
}

/// Adapter for rust-vmm `vm-memory` guest memory (feature `vm-memory`).
///
/// The region table (guest range → host address) is read once at construction, so translation is a scan of a few
/// plain entries rather than trait calls per buffer. A range must lie inside one region. Dirty-page tracking of the
/// guest memory's bitmap is not updated by writes made through the rings. Memory hot-plug builds a new guest memory
/// object in vm-memory; wrap the new one.
#[cfg(feature = "vm-memory")]
#[derive(Debug, Clone)]
pub struct VmMemory<M> {
    memory: M,
    regions: alloc::vec::Vec<HostRegion>,
}

#[cfg(feature = "vm-memory")]
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    len: u64,
    host: NonNull<u8>,
}

#[cfg(feature = "vm-memory")]
// SAFETY: the host pointers point into mappings owned by `memory` (shared, immutable for its lifetime); they are
// only used through `translate`, under `RingMemory`'s rules.
unsafe impl<M: Send> Send for VmMemory<M> {}
#[cfg(feature = "vm-memory")]
// SAFETY: as above; translation only reads the table.
unsafe impl<M: Sync> Sync for VmMemory<M> {}

#[cfg(feature = "vm-memory")]
impl<M: vm_memory::GuestMemoryBackend> VmMemory<M> {
    /// Wraps `memory`, recording the host address of each region that has one (regions without a host mapping are
    /// left out, so ranges in them do not translate).
    pub fn new(memory: M) -> Self {
        use vm_memory::{GuestMemoryRegion, MemoryRegionAddress};
        let regions = memory
            .iter()
            .filter_map(|region| {
                let host = NonNull::new(region.get_host_address(MemoryRegionAddress(0)).ok()?)?;
                Some(HostRegion {
                    start: region.start_addr().0,
                    len: region.len(),
                    host,
                })
            })
            .collect();
        Self { memory, regions }
    }

    /// The wrapped guest memory.
    pub fn inner(&self) -> &M {
        &self.memory
    }
}

#[cfg(feature = "vm-memory")]
// SAFETY: each table entry is the host mapping of a whole region of `self.memory`, which `self` owns (or borrows for
// its lifetime); the range is checked to lie inside one region. Regions of `GuestMemoryMmap` are mmap'ed page-aligned
// and do not move when `self` moves, so host and guest addresses agree modulo 16.
unsafe impl<M: vm_memory::GuestMemoryBackend> RingMemory for VmMemory<M> {
    #[inline]
    fn translate(&self, addr: DeviceAddr, len: usize) -> Option<NonNull<u8>> {
        let len = u64::try_from(len).ok().filter(|l| *l != 0)?;
        let addr = addr.raw();
        let region = self
            .regions
            .iter()
            .find(|r| addr.wrapping_sub(r.start) < r.len)?;
        let offset = addr - region.start;
        if len > region.len - offset {
            return None;
        }
        // SAFETY: `offset + len <= region.len`, inside the region's mapping.
        Some(unsafe { region.host.add(usize::try_from(offset).ok()?) })
    }
}

/// The panic of [`RingRegion::word`] (an assertion on this crate's own offsets), out of line so that the hot path
/// does not prepare its message.
#[allow(clippy::panic)] // the assertion `word` always made: a violation is a bug in this crate
#[cold]
#[inline(never)]
#[track_caller]
fn ring_access_out_of_bounds(offset: usize, size: usize, len: usize) -> ! {
    panic!("ring access out of bounds: offset {offset} size {size} len {len}")
}

/// A translated, bounds-checked ring area (descriptor table, driver area or device area).
///
/// Accesses are atomic so that concurrent changes by the peer are not undefined behaviour; offsets are computed by
/// the ring code from indices it has already reduced modulo the queue size, and are checked here anyway.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "alloc"), allow(dead_code))] // the rings need `alloc`
pub(crate) struct RingRegion {
    ptr: NonNull<u8>,
    len: usize,
}

impl fmt::Debug for RingRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: a RingRegion only hands out atomic accesses to shared memory.
unsafe impl Send for RingRegion {}
// SAFETY: as above.
unsafe impl Sync for RingRegion {}

macro_rules! atomic_accessors {
    ($load:ident, $store:ident, $ty:ty, $atomic:ty) => {
        #[inline(always)]
        #[allow(dead_code)] // Not every width is loaded by itself (descriptors go through `load_descriptor`).
        pub(crate) fn $load(&self, offset: usize, order: Ordering) -> $ty {
            let ptr = self.word::<$ty>(offset);
            // SAFETY: `word` checked bounds and alignment; the memory is valid per `RingMemory`'s contract, and the
            // peer only accesses it concurrently, which atomics permit.
            <$ty>::from_le(unsafe { <$atomic>::from_ptr(ptr) }.load(order))
        }

        #[inline(always)]
        pub(crate) fn $store(&self, offset: usize, value: $ty, order: Ordering) {
            let ptr = self.word::<$ty>(offset);
            // SAFETY: as for the load.
            unsafe { <$atomic>::from_ptr(ptr) }.store(value.to_le(), order)
        }
    };
}

#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
impl RingRegion {
    /// Translates `[addr, addr + len)` and checks `align` on both the device and the host address.
    ///
    /// The region holds no borrow: whoever keeps it must keep `memory` alive (and un-mutated) as long as the region
    /// is used. The queues do so by owning their memory next to their regions.
    pub(crate) fn new<M: RingMemory + ?Sized>(
        memory: &M,
        addr: DeviceAddr,
        len: usize,
        align: usize,
    ) -> Option<Self> {
        if !addr.is_aligned(align as u64) {
            return None;
        }
        let ptr = memory.translate(addr, len)?;
        if (ptr.as_ptr() as usize) % align != 0 {
            return None;
        }
        Some(Self { ptr, len })
    }

    #[inline(always)]
    fn word<T>(&self, offset: usize) -> *mut T {
        let size = core::mem::size_of::<T>();
        let align = core::mem::align_of::<T>();
        // The ring code computes offsets from indices reduced modulo the queue size, so this holds by construction;
        // a violation is a bug in this crate, and stopping is the only memory-safe answer.
        if !(offset % align == 0 && offset.checked_add(size).is_some_and(|end| end <= self.len)) {
            ring_access_out_of_bounds(offset, size, self.len);
        }
        // SAFETY: `offset + size <= len`, so the pointer stays inside the translated range.
        unsafe { self.ptr.as_ptr().add(offset) }.cast()
    }

    atomic_accessors!(load_u16, store_u16, u16, AtomicU16);
    atomic_accessors!(load_u32, store_u32, u32, AtomicU32);
    atomic_accessors!(load_u64, store_u64, u64, AtomicU64);

    /// Reads the 16-byte descriptor at `offset` (both ring formats: a u64, a u32, two u16), each field once and
    /// relaxed, behind a single bounds check.
    #[inline(always)]
    pub(crate) fn load_descriptor(&self, offset: usize) -> (u64, u32, u16, u16) {
        let base = self.word::<[u64; 2]>(offset).cast::<u8>();
        // `word` checked that the 16 bytes at `offset` are inside the region and 8-aligned, so each field pointer
        // below is in bounds and naturally aligned; see `word` for the concurrency argument.
        let (len_ptr, third_ptr, fourth_ptr) = (
            base.wrapping_add(8),
            base.wrapping_add(12),
            base.wrapping_add(14),
        );
        // SAFETY: bytes 0..8 of the checked descriptor, 8-aligned.
        let addr = unsafe { AtomicU64::from_ptr(base.cast()) };
        // SAFETY: bytes 8..12 of the checked descriptor, 4-aligned.
        let len = unsafe { AtomicU32::from_ptr(len_ptr.cast()) };
        // SAFETY: bytes 12..14 of the checked descriptor, 2-aligned.
        let third = unsafe { AtomicU16::from_ptr(third_ptr.cast()) };
        // SAFETY: bytes 14..16 of the checked descriptor, 2-aligned.
        let fourth = unsafe { AtomicU16::from_ptr(fourth_ptr.cast()) };
        (
            u64::from_le(addr.load(Ordering::Relaxed)),
            u32::from_le(len.load(Ordering::Relaxed)),
            u16::from_le(third.load(Ordering::Relaxed)),
            u16::from_le(fourth.load(Ordering::Relaxed)),
        )
    }

    /// Writes the 16-byte descriptor at `offset` (split: addr, len, flags, next; packed: addr, len, id, flags)
    /// relaxed, behind a single bounds check (the mirror of [`load_descriptor`](Self::load_descriptor)). Bytes 8..16
    /// go in one 8-byte store; a peer reads them only after the publishing release store that follows.
    #[inline(always)]
    pub(crate) fn store_descriptor(
        &self,
        offset: usize,
        addr: u64,
        len: u32,
        third: u16,
        fourth: u16,
    ) {
        let (low, high) = self.descriptor_words(offset);
        low.store(addr.to_le(), Ordering::Relaxed);
        high.store(descriptor_high(len, third, fourth), Ordering::Relaxed);
    }

    /// As [`store_descriptor`](Self::store_descriptor), but leaves the descriptor alone when it already holds these
    /// values: a store to a line the peer has cached takes it away from the peer, which must then miss on it, so a
    /// driver that reuses descriptors for same-sized buffers (IN_ORDER TX with fixed slots) keeps them shared.
    #[inline(always)]
    pub(crate) fn store_descriptor_if_changed(
        &self,
        offset: usize,
        addr: u64,
        len: u32,
        third: u16,
        fourth: u16,
    ) {
        let (low, high) = self.descriptor_words(offset);
        let (addr, rest) = (addr.to_le(), descriptor_high(len, third, fourth));
        if low.load(Ordering::Relaxed) != addr {
            low.store(addr, Ordering::Relaxed);
        }
        if high.load(Ordering::Relaxed) != rest {
            high.store(rest, Ordering::Relaxed);
        }
    }

    /// Bytes 0..8 and 8..16 of the 16-byte descriptor at `offset`, behind one bounds check.
    #[inline(always)]
    fn descriptor_words(&self, offset: usize) -> (&AtomicU64, &AtomicU64) {
        let base = self.word::<[u64; 2]>(offset).cast::<u64>();
        let high_ptr = base.wrapping_add(1);
        // SAFETY: `word` checked that the 16 bytes at `offset` are inside the region and 8-aligned: bytes 0..8,
        // valid as long as the region (`&self`) is.
        let low = unsafe { AtomicU64::from_ptr(base) };
        // SAFETY: bytes 8..16 of the same checked range, 8-aligned.
        let high = unsafe { AtomicU64::from_ptr(high_ptr) };
        (low, high)
    }

    /// Writes the first 14 bytes of the 16-byte descriptor at `offset` (addr, len, and the u16 at byte 12) relaxed,
    /// behind a single bounds check; the u16 at byte 14 (packed flags) is left for the caller to publish.
    #[inline(always)]
    pub(crate) fn store_descriptor_body(&self, offset: usize, addr: u64, len: u32, third: u16) {
        let base = self.word::<[u64; 2]>(offset).cast::<u8>();
        let (len_ptr, third_ptr) = (base.wrapping_add(8), base.wrapping_add(12));
        // SAFETY: bytes 0..8 of the checked descriptor, 8-aligned.
        let a = unsafe { AtomicU64::from_ptr(base.cast()) };
        // SAFETY: bytes 8..12 of the checked descriptor, 4-aligned.
        let l = unsafe { AtomicU32::from_ptr(len_ptr.cast()) };
        // SAFETY: bytes 12..14 of the checked descriptor, 2-aligned.
        let t = unsafe { AtomicU16::from_ptr(third_ptr.cast()) };
        a.store(addr.to_le(), Ordering::Relaxed);
        l.store(len.to_le(), Ordering::Relaxed);
        t.store(third.to_le(), Ordering::Relaxed);
    }

    /// Writes two consecutive u32 (a split used element: id, len) relaxed, behind a single bounds check.
    #[inline(always)]
    pub(crate) fn store_u32_pair(&self, offset: usize, first: u32, second: u32) {
        let base = self.word::<[u32; 2]>(offset).cast::<u32>();
        let second_ptr = base.wrapping_add(1);
        // SAFETY: `word` checked the 8 bytes at `offset` (4-aligned, as `[u32; 2]` is): the first word.
        let low = unsafe { AtomicU32::from_ptr(base) };
        // SAFETY: the second word of the same checked range.
        let high = unsafe { AtomicU32::from_ptr(second_ptr) };
        low.store(first.to_le(), Ordering::Relaxed);
        high.store(second.to_le(), Ordering::Relaxed);
    }

    /// Zeroes the whole region (used when a driver (re)initialises a ring).
    pub(crate) fn zero(&self) {
        for offset in (0..self.len / 2).map(|i| i * 2) {
            self.store_u16(offset, 0, Ordering::Relaxed);
        }
    }
}

/// Bytes 8..16 of a descriptor (len, then the two u16 fields) as one little-endian word.
#[inline(always)]
fn descriptor_high(len: u32, third: u16, fourth: u16) -> u64 {
    (u64::from(len) | u64::from(third) << 32 | u64::from(fourth) << 48).to_le()
}

/// Copies `count` bytes from `src` to `dst`. Up to 128 bytes (headers and small frames, the hot case) with two
/// unaligned, possibly overlapping, block moves instead of a `memcpy` call; every source word is read before any
/// destination word is written, so those tolerate overlap. Longer ranges go to `ptr::copy` (`MAY_OVERLAP`) or
/// `ptr::copy_nonoverlapping`.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `count` bytes; without `MAY_OVERLAP` the ranges must not
/// overlap.
#[inline(always)]
unsafe fn copy_bytes<const MAY_OVERLAP: bool>(src: *const u8, dst: *mut u8, count: usize) {
    macro_rules! ends {
        ($t:ty) => {{
            let n = core::mem::size_of::<$t>();
            // SAFETY: `n <= count` (the branch below), so the first and the last `n` bytes lie inside the caller's
            // `count`-byte ranges; this and every access below stays in them.
            let tail_src = unsafe { src.add(count - n) };
            // SAFETY: as above.
            let tail_dst = unsafe { dst.add(count - n) };
            if MAY_OVERLAP {
                // Both words are read before either is written, so overlapping ranges copy like `memmove`.
                // SAFETY: as above.
                let head = unsafe { src.cast::<$t>().read_unaligned() };
                // SAFETY: as above.
                let tail = unsafe { tail_src.cast::<$t>().read_unaligned() };
                // SAFETY: as above.
                unsafe { dst.cast::<$t>().write_unaligned(head) };
                // SAFETY: as above.
                unsafe { tail_dst.cast::<$t>().write_unaligned(tail) };
            } else {
                // SAFETY: as above; the ranges do not overlap, so the order of the moves does not matter.
                let head = unsafe { src.cast::<$t>().read_unaligned() };
                // SAFETY: as above.
                unsafe { dst.cast::<$t>().write_unaligned(head) };
                // SAFETY: as above.
                let tail = unsafe { tail_src.cast::<$t>().read_unaligned() };
                // SAFETY: as above.
                unsafe { tail_dst.cast::<$t>().write_unaligned(tail) };
            }
        }};
    }
    // A decision tree rather than a chain of compares: two or three branches for any length.
    if count >= 16 {
        if count > 128 {
            if MAY_OVERLAP {
                // SAFETY: the caller's ranges, valid for `count` bytes.
                unsafe { core::ptr::copy(src, dst, count) }
            } else {
                // SAFETY: as above, and the caller promised they do not overlap.
                unsafe { core::ptr::copy_nonoverlapping(src, dst, count) }
            }
            return;
        }
        if count > 64 {
            ends!([u128; 4]);
        } else if count >= 32 {
            ends!([u128; 2]);
        } else {
            ends!(u128);
        }
    } else if count >= 4 {
        if count >= 8 {
            ends!(u64);
        } else {
            ends!(u32);
        }
    } else if count >= 2 {
        ends!(u16);
    } else if count == 1 {
        // SAFETY: the one byte of the source range.
        let byte = unsafe { src.read() };
        // SAFETY: the one byte of the destination range.
        unsafe { dst.write(byte) }
    }
}

/// Bytes from a buffer's start that [`DeviceSlice::prefetch`] (and the device queues' look-ahead) bring into the
/// cache: a 64-byte frame with its virtio-net header spans two lines; longer copies stream and the hardware
/// prefetcher follows them.
pub const PREFETCH_SPAN: usize = 128;

/// Issues a prefetch for reading for each 64-byte line of `[ptr, ptr + len)`.
#[inline(always)]
pub(crate) fn prefetch_lines(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for_each_line(ptr, len, |line| {
        // SAFETY: PREFETCHT0 (SSE, part of the x86-64 baseline) is a hint: it never faults, whatever the address,
        // and changes no memory; the address is not dereferenced.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line.cast());
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

/// Issues a prefetch for writing (PREFETCHW: the line arrives owned, so the stores that follow need no second
/// trip to the core that read it last) for each 64-byte line of `[ptr, ptr + len)`; nothing on CPUs without it.
#[inline(always)]
pub(crate) fn prefetch_lines_for_write(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        for_each_line(ptr, len, |line| {
            // SAFETY: PREFETCHW (checked present above) is a hint like PREFETCHT0: it never faults, whatever the
            // address, and changes no memory; the address is not dereferenced.
            unsafe {
                core::arch::asm!(
                    "prefetchw [{line}]",
                    line = in(reg) line,
                    options(nostack, preserves_flags, readonly)
                );
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn for_each_line(ptr: *const u8, len: usize, mut f: impl FnMut(*const u8)) {
    if len == 0 {
        return;
    }
    let last = ptr.wrapping_add(len - 1) as usize & !63;
    let mut line = ptr.wrapping_sub(ptr as usize & 63);
    loop {
        f(line);
        if line as usize >= last {
            break;
        }
        line = line.wrapping_add(64);
    }
}

/// Whether the CPU has PREFETCHW (CPUID 0x8000_0001 ECX bit 8); asked once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_prefetchw() -> bool {
    use core::sync::atomic::AtomicU8;
    /// 0: not asked yet, 1: absent, 2: present.
    static PREFETCHW: AtomicU8 = AtomicU8::new(0);
    match PREFETCHW.load(Ordering::Relaxed) {
        0 => {
            use core::arch::x86_64::__cpuid;
            let present =
                __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
            PREFETCHW.store(if present { 2 } else { 1 }, Ordering::Relaxed);
            present
        }
        known => known == 2,
    }
}

/// A bounds-checked view of payload memory (`[addr, addr + len)` of some [`RingMemory`]), borrowed from it.
///
/// The peer may change the bytes at any time; reads copy them out, writes copy them in. Any bit pattern is a valid
/// byte, so a concurrent change yields stale or torn data, never undefined behaviour in this process's logic.
#[derive(Clone, Copy)]
pub struct DeviceSlice<'m> {
    ptr: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'m ()>,
}

impl fmt::Debug for DeviceSlice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSlice")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<'m> DeviceSlice<'m> {
    /// Translates `[addr, addr + len)` in `memory`; `None` if any byte is outside it. A zero `len` gives an empty
    /// slice.
    #[inline]
    pub fn new<M: RingMemory + ?Sized>(
        memory: &'m M,
        addr: DeviceAddr,
        len: usize,
    ) -> Option<Self> {
        if len == 0 {
            return Some(Self {
                ptr: NonNull::dangling(),
                len: 0,
                _memory: PhantomData,
            });
        }
        let ptr = memory.translate(addr, len)?;
        Some(Self {
            ptr,
            len,
            _memory: PhantomData,
        })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host pointer to the first byte, for zero-copy I/O (`readv`/`writev` iovecs). Valid for `len()` bytes while
    /// the memory is borrowed.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Asks the CPU to start loading the slice's first [`PREFETCH_SPAN`] bytes into its cache, so that a read or
    /// write of them soon after does not wait for memory (or for the peer's core, which wrote them last). A hint
    /// only: contents and bounds are unaffected, and it is a no-op off x86-64.
    #[inline(always)]
    pub fn prefetch(&self) {
        prefetch_lines(self.ptr.as_ptr(), self.len.min(PREFETCH_SPAN));
    }

    /// As [`prefetch`](Self::prefetch), for bytes about to be written: the lines are asked for with ownership
    /// (PREFETCHW), so that a burst of writes to buffers the peer read last waits once rather than per line.
    #[inline(always)]
    pub fn prefetch_for_write(&self) {
        prefetch_lines_for_write(self.ptr.as_ptr(), self.len.min(PREFETCH_SPAN));
    }

    /// The sub-slice `[offset, offset + len)`, or `None` if it does not fit.
    #[inline]
    pub fn subslice(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset <= len`, inside the translated range (or dangling with offset 0 for an empty slice).
        let ptr = unsafe { self.ptr.add(offset) };
        Some(Self {
            ptr,
            len,
            _memory: PhantomData,
        })
    }

    /// Copies `min(self.len() - offset, dst.len())` bytes starting at `offset` into `dst`; returns the count.
    #[inline]
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        let count = self.len.saturating_sub(offset).min(dst.len());
        if count != 0 {
            // SAFETY: `offset + count <= len`, so the pointer stays inside the translated range.
            let src = unsafe { self.ptr.as_ptr().add(offset) };
            // SAFETY: `src..src + count` is inside the translated range; `dst` is a distinct Rust buffer (it cannot
            // alias peer memory, which no Rust reference points into).
            unsafe { copy_bytes::<false>(src, dst.as_mut_ptr(), count) }
        }
        count
    }

    /// Copies `min(self.len() - offset, src.len())` bytes from `src` to `offset`; returns the count.
    #[inline]
    pub fn write_at(&self, offset: usize, src: &[u8]) -> usize {
        let count = self.len.saturating_sub(offset).min(src.len());
        if count != 0 {
            // SAFETY: `offset + count <= len`, so the pointer stays inside the translated range.
            let dst = unsafe { self.ptr.as_ptr().add(offset) };
            // SAFETY: as in `read_at`, with the roles swapped.
            unsafe { copy_bytes::<false>(src.as_ptr(), dst, count) }
        }
        count
    }

    /// Copies `min(self.len() - offset, src.len())` bytes of `src` (another, possibly differently backed, memory)
    /// to `offset`; returns the count. The ranges may overlap only if they are the same memory; then the copy
    /// behaves like `memmove`.
    #[inline]
    pub fn copy_from(&self, offset: usize, src: &DeviceSlice<'_>) -> usize {
        let count = self.len.saturating_sub(offset).min(src.len);
        if count != 0 {
            // SAFETY: `offset + count <= len`, so the pointer stays inside the translated range.
            let dst = unsafe { self.ptr.as_ptr().add(offset) };
            // SAFETY: both ranges are inside translated memory for `count` bytes; `MAY_OVERLAP` tolerates overlap.
            unsafe { copy_bytes::<true>(src.ptr.as_ptr(), dst, count) }
        }
        count
    }

    /// Fills the slice with `byte`.
    pub fn fill(&self, byte: u8) {
        if self.len != 0 {
            // SAFETY: the whole translated range.
            unsafe { core::ptr::write_bytes(self.ptr.as_ptr(), byte, self.len) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_translate_outside_window_returns_none() {
        let mem = HeapMemory::new(DeviceAddr::new(0x1000), 0x1000).expect("alloc");
        assert!(mem.translate(DeviceAddr::new(0x1000), 0x1000).is_some());
        assert!(mem.translate(DeviceAddr::new(0xfff), 1).is_none());
        assert!(mem.translate(DeviceAddr::new(0x1fff), 2).is_none());
        assert!(mem.translate(DeviceAddr::new(u64::MAX), 2).is_none());
        assert!(mem.translate(DeviceAddr::new(0x1000), 0).is_none());
    }

    #[test]
    fn offset_memory_maps_linearly() {
        let mut backing = [0u8; 64];
        let host = backing.as_mut_ptr() as usize;
        // SAFETY: `backing` outlives `mem` and is only accessed through it below.
        let mem =
            unsafe { OffsetMemory::new(DeviceAddr::new(0x100), 64, host.wrapping_sub(0x100)) };
        let ptr = mem.translate(DeviceAddr::new(0x110), 4).expect("inside");
        assert_eq!(ptr.as_ptr() as usize, host + 0x10);
        assert!(mem.translate(DeviceAddr::new(0x13f), 2).is_none());
    }

    #[test]
    #[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
    fn copy_bytes_matches_memmove_for_every_length_around_the_fast_path() {
        for count in 0..=140usize {
            for shift in [0usize, 1, 3, 8] {
                let mut buf: [u8; 300] = core::array::from_fn(|i| (i * 7 + 1) as u8);
                let mut expect = buf;
                expect.copy_within(0..count, shift);
                let base = buf.as_mut_ptr();
                // SAFETY: both ranges lie inside `buf` (140 + 8 < 300); overlap is allowed.
                unsafe { copy_bytes::<true>(base, base.wrapping_add(shift), count) };
                assert_eq!(buf, expect, "count {count} shift {shift}");
                let mut dst = [0u8; 140];
                let mut want = [0u8; 140];
                want[..count].copy_from_slice(&buf[shift..shift + count]);
                // SAFETY: distinct buffers of at least `count` bytes.
                unsafe {
                    copy_bytes::<false>(buf.as_ptr().wrapping_add(shift), dst.as_mut_ptr(), count)
                };
                assert_eq!(dst, want, "count {count}");
            }
        }
    }

    #[test]
    fn device_slice_copies_are_bounded() {
        let mem = HeapMemory::new(DeviceAddr::new(0), 4096).expect("alloc");
        let slice = DeviceSlice::new(&mem, DeviceAddr::new(8), 4).expect("inside");
        assert_eq!(slice.write_at(2, &[1, 2, 3, 4]), 2);
        let mut out = [0u8; 8];
        assert_eq!(slice.read_at(0, &mut out), 4);
        assert_eq!(&out[..4], &[0, 0, 1, 2]);
        assert_eq!(slice.read_at(9, &mut out), 0);
    }
}
