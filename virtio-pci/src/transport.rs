//! Driver side: [`PciTransport`], a [`virtio_core::transport::Transport`] over any [`PciAccess`], for the modern
//! interface (capabilities, virtio 1.3 §4.1.4) or the legacy I/O BAR (§4.1.4.10), with MSI-X vector assignment and
//! interrupt dispatch (§4.1.5).
//!
//! Everything the device presents is checked before use: the capability list is walked with a loop guard, each
//! structure must lie inside its BAR (sized through configuration space, or as the platform reports it), notification
//! offsets must lie inside the notification structure, and vector mappings are read back.

use alloc::vec;
use alloc::vec::Vec;

use virtio_core::transport::{InterruptCause, InterruptDispatch, Transport};
use virtio_core::{DeviceStatus, Features, QueueConfig};

use crate::access::{IrqRequest, MsixCapability, PciAccess};
use crate::config::{hi32, lo32, BarInfo, BarKind};
use crate::error::{Error, Result};
use crate::spec::{
    self, cap_id, command, common, header, legacy, msix, status, vcap, CfgType, NO_VECTOR,
};

/// Which of a transitional device's interfaces to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// The modern interface: virtio structure capabilities (§4.1.4).
    Modern,
    /// The legacy interface: the I/O BAR 0 header (§4.1.4.10).
    Legacy,
}

/// How the device's interrupts reach the driver (§4.1.5.1.2), best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InterruptMode {
    /// INTx and the ISR status byte.
    Intx,
    /// MSI-X: vector 0 for configuration changes, vector 1 shared by every queue.
    SharedVector,
    /// MSI-X: vector 0 for configuration changes, vector `q + 1` for queue `q`.
    PerQueueVectors,
}

/// A structure located by a capability and checked against its BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Region {
    /// BAR.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length.
    pub length: u64,
}

/// Where the modern structures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModernLayout {
    /// Common configuration (§4.1.4.3).
    pub common: Region,
    /// Notification structure (§4.1.4.4).
    pub notify: Region,
    /// `notify_off_multiplier`.
    pub notify_off_multiplier: u32,
    /// ISR status (§4.1.4.5).
    pub isr: Region,
    /// Device-specific configuration (§4.1.4.6), if the device has one.
    pub device: Option<Region>,
}

#[derive(Debug, Clone, Copy)]
struct NotifySlot {
    /// Offset in the notification structure.
    offset: u64,
    /// `queue_notify_data` (the queue index without VIRTIO_F_NOTIF_CONFIG_DATA).
    data: u16,
}

/// Polls before a queue reset is declared stuck.
const RESET_POLLS: u32 = 1 << 20;

/// Walks the capability list to the first capability with id `id`, without validation beyond a loop guard (for
/// [`PciAccess`] implementations that need to find MSI-X).
pub fn find_capability<A: PciAccess + ?Sized>(access: &mut A, id: u8) -> Option<u16> {
    if access.config_read_u16(header::STATUS) & status::CAPABILITIES_LIST == 0 {
        return None;
    }
    let mut ptr = access.config_read_u8(header::CAPABILITIES_POINTER) & !3;
    // At most 48 capabilities fit between 0x40 and 0x100.
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        let at = u16::from(ptr);
        if access.config_read_u8(at) == id {
            return Some(at);
        }
        ptr = access.config_read_u8(at + 1) & !3;
    }
    None
}

/// Every capability (offset, id), walked with a loop guard: each pointer must lie in 0x40..0x100 and name a
/// capability not seen before.
fn walk_capabilities<A: PciAccess + ?Sized>(access: &mut A) -> Result<Vec<(u16, u8)>> {
    let mut caps = Vec::new();
    if access.config_read_u16(header::STATUS) & status::CAPABILITIES_LIST == 0 {
        return Ok(caps);
    }
    let mut seen = [false; 48];
    let mut from = header::CAPABILITIES_POINTER;
    // PCI Local Bus 3.0 §6.7: the bottom two bits of a pointer are reserved and must be masked.
    let mut ptr = access.config_read_u8(from) & !3;
    while ptr != 0 {
        if ptr < 0x40 {
            return Err(Error::CapabilityPointer {
                at: from,
                pointer: ptr,
            });
        }
        let slot = usize::from((ptr - 0x40) / 4);
        match seen.get_mut(slot) {
            Some(s) if !*s => *s = true,
            _ => return Err(Error::CapabilityLoop { at: u16::from(ptr) }),
        }
        let at = u16::from(ptr);
        caps.push((at, access.config_read_u8(at)));
        from = at + 1;
        ptr = access.config_read_u8(from) & !3;
    }
    Ok(caps)
}

/// A virtio structure capability as read (§4.1.4).
#[derive(Debug, Clone, Copy)]
struct RawCap {
    at: u16,
    cfg_type: CfgType,
    bar: u8,
    offset: u64,
    length: u64,
}

/// The driver side of one virtio PCI function.
pub struct PciTransport<A: PciAccess> {
    access: A,
    interface: Interface,
    device_id: u16,
    device_type: u32,
    modern: Option<ModernLayout>,
    legacy_len: u64,
    msix: Option<MsixCapability>,
    mode: Option<InterruptMode>,
    msix_on: bool,
    features: Features,
    queue_vectors: Vec<u16>,
    notify: Vec<Option<NotifySlot>>,
}

impl<A: PciAccess> core::fmt::Debug for PciTransport<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciTransport")
            .field("interface", &self.interface)
            .field("device_id", &self.device_id)
            .field("device_type", &self.device_type)
            .field("modern", &self.modern)
            .field("msix", &self.msix)
            .field("mode", &self.mode)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl<A: PciAccess> PciTransport<A> {
    /// Probes the function and picks its interface: modern if the virtio capabilities are there, else legacy for a
    /// transitional device id (§4.1.5.1.1.1: "If these are not present, driver MUST assume a legacy device").
    pub fn new(access: A) -> Result<Self> {
        Self::probe(access, None)
    }

    /// Probes the function and drives it through `interface` (a transitional device offers both).
    pub fn with_interface(access: A, interface: Interface) -> Result<Self> {
        Self::probe(access, Some(interface))
    }

    fn probe(mut access: A, wanted: Option<Interface>) -> Result<Self> {
        let vendor = access.config_read_u16(header::VENDOR_ID);
        let device_id = access.config_read_u16(header::DEVICE_ID);
        let subsystem = access.config_read_u16(header::SUBSYSTEM_ID);
        let device_type = spec::device_type_from_ids(device_id, subsystem)
            .filter(|_| vendor == spec::VIRTIO_VENDOR_ID)
            .ok_or(Error::NotVirtio {
                vendor,
                device: device_id,
            })?;
        let transitional = device_id <= spec::TRANSITIONAL_DEVICE_ID_LAST;

        let caps = walk_capabilities(&mut access)?;
        let mut bars: [Option<Option<BarInfo>>; 6] = [None; 6];
        let mut bar_info = |access: &mut A, index: u8| -> Option<BarInfo> {
            let slot = bars.get_mut(usize::from(index))?;
            *slot.get_or_insert_with(|| access.bar_info(index))
        };

        // First instance of each virtio structure (§4.1.4.1), and MSI-X.
        let mut firsts: [Option<RawCap>; 4] = [None; 4];
        let mut msix_at = None;
        for &(at, id) in &caps {
            match id {
                cap_id::VENDOR => {
                    let len = access.config_read_u8(at + vcap::LEN);
                    if len < vcap::SIZE || usize::from(at) + usize::from(len) > 0x100 {
                        return Err(Error::CapabilityTooShort { at, len });
                    }
                    let bar = access.config_read_u8(at + vcap::BAR);
                    let Some(cfg_type) =
                        CfgType::from_raw(access.config_read_u8(at + vcap::CFG_TYPE))
                    else {
                        continue; // reserved cfg_type: ignored (§4.1.4.1)
                    };
                    if bar > vcap::BAR_MAX {
                        continue; // reserved bar: ignored (§4.1.4.1)
                    }
                    let index = match cfg_type {
                        CfgType::Common => 0,
                        CfgType::Notify => 1,
                        CfgType::Isr => 2,
                        CfgType::Device => 3,
                        _ => continue,
                    };
                    if cfg_type == CfgType::Notify && len < vcap::NOTIFY_SIZE {
                        return Err(Error::CapabilityTooShort { at, len });
                    }
                    if let Some(slot @ None) = firsts.get_mut(index) {
                        *slot = Some(RawCap {
                            at,
                            cfg_type,
                            bar,
                            offset: u64::from(access.config_read_u32(at + vcap::OFFSET)),
                            length: u64::from(access.config_read_u32(at + vcap::LENGTH)),
                        });
                    }
                }
                cap_id::MSIX if msix_at.is_none() => {
                    if usize::from(at) + usize::from(msix::CAP_LEN) > 0x100 {
                        return Err(Error::CapabilityTooShort {
                            at,
                            len: msix::CAP_LEN,
                        });
                    }
                    msix_at = Some(at);
                }
                _ => {}
            }
        }

        let msix = match msix_at {
            Some(at) => Some(Self::parse_msix(&mut access, at, &mut bar_info)?),
            None => None,
        };

        let [common_cap, notify_cap, isr_cap, device_cap] = firsts;
        let interface = match (wanted, common_cap.is_some()) {
            (Some(Interface::Legacy), _) => Interface::Legacy,
            (Some(Interface::Modern), false) => {
                return Err(Error::NoSuchInterface { wanted: "modern" })
            }
            (_, true) => Interface::Modern,
            (None, false) => Interface::Legacy,
        };

        let mut modern = None;
        let mut legacy_len = 0;
        match interface {
            Interface::Modern => {
                let mut region =
                    |access: &mut A, cap: Option<RawCap>, cfg_type, min: u64, align: u64| {
                        let cap = cap.ok_or(Error::MissingCapability { cfg_type })?;
                        Self::check_region(access, cap, min, align, &mut bar_info)
                    };
                let common = region(
                    &mut access,
                    common_cap,
                    CfgType::Common,
                    u64::from(common::MIN_LEN),
                    4,
                )?;
                let notify = region(&mut access, notify_cap, CfgType::Notify, 2, 2)?;
                let isr = region(&mut access, isr_cap, CfgType::Isr, 1, 1)?;
                let device = match device_cap {
                    Some(cap) => Some(Self::check_region(&mut access, cap, 0, 4, &mut bar_info)?),
                    None => None,
                };
                let notify_off_multiplier = notify_cap.map_or(0, |c| {
                    access.config_read_u32(c.at + vcap::NOTIFY_OFF_MULTIPLIER)
                });
                modern = Some(ModernLayout {
                    common,
                    notify,
                    notify_off_multiplier,
                    isr,
                    device,
                });
            }
            Interface::Legacy => {
                if !transitional {
                    return Err(Error::NoSuchInterface { wanted: "legacy" });
                }
                match bar_info(&mut access, crate::device::LEGACY_BAR) {
                    Some(b) if b.kind == BarKind::Io && b.size >= legacy::CONFIG_OFFSET => {
                        legacy_len = b.size
                    }
                    _ => return Err(Error::NoLegacyBar),
                }
            }
        }

        // pci_enable_device + pci_set_master: decode both spaces and let the device reach memory (VFIO leaves Bus
        // Master off).
        let cmd = access.config_read_u16(header::COMMAND);
        access.config_write_u16(
            header::COMMAND,
            cmd | command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER,
        );

        Ok(Self {
            access,
            interface,
            device_id,
            device_type,
            modern,
            legacy_len,
            msix,
            mode: None,
            msix_on: false,
            features: Features::empty(),
            queue_vectors: Vec::new(),
            notify: Vec::new(),
        })
    }

    fn parse_msix(
        access: &mut A,
        at: u16,
        bar_info: &mut impl FnMut(&mut A, u8) -> Option<BarInfo>,
    ) -> Result<MsixCapability> {
        let control = access.config_read_u16(at + msix::CONTROL);
        let table_size = (control & msix::CONTROL_TABLE_SIZE) + 1;
        let table = access.config_read_u32(at + msix::TABLE);
        let pba = access.config_read_u32(at + msix::PBA);
        let split = |v: u32| {
            (
                u8::try_from(v & msix::BIR_MASK).unwrap_or(u8::MAX),
                u64::from(v & !msix::BIR_MASK),
            )
        };
        let (table_bar, table_offset) = split(table);
        let (pba_bar, pba_offset) = split(pba);
        let fits = |access: &mut A,
                    bar: u8,
                    offset: u64,
                    len: u64,
                    bar_info: &mut dyn FnMut(&mut A, u8) -> Option<BarInfo>| {
            bar_info(access, bar).is_some_and(|b| {
                b.kind != BarKind::Io && offset.checked_add(len).is_some_and(|end| end <= b.size)
            })
        };
        let table_len = u64::from(table_size) * msix::ENTRY_LEN;
        if !fits(access, table_bar, table_offset, table_len, bar_info) {
            return Err(Error::MsixOutOfBar {
                what: "table",
                bar: table_bar,
                offset: table_offset,
            });
        }
        let pba_len = u64::from(table_size).div_ceil(64) * 8;
        if !fits(access, pba_bar, pba_offset, pba_len, bar_info) {
            return Err(Error::MsixOutOfBar {
                what: "PBA",
                bar: pba_bar,
                offset: pba_offset,
            });
        }
        Ok(MsixCapability {
            offset: at,
            table_size,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        })
    }

    /// A structure must be at least `min` bytes, aligned to `align`, and lie inside an implemented BAR.
    fn check_region(
        access: &mut A,
        cap: RawCap,
        min: u64,
        align: u64,
        bar_info: &mut impl FnMut(&mut A, u8) -> Option<BarInfo>,
    ) -> Result<Region> {
        let bar_size = bar_info(access, cap.bar).map_or(0, |b| b.size);
        let out_of_bar = Error::CapabilityOutOfBar {
            cfg_type: cap.cfg_type,
            bar: cap.bar,
            offset: cap.offset,
            length: cap.length,
            bar_size,
        };
        if cap.length < min {
            return Err(Error::StructureTooShort {
                cfg_type: cap.cfg_type,
                length: cap.length,
                needed: min,
            });
        }
        if cap.offset % align != 0 {
            return Err(Error::MisalignedStructure {
                cfg_type: cap.cfg_type,
                offset: cap.offset,
                align,
            });
        }
        match cap.offset.checked_add(cap.length) {
            Some(end) if end <= bar_size => Ok(Region {
                bar: cap.bar,
                offset: cap.offset,
                length: cap.length,
            }),
            _ => Err(out_of_bar),
        }
    }

    // ----- accessors -----

    /// The interface in use.
    pub fn interface(&self) -> Interface {
        self.interface
    }

    /// The PCI device id.
    pub fn device_id(&self) -> u16 {
        self.device_id
    }

    /// The modern structures (`None` on the legacy interface).
    pub fn modern_layout(&self) -> Option<&ModernLayout> {
        self.modern.as_ref()
    }

    /// The MSI-X capability, if the function has one.
    pub fn msix_capability(&self) -> Option<&MsixCapability> {
        self.msix.as_ref()
    }

    /// The interrupt mode set up by [`Self::setup_interrupts`] since the last reset.
    pub fn interrupt_mode(&self) -> Option<InterruptMode> {
        self.mode
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> Features {
        self.features
    }

    /// The access.
    pub fn access(&mut self) -> &mut A {
        &mut self.access
    }

    /// Gives the access back.
    pub fn into_access(self) -> A {
        self.access
    }

    /// Number of queues (`num_queues`); the legacy interface does not say.
    pub fn num_queues(&mut self) -> Option<u16> {
        let m = self.modern?;
        Some(self.common_read16(&m, common::NUM_QUEUES))
    }

    // ----- register helpers -----

    fn common_read8(&mut self, m: &ModernLayout, field: u16) -> u8 {
        self.access
            .bar_read_u8(m.common.bar, m.common.offset + u64::from(field))
    }
    fn common_read16(&mut self, m: &ModernLayout, field: u16) -> u16 {
        self.access
            .bar_read_u16(m.common.bar, m.common.offset + u64::from(field))
    }
    fn common_read32(&mut self, m: &ModernLayout, field: u16) -> u32 {
        self.access
            .bar_read_u32(m.common.bar, m.common.offset + u64::from(field))
    }
    fn common_write8(&mut self, m: &ModernLayout, field: u16, v: u8) {
        self.access
            .bar_write_u8(m.common.bar, m.common.offset + u64::from(field), v);
    }
    fn common_write16(&mut self, m: &ModernLayout, field: u16, v: u16) {
        self.access
            .bar_write_u16(m.common.bar, m.common.offset + u64::from(field), v);
    }
    fn common_write32(&mut self, m: &ModernLayout, field: u16, v: u32) {
        self.access
            .bar_write_u32(m.common.bar, m.common.offset + u64::from(field), v);
    }
    /// A 64-bit field as two 32-bit writes, low half first (§4.1.3).
    fn common_write64(&mut self, m: &ModernLayout, field: u16, v: u64) {
        self.common_write32(m, field, lo32(v));
        self.common_write32(m, field + 4, hi32(v));
    }

    fn has_common_field(m: &ModernLayout, field: u16) -> bool {
        u64::from(field) + 2 <= m.common.length
    }

    fn legacy_read16(&mut self, reg: u64) -> u16 {
        self.access.bar_read_u16(crate::device::LEGACY_BAR, reg)
    }
    fn legacy_write16(&mut self, reg: u64, v: u16) {
        self.access.bar_write_u16(crate::device::LEGACY_BAR, reg, v);
    }

    fn select(&mut self, queue: u16) {
        match self.modern {
            Some(m) => self.common_write16(&m, common::QUEUE_SELECT, queue),
            None => self.legacy_write16(legacy::QUEUE_SELECT, queue),
        }
    }

    // ----- interrupts -----

    /// Writes the configuration vector and reads it back.
    fn map_config_vector(&mut self, vector: u16) -> Result<()> {
        let read_back = match self.modern {
            Some(m) => {
                self.common_write16(&m, common::CONFIG_MSIX_VECTOR, vector);
                self.common_read16(&m, common::CONFIG_MSIX_VECTOR)
            }
            None => {
                self.legacy_write16(legacy::CONFIG_MSIX_VECTOR, vector);
                self.legacy_read16(legacy::CONFIG_MSIX_VECTOR)
            }
        };
        if read_back == vector {
            Ok(())
        } else {
            Err(Error::VectorRefused { vector, read_back })
        }
    }

    /// Selects `queue`, writes its vector and reads it back (§4.1.5.1.2.2: "the driver MUST verify success").
    fn map_queue_vector(&mut self, queue: u16, vector: u16) -> Result<()> {
        self.select(queue);
        let read_back = match self.modern {
            Some(m) => {
                self.common_write16(&m, common::QUEUE_MSIX_VECTOR, vector);
                self.common_read16(&m, common::QUEUE_MSIX_VECTOR)
            }
            None => {
                self.legacy_write16(legacy::QUEUE_MSIX_VECTOR, vector);
                self.legacy_read16(legacy::QUEUE_MSIX_VECTOR)
            }
        };
        if read_back == vector {
            Ok(())
        } else {
            Err(Error::VectorRefused { vector, read_back })
        }
    }

    fn try_msix(&mut self, queues: u16, mode: InterruptMode) -> Result<()> {
        let cap = self.msix.ok_or(Error::NoInterrupts)?;
        let vectors = match mode {
            InterruptMode::PerQueueVectors => queues.checked_add(1).ok_or(Error::NoInterrupts)?,
            _ => 2,
        };
        if cap.table_size < vectors {
            return Err(Error::NoInterrupts);
        }
        self.access.enable_interrupts(IrqRequest::Msix {
            vectors,
            capability: cap,
        })?;
        self.msix_on = true;
        self.map_config_vector(0)?;
        self.queue_vectors = vec![NO_VECTOR; usize::from(queues)];
        for q in 0..queues {
            let v = match mode {
                InterruptMode::PerQueueVectors => q + 1,
                _ => 1,
            };
            self.map_queue_vector(q, v)?;
            if let Some(slot) = self.queue_vectors.get_mut(usize::from(q)) {
                *slot = v;
            }
        }
        Ok(())
    }

    fn unmap_vectors(&mut self, queues: u16) {
        let _ = self.map_config_vector(NO_VECTOR);
        for q in 0..queues {
            let _ = self.map_queue_vector(q, NO_VECTOR);
        }
        self.queue_vectors.clear();
    }

    /// Sets up interrupts for `queues` queues, trying `best` first and falling back as Linux `vp_find_vqs` does
    /// (§4.1.5.1.2.2): one vector per queue → one vector shared by all queues → INTx. Call after
    /// [`Transport::begin_init`] (a device reset unmaps every vector) and before [`Transport::setup_queue`].
    pub fn setup_interrupts(&mut self, queues: u16, best: InterruptMode) -> Result<InterruptMode> {
        for mode in [InterruptMode::PerQueueVectors, InterruptMode::SharedVector] {
            if mode > best {
                continue;
            }
            match self.try_msix(queues, mode) {
                Ok(()) => {
                    self.mode = Some(mode);
                    return Ok(mode);
                }
                Err(_) if self.msix_on => self.unmap_vectors(queues),
                Err(_) => {}
            }
        }
        self.access
            .enable_interrupts(IrqRequest::Intx)
            .map_err(|_| Error::NoInterrupts)?;
        self.msix_on = false;
        self.queue_vectors.clear();
        self.mode = Some(InterruptMode::Intx);
        Ok(InterruptMode::Intx)
    }

    /// An MSI-X vector fired: runs the callbacks it stands for. Vector 0 is the configuration change; in
    /// [`InterruptMode::PerQueueVectors`] vector `q + 1` is queue `q` only, in [`InterruptMode::SharedVector`] vector
    /// 1 is every queue whose `has_used` says so (§4.1.5.5). Returns the callbacks run.
    pub fn handle_vector(
        &mut self,
        vector: u16,
        dispatch: &mut InterruptDispatch,
        mut has_used: impl FnMut(u16) -> bool,
    ) -> usize {
        match (self.mode, vector) {
            (Some(InterruptMode::PerQueueVectors | InterruptMode::SharedVector), 0) => {
                dispatch.shared_interrupt(InterruptCause::CONFIG, |_| false)
            }
            (Some(InterruptMode::PerQueueVectors), v) => {
                let q = v - 1;
                usize::from(dispatch.queue_interrupt(q, has_used(q)))
            }
            (Some(InterruptMode::SharedVector), 1) => {
                dispatch.shared_interrupt(InterruptCause::QUEUE, has_used)
            }
            _ => 0,
        }
    }

    /// INTx fired: reads (and so clears) the ISR and runs the callbacks for its causes (§4.1.5.5). Returns the
    /// callbacks run; 0 with an ISR of 0 means the interrupt was not this device's (shared line).
    pub fn handle_intx(
        &mut self,
        dispatch: &mut InterruptDispatch,
        has_used: impl FnMut(u16) -> bool,
    ) -> usize {
        let cause = self.ack_interrupt();
        if cause.is_empty() {
            return 0;
        }
        dispatch.shared_interrupt(cause, has_used)
    }

    // ----- queues -----

    /// Programs `queue` from `config` and enables it; see [`Transport::setup_queue`], which maps this crate's errors
    /// to the core's.
    pub fn setup_queue_checked(&mut self, queue: u16, config: &QueueConfig) -> Result<()> {
        let vector = match self.mode {
            Some(InterruptMode::PerQueueVectors | InterruptMode::SharedVector) => Some(
                self.queue_vectors
                    .get(usize::from(queue))
                    .copied()
                    .unwrap_or(NO_VECTOR),
            ),
            _ => None,
        };
        match self.modern {
            Some(m) => self.setup_modern_queue(&m, queue, config, vector),
            None => self.setup_legacy_queue(queue, config, vector),
        }
    }

    fn setup_modern_queue(
        &mut self,
        m: &ModernLayout,
        queue: u16,
        config: &QueueConfig,
        vector: Option<u16>,
    ) -> Result<()> {
        if queue >= self.common_read16(m, common::NUM_QUEUES) {
            return Err(virtio_core::Error::NoSuchQueue { index: queue }.into());
        }
        self.common_write16(m, common::QUEUE_SELECT, queue);
        if self.common_read16(m, common::QUEUE_ENABLE) != 0 {
            return Err(virtio_core::Error::QueueInUse { index: queue }.into());
        }
        // Before the driver writes it, queue_size holds the maximum (§4.1.4.3).
        let max = self.common_read16(m, common::QUEUE_SIZE);
        if max == 0 {
            return Err(virtio_core::Error::NoSuchQueue { index: queue }.into());
        }
        // §4.1.4.3.2: never 0, and a power of two unless the ring is packed.
        let packed = self.features.contains(Features::RING_PACKED);
        if config.size == 0 || config.size > max || (!packed && !config.size.is_power_of_two()) {
            return Err(virtio_core::Error::InvalidQueueSize {
                size: config.size,
                max,
            }
            .into());
        }
        // Locate the notification address before touching the queue (§4.1.4.4: cap.length ≥ queue_notify_off *
        // notify_off_multiplier + width).
        let width = if self.features.contains(Features::NOTIFICATION_DATA) {
            4
        } else {
            2
        };
        let notify_off = self.common_read16(m, common::QUEUE_NOTIFY_OFF);
        let offset = u64::from(notify_off) * u64::from(m.notify_off_multiplier);
        if offset + width > m.notify.length {
            return Err(Error::NotifyOutOfRange { queue, offset });
        }
        let data = if self.features.contains(Features::NOTIF_CONFIG_DATA)
            && Self::has_common_field(m, common::QUEUE_NOTIFY_DATA)
        {
            self.common_read16(m, common::QUEUE_NOTIFY_DATA)
        } else {
            queue
        };
        self.common_write16(m, common::QUEUE_SIZE, config.size);
        if let Some(v) = vector {
            self.map_queue_vector(queue, v)?;
        }
        self.common_write64(m, common::QUEUE_DESC, config.descriptors.raw());
        self.common_write64(m, common::QUEUE_DRIVER, config.driver_area.raw());
        self.common_write64(m, common::QUEUE_DEVICE, config.device_area.raw());
        self.common_write16(m, common::QUEUE_ENABLE, 1);
        self.set_notify(queue, NotifySlot { offset, data });
        Ok(())
    }

    fn setup_legacy_queue(
        &mut self,
        queue: u16,
        config: &QueueConfig,
        vector: Option<u16>,
    ) -> Result<()> {
        self.legacy_write16(legacy::QUEUE_SELECT, queue);
        let max = self.legacy_read16(legacy::QUEUE_SIZE);
        if max == 0 {
            return Err(virtio_core::Error::NoSuchQueue { index: queue }.into());
        }
        if self
            .access
            .bar_read_u32(crate::device::LEGACY_BAR, legacy::QUEUE_PFN)
            != 0
        {
            return Err(virtio_core::Error::QueueInUse { index: queue }.into());
        }
        // §4.1.5.1.3.1: no size negotiation.
        if config.size != max {
            return Err(virtio_core::Error::InvalidQueueSize {
                size: config.size,
                max,
            }
            .into());
        }
        // The ring at a 4096-aligned address with the legacy layout.
        let expected = QueueConfig::legacy(max, max, config.descriptors, legacy::QUEUE_ALIGN);
        let same_layout = expected.is_some_and(|e| {
            e.size == config.size
                && e.driver_area == config.driver_area
                && e.device_area == config.device_area
        });
        let pfn = u32::try_from(config.descriptors.raw() >> legacy::PFN_SHIFT).ok();
        let aligned = config.descriptors.is_aligned(legacy::QUEUE_ALIGN);
        let in_use = self
            .access
            .bar_read_u32(crate::device::LEGACY_BAR, legacy::QUEUE_PFN)
            != 0;
        let pfn = match pfn {
            Some(p) if p != 0 && same_layout && aligned && !in_use => p,
            _ => return Err(Error::QueueLayout { queue }),
        };
        if let Some(v) = vector {
            self.map_queue_vector(queue, v)?;
        }
        self.access
            .bar_write_u32(crate::device::LEGACY_BAR, legacy::QUEUE_PFN, pfn);
        self.set_notify(
            queue,
            NotifySlot {
                offset: 0,
                data: queue,
            },
        );
        Ok(())
    }

    fn set_notify(&mut self, queue: u16, slot: NotifySlot) {
        let i = usize::from(queue);
        if self.notify.len() <= i {
            self.notify.resize(i + 1, None);
        }
        if let Some(s) = self.notify.get_mut(i) {
            *s = Some(slot);
        }
    }

    /// Per-queue reset (VIRTIO_F_RING_RESET, §4.1.4.3.2): writes 1 to `queue_reset` and waits until it reads 0.
    pub fn reset_queue_checked(&mut self, queue: u16) -> Result<()> {
        let m = self.modern.ok_or(Error::QueueResetUnsupported)?;
        if !self.features.contains(Features::RING_RESET)
            || !Self::has_common_field(&m, common::QUEUE_RESET)
        {
            return Err(Error::QueueResetUnsupported);
        }
        self.common_write16(&m, common::QUEUE_SELECT, queue);
        self.common_write16(&m, common::QUEUE_RESET, 1);
        let mut polls = 0;
        while self.common_read16(&m, common::QUEUE_RESET) != 0 {
            polls += 1;
            if polls >= RESET_POLLS {
                return Err(virtio_core::Error::QueueResetTimeout { index: queue }.into());
            }
            core::hint::spin_loop();
        }
        if let Some(slot) = self.notify.get_mut(usize::from(queue)) {
            *slot = None;
        }
        Ok(())
    }

    // ----- device configuration -----

    fn config_region(&self, offset: usize, len: usize) -> Result<(u8, u64)> {
        let out = Error::ConfigOutOfRange { offset, len };
        let end = offset.checked_add(len).ok_or(out)? as u64;
        match self.modern {
            Some(m) => {
                let r = m.device.ok_or(out)?;
                if end > r.length {
                    return Err(out);
                }
                Ok((r.bar, r.offset + offset as u64))
            }
            None => {
                let base = if self.msix_on {
                    legacy::CONFIG_OFFSET_MSIX
                } else {
                    legacy::CONFIG_OFFSET
                };
                if base + end > self.legacy_len {
                    return Err(out);
                }
                Ok((crate::device::LEGACY_BAR, base + offset as u64))
            }
        }
    }

    /// Reads device configuration at `offset` with naturally aligned accesses of the largest width that fits (so a
    /// 16-bit field is read with one 16-bit access, §4.1.3.1). Fails if the range is outside the device
    /// configuration.
    pub fn read_config_checked(&mut self, offset: usize, data: &mut [u8]) -> Result<()> {
        let (bar, base) = self.config_region(offset, data.len())?;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = base + pos as u64;
            let left = data.len() - pos;
            let width = if left >= 4 && at % 4 == 0 {
                4
            } else if left >= 2 && at % 2 == 0 {
                2
            } else {
                1
            };
            let bytes = match width {
                4 => self.access.bar_read_u32(bar, at).to_le_bytes(),
                2 => {
                    let [a, b] = self.access.bar_read_u16(bar, at).to_le_bytes();
                    [a, b, 0, 0]
                }
                _ => [self.access.bar_read_u8(bar, at), 0, 0, 0],
            };
            for (d, s) in data.iter_mut().skip(pos).zip(bytes.iter().take(width)) {
                *d = *s;
            }
            pos += width;
        }
        Ok(())
    }

    /// Writes device configuration at `offset` (same access widths as [`Self::read_config_checked`]).
    pub fn write_config_checked(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let (bar, base) = self.config_region(offset, data.len())?;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = base + pos as u64;
            let rest = data.get(pos..).unwrap_or(&[]);
            match *rest {
                [a, b, c, d, ..] if at % 4 == 0 => {
                    self.access
                        .bar_write_u32(bar, at, u32::from_le_bytes([a, b, c, d]));
                    pos += 4;
                }
                [a, b, ..] if at % 2 == 0 => {
                    self.access
                        .bar_write_u16(bar, at, u16::from_le_bytes([a, b]));
                    pos += 2;
                }
                [a, ..] => {
                    self.access.bar_write_u8(bar, at, a);
                    pos += 1;
                }
                [] => break,
            }
        }
        Ok(())
    }
}

impl<A: PciAccess> Transport for PciTransport<A> {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn device_features(&mut self) -> Features {
        match self.modern {
            Some(m) => {
                self.common_write32(&m, common::DEVICE_FEATURE_SELECT, 0);
                let low = self.common_read32(&m, common::DEVICE_FEATURE);
                self.common_write32(&m, common::DEVICE_FEATURE_SELECT, 1);
                let high = self.common_read32(&m, common::DEVICE_FEATURE);
                Features::from_bits_retain((u64::from(high) << 32) | u64::from(low))
            }
            None => Features::from_bits_retain(u64::from(
                self.access
                    .bar_read_u32(crate::device::LEGACY_BAR, legacy::HOST_FEATURES),
            )),
        }
    }

    fn write_driver_features(&mut self, features: Features) {
        match self.modern {
            Some(m) => {
                self.common_write32(&m, common::DRIVER_FEATURE_SELECT, 0);
                self.common_write32(&m, common::DRIVER_FEATURE, features.window(0));
                self.common_write32(&m, common::DRIVER_FEATURE_SELECT, 1);
                self.common_write32(&m, common::DRIVER_FEATURE, features.window(1));
                self.features = features;
            }
            None => {
                // Only bits 0..31 exist on the legacy interface.
                self.access.bar_write_u32(
                    crate::device::LEGACY_BAR,
                    legacy::GUEST_FEATURES,
                    features.window(0),
                );
                self.features = Features::from_bits_retain(u64::from(features.window(0)));
            }
        }
    }

    fn status(&mut self) -> DeviceStatus {
        let raw = match self.modern {
            Some(m) => self.common_read8(&m, common::DEVICE_STATUS),
            None => self
                .access
                .bar_read_u8(crate::device::LEGACY_BAR, legacy::DEVICE_STATUS),
        };
        DeviceStatus::from_bits_retain(raw)
    }

    fn write_status(&mut self, status: DeviceStatus) {
        match self.modern {
            Some(m) => self.common_write8(&m, common::DEVICE_STATUS, status.bits()),
            None => self.access.bar_write_u8(
                crate::device::LEGACY_BAR,
                legacy::DEVICE_STATUS,
                status.bits(),
            ),
        }
        if status.is_empty() {
            // The device unmapped every vector and forgot the queues; fall back to INTx until interrupts are set up
            // again, so that a driver that does not call `setup_interrupts` still gets them.
            self.notify.clear();
            self.queue_vectors.clear();
            self.features = Features::empty();
            self.mode = None;
            if self.msix_on && self.access.enable_interrupts(IrqRequest::Intx).is_ok() {
                self.msix_on = false;
            }
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        match self.modern {
            Some(m) => {
                if queue >= self.common_read16(&m, common::NUM_QUEUES) {
                    return 0;
                }
                self.common_write16(&m, common::QUEUE_SELECT, queue);
                if self.common_read16(&m, common::QUEUE_ENABLE) != 0 {
                    return 0; // in use
                }
                self.common_read16(&m, common::QUEUE_SIZE)
            }
            None => {
                self.legacy_write16(legacy::QUEUE_SELECT, queue);
                if self
                    .access
                    .bar_read_u32(crate::device::LEGACY_BAR, legacy::QUEUE_PFN)
                    != 0
                {
                    return 0;
                }
                self.legacy_read16(legacy::QUEUE_SIZE)
            }
        }
    }

    fn setup_queue(&mut self, queue: u16, config: &QueueConfig) -> virtio_core::Result<()> {
        self.setup_queue_checked(queue, config)
            .map_err(Error::to_core)
    }

    fn reset_queue(&mut self, queue: u16) -> virtio_core::Result<()> {
        self.reset_queue_checked(queue).map_err(Error::to_core)
    }

    fn notify(&mut self, queue: u16, value: u32) {
        let Some(slot) = self.notify.get(usize::from(queue)).copied().flatten() else {
            return;
        };
        match self.modern {
            Some(m) => {
                let at = m.notify.offset + slot.offset;
                if self.features.contains(Features::NOTIFICATION_DATA) {
                    // With NOTIF_CONFIG_DATA, vqn carries queue_notify_data (§4.1.5.2.1).
                    let value = if self.features.contains(Features::NOTIF_CONFIG_DATA) {
                        (value & !0xffff) | u32::from(slot.data)
                    } else {
                        value
                    };
                    self.access.bar_write_u32(m.notify.bar, at, value);
                } else {
                    let value = if self.features.contains(Features::NOTIF_CONFIG_DATA) {
                        slot.data
                    } else {
                        queue
                    };
                    self.access.bar_write_u16(m.notify.bar, at, value);
                }
            }
            None => self.legacy_write16(legacy::QUEUE_NOTIFY, queue),
        }
    }

    fn config_generation(&mut self) -> u32 {
        match self.modern {
            Some(m) => u32::from(self.common_read8(&m, common::CONFIG_GENERATION)),
            // Legacy devices have no generation; `read_config` reads twice until stable instead.
            None => 0,
        }
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) -> virtio_core::Result<()> {
        self.read_config_checked(offset, data)
            .map_err(Error::to_core)?;
        if self.modern.is_none() {
            // §2.5.4 (legacy): without a generation counter, re-read until two reads agree.
            let mut again = [0u8; 64];
            for _ in 0..16 {
                let mut stable = true;
                for (chunk_at, chunk) in (offset..)
                    .step_by(again.len())
                    .zip(data.chunks_mut(again.len()))
                {
                    let Some(buf) = again.get_mut(..chunk.len()) else {
                        break;
                    };
                    self.read_config_checked(chunk_at, buf)
                        .map_err(Error::to_core)?;
                    if buf != chunk {
                        chunk.copy_from_slice(buf);
                        stable = false;
                    }
                }
                if stable {
                    break;
                }
            }
        }
        Ok(())
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> virtio_core::Result<()> {
        self.write_config_checked(offset, data)
            .map_err(Error::to_core)
    }

    fn ack_interrupt(&mut self) -> InterruptCause {
        let raw = match self.modern {
            Some(m) => self.access.bar_read_u8(m.isr.bar, m.isr.offset),
            None => self
                .access
                .bar_read_u8(crate::device::LEGACY_BAR, legacy::ISR),
        };
        InterruptCause::from_bits_truncate(u32::from(raw))
    }
}
