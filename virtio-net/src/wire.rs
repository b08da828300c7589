//! Wire formats of virtio-net (virtio 1.3 §5.1): feature bits, the `virtio_net_hdr` that prefixes every frame,
//! the device configuration space, and control-queue commands.
//!
//! Everything here is a safe byte view in the smoltcp `wire/` style: `new_checked` validates the length once,
//! accessors read little-endian fields, a `*Repr` is the parsed value and `emit` writes it back. Nothing casts
//! untrusted bytes to structures.

use virtio_core::Features;

/// Errors of the wire parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer is shorter than the structure needs.
    #[error("buffer of {len} bytes, {needed} needed")]
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A control command class/command pair this crate does not know.
    #[error("unknown control command class {class} command {command}")]
    UnknownCommand {
        /// `class`.
        class: u8,
        /// `command`.
        command: u8,
    },
    /// A control command whose payload is malformed (wrong length, out-of-range value).
    #[error("malformed payload for control command class {class} command {command}")]
    Malformed {
        /// `class`.
        class: u8,
        /// `command`.
        command: u8,
    },
}

fn rd16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map_or(0, u16::from_le_bytes)
}

fn rd32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_le_bytes)
}

fn wr(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + v.len()) {
        dst.copy_from_slice(v);
    }
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// Feature bits of the network device (virtio 1.3 §5.1.3), as [`Features`] values to combine with the transport
/// bits of virtio-core.
pub mod feature {
    use virtio_core::Features;

    const fn bit(n: u32) -> Features {
        Features::from_bits_retain(1 << n)
    }

    /// Device handles packets with partial checksum (TX checksum offload).
    pub const CSUM: Features = bit(0);
    /// Driver handles packets with partial checksum (RX).
    pub const GUEST_CSUM: Features = bit(1);
    /// Control channel offloads reconfiguration.
    pub const CTRL_GUEST_OFFLOADS: Features = bit(2);
    /// Device reports the maximum MTU in `mtu`.
    pub const MTU: Features = bit(3);
    /// Device has the MAC address in `mac`.
    pub const MAC: Features = bit(5);
    /// Legacy: device handles packets with any GSO type.
    pub const GSO: Features = bit(6);
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: Features = bit(7);
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: Features = bit(8);
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: Features = bit(9);
    /// Driver can receive UFO.
    pub const GUEST_UFO: Features = bit(10);
    /// Device can receive TSOv4.
    pub const HOST_TSO4: Features = bit(11);
    /// Device can receive TSOv6.
    pub const HOST_TSO6: Features = bit(12);
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: Features = bit(13);
    /// Device can receive UFO.
    pub const HOST_UFO: Features = bit(14);
    /// Driver can merge receive buffers (`num_buffers`).
    pub const MRG_RXBUF: Features = bit(15);
    /// Configuration `status` field is available.
    pub const STATUS: Features = bit(16);
    /// Control channel is available.
    pub const CTRL_VQ: Features = bit(17);
    /// Control channel RX mode support.
    pub const CTRL_RX: Features = bit(18);
    /// Control channel VLAN filtering.
    pub const CTRL_VLAN: Features = bit(19);
    /// Control channel extra RX modes (ALLUNI, NOMULTI, NOUNI, NOBCAST).
    pub const CTRL_RX_EXTRA: Features = bit(20);
    /// Driver can send gratuitous packets.
    pub const GUEST_ANNOUNCE: Features = bit(21);
    /// Multiqueue with automatic receive steering.
    pub const MQ: Features = bit(22);
    /// Set MAC address through the control channel.
    pub const CTRL_MAC_ADDR: Features = bit(23);
    /// Device statistics through the control channel.
    pub const DEVICE_STATS: Features = bit(50);
    /// Per-virtqueue notification coalescing.
    pub const VQ_NOTF_COAL: Features = bit(52);
    /// Notification coalescing.
    pub const NOTF_COAL: Features = bit(53);
    /// Driver can receive USOv4.
    pub const GUEST_USO4: Features = bit(54);
    /// Driver can receive USOv6.
    pub const GUEST_USO6: Features = bit(55);
    /// Device can receive USO.
    pub const HOST_USO: Features = bit(56);
    /// Device can report a per-packet hash (20-byte header).
    pub const HASH_REPORT: Features = bit(57);
    /// Driver provides the exact `hdr_len`.
    pub const GUEST_HDRLEN: Features = bit(59);
    /// RSS receive steering.
    pub const RSS: Features = bit(60);
    /// Extended coalescing info (RSC).
    pub const RSC_EXT: Features = bit(61);
    /// Failover standby.
    pub const STANDBY: Features = bit(62);
    /// Device reports `speed` and `duplex`.
    pub const SPEED_DUPLEX: Features = bit(63);

    /// Every control-channel feature that requires [`CTRL_VQ`] (§5.1.3.1).
    pub const NEEDS_CTRL_VQ: Features = Features::from_bits_retain(
        CTRL_RX.bits()
            | CTRL_VLAN.bits()
            | CTRL_RX_EXTRA.bits()
            | GUEST_ANNOUNCE.bits()
            | MQ.bits()
            | CTRL_MAC_ADDR.bits()
            | CTRL_GUEST_OFFLOADS.bits()
            | RSS.bits()
            | NOTF_COAL.bits()
            | VQ_NOTF_COAL.bits()
            | DEVICE_STATS.bits(),
    );

    /// Receive offloads the driver may accept (what a backend like tap is told through TUNSETOFFLOAD).
    pub const GUEST_OFFLOADS: Features = Features::from_bits_retain(
        GUEST_CSUM.bits()
            | GUEST_TSO4.bits()
            | GUEST_TSO6.bits()
            | GUEST_ECN.bits()
            | GUEST_UFO.bits()
            | GUEST_USO4.bits()
            | GUEST_USO6.bits(),
    );
}

/// Which form of `virtio_net_hdr` is in use (virtio 1.3 §5.1.6, §5.1.6.1 "Legacy Interface").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HeaderLen {
    /// 10 bytes: a legacy device without VIRTIO_NET_F_MRG_RXBUF (no `num_buffers`).
    Legacy = 10,
    /// 12 bytes: VERSION_1 or MRG_RXBUF (`num_buffers` present).
    Modern = 12,
    /// 20 bytes: VIRTIO_NET_F_HASH_REPORT (`hash_value`, `hash_report`).
    HashReport = 20,
}

impl HeaderLen {
    /// The header form selected by negotiated `features`.
    pub fn for_features(features: Features) -> Self {
        if features.intersects(feature::HASH_REPORT) {
            Self::HashReport
        } else if features.contains(Features::VERSION_1) || features.intersects(feature::MRG_RXBUF)
        {
            Self::Modern
        } else {
            Self::Legacy
        }
    }

    /// Length in bytes.
    pub const fn bytes(self) -> usize {
        self as usize
    }

    /// The form of a given length, if it is one.
    pub const fn from_bytes(len: usize) -> Option<Self> {
        match len {
            10 => Some(Self::Legacy),
            12 => Some(Self::Modern),
            20 => Some(Self::HashReport),
            _ => None,
        }
    }
}

/// `virtio_net_hdr.flags` (virtio 1.3 §5.1.6).
pub mod hdr_flags {
    /// `csum_start`/`csum_offset` describe a partial checksum the receiver must complete.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum is already validated (RX).
    pub const DATA_VALID: u8 = 2;
    /// `csum_start`/`csum_offset` carry RSC coalescing info (RX, VIRTIO_NET_F_RSC_EXT).
    pub const RSC_INFO: u8 = 4;
}

/// `virtio_net_hdr.gso_type` (virtio 1.3 §5.1.6).
pub mod gso {
    /// Not a GSO frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4 segmentation.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation (UFO).
    pub const UDP: u8 = 3;
    /// TCP over IPv6 segmentation.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO).
    pub const UDP_L4: u8 = 5;
    /// Flag: the TCP frame has ECN (CWR) set.
    pub const ECN: u8 = 0x80;

    /// Whether `gso_type` asks for segmentation: a type other than [`NONE`], the [`ECN`] flag aside. Frames for
    /// which it does not are the ones VIRTIO_NET_F_MTU limits to `mtu` plus the Ethernet header (virtio 1.3
    /// §5.1.4.1, §5.1.4.2: "gso_type NONE or ECN").
    pub const fn is_segmented(gso_type: u8) -> bool {
        gso_type & !ECN != NONE
    }
}

/// A byte view of `struct virtio_net_hdr` (virtio 1.3 §5.1.6) of any of its three lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T> {
    buffer: T,
}

mod field {
    pub(super) const FLAGS: usize = 0;
    pub(super) const GSO_TYPE: usize = 1;
    pub(super) const HDR_LEN: usize = 2;
    pub(super) const GSO_SIZE: usize = 4;
    pub(super) const CSUM_START: usize = 6;
    pub(super) const CSUM_OFFSET: usize = 8;
    pub(super) const NUM_BUFFERS: usize = 10;
    pub(super) const HASH_VALUE: usize = 12;
    pub(super) const HASH_REPORT: usize = 16;
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer` without checking its length (accessors of missing fields read 0).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer`, which must hold at least the 10-byte legacy header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let len = buffer.as_ref().len();
        if len < HeaderLen::Legacy.bytes() {
            return Err(WireError::Truncated {
                len,
                needed: HeaderLen::Legacy.bytes(),
            });
        }
        Ok(Self { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// `flags` ([`hdr_flags`]).
    pub fn flags(&self) -> u8 {
        byte(self.b(), field::FLAGS)
    }
    /// `gso_type` ([`gso`]).
    pub fn gso_type(&self) -> u8 {
        byte(self.b(), field::GSO_TYPE)
    }
    /// `hdr_len`.
    pub fn hdr_len(&self) -> u16 {
        rd16(self.b(), field::HDR_LEN)
    }
    /// `gso_size`.
    pub fn gso_size(&self) -> u16 {
        rd16(self.b(), field::GSO_SIZE)
    }
    /// `csum_start`.
    pub fn csum_start(&self) -> u16 {
        rd16(self.b(), field::CSUM_START)
    }
    /// `csum_offset`.
    pub fn csum_offset(&self) -> u16 {
        rd16(self.b(), field::CSUM_OFFSET)
    }
    /// `num_buffers`, if the buffer holds the 12-byte form.
    pub fn num_buffers(&self) -> Option<u16> {
        (self.b().len() >= HeaderLen::Modern.bytes()).then(|| rd16(self.b(), field::NUM_BUFFERS))
    }
    /// `hash_value`, if the buffer holds the 20-byte form.
    pub fn hash_value(&self) -> Option<u32> {
        (self.b().len() >= HeaderLen::HashReport.bytes()).then(|| rd32(self.b(), field::HASH_VALUE))
    }
    /// `hash_report`, if the buffer holds the 20-byte form.
    pub fn hash_report(&self) -> Option<u16> {
        (self.b().len() >= HeaderLen::HashReport.bytes())
            .then(|| rd16(self.b(), field::HASH_REPORT))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets `flags`.
    pub fn set_flags(&mut self, v: u8) {
        wr(self.m(), field::FLAGS, &[v]);
    }
    /// Sets `gso_type`.
    pub fn set_gso_type(&mut self, v: u8) {
        wr(self.m(), field::GSO_TYPE, &[v]);
    }
    /// Sets `hdr_len`.
    pub fn set_hdr_len(&mut self, v: u16) {
        wr(self.m(), field::HDR_LEN, &v.to_le_bytes());
    }
    /// Sets `gso_size`.
    pub fn set_gso_size(&mut self, v: u16) {
        wr(self.m(), field::GSO_SIZE, &v.to_le_bytes());
    }
    /// Sets `csum_start`.
    pub fn set_csum_start(&mut self, v: u16) {
        wr(self.m(), field::CSUM_START, &v.to_le_bytes());
    }
    /// Sets `csum_offset`.
    pub fn set_csum_offset(&mut self, v: u16) {
        wr(self.m(), field::CSUM_OFFSET, &v.to_le_bytes());
    }
    /// Sets `num_buffers` (ignored for the 10-byte form).
    pub fn set_num_buffers(&mut self, v: u16) {
        wr(self.m(), field::NUM_BUFFERS, &v.to_le_bytes());
    }
    /// Sets `hash_value` (ignored below the 20-byte form).
    pub fn set_hash_value(&mut self, v: u32) {
        wr(self.m(), field::HASH_VALUE, &v.to_le_bytes());
    }
    /// Sets `hash_report` (ignored below the 20-byte form).
    pub fn set_hash_report(&mut self, v: u16) {
        wr(self.m(), field::HASH_REPORT, &v.to_le_bytes());
    }
}

/// The parsed value of a `virtio_net_hdr`: what a sender asks of the receiver (checksum completion, segmentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HeaderRepr {
    /// `flags` ([`hdr_flags`]).
    pub flags: u8,
    /// `gso_type` ([`gso`]).
    pub gso_type: u8,
    /// `hdr_len`: length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// `gso_size`: maximum segment size.
    pub gso_size: u16,
    /// `csum_start`: where checksumming starts.
    pub csum_start: u16,
    /// `csum_offset`: where to store the checksum, from `csum_start`.
    pub csum_offset: u16,
    /// `num_buffers` (12- and 20-byte forms; 0 when absent).
    pub num_buffers: u16,
    /// `hash_value` (20-byte form).
    pub hash_value: u32,
    /// `hash_report` (20-byte form).
    pub hash_report: u16,
}

impl HeaderRepr {
    /// A header asking nothing (no checksum, no GSO).
    pub const fn new() -> Self {
        Self {
            flags: 0,
            gso_type: gso::NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 0,
            csum_offset: 0,
            num_buffers: 0,
            hash_value: 0,
            hash_report: 0,
        }
    }

    /// Requests checksum completion over `[csum_start..]`, stored at `csum_start + csum_offset`.
    pub const fn with_checksum(mut self, csum_start: u16, csum_offset: u16) -> Self {
        self.flags |= hdr_flags::NEEDS_CSUM;
        self.csum_start = csum_start;
        self.csum_offset = csum_offset;
        self
    }

    /// Requests segmentation of type `gso_type` into segments of `gso_size` with `hdr_len` bytes of headers.
    pub const fn with_gso(mut self, gso_type: u8, gso_size: u16, hdr_len: u16) -> Self {
        self.gso_type = gso_type;
        self.gso_size = gso_size;
        self.hdr_len = hdr_len;
        self
    }

    /// Parses a header view.
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Self {
        Self {
            flags: header.flags(),
            gso_type: header.gso_type(),
            hdr_len: header.hdr_len(),
            gso_size: header.gso_size(),
            csum_start: header.csum_start(),
            csum_offset: header.csum_offset(),
            num_buffers: header.num_buffers().unwrap_or(0),
            hash_value: header.hash_value().unwrap_or(0),
            hash_report: header.hash_report().unwrap_or(0),
        }
    }

    /// Writes every field that fits in `header`'s buffer.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut Header<T>) {
        header.set_flags(self.flags);
        header.set_gso_type(self.gso_type);
        header.set_hdr_len(self.hdr_len);
        header.set_gso_size(self.gso_size);
        header.set_csum_start(self.csum_start);
        header.set_csum_offset(self.csum_offset);
        header.set_num_buffers(self.num_buffers);
        header.set_hash_value(self.hash_value);
        header.set_hash_report(self.hash_report);
    }

    /// The header in the form `len` as bytes (unused tail of the array is zero).
    pub fn to_bytes(&self, len: HeaderLen) -> [u8; 20] {
        let mut out = [0u8; 20];
        if let Some(dst) = out.get_mut(..len.bytes()) {
            self.emit(&mut Header::new_unchecked(dst));
        }
        out
    }
}

/// `status` bits of the configuration space (virtio 1.3 §5.1.4).
pub mod status {
    /// The link is up.
    pub const LINK_UP: u16 = 1;
    /// The driver should announce itself (gratuitous ARP), then ack with ANNOUNCE_ACK.
    pub const ANNOUNCE: u16 = 2;
}

/// Offsets of `struct virtio_net_config` fields (virtio 1.3 §5.1.4). Each field exists only if its feature is
/// offered (`mac`: MAC, `status`: STATUS, `max_virtqueue_pairs`: MQ, `mtu`: MTU, `speed`/`duplex`:
/// SPEED_DUPLEX), but the offsets are fixed.
pub mod config_offset {
    /// `mac[6]`.
    pub const MAC: usize = 0;
    /// `status` (le16).
    pub const STATUS: usize = 6;
    /// `max_virtqueue_pairs` (le16).
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    /// `mtu` (le16).
    pub const MTU: usize = 10;
    /// `speed` (le32, Mbit/s; `0xffffffff` unknown).
    pub const SPEED: usize = 12;
    /// `duplex` (u8: 0 half, 1 full, `0xff` unknown).
    pub const DUPLEX: usize = 16;
}

/// `duplex` value: full duplex.
pub const DUPLEX_FULL: u8 = 1;
/// `duplex` value: half duplex.
pub const DUPLEX_HALF: u8 = 0;
/// `duplex` / `speed` value: unknown.
pub const DUPLEX_UNKNOWN: u8 = 0xff;
/// `speed` value: unknown.
pub const SPEED_UNKNOWN: u32 = 0xffff_ffff;
/// Highest known `speed` in Mbit/s (virtio 1.3 §5.1.4: 0 to 0x7fffffff, or [`SPEED_UNKNOWN`]).
pub const SPEED_MAX: u32 = 0x7fff_ffff;
/// Smallest `mtu` a device may present (virtio 1.3 §5.1.4.1: "between 68 and 65535").
pub const MTU_MIN: u16 = 68;
/// Bytes of the Ethernet header (destination, source, EtherType) that `mtu` does not count: with VIRTIO_NET_F_MTU a
/// frame asking for no segmentation holds at most `mtu` plus these (§5.1.4.1 "plus low level ethernet header
/// length").
pub const ETH_HEADER_LEN: usize = 14;

/// The parsed device configuration space (virtio 1.3 §5.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigRepr {
    /// `mac`.
    pub mac: [u8; 6],
    /// `status` ([`status`]).
    pub status: u16,
    /// `max_virtqueue_pairs`.
    pub max_virtqueue_pairs: u16,
    /// `mtu`.
    pub mtu: u16,
    /// `speed` in Mbit/s.
    pub speed: u32,
    /// `duplex`.
    pub duplex: u8,
}

impl Default for ConfigRepr {
    fn default() -> Self {
        Self {
            mac: [0; 6],
            status: status::LINK_UP,
            max_virtqueue_pairs: 1,
            mtu: 1500,
            speed: SPEED_UNKNOWN,
            duplex: DUPLEX_UNKNOWN,
        }
    }
}

impl ConfigRepr {
    /// Bytes of configuration space a device offering `features` presents: up to the last field that exists.
    pub fn len_for(features: Features) -> usize {
        if features.intersects(feature::SPEED_DUPLEX) {
            config_offset::DUPLEX + 1
        } else if features.intersects(feature::MTU) {
            config_offset::MTU + 2
        } else if features.intersects(feature::MQ) {
            config_offset::MAX_VIRTQUEUE_PAIRS + 2
        } else if features.intersects(feature::STATUS) {
            config_offset::STATUS + 2
        } else {
            6
        }
    }

    /// Parses the configuration bytes as a device offering `features` presents them; fields of features not
    /// offered take their defaults (status: link up, one queue pair).
    pub fn parse(bytes: &[u8], features: Features) -> Result<Self, WireError> {
        let needed = Self::len_for(features);
        if bytes.len() < needed {
            return Err(WireError::Truncated {
                len: bytes.len(),
                needed,
            });
        }
        let mut repr = Self::default();
        if features.intersects(feature::MAC) {
            for (i, m) in repr.mac.iter_mut().enumerate() {
                *m = byte(bytes, config_offset::MAC + i);
            }
        }
        if features.intersects(feature::STATUS) {
            repr.status = rd16(bytes, config_offset::STATUS);
        }
        if features.intersects(feature::MQ) {
            repr.max_virtqueue_pairs = rd16(bytes, config_offset::MAX_VIRTQUEUE_PAIRS);
        }
        if features.intersects(feature::MTU) {
            repr.mtu = rd16(bytes, config_offset::MTU);
        }
        if features.intersects(feature::SPEED_DUPLEX) {
            repr.speed = rd32(bytes, config_offset::SPEED);
            repr.duplex = byte(bytes, config_offset::DUPLEX);
        }
        Ok(repr)
    }

    /// Writes the fields that exist for `features` into `bytes` (at least [`len_for`](Self::len_for) long); other
    /// bytes are zeroed.
    pub fn emit(&self, bytes: &mut [u8], features: Features) {
        bytes.fill(0);
        if features.intersects(feature::MAC) {
            wr(bytes, config_offset::MAC, &self.mac);
        }
        if features.intersects(feature::STATUS) {
            wr(bytes, config_offset::STATUS, &self.status.to_le_bytes());
        }
        if features.intersects(feature::MQ) {
            wr(
                bytes,
                config_offset::MAX_VIRTQUEUE_PAIRS,
                &self.max_virtqueue_pairs.to_le_bytes(),
            );
        }
        if features.intersects(feature::MTU) {
            wr(bytes, config_offset::MTU, &self.mtu.to_le_bytes());
        }
        if features.intersects(feature::SPEED_DUPLEX) {
            wr(bytes, config_offset::SPEED, &self.speed.to_le_bytes());
            wr(bytes, config_offset::DUPLEX, &[self.duplex]);
        }
    }
}

/// Control-queue classes, commands and acks (virtio 1.3 §5.1.6.5).
pub mod ctrl {
    /// Ack: command succeeded.
    pub const OK: u8 = 0;
    /// Ack: command failed.
    pub const ERR: u8 = 1;
    /// Class: RX mode (VIRTIO_NET_F_CTRL_RX).
    pub const CLASS_RX: u8 = 0;
    /// RX: promiscuous.
    pub const RX_PROMISC: u8 = 0;
    /// RX: all multicast.
    pub const RX_ALLMULTI: u8 = 1;
    /// RX: all unicast (CTRL_RX_EXTRA).
    pub const RX_ALLUNI: u8 = 2;
    /// RX: no multicast (CTRL_RX_EXTRA).
    pub const RX_NOMULTI: u8 = 3;
    /// RX: no unicast (CTRL_RX_EXTRA).
    pub const RX_NOUNI: u8 = 4;
    /// RX: no broadcast (CTRL_RX_EXTRA).
    pub const RX_NOBCAST: u8 = 5;
    /// Class: MAC filtering.
    pub const CLASS_MAC: u8 = 1;
    /// MAC: set the unicast and multicast filter tables.
    pub const MAC_TABLE_SET: u8 = 0;
    /// MAC: set the default MAC address (VIRTIO_NET_F_CTRL_MAC_ADDR).
    pub const MAC_ADDR_SET: u8 = 1;
    /// Class: VLAN filtering (VIRTIO_NET_F_CTRL_VLAN).
    pub const CLASS_VLAN: u8 = 2;
    /// VLAN: add a VLAN id to the filter.
    pub const VLAN_ADD: u8 = 0;
    /// VLAN: remove a VLAN id from the filter.
    pub const VLAN_DEL: u8 = 1;
    /// Class: announce (VIRTIO_NET_F_GUEST_ANNOUNCE).
    pub const CLASS_ANNOUNCE: u8 = 3;
    /// Announce: the driver announced itself; clear `status.ANNOUNCE`.
    pub const ANNOUNCE_ACK: u8 = 0;
    /// Class: multiqueue (VIRTIO_NET_F_MQ).
    pub const CLASS_MQ: u8 = 4;
    /// MQ: set the number of queue pairs in use.
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// Smallest `virtqueue_pairs`.
    pub const MQ_VQ_PAIRS_MIN: u16 = 1;
    /// Largest `virtqueue_pairs`.
    pub const MQ_VQ_PAIRS_MAX: u16 = 0x8000;
    /// Class: guest offloads (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS).
    pub const CLASS_GUEST_OFFLOADS: u8 = 5;
    /// Guest offloads: set the receive offloads (a le64 of feature bits).
    pub const GUEST_OFFLOADS_SET: u8 = 0;
}

/// The RX modes of the [`ctrl::CLASS_RX`] class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// Receive every frame.
    Promisc,
    /// Receive every multicast frame.
    AllMulti,
    /// Receive every unicast frame.
    AllUni,
    /// Receive no multicast frame.
    NoMulti,
    /// Receive no unicast frame.
    NoUni,
    /// Receive no broadcast frame.
    NoBcast,
}

impl RxMode {
    /// The command byte.
    pub const fn command(self) -> u8 {
        match self {
            Self::Promisc => ctrl::RX_PROMISC,
            Self::AllMulti => ctrl::RX_ALLMULTI,
            Self::AllUni => ctrl::RX_ALLUNI,
            Self::NoMulti => ctrl::RX_NOMULTI,
            Self::NoUni => ctrl::RX_NOUNI,
            Self::NoBcast => ctrl::RX_NOBCAST,
        }
    }

    /// The mode of a command byte.
    pub const fn from_command(command: u8) -> Option<Self> {
        Some(match command {
            ctrl::RX_PROMISC => Self::Promisc,
            ctrl::RX_ALLMULTI => Self::AllMulti,
            ctrl::RX_ALLUNI => Self::AllUni,
            ctrl::RX_NOMULTI => Self::NoMulti,
            ctrl::RX_NOUNI => Self::NoUni,
            ctrl::RX_NOBCAST => Self::NoBcast,
            _ => return None,
        })
    }

    /// Whether the mode needs VIRTIO_NET_F_CTRL_RX_EXTRA (the first two need only CTRL_RX).
    pub const fn is_extra(self) -> bool {
        !matches!(self, Self::Promisc | Self::AllMulti)
    }
}

/// A MAC filter table inside a MAC_TABLE_SET payload: `le32 entries` then `entries` 6-byte addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacTable<'a> {
    macs: &'a [u8],
}

impl<'a> MacTable<'a> {
    /// A table over `macs`, whose length must be a multiple of 6.
    pub fn new(macs: &'a [u8]) -> Option<Self> {
        (macs.len() % 6 == 0).then_some(Self { macs })
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.macs.len() / 6
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    /// The addresses.
    pub fn iter(&self) -> impl Iterator<Item = [u8; 6]> + 'a {
        self.macs
            .chunks_exact(6)
            .filter_map(|c| <[u8; 6]>::try_from(c).ok())
    }

    /// Bytes this table takes in the payload.
    pub fn wire_len(&self) -> usize {
        4 + self.macs.len()
    }

    /// Splits one table off the front of `bytes`.
    fn parse(bytes: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let entries = usize::try_from(rd32(bytes, 0)).ok()?;
        if bytes.len() < 4 {
            return None;
        }
        let end = entries.checked_mul(6)?.checked_add(4)?;
        let macs = bytes.get(4..end)?;
        Some((Self { macs }, bytes.get(end..).unwrap_or(&[])))
    }

    fn emit(&self, out: &mut [u8]) -> Option<usize> {
        let entries = u32::try_from(self.len()).ok()?;
        out.get_mut(..4)?.copy_from_slice(&entries.to_le_bytes());
        out.get_mut(4..self.wire_len())?.copy_from_slice(self.macs);
        Some(self.wire_len())
    }
}

/// A control-queue command (virtio 1.3 §5.1.6.5): the `class`/`command` header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CtrlCommand<'a> {
    /// RX mode on/off.
    RxMode {
        /// The mode.
        mode: RxMode,
        /// On (1) or off (0).
        on: bool,
    },
    /// Replace the unicast and multicast filter tables.
    MacTableSet {
        /// Unicast addresses.
        unicast: MacTable<'a>,
        /// Multicast addresses.
        multicast: MacTable<'a>,
    },
    /// Set the default MAC address.
    MacAddrSet([u8; 6]),
    /// Add a VLAN id (0..4095) to the filter.
    VlanAdd(u16),
    /// Remove a VLAN id from the filter.
    VlanDel(u16),
    /// Acknowledge an announce request.
    AnnounceAck,
    /// Use this many queue pairs.
    MqVqPairsSet(u16),
    /// Set the receive offloads (feature bits of [`feature::GUEST_OFFLOADS`]).
    GuestOffloadsSet(u64),
}

impl<'a> CtrlCommand<'a> {
    /// `(class, command)`.
    pub fn class_command(&self) -> (u8, u8) {
        match self {
            Self::RxMode { mode, .. } => (ctrl::CLASS_RX, mode.command()),
            Self::MacTableSet { .. } => (ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET),
            Self::MacAddrSet(_) => (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET),
            Self::VlanAdd(_) => (ctrl::CLASS_VLAN, ctrl::VLAN_ADD),
            Self::VlanDel(_) => (ctrl::CLASS_VLAN, ctrl::VLAN_DEL),
            Self::AnnounceAck => (ctrl::CLASS_ANNOUNCE, ctrl::ANNOUNCE_ACK),
            Self::MqVqPairsSet(_) => (ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET),
            Self::GuestOffloadsSet(_) => (ctrl::CLASS_GUEST_OFFLOADS, ctrl::GUEST_OFFLOADS_SET),
        }
    }

    /// The feature the device must have negotiated for this command.
    pub fn required_feature(&self) -> Features {
        match self {
            Self::RxMode { mode, .. } if mode.is_extra() => feature::CTRL_RX_EXTRA,
            Self::RxMode { .. } | Self::MacTableSet { .. } => feature::CTRL_RX,
            Self::MacAddrSet(_) => feature::CTRL_MAC_ADDR,
            Self::VlanAdd(_) | Self::VlanDel(_) => feature::CTRL_VLAN,
            Self::AnnounceAck => feature::GUEST_ANNOUNCE,
            Self::MqVqPairsSet(_) => feature::MQ,
            Self::GuestOffloadsSet(_) => feature::CTRL_GUEST_OFFLOADS,
        }
    }

    /// Parses a request: `bytes` is everything the driver made device-readable (class, command, payload).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (&class, rest) = bytes
            .split_first()
            .ok_or(WireError::Truncated { len: 0, needed: 2 })?;
        let (&command, data) = rest
            .split_first()
            .ok_or(WireError::Truncated { len: 1, needed: 2 })?;
        let malformed = WireError::Malformed { class, command };
        let exact = |n: usize| {
            if data.len() == n {
                Ok(data)
            } else {
                Err(malformed)
            }
        };
        match (class, command) {
            (ctrl::CLASS_RX, c) => {
                let mode =
                    RxMode::from_command(c).ok_or(WireError::UnknownCommand { class, command })?;
                let on = match exact(1)? {
                    [0] => false,
                    [1] => true,
                    _ => return Err(malformed),
                };
                Ok(Self::RxMode { mode, on })
            }
            (ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET) => {
                let (unicast, rest) = MacTable::parse(data).ok_or(malformed)?;
                let (multicast, rest) = MacTable::parse(rest).ok_or(malformed)?;
                if !rest.is_empty() {
                    return Err(malformed);
                }
                Ok(Self::MacTableSet { unicast, multicast })
            }
            (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET) => {
                let mac = <[u8; 6]>::try_from(exact(6)?).map_err(|_| malformed)?;
                Ok(Self::MacAddrSet(mac))
            }
            (ctrl::CLASS_VLAN, ctrl::VLAN_ADD | ctrl::VLAN_DEL) => {
                let id = rd16(exact(2)?, 0);
                if id >= 4096 {
                    return Err(malformed);
                }
                Ok(if command == ctrl::VLAN_ADD {
                    Self::VlanAdd(id)
                } else {
                    Self::VlanDel(id)
                })
            }
            (ctrl::CLASS_ANNOUNCE, ctrl::ANNOUNCE_ACK) => {
                exact(0)?;
                Ok(Self::AnnounceAck)
            }
            (ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET) => {
                let pairs = rd16(exact(2)?, 0);
                if !(ctrl::MQ_VQ_PAIRS_MIN..=ctrl::MQ_VQ_PAIRS_MAX).contains(&pairs) {
                    return Err(malformed);
                }
                Ok(Self::MqVqPairsSet(pairs))
            }
            (ctrl::CLASS_GUEST_OFFLOADS, ctrl::GUEST_OFFLOADS_SET) => {
                let raw = <[u8; 8]>::try_from(exact(8)?).map_err(|_| malformed)?;
                Ok(Self::GuestOffloadsSet(u64::from_le_bytes(raw)))
            }
            _ => Err(WireError::UnknownCommand { class, command }),
        }
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn wire_len(&self) -> usize {
        2 + match self {
            Self::RxMode { .. } => 1,
            Self::MacTableSet { unicast, multicast } => unicast.wire_len() + multicast.wire_len(),
            Self::MacAddrSet(_) => 6,
            Self::VlanAdd(_) | Self::VlanDel(_) | Self::MqVqPairsSet(_) => 2,
            Self::AnnounceAck => 0,
            Self::GuestOffloadsSet(_) => 8,
        }
    }

    /// Writes the request (class, command, payload) into `out`; returns its length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        let len = self.wire_len();
        if out.len() < len {
            return Err(WireError::Truncated {
                len: out.len(),
                needed: len,
            });
        }
        let (class, command) = self.class_command();
        wr(out, 0, &[class, command]);
        match self {
            Self::RxMode { on, .. } => wr(out, 2, &[u8::from(*on)]),
            Self::MacTableSet { unicast, multicast } => {
                let data = out.get_mut(2..).unwrap_or(&mut []);
                let n = unicast.emit(data).unwrap_or(0);
                if let Some(rest) = data.get_mut(n..) {
                    multicast.emit(rest);
                }
            }
            Self::MacAddrSet(mac) => wr(out, 2, mac),
            Self::VlanAdd(id) | Self::VlanDel(id) | Self::MqVqPairsSet(id) => {
                wr(out, 2, &id.to_le_bytes());
            }
            Self::AnnounceAck => {}
            Self::GuestOffloadsSet(bits) => wr(out, 2, &bits.to_le_bytes()),
        }
        Ok(len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn gso_is_segmented_for_every_type_but_none_with_or_without_ecn() {
        assert!(!gso::is_segmented(gso::NONE));
        assert!(!gso::is_segmented(gso::ECN));
        for t in [gso::TCPV4, gso::UDP, gso::TCPV6, gso::UDP_L4] {
            assert!(gso::is_segmented(t), "{t}");
            assert!(gso::is_segmented(t | gso::ECN), "{t} | ECN");
        }
    }

    #[test]
    fn header_forms_round_trip() {
        let repr = HeaderRepr {
            num_buffers: 3,
            hash_value: 0xdead_beef,
            hash_report: 7,
            ..HeaderRepr::new()
                .with_checksum(34, 16)
                .with_gso(gso::TCPV4 | gso::ECN, 1448, 54)
        };
        for len in [HeaderLen::Legacy, HeaderLen::Modern, HeaderLen::HashReport] {
            let bytes = repr.to_bytes(len);
            let view = Header::new_checked(&bytes[..len.bytes()]).unwrap();
            let back = HeaderRepr::parse(&view);
            assert_eq!(back.flags, hdr_flags::NEEDS_CSUM);
            assert_eq!((back.csum_start, back.csum_offset), (34, 16));
            assert_eq!(
                (back.gso_type, back.gso_size, back.hdr_len),
                (0x81, 1448, 54)
            );
            assert_eq!(
                back.num_buffers,
                if len >= HeaderLen::Modern { 3 } else { 0 }
            );
            assert_eq!(
                back.hash_value,
                if len == HeaderLen::HashReport {
                    0xdead_beef
                } else {
                    0
                }
            );
        }
        assert!(Header::new_checked(&[0u8; 9][..]).is_err());
    }

    #[test]
    fn header_len_follows_features() {
        assert_eq!(
            HeaderLen::for_features(Features::empty()),
            HeaderLen::Legacy
        );
        assert_eq!(
            HeaderLen::for_features(feature::MRG_RXBUF),
            HeaderLen::Modern
        );
        assert_eq!(
            HeaderLen::for_features(Features::VERSION_1),
            HeaderLen::Modern
        );
        assert_eq!(
            HeaderLen::for_features(Features::VERSION_1 | feature::HASH_REPORT),
            HeaderLen::HashReport
        );
    }

    #[test]
    fn config_layout_depends_on_features() {
        let repr = ConfigRepr {
            mac: [2, 0, 0, 0, 0, 1],
            status: status::LINK_UP | status::ANNOUNCE,
            max_virtqueue_pairs: 4,
            mtu: 9000,
            speed: 10_000,
            duplex: DUPLEX_FULL,
        };
        let all =
            feature::MAC | feature::STATUS | feature::MQ | feature::MTU | feature::SPEED_DUPLEX;
        let mut bytes = [0u8; 17];
        assert_eq!(ConfigRepr::len_for(all), 17);
        repr.emit(&mut bytes, all);
        assert_eq!(ConfigRepr::parse(&bytes, all).unwrap(), repr);
        let only_mac = ConfigRepr::parse(&bytes, feature::MAC).unwrap();
        assert_eq!(only_mac.mac, repr.mac);
        assert_eq!(only_mac.max_virtqueue_pairs, 1);
        assert_eq!(ConfigRepr::len_for(feature::STATUS), 8);
        assert!(ConfigRepr::parse(&bytes[..7], feature::STATUS).is_err());
    }

    #[test]
    fn ctrl_commands_round_trip() {
        let uni = [2u8, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        let multi = [1u8, 0, 0x5e, 0, 0, 1];
        let commands = [
            CtrlCommand::RxMode {
                mode: RxMode::Promisc,
                on: false,
            },
            CtrlCommand::RxMode {
                mode: RxMode::NoBcast,
                on: true,
            },
            CtrlCommand::MacTableSet {
                unicast: MacTable::new(&uni).unwrap(),
                multicast: MacTable::new(&multi).unwrap(),
            },
            CtrlCommand::MacAddrSet([2, 1, 2, 3, 4, 5]),
            CtrlCommand::VlanAdd(100),
            CtrlCommand::VlanDel(4095),
            CtrlCommand::AnnounceAck,
            CtrlCommand::MqVqPairsSet(4),
            CtrlCommand::GuestOffloadsSet(feature::GUEST_CSUM.bits()),
        ];
        for c in commands {
            let mut buf = [0u8; 64];
            let n = c.emit(&mut buf).unwrap();
            assert_eq!(n, c.wire_len());
            assert_eq!(CtrlCommand::parse(&buf[..n]).unwrap(), c);
        }
    }

    #[test]
    fn ctrl_garbage_is_refused() {
        assert!(matches!(
            CtrlCommand::parse(&[]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            CtrlCommand::parse(&[9, 9]),
            Err(WireError::UnknownCommand { .. })
        ));
        assert!(matches!(
            CtrlCommand::parse(&[0, 0, 2]),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            CtrlCommand::parse(&[2, 0, 0, 0x10]),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            CtrlCommand::parse(&[4, 0, 0, 0]),
            Err(WireError::Malformed { .. })
        ));
        // A table claiming more entries than bytes.
        assert!(CtrlCommand::parse(&[1, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(CtrlCommand::parse(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn spec_constants_match_virtio_bindings() {
        use virtio_bindings::virtio_net as n;
        let bit = |b: u32| Features::from_bits_retain(1u64 << b);
        let pairs = [
            (feature::CSUM, n::VIRTIO_NET_F_CSUM),
            (feature::GUEST_CSUM, n::VIRTIO_NET_F_GUEST_CSUM),
            (
                feature::CTRL_GUEST_OFFLOADS,
                n::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
            ),
            (feature::MTU, n::VIRTIO_NET_F_MTU),
            (feature::MAC, n::VIRTIO_NET_F_MAC),
            (feature::GSO, n::VIRTIO_NET_F_GSO),
            (feature::GUEST_TSO4, n::VIRTIO_NET_F_GUEST_TSO4),
            (feature::GUEST_TSO6, n::VIRTIO_NET_F_GUEST_TSO6),
            (feature::GUEST_ECN, n::VIRTIO_NET_F_GUEST_ECN),
            (feature::GUEST_UFO, n::VIRTIO_NET_F_GUEST_UFO),
            (feature::HOST_TSO4, n::VIRTIO_NET_F_HOST_TSO4),
            (feature::HOST_TSO6, n::VIRTIO_NET_F_HOST_TSO6),
            (feature::HOST_ECN, n::VIRTIO_NET_F_HOST_ECN),
            (feature::HOST_UFO, n::VIRTIO_NET_F_HOST_UFO),
            (feature::MRG_RXBUF, n::VIRTIO_NET_F_MRG_RXBUF),
            (feature::STATUS, n::VIRTIO_NET_F_STATUS),
            (feature::CTRL_VQ, n::VIRTIO_NET_F_CTRL_VQ),
            (feature::CTRL_RX, n::VIRTIO_NET_F_CTRL_RX),
            (feature::CTRL_VLAN, n::VIRTIO_NET_F_CTRL_VLAN),
            (feature::CTRL_RX_EXTRA, n::VIRTIO_NET_F_CTRL_RX_EXTRA),
            (feature::GUEST_ANNOUNCE, n::VIRTIO_NET_F_GUEST_ANNOUNCE),
            (feature::MQ, n::VIRTIO_NET_F_MQ),
            (feature::CTRL_MAC_ADDR, n::VIRTIO_NET_F_CTRL_MAC_ADDR),
            (feature::DEVICE_STATS, n::VIRTIO_NET_F_DEVICE_STATS),
            (feature::VQ_NOTF_COAL, n::VIRTIO_NET_F_VQ_NOTF_COAL),
            (feature::NOTF_COAL, n::VIRTIO_NET_F_NOTF_COAL),
            (feature::GUEST_USO4, n::VIRTIO_NET_F_GUEST_USO4),
            (feature::GUEST_USO6, n::VIRTIO_NET_F_GUEST_USO6),
            (feature::HOST_USO, n::VIRTIO_NET_F_HOST_USO),
            (feature::HASH_REPORT, n::VIRTIO_NET_F_HASH_REPORT),
            (feature::GUEST_HDRLEN, n::VIRTIO_NET_F_GUEST_HDRLEN),
            (feature::RSS, n::VIRTIO_NET_F_RSS),
            (feature::RSC_EXT, n::VIRTIO_NET_F_RSC_EXT),
            (feature::STANDBY, n::VIRTIO_NET_F_STANDBY),
            (feature::SPEED_DUPLEX, n::VIRTIO_NET_F_SPEED_DUPLEX),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, bit(theirs));
        }
        assert_eq!(u32::from(status::LINK_UP), n::VIRTIO_NET_S_LINK_UP);
        assert_eq!(u32::from(status::ANNOUNCE), n::VIRTIO_NET_S_ANNOUNCE);
        assert_eq!(
            u32::from(hdr_flags::NEEDS_CSUM),
            n::VIRTIO_NET_HDR_F_NEEDS_CSUM
        );
        assert_eq!(
            u32::from(hdr_flags::DATA_VALID),
            n::VIRTIO_NET_HDR_F_DATA_VALID
        );
        assert_eq!(u32::from(hdr_flags::RSC_INFO), n::VIRTIO_NET_HDR_F_RSC_INFO);
        assert_eq!(u32::from(gso::NONE), n::VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(u32::from(gso::TCPV4), n::VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u32::from(gso::UDP), n::VIRTIO_NET_HDR_GSO_UDP);
        assert_eq!(u32::from(gso::TCPV6), n::VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!(u32::from(gso::UDP_L4), n::VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u32::from(gso::ECN), n::VIRTIO_NET_HDR_GSO_ECN);
        assert_eq!(u32::from(ctrl::OK), n::VIRTIO_NET_OK);
        assert_eq!(u32::from(ctrl::ERR), n::VIRTIO_NET_ERR);
        let cmds = [
            (ctrl::CLASS_RX, n::VIRTIO_NET_CTRL_RX),
            (ctrl::RX_PROMISC, n::VIRTIO_NET_CTRL_RX_PROMISC),
            (ctrl::RX_ALLMULTI, n::VIRTIO_NET_CTRL_RX_ALLMULTI),
            (ctrl::RX_ALLUNI, n::VIRTIO_NET_CTRL_RX_ALLUNI),
            (ctrl::RX_NOMULTI, n::VIRTIO_NET_CTRL_RX_NOMULTI),
            (ctrl::RX_NOUNI, n::VIRTIO_NET_CTRL_RX_NOUNI),
            (ctrl::RX_NOBCAST, n::VIRTIO_NET_CTRL_RX_NOBCAST),
            (ctrl::CLASS_MAC, n::VIRTIO_NET_CTRL_MAC),
            (ctrl::MAC_TABLE_SET, n::VIRTIO_NET_CTRL_MAC_TABLE_SET),
            (ctrl::MAC_ADDR_SET, n::VIRTIO_NET_CTRL_MAC_ADDR_SET),
            (ctrl::CLASS_VLAN, n::VIRTIO_NET_CTRL_VLAN),
            (ctrl::VLAN_ADD, n::VIRTIO_NET_CTRL_VLAN_ADD),
            (ctrl::VLAN_DEL, n::VIRTIO_NET_CTRL_VLAN_DEL),
            (ctrl::CLASS_ANNOUNCE, n::VIRTIO_NET_CTRL_ANNOUNCE),
            (ctrl::ANNOUNCE_ACK, n::VIRTIO_NET_CTRL_ANNOUNCE_ACK),
            (ctrl::CLASS_MQ, n::VIRTIO_NET_CTRL_MQ),
            (ctrl::MQ_VQ_PAIRS_SET, n::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET),
            (
                ctrl::CLASS_GUEST_OFFLOADS,
                n::VIRTIO_NET_CTRL_GUEST_OFFLOADS,
            ),
            (
                ctrl::GUEST_OFFLOADS_SET,
                n::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
            ),
        ];
        for (ours, theirs) in cmds {
            assert_eq!(u32::from(ours), theirs);
        }
        assert_eq!(
            u32::from(ctrl::MQ_VQ_PAIRS_MIN),
            n::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN
        );
        assert_eq!(
            u32::from(ctrl::MQ_VQ_PAIRS_MAX),
            n::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX
        );
    }
}
