//! One virtio ring implementation for both roles (device and driver) and both layouts (split and packed).
//!
//! - A **device backend** (a VMM, or a device emulated in a test) activates a [`DeviceQueue`] from the
//!   [`QueueConfig`] the driver wrote, pops [`Chain`]s, and returns them with `add_used`.
//! - A **driver** (a VFIO userspace driver, or a `no_std` guest kernel) creates a [`DriverQueue`], `add`s buffers,
//!   asks `kick_prepare` whether to notify, and collects [`Used`] buffers.
//!
//! Ring memory is reached through [`RingMemory`], which translates device addresses (guest-physical, IOVA or
//! physical) into host pointers. Peer-written data is validated and read once; a misbehaving peer yields an
//! [`Error`] for which [`Error::is_peer_fault`] is true, and the queue refuses work until it is reset.
//!
//! ```
//! use virtio_core::{Buffer, DeviceAddr, DeviceQueue, DriverQueue, Features, HeapMemory, QueueConfig, RingFormat, RingLayout};
//!
//! let memory = HeapMemory::new(DeviceAddr::new(0), 64 * 1024).unwrap();
//! let features = Features::VERSION_1 | Features::RING_PACKED | Features::EVENT_IDX;
//! let layout = RingLayout::new(RingFormat::Packed, 64);
//! let config = QueueConfig::with_layout(64, &layout, DeviceAddr::new(0)).unwrap();
//!
//! let mut driver: DriverQueue<_, u32> = DriverQueue::new(&config, features, &memory, None).unwrap();
//! let mut device = DeviceQueue::activate(&config, features, &memory).unwrap();
//!
//! // The driver offers 64 writable bytes at 0x8000 and notifies.
//! driver.add(&[], &[Buffer::new(DeviceAddr::new(0x8000), 64)], 7).unwrap();
//! assert!(driver.kick_prepare());
//!
//! // The device fills it.
//! let chain = device.pop().unwrap().unwrap();
//! let (token, mut writer) = (chain.token(), chain.writer());
//! writer.write(b"hello").unwrap();
//! let written = writer.written();
//! device.add_used(token, written).unwrap();
//! assert!(device.needs_notification());
//!
//! let used = driver.pop_used().unwrap().unwrap();
//! assert_eq!((used.token, used.len), (7, 5));
//! ```
//!
//! Feature flags: `alloc` (the queues, chains and device traits), `std`, `vm-memory` (a [`RingMemory`] adapter for
//! rust-vmm guest memory), `test-utils` (a mock driver and a mock device for testing your own device or driver).
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
#[allow(unsafe_code)]
pub mod memory;
mod queue;
mod spec;
mod status;

#[cfg(feature = "alloc")]
mod chain;
#[cfg(feature = "alloc")]
pub mod device;
#[cfg(feature = "alloc")]
pub mod packed;
#[cfg(feature = "alloc")]
mod ring;
#[cfg(feature = "alloc")]
pub mod split;
pub mod transport;

#[cfg(feature = "test-utils")]
pub mod mock;

pub use error::{Error, Result, RingArea};
#[cfg(feature = "alloc")]
pub use memory::HeapMemory;
#[cfg(feature = "vm-memory")]
pub use memory::VmMemory;
pub use memory::{ContiguousMemory, DeviceAddr, DeviceSlice, OffsetMemory, RingMemory};
pub use queue::{NotificationData, QueueConfig, RingFeatures, RingFormat, RingLayout, UsedToken};
pub use spec::{device_type, ring as ring_flags, DeviceStatus, Features};
pub use status::{select_features, Negotiation, StatusChange};

#[cfg(feature = "alloc")]
pub use chain::{Chain, ChainReader, ChainRef, ChainWriter, Segment};
#[cfg(feature = "alloc")]
pub use ring::{
    Buffer, DeviceQueue, DriverQueue, InOrderBatch, IndirectPool, Popped, SingleBuffer, Used,
};
