//! The real Linux peer: the kernel's network stack in a network namespace on one side of a tap, our
//! `NetDriver` ↔ `NetDevice` (virtio-mmio, in-process) ↔ `Tap` on the other, with a hand-written responder behind
//! the driver playing host 10.77.0.2. The kernel ARPs for it and pings it (`ping -c 3`), then a Python process in
//! the namespace sends 2000 checked UDP datagrams to 10.77.0.2:9000 and verifies every echo.
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

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use peer::*;
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::NetDriverConfig;
use virtio_net::tap::{Tap, TapConfig};
use virtio_net::wire::feature;

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

#[test]
#[ignore = "heavy tier: needs root, /dev/net/tun and iproute2; run with --include-ignored"]
fn linux_peer_arp_icmp_udp_through_tap() {
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
    ensure_tool("ip", "iproute2");
    ensure_tool("ping", "iputils-ping");
    ensure_tool("python3", "python3");

    let pid = std::process::id();
    let ns = Netns::create(&format!("vsdk-{pid}"));
    let tap = Tap::open(&TapConfig::new().name(&format!("vsdk{pid}"))).expect("TUNSETIFF");
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
    let mut s = mmio(builder, tap, NetDriverConfig::new().queue_size(256));
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
