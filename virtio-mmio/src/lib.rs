//! Virtio over MMIO (virtio 1.3 §4.2): both register interfaces (version 2, and the legacy version 1 of §4.2.4), in
//! both roles.
//!
//! - **Device role** ([`MmioDevice`]): the register window a VMM exposes for a [`VirtioDevice`] model. The VMM
//!   forwards MMIO exits to [`MmioDevice::read`] / [`MmioDevice::write`] (or an ioeventfd to
//!   [`MmioDevice::notify`]); status and feature writes run through [`virtio_core::Negotiation`]; at DRIVER_OK the
//!   enabled queues become [`DeviceQueue`](virtio_core::DeviceQueue)s handed to the model with an [`MmioInterrupt`],
//!   which sets `InterruptStatus` and raises the VMM's [`IrqLine`].
//! - **Driver role** ([`MmioTransport`]): a [`Transport`](virtio_core::transport::Transport) over the registers of a
//!   device, reached through [`MmioRegisters`]: [`VolatileRegisters`] for a mapped window (a guest kernel,
//!   firmware), or an in-process `MmioDevice` in a `RefCell` (or `Mutex`, feature `std`) for tests and loopback.
//!
//! The transport is thin (DESIGN §3.9): it turns register accesses into `virtio-core` calls and contains no ring
//! logic. Nothing the peer writes makes it panic: a refused register access has no effect and returns an
//! [`Error`].
//!
//! ```
//! use std::cell::RefCell;
//! use std::sync::Arc;
//! use virtio_core::device::{ActiveQueue, VirtioDevice};
//! use virtio_core::transport::Transport;
//! use virtio_core::{DeviceAddr, Features, HeapMemory, NotificationData, RingFormat};
//! use virtio_mmio::{IrqLine, MmioDevice, MmioInterrupt, MmioTransport, MmioVersion};
//!
//! /// A device model with one queue of 8 entries.
//! #[derive(Default)]
//! struct Tiny {
//!     queues: Vec<ActiveQueue<Arc<HeapMemory>>>,
//! }
//!
//! impl VirtioDevice for Tiny {
//!     type Memory = Arc<HeapMemory>;
//!     type Interrupt = MmioInterrupt;
//!     fn device_type(&self) -> u32 { virtio_core::device_type::RNG }
//!     fn queue_max_sizes(&self) -> &[u16] { &[8] }
//!     fn offered_features(&self) -> Features { Features::VERSION_1 }
//!     fn read_config(&self, _offset: usize, data: &mut [u8]) { data.fill(0) }
//!     fn write_config(&mut self, _offset: usize, _data: &[u8]) {}
//!     fn activate(
//!         &mut self,
//!         _features: Features,
//!         queues: Vec<ActiveQueue<Self::Memory>>,
//!         _interrupt: MmioInterrupt,
//!     ) -> virtio_core::Result<()> {
//!         self.queues = queues;
//!         Ok(())
//!     }
//!     fn reset(&mut self) -> Vec<ActiveQueue<Self::Memory>> { std::mem::take(&mut self.queues) }
//!     fn queue_notify(&mut self, _queue: u16, _data: Option<NotificationData>) {}
//! }
//!
//! /// The VMM's interrupt line (an irqfd in a real VMM).
//! struct Line;
//! impl IrqLine for Line {
//!     fn trigger(&self) {}
//! }
//!
//! let memory = Arc::new(HeapMemory::new(DeviceAddr::new(0x1_0000), 0x4000).unwrap());
//! let device = MmioDevice::new(Tiny::default(), memory, Arc::new(Line), MmioVersion::Modern).unwrap();
//!
//! // The driver side reaches the device register by register, as a guest does.
//! let mut transport = MmioTransport::from_registers(RefCell::new(device), 0x200).unwrap();
//! transport.begin_init(Features::VERSION_1, Features::VERSION_1).unwrap();
//! let config = transport
//!     .queue_placement()
//!     .queue_config(RingFormat::Split, 8, 8, DeviceAddr::new(0x1_0000))
//!     .unwrap();
//! transport.setup_queue(0, &config).unwrap();
//! transport.finish_init();
//! assert!(transport.registers().borrow().is_live());
//! assert_eq!(transport.registers().borrow().device().queues.len(), 1);
//! ```
//!
//! Feature flags: `std` (`std::error::Error` for the error types, and `MmioRegisters` for `Mutex<MmioDevice>`).
//!
//! [`VirtioDevice`]: virtio_core::device::VirtioDevice
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod device;
mod driver;
mod error;
mod loopback;
pub mod regs;
#[allow(unsafe_code)]
mod volatile_regs;

pub use device::{IrqLine, MmioDevice, MmioInterrupt};
pub use driver::{
    MmioRegisters, MmioTransport, QueuePlacement, LEGACY_CONFIG_READ_ATTEMPTS, LEGACY_PAGE_SIZE,
    LEGACY_QUEUE_ALIGN, QUEUE_RESET_POLL_LIMIT,
};
pub use error::{Error, Result};
pub use regs::MmioVersion;
pub use volatile_regs::VolatileRegisters;
