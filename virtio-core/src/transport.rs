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
