//! [`MmioRegisters`] over a mapped register window, with volatile accesses: the only module of this crate with
//! `unsafe` code.

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use volatile::VolatilePtr;

use crate::driver::{MmioRegisters, MmioTransport};
use crate::error::Error;

/// The register window of a virtio-mmio device, mapped into the driver's address space.
///
/// Accesses outside the window, or not naturally aligned, are not performed (a read returns 0). Every write is
/// preceded and every read followed by a full fence, as Linux's `writel`/`readl` order MMIO against normal memory:
/// the ring updates a driver makes before `QueueNotify` are visible to the device when it sees the notification, and
/// ring reads after an `InterruptStatus` read see what the device wrote before raising it.
#[derive(Debug)]
pub struct VolatileRegisters {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the window is device memory reached only through volatile accesses of whole registers; no Rust reference
// to it exists, and the device changes it concurrently anyway, so accesses from any thread are as sound as from one.
unsafe impl Send for VolatileRegisters {}
// SAFETY: as for `Send`: `&self` methods only perform volatile accesses, which the device may interleave freely.
unsafe impl Sync for VolatileRegisters {}

impl VolatileRegisters {
    /// Registers at `base`, `size` bytes.
    ///
    /// # Safety
    ///
    /// The caller guarantees that `base..base + size` is the register window of one virtio-mmio device (or memory
    /// that behaves like one), mapped for the whole life of the returned value and valid for volatile 8-, 16- and
    /// 32-bit reads and writes at naturally aligned offsets, and that no Rust reference to it exists while the
    /// value lives. Other code may access the window only through volatile accesses (for example a second
    /// `VolatileRegisters`), with the synchronisation the device's protocol needs.
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Self {
        Self { base, size }
    }

    /// Window size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A volatile pointer to the `T` at `offset`, if it is inside the window and naturally aligned.
    fn register<T>(&self, offset: usize) -> Option<VolatilePtr<'_, T>> {
        let width = core::mem::size_of::<T>();
        let end = offset.checked_add(width)?;
        let addr = self.base.as_ptr().addr().checked_add(offset)?;
        if end > self.size || addr % width != 0 {
            return None;
        }
        // SAFETY: `offset + width <= size`, so the result stays inside the window `new`'s caller vouched for.
        let ptr = unsafe { self.base.add(offset) };
        // SAFETY: the register is inside the mapped window, naturally aligned (checked above), valid for volatile
        // accesses for the borrow of `self` (the `new` contract), and referenced by no Rust reference.
        Some(unsafe { VolatilePtr::new(ptr.cast::<T>()) })
    }

    fn read<T: Copy + Default>(&self, offset: usize) -> T {
        let value = self
            .register::<T>(offset)
            .map_or(T::default(), |r| r.read());
        // Pairs with the device's ordering of its ring writes before the register value it presents.
        fence(Ordering::SeqCst);
        value
    }

    fn write<T: Copy>(&self, offset: usize, value: T) {
        // Orders the driver's ring writes before the register write the device reacts to (e.g. `QueueNotify`).
        fence(Ordering::SeqCst);
        if let Some(r) = self.register::<T>(offset) {
            r.write(value);
        }
    }
}

impl MmioRegisters for VolatileRegisters {
    fn read8(&self, offset: usize) -> u8 {
        self.read::<u8>(offset)
    }
    fn read16(&self, offset: usize) -> u16 {
        u16::from_le(self.read::<u16>(offset))
    }
    fn read32(&self, offset: usize) -> u32 {
        u32::from_le(self.read::<u32>(offset))
    }
    fn write8(&self, offset: usize, value: u8) {
        self.write(offset, value);
    }
    fn write16(&self, offset: usize, value: u16) {
        self.write(offset, value.to_le());
    }
    fn write32(&self, offset: usize, value: u32) {
        self.write(offset, value.to_le());
    }
}

impl MmioTransport<VolatileRegisters> {
    /// Probes the virtio-mmio device whose register window of `size` bytes is mapped at `base` (see
    /// [`MmioTransport::from_registers`] for the checks and errors).
    ///
    /// # Safety
    ///
    /// As for [`VolatileRegisters::new`]: `base..base + size` is a mapped virtio-mmio register window, valid for
    /// volatile accesses while the transport lives, and not referenced by any Rust reference.
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Result<Self, Error> {
        // SAFETY: forwarded from this function's contract.
        let regs = unsafe { VolatileRegisters::new(base, size) };
        Self::from_registers(regs, size)
    }
}
