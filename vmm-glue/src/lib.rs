//! vmm-glue: a KVM VMM kit for x86_64 Linux hosts.
//!
//! - [`layout`]: the fixed machine layout (addresses, ports, GSIs) shared with the ACPI tables and guests.
//! - [`acpi`], [`boot`]: the machine description, ACPI tables, Linux (bzImage) and ELF loading.
//!
//! Module ownership while it is written: `acpi` and `boot` are the machine description, Linux/ELF loading and
//! ACPI tables; everything else is the VM, vCPUs, buses, interrupts, event loop and device attachment.

pub mod acpi;
pub mod boot;
mod error;
pub mod layout;

pub use error::Error;
