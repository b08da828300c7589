//! The driver: [`NetDriver`] runs a virtio network device over any [`Transport`] (virtio 1.3 §5.1.5, §5.1.6).
//!
//! Ring memory and packet buffers are carved out of a caller-provided [`DmaRegion`] inside the caller's
//! [`RingMemory`] (a VFIO DMA mapping, a guest's identity-mapped pool, a test heap). Receive buffers are posted
//! once and re-posted as frames are taken; transmit slots are recycled when the device returns them. Nothing is
//! allocated per packet.
//!
//! Transmit: [`NetDriver::send_burst`] queues many frames with one notification decision (`kick_prepare`) and
//! reclaims completed slots lazily (only when fewer than [`TX_RECLAIM_BELOW`] are free, or fewer than the burst
//! needs); [`NetDriver::send`] is a burst of one that reclaims first. Each transmit slot has a small buffer of
//! [`TX_SMALL_SLOT`] bytes (header + frame up to an MTU-sized frame, packed 2 KiB apart for cache and TLB
//! locality) and a big one of header + [`MAX_FRAME_LEN`] used for larger frames; either way one descriptor.
//!
//! Two receive modes: **mergeable** (VIRTIO_NET_F_MRG_RXBUF: small buffers of
//! [`NetDriverConfig::rx_buffer_len`], a frame spans `num_buffers` of them) and **big packets** (one buffer of
//! header + [`MAX_FRAME_LEN`] per chain).
//!
//! Legacy framing (§5.1.6.7, §2.7.4.3): a legacy device that does not offer VIRTIO_F_ANY_LAYOUT gets the
//! `virtio_net_hdr` in a descriptor of its own on both queues, the frame (or the rest of the receive buffer) in the
//! next one, and control requests split into class/command, data and ack descriptors. The bytes stay where they
//! are — the header descriptor ends where the data descriptor starts — so only the descriptors differ; each chain
//! takes two ring entries, so half as many transmit slots and receive buffers are in use.

use alloc::vec::Vec;

use virtio_core::transport::Transport;
use virtio_core::{
    Buffer, DeviceAddr, DeviceSlice, DriverQueue, Features, QueueConfig, RingFormat, RingLayout,
    RingMemory,
};

use crate::error::{NetError, Result};
use crate::wire::{self, feature, status, ConfigRepr, CtrlCommand, HeaderLen, HeaderRepr};
use crate::MAX_FRAME_LEN;

/// A device-visible range of the caller's memory the driver may use for rings and buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRegion {
    /// Device address of the first byte.
    pub base: DeviceAddr,
    /// Length in bytes.
    pub len: usize,
}

/// How to set the driver up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetDriverConfig {
    /// Features the driver accepts if offered (device bits, ring bits, VERSION_1).
    pub supported: Features,
    /// Features the device must offer (initialisation fails otherwise), e.g. `ACCESS_PLATFORM` behind an IOMMU.
    /// Implies accepting them.
    pub required: Features,
    /// Queue pairs wanted (capped at what the device offers).
    pub queue_pairs: u16,
    /// Entries per queue (capped at the device's maximum; a power of two for split rings).
    pub queue_size: u16,
    /// Bytes per receive buffer in mergeable mode.
    pub rx_buffer_len: u32,
    /// Whether each transmit slot also gets a big buffer for frames up to [`MAX_FRAME_LEN`] (default). Without
    /// them, frames are limited to [`TX_SMALL_SLOT`] minus the header and the driver needs far less memory (for
    /// DMA memory that comes in small physically contiguous chunks).
    pub tx_big_buffers: bool,
}

impl NetDriverConfig {
    /// Accepts everything this crate implements, one queue pair of 64 entries, 2 KiB mergeable buffers.
    pub fn new() -> Self {
        Self {
            supported: Self::all_features(),
            required: Features::empty(),
            queue_pairs: 1,
            queue_size: 64,
            rx_buffer_len: 2048,
            tx_big_buffers: true,
        }
    }

    /// Every bit the driver knows how to use. ANY_LAYOUT is acknowledged only on a legacy device (without
    /// VERSION_1, where it lets the header share the frame's descriptor); a modern driver leaves that legacy bit
    /// alone, as every VERSION_1 device accepts any layout (§2.7.4).
    pub fn all_features() -> Features {
        Features::VERSION_1
            | Features::ANY_LAYOUT
            | Features::EVENT_IDX
            | Features::INDIRECT_DESC
            | Features::RING_PACKED
            | Features::IN_ORDER
            | Features::NOTIFICATION_DATA
            | feature::CSUM
            | feature::GUEST_CSUM
            | feature::CTRL_GUEST_OFFLOADS
            | feature::MTU
            | feature::MAC
            | feature::GUEST_TSO4
            | feature::GUEST_TSO6
            | feature::GUEST_ECN
            | feature::GUEST_UFO
            | feature::HOST_TSO4
            | feature::HOST_TSO6
            | feature::HOST_ECN
            | feature::HOST_UFO
            | feature::MRG_RXBUF
            | feature::STATUS
            | feature::CTRL_VQ
            | feature::CTRL_RX
            | feature::CTRL_VLAN
            | feature::CTRL_RX_EXTRA
            | feature::GUEST_ANNOUNCE
            | feature::MQ
            | feature::CTRL_MAC_ADDR
            | feature::SPEED_DUPLEX
    }

    /// Sets the accepted features.
    pub fn supported(mut self, features: Features) -> Self {
        self.supported = features;
        self
    }

    /// Sets the features the device must offer.
    pub fn required(mut self, features: Features) -> Self {
        self.required = features;
        self
    }

    /// Sets whether transmit slots get big buffers (see [`NetDriverConfig::tx_big_buffers`]).
    pub fn tx_big_buffers(mut self, on: bool) -> Self {
        self.tx_big_buffers = on;
        self
    }

    /// Sets the queue pairs wanted.
    pub fn queue_pairs(mut self, pairs: u16) -> Self {
        self.queue_pairs = pairs.max(1);
        self
    }

    /// Sets the queue size.
    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }

    /// Sets the mergeable receive buffer size.
    pub fn rx_buffer_len(mut self, len: u32) -> Self {
        self.rx_buffer_len = len;
        self
    }
}

impl Default for NetDriverConfig {
    fn default() -> Self {
        Self::new()
    }
}

const PAGE: u64 = 4096;
/// Bytes of a transmit slot's small buffer: frames with `header + frame <= TX_SMALL_SLOT` go there, larger ones to
/// the slot's big buffer.
pub const TX_SMALL_SLOT: u32 = 2048;
/// [`NetDriver::send_burst`] reclaims completed transmit slots only when fewer than this many are free (or fewer
/// than the burst needs).
pub const TX_RECLAIM_BELOW: usize = 32;
const CTRL_BUF_LEN: usize = 1024;
const CTRL_ACK_OFFSET: usize = 1016;
/// Polls of the used ring before a control command is declared lost.
const CTRL_SPIN_LIMIT: u32 = 1 << 24;

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The free TX slots, oldest first. Slots are reused in the order the device returns them, so with
/// VIRTIO_F_IN_ORDER slot k keeps pairing with descriptor k lap after lap: a split ring then rewrites neither that
/// descriptor nor its available entry while frames keep their length (see `SplitDriverQueue::add_unpublished`).
#[derive(Debug)]
struct SlotFifo {
    slots: Vec<u16>,
    head: usize,
    len: usize,
}

impl SlotFifo {
    fn new(count: u16) -> Self {
        Self {
            slots: (0..count).collect(),
            head: 0,
            len: usize::from(count),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Slots in all, free or not.
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn pop_front(&mut self) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        let slot = self.slots.get(self.head).copied();
        self.head = if self.head + 1 == self.slots.len() {
            0
        } else {
            self.head + 1
        };
        self.len -= 1;
        slot
    }

    /// The `i`-th free slot from the front (what the `i`-th next [`pop_front`](Self::pop_front) returns).
    #[inline]
    fn peek(&self, i: usize) -> Option<u16> {
        if i >= self.len {
            return None;
        }
        let mut at = self.head + i;
        if at >= self.slots.len() {
            at -= self.slots.len();
        }
        self.slots.get(at).copied()
    }

    /// Returns a slot the device is done with. Each slot is either free or with one in-flight chain, so the FIFO
    /// cannot overflow; if it were full the slot would already be in it and is not added twice.
    #[inline]
    fn push_back(&mut self, slot: u16) {
        if self.len == self.slots.len() {
            return;
        }
        let mut at = self.head + self.len;
        if at >= self.slots.len() {
            at -= self.slots.len();
        }
        if let Some(s) = self.slots.get_mut(at) {
            *s = slot;
            self.len += 1;
        }
    }

    /// Puts back a slot just taken with [`pop_front`](Self::pop_front) and not used.
    fn push_front(&mut self, slot: u16) {
        if self.len == self.slots.len() {
            return;
        }
        self.head = self.head.checked_sub(1).unwrap_or(self.slots.len() - 1);
        if let Some(s) = self.slots.get_mut(self.head) {
            *s = slot;
            self.len += 1;
        }
    }
}

#[derive(Debug)]
struct DriverPair<M> {
    rx: DriverQueue<M, u16>,
    rx_base: DeviceAddr,
    rx_buf_len: u32,
    /// Receive buffers posted (the ring's size, or half of it when each chain takes two descriptors).
    rx_buffers: u16,
    tx: DriverQueue<M, u16>,
    tx_base: DeviceAddr,
    tx_slot_len: u32,
    tx_small_base: DeviceAddr,
    tx_free: SlotFifo,
}

impl<M: RingMemory> DriverPair<M> {
    /// [`fill_tx`](Self::fill_tx) with the header in a descriptor of its own (a legacy device without ANY_LAYOUT),
    /// kept out of line so that `queue_tx` keeps the code of its usual path only. Its chains are published one by
    /// one (`add`), so that `add_unpublished` keeps the usual path as its one caller, which the compiler specialises
    /// for one readable buffer (2–4 instructions a frame, callgrind).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)] // as `fill_tx`
    fn fill_tx_header_alone(
        &mut self,
        memory: &M,
        small_area: Option<DeviceSlice<'_>>,
        frames: &[&[u8]],
        header_bytes: &[u8],
        hl: usize,
        max_frame: usize,
        queue: u16,
    ) -> (usize, Option<NetError>) {
        self.fill_tx::<true>(
            memory,
            small_area,
            frames,
            header_bytes,
            hl,
            max_frame,
            queue,
        )
    }

    /// The copy-and-add loop of [`NetDriver::queue_tx`]: copies header and frame into the next free slot and adds
    /// its chain, frame after frame, until one is longer than `max_frame` ([`NetError::FrameTooLarge`] if it is the
    /// first) or there is no free slot. `HEADER_ALONE`: the header goes in a descriptor of its own (§5.1.6.7).
    /// Returns the frames queued and the error that stopped the loop, if one did.
    #[inline(always)]
    // The burst's state as separate arguments: gathered in a struct it cost `queue_tx` 6–8 more instructions a frame
    // (callgrind, tests/benches/net-callgrind.sh).
    #[allow(clippy::too_many_arguments)]
    fn fill_tx<const HEADER_ALONE: bool>(
        &mut self,
        memory: &M,
        small_area: Option<DeviceSlice<'_>>,
        frames: &[&[u8]],
        header_bytes: &[u8],
        hl: usize,
        max_frame: usize,
        queue: u16,
    ) -> (usize, Option<NetError>) {
        let mut queued = 0;
        let mut error = None;
        for frame in frames {
            if frame.len() > max_frame {
                if queued == 0 {
                    error = Some(NetError::FrameTooLarge {
                        len: frame.len(),
                        max: max_frame,
                    });
                }
                break;
            }
            let Some(slot) = self.tx_free.pop_front() else {
                break;
            };
            let total = hl + frame.len();
            let len = u32::try_from(total).unwrap_or(u32::MAX);
            let addr = if len <= TX_SMALL_SLOT {
                self.tx_small_base.raw() + u64::from(slot) * u64::from(TX_SMALL_SLOT)
            } else {
                self.tx_base.raw() + u64::from(slot) * u64::from(self.tx_slot_len)
            };
            let addr = DeviceAddr::new(addr);
            // Small frames: a sub-slice of the small-buffer array translated once per call.
            let slice = match small_area {
                Some(area) if len <= TX_SMALL_SLOT => {
                    area.subslice(usize::from(slot) * TX_SMALL_SLOT as usize, total)
                }
                _ => DeviceSlice::new(memory, addr, total),
            };
            let Some(slice) = slice else {
                self.tx_free.push_front(slot);
                error = Some(NetError::QueueNotActive(queue));
                break;
            };
            slice.write_at(0, header_bytes);
            slice.write_at(hl, frame);
            let added = if !HEADER_ALONE {
                // Published once for the whole burst, by `kick_prepare` in `queue_tx`.
                self.tx
                    .add_unpublished(&[Buffer::new(addr, len)], &[], slot)
            } else if frame.is_empty() {
                self.tx.add(&[Buffer::new(addr, len)], &[], slot)
            } else {
                // §5.1.6.7: the header alone in the first descriptor, the frame (right after it) in the next.
                let header = u32::try_from(hl).unwrap_or(0);
                let data = DeviceAddr::new(addr.raw() + u64::from(header));
                self.tx.add(
                    &[Buffer::new(addr, header), Buffer::new(data, len - header)],
                    &[],
                    slot,
                )
            };
            if let Err(e) = added {
                self.tx_free.push_front(slot);
                error = Some(ring_err(queue)(e));
                break;
            }
            queued += 1;
        }
        (queued, error)
    }
}

#[derive(Debug)]
struct CtrlQueue<M> {
    queue: DriverQueue<M, u16>,
    base: DeviceAddr,
}

/// A virtio-net driver over transport `T`, with rings and buffers in memory `M`.
#[derive(Debug)]
pub struct NetDriver<T, M> {
    transport: T,
    memory: M,
    features: Features,
    header_len: HeaderLen,
    /// The header goes in a descriptor of its own (legacy device without ANY_LAYOUT, §5.1.6.7).
    header_alone: bool,
    pairs: Vec<DriverPair<M>>,
    ctrl: Option<CtrlQueue<M>>,
    ctrl_index: u16,
    active_pairs: u16,
    max_pairs: u16,
    /// The device's `mtu`, if VIRTIO_NET_F_MTU was negotiated (read once, at initialisation).
    mtu: Option<u16>,
    /// Longest frame sent with a header that asks for no segmentation: [`Self::tx_max_segmented`], capped at `mtu`
    /// plus the Ethernet header with VIRTIO_NET_F_MTU (§5.1.4.2). Worked out once so that a burst picks its limit
    /// with one test of the header, and its loop keeps its one compare per frame.
    tx_max_plain: usize,
    /// Longest frame the transmit buffers take: [`MAX_FRAME_LEN`], or what fits a small slot without
    /// [`NetDriverConfig::tx_big_buffers`]. The limit of segmented (GSO) frames.
    tx_max_segmented: usize,
}

/// Hands out page-aligned pieces of the caller's regions: each piece from the first region with room for it.
struct Carver<'a> {
    regions: &'a [DmaRegion],
    /// Next free device address per region.
    cursors: Vec<u64>,
}

impl<'a> Carver<'a> {
    fn new(regions: &'a [DmaRegion]) -> Self {
        Self {
            regions,
            cursors: regions.iter().map(|r| r.base.raw()).collect(),
        }
    }

    fn take(&mut self, len: u64) -> Result<DeviceAddr> {
        for (r, cursor) in self.regions.iter().zip(self.cursors.iter_mut()) {
            let end = r
                .base
                .raw()
                .saturating_add(u64::try_from(r.len).unwrap_or(u64::MAX));
            let at = round_up(*cursor, PAGE);
            if let Some(next) = at.checked_add(len).filter(|&n| n <= end) {
                *cursor = next;
                return Ok(DeviceAddr::new(at));
            }
        }
        Err(NetError::DmaTooSmall {
            have: self.regions.iter().map(|r| r.len).max().unwrap_or(0),
            needed: usize::try_from(len).unwrap_or(usize::MAX),
        })
    }
}

fn ring_err(queue: u16) -> impl Fn(virtio_core::Error) -> NetError {
    move |source| NetError::Ring { queue, source }
}

/// Where a control request is cut into device-readable descriptors: the end offset of each piece, and how many
/// pieces. One piece; or, on a legacy device without ANY_LAYOUT (§5.1.6.7), class and command alone, then the
/// command data, for MAC_TABLE_SET one piece per MAC table. A request too short or malformed to be cut that way
/// keeps its data in one piece.
fn ctrl_request_pieces(request: &[u8], header_alone: bool) -> ([usize; 3], usize) {
    let len = request.len();
    if len == 0 {
        return ([0; 3], 0);
    }
    if !header_alone || len <= 2 {
        return ([len, 0, 0], 1);
    }
    // The unicast table: a 32-bit entry count (written little-endian by `CtrlCommand::emit`) and 6 bytes per entry.
    let unicast_end = match request {
        [wire::ctrl::CLASS_MAC, wire::ctrl::MAC_TABLE_SET, e0, e1, e2, e3, ..] => {
            usize::try_from(u32::from_le_bytes([*e0, *e1, *e2, *e3]))
                .ok()
                .and_then(|entries| entries.checked_mul(6))
                .and_then(|macs| macs.checked_add(2 + 4))
                .filter(|&end| end < len)
        }
        _ => None,
    };
    match unicast_end {
        Some(end) => ([2, end, len], 3),
        None => ([2, len, 0], 2),
    }
}

/// Makes receive buffer `token` (`len` bytes at `addr`) available as one device-writable descriptor, or with
/// `header_alone` (the header length) as two: the header's bytes, then the rest (§5.1.6.7). The device fills a chain
/// front to back and the two descriptors are adjacent in memory, so the buffer reads the same either way.
#[inline]
fn post_rx<M: RingMemory>(
    rx: &mut DriverQueue<M, u16>,
    addr: DeviceAddr,
    len: u32,
    header_alone: Option<u32>,
    token: u16,
) -> virtio_core::Result<u16> {
    match header_alone {
        Some(header) if header < len => {
            let data = DeviceAddr::new(addr.raw() + u64::from(header));
            rx.add(
                &[],
                &[Buffer::new(addr, header), Buffer::new(data, len - header)],
                token,
            )
        }
        _ => rx.add(&[], &[Buffer::new(addr, len)], token),
    }
}

impl<T: Transport, M: RingMemory + Clone> NetDriver<T, M> {
    /// Initialises the device (§3.1.1) and sets up queues and buffers in `region`.
    pub fn new(
        transport: T,
        memory: M,
        region: DmaRegion,
        config: NetDriverConfig,
    ) -> Result<Self> {
        Self::with_setup(transport, memory, region, config, |_, _| Ok(()))
    }

    /// As [`new`](Self::new), running `before_queues(transport, queue count)` after feature negotiation and before
    /// the queues are set up: the place for transport-specific steps such as `PciTransport::setup_interrupts`.
    pub fn with_setup(
        transport: T,
        memory: M,
        region: DmaRegion,
        config: NetDriverConfig,
        before_queues: impl FnOnce(&mut T, u16) -> Result<()>,
    ) -> Result<Self> {
        Self::with_regions(transport, memory, &[region], config, before_queues)
    }

    /// As [`with_setup`](Self::with_setup), with rings and buffers carved out of several regions (each ring and
    /// each queue's buffer array lies inside one region): for DMA memory that is contiguous only in pieces, such as
    /// IOVA-as-PA memory.
    pub fn with_regions(
        mut transport: T,
        memory: M,
        regions: &[DmaRegion],
        config: NetDriverConfig,
        before_queues: impl FnOnce(&mut T, u16) -> Result<()>,
    ) -> Result<Self> {
        // Under VERSION_1 the negotiation leaves ANY_LAYOUT (legacy only, §6.3) alone.
        let features = transport.begin_init(config.supported | config.required, config.required)?;
        let header_len = HeaderLen::for_features(features);
        // §5.1.6.7: a legacy device that did not take ANY_LAYOUT wants the header in a descriptor of its own.
        let header_alone = !features.intersects(Features::VERSION_1 | Features::ANY_LAYOUT);
        let descriptors_per_chain = if header_alone { 2 } else { 1 };
        let mut bytes = [0u8; 24];
        let config_len = ConfigRepr::len_for(features);
        transport.read_config_consistent(0, bytes.get_mut(..config_len).unwrap_or(&mut []))?;
        let device_config = ConfigRepr::parse(&bytes, features)?;
        let mtu = features.contains(feature::MTU).then_some(device_config.mtu);
        let tx_max_segmented = if config.tx_big_buffers {
            MAX_FRAME_LEN
        } else {
            TX_SMALL_SLOT as usize - header_len.bytes()
        };
        // §5.1.4.2: with VIRTIO_NET_F_MTU the driver must not transmit frames longer than mtu (plus the Ethernet
        // header) with gso_type NONE or ECN.
        let tx_max_plain = mtu.map_or(tx_max_segmented, |mtu| {
            tx_max_segmented.min(usize::from(mtu) + wire::ETH_HEADER_LEN)
        });
        let max_pairs = if features.contains(feature::MQ) {
            device_config.max_virtqueue_pairs.max(1)
        } else {
            1
        };
        let pairs = config.queue_pairs.clamp(1, max_pairs);
        let has_ctrl = features.contains(feature::CTRL_VQ);
        let ctrl_index = max_pairs.saturating_mul(2);
        before_queues(&mut transport, pairs * 2 + u16::from(has_ctrl))?;

        let mut carver = Carver::new(regions);
        let mergeable = features.contains(feature::MRG_RXBUF);
        let hl = u32::try_from(header_len.bytes()).unwrap_or(20);
        let big =
            u32::try_from(round_up(u64::from(hl) + MAX_FRAME_LEN as u64, 16)).unwrap_or(u32::MAX);
        let rx_buf_len = if mergeable {
            config.rx_buffer_len.max(hl + 1)
        } else {
            big
        };
        let queue = |transport: &mut T,
                     index: u16,
                     carver: &mut Carver<'_>|
         -> Result<DriverQueue<M, u16>> {
            let max = transport.max_queue_size(index);
            // Legacy (§4.1.5.1.3.1): no size negotiation, the ring has the device's size.
            let mut size = if features.contains(Features::VERSION_1) {
                config.queue_size.min(max)
            } else {
                max
            };
            if !features.contains(Features::RING_PACKED) && !size.is_power_of_two() {
                size = size.checked_next_power_of_two().map_or(0, |p| p / 2);
            }
            if size == 0 {
                return Err(NetError::QueueNotActive(index));
            }
            let (qc, len) = if features.contains(Features::VERSION_1) {
                let layout = RingLayout::new(
                    if features.contains(Features::RING_PACKED) {
                        RingFormat::Packed
                    } else {
                        RingFormat::Split
                    },
                    size,
                );
                let len = layout.total_len();
                let base = carver.take(len as u64)?;
                (QueueConfig::with_layout(max, &layout, base), len)
            } else {
                let len = RingLayout::new(RingFormat::Split, size).legacy_total_len(PAGE);
                let base = carver.take(len as u64)?;
                (QueueConfig::legacy(max, size, base, PAGE), len)
            };
            let qc = qc.ok_or(NetError::DmaTooSmall {
                have: len,
                needed: len,
            })?;
            let q =
                DriverQueue::new(&qc, features, memory.clone(), None).map_err(ring_err(index))?;
            transport.setup_queue(index, &qc).map_err(ring_err(index))?;
            Ok(q)
        };
        let mut out_pairs = Vec::with_capacity(usize::from(pairs));
        for p in 0..pairs {
            let rx = queue(&mut transport, 2 * p, &mut carver)?;
            // As many buffers and slots as chains fit the ring at once.
            let rx_buffers = rx.size() / descriptors_per_chain;
            if rx_buffers == 0 {
                return Err(NetError::QueueNotActive(2 * p));
            }
            let rx_base = carver.take(u64::from(rx_buffers) * u64::from(rx_buf_len))?;
            let tx = queue(&mut transport, 2 * p + 1, &mut carver)?;
            let tx_slots = tx.size() / descriptors_per_chain;
            if tx_slots == 0 {
                return Err(NetError::QueueNotActive(2 * p + 1));
            }
            let tx_small_base = carver.take(u64::from(tx_slots) * u64::from(TX_SMALL_SLOT))?;
            let (tx_base, tx_slot_len) = if config.tx_big_buffers {
                (carver.take(u64::from(tx_slots) * u64::from(big))?, big)
            } else {
                (tx_small_base, 0)
            };
            let tx_free = SlotFifo::new(tx_slots);
            out_pairs.push(DriverPair {
                rx,
                rx_base,
                rx_buf_len,
                rx_buffers,
                tx,
                tx_base,
                tx_slot_len,
                tx_small_base,
                tx_free,
            });
        }
        let ctrl = if has_ctrl {
            let q = queue(&mut transport, ctrl_index, &mut carver)?;
            let base = carver.take(CTRL_BUF_LEN as u64)?;
            Some(CtrlQueue { queue: q, base })
        } else {
            None
        };
        let mut driver = Self {
            transport,
            memory,
            features,
            header_len,
            header_alone,
            pairs: out_pairs,
            ctrl,
            ctrl_index,
            active_pairs: 1,
            max_pairs,
            mtu,
            tx_max_plain,
            tx_max_segmented,
        };
        for p in 0..pairs {
            driver.post_all_rx(p)?;
        }
        driver.transport.finish_init();
        for p in 0..pairs {
            driver.kick(2 * p);
        }
        if pairs > 1 {
            driver.set_queue_pairs(pairs)?;
        }
        Ok(driver)
    }

    fn post_all_rx(&mut self, pair: u16) -> Result<()> {
        let queue = 2 * pair;
        let header_alone = self.rx_header_alone();
        let p = self
            .pairs
            .get_mut(usize::from(pair))
            .ok_or(NetError::QueueNotActive(queue))?;
        for i in 0..p.rx_buffers {
            let addr = DeviceAddr::new(p.rx_base.raw() + u64::from(i) * u64::from(p.rx_buf_len));
            post_rx(&mut p.rx, addr, p.rx_buf_len, header_alone, i).map_err(ring_err(queue))?;
        }
        Ok(())
    }

    /// The header length when receive buffers keep the header in a descriptor of its own (see [`post_rx`]).
    fn rx_header_alone(&self) -> Option<u32> {
        self.header_alone
            .then(|| u32::try_from(self.header_len.bytes()).unwrap_or(0))
    }

    /// Notifies `queue` if the device wants it.
    fn kick(&mut self, queue: u16) {
        let nd = self.features.contains(Features::NOTIFICATION_DATA);
        let q = if queue == self.ctrl_index {
            self.ctrl.as_mut().map(|c| &mut c.queue)
        } else {
            self.pairs.get_mut(usize::from(queue / 2)).map(|p| {
                if queue % 2 == 0 {
                    &mut p.rx
                } else {
                    &mut p.tx
                }
            })
        };
        if let Some(q) = q {
            if q.kick_prepare() {
                let value = if nd {
                    q.notification_data(queue).to_u32()
                } else {
                    u32::from(queue)
                };
                self.transport.notify(queue, value);
            }
        }
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The header form in use.
    pub fn header_len(&self) -> HeaderLen {
        self.header_len
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Queue pairs set up.
    pub fn queue_pairs(&self) -> u16 {
        u16::try_from(self.pairs.len()).unwrap_or(u16::MAX)
    }

    /// Queue pairs the device steers traffic to (VQ_PAIRS_SET).
    pub fn active_pairs(&self) -> u16 {
        self.active_pairs
    }

    /// The device configuration, read consistently.
    pub fn read_config(&mut self) -> Result<ConfigRepr> {
        let mut bytes = [0u8; 24];
        let len = ConfigRepr::len_for(self.features);
        self.transport
            .read_config_consistent(0, bytes.get_mut(..len).unwrap_or(&mut []))?;
        Ok(ConfigRepr::parse(&bytes, self.features)?)
    }

    /// The MAC address (VIRTIO_NET_F_MAC), or `None` if the device has none.
    pub fn mac(&mut self) -> Result<Option<[u8; 6]>> {
        if !self.features.contains(feature::MAC) {
            return Ok(None);
        }
        Ok(Some(self.read_config()?.mac))
    }

    /// Whether the link is up (always true without VIRTIO_NET_F_STATUS, §5.1.4.2).
    pub fn link_up(&mut self) -> Result<bool> {
        Ok(self.read_config()?.status & status::LINK_UP != 0)
    }

    /// The device's `mtu` (VIRTIO_NET_F_MTU), or `None` if that was not negotiated. Frames sent with a header that
    /// asks for no segmentation are limited to it plus the 14-byte Ethernet header (see
    /// [`max_tx_frame`](Self::max_tx_frame)).
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// The link speed in Mbit/s (VIRTIO_NET_F_SPEED_DUPLEX), read from the device now (it may change, §5.1.4.2);
    /// `None` if the feature was not negotiated or the device reports the speed unknown (§5.1.4: anything above
    /// [`wire::SPEED_MAX`]).
    pub fn speed(&mut self) -> Result<Option<u32>> {
        if !self.features.contains(feature::SPEED_DUPLEX) {
            return Ok(None);
        }
        Ok(Some(self.read_config()?.speed).filter(|speed| *speed <= wire::SPEED_MAX))
    }

    /// The duplex mode, [`wire::DUPLEX_FULL`] or [`wire::DUPLEX_HALF`] (VIRTIO_NET_F_SPEED_DUPLEX), read from the
    /// device now (it may change, §5.1.4.2); `None` if the feature was not negotiated or the device reports the
    /// duplex unknown (or a value §5.1.4 does not define).
    pub fn duplex(&mut self) -> Result<Option<u8>> {
        if !self.features.contains(feature::SPEED_DUPLEX) {
            return Ok(None);
        }
        Ok(Some(self.read_config()?.duplex)
            .filter(|duplex| matches!(*duplex, wire::DUPLEX_FULL | wire::DUPLEX_HALF)))
    }

    /// Call on a configuration-change interrupt: re-reads the configuration and acks an announce request
    /// (GUEST_ANNOUNCE). Returns the new configuration.
    pub fn handle_config_change(&mut self) -> Result<ConfigRepr> {
        let config = self.read_config()?;
        if config.status & status::ANNOUNCE != 0 && self.features.contains(feature::GUEST_ANNOUNCE)
        {
            self.command(&CtrlCommand::AnnounceAck)?;
        }
        Ok(config)
    }

    /// Returns completed transmit slots of `pair` to the free list; returns how many.
    pub fn reclaim_tx(&mut self, pair: u16) -> Result<usize> {
        let queue = 2 * pair + 1;
        let p = self
            .pairs
            .get_mut(usize::from(pair))
            .ok_or(NetError::QueueNotActive(queue))?;
        let tx_free = &mut p.tx_free;
        p.tx.pop_used_batch(|used| tx_free.push_back(used.token))
            .map_err(ring_err(queue))
    }

    /// The longest frame [`send`](Self::send) takes with a header that asks for no segmentation (gso_type NONE or
    /// ECN): [`MAX_FRAME_LEN`], or what fits a small slot without [`NetDriverConfig::tx_big_buffers`]; with
    /// VIRTIO_NET_F_MTU at most [`mtu`](Self::mtu) plus the 14-byte Ethernet header (§5.1.4.2).
    pub fn max_tx_frame(&self) -> usize {
        self.tx_max_plain
    }

    /// The longest frame [`send`](Self::send) takes with `header`: [`max_tx_frame`](Self::max_tx_frame) if it asks
    /// for no segmentation, else what the transmit buffers hold (the MTU limits segments, not the frame).
    #[inline]
    pub fn max_tx_frame_for(&self, header: &HeaderRepr) -> usize {
        if wire::gso::is_segmented(header.gso_type) {
            self.tx_max_segmented
        } else {
            self.tx_max_plain
        }
    }

    /// Sends `frame` on `pair` with the offload requests of `header` (checksum, GSO; `num_buffers` is ignored).
    /// Reclaims completed slots first; a burst of one otherwise (see [`send_burst`](Self::send_burst)).
    ///
    /// Errors: [`NetError::FrameTooLarge`] for a frame longer than [`max_tx_frame_for`](Self::max_tx_frame_for)
    /// `header` (with VIRTIO_NET_F_MTU: `mtu` plus the Ethernet header unless `header` asks for segmentation),
    /// [`NetError::QueueFull`] when no transmit slot is free.
    pub fn send(&mut self, pair: u16, frame: &[u8], header: &HeaderRepr) -> Result<()> {
        match self.queue_tx(pair, &[frame], header, usize::MAX)? {
            0 => Err(NetError::QueueFull),
            _ => Ok(()),
        }
    }

    /// Queues `frames` on `pair`, all with the offload requests of `header` (built once; `num_buffers` is ignored),
    /// and notifies the device at most once. Returns how many frames were queued, in order from the first: fewer
    /// than `frames.len()` (possibly 0) when the ring is full, or when a later frame is longer than
    /// [`max_tx_frame_for`](Self::max_tx_frame_for) `header` (it and the rest are not queued). Completed slots are
    /// reclaimed only when fewer than [`TX_RECLAIM_BELOW`] are free or fewer than `frames.len()`, so the used ring is
    /// read once every few bursts.
    ///
    /// Errors: [`NetError::FrameTooLarge`] if the *first* frame is too long; a ring error only if nothing was
    /// queued (otherwise the next call reports it).
    pub fn send_burst(
        &mut self,
        pair: u16,
        frames: &[&[u8]],
        header: &HeaderRepr,
    ) -> Result<usize> {
        self.queue_tx(pair, frames, header, TX_RECLAIM_BELOW)
    }

    fn queue_tx(
        &mut self,
        pair: u16,
        frames: &[&[u8]],
        header: &HeaderRepr,
        reclaim_below: usize,
    ) -> Result<usize> {
        let queue = 2 * pair + 1;
        let hl = self.header_len.bytes();
        let header_alone = self.header_alone;
        // Never above MAX_FRAME_LEN, and the compiler is told so: with that bound it drops the overflow checks on
        // `hl + frame.len()` in the copy loop (about 14 instructions a frame without it, callgrind). A first frame
        // over the limit is refused by that loop, which compares every frame with it anyway (a check of its own here
        // cost 2–5 instructions a frame in the loop's register allocation).
        let max_frame = self.max_tx_frame_for(header).min(MAX_FRAME_LEN);
        let mut h = *header;
        h.num_buffers = 0;
        let header_bytes = h.to_bytes(self.header_len);
        let header_bytes = header_bytes.get(..hl).unwrap_or(&[]);
        let memory = &self.memory;
        let p = self
            .pairs
            .get_mut(usize::from(pair))
            .ok_or(NetError::QueueNotActive(queue))?;
        if frames.is_empty() {
            return Ok(0);
        }
        let free = p.tx_free.len();
        if free < reclaim_below || free < frames.len() {
            let tx_free = &mut p.tx_free;
            p.tx.pop_used_batch(|used| tx_free.push_back(used.token))
                .map_err(ring_err(queue))?;
        }
        let small_area = DeviceSlice::new(
            memory,
            p.tx_small_base,
            p.tx_free.capacity() * TX_SMALL_SLOT as usize,
        );
        if let Some(area) = small_area {
            // The device read these slots last: ask for them owned now, so that their misses overlap instead of
            // each frame's copy waiting for its own.
            for (i, frame) in frames.iter().enumerate() {
                let Some(slot) = p.tx_free.peek(i) else {
                    break;
                };
                let len = hl + frame.len();
                // A frame too long for its small slot is copied to its big slot instead: nothing to ask for here.
                if len > TX_SMALL_SLOT as usize {
                    continue;
                }
                if let Some(s) = area.subslice(usize::from(slot) * TX_SMALL_SLOT as usize, len) {
                    s.prefetch_for_write();
                }
            }
        }
        // One copy of the loop per descriptor layout: the usual one keeps no per-frame test of it.
        let (queued, error) = if header_alone {
            p.fill_tx_header_alone(
                memory,
                small_area,
                frames,
                header_bytes,
                hl,
                max_frame,
                queue,
            )
        } else {
            p.fill_tx::<false>(
                memory,
                small_area,
                frames,
                header_bytes,
                hl,
                max_frame,
                queue,
            )
        };
        if queued > 0 {
            self.kick(queue);
        }
        match error {
            Some(e) if queued == 0 => Err(e),
            _ => Ok(queued),
        }
    }

    /// Takes the next received frame of `pair` into `buf`: returns its header and length, or `None`. The buffers
    /// are re-posted. A frame longer than `buf` is consumed and reported as [`NetError::FrameTooLarge`].
    pub fn receive(&mut self, pair: u16, buf: &mut [u8]) -> Result<Option<(HeaderRepr, usize)>> {
        let queue = 2 * pair;
        let hl = self.header_len.bytes();
        let mergeable = self.features.contains(feature::MRG_RXBUF);
        let header_alone = self.rx_header_alone();
        let memory = &self.memory;
        let p = self
            .pairs
            .get_mut(usize::from(pair))
            .ok_or(NetError::QueueNotActive(queue))?;
        let Some(first) = p.rx.pop_used().map_err(ring_err(queue))? else {
            return Ok(None);
        };
        let addr_of =
            |i: u16| DeviceAddr::new(p.rx_base.raw() + u64::from(i) * u64::from(p.rx_buf_len));
        let read = |i: u16, offset: usize, dst: &mut [u8]| {
            if let Some(s) = DeviceSlice::new(memory, addr_of(i), offset + dst.len()) {
                s.read_at(offset, dst);
            }
        };
        let mut fault = first.len < u32::try_from(hl).unwrap_or(u32::MAX);
        let mut hbytes = [0u8; 20];
        let mut header = HeaderRepr::new();
        let mut total = 0usize;
        let mut too_large = false;
        if !fault {
            read(first.token, 0, hbytes.get_mut(..hl).unwrap_or(&mut []));
            header = HeaderRepr::parse(&wire::Header::new_unchecked(
                hbytes.get(..hl).unwrap_or(&[]),
            ));
            let n = first.len as usize - hl;
            match buf.get_mut(..n) {
                Some(dst) => read(first.token, hl, dst),
                None => too_large = true,
            }
            total = n;
        }
        let mut tokens = [first.token; 1];
        let rx_buf_len = p.rx_buf_len;
        let repost = |q: &mut DriverQueue<M, u16>, i: u16| {
            post_rx(q, addr_of(i), rx_buf_len, header_alone, i)
        };
        repost(&mut p.rx, tokens[0]).map_err(ring_err(queue))?;
        let count = if mergeable && !fault {
            header.num_buffers
        } else {
            1
        };
        if count == 0 {
            fault = true;
        }
        for _ in 1..count {
            let Some(next) = p.rx.pop_used().map_err(ring_err(queue))? else {
                fault = true;
                break;
            };
            tokens[0] = next.token;
            let n = next.len as usize;
            match buf.get_mut(total..total + n) {
                Some(dst) if !too_large => read(next.token, 0, dst),
                _ => too_large = true,
            }
            total += n;
            repost(&mut p.rx, next.token).map_err(ring_err(queue))?;
        }
        self.kick(queue);
        if fault {
            return Err(NetError::DeviceFault { queue });
        }
        if too_large {
            return Err(NetError::FrameTooLarge {
                len: total,
                max: buf.len(),
            });
        }
        Ok(Some((header, total)))
    }

    /// Sends a control command and waits for the device's ack.
    pub fn command(&mut self, command: &CtrlCommand<'_>) -> Result<()> {
        let (class, cmd) = command.class_command();
        if !self.features.contains(command.required_feature()) {
            return Err(NetError::CtrlRefused {
                class,
                command: cmd,
            });
        }
        let mut buf = [0u8; crate::device::CTRL_MAX_REQUEST];
        let n = command.emit(&mut buf)?;
        let ack = self.command_raw(buf.get(..n).unwrap_or(&[]))?;
        if ack == wire::ctrl::OK {
            if let CtrlCommand::MqVqPairsSet(p) = command {
                self.active_pairs = *p;
            }
            Ok(())
        } else {
            Err(NetError::CtrlRefused {
                class,
                command: cmd,
            })
        }
    }

    /// Sends raw control-request bytes (class, command, payload) and returns the ack byte (for tests and
    /// commands this crate does not model).
    pub fn command_raw(&mut self, request: &[u8]) -> Result<u8> {
        let queue = self.ctrl_index;
        let header_alone = self.header_alone;
        let ctrl = self.ctrl.as_mut().ok_or(NetError::QueueNotActive(queue))?;
        let len = request.len().min(CTRL_ACK_OFFSET);
        let request = request.get(..len).unwrap_or(&[]);
        let req = DeviceSlice::new(&self.memory, ctrl.base, CTRL_BUF_LEN)
            .ok_or(NetError::QueueNotActive(queue))?;
        req.write_at(0, request);
        req.write_at(CTRL_ACK_OFFSET, &[0xff]);
        let ack_addr = DeviceAddr::new(ctrl.base.raw() + CTRL_ACK_OFFSET as u64);
        let (ends, pieces) = ctrl_request_pieces(request, header_alone);
        let mut readable = [Buffer::new(ctrl.base, 0); 3];
        let mut start = 0;
        for (buffer, end) in readable.iter_mut().zip(ends).take(pieces) {
            let at = DeviceAddr::new(ctrl.base.raw() + start as u64);
            *buffer = Buffer::new(at, u32::try_from(end - start).unwrap_or(0));
            start = end;
        }
        let readable = readable.get(..pieces).unwrap_or(&[]);
        ctrl.queue
            .add(readable, &[Buffer::new(ack_addr, 1)], 0)
            .map_err(ring_err(queue))?;
        self.kick(queue);
        let ctrl = self.ctrl.as_mut().ok_or(NetError::QueueNotActive(queue))?;
        let req = DeviceSlice::new(&self.memory, ctrl.base, CTRL_BUF_LEN)
            .ok_or(NetError::QueueNotActive(queue))?;
        for _ in 0..CTRL_SPIN_LIMIT {
            if let Some(used) = ctrl.queue.pop_used().map_err(ring_err(queue))? {
                let mut ack = [wire::ctrl::ERR];
                if used.len >= 1 {
                    req.read_at(CTRL_ACK_OFFSET, &mut ack);
                }
                return Ok(ack[0]);
            }
            core::hint::spin_loop();
        }
        Err(NetError::CtrlTimeout)
    }

    /// Steers traffic over `pairs` queue pairs (VIRTIO_NET_F_MQ).
    pub fn set_queue_pairs(&mut self, pairs: u16) -> Result<()> {
        if pairs == 0 || pairs > self.queue_pairs() || pairs > self.max_pairs {
            return Err(NetError::InvalidArgument);
        }
        self.command(&CtrlCommand::MqVqPairsSet(pairs))
    }

    /// Index of the receive queue of `pair`.
    pub fn rx_queue(pair: u16) -> u16 {
        2 * pair
    }

    /// Index of the transmit queue of `pair`.
    pub fn tx_queue(pair: u16) -> u16 {
        2 * pair + 1
    }

    /// Index of the control queue.
    pub fn ctrl_queue(&self) -> Option<u16> {
        self.ctrl.as_ref().map(|_| self.ctrl_index)
    }

    fn queue_mut(&mut self, queue: u16) -> Option<&mut DriverQueue<M, u16>> {
        if queue == self.ctrl_index {
            return self.ctrl.as_mut().map(|c| &mut c.queue);
        }
        let p = self.pairs.get_mut(usize::from(queue / 2))?;
        Some(if queue % 2 == 0 { &mut p.rx } else { &mut p.tx })
    }

    /// Whether `queue` has used buffers (the `has_used` of an interrupt handler's
    /// [`InterruptDispatch`](virtio_core::transport::InterruptDispatch)).
    pub fn has_used(&mut self, queue: u16) -> bool {
        self.queue_mut(queue).is_some_and(|q| q.has_used())
    }

    /// Runs a transport's interrupt handler: `handler` gets the transport and the `has_used` of this driver's queues,
    /// e.g. `driver.handle_interrupt(|t, used| t.handle_interrupt(&mut dispatch, used))` over virtio-mmio or
    /// `|t, used| t.handle_vector(vector, &mut dispatch, used)` over virtio-pci. ([`transport_mut`](Self::transport_mut)
    /// and [`has_used`](Self::has_used) cannot be borrowed together, and asking `has_used` before the handler
    /// acknowledges the interrupt would miss buffers used in between.)
    pub fn handle_interrupt<R>(
        &mut self,
        handler: impl FnOnce(&mut T, &mut dyn FnMut(u16) -> bool) -> R,
    ) -> R {
        let Self {
            transport,
            pairs,
            ctrl,
            ctrl_index,
            ..
        } = self;
        let ctrl_index = *ctrl_index;
        let mut has_used = |queue: u16| {
            if queue == ctrl_index {
                return ctrl.as_ref().is_some_and(|c| c.queue.has_used());
            }
            pairs.get(usize::from(queue / 2)).is_some_and(|p| {
                if queue % 2 == 0 {
                    p.rx.has_used()
                } else {
                    p.tx.has_used()
                }
            })
        };
        handler(transport, &mut has_used)
    }

    /// Re-enables interrupts of `queue`; `false` if used buffers arrived meanwhile (poll again).
    pub fn enable_interrupts(&mut self, queue: u16) -> bool {
        self.queue_mut(queue).is_none_or(|q| q.enable_callbacks())
    }

    /// Suppresses interrupts of `queue` (polling mode).
    pub fn disable_interrupts(&mut self, queue: u16) {
        if let Some(q) = self.queue_mut(queue) {
            q.disable_callbacks();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{ctrl_request_pieces, SlotFifo};
    use crate::wire::ctrl;

    #[test]
    fn ctrl_request_pieces_cut_only_without_any_layout_and_keep_malformed_tables_whole() {
        let rx = [ctrl::CLASS_RX, ctrl::RX_PROMISC, 1];
        assert_eq!(ctrl_request_pieces(&rx, false), ([3, 0, 0], 1));
        assert_eq!(ctrl_request_pieces(&rx, true), ([2, 3, 0], 2));
        // Nothing to cut: empty, class only, class and command only.
        assert_eq!(ctrl_request_pieces(&[], true), ([0; 3], 0));
        assert_eq!(ctrl_request_pieces(&rx[..1], true), ([1, 0, 0], 1));
        assert_eq!(ctrl_request_pieces(&rx[..2], true), ([2, 0, 0], 1));
        // MAC_TABLE_SET: one unicast entry, then a multicast table of none.
        let mut tables = alloc::vec![ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, 1, 0, 0, 0];
        tables.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(ctrl_request_pieces(&tables, true), ([2, 12, 16], 3));
        assert_eq!(ctrl_request_pieces(&tables, false), ([16, 0, 0], 1));
        // A unicast count that runs to the end or past it (or overflows) leaves the data in one piece.
        let mut whole = tables.clone();
        whole.truncate(12);
        assert_eq!(ctrl_request_pieces(&whole, true), ([2, 12, 0], 2));
        let mut huge = tables.clone();
        huge.splice(2..6, u32::MAX.to_le_bytes());
        assert_eq!(ctrl_request_pieces(&huge, true), ([2, 16, 0], 2));
        let truncated = tables.get(..4).unwrap();
        assert_eq!(ctrl_request_pieces(truncated, true), ([2, 4, 0], 2));
    }

    #[test]
    fn slot_fifo_hands_slots_back_oldest_first_across_wraps() {
        let mut fifo = SlotFifo::new(4);
        assert_eq!(fifo.len(), 4);
        assert_eq!(
            (fifo.peek(0), fifo.peek(3), fifo.peek(4)),
            (Some(0), Some(3), None)
        );
        // Take two, return them, take all: the returned ones come after the never-used ones.
        assert_eq!((fifo.pop_front(), fifo.pop_front()), (Some(0), Some(1)));
        fifo.push_back(0);
        fifo.push_back(1);
        let order: alloc::vec::Vec<u16> = core::iter::from_fn(|| fifo.pop_front()).collect();
        assert_eq!(order, [2, 3, 0, 1]);
        assert_eq!(fifo.len(), 0);
        assert_eq!(fifo.peek(0), None);
        // Many laps keep the order slots were returned in.
        for lap in 0..10u16 {
            for s in 0..4 {
                fifo.push_back((s + lap) % 4);
            }
            for s in 0..4 {
                assert_eq!(fifo.peek(0), Some((s + lap) % 4));
                assert_eq!(fifo.pop_front(), Some((s + lap) % 4));
            }
        }
    }

    #[test]
    fn slot_fifo_push_front_undoes_a_pop_and_never_overflows() {
        let mut fifo = SlotFifo::new(3);
        let first = fifo.pop_front().unwrap();
        fifo.push_front(first);
        assert_eq!(fifo.len(), 3);
        assert_eq!(fifo.pop_front(), Some(0));
        // Full: neither end grows it.
        fifo.push_back(0);
        fifo.push_back(7);
        fifo.push_front(9);
        assert_eq!(fifo.len(), 3);
        let order: alloc::vec::Vec<u16> = core::iter::from_fn(|| fifo.pop_front()).collect();
        assert_eq!(order, [1, 2, 0]);
        let mut empty = SlotFifo::new(0);
        assert_eq!(empty.pop_front(), None);
        empty.push_back(1);
        empty.push_front(1);
        assert_eq!(empty.len(), 0);
    }
}
