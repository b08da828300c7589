//! Control queue commands, multiqueue, link status, and bad input from a hostile driver.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::mock::MockDriver;
use virtio_core::Features;
use virtio_net::device::{NetDevice, NetDeviceBuilder};
use virtio_net::driver::NetDriverConfig;
use virtio_net::wire::{ctrl, feature, CtrlCommand, HeaderRepr, MacTable, RxMode};
use virtio_net::{DropReason, NetError};

fn ctrl_builder() -> NetDeviceBuilder {
    NetDeviceBuilder::new()
        .queue_size(64)
        .offer(ring_features(false))
        .ctrl(
            feature::CTRL_RX
                | feature::CTRL_RX_EXTRA
                | feature::CTRL_VLAN
                | feature::CTRL_MAC_ADDR
                | feature::GUEST_ANNOUNCE
                | feature::CTRL_GUEST_OFFLOADS,
        )
        .offer(feature::GUEST_CSUM | feature::GUEST_TSO4)
}

#[test]
fn every_control_command_is_applied() {
    let mut s = mmio(ctrl_builder(), loopback(1), NetDriverConfig::new());
    let d = &mut s.driver;
    d.command(&CtrlCommand::RxMode {
        mode: RxMode::Promisc,
        on: false,
    })
    .unwrap();
    d.command(&CtrlCommand::RxMode {
        mode: RxMode::AllMulti,
        on: true,
    })
    .unwrap();
    d.command(&CtrlCommand::RxMode {
        mode: RxMode::NoBcast,
        on: true,
    })
    .unwrap();
    let uni = [2u8, 0, 0, 0, 0, 9];
    let multi = [1u8, 0, 0x5e, 0, 0, 1, 1, 0, 0x5e, 0, 0, 2];
    d.command(&CtrlCommand::MacTableSet {
        unicast: MacTable::new(&uni).unwrap(),
        multicast: MacTable::new(&multi).unwrap(),
    })
    .unwrap();
    d.command(&CtrlCommand::MacAddrSet([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]))
        .unwrap();
    d.command(&CtrlCommand::VlanAdd(100)).unwrap();
    d.command(&CtrlCommand::VlanAdd(200)).unwrap();
    d.command(&CtrlCommand::VlanDel(200)).unwrap();
    d.command(&CtrlCommand::GuestOffloadsSet(feature::GUEST_CSUM.bits()))
        .unwrap();
    // An offload that was not negotiated is refused.
    assert!(matches!(
        d.command(&CtrlCommand::GuestOffloadsSet(feature::GUEST_UFO.bits())),
        Err(NetError::CtrlRefused { .. })
    ));
    // MQ was not negotiated: refused by the driver before it reaches the device.
    assert!(d.command(&CtrlCommand::MqVqPairsSet(2)).is_err());
    assert_eq!(d.mac().unwrap(), Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));

    let dev = s.device.borrow();
    let net = dev.device();
    assert!(!net.rx_mode(RxMode::Promisc));
    assert!(net.rx_mode(RxMode::AllMulti));
    assert!(net.rx_mode(RxMode::NoBcast));
    assert_eq!(net.mac_tables().0, &[[2, 0, 0, 0, 0, 9]]);
    assert_eq!(net.mac_tables().1.len(), 2);
    assert!(net.vlan_allowed(100) && !net.vlan_allowed(200));
    assert!(net.backend().offloads().csum() && !net.backend().offloads().tso4());
    assert_eq!(net.counters().ctrl_ok, 9);
}

#[test]
fn rx_filter_follows_rx_mode() {
    let mut s = mmio(ctrl_builder(), loopback(1), NetDriverConfig::new());
    s.driver
        .command(&CtrlCommand::RxMode {
            mode: RxMode::Promisc,
            on: false,
        })
        .unwrap();
    s.driver
        .command(&CtrlCommand::RxMode {
            mode: RxMode::NoBcast,
            on: true,
        })
        .unwrap();
    let mut own = frame(64, 1);
    own[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    s.driver.send(0, &frame(64, 0), &HeaderRepr::new()).unwrap(); // broadcast: filtered
    s.driver.send(0, &own, &HeaderRepr::new()).unwrap();
    assert_eq!(s.device.borrow_mut().device_mut().process_rx(0).unwrap(), 1);
    let mut buf = [0u8; 128];
    let (_, n) = s.driver.receive(0, &mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n], &own[..]);
    assert_eq!(
        s.device
            .borrow()
            .device()
            .counters()
            .drops(DropReason::Filtered),
        1
    );
}

#[test]
fn mq_four_pairs_carry_traffic_on_each() {
    let b = ctrl_builder().queue_pairs(4);
    let mut s = pci(b, loopback(4), NetDriverConfig::new().queue_pairs(4));
    assert!(s.driver.features().contains(feature::MQ));
    assert_eq!(s.driver.queue_pairs(), 4);
    assert_eq!(s.driver.active_pairs(), 4);
    assert_eq!(s.device.borrow().device().active_pairs(), 4);
    let mut buf = vec![0u8; 2048];
    for pair in 0..4u16 {
        let f = frame(100 + usize::from(pair), pair as u8);
        s.driver.send(pair, &f, &HeaderRepr::new()).unwrap();
        assert_eq!(
            s.device.borrow_mut().device_mut().process_rx(pair).unwrap(),
            1
        );
        let (_, n) = s.driver.receive(pair, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    s.driver.set_queue_pairs(2).unwrap();
    assert_eq!(s.device.borrow().device().active_pairs(), 2);
    assert!(s.driver.set_queue_pairs(5).is_err());
}

#[test]
fn mq_and_ctrl_features_never_offered_without_ctrl_vq() {
    let net: MmioNet = NetDeviceBuilder::new()
        .queue_pairs(4)
        .offer(feature::CTRL_RX | feature::GUEST_ANNOUNCE | feature::MQ)
        .build(loopback(4));
    let offered = net.offered_features();
    assert!(!offered.intersects(feature::NEEDS_CTRL_VQ));
    assert_eq!(net.queue_max_sizes().len(), 2);
}

#[test]
fn link_status_change_raises_config_interrupt() {
    let mut s = mmio(ctrl_builder(), loopback(1), NetDriverConfig::new());
    assert!(s.driver.link_up().unwrap());
    let before = s.line.0.load(Ordering::SeqCst);
    s.device.borrow_mut().device_mut().set_link_up(false);
    assert!(s.line.0.load(Ordering::SeqCst) > before);
    assert!(!s.driver.link_up().unwrap());
    // Announce: the driver acks through the control queue and the bit clears.
    s.device.borrow_mut().device_mut().announce();
    let c = s.driver.handle_config_change().unwrap();
    assert!(c.status & virtio_net::wire::status::ANNOUNCE != 0);
    assert!(s.driver.read_config().unwrap().status & virtio_net::wire::status::ANNOUNCE == 0);
}

#[test]
fn garbage_control_commands_are_counted_and_nacked() {
    let mut s = mmio(ctrl_builder(), loopback(1), NetDriverConfig::new());
    assert_eq!(s.driver.command_raw(&[9, 9]).unwrap(), ctrl::ERR);
    assert_eq!(s.driver.command_raw(&[0, 0, 7]).unwrap(), ctrl::ERR);
    assert_eq!(s.driver.command_raw(&[1]).unwrap(), ctrl::ERR);
    let err = s.device.borrow_mut().device_mut().take_last_error();
    assert!(matches!(
        err,
        Some(NetError::Dropped {
            reason: DropReason::CtrlMalformed,
            ..
        })
    ));
    let c = s.device.borrow().device().counters();
    assert_eq!(c.drops(DropReason::CtrlUnsupported), 1);
    assert_eq!(c.drops(DropReason::CtrlMalformed), 2);
    // Still serving.
    s.driver.command(&CtrlCommand::VlanAdd(5)).unwrap();
    let mut buf = [0u8; 128];
    s.driver.send(0, &frame(64, 3), &HeaderRepr::new()).unwrap();
    s.device.borrow_mut().device_mut().process_rx(0).unwrap();
    assert!(s.driver.receive(0, &mut buf).unwrap().is_some());
}

/// An interrupt handle for driving a `NetDevice` directly with `MockDriver`s.
#[derive(Debug, Clone, Default)]
struct NoIrq;
impl Interrupt for NoIrq {
    fn signal_queue(&self, _queue: u16) {}
    fn signal_config(&self) {}
}

#[test]
fn bad_tx_and_rx_chains_are_counted_and_other_queues_keep_working() {
    let features = Features::VERSION_1;
    let mut rx = MockDriver::new(features, 16).unwrap();
    let mut tx = MockDriver::with_slot_len(features, 16, 128 * 1024).unwrap();
    let rx_q =
        virtio_core::DeviceQueue::activate(&rx.queue_config(), features, rx.memory()).unwrap();
    let tx_q =
        virtio_core::DeviceQueue::activate(&tx.queue_config(), features, tx.memory()).unwrap();
    // Two memories: the device takes Arc<HeapMemory> per queue, each queue carries its own.
    let mut net: NetDevice<_, Mem, NoIrq> =
        NetDeviceBuilder::new().queue_size(16).build(loopback(1));
    net.activate(
        features,
        vec![
            ActiveQueue {
                index: 0,
                queue: rx_q,
            },
            ActiveQueue {
                index: 1,
                queue: tx_q,
            },
        ],
        NoIrq,
    )
    .unwrap();
    let hdr = [0u8; 12];
    // TX: a writable buffer (after readable ones, then alone), a short header, an oversize frame, then a good
    // frame.
    tx.add(&[&hdr, b"abc"], &[16]).unwrap();
    tx.add(&[], &[16]).unwrap();
    tx.add(&[&hdr[..5]], &[]).unwrap();
    let big = vec![0u8; virtio_net::MAX_FRAME_LEN + 13];
    tx.add(&[&big], &[]).unwrap();
    let good = frame(60, 1);
    tx.add(&[&hdr, &good], &[]).unwrap();
    let r = net.process_tx(0);
    assert_eq!(
        r,
        Err(NetError::Dropped {
            queue: 1,
            reason: DropReason::TxChainWritable
        })
    );
    let c = net.counters();
    assert_eq!(c.drops(DropReason::TxChainWritable), 2);
    assert_eq!(c.drops(DropReason::HeaderTooShort), 1);
    assert_eq!(c.drops(DropReason::FrameTooLarge), 1);
    assert_eq!(c.tx_frames, 1);
    for _ in 0..5 {
        assert_eq!(tx.pop_used().unwrap().unwrap().len, 0);
    }
    // RX: a chain with no writable buffer is returned unused; the next one gets the frame.
    rx.add(&[b"oops"], &[]).unwrap();
    rx.add(&[], &[2048]).unwrap();
    let r = net.process_rx(0);
    assert_eq!(
        r,
        Err(NetError::Dropped {
            queue: 0,
            reason: DropReason::RxChainNotWritable
        })
    );
    assert_eq!(net.counters().rx_frames, 1);
    assert_eq!(rx.pop_used().unwrap().unwrap().len, 0);
    let used = rx.pop_used().unwrap().unwrap();
    assert_eq!(&used.data[12..], &good[..]);
}
