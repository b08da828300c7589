//! Packed virtqueues (virtio 1.3 §2.8) in both roles.
//!
//! Layout (little-endian):
//! - descriptor ring: `size` × `{ addr: u64, len: u32, id: u16, flags: u16 }` (§2.8.13), 16-aligned;
//! - driver area: driver event suppression { off_wrap: u16, flags: u16 } (§2.8.14), written by the driver;
//! - device area: device event suppression, same layout, written by the device.
//!
//! A descriptor is available when its AVAIL bit equals the driver's wrap counter and its USED bit differs; it is used
//! when both bits equal the device's wrap counter.

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use crate::chain::{Chain, ChainBuilder, ChainRef};
use crate::error::{Error, Result};
use crate::memory::{DeviceAddr, DeviceSlice, RingMemory, RingRegion};
use crate::queue::{
    need_event, NotificationData, QueueConfig, RingFeatures, RingFormat, UsedToken,
};
use crate::ring::{
    finish_started_batch, peer_fault, prefetch_buffer, Buffer, InOrderBatch, InOrderTracker,
    IndirectPool, Popped, SingleBuffer, Used, PREFETCH_AHEAD, PREFETCH_REFILL_AT,
};
use crate::spec::ring::{
    DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED,
    PACKED_EVENT_FLAG_DESC, PACKED_EVENT_FLAG_DISABLE, PACKED_EVENT_FLAG_ENABLE,
};

const DESC_SIZE: usize = 16;
const MAX_INDIRECT_ENTRIES: u32 = 1024;

#[inline(always)]
fn avail_flags(wrap: bool) -> u16 {
    if wrap {
        PACKED_DESC_F_AVAIL
    } else {
        PACKED_DESC_F_USED
    }
}

#[inline(always)]
fn used_flags(wrap: bool) -> u16 {
    if wrap {
        PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED
    } else {
        0
    }
}

#[inline(always)]
fn is_available(flags: u16, wrap: bool) -> bool {
    (flags & PACKED_DESC_F_AVAIL != 0) == wrap && (flags & PACKED_DESC_F_USED != 0) != wrap
}

#[inline(always)]
fn is_used(flags: u16, wrap: bool) -> bool {
    (flags & PACKED_DESC_F_AVAIL != 0) == wrap && (flags & PACKED_DESC_F_USED != 0) == wrap
}

/// Advances a ring position by `by` slots, flipping the wrap counter when it passes the end.
#[inline(always)]
fn advance(pos: &mut u16, wrap: &mut bool, by: u16, size: u16) {
    let next = u32::from(*pos) + u32::from(by);
    if next >= u32::from(size) {
        *pos = u16::try_from(next - u32::from(size)).unwrap_or(0);
        *wrap = !*wrap;
    } else {
        *pos = u16::try_from(next).unwrap_or(0);
    }
}

/// Decides a notification from an event suppression structure (`off_wrap | flags << 16`), for an index that moved
/// from `new - moved` to `new` under wrap counter `wrap` (Linux `virtqueue_kick_prepare_packed`).
#[inline(always)]
fn event_wants(
    event: u32,
    event_idx: bool,
    new: u16,
    moved: u16,
    wrap: bool,
    size: u16,
    first: bool,
) -> bool {
    #[allow(clippy::cast_possible_truncation)] // the two u16 halves of the snapshot
    let (off_wrap, flags) = (event as u16, (event >> 16) as u16);
    match flags {
        PACKED_EVENT_FLAG_DISABLE => false,
        PACKED_EVENT_FLAG_DESC if event_idx => {
            let mut at = off_wrap & 0x7fff;
            if (off_wrap >> 15 != 0) != wrap {
                at = at.wrapping_sub(size);
            }
            first || need_event(at, new, new.wrapping_sub(moved))
        }
        // ENABLE, DESC without EVENT_IDX, and reserved values: notify rather than risk a stall.
        _ => true,
    }
}

fn event_value(flags: u16, pos: u16, wrap: bool) -> u32 {
    u32::from(pos | (u16::from(wrap) << 15)) | (u32::from(flags) << 16)
}

/// Asks the peer for notifications through our event suppression structure (at `pos`/`wrap` with EVENT_IDX), then
/// issues the full barrier that pairs with the peer's barrier between publishing its side of the ring and reading
/// this structure: either the peer sees the request, or the caller's re-check sees the peer's work.
fn request_events(area: &RingRegion, event_idx: bool, pos: u16, wrap: bool) {
    let value = if event_idx {
        event_value(PACKED_EVENT_FLAG_DESC, pos, wrap)
    } else {
        event_value(PACKED_EVENT_FLAG_ENABLE, 0, false)
    };
    area.store_u32(0, value, Ordering::Relaxed);
    fence(Ordering::SeqCst);
}

/// The device side of a packed virtqueue.
#[derive(Debug)]
pub struct PackedDeviceQueue<M> {
    memory: M,
    config: QueueConfig,
    features: RingFeatures,
    size: u16,
    desc: RingRegion,
    driver_event: RingRegion,
    device_event: RingRegion,
    next_avail: u16,
    avail_wrap: bool,
    /// Descriptors from `next_avail` on whose buffers were already prefetched (see `prefetch_available`).
    prefetched: u16,
    /// The last look-ahead stopped at a descriptor the driver had not made available yet.
    prefetch_at_frontier: bool,
    next_used: u16,
    used_wrap: bool,
    used_since_signal: u16,
    signalled: bool,
    broken: bool,
    scratch: Chain,
}

impl<M: RingMemory> PackedDeviceQueue<M> {
    /// Validates `config` and starts a live queue at position 0, wrap counters set.
    pub fn activate(config: &QueueConfig, features: RingFeatures, memory: M) -> Result<Self> {
        if !config.ready {
            return Err(Error::QueueNotReady);
        }
        config.validate_size(RingFormat::Packed)?;
        let (desc, driver_event, device_event) =
            crate::split::map_areas(&memory, config, RingFormat::Packed)?;
        Ok(Self {
            memory,
            config: *config,
            features,
            size: config.size,
            desc,
            driver_event,
            device_event,
            next_avail: 0,
            avail_wrap: true,
            prefetched: 0,
            prefetch_at_frontier: false,
            next_used: 0,
            used_wrap: true,
            used_since_signal: 0,
            signalled: false,
            broken: false,
            scratch: Chain::with_capacity(usize::from(config.size)),
        })
    }

    /// The configuration this queue was activated with.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The memory the queue lives in.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether an earlier peer fault stopped the queue.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The ring position and wrap counter of the next descriptor the device will look at.
    pub fn next_avail(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    fn fault<T>(&mut self, error: Error) -> Result<T> {
        if error.is_peer_fault() {
            self.broken = true;
        }
        Err(error)
    }

    #[inline(always)]
    fn flags_at(&self, pos: u16, order: Ordering) -> u16 {
        self.desc.load_u16(usize::from(pos) * DESC_SIZE + 14, order)
    }

    /// Pops the next available chain into `chain`. Returns `false` when nothing is available.
    #[inline(always)]
    pub fn pop_into(&mut self, chain: &mut Chain) -> Result<bool> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        // Acquire pairs with the driver's release store of the head descriptor's flags, written after the rest of
        // the chain.
        let head_flags = self.flags_at(self.next_avail, Ordering::Acquire);
        if !is_available(head_flags, self.avail_wrap) {
            return Ok(false);
        }
        self.prefetch_available();
        match self.read_chain(head_flags, chain) {
            Ok((pos, wrap)) => {
                self.consume(pos, wrap);
                Ok(true)
            }
            Err(e) => self.fault(e),
        }
    }

    /// As [`pop_into`](Self::pop_into), and for a chain of one direct descriptor also its buffer, translated (see
    /// [`DeviceQueue::pop_buffer`](crate::DeviceQueue::pop_buffer)).
    #[inline(always)]
    pub fn pop_buffer(&mut self, chain: &mut Chain) -> Result<Popped<'_>> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        // Acquire: as in `pop_into`.
        let head_flags = self.flags_at(self.next_avail, Ordering::Acquire);
        if !is_available(head_flags, self.avail_wrap) {
            return Ok(Popped::Empty);
        }
        self.prefetch_available();
        // Each field read once; the head's flags are the acquire load above.
        let (addr, len, id, _) = self
            .desc
            .load_descriptor(usize::from(self.next_avail) * DESC_SIZE);
        if head_flags & (DESC_F_NEXT | DESC_F_INDIRECT) != 0 {
            return match self.read_chain_from(head_flags, (addr, len, id), chain) {
                Ok((pos, wrap)) => {
                    self.consume(pos, wrap);
                    Ok(Popped::Chain)
                }
                Err(e) => self.fault(e),
            };
        }
        // One direct descriptor: the checks of `read_chain`'s fast path, in its order (the buffer lies in memory,
        // then the buffer id), with the translation kept for the caller and no chain built.
        let buffer_addr = DeviceAddr::new(addr);
        let Some(buffer) = DeviceSlice::new(&self.memory, buffer_addr, len as usize) else {
            return Err(peer_fault(
                &mut self.broken,
                Error::BufferOutOfMemory {
                    addr: buffer_addr,
                    len,
                },
            ));
        };
        if id >= self.size {
            return Err(peer_fault(
                &mut self.broken,
                Error::BufferIdOutOfRange {
                    id,
                    size: self.size,
                },
            ));
        }
        let writable = head_flags & DESC_F_WRITE != 0;
        let token = UsedToken { id, descriptors: 1 };
        advance(&mut self.next_avail, &mut self.avail_wrap, 1, self.size);
        self.prefetched = self.prefetched.saturating_sub(1);
        Ok(Popped::Single(SingleBuffer::new(
            buffer,
            buffer_addr,
            writable,
            token,
        )))
    }

    /// Moves past a popped chain that ends before `(pos, wrap)`.
    #[inline(always)]
    fn consume(&mut self, pos: u16, wrap: bool) {
        let slots = if wrap == self.avail_wrap {
            pos.wrapping_sub(self.next_avail)
        } else {
            pos.wrapping_add(self.size).wrapping_sub(self.next_avail)
        };
        self.prefetched = self.prefetched.saturating_sub(slots);
        self.next_avail = pos;
        self.avail_wrap = wrap;
    }

    /// Look-ahead over descriptors the driver made available: keeps the buffers of the next [`PREFETCH_AHEAD`]
    /// descriptors on their way into the cache (see `SplitDeviceQueue::prefetch_available`). Once it has met a
    /// descriptor not yet available it waits until the pops catch up before probing again, so that it does not
    /// keep pulling away the line the driver is writing.
    #[inline(always)]
    fn prefetch_available(&mut self) {
        if self.prefetched > PREFETCH_REFILL_AT
            || (self.prefetch_at_frontier && self.prefetched != 0)
        {
            return;
        }
        self.prefetch_more();
    }

    #[inline(never)]
    fn prefetch_more(&mut self) {
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        advance(&mut pos, &mut wrap, self.prefetched, self.size);
        let ahead = PREFETCH_AHEAD.min(self.size);
        self.prefetch_at_frontier = false;
        while self.prefetched < ahead {
            // Acquire: as in `pop_into`, the descriptor's other fields are read after its flags.
            let flags = self.flags_at(pos, Ordering::Acquire);
            if !is_available(flags, wrap) {
                self.prefetch_at_frontier = true;
                break;
            }
            if flags & DESC_F_INDIRECT == 0 {
                let (addr, len, _, _) = self.desc.load_descriptor(usize::from(pos) * DESC_SIZE);
                prefetch_buffer(&self.memory, addr, len);
            }
            advance(&mut pos, &mut wrap, 1, self.size);
            self.prefetched += 1;
        }
    }

    /// Pops the next available chain into the queue's own scratch chain.
    pub fn pop(&mut self) -> Result<Option<ChainRef<'_, M>>> {
        let mut scratch = core::mem::replace(&mut self.scratch, Chain::with_capacity(0));
        let result = self.pop_into(&mut scratch);
        self.scratch = scratch;
        match result {
            Ok(true) => Ok(Some(ChainRef {
                chain: &self.scratch,
                memory: &self.memory,
            })),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[inline(always)]
    fn read_chain(&self, head_flags: u16, chain: &mut Chain) -> Result<(u16, bool)> {
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        // One bounds check for the whole descriptor; each field is read once here. The head's flags were read
        // (acquire) by the caller and are not taken from this load.
        let (addr, len, id, _) = self.desc.load_descriptor(usize::from(pos) * DESC_SIZE);
        if head_flags & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 {
            // One direct descriptor (the usual TX and RX chain): the checks of the general path below that can
            // apply to it (the buffer id; the buffer lies in memory).
            chain.set_single(
                &self.memory,
                DeviceAddr::new(addr),
                len,
                head_flags & DESC_F_WRITE != 0,
                UsedToken { id, descriptors: 1 },
            )?;
            if id >= self.size {
                return Err(Error::BufferIdOutOfRange {
                    id,
                    size: self.size,
                });
            }
            advance(&mut pos, &mut wrap, 1, self.size);
            return Ok((pos, wrap));
        }
        self.read_chain_from(head_flags, (addr, len, id), chain)
    }

    /// The general path of [`read_chain`](Self::read_chain), from the head descriptor's fields (address, length,
    /// id; its flags `head_flags`) already read.
    #[inline(always)]
    fn read_chain_from(
        &self,
        head_flags: u16,
        (mut addr, mut len, mut id): (u64, u32, u16),
        chain: &mut Chain,
    ) -> Result<(u16, bool)> {
        let size = u32::from(self.size);
        let (mut pos, mut wrap) = (self.next_avail, self.avail_wrap);
        let mut builder = chain.begin();
        let mut slots: u16 = 0;
        let mut flags = head_flags;
        builder.count(size)?;
        loop {
            let buffer = DeviceAddr::new(addr);
            slots += 1;
            advance(&mut pos, &mut wrap, 1, self.size);
            if flags & DESC_F_INDIRECT != 0 {
                if !self.features.indirect {
                    return Err(Error::IndirectNotNegotiated);
                }
                if slots != 1 || flags & DESC_F_NEXT != 0 {
                    return Err(Error::IndirectWithNext);
                }
                self.read_indirect(&mut builder, buffer, len)?;
            } else {
                builder.push(&self.memory, buffer, len, flags & DESC_F_WRITE != 0)?;
            }
            if flags & DESC_F_NEXT == 0 || flags & DESC_F_INDIRECT != 0 {
                // The buffer id is in the last descriptor of the chain (virtio 1.3 §2.8.6).
                if id >= self.size {
                    return Err(Error::BufferIdOutOfRange {
                        id,
                        size: self.size,
                    });
                }
                builder.finish(id, slots);
                return Ok((pos, wrap));
            }
            // The next descriptor, read once. Written before the head's flags, so visible after the acquire on
            // them; its flags are checked anyway, since a driver that publishes a head before its tail is broken.
            builder.count(size)?;
            let next_flags;
            (addr, len, id, next_flags) = self.desc.load_descriptor(usize::from(pos) * DESC_SIZE);
            flags = next_flags;
            if !is_available(flags, wrap) {
                return Err(Error::PackedDescriptorNotAvailable { index: pos });
            }
        }
    }

    fn read_indirect(
        &self,
        builder: &mut ChainBuilder<'_>,
        addr: DeviceAddr,
        len: u32,
    ) -> Result<()> {
        if len == 0 || len % 16 != 0 || len / 16 > MAX_INDIRECT_ENTRIES.max(u32::from(self.size)) {
            return Err(Error::IndirectTableLength { len });
        }
        let table = DeviceSlice::new(&self.memory, addr, len as usize)
            .ok_or(Error::BufferOutOfMemory { addr, len })?;
        // Packed indirect tables are used sequentially; only WRITE is meaningful (virtio 1.3 §2.8.20).
        for index in 0..(len / 16) as usize {
            let mut raw = [0u8; 16];
            table.read_at(index * 16, &mut raw);
            let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, _, _, f0, f1] = raw;
            let flags = u16::from_le_bytes([f0, f1]);
            if flags & DESC_F_INDIRECT != 0 {
                return Err(Error::NestedIndirect);
            }
            let addr = DeviceAddr::new(u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]));
            builder.push(
                &self.memory,
                addr,
                u32::from_le_bytes([l0, l1, l2, l3]),
                flags & DESC_F_WRITE != 0,
            )?;
        }
        Ok(())
    }

    fn check_token(&self, token: UsedToken) -> Result<()> {
        if token.id >= self.size || token.descriptors == 0 || token.descriptors > self.size {
            return Err(Error::InvalidUsedToken {
                id: token.id,
                size: self.size,
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn write_used_elem(&mut self, id: u16, len: u32, publish: Option<Ordering>) -> u16 {
        let pos = self.next_used;
        let base = usize::from(pos) * DESC_SIZE;
        self.desc.store_u32(base + 8, len, Ordering::Relaxed);
        self.desc.store_u16(base + 12, id, Ordering::Relaxed);
        let flags = used_flags(self.used_wrap) | if len != 0 { DESC_F_WRITE } else { 0 };
        if let Some(order) = publish {
            // Release pairs with the driver's acquire load of these flags before it reads id and len.
            self.desc.store_u16(base + 14, flags, order);
        }
        flags
    }

    fn advance_used(&mut self, slots: u16) {
        advance(&mut self.next_used, &mut self.used_wrap, slots, self.size);
        self.used_since_signal = self.used_since_signal.wrapping_add(slots);
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn add_used(&mut self, token: UsedToken, len: u32) -> Result<()> {
        self.check_token(token)?;
        self.write_used_elem(token.id, len, Some(Ordering::Release));
        self.advance_used(token.descriptors);
        Ok(())
    }

    /// Returns several chains; the first element's flags are written last so the driver sees the batch at once.
    pub fn add_used_batch(&mut self, used: &[(UsedToken, u32)]) -> Result<()> {
        for &(token, _) in used {
            self.check_token(token)?;
        }
        let Some(((first_token, first_len), rest)) = used.split_first() else {
            return Ok(());
        };
        let first_pos = self.next_used;
        let first_flags = self.write_used_elem(first_token.id, *first_len, None);
        self.advance_used(first_token.descriptors);
        for &(token, len) in rest {
            // len, id and flags in one store: the driver reads none of them before the first element's flags
            // (stored last, below) are published.
            let flags = used_flags(self.used_wrap) | if len != 0 { DESC_F_WRITE } else { 0 };
            let word = u64::from(len) | u64::from(token.id) << 32 | u64::from(flags) << 48;
            self.desc.store_u64(
                usize::from(self.next_used) * DESC_SIZE + 8,
                word,
                Ordering::Relaxed,
            );
            self.advance_used(token.descriptors);
        }
        // Release publishes the whole batch: the driver reads in ring order and starts at the first element.
        self.desc.store_u16(
            usize::from(first_pos) * DESC_SIZE + 14,
            first_flags,
            Ordering::Release,
        );
        Ok(())
    }

    /// With VIRTIO_F_IN_ORDER: returns a batch of chains used in order with a single used descriptor naming the
    /// last (virtio 1.3 §2.8.11).
    pub fn add_used_in_order(&mut self, batch: &InOrderBatch, len: u32) -> Result<()> {
        let Some(last) = batch.last() else {
            return Err(Error::InOrderNotNegotiated);
        };
        if !self.features.in_order {
            return Err(Error::InOrderNotNegotiated);
        }
        self.check_token(last)?;
        if batch.descriptors() > self.size {
            return Err(Error::InvalidUsedToken {
                id: last.id,
                size: self.size,
            });
        }
        self.write_used_elem(last.id, len, Some(Ordering::Release));
        self.advance_used(batch.descriptors());
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was used since the last call (driver event suppression).
    pub fn needs_notification(&mut self) -> bool {
        // Pairs with the driver's barrier in `enable_callbacks` between writing its event suppression and
        // re-checking the ring.
        fence(Ordering::SeqCst);
        let event = self.driver_event.load_u32(0, Ordering::Relaxed);
        let moved = core::mem::take(&mut self.used_since_signal);
        let first = !core::mem::replace(&mut self.signalled, true);
        if moved == 0 && !first {
            return false;
        }
        event_wants(
            event,
            self.features.event_idx,
            self.next_used,
            moved,
            self.used_wrap,
            self.size,
            first,
        )
    }

    /// Asks the driver to notify again, then re-checks for buffers that raced with the request. Returns `true` if a
    /// chain is available.
    pub fn enable_notification(&mut self) -> Result<bool> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        // The barrier pairs with the driver's in `kick_prepare`.
        request_events(
            &self.device_event,
            self.features.event_idx,
            self.next_avail,
            self.avail_wrap,
        );
        Ok(is_available(
            self.flags_at(self.next_avail, Ordering::Acquire),
            self.avail_wrap,
        ))
    }

    /// Asks the driver not to notify (a hint).
    pub fn disable_notification(&mut self) {
        self.device_event.store_u32(
            0,
            event_value(PACKED_EVENT_FLAG_DISABLE, 0, false),
            Ordering::Relaxed,
        );
    }

    /// Stops the queue and returns its configuration and memory.
    pub fn into_parts(self) -> (QueueConfig, M) {
        (self.config, self.memory)
    }
}

#[derive(Debug)]
struct IdState<T> {
    next_free: u16,
    token: Option<T>,
    descriptors: u16,
    writable: u32,
}

/// The driver side of a packed virtqueue.
#[derive(Debug)]
pub struct PackedDriverQueue<M, T> {
    memory: M,
    config: QueueConfig,
    features: RingFeatures,
    size: u16,
    desc: RingRegion,
    driver_event: RingRegion,
    device_event: RingRegion,
    indirect: Option<(IndirectPool, RingRegion)>,
    ids: Vec<IdState<T>>,
    free_id: u16,
    num_free: u16,
    in_flight: u16,
    next_avail: u16,
    avail_wrap: bool,
    num_added: u16,
    /// The first unpublished head (ring position, flags to store) while chains await `publish`.
    pending_head: Option<(u16, u16)>,
    /// Chains added and not yet published.
    unpublished: u16,
    last_used: u16,
    used_wrap: bool,
    callbacks: bool,
    broken: bool,
    in_order: InOrderTracker,
}

impl<M: RingMemory, T> PackedDriverQueue<M, T> {
    /// Initialises (zeroes) the ring areas named by `config`.
    pub fn new(
        config: &QueueConfig,
        features: RingFeatures,
        memory: M,
        indirect: Option<IndirectPool>,
    ) -> Result<Self> {
        config.validate_size(RingFormat::Packed)?;
        let (desc, driver_event, device_event) =
            crate::split::map_areas(&memory, config, RingFormat::Packed)?;
        let indirect = match indirect {
            Some(pool) if features.indirect => Some((pool, pool.map(&memory, config.size)?)),
            _ => None,
        };
        let size = config.size;
        let mut ids = Vec::with_capacity(usize::from(size));
        ids.extend((0..size).map(|i| IdState {
            next_free: i + 1,
            token: None,
            descriptors: 0,
            writable: 0,
        }));
        let mut queue = Self {
            memory,
            config: *config,
            features,
            size,
            desc,
            driver_event,
            device_event,
            indirect,
            ids,
            free_id: 0,
            num_free: size,
            in_flight: 0,
            next_avail: 0,
            avail_wrap: true,
            num_added: 0,
            pending_head: None,
            unpublished: 0,
            last_used: 0,
            used_wrap: true,
            callbacks: true,
            broken: false,
            in_order: InOrderTracker::new(features.in_order, size),
        };
        queue.reinit();
        Ok(queue)
    }

    fn reinit(&mut self) {
        self.desc.zero();
        self.driver_event.zero();
        self.device_event.zero();
        for (i, state) in (1u16..).zip(self.ids.iter_mut()) {
            state.next_free = i;
            state.descriptors = 0;
            state.writable = 0;
        }
        self.free_id = 0;
        self.num_free = self.size;
        self.in_flight = 0;
        self.next_avail = 0;
        self.avail_wrap = true;
        self.num_added = 0;
        self.pending_head = None;
        self.unpublished = 0;
        self.last_used = 0;
        self.used_wrap = true;
        self.callbacks = true;
        self.broken = false;
        self.in_order.clear();
    }

    /// The configuration to hand the transport.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptor slots.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Buffers in flight.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether an earlier device fault stopped the queue.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The memory the queue lives in.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    fn fault<R>(&mut self, error: Error) -> Result<R> {
        self.broken = true;
        Err(error)
    }

    /// Makes a chain of device-readable then device-writable buffers available with `token`. The chain is published
    /// (its head's flags stored with release) before this returns, together with any chains
    /// [`add_unpublished`](Self::add_unpublished) left pending.
    pub fn add(&mut self, readable: &[Buffer], writable: &[Buffer], token: T) -> Result<u16> {
        let id = self.add_unpublished(readable, writable, token)?;
        self.publish();
        Ok(id)
    }

    /// As [`add`](Self::add), but the device does not see the chain until [`publish`](Self::publish) (or
    /// [`kick_prepare`](Self::kick_prepare), which publishes first): the flags of the first pending head are
    /// withheld and stored last, with release, so a burst costs one publishing store.
    #[inline]
    pub fn add_unpublished(
        &mut self,
        readable: &[Buffer],
        writable: &[Buffer],
        token: T,
    ) -> Result<u16> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        match (readable, writable) {
            ([buffer], []) => self.add_single(buffer, 0, token),
            ([], [buffer]) => self.add_single(buffer, DESC_F_WRITE, token),
            _ => self.add_chain(readable, writable, token),
        }
    }

    /// Makes the chains added with [`add_unpublished`](Self::add_unpublished) visible to the device (the release
    /// store of the first pending head's flags). Does nothing if none are pending.
    #[inline]
    pub fn publish(&mut self) {
        self.unpublished = 0;
        if let Some((pos, flags)) = self.pending_head.take() {
            // Release pairs with the device's acquire load of the head flags: every chain added since (written
            // before this store, later heads included) is visible first.
            self.desc
                .store_u16(usize::from(pos) * DESC_SIZE + 14, flags, Ordering::Release);
        }
    }

    /// Chains added with [`add_unpublished`](Self::add_unpublished) and not yet published.
    pub fn unpublished(&self) -> u16 {
        self.unpublished
    }

    /// Takes a free buffer id for a chain of `needed` ring slots.
    #[inline(always)]
    fn take_id(&mut self, needed: u16, token: T, writable: u32) -> Result<u16> {
        if needed > self.num_free {
            return Err(Error::QueueFull {
                needed,
                free: self.num_free,
            });
        }
        let id = self.free_id;
        let Some(state) = self.ids.get_mut(usize::from(id)) else {
            return Err(Error::QueueFull { needed, free: 0 });
        };
        self.free_id = state.next_free;
        state.token = Some(token);
        state.descriptors = needed;
        state.writable = writable;
        Ok(id)
    }

    /// Stores a head's flags: withheld if it is the first unpublished head, else relaxed (the first head's release
    /// store in `publish` makes it visible; the device reads heads in ring order).
    #[inline(always)]
    fn make_available(&mut self, id: u16, head: u16, head_flags: u16, needed: u16) {
        self.num_free -= needed;
        self.num_added = self.num_added.wrapping_add(needed);
        self.in_flight += 1;
        self.unpublished += 1;
        self.in_order.push(id);
        if self.pending_head.is_none() {
            self.pending_head = Some((head, head_flags));
        } else {
            self.desc.store_u16(
                usize::from(head) * DESC_SIZE + 14,
                head_flags,
                Ordering::Relaxed,
            );
        }
    }

    /// One buffer, one descriptor: the common case without the generic chain walk.
    #[inline(always)]
    fn add_single(&mut self, buffer: &Buffer, write: u16, token: T) -> Result<u16> {
        if buffer.len == 0 {
            return Err(Error::EmptyBuffer);
        }
        let writable = if write != 0 { buffer.len } else { 0 };
        let id = self.take_id(1, token, writable)?;
        let head = self.next_avail;
        let head_flags = avail_flags(self.avail_wrap) | write;
        self.desc.store_descriptor_body(
            usize::from(head) * DESC_SIZE,
            buffer.addr.raw(),
            buffer.len,
            id,
        );
        advance(&mut self.next_avail, &mut self.avail_wrap, 1, self.size);
        self.make_available(id, head, head_flags, 1);
        Ok(id)
    }

    fn add_chain(&mut self, readable: &[Buffer], writable: &[Buffer], token: T) -> Result<u16> {
        let (total, writable_len) = crate::ring::check_buffers(readable, writable)?;
        let use_indirect = matches!(&self.indirect, Some((pool, _)) if total > 1 && total <= usize::from(pool.entries_per_chain));
        let needed = if use_indirect {
            1
        } else {
            u16::try_from(total).unwrap_or(u16::MAX)
        };
        let id = self.take_id(needed, token, writable_len)?;
        let head = self.next_avail;
        let head_wrap = self.avail_wrap;
        let mut head_flags = avail_flags(head_wrap);
        let buffers = readable
            .iter()
            .map(|b| (b, 0))
            .chain(writable.iter().map(|b| (b, DESC_F_WRITE)));
        if use_indirect {
            if let Some((pool, table)) = &self.indirect {
                let base = usize::from(id) * usize::from(pool.entries_per_chain) * DESC_SIZE;
                for (i, (buffer, write)) in buffers.enumerate() {
                    table.store_descriptor(
                        base + i * DESC_SIZE,
                        buffer.addr.raw(),
                        buffer.len,
                        0,
                        write,
                    );
                }
                let len = u32::try_from(total * DESC_SIZE).unwrap_or(u32::MAX);
                self.desc.store_descriptor_body(
                    usize::from(head) * DESC_SIZE,
                    pool.table_addr(id).raw(),
                    len,
                    id,
                );
                head_flags |= DESC_F_INDIRECT;
            }
            advance(&mut self.next_avail, &mut self.avail_wrap, 1, self.size);
        } else {
            let (mut pos, mut wrap) = (head, head_wrap);
            for (i, (buffer, write)) in buffers.enumerate() {
                let next = if i + 1 < total { DESC_F_NEXT } else { 0 };
                let base = usize::from(pos) * DESC_SIZE;
                if i == 0 {
                    self.desc
                        .store_descriptor_body(base, buffer.addr.raw(), buffer.len, id);
                    head_flags |= write | next;
                } else {
                    // Tail descriptors become visible with the head's release store.
                    self.desc.store_descriptor(
                        base,
                        buffer.addr.raw(),
                        buffer.len,
                        id,
                        avail_flags(wrap) | write | next,
                    );
                }
                advance(&mut pos, &mut wrap, 1, self.size);
            }
            self.next_avail = pos;
            self.avail_wrap = wrap;
        }
        self.make_available(id, head, head_flags, needed);
        Ok(id)
    }

    /// Decides whether the device wants a notification for the descriptors added since the last call.
    /// Publishes pending chains first (see [`add_unpublished`](Self::add_unpublished)).
    pub fn kick_prepare(&mut self) -> bool {
        self.publish();
        // Full barrier between publishing descriptors and reading the device's event suppression; pairs with the
        // device's barrier in `enable_notification`.
        fence(Ordering::SeqCst);
        let moved = core::mem::take(&mut self.num_added);
        let event = self.device_event.load_u32(0, Ordering::Relaxed);
        event_wants(
            event,
            self.features.event_idx,
            self.next_avail,
            moved,
            self.avail_wrap,
            self.size,
            false,
        )
    }

    /// The value to write to the notify register with VIRTIO_F_NOTIFICATION_DATA.
    pub fn notification_data(&self, queue: u16) -> NotificationData {
        NotificationData {
            queue,
            next_off: self.next_avail,
            next_wrap: self.avail_wrap,
        }
    }

    /// Whether the device has returned buffers not yet collected.
    pub fn has_used(&self) -> bool {
        self.in_order.batch_pending()
            || is_used(
                self.desc.load_u16(
                    usize::from(self.last_used) * DESC_SIZE + 14,
                    Ordering::Acquire,
                ),
                self.used_wrap,
            )
    }

    /// Collects the next used buffer, validating the id and length the device wrote.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        let (id, len) = match self.in_order.next_in_batch() {
            Some(id) => (id, None),
            None => {
                let Some((id, len)) = self.read_used_desc()? else {
                    return Ok(None);
                };
                match self.in_order.start(id, len) {
                    Some(first) => (first, None),
                    None => (id, Some(len)),
                }
            }
        };
        let finished = self.in_order.finished_len(id);
        let used = self.retire(id, len.or(finished))?;
        self.in_order.retire(id);
        self.request_used_event();
        Ok(Some(used))
    }

    /// Collects every used buffer the device has returned so far, handing each to `out` in order; returns how many.
    /// The checks are those of [`pop_used`](Self::pop_used); with VIRTIO_F_IN_ORDER one used descriptor retires its
    /// whole batch in a tight loop, and the EVENT_IDX request is written once at the end. On a device fault the
    /// buffers before it have been handed out and the error is returned.
    pub fn pop_used_batch(&mut self, mut out: impl FnMut(Used<T>)) -> Result<usize> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        let mut n = finish_started_batch(
            self,
            |q| q.in_order.batch_pending(),
            Self::pop_used,
            &mut out,
        )?;
        let in_order = self.in_order.enabled();
        while let Some((id, len)) = self.read_used_desc()? {
            if !in_order {
                out(self.retire(id, Some(len))?);
                n += 1;
                continue;
            }
            // One descriptor names the last chain of a batch; the ones made available before it are done too.
            loop {
                let Some(front) = self.in_order.pop_front() else {
                    return self.fault(Error::UsedIdNotInFlight { id: u32::from(id) });
                };
                let last = front == id;
                out(self.retire(front, last.then_some(len))?);
                n += 1;
                if last {
                    break;
                }
            }
        }
        if n != 0 {
            // As in `pop_used`, once for the whole batch.
            self.request_used_event();
        }
        Ok(n)
    }

    /// Reads the descriptor at `last_used`: `None` while the device has not marked it used, else its buffer id,
    /// checked to name a chain in flight, and the length the device wrote. Shared by [`pop_used`](Self::pop_used)
    /// and [`pop_used_batch`](Self::pop_used_batch).
    #[inline(always)]
    fn read_used_desc(&mut self) -> Result<Option<(u16, u32)>> {
        let base = usize::from(self.last_used) * DESC_SIZE;
        // Acquire pairs with the device's release store of the flags, written after id and len.
        let flags = self.desc.load_u16(base + 14, Ordering::Acquire);
        if !is_used(flags, self.used_wrap) {
            return Ok(None);
        }
        let id = self.desc.load_u16(base + 12, Ordering::Relaxed);
        let len = self.desc.load_u32(base + 8, Ordering::Relaxed);
        if id >= self.size {
            return self.fault(Error::UsedIdOutOfRange {
                id: u32::from(id),
                size: self.size,
            });
        }
        if self
            .ids
            .get(usize::from(id))
            .is_none_or(|s| s.token.is_none())
        {
            return self.fault(Error::UsedIdNotInFlight { id: u32::from(id) });
        }
        Ok(Some((id, len)))
    }

    /// With EVENT_IDX and callbacks on, asks for an interrupt at the next used descriptor (after a collection).
    #[inline(always)]
    fn request_used_event(&self) {
        if self.features.event_idx && self.callbacks {
            let value = event_value(PACKED_EVENT_FLAG_DESC, self.last_used, self.used_wrap);
            self.driver_event.store_u32(0, value, Ordering::Relaxed);
            // Orders the request before the next read of the ring (Linux `virtio_store_mb` on `off_wrap`).
            fence(Ordering::SeqCst);
        }
    }

    /// Returns the in-flight chain `id` as used with `len` bytes (or all it offered when `None`).
    #[inline(always)]
    fn retire(&mut self, id: u16, len: Option<u32>) -> Result<Used<T>> {
        if self.in_flight <= self.unpublished {
            // Every chain in flight is still unpublished: the device cannot have seen it.
            return self.fault(Error::UsedIdNotInFlight { id: u32::from(id) });
        }
        let Some(state) = self.ids.get_mut(usize::from(id)) else {
            return self.fault(Error::UsedIdNotInFlight { id: u32::from(id) });
        };
        let len = len.unwrap_or(state.writable);
        if len > state.writable {
            let offered = state.writable;
            return self.fault(Error::UsedLengthTooLarge { len, offered });
        }
        let Some(token) = state.token.take() else {
            return self.fault(Error::UsedIdNotInFlight { id: u32::from(id) });
        };
        let descriptors = state.descriptors;
        state.next_free = self.free_id;
        self.free_id = id;
        self.num_free += descriptors;
        self.in_flight -= 1;
        advance(
            &mut self.last_used,
            &mut self.used_wrap,
            descriptors,
            self.size,
        );
        Ok(Used { token, len })
    }

    /// Requests interrupts again. Returns `false` if used buffers arrived meanwhile.
    pub fn enable_callbacks(&mut self) -> bool {
        self.callbacks = true;
        // The barrier pairs with the device's in `needs_notification`.
        request_events(
            &self.driver_event,
            self.features.event_idx,
            self.last_used,
            self.used_wrap,
        );
        !self.has_used()
    }

    /// Asks the device not to interrupt (a hint).
    pub fn disable_callbacks(&mut self) {
        self.callbacks = false;
        self.driver_event.store_u32(
            0,
            event_value(PACKED_EVENT_FLAG_DISABLE, 0, false),
            Ordering::Relaxed,
        );
    }

    /// Takes back every buffer in flight and re-initialises the ring (device or queue reset).
    pub fn reset(&mut self) -> impl Iterator<Item = T> + '_ {
        self.reinit();
        self.ids.iter_mut().filter_map(|s| s.token.take())
    }
}
