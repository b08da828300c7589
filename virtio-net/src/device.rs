//! The device model: [`NetDevice`] presents a virtio network card (virtio 1.3 §5.1) to a driver through any
//! transport, and moves frames between its queues and a [`NetBackend`].
//!
//! Queue `2·i` is the receive queue of pair `i`, `2·i + 1` its transmit queue, and `2·max_pairs` the control queue
//! (§5.1.2). TX runs when the driver notifies a transmit queue (or the VMM calls [`NetDevice::process_tx`]): chains
//! are drained in bursts of [`TX_BURST`] with driver notifications disabled, returned with one batch of used
//! elements and one interrupt decision per burst, and notifications are re-enabled with the race-free re-check.
//! In TX polling mode ([`NetDevice::set_tx_polling`]) notifications stay disabled and `process_tx` returns as soon
//! as the ring is empty: the VMM must keep calling it.
//! RX runs when the VMM calls [`NetDevice::process_rx`] (the backend's readiness fd fired) or the driver adds
//! receive buffers: a backend frame goes into one chain, or several with VIRTIO_NET_F_MRG_RXBUF (`num_buffers`).
//!
//! Bad input is counted per [`DropReason`] and reported as [`NetError::Dropped`]; the device goes on serving the
//! rest of the queue and the other queues.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::{
    Chain, DeviceAddr, DeviceQueue, DeviceSlice, Features, InOrderBatch, NotificationData, Popped,
    RingMemory, UsedToken,
};

use crate::backend::{BackendError, NetBackend, Offloads, SendStatus};
use crate::error::{DropReason, NetCounters, NetError, Result};
use crate::wire::{self, feature, status, ConfigRepr, CtrlCommand, HeaderLen, RxMode};
use crate::MAX_FRAME_LEN;

/// Chains handled per TX burst before used elements are published and an interrupt is considered.
pub const TX_BURST: usize = 64;
/// Frames handled per RX burst before an interrupt is considered.
pub const RX_BURST: usize = 64;
/// MAC filter entries kept per table (unicast, multicast); a longer table makes that class pass unfiltered.
pub const MAC_TABLE_ENTRIES: usize = 64;
/// Longest control request accepted (class, command and payload: two full MAC tables).
pub const CTRL_MAX_REQUEST: usize = 2 + 2 * (4 + 6 * MAC_TABLE_ENTRIES);
const MAX_HEADER: usize = 20;
/// Most frame pieces (readable descriptors, after the header) handed to [`NetBackend::send_slices`]; longer chains
/// take the copying path.
const TX_MAX_PARTS: usize = 8;

/// Device bits this model implements (others passed to the builder are not offered).
const SUPPORTED: Features = Features::from_bits_retain(
    feature::CSUM.bits()
        | feature::GUEST_CSUM.bits()
        | feature::CTRL_GUEST_OFFLOADS.bits()
        | feature::MTU.bits()
        | feature::MAC.bits()
        | feature::GUEST_TSO4.bits()
        | feature::GUEST_TSO6.bits()
        | feature::GUEST_ECN.bits()
        | feature::GUEST_UFO.bits()
        | feature::HOST_TSO4.bits()
        | feature::HOST_TSO6.bits()
        | feature::HOST_ECN.bits()
        | feature::HOST_UFO.bits()
        | feature::MRG_RXBUF.bits()
        | feature::STATUS.bits()
        | feature::CTRL_VQ.bits()
        | feature::CTRL_RX.bits()
        | feature::CTRL_VLAN.bits()
        | feature::CTRL_RX_EXTRA.bits()
        | feature::GUEST_ANNOUNCE.bits()
        | feature::MQ.bits()
        | feature::CTRL_MAC_ADDR.bits()
        | feature::SPEED_DUPLEX.bits()
        | Features::TRANSPORT_MASK.bits(),
);

/// Offload bits that move offload requests through the header, useless with a backend that takes bare frames.
const HEADER_OFFLOADS: Features = Features::from_bits_retain(
    feature::CSUM.bits()
        | feature::HOST_TSO4.bits()
        | feature::HOST_TSO6.bits()
        | feature::HOST_ECN.bits()
        | feature::HOST_UFO.bits()
        | feature::GUEST_OFFLOADS.bits()
        | feature::CTRL_GUEST_OFFLOADS.bits(),
);

/// Removes bits whose prerequisites are missing (§5.1.3.1): control features without CTRL_VQ (Linux refuses
/// those devices), GSO without checksum offload, ECN without TSO, RX_EXTRA without CTRL_RX.
pub fn sanitize_features(mut f: Features) -> Features {
    f &= SUPPORTED;
    if !f.contains(feature::CTRL_VQ) {
        f -= feature::NEEDS_CTRL_VQ;
    }
    if !f.contains(feature::CTRL_RX) {
        f -= feature::CTRL_RX_EXTRA;
    }
    if !f.contains(feature::GUEST_CSUM) {
        f -= feature::GUEST_TSO4 | feature::GUEST_TSO6 | feature::GUEST_UFO | feature::GUEST_ECN;
    }
    if !f.intersects(feature::GUEST_TSO4 | feature::GUEST_TSO6) {
        f -= feature::GUEST_ECN;
    }
    if !f.contains(feature::CSUM) {
        f -= feature::HOST_TSO4 | feature::HOST_TSO6 | feature::HOST_UFO | feature::HOST_ECN;
    }
    if !f.intersects(feature::HOST_TSO4 | feature::HOST_TSO6) {
        f -= feature::HOST_ECN;
    }
    f
}

/// Builds a [`NetDevice`]: what it offers and how it is configured.
#[derive(Debug, Clone, Copy)]
pub struct NetDeviceBuilder {
    offered: Features,
    config: ConfigRepr,
    queue_size: u16,
}

impl Default for NetDeviceBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl NetDeviceBuilder {
    /// A device offering VERSION_1, MAC (52:54:00:12:34:56) and STATUS (link up), one queue pair of 256 entries.
    /// It also offers ANY_LAYOUT, which a legacy driver may take (§2.7.4.3; QEMU offers it too): this model reads and
    /// writes a chain as one byte stream wherever its descriptors split it. `without(Features::ANY_LAYOUT)` gives a
    /// legacy driver a device that asks for the header in a descriptor of its own (§5.1.6.7).
    pub fn new() -> Self {
        Self {
            offered: Features::VERSION_1 | Features::ANY_LAYOUT | feature::MAC | feature::STATUS,
            config: ConfigRepr {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                ..ConfigRepr::default()
            },
            queue_size: 256,
        }
    }

    /// Sets the MAC address (and offers VIRTIO_NET_F_MAC).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.config.mac = mac;
        self.offered |= feature::MAC;
        self
    }

    /// Reports `mtu` (VIRTIO_NET_F_MTU). Once a driver negotiates it, received frames longer than `mtu` plus the
    /// 14-byte Ethernet header that ask for no segmentation are dropped ([`DropReason::RxOverMtu`], §5.1.4.1).
    ///
    /// Errors: [`NetError::InvalidArgument`] for an `mtu` below [`wire::MTU_MIN`] (68), which the device must not
    /// present (§5.1.4.1).
    pub fn mtu(mut self, mtu: u16) -> Result<Self> {
        if mtu < wire::MTU_MIN {
            return Err(NetError::InvalidArgument);
        }
        self.config.mtu = mtu;
        self.offered |= feature::MTU;
        Ok(self)
    }

    /// Reports speed (Mbit/s) and duplex (VIRTIO_NET_F_SPEED_DUPLEX).
    ///
    /// Errors: [`NetError::InvalidArgument`] for a value §5.1.4 does not define: `speed` above
    /// [`wire::SPEED_MAX`] other than [`wire::SPEED_UNKNOWN`], `duplex` other than [`wire::DUPLEX_HALF`],
    /// [`wire::DUPLEX_FULL`] or [`wire::DUPLEX_UNKNOWN`].
    pub fn speed_duplex(mut self, speed: u32, duplex: u8) -> Result<Self> {
        let speed_valid = speed <= wire::SPEED_MAX || speed == wire::SPEED_UNKNOWN;
        let duplex_valid = matches!(
            duplex,
            wire::DUPLEX_HALF | wire::DUPLEX_FULL | wire::DUPLEX_UNKNOWN
        );
        if !speed_valid || !duplex_valid {
            return Err(NetError::InvalidArgument);
        }
        self.config.speed = speed;
        self.config.duplex = duplex;
        self.offered |= feature::SPEED_DUPLEX;
        Ok(self)
    }

    /// Offers `pairs` queue pairs (VIRTIO_NET_F_MQ when above 1; it needs [`ctrl`](Self::ctrl) too).
    pub fn queue_pairs(mut self, pairs: u16) -> Self {
        self.config.max_virtqueue_pairs = pairs.clamp(1, wire::ctrl::MQ_VQ_PAIRS_MAX);
        self
    }

    /// Largest size of every queue.
    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size.max(1);
        self
    }

    /// Offers CTRL_VQ with the given control features (CTRL_RX, CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE, …).
    pub fn ctrl(mut self, features: Features) -> Self {
        self.offered |= feature::CTRL_VQ | features;
        self
    }

    /// Offers additional bits: offloads (CSUM, GUEST_CSUM, HOST_/GUEST_ TSO/UFO/ECN), MRG_RXBUF, ring features
    /// (EVENT_IDX, INDIRECT_DESC, RING_PACKED, IN_ORDER). Bits this model does not implement are dropped.
    pub fn offer(mut self, features: Features) -> Self {
        self.offered |= features;
        self
    }

    /// Stops offering `features` (e.g. VERSION_1 for a legacy-only device).
    pub fn without(mut self, features: Features) -> Self {
        self.offered -= features;
        self
    }

    /// Sets the link state reported at start.
    pub fn link_up(mut self, up: bool) -> Self {
        if up {
            self.config.status |= status::LINK_UP;
        } else {
            self.config.status &= !status::LINK_UP;
        }
        self
    }

    /// The device over `backend`. Queue pairs are capped at what the backend serves; header offloads are not
    /// offered to a backend that takes bare frames.
    pub fn build<B: NetBackend, M: RingMemory, I: Interrupt>(
        self,
        backend: B,
    ) -> NetDevice<B, M, I> {
        let mut offered = self.offered;
        let mut config = self.config;
        config.max_virtqueue_pairs = config.max_virtqueue_pairs.min(backend.queue_pairs().max(1));
        if config.max_virtqueue_pairs > 1 {
            offered |= feature::MQ;
        } else {
            offered -= feature::MQ;
        }
        if backend.vnet_header_len() == 0 {
            offered -= HEADER_OFFLOADS;
        }
        let offered = sanitize_features(offered);
        if !offered.contains(feature::MQ) {
            config.max_virtqueue_pairs = 1;
        }
        let pairs = usize::from(config.max_virtqueue_pairs);
        let ctrl = usize::from(offered.contains(feature::CTRL_VQ));
        NetDevice {
            backend,
            offered,
            config,
            max_sizes: vec![self.queue_size; 2 * pairs + ctrl],
            features: Features::empty(),
            header_len: HeaderLen::Modern,
            pairs: (0..pairs).map(|_| PairState::new()).collect(),
            ctrl_queue: None,
            ctrl_chain: Chain::with_capacity(0),
            ctrl_buf: vec![0; CTRL_MAX_REQUEST],
            interrupt: None,
            counters: NetCounters::default(),
            last_error: None,
            filter: Filter::new(),
            curr_pairs: 1,
            rx_frame_limit: MAX_FRAME_LEN,
        }
    }
}

/// RX filter state set through the control queue (§5.1.6.5.1, §5.1.6.5.2, §5.1.6.5.3).
#[derive(Debug, Clone)]
struct Filter {
    promisc: bool,
    allmulti: bool,
    alluni: bool,
    nomulti: bool,
    nouni: bool,
    nobcast: bool,
    uni: [[u8; 6]; MAC_TABLE_ENTRIES],
    uni_len: usize,
    uni_overflow: bool,
    multi: [[u8; 6]; MAC_TABLE_ENTRIES],
    multi_len: usize,
    multi_overflow: bool,
    vlans: [u32; 128],
}

impl Filter {
    fn new() -> Self {
        Self {
            // QEMU starts promiscuous: a driver that never sends RX commands receives everything.
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            uni: [[0; 6]; MAC_TABLE_ENTRIES],
            uni_len: 0,
            uni_overflow: false,
            multi: [[0; 6]; MAC_TABLE_ENTRIES],
            multi_len: 0,
            multi_overflow: false,
            vlans: [0; 128],
        }
    }

    fn set_table(
        table: &mut [[u8; 6]; MAC_TABLE_ENTRIES],
        len: &mut usize,
        overflow: &mut bool,
        macs: wire::MacTable<'_>,
    ) {
        *overflow = macs.len() > MAC_TABLE_ENTRIES;
        *len = 0;
        for (slot, mac) in table.iter_mut().zip(macs.iter()) {
            *slot = mac;
            *len += 1;
        }
    }

    fn vlan_bit(id: u16) -> (usize, u32) {
        (usize::from(id >> 5), 1 << (id & 31))
    }

    fn accepts(&self, frame: &[u8], own: &[u8; 6], vlan_filter: bool) -> bool {
        let Some(dst) = frame.get(..6) else {
            return false;
        };
        if vlan_filter && frame.get(12..14) == Some(&[0x81, 0x00]) {
            let tci = frame
                .get(14..16)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map_or(0, u16::from_be_bytes);
            let (word, bit) = Self::vlan_bit(tci & 0xfff);
            if self.vlans.get(word).is_none_or(|w| w & bit == 0) {
                return false;
            }
        }
        if self.promisc {
            return true;
        }
        let in_table = |t: &[[u8; 6]], n: usize| t.iter().take(n).any(|m| m == dst);
        if dst == [0xff; 6] {
            !self.nobcast
        } else if dst.first().is_some_and(|b| b & 1 == 1) {
            !self.nomulti
                && (self.allmulti || self.multi_overflow || in_table(&self.multi, self.multi_len))
        } else {
            !self.nouni
                && (dst == own
                    || self.alluni
                    || self.uni_overflow
                    || in_table(&self.uni, self.uni_len))
        }
    }
}

/// One queue pair's queues and scratch space.
struct PairState<M> {
    rx: Option<DeviceQueue<M>>,
    tx: Option<DeviceQueue<M>>,
    /// Backend frame being delivered: backend header + frame.
    rx_frame: Vec<u8>,
    rx_len: Option<usize>,
    rx_chains: Vec<Chain>,
    rx_held: usize,
    rx_held_len: usize,
    rx_used: Vec<(UsedToken, u32)>,
    tx_chain: Chain,
    tx_frame: Vec<u8>,
    tx_header: [u8; MAX_HEADER],
    /// A frame the backend refused with WouldBlock: its token and length, retried first.
    tx_pending: Option<(UsedToken, usize)>,
    /// A chain in `tx_chain` whose frame ([`NetBackend::send_slices`]) the backend refused with WouldBlock: its
    /// frame length; retried first.
    tx_held: Option<usize>,
    tx_used: Vec<(UsedToken, u32)>,
    /// TX polling mode (kept across reset: a setting of the VMM, not of the driver).
    tx_polling: bool,
    /// Driver notifications of the TX queue are known to be disabled: polling mode does not write the suppression
    /// field (a cache line the driver reads on every kick decision) again on each call.
    tx_notify_off: bool,
}

impl<M> PairState<M> {
    fn new() -> Self {
        Self {
            rx: None,
            tx: None,
            rx_frame: Vec::new(),
            rx_len: None,
            rx_chains: Vec::new(),
            rx_held: 0,
            rx_held_len: 0,
            rx_used: Vec::new(),
            tx_chain: Chain::with_capacity(0),
            tx_frame: Vec::new(),
            tx_header: [0; MAX_HEADER],
            tx_pending: None,
            tx_held: None,
            tx_used: Vec::new(),
            tx_polling: false,
            tx_notify_off: false,
        }
    }

    /// Sizes the scratch space for queues of `size` (once, at activation).
    fn presize(&mut self, size: u16) {
        let n = usize::from(size);
        self.rx_frame = vec![0; MAX_HEADER + MAX_FRAME_LEN];
        self.tx_frame = vec![0; MAX_FRAME_LEN];
        self.rx_chains = (0..n).map(|_| Chain::with_capacity(n.min(32))).collect();
        self.rx_used = Vec::with_capacity(n);
        self.tx_used = Vec::with_capacity(TX_BURST);
        self.tx_chain = Chain::with_capacity(n);
        self.clear();
    }

    fn clear(&mut self) {
        self.rx_len = None;
        self.rx_held = 0;
        self.rx_held_len = 0;
        self.rx_used.clear();
        self.tx_pending = None;
        self.tx_held = None;
        self.tx_used.clear();
        self.tx_notify_off = false;
    }
}

/// A virtio network device over backend `B`, with queues in memory `M`, raising interrupts through `I` (the
/// transport's handle: `MmioInterrupt`, `PciInterrupt`).
pub struct NetDevice<B, M, I> {
    backend: B,
    offered: Features,
    config: ConfigRepr,
    max_sizes: Vec<u16>,
    features: Features,
    header_len: HeaderLen,
    pairs: Vec<PairState<M>>,
    ctrl_queue: Option<DeviceQueue<M>>,
    ctrl_chain: Chain,
    ctrl_buf: Vec<u8>,
    interrupt: Option<I>,
    counters: NetCounters,
    last_error: Option<NetError>,
    filter: Filter,
    curr_pairs: u16,
    /// Longest backend frame `process_rx` passes without a second look: [`MAX_FRAME_LEN`], or `mtu` plus the
    /// Ethernet header once VIRTIO_NET_F_MTU is negotiated (set at activation, so that the RX path compares each
    /// frame once; see [`rx_over_limit`]).
    rx_frame_limit: usize,
}

impl<B, M, I> fmt::Debug for NetDevice<B, M, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetDevice")
            .field("offered", &self.offered)
            .field("features", &self.features)
            .field("config", &self.config)
            .field("curr_pairs", &self.curr_pairs)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Hands the frame of TX chain `chain` to [`NetBackend::send_slices`] without copying it: the driver's header
/// (`header_len` bytes at the start of the readable bytes) is read into `header` (zero-padded to the backend's
/// `backend_header` bytes), the rest is passed as slices of driver memory. `Ok(None)`: the frame has more than
/// [`TX_MAX_PARTS`] pieces (the caller copies it instead).
#[allow(clippy::type_complexity)]
#[inline(always)]
fn send_chain<B: NetBackend, M: RingMemory>(
    backend: &mut B,
    pair: u16,
    memory: &M,
    chain: &Chain,
    header_len: usize,
    backend_header: usize,
    header: &mut [u8; MAX_HEADER],
) -> core::result::Result<Option<core::result::Result<SendStatus, BackendError>>, virtio_core::Error>
{
    if header_len < backend_header {
        // A legacy 10-byte header has no num_buffers; the backend's 12-byte form gets 0 there.
        header.fill(0);
    }
    let readable = chain.readable();
    if let [segment] = readable {
        // The usual TX chain: header and frame in one buffer.
        let slice = segment.slice(memory)?;
        if let Some(frame) = slice
            .len()
            .checked_sub(header_len)
            .and_then(|n| slice.subslice(header_len, n))
        {
            slice.read_at(0, header.get_mut(..header_len).unwrap_or(&mut []));
            let header = header.get(..backend_header).unwrap_or(&[]);
            return Ok(Some(backend.send_slices(
                pair,
                header,
                core::slice::from_ref(&frame),
            )));
        }
    }
    let Some(empty) = DeviceSlice::new(memory, DeviceAddr::new(0), 0) else {
        return Ok(None);
    };
    let mut parts = [empty; TX_MAX_PARTS];
    let mut n = 0;
    let mut header_at = 0;
    for segment in readable {
        let slice = segment.slice(memory)?;
        let mut offset = 0;
        if header_at < header_len {
            let take = (header_len - header_at).min(slice.len());
            if let Some(dst) = header.get_mut(header_at..header_at + take) {
                slice.read_at(0, dst);
            }
            header_at += take;
            offset = take;
        }
        if offset < slice.len() {
            let (Some(part), Some(dst)) = (
                slice.subslice(offset, slice.len() - offset),
                parts.get_mut(n),
            ) else {
                return Ok(None);
            };
            *dst = part;
            n += 1;
        }
    }
    let header = header.get(..backend_header).unwrap_or(&[]);
    Ok(Some(backend.send_slices(
        pair,
        header,
        parts.get(..n).unwrap_or(&[]),
    )))
}

/// Why a TX chain of `readable` driver-readable bytes with a `header_len`-byte net header is dropped for its length
/// (no room for the header, or a frame longer than [`MAX_FRAME_LEN`]), if it is; shared by `process_tx`'s
/// one-buffer fast path and its general path.
#[inline(always)]
fn tx_length_fault(readable: usize, header_len: usize) -> Option<DropReason> {
    if readable < header_len {
        Some(DropReason::HeaderTooShort)
    } else if readable - header_len > MAX_FRAME_LEN {
        Some(DropReason::FrameTooLarge)
    } else {
        None
    }
}

/// Why a backend frame of `frame_len` bytes, longer than the device's `rx_frame_limit`, is dropped, if it is:
/// longer than [`MAX_FRAME_LEN`]; or (the limit being `mtu` + 14 under VIRTIO_NET_F_MTU) asking for no segmentation
/// in its backend header `backend_header` (§5.1.4.1). A segmented frame passes up to [`MAX_FRAME_LEN`]. Kept out of
/// `process_rx`, whose frames within the limit never get here.
#[cold]
#[inline(never)]
fn rx_over_limit(frame_len: usize, backend_header: &[u8]) -> Option<DropReason> {
    if frame_len > MAX_FRAME_LEN {
        Some(DropReason::FrameTooLarge)
    } else if !wire::gso::is_segmented(wire::Header::new_unchecked(backend_header).gso_type()) {
        // A backend without headers (`backend_header` empty) reads as gso_type NONE, as the driver will see it.
        Some(DropReason::RxOverMtu)
    } else {
        None
    }
}

/// Records a drop: counter, first error of the call.
fn note(counters: &mut NetCounters, first: &mut Option<NetError>, queue: u16, reason: DropReason) {
    counters.drop(reason);
    if first.is_none() && reason != DropReason::Filtered {
        *first = Some(NetError::Dropped { queue, reason });
    }
}

fn q16(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

impl<B: NetBackend, M: RingMemory, I: Interrupt> NetDevice<B, M, I> {
    /// A builder with the defaults of [`NetDeviceBuilder::new`].
    pub fn builder() -> NetDeviceBuilder {
        NetDeviceBuilder::new()
    }

    /// Bytes of configuration space the device presents (give it to transports that ask, e.g. `PciOptions`).
    pub fn config_len(&self) -> usize {
        ConfigRepr::len_for(self.offered)
    }

    /// The configuration as the device presents it.
    pub fn config(&self) -> &ConfigRepr {
        &self.config
    }

    /// Counters: frames, bytes, drops by reason.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The last error a notification-driven call hit (queue notifications cannot return errors).
    pub fn take_last_error(&mut self) -> Option<NetError> {
        self.last_error.take()
    }

    /// The features the driver negotiated (empty before activation).
    pub fn negotiated(&self) -> Features {
        self.features
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Queue pairs in use (set by the driver with VQ_PAIRS_SET; 1 until then).
    pub fn active_pairs(&self) -> u16 {
        self.curr_pairs
    }

    /// Whether the RX mode `mode` is on.
    pub fn rx_mode(&self, mode: RxMode) -> bool {
        let f = &self.filter;
        match mode {
            RxMode::Promisc => f.promisc,
            RxMode::AllMulti => f.allmulti,
            RxMode::AllUni => f.alluni,
            RxMode::NoMulti => f.nomulti,
            RxMode::NoUni => f.nouni,
            RxMode::NoBcast => f.nobcast,
        }
    }

    /// Whether VLAN `id` passes the VLAN filter.
    pub fn vlan_allowed(&self, id: u16) -> bool {
        let (word, bit) = Filter::vlan_bit(id & 0xfff);
        self.filter.vlans.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The unicast and multicast filter tables (entries beyond [`MAC_TABLE_ENTRIES`] are not kept).
    pub fn mac_tables(&self) -> (&[[u8; 6]], &[[u8; 6]]) {
        let f = &self.filter;
        (
            f.uni.get(..f.uni_len).unwrap_or(&[]),
            f.multi.get(..f.multi_len).unwrap_or(&[]),
        )
    }

    /// Sets the link state; with VIRTIO_NET_F_STATUS this raises a configuration change interrupt.
    pub fn set_link_up(&mut self, up: bool) {
        let old = self.config.status;
        if up {
            self.config.status |= status::LINK_UP;
        } else {
            self.config.status &= !status::LINK_UP;
        }
        if old != self.config.status {
            self.config_changed(feature::STATUS);
        }
    }

    /// Asks the driver to announce itself (after a migration): sets `status.ANNOUNCE` with
    /// VIRTIO_NET_F_GUEST_ANNOUNCE and raises a configuration change interrupt.
    pub fn announce(&mut self) {
        if self.features.contains(feature::GUEST_ANNOUNCE) {
            self.config.status |= status::ANNOUNCE;
            self.config_changed(feature::GUEST_ANNOUNCE);
        }
    }

    fn config_changed(&self, needs: Features) {
        if self.features.contains(needs) {
            if let Some(i) = &self.interrupt {
                i.signal_config();
            }
        }
    }

    fn rx_index(pair: u16) -> u16 {
        pair.saturating_mul(2)
    }

    fn ctrl_index(&self) -> u16 {
        q16(self.pairs.len() * 2)
    }

    fn fault(&mut self, queue: u16, source: virtio_core::Error) -> NetError {
        self.counters.queue_faults += 1;
        if source.is_peer_fault() {
            if let Some(i) = &self.interrupt {
                i.signal_needs_reset();
            }
        }
        NetError::Ring { queue, source }
    }

    /// Switches TX polling mode of `pair` on or off (off by default).
    ///
    /// On: [`process_tx`](Self::process_tx) leaves driver notifications of the transmit queue disabled and returns
    /// as soon as the ring is empty, without re-enabling them (no barrier, no re-check). The driver may then never
    /// notify again, so **the caller must keep calling `process_tx`** (a busy-polling thread) for as long as the mode
    /// is on. (Driver notifications are a hint either way: with VIRTIO_F_EVENT_IDX the driver may still kick once,
    /// when it passes the `avail_event` published before polling began; such kicks are harmless.) Off: call
    /// `process_tx` once afterwards; it re-enables notifications (race-free) when it finds the ring
    /// empty, and notification-driven operation resumes.
    pub fn set_tx_polling(&mut self, pair: u16, on: bool) -> Result<()> {
        let queue = Self::rx_index(pair).saturating_add(1);
        let state = self
            .pairs
            .get_mut(usize::from(pair))
            .ok_or(NetError::QueueNotActive(queue))?;
        state.tx_polling = on;
        if on {
            if let Some(q) = state.tx.as_mut() {
                q.disable_notification();
                state.tx_notify_off = true;
            }
        }
        Ok(())
    }

    /// Whether TX polling mode is on for `pair` (see [`set_tx_polling`](Self::set_tx_polling)).
    pub fn tx_polling(&self, pair: u16) -> bool {
        self.pairs
            .get(usize::from(pair))
            .is_some_and(|s| s.tx_polling)
    }

    /// Drains transmit queue of `pair` into the backend. Returns the frames sent; bad chains are dropped, counted
    /// and the first is reported as [`NetError::Dropped`] after the queue was drained.
    /// In TX polling mode ([`set_tx_polling`](Self::set_tx_polling)) it returns once the ring is empty and leaves
    /// driver notifications disabled.
    pub fn process_tx(&mut self, pair: u16) -> Result<usize> {
        let queue = Self::rx_index(pair).saturating_add(1);
        let header_len = self.header_len.bytes();
        let backend_header = self.backend.vnet_header_len().min(MAX_HEADER);
        let slices = self.backend.takes_slices();
        // TX chains are always returned in the order they were popped (a held frame stops the burst), so with
        // VIRTIO_F_IN_ORDER one used element per burst names them all (virtio 1.3 §2.7.9, §2.8.11).
        let in_order = self.features.contains(Features::IN_ORDER);
        let Self {
            pairs,
            backend,
            counters,
            interrupt,
            ..
        } = self;
        let Some(state) = pairs.get_mut(usize::from(pair)) else {
            return Err(NetError::QueueNotActive(queue));
        };
        let PairState {
            tx,
            tx_chain,
            tx_frame,
            tx_header,
            tx_pending,
            tx_held,
            tx_used,
            tx_polling,
            tx_notify_off,
            ..
        } = state;
        let polling = *tx_polling;
        let Some(q) = tx.as_mut() else {
            return Err(NetError::QueueNotActive(queue));
        };
        let mut first = None;
        let mut sent = 0;
        // Bytes of the frames sent; added to the counters (with `sent`) once, at the end.
        let mut tx_bytes = 0u64;
        let mut ring_error = None;
        // Chains handled in this burst: with IN_ORDER only their count and the last token matter.
        let mut batch = InOrderBatch::new();
        macro_rules! done {
            ($token:expr) => {
                if in_order {
                    batch.push($token);
                } else {
                    tx_used.push(($token, 0));
                }
            };
        }
        'outer: loop {
            if !*tx_notify_off {
                q.disable_notification();
                *tx_notify_off = polling;
            }
            let mut handled = 0;
            let mut blocked = false;
            while handled < TX_BURST {
                if let Some((token, len)) = *tx_pending {
                    let pieces = [
                        tx_header.get(..backend_header).unwrap_or(&[]),
                        tx_frame.get(..len).unwrap_or(&[]),
                    ];
                    match backend.send(pair, &pieces) {
                        Ok(SendStatus::Sent) => {
                            tx_bytes += len as u64;
                            sent += 1;
                        }
                        Ok(SendStatus::WouldBlock) => {
                            blocked = true;
                            break;
                        }
                        Err(_) => note(counters, &mut first, queue, DropReason::Backend),
                    }
                    *tx_pending = None;
                    done!(token);
                    handled += 1;
                    continue;
                }
                if let Some(len) = *tx_held {
                    let token = tx_chain.token();
                    let status = match send_chain(
                        backend,
                        pair,
                        q.memory(),
                        tx_chain,
                        header_len,
                        backend_header,
                        tx_header,
                    ) {
                        Ok(status) => status,
                        Err(e) => {
                            ring_error = Some(e);
                            break;
                        }
                    };
                    match status {
                        Some(Ok(SendStatus::Sent)) => {
                            tx_bytes += len as u64;
                            sent += 1;
                        }
                        Some(Ok(SendStatus::WouldBlock)) => {
                            blocked = true;
                            break;
                        }
                        Some(Err(_)) | None => {
                            note(counters, &mut first, queue, DropReason::Backend)
                        }
                    }
                    *tx_held = None;
                    done!(token);
                    handled += 1;
                    continue;
                }
                let popped = match q.pop_buffer(tx_chain) {
                    Ok(Popped::Empty) => break,
                    Ok(popped) => popped,
                    Err(e) => {
                        ring_error = Some(e);
                        break;
                    }
                };
                handled += 1;
                if let Popped::Single(single) = popped {
                    if slices && !single.writable() {
                        // The usual TX chain, one readable buffer already translated by the pop: the checks below
                        // and `send_chain`'s one-segment case, without building a chain and reading it back.
                        let (buffer, token) = (single.buffer(), single.token());
                        let readable = buffer.len();
                        let reason = tx_length_fault(readable, header_len);
                        if let Some(reason) = reason {
                            note(counters, &mut first, queue, reason);
                            done!(token);
                            continue;
                        }
                        let len = readable - header_len;
                        if let Some(frame) = buffer.subslice(header_len, len) {
                            let status = if header_len == backend_header {
                                // The driver's header is the backend's: header and frame in one piece.
                                backend.send_packet(pair, &buffer)
                            } else {
                                if header_len < backend_header {
                                    // A legacy 10-byte header has no num_buffers; the backend's 12-byte form gets 0.
                                    tx_header.fill(0);
                                }
                                buffer
                                    .read_at(0, tx_header.get_mut(..header_len).unwrap_or(&mut []));
                                let header = tx_header.get(..backend_header).unwrap_or(&[]);
                                backend.send_slices(pair, header, core::slice::from_ref(&frame))
                            };
                            match status {
                                Ok(SendStatus::Sent) => {
                                    tx_bytes += len as u64;
                                    sent += 1;
                                    done!(token);
                                }
                                Ok(SendStatus::WouldBlock) => {
                                    // Held in `tx_chain` and retried first, like any held chain.
                                    single.to_chain(tx_chain);
                                    *tx_held = Some(len);
                                    blocked = true;
                                    break;
                                }
                                Err(_) => {
                                    note(counters, &mut first, queue, DropReason::Backend);
                                    done!(token);
                                }
                            }
                            continue;
                        }
                    }
                    single.to_chain(tx_chain);
                }
                let token = tx_chain.token();
                let readable = tx_chain.readable_len() as usize;
                let reason = if !tx_chain.writable().is_empty() {
                    Some(DropReason::TxChainWritable)
                } else {
                    tx_length_fault(readable, header_len)
                };
                if let Some(reason) = reason {
                    note(counters, &mut first, queue, reason);
                    done!(token);
                    continue;
                }
                let len = readable - header_len;
                if slices {
                    // Zero-copy: the backend copies straight out of the driver's buffers.
                    let status = match send_chain(
                        backend,
                        pair,
                        q.memory(),
                        tx_chain,
                        header_len,
                        backend_header,
                        tx_header,
                    ) {
                        Ok(status) => status,
                        Err(e) => {
                            ring_error = Some(e);
                            break;
                        }
                    };
                    match status {
                        Some(Ok(SendStatus::Sent)) => {
                            tx_bytes += len as u64;
                            sent += 1;
                            done!(token);
                            continue;
                        }
                        Some(Ok(SendStatus::WouldBlock)) => {
                            *tx_held = Some(len);
                            blocked = true;
                            break;
                        }
                        Some(Err(_)) => {
                            note(counters, &mut first, queue, DropReason::Backend);
                            done!(token);
                            continue;
                        }
                        // More pieces than `TX_MAX_PARTS`: copy.
                        None => {}
                    }
                }
                let mut reader = tx_chain.reader(q.memory());
                tx_header.fill(0);
                let copied = reader
                    .read(tx_header.get_mut(..header_len).unwrap_or(&mut []))
                    .and_then(|_| reader.read(tx_frame.get_mut(..len).unwrap_or(&mut [])));
                if let Err(e) = copied {
                    ring_error = Some(e);
                    break;
                }
                // A legacy 10-byte header has no num_buffers; the backend's 12-byte form gets 0 there (zeroed).
                *tx_pending = Some((token, len));
            }
            if batch.buffers() != 0 || !tx_used.is_empty() {
                let added = if in_order {
                    let added = q.add_used_in_order(&batch, 0);
                    batch.clear();
                    added
                } else {
                    q.add_used_batch(tx_used)
                };
                if let Err(e) = added {
                    ring_error.get_or_insert(e);
                }
                tx_used.clear();
                if q.needs_notification() {
                    if let Some(i) = interrupt.as_ref() {
                        i.signal_queue(queue);
                    }
                }
            }
            if ring_error.is_some() || blocked {
                break;
            }
            if handled == TX_BURST {
                continue;
            }
            if polling {
                // Polling mode: notifications stay off; the caller polls again.
                break;
            }
            // Race-free re-enable: if the driver added chains after our last pop, go round again.
            *tx_notify_off = false;
            match q.enable_notification() {
                Ok(true) => continue 'outer,
                Ok(false) => break,
                Err(e) => {
                    ring_error = Some(e);
                    break;
                }
            }
        }
        counters.tx_frames += sent as u64;
        counters.tx_bytes += tx_bytes;
        if let Some(e) = ring_error {
            return Err(self.fault(queue, e));
        }
        first.map_or(Ok(sent), Err)
    }

    /// Delivers pending backend frames of `pair` into its receive queue. Returns the frames delivered; stops
    /// (keeping the frame) when the driver has no buffers, and resumes when it adds some.
    pub fn process_rx(&mut self, pair: u16) -> Result<usize> {
        let queue = Self::rx_index(pair);
        let header_len = self.header_len.bytes();
        let mergeable = self.features.contains(feature::MRG_RXBUF);
        let backend_header = self.backend.vnet_header_len().min(MAX_HEADER);
        let vlan_filter = self.features.contains(feature::CTRL_VLAN);
        let own_mac = self.config.mac;
        let rx_frame_limit = self.rx_frame_limit;
        let Self {
            pairs,
            backend,
            counters,
            interrupt,
            filter,
            ..
        } = self;
        let Some(state) = pairs.get_mut(usize::from(pair)) else {
            return Err(NetError::QueueNotActive(queue));
        };
        let PairState {
            rx,
            rx_frame,
            rx_len,
            rx_chains,
            rx_held,
            rx_held_len,
            rx_used,
            ..
        } = state;
        let Some(q) = rx.as_mut() else {
            return Err(NetError::QueueNotActive(queue));
        };
        let mut first = None;
        let mut ring_error = None;
        let mut delivered = 0;
        let mut in_burst = 0;
        // Whether used elements were added since the last interrupt decision: a pass that used nothing (the driver
        // only re-posted buffers, or the backend had no frame) must not interrupt the driver.
        let mut unsignalled = false;
        let signal = |q: &mut DeviceQueue<M>, unsignalled: &mut bool| {
            if core::mem::take(unsignalled) && q.needs_notification() {
                if let Some(i) = interrupt.as_ref() {
                    i.signal_queue(queue);
                }
            }
        };
        loop {
            if in_burst == RX_BURST {
                signal(q, &mut unsignalled);
                in_burst = 0;
            }
            let len = match *rx_len {
                Some(len) => len,
                None => match backend.recv(pair, rx_frame) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(crate::backend::BackendError::TooLarge { .. }) => {
                        note(counters, &mut first, queue, DropReason::FrameTooLarge);
                        continue;
                    }
                    Err(_) => {
                        note(counters, &mut first, queue, DropReason::Backend);
                        break;
                    }
                },
            };
            *rx_len = None;
            let Some(frame_len) = len.checked_sub(backend_header) else {
                note(counters, &mut first, queue, DropReason::Backend);
                continue;
            };
            if frame_len > rx_frame_limit {
                if let Some(reason) =
                    rx_over_limit(frame_len, rx_frame.get(..backend_header).unwrap_or(&[]))
                {
                    note(counters, &mut first, queue, reason);
                    continue;
                }
            }
            let frame = rx_frame.get(backend_header..len).unwrap_or(&[]);
            if !filter.accepts(frame, &own_mac, vlan_filter) {
                counters.drop(DropReason::Filtered);
                continue;
            }
            let needed = header_len + frame_len;
            // Gather chains until the frame fits.
            let mut too_small = false;
            while *rx_held == 0 || (mergeable && *rx_held_len < needed) {
                let Some(chain) = rx_chains.get_mut(*rx_held) else {
                    // More chains than the queue holds cannot be outstanding; treat as a full stop.
                    too_small = true;
                    break;
                };
                match q.pop_into(chain) {
                    Ok(true) => {}
                    Ok(false) => {
                        // No buffers: keep the frame, wait for the driver (notifications on, re-checked).
                        *rx_len = Some(len);
                        match q.enable_notification() {
                            Ok(true) => {
                                q.disable_notification();
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => ring_error = Some(e),
                        }
                        break;
                    }
                    Err(e) => {
                        ring_error = Some(e);
                        break;
                    }
                }
                if chain.writable().is_empty() || !chain.readable().is_empty() {
                    note(counters, &mut first, queue, DropReason::RxChainNotWritable);
                    if let Err(e) = q.add_used(chain.token(), 0) {
                        ring_error = Some(e);
                        break;
                    }
                    unsignalled = true;
                    continue;
                }
                *rx_held_len += chain.writable_len() as usize;
                *rx_held += 1;
            }
            if ring_error.is_some() || rx_len.is_some() {
                break;
            }
            if too_small || (!mergeable && *rx_held_len < needed) {
                // The frame does not fit the (first) chain: drop it, keep the chain for the next frame.
                note(counters, &mut first, queue, DropReason::RxBufferTooSmall);
                if *rx_held_len < needed && *rx_held > 1 {
                    // Mergeable but the queue cannot hold enough: give the chains back empty.
                    for chain in rx_chains.iter().take(*rx_held) {
                        rx_used.push((chain.token(), 0));
                    }
                    let r = q.add_used_batch(rx_used);
                    rx_used.clear();
                    *rx_held = 0;
                    *rx_held_len = 0;
                    if let Err(e) = r {
                        ring_error = Some(e);
                        break;
                    }
                    unsignalled = true;
                }
                continue;
            }
            // Header in the negotiated form from the backend's form.
            let mut header = [0u8; MAX_HEADER];
            let common = backend_header.min(header_len);
            if let (Some(dst), Some(src)) = (header.get_mut(..common), rx_frame.get(..common)) {
                dst.copy_from_slice(src);
            }
            if header_len >= HeaderLen::Modern.bytes() {
                let n = if mergeable { q16(*rx_held) } else { 1 };
                wire::Header::new_unchecked(&mut header[..]).set_num_buffers(n);
            }
            let mut sources = [
                header.get(..header_len).unwrap_or(&[]),
                rx_frame.get(backend_header..len).unwrap_or(&[]),
            ];
            for chain in rx_chains.iter().take(*rx_held) {
                let mut writer = chain.writer(q.memory());
                for src in sources.iter_mut() {
                    if src.is_empty() {
                        continue;
                    }
                    match writer.write(src) {
                        Ok(n) => *src = src.get(n..).unwrap_or(&[]),
                        Err(e) => {
                            ring_error = Some(e);
                        }
                    }
                    if writer.remaining() == 0 {
                        break;
                    }
                }
                rx_used.push((chain.token(), writer.written()));
            }
            let r = q.add_used_batch(rx_used);
            rx_used.clear();
            *rx_held = 0;
            *rx_held_len = 0;
            match r {
                Ok(()) => unsignalled = true,
                Err(e) => {
                    ring_error.get_or_insert(e);
                }
            }
            if ring_error.is_some() {
                break;
            }
            counters.rx_frames += 1;
            counters.rx_bytes += frame_len as u64;
            delivered += 1;
            in_burst += 1;
        }
        signal(q, &mut unsignalled);
        if let Some(e) = ring_error {
            return Err(self.fault(queue, e));
        }
        first.map_or(Ok(delivered), Err)
    }

    /// Runs every pending control command.
    pub fn process_ctrl(&mut self) -> Result<usize> {
        let queue = self.ctrl_index();
        let Some(mut q) = self.ctrl_queue.take() else {
            return Err(NetError::QueueNotActive(queue));
        };
        let mut chain = core::mem::replace(&mut self.ctrl_chain, Chain::with_capacity(0));
        let mut first = None;
        let mut done = 0;
        let mut ring_error = None;
        loop {
            match q.pop_into(&mut chain) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    ring_error = Some(e);
                    break;
                }
            }
            let readable = chain.readable_len() as usize;
            if chain.writable_len() == 0 || !(2..=CTRL_MAX_REQUEST).contains(&readable) {
                note(
                    &mut self.counters,
                    &mut first,
                    queue,
                    DropReason::CtrlMalformed,
                );
                let mut ack_written = 0;
                if chain.writable_len() != 0 {
                    let mut w = chain.writer(q.memory());
                    if w.write(&[wire::ctrl::ERR]).is_ok() {
                        ack_written = w.written();
                    }
                }
                if let Err(e) = q.add_used(chain.token(), ack_written) {
                    ring_error = Some(e);
                    break;
                }
                continue;
            }
            let mut buf = core::mem::take(&mut self.ctrl_buf);
            let read = chain
                .reader(q.memory())
                .read(buf.get_mut(..readable).unwrap_or(&mut []));
            let ack = match read {
                Ok(_) => self.execute(buf.get(..readable).unwrap_or(&[]), queue, &mut first),
                Err(e) => {
                    ring_error = Some(e);
                    wire::ctrl::ERR
                }
            };
            self.ctrl_buf = buf;
            let mut w = chain.writer(q.memory());
            let written = match w.write(&[ack]) {
                Ok(_) => w.written(),
                Err(e) => {
                    ring_error.get_or_insert(e);
                    0
                }
            };
            if let Err(e) = q.add_used(chain.token(), written) {
                ring_error.get_or_insert(e);
            }
            if ring_error.is_some() {
                break;
            }
            done += 1;
        }
        if q.needs_notification() {
            if let Some(i) = &self.interrupt {
                i.signal_queue(queue);
            }
        }
        self.ctrl_queue = Some(q);
        self.ctrl_chain = chain;
        if let Some(e) = ring_error {
            return Err(self.fault(queue, e));
        }
        first.map_or(Ok(done), Err)
    }

    /// Executes one control request; returns the ack.
    fn execute(&mut self, request: &[u8], queue: u16, first: &mut Option<NetError>) -> u8 {
        let command = match CtrlCommand::parse(request) {
            Ok(c) => c,
            Err(wire::WireError::UnknownCommand { .. }) => {
                note(
                    &mut self.counters,
                    first,
                    queue,
                    DropReason::CtrlUnsupported,
                );
                return wire::ctrl::ERR;
            }
            Err(_) => {
                note(&mut self.counters, first, queue, DropReason::CtrlMalformed);
                return wire::ctrl::ERR;
            }
        };
        if !self.features.contains(command.required_feature()) {
            note(
                &mut self.counters,
                first,
                queue,
                DropReason::CtrlUnsupported,
            );
            return wire::ctrl::ERR;
        }
        let f = &mut self.filter;
        let ok = match command {
            CtrlCommand::RxMode { mode, on } => {
                *match mode {
                    RxMode::Promisc => &mut f.promisc,
                    RxMode::AllMulti => &mut f.allmulti,
                    RxMode::AllUni => &mut f.alluni,
                    RxMode::NoMulti => &mut f.nomulti,
                    RxMode::NoUni => &mut f.nouni,
                    RxMode::NoBcast => &mut f.nobcast,
                } = on;
                true
            }
            CtrlCommand::MacTableSet { unicast, multicast } => {
                Filter::set_table(&mut f.uni, &mut f.uni_len, &mut f.uni_overflow, unicast);
                Filter::set_table(
                    &mut f.multi,
                    &mut f.multi_len,
                    &mut f.multi_overflow,
                    multicast,
                );
                true
            }
            CtrlCommand::MacAddrSet(mac) => {
                self.config.mac = mac;
                true
            }
            CtrlCommand::VlanAdd(id) | CtrlCommand::VlanDel(id) => {
                let (word, bit) = Filter::vlan_bit(id);
                if let Some(w) = f.vlans.get_mut(word) {
                    if matches!(command, CtrlCommand::VlanAdd(_)) {
                        *w |= bit;
                    } else {
                        *w &= !bit;
                    }
                }
                true
            }
            CtrlCommand::AnnounceAck => {
                self.config.status &= !status::ANNOUNCE;
                true
            }
            CtrlCommand::MqVqPairsSet(n) => {
                if n <= self.config.max_virtqueue_pairs {
                    self.curr_pairs = n;
                    true
                } else {
                    false
                }
            }
            CtrlCommand::GuestOffloadsSet(bits) => {
                let wanted = Features::from_bits_retain(bits);
                // Only offloads that were negotiated may be enabled (§5.1.6.5.6.2).
                if (self.features & feature::GUEST_OFFLOADS).contains(wanted)
                    && (wanted - feature::GUEST_OFFLOADS).is_empty()
                {
                    self.backend
                        .set_offloads(Offloads::from_features(wanted))
                        .is_ok()
                } else {
                    false
                }
            }
        };
        if ok {
            self.counters.ctrl_ok += 1;
            wire::ctrl::OK
        } else {
            note(
                &mut self.counters,
                first,
                queue,
                DropReason::CtrlUnsupported,
            );
            wire::ctrl::ERR
        }
    }

    /// Handles a notification of `queue` and returns what it did (the [`VirtioDevice::queue_notify`] path, with
    /// the result).
    pub fn notify(&mut self, queue: u16) -> Result<usize> {
        if queue == self.ctrl_index() && self.ctrl_queue.is_some() {
            return self.process_ctrl();
        }
        let pair = queue / 2;
        if queue % 2 == 0 {
            self.process_rx(pair)
        } else {
            self.process_tx(pair)
        }
    }
}

impl<B: NetBackend, M: RingMemory, I: Interrupt> VirtioDevice for NetDevice<B, M, I> {
    type Memory = M;
    type Interrupt = I;

    fn device_type(&self) -> u32 {
        virtio_core::device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn offered_features(&self) -> Features {
        self.offered
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut bytes = [0u8; 24];
        self.config.emit(&mut bytes, self.offered);
        let len = self.config_len();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .filter(|at| *at < len)
                .and_then(|at| bytes.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Only a legacy driver may write `mac` (§5.1.4.2 legacy interface); everything else is read-only.
        if self.features.contains(Features::VERSION_1) {
            return;
        }
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = offset
                .checked_add(i)
                .and_then(|at| self.config.mac.get_mut(at))
            {
                *slot = *b;
            }
        }
    }

    fn activate(
        &mut self,
        features: Features,
        queues: Vec<ActiveQueue<M>>,
        interrupt: I,
    ) -> virtio_core::Result<()> {
        if sanitize_features(features) != features & SUPPORTED || !self.offered.contains(features) {
            return Err(virtio_core::Error::FeaturesRejected);
        }
        self.features = features;
        self.header_len = HeaderLen::for_features(features);
        self.rx_frame_limit = if features.contains(feature::MTU) {
            // §5.1.4.1: "mtu (plus low level ethernet header length)".
            (usize::from(self.config.mtu) + wire::ETH_HEADER_LEN).min(MAX_FRAME_LEN)
        } else {
            MAX_FRAME_LEN
        };
        self.curr_pairs = 1;
        self.filter = Filter::new();
        let ctrl = self.ctrl_index();
        for ActiveQueue { index, queue } in queues {
            let size = queue.size();
            if index == ctrl && self.offered.contains(feature::CTRL_VQ) {
                self.ctrl_chain = Chain::with_capacity(usize::from(size));
                self.ctrl_queue = Some(queue);
                continue;
            }
            let Some(state) = self.pairs.get_mut(usize::from(index / 2)) else {
                continue;
            };
            if state.rx_frame.is_empty() || state.rx_chains.len() < usize::from(size) {
                state.presize(size);
            }
            if index % 2 == 0 {
                state.rx = Some(queue);
            } else {
                state.tx = Some(queue);
            }
        }
        // Best effort: a backend that cannot do the offloads still carries frames.
        let _ = self.backend.set_offloads(Offloads::from_features(features));
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self) -> Vec<ActiveQueue<M>> {
        let mut out = Vec::new();
        for (i, state) in self.pairs.iter_mut().enumerate() {
            let rx = q16(2 * i);
            if let Some(queue) = state.rx.take() {
                out.push(ActiveQueue { index: rx, queue });
            }
            if let Some(queue) = state.tx.take() {
                out.push(ActiveQueue {
                    index: rx.saturating_add(1),
                    queue,
                });
            }
            state.clear();
        }
        if let Some(queue) = self.ctrl_queue.take() {
            out.push(ActiveQueue {
                index: self.ctrl_index(),
                queue,
            });
        }
        self.features = Features::empty();
        self.rx_frame_limit = MAX_FRAME_LEN;
        self.interrupt = None;
        self.curr_pairs = 1;
        self.filter = Filter::new();
        self.config.status &= !status::ANNOUNCE;
        out
    }

    fn queue_notify(&mut self, queue: u16, _data: Option<NotificationData>) {
        if let Err(e) = self.notify(queue) {
            self.last_error = Some(e);
        }
    }
}
