//! Port I/O and MMIO buses: address ranges mapped to device trait objects, looked up on every vCPU exit.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::error::Error;

/// A device on a [`Bus`]. Accesses arrive from vCPU threads with the offset from the start of the device's range.
///
/// Guest-controlled: `offset` is inside the range and `data` is 1, 2, 4 or 8 bytes (what KVM reports), but any
/// value of either must be handled without panicking.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`; fill `data` (it holds 0xff bytes on entry).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// An address space (port I/O or MMIO) of non-overlapping ranges.
#[derive(Default)]
pub struct Bus {
    entries: RwLock<Vec<Entry>>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `base..base + len`. Fails if the range is empty, wraps, or overlaps a mapped one.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::BusOverlap { base, len })?;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let at = entries.partition_point(|e| e.base < base);
        let overlaps_prev = at
            .checked_sub(1)
            .and_then(|i| entries.get(i))
            .is_some_and(|p| p.base + p.len > base);
        let overlaps_next = entries.get(at).is_some_and(|n| n.base < end);
        if overlaps_prev || overlaps_next {
            return Err(Error::BusOverlap { base, len });
        }
        entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let at = entries.partition_point(|e| e.base <= addr).checked_sub(1)?;
        let e = entries.get(at)?;
        let offset = addr - e.base;
        (offset < e.len).then(|| (e.device.clone(), offset))
    }

    /// Dispatches a read; `false` (and `data` all 0xff) if nothing is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.find(addr) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` if nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::assertions_on_constants,
    clippy::cast_possible_truncation,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    struct Mem([u8; 16]);
    impl BusDevice for Mem {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.0.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(s) = self.0.get_mut(offset as usize + i) {
                    *s = *b;
                }
            }
        }
    }

    #[test]
    fn bus_overlapping_insert_is_refused_and_lookup_uses_offsets() {
        let bus = Bus::new();
        bus.insert(0x100, 16, Arc::new(Mutex::new(Mem([0; 16]))))
            .unwrap();
        bus.insert(0x110, 16, Arc::new(Mutex::new(Mem([0; 16]))))
            .unwrap();
        assert!(bus
            .insert(0x10f, 2, Arc::new(Mutex::new(Mem([0; 16]))))
            .is_err());
        assert!(bus
            .insert(0xf0, 0x11, Arc::new(Mutex::new(Mem([0; 16]))))
            .is_err());
        assert!(bus
            .insert(0, 0, Arc::new(Mutex::new(Mem([0; 16]))))
            .is_err());
        assert!(bus.write(0x112, &[7]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x112, &mut b));
        assert_eq!(b, [7]);
        assert!(!bus.read(0x120, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!bus.write(0xff, &[1]));
    }
}
