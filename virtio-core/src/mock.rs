//! Test doubles (feature `test-utils`): a mock driver to exercise your device backend, and a mock device to exercise
//! your driver. Both run the real rings of this crate over a [`HeapMemory`]; nothing is simulated but the peer's
//! decisions.
//!
//! ```
//! use virtio_core::mock::{MockDevice, MockDriver};
//! use virtio_core::Features;
//!
//! let mut driver = MockDriver::new(Features::VERSION_1 | Features::RING_PACKED, 16).unwrap();
//! let mut device = MockDevice::new(&driver.queue_config(), driver.features(), driver.memory()).unwrap();
//! let token = driver.add(&[b"ping"], &[16]).unwrap();
//! assert_eq!(device.process(|request| request.iter().rev().copied().collect()).unwrap(), 1);
//! let used = driver.pop_used().unwrap().unwrap();
//! assert_eq!((used.token, used.data.as_slice()), (token, &b"gnip"[..]));
//! ```

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::memory::{DeviceAddr, DeviceSlice, HeapMemory};
use crate::queue::{QueueConfig, RingFormat, RingLayout};
use crate::ring::{Buffer, DeviceQueue, DriverQueue, IndirectPool};
use crate::spec::Features;

/// Device address where mock memory starts (non-zero, so that address 0 is never valid).
pub const MOCK_BASE: u64 = 0x10_0000;
/// Bytes of data space per chain in a [`MockDriver`].
pub const MOCK_SLOT_LEN: u32 = 64 * 1024;
/// Indirect table entries per chain in a [`MockDriver`].
pub const MOCK_INDIRECT_ENTRIES: u16 = 16;

/// A buffer returned by the device to a [`MockDriver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockUsed {
    /// The token `add` returned.
    pub token: u16,
    /// The length the device reported.
    pub len: u32,
    /// The first `len` bytes of the writable buffers, concatenated.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    writable: [(DeviceAddr, u32); 8],
    count: usize,
}

/// A driver that owns its memory: ring areas, an indirect pool, and a data slot of [`MOCK_SLOT_LEN`] bytes per
/// chain. Use it to feed your device backend: activate your device queue from [`MockDriver::queue_config`].
#[derive(Debug)]
pub struct MockDriver {
    memory: Arc<HeapMemory>,
    queue: DriverQueue<Arc<HeapMemory>, u16>,
    features: Features,
    data_base: DeviceAddr,
    slot_len: u32,
    free_slots: Vec<u16>,
    pending: Vec<Option<Pending>>,
}

impl MockDriver {
    /// A driver for a queue of `size` with `features` (ring format and options taken from them), with
    /// [`MOCK_SLOT_LEN`] bytes of data space per chain.
    pub fn new(features: Features, size: u16) -> Result<Self> {
        Self::with_slot_len(features, size, MOCK_SLOT_LEN)
    }

    /// As [`new`](Self::new), with `slot_len` bytes (a multiple of 16) of data space per chain.
    pub fn with_slot_len(features: Features, size: u16, slot_len: u32) -> Result<Self> {
        let format = if features.contains(Features::RING_PACKED) {
            RingFormat::Packed
        } else {
            RingFormat::Split
        };
        let layout = RingLayout::new(format, size);
        let ring_len = (layout.total_len() + 4095) & !4095;
        let pool_len = IndirectPool::len_for(size, MOCK_INDIRECT_ENTRIES);
        let data_len = usize::from(size) * slot_len as usize;
        let base = DeviceAddr::new(MOCK_BASE);
        let memory = Arc::new(
            HeapMemory::new(base, ring_len + pool_len + data_len)
                .ok_or(Error::InvalidQueueSize { size, max: size })?,
        );
        let config = QueueConfig::with_layout(size, &layout, base)
            .ok_or(Error::InvalidQueueSize { size, max: size })?;
        let pool = IndirectPool {
            addr: DeviceAddr::new(MOCK_BASE + ring_len as u64),
            entries_per_chain: MOCK_INDIRECT_ENTRIES,
        };
        let queue = DriverQueue::new(&config, features, memory.clone(), Some(pool))?;
        Ok(Self {
            memory,
            queue,
            features,
            data_base: DeviceAddr::new(MOCK_BASE + (ring_len + pool_len) as u64),
            slot_len,
            free_slots: (0..size).rev().collect(),
            pending: vec![None; usize::from(size)],
        })
    }

    /// The memory the rings and buffers live in (share it with the device under test).
    pub fn memory(&self) -> Arc<HeapMemory> {
        self.memory.clone()
    }

    /// The negotiated features the queue runs with.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The queue configuration a transport would have received.
    pub fn queue_config(&self) -> QueueConfig {
        *self.queue.config()
    }

    /// The underlying driver queue, for notification control and counters.
    pub fn queue(&mut self) -> &mut DriverQueue<Arc<HeapMemory>, u16> {
        &mut self.queue
    }

    /// Makes a chain available: `readable` buffers with the given bytes, then writable buffers of the given lengths
    /// (at most 8 of each). Returns the token [`pop_used`](Self::pop_used) will report.
    pub fn add(&mut self, readable: &[&[u8]], writable: &[u32]) -> Result<u16> {
        if readable.len() > 8 || writable.len() > 8 {
            return Err(Error::ChainTooLarge);
        }
        let slot = *self
            .free_slots
            .last()
            .ok_or(Error::QueueFull { needed: 1, free: 0 })?;
        let mut cursor = self.data_base.raw() + u64::from(slot) * u64::from(self.slot_len);
        let end = cursor + u64::from(self.slot_len);
        let mut take = |len: u32| -> Result<Buffer> {
            let buffer = Buffer::new(DeviceAddr::new(cursor), len);
            cursor = cursor
                .checked_add(u64::from(len))
                .filter(|c| *c <= end)
                .ok_or(Error::ChainTooLarge)?;
            Ok(buffer)
        };
        let mut r = [Buffer::new(DeviceAddr::new(0), 0); 8];
        for (dst, bytes) in r.iter_mut().zip(readable) {
            *dst = take(u32::try_from(bytes.len()).map_err(|_| Error::ChainTooLarge)?)?;
            self.poke(dst.addr, bytes)?;
        }
        let mut w = [Buffer::new(DeviceAddr::new(0), 0); 8];
        let mut pending = Pending {
            writable: [(DeviceAddr::new(0), 0); 8],
            count: writable.len(),
        };
        for ((dst, len), record) in w.iter_mut().zip(writable).zip(pending.writable.iter_mut()) {
            *dst = take(*len)?;
            *record = (dst.addr, *len);
        }
        self.queue.add(
            r.get(..readable.len()).unwrap_or(&[]),
            w.get(..writable.len()).unwrap_or(&[]),
            slot,
        )?;
        self.free_slots.pop();
        if let Some(p) = self.pending.get_mut(usize::from(slot)) {
            *p = Some(pending);
        }
        Ok(slot)
    }

    /// Resets the queue (as after a device reset) and returns the tokens of the buffers that were in flight.
    pub fn reset(&mut self) -> Vec<u16> {
        let reclaimed = self.queue.reset();
        for token in &reclaimed {
            if let Some(p) = self.pending.get_mut(usize::from(*token)) {
                *p = None;
            }
            self.free_slots.push(*token);
        }
        reclaimed
    }

    /// Whether the device asked to be notified about what was added.
    pub fn kick_needed(&mut self) -> bool {
        self.queue.kick_prepare()
    }

    /// Collects the next used buffer with the bytes the device wrote.
    pub fn pop_used(&mut self) -> Result<Option<MockUsed>> {
        let Some(used) = self.queue.pop_used()? else {
            return Ok(None);
        };
        let pending = self
            .pending
            .get_mut(usize::from(used.token))
            .and_then(Option::take);
        self.free_slots.push(used.token);
        let mut data = Vec::with_capacity(used.len as usize);
        if let Some(p) = pending {
            let mut left = used.len as usize;
            for &(addr, len) in p.writable.iter().take(p.count) {
                let n = left.min(len as usize);
                data.extend_from_slice(&self.peek(addr, n)?);
                left -= n;
            }
        }
        Ok(Some(MockUsed {
            token: used.token,
            len: used.len,
            data,
        }))
    }

    /// Writes raw bytes at a device address (to plant data, or to corrupt a ring on purpose).
    pub fn poke(&self, addr: DeviceAddr, bytes: &[u8]) -> Result<()> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let slice = DeviceSlice::new(&*self.memory, addr, bytes.len())
            .ok_or(Error::BufferOutOfMemory { addr, len })?;
        slice.write_at(0, bytes);
        Ok(())
    }

    /// Reads raw bytes at a device address.
    pub fn peek(&self, addr: DeviceAddr, len: usize) -> Result<Vec<u8>> {
        let slice = DeviceSlice::new(&*self.memory, addr, len).ok_or(Error::BufferOutOfMemory {
            addr,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        })?;
        let mut out = vec![0; len];
        slice.read_at(0, &mut out);
        Ok(out)
    }
}

/// A device that answers every chain with a function of its readable bytes. Use it to exercise your driver: give it
/// the queue configuration your driver programmed and the memory it lives in.
#[derive(Debug)]
pub struct MockDevice<M> {
    queue: DeviceQueue<M>,
    request: Vec<u8>,
}

impl<M: crate::memory::RingMemory> MockDevice<M> {
    /// Activates the device side of the queue described by `config`.
    pub fn new(config: &QueueConfig, features: Features, memory: M) -> Result<Self> {
        Ok(Self {
            queue: DeviceQueue::activate(config, features, memory)?,
            request: Vec::new(),
        })
    }

    /// The underlying device queue.
    pub fn queue(&mut self) -> &mut DeviceQueue<M> {
        &mut self.queue
    }

    /// Pops every available chain, answers it with `respond(readable bytes)` (truncated to the writable space) and
    /// returns it as used. Returns the number of chains processed.
    pub fn process(&mut self, mut respond: impl FnMut(&[u8]) -> Vec<u8>) -> Result<usize> {
        let mut count = 0;
        while let Some(chain) = self.queue.pop()? {
            self.request.clear();
            self.request.resize(chain.readable_len() as usize, 0);
            chain.reader().read(&mut self.request)?;
            let response = respond(&self.request);
            let mut writer = chain.writer();
            writer.write(&response)?;
            let (token, written) = (chain.token(), writer.written());
            self.queue.add_used(token, written)?;
            count += 1;
        }
        Ok(count)
    }

    /// Whether the driver wants an interrupt for what was processed.
    pub fn needs_notification(&mut self) -> bool {
        self.queue.needs_notification()
    }
}
