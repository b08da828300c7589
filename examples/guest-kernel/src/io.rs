//! Port I/O, the COM1 serial console and the exit port.

use core::arch::asm;
use core::fmt::{self, Write};

/// COM1, an 8250/16550 UART (QEMU `isa-serial`, mini-vmm `--console`).
const COM1: u16 = 0x3f8;
/// Line Status Register offset; bit 5 = transmit holding register empty.
const LSR: u16 = 5;
/// The exit port: QEMU `isa-debug-exit,iobase=0xf4,iosize=0x04` and mini-vmm. Writing `v` ends the VM with exit
/// status `(v << 1) | 1`.
const EXIT_PORT: u16 = 0xf4;

/// Written to the exit port after `PASS`: the VMM exits with 33.
pub(crate) const EXIT_PASS: u32 = 0x10;
/// Written to the exit port after a failed check: the VMM exits with 35.
pub(crate) const EXIT_FAIL: u32 = 0x11;
/// Written to the exit port after a panic or CPU exception: the VMM exits with 37.
pub(crate) const EXIT_PANIC: u32 = 0x12;

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The port must belong to a device this kernel drives, and reading it must not break another user's invariants.
pub(crate) unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: forwarded from the caller; `in` touches no memory.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Reads 16 bits from an I/O port.
///
/// # Safety
///
/// As for [`inb`].
pub(crate) unsafe fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: forwarded from the caller; `in` touches no memory.
    unsafe {
        asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Reads 32 bits from an I/O port.
///
/// # Safety
///
/// As for [`inb`].
pub(crate) unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: forwarded from the caller; `in` touches no memory.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The port must belong to a device this kernel drives. The write may make a device read or write memory (a virtio
/// notification): the caller must have published what the device will read. Not `nomem`, so the compiler orders
/// memory accesses around it.
pub(crate) unsafe fn outb(port: u16, v: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags)) };
}

/// Writes 16 bits to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub(crate) unsafe fn outw(port: u16, v: u16) {
    // SAFETY: forwarded from the caller.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nostack, preserves_flags)) };
}

/// Writes 32 bits to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub(crate) unsafe fn outl(port: u16, v: u32) {
    // SAFETY: forwarded from the caller.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags)) };
}

/// The serial console (write-only, polled).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Serial;

impl Serial {
    fn put(self, byte: u8) {
        // A bounded wait for the transmitter: a VMM that does not model LSR must not hang us.
        for _ in 0..100_000 {
            // SAFETY: COM1 is the platform's console UART; reading LSR has no side effect on it.
            if unsafe { inb(COM1 + LSR) } & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing THR of COM1 transmits one byte; nothing else uses the UART.
        unsafe { outb(COM1, byte) };
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints to the serial console.
macro_rules! println {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::io::Serial, format_args!($($arg)*));
        let _ = core::fmt::Write::write_str(&mut $crate::io::Serial, "\n");
    }};
}
pub(crate) use println;

/// Ends the VM through the exit port with `value` (the VMM exits with `(value << 1) | 1`).
pub(crate) fn exit(value: u32) -> ! {
    // SAFETY: the exit port belongs to the VMM's exit device; the write ends the VM.
    unsafe { outl(EXIT_PORT, value) };
    loop {
        if crate::boot::user_mode() {
            core::hint::spin_loop();
        } else {
            // SAFETY: `cli; hlt` only stops this CPU (reached if the VMM has no exit device).
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
}

/// Prints `FAIL guest <what>` and exits with [`EXIT_FAIL`].
pub(crate) fn fail(what: fmt::Arguments<'_>) -> ! {
    println!("FAIL guest {what}");
    exit(EXIT_FAIL)
}

/// Prints `FAIL guest <what>` and exits with [`EXIT_PANIC`] (panics and CPU exceptions).
pub(crate) fn fail_exit(what: fmt::Arguments<'_>) -> ! {
    println!("FAIL guest {what}");
    exit(EXIT_PANIC)
}

/// The time stamp counter (for timeouts and timing; its rate is the host's TSC rate under both KVM and TCG).
pub(crate) fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` reads a counter; no memory, no side effects.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}
