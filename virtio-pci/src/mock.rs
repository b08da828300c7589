//! Test doubles (feature `test-utils`): an echo device model to put behind a [`crate::PciDevice`], and interrupt sinks
//! that record what the device raised, so that drivers and VMM glue can be tested in-process.
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use std::sync::Arc;
//! use virtio_core::transport::Transport;
//! use virtio_core::{DeviceAddr, Features, HeapMemory};
//! use virtio_pci::mock::{EchoDevice, RecordingIntx, RecordingMsi};
//! use virtio_pci::{InterruptSinks, LocalAccess, PciDevice, PciOptions, PciTransport, PciVariant};
//!
//! let memory = Arc::new(HeapMemory::new(DeviceAddr::new(0x10_0000), 0x10_0000).unwrap());
//! let msi = RecordingMsi::new();
//! let device = PciDevice::new(
//!     EchoDevice::new(&[16, 16]),
//!     memory,
//!     PciOptions::new(PciVariant::Modern).config_len(8),
//!     InterruptSinks::new().msi(msi.clone()).intx(RecordingIntx::new()),
//! )
//! .unwrap();
//! let mut transport = PciTransport::new(LocalAccess::new(Rc::new(RefCell::new(device)))).unwrap();
//! let features = transport.begin_init(Features::VERSION_1, Features::VERSION_1).unwrap();
//! assert!(features.contains(Features::VERSION_1));
//! ```

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use std::sync::Mutex;

use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::{device_type, Chain, DeviceQueue, Features, HeapMemory, NotificationData};

use crate::interrupt::{IntxLine, MsiMessage, MsiSink, PciInterrupt};

/// Bytes of [`EchoDevice`] configuration space: a little-endian u32 the test changes, and a u32 counting
/// activations.
pub const ECHO_CONFIG_LEN: usize = 8;

/// A device that answers every chain with its readable bytes reversed (truncated to the writable space), on any
/// number of queues, and signals when the driver wants it.
#[derive(Debug)]
pub struct EchoDevice {
    device_type: u32,
    max_sizes: Vec<u16>,
    features: Features,
    config: [u8; ECHO_CONFIG_LEN],
    queues: Vec<Option<(DeviceQueue<Arc<HeapMemory>>, Chain)>>,
    interrupt: Option<PciInterrupt>,
    negotiated: Features,
    processed: u64,
    faults: u64,
    fail_activation: bool,
    scratch: Vec<u8>,
}

impl EchoDevice {
    /// An entropy-source-typed (4, which has a transitional PCI id) device with queues of the given maximum sizes,
    /// offering every ring feature: INDIRECT_DESC, EVENT_IDX, VERSION_1, RING_PACKED, IN_ORDER, NOTIFICATION_DATA,
    /// RING_RESET.
    pub fn new(max_sizes: &[u16]) -> Self {
        Self::with_features(
            max_sizes,
            Features::INDIRECT_DESC
                | Features::EVENT_IDX
                | Features::VERSION_1
                | Features::RING_PACKED
                | Features::IN_ORDER
                | Features::NOTIFICATION_DATA
                | Features::RING_RESET,
        )
    }

    /// As [`new`](Self::new), offering `features`.
    pub fn with_features(max_sizes: &[u16], features: Features) -> Self {
        Self {
            device_type: device_type::RNG,
            max_sizes: max_sizes.to_vec(),
            features,
            config: [0; ECHO_CONFIG_LEN],
            queues: max_sizes.iter().map(|_| None).collect(),
            interrupt: None,
            negotiated: Features::empty(),
            processed: 0,
            faults: 0,
            fail_activation: false,
            scratch: Vec::new(),
        }
    }

    /// Presents another device type (its PCI ids follow).
    pub fn device_type_id(mut self, device_type: u32) -> Self {
        self.device_type = device_type;
        self
    }

    /// Makes the next activation fail (the transport then sets DEVICE_NEEDS_RESET).
    pub fn fail_next_activation(&mut self) {
        self.fail_activation = true;
    }

    /// Changes the first configuration word and sends a configuration change notification (if active).
    pub fn change_config(&mut self, value: u32) {
        if let Some(word) = self.config.get_mut(..4) {
            word.copy_from_slice(&value.to_le_bytes());
        }
        if let Some(i) = &self.interrupt {
            i.signal_config();
        }
    }

    /// Whether the device is active (between DRIVER_OK and reset).
    pub fn is_active(&self) -> bool {
        self.interrupt.is_some()
    }

    /// The interrupt handle the device got at activation (what a device thread would keep).
    pub fn interrupt_handle(&self) -> Option<PciInterrupt> {
        self.interrupt.clone()
    }

    /// Which queues are live.
    pub fn live_queues(&self) -> Vec<u16> {
        (0u16..)
            .zip(&self.queues)
            .filter_map(|(i, q)| q.is_some().then_some(i))
            .collect()
    }

    /// The features the device was activated with.
    pub fn negotiated(&self) -> Features {
        self.negotiated
    }

    /// Chains answered so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Peer faults seen (each also sets DEVICE_NEEDS_RESET).
    pub fn faults(&self) -> u64 {
        self.faults
    }

    fn install(&mut self, queue: ActiveQueue<Arc<HeapMemory>>) {
        let chain = queue.queue.new_chain();
        if let Some(slot) = self.queues.get_mut(usize::from(queue.index)) {
            *slot = Some((queue.queue, chain));
        }
    }

    fn process(&mut self, index: u16) {
        let Some(Some((queue, chain))) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        let mut fault = false;
        loop {
            match queue.pop_into(chain) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    fault = true;
                    break;
                }
            }
            self.scratch.clear();
            self.scratch.resize(chain.readable_len() as usize, 0);
            let memory = queue.memory();
            if chain.reader(memory).read(&mut self.scratch).is_err() {
                fault = true;
                break;
            }
            self.scratch.reverse();
            let mut writer = chain.writer(memory);
            if writer.write(&self.scratch).is_err() {
                fault = true;
                break;
            }
            let written = writer.written();
            if queue.add_used(chain.token(), written).is_err() {
                fault = true;
                break;
            }
            self.processed += 1;
        }
        let notify = queue.needs_notification();
        if let Some(i) = &self.interrupt {
            if fault {
                self.faults += 1;
                i.signal_needs_reset();
            } else if notify {
                i.signal_queue(index);
            }
        }
    }
}

impl VirtioDevice for EchoDevice {
    type Memory = Arc<HeapMemory>;
    type Interrupt = PciInterrupt;

    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn offered_features(&self) -> Features {
        self.features
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in (offset..).zip(data.iter_mut()) {
            *b = self.config.get(i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in (offset..).zip(data) {
            if let Some(c) = self.config.get_mut(i) {
                *c = *b;
            }
        }
    }

    fn activate(
        &mut self,
        features: Features,
        queues: Vec<ActiveQueue<Self::Memory>>,
        interrupt: Self::Interrupt,
    ) -> virtio_core::Result<()> {
        if core::mem::take(&mut self.fail_activation) {
            return Err(virtio_core::Error::QueueNotReady);
        }
        for q in queues {
            self.install(q);
        }
        self.negotiated = features;
        self.interrupt = Some(interrupt);
        let count = u32::from_le_bytes([
            self.config.get(4).copied().unwrap_or(0),
            self.config.get(5).copied().unwrap_or(0),
            self.config.get(6).copied().unwrap_or(0),
            self.config.get(7).copied().unwrap_or(0),
        ]);
        if let Some(word) = self.config.get_mut(4..8) {
            word.copy_from_slice(&count.wrapping_add(1).to_le_bytes());
        }
        Ok(())
    }

    fn reset(&mut self) -> Vec<ActiveQueue<Self::Memory>> {
        self.interrupt = None;
        self.negotiated = Features::empty();
        (0u16..)
            .zip(self.queues.iter_mut())
            .filter_map(|(index, slot)| slot.take().map(|(queue, _)| ActiveQueue { index, queue }))
            .collect()
    }

    fn queue_notify(&mut self, queue: u16, _data: Option<NotificationData>) {
        self.process(queue);
    }

    fn enable_queue(
        &mut self,
        queue: ActiveQueue<Self::Memory>,
    ) -> Option<ActiveQueue<Self::Memory>> {
        self.install(queue);
        None
    }

    fn reset_queue(&mut self, queue: u16) -> Option<DeviceQueue<Self::Memory>> {
        self.queues
            .get_mut(usize::from(queue))
            .and_then(Option::take)
            .map(|(q, _)| q)
    }
}

/// An [`MsiSink`] that records every message (clone it: clones share the record).
#[derive(Debug, Clone, Default)]
pub struct RecordingMsi {
    messages: Arc<Mutex<Vec<MsiMessage>>>,
}

impl RecordingMsi {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the messages recorded so far.
    pub fn take(&self) -> Vec<MsiMessage> {
        self.messages
            .lock()
            .map(|mut m| core::mem::take(&mut *m))
            .unwrap_or_default()
    }

    /// Takes the vectors recorded so far.
    pub fn take_vectors(&self) -> Vec<u16> {
        self.take().into_iter().map(|m| m.vector).collect()
    }
}

impl MsiSink for RecordingMsi {
    fn signal(&self, message: MsiMessage) {
        if let Ok(mut m) = self.messages.lock() {
            m.push(message);
        }
    }
}

/// An [`IntxLine`] that remembers its level and counts rising edges (clone it: clones share the state).
#[derive(Debug, Clone, Default)]
pub struct RecordingIntx {
    state: Arc<Mutex<(bool, u64)>>,
}

impl RecordingIntx {
    /// A deasserted line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the line is asserted.
    pub fn level(&self) -> bool {
        self.state.lock().map(|s| s.0).unwrap_or(false)
    }

    /// Rising edges so far.
    pub fn assertions(&self) -> u64 {
        self.state.lock().map(|s| s.1).unwrap_or(0)
    }
}

impl IntxLine for RecordingIntx {
    fn set_level(&self, asserted: bool) {
        if let Ok(mut s) = self.state.lock() {
            if asserted && !s.0 {
                s.1 += 1;
            }
            s.0 = asserted;
        }
    }
}

/// A buffer of `len` bytes for tests.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, b) in v.iter_mut().enumerate() {
        *b = seed.wrapping_add(u8::try_from(i % 251).unwrap_or(0));
    }
    v
}
