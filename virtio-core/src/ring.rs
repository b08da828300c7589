//! What both ring formats share: buffers, used elements, indirect pools, in-order bookkeeping, and the role enums
//! [`DeviceQueue`] and [`DriverQueue`] that choose split or packed once, at activation.

use alloc::vec::Vec;

use crate::chain::{Chain, ChainRef};
use crate::error::{Error, Result, RingArea};
use crate::memory::{
    prefetch_lines, DeviceAddr, DeviceSlice, RingMemory, RingRegion, PREFETCH_SPAN,
};
use crate::packed::{PackedDeviceQueue, PackedDriverQueue};
use crate::queue::{NotificationData, QueueConfig, RingFeatures, UsedToken};
use crate::spec::Features;
use crate::split::{SplitDeviceQueue, SplitDriverQueue};

/// A buffer the driver offers: device address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Device address of the first byte.
    pub addr: DeviceAddr,
    /// Length in bytes (non-zero).
    pub len: u32,
}

impl Buffer {
    /// A buffer of `len` bytes at `addr`.
    pub const fn new(addr: DeviceAddr, len: u32) -> Self {
        Self { addr, len }
    }
}

/// A buffer the device returned: the driver's token and the bytes the device wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used<T> {
    /// The token given to `add`.
    pub token: T,
    /// Bytes written into the device-writable buffers (validated ≤ what was offered).
    pub len: u32,
}

/// Device-visible memory the driver reserves for indirect tables: one table of `entries_per_chain` descriptors per
/// descriptor slot (split: indexed by head; packed: by buffer id), `size × entries_per_chain × 16` bytes, 16-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndirectPool {
    /// Device address of the pool.
    pub addr: DeviceAddr,
    /// Descriptors per table; chains longer than this use direct descriptors.
    pub entries_per_chain: u16,
}

impl IndirectPool {
    /// Bytes the pool needs for a queue of `size`.
    pub fn len_for(size: u16, entries_per_chain: u16) -> usize {
        usize::from(size) * usize::from(entries_per_chain) * 16
    }

    pub(crate) fn table_addr(&self, slot: u16) -> DeviceAddr {
        DeviceAddr::new(self.addr.raw() + u64::from(slot) * u64::from(self.entries_per_chain) * 16)
    }

    pub(crate) fn map<M: RingMemory + ?Sized>(&self, memory: &M, size: u16) -> Result<RingRegion> {
        let len = Self::len_for(size, self.entries_per_chain);
        if !self.addr.is_aligned(16) {
            return Err(Error::MisalignedArea {
                area: RingArea::Descriptors,
                addr: self.addr,
                align: 16,
            });
        }
        RingRegion::new(memory, self.addr, len, 16).ok_or(Error::AreaOutOfMemory {
            area: RingArea::Descriptors,
            addr: self.addr,
            len,
        })
    }
}

/// Checks a chain's buffers; returns the buffer count and the writable total.
pub(crate) fn check_buffers(readable: &[Buffer], writable: &[Buffer]) -> Result<(usize, u32)> {
    let total = readable.len() + writable.len();
    if total == 0 || readable.iter().chain(writable).any(|b| b.len == 0) {
        return Err(Error::EmptyBuffer);
    }
    let sum = |buffers: &[Buffer]| {
        buffers
            .iter()
            .try_fold(0u32, |acc, b| acc.checked_add(b.len))
    };
    sum(readable).ok_or(Error::ChainTooLarge)?;
    let writable_len = sum(writable).ok_or(Error::ChainTooLarge)?;
    Ok((total, writable_len))
}

/// Accumulates chains the device finished in order, to return them with one used element (VIRTIO_F_IN_ORDER).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InOrderBatch {
    last: Option<UsedToken>,
    buffers: u16,
    descriptors: u16,
}

impl InOrderBatch {
    /// An empty batch.
    pub const fn new() -> Self {
        Self {
            last: None,
            buffers: 0,
            descriptors: 0,
        }
    }

    /// Adds the next chain (in the order they were popped).
    pub fn push(&mut self, token: UsedToken) {
        self.last = Some(token);
        self.buffers = self.buffers.wrapping_add(1);
        self.descriptors = self.descriptors.wrapping_add(token.descriptors);
    }

    /// The last chain added.
    pub fn last(&self) -> Option<UsedToken> {
        self.last
    }

    /// Chains in the batch.
    pub fn buffers(&self) -> u16 {
        self.buffers
    }

    /// Ring slots the batch occupies.
    pub fn descriptors(&self) -> u16 {
        self.descriptors
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

/// The first step of a driver queue's `pop_used_batch` (split and packed alike): while `pending` says an in-order
/// batch that a `pop_used` call started is unfinished, pops with `pop` and hands each buffer to `out`; returns how
/// many.
#[inline(always)]
pub(crate) fn finish_started_batch<Q, U>(
    queue: &mut Q,
    pending: impl Fn(&Q) -> bool,
    mut pop: impl FnMut(&mut Q) -> Result<Option<U>>,
    out: &mut impl FnMut(U),
) -> Result<usize> {
    let mut n = 0;
    while pending(queue) {
        match pop(queue)? {
            Some(used) => {
                out(used);
                n += 1;
            }
            None => break,
        }
    }
    Ok(n)
}

/// Driver-side FIFO of in-flight ids, to expand one in-order used element into the buffers it completes.
#[derive(Debug)]
pub(crate) struct InOrderTracker {
    fifo: Vec<u16>,
    head: usize,
    len: usize,
    batch_end: Option<(u16, u32)>,
}

impl InOrderTracker {
    pub(crate) fn new(enabled: bool, size: u16) -> Self {
        let capacity = if enabled { usize::from(size) } else { 0 };
        Self {
            fifo: alloc::vec![0; capacity],
            head: 0,
            len: 0,
            batch_end: None,
        }
    }

    #[inline(always)]
    pub(crate) fn enabled(&self) -> bool {
        !self.fifo.is_empty()
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, id: u16) {
        if self.enabled() {
            let cap = self.fifo.len();
            let mut at = self.head + self.len;
            if at >= cap {
                at -= cap;
            }
            if let Some(slot) = self.fifo.get_mut(at) {
                *slot = id;
                self.len += 1;
            }
        }
    }

    /// Removes and returns the oldest id in flight (batched reclaim; not while a `start`ed batch is pending).
    #[inline(always)]
    pub(crate) fn pop_front(&mut self) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        let id = self.fifo.get(self.head).copied()?;
        self.head += 1;
        if self.head == self.fifo.len() {
            self.head = 0;
        }
        self.len -= 1;
        Some(id)
    }

    fn front(&self) -> Option<u16> {
        (self.len != 0)
            .then(|| self.fifo.get(self.head).copied())
            .flatten()
    }

    /// While a batch is being expanded, the next id to retire.
    pub(crate) fn next_in_batch(&self) -> Option<u16> {
        self.batch_end.and_then(|_| self.front())
    }

    pub(crate) fn batch_pending(&self) -> bool {
        self.batch_end.is_some()
    }

    /// A used element named `id` (known in flight): if buffers made available before it are still outstanding, a
    /// batch starts and the first of them is returned.
    pub(crate) fn start(&mut self, id: u16, len: u32) -> Option<u16> {
        let front = self.front()?;
        if front == id {
            return None;
        }
        self.batch_end = Some((id, len));
        Some(front)
    }

    /// The length reported for `id` if it ends the current batch.
    pub(crate) fn finished_len(&self, id: u16) -> Option<u32> {
        self.batch_end
            .filter(|(end, _)| *end == id)
            .map(|(_, len)| len)
    }

    pub(crate) fn retire(&mut self, id: u16) {
        if !self.enabled() || self.len == 0 {
            return;
        }
        self.head = (self.head + 1) % self.fifo.len();
        self.len -= 1;
        if self.batch_end.is_some_and(|(end, _)| end == id) {
            self.batch_end = None;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
        self.batch_end = None;
    }
}

/// What [`DeviceQueue::pop_buffer`] found.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Popped<'m> {
    /// Nothing is available.
    Empty,
    /// A chain was popped into the caller's [`Chain`].
    Chain,
    /// A chain of one direct descriptor was popped; the caller's [`Chain`] was left as it was (see
    /// [`SingleBuffer::to_chain`]).
    Single(SingleBuffer<'m>),
}

/// A popped chain of one direct descriptor (the usual TX and RX chain), validated like any chain, with its buffer
/// already translated so that the caller need not translate it again.
#[derive(Debug, Clone, Copy)]
pub struct SingleBuffer<'m> {
    buffer: DeviceSlice<'m>,
    addr: DeviceAddr,
    writable: bool,
    token: UsedToken,
}

impl<'m> SingleBuffer<'m> {
    #[inline(always)]
    pub(crate) fn new(
        buffer: DeviceSlice<'m>,
        addr: DeviceAddr,
        writable: bool,
        token: UsedToken,
    ) -> Self {
        Self {
            buffer,
            addr,
            writable,
            token,
        }
    }

    /// The buffer's bytes (peer memory: copy them out once).
    #[inline]
    pub fn buffer(&self) -> DeviceSlice<'m> {
        self.buffer
    }

    /// Whether the descriptor is device-writable.
    #[inline]
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// What to pass to `add_used`.
    #[inline]
    pub fn token(&self) -> UsedToken {
        self.token
    }

    /// Makes `chain` this one-buffer chain, as [`DeviceQueue::pop_into`] would have (to handle it with code made
    /// for chains, or to keep it for later).
    #[inline]
    pub fn to_chain(&self, chain: &mut Chain) {
        // `u32` by construction: the descriptor's length field.
        let len = u32::try_from(self.buffer.len()).unwrap_or(u32::MAX);
        chain.fill_single(self.addr, len, self.writable, self.token);
    }
}

/// Available chains whose buffers a device queue keeps prefetched ahead of its pops.
pub(crate) const PREFETCH_AHEAD: u16 = 16;

/// The look-ahead is refilled when no more than this many prefetched chains are left.
pub(crate) const PREFETCH_REFILL_AT: u16 = 8;

/// Prefetches the start of the buffer `[addr, addr + len)` if it lies in `memory` (a hint: anything else is left
/// for the pop to report).
#[inline(always)]
pub(crate) fn prefetch_buffer<M: RingMemory + ?Sized>(memory: &M, addr: u64, len: u32) {
    let span = (len as usize).min(PREFETCH_SPAN);
    if span == 0 {
        return;
    }
    if let Some(ptr) = memory.translate(DeviceAddr::new(addr), span) {
        prefetch_lines(ptr.as_ptr(), span);
    }
}

/// Marks a queue broken on a peer fault (see [`Error::is_peer_fault`]) and returns the error.
#[inline]
pub(crate) fn peer_fault(broken: &mut bool, error: Error) -> Error {
    if error.is_peer_fault() {
        *broken = true;
    }
    error
}

macro_rules! dispatch {
    ($self:expr, $q:ident => $body:expr) => {
        match $self {
            Self::Split($q) => $body,
            Self::Packed($q) => $body,
        }
    };
}

/// A live device-side queue: split or packed, chosen from the negotiated features at activation.
#[derive(Debug)]
pub enum DeviceQueue<M> {
    /// Split ring.
    Split(SplitDeviceQueue<M>),
    /// Packed ring.
    Packed(PackedDeviceQueue<M>),
}

impl<M: RingMemory> DeviceQueue<M> {
    /// Validates `config` against `features` and `memory` and returns the live queue.
    pub fn activate(config: &QueueConfig, features: Features, memory: M) -> Result<Self> {
        let ring = RingFeatures::from_features(features);
        if ring.packed {
            PackedDeviceQueue::activate(config, ring, memory).map(Self::Packed)
        } else {
            SplitDeviceQueue::activate(config, ring, memory).map(Self::Split)
        }
    }

    /// Pops the next available chain into `chain`; `false` when none is available.
    #[inline]
    pub fn pop_into(&mut self, chain: &mut Chain) -> Result<bool> {
        dispatch!(self, q => q.pop_into(chain))
    }

    /// As [`pop_into`](Self::pop_into) (the same checks, in the same order, each shared field read once), except
    /// that a chain of one direct descriptor (the usual TX and RX chain) is returned as a [`SingleBuffer`], its
    /// buffer already translated, and `chain` is left alone: the caller uses it without reading a chain back or
    /// translating the buffer again.
    #[inline]
    pub fn pop_buffer(&mut self, chain: &mut Chain) -> Result<Popped<'_>> {
        dispatch!(self, q => q.pop_buffer(chain))
    }

    /// Pops the next available chain into the queue's scratch chain.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<ChainRef<'_, M>>> {
        dispatch!(self, q => q.pop())
    }

    /// Returns a chain with `len` bytes written.
    #[inline]
    pub fn add_used(&mut self, token: UsedToken, len: u32) -> Result<()> {
        dispatch!(self, q => q.add_used(token, len))
    }

    /// Returns several chains at once.
    #[inline]
    pub fn add_used_batch(&mut self, used: &[(UsedToken, u32)]) -> Result<()> {
        dispatch!(self, q => q.add_used_batch(used))
    }

    /// Returns an in-order batch with one used element (VIRTIO_F_IN_ORDER).
    #[inline]
    pub fn add_used_in_order(&mut self, batch: &InOrderBatch, len: u32) -> Result<()> {
        dispatch!(self, q => q.add_used_in_order(batch, len))
    }

    /// Whether the driver wants an interrupt now.
    #[inline]
    pub fn needs_notification(&mut self) -> bool {
        dispatch!(self, q => q.needs_notification())
    }

    /// Re-enables driver notifications; `true` if buffers arrived meanwhile.
    #[inline]
    pub fn enable_notification(&mut self) -> Result<bool> {
        dispatch!(self, q => q.enable_notification())
    }

    /// Suppresses driver notifications (a hint).
    #[inline]
    pub fn disable_notification(&mut self) {
        dispatch!(self, q => q.disable_notification())
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        dispatch!(self, q => q.size())
    }

    /// Where the device will look for the next available buffer, in the terms of NOTIFICATION_DATA: split rings give
    /// the low 15 bits of the available index and its bit 15; packed rings the ring position and wrap counter.
    pub fn next_avail(&self) -> (u16, bool) {
        match self {
            Self::Split(q) => (q.next_avail() & 0x7fff, q.next_avail() & 0x8000 != 0),
            Self::Packed(q) => q.next_avail(),
        }
    }

    /// Whether a notification's data says buffers are available beyond what the device has consumed (a driver
    /// notification with VIRTIO_F_NOTIFICATION_DATA, virtio 1.3 §2.9).
    pub fn notification_announces_work(&self, data: NotificationData) -> bool {
        self.next_avail() != (data.next_off, data.next_wrap)
    }

    /// The memory the queue lives in.
    pub fn memory(&self) -> &M {
        dispatch!(self, q => q.memory())
    }

    /// The configuration it was activated with.
    pub fn config(&self) -> &QueueConfig {
        dispatch!(self, q => q.config())
    }

    /// Whether a peer fault stopped the queue.
    pub fn is_broken(&self) -> bool {
        dispatch!(self, q => q.is_broken())
    }

    /// A chain buffer sized for this queue (pop into it without allocating).
    pub fn new_chain(&self) -> Chain {
        Chain::with_capacity(usize::from(self.size()))
    }

    /// Stops the queue (device or per-queue reset) and returns its configuration and memory.
    pub fn into_parts(self) -> (QueueConfig, M) {
        dispatch!(self, q => q.into_parts())
    }
}

/// A driver-side queue: split or packed, chosen from the negotiated features.
#[derive(Debug)]
pub enum DriverQueue<M, T> {
    /// Split ring.
    Split(SplitDriverQueue<M, T>),
    /// Packed ring.
    Packed(PackedDriverQueue<M, T>),
}

impl<M: RingMemory, T> DriverQueue<M, T> {
    /// Initialises a queue whose areas are at the addresses in `config` (zeroing them).
    pub fn new(
        config: &QueueConfig,
        features: Features,
        memory: M,
        indirect: Option<IndirectPool>,
    ) -> Result<Self> {
        let ring = RingFeatures::from_features(features);
        if ring.packed {
            PackedDriverQueue::new(config, ring, memory, indirect).map(Self::Packed)
        } else {
            SplitDriverQueue::new(config, ring, memory, indirect).map(Self::Split)
        }
    }

    /// Makes a chain available; returns its head index (split) or buffer id (packed).
    #[inline]
    pub fn add(&mut self, readable: &[Buffer], writable: &[Buffer], token: T) -> Result<u16> {
        dispatch!(self, q => q.add(readable, writable, token))
    }

    /// As [`add`](Self::add), but the device does not see the chain until [`publish`](Self::publish) or
    /// [`kick_prepare`](Self::kick_prepare): a burst of chains costs one publishing store (split: `avail.idx`;
    /// packed: the first head's flags, written last).
    #[inline]
    pub fn add_unpublished(
        &mut self,
        readable: &[Buffer],
        writable: &[Buffer],
        token: T,
    ) -> Result<u16> {
        dispatch!(self, q => q.add_unpublished(readable, writable, token))
    }

    /// Makes the chains added with [`add_unpublished`](Self::add_unpublished) visible to the device.
    #[inline]
    pub fn publish(&mut self) {
        dispatch!(self, q => q.publish())
    }

    /// Chains added with [`add_unpublished`](Self::add_unpublished) and not yet published.
    pub fn unpublished(&self) -> u16 {
        dispatch!(self, q => q.unpublished())
    }

    /// Whether the device wants a notification for what was added since the last call. Publishes pending chains
    /// first.
    #[inline]
    pub fn kick_prepare(&mut self) -> bool {
        dispatch!(self, q => q.kick_prepare())
    }

    /// Notification value with VIRTIO_F_NOTIFICATION_DATA.
    pub fn notification_data(&self, queue: u16) -> NotificationData {
        dispatch!(self, q => q.notification_data(queue))
    }

    /// Collects the next used buffer.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>> {
        dispatch!(self, q => q.pop_used())
    }

    /// Collects every used buffer returned so far, handing each to `out` in order; returns how many. Cheaper than
    /// a `pop_used` loop: with VIRTIO_F_IN_ORDER one used element retires a whole batch in a tight loop.
    #[inline]
    pub fn pop_used_batch(&mut self, out: impl FnMut(Used<T>)) -> Result<usize> {
        dispatch!(self, q => q.pop_used_batch(out))
    }

    /// Whether used buffers are waiting.
    #[inline]
    pub fn has_used(&self) -> bool {
        dispatch!(self, q => q.has_used())
    }

    /// Re-enables interrupts; `false` if used buffers arrived meanwhile.
    #[inline]
    pub fn enable_callbacks(&mut self) -> bool {
        dispatch!(self, q => q.enable_callbacks())
    }

    /// Suppresses interrupts (a hint).
    #[inline]
    pub fn disable_callbacks(&mut self) {
        dispatch!(self, q => q.disable_callbacks())
    }

    /// Free descriptor slots.
    pub fn num_free(&self) -> u16 {
        dispatch!(self, q => q.num_free())
    }

    /// Buffers in flight.
    pub fn in_flight(&self) -> u16 {
        dispatch!(self, q => q.in_flight())
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        dispatch!(self, q => q.size())
    }

    /// The configuration to give the transport.
    pub fn config(&self) -> &QueueConfig {
        dispatch!(self, q => q.config())
    }

    /// Whether a device fault stopped the queue.
    pub fn is_broken(&self) -> bool {
        dispatch!(self, q => q.is_broken())
    }

    /// The memory the queue lives in.
    pub fn memory(&self) -> &M {
        dispatch!(self, q => q.memory())
    }

    /// Takes back all buffers in flight and re-initialises the ring (after a device or queue reset).
    pub fn reset(&mut self) -> Vec<T> {
        dispatch!(self, q => q.reset().collect())
    }
}
