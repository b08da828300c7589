//! vmm-glue: a KVM VMM kit for x86_64 Linux hosts.
//!
//! - [`Vm`]: guest memory, in-kernel irqchip + PIT, vCPU threads whose exits go to a port I/O [`Bus`] and an MMIO
//!   [`Bus`], platform devices (COM1, exit port, i8042 reset, ACPI sleep control, PCI host), and the reason the VM
//!   ended ([`ExitReason`]).
//! - [`EventLoop`]: epoll with fd handlers and deferred work; the devices run on it.
//! - [`Vm::attach_mmio`] / [`Vm::attach_pci`]: any `VirtioDevice` on virtio-mmio (v2 or legacy) or PCI (modern,
//!   transitional, legacy), with ioeventfds for queue notifications and irqfd / MSI routes for interrupts.
//! - [`layout`]: the fixed machine layout (addresses, ports, GSIs) shared with the ACPI tables and guests.
//! - [`acpi`], [`boot`]: the machine description, ACPI tables, Linux (bzImage) and ELF loading.
//!
//! Module ownership while it is written: `acpi` and `boot` are the machine description, Linux/ELF loading and
//! ACPI tables; everything else is the VM, vCPUs, buses, interrupts, event loop and device attachment.

pub mod acpi;
pub mod boot;
mod bus;
mod error;
mod event_loop;
mod irq;
pub mod layout;
mod legacy;
mod pci;
mod virtio;
mod vm;

pub use bus::{Bus, BusDevice, SharedDevice};
pub use error::Error;
pub use event_loop::{Action, EventLoop, Handler, LoopHandle, Token, Work};
pub use irq::{IntxLine, IrqRouter, IrqfdLine, MsiVectors};
pub use legacy::{AcpiSleep, ExitPort, Serial, I8042};
pub use pci::PciSlotInfo;
pub use virtio::{MmioSlot, NotifyHook, SharedMmioDevice, SharedPciDevice};
pub use vm::{ExitReason, GuestRam, RingMemory, Vm, VmConfig, VmControl};
/// The vmm-sys-util crate this crate's API uses (eventfds, timerfds, epoll flags).
pub use vmm_sys_util;
/// Readiness flags for [`EventLoop::add`] (re-exported from vmm-sys-util).
pub use vmm_sys_util::epoll::EventSet;
