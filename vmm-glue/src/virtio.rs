//! Attaching virtio devices: on a virtio-mmio slot or on PCI bus 0, with an ioeventfd per queue notification
//! address (the kick is handled on the event-loop thread, without a vCPU exit to user space) and irqfd/MSI
//! interrupts.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::IoEventAddress;
use virtio_core::device::VirtioDevice;
use virtio_mmio::{MmioDevice, MmioInterrupt, MmioVersion};
use virtio_pci::{InterruptSinks, PciDevice, PciInterrupt, PciOptions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::error::Error;
use crate::event_loop::Action;
use crate::irq::{IntxLine, IrqfdLine, MsiVectors, SharedMsiSink};
use crate::layout;
use crate::pci::{self, PciSlotInfo};
use crate::vm::{RingMemory, Vm};

/// Called on the event-loop thread after a queue notification was handed to the device (e.g. to move frames a
/// loopback backend produced into the receive queue).
pub type NotifyHook<D> = Box<dyn FnMut(&mut D, u16) + Send>;

/// A virtio-mmio device as attached: shared with the bus (vCPU register accesses) and the event loop.
pub type SharedMmioDevice<D> = Arc<Mutex<MmioDevice<D>>>;

/// A virtio-pci device as attached.
pub type SharedPciDevice<D> = Arc<Mutex<PciDevice<D>>>;

/// Where a virtio-mmio device was placed (for the ACPI description).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MmioSlot {
    /// Slot index.
    pub index: u32,
    /// Base address of the register window ([`layout::mmio_slot_address`]).
    pub address: u64,
    /// Size of the window.
    pub size: u64,
    /// Interrupt (edge-triggered).
    pub gsi: u32,
}

struct MmioBusAdapter<D: VirtioDevice>(SharedMmioDevice<D>);

impl<D> BusDevice for MmioBusAdapter<D>
where
    D: VirtioDevice<Memory = RingMemory, Interrupt = MmioInterrupt> + Send,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A refused access reads zeros; the reason is only of interest to a debugger.
        let _ = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data);
    }
}

impl Vm {
    /// The virtio-mmio devices attached so far.
    pub fn mmio_devices(&self) -> &[MmioSlot] {
        &self.mmio_slots
    }

    /// Attaches `device` on the next free virtio-mmio slot, register interface `version` (modern v2, or legacy
    /// v1): the register window goes on the MMIO bus, the interrupt is an irqfd on the slot's GSI, and each queue's
    /// `QueueNotify` write (offset 0x50, value = queue index) signals an ioeventfd handled on the event loop, which
    /// calls the device and then `hook`.
    pub fn attach_mmio<D>(
        &mut self,
        device: D,
        version: MmioVersion,
        hook: Option<NotifyHook<D>>,
    ) -> Result<(MmioSlot, SharedMmioDevice<D>), Error>
    where
        D: VirtioDevice<Memory = RingMemory, Interrupt = MmioInterrupt> + Send + 'static,
    {
        let index = u32::try_from(self.mmio_slots.len()).unwrap_or(u32::MAX);
        if index >= layout::MMIO_SLOTS {
            return Err(Error::NoSlot("virtio-mmio"));
        }
        let slot = MmioSlot {
            index,
            address: layout::mmio_slot_address(index),
            size: layout::MMIO_SLOT_SIZE,
            gsi: layout::mmio_slot_gsi(index),
        };
        let queues = device.queue_max_sizes().len();
        let line = Arc::new(IrqfdLine::new(self.vm_fd(), slot.gsi)?);
        let mmio = MmioDevice::new(device, self.ring_memory(), line, version)?;
        let shared = Arc::new(Mutex::new(mmio));
        self.mmio_bus().insert(
            slot.address,
            slot.size,
            Arc::new(Mutex::new(MmioBusAdapter(shared.clone()))),
        )?;
        let hook = Arc::new(Mutex::new(hook));
        for queue in 0..queues {
            let queue = u16::try_from(queue).map_err(|_| Error::Config("queue count".into()))?;
            let fd = EventFd::new(EFD_NONBLOCK)?;
            self.vm_fd().register_ioevent(
                &fd,
                &IoEventAddress::Mmio(slot.address + virtio_mmio::regs::QUEUE_NOTIFY),
                u32::from(queue),
            )?;
            let (device, hook) = (shared.clone(), hook.clone());
            let raw = fd.as_raw_fd();
            self.event_loop().add(raw, EventSet::IN, move |_, _| {
                let _ = fd.read();
                let mut device = device.lock().unwrap_or_else(PoisonError::into_inner);
                // A notification for a queue that is not live is dropped, as the register path does.
                if device.notify(u32::from(queue)).is_ok() {
                    if let Some(hook) = hook.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
                    {
                        hook(device.device_mut(), queue);
                    }
                }
                Action::Continue
            })?;
        }
        self.mmio_slots.push(slot);
        Ok((slot, shared))
    }

    /// Attaches `device` as a PCI function on the next free device number of bus 0 (modern, transitional or
    /// legacy per `options`): BARs are pre-assigned in the PCI windows, MSI-X vectors become irqfds on MSI routes,
    /// INTx is the device's GSI ([`layout::pci_intx_gsi`]), and each queue's notification address (modern notify
    /// region, legacy QueueNotify with the queue index as datamatch) signals an ioeventfd handled on the event
    /// loop.
    pub fn attach_pci<D>(
        &mut self,
        device: D,
        options: PciOptions,
        hook: Option<NotifyHook<D>>,
    ) -> Result<(PciSlotInfo, SharedPciDevice<D>), Error>
    where
        D: VirtioDevice<Memory = RingMemory, Interrupt = PciInterrupt> + Send + 'static,
    {
        let number = pci::reserve(&self.pci)?;
        let queues = device.queue_max_sizes().len();
        let queues16 = u16::try_from(queues).map_err(|_| Error::Config("queue count".into()))?;
        let vectors = options
            .msix_vectors
            .unwrap_or_else(|| queues16.saturating_add(1).max(2));
        let msi = Arc::new(MsiVectors::new(self.irq_router().clone(), vectors)?);
        let intx_gsi = layout::pci_intx_gsi(number);
        let sinks = InterruptSinks::new()
            .msi(SharedMsiSink(msi))
            .intx(IntxLine::new(self.vm_fd().clone(), intx_gsi));
        let pci_device = PciDevice::new(device, self.ring_memory(), options, sinks)?;
        let shared = Arc::new(Mutex::new(pci_device));
        let hook = Arc::new(Mutex::new(hook));
        let mut fds = Vec::with_capacity(queues);
        for queue in 0..queues16 {
            let fd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
            let (device, hook, event) = (shared.clone(), hook.clone(), fd.clone());
            self.event_loop()
                .add(fd.as_raw_fd(), EventSet::IN, move |_, _| {
                    let _ = event.read();
                    let mut device = device.lock().unwrap_or_else(PoisonError::into_inner);
                    device.notify(queue, None);
                    if let Some(hook) = hook.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
                    {
                        hook(device.device_mut(), queue);
                    }
                    Action::Continue
                })?;
            fds.push(fd);
        }
        pci::plug(&self.pci, shared.clone(), number, fds)?;
        Ok((
            PciSlotInfo {
                device: number,
                intx_gsi,
            },
            shared,
        ))
    }
}
