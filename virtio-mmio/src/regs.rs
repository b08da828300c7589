//! The register map of virtio over MMIO (virtio 1.3 §4.2.2 for version 2, §4.2.4 for the legacy version 1).
//!
//! Offsets are from the base of the device's register window. Every control register is 32 bits wide, little-endian,
//! and accessed with 32-bit aligned loads and stores (§4.2.2.2); device-specific configuration space starts at
//! [`CONFIG`] and is accessed with the width of each field.

/// `MagicValue` (R): always [`MAGIC_VALUE`] (§4.2.2, table "MMIO Device Register Layout").
pub const MAGIC: u64 = 0x000;
/// `Version` (R): 2, or 1 for the legacy interface (§4.2.2; §4.2.4).
pub const VERSION: u64 = 0x004;
/// `DeviceID` (R): virtio device type (§5); 0 marks a placeholder slot without a device (§4.2.2).
pub const DEVICE_ID: u64 = 0x008;
/// `VendorID` (R): subsystem vendor id (§4.2.2).
pub const VENDOR_ID: u64 = 0x00c;
/// `DeviceFeatures` (R), `HostFeatures` in the legacy interface: 32 feature bits selected by
/// [`DEVICE_FEATURES_SEL`] (§4.2.2; §4.2.4).
pub const DEVICE_FEATURES: u64 = 0x010;
/// `DeviceFeaturesSel` (W), `HostFeaturesSel` in the legacy interface: which 32 bits [`DEVICE_FEATURES`] shows
/// (§4.2.2; §4.2.4).
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DriverFeatures` (W), `GuestFeatures` in the legacy interface: 32 accepted feature bits selected by
/// [`DRIVER_FEATURES_SEL`] (§4.2.2; §4.2.4).
pub const DRIVER_FEATURES: u64 = 0x020;
/// `DriverFeaturesSel` (W), `GuestFeaturesSel` in the legacy interface (§4.2.2; §4.2.4).
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// `GuestPageSize` (W, legacy only): the page size `QueuePFN` counts in (§4.2.4).
pub const GUEST_PAGE_SIZE: u64 = 0x028;
/// `QueueSel` (W): the queue the queue registers apply to (§4.2.2).
pub const QUEUE_SEL: u64 = 0x030;
/// `QueueNumMax` (R): largest size of the selected queue, 0 if the queue does not exist (§4.2.2).
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// `QueueNum` (W): the size the driver chose for the selected queue (§4.2.2).
pub const QUEUE_NUM: u64 = 0x038;
/// `QueueAlign` (W, legacy only): alignment of the used ring of the selected queue, in bytes (§4.2.4).
pub const QUEUE_ALIGN: u64 = 0x03c;
/// `QueuePFN` (RW, legacy only): page number of the selected queue; non-zero means in use, writing 0 stops it
/// (§4.2.4).
pub const QUEUE_PFN: u64 = 0x040;
/// `QueueReady` (RW, version 2): the selected queue is enabled (§4.2.2).
pub const QUEUE_READY: u64 = 0x044;
/// `QueueNotify` (W): available buffer notification; the queue index, or the notification data with
/// VIRTIO_F_NOTIFICATION_DATA (§4.2.2, §4.2.3.3).
pub const QUEUE_NOTIFY: u64 = 0x050;
/// `InterruptStatus` (R): the events that asserted the interrupt, [`INT_USED_BUFFER`] | [`INT_CONFIG_CHANGE`]
/// (§4.2.2).
pub const INTERRUPT_STATUS: u64 = 0x060;
/// `InterruptACK` (W): the events the driver handled (§4.2.2).
pub const INTERRUPT_ACK: u64 = 0x064;
/// `Status` (RW): device status (§2.1); writing 0 resets the device (§4.2.2).
pub const STATUS: u64 = 0x070;
/// `QueueDescLow` (W, version 2): low half of the selected queue's descriptor area address (§4.2.2).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// `QueueDescHigh` (W, version 2): high half of the descriptor area address (§4.2.2).
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// `QueueDriverLow` (W, version 2): low half of the driver area (available ring) address (§4.2.2).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// `QueueDriverHigh` (W, version 2): high half of the driver area address (§4.2.2).
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QueueDeviceLow` (W, version 2): low half of the device area (used ring) address (§4.2.2).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// `QueueDeviceHigh` (W, version 2): high half of the device area address (§4.2.2).
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `SHMSel` (W, version 2): shared memory region the `SHM*` registers apply to (§4.2.2, §2.10).
pub const SHM_SEL: u64 = 0x0ac;
/// `SHMLenLow` (R, version 2): low half of the selected region's length; all ones for no region (§4.2.2).
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// `SHMLenHigh` (R, version 2): high half of the region's length (§4.2.2).
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// `SHMBaseLow` (R, version 2): low half of the region's address; all ones for no region (§4.2.2).
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// `SHMBaseHigh` (R, version 2): high half of the region's address (§4.2.2).
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// `QueueReset` (RW, version 2, VIRTIO_F_RING_RESET): writing 1 resets the selected queue; reads 1 while the reset
/// is in progress (§4.2.2, §2.6.1).
pub const QUEUE_RESET: u64 = 0x0c0;
/// `ConfigGeneration` (R, version 2): changes whenever configuration space may have changed (§4.2.2, §2.5.1).
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// `Config` (RW): first byte of device-specific configuration space (§4.2.2).
pub const CONFIG: u64 = 0x100;

/// The value of `MagicValue`: "virt" in little-endian (§4.2.2).
pub const MAGIC_VALUE: u32 = 0x7472_6976;

/// The `VendorID` this crate's device side presents by default: "VISK" in little-endian (virtio SDK). The spec
/// gives the register no meaning beyond identification; drivers (Linux included) do not interpret it.
pub const DEFAULT_VENDOR_ID: u32 = 0x4b53_4956;

/// `InterruptStatus` bit: used buffer notification (§4.2.2, bit 0).
pub const INT_USED_BUFFER: u32 = 1 << 0;
/// `InterruptStatus` bit: configuration change notification (§4.2.2, bit 1).
pub const INT_CONFIG_CHANGE: u32 = 1 << 1;
/// The `InterruptStatus` bits the spec defines; every other bit reads as zero (§4.2.2.1).
pub const INT_VALID: u32 = INT_USED_BUFFER | INT_CONFIG_CHANGE;

/// Which register interface a device presents (`Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MmioVersion {
    /// Version 1, the legacy interface (§4.2.4): page-based queue addresses (`GuestPageSize`, `QueueAlign`,
    /// `QueuePFN`), split rings only, no VIRTIO_F_VERSION_1.
    Legacy,
    /// Version 2 (§4.2.2): 64-bit area addresses and `QueueReady`; split and packed rings.
    Modern,
}

impl MmioVersion {
    /// The value of the `Version` register.
    pub const fn register_value(self) -> u32 {
        match self {
            Self::Legacy => 1,
            Self::Modern => 2,
        }
    }

    /// Parses a `Version` register value.
    pub const fn from_register(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Legacy),
            2 => Some(Self::Modern),
            _ => None,
        }
    }
}

/// Whether the driver may read (`R`) or write (`W`) a control register, per the register tables of §4.2.2 and
/// §4.2.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The driver may read it.
    pub read: bool,
    /// The driver may write it.
    pub write: bool,
}

/// The access the spec allows to the control register at `offset` in `version`; `None` if no register is there
/// (offsets at and above [`CONFIG`] are configuration space, which this does not describe).
pub const fn register_access(version: MmioVersion, offset: u64) -> Option<Access> {
    const R: Access = Access {
        read: true,
        write: false,
    };
    const W: Access = Access {
        read: false,
        write: true,
    };
    const RW: Access = Access {
        read: true,
        write: true,
    };
    let legacy = matches!(version, MmioVersion::Legacy);
    match offset {
        MAGIC | VERSION | DEVICE_ID | VENDOR_ID | DEVICE_FEATURES | QUEUE_NUM_MAX
        | INTERRUPT_STATUS => Some(R),
        DEVICE_FEATURES_SEL | DRIVER_FEATURES | DRIVER_FEATURES_SEL | QUEUE_SEL | QUEUE_NUM
        | QUEUE_NOTIFY | INTERRUPT_ACK => Some(W),
        STATUS => Some(RW),
        GUEST_PAGE_SIZE | QUEUE_ALIGN if legacy => Some(W),
        QUEUE_PFN if legacy => Some(RW),
        QUEUE_READY | QUEUE_RESET if !legacy => Some(RW),
        QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
        | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH | SHM_SEL
            if !legacy =>
        {
            Some(W)
        }
        SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH | CONFIG_GENERATION
            if !legacy =>
        {
            Some(R)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_access_matches_the_spec_tables() {
        assert_eq!(MAGIC_VALUE.to_le_bytes(), *b"virt");
        assert_eq!(DEFAULT_VENDOR_ID.to_le_bytes(), *b"VISK");
        let modern = |o| register_access(MmioVersion::Modern, o);
        let legacy = |o| register_access(MmioVersion::Legacy, o);
        assert!(modern(QUEUE_PFN).is_none() && legacy(QUEUE_PFN).is_some());
        assert!(modern(QUEUE_READY).is_some() && legacy(QUEUE_READY).is_none());
        assert!(modern(CONFIG_GENERATION).is_some() && legacy(CONFIG_GENERATION).is_none());
        assert!(modern(0x002).is_none() && modern(0x0f8).is_none() && modern(CONFIG).is_none());
        assert_eq!(MmioVersion::from_register(2), Some(MmioVersion::Modern));
        assert_eq!(MmioVersion::from_register(3), None);
    }
}
