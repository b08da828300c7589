//! Device-side interrupts: MSI-X (table, PBA, masking) and INTx with the ISR status byte (virtio 1.3 §4.1.4.5,
//! §4.1.5.3, §4.1.5.4).
//!
//! The state lives behind an `Arc` shared by the [`crate::PciDevice`] (register accesses from the vCPU side) and the
//! [`PciInterrupt`] handles it gives the device model (which may signal from another thread). Everything is atomics:
//! `no_std`, lock-free on the MSI-X path, and with a short spin lock only around the INTx level computation.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::spec::{isr, msix, NO_VECTOR};

/// One MSI-X message, as the device sends it (PCI Local Bus 3.0 §6.8.2: a DWORD write of `data` to `address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// The MSI-X table entry that fired.
    pub vector: u16,
    /// Message Address (upper and lower dwords) the driver programmed.
    pub address: u64,
    /// Message Data the driver programmed.
    pub data: u32,
}

/// Where MSI-X messages go: supplied by the VMM (an irqfd per vector, `KVM_SIGNAL_MSI` with address and data, or a
/// recorder in tests).
///
/// `signal` may be called from any thread the device model signals from, and must not call back into the
/// [`crate::PciDevice`].
pub trait MsiSink: Send + Sync {
    /// Delivers one message.
    fn signal(&self, message: MsiMessage);
}

/// The function's INTx line (INTA#), supplied by the VMM (a level-triggered irqfd or `KVM_IRQ_LINE`).
///
/// `set_level` is called with the level the line should have now, possibly repeating the current one; it must be
/// quick, must not block, and must not call back into the [`crate::PciDevice`].
pub trait IntxLine: Send + Sync {
    /// Asserts (`true`) or deasserts the line.
    fn set_level(&self, asserted: bool);
}

/// One MSI-X table entry (PCI Local Bus 3.0 §6.8.2.6–9), as atomics.
#[derive(Debug)]
struct MsixEntry {
    addr_lo: AtomicU32,
    addr_hi: AtomicU32,
    data: AtomicU32,
    control: AtomicU32,
}

impl MsixEntry {
    fn new() -> Self {
        Self {
            addr_lo: AtomicU32::new(0),
            addr_hi: AtomicU32::new(0),
            data: AtomicU32::new(0),
            // Entries come out of reset masked (PCI Local Bus 3.0 §6.8.2.9).
            control: AtomicU32::new(msix::VECTOR_MASKED),
        }
    }

    fn word(&self, index: u64) -> Option<&AtomicU32> {
        match index {
            0 => Some(&self.addr_lo),
            1 => Some(&self.addr_hi),
            2 => Some(&self.data),
            3 => Some(&self.control),
            _ => None,
        }
    }
}

/// State shared between the register side and the interrupt handles.
pub(crate) struct Shared {
    msi: Option<Box<dyn MsiSink>>,
    intx: Option<Box<dyn IntxLine>>,
    /// Bumped on device reset; handles given to an earlier activation stop signalling.
    epoch: AtomicU32,
    isr: AtomicU8,
    generation: AtomicU8,
    /// Set on a configuration change, cleared when the driver reads device configuration (see
    /// [`Shared::note_config_read`]).
    config_changed: AtomicBool,
    needs_reset: AtomicBool,
    msix_enabled: AtomicBool,
    function_mask: AtomicBool,
    intx_disabled: AtomicBool,
    intx_lock: AtomicBool,
    config_vector: AtomicU16,
    queue_vectors: Box<[AtomicU16]>,
    table: Box<[MsixEntry]>,
    pba: Box<[AtomicU64]>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("isr", &self.isr.load(Ordering::Relaxed))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field("msix_enabled", &self.msix_enabled.load(Ordering::Relaxed))
            .field("function_mask", &self.function_mask.load(Ordering::Relaxed))
            .field("vectors", &self.table.len())
            .field("msi_sink", &self.msi.is_some())
            .field("intx_line", &self.intx.is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        queues: usize,
        vectors: u16,
        msi: Option<Box<dyn MsiSink>>,
        intx: Option<Box<dyn IntxLine>>,
    ) -> Self {
        let vectors = usize::from(vectors);
        Self {
            msi,
            intx,
            epoch: AtomicU32::new(0),
            isr: AtomicU8::new(0),
            generation: AtomicU8::new(0),
            config_changed: AtomicBool::new(false),
            needs_reset: AtomicBool::new(false),
            msix_enabled: AtomicBool::new(false),
            function_mask: AtomicBool::new(false),
            intx_disabled: AtomicBool::new(false),
            intx_lock: AtomicBool::new(false),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            table: (0..vectors).map(|_| MsixEntry::new()).collect(),
            pba: (0..vectors.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    // ----- virtio state -----

    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Device reset: vectors unmapped (§4.1.5.1.2.1), ISR cleared (INTx deasserted), stale handles retired. The MSI-X
    /// table and PBA are PCI function state and survive a virtio reset.
    pub(crate) fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.config_changed.store(false, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.update_intx();
    }

    pub(crate) fn generation(&self) -> u8 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The driver is reading device-specific configuration. If it changed since the last such read, the generation
    /// moves again, so a driver that read the generation before the change and reads it after this access sees a
    /// different value even if 256 changes wrapped the counter meanwhile (the scheme the note in §4.1.4.3.1
    /// recommends).
    pub(crate) fn note_config_read(&self) {
        if self.config_changed.swap(false, Ordering::SeqCst) {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn take_needs_reset(&self) -> bool {
        self.needs_reset.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    pub(crate) fn queue_vector(&self, queue: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }

    /// Maps an event to `vector`; a vector outside the table is refused and reads back NO_VECTOR (§4.1.5.1.2.1).
    fn accept_vector(&self, vector: u16) -> u16 {
        if usize::from(vector) < self.table.len() {
            vector
        } else {
            NO_VECTOR
        }
    }

    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.accept_vector(vector), Ordering::SeqCst);
    }

    pub(crate) fn set_queue_vector(&self, queue: u16, vector: u16) {
        let accepted = self.accept_vector(vector);
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            v.store(accepted, Ordering::SeqCst);
        }
    }

    /// Reads and clears the ISR status (§4.1.4.5.1), deasserting INTx.
    pub(crate) fn read_isr(&self) -> u8 {
        let value = self.isr.swap(0, Ordering::SeqCst);
        self.update_intx();
        value
    }

    pub(crate) fn isr(&self) -> u8 {
        self.isr.load(Ordering::SeqCst)
    }

    pub(crate) fn signal_queue(&self, queue: u16) {
        if usize::from(queue) >= self.queue_vectors.len() {
            return;
        }
        if self.msix_enabled.load(Ordering::SeqCst) {
            // §4.1.5.3.1: with MSI-X enabled and NO_VECTOR, no interrupt at all.
            let vector = self.queue_vector(queue);
            if vector != NO_VECTOR {
                self.fire_vector(vector);
            }
        } else {
            // §4.1.4.5.1: set the Queue Interrupt bit before sending the notification.
            self.isr.fetch_or(isr::QUEUE, Ordering::SeqCst);
            self.update_intx();
        }
    }

    pub(crate) fn signal_config(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.config_changed.store(true, Ordering::SeqCst);
        // §4.1.4.5.1: the Device Configuration Interrupt bit is set before the notification, with or without MSI-X.
        self.isr.fetch_or(isr::CONFIG, Ordering::SeqCst);
        if self.msix_enabled.load(Ordering::SeqCst) {
            // §4.1.5.4.1: with MSI-X enabled and NO_VECTOR, no interrupt.
            let vector = self.config_vector();
            if vector != NO_VECTOR {
                self.fire_vector(vector);
            }
        } else {
            self.update_intx();
        }
    }

    pub(crate) fn request_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }

    // ----- INTx -----

    /// Whether INTx is asserted now: ISR non-zero, MSI-X disabled, Interrupt Disable clear (§4.1.4.5.1 "according to
    /// standard PCI rules").
    pub(crate) fn intx_level(&self) -> bool {
        self.isr.load(Ordering::SeqCst) != 0
            && !self.msix_enabled.load(Ordering::SeqCst)
            && !self.intx_disabled.load(Ordering::SeqCst)
    }

    /// Recomputes the line level and drives it. The spin lock makes the last `set_level` call reflect the state after
    /// the last change: without it a reader clearing the ISR could deassert after a concurrent signal asserted.
    pub(crate) fn update_intx(&self) {
        let Some(line) = self.intx.as_deref() else {
            return;
        };
        while self
            .intx_lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // The level is computed inside the lock, after the caller's ISR update (SeqCst), so it includes it.
        line.set_level(self.intx_level());
        self.intx_lock.store(false, Ordering::Release);
    }

    pub(crate) fn set_intx_disabled(&self, disabled: bool) {
        self.intx_disabled.store(disabled, Ordering::SeqCst);
        self.update_intx();
    }

    // ----- MSI-X -----

    pub(crate) fn vectors(&self) -> u16 {
        u16::try_from(self.table.len()).unwrap_or(u16::MAX)
    }

    pub(crate) fn msix_enabled(&self) -> bool {
        self.msix_enabled.load(Ordering::SeqCst)
    }

    pub(crate) fn function_masked(&self) -> bool {
        self.function_mask.load(Ordering::SeqCst)
    }

    /// Message Control written: Enable and Function Mask. Unmasking (or enabling) delivers pending messages of
    /// unmasked vectors (PCI Local Bus 3.0 §6.8.2.3).
    pub(crate) fn set_msix_control(&self, enabled: bool, function_mask: bool) {
        self.msix_enabled.store(enabled, Ordering::SeqCst);
        self.function_mask.store(function_mask, Ordering::SeqCst);
        self.update_intx();
        if enabled && !function_mask {
            self.deliver_pending();
        }
    }

    fn vector_masked(&self, entry: &MsixEntry) -> bool {
        self.function_mask.load(Ordering::SeqCst)
            || entry.control.load(Ordering::SeqCst) & msix::VECTOR_MASKED != 0
    }

    fn pba_word(&self, vector: u16) -> Option<(&AtomicU64, u64)> {
        let v = usize::from(vector);
        self.pba.get(v / 64).map(|w| (w, 1u64 << (v % 64)))
    }

    pub(crate) fn pending(&self, vector: u16) -> bool {
        self.pba_word(vector)
            .is_some_and(|(w, bit)| w.load(Ordering::SeqCst) & bit != 0)
    }

    /// Raises `vector`: its pending bit is set, then delivered if the vector is unmasked. Pairs with
    /// [`Self::unmask`]: each side first publishes its own change (pending bit / mask clear, SeqCst) and then checks
    /// the other's, and the message goes out from whichever side clears the pending bit, so it is sent exactly once.
    fn fire_vector(&self, vector: u16) {
        let Some((word, bit)) = self.pba_word(vector) else {
            return;
        };
        if self.table.get(usize::from(vector)).is_none() {
            return;
        }
        word.fetch_or(bit, Ordering::SeqCst);
        self.try_deliver(vector);
    }

    fn try_deliver(&self, vector: u16) {
        let Some(entry) = self.table.get(usize::from(vector)) else {
            return;
        };
        if !self.msix_enabled.load(Ordering::SeqCst) || self.vector_masked(entry) {
            return;
        }
        let Some((word, bit)) = self.pba_word(vector) else {
            return;
        };
        if word.fetch_and(!bit, Ordering::SeqCst) & bit == 0 {
            return; // someone else delivered it
        }
        let address = u64::from(entry.addr_hi.load(Ordering::SeqCst)) << 32
            | u64::from(entry.addr_lo.load(Ordering::SeqCst));
        let data = entry.data.load(Ordering::SeqCst);
        if let Some(sink) = self.msi.as_deref() {
            sink.signal(MsiMessage {
                vector,
                address,
                data,
            });
        }
    }

    fn deliver_pending(&self) {
        for vector in 0..self.vectors() {
            if self.pending(vector) {
                self.try_deliver(vector);
            }
        }
    }

    /// Reads `data.len()` bytes of the MSI-X table at `offset` (table-relative). Bytes beyond the table read 0.
    pub(crate) fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (addr, byte) in (offset..).zip(data.iter_mut()) {
            *byte = self.table_word(addr).map_or(0, |(w, shift)| {
                low_byte(u64::from(w.load(Ordering::SeqCst) >> shift))
            });
        }
    }

    fn table_word(&self, addr: u64) -> Option<(&AtomicU32, u32)> {
        let entry = self
            .table
            .get(usize::try_from(addr / msix::ENTRY_LEN).ok()?)?;
        let word = entry.word((addr % msix::ENTRY_LEN) / 4)?;
        let shift = u32::try_from((addr % 4) * 8).ok()?;
        Some((word, shift))
    }

    /// Writes bytes of the MSI-X table at `offset`; bytes beyond the table are ignored. Clearing an entry's Mask Bit
    /// delivers its pending message (PCI Local Bus 3.0 §6.8.2.9).
    pub(crate) fn table_write(&self, offset: u64, data: &[u8]) {
        let mut unmasked: Vec<u16> = Vec::new();
        for (addr, byte) in (offset..).zip(data.iter()) {
            let Some((word, shift)) = self.table_word(addr) else {
                continue;
            };
            let mask = 0xffu32 << shift;
            let value = u32::from(*byte) << shift;
            let old = match word.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some((w & !mask) | value)
            }) {
                Ok(old) | Err(old) => old,
            };
            let is_control = (addr % msix::ENTRY_LEN) / 4 == msix::ENTRY_VECTOR_CONTROL / 4;
            let was_masked = old & msix::VECTOR_MASKED != 0;
            let now_masked = ((old & !mask) | value) & msix::VECTOR_MASKED != 0;
            if is_control && was_masked && !now_masked {
                if let Ok(vector) = u16::try_from(addr / msix::ENTRY_LEN) {
                    unmasked.push(vector);
                }
            }
        }
        for vector in unmasked {
            self.try_deliver(vector);
        }
    }

    /// Reads bytes of the Pending Bit Array at `offset` (PBA-relative); beyond it reads 0. The PBA is read-only.
    pub(crate) fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (addr, byte) in (offset..).zip(data.iter_mut()) {
            let word = usize::try_from(addr / 8).ok().and_then(|i| self.pba.get(i));
            *byte = word.map_or(0, |w| {
                low_byte(w.load(Ordering::SeqCst) >> ((addr % 8) * 8))
            });
        }
    }
}

/// The low byte of `value`.
pub(crate) fn low_byte(value: u64) -> u8 {
    value.to_le_bytes().first().copied().unwrap_or(0)
}

/// The interrupt handle a [`crate::PciDevice`] gives its device model at activation (and to the VMM through
/// [`crate::PciDevice::interrupt`]): raises MSI-X vectors or INTx + ISR per the driver's configuration.
///
/// Cheap to clone and `Send + Sync`. A handle given to an activation stops signalling after the device is reset, so
/// a device thread that outlives its activation cannot raise interrupts for the next driver.
#[derive(Clone)]
pub struct PciInterrupt {
    shared: Arc<Shared>,
    epoch: Option<u32>,
}

impl fmt::Debug for PciInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciInterrupt")
            .field("epoch", &self.epoch)
            .field("stale", &self.is_stale())
            .finish()
    }
}

impl PciInterrupt {
    pub(crate) fn new(shared: Arc<Shared>, epoch: Option<u32>) -> Self {
        Self { shared, epoch }
    }

    /// Whether the device was reset since this handle was handed out (it then does nothing).
    pub fn is_stale(&self) -> bool {
        self.epoch.is_some_and(|e| e != self.shared.epoch())
    }
}

impl virtio_core::device::Interrupt for PciInterrupt {
    fn signal_queue(&self, queue: u16) {
        if !self.is_stale() {
            self.shared.signal_queue(queue);
        }
    }

    fn signal_config(&self) {
        if !self.is_stale() {
            self.shared.signal_config();
        }
    }

    /// Sets DEVICE_NEEDS_RESET (visible on the driver's next status read) and sends a configuration change
    /// notification (virtio 1.3 §2.1.2).
    fn signal_needs_reset(&self) {
        if !self.is_stale() {
            self.shared.request_reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl MsiSink for Arc<Count> {
        fn signal(&self, _message: MsiMessage) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn masked_vector_is_pending_then_delivered_once_on_unmask() {
        let count = Arc::new(Count::default());
        let shared = Shared::new(1, 2, Some(Box::new(count.clone())), None);
        shared.set_msix_control(true, false);
        shared.set_queue_vector(0, 1);
        shared.signal_queue(0);
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "entries start masked");
        assert!(shared.pending(1));
        shared.table_write(16 + 12, &[0, 0, 0, 0]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(!shared.pending(1));
        shared.table_write(16 + 12, &[0, 0, 0, 0]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "no second delivery");
        let mut pba = vec![0u8; 8];
        shared.pba_read(0, &mut pba);
        assert_eq!(pba, vec![0; 8]);
    }

    #[test]
    fn vector_beyond_table_reads_back_no_vector() {
        let shared = Shared::new(2, 2, None, None);
        shared.set_queue_vector(1, 2);
        assert_eq!(shared.queue_vector(1), NO_VECTOR);
        shared.set_queue_vector(1, 1);
        assert_eq!(shared.queue_vector(1), 1);
        shared.set_queue_vector(7, 1);
        assert_eq!(shared.queue_vector(7), NO_VECTOR);
    }
}
