//! Shared harness: our driver (`PciTransport` over `LocalAccess`) driving our device (`PciDevice<EchoDevice>`)
//! register by register, with ring memory in one `Arc<HeapMemory>`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use virtio_core::transport::{InterruptDispatch, Transport};
use virtio_core::{
    Buffer, DeviceAddr, DeviceSlice, DeviceStatus, DriverQueue, Features, HeapMemory, QueueConfig,
    RingFormat, RingLayout,
};
use virtio_pci::mock::{EchoDevice, RecordingIntx, RecordingMsi};
use virtio_pci::spec::{cap_id, header, vcap, CfgType};
use virtio_pci::{
    BarInfo, Interface, InterruptMode, InterruptSinks, IrqRequest, LocalAccess, PciAccess,
    PciDevice, PciOptions, PciTransport, PciVariant,
};

pub const MEM_BASE: u64 = 0x10_0000;
pub const MEM_LEN: usize = 0x40_0000;
/// Ring of queue `q` at `MEM_BASE + q * RING_STRIDE`.
pub const RING_STRIDE: u64 = 0x1_0000;
/// Data buffers from here.
pub const DATA_BASE: u64 = MEM_BASE + 0x20_0000;
pub const QUEUE_SIZE: u16 = 16;

pub type Pci = Rc<RefCell<PciDevice<EchoDevice>>>;

pub fn memory() -> Arc<HeapMemory> {
    Arc::new(HeapMemory::new(DeviceAddr::new(MEM_BASE), MEM_LEN).unwrap())
}

/// A device behind `variant` with two queues and 8 bytes of configuration.
pub fn device(
    variant: PciVariant,
    options: impl FnOnce(PciOptions) -> PciOptions,
) -> (Pci, RecordingMsi, RecordingIntx, Arc<HeapMemory>) {
    let memory = memory();
    let msi = RecordingMsi::new();
    let intx = RecordingIntx::new();
    let pci = PciDevice::new(
        EchoDevice::new(&[QUEUE_SIZE, QUEUE_SIZE]),
        memory.clone(),
        options(PciOptions::new(variant).config_len(8)),
        InterruptSinks::new().msi(msi.clone()).intx(intx.clone()),
    )
    .unwrap();
    (Rc::new(RefCell::new(pci)), msi, intx, memory)
}

/// Everything a test driver needs.
pub struct Harness<A: PciAccess = LocalAccess<EchoDevice>> {
    pub pci: Pci,
    pub transport: PciTransport<A>,
    pub memory: Arc<HeapMemory>,
    pub msi: RecordingMsi,
    pub intx: RecordingIntx,
    pub queues: Vec<DriverQueue<Arc<HeapMemory>, u32>>,
    pub dispatch: InterruptDispatch,
    /// Queue callbacks push the queue index, the config callback pushes 0xffff.
    pub hits: Arc<Mutex<Vec<u16>>>,
    pub features: Features,
    next_token: u32,
}

pub const CONFIG_HIT: u16 = 0xffff;

impl Harness {
    pub fn new(variant: PciVariant, interface: Option<Interface>) -> Self {
        Self::with_options(variant, interface, |o| o)
    }

    pub fn with_options(
        variant: PciVariant,
        interface: Option<Interface>,
        options: impl FnOnce(PciOptions) -> PciOptions,
    ) -> Self {
        let (pci, msi, intx, memory) = device(variant, options);
        let access = LocalAccess::new(pci.clone());
        let transport = match interface {
            Some(i) => PciTransport::with_interface(access, i).unwrap(),
            None => PciTransport::new(access).unwrap(),
        };
        Harness::from_parts(pci, transport, memory, msi, intx)
    }
}

impl<A: PciAccess> Harness<A> {
    pub fn from_parts(
        pci: Pci,
        transport: PciTransport<A>,
        memory: Arc<HeapMemory>,
        msi: RecordingMsi,
        intx: RecordingIntx,
    ) -> Self {
        Self {
            pci,
            transport,
            memory,
            msi,
            intx,
            queues: Vec::new(),
            dispatch: InterruptDispatch::new(),
            hits: Arc::new(Mutex::new(Vec::new())),
            features: Features::empty(),
            next_token: 0,
        }
    }

    pub fn legacy_interface(&self) -> bool {
        self.transport.interface() == Interface::Legacy
    }

    /// §3.1.1 through `Transport`: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK and its re-read; interrupts;
    /// both queues; DRIVER_OK. Returns the interrupt mode obtained.
    pub fn init(&mut self, supported: Features, best: InterruptMode) -> InterruptMode {
        let required = if self.legacy_interface() {
            Features::empty()
        } else {
            Features::VERSION_1
        };
        self.features = self.transport.begin_init(supported, required).unwrap();
        let status = self.transport.status();
        if self.legacy_interface() {
            assert_eq!(status, DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        } else {
            assert!(status.contains(DeviceStatus::FEATURES_OK), "{status:?}");
        }
        let mode = self.transport.setup_interrupts(2, best).unwrap();
        self.queues.clear();
        for q in 0..2u16 {
            let max = self.transport.max_queue_size(q);
            assert_eq!(max, QUEUE_SIZE);
            let base = DeviceAddr::new(MEM_BASE + u64::from(q) * RING_STRIDE);
            let config = if self.legacy_interface() {
                QueueConfig::legacy(max, max, base, 4096).unwrap()
            } else {
                let format = if self.features.contains(Features::RING_PACKED) {
                    RingFormat::Packed
                } else {
                    RingFormat::Split
                };
                // Use a smaller size than the maximum on the modern interface (size negotiation).
                let size = max / 2;
                QueueConfig::with_layout(max, &RingLayout::new(format, size), base).unwrap()
            };
            let queue =
                DriverQueue::new(&config, self.features, self.memory.clone(), None).unwrap();
            self.transport.setup_queue(q, &config).unwrap();
            let hits = self.hits.clone();
            self.dispatch
                .set_queue_callback(q, Box::new(move |queue| hits.lock().unwrap().push(queue)));
            self.queues.push(queue);
        }
        let hits = self.hits.clone();
        self.dispatch
            .set_config_callback(Box::new(move || hits.lock().unwrap().push(CONFIG_HIT)));
        self.transport.finish_init();
        assert!(self.transport.status().contains(DeviceStatus::DRIVER_OK));
        assert!(self.pci.borrow().device().is_active());
        mode
    }

    /// Runs the driver's interrupt handlers for everything the device raised; returns the callbacks run.
    pub fn deliver(&mut self) -> usize {
        let Self {
            transport,
            msi,
            intx,
            queues,
            dispatch,
            ..
        } = self;
        let mut ran = 0;
        let has_used = |q: u16| queues.get(usize::from(q)).is_some_and(|x| x.has_used());
        for message in msi.take() {
            assert_eq!(message.address, virtio_pci::LOCAL_MSI_ADDRESS);
            assert_eq!(message.data, u32::from(message.vector));
            ran += transport.handle_vector(message.vector, dispatch, has_used);
        }
        while intx.level() {
            let n = transport.handle_intx(dispatch, has_used);
            assert!(!intx.level(), "reading the ISR deasserts INTx");
            ran += n;
        }
        ran
    }

    pub fn take_hits(&self) -> Vec<u16> {
        std::mem::take(&mut *self.hits.lock().unwrap())
    }

    /// Sends `payload` on `queue` with room for the answer, notifies, takes the interrupt, returns the answer.
    pub fn roundtrip(&mut self, queue: u16, payload: &[u8]) -> Vec<u8> {
        let q = usize::from(queue);
        let slot = u64::from(self.next_token % 8);
        self.next_token += 1;
        let readable = DeviceAddr::new(DATA_BASE + u64::from(queue) * 0x1_0000 + slot * 0x1000);
        let writable = DeviceAddr::new(readable.raw() + 0x800);
        DeviceSlice::new(&*self.memory, readable, payload.len())
            .unwrap()
            .write_at(0, payload);
        let token = self.next_token;
        self.queues[q]
            .add(
                &[Buffer::new(readable, payload.len() as u32)],
                &[Buffer::new(writable, 0x800)],
                token,
            )
            .unwrap();
        if self.queues[q].kick_prepare() {
            let value = if self.features.contains(Features::NOTIFICATION_DATA) {
                self.queues[q].notification_data(queue).to_u32()
            } else {
                u32::from(queue)
            };
            self.transport.notify(queue, value);
        }
        let ran = self.deliver();
        assert!(ran >= 1, "the used buffer raised an interrupt");
        assert!(self.take_hits().contains(&queue));
        let used = self.queues[q].pop_used().unwrap().expect("used buffer");
        assert_eq!(used.token, token);
        self.queues[q].enable_callbacks();
        let mut out = vec![0; used.len as usize];
        DeviceSlice::new(&*self.memory, writable, out.len())
            .unwrap()
            .read_at(0, &mut out);
        out
    }

    /// Traffic on both queues, checking every answer.
    pub fn traffic(&mut self, rounds: usize) {
        for round in 0..rounds {
            for queue in 0..2u16 {
                let payload = virtio_pci::mock::pattern(
                    (round as u8) ^ (queue as u8 * 0x55),
                    1 + round * 7 % 300,
                );
                let mut expected = payload.clone();
                expected.reverse();
                assert_eq!(
                    self.roundtrip(queue, &payload),
                    expected,
                    "queue {queue} round {round}"
                );
            }
        }
    }

    /// The device changes its configuration: the driver gets a configuration interrupt, sees the generation move
    /// (modern) and reads the new value.
    pub fn config_change(&mut self, value: u32) {
        let before = self.transport.config_generation();
        self.pci.borrow_mut().device_mut().change_config(value);
        assert!(self.deliver() >= 1);
        assert!(self.take_hits().contains(&CONFIG_HIT));
        if !self.legacy_interface() {
            assert_ne!(
                self.transport.config_generation(),
                before,
                "generation bumped"
            );
        }
        let mut word = [0u8; 4];
        self.transport.read_config_consistent(0, &mut word).unwrap();
        assert_eq!(u32::from_le_bytes(word), value);
    }

    /// Device reset through the status register; the driver queues take back their buffers.
    pub fn reset(&mut self) {
        self.transport.reset();
        assert_eq!(self.transport.status(), DeviceStatus::empty());
        let pci = self.pci.borrow();
        assert!(!pci.device().is_active());
        assert_eq!(pci.config_vector(), virtio_pci::spec::NO_VECTOR);
        assert_eq!(pci.queue_vector(0), virtio_pci::spec::NO_VECTOR);
        drop(pci);
        for q in &mut self.queues {
            q.reset();
        }
        self.msi.take();
        self.take_hits();
    }
}

/// The whole life of a device: init, traffic, a configuration change, reset, re-init, traffic.
pub fn scenario(
    variant: PciVariant,
    interface: Option<Interface>,
    supported: Features,
    best: InterruptMode,
    expect: InterruptMode,
) {
    let mut h = Harness::new(variant, interface);
    let mode = h.init(supported, best);
    assert_eq!(mode, expect);
    if supported.contains(Features::RING_PACKED) && !h.legacy_interface() {
        assert!(h.features.contains(Features::RING_PACKED));
    }
    h.traffic(20);
    h.config_change(0xdead_beef);
    h.reset();
    assert_eq!(h.init(supported, best), expect);
    h.traffic(5);
    h.config_change(0x1234_5678);
    let pci = h.pci.borrow();
    assert_eq!(pci.device().faults(), 0);
    assert!(pci.device().processed() >= 50);
}

/// An access that overrides bytes of configuration space as read (to present malformed capability lists) and can
/// lie about the MSI-X table size; everything else goes to the device.
pub struct Patched {
    pub inner: LocalAccess<EchoDevice>,
    pub patches: BTreeMap<u16, u8>,
}

impl Patched {
    pub fn new(pci: &Pci) -> Self {
        Self {
            inner: LocalAccess::new(pci.clone()),
            patches: BTreeMap::new(),
        }
    }

    pub fn set8(&mut self, at: u16, v: u8) {
        self.patches.insert(at, v);
    }

    pub fn set16(&mut self, at: u16, v: u16) {
        for (i, b) in (at..).zip(v.to_le_bytes()) {
            self.set8(i, b);
        }
    }

    pub fn set32(&mut self, at: u16, v: u32) {
        for (i, b) in (at..).zip(v.to_le_bytes()) {
            self.set8(i, b);
        }
    }

    fn patch(&self, at: u16, bytes: &mut [u8]) {
        for (i, b) in (at..).zip(bytes.iter_mut()) {
            if let Some(v) = self.patches.get(&i) {
                *b = *v;
            }
        }
    }
}

impl PciAccess for Patched {
    fn config_read_bytes(&mut self, offset: u16, data: &mut [u8]) {
        self.inner.config_read_bytes(offset, data);
        self.patch(offset, data);
    }
    fn config_write_bytes(&mut self, offset: u16, data: &[u8]) {
        self.inner.config_write_bytes(offset, data);
    }
    fn bar_read_bytes(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.inner.bar_read_bytes(bar, offset, data);
    }
    fn bar_write_bytes(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.inner.bar_write_bytes(bar, offset, data);
    }
    fn bar_info(&mut self, index: u8) -> Option<BarInfo> {
        self.inner.bar_info(index)
    }
    fn enable_interrupts(&mut self, request: IrqRequest) -> virtio_pci::Result<()> {
        // The device's real table size may be smaller than what a patch claims: program only what exists.
        let request = match request {
            IrqRequest::Msix {
                vectors,
                capability,
            } => {
                let real = self.inner.device().borrow().msix_vectors();
                if vectors > real {
                    // Enable MSI-X with the real table; the device will refuse the vectors beyond it.
                    let mut cap = capability;
                    cap.table_size = real;
                    IrqRequest::Msix {
                        vectors: real,
                        capability: cap,
                    }
                } else {
                    request
                }
            }
            other => other,
        };
        self.inner.enable_interrupts(request)
    }
}

/// Offset of the first virtio capability of `cfg_type` (or of the capability with id `id` when `cfg_type` is
/// `None`), walking the real list.
pub fn find_cap(pci: &Pci, id: u8, cfg_type: Option<CfgType>) -> Option<u16> {
    let mut d = pci.borrow_mut();
    let mut b = [0u8; 1];
    d.config_read(header::CAPABILITIES_POINTER, &mut b);
    let mut ptr = b[0];
    for _ in 0..48 {
        if ptr == 0 {
            return None;
        }
        let at = u16::from(ptr);
        d.config_read(at, &mut b);
        let this_id = b[0];
        let mut t = [0u8; 1];
        d.config_read(at + vcap::CFG_TYPE, &mut t);
        if this_id == id && (id != cap_id::VENDOR || cfg_type.is_none_or(|c| c.raw() == t[0])) {
            return Some(at);
        }
        d.config_read(at + 1, &mut b);
        ptr = b[0];
    }
    None
}
