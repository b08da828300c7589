//! A fake guest (our `NetDriver` ↔ our `NetDevice` over virtio-mmio) on libslirp's user-mode network: ARP for
//! the gateway, ICMP echo to it, and DHCP DISCOVER → OFFER. Needs no root and no network.
#![cfg(feature = "slirp")]
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod peer;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use peer::*;
use virtio_net::backend::NetBackend;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::NetDriverConfig;
use virtio_net::slirp::{Slirp, SlirpConfig};
use virtio_net::wire::{feature, HeaderRepr};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

fn setup() -> Setup<Slirp> {
    let builder = NetDeviceBuilder::new()
        .queue_size(64)
        .mac(GUEST_MAC)
        .offer(ring_features(false))
        // Offered, but dropped by the device: slirp takes bare frames.
        .offer(feature::MRG_RXBUF | feature::CSUM | feature::GUEST_CSUM);
    let slirp = Slirp::new(&SlirpConfig::new()).unwrap();
    mmio(builder, slirp, NetDriverConfig::new().queue_size(64))
}

/// Sends `frame` from the guest, then pumps slirp and the device until a frame matching `want` arrives.
fn exchange<T>(
    s: &mut Setup<Slirp>,
    frame: Option<&[u8]>,
    mut want: impl FnMut(&[u8]) -> Option<T>,
) -> T {
    if let Some(frame) = frame {
        s.driver.send(0, frame, &HeaderRepr::new()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_550];
    loop {
        {
            let mut dev = s.device.borrow_mut();
            dev.device_mut()
                .backend_mut()
                .poll_once(Duration::from_millis(5))
                .unwrap();
            let _ = dev.device_mut().process_rx(0);
        }
        while let Some((_, n)) = s.driver.receive(0, &mut buf).unwrap() {
            let f = &buf[..n];
            if let Some(t) = want(f) {
                return t;
            }
            // Slirp resolving the guest before replying: answer its ARP request.
            if let Some(eth) = parse_eth(f) {
                if let Some(a) = parse_arp(eth.payload).filter(|a| a.op == 1 && a.tpa == GUEST_IP) {
                    let r = arp(2, GUEST_MAC, GUEST_IP, a.sha, a.spa);
                    let reply = ethernet(a.sha, GUEST_MAC, ETH_ARP, &r);
                    s.driver.send(0, &reply, &HeaderRepr::new()).unwrap();
                }
            }
        }
        assert!(Instant::now() < deadline, "no reply from slirp within 5 s");
    }
}

#[test]
fn slirp_arp_icmp_and_dhcp_from_fake_guest_get_replies() {
    let mut s = setup();
    // Bare-frame backend: no header offloads negotiated, 12-byte header still used between driver and device.
    let negotiated = s.driver.features();
    assert!(!negotiated.intersects(feature::CSUM | feature::GUEST_CSUM));
    assert!(negotiated.contains(feature::MRG_RXBUF | feature::MAC));

    // ARP: who has 10.0.2.2? The reply comes synchronously from slirp_input, so the readiness fd is readable.
    let request = arp(1, GUEST_MAC, GUEST_IP, [0; 6], GATEWAY);
    s.driver
        .send(
            0,
            &ethernet(BROADCAST, GUEST_MAC, ETH_ARP, &request),
            &HeaderRepr::new(),
        )
        .unwrap();
    {
        let dev = s.device.borrow();
        let slirp = dev.device().backend();
        assert_eq!(slirp.pending(), 1);
        let mut pfd = libc::pollfd {
            fd: slirp.readiness_fd(0).unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
    }
    let gw_mac = exchange(&mut s, None, |f| {
        let eth = parse_eth(f)?;
        let a = parse_arp(eth.payload)?;
        (a.op == 2
            && a.spa == GATEWAY
            && a.tpa == GUEST_IP
            && a.tha == GUEST_MAC
            && eth.dst == GUEST_MAC)
            .then_some(a.sha)
    });
    assert_eq!(gw_mac, [0x52, 0x55, 10, 0, 2, 2]);
    {
        let dev = s.device.borrow();
        let slirp = dev.device().backend();
        let mut pfd = libc::pollfd {
            fd: slirp.readiness_fd(0).unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(ready, 0, "drained: not readable");
    }

    // ICMP echo to the gateway: slirp reflects it.
    let data: Vec<u8> = (0..56u8).collect();
    let echo = icmp_echo(8, 0x1234, 1, &data);
    let pkt = ipv4(GUEST_IP, GATEWAY, PROTO_ICMP, 7, &echo);
    let (id, seq, payload) = exchange(
        &mut s,
        Some(&ethernet(gw_mac, GUEST_MAC, ETH_IPV4, &pkt)),
        |f| {
            let eth = parse_eth(f)?;
            let ip = parse_ipv4(eth.payload).ok()?;
            let m = ip.payload;
            (ip.proto == PROTO_ICMP
                && ip.src == GATEWAY
                && ip.dst == GUEST_IP
                && m[0] == 0
                && checksum(m, 0) == 0)
                .then(|| {
                    (
                        u16::from_be_bytes([m[4], m[5]]),
                        u16::from_be_bytes([m[6], m[7]]),
                        m[8..].to_vec(),
                    )
                })
        },
    );
    assert_eq!((id, seq), (0x1234, 1));
    assert_eq!(payload, data);

    // DHCP DISCOVER → OFFER of 10.0.2.15 from server 10.0.2.2.
    let mut bootp = vec![0u8; 240];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    bootp[10] = 0x80; // broadcast flag
    bootp[28..34].copy_from_slice(&GUEST_MAC);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(&[53, 1, 1, 55, 3, 1, 3, 6, 255]);
    let dgram = udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &bootp);
    let pkt = ipv4(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        PROTO_UDP,
        8,
        &dgram,
    );
    let (yiaddr, options) = exchange(
        &mut s,
        Some(&ethernet(BROADCAST, GUEST_MAC, ETH_IPV4, &pkt)),
        |f| {
            let eth = parse_eth(f)?;
            let ip = parse_ipv4(eth.payload).ok()?;
            if ip.proto != PROTO_UDP {
                return None;
            }
            let u = parse_udp(&ip).ok()?;
            let b = u.payload;
            (u.sport == 67
                && u.dport == 68
                && b.len() > 240
                && b[0] == 2
                && b[4..8] == 0xdead_beefu32.to_be_bytes())
            .then(|| (Ipv4Addr::new(b[16], b[17], b[18], b[19]), b[240..].to_vec()))
        },
    );
    assert_eq!(yiaddr, GUEST_IP);
    let mut opts = options.as_slice();
    let (mut msg_type, mut server) = (None, None);
    while let [code, rest @ ..] = opts {
        match *code {
            0 => opts = rest,
            255 => break,
            _ => {
                let len = usize::from(rest[0]);
                let value = &rest[1..=len];
                match code {
                    53 => msg_type = Some(value[0]),
                    54 => server = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3])),
                    _ => {}
                }
                opts = &rest[len + 1..];
            }
        }
    }
    assert_eq!(msg_type, Some(2), "DHCPOFFER");
    assert_eq!(server, Some(GATEWAY));

    let c = s.device.borrow().device().counters();
    assert_eq!(c.total_drops(), 0, "{c:?}");
    assert!(c.tx_frames == 3 && c.rx_frames == 3, "{c:?}");
    let stats = s.device.borrow().device().backend().stats();
    assert_eq!(stats.rx_dropped, 0);
    assert_eq!(stats.guest_errors, 0);
    println!("slirp: gateway {gw_mac:02x?}, DHCP offered {yiaddr}, negotiated {negotiated:?}, counters {c:?}");
}

#[test]
fn slirp_poll_once_runs_with_no_traffic() {
    let mut slirp = Slirp::new(&SlirpConfig::new().restricted(true)).unwrap();
    assert!(slirp.poll_timeout() <= Duration::from_secs(1));
    let start = Instant::now();
    assert_eq!(slirp.poll_once(Duration::from_millis(20)).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(slirp.vnet_header_len(), 0);
    let mut buf = [0u8; 64];
    assert_eq!(slirp.recv(0, &mut buf).unwrap(), None);
    assert!(slirp.recv(1, &mut buf).is_err());
}
