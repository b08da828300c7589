//! [`MmioRegisters`] straight into an in-process [`MmioDevice`]: drive a device model with the real driver-side
//! transport, register by register, in tests and loopback setups.
//!
//! The device sits behind a `RefCell` (single thread) or, with feature `std`, a `Mutex`. With a `RefCell`, an access
//! made while the device is already borrowed (an [`IrqLine`](crate::IrqLine) that calls back into the driver) cannot
//! reach it: such a read returns 0 and such a write is dropped, instead of a panic. A `Mutex` re-entered from the same
//! thread deadlocks, as `Mutex` does: use a `RefCell` for re-entrant setups.
//! Errors the device returns for an access are dropped as well: the driver side sees what a guest would see.

use core::cell::RefCell;

use virtio_core::device::VirtioDevice;

use crate::device::{MmioDevice, MmioInterrupt};
use crate::driver::MmioRegisters;

fn at(offset: usize) -> u64 {
    u64::try_from(offset).unwrap_or(u64::MAX)
}

fn read<D, const N: usize>(device: &MmioDevice<D>, offset: usize) -> [u8; N]
where
    D: VirtioDevice<Interrupt = MmioInterrupt>,
    D::Memory: Clone,
{
    let mut bytes = [0; N];
    // A refused read leaves zeros, which is what the guest reads.
    let _ = device.read(at(offset), &mut bytes);
    bytes
}

fn write<D>(device: &mut MmioDevice<D>, offset: usize, bytes: &[u8])
where
    D: VirtioDevice<Interrupt = MmioInterrupt>,
    D::Memory: Clone,
{
    // A refused write has no effect, which is what the guest gets.
    let _ = device.write(at(offset), bytes);
}

impl<D> MmioRegisters for RefCell<MmioDevice<D>>
where
    D: VirtioDevice<Interrupt = MmioInterrupt>,
    D::Memory: Clone,
{
    fn read8(&self, offset: usize) -> u8 {
        self.try_borrow()
            .map_or(0, |d| u8::from_le_bytes(read(&d, offset)))
    }
    fn read16(&self, offset: usize) -> u16 {
        self.try_borrow()
            .map_or(0, |d| u16::from_le_bytes(read(&d, offset)))
    }
    fn read32(&self, offset: usize) -> u32 {
        self.try_borrow()
            .map_or(0, |d| u32::from_le_bytes(read(&d, offset)))
    }
    fn write8(&self, offset: usize, value: u8) {
        if let Ok(mut d) = self.try_borrow_mut() {
            write(&mut d, offset, &value.to_le_bytes());
        }
    }
    fn write16(&self, offset: usize, value: u16) {
        if let Ok(mut d) = self.try_borrow_mut() {
            write(&mut d, offset, &value.to_le_bytes());
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        if let Ok(mut d) = self.try_borrow_mut() {
            write(&mut d, offset, &value.to_le_bytes());
        }
    }
}

#[cfg(feature = "std")]
impl<D> MmioRegisters for std::sync::Mutex<MmioDevice<D>>
where
    D: VirtioDevice<Interrupt = MmioInterrupt>,
    D::Memory: Clone,
{
    fn read8(&self, offset: usize) -> u8 {
        let d = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        u8::from_le_bytes(read(&d, offset))
    }
    fn read16(&self, offset: usize) -> u16 {
        let d = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        u16::from_le_bytes(read(&d, offset))
    }
    fn read32(&self, offset: usize) -> u32 {
        let d = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        u32::from_le_bytes(read(&d, offset))
    }
    fn write8(&self, offset: usize, value: u8) {
        let mut d = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write(&mut d, offset, &value.to_le_bytes());
    }
    fn write16(&self, offset: usize, value: u16) {
        let mut d = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write(&mut d, offset, &value.to_le_bytes());
    }
    fn write32(&self, offset: usize, value: u32) {
        let mut d = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write(&mut d, offset, &value.to_le_bytes());
    }
}
