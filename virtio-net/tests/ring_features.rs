//! VIRTIO_F_IN_ORDER and VIRTIO_F_NOTIFICATION_DATA negotiated between `NetDriver` (which offers both in
//! `NetDriverConfig::all_features`) and `NetDevice`, over virtio-mmio and virtio-pci, split and packed, with and
//! without MRG_RXBUF: traffic both ways intact across several ring wraps. TX runs only from the driver's
//! notifications (never `process_tx`), so a notification whose data the transport misread would stall it.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::*;
use virtio_core::transport::Transport;
use virtio_core::Features;
use virtio_net::device::NetDeviceBuilder;
use virtio_net::driver::{NetDriver, NetDriverConfig};
use virtio_net::pair::PairEnd;
use virtio_net::wire::{feature, HeaderRepr};

const QUEUE_SIZE: u16 = 16;
const WANTED: Features = Features::IN_ORDER.union(Features::NOTIFICATION_DATA);

fn builder(packed: bool, mrg: bool, event_idx: bool) -> NetDeviceBuilder {
    let mut f = Features::VERSION_1 | Features::INDIRECT_DESC | WANTED;
    if packed {
        f |= Features::RING_PACKED;
    }
    if event_idx {
        f |= Features::EVENT_IDX;
    }
    if mrg {
        f |= feature::MRG_RXBUF;
    }
    NetDeviceBuilder::new().queue_size(QUEUE_SIZE).offer(f)
}

/// Several rounds of bursts both ways; `QUEUE_SIZE` entries wrap every queue (and flip packed wrap counters)
/// several times.
fn traffic<T: Transport>(
    driver: &mut NetDriver<T, Mem>,
    peer: &mut PairEnd,
    process_rx: impl Fn() -> usize,
    what: &str,
) {
    let sizes = [14usize, 60, 1514, 2036, 2037, 4096, 9000, 64, 1, 300];
    for round in 0..6u8 {
        let burst: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| frame(len.max(14), round.wrapping_mul(16).wrapping_add(i as u8)))
            .collect();
        for f in &burst {
            driver.send(0, f, &HeaderRepr::new()).unwrap();
        }
        assert_eq!(drain(peer), burst, "{what}: TX round {round}");
        for f in &burst {
            inject(peer, f);
        }
        // 16 RX buffers and big frames: the device delivers what fits, the driver's re-posts resume it.
        let mut got = Vec::new();
        let mut spins = 0;
        while got.len() < burst.len() {
            process_rx();
            got.extend(receive_all(driver));
            spins += 1;
            assert!(spins < 100, "{what}: RX stalled at {}", got.len());
        }
        assert_eq!(got, burst, "{what}: RX round {round}");
    }
}

#[test]
fn mmio_in_order_notification_data_traffic_intact() {
    for packed in [false, true] {
        for mrg in [false, true] {
            for event_idx in [false, true] {
                let (end, mut peer) = link();
                let mut s = mmio(
                    builder(packed, mrg, event_idx),
                    end,
                    NetDriverConfig::new().queue_size(QUEUE_SIZE),
                );
                let what = format!("mmio packed={packed} mrg={mrg} event_idx={event_idx}");
                assert!(s.driver.features().contains(WANTED), "{what}");
                assert_eq!(
                    s.device.borrow().device().negotiated(),
                    s.driver.features(),
                    "{what}"
                );
                let device = s.device.clone();
                let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
                traffic(&mut s.driver, &mut peer, rx, &what);
                let c = device.borrow().device().counters();
                assert_eq!((c.total_drops(), c.queue_faults), (0, 0), "{what}");
                assert!(device.borrow_mut().device_mut().take_last_error().is_none());
            }
        }
    }
}

#[test]
fn pci_in_order_notification_data_traffic_intact() {
    for packed in [false, true] {
        for mrg in [false, true] {
            for event_idx in [false, true] {
                let (end, mut peer) = link();
                let mut s = pci(
                    builder(packed, mrg, event_idx),
                    end,
                    NetDriverConfig::new().queue_size(QUEUE_SIZE),
                );
                let what = format!("pci packed={packed} mrg={mrg} event_idx={event_idx}");
                assert!(s.driver.features().contains(WANTED), "{what}");
                assert_eq!(s.device.borrow().driver_features(), s.driver.features());
                let device = s.device.clone();
                let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
                traffic(&mut s.driver, &mut peer, rx, &what);
                let c = device.borrow().device().counters();
                assert_eq!((c.total_drops(), c.queue_faults), (0, 0), "{what}");
                assert!(device.borrow_mut().device_mut().take_last_error().is_none());
            }
        }
    }
}

#[test]
fn driver_without_in_order_negotiates_neither_bit_traffic_intact() {
    // The driver may decline both: the device then runs without them.
    let (end, mut peer) = link();
    let mut s = mmio(
        builder(true, true, true),
        end,
        NetDriverConfig::new()
            .queue_size(QUEUE_SIZE)
            .supported(NetDriverConfig::all_features() - WANTED),
    );
    assert!(!s.driver.features().intersects(WANTED));
    let device = s.device.clone();
    let rx = || device.borrow_mut().device_mut().process_rx(0).unwrap();
    traffic(&mut s.driver, &mut peer, rx, "mmio without");
}
