//! Split virtqueues (virtio 1.3 §2.7) in both roles.
//!
//! Layout (little-endian):
//! - descriptor table: `size` × `{ addr: u64, len: u32, flags: u16, next: u16 }` (§2.7.5), 16-aligned;
//! - available ring (driver area): flags u16, idx u16, `ring[size]` u16, used_event u16 (§2.7.6), 2-aligned;
//! - used ring (device area): flags u16, idx u16, `ring[size]` { id: u32, len: u32 }, avail_event u16 (§2.7.8),
//!   4-aligned.

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use crate::chain::{Chain, ChainRef};
use crate::error::{Error, Result, RingArea};
use crate::memory::{DeviceAddr, DeviceSlice, RingMemory, RingRegion};
use crate::queue::{need_event, QueueConfig, RingFeatures, RingFormat, RingLayout, UsedToken};
use crate::ring::{
    finish_started_batch, peer_fault, prefetch_buffer, Buffer, InOrderBatch, InOrderTracker,
    IndirectPool, Popped, SingleBuffer, Used, PREFETCH_AHEAD, PREFETCH_REFILL_AT,
};
use crate::spec::ring::{
    AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, USED_F_NO_NOTIFY,
};

const DESC_SIZE: usize = 16;
const AVAIL_IDX: usize = 2;
const USED_IDX: usize = 2;
/// Most entries an indirect table may have (QEMU's VIRTQUEUE_MAX_SIZE), beyond the queue size.
const MAX_INDIRECT_ENTRIES: u32 = 1024;

/// Checks alignment and translates the three areas of a split ring.
pub(crate) fn map_areas<M: RingMemory + ?Sized>(
    memory: &M,
    config: &QueueConfig,
    format: RingFormat,
) -> Result<(RingRegion, RingRegion, RingRegion)> {
    let layout = RingLayout::new(format, config.size);
    let (a_desc, a_drv, a_dev) = RingLayout::alignments(format);
    let map = |area, addr: DeviceAddr, len, align: usize| {
        if !addr.is_aligned(align as u64) {
            #[allow(clippy::cast_possible_truncation)] // alignments are 2, 4 or 16
            return Err(Error::MisalignedArea {
                area,
                addr,
                align: align as u16,
            });
        }
        RingRegion::new(memory, addr, len, align).ok_or(Error::AreaOutOfMemory { area, addr, len })
    };
    Ok((
        map(
            RingArea::Descriptors,
            config.descriptors,
            layout.descriptors_len,
            a_desc,
        )?,
        map(
            RingArea::DriverArea,
            config.driver_area,
            layout.driver_area_len,
            a_drv,
        )?,
        map(
            RingArea::DeviceArea,
            config.device_area,
            layout.device_area_len,
            a_dev,
        )?,
    ))
}

/// One descriptor, read field by field exactly once.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[inline(always)]
fn read_desc(table: &RingRegion, index: u16) -> Desc {
    let (addr, len, flags, next) = table.load_descriptor(usize::from(index) * DESC_SIZE);
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

fn parse_desc(bytes: &[u8; 16]) -> Desc {
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = *bytes;
    Desc {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    }
}

/// The device side of a split virtqueue: pops chains the driver made available, returns them as used.
#[derive(Debug)]
pub struct SplitDeviceQueue<M> {
    memory: M,
    config: QueueConfig,
    features: RingFeatures,
    size: u16,
    desc: RingRegion,
    avail: RingRegion,
    used: RingRegion,
    next_avail: u16,
    shadow_avail: u16,
    /// Available chains from `next_avail` on whose buffers were already prefetched (see `prefetch_available`).
    prefetched: u16,
    next_used: u16,
    signalled_used: Option<u16>,
    notifications: bool,
    broken: bool,
    scratch: Chain,
}

impl<M: RingMemory> SplitDeviceQueue<M> {
    /// Validates `config` (size, alignment, areas inside memory) and starts a live queue at index 0.
    pub fn activate(config: &QueueConfig, features: RingFeatures, memory: M) -> Result<Self> {
        if !config.ready {
            return Err(Error::QueueNotReady);
        }
        config.validate_size(RingFormat::Split)?;
        let (desc, avail, used) = map_areas(&memory, config, RingFormat::Split)?;
        Ok(Self {
            memory,
            config: *config,
            features,
            size: config.size,
            desc,
            avail,
            used,
            next_avail: 0,
            shadow_avail: 0,
            prefetched: 0,
            next_used: 0,
            signalled_used: None,
            notifications: true,
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

    /// The next available index the device will process (for migration and debugging).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used index the device will write.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    fn fault<T>(&mut self, error: Error) -> Result<T> {
        if error.is_peer_fault() {
            self.broken = true;
        }
        Err(error)
    }

    fn avail_used_event_offset(&self) -> usize {
        4 + 2 * usize::from(self.size)
    }

    fn used_avail_event_offset(&self) -> usize {
        4 + 8 * usize::from(self.size)
    }

    /// Reads `avail.idx` and checks it against what was processed (CVE-2016-5403: the driver may not claim more than
    /// a queue's worth of new entries).
    fn refresh_avail(&mut self) -> Result<u16> {
        // Acquire pairs with the driver's release store of `avail.idx`, made after it wrote the ring entries and
        // descriptors: once the index is seen, so are they.
        let idx = self.avail.load_u16(AVAIL_IDX, Ordering::Acquire);
        let pending = idx.wrapping_sub(self.next_avail);
        if pending > self.size {
            return self.fault(Error::AvailIndexJump {
                avail_idx: idx,
                last_avail: self.next_avail,
                size: self.size,
            });
        }
        self.shadow_avail = idx;
        Ok(pending)
    }

    /// Pops the next available chain into `chain` (reusable; see [`Chain::with_capacity`]). Returns `false` when
    /// the ring is empty.
    #[inline(always)]
    pub fn pop_into(&mut self, chain: &mut Chain) -> Result<bool> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        if self.next_avail == self.shadow_avail && self.refresh_avail()? == 0 {
            return Ok(false);
        }
        self.prefetch_available();
        let slot = usize::from(self.next_avail & (self.size - 1));
        let head = self.avail.load_u16(4 + 2 * slot, Ordering::Relaxed);
        if let Err(e) = self.read_chain(head, chain) {
            return self.fault(e);
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        self.prefetched = self.prefetched.saturating_sub(1);
        if self.features.event_idx && self.notifications {
            // Ask for a kick once the driver publishes past what was consumed (QEMU does the same on every pop),
            // so a device that only pops on kicks never stalls.
            let off = self.used_avail_event_offset();
            self.used.store_u16(off, self.next_avail, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// As [`pop_into`](Self::pop_into), and for a chain of one direct descriptor also its buffer, translated (see
    /// [`DeviceQueue::pop_buffer`](crate::DeviceQueue::pop_buffer)).
    #[inline(always)]
    pub fn pop_buffer(&mut self, chain: &mut Chain) -> Result<Popped<'_>> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        if self.next_avail == self.shadow_avail && self.refresh_avail()? == 0 {
            return Ok(Popped::Empty);
        }
        self.prefetch_available();
        let slot = usize::from(self.next_avail & (self.size - 1));
        let head = self.avail.load_u16(4 + 2 * slot, Ordering::Relaxed);
        if head >= self.size {
            return self.fault(Error::DescriptorIndexOutOfRange {
                index: u32::from(head),
                size: u32::from(self.size),
            });
        }
        let desc = read_desc(&self.desc, head);
        let popped = if desc.flags & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 {
            // One direct descriptor: what `read_chain`'s fast path checks (the buffer lies in memory), with the
            // translation kept for the caller and no chain built.
            let (addr, len) = (DeviceAddr::new(desc.addr), desc.len);
            let writable = desc.flags & DESC_F_WRITE != 0;
            let Some(buffer) = DeviceSlice::new(&self.memory, addr, len as usize) else {
                return Err(peer_fault(
                    &mut self.broken,
                    Error::BufferOutOfMemory { addr, len },
                ));
            };
            let token = UsedToken {
                id: head,
                descriptors: 1,
            };
            Popped::Single(SingleBuffer::new(buffer, addr, writable, token))
        } else {
            if let Err(e) = self.read_chain_from(head, desc, chain) {
                return self.fault(e);
            }
            Popped::Chain
        };
        self.next_avail = self.next_avail.wrapping_add(1);
        self.prefetched = self.prefetched.saturating_sub(1);
        if self.features.event_idx && self.notifications {
            // As in `pop_into`.
            let off = self.used_avail_event_offset();
            self.used.store_u16(off, self.next_avail, Ordering::Relaxed);
        }
        Ok(popped)
    }

    /// Look-ahead over chains already published (`next_avail..shadow_avail`): keeps the buffers of the next
    /// [`PREFETCH_AHEAD`] chains on their way into the cache, refilling in groups of
    /// `PREFETCH_AHEAD - PREFETCH_REFILL_AT` so that their cache misses (lines the driver's core wrote) overlap
    /// instead of stalling each pop in turn. A hint: a bad index or address is skipped here and reported by the pop
    /// that reaches it.
    #[inline(always)]
    fn prefetch_available(&mut self) {
        if self.prefetched > PREFETCH_REFILL_AT {
            return;
        }
        let target = self
            .shadow_avail
            .wrapping_sub(self.next_avail)
            .min(PREFETCH_AHEAD);
        if self.prefetched < target {
            self.prefetch_range(self.prefetched, target);
            self.prefetched = target;
        }
    }

    #[inline(never)]
    fn prefetch_range(&self, from: u16, to: u16) {
        for ahead in from..to {
            let slot = usize::from(self.next_avail.wrapping_add(ahead) & (self.size - 1));
            let head = self.avail.load_u16(4 + 2 * slot, Ordering::Relaxed);
            if head >= self.size {
                continue;
            }
            let desc = read_desc(&self.desc, head);
            if desc.flags & DESC_F_INDIRECT == 0 {
                prefetch_buffer(&self.memory, desc.addr, desc.len);
            }
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
    fn read_chain(&self, head: u16, chain: &mut Chain) -> Result<()> {
        let size = u32::from(self.size);
        if head >= self.size {
            return Err(Error::DescriptorIndexOutOfRange {
                index: u32::from(head),
                size,
            });
        }
        let desc = read_desc(&self.desc, head);
        if desc.flags & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 {
            // One direct descriptor (the usual TX and RX chain): the checks of the general path below that can
            // apply to a single buffer (count 1 <= size; the buffer lies in memory).
            return chain.set_single(
                &self.memory,
                DeviceAddr::new(desc.addr),
                desc.len,
                desc.flags & DESC_F_WRITE != 0,
                UsedToken {
                    id: head,
                    descriptors: 1,
                },
            );
        }
        self.read_chain_from(head, desc, chain)
    }

    /// The general path of [`read_chain`](Self::read_chain), from the head descriptor `desc` (index `head`, checked
    /// `< size`) already read.
    #[inline(always)]
    fn read_chain_from(&self, head: u16, mut desc: Desc, chain: &mut Chain) -> Result<()> {
        let size = u32::from(self.size);
        let mut builder = chain.begin();
        loop {
            builder.count(size)?;
            if desc.flags & DESC_F_INDIRECT != 0 {
                if !self.features.indirect {
                    return Err(Error::IndirectNotNegotiated);
                }
                if desc.flags & DESC_F_NEXT != 0 {
                    return Err(Error::IndirectWithNext);
                }
                self.read_indirect(&mut builder, DeviceAddr::new(desc.addr), desc.len)?;
                break;
            }
            builder.push(
                &self.memory,
                DeviceAddr::new(desc.addr),
                desc.len,
                desc.flags & DESC_F_WRITE != 0,
            )?;
            if desc.flags & DESC_F_NEXT == 0 {
                break;
            }
            let index = desc.next;
            if index >= self.size {
                return Err(Error::DescriptorIndexOutOfRange {
                    index: u32::from(index),
                    size,
                });
            }
            // Each descriptor is read once: the head above, the others here.
            desc = read_desc(&self.desc, index);
        }
        builder.finish(head, 1);
        Ok(())
    }

    fn read_indirect(
        &self,
        builder: &mut crate::chain::ChainBuilder<'_>,
        addr: DeviceAddr,
        len: u32,
    ) -> Result<()> {
        if len == 0 || len % 16 != 0 || len / 16 > MAX_INDIRECT_ENTRIES.max(u32::from(self.size)) {
            return Err(Error::IndirectTableLength { len });
        }
        let table = DeviceSlice::new(&self.memory, addr, len as usize)
            .filter(|t| !t.is_empty())
            .ok_or(Error::BufferOutOfMemory { addr, len })?;
        let entries = len / 16;
        let mut index: u32 = 0;
        let mut visited: u32 = 0;
        loop {
            if index >= entries {
                return Err(Error::DescriptorIndexOutOfRange {
                    index,
                    size: entries,
                });
            }
            visited += 1;
            if visited > entries {
                return Err(Error::ChainTooLong { size: entries });
            }
            let mut raw = [0u8; 16];
            // The table is driver memory that the device reads once, into `raw`; unaligned tables are allowed.
            table.read_at(index as usize * 16, &mut raw);
            let desc = parse_desc(&raw);
            if desc.flags & DESC_F_INDIRECT != 0 {
                return Err(Error::NestedIndirect);
            }
            builder.push(
                &self.memory,
                DeviceAddr::new(desc.addr),
                desc.len,
                desc.flags & DESC_F_WRITE != 0,
            )?;
            if desc.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            index = u32::from(desc.next);
        }
    }

    fn check_token(&self, token: UsedToken) -> Result<()> {
        if token.id >= self.size {
            return Err(Error::InvalidUsedToken {
                id: token.id,
                size: self.size,
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn write_used_elem(&self, id: u16, len: u32) {
        let base = 4 + 8 * usize::from(self.next_used & (self.size - 1));
        self.used.store_u32_pair(base, u32::from(id), len);
    }

    #[inline(always)]
    fn publish_used(&self) {
        // Release pairs with the driver's acquire load of `used.idx`: the elements written above are visible first.
        self.used
            .store_u16(USED_IDX, self.next_used, Ordering::Release);
    }

    /// Returns a chain to the driver with `len` bytes written into its writable buffers.
    pub fn add_used(&mut self, token: UsedToken, len: u32) -> Result<()> {
        self.check_token(token)?;
        self.write_used_elem(token.id, len);
        self.next_used = self.next_used.wrapping_add(1);
        self.publish_used();
        Ok(())
    }

    /// Returns several chains, publishing the used index once.
    pub fn add_used_batch(&mut self, used: &[(UsedToken, u32)]) -> Result<()> {
        for &(token, _) in used {
            self.check_token(token)?;
        }
        for &(token, len) in used {
            self.write_used_elem(token.id, len);
            self.next_used = self.next_used.wrapping_add(1);
        }
        self.publish_used();
        Ok(())
    }

    /// With VIRTIO_F_IN_ORDER: returns `count` chains, used in the order they were popped, with a single used
    /// element naming the last one and its `len` (virtio 1.3 §2.7.9).
    pub fn add_used_in_order(&mut self, batch: &InOrderBatch, len: u32) -> Result<()> {
        let Some(last) = batch.last() else {
            return Err(Error::InOrderNotNegotiated);
        };
        let count = batch.buffers();
        if !self.features.in_order || count > self.size {
            return Err(Error::InOrderNotNegotiated);
        }
        self.check_token(last)?;
        self.write_used_elem(last.id, len);
        self.next_used = self.next_used.wrapping_add(count);
        self.publish_used();
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was used since the last call (`used_event` with
    /// VIRTIO_F_EVENT_IDX, else `avail.flags`).
    pub fn needs_notification(&mut self) -> bool {
        // Pairs with the driver's full barrier in `enable_callbacks` between writing `used_event`/`avail.flags` and
        // re-reading `used.idx`: either the driver sees our new used index, or we see its request.
        fence(Ordering::SeqCst);
        if self.features.event_idx {
            let event = self
                .avail
                .load_u16(self.avail_used_event_offset(), Ordering::Relaxed);
            match self.signalled_used.replace(self.next_used) {
                Some(old) => need_event(event, self.next_used, old),
                None => true,
            }
        } else {
            self.avail.load_u16(0, Ordering::Relaxed) & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Asks the driver to notify again and re-checks for buffers that raced with the request. Returns `true` if
    /// buffers are available (keep processing), `false` if the device may sleep until the next notification.
    pub fn enable_notification(&mut self) -> Result<bool> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        self.notifications = true;
        if self.features.event_idx {
            let off = self.used_avail_event_offset();
            self.used
                .store_u16(off, self.shadow_avail, Ordering::Relaxed);
        } else {
            let flags = self.used.load_u16(0, Ordering::Relaxed);
            self.used
                .store_u16(0, flags & !USED_F_NO_NOTIFY, Ordering::Relaxed);
        }
        // Pairs with the driver's full barrier in `kick_prepare` between publishing `avail.idx` and reading
        // `avail_event`/`used.flags`: either it sees our request and kicks, or we see its buffers here.
        fence(Ordering::SeqCst);
        Ok(self.refresh_avail()? != 0)
    }

    /// Asks the driver not to notify (a hint; the driver may still do so).
    pub fn disable_notification(&mut self) {
        self.notifications = false;
        if !self.features.event_idx {
            let flags = self.used.load_u16(0, Ordering::Relaxed);
            self.used
                .store_u16(0, flags | USED_F_NO_NOTIFY, Ordering::Relaxed);
        }
    }

    /// Stops the queue and returns its configuration (device reset or per-queue reset).
    pub fn into_parts(self) -> (QueueConfig, M) {
        (self.config, self.memory)
    }
}

/// Per-descriptor bookkeeping of the driver, which the device cannot touch.
#[derive(Debug)]
struct DescState<T> {
    /// Free-list link, or the next descriptor of the chain this one belongs to.
    next: u16,
    /// Set on a chain's head while the chain is in flight.
    token: Option<T>,
    /// Descriptors the chain occupies in the table (1 for an indirect chain).
    chain_len: u16,
    /// Device-writable bytes offered, to check the used length.
    writable: u32,
}

/// The driver side of a split virtqueue: makes buffers available, collects them when used.
#[derive(Debug)]
pub struct SplitDriverQueue<M, T> {
    memory: M,
    config: QueueConfig,
    features: RingFeatures,
    size: u16,
    desc: RingRegion,
    avail: RingRegion,
    used: RingRegion,
    indirect: Option<(IndirectPool, RingRegion)>,
    states: Vec<DescState<T>>,
    free_head: u16,
    free_tail: u16,
    num_free: u16,
    in_flight: u16,
    next_avail: u16,
    num_added: u16,
    /// Chains in the available ring whose `avail.idx` store is still to come.
    unpublished: u16,
    last_used: u16,
    shadow_used: u16,
    callbacks: bool,
    broken: bool,
    in_order: InOrderTracker,
}

impl<M: RingMemory, T> SplitDriverQueue<M, T> {
    /// Initialises the ring areas named by `config` (zeroing them) and the free list. `indirect` is the driver's
    /// pool of indirect tables, used for multi-buffer chains when VIRTIO_F_INDIRECT_DESC is negotiated.
    pub fn new(
        config: &QueueConfig,
        features: RingFeatures,
        memory: M,
        indirect: Option<IndirectPool>,
    ) -> Result<Self> {
        config.validate_size(RingFormat::Split)?;
        let (desc, avail, used) = map_areas(&memory, config, RingFormat::Split)?;
        let indirect = match indirect {
            Some(pool) if features.indirect => Some((pool, pool.map(&memory, config.size)?)),
            _ => None,
        };
        let size = config.size;
        let mut states = Vec::with_capacity(usize::from(size));
        states.extend((0..size).map(|i| DescState {
            next: i.wrapping_add(1) & (size - 1),
            token: None,
            chain_len: 0,
            writable: 0,
        }));
        let mut queue = Self {
            memory,
            config: *config,
            features,
            size,
            desc,
            avail,
            used,
            indirect,
            states,
            free_head: 0,
            free_tail: size - 1,
            num_free: size,
            in_flight: 0,
            next_avail: 0,
            num_added: 0,
            unpublished: 0,
            last_used: 0,
            shadow_used: 0,
            callbacks: true,
            broken: false,
            in_order: InOrderTracker::new(features.in_order, size),
        };
        queue.zero_rings();
        Ok(queue)
    }

    fn zero_rings(&mut self) {
        self.desc.zero();
        self.avail.zero();
        self.used.zero();
    }

    /// The configuration to hand the transport (addresses, size).
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Buffers made available and not yet returned.
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

    /// Makes a chain of device-readable then device-writable buffers available, with `token` returned when the
    /// device uses it. Uses an indirect table when one is configured and the chain has more than one buffer.
    /// The chain is published (`avail.idx` stored with release) before this returns, together with any chains
    /// [`add_unpublished`](Self::add_unpublished) left pending.
    pub fn add(&mut self, readable: &[Buffer], writable: &[Buffer], token: T) -> Result<u16> {
        let head = self.add_unpublished(readable, writable, token)?;
        self.publish();
        Ok(head)
    }

    /// As [`add`](Self::add), but the device does not see the chain until [`publish`](Self::publish) (or
    /// [`kick_prepare`](Self::kick_prepare), which publishes first): a burst of chains costs one `avail.idx` store.
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

    /// Makes the chains added with [`add_unpublished`](Self::add_unpublished) visible to the device (one release
    /// store of `avail.idx`). Does nothing if none are pending.
    #[inline]
    pub fn publish(&mut self) {
        if self.unpublished != 0 {
            self.unpublished = 0;
            // Release pairs with the device's acquire load of `avail.idx`: descriptors and ring entries come first.
            self.avail
                .store_u16(AVAIL_IDX, self.next_avail, Ordering::Release);
        }
    }

    /// Chains added with [`add_unpublished`](Self::add_unpublished) and not yet published.
    pub fn unpublished(&self) -> u16 {
        self.unpublished
    }

    /// One buffer, one descriptor: the common case without the generic chain walk.
    #[inline(always)]
    fn add_single(&mut self, buffer: &Buffer, write: u16, token: T) -> Result<u16> {
        if buffer.len == 0 {
            return Err(Error::EmptyBuffer);
        }
        if self.num_free == 0 {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        }
        let head = self.free_head;
        let Some(state) = self.states.get_mut(usize::from(head)) else {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        };
        let next = state.next;
        state.token = Some(token);
        state.chain_len = 1;
        state.writable = if write != 0 { buffer.len } else { 0 };
        self.desc.store_descriptor_if_changed(
            usize::from(head) * DESC_SIZE,
            buffer.addr.raw(),
            buffer.len,
            write,
            next,
        );
        self.free_head = next;
        self.num_free -= 1;
        self.make_available(head);
        Ok(head)
    }

    /// Puts `head` in the available ring (not yet published).
    #[inline(always)]
    fn make_available(&mut self, head: u16) {
        self.in_order.push(head);
        let slot = 4 + 2 * usize::from(self.next_avail & (self.size - 1));
        // Written only if it changes (with IN_ORDER the ring soon holds the same heads on every lap): the device
        // keeps its copy of the line instead of missing on it.
        if self.avail.load_u16(slot, Ordering::Relaxed) != head {
            self.avail.store_u16(slot, head, Ordering::Relaxed);
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        self.num_added = self.num_added.wrapping_add(1);
        self.in_flight += 1;
        self.unpublished += 1;
    }

    fn add_chain(&mut self, readable: &[Buffer], writable: &[Buffer], token: T) -> Result<u16> {
        let (total, writable_len) = crate::ring::check_buffers(readable, writable)?;
        let indirect = matches!(&self.indirect, Some((pool, _)) if total > 1 && total <= usize::from(pool.entries_per_chain));
        let needed = if indirect {
            1
        } else {
            u16::try_from(total).unwrap_or(u16::MAX)
        };
        if needed > self.num_free {
            return Err(Error::QueueFull {
                needed,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let buffers = readable
            .iter()
            .map(|b| (b, 0))
            .chain(writable.iter().map(|b| (b, DESC_F_WRITE)));
        let mut index = head;
        if indirect {
            if let Some((pool, table)) = &self.indirect {
                let base = usize::from(head) * usize::from(pool.entries_per_chain) * DESC_SIZE;
                for (i, (buffer, write)) in buffers.enumerate() {
                    let next = u16::try_from(i + 1).unwrap_or(0);
                    let flags = write | if i + 1 < total { DESC_F_NEXT } else { 0 };
                    table.store_descriptor(
                        base + i * DESC_SIZE,
                        buffer.addr.raw(),
                        buffer.len,
                        flags,
                        next,
                    );
                }
                let table_addr = pool.table_addr(head);
                let len = u32::try_from(total * DESC_SIZE).unwrap_or(u32::MAX);
                self.desc.store_descriptor(
                    usize::from(head) * DESC_SIZE,
                    table_addr.raw(),
                    len,
                    DESC_F_INDIRECT,
                    0,
                );
            }
            index = self.states.get(usize::from(head)).map_or(0, |s| s.next);
        } else {
            for (i, (buffer, write)) in buffers.enumerate() {
                let next = self.states.get(usize::from(index)).map_or(0, |s| s.next);
                let flags = write | if i + 1 < total { DESC_F_NEXT } else { 0 };
                self.desc.store_descriptor(
                    usize::from(index) * DESC_SIZE,
                    buffer.addr.raw(),
                    buffer.len,
                    flags,
                    next,
                );
                index = next;
            }
        }
        self.free_head = index;
        self.num_free -= needed;
        if let Some(state) = self.states.get_mut(usize::from(head)) {
            state.token = Some(token);
            state.chain_len = needed;
            state.writable = writable_len;
        }
        self.make_available(head);
        Ok(head)
    }

    /// Decides whether the device wants a notification for the buffers added since the last call.
    /// Publishes pending chains first (see [`add_unpublished`](Self::add_unpublished)).
    pub fn kick_prepare(&mut self) -> bool {
        self.publish();
        // Full barrier between publishing `avail.idx` (in `add`) and reading `avail_event`/`used.flags`; pairs with
        // the device's barrier in `enable_notification` (Linux `virtqueue_kick_prepare_split`).
        fence(Ordering::SeqCst);
        let new = self.next_avail;
        let old = new.wrapping_sub(self.num_added);
        self.num_added = 0;
        if self.features.event_idx {
            let event = self
                .used
                .load_u16(4 + 8 * usize::from(self.size), Ordering::Relaxed);
            need_event(event, new, old)
        } else {
            self.used.load_u16(0, Ordering::Relaxed) & USED_F_NO_NOTIFY == 0
        }
    }

    /// The value to write to the notify register with VIRTIO_F_NOTIFICATION_DATA.
    pub fn notification_data(&self, queue: u16) -> crate::queue::NotificationData {
        crate::queue::NotificationData {
            queue,
            next_off: self.next_avail & 0x7fff,
            next_wrap: self.next_avail & 0x8000 != 0,
        }
    }

    /// Whether the device has returned buffers not yet collected.
    pub fn has_used(&self) -> bool {
        self.last_used != self.used.load_u16(USED_IDX, Ordering::Acquire)
    }

    /// Collects the next used buffer: its token and the bytes the device wrote. Every field the device wrote is
    /// checked: the id must name a chain in flight and the length fit what the chain offered.
    pub fn pop_used(&mut self) -> Result<Option<Used<T>>> {
        if self.broken {
            return Err(Error::QueueBroken);
        }
        if self.last_used == self.shadow_used && self.read_used_idx()? == self.last_used {
            return Ok(None);
        }
        let (head, len) = match self.in_order.next_in_batch() {
            Some(head) => (head, None),
            None => {
                let (head, len) = self.read_used_elem()?;
                match self.in_order.start(head, len) {
                    Some(first) => (first, None),
                    None => (head, Some(len)),
                }
            }
        };
        let len = len.or_else(|| self.in_order.finished_len(head));
        let used = self.retire(head, len)?;
        self.in_order.retire(head);
        self.request_used_event();
        Ok(Some(used))
    }

    /// Reads `used.idx`, checks that it covers no more than the chains the device has been shown, and keeps it as
    /// `shadow_used`; returns it. Shared by [`pop_used`](Self::pop_used) and [`pop_used_batch`](Self::pop_used_batch).
    #[inline(always)]
    fn read_used_idx(&mut self) -> Result<u16> {
        // Acquire pairs with the device's release store of `used.idx` after writing the elements.
        let idx = self.used.load_u16(USED_IDX, Ordering::Acquire);
        if idx.wrapping_sub(self.last_used) > self.published_in_flight() {
            return self.fault(Error::UsedIndexJump {
                used_idx: idx,
                last_used: self.last_used,
                in_flight: self.in_flight,
            });
        }
        self.shadow_used = idx;
        Ok(idx)
    }

    /// Reads the used element at `last_used` (which `used.idx` must already cover) and checks that its id names a
    /// chain in flight; returns that chain's head and the length the device wrote. Shared by
    /// [`pop_used`](Self::pop_used) and [`pop_used_batch`](Self::pop_used_batch).
    #[inline(always)]
    fn read_used_elem(&mut self) -> Result<(u16, u32)> {
        let base = 4 + 8 * usize::from(self.last_used & (self.size - 1));
        let id = self.used.load_u32(base, Ordering::Relaxed);
        let len = self.used.load_u32(base + 4, Ordering::Relaxed);
        let head = match u16::try_from(id) {
            Ok(head) if head < self.size => head,
            _ => {
                return self.fault(Error::UsedIdOutOfRange {
                    id,
                    size: self.size,
                })
            }
        };
        if self
            .states
            .get(usize::from(head))
            .is_none_or(|s| s.token.is_none())
        {
            return self.fault(Error::UsedIdNotInFlight { id });
        }
        Ok((head, len))
    }

    /// With EVENT_IDX and callbacks on, asks for an interrupt at the next used entry (after a collection); the
    /// barrier orders this store before the next read of `used.idx` (Linux `virtio_store_mb` in
    /// `virtqueue_get_buf_ctx_split`).
    #[inline(always)]
    fn request_used_event(&self) {
        if self.features.event_idx && self.callbacks {
            let off = 4 + 2 * usize::from(self.size);
            self.avail.store_u16(off, self.last_used, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
    }

    /// Chains the device has been shown (in flight and published).
    #[inline(always)]
    fn published_in_flight(&self) -> u16 {
        self.in_flight.saturating_sub(self.unpublished)
    }

    /// Collects every used buffer the device has returned so far, handing each to `out` in order; returns how many.
    /// The checks are those of [`pop_used`](Self::pop_used), and with VIRTIO_F_IN_ORDER the used index must also
    /// cover every buffer a batched element retires. `used.idx` is read once; with IN_ORDER one used element
    /// retires its whole batch in a tight loop; the EVENT_IDX request is written once at the end. On a device
    /// fault the buffers before it have been handed out and the error is returned.
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
        let idx = self.read_used_idx()?;
        let mut remaining = idx.wrapping_sub(self.last_used);
        let in_order = self.in_order.enabled();
        while remaining != 0 {
            let (head, len) = self.read_used_elem()?;
            if !in_order {
                out(self.retire(head, Some(len))?);
                n += 1;
                remaining -= 1;
                continue;
            }
            // One element names the last chain of a batch; the ones made available before it are done too.
            loop {
                if remaining == 0 {
                    return self.fault(Error::UsedIndexJump {
                        used_idx: idx,
                        last_used: self.last_used,
                        in_flight: self.in_flight,
                    });
                }
                let Some(front) = self.in_order.pop_front() else {
                    return self.fault(Error::UsedIdNotInFlight {
                        id: u32::from(head),
                    });
                };
                let last = front == head;
                out(self.retire(front, last.then_some(len))?);
                n += 1;
                remaining -= 1;
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

    /// Returns the in-flight chain at `head` as used with `len` bytes (or all it offered when `None`).
    #[inline(always)]
    fn retire(&mut self, head: u16, len: Option<u32>) -> Result<Used<T>> {
        let Some(state) = self.states.get_mut(usize::from(head)) else {
            return self.fault(Error::UsedIdNotInFlight {
                id: u32::from(head),
            });
        };
        let len = len.unwrap_or(state.writable);
        if len > state.writable {
            let offered = state.writable;
            return self.fault(Error::UsedLengthTooLarge { len, offered });
        }
        let Some(token) = state.token.take() else {
            return self.fault(Error::UsedIdNotInFlight {
                id: u32::from(head),
            });
        };
        let chain_len = state.chain_len;
        self.free_chain(head, chain_len);
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Used { token, len })
    }

    #[inline(always)]
    fn free_chain(&mut self, head: u16, chain_len: u16) {
        let mut tail = head;
        for _ in 1..chain_len {
            tail = self.states.get(usize::from(tail)).map_or(tail, |s| s.next);
        }
        if self.num_free == 0 {
            self.free_head = head;
        } else if self.features.in_order {
            // Keep descriptors in ring order (virtio 1.3 §2.7.9): append the returned chain at the tail.
            let old_tail = self.free_tail;
            if let Some(s) = self.states.get_mut(usize::from(old_tail)) {
                s.next = head;
            }
        } else {
            let old_head = self.free_head;
            if let Some(s) = self.states.get_mut(usize::from(tail)) {
                s.next = old_head;
            }
            self.free_head = head;
            self.num_free += chain_len;
            return;
        }
        self.free_tail = tail;
        self.num_free += chain_len;
    }

    /// Requests interrupts again. Returns `false` if used buffers arrived meanwhile (collect them before sleeping),
    /// `true` if the driver may wait for the interrupt (Linux `virtqueue_enable_cb`).
    pub fn enable_callbacks(&mut self) -> bool {
        self.callbacks = true;
        if self.features.event_idx {
            let off = 4 + 2 * usize::from(self.size);
            self.avail.store_u16(off, self.last_used, Ordering::Relaxed);
        } else {
            self.avail.store_u16(0, 0, Ordering::Relaxed);
        }
        // Pairs with the device's barrier in `needs_notification` between publishing `used.idx` and reading
        // `used_event`/`avail.flags`.
        fence(Ordering::SeqCst);
        !self.has_used()
    }

    /// Asks the device not to interrupt (a hint).
    pub fn disable_callbacks(&mut self) {
        self.callbacks = false;
        if self.features.event_idx {
            // Put the event half the index space away, so the device does not cross it soon.
            let off = 4 + 2 * usize::from(self.size);
            self.avail
                .store_u16(off, self.last_used.wrapping_add(0x8000), Ordering::Relaxed);
        } else {
            self.avail
                .store_u16(0, AVAIL_F_NO_INTERRUPT, Ordering::Relaxed);
        }
    }

    /// Takes back every buffer still in flight (after the device was reset, or the queue was reset with
    /// VIRTIO_F_RING_RESET) and re-initialises the ring to its state after `new`.
    pub fn reset(&mut self) -> impl Iterator<Item = T> + '_ {
        self.zero_rings();
        let size = self.size;
        for (i, state) in (0u16..).zip(self.states.iter_mut()) {
            state.next = i.wrapping_add(1) & (size - 1);
            state.chain_len = 0;
            state.writable = 0;
        }
        self.free_head = 0;
        self.free_tail = size - 1;
        self.num_free = size;
        self.in_flight = 0;
        self.next_avail = 0;
        self.num_added = 0;
        self.unpublished = 0;
        self.last_used = 0;
        self.shadow_used = 0;
        self.callbacks = true;
        self.broken = false;
        self.in_order.clear();
        self.states.iter_mut().filter_map(|s| s.token.take())
    }
}
