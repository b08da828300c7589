//! Freestanding x86_64 Linux binary that proves `virtio-core` builds, links and runs
//! without `std` (and without libc).
//!
//! The host target (`x86_64-unknown-linux-gnu`) ships a precompiled `core`, so no
//! `-Zbuild-std` is needed: the crate is `#![no_std]` + `#![no_main]`, every profile uses
//! `panic = "abort"`, and `build.rs` links with `-nostartfiles -nostdlib -static -no-pie`.
//! The process entry point `_start` is written in assembly below; it calls
//! [`exercise::run`], prints `nostd-proof: PASS` or `nostd-proof: FAIL` with the `write`
//! system call and exits 0 or 1 with `exit_group`. A panic exits with 101.
//!
//! `cargo xtask ci` builds this with
//! `cargo build --release --manifest-path nostd-proof/Cargo.toml`, runs it, and checks the
//! exit status, the PASS line, that `nm -u` reports no undefined symbols and that the ELF
//! image has no program interpreter.

#![no_std]
#![no_main]

mod exercise;
mod mem;
mod sys;

// Process entry. The kernel enters `_start` with `rsp` 16-byte aligned and no return
// address; Rust functions expect `rsp + 8` to be 16-byte aligned on entry, which the
// `call` below establishes. `rbp = 0` terminates frame-pointer walks.
core::arch::global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym start_rust,
);

/// Called from `_start`: runs the exercise and reports the verdict.
extern "C" fn start_rust() -> ! {
    if exercise::run() {
        sys::write_all(sys::STDOUT, b"nostd-proof: PASS\n");
        sys::exit(0)
    } else {
        sys::write_all(sys::STDOUT, b"nostd-proof: FAIL\n");
        sys::exit(1)
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    sys::write_all(sys::STDERR, b"nostd-proof: panic\n");
    sys::exit(101)
}

/// Personality routine symbol for unwinding; never called, because with
/// `panic = "abort"` nothing unwinds. The precompiled `core` is built for unwinding and
/// its landing pads still reference `rust_eh_personality`; in the release profile LTO
/// removes those references, in the dev profile this definition satisfies the linker.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
