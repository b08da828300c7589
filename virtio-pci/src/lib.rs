//! Virtio over PCI (virtio 1.3 §4.1), both roles, on top of `virtio-core`.
//!
//! - **Device side** ([`PciDevice`]): a [`virtio_core::device::VirtioDevice`] presented as a PCI function — modern,
//!   transitional or legacy — with a type-0 configuration space (BAR sizing, capability list, MSI-X, the PCI
//!   configuration access window), the common configuration, notification, ISR and device configuration structures,
//!   and the legacy I/O BAR. A VMM forwards configuration and BAR accesses; interrupts leave through an [`MsiSink`]
//!   or an [`IntxLine`].
//! - **Driver side** ([`PciTransport`]): a [`virtio_core::transport::Transport`] over any [`PciAccess`] (VFIO, a
//!   `no_std` guest's port I/O and mapped BARs, or [`LocalAccess`] to a [`PciDevice`] in the same process), with
//!   checked capability parsing, MSI-X vector assignment with fallback, and interrupt dispatch.
//!
//! ```
//! use std::{cell::RefCell, rc::Rc, sync::Arc};
//! use virtio_core::transport::{InterruptDispatch, Transport};
//! use virtio_core::{Buffer, DeviceAddr, DriverQueue, Features, HeapMemory, QueueConfig, RingFormat, RingLayout};
//! use virtio_pci::mock::{EchoDevice, RecordingMsi};
//! use virtio_pci::{InterruptMode, InterruptSinks, LocalAccess, PciDevice, PciOptions, PciTransport, PciVariant};
//!
//! // Device side: an echo device with one queue, as a modern PCI function with MSI-X.
//! let memory = Arc::new(HeapMemory::new(DeviceAddr::new(0x10_0000), 0x10_0000).unwrap());
//! let msi = RecordingMsi::new();
//! let device = PciDevice::new(
//!     EchoDevice::new(&[64]),
//!     memory.clone(),
//!     PciOptions::new(PciVariant::Modern).config_len(8),
//!     InterruptSinks::new().msi(msi.clone()),
//! )
//! .unwrap();
//!
//! // Driver side, register by register through the emulation.
//! let mut transport = PciTransport::new(LocalAccess::new(Rc::new(RefCell::new(device)))).unwrap();
//! let features = transport.begin_init(Features::VERSION_1 | Features::EVENT_IDX, Features::VERSION_1).unwrap();
//! assert_eq!(transport.setup_interrupts(1, InterruptMode::PerQueueVectors).unwrap(), InterruptMode::PerQueueVectors);
//! let layout = RingLayout::new(RingFormat::Split, 64);
//! let config = QueueConfig::with_layout(transport.max_queue_size(0), &layout, DeviceAddr::new(0x10_0000)).unwrap();
//! let mut queue: DriverQueue<_, u32> = DriverQueue::new(&config, features, memory.clone(), None).unwrap();
//! transport.setup_queue(0, &config).unwrap();
//! transport.finish_init();
//!
//! // Send "ping" with room for the answer; the device answers on MSI-X vector 1 (queue 0).
//! let data = DeviceAddr::new(0x18_0000);
//! virtio_core::DeviceSlice::new(&*memory, data, 4).unwrap().write_at(0, b"ping");
//! queue.add(&[Buffer::new(data, 4)], &[Buffer::new(DeviceAddr::new(0x18_1000), 16)], 1).unwrap();
//! if queue.kick_prepare() {
//!     transport.notify(0, 0);
//! }
//! assert_eq!(msi.take_vectors(), vec![1]);
//! let mut dispatch = InterruptDispatch::new();
//! dispatch.set_queue_callback(0, Box::new(|_| {}));
//! assert_eq!(transport.handle_vector(1, &mut dispatch, |_| queue.has_used()), 1);
//! assert_eq!(queue.pop_used().unwrap().unwrap().len, 4);
//! ```
//!
//! Feature flags: `std`, `vfio` (the `vfio` module: [`PciAccess`] over a function bound to `vfio-pci`, and IOMMU-mapped DMA memory), `test-utils` (the `mock`
//! module: an echo device and recording interrupt sinks).
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod access;
mod config;
mod device;
mod error;
mod interrupt;
pub mod spec;
mod transport;

#[cfg(feature = "test-utils")]
pub mod mock;
// The one module with `unsafe`: DMA mappings (`VFIO_IOMMU_MAP_DMA`) and the ring memory over them.
#[cfg(feature = "vfio")]
#[allow(unsafe_code)]
pub mod vfio;

pub use access::{size_bar, IrqRequest, LocalAccess, MsixCapability, PciAccess, LOCAL_MSI_ADDRESS};
pub use config::{AddressSpace, BarInfo, BarKind};
pub use device::{
    InterruptSinks, NotifyAddress, PciDevice, PciOptions, PciVariant, COMMON_OFFSET, DEVICE_OFFSET,
    ISR_OFFSET, LEGACY_BAR, MODERN_BAR, MSIX_BAR, NOTIFY_OFFSET,
};
pub use error::{Error, Result};
pub use interrupt::{IntxLine, MsiMessage, MsiSink, PciInterrupt};
pub use transport::{
    find_capability, Interface, InterruptMode, ModernLayout, PciTransport, Region,
};
