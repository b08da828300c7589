//! The device side of virtio-mmio (version 2 or legacy 1) under arbitrary sequences of driver register accesses,
//! of any width at any offset, interleaved with device-side events and scribbles over guest memory: never panics,
//! and the register state stays consistent (magic intact, only defined interrupt bits, live only after DRIVER_OK).
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_core::device::{ActiveQueue, Interrupt, VirtioDevice};
use virtio_core::{
    DeviceAddr, DeviceQueue, DeviceSlice, DeviceStatus, Features, HeapMemory, NotificationData,
};
use virtio_mmio::{regs, IrqLine, MmioDevice, MmioInterrupt, MmioVersion};

const BASE: u64 = 0x1_0000;
const LEN: usize = 0x8000;

/// Registers the fuzzer picks from (plus raw offsets).
const REGISTERS: [u64; 30] = [
    regs::MAGIC,
    regs::VERSION,
    regs::DEVICE_ID,
    regs::VENDOR_ID,
    regs::DEVICE_FEATURES,
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::GUEST_PAGE_SIZE,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_NUM,
    regs::QUEUE_ALIGN,
    regs::QUEUE_PFN,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_STATUS,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_SEL,
    regs::SHM_LEN_LOW,
    regs::QUEUE_RESET,
    regs::CONFIG_GENERATION,
    regs::CONFIG,
];

#[derive(Default)]
struct Line(AtomicU32);

impl IrqLine for Line {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Three queues of different maxima; echoes readable bytes into writable ones; 16 bytes of config space.
struct Echo {
    config: [u8; 16],
    queues: Vec<Option<DeviceQueue<Arc<HeapMemory>>>>,
    interrupt: Option<MmioInterrupt>,
    broken: bool,
}

impl VirtioDevice for Echo {
    type Memory = Arc<HeapMemory>;
    type Interrupt = MmioInterrupt;

    fn device_type(&self) -> u32 {
        virtio_core::device_type::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8, 16, 0]
    }
    fn offered_features(&self) -> Features {
        Features::VERSION_1
            | Features::EVENT_IDX
            | Features::INDIRECT_DESC
            | Features::RING_PACKED
            | Features::IN_ORDER
            | Features::NOTIFICATION_DATA
            | Features::RING_RESET
    }
    fn read_config(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = offset.checked_add(i).and_then(|o| self.config.get_mut(o)) {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _features: Features,
        queues: Vec<ActiveQueue<Self::Memory>>,
        interrupt: MmioInterrupt,
    ) -> virtio_core::Result<()> {
        self.queues = (0..3).map(|_| None).collect();
        for q in queues {
            let slot = self
                .queues
                .get_mut(usize::from(q.index))
                .expect("queue index below the count");
            assert!(slot.is_none(), "a queue is activated once");
            *slot = Some(q.queue);
        }
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> Vec<ActiveQueue<Self::Memory>> {
        self.interrupt = None;
        self.broken = false;
        (0u16..)
            .zip(self.queues.drain(..))
            .filter_map(|(index, q)| q.map(|queue| ActiveQueue { index, queue }))
            .collect()
    }
    fn queue_notify(&mut self, queue: u16, _data: Option<NotificationData>) {
        let Some(Some(q)) = self.queues.get_mut(usize::from(queue)) else {
            // The transport forwards notifications only for queues it handed over.
            panic!("notification for queue {queue}, which the device does not hold");
        };
        let mut buf = [0u8; 64];
        for _ in 0..64 {
            match q.pop() {
                Ok(Some(chain)) => {
                    let n = chain.reader().read(&mut buf).unwrap_or(0);
                    let mut writer = chain.writer();
                    let _ = writer.write(buf.get(..n).unwrap_or(&[]));
                    let (token, written) = (chain.token(), writer.written());
                    if q.add_used(token, written).is_err() {
                        self.broken = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.is_peer_fault(), "{e:?}");
                    self.broken = true;
                    break;
                }
            }
        }
        if q.needs_notification() {
            if let Some(i) = &self.interrupt {
                i.signal_queue(queue);
            }
        }
    }
    fn reset_queue(&mut self, queue: u16) -> Option<DeviceQueue<Self::Memory>> {
        self.queues
            .get_mut(usize::from(queue))
            .and_then(Option::take)
    }
}

fn word(bytes: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    for (d, s) in w.iter_mut().zip(bytes) {
        *d = *s;
    }
    u32::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    let [mode, ops @ ..] = data else { return };
    let version = if mode & 1 == 0 {
        MmioVersion::Modern
    } else {
        MmioVersion::Legacy
    };
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(BASE), LEN).expect("memory"));
    let line = Arc::new(Line::default());
    let echo = Echo {
        config: [0x5a; 16],
        queues: Vec::new(),
        interrupt: None,
        broken: false,
    };
    let mut dev =
        MmioDevice::new(echo, memory.clone(), line.clone(), version).expect("three queues");

    for op in ops.chunks(6) {
        let mut reset_written = false;
        let generation_before = dev.config_generation();
        let [kind, pick, value @ ..] = op else { break };
        let value = word(value);
        let register = REGISTERS[usize::from(*pick) % REGISTERS.len()];
        match kind % 8 {
            // Register writes, with values steered into guest memory for the address registers.
            0 | 1 => {
                let steered = match register {
                    regs::QUEUE_DESC_LOW | regs::QUEUE_DRIVER_LOW | regs::QUEUE_DEVICE_LOW
                        if kind & 8 == 0 =>
                    {
                        u32::try_from(BASE).unwrap() + (value % u32::try_from(LEN).unwrap()) / 4 * 4
                    }
                    regs::QUEUE_PFN if kind & 8 == 0 => {
                        let first = u32::try_from(BASE / 4096).unwrap();
                        first + value % (u32::try_from(LEN / 4096).unwrap() + 1)
                    }
                    regs::QUEUE_NUM | regs::QUEUE_SEL | regs::QUEUE_NOTIFY if kind & 8 == 0 => {
                        value % 20
                    }
                    regs::STATUS if kind & 8 == 0 => value & 0xff,
                    _ => value,
                };
                let accepted = dev.write32(register, steered).is_ok();
                reset_written = accepted && register == regs::STATUS && steered == 0;
            }
            2 => {
                let _ = dev.read32(register);
            }
            // Raw accesses: any offset in or past the window, any width up to 8.
            3 => {
                let offset = u64::from(value & 0x3ff);
                let width = usize::from(*pick % 9);
                let mut buf = [0u8; 8];
                let buf = &mut buf[..width];
                if kind & 8 == 0 {
                    if dev.read(offset, buf).is_err() {
                        assert!(buf.iter().all(|b| *b == 0), "a refused read reads zero");
                    }
                } else {
                    buf.copy_from_slice(&value.to_le_bytes().repeat(2)[..width]);
                    let _ = dev.write(offset, buf);
                }
            }
            // Device-side events.
            4 => match pick % 5 {
                0 => dev.signal_config(),
                1 => dev.interrupt().signal_queue(u16::from(*pick)),
                2 => {
                    for q in dev.take_reenabled_queues() {
                        let echo = dev.device_mut();
                        if let Some(slot) = echo.queues.get_mut(usize::from(q.index)) {
                            *slot = Some(q.queue);
                        }
                    }
                }
                3 => {
                    if dev.device().broken {
                        dev.set_needs_reset();
                    }
                }
                _ => {
                    let _ = dev.notify(value);
                }
            },
            // The driver scribbles over guest memory (rings and buffers).
            _ => {
                let at = BASE + u64::from(value % u32::try_from(LEN).unwrap());
                if let Some(slice) = DeviceSlice::new(&*memory, DeviceAddr::new(at), 2) {
                    slice.write_at(0, &[*kind, *pick]);
                }
            }
        }

        // Invariants.
        assert_eq!(dev.read32(regs::MAGIC), Ok(regs::MAGIC_VALUE));
        assert_eq!(dev.read32(regs::VERSION), Ok(version.register_value()));
        assert_eq!(dev.interrupt_status() & !regs::INT_VALID, 0);
        let status = dev.status();
        assert_eq!(dev.read32(regs::STATUS), Ok(u32::from(status.bits())));
        if dev.is_live() {
            assert!(status.contains(DeviceStatus::DRIVER_OK));
            assert!(dev.negotiated_features().is_some());
        }
        if status.is_empty() {
            assert!(!dev.is_live());
        }
        if reset_written {
            assert_eq!(dev.interrupt_status(), 0, "reset clears InterruptStatus");
            assert_eq!(
                dev.config_generation(),
                generation_before,
                "reset is not a configuration change"
            );
        }
        if version == MmioVersion::Legacy {
            assert!(!dev
                .offered_features()
                .intersects(Features::VERSION_1 | Features::MODERN_ONLY));
        }
    }
});
