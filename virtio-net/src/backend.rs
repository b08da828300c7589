//! The host side of a network device: where TX frames go and RX frames come from.
//!
//! A [`NetBackend`] is non-blocking. It sees frames prefixed by the virtio-net header in the form it asked for
//! ([`NetBackend::vnet_header_len`]): 0 for bare Ethernet frames (libslirp, a packet socket), 10 or 12 for a tap
//! opened with `IFF_VNET_HDR` (after `TUNSETVNETHDRSZ`). Multiqueue backends (a multiqueue tap: one fd per queue)
//! get the queue pair index with every call; single-queue backends report [`queue_pairs`](NetBackend::queue_pairs)
//! = 1 and the device then never uses more pairs than that for traffic.

use virtio_core::{DeviceSlice, Features};

use crate::wire::feature;

/// A backend failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// An OS error (an `errno` value).
    #[error("backend I/O error (errno {0})")]
    Io(i32),
    /// The peer went away.
    #[error("backend peer disconnected")]
    Disconnected,
    /// The frame does not fit the backend's frame slots.
    #[error("frame of {len} bytes does not fit the backend (at most {max})")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// The backend's limit.
        max: usize,
    },
    /// The backend cannot do what was asked (an offload it does not support, a queue pair it lacks).
    #[error("backend does not support this operation")]
    Unsupported,
}

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// The frame was taken.
    Sent,
    /// The backend is full (`EAGAIN`): keep the frame and retry when it is ready again.
    WouldBlock,
}

/// Receive offloads the driver accepted (virtio 1.3 §5.1.6.4, and GUEST_OFFLOADS_SET), in feature-bit terms: the
/// backend may hand the device frames that need them. A tap backend maps them to `TUNSETOFFLOAD` (`TUN_F_CSUM`,
/// `TUN_F_TSO4`, `TUN_F_TSO6`, `TUN_F_TSO_ECN`, `TUN_F_UFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads(Features);

impl Offloads {
    /// The receive-offload bits of `features` (others are dropped).
    pub fn from_features(features: Features) -> Self {
        Self(features & feature::GUEST_OFFLOADS)
    }

    /// The bits.
    pub fn features(&self) -> Features {
        self.0
    }

    /// Whether partially checksummed frames may be delivered (GUEST_CSUM).
    pub fn csum(&self) -> bool {
        self.0.intersects(feature::GUEST_CSUM)
    }

    /// Whether TSOv4 frames may be delivered.
    pub fn tso4(&self) -> bool {
        self.0.intersects(feature::GUEST_TSO4)
    }

    /// Whether TSOv6 frames may be delivered.
    pub fn tso6(&self) -> bool {
        self.0.intersects(feature::GUEST_TSO6)
    }

    /// Whether TSO frames with ECN may be delivered.
    pub fn ecn(&self) -> bool {
        self.0.intersects(feature::GUEST_ECN)
    }

    /// Whether UFO frames may be delivered.
    pub fn ufo(&self) -> bool {
        self.0.intersects(feature::GUEST_UFO)
    }
}

/// The longest virtio-net header a backend may ask for (with VIRTIO_NET_F_HASH_REPORT).
const MAX_VNET_HEADER: usize = 20;

/// A non-blocking packet backend for [`NetDevice`](crate::device::NetDevice).
pub trait NetBackend {
    /// Bytes of virtio-net header the backend exchanges in front of each frame: 0 (bare frames), 10 or 12.
    fn vnet_header_len(&self) -> usize;

    /// Queue pairs the backend can serve (a multiqueue tap: its number of fds). At least 1.
    fn queue_pairs(&self) -> u16 {
        1
    }

    /// Sends one frame on `pair`, given as a gather list: the header of [`vnet_header_len`](Self::vnet_header_len)
    /// bytes (if any) and then the frame, possibly in several pieces.
    fn send(&mut self, pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError>;

    /// Whether the backend takes frames straight from the driver's buffers through
    /// [`send_slices`](Self::send_slices). If not (the default), the device copies each frame into its own buffer
    /// and calls [`send`](Self::send).
    fn takes_slices(&self) -> bool {
        false
    }

    /// Sends one frame on `pair` whose bytes are still in the driver's buffers: `header` (the
    /// [`vnet_header_len`](Self::vnet_header_len) bytes, already read out of driver memory) and then the frame in
    /// `frame`, in order. The peer may change those bytes concurrently, so the backend must copy them out
    /// ([`DeviceSlice::read_at`], [`DeviceSlice::copy_from`]) or hand them to the kernel (`writev`) before
    /// returning, and not parse them in place twice. Called only when [`takes_slices`](Self::takes_slices) is
    /// true; the default refuses with [`BackendError::Unsupported`].
    fn send_slices(
        &mut self,
        pair: u16,
        header: &[u8],
        frame: &[DeviceSlice<'_>],
    ) -> Result<SendStatus, BackendError> {
        let _ = (pair, header, frame);
        Err(BackendError::Unsupported)
    }

    /// Sends one frame on `pair` that is still in the driver's memory as one piece: `packet` holds the
    /// [`vnet_header_len`](Self::vnet_header_len)-byte header and then the frame (the usual TX buffer, when the
    /// driver's header has the backend's length). The same duties as [`send_slices`](Self::send_slices): copy the
    /// bytes out (once) or hand them to the kernel before returning. Called only when
    /// [`takes_slices`](Self::takes_slices) is true and `packet` is at least a header long. The default reads the
    /// header out and calls [`send_slices`](Self::send_slices); a backend that copies header and frame to the same
    /// place can take the packet in one copy.
    #[inline]
    fn send_packet(
        &mut self,
        pair: u16,
        packet: &DeviceSlice<'_>,
    ) -> Result<SendStatus, BackendError> {
        let mut header = [0u8; MAX_VNET_HEADER];
        let n = self.vnet_header_len();
        let frame = packet
            .len()
            .checked_sub(n)
            .and_then(|len| packet.subslice(n, len));
        let (Some(header), Some(frame)) = (header.get_mut(..n), frame) else {
            return Err(BackendError::Unsupported);
        };
        packet.read_at(0, header);
        self.send_slices(pair, header, core::slice::from_ref(&frame))
    }

    /// Receives one frame of `pair` (header of `vnet_header_len` bytes, then the frame) into `buf`; returns its
    /// length, or `Ok(None)` when nothing is pending. A frame longer than `buf` is an error
    /// ([`BackendError::TooLarge`]) and is consumed.
    fn recv(&mut self, pair: u16, buf: &mut [u8]) -> Result<Option<usize>, BackendError>;

    /// The receive offloads the driver acked (at activation and on GUEST_OFFLOADS_SET).
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), BackendError> {
        let _ = offloads;
        Ok(())
    }

    /// A file descriptor that becomes readable when `pair` has frames to receive (for an epoll loop), if the
    /// backend has one.
    fn readiness_fd(&self, pair: u16) -> Option<i32> {
        let _ = pair;
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use virtio_core::{DeviceAddr, HeapMemory};

    /// Records what `send_slices` was given.
    #[derive(Default)]
    struct Recorder {
        header_len: usize,
        sent: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    }

    impl NetBackend for Recorder {
        fn vnet_header_len(&self) -> usize {
            self.header_len
        }
        fn send(&mut self, _pair: u16, _frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
            Err(BackendError::Unsupported)
        }
        fn takes_slices(&self) -> bool {
            true
        }
        fn send_slices(
            &mut self,
            _pair: u16,
            header: &[u8],
            frame: &[DeviceSlice<'_>],
        ) -> Result<SendStatus, BackendError> {
            let parts = frame
                .iter()
                .map(|s| {
                    let mut v = vec![0; s.len()];
                    s.read_at(0, &mut v);
                    v
                })
                .collect();
            self.sent.push((header.to_vec(), parts));
            Ok(SendStatus::Sent)
        }
        fn recv(&mut self, _pair: u16, _buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
            Ok(None)
        }
    }

    #[test]
    fn send_packet_default_splits_header_from_frame() {
        let mem = HeapMemory::new(DeviceAddr::new(0x1000), 4096).unwrap();
        let packet = DeviceSlice::new(&mem, DeviceAddr::new(0x1000), 16).unwrap();
        packet.write_at(0, b"HHHHHHHHHHHHbody");
        let mut r = Recorder {
            header_len: 12,
            ..Recorder::default()
        };
        assert_eq!(r.send_packet(0, &packet), Ok(SendStatus::Sent));
        // A header alone: an empty frame.
        let header_only = packet.subslice(0, 12).unwrap();
        assert_eq!(r.send_packet(0, &header_only), Ok(SendStatus::Sent));
        assert_eq!(
            r.sent,
            [
                (b"HHHHHHHHHHHH".to_vec(), vec![b"body".to_vec()]),
                (b"HHHHHHHHHHHH".to_vec(), vec![Vec::new()]),
            ]
        );
        // Shorter than a header, or a header longer than any virtio-net header: refused, nothing sent.
        let short = packet.subslice(0, 11).unwrap();
        assert_eq!(r.send_packet(0, &short), Err(BackendError::Unsupported));
        r.header_len = MAX_VNET_HEADER + 1;
        assert_eq!(r.send_packet(0, &packet), Err(BackendError::Unsupported));
        assert_eq!(r.sent.len(), 2);
        // No header: the whole packet is the frame.
        r.header_len = 0;
        assert_eq!(r.send_packet(0, &packet), Ok(SendStatus::Sent));
        assert_eq!(r.sent.last().unwrap().1, [b"HHHHHHHHHHHHbody".to_vec()]);
    }
}
