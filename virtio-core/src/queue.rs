//! Queue configuration, ring layouts and the role-level enums that pick split or packed once, at activation.

use crate::error::{Error, Result};
use crate::memory::DeviceAddr;
use crate::spec::Features;

/// Which ring layout a queue uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFormat {
    /// Split virtqueue (virtio 1.3 §2.7).
    Split,
    /// Packed virtqueue (virtio 1.3 §2.8).
    Packed,
}

/// The ring behaviours selected by negotiated features, fixed at activation (not re-tested per buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingFeatures {
    /// VIRTIO_F_RING_PACKED.
    pub packed: bool,
    /// VIRTIO_F_INDIRECT_DESC.
    pub indirect: bool,
    /// VIRTIO_F_EVENT_IDX.
    pub event_idx: bool,
    /// VIRTIO_F_IN_ORDER.
    pub in_order: bool,
    /// VIRTIO_F_NOTIFICATION_DATA.
    pub notification_data: bool,
}

impl RingFeatures {
    /// Extracts the ring-relevant bits of negotiated features.
    pub fn from_features(features: Features) -> Self {
        Self {
            packed: features.contains(Features::RING_PACKED),
            indirect: features.contains(Features::INDIRECT_DESC),
            event_idx: features.contains(Features::EVENT_IDX),
            in_order: features.contains(Features::IN_ORDER),
            notification_data: features.contains(Features::NOTIFICATION_DATA),
        }
    }

    /// The ring format these features select.
    pub fn format(&self) -> RingFormat {
        if self.packed {
            RingFormat::Packed
        } else {
            RingFormat::Split
        }
    }
}

/// A queue's configuration as a transport collects it register by register (virtio 1.3 §4.1.4.3, §4.2.2), before
/// activation turns it into a live queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The largest size the device supports (`queue_size` read before the driver writes it).
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver enabled the queue (`queue_enable`, `QueueReady`, or a legacy PFN write).
    pub ready: bool,
    /// Descriptor area address.
    pub descriptors: DeviceAddr,
    /// Driver area address (available ring, or driver event suppression).
    pub driver_area: DeviceAddr,
    /// Device area address (used ring, or device event suppression).
    pub device_area: DeviceAddr,
}

impl QueueConfig {
    /// A reset queue of at most `max_size` entries (size defaults to the maximum, as the spec says for reset).
    pub const fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            descriptors: DeviceAddr::new(0),
            driver_area: DeviceAddr::new(0),
            device_area: DeviceAddr::new(0),
        }
    }

    /// A ready configuration whose areas follow `layout` placed at `base`.
    pub fn with_layout(max_size: u16, layout: &RingLayout, base: DeviceAddr) -> Option<Self> {
        let (descriptors, driver_area, device_area) = layout.place(base)?;
        Some(Self {
            max_size,
            size: layout.size,
            ready: true,
            descriptors,
            driver_area,
            device_area,
        })
    }

    /// A ready legacy split-ring configuration of `size` entries at `base` (see [`RingLayout::place_legacy`]).
    pub fn legacy(max_size: u16, size: u16, base: DeviceAddr, align: u64) -> Option<Self> {
        let layout = RingLayout::new(RingFormat::Split, size);
        let (descriptors, driver_area, device_area) = layout.place_legacy(base, align)?;
        Some(Self {
            max_size,
            size,
            ready: true,
            descriptors,
            driver_area,
            device_area,
        })
    }

    /// Back to the reset state, keeping the maximum.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Checks the size for `format` (non-zero, ≤ max; split sizes must be powers of two).
    pub fn validate_size(&self, format: RingFormat) -> Result<()> {
        let size = self.size;
        let ok = size != 0
            && size <= self.max_size
            && (format == RingFormat::Packed || size.is_power_of_two());
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidQueueSize {
                size,
                max: self.max_size,
            })
        }
    }
}

/// Sizes and alignments of the three ring areas of a queue (virtio 1.3 §2.7 and §2.8), for whoever allocates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Ring format.
    pub format: RingFormat,
    /// Queue size.
    pub size: u16,
    /// Bytes of the descriptor area.
    pub descriptors_len: usize,
    /// Bytes of the driver area.
    pub driver_area_len: usize,
    /// Bytes of the device area.
    pub device_area_len: usize,
}

impl RingLayout {
    /// Required alignment of (descriptor area, driver area, device area).
    pub const fn alignments(format: RingFormat) -> (usize, usize, usize) {
        match format {
            RingFormat::Split => (16, 2, 4),
            RingFormat::Packed => (16, 4, 4),
        }
    }

    /// The layout of a `format` queue of `size` entries (EVENT_IDX fields always included).
    pub const fn new(format: RingFormat, size: u16) -> Self {
        let n = size as usize;
        match format {
            RingFormat::Split => Self {
                format,
                size,
                descriptors_len: 16 * n,
                driver_area_len: 6 + 2 * n,
                device_area_len: 6 + 8 * n,
            },
            RingFormat::Packed => Self {
                format,
                size,
                descriptors_len: 16 * n,
                driver_area_len: 4,
                device_area_len: 4,
            },
        }
    }

    /// Addresses of the three areas laid out back to back from `base` with their alignments.
    pub fn place(&self, base: DeviceAddr) -> Option<(DeviceAddr, DeviceAddr, DeviceAddr)> {
        let (a_desc, a_drv, a_dev) = Self::alignments(self.format);
        let align =
            |addr: u64, a: usize| addr.checked_add(a as u64 - 1).map(|v| v & !(a as u64 - 1));
        let desc = align(base.raw(), a_desc)?;
        let drv = align(desc.checked_add(self.descriptors_len as u64)?, a_drv)?;
        let dev = align(drv.checked_add(self.driver_area_len as u64)?, a_dev)?;
        Some((
            DeviceAddr::new(desc),
            DeviceAddr::new(drv),
            DeviceAddr::new(dev),
        ))
    }

    /// Addresses of a *legacy* split ring (virtio 1.3 §2.7 "Legacy Interfaces"): descriptors at `base`, the
    /// available ring right after them, the used ring at the next multiple of `align` (4096 for legacy PCI,
    /// `QueueAlign` for MMIO v1). `None` for packed layouts, a zero or non-power-of-two `align`, or overflow.
    pub fn place_legacy(
        &self,
        base: DeviceAddr,
        align: u64,
    ) -> Option<(DeviceAddr, DeviceAddr, DeviceAddr)> {
        if self.format != RingFormat::Split || !align.is_power_of_two() {
            return None;
        }
        let desc = base.raw();
        let avail = desc.checked_add(self.descriptors_len as u64)?;
        let used = avail
            .checked_add(self.driver_area_len as u64)?
            .checked_add(align - 1)?
            & !(align - 1);
        Some((
            DeviceAddr::new(desc),
            DeviceAddr::new(avail),
            DeviceAddr::new(used),
        ))
    }

    /// Bytes a legacy split ring occupies from its base (see [`place_legacy`](Self::place_legacy)).
    pub fn legacy_total_len(&self, align: u64) -> usize {
        self.place_legacy(DeviceAddr::new(0), align)
            .and_then(|(_, _, used)| usize::try_from(used.raw()).ok())
            .and_then(|used| used.checked_add(self.device_area_len))
            .unwrap_or(usize::MAX)
    }

    /// Total bytes needed by [`place`](Self::place) from a 16-aligned base.
    pub fn total_len(&self) -> usize {
        self.place(DeviceAddr::new(0))
            .and_then(|(_, _, dev)| usize::try_from(dev.raw()).ok())
            .and_then(|dev| dev.checked_add(self.device_area_len))
            .unwrap_or(usize::MAX)
    }
}

/// Identifies a popped chain when the device returns it: the id the driver will see in the used element, and how
/// many ring slots the chain occupied (packed rings advance by that count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedToken {
    pub(crate) id: u16,
    pub(crate) descriptors: u16,
}

impl UsedToken {
    /// The head index (split) or buffer id (packed).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Ring slots the chain occupied (1 for an indirect chain).
    pub fn descriptors(&self) -> u16 {
        self.descriptors
    }
}

/// The driver's notification value with VIRTIO_F_NOTIFICATION_DATA (virtio 1.3 §2.9): queue index plus where the
/// next available descriptor will go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationData {
    /// Queue index (`vqn`), or the config-supplied notification data.
    pub queue: u16,
    /// Split: low 15 bits of the available index. Packed: offset in the descriptor ring.
    pub next_off: u16,
    /// Split: bit 15 of the available index. Packed: the driver's wrap counter.
    pub next_wrap: bool,
}

impl NotificationData {
    /// The 32-bit value written to the notify register.
    pub const fn to_u32(self) -> u32 {
        (self.queue as u32)
            | (((self.next_off & 0x7fff) as u32) << 16)
            | ((self.next_wrap as u32) << 31)
    }

    /// Parses the 32-bit value a driver wrote.
    pub const fn from_u32(value: u32) -> Self {
        Self {
            queue: (value & 0xffff) as u16,
            next_off: ((value >> 16) & 0x7fff) as u16,
            next_wrap: value >> 31 != 0,
        }
    }

    /// For a split ring: the full 16-bit available index this notification announces.
    pub const fn split_avail_idx(self) -> u16 {
        self.next_off | ((self.next_wrap as u16) << 15)
    }
}

/// `vring_need_event` (virtio 1.3 §2.7.10): whether moving an index from `old` to `new` crossed `event`, in u16
/// wrapping arithmetic.
#[inline(always)]
#[cfg(feature = "alloc")]
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_data_round_trips() {
        let n = NotificationData {
            queue: 3,
            next_off: 0x7abc,
            next_wrap: true,
        };
        assert_eq!(NotificationData::from_u32(n.to_u32()), n);
        assert_eq!(n.split_avail_idx(), 0xfabc);
    }

    #[test]
    fn need_event_wraps() {
        assert!(need_event(5, 6, 5));
        assert!(!need_event(6, 6, 5));
        assert!(need_event(0xffff, 2, 0xfffe));
        assert!(!need_event(3, 2, 0xfffe));
    }

    #[test]
    fn layout_places_areas_aligned() {
        let l = RingLayout::new(RingFormat::Split, 256);
        let (d, a, u) = l.place(DeviceAddr::new(0x1000)).expect("fits");
        assert_eq!((d.raw(), a.raw(), u.raw()), (0x1000, 0x2000, 0x2208));
        assert_eq!(l.total_len(), 0x1208 + 6 + 8 * 256);
    }

    #[test]
    fn legacy_layout_puts_used_ring_on_alignment() {
        let l = RingLayout::new(RingFormat::Split, 256);
        let (d, a, u) = l
            .place_legacy(DeviceAddr::new(0x10000), 4096)
            .expect("fits");
        assert_eq!((d.raw(), a.raw(), u.raw()), (0x10000, 0x11000, 0x12000));
        assert_eq!(l.legacy_total_len(4096), 0x2000 + 6 + 8 * 256);
        assert!(RingLayout::new(RingFormat::Packed, 8)
            .place_legacy(DeviceAddr::new(0), 4096)
            .is_none());
        let c = QueueConfig::legacy(256, 16, DeviceAddr::new(0x4000), 64).expect("fits");
        assert_eq!((c.driver_area.raw(), c.device_area.raw()), (0x4100, 0x4140));
    }

    #[test]
    fn queue_size_rules() {
        let mut c = QueueConfig::new(256);
        c.size = 100;
        assert!(c.validate_size(RingFormat::Split).is_err());
        assert!(c.validate_size(RingFormat::Packed).is_ok());
        c.size = 0;
        assert!(c.validate_size(RingFormat::Packed).is_err());
        c.size = 512;
        assert!(c.validate_size(RingFormat::Split).is_err());
    }
}
