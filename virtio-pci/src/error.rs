//! The crate's error type.

use crate::spec::CfgType;

/// Everything that can go wrong in virtio-pci.
///
/// Register accesses on the device side never fail (a driver's bad access is ignored or reads as the spec says);
/// errors come from building a device with impossible options, and on the driver side from a device that presents a
/// malformed capability list or refuses what the driver asks. [`Error::is_device_fault`] tells the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- device side: options -----
    /// The device type has no transitional PCI device id (virtio 1.3 §4.1.2.1), so it cannot be transitional or
    /// legacy; or it is beyond the modern id range.
    #[error("device type {device_type} has no PCI device id for this variant")]
    NoDeviceId {
        /// The virtio device type.
        device_type: u32,
    },
    /// More MSI-X vectors than a table can hold (virtio 1.3 §4.1.5.1.2.1: at most 0x800).
    #[error("{vectors} MSI-X vectors requested, at most 2048 are possible")]
    TooManyVectors {
        /// The number requested.
        vectors: u16,
    },
    /// `notify_off_multiplier` is neither 0 nor a power of two that is a multiple of 4 (virtio 1.3 §4.1.4.4.1; 4 is
    /// required so that 32-bit notifications with VIRTIO_F_NOTIFICATION_DATA never overlap).
    #[error("notify_off_multiplier {multiplier} is not 0 or a power of two >= 4")]
    InvalidNotifyMultiplier {
        /// The value requested.
        multiplier: u32,
    },
    /// The device-specific configuration does not fit its 4 KiB slot of the BAR.
    #[error("device configuration of {len} bytes does not fit in 4096")]
    ConfigTooLarge {
        /// The length requested.
        len: usize,
    },
    /// The device model has more queues than the 16-bit `num_queues` field can count.
    #[error("{queues} queues do not fit the 16-bit num_queues field")]
    TooManyQueues {
        /// The number of queues.
        queues: usize,
    },

    // ----- driver side: what the device presents -----
    /// The function is not a virtio device (vendor 0x1af4, device 0x1000..=0x107f, virtio 1.3 §4.1.2.2).
    #[error("PCI function {vendor:#06x}:{device:#06x} is not a virtio device")]
    NotVirtio {
        /// Vendor id read.
        vendor: u16,
        /// Device id read.
        device: u16,
    },
    /// A capability pointer that is not in the capability area (below 0x40 or past the end of configuration space).
    #[error("capability pointer {pointer:#x} (at {at:#x}) is outside the capability area")]
    CapabilityPointer {
        /// Where the pointer was read.
        at: u16,
        /// The pointer.
        pointer: u8,
    },
    /// The capability list loops (a pointer names a capability already visited, or the list is longer than
    /// configuration space can hold).
    #[error("capability list loops at {at:#x}")]
    CapabilityLoop {
        /// The capability seen twice.
        at: u16,
    },
    /// A capability shorter than its structure (`cap_len` below 16, or 20 for notify / PCI cfg / MSI-X fields), or
    /// one that runs past the end of configuration space.
    #[error("capability at {at:#x} has cap_len {len}, too short for its structure")]
    CapabilityTooShort {
        /// Offset of the capability.
        at: u16,
        /// Its `cap_len`.
        len: u8,
    },
    /// A structure that does not lie inside its BAR, or that names a BAR the function does not implement.
    #[error("{cfg_type} structure at BAR {bar} offset {offset:#x} length {length:#x} exceeds the BAR ({bar_size:#x} bytes)")]
    CapabilityOutOfBar {
        /// The structure.
        cfg_type: CfgType,
        /// Its BAR.
        bar: u8,
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u64,
        /// The size of the BAR (0 if not implemented).
        bar_size: u64,
    },
    /// A structure shorter than the fields the driver needs (e.g. a common configuration below 0x38 bytes).
    #[error("{cfg_type} structure of {length} bytes is shorter than {needed}")]
    StructureTooShort {
        /// The structure.
        cfg_type: CfgType,
        /// Its length.
        length: u64,
        /// The length needed.
        needed: u64,
    },
    /// A structure whose offset violates its alignment (common and device configuration 4, notification 2).
    #[error("{cfg_type} structure at offset {offset:#x} is not {align}-byte aligned")]
    MisalignedStructure {
        /// The structure.
        cfg_type: CfgType,
        /// Its offset.
        offset: u64,
        /// The required alignment.
        align: u64,
    },
    /// A modern interface without one of the structures it must have (§4.1.4.3.1, §4.1.4.4.1, §4.1.4.5.1).
    #[error("the device presents no {cfg_type} capability")]
    MissingCapability {
        /// The missing structure.
        cfg_type: CfgType,
    },
    /// The interface asked for is not there: a non-transitional device has no legacy interface, a legacy device no
    /// modern one (§4.1.5.1.1.1).
    #[error("the device has no {wanted} interface")]
    NoSuchInterface {
        /// `"legacy"` or `"modern"`.
        wanted: &'static str,
    },
    /// The legacy I/O BAR 0 is missing, not an I/O BAR, or too small for the legacy header.
    #[error("BAR 0 is not a legacy I/O BAR of at least 20 bytes")]
    NoLegacyBar,
    /// A malformed MSI-X capability (table or PBA outside its BAR).
    #[error("MSI-X {what} at BAR {bar} offset {offset:#x} exceeds the BAR")]
    MsixOutOfBar {
        /// `"table"` or `"PBA"`.
        what: &'static str,
        /// The BAR.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
    },
    /// The device read back NO_VECTOR (or another value) after the driver mapped an event (§4.1.5.1.2.2).
    #[error("device refused MSI-X vector {vector} (read back {read_back:#x})")]
    VectorRefused {
        /// The vector written.
        vector: u16,
        /// What the device read back.
        read_back: u16,
    },
    /// `queue_notify_off * notify_off_multiplier` plus the notification width is beyond the notification structure
    /// (§4.1.4.4.1).
    #[error("queue {queue} notify offset {offset:#x} is outside the notification structure")]
    NotifyOutOfRange {
        /// The queue.
        queue: u16,
        /// The byte offset computed.
        offset: u64,
    },
    // ----- driver side: the caller's request -----
    /// A queue configuration the legacy interface cannot express: areas not in the legacy layout, or not at a
    /// 4096-aligned non-zero address below 2^44 (§4.1.5.1.3.1). Sizes are checked with
    /// [`virtio_core::Error::InvalidQueueSize`].
    #[error("queue {queue} configuration cannot be programmed through this interface")]
    QueueLayout {
        /// The queue.
        queue: u16,
    },
    /// A device configuration access outside the device-specific configuration structure.
    #[error("device configuration access at {offset:#x} ({len} bytes) is out of range")]
    ConfigOutOfRange {
        /// Offset requested.
        offset: usize,
        /// Length requested.
        len: usize,
    },
    /// Per-queue reset needs VIRTIO_F_RING_RESET negotiated and the modern interface.
    #[error("per-queue reset needs VIRTIO_F_RING_RESET and the modern interface")]
    QueueResetUnsupported,
    /// No interrupt mechanism could be set up (the platform refused MSI-X and INTx).
    #[error("no interrupt mechanism is available")]
    NoInterrupts,
    /// The platform (VFIO, or the in-process access) refused to set up interrupts as asked.
    #[error("the platform refused the interrupt setup")]
    InterruptSetup,

    /// An error from the rings or negotiation.
    #[error(transparent)]
    Core(#[from] virtio_core::Error),
}

impl Error {
    /// Whether the device presented something malformed or refused a request it must accept (as opposed to the
    /// caller asking for something impossible).
    pub fn is_device_fault(&self) -> bool {
        match self {
            Self::CapabilityPointer { .. }
            | Self::CapabilityLoop { .. }
            | Self::CapabilityTooShort { .. }
            | Self::CapabilityOutOfBar { .. }
            | Self::StructureTooShort { .. }
            | Self::MisalignedStructure { .. }
            | Self::MissingCapability { .. }
            | Self::NoLegacyBar
            | Self::MsixOutOfBar { .. }
            | Self::NotifyOutOfRange { .. } => true,
            Self::Core(e) => e.is_peer_fault(),
            _ => false,
        }
    }

    /// The closest [`virtio_core::Error`], for the [`virtio_core::transport::Transport`] methods, whose signatures use
    /// the core error type. Core errors pass through, a configuration access out of range maps to its core twin, and
    /// the remaining queue programming errors (legacy layout, notification offset, refused vector, per-queue reset
    /// not available) become `QueueNotReady`.
    pub fn to_core(self) -> virtio_core::Error {
        match self {
            Self::Core(e) => e,
            Self::ConfigOutOfRange { offset, len } => {
                virtio_core::Error::ConfigOutOfRange { offset, len }
            }
            _ => virtio_core::Error::QueueNotReady,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
