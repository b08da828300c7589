//! Spec constants and bit sets: transport feature bits (virtio 1.3 §6), device status (§2.1), ring flags (§2.7,
//! §2.8), device ids (§5).
//!
//! The values are written out here because `virtio-bindings` (0.2.7) is not `no_std`; a test checks every value
//! against it.

use bitflags::bitflags;

bitflags! {
    /// Feature bits, as a 64-bit set. Named constants are the transport (device-independent) bits of virtio 1.3 §6;
    /// device-specific bits are kept as they come (`from_bits_retain`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Features: u64 {
        /// Notify on an empty available ring (legacy).
        const NOTIFY_ON_EMPTY = 1 << 24;
        /// Any framing of headers and data across descriptors (legacy).
        const ANY_LAYOUT = 1 << 27;
        /// Indirect descriptor tables (§2.7.5.3, §2.8.6).
        const INDIRECT_DESC = 1 << 28;
        /// `used_event` / `avail_event` notification suppression (§2.7.10).
        const EVENT_IDX = 1 << 29;
        /// Compliance with virtio 1.0 and later.
        const VERSION_1 = 1 << 32;
        /// The device is behind an IOMMU / platform-specific translation.
        const ACCESS_PLATFORM = 1 << 33;
        /// The packed virtqueue layout (§2.8).
        const RING_PACKED = 1 << 34;
        /// Buffers are used in the order they were made available.
        const IN_ORDER = 1 << 35;
        /// Memory accesses need platform ordering (real hardware).
        const ORDER_PLATFORM = 1 << 36;
        /// Single root I/O virtualization.
        const SR_IOV = 1 << 37;
        /// The driver passes extra data in notifications (§2.9).
        const NOTIFICATION_DATA = 1 << 38;
        /// The driver uses the config-supplied notification data.
        const NOTIF_CONFIG_DATA = 1 << 39;
        /// Individual virtqueues can be reset (§2.6.1).
        const RING_RESET = 1 << 40;
        /// Administration virtqueue.
        const ADMIN_VQ = 1 << 41;

        // Device-specific bits (0..=23, 50..=127) pass through.
        const _ = !0;
    }
}

impl Features {
    /// The bits that concern the transport and the rings (24..=41 in virtio 1.3), as opposed to device-specific bits.
    pub const TRANSPORT_MASK: Features =
        Features::from_bits_retain(((1 << 42) - 1) & !((1 << 24) - 1));

    /// Transport bits that mean something only through a legacy interface (virtio 1.3 §6.3): a transitional device
    /// may offer them, and a driver that negotiates VERSION_1 leaves them alone.
    pub const LEGACY_ONLY: Features =
        Features::from_bits_retain(Features::NOTIFY_ON_EMPTY.bits() | Features::ANY_LAYOUT.bits());

    /// Bits that only a device offering VERSION_1 may offer and only a non-legacy driver may accept.
    pub const MODERN_ONLY: Features = Features::from_bits_retain(
        Features::ACCESS_PLATFORM.bits()
            | Features::RING_PACKED.bits()
            | Features::IN_ORDER.bits()
            | Features::ORDER_PLATFORM.bits()
            | Features::SR_IOV.bits()
            | Features::NOTIFICATION_DATA.bits()
            | Features::NOTIF_CONFIG_DATA.bits()
            | Features::RING_RESET.bits()
            | Features::ADMIN_VQ.bits(),
    );

    /// Whether the device-specific bit `bit` (0..=63) is set.
    pub const fn has_bit(self, bit: u32) -> bool {
        bit < 64 && self.bits() & (1 << bit) != 0
    }

    /// The 32-bit half selected by `select` (0: bits 0..31, 1: bits 32..63), as the feature windows of PCI and MMIO
    /// expose it. Other selectors read as zero.
    pub const fn window(self, select: u32) -> u32 {
        match select {
            0 => (self.bits() & 0xffff_ffff) as u32,
            1 => (self.bits() >> 32) as u32,
            _ => 0,
        }
    }

    /// `self` with the 32-bit half `select` replaced by `value` (selectors above 1 are ignored).
    pub const fn with_window(self, select: u32, value: u32) -> Self {
        let bits = self.bits();
        let value = value as u64;
        Features::from_bits_retain(match select {
            0 => (bits & !0xffff_ffff) | value,
            1 => (bits & 0xffff_ffff) | (value << 32),
            _ => bits,
        })
    }
}

bitflags! {
    /// The device status field (virtio 1.3 §2.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct DeviceStatus: u8 {
        /// The guest OS has noticed the device.
        const ACKNOWLEDGE = 1;
        /// The guest OS knows how to drive the device.
        const DRIVER = 2;
        /// The driver is set up and ready to drive the device.
        const DRIVER_OK = 4;
        /// The driver has acknowledged the features it understands; feature negotiation is complete.
        const FEATURES_OK = 8;
        /// The device has experienced an error from which it can't recover.
        const DEVICE_NEEDS_RESET = 64;
        /// Something went wrong in the guest; the driver gave up on the device.
        const FAILED = 128;
    }
}

/// Ring flag values (virtio 1.3 §2.7.5 and §2.8.2), little-endian on the wire.
pub mod ring {
    /// Descriptor continues via `next` (split) or the following slot (packed).
    pub const DESC_F_NEXT: u16 = 1;
    /// Buffer is device-writable.
    pub const DESC_F_WRITE: u16 = 2;
    /// Buffer holds an indirect descriptor table.
    pub const DESC_F_INDIRECT: u16 = 4;
    /// Packed: the descriptor's available flag.
    pub const PACKED_DESC_F_AVAIL: u16 = 1 << 7;
    /// Packed: the descriptor's used flag.
    pub const PACKED_DESC_F_USED: u16 = 1 << 15;
    /// Split: `used.flags` bit asking the driver not to notify.
    pub const USED_F_NO_NOTIFY: u16 = 1;
    /// Split: `avail.flags` bit asking the device not to interrupt.
    pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
    /// Packed event suppression: notifications enabled.
    pub const PACKED_EVENT_FLAG_ENABLE: u16 = 0;
    /// Packed event suppression: notifications disabled.
    pub const PACKED_EVENT_FLAG_DISABLE: u16 = 1;
    /// Packed event suppression: notify at the descriptor named by `off_wrap`.
    pub const PACKED_EVENT_FLAG_DESC: u16 = 2;
    /// Packed event suppression: bit position of the wrap counter in `off_wrap`.
    pub const PACKED_EVENT_F_WRAP_CTR: u16 = 15;
}

/// Device type ids (virtio 1.3 §5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Vsock.
    pub const VSOCK: u32 = 19;
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_config as cfg;
    use virtio_bindings::virtio_ring as vr;

    #[test]
    fn spec_constants_match_virtio_bindings() {
        let bit = |b: u32| 1u64 << b;
        assert_eq!(
            Features::NOTIFY_ON_EMPTY.bits(),
            bit(cfg::VIRTIO_F_NOTIFY_ON_EMPTY)
        );
        assert_eq!(Features::ANY_LAYOUT.bits(), bit(cfg::VIRTIO_F_ANY_LAYOUT));
        assert_eq!(
            Features::INDIRECT_DESC.bits(),
            bit(vr::VIRTIO_RING_F_INDIRECT_DESC)
        );
        assert_eq!(Features::EVENT_IDX.bits(), bit(vr::VIRTIO_RING_F_EVENT_IDX));
        assert_eq!(Features::VERSION_1.bits(), bit(cfg::VIRTIO_F_VERSION_1));
        assert_eq!(
            Features::ACCESS_PLATFORM.bits(),
            bit(cfg::VIRTIO_F_ACCESS_PLATFORM)
        );
        assert_eq!(Features::RING_PACKED.bits(), bit(cfg::VIRTIO_F_RING_PACKED));
        assert_eq!(Features::IN_ORDER.bits(), bit(cfg::VIRTIO_F_IN_ORDER));
        assert_eq!(
            Features::ORDER_PLATFORM.bits(),
            bit(cfg::VIRTIO_F_ORDER_PLATFORM)
        );
        assert_eq!(Features::SR_IOV.bits(), bit(cfg::VIRTIO_F_SR_IOV));
        assert_eq!(
            Features::NOTIFICATION_DATA.bits(),
            bit(cfg::VIRTIO_F_NOTIFICATION_DATA)
        );
        assert_eq!(
            Features::NOTIF_CONFIG_DATA.bits(),
            bit(cfg::VIRTIO_F_NOTIF_CONFIG_DATA)
        );
        assert_eq!(Features::RING_RESET.bits(), bit(cfg::VIRTIO_F_RING_RESET));
        assert_eq!(Features::ADMIN_VQ.bits(), bit(cfg::VIRTIO_F_ADMIN_VQ));

        assert_eq!(
            u32::from(DeviceStatus::ACKNOWLEDGE.bits()),
            cfg::VIRTIO_CONFIG_S_ACKNOWLEDGE
        );
        assert_eq!(
            u32::from(DeviceStatus::DRIVER.bits()),
            cfg::VIRTIO_CONFIG_S_DRIVER
        );
        assert_eq!(
            u32::from(DeviceStatus::DRIVER_OK.bits()),
            cfg::VIRTIO_CONFIG_S_DRIVER_OK
        );
        assert_eq!(
            u32::from(DeviceStatus::FEATURES_OK.bits()),
            cfg::VIRTIO_CONFIG_S_FEATURES_OK
        );
        assert_eq!(
            u32::from(DeviceStatus::DEVICE_NEEDS_RESET.bits()),
            cfg::VIRTIO_CONFIG_S_NEEDS_RESET
        );
        assert_eq!(
            u32::from(DeviceStatus::FAILED.bits()),
            cfg::VIRTIO_CONFIG_S_FAILED
        );

        assert_eq!(u32::from(ring::DESC_F_NEXT), vr::VRING_DESC_F_NEXT);
        assert_eq!(u32::from(ring::DESC_F_WRITE), vr::VRING_DESC_F_WRITE);
        assert_eq!(u32::from(ring::DESC_F_INDIRECT), vr::VRING_DESC_F_INDIRECT);
        assert_eq!(
            ring::PACKED_DESC_F_AVAIL,
            1 << vr::VRING_PACKED_DESC_F_AVAIL
        );
        assert_eq!(ring::PACKED_DESC_F_USED, 1 << vr::VRING_PACKED_DESC_F_USED);
        assert_eq!(
            u32::from(ring::USED_F_NO_NOTIFY),
            vr::VRING_USED_F_NO_NOTIFY
        );
        assert_eq!(
            u32::from(ring::AVAIL_F_NO_INTERRUPT),
            vr::VRING_AVAIL_F_NO_INTERRUPT
        );
        assert_eq!(
            u32::from(ring::PACKED_EVENT_FLAG_ENABLE),
            vr::VRING_PACKED_EVENT_FLAG_ENABLE
        );
        assert_eq!(
            u32::from(ring::PACKED_EVENT_FLAG_DISABLE),
            vr::VRING_PACKED_EVENT_FLAG_DISABLE
        );
        assert_eq!(
            u32::from(ring::PACKED_EVENT_FLAG_DESC),
            vr::VRING_PACKED_EVENT_FLAG_DESC
        );
        assert_eq!(
            u32::from(ring::PACKED_EVENT_F_WRAP_CTR),
            vr::VRING_PACKED_EVENT_F_WRAP_CTR
        );
        assert_eq!(device_type::NET, virtio_bindings::virtio_ids::VIRTIO_ID_NET);
        assert_eq!(
            device_type::BLOCK,
            virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
        );
    }

    #[test]
    fn feature_windows_round_trip() {
        let f = Features::from_bits_retain(0x1234_5678_9abc_def0);
        assert_eq!(f.window(0), 0x9abc_def0);
        assert_eq!(f.window(1), 0x1234_5678);
        assert_eq!(f.window(2), 0);
        let g = Features::empty()
            .with_window(1, 0x1234_5678)
            .with_window(0, 0x9abc_def0);
        assert_eq!(f, g);
    }
}
