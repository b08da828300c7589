//! Driver side: [`MmioTransport`], a [`Transport`] over the registers of a virtio-mmio device, version 2 or legacy
//! version 1 (virtio 1.3 §4.2.2, §4.2.3, §4.2.4).
//!
//! Register access is the [`MmioRegisters`] trait: [`VolatileRegisters`](crate::VolatileRegisters) for a real
//! register window (a guest kernel, firmware), or an in-process [`MmioDevice`](crate::MmioDevice) behind a
//! `RefCell` or `Mutex` (tests, loopback; see the `loopback` implementations).

use virtio_core::transport::{InterruptCause, InterruptDispatch, Transport};
use virtio_core::{
    DeviceAddr, DeviceStatus, Features, QueueConfig, RingArea, RingFormat, RingLayout,
};

use crate::error::Error;
use crate::regs::{self, MmioVersion};

/// `GuestPageSize` the driver side writes for a legacy device, and the unit of `QueuePFN`.
pub const LEGACY_PAGE_SIZE: u32 = 4096;
/// `QueueAlign` the driver side writes for a legacy queue: the used ring starts on this boundary.
pub const LEGACY_QUEUE_ALIGN: u32 = 4096;
/// How many times [`MmioTransport::reset_queue`] reads `QueueReset` back before giving up on the device.
pub const QUEUE_RESET_POLL_LIMIT: u32 = 1 << 16;
/// How many times a legacy configuration read is repeated until two reads agree (legacy has no
/// `ConfigGeneration`).
pub const LEGACY_CONFIG_READ_ATTEMPTS: u32 = 8;

/// Access to the registers of one virtio-mmio device (driver role).
///
/// Offsets are from the window base; values are in host order (an implementation over real registers converts from
/// the little-endian layout, §4.2.2). Control registers are only accessed with [`read32`](Self::read32) and
/// [`write32`](Self::write32) at 4-aligned offsets; configuration space with the width of the field (§4.2.2.2).
/// Accesses cannot fail: an implementation returns 0 for a read it cannot perform and drops such a write.
pub trait MmioRegisters {
    /// 8-bit read.
    fn read8(&self, offset: usize) -> u8;
    /// 16-bit read (`offset` 2-aligned).
    fn read16(&self, offset: usize) -> u16;
    /// 32-bit read (`offset` 4-aligned).
    fn read32(&self, offset: usize) -> u32;
    /// 8-bit write.
    fn write8(&self, offset: usize, value: u8);
    /// 16-bit write (`offset` 2-aligned).
    fn write16(&self, offset: usize, value: u16);
    /// 32-bit write (`offset` 4-aligned).
    fn write32(&self, offset: usize, value: u32);
}

macro_rules! forward_registers {
    ($($ty:ty),*) => {$(
        impl<R: MmioRegisters + ?Sized> MmioRegisters for $ty {
            fn read8(&self, offset: usize) -> u8 {
                (**self).read8(offset)
            }
            fn read16(&self, offset: usize) -> u16 {
                (**self).read16(offset)
            }
            fn read32(&self, offset: usize) -> u32 {
                (**self).read32(offset)
            }
            fn write8(&self, offset: usize, value: u8) {
                (**self).write8(offset, value)
            }
            fn write16(&self, offset: usize, value: u16) {
                (**self).write16(offset, value)
            }
            fn write32(&self, offset: usize, value: u32) {
                (**self).write32(offset, value)
            }
        }
    )*};
}

forward_registers!(
    &R,
    alloc::rc::Rc<R>,
    alloc::sync::Arc<R>,
    alloc::boxed::Box<R>
);

/// How the driver lays out queue memory for a device, by interface version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuePlacement {
    /// Version 2: each area anywhere, aligned as [`RingLayout::alignments`] says; split or packed
    /// ([`QueueConfig::with_layout`] places them back to back).
    Modern,
    /// Version 1: one physically contiguous block starting on a `page_size` boundary, in the legacy split layout
    /// (descriptors, available ring, then the used ring on the next multiple of `align`; [`QueueConfig::legacy`]).
    /// Split rings only.
    Legacy {
        /// `GuestPageSize`: the block starts on a multiple of it.
        page_size: u32,
        /// `QueueAlign`: the used ring's alignment.
        align: u32,
    },
}

impl QueuePlacement {
    /// Whether queues in `format` can be used.
    pub fn supports(&self, format: RingFormat) -> bool {
        matches!(self, Self::Modern) || format == RingFormat::Split
    }

    /// Required alignment of the queue memory's base address.
    pub fn base_alignment(&self) -> u64 {
        match self {
            Self::Modern => 16,
            Self::Legacy { page_size, .. } => u64::from(*page_size),
        }
    }

    /// Bytes of queue memory a `format` queue of `size` entries needs from an aligned base; `None` for a format the
    /// placement does not support.
    pub fn total_len(&self, format: RingFormat, size: u16) -> Option<usize> {
        let layout = RingLayout::new(format, size);
        match self {
            Self::Modern => Some(layout.total_len()),
            Self::Legacy { align, .. } if format == RingFormat::Split => {
                Some(layout.legacy_total_len(u64::from(*align)))
            }
            Self::Legacy { .. } => None,
        }
    }

    /// The configuration of a `format` queue of `size` entries whose memory starts at `base` (aligned to
    /// [`base_alignment`](Self::base_alignment)), for [`Transport::setup_queue`] and `DriverQueue::new`. `None`
    /// for an unsupported format, a misaligned base or an address overflow.
    pub fn queue_config(
        &self,
        format: RingFormat,
        max_size: u16,
        size: u16,
        base: DeviceAddr,
    ) -> Option<QueueConfig> {
        if !self.supports(format) || !base.is_aligned(self.base_alignment()) {
            return None;
        }
        match self {
            Self::Modern => {
                QueueConfig::with_layout(max_size, &RingLayout::new(format, size), base)
            }
            Self::Legacy { align, .. } => {
                QueueConfig::legacy(max_size, size, base, u64::from(*align))
            }
        }
    }
}

/// A virtio-mmio device seen from the driver: implements [`Transport`] over [`MmioRegisters`].
///
/// Construct it over real registers with [`MmioTransport::new`] (unsafe: you vouch for the window), or over any
/// [`MmioRegisters`] with [`MmioTransport::from_registers`]. Both check `MagicValue`, `Version` and `DeviceID` first
/// and touch no other register when they are wrong (§4.2.3.1.1).
#[derive(Debug)]
pub struct MmioTransport<R> {
    regs: R,
    version: MmioVersion,
    device_id: u32,
    vendor_id: u32,
    size: usize,
    driver_features: Features,
}

fn offset(register: u64) -> usize {
    // Register offsets are below 0x100.
    usize::try_from(register).unwrap_or(usize::MAX)
}

impl<R: MmioRegisters> MmioTransport<R> {
    /// Probes the device behind `regs`, a register window of `size` bytes (0x100 of control registers, then
    /// configuration space).
    ///
    /// Reads `MagicValue` and `Version`, then `DeviceID`; a wrong magic value, a version other than 1 or 2, or
    /// device id 0 (a placeholder: [`Error::NoDevice`], not to be reported) stop here, with no other register
    /// accessed (§4.2.3.1.1). For a legacy device it then writes `GuestPageSize` ([`LEGACY_PAGE_SIZE`]), once.
    pub fn from_registers(regs: R, size: usize) -> Result<Self, Error> {
        let control = offset(regs::CONFIG);
        if size < control {
            return Err(Error::WindowTooSmall { size });
        }
        let magic = regs.read32(offset(regs::MAGIC));
        if magic != regs::MAGIC_VALUE {
            return Err(Error::BadMagic { found: magic });
        }
        let found = regs.read32(offset(regs::VERSION));
        let version =
            MmioVersion::from_register(found).ok_or(Error::UnsupportedVersion { found })?;
        let device_id = regs.read32(offset(regs::DEVICE_ID));
        if device_id == 0 {
            return Err(Error::NoDevice);
        }
        let vendor_id = regs.read32(offset(regs::VENDOR_ID));
        if version == MmioVersion::Legacy {
            regs.write32(offset(regs::GUEST_PAGE_SIZE), LEGACY_PAGE_SIZE);
        }
        Ok(Self {
            regs,
            version,
            device_id,
            vendor_id,
            size,
            driver_features: Features::empty(),
        })
    }

    /// The register interface the device presents.
    pub fn version(&self) -> MmioVersion {
        self.version
    }

    /// `VendorID`.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    /// The register access.
    pub fn registers(&self) -> &R {
        &self.regs
    }

    /// Gives back the register access.
    pub fn into_registers(self) -> R {
        self.regs
    }

    /// Bytes of configuration space the window covers: configuration accesses reaching past it fail with
    /// [`ConfigOutOfRange`](virtio_core::Error::ConfigOutOfRange).
    pub fn config_len(&self) -> usize {
        self.size.saturating_sub(offset(regs::CONFIG))
    }

    /// How queue memory must be laid out for this device (legacy devices take one page-aligned block in the legacy
    /// split layout).
    pub fn queue_placement(&self) -> QueuePlacement {
        match self.version {
            MmioVersion::Modern => QueuePlacement::Modern,
            MmioVersion::Legacy => QueuePlacement::Legacy {
                page_size: LEGACY_PAGE_SIZE,
                align: LEGACY_QUEUE_ALIGN,
            },
        }
    }

    /// The interrupt handler (Linux `vm_interrupt`): reads `InterruptStatus`, acknowledges the defined bits at once
    /// (so that an event raised while the callbacks run asserts the interrupt again), then runs the configuration
    /// callback for a configuration change and, for a used buffer notification, the callback of every registered
    /// queue for which `has_used` is true: MMIO has one used-buffer bit for all queues (§4.2.3.4). Returns the
    /// causes; empty for a spurious (shared-line) interrupt.
    pub fn handle_interrupt(
        &mut self,
        dispatch: &mut InterruptDispatch,
        has_used: impl FnMut(u16) -> bool,
    ) -> InterruptCause {
        let cause = self.ack_interrupt();
        dispatch.shared_interrupt(cause, has_used);
        cause
    }

    fn select_queue(&mut self, queue: u16) {
        self.regs.write32(offset(regs::QUEUE_SEL), u32::from(queue));
    }

    /// Whether the selected queue is in use (`QueueReady` or `QueuePFN` non-zero).
    fn selected_in_use(&mut self) -> bool {
        let register = match self.version {
            MmioVersion::Modern => regs::QUEUE_READY,
            MmioVersion::Legacy => regs::QUEUE_PFN,
        };
        self.regs.read32(offset(register)) != 0
    }

    /// Checks that `config` is in the legacy layout at a page boundary and returns its `QueuePFN`.
    fn legacy_pfn(&self, config: &QueueConfig) -> virtio_core::Result<u32> {
        let base = config.descriptors;
        let misaligned = |area, addr, align: u32| virtio_core::Error::MisalignedArea {
            area,
            addr,
            align: u16::try_from(align).unwrap_or(u16::MAX),
        };
        if !base.is_aligned(u64::from(LEGACY_PAGE_SIZE)) {
            return Err(misaligned(RingArea::Descriptors, base, LEGACY_PAGE_SIZE));
        }
        let expected = QueueConfig::legacy(
            config.max_size,
            config.size,
            base,
            u64::from(LEGACY_QUEUE_ALIGN),
        )
        .ok_or(misaligned(RingArea::DeviceArea, base, LEGACY_QUEUE_ALIGN))?;
        if expected.driver_area != config.driver_area {
            return Err(misaligned(RingArea::DriverArea, config.driver_area, 2));
        }
        if expected.device_area != config.device_area {
            return Err(misaligned(
                RingArea::DeviceArea,
                config.device_area,
                LEGACY_QUEUE_ALIGN,
            ));
        }
        let pfn = u32::try_from(base.raw() / u64::from(LEGACY_PAGE_SIZE))
            .ok()
            .filter(|pfn| *pfn != 0)
            .ok_or(virtio_core::Error::AreaOutOfMemory {
                area: RingArea::Descriptors,
                addr: base,
                len: RingLayout::new(RingFormat::Split, config.size)
                    .legacy_total_len(u64::from(LEGACY_QUEUE_ALIGN)),
            })?;
        Ok(pfn)
    }

    /// Whether `offset..offset + len` of configuration space is inside the window.
    fn config_in_window(&self, config_offset: usize, len: usize) -> bool {
        config_offset
            .checked_add(len)
            .is_some_and(|end| end <= self.config_len())
    }

    fn read_config_once(&self, config_offset: usize, data: &mut [u8]) {
        let at = offset(regs::CONFIG) + config_offset;
        match data.len() {
            1 => {
                if let Some(byte) = data.first_mut() {
                    *byte = self.regs.read8(at);
                }
            }
            2 if at % 2 == 0 => data.copy_from_slice(&self.regs.read16(at).to_le_bytes()),
            4 if at % 4 == 0 => data.copy_from_slice(&self.regs.read32(at).to_le_bytes()),
            // A 64-bit field: two 32-bit accesses, low word first (§4.2.2.2).
            8 if at % 4 == 0 => {
                let (low, high) = data.split_at_mut(4);
                low.copy_from_slice(&self.regs.read32(at).to_le_bytes());
                high.copy_from_slice(&self.regs.read32(at + 4).to_le_bytes());
            }
            // Anything else is an array of bytes (a MAC address, a string): 8-bit accesses.
            _ => {
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = self.regs.read8(at + i);
                }
            }
        }
    }
}

impl<R: MmioRegisters> Transport for MmioTransport<R> {
    fn device_type(&self) -> u32 {
        self.device_id
    }

    /// Both 32-bit windows, each after writing `DeviceFeaturesSel` (§4.2.2.2). A legacy device cannot be driven as a
    /// modern one, so VERSION_1 and the modern-only bits are dropped from what it offers.
    fn device_features(&mut self) -> Features {
        self.regs.write32(offset(regs::DEVICE_FEATURES_SEL), 1);
        let high = self.regs.read32(offset(regs::DEVICE_FEATURES));
        self.regs.write32(offset(regs::DEVICE_FEATURES_SEL), 0);
        let low = self.regs.read32(offset(regs::DEVICE_FEATURES));
        let offered = Features::from_bits_retain((u64::from(high) << 32) | u64::from(low));
        match self.version {
            MmioVersion::Modern => offered,
            MmioVersion::Legacy => offered - Features::VERSION_1 - Features::MODERN_ONLY,
        }
    }

    /// Both 32-bit windows, each after writing `DriverFeaturesSel` (§4.2.2.2).
    fn write_driver_features(&mut self, features: Features) {
        self.regs.write32(offset(regs::DRIVER_FEATURES_SEL), 1);
        self.regs
            .write32(offset(regs::DRIVER_FEATURES), features.window(1));
        self.regs.write32(offset(regs::DRIVER_FEATURES_SEL), 0);
        self.regs
            .write32(offset(regs::DRIVER_FEATURES), features.window(0));
        self.driver_features = features;
    }

    fn status(&mut self) -> DeviceStatus {
        let [status, ..] = self.regs.read32(offset(regs::STATUS)).to_le_bytes();
        DeviceStatus::from_bits_retain(status)
    }

    fn write_status(&mut self, status: DeviceStatus) {
        if status.is_empty() {
            self.driver_features = Features::empty();
        }
        self.regs
            .write32(offset(regs::STATUS), u32::from(status.bits()));
    }

    /// `QueueNumMax` of `queue`; 0 if it does not exist or is in use (`QueueReady`, or legacy `QueuePFN`,
    /// non-zero). Values above 65535 are reported as 65535.
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.select_queue(queue);
        if self.selected_in_use() {
            return 0;
        }
        let max = self.regs.read32(offset(regs::QUEUE_NUM_MAX));
        u16::try_from(max).unwrap_or(u16::MAX)
    }

    /// §4.2.3.2: select, check the queue is not in use, check `size ≤ QueueNumMax`, then version 2: `QueueNum`, the
    /// three area addresses and `QueueReady` = 1; legacy (§4.2.4): `QueueNum`, `QueueAlign` and `QueuePFN`, after
    /// checking that `config` is in the layout [`queue_placement`](MmioTransport::queue_placement) describes.
    ///
    /// Errors: [`QueueInUse`](virtio_core::Error::QueueInUse) if the queue is in use (set up before and not reset
    /// since), [`NoSuchQueue`](virtio_core::Error::NoSuchQueue) if it does not exist (`QueueNumMax` reads 0),
    /// [`InvalidQueueSize`](virtio_core::Error::InvalidQueueSize) for a size of 0 or above `QueueNumMax`,
    /// [`MisalignedArea`](virtio_core::Error::MisalignedArea) /
    /// [`AreaOutOfMemory`](virtio_core::Error::AreaOutOfMemory) for a legacy configuration that is not a page-aligned
    /// legacy layout below 16 TiB.
    fn setup_queue(&mut self, queue: u16, config: &QueueConfig) -> virtio_core::Result<()> {
        self.select_queue(queue);
        if self.selected_in_use() {
            return Err(virtio_core::Error::QueueInUse { index: queue });
        }
        let max = self.regs.read32(offset(regs::QUEUE_NUM_MAX));
        if max == 0 {
            return Err(virtio_core::Error::NoSuchQueue { index: queue });
        }
        if config.size == 0 || u32::from(config.size) > max {
            return Err(virtio_core::Error::InvalidQueueSize {
                size: config.size,
                max: u16::try_from(max).unwrap_or(u16::MAX),
            });
        }
        let pfn = match self.version {
            MmioVersion::Legacy => Some(self.legacy_pfn(config)?),
            MmioVersion::Modern => None,
        };
        self.regs
            .write32(offset(regs::QUEUE_NUM), u32::from(config.size));
        if let Some(pfn) = pfn {
            self.regs
                .write32(offset(regs::QUEUE_ALIGN), LEGACY_QUEUE_ALIGN);
            self.regs.write32(offset(regs::QUEUE_PFN), pfn);
            return Ok(());
        }
        let pairs = [
            (
                regs::QUEUE_DESC_LOW,
                regs::QUEUE_DESC_HIGH,
                config.descriptors,
            ),
            (
                regs::QUEUE_DRIVER_LOW,
                regs::QUEUE_DRIVER_HIGH,
                config.driver_area,
            ),
            (
                regs::QUEUE_DEVICE_LOW,
                regs::QUEUE_DEVICE_HIGH,
                config.device_area,
            ),
        ];
        for (low, high, addr) in pairs {
            let [l0, l1, l2, l3, h0, h1, h2, h3] = addr.raw().to_le_bytes();
            self.regs
                .write32(offset(low), u32::from_le_bytes([l0, l1, l2, l3]));
            self.regs
                .write32(offset(high), u32::from_le_bytes([h0, h1, h2, h3]));
        }
        self.regs.write32(offset(regs::QUEUE_READY), 1);
        Ok(())
    }

    /// Stops `queue`:
    /// - version 2 with VIRTIO_F_RING_RESET negotiated: writes 1 to `QueueReset` and waits until it reads 0
    ///   (§4.2.2.2; gives up with [`QueueResetTimeout`](virtio_core::Error::QueueResetTimeout) after
    ///   [`QUEUE_RESET_POLL_LIMIT`] reads);
    /// - version 2 before DRIVER_OK: writes 0 to `QueueReady` and reads it back (§4.2.2.2);
    /// - legacy: writes 0 to `QueuePFN` and reads it back (§4.2.4);
    /// - otherwise [`MissingFeatures`](virtio_core::Error::MissingFeatures) (RING_RESET), nothing written.
    fn reset_queue(&mut self, queue: u16) -> virtio_core::Result<()> {
        let version = self.version;
        let started = self.status().contains(DeviceStatus::DRIVER_OK);
        let (register, value) = match version {
            MmioVersion::Legacy => (regs::QUEUE_PFN, 0),
            MmioVersion::Modern if self.driver_features.contains(Features::RING_RESET) => {
                (regs::QUEUE_RESET, 1)
            }
            MmioVersion::Modern if !started => (regs::QUEUE_READY, 0),
            MmioVersion::Modern => {
                return Err(virtio_core::Error::MissingFeatures {
                    missing: Features::RING_RESET.bits(),
                })
            }
        };
        self.select_queue(queue);
        self.regs.write32(offset(register), value);
        for _ in 0..QUEUE_RESET_POLL_LIMIT {
            if self.regs.read32(offset(register)) == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(virtio_core::Error::QueueResetTimeout { index: queue })
    }

    /// Writes `value` to `QueueNotify`: the queue index, or the notification data with VIRTIO_F_NOTIFICATION_DATA
    /// (§4.2.3.3).
    fn notify(&mut self, _queue: u16, value: u32) {
        self.regs.write32(offset(regs::QUEUE_NOTIFY), value);
    }

    /// `ConfigGeneration`; always 0 for a legacy device, which has none: its configuration reads are instead
    /// repeated until two agree (see [`read_config`](Self::read_config)).
    fn config_generation(&mut self) -> u32 {
        match self.version {
            MmioVersion::Modern => self.regs.read32(offset(regs::CONFIG_GENERATION)),
            MmioVersion::Legacy => 0,
        }
    }

    /// Reads configuration space with the access width the field needs (§4.2.2.2): 1, 2 (aligned), 4 (aligned)
    /// bytes in one access, 8 (4-aligned) in two 32-bit accesses, anything else byte by byte. For a legacy device,
    /// which has no `ConfigGeneration`, a read of up to 64 bytes is repeated until two consecutive reads agree (at
    /// most [`LEGACY_CONFIG_READ_ATTEMPTS`] times).
    ///
    /// A read reaching past the register window ([`config_len`](MmioTransport::config_len)) fails with
    /// [`ConfigOutOfRange`](virtio_core::Error::ConfigOutOfRange), accesses no register and leaves `data` zeroed.
    /// Inside the window the transport cannot tell where the device's configuration space ends, so naming fields
    /// the device has is the caller's part.
    fn read_config(&mut self, config_offset: usize, data: &mut [u8]) -> virtio_core::Result<()> {
        if !self.config_in_window(config_offset, data.len()) {
            data.fill(0);
            return Err(virtio_core::Error::ConfigOutOfRange {
                offset: config_offset,
                len: data.len(),
            });
        }
        self.read_config_once(config_offset, data);
        if self.version == MmioVersion::Legacy {
            let mut again = [0u8; 64];
            if let Some(again) = again.get_mut(..data.len()) {
                for _ in 1..LEGACY_CONFIG_READ_ATTEMPTS {
                    self.read_config_once(config_offset, again);
                    if *again == *data {
                        break;
                    }
                    data.copy_from_slice(again);
                }
            }
        }
        Ok(())
    }

    /// Writes configuration space with the access widths of [`read_config`](Self::read_config). A write reaching
    /// past the register window fails with [`ConfigOutOfRange`](virtio_core::Error::ConfigOutOfRange) and writes
    /// nothing.
    fn write_config(&mut self, config_offset: usize, data: &[u8]) -> virtio_core::Result<()> {
        if !self.config_in_window(config_offset, data.len()) {
            return Err(virtio_core::Error::ConfigOutOfRange {
                offset: config_offset,
                len: data.len(),
            });
        }
        let at = offset(regs::CONFIG) + config_offset;
        match *data {
            [b] => self.regs.write8(at, b),
            [b0, b1] if at % 2 == 0 => self.regs.write16(at, u16::from_le_bytes([b0, b1])),
            [b0, b1, b2, b3] if at % 4 == 0 => {
                self.regs.write32(at, u32::from_le_bytes([b0, b1, b2, b3]))
            }
            [b0, b1, b2, b3, b4, b5, b6, b7] if at % 4 == 0 => {
                self.regs.write32(at, u32::from_le_bytes([b0, b1, b2, b3]));
                self.regs
                    .write32(at + 4, u32::from_le_bytes([b4, b5, b6, b7]));
            }
            _ => {
                for (i, b) in data.iter().enumerate() {
                    self.regs.write8(at + i, *b);
                }
            }
        }
        Ok(())
    }

    /// Reads `InterruptStatus` and acknowledges the defined bits it shows, never setting undefined bits in
    /// `InterruptACK`; undefined status bits are ignored (§4.2.2.2).
    fn ack_interrupt(&mut self) -> InterruptCause {
        let status = self.regs.read32(offset(regs::INTERRUPT_STATUS)) & regs::INT_VALID;
        if status != 0 {
            self.regs.write32(offset(regs::INTERRUPT_ACK), status);
        }
        InterruptCause::from_bits_truncate(status)
    }
}
