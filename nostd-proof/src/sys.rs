//! The two Linux system calls the binary needs (x86_64 `syscall` ABI).

use core::arch::asm;

/// File descriptor of standard output.
pub(crate) const STDOUT: usize = 1;
/// File descriptor of standard error.
pub(crate) const STDERR: usize = 2;

const SYS_WRITE: usize = 1;
const SYS_EXIT_GROUP: usize = 231;

/// Writes all of `buf` to `fd`, giving up silently on an error.
pub(crate) fn write_all(fd: usize, mut buf: &[u8]) {
    while !buf.is_empty() {
        let ret: isize;
        // SAFETY: `write(fd, ptr, len)` only reads `len` bytes at `ptr`, which `buf`
        // keeps valid for the duration of the call; the kernel clobbers only rcx and r11
        // (declared) and rax (the return value).
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_WRITE => ret,
                in("rdi") fd,
                in("rsi") buf.as_ptr(),
                in("rdx") buf.len(),
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, readonly),
            );
        }
        let Ok(written) = usize::try_from(ret) else {
            return;
        };
        match buf.get(written..) {
            Some(rest) if written > 0 => buf = rest,
            _ => return,
        }
    }
}

/// Ends the process with `code`.
pub(crate) fn exit(code: u8) -> ! {
    // SAFETY: `exit_group` takes one integer argument, touches no memory of ours and
    // does not return.
    unsafe {
        asm!(
            "syscall",
            in("rax") SYS_EXIT_GROUP,
            in("rdi") usize::from(code),
            options(noreturn, nostack),
        );
    }
}
