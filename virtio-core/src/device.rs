//! What a device model implements, and what a transport gives it (device role).
//!
//! A transport (virtio-mmio, virtio-pci) owns the register state and a [`crate::Negotiation`]; on DRIVER_OK it
//! activates one [`DeviceQueue`] per enabled queue and hands them to the device with an [`Interrupt`]; on a notify
//! register write it calls [`VirtioDevice::queue_notify`].

use alloc::vec::Vec;

use crate::error::Result;
use crate::memory::RingMemory;
use crate::queue::NotificationData;
use crate::ring::DeviceQueue;
use crate::spec::Features;

/// How a device raises interrupts; implemented by the transport (MSI-X vector, INTx + ISR, MMIO InterruptStatus).
pub trait Interrupt {
    /// Signals that `queue` has used buffers (after `needs_notification` said so).
    fn signal_queue(&self, queue: u16);
    /// Signals a configuration change (the transport bumps the config generation).
    fn signal_config(&self);
    /// Reports that the device hit an error it cannot recover from: the transport sets DEVICE_NEEDS_RESET and sends
    /// a configuration-change notification (virtio 1.3 §2.1.2). The default only notifies; transports override it.
    fn signal_needs_reset(&self) {
        self.signal_config();
    }
}

/// A live queue handed to a device at activation.
#[derive(Debug)]
pub struct ActiveQueue<M> {
    /// Queue index.
    pub index: u16,
    /// The queue.
    pub queue: DeviceQueue<M>,
}

/// A virtio device model (the VMM side). Transports drive it; it never sees registers.
pub trait VirtioDevice {
    /// Memory the device's queues live in.
    type Memory: RingMemory;
    /// The interrupt handle the transport provides.
    type Interrupt: Interrupt;

    /// Device type id (virtio 1.3 §5; e.g. [`crate::device_type::NET`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the slice length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Features offered to the driver, device-specific and transport bits together.
    fn offered_features(&self) -> Features;

    /// Reads device configuration space at `offset`; bytes beyond the space read as zero.
    fn read_config(&self, offset: usize, data: &mut [u8]);

    /// Writes device configuration space at `offset`; writes beyond the space are ignored.
    fn write_config(&mut self, offset: usize, data: &[u8]);

    /// Starts the device with the negotiated features and its live queues (DRIVER_OK). An error tells the transport
    /// to set DEVICE_NEEDS_RESET.
    fn activate(
        &mut self,
        features: Features,
        queues: Vec<ActiveQueue<Self::Memory>>,
        interrupt: Self::Interrupt,
    ) -> Result<()>;

    /// Returns to the pre-activation state, giving back the queues (device reset).
    fn reset(&mut self) -> Vec<ActiveQueue<Self::Memory>>;

    /// The driver notified `queue`; `data` is set with VIRTIO_F_NOTIFICATION_DATA.
    fn queue_notify(&mut self, queue: u16, data: Option<NotificationData>);

    /// Per-queue reset (VIRTIO_F_RING_RESET): stop `queue` and give it back. The default reports that the device
    /// does not support it by returning `None`.
    fn reset_queue(&mut self, queue: u16) -> Option<DeviceQueue<Self::Memory>> {
        let _ = queue;
        None
    }

    /// Re-enables a queue after a per-queue reset, while the device stays live. Returns the queue back if the
    /// device does not take it (the default).
    fn enable_queue(
        &mut self,
        queue: ActiveQueue<Self::Memory>,
    ) -> Option<ActiveQueue<Self::Memory>> {
        Some(queue)
    }
}
