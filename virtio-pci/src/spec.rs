//! Register maps and identifiers: virtio 1.3 §4.1 (Virtio Over PCI Bus), and the parts of the PCI Local Bus
//! specification 3.0 it builds on (type-0 configuration header, capability list, MSI-X).
//!
//! Everything here is a plain constant or a `const fn`, shared by the device side ([`crate::PciDevice`]) and the
//! driver side ([`crate::PciTransport`]) so that both read the same map.

/// PCI vendor id of every virtio device (virtio 1.3 §4.1.2 PCI Device Discovery).
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern PCI device ids are this plus the virtio device id (§4.1.2).
pub const MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// Last id of the virtio PCI device id range (§4.1.2).
pub const DEVICE_ID_LAST: u16 = 0x107f;
/// First transitional PCI device id (§4.1.2.3 Legacy Interfaces: A Note on PCI Device Discovery).
pub const TRANSITIONAL_DEVICE_ID_FIRST: u16 = 0x1000;
/// Last transitional PCI device id (§4.1.2.3).
pub const TRANSITIONAL_DEVICE_ID_LAST: u16 = 0x103f;
/// PCI revision id of a non-transitional (modern-only) device (§4.1.2.1: "SHOULD have a PCI Revision ID of 1 or
/// higher").
pub const MODERN_REVISION: u8 = 1;
/// PCI revision id of a transitional or legacy device (§4.1.2.3: "MUST have a PCI Revision ID of 0").
pub const TRANSITIONAL_REVISION: u8 = 0;

/// `VIRTIO_MSI_NO_VECTOR` (§4.1.5.1.2 MSI-X Vector Configuration): the event is not mapped to any vector; also what
/// the device reads back when it refuses a mapping.
pub const NO_VECTOR: u16 = 0xffff;
/// Largest MSI-X table a device should present (§4.1.5.1.2.1: "at most 0x800 MSI-X vectors").
pub const MAX_MSIX_VECTORS: u16 = 0x800;

/// The modern PCI device id of virtio device type `device_type` (§4.1.2.1), `None` beyond the id range.
pub fn modern_device_id(device_type: u32) -> Option<u16> {
    u16::try_from(device_type)
        .ok()
        .filter(|t| *t <= DEVICE_ID_LAST - MODERN_DEVICE_ID_BASE)
        .map(|t| MODERN_DEVICE_ID_BASE + t)
}

/// The transitional PCI device id of `device_type` (§4.1.2.1, table "Transitional PCI Device ID"), `None` for
/// device types that never had a legacy PCI id.
pub const fn transitional_device_id(device_type: u32) -> Option<u16> {
    match device_type {
        1 => Some(0x1000), // network
        2 => Some(0x1001), // block
        5 => Some(0x1002), // memory balloon (traditional)
        3 => Some(0x1003), // console
        8 => Some(0x1004), // SCSI host
        4 => Some(0x1005), // entropy source
        9 => Some(0x1009), // 9P transport
        _ => None,
    }
}

/// The virtio device type a driver derives from the PCI ids (§4.1.2.2): `device_id - 0x1040` for modern ids, the
/// subsystem device id for transitional ones. `None` outside the virtio id range.
pub fn device_type_from_ids(device_id: u16, subsystem_device_id: u16) -> Option<u32> {
    if (MODERN_DEVICE_ID_BASE..=DEVICE_ID_LAST).contains(&device_id) {
        Some(u32::from(device_id - MODERN_DEVICE_ID_BASE))
    } else if (TRANSITIONAL_DEVICE_ID_FIRST..=TRANSITIONAL_DEVICE_ID_LAST).contains(&device_id) {
        Some(u32::from(subsystem_device_id))
    } else {
        None
    }
}

/// Offsets in the type-0 configuration space header (PCI Local Bus 3.0 §6.1).
pub mod header {
    /// Vendor ID (16 bits, read-only).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits, read-only).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface, subclass and base class (24 bits, from 0x09).
    pub const CLASS_CODE: u16 = 0x09;
    /// Cache line size (8 bits, read-write).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// Latency timer (8 bits).
    pub const LATENCY_TIMER: u16 = 0x0d;
    /// Header type (8 bits; 0 for a single-function endpoint).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First base address register; BAR `n` is at `BAR0 + 4 * n`.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Expansion ROM base address (not implemented: reads 0).
    pub const EXPANSION_ROM: u16 = 0x30;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt line (8 bits, read-write scratch for the OS).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (8 bits; 1 = INTA#).
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// Size of the header; capabilities live after it.
    pub const LEN: u16 = 0x40;
    /// Size of conventional PCI configuration space.
    pub const CONFIG_SPACE_LEN: u16 = 0x100;
    /// Size of PCI Express extended configuration space.
    pub const EXTENDED_CONFIG_SPACE_LEN: u16 = 0x1000;
    /// Number of base address registers in a type-0 header.
    pub const BAR_COUNT: u8 = 6;
}

/// Command register bits (PCI Local Bus 3.0 §6.2.2).
pub mod command {
    /// I/O Space enable.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Memory Space enable.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// Bus Master enable.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity Error Response.
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// Interrupt Disable: INTx# is not asserted while set.
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The bits a virtio function implements as read-write.
    pub const WRITABLE: u16 =
        IO_SPACE | MEMORY_SPACE | BUS_MASTER | PARITY_ERROR_RESPONSE | SERR | INTX_DISABLE;
}

/// Status register bits (PCI Local Bus 3.0 §6.2.3).
pub mod status {
    /// Interrupt Status: the function's INTx# condition (here: ISR status non-zero, virtio 1.3 §4.1.4.5.1).
    pub const INTERRUPT: u16 = 1 << 3;
    /// Capabilities List: the capabilities pointer is valid.
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
}

/// BAR register low bits (PCI Local Bus 3.0 §6.2.5.1).
pub mod bar {
    /// Bit 0: the BAR maps I/O space.
    pub const IO: u32 = 1;
    /// Memory BAR type field: 64-bit (bits 2:1 = 10b).
    pub const MEM_64: u32 = 0b100;
    /// Memory BAR: prefetchable.
    pub const PREFETCHABLE: u32 = 1 << 3;
    /// Flag bits of a memory BAR.
    pub const MEM_FLAGS_MASK: u32 = 0xf;
    /// Flag bits of an I/O BAR.
    pub const IO_FLAGS_MASK: u32 = 0x3;
}

/// Capability ids (PCI Local Bus 3.0 Appendix H).
pub mod cap_id {
    /// Vendor-specific capability: virtio structures (virtio 1.3 §4.1.4, `cap_vndr`).
    pub const VENDOR: u8 = 0x09;
    /// PCI Express capability.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X capability.
    pub const MSIX: u8 = 0x11;
}

/// `struct virtio_pci_cap` and its extensions (virtio 1.3 §4.1.4 Virtio Structure PCI Capabilities): field offsets
/// from the start of the capability.
pub mod vcap {
    /// `cap_vndr` (0x09).
    pub const VNDR: u16 = 0;
    /// `cap_next`.
    pub const NEXT: u16 = 1;
    /// `cap_len`.
    pub const LEN: u16 = 2;
    /// `cfg_type`.
    pub const CFG_TYPE: u16 = 3;
    /// `bar`.
    pub const BAR: u16 = 4;
    /// `id`.
    pub const ID: u16 = 5;
    /// `offset` (le32).
    pub const OFFSET: u16 = 8;
    /// `length` (le32).
    pub const LENGTH: u16 = 12;
    /// `notify_off_multiplier` (le32) of `struct virtio_pci_notify_cap` (§4.1.4.4).
    pub const NOTIFY_OFF_MULTIPLIER: u16 = 16;
    /// `pci_cfg_data[4]` of `struct virtio_pci_cfg_cap` (§4.1.4.9 PCI configuration access capability).
    pub const PCI_CFG_DATA: u16 = 16;
    /// Size of `struct virtio_pci_cap`.
    pub const SIZE: u8 = 16;
    /// Size of `struct virtio_pci_notify_cap`.
    pub const NOTIFY_SIZE: u8 = 20;
    /// Size of `struct virtio_pci_cfg_cap`.
    pub const PCI_CFG_SIZE: u8 = 20;
    /// Highest BAR number a virtio capability may name (§4.1.4: values 0x0 to 0x5).
    pub const BAR_MAX: u8 = 5;
}

/// `cfg_type` values (virtio 1.3 §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CfgType {
    /// `VIRTIO_PCI_CAP_COMMON_CFG` (1): common configuration (§4.1.4.3).
    Common,
    /// `VIRTIO_PCI_CAP_NOTIFY_CFG` (2): notifications (§4.1.4.4).
    Notify,
    /// `VIRTIO_PCI_CAP_ISR_CFG` (3): ISR status (§4.1.4.5).
    Isr,
    /// `VIRTIO_PCI_CAP_DEVICE_CFG` (4): device-specific configuration (§4.1.4.6).
    Device,
    /// `VIRTIO_PCI_CAP_PCI_CFG` (5): PCI configuration access (§4.1.4.9).
    PciCfg,
    /// `VIRTIO_PCI_CAP_SHARED_MEMORY_CFG` (8): a shared memory region (§4.1.4.7).
    SharedMemory,
    /// `VIRTIO_PCI_CAP_VENDOR_CFG` (9): vendor data (§4.1.4.8).
    Vendor,
}

impl CfgType {
    /// The wire value.
    pub const fn raw(self) -> u8 {
        match self {
            Self::Common => 1,
            Self::Notify => 2,
            Self::Isr => 3,
            Self::Device => 4,
            Self::PciCfg => 5,
            Self::SharedMemory => 8,
            Self::Vendor => 9,
        }
    }

    /// Parses a wire value; reserved values give `None` (the driver ignores them, §4.1.4.1).
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            1 => Self::Common,
            2 => Self::Notify,
            3 => Self::Isr,
            4 => Self::Device,
            5 => Self::PciCfg,
            8 => Self::SharedMemory,
            9 => Self::Vendor,
            _ => return None,
        })
    }
}

impl core::fmt::Display for CfgType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Common => "common configuration",
            Self::Notify => "notification",
            Self::Isr => "ISR status",
            Self::Device => "device-specific configuration",
            Self::PciCfg => "PCI configuration access",
            Self::SharedMemory => "shared memory",
            Self::Vendor => "vendor data",
        })
    }
}

/// `struct virtio_pci_common_cfg` (virtio 1.3 §4.1.4.3 Common configuration structure layout): field offsets.
pub mod common {
    /// `device_feature_select` (le32, RW).
    pub const DEVICE_FEATURE_SELECT: u16 = 0x00;
    /// `device_feature` (le32, RO).
    pub const DEVICE_FEATURE: u16 = 0x04;
    /// `driver_feature_select` (le32, RW).
    pub const DRIVER_FEATURE_SELECT: u16 = 0x08;
    /// `driver_feature` (le32, RW).
    pub const DRIVER_FEATURE: u16 = 0x0c;
    /// `config_msix_vector` (le16, RW).
    pub const CONFIG_MSIX_VECTOR: u16 = 0x10;
    /// `num_queues` (le16, RO).
    pub const NUM_QUEUES: u16 = 0x12;
    /// `device_status` (u8, RW).
    pub const DEVICE_STATUS: u16 = 0x14;
    /// `config_generation` (u8, RO).
    pub const CONFIG_GENERATION: u16 = 0x15;
    /// `queue_select` (le16, RW).
    pub const QUEUE_SELECT: u16 = 0x16;
    /// `queue_size` (le16, RW).
    pub const QUEUE_SIZE: u16 = 0x18;
    /// `queue_msix_vector` (le16, RW).
    pub const QUEUE_MSIX_VECTOR: u16 = 0x1a;
    /// `queue_enable` (le16, RW).
    pub const QUEUE_ENABLE: u16 = 0x1c;
    /// `queue_notify_off` (le16, RO).
    pub const QUEUE_NOTIFY_OFF: u16 = 0x1e;
    /// `queue_desc` (le64 as two le32 halves, RW).
    pub const QUEUE_DESC: u16 = 0x20;
    /// `queue_driver` (le64 as two le32 halves, RW).
    pub const QUEUE_DRIVER: u16 = 0x28;
    /// `queue_device` (le64 as two le32 halves, RW).
    pub const QUEUE_DEVICE: u16 = 0x30;
    /// `queue_notify_data` (le16, RO; meaningful with VIRTIO_F_NOTIF_CONFIG_DATA).
    pub const QUEUE_NOTIFY_DATA: u16 = 0x38;
    /// `queue_reset` (le16, RW; meaningful with VIRTIO_F_RING_RESET).
    pub const QUEUE_RESET: u16 = 0x3a;
    /// `admin_queue_index` (le16, RO; meaningful with VIRTIO_F_ADMIN_VQ).
    pub const ADMIN_QUEUE_INDEX: u16 = 0x3c;
    /// `admin_queue_num` (le16, RO; meaningful with VIRTIO_F_ADMIN_VQ).
    pub const ADMIN_QUEUE_NUM: u16 = 0x3e;
    /// Size of the structure in virtio 1.3.
    pub const LEN: u16 = 0x40;
    /// The smallest length a driver accepts: every field up to `queue_device` (virtio 1.0).
    pub const MIN_LEN: u16 = 0x38;
}

/// The legacy configuration structure in I/O BAR 0 (virtio 1.3 §4.1.4.10 Legacy Interfaces: A Note on PCI Device
/// Layout): field offsets.
pub mod legacy {
    /// Device features bits 0..31 (32 bits, R).
    pub const HOST_FEATURES: u64 = 0x00;
    /// Driver features bits 0..31 (32 bits, RW).
    pub const GUEST_FEATURES: u64 = 0x04;
    /// Queue address: page frame number of the ring, in units of [`QUEUE_ALIGN`] (32 bits, RW).
    pub const QUEUE_PFN: u64 = 0x08;
    /// Queue size (16 bits, R): fixed, there is no size negotiation (§4.1.5.1.3.1).
    pub const QUEUE_SIZE: u64 = 0x0c;
    /// Queue select (16 bits, RW).
    pub const QUEUE_SELECT: u64 = 0x0e;
    /// Queue notify (16 bits, RW).
    pub const QUEUE_NOTIFY: u64 = 0x10;
    /// Device status (8 bits, RW).
    pub const DEVICE_STATUS: u64 = 0x12;
    /// ISR status (8 bits, R; reading clears).
    pub const ISR: u64 = 0x13;
    /// `config_msix_vector` (16 bits, RW), present while MSI-X is enabled.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x14;
    /// `queue_msix_vector` (16 bits, RW), present while MSI-X is enabled.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x16;
    /// Offset of device-specific configuration without MSI-X enabled.
    pub const CONFIG_OFFSET: u64 = 0x14;
    /// Offset of device-specific configuration with MSI-X enabled.
    pub const CONFIG_OFFSET_MSIX: u64 = 0x18;
    /// Ring alignment and PFN unit of the legacy interface (§4.1.5.1.3.1).
    pub const QUEUE_ALIGN: u64 = 4096;
    /// log2 of [`QUEUE_ALIGN`].
    pub const PFN_SHIFT: u32 = 12;
}

/// ISR status bits (virtio 1.3 §4.1.4.5 ISR status capability).
pub mod isr {
    /// Queue Interrupt.
    pub const QUEUE: u8 = 1;
    /// Device Configuration Interrupt.
    pub const CONFIG: u8 = 2;
}

/// The MSI-X capability and its table and PBA (PCI Local Bus 3.0 §6.8.2).
pub mod msix {
    /// Offset of Message Control (16 bits) in the capability.
    pub const CONTROL: u16 = 2;
    /// Offset of the Table Offset/BIR dword.
    pub const TABLE: u16 = 4;
    /// Offset of the PBA Offset/BIR dword.
    pub const PBA: u16 = 8;
    /// Size of the capability.
    pub const CAP_LEN: u8 = 12;
    /// Message Control: MSI-X Enable.
    pub const CONTROL_ENABLE: u16 = 1 << 15;
    /// Message Control: Function Mask.
    pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
    /// Message Control: Table Size (N - 1).
    pub const CONTROL_TABLE_SIZE: u16 = 0x7ff;
    /// BIR field of the Table/PBA dwords.
    pub const BIR_MASK: u32 = 0x7;
    /// Bytes per table entry.
    pub const ENTRY_LEN: u64 = 16;
    /// Entry: Message Address (low dword).
    pub const ENTRY_ADDR_LO: u64 = 0;
    /// Entry: Message Upper Address.
    pub const ENTRY_ADDR_HI: u64 = 4;
    /// Entry: Message Data.
    pub const ENTRY_DATA: u64 = 8;
    /// Entry: Vector Control.
    pub const ENTRY_VECTOR_CONTROL: u64 = 12;
    /// Vector Control: Mask Bit.
    pub const VECTOR_MASKED: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_spec_table() {
        assert_eq!(modern_device_id(1), Some(0x1041));
        assert_eq!(modern_device_id(0x3f), Some(0x107f));
        assert_eq!(modern_device_id(0x40), None);
        assert_eq!(transitional_device_id(1), Some(0x1000));
        assert_eq!(transitional_device_id(2), Some(0x1001));
        assert_eq!(transitional_device_id(9), Some(0x1009));
        assert_eq!(transitional_device_id(19), None);
        assert_eq!(device_type_from_ids(0x1041, 0), Some(1));
        assert_eq!(device_type_from_ids(0x1000, 1), Some(1));
        assert_eq!(device_type_from_ids(0x0fff, 1), None);
        assert_eq!(device_type_from_ids(0x1080, 1), None);
        for raw in 0..=u8::MAX {
            if let Some(t) = CfgType::from_raw(raw) {
                assert_eq!(t.raw(), raw);
            }
        }
    }
}
