//! Shared by the integration tests: an echo device model, a counting interrupt line, a recording register wrapper,
//! and a small guest driver built on `MmioTransport` + `DriverQueue`.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::transport::Transport;
use virtio_core::{
    Buffer, DeviceAddr, DeviceQueue, DeviceSlice, DriverQueue, Features, HeapMemory,
    NotificationData, RingFormat,
};
use virtio_mmio::{
    regs, IrqLine, MmioDevice, MmioInterrupt, MmioRegisters, MmioTransport, MmioVersion,
};

/// Device address where guest memory starts.
pub const MEM_BASE: u64 = 0x10_0000;
/// Bytes of guest memory.
pub const MEM_LEN: usize = 0x10_0000;
/// Queue memory of queue `q` starts at `MEM_BASE + q * QUEUE_STRIDE` (page aligned).
pub const QUEUE_STRIDE: u64 = 0x1_0000;
/// Buffers start here: 256 bytes per slot, request in the first half, response in the second.
pub const DATA_BASE: u64 = MEM_BASE + 0x8_0000;
/// `QueueNumMax` of every echo queue.
pub const QUEUE_MAX: u16 = 32;
/// The size the test driver uses.
pub const QUEUE_SIZE: u16 = 16;
/// Register window size.
pub const WINDOW: usize = 0x200;
/// Bytes of echo configuration space.
pub const CONFIG_LEN: usize = 12;

/// Everything the echo device offers (the transport adjusts it per version).
pub fn echo_features() -> Features {
    Features::VERSION_1
        | Features::EVENT_IDX
        | Features::INDIRECT_DESC
        | Features::RING_PACKED
        | Features::NOTIFICATION_DATA
        | Features::RING_RESET
        | Features::ADMIN_VQ
}

/// Two queues; every chain's readable bytes come back reversed in its writable buffers. Configuration space:
/// a 32-bit "epoch" at 0, a byte at 4, a 6-byte "address" at 6.
#[derive(Debug)]
pub struct Echo {
    pub config: [u8; CONFIG_LEN],
    pub offered: Features,
    pub queues: Vec<Option<DeviceQueue<Arc<HeapMemory>>>>,
    pub interrupt: Option<MmioInterrupt>,
    pub features: Option<Features>,
    pub notifications: Vec<(u16, Option<NotificationData>)>,
    pub errors: Vec<virtio_core::Error>,
    pub refuse_activation: bool,
    /// Hands queues re-enabled after a per-queue reset back from `enable_queue` (the trait's default), so that the
    /// VMM has to pass them on (`MmioDevice::take_reenabled_queues`).
    pub decline_enabled_queues: bool,
    pub resets: u32,
}

impl Echo {
    pub fn new(offered: Features) -> Self {
        Self {
            config: [0x11, 0x22, 0x33, 0x44, 0x55, 0, 1, 2, 3, 4, 5, 6],
            offered,
            queues: Vec::new(),
            interrupt: None,
            features: None,
            notifications: Vec::new(),
            errors: Vec::new(),
            refuse_activation: false,
            decline_enabled_queues: false,
            resets: 0,
        }
    }

    /// Changes the 32-bit field at offset 0 and signals a configuration change.
    pub fn change_config(&mut self, epoch: u32) {
        self.config[..4].copy_from_slice(&epoch.to_le_bytes());
        if let Some(interrupt) = &self.interrupt {
            interrupt.signal_config();
        }
    }

    /// Gives a queue back to the device (the VMM's job after a per-queue reset).
    pub fn adopt(&mut self, queue: ActiveQueue<Arc<HeapMemory>>) {
        let index = usize::from(queue.index);
        if self.queues.len() <= index {
            self.queues.resize_with(index + 1, || None);
        }
        self.queues[index] = Some(queue.queue);
    }

    fn process(&mut self, index: u16) {
        let Some(Some(queue)) = self.queues.get_mut(usize::from(index)) else {
            return;
        };
        loop {
            let chain = match queue.pop() {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    self.errors.push(e);
                    break;
                }
            };
            let mut request = vec![0; chain.readable_len() as usize];
            chain.reader().read(&mut request).unwrap();
            request.reverse();
            let mut writer = chain.writer();
            writer.write(&request).unwrap();
            let (token, written) = (chain.token(), writer.written());
            queue.add_used(token, written).unwrap();
        }
        if queue.needs_notification() {
            if let Some(interrupt) = &self.interrupt {
                interrupt.signal_queue(index);
            }
        }
    }
}

impl VirtioDevice for Echo {
    type Memory = Arc<HeapMemory>;
    type Interrupt = MmioInterrupt;

    fn device_type(&self) -> u32 {
        virtio_core::device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }

    fn offered_features(&self) -> Features {
        self.offered
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .and_then(|at| self.config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = offset.checked_add(i).and_then(|at| self.config.get_mut(at)) {
                *slot = *byte;
            }
        }
    }

    fn activate(
        &mut self,
        features: Features,
        queues: Vec<ActiveQueue<Self::Memory>>,
        interrupt: MmioInterrupt,
    ) -> virtio_core::Result<()> {
        if self.refuse_activation {
            return Err(virtio_core::Error::QueueNotReady);
        }
        self.queues.clear();
        for queue in queues {
            self.adopt(queue);
        }
        self.features = Some(features);
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self) -> Vec<ActiveQueue<Self::Memory>> {
        self.resets += 1;
        self.interrupt = None;
        self.features = None;
        (0u16..)
            .zip(self.queues.drain(..))
            .filter_map(|(index, q)| q.map(|queue| ActiveQueue { index, queue }))
            .collect()
    }

    fn queue_notify(&mut self, queue: u16, data: Option<NotificationData>) {
        self.notifications.push((queue, data));
        self.process(queue);
    }

    fn reset_queue(&mut self, queue: u16) -> Option<DeviceQueue<Self::Memory>> {
        self.queues
            .get_mut(usize::from(queue))
            .and_then(Option::take)
    }

    fn enable_queue(
        &mut self,
        queue: ActiveQueue<Self::Memory>,
    ) -> Option<ActiveQueue<Self::Memory>> {
        if self.decline_enabled_queues {
            return Some(queue);
        }
        self.adopt(queue);
        None
    }
}

/// An interrupt line that counts.
#[derive(Debug, Default)]
pub struct CountingLine {
    pub triggers: AtomicU32,
    pub lowers: AtomicU32,
}

impl CountingLine {
    pub fn triggers(&self) -> u32 {
        self.triggers.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingLine {
    fn trigger(&self) {
        self.triggers.fetch_add(1, Ordering::SeqCst);
    }
    fn lower(&self) {
        self.lowers.fetch_add(1, Ordering::SeqCst);
    }
}

pub type Shared = Rc<RefCell<MmioDevice<Echo>>>;

/// A device of `version` offering `offered`, its line and its memory.
pub fn echo_device(
    version: MmioVersion,
    offered: Features,
) -> (Shared, Arc<CountingLine>, Arc<HeapMemory>) {
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(MEM_BASE), MEM_LEN).unwrap());
    let line = Arc::new(CountingLine::default());
    let device =
        MmioDevice::new(Echo::new(offered), memory.clone(), line.clone(), version).unwrap();
    (Rc::new(RefCell::new(device)), line, memory)
}

/// One register access, as a `Recorder` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub offset: usize,
    pub width: usize,
    pub value: u32,
}

/// Forwards to `inner` and records every access.
#[derive(Debug)]
pub struct Recorder<R> {
    pub inner: R,
    pub log: RefCell<Vec<Access>>,
}

impl<R> Recorder<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            log: RefCell::new(Vec::new()),
        }
    }

    fn record(&self, write: bool, offset: usize, width: usize, value: u32) {
        self.log.borrow_mut().push(Access {
            write,
            offset,
            width,
            value,
        });
    }
}

impl<R: MmioRegisters> MmioRegisters for Recorder<R> {
    fn read8(&self, offset: usize) -> u8 {
        let v = self.inner.read8(offset);
        self.record(false, offset, 1, u32::from(v));
        v
    }
    fn read16(&self, offset: usize) -> u16 {
        let v = self.inner.read16(offset);
        self.record(false, offset, 2, u32::from(v));
        v
    }
    fn read32(&self, offset: usize) -> u32 {
        let v = self.inner.read32(offset);
        self.record(false, offset, 4, v);
        v
    }
    fn write8(&self, offset: usize, value: u8) {
        self.record(true, offset, 1, u32::from(value));
        self.inner.write8(offset, value);
    }
    fn write16(&self, offset: usize, value: u16) {
        self.record(true, offset, 2, u32::from(value));
        self.inner.write16(offset, value);
    }
    fn write32(&self, offset: usize, value: u32) {
        self.record(true, offset, 4, value);
        self.inner.write32(offset, value);
    }
}

/// A guest driver: the transport plus one `DriverQueue` per queue, buffers in a fixed data area.
#[derive(Debug)]
pub struct Guest<R: MmioRegisters> {
    pub transport: MmioTransport<R>,
    pub memory: Arc<HeapMemory>,
    pub queues: Vec<DriverQueue<Arc<HeapMemory>, u32>>,
    pub features: Features,
    next_token: u32,
}

impl<R: MmioRegisters> Guest<R> {
    pub fn probe(regs: R, memory: Arc<HeapMemory>) -> Self {
        Self {
            transport: MmioTransport::from_registers(regs, WINDOW).unwrap(),
            memory,
            queues: Vec::new(),
            features: Features::empty(),
            next_token: 0,
        }
    }

    /// §3.1.1 from reset to DRIVER_OK with both queues, in `format` if the features allow.
    pub fn init(&mut self, supported: Features) -> virtio_core::Result<Features> {
        let features = self.transport.begin_init(supported, Features::empty())?;
        self.features = features;
        let format = if features.contains(Features::RING_PACKED) {
            RingFormat::Packed
        } else {
            RingFormat::Split
        };
        self.queues.clear();
        for q in 0..2u16 {
            let max = self.transport.max_queue_size(q);
            assert_eq!(max, QUEUE_MAX, "queue {q} is free and exists");
            let base = DeviceAddr::new(MEM_BASE + u64::from(q) * QUEUE_STRIDE);
            let config = self
                .transport
                .queue_placement()
                .queue_config(format, max, QUEUE_SIZE, base)
                .unwrap();
            let queue = DriverQueue::new(&config, features, self.memory.clone(), None)?;
            self.transport.setup_queue(q, &config)?;
            self.queues.push(queue);
        }
        self.transport.finish_init();
        Ok(features)
    }

    /// Makes a request available on `q` (payload readable, 128 bytes writable) and notifies if the device wants it.
    pub fn send(&mut self, q: u16, payload: &[u8]) -> u32 {
        let token = self.next_token;
        self.next_token += 1;
        let slot = DATA_BASE + u64::from(token % 1024) * 256;
        DeviceSlice::new(&*self.memory, DeviceAddr::new(slot), payload.len())
            .unwrap()
            .write_at(0, payload);
        let queue = &mut self.queues[usize::from(q)];
        queue
            .add(
                &[Buffer::new(
                    DeviceAddr::new(slot),
                    u32::try_from(payload.len()).unwrap(),
                )],
                &[Buffer::new(DeviceAddr::new(slot + 128), 128)],
                token,
            )
            .unwrap();
        if queue.kick_prepare() {
            let value = if self.features.contains(Features::NOTIFICATION_DATA) {
                queue.notification_data(q).to_u32()
            } else {
                u32::from(q)
            };
            self.transport.notify(q, value);
        }
        token
    }

    /// Collects every used buffer of `q`: (token, response bytes).
    pub fn collect(&mut self, q: u16) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(used) = self.queues[usize::from(q)].pop_used().unwrap() {
            let slot = DATA_BASE + u64::from(used.token % 1024) * 256 + 128;
            let mut data = vec![0; used.len as usize];
            DeviceSlice::new(&*self.memory, DeviceAddr::new(slot), data.len().max(1))
                .unwrap()
                .read_at(0, &mut data);
            out.push((used.token, data));
        }
        out
    }

    /// Sends one request on each queue and checks the echoed responses.
    pub fn round_trip(&mut self, tag: u8) {
        for q in 0..2u16 {
            let payload = [tag, u8::try_from(q).unwrap(), 0xab, 0xcd, 0xef];
            let token = self.send(q, &payload);
            let used = self.collect(q);
            let mut expect = payload.to_vec();
            expect.reverse();
            assert_eq!(used, vec![(token, expect)], "queue {q}");
        }
    }
}

/// Reads a control register of the device directly (as the VMM sees it).
pub fn peek(dev: &Shared, offset: u64) -> u32 {
    dev.borrow().read32(offset).unwrap_or(0)
}

/// Writes a control register of the device directly, as a guest access would.
pub fn poke(dev: &Shared, offset: u64, value: u32) -> virtio_mmio::Result<()> {
    dev.borrow_mut().write32(offset, value)
}

/// Drives the device to FEATURES_OK with `features` by raw register writes.
pub fn raw_negotiate(dev: &Shared, features: Features) {
    poke(dev, regs::STATUS, 0).unwrap();
    poke(dev, regs::STATUS, 1).unwrap();
    poke(dev, regs::STATUS, 3).unwrap();
    for sel in 0..2 {
        poke(dev, regs::DRIVER_FEATURES_SEL, sel).unwrap();
        poke(dev, regs::DRIVER_FEATURES, features.window(sel)).unwrap();
    }
    if features.contains(Features::VERSION_1) {
        poke(dev, regs::STATUS, 0xb).unwrap();
    }
}
