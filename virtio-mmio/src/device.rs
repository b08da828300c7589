//! Device side: the register window a VMM exposes for one virtio device (virtio 1.3 §4.2.2, legacy §4.2.4).
//!
//! The VMM forwards every guest access to the window to [`MmioDevice::read`] / [`MmioDevice::write`] (from an MMIO
//! exit), or registers an ioeventfd on [`MmioDevice::NOTIFY_ADDRESS`] with the values of
//! [`MmioDevice::notify_datamatch`] and calls [`MmioDevice::notify`] when it fires. Status and feature writes go
//! through [`virtio_core::Negotiation`]; at DRIVER_OK the enabled queues are activated into
//! [`DeviceQueue`]s and handed to the [`VirtioDevice`] with an [`MmioInterrupt`], which sets `InterruptStatus` bits and
//! raises the VMM's [`IrqLine`].
//!
//! # Refused accesses
//!
//! The driver may only use 32-bit aligned accesses on control registers and 1-, 2-, 4- or 8-byte accesses in
//! configuration space (§4.2.2.2). Anything else, and any access the register table does not allow (a read of a
//! write-only register, a write to a read-only one, an offset with no register), **has no effect**: a refused read
//! fills the buffer with zeros, a refused write changes nothing, and the call returns an [`Error`] for the VMM to
//! log. Nothing the driver writes makes this module panic.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::{
    DeviceAddr, DeviceQueue, DeviceStatus, Features, Negotiation, NotificationData, QueueConfig,
    RingArea, StatusChange,
};

use crate::error::{Error, Result};
use crate::regs::{self, MmioVersion};

/// Default `GuestPageSize` of a legacy device before the driver writes it (Linux writes `PAGE_SIZE` once at probe).
const DEFAULT_PAGE_SIZE: u32 = 4096;
/// Default `QueueAlign` of a legacy queue before the driver writes it.
const DEFAULT_QUEUE_ALIGN: u32 = 4096;

/// The interrupt line of one MMIO device, implemented by the VMM (an irqfd, a GIC SPI, a counter in a test).
///
/// The MMIO transport has a single interrupt per device (§4.2.3.4); [`MmioInterrupt`] sets the cause in
/// `InterruptStatus` first and then calls [`trigger`](IrqLine::trigger).
pub trait IrqLine: Send + Sync {
    /// Asserts the interrupt. Called after a bit was set in `InterruptStatus`, possibly while it is already asserted.
    fn trigger(&self);

    /// `InterruptStatus` became zero (the driver acknowledged every event, or the device was reset): a
    /// level-triggered line may be deasserted. The default does nothing (an edge-triggered irqfd).
    fn lower(&self) {}
}

/// `InterruptStatus`, `ConfigGeneration` and the device model's DEVICE_NEEDS_RESET report, shared by the register
/// window and the interrupt handles.
#[derive(Debug, Default)]
struct Shared {
    /// `InterruptStatus`.
    status: AtomicU32,
    /// `ConfigGeneration`.
    generation: AtomicU32,
    /// Bumped at every device reset, so that interrupt handles of an earlier activation no longer raise anything.
    epoch: AtomicU32,
    /// DRIVER_OK is set (cleared at reset): before it there is nothing to flag as needing a reset.
    driver_ok: AtomicBool,
    /// The device model reported DEVICE_NEEDS_RESET through [`Interrupt::signal_needs_reset`] (cleared at reset). The
    /// register window shows it in `Status` and folds it into its [`Negotiation`] at the next status write.
    needs_reset: AtomicBool,
}

impl Shared {
    /// The status the driver reads: `negotiation`'s, with a DEVICE_NEEDS_RESET reported through a handle.
    fn status_of(&self, negotiation: &Negotiation) -> DeviceStatus {
        let status = negotiation.status();
        // Acquire pairs with the Release store in `MmioInterrupt::signal_needs_reset`.
        if self.needs_reset.load(Ordering::Acquire) && status.contains(DeviceStatus::DRIVER_OK) {
            status | DeviceStatus::DEVICE_NEEDS_RESET
        } else {
            status
        }
    }
}

/// The [`Interrupt`] an [`MmioDevice`] gives its device model: sets the cause in `InterruptStatus`, then triggers the
/// VMM's [`IrqLine`]. Cheap to clone; `Send + Sync`, so device worker threads may hold it.
///
/// A handle belongs to one activation: after a device reset it does nothing (the spec requires `InterruptStatus` to
/// be clear after reset, §4.2.2.1), even if the device model kept a clone.
///
/// [`signal_needs_reset`](Interrupt::signal_needs_reset) sets DEVICE_NEEDS_RESET in `Status` and raises a
/// configuration change interrupt (§2.1.2), like [`MmioDevice::set_needs_reset`]; it does nothing before DRIVER_OK.
#[derive(Clone)]
pub struct MmioInterrupt {
    shared: Arc<Shared>,
    line: Arc<dyn IrqLine>,
    epoch: u32,
}

impl fmt::Debug for MmioInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioInterrupt")
            .field("status", &self.shared.status.load(Ordering::Relaxed))
            .field("epoch", &self.epoch)
            .field("stale", &self.is_stale())
            .finish()
    }
}

impl MmioInterrupt {
    /// Whether the device was reset since this handle was made (it then raises nothing).
    pub fn is_stale(&self) -> bool {
        self.shared.epoch.load(Ordering::Acquire) != self.epoch
    }

    /// The `InterruptStatus` bits pending (not yet acknowledged by the driver).
    pub fn pending(&self) -> u32 {
        self.shared.status.load(Ordering::Acquire)
    }

    fn raise(&self, bit: u32) {
        if self.is_stale() {
            return;
        }
        // Release: the used-ring stores the device made before signalling (themselves release stores in the rings)
        // happen before the bit is visible; pairs with the Acquire load of `InterruptStatus` in `MmioDevice::read`.
        self.shared.status.fetch_or(bit, Ordering::AcqRel);
        self.line.trigger();
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_queue(&self, _queue: u16) {
        // MMIO has one cause bit for all queues; the driver checks every active queue (§4.2.3.4).
        self.raise(regs::INT_USED_BUFFER);
    }

    fn signal_config(&self) {
        if self.is_stale() {
            return;
        }
        // The generation changes before the cause bit is visible: a driver woken by the interrupt reads the new
        // generation (pairs with the Acquire load in `MmioDevice::read`).
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.raise(regs::INT_CONFIG_CHANGE);
    }

    fn signal_needs_reset(&self) {
        if self.is_stale() || !self.shared.driver_ok.load(Ordering::Acquire) {
            return;
        }
        // The flag is visible before the cause bit (Release, then the AcqRel `fetch_or` in `raise`): a driver woken
        // by the interrupt reads DEVICE_NEEDS_RESET in `Status`. No generation bump: the configuration space did not
        // change, only the status.
        self.shared.needs_reset.store(true, Ordering::Release);
        self.raise(regs::INT_CONFIG_CHANGE);
    }
}

/// The registers of one queue.
#[derive(Debug, Clone, Copy)]
struct QueueRegs {
    /// Size, addresses and `QueueReady` (version 2); size and "PFN non-zero" (legacy).
    config: QueueConfig,
    /// `QueuePFN` (legacy).
    pfn: u32,
    /// `QueueAlign` (legacy).
    align: u32,
    /// The device model holds a live queue for it.
    active: bool,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            config: QueueConfig::new(max_size),
            pfn: 0,
            align: DEFAULT_QUEUE_ALIGN,
            active: false,
        }
    }

    fn reset(&mut self) {
        *self = Self::new(self.config.max_size);
    }
}

/// The register window of one virtio device on the MMIO transport, version 2 or legacy version 1 (device role).
///
/// `D` is the device model; its queues live in `D::Memory` (cloned once per queue at activation, so it is usually an
/// `Arc` or a cheap handle to guest memory).
pub struct MmioDevice<D: VirtioDevice> {
    device: D,
    memory: D::Memory,
    version: MmioVersion,
    vendor_id: u32,
    negotiation: Negotiation,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    shm_sel: u32,
    page_size: u32,
    queues: Vec<QueueRegs>,
    shared: Arc<Shared>,
    line: Arc<dyn IrqLine>,
    /// The device model accepted activation and has not been reset since.
    live: bool,
    /// Queues enabled again after a per-queue reset that the device model handed back from
    /// [`VirtioDevice::enable_queue`], waiting for the VMM to give them to it.
    reenabled: Vec<ActiveQueue<D::Memory>>,
}

impl<D: VirtioDevice> fmt::Debug for MmioDevice<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioDevice")
            .field("version", &self.version)
            .field("device_id", &self.device.device_type())
            .field("status", &self.shared.status_of(&self.negotiation))
            .field("live", &self.live)
            .field("queues", &self.queues.len())
            .field("queue_sel", &self.queue_sel)
            .field(
                "interrupt_status",
                &self.shared.status.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<D> MmioDevice<D>
where
    D: VirtioDevice<Interrupt = MmioInterrupt>,
    D::Memory: Clone,
{
    /// The offset of `QueueNotify` in the window: register an ioeventfd at `window base + NOTIFY_ADDRESS`, 4 bytes
    /// wide, with the values of [`notify_datamatch`](Self::notify_datamatch).
    pub const NOTIFY_ADDRESS: u64 = regs::QUEUE_NOTIFY;

    /// A device presenting `device` with register interface `version`; its queues live in `memory`, its interrupt is
    /// `line`.
    ///
    /// The features offered are the device model's, adjusted to the transport: version 2 is a modern-only device
    /// ([`Negotiation::modern`]: it always offers VIRTIO_F_VERSION_1 and refuses a driver that does not accept it);
    /// version 1 offers neither VERSION_1 nor any bit only modern drivers may accept; neither offers
    /// VIRTIO_F_ADMIN_VQ, which MMIO reserves (§4.2.5).
    pub fn new(
        device: D,
        memory: D::Memory,
        line: Arc<dyn IrqLine>,
        version: MmioVersion,
    ) -> Result<Self> {
        let count = device.queue_max_sizes().len();
        if count > usize::from(u16::MAX) + 1 {
            return Err(Error::TooManyQueues { count });
        }
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| QueueRegs::new(*max))
            .collect();
        let offered = device.offered_features() - Features::ADMIN_VQ;
        let negotiation = match version {
            MmioVersion::Modern => Negotiation::modern(offered),
            MmioVersion::Legacy => {
                Negotiation::new(offered - Features::VERSION_1 - Features::MODERN_ONLY)
            }
        };
        Ok(Self {
            device,
            memory,
            version,
            vendor_id: regs::DEFAULT_VENDOR_ID,
            negotiation,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            shm_sel: 0,
            page_size: DEFAULT_PAGE_SIZE,
            queues,
            shared: Arc::new(Shared::default()),
            line,
            live: false,
            reenabled: Vec::new(),
        })
    }

    /// Presents `vendor_id` in `VendorID` instead of [`regs::DEFAULT_VENDOR_ID`].
    pub fn with_vendor_id(mut self, vendor_id: u32) -> Self {
        self.vendor_id = vendor_id;
        self
    }

    /// The register interface presented.
    pub fn version(&self) -> MmioVersion {
        self.version
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably (e.g. to change its configuration and signal it).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Gives back the device model.
    pub fn into_inner(self) -> D {
        self.device
    }

    /// The features the device offers on this transport.
    pub fn offered_features(&self) -> Features {
        self.negotiation.offered()
    }

    /// The negotiated features: set once the driver wrote FEATURES_OK (or, for a legacy driver, DRIVER_OK).
    pub fn negotiated_features(&self) -> Option<Features> {
        let status = self.negotiation.status();
        let fixed = status.contains(DeviceStatus::FEATURES_OK)
            || (status.contains(DeviceStatus::DRIVER_OK)
                && !self
                    .negotiation
                    .driver_features()
                    .contains(Features::VERSION_1));
        fixed.then(|| self.negotiation.driver_features())
    }

    fn negotiated(&self) -> Features {
        self.negotiated_features().unwrap_or(Features::empty())
    }

    /// The device status as the driver reads it (including a DEVICE_NEEDS_RESET the device model reported through
    /// [`Interrupt::signal_needs_reset`]).
    pub fn status(&self) -> DeviceStatus {
        self.shared.status_of(&self.negotiation)
    }

    /// Whether the device model is running (DRIVER_OK accepted, no reset since).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The pending `InterruptStatus` bits.
    pub fn interrupt_status(&self) -> u32 {
        self.shared.status.load(Ordering::Acquire)
    }

    /// `ConfigGeneration`.
    pub fn config_generation(&self) -> u32 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// An interrupt handle for the current activation (the one the device model receives at DRIVER_OK).
    pub fn interrupt(&self) -> MmioInterrupt {
        MmioInterrupt {
            shared: self.shared.clone(),
            line: self.line.clone(),
            epoch: self.shared.epoch.load(Ordering::Acquire),
        }
    }

    /// The VMM changed the device's configuration: bumps `ConfigGeneration` and raises a configuration change
    /// interrupt (what the device model does through [`Interrupt::signal_config`]).
    pub fn signal_config(&self) {
        self.interrupt().signal_config();
    }

    /// The device hit an error it cannot recover from (e.g. its device model found a queue broken by a driver fault):
    /// sets DEVICE_NEEDS_RESET, if DRIVER_OK is set, and raises a configuration change interrupt (§2.1.2). The
    /// driver recovers with a device reset.
    ///
    /// For the VMM; a device model reports the same through its interrupt handle,
    /// [`Interrupt::signal_needs_reset`], which this calls.
    pub fn set_needs_reset(&mut self) {
        self.interrupt().signal_needs_reset();
        self.sync_needs_reset();
    }

    /// Folds a DEVICE_NEEDS_RESET reported through an interrupt handle into the negotiation state (which ignores it
    /// before DRIVER_OK).
    fn sync_needs_reset(&mut self) {
        if self.shared.needs_reset.load(Ordering::Acquire) {
            self.negotiation.set_needs_reset();
        }
    }

    /// The value a driver writes to `QueueNotify` for `queue`, for an ioeventfd with datamatch: the queue index.
    /// `None` if the queue does not exist, or if VIRTIO_F_NOTIFICATION_DATA was negotiated (the value then carries
    /// the ring position too, so register the ioeventfd without datamatch and call [`notify`](Self::notify) with
    /// the value written, or let the access exit to the VMM).
    pub fn notify_datamatch(&self, queue: u16) -> Option<u32> {
        let exists = usize::from(queue) < self.queues.len();
        let plain = !self.negotiated().contains(Features::NOTIFICATION_DATA);
        (exists && plain).then_some(u32::from(queue))
    }

    /// Queues the driver enabled again after a per-queue reset (VIRTIO_F_RING_RESET) that the device model did not
    /// take, since the last call: activated and ready to give to the device model.
    ///
    /// A re-enabled queue goes to the device model through [`VirtioDevice::enable_queue`] first; this is the fallback
    /// for a model that hands it back (the trait's default), so that the VMM can pass it on by other means. The list
    /// is cleared on device reset, and a queue reset again before it was taken is dropped.
    pub fn take_reenabled_queues(&mut self) -> Vec<ActiveQueue<D::Memory>> {
        core::mem::take(&mut self.reenabled)
    }

    /// A driver read of `data.len()` bytes at `offset` from the window base.
    ///
    /// Control registers take 32-bit aligned reads; configuration space (from [`regs::CONFIG`]) takes 1, 2, 4 or 8
    /// bytes at any offset. A refused read fills `data` with zeros and returns the reason.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        data.fill(0);
        if offset >= regs::CONFIG {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                return Err(Error::InvalidAccess {
                    offset,
                    len: data.len(),
                });
            }
            // An offset beyond what `usize` can address is beyond any configuration space: it reads as zero.
            if let Ok(config_offset) = usize::try_from(offset - regs::CONFIG) {
                self.device.read_config(config_offset, data);
            }
            return Ok(());
        }
        let len = data.len();
        let bytes =
            <&mut [u8; 4]>::try_from(data).map_err(|_| Error::InvalidAccess { offset, len })?;
        if offset % 4 != 0 {
            return Err(Error::InvalidAccess { offset, len });
        }
        *bytes = self.read_register(offset)?.to_le_bytes();
        Ok(())
    }

    /// A driver write of `data` at `offset` from the window base (see [`read`](Self::read) for the widths). A refused
    /// write changes nothing and returns the reason; an accepted status write whose activation failed returns
    /// [`Error::Activation`] (the device then shows DEVICE_NEEDS_RESET).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset >= regs::CONFIG {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                return Err(Error::InvalidAccess {
                    offset,
                    len: data.len(),
                });
            }
            if let Ok(config_offset) = usize::try_from(offset - regs::CONFIG) {
                self.device.write_config(config_offset, data);
            }
            return Ok(());
        }
        let bytes = <[u8; 4]>::try_from(data).map_err(|_| Error::InvalidAccess {
            offset,
            len: data.len(),
        })?;
        if offset % 4 != 0 {
            return Err(Error::InvalidAccess { offset, len: 4 });
        }
        self.write_register(offset, u32::from_le_bytes(bytes))
    }

    /// A 32-bit read of the control register at `offset` (zero when refused, see [`read`](Self::read)).
    pub fn read32(&self, offset: u64) -> Result<u32> {
        let mut bytes = [0; 4];
        self.read(offset, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// A 32-bit write of the control register at `offset`.
    pub fn write32(&mut self, offset: u64, value: u32) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }

    /// An available buffer notification with the value written to `QueueNotify` (the ioeventfd path): the queue
    /// index, or with VIRTIO_F_NOTIFICATION_DATA the notification data (§4.2.3.3). Forwarded to the device model
    /// only for an enabled queue of a live device, and not for a queue waiting in
    /// [`take_reenabled_queues`](Self::take_reenabled_queues) because the device model did not take it from
    /// [`VirtioDevice::enable_queue`] (the model should check such a queue's ring when it receives it).
    pub fn notify(&mut self, value: u32) -> Result<()> {
        let (queue, data) = if self.negotiated().contains(Features::NOTIFICATION_DATA) {
            let data = NotificationData::from_u32(value);
            (data.queue, Some(data))
        } else {
            let queue = u16::try_from(value).map_err(|_| Error::NoSuchQueue { index: value })?;
            (queue, None)
        };
        if !self.live {
            return Err(Error::NotLive);
        }
        let regs = self
            .queues
            .get(usize::from(queue))
            .ok_or(Error::NoSuchQueue {
                index: u32::from(queue),
            })?;
        if !regs.active {
            return Err(Error::QueueNotEnabled { index: queue });
        }
        if self.reenabled.iter().any(|q| q.index == queue) {
            // Enabled again after a per-queue reset but not yet handed to the device model, which will look at the
            // ring when it receives the queue.
            return Ok(());
        }
        self.device.queue_notify(queue, data);
        Ok(())
    }

    fn selected(&self) -> Result<usize> {
        usize::try_from(self.queue_sel)
            .ok()
            .filter(|index| *index < self.queues.len())
            .ok_or(Error::NoSuchQueue {
                index: self.queue_sel,
            })
    }

    /// The selected queue's index and registers.
    fn selected_mut(&mut self) -> Result<(u16, &mut QueueRegs)> {
        let sel = self.queue_sel;
        let index = u16::try_from(sel).map_err(|_| Error::NoSuchQueue { index: sel })?;
        let regs = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(Error::NoSuchQueue { index: sel })?;
        Ok((index, regs))
    }

    /// The selected queue, if its configuration may still change (not enabled).
    fn selected_unlocked(&mut self) -> Result<&mut QueueRegs> {
        let legacy = self.version == MmioVersion::Legacy;
        let (index, regs) = self.selected_mut()?;
        let enabled = if legacy {
            regs.pfn != 0
        } else {
            regs.config.ready
        };
        if enabled {
            return Err(Error::QueueLocked { index });
        }
        Ok(regs)
    }

    fn read_register(&self, offset: u64) -> Result<u32> {
        let access =
            regs::register_access(self.version, offset).ok_or(Error::UnknownRegister { offset })?;
        if !access.read {
            return Err(Error::WriteOnlyRegister { offset });
        }
        let selected = self.selected().ok().and_then(|i| self.queues.get(i));
        Ok(match offset {
            regs::MAGIC => regs::MAGIC_VALUE,
            regs::VERSION => self.version.register_value(),
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => self.vendor_id,
            regs::DEVICE_FEATURES => self.negotiation.offered().window(self.device_features_sel),
            // 0 for a queue that does not exist (§4.2.2).
            regs::QUEUE_NUM_MAX => selected.map_or(0, |q| u32::from(q.config.max_size)),
            regs::QUEUE_READY => selected.map_or(0, |q| u32::from(q.config.ready)),
            regs::QUEUE_PFN => selected.map_or(0, |q| q.pfn),
            // Queue resets complete synchronously: the register never reads 1 (§4.2.2.1).
            regs::QUEUE_RESET => 0,
            // Acquire pairs with the Release in `MmioInterrupt::raise`. Only defined bits are ever set.
            regs::INTERRUPT_STATUS => self.shared.status.load(Ordering::Acquire) & regs::INT_VALID,
            regs::STATUS => u32::from(self.status().bits()),
            // No shared memory regions: length and base of a non-existent region read as all ones (§4.2.2).
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.shared.generation.load(Ordering::Acquire),
            _ => return Err(Error::UnknownRegister { offset }),
        })
    }

    fn write_register(&mut self, offset: u64, value: u32) -> Result<()> {
        let access =
            regs::register_access(self.version, offset).ok_or(Error::UnknownRegister { offset })?;
        if !access.write {
            return Err(Error::ReadOnlyRegister { offset });
        }
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => {
                // Negotiation ignores the write after FEATURES_OK; a legacy driver has no FEATURES_OK, so the
                // features are frozen at DRIVER_OK here.
                if !self.negotiation.is_live() {
                    self.negotiation
                        .write_driver_features(self.driver_features_sel, value);
                }
            }
            regs::GUEST_PAGE_SIZE => self.page_size = value,
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::SHM_SEL => self.shm_sel = value,
            regs::QUEUE_NUM => {
                // A size that does not fit 16 bits is recorded as 0, which activation refuses.
                self.selected_unlocked()?.config.size = u16::try_from(value).unwrap_or(0);
            }
            regs::QUEUE_ALIGN => self.selected_unlocked()?.align = value,
            regs::QUEUE_DESC_LOW => {
                let q = self.selected_unlocked()?;
                q.config.descriptors = set_low(q.config.descriptors, value);
            }
            regs::QUEUE_DESC_HIGH => {
                let q = self.selected_unlocked()?;
                q.config.descriptors = set_high(q.config.descriptors, value);
            }
            regs::QUEUE_DRIVER_LOW => {
                let q = self.selected_unlocked()?;
                q.config.driver_area = set_low(q.config.driver_area, value);
            }
            regs::QUEUE_DRIVER_HIGH => {
                let q = self.selected_unlocked()?;
                q.config.driver_area = set_high(q.config.driver_area, value);
            }
            regs::QUEUE_DEVICE_LOW => {
                let q = self.selected_unlocked()?;
                q.config.device_area = set_low(q.config.device_area, value);
            }
            regs::QUEUE_DEVICE_HIGH => {
                let q = self.selected_unlocked()?;
                q.config.device_area = set_high(q.config.device_area, value);
            }
            regs::QUEUE_READY => return self.write_queue_ready(value),
            regs::QUEUE_PFN => return self.write_queue_pfn(value),
            regs::QUEUE_RESET => return self.write_queue_reset(value),
            regs::QUEUE_NOTIFY => return self.notify(value),
            regs::INTERRUPT_ACK => self.acknowledge(value),
            regs::STATUS => return self.write_status(value),
            _ => return Err(Error::UnknownRegister { offset }),
        }
        Ok(())
    }

    fn write_queue_ready(&mut self, value: u32) -> Result<()> {
        let started = self.negotiation.is_live();
        let ring_reset = self.negotiated().contains(Features::RING_RESET);
        let live = self.live;
        let (index, regs) = self.selected_mut()?;
        let ready = value != 0;
        if ready == regs.config.ready {
            return Ok(());
        }
        if !ready {
            // Stopping a queue (§4.2.2.2): a live queue goes back to the transport first.
            self.stop_queue(index)?;
            if let Some(regs) = self.queues.get_mut(usize::from(index)) {
                regs.config.ready = false;
            }
            return Ok(());
        }
        if !started {
            regs.config.ready = true;
            return Ok(());
        }
        // After DRIVER_OK a queue can only be enabled again after a per-queue reset.
        if !ring_reset {
            return Err(Error::QueueLocked { index });
        }
        if !live {
            return Err(Error::NotLive);
        }
        regs.config.ready = true;
        let config = regs.config;
        self.reenable(index, &config)
    }

    fn write_queue_pfn(&mut self, value: u32) -> Result<()> {
        let started = self.negotiation.is_live();
        let (index, regs) = self.selected_mut()?;
        if value == 0 {
            // "When the driver stops using the queue it writes zero" (§4.2.4).
            self.stop_queue(index)?;
            if let Some(regs) = self.queues.get_mut(usize::from(index)) {
                regs.reset();
            }
            return Ok(());
        }
        // A queue in use must be stopped first; a legacy device cannot take new queues once live.
        if regs.pfn != 0 || started {
            return Err(Error::QueueLocked { index });
        }
        regs.pfn = value;
        regs.config.ready = true;
        Ok(())
    }

    fn write_queue_reset(&mut self, value: u32) -> Result<()> {
        if !self.negotiated().contains(Features::RING_RESET) {
            return Err(Error::FeatureNotNegotiated {
                feature: Features::RING_RESET.bits(),
            });
        }
        let (index, _) = self.selected_mut()?;
        if value != 1 {
            return Ok(());
        }
        self.stop_queue(index)?;
        // Completed synchronously: `QueueReset` and `QueueReady` read 0, the other registers are back to their
        // reset values (§4.2.2.1, §2.6.1).
        if let Some(regs) = self.queues.get_mut(usize::from(index)) {
            regs.reset();
        }
        Ok(())
    }

    /// Takes `index` back from the device model if it holds it.
    fn stop_queue(&mut self, index: u16) -> Result<()> {
        let Some(regs) = self.queues.get(usize::from(index)) else {
            return Err(Error::NoSuchQueue {
                index: u32::from(index),
            });
        };
        if !regs.active {
            return Ok(());
        }
        if let Some(pos) = self.reenabled.iter().position(|q| q.index == index) {
            // Never handed to the device model: drop it here.
            self.reenabled.swap_remove(pos);
        } else if self.device.reset_queue(index).is_none() {
            return Err(Error::QueueResetUnsupported { index });
        }
        if let Some(regs) = self.queues.get_mut(usize::from(index)) {
            regs.active = false;
        }
        Ok(())
    }

    /// Activates a queue enabled again after a per-queue reset and gives it to the device model; a queue the model
    /// hands back waits in `reenabled` for the VMM.
    fn reenable(&mut self, index: u16, config: &QueueConfig) -> Result<()> {
        let features = self.negotiated();
        match DeviceQueue::activate(config, features, self.memory.clone()) {
            Ok(queue) => {
                if let Some(regs) = self.queues.get_mut(usize::from(index)) {
                    regs.active = true;
                }
                if let Some(declined) = self.device.enable_queue(ActiveQueue { index, queue }) {
                    self.reenabled.push(declined);
                }
                Ok(())
            }
            Err(source) => Err(self.fail(Some(index), source)),
        }
    }

    fn acknowledge(&mut self, value: u32) {
        let previous = self.shared.status.fetch_and(!value, Ordering::AcqRel);
        if previous & !value == 0 {
            self.line.lower();
            // An event raised between the `fetch_and` and `lower` must not be lost on a level-triggered line.
            if self.shared.status.load(Ordering::Acquire) != 0 {
                self.line.trigger();
            }
        }
    }

    fn write_status(&mut self, value: u32) -> Result<()> {
        self.sync_needs_reset();
        let current = self.negotiation.status();
        let Ok(value) = u8::try_from(value) else {
            // Bits above the 8-bit status field: refused rather than truncated (0x100 must not reset the device).
            let [low, ..] = value.to_le_bytes();
            return Err(Error::Status(virtio_core::Error::InvalidStatusTransition {
                from: current.bits(),
                to: low,
            }));
        };
        // A version-2 device is modern-only (`Negotiation::modern`): without VERSION_1 FEATURES_OK is refused (the bit
        // stays clear for the driver's re-read) and DRIVER_OK cannot be reached.
        match self
            .negotiation
            .write_status(value)
            .map_err(Error::Status)?
        {
            StatusChange::Reset => {
                self.reset();
                Ok(())
            }
            StatusChange::DriverOk(features) => {
                // Before the device model gets its interrupt handle, which may report DEVICE_NEEDS_RESET from now on.
                self.shared.driver_ok.store(true, Ordering::Release);
                self.activate(features)
            }
            _ => Ok(()),
        }
    }

    /// Device reset (status 0): the device model stops and gives its queues back, every queue register returns to
    /// its reset value (`QueueReady`/`QueuePFN` 0), `InterruptStatus` is cleared (§4.2.2.1, §4.2.4).
    fn reset(&mut self) {
        drop(self.device.reset());
        self.live = false;
        self.reenabled.clear();
        for regs in &mut self.queues {
            regs.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        // `GuestPageSize` survives: drivers write it once at probe, before the reset that starts initialisation.
        // Handles given out before the reset become inert before the status is cleared.
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        self.shared.driver_ok.store(false, Ordering::Release);
        self.shared.needs_reset.store(false, Ordering::Release);
        self.shared.status.store(0, Ordering::Release);
        self.line.lower();
    }

    /// The configuration the device activates for a queue: the registers as written (version 2), or the legacy
    /// layout computed from `QueuePFN`, `GuestPageSize` and `QueueAlign` (§4.2.4, §2.7 legacy layout).
    fn effective_config(
        &self,
        regs: &QueueRegs,
    ) -> core::result::Result<QueueConfig, virtio_core::Error> {
        if self.version == MmioVersion::Modern {
            return Ok(regs.config);
        }
        let base = DeviceAddr::new(u64::from(regs.pfn) * u64::from(self.page_size));
        if !self.page_size.is_power_of_two() {
            return Err(virtio_core::Error::MisalignedArea {
                area: RingArea::Descriptors,
                addr: base,
                align: u16::try_from(self.page_size).unwrap_or(u16::MAX),
            });
        }
        QueueConfig::legacy(
            regs.config.max_size,
            regs.config.size,
            base,
            u64::from(regs.align),
        )
        .ok_or(virtio_core::Error::MisalignedArea {
            area: RingArea::DeviceArea,
            addr: base,
            align: u16::try_from(regs.align).unwrap_or(u16::MAX),
        })
    }

    /// DRIVER_OK: activates every enabled queue and starts the device model. On failure the device shows
    /// DEVICE_NEEDS_RESET and raises a configuration change interrupt (§2.1.2).
    fn activate(&mut self, features: Features) -> Result<()> {
        let mut active = Vec::with_capacity(self.queues.len());
        let mut failure = None;
        for (index, regs) in (0u16..).zip(self.queues.iter()) {
            if !regs.config.ready {
                continue;
            }
            let queue = self
                .effective_config(regs)
                .and_then(|config| DeviceQueue::activate(&config, features, self.memory.clone()));
            match queue {
                Ok(queue) => active.push(ActiveQueue { index, queue }),
                Err(source) => {
                    failure = Some((index, source));
                    break;
                }
            }
        }
        if let Some((index, source)) = failure {
            return Err(self.fail(Some(index), source));
        }
        let interrupt = self.interrupt();
        if let Err(source) = self.device.activate(features, active, interrupt) {
            return Err(self.fail(None, source));
        }
        self.live = true;
        for regs in &mut self.queues {
            regs.active = regs.config.ready;
        }
        Ok(())
    }

    fn fail(&mut self, queue: Option<u16>, source: virtio_core::Error) -> Error {
        // DRIVER_OK is set here (activation, or a queue re-enabled while live).
        self.set_needs_reset();
        Error::Activation { queue, source }
    }
}

fn set_low(addr: DeviceAddr, value: u32) -> DeviceAddr {
    DeviceAddr::new((addr.raw() & !0xffff_ffff) | u64::from(value))
}

fn set_high(addr: DeviceAddr, value: u32) -> DeviceAddr {
    DeviceAddr::new((addr.raw() & 0xffff_ffff) | (u64::from(value) << 32))
}
