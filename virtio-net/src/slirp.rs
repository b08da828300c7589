//! User-mode NAT through libslirp as a [`NetBackend`] (feature `slirp`), like QEMU's `-netdev user`: a guest gets
//! networking without root or a tap. libslirp answers ARP and DHCP, reflects ICMP echo to its host address and
//! NATs TCP/UDP through ordinary host sockets.
//!
//! The backend takes bare Ethernet frames ([`NetBackend::vnet_header_len`] = 0), so the device offers no header
//! offloads with it. [`NetBackend::send`] hands a frame to `slirp_input`; frames libslirp emits (its
//! `send_packet` callback) are queued in pre-allocated slots for [`NetBackend::recv`], and an eventfd
//! ([`NetBackend::readiness_fd`]) is readable while any are queued. libslirp's own sockets and timers advance
//! when the caller runs [`Slirp::poll_once`] (from its event loop, or at least every
//! [`Slirp::poll_timeout`]).
//!
//! This module and `tap` are the only places of the crate with `unsafe` code: the FFI calls and callbacks.
#![allow(unsafe_code)]

use core::cell::{Cell, RefCell};
use core::ffi::{c_char, c_int, c_void};
use core::ptr::NonNull;
use std::boxed::Box;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use std::vec::Vec;

use libslirp_sys as sys;

use crate::backend::{BackendError, NetBackend, SendStatus};

/// The configuration of the emulated network (QEMU's `-netdev user` defaults from [`SlirpConfig::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlirpConfig {
    /// Network address (10.0.2.0).
    pub network: Ipv4Addr,
    /// Netmask (255.255.255.0).
    pub netmask: Ipv4Addr,
    /// The host's (gateway's) address inside the network (10.0.2.2).
    pub host: Ipv4Addr,
    /// First address DHCP hands out (10.0.2.15).
    pub dhcp_start: Ipv4Addr,
    /// The DNS forwarder's address (10.0.2.3).
    pub dns: Ipv4Addr,
    /// Isolate the guest from the outside world (only the emulated services answer).
    pub restricted: bool,
    /// Interface MTU and MRU (1500).
    pub mtu: usize,
    /// Frames libslirp may queue for [`NetBackend::recv`] before more are dropped (256).
    pub rx_slots: usize,
}

impl SlirpConfig {
    /// 10.0.2.0/24, host 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15, MTU 1500, unrestricted.
    pub const fn new() -> Self {
        Self {
            network: Ipv4Addr::new(10, 0, 2, 0),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            host: Ipv4Addr::new(10, 0, 2, 2),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            restricted: false,
            mtu: 1500,
            rx_slots: 256,
        }
    }

    /// Sets `restricted`.
    pub const fn restricted(mut self, restricted: bool) -> Self {
        self.restricted = restricted;
        self
    }

    /// Sets the queued-frame limit.
    pub const fn rx_slots(mut self, slots: usize) -> Self {
        self.rx_slots = slots;
        self
    }
}

impl Default for SlirpConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters of the slirp backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SlirpStats {
    /// Frames libslirp emitted that were dropped because every slot was full.
    pub rx_dropped: u64,
    /// Times libslirp reported a guest error (a malformed frame).
    pub guest_errors: u64,
}

/// One libslirp timer: its callback and expiry (milliseconds on [`Inner::clock_ms`]).
struct Timer {
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    expire_ms: Cell<Option<i64>>,
}

/// State the callbacks reach through libslirp's `opaque` pointer. Only shared references are ever made to it
/// (the callbacks run re-entrantly inside `slirp_input` and `slirp_pollfds_poll`), so all mutation goes through
/// `Cell`/`RefCell` with borrows that never span a call into libslirp.
struct Inner {
    start: Instant,
    /// Frames queued for `recv`, each in a pre-allocated buffer.
    rx: RefCell<VecDeque<Vec<u8>>>,
    /// Empty buffers, `slot_len` capacity each.
    free: RefCell<Vec<Vec<u8>>>,
    slot_len: usize,
    pollfds: RefCell<Vec<libc::pollfd>>,
    timers: RefCell<Vec<NonNull<Timer>>>,
    event: OwnedFd,
    stats: Cell<SlirpStats>,
}

impl Inner {
    fn clock_ns(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn clock_ms(&self) -> i64 {
        self.clock_ns() / 1_000_000
    }

    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to our own eventfd. A full counter (EAGAIN) is fine:
        // the fd is readable either way.
        let _ = unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn clear_signal(&self) {
        let mut value = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local array from our own non-blocking eventfd.
        let _ = unsafe {
            libc::read(
                self.event.as_raw_fd(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
    }

    fn push_frame(&self, frame: &[u8]) {
        let slot = self.free.borrow_mut().pop();
        let Some(mut slot) = slot.filter(|_| frame.len() <= self.slot_len) else {
            let mut s = self.stats.get();
            s.rx_dropped += 1;
            self.stats.set(s);
            return;
        };
        slot.clear();
        slot.extend_from_slice(frame);
        let mut rx = self.rx.borrow_mut();
        rx.push_back(slot);
        if rx.len() == 1 {
            self.signal();
        }
    }
}

/// # Safety
/// `opaque` must be the `Inner` pointer given to `slirp_new` (libslirp passes it back unchanged), alive for the
/// duration of the callback.
unsafe fn inner<'a>(opaque: *mut c_void) -> &'a Inner {
    // SAFETY: per this function's contract `opaque` points at the live `Inner` the `Slirp` owns; only shared
    // references to it exist.
    unsafe { &*opaque.cast::<Inner>() }
}

unsafe extern "C" fn cb_send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: libslirp passes back our `opaque`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    if !buf.is_null() {
        // SAFETY: libslirp hands `len` readable bytes at `buf`, valid for the duration of this callback.
        let frame = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len) };
        inner.push_frame(frame);
    }
    isize::try_from(len).unwrap_or(isize::MAX)
}

unsafe extern "C" fn cb_guest_error(_msg: *const c_char, opaque: *mut c_void) {
    // SAFETY: libslirp passes back our `opaque`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    let mut s = inner.stats.get();
    s.guest_errors += 1;
    inner.stats.set(s);
}

unsafe extern "C" fn cb_clock_get_ns(opaque: *mut c_void) -> i64 {
    // SAFETY: libslirp passes back our `opaque`, the live `Inner`.
    unsafe { inner(opaque) }.clock_ns()
}

unsafe extern "C" fn cb_timer_new(
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    // SAFETY: libslirp passes back our `opaque`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    let timer = NonNull::from(Box::leak(Box::new(Timer {
        cb,
        cb_opaque,
        expire_ms: Cell::new(None),
    })));
    inner.timers.borrow_mut().push(timer);
    timer.as_ptr().cast()
}

unsafe extern "C" fn cb_timer_free(timer: *mut c_void, opaque: *mut c_void) {
    // SAFETY: libslirp passes back our `opaque`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    let mut timers = inner.timers.borrow_mut();
    if let Some(i) = timers.iter().position(|t| t.as_ptr().cast() == timer) {
        let t = timers.swap_remove(i);
        // SAFETY: `t` came from `Box::leak` in `cb_timer_new` and was just removed from the list, so this is
        // the only owner; libslirp does not use a timer after freeing it.
        drop(unsafe { Box::from_raw(t.as_ptr()) });
    }
}

unsafe extern "C" fn cb_timer_mod(timer: *mut c_void, expire_time: i64, opaque: *mut c_void) {
    // SAFETY: libslirp passes back our `opaque`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    let timers = inner.timers.borrow();
    if let Some(t) = timers.iter().find(|t| t.as_ptr().cast() == timer) {
        // SAFETY: `t` is in the list, so it is a live timer from `cb_timer_new`; only shared access is made.
        unsafe { t.as_ref() }.expire_ms.set(Some(expire_time));
    }
}

unsafe extern "C" fn cb_register_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn cb_unregister_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn cb_notify(_opaque: *mut c_void) {}

unsafe extern "C" fn cb_add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: libslirp passes back the `opaque` given to `slirp_pollfds_fill`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    let mut ev: libc::c_short = 0;
    for (s, p) in POLL_MAP {
        if events & s != 0 {
            ev |= p;
        }
    }
    let mut fds = inner.pollfds.borrow_mut();
    fds.push(libc::pollfd {
        fd,
        events: ev,
        revents: 0,
    });
    c_int::try_from(fds.len() - 1).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn cb_get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: libslirp passes back the `opaque` given to `slirp_pollfds_poll`, the live `Inner`.
    let inner = unsafe { inner(opaque) };
    let fds = inner.pollfds.borrow();
    let Some(pfd) = usize::try_from(idx).ok().and_then(|i| fds.get(i)) else {
        return 0;
    };
    let mut out = 0;
    for (s, p) in POLL_MAP {
        if pfd.revents & p != 0 {
            out |= s;
        }
    }
    out
}

const POLL_MAP: [(c_int, libc::c_short); 5] = [
    (sys::SLIRP_POLL_IN, libc::POLLIN),
    (sys::SLIRP_POLL_OUT, libc::POLLOUT),
    (sys::SLIRP_POLL_PRI, libc::POLLPRI),
    (sys::SLIRP_POLL_ERR, libc::POLLERR),
    (sys::SLIRP_POLL_HUP, libc::POLLHUP),
];

static CALLBACKS: sys::SlirpCb = sys::SlirpCb {
    send_packet: Some(cb_send_packet),
    guest_error: Some(cb_guest_error),
    clock_get_ns: Some(cb_clock_get_ns),
    timer_new: Some(cb_timer_new),
    timer_free: Some(cb_timer_free),
    timer_mod: Some(cb_timer_mod),
    register_poll_fd: Some(cb_register_poll_fd),
    unregister_poll_fd: Some(cb_unregister_poll_fd),
    notify: Some(cb_notify),
};

/// A libslirp instance: one emulated network with one guest, as a single-queue [`NetBackend`].
pub struct Slirp {
    slirp: NonNull<sys::Slirp>,
    inner: Box<Inner>,
    /// Gather buffer for frames handed over in pieces (`slirp_input` takes one contiguous frame).
    scratch: Vec<u8>,
}

impl core::fmt::Debug for Slirp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slirp")
            .field("queued", &self.inner.rx.borrow().len())
            .field("stats", &self.inner.stats.get())
            .finish_non_exhaustive()
    }
}

// SAFETY: a `Slirp` owns its libslirp instance, timers and buffers exclusively (nothing is shared with another
// object), and libslirp keeps no thread-affine state: moving the whole to another thread and using it there is
// sound. It is not `Sync` (`&Slirp` gives no access to libslirp anyway).
unsafe impl Send for Slirp {}

impl Slirp {
    /// Starts a libslirp instance (IPv4 only) with `config`. [`BackendError::Io`] if the eventfd cannot be
    /// created, [`BackendError::Unsupported`] if libslirp refuses the configuration.
    pub fn new(config: &SlirpConfig) -> Result<Self, BackendError> {
        // SAFETY: plain system call without pointers.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(BackendError::Io(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        // SAFETY: `raw` is a file descriptor `eventfd` just returned and nothing else owns it.
        let event = unsafe { OwnedFd::from_raw_fd(raw) };
        let slot_len = config.mtu.max(576) + 14;
        let slots = config.rx_slots.max(1);
        let inner = Box::new(Inner {
            start: Instant::now(),
            rx: RefCell::new(VecDeque::with_capacity(slots)),
            free: RefCell::new((0..slots).map(|_| Vec::with_capacity(slot_len)).collect()),
            slot_len,
            pollfds: RefCell::new(Vec::with_capacity(64)),
            timers: RefCell::new(Vec::new()),
            event,
            stats: Cell::new(SlirpStats::default()),
        });
        let unspecified6 = sys::in6_addr { s6_addr: [0; 16] };
        let cfg = sys::SlirpConfig {
            version: 1,
            restricted: c_int::from(config.restricted),
            in_enabled: true,
            vnetwork: config.network.into(),
            vnetmask: config.netmask.into(),
            vhost: config.host.into(),
            in6_enabled: false,
            vprefix_addr6: unspecified6,
            vprefix_len: 0,
            vhost6: unspecified6,
            vhostname: core::ptr::null(),
            tftp_server_name: core::ptr::null(),
            tftp_path: core::ptr::null(),
            bootfile: core::ptr::null(),
            vdhcp_start: config.dhcp_start.into(),
            vnameserver: config.dns.into(),
            vnameserver6: unspecified6,
            vdnssearch: core::ptr::null_mut(),
            vdomainname: core::ptr::null(),
            if_mtu: config.mtu,
            if_mru: config.mtu,
            disable_host_loopback: false,
            enable_emu: false,
            outbound_addr: core::ptr::null(),
            outbound_addr6: core::ptr::null(),
            disable_dns: false,
            disable_dhcp: false,
        };
        let opaque = (&*inner as *const Inner).cast_mut().cast::<c_void>();
        // SAFETY: `cfg` is a version-1 `SlirpConfig` (libslirp reads only the fields of that version) whose
        // pointers are null; libslirp copies what it needs. `CALLBACKS` is a static, so it outlives the
        // instance. `opaque` points at the boxed `Inner`, whose address is stable and which is dropped only after
        // `slirp_cleanup` (see `Drop`); the callbacks only make shared references to it.
        let slirp = unsafe { sys::slirp_new(&cfg, &CALLBACKS, opaque) };
        let slirp = NonNull::new(slirp).ok_or(BackendError::Unsupported)?;
        Ok(Self {
            slirp,
            inner,
            scratch: Vec::with_capacity(crate::MAX_FRAME_LEN),
        })
    }

    fn opaque(&self) -> *mut c_void {
        (&*self.inner as *const Inner).cast_mut().cast()
    }

    /// The backend's counters.
    pub fn stats(&self) -> SlirpStats {
        self.inner.stats.get()
    }

    /// Frames queued for [`NetBackend::recv`].
    pub fn pending(&self) -> usize {
        self.inner.rx.borrow().len()
    }

    /// How long the caller may wait before the next [`poll_once`](Self::poll_once) without delaying libslirp's
    /// timers (capped at one second).
    pub fn poll_timeout(&self) -> Duration {
        let now = self.inner.clock_ms();
        let next = self
            .inner
            .timers
            .borrow()
            .iter()
            // SAFETY: timers in the list are live (see `cb_timer_new`/`cb_timer_free`).
            .filter_map(|t| unsafe { t.as_ref() }.expire_ms.get())
            .min();
        let ms = next.map_or(1000, |e| (e - now).clamp(0, 1000));
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// One round of libslirp's event loop: collects its sockets (`slirp_pollfds_fill`), waits for them with
    /// `poll(2)` for at most `timeout` (or less if a timer is due), lets libslirp service them
    /// (`slirp_pollfds_poll`) and runs expired timers. Frames it emits are queued for [`NetBackend::recv`].
    /// Returns the number of frames queued now.
    pub fn poll_once(&mut self, timeout: Duration) -> Result<usize, BackendError> {
        self.inner.pollfds.borrow_mut().clear();
        let mut slirp_timeout: u32 = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: `self.slirp` is our live instance; `cb_add_poll` gets `opaque` = our live `Inner`; the timeout
        // pointer is a live local. libslirp keeps none of the pointers.
        unsafe {
            sys::slirp_pollfds_fill(
                self.slirp.as_ptr(),
                &mut slirp_timeout,
                Some(cb_add_poll),
                self.opaque(),
            );
        }
        let wait = Duration::from_millis(u64::from(slirp_timeout))
            .min(timeout)
            .min(self.poll_timeout());
        let wait_ms = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
        let result = {
            let mut fds = self.inner.pollfds.borrow_mut();
            let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
            if fds.is_empty() {
                std::thread::sleep(wait);
                0
            } else {
                // SAFETY: `fds` is an exclusively borrowed, live array of `nfds` pollfd entries.
                unsafe { libc::poll(fds.as_mut_ptr(), nfds, wait_ms) }
            }
        };
        let select_error = c_int::from(result < 0);
        // SAFETY: as for `slirp_pollfds_fill`; `cb_get_revents` reads the pollfd array the fill step built.
        unsafe {
            sys::slirp_pollfds_poll(
                self.slirp.as_ptr(),
                select_error,
                Some(cb_get_revents),
                self.opaque(),
            );
        }
        self.run_timers();
        Ok(self.pending())
    }

    fn run_timers(&mut self) {
        loop {
            let now = self.inner.clock_ms();
            let due = self.inner.timers.borrow().iter().copied().find(|t| {
                // SAFETY: timers in the list are live.
                let t = unsafe { t.as_ref() };
                t.expire_ms.get().is_some_and(|e| e <= now)
            });
            let Some(t) = due else { break };
            // The callback may free the timer, so copy what it needs first.
            let (cb, cb_opaque) = {
                // SAFETY: `t` is in the list, so it is a live timer from `cb_timer_new`.
                let timer = unsafe { t.as_ref() };
                timer.expire_ms.set(None);
                (timer.cb, timer.cb_opaque)
            };
            if let Some(cb) = cb {
                // SAFETY: the callback and its argument are the pair libslirp registered with `timer_new`;
                // libslirp may call our callbacks re-entrantly, which only take shared references to `Inner`.
                unsafe { cb(cb_opaque) };
            }
        }
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        // SAFETY: `self.slirp` is our live instance and is not used afterwards; `Inner` (which its callbacks
        // reach) is still alive during the call and dropped after it.
        unsafe { sys::slirp_cleanup(self.slirp.as_ptr()) };
        for t in self.inner.timers.borrow_mut().drain(..) {
            // SAFETY: timers left in the list were never freed by libslirp, came from `Box::leak` and are owned
            // by the list alone.
            drop(unsafe { Box::from_raw(t.as_ptr()) });
        }
    }
}

impl NetBackend for Slirp {
    fn vnet_header_len(&self) -> usize {
        0
    }

    fn send(&mut self, pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        if pair != 0 {
            return Err(BackendError::Unsupported);
        }
        let len: usize = frame.iter().map(|p| p.len()).sum();
        if len > crate::MAX_FRAME_LEN {
            return Err(BackendError::TooLarge {
                len,
                max: crate::MAX_FRAME_LEN,
            });
        }
        let mut pieces = frame.iter().filter(|p| !p.is_empty());
        let contiguous: &[u8] = match (pieces.next(), pieces.next()) {
            (None, _) => return Ok(SendStatus::Sent),
            (Some(one), None) => one,
            _ => {
                self.scratch.clear();
                for p in frame {
                    self.scratch.extend_from_slice(p);
                }
                &self.scratch
            }
        };
        let c_len = c_int::try_from(contiguous.len()).map_err(|_| BackendError::Unsupported)?;
        // SAFETY: `self.slirp` is our live instance; the frame is `c_len` readable bytes that libslirp copies
        // before returning. Callbacks it runs meanwhile only take shared references to `Inner`.
        unsafe { sys::slirp_input(self.slirp.as_ptr(), contiguous.as_ptr(), c_len) };
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, pair: u16, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        if pair != 0 {
            return Err(BackendError::Unsupported);
        }
        let (slot, now_empty) = {
            let mut rx = self.inner.rx.borrow_mut();
            let slot = rx.pop_front();
            (slot, rx.is_empty())
        };
        if now_empty {
            self.inner.clear_signal();
        }
        let Some(slot) = slot else { return Ok(None) };
        let len = slot.len();
        let result = match buf.get_mut(..len) {
            Some(dst) => {
                dst.copy_from_slice(&slot);
                Ok(Some(len))
            }
            None => Err(BackendError::TooLarge {
                len,
                max: buf.len(),
            }),
        };
        self.inner.free.borrow_mut().push(slot);
        result
    }

    fn readiness_fd(&self, pair: u16) -> Option<i32> {
        (pair == 0).then(|| self.inner.event.as_raw_fd())
    }
}
