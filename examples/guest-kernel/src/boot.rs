//! The two entry points, the page tables, the GDT and the exception stubs.
//!
//! - **`_start32`**, named by the PVH ELF note (`XEN_ELFNOTE_PHYS32_ENTRY`): how QEMU's `-kernel` starts the image.
//!   The CPU is in 32-bit protected mode with paging off, flat segments, `ebx` = physical address of the
//!   `hvm_start_info`, no usable stack (Xen PVH boot ABI, as QEMU's `pvh.bin` option ROM implements it).
//! - **`_start64`**, the ELF `e_entry`: how mini-vmm starts it, already in 64-bit long mode with interrupts off and
//!   some identity map.
//!
//! Both clear `.bss`, build the same page tables (identity map of the first [`MAPPED_GIB`] GiB with 2 MiB pages, so
//! that RAM, the virtio-mmio windows and 32- or 64-bit PCI BARs are all reachable at their physical address), load
//! our GDT, enable SSE (Rust code uses `xmm` registers), switch to the stack below and call
//! [`crate::kernel_main`] with the boot kind. Nothing here depends on the state the loader left beyond what its
//! ABI promises.

/// Gibibytes of physical address space identity-mapped (2 MiB pages, one page directory per GiB).
pub(crate) const MAPPED_GIB: usize = 64;

/// Bytes of the boot stack.
const STACK_BYTES: usize = 128 * 1024;

/// How the image was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootKind {
    /// The PVH entry (QEMU `-kernel`): the platform is QEMU (microvm or q35).
    Pvh,
    /// The 64-bit ELF entry: the platform is mini-vmm.
    Long64,
}

/// Page tables and stack; in `.bss`, so zeroed by the entry code before use.
#[repr(C, align(4096))]
struct BootMemory {
    pml4: [u64; 512],
    pdpt: [u64; 512],
    pd: [[u64; 512]; MAPPED_GIB],
    stack: [u8; STACK_BYTES],
}

/// Only the assembly below touches it (by symbol), before any Rust code runs.
#[no_mangle]
static mut BOOT_MEMORY: BootMemory = BootMemory {
    pml4: [0; 512],
    pdpt: [0; 512],
    pd: [[0; 512]; MAPPED_GIB],
    stack: [0; STACK_BYTES],
};

/// Called by the entry code, on the boot stack, with paging, GDT and SSE set up.
extern "C" fn rust_entry(kind: u32, start_info: u32) -> ! {
    let kind = if kind == 1 {
        BootKind::Pvh
    } else {
        BootKind::Long64
    };
    crate::kernel_main(kind, start_info)
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

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
boot_gdt_end:
    .balign 16
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

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
    or eax, 3
    mov dword ptr [BOOT_MEMORY], eax
    /* PDPT[i] -> PD[i] */
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 12
    add eax, offset BOOT_MEMORY + 8192
    or eax, 3
    mov dword ptr [BOOT_MEMORY + 4096 + ecx * 8], eax
    inc ecx
    cmp ecx, {gib}
    jb 2b
    /* PD entries: 2 MiB pages, present | writable | PS; the high dword holds address bits 32.. */
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [BOOT_MEMORY + 8192 + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov dword ptr [BOOT_MEMORY + 8192 + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, {gib} * 512
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
    mov r8d, esi                    /* keep whatever the loader passed; unused */
    /* Clear .bss. */
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    rep stosb
    /* Page tables, as above. */
    lea rax, [rip + BOOT_MEMORY + 4096]
    or rax, 3
    mov qword ptr [rip + BOOT_MEMORY], rax
    lea rdx, [rip + BOOT_MEMORY + 4096]
    lea r9, [rip + BOOT_MEMORY + 8192]
    xor ecx, ecx
4:
    mov rax, rcx
    shl rax, 12
    add rax, r9
    or rax, 3
    mov qword ptr [rdx + rcx * 8], rax
    inc ecx
    cmp ecx, {gib}
    jb 4b
    xor ecx, ecx
5:
    mov rax, rcx
    shl rax, 21
    or rax, 0x83
    mov qword ptr [r9 + rcx * 8], rax
    inc ecx
    cmp ecx, {gib} * 512
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
    "#,
    gib = const MAPPED_GIB,
    stack_top = const 8192 + MAPPED_GIB * 4096 + STACK_BYTES,
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
}

/// An interrupt gate descriptor (Intel SDM vol. 3 §6.14.1).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Gate([u64; 2]);

#[repr(C, align(16))]
struct Idt([Gate; 32]);

/// Filled once by [`install_idt`], before anything can fault on purpose.
static mut IDT: Idt = Idt([Gate([0; 2]); 32]);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Installs an IDT whose 32 exception vectors print `FAIL guest exception ...` and exit.
pub(crate) fn install_idt() {
    // SAFETY: ISR_TABLE is an immutable table of 32 addresses defined in the assembly above.
    let table = unsafe { core::ptr::addr_of!(ISR_TABLE).read() };
    let idt = core::ptr::addr_of_mut!(IDT);
    for (vector, handler) in table.iter().enumerate() {
        let low = (handler & 0xffff)
            | (0x08 << 16)                      // code segment selector
            | (0x8e00 << 32)                    // present, DPL 0, 64-bit interrupt gate
            | (((handler >> 16) & 0xffff) << 48);
        let high = handler >> 32;
        let gate = Gate([low, high]);
        // SAFETY: projecting to the field of the static IDT through a raw pointer creates no reference.
        let gates = unsafe { core::ptr::addr_of_mut!((*idt).0) };
        let slot = gates.cast::<Gate>().wrapping_add(vector);
        // SAFETY: single-threaded boot code; `vector < 32` keeps `slot` inside the 32-entry table, and the CPU does
        // not read the IDT until it is loaded below.
        unsafe { slot.write(gate) };
    }
    let pointer = DescriptorPointer {
        limit: 32 * 16 - 1,
        base: idt as u64,
    };
    // SAFETY: `pointer` describes the static IDT filled above, whose gates point at the stubs in this module.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags));
    }
}

/// Called by the exception stubs: reports the fault on the serial port and exits with the panic code.
extern "C" fn exception_entry(vector: u64, error: u64, rip: u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects (we run at CPL 0).
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
    };
    crate::io::fail_exit(format_args!(
        "exception vector={vector} error={error:#x} rip={rip:#x} cr2={cr2:#x}"
    ))
}
