//! The crate's error type.

/// Everything that can go wrong in virtio-mmio.
///
/// On the device side every error is about one register access of the driver: the access had **no effect** beyond
/// what the variant says (a refused read fills the buffer with zeros), so the VMM may log it and carry on.
/// [`Error::is_peer_fault`] separates a driver that broke the spec from a misuse of this crate's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- driver side: probing a register window -----
    /// `MagicValue` is not 0x74726976: no virtio device at this address (§4.2.2.2).
    #[error("no virtio-mmio device: magic value {found:#010x}")]
    BadMagic {
        /// The value read.
        found: u32,
    },
    /// `Version` is neither 1 (legacy) nor 2 (§4.2.2.2).
    #[error("unsupported virtio-mmio version {found}")]
    UnsupportedVersion {
        /// The value read.
        found: u32,
    },
    /// `DeviceID` is 0: a placeholder slot without a device. The spec says a driver ignores it **without reporting an
    /// error** (§4.2.2.2), so callers should skip it silently.
    #[error("placeholder virtio-mmio slot (device id 0)")]
    NoDevice,
    /// The register window is smaller than the control registers (0x100 bytes).
    #[error(
        "register window of {size:#x} bytes is smaller than the 0x100 bytes of control registers"
    )]
    WindowTooSmall {
        /// The size given.
        size: usize,
    },

    // ----- device side: a register access the driver should not have made (ignored) -----
    /// A control register accessed with a width other than 32 bits or at an unaligned offset, or configuration
    /// space accessed with a width other than 1, 2, 4 or 8 bytes (§4.2.2.2).
    #[error("invalid {len}-byte access at offset {offset:#x}")]
    InvalidAccess {
        /// Offset from the register window's base.
        offset: u64,
        /// Width of the access in bytes.
        len: usize,
    },
    /// No register at this offset in this version of the interface.
    #[error("no register at offset {offset:#x}")]
    UnknownRegister {
        /// Offset from the register window's base.
        offset: u64,
    },
    /// A write to a read-only register (§4.2.2.2).
    #[error("write to read-only register at {offset:#x}")]
    ReadOnlyRegister {
        /// Offset of the register.
        offset: u64,
    },
    /// A read of a write-only register (§4.2.2.2); it reads as zero.
    #[error("read of write-only register at {offset:#x}")]
    WriteOnlyRegister {
        /// Offset of the register.
        offset: u64,
    },
    /// `QueueSel` (or a notification) names a queue the device does not have.
    #[error("queue {index} does not exist")]
    NoSuchQueue {
        /// The index the driver used.
        index: u32,
    },
    /// A write to the configuration of a queue that is enabled (`QueueReady` or `QueuePFN` non-zero), or an attempt
    /// to enable a queue after DRIVER_OK without VIRTIO_F_RING_RESET (§4.2.2.2).
    #[error("queue {index} is enabled or the device is live; its configuration cannot change")]
    QueueLocked {
        /// The queue.
        index: u16,
    },
    /// A register whose use needs a feature the driver did not negotiate (`QueueReset` without
    /// VIRTIO_F_RING_RESET).
    #[error("register needs feature bits {feature:#x}, which were not negotiated")]
    FeatureNotNegotiated {
        /// The feature bits needed.
        feature: u64,
    },
    /// The driver stopped a live queue, but the device model cannot give it back (`VirtioDevice::reset_queue`
    /// returned `None`); the queue keeps running.
    #[error("the device cannot stop queue {index} while live")]
    QueueResetUnsupported {
        /// The queue.
        index: u16,
    },
    /// A notification for a queue that the driver did not enable before DRIVER_OK (or that it stopped since).
    #[error("queue {index} is not enabled")]
    QueueNotEnabled {
        /// The queue.
        index: u16,
    },
    /// A notification or queue operation before DRIVER_OK, or after the device failed.
    #[error("the device is not live (no DRIVER_OK, or activation failed)")]
    NotLive,
    /// A status write the device refused (bits cleared, steps skipped, or a modern-only transport driven by a driver
    /// without VIRTIO_F_VERSION_1); the status is unchanged.
    #[error("status write refused")]
    Status(#[source] virtio_core::Error),
    /// Activation at DRIVER_OK (or a queue re-enabled after a per-queue reset) failed: the device set
    /// DEVICE_NEEDS_RESET and raised a configuration change interrupt. `queue` names the queue whose configuration
    /// was refused, `None` when the device model refused to start.
    #[error("activation failed (queue {queue:?})")]
    Activation {
        /// The queue whose configuration was refused.
        queue: Option<u16>,
        /// Why.
        #[source]
        source: virtio_core::Error,
    },

    // ----- API misuse -----
    /// The device model reports more queues than a 16-bit queue index can name.
    #[error("device model has {count} queues; at most 65536 can be addressed")]
    TooManyQueues {
        /// Number of queues reported.
        count: usize,
    },
}

impl Error {
    /// Whether the peer misbehaved: the driver, for the device-side errors, or the device, for the probing errors a
    /// driver sees. `false` for API misuse and for [`Error::NoDevice`], which the spec treats as normal.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::BadMagic { .. }
            | Self::UnsupportedVersion { .. }
            | Self::InvalidAccess { .. }
            | Self::UnknownRegister { .. }
            | Self::ReadOnlyRegister { .. }
            | Self::WriteOnlyRegister { .. }
            | Self::NoSuchQueue { .. }
            | Self::QueueLocked { .. }
            | Self::FeatureNotNegotiated { .. }
            | Self::QueueNotEnabled { .. }
            | Self::NotLive
            | Self::Status(_) => true,
            // A refused queue configuration was written by the driver; a device model that refused to start is not
            // the driver's fault.
            Self::Activation { queue, .. } => queue.is_some(),
            Self::NoDevice
            | Self::WindowTooSmall { .. }
            | Self::QueueResetUnsupported { .. }
            | Self::TooManyQueues { .. } => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
