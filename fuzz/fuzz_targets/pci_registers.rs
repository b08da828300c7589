//! The device side of virtio-pci (modern, transitional or legacy) under arbitrary sequences of configuration-space
//! and BAR accesses of any width at any offset, interleaved with device-side interrupts, configuration changes and
//! scribbles over guest memory (so that queues the fuzzer programs and enables carry arbitrary rings): never panics,
//! and the function stays consistent (identity registers intact, vectors inside the MSI-X table, messages only for
//! table entries, INTx only with MSI-X disabled).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_core::device::Interrupt;
use virtio_core::{DeviceAddr, DeviceSlice, HeapMemory};
use virtio_pci::mock::{EchoDevice, RecordingIntx, RecordingMsi};
use virtio_pci::spec::{common, header, legacy, NO_VECTOR};
use virtio_pci::{
    InterruptSinks, PciDevice, PciOptions, PciVariant, COMMON_OFFSET, LEGACY_BAR, MODERN_BAR,
};

const BASE: u64 = 0x1_0000;
const LEN: usize = 0x8000;

/// Common configuration fields the fuzzer aims at (plus raw offsets).
const COMMON: [(u16, usize); 20] = [
    (common::DEVICE_FEATURE_SELECT, 4),
    (common::DRIVER_FEATURE_SELECT, 4),
    (common::DRIVER_FEATURE, 4),
    (common::CONFIG_MSIX_VECTOR, 2),
    (common::DEVICE_STATUS, 1),
    (common::QUEUE_SELECT, 2),
    (common::QUEUE_SIZE, 2),
    (common::QUEUE_MSIX_VECTOR, 2),
    (common::QUEUE_ENABLE, 2),
    (common::QUEUE_DESC, 4),
    (common::QUEUE_DESC + 4, 4),
    (common::QUEUE_DRIVER, 4),
    (common::QUEUE_DRIVER + 4, 4),
    (common::QUEUE_DEVICE, 4),
    (common::QUEUE_DEVICE + 4, 4),
    (common::QUEUE_RESET, 2),
    (common::CONFIG_GENERATION, 1),
    (common::NUM_QUEUES, 2),
    (common::QUEUE_NOTIFY_OFF, 2),
    (common::DEVICE_FEATURE, 4),
];

/// Legacy header fields.
const LEGACY: [(u64, usize); 10] = [
    (legacy::HOST_FEATURES, 4),
    (legacy::GUEST_FEATURES, 4),
    (legacy::QUEUE_PFN, 4),
    (legacy::QUEUE_SIZE, 2),
    (legacy::QUEUE_SELECT, 2),
    (legacy::QUEUE_NOTIFY, 2),
    (legacy::DEVICE_STATUS, 1),
    (legacy::ISR, 1),
    (legacy::CONFIG_MSIX_VECTOR, 2),
    (legacy::QUEUE_MSIX_VECTOR, 2),
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map_while(|_| self.byte()).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(shape), Some(knobs)) = (input.byte(), input.byte()) else {
        return;
    };
    let variant = match shape % 3 {
        0 => PciVariant::Modern,
        1 => PciVariant::Transitional,
        _ => PciVariant::Legacy,
    };
    let vectors = u16::from(knobs & 3); // 0..=3: none, one, two, per queue + config
    let multiplier = if knobs & 4 != 0 { 0 } else { 4 };
    let memory = Arc::new(HeapMemory::new(DeviceAddr::new(BASE), LEN).expect("memory"));
    let msi = RecordingMsi::new();
    let intx = RecordingIntx::new();
    let options = PciOptions::new(variant)
        .msix_vectors(vectors)
        .notify_off_multiplier(multiplier)
        .config_len(8)
        .extended_config(knobs & 8 != 0);
    let mut pci = PciDevice::new(
        EchoDevice::new(&[8, 4]),
        memory.clone(),
        options,
        InterruptSinks::new().msi(msi.clone()).intx(intx.clone()),
    )
    .expect("valid options");
    let device_id = {
        let mut b = [0u8; 2];
        pci.config_read(header::DEVICE_ID, &mut b);
        u16::from_le_bytes(b)
    };
    let irq = pci.interrupt();

    for _ in 0..256 {
        let Some(op) = input.byte() else { break };
        match op % 11 {
            0 => {
                let (Some(at), Some(len)) = (input.u16(), input.byte()) else {
                    break;
                };
                let mut buf = vec![0u8; usize::from(len % 9)];
                pci.config_read(at, &mut buf);
            }
            1 => {
                let (Some(at), Some(len)) = (input.u16(), input.byte()) else {
                    break;
                };
                let bytes = input.bytes(usize::from(len % 9));
                // Mostly inside the header and capabilities, sometimes anywhere.
                let at = if len & 0x80 != 0 { at } else { at % 0x100 };
                pci.config_write(at, &bytes);
            }
            2 => {
                let (Some(bar), Some(at), Some(len)) = (input.byte(), input.u16(), input.byte())
                else {
                    break;
                };
                let mut buf = vec![0u8; usize::from(len % 9)];
                pci.bar_read(bar % 7, u64::from(at), &mut buf);
            }
            3 => {
                let (Some(bar), Some(at), Some(len)) = (input.byte(), input.u16(), input.byte())
                else {
                    break;
                };
                let bytes = input.bytes(usize::from(len % 9));
                pci.bar_write(bar % 7, u64::from(at), &bytes);
            }
            4 => {
                // A well-formed common configuration write.
                let (Some(which), Some(value)) = (input.byte(), input.u32()) else {
                    break;
                };
                let (field, width) = COMMON[usize::from(which) % COMMON.len()];
                pci.bar_write(
                    MODERN_BAR,
                    COMMON_OFFSET + u64::from(field),
                    &value.to_le_bytes()[..width],
                );
            }
            5 => {
                let (Some(which), Some(value)) = (input.byte(), input.u32()) else {
                    break;
                };
                let (field, width) = LEGACY[usize::from(which) % LEGACY.len()];
                pci.bar_write(LEGACY_BAR, field, &value.to_le_bytes()[..width]);
            }
            6 => {
                let Some(q) = input.byte() else { break };
                irq.signal_queue(u16::from(q % 4));
            }
            7 => irq.signal_config(),
            8 => {
                let Some(v) = input.u32() else { break };
                pci.device_mut().change_config(v);
            }
            9 => {
                // Scribble over guest memory (ring contents, buffers).
                let (Some(at), Some(len)) = (input.u16(), input.byte()) else {
                    break;
                };
                let bytes = input.bytes(usize::from(len % 33));
                let addr = DeviceAddr::new(BASE + u64::from(at) % LEN as u64);
                if let Some(slice) = DeviceSlice::new(&*memory, addr, bytes.len()) {
                    slice.write_at(0, &bytes);
                }
            }
            _ => {
                let Some(q) = input.byte() else { break };
                pci.notify(u16::from(q % 3), None);
            }
        }

        // Invariants.
        let mut id = [0u8; 4];
        pci.config_read(header::VENDOR_ID, &mut id);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x1af4);
        assert_eq!(u16::from_le_bytes([id[2], id[3]]), device_id);
        let table = pci.msix_vectors();
        assert_eq!(table, vectors);
        for v in [
            pci.config_vector(),
            pci.queue_vector(0),
            pci.queue_vector(1),
        ] {
            assert!(
                v == NO_VECTOR || v < table,
                "vector {v} outside a table of {table}"
            );
        }
        for m in msi.take() {
            assert!(m.vector < table);
            assert!(pci.msix_enabled(), "a message only while MSI-X is enabled");
        }
        if pci.msix_enabled() {
            assert!(!pci.intx_level(), "no INTx with MSI-X enabled");
        }
        assert_eq!(intx.level(), pci.intx_level());
        let _ = pci.status();
    }
});
