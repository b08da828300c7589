//! Device side: a virtio device model exposed as a PCI function (virtio 1.3 §4.1), modern, transitional or legacy.
//!
//! The VMM routes configuration space accesses to [`PciDevice::config_read`]/[`PciDevice::config_write`] and BAR
//! accesses to [`PciDevice::bar_read`]/[`PciDevice::bar_write`]; the device turns them into
//! [`virtio_core::Negotiation`] steps, [`QueueConfig`] fields, notifications and interrupt state, and on DRIVER_OK
//! activates the device model's queues. No access panics, whatever its width, alignment or value.
//!
//! BAR layout:
//!
//! | BAR | variant | contents |
//! |---|---|---|
//! | 0 | transitional, legacy | legacy I/O header + device configuration (§4.1.4.10) |
//! | 1 | any, with MSI-X | 32-bit memory: MSI-X table at 0, PBA after it |
//! | 4–5 | modern, transitional | 64-bit prefetchable memory: common cfg at 0x0, ISR at 0x1000, device cfg at 0x2000, notifications at 0x3000 |

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use virtio_core::device::{ActiveQueue, VirtioDevice};
use virtio_core::{
    DeviceAddr, DeviceQueue, DeviceStatus, Features, Negotiation, NotificationData, QueueConfig,
    StatusChange,
};

use crate::config::{
    hi32, lo32, AddressSpace, BarInfo, BarKind, CapOffsets, ConfigSpace, Ids, MsixCap, VirtioCap,
};
use crate::error::{Error, Result};
use crate::interrupt::{IntxLine, MsiSink, PciInterrupt, Shared};
use crate::spec::{self, command, common, header, legacy, msix, status, vcap, CfgType};

/// BAR of the legacy I/O interface (§4.1.4.10: "in BAR0 in the first I/O region").
pub const LEGACY_BAR: u8 = 0;
/// BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 1;
/// BAR (64-bit, with the next) holding the modern structures.
pub const MODERN_BAR: u8 = 4;
/// Offset of the common configuration in the modern BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR status byte in the modern BAR.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device-specific configuration in the modern BAR.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Offset of the notification structure in the modern BAR.
pub const NOTIFY_OFFSET: u64 = 0x3000;
const SLOT_LEN: u64 = 0x1000;

/// Which interfaces the function presents (virtio 1.3 §4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PciVariant {
    /// Non-transitional: modern capabilities only, device id 0x1040 + type, revision 1.
    Modern,
    /// Transitional: legacy I/O BAR 0 and the modern capabilities, transitional device id, revision 0.
    Transitional,
    /// Legacy only (pre-1.0): I/O BAR 0, no virtio capabilities, no VERSION_1.
    Legacy,
}

impl PciVariant {
    fn has_modern(self) -> bool {
        matches!(self, Self::Modern | Self::Transitional)
    }

    fn has_legacy(self) -> bool {
        matches!(self, Self::Transitional | Self::Legacy)
    }
}

/// How to build a [`PciDevice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PciOptions {
    /// Interfaces presented.
    pub variant: PciVariant,
    /// MSI-X table size; `None` gives one vector per queue plus one for configuration changes (at least 2); 0 means
    /// no MSI-X capability (INTx only).
    pub msix_vectors: Option<u16>,
    /// `notify_off_multiplier` (§4.1.4.4): 0 (one address for all queues, the value says which) or a power of two
    /// ≥ 4. Default 4.
    pub notify_off_multiplier: u32,
    /// Bytes of device-specific configuration (the [`VirtioDevice`] trait does not say); 0 means none and no
    /// device configuration capability. At most 4096.
    pub config_len: usize,
    /// Present 4 KiB of configuration space with a PCI Express capability (Root Complex Integrated Endpoint)
    /// instead of the conventional 256 bytes.
    pub extended_config: bool,
    /// Class code (base class, subclass, programming interface as `0xBBSSPP`); `None` picks one from the device
    /// type (network 0x020000, block/SCSI 0x010000, console 0x078000, others 0xff0000).
    pub class_code: Option<u32>,
}

impl PciOptions {
    /// Defaults for `variant`.
    pub const fn new(variant: PciVariant) -> Self {
        Self {
            variant,
            msix_vectors: None,
            notify_off_multiplier: 4,
            config_len: 0,
            extended_config: false,
            class_code: None,
        }
    }

    /// Sets the MSI-X table size (0: no MSI-X).
    pub const fn msix_vectors(mut self, vectors: u16) -> Self {
        self.msix_vectors = Some(vectors);
        self
    }

    /// Sets `notify_off_multiplier`.
    pub const fn notify_off_multiplier(mut self, multiplier: u32) -> Self {
        self.notify_off_multiplier = multiplier;
        self
    }

    /// Sets the size of the device-specific configuration.
    pub const fn config_len(mut self, len: usize) -> Self {
        self.config_len = len;
        self
    }

    /// Presents PCI Express extended configuration space.
    pub const fn extended_config(mut self, extended: bool) -> Self {
        self.extended_config = extended;
        self
    }

    /// Overrides the class code.
    pub const fn class_code(mut self, class_code: u32) -> Self {
        self.class_code = Some(class_code);
        self
    }
}

/// The VMM's ends of the interrupt wires.
#[derive(Default)]
pub struct InterruptSinks {
    msi: Option<Box<dyn MsiSink>>,
    intx: Option<Box<dyn IntxLine>>,
}

impl core::fmt::Debug for InterruptSinks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InterruptSinks")
            .field("msi", &self.msi.is_some())
            .field("intx", &self.intx.is_some())
            .finish()
    }
}

impl InterruptSinks {
    /// No sinks: interrupts are only visible through [`PciDevice::intx_level`] and the PBA.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where MSI-X messages go.
    pub fn msi(mut self, sink: impl MsiSink + 'static) -> Self {
        self.msi = Some(Box::new(sink));
        self
    }

    /// The INTx line.
    pub fn intx(mut self, line: impl IntxLine + 'static) -> Self {
        self.intx = Some(Box::new(line));
        self
    }
}

/// Where a driver's notification for a queue lands, for registering an ioeventfd (virtio 1.3 §4.1.4.4, §4.1.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotifyAddress {
    /// The BAR (add the BAR's address for a bus address).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Width of the driver's write: 2, or 4 with VIRTIO_F_NOTIFICATION_DATA negotiated.
    pub len: u8,
    /// The value to match, when the address alone does not identify the queue (legacy, or
    /// `notify_off_multiplier` 0). `None` with NOTIFICATION_DATA, whose value varies.
    pub datamatch: Option<u32>,
}

/// Per-queue transport state.
#[derive(Debug, Clone, Copy)]
struct QueueState {
    /// Size and area addresses as written; `ready` is `queue_enable`.
    config: QueueConfig,
    /// Handed to the device model.
    active: bool,
}

/// Which register map a field access is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    Common,
    Legacy,
}

/// Field layout of the common configuration (§4.1.4.3), with the 64-bit fields as two 32-bit halves (§4.1.3).
const COMMON_FIELDS: &[(u16, u8)] = &[
    (0x00, 4),
    (0x04, 4),
    (0x08, 4),
    (0x0c, 4),
    (0x10, 2),
    (0x12, 2),
    (0x14, 1),
    (0x15, 1),
    (0x16, 2),
    (0x18, 2),
    (0x1a, 2),
    (0x1c, 2),
    (0x1e, 2),
    (0x20, 4),
    (0x24, 4),
    (0x28, 4),
    (0x2c, 4),
    (0x30, 4),
    (0x34, 4),
    (0x38, 2),
    (0x3a, 2),
    (0x3c, 2),
    (0x3e, 2),
];

/// Field layout of the legacy header (§4.1.4.10); the last two only while MSI-X is enabled.
const LEGACY_FIELDS: &[(u16, u8)] = &[
    (0x00, 4),
    (0x04, 4),
    (0x08, 4),
    (0x0c, 2),
    (0x0e, 2),
    (0x10, 2),
    (0x12, 1),
    (0x13, 1),
    (0x14, 2),
    (0x16, 2),
];

fn field_at(fields: &[(u16, u8)], limit: u16, at: u64) -> Option<(u16, u8)> {
    let at = u16::try_from(at).ok()?;
    if at >= limit {
        return None;
    }
    fields
        .iter()
        .copied()
        .find(|(o, w)| (*o..*o + u16::from(*w)).contains(&at))
}

/// A virtio device model behind a PCI function.
///
/// `D::Memory` is cloned into each queue at activation (an `Arc`, or a cheap handle to guest memory).
pub struct PciDevice<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    device: D,
    memory: D::Memory,
    options: PciOptions,
    config: ConfigSpace,
    caps: CapOffsets,
    shared: Arc<Shared>,
    negotiation: Negotiation,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    queues: Vec<QueueState>,
    msix_bar_len: u64,
    pba_offset: u64,
    notify_len: u64,
}

impl<D> core::fmt::Debug for PciDevice<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt> + core::fmt::Debug,
    D::Memory: Clone,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciDevice")
            .field("device", &self.device)
            .field("options", &self.options)
            .field("status", &self.negotiation.status())
            .field("queues", &self.queues)
            .field("interrupts", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<D> PciDevice<D>
where
    D: VirtioDevice<Interrupt = PciInterrupt>,
    D::Memory: Clone,
{
    /// Builds the function for `device`, whose queues live in `memory`.
    pub fn new(
        device: D,
        memory: D::Memory,
        options: PciOptions,
        sinks: InterruptSinks,
    ) -> Result<Self> {
        let device_type = device.device_type();
        let num_queues = device.queue_max_sizes().len();
        let nq =
            u16::try_from(num_queues).map_err(|_| Error::TooManyQueues { queues: num_queues })?;
        let multiplier = options.notify_off_multiplier;
        if multiplier != 0 && !(multiplier.is_power_of_two() && multiplier >= 4) {
            return Err(Error::InvalidNotifyMultiplier { multiplier });
        }
        if options.config_len > 0x1000 {
            return Err(Error::ConfigTooLarge {
                len: options.config_len,
            });
        }
        let vectors = options
            .msix_vectors
            .unwrap_or_else(|| nq.saturating_add(1).max(2));
        if vectors > spec::MAX_MSIX_VECTORS {
            return Err(Error::TooManyVectors { vectors });
        }
        let variant = options.variant;
        let (device_id, revision, subsystem_id) = match variant {
            PciVariant::Modern => {
                let id =
                    spec::modern_device_id(device_type).ok_or(Error::NoDeviceId { device_type })?;
                // §4.1.2.1: non-transitional devices SHOULD have a subsystem device id ≥ 0x40.
                (id, spec::MODERN_REVISION, id)
            }
            PciVariant::Transitional | PciVariant::Legacy => {
                let id = spec::transitional_device_id(device_type)
                    .ok_or(Error::NoDeviceId { device_type })?;
                // §4.1.2.3: subsystem device id = virtio device id.
                let sub =
                    u16::try_from(device_type).map_err(|_| Error::NoDeviceId { device_type })?;
                (id, spec::TRANSITIONAL_REVISION, sub)
            }
        };
        let class_code = options.class_code.unwrap_or(match device_type {
            1 => 0x02_0000,
            2 | 8 => 0x01_0000,
            3 => 0x07_8000,
            _ => 0xff_0000,
        });
        let mut config = ConfigSpace::new(
            Ids {
                device_id,
                revision,
                class_code,
                subsystem_id,
            },
            options.extended_config,
        );

        // Legacy I/O BAR: header (with the two MSI-X vector fields when MSI-X exists) + device configuration.
        let legacy_header = if vectors > 0 {
            legacy::CONFIG_OFFSET_MSIX
        } else {
            legacy::CONFIG_OFFSET
        };
        let legacy_bar_len = (legacy_header + options.config_len as u64).next_power_of_two();
        if variant.has_legacy() {
            config.set_bar(LEGACY_BAR, BarKind::Io, legacy_bar_len);
        }

        // MSI-X BAR: table at 0, PBA at 0x800 or after the table.
        let table_len = u64::from(vectors) * msix::ENTRY_LEN;
        let pba_offset = table_len.next_multiple_of(8).max(0x800);
        let pba_len = u64::from(vectors).div_ceil(64) * 8;
        let msix_bar_len = (pba_offset + pba_len).next_power_of_two().max(0x1000);
        let msix_cap = (vectors > 0).then(|| {
            config.set_bar(MSIX_BAR, BarKind::Memory32, msix_bar_len);
            MsixCap {
                vectors,
                bar: MSIX_BAR,
                table_offset: 0,
                pba_offset: lo32(pba_offset),
            }
        });

        // Modern BAR.
        let notify_len = if multiplier == 0 {
            4
        } else {
            (u64::from(nq) * u64::from(multiplier)).max(4)
        };
        let modern_bar_len = (NOTIFY_OFFSET + notify_len).next_power_of_two();
        let mut virtio_caps = Vec::new();
        if variant.has_modern() {
            config.set_bar(
                MODERN_BAR,
                BarKind::Memory64 { prefetchable: true },
                modern_bar_len,
            );
            let cap = |cfg_type, offset: u64, length: u64| VirtioCap {
                cfg_type,
                bar: MODERN_BAR,
                offset: lo32(offset),
                length: lo32(length),
                multiplier: None,
            };
            virtio_caps.push(cap(CfgType::Common, COMMON_OFFSET, u64::from(common::LEN)));
            virtio_caps.push(VirtioCap {
                multiplier: Some(multiplier),
                ..cap(CfgType::Notify, NOTIFY_OFFSET, notify_len)
            });
            virtio_caps.push(cap(CfgType::Isr, ISR_OFFSET, 1));
            if options.config_len > 0 {
                virtio_caps.push(cap(
                    CfgType::Device,
                    DEVICE_OFFSET,
                    options.config_len as u64,
                ));
            }
            virtio_caps.push(cap(CfgType::PciCfg, 0, 0));
        }
        let caps = config.build_caps(&virtio_caps, msix_cap, options.extended_config);

        let offered = device.offered_features();
        let negotiation = match variant {
            // §6.1: a device with only the modern interface offers VIRTIO_F_VERSION_1 and refuses legacy drivers.
            PciVariant::Modern => Negotiation::modern(offered),
            // A transitional device offers VERSION_1 to modern drivers and serves legacy ones (§4.1.4.10).
            PciVariant::Transitional => Negotiation::new(offered | Features::VERSION_1),
            // A legacy device cannot offer bits 32..63 (VERSION_1 and the modern-only transport bits).
            PciVariant::Legacy => {
                Negotiation::new(Features::from_bits_retain(offered.bits() & 0xffff_ffff))
            }
        };
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| QueueState {
                config: QueueConfig::new(*max),
                active: false,
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared::new(num_queues, vectors, sinks.msi, sinks.intx)),
            device,
            memory,
            options,
            config,
            caps,
            negotiation,
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            queues,
            msix_bar_len,
            pba_offset,
            notify_len,
        })
    }

    // ----- accessors -----

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (e.g. to change its configuration and then signal through [`Self::interrupt`]).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The options the function was built with.
    pub fn options(&self) -> &PciOptions {
        &self.options
    }

    /// An interrupt handle for the VMM (not retired by device reset, unlike the one the device model gets).
    pub fn interrupt(&self) -> PciInterrupt {
        PciInterrupt::new(self.shared.clone(), None)
    }

    /// The device status as the driver would read it now.
    pub fn status(&mut self) -> DeviceStatus {
        self.sync_needs_reset();
        self.negotiation.status()
    }

    /// The features the driver wrote (final once FEATURES_OK or, for a legacy driver, DRIVER_OK is set).
    pub fn driver_features(&self) -> Features {
        self.negotiation.driver_features()
    }

    /// The features offered to the driver (the device model's, adjusted for the variant).
    pub fn offered_features(&self) -> Features {
        self.negotiation.offered()
    }

    /// Whether the driver set DRIVER_OK (since the last reset).
    pub fn is_live(&self) -> bool {
        self.negotiation.is_live()
    }

    /// The configuration generation (§4.1.4.3).
    pub fn config_generation(&self) -> u8 {
        self.shared.generation()
    }

    /// Sets DEVICE_NEEDS_RESET and sends a configuration change notification (virtio 1.3 §2.1.2).
    pub fn set_needs_reset(&mut self) {
        self.negotiation.set_needs_reset();
        self.shared.signal_config();
    }

    /// Whether the INTx line is asserted (ISR non-zero, MSI-X disabled, Interrupt Disable clear).
    pub fn intx_level(&self) -> bool {
        self.shared.intx_level()
    }

    /// Whether the driver enabled MSI-X in the capability.
    pub fn msix_enabled(&self) -> bool {
        self.shared.msix_enabled()
    }

    /// Whether the driver set the MSI-X Function Mask.
    pub fn msix_function_masked(&self) -> bool {
        self.shared.function_masked()
    }

    /// Whether MSI-X vector `vector` has its pending bit set (it fired while masked).
    pub fn msix_pending(&self, vector: u16) -> bool {
        self.shared.pending(vector)
    }

    /// MSI-X table size (0 without the capability).
    pub fn msix_vectors(&self) -> u16 {
        self.shared.vectors()
    }

    /// The vector mapped to queue `queue` (NO_VECTOR if none).
    pub fn queue_vector(&self, queue: u16) -> u16 {
        self.shared.queue_vector(queue)
    }

    /// The vector mapped to configuration changes (NO_VECTOR if none).
    pub fn config_vector(&self) -> u16 {
        self.shared.config_vector()
    }

    /// The current configuration of queue `queue` as the driver wrote it.
    pub fn queue_config(&self, queue: u16) -> Option<QueueConfig> {
        self.queues.get(usize::from(queue)).map(|q| q.config)
    }

    /// Size of configuration space (256, or 4096 with extended configuration).
    pub fn config_space_len(&self) -> usize {
        self.config.len()
    }

    /// The implemented BAR `index` with its programmed address.
    pub fn bar(&self, index: u8) -> Option<BarInfo> {
        self.config.bar(index)
    }

    /// All implemented BARs.
    pub fn bars(&self) -> impl Iterator<Item = BarInfo> + '_ {
        (0..header::BAR_COUNT).filter_map(|i| self.config.bar(i))
    }

    /// Maps a bus address to (BAR, offset) if a BAR of that space decodes it: the BAR is programmed (non-zero) and
    /// the command register enables its space.
    pub fn resolve(&self, space: AddressSpace, addr: u64) -> Option<(u8, u64)> {
        let cmd = self.config.get16(header::COMMAND);
        self.bars().find_map(|b| {
            let enabled = match (space, b.kind) {
                (AddressSpace::Io, BarKind::Io) => cmd & command::IO_SPACE != 0,
                (AddressSpace::Memory, BarKind::Memory32 | BarKind::Memory64 { .. }) => {
                    cmd & command::MEMORY_SPACE != 0
                }
                _ => false,
            };
            let offset = addr.checked_sub(b.address)?;
            (enabled && b.address != 0 && offset < b.size).then_some((b.index, offset))
        })
    }

    /// Where the driver notifies queue `queue` through the modern interface, for an ioeventfd. Ask after
    /// FEATURES_OK: the width depends on VIRTIO_F_NOTIFICATION_DATA.
    pub fn queue_notify_address(&self, queue: u16) -> Option<NotifyAddress> {
        if !self.options.variant.has_modern() || usize::from(queue) >= self.queues.len() {
            return None;
        }
        let data = self
            .negotiation
            .driver_features()
            .contains(Features::NOTIFICATION_DATA);
        let multiplier = u64::from(self.options.notify_off_multiplier);
        Some(NotifyAddress {
            bar: MODERN_BAR,
            offset: NOTIFY_OFFSET + u64::from(queue) * multiplier,
            len: if data { 4 } else { 2 },
            datamatch: (multiplier == 0 && !data).then_some(u32::from(queue)),
        })
    }

    /// Where a legacy driver notifies queue `queue` (I/O BAR 0, offset 0x10, the value is the queue index).
    pub fn legacy_notify_address(&self, queue: u16) -> Option<NotifyAddress> {
        (self.options.variant.has_legacy() && usize::from(queue) < self.queues.len()).then_some(
            NotifyAddress {
                bar: LEGACY_BAR,
                offset: legacy::QUEUE_NOTIFY,
                len: 2,
                datamatch: Some(u32::from(queue)),
            },
        )
    }

    /// A notification that bypassed the registers (an ioeventfd fired): forwards it to the device model if the
    /// device is live and the queue active.
    pub fn notify(&mut self, queue: u16, data: Option<NotificationData>) {
        if !self.negotiation.is_live() {
            return;
        }
        if self
            .queues
            .get(usize::from(queue))
            .is_some_and(|q| q.active)
        {
            self.device.queue_notify(queue, data);
        }
    }

    // ----- configuration space -----

    /// Reads configuration space at `offset`. Any width and alignment; bytes beyond configuration space read 0xff.
    pub fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let end = usize::from(offset).saturating_add(data.len());
        if let Some(cap) = self.caps.pci_cfg {
            let window = usize::from(cap + vcap::PCI_CFG_DATA);
            if usize::from(offset) < window + 4 && end > window {
                self.pci_cfg_window(cap, None);
            }
        }
        let intx = self.shared.isr() != 0;
        for (at, byte) in (usize::from(offset)..).zip(data.iter_mut()) {
            let Ok(at) = u16::try_from(at) else {
                *byte = 0xff;
                continue;
            };
            *byte = self.config.read_byte(at);
            // §4.1.4.5.1: with MSI-X disabled, the Interrupt Status bit is the OR of the ISR bits.
            if at == header::STATUS && intx && !self.shared.msix_enabled() {
                *byte |= status::INTERRUPT
                    .to_le_bytes()
                    .first()
                    .copied()
                    .unwrap_or(0);
            }
        }
    }

    /// Writes configuration space at `offset`. Read-only bits keep their value; writes beyond configuration space are
    /// ignored.
    pub fn config_write(&mut self, offset: u16, data: &[u8]) {
        let cmd_before = self.config.get16(header::COMMAND);
        let msix_before = self.msix_control();
        for (at, byte) in (usize::from(offset)..).zip(data.iter()) {
            match u16::try_from(at) {
                Ok(at) if !(header::STATUS..=header::STATUS + 1).contains(&at) => {
                    self.config.write_byte(at, *byte);
                }
                // The status register's error bits are RW1C and never set: nothing to clear.
                _ => {}
            }
        }
        let cmd = self.config.get16(header::COMMAND);
        if (cmd ^ cmd_before) & command::INTX_DISABLE != 0 {
            self.shared
                .set_intx_disabled(cmd & command::INTX_DISABLE != 0);
        }
        let msix_after = self.msix_control();
        if msix_after != msix_before {
            self.shared.set_msix_control(
                msix_after & msix::CONTROL_ENABLE != 0,
                msix_after & msix::CONTROL_FUNCTION_MASK != 0,
            );
        }
        if let Some(cap) = self.caps.pci_cfg {
            let window = usize::from(cap + vcap::PCI_CFG_DATA);
            let end = usize::from(offset).saturating_add(data.len());
            if usize::from(offset) < window + 4 && end > window {
                let stored = [
                    self.config.get8(cap + vcap::PCI_CFG_DATA),
                    self.config.get8(cap + vcap::PCI_CFG_DATA + 1),
                    self.config.get8(cap + vcap::PCI_CFG_DATA + 2),
                    self.config.get8(cap + vcap::PCI_CFG_DATA + 3),
                ];
                self.pci_cfg_window(cap, Some(stored));
            }
        }
    }

    fn msix_control(&self) -> u16 {
        self.caps
            .msix
            .map_or(0, |cap| self.config.get16(cap + msix::CONTROL))
    }

    /// The VIRTIO_PCI_CAP_PCI_CFG window (§4.1.4.9): a read or write of `cap.length` bytes at `cap.offset` in BAR
    /// `cap.bar`. Lengths other than 1, 2, 4 and offsets not aligned to the length (which the driver must not write)
    /// make the window inert.
    fn pci_cfg_window(&mut self, cap: u16, write: Option<[u8; 4]>) {
        let bar = self.config.get8(cap + vcap::BAR);
        let offset = u64::from(self.config.get32(cap + vcap::OFFSET));
        let length = self.config.get32(cap + vcap::LENGTH);
        let len: usize = match length {
            1 => 1,
            2 => 2,
            4 => 4,
            _ => return,
        };
        if offset % len as u64 != 0 {
            return;
        }
        match write {
            Some(bytes) => {
                if let Some(data) = bytes.get(..len) {
                    self.bar_write(bar, offset, data);
                }
            }
            None => {
                let mut buf = [0u8; 4];
                if let Some(data) = buf.get_mut(..len) {
                    self.bar_read(bar, offset, data);
                    self.config.store(cap + vcap::PCI_CFG_DATA, data);
                }
            }
        }
    }

    // ----- BARs -----

    fn bar_len(&self, bar: u8) -> Option<u64> {
        self.config.bar(bar).map(|b| b.size)
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar`. Any width and alignment; an access to a BAR that is not
    /// implemented or that runs past its end reads all-ones.
    pub fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let in_range = self
            .bar_len(bar)
            .zip(offset.checked_add(data.len() as u64))
            .is_some_and(|(size, end)| end <= size);
        if !in_range {
            data.fill(0xff);
            return;
        }
        data.fill(0);
        let variant = self.options.variant;
        match bar {
            LEGACY_BAR if variant.has_legacy() => self.legacy_read(offset, data),
            MSIX_BAR if self.shared.vectors() > 0 => self.msix_read(offset, data),
            MODERN_BAR if variant.has_modern() => self.modern_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    /// Writes `data` at `offset` of BAR `bar`. Writes outside implemented BARs, or of a width a register does not
    /// take, are ignored.
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let in_range = self
            .bar_len(bar)
            .zip(offset.checked_add(data.len() as u64))
            .is_some_and(|(size, end)| end <= size);
        if !in_range {
            return;
        }
        let variant = self.options.variant;
        match bar {
            LEGACY_BAR if variant.has_legacy() => self.legacy_write(offset, data),
            MSIX_BAR if self.shared.vectors() > 0 => self.msix_write(offset, data),
            MODERN_BAR if variant.has_modern() => self.modern_write(offset, data),
            _ => {}
        }
    }

    fn msix_read(&self, offset: u64, data: &mut [u8]) {
        let table_len = u64::from(self.shared.vectors()) * msix::ENTRY_LEN;
        if offset < table_len {
            self.shared.table_read(offset, data);
        } else if offset >= self.pba_offset && offset < self.msix_bar_len {
            self.shared.pba_read(offset - self.pba_offset, data);
        }
    }

    fn msix_write(&self, offset: u64, data: &[u8]) {
        // Entries beyond the table (and the read-only PBA) ignore writes.
        let table_len = u64::from(self.shared.vectors()) * msix::ENTRY_LEN;
        if offset < table_len {
            self.shared.table_write(offset, data);
        }
    }

    /// Splits a modern BAR offset into (structure base, offset in it); accesses that cross from one structure's slot
    /// into the next are dropped. The notification structure runs to the end of the BAR.
    fn modern_slot(offset: u64, len: usize) -> Option<(u64, u64)> {
        let end = offset.checked_add(len as u64)?;
        if offset >= NOTIFY_OFFSET {
            return Some((NOTIFY_OFFSET, offset - NOTIFY_OFFSET));
        }
        let base = offset - offset % SLOT_LEN;
        (end <= base + SLOT_LEN).then_some((base, offset - base))
    }

    fn modern_read(&mut self, offset: u64, data: &mut [u8]) {
        let Some((slot, at)) = Self::modern_slot(offset, data.len()) else {
            return;
        };
        match slot {
            COMMON_OFFSET => self.read_fields(Map::Common, at, data),
            ISR_OFFSET
                // §4.1.4.5: reading the ISR byte clears it and deasserts INTx; the bytes after it are padding.
                if at == 0 => {
                    if let Some(first) = data.first_mut() {
                        *first = self.shared.read_isr();
                    }
                }
            DEVICE_OFFSET => self.device_config_read(at, data),
            _ => {} // notifications read as zero
        }
    }

    fn modern_write(&mut self, offset: u64, data: &[u8]) {
        let Some((slot, at)) = Self::modern_slot(offset, data.len()) else {
            return;
        };
        match slot {
            COMMON_OFFSET => self.write_fields(Map::Common, at, data),
            DEVICE_OFFSET => self.device_config_write(at, data),
            ISR_OFFSET => {} // read-only
            _ => self.notify_write(at, data),
        }
    }

    fn device_config_read(&mut self, at: u64, data: &mut [u8]) {
        self.shared.note_config_read();
        let len = self.options.config_len as u64;
        let Ok(start) = usize::try_from(at) else {
            return;
        };
        // Bytes past the configuration length read 0.
        let inside = usize::try_from(len.saturating_sub(at))
            .unwrap_or(0)
            .min(data.len());
        if let Some(part) = data.get_mut(..inside) {
            if !part.is_empty() {
                self.device.read_config(start, part);
            }
        }
    }

    fn device_config_write(&mut self, at: u64, data: &[u8]) {
        let len = self.options.config_len as u64;
        let Ok(start) = usize::try_from(at) else {
            return;
        };
        let inside = usize::try_from(len.saturating_sub(at))
            .unwrap_or(0)
            .min(data.len());
        if let Some(part) = data.get(..inside) {
            if !part.is_empty() {
                self.device.write_config(start, part);
            }
        }
    }

    /// A write to the notification structure (§4.1.5.2): the queue comes from the address (`queue_notify_off *
    /// notify_off_multiplier`), or from the value when the multiplier is 0. Only 16-bit writes, and 32-bit ones
    /// with VIRTIO_F_NOTIFICATION_DATA, notify.
    fn notify_write(&mut self, at: u64, data: &[u8]) {
        let features = self.negotiation.driver_features();
        let with_data = features.contains(Features::NOTIFICATION_DATA);
        let value = match *data {
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] if with_data => u32::from_le_bytes([a, b, c, d]),
            _ => return,
        };
        let multiplier = u64::from(self.options.notify_off_multiplier);
        let queue = if multiplier == 0 {
            if at != 0 {
                return;
            }
            u16::try_from(value & 0xffff).unwrap_or(u16::MAX)
        } else {
            if at % multiplier != 0 || at >= self.notify_len {
                return;
            }
            match u16::try_from(at / multiplier) {
                Ok(q) => q,
                Err(_) => return,
            }
        };
        let data = (with_data && data.len() == 4).then(|| NotificationData::from_u32(value));
        self.notify(queue, data);
    }

    // ----- register maps (common configuration and legacy header) -----

    fn map_limit(&self, map: Map) -> u16 {
        match map {
            Map::Common => common::LEN,
            Map::Legacy => {
                if self.shared.msix_enabled() {
                    0x18
                } else {
                    0x14
                }
            }
        }
    }

    /// Reads an access assembled from whole fields: each field touched is read once (so the ISR clears once), bytes
    /// outside any field read 0.
    fn read_fields(&mut self, map: Map, at: u64, data: &mut [u8]) {
        let fields = match map {
            Map::Common => COMMON_FIELDS,
            Map::Legacy => LEGACY_FIELDS,
        };
        let limit = self.map_limit(map);
        let mut cached: Option<(u16, u32)> = None;
        for (addr, byte) in (at..).zip(data.iter_mut()) {
            let Some((start, _)) = field_at(fields, limit, addr) else {
                *byte = 0;
                continue;
            };
            let value = match cached {
                Some((s, v)) if s == start => v,
                _ => {
                    let v = self.read_field(map, start);
                    cached = Some((start, v));
                    v
                }
            };
            let shift = (addr - u64::from(start)) * 8;
            *byte = crate::interrupt::low_byte(u64::from(value) >> shift);
        }
    }

    /// Applies an access that is exactly one field (§4.1.3.1: natural widths; a 64-bit field as either 32-bit half),
    /// or a whole 64-bit field in one 8-byte access. Anything else is ignored.
    fn write_fields(&mut self, map: Map, at: u64, data: &[u8]) {
        let fields = match map {
            Map::Common => COMMON_FIELDS,
            Map::Legacy => LEGACY_FIELDS,
        };
        let limit = self.map_limit(map);
        let mut pos = 0usize;
        let mut writes: [(u16, u32); 2] = [(0, 0); 2];
        let mut count = 0;
        while pos < data.len() {
            let addr = at + pos as u64;
            let Some((start, width)) = field_at(fields, limit, addr) else {
                return;
            };
            let width = usize::from(width);
            let Some(bytes) = data.get(pos..pos + width) else {
                return;
            };
            if u64::from(start) != addr || count >= writes.len() {
                return;
            }
            let mut le = [0u8; 4];
            for (d, s) in le.iter_mut().zip(bytes) {
                *d = *s;
            }
            if let Some(w) = writes.get_mut(count) {
                *w = (start, u32::from_le_bytes(le));
            }
            count += 1;
            pos += width;
        }
        let whole_64 = map == Map::Common && count == 2 && matches!(at, 0x20 | 0x28 | 0x30);
        if count != 1 && !whole_64 {
            return;
        }
        for (start, value) in writes.into_iter().take(count) {
            self.write_field(map, start, value);
        }
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn ring_reset(&self) -> bool {
        self.negotiation
            .driver_features()
            .contains(Features::RING_RESET)
    }

    /// Whether the selected queue's size and addresses may change: not while enabled, and after DRIVER_OK only for a
    /// queue re-configured after a per-queue reset (§4.1.4.3.2: the driver configures before enabling; writes after
    /// that are ignored).
    fn queue_writable(&self) -> bool {
        self.selected()
            .is_some_and(|q| !q.config.ready && (!self.negotiation.is_live() || self.ring_reset()))
    }

    fn sync_needs_reset(&mut self) {
        if self.shared.take_needs_reset() {
            self.negotiation.set_needs_reset();
        }
    }

    fn read_field(&mut self, map: Map, start: u16) -> u32 {
        match map {
            Map::Common => self.read_common(start),
            Map::Legacy => self.read_legacy(start),
        }
    }

    fn write_field(&mut self, map: Map, start: u16, value: u32) {
        match map {
            Map::Common => self.write_common(start, value),
            Map::Legacy => self.write_legacy(start, value),
        }
    }

    fn read_common(&mut self, start: u16) -> u32 {
        let q = self.selected().map(|q| q.config);
        let addr = |f: fn(&QueueConfig) -> DeviceAddr, high: bool| {
            q.map_or(0, |c| {
                let raw = f(&c).raw();
                if high {
                    hi32(raw)
                } else {
                    lo32(raw)
                }
            })
        };
        match start {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select,
            common::DEVICE_FEATURE => self
                .negotiation
                .offered()
                .window(self.device_feature_select),
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select,
            common::DRIVER_FEATURE => self
                .negotiation
                .driver_features()
                .window(self.driver_feature_select),
            common::CONFIG_MSIX_VECTOR => u32::from(self.shared.config_vector()),
            common::NUM_QUEUES => u32::try_from(self.queues.len()).unwrap_or(0),
            common::DEVICE_STATUS => u32::from(self.status().bits()),
            common::CONFIG_GENERATION => u32::from(self.shared.generation()),
            common::QUEUE_SELECT => u32::from(self.queue_select),
            // §4.1.4.3.1: 0 for an unavailable queue.
            common::QUEUE_SIZE => q.map_or(0, |c| u32::from(c.size)),
            common::QUEUE_MSIX_VECTOR => u32::from(self.shared.queue_vector(self.queue_select)),
            common::QUEUE_ENABLE => q.map_or(0, |c| u32::from(c.ready)),
            common::QUEUE_NOTIFY_OFF | common::QUEUE_NOTIFY_DATA => {
                // queue_notify_off = queue_notify_data = the queue index.
                q.map_or(0, |_| u32::from(self.queue_select))
            }
            0x20 => addr(|c| c.descriptors, false),
            0x24 => addr(|c| c.descriptors, true),
            0x28 => addr(|c| c.driver_area, false),
            0x2c => addr(|c| c.driver_area, true),
            0x30 => addr(|c| c.device_area, false),
            0x34 => addr(|c| c.device_area, true),
            // queue_reset completes synchronously: it reads 0 (§4.1.4.3.1). The admin queue fields read 0
            // (VIRTIO_F_ADMIN_VQ is not supported).
            _ => 0,
        }
    }

    fn write_common(&mut self, start: u16, value: u32) {
        let v16 = u16::try_from(value & 0xffff).unwrap_or(0);
        match start {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = value,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = value,
            common::DRIVER_FEATURE => {
                // Mirrored as written (§4.1.4.3.1 allows presenting invalid bits); FEATURES_OK checks the set.
                self.negotiation
                    .write_driver_features(self.driver_feature_select, value);
            }
            common::CONFIG_MSIX_VECTOR => self.shared.set_config_vector(v16),
            common::DEVICE_STATUS => {
                self.write_status(u8::try_from(value & 0xff).unwrap_or(0));
            }
            common::QUEUE_SELECT => self.queue_select = v16,
            common::QUEUE_SIZE if self.queue_writable() => {
                let packed = self
                    .negotiation
                    .driver_features()
                    .contains(Features::RING_PACKED);
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    // A size the device cannot use (0, above the maximum, or not a power of two for a split ring)
                    // leaves the queue unusable: it reads back 0 and fails activation, instead of being presented
                    // as written (§4.1.4.3.1: 0 or a power of two without VIRTIO_F_RING_PACKED).
                    let valid = v16 != 0
                        && v16 <= q.config.max_size
                        && (packed || v16.is_power_of_two());
                    q.config.size = if valid { v16 } else { 0 };
                }
            }
            common::QUEUE_MSIX_VECTOR
                if self.selected().is_some() => {
                    self.shared.set_queue_vector(self.queue_select, v16);
                }
            common::QUEUE_ENABLE
                // §4.1.4.3.2: the driver never writes 0; a 0 is ignored.
                if v16 == 1 && self.queue_writable() => {
                    self.enable_queue(self.queue_select);
                }
            common::QUEUE_RESET
                if v16 == 1 && self.ring_reset() => {
                    self.reset_queue(self.queue_select);
                }
            0x20..=0x34 => {
                if !self.queue_writable() {
                    return;
                }
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    let field = match start {
                        0x20 | 0x24 => &mut q.config.descriptors,
                        0x28 | 0x2c => &mut q.config.driver_area,
                        _ => &mut q.config.device_area,
                    };
                    let raw = field.raw();
                    let new = if start % 8 == 4 {
                        (u64::from(value) << 32) | (raw & 0xffff_ffff)
                    } else {
                        (raw & !0xffff_ffff) | u64::from(value)
                    };
                    *field = DeviceAddr::new(new);
                }
            }
            // device_feature, num_queues, config_generation, queue_notify_off, queue_notify_data and the admin
            // fields are read-only (§4.1.4.3.2).
            _ => {}
        }
    }

    fn read_legacy(&mut self, start: u16) -> u32 {
        let q = self.selected().map(|q| q.config);
        match u64::from(start) {
            legacy::HOST_FEATURES => self.negotiation.offered().window(0),
            legacy::GUEST_FEATURES => self.negotiation.driver_features().window(0),
            legacy::QUEUE_PFN => q.map_or(0, |c| {
                if c.ready {
                    u32::try_from(c.descriptors.raw() >> legacy::PFN_SHIFT).unwrap_or(0)
                } else {
                    0
                }
            }),
            legacy::QUEUE_SIZE => q.map_or(0, |c| u32::from(c.max_size)),
            legacy::QUEUE_SELECT => u32::from(self.queue_select),
            legacy::DEVICE_STATUS => u32::from(self.status().bits()),
            legacy::ISR => u32::from(self.shared.read_isr()),
            legacy::CONFIG_MSIX_VECTOR => u32::from(self.shared.config_vector()),
            legacy::QUEUE_MSIX_VECTOR => u32::from(self.shared.queue_vector(self.queue_select)),
            _ => 0, // queue notify reads 0
        }
    }

    fn write_legacy(&mut self, start: u16, value: u32) {
        let v16 = u16::try_from(value & 0xffff).unwrap_or(0);
        match u64::from(start) {
            legacy::GUEST_FEATURES => {
                // §4.1.4.10: through the legacy interface, bits 32..63 are not acknowledged.
                self.negotiation.write_driver_features(0, value);
                self.negotiation.write_driver_features(1, 0);
            }
            legacy::QUEUE_PFN => self.legacy_queue_pfn(value),
            legacy::QUEUE_SELECT => self.queue_select = v16,
            legacy::QUEUE_NOTIFY => self.notify(v16, None),
            legacy::DEVICE_STATUS => self.write_status(u8::try_from(value & 0xff).unwrap_or(0)),
            legacy::CONFIG_MSIX_VECTOR => self.shared.set_config_vector(v16),
            legacy::QUEUE_MSIX_VECTOR if self.selected().is_some() => {
                self.shared.set_queue_vector(self.queue_select, v16);
            }
            _ => {} // host features, queue size and ISR are read-only
        }
    }

    /// Legacy queue address (§4.1.5.1.3.1): the ring of the device's (fixed) size at `pfn * 4096`, laid out with
    /// 4096 alignment. PFN 0 disables the queue.
    fn legacy_queue_pfn(&mut self, pfn: u32) {
        let live = self.negotiation.is_live();
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        if live {
            return; // the layout is fixed once the device runs
        }
        if pfn == 0 {
            q.config.reset();
            return;
        }
        let base = DeviceAddr::new(u64::from(pfn) << legacy::PFN_SHIFT);
        if let Some(config) = QueueConfig::legacy(
            q.config.max_size,
            q.config.max_size,
            base,
            legacy::QUEUE_ALIGN,
        ) {
            q.config = config;
        }
    }

    fn legacy_config_base(&self) -> u64 {
        if self.shared.msix_enabled() {
            legacy::CONFIG_OFFSET_MSIX
        } else {
            legacy::CONFIG_OFFSET
        }
    }

    /// The legacy BAR: header fields, then device configuration at 20 (24 with MSI-X enabled), any width there
    /// (§4.1.4.10).
    fn legacy_read(&mut self, offset: u64, data: &mut [u8]) {
        let base = self.legacy_config_base();
        let split = usize::try_from(base.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(data.len());
        let (head, tail) = data.split_at_mut(split);
        if !head.is_empty() {
            self.read_fields(Map::Legacy, offset, head);
        }
        if !tail.is_empty() {
            let at = offset.max(base) - base;
            self.device_config_read(at, tail);
        }
    }

    fn legacy_write(&mut self, offset: u64, data: &[u8]) {
        let base = self.legacy_config_base();
        if offset >= base {
            self.device_config_write(offset - base, data);
        } else if offset.saturating_add(data.len() as u64) <= base {
            self.write_fields(Map::Legacy, offset, data);
        }
        // A write straddling the header and device configuration matches no field: ignored.
    }

    // ----- status, activation, reset -----

    fn write_status(&mut self, value: u8) {
        match self.negotiation.write_status(value) {
            Ok(StatusChange::Reset) => self.reset_device(),
            Ok(StatusChange::DriverOk(features)) => self.activate(features),
            // A split ring needs a power-of-two size: present the largest one the maximum allows (§4.1.4.3.1).
            Ok(StatusChange::FeaturesAccepted(features))
                if !features.contains(Features::RING_PACKED) =>
            {
                for q in &mut self.queues {
                    let size = q.config.size;
                    if size != 0 && !size.is_power_of_two() {
                        q.config.size = 1 << (15 - size.leading_zeros());
                    }
                }
            }
            // A refused transition (bits cleared, steps skipped, unacceptable legacy features) leaves the status as
            // it was; FEATURES_OK refused stays clear for the driver's re-read (§3.1.1 step 6).
            _ => {}
        }
    }

    fn activate(&mut self, features: Features) {
        let mut queues = Vec::new();
        let mut ok = true;
        for (index, q) in (0u16..).zip(self.queues.iter_mut()) {
            if !q.config.ready {
                continue;
            }
            match DeviceQueue::activate(&q.config, features, self.memory.clone()) {
                Ok(queue) => {
                    q.active = true;
                    queues.push(ActiveQueue { index, queue });
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let interrupt = PciInterrupt::new(self.shared.clone(), Some(self.shared.epoch()));
            ok = self.device.activate(features, queues, interrupt).is_ok();
        }
        if !ok {
            for q in &mut self.queues {
                q.active = false;
            }
            self.set_needs_reset();
        }
    }

    fn reset_device(&mut self) {
        drop(self.device.reset());
        for q in &mut self.queues {
            q.config.reset();
            q.active = false;
        }
        self.shared.reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
    }

    /// `queue_enable` = 1. Before DRIVER_OK it marks the queue for activation; after a per-queue reset on a live
    /// device it activates the queue and hands it to the device model ([`VirtioDevice::enable_queue`]). A queue the
    /// configuration of which does not activate, or that the device model does not take, sets DEVICE_NEEDS_RESET.
    fn enable_queue(&mut self, index: u16) {
        let live = self.negotiation.is_live();
        let features = self.negotiation.driver_features();
        let memory = self.memory.clone();
        let Some(q) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        q.config.ready = true;
        if !live {
            return;
        }
        let taken = match DeviceQueue::activate(&q.config, features, memory) {
            Ok(queue) => self
                .device
                .enable_queue(ActiveQueue { index, queue })
                .is_none(),
            Err(_) => false,
        };
        if let Some(q) = self.queues.get_mut(usize::from(index)) {
            q.active = taken;
            q.config.ready = taken;
        }
        if !taken {
            self.set_needs_reset();
        }
    }

    /// `queue_reset` = 1 (VIRTIO_F_RING_RESET): the device model gives the queue back, the registers return to their
    /// reset values, `queue_enable` reads 0 (§4.1.4.3.1).
    fn reset_queue(&mut self, index: u16) {
        let Some(q) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        if q.active {
            drop(self.device.reset_queue(index));
        }
        q.active = false;
        q.config.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lookup_covers_the_common_structure() {
        let mut at = 0u16;
        for (o, w) in COMMON_FIELDS {
            assert_eq!(*o, at);
            at += u16::from(*w);
        }
        assert_eq!(at, common::LEN);
        assert_eq!(field_at(COMMON_FIELDS, common::LEN, 0x23), Some((0x20, 4)));
        assert_eq!(field_at(COMMON_FIELDS, common::LEN, 0x40), None);
        assert_eq!(field_at(LEGACY_FIELDS, 0x14, 0x14), None);
        assert_eq!(field_at(LEGACY_FIELDS, 0x18, 0x15), Some((0x14, 2)));
    }
}
