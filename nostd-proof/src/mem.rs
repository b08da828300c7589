//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, and a bump allocator.
//!
//! Shared with the bare-metal guest kernel (`examples/guest-kernel`, through `#[path]`): both are freestanding
//! binaries that need the same runtime pieces.
//!
//! `core` and LLVM emit calls to these symbols, which a hosted program gets from libc.
//! On `x86_64-unknown-linux-gnu` the precompiled `compiler_builtins` does not provide them
//! (its `mem` feature is off), and this binary links with `-nostdlib`, so they are defined
//! here. They are plain byte loops; the volatile accesses keep LLVM from recognising the
//! loops as `memcpy`/`memset` idioms and turning them into calls to themselves. Pointer
//! offsets use the safe `wrapping_add` (always in bounds here, `i < n`) so that each
//! `unsafe` block holds exactly one memory access.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ffi::c_int;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Copies `n` bytes from `src` to `dest`; the regions must not overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dest` valid for writes of `n` bytes, and the two
/// regions must not overlap (the C contract of `memcpy`).
#[no_mangle]
pub(crate) unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees `src` is readable for `n` bytes.
        let byte = unsafe { src.wrapping_add(i).read_volatile() };
        // SAFETY: `i < n` and the caller guarantees `dest` is writable for `n` bytes.
        unsafe { dest.wrapping_add(i).write_volatile(byte) };
        i += 1;
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the regions may overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dest` valid for writes of `n` bytes.
#[no_mangle]
pub(crate) unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if dest.cast_const() <= src {
        // Forward copy: each source byte is read before any write can reach it.
        let mut i = 0;
        while i < n {
            // SAFETY: `i < n`; the caller guarantees `src` is readable for `n` bytes.
            let byte = unsafe { src.wrapping_add(i).read_volatile() };
            // SAFETY: `i < n`; the caller guarantees `dest` is writable for `n` bytes.
            unsafe { dest.wrapping_add(i).write_volatile(byte) };
            i += 1;
        }
    } else {
        // Backward copy for `dest > src`, for the same reason.
        let mut i = n;
        while i > 0 {
            i -= 1;
            // SAFETY: `i < n`; the caller guarantees `src` is readable for `n` bytes.
            let byte = unsafe { src.wrapping_add(i).read_volatile() };
            // SAFETY: `i < n`; the caller guarantees `dest` is writable for `n` bytes.
            unsafe { dest.wrapping_add(i).write_volatile(byte) };
        }
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
///
/// `dest` must be valid for writes of `n` bytes.
#[no_mangle]
pub(crate) unsafe extern "C" fn memset(dest: *mut u8, c: c_int, n: usize) -> *mut u8 {
    let [byte, ..] = c.to_le_bytes();
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees `dest` is writable for `n` bytes.
        unsafe { dest.wrapping_add(i).write_volatile(byte) };
        i += 1;
    }
    dest
}

/// Compares `n` bytes; returns the difference of the first differing pair (as unsigned
/// bytes), or 0.
///
/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes.
#[no_mangle]
pub(crate) unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees `a` is readable for `n` bytes.
        let x = unsafe { a.wrapping_add(i).read_volatile() };
        // SAFETY: `i < n` and the caller guarantees `b` is readable for `n` bytes.
        let y = unsafe { b.wrapping_add(i).read_volatile() };
        if x != y {
            return c_int::from(x) - c_int::from(y);
        }
        i += 1;
    }
    0
}

/// Like [`memcmp`], but only zero versus non-zero is meaningful.
///
/// # Safety
///
/// `a` and `b` must be valid for reads of `n` bytes.
#[no_mangle]
pub(crate) unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    // SAFETY: same contract as `memcmp`, forwarded from our caller.
    unsafe { memcmp(a, b, n) }
}

/// A bump allocator over a static arena of `N` bytes; `dealloc` never reuses memory. Enough for programs whose
/// allocations happen once, at setup (virtio-core allocates queue bookkeeping at creation only).
pub(crate) struct Bump<const N: usize> {
    arena: UnsafeCell<[u8; N]>,
    next: AtomicUsize,
}

impl<const N: usize> Bump<N> {
    /// An empty arena.
    pub(crate) const fn new() -> Self {
        Self {
            arena: UnsafeCell::new([0; N]),
            next: AtomicUsize::new(0),
        }
    }
}

// SAFETY: allocation hands out disjoint ranges through an atomic cursor; the arena is never accessed otherwise.
unsafe impl<const N: usize> Sync for Bump<N> {}

// SAFETY: `alloc` returns distinct, suitably aligned ranges inside the arena or null; `dealloc` never reuses memory.
unsafe impl<const N: usize> GlobalAlloc for Bump<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.get().cast::<u8>() as usize;
        let mut start = 0;
        let claimed = self
            .next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                start = (base + next).next_multiple_of(layout.align()) - base;
                let end = start.checked_add(layout.size())?;
                (end <= N).then_some(end)
            });
        match claimed {
            Ok(_) => (base + start) as *mut u8,
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}
