//! Bad input, one piece per call, so that the typed error `process_tx` / `process_rx` return is the one for that
//! input (they report only the first drop of a call): a hostile driver's TX chains (header shorter than negotiated,
//! a device-writable buffer, a frame over 64 KiB), its RX chains (no device-writable buffer), and a backend frame over
//! 64 KiB. Each must come back as `NetError::Dropped` with its `DropReason`, be counted once, return the chain
//! unused, break no ring, and leave both queues serving.
//!
//! The driver side is `virtio_core::mock::MockDriver` (any chain shape, split or packed); the backend is scripted,
//! because the `Pair` cannot carry a frame over [`MAX_FRAME_LEN`] (its slots refuse one with
//! `BackendError::TooLarge`, checked below). The TX cases run with a backend that takes frames from the driver's
//! buffers (`send_slices` / `send_packet`, the device's one-buffer fast path) and with one the device copies frames
//! for (`send`), so both of the device's TX paths are covered.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use common::{frame, Mem};
use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::mock::MockDriver;
use virtio_core::{DeviceQueue, DeviceSlice, Features};
use virtio_net::backend::{BackendError, NetBackend, SendStatus};
use virtio_net::device::{NetDevice, NetDeviceBuilder};
use virtio_net::pair::{PairConfig, PairEnd};
use virtio_net::{DropReason, NetError, MAX_FRAME_LEN};

/// Bytes of the negotiated virtio-net header (VERSION_1) and of the backend's.
const HDR: usize = 12;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// What the scripted backend's `recv` hands out next.
#[derive(Debug)]
enum Incoming {
    /// A frame (behind a zeroed backend header).
    Frame(Vec<u8>),
    /// A frame of this many bytes after the header, past what the device accepts, which still fits the device's
    /// receive buffer (a backend that does not bound its frames).
    Overlong(usize),
    /// `BackendError::TooLarge`: the backend had a frame longer than the device's receive buffer (as a tap or the
    /// `Pair` report one).
    TooLarge,
}

/// A backend the test scripts: frames to receive, and a record of the frames sent.
#[derive(Debug, Default)]
struct Scripted {
    /// Whether the device hands it frames in the driver's buffers (`send_slices`, `send_packet`) or copies them
    /// for it (`send`).
    slices: bool,
    incoming: VecDeque<Incoming>,
    /// Frames sent, backend header first.
    sent: Vec<Vec<u8>>,
}

impl NetBackend for Scripted {
    fn vnet_header_len(&self) -> usize {
        HDR
    }

    fn send(&mut self, _pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        self.sent.push(frame.concat());
        Ok(SendStatus::Sent)
    }

    fn takes_slices(&self) -> bool {
        self.slices
    }

    fn send_slices(
        &mut self,
        _pair: u16,
        header: &[u8],
        frame: &[DeviceSlice<'_>],
    ) -> Result<SendStatus, BackendError> {
        let mut out = header.to_vec();
        for piece in frame {
            let at = out.len();
            out.resize(at + piece.len(), 0);
            piece.read_at(0, &mut out[at..]);
        }
        self.sent.push(out);
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, _pair: u16, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let Some(next) = self.incoming.pop_front() else {
            return Ok(None);
        };
        match next {
            Incoming::Frame(f) => {
                let len = HDR + f.len();
                buf[..HDR].fill(0);
                buf[HDR..len].copy_from_slice(&f);
                Ok(Some(len))
            }
            Incoming::Overlong(n) => {
                let len = HDR + n;
                assert!(len <= buf.len(), "the device's receive buffer got smaller");
                buf[..len].fill(0xab);
                Ok(Some(len))
            }
            Incoming::TooLarge => Err(BackendError::TooLarge {
                len: buf.len() + 1,
                max: buf.len(),
            }),
        }
    }
}

/// Counts DEVICE_NEEDS_RESET signals: a dropped chain must not break a queue.
#[derive(Debug, Clone, Default)]
struct ResetWatch(Rc<Cell<u32>>);

impl Interrupt for ResetWatch {
    fn signal_queue(&self, _queue: u16) {}
    fn signal_config(&self) {}
    fn signal_needs_reset(&self) {
        self.0.set(self.0.get() + 1);
    }
}

/// A `NetDevice` with one queue pair, activated on the rings of two hostile drivers.
struct Rig {
    net: NetDevice<Scripted, Mem, ResetWatch>,
    rx: MockDriver,
    tx: MockDriver,
    resets: ResetWatch,
    what: String,
}

fn rig(packed: bool, slices: bool) -> Rig {
    let mut features = Features::VERSION_1;
    if packed {
        features |= Features::RING_PACKED;
    }
    // Room for a TX chain of a header and a frame one byte over the limit.
    let slot = (HDR + MAX_FRAME_LEN + 1).next_multiple_of(4096) as u32;
    let rx = MockDriver::with_slot_len(features, 16, slot).unwrap();
    let tx = MockDriver::with_slot_len(features, 16, slot).unwrap();
    let rx_q = DeviceQueue::activate(&rx.queue_config(), features, rx.memory()).unwrap();
    let tx_q = DeviceQueue::activate(&tx.queue_config(), features, tx.memory()).unwrap();
    let backend = Scripted {
        slices,
        ..Scripted::default()
    };
    let mut net: NetDevice<_, Mem, _> = NetDeviceBuilder::new()
        .queue_size(16)
        .offer(features)
        .build(backend);
    let resets = ResetWatch::default();
    net.activate(
        features,
        vec![
            ActiveQueue {
                index: RX_QUEUE,
                queue: rx_q,
            },
            ActiveQueue {
                index: TX_QUEUE,
                queue: tx_q,
            },
        ],
        resets.clone(),
    )
    .unwrap();
    Rig {
        net,
        rx,
        tx,
        resets,
        what: format!("packed {packed} slices {slices}"),
    }
}

fn dropped(queue: u16, reason: DropReason) -> virtio_net::Result<usize> {
    Err(NetError::Dropped { queue, reason })
}

impl Rig {
    /// The bad input was counted once under `reason` and nothing else went wrong: no other drop, no ring fault, no
    /// DEVICE_NEEDS_RESET.
    fn assert_counted_once(&self, reason: DropReason, case: &str) {
        let c = self.net.counters();
        assert_eq!(c.drops(reason), 1, "{} {case}", self.what);
        assert_eq!(c.total_drops(), 1, "{} {case}", self.what);
        assert_eq!(c.queue_faults, 0, "{} {case}", self.what);
        assert_eq!(self.resets.0.get(), 0, "{} {case}", self.what);
    }

    /// A TX chain the device dropped came back used, with nothing written.
    fn assert_tx_returned_empty(&mut self, token: u16, case: &str) {
        let used = self
            .tx
            .pop_used()
            .unwrap()
            .expect("dropped TX chain not returned");
        assert_eq!((used.token, used.len), (token, 0), "{} {case}", self.what);
        assert!(
            self.tx.pop_used().unwrap().is_none(),
            "{} {case}",
            self.what
        );
    }

    /// A hostile TX chain (`readable` contents, `writable` lengths) alone in its `process_tx` call: the call returns
    /// the drop under `reason`, counted once; the chain comes back used and empty, nothing reaches the backend, and
    /// both queues still serve.
    fn expect_tx_dropped(
        &mut self,
        readable: &[&[u8]],
        writable: &[u32],
        reason: DropReason,
        case: &str,
    ) {
        let token = self.tx.add(readable, writable).unwrap();
        assert_eq!(
            self.net.process_tx(0),
            dropped(TX_QUEUE, reason),
            "{} {case}",
            self.what
        );
        self.assert_counted_once(reason, case);
        self.assert_tx_returned_empty(token, case);
        assert!(self.net.backend().sent.is_empty(), "{} {case}", self.what);
        self.assert_serves(case);
    }

    /// Both queues still serve: a good frame crosses each way, with its header and `num_buffers`.
    fn assert_serves(&mut self, case: &str) {
        let what = format!("{} {case}", self.what);
        let before = self.net.counters();
        let out = frame(200, 0x5a);
        let header = [0u8; HDR];
        let token = self.tx.add(&[&header, &out], &[]).unwrap();
        assert_eq!(self.net.process_tx(0), Ok(1), "{what}");
        let sent = self.net.backend_mut().sent.pop().expect("frame not sent");
        assert_eq!(
            (&sent[..HDR], &sent[HDR..]),
            (&header[..], &out[..]),
            "{what}"
        );
        let used = self.tx.pop_used().unwrap().unwrap();
        assert_eq!((used.token, used.len), (token, 0), "{what}");

        let incoming = frame(300, 0xa5);
        self.net
            .backend_mut()
            .incoming
            .push_back(Incoming::Frame(incoming.clone()));
        self.rx.add(&[], &[4096]).unwrap();
        assert_eq!(self.net.process_rx(0), Ok(1), "{what}");
        let used = self.rx.pop_used().unwrap().unwrap();
        assert_eq!(used.len as usize, HDR + incoming.len(), "{what}");
        // num_buffers (bytes 10..12) is 1 without MRG_RXBUF.
        assert_eq!(&used.data[10..HDR], &[1, 0], "{what}");
        assert_eq!(&used.data[HDR..], &incoming[..], "{what}");
        let after = self.net.counters();
        assert_eq!(after.total_drops(), before.total_drops(), "{what}");
        assert_eq!(
            (after.tx_frames, after.rx_frames),
            (before.tx_frames + 1, before.rx_frames + 1),
            "{what}"
        );
    }
}

/// A case of a hostile chain: its name, readable buffers (contents) and writable buffers (lengths).
type ChainCase<'a> = (&'a str, &'a [&'a [u8]], &'a [u32]);

/// A case of a hostile backend: its name and what it hands the device.
type BackendCase = (&'static str, fn() -> Incoming);

/// Every (ring format, TX path) combination.
fn rigs() -> impl Iterator<Item = (bool, bool)> {
    [false, true].into_iter().flat_map(|packed| {
        [false, true]
            .into_iter()
            .map(move |slices| (packed, slices))
    })
}

#[test]
fn tx_header_shorter_than_negotiated_returns_header_too_short() {
    assert!(DropReason::HeaderTooShort.is_driver_fault());
    let header = [0u8; HDR];
    // One buffer (the device's fast path when it takes slices) and the same bytes split over two buffers.
    let cases: [(&str, &[&[u8]]); 3] = [
        ("11 bytes", &[&header[..HDR - 1]]),
        ("1 byte", &[&header[..1]]),
        ("5 + 6 bytes", &[&header[..5], &header[5..HDR - 1]]),
    ];
    for (packed, slices) in rigs() {
        for (case, readable) in cases {
            rig(packed, slices).expect_tx_dropped(readable, &[], DropReason::HeaderTooShort, case);
        }
    }
}

#[test]
fn tx_chain_with_writable_buffer_returns_tx_chain_writable() {
    assert!(DropReason::TxChainWritable.is_driver_fault());
    let header = [0u8; HDR];
    let f = frame(60, 1);
    let cases: [ChainCase<'_>; 3] = [
        ("writable only", &[], &[64]),
        ("frame then writable", &[&header, &f], &[64]),
        (
            "frame in one buffer then two writable",
            &[&[header.as_slice(), &f].concat()],
            &[16, 16],
        ),
    ];
    for (packed, slices) in rigs() {
        for (case, readable, writable) in cases {
            rig(packed, slices).expect_tx_dropped(
                readable,
                writable,
                DropReason::TxChainWritable,
                case,
            );
        }
    }
}

#[test]
fn tx_frame_over_64_kib_returns_frame_too_large() {
    assert!(!DropReason::FrameTooLarge.is_driver_fault());
    let header = [0u8; HDR];
    let over = frame(MAX_FRAME_LEN + 1, 2);
    let one_buffer = [header.as_slice(), &over].concat();
    let cases: [(&str, &[&[u8]]); 2] = [
        ("one buffer", &[&one_buffer]),
        ("header and frame buffers", &[&header, &over]),
    ];
    for (packed, slices) in rigs() {
        for (case, readable) in cases {
            rig(packed, slices).expect_tx_dropped(readable, &[], DropReason::FrameTooLarge, case);
        }
        // One byte less is the largest frame, and goes through.
        let mut r = rig(packed, slices);
        r.tx.add(&[&one_buffer[..HDR + MAX_FRAME_LEN]], &[])
            .unwrap();
        assert_eq!(r.net.process_tx(0), Ok(1), "{} at the limit", r.what);
        assert_eq!(r.net.backend().sent[0], one_buffer[..HDR + MAX_FRAME_LEN]);
        assert_eq!(r.net.counters().total_drops(), 0);
    }
}

#[test]
fn rx_chain_without_writable_buffer_returns_rx_chain_not_writable() {
    assert!(DropReason::RxChainNotWritable.is_driver_fault());
    let cases: [ChainCase<'_>; 2] = [
        ("readable only", &[b"oops"], &[]),
        ("readable then writable", &[b"oops"], &[4096]),
    ];
    for packed in [false, true] {
        for (case, readable, writable) in cases {
            let mut r = rig(packed, false);
            let waiting = frame(100, 3);
            r.net
                .backend_mut()
                .incoming
                .push_back(Incoming::Frame(waiting.clone()));
            let token = r.rx.add(readable, writable).unwrap();
            assert_eq!(
                r.net.process_rx(0),
                dropped(RX_QUEUE, DropReason::RxChainNotWritable),
                "{} {case}",
                r.what
            );
            r.assert_counted_once(DropReason::RxChainNotWritable, case);
            let used = r.rx.pop_used().unwrap().expect("bad RX chain not returned");
            assert_eq!((used.token, used.len), (token, 0), "{} {case}", r.what);
            assert_eq!(r.net.counters().rx_frames, 0);
            // The frame waited for a usable chain and takes the next one.
            r.rx.add(&[], &[4096]).unwrap();
            assert_eq!(r.net.process_rx(0), Ok(1), "{} {case}", r.what);
            let used = r.rx.pop_used().unwrap().unwrap();
            assert_eq!(&used.data[HDR..], &waiting[..], "{} {case}", r.what);
            r.assert_serves(case);
        }
    }
}

#[test]
fn pair_cannot_carry_a_frame_over_64_kib() {
    // Why the RX case below scripts its backend: the `Pair` refuses such a frame at the sending end.
    let (mut a, _b) = PairEnd::pair(PairConfig::new());
    let header = [0u8; HDR];
    let over = vec![0u8; MAX_FRAME_LEN + 1];
    assert!(matches!(
        a.send(0, &[&header, &over]),
        Err(BackendError::TooLarge { .. })
    ));
}

#[test]
fn rx_frame_over_64_kib_from_backend_returns_frame_too_large() {
    let cases: [BackendCase; 2] = [
        ("one byte over the limit", || {
            Incoming::Overlong(MAX_FRAME_LEN + 1)
        }),
        ("longer than the device's buffer", || Incoming::TooLarge),
    ];
    for packed in [false, true] {
        for (case, bad) in cases {
            let mut r = rig(packed, false);
            r.net.backend_mut().incoming.push_back(bad());
            r.rx.add(&[], &[(HDR + MAX_FRAME_LEN) as u32]).unwrap();
            assert_eq!(
                r.net.process_rx(0),
                dropped(RX_QUEUE, DropReason::FrameTooLarge),
                "{} {case}",
                r.what
            );
            r.assert_counted_once(DropReason::FrameTooLarge, case);
            // Dropped before it took a chain: the buffer is still the driver's to fill.
            assert!(r.rx.pop_used().unwrap().is_none(), "{} {case}", r.what);
            assert_eq!(r.net.counters().rx_frames, 0);
            let next = frame(MAX_FRAME_LEN, 4);
            r.net
                .backend_mut()
                .incoming
                .push_back(Incoming::Frame(next.clone()));
            assert_eq!(r.net.process_rx(0), Ok(1), "{} {case}", r.what);
            let used = r.rx.pop_used().unwrap().unwrap();
            assert_eq!(used.len as usize, HDR + MAX_FRAME_LEN, "{} {case}", r.what);
            assert!(used.data[HDR..] == next[..], "{} {case}", r.what);
            r.assert_serves(case);
        }
    }
}
