//! An in-memory backend: two [`PairEnd`]s wired back to back (what one sends, the other receives), or one end in
//! loopback. Each direction of each queue pair is a bounded ring of pre-allocated frame slots behind a mutex, so
//! passing a frame copies it once into a slot and once out, and never allocates.

use std::sync::{Arc, Mutex, PoisonError};
use std::vec::Vec;

use crate::backend::{BackendError, NetBackend, Offloads, SendStatus};

/// A bounded FIFO of frames in fixed slots.
#[derive(Debug)]
struct Ring {
    data: Vec<u8>,
    lens: Vec<usize>,
    slot_len: usize,
    head: usize,
    count: usize,
}

impl Ring {
    fn new(slots: usize, slot_len: usize) -> Self {
        Self {
            data: std::vec![0; slots * slot_len],
            lens: std::vec![0; slots],
            slot_len,
            head: 0,
            count: 0,
        }
    }

    fn push(&mut self, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        let len: usize = frame.iter().map(|p| p.len()).sum();
        if len > self.slot_len {
            return Err(BackendError::TooLarge {
                len,
                max: self.slot_len,
            });
        }
        let slots = self.lens.len();
        if self.count == slots {
            return Ok(SendStatus::WouldBlock);
        }
        let index = (self.head + self.count) % slots;
        let start = index * self.slot_len;
        let mut at = start;
        for piece in frame {
            if let Some(dst) = self.data.get_mut(at..at + piece.len()) {
                dst.copy_from_slice(piece);
            }
            at += piece.len();
        }
        if let Some(l) = self.lens.get_mut(index) {
            *l = len;
        }
        self.count += 1;
        Ok(SendStatus::Sent)
    }

    fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        if self.count == 0 {
            return Ok(None);
        }
        let index = self.head;
        self.head = (self.head + 1) % self.lens.len();
        self.count -= 1;
        let len = self.lens.get(index).copied().unwrap_or(0);
        let start = index * self.slot_len;
        match (buf.get_mut(..len), self.data.get(start..start + len)) {
            (Some(dst), Some(src)) => {
                dst.copy_from_slice(src);
                Ok(Some(len))
            }
            _ => Err(BackendError::TooLarge {
                len,
                max: buf.len(),
            }),
        }
    }
}

/// Sizing of a [`PairEnd`]'s rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairConfig {
    /// Queue pairs (independent channels).
    pub queue_pairs: u16,
    /// Frames each direction of each pair holds before sends report [`SendStatus::WouldBlock`].
    pub slots: usize,
    /// Bytes of virtio-net header kept in front of each frame (0, 10 or 12): with a header, offload requests
    /// cross the pair unchanged, as they cross a tap.
    pub vnet_header_len: usize,
}

impl PairConfig {
    /// One queue pair, 256 slots, 12-byte headers.
    pub const fn new() -> Self {
        Self {
            queue_pairs: 1,
            slots: 256,
            vnet_header_len: 12,
        }
    }

    /// Sets the number of queue pairs.
    pub const fn queue_pairs(mut self, pairs: u16) -> Self {
        self.queue_pairs = pairs;
        self
    }

    /// Sets the slots per direction.
    pub const fn slots(mut self, slots: usize) -> Self {
        self.slots = slots;
        self
    }

    /// Sets the header length (0, 10 or 12).
    pub const fn vnet_header_len(mut self, len: usize) -> Self {
        self.vnet_header_len = len;
        self
    }

    fn slot_len(&self) -> usize {
        self.vnet_header_len + crate::MAX_FRAME_LEN
    }
}

impl Default for PairConfig {
    fn default() -> Self {
        Self::new()
    }
}

type Channels = Arc<Vec<Mutex<Ring>>>;

/// One end of an in-memory link: a [`NetBackend`].
#[derive(Debug)]
pub struct PairEnd {
    tx: Channels,
    rx: Channels,
    header_len: usize,
    offloads: Offloads,
}

fn channels(config: &PairConfig) -> Channels {
    Arc::new(
        (0..config.queue_pairs.max(1))
            .map(|_| Mutex::new(Ring::new(config.slots.max(1), config.slot_len())))
            .collect(),
    )
}

impl PairEnd {
    /// Two ends wired back to back.
    pub fn pair(config: PairConfig) -> (Self, Self) {
        let (a, b) = (channels(&config), channels(&config));
        let end = |tx: &Channels, rx: &Channels| Self {
            tx: tx.clone(),
            rx: rx.clone(),
            header_len: config.vnet_header_len,
            offloads: Offloads::default(),
        };
        (end(&a, &b), end(&b, &a))
    }

    /// One end whose sends come back as its own receives.
    pub fn loopback(config: PairConfig) -> Self {
        let a = channels(&config);
        Self {
            tx: a.clone(),
            rx: a,
            header_len: config.vnet_header_len,
            offloads: Offloads::default(),
        }
    }

    /// The offloads last set by the device.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Frames waiting to be received on `pair`.
    pub fn pending(&self, pair: u16) -> usize {
        self.rx.get(usize::from(pair)).map_or(0, |r| {
            r.lock().unwrap_or_else(PoisonError::into_inner).count
        })
    }

    fn ring(channels: &Channels, pair: u16) -> Result<&Mutex<Ring>, BackendError> {
        channels
            .get(usize::from(pair))
            .ok_or(BackendError::Unsupported)
    }
}

impl NetBackend for PairEnd {
    fn vnet_header_len(&self) -> usize {
        self.header_len
    }

    fn queue_pairs(&self) -> u16 {
        u16::try_from(self.tx.len()).unwrap_or(u16::MAX)
    }

    fn send(&mut self, pair: u16, frame: &[&[u8]]) -> Result<SendStatus, BackendError> {
        Self::ring(&self.tx, pair)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(frame)
    }

    fn recv(&mut self, pair: u16, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        Self::ring(&self.rx, pair)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop(buf)
    }

    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), BackendError> {
        self.offloads = offloads;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pair_passes_frames_both_ways_and_bounds_them() {
        let (mut a, mut b) = PairEnd::pair(PairConfig::new().slots(2).vnet_header_len(0));
        assert_eq!(a.send(0, &[b"he", b"llo"]).unwrap(), SendStatus::Sent);
        assert_eq!(a.send(0, &[b"x"]).unwrap(), SendStatus::Sent);
        assert_eq!(a.send(0, &[b"y"]).unwrap(), SendStatus::WouldBlock);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(b.recv(0, &mut buf).unwrap(), Some(1));
        assert_eq!(b.recv(0, &mut buf).unwrap(), None);
        assert_eq!(a.recv(0, &mut buf).unwrap(), None);
        assert_eq!(a.send(1, &[b"z"]), Err(BackendError::Unsupported));
        let big = std::vec![0u8; crate::MAX_FRAME_LEN + 1];
        assert!(matches!(
            a.send(0, &[&big]),
            Err(BackendError::TooLarge { .. })
        ));
    }

    #[test]
    fn loopback_returns_own_frames() {
        let mut l = PairEnd::loopback(PairConfig::new().queue_pairs(2));
        l.send(1, &[b"ping"]).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(l.recv(0, &mut buf).unwrap(), None);
        assert_eq!(l.recv(1, &mut buf).unwrap(), Some(4));
    }
}
