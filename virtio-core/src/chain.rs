//! Descriptor chains as the device side sees them: validated once at pop, then read and written without re-reading
//! ring memory.

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::memory::{DeviceAddr, DeviceSlice, RingMemory};
use crate::queue::UsedToken;

/// One buffer of a chain: a device-address range that was checked to lie inside memory when the chain was popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    addr: DeviceAddr,
    len: u32,
}

impl Segment {
    /// Device address.
    pub fn addr(&self) -> DeviceAddr {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment's bytes in `memory`.
    pub fn slice<'m, M: RingMemory + ?Sized>(&self, memory: &'m M) -> Result<DeviceSlice<'m>> {
        DeviceSlice::new(memory, self.addr, self.len as usize).ok_or(Error::BufferOutOfMemory {
            addr: self.addr,
            len: self.len,
        })
    }
}

/// A popped descriptor chain: device-readable segments first, then device-writable ones.
///
/// A `Chain` is reusable: popping into it clears it, and its capacity is sized to the queue at creation so that
/// popping never allocates.
#[derive(Debug, Clone)]
pub struct Chain {
    token: UsedToken,
    segments: Vec<Segment>,
    readable: usize,
    readable_len: u32,
    writable_len: u32,
}

impl Chain {
    /// An empty chain able to hold `capacity` segments without allocating (use the queue size).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            token: UsedToken {
                id: 0,
                descriptors: 0,
            },
            segments: Vec::with_capacity(capacity),
            readable: 0,
            readable_len: 0,
            writable_len: 0,
        }
    }

    /// What to pass to `add_used` when the chain is done.
    pub fn token(&self) -> UsedToken {
        self.token
    }

    /// Head index (split) or buffer id (packed).
    pub fn id(&self) -> u16 {
        self.token.id
    }

    /// Device-readable segments, in order.
    pub fn readable(&self) -> &[Segment] {
        self.segments.get(..self.readable).unwrap_or(&[])
    }

    /// Device-writable segments, in order.
    pub fn writable(&self) -> &[Segment] {
        self.segments.get(self.readable..).unwrap_or(&[])
    }

    /// Total bytes of the readable segments.
    pub fn readable_len(&self) -> u32 {
        self.readable_len
    }

    /// Total bytes of the writable segments.
    pub fn writable_len(&self) -> u32 {
        self.writable_len
    }

    /// A cursor copying out of the readable segments.
    pub fn reader<'a, M: RingMemory + ?Sized>(&'a self, memory: &'a M) -> ChainReader<'a, M> {
        ChainReader {
            cursor: Cursor::new(self.readable(), memory),
        }
    }

    /// A cursor copying into the writable segments.
    pub fn writer<'a, M: RingMemory + ?Sized>(&'a self, memory: &'a M) -> ChainWriter<'a, M> {
        ChainWriter {
            cursor: Cursor::new(self.writable(), memory),
        }
    }

    /// Makes this a chain of one buffer (a single direct descriptor), after checking that it lies in `memory` (the
    /// only rule of [`ChainBuilder::push`] that can fail for one buffer; one descriptor never exceeds the count).
    #[inline(always)]
    pub(crate) fn set_single<M: RingMemory + ?Sized>(
        &mut self,
        memory: &M,
        addr: DeviceAddr,
        len: u32,
        writable: bool,
        token: UsedToken,
    ) -> Result<()> {
        self.segments.clear();
        self.readable = 0;
        self.readable_len = 0;
        self.writable_len = 0;
        if len != 0 && memory.translate(addr, len as usize).is_none() {
            return Err(Error::BufferOutOfMemory { addr, len });
        }
        self.fill_single(addr, len, writable, token);
        Ok(())
    }

    /// Makes this a chain of one buffer that the caller has already checked to lie in memory (by translating it:
    /// see the queues' `pop_buffer`).
    #[inline(always)]
    pub(crate) fn fill_single(
        &mut self,
        addr: DeviceAddr,
        len: u32,
        writable: bool,
        token: UsedToken,
    ) {
        self.segments.clear();
        // Capacity is the queue size (at least 1), so this never reallocates.
        self.segments.push(Segment { addr, len });
        if writable {
            self.readable = 0;
            self.readable_len = 0;
            self.writable_len = len;
        } else {
            self.readable = 1;
            self.readable_len = len;
            self.writable_len = 0;
        }
        self.token = token;
    }

    pub(crate) fn begin(&mut self) -> ChainBuilder<'_> {
        self.segments.clear();
        self.readable = 0;
        self.readable_len = 0;
        self.writable_len = 0;
        ChainBuilder {
            chain: self,
            descriptors: 0,
        }
    }
}

/// Collects and validates descriptors into a [`Chain`] (the rules of DESIGN §5 that both ring formats share).
pub(crate) struct ChainBuilder<'c> {
    chain: &'c mut Chain,
    descriptors: u32,
}

impl ChainBuilder<'_> {
    /// Counts one descriptor (direct, indirect-table entry, or the indirect descriptor itself) against `limit`.
    #[inline]
    pub(crate) fn count(&mut self, limit: u32) -> Result<()> {
        self.descriptors += 1;
        if self.descriptors > limit {
            return Err(Error::ChainTooLong { size: limit });
        }
        Ok(())
    }

    /// Adds a buffer after checking it lies in memory, keeps readable-before-writable, and that totals fit u32.
    #[inline]
    pub(crate) fn push<M: RingMemory + ?Sized>(
        &mut self,
        memory: &M,
        addr: DeviceAddr,
        len: u32,
        writable: bool,
    ) -> Result<()> {
        if len != 0 && memory.translate(addr, len as usize).is_none() {
            return Err(Error::BufferOutOfMemory { addr, len });
        }
        let chain = &mut *self.chain;
        if writable {
            chain.writable_len = chain
                .writable_len
                .checked_add(len)
                .ok_or(Error::ChainLengthOverflow)?;
        } else {
            if chain.writable_len != 0 || chain.segments.len() != chain.readable {
                return Err(Error::ReadableAfterWritable);
            }
            chain.readable_len = chain
                .readable_len
                .checked_add(len)
                .ok_or(Error::ChainLengthOverflow)?;
            chain.readable += 1;
        }
        if chain.readable_len.checked_add(chain.writable_len).is_none() {
            return Err(Error::ChainLengthOverflow);
        }
        // Capacity is the queue size and `count` stops chains longer than that, so this never reallocates.
        chain.segments.push(Segment { addr, len });
        Ok(())
    }

    /// Seals the chain with its used token.
    pub(crate) fn finish(self, id: u16, ring_slots: u16) {
        self.chain.token = UsedToken {
            id,
            descriptors: ring_slots,
        };
    }
}

/// A popped chain together with the memory it lives in (what `DeviceQueue::pop` returns).
#[derive(Debug)]
pub struct ChainRef<'a, M: ?Sized> {
    pub(crate) chain: &'a Chain,
    pub(crate) memory: &'a M,
}

impl<'a, M: RingMemory + ?Sized> ChainRef<'a, M> {
    /// A cursor copying out of the readable segments.
    pub fn reader(&self) -> ChainReader<'a, M> {
        self.chain.reader(self.memory)
    }

    /// A cursor copying into the writable segments.
    pub fn writer(&self) -> ChainWriter<'a, M> {
        self.chain.writer(self.memory)
    }

    /// The memory the segments live in.
    pub fn memory(&self) -> &'a M {
        self.memory
    }
}

impl<M: ?Sized> core::ops::Deref for ChainRef<'_, M> {
    type Target = Chain;

    fn deref(&self) -> &Chain {
        self.chain
    }
}

#[derive(Debug)]
struct Cursor<'a, M: ?Sized> {
    segments: &'a [Segment],
    memory: &'a M,
    index: usize,
    offset: usize,
    done: usize,
}

impl<'a, M: RingMemory + ?Sized> Cursor<'a, M> {
    fn new(segments: &'a [Segment], memory: &'a M) -> Self {
        Self {
            segments,
            memory,
            index: 0,
            offset: 0,
            done: 0,
        }
    }

    fn remaining(&self) -> usize {
        let total: usize = self.segments.iter().map(|s| s.len as usize).sum();
        total - self.done
    }

    /// Visits up to `len` bytes as slices, advancing the cursor.
    fn advance(
        &mut self,
        mut len: usize,
        mut visit: impl FnMut(DeviceSlice<'a>, usize),
    ) -> Result<usize> {
        let mut moved = 0;
        while len != 0 {
            let Some(segment) = self.segments.get(self.index) else {
                break;
            };
            let avail = segment.len as usize - self.offset;
            if avail == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let take = avail.min(len);
            let slice = segment.slice(self.memory)?;
            let part = slice
                .subslice(self.offset, take)
                .ok_or(Error::BufferOutOfMemory {
                    addr: segment.addr,
                    len: segment.len,
                })?;
            visit(part, moved);
            moved += take;
            len -= take;
            self.offset += take;
            self.done += take;
        }
        Ok(moved)
    }
}

/// Copies data out of a chain's readable segments.
#[derive(Debug)]
pub struct ChainReader<'a, M: ?Sized> {
    cursor: Cursor<'a, M>,
}

impl<'a, M: RingMemory + ?Sized> ChainReader<'a, M> {
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.cursor.remaining()
    }

    /// Copies up to `buf.len()` bytes; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let len = buf.len();
        self.cursor.advance(len, |slice, at| {
            if let Some(dst) = buf.get_mut(at..at + slice.len()) {
                slice.read_at(0, dst);
            }
        })
    }

    /// Skips `len` bytes; returns how many were skipped.
    pub fn skip(&mut self, len: usize) -> Result<usize> {
        self.cursor.advance(len, |_, _| {})
    }

    /// Visits the next `len` bytes as memory slices without copying (for `writev` and friends).
    pub fn for_each_slice(
        &mut self,
        len: usize,
        visit: impl FnMut(DeviceSlice<'a>),
    ) -> Result<usize> {
        let mut visit = visit;
        self.cursor.advance(len, |slice, _| visit(slice))
    }
}

/// Copies data into a chain's writable segments.
#[derive(Debug)]
pub struct ChainWriter<'a, M: ?Sized> {
    cursor: Cursor<'a, M>,
}

impl<'a, M: RingMemory + ?Sized> ChainWriter<'a, M> {
    /// Writable bytes left.
    pub fn remaining(&self) -> usize {
        self.cursor.remaining()
    }

    /// Bytes written so far (the `len` to report in the used element).
    pub fn written(&self) -> u32 {
        // The chain's writable total fits u32 (checked at pop), and `done` never exceeds it.
        u32::try_from(self.cursor.done).unwrap_or(u32::MAX)
    }

    /// Copies up to `buf.len()` bytes; returns how many.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        let len = buf.len();
        self.cursor.advance(len, |slice, at| {
            if let Some(src) = buf.get(at..at + slice.len()) {
                slice.write_at(0, src);
            }
        })
    }

    /// Visits the next `len` writable bytes as memory slices without copying (for `readv` and friends).
    pub fn for_each_slice(
        &mut self,
        len: usize,
        visit: impl FnMut(DeviceSlice<'a>),
    ) -> Result<usize> {
        let mut visit = visit;
        self.cursor.advance(len, |slice, _| visit(slice))
    }
}
