//! The device event loop: one thread waiting in `epoll` on file descriptors (ioeventfds of queue notifications,
//! backend readiness such as a tap or libslirp) and running deferred work items (QEMU's "bottom halves": work queued
//! from any thread, run once on the loop thread).
//!
//! Devices live on this thread: a vCPU exit touches a device's registers under its lock, but queue processing
//! happens here, driven by ioeventfds, without a vCPU exit.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::Error;

/// What a handler wants after it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Keep the registration.
    Continue,
    /// Remove the registration (the fd is no longer watched).
    Remove,
}

/// A handler for readiness of one file descriptor; it gets the events reported and the loop (to add or remove
/// registrations, or queue work).
pub type Handler = Box<dyn FnMut(&mut EventLoop, EventSet) -> Action + Send>;

/// A deferred work item.
pub type Work = Box<dyn FnOnce(&mut EventLoop) + Send>;

/// Token of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u64);

/// Work and stop requests from other threads.
struct Remote {
    wake: EventFd,
    work: Mutex<Vec<Work>>,
    stop: std::sync::atomic::AtomicBool,
}

/// A handle to queue work on, or stop, a running [`EventLoop`] from any thread. Cheap to clone.
#[derive(Clone)]
pub struct LoopHandle {
    remote: Arc<Remote>,
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle").finish_non_exhaustive()
    }
}

impl LoopHandle {
    /// Runs `work` once on the loop thread, soon (after the events being handled).
    pub fn defer(&self, work: impl FnOnce(&mut EventLoop) + Send + 'static) {
        self.remote
            .work
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(work));
        // A failed wake-up write means the counter is saturated: the loop is already woken.
        let _ = self.remote.wake.write(1);
    }

    /// Asks the loop to return from [`EventLoop::run`] after the current iteration.
    pub fn stop(&self) {
        self.remote
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.remote.wake.write(1);
    }
}

const WAKE_TOKEN: u64 = 0;

/// An epoll loop with fd handlers and deferred work.
pub struct EventLoop {
    epoll: Epoll,
    handlers: HashMap<u64, (RawFd, Handler)>,
    next: u64,
    remote: Arc<Remote>,
    local_work: Vec<Work>,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A loop with no registrations.
    pub fn new() -> Result<Self, Error> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&wake),
            EpollEvent::new(EventSet::IN, WAKE_TOKEN),
        )?;
        Ok(Self {
            epoll,
            handlers: HashMap::new(),
            next: WAKE_TOKEN + 1,
            remote: Arc::new(Remote {
                wake,
                work: Mutex::new(Vec::new()),
                stop: std::sync::atomic::AtomicBool::new(false),
            }),
            local_work: Vec::new(),
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            remote: self.remote.clone(),
        }
    }

    /// Watches `fd` for `events` (add [`EventSet::EDGE_TRIGGERED`] for edge-triggered readiness) and calls `handler`
    /// when they occur. The caller keeps `fd` open while registered.
    pub fn add(
        &mut self,
        fd: RawFd,
        events: EventSet,
        handler: impl FnMut(&mut EventLoop, EventSet) -> Action + Send + 'static,
    ) -> Result<Token, Error> {
        let token = self.next;
        self.next += 1;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
        self.handlers.insert(token, (fd, Box::new(handler)));
        Ok(Token(token))
    }

    /// Stops watching the registration `token`.
    pub fn remove(&mut self, token: Token) {
        if let Some((fd, _)) = self.handlers.remove(&token.0) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// Runs `work` on this loop after the events being handled (from the loop thread itself).
    pub fn defer(&mut self, work: impl FnOnce(&mut EventLoop) + Send + 'static) {
        self.local_work.push(Box::new(work));
    }

    fn run_work(&mut self) {
        // Work may queue more work; bound the rounds so a self-requeueing item cannot starve fd handlers.
        for _ in 0..16 {
            let mut work = std::mem::take(&mut self.local_work);
            work.append(
                &mut self
                    .remote
                    .work
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            if work.is_empty() {
                return;
            }
            for item in work {
                item(self);
            }
        }
    }

    /// Handles events until [`LoopHandle::stop`] is called. Returns an error only if `epoll_wait` fails.
    pub fn run(&mut self) -> Result<(), Error> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = if self.local_work.is_empty() { -1 } else { 0 };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for event in events.iter().take(n) {
                let token = event.data();
                if token == WAKE_TOKEN {
                    let _ = self.remote.wake.read();
                    continue;
                }
                // Taken out while it runs so that it can borrow the loop mutably.
                let Some((fd, mut handler)) = self.handlers.remove(&token) else {
                    continue;
                };
                match handler(self, event.event_set()) {
                    Action::Continue => {
                        self.handlers.insert(token, (fd, handler));
                    }
                    Action::Remove => {
                        let _ = self
                            .epoll
                            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                }
            }
            self.run_work();
            if self.remote.stop.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
        }
    }

    /// Runs the loop on a new thread named `vmm-event-loop`; the thread gives the loop back when stopped.
    pub fn spawn(mut self) -> Result<(LoopHandle, JoinHandle<Result<Self, Error>>), Error> {
        let handle = self.handle();
        let thread = std::thread::Builder::new()
            .name("vmm-event-loop".into())
            .spawn(move || {
                self.run()?;
                Ok(self)
            })?;
        Ok((handle, thread))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::assertions_on_constants,
    clippy::cast_possible_truncation,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn event_loop_fd_handler_and_deferred_work_run_on_loop_thread() {
        let mut el = EventLoop::new().unwrap();
        let fd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let hits = Arc::new(AtomicU32::new(0));
        let (h, f) = (hits.clone(), fd.clone());
        el.add(fd.as_raw_fd(), EventSet::IN, move |el, _| {
            let _ = f.read();
            h.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            // A bottom half queued from a handler runs in the same iteration.
            el.defer(move |_| {
                h.fetch_add(10, Ordering::SeqCst);
            });
            Action::Continue
        })
        .unwrap();
        let (handle, thread) = el.spawn().unwrap();
        fd.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while hits.load(Ordering::SeqCst) != 11 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let h = hits.clone();
        handle.defer(move |_| {
            h.fetch_add(100, Ordering::SeqCst);
        });
        handle.stop();
        thread.join().unwrap().unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 111);
    }
}
