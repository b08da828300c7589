//! The two entry points, the page tables, the GDT/TSS/IDT and the exception stubs.
//!
//! - **`_start32`**, named by the PVH ELF note (`XEN_ELFNOTE_PHYS32_ENTRY`): how QEMU's `-kernel` starts the image.
//!   The CPU is in 32-bit protected mode with paging off, flat segments, `ebx` = physical address of the
//!   `hvm_start_info`, no usable stack (Xen PVH boot ABI, as QEMU's `pvh.bin` option ROM implements it). This path
//!   clears `.bss`, builds page tables identity-mapping [`PVH_MAPPED_GIB`] GiB (RAM, the microvm virtio-mmio windows
//!   and 32- or 64-bit PCI BARs wherever SeaBIOS put them), enables long mode and runs the kernel in ring 0.
//! - **`_start64`**, the ELF `e_entry`: how mini-vmm starts it, already in 64-bit long mode with interrupts off and
//!   some identity map. This path builds its own page tables too (identity map of the first [`LONG64_MAPPED_GIB`]
//!   GiB, where mini-vmm puts RAM, PCI BARs and virtio-mmio slots), then **drops to ring 3** (IOPL 3, so port I/O
//!   still works) and runs the kernel there. Reason: this machine's `/dev/kvm` is `kvm-pvm`, which runs guest user
//!   mode natively but emulates guest ring-0 code instruction by instruction with KVM's x86 emulator; that is slow
//!   and fails on the first SSE instruction Rust code executes (`kvm-pvm: INTERNAL_ERROR in batch emul`). `.bss` is
//!   not cleared on this path: the ELF loader zero-fills `p_memsz` beyond `p_filesz`, as the ELF format requires
//!   (clearing 26 MiB in emulated ring 0 took 17 s).
//!
//! Page-table entries carry the user bit so that ring 3 reaches everything. Exceptions (from either ring) land on
//! the stubs below, which print `FAIL guest exception ...` and exit; other vectors return at once (every interrupt
//! source stays masked, the kernel polls).

use core::sync::atomic::{AtomicBool, Ordering};

/// GiB identity-mapped on the PVH path (2 MiB pages, one page directory per GiB).
const PVH_MAPPED_GIB: usize = 64;
/// GiB identity-mapped on the 64-bit (mini-vmm) path.
const LONG64_MAPPED_GIB: usize = 4;

/// Bytes of the boot stack (the kernel's stack in ring 0 or ring 3).
const STACK_BYTES: usize = 128 * 1024;
/// Bytes of the ring-0 stack exceptions switch to from ring 3 (TSS `RSP0`).
const KERNEL_STACK_BYTES: usize = 32 * 1024;

/// Whether the kernel runs in ring 3 (the 64-bit path), where the exit loop must not use `hlt`.
static USER_MODE: AtomicBool = AtomicBool::new(false);

/// How the image was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootKind {
    /// The PVH entry (QEMU `-kernel`): the platform is QEMU (microvm or q35).
    Pvh,
    /// The 64-bit ELF entry: the platform is mini-vmm.
    Long64,
}

impl BootKind {
    /// The identity-mapped physical address space, in bytes.
    pub(crate) fn mapped_bytes(self) -> u64 {
        let gib = match self {
            Self::Pvh => PVH_MAPPED_GIB,
            Self::Long64 => LONG64_MAPPED_GIB,
        };
        (gib as u64) << 30
    }
}

/// Page tables and stacks.
#[repr(C, align(4096))]
struct BootMemory {
    pml4: [u64; 512],
    pdpt: [u64; 512],
    pd: [[u64; 512]; PVH_MAPPED_GIB],
    stack: [u8; STACK_BYTES],
    kernel_stack: [u8; KERNEL_STACK_BYTES],
}

/// Only the assembly below and [`enter_user`] touch it (by address), never through references.
#[no_mangle]
static mut BOOT_MEMORY: BootMemory = BootMemory {
    pml4: [0; 512],
    pdpt: [0; 512],
    pd: [[0; 512]; PVH_MAPPED_GIB],
    stack: [0; STACK_BYTES],
    kernel_stack: [0; KERNEL_STACK_BYTES],
};

/// Selector of the 64-bit kernel code segment.
const KERNEL_CS: u64 = 0x08;
/// [`KERNEL_CS`] for 32-bit registers.
const KERNEL_CS_32: u32 = 0x08;
/// Selector of the TSS (a 16-byte descriptor at 0x18 and 0x20).
const TSS_SELECTOR: u16 = 0x18;
/// `IA32_SYSENTER_CS`: SYSEXIT to 64-bit mode loads CS = this + 32 (0x28, user code) and SS = this + 40 (0x30,
/// user data), both with RPL 3.
const MSR_SYSENTER_CS: u32 = 0x174;

/// Called by the entry code, on the boot stack, with paging, GDT and SSE set up.
extern "C" fn rust_entry(kind: u32, start_info: u32) -> ! {
    let kind = if kind == 1 {
        BootKind::Pvh
    } else {
        BootKind::Long64
    };
    install_idt();
    match kind {
        BootKind::Pvh => crate::kernel_main(kind, start_info),
        BootKind::Long64 => enter_user(),
    }
}

/// Ring-3 entry of the 64-bit path (reached by SYSEXIT).
extern "C" fn user_entry() -> ! {
    crate::kernel_main(BootKind::Long64, 0)
}

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                 /* n_namesz: "Xen\0" */
    .long 8                 /* n_descsz: a 64-bit physical address (QEMU reads a size_t) */
    .long 18                /* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start32

    /* Writable: LTR marks the TSS descriptor busy, and `enter_user` fills in the TSS base. */
    .section .data.boot, "aw"
    .balign 16
    .globl BOOT_GDT
BOOT_GDT:
    .quad 0                         /* 0x00 null */
    .quad 0x00af9a000000ffff        /* 0x08 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10 data, DPL 0 */
    .quad 0                         /* 0x18 TSS, low half (filled by enter_user) */
    .quad 0                         /* 0x20 TSS, high half */
    .quad 0x00affa000000ffff        /* 0x28 64-bit code, DPL 3 */
    .quad 0x00cff2000000ffff        /* 0x30 data, DPL 3 */
boot_gdt_end:
    .balign 16
boot_gdt_ptr:
    .word boot_gdt_end - BOOT_GDT - 1
    .quad BOOT_GDT

    .section .text.boot, "ax"
    .code32
    .globl _start32
_start32:
    cli
    cld
    mov esi, ebx                    /* hvm_start_info */
    /* Clear .bss (page tables, stack, statics). */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb
    /* PML4[0] -> PDPT */
    mov eax, offset BOOT_MEMORY + 4096
    or eax, 7
    mov dword ptr [BOOT_MEMORY], eax
    /* PDPT[i] -> PD[i] */
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 12
    add eax, offset BOOT_MEMORY + 8192
    or eax, 7
    mov dword ptr [BOOT_MEMORY + 4096 + ecx * 8], eax
    inc ecx
    cmp ecx, {pvh_gib}
    jb 2b
    /* PD entries: 2 MiB pages, present | writable | user | PS; the high dword holds address bits 32.. */
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x87
    mov dword ptr [BOOT_MEMORY + 8192 + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov dword ptr [BOOT_MEMORY + 8192 + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, {pvh_gib} * 512
    jb 3b
    /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov eax, offset BOOT_MEMORY
    mov cr3, eax
    /* EFER.LME */
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    /* CR0: PG | PE | MP, EM and TS clear */
    mov eax, cr0
    and eax, 0xfffffff3
    or eax, 0x80000003
    mov cr0, eax
    lgdt [boot_gdt_ptr]
    mov esp, offset BOOT_MEMORY + {stack_top}
    mov eax, 0x08
    push eax
    mov eax, offset long_from_pvh
    push eax
    retf

    .code64
long_from_pvh:
    mov edi, 1                      /* BootKind::Pvh */
    mov esi, esi                    /* hvm_start_info, zero-extended (upper halves are undefined here) */
    jmp common64

    .globl _start64
_start64:
    cli
    cld
    /* Page tables (no .bss clearing on this path, see the module documentation). */
    lea rax, [rip + BOOT_MEMORY + 4096]
    or rax, 7
    mov qword ptr [rip + BOOT_MEMORY], rax
    lea rdx, [rip + BOOT_MEMORY + 4096]
    lea r9, [rip + BOOT_MEMORY + 8192]
    xor ecx, ecx
4:
    mov rax, rcx
    shl rax, 12
    add rax, r9
    or rax, 7
    mov qword ptr [rdx + rcx * 8], rax
    inc ecx
    cmp ecx, {long_gib}
    jb 4b
    xor ecx, ecx
5:
    mov rax, rcx
    shl rax, 21
    or rax, 0x87
    mov qword ptr [r9 + rcx * 8], rax
    inc ecx
    cmp ecx, {long_gib} * 512
    jb 5b
    mov rax, cr4
    or rax, 0x620
    mov cr4, rax
    mov rax, cr0
    and rax, 0xfffffffffffffff3
    or rax, 2
    mov cr0, rax
    lea rax, [rip + BOOT_MEMORY]
    mov cr3, rax
    lgdt [rip + boot_gdt_ptr]
    lea rsp, [rip + BOOT_MEMORY + {stack_top}]
    lea rax, [rip + 6f]
    push 0x08
    push rax
    retfq
6:
    mov edi, 2                      /* BootKind::Long64 */
    xor esi, esi

common64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + BOOT_MEMORY + {stack_top}]
    xor ebp, ebp
    call {entry}
7:
    cli
    hlt
    jmp 7b

    /* enter_user_asm(rip = rdi, rsp = rsi): to ring 3 with SYSEXIT (REX.W: 64-bit), IOPL 3 and IF set. */
    .globl enter_user_asm
enter_user_asm:
    pushfq
    or qword ptr [rsp], 0x3200
    popfq
    xor eax, eax
    mov ds, ax
    mov es, ax
    mov rdx, rdi
    mov rcx, rsi
    .byte 0x48, 0x0f, 0x35          /* sysexitq */
    "#,
    pvh_gib = const PVH_MAPPED_GIB,
    long_gib = const LONG64_MAPPED_GIB,
    stack_top = const 8192 + PVH_MAPPED_GIB * 4096 + STACK_BYTES,
    entry = sym rust_entry,
);

// Exception stubs: one per vector 0..32. Vectors without a CPU-pushed error code push 0 so that every stub hands
// `exception_entry` the same frame: vector, error code, then the CPU's RIP, CS, RFLAGS, RSP, SS.
core::arch::global_asm!(
    r#"
    .section .text.isr, "ax"
    .code64
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
isr_\n:
    push 0
    push \n
    jmp isr_common
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
isr_\n:
    push \n
    jmp isr_common
    .endr
    /* Vectors 32..256 (external interrupts; none is expected, every line is masked): ignored. */
    .globl isr_ignore
isr_ignore:
    iretq
isr_common:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    and rsp, -16
    call {handler}
8:
    cli
    hlt
    jmp 8b

    .section .rodata.isr, "a"
    .balign 8
    .globl ISR_TABLE
ISR_TABLE:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
    "#,
    handler = sym exception_entry,
);

extern "C" {
    /// Addresses of the 32 exception stubs above.
    static ISR_TABLE: [u64; 32];
    /// The stub of every other vector.
    fn isr_ignore();
    /// The GDT above (7 descriptors).
    static mut BOOT_GDT: [u64; 7];
    /// Switches to ring 3 at `rip` with stack `rsp`; see the assembly.
    fn enter_user_asm(rip: u64, rsp: u64) -> !;
}

/// An interrupt gate descriptor (Intel SDM vol. 3 §6.14.1).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Gate([u64; 2]);

/// IDT entries: all 256 vectors.
const VECTORS: usize = 256;

#[repr(C, align(16))]
struct Idt([Gate; VECTORS]);

/// Filled once by [`install_idt`], before anything can fault on purpose.
static mut IDT: Idt = Idt([Gate([0; 2]); VECTORS]);

/// Bytes of the TSS proper (Intel SDM vol. 3 §8.7).
const TSS_BYTES: usize = 104;
/// Bytes of the I/O permission bitmap: one bit per port, all clear (allowed), then the required all-ones byte.
const IO_BITMAP_BYTES: usize = 65536 / 8 + 1;

/// The 64-bit TSS: `RSP0` (bytes 4..12), the I/O map base (bytes 102..104) and an I/O permission bitmap that
/// allows every port, so ring 3 can do port I/O whatever IOPL the hypervisor lets it have.
#[repr(C, align(16))]
struct Tss([u8; TSS_BYTES + IO_BITMAP_BYTES]);

static mut TSS: Tss = Tss([0; TSS_BYTES + IO_BITMAP_BYTES]);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Installs an IDT whose 32 exception vectors print `FAIL guest exception ...` and exit, and whose other vectors
/// return at once.
fn install_idt() {
    // SAFETY: ISR_TABLE is an immutable table of 32 addresses defined in the assembly above.
    let table = unsafe { core::ptr::addr_of!(ISR_TABLE).read() };
    let ignore = isr_ignore as *const () as u64;
    let idt = core::ptr::addr_of_mut!(IDT);
    let handlers = table.iter().copied().chain(core::iter::repeat(ignore));
    for (vector, handler) in handlers.take(VECTORS).enumerate() {
        let low = (handler & 0xffff)
            | (KERNEL_CS << 16)                 // code segment selector
            | (0x8e00 << 32)                    // present, DPL 0, 64-bit interrupt gate
            | (((handler >> 16) & 0xffff) << 48);
        let high = handler >> 32;
        let gate = Gate([low, high]);
        // SAFETY: projecting to the field of the static IDT through a raw pointer creates no reference.
        let gates = unsafe { core::ptr::addr_of_mut!((*idt).0) };
        let slot = gates.cast::<Gate>().wrapping_add(vector);
        // SAFETY: single-threaded boot code; `vector < VECTORS` keeps `slot` inside the table, and the CPU does
        // not read the IDT until it is loaded below.
        unsafe { slot.write(gate) };
    }
    let pointer = DescriptorPointer {
        limit: 0xfff, // VECTORS * 16 - 1
        base: idt as u64,
    };
    // SAFETY: `pointer` describes the static IDT filled above, whose gates point at the stubs in this module.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags));
    }
}

/// Sets up the TSS (ring-0 stack for exceptions from ring 3) and SYSEXIT, then continues in ring 3 at
/// [`user_entry`] on the boot stack.
fn enter_user() -> ! {
    let memory = core::ptr::addr_of_mut!(BOOT_MEMORY);
    // SAFETY: projecting to a field of the static through a raw pointer creates no reference.
    let stack = unsafe { core::ptr::addr_of_mut!((*memory).stack) };
    // SAFETY: as above.
    let kernel_stack = unsafe { core::ptr::addr_of_mut!((*memory).kernel_stack) };
    let stack_top = stack as u64 + STACK_BYTES as u64;
    let kernel_stack_top = kernel_stack as u64 + KERNEL_STACK_BYTES as u64;
    let tss = core::ptr::addr_of_mut!(TSS).cast::<u8>();
    let io_map_base = u16::try_from(TSS_BYTES).unwrap_or(0);
    let fields: [(usize, &[u8]); 3] = [
        (4, &kernel_stack_top.to_le_bytes()),
        (102, &io_map_base.to_le_bytes()),
        (TSS_BYTES + IO_BITMAP_BYTES - 1, &[0xff]),
    ];
    for (offset, bytes) in fields {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: `offset + i` stays inside the static TSS (every offset above is below its size); nothing
            // else accesses it yet. The rest of it (the bitmap) stays zero: every port allowed.
            unsafe { tss.wrapping_add(offset + i).write(*b) };
        }
    }
    let base = tss as u64;
    let limit = (TSS_BYTES + IO_BITMAP_BYTES - 1) as u64;
    let low = limit | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
    let gdt = core::ptr::addr_of_mut!(BOOT_GDT).cast::<u64>();
    // SAFETY: entries 3 and 4 of the 7-entry GDT are the TSS descriptor; no segment register refers to them yet.
    unsafe { gdt.wrapping_add(3).write(low) };
    // SAFETY: as above.
    unsafe { gdt.wrapping_add(4).write(base >> 32) };
    // SAFETY: the descriptor just written describes the static TSS; LTR only marks it busy.
    unsafe {
        core::arch::asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags))
    };
    // SAFETY: IA32_SYSENTER_CS = the kernel code selector, so SYSEXIT loads the ring-3 selectors of our GDT.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") MSR_SYSENTER_CS, in("eax") KERNEL_CS_32, in("edx") 0u32,
            options(nostack, preserves_flags));
    }
    USER_MODE.store(true, Ordering::Relaxed);
    // SAFETY: the page tables grant ring 3 everything, the TSS gives exceptions a ring-0 stack, and `user_entry`
    // never returns; the boot stack is abandoned by the ring-0 frames and reused from its top.
    // `user_entry` is entered as if called: `rsp + 8` 16-byte aligned (the SysV ABI's alignment at a call).
    unsafe { enter_user_asm(user_entry as *const () as u64, stack_top - 8) }
}

/// Whether the kernel runs in ring 3.
pub(crate) fn user_mode() -> bool {
    USER_MODE.load(Ordering::Relaxed)
}

/// Called by the exception stubs: reports the fault on the serial port and exits with the panic code.
extern "C" fn exception_entry(vector: u64, error: u64, rip: u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects (exception handlers run in ring 0).
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
    };
    crate::io::fail_exit(format_args!(
        "exception vector={vector} error={error:#x} rip={rip:#x} cr2={cr2:#x}"
    ))
}
