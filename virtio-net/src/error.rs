//! The crate's error type and the per-device counters.

use crate::backend::BackendError;
use crate::wire::WireError;

/// Why the device dropped a frame, a chain or a command. Each reason has its own counter in [`NetCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// A TX chain whose readable bytes are shorter than the negotiated header (driver fault).
    HeaderTooShort,
    /// A TX chain with a device-writable buffer (driver fault).
    TxChainWritable,
    /// An RX chain with no device-writable buffer, or with device-readable ones (driver fault).
    RxChainNotWritable,
    /// A frame longer than [`crate::MAX_FRAME_LEN`] (from the driver or from the backend).
    FrameTooLarge,
    /// A backend frame that does not fit one RX chain (no MRG_RXBUF) and was dropped.
    RxBufferTooSmall,
    /// A control request without room for the ack, too long, or with a malformed payload (driver fault).
    CtrlMalformed,
    /// A control command that is unknown or whose feature was not negotiated (acked with ERR).
    CtrlUnsupported,
    /// The backend failed to take or give a frame.
    Backend,
    /// A received frame the RX filter (RX mode, MAC table, VLAN filter) rejected. Not an error.
    Filtered,
    /// A backend frame longer than the negotiated `mtu` plus the 14-byte Ethernet header whose header asks for no
    /// segmentation (gso_type NONE or ECN): with VIRTIO_NET_F_MTU the device must not pass it to the driver
    /// (virtio 1.3 §5.1.4.1).
    RxOverMtu,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 10;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::HeaderTooShort,
        Self::TxChainWritable,
        Self::RxChainNotWritable,
        Self::FrameTooLarge,
        Self::RxBufferTooSmall,
        Self::CtrlMalformed,
        Self::CtrlUnsupported,
        Self::Backend,
        Self::Filtered,
        Self::RxOverMtu,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the driver broke the protocol.
    pub fn is_driver_fault(self) -> bool {
        matches!(
            self,
            Self::HeaderTooShort
                | Self::TxChainWritable
                | Self::RxChainNotWritable
                | Self::CtrlMalformed
        )
    }
}

/// Per-device counters, readable at any time with [`NetDevice::counters`](crate::device::NetDevice::counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NetCounters {
    /// Frames taken from the driver and given to the backend.
    pub tx_frames: u64,
    /// Bytes of those frames (without headers).
    pub tx_bytes: u64,
    /// Frames given to the driver.
    pub rx_frames: u64,
    /// Bytes of those frames (without headers).
    pub rx_bytes: u64,
    /// Control commands acked OK.
    pub ctrl_ok: u64,
    /// Ring faults (a queue broke on a peer fault; DEVICE_NEEDS_RESET was signalled).
    pub queue_faults: u64,
    drops: [u64; DropReason::COUNT],
}

impl NetCounters {
    /// Drops for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).copied().unwrap_or(0)
    }

    /// Drops for every reason together.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub(crate) fn drop(&mut self, reason: DropReason) {
        if let Some(c) = self.drops.get_mut(reason.index()) {
            *c += 1;
        }
    }
}

/// Everything that can go wrong in virtio-net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The device dropped input on `queue` (the other chains and queues were served; see [`NetCounters`]).
    #[error("dropped input on queue {queue}: {reason:?}")]
    Dropped {
        /// Queue index.
        queue: u16,
        /// Why.
        reason: DropReason,
    },
    /// A ring operation failed on `queue` (a peer fault breaks the queue until reset).
    #[error("ring error on queue {queue}")]
    Ring {
        /// Queue index.
        queue: u16,
        /// The core error.
        #[source]
        source: virtio_core::Error,
    },
    /// A transport or negotiation step failed.
    #[error("virtio core error")]
    Core(#[from] virtio_core::Error),
    /// The backend failed.
    #[error("backend error")]
    Backend(#[from] BackendError),
    /// Malformed wire data.
    #[error("wire format error")]
    Wire(#[from] WireError),
    /// The queue (pair) does not exist or is not live.
    #[error("queue {0} is not active")]
    QueueNotActive(u16),
    /// No free buffer to send with (reclaim completed ones, or wait for the device).
    #[error("transmit queue full")]
    QueueFull,
    /// A frame longer than [`crate::MAX_FRAME_LEN`], than the buffers the driver set up, or (to send, with
    /// VIRTIO_NET_F_MTU and a header that asks for no segmentation) than `mtu` plus the Ethernet header.
    #[error("frame of {len} bytes is too large (at most {max})")]
    FrameTooLarge {
        /// Bytes offered.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The device answered a control command with VIRTIO_NET_ERR, or the feature it needs was not negotiated.
    #[error("control command class {class} command {command} refused")]
    CtrlRefused {
        /// Class.
        class: u8,
        /// Command.
        command: u8,
    },
    /// The device did not complete a control command in time.
    #[error("control command timed out")]
    CtrlTimeout,
    /// The device returned something the driver cannot use (a used length below the header, a bad num_buffers).
    #[error("device returned a malformed buffer on queue {queue}")]
    DeviceFault {
        /// Queue index.
        queue: u16,
    },
    /// The caller's DMA region is too small for the queues and buffers.
    #[error("DMA region of {have} bytes, {needed} needed")]
    DmaTooSmall {
        /// Bytes given.
        have: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A caller argument is out of range (queue pairs, queue size, a configuration value the specification does
    /// not allow).
    #[error("invalid argument")]
    InvalidArgument,
}

/// Result alias for this crate.
pub type Result<T, E = NetError> = core::result::Result<T, E>;
