//! Interrupt plumbing: the GSI routing table (IOAPIC/PIC pins and MSI routes), irqfd-backed lines for virtio-mmio
//! and the serial port, MSI-X vectors as irqfds on MSI routes, and level-triggered PCI INTx.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::Error;
use crate::layout::{IOAPIC_PINS, MSI_GSI_BASE};

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

fn msi_entry(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut msi = kvm_irq_routing_msi {
        data,
        ..Default::default()
    };
    // Split of the 64-bit message address into the two dwords of the routing entry.
    msi.address_lo = (address & 0xffff_ffff) as u32;
    msi.address_hi = (address >> 32) as u32;
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 { msi },
        ..Default::default()
    }
}

struct Routes {
    /// The entries KVM_CREATE_IRQCHIP installs by default (PIC + IOAPIC pins), kept because KVM_SET_GSI_ROUTING
    /// replaces the whole table.
    fixed: Vec<kvm_irq_routing_entry>,
    /// MSI routes: (gsi, address, data).
    msi: Vec<(u32, u64, u32)>,
    next_gsi: u32,
}

/// The VM's GSI routing table. MSI routes are allocated here and rewritten when the guest reprograms a vector.
pub struct IrqRouter {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

impl fmt::Debug for IrqRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("IrqRouter")
            .field("msi_routes", &r.msi)
            .finish_non_exhaustive()
    }
}

impl IrqRouter {
    /// The router of `vm` (which has an in-kernel irqchip), with KVM's default PIC/IOAPIC routes.
    pub fn new(vm: Arc<VmFd>) -> Self {
        let mut fixed = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                fixed.push(irqchip_entry(gsi, chip, gsi % 8));
            }
            // As KVM's default table: IOAPIC pin = GSI.
            fixed.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        Self {
            vm,
            routes: Mutex::new(Routes {
                fixed,
                msi: Vec::new(),
                next_gsi: MSI_GSI_BASE,
            }),
        }
    }

    /// Reserves a GSI for an MSI route (programmed later with [`set_msi`](Self::set_msi)).
    pub fn allocate_msi_gsi(&self) -> u32 {
        let mut r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let gsi = r.next_gsi;
        r.next_gsi += 1;
        gsi
    }

    /// Points `gsi` at the MSI message (`address`, `data`) and installs the table (KVM_SET_GSI_ROUTING).
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), Error> {
        let mut r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match r.msi.iter_mut().find(|(g, _, _)| *g == gsi) {
            Some(e) => *e = (gsi, address, data),
            None => r.msi.push((gsi, address, data)),
        }
        let mut entries = r.fixed.clone();
        entries.extend(r.msi.iter().map(|(g, a, d)| msi_entry(*g, *a, *d)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| Error::Config(format!("GSI routing table: {e:?}")))?;
        self.vm.set_gsi_routing(&table)?;
        Ok(())
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }
}

/// An edge-triggered interrupt line: an eventfd registered as irqfd on a GSI. Writing it injects the interrupt
/// without a trip through this process's locks (used for virtio-mmio and the serial port).
#[derive(Debug)]
pub struct IrqfdLine {
    fd: EventFd,
    gsi: u32,
}

impl IrqfdLine {
    /// A line on `gsi` of `vm`.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<Self, Error> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        vm.register_irqfd(&fd, gsi)?;
        Ok(Self { fd, gsi })
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Injects the interrupt.
    pub fn trigger(&self) {
        // EAGAIN means the counter is saturated: an injection is already pending.
        let _ = self.fd.write(1);
    }

    /// A duplicate of the eventfd (e.g. as a vm-superio trigger).
    pub fn eventfd(&self) -> Result<EventFd, Error> {
        Ok(self.fd.try_clone()?)
    }
}

impl virtio_mmio::IrqLine for IrqfdLine {
    fn trigger(&self) {
        IrqfdLine::trigger(self);
    }
}

/// A level-triggered PCI INTx line, driven with KVM_IRQ_LINE (the device model tells the level, so no resample fd is
/// needed).
pub struct IntxLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl fmt::Debug for IntxLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntxLine").field("gsi", &self.gsi).finish()
    }
}

impl IntxLine {
    /// The INTx line on `gsi`.
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        Self { vm, gsi }
    }
}

impl virtio_pci::IntxLine for IntxLine {
    fn set_level(&self, asserted: bool) {
        // Nothing useful to do with a failure on the interrupt path: the line stays as it was.
        let _ = self.vm.set_irq_line(self.gsi, asserted);
    }
}

struct MsiVector {
    fd: EventFd,
    gsi: u32,
    /// The message the route was last programmed with.
    programmed: Mutex<Option<(u64, u32)>>,
}

/// The MSI-X vectors of one PCI function: one irqfd per vector on its own GSI, whose MSI route is (re)programmed
/// when a message with a new address/data fires (the guest reprogrammed the table entry). Masking is done by the
/// device emulation, which withholds (and marks pending) masked vectors.
pub struct MsiVectors {
    router: Arc<IrqRouter>,
    vectors: Vec<MsiVector>,
}

impl fmt::Debug for MsiVectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsiVectors")
            .field(
                "gsis",
                &self.vectors.iter().map(|v| v.gsi).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MsiVectors {
    /// `count` vectors with irqfds on fresh GSIs.
    pub fn new(router: Arc<IrqRouter>, count: u16) -> Result<Self, Error> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let fd = EventFd::new(EFD_NONBLOCK)?;
            let gsi = router.allocate_msi_gsi();
            router.vm().register_irqfd(&fd, gsi)?;
            vectors.push(MsiVector {
                fd,
                gsi,
                programmed: Mutex::new(None),
            });
        }
        Ok(Self { router, vectors })
    }
}

impl virtio_pci::MsiSink for MsiVectors {
    fn signal(&self, message: virtio_pci::MsiMessage) {
        let Some(v) = self.vectors.get(usize::from(message.vector)) else {
            return;
        };
        {
            let mut programmed = v.programmed.lock().unwrap_or_else(PoisonError::into_inner);
            let want = (message.address, message.data);
            if *programmed != Some(want) {
                if self
                    .router
                    .set_msi(v.gsi, message.address, message.data)
                    .is_err()
                {
                    return;
                }
                *programmed = Some(want);
            }
        }
        let _ = v.fd.write(1);
    }
}

/// `MsiVectors` shared with the device emulation.
pub(crate) type SharedMsi = Arc<MsiVectors>;

/// Forwards to a shared [`MsiVectors`] (the sink is boxed by the device emulation).
pub(crate) struct SharedMsiSink(pub(crate) SharedMsi);

impl virtio_pci::MsiSink for SharedMsiSink {
    fn signal(&self, message: virtio_pci::MsiMessage) {
        self.0.signal(message);
    }
}
