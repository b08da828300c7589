//! An in-memory backend: two [`PairEnd`]s wired back to back (what one sends, the other receives), or one end in
//! loopback. Each direction of each queue pair is a bounded single-producer single-consumer ring of pre-allocated
//! frame slots, lock-free: the sending end owns the tail, the receiving end the head, each on its own cache line,
//! and each end keeps a private copy of the other's index so that it reads the shared one only when its copy says
//! the ring is full (sender) or empty (receiver). Passing a frame copies it once into a slot and once out, and
//! never allocates; [`NetBackend::send_slices`] copies straight from the driver's buffers into the slot.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::vec::Vec;

use virtio_core::{DeviceAddr, DeviceSlice, HeapMemory};

use crate::backend::{BackendError, NetBackend, Offloads, SendStatus};

/// An index alone on its cache line (the two ends write different indices; sharing a line would make every
/// write of one invalidate the other's reads).
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicUsize);

/// Bytes of each slot kept in the ring's always-present area: frames up to this long (with their header) never
/// touch the big area. Not a power of two: slots 2 KiB apart would all start in the same few cache sets (with the
/// driver's 2 KiB TX buffers in the same sets), evicting each other; one extra line per slot spreads them.
const SMALL_SLOT: usize = 2048 + 64;

/// Allocates `bytes` of zeroed memory for slots (aborting like `Vec` does if the allocation fails).
fn slot_memory(bytes: usize) -> HeapMemory {
    let bytes = bytes.max(1);
    HeapMemory::new(DeviceAddr::new(0), bytes).unwrap_or_else(|| {
        std::alloc::handle_alloc_error(
            std::alloc::Layout::from_size_align(bytes, 4096)
                .unwrap_or(std::alloc::Layout::new::<u8>()),
        )
    })
}

/// A bounded SPSC FIFO of frames in fixed slots. `tail` and `head` count frames pushed and popped (wrapping).
///
/// A frame up to [`SMALL_SLOT`] bytes lives in its slot's part of `small`; a longer one in its slot's part of
/// `big`, allocated on the first long frame (the allocator zeroes page-aligned memory by writing it, so sizing
/// every ring for 64 KiB frames up front would touch 16 MiB per direction).
#[derive(Debug)]
struct Ring {
    /// Frames pushed; written (release) only by the producer.
    tail: Padded,
    /// Frames popped; written (release) only by the consumer.
    head: Padded,
    /// `slots` slots of `small_len` bytes, slot `i` at device address `i * small_len`.
    small: HeapMemory,
    /// `slots` slots of `slot_len` bytes, slot `i` at `i * slot_len`; set by the producer before it publishes
    /// the first frame stored there.
    big: OnceLock<HeapMemory>,
    /// Length of the frame in each slot; written by the producer before it publishes `tail`.
    lens: Vec<AtomicU32>,
    small_len: usize,
    slot_len: usize,
    slots: usize,
}

impl Ring {
    fn new(slots: usize, slot_len: usize) -> Self {
        let small_len = slot_len.min(SMALL_SLOT);
        Self {
            tail: Padded::default(),
            head: Padded::default(),
            small: slot_memory(slots.saturating_mul(small_len)),
            big: OnceLock::new(),
            lens: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            small_len,
            slot_len,
            slots,
        }
    }

    /// `len` bytes of slot `index`, for reading a published frame.
    #[inline(always)]
    fn slot(&self, index: usize, len: usize) -> Option<DeviceSlice<'_>> {
        let (memory, stride) = if len <= self.small_len {
            (&self.small, self.small_len)
        } else {
            (self.big.get()?, self.slot_len)
        };
        // A wrapped product (an index past the slots) names memory outside the area, which the translation refuses.
        let start = index.wrapping_mul(stride) as u64;
        DeviceSlice::new(memory, DeviceAddr::new(start), len)
    }

    /// `len` bytes of slot `index`, for the producer to fill (allocating the big area on first need).
    #[inline(always)]
    fn slot_mut(&self, index: usize, len: usize) -> Option<DeviceSlice<'_>> {
        if len <= self.small_len {
            let start = index.wrapping_mul(self.small_len) as u64;
            return DeviceSlice::new(&self.small, DeviceAddr::new(start), len);
        }
        self.big
            .get_or_init(|| slot_memory(self.slots.saturating_mul(self.slot_len)));
        self.slot(index, len)
    }

    fn pending(&self) -> usize {
        // Acquire on both: a consistent enough snapshot for a count that is stale the moment it is returned.
        let tail = self.tail.0.load(Ordering::Acquire);
        tail.wrapping_sub(self.head.0.load(Ordering::Acquire))
    }
}

/// The producer's private state of one ring.
#[derive(Debug, Default, Clone, Copy)]
struct Producer {
    /// Frames pushed (what `tail` holds once published).
    tail: usize,
    /// Slot of the next push (`tail % slots`, kept without a division).
    slot: usize,
    /// The consumer's `head` as last read.
    head_seen: usize,
}

impl Producer {
    /// The slot to fill next, if the ring has room (re-reading the consumer's index only if it looks full).
    #[inline(always)]
    fn reserve(&mut self, ring: &Ring) -> Option<usize> {
        if self.tail.wrapping_sub(self.head_seen) >= ring.slots {
            // Acquire pairs with the consumer's release store of `head` after it copied the slot out: the slot
            // may be overwritten now.
            self.head_seen = ring.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_seen) >= ring.slots {
                return None;
            }
        }
        Some(self.slot)
    }

    /// Publishes the reserved slot holding `len` bytes.
    #[inline(always)]
    fn commit(&mut self, ring: &Ring, len: usize) {
        if let Some(l) = ring.lens.get(self.slot) {
            l.store(u32::try_from(len).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
        self.tail = self.tail.wrapping_add(1);
        self.slot = if self.slot + 1 == ring.slots {
            0
        } else {
            self.slot + 1
        };
        // Release pairs with the consumer's acquire load of `tail`: the slot's bytes and length are visible first.
        ring.tail.0.store(self.tail, Ordering::Release);
    }

    fn push(&mut self, ring: &Ring, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        let len: usize = frame.iter().map(|p| p.len()).sum();
        if len > ring.slot_len {
            return Err(BackendError::TooLarge {
                len,
                max: ring.slot_len,
            });
        }
        let Some(index) = self.reserve(ring) else {
            return Ok(SendStatus::WouldBlock);
        };
        let dst = ring.slot_mut(index, len).ok_or(BackendError::Unsupported)?;
        let mut at = 0;
        for piece in frame {
            at += dst.write_at(at, piece);
        }
        self.commit(ring, len);
        Ok(SendStatus::Sent)
    }

    /// [`push_slices`](Self::push_slices) of a frame in one piece that fits a small slot (the usual TX frame):
    /// the same checks and copies without the general loops; anything else takes the general path.
    #[inline(always)]
    fn push_one(
        &mut self,
        ring: &Ring,
        header: &[u8],
        piece: &DeviceSlice<'_>,
    ) -> Result<SendStatus, BackendError> {
        let len = header.len() + piece.len();
        if len > ring.small_len {
            return self.push_slices(ring, header, core::slice::from_ref(piece));
        }
        let Some(index) = self.reserve(ring) else {
            return Ok(SendStatus::WouldBlock);
        };
        let start = index.wrapping_mul(ring.small_len) as u64;
        let dst = DeviceSlice::new(&ring.small, DeviceAddr::new(start), len)
            .ok_or(BackendError::Unsupported)?;
        let at = dst.write_at(0, header);
        dst.copy_from(at, piece);
        self.commit(ring, len);
        Ok(SendStatus::Sent)
    }

    #[inline(never)]
    fn push_slices(
        &mut self,
        ring: &Ring,
        header: &[u8],
        frame: &[DeviceSlice<'_>],
    ) -> Result<SendStatus, BackendError> {
        let body = match frame {
            // The usual case: one piece.
            [piece] => piece.len(),
            _ => frame.iter().map(DeviceSlice::len).sum(),
        };
        let len = header.len() + body;
        if len > ring.slot_len {
            return Err(BackendError::TooLarge {
                len,
                max: ring.slot_len,
            });
        }
        let Some(index) = self.reserve(ring) else {
            return Ok(SendStatus::WouldBlock);
        };
        let dst = ring.slot_mut(index, len).ok_or(BackendError::Unsupported)?;
        let mut at = dst.write_at(0, header);
        for piece in frame {
            at += dst.copy_from(at, piece);
        }
        self.commit(ring, len);
        Ok(SendStatus::Sent)
    }
}

/// The consumer's private state of one ring.
#[derive(Debug, Default, Clone, Copy)]
struct Consumer {
    /// Frames popped (what `head` holds once published).
    head: usize,
    /// Slot of the next pop.
    slot: usize,
    /// The producer's `tail` as last read.
    tail_seen: usize,
}

impl Consumer {
    /// Copies the published frame in slot `index` into `buf`: its length, or [`BackendError::TooLarge`] if `buf`
    /// is too short (the frame is consumed either way).
    #[inline(always)]
    fn read_slot(ring: &Ring, index: usize, buf: &mut [u8]) -> Result<usize, BackendError> {
        let len = ring
            .lens
            .get(index)
            .map_or(0, |l| l.load(Ordering::Relaxed) as usize);
        match (buf.get_mut(..len), ring.slot(index, len)) {
            (Some(dst), Some(src)) => {
                src.read_at(0, dst);
                Ok(len)
            }
            _ => Err(BackendError::TooLarge {
                len,
                max: buf.len(),
            }),
        }
    }

    /// The slot after `slot`.
    #[inline(always)]
    fn next_slot(ring: &Ring, slot: usize) -> usize {
        if slot + 1 == ring.slots {
            0
        } else {
            slot + 1
        }
    }

    fn pop(&mut self, ring: &Ring, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        if self.head == self.tail_seen {
            // Acquire pairs with the producer's release store of `tail` (see `Producer::commit`).
            self.tail_seen = ring.tail.0.load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return Ok(None);
            }
        }
        let result = Self::read_slot(ring, self.slot, buf).map(Some);
        self.head = self.head.wrapping_add(1);
        self.slot = Self::next_slot(ring, self.slot);
        // Release pairs with the producer's acquire load of `head` in `reserve`: the slot was read out before the
        // producer may reuse it.
        ring.head.0.store(self.head, Ordering::Release);
        result
    }

    /// Pops up to `max` frames, each copied into `buf` and handed to `f`; reads the producer's index once and
    /// publishes its own once. Returns the frames consumed.
    #[inline(always)]
    fn pop_burst(
        &mut self,
        ring: &Ring,
        buf: &mut [u8],
        max: usize,
        mut f: impl FnMut(Result<&[u8], BackendError>),
    ) -> usize {
        // Acquire pairs with the producer's release store of `tail` (see `Producer::commit`): every frame counted
        // in it is visible.
        self.tail_seen = ring.tail.0.load(Ordering::Acquire);
        let n = self.tail_seen.wrapping_sub(self.head).min(max);
        let mut slot = self.slot;
        for _ in 0..n {
            match Self::read_slot(ring, slot, buf) {
                Ok(len) => f(Ok(buf.get(..len).unwrap_or(&[]))),
                Err(e) => f(Err(e)),
            }
            slot = Self::next_slot(ring, slot);
        }
        if n != 0 {
            self.slot = slot;
            self.head = self.head.wrapping_add(n);
            // Release pairs with the producer's acquire load of `head` in `reserve`: the slots were read out
            // before the producer may reuse them.
            ring.head.0.store(self.head, Ordering::Release);
        }
        n
    }
}

/// Sizing of a [`PairEnd`]'s rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairConfig {
    /// Queue pairs (independent channels).
    pub queue_pairs: u16,
    /// Frames each direction of each pair holds before sends report [`SendStatus::WouldBlock`].
    pub slots: usize,
    /// Bytes of virtio-net header kept in front of each frame (0, 10 or 12): with a header, offload requests
    /// cross the pair unchanged, as they cross a tap.
    pub vnet_header_len: usize,
}

impl PairConfig {
    /// One queue pair, 256 slots, 12-byte headers.
    pub const fn new() -> Self {
        Self {
            queue_pairs: 1,
            slots: 256,
            vnet_header_len: 12,
        }
    }

    /// Sets the number of queue pairs.
    pub const fn queue_pairs(mut self, pairs: u16) -> Self {
        self.queue_pairs = pairs;
        self
    }

    /// Sets the slots per direction.
    pub const fn slots(mut self, slots: usize) -> Self {
        self.slots = slots;
        self
    }

    /// Sets the header length (0, 10 or 12).
    pub const fn vnet_header_len(mut self, len: usize) -> Self {
        self.vnet_header_len = len;
        self
    }

    fn slot_len(&self) -> usize {
        self.vnet_header_len + crate::MAX_FRAME_LEN
    }
}

impl Default for PairConfig {
    fn default() -> Self {
        Self::new()
    }
}

type Channels = Arc<Vec<Ring>>;

/// One end of an in-memory link: a [`NetBackend`].
#[derive(Debug)]
pub struct PairEnd {
    tx: Channels,
    rx: Channels,
    /// This end is the only producer of each `tx` ring and the only consumer of each `rx` ring (`PairEnd` is not
    /// `Clone`), so the private halves of the indices live here.
    producers: Vec<Producer>,
    consumers: Vec<Consumer>,
    header_len: usize,
    offloads: Offloads,
}

fn channels(config: &PairConfig) -> Channels {
    Arc::new(
        (0..config.queue_pairs.max(1))
            .map(|_| Ring::new(config.slots.max(1), config.slot_len()))
            .collect(),
    )
}

impl PairEnd {
    fn new(tx: Channels, rx: Channels, config: &PairConfig) -> Self {
        Self {
            producers: std::vec![Producer::default(); tx.len()],
            consumers: std::vec![Consumer::default(); rx.len()],
            tx,
            rx,
            header_len: config.vnet_header_len,
            offloads: Offloads::default(),
        }
    }

    /// Two ends wired back to back.
    pub fn pair(config: PairConfig) -> (Self, Self) {
        let (a, b) = (channels(&config), channels(&config));
        (
            Self::new(a.clone(), b.clone(), &config),
            Self::new(b, a, &config),
        )
    }

    /// One end whose sends come back as its own receives.
    pub fn loopback(config: PairConfig) -> Self {
        let a = channels(&config);
        Self::new(a.clone(), a, &config)
    }

    /// The offloads last set by the device.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Frames waiting to be received on `pair`.
    pub fn pending(&self, pair: u16) -> usize {
        self.rx.get(usize::from(pair)).map_or(0, Ring::pending)
    }

    #[inline]
    /// Receives up to `max` pending frames of `pair` in one pass: each is copied into `buf` (header of
    /// [`vnet_header_len`](NetBackend::vnet_header_len) bytes, then the frame) and handed to `f` as the filled
    /// part of `buf`; a frame longer than `buf` is consumed and handed as [`BackendError::TooLarge`], as
    /// [`recv`](NetBackend::recv) does. Cheaper than a `recv` loop: the sending end's index is read once and this
    /// end's published once. Returns the frames consumed (0 when none is pending);
    /// [`BackendError::Unsupported`] for a queue pair the link lacks.
    pub fn recv_burst(
        &mut self,
        pair: u16,
        buf: &mut [u8],
        max: usize,
        f: impl FnMut(Result<&[u8], BackendError>),
    ) -> Result<usize, BackendError> {
        let i = usize::from(pair);
        match (self.rx.get(i), self.consumers.get_mut(i)) {
            (Some(ring), Some(c)) => Ok(c.pop_burst(ring, buf, max, f)),
            _ => Err(BackendError::Unsupported),
        }
    }

    fn producer(&mut self, pair: u16) -> Result<(&Ring, &mut Producer), BackendError> {
        let i = usize::from(pair);
        match (self.tx.get(i), self.producers.get_mut(i)) {
            (Some(ring), Some(p)) => Ok((ring, p)),
            _ => Err(BackendError::Unsupported),
        }
    }
}

impl NetBackend for PairEnd {
    fn vnet_header_len(&self) -> usize {
        self.header_len
    }

    fn queue_pairs(&self) -> u16 {
        u16::try_from(self.tx.len()).unwrap_or(u16::MAX)
    }

    fn send(&mut self, pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        let (ring, producer) = self.producer(pair)?;
        producer.push(ring, frame)
    }

    fn takes_slices(&self) -> bool {
        true
    }

    #[inline(always)]
    fn send_slices(
        &mut self,
        pair: u16,
        header: &[u8],
        frame: &[DeviceSlice<'_>],
    ) -> Result<SendStatus, BackendError> {
        let (ring, producer) = self.producer(pair)?;
        match frame {
            [piece] => producer.push_one(ring, header, piece),
            _ => producer.push_slices(ring, header, frame),
        }
    }

    #[inline(always)]
    fn send_packet(
        &mut self,
        pair: u16,
        packet: &DeviceSlice<'_>,
    ) -> Result<SendStatus, BackendError> {
        // Header and frame go to the same slot, in this order: one copy.
        let (ring, producer) = self.producer(pair)?;
        producer.push_one(ring, &[], packet)
    }

    #[inline]
    fn recv(&mut self, pair: u16, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let i = usize::from(pair);
        match (self.rx.get(i), self.consumers.get_mut(i)) {
            (Some(ring), Some(c)) => c.pop(ring, buf),
            _ => Err(BackendError::Unsupported),
        }
    }

    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), BackendError> {
        self.offloads = offloads;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pair_passes_frames_both_ways_and_bounds_them() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(2).vnet_header_len(0));
        assert_eq!(a.send(0, &[b"he", b"llo"]).unwrap(), SendStatus::Sent);
        assert_eq!(a.send(0, &[b"x"]).unwrap(), SendStatus::Sent);
        assert_eq!(a.send(0, &[b"y"]).unwrap(), SendStatus::WouldBlock);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(1));
        assert_eq!(b.recv(0, &mut buf).unwrap(), None);
        assert_eq!(a.recv(0, &mut buf).unwrap(), None);
        assert_eq!(a.send(1, &[b"z"]), Err(BackendError::Unsupported));
        let big = std::vec![0u8; crate::MAX_FRAME_LEN + 1];
        assert!(matches!(
            a.send(0, &[&big]),
            Err(BackendError::TooLarge { .. })
        ));
    }

    #[test]
    fn loopback_returns_own_frames() {
        let mut l = PairEnd::loopback(PairConfig::new().queue_pairs(2));
        l.send(1, &[b"ping"]).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(l.recv(0, &mut buf).unwrap(), None);
        assert_eq!(l.recv(1, &mut buf).unwrap(), Some(4));
    }

    #[test]
    fn pair_wraps_slots_many_times_in_order() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(3).vnet_header_len(0));
        let mut buf = [0u8; 8];
        let mut next_rx = 0u32;
        for i in 0..100u32 {
            assert_eq!(a.send(0, &[&i.to_le_bytes()]).unwrap(), SendStatus::Sent);
            if i % 2 == 1 {
                assert_eq!(a.pending(0), 0);
                assert_eq!(b.pending(0), 2);
                for _ in 0..2 {
                    assert_eq!(b.recv(0, &mut buf).unwrap(), Some(4));
                    assert_eq!(buf[..4], next_rx.to_le_bytes());
                    next_rx += 1;
                }
            }
        }
        assert_eq!(b.recv(0, &mut buf).unwrap(), None);
    }

    #[test]
    fn pair_recv_into_short_buffer_consumes_the_frame() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(2).vnet_header_len(0));
        a.send(0, &[b"toolong"]).unwrap();
        a.send(0, &[b"ok"]).unwrap();
        let mut small = [0u8; 3];
        assert!(matches!(
            b.recv(0, &mut small),
            Err(BackendError::TooLarge { len: 7, max: 3 })
        ));
        assert_eq!(b.recv(0, &mut small).unwrap(), Some(2));
    }

    #[test]
    fn pair_send_slices_copies_header_and_parts() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(2).vnet_header_len(2));
        let mem = HeapMemory::new(DeviceAddr::new(0x1000), 4096).unwrap();
        let s = DeviceSlice::new(&mem, DeviceAddr::new(0x1000), 6).unwrap();
        s.write_at(0, b"abcdef");
        let parts = [s.subslice(0, 2).unwrap(), s.subslice(4, 2).unwrap()];
        assert!(a.takes_slices());
        assert_eq!(a.send_slices(0, b"hh", &parts).unwrap(), SendStatus::Sent);
        let mut buf = [0u8; 16];
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(6));
        assert_eq!(&buf[..6], b"hhabef");
        assert_eq!(
            a.send_slices(1, b"", &parts),
            Err(BackendError::Unsupported)
        );
    }

    #[test]
    fn pair_send_slices_one_piece_small_big_and_full() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(2).vnet_header_len(2));
        let mem = HeapMemory::new(DeviceAddr::new(0x1000), 8192).unwrap();
        let all = DeviceSlice::new(&mem, DeviceAddr::new(0x1000), 4000).unwrap();
        let bytes: Vec<u8> = (0..4000).map(|i| u8::try_from(i % 251).unwrap()).collect();
        all.write_at(0, &bytes);
        // One small piece (the fast path), then one piece past the small slot (the big area).
        let small = all.subslice(0, 64).unwrap();
        let big = all.subslice(0, 3000).unwrap();
        assert_eq!(a.send_slices(0, b"hh", &[small]).unwrap(), SendStatus::Sent);
        assert_eq!(a.send_slices(0, b"hh", &[big]).unwrap(), SendStatus::Sent);
        assert_eq!(
            a.send_slices(0, b"hh", &[small]).unwrap(),
            SendStatus::WouldBlock
        );
        let mut buf = std::vec![0u8; 4096];
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(66));
        assert_eq!(buf.get(..2), Some(&b"hh"[..]));
        assert_eq!(buf.get(2..66), bytes.get(..64));
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(3002));
        assert_eq!(buf.get(2..3002), bytes.get(..3000));
        let huge = HeapMemory::new(DeviceAddr::new(0), crate::MAX_FRAME_LEN + 1).unwrap();
        let whole = DeviceSlice::new(&huge, DeviceAddr::new(0), crate::MAX_FRAME_LEN + 1).unwrap();
        assert!(matches!(
            b.send_slices(0, b"hh", &[whole]),
            Err(BackendError::TooLarge { .. })
        ));
    }

    #[test]
    fn pair_recv_burst_takes_at_most_max_in_order_and_frees_slots() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(3).vnet_header_len(0));
        let mut buf = [0u8; 4];
        let mut calls = 0;
        assert_eq!(b.recv_burst(0, &mut buf, 8, |_| calls += 1), Ok(0));
        assert_eq!(calls, 0);
        for frame in [&b"ab"[..], b"toolong", b"c"] {
            assert_eq!(a.send(0, &[frame]).unwrap(), SendStatus::Sent);
        }
        assert_eq!(a.send(0, &[b"d"]).unwrap(), SendStatus::WouldBlock);
        let mut seen = Vec::new();
        let mut record = |r: Result<&[u8], BackendError>| seen.push(r.map(<[u8]>::to_vec));
        assert_eq!(b.recv_burst(0, &mut buf, 2, &mut record), Ok(2));
        // Two slots were freed by one publication.
        assert_eq!(a.send(0, &[b"d"]).unwrap(), SendStatus::Sent);
        assert_eq!(a.send(0, &[b"e"]).unwrap(), SendStatus::Sent);
        assert_eq!(b.recv_burst(0, &mut buf, usize::MAX, &mut record), Ok(3));
        assert_eq!(
            seen,
            [
                Ok(b"ab".to_vec()),
                Err(BackendError::TooLarge { len: 7, max: 4 }),
                Ok(b"c".to_vec()),
                Ok(b"d".to_vec()),
                Ok(b"e".to_vec()),
            ]
        );
        // `recv` and `recv_burst` share the same position.
        a.send(0, &[b"f"]).unwrap();
        a.send(0, &[b"g"]).unwrap();
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(1));
        assert_eq!(buf.first(), Some(&b'f'));
        assert_eq!(
            b.recv_burst(0, &mut buf, 8, |r| assert_eq!(r, Ok(&b"g"[..]))),
            Ok(1)
        );
        assert_eq!(b.recv(0, &mut buf).unwrap(), None);
        assert_eq!(
            b.recv_burst(1, &mut buf, 8, |_| ()),
            Err(BackendError::Unsupported)
        );
    }

    #[test]
    fn pair_send_packet_passes_header_and_frame_as_one_frame() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(2).vnet_header_len(2));
        let mem = HeapMemory::new(DeviceAddr::new(0x1000), 8192).unwrap();
        let all = DeviceSlice::new(&mem, DeviceAddr::new(0x1000), 4000).unwrap();
        let bytes: Vec<u8> = (0..4000).map(|i| u8::try_from(i % 251).unwrap()).collect();
        all.write_at(0, &bytes);
        // A small packet and one past the small slot.
        let small = all.subslice(0, 66).unwrap();
        assert_eq!(a.send_packet(0, &small).unwrap(), SendStatus::Sent);
        assert_eq!(a.send_packet(0, &all).unwrap(), SendStatus::Sent);
        assert_eq!(a.send_packet(0, &small).unwrap(), SendStatus::WouldBlock);
        let mut buf = std::vec![0u8; 4096];
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(66));
        assert_eq!(buf.get(..66), bytes.get(..66));
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(4000));
        assert_eq!(buf.get(..4000), bytes.get(..4000));
        assert_eq!(a.send_packet(1, &small), Err(BackendError::Unsupported));
    }

    #[test]
    fn pair_threads_pass_every_frame_in_order() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(8).vnet_header_len(0));
        const N: u32 = 100_000;
        let sender = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < N {
                let bytes = i.to_le_bytes();
                match a.send(0, &[&bytes, &bytes]).unwrap() {
                    SendStatus::Sent => i += 1,
                    SendStatus::WouldBlock => std::thread::yield_now(),
                }
            }
        });
        let mut buf = [0u8; 8];
        let mut expect = 0u32;
        while expect < N {
            match b.recv(0, &mut buf).unwrap() {
                Some(n) => {
                    assert_eq!(n, 8);
                    assert_eq!(buf[..4], expect.to_le_bytes());
                    assert_eq!(buf[4..], expect.to_le_bytes());
                    expect += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        sender.join().unwrap();
    }

    #[test]
    fn pair_carries_small_and_big_frames_interleaved() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(3).vnet_header_len(0));
        let sizes = [60usize, 3000, crate::MAX_FRAME_LEN, 2048, 2049, 1];
        let mut buf = std::vec![0u8; crate::MAX_FRAME_LEN];
        for (i, &len) in sizes.iter().cycle().take(20).enumerate() {
            let frame: Vec<u8> = (0..len)
                .map(|j| u8::try_from((i + j) % 256).unwrap())
                .collect();
            assert_eq!(a.send(0, &[&frame]).unwrap(), SendStatus::Sent);
            assert_eq!(b.recv(0, &mut buf).unwrap(), Some(len));
            assert_eq!(buf.get(..len), Some(&frame[..]));
        }
    }
}
