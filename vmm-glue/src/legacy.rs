//! Platform devices on the port I/O bus: COM1 (vm-superio 8250), the exit port, the i8042 reset line and the ACPI
//! hardware-reduced sleep control register.

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::layout;
use crate::vm::{ExitReason, VmControl};

/// The serial port's interrupt: an irqfd eventfd.
#[derive(Debug)]
pub(crate) struct EventFdTrigger(EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1: a vm-superio 8250 UART whose interrupt is an irqfd.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART raising `irq` and writing transmitted bytes to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(EventFdTrigger(irq), out),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // An output error (closed console) is not the guest's problem.
            let _ = self.uart.write(offset, *byte);
        }
    }
}

/// The exit port ([`layout::EXIT_PORT`]): a 1-, 2- or 4-byte write of `v` ends the VM with
/// [`ExitReason::ExitPort`]`(v)`, as QEMU's `isa-debug-exit`.
#[derive(Debug)]
pub struct ExitPort {
    control: Arc<VmControl>,
}

impl ExitPort {
    /// The port, ending `control`'s VM.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        let value = match data {
            [a] => u32::from(*a),
            [a, b] => u32::from(u16::from_le_bytes([*a, *b])),
            [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
            _ => return,
        };
        self.control.request_exit(ExitReason::ExitPort(value));
    }
}

/// Just enough of an i8042 for a guest to reset the machine: command 0xFE on port 0x64 ends the VM with
/// [`ExitReason::Reset`]. Status reads 0 (no data, input buffer empty), data reads 0.
#[derive(Debug)]
pub struct I8042 {
    control: Arc<VmControl>,
}

impl I8042 {
    /// The controller, resetting `control`'s VM.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

const I8042_COMMAND_OFFSET: u64 = (layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT) as u64;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == I8042_COMMAND_OFFSET && data.first() == Some(&layout::I8042_RESET) {
            self.control.request_exit(ExitReason::Reset);
        }
    }
}

/// The ACPI hardware-reduced sleep registers: control at offset 0 ([`layout::ACPI_SLEEP_CONTROL_PORT`]), status
/// at offset 1. A control write with SLP_EN ends the VM with [`ExitReason::PowerOff`] (S5 is the only sleep state
/// the DSDT offers).
#[derive(Debug)]
pub struct AcpiSleep {
    control: Arc<VmControl>,
}

impl AcpiSleep {
    /// The registers, powering off `control`'s VM.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first().is_some_and(|v| v & layout::ACPI_SLP_EN != 0) {
            self.control.request_exit(ExitReason::PowerOff);
        }
    }
}
