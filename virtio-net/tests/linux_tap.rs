//! The real Linux peer: the kernel's network stack in a network namespace on one side of a tap, our
//! `NetDriver` ↔ `NetDevice` (virtio-mmio, in-process) ↔ `Tap` on the other, with a hand-written responder behind
//! the driver playing host 10.77.0.2. The kernel ARPs for it and pings it (`ping -c 3`), then a Python process in
//! the namespace sends 2000 checked UDP datagrams to 10.77.0.2:9000 and verifies every echo.
//!
//! The TCP test puts smoltcp behind the driver instead (its `phy::Device` over `NetDriver`) and std sockets in
//! the namespace: one connection opened by the kernel, one by smoltcp, each carrying 8 MiB of pseudo-random data
//! in each direction, checked byte for byte at both ends. The kernel delivers TSO segments through `GUEST_TSO4`
//! and partial checksums through `GUEST_CSUM`; smoltcp's segments go out alternately with a partial checksum
//! (`CSUM`) and a full one, which the kernel verifies (its `InCsumErrors` must stay 0).
//!
//! Heavy tier (`#[ignore]`): run as root with `--include-ignored`. It fails (never skips) without root or
//! `/dev/net/tun`; it installs `iproute2` / `iputils-ping` with apt-get if `ip` / `ping` are missing.
#![cfg(all(feature = "tap", target_os = "linux"))]
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod peer;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use peer::*;
use smoltcp::iface::{self, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use virtio_mmio::MmioTransport;
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::tap::{Tap, TapConfig};
use virtio_net::wire::{feature, hdr_flags, HeaderRepr};

const OUR_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x02];
const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const UDP_DATAGRAMS: usize = 2000;

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure `tool` exists, installing `package` with apt-get if not; panics if that fails.
fn ensure_tool(tool: &str, package: &str) {
    if have(tool) {
        return;
    }
    eprintln!("{tool} missing: apt-get install -y {package}");
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get install -y {package} || (apt-get update && apt-get install -y {package})"
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && have(tool),
        "`{tool}` is required and installing `{package}` failed"
    );
}

/// Deletes the namespace on drop (also when the test fails). The tap itself vanishes when its fd is closed.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        Self(name.to_string())
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        run(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

type TapSetup = Setup<Tap>;

/// Serves frames until `child` exits (or the deadline passes, which fails the test); returns its output.
fn serve(
    s: &mut TapSetup,
    responder: &mut Responder,
    mut child: Child,
    what: &str,
    limit: Duration,
) -> String {
    let fd = s
        .device
        .borrow()
        .device()
        .backend()
        .readiness_fd(0)
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 65_550];
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut pfd, 1, 5) };
        if let Err(e) = s.device.borrow_mut().device_mut().process_rx(0) {
            eprintln!("process_rx: {e}");
        }
        while let Some((h, n)) = s.driver.receive(0, &mut buf).unwrap() {
            if let Some((reply, header)) = responder.handle(&mut buf[..n], &h) {
                let mut tries = 0;
                loop {
                    match s.driver.send(0, &reply, &header) {
                        Ok(()) => break,
                        Err(virtio_net::NetError::QueueFull) if tries < 1000 => {
                            tries += 1;
                            std::thread::sleep(Duration::from_micros(100));
                        }
                        Err(e) => panic!("send: {e}"),
                    }
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(
                status.success(),
                "{what} failed ({status}):\n{out}{err}\nresponder {:?} last error {:?}\ndevice {:?}",
                responder.stats,
                responder.last_error,
                s.device.borrow().device().counters()
            );
            return out + &err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish in {limit:?}; responder {:?}, device {:?}",
                responder.stats,
                s.device.borrow().device().counters()
            );
        }
    }
}

const UDP_SENDER: &str = r#"
import os, random, socket, struct, sys, time, zlib
n = int(sys.argv[1]); window = 32
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.0.1", 0)); s.settimeout(1.0)
dst = ("10.77.0.2", 9000)
def datagram(i):
    body = random.Random(i).randbytes(16 + (i * 37) % 1400)
    return struct.pack("!II", i, zlib.crc32(body)) + body
pending = {}; done = set(); bad = 0; resent = 0; nxt = 0; nbytes = 0; t0 = time.time()
while len(done) < n:
    while nxt < n and len(pending) < window:
        d = datagram(nxt); pending[nxt] = d; s.sendto(d, dst); nxt += 1
    try:
        data, src = s.recvfrom(65536)
    except socket.timeout:
        resent += len(pending)
        if resent > 10 * window:
            break
        for d in pending.values():
            s.sendto(d, dst)
        continue
    seq, crc = struct.unpack("!II", data[:8])
    if src == dst and seq in pending and data == pending[seq] and zlib.crc32(data[8:]) == crc:
        del pending[seq]; done.add(seq); nbytes += len(data)
    elif seq not in done:
        bad += 1
dt = time.time() - t0
print(f"udp: sent {n} datagrams to 10.77.0.2:9000, echoed {len(done)}/{n} intact ({nbytes} bytes, crc32 checked), bad {bad}, resent {resent}, {dt:.2f} s")
sys.exit(0 if len(done) == n and bad == 0 else 1)
"#;

/// Fails the test (never skips) unless it runs as root with `/dev/net/tun`; installs the missing `tools`
/// (`(command, Debian package)`).
fn require_root_tun_and(tools: &[(&str, &str)]) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test must run as root (it creates a tap and a network namespace)"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: the tun driver is required"
    );
    for (tool, package) in tools {
        ensure_tool(tool, package);
    }
}

/// The kernel's end: a fresh namespace `ns_name` holding the tap `tap_name` as 10.77.0.1/24, up. Our end: a
/// device offering every offload the tap takes, behind it our driver. Returns both and the tap's name.
fn linux_peer(ns_name: &str, tap_name: &str) -> (Netns, TapSetup, String) {
    let ns = Netns::create(ns_name);
    let tap = Tap::open(&TapConfig::new().name(tap_name)).expect("TUNSETIFF");
    let name = tap.name().to_string();
    assert_eq!(tap.vnet_header_len(), 12);
    run(&["ip", "link", "set", &name, "netns", &ns.0]);
    ns.run(&["ip", "link", "set", "lo", "up"]);
    ns.run(&["ip", "addr", "add", "10.77.0.1/24", "dev", &name]);
    ns.run(&["ip", "link", "set", &name, "up"]);

    let builder = NetDeviceBuilder::new()
        .queue_size(256)
        .mac(OUR_MAC)
        .offer(ring_features(false))
        .offer(
            feature::MRG_RXBUF
                | feature::STATUS
                | feature::CSUM
                | feature::HOST_TSO4
                | feature::HOST_TSO6
                | feature::HOST_ECN
                | feature::GUEST_CSUM
                | feature::GUEST_TSO4
                | feature::GUEST_TSO6
                | feature::GUEST_ECN
                | feature::GUEST_UFO,
        );
    let s = mmio(builder, tap, NetDriverConfig::new().queue_size(256));
    (ns, s, name)
}

#[test]
#[ignore = "heavy tier: needs root, /dev/net/tun and iproute2; run with --include-ignored"]
fn linux_peer_arp_icmp_udp_through_tap() {
    require_root_tun_and(&[
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("python3", "python3"),
    ]);
    let pid = std::process::id();
    let (ns, mut s, name) = linux_peer(&format!("vsdk-{pid}"), &format!("vsdk{pid}"));
    let negotiated = s.driver.features();
    let tun_flags = s.device.borrow().device().backend().offload_flags();
    println!("negotiated: {negotiated:?}");
    println!("TUNSETOFFLOAD flags: {tun_flags:#x}");
    assert!(negotiated.contains(feature::CSUM | feature::GUEST_CSUM | feature::MRG_RXBUF));
    assert_eq!(
        tun_flags,
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_UFO
    );
    let mut responder = Responder::new(OUR_MAC, OUR_IP, true);

    // (a) ARP + ICMP: the kernel resolves 10.77.0.2 through our responder and gets 3 echo replies.
    let ping = ns
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "3", "10.77.0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = serve(
        &mut s,
        &mut responder,
        ping,
        "ping",
        Duration::from_secs(30),
    );
    println!("{out}");
    assert!(
        out.contains("3 packets transmitted, 3 received"),
        "ping: {out}"
    );
    assert!(responder.stats.arp_replies >= 1, "{:?}", responder.stats);
    assert_eq!(responder.stats.icmp_replies, 3, "{:?}", responder.stats);

    // (b) Checked UDP transfer from the namespace, echoed by our responder.
    let sender = ns
        .exec(&["python3", "-c", UDP_SENDER, &UDP_DATAGRAMS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = serve(
        &mut s,
        &mut responder,
        sender,
        "udp sender",
        Duration::from_secs(120),
    );
    println!("{out}");
    assert!(
        out.contains(&format!("echoed {UDP_DATAGRAMS}/{UDP_DATAGRAMS} intact")),
        "{out}"
    );
    let stats = responder.stats;
    println!("responder: {stats:?}");
    assert_eq!(stats.bad, 0, "last error {:?}", responder.last_error);
    assert!(stats.udp_echoes >= UDP_DATAGRAMS as u64);
    assert!(stats.udp_echoes_offloaded > 0);
    let c = s.device.borrow().device().counters();
    println!("device counters: {c:?}");
    assert_eq!(c.total_drops(), 0, "{c:?}");
    let link = ns.run(&["ip", "-s", "link", "show", &name]);
    println!("{}", String::from_utf8_lossy(&link.stdout));
}

// ---------------------------------------------------------------------------------------------------------------
// TCP: smoltcp behind our driver, std sockets in the kernel's namespace.

/// Bytes each end sends on each connection.
const TCP_BYTES: usize = 8 << 20;
/// The kernel connects to smoltcp here.
const SMOLTCP_LISTEN_PORT: u16 = 7001;
/// smoltcp connects to the kernel here (from `SMOLTCP_CONNECT_FROM`).
const KERNEL_LISTEN_PORT: u16 = 7002;
const SMOLTCP_CONNECT_FROM: u16 = 49_152;
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The whole TCP exercise: both connections, their streams each way, their FINs.
const TCP_LIMIT: Duration = Duration::from_secs(120);
/// A blocking kernel-side read or write that waits this long has stalled: the test fails with what it saw.
const KERNEL_IO_TIMEOUT: Duration = Duration::from_secs(30);
const PROTO_TCP: u8 = 6;

/// The bytes of a stream: word `i` (little-endian) is the `i`-th output of SplitMix64 seeded with `seed`, so
/// either end can produce or check any stretch of it from its offset alone.
fn fill_stream(seed: u64, offset: usize, out: &mut [u8]) {
    for (k, byte) in out.iter_mut().enumerate() {
        *byte = stream_byte(seed, offset + k);
    }
}

fn stream_byte(seed: u64, offset: usize) -> u8 {
    let word = (offset / 8) as u64 + 1;
    let mut z = seed.wrapping_add(word.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()[offset % 8]
}

/// Checks that `data` is the stretch of stream `seed` starting at `offset`; names the first wrong byte.
fn check_stream(what: &str, seed: u64, offset: usize, data: &[u8]) -> Result<(), String> {
    match data
        .iter()
        .enumerate()
        .find(|&(k, &b)| b != stream_byte(seed, offset + k))
    {
        None => Ok(()),
        Some((k, &b)) => Err(format!(
            "{what}: byte {} is {b:#04x}, expected {:#04x}",
            offset + k,
            stream_byte(seed, offset + k)
        )),
    }
}

/// Runs `f` on a thread that joined the network namespace `ns`, so the sockets it opens live there (a socket
/// keeps its namespace, so its clones may then be used from any thread).
fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> JoinHandle<Result<T, String>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        // SAFETY: `file` is an open network-namespace fd for the whole call; setns only moves this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns({path}): {}",
                std::io::Error::last_os_error()
            ));
        }
        f()
    })
}

/// What the kernel's end of one connection did.
#[derive(Debug)]
struct KernelEnd {
    sent: usize,
    received: usize,
    elapsed: Duration,
}

/// The kernel's end of one connection: writes `TCP_BYTES` of stream `send_seed` then shuts its side down, while
/// reading up to EOF and checking exactly `TCP_BYTES` of stream `recv_seed`.
fn kernel_exchange(
    what: &'static str,
    stream: TcpStream,
    send_seed: u64,
    recv_seed: u64,
) -> Result<KernelEnd, String> {
    let start = Instant::now();
    let io = |e: std::io::Error| format!("{what}: {e}");
    stream.set_nonblocking(false).map_err(io)?;
    stream
        .set_read_timeout(Some(KERNEL_IO_TIMEOUT))
        .map_err(io)?;
    stream
        .set_write_timeout(Some(KERNEL_IO_TIMEOUT))
        .map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let mut chunk = vec![0u8; 48 * 1024 + 7];
        let mut sent = 0;
        while sent < TCP_BYTES {
            let n = chunk.len().min(TCP_BYTES - sent);
            fill_stream(send_seed, sent, &mut chunk[..n]);
            writer
                .write_all(&chunk[..n])
                .map_err(|e| format!("{what}: write at byte {sent}: {e}"))?;
            sent += n;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("{what}: shutdown(Write): {e}"))
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    let read_result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if received + n > TCP_BYTES {
                    break Err(format!(
                        "{what}: peer sent more than the {TCP_BYTES} bytes of its stream"
                    ));
                }
                if let Err(e) = check_stream(what, recv_seed, received, &buf[..n]) {
                    break Err(e);
                }
                received += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(format!("{what}: read after {received} bytes: {e}")),
        }
    };
    let send_result = sender
        .join()
        .unwrap_or_else(|_| Err(format!("{what}: writer thread panicked")));
    read_result?;
    send_result?;
    if received != TCP_BYTES {
        return Err(format!("{what}: EOF after {received} of {TCP_BYTES} bytes"));
    }
    Ok(KernelEnd {
        sent: TCP_BYTES,
        received,
        elapsed: start.elapsed(),
    })
}

/// What crossed the driver in each direction, as smoltcp's device saw it.
#[derive(Debug, Default, Clone, Copy)]
struct PhyStats {
    rx_frames: u64,
    /// Frames the kernel handed over with a partial checksum (`NEEDS_CSUM`), completed here.
    rx_partial_csums: u64,
    /// Frames larger than one segment (the kernel's TSO through `GUEST_TSO4`), given whole to smoltcp.
    rx_gso_frames: u64,
    rx_largest: usize,
    /// TCP segments whose checksum did not verify (after completion): a corrupting path, never expected.
    rx_bad_tcp_csums: u64,
    tx_frames: u64,
    /// TCP segments sent with a partial checksum for the kernel to complete (`VIRTIO_NET_F_CSUM`).
    tx_partial_csums: u64,
    /// TCP segments checksummed here in full, for the kernel to verify.
    tx_full_csums: u64,
    /// Sends that found the transmit ring full and waited for the device.
    tx_ring_full_waits: u64,
}

/// smoltcp's device: frames in and out of our driver's queue pair 0. TCP checksums are done here rather than by
/// smoltcp, so that every other segment can go out with a partial checksum (the offload path) and every received
/// segment is verified where a bad one would be counted instead of silently dropped.
struct DriverPhy<'s> {
    setup: &'s mut TapSetup,
    rx_frame: Vec<u8>,
    tx_frame: Vec<u8>,
    stats: PhyStats,
}

struct PhyRxToken<'a>(&'a [u8]);

struct PhyTxToken<'a> {
    driver: &'a mut NetDriver<MmioTransport<Shared<Tap>>, Mem>,
    frame: &'a mut Vec<u8>,
    stats: &'a mut PhyStats,
}

/// The IPv4 source and destination and the TCP segment's bounds (`start..end`) in an Ethernet frame carrying IPv4/TCP.
fn tcp_in_frame(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, usize, usize)> {
    let eth = parse_eth(frame)?;
    if eth.ethertype != ETH_IPV4 {
        return None;
    }
    let ip = parse_ipv4(eth.payload).ok()?;
    if ip.proto != PROTO_TCP || ip.payload.len() < 20 {
        return None;
    }
    let start = 14 + usize::from(eth.payload[0] & 0xf) * 4;
    Some((ip.src, ip.dst, start, start + ip.payload.len()))
}

impl smoltcp::phy::RxToken for PhyRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl smoltcp::phy::TxToken for PhyTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.frame.resize(len, 0);
        let result = f(self.frame);
        let mut header = HeaderRepr::new();
        if let Some((src, dst, start, end)) = tcp_in_frame(self.frame) {
            let pseudo = pseudo_header(src, dst, PROTO_TCP, end - start);
            let at = start + 16;
            if self.stats.tx_frames % 2 == 0 {
                // The pseudo-header sum in the checksum field; the kernel adds the segment (Linux's
                // CHECKSUM_PARTIAL convention, as the virtio-net spec describes for NEEDS_CSUM).
                self.frame[at..at + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
                header = HeaderRepr::new().with_checksum(start as u16, 16);
                self.stats.tx_partial_csums += 1;
            } else {
                self.frame[at..at + 2].copy_from_slice(&[0, 0]);
                let c = checksum(&self.frame[start..end], pseudo);
                self.frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
                self.stats.tx_full_csums += 1;
            }
        }
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            match self.driver.send(0, self.frame, &header) {
                Ok(()) => break,
                // The device completes transmissions synchronously on the notification, so a full ring
                // that stays full means it stopped consuming: fail rather than let TCP retransmit over it.
                Err(virtio_net::NetError::QueueFull) if Instant::now() < give_up => {
                    self.stats.tx_ring_full_waits += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => panic!("driver send of a {len}-byte frame: {e}"),
            }
        }
        self.stats.tx_frames += 1;
        result
    }
}

impl smoltcp::phy::Device for DriverPhy<'_> {
    type RxToken<'a>
        = PhyRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = PhyTxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: SmolInstant) -> Option<(PhyRxToken<'_>, PhyTxToken<'_>)> {
        let mut received = self.setup.driver.receive(0, &mut self.rx_frame).unwrap();
        if received.is_none() {
            // Nothing in the ring: have the device pull what the tap holds, then look again.
            if let Err(e) = self.setup.device.borrow_mut().device_mut().process_rx(0) {
                panic!("device process_rx: {e}");
            }
            received = self.setup.driver.receive(0, &mut self.rx_frame).unwrap();
        }
        let (header, len) = received?;
        let frame = &mut self.rx_frame[..len];
        let stats = &mut self.stats;
        stats.rx_frames += 1;
        stats.rx_largest = stats.rx_largest.max(len);
        if header.gso_type != virtio_net::wire::gso::NONE {
            stats.rx_gso_frames += 1;
        }
        if header.flags & hdr_flags::NEEDS_CSUM != 0 {
            assert!(
                complete_checksum(frame, &header),
                "kernel frame with csum_start/offset outside it: {header:?}"
            );
            stats.rx_partial_csums += 1;
        }
        if let Some((src, dst, start, end)) = tcp_in_frame(frame) {
            if checksum(
                &frame[start..end],
                pseudo_header(src, dst, PROTO_TCP, end - start),
            ) != 0
            {
                stats.rx_bad_tcp_csums += 1;
            }
        }
        Some((
            PhyRxToken(frame),
            PhyTxToken {
                driver: &mut self.setup.driver,
                frame: &mut self.tx_frame,
                stats,
            },
        ))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<PhyTxToken<'_>> {
        Some(PhyTxToken {
            driver: &mut self.setup.driver,
            frame: &mut self.tx_frame,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        // Verified on receive, left for `PhyTxToken` to fill (or offload) on transmit.
        caps.checksum.tcp = Checksum::Rx;
        caps
    }
}

/// smoltcp's end of one connection: sends `TCP_BYTES` of stream `send_seed` then closes, and checks that the
/// kernel sends exactly `TCP_BYTES` of stream `recv_seed` and then its FIN.
#[derive(Debug)]
struct SmolEnd {
    what: &'static str,
    handle: SocketHandle,
    send_seed: u64,
    recv_seed: u64,
    sent: usize,
    received: usize,
    closed: bool,
    fin_received: bool,
}

impl SmolEnd {
    fn new(what: &'static str, handle: SocketHandle, send_seed: u64, recv_seed: u64) -> Self {
        Self {
            what,
            handle,
            send_seed,
            recv_seed,
            sent: 0,
            received: 0,
            closed: false,
            fin_received: false,
        }
    }

    /// Moves what the socket lets through now: received bytes checked, sendable bytes queued, the close once
    /// everything is queued.
    fn pump(&mut self, sockets: &mut SocketSet<'_>) -> Result<(), String> {
        let socket = sockets.get_mut::<tcp::Socket<'_>>(self.handle);
        while socket.can_recv() {
            let (seed, offset, what) = (self.recv_seed, self.received, self.what);
            let (n, checked) = socket
                .recv(|data| {
                    let n = data.len();
                    let checked = if offset + n > TCP_BYTES {
                        Err(format!(
                            "{what}: kernel sent more than the {TCP_BYTES} bytes of its stream"
                        ))
                    } else {
                        check_stream(what, seed, offset, data)
                    };
                    (n, (n, checked))
                })
                .map_err(|e| format!("{what}: recv: {e}"))?;
            checked?;
            self.received += n;
        }
        while self.sent < TCP_BYTES && socket.can_send() {
            let (seed, offset) = (self.send_seed, self.sent);
            let n = socket
                .send(|buf| {
                    let n = buf.len().min(TCP_BYTES - offset);
                    fill_stream(seed, offset, &mut buf[..n]);
                    (n, n)
                })
                .map_err(|e| format!("{}: send: {e}", self.what))?;
            if n == 0 {
                break;
            }
            self.sent += n;
        }
        if self.sent == TCP_BYTES && !self.closed {
            socket.close();
            self.closed = true;
        }
        // The kernel's FIN: only these states follow it (the socket was established, as it received data).
        if self.received == TCP_BYTES
            && matches!(
                socket.state(),
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
                    | tcp::State::Closed
            )
        {
            self.fin_received = true;
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.closed && self.fin_received
    }
}

/// A counter of `/proc/net/snmp` (`proto` e.g. "Tcp", `field` e.g. "InCsumErrors").
fn snmp_counter(snmp: &str, proto: &str, field: &str) -> u64 {
    let prefix = format!("{proto}:");
    let mut rows = snmp.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        panic!("no {proto} rows in /proc/net/snmp:\n{snmp}");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {proto} {field} in /proc/net/snmp:\n{snmp}"));
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {proto} {field} in /proc/net/snmp:\n{snmp}"))
}

#[test]
#[ignore = "heavy tier: needs root, /dev/net/tun and iproute2; run with --include-ignored"]
fn linux_peer_tcp_transfer_through_tap() {
    require_root_tun_and(&[("ip", "iproute2")]);
    let pid = std::process::id();
    // Names of its own: the UDP test may run at the same time in this process.
    let ns_name = format!("vsdk-tcp-{pid}");
    let (ns, mut s, tap_name) = linux_peer(&ns_name, &format!("vsdkt{pid}"));
    let negotiated = s.driver.features();
    println!("negotiated: {negotiated:?}");
    assert!(
        negotiated.contains(
            feature::CSUM | feature::GUEST_CSUM | feature::GUEST_TSO4 | feature::MRG_RXBUF
        ),
        "{negotiated:?}"
    );
    let tap_fd = s
        .device
        .borrow()
        .device()
        .backend()
        .readiness_fd(0)
        .unwrap();

    let mut phy = DriverPhy {
        setup: &mut s,
        rx_frame: vec![0u8; 65_550],
        tx_frame: Vec::with_capacity(1514),
        stats: PhyStats::default(),
    };
    let mut config = iface::Config::new(EthernetAddress(OUR_MAC).into());
    config.random_seed = u64::from(pid);
    let mut iface = Interface::new(config, &mut phy, SmolInstant::now());
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::new(IpAddress::Ipv4(OUR_IP), 24))
            .unwrap();
    });
    let mut sockets = SocketSet::new(vec![]);
    let new_socket = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0u8; 256 * 1024]),
        )
    };
    let mut listener = new_socket();
    listener.listen(SMOLTCP_LISTEN_PORT).unwrap();
    let accepted = sockets.add(listener);
    let connecting = sockets.add(new_socket());
    // Four distinct streams, one per direction per connection.
    let mut ends = [
        SmolEnd::new(
            "kernel->smoltcp connection",
            accepted,
            0xA11C_E000,
            0x0B0B_0000,
        ),
        SmolEnd::new(
            "smoltcp->kernel connection",
            connecting,
            0xC0FF_EE00,
            0xD00D_0000,
        ),
    ];

    let kernel_connects = spawn_in_netns(&ns_name, || {
        let stream =
            TcpStream::connect_timeout(&(OUR_IP, SMOLTCP_LISTEN_PORT).into(), KERNEL_IO_TIMEOUT)
                .map_err(|e| format!("kernel connect to {OUR_IP}:{SMOLTCP_LISTEN_PORT}: {e}"))?;
        kernel_exchange(
            "kernel->smoltcp connection",
            stream,
            0x0B0B_0000,
            0xA11C_E000,
        )
    });
    let (listening_tx, listening) = std::sync::mpsc::channel();
    let kernel_accepts = spawn_in_netns(&ns_name, move || {
        let listener = TcpListener::bind((KERNEL_IP, KERNEL_LISTEN_PORT))
            .map_err(|e| format!("kernel bind {KERNEL_IP}:{KERNEL_LISTEN_PORT}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        listening_tx
            .send(())
            .map_err(|_| "the smoltcp loop is gone".to_string())?;
        let give_up = Instant::now() + KERNEL_IO_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > give_up {
                        return Err(format!(
                            "kernel: no connection to {KERNEL_IP}:{KERNEL_LISTEN_PORT} in {KERNEL_IO_TIMEOUT:?}"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("kernel accept: {e}")),
            }
        };
        kernel_exchange(
            "smoltcp->kernel connection",
            stream,
            0xD00D_0000,
            0xC0FF_EE00,
        )
    });
    let mut kernel_threads = [
        ("kernel->smoltcp connection", Some(kernel_connects), None),
        ("smoltcp->kernel connection", Some(kernel_accepts), None),
    ];

    let start = Instant::now();
    let deadline = start + TCP_LIMIT;
    let mut connect_sent = false;
    loop {
        let now = SmolInstant::now();
        iface.poll(now, &mut phy, &mut sockets);
        if !connect_sent && listening.try_recv().is_ok() {
            sockets
                .get_mut::<tcp::Socket<'_>>(connecting)
                .connect(
                    iface.context(),
                    (IpAddress::Ipv4(KERNEL_IP), KERNEL_LISTEN_PORT),
                    SMOLTCP_CONNECT_FROM,
                )
                .unwrap();
            connect_sent = true;
        }
        for end in &mut ends {
            if let Err(e) = end.pump(&mut sockets) {
                panic!("{e}; phy {:?}", phy.stats);
            }
        }
        iface.poll(now, &mut phy, &mut sockets);
        for (what, thread, result) in &mut kernel_threads {
            if thread.as_ref().is_some_and(JoinHandle::is_finished) {
                let joined = thread.take().unwrap().join();
                match joined {
                    Ok(Ok(end)) => *result = Some(end),
                    Ok(Err(e)) => panic!("{e}; smoltcp {ends:?}; phy {:?}", phy.stats),
                    Err(_) => panic!("{what}: kernel thread panicked"),
                }
            }
        }
        if ends.iter().all(SmolEnd::done) && kernel_threads.iter().all(|(_, _, r)| r.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TCP transfer not done in {TCP_LIMIT:?}: smoltcp {ends:?}; kernel {:?}; phy {:?}; device {:?}",
            kernel_threads.iter().map(|(w, _, r)| (w, r)).collect::<Vec<_>>(),
            phy.stats,
            phy.setup.device.borrow().device().counters()
        );
        let wait_ms = iface
            .poll_delay(SmolInstant::now(), &sockets)
            .map_or(5, |d| d.total_millis().min(5)) as i32;
        let mut pfd = libc::pollfd {
            fd: tap_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
    }
    let elapsed = start.elapsed();
    let stats = phy.stats;
    for (what, _, result) in &kernel_threads {
        let end = result.as_ref().unwrap();
        println!(
            "{what}: the kernel sent {} and received {} bytes in {:.2?} ({:.1} MiB/s each way)",
            end.sent,
            end.received,
            end.elapsed,
            end.sent as f64 / f64::from(1u32 << 20) / end.elapsed.as_secs_f64()
        );
    }
    println!("smoltcp ends: {ends:?}");
    println!(
        "{} MiB checked byte for byte in each direction of each connection in {elapsed:.2?}",
        TCP_BYTES >> 20
    );
    println!("phy: {stats:?}");
    for end in &ends {
        assert_eq!((end.sent, end.received), (TCP_BYTES, TCP_BYTES), "{end:?}");
    }
    for (what, _, result) in &kernel_threads {
        let end = result.as_ref().unwrap();
        assert_eq!((end.sent, end.received), (TCP_BYTES, TCP_BYTES), "{what}");
    }
    assert_eq!(stats.rx_bad_tcp_csums, 0, "{stats:?}");
    assert!(
        stats.tx_partial_csums > 0 && stats.tx_full_csums > 0,
        "{stats:?}"
    );
    assert!(
        stats.rx_gso_frames > 0 && stats.rx_largest > 1514,
        "the kernel never used GUEST_TSO4: {stats:?}"
    );
    let c = s.device.borrow().device().counters();
    println!("device counters: {c:?}");
    assert_eq!(c.total_drops(), 0, "{c:?}");
    assert!(
        s.device
            .borrow_mut()
            .device_mut()
            .take_last_error()
            .is_none(),
        "the device recorded an error on a notification"
    );
    let snmp = String::from_utf8_lossy(&ns.run(&["cat", "/proc/net/snmp"]).stdout).to_string();
    let (in_csum_errors, in_errs, retrans) = (
        snmp_counter(&snmp, "Tcp", "InCsumErrors"),
        snmp_counter(&snmp, "Tcp", "InErrs"),
        snmp_counter(&snmp, "Tcp", "RetransSegs"),
    );
    println!("kernel Tcp: InCsumErrors {in_csum_errors}, InErrs {in_errs}, RetransSegs {retrans}");
    assert_eq!(
        (in_csum_errors, in_errs),
        (0, 0),
        "the kernel rejected segments we sent"
    );
    let link = ns.run(&["ip", "-s", "link", "show", &tap_name]);
    println!("{}", String::from_utf8_lossy(&link.stdout));
}

#[test]
#[ignore = "heavy tier: needs root and /dev/net/tun; run with --include-ignored"]
fn tap_multiqueue_opens_one_fd_per_pair_and_vanishes_on_drop() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test must run as root");
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing"
    );
    ensure_tool("ip", "iproute2");
    let name = format!("vsdkmq{}", std::process::id());
    let mut tap = Tap::open(
        &TapConfig::new()
            .name(&name)
            .queue_pairs(4)
            .vnet_header_len(10),
    )
    .unwrap();
    assert_eq!(tap.name(), name);
    assert_eq!(tap.queue_pairs(), 4);
    assert_eq!(tap.vnet_header_len(), 10);
    let fds: Vec<i32> = (0..4).map(|p| tap.readiness_fd(p).unwrap()).collect();
    assert!(fds.windows(2).all(|w| w[0] != w[1]));
    assert!(tap.readiness_fd(4).is_none());
    let show = run(&["ip", "-d", "link", "show", &name]);
    let text = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(
        text.contains("multi_queue") && text.contains("vnet_hdr"),
        "{text}"
    );
    // Nothing to read on a fresh, down interface; queue 4 does not exist.
    let mut buf = [0u8; 2048];
    assert_eq!(tap.recv(3, &mut buf).unwrap(), None);
    assert!(tap.recv(4, &mut buf).is_err());
    tap.set_offloads(virtio_net::backend::Offloads::from_features(
        feature::GUEST_CSUM | feature::GUEST_TSO4,
    ))
    .unwrap();
    assert_eq!(tap.offload_flags(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    drop(tap);
    let gone = Command::new("ip")
        .args(["link", "show", &name])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "{name} still exists after drop");
}
