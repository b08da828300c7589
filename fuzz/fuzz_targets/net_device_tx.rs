//! `NetDevice` on rings over memory the fuzzer fills (the driver is the peer): TX chains → the `Pair` backend, RX of
//! backend frames into fuzzed chains, control requests. Never panics; bad chains are counted, not fatal; what
//! reaches the backend is a well-formed header + frame of at most `MAX_FRAME_LEN` bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::{
    DeviceAddr, DeviceQueue, DeviceSlice, Features, HeapMemory, QueueConfig, RingFormat, RingLayout,
};
use virtio_net::backend::NetBackend;
use virtio_net::device::{sanitize_features, NetDevice, NetDeviceBuilder};
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::wire::feature;
use virtio_net::MAX_FRAME_LEN;

const BASE: u64 = 0x1000;
const LEN: usize = 0x4000;
/// Rings of the RX, TX and control queues, one page each; buffers may point anywhere in the memory.
const RING_STRIDE: u64 = 0x1000;

struct NoIrq;

impl Interrupt for NoIrq {
    fn signal_queue(&self, _queue: u16) {}
    fn signal_config(&self) {}
}

fuzz_target!(|data: &[u8]| {
    let [size_byte, f0, f1, frame_byte, rest @ ..] = data else {
        return;
    };
    let packed = f0 & 1 != 0;
    let format = if packed {
        RingFormat::Packed
    } else {
        RingFormat::Split
    };
    let size = if packed {
        u16::from(size_byte % 32) + 1
    } else {
        1u16 << (size_byte % 6)
    };
    let Some(memory) = HeapMemory::new(DeviceAddr::new(BASE), LEN) else {
        return;
    };
    if let Some(all) = DeviceSlice::new(&memory, DeviceAddr::new(BASE), LEN) {
        all.write_at(0, rest);
    }
    let backend_header = [0usize, 10, 12][usize::from(f1 % 3)];
    let (a, mut b) = PairEnd::pair(PairConfig::new().slots(4).vnet_header_len(backend_header));
    let mut device: NetDevice<PairEnd, &HeapMemory, NoIrq> = NetDeviceBuilder::new()
        .queue_size(64)
        .offer(
            Features::VERSION_1
                | Features::EVENT_IDX
                | Features::INDIRECT_DESC
                | Features::IN_ORDER
                | Features::RING_PACKED
                | feature::MRG_RXBUF
                | feature::CSUM
                | feature::GUEST_CSUM
                | feature::HOST_TSO4
                | feature::GUEST_TSO4,
        )
        .ctrl(
            feature::CTRL_RX
                | feature::CTRL_VLAN
                | feature::CTRL_MAC_ADDR
                | feature::GUEST_ANNOUNCE,
        )
        .build(a);
    // The driver's choice among the offered bits, from the fuzzer: legacy (no VERSION_1) headers included.
    let (f0, f1) = (*f0, *f1);
    let bit = |byte: u8, n: u32, f: Features| {
        if byte >> n & 1 != 0 {
            f
        } else {
            Features::empty()
        }
    };
    let wanted = bit(!f1, 2, Features::VERSION_1)
        | bit(f0, 0, Features::RING_PACKED)
        | bit(f0, 1, Features::EVENT_IDX)
        | bit(f0, 2, Features::INDIRECT_DESC)
        | bit(f0, 3, Features::IN_ORDER)
        | bit(f0, 4, feature::MRG_RXBUF)
        | bit(f0, 5, feature::CSUM | feature::HOST_TSO4)
        | bit(f0, 6, feature::GUEST_CSUM | feature::GUEST_TSO4)
        | bit(
            f0,
            7,
            feature::CTRL_VQ | feature::CTRL_RX | feature::CTRL_VLAN,
        )
        | bit(f1, 3, feature::CTRL_MAC_ADDR | feature::GUEST_ANNOUNCE)
        | bit(f1, 4, feature::MAC | feature::STATUS);
    let features = sanitize_features(wanted & device.offered_features());
    let mut queues = Vec::new();
    let ctrl = features.contains(feature::CTRL_VQ);
    for index in 0..(2 + u16::from(ctrl)) {
        let layout = RingLayout::new(format, size);
        let base = DeviceAddr::new(BASE + u64::from(index) * RING_STRIDE);
        let Some(config) = QueueConfig::with_layout(size, &layout, base) else {
            return;
        };
        let Ok(queue) = DeviceQueue::activate(&config, features, &memory) else {
            return;
        };
        queues.push(ActiveQueue { index, queue });
    }
    if device.activate(features, queues, NoIrq).is_err() {
        return;
    }
    let frame: Vec<u8> = (0..usize::from(*frame_byte) * 8 + 14)
        .map(|i| (i as u8) ^ frame_byte)
        .collect();
    let mut buf = vec![0u8; backend_header + MAX_FRAME_LEN];
    for round in 0..3 {
        let _ = device.process_tx(0);
        while let Ok(Some(n)) = b.recv(0, &mut buf) {
            assert!(n >= backend_header && n - backend_header <= MAX_FRAME_LEN);
        }
        if round < 2 {
            let mut pieces = vec![0u8; backend_header];
            pieces.extend_from_slice(&frame);
            let _ = b.send(0, &[&pieces]);
        }
        let _ = device.process_rx(0);
        if ctrl {
            let _ = device.process_ctrl();
        }
        let _ = device.take_last_error();
    }
    let c = device.counters();
    assert!(c.tx_bytes <= c.tx_frames * MAX_FRAME_LEN as u64);
    assert!(c.rx_frames <= 2);
    let _ = device.backend().vnet_header_len();
});
