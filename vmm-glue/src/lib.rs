//! vmm-glue: KVM VMM kit (being written for the VMM issue).
//!
//! Module ownership while it is written: `acpi` and `boot` are the machine description, Linux/ELF loading and
//! ACPI tables; everything else is the VM, vCPUs, buses, interrupts, event loop and device attachment.

pub mod acpi;
pub mod boot;
mod error;

pub use error::Error;
