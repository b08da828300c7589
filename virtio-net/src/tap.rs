//! A Linux tap device as a [`NetBackend`] (feature `tap`).
//!
//! [`Tap::open`] opens `/dev/net/tun` once per queue pair and attaches each fd to one interface with `TUNSETIFF`
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, plus `IFF_MULTI_QUEUE` for more than one pair), sets the virtio-net
//! header size with `TUNSETVNETHDRSZ` (10 or 12 bytes) and makes every fd non-blocking. Frames cross with one
//! `writev`/`read` system call each and no allocation. [`NetBackend::set_offloads`] maps the receive offloads the
//! driver acked to `TUNSETOFFLOAD` (`TUN_F_CSUM`, `TUN_F_TSO4`, `TUN_F_TSO6`, `TUN_F_TSO_ECN`, `TUN_F_UFO`), so
//! the kernel only hands the device frames the driver can take. Each queue pair's fd is its readiness fd.
//!
//! The interface is not persistent: it disappears when the [`Tap`] is dropped. Configuring it (addresses, up,
//! moving it to a network namespace) is the caller's business (`ip link`, netlink).
//!
//! The system calls are the only `unsafe` code of the crate; each block says which invariant makes it sound.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::string::String;
use std::vec::Vec;

use virtio_core::DeviceSlice;

use crate::backend::{BackendError, NetBackend, Offloads, SendStatus};

/// `IFNAMSIZ`: interface names are at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = 16;

/// Most pieces one [`NetBackend::send`] gather list may have (the device uses 2; [`NetBackend::send_slices`] takes
/// the header and up to this many frame pieces).
pub const MAX_SEND_PIECES: usize = 8;

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on 64-bit Linux, as the kernel expects).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// How to open a [`Tap`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TapConfig {
    /// Interface name or template (`"vsdk%d"`: the kernel picks the number). At most 15 bytes.
    pub name: String,
    /// Queue pairs: one fd each; more than one opens the tap with `IFF_MULTI_QUEUE`.
    pub queue_pairs: u16,
    /// Virtio-net header bytes in front of each frame: 10 (legacy form) or 12 (with `num_buffers`). The device
    /// converts between this and the negotiated form, so 12 is right for every driver.
    pub vnet_header_len: usize,
}

impl TapConfig {
    /// Name template `vsdk%d`, one queue pair, 12-byte headers.
    pub fn new() -> Self {
        Self {
            name: String::from("vsdk%d"),
            queue_pairs: 1,
            vnet_header_len: 12,
        }
    }

    /// Sets the interface name (or a template with `%d`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = String::from(name);
        self
    }

    /// Sets the number of queue pairs (fds).
    pub fn queue_pairs(mut self, pairs: u16) -> Self {
        self.queue_pairs = pairs;
        self
    }

    /// Sets the header length (10 or 12).
    pub fn vnet_header_len(mut self, len: usize) -> Self {
        self.vnet_header_len = len;
        self
    }
}

impl Default for TapConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The `TUNSETOFFLOAD` argument for `offloads` (virtio-net receive offloads → `TUN_F_*`). TSO and UFO bits are
/// only passed with checksum offload, as the kernel requires.
pub fn tun_offload_flags(offloads: Offloads) -> libc::c_uint {
    let mut f = 0;
    if offloads.csum() {
        f |= libc::TUN_F_CSUM;
        if offloads.tso4() {
            f |= libc::TUN_F_TSO4;
        }
        if offloads.tso6() {
            f |= libc::TUN_F_TSO6;
        }
        if offloads.ecn() && (offloads.tso4() || offloads.tso6()) {
            f |= libc::TUN_F_TSO_ECN;
        }
        if offloads.ufo() {
            f |= libc::TUN_F_UFO;
        }
    }
    f
}

fn last_errno() -> BackendError {
    BackendError::Io(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// A tap interface: one non-blocking fd per queue pair.
#[derive(Debug)]
pub struct Tap {
    name: String,
    fds: Vec<OwnedFd>,
    header_len: usize,
    offload_flags: libc::c_uint,
}

impl Tap {
    /// Creates (or attaches to) the tap interface `config.name` with `config.queue_pairs` queues. Needs
    /// `CAP_NET_ADMIN`. Errors: [`BackendError::Io`] with the `errno` of the failing call,
    /// [`BackendError::Unsupported`] for a bad name, header length or queue count.
    pub fn open(config: &TapConfig) -> Result<Self, BackendError> {
        if config.name.len() >= IFNAMSIZ
            || config.name.as_bytes().contains(&0)
            || config.queue_pairs == 0
            || !matches!(config.vnet_header_len, 10 | 12)
        {
            return Err(BackendError::Unsupported);
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if config.queue_pairs > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: libc::c_short::try_from(flags).map_err(|_| BackendError::Unsupported)?,
            _pad: [0; 22],
        };
        if let Some(dst) = req.name.get_mut(..config.name.len()) {
            dst.copy_from_slice(config.name.as_bytes());
        }
        let header_size =
            libc::c_int::try_from(config.vnet_header_len).map_err(|_| BackendError::Unsupported)?;
        let mut fds = Vec::with_capacity(usize::from(config.queue_pairs));
        for _ in 0..config.queue_pairs {
            // SAFETY: the path is a NUL-terminated string literal; `open` does not keep the pointer.
            let raw = unsafe {
                libc::open(
                    c"/dev/net/tun".as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(last_errno());
            }
            // SAFETY: `raw` is a file descriptor `open` just returned and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live, exclusively borrowed
            // `#[repr(C)]` value of that layout and size, and the kernel does not keep the pointer.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
                return Err(last_errno());
            }
            // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points at a live local.
            if unsafe {
                libc::ioctl(
                    fd.as_raw_fd(),
                    libc::TUNSETVNETHDRSZ,
                    &header_size as *const libc::c_int,
                )
            } < 0
            {
                return Err(last_errno());
            }
            fds.push(fd);
        }
        // The kernel wrote the chosen name back (a `%d` template resolved); later fds attached to that name.
        let name = CStr::from_bytes_until_nul(&req.name)
            .map(|c| String::from(c.to_string_lossy()))
            .unwrap_or_default();
        let mut tap = Self {
            name,
            fds,
            header_len: config.vnet_header_len,
            offload_flags: 0,
        };
        tap.apply_offloads(0)?;
        Ok(tap)
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `TUN_F_*` flags last applied with `TUNSETOFFLOAD`.
    pub fn offload_flags(&self) -> libc::c_uint {
        self.offload_flags
    }

    fn apply_offloads(&mut self, flags: libc::c_uint) -> Result<(), BackendError> {
        for fd in &self.fds {
            // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_* bits); no memory is
            // passed.
            if unsafe {
                libc::ioctl(
                    fd.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    libc::c_ulong::from(flags),
                )
            } < 0
            {
                return Err(last_errno());
            }
        }
        self.offload_flags = flags;
        Ok(())
    }

    fn fd(&self, pair: u16) -> Result<RawFd, BackendError> {
        self.fds
            .get(usize::from(pair))
            .map(AsRawFd::as_raw_fd)
            .ok_or(BackendError::Unsupported)
    }
}

impl NetBackend for Tap {
    fn vnet_header_len(&self) -> usize {
        self.header_len
    }

    fn queue_pairs(&self) -> u16 {
        u16::try_from(self.fds.len()).unwrap_or(u16::MAX)
    }

    fn send(&mut self, pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        let fd = self.fd(pair)?;
        let pieces = frame.iter().map(|p| (p.as_ptr(), p.len()));
        // SAFETY: each piece is one of the caller's live slices, valid for reads of its length during the call.
        unsafe { writev_frame(fd, pieces) }
    }

    fn takes_slices(&self) -> bool {
        true
    }

    fn send_slices(
        &mut self,
        pair: u16,
        header: &[u8],
        frame: &[DeviceSlice<'_>],
    ) -> Result<SendStatus, BackendError> {
        let fd = self.fd(pair)?;
        let pieces = core::iter::once((header.as_ptr(), header.len()))
            .chain(frame.iter().map(|s| (s.as_ptr().cast_const(), s.len())));
        // SAFETY: the header is the caller's live slice; each `DeviceSlice` is translated driver memory, valid for
        // `len()` bytes while it is borrowed (for the whole call). The kernel copies the bytes once (`writev`), so
        // a concurrent change by the driver only changes the frame's content, as with any guest buffer.
        unsafe { writev_frame(fd, pieces) }
    }

    fn recv(&mut self, pair: u16, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let fd = self.fd(pair)?;
        // SAFETY: `buf` is an exclusively borrowed, live buffer of `buf.len()` bytes the kernel may write;
        // `fd` is one of our open tap fds.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                // The kernel could not copy the whole frame into `buf` (the frame is consumed).
                Some(libc::EFAULT) | Some(libc::EINVAL) => Err(BackendError::TooLarge {
                    len: buf.len().saturating_add(1),
                    max: buf.len(),
                }),
                errno => Err(BackendError::Io(errno.unwrap_or(0))),
            };
        }
        Ok(usize::try_from(n).ok())
    }

    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), BackendError> {
        self.apply_offloads(tun_offload_flags(offloads))
    }

    fn readiness_fd(&self, pair: u16) -> Option<i32> {
        self.fd(pair).ok()
    }
}

/// Writes one frame given as `(pointer, length)` pieces with one `writev` (empty pieces skipped, at most
/// [`MAX_SEND_PIECES`] + 1 others).
///
/// # Safety
///
/// Each piece's pointer must be valid for reads of its length for the duration of the call.
unsafe fn writev_frame(
    fd: RawFd,
    pieces: impl Iterator<Item = (*const u8, usize)>,
) -> Result<SendStatus, BackendError> {
    let mut iov = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; MAX_SEND_PIECES + 1];
    let mut count = 0usize;
    let mut total = 0usize;
    for (ptr, len) in pieces.filter(|&(_, len)| len != 0) {
        let slot = iov.get_mut(count).ok_or(BackendError::Unsupported)?;
        *slot = libc::iovec {
            iov_base: ptr.cast_mut().cast(),
            iov_len: len,
        };
        count += 1;
        total += len;
    }
    let count = libc::c_int::try_from(count).map_err(|_| BackendError::Unsupported)?;
    // SAFETY: the first `count` entries of `iov` describe pieces the caller guarantees readable for this call
    // (read-only for `writev`, the `*mut` is only the C signature); `fd` is an open tap fd.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(SendStatus::WouldBlock),
            errno => Err(BackendError::Io(errno.unwrap_or(0))),
        };
    }
    if usize::try_from(n).ok() != Some(total) {
        // A tap takes a frame whole or not at all; a short write is an error.
        return Err(BackendError::Io(libc::EIO));
    }
    Ok(SendStatus::Sent)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::feature;

    #[test]
    fn offload_flags_follow_acked_features() {
        assert_eq!(tun_offload_flags(Offloads::default()), 0);
        let all = Offloads::from_features(
            feature::GUEST_CSUM
                | feature::GUEST_TSO4
                | feature::GUEST_TSO6
                | feature::GUEST_ECN
                | feature::GUEST_UFO,
        );
        assert_eq!(
            tun_offload_flags(all),
            libc::TUN_F_CSUM
                | libc::TUN_F_TSO4
                | libc::TUN_F_TSO6
                | libc::TUN_F_TSO_ECN
                | libc::TUN_F_UFO
        );
        // GSO without checksum offload is refused by the kernel: dropped.
        let tso_only = Offloads::from_features(feature::GUEST_TSO4);
        assert_eq!(tun_offload_flags(tso_only), 0);
    }

    #[test]
    fn open_rejects_bad_config() {
        let long = TapConfig::new().name("a-name-longer-than-15");
        assert_eq!(Tap::open(&long).unwrap_err(), BackendError::Unsupported);
        let hdr = TapConfig::new().vnet_header_len(20);
        assert_eq!(Tap::open(&hdr).unwrap_err(), BackendError::Unsupported);
        let none = TapConfig::new().queue_pairs(0);
        assert_eq!(Tap::open(&none).unwrap_err(), BackendError::Unsupported);
    }
}
