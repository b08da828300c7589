//! virtio-net on virtio-core: the wire formats, a device model for VMMs ([`device::NetDevice`] over a
//! [`backend::NetBackend`]) and a driver for VFIO userspace programs and `no_std` guests ([`driver::NetDriver`]).
//!
//! - [`wire`]: `virtio_net_hdr` (10, 12 and 20-byte forms), configuration space, control commands, feature bits
//!   (virtio 1.3 §5.1), as checked byte views.
//! - [`backend`]: the non-blocking backend trait; `pair` (feature `std`): an in-memory backend, two ends back to
//!   back or a loopback; `tap` (feature `tap`, Linux): a tap device with virtio-net headers and offloads;
//!   `slirp` (feature `slirp`): user-mode NAT through libslirp, like QEMU's `-netdev user`.
//! - [`device`]: `NetDevice`, a [`virtio_core::device::VirtioDevice`] that any transport can present.
//! - [`driver`]: `NetDriver`, over any [`virtio_core::transport::Transport`].
//!
//! No allocation happens per packet on either side: scratch buffers and chains are sized at activation.
//!
//! ```
//! use virtio_net::wire::{CtrlCommand, Header, HeaderLen, HeaderRepr, gso};
//!
//! let repr = HeaderRepr::new().with_checksum(34, 16).with_gso(gso::TCPV4, 1448, 54);
//! let bytes = repr.to_bytes(HeaderLen::Modern);
//! let parsed = HeaderRepr::parse(&Header::new_checked(&bytes[..12]).unwrap());
//! assert_eq!(parsed, repr);
//!
//! let mut buf = [0u8; 8];
//! let n = CtrlCommand::MqVqPairsSet(4).emit(&mut buf).unwrap();
//! assert_eq!(CtrlCommand::parse(&buf[..n]).unwrap(), CtrlCommand::MqVqPairsSet(4));
//! ```
#![no_std]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backend;
pub mod device;
pub mod driver;
mod error;
#[cfg(feature = "std")]
pub mod pair;
#[cfg(feature = "slirp")]
pub mod slirp;
#[cfg(all(feature = "tap", target_os = "linux"))]
pub mod tap;
pub mod wire;

pub use error::{DropReason, NetCounters, NetError, Result};

/// The longest Ethernet frame (without the virtio-net header) either side accepts: 64 KiB of payload plus the
/// 14-byte Ethernet header (65 550 bytes), enough for a maximal TSO/UFO frame. Longer frames are dropped as
/// [`DropReason::FrameTooLarge`] by the device and refused with [`NetError::FrameTooLarge`] by the driver.
pub const MAX_FRAME_LEN: usize = 65_536 + 14;
