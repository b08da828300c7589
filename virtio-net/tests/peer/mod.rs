//! Shared by the backend tests: our `NetDriver` driving our `NetDevice` over virtio-mmio in-process with any
//! backend, and a tiny hand-written Ethernet/ARP/IPv4/ICMP/UDP toolkit (parse, build, checksums) plus a responder
//! that plays host 10.77.0.2 (or any address) behind the driver.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_core::{DeviceAddr, Features, HeapMemory};
use virtio_mmio::{IrqLine, MmioDevice, MmioInterrupt, MmioTransport, MmioVersion};
use virtio_net::backend::NetBackend;
use virtio_net::device::{NetDevice, NetDeviceBuilder};
use virtio_net::driver::{DmaRegion, NetDriver, NetDriverConfig};
use virtio_net::wire::{hdr_flags, HeaderRepr};

pub const MEM_BASE: u64 = 0x10_0000;
pub const MEM_LEN: usize = 48 << 20;

pub type Mem = Arc<HeapMemory>;
pub type Shared<B> = Rc<RefCell<MmioDevice<NetDevice<B, Mem, MmioInterrupt>>>>;

#[derive(Debug, Default)]
pub struct Line(pub AtomicU32);

impl IrqLine for Line {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct Setup<B: NetBackend> {
    pub device: Shared<B>,
    pub driver: NetDriver<MmioTransport<Shared<B>>, Mem>,
}

pub fn ring_features(packed: bool) -> Features {
    let mut f = Features::VERSION_1 | Features::EVENT_IDX | Features::INDIRECT_DESC;
    if packed {
        f |= Features::RING_PACKED;
    }
    f
}

pub fn mmio<B: NetBackend>(
    builder: NetDeviceBuilder,
    backend: B,
    config: NetDriverConfig,
) -> Setup<B> {
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(MEM_BASE), MEM_LEN).unwrap());
    let line = Arc::new(Line::default());
    let net = builder.build(backend);
    let device = Rc::new(RefCell::new(
        MmioDevice::new(net, memory.clone(), line, MmioVersion::Modern).unwrap(),
    ));
    let transport = MmioTransport::from_registers(device.clone(), 0x200).unwrap();
    let region = DmaRegion {
        base: DeviceAddr::new(MEM_BASE),
        len: MEM_LEN,
    };
    let driver = NetDriver::new(transport, memory, region, config).unwrap();
    Setup { device, driver }
}

// ---------------------------------------------------------------------------------------------------------------
// Wire helpers.

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Ones' complement sum of `data` (big-endian 16-bit words) added to `initial`, not folded.
pub fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` starting from `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(sum16(data, initial))
}

pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = proto;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    sum16(&p, 0)
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram with its checksum (0xffff for a computed 0, as RFC 768 asks).
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut c = checksum(&u, pseudo_header(src, dst, PROTO_UDP, len));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

pub fn icmp_echo(kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
}

pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    if p.len() < 28 || p[..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    Some(Arp {
        op: u16::from_be_bytes([p[6], p[7]]),
        sha: p[8..14].try_into().ok()?,
        spa: ip(14),
        tha: p[18..24].try_into().ok()?,
        tpa: ip(24),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Eth<'a> {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
    pub payload: &'a [u8],
}

pub fn parse_eth(f: &[u8]) -> Option<Eth<'_>> {
    if f.len() < 14 {
        return None;
    }
    Some(Eth {
        dst: f[..6].try_into().ok()?,
        src: f[6..12].try_into().ok()?,
        ethertype: u16::from_be_bytes([f[12], f[13]]),
        payload: &f[14..],
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Ip<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub payload: &'a [u8],
}

/// An unfragmented IPv4 packet with a valid header checksum.
pub fn parse_ipv4(p: &[u8]) -> Result<Ip<'_>, &'static str> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err("not ipv4");
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return Err("bad ipv4 lengths");
    }
    if checksum(&p[..ihl], 0) != 0 {
        return Err("bad ipv4 header checksum");
    }
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return Err("fragment");
    }
    Ok(Ip {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        proto: p[9],
        payload: &p[ihl..total],
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Udp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub payload: &'a [u8],
}

/// A UDP datagram whose checksum (if not 0) verifies.
pub fn parse_udp<'a>(ip: &Ip<'a>) -> Result<Udp<'a>, &'static str> {
    let u = ip.payload;
    if u.len() < 8 {
        return Err("short udp");
    }
    let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if len < 8 || len > u.len() {
        return Err("bad udp length");
    }
    let u = &u[..len];
    if u16::from_be_bytes([u[6], u[7]]) != 0
        && checksum(u, pseudo_header(ip.src, ip.dst, PROTO_UDP, len)) != 0
    {
        return Err("bad udp checksum");
    }
    Ok(Udp {
        sport: u16::from_be_bytes([u[0], u[1]]),
        dport: u16::from_be_bytes([u[2], u[3]]),
        payload: &u[8..],
    })
}

/// Completes a partial checksum as a driver must for a frame with `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the one's
/// complement sum from `csum_start` to the end, stored at `csum_start + csum_offset`.
pub fn complete_checksum(frame: &mut [u8], h: &HeaderRepr) -> bool {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > frame.len() {
        return false;
    }
    let c = checksum(&frame[start..], 0);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

// ---------------------------------------------------------------------------------------------------------------
// The responder: a host at `ip`/`mac` answering ARP, ICMP echo and UDP echo (any port).

#[derive(Debug, Default, Clone, Copy)]
pub struct ResponderStats {
    pub frames: u64,
    pub arp_replies: u64,
    pub icmp_replies: u64,
    pub udp_echoes: u64,
    pub udp_echoes_offloaded: u64,
    pub partial_csums_completed: u64,
    pub bad: u64,
    pub ignored: u64,
}

#[derive(Debug)]
pub struct Responder {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// Ask the device to checksum every other UDP echo (needs VIRTIO_NET_F_CSUM).
    pub offload_tx_csum: bool,
    pub stats: ResponderStats,
    pub last_error: Option<&'static str>,
    id: u16,
}

impl Responder {
    pub fn new(mac: [u8; 6], ip: Ipv4Addr, offload_tx_csum: bool) -> Self {
        Self {
            mac,
            ip,
            offload_tx_csum,
            stats: ResponderStats::default(),
            last_error: None,
            id: 1,
        }
    }

    fn bad(&mut self, why: &'static str) -> Option<(Vec<u8>, HeaderRepr)> {
        self.stats.bad += 1;
        self.last_error = Some(why);
        None
    }

    /// Handles one received frame (with its virtio-net header); returns the reply to send, if any.
    pub fn handle(&mut self, frame: &mut [u8], h: &HeaderRepr) -> Option<(Vec<u8>, HeaderRepr)> {
        self.stats.frames += 1;
        if h.flags & hdr_flags::NEEDS_CSUM != 0 {
            if !complete_checksum(frame, h) {
                return self.bad("csum_start/offset out of the frame");
            }
            self.stats.partial_csums_completed += 1;
        }
        let eth = parse_eth(frame)?;
        if eth.dst != self.mac && eth.dst != BROADCAST {
            self.stats.ignored += 1;
            return None;
        }
        match eth.ethertype {
            ETH_ARP => {
                let a = parse_arp(eth.payload)?;
                if a.op != 1 || a.tpa != self.ip {
                    self.stats.ignored += 1;
                    return None;
                }
                self.stats.arp_replies += 1;
                let reply = arp(2, self.mac, self.ip, a.sha, a.spa);
                Some((
                    ethernet(a.sha, self.mac, ETH_ARP, &reply),
                    HeaderRepr::new(),
                ))
            }
            ETH_IPV4 => {
                let ip = match parse_ipv4(eth.payload) {
                    Ok(ip) => ip,
                    Err(e) => return self.bad(e),
                };
                if ip.dst != self.ip {
                    self.stats.ignored += 1;
                    return None;
                }
                self.id = self.id.wrapping_add(1);
                match ip.proto {
                    PROTO_ICMP => {
                        let m = ip.payload;
                        if m.len() < 8 || checksum(m, 0) != 0 {
                            return self.bad("bad icmp checksum");
                        }
                        if m[0] != 8 {
                            self.stats.ignored += 1;
                            return None;
                        }
                        let id = u16::from_be_bytes([m[4], m[5]]);
                        let seq = u16::from_be_bytes([m[6], m[7]]);
                        let reply = icmp_echo(0, id, seq, &m[8..]);
                        let pkt = ipv4(self.ip, ip.src, PROTO_ICMP, self.id, &reply);
                        self.stats.icmp_replies += 1;
                        Some((
                            ethernet(eth.src, self.mac, ETH_IPV4, &pkt),
                            HeaderRepr::new(),
                        ))
                    }
                    PROTO_UDP => {
                        let u = match parse_udp(&ip) {
                            Ok(u) => u,
                            Err(e) => return self.bad(e),
                        };
                        let mut dgram = udp(self.ip, ip.src, u.dport, u.sport, u.payload);
                        let mut header = HeaderRepr::new();
                        self.stats.udp_echoes += 1;
                        if self.offload_tx_csum && self.stats.udp_echoes % 2 == 0 {
                            // Partial checksum: the pseudo-header sum, completed by the peer (the kernel).
                            let len = dgram.len();
                            let partial = fold(pseudo_header(self.ip, ip.src, PROTO_UDP, len));
                            dgram[6..8].copy_from_slice(&partial.to_be_bytes());
                            header = HeaderRepr::new().with_checksum(14 + 20, 6);
                            self.stats.udp_echoes_offloaded += 1;
                        }
                        let pkt = ipv4(self.ip, ip.src, PROTO_UDP, self.id, &dgram);
                        Some((ethernet(eth.src, self.mac, ETH_IPV4, &pkt), header))
                    }
                    _ => {
                        self.stats.ignored += 1;
                        None
                    }
                }
            }
            _ => {
                self.stats.ignored += 1;
                None
            }
        }
    }
}
