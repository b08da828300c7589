//! What a driver needs from a transport (driver role), and the initialisation sequence of virtio 1.3 §3.1.1 on top.

use crate::error::{Error, Result};
use crate::queue::QueueConfig;
use crate::spec::{DeviceStatus, Features};

bitflags::bitflags! {
    /// Causes an interrupt acknowledged by the transport (the ISR / InterruptStatus bits, or what an MSI-X vector
    /// stands for).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct InterruptCause: u32 {
        /// A queue has used buffers.
        const QUEUE = 1;
        /// The device configuration changed.
        const CONFIG = 2;
    }
}

/// A driver-side transport: the registers of one virtio device.
pub trait Transport {
    /// Device type id.
    fn device_type(&self) -> u32;
    /// The features the device offers.
    fn device_features(&mut self) -> Features;
    /// Writes the features the driver accepts.
    fn write_driver_features(&mut self, features: Features);
    /// Reads the device status.
    fn status(&mut self) -> DeviceStatus;
    /// Writes the device status (`empty()` resets the device).
    fn write_status(&mut self, status: DeviceStatus);
    /// Largest size of `queue`, 0 if it does not exist or is in use.
    fn max_queue_size(&mut self, queue: u16) -> u16;
    /// Programs size and area addresses of `queue` and enables it.
    fn setup_queue(&mut self, queue: u16, config: &QueueConfig) -> Result<()>;
    /// Disables and forgets `queue` (per-queue reset with VIRTIO_F_RING_RESET, else a no-op that returns an error).
    fn reset_queue(&mut self, queue: u16) -> Result<()>;
    /// Notifies the device about `queue`; `value` is the queue index or, with VIRTIO_F_NOTIFICATION_DATA, the
    /// 32-bit notification data.
    fn notify(&mut self, queue: u16, value: u32);
    /// The configuration generation counter.
    fn config_generation(&mut self) -> u32;
    /// Reads device configuration space at `offset`.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) -> Result<()>;
    /// Writes device configuration space at `offset`.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Result<()>;
    /// Reads and acknowledges the interrupt causes (ISR or InterruptStatus).
    fn ack_interrupt(&mut self) -> InterruptCause;

    /// Resets the device and waits until the status reads back zero.
    fn reset(&mut self) {
        self.write_status(DeviceStatus::empty());
        while !self.status().is_empty() {
            core::hint::spin_loop();
        }
    }

    /// Runs §3.1.1 steps 1–6: reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK and its re-read.
    /// Returns the negotiated features; on failure sets FAILED.
    fn begin_init(&mut self, supported: Features, required: Features) -> Result<Features> {
        self.reset();
        self.write_status(DeviceStatus::ACKNOWLEDGE);
        self.write_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = self.device_features();
        let features = match crate::status::select_features(offered, supported, required) {
            Ok(f) => f,
            Err(e) => {
                let status = self.status();
                self.write_status(status | DeviceStatus::FAILED);
                return Err(e);
            }
        };
        self.write_driver_features(features);
        if features.contains(Features::VERSION_1) {
            let status =
                DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
            self.write_status(status);
            if !self.status().contains(DeviceStatus::FEATURES_OK) {
                let status = self.status();
                self.write_status(status | DeviceStatus::FAILED);
                return Err(Error::FeaturesRejected);
            }
        }
        Ok(features)
    }

    /// §3.1.1 step 8: DRIVER_OK, after the queues are set up.
    fn finish_init(&mut self) {
        let status = self.status();
        self.write_status(status | DeviceStatus::DRIVER_OK);
    }

    /// Reads configuration space consistently: retries while the generation changes under the read.
    fn read_config_consistent(&mut self, offset: usize, data: &mut [u8]) -> Result<()> {
        loop {
            let before = self.config_generation();
            self.read_config(offset, data)?;
            if self.config_generation() == before {
                return Ok(());
            }
        }
    }
}

/// A callback run when a queue has used buffers (Linux's `vq->callback`, run from `vring_interrupt`).
#[cfg(feature = "alloc")]
pub type QueueCallback = alloc::boxed::Box<dyn FnMut(u16) + Send>;

/// A callback run on a configuration-change interrupt.
#[cfg(feature = "alloc")]
pub type ConfigCallback = alloc::boxed::Box<dyn FnMut() + Send>;

/// The driver side of the interrupt path, shared by all transports: per-queue callbacks registered at queue setup,
/// run by a transport's interrupt handler for the queues that have used buffers (Linux `vp_interrupt` →
/// `vring_interrupt` → callback).
#[cfg(feature = "alloc")]
#[derive(Default)]
pub struct InterruptDispatch {
    queues: alloc::vec::Vec<Option<QueueCallback>>,
    config: Option<ConfigCallback>,
}

#[cfg(feature = "alloc")]
impl core::fmt::Debug for InterruptDispatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let registered = self.queues.iter().filter(|c| c.is_some()).count();
        f.debug_struct("InterruptDispatch")
            .field("queue_callbacks", &registered)
            .field("config_callback", &self.config.is_some())
            .finish()
    }
}

#[cfg(feature = "alloc")]
impl InterruptDispatch {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the callback of `queue` (at queue setup), replacing an earlier one.
    pub fn set_queue_callback(&mut self, queue: u16, callback: QueueCallback) {
        let index = usize::from(queue);
        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        if let Some(slot) = self.queues.get_mut(index) {
            *slot = Some(callback);
        }
    }

    /// Forgets the callback of `queue` (queue reset or teardown).
    pub fn clear_queue_callback(&mut self, queue: u16) {
        if let Some(slot) = self.queues.get_mut(usize::from(queue)) {
            *slot = None;
        }
    }

    /// Registers the configuration-change callback.
    pub fn set_config_callback(&mut self, callback: ConfigCallback) {
        self.config = Some(callback);
    }

    /// A vector dedicated to `queue` fired (MSI-X): runs its callback if it has used buffers. Returns whether a
    /// callback ran.
    pub fn queue_interrupt(&mut self, queue: u16, has_used: bool) -> bool {
        match self.queues.get_mut(usize::from(queue)) {
            Some(Some(callback)) if has_used => {
                callback(queue);
                true
            }
            _ => false,
        }
    }

    /// A shared interrupt fired (INTx + ISR, MMIO InterruptStatus, or a vector shared by all queues): `cause` is what
    /// the transport acknowledged. Runs the config callback for CONFIG and the callback of every registered queue
    /// for which `has_used` is true for QUEUE. Returns the number of callbacks run.
    pub fn shared_interrupt(
        &mut self,
        cause: InterruptCause,
        mut has_used: impl FnMut(u16) -> bool,
    ) -> usize {
        let mut ran = 0;
        if cause.contains(InterruptCause::CONFIG) {
            if let Some(callback) = self.config.as_mut() {
                callback();
                ran += 1;
            }
        }
        if cause.contains(InterruptCause::QUEUE) {
            for (queue, slot) in (0u16..).zip(self.queues.iter_mut()) {
                if let Some(callback) = slot {
                    if has_used(queue) {
                        callback(queue);
                        ran += 1;
                    }
                }
            }
        }
        ran
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn dispatch_shared_interrupt_runs_only_queues_with_used_buffers() {
        let hits = Arc::new(AtomicU32::new(0));
        let mut dispatch = InterruptDispatch::new();
        for q in [0u16, 2] {
            let hits = hits.clone();
            dispatch.set_queue_callback(
                q,
                Box::new(move |queue| {
                    hits.fetch_add(1 << (queue * 4), Ordering::Relaxed);
                }),
            );
        }
        let config_hits = hits.clone();
        dispatch.set_config_callback(Box::new(move || {
            config_hits.fetch_add(1 << 28, Ordering::Relaxed);
        }));
        assert_eq!(
            dispatch.shared_interrupt(InterruptCause::QUEUE, |q| q == 2),
            1
        );
        assert_eq!(hits.load(Ordering::Relaxed), 1 << 8);
        assert_eq!(
            dispatch.shared_interrupt(InterruptCause::CONFIG, |_| true),
            1
        );
        assert_eq!(
            dispatch.shared_interrupt(InterruptCause::empty(), |_| true),
            0
        );
        assert!(dispatch.queue_interrupt(0, true));
        assert!(!dispatch.queue_interrupt(1, true), "no callback registered");
        assert!(!dispatch.queue_interrupt(2, false), "nothing used");
        assert_eq!(hits.load(Ordering::Relaxed), (1 << 8) | (1 << 28) | 1);
    }
}
