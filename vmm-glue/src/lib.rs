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
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use vmm_glue::{BusDevice, Vm, VmConfig};
//!
//! /// Bochs-style debug port: bytes written to port 0x402 go to stderr.
//! struct DebugPort;
//! impl BusDevice for DebugPort {
//!     fn read(&mut self, _offset: u64, data: &mut [u8]) {
//!         data.fill(0);
//!     }
//!     fn write(&mut self, _offset: u64, data: &[u8]) {
//!         eprint!("{}", String::from_utf8_lossy(data));
//!     }
//! }
//!
//! let mut vm = Vm::new(VmConfig::new(256 << 20).vcpus(2))?;
//! vm.add_serial(Box::new(std::io::stdout()))?;
//! vm.pio_bus().insert(0x402, 1, Arc::new(Mutex::new(DebugPort)))?;
//! // Attach virtio devices (`vm.attach_mmio`, `vm.attach_pci`), load a kernel and set up the vCPUs
//! // (`vmm_glue::boot`), then:
//! let reason = vm.run()?;
//! std::process::exit(reason.exit_status());
//! # Ok::<(), vmm_glue::Error>(())
//! ```
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
