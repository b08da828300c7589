//! The crate's error type.

use crate::memory::DeviceAddr;

/// Which ring area an error is about (virtio 1.3 §2.6: descriptor area, driver area, device area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingArea {
    /// The descriptor table (split) or descriptor ring (packed).
    Descriptors,
    /// The driver area: available ring (split) or driver event suppression (packed).
    DriverArea,
    /// The device area: used ring (split) or device event suppression (packed).
    DeviceArea,
}

impl core::fmt::Display for RingArea {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Descriptors => "descriptor area",
            Self::DriverArea => "driver area",
            Self::DeviceArea => "device area",
        })
    }
}

/// Everything that can go wrong in virtio-core.
///
/// [`Error::is_peer_fault`] tells whether the other side of the ring misbehaved (the caller may then set
/// DEVICE_NEEDS_RESET, or reset the device) or whether the caller misused the API or misconfigured the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- configuration (driver-written configuration checked at activation, or caller arguments) -----
    /// Queue size zero, above the maximum, or (split) not a power of two.
    #[error("invalid queue size {size} (maximum {max}; split rings need a power of two)")]
    InvalidQueueSize {
        /// The size that was configured.
        size: u16,
        /// The largest size allowed.
        max: u16,
    },
    /// A ring area is not aligned as the spec requires.
    #[error("{area} at {addr:#x} is not aligned to {align} bytes")]
    MisalignedArea {
        /// The area.
        area: RingArea,
        /// Its device address.
        addr: DeviceAddr,
        /// The required alignment.
        align: u16,
    },
    /// A ring area is not (entirely) inside the memory, or its end overflows.
    #[error("{area} at {addr:#x} ({len} bytes) is not inside memory")]
    AreaOutOfMemory {
        /// The area.
        area: RingArea,
        /// Its device address.
        addr: DeviceAddr,
        /// Its length.
        len: usize,
    },
    /// The queue was configured for a ring format the negotiated features do not select.
    #[error("queue is not enabled (ready) or its configuration is incomplete")]
    QueueNotReady,

    // ----- device role: the driver misbehaved -----
    /// `avail.idx` moved more than a queue size past the last processed index (QEMU CVE-2016-5403).
    #[error(
        "driver moved avail idx to {avail_idx}, more than queue size {size} past {last_avail}"
    )]
    AvailIndexJump {
        /// Index read from the ring.
        avail_idx: u16,
        /// The device's last processed index.
        last_avail: u16,
        /// The queue size.
        size: u16,
    },
    /// A head or `next` index is not below the queue (or indirect table) size.
    #[error("driver used descriptor index {index}, not below table size {size}")]
    DescriptorIndexOutOfRange {
        /// The index found.
        index: u32,
        /// The size of the table it indexes.
        size: u32,
    },
    /// A descriptor chain is longer than its table (a loop, CVE-2016-6490-like).
    #[error("driver chain longer than its table size {size} (descriptor loop)")]
    ChainTooLong {
        /// The table size.
        size: u32,
    },
    /// INDIRECT on a descriptor that also has NEXT (split), or an indirect descriptor that is not alone (packed).
    #[error("driver combined INDIRECT with NEXT or other descriptors")]
    IndirectWithNext,
    /// An indirect table length that is zero or not a multiple of 16.
    #[error("driver gave an indirect table of {len} bytes (must be a non-zero multiple of 16)")]
    IndirectTableLength {
        /// The length found.
        len: u32,
    },
    /// An indirect descriptor inside an indirect table.
    #[error("driver nested an indirect table inside another")]
    NestedIndirect,
    /// INDIRECT used although VIRTIO_F_INDIRECT_DESC was not negotiated.
    #[error("driver used an indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// A buffer or indirect table that is not inside memory.
    #[error("driver gave a buffer at {addr:#x} ({len} bytes) that is not inside memory")]
    BufferOutOfMemory {
        /// Device address of the buffer.
        addr: DeviceAddr,
        /// Its length.
        len: u32,
    },
    /// The sum of a chain's buffer lengths does not fit in 32 bits.
    #[error("driver chain total length overflows 32 bits")]
    ChainLengthOverflow,
    /// A device-readable descriptor after a device-writable one.
    #[error("driver placed a device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A packed chain whose descriptors after the head are not marked available.
    #[error("driver published a packed chain whose descriptor {index} is not available")]
    PackedDescriptorNotAvailable {
        /// Ring position of the offending descriptor.
        index: u16,
    },
    /// A packed chain that ended without a buffer id in range.
    #[error("driver used buffer id {id}, not below queue size {size}")]
    BufferIdOutOfRange {
        /// The id found.
        id: u16,
        /// The queue size.
        size: u16,
    },

    // ----- driver role: the device misbehaved -----
    /// A used element's id is not a valid head/buffer id.
    #[error("device returned used id {id}, not below queue size {size}")]
    UsedIdOutOfRange {
        /// The id found.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used element's id does not name a buffer the driver has in flight.
    #[error("device returned used id {id}, which is not in flight")]
    UsedIdNotInFlight {
        /// The id found.
        id: u32,
    },
    /// A used length larger than the device-writable space offered.
    #[error("device reported {len} bytes written into {offered} writable bytes")]
    UsedLengthTooLarge {
        /// The length reported.
        len: u32,
        /// The writable capacity of the buffer.
        offered: u32,
    },
    /// `used.idx` moved past buffers the driver never made available.
    #[error("device moved used idx to {used_idx}, past the {in_flight} buffers in flight after {last_used}")]
    UsedIndexJump {
        /// The index read.
        used_idx: u16,
        /// The driver's last processed index.
        last_used: u16,
        /// How many buffers were in flight.
        in_flight: u16,
    },

    // ----- either role -----
    /// The queue saw a peer fault earlier and refuses work until it is reset.
    #[error("queue is broken by an earlier peer fault; reset it")]
    QueueBroken,

    // ----- caller misuse -----
    /// Not enough free descriptors for the chain.
    #[error("queue full: chain needs {needed} descriptors, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: u16,
        /// Descriptors free.
        free: u16,
    },
    /// A chain without buffers, or a buffer of length zero.
    #[error("a chain needs at least one buffer, and every buffer a non-zero length")]
    EmptyBuffer,
    /// A chain's readable or writable total does not fit in 32 bits.
    #[error("chain total length overflows 32 bits")]
    ChainTooLarge,
    /// An id passed to `add_used` that is not a valid token of this queue.
    #[error("used token id {id} is not below queue size {size}")]
    InvalidUsedToken {
        /// The id.
        id: u16,
        /// The queue size.
        size: u16,
    },
    /// The in-order batch API was called without VIRTIO_F_IN_ORDER negotiated, or with no buffers.
    #[error("in-order batch needs VIRTIO_F_IN_ORDER and at least one buffer")]
    InOrderNotNegotiated,
    /// A status transition the spec forbids.
    #[error("status {to:#x} cannot follow {from:#x}")]
    InvalidStatusTransition {
        /// The current status.
        from: u8,
        /// The status that was requested.
        to: u8,
    },
    /// The device did not accept the features (FEATURES_OK did not stick).
    #[error("device rejected the negotiated features")]
    FeaturesRejected,
    /// The device does not offer a feature the driver requires.
    #[error("device lacks required features {missing:#x}")]
    MissingFeatures {
        /// The bits that are missing.
        missing: u64,
    },
    /// A queue index beyond the device's queues.
    #[error("queue {index} does not exist")]
    NoSuchQueue {
        /// The index.
        index: u16,
    },
    /// A queue that is already enabled (set up again without a reset).
    #[error("queue {index} is in use")]
    QueueInUse {
        /// The index.
        index: u16,
    },
    /// A per-queue reset the device did not complete.
    #[error("queue {index} did not finish its reset")]
    QueueResetTimeout {
        /// The index.
        index: u16,
    },
    /// A configuration-space access outside the space the transport exposes.
    #[error(
        "config access of {len} bytes at offset {offset} is outside the device configuration space"
    )]
    ConfigOutOfRange {
        /// Offset of the access.
        offset: usize,
        /// Its length.
        len: usize,
    },
}

impl Error {
    /// Whether the peer (driver for a device queue, device for a driver queue) broke the protocol.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Self::AvailIndexJump { .. }
                | Self::DescriptorIndexOutOfRange { .. }
                | Self::ChainTooLong { .. }
                | Self::IndirectWithNext
                | Self::IndirectTableLength { .. }
                | Self::NestedIndirect
                | Self::IndirectNotNegotiated
                | Self::BufferOutOfMemory { .. }
                | Self::ChainLengthOverflow
                | Self::ReadableAfterWritable
                | Self::PackedDescriptorNotAvailable { .. }
                | Self::BufferIdOutOfRange { .. }
                | Self::UsedIdOutOfRange { .. }
                | Self::UsedIdNotInFlight { .. }
                | Self::UsedLengthTooLarge { .. }
                | Self::UsedIndexJump { .. }
                | Self::QueueBroken
        )
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
